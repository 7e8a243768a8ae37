//! The shared write-ahead log and its group-commit thread.
//!
//! Callers [`Wal::submit`] an encoded entry and get its log sequence number
//! (LSN); entries are framed into a shared buffer in LSN order. One committer
//! thread takes everything buffered, writes it with one `write(2)` and, in
//! [`SyncMode::Always`], one `fdatasync`, then publishes the highest LSN it
//! covered and wakes the waiters of those entries (only those: see
//! [`Committed`]): concurrent appends, to any stream, share one flush. In [`SyncMode::Interval`] the LSN is published after the write
//! and the file is synced every `sync_interval` (the documented loss window).
//! The committer thread lives in `wal_commit.rs`.
//!
//! # Disk space
//!
//! Entries are applied in memory before the committer writes them, so the
//! committer's write must not meet a full disk. Space for an entry is
//! therefore *claimed* ([`Wal::claim`]) before anything changes: the segment
//! is extended with `fallocate(FALLOC_FL_KEEP_SIZE)` in chunks, and a claim
//! the file system cannot back fails cleanly with
//! [`StorageError::NoSpace`] (507), nothing changed. Claims that add data
//! keep [`HEADROOM`] unclaimed, so metadata-only entries (deletes, closes)
//! still fit on a full disk. On file systems without `fallocate` claims
//! always succeed and a full disk poisons the log as any write failure does.
//!
//! A failed write or sync poisons the log: the in-memory state may then be
//! ahead of the disk, so every later call fails until the store is reopened
//! and recovered from what is really on disk.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

// parking_lot mutexes, not tokio's: held for short sections only, by
// blocking threads and by the staged append on an async worker (which
// never waits for the disk here: see `submit_claimed`).
use parking_lot::{Condvar, Mutex};

use super::faults::Faults;
use super::format::{self, WAL_HEADER_LEN, WAL_MAGIC};
use crate::config::SyncMode;
use crate::storage::StorageError;
use crate::storage::handle::blocking_io;

/// Path of WAL segment `n` under `wal_dir`.
pub fn segment_path(wal_dir: &Path, n: u64) -> PathBuf {
    wal_dir.join(format!("{n:020}.log"))
}

/// Creates segment `n` durably (header written and synced, directory synced).
pub fn create_segment(wal_dir: &Path, n: u64) -> std::io::Result<File> {
    let path = segment_path(wal_dir, n);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    f.write_all(&format::header(WAL_MAGIC, &[n]))?;
    f.sync_all()?;
    sync_dir(wal_dir)?;
    Ok(f)
}

/// Makes a directory's entries (creations, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    blocking_io("fsync a directory");
    File::open(dir)?.sync_all()
}

/// The longest a caller that must not block (a staged append) waits for a
/// lock that a blocking thread may hold across I/O, before declining: the
/// locks' ordinary holders keep them for microseconds.
pub const LOCK_WAIT: Duration = Duration::from_micros(100);

/// Space claimed past the data of the current segment, at least.
const CLAIM_CHUNK: u64 = 4 << 20;
/// Unclaimed space that claims adding data leave for metadata-only entries.
pub const HEADROOM: u64 = 256 << 10;

/// Disk space of the current segment (see the module docs).
struct Space {
    /// A handle on the current segment, for `fallocate`.
    file: File,
    /// Bytes of the segment backed by allocated blocks.
    allocated: u64,
    /// Bytes submitted to the segment (header included).
    used: u64,
    /// Bytes claimed by entries not yet submitted.
    claimed: u64,
    /// False once the file system refused `fallocate` as unsupported.
    supported: bool,
}

/// Room for one entry, claimed before any state changes; released if it
/// is dropped unused.
pub struct Claim {
    wal: Arc<Wal>,
    bytes: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.wal.space.lock().claimed -= self.bytes;
    }
}

struct Queue {
    /// Framed entries not yet handed to the committer.
    buf: Vec<u8>,
    /// LSN of the last submitted entry.
    last: u64,
    /// The submission of this LSN wakes the committer (see `run`).
    notify_at: u64,
    stop: bool,
}

