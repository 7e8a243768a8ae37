//! The protocol's calls, decided once for every backend over the state a
//! backend exposes: the one place where create, fork, append, close,
//! delete (soft delete and cascade), restore and the expiry sweep are
//! decided. Backends keep only how they store, log and read.
//!
//! * [`append_to`] decides an append (or close) on one stream's state in
//!   place: visibility, [`model::plan_append`], and the write through a
//!   backend-supplied `store` step. The memory backend calls it on the
//!   locked stream's metadata; [`append`] calls it on a [`Txn`]'s view.
//! * A backend implements [`Txn`] for one call or one batch of calls: a
//!   view of every stream's metadata as the transaction sees it (committed
//!   state overlaid with its own changes), record insertion and removal, id
//!   allocation, wakes, and the list of sweep candidates. [`create`],
//!   [`delete`], [`restore`] and [`sweep`] then decide each call with
//!   [`model`]'s pure functions and write through the trait. The memory
//!   backend's `MemTxn` (one call under its map lock) and the acid and
//!   PostgreSQL writers' batches (many calls in one transaction) implement
//!   it.
//!
//! A rejected call ([`Fail::Reject`]) has set nothing except, for a create,
//! the removal of an expired, unreferenced stream of that name (which is
//! gone either way), and does not disturb the other calls of a batch; a
//! failed write loses the whole transaction ([`Fail::Fatal`]).

use std::collections::HashMap;

use bytes::Bytes;

use super::chain::{Chain, Metas, Records};
use super::model::{self, AppendPlan, ForkLink, StreamMeta};
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkSpec, Millis, StorageError,
    StreamInfo, TrimOutcome,
};
use crate::notify::{Appended, Wake};
use crate::offset::Offset;

/// The wakes of one batch of calls (the acid and PostgreSQL writers'): one
/// per stream name, its state after the batch, carrying the records the
/// batch appended to it where they are exactly what moved its tail. A
/// reader at the old tail is then answered from the wake, with no storage
/// read (on these backends a blocking-pool hop and a database read each).
#[derive(Default)]
pub struct BatchWakes {
    /// Wakes with the incarnation they concern, in call order.
    wakes: Vec<(String, u64, Wake)>,
    /// Per incarnation, the records inserted last and where they start
    /// (contiguous runs merged).
    appended: HashMap<u64, (Offset, Vec<Bytes>)>,
}

impl BatchWakes {
    /// `records` of stream `id` were inserted from `start`.
    pub fn inserted(&mut self, id: u64, start: Offset, records: &[Bytes]) {
        match self.appended.get_mut(&id) {
            Some((from, recs)) if model::advance(*from, recs) == start => {
                recs.extend_from_slice(records)
            }
            _ => {
                self.appended.insert(id, (start, records.to_vec()));
            }
        }
    }

    /// Every record of stream `id` was removed.
    pub fn removed(&mut self, id: u64) {
        self.appended.remove(&id);
    }

    /// Stream `name` (incarnation `id`) changed: wake its readers with
    /// `wake` once the batch commits.
    pub fn wake(&mut self, name: &str, id: u64, wake: Wake) {
        self.wakes.push((name.to_string(), id, wake));
    }

    /// The wakes to send once the batch committed: each name's last, with
    /// the records that lead to its tail.
    pub fn finish(&mut self) -> Vec<(String, Wake)> {
        let mut last: HashMap<String, (u64, Wake)> = HashMap::with_capacity(self.wakes.len());
        for (name, id, wake) in self.wakes.drain(..) {
            last.insert(name, (id, wake));
        }
        last.into_iter()
            .map(|(name, (id, mut wake))| {
                if let Some((from, records)) = self.appended.remove(&id)
                    && !records.is_empty()
                    && model::advance(from, &records) == wake.tail
                {
                    wake.appended = Some(Appended::new(id, from, records));
                }
                (name, wake)
            })
            .collect()
    }
}

/// Why a call did not succeed.
pub enum Fail {
    /// Refused by the protocol: the call wrote nothing, the batch goes on.
    Reject(StorageError),
    /// The store failed: the whole transaction is lost.
    Fatal(StorageError),
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Reject(e)
    }
}

