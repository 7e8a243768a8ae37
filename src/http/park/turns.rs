//! Next polls in turns: the connections whose next request came while they
//! waited in the parking are resumed in the order their requests came,
//! with a bounded number of their tasks waiting for a worker at once.
//!
//! At 10,000 pollers every answered poller's next request comes through
//! the parking's reactor; spawned from the reactor's thread, their tasks
//! all went to tokio's shared queue, thousands deep, where everything else
//! woken from outside a worker waited behind them (a durable append's
//! acknowledgement, woken by the WAL's committer thread: p50 ~180 ms under
//! that load, BENCHMARKS.md). Here they wait in a queue of their own
//! instead; a task that starts running ends its turn and spawns the next
//! one from its worker. A turn ends when its task starts, not when its
//! request is answered, so clients that send slowly cannot hold turns.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Resumed, Spawn};

/// The queue of next polls, and how many are running.
pub(super) struct Turns {
    inner: Mutex<State>,
    /// Most spawned and not yet started at once.
    limit: usize,
}

struct State {
    queue: VecDeque<Resumed>,
    running: usize,
}

/// A next poll's turn, from its spawn until its task starts (when the
/// engine drops it), which starts the next one.
pub struct Turn {
    turns: Arc<Turns>,
    spawn: Spawn,
}

impl Turns {
    pub(super) fn new(limit: usize) -> Arc<Turns> {
        Arc::new(Turns {
            inner: Mutex::new(State {
                queue: VecDeque::new(),
                running: 0,
            }),
            limit: limit.max(1),
        })
    }

    /// Resumes `r` now if fewer than the limit wait to start, else after
    /// those queued before it.
    pub(super) fn push(self: &Arc<Self>, mut r: Resumed, spawn: &Spawn) {
        {
            let mut s = self.inner.lock();
            if s.running >= self.limit {
                s.queue.push_back(r);
                return;
            }
            s.running += 1;
        }
        r.turn = Some(self.turn(spawn));
        spawn.resume(r);
    }

    /// Resumes every queued connection at once (shutdown: each closes).
    pub(super) fn flush(&self, spawn: &Spawn) {
        let queued = std::mem::take(&mut self.inner.lock().queue);
        for r in queued {
            spawn.resume(r);
        }
    }

    fn turn(self: &Arc<Self>, spawn: &Spawn) -> Turn {
        Turn {
            turns: Arc::clone(self),
            spawn: Arc::clone(spawn),
        }
    }

    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        let s = self.inner.lock();
        (s.running, s.queue.len())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let next = {
            let mut s = self.turns.inner.lock();
            match s.queue.pop_front() {
                Some(r) => Some(r),
                None => {
                    s.running -= 1;
                    None
                }
            }
        };
        if let Some(mut r) = next {
            r.turn = Some(self.turns.turn(&self.spawn));
            self.spawn.resume(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::http::park::{Conns, Finish, Resume};

    /// Keeps what it is asked to resume.
    #[derive(Default)]
    struct Keep(Mutex<Vec<Resumed>>);

    impl Conns for Keep {
        fn resume(&self, r: Resumed) {
            self.0.lock().push(r);
        }
        fn encode(
            &self,
            _: Result<axum::response::Response, crate::http::error::ApiError>,
            _: Option<Box<Finish>>,
            _: &str,
            _: bool,
        ) -> Option<(Vec<bytes::Bytes>, bool)> {
            None
        }
        fn idle(&self) -> Duration {
            Duration::from_secs(1)
        }
    }

    fn resumed(l: &std::net::TcpListener, port: u16) -> Resumed {
        let tcp = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        Resumed {
            tcp,
            peer: ([127, 0, 0, 1], port).into(),
            keep: true,
            token: tokio::sync::watch::channel(()).1,
            finish: None,
            resume: Resume::Answered { leftover: None },
            turn: None,
        }
    }

    #[test]
    fn next_polls_run_at_most_the_limit_at_once_and_in_order() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let keep = Arc::new(Keep::default());
        let spawn: Spawn = keep.clone();
        let turns = Turns::new(2);
        for port in 1..=4 {
            turns.push(resumed(&l, port), &spawn);
        }
        assert_eq!(turns.counts(), (2, 2));
        let started = |k: &Keep| k.0.lock().iter().map(|r| r.peer.port()).collect::<Vec<_>>();
        assert_eq!(started(&keep), [1, 2]);
        // A turn that ends starts the first queued one, with a turn of its
        // own.
        let first = keep.0.lock().remove(0);
        drop(first);
        assert_eq!(turns.counts(), (2, 1));
        assert_eq!(started(&keep), [2, 3]);
        assert!(keep.0.lock().iter().all(|r| r.turn.is_some()));
        // Nothing queued: ending turns frees places.
        let all = std::mem::take(&mut *keep.0.lock());
        drop(all);
        assert_eq!(turns.counts(), (1, 0));
        assert_eq!(started(&keep), [4]);
        keep.0.lock().clear();
        assert_eq!(turns.counts(), (0, 0));
        // Shutdown: the queued ones go at once, without a turn.
        for port in 5..=7 {
            turns.push(resumed(&l, port), &spawn);
        }
        turns.flush(&spawn);
        assert_eq!(started(&keep), [5, 6, 7]);
        assert_eq!(turns.counts(), (2, 0));
        assert!(keep.0.lock()[2].turn.is_none());
    }
}
