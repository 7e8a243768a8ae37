//! Bounded fuzzing on the stable toolchain: property tests with fixed seeds
//! and case budgets, run by `cargo test`. Each feeds arbitrary input to one
//! parser or to recovery and asserts no panic, no hang, no unbounded memory,
//! and the invariants of what is accepted.
//!
//! * offsets, read queries, stream names, protocol headers (pure parsing);
//! * JSON flattening (`model::frame_records`);
//! * file-backend recovery from damaged files: flipped bytes, truncations,
//!   garbage tails, and well-framed (checksummed) entries and checkpoints
//!   carrying nonsense — open must recover or refuse with an error;
//! * the whole HTTP layer through the router (`oneshot`): no 5xx, every 4xx
//!   is `application/problem+json`.
//!
//! Budgets: `DS_FUZZ_CASES` scales every case count (default 1 = the short
//! form; `scripts/reliability.sh` raises it); `DS_SEED` changes the seed.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tower::ServiceExt;

use durable_streams::config::{ServerConfig, SyncMode};
use durable_streams::http::headers;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::file::{FileStorage, format};
use durable_streams::storage::{CreateRequest, ForkSpec, ReadRequest, Storage, model};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner with `cases` × `DS_FUZZ_CASES` cases and a fixed seed.
fn runner(cases: u32) -> TestRunner {
    let scale = knob("DS_FUZZ_CASES", 1).max(1) as u32;
    TestRunner::new(Config {
        cases: cases.saturating_mul(scale),
        rng_seed: RngSeed::Fixed(knob("DS_SEED", 1)),
        failure_persistence: None,
        ..Config::default()
    })
}

fn report(name: &str, runner: &TestRunner, result: Result<(), impl std::fmt::Display>) {
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    println!("fuzz {name}: {} cases passed", runner.config().cases);
}

/// Strings biased towards the characters parsers care about.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-0-9a-fA-F_%./,&=+ ]{0,40}",
        "(-1|now|[0-9a-f]{16}_[0-9a-f]{16}|%[0-9a-fA-F]{2}|\\.\\.|/|__ds|[a-z]){0,8}",
    ]
}

#[test]
fn fuzz_offsets_round_trip_or_are_refused() {
    let mut r = runner(5000);
    let result = r.run(&tricky(), |s| {
        if let Some(o) = Offset::parse(&s) {
            prop_assert_eq!(o.to_string(), s.clone());
        }
        if let Some(ReadFrom::At(o)) = ReadFrom::parse(&s) {
            prop_assert_eq!(Some(o), Offset::parse(&s));
        }
        Ok(())
    });
    report("offsets", &r, result);
    let mut r = runner(2000);
    let result = r.run(&(any::<u64>(), any::<u64>()), |(seq, pos)| {
        let o = Offset::new(seq, pos);
        prop_assert_eq!(Offset::parse(&o.to_string()), Some(o));
        Ok(())
    });
    report("offset encoding", &r, result);
}

#[test]
fn fuzz_read_queries_and_stream_names() {
    let mut r = runner(5000);
    let result = r.run(&(tricky(), 0usize..64), |(s, max)| {
        let _ = headers::read_query(Some(&s));
        if let Ok(name) = headers::stream_name(&s, max) {
            prop_assert!(!name.is_empty() && name.len() <= max);
            prop_assert!(!name.chars().any(char::is_control));
            prop_assert!(
                name.split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            );
        }
        Ok(())
    });
    report("read queries and stream names", &r, result);
}

const PROTOCOL_HEADERS: &[&str] = &[
    "producer-id",
    "producer-epoch",
    "producer-seq",
    "stream-ttl",
    "stream-expires-at",
    "stream-forked-from",
    "stream-fork-offset",
    "stream-fork-sub-offset",
    "stream-seq",
    "stream-closed",
    "content-type",
];

fn header_map() -> impl Strategy<Value = HeaderMap> {
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        "(-?[0-9]{0,22}|0x1|1e3|1\\.5| 7 |true|TRUE|/v1/stream/[a-z.%]{0,6}|[0-9a-f]{16}_[0-9a-f]{16})"
            .prop_map(String::into_bytes),
    ];
    proptest::collection::vec((0..PROTOCOL_HEADERS.len(), value), 0..8).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (i, v) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.append(HeaderName::from_static(PROTOCOL_HEADERS[i]), v);
            }
        }
        h
    })
}

