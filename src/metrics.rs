//! Process-wide counters, gauges and one histogram, rendered in the
//! Prometheus text format (served at `/metrics` by the HTTP layer).
//!
//! The hot path touches only atomics: every labelled series is a slot in a
//! fixed array indexed by small enums (method × route × status code), so a
//! request never takes a lock or allocates to be counted. Rendering walks
//! the arrays and prints the non-zero series.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub mod proxy;

/// Request methods, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Other,
}

impl Method {
    const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Put,
        Method::Post,
        Method::Delete,
        Method::Options,
        Method::Other,
    ];

    pub fn of(m: &axum::http::Method) -> Self {
        match m.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// What a request addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Anything under the stream mount.
    Stream,
    /// `/healthz` and `/readyz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/v1/proxy` and below.
    Proxy,
    Other,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Stream,
        Route::Health,
        Route::Metrics,
        Route::Proxy,
        Route::Other,
    ];

    pub fn of(path: &str) -> Self {
        if path.starts_with(crate::MOUNT) {
            Route::Stream
        } else if path == "/healthz" || path == "/readyz" {
            Route::Health
        } else if path == "/metrics" {
            Route::Metrics
        } else if path == "/v1/proxy" || path.starts_with("/v1/proxy/") {
            Route::Proxy
        } else {
            Route::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Stream => "stream",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Proxy => "proxy",
            Route::Other => "other",
        }
    }
}

/// Live connections, counted while they are open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    LongPoll,
    Sse,
}

/// Storage writes whose latency is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Create,
    Append,
}

impl WriteOp {
    const ALL: [WriteOp; 2] = [WriteOp::Create, WriteOp::Append];

    fn label(self) -> &'static str {
        match self {
            WriteOp::Create => "create",
            WriteOp::Append => "append",
        }
    }
}

/// Why a request was refused with `429`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// Over `requests_per_second` / `burst`.
    Requests,
    /// Over `max_live_readers`.
    LiveReaders,
}

impl Limited {
    const ALL: [Limited; 2] = [Limited::Requests, Limited::LiveReaders];

    fn label(self) -> &'static str {
        match self {
            Limited::Requests => "requests",
            Limited::LiveReaders => "live_readers",
        }
    }
}

/// Status codes 100..=599 each get a slot.
const STATUSES: usize = 500;
const REQUEST_SLOTS: usize = Method::ALL.len() * Route::ALL.len() * STATUSES;

/// Upper bounds (seconds) of the write-latency buckets; `+Inf` is implied.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Error codes counted by `ds_storage_errors_total`: the stable codes
/// the HTTP layer's error mapping gives storage errors. Anything else is
/// counted as `OTHER`.
const ERROR_CODES: &[&str] = &[
    "STREAM_NOT_FOUND",
    "STREAM_GONE",
    "CONFIG_MISMATCH",
    "PATH_RESERVED",
    "STREAM_CLOSED",
    "CONTENT_TYPE_MISMATCH",
    "MISSING_CONTENT_TYPE",
    "SEQUENCE_CONFLICT",
    "STALE_PRODUCER_EPOCH",
    "INVALID_PRODUCER_SEQ",
    "PRODUCER_SEQ_GAP",
    "EMPTY_BODY",
    "INVALID_JSON",
    "EMPTY_JSON_ARRAY",
    "FORK_SOURCE_NOT_FOUND",
    "FORK_SOURCE_GONE",
    "FORK_OFFSET_BEYOND_TAIL",
    "INVALID_OFFSET",
    "INVALID_SUB_OFFSET",
    "PAYLOAD_TOO_LARGE",
    "INSUFFICIENT_STORAGE",
    "STORAGE_UNAVAILABLE",
    "INTERNAL_ERROR",
    "OTHER",
];

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// A latency histogram with fixed buckets.
struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// The server's metrics; one per server, shared by every request.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    appended_bytes: AtomicU64,
    appended_messages: AtomicU64,
    long_polls: AtomicU64,
    sse: AtomicU64,
    /// Live readers parked now (`http::park`), of those counted above.
    pub parked: AtomicU64,
    /// Keep-alive connections waiting in the parking for a long-poller's
    /// next request (`http::park`, answered members).
    pub between_polls: AtomicU64,
    storage_errors: Box<[AtomicU64]>,
    writes: [Histogram; WriteOp::ALL.len()],
    limited: [AtomicU64; Limited::ALL.len()],
    /// The proxy's pipes and upstream failures.
    pub proxy: proxy::ProxyMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: counters(REQUEST_SLOTS),
            appended_bytes: AtomicU64::new(0),
            appended_messages: AtomicU64::new(0),
            long_polls: AtomicU64::new(0),
            sse: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            between_polls: AtomicU64::new(0),
            storage_errors: counters(ERROR_CODES.len()),
            writes: std::array::from_fn(|_| Histogram::new()),
            limited: std::array::from_fn(|_| AtomicU64::new(0)),
            proxy: proxy::ProxyMetrics::default(),
        }
    }
}

