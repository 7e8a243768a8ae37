//! [`Storage::read_now`] on the file backend: a live reader's poll answered
//! on the async worker gives exactly what `read` gives, and every read that
//! would wait (for the disk, for an index not loaded, for a commit, for a
//! stream held by an append) or fail is left to `read`.

use super::faults::Point;
use super::test_support::{append, create, open};
use super::{FileStorage, HANDLE_CACHE};
use crate::offset::{Offset, ReadFrom};
use crate::storage::handle::NonBlocking;
use crate::storage::{
    AppendRequest, CreateRequest, Expiry, ForkSpec, ReadOutcome, ReadRequest, Storage,
};

/// `read_now` as the handle calls it: in a section marked non-blocking
/// (where blocking I/O panics in debug builds).
fn now(s: &FileStorage, name: &str, from: ReadFrom, at: u64) -> Option<ReadOutcome> {
    let _marked = NonBlocking::enter();
    s.read_now(name, &ReadRequest::all(from, at))
}

/// Asserts that `read_now` answers `from` and that `read` right after it
/// (at the same time) gives the same answer.
fn answers_as_read(s: &FileStorage, name: &str, from: ReadFrom, at: u64) {
    let quick = now(s, name, from, at).unwrap_or_else(|| panic!("{name} {from:?}: declined"));
    let slow = s.read(name, ReadRequest::all(from, at)).unwrap();
    assert_eq!(
        (&quick.info, quick.start, quick.concat(), quick.next),
        (&slow.info, slow.start, slow.concat(), slow.next),
        "{name} {from:?}"
    );
}

#[test]
fn answers_at_and_behind_the_tail_as_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("t", create("ab")).unwrap();
    s.append("t", append("cde")).unwrap();
    let json = CreateRequest::new(Some("application/json"), "[1,2]", 1);
    s.create("j", json).unwrap();
    s.append("j", AppendRequest::new(Some("application/json"), "3", 2))
        .unwrap();
    let mut fork = create("x");
    fork.content_type = None;
    fork.fork = Some(ForkSpec {
        source: "t".into(),
        offset: Some(Offset::new(1, 2)),
        sub_offset: 0,
    });
    s.create("f", fork).unwrap();
    s.append("f", append("yz")).unwrap();
    for from in [
        ReadFrom::Tail,
        ReadFrom::Start,
        ReadFrom::At(Offset::new(2, 5)),
        ReadFrom::At(Offset::new(1, 2)),
        ReadFrom::At(Offset::new(1, 3)),
    ] {
        answers_as_read(&s, "t", from, 3);
    }
    for from in [
        ReadFrom::Tail,
        ReadFrom::Start,
        ReadFrom::At(Offset::new(2, 4)),
    ] {
        answers_as_read(&s, "j", from, 3);
    }
    // A fork reads its source's records too, and its own.
    answers_as_read(&s, "f", ReadFrom::Start, 3);
    let at_tail = now(&s, "t", ReadFrom::Tail, 3).unwrap();
    assert!(at_tail.chunks.is_empty() && at_tail.up_to_date());
    assert_eq!(at_tail.next, Offset::new(2, 5));
}

#[test]
fn a_poll_renews_the_ttl_as_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut req = create("a");
    req.expiry = Some(Expiry::Ttl(10));
    s.create("s", req).unwrap();
    // Polled at 9_000 (ms) the stream would expire at 10_001 unrenewed.
    assert!(now(&s, "s", ReadFrom::Tail, 9_000).is_some());
    assert!(now(&s, "s", ReadFrom::Tail, 18_000).is_some(), "renewed");
    assert!(s.head("s", 27_999).is_ok(), "renewed by the second poll");
    // Once expired, `read_now` leaves the answer (not found) to `read`.
    assert!(now(&s, "s", ReadFrom::Tail, 28_001).is_none());
    assert!(
        s.read("s", ReadRequest::all(ReadFrom::Tail, 28_001))
            .is_err()
    );
}

#[test]
fn declines_what_would_wait_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create("s", create("abc")).unwrap();
        s.shutdown().unwrap();
    }
    let s = open(dir.path());
    // After a reopen no index is loaded: the tail needs none, a read
    // behind it does.
    answers_as_read(&s, "s", ReadFrom::Tail, 3);
    let behind = ReadFrom::At(Offset::new(0, 1));
    assert!(now(&s, "s", behind, 3).is_none(), "index not loaded");
    // `read` loads it; then polls behind the tail are answered too.
    s.read("s", ReadRequest::all(behind, 3)).unwrap();
    answers_as_read(&s, "s", behind, 3);
    // Absent, beyond the tail, deleted.
    assert!(now(&s, "nope", ReadFrom::Tail, 3).is_none());
    assert!(now(&s, "s", ReadFrom::At(Offset::new(5, 50)), 3).is_none());
    // Held by an append (which may be in the middle of a `pwrite`).
    {
        let held = s.inner.get("s").unwrap();
        let _g = held.lock_arc();
        assert!(now(&s, "s", ReadFrom::Tail, 3).is_none(), "stream held");
    }
    // A stream whose files left the handle cache (more streams than it
    // holds were read since): bytes behind the tail need an `open`.
    for i in 0..HANDLE_CACHE + 1 {
        let name = format!("o{i}");
        s.create(&name, create("o")).unwrap();
        s.read(&name, ReadRequest::all(ReadFrom::Start, 3)).unwrap();
    }
    assert!(now(&s, "s", ReadFrom::Start, 3).is_none(), "file closed");
    s.delete("s", 3).unwrap();
    assert!(now(&s, "s", ReadFrom::Tail, 3).is_none(), "deleted");
}

