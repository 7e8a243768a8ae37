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

/// `max_age` across a crash: records already stored age from when they were
/// written, not from the restart (their stream's last access is stored with
/// every append), so a stream idle for longer than `max_age` is trimmed by
/// the first sweeps after the restart, not `max_age` later.
fn max_age_counts_from_the_last_write_across_a_kill(storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_string();
    let env = [("DS_RETENTION", "[{streams = \"logs/*\", max_age = \"5s\"}]")];
    let args = ["--storage", storage, "--data-dir", &dir];
    let ct = [("Content-Type", "text/plain")];
    let server = Server::start_with_env(&args, &env);
    for name in ["logs/a", "keep"] {
        let r = server.request("PUT", &format!("/v1/stream/{name}"), &ct, b"");
        assert_eq!(r.status, 201);
        let r = server.request("POST", &format!("/v1/stream/{name}"), &ct, b"old;");
        assert_eq!(r.status, 204);
    }
    let written = Instant::now();
    server.kill();
    std::thread::sleep(Duration::from_millis(5_200).saturating_sub(written.elapsed()));
    let server = Server::start_with_env(&args, &env);
    let started = Instant::now();
    loop {
        let r = server.request("GET", "/v1/stream/logs/a?offset=-1", &[], b"");
        assert_eq!(r.status, 200);
        if r.body.is_empty() {
            break;
        }
        // Sweeps run every second; aging from the restart would take 6 s
        // (5 s from the first sweep's sample).
        assert!(
            started.elapsed() < Duration::from_millis(4_500),
            "{storage}: not trimmed {:?} after the restart: {:?}",
            started.elapsed(),
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = server.request("GET", "/v1/stream/keep?offset=-1", &[], b"");
    assert_eq!(
        r.text(),
        "old;",
        "{storage}: an unmatched stream keeps everything"
    );
}

#[test]
fn max_age_counts_from_the_last_write_across_a_kill_on_file() {
    max_age_counts_from_the_last_write_across_a_kill("file");
}

#[test]
fn max_age_counts_from_the_last_write_across_a_kill_on_acid() {
    max_age_counts_from_the_last_write_across_a_kill("acid");
}
