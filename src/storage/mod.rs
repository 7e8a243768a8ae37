//! The storage contract every backend fulfils, and the types that cross it.
//!
//! The HTTP layer speaks only to [`Storage`]. The trait is synchronous: a
//! backend that does I/O blocks the calling thread, and callers run such
//! backends off the async workers (see [`Storage::may_block`]). Appends,
//! the hot path, can also be split into a non-blocking stage and an awaited
//! commit ([`Storage::try_append_staged`]), so that a durable append holds no
//! thread while its group commit syncs.
//!
//! # What every backend guarantees
//!
//! * **Per-stream linearizability.** Operations on one stream take effect in
//!   one total order; a successful call is visible to every call that starts
//!   after it returns.
//! * **Atomic appends.** An append's records, the stream's new tail, the
//!   producer state it updates, its `Stream-Seq` and its close flag take
//!   effect together or not at all. On a durable backend they also reach the
//!   disk together: a crash never keeps the data without the producer state
//!   that deduplicates a retry of it, and never the reverse.
//! * **Acknowledged means durable.** When a mutating call returns `Ok` on a
//!   durable backend (in its default sync mode), the change survives a crash.
//! * **Readers see only durable data**, and the backend wakes the stream's
//!   readers through the [`WakeHub`](crate::notify::WakeHub) it was given
//!   after every change of tail or closure. Where the wake comes from is the
//!   backend's business (its own commit, or another node's); a wake is a
//!   hint, readers re-read.
//! * **Offsets are minted by the backend** and are strictly increasing within
//!   a stream's offset space (shared by a fork chain).
//! * **Expired streams are absent**: every call treats a stream past its
//!   TTL or expiry time as if it did not exist, whether or not the sweeper
//!   has reclaimed it yet.
//!
//! # Where the decisions live
//!
//! A backend keeps only how it stores, logs, locks and reads; what a
//! request does is decided in two shared places, so that every backend makes
//! the same decisions:
//!
//! * [`model`]: pure functions over one stream's state: producer fencing
//!   and dedup, closure, `Stream-Seq`, config matching of a `PUT`, JSON
//!   framing, fork expiry, and the one expiry rule
//!   ([`StreamMeta::is_sweepable`]: expired and unreferenced).
//! * [`txn`]: the calls themselves. [`txn::append_to`] decides an append on
//!   a stream's state in place (a new precondition on appends goes in
//!   [`model::plan_append`], which it calls); [`txn::create`] (forks
//!   included), [`txn::delete`] (soft delete and cascade), [`txn::restore`]
//!   and [`txn::sweep`] decide multi-stream calls over a backend's
//!   [`txn::Txn`] (the memory backend's call under its map lock, a batch of
//!   the acid or PostgreSQL writer).
//!
//! [`view`] and [`chain`] hold the shared position arithmetic of reads and
//! of fork resolution.

pub mod acid;
mod calls;
pub mod chain;
pub mod file;
pub mod handle;
pub mod memory;
pub mod model;
pub mod postgres;
pub mod txn;
pub mod view;

use bytes::Bytes;

use crate::offset::Offset;

pub use calls::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkSpec, ProducerHeaders,
    ReadOutcome, ReadRequest, StreamInfo, TrimOutcome,
};
pub use model::{Expiry, ProducerState, StreamMeta};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The current wall-clock time in milliseconds (0 before the epoch). Read
/// per request: `SystemTime` directly, without `chrono`'s calendar
/// conversions (they were ~0.25 % of a memory append's CPU).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as Millis)
}

