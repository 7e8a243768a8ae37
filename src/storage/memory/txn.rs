//! One multi-stream call of the memory backend (create, delete, restore,
//! sweep) as a [`Txn`], so that [`txn`](crate::storage::txn)'s shared
//! decisions run on it exactly as on the acid and PostgreSQL backends.
//!
//! A [`MemTxn`] holds the map's write lock for the whole call (no stream
//! appears or disappears meanwhile) and locks each stream it looks at once,
//! on first sight, until the call ends: no append or read can interleave
//! with the decision, and no lock is taken twice. Changes are collected
//! (metadata per name, records per incarnation, wakes) and applied by
//! [`MemTxn::finish`]; a call that fails before it sets anything leaves the
//! store as it was (its reserved bytes are given back).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::lock_api::ArcMutexGuard;
use parking_lot::{Mutex, RawMutex};

use super::{MemoryStorage, Stream, StreamRef};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::chain::{Collect, Metas, Records};
use crate::storage::model::StreamMeta;
use crate::storage::txn::{Fail, Txn};
use crate::storage::{Millis, StorageError};

type Guard = ArcMutexGuard<RawMutex, Stream>;

/// Bytes of a stream's own records still held (a trim empties records).
fn own_bytes(stream: &Stream) -> u64 {
    stream.records.iter().map(|r| r.len() as u64).sum()
}

/// Records inserted by the call for one incarnation, not yet in its stream.
#[derive(Default)]
struct Pending {
    starts: Vec<u64>,
    records: Vec<Bytes>,
}

impl Pending {
    fn bytes(&self) -> u64 {
        self.records.iter().map(|r| r.len() as u64).sum()
    }
}

/// The state of one call over the memory store.
pub(super) struct MemTxn<'a> {
    store: &'a MemoryStorage,
    /// The map, write-locked by the caller for the whole call.
    map: &'a mut HashMap<String, StreamRef>,
    /// Every stream the call looked at, locked until it ends.
    locked: RefCell<HashMap<String, Guard>>,
    /// The call's metadata changes (`None`: removed).
    changes: HashMap<String, Option<StreamMeta>>,
    /// Records inserted per incarnation id (their bytes already reserved).
    pending: HashMap<u64, Pending>,
    wakes: Vec<(String, Wake)>,
    /// Incarnations whose records before a position a trim drops.
    trims: Vec<(u64, u64)>,
    /// What [`Txn::sweep_candidates`] answers (found under the read lock).
    candidates: Vec<String>,
}

