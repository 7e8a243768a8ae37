//! Unit tests of the file backend's recovery: torn WAL and data-file
//! tails, clean reopens, what WAL entries carry (and that older entries
//! still replay), and index entries left to the checkpoint.

use std::path::Path;

use bytes::Bytes;

use super::test_support::{
    append, append_bytes, chop, create, file_len, flip_last_byte, newest, open, produce, read_all,
    read_from, stopped_with,
};
use crate::offset::{Offset, ReadFrom};
use crate::storage::{AppendOutcome, Storage, StorageError};

/// Writes "a", "b", "c" as three acknowledged appends after a checkpoint,
/// so that they live in the WAL and past the checkpointed data length.
fn three_appends(dir: &Path) {
    three_appends_then(dir, |_| {});
}

/// [`three_appends`], then `then` before the store goes.
fn three_appends_then(dir: &Path, then: impl FnOnce(&super::FileStorage)) {
    let s = open(dir);
    s.create("s", create("")).unwrap();
    s.checkpoint().unwrap();
    for (i, b) in ["a", "b", "c"].into_iter().enumerate() {
        s.append("s", produce(b, i as u64)).unwrap();
    }
    then(&s);
}

#[test]
fn torn_wal_tail_loses_only_the_torn_entry() {
    for damage in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        three_appends(dir.path());
        let wal = newest(dir.path(), "wal", "log");
        // The committer writes zeros past the log: damage its last entry.
        let end = log_end(&wal);
        assert!(file_len(&wal) > end, "zeros written past the log");
        cut(&wal, end);
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

/// Zeros end a segment's log; an entry found after them (a later page of
/// a batch whose sync never completed, so never acknowledged) is not
/// replayed.
#[test]
fn zeros_end_the_wal_and_entries_after_them_are_not_replayed() {
    use super::format;
    for lost in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        three_appends(dir.path());
        let wal = newest(dir.path(), "wal", "log");
        let end = log_end(&wal) as usize;
        let mut buf = std::fs::read(&wal).unwrap();
        assert!(format::zero_tail(&buf[end..]));
        if lost {
            // The last entry's bytes never reached the disk; a copy of it
            // lands after the zeros.
            let mut at = format::WAL_HEADER_LEN as usize;
            let mut last = at;
            while at < end {
                last = at;
                at += format::get_frame(&buf[at..]).unwrap().1;
            }
            let entry = buf[last..end].to_vec();
            buf[last..end].fill(0);
            buf[end + 100..end + 100 + entry.len()].copy_from_slice(&entry);
            std::fs::write(&wal, &buf).unwrap();
        }
        let s = open(dir.path());
        let want: &[u8] = if lost { b"ab" } else { b"abc" };
        assert_eq!(read_all(&s, "s").unwrap().0, want, "lost {lost}");
        let retry = s.append("s", produce("c", 2)).unwrap();
        assert_eq!(
            matches!(retry, AppendOutcome::Duplicate { .. }),
            !lost,
            "lost {lost}"
        );
        drop(s);
        assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"abc");
    }
}

#[test]
fn torn_data_file_tail_is_rebuilt_from_the_wal() {
    for damage in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        // The buffered appends are written to the data file (as a full
        // buffer or a checkpoint does: `super::pending`), whose tail the
        // crash then tears.
        three_appends_then(dir.path(), |s| {
            let mut g = s.inner.find("s").unwrap();
            s.inner.flush_pending(&mut g).unwrap();
        });
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
fn clean_reopen_replays_nothing_and_ignores_bytes_written_ahead() {
    let dir = stopped_with("s", "ab");
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

/// Where the log of WAL segment `path` ends (the zeros past it excluded).
fn log_end(path: &Path) -> u64 {
    use super::format;
    let buf = std::fs::read(path).unwrap();
    let mut at = format::WAL_HEADER_LEN as usize;
    while at < buf.len() && !format::zero_tail(&buf[at..]) {
        at += format::get_frame(&buf[at..]).unwrap().1;
    }
    at as u64
}

fn cut(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// The ops of every entry in the newest WAL segment.
fn wal_ops(dir: &Path) -> Vec<super::format::Op> {
    use super::format;
    let buf = std::fs::read(newest(dir, "wal", "log")).unwrap();
    let mut at = format::WAL_HEADER_LEN as usize;
    let mut ops = Vec::new();
    while at < buf.len() && !format::zero_tail(&buf[at..]) {
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
        s.create("s", create("")).unwrap();
        for (i, id) in ["p", "q", "r"].iter().enumerate() {
            let mut req = produce(format!("{id}0;"), 0);
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
    let dir = stopped_with("s", "ab");
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

#[test]
fn appends_leave_their_index_entries_to_the_checkpoint() {
    use super::format::index_len;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("a")).unwrap();
    let idx = newest(dir.path(), "streams", "idx");
    assert_eq!(file_len(&idx), index_len(1));
    for (i, body) in ["bb", "ccc", "dddd"].iter().enumerate() {
        s.append("s", produce(*body, i as u64)).unwrap();
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

#[test]
fn a_replayed_trim_keeps_the_records_a_fork_still_reads() {
    use crate::storage::ForkSpec;
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create("src", create("ab")).unwrap();
        s.append("src", append("cd")).unwrap();
        s.checkpoint().unwrap();
        let mut fork = create("");
        fork.fork = Some(ForkSpec {
            source: "src".into(),
            offset: None,
            sub_offset: 0,
        });
        s.create("fork", fork).unwrap();
        s.append("fork", append("ef")).unwrap();
        // Past both records: with the fork reading them, the source's trim
        // moves its point but gives no space back.
        let out = s.trim("src", Offset::new(2, 4), 2).unwrap();
        assert!(out.moved);
        assert_eq!(read_all(&s, "fork").unwrap().0, b"abcdef");
        // Dropped without a shutdown: the reopen replays the WAL.
    }
    let s = open(dir.path());
    assert_eq!(read_all(&s, "fork").unwrap().0, b"abcdef");
    // The source itself starts at its trim point.
    assert_eq!(read_all(&s, "src").unwrap().0, b"");
    // The fork's last reference gone, the source's trimmed records go too.
    s.delete("fork", 3).unwrap();
    assert_eq!(read_all(&s, "src").unwrap().0, b"");
}
