//! HTTP handlers under `/v1/stream/__ds`, and the wake worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{AckError, Config, Delivery, Link, Sub, Subscriptions, WakeState, ssrf};
use crate::http::AppState;
use crate::offset::Offset;
use crate::storage::{AppendRequest, now_ms};

/// A subscription API error: problem+json with the protocol's
/// `error: {code, message}` object.
pub struct SubError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, String)>,
    generation: Option<u64>,
}

impl SubError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        SubError {
            status,
            code,
            message: message.into(),
            extra: None,
            generation: None,
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "SUBSCRIPTION_NOT_FOUND",
            "no such subscription",
        )
    }
}

impl IntoResponse for SubError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some((k, v)) = self.extra {
            error[k] = Value::String(v);
        }
        if let Some(g) = self.generation {
            error["generation"] = json!(g);
        }
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.message,
            "error": error,
        });
        (
            self.status,
            [
                (header::CONTENT_TYPE, "application/problem+json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

type Res = Result<Response, SubError>;

fn parse_json(body: &Bytes) -> Result<Value, SubError> {
    serde_json::from_slice(body).map_err(|e| SubError::bad("INVALID_JSON", e.to_string()))
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/v1/stream/")
}

fn path_list(v: &Value) -> Result<Vec<String>, SubError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => {
            let mut out = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .filter(|s| !s.is_empty())
                        .map(|s| s.trim_matches('/').to_string())
                        .ok_or_else(|| SubError::bad("INVALID_REQUEST", "streams must be strings"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.sort();
            out.dedup();
            Ok(out)
        }
        _ => Err(SubError::bad("INVALID_REQUEST", "streams must be an array")),
    }
}

fn parse_config(v: &Value) -> Result<Config, SubError> {
    let delivery = match v["type"].as_str() {
        Some("webhook") => {
            let url = v["webhook"]["url"]
                .as_str()
                .ok_or_else(|| SubError::bad("INVALID_REQUEST", "webhook.url is required"))?;
            ssrf::parse(url).map_err(|e| SubError::bad("WEBHOOK_URL_REJECTED", e))?;
            Delivery::Webhook { url: url.into() }
        }
        Some("pull-wake") => {
            let ws = v["wake_stream"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| SubError::bad("INVALID_REQUEST", "wake_stream is required"))?;
            Delivery::PullWake {
                wake_stream: ws.trim_matches('/').into(),
            }
        }
        _ => {
            return Err(SubError::bad(
                "INVALID_REQUEST",
                "type must be webhook or pull-wake",
            ));
        }
    };
    let pattern = match &v["pattern"] {
        Value::Null => None,
        Value::String(p) if !p.is_empty() => Some(p.trim_matches('/').to_string()),
        _ => return Err(SubError::bad("INVALID_REQUEST", "pattern must be a string")),
    };
    let streams = path_list(&v["streams"])?;
    if pattern.is_none() && streams.is_empty() {
        return Err(SubError::bad(
            "INVALID_REQUEST",
            "at least one of pattern or streams is required",
        ));
    }
    let lease_ttl_ms = match &v["lease_ttl_ms"] {
        Value::Null => 30_000,
        n => n
            .as_u64()
            .filter(|n| (1_000..=600_000).contains(n))
            .ok_or_else(|| {
                SubError::bad("INVALID_REQUEST", "lease_ttl_ms must be 1000..=600000")
            })?,
    };
    let description = match &v["description"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => {
            return Err(SubError::bad(
                "INVALID_REQUEST",
                "description must be a string",
            ));
        }
    };
    Ok(Config {
        delivery,
        pattern,
        streams,
        lease_ttl_ms,
        description,
    })
}

async fn tail_of(state: &AppState, path: &str) -> Option<Offset> {
    let p = path.to_string();
    state
        .storage(move |s| s.head(&p, now_ms()))
        .await
        .ok()
        .map(|i| i.tail)
}

fn subs(state: &AppState) -> &Arc<Subscriptions> {
    &state.subs
}

pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        subs(&state).keys.jwks().to_string(),
    )
        .into_response()
}

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let config = parse_config(&parse_json(&body)?)?;
    let mut links = BTreeMap::new();
    if let Some(pattern) = &config.pattern {
        let listed = state
            .storage(|s| s.list_streams())
            .await
            .map_err(|e| SubError::new(e.status, e.code, e.detail))?;
        for (name, meta) in listed {
            if super::glob::matches(pattern, &name) && !meta.soft_deleted {
                links.insert(
                    name,
                    Link {
                        explicit: false,
                        glob: true,
                        acked: meta.tail,
                        tail: meta.tail,
                    },
                );
            }
        }
    }
    for p in &config.streams {
        let tail = tail_of(&state, p).await.unwrap_or(Offset::ZERO);
        let l = links.entry(p.clone()).or_insert(Link {
            explicit: true,
            glob: false,
            acked: tail,
            tail,
        });
        l.explicit = true;
    }
    let sub = Sub {
        id: id.clone(),
        hash: config.hash(),
        config,
        created_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        deleted: false,
        base_url: base_url(&headers),
        links,
        generation: 0,
        wake: None,
        failed: false,
    };
    let s = subs(&state);
    let status = match s.registry.put(sub) {
        Ok(true) => StatusCode::CREATED,
        Ok(false) => StatusCode::OK,
        Err(super::ConfigConflict) => {
            return Err(SubError::new(
                StatusCode::CONFLICT,
                "SUBSCRIPTION_EXISTS",
                "a subscription with this id exists with a different configuration",
            ));
        }
    };
    let body = s
        .registry
        .with(&id, |sub| sub.to_json(&s.keys))
        .ok_or_else(SubError::not_found)?;
    Ok((status, Json(body)).into_response())
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Res {
    let s = subs(&state);
    let body = s
        .registry
        .with(&id, |sub| sub.to_json(&s.keys))
        .ok_or_else(SubError::not_found)?;
    Ok(Json(body).into_response())
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Res {
    if subs(&state).registry.delete(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(SubError::not_found())
    }
}

pub async fn add_streams(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res {
    let v = parse_json(&body)?;
    let paths = path_list(&v["streams"])?;
    let mut tails = Vec::new();
    for p in paths {
        let t = tail_of(&state, &p).await.unwrap_or(Offset::ZERO);
        tails.push((p, t));
    }
    subs(&state)
        .registry
        .with(&id, |sub| {
            for (p, t) in tails {
                sub.links
                    .entry(p)
                    .or_insert(Link {
                        explicit: true,
                        glob: false,
                        acked: t,
                        tail: t,
                    })
                    .explicit = true;
            }
        })
        .ok_or_else(SubError::not_found)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn remove_stream(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Res {
    let path = path.trim_matches('/').to_string();
    subs(&state)
        .registry
        .with(&id, |sub| {
            let keep_glob = sub.config.matches(&path);
            if let Some(l) = sub.links.get_mut(&path) {
                l.explicit = false;
                if !(l.glob || keep_glob) {
                    sub.links.remove(&path);
                }
            }
        })
        .ok_or_else(SubError::not_found)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Shared by webhook callbacks and pull-wake ack: checks the scoped token,
/// then fences on wake_id + generation.
async fn apply_ack(state: &AppState, id: &str, headers: &HeaderMap, body: &Bytes) -> Res {
    let s = subs(state);
    let claims = bearer(headers)
        .and_then(|t| s.keys.verify_token(t))
        .filter(|c| c["sub"] == id)
        .ok_or_else(|| {
            SubError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "a valid subscription token is required",
            )
        })?;
    let v = parse_json(body)?;
    let wake_id = v["wake_id"].as_str().unwrap_or_default();
    let generation = v["generation"].as_u64().unwrap_or(0);
    check_claims(&claims, wake_id, generation)?;
    let mut acks = Vec::new();
    for a in v["acks"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(p), Some(o)) = (a["stream"].as_str(), a["offset"].as_str()) else {
            return Err(SubError::bad(
                "INVALID_REQUEST",
                "acks need stream and offset",
            ));
        };
        let off =
            Offset::parse(o).ok_or_else(|| SubError::bad("INVALID_OFFSET", "bad ack offset"))?;
        acks.push((p.to_string(), off));
    }
    let done = v["done"].as_bool().unwrap_or(false);
    match s.registry.ack(id, wake_id, generation, &acks, done) {
        Ok(next) => {
            if next && done {
                s.notify_sub(id);
            }
            Ok(Json(json!({"ok": true, "next_wake": next})).into_response())
        }
        Err(AckError::Fenced) => Err(fenced()),
        Err(AckError::NotFound) => Err(SubError::not_found()),
    }
}

/// The token must be for this wake and generation, and unexpired.
fn check_claims(claims: &Value, wake_id: &str, generation: u64) -> Result<(), SubError> {
    if claims["exp"].as_u64().is_some_and(|exp| exp < now_ms()) {
        return Err(SubError::new(
            StatusCode::UNAUTHORIZED,
            "TOKEN_EXPIRED",
            "the subscription token has expired",
        ));
    }
    if claims["wake_id"] != wake_id || claims["generation"] != generation {
        return Err(fenced());
    }
    Ok(())
}

/// Token lifetime: long enough for a slow worker, bounded anyway.
fn token_exp(lease_ttl_ms: u64) -> u64 {
    now_ms() + (lease_ttl_ms * 10).max(10 * 60 * 1000)
}

fn fenced() -> SubError {
    SubError::new(
        StatusCode::CONFLICT,
        "FENCED",
        "this wake is no longer current",
    )
}

pub async fn callback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    apply_ack(&state, &id, &headers, &body).await
}

pub async fn ack(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    apply_ack(&state, &id, &headers, &body).await
}

/// Re-reads the tails of every link of `id` from storage.
async fn refresh(state: &AppState, id: &str) -> Option<()> {
    let paths: Vec<String> = subs(state)
        .registry
        .with(id, |s| s.links.keys().cloned().collect())?;
    for p in paths {
        if let Some(t) = tail_of(state, &p).await {
            subs(state).registry.with(id, |s| {
                if let Some(l) = s.links.get_mut(&p) {
                    l.tail = t;
                }
            });
        }
    }
    Some(())
}

pub async fn claim(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Res {
    let v = parse_json(&body)?;
    let worker = v["worker"]
        .as_str()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| SubError::bad("INVALID_REQUEST", "worker is required"))?
        .to_string();
    refresh(&state, &id).await.ok_or_else(SubError::not_found)?;
    let s = subs(&state);
    let out = s
        .registry
        .with(&id, |sub| {
            let now = Instant::now();
            let lease = sub.lease();
            let pending = sub.pending();
            let wake = match &mut sub.wake {
                Some(w) => {
                    if let Some(h) = &w.holder
                        && *h != worker
                        && w.lease_until > now
                    {
                        let mut e = SubError::new(
                            StatusCode::CONFLICT,
                            "ALREADY_CLAIMED",
                            "another worker holds this wake",
                        );
                        e.extra = Some(("current_holder", h.clone()));
                        e.generation = Some(w.generation);
                        return Err(e);
                    }
                    w.holder = Some(worker.clone());
                    w.lease_until = now + lease;
                    w.clone()
                }
                None if pending => sub.begin_wake(Some(worker.clone())),
                None => return Ok(None),
            };
            Ok(Some((wake, sub.wake_streams(), sub.config.lease_ttl_ms)))
        })
        .ok_or_else(SubError::not_found)??;
    let Some((wake, streams, ttl)) = out else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let token = s.keys.token(&json!({
        "sub": id, "wake_id": wake.wake_id, "generation": wake.generation, "scope": "ack",
        "exp": token_exp(ttl),
    }));
    Ok(Json(json!({
        "subscription_id": id,
        "wake_id": wake.wake_id,
        "generation": wake.generation,
        "token": token,
        "lease_ttl_ms": ttl,
        "streams": streams,
    }))
    .into_response())
}

pub async fn release(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let s = subs(&state);
    let claims = bearer(&headers)
        .and_then(|t| s.keys.verify_token(t))
        .filter(|c| c["sub"] == id.as_str())
        .ok_or_else(|| {
            SubError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "a valid subscription token is required",
            )
        })?;
    let v = parse_json(&body)?;
    let wake_id = v["wake_id"].as_str().unwrap_or_default();
    let generation = v["generation"].as_u64().unwrap_or(0);
    check_claims(&claims, wake_id, generation)?;
    s.registry
        .with(&id, |sub| match &mut sub.wake {
            Some(w) if w.wake_id == wake_id && w.generation == generation => {
                // The wake ends; pending work gets a new wake event.
                sub.wake = None;
                Ok(())
            }
            _ => Err(fenced()),
        })
        .ok_or_else(SubError::not_found)??;
    s.notify_sub(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Subscriptions {
    /// Asks the worker to look at one subscription again.
    pub fn notify_sub(&self, id: &str) {
        let _ = self.tx.try_send(format!("\0{id}"));
    }
}

/// The wake worker: applies stream changes to links and starts wakes;
/// a periodic tick expires leases and retries.
pub fn spawn_worker(state: AppState) {
    let Some(mut rx) = state.subs.take_receiver() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let ids = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                msg = rx.recv() => match msg {
                    None => return,
                    Some(m) => match m.strip_prefix('\0') {
                        Some(id) => vec![id.to_string()],
                        None => on_stream_change(&state, &m).await,
                    },
                },
                _ = tick.tick() => expire_leases(&state),
            };
            for id in ids {
                maybe_wake(&state, &id).await;
            }
        }
    });
}

