//! The pure parsing of everything a client sends: headers, query parameters
//! and stream names. No I/O; every function either returns a typed value or
//! an [`ApiError`] that says what to fix. The header names are in
//! [`header_names`](super::header_names), re-exported here.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::error::ApiError;
use super::fields::visible;
pub use super::fields::{Fields, Raw};
pub use super::header_names::*;
use crate::offset::{OFFSET_LEN, Offset, ReadFrom};
use crate::storage::{Expiry, ForkSpec, Millis, ProducerHeaders};

/// Largest integer a JavaScript client can represent exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A header's value as text; `None` when absent. Non-ASCII values and a
/// header sent twice (which value would count is ambiguous) are a 400.
pub fn text<'a, H: Fields + ?Sized>(
    headers: &'a H,
    name: &HeaderName,
) -> Result<Option<&'a str>, ApiError> {
    match headers.lookup(name) {
        (None, _) => Ok(None),
        (Some(_), true) => Err(ApiError::bad_request(
            "DUPLICATE_HEADER",
            format!("send header {name} once"),
        )),
        (Some(v), false) => visible(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_HEADER",
                format!("header {name} must be visible ASCII"),
            )
        }),
    }
}

/// An offset as the `ETag` (quoted) and `Stream-Next-Offset` values of an
/// answer: one buffer, both values views of it (an append's answer made
/// them with `format!` and two `String`s: ~1,000 instructions).
pub fn offset_values(o: Offset) -> (HeaderValue, HeaderValue) {
    let mut quoted = [b'"'; OFFSET_LEN + 2];
    quoted[1..=OFFSET_LEN].copy_from_slice(&o.encode());
    let b = Bytes::copy_from_slice(&quoted);
    let inner = b.slice(1..=OFFSET_LEN);
    // Hex digits, '_' and quotes: always a valid value.
    let value = |b| HeaderValue::from_maybe_shared(b).unwrap_or(HeaderValue::from_static(""));
    (value(b), value(inner))
}

/// `Stream-Closed` counts only when it is exactly `true` (any case).
pub fn stream_closed<H: Fields + ?Sized>(headers: &H) -> bool {
    headers
        .lookup(&STREAM_CLOSED)
        .0
        .and_then(visible)
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case("true"))
}

/// A non-negative decimal integer with no sign, leading zeros, fraction or
/// exponent.
pub fn strict_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    s.parse().ok()
}

/// `Stream-TTL` / `Stream-Expires-At`: at most one, well-formed.
pub fn expiry(headers: &HeaderMap) -> Result<Option<Expiry>, ApiError> {
    let ttl = text(headers, &STREAM_TTL)?;
    let at = text(headers, &STREAM_EXPIRES_AT)?;
    match (ttl, at) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "CONFLICTING_EXPIRY",
            "send either Stream-TTL or Stream-Expires-At, not both",
        )),
        (Some(t), None) => strict_uint(t.trim_ascii())
            .map(|secs| Some(Expiry::Ttl(secs)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_TTL",
                    "Stream-TTL must be a non-negative integer number of seconds, without sign, leading zeros or decimals",
                )
            }),
        (None, Some(a)) => chrono::DateTime::parse_from_rfc3339(a.trim_ascii())
            .map(|t| Some(Expiry::At(t.timestamp_millis().max(0) as Millis)))
            .map_err(|_| {
                ApiError::bad_request(
                    "INVALID_EXPIRES_AT",
                    "Stream-Expires-At must be an RFC 3339 timestamp",
                )
            }),
        (None, None) => Ok(None),
    }
}

/// Formats an absolute expiry for `Stream-Expires-At`.
pub fn format_expires_at(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn producer_int(name: &HeaderName, v: &str) -> Result<u64, ApiError> {
    strict_uint(v.trim_ascii())
        .filter(|n| *n <= MAX_SAFE_INTEGER)
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_PRODUCER_HEADER",
                format!("{name} must be a non-negative integer no larger than 2^53-1"),
            )
        })
}

/// The idempotent-producer headers: all three or none.
pub fn producer<H: Fields + ?Sized>(headers: &H) -> Result<Option<ProducerHeaders>, ApiError> {
    let id = text(headers, &PRODUCER_ID)?;
    let epoch = text(headers, &PRODUCER_EPOCH)?;
    let seq = text(headers, &PRODUCER_SEQ)?;
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.trim_ascii().is_empty() {
                return Err(ApiError::bad_request(
                    "INVALID_PRODUCER_HEADER",
                    "Producer-Id must not be empty",
                ));
            }
            Ok(Some(ProducerHeaders {
                id: id.to_string(),
                epoch: producer_int(&PRODUCER_EPOCH, epoch)?,
                seq: producer_int(&PRODUCER_SEQ, seq)?,
            }))
        }
        _ => Err(ApiError::bad_request(
            "INCOMPLETE_PRODUCER_HEADERS",
            "Producer-Id, Producer-Epoch and Producer-Seq must be sent together",
        )),
    }
}

