//! Parked live readers: an SSE subscriber or a long-poller that is caught
//! up waits here as a few dozen bytes instead of as a task.
//!
//! An active live reader is a tokio task holding its connection, its
//! handler's futures and a broadcast receiver: ~7 KiB of RSS per SSE
//! subscriber and ~12 KiB per long-poller (BENCHMARKS.md). Most live
//! readers spend their life waiting at the tail, so when one has nothing
//! to do but wait ([`LiveRead::at_rest`]), the connection ([`h1`](super::h1),
//! plain TCP only) hands its socket to this module and its task ends:
//!
//! * the socket leaves tokio's reactor for ours ([`reactor`]): one epoll
//!   set on one thread, which notices a client that hangs up (the slot is
//!   freed at once) or sends something, writes SSE keep-alives, and ends
//!   readers whose reconnect interval or long-poll timeout passed;
//! * the reader's state becomes a [`Member`] of its stream's [`Group`]:
//!   socket, offset, mode, encoding, cursor, deadlines;
//! * a stream's parked readers are spread over one group per runtime
//!   worker but one (one group on two workers); each group's task
//!   ([`fanout`]) holds one subscription. An append's records are encoded
//!   once per SSE variant (encoding and cursor) and written to every
//!   parked subscriber at that offset, which stays parked; the groups
//!   write in parallel (a pass over more than a thousand subscribers off
//!   the runtime's workers, so that appends and other requests keep them).
//!   A long-poller is answered the same way, and its connection then waits
//!   in the group for its next request ([`Kind::Answered`]); so does the
//!   connection of a long-poll answered at once by its task
//!   ([`Parking::hold`]), so that every next poll comes back the same way.
//!
//! Everything else makes the reader active again (a new task, the same
//! code path as before it parked): a write the socket did not take whole
//! (the rest is written by the task, under `send_timeout`), a deadline, a
//! wake without usable records, input from the client (an answered
//! poller's next request), shutdown. The active reader reads storage from its offset, so
//! nothing is lost in the move; it may park again later.
//!
//! HTTP/2 and TLS connections keep their readers active (hyper owns the
//! connection), as do requests that take the router (not the fast path).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use parking_lot::{Mutex, RwLock};
use slab::Slab;
use tokio::sync::{Notify, watch};

use super::limit::LiveSlot;
use super::live::LiveRead;
use super::sse::Encoding;
use crate::metrics::LiveGuard;
use crate::offset::Offset;
use crate::storage::StreamInfo;

pub(super) mod fanout;
mod hold;
mod lane;
pub(super) mod reactor;
mod resume;
#[cfg(test)]
mod tests;
mod turns;

pub use resume::{Conns, Handover, Resume, Resumed, Spawn};
use resume::{Unpark, Why};
pub use turns::Turn;

/// A connection's share in the server's shutdown wait: held while the
/// connection lives, parked or not.
pub type ConnToken = watch::Receiver<()>;

/// Request extension: this connection can park a live reader. Only the
/// native HTTP/1.1 engine on plain TCP sets it, and only the fast path
/// keeps it.
#[derive(Clone, Copy, Debug)]
pub struct ParkOffer;

/// Response extension shared by a live handler and the connection: where
/// the handler leaves its reader when it parks, and what the fast path
/// must apply to an answer given later.
#[derive(Clone, Default)]
pub struct ParkCell(Arc<Mutex<Cell>>);

#[derive(Default)]
struct Cell {
    ticket: Option<Ticket>,
    finish: Option<Finish>,
}

impl ParkCell {
    /// The handler's reader, at rest: the connection parks it once the
    /// response so far is written.
    pub fn put(&self, ticket: Ticket) {
        self.0.lock().ticket = Some(ticket);
    }

    /// The fast path's part of a later answer.
    pub fn set_finish(&self, finish: Finish) {
        self.0.lock().finish = Some(finish);
    }

    /// True when the handler left a reader.
    pub fn has_ticket(&self) -> bool {
        self.0.lock().ticket.is_some()
    }

    /// What the handler and the fast path left.
    pub fn take(&self) -> (Option<Ticket>, Option<Finish>) {
        let mut c = self.0.lock();
        (c.ticket.take(), c.finish.take())
    }

    /// The reader, and (only with one) what the fast path left.
    pub fn take_ticket_first(&self) -> (Option<Ticket>, Option<Finish>) {
        let mut c = self.0.lock();
        match c.ticket.take() {
            Some(t) => (Some(t), c.finish.take()),
            None => (None, None),
        }
    }
}

