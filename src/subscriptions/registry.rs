//! The in-memory registry that holds every subscription.
//!
//! The registry is the working copy; [`super::store`] writes each changed
//! subscription through to the backend's control space. Every mutation goes
//! through [`Registry::update`], which stamps the subscription with a new
//! version (so the store knows what it has written) and keeps the lookup
//! index in step with the links.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::index::Index;
pub use super::sub::{Config, Delivery, Link, Retry, Sub, WakeState};
use crate::offset::Offset;

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
    use std::collections::BTreeMap;

    use super::super::glob;
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
