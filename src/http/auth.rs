//! Bearer-token authentication (RFC 6750), off unless `auth.enabled`.
//!
//! GET and HEAD (and `/metrics`) need a token with the read scope; every
//! other method needs the write scope; `auth.public_reads` lets anyone read.
//! `/healthz` and `/readyz` are always open, and CORS preflights never reach
//! this layer (the CORS layer answers them outside it). A missing or unknown
//! token is 401 with `WWW-Authenticate: Bearer`; a known token without the
//! scope is 403. Tokens are compared in constant time, and never logged.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::AppState;
use super::error::ApiError;
use crate::config::{AuthConfig, Secret};

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

/// The scope a request needs, or `None` when it needs no token.
fn needed(auth: &AuthConfig, method: &Method, path: &str) -> Option<Scope> {
    if !auth.enabled || path == "/healthz" || path == "/readyz" || method == Method::OPTIONS {
        return None;
    }
    if self_authenticated(method, path) {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return (!auth.public_reads).then_some(Scope::Read);
    }
    Some(Scope::Write)
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

fn unauthorized(challenge: &'static str, detail: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", detail)
        .with_header(header::WWW_AUTHENTICATE, challenge)
        .into_response()
}

/// Middleware: lets a request through only with the scope it needs.
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(
        &state.config.auth,
        req.method(),
        req.uri().path(),
        req.headers(),
    ) {
        None => next.run(req).await,
        Some(refusal) => refusal,
    }
}

/// The refusal for a request that lacks the scope it needs, or `None` when
/// it may go on. Shared by [`require`] and the router's fast path.
pub fn check(
    auth: &AuthConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let scope = needed(auth, method, path)?;
    let Some(token) = bearer(headers) else {
        return Some(unauthorized(
            "Bearer realm=\"durable-streams\"",
            "this server needs `Authorization: Bearer TOKEN`",
        ));
    };
    // Check both lists unconditionally: the timing must not depend on which
    // list (if any) holds the token.
    let can_read = listed(&auth.read_tokens, token);
    let can_write = listed(&auth.write_tokens, token);
    let allowed = match scope {
        Scope::Read => can_read,
        Scope::Write => can_write,
    };
    if allowed {
        return None;
    }
    if !can_read && !can_write {
        return Some(unauthorized(
            "Bearer realm=\"durable-streams\", error=\"invalid_token\"",
            "the bearer token is not valid",
        ));
    }
    let challenge = match scope {
        Scope::Read => {
            "Bearer realm=\"durable-streams\", error=\"insufficient_scope\", scope=\"read\""
        }
        Scope::Write => {
            "Bearer realm=\"durable-streams\", error=\"insufficient_scope\", scope=\"write\""
        }
    };
    Some(
        ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!(
                "this token lacks the {} scope this request needs",
                scope.name()
            ),
        )
        .with_header(header::WWW_AUTHENTICATE, challenge)
        .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_method_and_path() {
        let mut a = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        assert_eq!(needed(&a, &Method::GET, "/v1/stream/x"), Some(Scope::Read));
        assert_eq!(needed(&a, &Method::HEAD, "/v1/stream/x"), Some(Scope::Read));
        assert_eq!(needed(&a, &Method::GET, "/metrics"), Some(Scope::Read));
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(needed(&a, &m, "/v1/stream/x"), Some(Scope::Write));
        }
        assert_eq!(needed(&a, &Method::OPTIONS, "/v1/stream/x"), None);
        assert_eq!(needed(&a, &Method::GET, "/healthz"), None);
        assert_eq!(needed(&a, &Method::GET, "/readyz"), None);
        a.public_reads = true;
        assert_eq!(needed(&a, &Method::GET, "/v1/stream/x"), None);
        assert_eq!(
            needed(&a, &Method::POST, "/v1/stream/x"),
            Some(Scope::Write)
        );
        a.enabled = false;
        assert_eq!(needed(&a, &Method::POST, "/v1/stream/x"), None);
    }

    #[test]
    fn subscription_tokens_bypass_server_tokens_only_where_scoped() {
        let a = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        let p = "/v1/stream/__ds/subscriptions/s1";
        for action in ["callback", "ack", "release"] {
            assert_eq!(needed(&a, &Method::POST, &format!("{p}/{action}")), None);
        }
        assert_eq!(needed(&a, &Method::GET, "/v1/stream/__ds/jwks.json"), None);
        assert_eq!(
            needed(&a, &Method::POST, &format!("{p}/claim")),
            Some(Scope::Write)
        );
        assert_eq!(needed(&a, &Method::PUT, p), Some(Scope::Write));
        assert_eq!(needed(&a, &Method::GET, p), Some(Scope::Read));
        assert_eq!(
            needed(&a, &Method::POST, "/v1/stream/__ds/subscriptions/s1/x/ack"),
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
