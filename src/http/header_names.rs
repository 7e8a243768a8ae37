//! The protocol's header names, apart from their parsing
//! ([`headers`](super::headers)) so that the error mapping
//! ([`error`](super::error)) can name them without depending on the parser
//! (which itself answers with errors).

use axum::http::HeaderName;

pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
/// The first retained offset of a trimmed stream (our extension).
pub const STREAM_EARLIEST_OFFSET: HeaderName = HeaderName::from_static("stream-earliest-offset");
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");

/// Headers a browser page may read (CORS `Access-Control-Expose-Headers`).
pub static EXPOSED: [HeaderName; 18] = [
    STREAM_NEXT_OFFSET,
    STREAM_CLOSED,
    STREAM_EARLIEST_OFFSET,
    STREAM_UP_TO_DATE,
    STREAM_CURSOR,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_SSE_DATA_ENCODING,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    PRODUCER_EXPECTED_SEQ,
    PRODUCER_RECEIVED_SEQ,
    HeaderName::from_static("etag"),
    HeaderName::from_static("location"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("retry-after"),
    HeaderName::from_static("upstream-content-type"),
    HeaderName::from_static("upstream-status"),
];
