//! The last large record written to a data file, kept in memory while the
//! file is open: readers at a stream's tail (a reader that just missed the
//! live wake, many readers re-reading the newest record) get it without a
//! mapping, a blocking thread or a checksum pass. A record read back from
//! the file has its CRC checked on every read (13-15 % of a hot-tail read's
//! time, `BENCHMARKS.md`); this one never left memory, so there is nothing
//! to check.
//!
//! Only records of at least [`RECENT_MIN`] bytes are kept (smaller ones
//! are cheap to read back), at most [`RECENT_MAX`], and all open data files'
//! records together within an [`Allowance`] ([`RECENT_BUDGET`] per store).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::format::FRAME_HEADER;
use super::range::MAP_MIN;

/// Records smaller than this are not kept.
pub const RECENT_MIN: usize = MAP_MIN;
/// Records larger than this are not kept.
pub const RECENT_MAX: usize = 8 << 20;
/// What the records kept by one store's open data files may hold together.
pub const RECENT_BUDGET: usize = 64 << 20;

/// The bytes the open data files of a store may still keep.
#[derive(Clone)]
pub struct Allowance(Arc<AtomicUsize>);

impl Allowance {
    pub fn new(bytes: usize) -> Self {
        Allowance(Arc::new(AtomicUsize::new(bytes)))
    }

    /// Takes `n` bytes of the allowance, if that many are left.
    fn take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    /// The bytes left.
    #[cfg(test)]
    pub fn left(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// The last large record of one data file: its payload and the file offset
/// where that payload starts.
pub struct Recent {
    allowance: Allowance,
    last: Mutex<Option<(u64, Bytes)>>,
}

impl Recent {
    pub fn new(allowance: Allowance) -> Self {
        Recent {
            allowance,
            last: Mutex::new(None),
        }
    }

    /// `records` were written, framed, from file offset `offset`: forgets
    /// the kept record if they overwrite any of it (an append that failed
    /// before it was acknowledged is written over by the next), and keeps
    /// the last of them if it is large. Called under the stream's lock, so
    /// writes to one file come in order.
    pub fn wrote(&self, offset: u64, records: &[Bytes]) {
        let Some((newest, earlier)) = records.split_last() else {
            return;
        };
        let mut last = self.last.lock();
        if let Some((at, kept)) = &*last
            && at + kept.len() as u64 > offset
        {
            self.forget(&mut last);
        }
        let len = newest.len();
        if !(RECENT_MIN..=RECENT_MAX).contains(&len) {
            return;
        }
        self.forget(&mut last);
        if self.allowance.take(len) {
            let before: u64 = earlier.iter().map(|r| FRAME_HEADER + r.len() as u64).sum();
            *last = Some((offset + before + FRAME_HEADER, newest.clone()));
        }
    }

    /// `len` bytes at file offset `at`, if they lie within the kept
    /// record's payload.
    pub fn get(&self, at: u64, len: u64) -> Option<Bytes> {
        let last = self.last.lock();
        let (start, kept) = last.as_ref()?;
        let from = usize::try_from(at.checked_sub(*start)?).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        (to <= kept.len()).then(|| kept.slice(from..to))
    }

    /// Forgets the kept record (the file is cut back).
    pub fn clear(&self) {
        self.forget(&mut self.last.lock());
    }

    fn forget(&self, last: &mut Option<(u64, Bytes)>) {
        if let Some((_, kept)) = last.take() {
            self.allowance.give(kept.len());
        }
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn keeps_the_last_large_record_and_serves_slices_of_it() {
        let allowance = Allowance::new(RECENT_BUDGET);
        let r = Recent::new(allowance.clone());
        let small = record(10, 1);
        let big = record(RECENT_MIN, 2);
        r.wrote(100, &[small.clone(), big.clone()]);
        let at = 100 + FRAME_HEADER + 10 + FRAME_HEADER;
        assert_eq!(r.get(at, RECENT_MIN as u64).unwrap(), big);
        assert_eq!(r.get(at + 5, 7).unwrap(), big.slice(5..12));
        // Outside the payload (the frame header, past its end, the small
        // record): not kept.
        assert!(r.get(at - 1, 4).is_none());
        assert!(r.get(at + 1, RECENT_MIN as u64).is_none());
        assert!(r.get(100 + FRAME_HEADER, 10).is_none());
        assert_eq!(allowance.left(), RECENT_BUDGET - RECENT_MIN);
        // A later small record leaves it kept; one written over it (an
        // unacknowledged append written again) forgets it.
        let end = at + RECENT_MIN as u64;
        r.wrote(end, std::slice::from_ref(&small));
        assert!(r.get(at, 4).is_some());
        r.wrote(at - FRAME_HEADER, &[small]);
        assert!(r.get(at, 4).is_none());
        assert_eq!(allowance.left(), RECENT_BUDGET);
    }

    #[test]
    fn stays_within_the_allowance_and_gives_it_back() {
        let allowance = Allowance::new(RECENT_MIN * 3 / 2);
        let (a, b) = (
            Recent::new(allowance.clone()),
            Recent::new(allowance.clone()),
        );
        a.wrote(0, &[record(RECENT_MIN, 1)]);
        b.wrote(0, &[record(RECENT_MIN, 2)]);
        assert!(a.get(FRAME_HEADER, 1).is_some());
        assert!(b.get(FRAME_HEADER, 1).is_none(), "over the allowance");
        // Too large to keep at all.
        b.wrote(0, &[record(RECENT_MAX + 1, 3)]);
        assert!(b.get(FRAME_HEADER, 1).is_none());
        drop(a);
        assert_eq!(allowance.left(), RECENT_MIN * 3 / 2);
        b.wrote(0, &[record(RECENT_MIN, 4)]);
        assert_eq!(b.get(FRAME_HEADER, 1).unwrap()[0], 4);
        b.clear();
        assert_eq!(allowance.left(), RECENT_MIN * 3 / 2);
    }
}
