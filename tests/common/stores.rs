//! Durable stores opened the way most storage tests open them: the file
//! backend syncing every write (`SyncMode::Always`), the acid backend, each
//! with a wake hub of its own.

use std::path::Path;
use std::time::Duration;

use durable_streams::config::SyncMode;
use durable_streams::notify::WakeHub;
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::file::FileStorage;

/// The file store in `dir` (created if needed); panics if it cannot open.
pub fn file(dir: &Path) -> FileStorage {
    FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(10),
        WakeHub::new(),
    )
    .unwrap_or_else(|e| panic!("cannot open the file store {}: {e}", dir.display()))
}

/// The acid store in `dir` (created if needed); panics if it cannot open.
pub fn acid(dir: &Path) -> AcidStorage {
    AcidStorage::open(dir, WakeHub::new())
        .unwrap_or_else(|e| panic!("cannot open the acid store {}: {e}", dir.display()))
}