/// One write transaction of a backend, as the shared decisions need it.
/// [`Metas::meta`] answers with the transaction's view (an error there is
/// fatal: the store failed).
pub trait Txn: Metas {
    /// Records `meta` (or the removal, `None`) as the stream's new state, to
    /// be written when the transaction commits.
    fn set(&mut self, name: &str, meta: Option<StreamMeta>);
    /// A fresh incarnation id.
    fn take_id(&mut self) -> Result<u64, Fail>;
    /// Stores `records` of stream `id` from `start`.
    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail>;
    /// Removes every record of stream `id`.
    fn remove_records(&mut self, id: u64) -> Result<(), Fail>;
    /// Gives back the space of the own records of stream `id` (whose own
    /// range starts at `base`) that lie before `point`, a record boundary
    /// past `base`. Idempotent: records already dropped are skipped. The
    /// metadata (its `trimmed`) is what makes them unreadable; this only
    /// reclaims.
    fn trim_records(&mut self, id: u64, base: Offset, point: Offset) -> Result<(), Fail>;
    /// The start of the record of the view of `meta` that holds `at`
    /// (`at` itself at the tail), after checking that `at` is a position
    /// the stream minted. By default through a [`Chain`] over this view and
    /// [`Txn::records`].
    fn record_boundary(&self, meta: &StreamMeta, at: Offset) -> Result<Offset, StorageError> {
        let records = self.records().ok_or_else(|| {
            StorageError::Corrupt("this backend resolves no records in a transaction".into())
        })?;
        let chain = Chain {
            metas: self,
            records,
        };
        chain.record_boundary(meta, at)
    }
    /// Wakes the stream's readers once the transaction commits.
    fn wake(&mut self, name: &str, meta: &StreamMeta);
    /// Resolves a fork's base against its source, reading the transaction's
    /// own records. By default, through a [`Chain`] over this view and
    /// [`Txn::records`].
    fn fork_base(
        &self,
        source: &StreamMeta,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        let records = self.records().ok_or_else(|| {
            StorageError::Corrupt("this backend resolves no forks in a transaction".into())
        })?;
        let chain = Chain {
            metas: self,
            records,
        };
        chain.resolve_fork_base(source, anchor, sub_offset)
    }
    /// The records as this transaction sees them (its own writes included),
    /// for the default [`Txn::fork_base`]. `None` (the default) for a
    /// backend that overrides `fork_base` instead.
    fn records(&self) -> Option<&dyn Records> {
        None
    }
    /// Streams that may be expired and unreferenced at `now` (re-checked
    /// with [`StreamMeta::is_sweepable`]).
    fn sweep_candidates(&mut self, now: Millis) -> Result<Vec<String>, Fail>;
}

fn meta_of<T: Txn + ?Sized>(t: &T, name: &str) -> Result<Option<StreamMeta>, Fail> {
    t.meta(name).map_err(Fail::Fatal)
}

/// Removes a stream whose refcount is zero, then releases its source,
/// cascading through hidden sources.
pub fn remove_cascade<T: Txn + ?Sized>(t: &mut T, name: &str, now: Millis) -> Result<(), Fail> {
    let mut next = Some(name.to_string());
    while let Some(name) = next.take() {
        let Some(meta) = meta_of(t, &name)? else {
            break;
        };
        t.remove_records(meta.id)?;
        t.set(&name, None);
        t.wake(&name, &meta);
        let Some(link) = meta.fork else { break };
        let Some(mut src) = meta_of(t, &link.source)? else {
            break;
        };
        if src.id != link.source_id {
            break;
        }
        src.refcount = src.refcount.saturating_sub(1);
        let cascade = src.refcount == 0 && src.is_hidden(now);
        if src.refcount == 0 && !cascade {
            // The last fork is gone: what a trim kept for it goes now.
            drop_trimmed(t, &src)?;
        }
        t.set(&link.source, Some(src));
        if cascade {
            next = Some(link.source.clone());
        }
    }
    Ok(())
}

