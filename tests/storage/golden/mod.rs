//! Golden files: data written by earlier code in every on-disk format (the
//! file backend's checkpoint, data, index and WAL; the acid backend's redb
//! database; the backup archive), committed under `tests/golden/<set>/` and
//! opened by today's code on every run. A format change that cannot read
//! them fails here, not in a user's upgrade. See `tests/golden/README.md`
//! for the rules (never regenerate a set: add a new one).
//!
//! Every test works on a copy (a committed set is never opened in place:
//! opening writes to it) and checks the exact contents of [`script`]:
//! streams, tails, bytes from the start, fork reads, closure, expiry,
//! producer deduplication of a retried seq, a `Stream-Seq` regression,
//! control records; then that appends continue and survive a reopen.

mod script;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use durable_streams::backup::{self, Existing};
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::model::ProducerState;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ReadRequest, Storage, StorageError,
};

use script::{CONTROL, NAMES, PRODUCER, STREAMS, WRITTEN_AT};

/// Every committed golden set, oldest first: a directory of `tests/golden`.
const SETS: &[&str] = &["2026-12", "2026-12b"];

/// When the checks run: an hour after the writes. Fixed, not the clock:
/// the stream with an expiry time stays alive whenever the tests run.
const CHECK_AT: u64 = WRITTEN_AT + 3_600_000;

fn golden(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(set)
}

/// Copies the directory tree `from` into `to` (created), decompressing
/// `NAME.gz` files into `NAME` (a redb database is megabytes of mostly
/// zeros: it is committed gzipped).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().expect("UTF-8 file name");
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else if let Some(plain) = name.strip_suffix(".gz") {
            let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(e.path()).unwrap());
            let mut out = std::fs::File::create(to.join(plain)).unwrap();
            std::io::copy(&mut gz, &mut out).unwrap();
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Replaces `path` by `path.gz`.
fn gzip(path: &Path) {
    let raw = std::fs::read(path).unwrap();
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    let file = std::fs::File::create(PathBuf::from(name)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap();
    std::fs::remove_file(path).unwrap();
}

/// A copy of `set`'s `what` (a file or a directory) in a new temp dir.
fn copy_of(set: &str, what: &str) -> (tempfile::TempDir, PathBuf) {
    let src = golden(set).join(what);
    assert!(src.exists(), "golden set {set} lacks {}", src.display());
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(what);
    if src.is_dir() {
        copy_tree(&src, &dst);
    } else {
        std::fs::copy(&src, &dst).unwrap();
    }
    (tmp, dst)
}

use crate::common::stores::{acid as open_acid, file as open_file};

fn read_all(s: &dyn Storage, name: &str, from: ReadFrom) -> (Vec<u8>, Offset) {
    let out = s
        .read(name, ReadRequest::all(from, CHECK_AT))
        .unwrap_or_else(|e| panic!("read {name}: {e}"));
    (out.concat(), out.next)
}

/// The script's contents, exactly; `control` when the format carries the
/// control plane (not an archive).
fn check_contents(s: &dyn Storage, control: bool) {
    let listed = s.list_streams().expect("list");
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, NAMES);
    let meta = |n: &str| listed.iter().find(|(m, _)| m == n).unwrap().1.clone();
    for (name, m) in &listed {
        assert_eq!(m.last_access, WRITTEN_AT, "{name}: last access");
    }
    assert!(meta("gone/src").soft_deleted);
    assert_eq!(meta("gone/src").refcount, 1);
    assert_eq!(meta("src").refcount, 1);
    assert_eq!(meta("fork/sub").refcount, 1);
    let sub = meta("fork/sub");
    assert_eq!(sub.base, Offset::new(0, 3));
    let link = sub.fork.expect("fork/sub is a fork");
    assert_eq!(
        (link.source.as_str(), link.anchor, link.sub_offset),
        ("src", Offset::ZERO, 3)
    );
    assert_eq!(meta("fork/sub/again").base, Offset::new(1, 6));
    assert_eq!(meta("gone/fork").base, Offset::new(2, 4));
    assert_eq!(meta("plain").last_stream_seq.as_deref(), Some("0001"));
    let closed_by = meta("closed").closed_by.expect("closed by a producer");
    assert_eq!(
        (closed_by.id.as_str(), closed_by.epoch, closed_by.seq),
        (PRODUCER, 0, 0)
    );
    assert_eq!(
        meta("producer").producers.get(PRODUCER),
        Some(&ProducerState {
            epoch: 1,
            last_seq: 1
        })
    );

    for e in STREAMS {
        let info = s
            .head(e.name, CHECK_AT)
            .unwrap_or_else(|err| panic!("head {}: {err}", e.name));
        assert_eq!(info.content_type, e.content_type, "{}", e.name);
        assert_eq!(info.tail, e.tail, "{}: tail", e.name);
        assert_eq!(info.closed, e.closed, "{}: closed", e.name);
        assert_eq!(info.expiry, e.expiry, "{}: expiry", e.name);
        let (bytes, next) = read_all(s, e.name, ReadFrom::Start);
        assert_eq!(bytes, e.bytes, "{}: bytes from the start", e.name);
        assert_eq!(next, e.tail, "{}: next offset", e.name);
    }
    assert!(matches!(
        s.head("gone/src", CHECK_AT),
        Err(StorageError::Gone)
    ));
    // Reads resume anywhere, in a fork's inherited range too.
    assert_eq!(
        read_all(s, "src", ReadFrom::At(Offset::new(1, 6))).0,
        b"ghiafter-fork"
    );
    assert_eq!(
        read_all(s, "fork/sub/again", ReadFrom::At(Offset::new(0, 4))).0,
        b"YZ!!"
    );
    assert_eq!(read_all(s, "fork/sub", ReadFrom::Tail).0, b"");

    if control {
        let want = |ns: &str| {
            let mut v: Vec<(String, Vec<u8>)> = CONTROL
                .iter()
                .filter(|(n, _, _)| *n == ns)
                .map(|(_, k, v)| (k.to_string(), v.to_vec()))
                .collect();
            v.sort();
            v
        };
        for ns in ["golden", "other-ns"] {
            assert_eq!(s.control_scan(ns).expect("control scan"), want(ns), "{ns}");
        }
    }
}

