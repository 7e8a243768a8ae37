//! Appends answered without a header map: the request path most writers
//! take, a `POST` of a small body to a stream, read straight from the
//! parsed head lines and answered with a head written straight from the
//! outcome.
//!
//! Why: building the request's `HeaderMap` and `Uri`, the axum request
//! around them, the response's map and then encoding it cost ~6,000 of
//! the ~20,000 user-space instructions of a memory append (callgrind,
//! BENCHMARKS.md). The append itself is the handler's
//! ([`write::append`](crate::http::write::append)): the same header checks ([`AppendFields::read`] over
//! the raw lines), the same storage call and metrics, the same request
//! log; only the representation differs. The `the_native_engine_writes_the_headers_hyper_writes`
//! test compares its answers with hyper's, which goes the general way.
//!
//! What takes it (anything else goes the general way, unchanged):
//! `POST /v1/stream/{name}` on HTTP/1.1, no query, a path of plain URL
//! characters, exactly one `Content-Length` and the whole body read (the
//! rest of a body up to [`AWAIT_BODY`] is waited for with the head), at
//! most the body limit; no `Transfer-Encoding`, no `Expect`; and a
//! server without rate limits (their checks read the request as axum sees
//! it: [`Front::append_limit`]). With auth on, the token of its first
//! `Authorization` header is checked as the fast path checks it
//! ([`auth::check`], before anything else), and an answer for a private
//! access is made private as there ([`auth::privatize`]).

use std::io::{self, IoSlice};
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Sent};
use super::io::write_all;
use super::role::{Out, content_length, end_head, has_token, status_line};
use crate::http::error::ApiError;
use crate::http::front::{Common, CommonLines, Front};
use crate::http::headers::{self as h, Raw};
use crate::http::write::{AppendFields, Appended, append};
use crate::http::{AppState, MOUNT, auth, ops};

/// Buffered bodies up to this are copied out of the read buffer (see
/// `dispatch`).
pub(super) const COPY_BODY: usize = 2048;

/// An append the engine answers itself.
pub(super) struct AppendHead {
    /// The request path, as sent.
    path: String,
    /// Its headers, read; or why they are refused.
    fields: Result<AppendFields, ApiError>,
    origin: Option<HeaderValue>,
    /// The first `Authorization` header (read only with auth on).
    authorization: Option<HeaderValue>,
    body_len: usize,
    keep_alive: bool,
}

impl std::fmt::Debug for AppendHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendHead")
            .field("path", &self.path)
            .field("body_len", &self.body_len)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// Bodies up to this that have not all arrived with their head are waited
/// for by the engine rather than handed to the general path: clients such as
/// Python's `http.client` send a head and its body in two writes, and on a
/// busy server the second is sometimes not read yet (BENCHMARKS.md,
/// twentieth session). Larger ones go the general way, under
/// `body_read_timeout`.
pub(super) const AWAIT_BODY: usize = 64 * 1024;

/// What [`append_head`] makes of a request.
pub(super) enum AppendKind {
    /// An append the engine answers itself, its body all buffered.
    Ready(Box<AppendHead>),
    /// Would be one once the rest of its body (at most [`AWAIT_BODY`]) is
    /// read.
    Awaiting,
    /// One for the general path.
    General,
}

/// `req` as an append the engine answers itself, when it is one (see the
/// module docs); `buffered`: the bytes after its head already read;
/// `limit`: the body limit.
pub(super) fn append_head(
    req: &httparse::Request<'_, '_>,
    buffered: usize,
    limit: usize,
) -> AppendKind {
    match append_parts(req, buffered, limit) {
        Some(Ok(a)) => AppendKind::Ready(Box::new(a)),
        Some(Err(Short)) => AppendKind::Awaiting,
        None => AppendKind::General,
    }
}

/// A fast-path append whose body is not all buffered yet.
struct Short;

