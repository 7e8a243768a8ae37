//! JWT bearer tokens through the whole HTTP layer (`Front::handle`, which
//! takes the fast path for stream requests and the router for the rest):
//! scopes per stream glob, the `access_token` query parameter, refusals,
//! static tokens beside JWTs, `Cache-Control: private`. (That the request
//! log never shows a token is checked on the real binary, `binary::auth`.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use durable_streams::config::{AuthConfig, JwtConfig, Secret, ServerConfig};
use durable_streams::http::front::Front;

use crate::common::router::{memory_state, problem_code};

const SECRET: &str = "router-test-secret";

fn front(public_streams: &[&str]) -> Arc<Front> {
    Front::new(memory_state(ServerConfig {
        auth: AuthConfig {
            enabled: true,
            read_tokens: vec![Secret("static-reader".into())],
            write_tokens: vec![Secret("static-writer".into())],
            public_streams: public_streams.iter().map(|g| g.to_string()).collect(),
            jwt: JwtConfig {
                hs256_secret: Some(Secret(SECRET.into())),
                issuer: Some("https://idp.test".into()),
                ..JwtConfig::default()
            },
            ..AuthConfig::default()
        },
        ..ServerConfig::default()
    }))
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn scoped(scope: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    token(json!({"sub": "alice", "iss": "https://idp.test", "exp": exp, "scope": scope}))
}

async fn send(f: &Front, method: &str, uri: &str, token: Option<&str>) -> Response<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "text/plain");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    f.handle(b.body(Body::from("x")).unwrap()).await.unwrap()
}

fn header<'a>(res: &'a Response<Body>, name: &str) -> &'a str {
    res.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn scopes_grant_streams_by_glob_and_write_implies_no_read() {
    let f = front(&[]);
    let writer = scoped("write:logs/**");
    let reader = scoped("read:logs/* read:other");
    assert_eq!(
        send(&f, "PUT", "/v1/stream/logs/a", Some(&writer))
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&f, "POST", "/v1/stream/logs/a", Some(&writer))
            .await
            .status(),
        204
    );
    let res = send(&f, "PUT", "/v1/stream/other", Some(&writer)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(header(&res, "www-authenticate").contains("insufficient_scope"));
    assert_eq!(problem_code(res).await, "INSUFFICIENT_SCOPE");
    // Write implies nothing about read; read nothing about write.
    let res = send(&f, "GET", "/v1/stream/logs/a?offset=-1", Some(&writer)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        send(&f, "GET", "/v1/stream/logs/a?offset=-1", Some(&reader))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&f, "HEAD", "/v1/stream/logs/a", Some(&reader))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&f, "POST", "/v1/stream/logs/a", Some(&reader))
            .await
            .status(),
        403
    );
    // `*` is one segment.
    assert_eq!(
        send(&f, "PUT", "/v1/stream/logs/a/b", Some(&writer))
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&f, "GET", "/v1/stream/logs/a/b", Some(&reader))
            .await
            .status(),
        403
    );
    // Percent-encoded names are matched decoded.
    assert_eq!(
        send(&f, "GET", "/v1/stream/logs%2Fa", Some(&reader))
            .await
            .status(),
        200
    );
    // /metrics needs the metrics scope; unknown paths any valid token.
    assert_eq!(
        send(&f, "GET", "/metrics", Some(&reader)).await.status(),
        403
    );
    assert_eq!(
        send(&f, "GET", "/metrics", Some(&scoped("metrics")))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&f, "GET", "/nowhere", Some(&reader)).await.status(),
        404
    );
}

#[tokio::test]
async fn subscription_apis_are_scoped_by_their_path() {
    let f = front(&[]);
    let body = json!({"pattern": "logs/**", "webhook": "https://hooks.example/x"});
    let call = |token: String| {
        let f = Arc::clone(&f);
        let body = body.to_string();
        async move {
            let req = Request::put("/v1/stream/__ds/subscriptions/s1")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body))
                .unwrap();
            f.handle(req).await.unwrap().status()
        }
    };
    assert_eq!(call(scoped("write:logs/**")).await, StatusCode::FORBIDDEN);
    let status = call(scoped("write:__ds/subscriptions/**")).await;
    assert!(
        status.is_success() || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
}

