//! The committer thread of the [write-ahead log](super): it takes what is
//! queued, writes it with one `write(2)` (and the zeros it keeps past the
//! log), syncs it, publishes the committed LSN and wakes that batch's
//! waiters.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::super::faults::Point;
use super::{Segment, Wal};
use crate::config::SyncMode;

/// The largest emptied batch buffer the committer keeps for the next batch.
const SPARE_MAX: usize = 1 << 20;

/// The longest the committer lets concurrent appends gather before a sync
/// when the previous batch had several (see `run`): it syncs as soon as as
/// many entries are queued as the previous batch had (the writers that
/// batch answered are back), which measured 66-72k -> 75-78k appends/s
/// against a fixed pause of this length (BENCHMARKS.md). A sync here takes
/// ~250 µs (`dd oflag=dsync`), so batches held only 3–6 of 64 appends in
/// flight and the committer spent ~8 µs of CPU per append; with the pause,
/// server CPU per append measured 1–2 µs lower side by side (append1 35.0
/// vs 36.9 µs, append256 40.3 vs 41.7, producer 44.4 vs 45.1). A lone writer
/// (batches of one) never waits.
pub(super) const GATHER: Duration = Duration::from_micros(150);

/// Zeros the committer writes past the log's end when a batch goes beyond
/// the zeros written before (see [`Segment::zeroed`]).
pub(super) const ZERO_AHEAD: u64 = 1 << 20;

impl Wal {
    /// Wakes the async waiters of every LSN up to `upto` (all of them once
    /// the log has failed). Called after `committed`/`failed` are published.
    fn wake(&self, upto: u64) {
        let woken: Vec<(u64, Waker)> = {
            let mut w = self.waiters.lock();
            w.extract_if(.., |(lsn, _)| *lsn <= upto).collect()
        };
        for (_, waker) in woken {
            waker.wake();
        }
    }

    fn fail(&self, e: std::io::Error) {
        tracing::error!(error = %e, "write-ahead log write failed; refusing further writes");
        self.done.lock().failed = Some(e.to_string());
        self.failed.store(true, Ordering::Release);
        self.durable.notify_all();
        self.wake(u64::MAX);
    }

    /// After a batch of `written` bytes went to the end of the log: when it
    /// went past the zeros written before, writes [`ZERO_AHEAD`] more past
    /// it (within the space claims allocated, so a full disk cannot fail
    /// it; see [`Segment::zeroed`]). Only ever past the log's end. Failing
    /// changes nothing the log relies on, so it is not an error.
    fn zero_ahead(&self, seg: &mut Segment, written: u64) {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let end = seg.len + written;
        if end <= seg.zeroed {
            return;
        }
        seg.zeroed = end;
        let limit = {
            let s = self.space.lock();
            if s.supported { s.allocated } else { u64::MAX }
        };
        let to = (end + ZERO_AHEAD).min(limit);
        while seg.zeroed < to {
            let n = (to - seg.zeroed).min(ZEROS.len() as u64) as usize;
            if let Err(e) = seg.file.write_all_at(&ZEROS[..n], seg.zeroed) {
                tracing::debug!(error = %e, "writing zeros past the WAL's end failed");
                // The file may have grown in part: rewrite from the log's end.
                seg.zeroed = end;
                return;
            }
            seg.zeroed += n as u64;
        }
    }

    pub(super) fn run(&self) {
        let mut last_sync = Instant::now();
        let mut covered = 0u64;
        // Entries in the previous batch: more than one means writers are
        // concurrent, and waiting a moment before syncing lets more join.
        let mut last_batch = 0u64;
        let mut spare = Vec::new();
        loop {
            let (batch, upto, stop) = {
                let mut q = self.queue.lock();
                // Idle: the next entry wakes the committer.
                q.notify_at = covered + 1;
                while q.buf.is_empty() && !q.stop {
                    if self.sync == SyncMode::Interval {
                        let left = self.interval.saturating_sub(last_sync.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        self.work.wait_for(&mut q, left);
                    } else {
                        self.work.wait(&mut q);
                    }
                }
                if self.sync == SyncMode::Always && last_batch > 1 && !q.stop {
                    // Gather: until as many entries are queued as the last
                    // batch had (the writers it answered are back), at
                    // most GATHER. Only the entry that completes the count
                    // wakes the committer.
                    let target = covered + last_batch;
                    let deadline = Instant::now() + GATHER;
                    q.notify_at = target;
                    while q.last < target && !q.stop {
                        if self.work.wait_until(&mut q, deadline).timed_out() {
                            break;
                        }
                    }
                }
                // Busy: entries queued meanwhile need not wake anyone.
                q.notify_at = u64::MAX;
                // The queue goes on in the last batch's emptied buffer
                // rather than growing a new one from nothing.
                (
                    std::mem::replace(&mut q.buf, std::mem::take(&mut spare)),
                    q.last,
                    q.stop,
                )
            };
            if upto > covered {
                last_batch = upto - covered;
                covered = upto;
            }
            if !batch.is_empty() {
                let mut seg = self.segment.lock();
                let written = self
                    .faults
                    .check(Point::WalWrite)
                    .and_then(|()| seg.file.write_all(&batch))
                    .map(|()| self.zero_ahead(&mut seg, batch.len() as u64))
                    .and_then(|()| match self.sync {
                        SyncMode::Always => {
                            self.faults.check(Point::WalSync)?;
                            seg.file.sync_data()
                        }
                        SyncMode::Interval => Ok(()),
                    });
                if let Err(e) = written {
                    drop(seg);
                    self.fail(e);
                    return;
                }
                seg.len += batch.len() as u64;
                seg.unsynced = self.sync == SyncMode::Interval;
                drop(seg);
                // The atomic first: a blocked waiter released below may
                // poll an async waiter of the same LSN at once.
                self.committed.store(upto, Ordering::Release);
                self.done.lock().committed = upto;
                self.durable.notify_all();
                self.wake(upto);
                // Kept unless a burst made it large (it would stay
                // allocated while idle).
                if batch.capacity() <= SPARE_MAX {
                    spare = batch;
                    spare.clear();
                }
            }
            if self.sync == SyncMode::Interval && (last_sync.elapsed() >= self.interval || stop) {
                let mut seg = self.segment.lock();
                if seg.unsynced {
                    if let Err(e) = seg.file.sync_data() {
                        drop(seg);
                        self.fail(e);
                        return;
                    }
                    seg.unsynced = false;
                }
                last_sync = Instant::now();
            }
            if stop && self.queue.lock().buf.is_empty() {
                // Later calls fail instead of waiting for a committer that is gone.
                self.done.lock().failed = Some("storage is shut down".into());
                self.failed.store(true, Ordering::Release);
                self.durable.notify_all();
                self.wake(u64::MAX);
                return;
            }
        }
    }
}