/// `If-Match: "<offset>"`: one strong entity tag holding a stream offset
/// (the tail an optimistic-concurrency append expects). The wildcard `*`
/// is not supported (the proposal leaves it out: a `POST` to a missing
/// stream is a 404 anyway), nor are weak tags and lists; all are a 400.
pub fn if_match<H: Fields + ?Sized>(headers: &H) -> Result<Option<Offset>, ApiError> {
    let Some(v) = text(headers, &axum::http::header::IF_MATCH)? else {
        return Ok(None);
    };
    let v = v.trim_ascii();
    if v == "*" {
        return Err(ApiError::bad_request(
            "IF_MATCH_WILDCARD_UNSUPPORTED",
            "If-Match: * is not supported; send If-Match: \"<offset>\" with the stream's Stream-Next-Offset",
        ));
    }
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(Offset::parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_IF_MATCH",
                "If-Match must be one quoted stream offset, as in ETag or Stream-Next-Offset: \"<offset>\"",
            )
        })
}

/// `Stream-Seq`: any non-empty opaque string.
pub fn stream_seq<H: Fields + ?Sized>(headers: &H) -> Result<Option<String>, ApiError> {
    match text(headers, &STREAM_SEQ)? {
        Some("") => Err(ApiError::bad_request(
            "INVALID_STREAM_SEQ",
            "Stream-Seq must not be empty",
        )),
        other => Ok(other.map(str::to_string)),
    }
}

/// The fork headers of a `PUT`, with the source resolved to a stream name.
pub fn fork(headers: &HeaderMap, mount: &str) -> Result<Option<ForkSpec>, ApiError> {
    let from = text(headers, &STREAM_FORKED_FROM)?;
    let offset = text(headers, &STREAM_FORK_OFFSET)?;
    let sub = text(headers, &STREAM_FORK_SUB_OFFSET)?;
    let Some(from) = from else {
        if offset.is_some() || sub.is_some() {
            return Err(ApiError::bad_request(
                "FORK_HEADERS_WITHOUT_SOURCE",
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            ));
        }
        return Ok(None);
    };
    let raw = from.trim_ascii();
    let path = raw.strip_prefix(mount).unwrap_or(raw);
    let source = stream_name(path.trim_start_matches('/'), usize::MAX)?.into_owned();
    let offset = match offset {
        None => None,
        Some(o) => Some(Offset::parse(o.trim_ascii()).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_FORK_OFFSET",
                "Stream-Fork-Offset must be an offset returned by this server",
            )
        })?),
    };
    let sub_offset = match sub {
        None => 0,
        Some(s) => strict_uint(s.trim_ascii()).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_SUB_OFFSET",
                "Stream-Fork-Sub-Offset must be a non-negative integer without sign or leading zeros",
            )
        })?,
    };
    Ok(Some(ForkSpec {
        source,
        offset,
        sub_offset,
    }))
}

/// Percent-decodes and validates a stream name (the path under the mount):
/// non-empty segments, no `.`/`..`, no control characters, bounded length.
pub fn stream_name(raw: &str, max_len: usize) -> Result<Cow<'_, str>, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("INVALID_STREAM_NAME", why.to_string());
    let decoded = percent_decode(raw).ok_or_else(|| invalid("stream name is not valid UTF-8"))?;
    if decoded.is_empty() {
        return Err(invalid("stream name is empty"));
    }
    if decoded.len() > max_len {
        return Err(invalid("stream name is too long"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(invalid("stream name contains control characters"));
    }
    if decoded
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(invalid(
            "stream name has an empty, '.' or '..' path segment",
        ));
    }
    Ok(decoded)
}

/// `s` with its `%XX` escapes decoded (borrowed when it has none, as
/// almost every name); `None` when an escape is malformed or the result is
/// not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Live mode of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    CatchUp,
    LongPoll,
    Sse,
}

/// The query of a `GET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadQuery {
    pub from: ReadFrom,
    /// True when the client sent an `offset` parameter.
    pub explicit_offset: bool,
    pub live: Live,
    pub cursor: Option<u64>,
}

