//! Per-client rate limits (`[rate_limit]`): a token bucket of
//! `requests_per_second` refilling up to `burst` per key, and a cap on the
//! live reads (long-polls, SSE) a key holds open. Over either: `429` with
//! `Retry-After`, counted in `ds_rate_limited_total`.
//!
//! The key is the credential's (a JWT's `sub`, a digest of a static token)
//! or else the client's address: the peer's, or, when the peer is one of
//! `trusted_proxies`, the rightmost `X-Forwarded-For` entry that is not
//! itself a trusted proxy (entries further left are the client's own
//! claims and could be forged).
//!
//! The table is bounded: at most `max_keys` keys over 16 shards. A key
//! whose bucket has refilled and that holds no live read is idle (removing
//! it changes no answer) and goes first; when a shard is full of busy
//! keys, the least recently seen of them are dropped (forgetting a bucket
//! only ever lets a client through earlier). Each shard is a `parking_lot`
//! mutex held for a hash lookup and a few float operations, never across
//! an await.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use parking_lot::Mutex;

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use crate::config::RateLimitConfig;
use crate::metrics::{Limited, Metrics};

const SHARDS: usize = 16;

/// The client's socket address, set on each request by the connection
/// that read it (only while rate limits are on).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

struct Entry {
    /// Requests the bucket holds now (refilled lazily).
    tokens: f64,
    last: Instant,
    /// Live reads open now.
    live: usize,
}

/// The limiter; shared by every connection.
pub struct Limiter {
    rate: f64,
    burst: f64,
    max_live: usize,
    per_shard: usize,
    trusted: Vec<crate::config::Cidr>,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    metrics: Arc<Metrics>,
}

/// Holds one live-read slot of a key until dropped (with the response
/// body, when the subscriber leaves).
pub struct LiveSlot {
    limiter: Arc<Limiter>,
    key: String,
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut shard = self.limiter.shard(&self.key).lock();
        if let Some(e) = shard.get_mut(&self.key) {
            e.live = e.live.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// The limiter `c` describes, or `None` when no limit is set.
    pub fn new(c: &RateLimitConfig, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if !c.enabled() {
            return None;
        }
        Some(Arc::new(Limiter {
            rate: c.requests_per_second as f64,
            burst: c.burst.max(1) as f64,
            max_live: c.max_live_readers,
            per_shard: c.max_keys.div_ceil(SHARDS).max(1),
            trusted: c.trusted_proxies.clone(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics,
        }))
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[i]
    }

    /// The key of a request: the credential's, else the client address.
    pub fn key(&self, credential: Option<&str>, peer: Option<SocketAddr>, h: &HeaderMap) -> String {
        if let Some(k) = credential {
            return k.to_string();
        }
        match self.client_ip(peer.map(|p| p.ip()), h) {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_string(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address (see the module doc).
    fn client_ip(&self, peer: Option<IpAddr>, h: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = h
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage from here on left: trust what we have.
                break;
            };
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        Some(client)
    }

    /// Admits one request of `key` at `now`, or refuses it with a `429`.
    /// A live read also takes a slot, held until the [`LiveSlot`] drops.
    pub fn admit(
        self: &Arc<Self>,
        key: String,
        live: bool,
        now: Instant,
    ) -> Result<Option<LiveSlot>, ApiError> {
        let mut shard = self.shard(&key).lock();
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            self.evict(&mut shard, now);
        }
        let e = shard.entry(key.clone()).or_insert(Entry {
            tokens: self.burst,
            last: now,
            live: 0,
        });
        if self.rate > 0.0 {
            let elapsed = now.saturating_duration_since(e.last).as_secs_f64();
            e.tokens = (e.tokens + elapsed * self.rate).min(self.burst);
            e.last = now;
            if e.tokens < 1.0 {
                let wait = ((1.0 - e.tokens) / self.rate).ceil().max(1.0) as u64;
                drop(shard);
                self.metrics.limited(Limited::Requests);
                return Err(too_many(
                    "RATE_LIMITED",
                    "too many requests; slow down and retry after Retry-After seconds",
                    wait,
                ));
            }
            e.tokens -= 1.0;
        } else {
            e.last = now;
        }
        if !live || self.max_live == 0 {
            return Ok(None);
        }
        if e.live >= self.max_live {
            drop(shard);
            self.metrics.limited(Limited::LiveReaders);
            return Err(too_many(
                "TOO_MANY_LIVE_READERS",
                "this client holds the most live reads (long-polls, SSE) it may; close one first",
                1,
            ));
        }
        e.live += 1;
        drop(shard);
        Ok(Some(LiveSlot {
            limiter: Arc::clone(self),
            key,
        }))
    }

    /// Makes room in a full shard: idle keys go; if none is idle, the
    /// least recently seen eighth of those without live reads.
    fn evict(&self, shard: &mut HashMap<String, Entry>, now: Instant) {
        let full = |e: &Entry| {
            self.rate == 0.0
                || e.tokens + now.saturating_duration_since(e.last).as_secs_f64() * self.rate
                    >= self.burst
        };
        shard.retain(|_, e| e.live > 0 || !full(e));
        if shard.len() < self.per_shard {
            return;
        }
        let mut seen: Vec<Instant> = shard
            .values()
            .filter(|e| e.live == 0)
            .map(|e| e.last)
            .collect();
        if seen.is_empty() {
            // Every key holds live reads, bounded by open connections.
            return;
        }
        let n = (seen.len() / 8).max(1) - 1;
        let (_, cut, _) = seen.select_nth_unstable(n);
        let cut = *cut;
        shard.retain(|_, e| e.live > 0 || e.last > cut);
    }

    /// Keys remembered now (for tests).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port
/// (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

fn too_many(code: &'static str, detail: &str, retry_after: u64) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, detail)
        .with_header(header::RETRY_AFTER, retry_after)
}

/// True when a request's query asks for a live read.
pub fn is_live(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "live=sse" || p == "live=long-poll")
    })
}

/// Admits `req` (let through as `access`) under the server's limits; the
/// slot a live read takes must be kept with its response ([`hold`]).
/// Probes are never limited.
pub fn gate(
    state: &AppState,
    access: &Access,
    req: &Request,
) -> Result<Option<LiveSlot>, ApiError> {
    let Some(limiter) = &state.limiter else {
        return Ok(None);
    };
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return Ok(None);
    }
    let peer = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let key = limiter.key(access.key.as_deref(), peer, req.headers());
    limiter.admit(key, is_live(req.uri().query()), Instant::now())
}

/// `res` with `slot` kept until its body is done or dropped.
pub fn hold(res: Response, slot: Option<LiveSlot>) -> Response {
    let Some(slot) = slot else {
        return res;
    };
    res.map(|body| {
        Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
            let _held = &slot;
            f
        }))
    })
}

#[cfg(test)]
#[path = "limit_tests.rs"]
mod tests;
