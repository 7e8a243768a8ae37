//! The binary WAL entry (format 1, entry layout 2): the one entry an append
//! writes, a single [`Op::Append`], without JSON.
//!
//! An append's entry is the hot path of every durable write. Encoding its
//! header as JSON cost about a tenth of a file append's instructions (serde's
//! string escaping of the stream name and offsets, a `Vec` per header), so an
//! entry holding exactly one `Append` op is written in this layout; every
//! other entry (creates, forks, deletes, several ops) keeps the JSON layout,
//! which stays readable forever. `docs/file-format.md` is the contract.
//!
//! Layout (little-endian), after which the records follow exactly as in the
//! JSON layout (`[len u32][bytes]` each):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | [`MARKER`] (`0xFFFF_FFFF`: a JSON header length is at most 1 GiB) |
//! | 1 | kind: 1 = append |
//! | 1 | flags: bit 0 producer, bit 1 `Stream-Seq`, bit 2 close, bit 3 closed-by |
//! | 4 + n | stream name (`u32` length, UTF-8) |
//! | 8 | incarnation id |
//! | 4 | records in the entry |
//! | 16 | tail after the records (seq, pos) |
//! | 8 | last access (ms) |
//! | if producer: 4 + n, 8, 8 | producer id, epoch, last seq |
//! | if `Stream-Seq`: 4 + n | the new `Stream-Seq` |
//! | if closed-by: 4 + n, 8, 8 | closing producer's id, epoch, seq |
//!
//! A release that predates this layout refuses such an entry as corrupt (it
//! reads `0xFFFF_FFFF` as a header length past the entry's end) and so
//! refuses to start, rather than replaying part of the log.

use bytes::Bytes;

use super::format::{AppendOp, Op};
use crate::offset::Offset;
use crate::storage::model::ProducerState;
use crate::storage::{Millis, ProducerHeaders};

/// The first four bytes of a binary entry.
pub const MARKER: u32 = u32::MAX;
const KIND_APPEND: u8 = 1;
const PRODUCER: u8 = 1;
const STREAM_SEQ: u8 = 2;
const CLOSE: u8 = 4;
const CLOSED_BY: u8 = 8;

/// Whether `payload` is in this layout (else it is the JSON one).
pub fn is_binary(payload: &[u8]) -> bool {
    payload.get(..4) == Some(&MARKER.to_le_bytes()[..])
}

/// What one append's entry records, borrowed: the staged append encodes
/// it straight into the WAL's queue ([`encode_append_into`]) without
/// building an [`AppendOp`] (its `String`s and its box) or an entry `Vec`.
#[derive(Clone, Copy, Debug)]
pub struct AppendRef<'a> {
    pub name: &'a str,
    pub id: u64,
    pub records: u32,
    pub tail: Offset,
    pub last_access: Millis,
    pub producer: Option<(&'a str, ProducerState)>,
    pub stream_seq: Option<&'a str>,
    pub close: bool,
    pub closed_by: Option<&'a ProducerHeaders>,
}

impl AppendOp {
    /// The op, borrowed for encoding.
    pub fn borrowed(&self) -> AppendRef<'_> {
        AppendRef {
            name: &self.name,
            id: self.id,
            records: self.records,
            tail: self.tail,
            last_access: self.last_access,
            producer: self.producer.as_ref().map(|(p, s)| (p.as_str(), *s)),
            stream_seq: self.stream_seq.as_deref(),
            close: self.close,
            closed_by: self.closed_by.as_ref(),
        }
    }
}

/// Encodes one append's entry: its op and its records.
pub fn encode_append(a: &AppendOp, records: &[Bytes]) -> Vec<u8> {
    let a = a.borrowed();
    let mut out = Vec::with_capacity(encoded_len(&a, records));
    encode_append_into(&mut out, &a, records);
    out
}

/// The length of the entry [`encode_append_into`] writes.
pub fn encoded_len(a: &AppendRef<'_>, records: &[Bytes]) -> usize {
    let strings = 4
        + a.name.len()
        + a.producer.map_or(0, |(p, _)| 4 + p.len() + 16)
        + a.stream_seq.map_or(0, |s| 4 + s.len())
        + a.closed_by.map_or(0, |c| 4 + c.id.len() + 16);
    let body: usize = records.iter().map(|r| 4 + r.len()).sum();
    // Marker, kind, flags, id, record count, tail, last access.
    4 + 1 + 1 + 8 + 4 + 16 + 8 + strings + body
}

/// Appends one append's entry (see the module docs) to `out`.
pub fn encode_append_into(out: &mut Vec<u8>, a: &AppendRef<'_>, records: &[Bytes]) {
    out.extend_from_slice(&MARKER.to_le_bytes());
    out.push(KIND_APPEND);
    let flags = flag(a.producer.is_some(), PRODUCER)
        | flag(a.stream_seq.is_some(), STREAM_SEQ)
        | flag(a.close, CLOSE)
        | flag(a.closed_by.is_some(), CLOSED_BY);
    out.push(flags);
    put_str(out, a.name);
    out.extend_from_slice(&a.id.to_le_bytes());
    out.extend_from_slice(&a.records.to_le_bytes());
    out.extend_from_slice(&a.tail.seq.to_le_bytes());
    out.extend_from_slice(&a.tail.pos.to_le_bytes());
    out.extend_from_slice(&a.last_access.to_le_bytes());
    if let Some((id, state)) = a.producer {
        put_str(out, id);
        out.extend_from_slice(&state.epoch.to_le_bytes());
        out.extend_from_slice(&state.last_seq.to_le_bytes());
    }
    if let Some(seq) = a.stream_seq {
        put_str(out, seq);
    }
    if let Some(c) = a.closed_by {
        put_str(out, &c.id);
        out.extend_from_slice(&c.epoch.to_le_bytes());
        out.extend_from_slice(&c.seq.to_le_bytes());
    }
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
}

