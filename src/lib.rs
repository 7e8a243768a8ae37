//! A durable, standalone server for the Durable Streams protocol: append-only,
//! offset-addressable byte streams at URLs, read by catch-up, long-poll and
//! Server-Sent Events.
//!
//! # Layout
//!
//! Layers point one way (see `docs/architecture.md`): `offset` < `storage`,
//! `cursor` < `notify` < `metrics` < `tls` < `subscriptions` < `retention` <
//! `proxy` < `http` < `server` < `main`; nothing below `http` imports it.
//!
//! - [`MOUNT`]: where streams are mounted (`/v1/stream/`).
//! - [`offset`]: the opaque offset token (`{record:016x}_{byte:016x}`), parse and format.
//! - [`cursor`]: live-read cursors (interval numbers with jitter).
//! - [`config`]: server settings and their defaults. [`config::settings`] is
//!   the one table of every setting (TOML key, `DS_*` variable, flag, example
//!   line); [`config::kinds`] parses and validates values;
//!   [`config::layers`] merges defaults < TOML file < `DS_*` environment;
//!   [`config::flags`] builds `serve`'s flags from the table;
//!   [`config::example`] renders `config.example.toml` (a test compares).
//! - [`notify`]: per-stream broadcast channels that wake live readers (a wake
//!   may carry the appended records) and the observer that tells the
//!   subscription engine about every change.
//! - [`storage`]: the synchronous [`storage::Storage`] contract and its types.
//!   [`storage::handle`]: [`storage::handle::StorageHandle`], the one async
//!   way to call a backend (stage an append or run on the blocking pool; one
//!   mapping of a failed task; non-blocking sections that catch blocking
//!   I/O). The decisions, once for every backend: [`storage::model`] (pure
//!   rules: producers, closure, config matching, JSON framing),
//!   [`storage::txn`] (create, fork, append via `append_to`, delete cascade,
//!   trim, restore, sweep over a backend's `Txn`), [`storage::view`] (position
//!   arithmetic), [`storage::chain`] (fork-chain reads over a record table).
//!   Backends keep only how they store: [`storage::memory`];
//!   [`storage::file`] (group-committed WAL, per-stream data files,
//!   checkpoints; split into write, append, read, checkpoint, recover, wal,
//!   files, format; `docs/file-format.md`); [`storage::acid`] (redb, one
//!   writer thread; `docs/acid-format.md`); [`storage::postgres`] (many
//!   nodes on one database: writer thread, pool, LISTEN/NOTIFY wakes,
//!   leadership).
//! - [`metrics`]: lock-free counters, gauges and histograms, Prometheus text.
//! - [`tls`]: the rustls client configuration (webhooks, database);
//!   [`tls::server`]: the served certificate (PEM files, swapped on SIGHUP)
//!   and the ALPN server configuration.
//! - [`subscriptions`]: the subscription engine (no HTTP): the [`subscriptions::sub`]
//!   types, registry and its path index, durable state in the backend's
//!   control space, the wake worker (its own context), Ed25519 signing,
//!   delivery with retry backoff, SSRF guard.
//! - [`retention`]: the sweeper that applies the `[[retention]]` policies
//!   by trimming (tail samples for `max_age`, a bounded read for
//!   `max_bytes`).
//! - [`proxy`]: the Proxy Protocol engine (no HTTP routing): the upstream
//!   allowlist ([`proxy::allow`], pure), pre-signed URL signatures and their
//!   key ([`proxy::sign`]), forwarded headers and the upstream request
//!   ([`proxy::upstream`], through the webhook client), and the pipe of one
//!   upstream body into one stream ([`proxy::pipe`]).
//! - [`http`]: [`http::front`] (the fast path every connection calls, the
//!   router for the rest); thin handlers in [`http::write`], [`http::read`],
//!   [`http::sse`] (both live modes over [`http::live`], the one live-read
//!   core: subscribe, wait, skip stale wakes, ride out a 503),
//!   [`http::subscriptions`] and [`http::trim`] (the `__ds` APIs) and
//!   [`http::proxy`] / [`http::proxy_stream`] (`/v1/proxy`);
//!   [`http::headers`] parsing, [`http::header_names`], [`http::error`] (the
//!   single error-to-HTTP mapping), [`http::ops`] (`/healthz`, `/readyz`,
//!   `/metrics`, the request log), [`http::auth`] (who may do what:
//!   static tokens, JWT scopes, `Cache-Control: private`), [`http::jwt`]
//!   (token verification and scopes, pure), [`http::jwks`] (fetching
//!   `jwks_url`), [`http::limit`] (per-client rate limits and live-read
//!   caps), [`http::compress`],
//!   [`http::forward`] (subscription requests to the leader node);
//!   [`http::serve`] accepts connections, [`http::secure`] serves HTTPS
//!   (handshake, then hyper's HTTP/2 or HTTP/1.1 by ALPN),
//!   [`http::transport`] holds the
//!   timeouts and guarded I/O both engines share, [`http::h1`] is our
//!   HTTP/1.1 engine (dispatch, conn, role, decode, encode, body, io, date),
//!   and [`http::park`] keeps its live readers at rest without a task (one
//!   epoll set and reactor thread, one fan-out task per stream).
//! - [`server`]: opening storage, building the state and the engine's
//!   context, background tasks, binding and serving.
//! - [`healthcheck`]: the `durable-streams health` probe used by the container.
//! - [`backup`]: `export` / `import` / `list` over any backend; the portable
//!   archive format is documented in `docs/archive-format.md`.
//!
//! These docs are for the server's developers (the library has no users of
//! its own beyond the binary and the tests): read them with
//! `cargo doc --no-deps --document-private-items`, where the links to
//! private modules and items resolve.
#![allow(rustdoc::private_intra_doc_links)]

/// Where streams are mounted: every stream URL is this prefix and the
/// stream's name. The HTTP layer routes on it and the metrics classify
/// requests by it, so it lives below both.
pub const MOUNT: &str = "/v1/stream/";

pub mod backup;
pub mod config;
pub mod cursor;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod offset;
pub mod proxy;
pub mod retention;
pub mod server;
pub mod storage;
pub mod subscriptions;
pub mod tls;
pub mod zerocopy;
