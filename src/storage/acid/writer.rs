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
use super::read::{Metas, Reader};
use super::tables::{DATA, KEY_NEXT_ID, META, STREAMS, clone_err, encode_meta, map_err};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::model::{self, AppendPlan, ForkLink, StreamMeta};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkSpec, Millis, StorageError,
    StreamInfo,
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
            Answer::Sweep(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Restore(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Shutdown(tx) => drop(tx.send(pick(Ok(()), failed))),
        }
    }
}

/// Why an op did not succeed.
enum Fail {
    /// Refused by the protocol (or a read failed): the op wrote nothing, the
    /// batch goes on.
    Reject(StorageError),
    /// A write into the transaction failed: the whole batch is lost.
    Fatal(StorageError),
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Reject(e)
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
                wakes: Vec::new(),
            };
            // Renewals first: metadata written by the ops below supersedes them.
            let mut fatal_err = b.persist_renewals(renewed).err();
            for op in ops {
                let answer = match op {
                    Op::Create(name, req, tx) => {
                        Answer::Create(tx, b.run(|b| b.create(&name, &req), &mut fatal_err))
                    }
                    Op::Append(name, req, tx) => {
                        Answer::Append(tx, b.run(|b| b.append(&name, &req), &mut fatal_err))
                    }
                    Op::Delete(name, now, tx) => {
                        Answer::Delete(tx, b.run(|b| b.delete(&name, now), &mut fatal_err))
                    }
                    Op::Sweep(now, tx) => {
                        Answer::Sweep(tx, b.run(|b| b.sweep(now), &mut fatal_err))
                    }
                    Op::Restore(name, restore, tx) => {
                        let (meta, records) = *restore;
                        Answer::Restore(
                            tx,
                            b.run(|b| b.restore(&name, meta, &records), &mut fatal_err),
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
            (b.overlay, b.wakes, b.next_id, fatal_err, changed)
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
    wakes: Vec<(String, Wake)>,
}

impl Metas for Batch<'_, '_> {
    fn meta(&self, name: &str) -> Option<StreamMeta> {
        match self.overlay.get(name) {
            Some(m) => m.clone(),
            None => self.shared.meta(name),
        }
    }
}

impl Batch<'_, '_> {
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

    fn reader(&self) -> Reader<'_, Self, DataTableMut<'_>> {
        Reader {
            metas: self,
            data: &self.data,
        }
    }

    fn wake(&mut self, name: &str, meta: &StreamMeta) {
        self.wakes
            .push((name.to_string(), Wake::bare(meta.tail, meta.closed)));
    }

    fn set(&mut self, name: &str, meta: StreamMeta) {
        self.overlay.insert(name.to_string(), Some(meta));
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail> {
        let mut at = start;
        for r in records {
            self.data
                .insert((id, at.pos), (at.seq, r.as_ref()))
                .map_err(fatal)?;
            at = Offset::new(at.seq + 1, at.pos + r.len() as u64);
        }
        Ok(())
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

    /// Removes a stream whose refcount is zero, then releases its source,
    /// cascading through hidden sources.
    fn remove_cascade(&mut self, name: &str, now: Millis) -> Result<(), Fail> {
        let mut next = Some(name.to_string());
        while let Some(name) = next.take() {
            let Some(meta) = self.meta(&name) else { break };
            let id = meta.id;
            self.data
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(fatal)?;
            self.overlay.insert(name.clone(), None);
            self.wake(&name, &meta);
            let Some(link) = meta.fork else { break };
            let Some(mut src) = self.meta(&link.source) else {
                break;
            };
            if src.id != link.source_id {
                break;
            }
            src.refcount = src.refcount.saturating_sub(1);
            let cascade = src.refcount == 0 && src.is_hidden(now);
            self.set(&link.source, src);
            if cascade {
                next = Some(link.source.clone());
            }
        }
        Ok(())
    }

    fn create(&mut self, name: &str, req: &CreateRequest) -> Result<CreateOutcome, Fail> {
        if let Some(existing) = self.meta(name) {
            if existing.soft_deleted || (existing.is_expired(req.now) && existing.refcount > 0) {
                return Err(StorageError::PathReserved.into());
            }
            if !existing.is_expired(req.now) {
                return if model::create_matches(&existing, req) {
                    Ok(CreateOutcome::Exists(existing.info()))
                } else {
                    Err(StorageError::ConfigMismatch.into())
                };
            }
            // Expired and unreferenced: it is gone; the name is free again.
            self.remove_cascade(name, req.now)?;
        }
        let (meta, records) = if let Some(spec) = &req.fork {
            self.plan_fork(req, spec)?
        } else {
            let content_type = req
                .content_type
                .clone()
                .unwrap_or_else(|| model::DEFAULT_CONTENT_TYPE.to_string());
            let records = model::frame_records(model::is_json(&content_type), &req.body, false)?;
            let id = self.take_id();
            let expiry = req.expiry.unwrap_or_default();
            (
                StreamMeta::new(id, content_type, expiry, Offset::ZERO, req.now),
                records,
            )
        };
        let mut meta = meta;
        self.insert_records(meta.id, meta.base, &records)?;
        meta.tail = model::advance(meta.base, &records);
        meta.closed = req.closed;
        if let Some(link) = &meta.fork
            && let Some(mut src) = self.meta(&link.source)
        {
            src.refcount += 1;
            self.set(&link.source, src);
        }
        let info = meta.info();
        self.set(name, meta);
        Ok(CreateOutcome::Created(info))
    }

    /// Decides a fork's metadata and initial records; writes nothing.
    fn plan_fork(
        &mut self,
        req: &CreateRequest,
        spec: &ForkSpec,
    ) -> Result<(StreamMeta, Vec<Bytes>), Fail> {
        let source = self
            .meta(&spec.source)
            .ok_or(StorageError::ForkSourceNotFound)?;
        if source.soft_deleted {
            return Err(StorageError::ForkSourceGone.into());
        }
        if source.is_expired(req.now) {
            return Err(StorageError::ForkSourceNotFound.into());
        }
        if let Some(ct) = &req.content_type
            && !model::same_type(ct, &source.content_type)
        {
            return Err(StorageError::ContentTypeMismatch {
                expected: source.content_type.clone(),
            }
            .into());
        }
        let anchor = spec.offset.unwrap_or(source.tail);
        let base = self
            .reader()
            .resolve_fork_base(&source, anchor, spec.sub_offset)?;
        let (expiry, inherited) = model::fork_expiry(source.expiry, req.expiry);
        let records = model::frame_records(model::is_json(&source.content_type), &req.body, false)?;
        let id = self.take_id();
        let mut meta = StreamMeta::new(id, source.content_type.clone(), expiry, base, req.now);
        meta.expiry_inherited = inherited;
        meta.fork = Some(ForkLink {
            source: spec.source.clone(),
            source_id: source.id,
            anchor,
            sub_offset: spec.sub_offset,
        });
        Ok((meta, records))
    }

    fn append(&mut self, name: &str, req: &AppendRequest) -> Result<AppendOutcome, Fail> {
        let mut meta = self.meta(name).ok_or(StorageError::NotFound)?;
        meta.check_visible(req.now)?;
        match model::plan_append(&meta, req)? {
            AppendPlan::Duplicate(producer) => {
                // A retried or repeated write still counts as access.
                meta.last_access = req.now;
                let info = meta.info();
                self.set(name, meta);
                Ok(AppendOutcome::Duplicate { info, producer })
            }
            AppendPlan::Write(plan) => {
                let echo = plan
                    .producer
                    .as_ref()
                    .map(|(_, st)| (st.epoch, st.last_seq));
                self.insert_records(meta.id, meta.tail, &plan.records)?;
                model::apply_write(&mut meta, &plan, req.producer.as_ref(), req.now);
                self.wake(name, &meta);
                let info = meta.info();
                self.set(name, meta);
                Ok(AppendOutcome::Appended {
                    info,
                    producer: echo,
                })
            }
        }
    }

    fn delete(&mut self, name: &str, now: Millis) -> Result<(), Fail> {
        let mut meta = self.meta(name).ok_or(StorageError::NotFound)?;
        meta.check_visible(now)?;
        if meta.refcount > 0 {
            meta.soft_deleted = true;
            self.wake(name, &meta);
            self.set(name, meta);
            return Ok(());
        }
        self.remove_cascade(name, now)
    }

    /// Recreates a stream with a fresh id, its records and metadata, and
    /// takes a reference on its fork source, in this transaction.
    fn restore(
        &mut self,
        name: &str,
        mut meta: StreamMeta,
        records: &[Bytes],
    ) -> Result<StreamInfo, Fail> {
        crate::storage::check_restore(&meta, records)?;
        if self.meta(name).is_some() {
            return Err(StorageError::AlreadyExists.into());
        }
        let source = match &meta.fork {
            Some(link) => {
                let src = self
                    .meta(&link.source)
                    .ok_or(StorageError::ForkSourceNotFound)?;
                crate::storage::check_restore_source(&meta, &src)?;
                Some((link.source.clone(), src))
            }
            None => None,
        };
        meta.id = self.take_id();
        meta.refcount = 0;
        self.insert_records(meta.id, meta.base, records)?;
        if let Some((src_name, mut src)) = source {
            src.refcount += 1;
            if let Some(link) = meta.fork.as_mut() {
                link.source_id = src.id;
            }
            self.set(&src_name, src);
        }
        self.wake(name, &meta);
        let info = meta.info();
        self.set(name, meta);
        Ok(info)
    }

    fn sweep(&mut self, now: Millis) -> Result<usize, Fail> {
        let expired = |m: &StreamMeta| m.is_expired(now) && m.refcount == 0;
        let mut candidates = self.shared.sweepable(now);
        candidates.retain(|n| !self.overlay.contains_key(n));
        candidates.extend(
            self.overlay
                .iter()
                .filter(|(_, m)| m.as_ref().is_some_and(expired))
                .map(|(n, _)| n.clone()),
        );
        let mut removed = 0;
        for name in candidates {
            if self.meta(&name).is_some_and(|m| expired(&m)) {
                self.remove_cascade(&name, now)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
