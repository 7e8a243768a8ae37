//! A fake upstream for the proxy tests, on a real socket (port 0):
//!
//! - `GET|POST /sse?n=N&ms=D`: an SSE token generator, `data: tokI\n\n`
//!   for I in 0..N, one every D ms, then the end of the body;
//! - `/fail?n=N`: N tokens, then the connection is cut mid-body;
//! - `/stall-body?n=N`: N tokens, then nothing (the body stays open);
//! - `/stall`: no response headers for a minute;
//! - `/redirect`: `302` to `/sse`;
//! - `/error`: `500` with a JSON body;
//! - `/echo`: `200 application/json` with the request's method, headers
//!   and body (for header forwarding).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// The fake upstream, serving until the test's runtime ends.
pub struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let app = Router::new()
            .route("/sse", any(sse))
            .route("/fail", any(fail))
            .route("/stall-body", any(stall_body))
            .route("/stall", any(stall))
            .route("/redirect", any(redirect))
            .route("/error", any(error))
            .route("/echo", any(echo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr }
    }

    /// The URL of `path` (with its query) on this upstream.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }
}

type Params = Query<BTreeMap<String, u64>>;

fn tokens(n: u64, ms: u64, then: Option<Result<(), ()>>) -> Body {
    let s = async_stream::stream! {
        for i in 0..n {
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            yield Ok::<_, std::io::Error>(Bytes::from(format!("data: tok{i}\n\n")));
        }
        match then {
            None => {}
            Some(Ok(())) => std::future::pending::<()>().await,
            Some(Err(())) => {
                // After the tokens are on the wire: a cut before the
                // response head would be a failed request, not a failed body.
                tokio::time::sleep(Duration::from_millis(100)).await;
                yield Err(std::io::Error::other("cut"));
            }
        }
    };
    Body::from_stream(s)
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

async fn sse(Query(q): Params) -> Response {
    event_stream(tokens(
        q.get("n").copied().unwrap_or(5),
        q.get("ms").copied().unwrap_or(0),
        None,
    ))
}

async fn fail(Query(q): Params) -> Response {
    event_stream(tokens(q.get("n").copied().unwrap_or(3), 0, Some(Err(()))))
}

async fn stall_body(Query(q): Params) -> Response {
    event_stream(tokens(q.get("n").copied().unwrap_or(1), 0, Some(Ok(()))))
}

async fn stall() -> Response {
    tokio::time::sleep(Duration::from_secs(60)).await;
    StatusCode::NO_CONTENT.into_response()
}

async fn redirect() -> Response {
    (StatusCode::FOUND, [("location", "/sse")]).into_response()
}

async fn error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "application/json")],
        r#"{"error":"upstream exploded"}"#,
    )
        .into_response()
}

async fn echo(req: Request) -> Response {
    let method = req.method().to_string();
    let headers: BTreeMap<String, String> = header_map(req.headers());
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let v = serde_json::json!({
        "method": method,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    ([("content-type", "application/json")], v.to_string()).into_response()
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}
