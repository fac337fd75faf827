//! Against a real PostgreSQL 15, with PostgreSQL's own tools as oracles:
//! * `pg_basebackup -Ft` output extracted by walrelay verifies against its own manifest (checksums
//!   computed during extraction), for CRC-32C and SHA-256, and a damaged byte is caught;
//! * `pg_verifybackup` accepts the directory walrelay extracted from a `-Ft -X fetch` backup;
//! * a standby configured by walrelay starts and replicates: streaming, and as a sidecar fed only
//!   by segment files copied into its `pg_wal`;
//! * tablespaces land in their mapped directories and verify.
//!
//! Clusters come from walrelay-testkit: Debian's PostgreSQL 15 (its `pg_basebackup` and
//! `pg_verifybackup` are the oracles), installed by `scripts/install-pg.sh` if missing. Where it
//! cannot be had the tests are skipped, except under CI (`CI` set), where that is a failure.

// Test-only file: helpers outside #[test] functions panic on setup failure by design.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use walrelay_basebackup::{
    prepare_tablespace_dirs, store_manifest, write_standby_config, ArchiveExtractor, ArchiveKind,
    BackupManifest, ChecksumAlgorithm, ChecksumCollector, ExtractError, StandbyConfig, StandbyMode,
    TablespaceLocation, TablespaceMapping, DEFAULT_SIDECAR_RETRY_INTERVAL,
};
use walrelay_durable::Owner;
use walrelay_protocol::{SegmentId, WalFileName, WalSegmentSize};
use walrelay_testkit::install::DEBIAN_MAJOR;
use walrelay_testkit::{
    pg_verifybackup, poll, server_user_ids, Cluster, PgInstall, VerifyBackupOptions,
};

/// A PostgreSQL 15 primary, or `None` (with a message) where PostgreSQL 15 cannot be installed
/// outside CI.
fn primary(name: &str) -> Option<Cluster> {
    let install = match PgInstall::for_major(DEBIAN_MAJOR) {
        Ok(install) => install,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL 15 is needed: {e}"
            );
            eprintln!("skipping: no PostgreSQL 15 ({e})");
            return None;
        }
    };
    Some(
        Cluster::builder()
            .name(name)
            .install(install)
            .fsync(false)
            .start(),
    )
}

/// Who must own what walrelay extracts for a server: the server user's ids when we are root.
fn owner() -> Owner {
    match server_user_ids().unwrap() {
        Some((uid, gid)) => Owner::ids(uid, gid),
        None => Owner::current(),
    }
}

/// An empty directory (mode 0700, owned by the server user) in the cluster's scratch space, for
/// extraction targets.
fn make_dir(c: &Cluster, name: &str) -> PathBuf {
    let p = c.scratch_path(name);
    fs::create_dir(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    owner().apply(&p).unwrap();
    p
}

/// `pg_basebackup -Ft -c fast` with `extra` options into a new scratch directory.
fn basebackup(c: &Cluster, extra: &[&str]) -> PathBuf {
    let mut args = vec!["-Ft", "-c", "fast"];
    args.extend_from_slice(extra);
    c.pg_basebackup(&args)
}

/// The primary's connection string as a standby's `primary_conninfo`, under a name
/// `pg_stat_replication` shows.
fn standby_conninfo(c: &Cluster) -> String {
    format!("{} application_name=walrelay_test", c.conninfo())
}

/// Extracts `bk/base.tar` (and tablespace archives) into `target` through walrelay, computing
/// `alg` checksums on the way; returns the collector.
fn extract_backup(
    bk: &Path,
    alg: ChecksumAlgorithm,
    mut x: ArchiveExtractor,
    tablespaces: &[(u32, &str)],
) -> (
    Result<(), ExtractError>,
    ChecksumCollector,
    ArchiveExtractor,
) {
    let mut sums = ChecksumCollector::new(&[alg]);
    for (oid, _) in tablespaces {
        let f = fs::File::open(bk.join(format!("{oid}.tar"))).unwrap();
        if let Err(e) = x.extract(ArchiveKind::Tablespace(*oid), f, &mut sums) {
            return (Err(e), sums, x);
        }
    }
    let f = fs::File::open(bk.join("base.tar")).unwrap();
    let r = x.extract(ArchiveKind::Base, f, &mut sums).map(|_| ());
    (r, sums, x)
}

fn wal_segments_in(dir: &Path) -> Vec<SegmentId> {
    let seg = WalSegmentSize::default();
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            WalFileName::parse(&name)?.segment_id(seg)
        })
        .collect()
}

