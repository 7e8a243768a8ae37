//! Subscription requests on a node that does not lead a shared store are
//! forwarded to the node that does (see [`Cluster`](crate::storage::Cluster)).
//!
//! The subscription engine (registry, leases, webhook deliveries) runs on
//! exactly one node at a time, so that every request about a subscription
//! sees the same working copy and every wake is delivered by one node. A
//! follower passes such requests through unchanged (method, path, headers
//! including `Host`, body) to the leader's advertised URL and streams the
//! answer back, so the client cannot tell which node answered. While no
//! node can be reached as the leader (a takeover in progress) the request
//! waits a few seconds for one, then answers 503 with `Retry-After`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::AppState;
use super::error::ApiError;

/// Marks a forwarded request, so that it is never forwarded twice.
static FORWARDED: HeaderName = HeaderName::from_static("x-ds-forwarded");
/// Longest wait for the leader's answer head.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a reachable leader (a takeover takes about a second).
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Largest forwarded request body (subscription requests are small JSON).
const MAX_BODY: usize = 1 << 20;

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
/// forwards it to the node that does otherwise. While no node can be
/// reached as the leader (at start, or during a takeover) it waits up to
/// [`TAKEOVER_WAIT`] for one before answering 503.
pub async fn to_leader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.storage.backend().cluster() else {
        return next.run(req).await;
    };
    if let Some(term) = cluster.leadership() {
        if let Err(e) = state.subs.adopt_term(term).await {
            return ApiError::from(e).into_response();
        }
        return next.run(req).await;
    }
    if req.headers().contains_key(&FORWARDED) {
        return unavailable("the subscription leader changed; retry");
    }
    // Buffered, so that it can be sent again to a new leader.
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "subscription requests are at most 1 MiB",
            )
            .into_response();
        }
    };
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts
        .headers
        .insert(FORWARDED.clone(), header::HeaderValue::from_static("1"));
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        if let Some(term) = cluster.leadership() {
            if let Err(e) = state.subs.adopt_term(term).await {
                return ApiError::from(e).into_response();
            }
            parts.headers.remove(&FORWARDED);
            return next.run(Request::from_parts(parts, Body::from(body))).await;
        }
        match try_forward(&state, &parts, body.clone()).await {
            Ok(res) => return res,
            Err(why) if tokio::time::Instant::now() >= deadline => return unavailable(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One attempt at the current leader; `Err` when none could be reached
/// (nothing was delivered, so trying again is safe).
async fn try_forward(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, &'static str> {
    let leader = state
        .storage
        .run(|s| match s.cluster() {
            Some(c) => c.leader_url(),
            None => Ok(None),
        })
        .await;
    let base = match leader {
        Ok(Some(url)) => url,
        Ok(None) => return Err("no node leads the subscriptions yet; retry"),
        Err(_) => return Err("the database is unavailable; retry"),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse::<Uri>()
        .map_err(|_| "the leader's advertised URL is not usable")?;
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    match tokio::time::timeout(TIMEOUT, client().request(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            for name in &HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(error = %e, leader = base, "subscription leader unreachable");
            Err("the subscription leader cannot be reached; retry")
        }
        // Sent, perhaps acted on: not repeated.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, leader = base, "subscription leader failed mid-request");
            Ok(unavailable("the subscription leader failed; retry"))
        }
        Err(_) => Ok(unavailable(
            "the subscription leader did not answer in time; retry",
        )),
    }
}
