//! Putting it together: open storage, start background tasks, bind, serve,
//! and shut down cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerConfig, StorageKind};
use crate::http::front::Front;
use crate::http::jwt::Verifier;
use crate::http::limit::Limiter;
use crate::http::secure::Tls;
use crate::http::{AppState, Shared};
use crate::notify::WakeHub;
use crate::storage::acid::AcidStorage;
use crate::storage::file::FileStorage;
use crate::storage::handle::StorageHandle;
use crate::storage::memory::MemoryStorage;
use crate::storage::postgres::{PgOptions, PgStorage};
use crate::storage::{Storage, now_ms};
use crate::subscriptions::delivery::HttpTransport;
use crate::subscriptions::{Subscriptions, worker};
use crate::tls::server::Reloadable;

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
        StorageKind::Postgres => {
            let url = config
                .database_url
                .as_ref()
                .ok_or("--storage postgres needs --database-url")?;
            let options = PgOptions {
                url: url.expose().to_string(),
                pool_size: config.database_pool_size,
                ca_file: config.database_ca_file.clone(),
            };
            Ok(Arc::new(PgStorage::open(&options, hub)?))
        }
    }
}

/// Builds the application state around an opened backend, loading its
/// subscriptions on the calling thread. For tests and embedding (quick on
/// the memory backend); panics if stored subscriptions cannot be read.
/// [`run`] uses [`state_with`] and reports such errors instead.
pub fn state(config: ServerConfig, storage: Arc<dyn Storage>, hub: Arc<WakeHub>) -> AppState {
    let subs = Subscriptions::open(StorageHandle::new(Arc::clone(&storage)))
        .unwrap_or_else(|e| panic!("cannot load subscriptions: {e}"));
    state_with(config, storage, hub, subs)
}

/// Builds the application state around an opened backend and its loaded
/// subscription engine, and routes every stream wake to the engine. The
/// handlers reach the backend through a [`StorageHandle`], as the engine
/// does.
///
/// Panics if `[auth.jwt]` names a JWKS file that cannot be used; [`run`]
/// reports that instead.
pub fn state_with(
    config: ServerConfig,
    storage: Arc<dyn Storage>,
    hub: Arc<WakeHub>,
    subs: Arc<Subscriptions>,
) -> AppState {
    let jwt = Verifier::open(&config.auth.jwt).unwrap_or_else(|e| panic!("auth.jwt: {e}"));
    assemble(config, storage, hub, subs, jwt)
}

fn assemble(
    config: ServerConfig,
    storage: Arc<dyn Storage>,
    hub: Arc<WakeHub>,
    subs: Arc<Subscriptions>,
    jwt: Option<Arc<Verifier>>,
) -> AppState {
    // Weak: the backend owns the hub, and the engine owns the backend.
    let observer = Arc::downgrade(&subs);
    hub.observe(move |name| {
        if let Some(subs) = observer.upgrade() {
            subs.notify(name);
        }
    });
    let metrics = crate::metrics::Metrics::new();
    // `run` has checked webhook_ca_file already; the built-in roots are the
    // fallback only for embedders that skipped that.
    let transport = HttpTransport::new(config.webhook_ca_file.as_deref()).unwrap_or_default();
    let proxy = Arc::new(crate::proxy::Proxy::new(config.proxy.clone(), transport));
    AppState::new(Shared {
        storage: StorageHandle::new(storage),
        hub,
        limiter: Limiter::new(&config.rate_limit, Arc::clone(&metrics)),
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        metrics,
        subs,
        jwt,
        proxy,
    })
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

/// Applies the retention policies every `sweep_interval` until shutdown
/// (nothing to do, and no task, without policies), the stored streams'
/// tails sampled first, before the server answers a request
/// ([`Sweeper::seed`](crate::retention::Sweeper::seed)).
async fn start_retention(state: &AppState) {
    if state.config.retention.is_empty() {
        return;
    }
    let state = state.clone();
    let sweeper = Arc::new(parking_lot::Mutex::new(crate::retention::Sweeper::new(
        state.config.retention.clone(),
    )));
    let (now, seed) = (now_ms(), Arc::clone(&sweeper));
    if let Err(e) = state.storage(move |s| seed.lock().seed(s, now)).await {
        tracing::warn!(error = ?e, "retention: cannot sample the stored streams");
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.sweep_interval.max(MIN_RETENTION_TICK));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let (now, sweeper) = (now_ms(), Arc::clone(&sweeper));
            // The one task holds the sweeper; the lock only hands it over.
            if let Err(e) = state.storage(move |s| sweeper.lock().run(s, now)).await {
                tracing::warn!(error = ?e, "retention pass failed");
            }
        }
    });
}

