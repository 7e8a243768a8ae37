//! HTTP load generator for Durable Streams servers (ours and peers).
//!
//! Does nothing unless `DS_LOAD_TARGET=host:port` is set, so that
//! `cargo test --all-targets` runs it instantly. Raw HTTP/1.1 over tokio
//! `TcpStream`s: keep-alive, one request in flight per connection (no
//! pipelining), `TCP_NODELAY`.
//!
//! Environment:
//! - `DS_LOAD_TARGET`   host:port of the server (required to do anything); or
//!   several, comma-separated, nodes of one deployment (a shared postgres
//!   database): connection or subscriber i goes to node i mod n, like an L4
//!   balancer; setup, the catch-up reader and the live writers use the first
//! - `DS_LOAD_WORKLOAD` append | producer | catchup | tailread | fanout | longpoll |
//!   create | idle
//! - `DS_LOAD_PREFIX`   path prefix of streams (default `/v1/stream/`)
//! - `DS_LOAD_CONNS`    connections (default 64)
//! - `DS_LOAD_STREAMS`  streams the appends are spread over (default 1)
//! - `DS_LOAD_SECS`     measured seconds (default 5, after 1 s of warm-up)
//! - `DS_LOAD_BODY`     append body bytes (default 100)
//! - `DS_LOAD_MIB`      catch-up stream size in MiB (default 64)
//! - `DS_LOAD_SUBS`     SSE subscribers (default 1000)
//! - `DS_LOAD_MSGS`     fan-out messages (default 100, one every 50 ms)
//! - `DS_LOAD_COUNT`    streams to create (default 100000)
//! - `DS_LOAD_TOKEN`    a bearer token every request carries (a server with
//!   auth on)
//! - `DS_LOAD_SPLIT`    `1`: a request's head and body go in two writes (two
//!   segments, as Python's `http.client` sends them), not one
//! - `DS_SERVER_PID`    server pid, to read its VmRSS and its CPU time
//!   (`/proc/PID/stat`: `server_cpu_us_per_req` over the measured window of
//!   the appends, `server_cpu_us_per_delivery` over the live phase of
//!   fan-out and long-poll, and `server_cpu_us_per_poll` per long-poll
//!   answered); comma-separated pids (several nodes) are summed
//!
//! Prints one `RESULT key=value ...` line per run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
    req: Vec<u8>,
    /// Scratch for bodies, kept across requests: a fresh 64 KiB buffer
    /// per response cost the generator more than some servers spend on
    /// the request (it shares the machine with them).
    buf: Vec<u8>,
}

/// `DS_LOAD_SPLIT=1`, read once.
fn split() -> bool {
    static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SPLIT.get_or_init(|| std::env::var("DS_LOAD_SPLIT").is_ok_and(|v| v == "1"))
}

/// `DS_LOAD_TOKEN`, read once.
fn token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            std::env::var("DS_LOAD_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        })
        .as_deref()
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    async fn connect(addr: &str) -> Res<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::with_capacity(64 * 1024, s),
            host: addr.to_string(),
            req: Vec::with_capacity(512),
            buf: vec![0u8; 64 * 1024],
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<()> {
        use std::io::Write;
        self.req.clear();
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host
        )?;
        if method != "GET" || !body.is_empty() {
            write!(self.req, "Content-Length: {}\r\n", body.len())?;
        }
        if let Some(t) = token() {
            write!(self.req, "Authorization: Bearer {t}\r\n")?;
        }
        for (k, v) in headers {
            write!(self.req, "{k}: {v}\r\n")?;
        }
        self.req.extend_from_slice(b"\r\n");
        if split() && !body.is_empty() {
            self.io.get_mut().write_all(&self.req).await?;
            self.io.get_mut().write_all(body).await?;
            return Ok(());
        }
        self.req.extend_from_slice(body);
        self.io.get_mut().write_all(&self.req).await?;
        Ok(())
    }

    async fn read_line(&mut self, line: &mut String) -> Res<()> {
        line.clear();
        if self.io.read_line(line).await? == 0 {
            return Err("connection closed".into());
        }
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        Ok(())
    }

    async fn read_head(&mut self) -> Res<Head> {
        let mut line = String::new();
        self.read_line(&mut line).await?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            self.read_line(&mut line).await?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok(Head { status, headers })
    }

    /// Reads (and counts, optionally keeps) the body of a non-streaming response.
    async fn read_body(&mut self, head: &Head, keep: Option<&mut Vec<u8>>) -> Res<u64> {
        if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
            return Ok(0);
        }
        if head.get("content-length") == Some("0") {
            return Ok(0);
        }
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![0u8; 64 * 1024];
        }
        let read = self.read_body_into(head, keep, &mut buf).await;
        self.buf = buf;
        read
    }

    async fn read_body_into(
        &mut self,
        head: &Head,
        mut keep: Option<&mut Vec<u8>>,
        buf: &mut [u8],
    ) -> Res<u64> {
        let mut total = 0u64;
        let chunked = head
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            let mut line = String::new();
            loop {
                self.read_line(&mut line).await?;
                let hex = line.split(';').next().unwrap_or("").trim();
                let mut size = usize::from_str_radix(hex, 16)?;
                if size == 0 {
                    loop {
                        self.read_line(&mut line).await?;
                        if line.is_empty() {
                            return Ok(total);
                        }
                    }
                }
                while size > 0 {
                    let n = size.min(buf.len());
                    self.io.read_exact(&mut buf[..n]).await?;
                    if let Some(k) = keep.as_deref_mut() {
                        k.extend_from_slice(&buf[..n]);
                    }
                    size -= n;
                    total += n as u64;
                }
                self.read_line(&mut line).await?;
            }
        }
        let mut left: u64 = match head.get("content-length") {
            Some(v) => v.parse()?,
            None => u64::MAX, // until close
        };
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self.io.read(&mut buf[..want]).await?;
            if n == 0 {
                if left == u64::MAX || head.get("content-length").is_none() {
                    break;
                }
                return Err("eof in body".into());
            }
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&buf[..n]);
            }
            total += n as u64;
            left = left.saturating_sub(n as u64);
        }
        Ok(total)
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<(Head, u64)> {
        self.send(method, path, headers, body).await?;
        let head = self.read_head().await?;
        let n = self.read_body(&head, None).await?;
        Ok((head, n))
    }
}