async fn on_stream_change(state: &AppState, path: &str) -> Vec<String> {
    let ids = state.subs.registry.interested(path);
    if ids.is_empty() {
        return ids;
    }
    let Some(tail) = tail_of(state, path).await else {
        return ids;
    };
    for id in &ids {
        state.subs.registry.with(id, |s| {
            let glob = s.config.matches(path);
            let l = s.links.entry(path.to_string()).or_insert(Link {
                explicit: false,
                glob,
                acked: Offset::ZERO,
                tail,
            });
            l.tail = tail;
        });
    }
    ids
}

/// Expires leases; returns subscriptions that may need a new wake.
fn expire_leases(state: &AppState) -> Vec<String> {
    let now = Instant::now();
    let mut out = Vec::new();
    for id in state.subs.registry.live_ids() {
        state.subs.registry.with(&id, |s| {
            let expired = s.wake.as_ref().is_some_and(|w| w.lease_until <= now);
            if expired {
                match s.config.delivery {
                    // An unanswered webhook wake is retried with a new generation.
                    Delivery::Webhook { .. } => s.wake = None,
                    // A lapsed claim ends the wake; pending work is woken
                    // again. An unclaimed wake waits for a worker.
                    Delivery::PullWake { .. } => {
                        if s.wake.as_ref().is_some_and(|w| w.holder.is_some()) {
                            s.wake = None;
                        }
                    }
                }
            }
            if s.wake.is_none() && s.pending() {
                out.push(id.clone());
            }
        });
    }
    out
}

