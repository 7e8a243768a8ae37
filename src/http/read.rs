//! `GET` on a stream: catch-up reads and long-polls, and the read helpers
//! SSE ([`super::sse`]) and the live-read core ([`super::live`]) share. The router picks the live mode.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::error::ApiError;
use super::headers::{self as h, ReadQuery};
use super::live::{LiveRead, Mode, Step, from_wake};
use super::park::{ParkCell, Ticket};
use super::{AppState, finish};
use crate::cursor::next_cursor;
use crate::metrics::LiveGuard;
use crate::notify::Wake;
use crate::offset::Offset;
use crate::offset::ReadFrom;
use crate::storage::StreamInfo;
use crate::storage::{ReadOutcome, ReadRequest, now_ms};

/// Cache policy for data that will never change at these offsets.
const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";

/// Reads one chunk from storage (for a live reader: an SSE event, a
/// long-poll answer).
pub async fn read_chunk(
    state: &AppState,
    name: &str,
    from: ReadFrom,
) -> Result<ReadOutcome, ApiError> {
    let chunk = state.config.limits.chunk_bytes;
    read_up_to(state, name, from, chunk).await
}

/// Reads one chunk of at most `chunk_bytes`, or `lend_bytes` from a backend
/// that lends what it reads.
async fn read_up_to(
    state: &AppState,
    name: &str,
    from: ReadFrom,
    lend_bytes: usize,
) -> Result<ReadOutcome, ApiError> {
    let req = ReadRequest {
        from,
        max_bytes: state.config.limits.chunk_bytes,
        lend_bytes,
        now: now_ms(),
    };
    state.read(name.to_string(), req).await
}

/// The body of a read: JSON streams as an array, others as raw bytes.
pub fn body_chunks(out: &ReadOutcome) -> Vec<Bytes> {
    json_body(&out.chunks, out.info.is_json())
}

/// Stored records as a response body: for JSON streams (`json`) an array
/// (stored messages are each followed by ','), others as they are.
pub fn json_body(chunks: &[Bytes], json: bool) -> Vec<Bytes> {
    if !json {
        return chunks.to_vec();
    }
    let mut parts = Vec::with_capacity(chunks.len() + 2);
    parts.push(Bytes::from_static(b"["));
    let n = chunks.len();
    for (i, c) in chunks.iter().enumerate() {
        if i + 1 == n {
            parts.push(c.slice(..c.len().saturating_sub(1)));
        } else {
            parts.push(c.clone());
        }
    }
    parts.push(Bytes::from_static(b"]"));
    parts
}

/// The entity tag of a read: stream incarnation, range, and closure.
fn etag(out: &ReadOutcome) -> String {
    let closed = if out.at_eof() { ":c" } else { "" };
    format!("\"{}:{}:{}{}\"", out.info.id, out.start, out.next, closed)
}

fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == tag || t == "*" || t.strip_prefix("W/") == Some(tag))
}

/// Headers every data-bearing read response carries.
fn read_response(status: StatusCode, out: &ReadOutcome) -> axum::http::response::Builder {
    let mut b = super::response(status)
        .header(header::CONTENT_TYPE, out.info.content_type.as_str())
        .header(h::STREAM_NEXT_OFFSET, out.next.to_string());
    if out.up_to_date() {
        b = b.header(h::STREAM_UP_TO_DATE, "true");
    }
    if out.at_eof() {
        b = b.header(h::STREAM_CLOSED, "true");
    }
    b
}

/// A catch-up read: one chunk from `query.from`, cacheable and with an
/// ETag (a `304` when the client has it already).
pub async fn catch_up(
    state: &AppState,
    name: String,
    query: ReadQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // A catch-up answer may be large (one response instead of dozens for a
    // reader far behind) where storage lends its bytes: nothing is copied.
    let lend = state.config.limits.catch_up_bytes;
    let out = read_up_to(state, &name, query.from, lend).await?;
    if query.from == ReadFrom::Tail {
        // `offset=now`: no data, never cached, no ETag.
        let body = if out.info.is_json() { "[]" } else { "" };
        let b = super::response(StatusCode::OK)
            .header(header::CONTENT_TYPE, out.info.content_type.as_str())
            .header(h::STREAM_NEXT_OFFSET, out.info.tail.to_string())
            .header(h::STREAM_UP_TO_DATE, "true")
            .header(header::CACHE_CONTROL, "no-store");
        let b = if out.info.closed {
            b.header(h::STREAM_CLOSED, "true")
        } else {
            b
        };
        return finish(b, Body::from(body));
    }
    let tag = etag(&out);
    if if_none_match(headers, &tag) {
        let b = read_response(StatusCode::NOT_MODIFIED, &out).header(header::ETAG, &tag);
        return finish(b, Body::empty());
    }
    // An empty answer at the tail of an open stream changes as soon as data
    // arrives, so caches must revalidate it; everything else is immutable.
    let cache = if out.is_empty() && !out.at_eof() {
        "no-cache"
    } else {
        CACHEABLE
    };
    let b = read_response(StatusCode::OK, &out)
        .header(header::ETAG, &tag)
        .header(header::CACHE_CONTROL, cache)
        .extension(super::compress::CatchUp);
    finish(b, chunks_body(body_chunks(&out)))
}