/// What the fast path applies to a response ([`super::front::Front`]):
/// kept while a long-poller is parked, so its answer gets the same
/// headers, log line and metrics; and the rate limiter's live slot, held
/// as long as the reader lives.
pub struct Finish {
    /// The request's `Origin`.
    pub origin: Option<HeaderValue>,
    /// The reader's access is private (`Cache-Control: private`).
    pub private: bool,
    pub slot: Option<LiveSlot>,
    pub started: std::time::Instant,
}

/// A live reader at rest, left by its handler for parking.
pub enum Ticket {
    Sse {
        live: Box<LiveRead>,
        enc: Encoding,
        cursor: Option<u64>,
    },
    LongPoll {
        live: Box<LiveRead>,
        cursor: Option<u64>,
    },
}

/// The mode of a parked reader and what its answers depend on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Sse {
        enc: Encoding,
        cursor: Option<u64>,
    },
    LongPoll {
        cursor: Option<u64>,
    },
    /// A long-poller answered by its group ([`fanout`]): no longer a
    /// reader, its connection waits here for the next request (until
    /// [`Conns::idle`] passes), so the answers of one wake are all written
    /// before any poller's next request takes a worker.
    Answered,
}

/// One parked reader.
pub(super) struct Member {
    pub(super) tcp: std::net::TcpStream,
    /// Where the reader stands: the tail it was answered up to.
    pub(super) next: Offset,
    /// The stream incarnation it reads.
    pub(super) id: u64,
    /// Milliseconds on the parking clock ([`Parking::tick`]).
    pub(super) deadline: u64,
    pub(super) last_write: u64,
    pub(super) kind: Kind,
    /// The connection stays open after the response.
    pub(super) keep: bool,
    pub(super) peer: SocketAddr,
    pub(super) token: ConnToken,
    /// Counts the live reader (`None` once answered).
    pub(super) live: Option<LiveGuard>,
    /// Long-poll: the fast path's part of its answer. SSE: only the rate
    /// limiter's slot, when it holds one.
    pub(super) finish: Option<Box<Finish>>,
}

/// The parked readers of one stream.
pub(super) struct Group {
    pub(super) id: u32,
    pub(super) name: String,
    /// Which of the stream's groups this is ([`Parking::shards`]).
    pub(super) shard: u16,
    pub(super) inner: Mutex<Inner>,
    /// Told when a member left outside the group task (so an empty group
    /// ends).
    pub(super) emptied: Notify,
}

pub(super) struct Inner {
    pub(super) members: Slab<Member>,
    /// The stream as the newest parked reader saw it (content type for
    /// long-poll answers taken from a wake).
    pub(super) info: Option<StreamInfo>,
    /// The group task ended; park elsewhere.
    pub(super) closed: bool,
    /// Members that are SSE subscribers (a fan-out to many of them runs
    /// off the runtime's workers, [`fanout`]).
    pub(super) sse: usize,
}

impl Group {
    fn new(id: u32, name: String, shard: u16) -> Group {
        Group {
            id,
            name,
            shard,
            inner: Mutex::new(Inner {
                members: Slab::new(),
                info: None,
                closed: false,
                sse: 0,
            }),
            emptied: Notify::new(),
        }
    }
}

#[derive(Default)]
struct Groups {
    /// By stream name and shard.
    by_name: HashMap<(String, u16), Arc<Group>>,
    by_id: HashMap<u32, Arc<Group>>,
    next_id: u32,
}

/// The parking lot of one listener.
pub struct Parking {
    groups: RwLock<Groups>,
    registry: mio::Registry,
    waker: mio::Waker,
    epoch: std::time::Instant,
    /// When the reactor next looks at deadlines (parking clock).
    next_scan: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    /// Groups per stream: its parked readers are spread over this many
    /// ([`groups_per_stream`]).
    shards: u16,
    next_shard: AtomicUsize,
    /// Groups of no stream (no task, never retired), one per runtime
    /// worker, where a connection whose long-poll was answered at once
    /// waits for its next request ([`Parking::hold`]).
    idle: Vec<Arc<Group>>,
    next_idle: AtomicUsize,
    /// The next polls of answered connections, resumed in turn.
    turns: Arc<turns::Turns>,
    /// Fan-outs running off the runtime's workers now, and the most that
    /// may (one per worker; none on a current-thread runtime, which cannot).
    aside: AtomicUsize,
    aside_max: usize,
}