fn append_parts(
    req: &httparse::Request<'_, '_>,
    buffered: usize,
    limit: usize,
) -> Option<Result<AppendHead, Short>> {
    if req.method? != "POST" || req.version? != 1 {
        return None;
    }
    let path = req.path?;
    let name = path.strip_prefix(MOUNT)?;
    if name.is_empty() || name.starts_with("__ds") || !path.bytes().all(plain) {
        return None;
    }
    let (mut length, mut close, mut origin, mut authorization) = (None, false, None, None);
    // Values need no check here: httparse takes exactly the bytes
    // `HeaderValue::from_bytes` takes (tab, 0x20-0x7e, 0x80-0xff).
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            // One value, digits only (a list goes the general way).
            if length.is_some() {
                return None;
            }
            length = Some(usize::try_from(content_length(h.value)?).ok()?);
        } else if n.eq_ignore_ascii_case("transfer-encoding") || n.eq_ignore_ascii_case("expect") {
            return None;
        } else if n.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, b"close");
        } else if n.eq_ignore_ascii_case("origin") && origin.is_none() {
            // The first, as `HeaderMap::get` gives it to the general way.
            origin = Some(HeaderValue::from_bytes(h.value).ok()?);
        } else if n.eq_ignore_ascii_case("authorization") && authorization.is_none() {
            // The first, as the general way's `bearer` reads it.
            authorization = Some(HeaderValue::from_bytes(h.value).ok()?);
        }
    }
    let body_len = length?;
    if body_len > limit {
        return None;
    }
    if body_len > buffered {
        return (body_len <= AWAIT_BODY).then_some(Err(Short));
    }
    Some(Ok(AppendHead {
        path: path.to_string(),
        fields: AppendFields::read(&Raw::new(req.headers)),
        origin,
        authorization,
        body_len,
        keep_alive: !close,
    }))
}

/// A byte of a path taken as is: unreserved, sub-delims, `:`, `@`, `/`
/// and `%` (no query, no fragment, nothing a `Uri` would refuse).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

impl Conn {
    /// Answers the append `a`, whose head was taken off the buffer and
    /// whose body is in it; whether the connection stays open.
    pub(super) async fn append(
        &mut self,
        a: Box<AppendHead>,
        front: &Front,
        shutdown: &CancellationToken,
    ) -> io::Result<bool> {
        let started = Instant::now();
        let AppendHead {
            path,
            fields,
            origin,
            authorization,
            body_len,
            keep_alive,
        } = *a;
        // Copied when small, as `exchange` does (a kept `Bytes` would pin
        // the whole read buffer).
        let body = if body_len <= COPY_BODY {
            let b = Bytes::copy_from_slice(&self.buf[..body_len]);
            self.buf.advance(body_len);
            b
        } else {
            self.buf.split_to(body_len).freeze()
        };
        let state = front.state();
        // In the fast path's order: the token, then (the handler's) the
        // name, then the headers.
        let access = authorize(state, &path, authorization);
        let private = access.as_ref().is_ok_and(|a| a.private);
        let result = match access {
            Err(e) => Err(e),
            Ok(_) => match h::stream_name(&path[MOUNT.len()..], state.config.limits.max_name_bytes)
            {
                Ok(name) => match fields {
                    Ok(fields) => append(state, &name, fields, body).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        if self.buf.is_empty() {
            self.buf = bytes::BytesMut::new();
        }
        let keep = keep_alive && !shutdown.is_cancelled();
        let common = Common::new(origin);
        let lines = front.common_lines(&common);
        match result {
            Ok(done) => {
                ops::record(state, &Method::POST, &path, done.status, started);
                let head = encode_appended(&done, &lines, keep, private);
                write_all(&self.tcp, &mut [IoSlice::new(&head)], self.t.send).await?;
                Ok(keep)
            }
            Err(e) => {
                let mut res = e.into_response();
                if private {
                    auth::privatize(res.headers_mut());
                }
                ops::record(state, &Method::POST, &path, res.status(), started);
                match self
                    .respond(res, false, Version::HTTP_11, keep, Some(lines))
                    .await?
                {
                    Sent::Done(keep) => Ok(keep),
                    Sent::Park { .. } => Ok(false),
                }
            }
        }
    }
}

/// Who may make the append to `path` ([`auth::check`] on its token),
/// when auth is on.
fn authorize(
    state: &AppState,
    path: &str,
    authorization: Option<HeaderValue>,
) -> Result<auth::Access, ApiError> {
    if !state.config.auth.enabled {
        return Ok(auth::Access::default());
    }
    let mut headers = HeaderMap::new();
    if let Some(a) = authorization {
        headers.insert(header::AUTHORIZATION, a);
    }
    // (A path of plain characters, no query: always a `Uri`.)
    let uri = Uri::try_from(path).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the request path is not valid",
        )
    })?;
    auth::check(state, &Method::POST, &uri, &headers)
}

