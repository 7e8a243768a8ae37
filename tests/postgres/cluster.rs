//! Several nodes on one PostgreSQL database, through the real binary and
//! real sockets: what the postgres backend promises a cluster.
//!
//! * `cross_node_live_reads`: appends on node A reach an SSE reader and a
//!   long-poll reader on node B exactly once and in offset order. The nodes
//!   hold long-polls for 30 s and each one returns in far less, so every
//!   delivery was a wake from A's commit (NOTIFY), not a timeout or a poll.
//! * `node_killed_mid_producer_appends`: idempotent producers writing
//!   through a round-robin proxy lose and duplicate nothing when one node
//!   is SIGKILLed mid-traffic and their retries land on the other.
//! * `database_restart_mid_traffic`: while PostgreSQL is down, calls answer
//!   503 + `Retry-After` (problem+json) promptly, never hang and never 500;
//!   when it returns the same nodes serve again by themselves, and a live
//!   reader on the other node gets the appends made after the recovery.
//! * `database_restart_while_idle`: the first calls after a database
//!   restart do not fail on pooled connections that died with the old
//!   server, and an SSE connection waiting through it stays open.
//!
//! Each test has a fresh database (tests/common/pg.rs: scripts/pg.sh, or
//! `DS_TEST_DATABASE_URL`); the outage tests stop PostgreSQL servers of
//! their own (`pg::OwnServer`), so the other tests keep theirs. Without
//! PostgreSQL the tests fail, never skip. Node logs go to
//! `target/tmp/postgres_cluster/`.

use crate::common;
use crate::common::pg;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::Reply;

/// Every node holds a long-poll this long before answering `204`.
const LONG_POLL_TIMEOUT: &str = "30s";
/// A live read that returns data sooner than this, against the 30 s
/// long-poll timeout, was woken by the append; no timing is asserted
/// tighter than this.
const WOKEN_WITHIN: Duration = Duration::from_secs(10);
/// Longest answer to any request while the database is away: the pool
/// waits at most 5 s for a connection, opening one at most 3 s.
const NEVER_HANGS_PAST: Duration = Duration::from_secs(8);
const JSON: (&str, &str) = ("Content-Type", "application/json");
const STREAM: &str = "/v1/stream/s";

// ---------------------------------------------------------------------------
// Processes

/// `durable-streams serve --storage postgres`, killed when dropped.
struct Node {
    server: common::Server,
    _data: tempfile::TempDir,
}

impl Node {
    /// Starts a node on `database`; its log is `target/tmp/postgres_cluster/TEST-NAME.log`.
    fn start(database: &str, test: &str, name: &str) -> Node {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("postgres_cluster");
        std::fs::create_dir_all(&dir).expect("log directory");
        let log = dir.join(format!("{test}-{name}.log"));
        eprintln!("node {name} of {test}: log {}", log.display());
        let file = std::fs::File::create(&log).expect("node log file");
        // The backend keeps nothing on disk, but the server must not make
        // ./data in the source tree.
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_durable-streams"));
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--storage", "postgres"])
            .args(["--database-url", database])
            .args(["--long-poll-timeout", LONG_POLL_TIMEOUT])
            // Longer than any test: an SSE connection that ends was ended
            // by a failure, not by the reconnect interval.
            .args(["--sse-reconnect", "10m"])
            .arg("--data-dir")
            .arg(data.path())
            .stderr(file);
        Node {
            server: common::Server::spawn(cmd),
            _data: data,
        }
    }

    fn addr(&self) -> &str {
        &self.server.addr
    }

    /// SIGKILL: no shutdown, open transactions and connections just end.
    fn kill(self) {
        self.server.kill();
    }
}

/// The `rr_proxy` example in front of `backends`, killed when dropped.
fn rr_proxy(backends: &[&Node]) -> common::Server {
    let mut cmd = Command::new(rr_proxy_exe());
    cmd.args(["--bind", "127.0.0.1:0"]).stderr(Stdio::null());
    for b in backends {
        cmd.arg("--backend").arg(format!("http://{}", b.addr()));
    }
    common::Server::spawn(cmd)
}

