//! The wakes one fan-out hands out: a run of wakes each continuing the one
//! before, which grows while the fan-out writes.
//!
//! A fan-out to 10,000 sockets takes tens of milliseconds of writes (each
//! loopback write costs 10-25 us of kernel time), so appends keep coming
//! while it runs. They join the lane between batches of members: a member
//! not yet written gets everything from its offset to the lane's newest
//! tail in one write, instead of waiting for the next pass with the older
//! records alone; the members written before the lane grew get the newer
//! records in the pass that follows. Fewer, larger writes and no member
//! waits a whole pass for records that are already here (SSE fan-out p99,
//! BENCHMARKS.md). A member at offset `x` is handed the lane's wakes from
//! the one that starts at `x`, merged into one wake, made once per start.

use bytes::Bytes;

use crate::notify::{Appended, Subscription, Wake};
use crate::offset::Offset;

/// Most wakes in one lane, and most bytes of records: past either, the
/// lane stops growing and the wakes after it wait for the next one.
pub(super) const MERGE_MAX: usize = 64;
const MERGE_BYTES: usize = 256 * 1024;

pub(super) struct Lane {
    wakes: Vec<Wake>,
    bytes: usize,
    /// `merged[i]`: `wakes[i..]` as one wake, once a member needed it.
    merged: Vec<Option<Wake>>,
}

impl Lane {
    pub(super) fn new(first: Wake) -> Lane {
        let bytes = records_len(&first);
        Lane {
            wakes: vec![first],
            bytes,
            merged: vec![None],
        }
    }

    /// The newest tail.
    pub(super) fn tail(&self) -> Offset {
        self.last().tail
    }

    pub(super) fn closed(&self) -> bool {
        self.last().closed
    }

    /// The lane's wakes carry records (a lane of a bare wake is one wake).
    pub(super) fn has_records(&self) -> bool {
        self.wakes[0].appended.is_some()
    }

    fn last(&self) -> &Wake {
        self.wakes.last().expect("a lane is never empty")
    }

    /// Takes the wakes queued on `sub` that continue the lane, while it has
    /// room. A queued wake that does not continue it is returned (it ends
    /// the lane: `pending` for the next). True when the lane grew.
    pub(super) fn pull(&mut self, sub: &mut Subscription) -> (bool, Option<Option<Wake>>) {
        let before = self.wakes.len();
        let rest = loop {
            if self.wakes.len() >= MERGE_MAX || self.bytes >= MERGE_BYTES {
                break None;
            }
            match sub.try_changed() {
                None => break None,
                Some(Some(w)) if continues(self.last(), &w) => {
                    self.bytes += records_len(&w);
                    self.wakes.push(w);
                    self.merged.push(None);
                }
                Some(other) => break Some(other),
            }
        };
        let grew = self.wakes.len() > before;
        if grew {
            self.merged.iter_mut().for_each(|m| *m = None);
        }
        (grew, rest)
    }

    /// Where a member at `next` of incarnation `id` starts in the lane:
    /// the wake whose records begin at `next`.
    pub(super) fn start(&self, id: u64, next: Offset) -> Option<usize> {
        self.wakes.iter().position(|w| {
            w.appended
                .as_ref()
                .is_some_and(|a| a.id == id && a.from == next)
        })
    }

    /// The wakes from `i` on, as one wake.
    pub(super) fn from(&mut self, i: usize) -> &Wake {
        if self.wakes.len() - i == 1 {
            return &self.wakes[i];
        }
        self.merged[i].get_or_insert_with(|| join(&self.wakes[i..]))
    }
}

fn records_len(w: &Wake) -> usize {
    w.appended
        .as_ref()
        .map_or(0, |a| a.records.iter().map(Bytes::len).sum())
}

/// True when `next` carries the records right after `prev`'s.
fn continues(prev: &Wake, next: &Wake) -> bool {
    match (&prev.appended, &next.appended) {
        (Some(a), Some(b)) => !prev.closed && a.id == b.id && b.from == prev.tail,
        _ => false,
    }
}

