//! The wake worker: keeps links in step with the streams, starts wakes,
//! expires leases, and delivers webhooks with their retry schedule.
//!
//! One task reads stream hints and subscription nudges from the inbox; a
//! 250 ms tick saves dirty subscriptions, resyncs every link after dropped
//! hints (and once at startup), expires leases and starts the webhook
//! deliveries that are due (which is how a retry schedule loaded at startup
//! resumes). Each webhook delivery runs in its own task, so a slow receiver
//! delays nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::clock::{backoff, jitter};
use super::sub::{Delivery, Link, Retry, Sub};
use super::{Msg, Subscriptions};
use crate::offset::Offset;
use crate::storage::{AppendRequest, StorageError, now_ms};

/// How often leases, due retries and dirty records are looked at.
pub const TICK: Duration = Duration::from_millis(250);

/// What the worker runs with: the engine (which reaches storage through its
/// [`StorageHandle`](crate::storage::handle::StorageHandle)) and the
/// server's shutdown signal. Built by the server from its state.
#[derive(Clone)]
pub struct Context {
    pub subs: Arc<Subscriptions>,
    /// Cancelled when the server shuts down: the worker and every webhook
    /// delivery waiting for its retry stop.
    pub shutdown: CancellationToken,
}

/// Starts the worker (once per engine).
pub fn spawn(ctx: impl Into<Context>) {
    let ctx: Context = ctx.into();
    let Some(mut rx) = ctx.subs.take_receiver() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            let msg = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                msg = rx.recv() => match msg {
                    None => return,
                    Some(m) => Some(m),
                },
                _ = tick.tick() => None,
            };
            if !leads(&ctx).await {
                continue;
            }
            let ids = match msg {
                Some(Msg::Sub(id)) => vec![id],
                Some(Msg::Stream(path)) => on_stream_change(&ctx, &path).await,
                None => on_tick(&ctx).await,
            };
            for id in ids {
                maybe_wake(&ctx, &id).await;
            }
        }
    });
}

/// True when this node runs the engine: always on a store of its own; on a
/// shared store only while it leads, with the registry reloaded once per
/// leadership term (another leader may have changed everything meanwhile).
async fn leads(ctx: &Context) -> bool {
    let Some(cluster) = ctx.subs.storage().backend().cluster() else {
        return true;
    };
    let Some(term) = cluster.leadership() else {
        return false;
    };
    match ctx.subs.adopt_term(term).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load subscriptions after gaining leadership");
            false
        }
    }
}

/// What storage says about a stream now: its incarnation and tail, or
/// `None` when it does not exist (deleted, expired, never created).
type Seen = Option<(u64, Offset)>;