struct Done {
    /// Highest LSN that is committed (durable in `Always` mode).
    committed: u64,
    failed: Option<String>,
}

struct Segment {
    file: File,
    number: u64,
    /// Bytes written to this segment, header included.
    len: u64,
    /// Length of the file: the log's bytes and the zeros written past them.
    ///
    /// A batch that lands on bytes already written (and synced) leaves the
    /// file's size and block map as they were, so its `fdatasync` flushes
    /// the data alone; a batch that extends the file also has to write the
    /// inode (on ext4 without a journal, a second synchronous I/O). So when
    /// a batch goes past the zeros, the committer writes [`ZERO_AHEAD`](commit::ZERO_AHEAD) more
    /// behind it, synced by that batch's `fdatasync`: one sync in several
    /// thousand pays for the inode, the rest do not (measured: ~25 % less
    /// time and ~15 % less CPU per sync, BENCHMARKS.md). Recovery reads a
    /// run of zeros to the end of a segment as the end of its log.
    zeroed: u64,
    /// True when written bytes may not be synced yet (`Interval` mode).
    unsynced: bool,
}

/// The log: a submission queue, the current segment and the commit state.
pub struct Wal {
    dir: PathBuf,
    sync: SyncMode,
    interval: Duration,
    queue: Mutex<Queue>,
    work: Condvar,
    done: Mutex<Done>,
    durable: Condvar,
    segment: Mutex<Segment>,
    /// The committed LSN again, for async waiters and lock-free checks.
    committed: AtomicU64,
    /// Async waiters with the LSN they wait for: the committer wakes only
    /// those its batch covers. A `watch` channel woke every waiter on every
    /// batch; with 64 appends in flight and ~3 entries per batch, most
    /// woke only to go back to sleep. A plain list (as many as appends in
    /// flight, scanned once per batch): a map of lists cost an allocation
    /// per waiting append.
    waiters: Mutex<Vec<(u64, Waker)>>,
    space: Mutex<Space>,
    faults: Arc<Faults>,
    /// Set with `done.failed`: lets [`Self::check`], called by every
    /// request, skip the `done` lock that the committer takes per batch.
    failed: AtomicBool,
}

/// Resolves once an LSN is committed ([`Wal::committed`]).
pub struct Committed {
    wal: Arc<Wal>,
    lsn: u64,
    /// A waker of this future is on the waiters' list.
    listed: bool,
}

impl Committed {
    fn ready(&self) -> Option<Result<(), StorageError>> {
        if self.wal.committed.load(Ordering::Acquire) >= self.lsn {
            Some(Ok(()))
        } else if self.wal.failed.load(Ordering::Acquire) {
            Some(Err(StorageError::Unavailable(
                "the write-ahead log failed; restart the server to recover".into(),
            )))
        } else {
            None
        }
    }
}

impl Future for Committed {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.ready() {
            return Poll::Ready(r);
        }
        // Checked again under the lock the committer takes after publishing
        // (see `Wal::wake`), so a commit in between is never missed.
        let mut w = self.wal.waiters.lock();
        if let Some(r) = self.ready() {
            return Poll::Ready(r);
        }
        // Polled again before its commit (its task woken by something
        // else): listed once per waker, found by a scan only then.
        let lsn = self.lsn;
        let listed = self.listed
            && w.iter()
                .any(|(l, waker)| *l == lsn && waker.will_wake(cx.waker()));
        if !listed {
            w.push((lsn, cx.waker().clone()));
        }
        drop(w);
        self.listed = true;
        Poll::Pending
    }
}

/// The framed size of an entry payload of `len` bytes.
pub fn framed(len: usize) -> u64 {
    format::FRAME_HEADER + len as u64
}

impl Space {
    fn new(file: File, supported: bool) -> Self {
        Space {
            file,
            allocated: WAL_HEADER_LEN,
            used: WAL_HEADER_LEN,
            claimed: 0,
            supported,
        }
    }

