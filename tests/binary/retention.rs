//! Retention policies through the real binary: a `[[retention]]` policy
//! (here from `DS_RETENTION`) trims matching streams within a few seconds
//! while appends go on, and leaves the others alone.

use std::time::{Duration, Instant};

use crate::common::Server;

#[test]
fn a_max_bytes_policy_trims_matching_streams_while_appends_go_on() {
    let server = Server::start_with_env(
        &["--storage", "file"],
        &[("DS_RETENTION", "[{streams = \"logs/*\", max_bytes = 16}]")],
    );
    let ct = [("Content-Type", "text/plain")];
    for name in ["logs/a", "keep"] {
        let r = server.request("PUT", &format!("/v1/stream/{name}"), &ct, b"");
        assert_eq!(r.status, 201);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        for name in ["logs/a", "keep"] {
            let body = format!("rec{i:04};");
            let r = server.request("POST", &format!("/v1/stream/{name}"), &ct, body.as_bytes());
            assert_eq!(r.status, 204);
        }
        i += 1;
        let r = server.request("GET", "/v1/stream/logs/a?offset=-1", &[], b"");
        assert_eq!(r.status, 200);
        // Records are 8 bytes: at most the newest 16 bytes plus the record
        // the limit falls in, once the sweeper has passed.
        if i >= 6 && r.body.len() <= 24 {
            let head = server.request("HEAD", "/v1/stream/logs/a", &[], b"");
            assert_ne!(
                head.header("stream-earliest-offset"),
                Some("0000000000000000_0000000000000000")
            );
            break;
        }
        assert!(Instant::now() < deadline, "not trimmed: {:?}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = server.request("GET", "/v1/stream/keep?offset=-1", &[], b"");
    assert_eq!(r.body.len(), 8 * i, "an unmatched stream keeps everything");
}
