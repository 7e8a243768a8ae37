//! Router-level tests: the whole HTTP layer over the memory backend, driven
//! with `oneshot` (no socket). Live reads run with paused time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};

use durable_streams::config::ServerConfig;
use durable_streams::notify::WakeHub;
use durable_streams::storage::memory::MemoryStorage;

use crate::common::observed::ObservedReads;
use crate::common::router::{app, app_with, body, header, req, send};

async fn put(app: &Router, path: &str, ct: &str, data: &str) -> Response<Body> {
    send(
        app,
        req("PUT", path)
            .header("content-type", ct)
            .body(Body::from(data.to_string()))
            .unwrap(),
    )
    .await
}

async fn post(app: &Router, path: &str, ct: &str, data: &str) -> Response<Body> {
    send(
        app,
        req("POST", path)
            .header("content-type", ct)
            .body(Body::from(data.to_string()))
            .unwrap(),
    )
    .await
}

async fn get(app: &Router, uri: &str) -> Response<Body> {
    send(app, req("GET", uri).body(Body::empty()).unwrap()).await
}

/// Closes the stream at `path` (an empty POST with `Stream-Closed: true`).
async fn close(app: &Router, path: &str) -> Response<Body> {
    send(
        app,
        req("POST", path)
            .header("stream-closed", "true")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn create_append_read_round_trip() {
    let app = app();
    let res = put(&app, "/v1/stream/a/b", "text/plain", "hello ").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "location"),
        Some("http://localhost:4437/v1/stream/a/b")
    );
    assert_eq!(
        header(&res, "stream-next-offset"),
        Some("0000000000000001_0000000000000006")
    );
    assert_eq!(header(&res, "x-content-type-options"), Some("nosniff"));

    let res = post(&app, "/v1/stream/a/b", "text/plain", "world").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let tail = header(&res, "stream-next-offset").unwrap().to_string();
    assert_eq!(tail, "0000000000000002_000000000000000b");

    let res = get(&app, "/v1/stream/a/b?offset=-1").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-up-to-date"), Some("true"));
    assert_eq!(header(&res, "stream-next-offset"), Some(tail.as_str()));
    assert_eq!(header(&res, "content-length"), Some("11"));
    assert_eq!(body(res).await, "hello world");

    // Resume from the middle.
    let res = get(
        &app,
        "/v1/stream/a/b?offset=0000000000000001_0000000000000006",
    )
    .await;
    assert_eq!(body(res).await, "world");
}

#[tokio::test]
async fn idempotent_create_and_config_conflicts() {
    let app = app();
    let path = "/v1/stream/idem";
    assert_eq!(
        put(&app, path, "text/plain", "").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put(&app, path, "TEXT/PLAIN", "").await.status(),
        StatusCode::OK
    );
    let res = put(&app, path, "application/json", "").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&body(res).await).unwrap();
    assert_eq!(problem["code"], "CONFIG_MISMATCH");
    assert_eq!(problem["status"], 409);
}

#[tokio::test]
async fn json_mode_flattens_and_answers_arrays() {
    let app = app();
    let path = "/v1/stream/j";
    assert_eq!(
        put(&app, path, "application/json", "[]").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        post(&app, path, "application/json", "[]").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&app, path, "application/json", "{bad").await.status(),
        StatusCode::BAD_REQUEST
    );
    post(&app, path, "application/json", r#"{"a": 1.50}"#).await;
    post(&app, path, "application/json", r#"[[1,2], {"b":2}]"#).await;
    let res = get(&app, path).await;
    assert_eq!(body(res).await, r#"[{"a": 1.50},[1,2],{"b":2}]"#);
    let res = get(&app, &format!("{path}?offset=now")).await;
    assert_eq!(header(&res, "cache-control"), Some("no-store"));
    assert_eq!(body(res).await, "[]");
}

#[tokio::test]
async fn producers_are_deduplicated_and_fenced() {
    let app = app();
    let path = "/v1/stream/p";
    put(&app, path, "text/plain", "").await;
    let send_p = |epoch: u64, seq: u64, data: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                req("POST", path)
                    .header("content-type", "text/plain")
                    .header("producer-id", "w1")
                    .header("producer-epoch", epoch.to_string())
                    .header("producer-seq", seq.to_string())
                    .body(Body::from(data))
                    .unwrap(),
            )
            .await
        }
    };
    assert_eq!(send_p(0, 0, "a").await.status(), StatusCode::OK);
    assert_eq!(send_p(0, 1, "b").await.status(), StatusCode::OK);
    let dup = send_p(0, 0, "a").await;
    assert_eq!(dup.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&dup, "producer-seq"), Some("1"));
    let gap = send_p(0, 5, "x").await;
    assert_eq!(gap.status(), StatusCode::CONFLICT);
    assert_eq!(header(&gap, "producer-expected-seq"), Some("2"));
    assert_eq!(header(&gap, "producer-received-seq"), Some("5"));
    assert_eq!(send_p(1, 0, "c").await.status(), StatusCode::OK);
    let stale = send_p(0, 2, "z").await;
    assert_eq!(stale.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&stale, "producer-epoch"), Some("1"));
    assert_eq!(body(get(&app, path).await).await, "abc");
}

