//! Extraction of well-formed and hostile archives: what lands on disk, and that nothing ever lands
//! outside the target directory and the mapped tablespace directories.

// Test-only file: helpers outside #[test] functions panic on setup failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use common::{tree, Scratch};
use walrelay_basebackup::{
    prepare_tablespace_dirs, ArchiveExtractor, ArchiveKind, ChecksumAlgorithm, ChecksumCollector,
    ExtractError, ExtractObserver, TablespaceLocation, TablespaceMapping, TarError,
};
use walrelay_durable::Owner;
use walrelay_testkit::tar_builder::{raw_header, Tar, BLOCK};

/// Records what the extractor reports.
#[derive(Default)]
struct Recorder {
    files: Vec<(PathBuf, u64, Vec<u8>)>,
    open: bool,
}

impl ExtractObserver for Recorder {
    fn file_started(&mut self, path: &Path, size: u64) {
        assert!(!self.open, "file_started before file_finished");
        self.open = true;
        self.files.push((path.to_path_buf(), size, Vec::new()));
    }
    fn file_data(&mut self, data: &[u8]) {
        assert!(self.open);
        self.files.last_mut().unwrap().2.extend_from_slice(data);
    }
    fn file_finished(&mut self) {
        assert!(self.open);
        self.open = false;
    }
}

