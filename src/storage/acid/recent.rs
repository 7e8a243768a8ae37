//! The last records of each stream, kept in memory after its commits, so
//! that a read just behind the tail is answered on the async worker
//! ([`Storage::read_now`](crate::storage::Storage::read_now)) instead of in
//! a redb read transaction on the blocking pool.
//!
//! That read is the one a long-poller makes after every answer when appends
//! come faster than it polls: its next request asks from the offset its
//! answer ended at, and the appends made meanwhile are the stream's last
//! few records. At 10,000 long-pollers each such read was a blocking-pool
//! round trip (two thread wake-ups) and a read transaction.
//!
//! Only what committed is kept: the writer hands over the records its
//! wakes carry ([`BatchWakes`](crate::storage::txn::BatchWakes)), after the
//! commit. A stream keeps at most [`STREAM_BYTES`] of its last records; the
//! store at most [`TOTAL_BYTES`] over all streams (past it, everything kept
//! is dropped and refilled by the next appends: streams that went idle do
//! not hold the room for ever). A read is answered only when it starts at
//! a kept record's first byte and the kept records end at the tail the
//! caller saw; anything else is left to the transaction.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::offset::Offset;

/// Most bytes of records kept per stream.
pub(super) const STREAM_BYTES: usize = 64 * 1024;
/// Most bytes of records kept over all streams.
pub(super) const TOTAL_BYTES: usize = 64 << 20;

/// The kept records of every stream, by incarnation id.
#[derive(Default)]
pub(super) struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Kept>,
    bytes: usize,
}

/// A stream's last records, contiguous, each with the offset it starts
/// at, and where the last one ends.
struct Kept {
    records: VecDeque<(Offset, Bytes)>,
    end: Offset,
    bytes: usize,
}

impl Kept {
    fn at(from: Offset) -> Self {
        Kept {
            records: VecDeque::new(),
            end: from,
            bytes: 0,
        }
    }
}

