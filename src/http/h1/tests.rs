use super::*;

fn head(raw: &[u8]) -> (Head, usize) {
    match parse_head(raw) {
        Parsed::Head(h, n) => (*h, n),
        other => panic!(
            "not a head: {other:?} for {:?}",
            String::from_utf8_lossy(raw)
        ),
    }
}

fn bad(raw: &[u8]) -> StatusCode {
    match parse_head(raw) {
        Parsed::Bad(s) => s,
        other => panic!("accepted: {other:?} for {:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn parses_a_head_with_its_framing() {
    let raw = b"POST /v1/stream/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello";
    let (h, n) = head(raw);
    assert_eq!(n, raw.len() - 5);
    assert_eq!(h.parts.method, Method::POST);
    assert_eq!(h.parts.uri.path(), "/v1/stream/a");
    assert_eq!(h.parts.uri.query(), Some("x=1"));
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive);
    assert!(!h.expect_continue);
}

#[test]
fn pipelined_heads_parse_one_after_another() {
    let raw =
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n";
    let (a, n) = head(raw);
    assert_eq!(a.parts.uri.path(), "/a");
    let (b, m) = head(&raw[n..]);
    assert_eq!(b.parts.uri.path(), "/b");
    assert!(!b.keep_alive);
    assert!(matches!(parse_head(&raw[n + m..]), Parsed::Partial));
}

#[test]
fn a_head_split_at_every_byte_is_partial_until_complete() {
    let raw = b"PUT /v1/stream/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    for cut in 0..raw.len() {
        assert!(
            matches!(parse_head(&raw[..cut]), Parsed::Partial),
            "cut at {cut}"
        );
    }
    let (h, n) = head(raw);
    assert_eq!(n, raw.len());
    assert_eq!(h.framing, Framing::Chunked);
}

#[test]
fn keep_alive_rules() {
    assert!(head(b"GET / HTTP/1.1\r\n\r\n").0.keep_alive);
    assert!(
        !head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .0
            .keep_alive
    );
    assert!(
        !head(b"GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n")
            .0
            .keep_alive
    );
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
    let (h10, _) = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(h10.keep_alive);
    assert_eq!(h10.parts.version, Version::HTTP_10);
}

#[test]
fn expect_continue_only_with_a_body() {
    let (h, _) = head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(h.expect_continue);
    let (h, _) = head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
    assert!(!h.expect_continue);
}