fn request_slot(m: Method, r: Route, status: u16) -> usize {
    let s = usize::from(status.clamp(100, 599) - 100);
    ((m as usize) * Route::ALL.len() + r as usize) * STATUSES + s
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one answered request.
    pub fn request(&self, m: Method, r: Route, status: u16) {
        self.requests[request_slot(m, r, status)].fetch_add(1, Relaxed);
    }

    /// Counts data committed by an append (`messages` records).
    pub fn appended(&self, bytes: u64, messages: u64) {
        self.appended_bytes.fetch_add(bytes, Relaxed);
        self.appended_messages.fetch_add(messages, Relaxed);
    }

    /// Counts a storage call that failed, by the error's stable code.
    pub fn storage_error(&self, code: &str) {
        let i = ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(ERROR_CODES.len() - 1);
        self.storage_errors[i].fetch_add(1, Relaxed);
    }

    /// Counts a request refused by the rate limits.
    pub fn limited(&self, why: Limited) {
        self.limited[why as usize].fetch_add(1, Relaxed);
    }

    /// Records how long a storage write took.
    pub fn write_latency(&self, op: WriteOp, d: Duration) {
        self.writes[op as usize].observe(d);
    }

    /// Counts a live connection until the guard drops, which also happens
    /// when the client goes away and its request future is dropped.
    pub fn live(self: &Arc<Self>, kind: Live) -> LiveGuard {
        self.gauge(kind).fetch_add(1, Relaxed);
        LiveGuard {
            metrics: Arc::clone(self),
            kind,
        }
    }

    fn gauge(&self, kind: Live) -> &AtomicU64 {
        match kind {
            Live::LongPoll => &self.long_polls,
            Live::Sse => &self.sse,
        }
    }

    /// Open live connections of one kind.
    pub fn live_count(&self, kind: Live) -> u64 {
        self.gauge(kind).load(Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4). `streams` is the
    /// backend's stream count, when it has one.
    pub fn render(&self, streams: Option<u64>, gauges: &[crate::storage::Gauge]) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP ds_http_requests_total HTTP requests answered, by method, route kind and status.\n");
        o.push_str("# TYPE ds_http_requests_total counter\n");
        for m in Method::ALL {
            for r in Route::ALL {
                for s in 100..600u16 {
                    let n = self.requests[request_slot(m, r, s)].load(Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            o,
                            "ds_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{s}\"}} {n}",
                            m.label(),
                            r.label()
                        );
                    }
                }
            }
        }
        let simple = [
            (
                "ds_appended_bytes_total",
                "counter",
                "Request body bytes committed by appends.",
                self.appended_bytes.load(Relaxed),
            ),
            (
                "ds_appended_messages_total",
                "counter",
                "Messages committed by appends (JSON array elements count one each).",
                self.appended_messages.load(Relaxed),
            ),
            (
                "ds_active_long_polls",
                "gauge",
                "Long-poll requests waiting now.",
                self.long_polls.load(Relaxed),
            ),
            (
                "ds_active_sse_connections",
                "gauge",
                "Server-Sent Events connections open now.",
                self.sse.load(Relaxed),
            ),
            (
                "ds_parked_live_readers",
                "gauge",
                "Long-polls and SSE connections (counted above) waiting parked, without a task.",
                self.parked.load(Relaxed),
            ),
            (
                "ds_long_poll_connections_between_polls",
                "gauge",
                "Keep-alive connections of answered long-pollers waiting parked for their next request.",
                self.between_polls.load(Relaxed),
            ),
            (
                "ds_response_bytes_by_reference_total",
                "counter",
                "Response bytes the kernel sent from the data files' pages without a copy (vmsplice/splice).",
                crate::zerocopy::sent(),
            ),
        ];
        for (name, kind, help, v) in simple {
            let _ = write!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        }
        for g in gauges {
            let (name, help, v) = (g.name, g.help, g.value);
            let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        }
        if let Some(n) = streams {
            let _ = write!(
                o,
                "# HELP ds_streams Streams held by the backend.\n# TYPE ds_streams gauge\nds_streams {n}\n"
            );
        }
        o.push_str("# HELP ds_rate_limited_total Requests refused with 429, by limit.\n");
        o.push_str("# TYPE ds_rate_limited_total counter\n");
        for why in Limited::ALL {
            let n = self.limited[why as usize].load(Relaxed);
            let _ = writeln!(o, "ds_rate_limited_total{{limit=\"{}\"}} {n}", why.label());
        }
        o.push_str("# HELP ds_storage_errors_total Storage calls that failed, by error code.\n");
        o.push_str("# TYPE ds_storage_errors_total counter\n");
        for (i, code) in ERROR_CODES.iter().enumerate() {
            let n = self.storage_errors[i].load(Relaxed);
            if n > 0 {
                let _ = writeln!(o, "ds_storage_errors_total{{code=\"{code}\"}} {n}");
            }
        }
        o.push_str("# HELP ds_storage_write_seconds Latency of storage writes (create, append).\n");
        o.push_str("# TYPE ds_storage_write_seconds histogram\n");
        for op in WriteOp::ALL {
            let h = &self.writes[op as usize];
            let label = op.label();
            let mut cumulative = 0;
            for (i, b) in h.buckets.iter().enumerate() {
                cumulative += b.load(Relaxed);
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), f64::to_string);
                let _ = writeln!(
                    o,
                    "ds_storage_write_seconds_bucket{{op=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(o, "ds_storage_write_seconds_sum{{op=\"{label}\"}} {sum}");
            let _ = writeln!(
                o,
                "ds_storage_write_seconds_count{{op=\"{label}\"}} {cumulative}"
            );
        }
        self.proxy.render(&mut o);
        o
    }
}

