//! The on-disk encodings of the file backend, as pure functions (no I/O).
//!
//! `docs/file-format.md` is the contract these functions implement; keep the
//! two in step. Every file starts with an 8-byte magic number and a `u32`
//! format version so that a later version can recognise (and keep reading)
//! files written by this one. Every variable-length item is a *frame*:
//! `[len u32 LE][crc u32 LE][payload]`, where `crc` is the CRC-32C of the four
//! `len` bytes followed by the payload, so a torn or garbled length is caught
//! as well as a torn payload. All integers are little-endian.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::offset::Offset;
use crate::storage::model::{self, ProducerState};
use crate::storage::{Millis, ProducerHeaders, StreamMeta};

/// The format version written by this code.
pub const VERSION: u32 = 1;

/// Magic number of a write-ahead-log segment (`wal/NNNNNNNNNNNNNNNNNNNN.log`).
pub const WAL_MAGIC: [u8; 8] = *b"DSTRMWAL";
/// Magic number of a stream data file (`streams/IIIIIIIIIIIIIIII.dat`).
pub const DATA_MAGIC: [u8; 8] = *b"DSTRMDAT";
/// Magic number of a stream index file (`streams/IIIIIIIIIIIIIIII.idx`).
pub const INDEX_MAGIC: [u8; 8] = *b"DSTRMIDX";
/// Magic number of the checkpoint file (`checkpoint`).
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"DSTRMCKP";

/// Bytes of a frame header (`len` + `crc`).
pub const FRAME_HEADER: u64 = 8;
/// Largest frame payload accepted when reading: anything larger is treated
/// as a garbled length (a torn tail), never allocated.
pub const MAX_FRAME: u32 = 1 << 30;

/// WAL segment header: magic, version, flags (0), segment number.
pub const WAL_HEADER_LEN: u64 = 24;
/// Data file header: magic, version, flags (0), stream id, base seq, base pos.
pub const DATA_HEADER_LEN: u64 = 40;
/// Index file header: magic, version, flags (0), stream id.
pub const INDEX_HEADER_LEN: u64 = 24;
/// Checkpoint file header: magic, version, flags (0); one frame follows.
pub const CHECKPOINT_HEADER_LEN: u64 = 16;

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame claims (a torn write at the tail).
    Short,
    /// The length is implausible or the checksum does not match.
    Corrupt,
}

fn crc_of(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Appends one frame holding `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame_with(out, payload.len(), |o| o.extend_from_slice(payload));
}

/// Appends one frame whose `len`-byte payload `write` appends to `out`
/// (encoded in place: no payload buffer of its own, no copy).
///
/// # Panics
/// When `write` appends other than `len` bytes (a bug); the partial frame
/// is taken off `out` first, so nothing torn is ever written.
pub fn put_frame_with(out: &mut Vec<u8>, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
    let len_bytes = u32::try_from(len)
        .expect("frame payload under 4 GiB")
        .to_le_bytes();
    let at = out.len();
    out.reserve(FRAME_HEADER as usize + len);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&[0; 4]);
    write(out);
    let start = at + FRAME_HEADER as usize;
    let wrote = out.len() - start;
    if wrote != len {
        out.truncate(at);
        panic!("a frame payload of {wrote} bytes announced as {len}");
    }
    let crc = crc_of(len_bytes, &out[start..]);
    out[at + 4..start].copy_from_slice(&crc.to_le_bytes());
}

/// The frame header for `payload` (for writers that send the payload separately).
pub fn frame_header(payload: &[u8]) -> [u8; 8] {
    let len = u32::try_from(payload.len())
        .expect("frame payload under 4 GiB")
        .to_le_bytes();
    let crc = crc_of(len, payload).to_le_bytes();
    [
        len[0], len[1], len[2], len[3], crc[0], crc[1], crc[2], crc[3],
    ]
}

/// True when `buf` is zeros to its end, where a frame would start: what a
/// WAL segment holds past its log ([`wal`](super::wal) writes zeros ahead).
/// No frame starts with eight zero bytes (an empty payload's CRC is not 0),
/// so zeros followed by anything else are a torn or corrupt frame.
pub fn zero_tail(buf: &[u8]) -> bool {
    !buf.is_empty() && buf.iter().all(|&b| b == 0)
}

/// Decodes the frame at the start of `buf`: its payload and total length.
pub fn get_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < FRAME_HEADER as usize {
        return Err(FrameError::Short);
    }
    let len_bytes = [buf[0], buf[1], buf[2], buf[3]];
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_FRAME {
        return Err(FrameError::Corrupt);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let end = FRAME_HEADER as usize + len as usize;
    if buf.len() < end {
        return Err(FrameError::Short);
    }
    let payload = &buf[FRAME_HEADER as usize..end];
    if crc_of(len_bytes, payload) != crc {
        return Err(FrameError::Corrupt);
    }
    Ok((payload, end))
}

/// A file header: magic, version, flags, then `extra` u64 words.
pub fn header(magic: [u8; 8], extra: &[u64]) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 8 * extra.len());
    h.extend_from_slice(&magic);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    for w in extra {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h
}

/// Checks a file header and returns its `n` extra words.
pub fn check_header(buf: &[u8], magic: [u8; 8], n: usize) -> Result<Vec<u64>, String> {
    if buf.len() < 16 + 8 * n {
        return Err("file shorter than its header".into());
    }
    if buf[..8] != magic {
        return Err(format!(
            "bad magic number (expected {:?})",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version != VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads {VERSION})"
        ));
    }
    Ok((0..n)
        .map(|i| {
            let at = 16 + 8 * i;
            u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
        })
        .collect())
}

/// One change inside a WAL entry. An entry's ops apply together or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The stream named `name` now has metadata `meta`. When `meta.id`
    /// differs from the current incarnation (or there is none), this creates
    /// a new incarnation with an empty data file at `meta.base`. The entry's
    /// next `records` records are appended to the incarnation's data first;
    /// they end exactly at `meta.tail`.
    Put {
        name: String,
        meta: Box<StreamMeta>,
        records: u32,
    },
    /// The incarnation `id` of `name` no longer exists.
    Remove { name: String, id: u64 },
    /// An append to the existing incarnation `id` of `name`: the entry's
    /// next `records` records are appended, ending exactly at `tail`, and
    /// only what the append changed is carried (the previous state is
    /// whatever the checkpoint and earlier entries left). A `Put` carried
    /// the whole metadata, every producer's state included: with 64
    /// producers on a stream each append cloned and encoded all 64.
    Append(Box<AppendOp>),
}

/// The changes of one append ([`Op::Append`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOp {
    pub name: String,
    pub id: u64,
    pub records: u32,
    /// The tail after the records.
    pub tail: Offset,
    pub last_access: Millis,
    /// The producer whose state this append set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<(String, ProducerState)>,
    /// The new `Stream-Seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<String>,
    /// The append closed the stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close: bool,
    /// The headers of the producer whose append closed the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<ProducerHeaders>,
}

