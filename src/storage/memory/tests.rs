use super::*;
use crate::offset::ReadFrom;
use crate::storage::{AppendOutcome, Expiry, ForkSpec};

fn store() -> MemoryStorage {
    MemoryStorage::new(WakeHub::new())
}

/// A create of `body` as `ct`, forking `fork` when given.
fn create(
    s: &MemoryStorage,
    name: &str,
    ct: &str,
    body: &str,
    fork: Option<ForkSpec>,
) -> Result<CreateOutcome, StorageError> {
    let mut req = CreateRequest::new(Some(ct), body.to_string(), 0);
    req.fork = fork;
    s.create(name, req)
}

fn append(s: &MemoryStorage, name: &str, ct: &str, body: &str) -> Offset {
    match s.append(name, AppendRequest::new(Some(ct), body.to_string(), 0)) {
        Ok(AppendOutcome::Appended { info, .. } | AppendOutcome::Duplicate { info, .. }) => {
            info.tail
        }
        Err(e) => panic!("append to {name}: {e}"),
    }
}

fn read_all(s: &MemoryStorage, name: &str) -> String {
    let out = s.read(name, ReadRequest::all(ReadFrom::Start, 0)).unwrap();
    String::from_utf8_lossy(&out.concat()).into_owned()
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
    let at_zero = |src, sub| fork(src, Some(Offset::ZERO), sub);
    create(&s, "l0", "text/plain", "abcdef", None).unwrap();
    create(&s, "l1", "text/plain", "", at_zero("l0", 4)).unwrap();
    create(&s, "l2", "text/plain", "", at_zero("l1", 2)).unwrap();
    assert_eq!(read_all(&s, "l1"), "abcd");
    assert_eq!(read_all(&s, "l2"), "ab");
    append(&s, "l2", "text/plain", "Z");
    append(&s, "l0", "text/plain", "source-only");
    assert_eq!(read_all(&s, "l2"), "abZ");
    // Past the record containing the anchor is out of range.
    assert!(matches!(
        create(&s, "bad", "text/plain", "", at_zero("l1", 5)),
        Err(StorageError::SubOffsetOutOfRange)
    ));
}

#[test]
fn json_sub_offsets_count_messages_and_reads_chunk_across_the_boundary() {
    let s = store();
    let json = "application/json";
    create(&s, "src", json, r#"[{"a":1},{"b":2},{"c":3}]"#, None).unwrap();
    let at_zero = |sub| fork("src", Some(Offset::ZERO), sub);
    create(&s, "f", json, r#"{"d":4}"#, at_zero(2)).unwrap();
    assert_eq!(read_all(&s, "f"), r#"{"a":1},{"b":2},{"d":4},"#);
    // One message per chunk when the budget is tiny: boundaries line up.
    let mut from = ReadFrom::Start;
    let mut seen = Vec::new();
    loop {
        let mut req = ReadRequest::all(from, 0);
        req.max_bytes = 1;
        req.lend_bytes = 1;
        let out = s.read("f", req).unwrap();
        if out.is_empty() {
            break;
        }
        assert_eq!(out.chunks.len(), 1);
        seen.push(String::from_utf8_lossy(&out.chunks[0]).into_owned());
        from = ReadFrom::At(out.next);
    }
    assert_eq!(seen, vec![r#"{"a":1},"#, r#"{"b":2},"#, r#"{"d":4},"#]);
    assert!(matches!(
        create(&s, "g", json, "", at_zero(4)),
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
    let err = s.append("a", AppendRequest::new(Some("text/plain"), "abc", 0));
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
    let mut req = CreateRequest::new(None, "", 0);
    req.expiry = Some(Expiry::Ttl(1));
    s.create("t", req).unwrap();
    assert!(s.head("t", 999).is_ok());
    assert!(matches!(s.head("t", 1000), Err(StorageError::NotFound)));
    assert_eq!(s.sweep_expired(1000).unwrap(), 1);
    assert!(s.streams.read().is_empty());
}

#[test]
fn a_refused_create_leaves_nothing_behind() {
    let s = MemoryStorage::with_limit(WakeHub::new(), 10);
    create(&s, "a", "text/plain", "12345678", None).unwrap();
    assert!(matches!(
        create(&s, "b", "text/plain", "12345", None),
        Err(StorageError::NoSpace)
    ));
    assert!(matches!(
        create(&s, "f", "text/plain", "12345", fork("a", None, 0)),
        Err(StorageError::NoSpace)
    ));
    assert!(matches!(s.head("b", 0), Err(StorageError::NotFound)));
    assert!(matches!(s.head("f", 0), Err(StorageError::NotFound)));
    assert_eq!(s.stream_count(), Some(1));
    // The refused fork took no reference: the delete removes the source.
    s.delete("a", 0).unwrap();
    assert!(s.streams.read().is_empty());
    create(&s, "c", "text/plain", "0123456789", None).unwrap();
}

#[test]
fn forks_taken_while_the_source_is_appended_lose_nothing() {
    let s = Arc::new(store());
    create(&s, "src", "text/plain", "", None).unwrap();
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            for i in 0..200 {
                append(&s, "src", "text/plain", &format!("{i},"));
            }
        })
    };
    for i in 0..50 {
        create(&s, &format!("f{i}"), "text/plain", "", fork("src", None, 0)).unwrap();
    }
    writer.join().unwrap();
    let all: String = (0..200).map(|i| format!("{i},")).collect();
    assert_eq!(read_all(&s, "src"), all);
    for i in 0..50 {
        let seen = read_all(&s, &format!("f{i}"));
        assert!(all.starts_with(&seen), "fork {i} read {seen:?}");
    }
    let (meta, _) = s.export_stream("src").unwrap();
    assert_eq!(meta.refcount, 50);
}
