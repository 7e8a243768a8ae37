//! Connection plumbing both HTTP engines share: the connection timeouts,
//! the guarded socket that enforces them on hyper's connections, and
//! serving one connection with hyper (the `hyper` engine, and HTTP/2 that
//! [`h1`](super::h1) hands over when it sees the preface).
//!
//! It depends on neither [`serve`](super::serve) (which accepts
//! connections and picks an engine) nor [`h1`](super::h1) (our own engine),
//! so the two depend on it and not on each other's internals.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
pub(super) use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::front::Front;
use super::limit::ClientAddr;

/// Largest buffered request head and body chunk per connection.
const MAX_BUF: usize = 64 * 1024;

/// The connection-level timeouts (see [`serve`](super::serve)).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a request head (and a new connection's first byte) may take
    /// to arrive, counted from the accept or the previous response.
    pub header_read: Duration,
    /// How long a write may make no progress before the connection closes.
    pub send: Duration,
}

/// hyper's connection builder: HTTP/1.1 or HTTP/2 by the first bytes.
pub(super) fn builder(timeouts: Timeouts) -> Builder<TokioExecutor> {
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
    peer: SocketAddr,
    front: Arc<Front>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tag = front.wants_client_addr();
    // Boxed: hyper keeps one future slot per connection for its whole
    // life, sized for this future; unboxed that is every handler's
    // state machine, paid by each idle or SSE connection.
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        let front = Arc::clone(&front);
        if tag {
            req.extensions_mut().insert(ClientAddr(peer));
        }
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

/// A TCP stream that fails a read when the client sends nothing at all
/// within `first_byte`, and a write that makes no progress for `send`.
/// A connection resumed from [`h1`](super::h1) first replays the bytes it
/// already read (looking for the HTTP/2 preface).
pub(super) struct Guarded {
    tcp: TcpStream,
    /// Bytes read before hyper took over, replayed before reading on.
    prefix: Bytes,
    /// Until the first byte arrives: the deadline for it.
    first_byte: Option<Pin<Box<Sleep>>>,
    send: Duration,
    /// Running while a write is blocked on a full socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    /// A fresh connection: nothing was read yet, so the first-byte deadline
    /// applies.
    pub(super) fn new(tcp: TcpStream, t: Timeouts) -> Self {
        Guarded {
            tcp,
            prefix: Bytes::new(),
            first_byte: Some(Box::pin(tokio::time::sleep(t.header_read))),
            send: t.send,
            stalled: None,
        }
    }

    /// A connection whose first bytes, `prefix`, were already read: they
    /// are replayed, and no first-byte deadline applies.
    pub(super) fn resumed(tcp: TcpStream, t: Timeouts, prefix: Bytes) -> Self {
        Guarded {
            tcp,
            prefix,
            first_byte: None,
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
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
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
