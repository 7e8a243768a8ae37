//! Backup, restore and listing over any [`Storage`]: the `export`, `import`
//! and `list` commands.
//!
//! An archive is one file in the portable, versioned format documented in
//! `docs/archive-format.md`: a header, then for every stream a JSON header
//! frame followed by one frame per own record, then an end frame; every
//! frame carries a CRC-32C. Streams are written sources before forks, so an
//! import can restore them in archive order.
//!
//! Import reads the archive twice: a first pass checks every frame (so a
//! truncated or corrupt archive is refused before anything is written) and
//! decides, per stream, what the `--existing` policy does; the second pass
//! restores the streams one at a time, so memory holds at most one stream's
//! records.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};

mod archive;

use crate::storage::model::StreamMeta;
use crate::storage::{Millis, Storage, StorageError};
pub use archive::{
    ArchiveEnd, ArchivedExpiry, ArchivedFork, ArchivedOffset, ArchivedProducer,
    ArchivedProducerState, ArchivedStream, MAGIC, MAX_FRAME, VERSION,
};
use archive::{FrameReader, TAG_END, TAG_RECORD, TAG_STREAM, write_frame};

/// What can go wrong in a backup command.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
    #[error("archive I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is truncated, corrupt, or not an archive.
    #[error("invalid archive: {0}")]
    Archive(String),
    /// `--existing fail` and these streams already exist in the target.
    #[error("these streams already exist in the target (use --existing skip or replace): {}", .0.join(", "))]
    Exists(Vec<String>),
    /// `--existing replace` cannot remove these streams from the target.
    #[error("cannot replace {0}")]
    CannotReplace(String),
}

fn storage(context: impl Into<String>) -> impl FnOnce(StorageError) -> BackupError {
    let context = context.into();
    move |source| BackupError::Storage { context, source }
}

fn bad(msg: impl Into<String>) -> BackupError {
    BackupError::Archive(msg.into())
}

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub streams: u64,
    pub records: u64,
    pub bytes: u64,
}

/// Writes every stream of `store` to `out` as an archive, sources before
/// forks. Soft-deleted streams kept for forks are included; expired streams
/// nothing references are not (they no longer exist for clients).
pub fn export(
    store: &dyn Storage,
    out: &mut dyn Write,
    now: Millis,
) -> Result<ExportSummary, BackupError> {
    let listed = store
        .list_streams()
        .map_err(storage("cannot list streams"))?;
    let metas: HashMap<String, StreamMeta> = listed
        .into_iter()
        .filter(|(_, m)| !(m.is_expired(now) && m.refcount == 0))
        .collect();
    let mut order = Vec::with_capacity(metas.len());
    let mut done = HashSet::new();
    let mut names: Vec<&String> = metas.keys().collect();
    names.sort();
    for name in names {
        // Walk up the fork chain, then emit from the root down.
        let mut chain = Vec::new();
        let mut cur = Some(name.clone());
        while let Some(n) = cur.take() {
            if done.contains(&n) || chain.contains(&n) {
                break;
            }
            cur = metas
                .get(&n)
                .and_then(|m| m.fork.as_ref())
                .map(|f| f.source.clone())
                .filter(|s| metas.contains_key(s));
            chain.push(n);
        }
        for n in chain.into_iter().rev() {
            done.insert(n.clone());
            order.push(n);
        }
    }

    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    out.write_all(&header)?;
    let mut summary = ExportSummary::default();
    for name in order {
        let (meta, records) = match store.export_stream(&name) {
            Ok(x) => x,
            // Removed since the listing (it had no forks then, or it would
            // still be here): nothing to keep.
            Err(StorageError::NotFound) => continue,
            Err(e) => return Err(storage(format!("cannot export stream {name:?}"))(e)),
        };
        let head = ArchivedStream::from_meta(&name, &meta, &records);
        let json = serde_json::to_vec(&head).expect("archive header serializes");
        write_frame(out, TAG_STREAM, &json)?;
        for r in &records {
            write_frame(out, TAG_RECORD, r)?;
        }
        summary.streams += 1;
        summary.records += head.records;
        summary.bytes += head.bytes;
    }
    let end = serde_json::to_vec(&ArchiveEnd {
        streams: summary.streams,
    })
    .expect("end frame serializes");
    write_frame(out, TAG_END, &end)?;
    out.flush()?;
    Ok(summary)
}

