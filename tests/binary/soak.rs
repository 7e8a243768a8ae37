//! A bounded soak of the real binary (file backend): producers appending,
//! catch-up readers, long-polls and SSE subscribers at once for
//! `DS_SOAK_SECS` (default 30; the long form in `scripts/reliability.sh`
//! runs longer), sampling the server's RSS (`/proc/PID/status`) and open
//! descriptors (`/proc/PID/fd`) every second.
//!
//! Asserts: no error response, every subscriber stays served, memory flat
//! (the last third of the run is not above the first third by more than a
//! small allowance), and no descriptor leak once the clients stop.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[derive(Default)]
struct Counts {
    appends: AtomicU64,
    reads: AtomicU64,
    long_polls: AtomicU64,
    sse_sessions: AtomicU64,
    sse_bytes: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn error(&self, what: String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("soak error: {what}");
        }
    }
}

const STREAMS: usize = 6;

#[test]
fn soak_mixed_traffic_keeps_memory_and_descriptors_flat() {
    let secs = std::env::var("DS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30u64);
    let server = common::Server::start_with_env(
        &["--storage", "file"],
        &[
            ("DS_LONG_POLL_TIMEOUT", "1s"),
            ("DS_SSE_RECONNECT", "3s"),
            ("DS_SSE_KEEPALIVE", "1s"),
            // Catch-up reads of a fixed size once streams pass it, so the
            // workload is steady and memory can be compared over time.
            ("DS_CHUNK_BYTES", "65536"),
            // glibc gives each thread of the blocking pool its own malloc
            // arena; their fragmentation makes RSS creep with the number of
            // threads that ever ran (32 -> 56 MiB over 600 s in the first
            // long run, with no leak behind it), which would hide a real
            // leak. Two arenas make growth mean something.
            ("MALLOC_ARENA_MAX", "2"),
        ],
    );
    let pid = server.child.id();
    let addr = server.addr.clone();
    for s in 0..STREAMS {
        let ct = if s.is_multiple_of(2) {
            "text/plain"
        } else {
            "application/json"
        };
        let r = common::request(
            &addr,
            "PUT",
            &format!("/v1/stream/s{s}"),
            &[("Content-Type", ct)],
            b"",
        );
        assert_eq!(r.status, 201);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();

    // Producers: idempotent appends, 200 expected every time.
    for w in 0..3 {
        let (addr, stop, counts) = (addr.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = (w + seq as usize) % STREAMS;
                let (ct, body) = if s.is_multiple_of(2) {
                    ("text/plain", format!("<{w}:{seq}>").repeat(20))
                } else {
                    ("application/json", format!("[{{\"w\":{w},\"seq\":{seq}}}]"))
                };
                // Each (producer, stream) pair counts its own sequence:
                // this pair comes round every STREAMS appends.
                let id = format!("w{w}-{s}");
                let pair_seq = (seq / STREAMS as u64).to_string();
                let h = [
                    ("Content-Type", ct),
                    ("Producer-Id", id.as_str()),
                    ("Producer-Epoch", "0"),
                    ("Producer-Seq", pair_seq.as_str()),
                ];
                match common::try_request(
                    &addr,
                    "POST",
                    &format!("/v1/stream/s{s}"),
                    &h,
                    body.as_bytes(),
                ) {
                    Ok(r) if r.status == 200 => {
                        counts.appends.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => counts.error(format!("append {s}: {} {}", r.status, r.text())),
                    Err(e) => counts.error(format!("append {s}: {e}")),
                }
                seq += 1;
            }
        }));
    }
    // Catch-up readers: whole streams from the start.
    for r in 0..2 {
        let (addr, stop, counts) = (addr.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let s = i % STREAMS;
                match common::try_request(
                    &addr,
                    "GET",
                    &format!("/v1/stream/s{s}?offset=-1"),
                    &[],
                    b"",
                ) {
                    Ok(r) if r.status == 200 => {
                        counts.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => counts.error(format!("read {s}: {}", r.status)),
                    Err(e) => counts.error(format!("read {s}: {e}")),
                }
                i += 1;
            }
        }));
    }
    // Long-pollers following a stream's tail.
    for p in 0..2 {
        let (addr, stop, counts) = (addr.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let s = p * 2;
            let mut offset = "now".to_string();
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/v1/stream/s{s}?offset={offset}&live=long-poll");
                match common::try_request(&addr, "GET", &path, &[], b"") {
                    Ok(r) if r.status == 200 || r.status == 204 => {
                        counts.long_polls.fetch_add(1, Ordering::Relaxed);
                        if let Some(next) = r.header("stream-next-offset") {
                            offset = next.to_string();
                        }
                    }
                    Ok(r) => counts.error(format!("long-poll {s}: {}", r.status)),
                    Err(e) => counts.error(format!("long-poll {s}: {e}")),
                }
            }
        }));
    }
    // SSE subscribers: read until the server ends the session, reconnect.
    for sub in 0..3 {
        let (addr, stop, counts) = (addr.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let s = sub % STREAMS;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = TcpStream::connect(&addr) else {
                    counts.error("sse connect".into());
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let req = format!("GET /v1/stream/s{s}?offset=now&live=sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                if c.write_all(req.as_bytes()).is_err() {
                    counts.error("sse write".into());
                    continue;
                }
                let mut first = true;
                let mut buf = [0u8; 16384];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if first && !buf.starts_with(b"HTTP/1.1 200") {
                                counts.error(format!("sse status {:?}", String::from_utf8_lossy(&buf[..n.min(40)])));
                                break;
                            }
                            first = false;
                            counts.sse_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            counts.error(format!("sse read: {e}"));
                            break;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                counts.sse_sessions.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Sample once a second.
    let fds0 = fds(pid);
    let start = Instant::now();
    let mut samples: Vec<(u64, usize)> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((rss_kib(pid), fds(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    // Connections close once the clients are gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds(pid) > fds0 + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let fds_end = fds(pid);
    // The first third warms up (caches, allocator arenas, streams growing
    // past one chunk); the middle third is the baseline for the last.
    let third = (samples.len() / 3).max(1);
    let avg = |s: &[(u64, usize)]| s.iter().map(|x| x.0).sum::<u64>() / s.len().max(1) as u64;
    let early = avg(&samples[third..(2 * third).min(samples.len())]);
    let late = avg(&samples[samples.len() - third..]);
    let series: Vec<u64> = samples
        .iter()
        .step_by((samples.len() / 10).max(1))
        .map(|s| s.0 / 1024)
        .collect();
    let max_fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let c = &counts;
    let requests = c.appends.load(Ordering::Relaxed)
        + c.reads.load(Ordering::Relaxed)
        + c.long_polls.load(Ordering::Relaxed)
        + c.sse_sessions.load(Ordering::Relaxed);
    println!(
        "soak: {secs} s, {requests} requests ({} appends, {} catch-up reads, {} long-polls, {} SSE sessions with {} bytes), {} errors; RSS {} KiB (middle third) -> {} KiB (last third), first sample {} KiB, max {} KiB, MiB over time {series:?}; fds {fds0} at start, max {max_fds}, {fds_end} after",
        c.appends.load(Ordering::Relaxed),
        c.reads.load(Ordering::Relaxed),
        c.long_polls.load(Ordering::Relaxed),
        c.sse_sessions.load(Ordering::Relaxed),
        c.sse_bytes.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        early,
        late,
        samples.first().map_or(0, |s| s.0),
        samples.iter().map(|s| s.0).max().unwrap_or(0),
    );
    assert_eq!(
        c.errors.load(Ordering::Relaxed),
        0,
        "error responses during the soak"
    );
    assert!(c.appends.load(Ordering::Relaxed) > 0 && c.long_polls.load(Ordering::Relaxed) > 0);
    assert!(
        c.sse_bytes.load(Ordering::Relaxed) > 0,
        "SSE subscribers got nothing"
    );
    // Flat: allocator noise and caches settle early; growth beyond 25% plus
    // 8 MiB over the run is a leak.
    assert!(
        late <= early + early / 4 + 8 * 1024,
        "RSS grew from {early} KiB to {late} KiB: {series:?} MiB"
    );
    assert!(
        fds_end <= fds0 + 2,
        "descriptor leak: {fds0} before, {fds_end} after"
    );
}
