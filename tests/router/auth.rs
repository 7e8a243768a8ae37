//! Bearer-token auth through the router (`oneshot`, no socket).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use tower::ServiceExt;

use durable_streams::config::{AuthConfig, Secret, ServerConfig};

use crate::common::router::{self, problem_code};

fn app(auth: AuthConfig) -> Router {
    router::app_with(ServerConfig {
        auth,
        ..ServerConfig::default()
    })
}

fn enabled(public_reads: bool) -> AuthConfig {
    AuthConfig {
        enabled: true,
        public_reads,
        read_tokens: vec![Secret("reader".into())],
        write_tokens: vec![Secret("writer".into())],
        ..AuthConfig::default()
    }
}

/// A `text/plain` request with body `x`, with `token` as a bearer token.
async fn send(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Response<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "text/plain");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    router::send(app, b.body(Body::from("x")).unwrap()).await
}

fn challenge(res: &Response<Body>) -> &str {
    res.headers()["www-authenticate"].to_str().unwrap()
}

#[tokio::test]
async fn off_by_default() {
    let app = app(AuthConfig::default());
    assert_eq!(send(&app, "PUT", "/v1/stream/a", None).await.status(), 201);
    assert_eq!(send(&app, "GET", "/v1/stream/a", None).await.status(), 200);
}

#[tokio::test]
async fn missing_or_unknown_tokens_are_401_with_a_challenge() {
    let app = app(enabled(false));
    let res = send(&app, "PUT", "/v1/stream/a", None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&res).starts_with("Bearer"));
    assert_eq!(problem_code(res).await, "UNAUTHORIZED");

    let res = send(&app, "GET", "/v1/stream/a", Some("guess")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&res).contains("invalid_token"));

    // Another scheme is no bearer token.
    let res = app
        .clone()
        .oneshot(
            Request::get("/v1/stream/a")
                .header("authorization", "Basic cmVhZGVyOg==")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scopes_are_separate_and_403_when_lacking() {
    let app = app(enabled(false));
    let res = send(&app, "PUT", "/v1/stream/a", Some("reader")).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&res).contains("insufficient_scope"));
    assert_eq!(problem_code(res).await, "INSUFFICIENT_SCOPE");

    assert_eq!(
        send(&app, "PUT", "/v1/stream/a", Some("writer"))
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&app, "POST", "/v1/stream/a", Some("writer"))
            .await
            .status(),
        204
    );

    let res = send(&app, "GET", "/v1/stream/a?offset=-1", Some("writer")).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, "GET", "/v1/stream/a?offset=-1", Some("reader"))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&app, "HEAD", "/v1/stream/a", Some("reader"))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&app, "DELETE", "/v1/stream/a", Some("reader"))
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&app, "DELETE", "/v1/stream/a", Some("writer"))
            .await
            .status(),
        204
    );

    // The scheme name is case-insensitive.
    let res = app
        .clone()
        .oneshot(
            Request::head("/v1/stream/a")
                .header("authorization", "bearer reader")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn probes_and_preflights_never_need_a_token_metrics_does() {
    let app = app(enabled(false));
    assert_eq!(send(&app, "GET", "/healthz", None).await.status(), 200);
    assert_eq!(send(&app, "GET", "/readyz", None).await.status(), 200);
    assert_eq!(send(&app, "GET", "/metrics", None).await.status(), 401);
    assert_eq!(
        send(&app, "GET", "/metrics", Some("reader")).await.status(),
        200
    );

    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/v1/stream/a")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(preflight).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.headers().contains_key("access-control-allow-origin"));

    // A refusal still carries CORS headers, so browsers can read it.
    let res = app
        .clone()
        .oneshot(
            Request::post("/v1/stream/a")
                .header("origin", "https://app.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn public_reads_still_guard_writes() {
    let app = app(enabled(true));
    assert_eq!(send(&app, "PUT", "/v1/stream/p", None).await.status(), 401);
    assert_eq!(
        send(&app, "PUT", "/v1/stream/p", Some("writer"))
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&app, "GET", "/v1/stream/p?offset=-1", None)
            .await
            .status(),
        200
    );
    assert_eq!(send(&app, "GET", "/metrics", None).await.status(), 200);
    assert_eq!(
        send(&app, "POST", "/v1/stream/p", Some("reader"))
            .await
            .status(),
        403
    );
}