/// A `PUT`: creates the stream (with its initial records and closure, and a
/// reference on its fork source) or confirms an identical existing one.
pub fn create<T: Txn + ?Sized>(
    t: &mut T,
    name: &str,
    req: &CreateRequest,
) -> Result<CreateOutcome, Fail> {
    if let Some(existing) = meta_of(t, name)? {
        if existing.soft_deleted || (existing.is_expired(req.now) && existing.refcount > 0) {
            return Err(StorageError::PathReserved.into());
        }
        if !existing.is_sweepable(req.now) {
            return if model::create_matches(&existing, req) {
                Ok(CreateOutcome::Exists(existing.info()))
            } else {
                Err(StorageError::ConfigMismatch.into())
            };
        }
        // Expired and unreferenced: it is gone; the name is free again.
        remove_cascade(t, name, req.now)?;
    }
    let (mut meta, records) = if let Some(spec) = &req.fork {
        plan_fork(t, req, spec)?
    } else {
        let content_type = req
            .content_type
            .clone()
            .unwrap_or_else(|| model::DEFAULT_CONTENT_TYPE.to_string());
        let records = model::frame_records(model::is_json(&content_type), &req.body, false)?;
        let id = t.take_id()?;
        let expiry = req.expiry.unwrap_or_default();
        (
            StreamMeta::new(id, content_type, expiry, Offset::ZERO, req.now),
            records,
        )
    };
    t.insert_records(meta.id, meta.base, &records)?;
    meta.tail = model::advance(meta.base, &records);
    meta.closed = req.closed;
    if let Some(link) = &meta.fork
        && let Some(mut src) = meta_of(t, &link.source)?
    {
        src.refcount += 1;
        t.set(&link.source, Some(src));
    }
    let info = meta.info();
    t.set(name, Some(meta));
    Ok(CreateOutcome::Created(info))
}

/// Decides a fork's metadata and initial records; writes nothing but the id.
fn plan_fork<T: Txn + ?Sized>(
    t: &mut T,
    req: &CreateRequest,
    spec: &ForkSpec,
) -> Result<(StreamMeta, Vec<Bytes>), Fail> {
    let source = meta_of(t, &spec.source)?.ok_or(StorageError::ForkSourceNotFound)?;
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
    if anchor.pos < source.earliest().pos {
        return Err(StorageError::Trimmed {
            earliest: source.earliest(),
        }
        .into());
    }
    let base = t.fork_base(&source, anchor, spec.sub_offset)?;
    let (expiry, inherited) = model::fork_expiry(source.expiry, req.expiry);
    let records = model::frame_records(model::is_json(&source.content_type), &req.body, false)?;
    let id = t.take_id()?;
    let mut meta = StreamMeta::new(id, source.content_type.clone(), expiry, base, req.now);
    meta.expiry_inherited = inherited;
    // What the source trimmed is gone from the fork's view too.
    meta.trimmed = source.trimmed;
    meta.fork = Some(ForkLink {
        source: spec.source.clone(),
        source_id: source.id,
        anchor,
        sub_offset: spec.sub_offset,
    });
    Ok((meta, records))
}

/// What [`append_to`] decided and applied to a stream's state.
pub struct Applied {
    pub outcome: AppendOutcome,
    /// The tail before the append.
    pub from: Offset,
    /// The records written (none for a duplicate or a close alone).
    pub records: Vec<Bytes>,
    /// True when the state changed beyond a renewal (records or closure):
    /// the stream's readers are to be woken once it is durable.
    pub wrote: bool,
}

/// The append decision on one stream's state, in place: the one path every
/// backend takes for a `POST`. Checks that the stream is visible, plans
/// with [`model::plan_append`]; a duplicate only renews access; a write
/// first calls `store(meta, plan)` (with the state before the append: the
/// backend stores the records at `meta.tail` and queues what it must; an
/// error there leaves `meta` untouched), then applies the plan to `meta`.
pub fn append_to<E: From<StorageError>>(
    meta: &mut StreamMeta,
    req: &AppendRequest,
    store: impl FnOnce(&StreamMeta, &model::WritePlan) -> Result<(), E>,
) -> Result<Applied, E> {
    meta.check_visible(req.now)?;
    let from = meta.tail;
    match model::plan_append(meta, req)? {
        AppendPlan::Duplicate(producer) => {
            // A retried or repeated write still counts as access.
            meta.last_access = req.now;
            Ok(Applied {
                outcome: AppendOutcome::Duplicate {
                    info: meta.info(),
                    producer,
                },
                from,
                records: Vec::new(),
                wrote: false,
            })
        }
        AppendPlan::Write(plan) => {
            store(meta, &plan)?;
            model::apply_write(meta, &plan, req.producer.as_ref(), req.now);
            let producer = plan.producer.map(|st| (st.epoch, st.last_seq));
            Ok(Applied {
                outcome: AppendOutcome::Appended {
                    info: meta.info(),
                    producer,
                },
                from,
                records: plan.records,
                wrote: true,
            })
        }
    }
}

