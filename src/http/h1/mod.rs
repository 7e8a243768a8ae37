//! Our own HTTP/1.1 connection loop, in place of hyper's (the default
//! `http_engine = "native"`; `"hyper"` keeps hyper's for comparison).
//!
//! Why: hyper gives every connection a read buffer and a write buffer of
//! 8 KiB each for its whole life, so an idle keep-alive connection or an
//! idle SSE subscriber cost ~17 KiB of server memory; and its generic
//! dispatcher is a large share of the instructions of a small request.
//! Here a connection waiting for its next request holds no buffer at all:
//! it waits with `TcpStream::readable()` and allocates 4 KiB (growing up
//! to the 64 KiB head limit only as a head needs) when bytes arrive, and
//! drops it again once the buffered input is used up. Response heads are
//! written into one small buffer sent together with the body by `writev`.
//!
//! Measured against hyper (same binary, `--http-engine hyper`, alternating
//! runs on a shared 2-core machine): 1.8 vs 15.3 KiB of server RSS per idle
//! keep-alive connection and 10.5 vs 17.3 KiB per idle SSE subscriber (1,000
//! of each); 28k vs 35k instructions (callgrind) and 18-22 vs 25-29 us of
//! server CPU per 1-byte append; after ~130k such appends to the memory
//! backend 41-46 MB vs 520-600 MB RSS (small bodies are copied out of the
//! read buffer instead of pinning it, below).
//!
//! What it does (and what it refuses):
//!
//! * Heads are parsed with `httparse`: malformed heads answer 400, heads
//!   over 64 KiB or with more than 100 headers 431, and close. So do
//!   conflicting or non-numeric `Content-Length`s, a `Transfer-Encoding`
//!   other than `chunked`, and `Transfer-Encoding` with `Content-Length`.
//! * Bodies: `Content-Length` or chunked (extensions ignored, trailers
//!   skipped, lines limited). A body already in the read buffer is handed
//!   over as one `Bytes` without copying; otherwise the handler reads it
//!   from a one-slot channel fed by this connection, in the same task, only
//!   as fast as the handler asks (`Expect: 100-continue` is answered when
//!   it first asks). An unread remainder of at most 64 KiB is drained after
//!   the response; a larger one closes the connection.
//! * Keep-alive by default on HTTP/1.1, on HTTP/1.0 only with
//!   `Connection: keep-alive`; pipelined requests are answered in order.
//! * Responses: `content-length` when the body's size is known, otherwise
//!   chunked with one chunk per body frame, each written at once (SSE
//!   events leave as they come); close-delimited for HTTP/1.0 clients. No
//!   body for HEAD, 1xx, 204 and 304. A cached `date` header.
//! * While a response body waits for its next frame, a client that hangs
//!   up is noticed at once (the body is dropped, ending the subscription).
//! * Timeouts as in [`serve`](super::serve): the next request's head must
//!   be complete within `header_read_timeout` of the previous response (or
//!   of the accept), and a write that makes no progress for `send_timeout`
//!   closes the connection.
//! * The HTTP/2 preface hands the connection to hyper (prior-knowledge
//!   h2c). `Upgrade` is not supported: the header is ignored.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header, request,
};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::front::Front;
use super::serve::{Builder, Guarded, Rewind, Timeouts};

