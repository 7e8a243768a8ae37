//! Per-stream data and index files, behind a bounded cache of open handles.
//!
//! Each stream incarnation `id` owns `streams/{id:016x}.dat` (its own records,
//! framed) and `streams/{id:016x}.idx` (the stream position where each own
//! record starts). Both are written with positional writes at offsets derived
//! from the stream's metadata, never synced here: the WAL holds the durable
//! copy until a checkpoint syncs these files. At most `capacity` incarnations
//! keep open handles; the least recently used is closed first.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
// A parking_lot mutex: held only for map bookkeeping, or for an `open(2)`
// of one file pair, never across reads or writes.
use parking_lot::Mutex;

use super::faults::{Faults, Point};
use super::format::{self, DATA_MAGIC, FRAME_HEADER, INDEX_HEADER_LEN, INDEX_MAGIC};
use super::lends::Lends;
use super::pending::{Budget, Pending};
use super::range::{DataFile, MAP_MIN, read_at};
use super::recent::{Allowance, RECENT_BUDGET};
use crate::offset::Offset;
use crate::storage::handle::blocking_io;
use crate::storage::{StorageError, StreamMeta};

/// An open data + index file pair.
pub struct Handles {
    pub data: DataFile,
    pub index: File,
}

/// What a stream keeps to reach its files without the store-wide locks:
/// the append path took the handle cache's and the dirty set's mutexes on
/// every append, contended between the runtime's workers.
#[derive(Default)]
pub struct Slot {
    /// The handles, while the cache (or a reader) keeps them open.
    handles: Weak<Handles>,
    /// The id is in the dirty set since the last [`Files::take_dirty`]
    /// (cleared by the caller when it takes the set).
    pub marked: bool,
    /// Appended frames not in the data file yet ([`super::pending`]).
    pub pending: Pending,
}

struct Cache {
    open: HashMap<u64, (Arc<Handles>, u64)>,
    tick: u64,
}

/// The stream files of one store.
pub struct Files {
    dir: PathBuf,
    capacity: usize,
    cache: Mutex<Cache>,
    /// Incarnations written since the last checkpoint (their files need a sync).
    dirty: Mutex<HashSet<u64>>,
    /// What the open data files may keep of their last records.
    pub(super) allowance: Allowance,
    /// Bytes lent out of the data files' mappings ([`super::lends`]).
    pub(super) lends: Arc<Lends>,
    /// Punches put off because bytes of the file were lent: file offset to
    /// punch to, per id ([`Files::retry_punches`]).
    pub(super) deferred: Mutex<HashMap<u64, u64>>,
    /// Test-only injected failures (shared with the WAL).
    pub faults: Arc<Faults>,
    /// Bytes the streams' buffers hold ([`super::pending`]).
    pub(super) buffered: Budget,
}

impl Files {
    pub fn new(dir: PathBuf, capacity: usize) -> Self {
        Files {
            dir,
            capacity: capacity.max(1),
            cache: Mutex::new(Cache {
                open: HashMap::new(),
                tick: 0,
            }),
            dirty: Mutex::new(HashSet::new()),
            allowance: Allowance::new(RECENT_BUDGET),
            lends: Lends::new(),
            deferred: Mutex::new(HashMap::new()),
            faults: Arc::default(),
            buffered: Budget::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.dat"))
    }

    pub fn index_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.idx"))
    }

    /// Creates (or empties) the files of a new incarnation whose own records
    /// start at `base`.
    pub fn create(&self, id: u64, base: Offset) -> Result<(), StorageError> {
        let data = open_rw(&self.data_path(id), true)?;
        data.write_all_at(&format::header(DATA_MAGIC, &[id, base.seq, base.pos]), 0)?;
        let index = open_rw(&self.index_path(id), true)?;
        index.write_all_at(&format::header(INDEX_MAGIC, &[id]), 0)?;
        self.insert(
            id,
            Arc::new(Handles {
                data: DataFile::new(data, self.allowance.clone(), Arc::clone(&self.lends), id),
                index,
            }),
        );
        self.dirty.lock().insert(id);
        Ok(())
    }

    /// The open handles of incarnation `id`, opening them if needed.
    pub fn get(&self, id: u64) -> Result<Arc<Handles>, StorageError> {
        if let Some(h) = self.cached(id) {
            return Ok(h);
        }
        let handles = Arc::new(Handles {
            data: DataFile::new(
                open_rw(&self.data_path(id), false)?,
                self.allowance.clone(),
                Arc::clone(&self.lends),
                id,
            ),
            index: open_rw(&self.index_path(id), false)?,
        });
        self.insert(id, Arc::clone(&handles));
        Ok(handles)
    }

