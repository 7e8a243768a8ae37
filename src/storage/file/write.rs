//! Multi-stream changes: create (a fork too), delete, sweep and restore.
//!
//! The decisions are [`txn`]'s, shared with every backend; this file keeps
//! how the file backend carries them out ([`FileTxn`], its [`Txn`]):
//!
//! * under the gate (shared) and the map's write lock, each stream the
//!   decision asks about is locked for the rest of the operation;
//! * a new stream's files are written first ([`Txn::insert_records`]); if
//!   that fails its files are queued for unlinking and the call is refused;
//! * every change goes into memory at once (no one else can see it: the
//!   map and the streams are locked) and into ONE WAL entry, queued by
//!   [`Inner::commit`] when the decision is made: metadata of changed
//!   streams, removals in order, then the new stream with its records;
//! * the caller answers once that entry (or, when nothing changed, the last
//!   entry that touched what it looked at) is durable, then wakes readers.
//!
//! Room in the WAL is claimed before the gate is taken, so a full disk
//! refuses the call cleanly (507) before anything changes.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::{ArcMutexGuard, Mutex};

use super::read::Access;
use super::{Guard, Inner, METADATA_ROOM, Stream, StreamRef, Streams, files, format, wake_of, wal};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::chain::Metas;
use crate::storage::model::StreamMeta;
use crate::storage::txn::{self, Fail, Txn};
use crate::storage::{
    CreateOutcome, CreateRequest, Millis, StorageError, StreamInfo, TrimOutcome, check_restore,
};
use format::Op;

/// The changes of one multi-stream operation, applied in memory under the
/// locks it holds and queued as one WAL entry.
#[derive(Default)]
pub(super) struct Tx {
    held: Vec<Guard>,
    /// Indexes into `held` of existing streams whose metadata changed.
    changed: Vec<usize>,
    /// Indexes into `held` of streams this operation created, with the
    /// number of records each starts with (in the entry's `records`, in
    /// this order).
    created: Vec<(usize, u32)>,
    /// `Remove` ops, in the order the decision made them.
    removes: Vec<Op>,
    records: Vec<Bytes>,
    wakes: Vec<(String, Wake)>,
    unlink: Vec<u64>,
    /// Data files whose space before a file offset a trim gives back once
    /// the entry is durable (`(id, file offset)`).
    punch: Vec<(u64, u64)>,
    /// An earlier entry callers must also wait for (the removal behind an
    /// absent stream the operation looked for).
    after: u64,
    /// Streams were added or removed.
    map_changed: bool,
    /// Room in the WAL for this operation's entry, claimed before any change.
    claim: Option<wal::Claim>,
}

impl Tx {
    /// Locks `s` for the rest of the operation (once, however often asked).
    fn lock(&mut self, s: &StreamRef) -> usize {
        if let Some(i) = self.position(s) {
            return i;
        }
        self.held.push(s.lock_arc());
        self.held.len() - 1
    }

    fn position(&self, s: &StreamRef) -> Option<usize> {
        self.held
            .iter()
            .position(|g| Arc::ptr_eq(ArcMutexGuard::mutex(g), s))
    }

    /// The LSN a caller must wait for before answering about these streams.
    fn seen_lsn(&self) -> u64 {
        self.held
            .iter()
            .map(|g| g.last_lsn)
            .max()
            .unwrap_or(0)
            .max(self.after)
    }
}

/// The file backend's [`Txn`]: the map (write-locked) and the operation's
/// [`Tx`]. `Metas::meta` takes `&self` but locks streams into the
/// transaction, hence the `RefCell` (one thread, no re-entry).
pub(super) struct FileTxn<'a> {
    inner: &'a Inner,
    streams: &'a mut Streams,
    tx: RefCell<Tx>,
    /// The record starts of the incarnation whose files
    /// [`Txn::insert_records`] wrote, for the [`Txn::set`] that creates it.
    written: Option<(u64, Vec<u64>)>,
    /// What [`Txn::sweep_candidates`] answers.
    candidates: Vec<String>,
}