/// The `rr_proxy` example beside the server binary, built (or brought up to
/// date) once per run: `cargo test --test NAME` does not build examples.
fn rr_proxy_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_durable-streams"));
        let profile_dir = bin.parent().expect("the binary's directory");
        let target = profile_dir.parent().expect("the target directory");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--example", "rr_proxy"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target);
        // What cargo sets for running this test is not the caller's
        // environment: build scripts watching these (ring's watches
        // CARGO_MANIFEST_DIR) would rebuild, and the next `cargo test`
        // rebuild them back.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&&*key)
            {
                cmd.env_remove(&*key);
            }
        }
        match profile_dir.file_name().and_then(|p| p.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            other => panic!("binary in an unknown profile directory {other:?}"),
        }
        let status = cmd.status().expect("run cargo");
        assert!(
            status.success(),
            "`cargo build --example rr_proxy` failed ({status})"
        );
        let exe = profile_dir.join("examples/rr_proxy");
        assert!(exe.is_file(), "{} missing after the build", exe.display());
        exe
    })
    .clone()
}

// ---------------------------------------------------------------------------
// Requests

/// Appends the JSON message `{"m": id}`, as producer `(name, seq)` at epoch 0 if given.
fn append(addr: &str, id: &str, producer: Option<(&str, u64)>) -> std::io::Result<Reply> {
    let body = serde_json::json!({ "m": id }).to_string();
    let seq = producer.map(|(_, seq)| seq.to_string());
    let mut headers = vec![JSON];
    if let (Some((name, _)), Some(seq)) = (producer, &seq) {
        headers.extend([
            ("Producer-Id", name),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", seq.as_str()),
        ]);
    }
    common::try_request(addr, "POST", STREAM, &headers, body.as_bytes())
}

/// Appends `{"m": id}` without a producer, which must succeed; returns the
/// acknowledged `Stream-Next-Offset`.
fn append_ok(addr: &str, id: &str) -> String {
    let r = append(addr, id, None).unwrap_or_else(|e| panic!("append {id} to {addr}: {e}"));
    assert_eq!(r.status, 204, "append {id} to {addr}: {}", r.text());
    r.header("stream-next-offset")
        .expect("Stream-Next-Offset on an append")
        .to_string()
}

/// The `m` of every message in a JSON array.
fn ids(body: &[u8]) -> Result<Vec<String>, String> {
    let text = String::from_utf8_lossy(body);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {text:?}"))?;
    let array = value
        .as_array()
        .ok_or_else(|| format!("not a JSON array: {text:?}"))?;
    array
        .iter()
        .map(|m| {
            m.get("m")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("a message without \"m\": {m}"))
        })
        .collect()
}

/// Every message of the stream, by catch-up reads from the start.
fn read_all(addr: &str) -> Vec<String> {
    let mut offset = "-1".to_string();
    let mut out = Vec::new();
    loop {
        let r = common::request(addr, "GET", &format!("{STREAM}?offset={offset}"), &[], b"");
        assert_eq!(r.status, 200, "catch-up read at {offset}: {}", r.text());
        out.extend(ids(&r.body).unwrap_or_else(|e| panic!("catch-up read at {offset}: {e}")));
        offset = r
            .header("stream-next-offset")
            .expect("Stream-Next-Offset")
            .to_string();
        if r.header("stream-up-to-date") == Some("true") {
            return out;
        }
    }
}

/// The value of the unlabelled gauge `name` in the node's `/metrics`.
fn gauge(addr: &str, name: &str) -> u64 {
    let r = common::request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "GET /metrics");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge {name} in /metrics"))
}