/// A `POST` in a transaction: [`append_to`] on the transaction's view.
pub fn append<T: Txn + ?Sized>(
    t: &mut T,
    name: &str,
    req: &AppendRequest,
) -> Result<AppendOutcome, Fail> {
    let mut meta = meta_of(t, name)?.ok_or(StorageError::NotFound)?;
    let applied = append_to(&mut meta, req, |m, plan| {
        t.insert_records(m.id, m.tail, &plan.records)
    })?;
    if applied.wrote {
        t.wake(name, &meta);
    }
    t.set(name, Some(meta));
    Ok(applied.outcome)
}

/// Reclaims the own records of `meta` before its trim point (none when the
/// point is at or before its own range).
fn drop_trimmed<T: Txn + ?Sized>(t: &mut T, meta: &StreamMeta) -> Result<(), Fail> {
    match meta.trimmed {
        Some(point) if point.pos > meta.base.pos => t.trim_records(meta.id, meta.base, point),
        _ => Ok(()),
    }
}

/// A trim: moves the stream's trim point to the start of the record that
/// holds `before` ([`Storage::trim`](super::Storage::trim)'s contract) and
/// reclaims the records before it unless forks read from the stream.
pub fn trim<T: Txn + ?Sized>(
    t: &mut T,
    name: &str,
    before: Offset,
    now: Millis,
) -> Result<TrimOutcome, Fail> {
    let mut meta = meta_of(t, name)?.ok_or(StorageError::NotFound)?;
    meta.check_visible(now)?;
    if before.pos > meta.tail.pos {
        return Err(StorageError::TrimBeyondTail { tail: meta.tail }.into());
    }
    let unchanged = |meta: &StreamMeta| TrimOutcome {
        info: meta.info(),
        moved: false,
    };
    if before.pos <= meta.earliest().pos {
        return Ok(unchanged(&meta));
    }
    let point = t.record_boundary(&meta, before)?;
    if point.pos <= meta.earliest().pos {
        return Ok(unchanged(&meta));
    }
    meta.trimmed = Some(point);
    // A trim that moves is a write: it renews a sliding TTL like an append
    // (and so supersedes any renewal a backend keeps aside).
    meta.last_access = now;
    if meta.refcount == 0 {
        drop_trimmed(t, &meta)?;
    }
    let info = meta.info();
    t.set(name, Some(meta));
    Ok(TrimOutcome { info, moved: true })
}

/// A `DELETE`: soft-deletes a stream that forks still read, removes it
/// (cascading) otherwise.
pub fn delete<T: Txn + ?Sized>(t: &mut T, name: &str, now: Millis) -> Result<(), Fail> {
    let mut meta = meta_of(t, name)?.ok_or(StorageError::NotFound)?;
    meta.check_visible(now)?;
    if meta.refcount > 0 {
        meta.soft_deleted = true;
        t.wake(name, &meta);
        t.set(name, Some(meta));
        return Ok(());
    }
    remove_cascade(t, name, now)
}

/// Recreates a stream with a fresh id, its records and metadata, and takes a
/// reference on its fork source.
pub fn restore<T: Txn + ?Sized>(
    t: &mut T,
    name: &str,
    mut meta: StreamMeta,
    records: &[Bytes],
) -> Result<StreamInfo, Fail> {
    // Records a trim dropped are not restored: the own range starts again
    // at the trim point (no backend keeps holes before its first record).
    meta.base = meta.own_start();
    super::check_restore(&meta, records)?;
    if meta_of(t, name)?.is_some() {
        return Err(StorageError::AlreadyExists.into());
    }
    let source = match &meta.fork {
        Some(link) => {
            let src = meta_of(t, &link.source)?.ok_or(StorageError::ForkSourceNotFound)?;
            super::check_restore_source(&meta, &src)?;
            Some((link.source.clone(), src))
        }
        None => None,
    };
    meta.id = t.take_id()?;
    meta.refcount = 0;
    t.insert_records(meta.id, meta.base, records)?;
    if let Some((src_name, mut src)) = source {
        src.refcount += 1;
        if let Some(link) = meta.fork.as_mut() {
            link.source_id = src.id;
        }
        t.set(&src_name, Some(src));
    }
    t.wake(name, &meta);
    let info = meta.info();
    t.set(name, Some(meta));
    Ok(info)
}

