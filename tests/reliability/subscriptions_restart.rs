//! Subscription state survives restarts of the real binary on the durable
//! backends (file and acid), after a clean stop (SIGTERM) and after kill -9:
//! configuration and status, the JWKS key id, cursors (an acked stream is
//! not woken again, an unacked one is), a held pull-wake claim, and a
//! pending webhook retry, which is delivered after the restart with the same
//! wake id and generation.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use durable_streams::subscriptions::signing::verify_with_jwks;

const SUBS: &str = "/v1/stream/__ds/subscriptions";

/// A webhook receiver on a local port: records every request (signature
/// header and body) and answers 500 until `accept` is set, then
/// `{"done": true}`.
struct Receiver {
    url: String,
    accept: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Delivered>>>,
}

/// A request as received: its `Webhook-Signature` and raw body.
type Delivered = (String, Vec<u8>);

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accept = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (Arc::clone(&accept), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let (mut len, mut sig) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("webhook-signature:") {
                        sig = line["webhook-signature:".len()..].trim().to_string();
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                s.lock().unwrap().push((sig, body));
                let reply: &[u8] = if a.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"done\":true}"
                } else {
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = conn.write_all(reply);
            }
        });
        Receiver { url, accept, seen }
    }

    fn deliveries(&self) -> Vec<(String, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(sig, b)| (sig.clone(), serde_json::from_slice(b).unwrap()))
            .collect()
    }
}

fn start(backend: &str, dir: &Path) -> common::Server {
    common::Server::start(&["--storage", backend, "--data-dir", dir.to_str().unwrap()])
}

fn call(
    s: &common::Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    s.call_json(method, path, token, body)
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wake_events(s: &common::Server) -> Vec<Value> {
    let (status, body) = call(
        s,
        "GET",
        "/v1/stream/wake/pool?offset=-1",
        None,
        Value::Null,
    );
    assert_eq!(status, 200);
    body.as_array().cloned().unwrap_or_default()
}

fn link<'a>(streams: &'a Value, path: &str) -> &'a Value {
    streams
        .as_array()
        .and_then(|a| a.iter().find(|l| l["path"] == path))
        .unwrap_or_else(|| panic!("no link {path} in {streams}"))
}

fn kid(s: &common::Server) -> String {
    let (_, jwks) = call(s, "GET", "/v1/stream/__ds/jwks.json", None, Value::Null);
    jwks["keys"][0]["kid"].as_str().unwrap().to_string()
}

