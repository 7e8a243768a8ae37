//! The redb backend ("acid"): every stream in one ACID key-value store,
//! `DATA_DIR/streams.redb`.
//!
//! * **Schema**: see [`tables`]: `streams` (name → metadata), `data`
//!   (`(stream id, start position)` → `(seq, record)`) and `meta` (format
//!   version, id counter).
//! * **Writes** go through one writer thread ([`writer`]) that group-commits
//!   whatever is queued in a single write transaction. An append's records
//!   and the stream's new metadata (tail, producer state, `Stream-Seq`,
//!   closure) are written in the same transaction, so they reach the disk
//!   together; a create (with its initial body, closure and the source's
//!   refcount) and a delete (with its cascade) are likewise one step. With
//!   the default durability every commit is fsynced before anyone is
//!   answered.
//! * **Metadata cache**: every stream's [`StreamMeta`] is loaded at open and
//!   kept in memory; reads and validation never touch the `streams` table.
//!   The cache changes only after a commit succeeds, so a failed transaction
//!   leaves neither disk nor memory changed.
//! * **Reads** take a redb read transaction after reading the metadata, so
//!   everything up to the cached tail is visible in it; forks stitch their
//!   sources' bytes exactly like the memory backend.
//! * **Sliding TTL**: reads renew `last_access` in the cache only; the writer
//!   persists renewals about once a second and at shutdown (see [`writer`]).

mod read;
mod recent;
mod tables;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableTable};

use self::read::Data;
use self::tables::{
    CONTROL, DATA, FORMAT_VERSION, KEY_FORMAT, KEY_NEXT_ID, META, STREAMS, decode_meta, map_err,
};
use self::writer::Op;
use super::chain::{Chain, Metas};
use super::model::{Expiry, StreamMeta};
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, ReadOutcome, ReadRequest,
    Storage, StorageError, StreamInfo, TrimOutcome, check_control,
};
use crate::notify::WakeHub;
use crate::offset::Offset;

/// What the callers and the writer thread share.
pub(super) struct Shared {
    /// The open database; `None` only while the writer reopens it after an
    /// I/O failure (redb refuses every call after one until reopened).
    db: RwLock<Option<Arc<Database>>>,
    /// `DATA_DIR/streams.redb`, for reopening.
    path: std::path::PathBuf,
    /// Committed metadata of every stream (including soft-deleted and
    /// expired-but-unswept ones).
    cache: RwLock<HashMap<String, Arc<Mutex<StreamMeta>>>>,
    /// Streams with a sliding TTL whose read renewal is not yet persisted.
    touched: Mutex<HashSet<String>>,
    /// Every stream's last committed records ([`recent`]).
    recent: recent::Recent,
    hub: Arc<WakeHub>,
    /// Write transactions committed since open (group-commit statistics).
    commits: AtomicU64,
    /// Tests: make the next write transaction fail as if the disk were full.
    #[cfg(test)]
    inject_failure: std::sync::atomic::AtomicBool,
}

impl Metas for Shared {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        Ok(Shared::meta(self, name))
    }
}

impl Shared {
    /// The database, or `Unavailable` (503, retry) while it is reopened.
    fn db(&self) -> Result<Arc<Database>, StorageError> {
        self.db.read().clone().ok_or_else(|| {
            StorageError::Unavailable("the database is being reopened after a write failure".into())
        })
    }

    fn meta(&self, name: &str) -> Option<StreamMeta> {
        self.cache.read().get(name).map(|m| m.lock().clone())
    }

