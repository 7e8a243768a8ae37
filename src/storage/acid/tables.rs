//! The redb schema of the acid backend, the metadata encoding and the
//! mapping of redb failures onto [`StorageError`].
//!
//! Tables:
//!
//! * `streams`: stream name → encoded [`StreamMeta`] (one format byte, then
//!   JSON). Holds tail, producer state, `Stream-Seq`, closure, fork link,
//!   refcount, soft-delete flag and the (coarsely persisted) last access.
//! * `data`: `(stream id, record start position)` → `(record seq, bytes)`.
//!   Keyed by the stream's small integer id, so "the record containing
//!   `pos`" is the last key `<= (id, pos)` and a stream's data is one
//!   contiguous key range.
//! * `meta`: store-wide counters: the format version and the next stream id.
//! * `control`: `(namespace, key)` → value, the control-plane key/value
//!   space (subscriptions, the webhook signing key). Added without a format
//!   version bump: it is created on open, so stores written before it open
//!   unchanged, and it is independent of the stream tables.

use redb::TableDefinition;

use crate::storage::{StorageError, StreamMeta};

pub(super) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
pub(super) const DATA: TableDefinition<(u64, u64), (u64, &[u8])> = TableDefinition::new("data");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const CONTROL: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("control");

/// Key in `meta` holding the store's format version.
pub(super) const KEY_FORMAT: &str = "format_version";
/// Key in `meta` holding the next stream id to hand out.
pub(super) const KEY_NEXT_ID: &str = "next_stream_id";
/// The only store format this build reads and writes.
pub(super) const FORMAT_VERSION: u64 = 1;

/// First byte of an encoded `StreamMeta`: JSON, version 1.
const META_JSON_V1: u8 = 1;

pub(super) fn encode_meta(meta: &StreamMeta) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(256);
    out.push(META_JSON_V1);
    serde_json::to_writer(&mut out, meta)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode stream metadata: {e}")))?;
    Ok(out)
}

pub(super) fn decode_meta(bytes: &[u8]) -> Result<StreamMeta, StorageError> {
    match bytes.split_first() {
        Some((&META_JSON_V1, json)) => serde_json::from_slice(json)
            .map_err(|e| StorageError::Corrupt(format!("cannot decode stream metadata: {e}"))),
        Some((v, _)) => Err(StorageError::Corrupt(format!(
            "unknown stream metadata encoding {v}"
        ))),
        None => Err(StorageError::Corrupt("empty stream metadata".into())),
    }
}

fn map_io(e: std::io::Error) -> StorageError {
    // ENOSPC (28) and EDQUOT (122 on Linux) both mean "the disk is full for us".
    if e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
    {
        StorageError::NoSpace
    } else {
        StorageError::Io(e)
    }
}

/// Maps any redb failure onto the storage contract's errors.
pub(super) fn map_err(e: impl Into<redb::Error>) -> StorageError {
    match e.into() {
        redb::Error::Io(io) => map_io(io),
        redb::Error::Corrupted(s) => StorageError::Corrupt(s),
        redb::Error::ValueTooLarge(n) => {
            StorageError::TooLarge(format!("a value of {n} bytes is too large to store"))
        }
        // A handle poisoned by an earlier failure; the writer reopens it.
        redb::Error::PreviousIo => {
            StorageError::Unavailable("the database is being reopened after a write failure".into())
        }
        redb::Error::DatabaseAlreadyOpen => {
            StorageError::Unavailable("the database is already open in another process".into())
        }
        other => StorageError::Io(std::io::Error::other(other.to_string())),
    }
}

/// A copy of an error, for answering every operation of a failed batch.
pub(super) fn clone_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::NoSpace => StorageError::NoSpace,
        StorageError::Io(io) => StorageError::Io(std::io::Error::new(io.kind(), io.to_string())),
        StorageError::Corrupt(s) => StorageError::Corrupt(s.clone()),
        StorageError::TooLarge(s) => StorageError::TooLarge(s.clone()),
        StorageError::Unavailable(s) => StorageError::Unavailable(s.clone()),
        other => StorageError::Io(std::io::Error::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offset::Offset;
    use crate::storage::{Expiry, ProducerState};

    #[test]
    fn meta_round_trips() {
        let mut m = StreamMeta::new(
            7,
            "application/json".into(),
            Expiry::Ttl(30),
            Offset::new(1, 2),
            99,
        );
        m.producers.insert(
            "p".into(),
            ProducerState {
                epoch: 2,
                last_seq: 5,
            },
        );
        m.last_stream_seq = Some("abc".into());
        let bytes = encode_meta(&m).unwrap();
        assert_eq!(decode_meta(&bytes).unwrap(), m);
        assert!(matches!(
            decode_meta(&[9, b'{']),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn no_space_is_recognised() {
        let e = redb::StorageError::Io(std::io::Error::from_raw_os_error(28));
        assert!(matches!(map_err(e), StorageError::NoSpace));
    }
}
