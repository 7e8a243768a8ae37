//! Unit tests of the file backend: behaviour, reopen, forks, deletes,
//! concurrency and shutdown.

use std::path::PathBuf;
use std::time::Duration;

use super::FileStorage;
use super::test_support::{append, create, open, produce, read_all, read_from, try_open};
use crate::config::SyncMode;
use crate::notify::WakeHub;
use crate::offset::{Offset, ReadFrom};
use crate::storage::{
    AppendOutcome, CreateOutcome, CreateRequest, Expiry, ForkSpec, Storage, StorageError,
};

#[test]
fn append_and_read_binary_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(matches!(
        s.create("b", create("ab")).unwrap(),
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
    s.create(
        "j",
        CreateRequest::new(Some("application/json"), "[1, {\"a\":2}]", 1),
    )
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
        s.create("a", create("hello")).unwrap();
        s.append("a", produce(" world", 0)).unwrap();
        let mut close = produce("!", 1);
        close.close = true;
        s.append("a", close).unwrap();
        let mut fork = create("fork");
        fork.content_type = None;
        fork.fork = Some(ForkSpec {
            source: "a".into(),
            offset: Some(Offset::new(1, 5)),
            sub_offset: 3,
        });
        s.create("f", fork).unwrap();
        s.create("gone", create("x")).unwrap();
        s.delete("gone", 2).unwrap();
        s.create("p", create("")).unwrap();
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
        let mut c = create("done");
        c.closed = true;
        s.create("c", c).unwrap();
        let mut t = create("");
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

#[test]
fn deletes_give_back_disk_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("x", create("bytes")).unwrap();
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
    assert!(try_open(dir.path()).is_err());
}

#[test]
fn concurrent_appends_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open(dir.path()));
    for t in 0..4 {
        s.create(&format!("s{t}"), create("")).unwrap();
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
        s.create("s", create("a")).unwrap();
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
    s.create("a", create("0123")).unwrap();
    s.append("a", append("4567")).unwrap();
    let mut f1 = create("89");
    f1.fork = Some(ForkSpec {
        source: "a".into(),
        offset: None,
        sub_offset: 0,
    });
    s.create("f1", f1).unwrap();
    // Taken inside "a"'s second record, which "f1" only inherits.
    let mut f2 = create("x");
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
    s.create("s", create("a")).unwrap();
    s.shutdown().unwrap();
    assert!(s.append("s", append("b")).is_err());
    drop(s);
    assert_eq!(read_all(&open(dir.path()), "s").unwrap().0, b"a");
}

#[test]
fn files_of_removed_streams_are_deleted_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("gone", create("x")).unwrap();
    s.create("kept", create("y")).unwrap();
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

/// A create over an expired name removes the old stream (cascading to a
/// hidden source) and creates the new one in one WAL entry; a fork source
/// the old stream held is released and taken again by the new fork.
#[test]
fn create_over_an_expired_name_replays_as_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let fork_of = |source: &str, body: &'static str, now| {
        let mut req = CreateRequest::new(Some("text/plain"), body, now);
        req.fork = Some(ForkSpec {
            source: source.into(),
            offset: None,
            sub_offset: 0,
        });
        req
    };
    {
        let s = open(dir.path());
        s.create("a", create("a")).unwrap();
        s.create("b", create("b")).unwrap();
        for (name, source) in [("x", "a"), ("y", "b")] {
            let mut req = fork_of(source, "-old", 1);
            req.expiry = Some(Expiry::Ttl(1));
            s.create(name, req).unwrap();
        }
        s.delete("a", 2).unwrap(); // soft: "x" still reads it
        s.checkpoint().unwrap();
        // Both expired by now: "x" is replaced by a plain stream (and "a",
        // hidden and unreferenced then, goes with it), "y" by a new fork of
        // the source the old one held.
        s.create("x", CreateRequest::new(Some("text/plain"), "new", 5_000))
            .unwrap();
        s.create("y", fork_of("b", "+new", 5_000)).unwrap();
        // Dropped without a checkpoint: the reopen replays both creates.
    }
    let s = open(dir.path());
    assert!(matches!(s.head("a", 5_000), Err(StorageError::NotFound)));
    assert_eq!(read_all(&s, "x").unwrap().0, b"new");
    assert_eq!(read_all(&s, "y").unwrap().0, b"b+new");
    // "b" is referenced once (by the new "y"): a delete is soft.
    s.delete("b", 5_000).unwrap();
    assert!(matches!(s.head("b", 5_000), Err(StorageError::Gone)));
    assert_eq!(read_all(&s, "y").unwrap().0, b"b+new");
    s.delete("y", 5_000).unwrap();
    assert!(matches!(s.head("b", 5_000), Err(StorageError::NotFound)));
}

