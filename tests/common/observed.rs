//! A memory backend whose reads are counted and can be made to fail with
//! `Unavailable` (a shared database restarting), to see what live readers
//! ask of storage and how they ride out an outage.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use durable_streams::storage::memory::MemoryStorage;

/// The memory backend, its `read` calls counted and switchable off.
pub struct ObservedReads {
    pub inner: MemoryStorage,
    /// `read` calls so far (failed ones included).
    pub reads: AtomicUsize,
    /// While set, every `read` fails with `StorageError::Unavailable`.
    pub down: AtomicBool,
}

impl ObservedReads {
    pub fn new(inner: MemoryStorage) -> Self {
        ObservedReads {
            inner,
            reads: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// Makes reads fail (`true`) or succeed again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

mod counting {
    use super::ObservedReads;
    use bytes::Bytes;
    use durable_streams::storage::model::StreamMeta;
    use durable_streams::storage::*;
    use std::sync::atomic::Ordering;

    impl Storage for ObservedReads {
        fn may_block(&self) -> bool {
            self.inner.may_block()
        }
        fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
            self.inner.create(name, req)
        }
        fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
            self.inner.append(name, req)
        }
        fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StorageError::Unavailable("storage is down (test)".into()));
            }
            self.inner.read(name, req)
        }
        fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
            self.inner.head(name, now)
        }
        fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
            self.inner.delete(name, now)
        }
        fn trim(
            &self,
            name: &str,
            before: durable_streams::offset::Offset,
            now: Millis,
        ) -> Result<TrimOutcome, StorageError> {
            self.inner.trim(name, before, now)
        }
        fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
            self.inner.sweep_expired(now)
        }
        fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
            self.inner.list_streams()
        }
        fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
            self.inner.export_stream(name)
        }
        fn restore_stream(
            &self,
            name: &str,
            meta: StreamMeta,
            records: Vec<Bytes>,
        ) -> Result<StreamInfo, StorageError> {
            self.inner.restore_stream(name, meta, records)
        }
        fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.inner.control_put(ns, key, value)
        }
        fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
            self.inner.control_delete(ns, key)
        }
        fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
            self.inner.control_scan(ns)
        }
    }
}
