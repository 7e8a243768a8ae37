//! The live-read core (`http::live`) through both of its modes: long-poll
//! and SSE ride out a storage 503 the same way, and both end at shutdown.
//! Paused time throughout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};
use futures_util::StreamExt;

use durable_streams::config::ServerConfig;
use durable_streams::http::AppState;
use durable_streams::notify::{Wake, WakeHub};
use durable_streams::storage::memory::MemoryStorage;

use crate::common::observed::ObservedReads;
use crate::common::router::{body, req, router, send, state_over};

/// A server over a memory backend whose reads can be switched off, long
/// polls held 5 s, SSE connections 60 s with keep-alives every 1 s.
fn setup() -> (AppState, Router, Arc<ObservedReads>) {
    let hub = WakeHub::new();
    let storage = Arc::new(ObservedReads::new(MemoryStorage::new(Arc::clone(&hub))));
    let config = ServerConfig {
        long_poll_timeout: Duration::from_secs(5),
        sse_reconnect: Duration::from_secs(60),
        sse_keepalive: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let st = state_over(config, Arc::clone(&storage) as _, hub);
    let app = router(&st);
    (st, app, storage)
}

async fn call(app: &Router, method: &str, uri: &str, data: &str) -> Response<Body> {
    let b = req(method, uri).header("content-type", "text/plain");
    send(app, b.body(Body::from(data.to_string())).unwrap()).await
}

fn spawn_get(app: &Router, uri: String) -> tokio::task::JoinHandle<Response<Body>> {
    let app = app.clone();
    tokio::spawn(async move { call(&app, "GET", &uri, "").await })
}

/// Makes every reader of `name` read storage (a wake without records).
fn nudge(st: &AppState, name: &str) {
    st.hub.wake(name, Wake::unknown());
}

#[tokio::test(start_paused = true)]
async fn long_poll_rides_out_a_storage_503_and_answers_when_it_is_back() {
    let (st, app, storage) = setup();
    call(&app, "PUT", "/v1/stream/lp", "").await;
    let waiter = spawn_get(&app, "/v1/stream/lp?offset=now&live=long-poll".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    storage.set_down(true);
    nudge(&st, "lp");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let failed = storage.reads.load(Ordering::SeqCst);
    assert!(failed >= 3, "retried while down: {failed} reads");
    assert!(!waiter.is_finished(), "a 503 while waiting is ridden out");
    call(&app, "POST", "/v1/stream/lp", "x").await;
    storage.set_down(false);
    let res = waiter.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "x");
}

#[tokio::test(start_paused = true)]
async fn long_poll_still_unavailable_at_its_timeout_answers_503() {
    let (st, app, storage) = setup();
    call(&app, "PUT", "/v1/stream/lp", "").await;
    let waiter = spawn_get(&app, "/v1/stream/lp?offset=now&live=long-poll".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    storage.set_down(true);
    nudge(&st, "lp");
    let started = tokio::time::Instant::now();
    let res = waiter.await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "held until the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn sse_rides_out_a_storage_503_with_keep_alives() {
    let (st, app, storage) = setup();
    call(&app, "PUT", "/v1/stream/s", "a").await;
    let res = call(&app, "GET", "/v1/stream/s?offset=-1&live=sse", "").await;
    let mut events = res.into_body().into_data_stream();
    let mut next =
        async || String::from_utf8(events.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(next().await.starts_with("event: data\ndata:a\n"));
    storage.set_down(true);
    nudge(&st, "s");
    assert_eq!(next().await, ": keep-alive\n\n");
    assert_eq!(next().await, ": keep-alive\n\n");
    call(&app, "POST", "/v1/stream/s", "b").await;
    storage.set_down(false);
    let mut got = next().await;
    while got == ": keep-alive\n\n" {
        got = next().await;
    }
    assert!(
        got.starts_with("event: data\ndata:b\n\nevent: control\n"),
        "{got}"
    );
    assert!(got.contains("\"upToDate\":true"));
}

#[tokio::test(start_paused = true)]
async fn both_modes_end_at_shutdown() {
    let (st, app, _) = setup();
    call(&app, "PUT", "/v1/stream/s", "").await;
    let poll = spawn_get(&app, "/v1/stream/s?offset=now&live=long-poll".into());
    let res = call(&app, "GET", "/v1/stream/s?offset=now&live=sse", "").await;
    let mut events = res.into_body().into_data_stream();
    assert!(
        events
            .next()
            .await
            .unwrap()
            .unwrap()
            .starts_with(b"event: control\n")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    st.shutdown.cancel();
    let res = poll.await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(events.next().await.is_none(), "the SSE body ends");
}

#[tokio::test(start_paused = true)]
async fn sse_skips_stale_wakes_and_reads_nothing_for_them() {
    let (st, app, storage) = setup();
    call(&app, "PUT", "/v1/stream/s", "a").await;
    let res = call(&app, "GET", "/v1/stream/s?offset=-1&live=sse", "").await;
    let tail = res.headers().get("stream-next-offset").cloned();
    assert!(tail.is_none(), "SSE carries offsets in control events");
    let mut events = res.into_body().into_data_stream();
    assert!(
        events
            .next()
            .await
            .unwrap()
            .unwrap()
            .starts_with(b"event: data\n")
    );
    let before = storage.reads.load(Ordering::SeqCst);
    // A wake behind the reader's position is old news.
    st.hub.wake(
        "s",
        Wake::bare(durable_streams::offset::Offset::new(0, 0), false),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(storage.reads.load(Ordering::SeqCst), before);
    call(&app, "POST", "/v1/stream/s", "b").await;
    let got = events.next().await.unwrap().unwrap();
    assert!(got.starts_with(b"event: data\ndata:b\n"));
    assert_eq!(
        storage.reads.load(Ordering::SeqCst),
        before,
        "answered from the wake"
    );
}
