//! The archive format (`docs/archive-format.md`): its constants, the JSON
//! bodies of its header and end frames, and reading and writing frames.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{BackupError, bad};
use crate::offset::Offset;
use crate::storage::model::{self, ForkLink, StreamMeta};
use crate::storage::{Expiry, ProducerHeaders, ProducerState};

/// First eight bytes of every archive.
pub const MAGIC: [u8; 8] = *b"DSTRMBAK";
/// The archive format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Largest frame payload accepted when reading (anything larger is a
/// garbled length, never allocated).
pub const MAX_FRAME: u32 = 1 << 30;

/// Frame tag: a stream header (JSON [`ArchivedStream`]).
pub(super) const TAG_STREAM: u8 = b'S';
/// Frame tag: one own record of the current stream.
pub(super) const TAG_RECORD: u8 = b'R';
/// Frame tag: the end of the archive (JSON [`ArchiveEnd`]).
pub(super) const TAG_END: u8 = b'E';

/// An offset as written in an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedOffset {
    pub seq: u64,
    pub pos: u64,
}

impl From<Offset> for ArchivedOffset {
    fn from(o: Offset) -> Self {
        ArchivedOffset {
            seq: o.seq,
            pos: o.pos,
        }
    }
}

impl From<ArchivedOffset> for Offset {
    fn from(o: ArchivedOffset) -> Self {
        Offset::new(o.seq, o.pos)
    }
}

/// A stream's expiry as written in an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArchivedExpiry {
    Never,
    /// Sliding TTL, renewed by reads and writes.
    Ttl {
        seconds: u64,
    },
    /// Absolute deadline.
    At {
        unix_ms: u64,
    },
}

/// A producer tuple (`Producer-Id`, epoch, seq) as written in an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedProducer {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// One idempotent producer's state as written in an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedProducerState {
    pub epoch: u64,
    pub last_seq: u64,
}

/// A fork link as written in an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFork {
    pub source: String,
    /// The source's `id` in this archive.
    pub source_id: u64,
    pub anchor: ArchivedOffset,
    pub sub_offset: u64,
}

/// The JSON header of one stream in an archive. Field by field the shape is
/// documented in `docs/archive-format.md`; it is independent of how the
/// backends store [`StreamMeta`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedStream {
    pub name: String,
    /// The stream's incarnation id in the exporting store (fork links refer
    /// to it); an import assigns new ids.
    pub id: u64,
    pub content_type: String,
    pub expiry: ArchivedExpiry,
    pub expiry_inherited: bool,
    pub last_access_ms: u64,
    pub closed: bool,
    pub closed_by: Option<ArchivedProducer>,
    pub base: ArchivedOffset,
    pub tail: ArchivedOffset,
    /// The first retained position when the stream was trimmed (the
    /// records follow from there, or from `base` when it is before it);
    /// absent when nothing was trimmed, as in archives written before trims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest: Option<ArchivedOffset>,
    pub fork: Option<ArchivedFork>,
    /// Live forks at export time (informational: an import recounts).
    pub refcount: u64,
    pub soft_deleted: bool,
    pub last_stream_seq: Option<String>,
    pub producers: BTreeMap<String, ArchivedProducerState>,
    /// Number of record frames that follow.
    pub records: u64,
    /// Total bytes of those records (`tail.pos` less the position the
    /// records start at).
    pub bytes: u64,
}

impl ArchivedStream {
    pub(super) fn from_meta(name: &str, m: &StreamMeta, records: &[Bytes]) -> Self {
        ArchivedStream {
            name: name.to_string(),
            id: m.id,
            content_type: m.content_type.clone(),
            expiry: match m.expiry {
                Expiry::Never => ArchivedExpiry::Never,
                Expiry::Ttl(seconds) => ArchivedExpiry::Ttl { seconds },
                Expiry::At(unix_ms) => ArchivedExpiry::At { unix_ms },
            },
            expiry_inherited: m.expiry_inherited,
            last_access_ms: m.last_access,
            closed: m.closed,
            closed_by: m.closed_by.as_ref().map(|p| ArchivedProducer {
                id: p.id.clone(),
                epoch: p.epoch,
                seq: p.seq,
            }),
            base: m.base.into(),
            tail: m.tail.into(),
            earliest: m.trimmed.map(Into::into),
            fork: m.fork.as_ref().map(|f| ArchivedFork {
                source: f.source.clone(),
                source_id: f.source_id,
                anchor: f.anchor.into(),
                sub_offset: f.sub_offset,
            }),
            refcount: m.refcount,
            soft_deleted: m.soft_deleted,
            last_stream_seq: m.last_stream_seq.clone(),
            producers: m
                .producers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        ArchivedProducerState {
                            epoch: v.epoch,
                            last_seq: v.last_seq,
                        },
                    )
                })
                .collect(),
            records: records.len() as u64,
            bytes: records.iter().map(|r| r.len() as u64).sum(),
        }
    }

    /// The metadata to restore (the id and refcount are the backend's to set).
    pub fn to_meta(&self) -> StreamMeta {
        StreamMeta {
            id: self.id,
            content_type: self.content_type.clone(),
            expiry: match self.expiry {
                ArchivedExpiry::Never => Expiry::Never,
                ArchivedExpiry::Ttl { seconds } => Expiry::Ttl(seconds),
                ArchivedExpiry::At { unix_ms } => Expiry::At(unix_ms),
            },
            expiry_inherited: self.expiry_inherited,
            last_access: self.last_access_ms,
            closed: self.closed,
            closed_by: self.closed_by.as_ref().map(|p| ProducerHeaders {
                id: p.id.clone(),
                epoch: p.epoch,
                seq: p.seq,
            }),
            base: self.base.into(),
            tail: self.tail.into(),
            trimmed: self.earliest.map(Into::into),
            fork: self.fork.as_ref().map(|f| ForkLink {
                source: f.source.clone(),
                source_id: f.source_id,
                anchor: f.anchor.into(),
                sub_offset: f.sub_offset,
            }),
            refcount: 0,
            soft_deleted: self.soft_deleted,
            last_stream_seq: self.last_stream_seq.clone(),
            producers: self
                .producers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        ProducerState {
                            epoch: v.epoch,
                            last_seq: v.last_seq,
                        },
                    )
                })
                .collect::<HashMap<_, _>>(),
        }
    }
}

