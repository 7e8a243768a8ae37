//! `https://` webhook delivery through the real binary: a local TLS receiver
//! with a self-signed certificate is trusted only through
//! `webhook_ca_file`; the delivery is signed and its `{"done": true}` acks.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use durable_streams::subscriptions::delivery::HttpTransport;
use durable_streams::subscriptions::signing::verify_with_jwks;

const SUBS: &str = "/v1/stream/__ds/subscriptions";

/// A TLS webhook receiver for `localhost`; returns its URL, the CA PEM to
/// trust, and the requests it completed (signature, raw body).
#[allow(clippy::type_complexity)]
fn tls_receiver() -> (String, String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
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
        "https://localhost:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let (mut len, mut sig) = (0usize, String::new());
            let mut reader = BufReader::new(&mut tls);
            let mut ok = true;
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        // A client that refused our certificate ends here.
                        ok = false;
                        break;
                    }
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("webhook-signature:") {
                    sig = line["webhook-signature:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            if !ok || reader.read_exact(&mut body).is_err() {
                continue;
            }
            s.lock().unwrap().push((sig, body));
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"done\":true}",
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ck.cert.pem(), seen)
}

/// Calls without a token.
fn call(s: &common::Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    s.call_json(method, path, None, body)
}

/// Creates a webhook subscription to `url` over `e/a` and appends to it.
fn subscribe_and_append(server: &common::Server, url: &str) {
    assert_eq!(call(server, "PUT", "/v1/stream/e/a", Value::Null).0, 201);
    let (s, body) = call(
        server,
        "PUT",
        &format!("{SUBS}/tls"),
        json!({"type": "webhook", "streams": ["e/a"], "webhook": {"url": url}}),
    );
    assert_eq!(s, 201, "{body}");
    assert_eq!(
        call(server, "POST", "/v1/stream/e/a", json!({"n": 1})).0,
        204
    );
}

#[test]
fn https_webhooks_are_delivered_to_a_receiver_trusted_through_webhook_ca_file() {
    let (url, ca_pem, seen) = tls_receiver();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let server = common::Server::start_with_env(
        &["--storage", "memory"],
        &[("DS_WEBHOOK_CA_FILE", ca.to_str().unwrap())],
    );
    subscribe_and_append(&server, &url);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, got) = call(&server, "GET", &format!("{SUBS}/tls"), Value::Null);
        let acked = got["streams"][0]["acked_offset"] != "0000000000000000_0000000000000000";
        if acked && got["status"] == "active" {
            break;
        }
        assert!(Instant::now() < until, "not acked over https: {got}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, jwks) = call(&server, "GET", "/v1/stream/__ds/jwks.json", Value::Null);
    let seen = seen.lock().unwrap();
    let (sig, body) = seen.first().expect("one delivery");
    assert!(verify_with_jwks(&jwks, sig, body));
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["subscription_id"], "tls");
}

#[test]
fn an_untrusted_certificate_is_refused_and_retried() {
    let (url, _, seen) = tls_receiver();
    let server = common::Server::start(&["--storage", "memory"]);
    subscribe_and_append(&server, &url);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, got) = call(&server, "GET", &format!("{SUBS}/tls"), Value::Null);
        if got["status"] == "failed" {
            break;
        }
        assert!(Instant::now() < until, "never failed: {got}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
}

#[test]
fn a_bad_ca_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(HttpTransport::new(Some(&missing)).is_err());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    assert!(HttpTransport::new(Some(&empty)).is_err());
    assert!(HttpTransport::new(None).is_ok());
}