fn survives_restart(backend: &str, kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let server = start(backend, dir.path());
    let text = [("Content-Type", "text/plain")];
    let json_ct = [("Content-Type", "application/json")];
    assert_eq!(
        server
            .request("PUT", "/v1/stream/events/a", &text, b"")
            .status,
        201
    );
    assert_eq!(
        server
            .request("PUT", "/v1/stream/wake/pool", &json_ct, b"")
            .status,
        201
    );

    // A webhook subscription whose receiver fails: a retry is scheduled.
    let (s, created_hook) = call(
        &server,
        "PUT",
        &format!("{SUBS}/hook"),
        None,
        json!({"type": "webhook", "streams": ["events/a"], "webhook": {"url": hook.url},
               "description": "restart test"}),
    );
    assert_eq!(s, 201);
    let r = server.request("POST", "/v1/stream/events/a", &text, b"first");
    assert_eq!(r.status, 204);
    let events_tail = r.header("stream-next-offset").unwrap().to_string();
    wait_for(20, "a failed webhook attempt", || {
        let (_, got) = call(&server, "GET", &format!("{SUBS}/hook"), None, Value::Null);
        (got["status"] == "failed" && !hook.deliveries().is_empty()).then_some(())
    });
    let (_, first) = hook.deliveries()[0].clone();

    // A pull-wake subscription; streams created after it are linked at
    // their start, so both are pending.
    let (s, _) = call(
        &server,
        "PUT",
        &format!("{SUBS}/pull"),
        None,
        json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/pool",
               "lease_ttl_ms": 600000}),
    );
    assert_eq!(s, 201);
    let x_tail = server
        .request("PUT", "/v1/stream/jobs/x", &text, b"xx")
        .header("stream-next-offset")
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .request("PUT", "/v1/stream/jobs/y", &text, b"yy")
            .status,
        201
    );
    wait_for(20, "a wake event", || {
        (!wake_events(&server).is_empty()).then_some(())
    });
    let (s, claimed) = call(
        &server,
        "POST",
        &format!("{SUBS}/pull/claim"),
        None,
        json!({"worker": "w1"}),
    );
    assert_eq!(s, 200, "{claimed}");
    let gen1 = claimed["generation"].as_u64().unwrap();
    let token = claimed["token"].as_str().unwrap().to_string();
    // Heartbeat ack of jobs/x only: the claim stays held.
    let (s, body) = call(
        &server,
        "POST",
        &format!("{SUBS}/pull/ack"),
        Some(&token),
        json!({"wake_id": claimed["wake_id"], "generation": gen1,
               "acks": [{"stream": "jobs/x", "offset": x_tail}]}),
    );
    assert_eq!((s, &body["ok"]), (200, &json!(true)), "{body}");

    let (_, hook_before) = call(&server, "GET", &format!("{SUBS}/hook"), None, Value::Null);
    let (_, pull_before) = call(&server, "GET", &format!("{SUBS}/pull"), None, Value::Null);
    let kid_before = kid(&server);
    assert_eq!(hook_before["created_at"], created_hook["created_at"]);

    if kill {
        server.kill();
    } else {
        assert!(server.terminate().success());
    }
    let server = start(backend, dir.path());

    // Configuration, status, cursors and the key are as they were.
    assert_eq!(kid(&server), kid_before);
    let (s, hook_after) = call(&server, "GET", &format!("{SUBS}/hook"), None, Value::Null);
    assert_eq!(s, 200);
    assert_eq!(hook_after, hook_before);
    assert_eq!(hook_after["status"], "failed");
    let (_, pull_after) = call(&server, "GET", &format!("{SUBS}/pull"), None, Value::Null);
    assert_eq!(pull_after, pull_before);
    assert_eq!(
        link(&pull_after["streams"], "jobs/x")["acked_offset"],
        x_tail.as_str()
    );
    assert_eq!(
        link(&pull_after["streams"], "jobs/y")["acked_offset"],
        "0000000000000000_0000000000000000"
    );

    // The claim is still held by w1, whose token still verifies.
    let (s, busy) = call(
        &server,
        "POST",
        &format!("{SUBS}/pull/claim"),
        None,
        json!({"worker": "w2"}),
    );
    assert_eq!(s, 409, "{busy}");
    assert_eq!(busy["error"]["current_holder"], "w1");
    assert_eq!(busy["error"]["generation"], gen1);
    let (s, body) = call(
        &server,
        "POST",
        &format!("{SUBS}/pull/ack"),
        Some(&token),
        json!({"wake_id": claimed["wake_id"], "generation": gen1, "acks": [], "done": true}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["next_wake"], true, "jobs/y is still pending");
    // The next wake announces only the unacked stream as pending.
    let next = wait_for(20, "a second wake event", || {
        wake_events(&server)
            .into_iter()
            .find(|e| e["generation"] == gen1 + 1)
    });
    assert_eq!(link(&next["streams"], "jobs/x")["has_pending"], false);
    assert_eq!(link(&next["streams"], "jobs/y")["has_pending"], true);

    // The pending retry is delivered after the restart: same wake, signed
    // with the same key, and its {"done": true} acks the cursor.
    hook.accept.store(true, Ordering::SeqCst);
    let (_, jwks) = call(
        &server,
        "GET",
        "/v1/stream/__ds/jwks.json",
        None,
        Value::Null,
    );
    wait_for(90, "the webhook retry to be acked", || {
        let (_, got) = call(&server, "GET", &format!("{SUBS}/hook"), None, Value::Null);
        (link(&got["streams"], "events/a")["acked_offset"] == events_tail.as_str()
            && got["status"] == "active")
            .then_some(())
    });
    let deliveries = hook.deliveries();
    let (sig, last) = deliveries.last().unwrap();
    assert_eq!(
        last["wake_id"], first["wake_id"],
        "the retry resends the same wake"
    );
    assert_eq!(last["generation"], first["generation"]);
    // The signature covers the raw bytes as received.
    let raw = hook.seen.lock().unwrap().last().unwrap().1.clone();
    assert!(verify_with_jwks(&jwks, sig, &raw), "signature verifies");
}

#[test]
fn file_subscriptions_survive_a_clean_restart() {
    survives_restart("file", false);
}

#[test]
fn file_subscriptions_survive_kill_9() {
    survives_restart("file", true);
}

#[test]
fn acid_subscriptions_survive_a_clean_restart() {
    survives_restart("acid", false);
}

#[test]
fn acid_subscriptions_survive_kill_9() {
    survives_restart("acid", true);
}