/// Groups per stream on `workers` runtime workers: one per worker but
/// one, so that a hot stream's fan-out writes on the cores in parallel
/// and leaves one to appends, other streams and the readers' side.
///
/// On two workers that is one group: two groups of 5,000 SSE subscribers
/// each wrote for 50-120 ms on both cores at once, every loopback write
/// running the reader's receive path on the writer's core, and the
/// readers read late; with one, the fan-out p99 at 10,000 subscribers fell
/// from 128-171 ms to 92-117 at ~9 % less CPU per delivery, and long-poll
/// was not worse (BENCHMARKS.md, eighteenth session). Four per worker had
/// been worse than one (sixteenth session).
fn groups_per_stream(workers: usize) -> u16 {
    workers.saturating_sub(1).clamp(1, 256) as u16
}

/// Next polls whose tasks may wait for a worker at once, per runtime
/// worker ([`turns`]): 256 on two workers.
const NEXT_POLLS_PER_WORKER: usize = 128;

/// The reactor's own token, for [`Parking::poke`].
const WAKER: Token = Token(usize::MAX);

fn token(group: u32, slot: usize) -> Token {
    Token(((group as usize) << 32) | (slot & 0xFFFF_FFFF))
}

fn untoken(t: Token) -> (u32, usize) {
    ((t.0 >> 32) as u32, t.0 & 0xFFFF_FFFF)
}

impl Parking {
    /// A parking lot and the poll set its reactor thread waits on
    /// ([`reactor::start`]).
    pub fn new(metrics: Arc<crate::metrics::Metrics>) -> io::Result<(Parking, mio::Poll)> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let rt = tokio::runtime::Handle::current();
        let workers = rt.metrics().num_workers();
        let aside_max = match rt.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => 0,
            _ => workers,
        };
        let shards = groups_per_stream(workers);
        let mut groups = Groups::default();
        let idle: Vec<Arc<Group>> = (0..workers.clamp(1, 256) as u32)
            .map(|id| {
                let g = Arc::new(Group::new(id, String::new(), 0));
                groups.by_id.insert(g.id, Arc::clone(&g));
                g
            })
            .collect();
        groups.next_id = idle.len() as u32;
        let p = Parking {
            groups: RwLock::new(groups),
            registry,
            waker,
            epoch: std::time::Instant::now(),
            next_scan: AtomicU64::new(u64::MAX),
            metrics,
            shards,
            next_shard: AtomicUsize::new(0),
            idle,
            next_idle: AtomicUsize::new(0),
            turns: turns::Turns::new(workers * NEXT_POLLS_PER_WORKER),
            aside: AtomicUsize::new(0),
            aside_max,
        };
        Ok((p, poll))
    }

    /// Milliseconds since this lot opened.
    pub(super) fn tick(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn to_tick(&self, at: tokio::time::Instant) -> u64 {
        at.into_std()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }

    pub(super) fn to_instant(&self, tick: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(tick))
    }

    /// Makes the reactor look at deadlines by `due` at the latest.
    pub(super) fn due(&self, due: u64) {
        if self.next_scan.fetch_min(due, Ordering::AcqRel) > due {
            let _ = self.waker.wake();
        }
    }

    /// Wakes the reactor (shutdown).
    pub(super) fn poke(&self) {
        let _ = self.waker.wake();
    }

    pub(super) fn group_by_id(&self, id: u32) -> Option<Arc<Group>> {
        self.groups.read().by_id.get(&id).cloned()
    }

    pub(super) fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups.read().by_id.values().cloned().collect()
    }

    /// The group of `name`; `true` with a group just made, whose task the
    /// caller starts.
    fn group(&self, name: &str) -> (Arc<Group>, bool) {
        let shard = (self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards as usize) as u16;
        let key = (name.to_string(), shard);
        if let Some(g) = self.groups.read().by_name.get(&key) {
            return (Arc::clone(g), false);
        }
        let mut gs = self.groups.write();
        if let Some(g) = gs.by_name.get(&key) {
            return (Arc::clone(g), false);
        }
        let mut id = gs.next_id;
        while gs.by_id.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        gs.next_id = id.wrapping_add(1);
        let g = Arc::new(Group::new(id, name.to_string(), shard));
        gs.by_name.insert(key, Arc::clone(&g));
        gs.by_id.insert(id, Arc::clone(&g));
        (g, true)
    }

    /// Removes `g` if it has no member; true when it is gone.
    pub(super) fn retire(&self, g: &Group) -> bool {
        let mut gs = self.groups.write();
        let mut inner = g.inner.lock();
        if !inner.members.is_empty() {
            return false;
        }
        inner.closed = true;
        inner.members = Slab::new();
        gs.by_name.remove(&(g.name.clone(), g.shard));
        gs.by_id.remove(&g.id);
        true
    }

    /// Takes `key` out of `inner` and out of the poll set.
    pub(super) fn remove(&self, inner: &mut Inner, key: usize) -> Option<Member> {
        let m = inner.members.try_remove(key)?;
        let _ = self.registry.deregister(&mut SourceFd(&m.tcp.as_raw_fd()));
        let gauge = match m.kind {
            Kind::Answered => &self.metrics.between_polls,
            Kind::Sse { .. } => {
                inner.sse -= 1;
                &self.metrics.parked
            }
            Kind::LongPoll { .. } => &self.metrics.parked,
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
        Some(m)
    }
}