/// The JSON body of the end frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct ArchiveEnd {
    /// Number of streams in the archive.
    pub streams: u64,
}

pub(super) fn write_frame(out: &mut dyn Write, tag: u8, body: &[u8]) -> Result<(), BackupError> {
    let len = u32::try_from(body.len() + 1)
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| bad(format!("a frame of {} bytes is too large", body.len())))?
        .to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&len), &[tag]), body);
    out.write_all(&len)?;
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(&[tag])?;
    out.write_all(body)?;
    Ok(())
}

/// Reads frames, tracking the byte position for error messages.
pub(super) struct FrameReader<R> {
    pub(super) input: R,
    pub(super) at: u64,
}

impl<R: Read> FrameReader<R> {
    pub(super) fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.at += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(bad(format!(
                "truncated at byte {} (in the middle of {what})",
                self.at
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn header(&mut self) -> Result<(), BackupError> {
        let mut h = [0u8; 16];
        self.exact(&mut h, "the archive header")?;
        if h[..8] != MAGIC {
            return Err(bad("not a durable-streams archive (bad magic number)"));
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "archive format version {version} is not supported (this build reads {VERSION})"
            )));
        }
        Ok(())
    }

    /// The next frame's tag and body.
    pub(super) fn frame(&mut self) -> Result<(u8, Vec<u8>), BackupError> {
        let start = self.at;
        let mut h = [0u8; 8];
        self.exact(&mut h, "a frame header")?;
        let len_bytes: [u8; 4] = h[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes);
        if len == 0 || len > MAX_FRAME {
            return Err(bad(format!(
                "corrupt frame at byte {start} (implausible length {len})"
            )));
        }
        let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        let mut payload = vec![0u8; len as usize];
        self.exact(&mut payload, "a frame")?;
        if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &payload) != crc {
            return Err(bad(format!(
                "corrupt frame at byte {start} (checksum mismatch)"
            )));
        }
        let tag = payload.remove(0);
        Ok((tag, payload))
    }

    /// The next stream header, or `None` at the end frame (checked against
    /// `count` streams read so far).
    pub(super) fn stream(&mut self, count: u64) -> Result<Option<ArchivedStream>, BackupError> {
        let at = self.at;
        let (tag, body) = self.frame()?;
        match tag {
            TAG_STREAM => {
                let s: ArchivedStream = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("stream header at byte {at}: {e}")))?;
                Ok(Some(s))
            }
            TAG_END => {
                let end: ArchiveEnd = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("end frame at byte {at}: {e}")))?;
                if end.streams != count {
                    return Err(bad(format!(
                        "the end frame counts {} streams but the archive holds {count}",
                        end.streams
                    )));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(bad(format!(
                        "unexpected bytes after the end frame at byte {}",
                        self.at
                    )));
                }
                Ok(None)
            }
            t => Err(bad(format!(
                "expected a stream header at byte {at}, found frame tag {t:#04x}"
            ))),
        }
    }

    /// The records of `s`, checked against its header.
    pub(super) fn records(&mut self, s: &ArchivedStream) -> Result<Vec<Bytes>, BackupError> {
        let mut records = Vec::with_capacity(s.records.min(1 << 20) as usize);
        for _ in 0..s.records {
            let at = self.at;
            let (tag, body) = self.frame()?;
            if tag != TAG_RECORD {
                return Err(bad(format!(
                    "stream {:?}: expected record {} of {} at byte {at}, found frame tag {tag:#04x}",
                    s.name,
                    records.len() + 1,
                    s.records
                )));
            }
            records.push(Bytes::from(body));
        }
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let meta = s.to_meta();
        if bytes != s.bytes || model::advance(meta.own_start(), &records) != meta.tail {
            return Err(bad(format!(
                "stream {:?}: its records do not lead from base (or its earliest offset) to tail",
                s.name
            )));
        }
        Ok(records)
    }
}
