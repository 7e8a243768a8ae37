//! Recovery on open: the last checkpoint, then the WAL after it.
//!
//! 1. Load `checkpoint` (absent on a fresh directory): every stream's
//!    metadata as of the start of WAL segment `wal_segment`.
//! 2. Replay every whole, checksummed WAL entry of segments `wal_segment..`
//!    in order, re-appending their records to the data files. The first
//!    torn or corrupt frame ends the log: it and everything after it were
//!    never acknowledged (an acknowledged entry was synced, and entries are
//!    synced in order). Zeros to the end of a segment are not a frame
//!    but the room the committer writes ahead of the log: that segment's
//!    log ends cleanly before them. Before the first replayed entry touches a stream
//!    listed in the checkpoint, its data and index files are checked and cut
//!    to the length its checkpointed metadata implies (the checkpoint synced
//!    them that far; anything after was written ahead of the WAL and is
//!    rewritten by the replay).
//!
//! Streams no replayed entry touches are not opened at all: the checkpoint
//! synced their files at least to the lengths it records, and every read
//! and write addresses them by offsets derived from that metadata, so bytes
//! a writer put past those lengths ahead of a WAL entry that never committed
//! are never read and are overwritten by the next append. Start-up cost is
//! the checkpoint plus the WAL tail, not the number or size of the streams.
//!
//! The caller then writes a fresh checkpoint when anything was replayed or
//! the log ended in a torn entry, which makes the replayed state durable and
//! lets the old segments be deleted.

use std::collections::{HashMap, HashSet};
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
    /// WAL entries replayed after the checkpoint.
    pub replayed: u64,
    /// The log ended at the end of its last segment (no torn or corrupt
    /// entry, no unreadable segment header was cut off).
    pub clean_end: bool,
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
    let mut streams: HashMap<String, StreamMeta> = HashMap::with_capacity(checkpoint.streams.len());
    let mut next_id = checkpoint.next_id.max(1);
    for (name, meta) in checkpoint.streams {
        check_meta(&name, &meta)?;
        next_id = next_id.max(meta.id + 1);
        streams.insert(name, meta);
    }
    // Incarnations whose files replay has checked (or created).
    let mut checked: HashSet<u64> = HashSet::new();
    let mut clean_end = true;
    let all = segments(wal_dir)?;
    let last_segment = all.last().copied().unwrap_or(0).max(checkpoint.wal_segment);
    let mut replayed = 0u64;
    'log: for &n in all.iter().filter(|&&n| n >= checkpoint.wal_segment) {
        let path = segment_path(wal_dir, n);
        let buf = std::fs::read(&path)?;
        if let Err(e) = format::check_header(&buf, WAL_MAGIC, 1) {
            tracing::warn!(segment = %path.display(), error = %e, "WAL segment header unreadable; log ends here");
            clean_end = false;
            break;
        }
        let mut at = WAL_HEADER_LEN as usize;
        while at < buf.len() {
            if format::zero_tail(&buf[at..]) {
                // The zeros the committer writes past the log's end: this
                // segment's log ends here, cleanly.
                break;
            }
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
                    clean_end = false;
                    break 'log;
                }
            };
            let (ops, records) = format::decode_entry(payload)
                .map_err(|e| StorageError::Corrupt(format!("{} byte {at}: {e}", path.display())))?;
            apply(
                &mut streams,
                &mut checked,
                &mut next_id,
                files,
                ops,
                records,
            )?;
            replayed += 1;
            at += len;
        }
    }
    tracing::info!(
        streams = streams.len(),
        replayed,
        clean_end,
        "recovered file storage"
    );
    Ok(Recovered {
        streams,
        next_id,
        last_segment,
        replayed,
        clean_end,
    })
}

/// Applies one WAL entry to the recovered state and the stream files.
fn apply(
    streams: &mut HashMap<String, StreamMeta>,
    checked: &mut HashSet<u64>,
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
                    Some(cur) if cur.id == meta.id && cur.base == meta.base => {
                        if checked.insert(cur.id) {
                            // First touch of a checkpointed stream: check its
                            // files and cut what ran ahead of the log.
                            let (count, bytes) = own(cur);
                            files.truncate(cur.id, cur.base, count, bytes)?;
                        }
                        cur.tail
                    }
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
                        checked.insert(meta.id);
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
            Op::Append(a) => {
                let recs: Vec<Bytes> = records.by_ref().take(a.records as usize).collect();
                let Some(cur) = streams.get_mut(&a.name).filter(|m| m.id == a.id) else {
                    return Err(StorageError::Corrupt(format!(
                        "WAL appends to stream {:?} as {}, which does not exist",
                        a.name, a.id
                    )));
                };
                if checked.insert(cur.id) {
                    let (count, bytes) = own(cur);
                    files.truncate(cur.id, cur.base, count, bytes)?;
                }
                let from = cur.tail;
                if model::advance(from, &recs) != a.tail {
                    return Err(StorageError::Corrupt(format!(
                        "WAL records of {:?} do not reach its tail",
                        a.name
                    )));
                }
                files.append(cur.id, cur.base, from.seq - cur.base.seq, from.pos, &recs)?;
                a.apply_to(cur);
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