#[test]
fn pg_basebackup_tar_output_verifies_and_pg_verifybackup_accepts_it() {
    let Some(c) = primary("bb-tar") else { return };
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");

    let mut crc32c_backup = None;
    for (alg, name) in [
        (ChecksumAlgorithm::Crc32c, "CRC32C"),
        (ChecksumAlgorithm::Sha256, "SHA256"),
    ] {
        let bk = basebackup(
            &c,
            &["-X", "fetch", &format!("--manifest-checksums={name}")],
        );
        let target = make_dir(&c, &format!("ext_{name}"));
        let x = ArchiveExtractor::new(&target, Vec::new(), owner());
        let progress = x.progress();
        let (r, sums, x) = extract_backup(&bk, alg, x, &[]);
        r.unwrap();
        assert_eq!(
            progress.bytes(),
            fs::metadata(bk.join("base.tar")).unwrap().len()
        );

        // walrelay's own verification, from checksums computed while extracting
        let text = fs::read(bk.join("backup_manifest")).unwrap();
        let manifest = BackupManifest::parse(&text).unwrap();
        let summary = manifest.verify_files(&sums, &[]).unwrap();
        assert!(summary.files > 900, "{summary:?}");
        assert_eq!(summary.files, summary.checksums_verified);
        manifest
            .verify_wal_ranges(
                &wal_segments_in(&target.join("pg_wal")),
                WalSegmentSize::default(),
            )
            .unwrap();
        store_manifest(&target, &text, 0o600, owner()).unwrap();
        x.into_written().sync_all(4).unwrap();

        // the oracle: PostgreSQL's own verifier, including its pg_waldump pass over the WAL
        let out = pg_verifybackup(&target, &VerifyBackupOptions::default()).unwrap();
        assert!(out.contains("backup successfully verified"), "{out}");
        if alg == ChecksumAlgorithm::Crc32c {
            crc32c_backup = Some(bk);
        }
    }

    // A damaged byte in the stream is caught by walrelay's verification.
    let bk = crc32c_backup.unwrap();
    let mut tar = fs::read(bk.join("base.tar")).unwrap();
    let header = tar
        .chunks(512)
        .position(|b| b.starts_with(b"PG_VERSION\0"))
        .unwrap();
    tar[(header + 1) * 512] ^= 0x01; // first data byte of PG_VERSION
    let damaged = make_dir(&c, "damaged");
    fs::write(damaged.join("base.tar"), &tar).unwrap();
    let target = make_dir(&c, "ext_damaged");
    let x = ArchiveExtractor::new(&target, Vec::new(), owner());
    let (r, sums, _) = extract_backup(&damaged, ChecksumAlgorithm::Crc32c, x, &[]);
    r.unwrap();
    let manifest = BackupManifest::parse(&fs::read(bk.join("backup_manifest")).unwrap()).unwrap();
    let e = manifest.verify_files(&sums, &[]).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.to_string()
            .contains("checksum mismatch for file \"PG_VERSION\""),
        "{e}"
    );
    drop(c);
}

/// Extracts a fresh `-X fetch` backup and returns the target, ready to be started as a standby
/// (the testkit gives it its own port and socket directory).
fn extracted_copy(c: &Cluster, name: &str) -> PathBuf {
    let bk = basebackup(c, &["-X", "fetch"]);
    let target = make_dir(c, name);
    let x = ArchiveExtractor::new(&target, Vec::new(), owner());
    let (r, _, x) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[]);
    r.unwrap();
    x.into_written().sync_all(2).unwrap();
    target
}

/// Polls until `standby` answers `sql` with `want`; on timeout fails with the standby's log.
fn wait_for_answer(standby: &Cluster, what: &str, sql: &str, want: &str) {
    poll::wait_until(
        what,
        || standby.try_psql(sql).is_ok_and(|v| v == want),
        || format!("server log:\n{}", standby.log_tail(40)),
    );
}

#[test]
fn streaming_standby_configured_by_walrelay_replicates() {
    let Some(c) = primary("bb-streaming") else {
        return;
    };
    c.psql("SELECT pg_create_physical_replication_slot('walrelay_standby')");
    let standby_dir = extracted_copy(&c, "standby");
    let config = StandbyConfig::new(
        c.major(),
        StandbyMode::Streaming {
            primary_conninfo: standby_conninfo(&c),
            slot_name: Some("walrelay_standby".into()),
        },
    )
    .unwrap();
    let written = write_standby_config(&standby_dir, &config, owner(), 0o600).unwrap();
    assert_eq!(written, ["standby.signal", "postgresql.auto.conf"]);

    let standby = c.standby(&standby_dir).start();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    c.psql("CREATE TABLE after_backup AS SELECT 42 AS answer");
    wait_for_answer(
        &standby,
        "the standby to replay",
        "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'",
        "1",
    );
    assert_eq!(standby.psql("SELECT answer FROM after_backup"), "42");
    assert_eq!(
        c.psql("SELECT application_name || ' ' || state FROM pg_stat_replication"),
        "walrelay_test streaming"
    );
    assert_eq!(
        c.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay_standby'"),
        "t"
    );
}