impl Parking {
    /// Parks the reader `ticket` on the connection `h`. A reader that is
    /// no longer at rest (news arrived meanwhile), a connection with
    /// input, or a server shutting down goes on actively instead.
    pub fn park(
        self: &Arc<Self>,
        h: Handover,
        ticket: Ticket,
        finish: Option<Finish>,
        state: &super::AppState,
        spawn: &Spawn,
    ) {
        let Ok(tcp) = h.tcp.into_std() else {
            return;
        };
        let active = |tcp, ticket, finish: Option<Finish>, token| {
            spawn.resume(Resumed {
                tcp,
                peer: h.peer,
                keep: h.keep,
                token,
                finish: finish.map(Box::new),
                resume: Resume::Active(ticket),
                turn: None,
            })
        };
        if h.input || state.shutdown.is_cancelled() {
            return active(tcp, ticket, finish, h.token);
        }
        let (mut live, kind) = match ticket {
            Ticket::Sse { live, enc, cursor } => (live, Kind::Sse { enc, cursor }),
            Ticket::LongPoll { live, cursor } => (live, Kind::LongPoll { cursor }),
        };
        // (A ticket is a reader: `kind` is never `Answered` here.)
        let rebuild = |live, kind| match kind {
            Kind::Sse { enc, cursor } => Ticket::Sse { live, enc, cursor },
            Kind::LongPoll { cursor } => Ticket::LongPoll { live, cursor },
            Kind::Answered => Ticket::LongPoll { live, cursor: None },
        };
        loop {
            let (g, fresh) = self.group(live.name());
            if fresh {
                fanout::start(Arc::clone(self), Arc::clone(&g), state, Arc::clone(spawn));
            }
            let mut inner = g.inner.lock();
            if inner.closed {
                continue;
            }
            // Under the group's lock: every wake from here on reaches the
            // group task after this reader is a member, and `at_rest`
            // consumed (and judged) every wake before. A shutdown from
            // here on finds the member in the group.
            if state.shutdown.is_cancelled() || !live.at_rest() {
                drop(inner);
                return active(tcp, rebuild(live, kind), finish, h.token);
            }
            let key = inner.members.vacant_key();
            let fd = tcp.as_raw_fd();
            if self
                .registry
                .register(&mut SourceFd(&fd), token(g.id, key), Interest::READABLE)
                .is_err()
            {
                drop(inner);
                return active(tcp, rebuild(live, kind), finish, h.token);
            }
            let parked = (*live).into_parked();
            let now = self.tick();
            let deadline = self.to_tick(parked.deadline);
            let finish = match kind {
                Kind::LongPoll { .. } | Kind::Answered => finish.map(Box::new),
                Kind::Sse { .. } => finish.filter(|f| f.slot.is_some()).map(Box::new),
            };
            inner.members.insert(Member {
                tcp,
                next: parked.next,
                id: parked.info.id,
                deadline,
                last_write: now,
                kind,
                keep: h.keep,
                peer: h.peer,
                token: h.token,
                live: Some(parked.live),
                finish,
            });
            inner.info = Some(parked.info);
            inner.sse += usize::from(matches!(kind, Kind::Sse { .. }));
            self.metrics.parked.fetch_add(1, Ordering::Relaxed);
            drop(inner);
            let due = match kind {
                Kind::Sse { .. } => {
                    deadline.min(now + state.config.sse_keepalive.as_millis() as u64)
                }
                Kind::LongPoll { .. } | Kind::Answered => deadline,
            };
            self.due(due);
            return;
        }
    }
}
