//! The live-read core that long-poll ([`super::read::long_poll`]) and SSE
//! ([`super::sse`]) share: where a live reader stands, and what comes next.
//!
//! A [`LiveRead`] subscribes to its stream's wakes *before* its first read
//! (so no append slips between the read and the wait), then [`LiveRead::next`]
//! returns one [`Step`] at a time: new data (read from storage, or taken
//! from the records a wake carries), a keep-alive tick, or the end of the
//! reader's time (its deadline or the server's shutdown). Stale wakes are
//! skipped; a storage `503` is ridden out (read again every
//! [`UNAVAILABLE_RETRY`] until the deadline) in both modes. The handlers
//! only turn steps into their wire format.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

use super::AppState;
use super::error::ApiError;
use super::read::read_chunk;
use crate::metrics::{Live, LiveGuard};
use crate::notify::{Appended, Subscription, Wake};
use crate::offset::{Offset, ReadFrom};
use crate::storage::{ReadOutcome, StreamInfo};

/// How long a live reader waits before reading again while storage
/// answers 503.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_millis(500);

/// The two live modes: how long a reader lives and whether it ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One answer, at the latest after the long-poll timeout.
    LongPoll,
    /// Many events, keep-alives meanwhile, until the reconnect interval.
    Sse,
}

/// What happened after the reader's last position.
#[derive(Debug)]
pub enum Step {
    /// [`LiveRead::out`] is a new answer (possibly empty: a wake that
    /// changed nothing readable, or a closure without data). `appended` is
    /// the wake's shared record set when the answer came from it.
    Read { appended: Option<Arc<Appended>> },
    /// A keep-alive interval passed without news (SSE only; also once per
    /// retry while storage is unavailable).
    KeepAlive,
    /// The reader's deadline passed or the server is shutting down.
    Expired,
    /// Storage failed (deleted or expired meanwhile, or still unavailable
    /// at the deadline). The reader ends with this error.
    Failed(ApiError),
}

/// What is left of a [`LiveRead`] when it parks.
pub struct Parked {
    pub name: String,
    /// The stream as the last read saw it (the parked reader is at its tail).
    pub info: crate::storage::StreamInfo,
    pub next: crate::offset::Offset,
    pub deadline: Instant,
    pub live: LiveGuard,
}

/// One live reader: its subscription, its position and its deadline.
pub struct LiveRead {
    state: AppState,
    name: String,
    sub: Subscription,
    out: ReadOutcome,
    deadline: Instant,
    /// `Some` in SSE mode: the keep-alive interval.
    keepalive: Option<Duration>,
    /// A wake asked for a storage read that has not succeeded yet.
    reread: bool,
    /// The 503 that the pending re-read last got: the reader's end if the
    /// deadline comes first.
    unavailable: Option<ApiError>,
    /// Counts the connection while it lives.
    _live: LiveGuard,
}

impl LiveRead {
    /// Subscribes to `name`, then reads from `from` (`now` resolves to the
    /// tail, so it never returns data that existed before the request). A
    /// failed first read is the request's answer (a 404, a 503).
    pub async fn open(
        state: &AppState,
        name: String,
        from: ReadFrom,
        mode: Mode,
    ) -> Result<Self, ApiError> {
        let (kind, life, keepalive) = match mode {
            Mode::LongPoll => (Live::LongPoll, state.config.long_poll_timeout, None),
            Mode::Sse => (
                Live::Sse,
                state.config.sse_reconnect,
                Some(state.config.sse_keepalive),
            ),
        };
        let live = state.metrics.live(kind);
        let deadline = Instant::now() + life;
        let sub = state.hub.subscribe(&name);
        let out = read_chunk(state, &name, from).await?;
        Ok(LiveRead {
            state: state.clone(),
            name,
            sub,
            out,
            deadline,
            keepalive,
            reread: false,
            unavailable: None,
            _live: live,
        })
    }

    /// A reader that was parked ([`super::park`]) and is active again: like
    /// [`LiveRead::open`] from `next`, but keeping the deadline and the
    /// live-reader count it had.
    pub async fn resume(
        state: &AppState,
        name: String,
        next: crate::offset::Offset,
        deadline: Instant,
        mode: Mode,
        live: LiveGuard,
    ) -> Result<Self, ApiError> {
        let keepalive = (mode == Mode::Sse).then_some(state.config.sse_keepalive);
        let sub = state.hub.subscribe(&name);
        let out = read_chunk(state, &name, ReadFrom::At(next)).await?;
        Ok(LiveRead {
            state: state.clone(),
            name,
            sub,
            out,
            deadline,
            keepalive,
            reread: false,
            unavailable: None,
            _live: live,
        })
    }

    /// True when the reader has nothing to do but wait for a wake: it is
    /// at the tail, owes no re-read, and no wake is queued for it that is
    /// news. Such a reader can be parked.
    pub fn at_rest(&mut self) -> bool {
        if self.reread || !self.out.up_to_date() || self.out.at_eof() || self.is_over() {
            return false;
        }
        let out = &self.out;
        if self.sub.has_news(|w| stale(out, w)) {
            // The news is consumed: the next step reads storage for it.
            self.reread = true;
            return false;
        }
        true
    }

    /// Takes the reader apart for parking: its stream, position and
    /// deadline, and its live-reader count. Its subscription ends here;
    /// the parked reader is woken by its stream's group.
    pub fn into_parked(self) -> Parked {
        Parked {
            name: self.name,
            info: self.out.info,
            next: self.out.next,
            deadline: self.deadline,
            live: self._live,
        }
    }

