//! The PostgreSQL schema, its migrations, the metadata encoding and the
//! mapping of database failures onto [`StorageError`].
//!
//! Tables (all prefixed `ds_`):
//!
//! * `ds_streams`: one row per stream incarnation: its compact `id`, its
//!   `name`, the [`StreamMeta`] without producers (`meta`, JSON), and the
//!   columns the database itself needs: `last_access` (sliding TTL; the
//!   column wins over the copy in `meta`), `ttl_ms` / `expires_at` /
//!   `refcount` for the sweeper's query.
//! * `ds_records`: `(stream_id, pos)` → `(seq, body)`, one row per record:
//!   "the record containing `pos`" is the last row `<= (id, pos)`.
//! * `ds_producers`: `(stream_id, producer)` → `(epoch, last_seq)`.
//! * `ds_control`: `(ns, key)` → `value`, the control-plane space.
//! * `ds_leader`: the URL of the node that holds the leadership (the
//!   session-level advisory lock [`LEADER_LOCK`]), for forwarding.
//! * `ds_schema`: applied migration versions.
//!
//! Migrations run in one transaction under an advisory lock, so nodes that
//! start together apply each exactly once; a database migrated by a newer
//! build is refused rather than misread.

use postgres::Client;

use crate::storage::{StorageError, StreamMeta};

/// Key of the advisory lock held while migrating ("dsmi").
const MIGRATION_LOCK: i64 = 0x6473_6d69;
/// Key of the advisory lock the leading node holds for its session ("dsld").
pub(super) const LEADER_LOCK: i64 = 0x6473_6c64;

/// Every migration, in order; version = index + 1. Never edit one that has
/// shipped: add another.
const MIGRATIONS: &[&str] = &["
    CREATE SEQUENCE ds_stream_ids;
    CREATE TABLE ds_streams (
        id          BIGINT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        meta        BYTEA NOT NULL,
        last_access BIGINT NOT NULL,
        ttl_ms      BIGINT,
        expires_at  BIGINT,
        refcount    BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX ds_streams_expires ON ds_streams (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX ds_streams_ttl ON ds_streams ((last_access + ttl_ms)) WHERE ttl_ms IS NOT NULL;
    CREATE TABLE ds_records (
        stream_id BIGINT NOT NULL,
        pos       BIGINT NOT NULL,
        seq       BIGINT NOT NULL,
        body      BYTEA NOT NULL,
        PRIMARY KEY (stream_id, pos)
    );
    CREATE TABLE ds_producers (
        stream_id BIGINT NOT NULL,
        producer  TEXT NOT NULL,
        epoch     BIGINT NOT NULL,
        last_seq  BIGINT NOT NULL,
        PRIMARY KEY (stream_id, producer)
    );
    CREATE TABLE ds_control (
        ns    TEXT NOT NULL,
        key   TEXT NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE TABLE ds_leader (
        id    INT PRIMARY KEY CHECK (id = 1),
        node  TEXT NOT NULL,
        url   TEXT NOT NULL,
        since TIMESTAMPTZ NOT NULL DEFAULT now()
    );
"];

/// Brings the schema up to this build's version.
pub(super) fn migrate(client: &mut Client) -> Result<(), StorageError> {
    let mut txn = client.transaction().map_err(map_err)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(map_err)?;
    txn.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS ds_schema (
             version    INT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .map_err(map_err)?;
    let current: i32 = txn
        .query_one("SELECT coalesce(max(version), 0) FROM ds_schema", &[])
        .map_err(map_err)?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(StorageError::Corrupt(format!(
            "the database schema is at version {current}, newer than this build's {known}; \
             run a newer durable-streams"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        txn.batch_execute(sql).map_err(map_err)?;
        txn.execute("INSERT INTO ds_schema (version) VALUES ($1)", &[&version])
            .map_err(map_err)?;
        tracing::info!(version, "postgres storage: schema migrated");
    }
    txn.commit().map_err(map_err)
}

/// Encodes metadata for the `meta` column: JSON, producers left out (they
/// live in `ds_producers`).
pub(super) fn encode_meta(meta: &StreamMeta) -> Result<Vec<u8>, StorageError> {
    let mut bare = meta.clone();
    bare.producers.clear();
    serde_json::to_vec(&bare)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode stream metadata: {e}")))
}

/// Decodes a `ds_streams` row's metadata; `last_access` comes from its column.
pub(super) fn decode_meta(bytes: &[u8], last_access: i64) -> Result<StreamMeta, StorageError> {
    let mut meta: StreamMeta = serde_json::from_slice(bytes)
        .map_err(|e| StorageError::Corrupt(format!("cannot decode stream metadata: {e}")))?;
    meta.last_access = last_access.max(0) as u64;
    Ok(meta)
}

/// A u64 position, id or time as a BIGINT (all stay far below 2^63).
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT back as u64.
pub(super) fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

/// True for failures worth retrying the whole transaction: a deadlock, a
/// serialization failure, or a unique violation from a concurrent create of
/// the same name on another node.
pub(super) fn is_retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("40001") | Some("40P01") | Some("23505")
    )
}

/// Maps a database failure onto the storage contract: anything that means
/// "the database cannot be reached or is not accepting work now" is
/// [`StorageError::Unavailable`] (503 with `Retry-After`), the rest an I/O
/// failure.
pub(super) fn map_err(e: postgres::Error) -> StorageError {
    let unavailable = match e.code().map(|c| c.code()) {
        // connection_exception, operator_intervention (shutdown, recovery),
        // insufficient_resources (too many connections, disk full handled below).
        Some(code) => {
            code.starts_with("08") || code.starts_with("57") || code == "53300" || code == "53400"
        }
        None => {
            (e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().contains("timed out"))
                && !tls_refused(&e)
        }
    };
    if e.code().map(|c| c.code()) == Some("53100") {
        return StorageError::NoSpace;
    }
    // The causes too: "error performing TLS handshake" alone says nothing.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if unavailable {
        StorageError::Unavailable(format!("database unavailable: {detail}"))
    } else {
        StorageError::Io(std::io::Error::other(format!("database error: {detail}")))
    }
}

/// True when TLS itself refused the server (an untrusted or mismatched
/// certificate): a setting to fix, not an outage to wait out.
fn tls_refused(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// A copy of an error, for answering every call of a failed batch.
pub(super) fn clone_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::NoSpace => StorageError::NoSpace,
        StorageError::Unavailable(s) => StorageError::Unavailable(s.clone()),
        StorageError::Corrupt(s) => StorageError::Corrupt(s.clone()),
        other => StorageError::Io(std::io::Error::other(other.to_string())),
    }
}
