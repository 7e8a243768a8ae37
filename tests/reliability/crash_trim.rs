//! kill -9 after trims, through the real binary, on both durable backends:
//! an acknowledged trim point survives (nothing trimmed comes back), every
//! retained byte survives, and idempotent-producer state is untouched.
//!
//! Several rounds of appends (some by a producer), a trim to the
//! second-newest record and a SIGKILL; after every restart the whole
//! retained range, the `410` before it, `HEAD`'s earliest offset and a
//! producer retry are checked.

use crate::common;

fn start(backend: &str, dir: &std::path::Path) -> common::Server {
    let dir = dir.to_str().expect("utf-8 temp dir");
    common::Server::start(&["--storage", backend, "--data-dir", dir])
}

#[test]
fn file_backend_keeps_trims_across_kill_9() {
    trims_survive_kill_9("file");
}

#[test]
fn acid_backend_keeps_trims_across_kill_9() {
    trims_survive_kill_9("acid");
}

fn trims_survive_kill_9(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(backend, dir.path());
    let ct = [("Content-Type", "text/plain")];
    let r = server.request("PUT", "/v1/stream/s", &ct, b"r00;");
    assert_eq!(r.status, 201);
    // Offsets after each record, and the text of each record.
    let mut tails = vec![r.header("stream-next-offset").unwrap().to_string()];
    let mut records = vec!["r00;".to_string()];
    let mut seq = 0u64;
    for round in 0..4 {
        for i in 0..3 {
            let text = format!("r{round}{i};");
            let seq_s = seq.to_string();
            let headers: Vec<(&str, &str)> = if i == 2 {
                vec![
                    ("Content-Type", "text/plain"),
                    ("Producer-Id", "p"),
                    ("Producer-Epoch", "0"),
                    ("Producer-Seq", &seq_s),
                ]
            } else {
                ct.to_vec()
            };
            let r = server.request("POST", "/v1/stream/s", &headers, text.as_bytes());
            assert!(r.status == 200 || r.status == 204, "append: {}", r.status);
            if i == 2 {
                seq += 1;
            }
            tails.push(r.header("stream-next-offset").unwrap().to_string());
            records.push(text);
        }
        // Keep the newest record only; acknowledged, then killed.
        let keep = records.len() - 1;
        let earliest = tails[keep - 1].clone();
        let r = server.request(
            "POST",
            &format!("/v1/stream/__ds/trim/s?before={earliest}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 204, "trim");
        assert_eq!(r.header("stream-earliest-offset"), Some(earliest.as_str()));
        server.kill();
        server = start(backend, dir.path());

        let r = server.request("GET", "/v1/stream/s?offset=-1", &[], b"");
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.text(), records[keep], "round {round}: retained range");
        assert_eq!(r.header("stream-next-offset"), Some(tails[keep].as_str()));
        let r = server.request("HEAD", "/v1/stream/s", &[], b"");
        assert_eq!(r.header("stream-earliest-offset"), Some(earliest.as_str()));
        // Nothing trimmed comes back: every older offset is gone.
        for old in &tails[..keep - 1] {
            let r = server.request("GET", &format!("/v1/stream/s?offset={old}"), &[], b"");
            assert_eq!(r.status, 410, "round {round}: read from {old}");
        }
        // The producer's last append is still known: its retry is a duplicate.
        let last = (seq - 1).to_string();
        let retry = [
            ("Content-Type", "text/plain"),
            ("Producer-Id", "p"),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", last.as_str()),
        ];
        let r = server.request("POST", "/v1/stream/s", &retry, b"again");
        assert_eq!(r.status, 204, "round {round}: producer retry");
    }
    server.kill();
}
