//! Backup and migration: an archive written from one backend restores into
//! every other with byte-exact data, identical offsets, closure, expiry,
//! fork links and producer state; the `--existing` policies; damaged
//! archives are refused before anything is written; and the real binary's
//! `export`, `import` and `list`.

use std::io::Cursor;
use std::process::Command;

use bytes::Bytes;
use durable_streams::backup::{self, BackupError, Existing};
use durable_streams::notify::WakeHub;
use durable_streams::offset::{Offset, ReadFrom};
use durable_streams::storage::memory::MemoryStorage;
use durable_streams::storage::{
    AppendOutcome, AppendRequest, CreateRequest, Expiry, ForkSpec, ProducerHeaders, ReadRequest,
    Storage, StorageError, StreamMeta, now_ms,
};

use crate::common::stores::{acid as open_acid, file as open_file};

fn create(s: &dyn Storage, name: &str, ct: &str, body: &str, expiry: Option<Expiry>) {
    s.create(
        name,
        CreateRequest {
            content_type: Some(ct.into()),
            expiry,
            closed: false,
            fork: None,
            body: Bytes::copy_from_slice(body.as_bytes()),
            now: now_ms(),
        },
    )
    .expect("create");
}

fn fork(s: &dyn Storage, name: &str, source: &str, offset: Option<Offset>, sub: u64) {
    s.create(
        name,
        CreateRequest {
            content_type: None,
            expiry: None,
            closed: false,
            fork: Some(ForkSpec {
                source: source.into(),
                offset,
                sub_offset: sub,
            }),
            body: Bytes::new(),
            now: now_ms(),
        },
    )
    .expect("fork");
}

fn append_req(ct: &str, body: &str) -> AppendRequest {
    AppendRequest {
        content_type: Some(ct.into()),
        body: Bytes::copy_from_slice(body.as_bytes()),
        close: false,
        stream_seq: None,
        producer: None,
        if_match: None,
        now: now_ms(),
    }
}

fn producer(epoch: u64, seq: u64) -> Option<ProducerHeaders> {
    Some(ProducerHeaders {
        id: "writer-1".into(),
        epoch,
        seq,
    })
}

fn append(s: &dyn Storage, name: &str, req: AppendRequest) -> AppendOutcome {
    s.append(name, req).expect("append")
}

