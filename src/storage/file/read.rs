//! Reading: a stream's view through its fork chain, out of the data files
//! and the in-memory index; `read`, `head`, `list_streams` and
//! `export_stream`. Every answer waits until what it reflects is durable.
//!
//! The fork chain is walked through an [`Access`]: a reader locks one
//! stream at a time; a transaction ([`super::write`]) reads the streams it
//! already holds through their guards (resolving a fork's base under the
//! map's write lock, with the source locked).

use std::cell::Cell;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::range::MAP_MIN;
use super::{Durable, Guard, Inner, Stream, StreamRef, files, format, recover};
use crate::offset::Offset;
use crate::storage::model::{self, StreamMeta};
use crate::storage::view::{self, Budget, Layout};
use crate::storage::{Millis, ReadOutcome, ReadRequest, StorageError, StreamInfo};

/// How a read reaches the streams of a fork chain.
pub(super) trait Access {
    /// The stream named `name` (a fork source).
    fn source(&self, name: &str) -> Result<StreamRef, StorageError>;
    /// Runs `f` on the state of `stream`, locked for the call.
    fn with<R>(&self, stream: &StreamRef, f: impl FnOnce(&mut Stream) -> R) -> R;
}

/// A reader's [`Access`]: the map's read lock and each stream's lock, briefly.
pub(super) struct Locking<'a>(pub &'a Inner);

impl Access for Locking<'_> {
    fn source(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.0.get(name)
    }

    fn with<R>(&self, stream: &StreamRef, f: impl FnOnce(&mut Stream) -> R) -> R {
        f(&mut stream.lock())
    }
}

/// A planned piece of a read: file offset, length, whole record?
type Piece = (u64, u64, bool);

/// Most pieces a poll reads one by one rather than as one span.
const FEW: usize = 8;

/// Whether a read may wait for the disk.
#[derive(Clone, Copy)]
pub(super) enum Io<'a> {
    Wait,
    /// Only from memory and the page cache ([`Inner::read_now`]): a step
    /// that would wait raises the flag and fails.
    Now(&'a Cell<bool>),
}

impl Io<'_> {
    fn would_block(self) -> StorageError {
        if let Io::Now(flag) = self {
            flag.set(true);
        }
        StorageError::Unavailable("the read would wait for the disk".into())
    }
}

