//! Damage to the acid backend's file, as far as redb lets us make it. Torn
//! transactions from real crashes are covered by the kill -9 tests in
//! `crash.rs` (redb rolls back to the last complete commit); here, bytes a
//! cleanly closed store never wrote must stop the store with an error rather
//! than a panic, and must never be "repaired" into lost data.

use std::io::Write;

use bytes::Bytes;
use durable_streams::notify::WakeHub;
use durable_streams::offset::ReadFrom;
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::{AppendRequest, CreateRequest, ReadRequest, Storage};

fn append(s: &AcidStorage, body: &str) {
    s.append(
        "s",
        AppendRequest {
            content_type: Some("text/plain".into()),
            body: Bytes::copy_from_slice(body.as_bytes()),
            close: false,
            stream_seq: None,
            producer: None,
            if_match: None,
            now: 0,
        },
    )
    .expect("append");
}

fn read_all(s: &AcidStorage) -> Vec<u8> {
    let out = s
        .read(
            "s",
            ReadRequest {
                from: ReadFrom::Start,
                max_bytes: usize::MAX,
                lend_bytes: usize::MAX,
                now: 0,
            },
        )
        .expect("read");
    out.chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

#[test]
fn garbage_past_a_clean_close_is_refused_without_panic_or_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let s = AcidStorage::open(dir.path(), WakeHub::new()).unwrap();
        s.create(
            "s",
            CreateRequest {
                content_type: Some("text/plain".into()),
                expiry: None,
                closed: false,
                fork: None,
                body: Bytes::from_static(b"start "),
                now: 0,
            },
        )
        .unwrap();
        for i in 0..50 {
            append(&s, &format!("{i} "));
        }
        let data = read_all(&s);
        // No shutdown: the process "dies" here.
        drop(s);
        data
    };
    // Bytes past the end of a cleanly closed file.
    let path = dir.path().join("streams.redb");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
    drop(f);

    match AcidStorage::open(dir.path(), WakeHub::new()) {
        // redb 2.6 asserts on this file; we turn that into a clear error, so
        // the server stops with a message instead of a panic.
        Err(e) => assert!(e.to_string().contains("damaged"), "{e}"),
        // Should a later redb repair it, nothing acknowledged may be lost.
        Ok(s) => {
            assert_eq!(
                read_all(&s),
                expected,
                "everything acknowledged is still served"
            );
            append(&s, "after");
        }
    }
}
