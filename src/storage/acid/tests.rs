use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::AcidStorage;
use crate::notify::WakeHub;
use crate::offset::{Offset, ReadFrom};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Expiry, ForkSpec, ProducerHeaders,
    ReadRequest, Storage, StorageError,
};

fn open(dir: &Path) -> AcidStorage {
    AcidStorage::open(dir, WakeHub::new()).expect("open")
}

fn read_all(
    s: &AcidStorage,
    name: &str,
    from: ReadFrom,
    now: u64,
) -> Result<(String, Offset), StorageError> {
    let out = s.read(name, ReadRequest::all(from, now))?;
    Ok((String::from_utf8(out.concat()).unwrap(), out.next))
}

#[test]
fn append_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(s.may_block());
    let c = s
        .create("a", CreateRequest::new(Some("text/plain"), "hello ", 0))
        .unwrap();
    assert!(matches!(c, CreateOutcome::Created(ref i) if i.tail == Offset::new(1, 6)));
    let AppendOutcome::Appended { info, .. } = s
        .append("a", AppendRequest::new(Some("text/plain"), "world", 1))
        .unwrap()
    else {
        panic!("not appended");
    };
    assert_eq!(info.tail, Offset::new(2, 11));
    assert_eq!(
        read_all(&s, "a", ReadFrom::Start, 2).unwrap(),
        ("hello world".into(), Offset::new(2, 11))
    );
    // Mid-record binary offsets and chunked reads.
    let (text, next) = read_all(&s, "a", ReadFrom::At(Offset::new(0, 3)), 2).unwrap();
    assert_eq!((text.as_str(), next), ("lo world", Offset::new(2, 11)));
    let out = s
        .read(
            "a",
            ReadRequest {
                from: ReadFrom::Start,
                max_bytes: 4,
                lend_bytes: 4,
                now: 2,
            },
        )
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out.next, Offset::new(0, 4));
    assert!(matches!(
        s.read(
            "a",
            ReadRequest {
                from: ReadFrom::At(Offset::new(0, 6)),
                max_bytes: 10,
                lend_bytes: 10,
                now: 2
            }
        ),
        Err(StorageError::InvalidOffset)
    ));
    assert!(matches!(
        s.append("nope", AppendRequest::new(Some("text/plain"), "x", 0)),
        Err(StorageError::NotFound)
    ));
    s.shutdown().unwrap();
    assert!(matches!(
        s.append("a", AppendRequest::new(Some("text/plain"), "x", 0)),
        Err(StorageError::Unavailable(_))
    ));
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let producer = ProducerHeaders {
        id: "p1".into(),
        epoch: 3,
        seq: 0,
    };
    {
        let s = open(dir.path());
        s.create(
            "src",
            CreateRequest::new(Some("application/json"), r#"[{"a":1},{"b":2},{"c":3}]"#, 10),
        )
        .unwrap();
        let mut req = AppendRequest::new(Some("application/json"), r#"{"d":4}"#, 11);
        req.producer = Some(producer.clone());
        req.stream_seq = Some("0005".into());
        assert!(matches!(
            s.append("src", req).unwrap(),
            AppendOutcome::Appended {
                producer: Some((3, 0)),
                ..
            }
        ));
        let mut fork = CreateRequest::new(Some("application/json"), r#"{"f":1}"#, 12);
        fork.fork = Some(ForkSpec {
            source: "src".into(),
            offset: Some(Offset::new(1, 8)),
            sub_offset: 1,
        });
        let CreateOutcome::Created(info) = s.create("fork", fork).unwrap() else {
            panic!()
        };
        assert_eq!(info.tail, Offset::new(3, 24));
        let mut ttl = CreateRequest::new(Some("text/plain"), "t", 13);
        ttl.expiry = Some(Expiry::Ttl(60));
        s.create("ttl", ttl).unwrap();
        // A read renews the TTL in memory only; the shutdown persists it.
        read_all(&s, "ttl", ReadFrom::Start, 50_000).unwrap();
        let mut close = AppendRequest::new(Some("text/plain"), "", 14);
        close.close = true;
        s.create("closed", CreateRequest::new(Some("text/plain"), "bye", 14))
            .unwrap();
        s.append("closed", close).unwrap();
        s.delete("src", 15).unwrap(); // soft: the fork holds it
        s.shutdown().unwrap();
    }
    let s = open(dir.path());
    // Data and offsets.
    assert_eq!(
        read_all(&s, "fork", ReadFrom::Start, 20).unwrap(),
        (r#"{"a":1},{"b":2},{"f":1},"#.into(), Offset::new(3, 24))
    );
    assert_eq!(
        read_all(&s, "fork", ReadFrom::At(Offset::new(1, 8)), 20)
            .unwrap()
            .0,
        r#"{"b":2},{"f":1},"#
    );
    // Soft delete and the fork link survive.
    assert!(matches!(s.head("src", 20), Err(StorageError::Gone)));
    assert!(matches!(
        s.create("src", CreateRequest::new(Some("text/plain"), "", 20)),
        Err(StorageError::PathReserved)
    ));
    // Closure.
    let closed = s.head("closed", 20).unwrap();
    assert!(closed.closed);
    assert!(matches!(
        s.append("closed", AppendRequest::new(Some("text/plain"), "x", 20)),
        Err(StorageError::Closed { .. })
    ));
    // TTL metadata and the renewal made by the read before shutdown.
    assert_eq!(s.head("ttl", 100_000).unwrap().expiry, Expiry::Ttl(60));
    assert!(matches!(
        s.head("ttl", 110_001),
        Err(StorageError::NotFound)
    ));
    // Deleting the fork releases the soft-deleted source: both disappear.
    s.delete("fork", 21).unwrap();
    assert!(matches!(s.head("src", 21), Err(StorageError::NotFound)));
    s.create("src", CreateRequest::new(Some("text/plain"), "new", 22))
        .unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "src", ReadFrom::Start, 23).unwrap().0, "new");
    assert!(matches!(s.head("fork", 23), Err(StorageError::NotFound)));
}

#[test]
fn producer_retry_after_reopen_is_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = AppendRequest::new(Some("text/plain"), "once", 1);
    req.producer = Some(ProducerHeaders {
        id: "p".into(),
        epoch: 0,
        seq: 0,
    });
    {
        let s = open(dir.path());
        s.create("s", CreateRequest::new(Some("text/plain"), "", 0))
            .unwrap();
        assert!(matches!(
            s.append("s", req.clone()).unwrap(),
            AppendOutcome::Appended { .. }
        ));
    }
    let s = open(dir.path());
    let out = s.append("s", req.clone()).unwrap();
    assert!(
        matches!(out, AppendOutcome::Duplicate { producer: Some((0, 0)), ref info } if info.tail == Offset::new(1, 4)),
        "{out:?}"
    );
    assert_eq!(read_all(&s, "s", ReadFrom::Start, 2).unwrap().0, "once");
}