/// Wakes that continue one another (each carrying records) as one.
fn join(wakes: &[Wake]) -> Wake {
    let last = wakes.last().expect("not empty");
    let first = wakes[0]
        .appended
        .as_ref()
        .expect("joined wakes carry records");
    let records = wakes
        .iter()
        .filter_map(|w| w.appended.as_ref())
        .flat_map(|a| a.records.iter().cloned())
        .collect();
    Wake {
        tail: last.tail,
        closed: last.closed,
        appended: Some(Appended::new(first.id, first.from, records)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(id: u64, from: u64, to: u64, closed: bool) -> Wake {
        let records = vec![Bytes::from(vec![b'x'; (to - from) as usize])];
        Wake {
            tail: Offset::new(0, to),
            closed,
            appended: Some(Appended::new(id, Offset::new(0, from), records)),
        }
    }

    #[test]
    fn a_member_gets_the_lane_from_where_it_stands() {
        let mut lane = Lane::new(wake(1, 0, 3, false));
        lane.wakes.push(wake(1, 3, 5, false));
        lane.merged.push(None);
        lane.wakes.push(wake(1, 5, 9, false));
        lane.merged.push(None);
        assert_eq!(lane.start(1, Offset::new(0, 3)), Some(1));
        assert_eq!(
            lane.start(2, Offset::new(0, 3)),
            None,
            "another incarnation"
        );
        assert_eq!(lane.start(1, Offset::new(0, 4)), None, "not a wake's start");
        let w = lane.from(1).clone();
        assert_eq!(w.tail, Offset::new(0, 9));
        let a = w.appended.as_ref().unwrap();
        assert_eq!(a.from, Offset::new(0, 3));
        assert_eq!(a.records.iter().map(Bytes::len).sum::<usize>(), 6);
        assert_eq!(lane.from(2).tail, Offset::new(0, 9));
        assert_eq!(lane.from(2).appended.as_ref().unwrap().from.pos, 5);
    }

    #[test]
    fn queued_wakes_that_continue_the_lane_join_it_up_to_its_limit() {
        let hub = crate::notify::WakeHub::new();
        let mut sub = hub.subscribe("s");
        let mut lane = Lane::new(wake(1, 0, 1, false));
        assert_eq!(lane.pull(&mut sub), (false, None), "nothing queued");
        hub.wake("s", wake(1, 1, 2, false));
        hub.wake("s", wake(1, 2, 3, false));
        hub.wake("s", wake(1, 7, 8, false));
        hub.wake("s", wake(1, 8, 9, false));
        let (grew, rest) = lane.pull(&mut sub);
        assert!(grew);
        assert_eq!(
            rest,
            Some(Some(wake(1, 7, 8, false))),
            "a gap ends the lane"
        );
        assert_eq!(lane.tail(), Offset::new(0, 3));
        assert_eq!(lane.wakes.len(), 3);
        // A full lane takes no more: what comes after it stays queued.
        let mut sub = hub.subscribe("s");
        let mut lane = Lane::new(wake(1, 100, 101, false));
        let mut at = 101;
        // 64 wakes, 8 at a time (the channel holds 16): one more than
        // fills the lane.
        for _ in 0..MERGE_MAX / 8 {
            for _ in 0..8 {
                hub.wake("s", wake(1, at, at + 1, false));
                at += 1;
            }
            assert_eq!(lane.pull(&mut sub).1, None);
        }
        assert_eq!(lane.wakes.len(), MERGE_MAX);
        assert_eq!(lane.tail().pos, 100 + MERGE_MAX as u64);
        let queued = sub.try_changed().expect("left queued").expect("no lag");
        assert_eq!(queued, wake(1, lane.tail().pos, lane.tail().pos + 1, false));
    }

    #[test]
    fn only_wakes_that_continue_the_lane_join_it() {
        let a = wake(1, 0, 3, false);
        assert!(continues(&a, &wake(1, 3, 4, false)));
        assert!(!continues(&a, &wake(1, 4, 5, false)), "a gap");
        assert!(!continues(&a, &wake(2, 3, 4, false)), "another incarnation");
        assert!(
            !continues(&wake(1, 0, 3, true), &wake(1, 3, 4, false)),
            "closed"
        );
        assert!(!continues(&a, &Wake::bare(Offset::new(0, 4), false)));
    }
}
