//! What a group's pass hands out: a wake without records read once for
//! the group; appends that come faster than a pass writes, merged into
//! fewer events or joining a pass under way, every byte once and in order.

use std::sync::Arc;
use std::time::Duration;

use super::{SSE, Server, data_of, server};
use crate::notify::Wake;

/// Four writers append 25 records each (`<w.i>`) at once; returns the
/// stream's tail after them.
async fn burst(s: &Arc<Server>) -> String {
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                for i in 0..25 {
                    s.append(&format!("<{w}.{i}>")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let head = s.request("HEAD", "/v1/stream/s", "text/plain", "").await;
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("stream-next-offset: ")
                .map(str::to_string)
        })
        .unwrap()
}

/// Appends faster than one fan-out writes are merged into fewer events;
/// every byte still arrives once and in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_appends_reach_parked_subscribers_once_in_order() {
    let s = Arc::new(server(|_| {}).await);
    let mut c = s.get(SSE).await;
    s.until("parked", |s| s.parked() == 1).await;
    let tail = burst(&s).await;
    let seen = c.until(&tail, 1).await.to_string();
    let data = data_of(&seen, |d| d.starts_with('<'));
    // The stream's own order, from a catch-up read.
    let all = s
        .request("GET", "/v1/stream/s?offset=-1", "text/plain", "")
        .await;
    let body = all.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(data, body);
    for w in 0..4 {
        for i in 0..25 {
            assert_eq!(data.matches(&format!("<{w}.{i}>")).count(), 1);
        }
    }
}

/// Appends that arrive while a group writes join its pass (members not
/// yet written get them at once, those written before get them in the
/// next pass): many subscribers, passes of several batches, every byte
/// once and in order for each. Three workers: the readers are spread
/// over two groups, whose passes run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn appends_joining_a_pass_reach_every_subscriber_once_in_order() {
    const READERS: usize = 40;
    let s = Arc::new(server(|_| {}).await);
    let mut clients = Vec::new();
    for _ in 0..READERS {
        clients.push(s.get(SSE).await);
    }
    s.until("parked", |s| s.parked() == READERS as u64).await;
    let tail = burst(&s).await;
    let all = s
        .request("GET", "/v1/stream/s?offset=-1", "text/plain", "")
        .await;
    let body = all.split("\r\n\r\n").nth(1).unwrap().to_string();
    assert_eq!(body.matches('<').count(), 100);
    for c in &mut clients {
        let seen = c.until(&tail, 1).await.to_string();
        let data = data_of(&seen, |d| d.starts_with('<'));
        assert_eq!(data, body);
    }
    // They all stayed parked.
    assert_eq!(s.parked(), READERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_without_records_is_read_once_for_the_group() {
    let s = server(|_| {}).await;
    let mut a = s.get(SSE).await;
    let mut b = s.get(SSE).await;
    s.until("parked", |s| s.parked() == 2).await;
    s.append("one").await;
    // As after a lost notification: nobody knows what changed.
    s.state.hub.wake("s", Wake::unknown());
    s.state.hub.wake("s", Wake::unknown());
    s.append("two").await;
    for c in [&mut a, &mut b] {
        let seen = c.until("data:two", 1).await.to_string();
        assert_eq!(seen.matches("data:one").count(), 1, "{seen}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.parked(), 2, "the group read for them");
}

/// A stream's readers are spread over one group per worker but one, and
/// never fewer than one.
#[test]
fn groups_per_stream_leave_one_worker() {
    use crate::http::park::groups_per_stream;
    assert_eq!(groups_per_stream(0), 1);
    assert_eq!(groups_per_stream(1), 1);
    assert_eq!(groups_per_stream(2), 1);
    assert_eq!(groups_per_stream(3), 2);
    assert_eq!(groups_per_stream(16), 15);
    assert_eq!(groups_per_stream(1000), 256);
}