#[test]
fn content_length_rules() {
    let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    let (h, _) = head(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.framing, Framing::Empty);
    for raw in [
        &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        assert_eq!(bad(raw), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn transfer_encoding_rules() {
    let (h, _) = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
    for raw in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(bad(raw), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn malformed_and_oversized_heads() {
    assert_eq!(
        bad(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(bad(b"GET / HTTP/3.0\r\n\r\n"), StatusCode::BAD_REQUEST);
    assert_eq!(bad(b"G\x01T / HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
    assert_eq!(bad(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend(format!("X-{i}: v\r\n").bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(bad(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

/// Decodes `wire` fed in pieces of `step` bytes; the body and what is left.
fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut dec = Decoder::new(Framing::Chunked);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        match dec.decode(&mut buf)? {
            Decoded::Data(b) => out.extend_from_slice(&b),
            Decoded::Done => return Ok((out, buf.to_vec())),
            Decoded::More => {
                assert!(fed < wire.len(), "ran out of input");
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_with_extensions_and_trailers_at_every_split() {
    let wire = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nTrailer: yes\r\nOther: 1\r\n\r\nGET /next";
    for step in 1..wire.len() {
        let (body, rest) = decode_all(wire, step).unwrap();
        assert_eq!(body, b"hello world", "step {step}");
        assert!(b"GET /next".starts_with(&rest), "step {step}");
    }
    let (body, rest) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 64).unwrap();
    assert_eq!(
        (body.as_slice(), rest.as_slice()),
        (&b"0123456789"[..], &b""[..])
    );
}

#[test]
fn chunked_errors() {
    for wire in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"zz\r\n",
        b"5x\r\nhello\r\n",
        b"\r\n",
        b"11111111111111111\r\n",
    ] {
        assert!(decode_all(wire, wire.len()).is_err(), "{wire:?}");
    }
    let mut long = b"5;".to_vec();
    long.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE + 8));
    assert_eq!(
        decode_all(&long, long.len()),
        Err("a chunk line is too long")
    );
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..(MAX_TRAILERS / 100 + 2) {
        trailers.extend(std::iter::repeat_n(b't', 100));
        trailers.extend(b"\r\n");
    }
    assert_eq!(
        decode_all(&trailers, 4096),
        Err("the trailers are too large")
    );
}

#[test]
fn length_decoder_takes_exactly_its_bytes() {
    let mut dec = Decoder::new(Framing::Length(7));
    let mut buf = BytesMut::from(&b"abc"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Decoded::Data(Bytes::from_static(b"abc")))
    );
    assert_eq!(dec.decode(&mut buf), Ok(Decoded::More));
    buf.extend_from_slice(b"defgNEXT");
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Decoded::Data(Bytes::from_static(b"defg")))
    );
    assert!(dec.done());
    assert_eq!(dec.decode(&mut buf), Ok(Decoded::Done));
    assert_eq!(&buf[..], b"NEXT");
}

#[test]
fn chunk_size_lines() {
    let mut b = [0u8; 18];
    assert_eq!(chunk_size_line(0, &mut b), b"0\r\n");
    assert_eq!(chunk_size_line(255, &mut b), b"ff\r\n");
    assert_eq!(chunk_size_line(0x10000, &mut b), b"10000\r\n");
    assert_eq!(chunk_size_line(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
}

#[test]
fn response_heads() {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let s = text(encode_head(
        StatusCode::OK,
        &h,
        Out::Length(5),
        true,
        Version::HTTP_11,
    ));
    assert!(
        s.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
        "{s}"
    );
    assert!(s.contains("\r\ncontent-length: 5\r\n"), "{s}");
    assert!(!s.contains("999") && !s.contains("connection"), "{s}");
    assert!(s.contains("\r\ndate: ") && s.contains(" GMT\r\n"), "{s}");
    assert!(s.ends_with("\r\n\r\n"));
    let s = text(encode_head(
        StatusCode::OK,
        &h,
        Out::Chunked,
        false,
        Version::HTTP_11,
    ));
    assert!(s.contains("\r\ntransfer-encoding: chunked\r\n"), "{s}");
    assert!(s.contains("\r\nconnection: close\r\n"), "{s}");
    assert!(!s.contains("content-length"), "{s}");
    // HEAD / 304: the handler's content-length stays, none is added.
    let s = text(encode_head(
        StatusCode::NOT_MODIFIED,
        &h,
        Out::None,
        true,
        Version::HTTP_10,
    ));
    assert!(s.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{s}");
    assert!(s.contains("content-length: 999\r\n"), "{s}");
    assert!(s.contains("\r\nconnection: keep-alive\r\n"), "{s}");
    let s = text(encode_head(
        StatusCode::NO_CONTENT,
        &HeaderMap::new(),
        Out::None,
        true,
        Version::HTTP_11,
    ));
    assert!(
        !s.contains("content-length") && !s.contains("transfer-encoding"),
        "{s}"
    );
}

/// A connected pair: our `Conn` and the client's socket.
async fn pair() -> (Conn, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(l.local_addr().unwrap());
    let (client, server) = tokio::join!(client, l.accept());
    let conn = Conn {
        tcp: server.unwrap().0,
        buf: BytesMut::new(),
        t: Timeouts {
            header_read: Duration::from_secs(5),
            send: Duration::from_secs(5),
        },
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
        cancelled: Box::pin(CancellationToken::new().cancelled_owned()),
    };
    (conn, client.unwrap())
}

/// Writes `res` and returns what the client received until we close.
async fn wire(res: Response<Body>, is_head: bool, version: Version, keep: bool) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let (mut conn, mut client) = pair().await;
    let kept = conn.respond(res, is_head, version, keep).await.unwrap();
    drop(conn);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    (kept, String::from_utf8(out).unwrap())
}

fn split(s: &str) -> (&str, &str) {
    s.split_once("\r\n\r\n").unwrap()
}

#[tokio::test]
async fn full_bodies_get_a_content_length() {
    let (kept, s) = wire(
        Response::new(Body::from("hello")),
        false,
        Version::HTTP_11,
        true,
    )
    .await;
    assert!(kept);
    let (h, b) = split(&s);
    assert!(h.contains("content-length: 5"), "{h}");
    assert_eq!(b, "hello");
}

#[tokio::test]
async fn head_204_and_304_send_no_body() {
    let mut res = Response::new(Body::empty());
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    let (_, s) = wire(res, true, Version::HTTP_11, true).await;
    let (h, b) = split(&s);
    assert!(h.contains("content-length: 42"), "{h}");
    assert_eq!(b, "");
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let mut res = Response::new(Body::from("ignored"));
        *res.status_mut() = status;
        let (_, s) = wire(res, false, Version::HTTP_11, true).await;
        let (h, b) = split(&s);
        assert!(
            !h.contains("content-length") && !h.contains("chunked"),
            "{h}"
        );
        assert_eq!(b, "");
    }
}

fn streaming(parts: &'static [&'static str]) -> Body {
    let s = futures_util::stream::iter(parts.iter().map(|p| Ok::<_, io::Error>(Bytes::from(*p))));
    Body::from_stream(s)
}

#[tokio::test]
async fn unknown_length_bodies_are_chunked_per_frame() {
    let (kept, s) = wire(
        Response::new(streaming(&["ab", "", "cde"])),
        false,
        Version::HTTP_11,
        true,
    )
    .await;
    assert!(kept);
    let (h, b) = split(&s);
    assert!(h.contains("transfer-encoding: chunked"), "{h}");
    assert_eq!(b, "2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");
}

#[tokio::test]
async fn http10_clients_get_close_delimited_bodies() {
    let (kept, s) = wire(
        Response::new(streaming(&["ab", "cd"])),
        false,
        Version::HTTP_10,
        true,
    )
    .await;
    assert!(!kept);
    let (h, b) = split(&s);
    assert!(
        h.contains("connection: close") && !h.contains("chunked"),
        "{h}"
    );
    assert_eq!(b, "abcd");
}

#[tokio::test]
async fn a_handler_asking_to_close_closes() {
    let mut res = Response::new(Body::from("x"));
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let (kept, s) = wire(res, false, Version::HTTP_11, true).await;
    assert!(!kept);
    assert!(split(&s).0.contains("connection: close"));
}

#[tokio::test]
async fn the_body_channel_feeds_on_demand() {
    use tokio::io::AsyncWriteExt;
    let (mut conn, mut client) = pair().await;
    client.write_all(b"3\r\nabc\r\n").await.unwrap();
    let slot = Arc::new(Slot::default());
    let body = ReqBody::Stream {
        slot: Arc::clone(&slot),
        remaining: None,
    };
    let mut dec = Decoder::new(Framing::Chunked);
    let mut continued = false;
    let reader = async move { body.collect().await.map(|c| c.to_bytes()) };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .write_all(b"2;x=y\r\nde\r\n0\r\n\r\nNEXT")
            .await
            .unwrap();
        client
    };
    let feed = feed(
        &conn.tcp,
        &mut conn.buf,
        &mut dec,
        &slot,
        Some(&mut continued),
        conn.t.send,
    );
    let (got, (), mut client) = tokio::join!(reader, feed, writer);
    assert_eq!(got.unwrap(), Bytes::from_static(b"abcde"));
    assert!(dec.done());
    assert!(continued);
    assert_eq!(&conn.buf[..], b"NEXT");
    let mut cont = [0u8; 25];
    tokio::io::AsyncReadExt::read_exact(&mut client, &mut cont)
        .await
        .unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
}

#[tokio::test]
async fn a_truncated_body_is_an_error_for_the_handler() {
    use tokio::io::AsyncWriteExt;
    let (mut conn, mut client) = pair().await;
    client.write_all(b"abc").await.unwrap();
    client.shutdown().await.unwrap();
    let slot = Arc::new(Slot::default());
    let body = ReqBody::Stream {
        slot: Arc::clone(&slot),
        remaining: Some(10),
    };
    let mut dec = Decoder::new(Framing::Length(10));
    let reader = async move { body.collect().await.map(|c| c.to_bytes()) };
    let feed = feed(&conn.tcp, &mut conn.buf, &mut dec, &slot, None, conn.t.send);
    let (got, ()) = tokio::join!(reader, feed);
    assert_eq!(got.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

/// A request that has arrived is served even when its connection is polled
/// only after the head deadline (a busy server): the deadline cuts off
/// heads that are still incomplete, not input that is waiting to be read.
#[tokio::test]
async fn arrived_heads_beat_an_expired_deadline() {
    use tokio::io::AsyncWriteExt;
    for _ in 0..32 {
        let (mut conn, mut client) = pair().await;
        conn.t.header_read = Duration::from_millis(20);
        let next = conn.read_head(true);
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
    assert!(matches!(conn.read_head(true).await.unwrap(), Next::Closed));
    let (mut conn, mut client) = pair().await;
    conn.t.header_read = Duration::from_millis(50);
    client.write_all(b"GET /x HTTP/1.1\r\nHo").await.unwrap();
    assert!(matches!(conn.read_head(true).await.unwrap(), Next::Closed));
}
