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
//! Shutdown stops accepting, asks every connection to finish its current
//! request, and resolves once all are closed (the caller bounds the wait).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
pub(super) use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::front::Front;
use crate::config::HttpEngine;

/// Largest buffered request head and body chunk per connection.
const MAX_BUF: usize = 64 * 1024;

/// The connection-level timeouts (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub send: Duration,
}

/// Serves `front` on `listener` until `shutdown` is cancelled and every
/// connection has closed. HTTP/1.1 with keep-alive (by `engine`: our own
/// loop in [`h1`](super::h1) or hyper's), or HTTP/2 with prior knowledge
/// (always hyper); `TCP_NODELAY` on every socket so small answers and SSE
/// events leave at once.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    timeouts: Timeouts,
    engine: HttpEngine,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Each connection task holds a receiver; `closed()` resolves when all
    // of them are gone.
    let (conns, _) = tokio::sync::watch::channel(());
    let builder = Arc::new(builder(timeouts));
    loop {
        let (tcp, _peer) = tokio::select! {
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
        match engine {
            HttpEngine::Native => tokio::spawn(async move {
                super::h1::serve(tcp, front, builder, timeouts, shutdown).await;
                drop(done);
            }),
            HttpEngine::Hyper => tokio::spawn(async move {
                let io = Guarded::new(tcp, timeouts, true);
                serve_hyper(&builder, io, front, shutdown).await;
                drop(done);
            }),
        };
    }
    drop(listener);
    conns.closed().await;
    Ok(())
}

/// hyper's connection builder: HTTP/1.1 or HTTP/2 by the first bytes.
fn builder(timeouts: Timeouts) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .writev(true)
        .max_buf_size(MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
}

/// Serves one connection with hyper until it closes, finishing the current
/// request when `shutdown` fires.
pub(super) async fn serve_hyper<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    front: Arc<Front>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: hyper keeps one future slot per connection for its whole
    // life, sized for this future; unboxed that is every handler's
    // state machine, paid by each idle or SSE connection.
    let service = hyper::service::service_fn(move |req| {
        let front = Arc::clone(&front);
        Box::pin(async move { front.handle(req).await })
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A connection whose first bytes were already read (by [`h1`](super::h1),
/// looking for the HTTP/2 preface): replays them, then reads on.
pub(super) struct Rewind {
    pub prefix: bytes::Bytes,
    pub inner: Guarded,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP stream that fails a read when the client sends nothing at all
/// within `first_byte`, and a write that makes no progress for `send`.
pub(super) struct Guarded {
    tcp: TcpStream,
    /// Until the first byte arrives: the deadline for it.
    first_byte: Option<Pin<Box<Sleep>>>,
    send: Duration,
    /// Running while a write is blocked on a full socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    /// `fresh`: nothing was read yet, so the first-byte deadline applies.
    pub(super) fn new(tcp: TcpStream, t: Timeouts, fresh: bool) -> Self {
        Guarded {
            tcp,
            first_byte: fresh.then(|| Box::pin(tokio::time::sleep(t.header_read))),
            send: t.send,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has stalled too long.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let send = self.send;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + send)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no response bytes within send_timeout",
        )))
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.pending_write(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.first_byte = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within header_read_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.wrote(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.tcp).poll_flush(cx);
        self.wrote(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