/// Keeps a live connection counted; decrements on drop.
pub struct LiveGuard {
    metrics: Arc<Metrics>,
    kind: Live,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.metrics.gauge(self.kind).fetch_sub(1, Relaxed);
    }
}

/// Counts the messages in an accepted JSON append body: the elements of a
/// top-level array, or one for any other value. One pass, no allocation;
/// the body was already validated by storage.
pub fn json_messages(body: &[u8]) -> u64 {
    let mut iter = body.iter().copied().skip_while(u8::is_ascii_whitespace);
    if iter.next() != Some(b'[') {
        return 1;
    }
    let (mut depth, mut in_str, mut escaped) = (0u32, false, false);
    let (mut count, mut seen_value) = (0u64, false);
    for b in iter {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                seen_value = true;
            }
            b'[' | b'{' => {
                depth += 1;
                seen_value = true;
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            b']' => break,
            b',' if depth == 0 => count += 1,
            b if !b.is_ascii_whitespace() => seen_value = true,
            _ => {}
        }
    }
    if seen_value { count + 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_json_messages() {
        assert_eq!(json_messages(br#"{"a":[1,2]}"#), 1);
        assert_eq!(json_messages(b"  [1, 2 ,3]"), 3);
        assert_eq!(json_messages(br#"[{"a":",]"},["x","y"],"q\"],"]"#), 3);
        assert_eq!(json_messages(b"[]"), 0);
        assert_eq!(json_messages(b"\"s\""), 1);
    }

    #[test]
    fn renders_counted_series() {
        let m = Metrics::new();
        m.request(Method::Get, Route::Stream, 200);
        m.request(Method::Get, Route::Stream, 200);
        m.request(Method::Post, Route::Other, 404);
        m.storage_error("STREAM_NOT_FOUND");
        m.storage_error("SOMETHING_NEW");
        m.write_latency(WriteOp::Append, Duration::from_millis(3));
        {
            let _g = m.live(Live::Sse);
            assert_eq!(m.live_count(Live::Sse), 1);
        }
        assert_eq!(m.live_count(Live::Sse), 0);
        let gauge = crate::storage::Gauge {
            name: "ds_test_gauge",
            help: "A backend's gauge.",
            value: 42,
        };
        let text = m.render(Some(7), &[gauge]);
        assert!(text.contains("# TYPE ds_test_gauge gauge\nds_test_gauge 42\n"));
        for line in [
            "ds_http_requests_total{method=\"GET\",route=\"stream\",status=\"200\"} 2",
            "ds_http_requests_total{method=\"POST\",route=\"other\",status=\"404\"} 1",
            "ds_storage_errors_total{code=\"STREAM_NOT_FOUND\"} 1",
            "ds_storage_errors_total{code=\"OTHER\"} 1",
            "ds_storage_write_seconds_bucket{op=\"append\",le=\"0.0025\"} 0",
            "ds_storage_write_seconds_bucket{op=\"append\",le=\"0.005\"} 1",
            "ds_storage_write_seconds_bucket{op=\"append\",le=\"+Inf\"} 1",
            "ds_storage_write_seconds_count{op=\"append\"} 1",
            "ds_active_sse_connections 0",
            "ds_streams 7",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