/// What `import` does with a stream whose name already exists in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Existing {
    /// Keep the target's stream; do not import the archive's (nor its forks).
    Skip,
    /// Refuse the whole import before writing anything.
    #[default]
    Fail,
    /// Delete the target's stream and import the archive's.
    Replace,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Names restored, in order.
    pub restored: Vec<String>,
    /// Names not imported, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Target streams deleted to make room (`--existing replace`).
    pub replaced: Vec<String>,
}

/// Checks the whole archive and returns its stream headers, in order.
fn scan<R: Read>(input: R) -> Result<Vec<ArchivedStream>, BackupError> {
    let mut r = FrameReader { input, at: 0 };
    r.header()?;
    let mut streams: Vec<ArchivedStream> = Vec::new();
    let mut ids: HashMap<String, u64> = HashMap::new();
    while let Some(s) = r.stream(streams.len() as u64)? {
        r.records(&s)?;
        if let Some(f) = &s.fork
            && ids.get(&f.source) != Some(&f.source_id)
        {
            return Err(bad(format!(
                "fork {:?} comes before its source {:?} (or names another incarnation of it)",
                s.name, f.source
            )));
        }
        if ids.insert(s.name.clone(), s.id).is_some() {
            return Err(bad(format!("stream {:?} appears twice", s.name)));
        }
        streams.push(s);
    }
    Ok(streams)
}

/// Restores an archive into `store`, following `policy` for names that
/// already exist. A truncated or corrupt archive, or a `fail` conflict, is
/// refused before anything is written.
pub fn import<R: Read + Seek>(
    store: &dyn Storage,
    input: &mut R,
    policy: Existing,
    now: Millis,
) -> Result<ImportSummary, BackupError> {
    input.seek(SeekFrom::Start(0))?;
    let streams = scan(std::io::BufReader::new(&mut *input))?;
    // Expired, unreferenced streams no longer exist: free their names.
    store
        .sweep_expired(now)
        .map_err(storage("cannot sweep expired streams"))?;
    let target: HashMap<String, StreamMeta> = store
        .list_streams()
        .map_err(storage("cannot list the target's streams"))?
        .into_iter()
        .collect();

    // Decide, in archive (dependency) order.
    let mut summary = ImportSummary::default();
    let mut planned: Vec<bool> = Vec::with_capacity(streams.len());
    let mut kept: HashSet<&str> = HashSet::new();
    let mut conflicts = Vec::new();
    let mut replace = Vec::new();
    for s in &streams {
        let source_kept = s
            .fork
            .as_ref()
            .is_none_or(|f| kept.contains(f.source.as_str()));
        let exists = target.contains_key(&s.name);
        let go = if !source_kept {
            summary.skipped.push((
                s.name.clone(),
                "its fork source was not imported".to_string(),
            ));
            false
        } else if exists {
            match policy {
                Existing::Fail => {
                    conflicts.push(s.name.clone());
                    false
                }
                Existing::Skip => {
                    summary
                        .skipped
                        .push((s.name.clone(), "exists in the target".to_string()));
                    false
                }
                Existing::Replace => {
                    replace.push(s.name.clone());
                    true
                }
            }
        } else {
            true
        };
        if go {
            kept.insert(&s.name);
        }
        planned.push(go);
    }
    if !conflicts.is_empty() {
        return Err(BackupError::Exists(conflicts));
    }
    // A deleted stream is kept only for its forks: without any, drop it.
    for i in (0..streams.len()).rev() {
        let s = &streams[i];
        if planned[i] && s.soft_deleted {
            let referenced = streams
                .iter()
                .zip(&planned)
                .any(|(f, &p)| p && f.fork.as_ref().is_some_and(|l| l.source == s.name));
            if !referenced {
                planned[i] = false;
                replace.retain(|n| n != &s.name);
                summary.skipped.push((
                    s.name.clone(),
                    "deleted, and none of its forks was imported".to_string(),
                ));
            }
        }
    }
    remove_replaced(store, &target, &replace, now)?;
    summary.replaced = replace;

    // Restore, one stream in memory at a time.
    input.seek(SeekFrom::Start(0))?;
    let mut r = FrameReader {
        input: std::io::BufReader::new(&mut *input),
        at: 0,
    };
    r.header()?;
    for (i, go) in planned.iter().enumerate() {
        let s = r
            .stream(i as u64)?
            .ok_or_else(|| bad("the archive changed while it was being imported"))?;
        let records = r.records(&s)?;
        if *go {
            store
                .restore_stream(&s.name, s.to_meta(), records)
                .map_err(storage(format!("cannot restore stream {:?}", s.name)))?;
            summary.restored.push(s.name.clone());
        }
    }
    Ok(summary)
}

