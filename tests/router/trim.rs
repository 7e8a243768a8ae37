//! Trimming (`POST /v1/stream/__ds/trim/{name}?before=<offset>`) and what
//! readers see after it: `410` before the earliest retained offset, `-1`
//! starting there, `HEAD` telling it, forks keeping their inherited range.

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};

use crate::common::router::{app, body, header, problem_code, req, send};

const S: &str = "/v1/stream/logs/a";
const TRIM: &str = "/v1/stream/__ds/trim/logs/a";

async fn call(app: &Router, method: &str, uri: &str, data: &str) -> Response<Body> {
    let mut r = req(method, uri);
    if !data.is_empty() {
        r = r.header("content-type", "application/octet-stream");
    }
    send(app, r.body(Body::from(data.to_string())).unwrap()).await
}

/// Creates `S` with three records `aaaa`, `bbbb`, `cccc`; returns the
/// offsets after each.
async fn three_records(app: &Router) -> Vec<String> {
    let res = call(app, "PUT", S, "aaaa").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut tails = vec![header(&res, "stream-next-offset").unwrap().to_string()];
    for data in ["bbbb", "cccc"] {
        let res = call(app, "POST", S, data).await;
        tails.push(header(&res, "stream-next-offset").unwrap().to_string());
    }
    tails
}

async fn trim(app: &Router, before: &str) -> Response<Body> {
    call(app, "POST", &format!("{TRIM}?before={before}"), "").await
}

async fn read_from(app: &Router, offset: &str) -> Response<Body> {
    call(app, "GET", &format!("{S}?offset={offset}"), "").await
}

#[tokio::test]
async fn trim_drops_what_is_before_and_is_idempotent() {
    let app = app();
    let tails = three_records(&app).await;
    let res = trim(&app, &tails[1]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&res, "stream-earliest-offset"),
        Some(tails[1].as_str())
    );
    assert_eq!(header(&res, "stream-next-offset"), Some(tails[2].as_str()));
    // A retry, or a trim to an earlier point, changes nothing.
    for before in [&tails[1], &tails[0]] {
        let res = trim(&app, before).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            header(&res, "stream-earliest-offset"),
            Some(tails[1].as_str())
        );
    }
    let res = read_from(&app, "-1").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "cccc");
    let res = call(&app, "HEAD", S, "").await;
    assert_eq!(
        header(&res, "stream-earliest-offset"),
        Some(tails[1].as_str())
    );
}

#[tokio::test]
async fn reads_before_the_earliest_offset_are_410() {
    let app = app();
    let tails = three_records(&app).await;
    trim(&app, &tails[1]).await;
    for offset in ["0000000000000000_0000000000000000", tails[0].as_str()] {
        let res = read_from(&app, offset).await;
        assert_eq!(res.status(), StatusCode::GONE);
        assert_eq!(
            header(&res, "stream-earliest-offset"),
            Some(tails[1].as_str())
        );
        let text = String::from_utf8(body(res).await.to_vec()).unwrap();
        assert!(
            text.contains("OFFSET_TRIMMED") && text.contains(&tails[1]),
            "{text}"
        );
    }
    // Live readers behind the trim learn it the same way, never a gap.
    let res = read_from(&app, &format!("{}&live=long-poll", tails[0])).await;
    assert_eq!(res.status(), StatusCode::GONE);
    let res = read_from(&app, &format!("{}&live=sse", tails[0])).await;
    assert_eq!(res.status(), StatusCode::GONE);
    // At or after the earliest offset, reads go on.
    let res = read_from(&app, &tails[1]).await;
    assert_eq!(body(res).await, "cccc");
}

#[tokio::test]
async fn a_trim_inside_a_record_keeps_that_record() {
    let app = app();
    let tails = three_records(&app).await;
    // Two bytes into `bbbb`: the record it falls in is kept whole.
    let inside = format!("0000000000000001_{:016x}", 4 + 2);
    let res = trim(&app, &inside).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&res, "stream-earliest-offset"),
        Some(tails[0].as_str())
    );
    assert_eq!(body(read_from(&app, "-1").await).await, "bbbbcccc");
    // Trimming to the tail drops everything; appends go on after it.
    let res = trim(&app, &tails[2]).await;
    assert_eq!(
        header(&res, "stream-earliest-offset"),
        Some(tails[2].as_str())
    );
    assert_eq!(body(read_from(&app, "-1").await).await, "");
    call(&app, "POST", S, "dddd").await;
    assert_eq!(body(read_from(&app, "-1").await).await, "dddd");
}

#[tokio::test]
async fn bad_trims_are_4xx_problems() {
    let app = app();
    let tails = three_records(&app).await;
    let past = "0000000000000009_0000000000000099";
    let res = trim(&app, past).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&res, "stream-next-offset"), Some(tails[2].as_str()));
    assert_eq!(problem_code(res).await, "TRIM_BEYOND_TAIL");
    // A position with the wrong record index was never minted.
    let res = trim(&app, "0000000000000000_0000000000000006").await;
    assert_eq!(problem_code(res).await, "INVALID_OFFSET");
    for (query, code) in [
        ("", "MISSING_TRIM_OFFSET"),
        ("?before=-1", "INVALID_TRIM_OFFSET"),
        ("?before=now", "INVALID_TRIM_OFFSET"),
        ("?before=zz", "INVALID_TRIM_OFFSET"),
    ] {
        let res = call(&app, "POST", &format!("{TRIM}{query}"), "").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(problem_code(res).await, code, "{query}");
    }
    let res = call(
        &app,
        "POST",
        &format!("/v1/stream/__ds/trim/missing?before={}", tails[0]),
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = call(&app, "POST", "/v1/stream/__ds/trim/a//b?before=x", "").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = call(&app, "GET", &format!("{TRIM}?before={}", tails[0]), "").await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Nothing was trimmed by any of them.
    assert_eq!(body(read_from(&app, "-1").await).await, "aaaabbbbcccc");
}

#[tokio::test]
async fn a_fork_keeps_its_inherited_range_after_its_source_is_trimmed() {
    let app = app();
    let tails = three_records(&app).await;
    let fork = "/v1/stream/logs/fork";
    let res = send(
        &app,
        req("PUT", fork)
            .header("stream-forked-from", S)
            .header("stream-fork-offset", &tails[1])
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    trim(&app, &tails[2]).await;
    assert_eq!(read_from(&app, &tails[0]).await.status(), StatusCode::GONE);
    let res = call(&app, "GET", &format!("{fork}?offset=-1"), "").await;
    assert_eq!(body(res).await, "aaaabbbb");
    // A new fork cannot start before the source's trim point.
    let res = send(
        &app,
        req("PUT", "/v1/stream/logs/late")
            .header("stream-forked-from", S)
            .header("stream-fork-offset", &tails[0])
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(problem_code(res).await, "OFFSET_TRIMMED");
}
