//! Appends: the staged path (on an async worker, never blocking) and the
//! blocking path (on the blocking pool), one function for both.
//!
//! The decision is [`txn::append_to`] on the locked stream's metadata, in
//! place; its `store` step writes the records past the tail in the data
//! file (page cache), or buffers them for it ([`super::pending`]), and
//! queues the ONE WAL entry carrying them with what the append changed (an
//! [`Op::Append`], encoded in place from borrowed fields:
//! [`entry_bin::AppendRef`]). Nothing changes before both succeeded: a
//! failed data write (or write of the buffer the records do not fit), or a
//! full disk refusing the entry's WAL room, leaves tail, producer state and
//! data as they were (bytes written or buffered past the tail are
//! overwritten by the next append).
//!
//! [`Op::Append`]: super::format::Op::Append
//!
//! # Never blocking when staged
//!
//! Staging runs on an async worker ([`Storage::try_append_staged`]): it may
//! write into the page cache and queue the WAL entry, nothing more. Where
//! the append would have to wait, it declines (`None`, nothing changed) and
//! the handle runs the blocking append instead, which does the I/O and so
//! leaves the stream ready for the next staged call:
//!
//! * the map is write-locked (a create or delete in progress, which may be
//!   writing files under that lock), or a checkpoint holds the gate;
//! * the stream's lock, or the WAL's space lock, stays taken for longer
//!   than [`wal::LOCK_WAIT`] (a blocking thread holds them across the I/O
//!   listed below; staged appends hold them for a page-cache write);
//! * the stream's index is not loaded (the first append after a restart:
//!   reading the index file);
//! * its files are not open (a handle-cache miss: two `open(2)`) and the
//!   records must be written, not buffered ([`super::pending`]);
//! * the WAL segment must grow for the entry (`fallocate`).
//!
//! [`Storage::try_append_staged`]: crate::storage::Storage::try_append_staged

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Durable, Inner, Stream, entry_bin, wake_of, wal};
use crate::notify::{Appended, Wake};
use crate::storage::txn;
use crate::storage::{AppendOutcome, AppendRequest, Staged, Staging, StorageError};

/// An append decided and queued: answer `result` once `lsn` is committed,
/// then send `wake`.
struct StagedAppend {
    lsn: u64,
    result: Result<AppendOutcome, StorageError>,
    wake: Option<Wake>,
}

/// Why the store step of a staged append did not happen.
enum Declined {
    /// It would have blocked: nothing changed, run the blocking append.
    WouldBlock,
    Failed(StorageError),
}

impl From<StorageError> for Declined {
    fn from(e: StorageError) -> Self {
        Declined::Failed(e)
    }
}

impl Inner {
    /// The blocking append: stages (doing whatever I/O that needs), waits
    /// for the group commit, wakes.
    pub(super) fn append(
        &self,
        name: &str,
        req: AppendRequest,
    ) -> Result<AppendOutcome, StorageError> {
        let gate = self.gate.read();
        let staged = self.stage_append(name, &req, true);
        drop(gate);
        // A blocking stage never declines.
        let Some(staged) = staged else {
            return Err(StorageError::Io(std::io::Error::other(
                "a blocking append declined to stage",
            )));
        };
        self.wal.wait(staged.lsn)?;
        if let Some(w) = staged.wake {
            self.hub.wake(name, w);
        }
        staged.result
    }

    /// [`Storage::try_append_staged`]: stages unless that would block (see
    /// the module docs); the returned future waits for the group commit
    /// without a thread.
    ///
    /// [`Storage::try_append_staged`]: crate::storage::Storage::try_append_staged
    pub(super) fn try_append_staged(
        &self,
        name: &str,
        req: AppendRequest,
    ) -> Staging<AppendOutcome> {
        let Some(gate) = self.gate.try_read() else {
            return Staging::WouldBlock(req);
        };
        let staged = self.stage_append(name, &req, false);
        drop(gate);
        let Some(staged) = staged else {
            return Staging::WouldBlock(req);
        };
        if staged.wake.is_none() && self.wal.is_committed(staged.lsn) {
            return Staging::Staged(Staged {
                result: staged.result,
                durable: None,
            });
        }
        let committed = self.wal.committed(staged.lsn);
        let wake = staged
            .wake
            .map(|w| (Arc::clone(&self.hub), name.to_string(), w));
        Staging::Staged(Staged {
            result: staged.result,
            durable: Some(Box::pin(async move {
                committed.await?;
                if let Some((hub, name, w)) = wake {
                    hub.wake(&name, w);
                }
                Ok(())
            })),
        })
    }

