//! Reading stored bytes out of the `data` table, shared by the read path
//! (a redb read transaction) and the writer (fork resolution inside its
//! write transaction, which must see the batch's own uncommitted appends).
//!
//! Position arithmetic is [`Layout`]'s, exactly as in the memory backend. The
//! record index it needs is a [`Window`]: the records a single read touches,
//! fetched with one range scan starting at the record that contains the
//! read position (the last key `<= (id, pos)`).

use bytes::Bytes;
use redb::ReadableTable;

use super::tables::map_err;
use crate::offset::Offset;
use crate::storage::StorageError;
use crate::storage::model::{self, StreamMeta};
use crate::storage::view::{self, Budget, Layout, RecordIndex};

/// Where stream metadata comes from: the committed cache (reads) or the
/// writer's batch view (cache plus uncommitted changes).
pub(super) trait Metas {
    fn meta(&self, name: &str) -> Option<StreamMeta>;
}

/// The `data` table as any readable redb table.
pub(super) trait DataTable: ReadableTable<(u64, u64), (u64, &'static [u8])> {}
impl<T: ReadableTable<(u64, u64), (u64, &'static [u8])>> DataTable for T {}

/// The own records of one stream that one read step touches, plus the start
/// of the record after the last one (its end, records being contiguous).
struct Window {
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

/// Reads views of streams: `metas` resolves fork sources by name, `data` holds
/// the records.
pub(super) struct Reader<'a, M: ?Sized, T: ?Sized> {
    pub metas: &'a M,
    pub data: &'a T,
}

impl<M: Metas + ?Sized, T: DataTable + ?Sized> Reader<'_, M, T> {
    fn source_of(
        &self,
        meta: &StreamMeta,
        missing_link: StorageError,
    ) -> Result<StreamMeta, StorageError> {
        let link = meta.fork.as_ref().ok_or(missing_link)?;
        self.metas.meta(&link.source).ok_or(StorageError::NotFound)
    }

    /// Fetches the own records a plan of `[from, limit)` under `budget` can
    /// touch. `from` lies in the own range `[base, tail)`.
    fn fetch(
        &self,
        meta: &StreamMeta,
        from: u64,
        limit: u64,
        budget: Budget,
    ) -> Result<Window, StorageError> {
        let count = meta.tail.seq - meta.base.seq;
        let mut w = Window {
            first: 0,
            count,
            starts: Vec::new(),
            records: Vec::new(),
        };
        if from < meta.base.pos || from >= meta.tail.pos || count == 0 {
            return Ok(w);
        }
        let id = meta.id;
        let limit = limit.min(meta.tail.pos);
        let first_start = {
            let mut before = self.data.range((id, 0)..=(id, from)).map_err(map_err)?;
            let (k, v) = before
                .next_back()
                .ok_or_else(|| missing(meta, from))?
                .map_err(map_err)?;
            let (start, seq) = (k.value().1, v.value().0);
            w.first = seq
                .checked_sub(meta.base.seq)
                .ok_or_else(|| missing(meta, from))?;
            start
        };
        let mut expect = first_start;
        let mut taken: u64 = 0;
        let mut done = false;
        for item in self
            .data
            .range((id, first_start)..=(id, u64::MAX))
            .map_err(map_err)?
        {
            let (k, v) = item.map_err(map_err)?;
            let start = k.value().1;
            let (seq, bytes) = v.value();
            if start != expect || seq != meta.base.seq + w.first + w.records.len() as u64 {
                return Err(missing(meta, expect));
            }
            let end = start + bytes.len() as u64;
            w.starts.push(start);
            w.records.push(Bytes::copy_from_slice(bytes));
            expect = end;
            taken += end.min(limit).saturating_sub(start.max(from));
            if end >= limit || taken >= budget.bytes as u64 || w.records.len() >= budget.records {
                done = true;
                break;
            }
        }
        if !done {
            return Err(missing(meta, expect));
        }
        w.starts.push(expect);
        Ok(w)
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

    /// Reads the whole of `[from, tail)` of a view with a budget, stitching
    /// inherited and own ranges.
    pub fn read_stitched(
        &self,
        meta: &StreamMeta,
        from: Offset,
        tail: Offset,
        json: bool,
        max_bytes: usize,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        let read = |at, budget| self.read_view(meta, at, tail.pos, budget);
        view::read_stitched(read, from, tail, json, max_bytes)
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
}
