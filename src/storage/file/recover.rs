//! Recovery on open: the last checkpoint, then the WAL after it.
//!
//! 1. Load `checkpoint` (absent on a fresh directory): every stream's
//!    metadata as of the start of WAL segment `wal_segment`.
//! 2. Cut each stream's data and index files to the length its checkpointed
//!    metadata implies (the checkpoint synced them that far; anything after
//!    was written ahead of the WAL and is rewritten by the replay). Nothing
//!    else is read from the data files: start-up cost is the checkpoint plus
//!    the WAL tail, not the size of the streams.
//! 3. Replay every whole, checksummed WAL entry of segments `wal_segment..`
//!    in order, re-appending their records to the data files. The first
//!    torn or corrupt frame ends the log: it and everything after it were
//!    never acknowledged (an acknowledged entry was synced, and entries are
//!    synced in order).
//!
//! The caller then writes a fresh checkpoint, which makes the replayed state
//! durable and lets the old segments and orphaned stream files be deleted.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use super::files::Files;
use super::format::{self, FrameError, Op, WAL_HEADER_LEN, WAL_MAGIC};
use super::wal::segment_path;
use crate::storage::{StorageError, StreamMeta, model};

/// The state found on disk.
pub struct Recovered {
    pub streams: HashMap<String, StreamMeta>,
    pub next_id: u64,
    /// Highest WAL segment number present (new segments come after it).
    pub last_segment: u64,
}

/// Number of own records and own bytes of a stream.
pub fn own(meta: &StreamMeta) -> (u64, u64) {
    (meta.tail.seq - meta.base.seq, meta.tail.pos - meta.base.pos)
}

/// Refuses metadata that no writer produces (only damage or a foreign file
/// can): a tail before the base, or sizes whose file lengths overflow.
/// Checked before any arithmetic or allocation relies on them; the file
/// lengths themselves are then checked against the real files.
fn check_meta(name: &str, meta: &StreamMeta) -> Result<(), StorageError> {
    let sane = meta.tail.seq >= meta.base.seq
        && meta.tail.pos >= meta.base.pos
        && (meta.tail.seq - meta.base.seq)
            .checked_mul(format::FRAME_HEADER)
            .and_then(|n| n.checked_add(meta.tail.pos - meta.base.pos))
            .and_then(|n| n.checked_add(format::DATA_HEADER_LEN))
            .is_some()
        && meta.id < u64::MAX;
    if sane {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "stream {name:?}: metadata is inconsistent (base {}, tail {})",
            meta.base, meta.tail
        )))
    }
}

/// WAL segment numbers present in `wal_dir`, ascending.
pub fn segments(wal_dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(wal_dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_string_lossy()
            .strip_suffix(".log")
            .and_then(|s| s.parse().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

pub fn recover(root: &Path, wal_dir: &Path, files: &Files) -> Result<Recovered, StorageError> {
    let checkpoint = match std::fs::read(root.join("checkpoint")) {
        Ok(buf) => format::decode_checkpoint(&buf).map_err(|e| {
            StorageError::Corrupt(format!("{}: {e}", root.join("checkpoint").display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format::Checkpoint {
            next_id: 1,
            ..Default::default()
        },
        Err(e) => return Err(e.into()),
    };
    if checkpoint.wal_segment == u64::MAX || checkpoint.next_id == u64::MAX {
        return Err(StorageError::Corrupt(
            "the checkpoint's WAL segment or id counter is out of range".into(),
        ));
    }
    let mut streams: HashMap<String, StreamMeta> = HashMap::new();
    let mut next_id = checkpoint.next_id.max(1);
    for (name, meta) in checkpoint.streams {
        check_meta(&name, &meta)?;
        let (count, bytes) = own(&meta);
        files.truncate(meta.id, meta.base, count, bytes)?;
        next_id = next_id.max(meta.id + 1);
        streams.insert(name, meta);
    }
    let all = segments(wal_dir)?;
    let last_segment = all.last().copied().unwrap_or(0).max(checkpoint.wal_segment);
    let mut replayed = 0u64;
    'log: for &n in all.iter().filter(|&&n| n >= checkpoint.wal_segment) {
        let path = segment_path(wal_dir, n);
        let buf = std::fs::read(&path)?;
        if let Err(e) = format::check_header(&buf, WAL_MAGIC, 1) {
            tracing::warn!(segment = %path.display(), error = %e, "WAL segment header unreadable; log ends here");
            break;
        }
        let mut at = WAL_HEADER_LEN as usize;
        while at < buf.len() {
            let (payload, len) = match format::get_frame(&buf[at..]) {
                Ok(f) => f,
                Err(e) => {
                    let what = if e == FrameError::Short {
                        "torn"
                    } else {
                        "corrupt"
                    };
                    tracing::warn!(
                        segment = %path.display(), byte = at, kind = what,
                        "WAL ends in a {what} entry; discarding it and anything after it"
                    );
                    break 'log;
                }
            };
            let (ops, records) = format::decode_entry(payload)
                .map_err(|e| StorageError::Corrupt(format!("{} byte {at}: {e}", path.display())))?;
            apply(&mut streams, &mut next_id, files, ops, records)?;
            replayed += 1;
            at += len;
        }
    }
    tracing::info!(streams = streams.len(), replayed, "recovered file storage");
    Ok(Recovered {
        streams,
        next_id,
        last_segment,
    })
}

/// Applies one WAL entry to the recovered state and the stream files.
fn apply(
    streams: &mut HashMap<String, StreamMeta>,
    next_id: &mut u64,
    files: &Files,
    ops: Vec<Op>,
    records: Vec<Bytes>,
) -> Result<(), StorageError> {
    let mut records = records.into_iter();
    for op in ops {
        match op {
            Op::Put {
                name,
                meta,
                records: n,
            } => {
                check_meta(&name, &meta)?;
                let recs: Vec<Bytes> = records.by_ref().take(n as usize).collect();
                let from = match streams.get(&name) {
                    Some(cur) if cur.id == meta.id && cur.base == meta.base => cur.tail,
                    Some(cur) if cur.id == meta.id => {
                        return Err(StorageError::Corrupt(format!(
                            "WAL moves the base of stream {name:?}"
                        )));
                    }
                    Some(cur) => {
                        return Err(StorageError::Corrupt(format!(
                            "WAL creates stream {name:?} as {} while {} exists",
                            meta.id, cur.id
                        )));
                    }
                    None => {
                        files.create(meta.id, meta.base)?;
                        meta.base
                    }
                };
                if from.seq < meta.base.seq
                    || from.pos < meta.base.pos
                    || model::advance(from, &recs) != meta.tail
                {
                    return Err(StorageError::Corrupt(format!(
                        "WAL records of {name:?} do not reach its tail"
                    )));
                }
                files.append(
                    meta.id,
                    meta.base,
                    from.seq - meta.base.seq,
                    from.pos,
                    &recs,
                )?;
                *next_id = (*next_id).max(meta.id + 1);
                streams.insert(name, *meta);
            }
            Op::Remove { name, id } => {
                if streams.get(&name).is_some_and(|m| m.id == id) {
                    streams.remove(&name);
                }
                *next_id = (*next_id).max(id.saturating_add(1));
            }
        }
    }
    Ok(())
}
