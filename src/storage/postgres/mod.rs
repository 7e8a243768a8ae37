//! The PostgreSQL backend: streams in a database that any number of nodes
//! share (`--storage postgres --database-url postgres://…`).
//!
//! * **Schema**: see [`schema`]; created and migrated by the server itself,
//!   safely when several nodes start at once.
//! * **Writes** ([`writer`]): one writer thread per node batches every
//!   queued mutation into one transaction that locks the rows of the streams
//!   it touches, so appends to a stream are serialized across all nodes;
//!   the decisions are [`txn`](crate::storage::txn)'s, shared with the acid
//!   backend. Acknowledged means committed (with the database's own
//!   durability: `synchronous_commit`, replication).
//! * **Reads** take a pooled connection ([`pool`]) and read the stream's
//!   row, then its records; nothing is cached, so every node reads what any
//!   node committed.
//! * **Wakes** ([`listen`]): commits `NOTIFY ds_wake`; every node `LISTEN`s
//!   and wakes its local readers, re-waking all of them after a lost
//!   connection.
//! * **Sliding TTL**: a read of a TTL stream renews `last_access` in the
//!   row (one `UPDATE`), so every node sees the renewal.
//! * **Database down**: every call answers [`StorageError::Unavailable`]
//!   (503 with `Retry-After`) until connections succeed again; nothing needs
//!   restarting.

mod batch;
mod lead;
mod listen;
mod pool;
mod read;
mod schema;
mod writer;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tokio_postgres_rustls::MakeRustlsConnect;

use self::pool::{Conn, Pool, Target};
use self::read::Committed;
use self::schema::{decode_meta, int, map_err};
use self::writer::{Done, Op, Work};
use super::chain::Chain;
use super::model::{Expiry, StreamMeta};
use super::{
    AppendOutcome, AppendRequest, Cluster, CreateOutcome, CreateRequest, Millis, ReadOutcome,
    ReadRequest, Staging, Storage, StorageError, StreamInfo, TrimOutcome, check_control,
};
use crate::notify::WakeHub;
use crate::offset::Offset;

/// The notification channel of wakes.
const WAKE_CHANNEL: &str = "ds_wake";
/// How long startup waits for the database before giving up.
const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// A libpq-style URL or key=value string.
    pub url: String,
    /// Most pooled connections for reads and control calls (the writer,
    /// the listener and the leadership check hold one more each).
    pub pool_size: usize,
    /// A PEM file of CA certificates trusted for TLS to the database, in
    /// addition to the built-in (Mozilla) roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What the callers, the writer and the listener share.
struct Shared {
    pool: Pool,
    hub: Arc<WakeHub>,
    /// This process's id in wake notifications (its own are skipped).
    node: String,
    stopping: AtomicBool,
    /// The listener holds a live connection (for health reporting).
    listening: AtomicBool,
    /// This node's URL for the others, once the server is listening.
    advertised: Mutex<Option<String>>,
    /// The current leadership term while this node leads, else 0.
    term: AtomicU64,
}

