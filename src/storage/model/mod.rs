//! The protocol's decisions about a stream, as pure functions over its state.
//!
//! Every backend keeps a [`StreamMeta`] per stream and, under that stream's
//! lock, asks these functions what a request does: whether a `PUT` matches
//! the existing configuration, and what an append writes (records, new
//! producer state, close) or why it is refused. The backend then commits the
//! plan atomically. Keeping the decisions here means every backend answers
//! every request the same way.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AppendRequest, CreateRequest, ForkSpec, Millis, ProducerHeaders, StorageError};
use crate::offset::Offset;

/// The content type a stream gets when a `PUT` names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How a stream expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Expiry {
    #[default]
    Never,
    /// Sliding window in seconds, renewed by reads and writes.
    Ttl(u64),
    /// Absolute deadline, milliseconds since the Unix epoch.
    At(Millis),
}

impl Expiry {
    /// True once a stream last accessed at `last_access` is past its expiry.
    pub fn is_expired(&self, last_access: Millis, now: Millis) -> bool {
        match *self {
            Expiry::Never => false,
            Expiry::Ttl(secs) => now >= last_access.saturating_add(secs.saturating_mul(1000)),
            Expiry::At(at) => now >= at,
        }
    }
}

/// One idempotent producer's state on one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: u64,
    /// Highest accepted `Producer-Seq` in `epoch`.
    pub last_seq: u64,
}

/// Where a fork's inherited data comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkLink {
    /// Name of the source stream.
    pub source: String,
    /// The source incarnation's id (a name can be reused after a delete).
    pub source_id: u64,
    /// The resolved `Stream-Fork-Offset` (the anchor, before the sub-offset).
    pub anchor: Offset,
    /// The `Stream-Fork-Sub-Offset` as requested.
    pub sub_offset: u64,
}

/// Everything a backend keeps about a stream besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Incarnation id, unique within the store.
    pub id: u64,
    pub content_type: String,
    pub expiry: Expiry,
    /// True when the expiry was inherited from a fork source, not requested.
    pub expiry_inherited: bool,
    /// Last read or write, for sliding TTL.
    pub last_access: Millis,
    pub closed: bool,
    /// The producer tuple whose append closed the stream, if any.
    pub closed_by: Option<ProducerHeaders>,
    /// The first position that belongs to this stream's own records;
    /// everything before it is inherited from the fork source.
    pub base: Offset,
    /// The durable tail.
    pub tail: Offset,
    pub fork: Option<ForkLink>,
    /// Number of live forks whose source is this stream.
    pub refcount: u64,
    /// Deleted by a client, kept only for its forks.
    pub soft_deleted: bool,
    /// Last `Stream-Seq` accepted (scope: the stream).
    pub last_stream_seq: Option<String>,
    pub producers: HashMap<String, ProducerState>,
    /// The first retained position (a record boundary) once the stream has
    /// been trimmed; `None` (the stream's start) when nothing was. Reads
    /// before it are `Gone`. Absent from the stored JSON until a trim, so
    /// every earlier format reads unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<Offset>,
}

impl StreamMeta {
    /// A fresh, empty, open stream.
    pub fn new(id: u64, content_type: String, expiry: Expiry, base: Offset, now: Millis) -> Self {
        StreamMeta {
            id,
            content_type,
            expiry,
            expiry_inherited: false,
            last_access: now,
            closed: false,
            closed_by: None,
            base,
            tail: base,
            fork: None,
            refcount: 0,
            soft_deleted: false,
            last_stream_seq: None,
            producers: HashMap::new(),
            trimmed: None,
        }
    }

    /// Where the stream's own retained records start: its base, or its
    /// trim point when that lies past the base. Exports hold the records
    /// from here; a restore puts them back here.
    pub fn own_start(&self) -> Offset {
        match self.trimmed {
            Some(t) if t.pos > self.base.pos => t,
            _ => self.base,
        }
    }

    /// The first position a read can start at: the trim point, or the
    /// start of the offset space.
    pub fn earliest(&self) -> Offset {
        self.trimmed.unwrap_or(Offset::ZERO)
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        self.expiry.is_expired(self.last_access, now)
    }

