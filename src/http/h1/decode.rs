//! Request body framing: taking a `Content-Length` or chunked body off the
//! front of the connection's read buffer, piece by piece as it arrives.
//! Pure: the connection reads, this only looks at the buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::role::Framing;

/// Longest chunk-size or trailer line, and all trailers together.
pub(super) const MAX_CHUNK_LINE: usize = 4096;
pub(super) const MAX_TRAILERS: usize = 16 * 1024;

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// Needs more input.
    More,
    Done,
}

/// Decodes a request body from the connection's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decoder {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
}

/// Where a chunked body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
    /// A chunk-size line comes next.
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer bytes seen so far.
    Trailer(usize),
    Done,
}

impl Decoder {
    pub(super) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Decoder::Length(0),
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked::Size),
        }
    }

    pub(super) fn done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunked::Done))
    }

    /// Takes the next piece of body data off the front of `buf` (without
    /// copying).
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        match self {
            Decoder::Length(0) => Ok(Decoded::Done),
            Decoder::Length(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(Decoded::Data(buf.split_to(take as usize).freeze()))
            }
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunked::Size => {
                        let Some(end) = line_end(buf)? else {
                            return Ok(Decoded::More);
                        };
                        let size = chunk_size(&buf[..end])?;
                        buf.advance(end + 2);
                        *state = if size == 0 {
                            Chunked::Trailer(0)
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(n) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = n.min(buf.len() as u64);
                        *state = if take == n {
                            Chunked::DataEnd
                        } else {
                            Chunked::Data(n - take)
                        };
                        return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            if buf.first().is_some_and(|&b| b != b'\r') {
                                return Err("a chunk is not followed by CRLF");
                            }
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err("a chunk is not followed by CRLF");
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailer(seen) => {
                        let Some(end) = line_end(buf)? else {
                            return Ok(Decoded::More);
                        };
                        buf.advance(end + 2);
                        if end == 0 {
                            *state = Chunked::Done;
                        } else if seen + end > MAX_TRAILERS {
                            return Err("the trailers are too large");
                        } else {
                            *state = Chunked::Trailer(seen + end);
                        }
                    }
                    Chunked::Done => return Ok(Decoded::Done),
                }
            },
        }
    }
}

/// The length of the CRLF-terminated line at the front of `buf` (without
/// the CRLF), if it is complete.
fn line_end(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err("a chunk line ends in a bare LF"),
        Some(i) if window[i - 1] != b'\r' => Err("a chunk line ends in a bare LF"),
        Some(i) => Ok(Some(i - 1)),
        None if window.len() >= MAX_CHUNK_LINE + 2 => Err("a chunk line is too long"),
        None => Ok(None),
    }
}

/// The size in a chunk-size line (`hex [ws] [; extensions]`).
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("a chunk size is not a hex number of at most 16 digits");
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        size = size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0) as u8);
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if rest.is_empty() || rest[0] == b';' {
        Ok(size)
    } else {
        Err("a chunk size line has junk after the size")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; the body and what is left.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut dec = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok((out, buf.to_vec())),
                Decoded::More => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers_at_every_split() {
        let wire = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nTrailer: yes\r\nOther: 1\r\n\r\nGET /next";
        for step in 1..wire.len() {
            let (body, rest) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert!(b"GET /next".starts_with(&rest), "step {step}");
        }
        let (body, rest) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"0123456789"[..], &b""[..])
        );
    }

    #[test]
    fn chunked_errors() {
        // A bare LF, data not followed by CRLF; sizes not hex, with junk
        // after them, missing, over 16 digits.
        let framing = [&b"5\nhello\r\n0\r\n\r\n"[..], b"5\r\nhelloXX0\r\n\r\n"];
        let sizes = [
            &b"zz\r\n"[..],
            b"5x\r\nhello\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
        ];
        for wire in framing.into_iter().chain(sizes) {
            assert!(decode_all(wire, wire.len()).is_err(), "{wire:?}");
        }
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE + 8));
        assert_eq!(
            decode_all(&long, long.len()),
            Err("a chunk line is too long")
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 100 + 2) {
            trailers.extend(std::iter::repeat_n(b't', 100));
            trailers.extend(b"\r\n");
        }
        assert_eq!(
            decode_all(&trailers, 4096),
            Err("the trailers are too large")
        );
    }

    #[test]
    fn length_decoder_takes_exactly_its_bytes() {
        let mut dec = Decoder::new(Framing::Length(7));
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::More));
        buf.extend_from_slice(b"defgNEXT");
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"defg")))
        );
        assert!(dec.done());
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"NEXT");
    }
}
