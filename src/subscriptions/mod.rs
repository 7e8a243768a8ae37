//! Subscriptions (PROTOCOL.md §6–7): durable cursors over sets of streams
//! that wake workers by webhook or pull-wake.
//!
//! - [`glob`]: pattern matching and normalized-config hashing (pure).
//! - [`sub`]: one subscription's state (configuration, links, wake, retry).
//! - [`registry`]: the in-memory registry of every subscription.
//! - [`index`]: which subscriptions link or match a path (exact paths, and
//!   patterns grouped by literal prefix).
//! - [`store`]: the layout of that state in the backend's control space.
//! - [`clock`]: the engine's wall clock and the retry backoff.
//! - [`signing`]: the Ed25519 webhook key, JWKS, signatures, scoped tokens.
//! - [`ssrf`]: webhook URL validation.
//! - [`worker`]: the wake worker (links, wakes, leases, retries), run with
//!   its own [`worker::Context`]; the HTTP API over the engine lives in the
//!   HTTP layer, which this engine never imports.
//! - [`delivery`]: the webhook HTTP(S) client.
//!
//! # Durability
//!
//! The registry is the working copy. Every change that matters for
//! correctness (creation, deletion, links, acks, generation bumps, claims,
//! retry schedules) is written through to [`Storage::control_put`](crate::storage::Storage::control_put) by
//! [`Subscriptions::save`] before the request that made it is answered or
//! the wake it starts is announced; link tails are hints, re-read from
//! storage at startup. [`Subscriptions::open`] loads everything back.
//!
//! # Never in the append path
//!
//! Backends wake the [`WakeHub`](crate::notify::WakeHub) after every durable
//! change of a stream (append, close, delete, expiry, restore); its observer
//! hands the name to [`Subscriptions::notify`], a `try_send` that never
//! blocks. If the worker falls behind the hint is dropped and a full resync
//! is scheduled instead.

pub mod clock;
pub mod delivery;
pub mod glob;
pub mod index;
pub mod registry;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod sub;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use self::clock::Clock;
use self::delivery::Transport;
pub use self::registry::{AckError, ConfigConflict, Registry};
pub use self::sub::{Config, Delivery, Link, Sub};
use crate::storage::StorageError;
use crate::storage::handle::StorageHandle;

/// Capacity of the worker's inbox of stream names.
const INBOX: usize = 4096;

/// The subscription engine: registry, signing key, persistence and the
/// wake worker's inbox. Cheap to share behind an `Arc`.
pub struct Subscriptions {
    pub registry: Registry,
    pub keys: signing::Keys,
    pub clock: Clock,
    storage: StorageHandle,
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    /// A stream hint was dropped: the worker re-reads every link.
    lagged: AtomicBool,
    /// Serializes writes to the store and remembers the version of each
    /// subscription last written, so a write never replaces a newer one and
    /// queued writers of an already-written version skip. A tokio mutex: it
    /// is held across the (blocking-thread) write.
    saved: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Subscriptions changed by paths that do not save at once (link tails
    /// and new glob links); the worker's tick saves them.
    dirty: Mutex<HashSet<String>>,
    transport: RwLock<Arc<dyn Transport>>,
    /// Subscriptions with a webhook delivery running (sending or waiting
    /// for its retry), so a wake is never sent twice at once.
    inflight: Mutex<HashSet<String>>,
    /// The leadership term the working copy was loaded for (shared stores;
    /// 0: none yet).
    term: std::sync::atomic::AtomicU64,
    /// Serializes reloads.
    reloading: tokio::sync::Mutex<()>,
}

/// A message to the worker.
#[derive(Debug)]
pub enum Msg {
    /// A stream's tail, closure or existence changed.
    Stream(String),
    /// Look at one subscription again.
    Sub(String),
}

impl Subscriptions {
    /// Loads the signing key (creating and storing one on first start) and
    /// every stored subscription. Blocking: call it off the async workers.
    pub fn open(storage: StorageHandle) -> Result<Arc<Self>, StorageError> {
        let keys = store::load_or_create_key(&**storage.backend())?;
        let subs = store::load_subs(&**storage.backend())?;
        let registry = Registry::default();
        let mut saved = HashMap::new();
        for sub in subs {
            let id = sub.id.clone();
            registry.load(sub);
            if let Some(s) = registry.snapshot(&id) {
                saved.insert(id, s.version);
            }
        }
        let (tx, rx) = mpsc::channel(INBOX);
        let engine = Subscriptions {
            registry,
            keys,
            clock: Clock::new(),
            storage,
            tx,
            rx: Mutex::new(Some(rx)),
            // The first worker pass reconciles links with the streams as
            // they are now (writes, deletes or imports while stopped).
            lagged: AtomicBool::new(true),
            saved: tokio::sync::Mutex::new(saved),
            dirty: Mutex::new(HashSet::new()),
            transport: RwLock::new(Arc::new(delivery::HttpTransport::default())),
            inflight: Mutex::new(HashSet::new()),
            term: Default::default(),
            reloading: tokio::sync::Mutex::new(()),
        };
        Ok(Arc::new(engine))
    }