#[test]
fn declines_once_the_log_has_failed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("abc")).unwrap();
    assert!(now(&s, "s", ReadFrom::Tail, 3).is_some());
    s.inner.files.faults.arm(Point::WalSync, 0, libc::EIO);
    assert!(s.append("s", append("d")).is_err());
    // The failed append's bytes may be in memory and files; no poll may
    // see them, and `read` reports the failure.
    assert!(now(&s, "s", ReadFrom::Tail, 3).is_none());
    assert!(now(&s, "s", ReadFrom::Start, 3).is_none());
    assert!(s.read("s", ReadRequest::all(ReadFrom::Start, 3)).is_err());
}

#[test]
fn the_last_large_record_is_answered_from_memory() {
    use super::recent::RECENT_MIN;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("ab")).unwrap();
    let big: Vec<u8> = (0..RECENT_MIN + 10).map(|i| (i % 251) as u8).collect();
    s.append("s", append(big.clone())).unwrap();
    // Past what a poll reads from the page cache, but kept in memory: the
    // whole record and a piece of it.
    answers_as_read(&s, "s", ReadFrom::At(Offset::new(1, 2)), 3);
    answers_as_read(&s, "s", ReadFrom::At(Offset::new(1, 1000)), 3);
    let got = now(&s, "s", ReadFrom::At(Offset::new(1, 2)), 3).unwrap();
    assert_eq!(got.concat(), big);
    // From the start it spans the small record too: a few pieces are read
    // one by one, not mapped.
    answers_as_read(&s, "s", ReadFrom::Start, 3);
    // A newer small record keeps it (a poll behind both reads the two
    // pieces one by one); a newer large one replaces it.
    s.append("s", append("c")).unwrap();
    answers_as_read(&s, "s", ReadFrom::At(Offset::new(1, 2)), 3);
    let newer = vec![7u8; RECENT_MIN];
    s.append("s", append(newer.clone())).unwrap();
    let tail_start = Offset::new(3, 2 + big.len() as u64 + 1);
    assert_eq!(
        now(&s, "s", ReadFrom::At(tail_start), 3).unwrap().concat(),
        newer
    );
    assert!(now(&s, "s", ReadFrom::At(Offset::new(1, 2)), 3).is_none());
    // And `read` still reads the older one from the file, its CRC checked.
    let old = s
        .read("s", ReadRequest::all(ReadFrom::At(Offset::new(1, 2)), 3))
        .unwrap();
    assert_eq!(old.chunks[0], big);
}

/// Waits (at most 10 s) until stream "s" has an append staged up to byte
/// `tail` whose commit is still pending (its syncs held).
fn until_staged(s: &FileStorage, tail: u64) {
    let staged = || {
        let st = s.inner.get("s").unwrap();
        let st = st.lock();
        st.meta.tail.pos == tail && !s.inner.wal.is_committed(st.last_lsn)
    };
    let t0 = std::time::Instant::now();
    while !staged() {
        assert!(t0.elapsed().as_secs() < 10, "the append never staged");
        std::thread::yield_now();
    }
}

/// While an append waits for its `fdatasync`, a poll is answered at once
/// with the stream as acknowledged writes left it (the pending bytes are
/// not there yet); once the append is acknowledged, polls see it.
#[test]
fn a_poll_during_a_pending_commit_is_answered_from_the_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("ab")).unwrap();
    s.append("s", append("c")).unwrap();
    let acked = now(&s, "s", ReadFrom::Start, 3).unwrap();
    s.inner.files.faults.hold_syncs(true);
    std::thread::scope(|scope| {
        let pending = scope.spawn(|| s.append("s", append("d")).unwrap());
        until_staged(&s, 4);
        for from in [
            ReadFrom::Start,
            ReadFrom::Tail,
            ReadFrom::At(Offset::new(1, 2)),
        ] {
            let got = now(&s, "s", from, 3).unwrap_or_else(|| panic!("{from:?}: declined"));
            assert_eq!(got.info, acked.info, "{from:?}");
            assert_eq!(got.next, Offset::new(2, 3), "{from:?}");
            assert!(got.up_to_date(), "{from:?}");
            assert!(
                !got.concat().contains(&b'd'),
                "{from:?}: unacknowledged bytes"
            );
        }
        assert_eq!(now(&s, "s", ReadFrom::Start, 3).unwrap().concat(), b"abc");
        // Past the acknowledged tail: left to `read`, which waits.
        assert!(now(&s, "s", ReadFrom::At(Offset::new(3, 4)), 3).is_none());
        s.inner.files.faults.hold_syncs(false);
        pending.join().unwrap();
    });
    let after = now(&s, "s", ReadFrom::Start, 3).unwrap();
    assert_eq!(after.concat(), b"abcd");
    assert_eq!(after.next, Offset::new(3, 4));
    answers_as_read(&s, "s", ReadFrom::Start, 3);
}

/// An append staged while an earlier one still waits for its commit:
/// polls are answered from the state before the earlier one (the last
/// one known acknowledged), never with either's bytes.
#[test]
fn a_second_pending_append_answers_from_the_first_ones_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create("s", create("ab")).unwrap();
    s.inner.files.faults.hold_syncs(true);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| s.append("s", append("c")).unwrap());
        until_staged(&s, 3);
        let second = scope.spawn(|| s.append("s", append("d")).unwrap());
        until_staged(&s, 4);
        let got = now(&s, "s", ReadFrom::Start, 3).expect("answered");
        assert_eq!(got.concat(), b"ab");
        assert_eq!(got.next, Offset::new(1, 2));
        s.inner.files.faults.hold_syncs(false);
        first.join().unwrap();
        second.join().unwrap();
    });
    answers_as_read(&s, "s", ReadFrom::Start, 3);
    assert_eq!(now(&s, "s", ReadFrom::Start, 3).unwrap().concat(), b"abcd");
}
