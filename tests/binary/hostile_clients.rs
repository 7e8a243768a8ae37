//! Hostile clients against the real binary: slowloris heads, thousands of
//! idle connections, SSE consumers that never read, and bodies larger than
//! the limit. Each must cost the server bounded memory and descriptors, be
//! cut off by a timeout, and never keep other clients from being served.
//!
//! Server memory and descriptors are read from `/proc/PID/status` and
//! `/proc/PID/fd`; the timeouts are shortened through `DS_*` variables.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Open descriptors of a process.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

fn metric(addr: &str, name: &str) -> u64 {
    let r = common::request(addr, "GET", "/metrics", &[], b"");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// True once the peer has closed `s` (EOF or reset), reading and discarding
/// whatever arrives first.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 65536];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn fast_timeouts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DS_HEADER_READ_TIMEOUT", "1s"),
        ("DS_BODY_READ_TIMEOUT", "2s"),
        ("DS_SEND_TIMEOUT", "2s"),
    ]
}

#[test]
fn slowloris_heads_and_silent_connections_are_cut_off() {
    let server = common::Server::start_with_env(&["--storage", "memory"], &fast_timeouts());
    // Sends the head one byte every 150 ms: 40 bytes would take 6 s.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    let start = Instant::now();
    let mut cut = false;
    for b in head {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        // Other clients are served meanwhile.
        assert_eq!(
            common::request(&server.addr, "GET", "/healthz", &[], b"").status,
            200
        );
        std::thread::sleep(Duration::from_millis(150));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        cut || closed_by_server(&mut slow, Duration::from_secs(10)),
        "a head trickling in byte by byte kept its connection"
    );
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(10)),
        "a silent connection was kept"
    );
    // A body that trickles in: 408 problem, or the connection is cut.
    let mut body = TcpStream::connect(&server.addr).unwrap();
    let r = common::request(
        &server.addr,
        "PUT",
        "/v1/stream/s",
        &[("Content-Type", "text/plain")],
        b"",
    );
    assert_eq!(r.status, 201);
    body.write_all(b"POST /v1/stream/s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    body.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let _ = body.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("application/problem+json"),
        "slow body answered {text:?}"
    );
    // Nothing of it was stored.
    let r = common::request(&server.addr, "GET", "/v1/stream/s?offset=-1", &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn thousands_of_idle_connections_are_bounded_and_freed() {
    const IDLE: usize = 2000;
    // Long enough to open them all before the first ones time out.
    let server = common::Server::start_with_env(
        &["--storage", "memory"],
        &[("DS_HEADER_READ_TIMEOUT", "15s")],
    );
    let pid = server.child.id();
    let addr = server.addr.clone();
    assert_eq!(
        common::request(
            &addr,
            "PUT",
            "/v1/stream/s",
            &[("Content-Type", "text/plain")],
            b""
        )
        .status,
        201
    );
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let mut conns = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = TcpStream::connect(&addr).expect("connect");
        // A third silent, a third mid-head, a third idle after a request.
        match i % 3 {
            0 => {}
            1 => c.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap(),
            _ => {
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
            }
        }
        conns.push(c);
    }
    // All held at once; other clients are still served.
    assert!(
        eventually(Duration::from_secs(10), || fds(pid) >= fds0 + IDLE * 9 / 10),
        "the server did not accept the idle connections"
    );
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    for i in 0..20 {
        let r = common::request(
            &addr,
            "POST",
            "/v1/stream/s",
            &[("Content-Type", "text/plain")],
            format!("{i},").as_bytes(),
        );
        assert_eq!(r.status, 204, "append while {IDLE} connections idle");
    }
    // Then the timeout frees them, whether or not the client ever closes.
    assert!(
        eventually(Duration::from_secs(60), || fds(pid) <= fds0 + 10),
        "idle connections not freed: {} descriptors, {} before",
        fds(pid),
        fds0
    );
    let per_conn = (rss1.saturating_sub(rss0)) * 1024 / IDLE as u64;
    println!(
        "idle connections: {IDLE} held, server fds {fds0} -> {fds1} -> {}, RSS {rss0} KiB -> {rss1} KiB ({per_conn} bytes per connection)",
        fds(pid)
    );
    assert!(
        rss1 < rss0 + 200 * 1024,
        "{IDLE} idle connections took {} KiB",
        rss1 - rss0
    );
    drop(conns);
    let r = common::request(&addr, "GET", "/v1/stream/s?offset=-1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.len(),
        (0..20).map(|i: i32| format!("{i},").len()).sum::<usize>()
    );
}

