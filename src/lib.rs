//! A durable, standalone server for the Durable Streams protocol: append-only,
//! offset-addressable byte streams at URLs, read by catch-up, long-poll and
//! Server-Sent Events.
//!
//! # Layout
//!
//! - [`offset`]: the opaque offset token (`{record:016x}_{byte:016x}`), parse and format.
//! - [`cursor`]: live-read cursors (interval numbers with jitter).
//! - [`config`]: server settings, limits and their defaults;
//!   [`config::layers`] merges defaults < TOML file < `DS_*` environment.
//! - [`notify`]: per-stream broadcast channels that wake live readers (a wake
//!   may carry the appended records, so live readers at the old tail answer
//!   without reading storage and SSE connections share one encoding), and
//!   the observer that tells the subscription engine about every change.
//! - [`storage`]: the synchronous [`storage::Storage`] contract and its types;
//!   [`storage::model`] holds the protocol decisions (producers, closure,
//!   config matching, JSON framing) as pure functions shared by all backends;
//!   [`storage::view`] the position arithmetic over a stream's own records;
//!   [`storage::memory`] the in-memory backend; [`storage::file`] the
//!   append-log backend (group-committed WAL, per-stream data files,
//!   checkpoints; format in `docs/file-format.md`; WAL room claimed with
//!   `fallocate` so a full disk is a clean 507; test-only fault injection in
//!   `storage/file/faults.rs`); [`storage::acid`] the redb backend (one
//!   writer thread batching transactions, reopening the database after an
//!   I/O failure; `docs/acid-format.md`).
//! - [`http`]: [`http::front`], the service every connection calls (a fast
//!   path for stream requests, the router for the rest); the axum router and
//!   thin handlers ([`http::write`] for
//!   PUT/POST/DELETE/HEAD, [`http::read`] for catch-up and long-poll,
//!   [`http::sse`] for SSE), header parsing ([`http::headers`]) and the single
//!   error-to-HTTP mapping ([`http::error`]); [`http::ops`] serves
//!   `/healthz`, `/readyz`, `/metrics` and counts and logs every request;
//!   [`http::auth`] checks bearer tokens and their scopes; [`http::serve`]
//!   accepts connections and serves them (hyper, HTTP/1.1 keep-alive and
//!   h2c) with the header, first-byte and
//!   send-stall timeouts that cut off hostile or broken clients.
//! - [`metrics`]: lock-free counters, gauges and histograms, Prometheus text.
//! - [`server`]: opening storage, background tasks, binding and serving.
//! - [`healthcheck`]: the `durable-streams health` probe used by the container.
//! - [`subscriptions`]: the reserved `__ds` subscription APIs: registry and
//!   its path index, durable state in the backend's control space
//!   ([`storage::Storage::control_put`]), the wake worker, Ed25519 webhook
//!   signing, http(s) delivery with retry backoff, pull-wake leases.
//! - [`backup`]: `export` / `import` / `list` over any backend; the portable
//!   archive format is documented in `docs/archive-format.md`.

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
pub mod server;
pub mod storage;
pub mod subscriptions;
pub mod tls;
