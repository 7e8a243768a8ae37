//! Piping one upstream response body into its stream (proxy spec section
//! 8.2): chunks are batched (flushed at [`FLUSH_BYTES`] or [`FLUSH_AFTER`]
//! after the first buffered byte, whichever comes first), and however the
//! pipe ends it flushes what it holds and closes the stream
//! (`Stream-Closed`), so readers always reach the end:
//!
//! | end | what is written | metric |
//! | --- | --- | --- |
//! | upstream body complete | the rest, closed | — |
//! | abort (`PATCH`, `DELETE`) | what was received, closed | — |
//! | upstream error mid-body | what was received, closed | `body` |
//! | body idle past `body_idle_timeout` | what was received, closed | `body_idle_timeout` |
//! | server shutdown | what was received, closed | — |
//! | stream closed or deleted by someone else | nothing more | — |
//!
//! A process killed without shutdown (kill -9, power loss) writes nothing
//! more: the stream keeps what was committed and stays open, without a
//! closer, until it expires with its URL.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::metrics::proxy::UpstreamError;
use crate::storage::handle::StorageHandle;
use crate::storage::{AppendRequest, StorageError, now_ms};

/// Flush once this many bytes are buffered.
pub const FLUSH_BYTES: usize = 4096;
/// Flush this long after the first byte of a batch arrived.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// How a pipe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Complete,
    Aborted,
    Shutdown,
    UpstreamFailed,
    Idle,
    /// The stream was closed or deleted under the pipe (an abort on
    /// another node, a `DELETE`), or storage failed.
    Storage,
}

/// What a pipe writes to and answers to.
pub struct Pipe {
    pub storage: StorageHandle,
    pub metrics: Arc<Metrics>,
    /// The stream's name.
    pub name: String,
    /// The stream's content type (every append carries it).
    pub content_type: String,
    pub idle_timeout: Duration,
    /// Cancelled by an abort.
    pub abort: CancellationToken,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

impl Pipe {
    /// Runs the pipe to its end.
    pub async fn run(self, mut body: Incoming) -> End {
        let mut buf = BytesMut::new();
        let mut flush_at: Option<Instant> = None;
        let mut idle_at = Instant::now() + self.idle_timeout;
        let end = loop {
            let deadline = flush_at.unwrap_or(idle_at).min(idle_at);
            tokio::select! {
                biased;
                _ = self.abort.cancelled() => break End::Aborted,
                _ = self.shutdown.cancelled() => break End::Shutdown,
                frame = body.frame() => match frame {
                    None => break End::Complete,
                    Some(Err(e)) => {
                        tracing::info!(stream = %self.name, error = %e, "upstream body failed");
                        self.metrics.proxy.upstream_error(UpstreamError::Body);
                        break End::UpstreamFailed;
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        if data.is_empty() {
                            continue;
                        }
                        idle_at = Instant::now() + self.idle_timeout;
                        if buf.is_empty() {
                            flush_at = Some(Instant::now() + FLUSH_AFTER);
                        }
                        buf.extend_from_slice(&data);
                        if buf.len() >= FLUSH_BYTES {
                            if self.write(buf.split().freeze(), false).await.is_err() {
                                break End::Storage;
                            }
                            flush_at = None;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if flush_at.is_some_and(|at| at <= Instant::now()) {
                        if self.write(buf.split().freeze(), false).await.is_err() {
                            break End::Storage;
                        }
                        flush_at = None;
                    } else if idle_at <= Instant::now() {
                        self.metrics.proxy.upstream_error(UpstreamError::Idle);
                        break End::Idle;
                    }
                }
            }
        };
        // The upstream connection closes when its body is dropped: before
        // the final write, so an abort stops the upstream at once.
        drop(body);
        if end != End::Storage {
            let _ = self.write(buf.freeze(), true).await;
        }
        end
    }

    /// Appends `data` (closing the stream with `close`); an empty, open
    /// write is skipped.
    async fn write(&self, data: Bytes, close: bool) -> Result<(), StorageError> {
        if data.is_empty() && !close {
            return Ok(());
        }
        let len = data.len() as u64;
        let mut req = AppendRequest::new(Some(&self.content_type), data, now_ms());
        req.close = close;
        match self.storage.append(&self.name, req).await {
            Ok(_) => {
                self.metrics.proxy.piped(len);
                Ok(())
            }
            Err(e) => {
                if !matches!(e, StorageError::Closed { .. } | StorageError::NotFound) {
                    tracing::warn!(stream = %self.name, error = %e, "proxy pipe could not write");
                }
                Err(e)
            }
        }
    }
}
