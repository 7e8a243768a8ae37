//! Reading a stream's view, through its fork chain, out of a table of
//! records keyed by `(stream id, start position)`: the shape shared by the
//! acid (redb) and PostgreSQL backends' reads, and by fork resolution in
//! every [`Txn`](crate::storage::txn::Txn) (the default
//! [`Txn::fork_base`](crate::storage::txn::Txn::fork_base), which the
//! memory backend's transaction uses too, over the streams it locked).
//!
//! A backend supplies two things: [`Metas`] (a stream's metadata by name, to
//! walk up to fork sources) and [`Records`] (the own records one read step
//! touches, starting at the record that contains the read position, fed
//! through a [`Collect`] that checks they are contiguous). [`Chain`] does the
//! rest with [`Layout`]'s position arithmetic, exactly as the memory backend.

use bytes::Bytes;

use crate::offset::Offset;
use crate::storage::StorageError;
use crate::storage::model::{self, StreamMeta};
use crate::storage::view::{self, Budget, Layout, RecordIndex};

/// Where stream metadata comes from (a committed view, or a write
/// transaction's view including its own uncommitted changes).
pub trait Metas {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError>;
}

/// Where a stream's own records come from.
pub trait Records {
    /// Feeds `rows` the own records of [`Collect::meta`] that its step can
    /// touch, in position order from the record containing
    /// [`Collect::from`], until [`Collect::push`] answers false or the rows
    /// run out. Called only when [`Collect::wanted`].
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError>;
}

/// The own records of one stream that one read step touches, plus the start
/// of the record after the last one (its end, records being contiguous).
pub struct Window {
    /// Own-record index of `records[0]`.
    first: u64,
    /// Number of own records of the stream.
    count: u64,
    /// `starts[k]` is where `records[k]` starts; one extra entry at the end.
    starts: Vec<u64>,
    records: Vec<Bytes>,
}

impl RecordIndex for Window {
    fn count(&self) -> u64 {
        self.count
    }

    fn start(&self, i: u64) -> u64 {
        let k = i.saturating_sub(self.first) as usize;
        debug_assert!(
            i >= self.first && k < self.starts.len(),
            "record {i} outside the fetched window"
        );
        self.starts
            .get(k)
            .or(self.starts.last())
            .copied()
            .unwrap_or(0)
    }

    fn locate(&self, pos: u64) -> u64 {
        self.first + (self.starts.partition_point(|&s| s <= pos).max(1) - 1) as u64
    }
}

fn missing(meta: &StreamMeta, pos: u64) -> StorageError {
    StorageError::Corrupt(format!(
        "stream {} has no record at position {pos}",
        meta.id
    ))
}

/// Builds a [`Window`] from rows in position order, checking that they are
/// the stream's contiguous records and stopping once the step is covered.
pub struct Collect<'m> {
    meta: &'m StreamMeta,
    from: u64,
    limit: u64,
    budget: Budget,
    window: Window,
    expect: u64,
    taken: u64,
    done: bool,
}

impl<'m> Collect<'m> {
    /// A collection of the own records of `meta` that a plan of
    /// `[from, limit)` under `budget` can touch.
    pub fn new(meta: &'m StreamMeta, from: u64, limit: u64, budget: Budget) -> Self {
        Collect {
            meta,
            from,
            limit: limit.min(meta.tail.pos),
            budget,
            window: Window {
                first: 0,
                count: meta.tail.seq - meta.base.seq,
                starts: Vec::new(),
                records: Vec::new(),
            },
            expect: 0,
            taken: 0,
            done: false,
        }
    }

    /// The stream whose records are collected.
    pub fn meta(&self) -> &StreamMeta {
        self.meta
    }

    /// The read position: the first row must be the record containing it.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// False when nothing needs fetching (`from` outside the own records).
    pub fn wanted(&self) -> bool {
        self.from >= self.meta.base.pos && self.from < self.meta.tail.pos && self.window.count > 0
    }

    /// The end of the byte range whose records the step may need: rows that
    /// start at or after it are never used (a bound for range queries).
    pub fn end_bound(&self) -> u64 {
        self.limit
            .min(self.from.saturating_add(self.budget.bytes.max(1) as u64))
    }

    /// Most rows the step may need.
    pub fn max_rows(&self) -> usize {
        self.budget.records
    }

    /// Adds the next row (the first one must be the record containing
    /// `from`). Returns false once the step is covered.
    pub fn push(&mut self, start: u64, seq: u64, bytes: Bytes) -> Result<bool, StorageError> {
        let (meta, w) = (self.meta, &mut self.window);
        if w.records.is_empty() {
            if start > self.from {
                return Err(missing(meta, self.from));
            }
            w.first = seq
                .checked_sub(meta.base.seq)
                .ok_or_else(|| missing(meta, self.from))?;
            self.expect = start;
        }
        if start != self.expect || seq != meta.base.seq + w.first + w.records.len() as u64 {
            return Err(missing(meta, self.expect));
        }
        let end = start + bytes.len() as u64;
        w.starts.push(start);
        w.records.push(bytes);
        self.expect = end;
        self.taken += end.min(self.limit).saturating_sub(start.max(self.from));
        if end >= self.limit
            || self.taken >= self.budget.bytes as u64
            || w.records.len() >= self.budget.records
        {
            self.done = true;
        }
        Ok(!self.done)
    }

    /// The window, or an error when the rows ended before the step was covered.
    pub fn finish(mut self) -> Result<Window, StorageError> {
        if !self.wanted() {
            return Ok(self.window);
        }
        if !self.done {
            return Err(missing(self.meta, self.expect));
        }
        self.window.starts.push(self.expect);
        Ok(self.window)
    }
}

