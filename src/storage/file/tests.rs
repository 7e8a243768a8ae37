//! Unit tests of the file backend: behaviour, reopen, and torn tails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::FileStorage;
use crate::config::SyncMode;
use crate::notify::WakeHub;
use crate::offset::{Offset, ReadFrom};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Expiry, ForkSpec, ProducerHeaders,
    ReadRequest, Storage, StorageError,
};

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(50),
        WakeHub::new(),
    )
    .expect("open")
}

fn create(ct: &str, body: &str) -> CreateRequest {
    CreateRequest {
        content_type: Some(ct.into()),
        expiry: None,
        closed: false,
        fork: None,
        body: Bytes::copy_from_slice(body.as_bytes()),
        now: 1,
    }
}

fn append(body: &str) -> AppendRequest {
    AppendRequest {
        content_type: Some("text/plain".into()),
        body: Bytes::copy_from_slice(body.as_bytes()),
        close: false,
        stream_seq: None,
        producer: None,
        now: 2,
    }
}

fn produce(body: &str, seq: u64) -> AppendRequest {
    AppendRequest {
        producer: Some(ProducerHeaders {
            id: "p".into(),
            epoch: 0,
            seq,
        }),
        ..append(body)
    }
}

fn read_all(s: &FileStorage, name: &str) -> Result<(Vec<u8>, Offset, bool), StorageError> {
    read_from(s, name, ReadFrom::Start)
}

fn read_from(
    s: &FileStorage,
    name: &str,
    from: ReadFrom,
) -> Result<(Vec<u8>, Offset, bool), StorageError> {
    let r = s.read(
        name,
        ReadRequest {
            from,
            max_bytes: usize::MAX,
            now: 3,
        },
    )?;
    let bytes = r.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    Ok((bytes, r.next, r.info.closed))
}

fn newest(dir: &Path, sub: &str, ext: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    found.sort();
    found.pop().expect("a file")
}

fn chop(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

fn flip_last_byte(path: &Path) {
    let mut buf = std::fs::read(path).unwrap();
    let last = buf.len() - 1;
    buf[last] ^= 0xff;
    std::fs::write(path, buf).unwrap();
}

#[test]
fn append_and_read_binary_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(matches!(
        s.create("b", create("text/plain", "ab")).unwrap(),
        CreateOutcome::Created(_)
    ));
    s.append("b", append("cde")).unwrap();
    let (bytes, next, closed) = read_all(&s, "b").unwrap();
    assert_eq!(
        (bytes.as_slice(), next, closed),
        (&b"abcde"[..], Offset::new(2, 5), false)
    );
    // Reading from a record boundary and from inside a record.
    assert_eq!(
        read_from(&s, "b", ReadFrom::At(Offset::new(1, 2)))
            .unwrap()
            .0,
        b"cde"
    );
    assert_eq!(
        read_from(&s, "b", ReadFrom::At(Offset::new(1, 3)))
            .unwrap()
            .0,
        b"de"
    );
    assert!(matches!(
        read_from(&s, "b", ReadFrom::At(Offset::new(0, 3))),
        Err(StorageError::InvalidOffset)
    ));
    s.create("j", create("application/json", "[1, {\"a\":2}]"))
        .unwrap();
    let mut req = append("\"x\"");
    req.content_type = Some("application/json".into());
    s.append("j", req).unwrap();
    assert_eq!(read_all(&s, "j").unwrap().0, b"1,{\"a\":2},\"x\",");
    assert!(s.may_block());
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create("a", create("text/plain", "hello")).unwrap();
        s.append("a", produce(" world", 0)).unwrap();
        let mut close = produce("!", 1);
        close.close = true;
        s.append("a", close).unwrap();
        let mut fork = create("text/plain", "fork");
        fork.content_type = None;
        fork.fork = Some(ForkSpec {
            source: "a".into(),
            offset: Some(Offset::new(1, 5)),
            sub_offset: 3,
        });
        s.create("f", fork).unwrap();
        s.create("gone", create("text/plain", "x")).unwrap();
        s.delete("gone", 2).unwrap();
        s.create("p", create("text/plain", "")).unwrap();
        s.append("p", produce("one", 0)).unwrap();
        s.delete("a", 2).unwrap(); // soft: "f" still reads from it
    }
    for round in 0..2 {
        let s = open(dir.path());
        assert!(
            matches!(s.head("a", 3), Err(StorageError::Gone)),
            "round {round}"
        );
        assert!(matches!(s.head("gone", 3), Err(StorageError::NotFound)));
        let (bytes, next, _) = read_all(&s, "f").unwrap();
        assert_eq!(bytes, b"hello wofork");
        assert_eq!(next, Offset::new(2, 12));
        // A retried producer append is still a duplicate.
        match s.append("p", produce("one", 0)).unwrap() {
            AppendOutcome::Duplicate { producer, .. } => assert_eq!(producer, Some((0, 0))),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert_eq!(read_all(&s, "p").unwrap().0, b"one");
        if round == 1 {
            // Deleting the last fork removes the soft-deleted source too.
            s.delete("f", 3).unwrap();
            assert!(matches!(s.head("a", 3), Err(StorageError::NotFound)));
            s.checkpoint().unwrap();
        }
    }
    let s = open(dir.path());
    assert!(matches!(s.head("a", 3), Err(StorageError::NotFound)));
    assert_eq!(read_all(&s, "p").unwrap().0, b"one");
}

