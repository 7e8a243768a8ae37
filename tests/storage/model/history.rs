//! The random-history generator and the driver that runs one history on the
//! model (the memory backend) and on a store under test, comparing every
//! outcome.
//!
//! One generator for every backend, the union of what the two earlier
//! drivers (one for the file backend, one for acid and postgres) drew:
//! creates (plain, closed, with a TTL or an expiry time, forks at exact,
//! mid-record, stale or random offsets with sub-offsets, onto free names),
//! appends (the stream's own type or another, valid and invalid JSON,
//! closes, `Stream-Seq`s, `If-Match` on the tail or a stale offset (alone
//! or, refused, with producer headers), idempotent producers that mostly follow their
//! sequence and others drawn at random, exact retries of the last accepted
//! append), reads from the start, the tail or any offset seen with or
//! without a byte limit, heads, trims (to seen offsets, mid-record ones, the
//! tail or beyond), deletes and sweeps, with time moving in
//! small steps and sometimes jumps past TTLs. At random points the store is
//! checkpointed (the file backend) or dropped and reopened (after a clean
//! shutdown or without one, so that recovery replays what the last
//! checkpoint did not hold); at the end, reopened once more, it must serve
//! every name exactly as the model does.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendRequest, CreateRequest, Expiry, ForkSpec, ProducerHeaders, ReadRequest, Storage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Open, Subject};

/// Stream names, two of them below another's path.
const NAMES: [&str; 6] = ["a", "b", "c", "a/x", "d", "d/e"];
const TYPES: [&str; 3] = ["text/plain", "application/json", "application/octet-stream"];

/// Debug output with every `id: N` masked: stream incarnation ids (and fork
/// source ids) are the backend's to choose.
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

