//! The append-log file backend: a shared, group-committed write-ahead log,
//! per-stream data files, and periodic checkpoints.
//!
//! # Layout
//!
//! * this file: [`FileStorage`], opening (recovery first), the [`Storage`]
//!   impl, the in-memory `Stream` and the answers' durability waits;
//! * `append`: the staged (async, never blocking) and blocking append;
//! * `write`: create (a fork too), delete, sweep and restore, through the
//!   shared decisions of [`txn`](super::txn);
//! * `read`: reads through fork chains, head, listing, export;
//! * `checkpoint`: the checkpoint and its thread, finding garbage files;
//! * `recover`, `wal`, `files`, `pending`, [`format`](mod@format), [`control`],
//!   `faults`: recovery, the log, the stream files, small appends' frames
//!   on their way to them, the byte layout, control records, injected
//!   failures (tests).
//!
//! # Write path
//!
//! Every backend takes its decisions from [`txn`](super::txn); this one
//! keeps how it stores them. Under the stream's lock an append is decided
//! by [`txn::append_to`](super::txn::append_to) on the stream's metadata in
//! place, its records are written (page cache, no sync) past the stream's
//! tail in its data file, or buffered for it with the appends around them
//! when they are small (`pending`), and *one* WAL entry carrying the
//! records together with what the append changed (tail, the one producer's
//! state, `Stream-Seq`, closure: [`format::Op::Append`]) is queued. The lock
//! is then released and the caller waits until the committer has synced that
//! entry, so concurrent appends, to one stream or many, share one
//! `fdatasync` ([`wal`]). Multi-stream changes (a fork and its source's
//! refcount, a delete cascade) are one entry too: everything an operation
//! changes is atomic on disk.
//!
//! The entry used to be a `Put` of the whole metadata, cloned and encoded
//! under the lock: with 64 idempotent producers on a stream, every append
//! encoded all 64 states. And an append's record starts go to the stream's
//! in-memory index only; the checkpoint writes them to the index file
//! before the snapshot that relies on them, which takes one of the two
//! `pwrite`s per append (strace) out from under the lock. Recovery
//! rewrites the index entries of everything it replays.
//!
//! # Readers see only durable data
//!
//! In-memory state runs ahead of the disk by at most the entries in flight.
//! Every call remembers the LSN of the last entry that touched what it looked
//! at and waits for it before answering, so nothing a client is told (data,
//! tails, closure, existence) can be undone by a crash in `always` mode.
//! Wakes are sent after that wait. A poll answered without waiting
//! (`read_now`) while an append's entry is in flight answers from the
//! stream as it was before that append ([`Durable`]), which is durable.
//!
//! # Checkpoints and recovery
//!
//! A background thread checkpoints when the WAL has grown or a while has
//! passed: it briefly stops writers (the `gate`), waits for the log to drain,
//! snapshots every stream's metadata and rotates to a new WAL segment; then,
//! writers running again, it syncs the stream files written since the last
//! checkpoint, writes the snapshot atomically (temp file, sync, rename, sync
//! directory) and deletes the older WAL segments and the files of removed
//! streams (this is when deletes and expiry give back disk space). Recovery
//! ([`recover`]) loads the snapshot and replays the WAL, checking and cutting
//! back only the files of streams the replay touches; it writes a checkpoint
//! before serving only if something was replayed, and leaves finding the
//! files of removed streams to the background thread, so a clean restart
//! costs the snapshot, not the number of streams. The byte layout is
//! documented in `docs/file-format.md`.
//!
//! # Locks (in acquisition order)
//!
//! `gate` (read: any call that queues a WAL entry; write: a checkpoint's cut)
//! → `streams` map (write: creates, deletes, sweeps) → stream mutexes (fork
//! chains child before source; only a multi-stream operation, under the
//! map's write lock, holds several) → WAL queue / file-handle cache
//! (leaves). All are `parking_lot` locks, held for short sections: callers
//! are blocking threads, except a staged append on an async worker, which
//! only try-locks the gate and the map (declining when they are taken) and
//! never does blocking I/O (see `append`). No lock but a stream's, the
//! map's (a create writing the new stream's files) and the gate is held
//! across file I/O.