/// Starts a wake for `id` if it has pending streams and none outstanding.
async fn maybe_wake(state: &AppState, id: &str) {
    let started = state.subs.registry.with(id, |s| {
        if s.wake.is_some() || !s.pending() {
            return None;
        }
        let w: WakeState = s.begin_wake(None);
        Some((
            s.config.delivery.clone(),
            w,
            s.wake_streams(),
            s.base_url.clone(),
            s.config.lease_ttl_ms,
        ))
    });
    let Some(Some((delivery, wake, streams, base, ttl))) = started else {
        return;
    };
    match delivery {
        Delivery::Webhook { url } => {
            let token = state.subs.keys.token(&json!({
                "sub": id, "wake_id": wake.wake_id, "generation": wake.generation, "scope": "callback",
                "exp": token_exp(ttl),
            }));
            let body = json!({
                "subscription_id": id,
                "wake_id": wake.wake_id,
                "generation": wake.generation,
                "callback_url": format!("{base}__ds/subscriptions/{id}/callback"),
                "callback_token": token,
                "streams": streams,
            })
            .to_string();
            let state = state.clone();
            let id = id.to_string();
            tokio::spawn(async move { deliver(state, id, url, wake, Bytes::from(body)).await });
        }
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
            let req = AppendRequest {
                content_type: Some("application/json".into()),
                body: Bytes::from(event),
                close: false,
                stream_seq: None,
                producer: None,
                now: now_ms(),
            };
            let ws = wake_stream.clone();
            if let Err(e) = state.storage(move |s| s.append(&ws, req)).await {
                tracing::warn!(subscription = id, error = %e.detail, "could not append to wake stream");
            }
        }
    }
}