/// Deletes the target streams that `replace` names, forks before their
/// sources, after checking that each can really go away.
fn remove_replaced(
    store: &dyn Storage,
    target: &HashMap<String, StreamMeta>,
    replace: &[String],
    now: Millis,
) -> Result<(), BackupError> {
    let set: HashSet<&str> = replace.iter().map(String::as_str).collect();
    for name in replace {
        let m = &target[name];
        if m.is_hidden(now) {
            return Err(BackupError::CannotReplace(format!(
                "{name:?}: the target keeps it, deleted, for its forks"
            )));
        }
        if let Some((fork, _)) = target.iter().find(|(n, f)| {
            f.fork.as_ref().is_some_and(|l| &l.source == name) && !set.contains(n.as_str())
        }) {
            return Err(BackupError::CannotReplace(format!(
                "{name:?}: the target's stream {fork:?} forks from it"
            )));
        }
    }
    let mut left: Vec<&String> = replace.iter().collect();
    while !left.is_empty() {
        let live: HashMap<String, StreamMeta> = store
            .list_streams()
            .map_err(storage("cannot list the target's streams"))?
            .into_iter()
            .collect();
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            match live.get(left[i]) {
                None => {
                    left.swap_remove(i);
                }
                Some(m) if m.refcount == 0 => {
                    store
                        .delete(left[i], now)
                        .map_err(storage(format!("cannot delete {:?}", left[i])))?;
                    left.swap_remove(i);
                }
                Some(_) => i += 1,
            }
        }
        if left.len() == before {
            return Err(BackupError::CannotReplace(format!(
                "{:?}: other streams in the target still fork from it",
                left[0]
            )));
        }
    }
    Ok(())
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub content_type: String,
    /// Bytes of the stream's own records.
    pub own_bytes: u64,
    /// Bytes a reader sees from the start (own plus inherited).
    pub total_bytes: u64,
    pub records: u64,
    pub closed: bool,
    pub soft_deleted: bool,
    pub expired: bool,
    pub fork_of: Option<String>,
}

impl std::fmt::Display for ListEntry {
    /// `name<TAB>content type<TAB>own bytes<TAB>total bytes<TAB>flags`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut flags = Vec::new();
        if self.closed {
            flags.push("closed".to_string());
        }
        if self.soft_deleted {
            flags.push("soft-deleted".to_string());
        }
        if self.expired {
            flags.push("expired".to_string());
        }
        if let Some(s) = &self.fork_of {
            flags.push(format!("fork-of={s}"));
        }
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            flags.join(",")
        };
        write!(
            f,
            "{}\t{}\t{} own\t{} total\t{}",
            self.name, self.content_type, self.own_bytes, self.total_bytes, flags
        )
    }
}

/// Every stream of `store`, by name, with its sizes and state.
pub fn list(store: &dyn Storage, now: Millis) -> Result<Vec<ListEntry>, BackupError> {
    Ok(store
        .list_streams()
        .map_err(storage("cannot list streams"))?
        .into_iter()
        .map(|(name, m)| ListEntry {
            name,
            content_type: m.content_type.clone(),
            own_bytes: m.tail.pos - m.own_start().pos,
            total_bytes: m.tail.pos - m.earliest().pos,
            records: m.tail.seq - m.own_start().seq,
            closed: m.closed,
            soft_deleted: m.soft_deleted,
            expired: m.is_expired(now),
            fork_of: m.fork.map(|f| f.source),
        })
        .collect())
}
