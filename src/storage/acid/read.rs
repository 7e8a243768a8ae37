//! The `data` table as a [`Records`] source for [`Chain`](crate::storage::chain::Chain),
//! shared by the read path (a redb read transaction) and the writer (fork
//! resolution inside its write transaction, which must see the batch's own
//! uncommitted appends).
//!
//! One step is one range scan starting at the record that contains the read
//! position (the last key `<= (id, pos)`).

use bytes::Bytes;
use redb::ReadableTable;

use super::tables::map_err;
use crate::storage::StorageError;
use crate::storage::chain::{Collect, Records};

/// The `data` table as any readable redb table.
pub(super) trait DataTable: ReadableTable<(u64, u64), (u64, &'static [u8])> {}
impl<T: ReadableTable<(u64, u64), (u64, &'static [u8])>> DataTable for T {}

/// A redb `data` table, read as a stream's records.
pub(super) struct Data<'a, T: ?Sized>(pub &'a T);

impl<T: DataTable + ?Sized> Records for Data<'_, T> {
    fn fill(&self, rows: &mut Collect<'_>) -> Result<(), StorageError> {
        let (id, from) = (rows.meta().id, rows.from());
        // The record containing `from`: the last key at or before it.
        let first_start = match self
            .0
            .range((id, 0)..=(id, from))
            .map_err(map_err)?
            .next_back()
        {
            Some(item) => item.map_err(map_err)?.0.value().1,
            None => return Ok(()),
        };
        for item in self
            .0
            .range((id, first_start)..=(id, u64::MAX))
            .map_err(map_err)?
        {
            let (k, v) = item.map_err(map_err)?;
            let (seq, bytes) = v.value();
            if !rows.push(k.value().1, seq, Bytes::copy_from_slice(bytes))? {
                break;
            }
        }
        Ok(())
    }
}
