//! Storage micro-benchmarks. Report ratios within one run (e.g. JSON append
//! vs binary append on the same backend); never assert on absolute speed.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{AppendRequest, CreateRequest, ReadRequest, Storage, now_ms};

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

fn append(s: &dyn Storage, name: &str, ct: &str, body: &Bytes) -> Offset {
    match s
        .append(
            name,
            AppendRequest {
                content_type: Some(ct.into()),
                body: body.clone(),
                close: false,
                stream_seq: None,
                producer: None,
                now: now_ms(),
            },
        )
        .expect("append")
    {
        durable_streams::storage::AppendOutcome::Appended { info, .. }
        | durable_streams::storage::AppendOutcome::Duplicate { info, .. } => info.tail,
    }
}

fn memory(c: &mut Criterion) {
    let s = MemoryStorage::new(WakeHub::new());
    create(&s, "bin", "application/octet-stream");
    create(&s, "json", "application/json");
    let small = Bytes::from(vec![b'x'; 100]);
    let json = Bytes::from_static(br#"[{"id":1,"text":"hello"},{"id":2,"text":"world"}]"#);
    let mut g = c.benchmark_group("memory");
    g.bench_function("append_100b", |b| {
        b.iter(|| append(&s, "bin", "application/octet-stream", &small))
    });
    g.bench_function("append_json_batch", |b| {
        b.iter(|| append(&s, "json", "application/json", &json))
    });

    let reader = MemoryStorage::new(WakeHub::new());
    create(&reader, "r", "application/octet-stream");
    let offsets: Vec<Offset> = (0..10_000)
        .map(|_| append(&reader, "r", "application/octet-stream", &small))
        .collect();
    let mut i = 0usize;
    g.bench_function("read_at_offset", |b| {
        b.iter(|| {
            i = (i + 7919) % (offsets.len() - 1);
            reader
                .read(
                    "r",
                    ReadRequest {
                        from: ReadFrom::At(offsets[i]),
                        max_bytes: 64 * 1024,
                        now: now_ms(),
                    },
                )
                .expect("read")
        })
    });
    g.finish();
}

criterion_group!(benches, memory);
criterion_main!(benches);
