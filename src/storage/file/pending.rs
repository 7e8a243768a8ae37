//! A stream's appended frames that are not in its data file yet.
//!
//! An append used to `pwrite` its frames into the stream's data file, under
//! the stream's lock: one system call per append, ~8 % of a durable
//! append's server CPU (`perf`, 64 connections on one stream). The WAL
//! entry already holds the records durably; the data file only has to have
//! them before anything reads them from it, and before a checkpoint syncs
//! it and lets the WAL go. So small appends copy their frames into the
//! stream's `Pending` buffer, and one `pwrite` writes what gathered:
//!
//! * when the next append would not fit, or is not contiguous with it;
//! * at the checkpoint, before the data files are synced (then the buffer's
//!   memory is given back), and before an export reads the file.
//!
//! A read planned under the stream's lock copies the pieces that lie in the
//! buffer out of it and reads the rest from the file, so reads never wait
//! for the buffer to be written, and keep working on a full disk.
//!
//! A crash of the process or of the machine loses nothing: every
//! acknowledged record is in the WAL, recovery rewrites into the data files
//! every record the WAL holds past the last checkpoint, and a checkpoint
//! writes the buffers before it relies on the files (it syncs them, then
//! lets the WAL go).
//!
//! A write that fails leaves the buffer as it was, to be tried again; the
//! append or checkpoint that asked for it fails with the error (`507` for
//! a full disk) and nothing else changes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::format;

/// Most bytes a stream buffers: more and the buffer is written first.
pub const PENDING_MAX: usize = 64 * 1024;

/// Appends of at least this many framed bytes are written at once (a
/// large record would only be copied twice, and fill the buffer).
pub const DIRECT_MIN: usize = 16 * 1024;

/// Most bytes all buffers of a store hold together ([`Budget`]): past it
/// appends are written at once, as they were before buffers, so that
/// appends spread over many streams do not each keep up to [`PENDING_MAX`]
/// until the next checkpoint (the page cache held those bytes, not the
/// heap).
pub const BUFFERED_MAX: usize = 32 << 20;

/// Bytes in all buffers of one store.
pub type Budget = Arc<AtomicUsize>;

/// Frames for the data file from file offset `at`.
#[derive(Default)]
pub struct Pending {
    at: u64,
    buf: Vec<u8>,
    /// The store's count of buffered bytes, once this buffer held some.
    budget: Option<Budget>,
}

impl Pending {
    /// File offset of the first byte not in the file yet, if any.
    pub fn from(&self) -> Option<u64> {
        (!self.buf.is_empty()).then_some(self.at)
    }

    fn end(&self) -> u64 {
        self.at + self.buf.len() as u64
    }

    /// Whether `framed` bytes at file offset `offset` can be buffered
    /// without writing first: small, and within or right after the buffer
    /// (within: an append that was not acknowledged is written over by
    /// the next), with room in it and in the store's `budget`.
    pub fn fits(&self, offset: u64, framed: usize, budget: &Budget) -> bool {
        if framed >= DIRECT_MIN || budget.load(Ordering::Relaxed) + framed > BUFFERED_MAX {
            return false;
        }
        if self.buf.is_empty() {
            return true;
        }
        (self.at..=self.end()).contains(&offset)
            && (offset - self.at) as usize + framed <= PENDING_MAX
    }

