//! Cross-node wake-ups: one `LISTEN ds_wake` connection per node.
//!
//! Every committing transaction (on any node) queues a notification per
//! changed stream ([`super::writer::wake_payload`]); PostgreSQL delivers it
//! at commit. This thread turns each one from another node into a wake of
//! the local readers of that stream (this node's own commits wake its
//! readers directly). Whenever the connection is (re-)established, every
//! local reader is told to re-read ([`WakeHub::wake_all`]), because
//! notifications sent while it was down are lost; so nothing is missed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::pool::Conn;
use super::{Shared, WAKE_CHANNEL};
use crate::notify::Wake;
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
        {
            let mut notifications = conn.client.notifications();
            let mut iter = notifications.timeout_iter(POLL);
            loop {
                match iter.next() {
                    Ok(Some(n)) => deliver(shared, n.payload()),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "postgres storage: notification stream failed");
                        return;
                    }
                }
            }
        }
        if conn.is_closed() {
            return;
        }
    }
}

/// Wakes the local readers a notification names, unless it is this node's.
fn deliver(shared: &Shared, payload: &str) {
    let mut parts = payload.splitn(5, '\t');
    let (Some(node), Some(seq), Some(pos), Some(closed), Some(name)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        tracing::debug!(payload, "postgres storage: malformed notification ignored");
        return;
    };
    if node == shared.node {
        return;
    }
    let (Ok(seq), Ok(pos)) = (seq.parse(), pos.parse()) else {
        return;
    };
    shared
        .hub
        .wake(name, Wake::bare(Offset::new(seq, pos), closed == "1"));
}
