//! The native HTTP/1.1 connection loop (`http_engine = "native"`, the
//! default) against the real binary over raw TCP: pipelining, keep-alive
//! and its end, `Expect: 100-continue`, chunked and slow request bodies,
//! HEAD, malformed framing, the idle timeout; and the hyper engine still
//! serving when chosen.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One response read off a keep-alive connection.
#[derive(Debug)]
struct Res {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Res {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }

    /// Reads one response; `head_only` for HEAD.
    fn read(&mut self, head_only: bool) -> Res {
        let status_line = self.line();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let status = status_line[9..12].parse().unwrap();
        let mut head = String::new();
        loop {
            let l = self.line();
            if l == "\r\n" {
                break;
            }
            assert!(!l.is_empty(), "connection closed inside a head");
            head.push_str(&l);
        }
        let mut res = Res {
            status,
            head,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 || status / 100 == 1 {
            return res;
        }
        if res.header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let size = usize::from_str_radix(self.line().trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.r.read_exact(&mut chunk).unwrap();
                res.body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = res.header("content-length") {
            let mut body = vec![0; n.parse().unwrap()];
            self.r.read_exact(&mut body).unwrap();
            res.body = body;
        } else {
            self.r.read_to_end(&mut res.body).unwrap();
        }
        res
    }

    /// True when the server closes the connection (EOF) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

fn server(env: &[(&str, &str)]) -> common::Server {
    common::Server::start_with_env(&["--storage", "memory"], env)
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = server(&[]);
    let mut c = Conn::open(&s.addr);
    let mut raw = b"PUT /v1/stream/p HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\na".to_vec();
    for part in ["b", "cd", "efg"] {
        raw.extend(
            format!(
                "POST /v1/stream/p HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{part}",
                part.len()
            )
            .bytes(),
        );
    }
    raw.extend(b"HEAD /v1/stream/p HTTP/1.1\r\nHost: x\r\n\r\n");
    raw.extend(b"GET /v1/stream/p?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.send(&raw);
    assert_eq!(c.read(false).status, 201);
    for _ in 0..3 {
        assert_eq!(c.read(false).status, 204);
    }
    let head = c.read(true);
    assert_eq!(head.status, 200);
    let get = c.read(false);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, b"abcdefg");
    assert!(get.header("date").is_some_and(|d| d.ends_with("GMT")));
    // Still open: keep-alive is the HTTP/1.1 default.
    c.send(b"GET /v1/stream/p?offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let last = c.read(false);
    assert_eq!(last.body, b"abcdefg");
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn expect_100_continue_waits_for_the_server_then_the_body() {
    let s = server(&[]);
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/e HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n");
    assert_eq!(c.read(false).status, 201);
    c.send(b"POST /v1/stream/e HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(c.line(), "HTTP/1.1 100 Continue\r\n");
    assert_eq!(c.line(), "\r\n");
    c.send(b"hello");
    assert_eq!(c.read(false).status, 204);
    c.send(b"GET /v1/stream/e?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"hello");
    // Refused before the body is read (too large): no 100, and the
    // connection closes since the client may or may not send the body.
    c.send(b"POST /v1/stream/e HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
}

#[test]
fn chunked_and_slow_request_bodies() {
    let s = server(&[]);
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Arrives in pieces, split inside sizes, data, CRLFs and trailers.
    let wire = b"4;ext=1\r\nabcd\r\n1\r\ne\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
    for piece in wire.chunks(3) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.read(false).status, 201);
    // A Content-Length body trickling in.
    c.send(b"POST /v1/stream/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n");
    for b in b"slow!!" {
        std::thread::sleep(Duration::from_millis(50));
        c.send(&[*b]);
    }
    assert_eq!(c.read(false).status, 204);
    c.send(b"GET /v1/stream/c?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"abcde0123456789abcdefslow!!");
}

#[test]
fn an_append_body_sent_apart_from_its_head_lands_once() {
    // The engine waits for a small body under the head's deadline; when
    // that passes first, the general path takes the request and its body.
    let s = server(&[("DS_HEADER_READ_TIMEOUT", "1s")]);
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/apart HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read(false).status, 201);
    let head = b"POST /v1/stream/apart HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n";
    for (pause, body) in [(20, b"one.."), (1_500, b"two..")] {
        c.send(head);
        c.send(&body[..2]);
        std::thread::sleep(Duration::from_millis(pause));
        c.send(&body[2..]);
        let r = c.read(false);
        assert_eq!(r.status, 204, "after {pause} ms");
        assert!(r.header("stream-next-offset").is_some());
    }
    c.send(b"GET /v1/stream/apart?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"one..two..");
    // A client that stops sending inside the body appends nothing.
    let mut cut = Conn::open(&s.addr);
    cut.send(head);
    cut.send(b"xy");
    cut.w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = cut.r.read_to_end(&mut rest);
    let answer = String::from_utf8_lossy(&rest);
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer:?}");
    c.send(b"GET /v1/stream/apart?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"one..two..");
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let s = server(&[]);
    let mut c = Conn::open(&s.addr);
    c.send(b"GET /v1/stream/none HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    c.send(b"GET /v1/stream/none HTTP/1.0\r\n\r\n");
    assert_eq!(c.read(false).status, 404);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn bad_framing_gets_400_and_a_close() {
    let s = server(&[]);
    for raw in [
        &b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
        b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /v1/stream/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let mut c = Conn::open(&s.addr);
        c.send(raw);
        let r = c.read(false);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(c.closed_within(Duration::from_secs(5)));
    }
    // A malformed chunked body reaches the handler as a failed read.
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(c.read(false).status, 400);
}

#[test]
fn idle_and_silent_connections_close_after_header_read_timeout() {
    let s = server(&[("DS_HEADER_READ_TIMEOUT", "1s")]);
    let mut idle = Conn::open(&s.addr);
    idle.send(b"GET /v1/stream/none HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read(false).status, 404);
    let mut silent = Conn::open(&s.addr);
    let mut partial = Conn::open(&s.addr);
    partial.send(b"GET /v1/stream/none HTTP/1.1\r\nHo");
    let started = Instant::now();
    for c in [&mut idle, &mut silent, &mut partial] {
        assert!(c.closed_within(Duration::from_secs(5)));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn sse_frames_leave_as_they_come_and_a_hang_up_is_noticed() {
    let s = server(&[]);
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n");
    assert_eq!(c.read(false).status, 201);
    let mut sub = Conn::open(&s.addr);
    sub.send(b"GET /v1/stream/s?offset=-1&live=sse HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(sub.line(), "HTTP/1.1 200 OK\r\n");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head.push_str(&sub.line());
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    c.send(b"POST /v1/stream/s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nping-42");
    assert_eq!(c.read(false).status, 204);
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(5);
    while !seen.contains("ping-42") && Instant::now() < until {
        seen.push_str(&sub.line());
    }
    assert!(seen.contains("ping-42"), "{seen}");
    drop(sub);
    // The server is still fine after the subscriber vanished.
    c.send(b"GET /v1/stream/s?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"ping-42");
}

#[test]
fn http2_prior_knowledge_still_reaches_hyper() {
    let s = server(&[]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The preface and an empty SETTINGS frame; the server answers with its
    // own SETTINGS frame (type 4).
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut frame = [0u8; 9];
    c.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 4, "{frame:?}");
}

#[test]
fn the_hyper_engine_still_serves() {
    let s = common::Server::start(&["--storage", "memory", "--http-engine", "hyper"]);
    let mut c = Conn::open(&s.addr);
    c.send(b"PUT /v1/stream/h HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(c.read(false).status, 201);
    c.send(b"GET /v1/stream/h?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read(false).body, b"hi");
}

/// The header lines of an answer, sorted, without the ones that depend on
/// the moment (`date`, `stream-cursor`).
fn lines(r: &Res) -> Vec<String> {
    let mut v: Vec<String> = r
        .head
        .lines()
        .filter_map(|l| {
            let (n, val) = l.split_once(':')?;
            let n = n.trim().to_ascii_lowercase();
            (n != "date" && n != "stream-cursor").then(|| format!("{n}: {}", val.trim()))
        })
        .collect();
    v.sort();
    v
}

/// One script of requests on one connection, with and without an
/// `Origin`; the status and header lines of every answer.
fn script(addr: &str) -> Vec<(u16, Vec<String>)> {
    let mut c = Conn::open(addr);
    let mut out = Vec::new();
    for origin in [
        "",
        "Origin: https://a.example\r\n",
        "Origin: https://evil.example\r\n",
    ] {
        let name = format!("p{}", out.len());
        let reqs: Vec<(String, bool)> = vec![
            (
                format!(
                    "PUT /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{origin}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
                ),
                false,
            ),
            (
                format!(
                    "POST /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{origin}Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"
                ),
                false,
            ),
            (
                format!("GET /v1/stream/{name}?offset=-1 HTTP/1.1\r\nHost: x\r\n{origin}\r\n"),
                false,
            ),
            (
                format!("HEAD /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{origin}\r\n"),
                true,
            ),
            (
                format!(
                    "GET /v1/stream/{name}?offset=-1&live=long-poll HTTP/1.1\r\nHost: x\r\n{origin}\r\n"
                ),
                false,
            ),
            (
                format!(
                    "POST /v1/stream/nope HTTP/1.1\r\nHost: x\r\n{origin}Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
                ),
                false,
            ),
            (
                format!("DELETE /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{origin}\r\n"),
                false,
            ),
        ];
        for (raw, head) in reqs {
            c.send(raw.as_bytes());
            let r = c.read(head);
            out.push((r.status, lines(&r)));
        }
    }
    out
}

#[test]
fn the_native_engine_writes_the_headers_hyper_writes() {
    // The native engine writes the fast path's CORS and security headers
    // from pre-encoded lines, not from the answer's map: each must still
    // be there exactly once, as hyper writes them from the map.
    for cors in [None, Some("https://a.example")] {
        let mut args = vec!["--storage", "memory"];
        if let Some(o) = cors {
            args.extend(["--cors-origin", o]);
        }
        let native = common::Server::start(&args);
        args.extend(["--http-engine", "hyper"]);
        let hyper = common::Server::start(&args);
        let (ours, theirs) = (script(&native.addr), script(&hyper.addr));
        assert_eq!(ours.len(), 21);
        assert_eq!(ours, theirs, "cors {cors:?}");
        // Answers 0-6 have no `Origin`: the exposed headers (like
        // `access-control-allow-origin` below) only answer one that has.
        for (i, (status, lines)) in ours.iter().enumerate() {
            for name in [
                "vary",
                "access-control-expose-headers",
                "x-content-type-options",
                "cross-origin-resource-policy",
            ] {
                let n = lines
                    .iter()
                    .filter(|l| l.starts_with(&format!("{name}:")))
                    .count();
                let want = usize::from(i >= 7 || name != "access-control-expose-headers");
                assert_eq!(n, want, "{status} {name} in {lines:?}");
            }
            // Only `Origin` varies the answer of a request that is not a
            // preflight.
            assert!(lines.contains(&"vary: origin".to_string()), "{lines:?}");
        }
        let allowed: Vec<_> = ours
            .iter()
            .map(|(_, l)| {
                l.iter()
                    .filter(|l| l.starts_with("access-control-allow-origin:"))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        // Without a list any origin is allowed (`*`); with one, only a
        // listed origin is echoed; a request without one gets none.
        for (i, a) in allowed.iter().enumerate() {
            let want = match (cors, i / 7) {
                (_, 0) => vec![],
                (None, _) => vec!["access-control-allow-origin: *".to_string()],
                (Some(_), 1) => vec!["access-control-allow-origin: https://a.example".to_string()],
                (Some(_), _) => vec![],
            };
            assert_eq!(a, &want, "answer {i}, cors {cors:?}");
        }
    }
}

/// Appends of every shape on one connection: the status, header lines and
/// body of each answer. The native engine answers plain appends itself,
/// without a header map (`h1::append`); hyper goes the general way.
fn append_script(addr: &str) -> Vec<(u16, Vec<String>, String)> {
    let mut c = Conn::open(addr);
    let post = |name: &str, extra: &str, body: &str| {
        format!(
            "POST /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let reqs = vec![
        "PUT /v1/stream/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n".to_string(),
        "PUT /v1/stream/j%20k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n".to_string(),
        post("t", "Content-Type: text/plain\r\n", "abc"),
        post("t", "content-type: TEXT/PLAIN; charset=utf-8\r\n", "d"),
        post("t", "Content-Type: application/json\r\n", "e"),
        post("t", "Content-Type: text/plain\r\nContent-Type: text/plain\r\n", "f"),
        post("t", "Content-Type: text/plain\r\nStream-Seq: a\r\n", "g"),
        post("t", "Content-Type: text/plain\r\nStream-Seq: a\r\n", "h"),
        post("t", "Content-Type: text/plain\r\nStream-Seq: \r\n", "h"),
        post("t", "Content-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\n", "i"),
        post("t", "Content-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\n", "i"),
        post("t", "Content-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 5\r\n", "j"),
        post("t", "Content-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 01\r\nProducer-Seq: 1\r\n", "j"),
        post("t", "Content-Type: text/plain\r\nProducer-Id: p\r\n", "k"),
        post("t", "Content-Type: text/plain\r\nIf-Match: ETAG\r\n", "l"),
        post("t", "Content-Type: text/plain\r\nIf-Match: OLD\r\n", "l"),
        post("t", "Content-Type: text/plain\r\nIf-Match: *\r\n", "l"),
        post("t", "Content-Type: text/plain\r\nIf-Match: nope\r\n", "l"),
        post("t", "Content-Type: caf\u{e9}\r\n", "m"),
        post("j%20k", "Content-Type: application/json\r\n", "[1,2]"),
        post("j%20k", "Content-Type: application/json\r\n", "{bad"),
        post("nope", "Content-Type: text/plain\r\n", "n"),
        post("a/../b", "Content-Type: text/plain\r\n", "n"),
        post("%ff", "Content-Type: text/plain\r\n", "n"),
        post("t", "Origin: https://a.example\r\nContent-Type: text/plain\r\n", "o"),
        post(
            "t",
            "Origin: https://a.example\r\nOrigin: https://b.example\r\nContent-Type: text/plain\r\n",
            "o",
        ),
        post("t", "Content-Type: text/plain\r\nStream-Closed: true\r\n", "p"),
        post("t", "Content-Type: text/plain\r\n", "q"),
        post("t", "Stream-Closed: true\r\n", ""),
        "GET /v1/stream/t?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        post("t", "Content-Type: text/plain\r\nConnection: close\r\n", "r"),
    ];
    let mut out = Vec::new();
    // `ETAG` stands for the last answer's (the tail an `If-Match` expects),
    // `OLD` for the one before it.
    let (mut etag, mut old) = (String::new(), String::new());
    for raw in reqs {
        c.send(raw.replace("ETAG", &etag).replace("OLD", &old).as_bytes());
        let r = c.read(false);
        if let Some(e) = r.header("etag") {
            old = std::mem::replace(&mut etag, e);
        }
        out.push((
            r.status,
            lines(&r),
            String::from_utf8_lossy(&r.body).into_owned(),
        ));
    }
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "Connection: close is honoured"
    );
    out
}

#[test]
fn appends_the_engine_answers_itself_match_the_general_path() {
    // A CORS list, so that which `Origin` counts shows in the answer.
    let args = ["--storage", "memory", "--cors-origin", "https://a.example"];
    let native = common::Server::start(&args);
    let hyper = common::Server::start(&[&args[..], &["--http-engine", "hyper"]].concat());
    let ours = append_script(&native.addr);
    let theirs = append_script(&hyper.addr);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "answer {i}");
    }
    assert_eq!(ours.len(), theirs.len());
    // The first `Origin` of two counts, as in a header map.
    let allowed = "access-control-allow-origin: https://a.example".to_string();
    assert!(ours[24].1.contains(&allowed), "{:?}", ours[24]);
    // The script did what it says: appends, a duplicate, refusals.
    let statuses: Vec<u16> = ours.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        statuses,
        [
            201, 201, 204, 204, 409, 400, 204, 409, 400, 200, 204, 409, 400, 400, 204, 412, 400,
            400, 400, 204, 400, 404, 400, 400, 204, 204, 204, 409, 204, 200, 409
        ]
    );
}

/// The file backend keeps the last large record as bytes of the data
/// file's mapping, which the native engine sends by reference (`vmsplice`
/// and `splice`): every reader gets every byte of it, in order, on
/// keep-alive and pipelined connections, also after later appends made it
/// an older record and after a trim.
/// Appends with auth on: tokens missing, unknown, of the wrong scope,
/// right; with bad names, missing streams, an `Origin`.
fn authed_append_script(addr: &str) -> Vec<(u16, Vec<String>, String)> {
    let mut c = Conn::open(addr);
    let post = |name: &str, extra: &str| {
        format!(
            "POST /v1/stream/{name} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
    };
    let reqs = vec![
        "PUT /v1/stream/t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer w-token\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n".to_string(),
        post("t", ""),
        post("t", "Authorization: Bearer nope\r\n"),
        post("t", "Authorization: Bearer r-token\r\n"),
        post("t", "Authorization: Basic w-token\r\n"),
        post("t", "Authorization: Bearer \r\n"),
        post("t", "Authorization: Bearer w-token\r\n"),
        post("t", "authorization: bearer   w-token  \r\n"),
        // The first header counts.
        post("t", "Authorization: Bearer nope\r\nAuthorization: Bearer w-token\r\n"),
        post("t", "Authorization: Bearer w-token\r\nAuthorization: Bearer nope\r\n"),
        post("nope", "Authorization: Bearer w-token\r\n"),
        post("nope", ""),
        post("%ff", "Authorization: Bearer w-token\r\n"),
        post("%ff", ""),
        post("t", "Authorization: Bearer w-token\r\nOrigin: https://a.example\r\n"),
        post("t", "Origin: https://a.example\r\n"),
        post(
            "t",
            "Authorization: Bearer w-token\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\n",
        ),
        post("t", "Authorization: Bearer w-token\r\nStream-Seq: \r\n"),
        "GET /v1/stream/t?offset=-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer r-token\r\n\r\n".to_string(),
    ];
    reqs.into_iter()
        .map(|raw| {
            c.send(raw.as_bytes());
            let r = c.read(false);
            (
                r.status,
                lines(&r),
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        })
        .collect()
}

#[test]
fn authenticated_appends_the_engine_answers_itself_match_the_general_path() {
    let args = ["--storage", "memory", "--cors-origin", "https://a.example"];
    let env = [
        ("DS_AUTH_ENABLED", "true"),
        ("DS_AUTH_WRITE_TOKENS", "w-token"),
        ("DS_AUTH_READ_TOKENS", "r-token"),
    ];
    let native = common::Server::start_with_env(&args, &env);
    let hyper =
        common::Server::start_with_env(&[&args[..], &["--http-engine", "hyper"]].concat(), &env);
    let ours = authed_append_script(&native.addr);
    let theirs = authed_append_script(&hyper.addr);
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "answer {i}");
    }
    let status: Vec<u16> = ours.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        status,
        [
            201, 401, 401, 403, 401, 401, 204, 204, 401, 204, 404, 401, 400, 401, 204, 401, 200,
            400, 200
        ]
    );
    // Answers to a token are for its client only (refusals are never
    // stored at all).
    for (i, want) in [
        (6, "cache-control: private"),
        (16, "cache-control: private"),
        (10, "cache-control: no-store"),
        (17, "cache-control: no-store"),
    ] {
        assert!(
            ours[i].1.contains(&want.to_string()),
            "answer {i}: {:?}",
            ours[i].1
        );
    }
    // Every accepted append is there, once.
    assert_eq!(ours.last().unwrap().2, "hi".repeat(5));
}

#[test]
fn the_last_large_record_sent_by_reference_arrives_whole() {
    let s = common::Server::start(&["--storage", "file"]);
    let mut c = Conn::open(&s.addr);
    let path = "/v1/stream/hot";
    c.send(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(c.read(false).status, 201);
    let record = |k: u8| -> Vec<u8> {
        (0..(1usize << 20) + 7)
            .map(|i| (i % 241) as u8 ^ k)
            .collect()
    };
    let mut post = |body: &[u8]| -> String {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes());
        c.send(body);
        let r = c.read(false);
        assert!(r.status / 100 == 2, "append: {}", r.status);
        r.header("stream-next-offset").unwrap()
    };
    let (a, b, c_rec) = (record(1), record(2), record(3));
    let after_a = post(&a);
    let after_b = post(&b);
    let get = move |offset: &str| format!("GET {path}?offset={offset} HTTP/1.1\r\nHost: x\r\n\r\n");
    // Several readers of the newest record at once, two pipelined reads
    // each.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, from) = (s.addr.clone(), after_a.clone());
            let want = b.clone();
            std::thread::spawn(move || {
                let mut r = Conn::open(&addr);
                for _ in 0..3 {
                    r.send(format!("{}{}", get(&from), get(&from)).as_bytes());
                    for _ in 0..2 {
                        let res = r.read(false);
                        assert_eq!(res.status, 200);
                        assert!(res.body == want, "the newest record differs");
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let mut r = Conn::open(&s.addr);
    r.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let metrics = String::from_utf8(r.read(false).body).unwrap();
    let by_reference: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ds_response_bytes_by_reference_total "))
        .expect("the counter is exported")
        .trim()
        .parse()
        .unwrap();
    assert!(
        by_reference >= 4 * 3 * 2 * b.len(),
        "every read of the newest record went by reference: {by_reference}"
    );
    // A later record: the one before it is read back from the file.
    let after_c = post(&c_rec);
    r.send(get(&after_a).as_bytes());
    let res = r.read(false);
    assert_eq!(res.status, 200);
    let mut want = b.clone();
    want.extend_from_slice(&c_rec);
    assert!(res.body == want, "the two newest records differ");
    r.send(get(&after_b).as_bytes());
    assert!(r.read(false).body == c_rec, "the newest record differs");
    // A trim up to the newest: it reads on whole, what went before is gone.
    r.send(
        format!(
            "POST /v1/stream/__ds/trim/hot?before={after_b} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(r.read(false).status / 100 == 2, "trim");
    r.send(get(&after_b).as_bytes());
    assert!(
        r.read(false).body == c_rec,
        "the newest record after a trim"
    );
    r.send(get(&after_a).as_bytes());
    assert_eq!(r.read(false).status, 410);
    assert!(!after_c.is_empty());
}
