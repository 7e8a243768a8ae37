//! Wake-ups for live readers: one broadcast channel per watched stream.
//!
//! A channel exists only while someone waits on the stream: the first
//! [`WakeHub::subscribe`] creates it and dropping the last [`Subscription`]
//! removes it, so a million idle streams cost nothing here. Backends call
//! [`WakeHub::wake`] after a change of tail or closure is durable (or, for a
//! shared database, when another node reports one). A wake is a hint: readers
//! subscribe *before* they read and re-read storage after every wake, so a
//! lagged receiver loses nothing.
//!
//! A wake may also carry the records of the append that caused it
//! ([`Appended`]), so that live readers waiting exactly at the old tail can
//! answer without reading storage, and SSE connections share one encoding of
//! the event (encoded once, by the first one that needs it) instead of each
//! reading and encoding the same bytes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::offset::Offset;

/// What changed: the stream's new tail and closure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wake {
    pub tail: Offset,
    pub closed: bool,
    /// The records that moved the tail, when the backend hands them over:
    /// durable, in order, and exactly `[appended.from, tail)` of incarnation
    /// `appended.id`.
    pub appended: Option<Arc<Appended>>,
}

impl Wake {
    /// A wake that says only "something may have changed": its tail is
    /// past every position, so no reader takes it for stale news; readers
    /// re-read storage.
    pub fn unknown() -> Self {
        Wake::bare(Offset::new(u64::MAX, u64::MAX), false)
    }

    /// A wake without records: readers re-read storage.
    pub fn bare(tail: Offset, closed: bool) -> Self {
        Wake {
            tail,
            closed,
            appended: None,
        }
    }
}

/// The records of one append, shared by every reader it wakes.
#[derive(Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream incarnation ([`StreamInfo::id`](crate::storage::StreamInfo::id)).
    pub id: u64,
    /// The tail before the append: where the records start.
    pub from: Offset,
    /// The stored records (JSON messages each followed by `,`).
    pub records: Vec<Bytes>,
    /// The SSE `data` event for these records, encoded once (the encoding
    /// depends only on the incarnation's content type).
    pub sse: OnceLock<Bytes>,
}

impl Appended {
    pub fn new(id: u64, from: Offset, records: Vec<Bytes>) -> Arc<Self> {
        Arc::new(Appended {
            id,
            from,
            records,
            sse: OnceLock::new(),
        })
    }
}

/// Capacity of each stream's channel; a receiver that falls further behind
/// sees `Lagged` and simply re-reads.
const CHANNEL_CAPACITY: usize = 16;

/// Told the name of every stream woken.
type Observer = Box<dyn Fn(&str) + Send + Sync>;

/// The registry of watched streams.
#[derive(Default)]
pub struct WakeHub {
    // A parking_lot RwLock, not tokio's: it is held only for a map lookup or
    // insert, never across an await.
    channels: RwLock<HashMap<String, broadcast::Sender<Wake>>>,
    /// Told the name of every woken stream (the subscription engine). It is
    /// called on the backend's commit path, so it must not block.
    observer: OnceLock<Observer>,
}

impl WakeHub {
    pub fn new() -> Arc<Self> {
        Arc::new(WakeHub::default())
    }

    /// Wakes every reader waiting on `stream`. Cheap when nobody waits.
    pub fn wake(&self, stream: &str, wake: Wake) {
        {
            let channels = self.channels.read();
            if let Some(tx) = channels.get(stream) {
                // An error only means every receiver just left.
                let _ = tx.send(wake);
            }
        }
        if let Some(observe) = self.observer.get() {
            observe(stream);
        }
    }

    /// Tells every waiting reader of every stream to re-read: wakes may
    /// have been missed (a shared-database backend lost its notification
    /// connection to other nodes' commits). The observer hears nothing:
    /// callers that need it resync themselves.
    pub fn wake_all(&self) {
        for tx in self.channels.read().values() {
            let _ = tx.send(Wake::unknown());
        }
    }

    /// Installs the observer told about every wake (once; later calls are
    /// ignored and return false). It must return quickly and never block.
    pub fn observe(&self, f: impl Fn(&str) + Send + Sync + 'static) -> bool {
        self.observer.set(Box::new(f)).is_ok()
    }

    /// Starts watching `stream`. Subscribe before reading, then re-read on
    /// every wake.
    pub fn subscribe(self: &Arc<Self>, stream: &str) -> Subscription {
        let rx = {
            let mut channels = self.channels.write();
            channels
                .entry(stream.to_string())
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe()
        };
        Subscription {
            rx: Some(rx),
            hub: Arc::clone(self),
            stream: stream.to_string(),
        }
    }

    /// True when someone waits on `stream`.
    pub fn has_waiters(&self, stream: &str) -> bool {
        self.channels.read().contains_key(stream)
    }

    /// Number of streams with at least one waiting reader.
    pub fn watched(&self) -> usize {
        self.channels.read().len()
    }
}

/// A reader's interest in one stream; removes the channel when the last one
/// is dropped.
pub struct Subscription {
    rx: Option<broadcast::Receiver<Wake>>,
    hub: Arc<WakeHub>,
    stream: String,
}

impl Subscription {
    /// Waits for the next change. `None` means the reader should simply
    /// re-read (it lagged behind, or the channel went away).
    pub async fn changed(&mut self) -> Option<Wake> {
        let rx = self.rx.as_mut()?;
        match rx.recv().await {
            Ok(w) => Some(w),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => {
                // Cannot happen while the hub holds the sender; wait forever
                // rather than spin, callers always race this with a timeout.
                std::future::pending::<()>().await;
                None
            }
        }
    }
}

impl Subscription {
    /// The next queued wake without waiting: `None` when none is queued,
    /// `Some(None)` after a lag (re-read).
    pub fn try_changed(&mut self) -> Option<Option<Wake>> {
        match self.rx.as_mut()?.try_recv() {
            Ok(w) => Some(Some(w)),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(None),
            Err(_) => None,
        }
    }

    /// True when a wake is queued that `stale` does not rule out (a lagged
    /// receiver counts as news). Consumes the queued wakes.
    pub fn has_news(&mut self, stale: impl Fn(&Wake) -> bool) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return true;
        };
        loop {
            match rx.try_recv() {
                Ok(w) if stale(&w) => {}
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => return true,
                Err(broadcast::error::TryRecvError::Empty) => return false,
                Err(broadcast::error::TryRecvError::Closed) => return true,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut channels = self.hub.channels.write();
        if let Some(tx) = channels.get(&self.stream)
            && tx.receiver_count() == 0
        {
            channels.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_subscribers_and_cleans_up() {
        let hub = WakeHub::new();
        let mut a = hub.subscribe("s");
        let mut b = hub.subscribe("s");
        assert_eq!(hub.watched(), 1);
        let w = Wake::bare(Offset::new(1, 5), false);
        hub.wake("s", w.clone());
        hub.wake("other", w.clone());
        assert_eq!(a.changed().await, Some(w.clone()));
        assert_eq!(b.changed().await, Some(w));
        drop(a);
        assert_eq!(hub.watched(), 1);
        drop(b);
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn lagged_receiver_is_told_to_reread() {
        let hub = WakeHub::new();
        let mut a = hub.subscribe("s");
        for i in 0..(CHANNEL_CAPACITY as u64 + 5) {
            hub.wake("s", Wake::bare(Offset::new(i, i), false));
        }
        assert_eq!(a.changed().await, None);
        assert!(a.changed().await.is_some());
    }
}
