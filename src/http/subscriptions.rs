//! The subscription APIs under `/v1/stream/__ds` (PROTOCOL.md §6–7): thin
//! handlers over the [subscription engine](crate::subscriptions). Every
//! handler that changes a subscription saves it ([`Subscriptions::save`])
//! before answering, so what a client was told survives a crash.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{AppState, forward};
use crate::offset::Offset;
use crate::storage::{StorageError, now_ms};
use crate::subscriptions::worker::{self, token_exp};
use crate::subscriptions::{AckError, Config, ConfigConflict, Delivery, Link, Sub, Subscriptions};
use crate::subscriptions::{glob, ssrf};

/// The subscription routes. The engine runs on one node of a shared store:
/// the others forward these routes to it ([`forward::to_leader`]).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/stream/__ds/jwks.json", get(jwks))
        .route(
            "/v1/stream/__ds/subscriptions/{id}",
            get(get_one).put(put).delete(delete),
        )
        .route(
            "/v1/stream/__ds/subscriptions/{id}/streams",
            post(add_streams),
        )
        .route(
            "/v1/stream/__ds/subscriptions/{id}/streams/{*path}",
            axum::routing::delete(remove_stream),
        )
        .route("/v1/stream/__ds/subscriptions/{id}/callback", post(ack))
        .route("/v1/stream/__ds/subscriptions/{id}/claim", post(claim))
        .route("/v1/stream/__ds/subscriptions/{id}/ack", post(ack))
        .route("/v1/stream/__ds/subscriptions/{id}/release", post(release))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            forward::to_leader,
        ))
}

/// Longest subscription id accepted, in bytes.
const MAX_ID_BYTES: usize = 256;

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
    /// The subscription could not be saved: the change is not durable, so
    /// the client must retry. Details are logged, not returned.
    fn unsaved(id: &str, e: StorageError) -> Self {
        tracing::error!(subscription = id, error = %e, "cannot save subscription");
        match e {
            StorageError::NoSpace => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "INSUFFICIENT_STORAGE",
                "no space left to save the subscription",
            ),
            _ => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the subscription could not be saved; retry",
            ),
        }
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

/// The stream's incarnation and tail, `None` when it does not exist.
async fn tail_of(state: &AppState, path: &str) -> Option<(u64, Offset)> {
    let p = path.to_string();
    state
        .storage(move |s| s.head(&p, now_ms()))
        .await
        .ok()
        .map(|i| (i.id, i.tail))
}

async fn save(s: &Subscriptions, id: &str) -> Result<(), SubError> {
    s.save(id).await.map_err(|e| SubError::unsaved(id, e))
}