struct Cfg {
    /// The nodes (one unless `DS_LOAD_TARGET` lists several).
    addrs: Vec<String>,
    prefix: String,
    run: String,
}

impl Cfg {
    /// The first node: setup, catch-up, the live workloads' writer.
    fn addr(&self) -> &str {
        &self.addrs[0]
    }

    /// The node of connection or subscriber `i`.
    fn addr_for(&self, i: usize) -> &str {
        &self.addrs[i % self.addrs.len()]
    }

    fn path(&self, name: &str) -> String {
        format!("{}{}-{}", self.prefix, self.run, name)
    }

    async fn create(&self, conn: &mut Conn, name: &str, ct: &str) -> Res<()> {
        let (head, _) = conn
            .request("PUT", &self.path(name), &[("Content-Type", ct)], b"")
            .await?;
        if !(200..300).contains(&head.status) {
            return Err(format!("PUT {name}: {}", head.status).into());
        }
        Ok(())
    }
}

/// The `p` quantile of `sorted` (none of an empty list).
fn nth(sorted: &[u32], p: f64) -> Option<u32> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((last as f64) * p).round() as usize])
}

/// The `p` quantile of `sorted` microseconds, in milliseconds.
fn pct(sorted: &[u32], p: f64) -> f64 {
    nth(sorted, p).map_or(f64::NAN, |v| v as f64 / 1000.0)
}

fn uptime_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// VmRSS of `pids` (comma-separated: summed over several nodes).
fn vm_rss_kib(pids: &str) -> Option<u64> {
    pids.split(',').map(vm_rss_kib_one).sum()
}

fn vm_rss_kib_one(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system, microseconds) the processes `pids` used so far
/// (comma-separated: summed over several nodes), from `/proc/PID/stat`.
fn cpu_us(pids: &str) -> Option<u64> {
    pids.split(',').map(cpu_us_one).sum()
}