    /// True when the stream is expired and no fork reads from it: it is gone
    /// for good, and the sweeper (or a create of its name) removes it. The
    /// one rule of what expiry reclaims, for every backend.
    pub fn is_sweepable(&self, now: Millis) -> bool {
        self.is_expired(now) && self.refcount == 0
    }

    /// True when clients can no longer see the stream (deleted or expired)
    /// but it is kept because forks read from it.
    pub fn is_hidden(&self, now: Millis) -> bool {
        self.soft_deleted || self.is_expired(now)
    }

    pub fn info(&self) -> super::StreamInfo {
        super::StreamInfo {
            id: self.id,
            content_type: self.content_type.clone(),
            tail: self.tail,
            closed: self.closed,
            expiry: self.expiry,
            earliest: self.earliest(),
        }
    }

    /// Checks a client-facing access: expired streams are absent, soft-deleted
    /// ones are gone.
    pub fn check_visible(&self, now: Millis) -> Result<(), StorageError> {
        if self.soft_deleted {
            Err(StorageError::Gone)
        } else if self.is_expired(now) {
            Err(StorageError::NotFound)
        } else {
            Ok(())
        }
    }
}

/// The media type without parameters, lowercased: what stream types compare by.
pub fn essence(content_type: &str) -> String {
    bare(content_type).to_ascii_lowercase()
}

/// The media type without parameters, as written (compare it ignoring
/// ASCII case). Every append compares types: this allocates nothing.
fn bare(content_type: &str) -> &str {
    // Bytes, not `split_once(';')` and `trim()`: a char searcher and the
    // Unicode whitespace table cost ~250 instructions per call, and an
    // append compares types four times (callgrind, BENCHMARKS.md). Header
    // values are ASCII, so ASCII whitespace is all there is to trim.
    let end = content_type
        .bytes()
        .position(|b| b == b';')
        .unwrap_or(content_type.len());
    content_type[..end].trim_ascii()
}

/// True for the JSON mode content type.
pub fn is_json(content_type: &str) -> bool {
    const JSON: &[u8] = b"application/json";
    let b = content_type.trim_ascii_start().as_bytes();
    // Other types differ within the first 16 bytes: no need to find the
    // end of the type (~130 instructions, twice per append).
    content_type == "application/json"
        || (b.len() >= JSON.len()
            && b[..JSON.len()].eq_ignore_ascii_case(JSON)
            && bare(content_type).eq_ignore_ascii_case("application/json"))
}

/// True when two content types name the same media type.
pub fn same_type(a: &str, b: &str) -> bool {
    // Most appends send the stream's own content type, byte for byte.
    a == b || bare(a).eq_ignore_ascii_case(bare(b))
}

/// Splits a body into stored records.
///
/// Binary streams store the body as one record (none when empty). JSON streams
/// validate the body and store each message followed by `,`; a top-level
/// array is flattened one level. An empty array is an error on append and no
/// records on create. The client's bytes are kept exactly (no re-encoding).
pub fn frame_records(json: bool, body: &Bytes, append: bool) -> Result<Vec<Bytes>, StorageError> {
    if !json {
        return Ok(if body.is_empty() {
            Vec::new()
        } else {
            vec![body.clone()]
        });
    }
    if body.is_empty() {
        return if append {
            Err(StorageError::EmptyBody)
        } else {
            Ok(Vec::new())
        };
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| StorageError::InvalidJson(format!("body is not UTF-8: {e}")))?;
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| StorageError::InvalidJson(e.to_string()))?;
    let raw = value.get();
    let messages: Vec<&RawValue> = if raw.starts_with('[') {
        serde_json::from_str(raw).map_err(|e| StorageError::InvalidJson(e.to_string()))?
    } else {
        vec![value]
    };
    if messages.is_empty() {
        return if append {
            Err(StorageError::EmptyJsonArray)
        } else {
            Ok(Vec::new())
        };
    }
    let total: usize = messages.iter().map(|m| m.get().len() + 1).sum();
    let mut buf = BytesMut::with_capacity(total);
    let mut ends = Vec::with_capacity(messages.len());
    for m in &messages {
        buf.put_slice(m.get().as_bytes());
        buf.put_u8(b',');
        ends.push(buf.len());
    }
    let mut all = buf.freeze();
    let mut records = Vec::with_capacity(ends.len());
    let mut start = 0;
    for end in ends {
        records.push(all.split_to(end - start));
        start = end;
    }
    Ok(records)
}