impl Recent {
    /// `records` of stream `id`, starting at `from`, committed.
    pub(super) fn appended(&self, id: u64, from: Offset, records: &[Bytes]) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let mut kept = match inner.by_id.remove(&id) {
            Some(k) if k.end == from => k,
            Some(k) => {
                inner.bytes -= k.bytes;
                Kept::at(from)
            }
            None => Kept::at(from),
        };
        inner.bytes -= kept.bytes;
        for r in records {
            let next = Offset::new(kept.end.seq + 1, kept.end.pos + r.len() as u64);
            kept.records.push_back((kept.end, r.clone()));
            kept.end = next;
            kept.bytes += r.len();
        }
        while kept.bytes > STREAM_BYTES {
            let Some((_, first)) = kept.records.pop_front() else {
                break;
            };
            kept.bytes -= first.len();
        }
        if kept.records.is_empty() {
            return;
        }
        if inner.bytes + kept.bytes > TOTAL_BYTES {
            inner.by_id.clear();
            inner.bytes = 0;
        }
        inner.bytes += kept.bytes;
        inner.by_id.insert(id, kept);
    }

    /// Stream `id` is gone (deleted, or its name taken by another).
    pub(super) fn forget(&self, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(k) = inner.by_id.remove(&id) {
            inner.bytes -= k.bytes;
        }
    }

    /// The records of stream `id` from `start` to `tail`, when they are
    /// kept and fit in `max_bytes`.
    pub(super) fn read(
        &self,
        id: u64,
        start: Offset,
        tail: Offset,
        max_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        let inner = self.inner.lock();
        let kept = inner.by_id.get(&id)?;
        if kept.end != tail || start == tail {
            return None;
        }
        // `start` must be where a kept record starts, not a position inside
        // one (or one the stream never minted).
        let i = kept.records.partition_point(|(at, _)| at.pos < start.pos);
        if kept.records.get(i).map(|(at, _)| *at) != Some(start) {
            return None;
        }
        let bytes = (tail.pos - start.pos) as usize;
        (bytes <= max_bytes).then(|| kept.records.range(i..).map(|(_, r)| r.clone()).collect())
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::txn::recs;

    #[test]
    fn reads_start_at_a_kept_record_and_end_at_the_tail() {
        let r = Recent::default();
        r.appended(1, Offset::new(3, 10), &recs(&["ab", "c"]));
        r.appended(1, Offset::new(5, 13), &recs(&["def"]));
        let tail = Offset::new(6, 16);
        assert_eq!(
            r.read(1, Offset::new(3, 10), tail, 100),
            Some(recs(&["ab", "c", "def"]))
        );
        assert_eq!(
            r.read(1, Offset::new(5, 13), tail, 100),
            Some(recs(&["def"]))
        );
        // Inside a record, before the kept ones, at the tail, an offset the
        // stream never minted, past the budget, another tail, another id.
        for (start, t, max, id) in [
            (Offset::new(3, 11), tail, 100, 1),
            (Offset::new(2, 9), tail, 100, 1),
            (tail, tail, 100, 1),
            (Offset::new(4, 13), tail, 100, 1),
            (Offset::new(3, 10), tail, 5, 1),
            (Offset::new(3, 10), Offset::new(7, 17), 100, 1),
            (Offset::new(3, 10), tail, 100, 2),
        ] {
            assert_eq!(
                r.read(id, start, t, max),
                None,
                "{start:?} {t:?} {max} {id}"
            );
        }
    }

    #[test]
    fn a_gap_starts_over_and_the_oldest_records_go_first() {
        let r = Recent::default();
        r.appended(1, Offset::new(0, 0), &recs(&["ab"]));
        // Not where the kept ones end (a restore, a lost wake): start over.
        r.appended(1, Offset::new(4, 20), &recs(&["x"]));
        assert_eq!(r.read(1, Offset::new(0, 0), Offset::new(5, 21), 100), None);
        assert_eq!(
            r.read(1, Offset::new(4, 20), Offset::new(5, 21), 100),
            Some(recs(&["x"]))
        );
        assert_eq!(r.bytes(), 1);
        // Past the per-stream bound, the first records are dropped.
        let big = Bytes::from(vec![b'y'; STREAM_BYTES - 1]);
        r.appended(1, Offset::new(5, 21), std::slice::from_ref(&big));
        let tail = Offset::new(6, 21 + big.len() as u64);
        assert_eq!(r.bytes(), STREAM_BYTES);
        r.appended(1, tail, &recs(&["zz"]));
        let end = Offset::new(7, tail.pos + 2);
        assert_eq!(r.read(1, Offset::new(5, 21), end, usize::MAX), None);
        assert_eq!(r.read(1, tail, end, usize::MAX), Some(recs(&["zz"])));
        assert_eq!(r.bytes(), 2);
        // A record larger than the bound is not kept at all.
        r.appended(
            2,
            Offset::new(0, 0),
            &[Bytes::from(vec![0; STREAM_BYTES + 1])],
        );
        assert_eq!(r.bytes(), 2);
        r.forget(1);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn past_the_store_bound_everything_kept_is_dropped() {
        let r = Recent::default();
        let rec = Bytes::from(vec![b'r'; STREAM_BYTES]);
        let streams = (TOTAL_BYTES / STREAM_BYTES) as u64;
        for id in 0..streams {
            r.appended(id, Offset::new(0, 0), std::slice::from_ref(&rec));
        }
        assert_eq!(r.bytes(), TOTAL_BYTES);
        r.appended(streams, Offset::new(0, 0), std::slice::from_ref(&rec));
        assert_eq!(r.bytes(), STREAM_BYTES);
        let tail = Offset::new(1, STREAM_BYTES as u64);
        assert!(r.read(0, Offset::new(0, 0), tail, usize::MAX).is_none());
        assert!(
            r.read(streams, Offset::new(0, 0), tail, usize::MAX)
                .is_some()
        );
    }
}
