//! The Proxy Protocol engine (no HTTP routing; handlers are in
//! `http::proxy`): upstream requests piped into durable streams.
//!
//! - [`allow`]: the allowlist syntax and matching (pure).
//! - [`sign`]: pre-signed URL signatures (HMAC-SHA256) and their key in the
//!   backend's control space.
//! - [`upstream`]: forwarded headers (pure) and the upstream request.
//! - [`pipe`]: one upstream body into one stream, batched, closed at the end.
//!
//! A proxy stream is an ordinary stream named `__ds/proxy/{id}` (so it is
//! not reachable under `/v1/stream/`, whose `__ds` prefix is reserved),
//! created with the upstream's content type (see [`stream_type`]) and
//! expiring when its URL does. [`Proxy`] keeps the pipes this node runs,
//! by id, so an abort or delete reaching this node stops its pipe after a
//! flush; one reaching another node (postgres) closes the stream, and the
//! pipe stops at its next write.

pub mod allow;
pub mod pipe;
pub mod sign;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::storage::handle::StorageHandle;
use crate::subscriptions::delivery::HttpTransport;

/// Where proxy streams are named: this prefix and the id.
pub const PREFIX: &str = "__ds/proxy/";

/// The stream behind proxy stream `id`.
pub fn stream_name(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// A fresh stream id: a random (version 4) UUID.
pub fn new_id() -> String {
    let mut b = rand::random::<[u8; 16]>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// True when `id` has the shape [`new_id`] gives (anything else cannot
/// name a proxy stream).
pub fn valid_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Parameter carrying the upstream's type (see [`stream_type`]).
const UPSTREAM_PARAM: &str = "; upstream=";
/// The stored type of upstream types that cannot be the stream's own.
const STORED_AS: &str = "text/plain";

/// The content type a proxy stream is created with for an upstream
/// response's `Content-Type`: the same, except for two types that would
/// change how the stream itself is read: a JSON type (a JSON stream frames
/// every append as JSON values, which chunks of a body are not) and
/// `text/event-stream` (clients take a read answered with it for the
/// live SSE transport). Those are stored as `text/plain; upstream=<type>`,
/// the type percent-encoded (so the stored type never contains the words
/// clients look for, nor quotes or separators). No or an unusable type:
/// `application/octet-stream`.
pub fn stream_type(upstream: Option<&str>) -> String {
    let Some(t) = upstream.map(str::trim).filter(|t| {
        !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| (0x20..0x7f).contains(&b))
    }) else {
        return "application/octet-stream".into();
    };
    let essence = crate::storage::model::essence(t);
    if essence == "application/json" || essence == "text/event-stream" {
        format!("{STORED_AS}{UPSTREAM_PARAM}{}", percent_encode(t))
    } else {
        t.to_string()
    }
}

/// The upstream's content type, back from a stream's (see [`stream_type`]).
pub fn upstream_type(stream: &str) -> String {
    match stream.split_once(UPSTREAM_PARAM) {
        Some((STORED_AS, t)) => percent_decode(t).unwrap_or_else(|| stream.to_string()),
        _ => stream.to_string(),
    }
}

/// Every byte but `A-Z a-z 0-9 . + - _` as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b".+-_".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// One pipe this node runs.
struct Running {
    abort: CancellationToken,
    /// Cancelled when the pipe has written its last bytes.
    done: CancellationToken,
}

/// The proxy engine: configuration, allowlist, upstream client, URL key,
/// and the pipes this node runs.
pub struct Proxy {
    pub config: ProxyConfig,
    patterns: Vec<allow::Pattern>,
    pub transport: HttpTransport,
    key: tokio::sync::OnceCell<sign::UrlKey>,
    /// Held only to insert, remove or look up one entry, never across an
    /// await: a std mutex is right.
    running: Mutex<HashMap<String, Running>>,
}

impl Proxy {
    /// The engine for `config`; entries of the allowlist that do not parse
    /// (the configuration refuses them) are left out.
    pub fn new(config: ProxyConfig, transport: HttpTransport) -> Self {
        let patterns = config
            .allowlist
            .iter()
            .filter_map(|e| allow::Pattern::parse(e).ok())
            .collect();
        Proxy {
            config,
            patterns,
            transport,
            key: tokio::sync::OnceCell::new(),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// True when the allowlist allows `target`.
    pub fn allows(&self, target: &crate::subscriptions::ssrf::Target) -> bool {
        allow::allowed(
            &self.patterns,
            &allow::UrlParts {
                https: target.https,
                host: &target.host,
                port: target.port,
                path: &target.path,
            },
        )
    }

    /// The URL signing key, loaded (or created) on first use.
    pub async fn key(
        &self,
        storage: &StorageHandle,
    ) -> Result<&sign::UrlKey, crate::storage::StorageError> {
        self.key
            .get_or_try_init(|| storage.run(sign::load_or_create))
            .await
    }

    /// Runs `pipe` for stream `id` in the background.
    pub fn spawn(self: &Arc<Self>, id: String, pipe: pipe::Pipe, body: hyper::body::Incoming) {
        let done = CancellationToken::new();
        self.lock().insert(
            id.clone(),
            Running {
                abort: pipe.abort.clone(),
                done: done.clone(),
            },
        );
        let metrics = Arc::clone(&pipe.metrics);
        metrics.proxy.pipe_started();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let end = pipe.run(body).await;
            tracing::debug!(id, ?end, "proxy pipe ended");
            this.lock().remove(&id);
            metrics.proxy.pipe_ended();
            done.cancel();
        });
    }

    /// Stops this node's pipe for `id`, if it runs one, and waits until it
    /// has flushed. False when this node runs no pipe for `id`.
    pub async fn abort(&self, id: &str) -> bool {
        let Some((abort, done)) = self
            .lock()
            .get(id)
            .map(|r| (r.abort.clone(), r.done.clone()))
        else {
            return false;
        };
        abort.cancel();
        done.cancelled().await;
        true
    }

    /// Waits for every pipe running now to end (on shutdown they flush,
    /// close their streams and end by themselves).
    pub async fn drain(&self) {
        let done: Vec<CancellationToken> = self.lock().values().map(|r| r.done.clone()).collect();
        for d in done {
            d.cancelled().await;
        }
    }

    /// Pipes this node runs now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        // A panic while holding it cannot leave the map inconsistent.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(new_id(), id);
        for bad in ["", "x", "../../a", &id.to_uppercase(), &format!("{id}0")] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn content_types_round_trip() {
        let sse = stream_type(Some("text/event-stream; charset=utf-8"));
        assert_eq!(
            sse,
            "text/plain; upstream=text%2Fevent-stream%3B%20charset%3Dutf-8"
        );
        assert!(!sse.contains("text/event-stream"));
        assert_eq!(upstream_type(&sse), "text/event-stream; charset=utf-8");
        let json = stream_type(Some("application/json"));
        assert!(!crate::storage::model::is_json(&json));
        assert_eq!(upstream_type(&json), "application/json");
        let ndjson = stream_type(Some("application/x-ndjson"));
        assert_eq!(ndjson, "application/x-ndjson");
        assert_eq!(upstream_type(&ndjson), ndjson);
        assert_eq!(stream_type(None), "application/octet-stream");
        assert_eq!(
            stream_type(Some("bad\u{1}type")),
            "application/octet-stream"
        );
    }
}