/// Reads views of streams: `metas` resolves fork sources by name, `records`
/// holds the bytes.
pub struct Chain<'a, M: ?Sized, R: ?Sized> {
    pub metas: &'a M,
    pub records: &'a R,
}

impl<M: Metas + ?Sized, R: Records + ?Sized> Chain<'_, M, R> {
    /// The own records of `meta` that a plan of `[from, limit)` under
    /// `budget` can touch; `from` lies in `[meta.base.pos, meta.tail.pos]`.
    fn fetch(
        &self,
        meta: &StreamMeta,
        from: u64,
        limit: u64,
        budget: Budget,
    ) -> Result<Window, StorageError> {
        let mut rows = Collect::new(meta, from, limit, budget);
        if rows.wanted() {
            self.records.fill(&mut rows)?;
        }
        rows.finish()
    }

    fn source_of(
        &self,
        meta: &StreamMeta,
        missing_link: StorageError,
    ) -> Result<StreamMeta, StorageError> {
        let link = meta.fork.as_ref().ok_or(missing_link)?;
        self.metas.meta(&link.source)?.ok_or(StorageError::NotFound)
    }

    /// Reads `[from, limit)` of the view of `meta`, walking up the fork chain
    /// for inherited positions. `from` has been validated.
    pub fn read_view(
        &self,
        meta: &StreamMeta,
        from: Offset,
        limit: u64,
        budget: Budget,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        if from.pos < meta.base.pos {
            let source = self.source_of(
                meta,
                StorageError::Corrupt("position before base of a stream that is not a fork".into()),
            )?;
            return self.read_view(&source, from, limit.min(meta.base.pos), budget);
        }
        let window = self.fetch(meta, from.pos, limit, budget)?;
        let layout = Layout {
            base: meta.base,
            tail: meta.tail,
            index: &window,
        };
        let (pieces, next) = layout.plan(from, limit, budget);
        let chunks = pieces
            .iter()
            .map(|p| {
                let r = &window.records[(p.index - window.first) as usize];
                r.slice(p.skip as usize..(p.skip + p.len) as usize)
            })
            .collect();
        Ok((chunks, next))
    }

    /// Checks that `from` is a position of the view of `meta`.
    pub fn validate_view(
        &self,
        meta: &StreamMeta,
        from: Offset,
        whole: bool,
    ) -> Result<(), StorageError> {
        if from.pos < meta.base.pos {
            let source = self.source_of(meta, StorageError::InvalidOffset)?;
            return self.validate_view(&source, from, whole);
        }
        let one = Budget {
            bytes: 1,
            records: 1,
            split: false,
        };
        let window = self.fetch(meta, from.pos, from.pos + 1, one)?;
        Layout {
            base: meta.base,
            tail: meta.tail,
            index: &window,
        }
        .validate(from, whole)
    }

    /// The start of the record of the view of `meta` that holds `at`, a
    /// position the stream minted (checked); the tail is its own boundary.
    pub fn record_boundary(&self, meta: &StreamMeta, at: Offset) -> Result<Offset, StorageError> {
        if at.pos >= meta.tail.pos {
            return if at == meta.tail {
                Ok(at)
            } else {
                Err(StorageError::InvalidOffset)
            };
        }
        if at.pos < meta.base.pos {
            // Inherited: the source's record (its start is one of ours too).
            let source = self.source_of(meta, StorageError::InvalidOffset)?;
            return self.record_boundary(&source, at);
        }
        let one = Budget {
            bytes: 1,
            records: 1,
            split: false,
        };
        let window = self.fetch(meta, at.pos, at.pos + 1, one)?;
        Layout {
            base: meta.base,
            tail: meta.tail,
            index: &window,
        }
        .validate(at, false)?;
        let i = window.locate(at.pos);
        Ok(Offset::new(meta.base.seq + i, window.start(i)))
    }

    /// Reads the whole of `[from, tail)` of a view with a budget, stitching
    /// inherited and own ranges. The chain's backends copy what they read
    /// out of their database, so a read lends nothing past `max_bytes`.
    pub fn read_stitched(
        &self,
        meta: &StreamMeta,
        from: Offset,
        tail: Offset,
        json: bool,
        max_bytes: usize,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        let read = |at, budget| self.read_view(meta, at, tail.pos, budget);
        view::read_stitched(read, from, tail, json, max_bytes, max_bytes)
    }

    /// Resolves a fork request against its source: the base offset where the
    /// fork's own data starts.
    pub fn resolve_fork_base(
        &self,
        source: &StreamMeta,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        let tail = source.tail;
        let json = model::is_json(&source.content_type);
        if anchor.pos > tail.pos {
            return Err(StorageError::ForkOffsetBeyondTail);
        }
        self.validate_view(source, anchor, json)?;
        let read = |at, budget| self.read_view(source, at, tail.pos, budget);
        view::fork_base(read, anchor, tail, json, sub_offset)
    }

    /// Resolves a read's start and reads from it up to the tail of `meta`,
    /// as every backend's `read` does.
    pub fn read_from(
        &self,
        meta: &StreamMeta,
        from: crate::offset::ReadFrom,
        max_bytes: usize,
    ) -> Result<(Offset, Vec<Bytes>, Offset), StorageError> {
        let json = model::is_json(&meta.content_type);
        let tail = meta.tail;
        let (start, check) = meta.info().read_start(from)?;
        if check {
            self.validate_view(meta, start, json)?;
        }
        let (chunks, next) = self.read_stitched(meta, start, tail, json, max_bytes)?;
        Ok((start, chunks, next))
    }
}
