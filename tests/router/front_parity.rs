//! The fast path (`http::front`) must answer exactly as the router does.
//!
//! `Front` answers plain stream requests itself, applying the router's
//! layers (auth, CORS, security headers, metrics) inline. These tests run one
//! script of requests against two fresh servers, one through `Front::handle`
//! and one through the router alone, and compare every answer: status, body
//! and every header except the few that legitimately differ per call.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;

use durable_streams::config::{AuthConfig, Secret, ServerConfig};
use durable_streams::http::front::Front;

use crate::common::router::memory_state as app_state;

/// Headers whose value depends on the moment of the call, not on the path,
/// and `content-length`, which the router's body-mapping layers set from
/// the body's size while the fast path leaves it to hyper, which writes the
/// same value on the wire (checked against the body in [`summary`]).
const VOLATILE: &[&str] = &["date", "stream-cursor", "content-length"];

/// One request of the script: method, path, headers, body.
type Step = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

fn build(step: &Step) -> Request<Body> {
    let (method, uri, headers, body) = step;
    let mut b = Request::builder().method(*method).uri(*uri);
    for (k, v) in headers.iter() {
        b = b.header(*k, *v);
    }
    b.body(Body::from(*body)).expect("valid test request")
}

/// Status, the sorted non-volatile headers and the body of an answer.
async fn summary(head: bool, res: Response<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = res.status().as_u16();
    let headers = normal(res.headers());
    let length = res
        .headers()
        .get("content-length")
        .map(|v| v.to_str().expect("ascii").parse::<usize>().expect("number"));
    let body = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    // A HEAD answer names the length of the GET it stands for.
    if let Some(n) = length.filter(|_| !head) {
        assert_eq!(n, body.len(), "content-length does not match the body");
    }
    (status, headers, body)
}

fn normal(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn compare(config: ServerConfig, script: &[Step]) {
    let front = Front::new(app_state(config.clone()));
    let router: Router = durable_streams::http::router(app_state(config));
    for (i, step) in script.iter().enumerate() {
        let fast = front.handle(build(step)).await.expect("infallible");
        let slow = router
            .clone()
            .oneshot(build(step))
            .await
            .expect("infallible");
        let head = step.0 == "HEAD";
        let (fast, slow) = (summary(head, fast).await, summary(head, slow).await);
        assert_eq!(
            fast, slow,
            "step {i} {} {}: fast path (left) and router (right) differ",
            step.0, step.1
        );
    }
}

/// Creates, appends (plain and idempotent), reads, heads, closes, deletes,
/// and a range of refusals, with and without an `Origin`.
const SCRIPT: &[Step] = &[
    (
        "PUT",
        "/v1/stream/a",
        &[("content-type", "text/plain")],
        "hello",
    ),
    ("PUT", "/v1/stream/a", &[("content-type", "text/plain")], ""),
    (
        "PUT",
        "/v1/stream/a",
        &[("content-type", "application/json")],
        "",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[("content-type", "text/plain"), ("origin", "https://x.test")],
        " world",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[
            ("content-type", "text/plain"),
            ("producer-id", "p"),
            ("producer-epoch", "0"),
            ("producer-seq", "0"),
        ],
        "!",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[
            ("content-type", "text/plain"),
            ("producer-id", "p"),
            ("producer-epoch", "0"),
            ("producer-seq", "0"),
        ],
        "!",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[
            ("content-type", "text/plain"),
            ("producer-id", "p"),
            ("producer-epoch", "-1"),
            ("producer-seq", "1"),
        ],
        "?",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[("content-type", "application/json")],
        "x",
    ),
    ("GET", "/v1/stream/a", &[("origin", "https://x.test")], ""),
    ("GET", "/v1/stream/a?offset=-1", &[], ""),
    (
        "GET",
        "/v1/stream/a?offset=0000000000000000_0000000000000003",
        &[],
        "",
    ),
    ("GET", "/v1/stream/a?offset=nonsense", &[], ""),
    ("GET", "/v1/stream/missing", &[], ""),
    ("HEAD", "/v1/stream/a", &[], ""),
    ("HEAD", "/v1/stream/missing", &[], ""),
    (
        "PUT",
        "/v1/stream/j",
        &[("content-type", "application/json")],
        "[1,2]",
    ),
    (
        "POST",
        "/v1/stream/j",
        &[("content-type", "application/json")],
        "{\"a\":",
    ),
    ("GET", "/v1/stream/j?offset=-1", &[], ""),
    (
        "POST",
        "/v1/stream/a",
        &[("content-type", "text/plain"), ("stream-closed", "true")],
        "",
    ),
    (
        "POST",
        "/v1/stream/a",
        &[("content-type", "text/plain")],
        "late",
    ),
    ("GET", "/v1/stream/a?offset=-1", &[], ""),
    ("GET", "/v1/stream/a?offset=-1&live=long-poll", &[], ""),
    ("GET", "/v1/stream/a?offset=-1&live=sse", &[], ""),
    ("DELETE", "/v1/stream/a", &[], ""),
    ("DELETE", "/v1/stream/a", &[], ""),
    ("GET", "/v1/stream/a?offset=-1", &[], ""),
];

#[tokio::test]
async fn fast_path_answers_as_the_router_with_defaults() {
    compare(ServerConfig::default(), SCRIPT).await;
}

#[tokio::test]
async fn fast_path_answers_as_the_router_with_listed_origins() {
    let config = ServerConfig {
        cors_origins: vec!["https://x.test".into(), "https://y.test".into()],
        ..ServerConfig::default()
    };
    compare(config, SCRIPT).await;
}

#[tokio::test]
async fn fast_path_answers_as_the_router_with_auth() {
    let config = ServerConfig {
        auth: AuthConfig {
            enabled: true,
            public_reads: false,
            read_tokens: vec![Secret("reader".into())],
            write_tokens: vec![Secret("writer".into())],
            ..AuthConfig::default()
        },
        ..ServerConfig::default()
    };
    let script: &[Step] = &[
        (
            "PUT",
            "/v1/stream/s",
            &[("content-type", "text/plain")],
            "no token",
        ),
        (
            "PUT",
            "/v1/stream/s",
            &[
                ("content-type", "text/plain"),
                ("authorization", "Bearer reader"),
            ],
            "read token",
        ),
        (
            "PUT",
            "/v1/stream/s",
            &[
                ("content-type", "text/plain"),
                ("authorization", "Bearer writer"),
            ],
            "ok",
        ),
        ("GET", "/v1/stream/s?offset=-1", &[], ""),
        (
            "GET",
            "/v1/stream/s?offset=-1",
            &[("authorization", "Bearer wrong")],
            "",
        ),
        (
            "GET",
            "/v1/stream/s?offset=-1",
            &[("authorization", "Bearer reader")],
            "",
        ),
        (
            "DELETE",
            "/v1/stream/s",
            &[("authorization", "Bearer reader")],
            "",
        ),
    ];
    compare(config, script).await;
}
