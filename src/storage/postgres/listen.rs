//! Cross-node wake-ups: one `LISTEN ds_wake` connection per node.
//!
//! Every committing transaction (on any node) queues a notification per
//! changed stream ([`wake_payload`]); PostgreSQL delivers it
//! at commit. This thread turns each one from another node into a wake of
//! the local readers of that stream (this node's own commits wake its
//! readers directly). Whenever the connection is (re-)established, every
//! local reader is told to re-read ([`WakeHub::wake_all`](crate::notify::WakeHub::wake_all)), because
//! notifications sent while it was down are lost; so nothing is missed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::pool::Conn;
use super::read;
use super::{Shared, WAKE_CHANNEL};
use crate::notify::{Appended, Wake};
use crate::offset::Offset;

/// How often the thread checks for shutdown while no notification arrives.
const POLL: Duration = Duration::from_millis(250);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs until the storage shuts down.
pub(super) fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let mut was_down = false;
    while !shared.stopping.load(Ordering::Relaxed) {
        let mut conn = match Conn::open(shared.pool.target()) {
            Ok(c) => c,
            Err(e) => {
                if !was_down {
                    tracing::warn!(error = %e, "postgres storage: wake listener cannot connect; retrying");
                    was_down = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(e) = conn.client.batch_execute(&format!("LISTEN {WAKE_CHANNEL}")) {
            tracing::warn!(error = %e, "postgres storage: LISTEN failed; retrying");
            std::thread::sleep(backoff);
            continue;
        }
        if was_down {
            tracing::info!("postgres storage: wake listener reconnected");
            was_down = false;
        }
        backoff = Duration::from_millis(50);
        shared.listening.store(true, Ordering::Relaxed);
        // Whatever was announced while nobody listened: re-read.
        shared.hub.wake_all();
        listen(&shared, &mut conn);
        shared.listening.store(false, Ordering::Relaxed);
        if !shared.stopping.load(Ordering::Relaxed) {
            tracing::warn!("postgres storage: wake listener lost its connection; reconnecting");
            was_down = true;
            // The others most likely went with it, unbeknownst to them.
            shared.pool.invalidate();
        }
    }
}

/// Delivers notifications until the connection fails or the storage stops.
fn listen(shared: &Shared, conn: &mut Conn) {
    while !shared.stopping.load(Ordering::Relaxed) {
        // The first notification (waiting up to POLL), then whatever else
        // has arrived, so the connection is free for reading records.
        let batch = {
            let mut notifications = conn.client.notifications();
            let first = notifications.timeout_iter(POLL).next();
            match first {
                Ok(Some(first)) => {
                    let mut batch = vec![first];
                    let mut pending = notifications.iter();
                    while let Ok(Some(n)) = pending.next() {
                        batch.push(n);
                    }
                    batch
                }
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "postgres storage: notification stream failed");
                    return;
                }
            }
        };
        for n in &batch {
            if let Some((name, wake)) = parse(shared, n.payload()) {
                let wake = with_records(shared, conn, &name, wake);
                shared.hub.wake(&name, wake);
            }
        }
        if conn.is_closed() {
            return;
        }
    }
}

/// `NODE \t SEQ \t POS \t CLOSED \t ID \t FROM_SEQ \t FROM_POS \t NAME`:
/// what another node needs to wake its readers of `name` (read back by
/// [`parse`]). When the batch holds exactly the records that moved
/// the tail, `ID` (the incarnation) and `FROM` (where they start) let that
/// node read them once for all its readers; otherwise `ID` is 0.
pub(super) fn wake_payload(node: &str, name: &str, w: &Wake) -> String {
    let (id, from) = w
        .appended
        .as_ref()
        .map_or((0, Offset::ZERO), |a| (a.id, a.from));
    format!(
        "{node}\t{}\t{}\t{}\t{id}\t{}\t{}\t{name}",
        w.tail.seq,
        w.tail.pos,
        u8::from(w.closed),
        from.seq,
        from.pos
    )
}

/// A notification from another node, as a wake (records not yet read).
/// `None` for this node's own and for malformed ones.
fn parse(shared: &Shared, payload: &str) -> Option<(String, Wake)> {
    let mut parts = payload.splitn(8, '\t');
    let mut next = || parts.next();
    let (node, seq, pos, closed) = (next()?, next()?, next()?, next()?);
    let (id, from_seq, from_pos, name) = (next()?, next()?, next()?, next()?);
    if node == shared.node {
        return None;
    }
    let tail = Offset::new(seq.parse().ok()?, pos.parse().ok()?);
    let mut wake = Wake::bare(tail, closed == "1");
    let id: u64 = id.parse().ok()?;
    if id != 0 {
        let from = Offset::new(from_seq.parse().ok()?, from_pos.parse().ok()?);
        // Placeholder records: filled in by `with_records`.
        wake.appended = Some(Appended::new(id, from, Vec::new()));
    }
    Some((name.to_string(), wake))
}

/// Reads, once for every local reader, the records a wake announces, so
/// that readers waiting at the old tail answer without a query each. A wake
/// whose records cannot be read exactly goes out bare (readers re-read).
fn with_records(shared: &Shared, conn: &mut Conn, name: &str, mut wake: Wake) -> Wake {
    let Some(announced) = wake.appended.take() else {
        return wake;
    };
    if !shared.hub.has_waiters(name) {
        return wake;
    }
    if let Ok(Some(records)) = read::range(conn, announced.id, announced.from, wake.tail)
        && !records.is_empty()
    {
        wake.appended = Some(Appended::new(announced.id, announced.from, records));
    }
    wake
}