#[test]
fn concurrent_appends_share_commits_and_stay_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    s.create("s", CreateRequest::new(Some("application/json"), "", 0))
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let mut req =
                        AppendRequest::new(Some("application/json"), format!("[[{t},{i}]]"), 1);
                    req.producer = Some(ProducerHeaders {
                        id: format!("p{t}"),
                        epoch: 0,
                        seq: i,
                    });
                    assert!(matches!(
                        s.append("s", req).unwrap(),
                        AppendOutcome::Appended { .. }
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let info = s.head("s", 2).unwrap();
    assert_eq!(info.tail.seq, 200);
    let (text, _) = read_all(&s, "s", ReadFrom::Start, 2).unwrap();
    let messages: Vec<(u64, u64)> =
        serde_json::from_str(&format!("[{}]", text.trim_end_matches(','))).unwrap();
    assert_eq!(messages.len(), 200);
    // Each producer's appends landed in its own order.
    let mut next = [0u64; 8];
    for (t, i) in messages {
        assert_eq!(i, next[t as usize]);
        next[t as usize] += 1;
    }
}

#[test]
fn rejected_op_does_not_disturb_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    s.create("s", CreateRequest::new(Some("text/plain"), "", 0))
        .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                // Odd threads send the wrong content type and are refused.
                let ct = if i % 2 == 0 {
                    "text/plain"
                } else {
                    "application/json"
                };
                s.append("s", AppendRequest::new(Some(ct), "ab", 1)).is_ok()
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(ok, 8);
    assert_eq!(s.head("s", 2).unwrap().tail, Offset::new(8, 16));
}

#[test]
fn sweep_removes_expired_streams_and_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut req = CreateRequest::new(Some("text/plain"), "x", 0);
    req.expiry = Some(Expiry::At(1_000));
    s.create("e", req).unwrap();
    s.create("keep", CreateRequest::new(Some("text/plain"), "y", 0))
        .unwrap();
    assert!(matches!(s.head("e", 1_000), Err(StorageError::NotFound)));
    assert_eq!(s.sweep_expired(1_000).unwrap(), 1);
    assert_eq!(s.sweep_expired(1_000).unwrap(), 0);
    drop(s);
    let s = open(dir.path());
    assert!(matches!(s.head("e", 0), Err(StorageError::NotFound)));
    assert!(s.head("keep", 0).is_ok());
    let txn = s.shared.db().unwrap().begin_read().unwrap();
    let data = txn.open_table(super::tables::DATA).unwrap();
    use redb::ReadableTableMetadata;
    assert_eq!(data.len().unwrap(), 1);
}

