//! Subscription requests on a node that does not lead a shared store are
//! forwarded to the node that does (see [`Cluster`](crate::storage::Cluster)).
//!
//! The subscription engine (registry, leases, webhook deliveries) runs on
//! exactly one node at a time, so that every request about a subscription
//! sees the same working copy and every wake is delivered by one node. A
//! follower passes such requests through unchanged (method, path, headers
//! including `Host`, body) to the leader's advertised URL and streams the
//! answer back, so the client cannot tell which node answered. While no
//! node leads (a takeover in progress), the answer is 503 with
//! `Retry-After`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::AppState;
use super::error::ApiError;
use crate::subscriptions::run_storage;

/// Marks a forwarded request, so that it is never forwarded twice.
static FORWARDED: HeaderName = HeaderName::from_static("x-ds-forwarded");
/// Longest wait for the leader's answer head.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

fn unavailable(detail: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NO_LEADER", detail)
        .with_header(header::RETRY_AFTER, 1)
        .into_response()
}

/// Serves the request here when this node runs the subscription engine,
/// forwards it to the node that does otherwise.
pub async fn to_leader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.storage.cluster() else {
        return next.run(req).await;
    };
    if cluster.leadership().is_some() {
        return next.run(req).await;
    }
    if req.headers().contains_key(&FORWARDED) {
        return unavailable("the subscription leader changed; retry");
    }
    let leader = run_storage(&state.storage, |s| match s.cluster() {
        Some(c) => c.leader_url(),
        None => Ok(None),
    })
    .await;
    let base = match leader {
        Ok(Some(url)) => url,
        Ok(None) => return unavailable("no node leads the subscriptions yet; retry"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = match format!("{}{path}", base.trim_end_matches('/')).parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => return unavailable("the leader's advertised URL is not usable"),
    };
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts
        .headers
        .insert(FORWARDED.clone(), header::HeaderValue::from_static("1"));
    let sent = tokio::time::timeout(TIMEOUT, client().request(Request::from_parts(parts, body)));
    match sent.await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            for name in &HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, leader = base, "cannot reach the subscription leader");
            unavailable("the subscription leader cannot be reached; retry")
        }
        Err(_) => unavailable("the subscription leader did not answer in time; retry"),
    }
}