    /// The handles of `id` if the cache has them open.
    pub(super) fn cached(&self, id: u64) -> Option<Arc<Handles>> {
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        let (h, used) = c.open.get_mut(&id)?;
        *used = tick;
        Some(Arc::clone(h))
    }

    /// The handles of `id` for the stream whose `slot` this is: the slot's,
    /// else the cache's, else opened, unless `open` is false (a caller that
    /// must not block): then `None`.
    pub fn handles(
        &self,
        slot: &mut Slot,
        id: u64,
        open: bool,
    ) -> Result<Option<Arc<Handles>>, StorageError> {
        if let Some(h) = slot.handles.upgrade() {
            return Ok(Some(h));
        }
        let h = match self.cached(id) {
            Some(h) => h,
            None if open => self.get(id)?,
            None => return Ok(None),
        };
        slot.handles = Arc::downgrade(&h);
        Ok(Some(h))
    }

    fn insert(&self, id: u64, h: Arc<Handles>) {
        let mut c = self.cache.lock();
        c.tick += 1;
        let tick = c.tick;
        c.open.insert(id, (h, tick));
        if c.open.len() > self.capacity {
            // O(capacity), but only when a handle is opened past the bound.
            if let Some(&old) = c
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k)
            {
                c.open.remove(&old);
            }
        }
    }

    /// Closes the handles of `id` (before its files are unlinked).
    pub fn forget(&self, id: u64) {
        self.cache.lock().open.remove(&id);
        self.dirty.lock().remove(&id);
    }

    /// Appends `records` as own records `count..` starting at stream
    /// position `at` of an incarnation whose own records start at `base`,
    /// to the data and the index file.
    pub fn append(
        &self,
        id: u64,
        base: Offset,
        count: u64,
        at: u64,
        records: &[Bytes],
    ) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let h = self.get(id)?;
        self.faults.check(Point::DataWrite)?;
        write_frames(&h, format::data_offset(count, at, base.pos), records)?;
        self.dirty.lock().insert(id);
        let mut starts = Vec::with_capacity(records.len());
        let mut pos = at;
        for r in records {
            starts.push(pos);
            pos += r.len() as u64;
        }
        self.write_index(id, count, &starts)
    }

    /// Writes `records` past the tail of the stream whose state is `meta`
    /// (its next own records) to its data file (page cache, no sync), or
    /// buffers them in the stream's `slot` to be written with those around
    /// them ([`super::pending`]); the index entries are written later by
    /// [`Self::write_index`]. `slot` remembers that `id` is in the dirty
    /// set. A failure changes nothing.
    ///
    /// Buffering needs no open file: appends spread over more streams than
    /// the handle cache holds stay off the blocking pool. Writing needs
    /// one; without `open` (a caller that must not block) and none open,
    /// `Ok(false)`, nothing done.
    pub fn write_data(
        &self,
        slot: &mut Slot,
        meta: &StreamMeta,
        records: &[Bytes],
        open: bool,
    ) -> Result<bool, StorageError> {
        let count = meta.tail.seq - meta.base.seq;
        let offset = format::data_offset(count, meta.tail.pos, meta.base.pos);
        let framed: usize = records
            .iter()
            .map(|r| r.len() + FRAME_HEADER as usize)
            .sum();
        if slot.pending.fits(offset, framed, &self.buffered) {
            self.faults.check(Point::DataWrite)?;
            // A file that is open may keep a record these overwrite.
            if let Some(h) = slot.handles.upgrade() {
                h.data.recent.wrote(offset, records);
            }
            slot.pending.push(offset, records, &self.buffered);
        } else {
            let Some(h) = self.handles(slot, meta.id, open)? else {
                return Ok(false);
            };
            self.faults.check(Point::DataWrite)?;
            self.flush(&h, slot)?;
            if slot.pending.fits(offset, framed, &self.buffered) {
                h.data.recent.wrote(offset, records);
                slot.pending.push(offset, records, &self.buffered);
            } else {
                write_frames(&h, offset, records)?;
            }
        }
        if !slot.marked {
            self.dirty.lock().insert(meta.id);
            slot.marked = true;
        }
        Ok(true)
    }

    /// Writes the frames `slot` buffered to the data file behind `h`.
    pub fn flush(&self, h: &Handles, slot: &mut Slot) -> Result<(), StorageError> {
        if slot.pending.from().is_none() {
            return Ok(());
        }
        self.faults.check(Point::DataFlush)?;
        slot.pending.write(&h.data.file)?;
        Ok(())
    }

    /// Writes the start positions of own records `count..` to the index
    /// file of `id`.
    pub fn write_index(&self, id: u64, count: u64, starts: &[u64]) -> Result<(), StorageError> {
        if starts.is_empty() {
            return Ok(());
        }
        let h = self.get(id)?;
        let index: Vec<u8> = starts.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.faults.check(Point::IndexWrite)?;
        h.index.write_all_at(&index, format::index_len(count))?;
        self.dirty.lock().insert(id);
        Ok(())
    }

    /// Loads the record start positions of an incarnation with `count` own
    /// records spanning `[base.pos, tail_pos)`, checking that they are sane.
    pub fn load_index(
        &self,
        id: u64,
        base: Offset,
        count: u64,
        tail_pos: u64,
    ) -> Result<Vec<u64>, StorageError> {
        let h = self.get(id)?;
        blocking_io("read an index file");
        let mut buf = vec![0u8; (8 * count) as usize];
        h.index.read_exact_at(&mut buf, INDEX_HEADER_LEN)?;
        let starts: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let sane = starts.first().is_none_or(|&s| s == base.pos)
            && starts.windows(2).all(|w| w[0] < w[1])
            && starts.last().is_none_or(|&s| s < tail_pos);
        if !sane {
            return Err(StorageError::Corrupt(format!(
                "index file of stream {id:016x} is inconsistent"
            )));
        }
        Ok(starts)
    }

    /// Reads `len` bytes at data-file offset `at` (a piece of one record).
    pub fn read(&self, id: u64, at: u64, len: u64) -> Result<Bytes, StorageError> {
        let h = self.get(id)?;
        if let Some(kept) = h.data.kept(at, len) {
            return Ok(kept);
        }
        blocking_io("read a stream file");
        Ok(h.data.read_bytes(at, len as usize)?)
    }

    /// Reads a whole record framed at data-file offset `at` and checks its CRC.
    pub fn read_record(&self, id: u64, at: u64, len: u64) -> Result<Bytes, StorageError> {
        let h = self.get(id)?;
        if let Some(kept) = h.data.kept(at + FRAME_HEADER, len) {
            return Ok(kept);
        }
        blocking_io("read a stream file");
        let buf = h.data.read_bytes(at, (len + FRAME_HEADER) as usize)?;
        record_payload(id, at, len, buf)
    }

    /// [`Self::read`] and [`Self::read_record`] (`whole`) without waiting:
    /// `Ok(None)` unless the file is open and its kept last record
    /// ([`super::recent`]) or the page cache holds the whole range
    /// (`preadv2` with `RWF_NOWAIT`). Other ranges that `read` would map
    /// are left to it.
    pub fn read_cached(
        &self,
        id: u64,
        at: u64,
        len: u64,
        whole: bool,
    ) -> Result<Option<Bytes>, StorageError> {
        let framed = len + if whole { FRAME_HEADER } else { 0 };
        let Some(h) = self.cached(id) else {
            return Ok(None);
        };
        let payload = if whole { at + FRAME_HEADER } else { at };
        if let Some(kept) = h.data.kept(payload, len) {
            return Ok(Some(kept));
        }
        if framed as usize >= MAP_MIN {
            return Ok(None);
        }
        let Some(buf) = read_at(&h.data.file, at, framed as usize, true)? else {
            return Ok(None);
        };
        let buf = Bytes::from(buf);
        if whole {
            return record_payload(id, at, len, buf).map(Some);
        }
        Ok(Some(buf))
    }

    /// Records that the files of `id` need a sync at the next checkpoint.
    pub fn mark_dirty(&self, id: u64) {
        self.dirty.lock().insert(id);
    }

    /// Takes the set of incarnations written since the last call.
    pub fn take_dirty(&self) -> HashSet<u64> {
        std::mem::take(&mut *self.dirty.lock())
    }

    /// Makes the files of every id in `ids` durable: one by one for a few,
    /// with a single `syncfs(2)` of the file system when there are many (a
    /// checkpoint after creating thousands of streams would otherwise pay
    /// two `fdatasync` per stream).
    pub fn sync_many(&self, ids: &[u64]) -> Result<(), StorageError> {
        const SYNCFS_ABOVE: usize = 32;
        if ids.len() > SYNCFS_ABOVE {
            blocking_io("syncfs");
            let dir = File::open(&self.dir)?;
            // SAFETY: `dir` is an open descriptor for the whole call.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } == 0 {
                return Ok(());
            }
            // Fall back to per-file syncs if syncfs is refused.
        }
        for id in ids {
            self.sync(*id)?;
        }
        Ok(())
    }

    /// Makes the files of `id` durable.
    pub fn sync(&self, id: u64) -> Result<(), StorageError> {
        let h = self.get(id)?;
        blocking_io("fsync a stream file");
        h.data.sync_data()?;
        h.index.sync_data()?;
        Ok(())
    }

    /// Removes the files of `id` (missing files are fine).
    pub fn unlink(&self, id: u64) -> Result<(), StorageError> {
        self.forget(id);
        for p in [self.data_path(id), self.index_path(id)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Cuts the files of `id` to `count` own records spanning `bytes`, after
    /// checking that they hold at least that much (recovery).
    pub fn truncate(
        &self,
        id: u64,
        base: Offset,
        count: u64,
        bytes: u64,
    ) -> Result<(), StorageError> {
        let h = self
            .get(id)
            .map_err(|e| StorageError::Corrupt(format!("files of stream {id:016x}: {e}")))?;
        let mut head = vec![0u8; format::DATA_HEADER_LEN as usize];
        h.data.read_exact_at(&mut head, 0)?;
        let words = format::check_header(&head, DATA_MAGIC, 3).map_err(StorageError::Corrupt)?;
        if words != [id, base.seq, base.pos] {
            return Err(StorageError::Corrupt(format!(
                "data file {id:016x} belongs to another stream"
            )));
        }
        let (dlen, ilen) = (format::data_len(count, bytes), format::index_len(count));
        if h.data.metadata()?.len() < dlen || h.index.metadata()?.len() < ilen {
            return Err(StorageError::Corrupt(format!(
                "files of stream {id:016x} are shorter than the checkpoint says"
            )));
        }
        // Only files that ran ahead of the log need cutting (and syncing);
        // after a clean stop none do, so a restart touches no file contents.
        let mut cut = false;
        if h.data.metadata()?.len() > dlen {
            h.data.set_len(dlen)?;
            cut = true;
        }
        if h.index.metadata()?.len() > ilen {
            h.index.set_len(ilen)?;
            cut = true;
        }
        if cut {
            self.dirty.lock().insert(id);
        }
        Ok(())
    }

    /// Ids of every incarnation with a file in the directory.
    pub fn list(&self) -> Result<HashSet<u64>, StorageError> {
        blocking_io("list the stream files");
        let mut ids = HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name
                .strip_suffix(".dat")
                .or_else(|| name.strip_suffix(".idx"))
                && let Ok(id) = u64::from_str_radix(stem, 16)
            {
                ids.insert(id);
            }
        }
        Ok(ids)
    }
}

