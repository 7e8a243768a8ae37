//! Reading a byte range of a stream's data file: into a fresh buffer, out
//! of the file's mapping (large ranges), or only from the page cache
//! (`RWF_NOWAIT`, for reads on an async worker).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::lends::{Lease, Lends};
use super::recent::{Allowance, Recent};

/// Reads at least this many bytes through the mapping instead of `pread`.
pub const MAP_MIN: usize = 256 * 1024;

/// The least a data file's mapping reserves (of address space, not
/// memory): a file that grows within it is read without mapping again.
const WINDOW_MIN: u64 = 64 << 20;

/// One data file, opened for positional writes and reads, and mapped for
/// large reads once, not per read: a fresh `mmap` + `munmap` per read (its
/// page-table setup, and a TLB shootdown on every core at each unmap) cost
/// ~10 % of a catch-up read.
pub struct DataFile {
    pub file: File,
    /// The last large record written to it, in memory.
    pub recent: Recent,
    /// The mapping, once a large read asked for it; replaced by a larger one
    /// when a read passes its end (readers still holding bytes of the old
    /// one keep it alive).
    window: Mutex<Option<Arc<Window>>>,
    /// A length the file is known to have reached (it never shrinks while
    /// the store is open), so that most reads need no `fstat`.
    seen_len: AtomicU64,
    /// The store's count of lent bytes, and this file's incarnation id in
    /// it: a trim does not punch a hole under lent bytes.
    lends: Arc<Lends>,
    id: u64,
}

impl DataFile {
    pub fn new(file: File, allowance: Allowance, lends: Arc<Lends>, id: u64) -> Self {
        DataFile {
            file,
            recent: Recent::new(allowance),
            window: Mutex::new(None),
            seen_len: AtomicU64::new(0),
            lends,
            id,
        }
    }