#[test]
fn closed_and_expiring_streams_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let mut c = create("text/plain", "done");
        c.closed = true;
        s.create("c", c).unwrap();
        let mut t = create("text/plain", "");
        t.expiry = Some(Expiry::Ttl(1));
        s.create("t", t).unwrap();
        s.checkpoint().unwrap();
    }
    let s = open(dir.path());
    let (bytes, _, closed) = read_all(&s, "c").unwrap();
    assert_eq!((bytes.as_slice(), closed), (&b"done"[..], true));
    assert!(matches!(
        s.append("c", append("x")),
        Err(StorageError::Closed { .. })
    ));
    assert_eq!(s.head("t", 500).unwrap().expiry, Expiry::Ttl(1));
    assert!(matches!(s.head("t", 5_000), Err(StorageError::NotFound)));
    assert_eq!(s.sweep_expired(5_000).unwrap(), 1);
}

/// Writes "a", "b", "c" as three acknowledged appends after a checkpoint,
/// so that they live in the WAL and past the checkpointed data length.
fn three_appends(dir: &Path) {
    let s = open(dir);
    s.create("s", create("text/plain", "")).unwrap();
    s.checkpoint().unwrap();
    for (i, b) in ["a", "b", "c"].into_iter().enumerate() {
        s.append("s", produce(b, i as u64)).unwrap();
    }
}

#[test]
fn torn_wal_tail_loses_only_the_torn_entry() {
    for damage in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        three_appends(dir.path());
        let wal = newest(dir.path(), "wal", "log");
        if damage == 0 {
            chop(&wal, 3);
        } else {
            flip_last_byte(&wal);
        }
        let s = open(dir.path());
        let (bytes, next, _) = read_all(&s, "s").unwrap();
        assert_eq!(bytes, b"ab", "damage {damage}");
        assert_eq!(next, Offset::new(2, 2));
        // The torn append was never acknowledged: its retry is new data.
        assert!(matches!(
            s.append("s", produce("c", 2)).unwrap(),
            AppendOutcome::Appended { .. }
        ));
        assert!(matches!(
            s.append("s", produce("b", 1)).unwrap(),
            AppendOutcome::Duplicate { .. }
        ));
        drop(s);
        assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"abc");
    }
}