/// Checks that `records` lead from the stream's own retained start
/// ([`StreamMeta::own_start`]: its base, or its trim point) exactly to
/// `meta.tail`, as a restore requires.
pub fn check_restore(meta: &StreamMeta, records: &[Bytes]) -> Result<(), StorageError> {
    if meta.tail.seq < meta.base.seq || meta.tail.pos < meta.base.pos {
        return Err(StorageError::InvalidRestore("tail is before base".into()));
    }
    if let Some(t) = meta.trimmed
        && (t.pos > meta.tail.pos || t.seq > meta.tail.seq)
    {
        return Err(StorageError::InvalidRestore(
            "trim point is past the tail".into(),
        ));
    }
    let start = meta.own_start();
    if model::advance(start, records) != meta.tail {
        return Err(StorageError::InvalidRestore(format!(
            "{} records of {} bytes do not lead from {} to tail {}",
            records.len(),
            records.iter().map(|r| r.len() as u64).sum::<u64>(),
            start,
            meta.tail
        )));
    }
    if meta.fork.is_none() && meta.base != Offset::ZERO && meta.trimmed != Some(meta.base) {
        return Err(StorageError::InvalidRestore(
            "a stream that is not a fork must start at offset zero (or its trim point)".into(),
        ));
    }
    if model::is_json(&meta.content_type) && records.iter().any(|r| !r.ends_with(b",")) {
        return Err(StorageError::InvalidRestore(
            "a JSON stream's records must each end with ','".into(),
        ));
    }
    Ok(())
}

/// Checks a fork being restored against its (present) source.
pub fn check_restore_source(meta: &StreamMeta, source: &StreamMeta) -> Result<(), StorageError> {
    if source.tail.pos < meta.base.pos || source.tail.seq < meta.base.seq {
        return Err(StorageError::InvalidRestore(format!(
            "fork base {} is beyond its source's tail {}",
            meta.base, source.tail
        )));
    }
    if !model::same_type(&meta.content_type, &source.content_type) {
        return Err(StorageError::InvalidRestore(
            "a fork's content type must match its source's".into(),
        ));
    }
    Ok(())
}

/// Longest control-plane key accepted by [`Storage::control_put`], in bytes.
pub const CONTROL_MAX_KEY: usize = 1024;
/// Largest control-plane value accepted by [`Storage::control_put`].
pub const CONTROL_MAX_VALUE: usize = 16 << 20;

/// Checks a control-plane namespace, key and value against the limits of
/// the [`Storage::control_put`] contract; every backend calls it first.
pub fn check_control(ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
    let bad = |m: &str| {
        Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            m.to_string(),
        )))
    };
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return bad("control namespace must be 1-64 bytes of [a-z0-9_-]");
    }
    if key.is_empty() || key.len() > CONTROL_MAX_KEY {
        return bad("control key must be 1-1024 bytes");
    }
    if value.len() > CONTROL_MAX_VALUE {
        return bad("control value is larger than 16 MiB");
    }
    Ok(())
}

/// Resolves once a staged change is durable (and its readers woken).
pub type Commit =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'static>>;

/// What [`Storage::try_append_staged`] did.
pub enum Staging<T> {
    /// Staged; await it before answering.
    Staged(Staged<T>),
    /// Staging would have blocked: the request, untouched, for
    /// [`Storage::append`] on a blocking thread.
    WouldBlock(AppendRequest),
    /// Queued for a batch that decides and commits it elsewhere (a database
    /// transaction shared with other appends): await the answer itself.
    Deferred(Pending<T>),
}

/// The answer of a call queued for a batch, resolved once it committed.
pub type Pending<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StorageError>> + Send + 'static>>;

/// A staged call's answer: to be given only once [`Staged::durable`] resolves.
pub struct Staged<T> {
    /// The answer, decided when the call was staged.
    pub result: Result<T, StorageError>,
    /// Resolves when everything the answer depends on is durable; `None`
    /// when nothing needs to be waited for.
    pub durable: Option<Commit>,
}

impl<T> Staged<T> {
    /// Waits for durability, then answers; a failed commit fails the call.
    pub async fn finish(self) -> Result<T, StorageError> {
        if let Some(commit) = self.durable {
            commit.await?;
        }
        self.result
    }
}

