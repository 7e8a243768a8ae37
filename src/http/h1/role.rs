//! Request heads in, response heads out: parsing a request head with
//! `httparse` into the parts the handler sees and the framing of its body,
//! and writing a response's status line and headers. Pure: no socket.

use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header, request,
};

use super::append::{AppendHead, AppendKind, append_head};
use super::date::date;
use crate::http::front::{CommonLines, Front};

/// Largest request head.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one request head.
pub(super) const MAX_HEADERS: usize = 100;

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) parts: request::Parts,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub(super) expect_continue: bool,
}

/// What [`parse_head`] found at the front of the buffer.
#[derive(Debug)]
pub(super) enum Parsed {
    /// The head and its length in bytes.
    Head(Box<Head>, usize),
    /// An append the engine answers itself, and its head's length.
    Append(Box<AppendHead>, usize),
    Partial,
    /// A whole head of an append the engine answers itself, once the rest
    /// of its (small) body is read ([`AppendKind::Awaiting`]).
    Body,
    Bad(StatusCode),
}

/// Parses a request head at the front of `buf`; `appends`: the body limit
/// when the engine answers plain appends itself ([`append_head`]).
pub(super) fn parse_head(buf: &[u8], appends: Option<usize>) -> Parsed {
    // Left uninitialised: httparse writes the ones it fills (initialising
    // all 100 cost ~300 instructions per request).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST),
    };
    if let Some(limit) = appends {
        match append_head(&req, buf.len() - len, limit) {
            AppendKind::Ready(a) => return Parsed::Append(a, len),
            AppendKind::Awaiting => return Parsed::Body,
            AppendKind::General => {}
        }
    }
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
pub(super) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a comma-separated header value holds `token` (any case).
pub(super) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, unknown length).
    Close,
}

