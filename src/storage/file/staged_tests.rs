//! The staged append never blocks: where it would have to (an index not
//! loaded since the restart, files not open, a WAL segment that must grow)
//! it declines, and the blocking append does the I/O; the steady state
//! stays staged.

use std::sync::Arc;

use bytes::Bytes;

use super::test_support::{append, create, open, produce, read_all, stopped_with};
use super::{FileStorage, HANDLE_CACHE};
use crate::storage::handle::{NonBlocking, StorageHandle, blocking_violations};
use crate::storage::{AppendOutcome, AppendRequest, Staging, Storage, StorageError};

/// How an append went: staged, or declined and run on the blocking pool.
#[derive(Debug, PartialEq)]
enum Path {
    Staged,
    Declined,
}

/// Appends exactly as [`StorageHandle::append`] does, telling which way.
async fn append_as_handle(
    s: &Arc<FileStorage>,
    name: &str,
    req: AppendRequest,
) -> (Path, Result<AppendOutcome, StorageError>) {
    let staging = {
        let _marked = NonBlocking::enter();
        s.try_append_staged(name, req)
    };
    match staging {
        Staging::Staged(staged) => (Path::Staged, staged.finish().await),
        Staging::WouldBlock(req) => {
            let (s, name) = (Arc::clone(s), name.to_string());
            let r = tokio::task::spawn_blocking(move || s.append(&name, req)).await;
            (Path::Declined, r.expect("blocking append"))
        }
        Staging::Deferred(_) => panic!("the file backend does not defer"),
    }
}

/// A stopped store (a clean stop: after the reopen no index is loaded, no
/// file open) with more streams `s{i}` than the handle cache holds, and
/// what each holds.
fn many_stopped() -> (tempfile::TempDir, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let want: Vec<Vec<u8>> = (0..HANDLE_CACHE + 44)
        .map(|i| format!("<{i}>").into_bytes())
        .collect();
    let s = open(dir.path());
    for (i, w) in want.iter().enumerate() {
        s.create(&format!("s{i}"), create(w.clone())).unwrap();
    }
    s.shutdown().unwrap();
    (dir, want)
}

/// Every stream `s{i}` holds `want[i]`.
fn check_all(s: &FileStorage, want: &[Vec<u8>]) {
    for (i, w) in want.iter().enumerate() {
        assert!(read_all(s, &format!("s{i}")).unwrap().0 == *w, "s{i}");
    }
}

/// Checks that no blocking I/O happened in a non-blocking section since
/// the count was `before`. In debug builds such I/O panics at the call
/// (failing the test there), and the count, process-wide, also takes the
/// violation that `handle`'s own test commits on purpose in parallel: it is
/// compared in release builds only.
fn no_blocking_io_since(before: u64) {
    if !cfg!(debug_assertions) {
        assert_eq!(blocking_violations(), before, "blocking I/O while staged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_appends_decline_instead_of_blocking_and_every_byte_lands() {
    let (dir, mut want) = many_stopped();
    let n = want.len();
    let s = Arc::new(open(dir.path()));
    let violations = blocking_violations();
    // Two rounds over more streams than the handle cache holds (every
    // append misses it), then a round over warm streams whose 6 MiB
    // outgrow the WAL's claimed room (4 MiB chunks).
    let rounds: [(u64, std::ops::Range<usize>, usize); 3] = [
        (0, 0..n, 16 << 10),
        (1, 0..n, 16 << 10),
        (2, n - 100..n, 64 << 10),
    ];
    for (seq, streams, size) in rounds {
        let mut paths = Vec::new();
        for i in streams {
            let mut msg = format!("[{seq}:{i}]").into_bytes();
            msg.resize(size, b'.');
            let (path, r) = append_as_handle(&s, &format!("s{i}"), produce(msg.clone(), seq)).await;
            assert!(
                matches!(r, Ok(AppendOutcome::Appended { .. })),
                "round {seq} s{i}: {r:?}"
            );
            want[i].extend_from_slice(&msg);
            paths.push(path);
        }
        let staged = paths.iter().filter(|p| **p == Path::Staged).count();
        match seq {
            // Index not loaded (first round), handles not open (second).
            0 | 1 => assert_eq!(staged, 0, "round {seq}: staged with blocking I/O due"),
            // Warm streams stage, except where the WAL had to grow.
            _ => assert!(
                staged > 0 && staged < paths.len(),
                "round {seq}: {staged} of {} staged",
                paths.len()
            ),
        }
    }
    no_blocking_io_since(violations);
    let check = |s: &FileStorage| check_all(s, &want);
    check(&s);
    drop(s);
    check(&open(dir.path()));
}

#[tokio::test]
async fn the_second_append_to_a_warm_stream_is_staged() {
    for replayed in [false, true] {
        let dir = stopped_with("s", "a");
        let mut want = b"a".to_vec();
        if replayed {
            // Left in the WAL: the reopen replays it, which opens the files
            // (their handles stay cached) but loads no index.
            let s = open(dir.path());
            s.append("s", append("_")).unwrap();
            want.push(b'_');
        }
        let s = Arc::new(open(dir.path()));
        let violations = blocking_violations();
        // After the reopen the first append loads the index (declined), the
        // next ones stage, duplicates too.
        let mut paths = Vec::new();
        for (seq, body) in [(0, "b"), (1, "c"), (1, "c")] {
            let (path, r) = append_as_handle(&s, "s", produce(body, seq)).await;
            r.unwrap();
            paths.push(path);
        }
        assert_eq!(
            paths,
            [Path::Declined, Path::Staged, Path::Staged],
            "replayed {replayed}"
        );
        // The same through the handle, which every caller uses.
        let handle = StorageHandle::new(Arc::clone(&s) as Arc<dyn Storage>);
        let r = handle
            .append("s", produce(Bytes::from_static(b"d"), 2))
            .await;
        assert!(matches!(r, Ok(AppendOutcome::Appended { .. })));
        no_blocking_io_since(violations);
        want.extend_from_slice(b"bcd");
        assert_eq!(read_all(&s, "s").unwrap().0, want, "replayed {replayed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_appends_stage_without_open_files() {
    // Spread over more streams than the handle cache holds, small appends
    // are buffered (`super::pending`), which needs no open file: once the
    // indexes are loaded, every one stages.
    let (dir, mut want) = many_stopped();
    let n = want.len();
    let s = Arc::new(open(dir.path()));
    let violations = blocking_violations();
    for seq in 0..3u64 {
        let mut staged = 0;
        for (i, w) in want.iter_mut().enumerate() {
            let msg = format!("[{seq}:{i}]").into_bytes();
            let (path, r) = append_as_handle(&s, &format!("s{i}"), produce(msg.clone(), seq)).await;
            assert!(matches!(r, Ok(AppendOutcome::Appended { .. })), "{r:?}");
            w.extend_from_slice(&msg);
            staged += usize::from(path == Path::Staged);
        }
        // The first round loads each index (declined), the others stage.
        let expected = if seq == 0 { 0 } else { n };
        assert_eq!(staged, expected, "round {seq}");
    }
    no_blocking_io_since(violations);
    let check = |s: &FileStorage| check_all(s, &want);
    check(&s);
    s.checkpoint().unwrap();
    check(&s);
    drop(s);
    check(&open(dir.path()));
}
