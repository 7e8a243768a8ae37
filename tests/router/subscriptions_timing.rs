//! Time-dependent subscription behaviour with paused tokio time: the webhook
//! retry schedule (1 s doubling to 60 s, ±20 % jitter, same wake until it
//! is delivered), webhook lease expiry (a new generation) and pull-wake
//! claim expiry (a new wake event, the old claim fenced). The network is a
//! test double recording when each attempt happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use durable_streams::config::ServerConfig;
use durable_streams::http::AppState;
use durable_streams::notify::WakeHub;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::subscriptions::delivery::{PostFuture, Transport};
use durable_streams::subscriptions::worker;

use crate::common::json_api;
use json_api::call;

const SUBS: &str = "/v1/stream/__ds/subscriptions";

/// Records every attempt and answers with `answer(attempt number)`.
struct Fake {
    attempts: Mutex<Vec<(Instant, Value)>>,
    answer: Box<dyn Fn(usize) -> Result<Value, String> + Send + Sync>,
}

impl Transport for Fake {
    fn post<'a>(&'a self, _url: &'a str, _sig: &'a str, body: Bytes) -> PostFuture<'a> {
        let mut a = self.attempts.lock().unwrap();
        a.push((Instant::now(), serde_json::from_slice(&body).unwrap()));
        let r = (self.answer)(a.len());
        Box::pin(async move { r })
    }
}

fn app(
    answer: impl Fn(usize) -> Result<Value, String> + Send + Sync + 'static,
) -> (Router, AppState, Arc<Fake>) {
    let st = crate::common::router::memory_state(ServerConfig::default());
    let fake = Arc::new(Fake {
        attempts: Mutex::new(Vec::new()),
        answer: Box::new(answer),
    });
    st.subs.set_transport(fake.clone());
    worker::spawn(st.clone());
    (crate::common::router::router(&st), st, fake)
}