#[test]
fn fuzz_protocol_headers() {
    let mut r = runner(5000);
    let result = r.run(&header_map(), |h| {
        if let Ok(Some(p)) = headers::producer(&h) {
            prop_assert!(p.epoch < 1 << 53 && p.seq < 1 << 53);
            prop_assert!(!p.id.trim().is_empty());
        }
        let _ = headers::expiry(&h);
        let _ = headers::stream_seq(&h);
        let _ = headers::stream_closed(&h);
        if let Ok(Some(ForkSpec { source, .. })) = headers::fork(&h, "/v1/stream/") {
            prop_assert!(!source.split('/').any(|s| s == ".." || s.is_empty()));
        }
        Ok(())
    });
    report("protocol headers", &r, result);
}

/// JSON-ish text: valid documents, near misses and deep nesting.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just("1".to_string()),
        Just("-0.5e3".to_string()),
        Just("\"a,]\\\"[\"".to_string()),
        Just("null".to_string()),
        Just("1e400".to_string()),
        Just("true".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ];
    let doc = leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(inner, 0..4).prop_map(|v| {
                let fields: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\":{x}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        doc.clone().prop_map(String::into_bytes),
        // Near misses: a valid document with one byte changed or cut.
        (doc, any::<u8>(), any::<prop::sample::Index>()).prop_map(|(d, b, i)| {
            let mut v = d.into_bytes();
            let at = i.index(v.len());
            v[at] = b;
            v
        }),
        (1usize..200_000).prop_map(|n| "[".repeat(n).into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

#[test]
fn fuzz_json_flattening() {
    let mut r = runner(3000);
    let result = r.run(&(jsonish(), any::<bool>()), |(body, append)| {
        let body = Bytes::from(body);
        if let Ok(records) = model::frame_records(true, &body, append) {
            use serde_json::value::RawValue;
            let mut rebuilt = Vec::new();
            for rec in &records {
                prop_assert!(rec.ends_with(b","));
                let msg = &rec[..rec.len() - 1];
                // Valid JSON text (numbers of any magnitude, like -0.5e311,
                // are kept verbatim; serde's Value cannot hold those).
                prop_assert!(serde_json::from_slice::<&RawValue>(msg).is_ok());
                rebuilt.push(serde_json::from_slice::<serde_json::Value>(msg).ok());
            }
            // Flattening keeps every message, in order (an empty create
            // body stores nothing).
            if body.is_empty() {
                prop_assert!(records.is_empty() && !append);
                return Ok(());
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(whole) => {
                    let want = match whole {
                        serde_json::Value::Array(items) => items,
                        other => vec![other],
                    };
                    let want: Vec<_> = want.into_iter().map(Some).collect();
                    prop_assert_eq!(rebuilt, want);
                }
                Err(_) => {
                    let raw: &RawValue = serde_json::from_slice(&body).unwrap();
                    let n = if raw.get().starts_with('[') {
                        serde_json::from_str::<Vec<&RawValue>>(raw.get())
                            .unwrap()
                            .len()
                    } else {
                        1
                    };
                    prop_assert_eq!(records.len(), n);
                }
            }
        }
        Ok(())
    });
    report("JSON flattening", &r, result);
}

// ---------------------------------------------------------------------------
// File-backend recovery from damaged files.
// ---------------------------------------------------------------------------

fn open_file(dir: &Path) -> Result<FileStorage, durable_streams::storage::StorageError> {
    FileStorage::open(
        dir,
        SyncMode::Always,
        Duration::from_millis(50),
        WakeHub::new(),
    )
}

fn create_req(ct: &str, body: &[u8], fork: Option<ForkSpec>) -> CreateRequest {
    CreateRequest {
        content_type: Some(ct.into()),
        expiry: None,
        closed: false,
        fork,
        body: Bytes::copy_from_slice(body),
        now: 1,
    }
}

/// A store with plain, JSON, forked and closed streams, some checkpointed
/// and some only in the WAL; returns its files.
fn seed_store(dir: &Path) {
    let s = open_file(dir).expect("open");
    s.create("plain", create_req("text/plain", b"hello", None))
        .unwrap();
    s.create(
        "json",
        create_req("application/json", b"[1,{\"a\":2}]", None),
    )
    .unwrap();
    s.checkpoint().unwrap();
    let fork = ForkSpec {
        source: "plain".into(),
        offset: None,
        sub_offset: 0,
    };
    s.create("fork", create_req("text/plain", b"+f", Some(fork)))
        .unwrap();
    let mut closed = create_req("text/plain", b"bye", None);
    closed.closed = true;
    s.create("closed", closed).unwrap();
}

/// One way to damage a file.
#[derive(Clone, Debug)]
enum Damage {
    Flip {
        at: prop::sample::Index,
        xor: u8,
    },
    Truncate {
        at: prop::sample::Index,
    },
    Garbage {
        bytes: Vec<u8>,
    },
    /// A well-framed (checksummed) WAL entry with arbitrary content.
    FramedWalEntry {
        payload: Vec<u8>,
    },
    /// The checkpoint's JSON with one number replaced, re-framed.
    CheckpointNumber {
        nth: prop::sample::Index,
        value: u64,
    },
}

fn damage() -> impl Strategy<Value = (prop::sample::Index, Damage)> {
    let d = prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        any::<prop::sample::Index>().prop_map(|at| Damage::Truncate { at }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Damage::Garbage { bytes }),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\{\"ops\":\\[\\{\"Put\":\\{\"name\":\"[a-z]{1,4}\",\"meta\":\\{\\},\"records\":[0-9]{1,3}\\}\\}\\]\\}"
                .prop_map(|h: String| [(h.len() as u32).to_le_bytes().to_vec(), h.into_bytes()].concat()),
        ]
        .prop_map(|payload| Damage::FramedWalEntry { payload }),
        (any::<prop::sample::Index>(), prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..100])
            .prop_map(|(nth, value)| Damage::CheckpointNumber { nth, value }),
    ];
    (any::<prop::sample::Index>(), d)
}

/// Every regular file under `dir`, sorted.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with("LOCK") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn apply(dir: &Path, which: prop::sample::Index, d: &Damage) {
    let all = files(dir);
    let path = match d {
        Damage::FramedWalEntry { .. } => all
            .iter()
            .rfind(|p| p.extension().is_some_and(|e| e == "log")),
        Damage::CheckpointNumber { .. } => all.iter().find(|p| p.ends_with("checkpoint")),
        _ => Some(&all[which.index(all.len())]),
    };
    let Some(path) = path else { return };
    let mut bytes = std::fs::read(path).unwrap();
    match d {
        Damage::Flip { at, xor } if !bytes.is_empty() => {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        Damage::Truncate { at } => bytes.truncate(at.index(bytes.len() + 1)),
        Damage::Garbage { bytes: g } => bytes.extend_from_slice(g),
        Damage::FramedWalEntry { payload } => format::put_frame(&mut bytes, payload),
        Damage::CheckpointNumber { nth, value } => {
            let start = format::CHECKPOINT_HEADER_LEN as usize;
            let Ok((json, _)) = format::get_frame(&bytes[start..]) else {
                return;
            };
            let text = String::from_utf8_lossy(json).into_owned();
            let numbers: Vec<(usize, usize)> = {
                let b = text.as_bytes();
                let mut v = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
                        let s = i;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        v.push((s, i));
                    } else {
                        i += 1;
                    }
                }
                v
            };
            if numbers.is_empty() {
                return;
            }
            let (s, e) = numbers[nth.index(numbers.len())];
            let changed = format!("{}{}{}", &text[..s], value, &text[e..]);
            bytes.truncate(start);
            format::put_frame(&mut bytes, changed.as_bytes());
        }
        _ => {}
    }
    std::fs::write(path, bytes).unwrap();
}

