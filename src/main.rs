//! The `durable-streams` binary: parse the command line, set up logging, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use durable_streams::config::{ServerConfig, StorageKind, SyncMode, parse_duration};

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
    Serve(ServeArgs),
}

#[derive(clap::Args, Default)]
struct ServeArgs {
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
    /// How long a long-poll waits for data (e.g. 500ms, 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    long_poll_timeout: Option<Duration>,
    /// How long an SSE connection stays open before the server closes it.
    #[arg(long, value_parser = parse_duration)]
    sse_reconnect: Option<Duration>,
    /// Largest accepted request body in bytes.
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Longest accepted stream name in bytes.
    #[arg(long)]
    max_name_bytes: Option<usize>,
    /// Soft limit on the bytes one catch-up read returns.
    #[arg(long)]
    chunk_bytes: Option<usize>,
}

impl ServeArgs {
    fn into_config(self) -> ServerConfig {
        let mut c = ServerConfig::default();
        if let Some(v) = self.bind {
            c.bind = v;
        }
        if let Some(v) = self.storage {
            c.storage = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.sync {
            c.sync = v;
        }
        if let Some(v) = self.long_poll_timeout {
            c.long_poll_timeout = v;
        }
        if let Some(v) = self.sse_reconnect {
            c.sse_reconnect = v;
        }
        if let Some(v) = self.max_body_bytes {
            c.limits.max_body_bytes = v;
        }
        if let Some(v) = self.max_name_bytes {
            c.limits.max_name_bytes = v;
        }
        if let Some(v) = self.chunk_bytes {
            c.limits.chunk_bytes = v.max(1);
        }
        c
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => ServeArgs::default(),
    };
    match durable_streams::server::run(args.into_config(), shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable-streams: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
