//! Leadership: which node runs the subscription engine.
//!
//! Every node that has advertised its URL tries to take a session-level
//! advisory lock ([`LEADER_LOCK`]) on a connection of its own. The holder
//! leads and records its URL in `ds_leader` (so the others can forward
//! subscription requests to it). PostgreSQL releases the lock when the
//! holder's session ends: when the node exits, is killed, or loses its
//! connection, so another node takes over within about [`POLL`]. The holder
//! checks its connection every [`POLL`] and gives up leading as soon as the
//! check fails, so two nodes overlap for at most that long.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use super::pool::Conn;
use super::schema::LEADER_LOCK;

/// How often leadership is tried for, or the held lock's connection checked.
pub(super) const POLL: Duration = Duration::from_millis(500);

/// Runs until the storage shuts down.
pub(super) fn run(shared: Arc<Shared>) {
    let mut terms = 0u64;
    while !shared.stopping.load(Ordering::Relaxed) {
        let Some(url) = shared.advertised.lock().clone() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let mut conn = match Conn::open(shared.pool.target()) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        // Holds or tries for the lock until the connection fails.
        while !shared.stopping.load(Ordering::Relaxed) {
            let leading = shared.term.load(Ordering::Relaxed) != 0;
            let ok = if leading {
                conn.client.simple_query("SELECT 1").is_ok()
            } else {
                match try_lead(&mut conn, &shared.node, &url) {
                    Ok(true) => {
                        terms += 1;
                        shared.term.store(terms, Ordering::Relaxed);
                        tracing::info!(node = shared.node, url, "this node now leads");
                        true
                    }
                    Ok(false) => true,
                    Err(_) => false,
                }
            };
            if !ok {
                if shared.term.swap(0, Ordering::Relaxed) != 0 {
                    tracing::warn!("lost the database connection: this node no longer leads");
                }
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    shared.term.store(0, Ordering::Relaxed);
}

/// Takes the lock if free and records this node as the leader.
fn try_lead(conn: &mut Conn, node: &str, url: &str) -> Result<bool, postgres::Error> {
    let got: bool = conn
        .client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?
        .get(0);
    if got {
        conn.client.execute(
            "INSERT INTO ds_leader (id, node, url) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET node = excluded.node, url = excluded.url,
                                            since = now()",
            &[&node, &url],
        )?;
    }
    Ok(got)
}