#[test]
fn torn_data_file_tail_is_rebuilt_from_the_wal() {
    for damage in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        three_appends(dir.path());
        let data = newest(dir.path(), "streams", "dat");
        let index = newest(dir.path(), "streams", "idx");
        match damage {
            0 => chop(&data, 5),
            1 => flip_last_byte(&data),
            // Appends leave the index to the checkpoint, so what a crash
            // can leave there is a torn write of a checkpoint that never
            // completed.
            _ => append_bytes(&index, &[9u8; 13]),
        }
        let s = open(dir.path());
        assert_eq!(read_all(&s, "s").unwrap().0, b"abc", "damage {damage}");
        s.append("s", produce("d", 3)).unwrap();
        assert_eq!(read_all(&s, "s").unwrap().0, b"abcd");
    }
}

#[test]
fn deletes_give_back_disk_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("x", create("text/plain", "bytes")).unwrap();
    let files = || {
        std::fs::read_dir(dir.path().join("streams"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 2);
    s.delete("x", 2).unwrap();
    s.checkpoint().unwrap();
    assert_eq!(files(), 0);
    // Old WAL segments go too: one segment remains.
    assert_eq!(
        std::fs::read_dir(dir.path().join("wal")).unwrap().count(),
        1
    );
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path());
    assert!(
        FileStorage::open(
            dir.path(),
            SyncMode::Always,
            Duration::from_millis(50),
            WakeHub::new()
        )
        .is_err()
    );
}

#[test]
fn concurrent_appends_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open(dir.path()));
    for t in 0..4 {
        s.create(&format!("s{t}"), create("text/plain", ""))
            .unwrap();
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = std::sync::Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    s.append(&format!("s{}", t % 4), append("xy")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(s);
    let s = open(dir.path());
    for t in 0..4 {
        let (bytes, next, _) = read_all(&s, &format!("s{t}")).unwrap();
        assert_eq!(bytes.len(), 200);
        assert_eq!(next, Offset::new(100, 200));
    }
}

#[test]
fn interval_mode_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FileStorage::open(
            dir.path(),
            SyncMode::Interval,
            Duration::from_millis(5),
            WakeHub::new(),
        )
        .unwrap();
        s.create("s", create("text/plain", "a")).unwrap();
        s.append("s", append("b")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.shutdown().unwrap();
    }
    assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"ab");
}

#[test]
fn fork_of_a_fork_at_an_inherited_offset() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("a", create("text/plain", "0123")).unwrap();
    s.append("a", append("4567")).unwrap();
    let mut f1 = create("text/plain", "89");
    f1.fork = Some(ForkSpec {
        source: "a".into(),
        offset: None,
        sub_offset: 0,
    });
    s.create("f1", f1).unwrap();
    // Taken inside "a"'s second record, which "f1" only inherits.
    let mut f2 = create("text/plain", "x");
    f2.fork = Some(ForkSpec {
        source: "f1".into(),
        offset: Some(Offset::new(1, 4)),
        sub_offset: 2,
    });
    s.create("f2", f2).unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "f2").unwrap().0, b"012345x");
    assert_eq!(read_all(&s, "f1").unwrap().0, b"0123456789");
}

#[test]
fn calls_after_shutdown_fail_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("text/plain", "a")).unwrap();
    s.shutdown().unwrap();
    assert!(s.append("s", append("b")).is_err());
    drop(s);
    assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"a");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn clean_reopen_replays_nothing_and_ignores_bytes_written_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("text/plain", "ab")).unwrap();
    s.shutdown().unwrap();
    drop(s);
    let wal_before = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    // What a write staged ahead of a WAL entry that never committed leaves.
    append_bytes(&newest(dir.path(), "streams", "dat"), b"garbage garbage");
    append_bytes(&newest(dir.path(), "streams", "idx"), &[7u8; 12]);
    let s = open(dir.path());
    // No replay, so no checkpoint before serving: the old segment is still there.
    assert_eq!(
        std::fs::read_dir(dir.path().join("wal")).unwrap().count(),
        wal_before + 1
    );
    assert_eq!(read_all(&s, "s").unwrap().0, b"ab");
    s.append("s", append("cd")).unwrap();
    assert_eq!(read_all(&s, "s").unwrap().0, b"abcd");
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "s").unwrap().0, b"abcd");
    s.append("s", append("e")).unwrap();
    s.checkpoint().unwrap();
    drop(s);
    assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"abcde");
}

