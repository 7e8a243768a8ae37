//! Accepting connections and serving them (HTTP/1.1 by [`h1`](super::h1) or
//! hyper, HTTP/2 by hyper), with the timeouts that keep broken or hostile
//! clients from holding a connection forever. What follows describes the
//! hyper path; `h1` keeps the same semantics.
//!
//! `axum::serve` sets no timer, so hyper enforces no header timeout there: a
//! client sending its head one byte a minute (slowloris), or connecting and
//! sending nothing, kept its connection and task forever. Here:
//!
//! * HTTP/1 heads must arrive within `header_read_timeout`; hyper also
//!   applies it to the wait for the next request on a keep-alive connection,
//!   so idle connections are closed after it.
//! * A new connection must send its first byte within the same time (hyper's
//!   HTTP/1-or-2 detection reads before the HTTP/1 timer starts).
//! * A connection that accepts no response bytes for `send_timeout` (an SSE
//!   consumer that stopped reading) fails its writes and is closed; until
//!   then it holds at most the socket buffers and one event.
//!
//! The guarded socket that enforces the last two on hyper's connections,
//! and serving a connection with hyper, live in
//! [`transport`](super::transport), shared with `h1`.
//!
//! Shutdown stops accepting, asks every connection to finish its current
//! request, and resolves once all are closed (the caller bounds the wait).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::front::Front;
use super::secure::{self, Tls};
pub use super::transport::Timeouts;
use super::transport::{Guarded, builder, serve_hyper};
use crate::config::HttpEngine;

/// Serves `front` on `listener` until `shutdown` is cancelled and every
/// connection has closed. HTTP/1.1 with keep-alive (by `engine`: our own
/// loop in [`h1`](super::h1) or hyper's), or HTTP/2 with prior knowledge
/// (always hyper); `TCP_NODELAY` on every socket so small answers and SSE
/// events leave at once. With `tls`, every connection is HTTPS instead
/// (see [`secure`]).
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    timeouts: Timeouts,
    engine: HttpEngine,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Each connection task holds a receiver; `closed()` resolves when all
    // of them are gone.
    let (conns, _) = tokio::sync::watch::channel(());
    let builder = Arc::new(builder(timeouts));
    let park = front.state().config.live_parking && tls.is_none() && engine == HttpEngine::Native;
    let ctx = super::h1::Ctx::new(
        Arc::clone(&front),
        Arc::clone(&builder),
        timeouts,
        shutdown.clone(),
        park,
    );
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a connection reset before
                    // accept: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let front = Arc::clone(&front);
        let (builder, shutdown, done) = (builder.clone(), shutdown.clone(), conns.subscribe());
        let ctx = Arc::clone(&ctx);
        if let Some(tls) = &tls {
            let tls = Arc::clone(tls);
            tokio::spawn(async move {
                // Boxed: TLS state and hyper's connection are large.
                Box::pin(secure::serve(tcp, peer, tls, front, timeouts, shutdown)).await;
                drop(done);
            });
            continue;
        }
        match engine {
            HttpEngine::Native => tokio::spawn(super::h1::serve(tcp, peer, ctx, done)),
            HttpEngine::Hyper => tokio::spawn(async move {
                let io = Guarded::new(tcp, timeouts);
                serve_hyper(&builder, io, peer, front, shutdown).await;
                drop(done);
            }),
        };
    }
    drop(listener);
    conns.closed().await;
    Ok(())
}
