//! The HTTP surface: routing, shared state, and the helpers handlers share.
//!
//! Request flow: [`router`] → a thin handler in [`write`](mod@write), [`read`] or
//! [`sse`] → parsing in [`headers`] → [`Storage`] (off the async workers when
//! the backend may block) → response. [`error::ApiError`] is the single place
//! errors become HTTP.

pub mod auth;
pub mod compress;
pub mod error;
pub mod fields;
pub mod forward;
pub mod front;
pub mod h1;
pub mod header_names;
pub mod headers;
pub mod jwks;
pub mod jwt;
pub mod limit;
pub mod live;
#[cfg(test)]
mod live_heap_tests;
pub mod ops;
pub mod park;
pub mod proxy;
pub mod proxy_stream;
pub mod read;
pub mod secure;
pub mod serve;
pub mod sock;
pub mod sse;
pub mod subscriptions;
pub mod transport;
pub mod trim;
pub mod write;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::notify::WakeHub;
use crate::storage::handle::StorageHandle;
use crate::storage::{
    AppendOutcome, AppendRequest, ReadOutcome, ReadRequest, Storage, StorageError, StreamInfo,
};
use crate::subscriptions::{Subscriptions, worker};
use error::ApiError;

pub use crate::MOUNT;

/// State shared by every handler; cheap to clone: one reference count
/// (each long-poll and SSE request clones it, and ten counts bumped and
/// dropped on shared cache lines were 1.3 % of a long-poll's server time).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// The one way to call the backend: it decides where each call runs.
    pub storage: StorageHandle,
    pub hub: Arc<WakeHub>,
    pub config: Arc<ServerConfig>,
    /// Cancelled when the server shuts down; live reads finish early.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// The subscription engine (registry, signing key, wake worker inbox).
    pub subs: Arc<Subscriptions>,
    /// Verifies JWT bearer tokens, when `[auth.jwt]` configures a key.
    pub jwt: Option<Arc<jwt::Verifier>>,
    /// The per-client limits, when `[rate_limit]` sets any.
    pub limiter: Option<Arc<limit::Limiter>>,
    /// The Proxy Protocol engine (`[proxy]`; answers 404 while disabled).
    pub proxy: Arc<crate::proxy::Proxy>,
}

impl AppState {
    /// Runs a storage call through the [`StorageHandle`]; failures become
    /// [`ApiError`]s, counted by their error code.
    pub async fn storage<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    {
        let result = self.storage.run(f).await;
        self.counted(result)
    }

    /// Reads through the [`StorageHandle`] (on this worker when the backend
    /// can answer without blocking); failures as in [`AppState::storage`].
    pub async fn read(&self, name: String, req: ReadRequest) -> Result<ReadOutcome, ApiError> {
        let result = self.storage.read(name, req).await;
        self.counted(result)
    }

    /// Appends through the [`StorageHandle`] (which stages the append when
    /// the backend can); failures as in [`AppState::storage`].
    pub async fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, ApiError> {
        let result = self.storage.append(name, req).await;
        self.counted(result)
    }

    fn counted<T>(&self, result: Result<T, StorageError>) -> Result<T, ApiError> {
        result.map_err(|e| {
            let e = ApiError::from(e);
            self.metrics.storage_error(e.code);
            e
        })
    }
}

/// The wake worker runs with the server's engine and shutdown signal.
impl From<AppState> for worker::Context {
    fn from(state: AppState) -> Self {
        worker::Context {
            subs: Arc::clone(&state.subs),
            shutdown: state.shutdown.clone(),
        }
    }
}

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(allowed_origins(&state.config.cors_origins))
        .allow_methods(AllowMethods::list([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]))
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(headers::EXPOSED.to_vec())
        .max_age(std::time::Duration::from_secs(86400))
        // Preflights add the `Access-Control-Request-*` names (`cors_answer`).
        .vary([header::ORIGIN]);
    Router::new()
        .merge(subscriptions::routes(state.clone()))
        .route("/v1/stream/__ds/trim/{*path}", post(trim::trim))
        .route("/v1/stream/__ds", any(reserved))
        .route("/v1/stream/__ds/{*rest}", any(reserved))
        .route("/v1/stream/{*path}", any(stream))
        .route(proxy::PROXY_MOUNT, any(proxy::root))
        .route("/v1/proxy/{id}", any(proxy_stream::one))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside CORS: preflights never need a token, and 401/403 answers
        // still carry the CORS headers browsers need to read them.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(cors)
        .layer(axum::middleware::from_fn(cors_answer))
        // Compresses only catch-up reads (see `compress`); the next layer
        // sees the encoded response and weakens its ETag.
        .layer(compress::layer(state.config.compression_min_bytes))
        .layer(axum::middleware::map_response(compress::weaken_etag))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ))
        // Outermost: sees every answer, including CORS preflights.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::observe,
        ))
        .with_state(state)
}

