//! `/v1/proxy/{id}`: read (every base-protocol read mode, through the
//! stream handlers), `HEAD`, abort and delete (spec sections 4.2-4.5).
//!
//! Who may do what: `GET` with a valid pre-signed URL, or else with service
//! authentication; `PATCH ?action=abort` with a pre-signed URL only (even
//! with auth off); `HEAD` and `DELETE` with service authentication only.
//! With auth off, service authentication always passes.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::proxy::{ProxyError, ProxyResult, UPSTREAM_CONTENT_TYPE, enabled, service_auth};
use super::{AppState, auth, read_stream, write};
use crate::proxy::sign::Refusal;
use crate::proxy::{self as engine};
use crate::storage::{AppendRequest, StorageError, now_ms};

/// Dispatches `/v1/proxy/{id}` by method.
pub async fn one(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let res = match *req.method() {
        Method::GET => read(&state, &id, req).await,
        Method::HEAD => head(&state, &id, req).await,
        Method::PATCH => abort(&state, &id, req).await,
        Method::DELETE => delete(&state, &id, req).await,
        _ => Err(ProxyError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "proxy streams support GET, HEAD, PATCH ?action=abort and DELETE",
        )),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

fn not_found() -> ProxyError {
    ProxyError::new(
        StatusCode::NOT_FOUND,
        "STREAM_NOT_FOUND",
        "no proxy stream has this id",
    )
}

/// The first value of query parameter `key` (values here need no
/// decoding: digits and base64url).
fn param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
}

fn signed(query: Option<&str>) -> bool {
    param(query, "signature").is_some() || param(query, "expires").is_some()
}

/// Checks the pre-signed URL of `id` in `req`.
async fn presigned(state: &AppState, id: &str, uri: &Uri) -> Result<(), ProxyError> {
    let key = state.proxy.key(&state.storage).await.map_err(|e| {
        tracing::error!(error = %e, "proxy URL signing key unavailable");
        ProxyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_ERROR",
            "the URL signing key is unavailable; retry shortly",
        )
    })?;
    let q = uri.query();
    let now = now_ms() / 1000;
    key.verify(id, param(q, "expires"), param(q, "signature"), now)
        .map_err(|r| {
            let (code, message) = match r {
                Refusal::Missing => (
                    "MISSING_SIGNATURE",
                    "this needs the pre-signed URL (expires and signature)",
                ),
                Refusal::Invalid => ("SIGNATURE_INVALID", "the URL's signature does not verify"),
                Refusal::Expired => ("SIGNATURE_EXPIRED", "the pre-signed URL has expired"),
            };
            ProxyError::new(StatusCode::UNAUTHORIZED, code, message)
        })
}

/// Adds `Upstream-Content-Type` and `Cache-Control: private` (a
/// pre-signed answer is one client's) to a stream answer.
fn decorate(mut res: Response, content_type: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&engine::upstream_type(content_type)) {
        res.headers_mut().insert(UPSTREAM_CONTENT_TYPE, v);
    }
    auth::privatize(res.headers_mut());
    res
}

/// The stream's content type, or 404.
async fn content_type(state: &AppState, name: &str) -> Result<String, ProxyError> {
    let n = name.to_string();
    let now = now_ms();
    match state.storage(move |s| s.head(&n, now)).await {
        Ok(info) => Ok(info.content_type),
        Err(e) if e.code == "STREAM_NOT_FOUND" || e.code == "STREAM_GONE" => Err(not_found()),
        Err(e) => Err(ProxyError(e)),
    }
}

/// `GET`: pre-signed, else service auth; then the stream read handlers.
async fn read(state: &AppState, id: &str, req: Request) -> ProxyResult {
    enabled(state)?;
    if signed(req.uri().query()) {
        presigned(state, id, &req.uri().clone()).await?;
    } else if state.config.auth.enabled && !auth::has_credential(req.uri(), req.headers()) {
        return Err(ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "MISSING_SIGNATURE",
            "read with the pre-signed URL (expires and signature) or a service token",
        ));
    } else {
        service_auth(state, &req, &engine::stream_name(id))?;
    }
    if !engine::valid_id(id) {
        return Err(not_found());
    }
    let name = engine::stream_name(id);
    let ct = content_type(state, &name).await?;
    let res = read_stream(state, name, req).await.map_err(ProxyError)?;
    Ok(decorate(res, &ct))
}

/// `HEAD`: service auth only.
async fn head(state: &AppState, id: &str, req: Request) -> ProxyResult {
    enabled(state)?;
    service_auth(state, &req, &engine::stream_name(id))?;
    if !engine::valid_id(id) {
        return Err(not_found());
    }
    let name = engine::stream_name(id);
    let ct = content_type(state, &name).await?;
    let res = write::head(state, name).await.map_err(ProxyError)?;
    Ok(decorate(res, &ct))
}

/// Stops the upstream of `id`: this node's pipe flushes and closes the
/// stream; when another node runs it, the stream is closed here and that
/// pipe stops at its next write.
async fn stop(state: &AppState, id: &str) -> Result<(), ProxyError> {
    if state.proxy.abort(id).await {
        return Ok(());
    }
    let name = engine::stream_name(id);
    let mut close = AppendRequest::new(None, Vec::new(), now_ms());
    close.close = true;
    match state.storage.append(&name, close).await {
        Ok(_) | Err(StorageError::Closed { .. }) => Ok(()),
        Err(StorageError::NotFound | StorageError::Gone) => Err(not_found()),
        Err(e) => Err(ProxyError(e.into())),
    }
}

/// `PATCH ?action=abort`: pre-signed only, idempotent.
async fn abort(state: &AppState, id: &str, req: Request) -> ProxyResult {
    enabled(state)?;
    presigned(state, id, &req.uri().clone()).await?;
    if param(req.uri().query(), "action") != Some("abort") {
        return Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ACTION",
            "the only action is abort (?action=abort)",
        ));
    }
    stop(state, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE`: service auth only; aborts, then deletes. Idempotent.
async fn delete(state: &AppState, id: &str, req: Request) -> ProxyResult {
    enabled(state)?;
    service_auth(state, &req, &engine::stream_name(id))?;
    if !engine::valid_id(id) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    state.proxy.abort(id).await;
    let name = engine::stream_name(id);
    let now = now_ms();
    match state.storage.run(move |s| s.delete(&name, now)).await {
        Ok(()) | Err(StorageError::NotFound | StorageError::Gone) => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(ProxyError(e.into())),
    }
}
