//! The task of a stream with parked readers: it holds the stream's one
//! subscription and hands every wake to the parked readers.
//!
//! A wake with the records after a subscriber's offset becomes one chunk
//! per variant (encoding and cursor), encoded once and written with one
//! `send` per subscriber; the subscriber stays parked. A wake without
//! usable records (a lagged receiver, a bare wake from another node) is
//! turned into one by a single storage read for the group, not one per
//! reader. Wakes that arrive while a fan-out writes join it ([`Lane`]):
//! the subscribers not yet written get them in the same write, so a group
//! that falls behind catches up.
//!
//! A long-poller with news is answered here too, from the wake's records,
//! with the bytes its task would write; its connection then waits in the
//! group for its next request ([`Kind::Answered`]). The answers of one wake
//! thus go out in one pass per group, before any poller's next request
//! competes with them for a worker: answered as tasks, early pollers' next
//! polls ran while later ones still waited (long-poll p99 at 10,000
//! pollers, BENCHMARKS.md). Subscribers whose socket took only part of a
//! chunk, and pollers whose answer it did not take whole, become active.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::lane::{Lane, MERGE_MAX};
use super::{Group, Inner, Kind, Member, Parking, Spawn, Unpark, Why};
use crate::http::AppState;
use crate::http::read::{answer_from_wake, cursor, read_chunk};
use crate::http::sse::{self, Encoding};
use crate::notify::{Appended, Subscription, Wake};
use crate::offset::ReadFrom;

/// Starts the task of a group just made. Subscribes before returning, so
/// no wake after the first member joins is missed.
pub(in crate::http) fn start(p: Arc<Parking>, g: Arc<Group>, state: &AppState, spawn: Spawn) {
    let sub = state.hub.subscribe(&g.name);
    tokio::spawn(run(p, g, sub, state.clone(), spawn));
}

async fn run(p: Arc<Parking>, g: Arc<Group>, mut sub: Subscription, state: AppState, spawn: Spawn) {
    // A wake taken from the channel while merging that did not chain on.
    let mut pending: Option<Option<Wake>> = None;
    loop {
        let wake = match pending.take() {
            Some(w) => Some(w),
            None => tokio::select! {
                w = sub.changed() => Some(w),
                () = g.emptied.notified() => None,
                () = state.shutdown.cancelled() => {
                    // Every member goes back to its own task, which sees the
                    // shutdown and ends its response.
                    loop {
                        let list = take_all(&p, &mut g.inner.lock(), false);
                        p.unpark(&g, list, &spawn);
                        if p.retire(&g) {
                            return;
                        }
                    }
                }
            },
        };
        if let Some(w) = wake {
            let w = match w {
                Some(w) if w.appended.is_some() => Some(w),
                other => group_read(&state, &g, other).await,
            };
            let Some(w) = w else {
                let list = take_all(&p, &mut g.inner.lock(), true);
                p.unpark(&g, list, &spawn);
                continue;
            };
            pending = hand_out(&p, &g, &mut sub, &state, &spawn, Lane::new(w)).await;
        }
        if p.retire(&g) {
            return;
        }
    }
}