fn extract(
    target: &Path,
    archive: &[u8],
) -> (
    Result<walrelay_basebackup::ArchiveSummary, ExtractError>,
    ArchiveExtractor,
) {
    let mut x = ArchiveExtractor::new(target, Vec::new(), Owner::current());
    let r = x.extract(ArchiveKind::Base, archive, &mut ());
    (r, x)
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn extracts_a_data_directory_like_archive() {
    let s = Scratch::new();
    // Built with the `tar` crate: an independent writer for the parser to agree with.
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        b.append_data(&mut h, path, &[][..]).unwrap();
    };
    dir("base", 0o700);
    dir("base/1", 0o750);
    dir("pg_wal", 0o700);
    dir("pg_replslot", 0o700);
    let mut file = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_mtime(1_650_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    file("PG_VERSION", b"15\n", 0o600);
    file("base/1/1259", &big, 0o640);
    file("base/1/empty", b"", 0o600);
    let archive = b.into_inner().unwrap();

    let mut x =
        ArchiveExtractor::new(&s.target, Vec::new(), Owner::current()).with_buffer_size(64 * 1024);
    let progress = x.progress();
    let mut rec = Recorder::default();
    let summary = x
        .extract(ArchiveKind::Base, &archive[..], &mut rec)
        .unwrap();

    assert_eq!(summary.files, 3);
    assert_eq!(summary.directories, 4);
    assert_eq!(summary.file_bytes, big.len() as u64 + 3);
    assert_eq!(summary.archive_bytes, archive.len() as u64);
    assert_eq!(progress.bytes(), archive.len() as u64);
    assert_eq!(
        tree(&s.target),
        [
            "PG_VERSION",
            "base",
            "base/1",
            "base/1/1259",
            "base/1/empty",
            "pg_replslot",
            "pg_wal"
        ]
    );
    assert_eq!(fs::read(s.target.join("PG_VERSION")).unwrap(), b"15\n");
    assert_eq!(fs::read(s.target.join("base/1/1259")).unwrap(), big);
    assert_eq!(mode_of(&s.target.join("PG_VERSION")), 0o600);
    assert_eq!(mode_of(&s.target.join("base/1/1259")), 0o640);
    assert_eq!(mode_of(&s.target.join("base/1")), 0o750);
    let mtime = |p: &str| fs::metadata(s.target.join(p)).unwrap().modified().unwrap();
    assert_eq!(
        mtime("base/1/1259"),
        UNIX_EPOCH + Duration::from_secs(1_650_000_000)
    );
    // directory mtimes are set after their contents were written
    assert_eq!(
        mtime("base/1"),
        UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    );

    // the observer saw each file once, whole, in order
    let seen: Vec<(String, u64)> = rec
        .files
        .iter()
        .map(|(p, n, _)| (p.display().to_string(), *n))
        .collect();
    assert_eq!(
        seen,
        [
            ("PG_VERSION".to_string(), 3),
            ("base/1/1259".to_string(), big.len() as u64),
            ("base/1/empty".to_string(), 0)
        ]
    );
    assert_eq!(rec.files[1].2, big);

    // everything written is recorded for the final sync
    let written = x.into_written();
    assert_eq!(written.files().len(), 3);
    assert!(written.dirs().contains(&s.target));
    assert!(written.dirs().contains(&s.target.join("base/1")));
    written.sync_all(3).unwrap();
    s.assert_nothing_outside();
}

#[test]
fn pre_15_archives_without_end_blocks_and_15_with_them() {
    for archive in [
        Tar::new().file("a", b"1", 0o600).unterminated(),
        Tar::new().file("a", b"1", 0o600).end(),
    ] {
        let s = Scratch::new();
        let (r, _) = extract(&s.target, &archive);
        assert_eq!(r.unwrap().files, 1);
        assert_eq!(fs::read(s.target.join("a")).unwrap(), b"1");
    }
}

#[test]
fn truncated_member_is_an_error() {
    let s = Scratch::new();
    let archive = Tar::new()
        .file("global/pg_control", &[9u8; 8192], 0o600)
        .unterminated();
    let (r, _) = extract(&s.target, &archive[..BLOCK + 5000]);
    match r {
        Err(ExtractError::Tar(TarError::TruncatedMember {
            path,
            expected,
            got,
        })) => {
            assert_eq!(
                (path.as_str(), expected, got),
                ("global/pg_control", 8192, 5000)
            );
        }
        other => panic!("{other:?}"),
    }
    s.assert_nothing_outside();
}

#[test]
fn long_names_gnu_and_pax() {
    let s = Scratch::new();
    let long_dir = "d".repeat(90) + "/" + &"e".repeat(90);
    let long_file = format!("{long_dir}/{}", "f".repeat(120));
    // GNU long names, via the tar crate's builder
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(5);
    b.append_data(&mut h, &long_file, &b"hello"[..]).unwrap();
    let mut archive = b.into_inner().unwrap();
    archive.truncate(archive.len() - 2 * BLOCK); // drop the builder's end blocks; more members follow
                                                 // pax path record, by hand
    let pax_path = format!("{long_dir}/{}", "p".repeat(130));
    let body = format!(" path={pax_path}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    let record = format!("{len}{body}");
    archive.extend(raw_header(
        b"PaxHeaders/x",
        b'x',
        record.len() as u64,
        b"",
        0o600,
    ));
    archive.extend(record.as_bytes());
    archive.resize(archive.len() + (BLOCK - record.len() % BLOCK) % BLOCK, 0);
    archive.extend(raw_header(b"short-name", b'0', 3, b"", 0o600));
    archive.extend(b"pax");
    archive.resize(archive.len() + BLOCK - 3, 0);
    archive.extend([0u8; 2 * BLOCK]);

    let mut rec = Recorder::default();
    let mut x = ArchiveExtractor::new(&s.target, Vec::new(), Owner::current());
    x.extract(ArchiveKind::Base, &archive[..], &mut rec)
        .unwrap();
    assert_eq!(fs::read(s.target.join(&long_file)).unwrap(), b"hello");
    assert_eq!(fs::read(s.target.join(&pax_path)).unwrap(), b"pax");
    assert_eq!(rec.files[1].0, PathBuf::from(&pax_path));
    s.assert_nothing_outside();
}

/// Each hostile archive must fail with the expected error and leave the sentinel untouched.
fn refused(s: &Scratch, archive: &[u8], check: impl Fn(&ExtractError) -> bool) {
    let (r, _) = extract(&s.target, archive);
    let e = r.expect_err("hostile archive accepted");
    assert!(check(&e), "unexpected error: {e}");
    s.assert_nothing_outside();
}

#[test]
fn refuses_absolute_paths() {
    let s = Scratch::new();
    let abs = s.sentinel.join("pwned").display().to_string();
    refused(&s, &Tar::new().file(&abs, b"x", 0o600).end(), |e| {
        matches!(e, ExtractError::UnsafePath { .. }) && e.to_string().contains("absolute path")
    });
}

#[test]
fn refuses_parent_components() {
    for name in [
        "../sentinel/pwned",
        "a/../../sentinel/pwned",
        "..",
        "x/../y",
    ] {
        let s = Scratch::new();
        refused(&s, &Tar::new().file(name, b"x", 0o600).end(), |e| {
            matches!(e, ExtractError::UnsafePath { .. })
        });
        refused(&s, &Tar::new().dir(name, 0o700).end(), |e| {
            matches!(e, ExtractError::UnsafePath { .. })
        });
    }
}

#[test]
fn refuses_symlink_out_then_file_under_it() {
    let s = Scratch::new();
    let archive = Tar::new()
        .symlink("evil", &s.sentinel.display().to_string())
        .file("evil/pwned", b"x", 0o600)
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::SymlinkRefused { .. })
    });
    assert!(!s.target.join("evil").exists());
    // to /etc, the classic
    let archive = Tar::new()
        .symlink("etc", "/etc")
        .file("etc/passwd", b"x", 0o600)
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::SymlinkRefused { .. })
    });
    // a relative link that climbs out
    let archive = Tar::new()
        .dir("a", 0o700)
        .symlink("a/up", "../../sentinel")
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::SymlinkRefused { .. })
    });
}