/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one request head.
const MAX_HEADERS: usize = 100;
/// The first allocation for a request head, and the smallest read.
const READ_CHUNK: usize = 4096;
/// Buffered bodies up to this are copied out of the read buffer.
const COPY_BODY: usize = 2048;
/// Most buffers in one response writev, and most bytes of body frames
/// gathered for it.
const MAX_SEGS: usize = 16;
const BATCH_BYTES: usize = 64 * 1024;
/// Largest read for a request body.
const BODY_READ: usize = 64 * 1024;
/// An unread request body up to this is drained after the response to keep
/// the connection; a larger one closes it.
const DRAIN_MAX: u64 = 64 * 1024;
/// Longest chunk-size or trailer line, and all trailers together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// How long a closing connection still reads (and discards) what the client
/// sends, so that its last response is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted connection until it closes.
pub(super) async fn serve(
    tcp: TcpStream,
    front: Arc<Front>,
    hyper: Arc<Builder<TokioExecutor>>,
    t: Timeouts,
    shutdown: CancellationToken,
) {
    let mut c = Conn {
        tcp,
        buf: BytesMut::new(),
        t,
        timer: Box::pin(tokio::time::sleep(t.header_read)),
        cancelled: Box::pin(shutdown.clone().cancelled_owned()),
    };
    let mut first = true;
    loop {
        let head = match c.read_head(first).await {
            Ok(Next::Head(h)) => h,
            Ok(Next::Closed) => return,
            Ok(Next::H2) => {
                // Boxed: rare, and hyper's connection future is large.
                let io = Rewind {
                    prefix: c.buf.split().freeze(),
                    inner: Guarded::new(c.tcp, t, false),
                };
                return Box::pin(super::serve::serve_hyper(&hyper, io, front, shutdown)).await;
            }
            Ok(Next::Bad(status)) => {
                let _ = c.reject(status).await;
                return c.close(true).await;
            }
            Err(e) => return tracing::debug!(error = %e, "connection failed reading a head"),
        };
        first = false;
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

enum Next {
    Head(Box<Head>),
    Closed,
    H2,
    Bad(StatusCode),
}

enum Keep {
    Yes,
    /// Close; `unread`: the client may still be sending.
    No {
        unread: bool,
    },
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    parts: request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

#[derive(Debug)]
enum Parsed {
    /// The head and its length in bytes.
    Head(Box<Head>, usize),
    Partial,
    Bad(StatusCode),
}

struct Conn {
    tcp: TcpStream,
    /// Unparsed input; empty and unallocated while idle.
    buf: BytesMut,
    t: Timeouts,
    /// The head deadline and the shutdown signal, registered once per
    /// connection: a fresh timer and cancellation waiter per request each
    /// took a lock shared by all connections.
    timer: Pin<Box<Sleep>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Conn {
    /// Waits for and parses the next request head.
    async fn read_head(&mut self, first: bool) -> io::Result<Next> {
        self.timer
            .as_mut()
            .reset(Instant::now() + self.t.header_read);
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(PREFACE.len());
                if first && self.buf[..n] == PREFACE[..n] {
                    if n == PREFACE.len() {
                        return Ok(Next::H2);
                    }
                } else {
                    match parse_head(&self.buf) {
                        Parsed::Head(h, len) => {
                            self.buf.advance(len);
                            return Ok(Next::Head(h));
                        }
                        Parsed::Bad(s) => return Ok(Next::Bad(s)),
                        Parsed::Partial => {}
                    }
                }
            }
            let idle = self.buf.is_empty();
            // Input that has arrived counts even when the deadline has
            // passed too: a busy server may poll this connection late, and
            // an unbiased select closed it half the time with the request
            // unread (the client saw a reset; `hostile_clients` in CI). A
            // head still incomplete once nothing more is waiting is cut off.
            let mut expired = false;
            tokio::select! {
                biased;
                r = self.tcp.readable() => r?,
                () = self.cancelled.as_mut(), if idle => return Ok(Next::Closed),
                () = self.timer.as_mut() => expired = true,
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK.max(self.buf.len()));
            }
            match self.tcp.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(Next::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        // Stale readiness: nothing came; wait without a buffer.
                        self.buf = BytesMut::new();
                    }
                    if expired {
                        return Ok(Next::Closed);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

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
        let res = match framing {
            Framing::Empty => {
                front
                    .handle(Request::from_parts(parts, ReqBody::Empty))
                    .await
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
                front.handle(req).await
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
                let handler = front.handle(Request::from_parts(parts, body));
                tokio::pin!(handler);
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

    /// Reads and discards the rest of a request body, up to `DRAIN_MAX`
    /// bytes within `header_read_timeout`; false if it did not end so.
    async fn drain(&mut self, dec: &mut Decoder) -> bool {
        let deadline = Instant::now() + self.t.header_read;
        let mut seen = 0u64;
        loop {
            match dec.decode(&mut self.buf) {
                Ok(Decoded::Data(b)) => {
                    seen += b.len() as u64;
                    if seen > DRAIN_MAX {
                        return false;
                    }
                }
                Ok(Decoded::Done) => return true,
                Ok(Decoded::More) => {
                    let read = read_some(&self.tcp, &mut self.buf, READ_CHUNK);
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(Ok(())) => {}
                        _ => return false,
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Writes a response; returns whether the connection stays open.
    async fn respond(
        &mut self,
        res: Response<Body>,
        is_head: bool,
        version: Version,
        mut keep: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = res.into_parts();
        let status = parts.status;
        let bodiless = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"))
        {
            keep = false;
        }
        let length = body.size_hint().exact();
        let out = if bodiless {
            Out::None
        } else if let Some(n) = length {
            Out::Length(n)
        } else if version == Version::HTTP_11 {
            Out::Chunked
        } else {
            keep = false;
            Out::Close
        };
        let head = encode_head(status, &parts.headers, out, keep, version);
        if let Out::None = out {
            return write_all(&self.tcp, &mut [IoSlice::new(&head)], self.t.send)
                .await
                .map(|()| keep);
        }
        // Every frame the body has ready now goes out in one writev with
        // the head or the frames before it (as hyper flushes only when the
        // body is pending): SSE events and the control event after them
        // arrive together, and a burst costs one syscall.
        let mut segs = vec![Bytes::from(head)];
        let mut left = length.unwrap_or(u64::MAX);
        let mut watch = true;
        let mut waited = None;
        loop {
            let mut ended = false;
            let mut batch = 0;
            loop {
                if matches!(out, Out::Length(_)) && left == 0 {
                    ended = true;
                    break;
                }
                let frame = match waited.take() {
                    Some(f) => f,
                    None if batch >= BATCH_BYTES || segs.len() + 4 > MAX_SEGS => break,
                    None => match std::future::poll_fn(|cx| {
                        Poll::Ready(Pin::new(&mut body).poll_frame(cx))
                    })
                    .await
                    {
                        Poll::Ready(f) => f,
                        Poll::Pending => break,
                    },
                };
                let data = match frame {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) if !d.is_empty() => d,
                        _ => continue,
                    },
                };
                batch += data.len();
                if let Out::Chunked = out {
                    let mut size = [0u8; 18];
                    segs.push(Bytes::copy_from_slice(chunk_size_line(
                        data.len(),
                        &mut size,
                    )));
                    segs.push(data);
                    segs.push(Bytes::from_static(b"\r\n"));
                } else {
                    if data.len() as u64 > left {
                        return Err(io::Error::other("body longer than its size"));
                    }
                    left -= data.len() as u64;
                    segs.push(data);
                }
            }
            if ended {
                match out {
                    Out::Chunked => segs.push(Bytes::from_static(b"0\r\n\r\n")),
                    Out::Length(_) if left != 0 => {
                        return Err(io::Error::other("body shorter than its size"));
                    }
                    _ => {}
                }
            }
            if !segs.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SEGS];
                for (slot, seg) in slices.iter_mut().zip(&segs) {
                    *slot = IoSlice::new(seg);
                }
                write_all(&self.tcp, &mut slices[..segs.len()], self.t.send).await?;
            }
            if ended {
                return Ok(keep);
            }
            // Nothing held while a long response (SSE) waits.
            segs = Vec::new();
            waited = Some(next_frame(&self.tcp, &mut body, &mut watch).await?);
        }
    }

    /// Answers a head that cannot be served; the connection closes after.
    async fn reject(&mut self, status: StatusCode) -> io::Result<()> {
        let detail = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                "the request head is over 64 KiB or has more than 100 headers"
            }
            _ => "the request head is malformed",
        };
        let body = format!(
            "{{\"type\":\"about:blank\",\"title\":\"{}\",\"status\":{},\"code\":\"BAD_REQUEST_HEAD\",\"detail\":\"{detail}\"}}",
            status.canonical_reason().unwrap_or("Error"),
            status.as_u16()
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let head = encode_head(
            status,
            &headers,
            Out::Length(body.len() as u64),
            false,
            Version::HTTP_11,
        );
        let mut bufs = [IoSlice::new(&head), IoSlice::new(body.as_bytes())];
        write_all(&self.tcp, &mut bufs, self.t.send).await
    }

    /// Closes the connection. With `unread` input possible, first shuts our
    /// side and reads a little longer: closing a socket with unread input
    /// resets it, which can destroy the response the client has not read.
    async fn close(mut self, unread: bool) {
        use tokio::io::AsyncWriteExt;
        let _ = self.tcp.shutdown().await;
        if !unread {
            return;
        }
        self.buf.clear();
        let linger = async {
            let mut seen = 0;
            while seen < LINGER_BYTES {
                self.buf.clear();
                match read_some(&self.tcp, &mut self.buf, READ_CHUNK).await {
                    Ok(()) => seen += self.buf.len(),
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// The status line and headers of a response.
fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    out: Out,
    keep: bool,
    version: Version,
) -> Vec<u8> {
    let mut size = 128;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"HTTP/1.1 ");
    b.extend_from_slice(status.as_str().as_bytes());
    b.push(b' ');
    b.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    b.extend_from_slice(b"\r\n");
    let framed = !matches!(out, Out::None);
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (framed && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        b.extend_from_slice(name.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    match out {
        Out::Length(n) => {
            b.extend_from_slice(b"content-length: ");
            b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        Out::Chunked => b.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !headers.contains_key(header::DATE) {
        b.extend_from_slice(b"date: ");
        b.extend_from_slice(&date());
        b.extend_from_slice(b"\r\n");
    }
    if !keep {
        b.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        b.extend_from_slice(b"connection: keep-alive\r\n");
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// `{size in hex}\r\n` for a chunk of `n` bytes.
fn chunk_size_line(n: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = n;
    loop {
        i -= 1;
        out[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

/// The IMF-fixdate of now, formatted once per second per thread.
fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let s = httpdate::fmt_http_date(now);
        if s.len() == 29 {
            text.copy_from_slice(s.as_bytes());
        }
        c.set((secs, text));
        text
    })
}

/// Writes all of `bufs` (vectored); fails once a write makes no progress
/// for `send`.
async fn write_all(
    tcp: &TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    send: Duration,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match tcp.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(send, tcp.writable()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client accepted no response bytes within send_timeout",
                        ));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads at least one byte into `buf` (reserving up to `want`); the end of
/// the stream is an error.
async fn read_some(tcp: &TcpStream, buf: &mut BytesMut, want: usize) -> io::Result<()> {
    loop {
        tcp.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(want.clamp(READ_CHUNK, BODY_READ));
        }
        match tcp.try_read_buf(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The next frame of a response body; meanwhile notices a client that
/// hangs up (until it sends something: a pipelined request).
async fn next_frame(
    tcp: &TcpStream,
    body: &mut Body,
    watch: &mut bool,
) -> io::Result<Option<Result<Frame<Bytes>, axum::Error>>> {
    loop {
        if !*watch {
            return Ok(body.frame().await);
        }
        let mut probe = [0u8; 1];
        tokio::select! {
            f = body.frame() => return Ok(f),
            r = tcp.peek(&mut probe) => match r {
                Ok(0) => return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed the connection",
                )),
                Ok(_) => *watch = false,
                Err(e) => return Err(e),
            },
        }
    }
}

/// Feeds the request body to the handler through `slot`, reading only when
/// the handler asks for more. Ends when the body is complete, the handler
/// dropped it, or the body failed (the error goes to the handler).
async fn feed(
    tcp: &TcpStream,
    buf: &mut BytesMut,
    dec: &mut Decoder,
    slot: &Slot,
    mut expect: Option<&mut bool>,
    send: Duration,
) {
    loop {
        if !std::future::poll_fn(|cx| slot.poll_want(cx)).await {
            return;
        }
        match dec.decode(buf) {
            Ok(Decoded::Data(b)) => {
                slot.put(Ok(b), dec.done());
                continue;
            }
            Ok(Decoded::Done) => return slot.end(),
            Ok(Decoded::More) => {}
            Err(msg) => {
                return slot.put(Err(io::Error::new(io::ErrorKind::InvalidData, msg)), true);
            }
        }
        if let Some(continued) = expect.take()
            && !*continued
        {
            *continued = true;
            let mut bufs = [IoSlice::new(b"HTTP/1.1 100 Continue\r\n\r\n")];
            if let Err(e) = write_all(tcp, &mut bufs, send).await {
                return slot.put(Err(e), true);
            }
        }
        let want = match dec {
            Decoder::Length(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            Decoder::Chunked(_) => 16 * 1024,
        };
        if let Err(e) = read_some(tcp, buf, want).await {
            return slot.put(Err(e), true);
        }
    }
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Data(Bytes),
    /// Needs more input.
    More,
    Done,
}

/// Decodes a request body from the connection's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoder {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer bytes seen so far.
    Trailer(usize),
    Done,
}

impl Decoder {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Decoder::Length(0),
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked::Size),
        }
    }

    fn done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunked::Done))
    }

    /// Takes the next piece of body data off the front of `buf` (without
    /// copying).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        match self {
            Decoder::Length(0) => Ok(Decoded::Done),
            Decoder::Length(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(Decoded::Data(buf.split_to(take as usize).freeze()))
            }
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunked::Size => {
                        let Some(end) = line_end(buf)? else {
                            return Ok(Decoded::More);
                        };
                        let size = chunk_size(&buf[..end])?;
                        buf.advance(end + 2);
                        *state = if size == 0 {
                            Chunked::Trailer(0)
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(n) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = n.min(buf.len() as u64);
                        *state = if take == n {
                            Chunked::DataEnd
                        } else {
                            Chunked::Data(n - take)
                        };
                        return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            if buf.first().is_some_and(|&b| b != b'\r') {
                                return Err("a chunk is not followed by CRLF");
                            }
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err("a chunk is not followed by CRLF");
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailer(seen) => {
                        let Some(end) = line_end(buf)? else {
                            return Ok(Decoded::More);
                        };
                        buf.advance(end + 2);
                        if end == 0 {
                            *state = Chunked::Done;
                        } else if seen + end > MAX_TRAILERS {
                            return Err("the trailers are too large");
                        } else {
                            *state = Chunked::Trailer(seen + end);
                        }
                    }
                    Chunked::Done => return Ok(Decoded::Done),
                }
            },
        }
    }
}

/// The length of the CRLF-terminated line at the front of `buf` (without
/// the CRLF), if it is complete.
fn line_end(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err("a chunk line ends in a bare LF"),
        Some(i) if window[i - 1] != b'\r' => Err("a chunk line ends in a bare LF"),
        Some(i) => Ok(Some(i - 1)),
        None if window.len() >= MAX_CHUNK_LINE + 2 => Err("a chunk line is too long"),
        None => Ok(None),
    }
}

/// The size in a chunk-size line (`hex [ws] [; extensions]`).
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("a chunk size is not a hex number of at most 16 digits");
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        size = size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0) as u8);
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if rest.is_empty() || rest[0] == b';' {
        Ok(size)
    } else {
        Err("a chunk size line has junk after the size")
    }
}

/// Parses a request head at the front of `buf`.
fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST),
    };
    match head_from(&req) {
        Some(h) => Parsed::Head(Box::new(h), len),
        None => Parsed::Bad(StatusCode::BAD_REQUEST),
    }
}