    /// Cuts the file to `len` (recovery, before any read of the store):
    /// forgets the mapping and the length seen.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut w = self.window.lock();
        *w = None;
        self.seen_len.store(0, Ordering::Release);
        self.recent.clear();
        self.file.set_len(len)
    }

    /// Reads `len` bytes at `at`: large ranges out of the file's mapping
    /// (their pages faulted in here, before an async worker writes them to
    /// a socket), handed out without a copy, so a catch-up read's only copy
    /// is the socket write, as for the memory backend; small ones are read
    /// into a buffer.
    ///
    /// Mapping is safe here because bytes below a stream's durable tail
    /// never change and its file never shrinks below them while the store is
    /// open (files are only cut back during recovery, before any read, and
    /// a removed incarnation's file is unlinked, which leaves mappings
    /// intact); a range past the file's end is refused before it is
    /// touched. A trim's hole reads as zeros, so the bytes handed out hold
    /// a [`Lease`] that keeps trims from punching until they are dropped
    /// ([`super::lends`]); while a punch runs, reads copy.
    pub fn read_bytes(&self, at: u64, len: usize) -> std::io::Result<Bytes> {
        if len < MAP_MIN {
            return self.copy(at, len);
        }
        match self.map(at, len)? {
            Some(bytes) => Ok(bytes),
            None => self.copy(at, len),
        }
    }

    /// `len` bytes at `at` out of the file's mapping (faulted in), or
    /// `None` where they cannot be mapped now: while a punch of the file
    /// runs, or without address space for a mapping.
    pub fn map(&self, at: u64, len: usize) -> std::io::Result<Option<Bytes>> {
        let Some(lease) = self.lends.lease(self.id) else {
            return Ok(None);
        };
        let end = at + len as u64;
        if end > self.seen_len.load(Ordering::Acquire) {
            let size = self.file.metadata()?.len();
            self.seen_len.fetch_max(size, Ordering::AcqRel);
            if end > size {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let window = {
            let mut w = self.window.lock();
            match &*w {
                Some(win) if win.len >= end => Some(Arc::clone(win)),
                _ => {
                    let reserve = end.max(WINDOW_MIN).next_power_of_two();
                    let mapped = Window::new(&self.file, reserve)
                        .or_else(|_| Window::new(&self.file, end))
                        .ok()
                        .map(Arc::new);
                    if let Some(win) = &mapped {
                        *w = Some(Arc::clone(win));
                    }
                    mapped
                }
            }
        };
        let Some(window) = window else {
            // No address space for a mapping (`ulimit -v`,
            // `vm.max_map_count`).
            return Ok(None);
        };
        window.populate(at as usize, len)?;
        Ok(Some(Bytes::from_owner(Slice {
            window,
            at: at as usize,
            len,
            _lease: lease,
        })))
    }

    /// `len` bytes at file offset `at` out of the kept last record, if they
    /// lie within it. Bytes of the mapping may be sent by reference: the
    /// file is not punched for a while ([`Lends::by_reference`]).
    pub fn kept(&self, at: u64, len: u64) -> Option<Bytes> {
        let (bytes, mapped) = self.recent.get(at, len)?;
        if mapped {
            self.lends.by_reference(self.id);
        }
        Some(bytes)
    }

    /// `records` were written, framed, from file offset `offset`: the
    /// kept last record ([`Recent`]) learns of it, and keeps the newest
    /// as bytes of the mapping (the page cache's pages, which the native
    /// engine sends without a copy, [`crate::zerocopy`]) where it can be
    /// mapped, else as it came.
    pub fn wrote(&self, offset: u64, records: &[Bytes]) {
        self.recent
            .wrote_with(offset, records, |at, len| self.map(at, len).ok().flatten());
    }
}

impl DataFile {
    /// `len` bytes at `at`, read into a fresh buffer.
    fn copy(&self, at: u64, len: usize) -> std::io::Result<Bytes> {
        let buf = read_at(&self.file, at, len, false)?.expect("a waiting read returns bytes");
        Ok(Bytes::from(buf))
    }
}

impl std::ops::Deref for DataFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

/// A read-only shared mapping of a data file from its start, `len` bytes of
/// address space (it may run past the file's end: only ranges below it are
/// ever read).
struct Window {
    base: *mut libc::c_void,
    len: u64,
}

// SAFETY: the mapping is read-only and owned by this value alone; the
// pointer is only dereferenced through `Slice::as_ref` and unmapped once on
// drop.
unsafe impl Send for Window {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for Window {}

impl Window {
    fn new(file: &File, len: u64) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let map_len = usize::try_from(len)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh read-only shared mapping of the file from offset
        // 0; the kernel picks the address. Pages past the file's end are
        // never touched (see `DataFile::read_bytes`).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Window { base, len })
    }

    /// Faults `[at, at + len)` in (`MADV_POPULATE_READ`; by touching each
    /// page where the kernel predates it), reading from disk what the page
    /// cache does not hold: here, on a blocking thread, rather than while
    /// an async worker copies the bytes to a socket.
    fn populate(&self, at: usize, len: usize) -> std::io::Result<()> {
        const PAGE: usize = 4096;
        let start = at - at % PAGE;
        // SAFETY: `[start, at + len)` lies within the mapping and below the
        // file's end (checked by the caller).
        let r = unsafe {
            libc::madvise(
                self.base.cast::<u8>().add(start).cast(),
                at + len - start,
                libc::MADV_POPULATE_READ,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        let mut sum = 0u8;
        for off in (start..at + len).step_by(PAGE) {
            // SAFETY: as above; a volatile read so that it is not elided.
            sum ^= unsafe { std::ptr::read_volatile(self.base.cast::<u8>().add(off)) };
        }
        std::hint::black_box(sum);
        Ok(())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, once (no
        // `Slice` of it is left: each holds the `Arc`).
        unsafe {
            libc::munmap(self.base, self.len as usize);
        }
    }
}

/// `len` bytes at `at` of a window, as the owner of a `Bytes`.
struct Slice {
    window: Arc<Window>,
    at: usize,
    len: usize,
    _lease: Lease,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `[at, at + len)` lies within the window and below the
        // file's end (checked when the slice was made), and the window stays
        // mapped while `self` holds it.
        unsafe { std::slice::from_raw_parts(self.window.base.cast::<u8>().add(self.at), self.len) }
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
        let f = DataFile::new(
            File::open(&path).unwrap(),
            Allowance::new(0),
            Lends::new(),
            1,
        );
        for (at, len) in [
            (0, 10),
            (4093, MAP_MIN),
            (12345, MAP_MIN * 2 - 12345),
            (1, 3 * MAP_MIN - 1),
        ] {
            let got = f.read_bytes(at as u64, len).unwrap();
            assert_eq!(&got[..], &data[at..at + len], "at {at} len {len}");
        }
        assert!(f.read_bytes(1, 3 * MAP_MIN).is_err());
        assert!(f.read_bytes((3 * MAP_MIN - 5) as u64, 10).is_err());
    }

    #[test]
    fn the_mapping_follows_a_growing_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let block =
            |seed: usize| -> Vec<u8> { (0..MAP_MIN).map(|i| ((i + seed) % 253) as u8).collect() };
        std::fs::write(&path, block(0)).unwrap();
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let f = DataFile::new(
            File::open(&path).unwrap(),
            Allowance::new(0),
            Lends::new(),
            1,
        );
        let first = f.read_bytes(0, MAP_MIN).unwrap();
        assert_eq!(&first[..], &block(0)[..]);
        // Past the end: refused, not mapped.
        assert!(f.read_bytes(MAP_MIN as u64, MAP_MIN).is_err());
        // Grown within the mapping's reservation.
        w.write_all_at(&block(1), MAP_MIN as u64).unwrap();
        assert_eq!(
            &f.read_bytes(MAP_MIN as u64, MAP_MIN).unwrap()[..],
            &block(1)[..]
        );
        // Grown past it (sparse): a larger mapping; bytes handed out from
        // the first stay readable.
        let far = 3 * WINDOW_MIN / 2;
        w.write_all_at(&block(2), far).unwrap();
        assert_eq!(&f.read_bytes(far, MAP_MIN).unwrap()[..], &block(2)[..]);
        let hole = f.read_bytes(far - MAP_MIN as u64, MAP_MIN).unwrap();
        assert!(hole.iter().all(|&b| b == 0));
        assert_eq!(&first[..], &block(0)[..]);
        assert_eq!(
            &f.read_bytes(1, MAP_MIN).unwrap()[..],
            &[&block(0)[1..], &block(1)[..1]].concat()[..]
        );
    }
}