mod append;
mod checkpoint;
pub mod control;
mod entry_bin;
mod faults;
mod files;
pub mod format;
mod lends;
mod pending;
mod range;
mod read;
mod recent;
mod recover;
mod space;
mod wal;
mod write;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{ArcMutexGuard, Condvar, Mutex, RawMutex, RwLock};

use self::files::Files;
use self::wal::Wal;
use super::model::StreamMeta;
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, ReadOutcome, ReadRequest,
    Staged, Staging, Storage, StorageError, StreamInfo, TrimOutcome,
};
use crate::config::SyncMode;
use crate::notify::{Wake, WakeHub};
use crate::offset::Offset;

/// WAL room claimed for an entry's metadata (stream and fork-source
/// metadata, producer states); entries carrying data claim their size too.
const METADATA_ROOM: u64 = 64 << 10;
/// Open file-handle pairs kept at most.
const HANDLE_CACHE: usize = 256;

/// One stream incarnation in memory.
struct Stream {
    name: String,
    meta: StreamMeta,
    /// Start position of each own record; loaded from the index file on
    /// first use, then kept in step with appends.
    starts: Option<Vec<u64>>,
    /// Own records whose starts are in the index file: appends keep them in
    /// `starts` only, and the next checkpoint writes them (see the module
    /// docs).
    indexed: u64,
    /// The way to its files (see [`files::Slot`]).
    slot: files::Slot,
    /// LSN of the last WAL entry that changed this stream.
    last_lsn: u64,
    /// The stream as it was before an append whose commit may still be
    /// pending: what a poll is answered from meanwhile ([`Durable`]).
    durable: Option<Durable>,
    /// Set (under the lock) when the stream leaves the map: a caller that
    /// found it just before must not write to it.
    removed: bool,
}

/// A stream's tail and closure just before the change logged at
/// `before`, all of whose earlier changes were committed.
///
/// While `before` is not committed, that is the stream as every
/// acknowledged write left it (the WAL commits in LSN order, and nothing
/// after an uncommitted entry is acknowledged), so a poll answered from it
/// is the answer a read just before that change would have given: a
/// reader that asks while an append waits for its `fdatasync` is answered
/// at once instead of waiting on a blocking thread for the sync (at
/// 10,000 long-pollers on one stream, every poll in that window did).
/// Once `before` is committed it says nothing (later changes may be
/// acknowledged too) until the next append made on a committed state.
#[derive(Clone, Copy)]
struct Durable {
    before: u64,
    tail: Offset,
    closed: bool,
}

type StreamRef = Arc<Mutex<Stream>>;
type Streams = HashMap<String, StreamRef>;
type Guard = ArcMutexGuard<RawMutex, Stream>;