/// Parses `offset`, `live` and `cursor`; unknown parameters are ignored.
pub fn read_query(query: Option<&str>) -> Result<ReadQuery, ApiError> {
    let mut offset: Option<String> = None;
    let mut live = None;
    let mut cursor = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| {
                ApiError::bad_request("INVALID_QUERY", "query parameter is not valid UTF-8")
            })?
            .into_owned();
        match k {
            "offset" => {
                if offset.is_some() {
                    return Err(ApiError::bad_request(
                        "INVALID_OFFSET",
                        "send the offset parameter once",
                    ));
                }
                offset = Some(v);
            }
            "live" => {
                live = Some(match v.as_str() {
                    "long-poll" => Live::LongPoll,
                    "sse" => Live::Sse,
                    _ => {
                        return Err(ApiError::bad_request(
                            "INVALID_LIVE_MODE",
                            "live must be 'long-poll' or 'sse'",
                        ));
                    }
                })
            }
            // A cursor we cannot read is simply not one of ours; ignore it.
            "cursor" => cursor = v.parse().ok(),
            _ => {}
        }
    }
    let live = live.unwrap_or(Live::CatchUp);
    let from = match &offset {
        None if live != Live::CatchUp => {
            return Err(ApiError::bad_request(
                "MISSING_OFFSET",
                "live reads need an offset parameter (use -1 for the beginning or now for the tail)",
            ));
        }
        None => ReadFrom::Start,
        Some(o) => ReadFrom::parse(o).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_OFFSET",
                "offset must be -1, now, or an offset returned by this server",
            )
        })?,
    };
    Ok(ReadQuery {
        from,
        explicit_offset: offset.is_some(),
        live,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_integers() {
        assert_eq!(strict_uint("0"), Some(0));
        assert_eq!(strict_uint("3600"), Some(3600));
        for bad in ["", "+1", "-1", "01", "1.5", "1e3", "0x1", " 1", "abc"] {
            assert_eq!(strict_uint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offset_values_are_the_offset_quoted_and_bare() {
        for o in [
            Offset::new(0, 0),
            Offset::new(3, 10),
            Offset::new(u64::MAX, u64::MAX),
        ] {
            let (etag, next) = offset_values(o);
            assert_eq!(etag.to_str().unwrap(), format!("\"{o}\""));
            assert_eq!(next.to_str().unwrap(), o.to_string());
            // The ETag is what a chained `If-Match` sends back.
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::IF_MATCH, etag);
            assert_eq!(if_match(&h).unwrap(), Some(o));
        }
    }

    #[test]
    fn if_match_values() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::IF_MATCH, v.parse().unwrap());
            if_match(&h)
        };
        let o = Offset::new(3, 10);
        assert_eq!(with(&format!("\"{o}\"")).unwrap(), Some(o));
        assert_eq!(with(&format!(" \"{o}\" ")).unwrap(), Some(o));
        assert_eq!(with("*").unwrap_err().code, "IF_MATCH_WILDCARD_UNSUPPORTED");
        for bad in [
            o.to_string(),
            format!("W/\"{o}\""),
            format!("\"{o}\", \"{o}\""),
            "\"-1\"".into(),
            "\"now\"".into(),
            "\"\"".into(),
            "\"".into(),
        ] {
            assert_eq!(with(&bad).unwrap_err().code, "INVALID_IF_MATCH", "{bad}");
        }
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn stream_names() {
        assert_eq!(stream_name("a/b%20c", 100).unwrap(), "a/b c");
        // A name without escapes is the request's own text, not a copy.
        assert!(matches!(
            stream_name("a/b-c", 100).unwrap(),
            Cow::Borrowed("a/b-c")
        ));
        assert!(matches!(stream_name("a%2Fb", 100).unwrap(), Cow::Owned(n) if n == "a/b"));
        for bad in ["", "a//b", "../x", "a/./b", "a%00b", "a/", "%ff"] {
            assert!(stream_name(bad, 100).is_err(), "{bad:?}");
        }
        assert!(stream_name("abcdef", 3).is_err());
    }

    #[test]
    fn read_queries() {
        let q = read_query(Some("offset=-1&foo=bar&live=sse&cursor=12")).unwrap();
        assert_eq!(q.from, ReadFrom::Start);
        assert_eq!(q.live, Live::Sse);
        assert_eq!(q.cursor, Some(12));
        assert!(read_query(Some("offset=")).is_err());
        assert!(read_query(Some("offset=a&offset=b")).is_err());
        assert!(read_query(Some("live=long-poll")).is_err());
        assert!(read_query(Some("offset=now&live=websocket")).is_err());
        assert!(read_query(Some("offset=a%2Cb")).is_err());
        assert_eq!(read_query(None).unwrap().from, ReadFrom::Start);
    }

    #[test]
    fn a_header_sent_twice_is_refused() {
        let mut h = HeaderMap::new();
        h.append(PRODUCER_SEQ, "0".parse().unwrap());
        assert_eq!(text(&h, &PRODUCER_SEQ).unwrap(), Some("0"));
        h.append(PRODUCER_SEQ, "5".parse().unwrap());
        assert_eq!(
            text(&h, &PRODUCER_SEQ).unwrap_err().code,
            "DUPLICATE_HEADER"
        );
    }

    #[test]
    fn producer_headers_all_or_none() {
        let mut h = HeaderMap::new();
        assert_eq!(producer(&h).unwrap(), None);
        h.insert(PRODUCER_ID, "p".parse().unwrap());
        assert!(producer(&h).is_err());
        h.insert(PRODUCER_EPOCH, "0".parse().unwrap());
        h.insert(PRODUCER_SEQ, "1e3".parse().unwrap());
        assert!(producer(&h).is_err());
        h.insert(PRODUCER_SEQ, "9007199254740992".parse().unwrap());
        assert!(producer(&h).is_err());
        h.insert(PRODUCER_SEQ, "9007199254740991".parse().unwrap());
        assert_eq!(producer(&h).unwrap().unwrap().seq, 9007199254740991);
    }
}
