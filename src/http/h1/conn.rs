//! The connection: its socket and read buffer, and the steps of its life
//! that [`dispatch`](super::dispatch) drives: reading the next request
//! head, writing a response (head and body frames gathered into writevs),
//! draining an unread request body, rejecting a bad head, and closing
//! without losing the last response to a reset.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::append::AppendHead;
use super::decode::{Decoded, Decoder};
pub(super) use super::encode::Encoder;
use super::encode::SEGS_PER_FRAME;
use super::io::{READ_CHUNK, next_frame, read_some, try_read, write_all};
use super::role::{Head, Out, Parsed, encode_head, has_token, parse_head, rejection};
use crate::http::front::CommonLines;
use crate::http::park::{Finish, ParkCell, Ticket};
use crate::http::transport::Timeouts;

/// Most buffers in one response writev, and most bytes of body frames
/// gathered for it.
const MAX_SEGS: usize = 16;
const BATCH_BYTES: usize = 64 * 1024;
/// An unread request body up to this is drained after the response to keep
/// the connection; a larger one closes it.
pub(super) const DRAIN_MAX: u64 = 64 * 1024;
/// How long a closing connection still reads (and discards) what the client
/// sends, so that its last response is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// The HTTP/2 connection preface (prior-knowledge h2c).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the body of a response goes on the wire, and (in `keep`) whether
/// the connection stays open after it.
fn framing(
    parts: &axum::http::response::Parts,
    body: &Body,
    is_head: bool,
    version: Version,
    keep: &mut bool,
) -> Out {
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
        *keep = false;
    }
    if bodiless {
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        Out::Chunked
    } else {
        *keep = false;
        Out::Close
    }
}

/// The bytes of `res` to a `GET` on HTTP/1.1, when its whole body is ready
/// now (a long-poll's answer made of records a wake carried), and whether
/// the connection stays open after it; `None` when some of the body is
/// not ready, or the response leaves a reader to park. The same bytes
/// [`Conn::respond`] writes.
pub(super) fn encode_ready(res: Response<Body>, mut keep: bool) -> Option<(Vec<Bytes>, bool)> {
    let (parts, mut body) = res.into_parts();
    if parts
        .extensions
        .get::<ParkCell>()
        .is_some_and(ParkCell::has_ticket)
    {
        return None;
    }
    let out = framing(&parts, &body, false, Version::HTTP_11, &mut keep);
    let head = encode_head(
        parts.status,
        &parts.headers,
        out,
        keep,
        Version::HTTP_11,
        None,
    );
    let mut segs = vec![Bytes::from(head)];
    if let Out::None = out {
        return Some((segs, keep));
    }
    let mut enc = Encoder::new(out);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while !enc.is_complete() {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) if !d.is_empty() => enc.push(d, &mut segs).ok()?,
                _ => {}
            },
            Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
        }
    }
    enc.finish(&mut segs).ok()?;
    Some((segs, keep))
}

/// How a response went.
pub(super) enum Sent {
    /// Written; whether the connection stays open.
    Done(bool),
    /// The handler left a reader at rest: the connection parks it
    /// (`input`: the client sent something meanwhile, it stays active).
    Park {
        ticket: Ticket,
        finish: Option<Finish>,
        input: bool,
        keep: bool,
    },
}

/// What [`Conn::read_head`] found.
pub(super) enum Next {
    /// A request head to answer.
    Head(Box<Head>),
    /// An append the engine answers itself (its body is in the buffer).
    Append(Box<AppendHead>),
    /// The client closed, or was cut off (head deadline, shutdown).
    Closed,
    /// The HTTP/2 preface: hand the connection to hyper.
    H2,
    /// A head that cannot be served: answer this and close.
    Bad(StatusCode),
}

