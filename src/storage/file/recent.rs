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
    pub fn left(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// The last large record of one data file: its payload and the file offset
/// where that payload starts.
pub struct Recent {
    allowance: Allowance,
    last: Mutex<Option<(u64, Kept)>>,
}

/// The kept record's payload: out of the file's mapping, or (without
/// one) the appended bytes themselves.
struct Kept {
    bytes: Bytes,
    /// Registered with [`crate::zerocopy`] (mapped bytes only).
    mapped: bool,
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
        self.wrote_with(offset, records, |_, _| None);
    }

    /// [`Self::wrote`], keeping in place of the newest record what `map`
    /// gives for its payload's file offset and length (the same bytes,
    /// from the file's mapping), when it gives them.
    pub fn wrote_with(
        &self,
        offset: u64,
        records: &[Bytes],
        map: impl FnOnce(u64, usize) -> Option<Bytes>,
    ) {
        let Some((newest, earlier)) = records.split_last() else {
            return;
        };
        let len = newest.len();
        let keep = (RECENT_MIN..=RECENT_MAX).contains(&len);
        {
            let mut last = self.last.lock();
            let overwritten = last
                .as_ref()
                .is_some_and(|(at, kept)| at + kept.bytes.len() as u64 > offset);
            if overwritten || keep {
                self.forget(&mut last);
            }
        }
        if !keep || !self.allowance.take(len) {
            return;
        }
        let before: u64 = earlier.iter().map(|r| FRAME_HEADER + r.len() as u64).sum();
        let at = offset + before + FRAME_HEADER;
        // Mapped without the lock held: readers of the kept record do not
        // wait for it (writers come one at a time, under the stream's lock).
        let kept = match map(at, len).filter(|m| m.len() == len) {
            Some(mapped) => {
                // The page cache's pages, never written again while mapped:
                // the native engine may send them without a copy.
                crate::zerocopy::register(mapped.as_ptr(), len);
                Kept {
                    bytes: mapped,
                    mapped: true,
                }
            }
            None => Kept {
                bytes: newest.clone(),
                mapped: false,
            },
        };
        let mut last = self.last.lock();
        self.forget(&mut last);
        *last = Some((at, kept));
    }

    /// `len` bytes at file offset `at`, if they lie within the kept
    /// record's payload, and whether they are bytes of the mapping.
    pub fn get(&self, at: u64, len: u64) -> Option<(Bytes, bool)> {
        let last = self.last.lock();
        let (start, kept) = last.as_ref()?;
        let from = usize::try_from(at.checked_sub(*start)?).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        (to <= kept.bytes.len()).then(|| (kept.bytes.slice(from..to), kept.mapped))
    }

    /// Forgets the kept record (the file is cut back).
    pub fn clear(&self) {
        self.forget(&mut self.last.lock());
    }

    fn forget(&self, last: &mut Option<(u64, Kept)>) {
        if let Some((_, kept)) = last.take() {
            if kept.mapped {
                crate::zerocopy::unregister(kept.bytes.as_ptr());
            }
            self.allowance.give(kept.bytes.len());
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
        assert_eq!(r.get(at, RECENT_MIN as u64).unwrap(), (big.clone(), false));
        assert_eq!(r.get(at + 5, 7).unwrap().0, big.slice(5..12));
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
        assert_eq!(b.get(FRAME_HEADER, 1).unwrap().0[0], 4);
        b.clear();
        assert_eq!(allowance.left(), RECENT_MIN * 3 / 2);
    }

    /// A record kept as other bytes than the appended ones (the mapping's)
    /// is registered for sending by reference while kept, and only then.
    #[test]
    fn a_mapped_record_is_registered_while_kept() {
        let r = Recent::new(Allowance::new(RECENT_BUDGET));
        let appended = record(RECENT_MIN, 5);
        let mapped = record(RECENT_MIN, 5);
        r.wrote_with(0, std::slice::from_ref(&appended), |at, len| {
            assert_eq!((at, len), (FRAME_HEADER, RECENT_MIN));
            Some(mapped.clone())
        });
        let (got, by_mapping) = r.get(FRAME_HEADER, RECENT_MIN as u64).unwrap();
        assert!(by_mapping);
        assert_eq!(got.as_ptr(), mapped.as_ptr(), "the mapped bytes are kept");
        assert!(crate::zerocopy::wants_splice(&got));
        assert!(!crate::zerocopy::wants_splice(&appended));
        // Bytes of the wrong length are not taken for the record.
        let next = FRAME_HEADER + RECENT_MIN as u64;
        r.wrote_with(next, std::slice::from_ref(&appended), |_, _| {
            Some(record(10, 5))
        });
        assert!(!crate::zerocopy::wants_splice(&mapped), "forgotten");
        let (_, by_mapping) = r.get(next + FRAME_HEADER, 1).unwrap();
        assert!(!by_mapping);
    }
}
