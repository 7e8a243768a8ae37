//! Subscriptions (PROTOCOL.md §6–7): durable cursors over sets of streams
//! that wake workers by webhook or pull-wake.
//!
//! - [`glob`]: pattern matching and normalized-config hashing (pure).
//! - [`signing`]: the Ed25519 webhook key, JWKS, signatures, scoped tokens.
//! - [`ssrf`]: webhook URL validation.
//! - [`api`]: the HTTP handlers under `/v1/stream/__ds`.
//! - [`delivery`]: the webhook HTTP client.
//!
//! The registry is in memory for now ([`Registry`]); appends reach it
//! through [`Subscriptions::notify`], a non-blocking `try_send` to a
//! background worker, so delivery never blocks an append.

pub mod api;
pub mod delivery;
pub mod glob;
pub mod signing;
pub mod ssrf;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::offset::Offset;

/// Delivery mechanism and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Webhook { url: String },
    PullWake { wake_stream: String },
}

/// A subscription's normalized configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    fn matches(&self, path: &str) -> bool {
        self.pattern
            .as_deref()
            .is_some_and(|p| glob::matches(p, path))
    }
}

/// One stream's cursor within a subscription.
#[derive(Clone, Debug)]
pub struct Link {
    pub explicit: bool,
    pub glob: bool,
    pub acked: Offset,
    pub tail: Offset,
}

/// An outstanding wake: what was announced, and who holds it.
#[derive(Clone, Debug)]
pub struct WakeState {
    pub wake_id: String,
    pub generation: u64,
    pub snapshot: Vec<(String, Offset)>,
    pub holder: Option<String>,
    pub lease_until: Instant,
}

/// A subscription and its cursors.
#[derive(Clone, Debug)]
pub struct Sub {
    pub id: String,
    pub config: Config,
    pub hash: String,
    pub created_at: String,
    pub deleted: bool,
    /// `http://host/v1/stream/` as seen when the subscription was created.
    pub base_url: String,
    pub links: BTreeMap<String, Link>,
    pub generation: u64,
    pub wake: Option<WakeState>,
    pub failed: bool,
}

impl Sub {
    fn pending(&self) -> bool {
        self.links.values().any(|l| l.tail != l.acked)
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// Starts a new wake generation over the current tails.
    fn begin_wake(&mut self, holder: Option<String>) -> WakeState {
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
            lease_until: Instant::now() + self.lease(),
        };
        self.wake = Some(w.clone());
        w
    }

    /// The `streams` array of a wake notification or claim.
    fn wake_streams(&self) -> Value {
        Value::Array(
            self.links
                .iter()
                .map(|(p, l)| {
                    json!({
                        "path": p,
                        "link_type": if l.explicit { "explicit" } else { "glob" },
                        "tail_offset": l.tail.to_string(),
                        "acked_offset": l.acked.to_string(),
                        "has_pending": l.tail != l.acked,
                    })
                })
                .collect(),
        )
    }

    /// The GET representation.
    pub fn to_json(&self, keys: &signing::Keys) -> Value {
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
                        "kid": keys.kid,
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
            "status": if self.failed { "failed" } else { "active" },
            "description": self.config.description,
        })
    }
}

/// Result of applying an ack.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    NotFound,
    Fenced,
}

/// A subscription exists under the id with a different configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigConflict;

/// The in-memory subscription store. A durable store can replace it behind
/// the same methods.
#[derive(Default)]
pub struct Registry {
    subs: Mutex<HashMap<String, Sub>>,
}

