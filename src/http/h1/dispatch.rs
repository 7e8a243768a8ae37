//! Driving a connection: the loop that reads a head, answers it and goes
//! on with the next one (or hands the connection to hyper for HTTP/2),
//! and one request/response exchange: running the handler while feeding
//! it the body, then writing the response and draining what the handler
//! left unread.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{Method, Request};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::append::COPY_BODY;
use super::body::{ReqBody, Slot, feed};
use super::conn::{Conn, DRAIN_MAX, Encoder, Next, Sent, encode_ready};
use super::decode::Decoder;
use super::io::{READ_CHUNK, write_all};
use super::role::Out;
use super::role::{Framing, Head};
use crate::http::error::ApiError;
use crate::http::front::Front;
use crate::http::limit::ClientAddr;
use crate::http::park::{
    ConnToken, Conns, Finish, Handover, ParkCell, ParkOffer, Parking, Resume, Resumed, Spawn,
    Ticket, reactor,
};
use crate::http::transport::{Builder, Guarded, Timeouts, serve_hyper};
use crate::http::{read, sse};
use axum::body::Body;

/// What every connection of a listener shares.
pub(in crate::http) struct Ctx {
    pub front: Arc<Front>,
    pub hyper: Arc<Builder<TokioExecutor>>,
    pub t: Timeouts,
    pub shutdown: CancellationToken,
    /// Where live readers at rest park, and how a parked one resumes
    /// (`None`: parking is off).
    pub park: Option<(Arc<Parking>, Spawn)>,
}

impl Ctx {
    /// The context of a listener; with `park`, starts its parking lot
    /// (falls back to no parking if that fails).
    pub fn new(
        front: Arc<Front>,
        hyper: Arc<Builder<TokioExecutor>>,
        t: Timeouts,
        shutdown: CancellationToken,
        park: bool,
    ) -> Arc<Ctx> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Ctx>| {
            let park = park
                .then(|| start_parking(weak.clone(), &front, t))
                .flatten();
            Ctx {
                front,
                hyper,
                t,
                shutdown,
                park,
            }
        })
    }
}

/// The parking's view of this engine ([`Conns`]).
struct Engine {
    ctx: std::sync::Weak<Ctx>,
    runtime: tokio::runtime::Handle,
    idle: std::time::Duration,
}

impl Conns for Engine {
    fn resume(&self, r: Resumed) {
        if let Some(ctx) = self.ctx.upgrade() {
            self.runtime.spawn(resume(ctx, r));
        }
    }

    fn encode(
        &self,
        res: Result<axum::response::Response, ApiError>,
        f: Option<Box<Finish>>,
        path: &str,
        keep: bool,
    ) -> Option<(Vec<Bytes>, bool)> {
        let ctx = self.ctx.upgrade()?;
        let res = ctx.front.finish_live(res, f, path);
        encode_ready(res, keep && !ctx.shutdown.is_cancelled())
    }

    fn idle(&self) -> std::time::Duration {
        self.idle
    }
}

fn start_parking(
    ctx: std::sync::Weak<Ctx>,
    front: &Front,
    t: Timeouts,
) -> Option<(Arc<Parking>, Spawn)> {
    let (p, poll) = match Parking::new(Arc::clone(&front.state().metrics)) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "live readers will not park: no epoll set");
            return None;
        }
    };
    let p = Arc::new(p);
    let spawn: Spawn = Arc::new(Engine {
        ctx,
        runtime: tokio::runtime::Handle::current(),
        idle: t.header_read,
    });
    if let Err(e) = reactor::start(
        Arc::clone(&p),
        poll,
        front.state().clone(),
        Arc::clone(&spawn),
    ) {
        tracing::warn!(error = %e, "live readers will not park: no reactor thread");
        return None;
    }
    Some((p, spawn))
}

/// Serves one accepted connection until it closes.
pub(in crate::http) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    token: ConnToken,
) {
    let c = Conn::new(tcp, ctx.t, &ctx.shutdown);
    run(c, peer, ctx, token, true).await
}

/// True for a request that may become a parked live reader: a `GET`
/// without a body asking for `live=`.
fn may_park(head: &Head) -> bool {
    head.parts.method == Method::GET
        && matches!(head.framing, Framing::Empty)
        && head.parts.version == axum::http::Version::HTTP_11
        && head.parts.uri.query().is_some_and(|q| q.contains("live="))
}