/// Polls `cond` until it holds; panics after `within`.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what} in vain"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `r` is the answer to a call while the database is away.
fn assert_unavailable(r: &Reply, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert!(
        r.header("retry-after").is_some(),
        "{what}: 503 without Retry-After: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: problem body is not JSON ({e}): {}", r.text()));
    assert_eq!(problem["code"], "STORAGE_UNAVAILABLE", "{what}: {problem}");
    assert_eq!(problem["status"], 503, "{what}: {problem}");
}

// ---------------------------------------------------------------------------
// Live readers: a thread each, reporting over a channel

/// What a live reader's thread reports.
enum Event {
    /// The messages of one long-poll answer, or of one SSE `data` event
    /// (reported with the `control` event that commits its offset), and how
    /// long the long-poll waited.
    Messages { ids: Vec<String>, waited: Duration },
    /// A long-poll answered `204`: it timed out.
    Empty { waited: Duration },
    /// An SSE connection started (the first one, or a reconnection).
    Connected,
    /// Something a correct server never does; the thread has stopped.
    Failed(String),
}

/// The receiving end of a live reader.
struct Reader {
    what: String,
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    /// Every message delivered so far, in order.
    got: Vec<String>,
    connects: usize,
    longest_wait: Duration,
}

impl Reader {
    fn new(what: String, rx: Receiver<Event>, stop: Arc<AtomicBool>) -> Reader {
        Reader {
            what,
            rx,
            stop,
            got: Vec::new(),
            connects: 0,
            longest_wait: Duration::ZERO,
        }
    }

    fn take(&mut self, event: Event) {
        match event {
            Event::Messages { ids, waited } => {
                assert!(
                    waited < WOKEN_WITHIN,
                    "{}: a long-poll took {waited:?} to deliver {ids:?}: not woken by the append",
                    self.what
                );
                self.longest_wait = self.longest_wait.max(waited);
                self.got.extend(ids);
            }
            Event::Empty { waited } => panic!(
                "{}: a long-poll timed out (204 after {waited:?}) after {} messages: \
                 a wake from the other node was missed",
                self.what,
                self.got.len()
            ),
            Event::Connected => self.connects += 1,
            Event::Failed(why) => panic!("{}: {why}", self.what),
        }
    }