/// The status line and headers of a response.
pub(super) fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    out: Out,
    keep: bool,
    version: Version,
    common: Option<&CommonLines<'_>>,
) -> Vec<u8> {
    let mut size = 128 + common.map_or(0, |c| c.lines.len() + 64);
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut b = Vec::with_capacity(size);
    status_line(&mut b, status);
    let framed = !matches!(out, Out::None);
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (framed && name == header::CONTENT_LENGTH)
            || (common.is_some() && Front::replaced_by_common(name))
        {
            continue;
        }
        b.extend_from_slice(name.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    let date = !headers.contains_key(header::DATE);
    end_head(&mut b, common, out, date, keep, version);
    b
}

/// A response's status line.
pub(super) fn status_line(b: &mut Vec<u8>, status: StatusCode) {
    b.extend_from_slice(b"HTTP/1.1 ");
    b.extend_from_slice(status.as_str().as_bytes());
    b.push(b' ');
    b.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    b.extend_from_slice(b"\r\n");
}

/// The rest of a response head after its own headers: the common lines,
/// the framing, `date` (unless the response had one) and `connection`.
pub(super) fn end_head(
    b: &mut Vec<u8>,
    common: Option<&CommonLines<'_>>,
    out: Out,
    date_line: bool,
    keep: bool,
    version: Version,
) {
    if let Some(c) = common {
        b.extend_from_slice(c.lines);
        if let Some(o) = c.allow_origin {
            b.extend_from_slice(b"access-control-allow-origin: ");
            b.extend_from_slice(o);
            b.extend_from_slice(b"\r\n");
        }
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
    if date_line {
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
}

/// The whole answer (head and `application/problem+json` body) to a head
/// that cannot be served: `status` is what [`parse_head`] returned.
pub(super) fn rejection(status: StatusCode) -> (Vec<u8>, String) {
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
        None,
    );
    (head, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> (Head, usize) {
        match parse_head(raw, None) {
            Parsed::Head(h, n) => (*h, n),
            other => panic!(
                "not a head: {other:?} for {:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    fn bad(raw: &[u8]) -> StatusCode {
        match parse_head(raw, None) {
            Parsed::Bad(s) => s,
            other => panic!("accepted: {other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn parses_a_head_with_its_framing() {
        let raw = b"POST /v1/stream/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello";
        let (h, n) = head(raw);
        assert_eq!(n, raw.len() - 5);
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri.path(), "/v1/stream/a");
        assert_eq!(h.parts.uri.query(), Some("x=1"));
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
    }

    #[test]
    fn pipelined_heads_parse_one_after_another() {
        let raw =
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n";
        let (a, n) = head(raw);
        assert_eq!(a.parts.uri.path(), "/a");
        let (b, m) = head(&raw[n..]);
        assert_eq!(b.parts.uri.path(), "/b");
        assert!(!b.keep_alive);
        assert!(matches!(parse_head(&raw[n + m..], None), Parsed::Partial));
    }

    #[test]
    fn a_head_split_at_every_byte_is_partial_until_complete() {
        let raw = b"PUT /v1/stream/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(
                matches!(parse_head(&raw[..cut], None), Parsed::Partial),
                "cut at {cut}"
            );
        }
        let (h, n) = head(raw);
        assert_eq!(n, raw.len());
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head(b"GET / HTTP/1.1\r\n\r\n").0.keep_alive);
        assert!(
            !head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !head(b"GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        let (h10, _) = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h10.keep_alive);
        assert_eq!(h10.parts.version, Version::HTTP_10);
    }

    #[test]
    fn expect_continue_only_with_a_body() {
        let (h, _) = head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(h.expect_continue);
        let (h, _) = head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue);
    }

    #[test]
    fn content_length_rules() {
        let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        // Conflicting, non-numeric, signed, empty, overflowing.
        for value in [
            "5\r\nContent-Length: 6",
            "5, 6",
            "abc",
            "-1",
            "+5",
            "",
            "99999999999999999999",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), StatusCode::BAD_REQUEST, "{value}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let (h, _) = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        // Not only chunked, chunked twice, with a length, from HTTP/1.0.
        let tail = "chunked\r\nContent-Length: 3";
        for (version, value) in [
            (1, "gzip"),
            (1, "gzip, chunked"),
            (1, "chunked, chunked"),
            (1, tail),
            (0, "chunked"),
        ] {
            let raw = format!("POST / HTTP/1.{version}\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), StatusCode::BAD_REQUEST, "{raw}");
        }
    }

    #[test]
    fn malformed_and_oversized_heads() {
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(bad(b"GET / HTTP/3.0\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(bad(b"G\x01T / HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(bad(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("X-{i}: v\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(bad(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn response_heads() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let text = |status, headers, out, keep, version| {
            String::from_utf8(encode_head(status, headers, out, keep, version, None)).unwrap()
        };
        let s = text(StatusCode::OK, &h, Out::Length(5), true, Version::HTTP_11);
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
            "{s}"
        );
        assert!(s.contains("\r\ncontent-length: 5\r\n"), "{s}");
        assert!(!s.contains("999") && !s.contains("connection"), "{s}");
        assert!(s.contains("\r\ndate: ") && s.contains(" GMT\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n"));
        let s = text(StatusCode::OK, &h, Out::Chunked, false, Version::HTTP_11);
        assert!(s.contains("\r\ntransfer-encoding: chunked\r\n"), "{s}");
        assert!(s.contains("\r\nconnection: close\r\n"), "{s}");
        assert!(!s.contains("content-length"), "{s}");
        // HEAD / 304: the handler's content-length stays, none is added.
        let s = text(
            StatusCode::NOT_MODIFIED,
            &h,
            Out::None,
            true,
            Version::HTTP_10,
        );
        assert!(s.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{s}");
        assert!(s.contains("content-length: 999\r\n"), "{s}");
        assert!(s.contains("\r\nconnection: keep-alive\r\n"), "{s}");
        let s = text(
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            Out::None,
            true,
            Version::HTTP_11,
        );
        assert!(
            !s.contains("content-length") && !s.contains("transfer-encoding"),
            "{s}"
        );
    }
}
