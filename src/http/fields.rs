//! Request headers as the parsers in [`headers`](super::headers) read
//! them: from an axum [`HeaderMap`], or from the header lines of a head the
//! HTTP/1 engine parsed itself ([`Raw`]: an append answered without
//! building a map, `h1::append`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::header_names::{PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, STREAM_CLOSED, STREAM_SEQ};

/// Where request headers are looked up: an axum [`HeaderMap`], or the
/// raw header lines of a head the HTTP/1 engine parsed ([`Raw`]), which an
/// append answered without building a map reads.
pub trait Fields {
    /// The first value of `name`, and whether it was sent more than once.
    fn lookup(&self, name: &HeaderName) -> (Option<&[u8]>, bool);
    /// Whether any of `names` was sent.
    fn any_of(&self, names: &[HeaderName]) -> bool;
}

impl Fields for HeaderMap {
    fn lookup(&self, name: &HeaderName) -> (Option<&[u8]>, bool) {
        let mut values = self.get_all(name).iter();
        let first = values.next().map(HeaderValue::as_bytes);
        (first, first.is_some() && values.next().is_some())
    }

    fn any_of(&self, names: &[HeaderName]) -> bool {
        self.keys().any(|k| names.contains(k))
    }
}

/// The header lines of a head as `httparse` found them (names in any
/// case), with the ones an append reads ([`RAW_KNOWN`]) found in one pass:
/// a lookup of one of those is then an index, not a scan of every line.
pub struct Raw<'h, 'b> {
    lines: &'h [httparse::Header<'b>],
    known: [(Option<&'b [u8]>, bool); RAW_LEN],
}

/// The headers [`Raw`] finds as it is made (`known` picks them by the
/// length of their names: keep it in step).
const RAW_LEN: usize = 7;
static RAW_KNOWN: [HeaderName; RAW_LEN] = [
    axum::http::header::CONTENT_TYPE,
    STREAM_CLOSED,
    STREAM_SEQ,
    PRODUCER_ID,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    axum::http::header::IF_MATCH,
];

impl<'h, 'b> Raw<'h, 'b> {
    pub fn new(lines: &'h [httparse::Header<'b>]) -> Self {
        let mut found = [(None, false); RAW_LEN];
        for h in lines {
            if let Some(i) = known(h.name, str::eq_ignore_ascii_case) {
                let (first, more) = &mut found[i];
                *more |= first.is_some();
                first.get_or_insert(h.value);
            }
        }
        Raw {
            lines,
            known: found,
        }
    }
}

/// Which of [`RAW_KNOWN`] `name` is, as `same` compares names; by length
/// first (most names are none of them, and a `HeaderName` comparison per
/// known name cost ~100 instructions a lookup).
fn known(name: &str, same: impl Fn(&str, &str) -> bool) -> Option<usize> {
    let maybe = |i: usize| same(name, RAW_KNOWN[i].as_str()).then_some(i);
    match name.len() {
        12 => maybe(0).or_else(|| maybe(5)),
        13 => maybe(1),
        10 => maybe(2),
        11 => maybe(3),
        14 => maybe(4),
        8 => maybe(6),
        _ => None,
    }
}

impl Fields for Raw<'_, '_> {
    fn lookup(&self, name: &HeaderName) -> (Option<&[u8]>, bool) {
        // `HeaderName`s are lower case.
        if let Some(i) = known(name.as_str(), |a, b| a == b) {
            return self.known[i];
        }
        let name = name.as_str();
        let mut values = self
            .lines
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value);
        let first = values.next();
        (first, first.is_some() && values.next().is_some())
    }

    fn any_of(&self, names: &[HeaderName]) -> bool {
        names.iter().any(|n| self.lookup(n).0.is_some())
    }
}

/// `v` as text when it is visible ASCII (or tabs), as
/// [`HeaderValue::to_str`] decides.
pub(super) fn visible(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        // SAFETY: tabs and bytes 32..127 are ASCII, so valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(v) })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::text;

    #[test]
    fn raw_lines_answer_as_a_header_map_does() {
        let lines = [
            httparse::Header {
                name: "content-TYPE",
                value: b"text/plain",
            },
            httparse::Header {
                name: "Producer-Seq",
                value: b"1",
            },
            httparse::Header {
                name: "producer-seq",
                value: b"2",
            },
            httparse::Header {
                name: "Host",
                value: b"x",
            },
            httparse::Header {
                name: "host",
                value: b"y",
            },
            httparse::Header {
                name: "X-Note",
                value: b"caf\xc3\xa9",
            },
        ];
        let raw = Raw::new(&lines);
        let mut map = HeaderMap::new();
        for l in &lines {
            map.append(
                HeaderName::from_bytes(l.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(l.value).unwrap(),
            );
        }
        let names = [
            axum::http::header::CONTENT_TYPE,
            PRODUCER_SEQ,
            PRODUCER_ID,
            axum::http::header::HOST,
            HeaderName::from_static("x-note"),
            axum::http::header::IF_MATCH,
        ];
        for n in &names {
            assert_eq!(raw.lookup(n), map.lookup(n), "{n}");
            let (a, b) = (text(&raw, n), text(&map, n));
            assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "{n}");
            assert_eq!(a.err().map(|e| e.code), b.err().map(|e| e.code), "{n}");
        }
        assert_eq!(raw.lookup(&PRODUCER_SEQ), (Some(&b"1"[..]), true));
        // Every known name is found as it is made, in any case.
        for (i, n) in RAW_KNOWN.iter().enumerate() {
            let upper = n.as_str().to_ascii_uppercase();
            let line = [httparse::Header {
                name: &upper,
                value: b"v",
            }];
            assert_eq!(Raw::new(&line).known[i], (Some(&b"v"[..]), false), "{n}");
        }
        assert!(raw.any_of(&[STREAM_SEQ, PRODUCER_SEQ]));
        assert!(!raw.any_of(&[STREAM_SEQ, PRODUCER_ID]));
    }
}
