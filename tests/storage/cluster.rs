//! Leadership among postgres nodes sharing one database
//! (`Storage::cluster()`): exactly one node that advertised a URL leads, the
//! others learn its URL, and when the leader goes another takes over.

use std::time::{Duration, Instant};

use durable_streams::storage::Storage;
use durable_streams::storage::postgres::PgStorage;

use crate::common::pg;

/// How long leadership may take to settle (nodes poll every 500 ms).
const SETTLE: Duration = Duration::from_secs(10);

fn leads(node: &PgStorage) -> bool {
    node.cluster().unwrap().leadership().is_some()
}

fn leader_url(node: &PgStorage) -> Option<String> {
    node.cluster().unwrap().leader_url().unwrap()
}

/// Polls `cond` every 20 ms until it holds; panics after [`SETTLE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < SETTLE, "not within {SETTLE:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn one_node_leads_and_another_takes_over_when_it_goes() {
    let db = pg::fresh_database("leader");
    let nodes = [pg::node(&db), pg::node(&db)];
    let urls = ["http://node-a:1", "http://node-b:2"];
    assert!(!nodes.iter().any(leads), "no node leads before advertising");
    assert_eq!(leader_url(&nodes[0]), None);
    for (n, url) in nodes.iter().zip(urls) {
        n.cluster().unwrap().advertise(url);
    }
    wait_for("a node leads", || nodes.iter().any(leads));
    let leader = nodes.iter().position(leads).unwrap();
    let other = 1 - leader;
    // The other node keeps trying (every 500 ms) and must keep failing:
    // watch a few of its attempts.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1_600) {
        assert!(leads(&nodes[leader]), "the leader lost leadership");
        assert!(!leads(&nodes[other]), "two nodes lead at once");
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in &nodes {
        assert_eq!(leader_url(n).as_deref(), Some(urls[leader]));
    }

    // The leader shuts down: its session ends, its lock is released.
    let [a, b] = nodes;
    let (gone, survivor) = if leader == 0 { (a, b) } else { (b, a) };
    gone.shutdown().unwrap();
    drop(gone);
    let took = wait_for("the other node leads", || leads(&survivor));
    eprintln!("takeover after {took:?}");
    assert_eq!(leader_url(&survivor).as_deref(), Some(urls[other]));
}
