//! The requests a backend is given and the answers it gives back: what
//! crosses the [`Storage`](super::Storage) contract besides errors.

use bytes::Bytes;

use super::{Expiry, Millis, StorageError, model};
use crate::offset::{Offset, ReadFrom};

/// A fork request, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkSpec {
    /// Name of the source stream (path under the stream mount).
    pub source: String,
    /// `Stream-Fork-Offset`; `None` means the source's current tail.
    pub offset: Option<Offset>,
    /// `Stream-Fork-Sub-Offset` (0 when absent).
    pub sub_offset: u64,
}

/// Everything a `PUT` asks for.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// `Content-Type`; `None` means the default, or the source's type for a fork.
    pub content_type: Option<String>,
    /// `Stream-TTL` / `Stream-Expires-At`; `None` when neither was sent.
    pub expiry: Option<Expiry>,
    /// `Stream-Closed: true`.
    pub closed: bool,
    pub fork: Option<ForkSpec>,
    /// The initial body (may be empty).
    pub body: Bytes,
    pub now: Millis,
}

impl CreateRequest {
    /// A plain create: `content_type` (or the default), no expiry, open, not
    /// a fork, with `body` as its initial data.
    pub fn new(content_type: Option<&str>, body: impl Into<Bytes>, now: Millis) -> Self {
        CreateRequest {
            content_type: content_type.map(str::to_string),
            expiry: None,
            closed: false,
            fork: None,
            body: body.into(),
            now,
        }
    }
}

/// The idempotent-producer headers of an append.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerHeaders {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// Everything a `POST` asks for.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// `Content-Type` as sent (checked only when the body is non-empty).
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerHeaders>,
    /// `If-Match: "<offset>"`: append only if the stream's tail is exactly
    /// this offset (optimistic concurrency). Compared by
    /// [`model::plan_append`] under the stream's lock, so the comparison and
    /// the write are one atomic step on every backend.
    pub if_match: Option<Offset>,
    pub now: Millis,
}

impl AppendRequest {
    /// A plain append of `body` as `content_type`: no close, no
    /// `Stream-Seq`, no producer.
    pub fn new(content_type: Option<&str>, body: impl Into<Bytes>, now: Millis) -> Self {
        AppendRequest {
            content_type: content_type.map(str::to_string),
            body: body.into(),
            close: false,
            stream_seq: None,
            producer: None,
            if_match: None,
            now,
        }
    }

    /// The same append, conditional on the stream's tail being `tail`
    /// (`If-Match`).
    pub fn if_match(mut self, tail: Offset) -> Self {
        self.if_match = Some(tail);
        self
    }

    /// The same append sent by idempotent producer `id` with `epoch` and `seq`.
    pub fn by_producer(mut self, id: &str, epoch: u64, seq: u64) -> Self {
        self.producer = Some(ProducerHeaders {
            id: id.to_string(),
            epoch,
            seq,
        });
        self
    }
}

/// A read of stored bytes.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    pub from: ReadFrom,
    /// Soft limit on the bytes returned; at least one record (binary: at
    /// least one byte) is returned when data exists.
    pub max_bytes: usize,
    /// A larger soft limit for a backend that lends the bytes it returns
    /// (holds or maps them, without a copy: memory, file): it may return up
    /// to this many, or up to [`view::LEND_RECORDS`] records, before it
    /// stops at `max_bytes`. Backends that copy ignore it.
    ///
    /// [`view::LEND_RECORDS`]: crate::storage::view::LEND_RECORDS
    pub lend_bytes: usize,
    pub now: Millis,
}

impl ReadRequest {
    /// A read of everything from `from`, without a byte limit.
    pub fn all(from: ReadFrom, now: Millis) -> Self {
        ReadRequest {
            from,
            max_bytes: usize::MAX,
            lend_bytes: usize::MAX,
            now,
        }
    }
}

/// What a client may learn about a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Identifies this incarnation of the name: a stream deleted and created
    /// again gets a new id (used in ETags).
    pub id: u64,
    pub content_type: String,
    pub tail: Offset,
    pub closed: bool,
    pub expiry: Expiry,
    /// The first retained position ([`StreamMeta::earliest`](super::StreamMeta::earliest)).
    pub earliest: Offset,
}

impl StreamInfo {
    /// True for `application/json` streams (message framing, array responses).
    pub fn is_json(&self) -> bool {
        model::is_json(&self.content_type)
    }

    /// Where a read from `from` starts, and whether that offset still needs
    /// validating against the stream's records (a client's `At`). The
    /// start of the stream is its earliest retained position; a position
    /// before it was trimmed away ([`StorageError::Trimmed`]); one past the
    /// tail is not a position of the stream. Every backend's read calls it.
    pub fn read_start(&self, from: ReadFrom) -> Result<(Offset, bool), StorageError> {
        match from {
            ReadFrom::Start => Ok((self.earliest, false)),
            ReadFrom::Tail => Ok((self.tail, false)),
            ReadFrom::At(o) if o.pos > self.tail.pos => Err(StorageError::InvalidOffset),
            ReadFrom::At(o) if o.pos < self.earliest.pos => Err(StorageError::Trimmed {
                earliest: self.earliest,
            }),
            ReadFrom::At(o) => Ok((o, true)),
        }
    }
}

/// What a trim did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrimOutcome {
    /// The stream after the trim (its `earliest` is the retained start).
    pub info: StreamInfo,
    /// True when this call moved the trim point (false: already trimmed
    /// that far, an idempotent retry).
    pub moved: bool,
}

/// The result of a `PUT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(StreamInfo),
    /// The stream already existed with the same configuration.
    Exists(StreamInfo),
}

/// The result of a `POST` that did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// New data (and/or the close) was committed.
    Appended {
        info: StreamInfo,
        /// `(epoch, seq)` accepted for the producer, when producer headers were sent.
        producer: Option<(u64, u64)>,
    },
    /// A producer retry of something already committed: nothing was written.
    Duplicate {
        info: StreamInfo,
        /// The producer's current epoch and highest accepted seq.
        producer: Option<(u64, u64)>,
    },
}

/// Stored bytes returned by a read.
#[derive(Clone, Debug)]
pub struct ReadOutcome {
    pub info: StreamInfo,
    /// The resolved start position.
    pub start: Offset,
    /// Stored bytes in order. For JSON streams each message is stored
    /// followed by one `,`; the concatenation therefore ends with `,` when
    /// non-empty.
    pub chunks: Vec<Bytes>,
    /// Where the next read continues.
    pub next: Offset,
}

impl ReadOutcome {
    /// True when the read reached the stream's tail.
    pub fn up_to_date(&self) -> bool {
        self.next == self.info.tail
    }

    /// True when the read reached the tail of a closed stream (EOF).
    pub fn at_eof(&self) -> bool {
        self.info.closed && self.up_to_date()
    }

    /// Total stored bytes returned.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }

    /// The returned bytes in one buffer.
    pub fn concat(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        all
    }
}
