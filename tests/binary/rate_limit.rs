//! `[rate_limit]` on the real binary (native HTTP/1.1 engine): a burst,
//! then `429` with `Retry-After`; a cap on open SSE streams per client
//! that frees its slot when the subscriber leaves; both in `/metrics`.

use crate::common::Server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Opens an SSE read and returns the connection and its status line.
fn sse(addr: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/stream/r?offset=-1&live=sse HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).trim().to_string())
}

#[test]
fn bursts_then_429_and_live_readers_are_capped() {
    let server = Server::start_with_env(
        &["--storage", "memory"],
        &[
            ("DS_RATE_LIMIT_REQUESTS_PER_SECOND", "1"),
            ("DS_RATE_LIMIT_BURST", "4"),
            ("DS_RATE_LIMIT_MAX_LIVE_READERS", "1"),
        ],
    );
    let put = server.request(
        "PUT",
        "/v1/stream/r",
        &[("Content-Type", "text/plain")],
        b"x",
    );
    assert_eq!(put.status, 201);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        // X-Forwarded-For from an untrusted peer changes nothing.
        let r = server.request(
            "HEAD",
            "/v1/stream/r",
            &[("X-Forwarded-For", "198.51.100.1")],
            b"",
        );
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Probes are never limited.
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);

    // Two requests' worth of refill: one SSE stream, and one refused for
    // the live cap, not the rate.
    std::thread::sleep(Duration::from_millis(2100));
    let (first, status) = sse(&server.addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, status) = sse(&server.addr);
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    drop(first);
    // The slot frees once the server sees the subscriber leave.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let (_s, status) = sse(&server.addr);
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live slot was never freed: {status}"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    let metrics = server.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("ds_rate_limited_total{limit=\"requests\"} 3"),
        "{metrics}"
    );
    // At least the one refused while the first stream was open (more if
    // a retry came before the server saw that stream's client leave).
    let live: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ds_rate_limited_total{limit=\"live_readers\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(live >= 1, "{metrics}");
}
