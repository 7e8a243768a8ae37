//! Injected write and sync failures (see [`super::faults`]): a failed append
//! or create never leaves a stream partly updated.
//!
//! A seeded random schedule of producer appends and creates runs with a
//! fault armed at a random point of the I/O path before many of them, and
//! every outcome is checked against a plain model:
//!
//! * data or index file write fails (ENOSPC → `NoSpace`, EIO → `Io`): the
//!   call fails, the store keeps serving, tail, data and producer state are
//!   unchanged, and the retry is accepted as new at the same offset;
//! * WAL write fails: the store refuses everything until reopened, and
//!   after reopening the append is absent;
//! * WAL fsync fails: likewise, and after reopening the append is either
//!   wholly there or wholly absent; the producer's retry tells which (a
//!   duplicate, or accepted now).

use rand::{Rng, SeedableRng};

use super::FileStorage;
use super::faults::Point;
use super::test_support::{create, open, produce, read_all, read_from, try_open};
use crate::offset::{Offset, ReadFrom};
use crate::storage::{AppendOutcome, Storage, StorageError};

/// What the store must hold: stream `s` with the producer's acknowledged
/// messages, and the streams created so far (empty at first).
#[derive(Default)]
struct Model {
    data: Vec<u8>,
    records: u64,
    next_seq: u64,
    created: Vec<(String, Vec<u8>)>,
}

impl Model {
    fn tail(&self) -> Offset {
        Offset::new(self.records, self.data.len() as u64)
    }

    fn check(&self, s: &FileStorage, when: &str) {
        let (data, tail, _) = read_all(s, "s").expect("read s");
        assert!(data == self.data, "{when}: data of s differs");
        assert_eq!(tail, self.tail(), "{when}: tail of s");
        for (name, body) in &self.created {
            assert_eq!(&read_all(s, name).expect("read").0, body, "{when}: {name}");
        }
        if self.next_seq > 0 {
            // The producer state survived: the last acknowledged is a duplicate.
            let last = self.next_seq - 1;
            let r = s.append("s", produce("dup", last)).expect("retry");
            assert!(
                matches!(r, AppendOutcome::Duplicate { .. }),
                "{when}: retry of seq {last} was not a duplicate"
            );
        }
    }

    fn accept(&mut self, msg: &[u8]) {
        self.data.extend_from_slice(msg);
        self.records += 1;
        self.next_seq += 1;
    }
}

const POINTS: [Point; 4] = [
    Point::DataWrite,
    Point::IndexWrite,
    Point::WalWrite,
    Point::WalSync,
];

