//! Model-based test: random operation sequences run against the in-memory
//! backend (the model) and the file backend, which is closed and reopened on
//! the same directory at random points. Every outcome must match, except
//! stream incarnation ids, which legitimately differ.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use durable_streams::config::SyncMode;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::file::FileStorage;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendRequest, CreateRequest, Expiry, ForkSpec, ProducerHeaders, ReadRequest, Storage,
    StorageError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 5] = ["a", "b", "c", "d/e", "f"];
const TYPES: [&str; 2] = ["text/plain", "application/json"];

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(10),
        WakeHub::new(),
    )
    .expect("open")
}

/// Debug text with every `id: <number>` blanked.
fn without_ids(text: String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("id: ") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('_');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn show<T: Debug>(r: &Result<T, StorageError>) -> String {
    without_ids(format!("{r:?}"))
}

fn body(rng: &mut StdRng, json: bool) -> Bytes {
    let n = rng.random_range(0..4);
    if json {
        let items: Vec<String> = (0..n).map(|i| format!("{{\"k\":{i}}}")).collect();
        Bytes::from(match rng.random_range(0..3) {
            0 if n > 0 => items[0].clone(),
            1 => "not json".to_string(),
            _ => format!("[{}]", items.join(",")),
        })
    } else {
        let len = rng.random_range(0..6) * n;
        Bytes::from((0..len).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
    }
}

struct Run {
    rng: StdRng,
    now: u64,
    offsets: Vec<Offset>,
    producer_seq: [u64; 5],
    /// The last append that was accepted, to retry.
    last_append: Option<(&'static str, AppendRequest)>,
}

impl Run {
    fn name(&mut self) -> &'static str {
        NAMES[self.rng.random_range(0..NAMES.len())]
    }

    fn offset(&mut self) -> Option<Offset> {
        if self.offsets.is_empty() || self.rng.random_bool(0.3) {
            None
        } else {
            Some(self.offsets[self.rng.random_range(0..self.offsets.len())])
        }
    }

    fn create(&mut self) -> CreateRequest {
        let json = self.rng.random_bool(0.4);
        let fork = self.rng.random_bool(0.35).then(|| {
            let source = self.name();
            (source, self.offset())
        });
        let fork = fork.map(|(source, offset)| ForkSpec {
            source: source.to_string(),
            offset,
            sub_offset: if self.rng.random_bool(0.7) {
                0
            } else {
                self.rng.random_range(1..4)
            },
        });
        let expiry = match self.rng.random_range(0..6) {
            0 => Some(Expiry::At(self.now + self.rng.random_range(1..400))),
            1 => Some(Expiry::Ttl(1_000_000)),
            _ => None,
        };
        CreateRequest {
            content_type: if fork.is_some() && self.rng.random_bool(0.5) {
                None
            } else {
                Some(TYPES[json as usize].to_string())
            },
            expiry,
            closed: self.rng.random_bool(0.1),
            fork,
            body: body(&mut self.rng, json),
            now: self.now,
        }
    }

    /// An append, usually of the stream's own type (`json`, when known).
    fn append(&mut self, json: Option<bool>) -> AppendRequest {
        let json = match json {
            Some(j) if self.rng.random_bool(0.9) => j,
            _ => self.rng.random_bool(0.4),
        };
        let p = self.rng.random_range(0..5);
        let producer = self.rng.random_bool(0.4).then(|| {
            // Mostly the next seq, sometimes a retry or a gap.
            let seq = match self.rng.random_range(0..6) {
                0 => self.producer_seq[p].saturating_sub(1),
                1 => self.producer_seq[p] + 2,
                _ => self.producer_seq[p],
            };
            self.producer_seq[p] = seq + 1;
            ProducerHeaders {
                id: format!("p{p}"),
                epoch: u64::from(self.rng.random_bool(0.1)),
                seq,
            }
        });
        AppendRequest {
            content_type: self
                .rng
                .random_bool(0.95)
                .then(|| TYPES[json as usize].to_string()),
            body: body(&mut self.rng, json),
            close: self.rng.random_bool(0.08),
            stream_seq: self
                .rng
                .random_bool(0.2)
                .then(|| format!("{:03}", self.rng.random_range(0..50))),
            producer,
            now: self.now,
        }
    }
}

fn check(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let model = MemoryStorage::new(WakeHub::new());
    let mut file = open(dir.path());
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        now: 1_000,
        offsets: vec![Offset::ZERO],
        producer_seq: [0; 5],
        last_append: None,
    };
    for step in 0..steps {
        run.now += run.rng.random_range(0..5);
        let name = run.name();
        let what = run.rng.random_range(0..100);
        let (op, want, got) = match what {
            0..20 => {
                let req = run.create();
                let op = format!("create {name} {req:?}");
                (
                    op,
                    show(&model.create(name, req.clone())),
                    show(&file.create(name, req)),
                )
            }
            20..55 => {
                let (name, req) = match run.last_append.clone() {
                    Some((n, mut r)) if run.rng.random_bool(0.15) => {
                        r.now = run.now;
                        (n, r)
                    }
                    _ => {
                        let json = model.head(name, run.now).ok().map(|i| i.is_json());
                        (name, run.append(json))
                    }
                };
                let op = format!("append {name} {req:?}");
                let want = model.append(name, req.clone());
                if matches!(
                    want,
                    Ok(durable_streams::storage::AppendOutcome::Appended { .. })
                ) {
                    run.last_append = Some((name, req.clone()));
                }
                (op, show(&want), show(&file.append(name, req)))
            }
            55..80 => {
                let from = match run.rng.random_range(0..4) {
                    0 => ReadFrom::Start,
                    1 => ReadFrom::Tail,
                    _ => run.offset().map_or(ReadFrom::Start, ReadFrom::At),
                };
                let req = ReadRequest {
                    from,
                    max_bytes: run.rng.random_range(1..30),
                    now: run.now,
                };
                let op = format!("read {name} {from:?} {}", req.max_bytes);
                let flat = |r: Result<durable_streams::storage::ReadOutcome, StorageError>| {
                    r.map(|o| {
                        let bytes: Vec<u8> =
                            o.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                        (
                            o.info,
                            o.start,
                            String::from_utf8_lossy(&bytes).into_owned(),
                            o.next,
                        )
                    })
                };
                let want = flat(model.read(name, req.clone()));
                let got = flat(file.read(name, req));
                if let Ok((_, _, _, next)) = &want {
                    run.offsets.push(*next);
                }
                (op, show(&want), show(&got))
            }
            80..88 => {
                let op = format!("delete {name}");
                (
                    op,
                    show(&model.delete(name, run.now)),
                    show(&file.delete(name, run.now)),
                )
            }
            88..93 => {
                let op = format!("head {name}");
                let want = model.head(name, run.now);
                if let Ok(info) = &want {
                    run.offsets.push(info.tail);
                }
                (op, show(&want), show(&file.head(name, run.now)))
            }
            93..96 => {
                let op = "sweep".to_string();
                (
                    op,
                    show(&model.sweep_expired(run.now)),
                    show(&file.sweep_expired(run.now)),
                )
            }
            96..98 => {
                file.checkpoint().unwrap();
                continue;
            }
            _ => {
                drop(file);
                file = open(dir.path());
                continue;
            }
        };
        if std::env::var("DS_MODEL_TRACE").is_ok() {
            eprintln!("{op} => {want}");
        }
        assert_eq!(want, got, "seed {seed} step {step}: {op}");
    }
    drop(file);
    // A final reopen must show the same state for every name.
    let file = open(dir.path());
    for name in NAMES {
        let req = ReadRequest {
            from: ReadFrom::Start,
            max_bytes: usize::MAX,
            now: run.now,
        };
        let flat = |r: Result<durable_streams::storage::ReadOutcome, StorageError>| {
            r.map(|o| (o.info, o.chunks.concat(), o.next))
        };
        assert_eq!(
            show(&flat(model.read(name, req.clone()))),
            show(&flat(file.read(name, req))),
            "seed {seed} final read of {name}"
        );
    }
}

#[test]
fn file_backend_matches_the_memory_model() {
    let seeds: u64 = std::env::var("DS_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let first: u64 = std::env::var("DS_MODEL_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        check(seed, 300);
    }
}
