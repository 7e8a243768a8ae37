//! The append-log file backend: a shared, group-committed write-ahead log,
//! per-stream data files, and periodic checkpoints.
//!
//! # Write path
//!
//! Under the stream's lock an append is planned with
//! [`model::plan_append`], its records are written (page cache, no sync) past
//! the stream's tail in its data file, and *one* WAL entry carrying the
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
//! Wakes are sent after that wait.
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
//! chains child before source) → WAL queue / file-handle cache (leaves). All
//! are `parking_lot` locks: every caller is a blocking thread, and no lock
//! but a stream's is held across file I/O.

pub mod control;
mod faults;
mod files;
pub mod format;
mod recover;
mod wal;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{ArcMutexGuard, Condvar, Mutex, RawMutex, RwLock};

use self::files::Files;
use self::format::Op;
use self::wal::Wal;
use super::model::{self, AppendPlan, ForkLink, StreamMeta};
use super::view::{self, Budget, Layout};
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkSpec, Millis, ReadOutcome,
    ReadRequest, Staged, Staging, Storage, StorageError, StreamInfo,
};
use crate::config::SyncMode;
use crate::notify::{Appended, Wake, WakeHub};
use crate::offset::{Offset, ReadFrom};

/// WAL room claimed for an entry's metadata (stream and fork-source
/// metadata, producer states); entries carrying data claim their size too.
const METADATA_ROOM: u64 = 64 << 10;
/// Open file-handle pairs kept at most.
const HANDLE_CACHE: usize = 256;
/// Checkpoint as soon as the current WAL segment is this large.
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Otherwise checkpoint this often when anything changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

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
    /// Set (under the lock) when the stream leaves the map: a caller that
    /// found it just before must not write to it.
    removed: bool,
}

impl Stream {
    fn own(&self) -> (u64, u64) {
        recover::own(&self.meta)
    }
}

type StreamRef = Arc<Mutex<Stream>>;
type Streams = HashMap<String, StreamRef>;
type Guard = ArcMutexGuard<RawMutex, Stream>;
/// A stream's index entries not yet in its index file: the stream, its
/// incarnation, the first own record they describe, and the starts.
type Unindexed = (StreamRef, u64, u64, Vec<u64>);

/// The changes of one multi-stream operation, applied in memory under the
/// locks it holds and queued as one WAL entry.
#[derive(Default)]
struct Tx {
    held: Vec<Guard>,
    /// Indexes into `held` of streams whose metadata changed.
    changed: Vec<usize>,
    ops: Vec<Op>,
    records: Vec<Bytes>,
    wakes: Vec<(String, Wake)>,
    unlink: Vec<u64>,
    /// An earlier entry this operation queued that callers must also wait for.
    after: u64,
    /// Room in the WAL for this operation's entry, claimed before any change.
    claim: Option<wal::Claim>,
}

impl Tx {
    /// Locks `s` for the rest of the operation (once, however often asked).
    fn lock(&mut self, s: &StreamRef) -> usize {
        if let Some(i) = self
            .held
            .iter()
            .position(|g| Arc::ptr_eq(ArcMutexGuard::mutex(g), s))
        {
            return i;
        }
        self.held.push(s.lock_arc());
        self.held.len() - 1
    }