fn cpu_us_one(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

/// `cpu_us` of the server between two readings, per `n` events, as a
/// RESULT field value.
fn cpu_per(before: Option<u64>, after: Option<u64>, n: usize) -> String {
    match (before, after) {
        (Some(a), Some(b)) if n > 0 => format!("{:.1}", (b.saturating_sub(a)) as f64 / n as f64),
        _ => "n/a".into(),
    }
}

/// Closed-loop appends: every connection sends its next append as soon as the
/// previous one is answered.
async fn append(cfg: Arc<Cfg>, producer: bool) -> Res<()> {
    let conns: usize = env_or("DS_LOAD_CONNS", 64);
    let streams: usize = env_or("DS_LOAD_STREAMS", 1);
    let secs: f64 = env_or("DS_LOAD_SECS", 5.0);
    let body = Arc::new(vec![b'x'; env_or("DS_LOAD_BODY", 100)]);
    let ct = "application/octet-stream";
    let paths: Arc<Vec<String>> =
        Arc::new((0..streams).map(|i| cfg.path(&format!("s{i}"))).collect());
    // Create the streams over up to 64 connections (100,000 streams one at
    // a time would take minutes).
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..conns.clamp(1, 64).min(streams) {
        let (cfg, next) = (cfg.clone(), next.clone());
        creators.push(tokio::spawn(async move {
            let mut setup = Conn::connect(cfg.addr()).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= streams {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                }
                cfg.create(&mut setup, &format!("s{i}"), ct).await?;
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    let pid = std::env::var("DS_SERVER_PID").ok();
    let rss = pid.as_deref().and_then(vm_rss_kib);
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (cfg, paths, body) = (cfg.clone(), paths.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut conn = Conn::connect(cfg.addr_for(w)).await?;
            let pid = format!("{}-p{w}", cfg.run);
            let mut k = 0usize;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let path = &paths[(w + k) % paths.len()];
                let seq = k.to_string();
                let hs: &[(&str, &str)] = if producer {
                    &[
                        ("Content-Type", ct),
                        ("Producer-Id", &pid),
                        ("Producer-Epoch", "0"),
                        ("Producer-Seq", &seq),
                    ]
                } else {
                    &[("Content-Type", ct)]
                };
                let (head, _) = conn.request("POST", path, hs, &body).await?;
                let t1 = Instant::now();
                k += 1;
                if t0 >= start && t1 <= end {
                    if (200..300).contains(&head.status) {
                        lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                } else if !(200..300).contains(&head.status) {
                    errors += 1;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((lat, errors))
        }));
    }
    // The load generator's own CPU over the same window: it shares the
    // machine, so throughput follows the sum of both (BENCHMARKS.md).
    let me = std::process::id().to_string();
    tokio::time::sleep_until(start.into()).await;
    let (cpu0, own0) = (pid.as_deref().and_then(cpu_us), cpu_us_one(&me));
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, own1) = (pid.as_deref().and_then(cpu_us), cpu_us_one(&me));
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    println!(
        "RESULT workload={} conns={conns} streams={streams} rps={:.0} p50_ms={:.2} p99_ms={:.2} errors={errors} server_cpu_us_per_req={} load_cpu_us_per_req={} rss_after_create_kib={} load1={}",
        if producer { "producer" } else { "append" },
        lat.len() as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        cpu_per(cpu0, cpu1, lat.len()),
        cpu_per(own0, own1, lat.len()),
        rss.map_or("n/a".into(), |v| v.to_string()),
        uptime_load()
    );
    Ok(())
}

/// Fills one stream with `DS_LOAD_MIB` MiB (1 MiB appends), then reads it
/// front to back from `offset=-1`, following `Stream-Next-Offset` until
/// `Stream-Up-To-Date: true`.
async fn catchup(cfg: Arc<Cfg>) -> Res<()> {
    let mib: usize = env_or("DS_LOAD_MIB", 64);
    let rounds: usize = env_or("DS_LOAD_ROUNDS", 3);
    let mut conn = Conn::connect(cfg.addr()).await?;
    let ct = "application/octet-stream";
    cfg.create(&mut conn, "big", ct).await?;
    let path = cfg.path("big");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..mib {
        let (head, _) = conn
            .request("POST", &path, &[("Content-Type", ct)], &chunk)
            .await?;
        if !(200..300).contains(&head.status) {
            return Err(format!("fill append: {}", head.status).into());
        }
    }
    let mut best = 0f64;
    let mut all = Vec::new();
    let mut requests = 0;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut offset = "-1".to_string();
        let mut total = 0u64;
        requests = 0;
        loop {
            conn.send("GET", &format!("{path}?offset={offset}"), &[], b"")
                .await?;
            let head = conn.read_head().await?;
            if head.status != 200 {
                return Err(format!("catch-up GET: {}", head.status).into());
            }
            total += conn.read_body(&head, None).await?;
            requests += 1;
            let next = head.get("stream-next-offset").unwrap_or("").to_string();
            let done = head
                .get("stream-up-to-date")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if done || next.is_empty() || next == offset {
                break;
            }
            offset = next;
        }
        let el = t0.elapsed().as_secs_f64();
        if total != (mib as u64) << 20 {
            return Err(format!("read {total} bytes, expected {}", (mib as u64) << 20).into());
        }
        let mbps = total as f64 / el / 1e6;
        best = best.max(mbps);
        all.push(format!("{mbps:.0}"));
    }
    println!(
        "RESULT workload=catchup mib={mib} best_mbps={best:.0} rounds_mbps={} requests_per_read={requests} load1={}",
        all.join(","),
        uptime_load()
    );
    Ok(())
}

/// Finds `seq-<n>;` markers in SSE bytes; `carry` keeps a partial marker.
fn scan(carry: &mut Vec<u8>, data: &[u8], mut hit: impl FnMut(usize)) {
    carry.extend_from_slice(data);
    let mut i = 0;
    let mut partial = None;
    while let Some(p) = carry[i..].windows(4).position(|w| w == b"seq-") {
        let s = i + p + 4;
        let mut e = s;
        while e < carry.len() && carry[e].is_ascii_digit() {
            e += 1;
        }
        if e == carry.len() {
            partial = Some(i + p);
            break;
        }
        if carry[e] == b';'
            && let Ok(n) = std::str::from_utf8(&carry[s..e]).unwrap_or("x").parse()
        {
            hit(n);
        }
        i = e;
    }
    // Everything before `i` is scanned; only a marker's first 3 bytes can hide
    // in the tail.
    let keep_from = partial.unwrap_or_else(|| i.max(carry.len().saturating_sub(3)));
    carry.drain(..keep_from);
}

/// Waits until every live reader is connected (or failed, or 30 s passed),
/// then one more second for the server to settle.
async fn wait_ready(ready: &AtomicUsize, failed: &AtomicUsize, subs: usize) {
    let t_connect = Instant::now();
    while ready.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < subs
        && t_connect.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Live readers that saw the last message keep their connections until
/// every reader has (or failed), then all hang up: otherwise the first
/// readers to finish hang up while the others still wait for it, and thousands of
/// hang-ups (the server's work and the load generator's) land on the last
/// message's deliveries, whose median was ~3x the others' for every
/// server (`DS_LOAD_PER_MSG`).
struct Hold {
    done: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

impl Hold {
    fn new() -> Arc<Hold> {
        Arc::new(Hold {
            done: AtomicUsize::new(0),
            release: tokio::sync::watch::channel(false).0,
        })
    }

    /// A reader saw the last message: waits for the others.
    async fn finished(&self) {
        let mut rx = self.release.subscribe();
        self.done.fetch_add(1, Ordering::SeqCst);
        let _ = rx.wait_for(|&r| r).await;
    }

    /// Waits (at most 30 s) until every reader finished or failed, then
    /// lets them all go.
    async fn release(&self, failed: &AtomicUsize, readers: usize) {
        let t = Instant::now();
        while self.done.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < readers
            && t.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.release.send_replace(true);
    }
}

/// When the live workloads' writer sent an append, and when its ack came.
#[derive(Clone, Copy)]
struct Sent {
    at: Instant,
    ack: Instant,
}

/// The live workloads' writer: `msgs` numbered 100-byte appends, `gap`
/// apart; returns when each was sent and acknowledged.
async fn write_live(
    writer: &mut Conn,
    path: &str,
    ct: &str,
    msgs: usize,
    gap: Duration,
    what: &str,
) -> Res<Vec<Sent>> {
    let mut sent = Vec::with_capacity(msgs);
    for k in 0..msgs {
        let body = format!("seq-{k};{}", "x".repeat(90));
        let at = Instant::now();
        let (head, _) = writer
            .request("POST", path, &[("Content-Type", ct)], body.as_bytes())
            .await?;
        sent.push(Sent {
            at,
            ack: Instant::now(),
        });
        if !(200..300).contains(&head.status) {
            return Err(format!("{what} append: {}", head.status).into());
        }
        tokio::time::sleep(gap).await;
    }
    Ok(sent)
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Delivery delays in µs, sorted.
struct Delays {
    /// After each message's ack (0 when the event beat the ack).
    after_ack: Vec<u32>,
    /// How many events beat the ack.
    early: u64,
    /// After the writer sent the append: includes the append itself, so it
    /// compares servers that wake readers before answering the writer with
    /// those that answer first.
    after_send: Vec<u32>,
}

impl Delays {
    fn merge(mut self, other: Delays) -> Delays {
        self.after_ack.extend(other.after_ack);
        self.after_ack.sort_unstable();
        self.after_send.extend(other.after_send);
        self.after_send.sort_unstable();
        self.early += other.early;
        self
    }
}

/// Collects every reader's (message, receipt) pairs into [`Delays`].
async fn delays_after(
    tasks: Vec<tokio::task::JoinHandle<Vec<(usize, Instant)>>>,
    sent: &[Sent],
) -> Res<Delays> {
    let mut d = Delays {
        after_ack: Vec::with_capacity(tasks.len() * sent.len()),
        after_send: Vec::with_capacity(tasks.len() * sent.len()),
        early: 0,
    };
    // `DS_LOAD_PER_MSG=1`: each message's delays after send, apart.
    let mut per = std::env::var_os("DS_LOAD_PER_MSG").map(|_| vec![Vec::new(); sent.len()]);
    for t in tasks {
        for (k, at) in t.await? {
            if let Some(s) = sent.get(k) {
                if let Some(per) = per.as_mut() {
                    per[k].push(micros(at.saturating_duration_since(s.at)));
                }
                match at.checked_duration_since(s.ack) {
                    Some(x) => d.after_ack.push(micros(x)),
                    None => {
                        d.early += 1;
                        d.after_ack.push(0);
                    }
                }
                d.after_send
                    .push(micros(at.saturating_duration_since(s.at)));
            }
        }
    }
    d.after_ack.sort_unstable();
    d.after_send.sort_unstable();
    for (k, mut v) in per.into_iter().flatten().enumerate() {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        println!(
            "DETAIL msg={k} n={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.99),
            v.last().map_or(f64::NAN, |&m| m as f64 / 1000.0)
        );
    }
    Ok(d)
}

/// 1 writer, N SSE subscribers on one `text/plain` stream. Delay = time the
/// subscriber saw message k minus the time the writer got the append's ack
/// (`send_*`: minus the time the writer sent it).
async fn fanout(cfg: Arc<Cfg>) -> Res<()> {
    let subs: usize = env_or("DS_LOAD_SUBS", 1000);
    let msgs: usize = env_or("DS_LOAD_MSGS", 100);
    let gap = Duration::from_millis(env_or("DS_LOAD_GAP_MS", 50));
    let pid = std::env::var("DS_SERVER_PID").ok();
    let ct = "text/plain";
    let mut writer = Conn::connect(cfg.addr()).await?;
    cfg.create(&mut writer, "fan", ct).await?;
    let path = Arc::new(cfg.path("fan"));
    // Let the server settle after creation before the baseline reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = pid.as_deref().and_then(vm_rss_kib);
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let hold = Hold::new();
    let mut tasks = Vec::new();
    for node in 0..subs {
        let (cfg, path, ready, failed) = (cfg.clone(), path.clone(), ready.clone(), failed.clone());
        let hold = hold.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(usize, Instant)> = Vec::with_capacity(msgs);
            let go = async {
                let mut conn = Conn::connect(cfg.addr_for(node)).await?;
                conn.send(
                    "GET",
                    &format!("{path}?offset=now&live=sse"),
                    &[("Accept", "text/event-stream")],
                    b"",
                )
                .await?;
                let head = conn.read_head().await?;
                if head.status != 200 {
                    return Err::<(), Box<dyn std::error::Error + Send + Sync>>(
                        format!("SSE status {}", head.status).into(),
                    );
                }
                ready.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 16 * 1024];
                let mut carry = Vec::new();
                loop {
                    let n = conn.io.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    let now = Instant::now();
                    let mut last = false;
                    scan(&mut carry, &buf[..n], |k| {
                        seen.push((k, now));
                        last |= k + 1 == msgs;
                    });
                    if last {
                        hold.finished().await;
                        return Ok(());
                    }
                }
            };
            let r = tokio::time::timeout(Duration::from_secs(60), go).await;
            if !matches!(r, Ok(Ok(()))) {
                failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(Err(e)) = &r
                    && failed.load(Ordering::SeqCst) == 1
                {
                    eprintln!("subscriber error: {e}");
                }
            }
            seen
        }));
        // Do not overrun the accept backlog.
        if tasks.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_ready(&ready, &failed, subs).await;
    let rss1 = pid.as_deref().and_then(vm_rss_kib);
    let connected = ready.load(Ordering::SeqCst);
    let cpu0 = pid.as_deref().and_then(cpu_us);
    let sent = write_live(&mut writer, &path, ct, msgs, gap, "fan-out").await?;
    hold.release(&failed, subs).await;
    // With several nodes, the subscribers on the writer's node and those on
    // the others (woken through the database) are also reported apart.
    let nodes = cfg.addrs.len();
    let (local, other): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % nodes == 0);
    let local = delays_after(local.into_iter().map(|(_, t)| t).collect(), &sent).await?;
    let other = delays_after(other.into_iter().map(|(_, t)| t).collect(), &sent).await?;
    let split = if nodes > 1 {
        format!(
            " nodes={nodes} writer_node_p50_ms={:.2} writer_node_p99_ms={:.2} other_nodes_p50_ms={:.2} other_nodes_p99_ms={:.2} writer_node_send_p50_ms={:.2} writer_node_send_p99_ms={:.2} other_nodes_send_p50_ms={:.2} other_nodes_send_p99_ms={:.2} other_nodes_delivered={}",
            pct(&local.after_ack, 0.5),
            pct(&local.after_ack, 0.99),
            pct(&other.after_ack, 0.5),
            pct(&other.after_ack, 0.99),
            pct(&local.after_send, 0.5),
            pct(&local.after_send, 0.99),
            pct(&other.after_send, 0.5),
            pct(&other.after_send, 0.99),
            other.after_ack.len()
        )
    } else {
        String::new()
    };
    let cpu1 = pid.as_deref().and_then(cpu_us);
    let d = local.merge(other);
    let (delays, early) = (&d.after_ack, d.early);
    let per_sub = match (rss0, rss1) {
        (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / connected.max(1) as f64),
        _ => "n/a".into(),
    };
    println!(
        "RESULT workload=fanout subs={subs} connected={connected} msgs={msgs} delivered={} expected={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} before_ack={early} rss_before_kib={} rss_after_kib={} rss_per_sub_kib={per_sub} server_cpu_us_per_delivery={} send_p50_ms={:.2} send_p99_ms={:.2}{split} load1={}",
        delays.len(),
        subs * msgs,
        pct(delays, 0.5),
        pct(delays, 0.99),
        delays.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
        rss0.map_or("n/a".into(), |v| v.to_string()),
        rss1.map_or("n/a".into(), |v| v.to_string()),
        cpu_per(cpu0, cpu1, delays.len()),
        pct(&d.after_send, 0.5),
        pct(&d.after_send, 0.99),
        uptime_load()
    );
    Ok(())
}

/// The hot tail: a stream of 7 MiB, then a last 1 MiB append that 64
/// connections (`DS_LOAD_CONNS`) read over and over for `DS_LOAD_SECS`, each
/// GET from the offset where that append starts. Reports the bytes read per
/// second over all readers.
async fn tailread(cfg: Arc<Cfg>) -> Res<()> {
    let conns: usize = env_or("DS_LOAD_CONNS", 64);
    let secs: f64 = env_or("DS_LOAD_SECS", 5.0);
    let mut conn = Conn::connect(cfg.addr()).await?;
    let ct = "application/octet-stream";
    cfg.create(&mut conn, "hot", ct).await?;
    let path = Arc::new(cfg.path("hot"));
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut tail_start = String::new();
    for i in 0..8 {
        let (head, _) = conn
            .request("POST", &path, &[("Content-Type", ct)], &chunk)
            .await?;
        if !(200..300).contains(&head.status) {
            return Err(format!("fill append: {}", head.status).into());
        }
        if i == 6 {
            // Where the last append will start.
            tail_start = head
                .get("stream-next-offset")
                .ok_or("no Stream-Next-Offset")?
                .to_string();
        }
    }
    let url = Arc::new(format!("{path}?offset={tail_start}"));
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (cfg, url) = (cfg.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(cfg.addr_for(c)).await?;
            let mut bytes = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(bytes);
                }
                conn.send("GET", &url, &[], b"").await?;
                let head = conn.read_head().await?;
                if head.status != 200 {
                    return Err(format!("hot-tail GET: {}", head.status).into());
                }
                let n = conn.read_body(&head, None).await?;
                if t0 >= start && Instant::now() <= end {
                    bytes += n;
                }
            }
        }));
    }
    // The server's CPU over the measured window (a figure the machine's
    // noise moves less than the throughput).
    let pid = std::env::var("DS_SERVER_PID").ok();
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = pid.as_deref().and_then(cpu_us);
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = pid.as_deref().and_then(cpu_us);
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    let per_gb = match (cpu0, cpu1) {
        (Some(a), Some(b)) if total > 0 => {
            format!("{:.1}", (b - a) as f64 / 1e3 / (total as f64 / 1e9))
        }
        _ => "n/a".into(),
    };
    println!(
        "RESULT workload=tailread conns={conns} mbps={:.0} server_cpu_ms_per_gb={per_gb} load1={}",
        total as f64 / secs / 1e6,
        uptime_load()
    );
    Ok(())
}

