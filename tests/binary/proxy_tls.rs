//! An `https://` proxy upstream through the real binary: a local TLS token
//! generator with a self-signed certificate, trusted only through
//! `webhook_ca_file` (the proxy uses the webhook client). Without that file
//! the certificate is refused and no stream is created.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::Server;

const TOKENS: usize = 20;

fn tokens() -> String {
    (0..TOKENS).map(|i| format!("data: tok{i}\n\n")).collect()
}

/// A TLS upstream for `localhost` answering every request with an SSE body
/// ended by closing the connection; its URL and the CA PEM to trust.
fn tls_upstream() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}/v1/chat",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut reader = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        // A client that refused the certificate ends here.
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                );
                for i in 0..TOKENS {
                    let _ = tls.write_all(format!("data: tok{i}\n\n").as_bytes());
                    let _ = tls.flush();
                    std::thread::sleep(Duration::from_millis(5));
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (url, ck.cert.pem())
}

fn create(server: &Server, url: &str) -> crate::common::Reply {
    server.request(
        "POST",
        "/v1/proxy",
        &[("Upstream-URL", url), ("Upstream-Method", "POST")],
        b"{}",
    )
}

#[test]
fn https_upstreams_are_trusted_through_webhook_ca_file() {
    let (url, ca_pem) = tls_upstream();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let env = [
        ("DS_PROXY_ENABLED", "true"),
        ("DS_PROXY_ALLOWLIST", "https://localhost:*/v1/*"),
    ];
    // Built-in roots only: the self-signed certificate is refused.
    let server = Server::start_with_env(&["--storage", "memory"], &env);
    let r = create(&server, &url);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("UPSTREAM_UNREACHABLE"), "{}", r.text());
    drop(server);

    let mut env = env.to_vec();
    env.push(("DS_WEBHOOK_CA_FILE", ca.to_str().unwrap()));
    let server = Server::start_with_env(&["--storage", "memory"], &env);
    let r = create(&server, &url);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("upstream-content-type"), Some("text/event-stream"));
    let loc = r.header("location").unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.request("GET", &loc, &[], b"");
        assert_eq!(r.status, 200);
        if r.header("stream-closed") == Some("true") {
            assert_eq!(r.text(), tokens());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never closed: {:?}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
