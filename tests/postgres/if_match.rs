//! Conditional appends (`If-Match`) racing across two nodes on one
//! database: the comparison happens inside each node's locked transaction,
//! so for every expected tail exactly one append wins.

use std::sync::{Arc, Barrier};

use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::postgres::PgStorage;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateRequest, ReadRequest, Storage, StorageError,
};

use crate::common::pg;

const ROUNDS: usize = 40;

#[test]
fn two_nodes_racing_if_match_appends_have_one_winner_per_offset() {
    let _shared = pg::shared();
    let url = pg::fresh_database("if_match_race");
    let nodes: Vec<Arc<PgStorage>> = vec![Arc::new(pg::node(&url)), Arc::new(pg::node(&url))];
    nodes[0]
        .create("s", CreateRequest::new(Some("text/plain"), "", 0))
        .expect("create");
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let node = Arc::clone(node);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    // Both nodes learn the tail, then race on it.
                    barrier.wait();
                    let tail = node.head("s", 0).expect("head").tail;
                    barrier.wait();
                    let req = AppendRequest::new(Some("text/plain"), format!("{n}{round:02};"), 0)
                        .if_match(tail);
                    match node.append("s", req) {
                        Ok(AppendOutcome::Appended { info, .. }) => {
                            assert_eq!(info.tail, Offset::new(tail.seq + 1, tail.pos + 4));
                            wins.push((round, tail));
                        }
                        Err(StorageError::PreconditionFailed { tail: now, closed }) => {
                            assert!(!closed);
                            assert_eq!(now, Offset::new(tail.seq + 1, tail.pos + 4));
                        }
                        other => panic!("node {n} round {round}: {other:?}"),
                    }
                }
                wins
            })
        })
        .collect();
    let mut wins: Vec<(usize, Offset)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("racer"))
        .collect();
    wins.sort();
    // One winner per round, each at a distinct offset, in order.
    assert_eq!(wins.len(), ROUNDS, "{wins:?}");
    for (i, (round, at)) in wins.iter().enumerate() {
        assert_eq!(*round, i);
        assert_eq!(*at, Offset::new(i as u64, 4 * i as u64));
    }
    let all = nodes[1]
        .read("s", ReadRequest::all(ReadFrom::Start, 0))
        .expect("read");
    assert_eq!(all.len(), 4 * ROUNDS);
    assert_eq!(all.next, Offset::new(ROUNDS as u64, 4 * ROUNDS as u64));
}