/// Decodes a binary entry (one whose [`is_binary`] is true).
pub fn decode(payload: &[u8]) -> Result<(Vec<Op>, Vec<Bytes>), String> {
    let mut r = Reader {
        buf: payload,
        at: 4,
    };
    if r.u8()? != KIND_APPEND {
        return Err("unknown binary entry kind".into());
    }
    let flags = r.u8()?;
    if flags & !(PRODUCER | STREAM_SEQ | CLOSE | CLOSED_BY) != 0 {
        return Err("unknown binary entry flags".into());
    }
    let name = r.string()?;
    let id = r.u64()?;
    let count = r.u32()?;
    let tail = Offset::new(r.u64()?, r.u64()?);
    let last_access = r.u64()?;
    let producer = if flags & PRODUCER != 0 {
        let p = r.string()?;
        let (epoch, last_seq) = (r.u64()?, r.u64()?);
        Some((p, ProducerState { epoch, last_seq }))
    } else {
        None
    };
    let stream_seq = (flags & STREAM_SEQ != 0).then(|| r.string()).transpose()?;
    let closed_by = if flags & CLOSED_BY != 0 {
        let id = r.string()?;
        let (epoch, seq) = (r.u64()?, r.u64()?);
        Some(ProducerHeaders { id, epoch, seq })
    } else {
        None
    };
    // Each record needs at least its 4-byte length: a garbled count cannot
    // make this allocate more than the payload could hold.
    let mut records = Vec::with_capacity((count as usize).min(payload.len() / 4));
    for _ in 0..count {
        let len = r.u32()? as usize;
        records.push(Bytes::copy_from_slice(r.take(len)?));
    }
    if r.at != payload.len() {
        return Err("trailing bytes after the last record".into());
    }
    let op = AppendOp {
        name,
        id,
        records: count,
        tail,
        last_access,
        producer,
        stream_seq,
        close: flags & CLOSE != 0,
        closed_by,
    };
    Ok((vec![Op::Append(Box::new(op))], records))
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("entry truncated")?;
        let b = self.buf.get(self.at..end).ok_or("entry truncated")?;
        self.at = end;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| "entry string is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::format::{decode_entry, encode_entry};
    use super::*;

    fn op() -> impl Strategy<Value = AppendOp> {
        (
            ".{0,40}",
            any::<u64>(),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of((".{0,20}", any::<u64>(), any::<u64>())),
            proptest::option::of(".{0,20}"),
            any::<bool>(),
            proptest::option::of((".{0,20}", any::<u64>(), any::<u64>())),
        )
            .prop_map(
                |(name, id, (seq, pos, at), producer, stream_seq, close, by)| AppendOp {
                    name,
                    id,
                    records: 0,
                    tail: Offset::new(seq, pos),
                    last_access: at,
                    producer: producer
                        .map(|(p, epoch, last_seq)| (p, ProducerState { epoch, last_seq })),
                    stream_seq,
                    close,
                    closed_by: by.map(|(id, epoch, seq)| ProducerHeaders { id, epoch, seq }),
                },
            )
    }

    proptest! {
        /// An append's entry is written in the binary layout and reads back
        /// as the same op and records; every strict prefix and any changed
        /// byte of the header is refused or reads back differently, never
        /// panics.
        #[test]
        fn appends_round_trip(mut a in op(), recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..5), flip in any::<prop::sample::Index>()) {
            a.records = recs.len() as u32;
            let recs: Vec<Bytes> = recs.into_iter().map(Bytes::from).collect();
            let len = encoded_len(&a.borrowed(), &recs);
            let ops = vec![Op::Append(Box::new(a))];
            let enc = encode_entry(&ops, &recs);
            prop_assert!(is_binary(&enc));
            // The staged append frames the entry in place by this length.
            prop_assert_eq!(enc.len(), len);
            prop_assert_eq!(decode_entry(&enc).unwrap(), (ops.clone(), recs.clone()));
            for cut in 0..enc.len() {
                prop_assert!(decode_entry(&enc[..cut]).is_err());
            }
            let mut bad = enc.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x41;
            if let Ok(back) = decode_entry(&bad) {
                prop_assert_ne!(back, (ops, recs));
            }
        }
    }

    #[test]
    fn a_garbled_record_count_does_not_allocate_it() {
        let a = AppendOp {
            name: "s".into(),
            id: 1,
            records: u32::MAX,
            tail: Offset::ZERO,
            last_access: 0,
            producer: None,
            stream_seq: None,
            close: false,
            closed_by: None,
        };
        assert!(decode(&encode_append(&a, &[])).is_err());
    }
}
