//! The parking's reactor: one thread waiting on the epoll set of every
//! parked socket. It frees the slot of a client that hangs up at once,
//! makes active a reader whose client sends something (a pipelined
//! request, or an answered long-poller's next one), writes SSE keep-alives,
//! makes active the readers whose deadline (reconnect interval, long-poll
//! timeout) has come, and closes answered connections left idle too long.
//!
//! Deadlines are found by a scan of the members, at the earliest due time
//! and at most every [`SCAN_GAP`]: no timer per reader. A scan is a
//! comparison per member (10,000 readers: well under a millisecond).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fanout::{Wrote, write_now};
use super::{Kind, Parking, Spawn, Unpark, WAKER, Why, untoken};
use crate::http::AppState;

/// Closest two scans follow each other (and so the lateness a deadline
/// may have, at most).
const SCAN_GAP: u64 = 20;
/// Longest wait without a scan (new members may be due early).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A keep-alive comment as one chunk of the chunked SSE body.
const KEEPALIVE: &[u8] = b"e\r\n: keep-alive\n\n\r\n";

/// Starts the reactor thread, and the task that tells it of shutdown.
pub(in crate::http) fn start(
    p: Arc<Parking>,
    poll: mio::Poll,
    state: AppState,
    spawn: Spawn,
) -> io::Result<()> {
    let shutdown = state.shutdown.clone();
    let q = Arc::downgrade(&p);
    let conns = Arc::clone(&spawn);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        if let Some(q) = q.upgrade() {
            q.poke();
            q.release_held(&conns);
        }
    });
    std::thread::Builder::new()
        .name("ds-park".into())
        .spawn(move || run(p, poll, &state, &spawn))?;
    Ok(())
}

fn run(p: Arc<Parking>, mut poll: mio::Poll, state: &AppState, spawn: &Spawn) {
    let p = &p;
    let mut events = mio::Events::with_capacity(256);
    loop {
        // At shutdown the group tasks hand their members back (see
        // `fanout`); a lot nobody else holds (its listener is gone, and
        // every group with it) has nothing left to watch.
        if state.shutdown.is_cancelled() || Arc::strong_count(p) == 1 {
            return;
        }
        let now = p.tick();
        let next = p.next_scan.load(Ordering::Acquire);
        let wait = Duration::from_millis(next.saturating_sub(now)).min(MAX_WAIT);
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::warn!(error = %e, "parked readers: poll failed");
            std::thread::sleep(Duration::from_millis(50));
        }
        for ev in &events {
            if ev.token() != WAKER {
                check(p, ev, spawn);
            }
        }
        if p.tick() >= p.next_scan.load(Ordering::Acquire) {
            scan(p, state, spawn);
        }
    }
}

/// A parked socket became readable: the client hung up (the member goes)
/// or sent something (it becomes active, and stays so).
fn check(p: &Parking, ev: &mio::event::Event, spawn: &Spawn) {
    let (gid, key) = untoken(ev.token());
    let Some(g) = p.group_by_id(gid) else {
        return;
    };
    let mut inner = g.inner.lock();
    let Some(m) = inner.members.get(key) else {
        return;
    };
    // Readable with the peer's side still open: bytes came (an answered
    // poller's next request, most often), which nobody reads while the
    // socket is parked, so no `peek` is needed to tell (one syscall per
    // poll). After a hang-up or an error, `peek` tells whether bytes came
    // before it.
    let input = if ev.is_readable() && !ev.is_read_closed() && !ev.is_error() {
        true
    } else {
        let mut probe = [0u8; 1];
        match m.tcp.peek(&mut probe) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => false,
        }
    };
    let member = p.remove(&mut inner, key);
    let empty = inner.members.is_empty();
    drop(inner);
    if let Some(member) = member {
        if input && matches!(member.kind, Kind::Answered) {
            p.next_poll(&g, member, spawn);
        } else if input {
            let why = Why::Reread { park: false };
            p.unpark(&g, vec![Unpark { member, why }], spawn);
        } else {
            drop(member);
        }
    }
    if empty {
        g.emptied.notify_one();
    }
}

/// Writes due keep-alives and makes active the members whose deadline
/// came; plans the next scan.
fn scan(p: &Parking, state: &AppState, spawn: &Spawn) {
    // Parks from here on lower it again (`Parking::due`).
    p.next_scan.store(u64::MAX, Ordering::Release);
    let now = p.tick();
    let every = state.config.sse_keepalive.as_millis() as u64;
    let mut next = u64::MAX;
    for g in p.all_groups() {
        let mut leaving = Vec::new();
        let mut inner = g.inner.lock();
        for (k, m) in inner.members.iter_mut() {
            if m.deadline <= now {
                // An answered connection whose next request did not come
                // in time closes, as an idle one does.
                let why = match m.kind {
                    Kind::Answered => None,
                    _ => Some(Why::Reread { park: false }),
                };
                leaving.push((k, why));
                continue;
            }
            next = next.min(m.deadline);
            if let Kind::Sse { .. } = m.kind {
                if now >= m.last_write.saturating_add(every) {
                    m.last_write = now;
                    match write_now(&m.tcp, &[KEEPALIVE]) {
                        Wrote::Full => {}
                        Wrote::Partial(rest) => {
                            leaving.push((k, Some(Why::Partial(rest))));
                            continue;
                        }
                        Wrote::Failed => {
                            leaving.push((k, None));
                            continue;
                        }
                    }
                }
                next = next.min(m.last_write.saturating_add(every));
            }
        }
        let mut list = Vec::with_capacity(leaving.len());
        for (k, why) in leaving {
            if let Some(member) = p.remove(&mut inner, k)
                && let Some(why) = why
            {
                list.push(Unpark { member, why });
            }
        }
        let empty = inner.members.is_empty();
        drop(inner);
        p.unpark(&g, list, spawn);
        if empty {
            g.emptied.notify_one();
        }
    }
    if next != u64::MAX {
        // This thread is the one that waits: no need to wake it.
        p.next_scan
            .fetch_min(next.max(now + SCAN_GAP), Ordering::AcqRel);
    }
}