/// The request loop of a connection.
async fn run(mut c: Conn, peer: SocketAddr, ctx: Arc<Ctx>, token: ConnToken, mut first: bool) {
    let tag = ctx.front.wants_client_addr();
    let appends = ctx.front.append_limit();
    loop {
        let mut head = match c.read_head(first, appends).await {
            Ok(Next::Head(h)) => h,
            Ok(Next::Append(a)) => {
                first = false;
                match Box::pin(c.append(a, &ctx.front, &ctx.shutdown)).await {
                    Ok(true) => {}
                    Ok(false) => return c.close(false).await,
                    Err(e) => return tracing::debug!(error = %e, "connection ended with an error"),
                }
                if c.buf.is_empty() {
                    c.buf = BytesMut::new();
                }
                continue;
            }
            Ok(Next::Closed) => return,
            Ok(Next::H2) => {
                // Boxed: rare, and hyper's connection future is large.
                let io = Guarded::resumed(c.tcp, ctx.t, c.buf.split().freeze());
                let (front, shutdown) = (Arc::clone(&ctx.front), ctx.shutdown.clone());
                return Box::pin(serve_hyper(&ctx.hyper, io, peer, front, shutdown)).await;
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
        let mut poll = false;
        if ctx.park.is_some() && may_park(&head) {
            head.parts.extensions.insert(ParkOffer);
            poll = head
                .parts
                .uri
                .query()
                .is_some_and(|q| q.contains("live=long-poll"));
        }
        // Boxed: the handler's state machine exists only during a request,
        // not in every idle connection's task.
        match Box::pin(c.exchange(head, &ctx.front, &ctx.shutdown)).await {
            Ok(Keep::Yes) if poll && c.buf.is_empty() => return wait_next(c, peer, &ctx, token),
            Ok(Keep::Yes) => {}
            Ok(Keep::No { unread }) => return c.close(unread).await,
            Ok(Keep::Park(sent)) => return park(c, peer, &ctx, token, sent),
            Err(e) => return tracing::debug!(error = %e, "connection ended with an error"),
        }
        if c.buf.is_empty() {
            // Idle connections hold no buffer (see the module docs).
            c.buf = BytesMut::new();
        }
    }
}

/// Hands the connection and the reader in `sent` to the parking. Input
/// already buffered stays with the connection: it goes on actively here.
fn park(c: Conn, peer: SocketAddr, ctx: &Arc<Ctx>, token: ConnToken, sent: Sent) {
    let Sent::Park {
        ticket,
        finish,
        input,
        keep,
    } = sent
    else {
        return;
    };
    let Some((p, spawn)) = &ctx.park else {
        return;
    };
    if !c.buf.is_empty() {
        let r = Resume::Active(ticket);
        let fut = go_on(
            c,
            peer,
            Arc::clone(ctx),
            token,
            keep,
            finish.map(Box::new),
            r,
            false,
        );
        tokio::spawn(fut);
        return;
    }
    let h = Handover {
        tcp: c.tcp,
        peer,
        keep,
        token,
        input,
    };
    p.park(h, ticket, finish, ctx.front.state(), spawn);
}

/// Hands a connection whose long-poll was answered to the parking, to
/// wait there for its next request ([`Parking::hold`]).
fn wait_next(c: Conn, peer: SocketAddr, ctx: &Arc<Ctx>, token: ConnToken) {
    let Some((p, spawn)) = &ctx.park else {
        return;
    };
    let h = Handover {
        tcp: c.tcp,
        peer,
        keep: true,
        token,
        input: false,
    };
    p.hold(h, ctx.t.header_read, ctx.front.state(), spawn);
}

/// Runs a connection whose reader was parked (or was to be) again.
async fn resume(ctx: Arc<Ctx>, r: Resumed) {
    // Running: the next poll in line may start (`park::Turn`).
    drop(r.turn);
    // The parking saw the next request come: read it before tokio takes
    // the socket, which knows no readiness of it until its reactor's next
    // turn (see `io::send_now` for the answer's side).
    let mut buf = BytesMut::new();
    if let Resume::Answered { leftover: None } = r.resume {
        buf.resize(READ_CHUNK, 0);
        match std::io::Read::read(&mut &r.tcp, &mut buf) {
            Ok(0) => return,
            Ok(n) => buf.truncate(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = BytesMut::new(),
            Err(_) => return,
        }
    }
    let Ok(tcp) = TcpStream::from_std(r.tcp) else {
        return;
    };
    let mut c = Conn::new(tcp, ctx.t, &ctx.shutdown);
    c.buf = buf;
    Box::pin(go_on(
        c, r.peer, ctx, r.token, r.keep, r.finish, r.resume, false,
    ))
    .await
}

/// Goes on with a live reader on `c` as `resume` says, then with the
/// connection's next requests. `no_park`: the reader may not park again.
#[allow(clippy::too_many_arguments)]
async fn go_on(
    mut c: Conn,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    token: ConnToken,
    keep: bool,
    mut finish: Option<Box<Finish>>,
    resume: Resume,
    no_park: bool,
) {
    let state = ctx.front.state().clone();
    // A long-poll answered here: the connection then waits in the parking
    // for its next request ([`wait_next`]).
    let polled = matches!(
        resume,
        Resume::Active(Ticket::LongPoll { .. })
            | Resume::LongPoll { .. }
            | Resume::Answered { leftover: Some(_) }
    );
    let sent = match resume {
        Resume::Active(Ticket::Sse { live, enc, cursor }) => {
            let cell = ParkCell::default();
            let body = sse::go_on(*live, enc, cursor, Some(cell.clone()));
            let body = hold(body, finish.take(), Some(&cell));
            c.stream(None, body, Encoder::new(Out::Chunked), Some(cell), keep)
                .await
        }
        Resume::Sse {
            name,
            next,
            deadline,
            live,
            enc,
            cursor,
            leftover,
            park,
        } => {
            let cell = (park && !no_park).then(ParkCell::default);
            let body = sse::resume(
                &state,
                name,
                next,
                deadline,
                live,
                enc,
                cursor,
                cell.clone(),
            )
            .await;
            let body = hold(body, finish.take(), cell.as_ref());
            c.stream(leftover, body, Encoder::new(Out::Chunked), cell, keep)
                .await
        }
        Resume::SseEnd { leftover } => {
            c.stream(
                leftover,
                Body::empty(),
                Encoder::new(Out::Chunked),
                None,
                keep,
            )
            .await
        }
        Resume::Active(Ticket::LongPoll { live, cursor }) => {
            let path = format!("{}{}", crate::MOUNT, live.name());
            let res = read::poll_on(*live, cursor, !no_park).await;
            let res = ctx.front.finish_live(res, finish.take(), &path);
            c.respond(res, false, axum::http::Version::HTTP_11, keep, None)
                .await
        }
        Resume::Answered { leftover } => match leftover {
            Some(rest) => write_all(&c.tcp, &mut [IoSlice::new(&rest)], ctx.t.send)
                .await
                .map(|()| Sent::Done(keep)),
            None => Ok(Sent::Done(keep)),
        },
        Resume::LongPoll {
            name,
            next,
            deadline,
            live,
            cursor,
            park,
        } => {
            let offer = park && !no_park;
            let path = format!("{}{name}", crate::MOUNT);
            let res =
                read::resume_long_poll(&state, name, next, deadline, live, cursor, offer).await;
            let res = ctx.front.finish_live(res, finish.take(), &path);
            c.respond(res, false, axum::http::Version::HTTP_11, keep, None)
                .await
        }
    };
    match sent {
        Ok(Sent::Done(true)) if polled && c.buf.is_empty() && !ctx.shutdown.is_cancelled() => {
            wait_next(c, peer, &ctx, token)
        }
        Ok(Sent::Done(true)) if !ctx.shutdown.is_cancelled() => {
            if c.buf.is_empty() {
                c.buf = BytesMut::new();
            }
            Box::pin(run(c, peer, ctx, token, false)).await
        }
        Ok(Sent::Done(_)) => c.close(false).await,
        Ok(Sent::Park {
            ticket,
            finish: f,
            input,
            keep,
        }) => {
            // A long-poll parks again with the fast path's part it had.
            let finish = f.or(finish.map(|b| *b));
            let sent = Sent::Park {
                ticket,
                finish,
                input,
                keep,
            };
            park(c, peer, &ctx, token, sent)
        }
        Err(e) => tracing::debug!(error = %e, "resumed connection ended with an error"),
    }
}

/// Keeps the rate limiter's live slot of an SSE reader as long as it
/// lives: in its cell when it may park again (the parking takes it from
/// there), else with its body.
fn hold(body: Body, finish: Option<Box<Finish>>, cell: Option<&ParkCell>) -> Body {
    let Some(f) = finish else {
        return body;
    };
    if let Some(cell) = cell {
        cell.set_finish(*f);
        return body;
    }
    match f.slot {
        Some(slot) => Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            let _held = &slot;
            frame
        })),
        None => body,
    }
}

/// Whether the connection goes on after an exchange.
enum Keep {
    /// Read the next request.
    Yes,
    /// Close; `unread`: the client may still be sending.
    No { unread: bool },
    /// Park the reader ([`Sent::Park`]).
    Park(Sent),
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
                Box::pin(front.handle_raw(Request::from_parts(parts, ReqBody::Empty))).await
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
                Box::pin(front.handle_raw(req)).await
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
                let mut handler = Box::pin(front.handle_raw(Request::from_parts(parts, body)));
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
        let (res, common) = res;
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
        let common = common.as_ref().map(|c| front.common_lines(c));
        let keep = match self
            .respond(res, is_head, version, keep_alive, common)
            .await?
        {
            Sent::Done(keep) => keep,
            park @ Sent::Park { .. } => return Ok(Keep::Park(park)),
        };
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