impl FileTxn<'_> {
    /// The transaction's changes; files written for a stream that was not
    /// created after all are unlinked.
    fn finish(mut self) -> Tx {
        let mut tx = self.tx.into_inner();
        if let Some((id, _)) = self.written.take() {
            tx.unlink.push(id);
        }
        tx
    }
}

impl Metas for FileTxn<'_> {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        let mut tx = self.tx.borrow_mut();
        match self.streams.get(name) {
            Some(s) => {
                let i = tx.lock(s);
                Ok(Some(tx.held[i].meta.clone()))
            }
            None => {
                // Absent: an answer based on that waits for the removal.
                tx.after = tx.after.max(self.inner.map_lsn.load(Ordering::Acquire));
                Ok(None)
            }
        }
    }
}

impl Access for FileTxn<'_> {
    fn source(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.streams
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    fn with<R>(&self, stream: &StreamRef, f: impl FnOnce(&mut Stream) -> R) -> R {
        let mut tx = self.tx.borrow_mut();
        match tx.position(stream) {
            Some(i) => f(&mut tx.held[i]),
            None => {
                drop(tx);
                f(&mut stream.lock())
            }
        }
    }
}

impl Txn for FileTxn<'_> {
    fn set(&mut self, name: &str, meta: Option<StreamMeta>) {
        let tx = self.tx.get_mut();
        let Some(meta) = meta else {
            let Some(s) = self.streams.remove(name) else {
                return;
            };
            let i = tx.lock(&s);
            tx.held[i].removed = true;
            let id = tx.held[i].meta.id;
            tx.removes.push(Op::Remove {
                name: name.to_string(),
                id,
            });
            tx.map_changed = true;
            return;
        };
        if let Some(s) = self.streams.get(name) {
            let i = tx.lock(s);
            if tx.held[i].meta.id == meta.id {
                tx.held[i].meta = meta;
                if !tx.changed.contains(&i) && !tx.created.iter().any(|c| c.0 == i) {
                    tx.changed.push(i);
                }
                return;
            }
        }
        // A new incarnation, whose files `insert_records` wrote.
        let starts = match self.written.take() {
            Some((id, starts)) if id == meta.id => starts,
            other => {
                debug_assert!(false, "stream {name:?} created without its files");
                self.written = other;
                Vec::new()
            }
        };
        let starts_len = starts.len() as u32;
        let stream = Arc::new(Mutex::new(Stream {
            name: name.to_string(),
            meta,
            indexed: starts.len() as u64,
            starts: Some(starts),
            slot: files::Slot::default(),
            last_lsn: 0,
            durable: None,
            removed: false,
        }));
        let records = starts_len;
        let i = tx.lock(&stream);
        tx.created.push((i, records));
        tx.map_changed = true;
        let replaced = self.streams.insert(name.to_string(), stream);
        debug_assert!(replaced.is_none(), "{name:?} created over a live stream");
    }

    fn take_id(&mut self) -> Result<u64, Fail> {
        Ok(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail> {
        // Files first: if they cannot be written nothing has changed yet.
        let files = &self.inner.files;
        let tx = self.tx.get_mut();
        if let Err(e) = files
            .create(id, start)
            .and_then(|()| files.append(id, start, 0, start.pos, records))
        {
            tx.unlink.push(id);
            return Err(Fail::Reject(e));
        }
        let mut starts = Vec::with_capacity(records.len());
        let mut pos = start.pos;
        for r in records {
            starts.push(pos);
            pos += r.len() as u64;
        }
        tx.records.extend_from_slice(records);
        self.written = Some((id, starts));
        Ok(())
    }

    fn remove_records(&mut self, id: u64) -> Result<(), Fail> {
        self.tx.get_mut().unlink.push(id);
        Ok(())
    }

    /// The hole is punched once the entry with the new trim point is
    /// durable: until then a crash keeps the records (and the old point).
    /// Frames still buffered below the point are written first, or the
    /// buffer would put them back into the hole later ([`super::pending`]);
    /// if that fails (a full disk, which a trim is meant to relieve) the
    /// trim goes on and only their space stays taken.
    fn trim_records(&mut self, id: u64, base: Offset, point: Offset) -> Result<(), Fail> {
        let to = format::data_offset(point.seq - base.seq, point.pos, base.pos);
        let tx = self.tx.get_mut();
        if let Some(g) = tx.held.iter_mut().find(|g| g.meta.id == id)
            && g.slot.pending.from().is_some_and(|from| from < to)
            && let Err(e) = self.inner.flush_pending(g)
        {
            tracing::debug!(stream_id = id, error = %e, "could not write buffered frames before a trim");
        }
        tx.punch.push((id, to));
        Ok(())
    }

    fn record_boundary(&self, meta: &StreamMeta, at: Offset) -> Result<Offset, StorageError> {
        // The decision looked the stream up, which locked it into `held`.
        let stream = {
            let tx = self.tx.borrow();
            tx.held
                .iter()
                .find(|g| g.meta.id == meta.id)
                .map(|g| Arc::clone(ArcMutexGuard::mutex(g)))
        };
        let stream = stream.ok_or(StorageError::NotFound)?;
        self.inner.record_boundary(self, &stream, at)
    }

    fn wake(&mut self, name: &str, meta: &StreamMeta) {
        self.tx
            .get_mut()
            .wakes
            .push((name.to_string(), wake_of(meta)));
    }

    fn fork_base(
        &self,
        source: &StreamMeta,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        // The decision looked the source up, which locked it into `held`.
        let stream = {
            let tx = self.tx.borrow();
            tx.held
                .iter()
                .find(|g| g.meta.id == source.id)
                .map(|g| Arc::clone(ArcMutexGuard::mutex(g)))
        };
        let stream = stream.ok_or(StorageError::ForkSourceNotFound)?;
        self.inner
            .resolve_fork_base(self, &stream, source, anchor, sub_offset)
    }

    fn sweep_candidates(&mut self, _now: Millis) -> Result<Vec<String>, Fail> {
        Ok(std::mem::take(&mut self.candidates))
    }
}

impl Inner {
    /// Runs one multi-stream operation `op` (with WAL room `claim`) under
    /// the gate and the map's write lock, queues its entry, and answers
    /// once that is durable, waking readers after.
    fn transact<T>(
        &self,
        claim: wal::Claim,
        candidates: Vec<String>,
        op: impl FnOnce(&mut FileTxn<'_>) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let gate = self.gate.read();
        let mut streams = self.streams.write();
        let mut t = FileTxn {
            inner: self,
            streams: &mut streams,
            tx: RefCell::new(Tx {
                claim: Some(claim),
                ..Tx::default()
            }),
            written: None,
            candidates,
        };
        let r = op(&mut t).map_err(|(Fail::Reject(e) | Fail::Fatal(e))| e);
        let mut tx = t.finish();
        let punch = std::mem::take(&mut tx.punch);
        let (lsn, wakes) = self.commit(tx);
        drop(streams);
        drop(gate);
        self.wal.wait(lsn)?;
        for (id, to) in punch {
            // Reclaiming only: the durable trim point already hides the
            // bytes, and the next trim of the stream punches from the
            // start again.
            if let Err(e) = self.files.punch(id, to) {
                tracing::warn!(stream_id = id, error = %e, "could not give back trimmed space");
            }
        }
        for (n, w) in wakes {
            self.hub.wake(&n, w);
        }
        r
    }

    /// Queues a transaction's entry and releases its locks; returns the LSN
    /// to wait for and the wakes to send after it.
    fn commit(&self, mut tx: Tx) -> (u64, Vec<(String, Wake)>) {
        self.pending_unlink.lock().extend(tx.unlink.drain(..));
        // Metadata of the surviving changed streams, the removals, then the
        // new stream: its `Put` carries records, which line up with the
        // entry's records in order (recovery takes them op by op).
        let mut ops = Vec::with_capacity(tx.changed.len() + tx.removes.len() + tx.created.len());
        for &i in &tx.changed {
            let g = &tx.held[i];
            if !g.removed {
                ops.push(Op::Put {
                    name: g.name.clone(),
                    meta: Box::new(g.meta.clone()),
                    records: 0,
                });
            }
        }
        ops.append(&mut tx.removes);
        for &(i, records) in &tx.created {
            let g = &tx.held[i];
            ops.push(Op::Put {
                name: g.name.clone(),
                meta: Box::new(g.meta.clone()),
                records,
            });
        }
        if ops.is_empty() {
            return (tx.seen_lsn(), tx.wakes);
        }
        let lsn = self.wal.submit(&format::encode_entry(&ops, &tx.records));
        // Accounted as used by the submit: the claim is no longer needed.
        drop(tx.claim.take());
        for g in &mut tx.held {
            g.last_lsn = lsn;
        }
        if tx.map_changed {
            self.map_lsn.fetch_max(lsn, Ordering::AcqRel);
        }
        (lsn, tx.wakes)
    }

    pub(super) fn create(
        &self,
        name: &str,
        req: CreateRequest,
    ) -> Result<CreateOutcome, StorageError> {
        // Room for the entry (metadata of the stream and a fork source, the
        // initial body) before anything changes: a full disk is a clean 507.
        let estimate = METADATA_ROOM + req.body.len() as u64 * 2 + name.len() as u64 * 2;
        let claim = self.wal.claim(estimate, wal::HEADROOM)?;
        self.transact(claim, Vec::new(), |t| txn::create(t, name, &req))
    }

    pub(super) fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        // Metadata only, and allowed into the headroom: deletes free space.
        let claim = self.wal.claim(METADATA_ROOM, 0)?;
        self.transact(claim, Vec::new(), |t| txn::delete(t, name, now))
    }

    pub(super) fn trim(
        &self,
        name: &str,
        before: Offset,
        now: Millis,
    ) -> Result<TrimOutcome, StorageError> {
        // Metadata only, and allowed into the headroom: trims free space.
        let claim = self.wal.claim(METADATA_ROOM, 0)?;
        self.transact(claim, Vec::new(), |t| txn::trim(t, name, before, now))
    }

    pub(super) fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        let expired: Vec<String> = self
            .streams
            .read()
            .iter()
            .filter(|(_, s)| {
                let s = s.lock();
                s.meta.is_expired(now) && s.meta.refcount == 0
            })
            .map(|(n, _)| n.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let claim = self.wal.claim(METADATA_ROOM, 0)?;
        self.transact(claim, expired, |t| txn::sweep(t, now))
    }

    /// Restores a stream as one WAL entry (a `Put` carrying every record and
    /// the whole metadata), exactly like a create.
    pub(super) fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        check_restore(&meta, &records)?;
        // The entry must fit in one WAL frame (recovery rejects larger ones).
        let header = serde_json::to_vec(&meta).map_or(0, |v| v.len()) + name.len() + 1024;
        let size: u64 = records.iter().map(|r| r.len() as u64 + 4).sum::<u64>() + header as u64;
        if size >= u64::from(format::MAX_FRAME) || records.len() > u32::MAX as usize {
            return Err(StorageError::TooLarge(format!(
                "stream {name:?} holds {size} bytes; the file backend restores at most {} \
                 bytes per stream in one atomic step",
                format::MAX_FRAME
            )));
        }
        let claim = self.wal.claim(size + METADATA_ROOM, wal::HEADROOM)?;
        self.transact(claim, Vec::new(), |t| txn::restore(t, name, meta, &records))
    }
}
