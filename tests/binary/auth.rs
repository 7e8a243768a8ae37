//! JWT auth on the real binary: a token in the `access_token` query
//! parameter (as `EventSource` sends it) works, and the access log
//! (`request_log = all`, at debug) never shows it.

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
