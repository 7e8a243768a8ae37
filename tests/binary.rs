//! The real binary: its start-up contract and a clean shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{Server, request};

#[test]
fn serves_and_shuts_down_cleanly_on_sigterm() {
    let server = Server::start(&["--storage", "memory", "--long-poll-timeout", "2m"]);
    let created = server.request(
        "PUT",
        "/v1/stream/bin",
        &[("Content-Type", "text/plain")],
        b"hi",
    );
    assert_eq!(created.status, 201);
    let tail = created.header("stream-next-offset").unwrap().to_string();

    // A long-poll waiting at the tail answers 204 as soon as shutdown starts.
    let addr = server.addr.clone();
    let path = format!("/v1/stream/bin?offset={tail}&live=long-poll");
    let waiter = std::thread::spawn(move || request(&addr, "GET", &path, &[], b""));
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let reply = waiter.join().unwrap();
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("stream-next-offset"), Some(tail.as_str()));
}

#[test]
fn refuses_an_invalid_duration_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .args(["serve", "--long-poll-timeout", "5 parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("long-poll-timeout"), "{err}");
}