#[test]
fn files_of_removed_streams_are_deleted_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("gone", create("text/plain", "x")).unwrap();
    s.create("kept", create("text/plain", "y")).unwrap();
    s.shutdown().unwrap();
    drop(s);
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 4);
    // Keep copies of every file, delete "gone" (its files are unlinked by
    // the checkpoint), then put the copies back: as if a crash had come
    // between the checkpoint and the unlink.
    let saved: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let s = open(dir.path());
    s.delete("gone", 5).unwrap();
    s.checkpoint().unwrap();
    drop(s);
    for (p, b) in &saved {
        std::fs::write(p, b).unwrap();
    }
    let s = open(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let count = || {
        std::fs::read_dir(dir.path().join("streams"))
            .unwrap()
            .count()
    };
    while count() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "orphaned files not deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
        s.checkpoint().unwrap();
    }
    assert_eq!(read_all(&s, "kept").unwrap().0, b"y");
    assert!(read_all(&s, "gone").is_err());
}
/// The ops of every entry in the newest WAL segment.
fn wal_ops(dir: &Path) -> Vec<super::format::Op> {
    use super::format;
    let buf = std::fs::read(newest(dir, "wal", "log")).unwrap();
    let mut at = format::WAL_HEADER_LEN as usize;
    let mut ops = Vec::new();
    while at < buf.len() {
        let (payload, len) = format::get_frame(&buf[at..]).unwrap();
        ops.extend(format::decode_entry(payload).unwrap().0);
        at += len;
    }
    ops
}

