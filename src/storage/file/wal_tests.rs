//! Unit tests of the WAL's async waiters.

use std::future::Future;
use std::task::{Context, Poll, Wake, Waker};

use super::super::faults::Point;
use super::commit::ZERO_AHEAD;
use super::*;
use std::time::Instant;

/// Counts its wakes.
#[derive(Default)]
struct Counter(std::sync::atomic::AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn wakes(c: &Counter) -> usize {
    c.0.load(Ordering::SeqCst)
}

fn poll(f: &mut Committed, w: &Arc<Counter>) -> Poll<Result<(), StorageError>> {
    let waker = Waker::from(Arc::clone(w));
    std::pin::Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn wait_for(c: &Counter, n: usize) {
    let t = Instant::now();
    while wakes(c) < n {
        assert!(t.elapsed() < Duration::from_secs(10), "never woken");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A log in `dir` (segment 1, `Always` mode) and its committer.
fn start(dir: &tempfile::TempDir, faults: Arc<Faults>) -> (Arc<Wal>, JoinHandle<()>) {
    Wal::start(
        dir.path().to_path_buf(),
        1,
        SyncMode::Always,
        Duration::from_millis(10),
        faults,
    )
    .unwrap()
}

/// A waiter is woken by the commit that covers its LSN, not by earlier
/// ones, and by a failure of the log.
#[test]
fn async_waiters_wake_only_when_their_entry_commits() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let (wal, committer) = start(&dir, Arc::clone(&faults));
    let first = wal.submit(b"one");
    wal.wait(first).unwrap();
    let (early, late) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
    let mut done = wal.committed(first);
    assert!(matches!(poll(&mut done, &early), Poll::Ready(Ok(()))));
    // Waiting for the next two entries, before either is submitted.
    let mut second = wal.committed(first + 1);
    let mut third = wal.committed(first + 2);
    assert!(poll(&mut second, &early).is_pending());
    assert!(poll(&mut third, &late).is_pending());
    wal.wait(wal.submit(b"two")).unwrap();
    wait_for(&early, 1);
    assert_eq!(wakes(&late), 0, "woken by a commit that does not cover it");
    assert!(matches!(poll(&mut second, &early), Poll::Ready(Ok(()))));
    assert!(poll(&mut third, &late).is_pending());
    // The log fails: the waiter is woken and told.
    faults.arm(Point::WalWrite, 0, libc::EIO);
    wal.submit(b"three");
    wait_for(&late, 1);
    assert!(matches!(
        poll(&mut third, &late),
        Poll::Ready(Err(StorageError::Unavailable(_)))
    ));
    wal.stop();
    committer.join().unwrap();
}

/// A waiter polled again before its commit is listed once per waker (the
/// commit wakes it once); polled with another waker, that one is woken
/// too; two waiters of one LSN (a duplicate append waits for what it
/// duplicates) are both woken.
#[test]
fn re_polled_and_shared_waiters_are_each_woken_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, committer) = start(&dir, Arc::new(Faults::default()));
    let first = wal.submit(b"one");
    wal.wait(first).unwrap();
    let (a, b, other) = (
        Arc::new(Counter::default()),
        Arc::new(Counter::default()),
        Arc::new(Counter::default()),
    );
    let mut mine = wal.committed(first + 1);
    let mut same_lsn = wal.committed(first + 1);
    for _ in 0..5 {
        assert!(poll(&mut mine, &a).is_pending());
    }
    assert!(poll(&mut mine, &other).is_pending());
    assert!(poll(&mut same_lsn, &b).is_pending());
    assert_eq!(wal.waiters.lock().len(), 3, "one entry per waker");
    wal.wait(wal.submit(b"two")).unwrap();
    wait_for(&a, 1);
    wait_for(&b, 1);
    wait_for(&other, 1);
    assert!(wal.waiters.lock().is_empty());
    assert_eq!((wakes(&a), wakes(&b), wakes(&other)), (1, 1, 1));
    assert!(matches!(poll(&mut mine, &a), Poll::Ready(Ok(()))));
    assert!(matches!(poll(&mut same_lsn, &b), Poll::Ready(Ok(()))));
    wal.stop();
    committer.join().unwrap();
}

/// The committer keeps zeros written past the log (so that most syncs
/// leave the file's size alone), only past it, extends them when a batch
/// goes beyond, and never writes past the space claims allocated.
#[test]
fn zeros_are_written_past_the_log_and_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, committer) = start(&dir, Arc::new(Faults::default()));
    let path = segment_path(dir.path(), 1);
    let len = || std::fs::metadata(&path).unwrap().len();
    let payload = vec![7u8; 1000];
    let lsn = wal.submit_claimed(&payload, 0, true).unwrap().unwrap();
    wal.wait(lsn).unwrap();
    let end = WAL_HEADER_LEN + framed(payload.len());
    assert_eq!(wal.segment_len(), end);
    let allocated = wal.space.lock().allocated;
    assert!(allocated >= end + ZERO_AHEAD, "claims allocate chunks");
    assert_eq!(len(), end + ZERO_AHEAD);
    let buf = std::fs::read(&path).unwrap();
    assert_eq!(&buf[end as usize - 1000..end as usize], &payload[..]);
    assert!(format::zero_tail(&buf[end as usize..]));
    // Batches inside the zeros leave the file's length alone ...
    for _ in 0..10 {
        let lsn = wal.submit_claimed(&payload, 0, true).unwrap().unwrap();
        wal.wait(lsn).unwrap();
    }
    assert_eq!(len(), end + ZERO_AHEAD);
    // ... one that goes past them writes more, behind itself.
    let big = vec![9u8; ZERO_AHEAD as usize];
    let lsn = wal.submit_claimed(&big, 0, true).unwrap().unwrap();
    wal.wait(lsn).unwrap();
    let log = wal.segment_len();
    let limit = wal.space.lock().allocated;
    assert_eq!(len(), (log + ZERO_AHEAD).min(limit));
    assert!(len() > log);
    let buf = std::fs::read(&path).unwrap();
    assert_eq!(&buf[log as usize - big.len()..log as usize], &big[..]);
    assert!(format::zero_tail(&buf[log as usize..]));
    // Every entry reads back, and the zeros end the log.
    let mut at = WAL_HEADER_LEN as usize;
    let mut entries = 0;
    while !format::zero_tail(&buf[at..]) {
        at += format::get_frame(&buf[at..]).unwrap().1;
        entries += 1;
    }
    assert_eq!((entries, at as u64), (12, log));
    wal.stop();
    committer.join().unwrap();
}
