//! The single writer thread: group commit of every mutation.
//!
//! Callers queue an [`Op`] and block on its reply channel. The writer takes
//! the first queued op, drains whatever else is queued (up to
//! [`MAX_BATCH`]), and runs them all in ONE redb write transaction. Each op
//! is decided against the state the ops before it in the batch produced (a
//! [`Batch`] overlays their uncommitted metadata on the committed cache, and
//! fork resolution reads the transaction's own data table). A rejected op
//! writes nothing and does not disturb the others; a storage failure aborts
//! the transaction and every op of the batch gets the error. Only after the
//! commit returns does the writer update the metadata cache, wake readers
//! and answer the callers, so nothing unacknowledged is ever visible.
//!
//! Sliding-TTL renewals by reads live only in the cache; the writer persists
//! them coarsely: a stream's metadata written by any later transaction
//! carries the renewed `last_access`, and every [`ACCESS_FLUSH_INTERVAL`]
//! the names renewed since the last flush are written (with the next batch,
//! or by an idle flush of their own), and once more at shutdown. A crash can
//! therefore forget at most about one interval of read renewals.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::Table;

use super::Shared;
use super::read::Data;
use super::tables::{DATA, KEY_NEXT_ID, META, STREAMS, clone_err, encode_meta, map_err};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::chain::{Collect, Metas, Records};
use crate::storage::model::StreamMeta;
use crate::storage::txn::{self, BatchWakes, Fail, Txn};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, StorageError, StreamInfo,
    TrimOutcome,
};

/// Most ops committed together.
pub(super) const MAX_BATCH: usize = 512;
/// How often read renewals of sliding TTLs reach the disk.
pub(super) const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

type Reply<T> = Sender<Result<T, StorageError>>;
/// The `data` table open in the batch's write transaction.
type DataTableMut<'t> = Table<'t, (u64, u64), (u64, &'static [u8])>;
/// What a committed batch leaves for the cache: metadata, wakes, next id.
type Committed = (
    HashMap<String, Option<StreamMeta>>,
    Vec<(String, Wake)>,
    u64,
);

/// One queued mutation and where to send its answer.
pub(super) enum Op {
    Create(String, Box<CreateRequest>, Reply<CreateOutcome>),
    Append(String, Box<AppendRequest>, Reply<AppendOutcome>),
    Delete(String, Millis, Reply<()>),
    Trim(String, Offset, Millis, Reply<TrimOutcome>),
    Sweep(Millis, Reply<usize>),
    /// Restore a stream from its metadata and own records.
    Restore(String, Box<(StreamMeta, Vec<Bytes>)>, Reply<StreamInfo>),
    /// Persist pending renewals, answer, and stop the writer.
    Shutdown(Reply<()>),
}

impl Op {
    /// The answer slot of an op that never ran (its batch failed first).
    fn unanswered(self) -> Answer {
        let never = || StorageError::Unavailable("not run".into());
        match self {
            Op::Create(_, _, tx) => Answer::Create(tx, Err(never())),
            Op::Append(_, _, tx) => Answer::Append(tx, Err(never())),
            Op::Delete(_, _, tx) => Answer::Delete(tx, Err(never())),
            Op::Trim(_, _, _, tx) => Answer::Trim(tx, Err(never())),
            Op::Sweep(_, tx) => Answer::Sweep(tx, Err(never())),
            Op::Restore(_, _, tx) => Answer::Restore(tx, Err(never())),
            Op::Shutdown(tx) => Answer::Shutdown(tx),
        }
    }
}

/// An op's answer, held until the commit decides it.
enum Answer {
    Create(Reply<CreateOutcome>, Result<CreateOutcome, StorageError>),
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StorageError>),
    Delete(Reply<()>, Result<(), StorageError>),
    Trim(Reply<TrimOutcome>, Result<TrimOutcome, StorageError>),
    Sweep(Reply<usize>, Result<usize, StorageError>),
    Restore(Reply<StreamInfo>, Result<StreamInfo, StorageError>),
    Shutdown(Reply<()>),
}

