//! Driving a connection: the loop that reads a head, answers it and goes
//! on with the next one (or hands the connection to hyper for HTTP/2),
//! and one request/response exchange: running the handler while feeding
//! it the body, then writing the response and draining what the handler
//! left unread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{Method, Request};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::{ReqBody, Slot, feed};
use super::conn::{Conn, DRAIN_MAX, Next};
use super::decode::Decoder;
use super::role::{Framing, Head};
use crate::http::front::Front;
use crate::http::limit::ClientAddr;
use crate::http::transport::{Builder, Guarded, Timeouts, serve_hyper};

/// Buffered bodies up to this are copied out of the read buffer.
const COPY_BODY: usize = 2048;

/// Serves one accepted connection until it closes.
pub(in crate::http) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    front: Arc<Front>,
    hyper: Arc<Builder<TokioExecutor>>,
    t: Timeouts,
    shutdown: CancellationToken,
) {
    let mut c = Conn::new(tcp, t, &shutdown);
    let mut first = true;
    let tag = front.wants_client_addr();
    loop {
        let mut head = match c.read_head(first).await {
            Ok(Next::Head(h)) => h,
            Ok(Next::Closed) => return,
            Ok(Next::H2) => {
                // Boxed: rare, and hyper's connection future is large.
                let io = Guarded::resumed(c.tcp, t, c.buf.split().freeze());
                return Box::pin(serve_hyper(&hyper, io, peer, front, shutdown)).await;
            }
            Ok(Next::Bad(status)) => {
                let _ = c.reject(status).await;
                return c.close(true).await;
            }
            Err(e) => return tracing::debug!(error = %e, "connection failed reading a head"),
        };
        first = false;
        if tag {
            head.parts.extensions.insert(ClientAddr(peer));
        }
        // Boxed: the handler's state machine exists only during a request,
        // not in every idle connection's task.
        match Box::pin(c.exchange(head, &front, &shutdown)).await {
            Ok(Keep::Yes) => {}
            Ok(Keep::No { unread }) => return c.close(unread).await,
            Err(e) => return tracing::debug!(error = %e, "connection ended with an error"),
        }
        if c.buf.is_empty() {
            // Idle connections hold no buffer (see the module docs).
            c.buf = BytesMut::new();
        }
    }
}

/// Whether the connection goes on after an exchange.
enum Keep {
    /// Read the next request.
    Yes,
    /// Close; `unread`: the client may still be sending.
    No { unread: bool },
}

impl Conn {
    /// Answers one request: runs the handler (feeding it the body), writes
    /// the response, drains what the handler left of the body.
    async fn exchange(
        &mut self,
        head: Box<Head>,
        front: &Front,
        shutdown: &CancellationToken,
    ) -> io::Result<Keep> {
        let Head {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = *head;
        let is_head = parts.method == Method::HEAD;
        let version = parts.version;
        let mut dec = Decoder::new(framing);
        let mut continued = false;
        // The handler's future is boxed apart from this one: otherwise this
        // future reserves room for it (several KiB) all through `respond`,
        // i.e. for as long as an SSE response streams, long after the
        // handler returned (measured: `live_heap_tests`, BENCHMARKS.md).
        let res = match framing {
            Framing::Empty => {
                Box::pin(front.handle(Request::from_parts(parts, ReqBody::Empty))).await
            }
            Framing::Length(n) if self.buf.len() as u64 >= n => {
                // Small bodies are copied out: the memory backend keeps the
                // `Bytes` it is given, so a zero-copy 1-byte append pinned
                // the whole read buffer (~6 KiB of RSS per stored append,
                // measured, with hyper too), and the buffer stays reusable.
                let body = if n <= COPY_BODY as u64 {
                    let b = Bytes::copy_from_slice(&self.buf[..n as usize]);
                    self.buf.advance(n as usize);
                    b
                } else {
                    self.buf.split_to(n as usize).freeze()
                };
                dec = Decoder::Length(0);
                let req = Request::from_parts(parts, ReqBody::Full(Some(body)));
                Box::pin(front.handle(req)).await
            }
            _ => {
                let slot = Arc::new(Slot::default());
                let remaining = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let body = ReqBody::Stream {
                    slot: Arc::clone(&slot),
                    remaining,
                };
                let mut handler = Box::pin(front.handle(Request::from_parts(parts, body)));
                let feed = feed(
                    &self.tcp,
                    &mut self.buf,
                    &mut dec,
                    &slot,
                    expect_continue.then_some(&mut continued),
                    self.t.send,
                );
                tokio::select! {
                    biased;
                    r = &mut handler => r,
                    () = feed => handler.await,
                }
            }
        };
        let Ok(res) = res;
        if self.buf.is_empty() {
            // Not held through a long response (an SSE stream).
            self.buf = BytesMut::new();
        }
        let mut drain = false;
        if !dec.done() {
            if expect_continue && !continued {
                // The client waits for our word before sending the body.
                keep_alive = false;
            } else {
                match dec {
                    Decoder::Length(n) if n <= DRAIN_MAX => drain = true,
                    Decoder::Chunked(..) => drain = true,
                    _ => keep_alive = false,
                }
            }
        }
        keep_alive &= !shutdown.is_cancelled();
        let keep = self.respond(res, is_head, version, keep_alive).await?;
        if !keep {
            return Ok(Keep::No {
                unread: !dec.done(),
            });
        }
        if drain && !self.drain(&mut dec).await {
            return Ok(Keep::No { unread: true });
        }
        Ok(Keep::Yes)
    }
}