/// Allocated 512-byte blocks of `path`.
fn blocks(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks()
}

/// True when the file system under `dir` gives space back for a hole.
fn punches_holes(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.join("punch-probe");
    std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.sync_all().unwrap();
    let before = blocks(&path);
    // SAFETY: an open descriptor, a range within the file.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            1 << 20,
        )
    };
    let punched = r == 0 && blocks(&path) < before;
    std::fs::remove_file(&path).unwrap();
    punched
}

#[test]
fn a_trim_never_punches_a_hole_under_bytes_still_lent() {
    use super::range::MAP_MIN;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("t", create("")).unwrap();
    let record = |seed: u8| -> Vec<u8> {
        (0..MAP_MIN + 4096)
            .map(|i| (i as u8).wrapping_mul(31) | 1 ^ seed)
            .collect()
    };
    let mut tails = Vec::new();
    for seed in 1..=3 {
        let AppendOutcome::Appended { info, .. } = s.append("t", append(record(seed))).unwrap()
        else {
            panic!("not appended");
        };
        tails.push(info.tail);
    }
    let id = s.head("t", 3).unwrap().id;
    let data = s.inner.files.data_path(id);
    let expected: Vec<u8> = (1..=3).flat_map(record).collect();
    // Lent out of the data file's mapping (all but the last record, which
    // the file keeps in memory), still to be written to a socket.
    let lent = s
        .read("t", crate::storage::ReadRequest::all(ReadFrom::Start, 3))
        .unwrap();
    s.inner.files.sync(id).unwrap();
    let before = blocks(&data);
    // Trimmed before the last record: the first two are given back, but
    // not while their bytes are out.
    s.trim("t", tails[1], 3).unwrap();
    assert!(lent.concat() == expected, "lent bytes changed under a trim");
    assert_eq!(blocks(&data), before, "punched while lent");
    // Still out: a retry puts it off again.
    s.inner.files.retry_punches();
    assert!(lent.concat() == expected);
    drop(lent);
    s.inner.files.retry_punches();
    if punches_holes(dir.path()) {
        assert!(
            blocks(&data) < before,
            "the space is given back once returned"
        );
    }
    // What is retained reads as before.
    let (bytes, _, _) = read_all(&s, "t").unwrap();
    assert!(bytes == record(3));
}

#[test]
fn a_trim_writes_buffered_frames_before_it_punches_their_space() {
    // Small appends wait in the stream's buffer (`super::pending`); a trim
    // past them must not punch a file that does not hold them yet, or the
    // checkpoint would write them back into the hole.
    let dir = tempfile::tempdir().unwrap();
    if !punches_holes(dir.path()) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the file system under {} does not punch holes",
            dir.path().display()
        );
        return;
    }
    let s = open(dir.path());
    s.create("t", create("")).unwrap();
    let mut tail = None;
    for i in 0..500u32 {
        let r = s.append("t", append(format!("{i:0>100}"))).unwrap();
        let AppendOutcome::Appended { info, .. } = r else {
            panic!("not appended");
        };
        tail = Some(info.tail);
    }
    let id = s.head("t", 3).unwrap().id;
    let data = s.inner.files.data_path(id);
    s.trim("t", tail.unwrap(), 3).unwrap();
    s.checkpoint().unwrap();
    // 54,000 bytes of frames from byte 40: all but the first and the last
    // 4 KiB block are a hole.
    assert!(
        blocks(&data) * 512 <= 2 * 4096,
        "{} blocks of 512 bytes still taken",
        blocks(&data)
    );
    let (bytes, next, _) = read_all(&s, "t").unwrap();
    assert!(bytes.is_empty());
    assert_eq!(next, tail.unwrap());
}
