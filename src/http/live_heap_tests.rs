//! Heap bytes per live reader, counted by a counting global allocator in
//! the library's test binary (the server itself uses mimalloc, which heap
//! profilers do not see). Ignored by default: other tests running at the
//! same time would be counted too. Run alone:
//! `cargo test --lib heap_per_live_reader -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HttpEngine, ServerConfig};
use crate::http::front::Front;
use crate::metrics::Live;
use crate::notify::WakeHub;
use crate::storage::memory::MemoryStorage;

/// The system allocator, counting the bytes it has handed out and not
/// yet been given back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Outstanding allocations by size class (`[2^i, 2^(i+1))` bytes).
static CLASSES: [AtomicIsize; 24] = [const { AtomicIsize::new(0) }; 24];

fn class(size: usize) -> &'static AtomicIsize {
    &CLASSES[(usize::BITS - size.max(1).leading_zeros() - 1).min(23) as usize]
}

fn classes() -> [isize; 24] {
    std::array::from_fn(|i| CLASSES[i].load(Relaxed))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        class(l.size()).fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        class(l.size()).fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        class(l.size()).fetch_sub(1, Relaxed);
        class(new).fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const READERS: usize = 500;

async fn settle() -> isize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    LIVE.load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures the whole process's heap; run alone"]
async fn heap_per_live_reader() {
    let hub = WakeHub::new();
    let storage = Arc::new(MemoryStorage::new(Arc::clone(&hub)));
    let config = ServerConfig {
        long_poll_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let state = crate::server::state(config, storage, hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeouts = crate::http::serve::Timeouts {
        header_read: Duration::from_secs(60),
        send: Duration::from_secs(60),
    };
    let server = tokio::spawn(crate::http::serve::serve(
        listener,
        Front::new(state.clone()),
        timeouts,
        HttpEngine::Native,
        None,
        state.shutdown.clone(),
    ));
    let put = b"PUT /v1/stream/f HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\na";
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(put).await.unwrap();
    let mut buf = [0u8; 1024];
    let _ = c.read(&mut buf).await.unwrap();

    let mut rows = Vec::new();
    for (what, req, kind) in [
        ("idle keep-alive connection", "HEAD /v1/stream/f", None),
        (
            "SSE subscriber",
            "GET /v1/stream/f?offset=now&live=sse",
            Some(Live::Sse),
        ),
        (
            "long-poller",
            "GET /v1/stream/f?offset=now&live=long-poll",
            Some(Live::LongPoll),
        ),
    ] {
        let before = settle().await;
        let classes_before = classes();
        let mut conns = Vec::new();
        for _ in 0..READERS {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("{req} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            conns.push(c);
        }
        if let Some(kind) = kind {
            while state.metrics.live_count(kind) < READERS as u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Read what was answered (heads, first events), so that nothing
        // waits in a socket buffer.
        for c in &mut conns {
            let _ = tokio::time::timeout(Duration::from_millis(5), c.read(&mut buf)).await;
        }
        let after = settle().await;
        let per_class: Vec<String> = classes()
            .iter()
            .zip(classes_before)
            .enumerate()
            .filter_map(|(i, (a, b))| {
                let per = (a - b) as f64 / READERS as f64;
                (per.abs() >= 0.5).then(|| format!("{per:.1} x [{}, {})", 1 << i, 2 << i))
            })
            .collect();
        rows.push((what, (after - before) as f64 / READERS as f64, per_class));
        drop(conns);
        if let Some(kind) = kind {
            while state.metrics.live_count(kind) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for (what, bytes, per_class) in &rows {
        println!(
            "heap per {what}: {bytes:.0} B; allocations: {}",
            per_class.join(", ")
        );
    }
    state.shutdown.cancel();
    let _ = server.await;
}