#[test]
fn injected_write_and_sync_failures_never_leave_partial_state() {
    let rounds: u64 = std::env::var("DS_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let seed: u64 = std::env::var("DS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.create("s", create("")).unwrap();
    let mut m = Model::default();
    let (mut faults, mut reopens) = (0, 0);
    for round in 0..rounds {
        let when = format!("seed {seed} round {round}");
        let creating = rng.random_bool(0.2);
        // Appends leave their index entries to the checkpoint (tested
        // below): only creates write the index file.
        let fault = rng
            .random_bool(0.6)
            .then(|| POINTS[rng.random_range(0..POINTS.len())])
            .filter(|p| creating || *p != Point::IndexWrite);
        let errno = if rng.random_bool(0.5) {
            libc::ENOSPC
        } else {
            libc::EIO
        };
        if let Some(p) = fault {
            store.inner.files.faults.arm(p, 0, errno);
            faults += 1;
        }
        // Now and then a record large enough to be kept in memory after
        // its write (`super::recent`): a failed append's must not outlive
        // the retry written over it.
        let len = if rng.random_bool(0.05) {
            super::recent::RECENT_MIN + rng.random_range(0..2000)
        } else {
            rng.random_range(1..2000)
        };
        let msg: Vec<u8> = format!("<{round}:{}>", "x".repeat(len)).into_bytes();
        let name = format!("c{round}");
        let result = if creating {
            store.create(&name, create(msg.clone())).map(|_| ())
        } else {
            store
                .append("s", produce(msg.clone(), m.next_seq))
                .map(|_| ())
        };
        match (fault, result) {
            (_, Ok(())) => {
                // The fault was armed where this call does no I/O of that
                // kind (none here: every call writes data and WAL, creates the index too).
                assert!(fault.is_none(), "{when}: {fault:?} did not fail the call");
                if creating {
                    m.created.push((name, msg));
                } else {
                    m.accept(&msg);
                }
            }
            (None, Err(e)) => panic!("{when}: failed without a fault: {e}"),
            (Some(Point::DataWrite | Point::IndexWrite), Err(e)) => {
                let want_nospace = errno == libc::ENOSPC;
                assert!(
                    matches!(
                        (&e, want_nospace),
                        (StorageError::NoSpace, true) | (StorageError::Io(_), false)
                    ),
                    "{when}: {e:?}"
                );
                // Still serving, nothing changed, and the retry is new.
                m.check(&store, &when);
                if creating {
                    assert!(matches!(store.head(&name, 3), Err(StorageError::NotFound)));
                    store
                        .create(&name, create(msg.clone()))
                        .expect("create retry");
                    m.created.push((name, msg));
                } else {
                    let r = store
                        .append("s", produce(msg.clone(), m.next_seq))
                        .expect("retry");
                    let AppendOutcome::Appended { info, .. } = r else {
                        panic!("{when}: retry after a failed file write was a duplicate");
                    };
                    m.accept(&msg);
                    assert_eq!(info.tail, m.tail(), "{when}: retry landed elsewhere");
                }
            }
            (Some(Point::DataFlush), Err(e)) => {
                panic!("{when}: DataFlush is not among the points armed here ({e})")
            }
            (Some(p @ (Point::WalWrite | Point::WalSync)), Err(e)) => {
                assert!(matches!(e, StorageError::Unavailable(_)), "{when}: {e:?}");
                // The log is poisoned: nothing more until it is reopened.
                assert!(
                    store.head("s", 3).is_err(),
                    "{when}: served after a WAL failure"
                );
                drop(store);
                store = open(dir.path());
                reopens += 1;
                if creating {
                    let present = store.head(&name, 3).is_ok();
                    assert!(
                        p == Point::WalSync || !present,
                        "{when}: unwritten create is there"
                    );
                    if !present {
                        store
                            .create(&name, create(msg.clone()))
                            .expect("create retry");
                    }
                    m.created.push((name, msg));
                } else {
                    let (data, _, _) = read_all(&store, "s").unwrap();
                    let landed = data.len() > m.data.len();
                    if landed {
                        assert!(p == Point::WalSync, "{when}: unwritten append is there");
                        assert_eq!(&data[m.data.len()..], &msg[..], "{when}: partial append");
                    } else {
                        assert!(data == m.data, "{when}: data changed");
                    }
                    let r = store
                        .append("s", produce(msg.clone(), m.next_seq))
                        .expect("retry");
                    assert_eq!(
                        matches!(r, AppendOutcome::Duplicate { .. }),
                        landed,
                        "{when}: the retry disagrees with what recovery found"
                    );
                    m.accept(&msg);
                }
            }
        }
        m.check(&store, &when);
    }
    drop(store);
    let store = open(dir.path());
    m.check(&store, "final reopen");
    println!(
        "file fault injection: seed {seed}, {rounds} operations, {faults} injected failures, {reopens} reopens, {} appends and {} creates checked",
        m.records,
        m.created.len()
    );
}

/// Found by the recovery fuzzer: a checksummed checkpoint whose metadata
/// puts a tail before its base (or out-of-range counters) made open panic
/// on arithmetic overflow; it is refused as corrupt instead.
#[test]
fn inconsistent_checkpoint_metadata_is_refused_not_a_panic() {
    use super::format::{self, Checkpoint};
    use crate::storage::{Expiry, StreamMeta};
    for (base, tail, segment) in [
        (Offset::new(5, 50), Offset::new(1, 60), 1),
        (Offset::new(0, 50), Offset::new(1, 10), 1),
        (Offset::ZERO, Offset::new(u64::MAX, u64::MAX), 1),
        (Offset::ZERO, Offset::ZERO, u64::MAX),
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let mut meta = StreamMeta::new(1, "text/plain".into(), Expiry::Never, base, 0);
        meta.tail = tail;
        let c = Checkpoint {
            wal_segment: segment,
            next_id: 2,
            streams: vec![("s".into(), meta)],
        };
        std::fs::write(dir.path().join("checkpoint"), format::encode_checkpoint(&c)).unwrap();
        let r = try_open(dir.path());
        assert!(
            matches!(r, Err(StorageError::Corrupt(_))),
            "base {base} tail {tail} segment {segment}"
        );
    }
}

/// Appends leave their index entries to the checkpoint: a failed index
/// write fails that checkpoint only (nothing it would rely on is claimed
/// durable), appends go on, and the next checkpoint writes everything.
#[test]
fn failed_index_write_fails_the_checkpoint_not_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create("s", create("")).unwrap();
    let mut m = Model::default();
    for i in 0..5u8 {
        let msg = [b'a' + i; 3];
        store
            .append("s", produce(msg.to_vec(), m.next_seq))
            .unwrap();
        m.accept(&msg);
    }
    store
        .inner
        .files
        .faults
        .arm(Point::IndexWrite, 0, libc::EIO);
    assert!(matches!(store.checkpoint(), Err(StorageError::Io(_))));
    m.check(&store, "after the failed checkpoint");
    store.append("s", produce("zz", m.next_seq)).unwrap();
    m.accept(b"zz");
    store.checkpoint().unwrap();
    // Both checkpoints' appends are in the index file: a clean reopen
    // (nothing to replay) loads it.
    store.shutdown().unwrap();
    drop(store);
    let store = open(dir.path());
    m.check(&store, "reopened");
    let (rest, _, _) = read_from(&store, "s", ReadFrom::At(Offset::new(5, 15))).unwrap();
    assert_eq!(rest, b"zz");
}
