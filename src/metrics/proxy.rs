//! The proxy's metrics: pipes running now, bytes piped into streams, how
//! pipes ended, and upstream failures by kind.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How an upstream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Resolve, connect, TLS or the exchange failed before a response.
    Unreachable,
    /// No response headers within `header_timeout`.
    Timeout,
    /// A 3xx (refused).
    Redirect,
    /// A non-2xx, non-3xx status.
    Status,
    /// The body failed mid-stream.
    Body,
    /// The body paused longer than `body_idle_timeout`.
    Idle,
}

impl UpstreamError {
    const ALL: [UpstreamError; 6] = [
        UpstreamError::Unreachable,
        UpstreamError::Timeout,
        UpstreamError::Redirect,
        UpstreamError::Status,
        UpstreamError::Body,
        UpstreamError::Idle,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "unreachable",
            UpstreamError::Timeout => "header_timeout",
            UpstreamError::Redirect => "redirect",
            UpstreamError::Status => "status",
            UpstreamError::Body => "body",
            UpstreamError::Idle => "body_idle_timeout",
        }
    }
}

/// The proxy's counters; a part of [`super::Metrics`].
#[derive(Default)]
pub struct ProxyMetrics {
    active: AtomicU64,
    bytes: AtomicU64,
    errors: [AtomicU64; UpstreamError::ALL.len()],
}

impl ProxyMetrics {
    /// A pipe started; [`ProxyMetrics::pipe_ended`] when it ends.
    pub fn pipe_started(&self) {
        self.active.fetch_add(1, Relaxed);
    }

    pub fn pipe_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// Pipes running now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Upstream body bytes committed to a stream.
    pub fn piped(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Appends the Prometheus text of these metrics.
    pub fn render(&self, o: &mut String) {
        let _ = write!(
            o,
            "# HELP ds_proxy_active_pipes Upstream responses being piped into streams now.\n\
             # TYPE ds_proxy_active_pipes gauge\nds_proxy_active_pipes {}\n\
             # HELP ds_proxy_piped_bytes_total Upstream body bytes committed to proxy streams.\n\
             # TYPE ds_proxy_piped_bytes_total counter\nds_proxy_piped_bytes_total {}\n\
             # HELP ds_proxy_upstream_errors_total Upstream failures, by kind.\n\
             # TYPE ds_proxy_upstream_errors_total counter\n",
            self.active.load(Relaxed),
            self.bytes.load(Relaxed)
        );
        for kind in UpstreamError::ALL {
            let _ = writeln!(
                o,
                "ds_proxy_upstream_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.errors[kind as usize].load(Relaxed)
            );
        }
    }
}
