//! Giving back the space of trimmed records (holes punched in data files)
//! and the gauges of what the data files hold in memory.

use super::files::Files;
use super::format;
use super::recent::RECENT_BUDGET;
use crate::storage::StorageError;
use crate::storage::handle::blocking_io;

impl Files {
    /// Gives back the disk space of the data file of `id` from its first
    /// record up to file offset `to` (a trim), with
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`: the file
    /// keeps its length (offsets and the length check of recovery are
    /// unchanged) and the range reads as zeros. Idempotent. A file system
    /// that cannot punch holes (`EOPNOTSUPP`) keeps the bytes: unreachable
    /// all the same, only not reclaimed. While bytes of the file are lent
    /// out of its mapping (a hole would turn them into zeros on their way
    /// to a socket), and for [`GRACE`](super::lends::GRACE) after bytes of
    /// it were handed out to be sent by reference, the punch is put off
    /// until [`Files::retry_punches`] finds it free.
    pub fn punch(&self, id: u64, to: u64) -> Result<(), StorageError> {
        // Whole pages only: a hole's partial pages are zeroed in place, and
        // the kernel may still hold pages of a mapping that were sent
        // without a copy ([`crate::zerocopy`]); a whole page punched leaves
        // the file and keeps its bytes for whoever holds it.
        let page = crate::zerocopy::page_size();
        let from = format::DATA_HEADER_LEN.next_multiple_of(page);
        let to = to - to % page;
        if to <= from {
            return Ok(());
        }
        // The kept last record holds bytes of the mapping (a lease): let
        // go of it, or no punch of the file would ever run.
        if let Some(h) = self.cached(id) {
            h.data.recent.clear();
        }
        let Some(_punching) = self.lends.punch(id) else {
            let mut deferred = self.deferred.lock();
            let at = deferred.entry(id).or_default();
            *at = (*at).max(to);
            return Ok(());
        };
        let h = self.get(id)?;
        blocking_io("punch a hole in a stream file");
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(to - from),
        ) else {
            return Ok(());
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&h.data.file);
        // SAFETY: `fd` is an open descriptor held by `h` for the whole call.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(());
        }
        Err(e.into())
    }

    /// The bytes appends buffered for the data files, and those the data
    /// files keep of their last large record.
    pub fn gauges(&self) -> Vec<crate::storage::Gauge> {
        use std::sync::atomic::Ordering;
        vec![
            crate::storage::Gauge {
                name: "ds_file_buffered_bytes",
                help: "Appended frames buffered for the data files (their WAL entries hold them durably).",
                value: self.buffered.load(Ordering::Relaxed) as u64,
            },
            crate::storage::Gauge {
                name: "ds_file_kept_record_bytes",
                help: "Bytes of the last large record the open data files keep for readers at the tail.",
                value: (RECENT_BUDGET - self.allowance.left()) as u64,
            },
        ]
    }

    /// Punches what [`Files::punch`] put off, where nothing is lent any
    /// more (what still is waits for the next call). An incarnation removed
    /// meanwhile has nothing left to reclaim.
    pub fn retry_punches(&self) {
        let deferred = std::mem::take(&mut *self.deferred.lock());
        for (id, to) in deferred {
            if let Err(e) = self.punch(id, to)
                && !matches!(&e, StorageError::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
            {
                tracing::warn!(stream_id = id, error = %e, "could not give back trimmed space");
            }
        }
    }
}