/// 1 writer, N long-pollers on one `text/plain` stream: each polls from
/// `offset=now`, then follows `Stream-Next-Offset`. Delay as in [`fanout`].
/// What the long-pollers saw, gathered over all of them.
#[derive(Default)]
struct PollLog {
    /// Per message delivered: its number, when the poll that brought it
    /// was sent, when it arrived.
    deliveries: Vec<(usize, Instant, Instant)>,
    /// Every poller's turn-arounds (from an answer to its next ask: the
    /// load generator's share of a delay), µs.
    turns: Vec<u32>,
    /// Every poller's count of answered polls (how evenly the server
    /// shares its answers out).
    polls: Vec<u32>,
    /// The time between two answers with messages to one poller, µs: a
    /// message sent in such a gap waits for its end, so the longest gaps
    /// set the p99 (a server that serves pollers unevenly, in short and
    /// long turns, has a p99 above one that serves them in even turns of
    /// the same mean).
    gaps: Vec<u32>,
}

async fn longpoll(cfg: Arc<Cfg>) -> Res<()> {
    let subs: usize = env_or("DS_LOAD_SUBS", 1000);
    let msgs: usize = env_or("DS_LOAD_MSGS", 100);
    let gap = Duration::from_millis(env_or("DS_LOAD_GAP_MS", 50));
    let ct = "text/plain";
    let mut writer = Conn::connect(cfg.addr()).await?;
    cfg.create(&mut writer, "lp", ct).await?;
    let path = Arc::new(cfg.path("lp"));
    let pid = std::env::var("DS_SERVER_PID").ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = pid.as_deref().and_then(vm_rss_kib);
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Long-polls answered, over all pollers.
    let polls = Arc::new(AtomicUsize::new(0));
    let plog = Arc::new(std::sync::Mutex::new(PollLog::default()));
    let hold = Hold::new();
    let mut tasks = Vec::new();
    for i in 0..subs {
        let (cfg, path, ready, failed) = (cfg.clone(), path.clone(), ready.clone(), failed.clone());
        let (polls, plog, hold) = (polls.clone(), plog.clone(), hold.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(usize, Instant)> = Vec::with_capacity(msgs);
            // When the poll that brought each of `seen` was sent.
            let mut asks: Vec<Instant> = Vec::with_capacity(msgs);
            // The poller's own turn-around: from an answer to its next ask
            // (the load generator's share of a delay).
            let mut turns: Vec<u32> = Vec::with_capacity(msgs * 2);
            let mut gaps: Vec<u32> = Vec::with_capacity(msgs);
            let mut last_data: Option<Instant> = None;
            let mut answered: Option<Instant> = None;
            let mut mine = 0u32;
            let go = async {
                let mut conn = Conn::connect(cfg.addr_for(i)).await?;
                // The tail first, so that the polls below start there.
                let (head, _) = conn
                    .request("GET", &format!("{path}?offset=now"), &[], b"")
                    .await?;
                let mut offset = head
                    .get("stream-next-offset")
                    .ok_or("no Stream-Next-Offset")?
                    .to_string();
                ready.fetch_add(1, Ordering::SeqCst);
                let mut carry = Vec::new();
                loop {
                    let asked = Instant::now();
                    if let Some(t) = answered.replace(asked) {
                        turns.push(micros(asked - t));
                    }
                    conn.send(
                        "GET",
                        &format!("{path}?offset={offset}&live=long-poll"),
                        &[],
                        b"",
                    )
                    .await?;
                    let head = conn.read_head().await?;
                    let mut body = Vec::new();
                    conn.read_body(&head, Some(&mut body)).await?;
                    let now = Instant::now();
                    answered = Some(now);
                    polls.fetch_add(1, Ordering::Relaxed);
                    mine += 1;
                    if let Some(next) = head.get("stream-next-offset") {
                        offset = next.to_string();
                    }
                    if head.status == 200 {
                        let mut last = false;
                        scan(&mut carry, &body, |k| {
                            seen.push((k, now));
                            asks.push(asked);
                            last |= k + 1 == msgs;
                        });
                        if let Some(t) = last_data.replace(now) {
                            gaps.push(micros(now - t));
                        }
                        if last {
                            hold.finished().await;
                            return Ok::<(), Box<dyn std::error::Error + Send + Sync>>(());
                        }
                    } else if head.status != 204 {
                        return Err(format!("long-poll status {}", head.status).into());
                    }
                }
            };
            let r = tokio::time::timeout(Duration::from_secs(60), go).await;
            if !matches!(r, Ok(Ok(()))) {
                failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(Err(e)) = &r
                    && failed.load(Ordering::SeqCst) == 1
                {
                    eprintln!("long-poller error: {e}");
                }
            }
            let mut a = plog.lock().unwrap();
            a.deliveries.extend(
                seen.iter()
                    .zip(&asks)
                    .map(|(&(k, got), &asked)| (k, asked, got)),
            );
            a.turns.extend(turns);
            a.gaps.extend(gaps);
            a.polls.push(mine);
            drop(a);
            seen
        }));
        if tasks.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_ready(&ready, &failed, subs).await;
    // Every poller is waiting now (its first long-poll sent a second ago).
    let rss1 = pid.as_deref().and_then(vm_rss_kib);
    let waiting = ready.load(Ordering::SeqCst);
    let per_poller = match (rss0, rss1) {
        (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / waiting.max(1) as f64),
        _ => "n/a".into(),
    };
    let polls0 = polls.load(Ordering::Relaxed);
    let cpu0 = pid.as_deref().and_then(cpu_us);
    let sent = write_live(&mut writer, &path, ct, msgs, gap, "long-poll").await?;
    hold.release(&failed, subs).await;
    let d = delays_after(tasks, &sent).await?;
    let cpu1 = pid.as_deref().and_then(cpu_us);
    let polls = polls.load(Ordering::Relaxed) - polls0;
    let (delays, early) = (&d.after_ack, d.early);
    // A delay from the send, split: until the poller asked (it was busy
    // with its previous answer, or its request waited to be read), and from
    // then (or from the send, for a poll already waiting) to the answer.
    let (mut until_asked, mut to_answer) = (Vec::new(), Vec::new());
    // Deliveries by a poll that was waiting when the writer sent the
    // message, and by one asked after it (its poller's previous poll came
    // back without it): delays from the send, and how many of the first.
    let (mut waited, mut asked_later) = (Vec::new(), Vec::new());
    // For the second: from the ask to the answer.
    let mut later_to_answer = Vec::new();
    let mut plog = std::mem::take(&mut *plog.lock().unwrap());
    for &(k, asked, got) in plog.deliveries.iter() {
        let s = sent[k].at;
        until_asked.push(micros(asked.saturating_duration_since(s)));
        to_answer.push(micros(got.saturating_duration_since(asked.max(s))));
        let d = micros(got.saturating_duration_since(s));
        if asked <= s {
            waited.push(d);
        } else {
            asked_later.push(d);
            later_to_answer.push(micros(got.saturating_duration_since(asked)));
        }
    }
    until_asked.sort_unstable();
    to_answer.sort_unstable();
    waited.sort_unstable();
    asked_later.sort_unstable();
    later_to_answer.sort_unstable();
    let mut acks: Vec<u32> = sent
        .iter()
        .map(|x| micros(x.ack.saturating_duration_since(x.at)))
        .collect();
    acks.sort_unstable();
    plog.turns.sort_unstable();
    plog.polls.sort_unstable();
    plog.gaps.sort_unstable();
    let split = format!(
        "until_asked_p50_ms={:.2} until_asked_p99_ms={:.2} to_answer_p50_ms={:.2} to_answer_p99_ms={:.2} turn_p50_ms={:.2} turn_p99_ms={:.2} waited_share={:.2} waited_p99_ms={:.2} asked_later_p99_ms={:.2} poller_polls_p1={} poller_polls_p50={} poller_polls_p99={} asked_later_to_answer_p50_ms={:.2} asked_later_to_answer_p99_ms={:.2} ack_p50_ms={:.2} ack_max_ms={:.2} gap_p10_ms={:.2} gap_p50_ms={:.2} gap_p90_ms={:.2} gap_p99_ms={:.2}",
        pct(&until_asked, 0.5),
        pct(&until_asked, 0.99),
        pct(&to_answer, 0.5),
        pct(&to_answer, 0.99),
        pct(&plog.turns, 0.5),
        pct(&plog.turns, 0.99),
        waited.len() as f64 / (waited.len() + asked_later.len()).max(1) as f64,
        pct(&waited, 0.99),
        pct(&asked_later, 0.99),
        nth(&plog.polls, 0.01).unwrap_or(0),
        nth(&plog.polls, 0.5).unwrap_or(0),
        nth(&plog.polls, 0.99).unwrap_or(0),
        pct(&later_to_answer, 0.5),
        pct(&later_to_answer, 0.99),
        pct(&acks, 0.5),
        pct(&acks, 1.0),
        pct(&plog.gaps, 0.1),
        pct(&plog.gaps, 0.5),
        pct(&plog.gaps, 0.9),
        pct(&plog.gaps, 0.99),
    );
    // How the writer was paced: it waits for each ack, so a server that
    // acks slowly under load is sent fewer messages per second.
    let span = match (sent.first(), sent.last()) {
        (Some(a), Some(b)) => b.at.duration_since(a.at).as_millis(),
        _ => 0,
    };
    println!(
        "RESULT workload=longpoll subs={subs} waiting={waiting} msgs={msgs} send_span_ms={span} delivered={} expected={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} before_ack={early} rss_per_poller_kib={per_poller} server_cpu_us_per_delivery={} polls={polls} server_cpu_us_per_poll={} send_p50_ms={:.2} send_p99_ms={:.2} {split} load1={}",
        delays.len(),
        subs * msgs,
        pct(delays, 0.5),
        pct(delays, 0.99),
        delays.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
        cpu_per(cpu0, cpu1, delays.len()),
        cpu_per(cpu0, cpu1, polls),
        pct(&d.after_send, 0.5),
        pct(&d.after_send, 0.99),
        uptime_load()
    );
    Ok(())
}

