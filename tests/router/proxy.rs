//! The Proxy Protocol at `/v1/proxy`, in-process, against a fake upstream
//! on a real socket (`common::upstream`): create, read in every mode,
//! abort, delete, how pipes end and CORS; hostile input and auth in
//! [`super::proxy_hostile`]. The helpers here serve both.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Response;

use crate::common::router::{body, header, memory_state, req, router, send, text};
use crate::common::upstream::Upstream;
use durable_streams::config::{ProxyConfig, ServerConfig};
use durable_streams::http::AppState;

pub(crate) fn config() -> ServerConfig {
    ServerConfig {
        long_poll_timeout: Duration::from_secs(2),
        proxy: ProxyConfig {
            enabled: true,
            allowlist: vec!["http://127.0.0.1:*/*".into()],
            header_timeout: Duration::from_millis(500),
            body_idle_timeout: Duration::from_millis(400),
            ..ProxyConfig::default()
        },
        ..ServerConfig::default()
    }
}

pub(crate) async fn setup(config: ServerConfig) -> (AppState, Router, Upstream) {
    let st = memory_state(config);
    let app = router(&st);
    (st, app, Upstream::start().await)
}

pub(crate) async fn create(app: &Router, url: &str) -> Response<Body> {
    send(
        app,
        req("POST", "/v1/proxy")
            .header("upstream-url", url)
            .header("upstream-method", "POST")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await
}

/// Creates a proxy stream of `url` and returns its pre-signed location.
pub(crate) async fn location(app: &Router, url: &str) -> String {
    let res = create(app, url).await;
    assert_eq!(res.status(), 201, "{}", text(res).await);
    header(&res, "location").unwrap().to_string()
}

/// The JSON error code of a proxy error answer.
pub(crate) async fn code(res: Response<Body>) -> String {
    assert_eq!(res.headers()["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body(res).await).unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

/// Reads the stream behind `loc` (catch-up, then long-polls) until it is
/// closed; its whole body.
pub(crate) async fn read_to_end(app: &Router, loc: &str) -> String {
    let mut out = String::new();
    let mut offset = "-1".to_string();
    for _ in 0..200 {
        let live = if offset == "-1" {
            ""
        } else {
            "&live=long-poll"
        };
        let res = send(
            app,
            req("GET", &format!("{loc}&offset={offset}{live}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(
            res.status() == 200 || res.status() == 204,
            "{}",
            res.status()
        );
        let closed = header(&res, "stream-closed") == Some("true");
        offset = header(&res, "stream-next-offset").unwrap().to_string();
        out.push_str(&text(res).await);
        if closed {
            return out;
        }
    }
    panic!("stream never closed; read so far: {out:?}");
}

pub(crate) fn tokens(n: usize) -> String {
    (0..n).map(|i| format!("data: tok{i}\n\n")).collect()
}

#[tokio::test]
async fn pipes_an_sse_upstream_into_a_closed_stream() {
    let (st, app, up) = setup(config()).await;
    let res = create(&app, &up.url("/sse?n=40&ms=5")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        header(&res, "upstream-content-type"),
        Some("text/event-stream")
    );
    let loc = header(&res, "location").unwrap().to_string();
    assert!(
        loc.starts_with("/v1/proxy/") && loc.contains("?expires=") && loc.contains("&signature=")
    );
    assert_eq!(read_to_end(&app, &loc).await, tokens(40));
    // Catch-up read of the finished stream, with the proxy's headers.
    let res = send(&app, req("GET", &loc).body(Body::empty()).unwrap()).await;
    assert_eq!(
        header(&res, "upstream-content-type"),
        Some("text/event-stream")
    );
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    assert!(header(&res, "cache-control").unwrap().contains("private"));
    assert_eq!(text(res).await, tokens(40));
    // Not reachable under /v1/stream/.
    let id = loc
        .trim_start_matches("/v1/proxy/")
        .split('?')
        .next()
        .unwrap();
    let res = send(
        &app,
        req("GET", &format!("/v1/stream/__ds/proxy/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 404);
    let m = st.metrics.render(None, &[]);
    assert!(m.contains("ds_proxy_active_pipes 0"), "{m}");
    assert!(
        m.contains(&format!("ds_proxy_piped_bytes_total {}", tokens(40).len())),
        "{m}"
    );
}

#[tokio::test]
async fn sse_reads_a_proxied_stream() {
    let (_st, app, up) = setup(config()).await;
    let loc = location(&app, &up.url("/sse?n=5&ms=20")).await;
    let res = send(
        &app,
        req("GET", &format!("{loc}&offset=-1&live=sse"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "upstream-content-type"),
        Some("text/event-stream")
    );
    assert!(
        header(&res, "content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let got = tokio::time::timeout(Duration::from_secs(10), text(res))
        .await
        .expect("SSE ends at the closed stream");
    for i in 0..5 {
        assert!(got.contains(&format!("tok{i}")), "{got}");
    }
    assert!(got.contains("streamClosed"), "{got}");
}

#[tokio::test]
async fn upstream_failures_mid_body_and_idle_bodies_close_with_what_arrived() {
    let (st, app, up) = setup(config()).await;
    let loc = location(&app, &up.url("/fail?n=3")).await;
    assert_eq!(read_to_end(&app, &loc).await, tokens(3));
    let loc = location(&app, &up.url("/stall-body?n=2")).await;
    assert_eq!(read_to_end(&app, &loc).await, tokens(2));
    let m = st.metrics.render(None, &[]);
    assert!(
        m.contains("ds_proxy_upstream_errors_total{kind=\"body\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ds_proxy_upstream_errors_total{kind=\"body_idle_timeout\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_answers_that_create_no_stream() {
    let (st, app, up) = setup(config()).await;
    let res = create(&app, &up.url("/redirect")).await;
    assert_eq!(res.status(), 400);
    assert_eq!(code(res).await, "REDIRECT_NOT_ALLOWED");
    let res = create(&app, &up.url("/error")).await;
    assert_eq!(res.status(), 502);
    assert_eq!(header(&res, "upstream-status"), Some("500"));
    assert_eq!(header(&res, "content-type"), Some("application/json"));
    assert_eq!(text(res).await, r#"{"error":"upstream exploded"}"#);
    let res = create(&app, &up.url("/stall")).await;
    assert_eq!(res.status(), 504);
    assert_eq!(code(res).await, "UPSTREAM_TIMEOUT");
    // Nothing listens on port 9 of loopback.
    let res = create(&app, "http://127.0.0.1:9/x").await;
    assert_eq!(res.status(), 502);
    assert_eq!(code(res).await, "UPSTREAM_UNREACHABLE");
    let m = st.metrics.render(None, &[]);
    for kind in ["redirect", "status", "header_timeout", "unreachable"] {
        assert!(
            m.contains(&format!(
                "ds_proxy_upstream_errors_total{{kind=\"{kind}\"}} 1"
            )),
            "{kind}: {m}"
        );
    }
}

#[tokio::test]
async fn abort_while_streaming_keeps_what_arrived_and_is_idempotent() {
    let (st, app, up) = setup(config()).await;
    let loc = location(&app, &up.url("/sse?n=100000&ms=10")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let abort = || {
        req("PATCH", &format!("{loc}&action=abort"))
            .body(Body::empty())
            .unwrap()
    };
    let res = send(&app, abort()).await;
    assert_eq!(res.status(), 204);
    // The abort answers once the pipe has flushed and closed the stream.
    let res = send(&app, req("GET", &loc).body(Body::empty()).unwrap()).await;
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    let got = text(res).await;
    assert!(
        got.starts_with("data: tok0\n\n") && got.ends_with("\n\n"),
        "{got}"
    );
    let n = got.matches("data: ").count();
    assert!(n > 3 && n < 100000, "{n} tokens");
    assert_eq!(send(&app, abort()).await.status(), 204);
    let m = st.metrics.render(None, &[]);
    assert!(m.contains("ds_proxy_active_pipes 0"), "{m}");
    // Unknown actions are refused.
    let res = send(
        &app,
        req("PATCH", &format!("{loc}&action=pause"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(code(res).await, "INVALID_ACTION");
}

#[tokio::test]
async fn head_and_delete() {
    let (_st, app, up) = setup(config()).await;
    let loc = location(&app, &up.url("/stall-body?n=1")).await;
    let path = loc.split('?').next().unwrap().to_string();
    let res = send(&app, req("HEAD", &path).body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "upstream-content-type"),
        Some("text/event-stream")
    );
    assert!(header(&res, "stream-next-offset").is_some());
    let del = || req("DELETE", &path).body(Body::empty()).unwrap();
    assert_eq!(send(&app, del()).await.status(), 204);
    let res = send(&app, req("GET", &loc).body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 404);
    assert_eq!(code(res).await, "STREAM_NOT_FOUND");
    assert_eq!(send(&app, del()).await.status(), 204);
    let res = send(
        &app,
        req("HEAD", "/v1/proxy/not-an-id")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn headers_are_forwarded_without_hop_by_hop_or_proxy_ones() {
    let (_st, app, up) = setup(config()).await;
    let res = send(
        &app,
        req("POST", "/v1/proxy")
            .header("upstream-url", up.url("/echo?q=1"))
            .header("upstream-method", "PUT")
            .header("upstream-authorization", "Bearer sk-upstream")
            .header("authorization", "Bearer proxy-token")
            .header("connection", "x-hop")
            .header("x-hop", "no")
            .header("x-custom", "yes")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"prompt":"hi"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        header(&res, "upstream-content-type"),
        Some("application/json")
    );
    let loc = header(&res, "location").unwrap().to_string();
    let got: serde_json::Value = serde_json::from_str(&read_to_end(&app, &loc).await).unwrap();
    assert_eq!(got["method"], "PUT");
    assert_eq!(got["body"], r#"{"prompt":"hi"}"#);
    let h = &got["headers"];
    assert_eq!(h["authorization"], "Bearer sk-upstream");
    assert_eq!(h["x-custom"], "yes");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["host"], format!("127.0.0.1:{}", up.addr.port()));
    for gone in [
        "x-hop",
        "upstream-url",
        "upstream-method",
        "upstream-authorization",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
}

#[tokio::test]
async fn cors_preflight_and_exposed_headers() {
    let (_st, app, up) = setup(config()).await;
    let res = send(
        &app,
        req("OPTIONS", "/v1/proxy")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "upstream-url, upstream-method, upstream-authorization",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 204);
    let allowed = header(&res, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("upstream-url") && allowed.contains("upstream-authorization"),
        "{allowed}"
    );
    assert!(
        header(&res, "access-control-allow-methods")
            .unwrap()
            .contains("PATCH")
    );
    let res = send(
        &app,
        req("POST", "/v1/proxy")
            .header("origin", "https://app.example")
            .header("upstream-url", up.url("/sse?n=1"))
            .header("upstream-method", "GET")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 201);
    let exposed = header(&res, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "location",
        "upstream-content-type",
        "upstream-status",
        "stream-next-offset",
        "stream-closed",
    ] {
        assert!(exposed.contains(h), "{h}: {exposed}");
    }
}
