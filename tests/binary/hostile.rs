//! Hostile requests against the real binary (file backend): every request
//! the server itself answers gets a 4xx `application/problem+json`, never a
//! 5xx; malformed HTTP that hyper rejects before the router (bad request
//! lines, oversized or NUL-carrying heads) gets hyper's bare 4xx or a closed
//! connection; the server stays up and writes nothing outside its data
//! directory.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Who answers a hostile request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum By {
    /// The application: a 4xx problem+json.
    Server,
    /// hyper, before routing: a bare 4xx or a closed connection.
    Hyper,
}

/// Sends `raw` on a fresh connection and reads until the server closes it
/// (or 5 s pass). `None` when no response head came back.
fn raw(addr: &str, raw: &[u8]) -> Option<common::Reply> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before taking everything.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| common::parse(&out, raw.starts_with(b"HEAD")))
}

fn req(method: &str, target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length") || h.contains("chunked"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_requests_get_4xx_problems_and_touch_nothing_outside_the_data_dir() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let server = common::Server::start(&[
        "--storage",
        "file",
        "--data-dir",
        data.to_str().unwrap(),
        "--max-body-bytes",
        "1000",
    ]);
    let addr = server.addr.clone();
    let plain = "Content-Type: text/plain";
    let json = "Content-Type: application/json";
    for (name, ct) in [("p", plain), ("j", json)] {
        let r = raw(
            &addr,
            &req("PUT", &format!("/v1/stream/{name}"), &[ct], b""),
        );
        assert_eq!(r.map(|r| r.status), Some(201));
    }
    let long_name = format!("/v1/stream/{}", "a".repeat(5000));
    let deep_json = "[".repeat(100_000);
    let big_header = format!("X-Big: {}", "b".repeat(1 << 20));
    let many_headers: Vec<String> = (0..500).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many_headers.iter().map(String::as_str).collect();
    let long_uri = format!("/v1/stream/p?offset=-1&x={}", "y".repeat(100_000));
    let seq = |s: &'static str| ["Producer-Id: a", "Producer-Epoch: 0", s, plain];
    let epoch = |s: &'static str| ["Producer-Id: a", s, "Producer-Seq: 0", plain];

    let mut cases: Vec<(&str, Vec<u8>, By)> = vec![
        ("wrong method", req("PATCH", "/v1/stream/p", &[], b""), By::Server),
        ("unknown method", req("BREW", "/v1/stream/p", &[], b""), By::Server),
        ("root path", req("GET", "/", &[], b""), By::Server),
        ("mount without name", req("GET", "/v1/stream/", &[], b""), By::Server),
        ("missing stream", req("GET", "/v1/stream/nope", &[], b""), By::Server),
        ("reserved prefix", req("PUT", "/v1/stream/__ds/x", &[plain], b""), By::Server),
        ("traversal", req("PUT", "/v1/stream/../../etc/passwd", &[plain], b""), By::Server),
        ("traversal at end", req("PUT", "/v1/stream/a/..", &[plain], b""), By::Server),
        ("dot segment", req("PUT", "/v1/stream/a/./b", &[plain], b""), By::Server),
        ("encoded traversal", req("PUT", "/v1/stream/%2e%2e/%2e%2e/x", &[plain], b""), By::Server),
        ("encoded slash traversal", req("PUT", "/v1/stream/a%2f..%2f..%2fx", &[plain], b""), By::Server),
        ("double-encoded traversal", req("GET", "/v1/stream/%252e%252e", &[], b""), By::Server),
        ("empty segment", req("PUT", "/v1/stream/a//b", &[plain], b""), By::Server),
        ("encoded NUL in name", req("PUT", "/v1/stream/a%00b", &[plain], b""), By::Server),
        ("encoded newline in name", req("PUT", "/v1/stream/a%0d%0aSet-Cookie:x", &[plain], b""), By::Server),
        ("invalid UTF-8 in name", req("PUT", "/v1/stream/%ff%fe", &[plain], b""), By::Server),
        ("truncated escape", req("PUT", "/v1/stream/a%2", &[plain], b""), By::Server),
        ("name too long", req("PUT", &long_name, &[plain], b""), By::Server),
        ("fork traversal", req("PUT", "/v1/stream/f1", &[plain, "Stream-Forked-From: /v1/stream/../p"], b""), By::Server),
        ("fork of missing", req("PUT", "/v1/stream/f2", &[plain, "Stream-Forked-From: /v1/stream/none"], b""), By::Server),
        ("huge fork offset", req("PUT", "/v1/stream/f3", &[plain, "Stream-Forked-From: /v1/stream/p", "Stream-Fork-Offset: ffffffffffffffff_ffffffffffffffff"], b""), By::Server),
        ("huge fork sub-offset", req("PUT", "/v1/stream/f4", &[json, "Stream-Forked-From: /v1/stream/j", "Stream-Fork-Sub-Offset: 18446744073709551615"], b""), By::Server),
        ("negative TTL", req("PUT", "/v1/stream/t1", &[plain, "Stream-TTL: -1"], b""), By::Server),
        ("overflowing TTL", req("PUT", "/v1/stream/t2", &[plain, "Stream-TTL: 99999999999999999999999"], b""), By::Server),
        ("TTL and Expires-At", req("PUT", "/v1/stream/t3", &[plain, "Stream-TTL: 1", "Stream-Expires-At: 2030-01-01T00:00:00Z"], b""), By::Server),
        ("garbage Expires-At", req("PUT", "/v1/stream/t4", &[plain, "Stream-Expires-At: tomorrow"], b""), By::Server),
        ("huge offset", req("GET", "/v1/stream/p?offset=ffffffffffffffff_ffffffffffffffff", &[], b""), By::Server),
        ("overlong offset", req("GET", "/v1/stream/p?offset=99999999999999999999999999999999999", &[], b""), By::Server),
        ("negative offset", req("GET", "/v1/stream/p?offset=-2", &[], b""), By::Server),
        ("offset twice", req("GET", "/v1/stream/p?offset=-1&offset=now", &[], b""), By::Server),
        ("bad live mode", req("GET", "/v1/stream/p?offset=-1&live=ws", &[], b""), By::Server),
        ("live without offset", req("GET", "/v1/stream/p?live=sse", &[], b""), By::Server),
        ("bad escape in query", req("GET", "/v1/stream/p?offset=%zz", &[], b""), By::Server),
        ("invalid UTF-8 in query", req("GET", "/v1/stream/p?offset=%ff", &[], b""), By::Server),
        ("negative producer seq", req("POST", "/v1/stream/p", &seq("Producer-Seq: -1"), b"x"), By::Server),
        ("non-numeric producer seq", req("POST", "/v1/stream/p", &seq("Producer-Seq: one"), b"x"), By::Server),
        ("producer seq past 2^53", req("POST", "/v1/stream/p", &seq("Producer-Seq: 9007199254740992"), b"x"), By::Server),
        ("producer seq overflowing u64", req("POST", "/v1/stream/p", &seq("Producer-Seq: 999999999999999999999999"), b"x"), By::Server),
        ("fractional producer epoch", req("POST", "/v1/stream/p", &epoch("Producer-Epoch: 1.5"), b"x"), By::Server),
        ("negative producer epoch", req("POST", "/v1/stream/p", &epoch("Producer-Epoch: -3"), b"x"), By::Server),
        ("incomplete producer", req("POST", "/v1/stream/p", &["Producer-Id: a", plain], b"x"), By::Server),
        ("empty producer id", req("POST", "/v1/stream/p", &["Producer-Id: ", "Producer-Epoch: 0", "Producer-Seq: 0", plain], b"x"), By::Server),
        ("duplicate producer seq", req("POST", "/v1/stream/p", &["Producer-Id: a", "Producer-Epoch: 0", "Producer-Seq: 0", "Producer-Seq: 5", plain], b"x"), By::Server),
        ("duplicate content type", req("POST", "/v1/stream/p", &[plain, json], b"x"), By::Server),
        ("invalid UTF-8 header", b"POST /v1/stream/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nProducer-Id: \xff\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\nContent-Length: 1\r\n\r\nx".to_vec(), By::Server),
        ("wrong content type", req("POST", "/v1/stream/p", &[json], b"{}"), By::Server),
        ("missing content type", req("POST", "/v1/stream/p", &[], b"x"), By::Server),
        ("empty append", req("POST", "/v1/stream/p", &[plain], b""), By::Server),
        ("invalid JSON", req("POST", "/v1/stream/j", &[json], b"{\"a\":"), By::Server),
        ("deeply nested JSON", req("POST", "/v1/stream/j", &[json], deep_json.as_bytes()), By::Server),
        ("empty JSON array", req("POST", "/v1/stream/j", &[json], b"[]"), By::Server),
        ("JSON with invalid UTF-8", req("POST", "/v1/stream/j", &[json], b"\"\xff\""), By::Server),
        ("body over the limit", req("POST", "/v1/stream/p", &[plain], &[b'x'; 1001]), By::Server),
        ("huge Content-Length, no body", req("POST", "/v1/stream/p", &[plain, "Content-Length: 1000000000000"], b""), By::Server),
        ("chunked body over the limit", req("POST", "/v1/stream/p", &[plain, "Transfer-Encoding: chunked"], format!("800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n", "x".repeat(0x800), "x".repeat(0x800)).as_bytes()), By::Server),
        ("malformed chunked body", req("POST", "/v1/stream/p", &[plain, "Transfer-Encoding: chunked"], b"zz\r\nxx\r\n0\r\n\r\n"), By::Hyper),
        ("wrong method on a subscription API", req("POST", "/v1/stream/__ds/subscriptions/x", &[plain], b"x"), By::Server),
        ("append to __ds", req("POST", "/v1/stream/__ds", &[plain], b"x"), By::Server),
        ("delete missing", req("DELETE", "/v1/stream/none", &[], b""), By::Server),
        ("absolute-form target", req("GET", "http://evil.example/v1/stream/nope", &[], b""), By::Server),
        // Rejected by hyper before any handler runs.
        ("raw NUL in header", req("GET", "/v1/stream/p", &["X-A: a\0b"], b""), By::Hyper),
        ("raw invalid UTF-8 in path", b"GET /v1/stream/\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), By::Hyper),
        ("space in path", b"GET /v1/stream/a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), By::Hyper),
        ("oversized header", req("GET", "/v1/stream/p", &[&big_header], b""), By::Hyper),
        ("too many headers", req("GET", "/v1/stream/p", &many, b""), By::Hyper),
        ("100 KB URI", req("GET", &long_uri, &[], b""), By::Hyper),
        ("conflicting Content-Length", req("POST", "/v1/stream/p", &[plain, "Content-Length: 1", "Content-Length: 2"], b"xx"), By::Hyper),
        ("bad Content-Length", req("POST", "/v1/stream/p", &[plain, "Content-Length: -1"], b""), By::Hyper),
        ("header without colon", b"GET /v1/stream/p HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n".to_vec(), By::Hyper),
        ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n".to_vec(), By::Hyper),
        ("HTTP/2 preface then junk", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(), By::Hyper),
        ("HTTP/3.0 version", b"GET /v1/stream/p HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(), By::Hyper),
    ];
    // Every method on the collection and on a stream with a body it ignores.
    for m in ["GET", "HEAD", "DELETE"] {
        cases.push((
            "body on a bodiless method",
            req(m, "/v1/stream/none", &[plain], b"junk"),
            By::Server,
        ));
    }

    let mut by_hyper = Vec::new();
    for (what, bytes, by) in &cases {
        let reply = raw(&addr, bytes);
        match (by, reply) {
            (By::Server, Some(r)) => {
                assert!(
                    (400..500).contains(&r.status),
                    "{what}: expected a 4xx, got {} {}",
                    r.status,
                    r.text()
                );
                if !bytes.starts_with(b"HEAD") {
                    assert_eq!(
                        r.header("content-type"),
                        Some("application/problem+json"),
                        "{what}: {} {}",
                        r.status,
                        r.text()
                    );
                }
            }
            (By::Server, None) => panic!("{what}: no response"),
            (By::Hyper, Some(r)) => {
                assert!((400..500).contains(&r.status), "{what}: got {}", r.status);
                by_hyper.push(format!("{what}: {}", r.status));
            }
            (By::Hyper, None) => by_hyper.push(format!("{what}: closed")),
        }
        // Still up after every single one.
        let health = raw(&addr, &req("GET", "/healthz", &[], b""));
        assert_eq!(health.map(|r| r.status), Some(200), "down after {what}");
    }
    println!(
        "hostile requests: {} cases, {} answered by the server, rejected by hyper: {}",
        cases.len(),
        cases.len() - by_hyper.len(),
        by_hyper.join("; ")
    );
    // The existing streams are intact.
    let r = raw(&addr, &req("GET", "/v1/stream/p?offset=-1", &[], b""));
    assert_eq!(r.map(|r| (r.status, r.body)), Some((200, Vec::new())));
    drop(server);
    // Nothing was created outside the data directory, and inside it only
    // the backend's own layout (stream files are named by id, never by name).
    let outside: Vec<String> = tree(parent.path())
        .into_iter()
        .filter(|p| p != "data" && !p.starts_with("data/"))
        .collect();
    assert!(
        outside.is_empty(),
        "created outside the data dir: {outside:?}"
    );
    for p in tree(&data) {
        let ok = [
            "LOCK",
            "checkpoint",
            "checkpoint.tmp",
            "wal",
            "streams",
            "control",
        ]
        .contains(&p.as_str())
            || p.starts_with("wal/")
            || p.starts_with("streams/")
            || p.starts_with("control/");
        assert!(ok, "unexpected file in the data dir: {p}");
    }
}