/// Opens a damaged store on another thread: it must answer (no hang) and
/// not panic; when it opens, every listed stream must read without panic.
fn open_damaged(dir: &Path) -> Result<&'static str, String> {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| match open_file(&dir) {
            Err(_) => "refused",
            Ok(s) => {
                for (name, _) in s.list_streams().unwrap_or_default() {
                    let _ = s.read(
                        &name,
                        ReadRequest {
                            from: ReadFrom::Start,
                            max_bytes: 1 << 20,
                            lend_bytes: 1 << 20,
                            now: 2,
                        },
                    );
                    let _ = s.export_stream(&name);
                }
                "recovered"
            }
        });
        let _ = tx.send(r.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(panic)) => Err(format!("open panicked: {panic}")),
        Err(_) => Err("open hung for 30 s".into()),
    }
}

#[test]
fn fuzz_file_recovery_from_damaged_files() {
    let template = tempfile::tempdir().unwrap();
    seed_store(template.path());
    let mut r = runner(60);
    let (recovered, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let result = r.run(&proptest::collection::vec(damage(), 1..4), |damages| {
        let dir = tempfile::tempdir().unwrap();
        for src in files(template.path()) {
            let dst = dir.path().join(src.strip_prefix(template.path()).unwrap());
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dst).unwrap();
        }
        for (which, d) in &damages {
            apply(dir.path(), *which, d);
        }
        match open_damaged(dir.path()) {
            Ok("recovered") => recovered.set(recovered.get() + 1),
            Ok(_) => refused.set(refused.get() + 1),
            Err(e) => return Err(TestCaseError::fail(e)),
        }
        Ok(())
    });
    report("file recovery", &r, result);
    println!(
        "fuzz file recovery: {} recovered, {} refused with an error",
        recovered.get(),
        refused.get()
    );
}

