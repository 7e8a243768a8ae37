//! Model-based tests: every durable backend (file, acid, postgres) must
//! behave exactly like the memory backend (the model).
//!
//! * [`history`]: one seeded random history of creates, appends, closes,
//!   forks, deletes, reads, heads and sweeps, run on the model and on the
//!   store under test, which is checkpointed and reopened at random points;
//!   every outcome is compared (stream ids, which legitimately differ, are
//!   masked).
//! * [`concurrent`]: many threads append through one store, or through two
//!   postgres nodes sharing a database, and nothing may be lost,
//!   duplicated, reordered or torn.
//!
//! Environment: `DS_MODEL_SEEDS` / `ACID_MODEL_SEEDS` / `PG_MODEL_SEEDS`
//! (how many seeds for file / acid / postgres, default 20 / 16 / 6),
//! `DS_MODEL_FIRST` (the first seed, default 0), `MODEL_STEPS` (operations
//! per seed, default 300), `MODEL_STATS` (print per-seed outcome counts),
//! `DS_MODEL_TRACE` (print every operation and its outcome).

mod concurrent;
mod history;

use std::sync::Arc;

use durable_streams::storage::Storage;
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::file::FileStorage;
use durable_streams::storage::postgres::PgStorage;

use crate::common::pg;

/// A store under test: its [`Storage`], and the maintenance of its own a
/// history may trigger at any point.
pub trait Subject {
    fn storage(&self) -> &dyn Storage;
    /// A checkpoint, on the file backend; nothing elsewhere.
    fn checkpoint(&self) {}
    /// Whether a read's renewal of a sliding TTL survives a reopen without
    /// a shutdown. The file backend persists them only at its next
    /// checkpoint (`docs/durability.md`), so a history on it draws no TTL
    /// short enough to expire between steps.
    fn keeps_read_renewals(&self) -> bool {
        true
    }
    /// Whether its reads lend their bytes (take `ReadRequest::lend_bytes`),
    /// as the model (the memory backend) does.
    fn lends_reads(&self) -> bool {
        false
    }
}

impl Subject for FileStorage {
    fn storage(&self) -> &dyn Storage {
        self
    }
    fn checkpoint(&self) {
        FileStorage::checkpoint(self).expect("checkpoint");
    }
    fn keeps_read_renewals(&self) -> bool {
        false
    }
    fn lends_reads(&self) -> bool {
        true
    }
}

impl Subject for AcidStorage {
    fn storage(&self) -> &dyn Storage {
        self
    }
}

impl Subject for PgStorage {
    fn storage(&self) -> &dyn Storage {
        self
    }
}

/// Opens the store under test on its (persistent) location: a directory, a
/// database. Calling it again after dropping the previous instance is a
/// reopen; calling it while another instance lives opens a second node
/// (postgres only).
pub type Open<'a> = &'a dyn Fn() -> Box<dyn Subject>;

use crate::common::stores::{acid as acid_store, file as file_store};

/// The number in environment variable `var`, else `default`.
fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seeds to run: `DS_MODEL_FIRST` on, as many as `var` says.
fn seeds(var: &str, default: u64) -> std::ops::Range<u64> {
    let first = env_or("DS_MODEL_FIRST", 0);
    first..first + env_or(var, default)
}

/// Operations per history.
fn steps() -> usize {
    env_or("MODEL_STEPS", 300) as usize
}

#[test]
fn file_backend_matches_the_memory_model() {
    // A reopen without a shutdown leaves the WAL since the last checkpoint
    // to replay; one after a shutdown opens a fresh checkpoint.
    for seed in seeds("DS_MODEL_SEEDS", 20) {
        let dir = tempfile::tempdir().unwrap();
        history::run(seed, steps(), &|| Box::new(file_store(dir.path())));
    }
}

#[test]
fn acid_matches_memory_on_random_histories() {
    for seed in seeds("ACID_MODEL_SEEDS", 16) {
        let dir = tempfile::tempdir().unwrap();
        history::run(seed, steps(), &|| Box::new(acid_store(dir.path())));
    }
}

#[test]
fn postgres_matches_memory_on_random_histories() {
    // A reopen drops the node (shutting it down) and opens a new one on the
    // same database: nothing may live only in a node's memory.
    for seed in seeds("PG_MODEL_SEEDS", 6) {
        let url = pg::fresh_database(&format!("model_{seed}"));
        history::run(seed, steps(), &|| Box::new(pg::node(&url)));
    }
}

#[test]
fn concurrent_clients_see_a_consistent_store() {
    // Many threads appending through one store: nothing lost, nothing torn.
    let dir = tempfile::tempdir().unwrap();
    let node: Arc<dyn Storage> = Arc::new(acid_store(dir.path()));
    concurrent::concurrent_appends(vec![node], &|| Box::new(acid_store(dir.path())));
}

#[test]
fn concurrent_clients_see_a_consistent_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let node: Arc<dyn Storage> = Arc::new(file_store(dir.path()));
    concurrent::concurrent_appends(vec![node], &|| Box::new(file_store(dir.path())));
}

#[test]
fn concurrent_clients_see_a_consistent_postgres_store() {
    let url = pg::fresh_database("concurrent");
    let node: Arc<dyn Storage> = Arc::new(pg::node(&url));
    concurrent::concurrent_appends(vec![node], &|| Box::new(pg::node(&url)));
}

#[test]
fn two_postgres_nodes_append_to_one_stream_consistently() {
    // Appends to one stream serialize across nodes (row locks), and producer
    // states are shared: a retry through the other node is a duplicate.
    let url = pg::fresh_database("two_nodes");
    let nodes: Vec<Arc<dyn Storage>> = vec![Arc::new(pg::node(&url)), Arc::new(pg::node(&url))];
    concurrent::concurrent_appends(nodes, &|| Box::new(pg::node(&url)));
}
