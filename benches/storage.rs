//! Storage micro-benchmarks, the same set on each backend: memory, file
//! (`--sync always`: every append waits for its `fdatasync`, here with one
//! writer, so no group commit) and acid. Report ratios within one run (e.g.
//! JSON append vs binary append on the same backend, or one backend against
//! another); never assert on absolute speed.
//!
//! ```text
//! cargo bench --bench storage                 # all backends
//! cargo bench --bench storage -- file/        # one backend
//! ```
//!
//! Appends go to a stream that is replaced (outside the timed part) every
//! 1,024 appends, so memory and disk use stay bounded however many
//! iterations criterion asks for.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use durable_streams::config::SyncMode;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::acid::AcidStorage;
use durable_streams::storage::file::FileStorage;
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateRequest, ProducerHeaders, ReadRequest, Storage, now_ms,
};

const BINARY: &str = "application/octet-stream";
const JSON: &str = "application/json";
/// Appends per stream before it is replaced.
const PER_STREAM: u64 = 1024;

fn create(s: &dyn Storage, name: &str, ct: &str) {
    s.create(
        name,
        CreateRequest {
            content_type: Some(ct.into()),
            expiry: None,
            closed: false,
            fork: None,
            body: Bytes::new(),
            now: now_ms(),
        },
    )
    .expect("create");
}

fn append(
    s: &dyn Storage,
    name: &str,
    ct: &str,
    body: &Bytes,
    producer: Option<ProducerHeaders>,
) -> Offset {
    let req = AppendRequest {
        content_type: Some(ct.into()),
        body: body.clone(),
        close: false,
        stream_seq: None,
        producer,
        if_match: None,
        now: now_ms(),
    };
    match s.append(name, req).expect("append") {
        AppendOutcome::Appended { info, .. } | AppendOutcome::Duplicate { info, .. } => info.tail,
    }
}

/// Times `iters` appends of `body` (as producer `p`, seq 0, 1, … per stream
/// when `producer`), replacing the stream every [`PER_STREAM`] appends
/// outside the timed part.
fn timed_appends(
    s: &dyn Storage,
    label: &str,
    ct: &str,
    body: &Bytes,
    producer: bool,
    iters: u64,
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0u64;
    let mut round = 0u64;
    while done < iters {
        let name = format!("{label}-{round}");
        create(s, &name, ct);
        let n = PER_STREAM.min(iters - done);
        let t = Instant::now();
        for seq in 0..n {
            let p = producer.then(|| ProducerHeaders {
                id: "bench".into(),
                epoch: 0,
                seq,
            });
            append(s, &name, ct, body, p);
        }
        spent += t.elapsed();
        s.delete(&name, now_ms()).expect("delete");
        done += n;
        round += 1;
    }
    spent
}

fn suite(c: &mut Criterion, backend: &str, s: &dyn Storage, durable: bool) {
    let small = Bytes::from(vec![b'x'; 100]);
    let large = Bytes::from(vec![b'y'; 64 * 1024]);
    let json = Bytes::from_static(br#"[{"id":1,"text":"hello"},{"id":2,"text":"world"}]"#);
    let mut g = c.benchmark_group(backend);
    if durable {
        // One fdatasync per append: a few thousand per second at best.
        g.sample_size(20).measurement_time(Duration::from_secs(4));
    }
    let cases: [(&str, &str, &Bytes, bool); 4] = [
        ("append_100b", BINARY, &small, false),
        ("append_64kib", BINARY, &large, false),
        ("producer_append_100b", BINARY, &small, true),
        ("append_json_flattened", JSON, &json, false),
    ];
    for (label, ct, body, producer) in cases {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| timed_appends(s, label, ct, body, producer, iters))
        });
    }

    create(s, "reads", BINARY);
    let offsets: Vec<Offset> = (0..10_000)
        .map(|_| append(s, "reads", BINARY, &small, None))
        .collect();
    let mut i = 0usize;
    g.bench_function("read_at_random_offset", |b| {
        b.iter(|| {
            // A stride coprime to the count visits offsets in scattered order.
            i = (i + 7919) % (offsets.len() - 1);
            s.read(
                "reads",
                ReadRequest {
                    from: ReadFrom::At(offsets[i]),
                    max_bytes: 64 * 1024,
                    lend_bytes: 64 * 1024,
                    now: now_ms(),
                },
            )
            .expect("read")
        })
    });
    g.finish();
}

fn memory(c: &mut Criterion) {
    let s = MemoryStorage::new(WakeHub::new());
    suite(c, "memory", &s, false);
}

fn scratch() -> tempfile::TempDir {
    // Under target/, on the same disk as the project, not a tmpfs /tmp.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).expect("target dir");
    tempfile::tempdir_in(base).expect("scratch dir")
}

fn file(c: &mut Criterion) {
    let dir = scratch();
    let s = FileStorage::open(
        dir.path(),
        SyncMode::Always,
        Duration::from_millis(50),
        WakeHub::new(),
    )
    .expect("open file store");
    suite(c, "file", &s, true);
    s.shutdown().expect("shutdown");
}

fn acid(c: &mut Criterion) {
    let dir = scratch();
    let s = AcidStorage::open(dir.path(), WakeHub::new()).expect("open acid");
    suite(c, "acid", &s, true);
    s.shutdown().expect("shutdown");
}

criterion_group!(benches, memory, file, acid);
criterion_main!(benches);
