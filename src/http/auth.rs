//! Bearer-token authentication (RFC 6750), off unless `auth.enabled`.
//!
//! Two kinds of token, checked side by side: the static tokens of
//! `auth.read_tokens` / `auth.write_tokens` (compared in constant time; a
//! read token reads everything, a write token writes everything), and JSON
//! Web Tokens verified by [`jwt`](super::jwt), whose `scope` claim grants
//! `read:GLOB` / `write:GLOB` per stream name and `metrics`.
//!
//! GET and HEAD on a stream need read, every other method write; the
//! `__ds` APIs are checked as if their path below `/v1/stream/` were a
//! stream name (`write:__ds/subscriptions/**` manages subscriptions).
//! `/metrics` needs a read token or the `metrics` scope. `auth.public_reads`
//! lets anyone read (and scrape); `auth.public_streams` lets anyone read the
//! streams its globs match. `/healthz`, `/readyz` and CORS preflights never
//! need a token.
//!
//! `/v1/proxy` checks its own requests (pre-signed URLs, or [`service`]
//! authentication: the write scope over `__ds/proxy/{id}`), in
//! `http::proxy`; this middleware only rate limits them.
//!
//! The token comes from `Authorization: Bearer TOKEN`, or else from the
//! `access_token` query parameter (RFC 6750 section 2.3; `EventSource`
//! cannot send headers). The request log never writes the query, so the
//! token is never logged. A missing, unknown, malformed, expired or badly
//! signed token is 401 with `WWW-Authenticate: Bearer`; a valid token
//! without the scope 403.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;
use super::jwt::Verifier;
use super::{AppState, MOUNT, headers};
use crate::config::{AuthConfig, Secret};
use crate::subscriptions::glob;

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Read,
    Write,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// What a request is about, for the scopes of a JWT.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A stream (or a `__ds` API), by its name below `/v1/stream/`.
    Stream(String),
    /// `/metrics`.
    Metrics,
    /// Any other path (answered 404): any valid token will do.
    Other,
}

/// The scope a request needs and what it is about, or `None` when it
/// needs no token.
fn needed(auth: &AuthConfig, method: &Method, path: &str) -> Option<(Scope, Target)> {
    if !auth.enabled || path == "/healthz" || path == "/readyz" || method == Method::OPTIONS {
        return None;
    }
    if self_authenticated(method, path) || proxy_path(path) {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD;
    let target = match path.strip_prefix(MOUNT) {
        // A trim writes the stream it names: a token scoped to that stream
        // (and its write scope) may trim it, and no other.
        Some(raw) if raw.starts_with("__ds/trim/") => {
            let name = &raw["__ds/trim/".len()..];
            Target::Stream(stream_target(name, raw))
        }
        Some(raw) if raw.starts_with("__ds") => Target::Stream(raw.to_string()),
        // A name the handler will refuse is still checked by its raw text.
        Some(raw) => Target::Stream(stream_target(raw, raw)),
        None if path == "/metrics" => Target::Metrics,
        None => Target::Other,
    };
    if read {
        if auth.public_reads {
            return None;
        }
        if let Target::Stream(name) = &target
            && public_stream(auth, name)
        {
            return None;
        }
        return Some((Scope::Read, target));
    }
    Some((Scope::Write, target))
}

/// The stream a path names, for scope checks: its decoded name, or `raw`
/// as sent when the handler will refuse the name anyway.
fn stream_target(name: &str, raw: &str) -> String {
    headers::stream_name(name, usize::MAX).map_or_else(|_| raw.to_string(), |n| n.into_owned())
}

/// True when `name` matches one of `auth.public_streams`.
fn public_stream(auth: &AuthConfig, name: &str) -> bool {
    auth.public_streams.iter().any(|g| glob::matches(g, name))
}

/// The proxy's paths: its handlers check pre-signed URLs and service
/// authentication themselves ([`service`]).
fn proxy_path(path: &str) -> bool {
    path == "/v1/proxy" || path.starts_with("/v1/proxy/")
}

/// Service authentication for the proxy: with auth on, the write scope on
/// `name` (a static write token, or a JWT granting `write:` over it).
pub fn service(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    name: &str,
) -> Result<Access, ApiError> {
    let auth = &state.config.auth;
    if !auth.enabled {
        return Ok(Access::default());
    }
    authorize(
        auth,
        state.jwt.as_deref(),
        Scope::Write,
        Target::Stream(name.to_string()),
        uri,
        headers,
    )
}

/// True when the request carries a bearer token (header or query).
pub fn has_credential(uri: &Uri, headers: &HeaderMap) -> bool {
    bearer(headers).or_else(|| query_token(uri)).is_some()
}

/// Subscription requests that carry their own proof instead of a server
/// token: the public JWKS, and callback / ack / release, which the
/// subscription handlers check against a signed, wake-scoped token.
fn self_authenticated(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/stream/__ds/") else {
        return false;
    };
    if rest == "jwks.json" {
        return method == Method::GET || method == Method::HEAD;
    }
    let Some(rest) = rest.strip_prefix("subscriptions/") else {
        return false;
    };
    method == Method::POST
        && matches!(rest.split_once('/'), Some((id, action))
            if !id.is_empty() && matches!(action, "callback" | "ack" | "release"))
}