impl Inner {
    /// The stream's record starts, loaded from its index file on first use
    /// (blocking I/O: never on the staged append path).
    pub(super) fn index<'s>(
        &self,
        meta: &StreamMeta,
        starts: &'s mut Option<Vec<u64>>,
    ) -> Result<&'s mut Vec<u64>, StorageError> {
        if starts.is_none() {
            let (count, _) = recover::own(meta);
            *starts = Some(
                self.files
                    .load_index(meta.id, meta.base, count, meta.tail.pos)?,
            );
        }
        Ok(starts.as_mut().expect("loaded above"))
    }

    /// [`Self::index`], unless it is not loaded yet and `io` may not wait.
    fn index_with<'s>(
        &self,
        meta: &StreamMeta,
        starts: &'s mut Option<Vec<u64>>,
        io: Io,
    ) -> Result<&'s mut Vec<u64>, StorageError> {
        if starts.is_none() && matches!(io, Io::Now(_)) {
            return Err(io.would_block());
        }
        self.index(meta, starts)
    }

    /// The stream named `name`, locked, unless it is absent (answered once
    /// the removal it reflects is durable).
    pub(super) fn find(&self, name: &str) -> Result<Guard, StorageError> {
        let stream = match self.get(name) {
            Ok(s) => s,
            Err(e) => return self.absent(e),
        };
        let s = stream.lock_arc();
        if s.removed {
            drop(s);
            return self.absent(StorageError::NotFound);
        }
        Ok(s)
    }

    /// Writes the frames appends to `s` buffered ([`super::pending`]) to
    /// its data file (export and the checkpoint read the file itself).
    pub(super) fn flush_pending(&self, s: &mut Stream) -> Result<(), StorageError> {
        if s.slot.pending.from().is_none() {
            return Ok(());
        }
        let h = self
            .files
            .handles(&mut s.slot, s.meta.id, true)?
            .ok_or_else(|| StorageError::Io(std::io::Error::other("no handles")))?;
        self.files.flush(&h, &mut s.slot)
    }

    /// Reads `[from, limit)` of the view of `stream`, walking up the fork
    /// chain for inherited positions. `from` has been validated.
    fn read_view(
        &self,
        access: &impl Access,
        stream: &StreamRef,
        from: Offset,
        limit: u64,
        budget: Budget,
        io: Io,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        enum Step {
            Up(String, u64),
            /// File pieces, then the bytes of buffered ones.
            Read(u64, Vec<Piece>, Offset, Vec<Bytes>),
        }
        let step = access.with(stream, |s| -> Result<Step, StorageError> {
            if from.pos < s.meta.base.pos {
                let link = s.meta.fork.as_ref().ok_or_else(|| {
                    StorageError::Corrupt(
                        "position before base of a stream that is not a fork".into(),
                    )
                })?;
                return Ok(Step::Up(link.source.clone(), limit.min(s.meta.base.pos)));
            }
            let starts: &[u64] = self.index_with(&s.meta, &mut s.starts, io)?;
            let layout = Layout {
                base: s.meta.base,
                tail: s.meta.tail,
                index: starts,
            };
            let (pieces, next) = layout.plan(from, limit, budget);
            // Plan the file reads under the lock, do them without it: bytes
            // below the tail never change.
            let mut reads: Vec<Piece> = pieces
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
            // Pieces of frames that appends buffered ([`super::pending`])
            // are copied from the buffer: the file does not have them yet.
            // A buffer starts where a frame does, so each piece is wholly
            // in the file or in the buffer, and the file's come first.
            let split = match s.slot.pending.from() {
                Some(from) => reads.partition_point(|&(at, _, _)| at < from),
                None => reads.len(),
            };
            let buffered = reads[split..]
                .iter()
                .map(|&(at, len, whole)| {
                    let payload = at + if whole { format::FRAME_HEADER } else { 0 };
                    s.slot.pending.copy(payload, len).ok_or_else(|| {
                        StorageError::Corrupt(format!(
                            "stream {:016x}: a read past its buffered frames",
                            s.meta.id
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            reads.truncate(split);
            Ok(Step::Read(s.meta.id, reads, next, buffered))
        })?;
        match step {
            Step::Up(source, limit) => {
                let source = access.source(&source)?;
                self.read_view(access, &source, from, limit, budget, io)
            }
            Step::Read(id, reads, next, buffered) => {
                let mut chunks = self.read_pieces(id, &reads, io)?;
                chunks.extend(buffered);
                Ok((chunks, next))
            }
        }
    }

    /// Reads planned pieces `(file offset, length, whole record?)` of one
    /// data file. The pieces of one read are adjacent in the file (frames
    /// follow each other), so they are read with one `pread` (or mapping)
    /// of the whole span and sliced, each whole record's checksum checked;
    /// a read of 64 KiB of 100-byte records was 650 `pread`s (~520 µs,
    /// `benches/storage.rs`). Pieces that are not adjacent (never planned
    /// today) are read one by one.
    fn read_pieces(&self, id: u64, reads: &[Piece], io: Io) -> Result<Vec<Bytes>, StorageError> {
        let end_of =
            |&(at, len, whole): &Piece| at + len + if whole { format::FRAME_HEADER } else { 0 };
        let one = |&(at, len, whole): &Piece| match io {
            Io::Now(_) => self
                .files
                .read_cached(id, at, len, whole)?
                .ok_or_else(|| io.would_block()),
            Io::Wait if whole => self.files.read_record(id, at, len),
            Io::Wait => self.files.read(id, at, len),
        };
        let adjacent = reads.windows(2).all(|w| end_of(&w[0]) == w[1].0);
        let (Some(first), Some(last), true) = (reads.first(), reads.last(), adjacent) else {
            return reads.iter().map(one).collect();
        };
        if reads.len() == 1 {
            return Ok(vec![one(first)?]);
        }
        let span_len = end_of(last) - first.0;
        if matches!(io, Io::Now(_)) && span_len >= MAP_MIN as u64 && reads.len() <= FEW {
            // A poll does not map: a few pieces one by one, each from the
            // page cache or the file's kept last record (the large one).
            return reads.iter().map(one).collect();
        }
        let span = one(&(first.0, span_len, false))?;
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
                    _ => Err(files::bad_checksum(id, at)),
                }
            })
            .collect()
    }

    /// Checks that `from` is a position of the view of `stream`.
    fn validate_view(
        &self,
        access: &impl Access,
        stream: &StreamRef,
        from: Offset,
        whole: bool,
        io: Io,
    ) -> Result<(), StorageError> {
        let up = access.with(stream, |s| -> Result<Option<String>, StorageError> {
            if from.pos < s.meta.base.pos {
                let link = s.meta.fork.as_ref().ok_or(StorageError::InvalidOffset)?;
                return Ok(Some(link.source.clone()));
            }
            let layout = Layout {
                base: s.meta.base,
                tail: s.meta.tail,
                index: self.index_with(&s.meta, &mut s.starts, io)?.as_slice(),
            };
            layout.validate(from, whole).map(|()| None)
        })?;
        match up {
            Some(source) => {
                let source = access.source(&source)?;
                self.validate_view(access, &source, from, whole, io)
            }
            None => Ok(()),
        }
    }

    /// The start of the record of the view of `stream` that holds `at`, a
    /// position the stream minted (checked); the tail is its own boundary.
    pub(super) fn record_boundary(
        &self,
        access: &impl Access,
        stream: &StreamRef,
        at: Offset,
    ) -> Result<Offset, StorageError> {
        let up = access.with(
            stream,
            |s| -> Result<Result<Offset, String>, StorageError> {
                if at.pos >= s.meta.tail.pos {
                    return if at == s.meta.tail {
                        Ok(Ok(at))
                    } else {
                        Err(StorageError::InvalidOffset)
                    };
                }
                if at.pos < s.meta.base.pos {
                    let link = s.meta.fork.as_ref().ok_or(StorageError::InvalidOffset)?;
                    return Ok(Err(link.source.clone()));
                }
                let starts = self.index(&s.meta, &mut s.starts)?.as_slice();
                let layout = Layout {
                    base: s.meta.base,
                    tail: s.meta.tail,
                    index: starts,
                };
                layout.validate(at, false)?;
                let i = view::RecordIndex::locate(starts, at.pos);
                Ok(Ok(Offset::new(s.meta.base.seq + i, starts[i as usize])))
            },
        )?;
        match up {
            Ok(boundary) => Ok(boundary),
            Err(source) => {
                let source = access.source(&source)?;
                self.record_boundary(access, &source, at)
            }
        }
    }

    /// Resolves a fork request against its source (`meta`, the state of
    /// `source` as the caller holds it): the base offset where the fork's
    /// own data starts.
    pub(super) fn resolve_fork_base(
        &self,
        access: &impl Access,
        source: &StreamRef,
        meta: &StreamMeta,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        let (tail, json) = (meta.tail, model::is_json(&meta.content_type));
        if anchor.pos > tail.pos {
            return Err(StorageError::ForkOffsetBeyondTail);
        }
        self.validate_view(access, source, anchor, json, Io::Wait)?;
        let read = |at, budget| self.read_view(access, source, at, tail.pos, budget, Io::Wait);
        view::fork_base(read, anchor, tail, json, sub_offset)
    }

    pub(super) fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        let s = self.find(name)?;
        let seen = s.last_lsn;
        let r = self.read_from(s, &req, Io::Wait, None);
        self.answer(seen, r)
    }

    /// [`Self::read`] without blocking: only when everything the stream's
    /// state reflects is committed, or an append's commit is pending and
    /// the state before it is known ([`Durable`]: answered from that), its
    /// index is loaded and the bytes are in the page cache (a live
    /// reader's poll, at the tail or just behind it). `None` otherwise,
    /// and for errors (which `read` then answers); also while an append
    /// holds the stream (it may be in a `pwrite`).
    pub(super) fn read_now(&self, name: &str, req: &ReadRequest) -> Option<ReadOutcome> {
        let s = self.get(name).ok()?.try_lock_arc()?;
        if s.removed {
            return None;
        }
        let before = match s.durable {
            _ if self.wal.is_committed(s.last_lsn) => None,
            Some(d) if !self.wal.is_committed(d.before) => Some(d),
            _ => return None,
        };
        let blocked = Cell::new(false);
        let r = self.read_from(s, req, Io::Now(&blocked), before);
        if blocked.get() {
            return None;
        }
        r.ok()
    }

    /// The read of `s` (locked, present), not yet waiting for what it
    /// reflects to be durable; as the stream was before a pending append
    /// with `before`.
    fn read_from(
        &self,
        mut s: Guard,
        req: &ReadRequest,
        io: Io,
        before: Option<Durable>,
    ) -> Result<ReadOutcome, StorageError> {
        s.meta.check_visible(req.now)?;
        // Kept in memory only (and in the next checkpoint): a crash may
        // forget a read's TTL renewal, never data.
        s.meta.last_access = req.now;
        let (mut info, json) = (s.meta.info(), model::is_json(&s.meta.content_type));
        if let Some(d) = before {
            info.tail = d.tail;
            info.closed = d.closed;
        }
        let stream = std::sync::Arc::clone(parking_lot::ArcMutexGuard::mutex(&s));
        drop(s);
        let access = Locking(self);
        let result = (|| {
            let (start, check) = info.read_start(req.from)?;
            if check {
                self.validate_view(&access, &stream, start, json, io)?;
            }
            let read = |at, budget| self.read_view(&access, &stream, at, info.tail.pos, budget, io);
            match view::read_stitched(read, start, info.tail, json, req.max_bytes, req.lend_bytes) {
                Ok((chunks, next)) => Ok((start, chunks, next)),
                // A trim that moved past `start` while the file was read
                // (reads plan under the lock and read without it) may
                // have punched the bytes: the reader fell behind it.
                Err(e) => match stream.lock().meta.earliest() {
                    earliest if earliest.pos > start.pos => Err(StorageError::Trimmed { earliest }),
                    _ => Err(e),
                },
            }
        })();
        result.map(|(start, chunks, next)| ReadOutcome {
            info,
            start,
            chunks,
            next,
        })
    }

    pub(super) fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        let s = self.find(name)?;
        let seen = s.last_lsn;
        let r = s.meta.check_visible(now).map(|()| s.meta.info());
        drop(s);
        self.answer(seen, r)
    }

    /// Every stream's metadata, once everything it reflects is durable.
    pub(super) fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
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
    pub(super) fn export_stream(
        &self,
        name: &str,
    ) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        let (meta, starts, seen) = {
            let mut g = self.find(name)?;
            let s = &mut *g;
            self.flush_pending(s)?;
            let starts = self.index(&s.meta, &mut s.starts)?.clone();
            (s.meta.clone(), starts, s.last_lsn)
        };
        // Bytes below the tail never change; read them without the lock.
        // Records before the trim point are gone (their space punched).
        let first = starts.partition_point(|&p| p < meta.own_start().pos);
        let records = (first..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).copied().unwrap_or(meta.tail.pos);
                let at = format::data_offset(i as u64, starts[i], meta.base.pos);
                self.files.read_record(meta.id, at, end - starts[i])
            })
            .collect::<Result<Vec<_>, _>>();
        self.answer(seen, records.map(|r| (meta, r)))
    }
}
