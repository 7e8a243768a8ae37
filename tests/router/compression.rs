//! Compression through the router: only catch-up reads, only above the
//! threshold, never SSE or long-poll.

use std::io::Read;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::router::app;

/// 8 KiB of compressible text.
fn big() -> String {
    "the quick brown fox jumps over the lazy dog\n".repeat(190)
}

async fn create(app: &Router, name: &str, data: String) {
    let res = app
        .clone()
        .oneshot(
            Request::put(format!("/v1/stream/{name}"))
                .header("content-type", "text/plain")
                .body(Body::from(data))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn get(app: &Router, uri: &str, accept: Option<&str>) -> Response<Body> {
    let mut b = Request::get(uri);
    if let Some(a) = accept {
        b = b.header("accept-encoding", a);
    }
    app.clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

fn encoding(res: &Response<Body>) -> Option<&str> {
    res.headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn large_catch_up_reads_are_compressed() {
    let app = app();
    create(&app, "big", big()).await;

    let res = get(&app, "/v1/stream/big?offset=-1", Some("gzip")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(encoding(&res), Some("gzip"));
    assert!(
        res.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("accept-encoding"))
    );
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    let zipped = res.into_body().collect().await.unwrap().to_bytes();
    assert!(zipped.len() < big().len() / 4);
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, big());

    // The weak tag still revalidates.
    let res = app
        .clone()
        .oneshot(
            Request::get("/v1/stream/big?offset=-1")
                .header("accept-encoding", "gzip")
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    let res = get(&app, "/v1/stream/big?offset=-1", Some("br")).await;
    assert_eq!(encoding(&res), Some("br"));

    // Without Accept-Encoding: identity, exact length.
    let res = get(&app, "/v1/stream/big?offset=-1", None).await;
    assert_eq!(encoding(&res), None);
    assert_eq!(res.headers()["content-length"], big().len().to_string());
}

#[tokio::test]
async fn small_catch_up_reads_are_not_compressed() {
    let app = app();
    create(&app, "small", "tiny".to_string()).await;
    let res = get(&app, "/v1/stream/small?offset=-1", Some("gzip, br")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(encoding(&res), None);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "tiny");
}

#[tokio::test]
async fn sse_is_never_compressed() {
    let app = app();
    create(&app, "live", big()).await;
    let res = get(&app, "/v1/stream/live?offset=-1&live=sse", Some("gzip, br")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(encoding(&res), None);
    // The first event arrives as plain text, unbuffered.
    let mut body = res.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    let data = frame.into_data().unwrap();
    assert!(data.starts_with(b"event: data\n"), "{data:?}");
}

#[tokio::test]
async fn long_poll_is_never_compressed() {
    let app = app();
    create(&app, "lp", big()).await;
    let res = get(&app, "/v1/stream/lp?offset=-1&live=long-poll", Some("gzip")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(encoding(&res), None);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, big());
}