/// Takes the directory's lock, waiting a little for it: a process that
/// had it may be on its way out (a restart), and a child forked by another
/// thread of this process holds a copy of the descriptor until it `exec`s
/// (a test binary that runs commands reopening a store it just closed).
fn lock_for_open(lock: &std::fs::File) -> Result<(), std::fs::TryLockError> {
    const PATIENCE: Duration = Duration::from_secs(2);
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < PATIENCE => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn wake_of(meta: &StreamMeta) -> Wake {
    Wake::bare(meta.tail, meta.closed)
}

struct Inner {
    root: PathBuf,
    wal_dir: PathBuf,
    streams: RwLock<Streams>,
    next_id: AtomicU64,
    hub: Arc<WakeHub>,
    wal: Arc<Wal>,
    files: Files,
    /// Writers hold it shared while they change state and queue its entry;
    /// a checkpoint holds it exclusively to take a consistent cut.
    gate: RwLock<()>,
    /// LSN of the last entry that added or removed a stream.
    map_lsn: AtomicU64,
    /// Files of removed incarnations, unlinked after the next checkpoint.
    pending_unlink: Mutex<Vec<u64>>,
    /// Serializes checkpoints.
    checkpointing: Mutex<()>,
    /// Control-plane records (`control/`), apart from the WAL.
    control: control::Control,
    /// Held for the store's lifetime: one process per data directory.
    _lock: File,
}

/// The file [`Storage`]. See the module docs.
pub struct FileStorage {
    inner: Arc<Inner>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl FileStorage {
    /// Opens (creating if needed) the store in `dir`, recovering whatever a
    /// crash left behind.
    pub fn open(
        dir: &Path,
        sync: SyncMode,
        sync_interval: Duration,
        hub: Arc<WakeHub>,
    ) -> Result<Self, StorageError> {
        let root = dir.to_path_buf();
        let wal_dir = root.join("wal");
        let streams_dir = root.join("streams");
        std::fs::create_dir_all(&wal_dir)?;
        std::fs::create_dir_all(&streams_dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))?;
        lock_for_open(&lock).map_err(|_| {
            StorageError::Unavailable(format!("{} is in use by another process", root.display()))
        })?;
        let files = Files::new(streams_dir, HANDLE_CACHE);
        let started = Instant::now();
        let rec = recover::recover(&root, &wal_dir, &files)?;
        let recovered = started.elapsed();
        let (wal, committer) = Wal::start(
            wal_dir.clone(),
            rec.last_segment + 1,
            sync,
            sync_interval,
            Arc::clone(&files.faults),
        )?;
        // Ids below `next_id` that recovery did not find live can never be
        // allocated again, so their files are garbage; the checkpointer
        // finds them by listing the directory in the background (200,000
        // files for 100,000 streams) instead of delaying the start.
        let live: HashSet<u64> = rec.streams.values().map(|m| m.id).collect();
        let garbage_below = rec.next_id;
        // Nothing to make durable or to cut off: the checkpoint on disk plus
        // the (empty) WAL after it already describe the state exactly.
        let needs_checkpoint = rec.replayed > 0 || !rec.clean_end;
        if rec.replayed > 0 {
            // Replay rewrites the data of every replayed record, those a
            // later trim dropped included: give their space back again,
            // as the trim did (not while forks still read them).
            for meta in rec.streams.values() {
                let start = meta.own_start();
                if start.pos > meta.base.pos && meta.refcount == 0 {
                    let to =
                        format::data_offset(start.seq - meta.base.seq, start.pos, meta.base.pos);
                    if let Err(e) = files.punch(meta.id, to) {
                        tracing::warn!(stream_id = meta.id, error = %e, "could not give back trimmed space");
                    }
                }
            }
        }
        let streams = rec
            .streams
            .into_iter()
            .map(|(name, meta)| {
                let s = Stream {
                    name: name.clone(),
                    indexed: recover::own(&meta).0,
                    meta,
                    starts: None,
                    slot: files::Slot::default(),
                    last_lsn: 0,
                    durable: None,
                    removed: false,
                };
                (name, Arc::new(Mutex::new(s)))
            })
            .collect();
        let inner = Arc::new(Inner {
            control: control::Control::new(&root),
            root,
            wal_dir,
            streams: RwLock::new(streams),
            next_id: AtomicU64::new(rec.next_id),
            hub,
            wal,
            files,
            gate: RwLock::new(()),
            map_lsn: AtomicU64::new(0),
            pending_unlink: Mutex::new(Vec::new()),
            checkpointing: Mutex::new(()),
            _lock: lock,
        });
        let store = FileStorage {
            inner: Arc::clone(&inner),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            threads: Mutex::new(vec![committer]),
        };
        // After replay, make the recovered state the new baseline before
        // accepting writes: replayed data synced, and the old segments
        // (possibly ending in a torn entry, which would hide every later
        // one from the next recovery) deleted.
        if needs_checkpoint {
            inner.checkpoint()?;
        }
        tracing::info!(
            recover_ms = recovered.as_millis() as u64,
            checkpoint_ms = (started.elapsed() - recovered).as_millis() as u64,
            checkpointed = needs_checkpoint,
            "opened file storage"
        );
        let weak = Arc::downgrade(&inner);
        let stop = Arc::clone(&store.stop);
        let t = std::thread::Builder::new()
            .name("file-checkpointer".into())
            .spawn(move || {
                checkpoint::find_garbage(&weak, &live, garbage_below);
                checkpoint::checkpointer(weak, stop)
            })?;
        store.threads.lock().push(t);
        Ok(store)
    }

    /// Writes a checkpoint now (normally done in the background).
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.inner.checkpoint()
    }

    fn halt(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        self.inner.wal.stop();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Inner {
    fn get(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.streams
            .read()
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    /// Answers `r` once everything it was based on (up to `lsn`) is durable.
    fn answer<T>(&self, lsn: u64, r: Result<T, StorageError>) -> Result<T, StorageError> {
        self.wal.wait(lsn)?;
        r
    }

    /// A not-found answer, once the removal it reflects is durable.
    fn absent<T>(&self, e: StorageError) -> Result<T, StorageError> {
        self.answer(self.map_lsn.load(Ordering::Acquire), Err(e))
    }
}

/// [`Storage`] methods that refuse to run once the log has failed, then
/// call the [`Inner`] method of the same name.
macro_rules! checked {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                self.inner.wal.check()?;
                self.inner.$name($($arg),*)
            }
        )*
    };
}