#[tokio::test]
async fn the_query_parameter_carries_a_token_for_event_source() {
    let f = front(&[]);
    let t = scoped("read:** write:**");
    assert_eq!(
        send(&f, "PUT", "/v1/stream/q", Some(&t)).await.status(),
        201
    );
    let uri = format!("/v1/stream/q?offset=-1&access_token={t}");
    assert_eq!(send(&f, "GET", &uri, None).await.status(), 200);
    let uri = "/v1/stream/q?offset=-1&access_token=static-reader";
    assert_eq!(send(&f, "GET", uri, None).await.status(), 200);
    let uri = "/v1/stream/q?offset=-1&access_token=nope";
    assert_eq!(send(&f, "GET", uri, None).await.status(), 401);
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_challenge_never_5xx() {
    let f = front(&[]);
    let now = jsonwebtoken::get_current_timestamp();
    let big = "x".repeat(20_000);
    let bad = [
        token(json!({"iss": "https://idp.test", "exp": now - 3600, "scope": "read:**"})),
        token(json!({"iss": "https://idp.test", "scope": "read:**"})),
        token(json!({"iss": "https://evil.test", "exp": now + 60, "scope": "read:**"})),
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": "https://idp.test", "exp": now + 60, "scope": "read:**"}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap(),
        "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksInNjb3BlIjoicmVhZDoqKiJ9.".into(),
        "a.b.c".into(),
        format!("{big}.{big}.{big}"),
    ];
    for t in bad {
        let res = send(&f, "GET", "/v1/stream/x", Some(&t)).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            &t[..t.len().min(60)]
        );
        assert!(header(&res, "www-authenticate").contains("invalid_token"));
        assert_eq!(problem_code(res).await, "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn static_tokens_keep_working_beside_jwts() {
    let f = front(&[]);
    assert_eq!(
        send(&f, "PUT", "/v1/stream/s", Some("static-writer"))
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&f, "GET", "/v1/stream/s", Some("static-reader"))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&f, "POST", "/v1/stream/s", Some("static-reader"))
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&f, "GET", "/metrics", Some("static-reader"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn answers_are_private_unless_the_stream_is_public() {
    let f = front(&["public/**"]);
    let t = scoped("read:** write:**");
    for name in ["secret", "public/feed"] {
        let put = send(&f, "PUT", &format!("/v1/stream/{name}"), Some(&t)).await;
        assert_eq!(put.status(), 201);
        assert_eq!(header(&put, "cache-control"), "private");
    }
    let res = send(&f, "GET", "/v1/stream/secret?offset=-1", Some(&t)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "cache-control"),
        "private, max-age=60, stale-while-revalidate=300"
    );
    // A public stream needs no token, and its reads may be shared.
    let res = send(&f, "GET", "/v1/stream/public/feed?offset=-1", None).await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "cache-control").starts_with("public"));
    // Writing it still needs the scope.
    assert_eq!(
        send(&f, "POST", "/v1/stream/public/feed", None)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn refused_tokens_count_against_the_client_and_tokens_have_their_own_budget() {
    let f = Front::new(memory_state(ServerConfig {
        auth: AuthConfig {
            enabled: true,
            jwt: JwtConfig {
                hs256_secret: Some(Secret(SECRET.into())),
                issuer: Some("https://idp.test".into()),
                ..JwtConfig::default()
            },
            ..AuthConfig::default()
        },
        rate_limit: durable_streams::config::RateLimitConfig {
            requests_per_second: 1,
            burst: 2,
            ..Default::default()
        },
        ..ServerConfig::default()
    }));
    let statuses = [
        send(&f, "GET", "/v1/stream/x", Some("guess-1"))
            .await
            .status(),
        send(&f, "GET", "/v1/stream/x", Some("guess-2"))
            .await
            .status(),
        send(&f, "GET", "/v1/stream/x", Some("guess-3"))
            .await
            .status(),
    ];
    assert_eq!(statuses, [401, 401, 429]);
    // A valid token is keyed by its subject, not the (exhausted) address.
    let t = scoped("write:**");
    assert_eq!(
        send(&f, "PUT", "/v1/stream/x", Some(&t)).await.status(),
        201
    );
    assert_eq!(
        send(&f, "POST", "/v1/stream/x", Some(&t)).await.status(),
        204
    );
    let res = send(&f, "POST", "/v1/stream/x", Some(&t)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(problem_code(res).await, "RATE_LIMITED");
}