/// The PostgreSQL-backed [`Storage`].
pub struct PgStorage {
    shared: Arc<Shared>,
    tx: RwLock<Option<mpsc::Sender<Op>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PgStorage {
    /// Connects, migrates the schema (waiting up to 30 s for the database to
    /// accept connections), and starts the writer and listener threads.
    pub fn open(options: &PgOptions, hub: Arc<WakeHub>) -> Result<Self, StorageError> {
        let mut config: postgres::Config = options.url.parse().map_err(|e| {
            StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid database URL: {e}"),
            ))
        })?;
        config.connect_timeout(pool::CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("durable-streams");
        }
        let tls = crate::tls::client_config(options.ca_file.as_deref()).map_err(|e| {
            StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("database_ca_file: {e}"),
            ))
        })?;
        let target = Target {
            config,
            tls: MakeRustlsConnect::new(tls),
        };
        let node = format!("{:016x}", rand::random::<u64>());
        // The synchronous client runs its own runtime: keep it off any
        // async worker that may be calling.
        let migrated = {
            let target = target.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + STARTUP_WAIT;
                loop {
                    let result = Conn::open(&target).and_then(|mut c| schema::migrate(&mut c.client));
                    match result {
                        Err(StorageError::Unavailable(e)) if Instant::now() < deadline => {
                            tracing::warn!(error = %e, "postgres storage: waiting for the database");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        other => return other,
                    }
                }
            })
            .join()
            .map_err(|_| StorageError::Io(std::io::Error::other("migration thread panicked")))?
        };
        migrated?;
        let shared = Arc::new(Shared {
            pool: Pool::new(target, options.pool_size),
            hub,
            node,
            stopping: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            advertised: Mutex::new(None),
            term: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-writer".into())
                .spawn(move || writer::run(shared, rx))?
        };
        let listener = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-listen".into())
                .spawn(move || listen::run(shared))?
        };
        let leader = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-lead".into())
                .spawn(move || lead::run(shared))?
        };
        Ok(PgStorage {
            shared,
            tx: RwLock::new(Some(tx)),
            threads: Mutex::new(vec![writer, listener, leader]),
        })
    }

    /// Queues `work` for the writer; the receiver resolves with its answer.
    fn queue(&self, work: Work) -> oneshot::Receiver<Result<Done, StorageError>> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = self.tx.read().as_ref() {
            // A send fails only after shutdown: the dropped reply says so.
            let _ = tx.send(Op { work, reply });
        }
        rx
    }

    /// Runs `work` and blocks for its answer (blocking threads only).
    fn call(&self, work: Work) -> Result<Done, StorageError> {
        self.queue(work)
            .blocking_recv()
            .unwrap_or_else(|_| Err(shut_down()))
    }

    /// A read-only view through one pooled connection.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut conn = self.shared.pool.get()?;
        f(&mut conn)
    }

    fn visible_meta(conn: &mut Conn, name: &str, now: Millis) -> Result<StreamMeta, StorageError> {
        let meta = read::meta(conn, name)?.ok_or(StorageError::NotFound)?;
        meta.check_visible(now)?;
        Ok(meta)
    }
}

fn shut_down() -> StorageError {
    StorageError::Unavailable("postgres storage is shut down".into())
}