#[test]
fn allowed_relative_link_still_cannot_be_written_through() {
    let s = Scratch::new();
    let archive = Tar::new()
        .dir("sub", 0o700)
        .symlink("inside", "sub")
        .file("inside/x", b"x", 0o600)
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::ThroughSymlink { .. })
    });
    assert!(!s.target.join("sub/x").exists());
    // a link through our own link is refused too
    let s = Scratch::new();
    let archive = Tar::new()
        .dir("sub", 0o700)
        .symlink("l1", "sub")
        .symlink("l2", "l1/x")
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::SymlinkRefused { .. })
    });
    // and a file may not replace a link the archive made
    let s = Scratch::new();
    let archive = Tar::new()
        .dir("sub", 0o700)
        .symlink("l", "sub")
        .file("l", b"x", 0o600)
        .end();
    refused(&s, &archive, |e| {
        matches!(e, ExtractError::ThroughSymlink { .. })
    });
}

#[test]
fn refuses_preexisting_symlinks_in_target() {
    // a directory on the way is a link planted before extraction
    let s = Scratch::new();
    std::os::unix::fs::symlink(&s.sentinel, s.target.join("base")).unwrap();
    refused(
        &s,
        &Tar::new().file("base/1/1259", b"x", 0o600).end(),
        |e| matches!(e, ExtractError::ThroughSymlink { .. }),
    );
    refused(&s, &Tar::new().dir("base", 0o700).end(), |e| {
        matches!(e, ExtractError::ThroughSymlink { .. })
    });
    // the file itself is a link
    let s = Scratch::new();
    std::os::unix::fs::symlink(s.sentinel.join("pwned"), s.target.join("PG_VERSION")).unwrap();
    refused(
        &s,
        &Tar::new().file("PG_VERSION", b"15\n", 0o600).end(),
        |e| matches!(e, ExtractError::ThroughSymlink { .. }),
    );
    assert!(!s.sentinel.join("pwned").exists());
}