async fn head(ctx: &Context, path: &str) -> Result<Seen, StorageError> {
    let p = path.to_string();
    match ctx.subs.storage().run(move |s| s.head(&p, now_ms())).await {
        Ok(info) => Ok(Some((info.id, info.tail))),
        Err(StorageError::NotFound | StorageError::Gone) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies what storage says about `path` to one subscription's link:
///
/// - a stream that exists: the link's tail follows it; a new incarnation
///   (deleted and created again) restarts the cursor at zero; a stream the
///   pattern matches but that is not linked yet is linked at offset zero
///   (it appeared after the subscription, so all its data is pending);
/// - a stream that is gone: a glob link is removed (the pattern links the
///   name again if it comes back), an explicit link stays, reset to zero,
///   so a stream created again under the name is pending from its start.
///
/// Returns true when that changed more than the tail: a link added, removed
/// or reset is worth saving; a tail alone is a hint that the startup resync
/// re-reads anyway, so saving it would only cost writes.
pub fn apply(s: &mut Sub, path: &str, seen: Seen) -> bool {
    let before = s.links().get(path).map(|l| (l.acked, l.incarnation));
    match seen {
        Some((inc, tail)) => {
            if before.is_none() && s.config.matches(path) {
                s.link(path, Link::new(false, Offset::ZERO, inc));
            }
            if let Some(l) = s.link_mut(path) {
                if l.incarnation != inc && l.incarnation != 0 {
                    l.acked = Offset::ZERO;
                }
                l.incarnation = inc;
                l.tail = tail;
            }
        }
        None => {
            let explicit = s.links().get(path).map(|l| l.explicit);
            match explicit {
                Some(true) => {
                    if let Some(l) = s.link_mut(path) {
                        *l = Link {
                            glob: l.glob,
                            ..Link::new(true, Offset::ZERO, 0)
                        };
                    }
                }
                Some(false) => {
                    s.unlink(path);
                }
                None => {}
            }
        }
    }
    before != s.links().get(path).map(|l| (l.acked, l.incarnation))
}

async fn on_stream_change(ctx: &Context, path: &str) -> Vec<String> {
    let ids = ctx.subs.registry.interested(path);
    if ids.is_empty() {
        return ids;
    }
    let seen = match head(ctx, path).await {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!(stream = path, error = %e, "cannot read a linked stream");
            return Vec::new();
        }
    };
    for id in &ids {
        if ctx.subs.registry.update(id, |s| apply(s, path, seen)) == Some(true) {
            ctx.subs.mark_dirty(id);
        }
    }
    ids
}

/// Re-reads every link (and every pattern match) from the stream listing:
/// at startup (writes, deletes, expiry and imports while stopped) and after
/// hints were dropped.
async fn resync(ctx: &Context) -> Result<(), StorageError> {
    let listed = ctx.subs.storage().run(|s| s.list_streams()).await?;
    let now = now_ms();
    let live: HashMap<String, (u64, Offset)> = listed
        .into_iter()
        .filter(|(_, m)| !m.is_hidden(now))
        .map(|(n, m)| (n, (m.id, m.tail)))
        .collect();
    for id in ctx.subs.registry.live_ids() {
        let changed = ctx.subs.registry.update(&id, |s| {
            let mut changed = false;
            let linked: Vec<String> = s.links().keys().cloned().collect();
            for path in linked {
                changed |= apply(s, &path, live.get(&path).copied());
            }
            if s.config.pattern.is_some() {
                for (path, seen) in &live {
                    if s.links().get(path).is_none() && s.config.matches(path) {
                        changed |= apply(s, path, Some(*seen));
                    }
                }
            }
            changed
        });
        if changed == Some(true) {
            ctx.subs.mark_dirty(&id);
        }
    }
    Ok(())
}

async fn on_tick(ctx: &Context) -> Vec<String> {
    let subs = &ctx.subs;
    if subs.take_lagged()
        && let Err(e) = resync(ctx).await
    {
        tracing::warn!(error = %e, "cannot resync subscription links; will retry");
        subs.set_lagged();
    }
    subs.save_dirty().await;
    let now = subs.clock.now_ms();
    let mut wake = Vec::new();
    for id in subs.registry.live_ids() {
        // Read first: most ticks change nothing, and an update would
        // stamp a new version (and a write) on every subscription.
        let Some((expired, idle, pending, due)) = subs.registry.with(&id, |s| {
            let expired = s.wake.as_ref().is_some_and(|w| {
                w.lease_until <= now
                    && match s.config.delivery {
                        // A webhook wake still being delivered is not
                        // leased to anyone yet; an answered one whose
                        // callback never came lapses.
                        Delivery::Webhook { .. } => s.retry.is_none(),
                        // A lapsed claim ends the wake; an unclaimed wake
                        // waits for a worker.
                        Delivery::PullWake { .. } => w.holder.is_some(),
                    }
            });
            let due =
                s.wake.is_some() && s.retry.as_ref().is_some_and(|r| r.next_attempt_at <= now);
            (expired, s.wake.is_none(), s.pending(), due)
        }) else {
            continue;
        };
        if expired {
            subs.registry.update(&id, |s| s.wake = None);
            subs.mark_dirty(&id);
        }
        if due {
            spawn_delivery(ctx, &id);
        }
        if pending && (expired || idle) {
            wake.push(id);
        }
    }
    wake
}

/// Starts a wake for `id` if it has pending streams and none outstanding.
async fn maybe_wake(ctx: &Context, id: &str) {
    let subs = &ctx.subs;
    let now = subs.clock.now_ms();
    let started = subs.registry.update(id, |s| {
        if s.wake.is_some() || !s.pending() {
            return None;
        }
        let w = s.begin_wake(None, now);
        if let Delivery::Webhook { .. } = s.config.delivery {
            // Due at once; a failure moves it along the backoff.
            s.retry = Some(Retry {
                failures: 0,
                next_attempt_at: now,
            });
        }
        Some((s.config.delivery.clone(), w, s.wake_streams()))
    });
    let Some(Some((delivery, wake, streams))) = started else {
        return;
    };
    // The generation is saved before anyone hears of it. Should the store
    // fail, the wake goes out anyway (the tick keeps saving): its wake id is
    // random, so even a generation number reused after a crash cannot let a
    // stale callback through.
    if let Err(e) = subs.save(id).await {
        tracing::warn!(subscription = id, error = %e, "cannot save a new wake");
    }
    match delivery {
        Delivery::Webhook { .. } => spawn_delivery(ctx, id),
        Delivery::PullWake { wake_stream } => {
            let first_pending = streams
                .as_array()
                .and_then(|a| a.iter().find(|l| l["has_pending"] == true))
                .map(|l| l["path"].clone())
                .unwrap_or(Value::Null);
            let event = json!({
                "type": "wake",
                "subscription_id": id,
                "stream": first_pending,
                "ts": now_ms(),
                "wake_id": wake.wake_id,
                "generation": wake.generation,
                "streams": streams,
            })
            .to_string();
            let req = AppendRequest::new(Some("application/json"), event, now_ms());
            // Through the handle: staged like any client append when the
            // backend can.
            if let Err(e) = subs.storage().append(&wake_stream, req).await {
                tracing::warn!(subscription = id, error = %e, "could not append to wake stream");
            }
        }
    }
}

/// Token lifetime: long enough for a slow worker, bounded anyway.
pub fn token_exp(lease_ttl_ms: u64) -> u64 {
    now_ms() + (lease_ttl_ms * 10).max(10 * 60 * 1000)
}

fn spawn_delivery(ctx: &Context, id: &str) {
    if !ctx.subs.start_delivery(id) {
        return;
    }
    let ctx = ctx.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        deliver(&ctx, &id).await;
        ctx.subs.end_delivery(&id);
    });
}

