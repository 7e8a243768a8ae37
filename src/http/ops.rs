//! Operations endpoints and the per-request observer: `/healthz`,
//! `/readyz`, `/metrics`, and the middleware that counts every request.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::metrics::{Method, Route};
use crate::storage::{StorageError, now_ms};

/// A name no stream can have (`__ds` is reserved), so the readiness probe
/// never touches client data.
const PROBE: &str = "__ds/readyz";

/// `GET /healthz`: the process is up and answering.
pub async fn healthz() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

/// `GET /readyz`: storage answers a cheap call and the server is not
/// shutting down. Not counted as a storage error when it fails: the 503 is
/// the report.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let unready = |detail: &str| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", detail).into_response()
    };
    if state.shutdown.is_cancelled() {
        return unready("the server is shutting down");
    }
    // Through the handle, not `AppState::storage`: a failed probe is not a
    // storage error to count.
    let answer = state
        .storage
        .run(|s| s.head(PROBE, now_ms()).map(drop))
        .await;
    match answer {
        Ok(_) | Err(StorageError::NotFound | StorageError::Gone) => {
            ([(header::CACHE_CONTROL, "no-store")], "ready\n").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe: storage is not answering");
            unready("storage is not answering")
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.storage.backend().stream_count());
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Counts every request by method, route kind and status, and writes one
/// log line for it, once its response head is ready (live responses are
/// logged when they start; `latency_ms` is the time to the head). Probes
/// and scrapes log at debug so they do not drown the rest. Only the method,
/// path, status and latency are logged: never headers (Authorization), never
/// the query.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    record(&state, &method, &path, res.status(), started);
    res
}

/// Counts and logs one request (see [`observe`]); the router's fast path
/// calls it directly.
pub fn record(
    state: &AppState,
    method: &axum::http::Method,
    path: &str,
    status: StatusCode,
    started: Instant,
) {
    let route = Route::of(path);
    let status = status.as_u16();
    state.metrics.request(Method::of(method), route, status);
    if matches!(route, Route::Health | Route::Metrics) {
        tracing::debug!(target: "durable_streams::request", %method, %path, status, latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request");
    } else {
        tracing::info!(target: "durable_streams::request", %method, %path, status, latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request");
    }
}