async fn webhook_sub(app: &Router, lease_ttl_ms: u64) {
    let (s, _) = call(app, "PUT", "/v1/stream/e/a", None, Value::Null).await;
    assert_eq!(s, 201);
    let (s, _) = call(
        app,
        "PUT",
        &format!("{SUBS}/hook"),
        None,
        json!({"type": "webhook", "streams": ["e/a"], "webhook": {"url": "http://localhost:9/hook"},
               "lease_ttl_ms": lease_ttl_ms}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(app, "POST", "/v1/stream/e/a", None, json!({"n": 1})).await;
    assert_eq!(s, 204);
}

#[tokio::test(start_paused = true)]
async fn webhook_retries_back_off_from_one_second_to_a_minute_with_jitter() {
    let failures = 10;
    let (app, _, fake) = app(move |n| {
        if n <= failures {
            Err("receiver down".into())
        } else {
            Ok(json!({"done": true}))
        }
    });
    webhook_sub(&app, 30_000).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, got) = call(&app, "GET", &format!("{SUBS}/hook"), None, Value::Null).await;
    assert_eq!(got["status"], "failed", "retrying is reported as failed");
    // 1+2+4+8+16+32+60+60+60+60 s ≈ 303 s, at most 20 % more.
    tokio::time::sleep(Duration::from_secs(400)).await;

    let attempts = fake.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.len(),
        failures + 1,
        "one attempt per retry, then success"
    );
    let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
    for (i, base) in expected.iter().enumerate() {
        let gap = attempts[i + 1].0 - attempts[i].0;
        let base = Duration::from_secs(*base);
        let (lo, hi) = (
            base.mul_f64(0.8),
            base.mul_f64(1.2) + Duration::from_millis(2),
        );
        assert!(
            lo <= gap && gap <= hi,
            "retry {} came after {gap:?}, not {lo:?}..{hi:?}",
            i + 1
        );
    }
    // Every attempt carries the same wake: retries do not start new generations.
    let first = &attempts[0].1;
    assert!(
        attempts.iter().all(
            |(_, b)| b["wake_id"] == first["wake_id"] && b["generation"] == first["generation"]
        )
    );
    let (_, got) = call(&app, "GET", &format!("{SUBS}/hook"), None, Value::Null).await;
    assert_eq!(got["status"], "active");
    assert_ne!(
        got["streams"][0]["acked_offset"],
        "0000000000000000_0000000000000000"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_webhook_wake_lapses_and_is_sent_again_with_a_new_generation() {
    // The receiver accepts but never says done and never calls back.
    let (app, _, fake) = app(|_| Ok(json!({})));
    webhook_sub(&app, 2_000).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let attempts = fake.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 2, "{} attempts", attempts.len());
    for pair in attempts.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(2_000)
                && gap <= Duration::from_millis(2_000) + worker::TICK,
            "re-sent after {gap:?}"
        );
        assert_eq!(
            pair[1].1["generation"],
            pair[0].1["generation"].as_u64().unwrap() + 1
        );
        assert_ne!(pair[1].1["wake_id"], pair[0].1["wake_id"]);
    }
    // The first wake's callback token is fenced now.
    let first = &attempts[0].1;
    let (s, body) = call(
        &app,
        "POST",
        &format!("{SUBS}/hook/callback"),
        first["callback_token"].as_str(),
        json!({"wake_id": first["wake_id"], "generation": first["generation"], "acks": [], "done": true}),
    )
    .await;
    assert_eq!((s, &body["error"]["code"]), (409, &json!("FENCED")));
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_pull_wake_claim_ends_and_pending_work_is_woken_again() {
    let (app, _, _) = app(|_| Err("unused".into()));
    for s in ["w", "e/x"] {
        let (st, _) = call(&app, "PUT", &format!("/v1/stream/{s}"), None, Value::Null).await;
        assert_eq!(st, 201);
    }
    let (s, _) = call(
        &app,
        "PUT",
        &format!("{SUBS}/pull"),
        None,
        json!({"type": "pull-wake", "streams": ["e/x"], "wake_stream": "w", "lease_ttl_ms": 1000}),
    )
    .await;
    assert_eq!(s, 201);
    call(&app, "POST", "/v1/stream/e/x", None, json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = |app: Router| async move {
        call(&app, "GET", "/v1/stream/w?offset=-1", None, Value::Null)
            .await
            .1
    };
    let ev = events(app.clone()).await;
    assert_eq!(ev.as_array().map(Vec::len), Some(1), "{ev}");
    assert_eq!(ev[0]["generation"], 1);

    let (s, c1) = call(
        &app,
        "POST",
        &format!("{SUBS}/pull/claim"),
        None,
        json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, _) = call(
        &app,
        "POST",
        &format!("{SUBS}/pull/claim"),
        None,
        json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(s, 409, "the lease is still held");
    // Lease 1 s from the claim, noticed within a tick.
    tokio::time::sleep(Duration::from_millis(400) + worker::TICK + Duration::from_millis(50)).await;
    let ev = events(app.clone()).await;
    assert_eq!(
        ev.as_array().map(Vec::len),
        Some(2),
        "a new wake event: {ev}"
    );
    assert_eq!(ev[1]["generation"], 2);
    let (s, c2) = call(
        &app,
        "POST",
        &format!("{SUBS}/pull/claim"),
        None,
        json!({"worker": "w2"}),
    )
    .await;
    assert_eq!((s, &c2["generation"]), (200, &json!(2)));
    let (s, body) = call(
        &app,
        "POST",
        &format!("{SUBS}/pull/ack"),
        c1["token"].as_str(),
        json!({"wake_id": c1["wake_id"], "generation": 1, "acks": [], "done": true}),
    )
    .await;
    assert_eq!((s, &body["error"]["code"]), (409, &json!("FENCED")));
}

#[tokio::test(start_paused = true)]
async fn a_stored_retry_schedule_is_resumed_not_restarted() {
    use durable_streams::offset::Offset;
    use durable_streams::storage::{CreateRequest, Storage, now_ms};
    use durable_streams::subscriptions::registry::{Config, Delivery, Link, Retry, Sub, WakeState};
    use durable_streams::subscriptions::store;

    // What a previous run left: a wake in generation 3 that failed three
    // times, its next attempt due in 5 s.
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let info = match storage
        .create(
            "e/a",
            CreateRequest {
                content_type: Some("text/plain".into()),
                expiry: None,
                closed: false,
                fork: None,
                body: Bytes::from_static(b"data"),
                now: now_ms(),
            },
        )
        .unwrap()
    {
        durable_streams::storage::CreateOutcome::Created(i) => i,
        other => panic!("{other:?}"),
    };
    let config = Config {
        delivery: Delivery::Webhook {
            url: "http://localhost:9/hook".into(),
        },
        pattern: None,
        streams: vec!["e/a".into()],
        lease_ttl_ms: 30_000,
        description: None,
    };
    let mut link = Link::new(true, Offset::ZERO, info.id);
    link.tail = info.tail;
    let mut sub = Sub::new(
        "hook".into(),
        config,
        "2026-01-01T00:00:00.000Z".into(),
        "http://localhost/v1/stream/".into(),
        [("e/a".to_string(), link)].into_iter().collect(),
    );
    let now = now_ms();
    sub.generation = 3;
    sub.wake = Some(WakeState {
        wake_id: "w_saved".into(),
        generation: 3,
        snapshot: vec![("e/a".into(), info.tail)],
        holder: None,
        lease_until: now + 60_000,
    });
    sub.retry = Some(Retry {
        failures: 3,
        next_attempt_at: now + 5_000,
    });
    storage
        .control_put(store::NS_SUBS, "hook", &store::encode_sub(&sub))
        .unwrap();

    // "Restart": load it and run the worker against a receiver still down.
    let st = crate::common::router::state_over(ServerConfig::default(), storage, hub);
    let fake = Arc::new(Fake {
        attempts: Mutex::new(Vec::new()),
        answer: Box::new(|_| Err("still down".into())),
    });
    st.subs.set_transport(fake.clone());
    let start = Instant::now();
    worker::spawn(st.clone());
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert!(
        fake.attempts.lock().unwrap().is_empty(),
        "the schedule is honoured, not reset"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let attempts = fake.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = attempts[0].0 - start;
    assert!(
        first >= Duration::from_millis(4_900) && first <= Duration::from_millis(5_100),
        "{first:?}"
    );
    assert_eq!(
        (&attempts[0].1["wake_id"], &attempts[0].1["generation"]),
        (&json!("w_saved"), &json!(3))
    );
    // The fourth failure waits 8 s ± 20 %, continuing the stored count.
    let gap = attempts[1].0 - attempts[0].0;
    assert!(
        gap >= Duration::from_millis(6_400) && gap <= Duration::from_millis(9_602),
        "{gap:?}"
    );
}
