//! HTTPS through the real binary: a test CA signs `localhost`'s
//! certificate; clients (tokio-rustls + hyper) pick HTTP/2 or HTTP/1.1 by
//! ALPN; SSE over HTTP/2; a SIGHUP reload is seen by new handshakes while
//! an open connection goes on; garbage instead of a ClientHello is refused.

use crate::common::Server;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, for clients to trust.
    pub cert: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }

    /// Writes a new certificate for `localhost` and 127.0.0.1, and its key.
    pub fn issue(&self, cert: &Path, key: &Path) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A finished TLS handshake: the negotiated protocol and the server's
/// certificate.
pub struct Session {
    pub tls: tokio_rustls::client::TlsStream<TcpStream>,
    pub alpn: Option<Vec<u8>>,
    pub cert: CertificateDer<'static>,
}

pub async fn handshake(ca: &Ca, addr: &str, alpn: &[&[u8]]) -> Session {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = ca.client(alpn).connect(name, tcp).await.unwrap();
    let conn = tls.get_ref().1;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let cert = conn.peer_certificates().unwrap()[0].clone();
    Session { tls, alpn, cert }
}

pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection (ALPN `h2`).
pub async fn h2(ca: &Ca, addr: &str) -> H2 {
    let s = handshake(ca, addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s.tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

pub fn req(method: &str, path: &str, token: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn text(res: hyper::Response<hyper::body::Incoming>) -> String {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Reads a live body until `needle` arrives (10 s at most).
async fn until(body: &mut hyper::body::Incoming, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"))
            .expect("body ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

/// A memory-backed HTTPS server with auth on (tokens `r` and `w`), and
/// where its certificate files are.
pub fn start(ca: &Ca, dir: &Path) -> Server {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ca.issue(&cert, &key);
    Server::start_with_env(
        &[
            "--storage",
            "memory",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[
            ("DS_AUTH_ENABLED", "true"),
            ("DS_AUTH_READ_TOKENS", "r"),
            ("DS_AUTH_WRITE_TOKENS", "w"),
        ],
    )
}

#[tokio::test]
async fn h2_and_http1_by_alpn_through_the_same_request_path() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&ca, dir.path());

    let mut h2 = h2(&ca, &server.addr).await;
    let res = h2
        .send_request(req("PUT", "/v1/stream/a", "w", b"one"))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    // Auth, CORS and security headers as on plain HTTP/1.1.
    let res = h2
        .send_request(req("GET", "/v1/stream/a?offset=-1", "w", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = h2
        .send_request(req("GET", "/v1/stream/a?offset=-1", "r", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    // CORS answers a browser's request (it has an `Origin`), not curl's.
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    assert_eq!(text(res).await, "one");
    let mut from_page = req("GET", "/v1/stream/a?offset=-1", "r", b"");
    from_page
        .headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let res = h2.send_request(from_page).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(res.headers().contains_key("access-control-expose-headers"));
    assert_eq!(text(res).await, "one");
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("https://localhost/v1/stream/a")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.send_request(preflight).await.unwrap();
    assert_eq!(res.status(), 204);

    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let s = handshake(&ca, &server.addr, alpn).await;
        assert_eq!(s.alpn.as_deref(), alpn.first().copied());
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s.tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let res = h1
            .send_request(req("POST", "/v1/stream/a", "w", b"+"))
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(res.version(), hyper::Version::HTTP_11);
    }
    let res = h2
        .send_request(req("GET", "/metrics", "r", b""))
        .await
        .unwrap();
    let metrics = text(res).await;
    let line = "ds_http_requests_total{method=\"POST\",route=\"stream\",status=\"204\"} 2";
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
}

#[tokio::test]
async fn sse_over_h2_receives_appends() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&ca, dir.path());
    let mut h2 = h2(&ca, &server.addr).await;
    let res = h2
        .send_request(req("PUT", "/v1/stream/live", "w", b"first"))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = h2
        .send_request(req("GET", "/v1/stream/live?offset=-1&live=sse", "r", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut seen = String::new();
    until(&mut body, &mut seen, "first").await;
    // Another stream on the same connection while the SSE one stays open.
    let res = h2
        .send_request(req("POST", "/v1/stream/live", "w", b"second"))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    until(&mut body, &mut seen, "second").await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_handshakes_only() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&ca, dir.path());
    let before = handshake(&ca, &server.addr, &[b"h2"]).await.cert;
    let mut old = h2(&ca, &server.addr).await;

    ca.issue(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
    let pid = server.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(hup.unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = handshake(&ca, &server.addr, &[b"h2"]).await.cert;
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload still works.
    let res = old
        .send_request(req("PUT", "/v1/stream/after", "w", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // A broken reload keeps the certificate in use (and the server up).
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(hup.unwrap().success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fresh = h2(&ca, &server.addr).await;
    let res = fresh
        .send_request(req("HEAD", "/v1/stream/after", "r", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn plain_http_and_garbage_before_the_handshake_are_refused() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&ca, dir.path());
    for garbage in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0],
        &[0u8; 4096],
    ] {
        let reply = raw(&server.addr, garbage);
        assert!(
            !reply.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    let mut h2 = h2(&ca, &server.addr).await;
    let res = h2
        .send_request(req("GET", "/healthz", "", b""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Sends `bytes` on a fresh connection and returns whatever comes back
/// before the server closes it.
fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
