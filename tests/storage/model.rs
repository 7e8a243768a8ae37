//! The durable backends (acid, postgres) must behave exactly like the memory
//! backend (the model).
//!
//! Drives the same seeded random sequence of creates, appends, closes, forks,
//! deletes, reads, heads and sweeps against the model and the store under
//! test, reopening the store at random points, and compares every outcome
//! (stream ids, which legitimately differ, are masked). Then many threads
//! append through one store, or through two postgres nodes sharing a
//! database, and nothing may be lost, duplicated, reordered or torn.
//!
//! Environment: `ACID_MODEL_SEEDS` / `PG_MODEL_SEEDS` (how many seeds, default
//! 16 / 6), `MODEL_STEPS` (operations per seed, default 300), `MODEL_STATS`
//! (print per-seed outcome counts).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendRequest, CreateRequest, Expiry, ForkSpec, ProducerHeaders, ReadRequest, Storage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 5] = ["a", "b", "c", "a/x", "d"];
const TYPES: [&str; 3] = ["text/plain", "application/json", "application/octet-stream"];

/// Debug output with every `id: N` masked.
fn masked(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("id: ") {
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push('#');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A body, mostly valid for the stream's mode.
fn body(rng: &mut StdRng, json: Option<bool>) -> Bytes {
    let pick = match json {
        Some(true) if rng.random_bool(0.8) => rng.random_range(3..7),
        Some(false) if rng.random_bool(0.8) => 9,
        _ => rng.random_range(0..10),
    };
    let s = match pick {
        0 => String::new(),
        1 => "[]".into(),
        2 => "{not json".into(),
        3 => format!(
            "[{},{{\"k\":{}}},\"s\"]",
            rng.random_range(0..100),
            rng.random_range(0..100)
        ),
        4 => format!("[[{}]]", rng.random_range(0..1000)),
        5 | 6 => format!("{{\"v\":{}}}", rng.random_range(0..1000)),
        _ => {
            let n = rng.random_range(1..12);
            (0..n)
                .map(|_| rng.random_range(b'0'..=b'9') as char)
                .collect()
        }
    };
    Bytes::from(s)
}

fn pick_offset(rng: &mut StdRng, seen: &[Offset]) -> Offset {
    if !seen.is_empty() && rng.random_bool(0.8) {
        let o = seen[rng.random_range(0..seen.len())];
        if rng.random_bool(0.2) && o.pos > 0 {
            // Somewhere inside a record, possibly with a wrong seq.
            return Offset::new(o.seq.saturating_sub(rng.random_range(0..2)), o.pos - 1);
        }
        o
    } else {
        Offset::new(rng.random_range(0..6), rng.random_range(0..60))
    }
}

fn expiry(rng: &mut StdRng, now: u64) -> Option<Expiry> {
    match rng.random_range(0..8) {
        0 => Some(Expiry::Ttl(rng.random_range(1..6))),
        1 => Some(Expiry::At(now + rng.random_range(0..8_000))),
        2 => Some(Expiry::Never),
        _ => None,
    }
}

use crate::common::pg;

/// Opens the store under test on its (persistent) location: a directory, a
/// database. Calling it again after dropping the previous instance is a
/// reopen; calling it while another instance lives opens a second node
/// (postgres only).
type Open<'a> = &'a dyn Fn() -> Box<dyn Storage>;

fn open_acid(dir: &Path) -> Box<dyn Storage> {
    Box::new(AcidStorage::open(dir, WakeHub::new()).expect("open acid store"))
}

/// A node on the database at `url`. Dropping it shuts it down (its writer
/// finishes what is queued, its connections close).
fn open_pg(url: &str) -> Box<dyn Storage> {
    Box::new(pg::node(url))
}

/// The number in environment variable `var`, else `default`.
fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Collects offsets from an outcome's Debug text (`Offset { seq: S, pos: P }`).
fn harvest(text: &str, seen: &mut Vec<Offset>) {
    let mut rest = text;
    while let Some(i) = rest.find("Offset { seq: ") {
        rest = &rest[i + 14..];
        let seq: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Some(j) = rest.find("pos: ") else { break };
        let pos: String = rest[j + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let (Ok(seq), Ok(pos)) = (seq.parse(), pos.parse()) {
            let o = Offset::new(seq, pos);
            if !seen.contains(&o) {
                seen.push(o);
            }
        }
    }
}

/// One seeded history of `steps` operations on the model and on the store
/// `open` gives, reopened at random points; panics on the first difference.
fn run(seed: u64, steps: usize, open: Open) {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = MemoryStorage::new(WakeHub::new());
    let mut subject = Some(open());
    let mut now: u64 = 1_000_000;
    let mut seen: Vec<Offset> = vec![Offset::ZERO];
    let mut stats = std::collections::BTreeMap::new();
    // Content type of each name's current stream, per the model.
    let mut types: HashMap<&str, String> = HashMap::new();
    for step in 0..steps {
        now += if rng.random_bool(0.03) {
            rng.random_range(1_000..8_000)
        } else {
            rng.random_range(0..150)
        };
        if rng.random_bool(0.03) {
            drop(subject.take());
            subject = Some(open());
        }
        let store = subject.as_ref().unwrap();
        let mut name = NAMES[rng.random_range(0..NAMES.len())];
        // The model's view, without side effects (HEAD renews nothing).
        let exists = |n: &str| model.head(n, now).is_ok();
        let mut op = rng.random_range(0..19);
        if !exists(name) && rng.random_bool(0.6) {
            op = 0;
        }
        let fork_wanted = rng.random_bool(0.35);
        if op <= 3 && fork_wanted && rng.random_bool(0.8) {
            // A fork needs a free name to be interesting.
            if let Some(free) = NAMES.iter().find(|n| !exists(n)) {
                name = free;
            }
        }
        let stream_type = types.get(name).cloned();
        let json = stream_type.as_deref().map(|t| t == "application/json");
        let (what, m, a) = match op {
            0..=3 => {
                let fork = fork_wanted.then(|| {
                    let source = NAMES[rng.random_range(0..NAMES.len())].to_string();
                    let offset = rng.random_bool(0.5).then(|| pick_offset(&mut rng, &seen));
                    ForkSpec {
                        offset,
                        source,
                        sub_offset: if rng.random_bool(0.8) {
                            0
                        } else {
                            rng.random_range(0..4)
                        },
                    }
                });
                let content_type = match &fork {
                    Some(f) if rng.random_bool(0.7) => {
                        None.or_else(|| types.get(f.source.as_str()).cloned())
                    }
                    _ => rng
                        .random_bool(0.8)
                        .then(|| TYPES[rng.random_range(0..TYPES.len())].to_string()),
                };
                let body_json = content_type.as_deref().map(|t| t == "application/json");
                let req = CreateRequest {
                    content_type,
                    expiry: expiry(&mut rng, now),
                    closed: rng.random_bool(0.1),
                    fork,
                    body: body(&mut rng, body_json),
                    now,
                };
                (
                    format!("create {name} {req:?}"),
                    format!("{:?}", model.create(name, req.clone())),
                    format!("{:?}", store.create(name, req)),
                )
            }
            4..=10 => {
                let content_type = if rng.random_bool(0.85) {
                    stream_type.clone()
                } else {
                    rng.random_bool(0.9)
                        .then(|| TYPES[rng.random_range(0..2)].to_string())
                };
                let req = AppendRequest {
                    content_type,
                    body: body(&mut rng, json),
                    close: rng.random_bool(0.07),
                    stream_seq: rng
                        .random_bool(0.15)
                        .then(|| format!("{:03}", rng.random_range(0..40))),
                    producer: rng.random_bool(0.4).then(|| ProducerHeaders {
                        id: format!("p{}", rng.random_range(0..2)),
                        epoch: rng.random_range(0..3),
                        seq: rng.random_range(0..4),
                    }),
                    now,
                };
                (
                    format!("append {name} {req:?}"),
                    format!("{:?}", model.append(name, req.clone())),
                    format!("{:?}", store.append(name, req)),
                )
            }
            11..=15 => {
                let from = match rng.random_range(0..5) {
                    0 => ReadFrom::Start,
                    1 => ReadFrom::Tail,
                    _ => ReadFrom::At(pick_offset(&mut rng, &seen)),
                };
                let req = ReadRequest {
                    from,
                    max_bytes: if rng.random_bool(0.5) {
                        usize::MAX
                    } else {
                        rng.random_range(1..20)
                    },
                    now,
                };
                (
                    format!("read {name} {req:?}"),
                    format!("{:?}", model.read(name, req.clone())),
                    format!("{:?}", store.read(name, req)),
                )
            }
            16 => (
                format!("head {name}"),
                format!("{:?}", model.head(name, now)),
                format!("{:?}", store.head(name, now)),
            ),
            17 => (
                format!("delete {name}"),
                format!("{:?}", model.delete(name, now)),
                format!("{:?}", store.delete(name, now)),
            ),
            _ => (
                "sweep".to_string(),
                format!("{:?}", model.sweep_expired(now)),
                format!("{:?}", store.sweep_expired(now)),
            ),
        };
        let (m, a) = (masked(m), masked(a));
        assert_eq!(m, a, "seed {seed} step {step} at {now}: {what}");
        let kind = what.split(' ').next().unwrap_or("").to_string();
        let fork = what.contains("fork: Some");
        let entry = stats
            .entry((kind, fork, m.chars().take(30).collect::<String>()))
            .or_insert(0usize);
        *entry += 1;
        harvest(&m, &mut seen);
        if what.starts_with("create") && m.starts_with("Ok(Created") {
            let info = model.head(name, now).unwrap();
            types.insert(name, info.content_type);
        }
    }
    if std::env::var_os("MODEL_STATS").is_some() {
        eprintln!("seed {seed}: (op, fork, outcome) counts {stats:?}");
    }
    // Everything the model still serves, the reopened store serves identically.
    drop(subject.take());
    let store = open();
    for name in NAMES {
        let req = ReadRequest {
            from: ReadFrom::Start,
            max_bytes: usize::MAX,
            now,
        };
        assert_eq!(
            masked(format!("{:?}", model.read(name, req.clone()))),
            masked(format!("{:?}", store.read(name, req))),
            "seed {seed} final read of {name}"
        );
    }
}

/// Operations per history.
fn steps() -> usize {
    env_or("MODEL_STEPS", 300) as usize
}

#[test]
fn acid_matches_memory_on_random_histories() {
    for seed in 0..env_or("ACID_MODEL_SEEDS", 16) {
        let dir = tempfile::tempdir().unwrap();
        run(seed, steps(), &|| open_acid(dir.path()));
    }
}

#[test]
fn postgres_matches_memory_on_random_histories() {
    // A reopen drops the node (shutting it down) and opens a new one on the
    // same database: nothing may live only in a node's memory.
    for seed in 0..env_or("PG_MODEL_SEEDS", 6) {
        let url = pg::fresh_database(&format!("model_{seed}"));
        run(seed, steps(), &|| open_pg(&url));
    }
}

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
fn concurrent_appends(nodes: Vec<Arc<dyn Storage>>, open: Open) {
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
    let again = read_all(&*reopened);
    check_appended(&again);
    assert_eq!(again.chunks.concat(), first.chunks.concat());
}

#[test]
fn concurrent_clients_see_a_consistent_store() {
    // Many threads appending through one store: nothing lost, nothing torn.
    let dir = tempfile::tempdir().unwrap();
    let open = || open_acid(dir.path());
    concurrent_appends(vec![Arc::from(open())], &open);
}

#[test]
fn concurrent_clients_see_a_consistent_postgres_store() {
    let url = pg::fresh_database("concurrent");
    let open = || open_pg(&url);
    concurrent_appends(vec![Arc::from(open())], &open);
}

#[test]
fn two_postgres_nodes_append_to_one_stream_consistently() {
    // Appends to one stream serialize across nodes (row locks), and producer
    // states are shared: a retry through the other node is a duplicate.
    let url = pg::fresh_database("two_nodes");
    let open = || open_pg(&url);
    concurrent_appends(vec![Arc::from(open()), Arc::from(open())], &open);
}
