//! Operations surface through the router (`oneshot`, no socket): health,
//! readiness, metrics and the live-connection gauges.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};

use durable_streams::config::ServerConfig;
use durable_streams::metrics::Live;

use crate::common::router::{self, memory_state as app_state, router as app, text};

/// A request with an optional content type and a text body.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: &str,
) -> Response<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    router::send(app, b.body(Body::from(body.to_string())).unwrap()).await
}

async fn metrics(app: &Router) -> String {
    let res = send(app, "GET", "/metrics", None, "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    text(res).await
}

#[tokio::test]
async fn health_and_readiness() {
    let st = app_state(ServerConfig::default());
    let app = app(&st);
    assert_eq!(send(&app, "GET", "/healthz", None, "").await.status(), 200);
    assert_eq!(send(&app, "GET", "/readyz", None, "").await.status(), 200);
    // Readiness drops as soon as shutdown starts; liveness does not.
    st.shutdown.cancel();
    let res = send(&app, "GET", "/readyz", None, "").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(send(&app, "GET", "/healthz", None, "").await.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_appends_streams_and_errors() {
    let st = app_state(ServerConfig::default());
    let app = app(&st);
    let s = "/v1/stream/m";
    assert_eq!(
        send(&app, "PUT", s, Some("application/json"), "")
            .await
            .status(),
        201
    );
    let res = send(
        &app,
        "POST",
        s,
        Some("application/json"),
        r#"[{"a":1},{"b":"x,y"}]"#,
    )
    .await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        send(&app, "PUT", "/v1/stream/t", Some("text/plain"), "")
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&app, "POST", "/v1/stream/t", Some("text/plain"), "hello")
            .await
            .status(),
        204
    );
    assert_eq!(
        send(&app, "GET", "/v1/stream/missing", None, "")
            .await
            .status(),
        404
    );
    assert_eq!(send(&app, "GET", "/healthz", None, "").await.status(), 200);

    let m = metrics(&app).await;
    for line in [
        "ds_http_requests_total{method=\"PUT\",route=\"stream\",status=\"201\"} 2",
        "ds_http_requests_total{method=\"POST\",route=\"stream\",status=\"204\"} 2",
        "ds_http_requests_total{method=\"GET\",route=\"stream\",status=\"404\"} 1",
        "ds_http_requests_total{method=\"GET\",route=\"health\",status=\"200\"} 1",
        "ds_appended_bytes_total 26",
        "ds_appended_messages_total 3",
        "ds_streams 2",
        "ds_storage_errors_total{code=\"STREAM_NOT_FOUND\"} 1",
        "ds_storage_write_seconds_count{op=\"create\"} 2",
        "ds_storage_write_seconds_count{op=\"append\"} 2",
        "ds_active_long_polls 0",
        "ds_active_sse_connections 0",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    // The scrape itself is counted once it has answered.
    let m = metrics(&app).await;
    assert!(
        m.contains("ds_http_requests_total{method=\"GET\",route=\"metrics\",status=\"200\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn live_gauges_follow_connections_even_when_clients_vanish() {
    let st = app_state(ServerConfig {
        long_poll_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    });
    let app = app(&st);
    assert_eq!(
        send(&app, "PUT", "/v1/stream/g", Some("text/plain"), "x")
            .await
            .status(),
        201
    );

    // SSE: counted while the response body is alive.
    let sse = send(&app, "GET", "/v1/stream/g?offset=-1&live=sse", None, "").await;
    assert_eq!(sse.status(), 200);
    assert_eq!(st.metrics.live_count(Live::Sse), 1);
    assert!(metrics(&app).await.contains("ds_active_sse_connections 1"));
    drop(sse); // the client disconnects
    assert_eq!(st.metrics.live_count(Live::Sse), 0);

    // Long-poll: counted while waiting; a dropped request future (client
    // gone) releases it.
    let waiting = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                "GET",
                "/v1/stream/g?offset=now&live=long-poll",
                None,
                "",
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(st.metrics.live_count(Live::LongPoll), 1);
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(st.metrics.live_count(Live::LongPoll), 0);
}