    /// Makes sure the first `need` bytes of the segment are allocated;
    /// false (nothing done) when that needs `fallocate` and `wait` is false.
    fn reserve(&mut self, need: u64, wait: bool) -> Result<bool, StorageError> {
        if !self.supported || need <= self.allocated {
            return Ok(true);
        }
        if !wait {
            return Ok(false);
        }
        // A chunk at a time, so that claims rarely call fallocate; the
        // exact need when a chunk no longer fits.
        let chunked = need.max(self.allocated + CLAIM_CHUNK);
        let r = fallocate(&self.file, self.allocated, chunked - self.allocated)
            .map(|()| chunked)
            .or_else(|_| {
                fallocate(&self.file, self.allocated, need - self.allocated).map(|()| need)
            });
        match r {
            Ok(upto) => {
                self.allocated = upto;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    "the WAL's file system has no fallocate; a full disk will stop writes until restart"
                );
                self.supported = false;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Allocates `[at, at + len)` of `file` without changing its size.
fn fallocate(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    blocking_io("fallocate the WAL");
    // SAFETY: `file` is an open descriptor for the whole call.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Wal {
    /// Starts a log whose next entries go to a fresh segment `n`, and its
    /// committer thread.
    pub fn start(
        dir: PathBuf,
        n: u64,
        sync: SyncMode,
        interval: Duration,
        faults: Arc<Faults>,
    ) -> std::io::Result<(Arc<Wal>, JoinHandle<()>)> {
        let file = create_segment(&dir, n)?;
        let space = Space::new(file.try_clone()?, true);
        let wal = Arc::new(Wal {
            dir,
            sync,
            interval,
            queue: Mutex::new(Queue {
                buf: Vec::new(),
                last: 0,
                notify_at: 1,
                stop: false,
            }),
            work: Condvar::new(),
            done: Mutex::new(Done {
                committed: 0,
                failed: None,
            }),
            durable: Condvar::new(),
            segment: Mutex::new(Segment {
                file,
                number: n,
                len: WAL_HEADER_LEN,
                zeroed: WAL_HEADER_LEN,
                unsynced: false,
            }),
            committed: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            space: Mutex::new(space),
            faults,
            failed: AtomicBool::new(false),
        });
        let w = Arc::clone(&wal);
        let handle = std::thread::Builder::new()
            .name("wal-committer".into())
            .spawn(move || w.run())?;
        Ok((wal, handle))
    }

    /// Fails when an earlier write or sync failed.
    pub fn check(&self) -> Result<(), StorageError> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.done.lock().failed {
            Some(e) => Err(StorageError::Unavailable(format!(
                "the write-ahead log failed ({e}); restart the server to recover"
            ))),
            None => Ok(()),
        }
    }

    /// Claims room for an entry of `bytes` (framed), leaving `headroom`
    /// unclaimed; fails with `NoSpace` when the disk cannot hold it.
    pub fn claim(self: &Arc<Self>, bytes: u64, headroom: u64) -> Result<Claim, StorageError> {
        let mut s = self.space.lock();
        let need = s.used + s.claimed + bytes + headroom;
        s.reserve(need, true)?;
        s.claimed += bytes;
        Ok(Claim {
            wal: Arc::clone(self),
            bytes,
        })
    }

    /// [`Self::submit_claimed_with`] of a payload encoded already.
    #[cfg(test)]
    pub fn submit_claimed(
        &self,
        payload: &[u8],
        headroom: u64,
        wait: bool,
    ) -> Result<Option<u64>, StorageError> {
        self.submit_claimed_with(payload.len(), headroom, wait, |out| {
            out.extend_from_slice(payload)
        })
    }

    /// Claims room for a `len`-byte entry payload (leaving `headroom`
    /// unclaimed) and queues it, `write` encoding it straight into the
    /// queue (under its lock: keep it short), or fails with `NoSpace`,
    /// nothing queued: [`Self::claim`] and [`Self::submit`] in one step,
    /// for the append path, which took the space lock three times per
    /// append otherwise. With `wait` false (a caller that must not block)
    /// it queues nothing and answers `None` when the segment would have to
    /// grow first.
    pub fn submit_claimed_with(
        &self,
        len: usize,
        headroom: u64,
        wait: bool,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Option<u64>, StorageError> {
        {
            let mut s = if wait {
                self.space.lock()
            } else {
                // Held across `fallocate` by a blocking caller.
                let Some(s) = self.space.try_lock_for(LOCK_WAIT) else {
                    return Ok(None);
                };
                s
            };
            let bytes = framed(len);
            let need = s.used + s.claimed + bytes + headroom;
            if !s.reserve(need, wait)? {
                return Ok(None);
            }
            s.used += bytes;
        }
        Ok(Some(self.enqueue_with(len, write)))
    }

    /// Queues an entry payload; returns its LSN. Entries commit in LSN order.
    pub fn submit(&self, payload: &[u8]) -> u64 {
        {
            // Unclaimed entries (or larger than claimed) still extend the
            // allocation when they can; if not, the write may fail later.
            let mut s = self.space.lock();
            s.used += framed(payload.len());
            let need = s.used + s.claimed;
            let _ = s.reserve(need, true);
        }
        self.enqueue_with(payload.len(), |out| out.extend_from_slice(payload))
    }

    fn enqueue_with(&self, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let mut q = self.queue.lock();
        format::put_frame_with(&mut q.buf, len, write);
        q.last += 1;
        let lsn = q.last;
        let wake = lsn >= q.notify_at;
        drop(q);
        if wake {
            self.work.notify_one();
        }
        lsn
    }

    /// LSN of the last submitted entry.
    pub fn last_submitted(&self) -> u64 {
        self.queue.lock().last
    }

    /// Blocks until `lsn` is committed.
    pub fn wait(&self, lsn: u64) -> Result<(), StorageError> {
        if self.is_committed(lsn) {
            return Ok(());
        }
        blocking_io("wait for a WAL commit");
        let mut d = self.done.lock();
        loop {
            if d.committed >= lsn {
                return Ok(());
            }
            if let Some(e) = &d.failed {
                return Err(StorageError::Unavailable(format!(
                    "the write-ahead log failed ({e}); restart the server to recover"
                )));
            }
            self.durable.wait(&mut d);
        }
    }

    /// True when `lsn` is committed already.
    pub fn is_committed(&self, lsn: u64) -> bool {
        self.committed.load(Ordering::Acquire) >= lsn
    }

    /// Resolves once `lsn` is committed: the async twin of [`Self::wait`],
    /// for callers that must not hold a thread while the batch syncs.
    pub fn committed(self: &Arc<Self>, lsn: u64) -> Committed {
        Committed {
            wal: Arc::clone(self),
            lsn,
            listed: false,
        }
    }

    /// Bytes in the current segment.
    pub fn segment_len(&self) -> u64 {
        self.segment.lock().len
    }

    /// Switches to a fresh segment. The caller guarantees that nothing is
    /// queued (everything submitted is committed) and nothing is submitted
    /// meanwhile. Returns the new segment's number.
    pub fn rotate(&self) -> Result<u64, StorageError> {
        let mut seg = self.segment.lock();
        let n = seg.number + 1;
        let file = create_segment(&self.dir, n)?;
        {
            let mut space = self.space.lock();
            let supported = space.supported;
            let claimed = space.claimed;
            *space = Space::new(file.try_clone()?, supported);
            space.claimed = claimed;
        }
        *seg = Segment {
            file,
            number: n,
            len: WAL_HEADER_LEN,
            zeroed: WAL_HEADER_LEN,
            unsynced: false,
        };
        Ok(n)
    }

    /// Stops the committer after it has written everything queued.
    pub fn stop(&self) {
        self.queue.lock().stop = true;
        self.work.notify_all();
    }
}

#[path = "wal_commit.rs"]
mod commit;

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
