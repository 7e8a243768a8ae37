//! JWT auth on the real binary: a token in the `access_token` query
//! parameter (as `EventSource` sends it) works, and the access log
//! (`request_log = all`, at debug) never shows it; keys fetched from a
//! `jwks_url` (and fetched again) verify ES256 tokens.

use crate::common::Server;

use std::process::{Command, Stdio};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

#[test]
fn query_tokens_work_and_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durable-streams"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--storage", "memory"])
        .args(["--request-log", "all", "--log-level", "debug"])
        .env("DS_AUTH_ENABLED", "true")
        .env("DS_AUTH_READ_TOKENS", "static-secret-reader")
        .env("DS_AUTH_JWT_HS256_SECRET", "binary-test-secret")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let server = Server::spawn(cmd);
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let jwt = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "bob", "exp": exp, "scope": "read:** write:**"}),
        &EncodingKey::from_secret(b"binary-test-secret"),
    )
    .unwrap();
    let auth = format!("Bearer {jwt}");
    let put = server.request("PUT", "/v1/stream/q", &[("Authorization", &auth)], b"x");
    assert_eq!(put.status, 201);
    assert_eq!(put.header("cache-control"), Some("private"));
    let r = server.request(
        "GET",
        &format!("/v1/stream/q?offset=-1&access_token={jwt}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "x");
    let r = server.request(
        "GET",
        "/v1/stream/q?offset=-1&access_token=static-secret-reader",
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = server.request("GET", "/v1/stream/q?offset=-1&access_token=wrong", &[], b"");
    assert_eq!(r.status, 401);
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("/v1/stream/q"), "no access log: {text}");
    assert!(!text.contains(&jwt), "{text}");
    assert!(!text.contains("static-secret-reader"), "{text}");
    assert!(!text.contains("access_token"), "{text}");
}

/// Serves `body` as `/jwks.json` on 127.0.0.1 to every connection; counts
/// the fetches.
fn jwks_server(body: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/jwks.json",
        listener.local_addr().unwrap().port()
    );
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&fetches);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, fetches)
}

#[test]
fn keys_from_a_jwks_url_verify_es256_tokens() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::signature::{self, KeyPair};

    let rng = ring::rand::SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}]});
    let (url, fetches) = jwks_server(jwks.to_string());
    let server = Server::start_with_env(
        &["--storage", "memory"],
        &[
            ("DS_AUTH_ENABLED", "true"),
            ("DS_AUTH_JWT_JWKS_URL", &url),
            ("DS_AUTH_JWT_JWKS_REFRESH", "1s"),
            ("DS_AUTH_JWT_AUDIENCE", "streams"),
        ],
    );
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = |aud: &str| {
        encode(
            &header,
            &json!({"sub": "svc", "aud": aud, "exp": exp, "scope": "write:jobs/**"}),
            &EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
        .unwrap()
    };
    let good = format!("Bearer {}", token("streams"));
    // The first fetch runs at start; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = server.request("PUT", "/v1/stream/jobs/a", &[("Authorization", &good)], b"");
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 401);
        assert!(
            std::time::Instant::now() < deadline,
            "the JWKS was never used"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let other = format!("Bearer {}", token("elsewhere"));
    let r = server.request(
        "PUT",
        "/v1/stream/jobs/b",
        &[("Authorization", &other)],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = server.request("PUT", "/v1/stream/other", &[("Authorization", &good)], b"");
    assert_eq!(r.status, 403);
    // Refreshed in the background.
    let before = fetches.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) > before);
}