    /// Makes the working copy current for leadership term `term` of a
    /// shared store: reloaded once per term, before the engine or the API
    /// uses it (whichever comes first).
    pub async fn adopt_term(&self, term: u64) -> Result<(), StorageError> {
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        let _one = self.reloading.lock().await;
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        self.reload().await?;
        self.term.store(term, Ordering::Release);
        Ok(())
    }

    /// Loads every subscription from the store again, replacing the working
    /// copy: a node that becomes the leader of a shared store takes over
    /// what the previous leader wrote. Unsaved changes of this node's are
    /// dropped (it did not lead meanwhile, so it made none that count).
    pub async fn reload(&self) -> Result<(), StorageError> {
        let subs = self.storage.run(store::load_subs).await?;
        let mut saved = self.saved.lock().await;
        self.dirty.lock().clear();
        self.inflight.lock().clear();
        self.registry.replace_all(subs);
        saved.clear();
        for id in self.registry.ids() {
            if let Some(s) = self.registry.snapshot(&id) {
                saved.insert(id, s.version);
            }
        }
        self.set_lagged();
        Ok(())
    }

    /// Replaces the webhook transport (the TLS settings, or a test double).
    pub fn set_transport(&self, t: Arc<dyn Transport>) {
        *self.transport.write() = t;
    }

    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::clone(&self.transport.read())
    }

    /// Called after a stream's tail, closure or existence changed. Never
    /// blocks: if the worker is behind, the hint is dropped and the worker
    /// resyncs every link on its next tick.
    pub fn notify(&self, path: &str) {
        // Only streams some subscription links or matches reach the queue,
        // so appends to unrelated streams cannot flood it.
        if !self.registry.any_interested(path) {
            return;
        }
        if self.tx.try_send(Msg::Stream(path.to_string())).is_err() {
            self.lagged.store(true, Ordering::Relaxed);
        }
    }

    /// Asks the worker to look at one subscription again.
    pub fn notify_sub(&self, id: &str) {
        if self.tx.try_send(Msg::Sub(id.to_string())).is_err() {
            self.lagged.store(true, Ordering::Relaxed);
        }
    }

    /// Takes the worker's receiver (once).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Msg>> {
        self.rx.lock().take()
    }

    /// True (once) when hints were dropped or the engine just started.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::Relaxed)
    }

    /// Schedules a full resync of every link on the next tick.
    pub fn set_lagged(&self) {
        self.lagged.store(true, Ordering::Relaxed);
    }

    /// Records that `id` changed in ways the next tick may save.
    pub fn mark_dirty(&self, id: &str) {
        self.dirty.lock().insert(id.to_string());
    }

    /// Saves every subscription marked dirty; failures stay dirty.
    pub async fn save_dirty(&self) {
        let ids: Vec<String> = self.dirty.lock().drain().collect();
        for id in ids {
            if let Err(e) = self.save(&id).await {
                tracing::warn!(subscription = id, error = %e, "cannot save subscription");
                self.mark_dirty(&id);
            }
        }
    }

    /// Writes `id` as it is now to the store, unless that version (or a
    /// later one) is already there. Returns once it is durable; on failure
    /// the subscription stays dirty and the worker's tick retries.
    pub async fn save(&self, id: &str) -> Result<(), StorageError> {
        let mut saved = self.saved.lock().await;
        let Some(sub) = self.registry.snapshot(id) else {
            return Ok(());
        };
        if saved.get(id).is_some_and(|v| *v >= sub.version) {
            return Ok(());
        }
        let bytes = store::encode_sub(&sub);
        let key = id.to_string();
        let put = self
            .storage
            .run(move |s| s.control_put(store::NS_SUBS, &key, &bytes))
            .await;
        if put.is_err() {
            // The working copy is ahead of the store: the tick tries again.
            self.mark_dirty(id);
        }
        put?;
        saved.insert(id.to_string(), sub.version);
        Ok(())
    }

    /// Marks a webhook delivery for `id` as running; false if one already is.
    pub fn start_delivery(&self, id: &str) -> bool {
        self.inflight.lock().insert(id.to_string())
    }

    pub fn end_delivery(&self, id: &str) {
        self.inflight.lock().remove(id);
    }

    /// The handle the engine reaches its backend through.
    pub fn storage(&self) -> &StorageHandle {
        &self.storage
    }
}
