//! The in-memory backend: everything lives in process memory and is lost on
//! exit. For development and tests, and the reference the durable backends
//! are checked against.
//!
//! Locking: a map lock (held only to find, insert or remove a stream) and a
//! mutex per stream (held for one operation on it). Both are `parking_lot`
//! locks held for short, non-async critical sections; no I/O happens here.
//! Fork creation and deletion hold the map's write lock so that a source
//! cannot disappear while a fork is being attached to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::model::{self, AppendPlan, ForkLink, StreamMeta};
use super::view::{self, Budget, Layout};
use super::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Millis, ReadOutcome, ReadRequest,
    Storage, StorageError, StreamInfo,
};
use crate::notify::{Appended, Wake, WakeHub};
use crate::offset::{Offset, ReadFrom};

/// One stream: its metadata and its own records.
struct Stream {
    meta: StreamMeta,
    /// Byte position where each own record starts.
    starts: Vec<u64>,
    records: Vec<Bytes>,
}

impl Stream {
    fn layout(&self) -> Layout<'_, [u64]> {
        Layout {
            base: self.meta.base,
            tail: self.meta.tail,
            index: &self.starts[..],
        }
    }

    fn push(&mut self, records: Vec<Bytes>) {
        let mut pos = self.meta.tail.pos;
        for r in records {
            self.starts.push(pos);
            pos += r.len() as u64;
            self.records.push(r);
        }
    }
}

type StreamRef = Arc<Mutex<Stream>>;

/// Finds a stream by name: through the map lock for reads, or through the
/// map a caller already holds (fork creation), so the lock is never taken twice.
type Lookup<'a> = dyn Fn(&str) -> Option<StreamRef> + 'a;

/// The in-memory [`Storage`].
pub struct MemoryStorage {
    streams: RwLock<HashMap<String, StreamRef>>,
    next_id: AtomicU64,
    hub: Arc<WakeHub>,
    /// Cap on stored bytes (0: none); writes past it answer `NoSpace` (507).
    limit: u64,
    /// Bytes of records currently stored.
    used: AtomicU64,
    /// The control-plane key/value space, `(namespace, key)` → value.
    control: parking_lot::Mutex<std::collections::BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new(hub: Arc<WakeHub>) -> Self {
        Self::with_limit(hub, 0)
    }

    /// A store that refuses writes (with `NoSpace`) once it holds
    /// `limit_bytes` of stream data; 0 means no limit.
    pub fn with_limit(hub: Arc<WakeHub>, limit_bytes: u64) -> Self {
        MemoryStorage {
            streams: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hub,
            limit: limit_bytes,
            used: AtomicU64::new(0),
            control: Default::default(),
        }
    }

    /// Accounts for `records` about to be stored, or refuses them.
    fn reserve(&self, records: &[Bytes]) -> Result<(), StorageError> {
        let n: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.limit == 0 {
            self.used.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| StorageError::NoSpace)
    }

    fn get(&self, name: &str) -> Result<StreamRef, StorageError> {
        self.streams
            .read()
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    fn wake(&self, name: &str, meta: &StreamMeta) {
        self.hub.wake(name, Wake::bare(meta.tail, meta.closed));
    }

    /// Reads `[from, limit)` of the view of `stream`, walking up the fork
    /// chain for inherited positions. `from` has been validated.
    fn read_view(
        &self,
        lookup: &Lookup<'_>,
        stream: &StreamRef,
        from: Offset,
        limit: u64,
        budget: Budget,
    ) -> Result<(Vec<Bytes>, Offset), StorageError> {
        let s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or_else(|| {
                StorageError::Corrupt("position before base of a stream that is not a fork".into())
            })?;
            let limit = limit.min(s.meta.base.pos);
            drop(s);
            let source = lookup(&link.source).ok_or(StorageError::NotFound)?;
            return self.read_view(lookup, &source, from, limit, budget);
        }
        let layout = s.layout();
        let (pieces, next) = layout.plan(from, limit, budget);
        let chunks = pieces
            .iter()
            .map(|p| {
                let r = &s.records[p.index as usize];
                r.slice(p.skip as usize..(p.skip + p.len) as usize)
            })
            .collect();
        Ok((chunks, next))
    }

    /// Checks that `from` is a position of the view of `stream`.
    fn validate_view(
        &self,
        lookup: &Lookup<'_>,
        stream: &StreamRef,
        from: Offset,
        whole: bool,
    ) -> Result<(), StorageError> {
        let s = stream.lock();
        if from.pos < s.meta.base.pos {
            let link = s.meta.fork.clone().ok_or(StorageError::InvalidOffset)?;
            drop(s);
            let source = lookup(&link.source).ok_or(StorageError::InvalidOffset)?;
            return self.validate_view(lookup, &source, from, whole);
        }
        s.layout().validate(from, whole)
    }