impl<'a> MemTxn<'a> {
    pub(super) fn new(store: &'a MemoryStorage, map: &'a mut HashMap<String, StreamRef>) -> Self {
        MemTxn {
            store,
            map,
            locked: RefCell::new(HashMap::new()),
            changes: HashMap::new(),
            pending: HashMap::new(),
            wakes: Vec::new(),
            trims: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// A sweep's candidates: names found expired and unreferenced before
    /// the write lock was taken (each is re-checked).
    pub(super) fn with_candidates(mut self, names: Vec<String>) -> Self {
        self.candidates = names;
        self
    }

    /// Applies the call's changes, gives back the bytes of what it removed
    /// (and of records no stream took), then wakes readers. Called whether
    /// the call succeeded or was rejected: a rejected call set nothing but
    /// the removal of expired, unreferenced streams, which stands.
    pub(super) fn finish(self) {
        let MemTxn {
            store,
            map,
            locked,
            changes,
            mut pending,
            wakes,
            trims,
            ..
        } = self;
        let mut locked = locked.into_inner();
        for (id, point) in trims {
            // The trimmed stream was looked at, so it is locked. Its records
            // before the point are emptied, not removed, so that record
            // indexes stay where the layout expects them.
            if let Some(s) = locked.values_mut().find(|s| s.meta.id == id) {
                let Stream {
                    starts, records, ..
                } = &mut **s;
                let end = starts.partition_point(|&p| p < point);
                let mut freed = 0;
                for r in &mut records[..end] {
                    freed += r.len() as u64;
                    *r = Bytes::new();
                }
                store.release(freed);
            }
        }
        for (name, change) in changes {
            let current = locked.get_mut(&name);
            match (change, current) {
                (Some(meta), Some(stream)) if stream.meta.id == meta.id => {
                    if let Some(p) = pending.remove(&meta.id) {
                        stream.starts.extend(p.starts);
                        stream.records.extend(p.records);
                    }
                    stream.meta = meta;
                }
                (change, current) => {
                    // A removal, or a new incarnation taking the name.
                    let old = map.remove(&name);
                    let freed = match (current, old) {
                        (Some(locked), _) => own_bytes(locked),
                        (None, Some(unlocked)) => own_bytes(&unlocked.lock()),
                        (None, None) => 0,
                    };
                    store.release(freed);
                    if let Some(meta) = change {
                        let p = pending.remove(&meta.id).unwrap_or_default();
                        let stream = Stream {
                            meta,
                            starts: p.starts,
                            records: p.records,
                        };
                        map.insert(name, Arc::new(Mutex::new(stream)));
                    }
                }
            }
        }
        for p in pending.into_values() {
            store.release(p.bytes());
        }
        drop(locked);
        for (name, wake) in wakes {
            store.hub.wake(&name, wake);
        }
    }

    /// Runs `f` on the locked stream `name`, locking it on first sight.
    fn with_stream<T>(&self, name: &str, f: impl FnOnce(&Stream) -> T) -> Option<T> {
        let mut locked = self.locked.borrow_mut();
        if !locked.contains_key(name) {
            let stream = self.map.get(name)?;
            locked.insert(name.to_string(), stream.lock_arc());
        }
        locked.get(name).map(|g| f(g))
    }
}

impl Metas for MemTxn<'_> {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        if let Some(change) = self.changes.get(name) {
            return Ok(change.clone());
        }
        Ok(self.with_stream(name, |s| s.meta.clone()))
    }
}

impl Records for MemTxn<'_> {
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError> {
        let id = rows.meta().id;
        let locked = self.locked.borrow();
        // The chain walk read the stream's metadata first, so it is locked.
        let Some(s) = locked.values().find(|s| s.meta.id == id) else {
            return Ok(());
        };
        let first = s.starts.partition_point(|&p| p <= rows.from()).max(1) - 1;
        for i in first..s.records.len() {
            let seq = s.meta.base.seq + i as u64;
            if !rows.push(s.starts[i], seq, s.records[i].clone())? {
                break;
            }
        }
        Ok(())
    }
}

impl Txn for MemTxn<'_> {
    fn set(&mut self, name: &str, meta: Option<StreamMeta>) {
        self.changes.insert(name.to_string(), meta);
    }

    fn take_id(&mut self) -> Result<u64, Fail> {
        Ok(self.store.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Reserves the bytes against the memory limit (a refusal rejects the
    /// call: nothing was set yet) and keeps the records for
    /// [`MemTxn::finish`].
    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail> {
        self.store.reserve(records)?;
        let p = self.pending.entry(id).or_default();
        let mut pos = start.pos;
        for r in records {
            p.starts.push(pos);
            pos += r.len() as u64;
            p.records.push(r.clone());
        }
        Ok(())
    }

    /// The stream's records go with its map entry (see [`MemTxn::finish`]);
    /// only records this call inserted are dropped here.
    fn remove_records(&mut self, id: u64) -> Result<(), Fail> {
        if let Some(p) = self.pending.remove(&id) {
            self.store.release(p.bytes());
        }
        Ok(())
    }

    /// Empties the records (their buffers freed) when the call ends.
    fn trim_records(&mut self, id: u64, _base: Offset, point: Offset) -> Result<(), Fail> {
        self.trims.push((id, point.pos));
        Ok(())
    }

    fn wake(&mut self, name: &str, meta: &StreamMeta) {
        self.wakes
            .push((name.to_string(), Wake::bare(meta.tail, meta.closed)));
    }

    fn records(&self) -> Option<&dyn Records> {
        Some(self)
    }

    fn sweep_candidates(&mut self, _now: Millis) -> Result<Vec<String>, Fail> {
        Ok(std::mem::take(&mut self.candidates))
    }
}
