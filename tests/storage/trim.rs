//! Trims on every backend, called directly: the trim point survives a
//! reopen (a clean one and one that replays the log), the space of the
//! dropped records is really given back, records a live fork reads are kept
//! until the fork goes, and producer state is untouched.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateRequest, ForkSpec, ReadRequest, Storage, StorageError,
};

use crate::common::pg;
use crate::common::stores::{acid, file};

/// Bytes of each record: large enough that a punched hole frees whole
/// file-system blocks.
const REC: usize = 256 * 1024;

fn record(i: u8) -> Bytes {
    Bytes::from(vec![b'a' + i; REC])
}

/// Creates `s` with four records, the last two by producer `p`; returns
/// the offset after each.
fn fill(s: &dyn Storage) -> Vec<Offset> {
    s.create(
        "s",
        CreateRequest::new(Some("application/octet-stream"), "", 0),
    )
    .expect("create");
    (0..4u8)
        .map(|i| {
            let mut req = AppendRequest::new(Some("application/octet-stream"), record(i), 0);
            if i >= 2 {
                req = req.by_producer("p", 0, u64::from(i - 2));
            }
            match s.append("s", req).expect("append") {
                AppendOutcome::Appended { info, .. } => info.tail,
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

fn read_all(s: &dyn Storage) -> Result<Vec<u8>, StorageError> {
    s.read("s", ReadRequest::all(ReadFrom::Start, 0))
        .map(|r| r.concat())
}

/// What every backend must show after `fill` and a trim to `tails[1]`.
fn check_trimmed(s: &dyn Storage, tails: &[Offset]) {
    let head = s.head("s", 0).expect("head");
    assert_eq!(head.earliest, tails[1]);
    let all = read_all(s).expect("read");
    assert_eq!(all.len(), 2 * REC);
    assert!(all[..REC].iter().all(|&b| b == b'c'));
    match s.read("s", ReadRequest::all(ReadFrom::At(tails[0]), 0)) {
        Err(StorageError::Trimmed { earliest }) => assert_eq!(earliest, tails[1]),
        other => panic!("{other:?}"),
    }
    // Producer state is untouched: a retry is a duplicate, the next seq new.
    let retry =
        AppendRequest::new(Some("application/octet-stream"), record(3), 0).by_producer("p", 0, 1);
    assert!(matches!(
        s.append("s", retry),
        Ok(AppendOutcome::Duplicate { .. })
    ));
    let (meta, records) = s.export_stream("s").expect("export");
    assert_eq!(meta.trimmed, Some(tails[1]));
    assert_eq!(records.len(), 2);
}

#[test]
fn memory_trim_gives_back_room_under_its_limit() {
    let s = MemoryStorage::with_limit(WakeHub::new(), 4 * REC as u64);
    let tails = fill(&s);
    let more = || AppendRequest::new(Some("application/octet-stream"), record(9), 0);
    assert!(matches!(s.append("s", more()), Err(StorageError::NoSpace)));
    let out = s.trim("s", tails[1], 0).expect("trim");
    assert!(out.moved);
    check_trimmed(&s, &tails);
    s.append("s", more()).expect("room again");
}

/// Disk blocks (of 512 bytes) the data file of stream `id` occupies.
fn data_blocks(dir: &Path, id: u64) -> u64 {
    let path = dir.join("streams").join(format!("{id:016x}.dat"));
    std::fs::metadata(path).expect("data file").blocks()
}

#[test]
fn file_trim_punches_a_hole_and_survives_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (tails, id) = {
        let s = file(dir.path());
        let tails = fill(&s);
        let id = s.head("s", 0).unwrap().id;
        let before = data_blocks(dir.path(), id);
        s.trim("s", tails[1], 0).expect("trim");
        let after = data_blocks(dir.path(), id);
        // Two of four records' blocks are given back (when the file system
        // punches holes at all, as ext4, xfs, btrfs and tmpfs do).
        assert!(
            after * 512 <= before * 512 - REC as u64,
            "blocks before {before}, after {after}"
        );
        check_trimmed(&s, &tails);
        (tails, id)
        // Dropped without a shutdown: the reopen replays the log.
    };
    let s = file(dir.path());
    check_trimmed(&s, &tails);
    s.shutdown().unwrap();
    drop(s);
    let s = file(dir.path());
    check_trimmed(&s, &tails);
    // Appends after a trim and a checkpoint land after the hole.
    s.append(
        "s",
        AppendRequest::new(Some("application/octet-stream"), record(5), 0),
    )
    .unwrap();
    assert_eq!(read_all(&s).unwrap().len(), 3 * REC);
    assert!(data_blocks(dir.path(), id) * 512 < 5 * REC as u64);
}

#[test]
fn acid_trim_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tails = {
        let s = acid(dir.path());
        let tails = fill(&s);
        s.trim("s", tails[1], 0).expect("trim");
        check_trimmed(&s, &tails);
        tails
    };
    check_trimmed(&acid(dir.path()), &tails);
}

#[test]
fn postgres_trim_deletes_the_rows_and_is_seen_by_every_node() {
    let _shared = pg::shared();
    let url = pg::fresh_database("trim");
    let a = pg::node(&url);
    let tails = fill(&a);
    let rows = || pg::psql(&url, "SELECT count(*) FROM ds_records");
    assert_eq!(rows(), "4");
    a.trim("s", tails[1], 0).expect("trim");
    assert_eq!(rows(), "2");
    let b = pg::node(&url);
    check_trimmed(&b, &tails);
    drop(a);
    check_trimmed(&b, &tails);
}

#[test]
fn records_a_fork_reads_are_kept_until_the_fork_goes() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, Box<dyn Storage>)> = vec![
        ("memory", Box::new(MemoryStorage::new(WakeHub::new()))),
        ("file", Box::new(file(&dir.path().join("file")))),
        ("acid", Box::new(acid(&dir.path().join("acid")))),
    ];
    for (kind, s) in stores {
        let s = &*s;
        let tails = fill(s);
        let fork = CreateRequest {
            fork: Some(ForkSpec {
                source: "s".into(),
                offset: Some(tails[1]),
                sub_offset: 0,
            }),
            ..CreateRequest::new(None, "", 0)
        };
        s.create("f", fork).expect("fork");
        s.trim("s", tails[2], 0).expect("trim the source");
        let inherited = s.read("f", ReadRequest::all(ReadFrom::Start, 0)).unwrap();
        assert_eq!(
            inherited.len(),
            2 * REC,
            "{kind}: the fork reads all it inherited"
        );
        assert!(matches!(
            s.read("s", ReadRequest::all(ReadFrom::At(tails[1]), 0)),
            Err(StorageError::Trimmed { .. })
        ));
        // The last fork goes: the source's trimmed records go with it.
        s.delete("f", 0).unwrap();
        let (meta, records) = s.export_stream("s").unwrap();
        assert_eq!(meta.own_start(), tails[2], "{kind}");
        assert_eq!(records.len(), 1, "{kind}");
        assert_eq!(read_all(s).unwrap().len(), REC, "{kind}");
    }
}

