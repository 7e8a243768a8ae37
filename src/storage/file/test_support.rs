//! What the file backend's unit tests share: opening a store, the requests
//! they send (the shared constructors, at fixed times: creates at 1,
//! appends at 2, reads at 3), whole reads, and damaging files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::FileStorage;
use crate::config::SyncMode;
use crate::notify::WakeHub;
use crate::offset::{Offset, ReadFrom};
use crate::storage::{AppendRequest, CreateRequest, ReadRequest, Storage, StorageError};

/// Opens the store in `dir` (`always` sync).
pub fn open(dir: &Path) -> FileStorage {
    try_open(dir).expect("open")
}

pub fn try_open(dir: &Path) -> Result<FileStorage, StorageError> {
    FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(50),
        WakeHub::new(),
    )
}

/// A directory holding a store with the plain-text stream `name` created
/// with `body`, stopped cleanly (a checkpoint, nothing left to replay).
pub fn stopped_with(name: &str, body: &'static str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create(name, create(body)).unwrap();
    s.shutdown().unwrap();
    dir
}

/// A plain-text create of `body` at time 1.
pub fn create(body: impl Into<Bytes>) -> CreateRequest {
    CreateRequest::new(Some("text/plain"), body, 1)
}

/// A plain-text append of `body` at time 2.
pub fn append(body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest::new(Some("text/plain"), body, 2)
}

/// [`append`] by producer "p", epoch 0, `seq`.
pub fn produce(body: impl Into<Bytes>, seq: u64) -> AppendRequest {
    append(body).by_producer("p", 0, seq)
}

/// Everything `name` holds, its next offset and whether it is closed.
pub fn read_all(s: &FileStorage, name: &str) -> Result<(Vec<u8>, Offset, bool), StorageError> {
    read_from(s, name, ReadFrom::Start)
}

pub fn read_from(
    s: &FileStorage,
    name: &str,
    from: ReadFrom,
) -> Result<(Vec<u8>, Offset, bool), StorageError> {
    let r = s.read(name, ReadRequest::all(from, 3))?;
    Ok((r.concat(), r.next, r.info.closed))
}

/// The last file (by name) with extension `ext` in `dir/sub`.
pub fn newest(dir: &Path, sub: &str, ext: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    found.sort();
    found.pop().expect("a file")
}

pub fn chop(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

pub fn flip_last_byte(path: &Path) {
    let mut buf = std::fs::read(path).unwrap();
    let last = buf.len() - 1;
    buf[last] ^= 0xff;
    std::fs::write(path, buf).unwrap();
}

pub fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
