//! Database connections: a bounded pool of synchronous clients, each with
//! its own prepared-statement cache.
//!
//! Storage calls run on blocking threads (the backend answers
//! `may_block() == true`), so a call simply takes a connection, uses it and
//! gives it back. A connection that failed (the database restarted, the
//! network dropped) is discarded and the next call opens a new one, so the
//! node recovers by itself when the database returns. An idle connection
//! reads nothing, so one that died with a restarted database still looks
//! open: the wake listener, which always waits on its socket, notices the
//! loss at once and [`Pool::invalidate`]s every older connection, so no
//! request fails on one after the database is back. Waiting for a free
//! connection is bounded: past [`WAIT`] the call answers
//! [`StorageError::Unavailable`] (503) instead of hanging.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema::map_err;
use crate::storage::StorageError;

/// Longest wait for a free connection.
const WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a new connection to open.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One open connection and its prepared statements.
pub(super) struct Conn {
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
    /// The pool's generation when it was opened ([`Pool::open`]).
    generation: u64,
}

impl Conn {
    /// Opens a connection with `target`'s settings (TLS as its `sslmode`
    /// asks: `prefer`, the default, uses it when the server offers it).
    pub fn open(target: &Target) -> Result<Conn, StorageError> {
        let client = target.config.connect(target.tls.clone()).map_err(map_err)?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            generation: 0,
        })
    }

    /// The prepared form of `sql` (prepared once per connection).
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params)
    }

    pub fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub(super) struct Target {
    pub config: postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// A bounded set of connections.
pub(super) struct Pool {
    target: Target,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Connections opened before the last [`Pool::invalidate`] are not used.
    generation: AtomicU64,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Connections open or being opened (idle ones included).
    open: usize,
}

impl Pool {
    pub fn new(target: Target, max: usize) -> Pool {
        Pool {
            target,
            max: max.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            generation: AtomicU64::new(0),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens a connection of the current generation (for the pool and the
    /// writer).
    pub fn open(&self) -> Result<Conn, StorageError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let mut conn = Conn::open(&self.target)?;
        conn.generation = generation;
        Ok(conn)
    }

    /// Whether `conn` may still be used: not known closed, and opened since
    /// the last [`Pool::invalidate`].
    pub fn usable(&self, conn: &Conn) -> bool {
        !conn.is_closed() && conn.generation == self.generation.load(Ordering::Relaxed)
    }

    /// Retires every connection opened so far (the writer's too): the
    /// listener lost its connection, so the others probably died with it
    /// (a database restart) without noticing, and the next request on each
    /// would fail although the database is back.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection: an idle one, a new one while under the cap, or the
    /// next one given back within [`WAIT`].
    pub fn get(&self) -> Result<Pooled<'_>, StorageError> {
        let mut state = self.state.lock();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            while let Some(conn) = state.idle.pop() {
                if self.usable(&conn) {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    });
                }
                state.open -= 1;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.open() {
                    Ok(conn) => Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                return Err(StorageError::Unavailable(format!(
                    "all {} database connections are busy",
                    self.max
                )));
            }
        }
    }

    /// Closes every idle connection. A client's close blocks on its own
    /// runtime, which must not happen on an async worker: done on a thread
    /// of its own, whatever thread calls.
    pub fn close_idle(&self) {
        let idle = std::mem::take(&mut self.state.lock().idle);
        if idle.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || drop(idle)).join();
    }

    fn put(&self, conn: Conn) {
        let mut state = self.state.lock();
        if !self.usable(&conn) {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        drop(state);
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close_idle();
    }
}

/// A connection taken from the pool; given back when dropped.
pub(super) struct Pooled<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
}

impl Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}
