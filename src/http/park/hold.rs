//! Connections between polls: a long-poll answered at once by its task
//! leaves its connection in one of the parking's stream-less groups, to
//! wait there for its next request like one answered by a group's pass.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::Interest;
use mio::unix::SourceFd;

use super::{Handover, Kind, Member, Parking, Resume, Resumed, Spawn, fanout, token};
use crate::offset::Offset;

impl Parking {
    /// Takes a connection whose long-poll was just answered at once: it
    /// waits here for its next request, as one answered by its group does
    /// (until `idle` passes).
    ///
    /// Every poller's next poll thus comes the same way, through this
    /// lot's reactor (see [`reactor`](super::reactor)): at 10,000 pollers on a saturated
    /// server, polls answered at once and polls answered by a group's pass
    /// came back by two paths that waited unequally long for a worker, and
    /// pollers were served in uneven turns (BENCHMARKS.md, issue 15).
    pub fn hold(
        self: &Arc<Self>,
        h: Handover,
        idle: Duration,
        state: &crate::http::AppState,
        spawn: &Spawn,
    ) {
        let Ok(tcp) = h.tcp.into_std() else {
            return;
        };
        let n = self.next_idle.fetch_add(1, Ordering::Relaxed) % self.idle.len();
        let g = &self.idle[n];
        let mut inner = g.inner.lock();
        let key = inner.members.vacant_key();
        let fd = tcp.as_raw_fd();
        // Under the lock: a shutdown from here on finds the member
        // ([`reactor::start`] releases these groups' members).
        if state.shutdown.is_cancelled()
            || self
                .registry
                .register(&mut SourceFd(&fd), token(g.id, key), Interest::READABLE)
                .is_err()
        {
            drop(inner);
            return spawn.resume(Resumed {
                tcp,
                peer: h.peer,
                keep: h.keep,
                token: h.token,
                finish: None,
                resume: Resume::Answered { leftover: None },
                turn: None,
            });
        }
        let deadline = self.tick() + idle.as_millis() as u64;
        inner.members.insert(Member {
            tcp,
            next: Offset::ZERO,
            id: 0,
            deadline,
            last_write: 0,
            kind: Kind::Answered,
            keep: h.keep,
            peer: h.peer,
            token: h.token,
            live: None,
            finish: None,
        });
        self.metrics.between_polls.fetch_add(1, Ordering::Relaxed);
        drop(inner);
        self.due(deadline);
    }

    /// At shutdown: every connection [`Parking::hold`] keeps goes back to
    /// a task of its own, which closes it.
    pub(super) fn release_held(&self, spawn: &Spawn) {
        for g in &self.idle {
            let list = fanout::take_all(self, &mut g.inner.lock(), false);
            self.unpark(g, list, spawn);
        }
        self.turns.flush(spawn);
    }
}