impl AppendOp {
    /// Applies the change to `meta` (the stream's state before the append).
    pub fn apply_to(&self, meta: &mut StreamMeta) {
        meta.tail = self.tail;
        meta.last_access = self.last_access;
        if let Some((id, state)) = &self.producer {
            model::set_producer(&mut meta.producers, id, *state);
        }
        if let Some(seq) = &self.stream_seq {
            meta.last_stream_seq = Some(seq.clone());
        }
        if self.close {
            meta.closed = true;
            meta.closed_by = self.closed_by.clone();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct EntryHeader {
    ops: Vec<Op>,
}

/// Encodes a WAL entry payload: `[header_len u32][header JSON][records]`,
/// each record `[len u32][bytes]`, in the order of the `Put` ops.
/// An entry of exactly one [`Op::Append`] takes the binary layout of
/// [`super::entry_bin`] instead (the hot path of every append).
pub fn encode_entry(ops: &[Op], records: &[Bytes]) -> Vec<u8> {
    if let [Op::Append(a)] = ops {
        return super::entry_bin::encode_append(a, records);
    }
    #[derive(Serialize)]
    struct Ref<'a> {
        ops: &'a [Op],
    }
    let head = serde_json::to_vec(&Ref { ops }).expect("ops serialize");
    let body: usize = records.iter().map(|r| r.len() + 4).sum();
    let mut out = Vec::with_capacity(4 + head.len() + body);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Decodes a WAL entry payload, in either layout, into its ops and records.
pub fn decode_entry(payload: &[u8]) -> Result<(Vec<Op>, Vec<Bytes>), String> {
    if super::entry_bin::is_binary(payload) {
        return super::entry_bin::decode(payload);
    }
    let take = |at: usize| -> Result<u32, String> {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "entry truncated".to_string())
    };
    let hlen = take(0)? as usize;
    let head = payload.get(4..4 + hlen).ok_or("entry header truncated")?;
    let header: EntryHeader =
        serde_json::from_slice(head).map_err(|e| format!("entry header: {e}"))?;
    let want: usize = header
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { records, .. } => *records as usize,
            Op::Append(a) => a.records as usize,
            Op::Remove { .. } => 0,
        })
        .sum();
    let mut records = Vec::with_capacity(want);
    let mut at = 4 + hlen;
    for _ in 0..want {
        let len = take(at)? as usize;
        let rec = payload
            .get(at + 4..at + 4 + len)
            .ok_or("record truncated")?;
        records.push(Bytes::copy_from_slice(rec));
        at += 4 + len;
    }
    if at != payload.len() {
        return Err("trailing bytes after the last record".into());
    }
    Ok((header.ops, records))
}

/// What a checkpoint records.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// First WAL segment not covered: recovery replays it and every later one.
    pub wal_segment: u64,
    /// Next incarnation id to hand out.
    pub next_id: u64,
    /// Every stream (including soft-deleted and expired ones still present).
    pub streams: Vec<(String, StreamMeta)>,
}