fn text(body: &str) -> AppendRequest {
    AppendRequest::new(Some("text/plain"), body.as_bytes().to_vec(), CHECK_AT)
}

/// Retries are recognised, refusals stay refusals, and appends continue
/// at the right offsets.
fn check_writes(s: &dyn Storage) {
    let retry = s.append("producer", text("p1").by_producer(PRODUCER, 1, 1));
    assert!(
        matches!(
            retry,
            Ok(AppendOutcome::Duplicate {
                producer: Some((1, 1)),
                ..
            })
        ),
        "{retry:?}"
    );
    let mut close = text("last").by_producer(PRODUCER, 0, 0);
    close.close = true;
    let retry = s.append("closed", close);
    assert!(
        matches!(retry, Ok(AppendOutcome::Duplicate { .. })),
        "{retry:?}"
    );
    let r = s.append("closed", text("more"));
    assert!(
        matches!(r, Err(StorageError::Closed { tail }) if tail == Offset::new(2, 9)),
        "{r:?}"
    );
    let mut seq = text("x");
    seq.stream_seq = Some("0001".into());
    let r = s.append("plain", seq);
    assert!(
        matches!(r, Err(StorageError::SeqRegression { .. })),
        "{r:?}"
    );

    let tail = |r: Result<AppendOutcome, StorageError>| match r {
        Ok(AppendOutcome::Appended { info, producer }) => (info.tail, producer),
        other => panic!("not appended: {other:?}"),
    };
    assert_eq!(
        tail(s.append("plain", text("!"))),
        (Offset::new(3, 13), None)
    );
    assert_eq!(
        tail(s.append("producer", text("p2").by_producer(PRODUCER, 1, 2))),
        (Offset::new(3, 6), Some((1, 2)))
    );
    assert_eq!(
        tail(s.append("fork/sub", text("+"))),
        (Offset::new(2, 7), None)
    );
    let json = AppendRequest::new(Some("application/json"), &br#"{"b":2}"#[..], CHECK_AT);
    assert_eq!(tail(s.append("json", json)), (Offset::new(4, 26), None));
    let created = s.create(
        "new",
        CreateRequest::new(Some("text/plain"), &b"fresh"[..], CHECK_AT),
    );
    assert!(
        matches!(created, Ok(CreateOutcome::Created(_))),
        "{created:?}"
    );
}

/// What [`check_writes`] added, as found after a reopen.
fn check_written(s: &dyn Storage) {
    assert_eq!(
        read_all(s, "plain", ReadFrom::Start),
        (b"hello, world!".to_vec(), Offset::new(3, 13))
    );
    assert_eq!(read_all(s, "producer", ReadFrom::Start).0, b"p0p1p2");
    assert_eq!(read_all(s, "fork/sub", ReadFrom::Start).0, b"abcXYZ+");
    assert_eq!(
        read_all(s, "json", ReadFrom::Start).0,
        br#"{"a":1},2,"three",{"b":2},"#
    );
    assert_eq!(read_all(s, "new", ReadFrom::Start).0, b"fresh");
    let retry = s.append("producer", text("p2").by_producer(PRODUCER, 1, 2));
    assert!(
        matches!(retry, Ok(AppendOutcome::Duplicate { .. })),
        "{retry:?}"
    );
}

/// The whole check on a store `open` opens (a copy of a golden set):
/// contents, writes, then a reopen after a clean shutdown.
fn check_store(open: &dyn Fn() -> Box<dyn Storage>, control: bool) {
    let s = open();
    check_contents(&*s, control);
    check_writes(&*s);
    s.shutdown().expect("shutdown");
    drop(s);
    check_written(&*open());
}

#[test]
fn file_data_dirs_after_a_clean_shutdown_open_with_their_contents() {
    for set in SETS {
        let (_tmp, dir) = copy_of(set, "file-clean");
        check_store(&|| Box::new(open_file(&dir)), true);
    }
}

#[test]
fn file_data_dirs_with_wal_entries_past_the_checkpoint_recover_their_contents() {
    for set in SETS {
        let (_tmp, dir) = copy_of(set, "file-wal");
        check_store(&|| Box::new(open_file(&dir)), true);
    }
}

#[test]
fn acid_databases_open_with_their_contents() {
    for set in SETS {
        let (_tmp, dir) = copy_of(set, "acid");
        check_store(&|| Box::new(open_acid(&dir)), true);
    }
}

#[test]
fn archives_import_into_every_backend_with_their_contents() {
    for set in SETS {
        let archive = std::fs::read(golden(set).join("archive.dsa")).expect("archive");
        let import = |s: &dyn Storage| {
            let summary = backup::import(s, &mut Cursor::new(&archive), Existing::Fail, CHECK_AT)
                .expect("import");
            assert_eq!(summary.restored.len(), NAMES.len());
        };
        let mem = MemoryStorage::new(WakeHub::new());
        import(&mem);
        check_contents(&mem, false);
        check_writes(&mem);
        check_written(&mem);

        let tmp = tempfile::tempdir().unwrap();
        let (file_dir, acid_dir) = (tmp.path().join("file"), tmp.path().join("acid"));
        import(&open_file(&file_dir));
        check_store(&|| Box::new(open_file(&file_dir)), false);
        import(&open_acid(&acid_dir));
        check_store(&|| Box::new(open_acid(&acid_dir)), false);
    }
}

/// Writes a new golden set with today's code into `tests/golden/$DS_GOLDEN_SET`
/// (which must not exist). Never run it to rewrite a set: see the README.
#[test]
#[ignore = "writes a new golden set; see tests/golden/README.md"]
fn generate_golden_set() {
    let set = std::env::var("DS_GOLDEN_SET")
        .expect("DS_GOLDEN_SET names the new set's directory under tests/golden");
    let out = golden(&set);
    assert!(
        !out.exists(),
        "{} exists: golden sets are never rewritten, name a new one",
        out.display()
    );
    std::fs::create_dir_all(&out).unwrap();

    // A clean shutdown: a checkpoint, data and index files, an empty WAL.
    let s = open_file(&out.join("file-clean"));
    script::populate(&s);
    s.shutdown().unwrap();
    drop(s);

    // Dropped without a shutdown (nothing crashed, so every entry is whole):
    // the first half is in the checkpoint, the second only in the WAL.
    let s = open_file(&out.join("file-wal"));
    script::first_half(&s);
    s.checkpoint().unwrap();
    script::second_half(&s);
    drop(s);
    let checkpoint = std::fs::read(out.join("file-wal/checkpoint")).unwrap();
    let has = |needle: &[u8]| checkpoint.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"\"plain\"") && !has(b"\"producer\""),
        "the second half must be in the WAL only"
    );

    let s = open_acid(&out.join("acid"));
    script::populate(&s);
    s.shutdown().unwrap();
    drop(s);
    gzip(&out.join("acid/streams.redb"));

    let mem = MemoryStorage::new(WakeHub::new());
    script::populate(&mem);
    let mut archive = Vec::new();
    backup::export(&mem, &mut archive, WRITTEN_AT).unwrap();
    std::fs::write(out.join("archive.dsa"), archive).unwrap();
    eprintln!(
        "wrote {}; add {set:?} to SETS in {}",
        out.display(),
        file!()
    );
}
