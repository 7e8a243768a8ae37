//! kill -9 through the real binary: every acknowledged write must survive,
//! on both durable backends.
//!
//! Starts `durable-streams serve --storage file|acid`, writes streams of every
//! kind over HTTP (plain, JSON, closed, forked, with a TTL, with producer
//! appends), SIGKILLs the process (no shutdown, no final checkpoint), starts
//! it again on the same directory and checks every byte, offset, closure
//! flag and fork read, and that a retried producer append answers 204.

mod common;

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

#[test]
fn file_backend_survives_kill_9_during_a_write_storm() {
    kill_9_during_a_write_storm(&["--storage", "file"]);
}

#[test]
fn acid_backend_survives_kill_9_during_a_write_storm() {
    kill_9_during_a_write_storm(&["--storage", "acid"]);
}

/// Kills the server while several clients append as fast as they can, so the
/// crash lands inside writes (torn WAL frames, half-done transactions). After
/// a restart every acknowledged append is there, in order and exactly once,
/// and the store takes new appends.
fn kill_9_during_a_write_storm(args: &[&str]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut argv = args.to_vec();
    argv.extend(["--data-dir", data_dir]);
    let server = common::Server::start(&argv);
    let plain = ("Content-Type", "text/plain");
    assert_eq!(
        server
            .request("PUT", "/v1/stream/storm", &[plain], b"")
            .status,
        201
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, stop, acked) = (server.addr.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let msg = format!("<{w}:{i}>");
                    let seq = i.to_string();
                    let headers = [
                        plain,
                        ("Producer-Id", &*format!("w{w}")),
                        ("Producer-Epoch", "0"),
                        ("Producer-Seq", &*seq),
                    ];
                    // A connection cut by the kill is simply not acknowledged.
                    let Ok(r) = std::panic::catch_unwind(|| {
                        common::request(&addr, "POST", "/v1/stream/storm", &headers, msg.as_bytes())
                    }) else {
                        break;
                    };
                    if r.status != 200 {
                        break;
                    }
                    acked.lock().unwrap()[w].push(msg);
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }

    let mut argv = args.to_vec();
    argv.extend(["--data-dir", data_dir]);
    let server = common::Server::start(&argv);
    let r = server.request("GET", "/v1/stream/storm?offset=-1", &[], b"");
    assert_eq!(r.status, 200);
    let text = r.text();
    let acked = acked.lock().unwrap();
    assert!(
        acked.iter().map(Vec::len).sum::<usize>() > 0,
        "the storm wrote something"
    );
    for (w, msgs) in acked.iter().enumerate() {
        // Each writer's messages appear in order, exactly once, and include
        // every acknowledged one (an unacknowledged last one may be there too).
        let stored: Vec<&str> = text
            .split_inclusive('>')
            .filter(|m| m.starts_with(&format!("<{w}:")))
            .collect();
        assert!(
            stored.len() >= msgs.len(),
            "writer {w} lost acknowledged appends"
        );
        assert!(
            stored.len() <= msgs.len() + 1,
            "writer {w} has appends it never sent"
        );
        for (i, m) in stored.iter().enumerate() {
            assert_eq!(
                *m,
                format!("<{w}:{i}>"),
                "writer {w} out of order or duplicated"
            );
        }
    }
    let r = server.request("POST", "/v1/stream/storm", &[plain], b"<after>");
    assert_eq!(r.status, 204);
}
