//! One writer transaction's view of the database ([`Batch`]): the stream
//! rows it locked, overlaid with the changes its ops made, written out in
//! a few array statements at the end ([`Batch::persist`]). The shared
//! decision logic ([`txn`](crate::storage::txn)) runs against it through the [`Txn`] traits.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

use super::WAKE_CHANNEL;
use super::pool::Conn;
use super::schema::{decode_meta, encode_meta, int, is_retryable, map_err, uint};
use super::writer::{Abort, Op, Work};
use super::{listen, read};
use crate::notify::Wake;
use crate::offset::Offset;
use crate::storage::chain::{Collect, Metas, Records};
use crate::storage::model::{Expiry, ProducerState, StreamMeta};
use crate::storage::txn::{BatchWakes, Fail, Txn};
use crate::storage::{Millis, StorageError};

/// One transaction's view: the rows it locked, overlaid with its changes.
pub(super) struct Batch<'c> {
    pub(super) conn: RefCell<&'c mut Conn>,
    /// Committed state of every stream the batch looked at (`None`: no such
    /// row), as locked.
    loaded: RefCell<HashMap<String, Option<StreamMeta>>>,
    /// The batch's changes (`None`: removed).
    pub(super) overlay: HashMap<String, Option<StreamMeta>>,
    /// The batch's wakes, with the records it appended.
    pub(super) wakes: BatchWakes,
    /// Records inserted by the batch's ops so far, written by one statement
    /// before anything reads or removes records, and at the end.
    pending: RefCell<Pending>,
    /// A statement failed in a way worth retrying the whole batch.
    retry: Cell<bool>,
    node: &'c str,
}

/// Changed stream rows, as the columns of one `UPDATE … FROM unnest`.
#[derive(Default)]
struct Updates {
    ids: Vec<i64>,
    metas: Vec<Vec<u8>>,
    last_access: Vec<i64>,
    ttl_ms: Vec<Option<i64>>,
    expires_at: Vec<Option<i64>>,
    refcounts: Vec<i64>,
}

/// Records not yet written, as the columns of one `INSERT … unnest`.
#[derive(Default)]
struct Pending {
    ids: Vec<i64>,
    positions: Vec<i64>,
    seqs: Vec<i64>,
    bodies: Vec<Bytes>,
}

const LOCK: &str = "SELECT name, meta, last_access FROM ds_streams
     WHERE name = ANY($1) ORDER BY name FOR UPDATE";
const LOCK_ONE: &str = "SELECT meta, last_access FROM ds_streams WHERE name = $1 FOR UPDATE";
const PRODUCERS: &str = "SELECT stream_id, producer, epoch, last_seq FROM ds_producers
     WHERE stream_id = ANY($1) AND producer = ANY($2)";
const INSERT_RECORDS: &str = "INSERT INTO ds_records (stream_id, pos, seq, body)
     SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])";
const UPDATE_STREAMS: &str = "UPDATE ds_streams AS s
     SET meta = v.meta, last_access = GREATEST(s.last_access, v.last_access),
         ttl_ms = v.ttl_ms, expires_at = v.expires_at, refcount = v.refcount
     FROM unnest($1::BIGINT[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[],
                 $6::BIGINT[]) AS v(id, meta, last_access, ttl_ms, expires_at, refcount)
     WHERE s.id = v.id";
const INSERT_STREAM: &str = "INSERT INTO ds_streams
     (id, name, meta, last_access, ttl_ms, expires_at, refcount)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const UPSERT_PRODUCERS: &str = "INSERT INTO ds_producers (stream_id, producer, epoch, last_seq)
     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])
     ON CONFLICT (stream_id, producer)
     DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq";
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::TEXT[]) AS p";
const SWEEPABLE: &str = "SELECT name, meta, last_access FROM ds_streams
     WHERE refcount = 0 AND (expires_at <= $1 OR last_access + ttl_ms <= $1)
     ORDER BY name LIMIT 256 FOR UPDATE SKIP LOCKED";

impl<'c> Batch<'c> {
    pub(super) fn new(conn: &'c mut Conn, node: &'c str) -> Self {
        Batch {
            conn: RefCell::new(conn),
            loaded: RefCell::new(HashMap::new()),
            overlay: HashMap::new(),
            wakes: BatchWakes::default(),
            pending: RefCell::new(Pending::default()),
            retry: Cell::new(false),
            node,
        }
    }

    /// Maps a statement's failure, remembering whether a retry may help.
    fn fail(&self, e: postgres::Error) -> StorageError {
        if is_retryable(&e) {
            self.retry.set(true);
        }
        map_err(e)
    }

    pub(super) fn abort(&self, e: StorageError) -> Abort {
        if self.retry.get() {
            Abort::Retry(e)
        } else {
            Abort::Fail(e)
        }
    }

