//! Handlers that change or describe a stream: PUT (create / fork), POST
//! (append / close), DELETE and HEAD.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;

use super::error::ApiError;
use super::headers as h;
use super::{AppState, finish, stream_response};
use crate::metrics::{WriteOp, json_messages};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Expiry, StreamInfo, now_ms,
};

/// Reads the whole request body, refusing more than the configured limit.
async fn body(state: &AppState, req: Request) -> Result<(HeaderMap, Bytes, Uri), ApiError> {
    let limit = state.config.limits.max_body_bytes;
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit));
    }
    // Streamed with the limit applied as bytes arrive: a chunked body past
    // it is refused without buffering the rest, and one that trickles in
    // is cut off after `body_read_timeout`.
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limit));
    // A body that is all here (most appends: the engine read it with the
    // head) needs no timer: no clock read, no timer entry.
    let read = match futures_util::poll!(read.as_mut()) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => {
            match tokio::time::timeout(state.config.body_read_timeout, read).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "BODY_TIMEOUT",
                        "the request body did not arrive in time; send it again",
                    ));
                }
            }
        }
    };
    let bytes = read.map_err(|e| body_error(e, limit))?;
    Ok((parts.headers, bytes, parts.uri))
}

/// A body that could not be read: over the limit, or cut off / malformed
/// on the wire.
fn body_error(e: axum::Error, limit: usize) -> ApiError {
    let inner = e.into_inner();
    let over = std::iter::successors(Some(&*inner as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| e.is::<http_body_util::LengthLimitError>());
    if over {
        too_large(limit)
    } else {
        ApiError::bad_request(
            "BODY_READ_FAILED",
            "the request body could not be read to its end",
        )
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("request bodies are limited to {limit} bytes; split the data into several appends"),
    )
}

/// `Content-Type`, trimmed; `None` when absent or blank.
fn content_type<H: h::Fields + ?Sized>(headers: &H) -> Result<Option<String>, ApiError> {
    // Header text is visible ASCII: its whitespace is ASCII.
    Ok(h::text(headers, &header::CONTENT_TYPE)?
        .map(str::trim_ascii)
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

/// Adds `Stream-TTL` / `Stream-Expires-At` for a stream's expiry.
fn with_expiry(
    b: axum::http::response::Builder,
    info: &StreamInfo,
) -> axum::http::response::Builder {
    match info.expiry {
        Expiry::Never => b,
        Expiry::Ttl(secs) => b.header(h::STREAM_TTL, secs),
        Expiry::At(at) => b.header(h::STREAM_EXPIRES_AT, h::format_expires_at(at)),
    }
}

/// The absolute URL of the stream, for `Location`.
fn location(headers: &HeaderMap, path: &str) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    Some(format!("{scheme}://{host}{path}"))
}

/// `PUT`: create a stream (or a fork), or confirm an existing one.
pub async fn put(state: &AppState, name: String, req: Request) -> Result<Response, ApiError> {
    let (headers, body, uri) = body(state, req).await?;
    let path = uri.path();
    let create = CreateRequest {
        content_type: content_type(&headers)?,
        expiry: h::expiry(&headers)?,
        closed: h::stream_closed(&headers),
        fork: h::fork(&headers, super::MOUNT)?,
        body,
        now: now_ms(),
    };
    let started = std::time::Instant::now();
    let outcome = state.storage(move |s| s.create(&name, create)).await;
    state
        .metrics
        .write_latency(WriteOp::Create, started.elapsed());
    let outcome = outcome?;
    let (status, info) = match &outcome {
        CreateOutcome::Created(info) => (StatusCode::CREATED, info),
        CreateOutcome::Exists(info) => (StatusCode::OK, info),
    };
    let mut b = with_expiry(stream_response(status, info), info);
    if status == StatusCode::CREATED
        && let Some(loc) = location(&headers, path)
    {
        b = b.header(header::LOCATION, loc);
    }
    finish(b, Body::empty())
}

/// The headers an append may carry besides its content type.
static APPEND_OPTIONAL: [HeaderName; 6] = [
    h::STREAM_CLOSED,
    h::STREAM_SEQ,
    h::PRODUCER_ID,
    h::PRODUCER_EPOCH,
    h::PRODUCER_SEQ,
    header::IF_MATCH,
];

/// What an append asks for, read from its headers (the body comes apart).
pub struct AppendFields {
    content_type: Option<String>,
    close: bool,
    stream_seq: Option<String>,
    producer: Option<crate::storage::ProducerHeaders>,
    if_match: Option<crate::offset::Offset>,
}

impl AppendFields {
    /// Reads an append's headers from `headers`, refusing bad ones.
    pub fn read<H: h::Fields + ?Sized>(headers: &H) -> Result<Self, ApiError> {
        let content_type = content_type(headers)?;
        // Most appends carry none of the optional headers, and looking each
        // up costs a hash and a probe (~1,000 instructions for the six); one
        // pass over the request's few headers tells whether any is there.
        if !headers.any_of(&APPEND_OPTIONAL) {
            return Ok(AppendFields {
                content_type,
                close: false,
                stream_seq: None,
                producer: None,
                if_match: None,
            });
        }
        Ok(AppendFields {
            content_type,
            close: h::stream_closed(headers),
            stream_seq: h::stream_seq(headers)?,
            producer: h::producer(headers)?,
            if_match: h::if_match(headers)?,
        })
    }
}

/// A successful append's answer: its status and the headers it carries.
pub struct Appended {
    pub status: StatusCode,
    /// The new tail (`ETag` and `Stream-Next-Offset`).
    pub tail: crate::offset::Offset,
    pub closed: bool,
    /// The producer's epoch and sequence number, echoed.
    pub producer: Option<(u64, u64)>,
}

impl Appended {
    fn response(&self) -> Response {
        let (etag, next) = h::offset_values(self.tail);
        // Made in place, not with a `Builder` (which is moved by value
        // through every call and converts each value: ~400 instructions
        // per header).
        let mut res = Response::new(Body::empty());
        *res.status_mut() = self.status;
        let hm = res.headers_mut();
        hm.reserve(super::RESPONSE_HEADERS);
        // The new tail as a strong ETag, for a chained `If-Match` (proposal).
        hm.insert(header::ETAG, etag);
        hm.insert(h::STREAM_NEXT_OFFSET, next);
        if self.closed {
            hm.insert(h::STREAM_CLOSED, HeaderValue::from_static("true"));
        }
        if let Some((epoch, seq)) = self.producer {
            hm.insert(h::PRODUCER_EPOCH, HeaderValue::from(epoch));
            hm.insert(h::PRODUCER_SEQ, HeaderValue::from(seq));
        }
        res
    }
}

/// `POST`: append, append-and-close, or close.
pub async fn post(state: &AppState, name: String, req: Request) -> Result<Response, ApiError> {
    let (headers, body, _) = body(state, req).await?;
    let fields = AppendFields::read(&headers)?;
    Ok(append(state, &name, fields, body).await?.response())
}

/// Appends `body` as `fields` ask, counting it in the metrics.
pub async fn append(
    state: &AppState,
    name: &str,
    fields: AppendFields,
    body: Bytes,
) -> Result<Appended, ApiError> {
    let AppendFields {
        content_type,
        close,
        stream_seq,
        producer,
        if_match,
    } = fields;
    let append = AppendRequest {
        content_type,
        close,
        stream_seq,
        producer,
        if_match,
        body,
        now: now_ms(),
    };
    let sent = append.body.clone();
    let has_data = !sent.is_empty();
    let started = std::time::Instant::now();
    let outcome = state.append(name, append).await;
    state
        .metrics
        .write_latency(WriteOp::Append, started.elapsed());
    let outcome = outcome?;
    if let AppendOutcome::Appended { info, .. } = &outcome
        && has_data
    {
        let messages = if info.is_json() {
            json_messages(&sent)
        } else {
            1
        };
        state.metrics.appended(sent.len() as u64, messages);
    }
    let (status, info, producer) = match &outcome {
        // A producer's new data is 200 (so it can tell it from a duplicate);
        // everything else that succeeds is 204.
        AppendOutcome::Appended {
            info,
            producer: Some(p),
        } if has_data => (StatusCode::OK, info, Some(*p)),
        AppendOutcome::Appended { info, producer } => (StatusCode::NO_CONTENT, info, *producer),
        AppendOutcome::Duplicate { info, producer } => (StatusCode::NO_CONTENT, info, *producer),
    };
    Ok(Appended {
        status,
        tail: info.tail,
        closed: info.closed,
        producer,
    })
}

/// `DELETE`.
pub async fn delete(state: &AppState, name: String) -> Result<Response, ApiError> {
    let now = now_ms();
    state.storage(move |s| s.delete(&name, now)).await?;
    finish(super::response(StatusCode::NO_CONTENT), Body::empty())
}

/// `HEAD`: metadata, never cached, does not renew TTL.
pub async fn head(state: &AppState, name: String) -> Result<Response, ApiError> {
    let now = now_ms();
    let info = state.storage(move |s| s.head(&name, now)).await?;
    // Where the retained data starts (our extension; the stream's start
    // until a trim or retention drops records).
    let b = with_expiry(stream_response(StatusCode::OK, &info), &info)
        .header(h::STREAM_EARLIEST_OFFSET, info.earliest.to_string())
        .header(header::CACHE_CONTROL, "no-store");
    finish(b, Body::empty())
}
