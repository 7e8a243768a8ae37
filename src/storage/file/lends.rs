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
//! Counted per incarnation id, not per open handle: a handle evicted from
//! the cache and opened again maps the same pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

/// The lent bytes of every data file of a store.
#[derive(Default)]
pub struct Lends {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Leases out, per id (absent: none).
    out: HashMap<u64, usize>,
    /// Ids whose punch is running.
    punching: HashSet<u64>,
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

    /// Starts a punch of `id`, or `None` while bytes of it are lent.
    pub fn punch(self: &Arc<Self>, id: u64) -> Option<Punching> {
        let mut inner = self.inner.lock();
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
}