/// Hands `lane` to every member. A fan-out to 10,000 sockets is tens of
/// milliseconds of writes, and the writer's next append (and parks, and
/// other streams) must not wait for all of it. A pass over more than
/// [`BATCH`] SSE subscribers runs off the runtime's workers
/// ([`block_in_place`](tokio::task::block_in_place): the worker's other
/// tasks move to a fresh thread, and the kernel shares the cores between
/// the two) while at most one per worker does so ([`Parking::aside`]):
/// an SSE delivery cost ~8 % less CPU that way (BENCHMARKS.md, seventeenth
/// session). Any other pass yields between batches of [`BATCH`]: answered
/// long-pollers send their next polls at once, and those must find the
/// workers (aside, the long-poll p99 was worse in four rounds of four).
///
/// Wakes that arrive meanwhile join the lane every [`PULL`] members; when
/// it grew after a pass began, another pass takes the members behind its
/// tail (and those that joined the group meanwhile) to it. Returns a
/// queued wake that does not continue the lane.
async fn hand_out(
    p: &Arc<Parking>,
    g: &Group,
    sub: &mut Subscription,
    state: &AppState,
    spawn: &Spawn,
    mut lane: Lane,
) -> Option<Option<Wake>> {
    let mut pending = None;
    // The chunks made for the lane as it is (a lane that grew needs new
    // ones).
    let mut variants = Vec::new();
    let mut pull = |lane: &mut Lane, variants: &mut Vec<Variant>| {
        if pending.is_some() {
            return false;
        }
        let (grew, rest) = lane.pull(sub);
        pending = rest;
        if grew {
            variants.clear();
        }
        grew
    };
    loop {
        // Before the members are listed: a wake taken from here on is
        // for every member in the list.
        pull(&mut lane, &mut variants);
        let (keys, sse) = {
            let inner = g.inner.lock();
            let keys: Vec<usize> = inner.members.iter().map(|(k, _)| k).collect();
            (keys, inner.sse)
        };
        let mut behind = false;
        // Hands the lane to the members of batches `range` (of `PULL`).
        let mut batches = |range: Range<usize>, lane: &mut Lane, variants: &mut Vec<Variant>| {
            for n in range {
                if n > 0 && pull(lane, variants) {
                    behind = true;
                }
                let batch = &keys[n * PULL..keys.len().min((n + 1) * PULL)];
                let list = {
                    let mut inner = g.inner.lock();
                    fan_out(p, state, &g.name, spawn, &mut inner, lane, batch, variants)
                };
                p.unpark(g, list, spawn);
            }
        };
        let (n, per) = (keys.len().div_ceil(PULL), BATCH / PULL);
        if let Some(_aside) = (sse > BATCH).then(|| p.aside()).flatten() {
            tokio::task::block_in_place(|| batches(0..n, &mut lane, &mut variants));
        } else {
            for at in (0..n).step_by(per) {
                if at > 0 {
                    tokio::task::yield_now().await;
                }
                batches(at..n.min(at + per), &mut lane, &mut variants);
            }
        }
        if !behind {
            break;
        }
    }
    pending
}

/// A fan-out's leave to run off the runtime's workers, given back on drop.
pub(super) struct Aside<'a>(&'a AtomicUsize);

impl Drop for Aside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Parking {
    /// Leave for a fan-out to run off the runtime's workers, while fewer
    /// than one per worker do ([`hand_out`]).
    pub(super) fn aside(&self) -> Option<Aside<'_>> {
        self.aside
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.aside_max).then_some(n + 1)
            })
            .ok()
            .map(|_| Aside(&self.aside))
    }
}

/// Takes every member out, to read for itself (and park again if
/// `park`). Answered long-pollers, which read nothing, go only when it is
/// not (shutdown).
pub(super) fn take_all(p: &Parking, inner: &mut Inner, park: bool) -> Vec<Unpark> {
    let keys: Vec<usize> = inner
        .members
        .iter()
        .filter(|(_, m)| !park || !matches!(m.kind, Kind::Answered))
        .map(|(k, _)| k)
        .collect();
    let mut list = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(member) = p.remove(inner, k) {
            list.push(Unpark {
                member,
                why: Why::Reread { park },
            });
        }
    }
    list
}

/// A wake with records, from one storage read at the group's offset, in
/// place of `w` (which has none, or is `None` after a lag). `None` when
/// the read does not give one that reaches the tail: every member then
/// reads for itself.
async fn group_read(state: &AppState, g: &Group, w: Option<Wake>) -> Option<Wake> {
    let (at, id) = {
        let inner = g.inner.lock();
        let (_, m) = inner
            .members
            .iter()
            .find(|(_, m)| !matches!(m.kind, Kind::Answered))?;
        (m.next, m.id)
    };
    if let Some(w) = &w
        && w.tail.pos < at.pos
    {
        // Old news for this offset: nothing to read.
        return Some(Wake::bare(w.tail, w.closed));
    }
    let out = read_chunk(state, &g.name, ReadFrom::At(at)).await.ok()?;
    if out.info.id != id || !out.up_to_date() {
        return None;
    }
    Some(Wake {
        tail: out.next,
        closed: out.info.closed,
        appended: Some(Appended::new(out.info.id, out.start, out.chunks)),
    })
}

/// One SSE chunk for the records of a wake: the size line, the `data`
/// event, the `control` event and the chunk's end, in one buffer (one
/// `send` per subscriber: a `writev` of the parts cost ~4 % more kernel
/// time per delivery at 10,000 subscribers).
struct Variant {
    /// The lane's wake it starts at ([`Lane::start`]).
    start: usize,
    enc: Encoding,
    cursor: Option<u64>,
    chunk: Bytes,
}

