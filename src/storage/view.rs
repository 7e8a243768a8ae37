//! Position arithmetic over one stream's own records, shared by backends.
//!
//! A stream's own records start at its `base` offset (the fork point, or zero)
//! and run to its tail. Given an index of where each record starts, these
//! functions turn "read from offset X, at most N bytes, not past L" into the
//! list of record slices to return and the offset where the next read starts,
//! and validate client offsets on the way. Backends only fetch bytes.

use bytes::Bytes;

use super::StorageError;
use crate::offset::Offset;

/// Where a stream's own records start, by record index (0 = first own record).
pub trait RecordIndex {
    /// Number of own records.
    fn count(&self) -> u64;
    /// Byte position where own record `i` starts.
    fn start(&self, i: u64) -> u64;
    /// Index of the own record containing byte position `pos` (the last
    /// record starting at or before it). Only called with `pos` inside the
    /// stream's own range.
    fn locate(&self, pos: u64) -> u64 {
        // Binary search over `start`; backends with a native lookup override.
        let (mut lo, mut hi) = (0u64, self.count());
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if self.start(mid) <= pos {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl RecordIndex for [u64] {
    fn count(&self) -> u64 {
        self.len() as u64
    }
    fn start(&self, i: u64) -> u64 {
        self[i as usize]
    }
    fn locate(&self, pos: u64) -> u64 {
        (self.partition_point(|&s| s <= pos).max(1) - 1) as u64
    }
}

/// How much one read may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Stop once this many bytes are collected (at least one record or byte
    /// is always returned when data exists).
    pub bytes: usize,
    /// Stop after this many records.
    pub records: usize,
    /// May a record be cut to honour `bytes`? (binary streams: yes; JSON
    /// streams: never, messages are indivisible).
    pub split: bool,
}

impl Budget {
    pub fn bytes(bytes: usize, split: bool) -> Self {
        Budget {
            bytes,
            records: usize::MAX,
            split,
        }
    }
}

/// A slice of one own record: bytes `[skip, skip + len)` of record `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub index: u64,
    pub skip: u64,
    pub len: u64,
}

/// Reads one piece of a view (a fork's inherited range or its own) from a
/// position, within a budget: the records and the position after them. Each
/// backend supplies its own, walking the fork chain its way.
pub trait ViewRead: FnMut(Offset, Budget) -> Result<(Vec<Bytes>, Offset), StorageError> {}
impl<F: FnMut(Offset, Budget) -> Result<(Vec<Bytes>, Offset), StorageError>> ViewRead for F {}

/// Most records a read lends past its `max_bytes` (see [`read_stitched`]):
/// each is a handle in the answer (a `Bytes`, an I/O vector entry), so a
/// large answer of small records is cut here rather than at its bytes.
pub const LEND_RECORDS: usize = 16 * 1024;

/// Reads `[from, tail)` of a view, stitching the pieces `read` returns
/// (inherited and own ranges end at different places): up to `lend_bytes`
/// or [`LEND_RECORDS`] records, whichever comes first, and then on to
/// `max_bytes` if that is further (a read of many small records).
/// `lend_bytes` is for a backend whose reads lend their bytes; one that
/// copies passes `max_bytes` for both.
pub fn read_stitched(
    mut read: impl ViewRead,
    from: Offset,
    tail: Offset,
    json: bool,
    max_bytes: usize,
    lend_bytes: usize,
) -> Result<(Vec<Bytes>, Offset), StorageError> {
    let max_bytes = max_bytes.max(1);
    let lend_bytes = lend_bytes.max(max_bytes);
    let mut chunks = Vec::new();
    let mut at = from;
    let mut taken = 0usize;
    while at.pos < tail.pos {
        let budget = if taken < lend_bytes && chunks.len() < LEND_RECORDS {
            Budget {
                bytes: lend_bytes - taken,
                records: LEND_RECORDS - chunks.len(),
                split: !json,
            }
        } else if taken < max_bytes {
            Budget::bytes(max_bytes - taken, !json)
        } else {
            break;
        };
        let (more, next) = read(at, budget)?;
        if next == at {
            break;
        }
        taken += more.iter().map(Bytes::len).sum::<usize>();
        chunks.extend(more);
        at = next;
    }
    Ok((chunks, at))
}

/// Where a fork's own data starts: `sub_offset` messages (JSON) or bytes
/// within the anchor's record (others) after `anchor`, a validated position
/// of a source view ending at `tail`.
pub fn fork_base(
    mut read: impl ViewRead,
    anchor: Offset,
    tail: Offset,
    json: bool,
    sub_offset: u64,
) -> Result<Offset, StorageError> {
    if sub_offset == 0 {
        return Ok(anchor);
    }
    if json {
        // Each flattened message is one record: step over `sub_offset` of them.
        let budget = Budget {
            bytes: usize::MAX,
            records: usize::try_from(sub_offset).unwrap_or(usize::MAX),
            split: false,
        };
        let mut at = anchor;
        let mut left = sub_offset;
        while left > 0 {
            if at.pos >= tail.pos {
                return Err(StorageError::SubOffsetOutOfRange);
            }
            let (chunks, next) = read(at, budget)?;
            left = left.saturating_sub(chunks.len() as u64);
            at = next;
        }
        Ok(at)
    } else {
        // Bytes within the record that contains the anchor.
        let one = Budget {
            bytes: 1,
            records: 1,
            split: false,
        };
        let (chunks, next) = read(anchor, one)?;
        let rest = chunks.first().map_or(0, |c| c.len() as u64);
        if sub_offset > rest {
            Err(StorageError::SubOffsetOutOfRange)
        } else if sub_offset == rest {
            Ok(next)
        } else {
            Ok(Offset::new(anchor.seq, anchor.pos + sub_offset))
        }
    }
}

/// The own-record layout of one stream.
pub struct Layout<'a, I: RecordIndex + ?Sized> {
    pub base: Offset,
    pub tail: Offset,
    pub index: &'a I,
}

