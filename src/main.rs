//! The `durable-streams` binary: gather the configuration layers, set up
//! logging, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use durable_streams::config::{
    self, LogFormat, ServerConfig, StorageKind, SyncMode, parse_duration,
};

#[derive(Parser)]
#[command(
    name = "durable-streams",
    version,
    about = "A durable server for the Durable Streams protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<ServeArgs>),
    /// Probe a running server's health endpoint; exit 0 when it answers 200
    /// (for container HEALTHCHECKs).
    Health {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:4437/healthz")]
        url: String,
        /// Give up after this long (e.g. 2s).
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        timeout: std::time::Duration,
    },
}

/// Command-line flags: the last configuration layer. Every flag is optional
/// and overrides the file and the environment (see config.example.toml).
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file (see config.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Storage backend.
    #[arg(long, value_enum)]
    storage: Option<StorageKind>,
    /// Directory for the durable backends.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// When durable backends flush to disk.
    #[arg(long, value_enum)]
    sync: Option<SyncMode>,
    /// Background fsync period with `--sync interval` (e.g. 100ms).
    #[arg(long, value_parser = parse_duration)]
    sync_interval: Option<Duration>,
    /// How long a long-poll waits for data (e.g. 500ms, 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    long_poll_timeout: Option<Duration>,
    /// How long an SSE connection stays open before the server closes it.
    #[arg(long, value_parser = parse_duration)]
    sse_reconnect: Option<Duration>,
    /// Width of a Stream-Cursor interval (e.g. 20s).
    #[arg(long, value_parser = parse_duration)]
    cursor_interval: Option<Duration>,
    /// Largest accepted request body in bytes.
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Longest accepted stream name in bytes.
    #[arg(long)]
    max_name_bytes: Option<usize>,
    /// Soft limit on the bytes one catch-up read returns.
    #[arg(long)]
    chunk_bytes: Option<usize>,
    /// Cap on the memory backend's stream bytes (0: none); writes past it get 507.
    #[arg(long)]
    memory_limit_bytes: Option<u64>,
    /// An origin allowed by CORS ("*" for any); repeat for several.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Log level (RUST_LOG, when set, overrides it).
    #[arg(long, value_parser = ["trace", "debug", "info", "warn", "error", "off"])]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Applies the flags that were given over `c`.
    fn apply(self, c: &mut ServerConfig) {
        fn set<T>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut c.bind, self.bind);
        set(&mut c.storage, self.storage);
        set(&mut c.data_dir, self.data_dir);
        set(&mut c.sync, self.sync);
        set(&mut c.sync_interval, self.sync_interval);
        set(&mut c.long_poll_timeout, self.long_poll_timeout);
        set(&mut c.sse_reconnect, self.sse_reconnect);
        set(&mut c.cursor_interval, self.cursor_interval);
        set(&mut c.limits.max_body_bytes, self.max_body_bytes);
        set(&mut c.limits.max_name_bytes, self.max_name_bytes);
        set(
            &mut c.limits.chunk_bytes,
            self.chunk_bytes.map(|v| v.max(1)),
        );
        set(&mut c.memory_limit_bytes, self.memory_limit_bytes);
        if !self.cors_origins.is_empty() {
            c.cors_origins = self.cors_origins;
        }
        set(&mut c.log_level, self.log_level);
        set(&mut c.log_format, self.log_format);
    }
}

/// Defaults < file < environment < flags, then the tokens file and the
/// checks that span keys.
fn configure(args: ServeArgs) -> Result<ServerConfig, config::ConfigError> {
    let env = std::env::vars()
        .filter(|(k, _)| k.starts_with("DS_"))
        .collect();
    let mut c = config::load(args.config.as_deref(), &env)?;
    args.apply(&mut c);
    config::load_tokens_file(&mut c)?;
    config::validate(&c)?;
    Ok(c)
}

/// Logs go to stderr; stdout carries only the `listening on` line.
fn init_logging(c: &ServerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&c.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        Some(Command::Health { url, timeout }) => {
            return match durable_streams::healthcheck::probe(&url, timeout) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("durable-streams health: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => ServeArgs::default(),
    };
    let config = match configure(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("durable-streams: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    match durable_streams::server::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable-streams: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