impl Registry {
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Sub) -> R) -> Option<R> {
        let mut subs = self.subs.lock();
        subs.get_mut(id).filter(|s| !s.deleted).map(f)
    }

    /// Inserts or re-confirms; `Ok(true)` when created.
    pub fn put(&self, sub: Sub) -> Result<bool, ConfigConflict> {
        let mut subs = self.subs.lock();
        match subs.get(&sub.id) {
            Some(old) if !old.deleted => {
                if old.hash == sub.hash {
                    Ok(false)
                } else {
                    Err(ConfigConflict)
                }
            }
            _ => {
                subs.insert(sub.id.clone(), sub);
                Ok(true)
            }
        }
    }

    /// Tombstones; true if it existed.
    pub fn delete(&self, id: &str) -> bool {
        self.with(id, |s| {
            s.deleted = true;
            s.wake = None;
            s.links.clear();
        })
        .is_some()
    }

    /// Ids of live subscriptions that link or match `path`.
    pub fn interested(&self, path: &str) -> Vec<String> {
        self.subs
            .lock()
            .values()
            .filter(|s| !s.deleted && (s.links.contains_key(path) || s.config.matches(path)))
            .map(|s| s.id.clone())
            .collect()
    }

    pub fn live_ids(&self) -> Vec<String> {
        self.subs
            .lock()
            .values()
            .filter(|s| !s.deleted)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Applies acks if `wake_id`/`generation` name the outstanding wake;
    /// returns `next_wake`.
    pub fn ack(
        &self,
        id: &str,
        wake_id: &str,
        generation: u64,
        acks: &[(String, Offset)],
        done: bool,
    ) -> Result<bool, AckError> {
        self.with(id, |s| {
            let current = s
                .wake
                .as_ref()
                .is_some_and(|w| w.wake_id == wake_id && w.generation == generation);
            if !current {
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
            if done {
                s.wake = None;
            } else if let Some(w) = s.wake.as_mut() {
                w.lease_until = Instant::now() + Duration::from_millis(s.config.lease_ttl_ms);
            }
            Ok(s.pending())
        })
        .unwrap_or(Err(AckError::NotFound))
    }
}

/// The subscription engine: registry, signing key, and the wake worker.
pub struct Subscriptions {
    pub registry: Registry,
    pub keys: signing::Keys,
    tx: mpsc::Sender<String>,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
}

impl Subscriptions {
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel(4096);
        Arc::new(Subscriptions {
            registry: Registry::default(),
            keys: signing::Keys::generate(),
            tx,
            rx: Mutex::new(Some(rx)),
        })
    }

    /// Called after a stream's tail changed. Never blocks: if the worker is
    /// behind, the hint is dropped and the periodic tick catches up.
    pub fn notify(&self, path: &str) {
        let _ = self.tx.try_send(path.to_string());
    }

    /// True when any subscription exists, i.e. when [`Self::notify`] can
    /// matter; appends skip the hint (an allocation and a worker wake-up
    /// each) otherwise.
    pub fn active(&self) -> bool {
        !self.registry.subs.lock().is_empty()
    }

    /// Takes the worker's receiver (once).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<String>> {
        self.rx.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str) -> Sub {
        let config = Config {
            delivery: Delivery::PullWake {
                wake_stream: "wake".into(),
            },
            pattern: Some("e/*".into()),
            streams: vec![],
            lease_ttl_ms: 1000,
            description: None,
        };
        let mut links = BTreeMap::new();
        links.insert(
            "e/a".to_string(),
            Link {
                explicit: false,
                glob: true,
                acked: Offset::ZERO,
                tail: Offset::new(1, 10),
            },
        );
        Sub {
            id: id.into(),
            hash: config.hash(),
            config,
            created_at: String::new(),
            deleted: false,
            base_url: String::new(),
            links,
            generation: 0,
            wake: None,
            failed: false,
        }
    }

    #[test]
    fn put_is_idempotent_and_conflicts_on_change() {
        let r = Registry::default();
        assert_eq!(r.put(sub("s")), Ok(true));
        assert_eq!(r.put(sub("s")), Ok(false));
        let mut other = sub("s");
        other.config.lease_ttl_ms = 2000;
        other.hash = other.config.hash();
        assert_eq!(r.put(other), Err(ConfigConflict));
        assert!(r.delete("s"));
        assert_eq!(r.put(sub("s")), Ok(true));
    }

    #[test]
    fn acks_are_fenced_by_wake_and_generation() {
        let r = Registry::default();
        r.put(sub("s")).unwrap();
        let w = r.with("s", |s| s.begin_wake(None)).unwrap();
        let acks = vec![("e/a".to_string(), Offset::new(1, 10))];
        assert_eq!(
            r.ack("s", "nope", w.generation, &acks, true),
            Err(AckError::Fenced)
        );
        assert_eq!(
            r.ack("s", &w.wake_id, w.generation + 1, &acks, true),
            Err(AckError::Fenced)
        );
        assert_eq!(r.ack("s", &w.wake_id, w.generation, &acks, true), Ok(false));
        // The same ack again is stale.
        assert_eq!(
            r.ack("s", &w.wake_id, w.generation, &acks, true),
            Err(AckError::Fenced)
        );
        assert!(r.delete("s"));
        assert_eq!(
            r.ack("s", &w.wake_id, w.generation, &acks, true),
            Err(AckError::NotFound)
        );
    }
}
