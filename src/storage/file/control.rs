//! The file backend's control-plane key/value space
//! ([`Storage::control_put`](crate::storage::Storage::control_put)): one
//! small checksummed file per key, replaced atomically.
//!
//! Layout (`docs/file-format.md`, "Control records"):
//! `DATA_DIR/control/<ns>/<sha256(key) hex>.rec`, each a common header with
//! magic `DSTRMCTL` followed by one frame whose payload is
//! `[key_len u32][key][value]`. A put writes a uniquely named temp file in the
//! same directory, syncs it, renames it over the record and syncs the
//! directory, so a crash leaves the old record or the new one. Temp files
//! left by a crash are ignored and removed by the next scan.
//!
//! Kept apart from the WAL on purpose: control records are rare, small and
//! overwritten in place, while the WAL is tuned for a high rate of appends;
//! this way neither the checkpoint nor recovery needs to know about them.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::format;
use super::wal::sync_dir;
use crate::storage::{StorageError, check_control};

/// Magic number of a control record (`control/<ns>/<hash>.rec`).
pub const CONTROL_MAGIC: [u8; 8] = *b"DSTRMCTL";
/// Control record header: magic, version, flags (0); one frame follows.
pub const CONTROL_HEADER_LEN: usize = 16;

/// The control records under one data directory.
pub struct Control {
    root: PathBuf,
    /// Makes temp-file names unique within the process (the data directory
    /// is locked, so no other process writes here).
    seq: AtomicU64,
}

/// Encodes a control record file: header, then one frame.
pub fn encode(key: &str, value: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + key.len() + value.len());
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key.as_bytes());
    payload.extend_from_slice(value);
    let mut out = format::header(CONTROL_MAGIC, &[]);
    format::put_frame(&mut out, &payload);
    out
}

/// Decodes a control record file into its key and value.
pub fn decode(buf: &[u8]) -> Result<(String, Vec<u8>), String> {
    format::check_header(buf, CONTROL_MAGIC, 0)?;
    let (payload, end) =
        format::get_frame(&buf[CONTROL_HEADER_LEN..]).map_err(|e| format!("bad frame: {e:?}"))?;
    if CONTROL_HEADER_LEN + end != buf.len() {
        return Err("bytes after the record's frame".into());
    }
    let klen = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("record shorter than its key length")?;
    let key = payload
        .get(4..4 + klen)
        .ok_or("record shorter than its key")?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| "key is not UTF-8")?;
    Ok((key, payload[4 + klen..].to_vec()))
}

fn file_name(key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.rec")
}

impl Control {
    /// The control space of the data directory `root` (created lazily).
    pub fn new(root: &Path) -> Self {
        Control {
            root: root.join("control"),
            seq: AtomicU64::new(0),
        }
    }

    /// The namespace's directory, created (durably) when `create` is set.
    fn ns_dir(&self, ns: &str, create: bool) -> Result<PathBuf, StorageError> {
        let dir = self.root.join(ns);
        if create && !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            sync_dir(&self.root)?;
            if let Some(parent) = self.root.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(dir)
    }

    pub fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_control(ns, key, value)?;
        let dir = self.ns_dir(ns, true)?;
        let name = file_name(key);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{name}.{n}.tmp"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)?;
            f.write_all(&encode(key, value))?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, dir.join(&name))?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(result?)
    }

    pub fn delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        check_control(ns, key, b"")?;
        let dir = self.ns_dir(ns, false)?;
        match std::fs::remove_file(dir.join(file_name(key))) {
            Ok(()) => Ok(sync_dir(&dir)?),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        check_control(ns, "-", b"")?;
        let dir = self.ns_dir(ns, false)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if fname.ends_with(".tmp") {
                // A put that a crash interrupted before its rename.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !fname.ends_with(".rec") {
                continue;
            }
            let mut buf = Vec::new();
            File::open(&path)?.read_to_end(&mut buf)?;
            // Records are replaced atomically, so a bad one is damage, not a
            // torn write: refuse to guess.
            let (key, value) = decode(&buf).map_err(|e| {
                StorageError::Corrupt(format!("control record {}: {e}", path.display()))
            })?;
            if file_name(&key) != fname {
                return Err(StorageError::Corrupt(format!(
                    "control record {} holds key {key:?}, which belongs elsewhere",
                    path.display()
                )));
            }
            out.push((key, value));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_damage() {
        let buf = encode("sub/1", b"{\"a\":1}");
        assert_eq!(
            decode(&buf).unwrap(),
            ("sub/1".to_string(), b"{\"a\":1}".to_vec())
        );
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn put_scan_delete_survive_reopen_and_ignore_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = Control::new(dir.path());
        assert!(c.scan("subs").unwrap().is_empty());
        c.put("subs", "b", b"2").unwrap();
        c.put("subs", "a", b"1").unwrap();
        c.put("subs", "a", b"one").unwrap();
        c.put("keys", "k", b"secret").unwrap();
        c.delete("subs", "missing").unwrap();
        std::fs::write(dir.path().join("control/subs/x.rec.7.tmp"), b"torn").unwrap();
        let c = Control::new(dir.path());
        assert_eq!(
            c.scan("subs").unwrap(),
            vec![("a".into(), b"one".to_vec()), ("b".into(), b"2".to_vec())]
        );
        assert!(!dir.path().join("control/subs/x.rec.7.tmp").exists());
        c.delete("subs", "a").unwrap();
        assert_eq!(c.scan("subs").unwrap(), vec![("b".into(), b"2".to_vec())]);
        assert_eq!(c.scan("keys").unwrap().len(), 1);
        assert!(c.put("Bad NS", "k", b"").is_err());
        assert!(c.put("subs", "", b"").is_err());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let c = Control::new(dir.path());
        c.put("subs", "a", b"1").unwrap();
        let path = dir.path().join("control/subs").join(file_name("a"));
        let mut buf = std::fs::read(&path).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        std::fs::write(&path, buf).unwrap();
        assert!(matches!(c.scan("subs"), Err(StorageError::Corrupt(_))));
    }
}