    /// Decides an append under the stream's lock, writes its records to the
    /// stream's file (page cache) and queues its WAL entry. The caller holds
    /// the gate shared, answers `result` once `lsn` is committed and then
    /// sends `wake`. Never waits for the disk; with `wait` false it does no
    /// blocking I/O at all and returns `None` (nothing changed) instead.
    fn stage_append(&self, name: &str, req: &AppendRequest, wait: bool) -> Option<StagedAppend> {
        let absent = |e| StagedAppend {
            lsn: self.map_lsn.load(Ordering::Acquire),
            result: Err(e),
            wake: None,
        };
        let found = if wait {
            self.streams.read().get(name).cloned()
        } else {
            self.streams.try_read()?.get(name).cloned()
        };
        let Some(stream) = found else {
            return Some(absent(StorageError::NotFound));
        };
        let mut s = if wait {
            stream.lock()
        } else {
            stream.try_lock_for(wal::LOCK_WAIT)?
        };
        if s.removed {
            return Some(absent(StorageError::NotFound));
        }
        let seen = s.last_lsn;
        let Stream {
            meta,
            starts,
            slot,
            last_lsn,
            durable,
            ..
        } = &mut *s;
        let before = (meta.tail, meta.closed);
        let mut lsn = seen;
        let applied = txn::append_to(meta, req, |m, plan| -> Result<(), Declined> {
            let records = &plan.records;
            if !records.is_empty() {
                if starts.is_none() && !wait {
                    return Err(Declined::WouldBlock);
                }
                self.index(m, starts)?;
                if !self.files.write_data(slot, m, records, wait)? {
                    return Err(Declined::WouldBlock);
                }
            }
            let op = entry_bin::AppendRef {
                name,
                id: m.id,
                records: records.len() as u32,
                tail: plan.new_tail,
                last_access: req.now,
                producer: plan
                    .producer
                    .zip(req.producer.as_ref())
                    .map(|(s, p)| (p.id.as_str(), s)),
                stream_seq: plan.stream_seq.as_deref(),
                close: plan.close,
                closed_by: if plan.close {
                    req.producer.as_ref()
                } else {
                    None
                },
            };
            // Encoded straight into the WAL's queue: the layout of
            // `format::encode_entry` for one `Op::Append`.
            let len = entry_bin::encoded_len(&op, records);
            lsn = self
                .wal
                .submit_claimed_with(len, wal::HEADROOM, wait, |out| {
                    entry_bin::encode_append_into(out, &op, records)
                })?
                .ok_or(Declined::WouldBlock)?;
            // Queued: nothing can fail any more. The index entries stay in
            // memory until the next checkpoint (see the module docs).
            if let Some(starts) = starts.as_mut() {
                let mut pos = m.tail.pos;
                for r in records {
                    starts.push(pos);
                    pos += r.len() as u64;
                }
            }
            Ok(())
        });
        let applied = match applied {
            Ok(a) => a,
            Err(Declined::WouldBlock) => return None,
            Err(Declined::Failed(e)) => {
                return Some(StagedAppend {
                    lsn: seen,
                    result: Err(e),
                    wake: None,
                });
            }
        };
        if !applied.wrote {
            // A duplicate answers once what it duplicates is durable.
            return Some(StagedAppend {
                lsn: seen,
                result: Ok(applied.outcome),
                wake: None,
            });
        }
        *last_lsn = lsn;
        if self.wal.is_committed(seen) {
            *durable = Some(Durable {
                before: lsn,
                tail: before.0,
                closed: before.1,
            });
        }
        let mut wake = wake_of(meta);
        if !applied.records.is_empty() {
            wake.appended = Some(Appended::new(meta.id, applied.from, applied.records));
        }
        Some(StagedAppend {
            lsn,
            result: Ok(applied.outcome),
            wake: Some(wake),
        })
    }
}
