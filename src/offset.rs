//! Stream offsets: the opaque position tokens clients see.
//!
//! An offset is `{seq:016x}_{pos:016x}`: `seq` is the index of the record that
//! contains (or starts at) the position and `pos` the byte position in the
//! stream's stored bytes. Both are fixed-width lowercase hex, so string order is
//! stream order, and `0000000000000000_0000000000000000` is the start of every
//! stream. A position on a record boundary is always written with the index
//! of the record that *starts* there (the canonical form); positions inside a
//! record (binary streams only: a chunk-limited read, or a fork taken at a byte
//! sub-offset) carry the index of the record they fall in.
//!
//! Forks share their source's offset space, so an offset is meaningful across
//! a whole fork chain.

use std::fmt;

/// A position in a stream.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Offset {
    /// Index of the record containing (or starting at) this position.
    pub seq: u64,
    /// Byte position in the stream's stored bytes.
    pub pos: u64,
}

/// Length of every formatted offset.
pub const OFFSET_LEN: usize = 33;

impl Offset {
    /// The start of every stream.
    pub const ZERO: Offset = Offset { seq: 0, pos: 0 };

    pub const fn new(seq: u64, pos: u64) -> Self {
        Offset { seq, pos }
    }

    /// Parses the exact `{16 hex}_{16 hex}` form; anything else is `None`.
    pub fn parse(s: &str) -> Option<Offset> {
        let b = s.as_bytes();
        if b.len() != OFFSET_LEN || b[16] != b'_' {
            return None;
        }
        let seq = parse_hex16(&b[..16])?;
        let pos = parse_hex16(&b[17..])?;
        Some(Offset { seq, pos })
    }

    /// Writes the offset into a fixed buffer (no allocation).
    pub fn encode(&self) -> [u8; OFFSET_LEN] {
        let mut out = [0u8; OFFSET_LEN];
        write_hex16(&mut out[..16], self.seq);
        out[16] = b'_';
        write_hex16(&mut out[17..], self.pos);
        out
    }
}

fn parse_hex16(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

fn write_hex16(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        // The buffer is ASCII hex and '_' by construction.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

/// Where a read starts, as the client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no offset: the beginning of the stream.
    Start,
    /// `now`: the current tail.
    Tail,
    /// A server-minted offset.
    At(Offset),
}

impl ReadFrom {
    /// Parses a client's `offset` query value.
    pub fn parse(s: &str) -> Option<ReadFrom> {
        match s {
            "-1" => Some(ReadFrom::Start),
            "now" => Some(ReadFrom::Tail),
            other => Offset::parse(other).map(ReadFrom::At),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_lexicographically() {
        let offsets = [
            Offset::new(0, 0),
            Offset::new(0, 3),
            Offset::new(1, 5),
            Offset::new(1, 0xff),
            Offset::new(2, 0x100),
            Offset::new(u64::MAX, u64::MAX),
        ];
        for w in offsets.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_string() < w[1].to_string());
        }
        for o in offsets {
            assert_eq!(Offset::parse(&o.to_string()), Some(o));
        }
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0",
            "-2",
            "0000000000000000-0000000000000000",
            "000000000000000G_0000000000000000",
            "0000000000000000_000000000000000A",
            "0000000000000000_00000000000000000",
            " 000000000000000_0000000000000000",
            "a,b",
            "../x",
        ] {
            assert_eq!(ReadFrom::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ReadFrom::parse("-1"), Some(ReadFrom::Start));
        assert_eq!(ReadFrom::parse("now"), Some(ReadFrom::Tail));
    }
}
