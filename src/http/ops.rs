//! Operations endpoints and the per-request observer: `/healthz`,
//! `/readyz`, `/metrics`, and the middleware that counts every request.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Level;

use super::AppState;
use super::error::ApiError;
use crate::config::RequestLog;
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
    let backend = state.storage.backend();
    let body = state
        .metrics
        .render(backend.stream_count(), &backend.gauges());
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
/// logged when they start; `latency_ms` is the time to the head), at the
/// level `request_log` gives: 5xx answers at `warn`; by default the rest
/// at `debug`; with `all`, at `info`, but probes and scrapes stay at debug
/// so they do not drown the rest. Only the method,
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

/// The level of a request's log line under `request_log` (`None`: no line).
fn request_level(mode: RequestLog, route: Route, status: u16) -> Option<Level> {
    Some(match mode {
        RequestLog::Off => return None,
        RequestLog::Errors | RequestLog::All if status >= 500 => Level::WARN,
        RequestLog::All if !matches!(route, Route::Health | Route::Metrics) => Level::INFO,
        _ => Level::DEBUG,
    })
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
    let Some(level) = request_level(state.config.request_log, route, status) else {
        return;
    };
    // One callsite per level: `tracing` caches whether each is enabled, so a
    // disabled line costs a load and a branch, and its fields are never built.
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(target: "durable_streams::request", $level, %method, %path, status, latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request")
        };
    }
    match level {
        Level::WARN => line!(Level::WARN),
        Level::INFO => line!(Level::INFO),
        _ => line!(Level::DEBUG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_by_mode_route_and_status() {
        use RequestLog::*;
        let stream = Route::Stream;
        assert_eq!(request_level(Errors, stream, 201), Some(Level::DEBUG));
        assert_eq!(request_level(Errors, stream, 404), Some(Level::DEBUG));
        assert_eq!(request_level(Errors, stream, 503), Some(Level::WARN));
        assert_eq!(request_level(Errors, Route::Health, 503), Some(Level::WARN));
        assert_eq!(request_level(All, stream, 201), Some(Level::INFO));
        assert_eq!(request_level(All, Route::Metrics, 200), Some(Level::DEBUG));
        assert_eq!(request_level(All, Route::Health, 200), Some(Level::DEBUG));
        assert_eq!(request_level(All, stream, 500), Some(Level::WARN));
        assert_eq!(request_level(Off, stream, 500), None);
    }
}