    /// Buffers `records`, framed, at file offset `offset` (which
    /// [`Self::fits`]), dropping whatever was buffered from there on.
    pub fn push(&mut self, offset: u64, records: &[Bytes], budget: &Budget) {
        let budget = self.budget.get_or_insert_with(|| Arc::clone(budget));
        let before = self.buf.len();
        if self.buf.is_empty() {
            self.at = offset;
        } else {
            self.buf.truncate((offset - self.at) as usize);
        }
        for r in records {
            self.buf.extend_from_slice(&format::frame_header(r));
            self.buf.extend_from_slice(r);
        }
        let after = self.buf.len();
        if after >= before {
            budget.fetch_add(after - before, Ordering::Relaxed);
        } else {
            budget.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// A copy of `len` buffered bytes at file offset `at`, if the buffer
    /// holds them all.
    pub fn copy(&self, at: u64, len: u64) -> Option<Bytes> {
        let from = usize::try_from(at.checked_sub(self.at)?).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        self.buf.get(from..to).map(Bytes::copy_from_slice)
    }

    /// Writes the buffer to `file`; emptied only once written.
    pub fn write(&mut self, file: &File) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        file.write_all_at(&self.buf, self.at)?;
        self.give_back();
        self.buf.clear();
        if self.buf.capacity() > PENDING_MAX {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Gives back the memory of an empty buffer (a stream that goes quiet
    /// should not keep it).
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

impl Pending {
    /// Takes the buffer's bytes off the store's count.
    fn give_back(&self) {
        if let Some(b) = &self.budget {
            b.fetch_sub(self.buf.len(), Ordering::Relaxed);
        }
    }
}

impl Drop for Pending {
    /// A removed stream's buffer goes with it (its files do too).
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    fn framed(records: &[Bytes]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            format::put_frame(&mut out, r);
        }
        out
    }

    #[test]
    fn buffers_contiguous_frames_and_writes_them_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("d"))
            .unwrap();
        let budget = Budget::default();
        let mut p = Pending::default();
        assert_eq!(p.from(), None);
        let (a, b) = (rec(10, b'a'), rec(20, b'b'));
        p.push(100, std::slice::from_ref(&a), &budget);
        assert!(p.fits(118, 28, &budget));
        assert!(!p.fits(119, 28, &budget), "a gap is not buffered");
        assert!(
            !p.fits(99, 28, &budget),
            "before the buffer is not buffered"
        );
        p.push(118, std::slice::from_ref(&b), &budget);
        assert_eq!(p.from(), Some(100));
        assert_eq!(budget.load(Ordering::Relaxed), 46);
        assert_eq!(file.metadata().unwrap().len(), 0, "nothing written yet");
        p.write(&file).unwrap();
        assert_eq!(p.from(), None);
        assert_eq!(budget.load(Ordering::Relaxed), 0);
        let mut got = vec![0u8; 46];
        file.read_exact_at(&mut got, 100).unwrap();
        assert_eq!(got, framed(&[a, b]));
    }

    #[test]
    fn an_append_written_over_replaces_the_rest_of_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("d")).unwrap();
        let budget = Budget::default();
        let mut p = Pending::default();
        let (a, b, c) = (rec(5, b'a'), rec(7, b'b'), rec(3, b'c'));
        p.push(0, &[a.clone(), b], &budget);
        // `b` was not acknowledged: the next append goes where it was.
        assert!(p.fits(13, 11, &budget));
        p.push(13, std::slice::from_ref(&c), &budget);
        assert_eq!(budget.load(Ordering::Relaxed), 24);
        p.write(&file).unwrap();
        let bytes = std::fs::read(dir.path().join("d")).unwrap();
        assert_eq!(bytes, framed(&[a, c]));
    }

    #[test]
    fn large_or_overflowing_appends_do_not_fit() {
        let budget = Budget::default();
        let mut p = Pending::default();
        assert!(
            !p.fits(0, DIRECT_MIN, &budget),
            "a large append is written at once"
        );
        assert!(p.fits(0, DIRECT_MIN - 1, &budget));
        let small = rec(DIRECT_MIN - 100, b'x');
        let mut at = 0;
        while p.fits(at, small.len() + 8, &budget) {
            p.push(at, std::slice::from_ref(&small), &budget);
            at += small.len() as u64 + 8;
        }
        assert!(at as usize <= PENDING_MAX && at as usize + DIRECT_MIN > PENDING_MAX);
    }

    #[test]
    fn the_stores_budget_bounds_all_buffers_and_is_given_back() {
        let budget = Budget::default();
        let (mut a, mut b) = (Pending::default(), Pending::default());
        a.push(0, &[rec(100, b'a')], &budget);
        budget.fetch_add(BUFFERED_MAX - 200, Ordering::Relaxed);
        assert!(b.fits(0, 92, &budget), "within the budget");
        b.push(0, &[rec(84, b'b')], &budget);
        assert_eq!(budget.load(Ordering::Relaxed), BUFFERED_MAX);
        assert!(!b.fits(92, 9, &budget), "past the budget: written at once");
        assert!(!a.fits(108, 9, &budget));
        budget.fetch_sub(BUFFERED_MAX - 200, Ordering::Relaxed);
        drop(a);
        assert_eq!(
            budget.load(Ordering::Relaxed),
            92,
            "a dropped buffer gives back"
        );
        drop(b);
        assert_eq!(budget.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_write_keeps_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, b"").unwrap();
        let read_only = File::open(&path).unwrap();
        let budget = Budget::default();
        let mut p = Pending::default();
        p.push(0, &[rec(4, b'a')], &budget);
        assert!(p.write(&read_only).is_err());
        assert_eq!(p.from(), Some(0), "kept for the next try");
        assert_eq!(budget.load(Ordering::Relaxed), 12);
        let file = File::options().write(true).open(&path).unwrap();
        p.write(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), framed(&[rec(4, b'a')]));
    }
}