#[test]
fn append_entries_carry_only_what_changed_and_replay() {
    use super::format::Op;
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create("s", create("text/plain", "")).unwrap();
        for (i, id) in ["p", "q", "r"].iter().enumerate() {
            let mut req = produce(&format!("{id}0;"), 0);
            req.producer.as_mut().unwrap().id = id.to_string();
            req.stream_seq = Some(format!("0{i}"));
            s.append("s", req).unwrap();
        }
        s.append("s", append("plain;")).unwrap();
        let mut close = produce("p1;", 1);
        close.close = true;
        s.append("s", close).unwrap();
        let appends: Vec<_> = wal_ops(dir.path())
            .into_iter()
            .filter_map(|op| match op {
                Op::Append(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(appends.len(), 5);
        // Each carries its own producer only, not the stream's three.
        let ids: Vec<_> = appends
            .iter()
            .map(|a| a.producer.as_ref().map(|(id, _)| id.as_str()))
            .collect();
        assert_eq!(ids, [Some("p"), Some("q"), Some("r"), None, Some("p")]);
        assert_eq!(appends[2].stream_seq.as_deref(), Some("02"));
        assert!(appends[4].close && !appends[3].close);
        assert_eq!(appends[4].closed_by.as_ref().map(|p| p.seq), Some(1));
        // Dropped without a checkpoint: the reopen replays the entries.
    }
    for _ in 0..2 {
        let s = open(dir.path());
        let (bytes, next, closed) = read_all(&s, "s").unwrap();
        assert_eq!(bytes, b"p0;q0;r0;plain;p1;");
        assert!(closed);
        assert_eq!(next, Offset::new(5, 18));
        // Every producer's state survived: retries are duplicates.
        for (id, seq) in [("p", 1), ("q", 0), ("r", 0)] {
            let mut req = produce("x", seq);
            req.producer.as_mut().unwrap().id = id.to_string();
            req.close = id == "p";
            assert!(
                matches!(
                    s.append("s", req),
                    Ok(AppendOutcome::Duplicate { .. }) | Err(StorageError::Closed { .. })
                ),
                "{id}"
            );
        }
        // Record boundaries, from the replayed index.
        let (rest, _, _) = read_from(&s, "s", ReadFrom::At(Offset::new(2, 6))).unwrap();
        assert_eq!(rest, b"r0;plain;p1;");
    }
}

#[test]
fn entries_of_the_previous_version_still_replay() {
    use super::format::{self, Op};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("text/plain", "ab")).unwrap();
    s.shutdown().unwrap();
    drop(s);
    // What the previous version logged for a producer append: a `Put`
    // with the whole new metadata.
    let ckp = std::fs::read(dir.path().join("checkpoint")).unwrap();
    let mut meta = format::decode_checkpoint(&ckp).unwrap().streams[0]
        .1
        .clone();
    meta.tail = Offset::new(meta.tail.seq + 1, meta.tail.pos + 2);
    meta.producers.insert(
        "p".into(),
        crate::storage::ProducerState {
            epoch: 0,
            last_seq: 0,
        },
    );
    let op = Op::Put {
        name: "s".into(),
        meta: Box::new(meta),
        records: 1,
    };
    let mut frame = Vec::new();
    format::put_frame(
        &mut frame,
        &format::encode_entry(&[op], &[Bytes::from_static(b"cd")]),
    );
    append_bytes(&newest(dir.path(), "wal", "log"), &frame);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "s").unwrap().0, b"abcd");
    assert!(matches!(
        s.append("s", produce("cd", 0)),
        Ok(AppendOutcome::Duplicate { .. })
    ));
    s.append("s", produce("ef", 1)).unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, "s").unwrap().0, b"abcdef");
    let (tail, _, _) = read_from(&s, "s", ReadFrom::At(Offset::new(2, 4))).unwrap();
    assert_eq!(tail, b"ef");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn appends_leave_their_index_entries_to_the_checkpoint() {
    use super::format::index_len;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("text/plain", "a")).unwrap();
    let idx = newest(dir.path(), "streams", "idx");
    assert_eq!(file_len(&idx), index_len(1));
    for (i, body) in ["bb", "ccc", "dddd"].iter().enumerate() {
        s.append("s", produce(body, i as u64)).unwrap();
    }
    // In memory only, yet reads find every record boundary.
    assert_eq!(file_len(&idx), index_len(1));
    let (rest, _, _) = read_from(&s, "s", ReadFrom::At(Offset::new(2, 3))).unwrap();
    assert_eq!(rest, b"cccdddd");
    s.checkpoint().unwrap();
    assert_eq!(file_len(&idx), index_len(4));
    s.append("s", produce("e", 3)).unwrap();
    // A crash here: the last append's entry is in the WAL only.
    drop(s);
    let mut want = b"abbcccdddde".to_vec();
    for round in 0..3 {
        let s = open(dir.path());
        assert_eq!(read_all(&s, "s").unwrap().0, want, "round {round}");
        for (at, from) in [((1, 1), 1), ((4, 10), 10), ((3, 6), 6)] {
            let (got, _, _) = read_from(&s, "s", ReadFrom::At(Offset::new(at.0, at.1))).unwrap();
            assert_eq!(got, want[from..], "round {round} at {at:?}");
        }
        if round == 1 {
            // Appended after a clean reopen (index loaded from the file),
            // then written by a checkpoint.
            s.append("s", produce("e", 4)).unwrap();
            assert!(matches!(
                s.append("s", produce("e", 4)),
                Ok(AppendOutcome::Duplicate { .. })
            ));
            s.checkpoint().unwrap();
            assert_eq!(file_len(&idx), index_len(6));
            want.push(b'e');
        }
    }
}
