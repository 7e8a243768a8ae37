//! Putting it together: open storage, start background tasks, bind, serve,
//! and shut down cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerConfig, StorageKind};
use crate::http::{AppState, router};
use crate::notify::WakeHub;
use crate::storage::acid::AcidStorage;
use crate::storage::file::FileStorage;
use crate::storage::memory::MemoryStorage;
use crate::storage::{Storage, now_ms};

/// How long shutdown waits for in-flight requests before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Opens the configured backend.
pub fn open_storage(
    config: &ServerConfig,
    hub: Arc<WakeHub>,
) -> Result<Arc<dyn Storage>, Box<dyn std::error::Error + Send + Sync>> {
    match config.storage {
        StorageKind::Memory => Ok(Arc::new(MemoryStorage::with_limit(
            hub,
            config.memory_limit_bytes,
        ))),
        StorageKind::File | StorageKind::Acid => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                format!(
                    "cannot create data directory {}: {e}",
                    config.data_dir.display()
                )
            })?;
            let opened: Arc<dyn Storage> = if config.storage == StorageKind::File {
                Arc::new(FileStorage::open(
                    &config.data_dir,
                    config.sync,
                    config.sync_interval,
                    hub,
                )?)
            } else {
                Arc::new(AcidStorage::open(&config.data_dir, hub)?)
            };
            Ok(opened)
        }
    }
}

/// Builds the application state around an opened backend.
pub fn state(config: ServerConfig, storage: Arc<dyn Storage>, hub: Arc<WakeHub>) -> AppState {
    AppState {
        storage,
        hub,
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        metrics: crate::metrics::Metrics::new(),
        subs: crate::subscriptions::Subscriptions::new(),
    }
}

/// Periodically removes expired streams until shutdown.
fn spawn_sweeper(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.sweep_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let now = now_ms();
            if let Err(e) = state.storage(move |s| s.sweep_expired(now)).await {
                tracing::warn!(error = ?e, "expiry sweep failed");
            }
        }
    });
}

/// Serves until `stop` resolves, then ends live reads, drains connections and
/// flushes storage.
pub async fn run(
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let hub = WakeHub::new();
    let storage = open_storage(&config, Arc::clone(&hub))?;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    let state = state(config, storage, hub);
    spawn_sweeper(&state);
    crate::subscriptions::api::spawn_worker(state.clone());
    let app = router(state.clone());
    // Tests and scripts wait for exactly this line.
    println!("durable-streams listening on http://{addr}");
    tracing::info!(%addr, storage = ?state.config.storage, "listening");
    let token = state.shutdown.clone();
    let timeouts = crate::http::serve::Timeouts {
        header_read: state.config.header_read_timeout,
        send: state.config.send_timeout,
    };
    let server = crate::http::serve::serve(listener, app, timeouts, token.clone());
    let mut server = tokio::spawn(server);
    tokio::select! {
        res = &mut server => res??,
        _ = stop => {
            tracing::info!("shutting down: ending live reads and draining connections");
            // Long-polls answer 204 and SSE streams end as soon as this fires.
            token.cancel();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(res) => res??,
                Err(_) => {
                    tracing::warn!("grace period over; closing remaining connections");
                    server.abort();
                }
            }
        }
    }
    let storage = Arc::clone(&state.storage);
    tokio::task::spawn_blocking(move || storage.shutdown()).await??;
    tracing::info!("storage flushed; bye");
    Ok(())
}
