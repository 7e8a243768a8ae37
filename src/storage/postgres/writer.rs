//! The writer thread: every mutation of this node, batched into database
//! transactions.
//!
//! Callers queue an [`Op`] and await (or block on) its answer. The writer
//! takes the first queued op, drains whatever else is queued (up to
//! [`MAX_BATCH`]) and runs them all in ONE transaction:
//!
//! 1. `SELECT … FOR UPDATE` of every stream row the batch names, in name
//!    order (so two nodes' batches lock in the same order), plus the states
//!    of the producers its appends name. From here on every other node's
//!    writes to these streams wait for this transaction.
//! 2. Each op is decided by [`txn`]'s shared logic against the state the
//!    ops before it produced; a rejected op writes nothing.
//! 3. The changed rows are written (records, stream rows, producer states),
//!    a `NOTIFY ds_wake` per changed stream is queued, and the transaction
//!    commits. Only then are the callers answered and this node's readers
//!    woken (other nodes' readers are woken by the notification, delivered
//!    at commit).
//!
//! A deadlock, serialization failure or a concurrent create of the same name
//! on another node aborts the transaction; the whole batch is then decided
//! again from scratch (nothing of it was acknowledged). A database failure
//! answers every op of the batch [`StorageError::Unavailable`] and the
//! writer reconnects on the next batch.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Shared;
use super::batch::Batch;
use super::pool::Conn;
use super::schema::{clone_err, is_retryable, map_err};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::model::StreamMeta;
use crate::storage::txn::{self, Fail};
use crate::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, StorageError, StreamInfo,
    TrimOutcome,
};

/// Most ops decided in one transaction.
pub(super) const MAX_BATCH: usize = 256;
/// Attempts of a batch that keeps hitting deadlocks or races.
const ATTEMPTS: u32 = 8;

/// A mutation to run.
pub(super) enum Work {
    Create(String, Box<CreateRequest>),
    Append(String, Box<AppendRequest>),
    Delete(String, Millis),
    Trim(String, Offset, Millis),
    Sweep(Millis),
    Restore(String, Box<(StreamMeta, Vec<Bytes>)>),
}

/// What a mutation answered.
pub(super) enum Done {
    Create(CreateOutcome),
    Append(AppendOutcome),
    Delete,
    Trim(TrimOutcome),
    Sweep(usize),
    Restore(StreamInfo),
}

/// One queued mutation and where its answer goes.
pub(super) struct Op {
    pub work: Work,
    pub reply: oneshot::Sender<Result<Done, StorageError>>,
}

/// Runs the writer until every sender is gone.
pub(super) fn run(shared: Arc<Shared>, rx: Receiver<Op>) {
    let mut conn: Option<Conn> = None;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let answers = commit(&shared, &mut conn, &ops);
        for (op, answer) in ops.into_iter().zip(answers) {
            // A caller that gave up waiting is not an error.
            let _ = op.reply.send(answer);
        }
    }
}

/// Why a transaction did not commit.
pub(super) enum Abort {
    /// Decide the batch again.
    Retry(StorageError),
    /// Answer every op with this.
    Fail(StorageError),
}

/// Commits `ops` in one transaction (retrying it when it raced another
/// node) and returns their answers in order.
fn commit(shared: &Shared, slot: &mut Option<Conn>, ops: &[Op]) -> Vec<Result<Done, StorageError>> {
    let mut attempt = 0;
    let failed = loop {
        attempt += 1;
        if slot.as_ref().is_none_or(|c| !shared.pool.usable(c)) {
            match shared.pool.open() {
                Ok(c) => *slot = Some(c),
                Err(e) => break e,
            }
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("connection opened above")
        };
        match transact(shared, conn, ops) {
            Ok((answers, wakes)) => {
                for (name, wake) in wakes {
                    shared.hub.wake(&name, wake);
                }
                return answers;
            }
            Err(abort) => {
                // The transaction may still be open (a rejected statement);
                // a closed connection is replaced on the next attempt.
                if !conn.is_closed() {
                    let _ = conn.client.batch_execute("ROLLBACK");
                }
                match abort {
                    Abort::Retry(e) if attempt < ATTEMPTS => {
                        tracing::debug!(error = %e, attempt, "postgres storage: retrying a batch");
                        std::thread::sleep(Duration::from_millis(
                            rand::random_range(1..=5) * u64::from(attempt),
                        ));
                    }
                    Abort::Retry(e) | Abort::Fail(e) => break e,
                }
            }
        }
    };
    tracing::warn!(error = %failed, "postgres storage: write transaction failed");
    ops.iter().map(|_| Err(clone_err(&failed))).collect()
}

type Answers = (Vec<Result<Done, StorageError>>, Vec<(String, Wake)>);

fn transact(shared: &Shared, conn: &mut Conn, ops: &[Op]) -> Result<Answers, Abort> {
    let abort = |e: postgres::Error| {
        if is_retryable(&e) {
            Abort::Retry(map_err(e))
        } else {
            Abort::Fail(map_err(e))
        }
    };
    conn.client.batch_execute("BEGIN").map_err(abort)?;
    let mut b = Batch::new(conn, &shared.node);
    b.lock(ops).map_err(|e| b.abort(e))?;
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match &op.work {
            Work::Create(name, req) => {
                let r = txn::create(&mut b, name, req);
                if let Ok(CreateOutcome::Created(info)) = &r {
                    // Other nodes' subscription engines learn of new streams
                    // from this (their HTTP layer never saw the request).
                    b.wakes
                        .wake(name, info.id, Wake::bare(info.tail, info.closed));
                }
                r.map(Done::Create)
            }
            Work::Append(name, req) => txn::append(&mut b, name, req).map(Done::Append),
            Work::Delete(name, now) => txn::delete(&mut b, name, *now).map(|()| Done::Delete),
            Work::Trim(name, before, now) => txn::trim(&mut b, name, *before, *now).map(Done::Trim),
            Work::Sweep(now) => txn::sweep(&mut b, *now).map(Done::Sweep),
            Work::Restore(name, restore) => {
                let (meta, records) = &**restore;
                txn::restore(&mut b, name, meta.clone(), records).map(Done::Restore)
            }
        };
        match result {
            Ok(done) => answers.push(Ok(done)),
            Err(Fail::Reject(e)) => answers.push(Err(e)),
            Err(Fail::Fatal(e)) => return Err(b.abort(e)),
        }
    }
    if b.overlay.is_empty() {
        // Only rejections and no-op sweeps: nothing to commit.
        let conn = b.conn.into_inner();
        conn.client.batch_execute("ROLLBACK").map_err(abort)?;
        return Ok((answers, Vec::new()));
    }
    let wakes = b.finish_wakes();
    b.persist(&wakes).map_err(|e| b.abort(e))?;
    let conn = b.conn.into_inner();
    conn.client.batch_execute("COMMIT").map_err(abort)?;
    Ok((answers, wakes))
}
