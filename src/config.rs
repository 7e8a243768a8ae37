//! Server settings and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which backend stores the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// In process memory; lost on exit (development and tests).
    Memory,
    /// Append-log files in the data directory (crash-safe).
    File,
    /// A redb database in the data directory (crash-safe, ACID).
    Acid,
}

/// When a durable backend flushes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Acknowledge only after fsync (concurrent writes share one fsync).
    Always,
    /// Acknowledge after the write reaches the OS; fsync in the background
    /// every `sync_interval`. A crash may lose that window.
    Interval,
}

/// Limits on what a client may send and what one read returns.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted by a PUT or POST, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Longest stream name, in bytes (400 above).
    pub max_name_bytes: usize,
    /// Soft limit on the bytes one catch-up read or SSE event returns.
    pub chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 * 1024 * 1024,
            max_name_bytes: 1024,
            chunk_bytes: 1024 * 1024,
        }
    }
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub storage: StorageKind,
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    /// Background fsync period for `SyncMode::Interval`.
    pub sync_interval: Duration,
    /// How long a long-poll waits for data before answering 204.
    pub long_poll_timeout: Duration,
    /// How long an SSE connection stays open before the server closes it so
    /// that the client reconnects (lets CDNs collapse requests).
    pub sse_reconnect: Duration,
    /// Interval between SSE keep-alive comments.
    pub sse_keepalive: Duration,
    /// Width of a cursor interval.
    pub cursor_interval: Duration,
    /// How often expired streams are swept.
    pub sweep_interval: Duration,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4437)),
            storage: StorageKind::File,
            data_dir: PathBuf::from("./data"),
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            long_poll_timeout: Duration::from_secs(30),
            sse_reconnect: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            cursor_interval: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(1),
            limits: Limits::default(),
        }
    }
}

/// Parses a duration such as `500ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h (e.g. 500ms, 5s, 2m)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} must start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{s:?} has an unknown unit {unit:?}; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
