//! A PostgreSQL server for the postgres backend's tests: the one
//! `scripts/pg.sh` runs (installing and starting it on first use), or the one
//! `DS_TEST_DATABASE_URL` names (`scripts/test.sh` exports it). Every test gets
//! a fresh database ([`fresh_database`]), and [`node`] opens a storage node
//! on it. Reached as `crate::common::pg` from every test binary.
//!
//! Nothing here skips a test when PostgreSQL is missing: it panics and says why.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `scripts/pg.sh ARGS` and returns its stdout (a URL, or nothing);
/// panics with its stderr if it fails.
fn pg_sh(args: &[&str]) -> String {
    pg_sh_with(&[], args)
}

/// [`pg_sh`] with extra environment variables (`DS_PG_DIR`, `DS_PG_PORT`).
fn pg_sh_with(env: &[(&str, &str)], args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
    let out = Command::new(&script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`scripts/pg.sh {}` failed ({}); the postgres tests need a PostgreSQL server \
         (set DS_TEST_DATABASE_URL to use another one):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pg.sh prints a UTF-8 URL")
        .trim()
        .to_string()
}

/// The server's URL (its maintenance database): `DS_TEST_DATABASE_URL` if set,
/// else what `scripts/pg.sh start` prints. Starts the server once per process.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DS_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => pg_sh(&["start"]),
    })
    .clone()
}

/// `url` with its database (the path) replaced by `name`; the query is kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("not a postgres URL: {url:?}"));
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{name}{query}")
}

/// Creates a new, empty database named `ds_t_<tag>_<pid>_<n>` (unique per
/// call, also across concurrent test processes) and returns its URL. The
/// database is left behind: `scripts/pg.sh stop` and `rm -rf target/pg`
/// remove them all.
pub fn fresh_database(tag: &str) -> String {
    fresh_database_on(&server_url(), tag)
}

/// [`fresh_database`] on the server at `server` (its maintenance URL).
fn fresh_database_on(server: &str, tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_{}_{n}", std::process::id());
    // PostgreSQL names are at most 63 bytes; keep the unique suffix whole.
    let tag: String = tag
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(63 - "ds_t_".len() - suffix.len())
        .collect();
    let name = format!("ds_t_{tag}{suffix}");
    psql(
        server,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    );
    psql(server, &format!("CREATE DATABASE \"{name}\""));
    with_database(server, &name)
}

/// A postgres storage node on the database at `url` (a small pool, a wake hub
/// of its own). Call it again on the same URL for a second node, or after
/// dropping the first for a reopen. Plain threads only, like every
/// `PgStorage` call.
pub fn node(url: &str) -> durable_streams::storage::postgres::PgStorage {
    let options = durable_streams::storage::postgres::PgOptions {
        url: url.to_string(),
        pool_size: 4,
        ca_file: None,
    };
    durable_streams::storage::postgres::PgStorage::open(
        &options,
        durable_streams::notify::WakeHub::new(),
    )
    .unwrap_or_else(|e| panic!("cannot open a postgres storage node on {url}: {e}"))
}

/// Runs `sql` with `psql` on the database at `url`; returns its unaligned,
/// tuples-only output (`SELECT 1` gives `"1"`). Panics if psql fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (install postgresql-client): {e}"));
    assert!(
        out.status.success(),
        "psql {url} -c {sql:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// The wrappers below control the server of `scripts/pg.sh` (the one test.sh
// exports too), not an arbitrary DS_TEST_DATABASE_URL. They stop the server
// every test of the process shares: a test that calls them holds
// [`outage`] for its duration, and every other test of its binary that uses
// the shared server holds [`shared`], so the outage cannot cut their
// connections (cargo runs test binaries one after another, but the tests
// of one binary at once).

static SHARED: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that uses the shared server while a test of the same
/// binary may stop it ([`outage`]).
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SHARED.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that stops or restarts the shared server: waits for the
/// [`shared`] holders to finish and keeps new ones out meanwhile.
pub fn outage() -> std::sync::RwLockWriteGuard<'static, ()> {
    SHARED.write().unwrap_or_else(|e| e.into_inner())
}

/// `scripts/pg.sh stop`: a fast shutdown; open connections are cut.
pub fn stop_server() {
    pg_sh(&["stop"]);
}

/// `scripts/pg.sh start`: start it again on the same data and port.
pub fn start_server() {
    pg_sh(&["start"]);
}

/// `scripts/pg.sh restart`: a short outage; committed data survives.
pub fn restart_server() {
    pg_sh(&["restart"]);
}

/// A PostgreSQL server of one test's own: `scripts/pg.sh` on a data
/// directory beside the shared one (`<DS_PG_DIR or target/pg>-<name>`) and
/// on a free port. For a test that stops its server while other tests of
/// the same binary run (they share the default one); stopped when dropped.
/// Two processes must not use the same `name` at once.
pub struct OwnServer {
    /// Its data directory (`DS_PG_DIR`).
    dir: String,
    /// Its port (`DS_PG_PORT`).
    port: String,
    /// Its maintenance database's URL.
    url: String,
}

impl OwnServer {
    /// Starts the server (initdb on first use), stopping first one a killed
    /// earlier run may have left behind on another port.
    pub fn start(name: &str) -> OwnServer {
        // Beside the shared server's directory, wherever scripts/pg.sh
        // keeps that (as root: somewhere user postgres can reach).
        let shared = std::env::var("DS_PG_DIR")
            .ok()
            .filter(|d| !d.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(pg_sh(&["dir"])));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for PostgreSQL")
            .port();
        let mut server = OwnServer {
            dir: format!("{}-{name}", shared.display()),
            port: port.to_string(),
            url: String::new(),
        };
        server.sh(&["stop"]);
        server.url = server.sh(&["start"]);
        server
    }

    fn env(&self) -> [(&'static str, &str); 2] {
        [("DS_PG_DIR", &self.dir), ("DS_PG_PORT", &self.port)]
    }

    fn sh(&self, args: &[&str]) -> String {
        pg_sh_with(&self.env(), args)
    }

    /// Its data directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The maintenance database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new, empty database on this server (see [`fresh_database`]).
    pub fn fresh_database(&self, tag: &str) -> String {
        fresh_database_on(&self.url, tag)
    }

    /// A fast shutdown (`pg_ctl stop -m fast`): open connections are cut.
    pub fn stop(&self) {
        self.sh(&["stop"]);
    }

    /// Starts it again on the same data and port.
    pub fn start_again(&self) {
        self.sh(&["start"]);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // Not `sh`: a panic while unwinding would abort the test binary.
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let _ = Command::new(script)
            .arg("stop")
            .envs(self.env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