/// True when `candidate` equals one of `tokens`. Every token is compared,
/// each in constant time, so the answer's timing does not reveal which one
/// (or how much of one) matched.
fn listed(tokens: &[Secret], candidate: &[u8]) -> bool {
    let mut found = Choice::from(0);
    for t in tokens {
        found |= t.expose().as_bytes().ct_eq(candidate);
    }
    found.into()
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The `access_token` query parameter. Tokens (static ones and JWTs) are
/// visible ASCII that needs no escaping; a value with `%` escapes is taken
/// as it is and so matches nothing.
fn query_token(uri: &Uri) -> Option<&[u8]> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .filter(|t| !t.is_empty())
        .map(str::as_bytes)
}

fn unauthorized(challenge: &'static str, detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", detail)
        .with_header(header::WWW_AUTHENTICATE, challenge)
}

const INVALID: &str = "Bearer realm=\"durable-streams\", error=\"invalid_token\"";

fn forbidden(scope: Scope, detail: String) -> ApiError {
    let challenge = match scope {
        Scope::Read => {
            "Bearer realm=\"durable-streams\", error=\"insufficient_scope\", scope=\"read\""
        }
        Scope::Write => {
            "Bearer realm=\"durable-streams\", error=\"insufficient_scope\", scope=\"write\""
        }
    };
    ApiError::new(StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE", detail)
        .with_header(header::WWW_AUTHENTICATE, challenge)
}

/// Who a request was let through as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The credential's rate-limit key: a JWT's `sub`, or a digest of a
    /// static token; `None` without a credential (the client address
    /// is used).
    pub key: Option<String>,
    /// Its answer is for this client only: `Cache-Control: private`.
    pub private: bool,
}

/// Middleware: lets a request through only with the scope it needs, and
/// within the rate limits ([`limit`](super::limit)).
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let slot = match admit(&state, &req) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let (slot, access) = slot;
    let mut res = next.run(req).await;
    if access.private {
        privatize(res.headers_mut());
    }
    super::limit::hold(res, slot)
}

/// Auth, then the rate limits: the request's live-read slot (if it takes
/// one) and who it was let through as, or its refusal. A request refused
/// by auth still counts against its client address, so guessing tokens is
/// rate limited too (and answered `429` once over the limit). Shared by
/// [`require`] and the router's fast path.
pub fn admit(
    state: &AppState,
    req: &Request,
) -> Result<(Option<super::limit::LiveSlot>, Access), ApiError> {
    match check(state, req.method(), req.uri(), req.headers()) {
        Ok(access) => Ok((super::limit::gate(state, &access, req)?, access)),
        Err(refusal) => {
            super::limit::gate(state, &Access::default(), req)?;
            Err(refusal)
        }
    }
}