#[test]
fn queued_appends_share_one_commit_and_see_each_other() {
    use super::writer::Op;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", CreateRequest::new(Some("text/plain"), "", 0))
        .unwrap();
    let before = s.shared.commits.load(Ordering::Relaxed);
    let producer = |seq| {
        let mut req = AppendRequest::new(Some("text/plain"), "xy", 1);
        req.producer = Some(ProducerHeaders {
            id: "p".into(),
            epoch: 0,
            seq,
        });
        req
    };
    // Seq 0, 1, a gap (5), a retry of 1, then 2: each must be decided against
    // the ones queued before it, and the refused ones must not sink the batch.
    let seqs = [0u64, 1, 5, 1, 2];
    let replies: Vec<_> = {
        // Holding the cache lock stalls the writer on its first op, so the
        // rest queue up behind it and are drained into one transaction.
        let _stall = s.shared.cache.write();
        seqs.iter()
            .map(|&seq| {
                let (tx, rx) = std::sync::mpsc::channel();
                s.tx.send(Op::Append("s".into(), Box::new(producer(seq)), tx))
                    .unwrap();
                rx
            })
            .collect()
    };
    let outcomes: Vec<String> = replies
        .into_iter()
        .map(|rx| format!("{:?}", rx.recv().unwrap()))
        .collect();
    assert!(outcomes[0].starts_with("Ok(Appended"), "{outcomes:?}");
    assert!(outcomes[1].starts_with("Ok(Appended"), "{outcomes:?}");
    assert!(
        outcomes[2].contains("SeqGap { expected: 2, received: 5 }"),
        "{outcomes:?}"
    );
    assert!(outcomes[3].starts_with("Ok(Duplicate"), "{outcomes:?}");
    assert!(outcomes[4].starts_with("Ok(Appended"), "{outcomes:?}");
    let commits = s.shared.commits.load(Ordering::Relaxed) - before;
    assert!(commits <= 2, "{commits} commits for {} appends", seqs.len());
    assert_eq!(s.head("s", 2).unwrap().tail, Offset::new(3, 6));
    // Refusals alone commit nothing.
    let before = s.shared.commits.load(Ordering::Relaxed);
    assert!(s.append("s", producer(9)).is_err());
    assert_eq!(s.sweep_expired(10).unwrap(), 0);
    assert_eq!(s.shared.commits.load(Ordering::Relaxed), before);
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "s", ReadFrom::Start, 3).unwrap().0, "xyxyxy");
}

#[test]
fn failed_transaction_changes_neither_disk_nor_cache() {
    use futures_util::FutureExt;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let hub = WakeHub::new();
    let s = AcidStorage::open(dir.path(), Arc::clone(&hub)).unwrap();
    s.create("s", CreateRequest::new(Some("text/plain"), "a", 0))
        .unwrap();
    let mut sub = hub.subscribe("s");
    let mut req = AppendRequest::new(Some("text/plain"), "b", 1);
    req.producer = Some(ProducerHeaders {
        id: "p".into(),
        epoch: 0,
        seq: 0,
    });
    s.shared.inject_failure.store(true, Ordering::Relaxed);
    assert!(matches!(
        s.append("s", req.clone()),
        Err(StorageError::NoSpace)
    ));
    // Nothing visible, nobody woken, and the producer state did not advance.
    assert_eq!(s.head("s", 1).unwrap().tail, Offset::new(1, 1));
    assert!(sub.changed().now_or_never().is_none());
    assert!(matches!(
        s.create("t", CreateRequest::new(Some("text/plain"), "", 1))
            .map(|_| ()),
        Ok(())
    ));
    // The retry is accepted as new, not a duplicate.
    assert!(matches!(
        s.append("s", req.clone()).unwrap(),
        AppendOutcome::Appended { .. }
    ));
    let wake = sub
        .changed()
        .now_or_never()
        .flatten()
        .expect("woken after the commit");
    assert_eq!(wake.tail, Offset::new(2, 2));
    // The wake carries the record, so readers at the old tail need no read.
    let a = wake.appended.as_ref().expect("the wake carries the append");
    assert_eq!(
        (a.from, &a.records[..]),
        (Offset::new(1, 1), &[Bytes::from("b")][..])
    );
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "s", ReadFrom::Start, 2).unwrap().0, "ab");
    assert!(matches!(
        s.append("s", req).unwrap(),
        AppendOutcome::Duplicate { .. }
    ));
}