/// The chunk for the lane from `start` on, for `enc` and `client`
/// cursor, made once per lane (until it grows).
fn variant<'a>(
    variants: &'a mut Vec<Variant>,
    state: &AppState,
    start: usize,
    a: &Appended,
    w: &Wake,
    enc: Encoding,
    client: Option<u64>,
) -> &'a Variant {
    if let Some(i) = variants
        .iter()
        .position(|v| v.start == start && v.enc == enc && v.cursor == client)
    {
        return &variants[i];
    }
    let data = if a.records.iter().all(Bytes::is_empty) {
        Bytes::new()
    } else {
        a.sse
            .get_or_init(|| Bytes::from(sse::data_event_of(&a.records, enc)))
            .clone()
    };
    let eof = w.closed;
    let c = (!eof).then(|| cursor(state, client));
    let control = sse::control_bytes(&w.tail.to_string(), c.as_deref(), true, eof);
    let len = data.len() + control.len();
    let size = format!("{len:x}\r\n");
    let mut chunk = Vec::with_capacity(size.len() + len + 2);
    chunk.extend_from_slice(size.as_bytes());
    chunk.extend_from_slice(&data);
    chunk.extend_from_slice(&control);
    chunk.extend_from_slice(b"\r\n");
    variants.push(Variant {
        start,
        enc,
        cursor: client,
        chunk: Bytes::from(chunk),
    });
    variants.last().expect("just pushed")
}

/// How a write to a parked socket went.
pub(super) enum Wrote {
    Full,
    /// The socket took part (or nothing): the rest.
    Partial(Bytes),
    /// The connection is gone.
    Failed,
}

/// Writes `parts` (at most [`MAX_PARTS`]) to a non-blocking socket
/// without waiting.
pub(super) fn write_now<B: AsRef<[u8]>>(tcp: &std::net::TcpStream, parts: &[B]) -> Wrote {
    let parts = &parts[..parts.len().min(MAX_PARTS)];
    let total: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let mut slices = [IoSlice::new(&[]); MAX_PARTS];
    for (s, p) in slices.iter_mut().zip(parts) {
        *s = IoSlice::new(p.as_ref());
    }
    let slices = &slices[..parts.len()];
    let written = loop {
        let wrote = crate::http::sock::send(tcp.as_fd(), slices);
        match wrote {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(_) => return Wrote::Failed,
        }
    };
    if written == total {
        return Wrote::Full;
    }
    let mut rest = Vec::with_capacity(total - written);
    let mut skip = written;
    for p in parts.iter().map(AsRef::as_ref) {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        rest.extend_from_slice(&p[skip..]);
        skip = 0;
    }
    Wrote::Partial(Bytes::from(rest))
}

/// Most parts of one [`write_now`]: a long-poll answer's head and its
/// records, merged from up to [`MERGE_MAX`] wakes.
const MAX_PARTS: usize = MERGE_MAX + 2;

/// What becomes of a member after a wake.
enum Then {
    Stay,
    /// A long-poller answered, its connection now waiting for the next
    /// request.
    Answered,
    Leave(Why),
    Drop,
}

/// Members handed one wake between two yields (~10-20 ms of writes: other
/// tasks on this worker wait no longer than that; yielding every 256 cost
/// fan-out p99 ~30 %). A pass over more SSE subscribers than this runs
/// off the workers instead ([`hand_out`]).
/// (Tests use small batches, so that their few members make passes of
/// several batches and lanes that grow in the middle of one.)
const BATCH: usize = if cfg!(test) { 2 } else { 1024 };

/// Members written between two looks for wakes that join the lane.
const PULL: usize = if cfg!(test) { 1 } else { 64 };

/// Hands the lane to the members in `keys` (those that left meanwhile are
/// skipped; one that took a freed key meanwhile gets the lane from where
/// it stands, as any member); returns those that become active.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    p: &Parking,
    state: &AppState,
    name: &str,
    conns: &Spawn,
    inner: &mut Inner,
    lane: &mut Lane,
    keys: &[usize],
    variants: &mut Vec<Variant>,
) -> Vec<Unpark> {
    let now = p.tick();
    let mut leaving = Vec::new();
    let idle = now + conns.idle().as_millis() as u64;
    let Inner { members, info, .. } = inner;
    let mut to = Answering {
        state,
        conns,
        path: None,
        name,
        idle,
        answered: 0,
    };
    for &k in keys {
        let Some(m) = members.get_mut(k) else {
            continue;
        };
        match deliver(m, lane, info.as_ref(), &mut to, variants, now) {
            Then::Stay | Then::Answered => {}
            then => leaving.push((k, then)),
        }
    }
    if to.answered > 0 {
        // No longer parked readers: connections between polls
        // (`Parking::remove` counts them out of that).
        p.metrics.parked.fetch_sub(to.answered, Ordering::Relaxed);
        p.metrics
            .between_polls
            .fetch_add(to.answered, Ordering::Relaxed);
        p.due(idle);
    }
    let mut list = Vec::with_capacity(leaving.len());
    for (k, then) in leaving {
        let Some(member) = p.remove(inner, k) else {
            continue;
        };
        match then {
            Then::Leave(why) => list.push(Unpark { member, why }),
            Then::Drop | Then::Stay | Then::Answered => drop(member),
        }
    }
    list
}