#[tokio::test]
async fn closed_streams_reject_appends_with_their_tail() {
    let app = app();
    let path = "/v1/stream/c";
    put(&app, path, "text/plain", "x").await;
    let close = send(
        &app,
        req("POST", path)
            .header("stream-closed", "true")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(close.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&close, "stream-closed"), Some("true"));
    let res = post(&app, path, "application/json", "1").await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "closure is checked before content type"
    );
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    assert_eq!(
        header(&res, "stream-next-offset"),
        Some("0000000000000001_0000000000000001")
    );
    let res = get(
        &app,
        &format!("{path}?offset=0000000000000001_0000000000000001"),
    )
    .await;
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    assert_eq!(body(res).await, "");
}

#[tokio::test]
async fn bad_input_gets_problem_json_not_500() {
    let app = app_with(ServerConfig {
        limits: durable_streams::config::Limits {
            max_body_bytes: 8,
            ..Default::default()
        },
        ..ServerConfig::default()
    });
    put(&app, "/v1/stream/s", "text/plain", "").await;
    let cases = [
        ("GET", "/v1/stream/s?offset=abc", StatusCode::BAD_REQUEST),
        (
            "GET",
            "/v1/stream/s?offset=0000000000000000_0000000000000009",
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/v1/stream/s?offset=-1&live=websocket",
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/v1/stream/s?live=sse", StatusCode::BAD_REQUEST),
        ("GET", "/v1/stream/a/../s", StatusCode::BAD_REQUEST),
        ("GET", "/v1/stream/a%00b", StatusCode::BAD_REQUEST),
        ("GET", "/v1/stream/missing", StatusCode::NOT_FOUND),
        ("PATCH", "/v1/stream/s", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/v1/stream/__ds/other", StatusCode::NOT_FOUND),
        (
            "PUT",
            "/v1/stream/__ds/subscriptions/x",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, status) in cases {
        let res = send(&app, req(method, uri).body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), status, "{method} {uri}");
        assert_eq!(
            header(&res, "content-type"),
            Some("application/problem+json"),
            "{uri}"
        );
    }
    let res = post(&app, "/v1/stream/s", "text/plain", "way too long").await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = send(
        &app,
        req("PUT", "/v1/stream/t")
            .header("stream-ttl", "03600")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn etags_vary_with_closure() {
    let app = app();
    let path = "/v1/stream/e";
    put(&app, path, "text/plain", "data").await;
    let first = get(&app, path).await;
    let etag = header(&first, "etag").unwrap().to_string();
    let again = send(
        &app,
        req("GET", path)
            .header("if-none-match", &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    close(&app, path).await;
    let closed = send(
        &app,
        req("GET", path)
            .header("if-none-match", &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(closed.status(), StatusCode::OK);
    assert_ne!(header(&closed, "etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn cors_preflight_allows_protocol_headers() {
    let app = app();
    let res = send(
        &app,
        req("OPTIONS", "/v1/stream/x")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "if-none-match, producer-id",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(res.status().is_success());
    let allowed = header(&res, "access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("if-none-match") && allowed.contains("producer-id"));
    // A preflight's answer varies with what it asks; other answers only
    // with the `Origin` (their CORS headers depend on nothing else).
    let vary = |res: &axum::http::Response<Body>| {
        res.headers()
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        vary(&res).join(", "),
        "origin, access-control-request-method, access-control-request-headers"
    );
    let res = send(
        &app,
        req("GET", "/v1/stream/__ds/jwks.json")
            .header("origin", "https://example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(vary(&res), ["origin"]);
}

#[tokio::test]
async fn forks_stitch_source_data_at_a_byte_sub_offset() {
    let app = app();
    put(&app, "/v1/stream/src", "text/plain", "first").await;
    post(&app, "/v1/stream/src", "text/plain", "second").await;
    let res = send(
        &app,
        req("PUT", "/v1/stream/fork")
            .header("stream-forked-from", "/v1/stream/src")
            .header("stream-fork-offset", "0000000000000001_0000000000000005")
            .header("stream-fork-sub-offset", "3")
            .body(Body::from("!"))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(header(&res, "content-type"), Some("text/plain"));
    assert_eq!(body(get(&app, "/v1/stream/fork").await).await, "firstsec!");
    // The source is soft-deleted while the fork lives, and gone after.
    let del = send(
        &app,
        req("DELETE", "/v1/stream/src").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/stream/src").await.status(), StatusCode::GONE);
    assert_eq!(body(get(&app, "/v1/stream/fork").await).await, "firstsec!");
    send(
        &app,
        req("DELETE", "/v1/stream/fork")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        get(&app, "/v1/stream/src").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(start_paused = true)]
async fn long_poll_times_out_with_204_and_a_cursor() {
    let app = app();
    let path = "/v1/stream/lp";
    put(&app, path, "text/plain", "").await;
    let res = get(&app, &format!("{path}?offset=now&live=long-poll")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-up-to-date"), Some("true"));
    assert!(
        header(&res, "stream-cursor")
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn long_poll_wakes_on_append() {
    let app = app();
    let path = "/v1/stream/lp2";
    put(&app, path, "text/plain", "old").await;
    let waiter = tokio::spawn({
        let app = app.clone();
        async move { get(&app, &format!("{path}?offset=now&live=long-poll")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    post(&app, path, "text/plain", "new").await;
    let res = waiter.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "new");
}

#[tokio::test(start_paused = true)]
async fn long_poll_on_a_closed_tail_returns_at_once() {
    let app = app();
    let path = "/v1/stream/lp3";
    send(
        &app,
        req("PUT", path)
            .header("stream-closed", "true")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let started = tokio::time::Instant::now();
    let res = get(&app, &format!("{path}?offset=-1&live=long-poll")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "must not wait for the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn sse_delivers_data_then_closes_at_eof() {
    let app = app();
    let path = "/v1/stream/sse";
    put(&app, path, "application/octet-stream", "\u{1}\u{2}").await;
    let res = get(&app, &format!("{path}?offset=-1&live=sse")).await;
    assert_eq!(header(&res, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&res, "stream-sse-data-encoding"), Some("base64"));
    let mut stream = res.into_body().into_data_stream();
    use futures_util::StreamExt;
    // A small data event travels in one frame with its control event.
    let first = stream.next().await.unwrap().unwrap();
    let (data, control) = std::str::from_utf8(&first)
        .unwrap()
        .split_once("\n\n")
        .unwrap();
    assert_eq!(data, "event: data\ndata:AQI=");
    assert!(control.starts_with("event: control\n") && control.contains("\"upToDate\":true"));
    // Closing the stream ends the SSE response with a final control event.
    close(&app, path).await;
    let last = stream.next().await.unwrap().unwrap();
    let last = std::str::from_utf8(&last).unwrap();
    assert!(last.contains("\"streamClosed\":true") && !last.contains("streamCursor"));
    assert!(stream.next().await.is_none(), "connection closes at EOF");
}

/// A large data event is not copied to join its control event: two frames.
#[tokio::test]
async fn sse_sends_a_large_event_apart_from_its_control_event() {
    use futures_util::StreamExt;
    let app = app();
    let path = "/v1/stream/sse-large";
    put(&app, path, "text/plain", &"x".repeat(20_000)).await;
    let res = get(&app, &format!("{path}?offset=-1&live=sse")).await;
    let mut stream = res.into_body().into_data_stream();
    let data = stream.next().await.unwrap().unwrap();
    assert!(data.starts_with(b"event: data\n") && data.ends_with(b"\n\n"));
    assert!(
        !std::str::from_utf8(&data)
            .unwrap()
            .contains("event: control")
    );
    let control = stream.next().await.unwrap().unwrap();
    assert!(control.starts_with(b"event: control\n"));
}

/// A subscriber that is caught up is fed from the wakes: each append reaches
/// it without a storage read (each used to cost one — a blocking-thread hop
/// and a `pread` per subscriber per event on the file backend).
#[tokio::test]
async fn caught_up_sse_subscribers_do_not_reread_storage() {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    let hub = WakeHub::new();
    let storage = Arc::new(ObservedReads::new(MemoryStorage::new(Arc::clone(&hub))));
    let app = crate::common::router::router(&crate::common::router::state_over(
        ServerConfig::default(),
        Arc::clone(&storage) as _,
        hub,
    ));
    let path = "/v1/stream/fan";
    put(&app, path, "text/plain", "a").await;
    let res = get(&app, &format!("{path}?offset=-1&live=sse")).await;
    let mut events = res.into_body().into_data_stream();
    let mut next_text =
        async || String::from_utf8(events.next().await.unwrap().unwrap().to_vec()).unwrap();
    let both = next_text().await;
    assert!(both.starts_with("event: data\ndata:a\n\nevent: control\n"));
    assert!(both.contains("\"upToDate\":true"));
    let before = storage.reads.load(Ordering::SeqCst);
    for word in ["b", "c", "d", "e"] {
        post(&app, path, "text/plain", word).await;
        let both = next_text().await;
        assert!(both.starts_with(&format!("event: data\ndata:{word}\n\nevent: control\n")));
        assert!(both.contains("\"upToDate\":true"));
    }
    assert_eq!(
        storage.reads.load(Ordering::SeqCst),
        before,
        "no storage reads"
    );
    // A wake that carries no records (a close) still makes it read.
    close(&app, path).await;
    assert!(next_text().await.contains("\"streamClosed\":true"));
    assert!(storage.reads.load(Ordering::SeqCst) > before);
}