    /// Locks every stream row the ops name (in name order) and loads the
    /// producer states their appends name.
    pub(super) fn lock(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        let mut names = BTreeSet::new();
        let mut producers = BTreeSet::new();
        for op in ops {
            match &op.work {
                Work::Create(n, _)
                | Work::Delete(n, _)
                | Work::Trim(n, _, _)
                | Work::Restore(n, _) => {
                    names.insert(n.as_str());
                }
                Work::Append(n, req) => {
                    names.insert(n.as_str());
                    if let Some(p) = &req.producer {
                        producers.insert(p.id.as_str());
                    }
                }
                Work::Sweep(_) => {}
            }
        }
        let names: Vec<&str> = names.into_iter().collect();
        let rows = {
            let mut conn = self.conn.borrow_mut();
            conn.query(LOCK, &[&names]).map_err(|e| self.fail(e))?
        };
        let mut loaded = self.loaded.borrow_mut();
        for n in &names {
            loaded.insert(n.to_string(), None);
        }
        let mut ids = HashMap::new();
        for row in rows {
            let name: String = row.get(0);
            let meta = decode_meta(row.get(1), row.get(2))?;
            ids.insert(int(meta.id), name.clone());
            loaded.insert(name, Some(meta));
        }
        if producers.is_empty() || ids.is_empty() {
            return Ok(());
        }
        let id_list: Vec<i64> = ids.keys().copied().collect();
        let producer_list: Vec<&str> = producers.into_iter().collect();
        let rows = {
            let mut conn = self.conn.borrow_mut();
            conn.query(PRODUCERS, &[&id_list, &producer_list])
                .map_err(|e| self.fail(e))?
        };
        for row in rows {
            let Some(name) = ids.get(&row.get::<_, i64>(0)) else {
                continue;
            };
            if let Some(Some(meta)) = loaded.get_mut(name) {
                meta.producers.insert(
                    row.get(1),
                    ProducerState {
                        epoch: uint(row.get(2)),
                        last_seq: uint(row.get(3)),
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes the pending records (one statement for the whole batch).
    fn flush_records(&self) -> Result<(), StorageError> {
        let p = std::mem::take(&mut *self.pending.borrow_mut());
        if p.ids.is_empty() {
            return Ok(());
        }
        let bodies: Vec<&[u8]> = p.bodies.iter().map(|b| b.as_ref()).collect();
        let mut conn = self.conn.borrow_mut();
        conn.execute(INSERT_RECORDS, &[&p.ids, &p.positions, &p.seqs, &bodies])
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Writes every changed stream row and producer state and queues the
    /// notifications.
    pub(super) fn persist(&mut self, wakes: &[(String, Wake)]) -> Result<(), StorageError> {
        self.flush_records()?;
        let loaded = std::mem::take(&mut *self.loaded.borrow_mut());
        let mut updates = Updates::default();
        let mut p_ids = Vec::new();
        let mut p_names = Vec::new();
        let mut p_epochs = Vec::new();
        let mut p_seqs = Vec::new();
        let mut conn = self.conn.borrow_mut();
        for (name, new) in &self.overlay {
            let old = loaded.get(name).cloned().flatten();
            let same = matches!((&old, new), (Some(o), Some(n)) if o.id == n.id);
            if let (Some(o), false) = (&old, same) {
                conn.execute("DELETE FROM ds_streams WHERE id = $1", &[&int(o.id)])
                    .map_err(map_err)?;
                conn.execute(
                    "DELETE FROM ds_producers WHERE stream_id = $1",
                    &[&int(o.id)],
                )
                .map_err(map_err)?;
            }
            let Some(meta) = new else { continue };
            let (ttl_ms, expires_at) = match meta.expiry {
                Expiry::Never => (None, None),
                Expiry::Ttl(secs) => (Some(int(secs.saturating_mul(1000))), None),
                Expiry::At(at) => (None, Some(int(at))),
            };
            let bytes = encode_meta(meta)?;
            if same {
                updates.ids.push(int(meta.id));
                updates.metas.push(bytes);
                updates.last_access.push(int(meta.last_access));
                updates.ttl_ms.push(ttl_ms);
                updates.expires_at.push(expires_at);
                updates.refcounts.push(int(meta.refcount));
            } else {
                conn.execute(
                    INSERT_STREAM,
                    &[
                        &int(meta.id),
                        name,
                        &bytes,
                        &int(meta.last_access),
                        &ttl_ms,
                        &expires_at,
                        &int(meta.refcount),
                    ],
                )
                .map_err(|e| {
                    if is_retryable(&e) {
                        self.retry.set(true);
                    }
                    map_err(e)
                })?;
            }
            let before = old.filter(|_| same).map(|o| o.producers);
            for (pid, state) in &meta.producers {
                if before.as_ref().and_then(|b| b.get(pid)) != Some(state) {
                    p_ids.push(int(meta.id));
                    p_names.push(pid.as_str());
                    p_epochs.push(int(state.epoch));
                    p_seqs.push(int(state.last_seq));
                }
            }
        }
        if !updates.ids.is_empty() {
            let u = &updates;
            conn.execute(
                UPDATE_STREAMS,
                &[
                    &u.ids,
                    &u.metas,
                    &u.last_access,
                    &u.ttl_ms,
                    &u.expires_at,
                    &u.refcounts,
                ],
            )
            .map_err(map_err)?;
        }
        if !p_ids.is_empty() {
            conn.execute(UPSERT_PRODUCERS, &[&p_ids, &p_names, &p_epochs, &p_seqs])
                .map_err(map_err)?;
        }
        let payloads: Vec<String> = wakes
            .iter()
            .map(|(name, w)| listen::wake_payload(self.node, name, w))
            .collect();
        if !payloads.is_empty() {
            conn.query(NOTIFY, &[&WAKE_CHANNEL, &payloads])
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// The local wakes, carrying the appended records where the batch
    /// holds exactly the records that moved the tail.
    pub(super) fn finish_wakes(&mut self) -> Vec<(String, Wake)> {
        self.wakes.finish()
    }
}

impl Metas for Batch<'_> {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        if let Some(m) = self.overlay.get(name) {
            return Ok(m.clone());
        }
        if let Some(m) = self.loaded.borrow().get(name) {
            return Ok(m.clone());
        }
        // Not named by an op (a fork source): lock it now.
        let row = {
            let mut conn = self.conn.borrow_mut();
            conn.query_opt(LOCK_ONE, &[&name])
                .map_err(|e| self.fail(e))?
        };
        let meta = match row {
            Some(row) => Some(decode_meta(row.get(0), row.get(1))?),
            None => None,
        };
        self.loaded
            .borrow_mut()
            .insert(name.to_string(), meta.clone());
        Ok(meta)
    }
}

impl Records for Batch<'_> {
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError> {
        self.flush_records()?;
        read::fetch(&mut self.conn.borrow_mut(), rows)
    }
}

impl Txn for Batch<'_> {
    fn set(&mut self, name: &str, meta: Option<StreamMeta>) {
        self.overlay.insert(name.to_string(), meta);
    }

    fn take_id(&mut self) -> Result<u64, Fail> {
        let row = {
            let mut conn = self.conn.borrow_mut();
            conn.query_opt("SELECT nextval('ds_stream_ids')", &[])
                .map_err(|e| Fail::Fatal(self.fail(e)))?
        };
        let id: i64 = row.map(|r| r.get(0)).unwrap_or(0);
        Ok(uint(id))
    }

    fn insert_records(&mut self, id: u64, start: Offset, records: &[Bytes]) -> Result<(), Fail> {
        self.wakes.inserted(id, start, records);
        let mut p = self.pending.borrow_mut();
        let mut at = start;
        for r in records {
            p.ids.push(int(id));
            p.positions.push(int(at.pos));
            p.seqs.push(int(at.seq));
            p.bodies.push(r.clone());
            at = Offset::new(at.seq + 1, at.pos + r.len() as u64);
        }
        Ok(())
    }

    fn remove_records(&mut self, id: u64) -> Result<(), Fail> {
        self.wakes.removed(id);
        self.flush_records().map_err(Fail::Fatal)?;
        let mut conn = self.conn.borrow_mut();
        conn.execute("DELETE FROM ds_records WHERE stream_id = $1", &[&int(id)])
            .map_err(|e| Fail::Fatal(self.fail(e)))?;
        Ok(())
    }

    fn trim_records(&mut self, id: u64, base: Offset, point: Offset) -> Result<(), Fail> {
        self.flush_records().map_err(Fail::Fatal)?;
        let mut conn = self.conn.borrow_mut();
        conn.execute(
            "DELETE FROM ds_records WHERE stream_id = $1 AND pos >= $2 AND pos < $3",
            &[&int(id), &int(base.pos), &int(point.pos)],
        )
        .map_err(|e| Fail::Fatal(self.fail(e)))?;
        Ok(())
    }

    fn wake(&mut self, name: &str, meta: &StreamMeta) {
        self.wakes
            .wake(name, meta.id, Wake::bare(meta.tail, meta.closed));
    }

    fn records(&self) -> Option<&dyn Records> {
        Some(self)
    }

    fn sweep_candidates(&mut self, now: Millis) -> Result<Vec<String>, Fail> {
        let rows = {
            let mut conn = self.conn.borrow_mut();
            conn.query(SWEEPABLE, &[&int(now)])
                .map_err(|e| Fail::Fatal(self.fail(e)))?
        };
        let mut names = Vec::with_capacity(rows.len());
        let mut loaded = self.loaded.borrow_mut();
        for row in rows {
            let name: String = row.get(0);
            if !loaded.contains_key(&name) {
                let meta = decode_meta(row.get(1), row.get(2)).map_err(Fail::Fatal)?;
                loaded.insert(name.clone(), Some(meta));
            }
            names.push(name);
        }
        Ok(names)
    }
}
