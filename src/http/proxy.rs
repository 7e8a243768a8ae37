//! The Proxy Protocol's HTTP surface (`/v1/proxy`, see PROTOCOL.md):
//! create here; read, HEAD, abort and delete in [`super::proxy_stream`].
//! Errors use the spec's shape, `{"error":{"code","message"}}` (section
//! 11), through [`ProxyError`]. The engine is [`crate::proxy`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::{AppState, auth};
use crate::metrics::proxy::UpstreamError;
use crate::proxy::upstream::{self, SendError, UPSTREAM_METHOD, UPSTREAM_URL};
use crate::proxy::{self as engine, pipe};
use crate::storage::{CreateRequest, Expiry, now_ms};
use crate::subscriptions::ssrf;

/// Where the proxy is mounted.
pub const PROXY_MOUNT: &str = "/v1/proxy";
/// Response header: the upstream response's content type.
pub const UPSTREAM_CONTENT_TYPE: &str = "upstream-content-type";
/// Response header: the upstream's status, on `UPSTREAM_ERROR`.
pub const UPSTREAM_STATUS: &str = "upstream-status";

/// An error answered by the proxy, in the spec's JSON shape.
#[derive(Debug)]
pub struct ProxyError(pub ApiError);

impl ProxyError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ProxyError(ApiError::new(status, code, message))
    }
}

impl From<ApiError> for ProxyError {
    fn from(e: ApiError) -> Self {
        ProxyError(e)
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::json!({"error": {"code": e.code, "message": e.detail}});
        let mut res = (e.status, body.to_string()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in e.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        res
    }
}

pub type ProxyResult = Result<Response, ProxyError>;

/// 404 while `[proxy] enabled` is false: the route does not exist.
pub fn enabled(state: &AppState) -> Result<(), ProxyError> {
    if state.config.proxy.enabled {
        Ok(())
    } else {
        Err(ProxyError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the proxy is not enabled on this server ([proxy] enabled)",
        ))
    }
}

/// Service authentication (spec section 9.1) for `name`, with the spec's
/// codes: `MISSING_SECRET` without a token, `INVALID_SECRET` with a bad
/// one; a token without the write scope stays `403 INSUFFICIENT_SCOPE`.
pub fn service_auth(state: &AppState, req: &Request, name: &str) -> Result<(), ProxyError> {
    auth::service(state, req.uri(), req.headers(), name)
        .map(|_| ())
        .map_err(|e| {
            if e.status != StatusCode::UNAUTHORIZED {
                return ProxyError(e);
            }
            let code = if auth::has_credential(req.uri(), req.headers()) {
                "INVALID_SECRET"
            } else {
                "MISSING_SECRET"
            };
            ProxyError(ApiError { code, ..e })
        })
}

/// `/v1/proxy`: `POST` creates; anything else is 405.
pub async fn root(State(state): State<AppState>, req: Request) -> Response {
    let res = match *req.method() {
        Method::POST => create(&state, req).await,
        _ => Err(ProxyError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "POST creates a proxy stream here",
        )),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

fn bad(code: &'static str, message: impl Into<String>) -> ProxyError {
    ProxyError::new(StatusCode::BAD_REQUEST, code, message)
}

fn refused(message: impl Into<String>) -> ProxyError {
    ProxyError::new(StatusCode::FORBIDDEN, "UPSTREAM_NOT_ALLOWED", message)
}

/// The upstream target and method of a create request, checked against
/// the allowlist and the SSRF rules.
fn target(state: &AppState, headers: &HeaderMap) -> Result<(ssrf::Target, Method), ProxyError> {
    let url = headers
        .get(UPSTREAM_URL)
        .ok_or_else(|| {
            bad(
                "MISSING_UPSTREAM_URL",
                "send the upstream's URL in Upstream-URL",
            )
        })?
        .to_str()
        .map_err(|_| bad("INVALID_UPSTREAM_URL", "Upstream-URL must be ASCII"))?;
    let method = headers
        .get(UPSTREAM_METHOD)
        .ok_or_else(|| {
            bad(
                "MISSING_UPSTREAM_METHOD",
                "send the upstream request's method in Upstream-Method",
            )
        })?
        .to_str()
        .ok()
        .and_then(upstream::method)
        .ok_or_else(|| {
            bad(
                "INVALID_UPSTREAM_METHOD",
                "Upstream-Method must be GET, POST, PUT, PATCH or DELETE",
            )
        })?;
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| bad("INVALID_UPSTREAM_URL", "Upstream-URL is not a valid URL"))?;
    if uri.authority().is_none() || !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad(
            "INVALID_UPSTREAM_URL",
            "Upstream-URL must be an absolute http:// or https:// URL",
        ));
    }
    let target = ssrf::parse(url).map_err(|why| refused(format!("upstream refused: {why}")))?;
    if !state.proxy.allows(&target) {
        return Err(refused(
            "Upstream-URL matches no entry of the proxy allowlist",
        ));
    }
    Ok((target, method))
}