/// Removes every expired, unreferenced stream among the candidates.
pub fn sweep<T: Txn + ?Sized>(t: &mut T, now: Millis) -> Result<usize, Fail> {
    let mut removed = 0;
    for name in t.sweep_candidates(now)? {
        if meta_of(t, &name)?.is_some_and(|m| m.is_sweepable(now)) {
            remove_cascade(t, &name, now)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Records of the given texts, for tests.
#[cfg(test)]
pub fn recs(parts: &[&'static str]) -> Vec<Bytes> {
    parts
        .iter()
        .map(|p| Bytes::from_static(p.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wakes of `w`, by name.
    fn finished(w: &mut BatchWakes) -> HashMap<String, Wake> {
        w.finish().into_iter().collect()
    }

    #[test]
    fn a_batch_wakes_each_stream_once_with_the_records_that_led_to_its_tail() {
        let mut w = BatchWakes::default();
        // Stream a: two contiguous appends, merged into one wake.
        w.inserted(1, Offset::new(0, 0), &recs(&["ab"]));
        w.wake("a", 1, Wake::bare(Offset::new(1, 2), false));
        w.inserted(1, Offset::new(1, 2), &recs(&["c", "de"]));
        w.wake("a", 1, Wake::bare(Offset::new(3, 5), false));
        // Stream b: a close without records after an append keeps them.
        w.inserted(2, Offset::new(4, 10), &recs(&["x"]));
        w.wake("b", 2, Wake::bare(Offset::new(5, 11), false));
        w.wake("b", 2, Wake::bare(Offset::new(5, 11), true));
        let wakes = finished(&mut w);
        assert_eq!(wakes.len(), 2);
        let a = wakes["a"].appended.as_ref().expect("a carries its records");
        assert_eq!((a.id, a.from), (1, Offset::new(0, 0)));
        assert_eq!(a.records, recs(&["ab", "c", "de"]));
        assert_eq!(wakes["a"].tail, Offset::new(3, 5));
        let b = &wakes["b"];
        assert!(b.closed);
        assert_eq!(b.appended.as_ref().unwrap().records, recs(&["x"]));
        // Finished: nothing is left for the next batch.
        assert!(w.finish().is_empty());
    }

    #[test]
    fn records_that_do_not_lead_to_the_tail_are_not_carried() {
        let mut w = BatchWakes::default();
        // A gap between two inserts: only the last run is kept, and it does
        // not start where the first did.
        w.inserted(1, Offset::new(0, 0), &recs(&["ab"]));
        w.inserted(1, Offset::new(5, 9), &recs(&["c"]));
        w.wake("a", 1, Wake::bare(Offset::new(6, 10), false));
        // Removed records (a delete) are never carried.
        w.inserted(2, Offset::new(0, 0), &recs(&["x"]));
        w.removed(2);
        w.wake("b", 2, Wake::bare(Offset::new(1, 1), false));
        // Records of another incarnation of the same name are not this
        // one's: a stream deleted and made again in one batch.
        w.inserted(3, Offset::new(0, 0), &recs(&["old"]));
        w.wake("c", 4, Wake::bare(Offset::new(1, 3), false));
        // A wake whose tail moved past the records (more came another way).
        w.inserted(5, Offset::new(0, 0), &recs(&["y"]));
        w.wake("d", 5, Wake::bare(Offset::new(2, 7), false));
        let wakes = finished(&mut w);
        assert_eq!(
            wakes["a"].appended.as_ref().map(|a| a.from),
            Some(Offset::new(5, 9))
        );
        for name in ["b", "c", "d"] {
            assert!(wakes[name].appended.is_none(), "{name} carries records");
        }
    }
}
