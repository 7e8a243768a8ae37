//! kill -9 through the real binary: every acknowledged write must survive,
//! on both durable backends.
//!
//! Starts `durable-streams serve --storage file|acid`, writes streams of every
//! kind over HTTP (plain, JSON, closed, forked, with a TTL, with producer
//! appends), SIGKILLs the process (no shutdown, no final checkpoint), starts
//! it again on the same directory and checks every byte, offset, closure
//! flag and fork read, and that a retried producer append answers 204.

use crate::common;

use common::Reply as Response;

/// The server under test, addressed by stream name.
struct Server {
    inner: common::Server,
    backend: &'static str,
}

impl Server {
    fn start(backend: &'static str, dir: &std::path::Path) -> Server {
        let dir = dir.to_str().expect("utf-8 temp dir");
        Server {
            inner: common::Server::start(&["--storage", backend, "--data-dir", dir]),
            backend,
        }
    }

    fn restart(self, dir: &std::path::Path) -> Server {
        let backend = self.backend;
        self.inner.kill();
        Server::start(backend, dir)
    }

    fn request(&self, method: &str, name: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.inner
            .request(method, &format!("/v1/stream/{name}"), headers, body)
    }
}

/// What one stream should hold after the restart.
struct Expect {
    path: &'static str,
    body: Vec<u8>,
    tail: String,
    closed: bool,
}

fn check(server: &Server, e: &Expect) {
    let r = server.request("GET", &format!("{}?offset=-1", e.path), &[], b"");
    assert_eq!(r.status, 200, "GET {}", e.path);
    assert_eq!(r.body, e.body, "body of {}", e.path);
    assert_eq!(
        r.header("stream-next-offset"),
        Some(e.tail.as_str()),
        "tail of {}",
        e.path
    );
    assert_eq!(
        r.header("stream-closed").is_some_and(|v| v == "true"),
        e.closed,
        "closure of {}",
        e.path
    );
}

#[test]
fn file_backend_keeps_acknowledged_writes_across_kill_9() {
    acknowledged_writes_survive_kill_9("file");
}

#[test]
fn acid_backend_keeps_acknowledged_writes_across_kill_9() {
    acknowledged_writes_survive_kill_9("acid");
}