#[test]
fn archives_carry_the_trim_point() {
    use durable_streams::backup::{self, Existing};
    use std::io::Cursor;
    let mem = MemoryStorage::new(WakeHub::new());
    let tails = fill(&mem);
    mem.trim("s", tails[1], 0).unwrap();
    let mut archive = Vec::new();
    backup::export(&mem, &mut archive, 0).expect("export");
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, Box<dyn Storage>)> = vec![
        ("memory", Box::new(MemoryStorage::new(WakeHub::new()))),
        ("file", Box::new(file(&dir.path().join("file")))),
        ("acid", Box::new(acid(&dir.path().join("acid")))),
    ];
    for (kind, s) in stores {
        backup::import(&*s, &mut Cursor::new(archive.clone()), Existing::Fail, 0)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        check_trimmed(&*s, &tails);
        // The restored stream goes on where the exported one stood.
        let next = AppendRequest::new(Some("application/octet-stream"), record(7), 0)
            .by_producer("p", 0, 2);
        assert!(matches!(
            s.append("s", next),
            Ok(AppendOutcome::Appended { .. })
        ));
        assert_eq!(read_all(&*s).unwrap().len(), 3 * REC, "{kind}");
    }
}

#[test]
fn retention_sweeps_every_backend() {
    use durable_streams::config::retention::RetentionPolicy;
    use durable_streams::retention::Sweeper;
    use std::time::Duration;
    let _shared = pg::shared();
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database("retention");
    let stores: Vec<(&str, Box<dyn Storage>)> = vec![
        ("file", Box::new(file(&dir.path().join("file")))),
        ("acid", Box::new(acid(&dir.path().join("acid")))),
        ("postgres", Box::new(pg::node(&url))),
    ];
    for (kind, s) in stores {
        let s = &*s;
        let tails = fill(s);
        let mut by_bytes = Sweeper::new(vec![RetentionPolicy {
            streams: "**".into(),
            max_age: None,
            max_bytes: Some(2 * REC as u64),
        }]);
        assert_eq!(by_bytes.run(s, 1).unwrap(), 1, "{kind}");
        check_trimmed(s, &tails);
        let mut by_age = Sweeper::new(vec![RetentionPolicy {
            streams: "s".into(),
            max_age: Some(Duration::from_secs(60)),
            max_bytes: None,
        }]);
        by_age.run(s, 1_000).unwrap();
        assert_eq!(read_all(s).unwrap().len(), 2 * REC, "{kind}: not old yet");
        by_age.run(s, 61_000).unwrap();
        assert_eq!(read_all(s).unwrap().len(), 0, "{kind}: a minute old");
        assert_eq!(s.head("s", 61_000).unwrap().earliest, tails[3], "{kind}");
    }
}