fn check_id(id: &str) -> Result<(), SubError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(SubError::bad(
            "INVALID_REQUEST",
            format!("subscription ids are 1 to {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(())
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
    check_id(&id)?;
    let config = parse_config(&parse_json(&body)?)?;
    let mut links = BTreeMap::new();
    if let Some(pattern) = &config.pattern {
        let listed = state
            .storage(|s| s.list_streams())
            .await
            .map_err(|e| SubError::new(e.status, e.code, e.detail))?;
        let now = now_ms();
        for (name, meta) in listed {
            if glob::matches(pattern, &name) && !meta.is_hidden(now) {
                links.insert(name, Link::new(false, meta.tail, meta.id));
            }
        }
    }
    for p in &config.streams {
        let (inc, tail) = tail_of(&state, p).await.unwrap_or((0, Offset::ZERO));
        links
            .entry(p.clone())
            .or_insert(Link::new(true, tail, inc))
            .explicit = true;
    }
    let created_at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let sub = Sub::new(id.clone(), config, created_at, base_url(&headers), links);
    let s = subs(&state);
    let status = match s.registry.put(sub) {
        Ok(true) => StatusCode::CREATED,
        Ok(false) => StatusCode::OK,
        Err(ConfigConflict) => {
            return Err(SubError::new(
                StatusCode::CONFLICT,
                "SUBSCRIPTION_EXISTS",
                "a subscription with this id exists with a different configuration",
            ));
        }
    };
    save(s, &id).await?;
    let body = s
        .registry
        .with(&id, |sub| sub.to_json(&s.keys.kid))
        .ok_or_else(SubError::not_found)?;
    Ok((status, Json(body)).into_response())
}

pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> Res {
    let s = subs(&state);
    let body = s
        .registry
        .with(&id, |sub| sub.to_json(&s.keys.kid))
        .ok_or_else(SubError::not_found)?;
    Ok(Json(body).into_response())
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Res {
    let s = subs(&state);
    if !s.registry.delete(&id) {
        return Err(SubError::not_found());
    }
    // The tombstone is durable before the 204: a restart must not revive it.
    save(s, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
        let (inc, t) = tail_of(&state, &p).await.unwrap_or((0, Offset::ZERO));
        tails.push((p, inc, t));
    }
    let s = subs(&state);
    s.registry
        .update(&id, |sub| {
            for (p, inc, t) in tails {
                sub.link(&p, Link::new(true, t, inc)).explicit = true;
            }
        })
        .ok_or_else(SubError::not_found)?;
    save(s, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn remove_stream(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Res {
    let path = path.trim_matches('/').to_string();
    let s = subs(&state);
    s.registry
        .update(&id, |sub| {
            let keep_glob = sub.config.matches(&path);
            let remove = match sub.link_mut(&path) {
                Some(l) => {
                    l.explicit = false;
                    !(l.glob || keep_glob)
                }
                None => false,
            };
            if remove {
                sub.unlink(&path);
            }
        })
        .ok_or_else(SubError::not_found)?;
    save(s, &id).await?;
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
    let (v, wake_id, generation) = fenced_request(s, id, headers, body)?;
    let wake_id = wake_id.as_str();
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
    let now = s.clock.now_ms();
    match s.registry.ack(id, wake_id, generation, &acks, done, now) {
        Ok(next) => {
            // Cursors are durable before the worker is told they moved.
            save(s, id).await?;
            if next && done {
                s.notify_sub(id);
            }
            Ok(Json(json!({"ok": true, "next_wake": next})).into_response())
        }
        Err(AckError::Fenced) => Err(fenced()),
        Err(AckError::NotFound) => Err(SubError::not_found()),
    }
}

/// The common start of a callback, an ack and a release: a valid token
/// scoped to subscription `id`, a JSON body, and that body's `wake_id` and
/// `generation` matching the token's. Returns the body and those two.
fn fenced_request(
    s: &Subscriptions,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, String, u64), SubError> {
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
    let wake_id = v["wake_id"].as_str().unwrap_or_default().to_string();
    let generation = v["generation"].as_u64().unwrap_or(0);
    check_claims(&claims, &wake_id, generation)?;
    Ok((v, wake_id, generation))
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

fn fenced() -> SubError {
    SubError::new(
        StatusCode::CONFLICT,
        "FENCED",
        "this wake is no longer current",
    )
}

/// `POST …/{id}/callback` (a webhook receiver's answer) and `POST
/// …/{id}/ack` (a pull-wake worker's): the same fenced ack, see
/// [`apply_ack`].
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
        .with(id, |s| s.links().keys().cloned().collect())?;
    for p in paths {
        let seen = tail_of(state, &p).await;
        subs(state)
            .registry
            .update(id, |s| worker::apply(s, &p, seen));
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
        .update(&id, |sub| {
            let now = s.clock.now_ms();
            let lease = sub.lease_ms();
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
                None if pending => sub.begin_wake(Some(worker.clone()), now),
                None => return Ok(None),
            };
            Ok(Some((wake, sub.wake_streams(), sub.config.lease_ttl_ms)))
        })
        .ok_or_else(SubError::not_found)??;
    let Some((wake, streams, ttl)) = out else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    // The claim (holder, lease, maybe a new generation) is durable before
    // its token is handed out.
    save(s, &id).await?;
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
    let (_, wake_id, generation) = fenced_request(s, &id, &headers, &body)?;
    s.registry
        .update(&id, |sub| match &mut sub.wake {
            Some(w) if w.wake_id == wake_id && w.generation == generation => {
                // The wake ends; pending work gets a new wake event.
                sub.wake = None;
                Ok(())
            }
            _ => Err(fenced()),
        })
        .ok_or_else(SubError::not_found)??;
    save(s, &id).await?;
    s.notify_sub(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