#[test]
fn read_now_answers_at_and_just_behind_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut req = CreateRequest::new(Some("text/plain"), "ab", 1);
    req.expiry = Some(Expiry::Ttl(10));
    s.create("a", req).unwrap();
    s.append("a", AppendRequest::new(Some("text/plain"), "cd", 2))
        .unwrap();
    s.append("a", AppendRequest::new(Some("text/plain"), "e", 2))
        .unwrap();
    let now = |from, at| {
        let _marked = crate::storage::handle::NonBlocking::enter();
        s.read_now("a", &ReadRequest::all(from, at))
    };
    // At the tail, and from the committed records kept after it: the
    // answer `read` gives.
    for from in [
        ReadFrom::Tail,
        ReadFrom::At(Offset::new(3, 5)),
        ReadFrom::At(Offset::new(1, 2)),
        ReadFrom::At(Offset::new(2, 4)),
    ] {
        let quick = now(from, 9_000).expect("answered without a transaction");
        let slow = s.read("a", ReadRequest::all(from, 9_000)).unwrap();
        assert_eq!(
            (&quick.info, quick.start, quick.concat(), quick.next),
            (&slow.info, slow.start, slow.concat(), slow.next)
        );
        assert!(quick.up_to_date());
    }
    assert_eq!(
        now(ReadFrom::At(Offset::new(1, 2)), 9_000)
            .unwrap()
            .concat(),
        b"cde"
    );
    // Inside a record, before the kept ones (the initial body is not an
    // append's), beyond the tail, absent, more than the reader takes: left
    // to `read`.
    assert!(now(ReadFrom::At(Offset::new(1, 3)), 9_000).is_none());
    assert!(now(ReadFrom::Start, 9_000).is_none());
    assert!(now(ReadFrom::At(Offset::new(9, 90)), 9_000).is_none());
    assert!(
        s.read_now("b", &ReadRequest::all(ReadFrom::Tail, 9_000))
            .is_none()
    );
    let mut small = ReadRequest::all(ReadFrom::At(Offset::new(1, 2)), 9_000);
    small.max_bytes = 2;
    assert!(s.read_now("a", &small).is_none());
    // A poll renews the sliding TTL, to be persisted like a read's.
    s.shared.touched.lock().clear();
    assert!(now(ReadFrom::Tail, 18_000).is_some());
    assert!(s.shared.touched.lock().contains("a"));
    assert!(s.head("a", 27_999).is_ok(), "renewed by the poll");
    assert!(now(ReadFrom::Tail, 28_001).is_none(), "expired");
    assert!(
        now(ReadFrom::At(Offset::new(1, 2)), 28_001).is_none(),
        "expired"
    );
}

#[test]
fn kept_records_never_outlive_their_stream_or_a_trim() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = |name, from| {
        let _marked = crate::storage::handle::NonBlocking::enter();
        s.read_now(name, &ReadRequest::all(from, 5))
    };
    s.create("a", CreateRequest::new(Some("text/plain"), "", 1))
        .unwrap();
    for part in ["ab", "cd", "ef"] {
        s.append("a", AppendRequest::new(Some("text/plain"), part, 2))
            .unwrap();
    }
    assert_eq!(now("a", ReadFrom::Start).unwrap().concat(), b"abcdef");
    // Trimmed before "ef": a read before it is refused by `read`, and one
    // from the start answers only what is retained.
    s.trim("a", Offset::new(2, 4), 3).unwrap();
    assert!(now("a", ReadFrom::At(Offset::new(0, 0))).is_none());
    assert!(matches!(
        s.read("a", ReadRequest::all(ReadFrom::At(Offset::new(0, 0)), 5)),
        Err(StorageError::Trimmed { .. })
    ));
    assert_eq!(now("a", ReadFrom::Start).unwrap().concat(), b"ef");
    // Deleted and made again: the old records are not the new stream's.
    s.delete("a", 4).unwrap();
    s.create("a", CreateRequest::new(Some("text/plain"), "", 5))
        .unwrap();
    s.append("a", AppendRequest::new(Some("text/plain"), "gh", 5))
        .unwrap();
    assert_eq!(now("a", ReadFrom::Start).unwrap().concat(), b"gh");
    assert_eq!(
        s.shared.recent.bytes(),
        2,
        "the deleted stream's records are dropped"
    );
}