/// The tail after appending `records` at `tail`.
pub fn advance(tail: Offset, records: &[Bytes]) -> Offset {
    let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
    Offset::new(tail.seq + records.len() as u64, tail.pos + bytes)
}

/// What a fork request resolves to, given its source.
pub fn fork_expiry(source: Expiry, requested: Option<Expiry>) -> (Expiry, bool) {
    match requested {
        Some(e) => (e, false),
        None => (source, source != Expiry::Never),
    }
}

/// True when an existing stream matches a `PUT`'s configuration (the
/// idempotent-create rule): content type, expiry, closure and fork origin.
pub fn create_matches(meta: &StreamMeta, req: &CreateRequest) -> bool {
    let type_ok = match (&req.content_type, &req.fork) {
        (Some(ct), _) => same_type(ct, &meta.content_type),
        (None, Some(_)) => true,
        (None, None) => same_type(DEFAULT_CONTENT_TYPE, &meta.content_type),
    };
    let expiry_ok = match req.expiry {
        Some(e) => e == meta.expiry,
        None => meta.expiry == Expiry::Never || meta.expiry_inherited,
    };
    let fork_ok = match (&req.fork, &meta.fork) {
        (None, None) => true,
        (Some(spec), Some(link)) => fork_matches(spec, link),
        _ => false,
    };
    type_ok && expiry_ok && fork_ok && req.closed == meta.closed
}

fn fork_matches(spec: &ForkSpec, link: &ForkLink) -> bool {
    spec.source == link.source
        && spec.sub_offset == link.sub_offset
        && spec.offset.is_none_or(|o| o == link.anchor)
}

/// What an accepted append commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Records to store, in order (possibly none for a close-only request).
    pub records: Vec<Bytes>,
    /// The tail after the records.
    pub new_tail: Offset,
    /// Close the stream in the same step.
    pub close: bool,
    /// Producer state to store, for the request's producer id (the plan
    /// borrows it from the request rather than copying it).
    pub producer: Option<ProducerState>,
    /// New `Stream-Seq` to remember.
    pub stream_seq: Option<String>,
}

/// The decision about an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    Write(WritePlan),
    /// Nothing to write: a producer retry, or a close of a closed stream.
    /// Carries the producer's `(epoch, highest seq)` to echo, if any.
    Duplicate(Option<(u64, u64)>),
}

enum ProducerCheck {
    Accept(ProducerState),
    Duplicate(ProducerState),
}

fn check_producer(
    state: Option<&ProducerState>,
    p: &ProducerHeaders,
) -> Result<ProducerCheck, StorageError> {
    let Some(state) = state else {
        // A producer the stream has not seen starts at seq 0 in any epoch.
        return if p.seq == 0 {
            Ok(ProducerCheck::Accept(ProducerState {
                epoch: p.epoch,
                last_seq: 0,
            }))
        } else {
            Err(StorageError::SeqGap {
                expected: 0,
                received: p.seq,
            })
        };
    };
    if p.epoch < state.epoch {
        return Err(StorageError::StaleEpoch {
            current: state.epoch,
            received: p.epoch,
        });
    }
    if p.epoch > state.epoch {
        return if p.seq == 0 {
            Ok(ProducerCheck::Accept(ProducerState {
                epoch: p.epoch,
                last_seq: 0,
            }))
        } else {
            Err(StorageError::EpochMustStartAtZero)
        };
    }
    if p.seq <= state.last_seq {
        Ok(ProducerCheck::Duplicate(*state))
    } else if p.seq == state.last_seq + 1 {
        Ok(ProducerCheck::Accept(ProducerState {
            epoch: p.epoch,
            last_seq: p.seq,
        }))
    } else {
        Err(StorageError::SeqGap {
            expected: state.last_seq + 1,
            received: p.seq,
        })
    }
}

/// The `If-Match` precondition: refused when combined with producer
/// headers, failed when it names another tail than the stream's.
fn check_if_match(meta: &StreamMeta, req: &AppendRequest) -> Result<(), StorageError> {
    let Some(expected) = req.if_match else {
        return Ok(());
    };
    if req.producer.is_some() {
        return Err(StorageError::IfMatchWithProducer);
    }
    if expected != meta.tail {
        return Err(StorageError::PreconditionFailed {
            tail: meta.tail,
            closed: meta.closed,
        });
    }
    Ok(())
}