/// RSS of N idle keep-alive connections that each made one POST: the
/// HTTP stack's own cost per connection, to read the SSE figure against.
async fn idle(cfg: Arc<Cfg>) -> Res<()> {
    let n: usize = env_or("DS_LOAD_SUBS", 1000);
    let pid = std::env::var("DS_SERVER_PID").ok();
    let mut setup = Conn::connect(cfg.addr()).await?;
    cfg.create(&mut setup, "idle", "application/octet-stream")
        .await?;
    let path = cfg.path("idle");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = pid.as_deref().and_then(vm_rss_kib);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Conn::connect(cfg.addr_for(i)).await?;
        c.request(
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            b"x",
        )
        .await?;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = pid.as_deref().and_then(vm_rss_kib);
    let per = match (rss0, rss1) {
        (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / n as f64),
        _ => "n/a".into(),
    };
    println!(
        "RESULT workload=idle conns={n} rss_per_conn_kib={per} load1={}",
        uptime_load()
    );
    drop(conns);
    Ok(())
}

/// Creates `DS_LOAD_COUNT` streams over `DS_LOAD_CONNS` connections.
async fn create(cfg: Arc<Cfg>) -> Res<()> {
    let count: usize = env_or("DS_LOAD_COUNT", 100_000);
    let conns: usize = env_or("DS_LOAD_CONNS", 64);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (cfg, next) = (cfg.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(cfg.addr_for(c)).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                }
                cfg.create(&mut conn, &format!("c{i}"), "application/octet-stream")
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "RESULT workload=create count={count} secs={el:.2} creates_per_s={:.0} run={} load1={}",
        count as f64 / el,
        cfg.run,
        uptime_load()
    );
    Ok(())
}

fn main() {
    let Ok(addr) = std::env::var("DS_LOAD_TARGET") else {
        return;
    };
    let run = std::env::var("DS_LOAD_RUN").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("r{}", t.as_millis())
    });
    let cfg = Arc::new(Cfg {
        addrs: addr.split(',').map(str::to_string).collect(),
        prefix: std::env::var("DS_LOAD_PREFIX").unwrap_or_else(|_| "/v1/stream/".into()),
        run,
    });
    let workload = std::env::var("DS_LOAD_WORKLOAD").unwrap_or_else(|_| "append".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(async move {
        match workload.as_str() {
            "append" => append(cfg, false).await,
            "producer" => append(cfg, true).await,
            "catchup" => catchup(cfg).await,
            "fanout" => fanout(cfg).await,
            "longpoll" => longpoll(cfg).await,
            "tailread" => tailread(cfg).await,
            "create" => create(cfg).await,
            "idle" => idle(cfg).await,
            w => Err(format!("unknown workload {w}").into()),
        }
    });
    if let Err(e) = r {
        println!("RESULT error={e:?}");
        std::process::exit(1);
    }
}
