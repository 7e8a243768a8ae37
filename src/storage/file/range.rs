//! Reading a byte range of a stream's data file: into a fresh buffer, by
//! mapping (large ranges), or only from the page cache (`RWF_NOWAIT`, for
//! reads on an async worker).

use std::fs::File;

use bytes::Bytes;

/// Reads at least this many bytes through a mapping instead of `pread`.
pub const MAP_MIN: usize = 256 * 1024;

/// Reads `len` bytes at `at`: large ranges are mapped (read-only, private,
/// populated up front) and handed out without a copy, so a catch-up read's
/// only copy is the socket write, as for the memory backend; small ones
/// are read into a buffer.
///
/// Mapping is safe here because bytes below a stream's durable tail never
/// change and its file never shrinks below them while the store is open
/// (files are only cut back during recovery, before any read, and a removed
/// incarnation's file is unlinked, which leaves existing mappings intact).
pub fn read_bytes(file: &File, at: u64, len: usize) -> std::io::Result<Bytes> {
    if len < MAP_MIN {
        let buf = read_at(file, at, len, false)?.expect("a waiting read returns bytes");
        return Ok(Bytes::from(buf));
    }
    Ok(Bytes::from_owner(Mapping::new(file, at, len)?))
}

/// A read-only private mapping of `[at, at + len)` of a file.
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    skip: usize,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; the
// pointer is only dereferenced through `as_ref` and unmapped once on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, at: u64, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let start = at - at % page;
        let skip = (at - start) as usize;
        let map_len = len + skip;
        let size = file.metadata()?.len();
        if at + len as u64 > size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let offset = libc::off_t::try_from(start)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh read-only private mapping of a range that lies
        // within the file (checked above); the kernel picks the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            base,
            map_len,
            skip,
            len,
        })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `base..base + map_len` is mapped readable for as long as
        // `self` lives, and `skip + len == map_len`.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, once.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

/// Reads exactly `len` bytes at `at` into a fresh buffer that is never
/// zeroed first: catch-up reads move megabytes, and zeroing each buffer
/// (plus the page faults of a fresh one) cost as much as the read itself.
///
/// With `nowait`, only from the page cache (`RWF_NOWAIT`): `Ok(None)` as
/// soon as a part is not there (`EAGAIN`), or when the file system cannot
/// tell (`EOPNOTSUPP`). Without, never `Ok(None)`.
pub fn read_at(file: &File, at: u64, len: usize, nowait: bool) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let offset = i64::try_from(at + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the destination is the vector's spare capacity from
        // `done` to `len`, which it owns and nothing else aliases.
        let dst = unsafe { buf.as_mut_ptr().add(done) };
        let n = if nowait {
            let iov = libc::iovec {
                iov_base: dst.cast(),
                iov_len: len - done,
            };
            // SAFETY: one iovec over the spare capacity described above.
            unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) }
        } else {
            // SAFETY: as above.
            unsafe { libc::pread(file.as_raw_fd(), dst.cast(), len - done, offset) }
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::EOPNOTSUPP) if nowait => return Ok(None),
                    _ => return Err(e),
                }
            }
            n => done += n as usize,
        }
    }
    // SAFETY: the reads above initialised all `len` bytes.
    unsafe { buf.set_len(len) };
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_may_not_wait_gets_cached_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = File::open(&path).unwrap();
        // Just written, so in the page cache (ext4, xfs, btrfs, tmpfs).
        let got = read_at(&f, 2, 5, true).unwrap();
        assert_eq!(got.as_deref(), Some(&b"23456"[..]));
        assert!(read_at(&f, 8, 5, true).is_err(), "past the end");
    }

    #[test]
    fn mapped_and_copied_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(MAP_MIN * 3)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        for (at, len) in [
            (0, 10),
            (4093, MAP_MIN),
            (12345, MAP_MIN * 2 - 12345),
            (1, 3 * MAP_MIN - 1),
        ] {
            let got = read_bytes(&f, at as u64, len).unwrap();
            assert_eq!(&got[..], &data[at..at + len], "at {at} len {len}");
        }
        assert!(read_bytes(&f, 1, 3 * MAP_MIN).is_err());
        assert!(read_bytes(&f, (3 * MAP_MIN - 5) as u64, 10).is_err());
    }
}