    /// The stream read.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last answer: where the reader stands (`out().next`).
    pub fn out(&self) -> &ReadOutcome {
        &self.out
    }

    /// The server state (for cursors and control events).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits for what comes after [`LiveRead::out`]. A reader behind the
    /// tail (its last answer was a full chunk short of it) reads on at once;
    /// one at the tail waits for a wake. Call it again after any step but
    /// `Expired` and `Failed`; at EOF the caller stops by itself.
    pub async fn next(&mut self) -> Step {
        if self.reread || (!self.out.is_empty() && !self.out.up_to_date()) {
            if self.is_over() {
                return match self.unavailable.take() {
                    Some(e) if !self.state.shutdown.is_cancelled() => Step::Failed(e),
                    _ => Step::Expired,
                };
            }
            return self.read_on().await;
        }
        // At the tail, also right after data that reached it: the
        // subscription predates every read, so anything appended since is
        // already queued as a wake. Reading storage again here cost every
        // SSE subscriber one storage read per event (on the file backend a
        // blocking-thread hop and a `pread` each).
        let wake = loop {
            let tick = async {
                match self.keepalive {
                    Some(k) => tokio::time::sleep(k).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                w = self.sub.changed() => {
                    if w.as_ref().is_some_and(|w| stale(&self.out, w)) {
                        continue;
                    }
                    break w;
                }
                _ = tick => return Step::KeepAlive,
                _ = tokio::time::sleep_until(self.deadline) => return Step::Expired,
                _ = self.state.shutdown.cancelled() => return Step::Expired,
            }
        };
        // A wake with exactly the next records: answer from them, read
        // nothing (SSE connections also share one encoding of them).
        if let Some(w) = &wake
            && let Some(next) = from_wake(&self.out.info, self.out.next, w)
        {
            self.out = next;
            return Step::Read {
                appended: w.appended.clone(),
            };
        }
        // A lagged receiver, or a wake without usable records: re-read.
        self.reread = true;
        self.read_on().await
    }

    fn is_over(&self) -> bool {
        Instant::now() >= self.deadline || self.state.shutdown.is_cancelled()
    }

    /// Reads the chunk after `out`. A 503 (storage briefly unavailable, a
    /// shared database restarting) keeps the reader: it waits
    /// [`UNAVAILABLE_RETRY`] and reports a keep-alive, and the next call
    /// reads again; a reconnect would only be refused. At the deadline the
    /// 503 is the reader's end.
    async fn read_on(&mut self) -> Step {
        match read_chunk(&self.state, &self.name, ReadFrom::At(self.out.next)).await {
            Ok(o) => {
                self.out = o;
                self.reread = false;
                self.unavailable = None;
                Step::Read { appended: None }
            }
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                self.reread = true;
                tokio::select! {
                    _ = tokio::time::sleep(UNAVAILABLE_RETRY) => {}
                    _ = tokio::time::sleep_until(self.deadline) => return Step::Failed(e),
                    _ = self.state.shutdown.cancelled() => return Step::Expired,
                }
                self.unavailable = Some(e);
                Step::KeepAlive
            }
            Err(e) => Step::Failed(e),
        }
    }
}

/// True when `wake` tells a reader at `at` nothing new: it is behind `at`,
/// or it carries records that end exactly where `at` is (the reader got
/// them from storage already). Such wakes queue up when a reader falls
/// behind; re-reading storage for each of them (a blocking-thread hop per
/// wake per reader on the durable backends) only made the backlog worse.
/// A wake without records at `at` (a delete, a close) is never stale.
pub fn stale(at: &ReadOutcome, wake: &Wake) -> bool {
    wake.tail.pos < at.next.pos
        || (wake.appended.is_some() && wake.tail == at.next && wake.closed == at.info.closed)
}

/// The read that a wake carrying exactly the records after `next` of the
/// stream `at` (an empty read at the old tail) stands for, without touching
/// storage; `None` when
/// the wake carries no records, or others (another incarnation, another
/// position): the reader then reads storage.
pub fn from_wake(at: &StreamInfo, next: Offset, wake: &Wake) -> Option<ReadOutcome> {
    let a = wake.appended.as_ref()?;
    if a.id != at.id || a.from != next {
        return None;
    }
    let mut info = at.clone();
    info.tail = wake.tail;
    info.closed = wake.closed;
    Some(ReadOutcome {
        info,
        start: a.from,
        chunks: a.records.clone(),
        next: wake.tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parked live reader holds inline, for the RSS breakdown in
    /// BENCHMARKS.md (`cargo test --lib live_read_sizes -- --nocapture`).
    #[test]
    fn live_read_sizes() {
        let sizes = [
            ("LiveRead", std::mem::size_of::<LiveRead>()),
            ("ReadOutcome", std::mem::size_of::<ReadOutcome>()),
            ("AppState", std::mem::size_of::<AppState>()),
            ("Subscription", std::mem::size_of::<Subscription>()),
            ("Wake", std::mem::size_of::<Wake>()),
        ];
        for (name, size) in sizes {
            println!("{name}: {size} B");
        }
        // A LiveRead is a few hundred bytes; the rest of a reader's cost is
        // its task, the handler futures around it and the connection.
        assert!(std::mem::size_of::<LiveRead>() < 1024);
    }
}
