//! Checkpoints: the consistent cut, the snapshot written atomically, and
//! what it makes unnecessary (older WAL segments, files of removed
//! streams); the background thread that takes them; the one-off search for
//! files of streams removed before the last start.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Inner, StreamRef, format, recover, wal};
use crate::storage::StorageError;

/// Checkpoint as soon as the current WAL segment is this large.
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Otherwise checkpoint this often when anything changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// A stream's index entries not yet in its index file: the stream, its
/// incarnation, the first own record they describe, and the starts.
type Unindexed = (StreamRef, u64, u64, Vec<u64>);

/// Queues for deletion (at the next checkpoint) the files of incarnations
/// below `below` that are not in `live` (the streams recovery found).
pub(super) fn find_garbage(inner: &Weak<Inner>, live: &HashSet<u64>, below: u64) {
    let Some(inner) = inner.upgrade() else { return };
    match inner.files.list() {
        Ok(ids) => {
            let garbage: Vec<u64> = ids
                .into_iter()
                .filter(|id| *id < below && !live.contains(id))
                .collect();
            if !garbage.is_empty() {
                tracing::info!(count = garbage.len(), "deleting files of removed streams");
                inner.pending_unlink.lock().extend(garbage);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list stream files"),
    }
}

/// The checkpointer thread: checkpoints when the WAL has grown or a while
/// has passed with something to do, until `stop` is set.
pub(super) fn checkpointer(inner: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>) {
    let mut last = Instant::now();
    loop {
        {
            let mut stopped = stop.0.lock();
            if *stopped {
                return;
            }
            stop.1.wait_for(&mut stopped, Duration::from_millis(500));
            if *stopped {
                return;
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.files.retry_punches();
        let grown = inner.wal.segment_len();
        let busy = grown > format::WAL_HEADER_LEN || !inner.pending_unlink.lock().is_empty();
        if grown >= CHECKPOINT_WAL_BYTES || (busy && last.elapsed() >= CHECKPOINT_EVERY) {
            if let Err(e) = inner.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed");
            }
            last = Instant::now();
        }
    }
}

impl Inner {
    /// See the module docs: cut, sync stream files, write the snapshot,
    /// then delete what it makes unnecessary.
    pub(super) fn checkpoint(&self) -> Result<(), StorageError> {
        let _one = self.checkpointing.lock();
        self.wal.check()?;
        let mut unindexed = Vec::new();
        let mut buffered = Vec::new();
        let (snapshot, mut dirty, unlink) = {
            let _gate = self.gate.write();
            self.wal.wait(self.wal.last_submitted())?;
            let map = self.streams.read();
            let mut streams = Vec::with_capacity(map.len());
            for (n, s) in map.iter() {
                let mut g = s.lock();
                // The dirty set is taken below, in this same cut.
                g.slot.marked = false;
                if g.slot.pending.from().is_some() {
                    buffered.push(Arc::clone(s));
                }
                if let Some(starts) = &g.starts
                    && starts.len() as u64 > g.indexed
                {
                    let tail = starts[g.indexed as usize..].to_vec();
                    unindexed.push((Arc::clone(s), g.meta.id, g.indexed, tail));
                }
                streams.push((n.clone(), g.meta.clone()));
            }
            drop(map);
            let segment = self.wal.rotate()?;
            let snapshot = format::Checkpoint {
                wal_segment: segment,
                next_id: self.next_id.load(Ordering::Relaxed),
                streams,
            };
            (
                snapshot,
                self.files.take_dirty(),
                std::mem::take(&mut *self.pending_unlink.lock()),
            )
        };
        dirty.extend(unindexed.iter().map(|u| u.1));
        let r = self
            .flush_streams(buffered)
            .and_then(|()| self.write_indexes(unindexed))
            .and_then(|()| self.write_checkpoint(&snapshot, &dirty));
        if r.is_err() {
            // Try again next time with the same work.
            self.pending_unlink.lock().extend(unlink);
            let mut all = self.files.take_dirty();
            all.extend(dirty);
            for id in all {
                self.files.mark_dirty(id);
            }
            return r;
        }
        for id in unlink {
            if let Err(e) = self.files.unlink(id) {
                tracing::warn!(error = %e, id, "could not delete the files of a removed stream");
            }
        }
        for n in recover::segments(&self.wal_dir)? {
            if n < snapshot.wal_segment {
                std::fs::remove_file(wal::segment_path(&self.wal_dir, n))?;
            }
        }
        wal::sync_dir(&self.wal_dir)?;
        wal::sync_dir(self.files.dir())?;
        Ok(())
    }

    /// Writes the frames that appends to `streams` buffered
    /// ([`super::pending`]) into their data files, which the snapshot about
    /// to be written relies on, and gives back the buffers' memory.
    fn flush_streams(&self, streams: Vec<StreamRef>) -> Result<(), StorageError> {
        for stream in streams {
            let mut g = stream.lock();
            if g.removed {
                continue;
            }
            self.flush_pending(&mut g)?;
            g.slot.pending.release();
        }
        Ok(())
    }

    /// Writes the index entries that appends kept in memory only, for the
    /// snapshot about to rely on them. A stream's `indexed` moves only once
    /// its entries are written, so a failure leaves them to the next try.
    fn write_indexes(&self, unindexed: Vec<Unindexed>) -> Result<(), StorageError> {
        for (stream, id, from, starts) in unindexed {
            self.files.write_index(id, from, &starts)?;
            let mut s = stream.lock();
            if s.meta.id == id {
                s.indexed = s.indexed.max(from + starts.len() as u64);
            }
        }
        Ok(())
    }

    fn write_checkpoint(
        &self,
        snapshot: &format::Checkpoint,
        dirty: &HashSet<u64>,
    ) -> Result<(), StorageError> {
        let live: HashSet<u64> = snapshot.streams.iter().map(|(_, m)| m.id).collect();
        let ids: Vec<u64> = dirty
            .iter()
            .copied()
            .filter(|id| live.contains(id))
            .collect();
        self.files.sync_many(&ids)?;
        wal::sync_dir(self.files.dir())?;
        let tmp = self.root.join("checkpoint.tmp");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all(&format::encode_checkpoint(snapshot))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.root.join("checkpoint"))?;
        wal::sync_dir(&self.root)?;
        Ok(())
    }
}
