//! Every transition of a parked reader, on a real listener (memory
//! backend): park, wake (stays parked), partial write (active, then parked
//! again), long-poll answer and keep-alive after it, disconnect while
//! parked, input while parked, keep-alive comments, reconnect deadline,
//! long-poll timeout, closure, shutdown; what a pass hands out in
//! [`passes`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HttpEngine, ServerConfig};
use crate::http::AppState;
use crate::http::front::Front;
use crate::metrics::Live;
use crate::notify::WakeHub;
use crate::storage::memory::MemoryStorage;

struct Server {
    state: AppState,
    addr: std::net::SocketAddr,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn server(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let mut config = ServerConfig {
        long_poll_timeout: Duration::from_secs(30),
        sse_reconnect: Duration::from_secs(30),
        sse_keepalive: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    let timeouts = crate::http::serve::Timeouts {
        header_read: config.header_read_timeout,
        send: Duration::from_secs(10),
    };
    let state = crate::server::state(config, storage, hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(crate::http::serve::serve(
        listener,
        Front::new(state.clone()),
        timeouts,
        HttpEngine::Native,
        None,
        state.shutdown.clone(),
    ));
    let s = Server {
        state,
        addr,
        served,
    };
    s.request("PUT", "/v1/stream/s", "text/plain", "").await;
    s
}

impl Server {
    fn parked(&self) -> u64 {
        self.state.metrics.parked.load(Relaxed)
    }

    fn between_polls(&self) -> u64 {
        self.state.metrics.between_polls.load(Relaxed)
    }

    fn live(&self, kind: Live) -> u64 {
        self.state.metrics.live_count(kind)
    }

    /// Waits (at most 5 s) until `f` holds.
    async fn until(&self, what: &str, f: impl Fn(&Server) -> bool) {
        for _ in 0..500 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{what}: parked {} sse {} long-poll {}",
            self.parked(),
            self.live(Live::Sse),
            self.live(Live::LongPoll)
        );
    }

    /// One request on a connection of its own; the whole answer.
    async fn request(&self, method: &str, path: &str, ct: &str, body: &str) -> String {
        let mut c = TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn append(&self, body: &str) {
        let res = self
            .request("POST", "/v1/stream/s", "text/plain", body)
            .await;
        assert!(res.starts_with("HTTP/1.1 204"), "{res}");
    }

    /// A client that sent `GET path` (kept alive).
    async fn get(&self, path: &str) -> Client {
        let mut c = TcpStream::connect(self.addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        Client {
            tcp: c,
            seen: String::new(),
        }
    }
}

struct Client {
    tcp: TcpStream,
    /// Everything received so far.
    seen: String,
}

impl Client {
    /// Sends `GET path` on this connection.
    async fn ask(&mut self, path: &str) {
        self.tcp
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads until `needle` has been received `times` times in all.
    async fn until(&mut self, needle: &str, times: usize) -> &str {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 64 * 1024];
        while self.seen.matches(needle).count() < times {
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} x{times} in {:?}", self.seen))
                .unwrap();
            assert!(n > 0, "closed before {needle:?}: {:?}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        &self.seen
    }
}

/// The `data:` lines of an SSE body that `keep` takes, joined.
fn data_of(seen: &str, keep: impl Fn(&str) -> bool) -> String {
    seen.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter(|d| keep(d))
        .collect()
}

const SSE: &str = "/v1/stream/s?offset=-1&live=sse";
const POLL: &str = "/v1/stream/s?offset=-1&live=long-poll";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_subscribers_get_every_event_once_and_stay_parked() {
    let s = server(|_| {}).await;
    let mut a = s.get(SSE).await;
    let mut b = s.get(SSE).await;
    s.until("both parked", |s| s.parked() == 2).await;
    for i in 0..20 {
        s.append(&format!("m{i}")).await;
    }
    // Appends that arrive while a wake is queued share its event, so the
    // check is the bytes in order and the final offset (20 records).
    let tail = "\"streamNextOffset\":\"0000000000000014_0000000000000032\"";
    for c in [&mut a, &mut b] {
        let seen = c.until(tail, 1).await.to_string();
        let data = data_of(&seen, |d| d.starts_with('m'));
        let want: String = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(data, want, "{seen}");
    }
    // Still parked: a wake with the records is written, not a task.
    assert_eq!(s.parked(), 2);
    assert_eq!(s.live(Live::Sse), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_long_poll_is_answered_and_its_connection_goes_on() {
    let s = server(|c| c.cors_origins = vec!["http://app".into()]).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(format!("GET {POLL} HTTP/1.1\r\nHost: x\r\nOrigin: http://app\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut c = Client {
        tcp: c,
        seen: String::new(),
    };
    s.until("long-poll parked", |s| s.parked() == 1).await;
    assert_eq!(s.live(Live::LongPoll), 1);
    s.append("hello").await;
    let seen = c.until("hello", 1).await.to_string();
    let lower = seen.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{seen}");
    for h in [
        "access-control-allow-origin: http://app",
        "x-content-type-options: nosniff",
        "stream-cursor:",
        "stream-next-offset: 0000000000000001_0000000000000005",
        "content-length: 5",
    ] {
        assert!(lower.contains(h), "{h} not in {seen}");
    }
    s.until("answered", |s| {
        s.parked() == 0 && s.live(Live::LongPoll) == 0
    })
    .await;
    // The same connection asks again, from the new offset, and parks again.
    let next = "/v1/stream/s?offset=0000000000000001_0000000000000005&live=long-poll";
    c.ask(next).await;
    s.until("parked again", |s| s.parked() == 1).await;
    s.append("world").await;
    let seen = c.until("world", 1).await.to_string();
    assert_eq!(seen.matches("HTTP/1.1 200").count(), 2, "{seen}");
    assert!(!seen.contains("hellohello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answered_at_once_waits_in_the_parking_for_the_next() {
    const HEAD: Duration = Duration::from_millis(1500);
    let s = server(|c| c.header_read_timeout = HEAD).await;
    s.append("a").await;
    // Answered at once (the data is there): the connection then waits
    // for its next request in the parking (`Parking::hold`).
    let mut c = s.get(POLL).await;
    c.until("\r\n\r\na", 1).await;
    let mut idle = s.get(POLL).await;
    idle.until("\r\n\r\na", 1).await;
    let idle_at = tokio::time::Instant::now();
    s.until("both wait between polls", |s| s.between_polls() == 2)
        .await;
    // Its next poll is read, parks, and is answered by the next append.
    let next = "/v1/stream/s?offset=0000000000000001_0000000000000001&live=long-poll";
    c.ask(next).await;
    s.until("the next poll parked", |s| {
        s.parked() == 1 && s.between_polls() == 1
    })
    .await;
    s.append("b").await;
    c.until("\r\n\r\nb", 1).await;
    s.until("answered by its group", |s| {
        s.parked() == 0 && s.between_polls() == 2
    })
    .await;
    // Two polls in one write: the first is answered at once, the second
    // waits in the buffer and is answered after it, in order.
    let two =
        format!("GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\nGET {next} HTTP/1.1\r\nHost: x\r\n\r\n");
    c.tcp.write_all(two.as_bytes()).await.unwrap();
    let seen = c.until("\r\n\r\nb", 2).await.to_string();
    assert!(seen.contains("\r\n\r\nab"), "{seen}");
    assert_eq!(seen.matches("HTTP/1.1 200").count(), 4, "{seen}");
    // A lone poll that finds data, answered at once from where it waits,
    // twice; half a head deadline after `idle` was answered, so that
    // `c` waits well past `idle`'s deadline below, however slow the
    // machine.
    tokio::time::sleep_until(idle_at + HEAD / 2).await;
    for n in [2, 3] {
        c.ask(POLL).await;
        c.until("\r\n\r\nab", n).await;
    }
    // A connection without a next request closes once the head deadline
    // passed, as an idle one does.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0, "closed, nothing more sent");
    s.until("one left", |s| s.between_polls() == 1).await;
    // One waiting at shutdown is closed, and serve returns.
    s.state.shutdown.cancel();
    let n = tokio::time::timeout(Duration::from_secs(5), c.tcp.read(&mut buf))
        .await
        .expect("closed at shutdown")
        .unwrap();
    assert_eq!(n, 0);
    s.until("none left", |s| s.between_polls() == 0).await;
    tokio::time::timeout(Duration::from_secs(5), s.served)
        .await
        .expect("serve returns once every connection closed")
        .unwrap()
        .unwrap();
}

/// The lines of a response head, lowercased, without `date` and with the
/// cursor's value left out (it moves with the clock).
fn head_lines(res: &str) -> Vec<String> {
    let head = &res[..res.find("\r\n\r\n").expect("a whole head")];
    let mut lines: Vec<String> = head
        .to_ascii_lowercase()
        .lines()
        .filter(|l| !l.starts_with("date:"))
        .map(|l| match l.split_once(':') {
            Some(("stream-cursor", _)) => "stream-cursor".to_string(),
            _ => l.to_string(),
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_the_group_is_the_answer_a_task_gives() {
    let s = server(|c| c.cors_origins = vec!["http://app".into()]).await;
    let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nOrigin: http://app\r\n\r\n");
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(ask(POLL).as_bytes()).await.unwrap();
    let mut parked = Client {
        tcp: c,
        seen: String::new(),
    };
    s.until("parked", |s| s.parked() == 1).await;
    s.append("hello").await;
    let from_group = parked.until("hello", 1).await.to_string();
    // The same poll again, now answered at once by its request's task.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(ask(POLL).as_bytes()).await.unwrap();
    let mut direct = Client {
        tcp: c,
        seen: String::new(),
    };
    let from_task = direct.until("hello", 1).await.to_string();
    assert!(from_group.ends_with("\r\n\r\nhello"), "{from_group}");
    assert_eq!(head_lines(&from_group), head_lines(&from_task));
    // Asked again on either connection, which now waits in the parking
    // (`Parking::hold`): the same answer.
    for c in [&mut direct, &mut parked] {
        c.tcp.write_all(ask(POLL).as_bytes()).await.unwrap();
        let seen = c.until("hello", 2).await;
        let second = &seen[seen.find("hello").unwrap() + 5..];
        assert!(second.starts_with("HTTP/1.1 200"), "{seen}");
        assert_eq!(head_lines(second), head_lines(&from_task));
    }
    // Answered, the connection is no reader any more.
    s.until("answered", |s| {
        s.parked() == 0 && s.live(Live::LongPoll) == 0
    })
    .await;
    // And every answer was counted as a request.
    let metrics = s.request("GET", "/metrics", "text/plain", "").await;
    let counted = "ds_http_requests_total{method=\"GET\",route=\"stream\",status=\"200\"} 4";
    assert!(metrics.contains(counted), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_connection_closes_when_idle_or_at_shutdown() {
    let s = server(|c| c.header_read_timeout = Duration::from_millis(700)).await;
    let mut idle = s.get(POLL).await;
    let mut other = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 2).await;
    s.append("a").await;
    idle.until("\r\n\r\na", 1).await;
    other.until("\r\n\r\na", 1).await;
    // No next request: closed once the head deadline passed.
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0, "closed, nothing more sent");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not at once"
    );
    // `other` waits too; a shutdown closes it and lets serve return.
    s.state.shutdown.cancel();
    let n = tokio::time::timeout(Duration::from_secs(5), other.tcp.read(&mut buf))
        .await
        .expect("closed at shutdown")
        .unwrap();
    assert_eq!(n, 0);
    tokio::time::timeout(Duration::from_secs(5), s.served)
        .await
        .expect("serve returns once every connection closed")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_socket_does_not_take_whole_is_finished_by_a_task() {
    let s = server(|_| {}).await;
    let mut c = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 1).await;
    // More than a loopback socket takes without being read.
    let big = "y".repeat(24 << 20);
    s.append(&big).await;
    let want = format!("content-length: {}", big.len());
    let seen = c.until("\r\n\r\n", 1).await.to_ascii_lowercase();
    assert!(seen.contains(&want), "{seen}");
    let head = seen.find("\r\n\r\n").unwrap() + 4;
    let mut body = c.seen.len() - head;
    let mut buf = vec![0u8; 1 << 20];
    while body < big.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), c.tcp.read(&mut buf))
            .await
            .expect("the rest comes")
            .unwrap();
        assert!(n > 0 && buf[..n].iter().all(|&b| b == b'y'));
        body += n;
    }
    assert_eq!(body, big.len(), "every byte once");
    // The connection goes on.
    let next = format!(
        "/v1/stream/s?offset=0000000000000001_{:016x}&live=long-poll",
        big.len()
    );
    c.ask(&next).await;
    s.until("parked again", |s| s.parked() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_socket_makes_the_subscriber_active_and_nothing_is_lost() {
    let s = server(|_| {}).await;
    let mut c = s.get(SSE).await;
    s.until("parked", |s| s.parked() == 1).await;
    // Appends until the client's socket (which is not read) is full: the
    // subscriber then leaves the parking and its task holds the rest.
    let chunk = "x".repeat(60 * 1024);
    let mut sent = 0;
    while s.parked() == 1 {
        s.append(&chunk).await;
        sent += 1;
        assert!(sent < 2000, "never left the parking");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.live(Live::Sse), 1, "active, not gone");
    s.append("end").await;
    // "end" may share an event with the last chunk (queued wakes merge).
    let seen = c.until("end\n\n", 1).await.to_string();
    let data = data_of(&seen, |d| !d.starts_with('{'));
    assert!(data.ends_with("end"), "end last");
    let xs = data.len() - 3;
    assert!(data[..xs].bytes().all(|b| b == b'x'), "only chunks before");
    assert_eq!(xs, sent * chunk.len(), "every byte once");
    // Caught up again: it parks again.
    s.until("parked again", |s| s.parked() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_its_slot_at_once() {
    let s = server(|_| {}).await;
    let a = s.get(SSE).await;
    let b = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 2).await;
    drop(a);
    drop(b);
    s.until("freed", |s| {
        s.parked() == 0 && s.live(Live::Sse) == 0 && s.live(Live::LongPoll) == 0
    })
    .await;
    // Nobody waits on the stream any more.
    s.until("group gone", |s| s.state.hub.watched() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_while_parked_makes_the_reader_active_and_is_answered_after() {
    let s = server(|c| c.sse_reconnect = Duration::from_millis(600)).await;
    let mut c = s.get(SSE).await;
    c.until("upToDate", 1).await;
    s.until("parked", |s| s.parked() == 1).await;
    c.tcp
        .write_all(b"HEAD /v1/stream/s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.until("active", |s| s.parked() == 0 && s.live(Live::Sse) == 1)
        .await;
    s.append("a").await;
    c.until("data:a", 1).await;
    // At the reconnect deadline the SSE response ends, and the pipelined
    // HEAD is answered on the same connection.
    let seen = c.until("HTTP/1.1 200", 2).await.to_string();
    assert!(seen.contains("0\r\n\r\nHTTP/1.1 200"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_subscribers_get_keepalives_and_end_at_the_reconnect_deadline() {
    let s = server(|c| {
        c.sse_keepalive = Duration::from_millis(200);
        c.sse_reconnect = Duration::from_millis(1500);
    })
    .await;
    let mut c = s.get(SSE).await;
    s.until("parked", |s| s.parked() == 1).await;
    c.until(": keep-alive", 3).await;
    assert_eq!(s.parked(), 1, "keep-alives do not unpark");
    let started = tokio::time::Instant::now();
    c.until("0\r\n\r\n", 1).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    s.until("gone", |s| s.live(Live::Sse) == 0).await;
    // The connection is kept: a next request is answered.
    c.tcp
        .write_all(b"HEAD /v1/stream/s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    c.until("HTTP/1.1 200", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_long_poll_times_out_with_204() {
    let s = server(|c| c.long_poll_timeout = Duration::from_millis(400)).await;
    let mut c = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 1).await;
    let seen = c.until("\r\n\r\n", 1).await.to_string();
    assert!(seen.starts_with("HTTP/1.1 204"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("stream-up-to-date: true")
    );
    s.until("gone", |s| s.parked() == 0 && s.live(Live::LongPoll) == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_ends_parked_readers() {
    let s = server(|_| {}).await;
    let mut sse = s.get(SSE).await;
    let mut poll = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 2).await;
    let res = s
        .request("POST", "/v1/stream/s", "text/plain", "last")
        .await;
    assert!(res.starts_with("HTTP/1.1 204"), "{res}");
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"POST /v1/stream/s HTTP/1.1\r\nHost: x\r\nStream-Closed: true\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(res.starts_with("HTTP/1.1 204"), "{res}");
    let seen = sse.until("0\r\n\r\n", 1).await.to_string();
    assert_eq!(seen.matches("data:last").count(), 1, "{seen}");
    assert_eq!(seen.matches("\"streamClosed\":true").count(), 1, "{seen}");
    let seen = poll.until("last", 1).await.to_string();
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    s.until("gone", |s| s.parked() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_parked_readers() {
    let s = server(|_| {}).await;
    let mut sse = s.get(SSE).await;
    let mut poll = s.get(POLL).await;
    s.until("parked", |s| s.parked() == 2).await;
    s.state.shutdown.cancel();
    sse.until("0\r\n\r\n", 1).await;
    let seen = poll.until("\r\n\r\n", 1).await.to_string();
    assert!(seen.starts_with("HTTP/1.1 204"), "{seen}");
    tokio::time::timeout(Duration::from_secs(5), s.served)
        .await
        .expect("serve returns once every connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(s.state.metrics.parked.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_off_keeps_readers_active() {
    let s = server(|c| c.live_parking = false).await;
    let mut c = s.get(SSE).await;
    c.until("upToDate", 1).await;
    s.append("a").await;
    c.until("data:a", 1).await;
    assert_eq!(s.parked(), 0);
    assert_eq!(s.live(Live::Sse), 1);
}

/// What a parked reader holds inline (BENCHMARKS.md; `--nocapture`).
#[test]
fn member_size() {
    let m = std::mem::size_of::<super::Member>();
    println!(
        "Member: {m} B, slab entry: {} B",
        std::mem::size_of::<slab::Slab<super::Member>>()
    );
    assert!(m <= 192, "{m}");
}

mod passes;