    /// Waits until `n` messages have arrived, at most `within`.
    fn wait_for(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => self.take(event),
                Err(_) => panic!(
                    "{}: {} of {n} messages after {within:?}; the last ones: {:?}",
                    self.what,
                    self.got.len(),
                    &self.got[self.got.len().saturating_sub(5)..]
                ),
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Follows the stream on `addr` with long-polls from the start, each at the
/// `Stream-Next-Offset` of the previous answer.
fn long_poll_reader(addr: &str) -> Reader {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let what = format!("long-poll reader on {addr}");
    let (addr, flag) = (addr.to_string(), Arc::clone(&stop));
    thread::spawn(move || {
        let mut offset = "-1".to_string();
        while !flag.load(Ordering::Relaxed) {
            let started = Instant::now();
            let path = format!("{STREAM}?offset={offset}&live=long-poll");
            let r = common::try_request(&addr, "GET", &path, &[], b"");
            let waited = started.elapsed();
            let event = match r {
                Err(e) => Event::Failed(format!("long-poll at {offset}: {e} after {waited:?}")),
                Ok(r) => match (r.status, r.header("stream-next-offset")) {
                    (200, Some(next)) => match ids(&r.body) {
                        Ok(ids) => {
                            offset = next.to_string();
                            Event::Messages { ids, waited }
                        }
                        Err(e) => Event::Failed(format!("long-poll at {offset}: {e}")),
                    },
                    (204, Some(next)) => {
                        offset = next.to_string();
                        Event::Empty { waited }
                    }
                    _ => Event::Failed(format!(
                        "long-poll at {offset}: {} {:?} {}",
                        r.status,
                        r.headers,
                        r.text()
                    )),
                },
            };
            let failed = matches!(event, Event::Failed(_));
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    Reader::new(what, rx, stop)
}

/// Follows the stream on `addr` over SSE from the start. Like
/// `EventSource`, it reconnects at the last `control` event's offset when
/// the server ends the connection, and retries a `503`.
fn sse_reader(addr: &str) -> Reader {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let what = format!("SSE reader on {addr}");
    let (addr, flag) = (addr.to_string(), Arc::clone(&stop));
    thread::spawn(move || {
        let mut offset = "-1".to_string();
        while !flag.load(Ordering::Relaxed) {
            match sse_session(&addr, &mut offset, &tx, &flag) {
                Ok(()) => {}
                Err(Session::Unavailable) => thread::sleep(Duration::from_millis(200)),
                Err(Session::Failed(why)) => {
                    let _ = tx.send(Event::Failed(why));
                    return;
                }
            }
        }
    });
    Reader::new(what, rx, stop)
}

/// Why an SSE connection ended other than by the server's choice.
enum Session {
    /// `503`: try again shortly.
    Unavailable,
    Failed(String),
}

/// One SSE connection from `offset` until the server ends it (or `stop`);
/// `offset` follows the `control` events.
fn sse_session(
    addr: &str,
    offset: &mut String,
    tx: &Sender<Event>,
    stop: &AtomicBool,
) -> Result<(), Session> {
    let from = offset.clone();
    let failed = |what: String| Session::Failed(format!("SSE from {from}: {what}"));
    let mut s = TcpStream::connect(addr).map_err(|e| failed(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(|e| failed(e.to_string()))?;
    let head = format!(
        "GET {STREAM}?offset={offset}&live=sse HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .map_err(|e| failed(format!("send: {e}")))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Ok(false): nothing yet; Ok(true): end of stream.
    let mut fill = |raw: &mut Vec<u8>| match s.read(&mut buf) {
        Ok(0) => Ok(true),
        Ok(n) => {
            raw.extend_from_slice(&buf[..n]);
            Ok(false)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e),
    };
    let head_by = Instant::now() + NEVER_HANGS_PAST;
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        if fill(&mut raw).map_err(|e| failed(format!("read: {e}")))? {
            return Err(failed("connection closed before a response head".into()));
        }
        if Instant::now() > head_by {
            return Err(failed(format!("no response head in {NEVER_HANGS_PAST:?}")));
        }
    };
    let reply = common::parse(&raw[..head_end], true);
    if reply.status == 503 {
        return Err(Session::Unavailable);
    }
    if reply.status != 200 {
        return Err(failed(format!(
            "status {} {:?}",
            reply.status, reply.headers
        )));
    }
    let _ = tx.send(Event::Connected);
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"));
    raw.drain(..head_end);

    let mut events = SseParser::default();
    let mut pending = Vec::new();
    loop {
        let mut body = Vec::new();
        let last_chunk = if chunked {
            dechunk(&mut raw, &mut body).map_err(failed)?
        } else {
            body.append(&mut raw);
            false
        };
        for (kind, data) in events.feed(&body) {
            match kind.as_str() {
                "data" => pending.extend(ids(data.as_bytes()).map_err(failed)?),
                "control" => {
                    let control: serde_json::Value = serde_json::from_str(&data)
                        .map_err(|e| failed(format!("control event {data:?}: {e}")))?;
                    let next = control["streamNextOffset"]
                        .as_str()
                        .ok_or_else(|| failed(format!("control event without offset: {data}")))?;
                    *offset = next.to_string();
                    if !pending.is_empty() {
                        let ids = std::mem::take(&mut pending);
                        let waited = Duration::ZERO;
                        if tx.send(Event::Messages { ids, waited }).is_err() {
                            return Ok(());
                        }
                    }
                }
                other => return Err(failed(format!("unexpected event {other:?}: {data:?}"))),
            }
        }
        if last_chunk || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if fill(&mut raw).map_err(|e| failed(format!("read: {e}")))? {
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Moves the complete chunks at the front of `raw` (chunked transfer
/// coding) into `out`; `Ok(true)` once the last chunk has arrived.
fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, String> {
    loop {
        let Some(eol) = find(raw, b"\r\n") else {
            return Ok(false);
        };
        let line = String::from_utf8_lossy(&raw[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|e| format!("bad chunk size line {line:?}: {e}"))?;
        if size == 0 {
            return Ok(true);
        }
        let end = eol + 2 + size;
        if raw.len() < end + 2 {
            return Ok(false);
        }
        out.extend_from_slice(&raw[eol + 2..end]);
        raw.drain(..end + 2);
    }
}

/// Server-Sent Events framing: `event:` and `data:` lines up to a blank line.
#[derive(Default)]
struct SseParser {
    partial: Vec<u8>,
    kind: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the `(event, data)` pairs they completed.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.partial.extend_from_slice(bytes);
        let mut done = Vec::new();
        while let Some(eol) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=eol).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.kind.is_empty() {
                    let kind = std::mem::take(&mut self.kind);
                    let data = std::mem::take(&mut self.data).join("\n");
                    done.push((kind, data));
                }
            } else if line.starts_with(':') {
                // A keep-alive comment.
            } else {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => self.kind = value.to_string(),
                    "data" => self.data.push(value.to_string()),
                    _ => {}
                }
            }
        }
        done
    }
}

// ---------------------------------------------------------------------------
// The tests

/// Appends on A, in lockstep singles and in concurrent bursts, reach both
/// kinds of live reader on B exactly once, in the order of the offsets
/// they were acknowledged at, each within seconds of its append although
/// an unwoken long-poll would wait 30 s.
#[test]
fn cross_node_live_reads() {
    const ROUNDS: usize = 20;
    const SINGLES: usize = 5;
    const BURST: usize = 5;
    let test = "cross_node_live_reads";
    let started = Instant::now();
    // The shared server: not while harness.rs restarts it.
    let _shared = pg::shared();
    let db = pg::fresh_database(test);
    let a = Node::start(&db, test, "A");
    let b = Node::start(&db, test, "B");
    let r = common::request(a.addr(), "PUT", STREAM, &[JSON], b"");
    assert_eq!(r.status, 201, "create on A: {}", r.text());
    // Nothing is cached per node: B knows the stream A just created.
    let r = common::request(b.addr(), "HEAD", STREAM, &[], b"");
    assert_eq!(r.status, 200, "HEAD on B of the stream A created");

    let mut sse = sse_reader(b.addr());
    let mut polls = long_poll_reader(b.addr());
    // (acknowledged Stream-Next-Offset, message), in offset order.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        for i in 0..SINGLES {
            // Both readers wait at the tail on B before the append on A,
            // so only a wake can deliver it.
            wait_until(
                "a waiting long-poll and SSE connection on B",
                WOKEN_WITHIN,
                || {
                    gauge(b.addr(), "ds_active_long_polls") >= 1
                        && gauge(b.addr(), "ds_active_sse_connections") >= 1
                },
            );
            let id = format!("r{round}-single{i}");
            let at = append_ok(a.addr(), &id);
            let appended = Instant::now();
            acked.push((at, id));
            sse.wait_for(acked.len(), WOKEN_WITHIN);
            polls.wait_for(acked.len(), WOKEN_WITHIN);
            slowest = slowest.max(appended.elapsed());
        }
        // Concurrent appends: A's writer may batch them into one
        // transaction; their order is the order of their offsets.
        let addr = a.addr();
        let burst: Vec<(String, String)> = thread::scope(|s| {
            let writers: Vec<_> = (0..BURST)
                .map(|k| {
                    s.spawn(move || {
                        let id = format!("r{round}-burst{k}");
                        (append_ok(addr, &id), id)
                    })
                })
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().expect("burst writer"))
                .collect()
        });
        acked.extend(burst);
        acked.sort();
        sse.wait_for(acked.len(), WOKEN_WITHIN);
        polls.wait_for(acked.len(), WOKEN_WITHIN);
    }
    for pair in acked.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "two appends acknowledged at one offset: {pair:?}"
        );
    }
    // One more message: a duplicate delivered after the others would come
    // before it and show below.
    acked.push((append_ok(a.addr(), "last"), "last".into()));
    sse.wait_for(acked.len(), WOKEN_WITHIN);
    polls.wait_for(acked.len(), WOKEN_WITHIN);

    let expected: Vec<String> = acked.into_iter().map(|(_, id)| id).collect();
    assert_eq!(sse.got, expected, "what the SSE reader on B received");
    assert_eq!(
        polls.got, expected,
        "what the long-poll reader on B received"
    );
    assert_eq!(read_all(b.addr()), expected, "a catch-up read on B");
    assert_eq!(sse.connects, 1, "the SSE reader needed no reconnection");
    eprintln!(
        "{test}: {} messages in {:?}; slowest single append-to-both-readers {slowest:?}; \
         longest long-poll {:?}",
        expected.len(),
        started.elapsed(),
        polls.longest_wait
    );
}

/// Idempotent producers append through a round-robin proxy to two nodes,
/// retrying every failure with the same seq; A is SIGKILLed halfway. Every
/// message ends up in the stream exactly once, each producer's in order.
#[test]
fn node_killed_mid_producer_appends() {
    const PRODUCERS: usize = 4;
    const EACH: u64 = 100;
    let test = "node_killed_mid_producer_appends";
    let started = Instant::now();
    // The shared server: not while harness.rs restarts it.
    let _shared = pg::shared();
    let db = pg::fresh_database(test);
    let a = Node::start(&db, test, "A");
    let b = Node::start(&db, test, "B");
    let proxy = rr_proxy(&[&a, &b]);
    let r = common::request(&proxy.addr, "PUT", STREAM, &[JSON], b"");
    assert_eq!(r.status, 201, "create through the proxy: {}", r.text());

    let acked = AtomicUsize::new(0);
    let duplicates = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let total = PRODUCERS * EACH as usize;
    let mut a = Some(a);
    let acked_at_kill = thread::scope(|s| {
        for p in 0..PRODUCERS {
            let (proxy, counts, failures) = (&proxy.addr, (&acked, &duplicates), &failures);
            s.spawn(move || produce(proxy, p, EACH, counts, failures));
        }
        wait_until(
            "half of the appends acknowledged",
            Duration::from_secs(60),
            || acked.load(Ordering::Relaxed) >= total / 2,
        );
        let at = acked.load(Ordering::Relaxed);
        a.take().expect("node A").kill();
        at
    });
    assert!(
        acked_at_kill < total,
        "every append was acknowledged before the kill"
    );

    let got = read_all(b.addr());
    for p in 0..PRODUCERS {
        let mine: Vec<&String> = got
            .iter()
            .filter(|m| m.starts_with(&format!("p{p}-")))
            .collect();
        let want: Vec<String> = (0..EACH).map(|seq| format!("p{p}-{seq}")).collect();
        assert!(
            mine.iter().copied().eq(want.iter()),
            "producer {p}'s messages, in stream order: {mine:?}"
        );
    }
    assert_eq!(got.len(), total, "messages in the stream");
    let failures = failures.into_inner().expect("failures");
    eprintln!(
        "{test}: {total} messages in {:?}; A killed after {acked_at_kill} acknowledgements; \
         {} failed attempts were retried, {} retries answered as duplicates: {:?}",
        started.elapsed(),
        failures.len(),
        duplicates.load(Ordering::Relaxed),
        &failures[..failures.len().min(8)]
    );
}

/// Producer `p{p}` appends `{"m": "p{p}-{seq}"}` for seq 0..count through
/// `proxy`, retrying each on any error or 5xx until it is acknowledged (a
/// `204` duplicate counts). A seq's first attempt must not be a duplicate.
/// Counts acknowledgements and duplicates in `(acked, duplicates)`.
fn produce(
    proxy: &str,
    p: usize,
    count: u64,
    (acked, duplicates): (&AtomicUsize, &AtomicUsize),
    failures: &Mutex<Vec<String>>,
) {
    let name = format!("p{p}");
    for seq in 0..count {
        let id = format!("p{p}-{seq}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first = true;
        loop {
            let failure = match append(proxy, &id, Some((&name, seq))) {
                Ok(r) if r.status == 200 || (r.status == 204 && !first) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                    if r.status == 204 {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(r) if r.status >= 500 => format!("{id}: {} {}", r.status, r.text()),
                Ok(r) => panic!("{id}: unexpected {} {:?} {}", r.status, r.headers, r.text()),
                Err(e) => format!("{id}: {e}"),
            };
            failures.lock().expect("failures").push(failure);
            assert!(
                Instant::now() < deadline,
                "{id}: not acknowledged within 30 s; failures: {:?}",
                failures.lock().expect("failures")
            );
            first = false;
            // Not synchronization: a retry's back-off.
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One append attempt of the outage test's writer.
struct Attempt {
    id: String,
    took: Duration,
    reply: Result<Reply, String>,
}

/// Appends `{"m": "w-{seq}"}` as producer `w` in a loop until `stop`,
/// retrying each seq until it is acknowledged; every attempt is logged.
fn write_loop(
    addr: &str,
    stop: &AtomicBool,
    acked: &Mutex<Vec<String>>,
    attempts: &Mutex<Vec<Attempt>>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w-{seq}");
        let started = Instant::now();
        let reply = append(addr, &id, Some(("w", seq))).map_err(|e| e.to_string());
        let took = started.elapsed();
        let ok = reply
            .as_ref()
            .is_ok_and(|r| r.status == 200 || r.status == 204);
        if ok {
            acked.lock().expect("acked").push(id.clone());
            seq += 1;
        }
        attempts
            .lock()
            .expect("attempts")
            .push(Attempt { id, took, reply });
        if !ok {
            // Not synchronization: a retry's back-off.
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// PostgreSQL is stopped while a writer appends on A and an SSE reader
/// follows on B, then started again; the nodes are never restarted.
#[test]
fn database_restart_mid_traffic() {
    let test = "database_restart_mid_traffic";
    let started = Instant::now();
    // Its own server: stopping the shared one would cut the other tests.
    let server = pg::OwnServer::start("outage");
    let db = server.fresh_database(test);
    let a = Node::start(&db, test, "A");
    let b = Node::start(&db, test, "B");
    let r = common::request(a.addr(), "PUT", STREAM, &[JSON], b"");
    assert_eq!(r.status, 201, "create on A: {}", r.text());
    let mut sse = sse_reader(b.addr());

    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let attempts = Mutex::new(Vec::new());
    let count = || acked.lock().expect("acked").len();
    let unavailable = || {
        attempts
            .lock()
            .expect("attempts")
            .iter()
            .filter(|a: &&Attempt| a.reply.as_ref().is_ok_and(|r| r.status == 503))
            .count()
    };
    let (outage, (recovery, recovered_at)) = thread::scope(|s| {
        s.spawn(|| write_loop(a.addr(), &stop, &acked, &attempts));
        // Stop the writer however this ends, or the scope never returns.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);

        wait_until(
            "20 appends before the outage",
            Duration::from_secs(20),
            || count() >= 20,
        );
        sse.wait_for(20, WOKEN_WITHIN);

        server.stop();
        let down = Instant::now();
        wait_until("a 503 answer to the writer", Duration::from_secs(5), || {
            unavailable() >= 1
        });
        let outage = down.elapsed();
        // Reads on the other node are refused the same way, promptly.
        let asked = Instant::now();
        let r = common::request(b.addr(), "GET", &format!("{STREAM}?offset=-1"), &[], b"");
        assert_unavailable(&r, "catch-up read on B while the database is down");
        assert!(
            asked.elapsed() < NEVER_HANGS_PAST,
            "the read took {:?}",
            asked.elapsed()
        );
        let r = common::request(b.addr(), "GET", "/readyz", &[], b"");
        assert_eq!(r.status, 503, "/readyz on B while the database is down");
        // An outage of a few seconds: the writer retries through twenty
        // 503s, B's wake listener through several reconnection attempts.
        wait_until(
            "twenty 503 answers to the writer",
            Duration::from_secs(20),
            || unavailable() >= 20,
        );

        let before = count();
        server.start_again();
        let up = Instant::now();
        wait_until(
            "an append acknowledged after the database returned",
            Duration::from_secs(20),
            || count() > before,
        );
        let recovery = up.elapsed();
        let recovered_at = attempts.lock().expect("attempts").len();
        wait_until("20 more appends", Duration::from_secs(20), || {
            count() >= before + 20
        });
        (outage, (recovery, recovered_at))
    });

    let attempts = attempts.into_inner().expect("attempts");
    // Once an append succeeded again, the node has recovered for good.
    for at in &attempts[recovered_at..] {
        let status = at.reply.as_ref().map(|r| r.status);
        assert!(
            matches!(status, Ok(200 | 204)),
            "appending {} after the recovery: {status:?}",
            at.id
        );
    }
    for at in &attempts {
        assert!(
            at.took < NEVER_HANGS_PAST,
            "appending {} took {:?}: a call hung while the database was away",
            at.id,
            at.took
        );
        match &at.reply {
            Ok(r) if r.status == 200 || r.status == 204 => {}
            Ok(r) => assert_unavailable(r, &format!("appending {}", at.id)),
            Err(e) => panic!("appending {}: {e}", at.id),
        }
    }
    let acked = acked.into_inner().expect("acked");
    sse.wait_for(acked.len(), Duration::from_secs(30));
    assert_eq!(sse.got, acked, "what the SSE reader on B received");
    assert_eq!(read_all(b.addr()), acked, "a catch-up read on B");
    eprintln!(
        "{test}: {} appends, {} attempts refused, in {:?}; first 503 {outage:?} after the \
         stop; first append {recovery:?} after the start; SSE connections {}",
        acked.len(),
        attempts.len() - acked.len(),
        started.elapsed(),
        sse.connects
    );
}

/// PostgreSQL restarts while nothing happens. The first calls afterwards
/// must not fail on connections that died with the old server (they sit
/// idle in the pools, looking open), and an SSE connection that waited
/// through the restart stays open and gets the next append from the other
/// node.
#[test]
fn database_restart_while_idle() {
    let test = "database_restart_while_idle";
    let started = Instant::now();
    let server = pg::OwnServer::start("idle");
    let db = server.fresh_database(test);
    let a = Node::start(&db, test, "A");
    let b = Node::start(&db, test, "B");
    let r = common::request(a.addr(), "PUT", STREAM, &[JSON], b"");
    assert_eq!(r.status, 201, "create on A: {}", r.text());
    append_ok(a.addr(), "before");
    let mut sse = sse_reader(b.addr());
    sse.wait_for(1, WOKEN_WITHIN);
    // Pooled connections on both nodes, idle from here on.
    assert_eq!(read_all(a.addr()), ["before"]);
    assert_eq!(read_all(b.addr()), ["before"]);

    server.stop();
    server.start_again();

    let read = common::request(b.addr(), "GET", &format!("{STREAM}?offset=-1"), &[], b"");
    let write = append(a.addr(), "after", None).expect("append on A");
    assert_eq!(
        (read.status, write.status),
        (200, 204),
        "the first read on B and the first append on A after the restart: {} / {}",
        read.text(),
        write.text()
    );
    sse.wait_for(2, WOKEN_WITHIN);
    assert_eq!(
        sse.got,
        ["before", "after"],
        "what the SSE reader on B received"
    );
    assert_eq!(
        sse.connects, 1,
        "the SSE connection on B survived the restart"
    );
    eprintln!("{test}: {:?}", started.elapsed());
}