/// A store exercising everything an archive must carry.
fn populate(s: &dyn Storage) {
    let text = "text/plain";
    create(s, "plain", text, "hello", None);
    append(
        s,
        "plain",
        AppendRequest {
            stream_seq: Some("0001".into()),
            ..append_req(text, ", world")
        },
    );
    create(s, "json", "application/json", r#"[{"a":1}, 2]"#, None);
    append(s, "json", append_req("application/json", r#""three""#));
    create(s, "closed", text, "first", None);
    append(
        s,
        "closed",
        AppendRequest {
            close: true,
            producer: producer(0, 0),
            ..append_req(text, "last")
        },
    );
    create(s, "src", text, "abcdef", None);
    append(s, "src", append_req(text, "ghi"));
    // A fork three bytes into the source's first record.
    fork(s, "fork/sub", "src", Some(Offset::ZERO), 3);
    append(s, "fork/sub", append_req(text, "XYZ"));
    fork(s, "fork/sub/again", "fork/sub", None, 0);
    append(s, "fork/sub/again", append_req(text, "!!"));
    append(s, "src", append_req(text, "after-fork"));
    create(s, "ttl", text, "ephemeral", Some(Expiry::Ttl(3600)));
    create(
        s,
        "deadline",
        text,
        "until tomorrow",
        Some(Expiry::At(now_ms() + 86_400_000)),
    );
    create(s, "gone/src", "application/json", "[1,2,3]", None);
    fork(s, "gone/fork", "gone/src", Some(Offset::new(2, 4)), 0);
    append(s, "gone/fork", append_req("application/json", "[4]"));
    s.delete("gone/src", now_ms()).expect("soft delete");
    create(s, "producer", text, "", None);
    append(
        s,
        "producer",
        AppendRequest {
            producer: producer(1, 0),
            ..append_req(text, "p0")
        },
    );
    append(
        s,
        "producer",
        AppendRequest {
            producer: producer(1, 1),
            ..append_req(text, "p1")
        },
    );
}

fn export_bytes(s: &dyn Storage) -> Vec<u8> {
    let mut out = Vec::new();
    backup::export(s, &mut out, now_ms()).expect("export");
    out
}

fn import_bytes(
    s: &dyn Storage,
    archive: &[u8],
    policy: Existing,
) -> Result<backup::ImportSummary, BackupError> {
    backup::import(s, &mut Cursor::new(archive.to_vec()), policy, now_ms())
}

/// Metadata with the store-assigned ids blanked.
fn portable(mut m: StreamMeta) -> StreamMeta {
    m.id = 0;
    if let Some(f) = m.fork.as_mut() {
        f.source_id = 0;
    }
    m
}

/// Reads a stream's whole view at time `now` (which its sliding TTL takes
/// as the last access).
fn read_at(s: &dyn Storage, name: &str, now: u64) -> Result<(Vec<u8>, Offset, bool), StorageError> {
    let out = s.read(
        name,
        ReadRequest {
            from: ReadFrom::Start,
            max_bytes: usize::MAX,
            lend_bytes: usize::MAX,
            now,
        },
    )?;
    let bytes = out.chunks.iter().flat_map(|c| c.to_vec()).collect();
    Ok((bytes, out.next, out.info.closed))
}

/// Everything observable about every stream, with ids made portable.
type Snapshot = Vec<(String, StreamMeta, Vec<Bytes>, String)>;

fn snapshot(s: &dyn Storage) -> Snapshot {
    s.list_streams()
        .expect("list")
        .into_iter()
        .map(|(name, meta)| {
            let (m2, own) = s.export_stream(&name).expect("export stream");
            assert_eq!(meta, m2);
            // Fork ids must point at the current source incarnation.
            if let Some(link) = &meta.fork {
                let (src, _) = s.export_stream(&link.source).expect("source");
                assert_eq!(src.id, link.source_id, "{name}: fork link remapped");
            }
            // Read "at" the last access so that the read renews nothing.
            let view = format!("{:?}", read_at(s, &name, meta.last_access));
            (name, portable(meta), own, view)
        })
        .collect()
}

fn check_producers(s: &dyn Storage) {
    // A retried producer append is recognised as a duplicate...
    let retry = s
        .append(
            "producer",
            AppendRequest {
                producer: producer(1, 1),
                ..append_req("text/plain", "p1")
            },
        )
        .expect("retry");
    assert!(
        matches!(
            retry,
            AppendOutcome::Duplicate {
                producer: Some((1, 1)),
                ..
            }
        ),
        "{retry:?}"
    );
    // ...and so is a retry of the request that closed a stream.
    let retry = s
        .append(
            "closed",
            AppendRequest {
                close: true,
                producer: producer(0, 0),
                ..append_req("text/plain", "last")
            },
        )
        .expect("retry close");
    assert!(
        matches!(retry, AppendOutcome::Duplicate { .. }),
        "{retry:?}"
    );
    // A Stream-Seq regression is still refused.
    let r = s.append(
        "plain",
        AppendRequest {
            stream_seq: Some("0001".into()),
            ..append_req("text/plain", "x")
        },
    );
    assert!(
        matches!(r, Err(StorageError::SeqRegression { .. })),
        "{r:?}"
    );
}

#[test]
fn round_trip_memory_file_acid() {
    let mem = MemoryStorage::new(WakeHub::new());
    populate(&mem);
    let expected = snapshot(&mem);
    assert_eq!(expected.len(), 11);
    // Spot checks of what the snapshot holds.
    let by = |n: &str| expected.iter().find(|e| e.0 == n).unwrap().clone();
    assert_eq!(by("fork/sub").1.base, Offset::new(0, 3));
    assert!(by("gone/src").1.soft_deleted);
    assert_eq!(by("src").1.refcount, 1);
    assert!(by("closed").1.closed_by.is_some());
    assert!(
        by("gone/fork").3.contains("[49, 44, 50, 44, 52, 44]"),
        "stitched read"
    );
    let archive = export_bytes(&mem);

    let dir = tempfile::tempdir().unwrap();
    let (file_dir, acid_dir) = (dir.path().join("file"), dir.path().join("acid"));
    let archive2 = {
        let file = open_file(&file_dir);
        let summary = import_bytes(&file, &archive, Existing::Fail).unwrap();
        assert_eq!(summary.restored.len(), 11);
        assert_eq!(snapshot(&file), expected);
        file.shutdown().unwrap();
        drop(file);
        // Restores went through the WAL and checkpoint: they survive a reopen.
        let file = open_file(&file_dir);
        assert_eq!(snapshot(&file), expected);
        export_bytes(&file)
    };
    {
        let acid = open_acid(&acid_dir);
        import_bytes(&acid, &archive2, Existing::Fail).unwrap();
        assert_eq!(snapshot(&acid), expected);
        acid.shutdown().unwrap();
    }
    let acid = open_acid(&acid_dir);
    assert_eq!(snapshot(&acid), expected);
    check_producers(&acid);
    // The restored fork chain keeps working: deleting the last fork of a
    // soft-deleted source removes both.
    acid.delete("gone/fork", now_ms()).unwrap();
    assert!(
        acid.list_streams()
            .unwrap()
            .iter()
            .all(|(n, _)| n != "gone/src")
    );
    // And the file store answers the same retries.
    drop(acid);
    let file = open_file(&file_dir);
    check_producers(&file);
}

#[test]
fn existing_policies() {
    let mem = MemoryStorage::new(WakeHub::new());
    populate(&mem);
    let archive = export_bytes(&mem);
    let target = || {
        let t = MemoryStorage::new(WakeHub::new());
        create(&t, "plain", "text/plain", "mine", None);
        create(&t, "src", "text/plain", "my source", None);
        t
    };

    // fail (the default): refused up front, nothing written.
    let t = target();
    match import_bytes(&t, &archive, Existing::Fail) {
        Err(BackupError::Exists(mut names)) => {
            names.sort();
            assert_eq!(names, vec!["plain", "src"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.list_streams().unwrap().len(), 2);

    // skip: the target's streams stay, and forks of a skipped source are
    // not attached to the target's unrelated stream of that name.
    let t = target();
    let summary = import_bytes(&t, &archive, Existing::Skip).unwrap();
    let skipped: Vec<&str> = summary.skipped.iter().map(|s| s.0.as_str()).collect();
    let mut skipped = skipped;
    skipped.sort();
    assert_eq!(skipped, vec!["fork/sub", "fork/sub/again", "plain", "src"]);
    assert_eq!(summary.restored.len(), 7);
    assert_eq!(read_at(&t, "plain", now_ms()).unwrap().0, b"mine");
    assert!(t.head("fork/sub", now_ms()).is_err());

    // replace: the archive's versions win.
    let t = target();
    let summary = import_bytes(&t, &archive, Existing::Replace).unwrap();
    let mut replaced = summary.replaced.clone();
    replaced.sort();
    assert_eq!(replaced, vec!["plain", "src"]);
    assert_eq!(summary.restored.len(), 11);
    assert_eq!(snapshot(&t), snapshot(&mem));

    // replace refuses to pull a source from under the target's own forks.
    let t = target();
    fork(&t, "mine/fork", "src", None, 0);
    match import_bytes(&t, &archive, Existing::Replace) {
        Err(BackupError::CannotReplace(msg)) => assert!(msg.contains("mine/fork"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(read_at(&t, "plain", now_ms()).unwrap().0, b"mine");
}

#[test]
fn damaged_archives_are_refused_before_writing() {
    let mem = MemoryStorage::new(WakeHub::new());
    populate(&mem);
    let archive = export_bytes(&mem);
    let target = MemoryStorage::new(WakeHub::new());
    let expect_err = |bytes: &[u8], want: &str| match import_bytes(&target, bytes, Existing::Fail) {
        Err(BackupError::Archive(msg)) => assert!(msg.contains(want), "{want:?} in {msg:?}"),
        other => panic!("expected an archive error with {want:?}, got {other:?}"),
    };
    // Cut anywhere: truncation, never a partial import.
    for cut in [
        0,
        5,
        16,
        20,
        archive.len() / 3,
        archive.len() / 2,
        archive.len() - 1,
    ] {
        expect_err(&archive[..cut], "truncated");
    }
    // A flipped bit in any frame is a checksum mismatch.
    for at in [17, 40, archive.len() / 2, archive.len() - 3] {
        let mut bad = archive.clone();
        bad[at] ^= 0x04;
        match import_bytes(&target, &bad, Existing::Fail) {
            Err(BackupError::Archive(msg)) => assert!(msg.contains("corrupt"), "{msg}"),
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    let mut bad = archive.clone();
    bad[0] = b'X';
    expect_err(&bad, "bad magic");
    let mut bad = archive.clone();
    bad[8] = 9;
    expect_err(&bad, "version 9");
    let mut bad = archive.clone();
    bad.push(0);
    expect_err(&bad, "after the end frame");
    assert!(target.list_streams().unwrap().is_empty());
    // The intact archive still imports.
    import_bytes(&target, &archive, Existing::Fail).unwrap();
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_export_import_list() {
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("file");
    let acid_dir = dir.path().join("acid");
    let archive = dir.path().join("backup.dsa");
    let (fd, ad, ar) = (
        file_dir.to_str().unwrap(),
        acid_dir.to_str().unwrap(),
        archive.to_str().unwrap(),
    );
    let expected = {
        let file = open_file(&file_dir);
        populate(&file);
        let snap = snapshot(&file);
        // The server holds the directory: the commands say so and stop.
        let (ok, _, err) = run(&["list", "--storage", "file", "--data-dir", fd]);
        assert!(!ok);
        assert!(err.contains("in use by another process"), "{err}");
        assert!(err.contains("stop it first"), "{err}");
        file.shutdown().unwrap();
        snap
    };

    let (ok, _, err) = run(&[
        "export",
        "--storage",
        "file",
        "--data-dir",
        fd,
        "--output",
        ar,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("exported 11 streams"), "{err}");
    let (ok, _, err) = run(&[
        "import",
        "--storage",
        "acid",
        "--data-dir",
        ad,
        "--input",
        ar,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("imported 11 streams"), "{err}");
    // Again: the default policy refuses existing names.
    let (ok, _, err) = run(&[
        "import",
        "--storage",
        "acid",
        "--data-dir",
        ad,
        "--input",
        ar,
    ]);
    assert!(!ok);
    assert!(err.contains("already exist"), "{err}");
    let (ok, _, err) = run(&[
        "import",
        "--storage",
        "acid",
        "--data-dir",
        ad,
        "--input",
        ar,
        "--existing",
        "skip",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("imported 0 streams"), "{err}");

    let (ok, out, err) = run(&["list", "--storage", "acid", "--data-dir", ad]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 11, "{out}");
    assert!(
        lines.contains(&"plain\ttext/plain\t12 own\t12 total\t-"),
        "{out}"
    );
    assert!(
        lines.contains(&"fork/sub\ttext/plain\t3 own\t6 total\tfork-of=src"),
        "{out}"
    );
    assert!(
        lines.contains(&"closed\ttext/plain\t9 own\t9 total\tclosed"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gone/src\t") && l.ends_with("\tsoft-deleted")),
        "{out}"
    );

    let acid = open_acid(&acid_dir);
    assert_eq!(snapshot(&acid), expected);
    drop(acid);

    // Standard output and standard input instead of files.
    let bin = env!("CARGO_BIN_EXE_durable-streams");
    let out = Command::new(bin)
        .args([
            "export",
            "--storage",
            "acid",
            "--data-dir",
            ad,
            "--output",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    // (Not byte-equal to the file export: the ids differ between stores.)
    assert!(out.stdout.starts_with(&backup::MAGIC));
    let piped_dir = dir.path().join("piped");
    let mut child = Command::new(bin)
        .args(["import", "--storage", "file", "--data-dir"])
        .arg(&piped_dir)
        .args(["--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&out.stdout).unwrap();
    }
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(snapshot(&open_file(&piped_dir)), expected);
}

#[test]
fn restore_rejects_what_it_cannot_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let file = open_file(&dir.path().join("file"));
    let acid = open_acid(&dir.path().join("acid"));
    let mem = MemoryStorage::new(WakeHub::new());
    let stores: [&dyn Storage; 3] = [&mem, &file, &acid];
    for s in stores {
        create(s, "a", "text/plain", "abc", None);
        let (meta, records) = s.export_stream("a").unwrap();
        let r = s.restore_stream("a", meta.clone(), records.clone());
        assert!(matches!(r, Err(StorageError::AlreadyExists)), "{r:?}");
        // Records that do not lead to the tail.
        let r = s.restore_stream("b", meta.clone(), vec![Bytes::from_static(b"ab")]);
        assert!(matches!(r, Err(StorageError::InvalidRestore(_))), "{r:?}");
        // A fork whose source is absent, or too short for its base.
        let mut f = meta.clone();
        f.base = Offset::new(1, 3);
        f.tail = Offset::new(2, 5);
        f.fork = Some(durable_streams::storage::model::ForkLink {
            source: "missing".into(),
            source_id: 99,
            anchor: Offset::new(1, 3),
            sub_offset: 0,
        });
        let two = vec![Bytes::from_static(b"de")];
        let r = s.restore_stream("c", f.clone(), two.clone());
        assert!(matches!(r, Err(StorageError::ForkSourceNotFound)), "{r:?}");
        f.fork.as_mut().unwrap().source = "a".into();
        f.base = Offset::new(1, 4);
        f.tail = Offset::new(2, 6);
        let r = s.restore_stream("c", f.clone(), two.clone());
        assert!(matches!(r, Err(StorageError::InvalidRestore(_))), "{r:?}");
        // Nothing of the refused restores remains; a valid one works.
        assert_eq!(s.list_streams().unwrap().len(), 1);
        f.base = Offset::new(1, 3);
        f.tail = Offset::new(2, 5);
        let info = s.restore_stream("c", f, two).unwrap();
        assert_eq!(info.tail, Offset::new(2, 5));
        assert_eq!(read_at(s, "c", now_ms()).unwrap().0, b"abcde");
        assert_eq!(s.export_stream("a").unwrap().0.refcount, 1);
    }
}
