//! The router in-process (no socket): an [`AppState`] over a fresh memory
//! backend, the router over it, and `oneshot` calls with their answers
//! read back. The one place router tests build their scaffolding.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::request::Builder;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;

use durable_streams::config::ServerConfig;
use durable_streams::http::AppState;
use durable_streams::notify::WakeHub;
use durable_streams::server::state;
use durable_streams::storage::Storage;
use durable_streams::storage::memory::MemoryStorage;

/// The state of a server with `config` over a fresh memory backend.
pub fn memory_state(config: ServerConfig) -> AppState {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    state(config, storage, hub)
}

/// The state of a server with `config` over `storage`, whose wakes go
/// through `hub`.
pub fn state_over(config: ServerConfig, storage: Arc<dyn Storage>, hub: Arc<WakeHub>) -> AppState {
    state(config, storage, hub)
}

/// The router over `st` (a clone: the caller keeps the state to inspect).
pub fn router(st: &AppState) -> Router {
    durable_streams::http::router(st.clone())
}

/// The router of a server with `config` over a fresh memory backend.
pub fn app_with(config: ServerConfig) -> Router {
    router(&memory_state(config))
}

/// The router with the defaults, but long-polls held 5 s (tests that wait
/// for a long-poll's timeout run with paused time).
pub fn app() -> Router {
    app_with(ServerConfig {
        long_poll_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    })
}

/// Sends `req` through the router.
pub async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone()
        .oneshot(req)
        .await
        .expect("router is infallible")
}

/// A request to `uri` with a `Host` (so `Location` headers are absolute).
pub fn req(method: &str, uri: &str) -> Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost:4437")
}

/// The whole body of an answer.
pub async fn body(res: Response<Body>) -> Bytes {
    res.into_body().collect().await.expect("body").to_bytes()
}

/// The whole body of an answer, as UTF-8 text.
pub async fn text(res: Response<Body>) -> String {
    String::from_utf8(body(res).await.to_vec()).expect("UTF-8 body")
}

/// Header `name` of an answer, when present and visible ASCII.
pub fn header<'a>(res: &'a Response<Body>, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The `code` of a problem+json answer (checking its content type).
pub async fn problem_code(res: Response<Body>) -> String {
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = serde_json::from_slice(&body(res).await).expect("problem JSON");
    v["code"].as_str().expect("problem code").to_string()
}