/// The whole checkpoint file: header, then one frame of JSON.
pub fn encode_checkpoint(c: &Checkpoint) -> Vec<u8> {
    let json = serde_json::to_vec(c).expect("checkpoint serializes");
    let mut out = header(CHECKPOINT_MAGIC, &[]);
    put_frame(&mut out, &json);
    out
}

pub fn decode_checkpoint(buf: &[u8]) -> Result<Checkpoint, String> {
    check_header(buf, CHECKPOINT_MAGIC, 0)?;
    let (payload, _) = get_frame(&buf[CHECKPOINT_HEADER_LEN as usize..])
        .map_err(|e| format!("checkpoint frame: {e:?}"))?;
    serde_json::from_slice(payload).map_err(|e| format!("checkpoint JSON: {e}"))
}

/// Where own record `i` (starting at stream position `start`) begins in a
/// data file whose own records start at position `base_pos`.
pub fn data_offset(i: u64, start: u64, base_pos: u64) -> u64 {
    DATA_HEADER_LEN + FRAME_HEADER * i + (start - base_pos)
}

/// Length of a data file holding `count` own records that span `bytes`.
pub fn data_len(count: u64, bytes: u64) -> u64 {
    DATA_HEADER_LEN + FRAME_HEADER * count + bytes
}

/// Length of an index file holding `count` entries.
pub fn index_len(count: u64) -> u64 {
    INDEX_HEADER_LEN + 8 * count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offset::Offset;
    use crate::storage::Expiry;

    #[test]
    fn frame_round_trip_and_torn_detection() {
        let mut buf = Vec::new();
        put_frame(&mut buf, b"hello");
        put_frame(&mut buf, b"");
        let (p, n) = get_frame(&buf).unwrap();
        assert_eq!((p, n), (&b"hello"[..], 13));
        let (p, m) = get_frame(&buf[n..]).unwrap();
        assert_eq!((p, m), (&b""[..], 8));
        // Every strict prefix of a frame is torn, never a (wrong) frame.
        for cut in 0..13 {
            assert_eq!(get_frame(&buf[..cut]), Err(FrameError::Short), "cut {cut}");
        }
        // Any flipped bit is caught.
        for byte in 0..13 {
            let mut bad = buf[..13].to_vec();
            bad[byte] ^= 0x10;
            assert!(get_frame(&bad).is_err(), "byte {byte}");
        }
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(get_frame(&huge), Err(FrameError::Corrupt));
        assert_eq!(frame_header(b"hello")[..], buf[..8]);
    }

    /// A frame encoded in place is the frame `put_frame` writes; a payload
    /// of another length than announced panics and leaves nothing behind.
    #[test]
    fn frames_written_in_place() {
        let mut direct = b"before".to_vec();
        put_frame(&mut direct, b"payload");
        let mut in_place = b"before".to_vec();
        put_frame_with(&mut in_place, 7, |o| o.extend_from_slice(b"payload"));
        assert_eq!(in_place, direct);
        for wrong in [b"short".as_slice(), b"far too long"] {
            let mut out = b"before".to_vec();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                put_frame_with(&mut out, 7, |o| o.extend_from_slice(wrong))
            }));
            assert!(r.is_err(), "{wrong:?}");
            assert_eq!(out, b"before");
        }
    }

    #[test]
    fn entries_round_trip() {
        let meta = StreamMeta::new(7, "text/plain".into(), Expiry::Ttl(5), Offset::new(1, 2), 9);
        let ops = vec![
            Op::Put {
                name: "a/b".into(),
                meta: Box::new(meta),
                records: 2,
            },
            Op::Remove {
                name: "x".into(),
                id: 3,
            },
        ];
        let recs = vec![Bytes::from_static(b"one"), Bytes::from_static(b"")];
        let enc = encode_entry(&ops, &recs);
        assert_eq!(decode_entry(&enc).unwrap(), (ops.clone(), recs));
        assert!(decode_entry(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn headers_and_checkpoints() {
        let h = header(DATA_MAGIC, &[1, 2, 3]);
        assert_eq!(h.len() as u64, DATA_HEADER_LEN);
        assert_eq!(check_header(&h, DATA_MAGIC, 3).unwrap(), vec![1, 2, 3]);
        assert!(check_header(&h, WAL_MAGIC, 3).is_err());
        let c = Checkpoint {
            wal_segment: 4,
            next_id: 9,
            streams: vec![(
                "s".into(),
                StreamMeta::new(1, "a/b".into(), Expiry::Never, Offset::ZERO, 0),
            )],
        };
        let enc = encode_checkpoint(&c);
        let back = decode_checkpoint(&enc).unwrap();
        assert_eq!(
            (back.wal_segment, back.next_id, back.streams),
            (4, 9, c.streams)
        );
        assert!(decode_checkpoint(&enc[..enc.len() - 2]).is_err());
    }
}