impl Answer {
    /// Sends the answer, or `failed` instead when the commit failed. A caller
    /// that gave up waiting is not an error.
    fn send(self, failed: Option<&StorageError>) {
        fn pick<T>(
            r: Result<T, StorageError>,
            failed: Option<&StorageError>,
        ) -> Result<T, StorageError> {
            match failed {
                Some(e) => Err(clone_err(e)),
                None => r,
            }
        }
        match self {
            Answer::Create(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Append(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Delete(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Trim(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Sweep(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Restore(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Shutdown(tx) => drop(tx.send(pick(Ok(()), failed))),
        }
    }
}

fn fatal(e: impl Into<redb::Error>) -> Fail {
    Fail::Fatal(map_err(e))
}

/// Runs the writer until shutdown or until every sender is gone.
pub(super) fn run(shared: Arc<Shared>, rx: Receiver<Op>, next_id: u64) {
    let mut writer = Writer {
        shared,
        next_id,
        last_flush: Instant::now(),
    };
    loop {
        let first = match rx.recv_timeout(ACCESS_FLUSH_INTERVAL) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                // A reopen that failed is retried even when nothing writes,
                // so that reads come back on their own.
                if writer.shared.db.read().is_none() {
                    writer.reopen();
                }
                writer.idle_flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                writer.idle_flush();
                return;
            }
        };
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if writer.batch(ops) {
            return;
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    next_id: u64,
    last_flush: Instant,
}

impl Writer {
    /// Persists pending TTL renewals when nothing else is being written.
    fn idle_flush(&mut self) {
        if self.shared.touched.lock().is_empty() {
            return;
        }
        self.batch(Vec::new());
    }

    /// Runs `ops` in one transaction and answers them. Returns true when a
    /// shutdown was among them.
    fn batch(&mut self, ops: Vec<Op>) -> bool {
        let stop = ops.iter().any(|op| matches!(op, Op::Shutdown(_)));
        let flush = ops.is_empty() || stop || self.last_flush.elapsed() >= ACCESS_FLUSH_INTERVAL;
        let renewed: Vec<String> = if flush {
            self.last_flush = Instant::now();
            self.shared.touched.lock().drain().collect()
        } else {
            Vec::new()
        };
        let mut answers = Vec::with_capacity(ops.len());
        let result = self.transact(ops, &renewed, &mut answers);
        match result {
            Ok((overlay, wakes, next_id)) => {
                self.next_id = next_id;
                self.shared.install(overlay);
                for (name, wake) in wakes {
                    if let Some(a) = &wake.appended {
                        self.shared.recent.appended(a.id, a.from, &a.records);
                    }
                    self.shared.hub.wake(&name, wake);
                }
                for a in answers {
                    a.send(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "acid storage: write transaction failed");
                self.shared.touched.lock().extend(renewed);
                // redb refuses every call after an I/O failure (a full disk
                // included) until the database is reopened; the cache holds
                // only committed state, so reopening loses nothing. Done
                // before answering, so the callers' next requests find it open.
                if matches!(e, StorageError::NoSpace | StorageError::Io(_)) {
                    self.reopen();
                }
                for a in answers {
                    a.send(Some(&e));
                }
            }
        }
        stop
    }

    /// Closes and reopens the database after an I/O failure, holding the
    /// handle's lock so that new readers wait instead of failing. If it
    /// cannot be reopened yet, calls answer 503 and the next batch retries.
    fn reopen(&mut self) {
        let mut slot = self.shared.db.write();
        if let Some(mut old) = slot.take() {
            // Readers that took the old handle finish within one read.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(busy) if Instant::now() < deadline => {
                        old = busy;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(busy) => {
                        tracing::error!(
                            "acid storage: readers keep the failed database open; retrying later"
                        );
                        *slot = Some(busy);
                        return;
                    }
                }
            }
        }
        match super::open_db(&self.shared.path) {
            Ok(db) => {
                tracing::info!("acid storage: database reopened after a write failure");
                *slot = Some(Arc::new(db));
            }
            Err(e) => tracing::error!(error = %e, "acid storage: cannot reopen the database yet"),
        }
    }

    fn transact(
        &mut self,
        ops: Vec<Op>,
        renewed: &[String],
        answers: &mut Vec<Answer>,
    ) -> Result<Committed, StorageError> {
        if self.shared.db.read().is_none() {
            self.reopen();
        }
        let opened = self
            .shared
            .db()
            .and_then(|db| db.begin_write().map_err(map_err))
            .and_then(|txn| {
                let tables = (
                    txn.open_table(STREAMS).map_err(map_err)?,
                    txn.open_table(DATA).map_err(map_err)?,
                    txn.open_table(META).map_err(map_err)?,
                );
                drop(tables);
                Ok(txn)
            });
        let txn = match opened {
            Ok(txn) => txn,
            Err(e) => {
                // Every op still gets an answer: the batch's error.
                answers.extend(ops.into_iter().map(Op::unanswered));
                return Err(e);
            }
        };
        let (overlay, wakes, next_id, fatal_err, changed) = {
            let mut b = Batch {
                shared: &self.shared,
                streams: txn.open_table(STREAMS).map_err(map_err)?,
                data: txn.open_table(DATA).map_err(map_err)?,
                counters: txn.open_table(META).map_err(map_err)?,
                overlay: HashMap::new(),
                next_id: self.next_id,
                wakes: BatchWakes::default(),
            };
            // Renewals first: metadata written by the ops below supersedes them.
            let mut fatal_err = b.persist_renewals(renewed).err();
            for op in ops {
                let answer = match op {
                    Op::Create(name, req, tx) => {
                        Answer::Create(tx, b.run(|b| txn::create(b, &name, &req), &mut fatal_err))
                    }
                    Op::Append(name, req, tx) => {
                        Answer::Append(tx, b.run(|b| txn::append(b, &name, &req), &mut fatal_err))
                    }
                    Op::Delete(name, now, tx) => {
                        Answer::Delete(tx, b.run(|b| txn::delete(b, &name, now), &mut fatal_err))
                    }
                    Op::Trim(name, before, now, tx) => Answer::Trim(
                        tx,
                        b.run(|b| txn::trim(b, &name, before, now), &mut fatal_err),
                    ),
                    Op::Sweep(now, tx) => {
                        Answer::Sweep(tx, b.run(|b| txn::sweep(b, now), &mut fatal_err))
                    }
                    Op::Restore(name, restore, tx) => {
                        let (meta, records) = *restore;
                        Answer::Restore(
                            tx,
                            b.run(|b| txn::restore(b, &name, meta, &records), &mut fatal_err),
                        )
                    }
                    Op::Shutdown(tx) => Answer::Shutdown(tx),
                };
                answers.push(answer);
            }
            // Every write of an op goes with an overlay entry, so an empty
            // overlay means the ops changed nothing.
            let changed = !b.overlay.is_empty() || !renewed.is_empty();
            if fatal_err.is_none() && changed {
                fatal_err = b.persist_overlay().err();
            }
            (b.overlay, b.wakes.finish(), b.next_id, fatal_err, changed)
        };
        #[cfg(test)]
        let fatal_err = match self.shared.inject_failure.swap(false, Ordering::Relaxed) {
            true => fatal_err.or(Some(StorageError::NoSpace)),
            false => fatal_err,
        };
        if fatal_err.is_none() && !changed {
            // Only rejections, duplicates or no-op sweeps: spare the fsync.
            txn.abort().map_err(map_err)?;
            return Ok((overlay, wakes, next_id));
        }
        if let Some(e) = fatal_err {
            // Dropping the transaction aborts it: nothing of the batch is kept.
            let _ = txn.abort();
            return Err(e);
        }
        txn.commit().map_err(map_err)?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok((overlay, wakes, next_id))
    }
}

/// The state of one write transaction: the committed cache overlaid with the
/// metadata the batch changed so far (`None`: removed).
struct Batch<'s, 't> {
    shared: &'s Shared,
    streams: Table<'t, &'static str, &'static [u8]>,
    data: DataTableMut<'t>,
    counters: Table<'t, &'static str, u64>,
    overlay: HashMap<String, Option<StreamMeta>>,
    next_id: u64,
    wakes: BatchWakes,
}

impl Metas for Batch<'_, '_> {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        Ok(self.meta(name))
    }
}

impl Records for Batch<'_, '_> {
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError> {
        Data(&self.data).fill(rows)
    }
}

impl Batch<'_, '_> {
    fn meta(&self, name: &str) -> Option<StreamMeta> {
        match self.overlay.get(name) {
            Some(m) => m.clone(),
            None => self.shared.meta(name),
        }
    }

    /// Runs one op unless the batch is already lost.
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, Fail>,
        fatal_err: &mut Option<StorageError>,
    ) -> Result<T, StorageError> {
        if let Some(e) = fatal_err {
            return Err(clone_err(e));
        }
        match op(self) {
            Ok(v) => Ok(v),
            Err(Fail::Reject(e)) => Err(e),
            Err(Fail::Fatal(e)) => {
                let copy = clone_err(&e);
                *fatal_err = Some(e);
                Err(copy)
            }
        }
    }

    /// Writes the committed metadata of streams whose reads renewed their TTL.
    fn persist_renewals(&mut self, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            if let Some(meta) = self.shared.meta(name) {
                let bytes = encode_meta(&meta)?;
                self.streams
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(map_err)?;
            }
        }
        Ok(())
    }

    /// Writes every changed stream's metadata and the id counter.
    fn persist_overlay(&mut self) -> Result<(), StorageError> {
        for (name, meta) in &self.overlay {
            match meta {
                Some(meta) => {
                    // Carry reads' renewals made since the op cloned the metadata.
                    let mut meta = meta.clone();
                    if let Some(cached) = self.shared.meta(name)
                        && cached.id == meta.id
                    {
                        meta.last_access = meta.last_access.max(cached.last_access);
                    }
                    let bytes = encode_meta(&meta)?;
                    self.streams
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(map_err)?;
                }
                None => {
                    self.streams.remove(name.as_str()).map_err(map_err)?;
                }
            }
        }
        self.counters
            .insert(KEY_NEXT_ID, self.next_id)
            .map_err(map_err)?;
        Ok(())
    }
}

impl Txn for Batch<'_, '_> {
    fn set(&mut self, name: &str, meta: Option<StreamMeta>) {
        self.overlay.insert(name.to_string(), meta);
    }

    fn take_id(&mut self) -> Result<u64, Fail> {
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail> {
        self.wakes.inserted(id, start, records);
        let mut at = start;
        for r in records {
            self.data
                .insert((id, at.pos), (at.seq, r.as_ref()))
                .map_err(fatal)?;
            at = Offset::new(at.seq + 1, at.pos + r.len() as u64);
        }
        Ok(())
    }

    fn remove_records(&mut self, id: u64) -> Result<(), Fail> {
        self.wakes.removed(id);
        self.data
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
            .map_err(fatal)
    }

    fn trim_records(&mut self, id: u64, base: Offset, point: Offset) -> Result<(), Fail> {
        self.data
            .retain_in((id, base.pos)..(id, point.pos), |_, _| false)
            .map_err(fatal)
    }

    fn wake(&mut self, name: &str, meta: &StreamMeta) {
        self.wakes
            .wake(name, meta.id, Wake::bare(meta.tail, meta.closed));
    }

    fn records(&self) -> Option<&dyn Records> {
        Some(self)
    }

    fn sweep_candidates(&mut self, now: Millis) -> Result<Vec<String>, Fail> {
        let mut candidates = self.shared.sweepable(now);
        candidates.retain(|n| !self.overlay.contains_key(n));
        candidates.extend(
            self.overlay
                .iter()
                .filter(|(_, m)| m.as_ref().is_some_and(|m| m.is_sweepable(now)))
                .map(|(n, _)| n.clone()),
        );
        Ok(candidates)
    }
}
