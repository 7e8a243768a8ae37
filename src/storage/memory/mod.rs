//! The in-memory backend: everything lives in process memory and is lost on
//! exit. For development and tests, and the reference the durable backends
//! are checked against.
//!
//! The protocol decisions are not made here: an append is
//! [`txn::append_to`](crate::storage::txn::append_to) on the locked stream's metadata, in place, and create
//! (fork included), delete (soft delete and cascade), restore and the sweep
//! are [`txn`](crate::storage::txn)'s shared functions run on a [`MemTxn`]. This module keeps
//! only how streams are stored, locked, accounted against the memory limit
//! and read.
//!
//! Locking: a map lock and a mutex per stream. Both are `parking_lot` locks
//! held for short, non-async critical sections; no I/O happens here. An
//! append or a read takes the map's read lock only to find the stream, then
//! the stream's mutex alone. A multi-stream call (create, delete, restore,
//! sweep) holds the map's write lock throughout, so that a fork source
//! cannot disappear while a fork is attached to it, and locks each stream it
//! touches once, until it ends ([`txn`]). No lock is ever taken
//! twice, and no thread holding a stream's mutex waits for the map lock.

mod txn;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use self::txn::MemTxn;
use super::model::{self, StreamMeta};
use super::txn::{self as shared, Fail};
use super::view::{self, Budget, Layout};
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, ReadOutcome, ReadRequest,
    Storage, StorageError, StreamInfo, TrimOutcome,
};
use crate::notify::{Appended, Wake, WakeHub};
use crate::offset::Offset;

/// One stream: its metadata and its own records.
struct Stream {
    meta: StreamMeta,
    /// Byte position where each own record starts.
    starts: Vec<u64>,
    records: Vec<Bytes>,
}

impl Stream {
    fn layout(&self) -> Layout<'_, [u64]> {
        Layout {
            base: self.meta.base,
            tail: self.meta.tail,
            index: &self.starts[..],
        }
    }
}

type StreamRef = Arc<Mutex<Stream>>;

/// The in-memory [`Storage`].
pub struct MemoryStorage {
    streams: RwLock<HashMap<String, StreamRef>>,
    next_id: AtomicU64,
    hub: Arc<WakeHub>,
    /// Cap on stored bytes (0: none); writes past it answer `NoSpace` (507).
    limit: u64,
    /// Bytes of records currently stored.
    used: AtomicU64,
    /// The control-plane key/value space, `(namespace, key)` → value.
    control: parking_lot::Mutex<std::collections::BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new(hub: Arc<WakeHub>) -> Self {
        Self::with_limit(hub, 0)
    }

    /// A store that refuses writes (with `NoSpace`) once it holds
    /// `limit_bytes` of stream data; 0 means no limit.
    pub fn with_limit(hub: Arc<WakeHub>, limit_bytes: u64) -> Self {
        MemoryStorage {
            streams: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hub,
            limit: limit_bytes,
            used: AtomicU64::new(0),
            control: Default::default(),
        }
    }

    /// Accounts for `records` about to be stored, or refuses them.
    fn reserve(&self, records: &[Bytes]) -> Result<(), StorageError> {
        let n: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.limit == 0 {
            self.used.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| StorageError::NoSpace)
    }

    /// Gives back the room of `bytes` no longer stored.
    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn get(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.lookup(name).ok_or(StorageError::NotFound)
    }

    /// Finds a stream under the map's read lock, released on return.
    fn lookup(&self, name: &str) -> Option<StreamRef> {
        self.streams.read().get(name).cloned()
    }

    /// Runs one multi-stream call of [`txn`](super::txn) under the map's
    /// write lock and applies what it changed (see [`MemTxn::finish`]).
    fn transact<T>(
        &self,
        candidates: Vec<String>,
        call: impl FnOnce(&mut MemTxn<'_>) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let mut streams = self.streams.write();
        let mut t = MemTxn::new(self, &mut streams).with_candidates(candidates);
        let result = call(&mut t);
        t.finish();
        result.map_err(|(Fail::Reject(e) | Fail::Fatal(e))| e)
    }

    /// Reads `[from, limit)` of the view of `stream`, walking up the fork
    /// chain for inherited positions. `from` has been validated. Sources
    /// are looked up one at a time, never under another lock.
    fn read_view(
        &self,
        stream: &StreamRef,
        from: Offset,
        limit: u64,
        budget: Budget,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        let s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or_else(|| {
                StorageError::Corrupt("position before base of a stream that is not a fork".into())
            })?;
            let limit = limit.min(s.meta.base.pos);
            drop(s);
            let source = self.lookup(&link.source).ok_or(StorageError::NotFound)?;
            return self.read_view(&source, from, limit, budget);
        }
        let layout = s.layout();
        let (pieces, next) = layout.plan(from, limit, budget);
        let chunks = pieces
            .iter()
            .map(|p| {
                let r = &s.records[p.index as usize];
                r.slice(p.skip as usize..(p.skip + p.len) as usize)
            })
            .collect();
        Ok((chunks, next))
    }