/// `POST /v1/proxy` (spec section 4.1).
async fn create(state: &AppState, req: Request) -> ProxyResult {
    enabled(state)?;
    service_auth(state, &req, "__ds/proxy")?;
    let (target, method) = target(state, req.headers())?;
    let headers = upstream::forward_headers(req.headers(), &target);
    let limit = state.config.limits.max_body_bytes;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ProxyError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the request body is larger than {limit} bytes or was cut off"),
            )
        })?;
    let cfg = &state.config.proxy;
    let proxy = &state.proxy;
    let metrics = &state.metrics.proxy;
    let res = upstream::send(
        &proxy.transport,
        &target,
        method,
        headers,
        body,
        cfg.header_timeout,
    )
    .await
    .map_err(|e| match e {
        SendError::Timeout => {
            metrics.upstream_error(UpstreamError::Timeout);
            ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                "the upstream sent no response headers within [proxy] header_timeout",
            )
        }
        SendError::Refused => {
            refused("the upstream's host resolves only to local network addresses")
        }
        SendError::Unreachable(why) => {
            metrics.upstream_error(UpstreamError::Unreachable);
            tracing::info!(host = %target.host, error = %why, "proxy upstream unreachable");
            ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNREACHABLE",
                format!("the upstream could not be reached: {why}"),
            )
        }
    })?;
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status.is_redirection() {
        metrics.upstream_error(UpstreamError::Redirect);
        return Err(bad("REDIRECT_NOT_ALLOWED", "Proxy cannot follow redirects"));
    }
    if !status.is_success() {
        metrics.upstream_error(UpstreamError::Status);
        let body = upstream::error_body(res.into_body(), cfg.header_timeout).await;
        let mut out = Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .header(UPSTREAM_STATUS, status.as_u16())
            .header(header::CACHE_CONTROL, "no-store");
        if let Some(ct) = content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            out = out.header(header::CONTENT_TYPE, ct);
        }
        return Ok(super::finish(out, Body::from(body))?);
    }
    let id = engine::new_id();
    let name = engine::stream_name(&id);
    let stream_type = engine::stream_type(content_type.as_deref());
    let now = now_ms();
    let expires = now / 1000 + cfg.url_ttl.as_secs().max(1);
    let mut create = CreateRequest::new(Some(&stream_type), Vec::new(), now);
    create.expiry = Some(Expiry::At(expires.saturating_mul(1000)));
    let storage_error = || {
        ProxyError::new(
            StatusCode::BAD_GATEWAY,
            "STORAGE_ERROR",
            "the stream for the upstream response could not be created",
        )
    };
    let key = proxy.key(&state.storage).await.map_err(|e| {
        tracing::error!(error = %e, "proxy URL signing key unavailable");
        storage_error()
    })?;
    {
        let name = name.clone();
        state
            .storage(move |s| s.create(&name, create))
            .await
            .map_err(|_| storage_error())?;
    }
    let location = format!(
        "{PROXY_MOUNT}/{id}?expires={expires}&signature={}",
        key.sign(&id, expires)
    );
    let pipe = pipe::Pipe {
        storage: state.storage.clone(),
        metrics: Arc::clone(&state.metrics),
        name,
        content_type: stream_type.clone(),
        idle_timeout: cfg.body_idle_timeout,
        abort: CancellationToken::new(),
        shutdown: state.shutdown.clone(),
    };
    proxy.spawn(id, pipe, res.into_body());
    let out = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, location)
        .header(UPSTREAM_CONTENT_TYPE, engine::upstream_type(&stream_type))
        .header(header::CACHE_CONTROL, "no-store");
    Ok(super::finish(out, Body::empty())?)
}