/// Delivers one webhook wake, retrying with backoff while the wake is
/// still current; `{"done": true}` in the answer acks the snapshot.
async fn deliver(state: AppState, id: String, url: String, wake: WakeState, body: Bytes) {
    // 1 s doubling to 60 s, with ±20% jitter (PROTOCOL.md §7.1).
    let mut backoff = Duration::from_secs(1);
    for attempt in 0..6 {
        let still_current = state
            .subs
            .registry
            .with(&id, |s| {
                s.wake.as_ref().is_some_and(|w| w.wake_id == wake.wake_id)
            })
            .unwrap_or(false);
        if !still_current {
            return;
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sig = state.subs.keys.signature_header(t, &body);
        match super::delivery::post(&url, &sig, body.clone()).await {
            Ok(answer) => {
                state.subs.registry.with(&id, |s| s.failed = false);
                if answer["done"] == true {
                    let next = state.subs.registry.ack(
                        &id,
                        &wake.wake_id,
                        wake.generation,
                        &wake.snapshot,
                        true,
                    );
                    if next == Ok(true) {
                        state.subs.notify_sub(&id);
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(subscription = id, attempt, error = %e, "webhook delivery failed");
                state.subs.registry.with(&id, |s| {
                    s.failed = true;
                    // Keep the wake alive while retrying.
                    let lease = s.lease();
                    if let Some(w) = s.wake.as_mut() {
                        w.lease_until = Instant::now() + backoff.mul_f64(1.2) + lease;
                    }
                });
                let jitter = 0.8 + rand::random::<f64>() * 0.4;
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
