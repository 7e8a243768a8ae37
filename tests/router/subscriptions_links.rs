//! Links follow the streams whatever changes them, not only HTTP writes:
//! deletes, TTL expiry (the sweeper), restores while running, and imports
//! made while the server was stopped (picked up by the startup resync).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use serde_json::{Value, json};

use durable_streams::config::{ServerConfig, SyncMode};
use durable_streams::http::AppState;
use durable_streams::notify::WakeHub;
use durable_streams::storage::file::FileStorage;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{CreateRequest, Expiry, Storage, now_ms};
use durable_streams::subscriptions::worker;

use crate::common::json_api;

/// Calls without a token.
async fn call(app: &Router, method: &str, uri: &str, body: Value) -> (u16, Value) {
    json_api::call(app, method, uri, None, body).await
}

const SUBS: &str = "/v1/stream/__ds/subscriptions";
const ZERO: &str = "0000000000000000_0000000000000000";

fn app_over(storage: Arc<dyn Storage>, hub: Arc<WakeHub>) -> (Router, AppState) {
    let st = crate::common::router::state_over(ServerConfig::default(), storage, hub);
    (crate::common::router::router(&st), st)
}

/// The subscription's links by path.
async fn links(app: &Router, id: &str) -> Vec<(String, String, String)> {
    let (_, got) = call(app, "GET", &format!("{SUBS}/{id}"), Value::Null).await;
    got["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_string(),
                l["link_type"].as_str().unwrap().to_string(),
                l["acked_offset"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls until `f` holds, for at most five seconds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn create(content: &str, expiry: Option<Expiry>) -> CreateRequest {
    CreateRequest {
        content_type: Some("application/json".into()),
        expiry,
        closed: false,
        fork: None,
        body: Bytes::from(content.to_string()),
        now: now_ms(),
    }
}

async fn pull_sub(app: &Router, id: &str, extra: Value) {
    let mut cfg = json!({"type": "pull-wake", "wake_stream": "w"});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let (s, body) = call(app, "PUT", &format!("{SUBS}/{id}"), cfg).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test]
async fn deletes_unlink_glob_streams_and_reset_explicit_ones() {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let (app, st) = app_over(storage, hub);
    worker::spawn(st.clone());
    for s in ["w", "e/a", "x"] {
        call(&app, "PUT", &format!("/v1/stream/{s}"), json!({"n": 0})).await;
    }
    pull_sub(&app, "s", json!({"pattern": "e/*", "streams": ["x"]})).await;
    let before = links(&app, "s").await;
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|(_, _, acked)| acked != ZERO));

    assert_eq!(
        call(&app, "DELETE", "/v1/stream/e/a", Value::Null).await.0,
        204
    );
    assert_eq!(
        call(&app, "DELETE", "/v1/stream/x", Value::Null).await.0,
        204
    );
    eventually(
        "the glob link to go and the explicit one to reset",
        || async {
            links(&app, "s").await
                == vec![("x".to_string(), "explicit".to_string(), ZERO.to_string())]
        },
    )
    .await;

    // Created again, the explicit stream is pending from its start.
    call(&app, "PUT", "/v1/stream/x", json!({"n": 1})).await;
    eventually("a wake for the recreated stream", || async {
        let (_, ev) = call(&app, "GET", "/v1/stream/w?offset=-1", Value::Null).await;
        ev.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["stream"] == "x" && e["streams"][0]["has_pending"] == true)
        })
    })
    .await;
}

#[tokio::test]
async fn expired_streams_are_unlinked_when_the_sweeper_removes_them() {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let (app, st) = app_over(storage.clone(), hub);
    worker::spawn(st.clone());
    call(&app, "PUT", "/v1/stream/w", Value::Null).await;
    storage
        .create("t/short", create("[1]", Some(Expiry::At(now_ms() + 100))))
        .unwrap();
    storage.create("t/long", create("[1]", None)).unwrap();
    pull_sub(&app, "s", json!({"pattern": "t/*"})).await;
    assert_eq!(links(&app, "s").await.len(), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(storage.sweep_expired(now_ms()).unwrap(), 1);
    eventually("the expired stream's link to go", || async {
        let l = links(&app, "s").await;
        l.len() == 1 && l[0].0 == "t/long"
    })
    .await;
}

#[tokio::test]
async fn a_restored_stream_is_linked_at_its_start_and_woken() {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let (app, st) = app_over(storage.clone(), hub);
    worker::spawn(st.clone());
    call(&app, "PUT", "/v1/stream/w", Value::Null).await;
    pull_sub(&app, "s", json!({"pattern": "imp/*"})).await;
    let other = MemoryStorage::new(WakeHub::new());
    other.create("imp/a", create("[1,2]", None)).unwrap();
    let (meta, records) = other.export_stream("imp/a").unwrap();
    storage.restore_stream("imp/a", meta, records).unwrap();
    eventually("a wake for the restored stream", || async {
        let (_, ev) = call(&app, "GET", "/v1/stream/w?offset=-1", Value::Null).await;
        ev.as_array()
            .is_some_and(|a| a.iter().any(|e| e["stream"] == "imp/a"))
    })
    .await;
    assert_eq!(
        links(&app, "s").await,
        vec![("imp/a".to_string(), "glob".to_string(), ZERO.to_string())]
    );
}

fn open_file(dir: &std::path::Path) -> (Arc<dyn Storage>, Arc<WakeHub>) {
    let hub = WakeHub::new();
    let s = FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(100),
        Arc::clone(&hub),
    )
    .unwrap();
    (Arc::new(s), hub)
}

#[tokio::test]
async fn streams_imported_while_stopped_are_found_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (storage, hub) = open_file(dir.path());
        let (app, _st) = app_over(Arc::clone(&storage), hub);
        call(&app, "PUT", "/v1/stream/w", Value::Null).await;
        pull_sub(&app, "s", json!({"pattern": "imp/*"})).await;
        storage.shutdown().unwrap();
    }
    {
        // An offline import: nothing tells the engine.
        let (storage, _) = open_file(dir.path());
        let other = MemoryStorage::new(WakeHub::new());
        other.create("imp/a", create("[1]", None)).unwrap();
        let (meta, records) = other.export_stream("imp/a").unwrap();
        storage.restore_stream("imp/a", meta, records).unwrap();
        storage.shutdown().unwrap();
    }
    let (storage, hub) = open_file(dir.path());
    let (app, st) = app_over(storage, hub);
    assert!(
        links(&app, "s").await.is_empty(),
        "not linked before the resync"
    );
    worker::spawn(st.clone());
    eventually("the startup resync to link and wake the import", || async {
        let (_, ev) = call(&app, "GET", "/v1/stream/w?offset=-1", Value::Null).await;
        ev.as_array()
            .is_some_and(|a| a.iter().any(|e| e["stream"] == "imp/a"))
    })
    .await;
    st.shutdown.cancel();
}