/// The [`Head`] of a parsed request; `None` when it cannot be served.
fn head_from(req: &httparse::Request<'_, '_>) -> Option<Head> {
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri = Uri::try_from(req.path?).ok()?;
    let version = match req.version? {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    let (mut length, mut chunked, mut te) = (None::<u64>, false, false);
    let (mut close, mut keep, mut expect) = (false, false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::CONTENT_LENGTH {
            for part in h.value.split(|&b| b == b',') {
                let n = content_length(part.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            te = true;
            for part in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if part.is_empty() {
                    continue;
                }
                if chunked || !part.eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                chunked = true;
            }
        } else if name == header::CONNECTION {
            close |= has_token(h.value, b"close");
            keep |= has_token(h.value, b"keep-alive");
        } else if name == header::EXPECT {
            expect |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        map.append(name, value);
    }
    if te && (!chunked || length.is_some() || version == Version::HTTP_10) {
        return None;
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, None | Some(0)) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    let mut r = Request::new(());
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = version;
    *r.headers_mut() = map;
    let (parts, ()) = r.into_parts();
    Some(Head {
        parts,
        framing,
        keep_alive: if version == Version::HTTP_11 {
            !close
        } else {
            keep && !close
        },
        expect_continue: expect && framing != Framing::Empty,
    })
}

/// A Content-Length value: decimal digits only.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A one-item channel from the connection (feeding the body) to the
/// handler (reading it), both polled by the same task.
#[derive(Default)]
struct Slot(parking_lot::Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    item: Option<io::Result<Bytes>>,
    /// No more items after `item`.
    end: bool,
    /// The reader waits for an item.
    want: bool,
    /// The reader is gone.
    gone: bool,
    reader: Option<Waker>,
    feeder: Option<Waker>,
}

impl Slot {
    /// Ready(true) when the reader wants an item; Ready(false) when it is gone.
    fn poll_want(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.0.lock();
        if s.gone {
            return Poll::Ready(false);
        }
        if s.want && s.item.is_none() {
            return Poll::Ready(true);
        }
        s.feeder = Some(cx.waker().clone());
        Poll::Pending
    }

    fn put(&self, item: io::Result<Bytes>, end: bool) {
        let mut s = self.0.lock();
        s.item = Some(item);
        s.end |= end;
        s.want = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    fn end(&self) {
        let mut s = self.0.lock();
        s.end = true;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

/// A request body as the handler sees it.
enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    Stream {
        slot: Arc<Slot>,
        /// Bytes still to come, when the length is known.
        remaining: Option<u64>,
    },
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream { slot, remaining } => {
                let mut s = slot.0.lock();
                if let Some(item) = s.item.take() {
                    return Poll::Ready(Some(match item {
                        Ok(b) => {
                            if let Some(r) = remaining {
                                *r = r.saturating_sub(b.len() as u64);
                            }
                            Ok(Frame::data(b))
                        }
                        Err(e) => {
                            s.end = true;
                            Err(e)
                        }
                    }));
                }
                if s.end {
                    return Poll::Ready(None);
                }
                s.want = true;
                if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.reader = Some(cx.waker().clone());
                }
                if let Some(w) = s.feeder.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            ReqBody::Stream { .. } => SizeHint::default(),
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        if let ReqBody::Stream { slot, .. } = self {
            let mut s = slot.0.lock();
            s.gone = true;
            if let Some(w) = s.feeder.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests;
