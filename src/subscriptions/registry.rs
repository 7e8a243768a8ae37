//! Subscription state and the in-memory registry that holds it.
//!
//! The registry is the working copy; [`super::store`] writes each changed
//! subscription through to the backend's control space. Every mutation goes
//! through [`Registry::update`], which stamps the subscription with a new
//! version (so the store knows what it has written) and keeps the lookup
//! index in step with the links.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::glob;
use super::index::Index;
use crate::offset::Offset;

/// Delivery mechanism and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    Webhook { url: String },
    PullWake { wake_stream: String },
}

/// A subscription's normalized configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub delivery: Delivery,
    pub pattern: Option<String>,
    /// Sorted, deduplicated.
    pub streams: Vec<String>,
    pub lease_ttl_ms: u64,
    pub description: Option<String>,
}

impl Config {
    /// The hash compared on re-confirmation.
    pub fn hash(&self) -> String {
        let (kind, target) = match &self.delivery {
            Delivery::Webhook { url } => ("webhook", url.as_str()),
            Delivery::PullWake { wake_stream } => ("pull-wake", wake_stream.as_str()),
        };
        let streams = self.streams.join("\n");
        let ttl = self.lease_ttl_ms.to_string();
        glob::config_hash(&[
            ("type", Some(kind)),
            ("pattern", self.pattern.as_deref()),
            ("streams", Some(&streams)),
            ("delivery", Some(target)),
            ("lease_ttl_ms", Some(&ttl)),
            ("description", self.description.as_deref()),
        ])
    }

    pub fn matches(&self, path: &str) -> bool {
        self.pattern
            .as_deref()
            .is_some_and(|p| glob::matches(p, path))
    }
}

/// One stream's cursor within a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub explicit: bool,
    pub glob: bool,
    /// Last processed offset, inclusive (the cursor).
    pub acked: Offset,
    /// The stream's tail as last seen (a hint, re-read from storage).
    pub tail: Offset,
    /// The stream incarnation (`StreamInfo::id`) the offsets belong to; a
    /// stream deleted and created again starts over at offset zero. 0 when
    /// the stream did not exist yet.
    #[serde(default)]
    pub incarnation: u64,
}

impl Link {
    pub fn new(explicit: bool, at: Offset, incarnation: u64) -> Self {
        Link {
            explicit,
            glob: !explicit,
            acked: at,
            tail: at,
            incarnation,
        }
    }

    pub fn pending(&self) -> bool {
        self.tail != self.acked
    }
}

/// An outstanding wake: what was announced, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeState {
    pub wake_id: String,
    pub generation: u64,
    /// The tails announced, acked as a whole by a webhook's `{"done": true}`.
    pub snapshot: Vec<(String, Offset)>,
    /// The pull-wake worker holding the claim.
    pub holder: Option<String>,
    /// Wall-clock ms ([`super::clock::Clock`]) when the lease lapses.
    pub lease_until: u64,
}

/// A webhook retry schedule, kept until a delivery succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Failed attempts so far for the current wake (≥ 1).
    pub failures: u32,
    /// Wall-clock ms of the next attempt.
    pub next_attempt_at: u64,
}

/// A subscription and its cursors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sub {
    pub id: String,
    pub config: Config,
    pub hash: String,
    pub created_at: String,
    /// A tombstone: callbacks and acks fail, the id may be created again.
    pub deleted: bool,
    /// `http://host/v1/stream/` as seen when the subscription was created.
    pub base_url: String,
    links: BTreeMap<String, Link>,
    pub generation: u64,
    pub wake: Option<WakeState>,
    /// Set while a failed webhook delivery waits for its retry.
    pub retry: Option<Retry>,
    /// Stamped by [`Registry::update`]; orders writes to the store.
    #[serde(skip)]
    pub version: u64,
    /// Links added (`true`) or removed since the index last saw them.
    #[serde(skip)]
    index_delta: Vec<(String, bool)>,
}