// ---------------------------------------------------------------------------
// The HTTP layer end to end (router via oneshot, memory backend).
// ---------------------------------------------------------------------------

/// Method, path and query, protocol headers (index, value), body.
type FuzzRequest = (String, String, Vec<(usize, Vec<u8>)>, Vec<u8>);

fn request() -> impl Strategy<Value = FuzzRequest> {
    let method = prop_oneof![
        Just("GET"),
        Just("HEAD"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("PATCH"),
        Just("OPTIONS"),
    ]
    .prop_map(str::to_string);
    let path = "/v1/stream/(p|j|c|new|__ds|__ds/subscriptions/x|%2e%2e|\\.\\.|a/b|%00|%ff|[a-z%0-9./]{0,12})(\\?(offset=(-1|now|[0-9a-f_]{0,34}|%zz)|live=(long-poll|sse|x)|cursor=[0-9a-z]{0,4}|&){0,4})?";
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        "(-?[0-9]{0,20}|true|text/plain|application/json|/v1/stream/p|[0-9a-f]{16}_[0-9a-f]{16})"
            .prop_map(String::into_bytes),
    ];
    (
        method,
        path,
        proptest::collection::vec((0..PROTOCOL_HEADERS.len(), value), 0..6),
        jsonish(),
    )
}

#[test]
fn fuzz_http_router_never_fails_with_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = ServerConfig {
        long_poll_timeout: Duration::from_millis(5),
        sse_reconnect: Duration::from_millis(5),
        ..ServerConfig::default()
    };
    let app = crate::common::router::app_with(config);
    let setup = [
        ("p", "text/plain", &b"abc"[..]),
        ("j", "application/json", b"[1,2]"),
        ("c", "text/plain", b"x"),
    ];
    rt.block_on(async {
        for (name, ct, body) in setup {
            let req = Request::put(format!("/v1/stream/{name}"))
                .header("content-type", ct)
                .body(Body::from(body.to_vec()))
                .unwrap();
            assert!(
                app.clone()
                    .oneshot(req)
                    .await
                    .unwrap()
                    .status()
                    .is_success()
            );
        }
    });
    let mut r = runner(1500);
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let result = r.run(&request(), |(method, path, hdrs, body)| {
        let mut b = Request::builder()
            .method(method.as_str())
            .uri(path.as_str());
        for (i, v) in &hdrs {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                b = b.header(PROTOCOL_HEADERS[*i], v);
            }
        }
        let Ok(req) = b.body(Body::from(body)) else {
            return Ok(());
        };
        let (status, ct, ok_body) = rt.block_on(async {
            let res = app.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let ct = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            // SSE bodies end after `sse_reconnect`; every body must end.
            let collected =
                tokio::time::timeout(Duration::from_secs(10), res.into_body().collect()).await;
            (status, ct, collected.is_ok_and(|b| b.is_ok()))
        });
        *statuses.borrow_mut().entry(status.as_u16()).or_insert(0u32) += 1;
        prop_assert!(!status.is_server_error(), "{method} {path}: {status}");
        prop_assert!(ok_body, "{method} {path}: body did not complete");
        if status.is_client_error() && method != "HEAD" {
            prop_assert_eq!(
                ct.as_str(),
                "application/problem+json",
                "{} {}: {}",
                method,
                path,
                status
            );
        }
        Ok(())
    });
    report("HTTP router", &r, result);
    println!("fuzz HTTP router: statuses {:?}", statuses.borrow());
}