#[test]
fn refuses_links_and_special_files() {
    let s = Scratch::new();
    fs::write(s.sentinel.join("secret"), b"s").unwrap();
    let secret = s.sentinel.join("secret").display().to_string();
    for (flag, what) in [
        (b'1', "hard link"),
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "FIFO"),
        (b'S', "unsupported type 'S'"),
    ] {
        let archive = Tar::new().member("x", flag, &secret).end();
        let (r, _) = extract(&s.target, &archive);
        let e = r.unwrap_err();
        assert!(
            matches!(e, ExtractError::UnsupportedMember { .. }) && e.to_string().contains(what),
            "{e}"
        );
        assert!(!s.target.join("x").exists());
    }
    assert_eq!(fs::read(s.sentinel.join("secret")).unwrap(), b"s");
}

#[test]
fn tablespaces_land_in_mapped_directories() {
    let s = Scratch::new();
    let mapped = s.dir.path().join("mapped_ts");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("/srv/pg/ts1={}", mapped.display()))
        .unwrap();
    let prepared = prepare_tablespace_dirs(
        &s.target,
        &[TablespaceLocation {
            oid: 16384,
            location: "/srv/pg/ts1".into(),
        }],
        &mapping,
        Owner::current(),
        0o700,
    )
    .unwrap();
    let mut x = ArchiveExtractor::new(&s.target, prepared, Owner::current());
    let mut sums = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
    // PG <= 14 sends tablespaces first, base last
    let ts_archive = Tar::new()
        .dir("PG_15_202209061", 0o700)
        .dir("PG_15_202209061/5", 0o700)
        .file("PG_15_202209061/5/16385", b"rows", 0o600)
        .unterminated();
    x.extract(ArchiveKind::Tablespace(16384), &ts_archive[..], &mut sums)
        .unwrap();
    let base = Tar::new()
        .dir("pg_tblspc", 0o700)
        .symlink("pg_tblspc/16384", "/srv/pg/ts1/")
        .file("PG_VERSION", b"15\n", 0o600)
        .end();
    x.extract(ArchiveKind::Base, &base[..], &mut sums).unwrap();

    assert_eq!(
        fs::read(mapped.join("PG_15_202209061/5/16385")).unwrap(),
        b"rows"
    );
    assert_eq!(
        fs::read_link(s.target.join("pg_tblspc/16384")).unwrap(),
        mapped
    );
    // the manifest names tablespace files under pg_tblspc/<oid>/
    assert!(sums
        .files()
        .contains_key(Path::new("pg_tblspc/16384/PG_15_202209061/5/16385")));
    assert!(sums.files().contains_key(Path::new("PG_VERSION")));
    assert!(x.written().dirs().contains(&mapped));
    s.assert_nothing_outside_but(&["mapped_ts"]);
}

#[test]
fn tablespace_links_must_match_the_announced_tablespaces() {
    let s = Scratch::new();
    let mapped = s.dir.path().join("ts");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("/srv/ts={}", mapped.display()))
        .unwrap();
    let prepared = prepare_tablespace_dirs(
        &s.target,
        &[TablespaceLocation {
            oid: 16384,
            location: "/srv/ts".into(),
        }],
        &mapping,
        Owner::current(),
        0o700,
    )
    .unwrap();
    let run = |archive: &[u8], kind: ArchiveKind| {
        let mut x = ArchiveExtractor::new(&s.target, prepared.clone(), Owner::current());
        x.extract(kind, archive, &mut ()).unwrap_err()
    };
    // unannounced tablespace pointing at the sentinel
    let sentinel = s.sentinel.display().to_string();
    let e = run(
        &Tar::new().symlink("pg_tblspc/99999", &sentinel).end(),
        ArchiveKind::Base,
    );
    assert!(
        matches!(e, ExtractError::UnknownTablespaceLink { .. }),
        "{e}"
    );
    // announced oid, different location
    let e = run(
        &Tar::new().symlink("pg_tblspc/16384", &sentinel).end(),
        ArchiveKind::Base,
    );
    assert!(
        matches!(e, ExtractError::TablespaceLinkMismatch { .. }),
        "{e}"
    );
    // the base archive may not write into a tablespace through its link
    let e = run(
        &Tar::new()
            .symlink("pg_tblspc/16384", "/srv/ts")
            .file("pg_tblspc/16384/evil", b"x", 0o600)
            .end(),
        ArchiveKind::Base,
    );
    assert!(matches!(e, ExtractError::ThroughSymlink { .. }), "{e}");
    assert!(!mapped.join("evil").exists());
    // an archive for a tablespace nobody announced
    let e = run(&Tar::new().end(), ArchiveKind::Tablespace(4242));
    assert!(matches!(e, ExtractError::UnknownTablespace(4242)), "{e}");
    // inside a tablespace archive pg_tblspc/<oid> is nothing special: absolute links are refused
    let e = run(
        &Tar::new().symlink("pg_tblspc/16384", &sentinel).end(),
        ArchiveKind::Tablespace(16384),
    );
    assert!(matches!(e, ExtractError::SymlinkRefused { .. }), "{e}");
    s.assert_nothing_outside_but(&["ts"]);
}

