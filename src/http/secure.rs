//! HTTPS: the TLS handshake, then HTTP/2 or HTTP/1.1 by ALPN, both served
//! by hyper and both calling the same [`Front`] as plain connections (so
//! auth, CORS, metrics and the request log are the same).
//!
//! Why hyper for HTTP/1.1 over TLS too: [`h1`](super::h1) waits on
//! `TcpStream::readable()` and reads with `try_read` so that an idle
//! connection holds no buffer; a TLS session cannot be read that way (its
//! records must be decrypted whole, into rustls's buffer), so the engine's
//! saving does not exist there and hyper's loop is used.
//!
//! The guards of plain connections hold here too: the socket under TLS is
//! a `Guarded` one (a first byte within `header_read_timeout`, a write
//! that stalls for `send_timeout` fails), and the whole handshake must end
//! within `header_read_timeout`. A client that sends garbage instead of a
//! ClientHello gets a TLS alert and the connection is closed.
//!
//! HTTP/2 connections are tuned for many long-lived SSE responses: at most
//! `h2_max_concurrent_streams` open streams, small per-stream send buffers
//! (a slow subscriber holds little memory), receive windows that let a few
//! uploads run at once without one connection buffering megabytes, PINGs
//! that find dead peers under idle SSE streams, and an idle timeout: a
//! connection with no open stream for `header_read_timeout` is closed, as
//! HTTP/1.1 keep-alive connections are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::front::Front;
use super::limit::ClientAddr;
use super::transport::{Builder, Guarded, Timeouts, builder};

/// Per-stream receive window (request bodies), in bytes.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection-wide receive window: a few concurrent uploads at full speed.
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Most response bytes buffered per stream before hyper waits for the
/// client's window: an SSE event or two, not megabytes per subscriber.
const SEND_BUFFER: usize = 64 * 1024;
/// PING an HTTP/2 connection that has been silent this long...
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and close it when the answer takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything HTTPS connections share: the acceptor (whose certificate
/// resolver may be swapped meanwhile) and one hyper builder per protocol.
pub struct Tls {
    acceptor: TlsAcceptor,
    h1: Builder<TokioExecutor>,
    h2: Builder<TokioExecutor>,
    /// An HTTP/2 connection without open streams is closed after this.
    idle: Duration,
}

impl Tls {
    /// HTTPS with `config` (see [`crate::tls::server::config`]).
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        timeouts: Timeouts,
        max_streams: usize,
    ) -> Arc<Self> {
        let mut h2 = builder(timeouts).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(u32::try_from(max_streams).unwrap_or(u32::MAX))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(SEND_BUFFER)
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT);
        Arc::new(Tls {
            acceptor: TlsAcceptor::from(config),
            h1: builder(timeouts).http1_only(),
            h2,
            idle: timeouts.header_read,
        })
    }
}

/// Serves one accepted connection over TLS until it closes.
pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<Tls>,
    front: Arc<Front>,
    t: Timeouts,
    shutdown: CancellationToken,
) {
    let handshake = tls.acceptor.accept(Guarded::new(tcp, t));
    let stream = match tokio::time::timeout(t.header_read, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake refused"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::default());
    let seen = Arc::clone(&activity);
    let tag = front.wants_client_addr();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        let front = Arc::clone(&front);
        let open = Open::new(&seen);
        if tag {
            req.extensions_mut().insert(ClientAddr(peer));
        }
        Box::pin(async move {
            let res = front.handle(req).await?;
            // The stream stays open until its body is done (SSE: until the
            // subscriber leaves), so the guard travels with the body.
            Ok::<_, std::convert::Infallible>(res.map(|body| {
                axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _held = &open;
                    f
                }))
            }))
        })
    });
    let builder = if h2 { &tls.h2 } else { &tls.h1 };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = tls.idle;
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "TLS connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
        // HTTP/1.1 has hyper's own keep-alive timeout (header_read_timeout).
        _ = activity.idle_for(idle), if h2 => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How many requests of a connection are open (their response bodies not
/// yet finished or dropped), and a count of every request ever started.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    started: AtomicU64,
    /// Signalled when the last open request closes.
    quiet: Notify,
}

impl Activity {
    /// Resolves once no request has been open for `idle` in a row.
    async fn idle_for(&self, idle: Duration) {
        loop {
            if self.open.load(Ordering::Acquire) > 0 {
                self.quiet.notified().await;
                continue;
            }
            let before = self.started.load(Ordering::Acquire);
            tokio::time::sleep(idle).await;
            if self.open.load(Ordering::Acquire) == 0
                && self.started.load(Ordering::Acquire) == before
            {
                return;
            }
        }
    }
}

/// One open request; dropped with its response body.
struct Open(Arc<Activity>);

impl Open {
    fn new(a: &Arc<Activity>) -> Self {
        a.started.fetch_add(1, Ordering::AcqRel);
        a.open.fetch_add(1, Ordering::AcqRel);
        Open(Arc::clone(a))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit if nobody waits: `idle_for` sees it next.
            self.0.quiet.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_quiet_period_without_open_requests() {
        let a = Arc::new(Activity::default());
        let open = Open::new(&a);
        let idle = a.idle_for(Duration::from_secs(10));
        tokio::pin!(idle);
        // An open request (an SSE subscriber) keeps the connection.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), idle.as_mut())
                .await
                .is_err()
        );
        drop(open);
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        // A request that came and went restarts the quiet period.
        drop(Open::new(&a));
        idle.await;
        assert!(
            t0.elapsed() >= Duration::from_secs(15),
            "{:?}",
            t0.elapsed()
        );
    }
}