impl<I: RecordIndex + ?Sized> Layout<'_, I> {
    fn end_of(&self, i: u64) -> u64 {
        if i + 1 < self.index.count() {
            self.index.start(i + 1)
        } else {
            self.tail.pos
        }
    }

    /// The canonical offset of byte position `pos` within the own range.
    pub fn offset_at(&self, pos: u64) -> Offset {
        if pos >= self.tail.pos {
            return self.tail;
        }
        let i = self.index.locate(pos);
        Offset::new(self.base.seq + i, pos)
    }

    /// Checks that `from` is a position this stream minted (or would mint)
    /// in its own range: within `[base, tail]` and with the right record
    /// index. `whole` additionally requires a record boundary.
    pub fn validate(&self, from: Offset, whole: bool) -> Result<(), StorageError> {
        if from.pos < self.base.pos || from.pos > self.tail.pos {
            return Err(StorageError::InvalidOffset);
        }
        if from.pos == self.tail.pos {
            return if from == self.tail {
                Ok(())
            } else {
                Err(StorageError::InvalidOffset)
            };
        }
        if from.pos == self.base.pos {
            return if from == self.base {
                Ok(())
            } else {
                Err(StorageError::InvalidOffset)
            };
        }
        let i = self.index.locate(from.pos);
        let start = self.index.start(i);
        if from.seq != self.base.seq + i || (whole && start != from.pos) {
            return Err(StorageError::InvalidOffset);
        }
        Ok(())
    }

    /// Plans a read of own records from `from` up to `limit` (exclusive
    /// position, at most the tail). Returns the pieces and the next offset.
    pub fn plan(&self, from: Offset, limit: u64, budget: Budget) -> (Vec<Piece>, Offset) {
        let limit = limit.min(self.tail.pos);
        let mut pieces = Vec::new();
        let mut pos = from.pos;
        if pos >= limit || self.index.count() == 0 {
            return (pieces, self.offset_at(pos.min(self.tail.pos)));
        }
        let mut i = self.index.locate(pos);
        let mut taken: u64 = 0;
        while pos < limit && pieces.len() < budget.records {
            let end = self.end_of(i).min(limit);
            let mut len = end - pos;
            let room = (budget.bytes as u64).saturating_sub(taken);
            if budget.split && len > room {
                len = room.max(1);
            }
            pieces.push(Piece {
                index: i,
                skip: pos - self.index.start(i),
                len,
            });
            taken += len;
            pos += len;
            if taken >= budget.bytes as u64 {
                break;
            }
            if pos >= self.end_of(i) {
                i += 1;
            }
        }
        let next = if pos == limit
            && limit < self.tail.pos
            && pos > self.index.start(self.index.locate(pos))
        {
            // Stopped inside a record at the limit.
            Offset::new(self.base.seq + self.index.locate(pos), pos)
        } else {
            self.offset_at(pos)
        };
        (pieces, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Records "abc" "de" "fghi" starting at base (2, 10).
    const STARTS: [u64; 3] = [10, 13, 15];
    fn layout() -> Layout<'static, [u64]> {
        Layout {
            base: Offset::new(2, 10),
            tail: Offset::new(5, 19),
            index: &STARTS[..],
        }
    }

    #[test]
    fn canonical_offsets() {
        let l = layout();
        assert_eq!(l.offset_at(10), Offset::new(2, 10));
        assert_eq!(l.offset_at(12), Offset::new(2, 12));
        assert_eq!(l.offset_at(13), Offset::new(3, 13));
        assert_eq!(l.offset_at(18), Offset::new(4, 18));
        assert_eq!(l.offset_at(19), Offset::new(5, 19));
    }

    #[test]
    fn validates_offsets() {
        let l = layout();
        assert!(l.validate(Offset::new(3, 13), true).is_ok());
        assert!(l.validate(Offset::new(2, 11), false).is_ok());
        assert!(l.validate(Offset::new(2, 11), true).is_err());
        assert!(l.validate(Offset::new(2, 13), false).is_err());
        assert!(l.validate(Offset::new(5, 19), true).is_ok());
        assert!(l.validate(Offset::new(5, 20), true).is_err());
        assert!(l.validate(Offset::new(1, 9), true).is_err());
    }

    #[test]
    fn splits_binary_records_and_keeps_json_whole() {
        let l = layout();
        let (pieces, next) = l.plan(Offset::new(2, 10), 19, Budget::bytes(4, true));
        assert_eq!(
            pieces,
            vec![
                Piece {
                    index: 0,
                    skip: 0,
                    len: 3
                },
                Piece {
                    index: 1,
                    skip: 0,
                    len: 1
                }
            ]
        );
        assert_eq!(next, Offset::new(3, 14));
        let (pieces, next) = l.plan(Offset::new(3, 13), 19, Budget::bytes(1, false));
        assert_eq!(
            pieces,
            vec![Piece {
                index: 1,
                skip: 0,
                len: 2
            }]
        );
        assert_eq!(next, Offset::new(4, 15));
        let (pieces, next) = l.plan(Offset::new(2, 10), 19, Budget::bytes(100, false));
        assert_eq!(pieces.len(), 3);
        assert_eq!(next, l.tail);
    }

    #[test]
    fn stops_at_a_limit_inside_a_record() {
        let l = layout();
        let (pieces, next) = l.plan(Offset::new(2, 10), 17, Budget::bytes(100, true));
        assert_eq!(
            pieces.last(),
            Some(&Piece {
                index: 2,
                skip: 0,
                len: 2
            })
        );
        assert_eq!(next, Offset::new(4, 17));
        let (pieces, next) = l.plan(Offset::new(5, 19), 19, Budget::bytes(100, true));
        assert!(pieces.is_empty());
        assert_eq!(next, l.tail);
    }

    /// A view of `n` one-byte records (positions 0..n), read through
    /// `read_stitched` as a backend's `read` would serve it.
    fn stitched(n: u64, json: bool, max: usize, lend: usize) -> (usize, usize, Offset) {
        let starts: Vec<u64> = (0..n).collect();
        let l = Layout {
            base: Offset::ZERO,
            tail: Offset::new(n, n),
            index: &starts[..],
        };
        let read = |at: Offset, budget| {
            let (pieces, next) = l.plan(at, n, budget);
            Ok((
                pieces
                    .iter()
                    .map(|p| Bytes::from(vec![b'x'; p.len as usize]))
                    .collect(),
                next,
            ))
        };
        let (chunks, next) = read_stitched(read, Offset::ZERO, l.tail, json, max, lend).unwrap();
        (chunks.len(), chunks.iter().map(Bytes::len).sum(), next)
    }

    #[test]
    fn a_lending_read_runs_past_max_bytes_up_to_its_records_cap() {
        let n = (LEND_RECORDS * 2) as u64;
        // Not lending: stops at max_bytes.
        assert_eq!(stitched(n, true, 10, 10), (10, 10, Offset::new(10, 10)));
        assert_eq!(stitched(n, true, 10, 0), (10, 10, Offset::new(10, 10)));
        // Lending: on to lend_bytes...
        assert_eq!(
            stitched(n, true, 10, 100),
            (100, 100, Offset::new(100, 100))
        );
        // ...or to the records cap, whichever comes first.
        let cap = LEND_RECORDS as u64;
        assert_eq!(
            stitched(n, false, 10, usize::MAX),
            (LEND_RECORDS, LEND_RECORDS, Offset::new(cap, cap))
        );
        // Many small records: max_bytes still holds past the cap.
        let max = LEND_RECORDS + 5;
        let at = max as u64;
        assert_eq!(
            stitched(n, true, max, usize::MAX),
            (max, max, Offset::new(at, at))
        );
        // The tail ends every read.
        assert_eq!(stitched(7, true, 1, usize::MAX), (7, 7, Offset::new(7, 7)));
    }
}