/// Writes `records`, framed, at byte `offset` of the data file behind `h`.
fn write_frames(h: &Handles, offset: u64, records: &[Bytes]) -> Result<(), StorageError> {
    let bytes: usize = records
        .iter()
        .map(|r| r.len() + FRAME_HEADER as usize)
        .sum();
    let mut data = Vec::with_capacity(bytes);
    for r in records {
        data.extend_from_slice(&format::frame_header(r));
        data.extend_from_slice(r);
    }
    h.data.write_all_at(&data, offset)?;
    h.data.wrote(offset, records);
    Ok(())
}

/// The payload of the record of `len` bytes framed in `buf`, read at `at`
/// of the data file of `id`, once its checksum holds.
fn record_payload(id: u64, at: u64, len: u64, buf: Bytes) -> Result<Bytes, StorageError> {
    match format::get_frame(&buf) {
        Ok((payload, _)) if payload.len() as u64 == len => Ok(buf.slice(FRAME_HEADER as usize..)),
        _ => Err(bad_checksum(id, at)),
    }
}

/// The error of a record that fails its checksum.
pub fn bad_checksum(id: u64, at: u64) -> StorageError {
    StorageError::Corrupt(format!(
        "record at byte {at} of stream file {id:016x} fails its checksum"
    ))
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    blocking_io("open a stream file");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
}