/// The head of a successful append's answer (it has no body), as
/// `encode_head` writes the handler's response; `private`: made private
/// as [`auth::privatize`] makes it (an append's answer has no
/// `Cache-Control` of its own).
fn encode_appended(a: &Appended, common: &CommonLines<'_>, keep: bool, private: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(320 + common.lines.len());
    status_line(&mut b, a.status);
    // The names as `HeaderName::as_str` writes them (the test checks).
    let tail = a.tail.encode();
    b.extend_from_slice(b"etag: \"");
    b.extend_from_slice(&tail);
    b.extend_from_slice(b"\"\r\nstream-next-offset: ");
    b.extend_from_slice(&tail);
    b.extend_from_slice(b"\r\n");
    if a.closed {
        b.extend_from_slice(b"stream-closed: true\r\n");
    }
    if let Some((epoch, seq)) = a.producer {
        b.extend_from_slice(b"producer-epoch: ");
        b.extend_from_slice(itoa::Buffer::new().format(epoch).as_bytes());
        b.extend_from_slice(b"\r\nproducer-seq: ");
        b.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    if private {
        b.extend_from_slice(b"cache-control: private\r\n");
    }
    // A 204 has no body; the 200 of a producer's new data an empty one.
    let out = if a.status == StatusCode::NO_CONTENT {
        Out::None
    } else {
        Out::Length(0)
    };
    end_head(&mut b, Some(common), out, true, keep, Version::HTTP_11);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn kind(raw: &[u8], limit: usize) -> AppendKind {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = req.parse(raw).unwrap() else {
            panic!("partial head");
        };
        append_head(&req, raw.len() - n, limit)
    }

    fn parse(raw: &[u8], limit: usize) -> Option<AppendHead> {
        match kind(raw, limit) {
            AppendKind::Ready(a) => Some(*a),
            AppendKind::Awaiting | AppendKind::General => None,
        }
    }

    #[test]
    fn only_plain_whole_appends_take_the_short_path() {
        let take = |raw: &str| parse(raw.as_bytes(), 1024).is_some();
        let ok = "POST /v1/stream/a/b%20c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        assert!(take(ok));
        let a = parse(ok.as_bytes(), 1024).unwrap();
        assert_eq!(
            (a.path.as_str(), a.body_len, a.keep_alive),
            ("/v1/stream/a/b%20c", 2, true)
        );
        for raw in [
            // Not an append to a stream.
            "PUT /v1/stream/a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/streamx HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/ HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/__ds/x HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
            // A query, or a path a `Uri` decides about.
            "POST /v1/stream/a?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/a#f HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/a\"b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            // Framing the general path judges.
            "POST /v1/stream/a HTTP/1.1\r\n\r\n",
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: +2\r\n\r\nhi",
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhi",
            "POST /v1/stream/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "POST /v1/stream/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            // The body not all here (waited for), or over the limit.
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nhi",
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: 2000\r\n\r\nhi",
        ] {
            assert!(!take(raw), "{raw:?}");
        }
        assert!(parse(ok.as_bytes(), 1).is_none(), "over the body limit");
        assert!(matches!(kind(ok.as_bytes(), 1), AppendKind::General));
        let close = "POST /v1/stream/a HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse(close.as_bytes(), 1024).unwrap().keep_alive);
    }

    #[test]
    fn a_small_body_still_on_its_way_is_waited_for() {
        let head = "POST /v1/stream/a HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        for raw in [head.to_string(), format!("{head}hi")] {
            assert!(
                matches!(kind(raw.as_bytes(), 1024), AppendKind::Awaiting),
                "{raw:?}"
            );
        }
        let whole = format!("{head}hello");
        assert!(matches!(kind(whole.as_bytes(), 1024), AppendKind::Ready(_)));
        // A large one goes the general way, under the body's own timeout.
        let large = format!(
            "POST /v1/stream/a HTTP/1.1\r\nContent-Length: {}\r\n\r\nhi",
            AWAIT_BODY + 1
        );
        assert!(matches!(
            kind(large.as_bytes(), usize::MAX),
            AppendKind::General
        ));
        let at = format!("POST /v1/stream/a HTTP/1.1\r\nContent-Length: {AWAIT_BODY}\r\n\r\nhi");
        assert!(matches!(
            kind(at.as_bytes(), usize::MAX),
            AppendKind::Awaiting
        ));
        // Nor is one waited for that the fast path would not take whole.
        let expect =
            "POST /v1/stream/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(kind(expect.as_bytes(), 1024), AppendKind::General));
    }

    #[test]
    fn bad_append_headers_are_refused_as_the_handler_refuses_them() {
        let raw = "POST /v1/stream/a HTTP/1.1\r\nContent-Type: a\r\ncontent-type: b\r\nContent-Length: 0\r\n\r\n";
        let err = parse(raw.as_bytes(), 1024).unwrap().fields.err().unwrap();
        assert_eq!(err.code, "DUPLICATE_HEADER");
        let raw = "POST /v1/stream/a HTTP/1.1\r\nProducer-Id: p\r\nContent-Length: 0\r\n\r\n";
        let err = parse(raw.as_bytes(), 1024).unwrap().fields.err().unwrap();
        assert_eq!(err.code, "INCOMPLETE_PRODUCER_HEADERS");
    }

    #[test]
    fn the_answer_head_carries_the_outcome() {
        let lines = CommonLines {
            lines: b"x-content-type-options: nosniff\r\n",
            allow_origin: None,
        };
        let a = Appended {
            status: StatusCode::OK,
            tail: crate::offset::Offset::new(1, 5),
            closed: true,
            producer: Some((2, 7)),
        };
        let head = String::from_utf8(encode_appended(&a, &lines, false, false)).unwrap();
        assert!(!head.contains("cache-control"), "{head}");
        let private = String::from_utf8(encode_appended(&a, &lines, false, true)).unwrap();
        assert!(private.contains("cache-control: private\r\n"), "{private}");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let o = String::from_utf8(a.tail.encode().to_vec()).unwrap();
        for want in [
            format!("{}: \"{o}\"\r\n", header::ETAG),
            format!("{}: {o}\r\n", h::STREAM_NEXT_OFFSET),
            format!("{}: true\r\n", h::STREAM_CLOSED),
            format!("{}: 2\r\n", h::PRODUCER_EPOCH),
            format!("{}: 7\r\n", h::PRODUCER_SEQ),
            "x-content-type-options: nosniff\r\n".into(),
            "content-length: 0\r\n".into(),
            "connection: close\r\n".into(),
        ] {
            assert!(head.contains(&want), "{want:?} in {head}");
        }
        assert!(head.contains("date: ") && head.ends_with("\r\n\r\n"));
    }
}