    fn change(&mut self, i: usize) {
        if !self.changed.contains(&i) {
            self.changed.push(i);
        }
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

/// An append decided and queued: answer `result` once `lsn` is committed,
/// then send `wake`.
struct StagedAppend {
    lsn: u64,
    result: Result<AppendOutcome, StorageError>,
    wake: Option<Wake>,
}

/// What a create decided.
enum Created {
    New(Box<Stream>),
    Exists(StreamInfo),
}

fn wake_of(meta: &StreamMeta) -> Wake {
    Wake::bare(meta.tail, meta.closed)
}

struct Inner {
    root: PathBuf,
    wal_dir: PathBuf,
    streams: RwLock<HashMap<String, StreamRef>>,
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
        lock.try_lock().map_err(|_| {
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
                find_garbage(&weak, &live, garbage_below);
                checkpointer(weak, stop)
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

/// Queues for deletion (at the next checkpoint) the files of incarnations
/// below `below` that are not in `live` (the streams recovery found).
fn find_garbage(inner: &Weak<Inner>, live: &HashSet<u64>, below: u64) {
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

fn checkpointer(inner: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>) {
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
    fn get(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.streams
            .read()
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    /// Finds a fork source: in `map` when the caller holds the map's lock,
    /// else by taking it.
    fn lookup(&self, map: Option<&Streams>, name: &str) -> Result<StreamRef, StorageError> {
        match map {
            Some(m) => m.get(name).cloned().ok_or(StorageError::NotFound),
            None => self.get(name),
        }
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

    fn submit(&self, ops: &[Op], records: &[Bytes]) -> u64 {
        self.wal.submit(&format::encode_entry(ops, records))
    }

    /// Queues a transaction's entry and releases its locks; returns the LSN
    /// to wait for and the wakes to send after it.
    fn commit(&self, mut tx: Tx) -> (u64, Vec<(String, Wake)>) {
        let mut ops = std::mem::take(&mut tx.ops);
        // Metadata puts of surviving, changed streams go after the removals.
        for &i in &tx.changed {
            let g = &tx.held[i];
            if !g.removed {
                ops.insert(
                    0,
                    Op::Put {
                        name: g.name.clone(),
                        meta: Box::new(g.meta.clone()),
                        records: 0,
                    },
                );
            }
        }
        self.pending_unlink.lock().extend(tx.unlink.drain(..));
        if ops.is_empty() {
            return (tx.seen_lsn(), tx.wakes);
        }
        // Puts with records (a new stream) must come after the record-less
        // ones so that records line up in order; move those to the end.
        ops.sort_by_key(|op| matches!(op, Op::Put { records, .. } if *records > 0));
        let lsn = self.submit(&ops, &tx.records);
        // Accounted as used by the submit: the claim is no longer needed.
        drop(tx.claim.take());
        for g in &mut tx.held {
            g.last_lsn = lsn;
        }
        if ops.iter().any(|op| {
            matches!(op, Op::Remove { .. }) || matches!(op, Op::Put { records, .. } if *records > 0)
        }) {
            self.map_lsn.fetch_max(lsn, Ordering::AcqRel);
        }
        (lsn, tx.wakes)
    }

    /// Removes `name` (refcount zero) and releases its source, cascading
    /// through hidden sources, as [`MemoryStorage`](super::memory) does.
    fn remove_cascade(
        &self,
        streams: &mut HashMap<String, StreamRef>,
        tx: &mut Tx,
        name: &str,
        now: Millis,
    ) {
        let mut next = Some(name.to_string());
        while let Some(name) = next.take() {
            let Some(stream) = streams.remove(&name) else {
                break;
            };
            let i = tx.lock(&stream);
            let link = {
                let s = &mut tx.held[i];
                s.removed = true;
                let (id, w, link) = (s.meta.id, wake_of(&s.meta), s.meta.fork.clone());
                tx.ops.push(Op::Remove {
                    name: name.clone(),
                    id,
                });
                tx.unlink.push(id);
                tx.wakes.push((name.clone(), w));
                link
            };
            let Some(link) = link else { break };
            let Some(source) = streams.get(&link.source).cloned() else {
                break;
            };
            let j = tx.lock(&source);
            let src = &mut tx.held[j];
            if src.meta.id != link.source_id {
                break;
            }
            src.meta.refcount = src.meta.refcount.saturating_sub(1);
            if src.meta.refcount == 0 && src.meta.is_hidden(now) {
                next = Some(link.source.clone());
            }
            tx.change(j);
        }
    }

    fn ensure_index(&self, s: &mut Stream) -> Result<(), StorageError> {
        if s.starts.is_none() {
            let (count, _) = s.own();
            s.starts =
                Some(
                    self.files
                        .load_index(s.meta.id, s.meta.base, count, s.meta.tail.pos)?,
                );
        }
        Ok(())
    }

    /// Reads `[from, limit)` of the view of `stream`, walking up the fork
    /// chain for inherited positions. `from` has been validated.
    fn read_view(
        &self,
        map: Option<&Streams>,
        stream: &StreamRef,
        from: Offset,
        limit: u64,
        budget: Budget,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        let mut s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or_else(|| {
                StorageError::Corrupt("position before base of a stream that is not a fork".into())
            })?;
            let limit = limit.min(s.meta.base.pos);
            drop(s);
            let source = self.lookup(map, &link.source)?;
            return self.read_view(map, &source, from, limit, budget);
        }
        self.ensure_index(&mut s)?;
        let starts = s.starts.as_deref().unwrap_or_default();
        let layout = Layout {
            base: s.meta.base,
            tail: s.meta.tail,
            index: starts,
        };
        let (pieces, next) = layout.plan(from, limit, budget);
        // Plan the file reads under the lock, do them without it: bytes
        // below the tail never change.
        let reads: Vec<(u64, u64, bool)> = pieces
            .iter()
            .map(|p| {
                let i = p.index as usize;
                let start = starts[i];
                let end = starts.get(i + 1).copied().unwrap_or(s.meta.tail.pos);
                let at = format::data_offset(p.index, start, s.meta.base.pos);
                if p.skip == 0 && p.len == end - start {
                    (at, p.len, true)
                } else {
                    (at + format::FRAME_HEADER + p.skip, p.len, false)
                }
            })
            .collect();
        let id = s.meta.id;
        drop(s);
        Ok((self.read_pieces(id, &reads)?, next))
    }

    /// Reads planned pieces `(file offset, length, whole record?)` of one
    /// data file. The pieces of one read are adjacent in the file (frames
    /// follow each other), so they are read with one `pread` (or mapping)
    /// of the whole span and sliced, each whole record's checksum checked;
    /// a read of 64 KiB of 100-byte records was 650 `pread`s (~520 µs,
    /// `benches/storage.rs`). Pieces that are not adjacent (never planned
    /// today) are read one by one.
    fn read_pieces(&self, id: u64, reads: &[(u64, u64, bool)]) -> Result<Vec<Bytes>, StorageError> {
        let end_of = |&(at, len, whole): &(u64, u64, bool)| {
            at + len + if whole { format::FRAME_HEADER } else { 0 }
        };
        let adjacent = reads.windows(2).all(|w| end_of(&w[0]) == w[1].0);
        let (Some(first), Some(last), true) = (reads.first(), reads.last(), adjacent) else {
            return reads
                .iter()
                .map(|&(at, len, whole)| {
                    if whole {
                        self.files.read_record(id, at, len)
                    } else {
                        self.files.read(id, at, len)
                    }
                })
                .collect();
        };
        if reads.len() == 1 {
            let (at, len, whole) = *first;
            let one = if whole {
                self.files.read_record(id, at, len)?
            } else {
                self.files.read(id, at, len)?
            };
            return Ok(vec![one]);
        }
        let span = self.files.read(id, first.0, end_of(last) - first.0)?;
        reads
            .iter()
            .map(|&(at, len, whole)| {
                let off = (at - first.0) as usize;
                if !whole {
                    return Ok(span.slice(off..off + len as usize));
                }
                let frame = &span[off..off + (format::FRAME_HEADER + len) as usize];
                match format::get_frame(frame) {
                    Ok((payload, _)) if payload.len() as u64 == len => {
                        let start = off + format::FRAME_HEADER as usize;
                        Ok(span.slice(start..start + len as usize))
                    }
                    _ => Err(StorageError::Corrupt(format!(
                        "record at byte {at} of stream file {id:016x} fails its checksum"
                    ))),
                }
            })
            .collect()
    }

    /// Checks that `from` is a position of the view of `stream`.
    fn validate_view(
        &self,
        map: Option<&Streams>,
        stream: &StreamRef,
        from: Offset,
        whole: bool,
    ) -> Result<(), StorageError> {
        let mut s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or(StorageError::InvalidOffset)?;
            drop(s);
            let source = self.lookup(map, &link.source)?;
            return self.validate_view(map, &source, from, whole);
        }
        self.ensure_index(&mut s)?;
        let layout = Layout {
            base: s.meta.base,
            tail: s.meta.tail,
            index: s.starts.as_deref().unwrap_or_default(),
        };
        layout.validate(from, whole)
    }

    /// Resolves a fork request against its source: the base offset where
    /// the fork's own data starts. Takes the source's lock only briefly.
    fn resolve_fork_base(
        &self,
        map: &Streams,
        source: &StreamRef,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        let (tail, json) = {
            let s = source.lock();
            (s.meta.tail, model::is_json(&s.meta.content_type))
        };
        if anchor.pos > tail.pos {
            return Err(StorageError::ForkOffsetBeyondTail);
        }
        self.validate_view(Some(map), source, anchor, json)?;
        let read = |at, budget| self.read_view(Some(map), source, at, tail.pos, budget);
        view::fork_base(read, anchor, tail, json, sub_offset)
    }

    /// Validates a fork request and builds the new stream's metadata
    /// (without an id) and records. Changes nothing.
    fn plan_fork(
        &self,
        streams: &HashMap<String, StreamRef>,
        req: &CreateRequest,
        spec: &ForkSpec,
    ) -> Result<(StreamMeta, Vec<Bytes>, StreamRef), StorageError> {
        let source = streams
            .get(&spec.source)
            .cloned()
            .ok_or(StorageError::ForkSourceNotFound)?;
        let (src_id, src_ct, src_expiry, src_tail) = {
            let s = source.lock();
            if s.meta.soft_deleted {
                return Err(StorageError::ForkSourceGone);
            }
            if s.meta.is_expired(req.now) {
                return Err(StorageError::ForkSourceNotFound);
            }
            (
                s.meta.id,
                s.meta.content_type.clone(),
                s.meta.expiry,
                s.meta.tail,
            )
        };
        if let Some(ct) = &req.content_type
            && !model::same_type(ct, &src_ct)
        {
            return Err(StorageError::ContentTypeMismatch { expected: src_ct });
        }
        let anchor = spec.offset.unwrap_or(src_tail);
        let base = self.resolve_fork_base(streams, &source, anchor, spec.sub_offset)?;
        let (expiry, inherited) = model::fork_expiry(src_expiry, req.expiry);
        let records = model::frame_records(model::is_json(&src_ct), &req.body, false)?;
        let mut meta = StreamMeta::new(0, src_ct, expiry, base, req.now);
        meta.expiry_inherited = inherited;
        meta.fork = Some(ForkLink {
            source: spec.source.clone(),
            source_id: src_id,
            anchor,
            sub_offset: spec.sub_offset,
        });
        Ok((meta, records, source))
    }

    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        // Room for the entry (metadata of the stream and a fork source, the
        // initial body) before anything changes: a full disk is a clean 507.
        let estimate = METADATA_ROOM + req.body.len() as u64 * 2 + name.len() as u64 * 2;
        let claim = self.wal.claim(estimate, wal::HEADROOM)?;
        let gate = self.gate.read();
        let mut streams = self.streams.write();
        let mut tx = Tx {
            claim: Some(claim),
            ..Tx::default()
        };
        let r = self.create_locked(&mut streams, &mut tx, name, req);
        let (lsn, wakes) = self.commit(tx);
        let r = r.map(|created| match created {
            Created::New(mut stream) => {
                self.map_lsn.fetch_max(lsn, Ordering::AcqRel);
                stream.last_lsn = lsn;
                let info = stream.meta.info();
                streams.insert(name.to_string(), Arc::new(Mutex::new(*stream)));
                CreateOutcome::Created(info)
            }
            Created::Exists(info) => CreateOutcome::Exists(info),
        });
        drop(streams);
        drop(gate);
        self.deliver(lsn, wakes, r)
    }

    /// Waits for `lsn`, then wakes and answers.
    fn deliver<T>(
        &self,
        lsn: u64,
        wakes: Vec<(String, Wake)>,
        r: Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.wal.wait(lsn)?;
        for (n, w) in wakes {
            self.hub.wake(&n, w);
        }
        r
    }

    /// The decisions and changes of a create, under the map's write lock;
    /// the caller queues `tx` whatever the result.
    fn create_locked(
        &self,
        streams: &mut HashMap<String, StreamRef>,
        tx: &mut Tx,
        name: &str,
        req: CreateRequest,
    ) -> Result<Created, StorageError> {
        let mut replace = false;
        if let Some(existing) = streams.get(name).cloned() {
            let i = tx.lock(&existing);
            let m = &tx.held[i].meta;
            if m.soft_deleted || (m.is_expired(req.now) && m.refcount > 0) {
                return Err(StorageError::PathReserved);
            }
            if !m.is_expired(req.now) {
                return if model::create_matches(m, &req) {
                    Ok(Created::Exists(m.info()))
                } else {
                    Err(StorageError::ConfigMismatch)
                };
            }
            // Expired and unreferenced: it is gone; the name is free again.
            replace = true;
            drop(tx.held.pop());
        }
        if replace {
            // Its own entry, queued first (as the memory backend removes it
            // before looking at a fork source): the cascade may lock the
            // very source the fork is about to read.
            let mut removal = Tx::default();
            self.remove_cascade(streams, &mut removal, name, req.now);
            let (lsn, wakes) = self.commit(removal);
            tx.after = lsn;
            tx.wakes.extend(wakes);
        }
        let planned = match &req.fork {
            Some(spec) => self
                .plan_fork(streams, &req, spec)
                .map(|(m, r, s)| (m, r, Some(s))),
            None => {
                let content_type = req
                    .content_type
                    .clone()
                    .unwrap_or_else(|| model::DEFAULT_CONTENT_TYPE.to_string());
                model::frame_records(model::is_json(&content_type), &req.body, false).map(
                    |records| {
                        let meta = StreamMeta::new(
                            0,
                            content_type,
                            req.expiry.unwrap_or_default(),
                            Offset::ZERO,
                            req.now,
                        );
                        (meta, records, None)
                    },
                )
            }
        };
        let (mut meta, records, source) = planned?;
        meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        meta.tail = model::advance(meta.base, &records);
        meta.closed = req.closed;
        // Files first: if they cannot be written nothing has changed yet.
        let written = self.files.create(meta.id, meta.base).and_then(|()| {
            self.files
                .append(meta.id, meta.base, 0, meta.base.pos, &records)
        });
        if let Err(e) = written {
            tx.unlink.push(meta.id);
            return Err(e);
        }
        if let Some(source) = source {
            // The cascade above may have removed the source after all.
            let src_name = &meta.fork.as_ref().expect("a fork has a link").source;
            if !streams
                .get(src_name)
                .is_some_and(|s| Arc::ptr_eq(s, &source))
            {
                tx.unlink.push(meta.id);
                return Err(StorageError::ForkSourceNotFound);
            }
            let j = tx.lock(&source);
            tx.held[j].meta.refcount += 1;
            tx.change(j);
        }
        let mut starts = Vec::with_capacity(records.len());
        let mut pos = meta.base.pos;
        for r in &records {
            starts.push(pos);
            pos += r.len() as u64;
        }
        tx.ops.push(Op::Put {
            name: name.to_string(),
            meta: Box::new(meta.clone()),
            records: records.len() as u32,
        });
        tx.records = records;
        Ok(Created::New(Box::new(Stream {
            name: name.to_string(),
            meta,
            indexed: starts.len() as u64,
            starts: Some(starts),
            slot: files::Slot::default(),
            last_lsn: 0,
            removed: false,
        })))
    }

    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        let gate = self.gate.read();
        let staged = self.stage_append(name, req);
        drop(gate);
        self.wal.wait(staged.lsn)?;
        if let Some(w) = staged.wake {
            self.hub.wake(name, w);
        }
        staged.result
    }

    /// [`Storage::try_append_staged`]: stages unless a checkpoint holds the
    /// gate; the returned future waits for the group commit without a
    /// thread.
    fn try_append_staged(&self, name: &str, req: AppendRequest) -> Staging<AppendOutcome> {
        let Some(gate) = self.gate.try_read() else {
            return Staging::WouldBlock(req);
        };
        let staged = self.stage_append(name, req);
        drop(gate);
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
    /// sends `wake`. Never waits for the disk.
    fn stage_append(&self, name: &str, req: AppendRequest) -> StagedAppend {
        let absent = |e| StagedAppend {
            lsn: self.map_lsn.load(Ordering::Acquire),
            result: Err(e),
            wake: None,
        };
        let stream = match self.get(name) {
            Ok(s) => s,
            Err(e) => return absent(e),
        };
        let mut s = stream.lock();
        if s.removed {
            return absent(StorageError::NotFound);
        }
        let seen = s.last_lsn;
        let answer = |result| StagedAppend {
            lsn: seen,
            result,
            wake: None,
        };
        if let Err(e) = s.meta.check_visible(req.now) {
            return answer(Err(e));
        }
        let plan = match model::plan_append(&s.meta, &req) {
            Ok(AppendPlan::Write(plan)) => plan,
            Ok(AppendPlan::Duplicate(producer)) => {
                // A retried write still counts as access (kept like a read's
                // renewal). It answers only once what it duplicates is durable.
                s.meta.last_access = req.now;
                let info = s.meta.info();
                return answer(Ok(AppendOutcome::Duplicate { info, producer }));
            }
            Err(e) => return answer(Err(e)),
        };
        let from = s.meta.tail;
        let op = Op::Append(Box::new(format::AppendOp {
            name: name.to_string(),
            id: s.meta.id,
            records: plan.records.len() as u32,
            tail: plan.new_tail,
            last_access: req.now,
            producer: plan.producer.clone(),
            stream_seq: plan.stream_seq.clone(),
            close: plan.close,
            closed_by: if plan.close {
                req.producer.clone()
            } else {
                None
            },
        }));
        let entry = format::encode_entry(std::slice::from_ref(&op), &plan.records);
        // Nothing has changed yet: a failed write of the data file, or a
        // full disk refusing the entry's WAL room, leaves tail, producer
        // state and data as they were (bytes written past the tail are
        // overwritten by the next append).
        let (count, _) = s.own();
        let written = self
            .ensure_index(&mut s)
            .and_then(|()| {
                let s = &mut *s;
                self.files.append_data(
                    &mut s.slot,
                    s.meta.id,
                    s.meta.base,
                    count,
                    s.meta.tail.pos,
                    &plan.records,
                )
            })
            .and_then(|()| self.wal.submit_claimed(&entry, wal::HEADROOM));
        let lsn = match written {
            Ok(lsn) => lsn,
            Err(e) => return answer(Err(e)),
        };
        let mut pos = s.meta.tail.pos;
        if let Some(starts) = s.starts.as_mut() {
            for r in &plan.records {
                starts.push(pos);
                pos += r.len() as u64;
            }
        }
        model::apply_write(&mut s.meta, &plan, req.producer.as_ref(), req.now);
        s.last_lsn = lsn;
        let info = s.meta.info();
        let mut wake = wake_of(&s.meta);
        if !plan.records.is_empty() {
            wake.appended = Some(Appended::new(s.meta.id, from, plan.records.clone()));
        }
        drop(s);
        let producer = plan
            .producer
            .as_ref()
            .map(|(_, st)| (st.epoch, st.last_seq));
        StagedAppend {
            lsn,
            result: Ok(AppendOutcome::Appended { info, producer }),
            wake: Some(wake),
        }
    }

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        let stream = match self.get(name) {
            Ok(s) => s,
            Err(e) => return self.absent(e),
        };
        let (info, json, seen) = {
            let mut s = stream.lock();
            if s.removed {
                drop(s);
                return self.absent(StorageError::NotFound);
            }
            let seen = s.last_lsn;
            if let Err(e) = s.meta.check_visible(req.now) {
                drop(s);
                return self.answer(seen, Err(e));
            }
            // Kept in memory only (and in the next checkpoint): a crash may
            // forget a read's TTL renewal, never data.
            s.meta.last_access = req.now;
            (s.meta.info(), model::is_json(&s.meta.content_type), seen)
        };
        let result = (|| {
            let start = match req.from {
                ReadFrom::Start => Offset::ZERO,
                ReadFrom::Tail => info.tail,
                ReadFrom::At(o) => {
                    if o.pos > info.tail.pos {
                        return Err(StorageError::InvalidOffset);
                    }
                    self.validate_view(None, &stream, o, json)?;
                    o
                }
            };
            let read = |at, budget| self.read_view(None, &stream, at, info.tail.pos, budget);
            let (chunks, next) = view::read_stitched(read, start, info.tail, json, req.max_bytes)?;
            Ok((start, chunks, next))
        })();
        self.answer(seen, result)
            .map(|(start, chunks, next)| ReadOutcome {
                info,
                start,
                chunks,
                next,
            })
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        let stream = match self.get(name) {
            Ok(s) => s,
            Err(e) => return self.absent(e),
        };
        let s = stream.lock();
        if s.removed {
            drop(s);
            return self.absent(StorageError::NotFound);
        }
        let seen = s.last_lsn;
        let r = s.meta.check_visible(now).map(|()| s.meta.info());
        drop(s);
        self.answer(seen, r)
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        // Metadata only, and allowed into the headroom: deletes free space.
        let claim = self.wal.claim(METADATA_ROOM, 0)?;
        let _gate = self.gate.read();
        let mut streams = self.streams.write();
        let Some(stream) = streams.get(name).cloned() else {
            drop(streams);
            drop(_gate);
            return self.absent(StorageError::NotFound);
        };
        let mut tx = Tx {
            claim: Some(claim),
            ..Tx::default()
        };
        let i = tx.lock(&stream);
        let r = tx.held[i].meta.check_visible(now);
        if r.is_ok() {
            if tx.held[i].meta.refcount > 0 {
                tx.held[i].meta.soft_deleted = true;
                let w = wake_of(&tx.held[i].meta);
                tx.wakes.push((name.to_string(), w));
                tx.change(i);
            } else {
                self.remove_cascade(&mut streams, &mut tx, name, now);
            }
        }
        let (lsn, wakes) = self.commit(tx);
        drop(streams);
        drop(_gate);
        self.deliver(lsn, wakes, r)
    }

    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
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
        let _gate = self.gate.read();
        let mut streams = self.streams.write();
        let mut tx = Tx {
            claim: Some(claim),
            ..Tx::default()
        };
        let mut removed = 0;
        for name in expired {
            let still = streams.get(&name).cloned().is_some_and(|s| {
                let i = tx.lock(&s);
                tx.held[i].meta.is_expired(now) && tx.held[i].meta.refcount == 0
            });
            if still {
                self.remove_cascade(&mut streams, &mut tx, &name, now);
                removed += 1;
            }
        }
        let (lsn, wakes) = self.commit(tx);
        drop(streams);
        drop(_gate);
        self.deliver(lsn, wakes, Ok(removed))
    }

    /// Every stream's metadata, once everything it reflects is durable.
    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        let mut seen = self.map_lsn.load(Ordering::Acquire);
        let mut all: Vec<(String, StreamMeta)> = self
            .streams
            .read()
            .iter()
            .map(|(n, s)| {
                let s = s.lock();
                seen = seen.max(s.last_lsn);
                (n.clone(), s.meta.clone())
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        self.answer(seen, Ok(all))
    }

    /// A stream's metadata and own records, read from its data file.
    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        let stream = match self.get(name) {
            Ok(s) => s,
            Err(e) => return self.absent(e),
        };
        let mut s = stream.lock();
        if s.removed {
            drop(s);
            return self.absent(StorageError::NotFound);
        }
        self.ensure_index(&mut s)?;
        let meta = s.meta.clone();
        let starts = s.starts.clone().unwrap_or_default();
        let seen = s.last_lsn;
        drop(s);
        // Bytes below the tail never change; read them without the lock.
        let records = (0..starts.len())
            .map(|i| {
                let start = starts[i];
                let end = starts.get(i + 1).copied().unwrap_or(meta.tail.pos);
                let at = format::data_offset(i as u64, start, meta.base.pos);
                self.files.read_record(meta.id, at, end - start)
            })
            .collect::<Result<Vec<_>, _>>();
        self.answer(seen, records.map(|r| (meta, r)))
    }

    /// Restores a stream as one WAL entry (a `Put` carrying every record and
    /// the whole metadata), exactly like a create.
    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        super::check_restore(&meta, &records)?;
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
        let gate = self.gate.read();
        let mut streams = self.streams.write();
        let mut tx = Tx {
            claim: Some(claim),
            ..Tx::default()
        };
        let r = self.restore_locked(&streams, &mut tx, name, meta, records);
        let (lsn, wakes) = self.commit(tx);
        let r = r.map(|mut stream| {
            self.map_lsn.fetch_max(lsn, Ordering::AcqRel);
            stream.last_lsn = lsn;
            let info = stream.meta.info();
            streams.insert(name.to_string(), Arc::new(Mutex::new(*stream)));
            info
        });
        drop(streams);
        drop(gate);
        self.deliver(lsn, wakes, r)
    }

    fn restore_locked(
        &self,
        streams: &Streams,
        tx: &mut Tx,
        name: &str,
        mut meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<Box<Stream>, StorageError> {
        if streams.contains_key(name) {
            return Err(StorageError::AlreadyExists);
        }
        let source = match &meta.fork {
            Some(link) => {
                let src = streams
                    .get(&link.source)
                    .cloned()
                    .ok_or(StorageError::ForkSourceNotFound)?;
                let j = tx.lock(&src);
                super::check_restore_source(&meta, &tx.held[j].meta)?;
                Some(j)
            }
            None => None,
        };
        meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        meta.refcount = 0;
        // Files first: if they cannot be written nothing has changed yet.
        let written = self.files.create(meta.id, meta.base).and_then(|()| {
            self.files
                .append(meta.id, meta.base, 0, meta.base.pos, &records)
        });
        if let Err(e) = written {
            tx.unlink.push(meta.id);
            return Err(e);
        }
        if let Some(j) = source {
            tx.held[j].meta.refcount += 1;
            if let Some(link) = meta.fork.as_mut() {
                link.source_id = tx.held[j].meta.id;
            }
            tx.change(j);
        }
        let mut starts = Vec::with_capacity(records.len());
        let mut pos = meta.base.pos;
        for r in &records {
            starts.push(pos);
            pos += r.len() as u64;
        }
        tx.wakes.push((name.to_string(), wake_of(&meta)));
        tx.ops.push(Op::Put {
            name: name.to_string(),
            meta: Box::new(meta.clone()),
            records: records.len() as u32,
        });
        tx.records = records;
        Ok(Box::new(Stream {
            name: name.to_string(),
            meta,
            indexed: starts.len() as u64,
            starts: Some(starts),
            slot: files::Slot::default(),
            last_lsn: 0,
            removed: false,
        }))
    }

    /// See the module docs: cut, sync stream files, write the snapshot,
    /// then delete what it makes unnecessary.
    fn checkpoint(&self) -> Result<(), StorageError> {
        let _one = self.checkpointing.lock();
        self.wal.check()?;
        let mut unindexed = Vec::new();
        let (snapshot, mut dirty, unlink) = {
            let _gate = self.gate.write();
            self.wal.wait(self.wal.last_submitted())?;
            let map = self.streams.read();
            let mut streams = Vec::with_capacity(map.len());
            for (n, s) in map.iter() {
                let mut g = s.lock();
                // The dirty set is taken below, in this same cut.
                g.slot.marked = false;
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
            .write_indexes(unindexed)
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

impl Storage for FileStorage {
    fn may_block(&self) -> bool {
        true
    }

    /// From the in-memory map: includes soft-deleted streams kept for forks.
    fn stream_count(&self) -> Option<u64> {
        Some(self.inner.streams.read().len() as u64)
    }

    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        self.inner.wal.check()?;
        self.inner.create(name, req)
    }

    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        self.inner.wal.check()?;
        self.inner.append(name, req)
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

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        self.inner.wal.check()?;
        self.inner.read(name, req)
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        self.inner.wal.check()?;
        self.inner.head(name, now)
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        self.inner.wal.check()?;
        self.inner.delete(name, now)
    }

    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        self.inner.wal.check()?;
        self.inner.sweep_expired(now)
    }

    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        self.inner.wal.check()?;
        self.inner.list_streams()
    }

    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        self.inner.wal.check()?;
        self.inner.export_stream(name)
    }

    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        self.inner.wal.check()?;
        self.inner.restore_stream(name, meta, records)
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
        let r = self.inner.checkpoint();
        self.halt();
        r
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
