//! One subscription's state ([`Sub`]: configuration, links with their
//! cursors, the outstanding wake, the retry schedule) and the pure
//! decisions over it. Shared by the [`registry`](super::registry) that
//! holds every subscription and the [`index`](super::index) that finds them
//! by path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::glob;
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
    pub(super) links: BTreeMap<String, Link>,
    pub generation: u64,
    pub wake: Option<WakeState>,
    /// Set while a failed webhook delivery waits for its retry.
    pub retry: Option<Retry>,
    /// Stamped by [`Registry::update`](super::Registry::update); orders
    /// writes to the store.
    #[serde(skip)]
    pub version: u64,
    /// Links added (`true`) or removed since the index last saw them.
    #[serde(skip)]
    pub(super) index_delta: Vec<(String, bool)>,
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