/// Whether a request may go on (and as whom), or its refusal.
pub fn check(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Access, ApiError> {
    decide(
        &state.config.auth,
        state.jwt.as_deref(),
        method,
        uri,
        headers,
    )
}

fn decide(
    auth: &AuthConfig,
    jwt: Option<&Verifier>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Access, ApiError> {
    let Some((scope, target)) = needed(auth, method, uri.path()) else {
        return Ok(Access::default());
    };
    authorize(auth, jwt, scope, target, uri, headers)
}

/// Checks the request's token for `scope` over `target`.
fn authorize(
    auth: &AuthConfig,
    jwt: Option<&Verifier>,
    scope: Scope,
    target: Target,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Access, ApiError> {
    let Some(token) = bearer(headers).or_else(|| query_token(uri)) else {
        return Err(unauthorized(
            "Bearer realm=\"durable-streams\"",
            "this server needs `Authorization: Bearer TOKEN` (or `?access_token=TOKEN`)",
        ));
    };
    // Check both lists unconditionally: the timing must not depend on which
    // list (if any) holds the token.
    let can_read = listed(&auth.read_tokens, token);
    let can_write = listed(&auth.write_tokens, token);
    if can_read || can_write {
        let allowed = match scope {
            Scope::Read => can_read,
            Scope::Write => can_write,
        };
        if !allowed {
            return Err(forbidden(
                scope,
                format!(
                    "this token lacks the {} scope this request needs",
                    scope.name()
                ),
            ));
        }
        return Ok(Access {
            key: Some(static_key(token)),
            private: true,
        });
    }
    let Some(verifier) = jwt else {
        return Err(unauthorized(INVALID, "the bearer token is not valid"));
    };
    let token = std::str::from_utf8(token)
        .map_err(|_| unauthorized(INVALID, "the bearer token is not valid"))?;
    let verified = verifier
        .verify(token)
        .map_err(|r| unauthorized(INVALID, r.0))?;
    let s = &verified.scopes;
    let (allowed, what) = match (&target, scope) {
        (Target::Stream(name), Scope::Read) => (s.can_read(name), format!("read:{name}")),
        (Target::Stream(name), Scope::Write) => (s.can_write(name), format!("write:{name}")),
        (Target::Metrics, _) => (s.metrics, "metrics".to_string()),
        (Target::Other, _) => (true, String::new()),
    };
    if !allowed {
        return Err(forbidden(
            scope,
            format!("this token's scope does not grant {what}"),
        ));
    }
    Ok(Access {
        key: Some(format!("sub:{}", verified.subject.unwrap_or_default())),
        private: true,
    })
}

/// A static token's rate-limit key: a short digest, never the token.
fn static_key(token: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(token);
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

/// Marks an answer as for one client only (protocol section 10.1): shared
/// caches must not keep what a token was needed to see. `public` becomes
/// `private`; `no-store` stays as it is.
pub fn privatize(h: &mut HeaderMap) {
    let current = h
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if current.contains("no-store") || current.contains("private") {
        return;
    }
    let rest: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && *d != "public")
        .collect();
    let value = if rest.is_empty() {
        "private".to_string()
    } else {
        format!("private, {}", rest.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(a: &AuthConfig, m: &Method, path: &str) -> Option<Scope> {
        needed(a, m, path).map(|(s, _)| s)
    }

    #[test]
    fn scopes_by_method_and_path() {
        let mut a = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        assert_eq!(scope(&a, &Method::GET, "/v1/stream/x"), Some(Scope::Read));
        assert_eq!(scope(&a, &Method::HEAD, "/v1/stream/x"), Some(Scope::Read));
        assert_eq!(scope(&a, &Method::GET, "/metrics"), Some(Scope::Read));
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(scope(&a, &m, "/v1/stream/x"), Some(Scope::Write));
        }
        assert_eq!(
            needed(&a, &Method::POST, "/v1/stream/__ds/trim/logs/a"),
            Some((Scope::Write, Target::Stream("logs/a".into())))
        );
        assert_eq!(scope(&a, &Method::OPTIONS, "/v1/stream/x"), None);
        assert_eq!(scope(&a, &Method::GET, "/healthz"), None);
        assert_eq!(scope(&a, &Method::GET, "/readyz"), None);
        a.public_reads = true;
        assert_eq!(scope(&a, &Method::GET, "/v1/stream/x"), None);
        assert_eq!(scope(&a, &Method::POST, "/v1/stream/x"), Some(Scope::Write));
        a.enabled = false;
        assert_eq!(scope(&a, &Method::POST, "/v1/stream/x"), None);
    }

    #[test]
    fn subscription_tokens_bypass_server_tokens_only_where_scoped() {
        let a = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        let p = "/v1/stream/__ds/subscriptions/s1";
        for action in ["callback", "ack", "release"] {
            assert_eq!(scope(&a, &Method::POST, &format!("{p}/{action}")), None);
        }
        assert_eq!(scope(&a, &Method::GET, "/v1/stream/__ds/jwks.json"), None);
        assert_eq!(
            scope(&a, &Method::POST, &format!("{p}/claim")),
            Some(Scope::Write)
        );
        assert_eq!(scope(&a, &Method::PUT, p), Some(Scope::Write));
        assert_eq!(scope(&a, &Method::GET, p), Some(Scope::Read));
        assert_eq!(
            scope(&a, &Method::POST, "/v1/stream/__ds/subscriptions/s1/x/ack"),
            Some(Scope::Write)
        );
    }

    #[test]
    fn token_lists() {
        let tokens = [Secret("alpha".into()), Secret("beta".into())];
        assert!(listed(&tokens, b"beta"));
        assert!(!listed(&tokens, b"bet"));
        assert!(!listed(&tokens, b"betaa"));
        assert!(!listed(&[], b"beta"));
    }
}