    /// Checks that `from` is a position of the view of `stream`.
    fn validate_view(
        &self,
        stream: &StreamRef,
        from: Offset,
        whole: bool,
    ) -> Result<(), StorageError> {
        let s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or(StorageError::InvalidOffset)?;
            drop(s);
            let source = self
                .lookup(&link.source)
                .ok_or(StorageError::InvalidOffset)?;
            return self.validate_view(&source, from, whole);
        }
        s.layout().validate(from, whole)
    }
}

impl Storage for MemoryStorage {
    fn may_block(&self) -> bool {
        false
    }

    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        super::check_control(ns, key, value)?;
        self.control
            .lock()
            .insert((ns.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }

    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        super::check_control(ns, key, b"")?;
        self.control
            .lock()
            .remove(&(ns.to_string(), key.to_string()));
        Ok(())
    }

    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        super::check_control(ns, "-", b"")?;
        let control = self.control.lock();
        Ok(control
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Includes soft-deleted streams kept for their forks.
    fn stream_count(&self) -> Option<u64> {
        Some(self.streams.read().len() as u64)
    }

    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        self.transact(Vec::new(), |t| shared::create(t, name, &req))
    }

    /// The hot path: the decision is made on the locked stream's metadata in
    /// place; the store step reserves the bytes and pushes the records.
    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        let stream = self.get(name)?;
        let mut s = stream.lock();
        let Stream {
            meta,
            starts,
            records,
        } = &mut *s;
        let applied = shared::append_to(meta, &req, |before, plan| {
            self.reserve(&plan.records)?;
            let mut pos = before.tail.pos;
            for r in &plan.records {
                starts.push(pos);
                pos += r.len() as u64;
                records.push(r.clone());
            }
            Ok::<_, StorageError>(())
        })?;
        if applied.wrote {
            let mut wake = Wake::bare(meta.tail, meta.closed);
            if !applied.records.is_empty() {
                wake.appended = Some(Appended::new(meta.id, applied.from, applied.records));
            }
            self.hub.wake(name, wake);
        }
        Ok(applied.outcome)
    }

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        let stream = self.get(name)?;
        let (info, json) = {
            let mut s = stream.lock();
            s.meta.check_visible(req.now)?;
            s.meta.last_access = req.now;
            (s.meta.info(), model::is_json(&s.meta.content_type))
        };
        let (start, check) = info.read_start(req.from)?;
        if check {
            self.validate_view(&stream, start, json)?;
        }
        let read = |at, budget| self.read_view(&stream, at, info.tail.pos, budget);
        let (chunks, next) =
            view::read_stitched(read, start, info.tail, json, req.max_bytes, req.lend_bytes)?;
        Ok(ReadOutcome {
            info,
            start,
            chunks,
            next,
        })
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        let stream = self.get(name)?;
        let s = stream.lock();
        s.meta.check_visible(now)?;
        Ok(s.meta.info())
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        self.transact(Vec::new(), |t| shared::delete(t, name, now))
    }

    fn trim(&self, name: &str, before: Offset, now: Millis) -> Result<TrimOutcome, StorageError> {
        self.transact(Vec::new(), |t| shared::trim(t, name, before, now))
    }

    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        let mut all: Vec<(String, StreamMeta)> = self
            .streams
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.lock().meta.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        let stream = self.get(name)?;
        let s = stream.lock();
        let first = s.starts.partition_point(|&p| p < s.meta.own_start().pos);
        Ok((s.meta.clone(), s.records[first..].to_vec()))
    }

    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        self.transact(Vec::new(), |t| shared::restore(t, name, meta, &records))
    }

    /// Candidates are found under the read lock (appends go on meanwhile),
    /// then re-checked and removed under the write lock.
    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        let candidates: Vec<String> = self
            .streams
            .read()
            .iter()
            .filter(|(_, s)| s.lock().meta.is_sweepable(now))
            .map(|(n, _)| n.clone())
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        self.transact(candidates, |t| shared::sweep(t, now))
    }
}

#[cfg(test)]
mod tests;