impl Storage for FileStorage {
    fn may_block(&self) -> bool {
        true
    }

    /// From the in-memory map: includes soft-deleted streams kept for forks.
    fn stream_count(&self) -> Option<u64> {
        Some(self.inner.streams.read().len() as u64)
    }

    fn gauges(&self) -> Vec<super::Gauge> {
        self.inner.files.gauges()
    }

    checked! {
        fn create(&self, name: &str, req: CreateRequest) -> CreateOutcome;
        fn append(&self, name: &str, req: AppendRequest) -> AppendOutcome;
        fn read(&self, name: &str, req: ReadRequest) -> ReadOutcome;
        fn head(&self, name: &str, now: Millis) -> StreamInfo;
        fn delete(&self, name: &str, now: Millis) -> ();
        fn trim(&self, name: &str, before: Offset, now: Millis) -> TrimOutcome;
        fn sweep_expired(&self, now: Millis) -> usize;
        fn list_streams(&self) -> Vec<(String, StreamMeta)>;
        fn export_stream(&self, name: &str) -> (StreamMeta, Vec<Bytes>);
        fn restore_stream(&self, name: &str, meta: StreamMeta, records: Vec<Bytes>) -> StreamInfo;
    }

    /// At the tail of a stream whose state is committed: from the map,
    /// under the stream's lock, without touching a file.
    fn read_now(&self, name: &str, req: &ReadRequest) -> Option<ReadOutcome> {
        self.inner.wal.check().ok()?;
        self.inner.read_now(name, req)
    }

    fn try_append_staged(&self, name: &str, req: AppendRequest) -> Staging<AppendOutcome> {
        if let Err(e) = self.inner.wal.check() {
            return Staging::Staged(Staged {
                result: Err(e),
                durable: None,
            });
        }
        self.inner.try_append_staged(name, req)
    }

    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.inner.control.put(ns, key, value)
    }

    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        self.inner.control.delete(ns, key)
    }

    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.inner.control.scan(ns)
    }

    fn shutdown(&self) -> Result<(), StorageError> {
        // Punches put off while bytes were lent: by now the answers are
        // written, and a put-off punch is not remembered across a restart.
        self.inner.files.retry_punches();
        let r = self.inner.checkpoint();
        self.halt();
        r
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod pending_tests;
#[cfg(test)]
mod read_now_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod staged_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