fn acknowledged_writes_survive_kill_9(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(backend, dir.path());
    let plain = [("Content-Type", "text/plain")];
    let json = [("Content-Type", "application/json")];
    let mut expect = Vec::new();

    // Plain stream with several appends.
    assert_eq!(server.request("PUT", "plain", &plain, b"hello").status, 201);
    let mut tail = String::new();
    for i in 0..20 {
        let r = server.request("POST", "plain", &plain, format!(" {i}").as_bytes());
        assert_eq!(r.status, 204);
        tail = r.header("stream-next-offset").unwrap().to_string();
    }
    let mut body = b"hello".to_vec();
    (0..20).for_each(|i| body.extend_from_slice(format!(" {i}").as_bytes()));
    expect.push(Expect {
        path: "plain",
        body: body.clone(),
        tail: tail.clone(),
        closed: false,
    });

    // JSON stream.
    assert_eq!(
        server
            .request("PUT", "json", &json, b"[{\"a\":1},{\"b\":2}]")
            .status,
        201
    );
    let r = server.request("POST", "json", &json, b"{\"c\": 3.50}");
    assert_eq!(r.status, 204);
    expect.push(Expect {
        path: "json",
        body: b"[{\"a\":1},{\"b\":2},{\"c\": 3.50}]".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // Closed by an append.
    assert_eq!(server.request("PUT", "closed", &plain, b"").status, 201);
    let r = server.request(
        "POST",
        "closed",
        &[plain[0], ("Stream-Closed", "true")],
        b"the end",
    );
    assert_eq!(r.status, 204);
    expect.push(Expect {
        path: "closed",
        body: b"the end".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: true,
    });

    // A fork of "plain" part-way, with its own data.
    let fork_at = "0000000000000005_000000000000000d";
    let r = server.request(
        "PUT",
        "fork",
        &[
            ("Stream-Forked-From", "/v1/stream/plain"),
            ("Stream-Fork-Offset", fork_at),
            plain[0],
        ],
        b"",
    );
    assert_eq!(r.status, 201, "fork: {}", String::from_utf8_lossy(&r.body));
    let r = server.request("POST", "fork", &plain, b"+fork");
    assert_eq!(r.status, 204);
    let mut fork_body = body[..13].to_vec();
    fork_body.extend_from_slice(b"+fork");
    expect.push(Expect {
        path: "fork",
        body: fork_body,
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // A TTL stream.
    let r = server.request(
        "PUT",
        "ttl",
        &[plain[0], ("Stream-TTL", "3600")],
        b"ephemeral",
    );
    assert_eq!(r.status, 201);
    expect.push(Expect {
        path: "ttl",
        body: b"ephemeral".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // Producer appends.
    assert_eq!(server.request("PUT", "producer", &plain, b"").status, 201);
    let producer = |seq: &'static str| {
        [
            plain[0],
            ("Producer-Id", "w1"),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", seq),
        ]
    };
    let mut tail = String::new();
    for (seq, data) in [("0", "p0"), ("1", "p1"), ("2", "p2")] {
        let r = server.request("POST", "producer", &producer(seq), data.as_bytes());
        assert_eq!(r.status, 200, "producer append {seq}");
        tail = r.header("stream-next-offset").unwrap().to_string();
    }
    expect.push(Expect {
        path: "producer",
        body: b"p0p1p2".to_vec(),
        tail,
        closed: false,
    });

    let server = server.restart(dir.path());
    for e in &expect {
        check(&server, e);
    }
    // The retry of an acknowledged producer append is a duplicate (204), not new data.
    let r = server.request("POST", "producer", &producer("2"), b"p2");
    assert_eq!(r.status, 204, "retried producer append");
    let r = server.request("HEAD", "ttl", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("stream-ttl").is_some_and(|v| v == "3600"));
    // Writes still work after recovery, and survive a second kill.
    let r = server.request("POST", "plain", &plain, b" more");
    assert_eq!(r.status, 204);
    let mut again = body.clone();
    again.extend_from_slice(b" more");
    let after = Expect {
        path: "plain",
        body: again,
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    };
    let server = server.restart(dir.path());
    check(&server, &after);
    for e in expect.iter().filter(|e| e.path != "plain") {
        check(&server, e);
    }
}

// ---------------------------------------------------------------------------
// The crash harness: many kill -9 cycles under concurrent idempotent producers.
// ---------------------------------------------------------------------------

#[test]
fn file_backend_keeps_every_acknowledged_append_across_repeated_kill_9() {
    crash_cycles("file");
}

#[test]
fn acid_backend_keeps_every_acknowledged_append_across_repeated_kill_9() {
    crash_cycles("acid");
}

/// A number from the environment (the long form in `scripts/reliability.sh`
/// raises them), or the short-form default.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One idempotent producer: it owns `Producer-Id` `w{index}` and appends
/// `<index:seq>` messages to one stream.
#[derive(Clone, Debug)]
struct Producer {
    index: usize,
    stream: String,
    json: bool,
    /// Acknowledged messages in order, with the byte position (from
    /// `Stream-Next-Offset`) where each one ends when the answer was a 200.
    acked: Vec<(String, Option<u64>)>,
    /// Sent, answer never seen (the server died): it may or may not be stored.
    inflight: Option<String>,
    /// A status no healthy server should give, to fail the test with.
    failure: Option<String>,
}

impl Producer {
    fn message(&self, seq: usize) -> String {
        format!("<{}:{seq}>", self.index)
    }

    fn body(&self, msg: &str) -> Vec<u8> {
        if self.json {
            format!("\"{msg}\"").into_bytes()
        } else {
            msg.as_bytes().to_vec()
        }
    }

    fn send(&self, addr: &str, seq: usize) -> std::io::Result<Response> {
        let seq = seq.to_string();
        let id = format!("w{}", self.index);
        let ct = if self.json {
            "application/json"
        } else {
            "text/plain"
        };
        let headers = [
            ("Content-Type", ct),
            ("Producer-Id", id.as_str()),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", seq.as_str()),
        ];
        let msg = self.message(seq.parse().expect("seq"));
        common::try_request(
            addr,
            "POST",
            &format!("/v1/stream/{}", self.stream),
            &headers,
            &self.body(&msg),
        )
    }

    /// Appends until the server goes away or `stop` is set.
    fn run(mut self, addr: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let seq = self.acked.len();
            let msg = self.message(seq);
            self.inflight = Some(msg.clone());
            match self.send(&addr, seq) {
                Ok(r) if r.status == 200 => {
                    let pos = r.header("stream-next-offset").and_then(offset_pos);
                    self.acked.push((msg, pos));
                    self.inflight = None;
                }
                Ok(r) => {
                    self.failure =
                        Some(format!("append {msg} answered {}: {}", r.status, r.text()));
                    return self;
                }
                // Refused or cut: the server was killed.
                Err(_) => return self,
            }
        }
        self
    }
}

/// The byte position of an offset token `{seq:016x}_{pos:016x}`.
fn offset_pos(offset: &str) -> Option<u64> {
    u64::from_str_radix(offset.get(17..)?, 16).ok()
}

/// A stream's stored bytes (for JSON streams: each message followed by `,`,
/// as the backend stores them) and closure, read chunk by chunk.
fn read_stored(addr: &str, stream: &str, json: bool) -> (Vec<u8>, bool) {
    let mut stored = Vec::new();
    let mut offset = "-1".to_string();
    loop {
        let r = common::request(
            addr,
            "GET",
            &format!("/v1/stream/{stream}?offset={offset}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "read {stream}: {}", r.text());
        if json {
            let inner = &r.body[1..r.body.len() - 1];
            if !inner.is_empty() {
                stored.extend_from_slice(inner);
                stored.push(b',');
            }
        } else {
            stored.extend_from_slice(&r.body);
        }
        let next = r.header("stream-next-offset").expect("next offset");
        if r.header("stream-up-to-date") == Some("true") {
            return (stored, r.header("stream-closed") == Some("true"));
        }
        assert_ne!(next, offset, "read of {stream} made no progress");
        offset = next.to_string();
    }
}

/// The `<w:i>` messages in stored bytes, in order.
fn messages(stored: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stored)
        .split('<')
        .skip(1)
        .filter_map(|m| m.split_once('>').map(|(inner, _)| format!("<{inner}>")))
        .collect()
}

/// Something acknowledged besides producer appends, to re-check each cycle.
struct Extra {
    stream: String,
    stored: Vec<u8>,
    closed: bool,
}

/// Runs `DS_CRASH_CYCLES` cycles (default 6) against one data directory:
/// start the server, check everything acknowledged so far, let
/// `DS_CRASH_STREAMS` streams (default 4, every other one JSON) take appends
/// from two producers each while forks and closes happen alongside, then
/// SIGKILL it at a random moment. Prints what it checked.
fn crash_cycles(backend: &'static str) {
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let cycles = knob("DS_CRASH_CYCLES", 6);
    let nstreams = knob("DS_CRASH_STREAMS", 4) as usize;
    let seed = knob("DS_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut producers: Vec<Producer> = (0..nstreams * 2)
        .map(|i| Producer {
            index: i,
            stream: format!("s{}", i / 2),
            json: (i / 2) % 2 == 1,
            acked: Vec::new(),
            inflight: None,
            failure: None,
        })
        .collect();
    let mut extras: Vec<Extra> = Vec::new();
    let (mut appends_checked, mut kills) = (0u64, 0u64);

    for cycle in 0..=cycles {
        let server = Server::start(backend, dir.path());
        let addr = server.inner.addr.clone();
        if cycle == 0 {
            for s in 0..nstreams {
                let ct = if s % 2 == 1 {
                    "application/json"
                } else {
                    "text/plain"
                };
                let r = server.request("PUT", &format!("s{s}"), &[("Content-Type", ct)], b"");
                assert_eq!(r.status, 201);
            }
        }

        // 1. Everything acknowledged is there, exactly once, in order, at
        //    the offsets it was acknowledged with.
        let mut stored_of = std::collections::HashMap::new();
        for s in 0..nstreams {
            let name = format!("s{s}");
            let (stored, closed) = read_stored(&addr, &name, s % 2 == 1);
            assert!(!closed, "{backend} cycle {cycle}: {name} closed by itself");
            let all = messages(&stored);
            for p in producers.iter_mut().filter(|p| p.stream == name) {
                let prefix = format!("<{}:", p.index);
                let mine: Vec<&String> = all.iter().filter(|m| m.starts_with(&prefix)).collect();
                let want: Vec<&String> = p.acked.iter().map(|(m, _)| m).collect();
                let lost = format!(
                    "{backend} cycle {cycle} (seed {seed}): producer {} on {name}: stored {mine:?}, acknowledged {want:?}, in flight {:?}",
                    p.index, p.inflight
                );
                assert!(
                    mine.len() >= want.len(),
                    "lost acknowledged appends: {lost}"
                );
                assert_eq!(
                    &mine[..want.len()],
                    &want[..],
                    "out of order or duplicated: {lost}"
                );
                let extra = &mine[want.len()..];
                assert!(
                    extra.is_empty() || (extra.len() == 1 && Some(extra[0]) == p.inflight.as_ref()),
                    "appends never sent or stored twice: {lost}"
                );
                for (msg, pos) in &p.acked {
                    if let Some(pos) = pos {
                        let end = *pos as usize;
                        let framed = if p.json {
                            format!("\"{msg}\",")
                        } else {
                            msg.clone()
                        };
                        assert!(
                            stored.len() >= end && stored[..end].ends_with(framed.as_bytes()),
                            "{backend} cycle {cycle}: {msg} no longer ends at byte {end} of {name}"
                        );
                    }
                }
                appends_checked += p.acked.len() as u64;
                // 2. The append in flight at the kill either landed or not;
                //    its retry says which (204 duplicate, or 200 now).
                if let Some(msg) = p.inflight.take() {
                    let landed = extra.len() == 1;
                    let r = p.send(&addr, p.acked.len()).expect("retry");
                    let want = if landed { 204 } else { 200 };
                    assert_eq!(
                        r.status,
                        want,
                        "{backend} cycle {cycle}: retry of in-flight {msg}: {}",
                        r.text()
                    );
                    let pos = r.header("stream-next-offset").and_then(offset_pos);
                    p.acked.push((msg, if landed { None } else { pos }));
                }
                // 3. A retry of the last acknowledged append is a duplicate.
                if let Some(last) = p.acked.len().checked_sub(1) {
                    let r = p.send(&addr, last).expect("retry");
                    assert_eq!(
                        r.status, 204,
                        "{backend} cycle {cycle}: retried append {last} of producer {}",
                        p.index
                    );
                }
            }
            stored_of.insert(name, stored);
        }
        // 4. Closed streams stay closed, forks read what they read before.
        for e in &extras {
            let (stored, closed) = read_stored(&addr, &e.stream, false);
            assert_eq!(
                stored, e.stored,
                "{backend} cycle {cycle}: contents of {}",
                e.stream
            );
            assert_eq!(
                closed, e.closed,
                "{backend} cycle {cycle}: closure of {}",
                e.stream
            );
            if e.closed {
                let r = server.request("POST", &e.stream, &[("Content-Type", "text/plain")], b"x");
                assert_eq!(r.status, 409, "{backend}: append to closed {}", e.stream);
            }
        }
        if producers.iter().any(|p| p.failure.is_some()) || cycle == cycles {
            break;
        }

        // 5. The storm: producers append, and a fork of s0 (at its checked
        //    tail) and a closed stream are made while the kill may land.
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = producers
            .drain(..)
            .map(|p| {
                let (addr, stop) = (addr.clone(), stop.clone());
                std::thread::spawn(move || p.run(addr, stop))
            })
            .collect();
        let side = {
            let addr = addr.clone();
            let s0 = stored_of.remove("s0").unwrap_or_default();
            std::thread::spawn(move || side_effects(&addr, cycle, s0))
        };
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(30..400)));
        server.inner.kill();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        producers = threads
            .into_iter()
            .map(|t| t.join().expect("producer"))
            .collect();
        extras.extend(side.join().expect("side effects"));
        for p in &producers {
            assert!(
                p.failure.is_none(),
                "{backend}: {}",
                p.failure.as_deref().unwrap_or("")
            );
        }
    }
    let acked: usize = producers.iter().map(|p| p.acked.len()).sum();
    assert!(acked > 0, "the producers wrote something");
    println!(
        "crash-harness {backend}: seed {seed}, {kills} kill -9 cycles, {appends_checked} acknowledged appends checked, {acked} acknowledged in total, {} forks/closed streams checked",
        extras.len()
    );
}

/// A fork of `s0` at the end of `s0_stored` (checked durable) with its own
/// append, and a stream closed by an append. Returns those acknowledged.
fn side_effects(addr: &str, cycle: u64, s0_stored: Vec<u8>) -> Vec<Extra> {
    let plain = ("Content-Type", "text/plain");
    let mut out = Vec::new();
    let at = format!(
        "{:016x}_{:016x}",
        messages(&s0_stored).len(),
        s0_stored.len()
    );
    let fork = format!("fork{cycle}");
    let r = common::try_request(
        addr,
        "PUT",
        &format!("/v1/stream/{fork}"),
        &[
            plain,
            ("Stream-Forked-From", "/v1/stream/s0"),
            ("Stream-Fork-Offset", &at),
        ],
        b"",
    );
    match r {
        Ok(r) if r.status == 201 => {
            let mut stored = s0_stored.clone();
            if common::try_request(
                addr,
                "POST",
                &format!("/v1/stream/{fork}"),
                &[plain],
                b"+fork",
            )
            .is_ok_and(|r| r.status == 204)
            {
                stored.extend_from_slice(b"+fork");
                out.push(Extra {
                    stream: fork,
                    stored,
                    closed: false,
                });
            }
        }
        Ok(r) => panic!("fork {fork} at {at}: {} {}", r.status, r.text()),
        Err(_) => return out,
    }
    let closed = format!("closed{cycle}");
    if common::try_request(addr, "PUT", &format!("/v1/stream/{closed}"), &[plain], b"a")
        .is_ok_and(|r| r.status == 201)
        && common::try_request(
            addr,
            "POST",
            &format!("/v1/stream/{closed}"),
            &[plain, ("Stream-Closed", "true")],
            b"b",
        )
        .is_ok_and(|r| r.status == 204)
    {
        out.push(Extra {
            stream: closed,
            stored: b"ab".to_vec(),
            closed: true,
        });
    }
    out
}
