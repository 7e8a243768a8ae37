//! Which data files have bytes lent out of their mapping, so that a trim
//! never punches a hole under bytes still on their way to a socket.
//!
//! A large read hands out a `Bytes` over the data file's shared mapping
//! ([`DataFile::read_bytes`](super::range::DataFile::read_bytes)); its
//! records were checked when it was read, and an async worker writes them
//! to the socket later. A trim gives the space of the trimmed records back
//! with a hole (`FALLOC_FL_PUNCH_HOLE`), and a hole reads as zeros through
//! every mapping of the file: a reader that fell behind the trim while its
//! answer was being written would have been sent zeros in place of
//! records that had passed their checksum. So a punch waits until no bytes
//! of that file are lent (it is retried later, see
//! [`Files::retry_punches`](super::files::Files::retry_punches)), and while
//! one runs, reads of that file copy (a copy of a hole fails its checksum:
//! the reader is told it fell behind the trim).
//!
//! Bytes that may have been sent by reference (the kept last record,
//! [`crate::zerocopy`]) are still the kernel's after the write that sent
//! them returned: until the receiver has them, and over a network until
//! they are acknowledged. A hole punched under them would zero them where
//! a page is only partly punched (large folios are zeroed in place), so a
//! file whose bytes were handed out that way is not punched for
//! [`GRACE`] after the last of them ([`Lends::by_reference`]).
//!
//! Counted per incarnation id, not per open handle: a handle evicted from
//! the cache and opened again maps the same pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long after bytes of a file were last handed out to be sent by
/// reference no hole is punched in it (a trim's space comes back later).
pub const GRACE: Duration = Duration::from_secs(300);

/// The lent bytes of every data file of a store.
pub struct Lends {
    inner: Mutex<Inner>,
    grace: Duration,
}

impl Default for Lends {
    fn default() -> Self {
        Lends {
            inner: Mutex::default(),
            grace: GRACE,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Leases out, per id (absent: none).
    out: HashMap<u64, usize>,
    /// Ids whose punch is running.
    punching: HashSet<u64>,
    /// When bytes of an id were last handed out to be sent by reference.
    by_reference: HashMap<u64, Instant>,
}

/// Bytes of data file `id` lent out; returned when dropped.
pub struct Lease {
    lends: Arc<Lends>,
    id: u64,
}

/// A punch of data file `id` in progress; no lease is given meanwhile.
pub struct Punching {
    lends: Arc<Lends>,
    id: u64,
}

impl Lends {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Lends whose [`GRACE`] is `grace` (tests).
    #[cfg(test)]
    pub fn with_grace(grace: Duration) -> Arc<Self> {
        Arc::new(Lends {
            inner: Mutex::default(),
            grace,
        })
    }

    /// Bytes of `id` were handed out that may be sent by reference: no
    /// punch of it for [`GRACE`] from now.
    pub fn by_reference(&self, id: u64) {
        self.inner.lock().by_reference.insert(id, Instant::now());
    }

    /// A lease on bytes of `id`, or `None` while a punch of it runs.
    pub fn lease(self: &Arc<Self>, id: u64) -> Option<Lease> {
        let mut inner = self.inner.lock();
        if inner.punching.contains(&id) {
            return None;
        }
        *inner.out.entry(id).or_default() += 1;
        Some(Lease {
            lends: Arc::clone(self),
            id,
        })
    }

    /// Starts a punch of `id`, or `None` while bytes of it are lent or
    /// within [`GRACE`] of bytes handed out by reference.
    pub fn punch(self: &Arc<Self>, id: u64) -> Option<Punching> {
        let mut inner = self.inner.lock();
        if let Some(at) = inner.by_reference.get(&id) {
            if at.elapsed() < self.grace {
                return None;
            }
            inner.by_reference.remove(&id);
        }
        if inner.out.contains_key(&id) || !inner.punching.insert(id) {
            return None;
        }
        Some(Punching {
            lends: Arc::clone(self),
            id,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inner = self.lends.inner.lock();
        if let Some(n) = inner.out.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                inner.out.remove(&self.id);
            }
        }
    }
}

impl Drop for Punching {
    fn drop(&mut self) {
        self.lends.inner.lock().punching.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_punch_waits_for_the_leases_and_leases_wait_for_the_punch() {
        let lends = Lends::new();
        let a = lends.lease(1).expect("nothing punching");
        let b = lends.lease(1).expect("leases share");
        assert!(lends.punch(1).is_none(), "bytes of 1 are lent");
        let other = lends.punch(2).expect("2 lends nothing");
        assert!(lends.lease(2).is_none(), "2 is being punched");
        assert!(lends.punch(2).is_none(), "one punch at a time");
        drop(other);
        drop(a);
        assert!(lends.punch(1).is_none(), "one lease is still out");
        drop(b);
        let p = lends.punch(1).expect("all returned");
        assert!(lends.lease(1).is_none());
        drop(p);
        assert!(lends.lease(1).is_some());
        assert!(
            lends.inner.lock().out.is_empty(),
            "returned leases leave nothing"
        );
    }

    /// Bytes handed out by reference keep punches off for the grace,
    /// then no longer.
    #[test]
    fn a_punch_waits_out_the_grace_after_bytes_sent_by_reference() {
        let lends = Lends::with_grace(Duration::from_millis(200));
        lends.by_reference(1);
        assert!(lends.punch(1).is_none(), "within the grace");
        assert!(lends.punch(2).is_some(), "other files are not held");
        std::thread::sleep(Duration::from_millis(250));
        assert!(lends.punch(1).is_some(), "after the grace");
    }
}