/// Decides what an append does to a visible stream (the caller has already
/// answered `NotFound` / `Gone`). Precedence follows the protocol (and the
/// `If-Match` proposal's order): an empty body without `Stream-Closed` is
/// malformed whatever the stream's state; then closure, content type,
/// `If-Match` (with producer headers a 400, else a tail mismatch), producer
/// fencing and dedup, `Stream-Seq`, and the body itself.
///
/// On a closed stream a close-only request is idempotent unless its
/// `If-Match` names another tail (a 412 that reports the closure).
pub fn plan_append(meta: &StreamMeta, req: &AppendRequest) -> Result<AppendPlan, StorageError> {
    if req.body.is_empty() && !req.close {
        return Err(StorageError::EmptyBody);
    }
    let producer_state = req
        .producer
        .as_ref()
        .map(|p| (p, meta.producers.get(&p.id)));

    if meta.closed {
        if req.if_match.is_none()
            && let Some((p, state)) = producer_state
        {
            // A retry of the closing request (or of anything older) is a
            // duplicate; a fenced producer learns it is fenced.
            match check_producer(state, p) {
                Ok(ProducerCheck::Duplicate(s)) => {
                    return Ok(AppendPlan::Duplicate(Some((s.epoch, s.last_seq))));
                }
                Err(e @ StorageError::StaleEpoch { .. }) => return Err(e),
                _ => {}
            }
        }
        if req.body.is_empty() && req.close {
            check_if_match(meta, req)?;
            let echo = producer_state.and_then(|(_, s)| s.map(|s| (s.epoch, s.last_seq)));
            return Ok(AppendPlan::Duplicate(echo));
        }
        return Err(StorageError::Closed { tail: meta.tail });
    }

    if !req.body.is_empty() {
        match &req.content_type {
            None => return Err(StorageError::MissingContentType),
            Some(ct) if !same_type(ct, &meta.content_type) => {
                return Err(StorageError::ContentTypeMismatch {
                    expected: meta.content_type.clone(),
                });
            }
            Some(_) => {}
        }
    }
    check_if_match(meta, req)?;

    let mut producer = None;
    if let Some((p, state)) = producer_state {
        match check_producer(state, p)? {
            ProducerCheck::Duplicate(s) => {
                return Ok(AppendPlan::Duplicate(Some((s.epoch, s.last_seq))));
            }
            ProducerCheck::Accept(s) => producer = Some(s),
        }
    }

    if let Some(seq) = &req.stream_seq
        && let Some(last) = &meta.last_stream_seq
        && seq.as_bytes() <= last.as_bytes()
    {
        return Err(StorageError::SeqRegression {
            last: last.clone(),
            received: seq.clone(),
        });
    }

    let records = if req.body.is_empty() {
        Vec::new() // close-only
    } else {
        frame_records(is_json(&meta.content_type), &req.body, true)?
    };
    Ok(AppendPlan::Write(WritePlan {
        new_tail: advance(meta.tail, &records),
        records,
        close: req.close,
        producer,
        stream_seq: req.stream_seq.clone(),
    }))
}

/// Applies a committed plan to the in-memory metadata.
pub fn apply_write(
    meta: &mut StreamMeta,
    plan: &WritePlan,
    producer: Option<&ProducerHeaders>,
    now: Millis,
) {
    meta.tail = plan.new_tail;
    meta.last_access = now;
    if let (Some(state), Some(p)) = (plan.producer, producer) {
        set_producer(&mut meta.producers, &p.id, state);
    }
    if let Some(seq) = &plan.stream_seq {
        meta.last_stream_seq = Some(seq.clone());
    }
    if plan.close {
        meta.closed = true;
        meta.closed_by = producer.cloned();
    }
}

/// Records producer `id`'s new state; a producer already known keeps its
/// key (no new `String`, no freed one: the common case of every append).
pub fn set_producer(
    producers: &mut HashMap<String, ProducerState>,
    id: &str,
    state: ProducerState,
) {
    match producers.get_mut(id) {
        Some(s) => *s = state,
        None => {
            producers.insert(id.to_owned(), state);
        }
    }
}

#[cfg(test)]
mod tests;
