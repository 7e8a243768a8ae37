//! The real binary: its start-up contract and a clean shutdown.

use crate::common;

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

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_durable-streams"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn refuses_invalid_settings_naming_the_key_and_the_accepted_values() {
    let out = run_binary(&["serve"], &[("DS_STORAGE", "floppy")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`storage`") && err.contains("DS_STORAGE"),
        "{err}"
    );
    assert!(err.contains("memory, file, acid"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ds.toml");
    std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
    let out = run_binary(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`log_format`") && err.contains("pretty, json"),
        "{err}"
    );

    let out = run_binary(&["serve"], &[("DS_LONG_POLL_TIMEOUT", "soon")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`long_poll_timeout`") && err.contains("5s"),
        "{err}"
    );
}

#[test]
fn layers_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ds.toml");
    // The file's bind is taken over by the flag from Server::start; its
    // long-poll timeout by the environment, which in turn loses to nothing.
    std::fs::write(
        &file,
        "bind = \"127.0.0.1:1\"\nlong_poll_timeout = \"1h\"\nmax_body_bytes = 4\n",
    )
    .unwrap();
    let server = Server::start_with_env(
        &["--config", file.to_str().unwrap(), "--max-body-bytes", "8"],
        &[
            ("DS_LONG_POLL_TIMEOUT", "200ms"),
            ("DS_MAX_BODY_BYTES", "6"),
        ],
    );
    let created = server.request(
        "PUT",
        "/v1/stream/l",
        &[("Content-Type", "text/plain")],
        b"",
    );
    assert_eq!(created.status, 201);
    // Flag (8) beats environment (6) beats file (4).
    let ok = server.request(
        "POST",
        "/v1/stream/l",
        &[("Content-Type", "text/plain")],
        b"12345678",
    );
    assert_eq!(ok.status, 204);
    let big = server.request(
        "POST",
        "/v1/stream/l",
        &[("Content-Type", "text/plain")],
        b"123456789",
    );
    assert_eq!(big.status, 413);
    // Environment (200ms) beats the file (1h): the long-poll answers quickly.
    let tail = ok.header("stream-next-offset").unwrap().to_string();
    let started = Instant::now();
    let poll = server.request(
        "GET",
        &format!("/v1/stream/l?offset={tail}&live=long-poll"),
        &[],
        b"",
    );
    assert_eq!(poll.status, 204);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Starts the binary on the memory backend with `args` and the environment
/// changes `env` (`None` removes a variable), stderr captured; returns the
/// child and the address from its `listening on` line.
fn spawn_with_logs(args: &[&str], env: &[(&str, Option<&str>)]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durable-streams"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--storage", "memory"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.split("http://").nth(1).unwrap().trim().to_string();
    (child, addr)
}

#[test]
fn json_logs_one_line_per_request_without_secrets() {
    use std::process::Command;

    // RUST_LOG overrides --log-level: with `error` alone nothing would show.
    let (child, addr) = spawn_with_logs(
        &[
            "--log-format",
            "json",
            "--log-level",
            "error",
            "--request-log",
            "all",
        ],
        &[("RUST_LOG", Some("info"))],
    );
    let reply = request(
        &addr,
        "PUT",
        "/v1/stream/logged",
        &[
            ("Content-Type", "text/plain"),
            ("Authorization", "Bearer very-secret-token"),
        ],
        b"",
    );
    assert_eq!(reply.status, 201);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains("very-secret-token"), "{logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<_> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 1, "{logs}");
    let r = requests[0];
    assert_eq!(r["method"], "PUT");
    assert_eq!(r["path"], "/v1/stream/logged");
    assert_eq!(r["status"], 201);
    assert!(r["latency_ms"].is_number());
}

/// Runs the binary with `args` (and `RUST_LOG` unset), sends one request
/// answered 201, one answered 404, and returns what it logged on stderr,
/// the colour codes included.
fn logs_of_two_requests(args: &[&str]) -> String {
    use std::process::Command;

    let (child, addr) = spawn_with_logs(args, &[("RUST_LOG", None), ("NO_COLOR", None)]);
    let ct = ("Content-Type", "text/plain");
    assert_eq!(
        request(&addr, "PUT", "/v1/stream/quiet", &[ct], b"").status,
        201
    );
    assert_eq!(
        request(&addr, "GET", "/v1/stream/absent", &[], b"").status,
        404
    );
    let metrics = request(&addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains(r#"ds_http_requests_total{method="PUT",route="stream",status="201"} 1"#),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn by_default_requests_are_counted_not_logged_and_a_pipe_gets_no_colour() {
    let logs = logs_of_two_requests(&[]);
    assert!(!logs.contains("latency_ms"), "{logs}");
    assert!(!logs.contains("/v1/stream/"), "{logs}");
    assert!(
        !logs.contains('\x1b'),
        "ANSI codes written to a pipe: {logs:?}"
    );

    let logs = logs_of_two_requests(&["--request-log", "all"]);
    assert_eq!(
        logs.lines().filter(|l| l.contains("latency_ms")).count(),
        2,
        "{logs}"
    );
    assert!(
        logs.contains("/v1/stream/quiet") && logs.contains("status=404"),
        "{logs}"
    );
    assert!(
        !logs.contains('\x1b'),
        "ANSI codes written to a pipe: {logs:?}"
    );

    let logs = logs_of_two_requests(&["--request-log", "errors", "--log-level", "debug"]);
    assert!(
        logs.contains("/v1/stream/quiet"),
        "errors mode logs the rest at debug: {logs}"
    );

    let logs = logs_of_two_requests(&["--request-log", "off", "--log-level", "debug"]);
    assert!(!logs.contains("/v1/stream/quiet"), "{logs}");
}

#[test]
fn auth_tokens_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# writers\nwrite:file-writer\nread:file-reader\n").unwrap();
    let server = Server::start_with_env(
        &[],
        &[
            ("DS_AUTH_ENABLED", "true"),
            ("DS_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ],
    );
    let ct = ("Content-Type", "text/plain");
    assert_eq!(
        server.request("PUT", "/v1/stream/f", &[ct], b"").status,
        401
    );
    let auth = ("Authorization", "Bearer file-writer");
    assert_eq!(
        server
            .request("PUT", "/v1/stream/f", &[ct, auth], b"")
            .status,
        201
    );
    let auth = ("Authorization", "Bearer file-reader");
    assert_eq!(
        server.request("GET", "/v1/stream/f", &[auth], b"").status,
        200
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);

    // Auth on without any token cannot serve anyone: refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .arg("serve")
        .env("DS_AUTH_ENABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.enabled"));
}