/// One accepted HTTP/1.1 connection.
pub(super) struct Conn {
    pub(super) tcp: TcpStream,
    /// Unparsed input; empty and unallocated while idle.
    pub(super) buf: BytesMut,
    pub(super) t: Timeouts,
    /// The head deadline and the shutdown signal, registered once per
    /// connection: a fresh timer and cancellation waiter per request each
    /// took a lock shared by all connections.
    pub(super) timer: Pin<Box<Sleep>>,
    pub(super) cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Conn {
    /// A connection just accepted: no buffer yet, the head deadline armed.
    pub(super) fn new(tcp: TcpStream, t: Timeouts, shutdown: &CancellationToken) -> Self {
        Conn {
            tcp,
            buf: BytesMut::new(),
            t,
            timer: Box::pin(tokio::time::sleep(t.header_read)),
            cancelled: Box::pin(shutdown.clone().cancelled_owned()),
        }
    }

    /// Waits for and parses the next request head; `appends`: the body
    /// limit when plain appends are answered by the engine itself. A small
    /// append body still on its way is waited for here, under the head's
    /// deadline; should that pass, or the client stop sending, the request
    /// goes to the general path, which judges its body as it always has.
    pub(super) async fn read_head(
        &mut self,
        first: bool,
        mut appends: Option<usize>,
    ) -> io::Result<Next> {
        self.timer
            .as_mut()
            .reset(Instant::now() + self.t.header_read);
        loop {
            let mut awaiting = false;
            if !self.buf.is_empty() {
                let n = self.buf.len().min(PREFACE.len());
                if first && self.buf[..n] == PREFACE[..n] {
                    if n == PREFACE.len() {
                        return Ok(Next::H2);
                    }
                } else {
                    match parse_head(&self.buf, appends) {
                        Parsed::Head(h, len) => {
                            self.buf.advance(len);
                            return Ok(Next::Head(h));
                        }
                        Parsed::Append(a, len) => {
                            self.buf.advance(len);
                            return Ok(Next::Append(a));
                        }
                        Parsed::Bad(s) => return Ok(Next::Bad(s)),
                        Parsed::Partial => {}
                        Parsed::Body => awaiting = true,
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
            match try_read(&self.tcp, &mut self.buf) {
                Ok(0) if awaiting => appends = None,
                Ok(0) => return Ok(Next::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        // Stale readiness: nothing came; wait without a buffer.
                        self.buf = BytesMut::new();
                    }
                    if expired && awaiting {
                        // Parsed again as a general request.
                        appends = None;
                    } else if expired {
                        return Ok(Next::Closed);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and discards the rest of a request body, up to `DRAIN_MAX`
    /// bytes within `header_read_timeout`; false if it did not end so.
    pub(super) async fn drain(&mut self, dec: &mut Decoder) -> bool {
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

    /// Writes a response; returns whether the connection stays open, or
    /// the reader the handler left to park.
    pub(super) async fn respond(
        &mut self,
        res: Response<Body>,
        is_head: bool,
        version: Version,
        mut keep: bool,
        common: Option<CommonLines<'_>>,
    ) -> io::Result<Sent> {
        let (parts, body) = res.into_parts();
        let cell = parts.extensions.get::<ParkCell>().cloned();
        if let Some(cell) = &cell
            && let (Some(ticket), finish) = cell.take_ticket_first()
        {
            // A long-poller at rest: nothing is written until its answer.
            return Ok(Sent::Park {
                ticket,
                finish,
                input: false,
                keep,
            });
        }
        let out = framing(&parts, &body, is_head, version, &mut keep);
        let head = encode_head(
            parts.status,
            &parts.headers,
            out,
            keep,
            version,
            common.as_ref(),
        );
        if let Out::None = out {
            return write_all(&self.tcp, &mut [IoSlice::new(&head)], self.t.send)
                .await
                .map(|()| Sent::Done(keep));
        }
        self.stream(Some(Bytes::from(head)), body, Encoder::new(out), cell, keep)
            .await
    }

    /// Writes `first` and then the frames of `body`, framed by `enc`. When
    /// the body ends having left a reader in `cell`, the body is not ended
    /// on the wire: the reader parks with the response open.
    pub(super) async fn stream(
        &mut self,
        first: Option<Bytes>,
        mut body: Body,
        mut enc: Encoder,
        cell: Option<ParkCell>,
        keep: bool,
    ) -> io::Result<Sent> {
        // Every frame the body has ready now goes out in one writev with
        // the head or the frames before it (as hyper flushes only when the
        // body is pending): SSE events and the control event after them
        // arrive together, and a burst costs one syscall.
        let mut segs: Vec<Bytes> = first.into_iter().collect();
        let mut watch = true;
        let mut waited = None;
        loop {
            let mut ended = false;
            let mut batch = 0;
            loop {
                if enc.is_complete() {
                    ended = true;
                    break;
                }
                let frame = match waited.take() {
                    Some(f) => f,
                    // Room for one more frame and the body's end.
                    None if batch >= BATCH_BYTES || segs.len() + SEGS_PER_FRAME + 1 > MAX_SEGS => {
                        break;
                    }
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
                enc.push(data, &mut segs)?;
            }
            let park = if ended {
                cell.as_ref().and_then(|c| {
                    let (ticket, finish) = c.take_ticket_first();
                    ticket.map(|t| (t, finish))
                })
            } else {
                None
            };
            if ended && park.is_none() {
                enc.finish(&mut segs)?;
            }
            if !segs.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SEGS];
                for (slot, seg) in slices.iter_mut().zip(&segs) {
                    *slot = IoSlice::new(seg);
                }
                write_all(&self.tcp, &mut slices[..segs.len()], self.t.send).await?;
            }
            if let Some((ticket, finish)) = park {
                return Ok(Sent::Park {
                    ticket,
                    finish,
                    input: !watch,
                    keep,
                });
            }
            if ended {
                return Ok(Sent::Done(keep));
            }
            // Nothing held while a long response (SSE) waits.
            segs = Vec::new();
            waited = Some(next_frame(&self.tcp, &mut body, &mut watch).await?);
        }
    }

    /// Answers a head that cannot be served; the connection closes after.
    pub(super) async fn reject(&mut self, status: StatusCode) -> io::Result<()> {
        let (head, body) = rejection(status);
        let mut bufs = [IoSlice::new(&head), IoSlice::new(body.as_bytes())];
        write_all(&self.tcp, &mut bufs, self.t.send).await
    }

    /// Closes the connection. With `unread` input possible, first shuts our
    /// side and reads a little longer: closing a socket with unread input
    /// resets it, which can destroy the response the client has not read.
    pub(super) async fn close(mut self, unread: bool) {
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

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