#[test]
fn sidecar_standby_replays_segments_dropped_into_pg_wal() {
    let Some(c) = primary("bb-sidecar") else {
        return;
    };
    let standby_dir = extracted_copy(&c, "sidecar");
    let config = StandbyConfig::new(
        c.major(),
        StandbyMode::Sidecar {
            wal_retrieve_retry_interval: DEFAULT_SIDECAR_RETRY_INTERVAL,
        },
    )
    .unwrap();
    write_standby_config(&standby_dir, &config, owner(), 0o600).unwrap();
    let standby = c.standby(&standby_dir).start();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    // no replication connection of its own
    assert_eq!(c.psql("SELECT count(*) FROM pg_stat_replication"), "0");

    c.psql("CREATE TABLE fed_by_files AS SELECT 7 AS n");
    // pg_switch_wal() flushes the switch record and the padding to the end of the segment; its
    // result is the end of that segment, which pg_walfile_name() maps to the segment itself.
    let last_complete = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    // Act as the sidecar: put every completed segment into the standby's pg_wal, atomically. The
    // backup's own copy of its last segment was taken mid-segment, so it is replaced too.
    let primary_wal = c.pg_wal_dir();
    let standby_wal = standby.pg_wal_dir();
    for e in fs::read_dir(&primary_wal).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name <= last_complete {
            let tmp = standby_wal.join(format!("{name}.tmp"));
            fs::copy(primary_wal.join(&name), &tmp).unwrap();
            owner().apply(&tmp).unwrap();
            fs::rename(&tmp, standby_wal.join(&name)).unwrap();
        }
    }
    wait_for_answer(
        &standby,
        "the sidecar-fed standby to replay",
        "SELECT count(*) FROM pg_class WHERE relname = 'fed_by_files'",
        "1",
    );
    assert_eq!(standby.psql("SELECT n FROM fed_by_files"), "7");
}

#[test]
fn tablespaces_extract_to_mapped_directories_and_verify() {
    let Some(c) = primary("bb-tablespace") else {
        return;
    };
    c.create_tablespace("ts");
    c.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g");
    let row = c.psql(
        "SELECT oid || ' ' || pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'",
    );
    let (oid, location) = row.split_once(' ').unwrap();
    let oid: u32 = oid.parse().unwrap();

    let bk = basebackup(&c, &["-X", "fetch"]);
    assert!(bk.join(format!("{oid}.tar")).exists());

    let target = make_dir(&c, "ext_ts");
    let mapped = c.scratch_path("ts_mapped");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("{location}={}", mapped.display()))
        .unwrap();
    let tablespaces = [TablespaceLocation {
        oid,
        location: location.to_string(),
    }];
    let prepared =
        prepare_tablespace_dirs(&target, &tablespaces, &mapping, owner(), 0o700).unwrap();
    assert_eq!(prepared[0].target, mapped);

    // pg_basebackup -Ft asks for TABLESPACE_MAP: refused by default...
    let x = ArchiveExtractor::new(&target, prepared.clone(), owner());
    let (r, _, _) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[(oid, location)]);
    assert!(matches!(r, Err(ExtractError::TablespaceMap)), "{r:?}");

    // ...and accepted when allowed; the tablespace's files land in the mapped directory.
    let target = make_dir(&c, "ext_ts2");
    let mapped = c.scratch_path("ts_mapped2");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("{location}={}", mapped.display()))
        .unwrap();
    let prepared =
        prepare_tablespace_dirs(&target, &tablespaces, &mapping, owner(), 0o700).unwrap();
    let x = ArchiveExtractor::new(&target, prepared, owner()).allow_tablespace_map(true);
    let (r, sums, _) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[(oid, location)]);
    r.unwrap();
    let manifest = BackupManifest::parse(&fs::read(bk.join("backup_manifest")).unwrap()).unwrap();
    let summary = manifest.verify_files(&sums, &[]).unwrap();
    let ts_files = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with(format!("pg_tblspc/{oid}")))
        .count();
    assert!(ts_files > 0);
    assert_eq!(summary.files, summary.checksums_verified);
    let version_dir: Vec<String> = fs::read_dir(&mapped)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(version_dir.len(), 1);
    assert!(
        version_dir[0].starts_with(&format!("PG_{}_", c.major())),
        "{version_dir:?}"
    );
    let mut buf = Vec::new();
    fs::File::open(target.join("tablespace_map"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with(&format!("{oid} ")));
}