/// What the router's answers take from tower-http's CORS layer, amended:
/// preflights answer `204 No Content` (the layer answers them `200` with an
/// empty body: nothing follows, and some proxies and caches treat an empty
/// 200 as content); an answer to a request without an `Origin` keeps no
/// `access-control-allow-origin` or `access-control-expose-headers` (only
/// browsers read them, and they send an `Origin` cross-origin; see
/// `front::Cors`, which answers the fast path's requests the same way);
/// and only a preflight's answer varies with the `Access-Control-Request-*`
/// headers too (the layer names only `Origin`, as the fast path does).
async fn cors_answer(req: Request, next: axum::middleware::Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let origin = req.headers().contains_key(header::ORIGIN);
    let mut res = next.run(req).await;
    if preflight && res.status() == StatusCode::OK {
        *res.status_mut() = StatusCode::NO_CONTENT;
    }
    let h = res.headers_mut();
    if !origin {
        h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        h.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    }
    if preflight {
        // What a preflight's answer (methods, mirrored headers) depends on
        // besides the `Origin` the layer names.
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "access-control-request-method, access-control-request-headers",
            ),
        );
    }
    res
}

/// `*` anywhere in the list allows any origin; otherwise exactly the listed
/// ones (values were checked when the configuration was loaded).
fn allowed_origins(origins: &[String]) -> AllowOrigin {
    if origins.iter().any(|o| o == "*") {
        return AllowOrigin::any();
    }
    AllowOrigin::list(
        origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect::<Vec<_>>(),
    )
}

/// Dispatches a request on a stream URL by method.
async fn stream(State(state): State<AppState>, req: Request) -> Response {
    dispatch(&state, req).await
}

/// The stream handler proper, shared by the router and its fast path.
pub(crate) async fn dispatch(state: &AppState, req: Request) -> Response {
    let path = req.uri().path();
    let raw = path.strip_prefix(MOUNT).unwrap_or(path);
    let name = match headers::stream_name(raw, state.config.limits.max_name_bytes) {
        Ok(n) => n.into_owned(),
        Err(e) => return e.into_response(),
    };
    let result = match *req.method() {
        Method::GET => read_stream(state, name, req).await,
        Method::HEAD => write::head(state, name).await,
        Method::PUT => {
            let subs = Arc::clone(&state.subs);
            let changed = name.to_string();
            let res = write::put(state, name, req).await;
            // Backends wake (and so tell the subscription engine) on
            // appends, closes, deletes and expiry, but not on creation: a
            // stream created with data needs this hint. Never blocks.
            if res.as_ref().is_ok_and(|r| r.status().is_success()) {
                subs.notify(&changed);
            }
            res
        }
        Method::POST => write::post(state, name, req).await,
        Method::DELETE => write::delete(state, name).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "streams support GET, HEAD, PUT, POST and DELETE",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET` on a stream, by live mode: SSE in [`sse`], catch-up and long-poll
/// in [`read`].
pub(crate) async fn read_stream(
    state: &AppState,
    name: String,
    req: Request,
) -> Result<Response, ApiError> {
    let query = headers::read_query(req.uri().query())?;
    let offer = req.extensions().get::<park::ParkOffer>().is_some();
    match query.live {
        headers::Live::Sse => sse::serve(state, name, query, offer).await,
        headers::Live::CatchUp => read::catch_up(state, name, query, req.headers()).await,
        headers::Live::LongPoll => read::long_poll(state, name, query, offer).await,
    }
}

/// The `__ds` prefix is reserved for the subscription APIs; it never names a
/// stream, and paths there that are not an API are not found.
async fn reserved() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "RESERVED_PATH",
        "paths under __ds are reserved for the subscription APIs",
    )
    .into_response()
}

/// A method a route does not serve (the subscription APIs): still a
/// problem document, like every other error.
async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this resource does not support that method",
    )
    .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "streams live under /v1/stream/{name}",
    )
    .into_response()
}

/// Starts a response carrying a stream's standard headers.
pub fn stream_response(status: StatusCode, info: &StreamInfo) -> axum::http::response::Builder {
    let mut b = response(status)
        .header(header::CONTENT_TYPE, info.content_type.as_str())
        .header(headers::STREAM_NEXT_OFFSET, info.tail.to_string());
    if info.closed {
        b = b.header(headers::STREAM_CLOSED, "true");
    }
    b
}

/// Room for every header a stream answer gets: its own (up to ~6) and
/// those the fast path adds (CORS and security, 5).
pub(crate) const RESPONSE_HEADERS: usize = 12;

/// A response builder whose header map has room for all of an answer's
/// headers: a map that fills up is rehashed into a larger one, which cost
/// ~750 instructions per append (callgrind, BENCHMARKS.md).
pub fn response(status: StatusCode) -> axum::http::response::Builder {
    let mut b = Response::builder().status(status);
    if let Some(h) = b.headers_mut() {
        h.reserve(RESPONSE_HEADERS);
    }
    b
}

/// Finishes a builder; a header value that cannot be encoded is a bug, not
/// a client error, so it is logged and answered 500.
pub fn finish(builder: axum::http::response::Builder, body: Body) -> Result<Response, ApiError> {
    builder.body(body).map_err(unbuildable)
}

/// A response that could not be built (a header value the server made
/// that cannot be encoded): a bug, logged and answered 500.
pub(crate) fn unbuildable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "could not build response");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "could not build the response",
    )
}
