//! What every golden set holds: the script that wrote it (run by the
//! generator on today's code) and the exact contents a later reader must
//! find (checked by the tests). Both are fixed: a golden set, once
//! committed, is never rewritten (see `tests/golden/README.md`).

use durable_streams::offset::Offset;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateRequest, Expiry, ForkSpec, Storage,
};

/// The time of every write of the script (2026-05-28).
pub const WRITTEN_AT: u64 = 1_780_000_000_000;
/// A sliding TTL of about a hundred years.
pub const TTL_SECS: u64 = 3_153_600_000;
/// 2100-01-01T00:00:00Z.
pub const DEADLINE_MS: u64 = 4_102_444_800_000;
/// The producer of `closed` and `producer`.
pub const PRODUCER: &str = "writer-1";

/// The bytes of the binary stream `bin`'s first record.
pub const BIN_FIRST: [u8; 18] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff, 0xfe,
];
/// The second record of `bin`.
pub const BIN_SECOND: [u8; 3] = [0, b'\n', b'\r'];

fn create(s: &dyn Storage, name: &str, ct: Option<&str>, body: &[u8], expiry: Option<Expiry>) {
    let mut req = CreateRequest::new(ct, body.to_vec(), WRITTEN_AT);
    req.expiry = expiry;
    s.create(name, req)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn fork(s: &dyn Storage, name: &str, source: &str, offset: Option<Offset>, sub_offset: u64) {
    let mut req = CreateRequest::new(None, Vec::new(), WRITTEN_AT);
    req.fork = Some(ForkSpec {
        source: source.into(),
        offset,
        sub_offset,
    });
    s.create(name, req)
        .unwrap_or_else(|e| panic!("fork {name}: {e}"));
}

fn append(s: &dyn Storage, name: &str, req: AppendRequest) -> AppendOutcome {
    s.append(name, req)
        .unwrap_or_else(|e| panic!("append to {name}: {e}"))
}

fn text(body: &str) -> AppendRequest {
    AppendRequest::new(Some("text/plain"), body.as_bytes().to_vec(), WRITTEN_AT)
}

/// The first half of the script: plain, JSON and binary streams, a
/// `Stream-Seq`, a stream closed by a producer, a fork at a sub-offset and
/// a fork of that fork.
pub fn first_half(s: &dyn Storage) {
    create(s, "plain", Some("text/plain"), b"hello", None);
    let mut seq = text(", world");
    seq.stream_seq = Some("0001".into());
    append(s, "plain", seq);

    create(
        s,
        "json",
        Some("application/json"),
        br#"[{"a":1}, 2]"#,
        None,
    );
    let three = AppendRequest::new(Some("application/json"), &b"\"three\""[..], WRITTEN_AT);
    append(s, "json", three);

    create(s, "bin", Some("application/octet-stream"), &BIN_FIRST, None);
    let second = AppendRequest::new(
        Some("application/octet-stream"),
        BIN_SECOND.to_vec(),
        WRITTEN_AT,
    );
    append(s, "bin", second);

    create(s, "closed", Some("text/plain"), b"first", None);
    let mut last = text("last").by_producer(PRODUCER, 0, 0);
    last.close = true;
    append(s, "closed", last);

    create(s, "src", Some("text/plain"), b"abcdef", None);
    append(s, "src", text("ghi"));
    // Three bytes into the source's first record.
    fork(s, "fork/sub", "src", Some(Offset::ZERO), 3);
    append(s, "fork/sub", text("XYZ"));
    fork(s, "fork/sub/again", "fork/sub", None, 0);
    append(s, "fork/sub/again", text("!!"));
    append(s, "src", text("after-fork"));
}

/// The second half: an idempotent producer's state, a TTL and an expiry
/// time far ahead, a source soft-deleted while its fork lives, and
/// control-plane records (one put then deleted).
pub fn second_half(s: &dyn Storage) {
    create(s, "producer", Some("text/plain"), b"", None);
    append(s, "producer", text("p0").by_producer(PRODUCER, 1, 0));
    append(s, "producer", text("p1").by_producer(PRODUCER, 1, 1));

    create(
        s,
        "ttl",
        Some("text/plain"),
        b"ephemeral",
        Some(Expiry::Ttl(TTL_SECS)),
    );
    create(
        s,
        "deadline",
        Some("text/plain"),
        b"until 2100",
        Some(Expiry::At(DEADLINE_MS)),
    );

    create(s, "gone/src", Some("application/json"), b"[1,2,3]", None);
    fork(s, "gone/fork", "gone/src", Some(Offset::new(2, 4)), 0);
    let four = AppendRequest::new(Some("application/json"), &b"[4]"[..], WRITTEN_AT);
    append(s, "gone/fork", four);
    s.delete("gone/src", WRITTEN_AT).expect("soft delete");

    for (ns, key, value) in CONTROL {
        s.control_put(ns, key, value).expect("control put");
    }
    s.control_put("golden", "deleted", b"x")
        .expect("control put");
    s.control_delete("golden", "deleted")
        .expect("control delete");
}

/// The whole script.
pub fn populate(s: &dyn Storage) {
    first_half(s);
    second_half(s);
}

/// One stream as a reader must find it.
pub struct Expected {
    pub name: &'static str,
    pub content_type: &'static str,
    /// Everything a read from the start returns (JSON: each message
    /// followed by `,`), a fork's inherited range included.
    pub bytes: &'static [u8],
    pub tail: Offset,
    pub closed: bool,
    pub expiry: Expiry,
}

const fn stream(
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    tail: (u64, u64),
    closed: bool,
    expiry: Expiry,
) -> Expected {
    Expected {
        name,
        content_type,
        bytes,
        tail: Offset::new(tail.0, tail.1),
        closed,
        expiry,
    }
}

const BIN: [u8; 21] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff, 0xfe, 0, b'\n', b'\r',
];