/// A storage failure or a protocol rejection decided under the stream's lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("stream not found")]
    NotFound,
    #[error("stream was deleted and is retained only for its forks")]
    Gone,
    #[error("a stream already exists here with a different configuration")]
    ConfigMismatch,
    #[error("the path belongs to a deleted stream that forks still reference")]
    PathReserved,
    #[error("stream is closed")]
    Closed { tail: Offset },
    /// `If-Match` named another tail than the stream's: nothing was written.
    #[error(
        "If-Match does not match the stream's current tail {tail}; read it again or retry with that tail"
    )]
    PreconditionFailed { tail: Offset, closed: bool },
    /// A read or fork from a position that a trim (or retention) dropped.
    #[error("the stream's data before {earliest} was trimmed; read from {earliest} (or offset=-1)")]
    Trimmed { earliest: Offset },
    /// A trim past the stream's tail.
    #[error("cannot trim past the stream's tail {tail}")]
    TrimBeyondTail { tail: Offset },
    /// `If-Match` and idempotent-producer headers in one request.
    #[error(
        "If-Match cannot be combined with Producer-Id/Producer-Epoch/Producer-Seq; use one or the other"
    )]
    IfMatchWithProducer,
    #[error("content type does not match the stream's ({expected})")]
    ContentTypeMismatch { expected: String },
    #[error("Content-Type is required when the body is not empty")]
    MissingContentType,
    #[error("Stream-Seq {received:?} is not greater than the last one ({last:?})")]
    SeqRegression { last: String, received: String },
    #[error("producer epoch {received} is older than the current epoch {current}")]
    StaleEpoch { current: u64, received: u64 },
    #[error("a new producer epoch must start at Producer-Seq 0")]
    EpochMustStartAtZero,
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SeqGap { expected: u64, received: u64 },
    #[error("an append needs a body, unless it closes the stream")]
    EmptyBody,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("an append of an empty JSON array has no messages")]
    EmptyJsonArray,
    #[error("fork source not found")]
    ForkSourceNotFound,
    #[error("fork source was deleted")]
    ForkSourceGone,
    #[error("fork offset is beyond the source's tail")]
    ForkOffsetBeyondTail,
    #[error("offset does not name a position in this stream")]
    InvalidOffset,
    #[error("fork sub-offset names a position past the next data boundary")]
    SubOffsetOutOfRange,
    #[error("{0}")]
    TooLarge(String),
    #[error("no space left on the storage device")]
    NoSpace,
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O failure: {0}")]
    Io(std::io::Error),
    #[error("storage corrupted: {0}")]
    Corrupt(String),
    /// A restore named a stream that already exists (in any state).
    #[error("a stream with this name already exists")]
    AlreadyExists,
    /// A restore's metadata and records do not describe a valid stream.
    #[error("cannot restore the stream: {0}")]
    InvalidRestore(String),
}

impl From<std::io::Error> for StorageError {
    /// A full disk (ENOSPC) or an exhausted quota (EDQUOT) is
    /// [`StorageError::NoSpace`], answered 507: the client may retry once
    /// space is freed. Anything else is an I/O failure.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        {
            StorageError::NoSpace
        } else {
            StorageError::Io(e)
        }
    }
}

/// Node-singleton work on a shared backend: one node at a time holds the
/// leadership (a lease in the shared store, lost when the node dies or its
/// connection does) and runs the subscription engine; the others forward
/// subscription requests to it.
pub trait Cluster: Send + Sync {
    /// Announces the URL at which this node's HTTP API is reachable by the
    /// other nodes; a node leads only once it has one.
    fn advertise(&self, url: &str);
    /// `Some(term)` while this node leads. The term changes every time
    /// leadership is gained, so state cached from an earlier term (written
    /// meanwhile by another leader) is known to be stale.
    fn leadership(&self) -> Option<u64>;
    /// The current leader's advertised URL, if any node leads. Blocking.
    fn leader_url(&self) -> Result<Option<String>, StorageError>;
}

