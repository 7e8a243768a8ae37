//! Conditional appends (`If-Match: "<offset>"`, the optimistic-concurrency
//! proposal) and the append precedence they slot into: every status the
//! proposal names, with the headers it requires.

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};

use crate::common::router::{app, body, header, problem_code, req, send};

const S: &str = "/v1/stream/occ";

/// A `POST` of `data` (as `text/plain` unless `extra` names a type) with
/// extra headers.
async fn post_with(app: &Router, path: &str, data: &str, extra: &[(&str, &str)]) -> Response<Body> {
    let mut r = req("POST", path);
    if !data.is_empty() && !extra.iter().any(|(k, _)| *k == "content-type") {
        r = r.header("content-type", "text/plain");
    }
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    send(app, r.body(Body::from(data.to_string())).unwrap()).await
}

/// Creates `S` as `text/plain` holding `data`; returns its tail.
async fn create(app: &Router, data: &str) -> String {
    let res = send(
        app,
        req("PUT", S)
            .header("content-type", "text/plain")
            .body(Body::from(data.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    header(&res, "stream-next-offset").unwrap().to_string()
}

fn quoted(offset: &str) -> String {
    format!("\"{offset}\"")
}

async fn read_all(app: &Router) -> String {
    let res = send(
        app,
        req("GET", &format!("{S}?offset=-1"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    String::from_utf8(body(res).await.to_vec()).unwrap()
}

#[tokio::test]
async fn empty_post_to_a_closed_stream_is_a_400_not_a_409() {
    let app = app();
    create(&app, "x").await;
    let res = post_with(&app, S, "", &[("stream-closed", "true")]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // No body and no Stream-Closed: malformed, whatever the stream's state.
    let res = post_with(&app, S, "", &[("content-type", "text/plain")]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(res).await, "EMPTY_BODY");
    // With a body it is still the closed stream's 409.
    let res = post_with(&app, S, "y", &[]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(header(&res, "stream-closed"), Some("true"));
}

#[tokio::test]
async fn matching_if_match_appends_and_answers_the_new_tail_as_etag() {
    let app = app();
    let tail = create(&app, "a").await;
    let res = post_with(&app, S, "b", &[("if-match", &quoted(&tail))]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let next = header(&res, "stream-next-offset").unwrap().to_string();
    assert_ne!(next, tail);
    assert_eq!(header(&res, "etag"), Some(quoted(&next).as_str()));
    // Chained: the ETag is the next If-Match.
    let etag = header(&res, "etag").unwrap().to_string();
    let res = post_with(&app, S, "c", &[("if-match", &etag)]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(read_all(&app).await, "abc");
    // An unconditional append carries the ETag too.
    let res = post_with(&app, S, "d", &[]).await;
    let next = header(&res, "stream-next-offset").unwrap();
    assert_eq!(header(&res, "etag"), Some(quoted(next).as_str()));
}

#[tokio::test]
async fn stale_if_match_is_a_412_with_the_current_tail_and_writes_nothing() {
    let app = app();
    let first = create(&app, "a").await;
    let res = post_with(&app, S, "b", &[]).await;
    let tail = header(&res, "stream-next-offset").unwrap().to_string();
    let res = post_with(&app, S, "lost", &[("if-match", &quoted(&first))]).await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&res, "etag"), Some(quoted(&tail).as_str()));
    assert_eq!(header(&res, "stream-next-offset"), Some(tail.as_str()));
    assert_eq!(header(&res, "stream-closed"), None);
    assert_eq!(problem_code(res).await, "PRECONDITION_FAILED");
    assert_eq!(read_all(&app).await, "ab");
    // The retry guidance: the 412's ETag is the new If-Match.
    let res = post_with(&app, S, "c", &[("if-match", &quoted(&tail))]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(read_all(&app).await, "abc");
}

#[tokio::test]
async fn if_match_on_a_closed_stream() {
    let app = app();
    let first = create(&app, "a").await;
    let res = post_with(
        &app,
        S,
        "",
        &[("stream-closed", "true"), ("if-match", &quoted(&first))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    // Data: the closure comes first (409), whatever If-Match says.
    let res = post_with(&app, S, "b", &[("if-match", &quoted(&first))]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    // A close-only retry on the right tail is the idempotent 204 ...
    let ok = post_with(
        &app,
        S,
        "",
        &[("stream-closed", "true"), ("if-match", &quoted(&first))],
    )
    .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    // ... on another tail a 412 that tells of the closure.
    let stale = "\"0000000000000000_0000000000000000\"";
    let res = post_with(
        &app,
        S,
        "",
        &[("stream-closed", "true"), ("if-match", stale)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&res, "stream-closed"), Some("true"));
    assert_eq!(header(&res, "etag"), Some(quoted(&first).as_str()));
    assert_eq!(header(&res, "stream-next-offset"), Some(first.as_str()));
}

#[tokio::test]
async fn malformed_or_unsupported_if_match_is_a_400() {
    let app = app();
    let tail = create(&app, "a").await;
    for (value, code) in [
        ("*", "IF_MATCH_WILDCARD_UNSUPPORTED"),
        (tail.as_str(), "INVALID_IF_MATCH"),
        (
            "W/\"0000000000000001_0000000000000001\"",
            "INVALID_IF_MATCH",
        ),
        ("\"-1\"", "INVALID_IF_MATCH"),
        ("\"now\"", "INVALID_IF_MATCH"),
        ("\"junk\"", "INVALID_IF_MATCH"),
    ] {
        let res = post_with(&app, S, "b", &[("if-match", value)]).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{value}");
        assert_eq!(problem_code(res).await, code, "{value}");
    }
    let q = quoted(&tail);
    let twice = send(
        &app,
        req("POST", S)
            .header("content-type", "text/plain")
            .header("if-match", &q)
            .header("if-match", &q)
            .body(Body::from("b"))
            .unwrap(),
    )
    .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    assert_eq!(read_all(&app).await, "a");
}

#[tokio::test]
async fn if_match_with_producer_headers_is_a_400() {
    let app = app();
    let tail = create(&app, "a").await;
    let producer = [
        ("producer-id", "p"),
        ("producer-epoch", "0"),
        ("producer-seq", "0"),
    ];
    // Matching or not, both mechanisms at once are refused.
    for etag in [
        quoted(&tail),
        "\"0000000000000000_0000000000000000\"".into(),
    ] {
        let mut h = producer.to_vec();
        h.push(("if-match", &etag));
        let res = post_with(&app, S, "b", &h).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(problem_code(res).await, "IF_MATCH_WITH_PRODUCER");
    }
    assert_eq!(read_all(&app).await, "a");
    // The producer never got its seq 0 accepted: it starts there now.
    let res = post_with(&app, S, "b", &producer).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn if_match_precedence_404_then_409_then_412() {
    let app = app();
    let stale = "\"0000000000000000_0000000000000000\"";
    // 1. A missing stream is a 404.
    let res = post_with(&app, "/v1/stream/missing", "b", &[("if-match", stale)]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    create(&app, "a").await;
    // 3. A content type mismatch before a failed precondition.
    let res = post_with(
        &app,
        S,
        "{}",
        &[("content-type", "application/json"), ("if-match", stale)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(problem_code(res).await, "CONTENT_TYPE_MISMATCH");
    // 5. A failed precondition before a Stream-Seq regression.
    let res = post_with(&app, S, "b", &[("stream-seq", "5")]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = post_with(&app, S, "c", &[("stream-seq", "1"), ("if-match", stale)]).await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn racing_conditional_appends_have_one_winner() {
    let app = app();
    let tail = quoted(&create(&app, "a").await);
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let tail = tail.clone();
            tokio::spawn(async move {
                post_with(&app, S, &format!("{i:x}"), &[("if-match", &tail)])
                    .await
                    .status()
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            StatusCode::NO_CONTENT => won += 1,
            StatusCode::PRECONDITION_FAILED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(read_all(&app).await.len(), 2);
}