/// Every stream a client can read (`gone/src` answers `Gone`).
pub const STREAMS: &[Expected] = &[
    stream(
        "plain",
        "text/plain",
        b"hello, world",
        (2, 12),
        false,
        Expiry::Never,
    ),
    stream(
        "json",
        "application/json",
        br#"{"a":1},2,"three","#,
        (3, 18),
        false,
        Expiry::Never,
    ),
    stream(
        "bin",
        "application/octet-stream",
        &BIN,
        (2, 21),
        false,
        Expiry::Never,
    ),
    stream(
        "closed",
        "text/plain",
        b"firstlast",
        (2, 9),
        true,
        Expiry::Never,
    ),
    stream(
        "src",
        "text/plain",
        b"abcdefghiafter-fork",
        (3, 19),
        false,
        Expiry::Never,
    ),
    stream(
        "fork/sub",
        "text/plain",
        b"abcXYZ",
        (1, 6),
        false,
        Expiry::Never,
    ),
    stream(
        "fork/sub/again",
        "text/plain",
        b"abcXYZ!!",
        (2, 8),
        false,
        Expiry::Never,
    ),
    stream(
        "producer",
        "text/plain",
        b"p0p1",
        (2, 4),
        false,
        Expiry::Never,
    ),
    stream(
        "ttl",
        "text/plain",
        b"ephemeral",
        (1, 9),
        false,
        Expiry::Ttl(TTL_SECS),
    ),
    stream(
        "deadline",
        "text/plain",
        b"until 2100",
        (1, 10),
        false,
        Expiry::At(DEADLINE_MS),
    ),
    stream(
        "gone/fork",
        "application/json",
        b"1,2,4,",
        (3, 6),
        false,
        Expiry::Never,
    ),
];

/// Every stream the store holds, soft-deleted ones included, sorted.
pub const NAMES: &[&str] = &[
    "bin",
    "closed",
    "deadline",
    "fork/sub",
    "fork/sub/again",
    "gone/fork",
    "gone/src",
    "json",
    "plain",
    "producer",
    "src",
    "ttl",
];

/// The control-plane records, `(namespace, key, value)`.
pub const CONTROL: [(&str, &str, &[u8]); 3] = [
    ("golden", "sub/one", br#"{"v":1}"#),
    ("golden", "key two", &[0, 1, 2, 0xff]),
    ("other-ns", "k", b"v"),
];