/// What answering a long-poller in the group takes.
struct Answering<'a> {
    state: &'a AppState,
    conns: &'a Spawn,
    name: &'a str,
    /// The request path, made for the first answer.
    path: Option<String>,
    /// The deadline of an answered connection's next request.
    idle: u64,
    /// Members made [`Kind::Answered`].
    answered: u64,
}

/// Answers the long-poller `m` from the records `w` brings (which fit it):
/// the answer is written, and the connection waits for its next request.
fn answer(
    m: &mut Member,
    w: &Wake,
    info: &crate::storage::StreamInfo,
    cursor: Option<u64>,
    to: &mut Answering,
) -> Then {
    let Some(res) = answer_from_wake(to.state, m.next, w, info, cursor) else {
        return Then::Leave(Why::Reread { park: true });
    };
    let path = to
        .path
        .get_or_insert_with(|| format!("{}{}", crate::MOUNT, to.name));
    // The fast path's part (the rate limiter's slot with it) goes with the
    // answer.
    let Some((segs, keep)) = to.conns.encode(res, m.finish.take(), path, m.keep) else {
        return Then::Leave(Why::Reread { park: true });
    };
    m.kind = Kind::Answered;
    to.answered += 1;
    m.live = None;
    m.keep = keep;
    m.next = w.tail;
    m.deadline = to.idle;
    match write_now(&m.tcp, &segs) {
        Wrote::Full if keep => Then::Answered,
        Wrote::Full | Wrote::Failed => Then::Drop,
        Wrote::Partial(rest) => Then::Leave(Why::Written(rest)),
    }
}

/// Hands `m` the lane from where it stands.
fn deliver(
    m: &mut Member,
    lane: &mut Lane,
    info: Option<&crate::storage::StreamInfo>,
    to: &mut Answering,
    variants: &mut Vec<Variant>,
    now: u64,
) -> Then {
    if let Kind::Answered = m.kind {
        return Then::Stay;
    }
    // Parked readers are never at EOF, so records ending at their offset
    // without a closure are what they have already.
    let tail = lane.tail();
    if tail.pos < m.next.pos || (lane.has_records() && tail == m.next && !lane.closed()) {
        return Then::Stay;
    }
    let Some(start) = lane.start(m.id, m.next) else {
        return Then::Leave(Why::Reread { park: true });
    };
    let w = lane.from(start);
    let a = w.appended.as_ref().expect("a lane's start carries records");
    match m.kind {
        Kind::Answered => Then::Stay,
        Kind::LongPoll { cursor } => match info.filter(|i| i.id == m.id) {
            Some(i) => answer(m, w, i, cursor, to),
            None => Then::Leave(Why::Reread { park: true }),
        },
        Kind::Sse { enc, cursor } => {
            let v = variant(variants, to.state, start, a, w, enc, cursor);
            let wrote = write_now(&m.tcp, &[&v.chunk]);
            m.next = w.tail;
            m.last_write = now;
            match wrote {
                Wrote::Full if w.closed => Then::Leave(Why::End(None)),
                Wrote::Full => Then::Stay,
                Wrote::Partial(rest) if w.closed => Then::Leave(Why::End(Some(rest))),
                Wrote::Partial(rest) => Then::Leave(Why::Partial(rest)),
                Wrote::Failed => Then::Drop,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Parking;

    /// One pass per worker at most runs off the workers; a leave given
    /// back makes room for the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_one_pass_per_worker_runs_aside() {
        let (p, _poll) = Parking::new(crate::metrics::Metrics::new()).unwrap();
        let a = p.aside().expect("first");
        let b = p.aside().expect("second");
        assert!(p.aside().is_none(), "two workers, two leaves");
        drop(a);
        let c = p.aside().expect("one given back");
        assert!(p.aside().is_none());
        drop((b, c));
        assert!(p.aside().is_some());
    }

    /// A current-thread runtime cannot lend its one worker
    /// (`block_in_place` would panic there): every pass yields instead.
    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_runs_no_pass_aside() {
        let (p, _poll) = Parking::new(crate::metrics::Metrics::new()).unwrap();
        assert!(p.aside().is_none());
    }
}