    /// Resolves a fork request against its (locked by the caller's map
    /// write lock) source: the base offset where the fork's own data starts.
    fn resolve_fork_base(
        &self,
        lookup: &Lookup<'_>,
        source: &StreamRef,
        anchor: Offset,
        sub_offset: u64,
    ) -> Result<Offset, StorageError> {
        let (tail, json) = {
            let s = source.lock();
            (s.meta.tail, model::is_json(&s.meta.content_type))
        };
        if anchor.pos > tail.pos {
            return Err(StorageError::ForkOffsetBeyondTail);
        }
        self.validate_view(lookup, source, anchor, json)?;
        let read = |at, budget| self.read_view(lookup, source, at, tail.pos, budget);
        view::fork_base(read, anchor, tail, json, sub_offset)
    }

    /// Removes a stream whose refcount is zero, then releases its source,
    /// cascading through hidden sources. Caller holds the map write lock.
    fn remove_cascade(&self, streams: &mut HashMap<String, StreamRef>, name: &str, now: Millis) {
        let mut next = Some(name.to_string());
        while let Some(name) = next.take() {
            let Some(stream) = streams.remove(&name) else {
                break;
            };
            let link = {
                let s = stream.lock();
                self.wake(&name, &s.meta);
                self.used
                    .fetch_sub(s.meta.tail.pos - s.meta.base.pos, Ordering::Relaxed);
                s.meta.fork.clone()
            };
            let Some(link) = link else { break };
            let Some(source) = streams.get(&link.source).cloned() else {
                break;
            };
            let mut src = source.lock();
            if src.meta.id != link.source_id {
                break;
            }
            src.meta.refcount = src.meta.refcount.saturating_sub(1);
            if src.meta.refcount == 0 && src.meta.is_hidden(now) {
                next = Some(link.source.clone());
            }
        }
    }

    fn create_fork(
        &self,
        streams: &HashMap<String, StreamRef>,
        req: &CreateRequest,
        spec: &super::ForkSpec,
    ) -> Result<Stream, StorageError> {
        let source = streams
            .get(&spec.source)
            .cloned()
            .ok_or(StorageError::ForkSourceNotFound)?;
        let (src_meta_id, src_ct, src_expiry, src_tail) = {
            let s = source.lock();
            if s.meta.soft_deleted {
                return Err(StorageError::ForkSourceGone);
            }
            if s.meta.is_expired(req.now) {
                return Err(StorageError::ForkSourceNotFound);
            }
            (
                s.meta.id,
                s.meta.content_type.clone(),
                s.meta.expiry,
                s.meta.tail,
            )
        };
        if let Some(ct) = &req.content_type
            && !model::same_type(ct, &src_ct)
        {
            return Err(StorageError::ContentTypeMismatch { expected: src_ct });
        }
        let anchor = spec.offset.unwrap_or(src_tail);
        let lookup = |n: &str| streams.get(n).cloned();
        let base = self.resolve_fork_base(&lookup, &source, anchor, spec.sub_offset)?;
        let (expiry, inherited) = model::fork_expiry(src_expiry, req.expiry);
        let records = model::frame_records(model::is_json(&src_ct), &req.body, false)?;
        self.reserve(&records)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut meta = StreamMeta::new(id, src_ct, expiry, base, req.now);
        meta.expiry_inherited = inherited;
        meta.fork = Some(ForkLink {
            source: spec.source.clone(),
            source_id: src_meta_id,
            anchor,
            sub_offset: spec.sub_offset,
        });
        let mut stream = Stream {
            meta,
            starts: Vec::new(),
            records: Vec::new(),
        };
        let tail = model::advance(base, &records);
        stream.push(records);
        stream.meta.tail = tail;
        stream.meta.closed = req.closed;
        // Only now, with nothing left to fail, take the reference.
        source.lock().meta.refcount += 1;
        Ok(stream)
    }
}

impl Storage for MemoryStorage {
    fn may_block(&self) -> bool {
        false
    }

