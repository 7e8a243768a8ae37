//! Many threads, each an idempotent producer, append to one stream through
//! one store or through several nodes sharing one database: nothing may be
//! lost, duplicated, reordered or torn, and every retry is a duplicate.

use std::sync::Arc;

use bytes::Bytes;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::{
    AppendRequest, CreateRequest, ProducerHeaders, ReadRequest, Storage,
};

use super::Open;

const THREADS: usize = 6;
const APPENDS: u64 = 30;

/// Producer `t`'s record `i`: its letter and the seq in two digits.
fn record(t: usize, i: u64) -> [u8; 3] {
    [b'a' + t as u8, b'0' + (i / 10) as u8, b'0' + (i % 10) as u8]
}

/// The whole of stream `s` through `store`.
fn read_all(store: &dyn Storage) -> durable_streams::storage::ReadOutcome {
    let req = ReadRequest {
        from: ReadFrom::Start,
        max_bytes: usize::MAX,
        lend_bytes: usize::MAX,
        now: 0,
    };
    store.read("s", req).expect("read the stream")
}

/// Checks a read of what [`concurrent_appends`] wrote: every record exactly
/// once, none torn (chunks hold whole records), each producer's in seq order.
fn check_appended(out: &durable_streams::storage::ReadOutcome) {
    let n = THREADS * APPENDS as usize;
    assert_eq!(out.len(), n * 3);
    assert_eq!(out.next, Offset::new(n as u64, n as u64 * 3));
    let mut bytes = Vec::new();
    for chunk in &out.chunks {
        assert_eq!(chunk.len() % 3, 0, "torn record {chunk:?}");
        bytes.extend_from_slice(chunk);
    }
    let mut next = [0u64; THREADS];
    for r in bytes.chunks(3) {
        let t = usize::from(r[0].wrapping_sub(b'a'));
        assert!(t < THREADS, "torn record {r:?}");
        assert_eq!(
            r,
            record(t, next[t]),
            "producer {t}: lost, duplicated or reordered"
        );
        next[t] += 1;
    }
    assert_eq!(next, [APPENDS; THREADS]);
}

/// Many threads, each an idempotent producer, append through `nodes` (thread
/// `t` through node `t`, its retries through node `t + 1`, modulo their
/// number): every retry is a duplicate, every node then reads the same
/// complete stream, and so does a store reopened after all are dropped.
pub fn concurrent_appends(nodes: Vec<Arc<dyn Storage>>, open: Open) {
    let create = CreateRequest {
        content_type: Some("text/plain".into()),
        expiry: None,
        closed: false,
        fork: None,
        body: Bytes::new(),
        now: 0,
    };
    nodes[0].create("s", create).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let node = Arc::clone(&nodes[t % nodes.len()]);
            let other = Arc::clone(&nodes[(t + 1) % nodes.len()]);
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    let req = AppendRequest {
                        content_type: Some("text/plain".into()),
                        body: Bytes::copy_from_slice(&record(t, i)),
                        close: false,
                        stream_seq: None,
                        producer: Some(ProducerHeaders {
                            id: format!("p{t}"),
                            epoch: 0,
                            seq: i,
                        }),
                        if_match: None,
                        now: 0,
                    };
                    let first = format!("{:?}", node.append("s", req.clone()).unwrap());
                    assert!(first.starts_with("Appended"), "{first}");
                    // A retry is always a duplicate, on any node.
                    for retry in [&other, &node] {
                        let dup = format!("{:?}", retry.append("s", req.clone()).unwrap());
                        assert!(dup.starts_with("Duplicate"), "{dup}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let first = read_all(&*nodes[0]);
    check_appended(&first);
    for node in &nodes[1..] {
        assert_eq!(read_all(&**node).chunks.concat(), first.chunks.concat());
    }
    drop(nodes);
    let reopened = open();
    let again = read_all(reopened.storage());
    check_appended(&again);
    assert_eq!(again.chunks.concat(), first.chunks.concat());
}
