//! Fault injection for the file backend's tests: make the next write or
//! sync at one point of the I/O path fail with a chosen `errno`, to show
//! that a failure never leaves a stream partly updated.
//!
//! Compiled to nothing outside `cfg(test)`: [`Faults::check`] is then an
//! empty inline function and [`Faults`] has no fields.

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The positional write of records into a stream's data file.
    DataWrite,
    /// The write of a stream's buffered frames into its data file
    /// ([`super::pending`]).
    DataFlush,
    /// The write of record starts into a stream's index file.
    IndexWrite,
    /// The committer's write of a batch into the WAL.
    WalWrite,
    /// The committer's `fdatasync` of the WAL.
    WalSync,
}

/// Armed faults of one store.
#[derive(Default)]
pub struct Faults {
    #[cfg(test)]
    armed: parking_lot::Mutex<Vec<(Point, u32, i32)>>,
    /// WAL syncs wait while this is set ([`Faults::hold_syncs`]).
    #[cfg(test)]
    held: (parking_lot::Mutex<bool>, parking_lot::Condvar),
}

impl Faults {
    /// Fails the `after`-th next operation at `point` (0: the very next)
    /// with `errno`, once.
    #[cfg(test)]
    pub fn arm(&self, point: Point, after: u32, errno: i32) {
        self.armed.lock().push((point, after, errno));
    }

    /// Makes every WAL sync wait from now until called with `false`: a
    /// test sees appends staged and not yet committed.
    #[cfg(test)]
    pub fn hold_syncs(&self, hold: bool) {
        *self.held.0.lock() = hold;
        if !hold {
            self.held.1.notify_all();
        }
    }

    /// Fails if a fault is armed here and due (waits while syncs are
    /// held, at [`Point::WalSync`]).
    #[inline]
    pub fn check(&self, _point: Point) -> std::io::Result<()> {
        #[cfg(test)]
        {
            if _point == Point::WalSync {
                let mut held = self.held.0.lock();
                while *held {
                    self.held.1.wait(&mut held);
                }
            }
            let mut armed = self.armed.lock();
            if let Some(i) = armed.iter().position(|(p, _, _)| *p == _point) {
                if armed[i].1 == 0 {
                    let (_, _, errno) = armed.remove(i);
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                armed[i].1 -= 1;
            }
        }
        Ok(())
    }
}