/// Delivers the outstanding webhook wake of `id`, following its retry
/// schedule, until a delivery succeeds or the wake is no longer current.
/// `{"done": true}` in the answer acks the wake's snapshot.
async fn deliver(ctx: &Context, id: &str) {
    let subs = &ctx.subs;
    loop {
        let plan = subs.registry.with(id, |s| {
            let Delivery::Webhook { url } = &s.config.delivery else {
                return None;
            };
            let (w, r) = (s.wake.as_ref()?, s.retry.as_ref()?);
            let body = json!({
                "subscription_id": s.id,
                "wake_id": w.wake_id,
                "generation": w.generation,
                "callback_url": format!("{}__ds/subscriptions/{}/callback", s.base_url, s.id),
                "streams": s.streams_at(&w.snapshot),
            });
            Some((
                url.clone(),
                w.clone(),
                r.next_attempt_at,
                body,
                s.lease_ms(),
            ))
        });
        let Some(Some((url, wake, at, mut body, lease))) = plan else {
            return;
        };
        if at > subs.clock.now_ms() {
            tokio::select! {
                _ = tokio::time::sleep_until(subs.clock.instant_at(at)) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            // Re-read: the wake may have been acked, deleted or replaced.
            continue;
        }
        body["callback_token"] = json!(subs.keys.token(&json!({
            "sub": id, "wake_id": wake.wake_id, "generation": wake.generation,
            "scope": "callback", "exp": token_exp(lease),
        })));
        let body = Bytes::from(body.to_string());
        let sig = subs.keys.signature_header(now_ms() / 1000, &body);
        let result = subs.transport().post(&url, &sig, body).await;
        let now = subs.clock.now_ms();
        let current = |s: &Sub| s.is_current(&wake.wake_id, wake.generation);
        let next = match result {
            Ok(answer) => {
                subs.registry.update(id, |s| {
                    if current(s) {
                        s.retry = None;
                        if let Some(w) = s.wake.as_mut() {
                            // The receiver has it now: its lease starts.
                            w.lease_until = now + lease;
                        }
                    }
                });
                let done = answer["done"] == true;
                done && subs.registry.ack(
                    id,
                    &wake.wake_id,
                    wake.generation,
                    &wake.snapshot,
                    true,
                    now,
                ) == Ok(true)
            }
            Err(e) => {
                let j = jitter();
                let failures = subs.registry.update(id, |s| {
                    if !current(s) {
                        return 0;
                    }
                    let failures = s.retry.as_ref().map_or(0, |r| r.failures) + 1;
                    let at = now + backoff(failures, j).as_millis() as u64;
                    s.retry = Some(Retry {
                        failures,
                        next_attempt_at: at,
                    });
                    if let Some(w) = s.wake.as_mut() {
                        w.lease_until = w.lease_until.max(at + lease);
                    }
                    failures
                });
                tracing::warn!(subscription = id, failures, error = %e, "webhook delivery failed");
                false
            }
        };
        // Cursors and the retry schedule are durable before the next step.
        if let Err(e) = subs.save(id).await {
            tracing::warn!(subscription = id, error = %e, "cannot save delivery state");
        }
        if next {
            subs.notify_sub(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::subscriptions::sub::Config;

    fn sub(pattern: Option<&str>) -> Sub {
        let config = Config {
            delivery: Delivery::PullWake {
                wake_stream: "w".into(),
            },
            pattern: pattern.map(str::to_string),
            streams: vec![],
            lease_ttl_ms: 1000,
            description: None,
        };
        Sub::new(
            "s".into(),
            config,
            String::new(),
            String::new(),
            BTreeMap::new(),
        )
    }

    const T: Offset = Offset::new(2, 20);

    #[test]
    fn a_stream_appearing_later_is_linked_at_its_start() {
        let mut s = sub(Some("e/*"));
        assert!(apply(&mut s, "e/a", Some((7, T))));
        let l = &s.links()["e/a"];
        assert_eq!(
            (l.acked, l.tail, l.incarnation, l.glob),
            (Offset::ZERO, T, 7, true)
        );
        assert!(s.pending());
        // Not matched, not linked: ignored.
        apply(&mut s, "f/a", Some((8, T)));
        assert!(!s.links().contains_key("f/a"));
    }

    #[test]
    fn deleted_glob_links_go_and_explicit_ones_reset() {
        let mut s = sub(Some("e/*"));
        s.link("e/a", Link::new(false, T, 7));
        s.link("x", Link::new(true, T, 9));
        apply(&mut s, "e/a", None);
        apply(&mut s, "x", None);
        assert!(!s.links().contains_key("e/a"));
        let x = &s.links()["x"];
        assert_eq!(
            (x.acked, x.tail, x.incarnation, x.explicit),
            (Offset::ZERO, Offset::ZERO, 0, true)
        );
        // Created again: pending from its start.
        apply(&mut s, "x", Some((10, Offset::new(1, 5))));
        assert!(s.links()["x"].pending());
        assert_eq!(s.links()["x"].acked, Offset::ZERO);
    }

    #[test]
    fn a_new_incarnation_restarts_the_cursor_even_if_the_delete_was_missed() {
        let mut s = sub(None);
        s.link("x", Link::new(true, T, 9));
        let changed = apply(&mut s, "x", Some((9, Offset::new(3, 30))));
        assert!(!changed, "a new tail alone is not worth a write");
        assert_eq!(s.links()["x"].acked, T, "same incarnation keeps the cursor");
        assert!(apply(&mut s, "x", Some((11, Offset::new(1, 4)))));
        let x = &s.links()["x"];
        assert_eq!(
            (x.acked, x.tail, x.incarnation),
            (Offset::ZERO, Offset::new(1, 4), 11)
        );
    }
}