/// The contract between the HTTP layer and a backend. See the module docs for
/// the guarantees that hold for every method.
pub trait Storage: Send + Sync + 'static {
    /// True when calls may block on I/O; callers then run them on a blocking
    /// thread. The default (true) is the safe answer; the memory backend
    /// answers false.
    fn may_block(&self) -> bool {
        true
    }

    /// Creates a stream, or confirms an existing one with the same
    /// configuration (content type, expiry, closure, fork source, fork offset
    /// and sub-offset). The initial body and the closure are committed
    /// atomically with the creation. A fork increments its source's
    /// reference count in the same step.
    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError>;

    /// Appends and/or closes, deciding with [`model::plan_append`] under the
    /// stream's lock. Serialized per stream (hence per producer). Renews a
    /// sliding TTL on success.
    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError>;

    /// [`Self::append`] split in two, for callers on async workers: stages
    /// the append *without blocking* (deciding it under the stream's lock and
    /// queuing it for the backend's next group commit) and returns a
    /// [`Staged`] that the caller awaits before answering. Hands the
    /// request back ([`Staging::WouldBlock`]) when it cannot stage without blocking (the default, and
    /// e.g. while a checkpoint holds the file backend's gate); the caller then
    /// runs [`Self::append`] on a blocking thread.
    ///
    /// The contract is the one of `append`, with "returns" read as "the
    /// [`Staged`] resolves": the outcome is acknowledged only once durable,
    /// readers are woken only after that, and a stream's appends take effect
    /// in the order they were staged. Staging never waits for I/O other than
    /// a page-cache write, so one group commit can carry every append in
    /// flight (a batched-transaction backend, e.g. PostgreSQL, stages into
    /// its next batch and resolves when that transaction commits).
    fn try_append_staged(&self, name: &str, req: AppendRequest) -> Staging<AppendOutcome> {
        let _ = name;
        Staging::WouldBlock(req)
    }

    /// Reads stored bytes from a position, stitching a fork's inherited range
    /// from its sources. Never returns bytes past the durable tail. Renews a
    /// sliding TTL.
    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError>;

    /// [`Self::read`] answered *without blocking*, or `None` (the default)
    /// when the backend cannot: a backend answers from the state it holds in
    /// memory, e.g. a read at the durable tail,
    /// which is what a caught-up live reader asks on every poll. When it
    /// answers, the answer (TTL renewal included) is the one `read` would
    /// give; errors, and anything that needs I/O or a wait for durability,
    /// are left to `read`. Called on async workers, so it must not block
    /// (the [`handle`] marks the thread).
    fn read_now(&self, name: &str, req: &ReadRequest) -> Option<ReadOutcome> {
        let _ = (name, req);
        None
    }

    /// The stream's metadata. Does not renew TTL.
    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError>;

    /// Deletes a stream. With live forks it becomes soft-deleted (its data
    /// kept for them, its name answering `Gone`); otherwise it is removed and
    /// its source's reference count drops, cascading up soft-deleted sources.
    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError>;

    /// Drops the stream's data before `before`, rounded down to the start of
    /// the record that holds it (a trim never drops a byte at or after
    /// `before`): afterwards reads start at that point (`offset=-1`) and a
    /// read or fork before it is [`StorageError::Trimmed`]. Idempotent: a
    /// point at or before the current trim point changes nothing
    /// (`moved: false`). Past the tail: [`StorageError::TrimBeyondTail`]; an
    /// offset the stream did not mint: [`StorageError::InvalidOffset`].
    /// The trim point is durable before return, like an append, and never
    /// touches producer state, closure or the tail; one that moves renews a
    /// sliding TTL, like an append. The dropped records'
    /// space is given back at once, unless forks read from the stream: then
    /// they are kept (the forks' inherited ranges stay readable) and
    /// dropped when the last fork goes.
    fn trim(&self, name: &str, before: Offset, now: Millis) -> Result<TrimOutcome, StorageError>;

    /// Removes streams whose TTL or expiry has passed; returns how many.
    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError>;

    /// Makes everything acknowledged so far durable and releases resources.
    /// Called once at shutdown; later calls may fail.
    fn shutdown(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Every stream the backend holds, with its metadata, sorted by name:
    /// visible streams, soft-deleted ones kept for their forks, and expired
    /// ones the sweeper has not removed yet (callers that want only live
    /// streams check [`StreamMeta::is_expired`]). Renews nothing. Used by
    /// backup and listing tools, not by the HTTP layer.
    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError>;

    /// A stream's metadata and its OWN retained records (from
    /// [`StreamMeta::own_start`], its base unless a trim dropped records
    /// past it, to `meta.tail`, record boundaries kept), taken at one consistent point,
    /// whatever its state (soft-deleted and expired streams included). A
    /// fork's inherited range is not copied: it belongs to the source. Only
    /// durable data is returned. Renews nothing.
    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError>;

    /// Recreates a stream exactly as exported: same base, tail and record
    /// boundaries (so every offset is the same), content type, expiry and
    /// last access, closure and closing producer, `Stream-Seq`, producer
    /// states and soft-delete flag. Committed atomically, like a create.
    ///
    /// The backend assigns a fresh incarnation id (`meta.id` is ignored).
    /// For a fork, `meta.fork.source` must name a stream already present
    /// (restore sources first); `source_id` is replaced by that stream's id,
    /// its tail must reach the fork's `base`, and its reference count is
    /// incremented in the same step. `meta.refcount` is ignored: the
    /// restored stream starts unreferenced and gains references as its
    /// forks are restored, so counts stay consistent. Fails with
    /// [`StorageError::AlreadyExists`] when the name is taken (in any state).
    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError>;

    /// Stores `value` under `key` in namespace `ns` of the control-plane
    /// key/value space (subscriptions, their cursors and retry schedules, the
    /// webhook signing key): small records kept apart from the streams, in
    /// the same store so that one backup of the data directory (or one
    /// database shared by many nodes) holds both.
    ///
    /// * **Atomic per call**: after a crash the key holds either its old
    ///   value or the new one, never a mix, never a truncation.
    /// * **Durable before return** on durable backends, whatever the sync
    ///   mode: the control plane is low-rate and its callers (cursor acks,
    ///   generation bumps) rely on it.
    /// * **Linearizable per key**, last writer wins: a call that starts after
    ///   a put returned sees it. Callers that write one key from several
    ///   tasks serialize those writes themselves; the store does not order
    ///   concurrent puts of one key. There is no ordering with stream writes.
    /// * `ns` is a server-chosen name of 1–64 bytes of `[a-z0-9_-]`
    ///   (anything else is refused with an I/O `InvalidInput` error); `key`
    ///   is any UTF-8 string of 1–[`CONTROL_MAX_KEY`] bytes, `value` at most
    ///   [`CONTROL_MAX_VALUE`] bytes.
    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError>;

    /// Removes `key` from `ns` (absent is not an error). Atomic and durable
    /// before return, like [`Storage::control_put`].
    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError>;

    /// Every `(key, value)` of `ns`, sorted by key: every put and delete
    /// that returned before the call started is reflected. Used at startup
    /// to load the control plane, so it may be slow but must be complete.
    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError>;

    /// Stores `value` under `key` in `ns` unless the key already holds one,
    /// and returns the value stored now (the given one, or the existing
    /// one): "create once" for values every node must agree on (the webhook
    /// signing key). Atomic on backends that several processes share; the
    /// default suffices for a backend owned by one process. Durable before
    /// return, like [`Storage::control_put`].
    fn control_put_new(&self, ns: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        if let Some((_, v)) = self.control_scan(ns)?.into_iter().find(|(k, _)| k == key) {
            return Ok(v);
        }
        self.control_put(ns, key, value)?;
        Ok(value.to_vec())
    }

    /// For a backend that several nodes share: how they divide the work
    /// that must run on exactly one of them. `None` (the default) for a
    /// backend owned by one process, which does all of it itself.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// How many stream names the backend holds, when it knows cheaply
    /// (without I/O or a scan); `None` otherwise. Used only for metrics.
    fn stream_count(&self) -> Option<u64> {
        None
    }

    /// Gauges of the backend's own state, read cheaply (metrics only).
    fn gauges(&self) -> Vec<Gauge> {
        Vec::new()
    }
}

/// A backend's gauge for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}
