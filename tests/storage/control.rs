//! The control-plane key/value contract (`Storage::control_*`), the same
//! checks on every backend, and reopening on the durable ones; on postgres
//! also two nodes sharing one database.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use durable_streams::config::SyncMode;
use durable_streams::notify::WakeHub;
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::file::FileStorage;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{CreateRequest, Storage};

use crate::common::pg;

fn file(dir: &Path) -> Box<dyn Storage> {
    Box::new(
        FileStorage::open(
            dir,
            SyncMode::Always,
            Duration::from_millis(100),
            WakeHub::new(),
        )
        .unwrap(),
    )
}

fn acid(dir: &Path) -> Box<dyn Storage> {
    Box::new(AcidStorage::open(dir, WakeHub::new()).unwrap())
}

fn postgres(url: &str) -> Box<dyn Storage> {
    Box::new(pg::node(url))
}

fn kv(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Puts, overwrites, deletes and namespaces, checked against the contract.
fn exercise(s: &dyn Storage) {
    assert!(s.control_scan("subs").unwrap().is_empty());
    s.control_put("subs", "b", b"2").unwrap();
    s.control_put("subs", "a", b"1").unwrap();
    s.control_put("subs", "a", b"one").unwrap();
    s.control_put("subs", "id with / and \u{e9}", b"").unwrap();
    s.control_put("subs-x", "a", b"other namespace").unwrap();
    s.control_put("keys", "signing", &[7; 32]).unwrap();
    s.control_delete("subs", "b").unwrap();
    s.control_delete("subs", "never-there").unwrap();
    assert_eq!(
        s.control_scan("subs").unwrap(),
        kv(&[("a", b"one"), ("id with / and \u{e9}", b"")])
    );
    assert_eq!(
        s.control_scan("subs-x").unwrap(),
        kv(&[("a", b"other namespace")])
    );
    // Refused: bad namespace, empty or oversized key.
    assert!(s.control_put("Subs", "a", b"").is_err());
    assert!(s.control_put("subs", "", b"").is_err());
    assert!(s.control_put("subs", &"k".repeat(1025), b"").is_err());
    // Create once: the first value stays.
    assert_eq!(s.control_put_new("once", "k", b"first").unwrap(), b"first");
    assert_eq!(s.control_put_new("once", "k", b"second").unwrap(), b"first");
    assert_eq!(s.control_scan("once").unwrap(), kv(&[("k", b"first")]));
    // Streams are untouched by control records and the reverse.
    assert!(s.list_streams().unwrap().is_empty());
}

/// [`exercise`], then reopens the store `open` gives (after dropping it).
fn survives_reopen(open: &dyn Fn() -> Box<dyn Storage>) {
    {
        let s = open();
        exercise(&*s);
        let req = CreateRequest {
            content_type: Some("text/plain".into()),
            expiry: None,
            closed: false,
            fork: None,
            body: bytes::Bytes::from_static(b"x"),
            now: 1,
        };
        s.create("stream", req).unwrap();
        // No shutdown: the records were durable when the calls returned.
    }
    let s = open();
    assert_eq!(
        s.control_scan("subs").unwrap(),
        kv(&[("a", b"one"), ("id with / and \u{e9}", b"")])
    );
    assert_eq!(
        s.control_scan("keys").unwrap(),
        kv(&[("signing", &[7; 32])])
    );
    assert_eq!(s.list_streams().unwrap().len(), 1);
    s.control_delete("subs", "a").unwrap();
    drop(s);
    let s = open();
    assert_eq!(s.control_scan("subs").unwrap().len(), 1);
    assert_eq!(s.control_scan("once").unwrap(), kv(&[("k", b"first")]));
}

#[test]
fn memory_backend_keeps_control_records() {
    exercise(&MemoryStorage::new(WakeHub::new()));
}

#[test]
fn file_backend_control_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    survives_reopen(&|| file(dir.path()));
}

#[test]
fn acid_backend_control_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    survives_reopen(&|| acid(dir.path()));
}

#[test]
fn postgres_backend_control_records_survive_reopen() {
    let url = pg::fresh_database("control");
    survives_reopen(&|| postgres(&url));
}

#[test]
fn postgres_nodes_share_control_records_and_agree_on_put_new() {
    let url = pg::fresh_database("control_nodes");
    let a: Arc<dyn Storage> = Arc::from(postgres(&url));
    let b: Arc<dyn Storage> = Arc::from(postgres(&url));
    // What one node puts or deletes, the other sees at once.
    a.control_put("subs", "x", b"from a").unwrap();
    assert_eq!(b.control_scan("subs").unwrap(), kv(&[("x", b"from a")]));
    b.control_delete("subs", "x").unwrap();
    assert!(a.control_scan("subs").unwrap().is_empty());
    // Create once across nodes: the first value wins, on both.
    assert_eq!(a.control_put_new("keys", "k", b"a").unwrap(), b"a");
    assert_eq!(b.control_put_new("keys", "k", b"b").unwrap(), b"a");
    // Nodes starting together race for one key: all agree on one value,
    // which is one of theirs and the one stored.
    let barrier = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let node = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                node.control_put_new("keys", "signing", &[i; 32]).unwrap()
            })
        })
        .collect();
    let won: Vec<Vec<u8>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(won.iter().all(|v| *v == won[0]), "nodes disagree: {won:?}");
    assert!((0..8u8).any(|i| won[0] == [i; 32]));
    for node in [&a, &b] {
        assert_eq!(
            node.control_scan("keys").unwrap(),
            kv(&[("k", b"a"), ("signing", &won[0])])
        );
    }
}

#[test]
fn acid_store_without_a_control_table_opens_and_gains_one() {
    // A store written before the control table existed: only the original
    // tables. Opening it must work and keep its streams.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("streams.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format_version", 1).unwrap();
            txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("streams"))
                .unwrap();
            txn.open_table(redb::TableDefinition::<(u64, u64), (u64, &[u8])>::new(
                "data",
            ))
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let s = acid(dir.path());
    assert!(s.control_scan("subs").unwrap().is_empty());
    s.control_put("subs", "a", b"1").unwrap();
}