#[test]
fn sse_consumers_that_never_read_are_dropped_without_hurting_others() {
    let server = common::Server::start_with_env(&["--storage", "memory"], &fast_timeouts());
    let pid = server.child.id();
    let addr = server.addr.clone();
    let plain = ("Content-Type", "text/plain");
    assert_eq!(
        common::request(&addr, "PUT", "/v1/stream/big", &[plain], b"").status,
        201
    );
    // 24 MiB of text: far more than the socket buffers can hold.
    let mb = vec![b'x'; 1 << 20];
    for _ in 0..24 {
        assert_eq!(
            common::request(&addr, "POST", "/v1/stream/big", &[plain], &mb).status,
            204
        );
    }
    let rss0 = rss_kib(pid);
    // Five consumers that connect and never read.
    let stalled: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /v1/stream/big?offset=-1&live=sse HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &addr,
            "ds_active_sse_connections"
        ) >= 5),
        "stalled SSE consumers not connected"
    );
    // A healthy subscriber at the tail still gets new data promptly.
    let mut live = TcpStream::connect(&addr).unwrap();
    live.write_all(b"GET /v1/stream/big?offset=now&live=sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        common::request(&addr, "POST", "/v1/stream/big", &[plain], b"fresh").status,
        204
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data:fresh") {
        let n = live.read(&mut buf).expect("live subscriber starved");
        assert!(n > 0, "live subscriber cut off");
        got.extend_from_slice(&buf[..n]);
    }
    let rss1 = rss_kib(pid);
    // The stalled ones are dropped once their writes stall past send_timeout.
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &addr,
            "ds_active_sse_connections"
        ) <= 1),
        "consumers that never read were kept: {} SSE connections",
        metric(&addr, "ds_active_sse_connections")
    );
    println!(
        "stalled SSE: 5 consumers of a 24 MiB stream, server RSS {rss0} KiB -> {rss1} KiB while stalled"
    );
    // Each holds at most one chunk (1 MiB) plus socket buffers, not the stream.
    assert!(
        rss1 < rss0 + 5 * 8 * 1024,
        "stalled SSE consumers took {} KiB",
        rss1 - rss0
    );
    drop(stalled);
}

#[test]
fn oversized_bodies_are_refused_without_being_buffered() {
    let server = common::Server::start_with_env(
        &["--storage", "memory", "--max-body-bytes", "65536"],
        &fast_timeouts(),
    );
    let pid = server.child.id();
    let addr = server.addr.clone();
    let plain = ("Content-Type", "text/plain");
    assert_eq!(
        common::request(&addr, "PUT", "/v1/stream/s", &[plain], b"").status,
        201
    );
    let rss0 = rss_kib(pid);
    // Declared too large: refused before a byte of body is read.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /v1/stream/s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 107374182400\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).expect("answer before the body");
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "declared 100 GB: {text:?}"
    );
    assert!(text.contains("application/problem+json"));
    // Chunked, never ending: refused once past the limit, while the client
    // is still sending; the server stops reading.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /v1/stream/s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
    let mut sent = 0usize;
    let mut reader = s.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut head = [0u8; 512];
        let n = reader.read(&mut head).unwrap_or(0);
        String::from_utf8_lossy(&head[..n]).into_owned()
    });
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    while sent < 256 << 20 && s.write_all(chunk.as_bytes()).is_ok() {
        sent += chunk.len();
    }
    let text = answer.join().unwrap();
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "endless chunked body: {text:?}"
    );
    assert!(sent < 256 << 20, "the server kept reading an endless body");
    let rss1 = rss_kib(pid);
    println!(
        "oversized bodies: endless chunked body cut after the client sent {sent} bytes; RSS {rss0} -> {rss1} KiB"
    );
    assert!(rss1 < rss0 + 32 * 1024, "RSS grew {} KiB", rss1 - rss0);
    let r = common::request(&addr, "GET", "/v1/stream/s?offset=-1", &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0), "nothing stored");
}