/// The generator's state: what it has seen, to draw interesting requests.
struct History {
    rng: StdRng,
    now: u64,
    /// Offsets seen in outcomes (and zero).
    seen: Vec<Offset>,
    /// Next seq of each sequential producer `p0`..`p4`, as the history
    /// believes (retries and gaps move it too).
    producer_seq: [u64; 5],
    /// The last append the model accepted, to retry exactly.
    last_append: Option<(&'static str, AppendRequest)>,
    /// Content type of each name's current stream, per the model.
    types: HashMap<&'static str, String>,
    /// Whether to draw sliding TTLs of a few seconds (see
    /// [`Subject::keeps_read_renewals`]).
    short_ttls: bool,
    /// Whether reads may ask to lend (see [`Subject::lends_reads`]).
    lends: bool,
}

impl History {
    fn new(seed: u64, short_ttls: bool, lends: bool) -> History {
        History {
            rng: StdRng::seed_from_u64(seed),
            now: 1_000_000,
            seen: vec![Offset::ZERO],
            producer_seq: [0; 5],
            last_append: None,
            types: HashMap::new(),
            short_ttls,
            lends,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn name(&mut self) -> &'static str {
        NAMES[self.rng.random_range(0..NAMES.len())]
    }

    /// Mostly one of `TYPES`, sometimes none (the default).
    fn some_type(&mut self) -> Option<String> {
        self.chance(0.85)
            .then(|| TYPES[self.rng.random_range(0..TYPES.len())].to_string())
    }

    /// A seen offset (sometimes inside a record, possibly with a wrong
    /// seq), or any small offset.
    fn offset(&mut self) -> Offset {
        if self.chance(0.8) {
            let o = self.seen[self.rng.random_range(0..self.seen.len())];
            if self.chance(0.2) && o.pos > 0 {
                return Offset::new(o.seq.saturating_sub(self.rng.random_range(0..2)), o.pos - 1);
            }
            o
        } else {
            Offset::new(self.rng.random_range(0..6), self.rng.random_range(0..60))
        }
    }

    fn expiry(&mut self) -> Option<Expiry> {
        let now = self.now;
        match self.rng.random_range(0..10) {
            0 => Some(Expiry::Ttl(if self.short_ttls {
                self.rng.random_range(1..6)
            } else {
                1_000_000 + self.rng.random_range(1..6)
            })),
            1 => Some(Expiry::Ttl(1_000_000)),
            2 => Some(Expiry::At(now + self.rng.random_range(1..400))),
            3 => Some(Expiry::At(now + self.rng.random_range(0..8_000))),
            4 => Some(Expiry::Never),
            _ => None,
        }
    }

    /// A body, mostly valid for the stream's mode (`json`, when known).
    fn body(&mut self, json: Option<bool>) -> Bytes {
        if self.chance(0.5) {
            let json = json.unwrap_or_else(|| self.chance(0.4));
            return self.short_body(json);
        }
        let rng = &mut self.rng;
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

    /// Up to three JSON messages (one alone, an array, or not JSON), or up
    /// to 15 letters.
    fn short_body(&mut self, json: bool) -> Bytes {
        let n = self.rng.random_range(0..4);
        if json {
            let items: Vec<String> = (0..n).map(|i| format!("{{\"k\":{i}}}")).collect();
            Bytes::from(match self.rng.random_range(0..3) {
                0 if n > 0 => items[0].clone(),
                1 => "not json".to_string(),
                _ => format!("[{}]", items.join(",")),
            })
        } else {
            let len = self.rng.random_range(0..6) * n;
            Bytes::from((0..len).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
        }
    }

    fn create(&mut self, fork_wanted: bool) -> CreateRequest {
        let fork = fork_wanted.then(|| {
            let source = self.name().to_string();
            let offset = (!self.chance(0.4)).then(|| self.offset());
            let sub_offset = if self.chance(0.75) {
                0
            } else {
                self.rng.random_range(0..4)
            };
            ForkSpec {
                source,
                offset,
                sub_offset,
            }
        });
        let content_type = match &fork {
            Some(f) => match self.rng.random_range(0..3) {
                0 => None,
                1 => self.types.get(f.source.as_str()).cloned(),
                _ => self.some_type(),
            },
            None => self.some_type(),
        };
        let json = content_type.as_deref().map(|t| t == "application/json");
        CreateRequest {
            content_type,
            expiry: self.expiry(),
            closed: self.chance(0.1),
            fork,
            body: self.body(json),
            now: self.now,
        }
    }

    /// An append to a stream of type `own` (when it exists), usually of
    /// that type; sometimes conditional (`If-Match`), mostly on the
    /// stream's `tail` as the model has it.
    fn append(&mut self, own: Option<String>, tail: Option<Offset>) -> AppendRequest {
        let json = own.as_deref().map(|t| t == "application/json");
        let content_type = if self.chance(0.85) {
            own
        } else if self.chance(0.1) {
            None
        } else {
            Some(TYPES[self.rng.random_range(0..TYPES.len())].to_string())
        };
        let producer = self.chance(0.4).then(|| {
            if self.chance(0.5) {
                // Mostly the next seq, sometimes a retry or a gap.
                let p = self.rng.random_range(0..5);
                let seq = match self.rng.random_range(0..6) {
                    0 => self.producer_seq[p].saturating_sub(1),
                    1 => self.producer_seq[p] + 2,
                    _ => self.producer_seq[p],
                };
                self.producer_seq[p] = seq + 1;
                ProducerHeaders {
                    id: format!("p{p}"),
                    epoch: u64::from(self.chance(0.1)),
                    seq,
                }
            } else {
                // Anything: stale and new epochs, gaps, duplicates.
                ProducerHeaders {
                    id: format!("q{}", self.rng.random_range(0..2)),
                    epoch: self.rng.random_range(0..3),
                    seq: self.rng.random_range(0..4),
                }
            }
        });
        AppendRequest {
            content_type,
            body: self.body(json),
            close: self.chance(0.07),
            stream_seq: self
                .chance(0.18)
                .then(|| format!("{:03}", self.rng.random_range(0..50))),
            if_match: self.chance(0.15).then(|| match tail {
                Some(t) if self.chance(0.7) => t,
                _ => self.offset(),
            }),
            producer: producer.filter(|_| self.chance(0.8)),
            now: self.now,
        }
    }

    fn read(&mut self) -> ReadRequest {
        let from = match self.rng.random_range(0..5) {
            0 => ReadFrom::Start,
            1 => ReadFrom::Tail,
            _ => ReadFrom::At(self.offset()),
        };
        let max_bytes = if self.chance(0.5) {
            usize::MAX
        } else {
            self.rng.random_range(1..30)
        };
        // Only a subject that lends, as the model does, may be asked to.
        let lend_bytes = if self.lends && self.chance(0.5) {
            max_bytes.saturating_add(self.rng.random_range(1..60))
        } else {
            max_bytes
        };
        ReadRequest {
            from,
            max_bytes,
            lend_bytes,
            now: self.now,
        }
    }
}

/// Drops `subject` (after a clean shutdown when `clean`) and opens the
/// store again on the same location.
fn reopen(subject: Box<dyn Subject>, clean: bool, open: Open) -> Box<dyn Subject> {
    if clean {
        subject.storage().shutdown().expect("clean shutdown");
    }
    drop(subject);
    open()
}

/// One seeded history of `steps` operations on the model and on the store
/// `open` gives; panics on the first difference.
pub fn run(seed: u64, steps: usize, open: Open) {
    let mut subject = open();
    let mut h = History::new(seed, subject.keeps_read_renewals(), subject.lends_reads());
    let model = MemoryStorage::new(WakeHub::new());
    let mut stats = BTreeMap::new();
    for step in 0..steps {
        h.now += if h.chance(0.03) {
            h.rng.random_range(1_000..8_000)
        } else {
            h.rng.random_range(0..150)
        };
        if h.chance(0.03) {
            let clean = h.chance(0.5);
            if std::env::var_os("DS_MODEL_TRACE").is_some() {
                eprintln!("reopen clean={clean}");
            }
            subject = reopen(subject, clean, open);
        }
        if h.chance(0.02) {
            if std::env::var_os("DS_MODEL_TRACE").is_some() {
                eprintln!("checkpoint");
            }
            subject.checkpoint();
        }
        let store = subject.storage();
        let now = h.now;
        let mut name = h.name();
        // The model's view, without side effects (HEAD renews nothing).
        let exists = |n: &str| model.head(n, now).is_ok();
        let mut op = h.rng.random_range(0..22);
        if !exists(name) && h.chance(0.6) {
            op = 0;
        }
        let fork_wanted = h.chance(0.35);
        if op <= 3 && fork_wanted && h.chance(0.8) {
            // A fork needs a free name to be interesting.
            if let Some(free) = NAMES.iter().find(|n| !exists(n)) {
                name = free;
            }
        }
        let (what, m, a) = match op {
            0..=3 => {
                let req = h.create(fork_wanted);
                (
                    format!("create {name} {req:?}"),
                    format!("{:?}", model.create(name, req.clone())),
                    format!("{:?}", store.create(name, req)),
                )
            }
            4..=10 => {
                let (n, req) = match h.last_append.clone() {
                    Some((n, mut r)) if h.chance(0.15) => {
                        r.now = now;
                        (n, r)
                    }
                    _ => {
                        let own = h.types.get(name).cloned();
                        let tail = model.head(name, now).ok().map(|i| i.tail);
                        (name, h.append(own, tail))
                    }
                };
                name = n;
                let want = model.append(name, req.clone());
                if matches!(
                    want,
                    Ok(durable_streams::storage::AppendOutcome::Appended { .. })
                ) {
                    h.last_append = Some((name, req.clone()));
                }
                (
                    format!("append {name} {req:?}"),
                    format!("{want:?}"),
                    format!("{:?}", store.append(name, req)),
                )
            }
            11..=15 => {
                let req = h.read();
                let got = store.read(name, req.clone());
                // A read answered without blocking is the read's answer.
                let quick = {
                    let _marked = durable_streams::storage::handle::NonBlocking::enter();
                    store.read_now(name, &req)
                };
                if let (Some(q), Ok(r)) = (&quick, &got) {
                    assert_eq!(
                        (&q.info, q.start, q.concat(), q.next),
                        (&r.info, r.start, r.concat(), r.next),
                        "seed {seed} step {step}: read_now {name} {req:?}"
                    );
                } else if let Some(q) = &quick {
                    panic!(
                        "seed {seed} step {step}: read_now {name} {req:?} answered {q:?}, read {got:?}"
                    );
                }
                (
                    format!("read {name} {req:?}"),
                    format!("{:?}", model.read(name, req.clone())),
                    format!("{got:?}"),
                )
            }
            16 => (
                format!("head {name}"),
                format!("{:?}", model.head(name, now)),
                format!("{:?}", store.head(name, now)),
            ),
            17 | 18 => (
                format!("delete {name}"),
                format!("{:?}", model.delete(name, now)),
                format!("{:?}", store.delete(name, now)),
            ),
            19 | 20 => {
                // Mostly a position inside the stream's own records (at a
                // record start or inside one), else its tail or any offset
                // seen. Found by an export, which renews nothing.
                let inside = |k: usize, skip: u64| {
                    let Ok((meta, records)) = model.export_stream(name) else {
                        return Offset::ZERO;
                    };
                    let mut at = meta.own_start();
                    for r in records.iter().take(k) {
                        at = Offset::new(at.seq + 1, at.pos + r.len() as u64);
                    }
                    match records.get(k) {
                        Some(r) if skip > 0 && (skip as usize) < r.len() => {
                            Offset::new(at.seq, at.pos + skip)
                        }
                        _ => at,
                    }
                };
                let before = match h.rng.random_range(0..5) {
                    0 | 1 => inside(h.rng.random_range(0..6), h.rng.random_range(0..3)),
                    2 => model.head(name, now).map_or(Offset::ZERO, |i| i.tail),
                    _ => h.offset(),
                };
                (
                    format!("trim {name} {before:?}"),
                    format!("{:?}", model.trim(name, before, now)),
                    format!("{:?}", store.trim(name, before, now)),
                )
            }
            _ => (
                "sweep".to_string(),
                format!("{:?}", model.sweep_expired(now)),
                format!("{:?}", store.sweep_expired(now)),
            ),
        };
        let (m, a) = (masked(m), masked(a));
        if std::env::var_os("DS_MODEL_TRACE").is_some() {
            eprintln!("{what} => {m}");
        }
        assert_eq!(m, a, "seed {seed} step {step} at {now}: {what}");
        let kind = what.split(' ').next().unwrap_or("").to_string();
        let fork = what.contains("fork: Some");
        let entry = stats
            .entry((kind, fork, m.chars().take(30).collect::<String>()))
            .or_insert(0usize);
        *entry += 1;
        harvest(&m, &mut h.seen);
        // (A stream created with an `Expires-At` already past is created,
        // and gone at once: long histories reach such times.)
        if what.starts_with("create")
            && m.starts_with("Ok(Created")
            && let Ok(info) = model.head(name, now)
        {
            h.types.insert(name, info.content_type);
        }
    }
    if std::env::var_os("MODEL_STATS").is_some() {
        eprintln!("seed {seed}: (op, fork, outcome) counts {stats:?}");
    }
    // Everything the model still serves, the reopened store serves identically.
    let subject = reopen(subject, false, open);
    for name in NAMES {
        let req = ReadRequest::all(ReadFrom::Start, h.now);
        assert_eq!(
            masked(format!("{:?}", model.read(name, req.clone()))),
            masked(format!("{:?}", subject.storage().read(name, req))),
            "seed {seed} final read of {name}"
        );
    }
}
