//! The one async way to call a backend: [`StorageHandle`].
//!
//! [`Storage`] is synchronous, and a durable backend blocks on I/O. The
//! handle decides, once for every caller (the HTTP handlers, the
//! subscription engine, the sweeper), where a call runs:
//!
//! * a backend that never blocks ([`Storage::may_block`] false) is called
//!   on the current task;
//! * a read is first offered to [`Storage::read_now`], which answers it
//!   here when it can without blocking (at the durable tail);
//! * an append is first offered to [`Storage::try_append_staged`], which
//!   decides it here without blocking and hands back a future for its group
//!   commit (or queues it for a batch); only when the backend cannot stage
//!   without blocking does the append run on the blocking pool;
//! * everything else runs on the blocking pool.
//!
//! A blocking task that fails is mapped in one place ([`task_failed`]): a
//! panic is an internal failure (500), a task cancelled because the runtime
//! is shutting down is "unavailable, retry" (503).
//!
//! # No blocking I/O on a reactor thread
//!
//! While the handle runs a backend on the async worker (staging an append,
//! or any call of a non-blocking backend), the thread is marked
//! ([`NonBlocking`]). A backend calls [`blocking_io`] before any I/O that
//! may wait (opening a file, reading an index, reserving disk space); in a
//! marked thread that is a contract violation: counted in
//! [`blocking_violations`] and, in debug builds, a panic, so the tests
//! catch it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    AppendOutcome, AppendRequest, ReadOutcome, ReadRequest, Staging, Storage, StorageError,
};

/// A cheap, clonable handle around a backend. See the module docs.
#[derive(Clone)]
pub struct StorageHandle {
    backend: Arc<dyn Storage>,
}

impl StorageHandle {
    pub fn new(backend: Arc<dyn Storage>) -> Self {
        StorageHandle { backend }
    }

    /// The backend itself, for its non-blocking accessors
    /// ([`Storage::cluster`], [`Storage::stream_count`]) and for
    /// synchronous callers that already run on a blocking thread.
    pub fn backend(&self) -> &Arc<dyn Storage> {
        &self.backend
    }

    /// Runs a storage call where it may run: on this task for a backend
    /// that never blocks, otherwise on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    {
        if !self.backend.may_block() {
            let _marked = NonBlocking::enter();
            return f(&*self.backend);
        }
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || f(&*backend))
            .await
            .map_err(task_failed)?
    }

    /// Reads: answered on this worker when the backend can without blocking
    /// ([`Storage::read_now`]: a caught-up live reader's poll at the tail),
    /// otherwise as [`Self::run`] does. A blocking-pool round trip costs
    /// two thread wake-ups; at 10,000 long-pollers it was half the server's
    /// CPU per poll (BENCHMARKS.md).
    pub async fn read(&self, name: String, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        if self.backend.may_block() {
            let now = {
                let _marked = NonBlocking::enter();
                self.backend.read_now(&name, &req)
            };
            if let Some(out) = now {
                return Ok(out);
            }
        }
        self.run(move |s| s.read(&name, req)).await
    }

    /// Appends: staged on this worker and awaited without a thread when the
    /// backend can (one group commit then carries every append in flight),
    /// queued when the backend batches, and otherwise run on the blocking
    /// pool.
    pub async fn append(
        &self,
        name: &str,
        req: AppendRequest,
    ) -> Result<AppendOutcome, StorageError> {
        if !self.backend.may_block() {
            let _marked = NonBlocking::enter();
            return self.backend.append(name, req);
        }
        let staging = {
            let _marked = NonBlocking::enter();
            self.backend.try_append_staged(name, req)
        };
        match staging {
            Staging::Staged(staged) => staged.finish().await,
            Staging::Deferred(pending) => pending.await,
            Staging::WouldBlock(req) => {
                let name = name.to_owned();
                self.run(move |s| s.append(&name, req)).await
            }
        }
    }
}

/// The one mapping of a blocking storage task that did not return.
pub fn task_failed(e: tokio::task::JoinError) -> StorageError {
    if e.is_panic() {
        tracing::error!(error = %e, "storage task panicked");
        StorageError::Io(std::io::Error::other("storage task panicked"))
    } else {
        StorageError::Unavailable("the server is shutting down".into())
    }
}

thread_local! {
    /// Depth of [`NonBlocking`] sections on this thread.
    static NON_BLOCKING: Cell<u32> = const { Cell::new(0) };
}

/// Blocking I/O attempted inside a [`NonBlocking`] section, since start.
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

/// Marks the current thread, while alive, as one that must not block (an
/// async worker running a backend's non-blocking path).
pub struct NonBlocking(());

impl NonBlocking {
    pub fn enter() -> Self {
        NON_BLOCKING.with(|d| d.set(d.get() + 1));
        NonBlocking(())
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        NON_BLOCKING.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// True inside a [`NonBlocking`] section: a backend must take its
/// non-blocking way out (e.g. [`Staging::WouldBlock`]) instead of waiting.
pub fn in_non_blocking() -> bool {
    NON_BLOCKING.with(|d| d.get() > 0)
}

/// Declares blocking I/O about to happen (`what` names it). Inside a
/// [`NonBlocking`] section this is a bug in the backend: counted, and a
/// panic in debug builds.
pub fn blocking_io(what: &'static str) {
    if in_non_blocking() {
        VIOLATIONS.fetch_add(1, Ordering::Relaxed);
        debug_assert!(false, "blocking I/O ({what}) on an async worker thread");
        tracing::error!(what, "blocking I/O on an async worker thread");
    }
}

/// How often [`blocking_io`] was called inside a [`NonBlocking`] section.
pub fn blocking_violations() -> u64 {
    VIOLATIONS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_nest_and_end() {
        assert!(!in_non_blocking());
        let a = NonBlocking::enter();
        let b = NonBlocking::enter();
        assert!(in_non_blocking());
        drop(b);
        assert!(in_non_blocking());
        drop(a);
        assert!(!in_non_blocking());
        blocking_io("allowed outside a section");
    }

    #[test]
    #[should_panic(expected = "blocking I/O")]
    #[cfg(debug_assertions)]
    fn blocking_io_in_a_section_panics_in_debug_builds() {
        let _s = NonBlocking::enter();
        blocking_io("open");
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_internal_error_not_a_retry() {
        let e = tokio::task::spawn_blocking(|| panic!("boom"))
            .await
            .unwrap_err();
        assert!(matches!(task_failed(e), StorageError::Io(_)));
    }
}