    fn control_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        super::check_control(ns, key, value)?;
        self.control
            .lock()
            .insert((ns.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }

    fn control_delete(&self, ns: &str, key: &str) -> Result<(), StorageError> {
        super::check_control(ns, key, b"")?;
        self.control
            .lock()
            .remove(&(ns.to_string(), key.to_string()));
        Ok(())
    }

    fn control_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        super::check_control(ns, "-", b"")?;
        let control = self.control.lock();
        Ok(control
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Includes soft-deleted streams kept for their forks.
    fn stream_count(&self) -> Option<u64> {
        Some(self.streams.read().len() as u64)
    }

    fn create(&self, name: &str, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        let mut streams = self.streams.write();
        if let Some(existing) = streams.get(name).cloned() {
            let s = existing.lock();
            if s.meta.soft_deleted || (s.meta.is_expired(req.now) && s.meta.refcount > 0) {
                return Err(StorageError::PathReserved);
            }
            if !s.meta.is_expired(req.now) {
                return if model::create_matches(&s.meta, &req) {
                    Ok(CreateOutcome::Exists(s.meta.info()))
                } else {
                    Err(StorageError::ConfigMismatch)
                };
            }
            drop(s);
            // Expired and unreferenced: it is gone; the name is free again.
            self.remove_cascade(&mut streams, name, req.now);
        }
        let stream = if let Some(spec) = &req.fork {
            self.create_fork(&streams, &req, spec)?
        } else {
            let content_type = req
                .content_type
                .clone()
                .unwrap_or_else(|| model::DEFAULT_CONTENT_TYPE.to_string());
            let records = model::frame_records(model::is_json(&content_type), &req.body, false)?;
            self.reserve(&records)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let expiry = req.expiry.unwrap_or_default();
            let mut stream = Stream {
                meta: StreamMeta::new(id, content_type, expiry, Offset::ZERO, req.now),
                starts: Vec::new(),
                records: Vec::new(),
            };
            let tail = model::advance(Offset::ZERO, &records);
            stream.push(records);
            stream.meta.tail = tail;
            stream.meta.closed = req.closed;
            stream
        };
        let info = stream.meta.info();
        streams.insert(name.to_string(), Arc::new(Mutex::new(stream)));
        Ok(CreateOutcome::Created(info))
    }

    fn append(&self, name: &str, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        let stream = self.get(name)?;
        let mut s = stream.lock();
        s.meta.check_visible(req.now)?;
        match model::plan_append(&s.meta, &req)? {
            AppendPlan::Duplicate(producer) => {
                // A retried or repeated write still counts as access.
                s.meta.last_access = req.now;
                Ok(AppendOutcome::Duplicate {
                    info: s.meta.info(),
                    producer,
                })
            }
            AppendPlan::Write(plan) => {
                let echo = plan
                    .producer
                    .as_ref()
                    .map(|(_, st)| (st.epoch, st.last_seq));
                self.reserve(&plan.records)?;
                s.push(plan.records.clone());
                let from = s.meta.tail;
                model::apply_write(&mut s.meta, &plan, req.producer.as_ref(), req.now);
                let mut wake = Wake::bare(s.meta.tail, s.meta.closed);
                if !plan.records.is_empty() {
                    wake.appended = Some(Appended::new(s.meta.id, from, plan.records));
                }
                self.hub.wake(name, wake);
                Ok(AppendOutcome::Appended {
                    info: s.meta.info(),
                    producer: echo,
                })
            }
        }
    }

    fn read(&self, name: &str, req: ReadRequest) -> Result<ReadOutcome, StorageError> {
        let stream = self.get(name)?;
        // Sources are looked up one at a time, never under another lock.
        let lookup = |n: &str| self.streams.read().get(n).cloned();
        let (info, json) = {
            let mut s = stream.lock();
            s.meta.check_visible(req.now)?;
            s.meta.last_access = req.now;
            (s.meta.info(), model::is_json(&s.meta.content_type))
        };
        let start = match req.from {
            ReadFrom::Start => Offset::ZERO,
            ReadFrom::Tail => info.tail,
            ReadFrom::At(o) => {
                if o.pos > info.tail.pos {
                    return Err(StorageError::InvalidOffset);
                }
                self.validate_view(&lookup, &stream, o, json)?;
                o
            }
        };
        let read = |at, budget| self.read_view(&lookup, &stream, at, info.tail.pos, budget);
        let (chunks, next) = view::read_stitched(read, start, info.tail, json, req.max_bytes)?;
        Ok(ReadOutcome {
            info,
            start,
            chunks,
            next,
        })
    }

    fn head(&self, name: &str, now: Millis) -> Result<StreamInfo, StorageError> {
        let stream = self.get(name)?;
        let s = stream.lock();
        s.meta.check_visible(now)?;
        Ok(s.meta.info())
    }

    fn delete(&self, name: &str, now: Millis) -> Result<(), StorageError> {
        let mut streams = self.streams.write();
        let stream = streams.get(name).cloned().ok_or(StorageError::NotFound)?;
        let mut s = stream.lock();
        s.meta.check_visible(now)?;
        if s.meta.refcount > 0 {
            s.meta.soft_deleted = true;
            self.wake(name, &s.meta);
            return Ok(());
        }
        drop(s);
        self.remove_cascade(&mut streams, name, now);
        Ok(())
    }

    fn list_streams(&self) -> Result<Vec<(String, StreamMeta)>, StorageError> {
        let mut all: Vec<(String, StreamMeta)> = self
            .streams
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.lock().meta.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn export_stream(&self, name: &str) -> Result<(StreamMeta, Vec<Bytes>), StorageError> {
        let stream = self.get(name)?;
        let s = stream.lock();
        Ok((s.meta.clone(), s.records.clone()))
    }

    fn restore_stream(
        &self,
        name: &str,
        mut meta: StreamMeta,
        records: Vec<Bytes>,
    ) -> Result<StreamInfo, StorageError> {
        super::check_restore(&meta, &records)?;
        let mut streams = self.streams.write();
        if streams.contains_key(name) {
            return Err(StorageError::AlreadyExists);
        }
        let source = match &meta.fork {
            Some(link) => {
                let source = streams
                    .get(&link.source)
                    .cloned()
                    .ok_or(StorageError::ForkSourceNotFound)?;
                let src = source.lock();
                super::check_restore_source(&meta, &src.meta)?;
                drop(src);
                Some(source)
            }
            None => None,
        };
        self.reserve(&records)?;
        meta.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        meta.refcount = 0;
        if let Some(source) = &source {
            let mut src = source.lock();
            src.meta.refcount += 1;
            if let Some(link) = meta.fork.as_mut() {
                link.source_id = src.meta.id;
            }
        }
        let tail = meta.tail;
        meta.tail = meta.base;
        let mut stream = Stream {
            meta,
            starts: Vec::with_capacity(records.len()),
            records: Vec::with_capacity(records.len()),
        };
        stream.push(records);
        stream.meta.tail = tail;
        let info = stream.meta.info();
        self.wake(name, &stream.meta);
        streams.insert(name.to_string(), Arc::new(Mutex::new(stream)));
        Ok(info)
    }

    fn sweep_expired(&self, now: Millis) -> Result<usize, StorageError> {
        let expired: Vec<String> = self
            .streams
            .read()
            .iter()
            .filter(|(_, s)| {
                let s = s.lock();
                s.meta.is_expired(now) && s.meta.refcount == 0
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut streams = self.streams.write();
        let mut removed = 0;
        for name in expired {
            let still = streams.get(&name).is_some_and(|s| {
                let s = s.lock();
                s.meta.is_expired(now) && s.meta.refcount == 0
            });
            if still {
                self.remove_cascade(&mut streams, &name, now);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{AppendOutcome, ForkSpec};

    fn store() -> MemoryStorage {
        MemoryStorage::new(WakeHub::new())
    }

    fn create(
        s: &MemoryStorage,
        name: &str,
        ct: &str,
        body: &str,
        fork: Option<ForkSpec>,
    ) -> Result<CreateOutcome, StorageError> {
        s.create(
            name,
            CreateRequest {
                content_type: Some(ct.into()),
                expiry: None,
                closed: false,
                fork,
                body: Bytes::copy_from_slice(body.as_bytes()),
                now: 0,
            },
        )
    }

    fn append(s: &MemoryStorage, name: &str, ct: &str, body: &str) -> Offset {
        let out = s
            .append(
                name,
                AppendRequest {
                    content_type: Some(ct.into()),
                    body: Bytes::copy_from_slice(body.as_bytes()),
                    close: false,
                    stream_seq: None,
                    producer: None,
                    now: 0,
                },
            )
            .unwrap();
        match out {
            AppendOutcome::Appended { info, .. } | AppendOutcome::Duplicate { info, .. } => {
                info.tail
            }
        }
    }

    fn read_all(s: &MemoryStorage, name: &str) -> String {
        let out = s
            .read(
                name,
                ReadRequest {
                    from: ReadFrom::Start,
                    max_bytes: usize::MAX,
                    now: 0,
                },
            )
            .unwrap();
        out.chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect()
    }

    fn fork(source: &str, offset: Option<Offset>, sub: u64) -> Option<ForkSpec> {
        Some(ForkSpec {
            source: source.into(),
            offset,
            sub_offset: sub,
        })
    }

    #[test]
    fn byte_sub_offsets_compose_along_a_chain() {
        let s = store();
        create(&s, "l0", "text/plain", "abcdef", None).unwrap();
        create(
            &s,
            "l1",
            "text/plain",
            "",
            fork("l0", Some(Offset::ZERO), 4),
        )
        .unwrap();
        create(
            &s,
            "l2",
            "text/plain",
            "",
            fork("l1", Some(Offset::ZERO), 2),
        )
        .unwrap();
        assert_eq!(read_all(&s, "l1"), "abcd");
        assert_eq!(read_all(&s, "l2"), "ab");
        append(&s, "l2", "text/plain", "Z");
        append(&s, "l0", "text/plain", "source-only");
        assert_eq!(read_all(&s, "l2"), "abZ");
        // Past the record containing the anchor is out of range.
        assert!(matches!(
            create(
                &s,
                "bad",
                "text/plain",
                "",
                fork("l1", Some(Offset::ZERO), 5)
            ),
            Err(StorageError::SubOffsetOutOfRange)
        ));
    }

    #[test]
    fn json_sub_offsets_count_messages_and_reads_chunk_across_the_boundary() {
        let s = store();
        create(
            &s,
            "src",
            "application/json",
            r#"[{"a":1},{"b":2},{"c":3}]"#,
            None,
        )
        .unwrap();
        create(
            &s,
            "f",
            "application/json",
            r#"{"d":4}"#,
            fork("src", Some(Offset::ZERO), 2),
        )
        .unwrap();
        assert_eq!(read_all(&s, "f"), r#"{"a":1},{"b":2},{"d":4},"#);
        // One message per chunk when the budget is tiny: boundaries line up.
        let mut from = ReadFrom::Start;
        let mut seen = Vec::new();
        loop {
            let out = s
                .read(
                    "f",
                    ReadRequest {
                        from,
                        max_bytes: 1,
                        now: 0,
                    },
                )
                .unwrap();
            if out.is_empty() {
                break;
            }
            assert_eq!(out.chunks.len(), 1);
            seen.push(String::from_utf8_lossy(&out.chunks[0]).into_owned());
            from = ReadFrom::At(out.next);
        }
        assert_eq!(seen, vec![r#"{"a":1},"#, r#"{"b":2},"#, r#"{"d":4},"#]);
        assert!(matches!(
            create(
                &s,
                "g",
                "application/json",
                "",
                fork("src", Some(Offset::ZERO), 4)
            ),
            Err(StorageError::SubOffsetOutOfRange)
        ));
    }

    #[test]
    fn soft_delete_keeps_data_for_forks_and_cascades() {
        let s = store();
        create(&s, "a", "text/plain", "1", None).unwrap();
        create(&s, "b", "text/plain", "2", fork("a", None, 0)).unwrap();
        create(&s, "c", "text/plain", "3", fork("b", None, 0)).unwrap();
        s.delete("a", 0).unwrap();
        s.delete("b", 0).unwrap();
        assert!(matches!(s.head("a", 0), Err(StorageError::Gone)));
        assert!(matches!(
            create(&s, "a", "text/plain", "", None),
            Err(StorageError::PathReserved)
        ));
        assert_eq!(read_all(&s, "c"), "123");
        s.delete("c", 0).unwrap();
        for name in ["a", "b", "c"] {
            assert!(
                matches!(s.head(name, 0), Err(StorageError::NotFound)),
                "{name}"
            );
        }
        assert!(s.streams.read().is_empty(), "the whole chain was reclaimed");
    }

    #[test]
    fn the_memory_limit_refuses_writes_and_deletes_give_room_back() {
        let s = MemoryStorage::with_limit(WakeHub::new(), 10);
        create(&s, "a", "text/plain", "12345678", None).unwrap();
        let err = s.append(
            "a",
            AppendRequest {
                content_type: Some("text/plain".into()),
                body: Bytes::from_static(b"abc"),
                close: false,
                stream_seq: None,
                producer: None,
                now: 0,
            },
        );
        assert!(matches!(err, Err(StorageError::NoSpace)));
        assert_eq!(
            read_all(&s, "a"),
            "12345678",
            "a refused write leaves nothing behind"
        );
        s.delete("a", 0).unwrap();
        create(&s, "b", "text/plain", "0123456789", None).unwrap();
    }

    #[test]
    fn expired_streams_are_absent_and_swept() {
        let s = store();
        s.create(
            "t",
            CreateRequest {
                content_type: None,
                expiry: Some(crate::storage::Expiry::Ttl(1)),
                closed: false,
                fork: None,
                body: Bytes::new(),
                now: 0,
            },
        )
        .unwrap();
        assert!(s.head("t", 999).is_ok());
        assert!(matches!(s.head("t", 1000), Err(StorageError::NotFound)));
        assert_eq!(s.sweep_expired(1000).unwrap(), 1);
        assert!(s.streams.read().is_empty());
    }
}