/// The retention sweeper's shortest period (a zero `sweep_interval` would
/// spin).
const MIN_RETENTION_TICK: std::time::Duration = std::time::Duration::from_millis(100);

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
    let transport = HttpTransport::new(config.webhook_ca_file.as_deref())
        .map_err(|e| format!("webhook_ca_file: {e}"))?;
    let subs = {
        let handle = StorageHandle::new(Arc::clone(&storage));
        tokio::task::spawn_blocking(move || Subscriptions::open(handle))
            .await?
            .map_err(|e| format!("cannot load subscriptions: {e}"))?
    };
    subs.set_transport(Arc::new(transport));
    let jwt = Verifier::open(&config.auth.jwt).map_err(|e| format!("auth.jwt: {e}"))?;
    let state = assemble(config, storage, hub, subs, jwt);
    crate::http::jwks::spawn_refresh(&state);
    spawn_sweeper(&state);
    start_retention(&state).await;
    worker::spawn(state.clone());
    let front = Front::new(state.clone());
    if let Some(cluster) = state.storage.backend().cluster() {
        let url = advertise_url(&state.config, addr);
        tracing::info!(url, "advertising this node to the others");
        cluster.advertise(&url);
    }
    let timeouts = crate::http::serve::Timeouts {
        header_read: state.config.header_read_timeout,
        send: state.config.send_timeout,
    };
    let tls = https(&state, timeouts)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests and scripts wait for exactly this line.
    println!("durable-streams listening on {scheme}://{addr}");
    tracing::info!(%addr, storage = ?state.config.storage, "listening");
    let token = state.shutdown.clone();
    let server = crate::http::serve::serve(
        listener,
        front,
        timeouts,
        state.config.http_engine,
        tls,
        token.clone(),
    );
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
    // Proxy pipes flush and close their streams when the token fires;
    // storage must still be open for that.
    if tokio::time::timeout(SHUTDOWN_GRACE, state.proxy.drain())
        .await
        .is_err()
    {
        tracing::warn!("proxy pipes still writing after the grace period");
    }
    let storage = Arc::clone(state.storage.backend());
    tokio::task::spawn_blocking(move || storage.shutdown()).await??;
    tracing::info!("storage flushed; bye");
    Ok(())
}

/// The HTTPS setup when `tls_cert_file` and `tls_key_file` are set, with
/// a task that reloads both files on every SIGHUP until shutdown.
fn https(
    state: &AppState,
    timeouts: crate::http::serve::Timeouts,
) -> Result<Option<Arc<Tls>>, Box<dyn std::error::Error + Send + Sync>> {
    let c = &state.config;
    let (Some(cert), Some(key)) = (&c.tls_cert_file, &c.tls_key_file) else {
        return Ok(None);
    };
    let resolver = Reloadable::open(cert, key).map_err(|e| format!("tls_cert_file: {e}"))?;
    let config = crate::tls::server::config(Arc::clone(&resolver))?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hup.recv() => if got.is_none() { return },
                    _ = shutdown.cancelled() => return,
                }
                match resolver.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "SIGHUP: TLS certificate not reloaded; the old one stays in use"
                    ),
                }
            }
        });
    }
    Ok(Some(Tls::new(
        config,
        timeouts,
        c.h2_max_concurrent_streams,
    )))
}

/// Where the other nodes reach this one: the configured URL, else the bound
/// address (with this host's name when bound to every interface).
fn advertise_url(config: &ServerConfig, addr: std::net::SocketAddr) -> String {
    if let Some(url) = &config.advertise_url {
        return url.trim_end_matches('/').to_string();
    }
    let scheme = if config.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    if addr.ip().is_unspecified() {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if rc == 0 && len > 0 {
            return format!(
                "{scheme}://{}:{}",
                String::from_utf8_lossy(&buf[..len]),
                addr.port()
            );
        }
    }
    format!("{scheme}://{addr}")
}