impl Sub {
    pub fn new(
        id: String,
        config: Config,
        created_at: String,
        base_url: String,
        links: BTreeMap<String, Link>,
    ) -> Self {
        Sub {
            id,
            hash: config.hash(),
            config,
            created_at,
            deleted: false,
            base_url,
            links,
            generation: 0,
            wake: None,
            retry: None,
            version: 0,
            index_delta: Vec::new(),
        }
    }

    pub fn links(&self) -> &BTreeMap<String, Link> {
        &self.links
    }

    pub fn link_mut(&mut self, path: &str) -> Option<&mut Link> {
        self.links.get_mut(path)
    }

    /// Adds a link unless one exists; returns the (possibly existing) link.
    pub fn link(&mut self, path: &str, new: Link) -> &mut Link {
        if !self.links.contains_key(path) {
            self.index_delta.push((path.to_string(), true));
        }
        self.links.entry(path.to_string()).or_insert(new)
    }

    pub fn unlink(&mut self, path: &str) -> Option<Link> {
        let l = self.links.remove(path)?;
        self.index_delta.push((path.to_string(), false));
        Some(l)
    }

    pub fn pending(&self) -> bool {
        self.links.values().any(Link::pending)
    }

    pub fn lease_ms(&self) -> u64 {
        self.config.lease_ttl_ms
    }

    /// Starts a new wake generation over the current tails.
    pub fn begin_wake(&mut self, holder: Option<String>, now_ms: u64) -> WakeState {
        self.generation += 1;
        let w = WakeState {
            wake_id: format!("w_{:016x}", rand::random::<u64>()),
            generation: self.generation,
            snapshot: self
                .links
                .iter()
                .map(|(p, l)| (p.clone(), l.tail))
                .collect(),
            holder,
            lease_until: now_ms + self.lease_ms(),
        };
        self.wake = Some(w.clone());
        self.retry = None;
        w
    }

    /// True when `wake_id` and `generation` name the outstanding wake.
    pub fn is_current(&self, wake_id: &str, generation: u64) -> bool {
        self.wake
            .as_ref()
            .is_some_and(|w| w.wake_id == wake_id && w.generation == generation)
    }

    /// The `streams` array of a claim, at the current tails.
    pub fn wake_streams(&self) -> Value {
        let tails: Vec<(String, Offset)> = self
            .links
            .iter()
            .map(|(p, l)| (p.clone(), l.tail))
            .collect();
        self.streams_at(&tails)
    }

    /// The `streams` array of a wake notification announcing `snapshot`.
    pub fn streams_at(&self, snapshot: &[(String, Offset)]) -> Value {
        Value::Array(
            snapshot
                .iter()
                .filter_map(|(p, tail)| {
                    let l = self.links.get(p)?;
                    Some(json!({
                        "path": p,
                        "link_type": if l.explicit { "explicit" } else { "glob" },
                        "tail_offset": tail.to_string(),
                        "acked_offset": l.acked.to_string(),
                        "has_pending": *tail != l.acked,
                    }))
                })
                .collect(),
        )
    }

    /// The GET representation.
    pub fn to_json(&self, kid: &str) -> Value {
        let streams: Vec<Value> = self
            .links
            .iter()
            .map(|(p, l)| {
                json!({
                    "path": p,
                    "link_type": if l.explicit { "explicit" } else { "glob" },
                    "acked_offset": l.acked.to_string(),
                })
            })
            .collect();
        let (kind, webhook, wake_stream) = match &self.config.delivery {
            Delivery::Webhook { url } => (
                "webhook",
                json!({
                    "url": url,
                    "signing": {
                        "alg": "ed25519",
                        "kid": kid,
                        "jwks_url": format!("{}__ds/jwks.json", self.base_url),
                    }
                }),
                Value::Null,
            ),
            Delivery::PullWake { wake_stream } => {
                ("pull-wake", Value::Null, Value::String(wake_stream.clone()))
            }
        };
        json!({
            "id": self.id,
            "subscription_id": self.id,
            "type": kind,
            "pattern": self.config.pattern,
            "streams": streams,
            "webhook": webhook,
            "wake_stream": wake_stream,
            "lease_ttl_ms": self.config.lease_ttl_ms,
            "created_at": self.created_at,
            "status": if self.retry.is_some() { "failed" } else { "active" },
            "description": self.config.description,
        })
    }
}

