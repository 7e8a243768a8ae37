//! Subscription APIs through the router over the memory backend (no
//! socket, no wake worker): lifecycle, membership, SSRF rejection, the JWKS,
//! and pull-wake claim / ack fencing with scoped tokens.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use durable_streams::config::ServerConfig;
use durable_streams::subscriptions::signing::verify_with_jwks;

use crate::common::json_api;
use json_api::call;

const SUBS: &str = "/v1/stream/__ds/subscriptions";

fn app() -> (Router, durable_streams::http::AppState) {
    let st = crate::common::router::memory_state(ServerConfig::default());
    (crate::common::router::router(&st), st)
}

#[tokio::test]
async fn lifecycle_and_membership() {
    let (app, _) = app();
    let (s, _) = call(&app, "PUT", "/v1/stream/events/old", None, json!({"a": 1})).await;
    assert_eq!(s, StatusCode::CREATED);
    let cfg = json!({
        "type": "webhook",
        "pattern": "events/*",
        "streams": ["manual/a"],
        "webhook": {"url": "http://localhost:9/hook"},
    });
    let (s, created) = call(&app, "PUT", &format!("{SUBS}/s1"), None, cfg.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        created["webhook"]["signing"]["jwks_url"],
        "http://localhost:4437/v1/stream/__ds/jwks.json"
    );
    let (s, _) = call(&app, "PUT", &format!("{SUBS}/s1"), None, cfg.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let mut changed = cfg.clone();
    changed["lease_ttl_ms"] = json!(5000);
    let (s, _) = call(&app, "PUT", &format!("{SUBS}/s1"), None, changed).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The existing stream is backfilled at its tail; explicit links are listed.
    let (_, got) = call(&app, "GET", &format!("{SUBS}/s1"), None, Value::Null).await;
    let streams = got["streams"].as_array().unwrap();
    let old = streams.iter().find(|l| l["path"] == "events/old").unwrap();
    assert_eq!(old["link_type"], "glob");
    assert_ne!(old["acked_offset"], "0000000000000000_0000000000000000");
    assert!(
        streams
            .iter()
            .any(|l| l["path"] == "manual/a" && l["link_type"] == "explicit")
    );

    let (s, _) = call(
        &app,
        "POST",
        &format!("{SUBS}/s1/streams"),
        None,
        json!({"streams": ["manual/b"]}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("{SUBS}/s1/streams/manual%2Fb"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, got) = call(&app, "GET", &format!("{SUBS}/s1"), None, Value::Null).await;
    assert!(
        !got["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"] == "manual/b")
    );

    let (s, _) = call(&app, "DELETE", &format!("{SUBS}/s1"), None, Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, "GET", &format!("{SUBS}/s1"), None, Value::Null).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rejects_unsafe_webhooks_and_bad_configs() {
    let (app, _) = app();
    for url in [
        "http://10.0.0.1/hook",
        "https://169.254.169.254/",
        "http://example.com/",
    ] {
        let (s, body) = call(
            &app,
            "PUT",
            &format!("{SUBS}/bad"),
            None,
            json!({"type": "webhook", "pattern": "e/*", "webhook": {"url": url}}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(body["error"]["code"], "WEBHOOK_URL_REJECTED");
    }
    let (s, _) = call(
        &app,
        "PUT",
        &format!("{SUBS}/bad"),
        None,
        json!({"type": "webhook", "webhook": {"url": "http://localhost/"}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "pattern or streams is required");
}

#[tokio::test]
async fn jwks_verifies_server_signatures() {
    let (app, st) = app();
    let res = app
        .clone()
        .oneshot(
            Request::get("/v1/stream/__ds/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/jwk-set+json");
    let jwks: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let header = st.subs.keys.signature_header(1_700_000_000, b"{}");
    assert!(verify_with_jwks(&jwks, &header, b"{}"));
}

#[tokio::test]
async fn callbacks_need_a_valid_scoped_token() {
    let (app, _) = app();
    call(
        &app,
        "PUT",
        &format!("{SUBS}/p2"),
        None,
        json!({"type": "pull-wake", "streams": ["events/x"], "wake_stream": "wake/pool"}),
    )
    .await;
    let ack = json!({"wake_id": "w", "generation": 1, "acks": [], "done": true});
    let (s, _) = call(&app, "POST", &format!("{SUBS}/p2/ack"), None, ack.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &app,
        "POST",
        &format!("{SUBS}/p2/ack"),
        Some("forged.token"),
        ack,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // An explicit link to a stream that later gets data becomes claimable.
    call(&app, "PUT", "/v1/stream/events/x", None, json!({"n": 1})).await;
    let (s, claimed) = call(
        &app,
        "POST",
        &format!("{SUBS}/p2/claim"),
        None,
        json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, busy) = call(
        &app,
        "POST",
        &format!("{SUBS}/p2/claim"),
        None,
        json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(busy["error"]["code"], "ALREADY_CLAIMED");
    assert_eq!(busy["error"]["current_holder"], "w1");
    let token = claimed["token"].as_str().unwrap();
    let tail = claimed["streams"][0]["tail_offset"].clone();
    let ack = json!({
        "wake_id": claimed["wake_id"], "generation": claimed["generation"],
        "acks": [{"stream": "events/x", "offset": tail}], "done": true,
    });
    let (s, body) = call(
        &app,
        "POST",
        &format!("{SUBS}/p2/ack"),
        Some(token),
        ack.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"ok": true, "next_wake": false}));
    let (s, body) = call(&app, "POST", &format!("{SUBS}/p2/ack"), Some(token), ack).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "FENCED");
    let (s, _) = call(
        &app,
        "POST",
        &format!("{SUBS}/p2/release"),
        Some(token),
        json!({"wake_id": claimed["wake_id"], "generation": claimed["generation"]}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, got) = call(&app, "GET", &format!("{SUBS}/p2"), None, Value::Null).await;
    assert_eq!(got["streams"][0]["acked_offset"], tail);
}