fn unexpected() -> StorageError {
    StorageError::Io(std::io::Error::other("writer answered another call"))
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Storage for PgStorage {
    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        match self.call(Work::Create(name.to_string(), Box::new(req)))? {
            Done::Create(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        match self.call(Work::Append(name.to_string(), Box::new(req)))? {
            Done::Append(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    /// Queued for the writer's next transaction without blocking; the
    /// answer is the transaction's.
    fn try_append_staged(&self, name: &str, req: AppendRequest) -> Staging<AppendOutcome> {
        let rx = self.queue(Work::Append(name.to_string(), Box::new(req)));
        Staging::Deferred(Box::pin(async move {
            match rx.await.unwrap_or_else(|_| Err(shut_down()))? {
                Done::Append(o) => Ok(o),
                _ => Err(unexpected()),
            }
        }))
    }

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        self.with_conn(|conn| {
            let meta = Self::visible_meta(conn, name, req.now)?;
            if matches!(meta.expiry, Expiry::Ttl(_)) {
                conn.execute(
                    "UPDATE ds_streams SET last_access = $2 WHERE id = $1 AND last_access < $2",
                    &[&int(meta.id), &int(req.now)],
                )
                .map_err(map_err)?;
            }
            let view = Committed {
                conn: RefCell::new(conn),
            };
            let chain = Chain {
                metas: &view,
                records: &view,
            };
            match chain.read_from(&meta, req.from, req.max_bytes) {
                Ok((start, chunks, next)) => Ok(ReadOutcome {
                    info: meta.info(),
                    start,
                    chunks,
                    next,
                }),
                // Records vanish only when a stream is removed; if that raced
                // with this read, the stream is simply gone.
                Err(StorageError::Corrupt(_))
                    if read::meta(&mut view.conn.borrow_mut(), name)?
                        .is_none_or(|m| m.id != meta.id) =>
                {
                    Err(StorageError::NotFound)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        self.with_conn(|conn| Ok(Self::visible_meta(conn, name, now)?.info()))
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        match self.call(Work::Delete(name.to_string(), now))? {
            Done::Delete => Ok(()),
            _ => Err(unexpected()),
        }
    }

    fn trim(&self, name: &str, before: Offset, now: Millis) -> Result<TrimOutcome, StorageError> {
        match self.call(Work::Trim(name.to_string(), before, now))? {
            Done::Trim(outcome) => Ok(outcome),
            _ => Err(unexpected()),
        }
    }

    /// Every node sweeps: a cheap check first, then the writer removes
    /// candidates it could lock (`SKIP LOCKED`: nodes never fight over one).
    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        let any = self.with_conn(|conn| {
            conn.query_opt(
                "SELECT 1 FROM ds_streams
                 WHERE refcount = 0 AND (expires_at <= $1 OR last_access + ttl_ms <= $1) LIMIT 1",
                &[&int(now)],
            )
            .map_err(map_err)
        })?;
        if any.is_none() {
            return Ok(0);
        }
        match self.call(Work::Sweep(now))? {
            Done::Sweep(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        self.with_conn(|conn| {
            let rows = conn
                .query(
                    "SELECT name, meta, last_access FROM ds_streams ORDER BY name",
                    &[],
                )
                .map_err(map_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut meta = decode_meta(row.get(1), row.get(2))?;
                meta.producers = read::producers(conn, meta.id)?;
                out.push((row.get(0), meta));
            }
            Ok(out)
        })
    }

    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        self.with_conn(|conn| {
            // One snapshot for the row, its producers and its records.
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .map_err(map_err)?;
            let result = (|| {
                let mut meta = read::meta(conn, name)?.ok_or(StorageError::NotFound)?;
                meta.producers = read::producers(conn, meta.id)?;
                let start = meta.own_start();
                let records = read::range(conn, meta.id, start, meta.tail)
                    .map_err(map_err)?
                    .ok_or_else(|| {
                        StorageError::Corrupt(format!(
                            "stream {name:?} does not hold exactly its records from {} to {}",
                            start, meta.tail
                        ))
                    })?;
                Ok((meta, records))
            })();
            let _ = conn.client.batch_execute("COMMIT");
            result
        })
    }

    fn restore_stream(
        &self,
        name: &str,
        meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        match self.call(Work::Restore(name.to_string(), Box::new((meta, records))))? {
            Done::Restore(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_control(ns, key, value)?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO ds_control (ns, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
                &[&ns, &key, &value],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        check_control(ns, key, b"")?;
        self.with_conn(|conn| {
            conn.execute(
                "DELETE FROM ds_control WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        check_control(ns, "-", b"")?;
        self.with_conn(|conn| {
            let rows = conn
                .query(
                    "SELECT key, value FROM ds_control WHERE ns = $1 ORDER BY key COLLATE \"C\"",
                    &[&ns],
                )
                .map_err(map_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// `INSERT … ON CONFLICT DO NOTHING`, then the stored value: nodes
    /// that start together agree on one.
    fn control_put_new(&self, ns: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        check_control(ns, key, value)?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO ds_control (ns, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, key) DO NOTHING",
                &[&ns, &key, &value],
            )
            .map_err(map_err)?;
            let row = conn
                .query_opt(
                    "SELECT value FROM ds_control WHERE ns = $1 AND key = $2",
                    &[&ns, &key],
                )
                .map_err(map_err)?;
            row.map(|r| r.get(0)).ok_or_else(|| {
                StorageError::Unavailable("the value was removed concurrently; retry".into())
            })
        })
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }

    fn shutdown(&self) -> Result<(), StorageError> {
        // Dropping the sender lets the writer finish what is queued and stop.
        self.tx.write().take();
        self.shared.stopping.store(true, Ordering::Relaxed);
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
        self.shared.pool.close_idle();
        Ok(())
    }
}

impl Cluster for PgStorage {
    fn advertise(&self, url: &str) {
        *self.shared.advertised.lock() = Some(url.to_string());
    }

    fn leadership(&self) -> Option<u64> {
        match self.shared.term.load(Ordering::Relaxed) {
            0 => None,
            term => Some(term),
        }
    }

    fn leader_url(&self) -> Result<Option<String>, StorageError> {
        self.with_conn(|conn| {
            let row = conn
                .query_opt("SELECT url FROM ds_leader WHERE id = 1", &[])
                .map_err(map_err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }
}
