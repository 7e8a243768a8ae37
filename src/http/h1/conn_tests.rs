//! Tests of the connection: framing of answers, keep-alive and close,
//! and heads that arrive as their deadline passes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::http::h1::io::socket_pair;
use axum::http::HeaderValue;

/// A connected pair: our `Conn` and the client's socket.
async fn pair() -> (Conn, TcpStream) {
    let (tcp, client) = socket_pair().await;
    let t = Timeouts {
        header_read: Duration::from_secs(5),
        send: Duration::from_secs(5),
    };
    (Conn::new(tcp, t, &CancellationToken::new()), client)
}

/// What the client received for one response, until we closed.
struct Sent {
    /// `respond` kept the connection.
    kept: bool,
    head: String,
    body: String,
}

impl Sent {
    /// Checks the outcome: whether the connection stays, lines the head
    /// has and has not, and the body.
    fn check(&self, kept: bool, has: &[&str], lacks: &[&str], body: &str) {
        let h = &self.head;
        assert_eq!(self.kept, kept, "{h}");
        for s in has {
            assert!(h.contains(s), "{s:?} not in {h}");
        }
        for s in lacks {
            assert!(!h.contains(s), "{s:?} in {h}");
        }
        assert_eq!(self.body, body, "{h}");
    }
}

/// Writes `res` to a client of `version` that asked to keep the
/// connection (to a HEAD request when `is_head`).
async fn send(res: Response<Body>, is_head: bool, version: Version) -> Sent {
    let (mut conn, mut client) = pair().await;
    let kept = match conn
        .respond(res, is_head, version, true, None)
        .await
        .unwrap()
    {
        super::Sent::Done(k) => k,
        super::Sent::Park { .. } => panic!("nothing to park"),
    };
    drop(conn);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    Sent {
        kept,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn streaming(parts: &'static [&'static str]) -> Body {
    let s = futures_util::stream::iter(parts.iter().map(|p| Ok::<_, io::Error>(Bytes::from(*p))));
    Body::from_stream(s)
}

#[tokio::test]
async fn full_bodies_get_a_content_length() {
    let res = Response::new(Body::from("hello"));
    send(res, false, Version::HTTP_11)
        .await
        .check(true, &["content-length: 5"], &[], "hello");
}

#[tokio::test]
async fn head_204_and_304_send_no_body() {
    let mut res = Response::new(Body::empty());
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    send(res, true, Version::HTTP_11)
        .await
        .check(true, &["content-length: 42"], &[], "");
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let mut res = Response::new(Body::from("ignored"));
        *res.status_mut() = status;
        send(res, false, Version::HTTP_11).await.check(
            true,
            &[],
            &["content-length", "chunked"],
            "",
        );
    }
}

#[tokio::test]
async fn unknown_length_bodies_are_chunked_per_frame() {
    let res = Response::new(streaming(&["ab", "", "cde"]));
    send(res, false, Version::HTTP_11).await.check(
        true,
        &["transfer-encoding: chunked"],
        &[],
        "2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
    );
}

#[tokio::test]
async fn http10_clients_get_close_delimited_bodies() {
    let res = Response::new(streaming(&["ab", "cd"]));
    send(res, false, Version::HTTP_10).await.check(
        false,
        &["connection: close"],
        &["chunked"],
        "abcd",
    );
}

#[tokio::test]
async fn a_handler_asking_to_close_closes() {
    let mut res = Response::new(Body::from("x"));
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    send(res, false, Version::HTTP_11)
        .await
        .check(false, &["connection: close"], &[], "x");
}

/// A request that has arrived is served even when its connection is polled
/// only after the head deadline (a busy server): the deadline cuts off
/// heads that are still incomplete, not input that is waiting to be read.
#[tokio::test]
async fn arrived_heads_beat_an_expired_deadline() {
    for _ in 0..32 {
        let (mut conn, mut client) = pair().await;
        conn.t.header_read = Duration::from_millis(20);
        let next = conn.read_head(true, None);
        tokio::pin!(next);
        // Waiting: the deadline is set and the socket registered.
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // The runtime is busy past the deadline: its next turn sees the
        // request and the expired deadline at once.
        std::thread::sleep(Duration::from_millis(60));
        let next = next.await.unwrap();
        assert!(matches!(next, Next::Head(_)), "request dropped");
    }
    // Silence, or a head that stops halfway, is still cut off.
    let (mut conn, _client) = pair().await;
    conn.t.header_read = Duration::from_millis(50);
    assert!(matches!(
        conn.read_head(true, None).await.unwrap(),
        Next::Closed
    ));
    let (mut conn, mut client) = pair().await;
    conn.t.header_read = Duration::from_millis(50);
    client.write_all(b"GET /x HTTP/1.1\r\nHo").await.unwrap();
    assert!(matches!(
        conn.read_head(true, None).await.unwrap(),
        Next::Closed
    ));
}