#[test]
fn existing_directories_are_reused_and_files_replace_files() {
    let s = Scratch::new();
    // pg_wal/archive_status exists already: the WAL receiver created it first
    fs::create_dir_all(s.target.join("pg_wal/archive_status")).unwrap();
    fs::write(s.target.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
    let archive = Tar::new()
        .dir("pg_wal", 0o700)
        .dir("./pg_wal/archive_status", 0o700)
        .file("dup", b"first", 0o600)
        .file("dup", b"second", 0o600)
        .end();
    let (r, _) = extract(&s.target, &archive);
    r.unwrap();
    assert_eq!(fs::read(s.target.join("dup")).unwrap(), b"second");
    assert_eq!(
        fs::read(s.target.join("pg_wal/000000010000000000000001")).unwrap(),
        b"wal"
    );
    // a file where the archive wants a directory, and a directory where it wants a file
    let archive = Tar::new().file("d/x", b"x", 0o600).end();
    fs::write(s.target.join("d"), b"file").unwrap();
    let (r, _) = extract(&s.target, &archive);
    assert!(matches!(r, Err(ExtractError::NotADirectory(_))), "{r:?}");
    let (r, _) = extract(&s.target, &Tar::new().file("pg_wal", b"x", 0o600).end());
    assert!(matches!(r, Err(ExtractError::Exists(_))), "{r:?}");
    s.assert_nothing_outside();
}

#[test]
fn restrictive_directory_modes_apply_after_contents() {
    let s = Scratch::new();
    let archive = Tar::new()
        .dir("ro", 0o500)
        .file("ro/f", b"x", 0o400)
        .dir("sticky", 0o1777)
        .file("setuid", b"x", 0o4755)
        .end();
    let (r, _) = extract(&s.target, &archive);
    r.unwrap();
    assert_eq!(fs::read(s.target.join("ro/f")).unwrap(), b"x");
    assert_eq!(mode_of(&s.target.join("ro")), 0o500);
    assert_eq!(mode_of(&s.target.join("ro/f")), 0o400);
    // never setuid/setgid/sticky from the network
    assert_eq!(mode_of(&s.target.join("sticky")), 0o777);
    assert_eq!(mode_of(&s.target.join("setuid")), 0o755);
    fs::set_permissions(s.target.join("ro"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn owner_is_applied_when_running_as_root() {
    let s = Scratch::new();
    let probe = s.dir.path().join("probe");
    fs::write(&probe, b"").unwrap();
    let running_as_root = fs::metadata(&probe).unwrap().uid() == 0;
    fs::remove_file(&probe).unwrap();
    if !running_as_root {
        eprintln!("not root: chown cannot be tested");
        return;
    }
    let archive = Tar::new()
        .dir("d", 0o700)
        .file("d/f", b"x", 0o600)
        .symlink("l", "d")
        .end();
    let mut x = ArchiveExtractor::new(&s.target, Vec::new(), Owner::ids(4321, 4322));
    x.extract(ArchiveKind::Base, &archive[..], &mut ()).unwrap();
    for p in ["d", "d/f", "l"] {
        let m = fs::symlink_metadata(s.target.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p}");
    }
}

#[test]
fn trailing_garbage_after_end_marker_is_refused() {
    let s = Scratch::new();
    let mut archive = Tar::new().file("a", b"1", 0o600).end();
    archive.extend(raw_header(b"b", b'0', 0, b"", 0o600));
    let (r, _) = extract(&s.target, &archive);
    assert!(
        matches!(r, Err(ExtractError::Tar(TarError::TrailingGarbage { .. }))),
        "{r:?}"
    );
}

impl Scratch {
    fn assert_nothing_outside_but(&self, allowed: &[&str]) {
        let inside: Vec<_> = fs::read_dir(&self.sentinel).unwrap().collect();
        assert!(inside.is_empty(), "sentinel written: {inside:?}");
        for e in fs::read_dir(self.dir.path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                name == "sentinel" || name == "target" || allowed.contains(&name.as_str()),
                "unexpected {name}"
            );
        }
    }
}

#[test]
fn non_empty_tablespace_map_needs_permission() {
    let s = Scratch::new();
    let map = format!("16384 {}\n", s.sentinel.display());
    let archive = Tar::new()
        .file("tablespace_map", map.as_bytes(), 0o600)
        .end();
    let (r, _) = extract(&s.target, &archive);
    assert!(matches!(r, Err(ExtractError::TablespaceMap)), "{r:?}");
    assert!(!s.target.join("tablespace_map").exists());
    // empty (pg_basebackup -Ft without tablespaces) is harmless
    let (r, _) = extract(
        &s.target,
        &Tar::new().file("tablespace_map", b"", 0o600).end(),
    );
    r.unwrap();
    // and allowed explicitly
    let s = Scratch::new();
    let mut x =
        ArchiveExtractor::new(&s.target, Vec::new(), Owner::current()).allow_tablespace_map(true);
    x.extract(ArchiveKind::Base, &archive[..], &mut ()).unwrap();
    assert_eq!(
        fs::read(s.target.join("tablespace_map")).unwrap(),
        map.as_bytes()
    );
}

/// A bootstrap killed after the base archive but before its standby configuration must not
/// leave a directory that starts (as a primary): `global/pg_control` is held under another
/// name until the caller releases it, and the path recorded for fsync is the final one.
#[test]
fn pg_control_is_held_until_released() {
    let s = Scratch::new();
    let archive = Tar::new()
        .dir("global", 0o700)
        .file("global/pg_control", &[7u8; 8192], 0o600)
        .file("PG_VERSION", b"15\n", 0o600)
        .end();
    let mut x = ArchiveExtractor::new(&s.target, Vec::new(), Owner::current()).hold_control_file();
    x.extract(ArchiveKind::Base, &archive[..], &mut ()).unwrap();
    let control = s.target.join("global/pg_control");
    assert!(!control.exists(), "pg_control in place before the release");
    assert_eq!(
        fs::read(s.target.join(walrelay_basebackup::HELD_CONTROL_FILE)).unwrap(),
        vec![7u8; 8192]
    );
    assert!(
        x.written().files().iter().any(|f| f == &control),
        "fsync list lacks pg_control"
    );
    walrelay_basebackup::release_control_file(&s.target).unwrap();
    assert_eq!(fs::read(&control).unwrap(), vec![7u8; 8192]);
    assert!(!s
        .target
        .join(walrelay_basebackup::HELD_CONTROL_FILE)
        .exists());
    assert_eq!(mode_of(&control), 0o600);
    // Released twice (nothing held): no error.
    walrelay_basebackup::release_control_file(&s.target).unwrap();
}
