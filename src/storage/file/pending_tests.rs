//! Appended frames buffered before they reach the data file
//! ([`super::pending`]): reads, checkpoints and reopening see every
//! acknowledged byte, and a failed write of the buffer fails only the call
//! that needed it.

use super::faults::Point;
use super::pending::PENDING_MAX;
use super::test_support::{append, create, file_len, newest, open, read_all, read_from};
use crate::offset::{Offset, ReadFrom};
use crate::storage::{AppendOutcome, Storage, StorageError};

/// A store in a fresh directory with the empty plain-text stream `s`.
fn with_empty_s() -> (tempfile::TempDir, super::FileStorage) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create("s", create("")).unwrap();
    (dir, store)
}

/// The next write of a buffer fails as on a full disk.
fn fail_next_flush(store: &super::FileStorage) {
    store
        .inner
        .files
        .faults
        .arm(Point::DataFlush, 0, libc::ENOSPC);
}

/// `n` appends of `len` bytes each, `fill` then the index: the bytes `s`
/// holds after them.
fn append_many(store: &super::FileStorage, n: usize, len: usize) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 0..n {
        let mut msg = vec![b'a' + (i % 26) as u8; len];
        msg[0] = b'<';
        let r = store.append("s", append(msg.clone())).unwrap();
        assert!(matches!(r, AppendOutcome::Appended { .. }));
        all.extend_from_slice(&msg);
    }
    all
}

#[test]
fn small_appends_are_read_from_the_buffer_and_reach_the_file_at_the_checkpoint() {
    let (dir, store) = with_empty_s();
    let data = newest(dir.path(), "streams", "dat");
    let empty = file_len(&data);
    let mut want = append_many(&store, 20, 100);
    // Acknowledged (in the WAL), not yet in the data file; reads copy
    // them out of the buffer.
    assert_eq!(read_all(&store, "s").unwrap().0, want);
    let (from_third, _, _) = read_from(&store, "s", ReadFrom::At(Offset::new(2, 200))).unwrap();
    assert_eq!(from_third, want[200..]);
    assert_eq!(file_len(&data), empty, "small appends are buffered");
    // The checkpoint writes them before the snapshot relies on them.
    store.checkpoint().unwrap();
    assert_eq!(file_len(&data), empty + 20 * 108);
    // Then half in the file, half in the buffer: one read joins them.
    want.extend(append_many(&store, 5, 100));
    assert_eq!(read_all(&store, "s").unwrap().0, want);
    assert_eq!(file_len(&data), empty + 20 * 108);
    // More, then the process goes without a checkpoint: replayed from the WAL.
    want.extend(append_many(&store, 7, 100));
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "s").unwrap().0, want);
}

#[test]
fn reads_do_not_write_the_buffer_so_a_full_disk_does_not_stop_them() {
    let (_dir, store) = with_empty_s();
    let want = append_many(&store, 10, 50);
    fail_next_flush(&store);
    assert_eq!(read_all(&store, "s").unwrap().0, want);
    // The fault is still armed: no read tried to write.
    assert!(matches!(store.checkpoint(), Err(StorageError::NoSpace)));
    assert_eq!(read_all(&store, "s").unwrap().0, want);
}

#[test]
fn a_failed_write_of_the_buffer_fails_the_checkpoint_not_the_data() {
    let (dir, store) = with_empty_s();
    let want = append_many(&store, 10, 50);
    fail_next_flush(&store);
    assert!(matches!(store.checkpoint(), Err(StorageError::NoSpace)));
    assert_eq!(read_all(&store, "s").unwrap().0, want);
    store.checkpoint().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "s").unwrap().0, want);
}

#[test]
fn an_append_that_must_write_the_buffer_first_fails_cleanly_when_that_fails() {
    let (dir, store) = with_empty_s();
    // 1,000-byte records until the buffer is nearly full: the next one
    // does not fit and has the buffer written first.
    let n = PENDING_MAX / 1008;
    let mut want = append_many(&store, n, 1000);
    let tail = store.head("s", 3).unwrap().tail;
    fail_next_flush(&store);
    let r = store.append("s", append(vec![b'x'; 1000]));
    assert!(matches!(r, Err(StorageError::NoSpace)), "{r:?}");
    assert_eq!(store.head("s", 3).unwrap().tail, tail, "nothing changed");
    let r = store.append("s", append(vec![b'y'; 1000])).unwrap();
    let AppendOutcome::Appended { info, .. } = r else {
        panic!("the retry is new");
    };
    want.extend_from_slice(&[b'y'; 1000]);
    assert_eq!(info.tail.pos, want.len() as u64);
    assert_eq!(read_all(&store, "s").unwrap().0, want);
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "s").unwrap().0, want);
}

/// The backend's gauges follow what the data files hold in memory: the
/// buffered frames until the checkpoint writes them, and the kept last
/// large record.
#[test]
fn the_gauges_count_buffered_frames_and_the_kept_record() {
    let (_dir, store) = with_empty_s();
    let gauge = |name: &str| {
        store
            .gauges()
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.value)
            .expect("the gauge is there")
    };
    assert_eq!(gauge("ds_file_buffered_bytes"), 0);
    append_many(&store, 3, 100);
    assert_eq!(gauge("ds_file_buffered_bytes"), 3 * 108);
    store.checkpoint().unwrap();
    assert_eq!(gauge("ds_file_buffered_bytes"), 0);
    assert_eq!(gauge("ds_file_kept_record_bytes"), 0);
    let large = 1 << 20;
    store.append("s", append(vec![b'x'; large])).unwrap();
    assert_eq!(gauge("ds_file_kept_record_bytes"), large as u64);
}
