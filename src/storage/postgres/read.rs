//! Queries shared by the read path (autocommit statements on a pooled
//! connection) and the writer (inside its transaction).

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;

use super::pool::Conn;
use super::schema::{decode_meta, int, map_err, uint};
use crate::offset::Offset;
use crate::storage::StorageError;
use crate::storage::chain::{Collect, Metas, Records};
use crate::storage::model::{ProducerState, StreamMeta};

/// The records one read step needs: from the record containing `from` (the
/// last row at or before it) up to the step's end bound.
const FETCH: &str = "SELECT pos, seq, body FROM ds_records
     WHERE stream_id = $1
       AND pos >= (SELECT max(pos) FROM ds_records WHERE stream_id = $1 AND pos <= $2)
       AND pos < $3
     ORDER BY pos
     LIMIT $4";

const META: &str = "SELECT meta, last_access FROM ds_streams WHERE name = $1";

/// Feeds `rows` the records of a read step.
pub(super) fn fetch(conn: &mut Conn, rows: &mut Collect<'_>) -> Result<(), StorageError> {
    let found = conn
        .query(
            FETCH,
            &[
                &int(rows.meta().id),
                &int(rows.from()),
                &int(rows.end_bound()),
                &int(rows.max_rows() as u64),
            ],
        )
        .map_err(map_err)?;
    for row in found {
        let body: Vec<u8> = row.get(2);
        if !rows.push(uint(row.get(0)), uint(row.get(1)), Bytes::from(body))? {
            break;
        }
    }
    Ok(())
}

/// The records of stream `id` in `[from, to)`, when they are exactly there
/// (contiguous from `from`, ending at `to`); `Ok(None)` otherwise.
pub(super) fn range(
    conn: &mut Conn,
    id: u64,
    from: Offset,
    to: Offset,
) -> Result<Option<Vec<Bytes>>, postgres::Error> {
    let rows = conn.query(
        "SELECT pos, seq, body FROM ds_records
         WHERE stream_id = $1 AND pos >= $2 AND pos < $3 ORDER BY pos",
        &[&int(id), &int(from.pos), &int(to.pos)],
    )?;
    let mut at = from;
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let body: Vec<u8> = row.get(2);
        if uint(row.get(0)) != at.pos || uint(row.get(1)) != at.seq {
            return Ok(None);
        }
        at = Offset::new(at.seq + 1, at.pos + body.len() as u64);
        records.push(Bytes::from(body));
    }
    Ok((at == to).then_some(records))
}

/// A stream's committed metadata (without producers), or `None`.
pub(super) fn meta(conn: &mut Conn, name: &str) -> Result<Option<StreamMeta>, StorageError> {
    match conn.query_opt(META, &[&name]).map_err(map_err)? {
        Some(row) => decode_meta(row.get(0), row.get(1)).map(Some),
        None => Ok(None),
    }
}

/// Every producer state of stream `id`.
pub(super) fn producers(
    conn: &mut Conn,
    id: u64,
) -> Result<HashMap<String, ProducerState>, StorageError> {
    let rows = conn
        .query(
            "SELECT producer, epoch, last_seq FROM ds_producers WHERE stream_id = $1",
            &[&int(id)],
        )
        .map_err(map_err)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let state = ProducerState {
                epoch: uint(r.get(1)),
                last_seq: uint(r.get(2)),
            };
            (r.get::<_, String>(0), state)
        })
        .collect())
}

/// Committed state seen through one connection, statement by statement:
/// metadata by name and records, for [`Chain`](crate::storage::chain::Chain).
/// Records below a tail read earlier are always there (they commit with it),
/// so reading the metadata first and the records after is consistent.
pub(super) struct Committed<'c> {
    pub conn: RefCell<&'c mut Conn>,
}

impl Metas for Committed<'_> {
    fn meta(&self, name: &str) -> Result<Option<StreamMeta>, StorageError> {
        meta(&mut self.conn.borrow_mut(), name)
    }
}

impl Records for Committed<'_> {
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError> {
        fetch(&mut self.conn.borrow_mut(), rows)
    }
}