    /// Names of committed streams that are expired and unreferenced.
    fn sweepable(&self, now: Millis) -> Vec<String> {
        self.cache
            .read()
            .iter()
            .filter(|(_, m)| m.lock().is_sweepable(now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Applies a committed batch's metadata to the cache.
    fn install(&self, overlay: HashMap<String, Option<StreamMeta>>) {
        if overlay.is_empty() {
            return;
        }
        let mut cache = self.cache.write();
        for (name, meta) in overlay {
            match meta {
                None => {
                    if let Some(gone) = cache.remove(&name) {
                        self.recent.forget(gone.lock().id);
                    }
                }
                Some(mut meta) => match cache.get(&name) {
                    Some(entry) => {
                        let mut cur = entry.lock();
                        if cur.id == meta.id {
                            // Keep renewals that reads made during the batch.
                            meta.last_access = meta.last_access.max(cur.last_access);
                            *cur = meta;
                        } else {
                            self.recent.forget(cur.id);
                            drop(cur);
                            cache.insert(name, Arc::new(Mutex::new(meta)));
                        }
                    }
                    None => {
                        cache.insert(name, Arc::new(Mutex::new(meta)));
                    }
                },
            }
        }
    }
}

/// The redb-backed [`Storage`].
pub struct AcidStorage {
    shared: Arc<Shared>,
    tx: Sender<Op>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AcidStorage {
    /// Opens (or creates) `dir/streams.redb` and starts the writer thread.
    pub fn open(dir: &Path, hub: Arc<WakeHub>) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("streams.redb");
        let db = open_db(&path)?;
        let mut next_id = init_schema(&db)?;
        let mut cache = HashMap::new();
        {
            let txn = db.begin_read().map_err(map_err)?;
            let streams = txn.open_table(STREAMS).map_err(map_err)?;
            for item in streams.iter().map_err(map_err)? {
                let (name, bytes) = item.map_err(map_err)?;
                let meta = decode_meta(bytes.value())?;
                next_id = next_id.max(meta.id + 1);
                cache.insert(name.value().to_string(), Arc::new(Mutex::new(meta)));
            }
        }
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            cache: RwLock::new(cache),
            touched: Mutex::new(HashSet::new()),
            recent: recent::Recent::default(),
            hub,
            commits: AtomicU64::new(0),
            #[cfg(test)]
            inject_failure: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("acid-writer".into())
                .spawn(move || writer::run(shared, rx, next_id))?
        };
        Ok(AcidStorage {
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues an op for the writer and waits for its answer.
    fn call<T>(
        &self,
        op: impl FnOnce(Sender<Result<T, StorageError>>) -> Op,
    ) -> Result<T, StorageError> {
        let (tx, rx) = mpsc::channel();
        let closed = || StorageError::Unavailable("acid storage is shut down".into());
        self.tx.send(op(tx)).map_err(|_| closed())?;
        rx.recv().map_err(|_| closed())?
    }

    fn entry(&self, name: &str) -> Result<Arc<Mutex<StreamMeta>>, StorageError> {
        self.shared
            .cache
            .read()
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    fn read_inner(
        &self,
        meta: &StreamMeta,
        req: &ReadRequest,
    ) -> Result<ReadOutcome, StorageError> {
        // Begun after the metadata was taken, so it sees every record below
        // the cached tail (the cache changes only after commits).
        // Held until the transaction is gone: a reopen after a write
        // failure waits for it rather than racing a live read.
        let db = self.shared.db()?;
        let txn = db.begin_read().map_err(map_err)?;
        let data = txn.open_table(DATA).map_err(map_err)?;
        let chain = Chain {
            metas: &*self.shared,
            records: &Data(&data),
        };
        let (start, chunks, next) = chain.read_from(meta, req.from, req.max_bytes)?;
        Ok(ReadOutcome {
            info: meta.info(),
            start,
            chunks,
            next,
        })
    }

    fn stop_writer(&self) -> Result<(), StorageError> {
        let Some(handle) = self.writer.lock().take() else {
            return Ok(());
        };
        let result = self.call(Op::Shutdown);
        let _ = handle.join();
        result
    }
}

/// Opens (or creates) the database file.
pub(super) fn open_db(path: &Path) -> Result<Database, StorageError> {
    // redb asserts on some damaged files instead of returning an error;
    // a damaged store must stop the server with a message, not a panic.
    std::panic::catch_unwind(|| Database::create(path))
        .map_err(|_| {
            StorageError::Corrupt(format!(
                "{} is damaged beyond what redb can repair; restore it from a backup",
                path.display()
            ))
        })?
        .map_err(map_err)
}

/// Creates the tables on first open, checks the format version, and returns
/// the stored next stream id.
fn init_schema(db: &Database) -> Result<u64, StorageError> {
    let txn = db.begin_write().map_err(map_err)?;
    let next_id = {
        txn.open_table(STREAMS).map_err(map_err)?;
        txn.open_table(DATA).map_err(map_err)?;
        txn.open_table(CONTROL).map_err(map_err)?;
        let mut meta = txn.open_table(META).map_err(map_err)?;
        let version = meta.get(KEY_FORMAT).map_err(map_err)?.map(|v| v.value());
        match version {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(StorageError::Corrupt(format!(
                    "store format version {v} is not supported (this build reads {FORMAT_VERSION})"
                )));
            }
            None => {
                meta.insert(KEY_FORMAT, FORMAT_VERSION).map_err(map_err)?;
            }
        }
        let next = meta.get(KEY_NEXT_ID).map_err(map_err)?.map(|v| v.value());
        next.unwrap_or(1).max(1)
    };
    txn.commit().map_err(map_err)?;
    Ok(next_id)
}

impl Drop for AcidStorage {
    fn drop(&mut self) {
        if let Err(e) = self.stop_writer() {
            tracing::warn!(error = %e, "acid storage: final flush failed");
        }
    }
}

impl Storage for AcidStorage {
    /// From the in-memory map: includes soft-deleted streams kept for forks.
    fn stream_count(&self) -> Option<u64> {
        Some(self.shared.cache.read().len() as u64)
    }

    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        self.call(|tx| Op::Create(name.to_string(), Box::new(req), tx))
    }

    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        self.call(|tx| Op::Append(name.to_string(), Box::new(req), tx))
    }

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        let entry = self.entry(name)?;
        let meta = {
            let mut m = entry.lock();
            m.check_visible(req.now)?;
            m.last_access = req.now;
            m.clone()
        };
        if matches!(meta.expiry, Expiry::Ttl(_)) {
            self.shared.touched.lock().insert(name.to_string());
        }
        match self.read_inner(&meta, &req) {
            // Records vanish only when a stream is removed; if that raced
            // with this read, the stream is simply gone.
            Err(StorageError::Corrupt(_))
                if self.shared.meta(name).is_none_or(|m| m.id != meta.id) =>
            {
                Err(StorageError::NotFound)
            }
            other => other,
        }
    }

    /// At the tail, from the metadata cache (which changes only after
    /// commits), without a transaction; just behind it, from the stream's
    /// last committed records ([`recent`]).
    fn read_now(&self, name: &str, req: &ReadRequest) -> Option<ReadOutcome> {
        self.shared.db().ok()?;
        let entry = self.entry(name).ok()?;
        let (ttl, out) = {
            let mut m = entry.lock();
            m.check_visible(req.now).ok()?;
            let info = m.info();
            let (start, _) = info.read_start(req.from).ok()?;
            let chunks = if start == info.tail {
                Vec::new()
            } else {
                // Copying backends read up to `max_bytes` (`lend_bytes` is
                // for those that lend): all of it, or left to `read`.
                self.shared
                    .recent
                    .read(m.id, start, info.tail, req.max_bytes)?
            };
            let out = ReadOutcome {
                start,
                chunks,
                next: info.tail,
                info,
            };
            m.last_access = req.now;
            (matches!(m.expiry, Expiry::Ttl(_)), out)
        };
        if ttl {
            self.shared.touched.lock().insert(name.to_string());
        }
        Some(out)
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        let entry = self.entry(name)?;
        let m = entry.lock();
        m.check_visible(now)?;
        Ok(m.info())
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        self.call(|tx| Op::Delete(name.to_string(), now, tx))
    }

    fn trim(&self, name: &str, before: Offset, now: Millis) -> Result<TrimOutcome, StorageError> {
        self.call(|tx| Op::Trim(name.to_string(), before, now, tx))
    }

    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        // The sweeper runs every second: don't queue a write for nothing.
        if self.shared.sweepable(now).is_empty() {
            return Ok(0);
        }
        self.call(|tx| Op::Sweep(now, tx))
    }

    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        let mut all: Vec<(String, StreamMeta)> = self
            .shared
            .cache
            .read()
            .iter()
            .map(|(n, m)| (n.clone(), m.lock().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        let meta = self.shared.meta(name).ok_or(StorageError::NotFound)?;
        // Begun after the metadata was taken: it holds every record below
        // the cached tail (and perhaps later ones, which are left out).
        // Held until the transaction is gone: a reopen after a write
        // failure waits for it rather than racing a live read.
        let db = self.shared.db()?;
        let txn = db.begin_read().map_err(map_err)?;
        let data = txn.open_table(DATA).map_err(map_err)?;
        let mut at = meta.own_start();
        let mut records = Vec::with_capacity((meta.tail.seq - at.seq) as usize);
        let range = (meta.id, at.pos)..(meta.id, meta.tail.pos);
        for item in data.range(range).map_err(map_err)? {
            let (k, v) = item.map_err(map_err)?;
            let (seq, bytes) = v.value();
            if k.value().1 != at.pos || seq != at.seq {
                break;
            }
            at = Offset::new(at.seq + 1, at.pos + bytes.len() as u64);
            records.push(Bytes::copy_from_slice(bytes));
        }
        if at != meta.tail {
            // Records vanish only when a stream is removed.
            return if self.shared.meta(name).is_none_or(|m| m.id != meta.id) {
                Err(StorageError::NotFound)
            } else {
                Err(StorageError::Corrupt(format!(
                    "stream {name:?} has records up to {at}, not to its tail {}",
                    meta.tail
                )))
            };
        }
        Ok((meta, records))
    }

    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        self.call(|tx| Op::Restore(name.to_string(), Box::new((meta, records)), tx))
    }

    /// Its own write transaction, outside the writer thread's batches:
    /// redb serializes write transactions, so this waits for the current
    /// batch to commit and never mixes with it. Committed with redb's
    /// default (fsynced) durability.
    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_control(ns, key, value)?;
        let txn = self.shared.db()?.begin_write().map_err(map_err)?;
        txn.open_table(CONTROL)
            .map_err(map_err)?
            .insert((ns, key), value)
            .map_err(map_err)?;
        txn.commit().map_err(map_err)
    }

    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        check_control(ns, key, b"")?;
        let txn = self.shared.db()?.begin_write().map_err(map_err)?;
        txn.open_table(CONTROL)
            .map_err(map_err)?
            .remove((ns, key))
            .map_err(map_err)?;
        txn.commit().map_err(map_err)
    }

    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        check_control(ns, "-", b"")?;
        let txn = self.shared.db()?.begin_read().map_err(map_err)?;
        let table = txn.open_table(CONTROL).map_err(map_err)?;
        let mut out = Vec::new();
        for item in table.range((ns, "")..).map_err(map_err)? {
            let (k, v) = item.map_err(map_err)?;
            let (n, key) = k.value();
            if n != ns {
                break;
            }
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn shutdown(&self) -> Result<(), StorageError> {
        self.stop_writer()
    }
}

#[cfg(test)]
mod tests;
