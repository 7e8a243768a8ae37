//! Response body framing: the segments that go on the wire around each
//! body frame (`content-length`, chunked or close-delimited). Pure: the
//! connection writes the segments.

use std::io;

use bytes::Bytes;

use super::role::Out;

/// Most segments [`Encoder::push`] adds for one frame.
pub(super) const SEGS_PER_FRAME: usize = 3;

/// Frames a response body as its head announced it.
pub(super) struct Encoder {
    out: Out,
    /// Bytes still to come of a sized body (`u64::MAX` otherwise).
    left: u64,
}

impl Encoder {
    pub(super) fn new(out: Out) -> Self {
        let left = match out {
            Out::Length(n) => n,
            Out::None | Out::Chunked | Out::Close => u64::MAX,
        };
        Encoder { out, left }
    }

    /// A sized body has had all its bytes: it ends here, whether or not
    /// the body says so.
    pub(super) fn is_complete(&self) -> bool {
        matches!(self.out, Out::Length(_)) && self.left == 0
    }

    /// Appends non-empty `data` to `segs`, framed (at most
    /// [`SEGS_PER_FRAME`] segments); a body longer than its size fails.
    pub(super) fn push(&mut self, data: Bytes, segs: &mut Vec<Bytes>) -> io::Result<()> {
        if let Out::Chunked = self.out {
            let mut size = [0u8; 18];
            segs.push(Bytes::copy_from_slice(chunk_size_line(
                data.len(),
                &mut size,
            )));
            segs.push(data);
            segs.push(Bytes::from_static(b"\r\n"));
        } else {
            if data.len() as u64 > self.left {
                return Err(io::Error::other("body longer than its size"));
            }
            self.left -= data.len() as u64;
            segs.push(data);
        }
        Ok(())
    }

    /// Appends what ends the body to `segs`; a body shorter than its size
    /// fails.
    pub(super) fn finish(&self, segs: &mut Vec<Bytes>) -> io::Result<()> {
        match self.out {
            Out::Chunked => segs.push(Bytes::from_static(b"0\r\n\r\n")),
            Out::Length(_) if self.left != 0 => {
                return Err(io::Error::other("body shorter than its size"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// `{size in hex}\r\n` for a chunk of `n` bytes.
fn chunk_size_line(n: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = n;
    loop {
        i -= 1;
        out[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut b), b"0\r\n");
        assert_eq!(chunk_size_line(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_size_line(0x10000, &mut b), b"10000\r\n");
        assert_eq!(chunk_size_line(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
    }

    fn framed(out: Out, frames: &[&'static str]) -> io::Result<Vec<u8>> {
        let mut enc = Encoder::new(out);
        let mut segs = Vec::new();
        for f in frames {
            enc.push(Bytes::from_static(f.as_bytes()), &mut segs)?;
        }
        enc.finish(&mut segs)?;
        Ok(segs.concat())
    }

    #[test]
    fn bodies_are_framed_as_announced() {
        assert_eq!(
            framed(Out::Chunked, &["ab", "cde"]).unwrap(),
            b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
        assert_eq!(framed(Out::Close, &["ab", "cd"]).unwrap(), b"abcd");
        assert_eq!(framed(Out::Length(4), &["ab", "cd"]).unwrap(), b"abcd");
        assert!(framed(Out::Length(3), &["ab", "cd"]).is_err(), "too long");
        assert!(framed(Out::Length(5), &["ab", "cd"]).is_err(), "too short");
        let mut enc = Encoder::new(Out::Length(2));
        assert!(!enc.is_complete());
        enc.push(Bytes::from_static(b"ab"), &mut Vec::new())
            .unwrap();
        assert!(enc.is_complete());
    }
}