/// A long-poll: data as soon as there is some after `query.from`, else a
/// `204` at the timeout, at EOF or at shutdown. The waiting is
/// [`LiveRead`]'s; a storage failure while waiting is the answer. With
/// `offer` (the connection can park readers), a poller at rest is left in
/// the response's [`ParkCell`] instead, to be answered later.
pub async fn long_poll(
    state: &AppState,
    name: String,
    query: ReadQuery,
    offer: bool,
) -> Result<Response, ApiError> {
    // Dropped with this future, also when the client goes away mid-wait.
    let live = LiveRead::open(state, name, query.from, Mode::LongPoll).await?;
    poll_on(live, query.cursor, offer).await
}

/// Waits on with `live` until there is an answer (or a rest to park at).
pub async fn poll_on(
    mut live: LiveRead,
    client_cursor: Option<u64>,
    offer: bool,
) -> Result<Response, ApiError> {
    loop {
        let out = live.out();
        if !out.is_empty() {
            return data_answer(live.state(), out, client_cursor);
        }
        if out.at_eof() {
            return timeout_response(live.state(), out, client_cursor);
        }
        if offer && live.at_rest() {
            let cell = ParkCell::default();
            cell.put(Ticket::LongPoll {
                live: Box::new(live),
                cursor: client_cursor,
            });
            let mut res = Response::new(Body::empty());
            res.extensions_mut().insert(cell);
            return Ok(res);
        }
        match live.next().await {
            Step::Read { .. } | Step::KeepAlive => {}
            Step::Expired => return timeout_response(live.state(), live.out(), client_cursor),
            Step::Failed(e) => return Err(e),
        }
    }
}

/// The answer of a long-poller that was parked at `next`, read from
/// storage (it may park again). One with news in a wake is answered by its
/// group ([`answer_from_wake`]).
pub async fn resume_long_poll(
    state: &AppState,
    name: String,
    next: Offset,
    deadline: tokio::time::Instant,
    live: LiveGuard,
    client_cursor: Option<u64>,
    offer: bool,
) -> Result<Response, ApiError> {
    let live = LiveRead::resume(state, name, next, deadline, Mode::LongPoll, live).await?;
    poll_on(live, client_cursor, offer).await
}

/// The answer of a long-poller at `next` of the stream `info` from the
/// records `w` carries; `None` when they are not what it waits for.
pub fn answer_from_wake(
    state: &AppState,
    next: Offset,
    w: &Wake,
    info: &StreamInfo,
    client_cursor: Option<u64>,
) -> Option<Result<Response, ApiError>> {
    let out = from_wake(info, next, w)?;
    if !out.is_empty() {
        return Some(data_answer(state, &out, client_cursor));
    }
    out.at_eof()
        .then(|| timeout_response(state, &out, client_cursor))
}

/// A long-poll's answer with data.
fn data_answer(
    state: &AppState,
    out: &ReadOutcome,
    client_cursor: Option<u64>,
) -> Result<Response, ApiError> {
    let mut b = read_response(StatusCode::OK, out)
        .header(header::ETAG, etag(out))
        .header(header::CACHE_CONTROL, CACHEABLE);
    if !out.at_eof() {
        b = b.header(h::STREAM_CURSOR, cursor(state, client_cursor));
    }
    finish(b, chunks_body(body_chunks(out)))
}

/// `204` at the tail: the client is caught up (and at EOF when closed).
fn timeout_response(
    state: &AppState,
    out: &ReadOutcome,
    client_cursor: Option<u64>,
) -> Result<Response, ApiError> {
    let mut b = super::response(StatusCode::NO_CONTENT)
        .header(h::STREAM_NEXT_OFFSET, out.info.tail.to_string())
        .header(h::STREAM_UP_TO_DATE, "true")
        .header(header::CACHE_CONTROL, "no-store");
    if out.info.closed {
        b = b.header(h::STREAM_CLOSED, "true");
    } else {
        b = b.header(h::STREAM_CURSOR, cursor(state, client_cursor));
    }
    finish(b, Body::empty())
}

pub fn cursor(state: &AppState, client: Option<u64>) -> String {
    next_cursor(now_ms(), state.config.cursor_interval, client).to_string()
}

/// A body made of ready chunks, with an exact length (so responses carry
/// `Content-Length`) and no copying.
pub fn chunks_body(chunks: Vec<Bytes>) -> Body {
    Body::new(ChunksBody {
        remaining: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
    })
}

struct ChunksBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.chunks.pop_front() {
            Some(c) => {
                self.remaining -= c.len() as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(c))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}