/// Why an ack was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    NotFound,
    Fenced,
}

/// A subscription exists under the id with a different configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigConflict;

#[derive(Default)]
struct Inner {
    subs: HashMap<String, Sub>,
    /// Covers live subscriptions only.
    index: Index,
}

/// The subscriptions of this server, live and tombstoned.
#[derive(Default)]
pub struct Registry {
    // A parking_lot mutex, never held across an await or any I/O.
    inner: Mutex<Inner>,
    /// Source of [`Sub::version`] stamps; never goes back, even when an id
    /// is deleted and created again.
    versions: AtomicU64,
    /// Live (not tombstoned) subscriptions, read without the lock on every
    /// stream change.
    live: AtomicUsize,
}

impl Registry {
    /// How many live subscriptions there are.
    pub fn live_count(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Reads a live subscription.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&Sub) -> R) -> Option<R> {
        let inner = self.inner.lock();
        inner.subs.get(id).filter(|s| !s.deleted).map(f)
    }

    /// Changes a live subscription (stamping a new version).
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut Sub) -> R) -> Option<R> {
        let mut inner = self.inner.lock();
        let Inner { subs, index } = &mut *inner;
        let s = subs.get_mut(id).filter(|s| !s.deleted)?;
        let r = f(s);
        s.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        for (path, added) in s.index_delta.drain(..) {
            if added {
                index.link(path, id);
            } else {
                index.unlink(&path, id);
            }
        }
        Some(r)
    }

    /// The subscription as stored (tombstones included) and its version.
    pub fn snapshot(&self, id: &str) -> Option<Sub> {
        self.inner.lock().subs.get(id).cloned()
    }

    /// Inserts a subscription loaded from the store, as it was.
    /// Replaces every subscription with `subs` (a reload from the store).
    pub fn replace_all(&self, subs: Vec<Sub>) {
        {
            let mut inner = self.inner.lock();
            inner.subs.clear();
            inner.index = Index::default();
            self.live.store(0, Ordering::Relaxed);
        }
        for sub in subs {
            self.load(sub);
        }
    }

    pub fn load(&self, mut sub: Sub) {
        sub.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        sub.index_delta.clear();
        let mut inner = self.inner.lock();
        if let Some(old) = inner.subs.get(&sub.id).filter(|s| !s.deleted).cloned() {
            inner.index.remove_sub(&old);
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        if !sub.deleted {
            inner.index.add_sub(&sub);
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        inner.subs.insert(sub.id.clone(), sub);
    }

    /// Inserts or re-confirms; `Ok(true)` when created.
    pub fn put(&self, mut sub: Sub) -> Result<bool, ConfigConflict> {
        let mut inner = self.inner.lock();
        match inner.subs.get(&sub.id) {
            Some(old) if !old.deleted => {
                if old.hash == sub.hash {
                    Ok(false)
                } else {
                    Err(ConfigConflict)
                }
            }
            _ => {
                sub.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                sub.index_delta.clear();
                inner.index.add_sub(&sub);
                inner.subs.insert(sub.id.clone(), sub);
                self.live.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// Tombstones; true if it existed.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.inner.lock();
        let Inner { subs, index } = &mut *inner;
        let Some(s) = subs.get_mut(id).filter(|s| !s.deleted) else {
            return false;
        };
        index.remove_sub(s);
        s.deleted = true;
        s.wake = None;
        s.retry = None;
        s.links.clear();
        s.index_delta.clear();
        s.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Whether any live subscription links or matches `path`: the cheap
    /// check made on the backend's commit path.
    pub fn any_interested(&self, path: &str) -> bool {
        self.live_count() > 0 && self.inner.lock().index.any(path)
    }

    /// Ids of live subscriptions that link or match `path`.
    pub fn interested(&self, path: &str) -> Vec<String> {
        self.inner.lock().index.interested(path)
    }

    /// Every id, tombstones included.
    pub fn ids(&self) -> Vec<String> {
        self.inner.lock().subs.keys().cloned().collect()
    }

    pub fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .lock()
            .subs
            .values()
            .filter(|s| !s.deleted)
            .map(|s| s.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Applies acks if `wake_id`/`generation` name the outstanding wake;
    /// returns `next_wake`. `done` ends the wake; otherwise the lease is
    /// extended to `now_ms` + the lease TTL (the ack is a heartbeat).
    pub fn ack(
        &self,
        id: &str,
        wake_id: &str,
        generation: u64,
        acks: &[(String, Offset)],
        done: bool,
        now_ms: u64,
    ) -> Result<bool, AckError> {
        self.update(id, |s| {
            if !s.is_current(wake_id, generation) {
                return Err(AckError::Fenced);
            }
            for (path, off) in acks {
                if let Some(l) = s.links.get_mut(path)
                    && *off > l.acked
                    && *off <= l.tail
                {
                    l.acked = *off;
                }
            }
            let lease = s.lease_ms();
            if done {
                s.wake = None;
                s.retry = None;
            } else if let Some(w) = s.wake.as_mut() {
                w.lease_until = now_ms + lease;
            }
            Ok(s.pending())
        })
        .unwrap_or(Err(AckError::NotFound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sub(id: &str, pattern: Option<&str>) -> Sub {
        let config = Config {
            delivery: Delivery::PullWake {
                wake_stream: "wake".into(),
            },
            pattern: pattern.map(str::to_string),
            streams: vec![],
            lease_ttl_ms: 1000,
            description: None,
        };
        let mut links = BTreeMap::new();
        let mut l = Link::new(false, Offset::ZERO, 1);
        l.tail = Offset::new(1, 10);
        links.insert("e/a".to_string(), l);
        Sub::new(id.into(), config, String::new(), String::new(), links)
    }

    #[test]
    fn put_is_idempotent_and_conflicts_on_change() {
        let r = Registry::default();
        assert_eq!(r.put(sub("s", Some("e/*"))), Ok(true));
        assert_eq!(r.put(sub("s", Some("e/*"))), Ok(false));
        let mut other = sub("s", Some("e/*"));
        other.config.lease_ttl_ms = 2000;
        other.hash = other.config.hash();
        assert_eq!(r.put(other), Err(ConfigConflict));
        assert!(r.delete("s"));
        assert_eq!(r.put(sub("s", Some("e/*"))), Ok(true));
    }

    #[test]
    fn acks_are_fenced_by_wake_and_generation() {
        let r = Registry::default();
        r.put(sub("s", Some("e/*"))).unwrap();
        let w = r.update("s", |s| s.begin_wake(None, 0)).unwrap();
        let acks = vec![("e/a".to_string(), Offset::new(1, 10))];
        let ack = |wake: &str, g: u64| r.ack("s", wake, g, &acks, true, 0);
        assert_eq!(ack("nope", w.generation), Err(AckError::Fenced));
        assert_eq!(ack(&w.wake_id, w.generation + 1), Err(AckError::Fenced));
        assert_eq!(ack(&w.wake_id, w.generation), Ok(false));
        // The same ack again is stale.
        assert_eq!(ack(&w.wake_id, w.generation), Err(AckError::Fenced));
        // A new wake in a later generation fences the old one.
        r.update("s", |s| {
            s.link_mut("e/a").unwrap().tail = Offset::new(2, 20)
        });
        let w2 = r.update("s", |s| s.begin_wake(None, 0)).unwrap();
        assert_eq!(w2.generation, w.generation + 1);
        assert_eq!(ack(&w.wake_id, w.generation), Err(AckError::Fenced));
        assert!(r.delete("s"));
        assert_eq!(ack(&w2.wake_id, w2.generation), Err(AckError::NotFound));
    }

    #[test]
    fn heartbeat_ack_extends_the_lease_and_keeps_the_wake() {
        let r = Registry::default();
        r.put(sub("s", None)).unwrap();
        let w = r
            .update("s", |s| s.begin_wake(Some("w1".into()), 100))
            .unwrap();
        assert_eq!(w.lease_until, 1100);
        assert_eq!(
            r.ack("s", &w.wake_id, w.generation, &[], false, 900),
            Ok(true)
        );
        let lease = r.with("s", |s| s.wake.as_ref().unwrap().lease_until);
        assert_eq!(lease, Some(1900));
    }

    #[test]
    fn versions_only_grow() {
        let r = Registry::default();
        r.put(sub("s", None)).unwrap();
        let v1 = r.snapshot("s").unwrap().version;
        r.update("s", |_| ());
        let v2 = r.snapshot("s").unwrap().version;
        r.delete("s");
        let v3 = r.snapshot("s").unwrap().version;
        r.put(sub("s", None)).unwrap();
        let v4 = r.snapshot("s").unwrap().version;
        assert!(v1 < v2 && v2 < v3 && v3 < v4);
    }

    #[test]
    fn index_finds_links_and_patterns_and_follows_changes() {
        let r = Registry::default();
        r.put(sub("glob", Some("e/*"))).unwrap();
        r.put(sub("deep", Some("e/**"))).unwrap();
        r.put(sub("any", Some("**/x"))).unwrap();
        r.put(sub("lit", Some("f/g"))).unwrap();
        r.put(sub("none", None)).unwrap();
        // Every sub links e/a explicitly via the helper.
        assert_eq!(r.interested("e/a"), ["any", "deep", "glob", "lit", "none"]);
        assert_eq!(r.interested("e/b"), ["deep", "glob"]);
        assert_eq!(r.interested("e/b/c"), ["deep"]);
        assert_eq!(r.interested("q/x"), ["any"]);
        assert_eq!(r.interested("f/g"), ["lit"]);
        assert!(r.interested("f/h").is_empty());
        r.update("none", |s| {
            s.unlink("e/a");
            s.link("z", Link::new(true, Offset::ZERO, 0));
        });
        assert_eq!(r.interested("z"), ["none"]);
        assert_eq!(r.interested("e/a"), ["any", "deep", "glob", "lit"]);
        r.delete("glob");
        r.delete("lit");
        assert_eq!(r.interested("e/b"), ["deep"]);
        assert_eq!(r.interested("e/a"), ["any", "deep"]);
        assert!(r.interested("f/g").is_empty());
    }

    /// The index must agree with a plain scan of every subscription.
    #[test]
    fn index_agrees_with_a_linear_scan() {
        let pats = ["a/*", "a/**", "**", "*/b", "a/b", "**/c", "a/*/c"];
        let paths = ["a", "a/b", "a/b/c", "x/b", "c", "a/x/c", "q"];
        let r = Registry::default();
        for (i, p) in pats.iter().enumerate() {
            r.put(sub(&format!("s{i}"), Some(p))).unwrap();
        }
        for path in paths {
            let mut want: Vec<String> = pats
                .iter()
                .enumerate()
                .filter(|(_, p)| glob::matches(p, path) || path == "e/a")
                .map(|(i, _)| format!("s{i}"))
                .collect();
            want.sort();
            assert_eq!(r.any_interested(path), !want.is_empty(), "{path}");
            assert_eq!(r.interested(path), want, "{path}");
        }
    }
}
