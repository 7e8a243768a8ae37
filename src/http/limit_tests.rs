//! Tests of [`super`]: the bucket, the live-read cap, the bounded table and
//! the client key behind trusted proxies.

use std::time::Duration;

use axum::http::HeaderValue;

use super::*;
use crate::config::Cidr;

fn limiter(rps: usize, burst: usize, live: usize, max_keys: usize) -> Arc<Limiter> {
    let c = RateLimitConfig {
        requests_per_second: rps,
        burst,
        max_live_readers: live,
        max_keys,
        trusted_proxies: vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ],
    };
    Limiter::new(&c, Metrics::new()).unwrap()
}

fn retry_after(e: &ApiError) -> String {
    e.headers
        .iter()
        .find(|(n, _)| n == header::RETRY_AFTER)
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[test]
fn off_unless_a_limit_is_set() {
    assert!(Limiter::new(&RateLimitConfig::default(), Metrics::new()).is_none());
}

#[test]
fn a_bucket_of_burst_refills_at_the_rate() {
    let l = limiter(2, 3, 0, 100);
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(l.admit("k".into(), false, t0).is_ok());
    }
    let e = l.admit("k".into(), false, t0).err().unwrap();
    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.code, "RATE_LIMITED");
    assert_eq!(retry_after(&e), "1");
    // Another key has its own bucket.
    assert!(l.admit("other".into(), false, t0).is_ok());
    // Half a second refills one request at 2/s; never more than burst.
    let t1 = t0 + Duration::from_millis(500);
    assert!(l.admit("k".into(), false, t1).is_ok());
    assert!(l.admit("k".into(), false, t1).is_err());
    let t2 = t1 + Duration::from_secs(3600);
    for _ in 0..3 {
        assert!(l.admit("k".into(), false, t2).is_ok());
    }
    assert!(l.admit("k".into(), false, t2).is_err());
    let text = l.metrics.render(None, &[]);
    assert!(
        text.contains("ds_rate_limited_total{limit=\"requests\"} 3"),
        "{text}"
    );
}

#[test]
fn live_reads_are_capped_per_key_until_their_slots_drop() {
    let l = limiter(0, 1, 2, 100);
    let now = Instant::now();
    let a = l.admit("k".into(), true, now).unwrap().unwrap();
    let _b = l.admit("k".into(), true, now).unwrap().unwrap();
    let e = l.admit("k".into(), true, now).err().unwrap();
    assert_eq!(e.code, "TOO_MANY_LIVE_READERS");
    // Catch-up reads and other keys are not live reads of this key.
    assert!(l.admit("k".into(), false, now).unwrap().is_none());
    assert!(l.admit("j".into(), true, now).is_ok());
    drop(a);
    assert!(l.admit("k".into(), true, now).is_ok());
    let text = l.metrics.render(None, &[]);
    assert!(
        text.contains("ds_rate_limited_total{limit=\"live_readers\"} 1"),
        "{text}"
    );
}

#[test]
fn the_table_stays_bounded_and_keeps_busy_keys() {
    let l = limiter(1, 5, 4, 64);
    let now = Instant::now();
    // A key with a live read and a key with a drained bucket.
    let _live = l.admit("busy-live".into(), true, now).unwrap();
    for _ in 0..5 {
        l.admit("busy-drained".into(), false, now).unwrap();
    }
    for i in 0..10_000 {
        let _ = l.admit(format!("k{i}"), false, now + Duration::from_millis(i));
        assert!(l.keys() <= 64 + SHARDS, "{} keys", l.keys());
    }
    // The live one is never forgotten (its slot would leak otherwise).
    let shard = l.shard("busy-live").lock();
    assert_eq!(shard.get("busy-live").map(|e| e.live), Some(1));
}

#[test]
fn the_client_is_the_peer_unless_a_trusted_proxy_forwards() {
    let l = limiter(1, 1, 0, 100);
    let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    let xff = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    };
    let none = HeaderMap::new();
    assert_eq!(
        l.key(Some("sub:alice"), peer("1.2.3.4:5"), &none),
        "sub:alice"
    );
    assert_eq!(l.key(None, peer("1.2.3.4:5"), &none), "ip:1.2.3.4");
    // An untrusted peer cannot choose its key.
    assert_eq!(
        l.key(None, peer("1.2.3.4:5"), &xff("9.9.9.9")),
        "ip:1.2.3.4"
    );
    // A trusted proxy: the rightmost entry that is not a trusted proxy.
    let h = xff("6.6.6.6, 7.7.7.7, 10.1.1.1");
    assert_eq!(l.key(None, peer("10.0.0.1:5"), &h), "ip:7.7.7.7");
    assert_eq!(
        l.key(None, peer("[::1]:5"), &xff("[2001:db8::1]:443")),
        "ip:2001:db8::1"
    );
    // Garbage stops the walk at the last good hop.
    assert_eq!(
        l.key(None, peer("10.0.0.1:5"), &xff("nonsense, 10.2.2.2")),
        "ip:10.2.2.2"
    );
    assert_eq!(l.key(None, peer("10.0.0.1:5"), &none), "ip:10.0.0.1");
    assert_eq!(l.key(None, None, &none), "ip:unknown");
}

#[test]
fn live_queries() {
    assert!(is_live(Some("offset=-1&live=sse")));
    assert!(is_live(Some("live=long-poll&offset=1")));
    assert!(!is_live(Some("offset=-1")));
    assert!(!is_live(Some("xlive=sse")));
    assert!(!is_live(None));
}
