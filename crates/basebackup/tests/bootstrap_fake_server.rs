//! `bootstrap` against the scripted fake server (`walrelay_testkit::FakeWalsender`): both message flows
//! (PostgreSQL 15+ single COPY, and one COPY per tablespace before 15) byte for byte, the slot
//! probe before 15, and everything a real server will not do — hostile tar members, protocol
//! violations, a manifest that does not match, a WAL stream that dies, a stalled server with the
//! future cancelled or dropped. Also the input checks that happen before any connection.

// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Scratch;
use support::wal_standin::FailingStreamer;
use walrelay_basebackup::{
    bootstrap, BackupError, BackupProgress, BootstrapConfig, BootstrapError, BootstrapSummary,
    ExtractError, StandbySetup, WalMethod, WalStreamer,
};
use walrelay_client::ReplicationMode;
use walrelay_conninfo::{ConnectionConfig, MapEnv};
use walrelay_protocol::command::CheckpointMode;
use walrelay_testkit::fake_backup::{
    backup_manifest, legacy_steps, pg15_archive_steps, pg15_steps, preamble, trailer,
};
use walrelay_testkit::tar_builder::Tar;
use walrelay_testkit::wire::{
    archive_data, copy_data, copy_done, copy_out_response, error_response, new_archive, notice,
    position, ready_for_query,
};
use walrelay_testkit::{FakeBackup, FakeWalsender, Script, Step};

const TS_LOCATION: &str = "/srv/fake/ts1";
const TS_DIR: &str = "PG_15_202209061";

fn config(port: u16, target: &Path) -> BootstrapConfig {
    let env = MapEnv::new().with_user("walrelay");
    let connection = ConnectionConfig::from_conninfo(
        &format!("host=127.0.0.1 port={port} user=rep sslmode=disable"),
        &env,
    )
    .unwrap();
    let connect =
        walrelay_client::connect_params(&connection, ReplicationMode::Physical, None).unwrap();
    let mut c = BootstrapConfig::new(connection, connect, target);
    c.wal_method = WalMethod::None;
    c.standby = StandbySetup::None;
    c.checkpoint = CheckpointMode::Fast;
    c
}

async fn run(
    c: BootstrapConfig,
    wal: Option<&dyn WalStreamer>,
) -> Result<BootstrapSummary, BootstrapError> {
    bootstrap(c, wal, &BackupProgress::new(), std::future::pending()).await
}

/// A port nothing listens on: a test that must not connect uses it.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn relfile() -> Vec<u8> {
    (0..20_000u32).map(|i| (i % 251) as u8).collect()
}

fn ts_file() -> Vec<u8> {
    vec![7u8; 9000]
}

/// The base archive of a small data directory with one tablespace link.
fn base_tar(terminated: bool) -> Vec<u8> {
    let t = Tar::new()
        .file("backup_label", b"START WAL LOCATION: 0/2000028\n", 0o600)
        .file("PG_VERSION", b"15\n", 0o600)
        .dir("base", 0o700)
        .dir("base/1", 0o700)
        .file("base/1/1259", &relfile(), 0o600)
        .dir("global", 0o700)
        .dir("pg_wal", 0o700)
        .dir("pg_wal/archive_status", 0o700)
        .dir("pg_tblspc", 0o700)
        .symlink("pg_tblspc/16384", TS_LOCATION);
    if terminated {
        t.end()
    } else {
        t.unterminated()
    }
}

fn ts_tar(terminated: bool) -> Vec<u8> {
    let t = Tar::new()
        .dir(TS_DIR, 0o700)
        .dir(&format!("{TS_DIR}/5"), 0o700)
        .file(&format!("{TS_DIR}/5/16385"), &ts_file(), 0o600);
    if terminated {
        t.end()
    } else {
        t.unterminated()
    }
}

fn good_manifest() -> Vec<u8> {
    let rel = relfile();
    let ts = ts_file();
    let ts_path = format!("pg_tblspc/16384/{TS_DIR}/5/16385");
    backup_manifest(
        &[
            ("backup_label", b"START WAL LOCATION: 0/2000028\n"),
            ("PG_VERSION", b"15\n"),
            ("base/1/1259", &rel),
            (&ts_path, &ts),
        ],
        &[(1, "0/2000028", "0/2000100")],
    )
}

fn backup(terminated: bool, with_manifest: bool) -> FakeBackup {
    FakeBackup {
        start: "0/2000028".into(),
        end: "0/2000100".into(),
        timeline: 1,
        tablespaces: vec![(16384, TS_LOCATION.into(), ts_tar(terminated))],
        base: base_tar(terminated),
        manifest: with_manifest.then(good_manifest),
    }
}

fn script(version: &str, steps: Vec<Step>) -> Script {
    Script {
        server_version: version.into(),
        base_backup: steps,
        ..Default::default()
    }
}

/// Checks the extracted data directory and tablespace.
fn assert_extracted(target: &Path, ts_target: &Path) {
    assert_eq!(fs::read(target.join("PG_VERSION")).unwrap(), b"15\n");
    assert_eq!(fs::read(target.join("base/1/1259")).unwrap(), relfile());
    assert!(target.join("pg_wal/archive_status").is_dir());
    assert_eq!(
        fs::read_link(target.join("pg_tblspc/16384")).unwrap(),
        ts_target
    );
    assert_eq!(
        fs::read(ts_target.join(TS_DIR).join("5/16385")).unwrap(),
        ts_file()
    );
}

fn empty_dir(p: &Path) -> bool {
    fs::read_dir(p).unwrap().next().is_none()
}

// ------------------------------------------------------------------ input checks

#[tokio::test]
async fn non_empty_target_is_refused_and_untouched() {
    let s = Scratch::new();
    fs::write(s.target.join("precious"), b"keep me").unwrap();
    let e = run(config(dead_port(), &s.target), None).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "directory \"{}\" exists but is not empty (it holds \"precious\"); choose an empty or new directory",
            s.target.display()
        )
    );
    assert_eq!(fs::read(s.target.join("precious")).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(&s.target).unwrap().count(), 1);
    s.assert_nothing_outside();
}

#[tokio::test]
async fn usage_errors_come_before_connecting_or_creating() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("new");

    let mut c = config(dead_port(), &target);
    c.tablespace_mappings = vec!["/srv/ts1".into()];
    let e = run(c, None).await.unwrap_err();
    assert!(matches!(e, BootstrapError::Mapping(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid tablespace mapping format \"/srv/ts1\", must be \"OLDDIR=NEWDIR\""
    );

    let mut c = config(dead_port(), &target);
    c.tablespace_mappings = vec!["relative=/x".into()];
    assert!(run(c, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("old directory is not an absolute path"));

    let mut c = config(dead_port(), &target);
    c.create_slot = true;
    let e = run(c, None).await.unwrap_err();
    assert!(matches!(e, BootstrapError::CreateSlotWithoutName), "{e}");
    assert!(e.to_string().contains("--slot NAME"));

    let mut c = config(dead_port(), &target);
    c.max_rate_kb = Some(2_000_000);
    assert!(run(c, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("out of range"));

    let mut c = config(dead_port(), &target);
    c.wal_method = WalMethod::Stream;
    assert!(matches!(
        run(c, None).await.unwrap_err(),
        BootstrapError::NoWalStreamer
    ));

    assert!(!target.exists(), "nothing may be created for a usage error");

    // A connection failure after the target was created removes it again.
    let e = run(config(dead_port(), &target), None).await.unwrap_err();
    assert!(matches!(e, BootstrapError::Connect(_)), "{e}");
    assert!(!target.exists());
}

#[tokio::test]
async fn unsupported_server_versions_are_named() {
    for (version, shown) in [("9.6.24", "9.6.24"), ("19devel", "19devel")] {
        let server = FakeWalsender::start(script(version, vec![]));
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("data");
        let e = run(config(server.port(), &target), None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the server runs PostgreSQL {shown}, which walrelay does not support: use a primary running PostgreSQL 10 to 18")
        );
        assert!(
            server.queries().is_empty(),
            "nothing sent to an unsupported server"
        );
        assert!(!target.exists());
    }
}

// ------------------------------------------------------------------ the two flows

/// Runs a successful bootstrap against `steps`; returns the BASE_BACKUP command the server got.
async fn happy_path(version: &str, steps: Vec<Step>, expect_manifest: bool) -> String {
    let server = FakeWalsender::start(script(version, steps));
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    let ts_target = d.path().join("ts1");
    let mut c = config(server.port(), &target);
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", ts_target.display())];
    c.standby = StandbySetup::Streaming;
    let progress = BackupProgress::new();
    let summary = bootstrap(c, None, &progress, std::future::pending())
        .await
        .unwrap();
    assert_extracted(&target, &ts_target);
    // 'p' messages (15+) or archive bytes (before 15): all archive bytes were done
    let archive_bytes = (ts_tar(version.starts_with("15")).len()
        + base_tar(version.starts_with("15")).len()) as u64;
    assert_eq!(progress.done_bytes(), archive_bytes);
    assert!(progress.total_bytes().is_some());
    assert_eq!(
        progress.received_bytes(),
        summary.bytes_received,
        "every CopyData byte is counted"
    );
    assert_eq!(summary.start.lsn.to_string(), "0/2000028");
    assert_eq!(summary.end.lsn.to_string(), "0/2000100");
    assert_eq!(summary.tablespaces[0].target, ts_target);
    assert_eq!(summary.manifest_stored, expect_manifest);
    if expect_manifest {
        assert_eq!(
            fs::read(target.join("backup_manifest")).unwrap(),
            good_manifest()
        );
        let v = summary.verified.unwrap();
        assert_eq!((v.files, v.checksums_verified), (4, 4));
    } else {
        assert!(!target.join("backup_manifest").exists());
    }
    assert!(target.join("standby.signal").is_file());
    let auto = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!(
            "primary_conninfo = 'user=rep host=127.0.0.1 port={} sslmode=disable'",
            server.port()
        )),
        "{auto}"
    );
    let queries = server.queries();
    queries
        .into_iter()
        .find(|q| q.starts_with("BASE_BACKUP"))
        .unwrap()
}

#[tokio::test]
async fn pg15_flow_extracts_verifies_and_stores_the_manifest_last() {
    let b = backup(true, true);
    let bb = happy_path("15.4", pg15_steps(&b), true).await;
    assert!(
        bb.starts_with("BASE_BACKUP (LABEL 'walrelay bootstrap', PROGRESS, CHECKPOINT 'fast'"),
        "{bb}"
    );
    assert!(
        bb.contains("MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TARGET 'client')"),
        "{bb}"
    );
    // -X none: the server waits for archiving, as with pg_basebackup -X none
    assert!(!bb.contains("WAIT 0"), "{bb}");
}

#[tokio::test]
async fn pg14_flow_one_copy_per_tablespace_then_manifest() {
    let b = backup(false, true);
    let bb = happy_path("14.9", legacy_steps(&b), true).await;
    assert!(
        bb.starts_with("BASE_BACKUP LABEL 'walrelay bootstrap' PROGRESS FAST MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"),
        "{bb}"
    );
}

#[tokio::test]
async fn pg12_flow_has_no_manifest() {
    let b = backup(false, false);
    happy_path("12.18", legacy_steps(&b), false).await;
}

#[tokio::test]
async fn fetch_without_manifest_checks_the_wal_range_itself() {
    // 1 MB segments; the backup's WAL lies in segment 1 of timeline 1.
    let segment = vec![0u8; 1024 * 1024];
    let base = |with_wal: bool| {
        let mut t = Tar::new()
            .file("PG_VERSION", b"12\n", 0o600)
            .dir("pg_wal", 0o700)
            .dir("pg_wal/archive_status", 0o700);
        if with_wal {
            t = t.file("pg_wal/000000010000000000000001", &segment, 0o600);
        }
        t.unterminated()
    };
    for with_wal in [true, false] {
        let b = FakeBackup {
            start: "0/100028".into(),
            end: "0/100100".into(),
            timeline: 1,
            tablespaces: vec![],
            base: base(with_wal),
            manifest: None,
        };
        let mut s = script("12.18", legacy_steps(&b));
        s.wal_segment_size = "1MB".into();
        let server = FakeWalsender::start(s);
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("data");
        let mut c = config(server.port(), &target);
        c.wal_method = WalMethod::Fetch;
        let r = run(c, None).await;
        let bb = server
            .queries()
            .into_iter()
            .find(|q| q.starts_with("BASE_BACKUP"))
            .unwrap();
        assert!(bb.contains(" WAL ") && bb.contains("NOWAIT"), "{bb}");
        if with_wal {
            let summary = r.unwrap();
            assert_eq!(summary.wal_segments, 1);
        } else {
            let e = r.unwrap_err();
            assert!(matches!(e, BootstrapError::WalMissing(_)), "{e}");
            assert!(e.to_string().contains("000000010000000000000001"), "{e}");
            assert!(!target.exists());
        }
    }
}

// ------------------------------------------------------------------ slots

#[tokio::test]
async fn slot_probe_before_15_uses_start_replication() {
    let b = backup(false, true);
    let mut s = script("14.9", legacy_steps(&b));
    s.slots = vec!["exists".into()];
    let server = FakeWalsender::start(s);
    let d = tempfile::tempdir().unwrap();

    let mut c = config(server.port(), &d.path().join("a"));
    c.slot = Some("exists".into());
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    run(c, None).await.unwrap();
    assert!(server
        .queries()
        .contains(&"START_REPLICATION SLOT \"exists\" 0/3000000 TIMELINE 1".to_string()));

    let mut c = config(server.port(), &d.path().join("b"));
    c.slot = Some("missing".into());
    let e = run(c, None).await.unwrap_err();
    assert!(matches!(e, BootstrapError::SlotNotFound(_)), "{e}");
    assert!(!d.path().join("b").exists());
}

#[tokio::test]
async fn slot_check_on_15_reads_the_slot_and_create_refuses_existing() {
    let b = backup(true, true);
    let mut s = script("15.4", pg15_steps(&b));
    s.slots = vec!["exists".into()];
    let server = FakeWalsender::start(s);
    let d = tempfile::tempdir().unwrap();

    let mut c = config(server.port(), &d.path().join("a"));
    c.slot = Some("missing".into());
    assert!(matches!(
        run(c, None).await.unwrap_err(),
        BootstrapError::SlotNotFound(_)
    ));
    let mut c = config(server.port(), &d.path().join("b"));
    c.slot = Some("exists".into());
    c.create_slot = true;
    assert!(matches!(
        run(c, None).await.unwrap_err(),
        BootstrapError::SlotExists(_)
    ));
    let q = server.queries();
    assert!(q.contains(&"READ_REPLICATION_SLOT \"missing\"".to_string()));
    assert!(
        !q.iter().any(|q| q.starts_with("DROP_REPLICATION_SLOT")),
        "a slot that existed before is never dropped: {q:?}"
    );
    assert!(!q.iter().any(|q| q.starts_with("BASE_BACKUP")));
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn created_slot_is_dropped_when_the_backup_fails() {
    let b = backup(true, true);
    let mut steps = preamble(&b);
    steps.push(Step::Send(error_response(
        "ERROR",
        "58P01",
        "could not open file \"base/1/1259\": No such file or directory",
    )));
    steps.push(Step::Send(ready_for_query()));
    let server = FakeWalsender::start(script("15.4", steps));
    let d = tempfile::tempdir().unwrap();
    let mut c = config(server.port(), &d.path().join("data"));
    c.slot = Some("fresh".into());
    c.create_slot = true;
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    let e = run(c, None).await.unwrap_err();
    assert!(e.to_string().contains("could not open file"), "{e}");
    let q = server.queries();
    assert!(q.contains(&"CREATE_REPLICATION_SLOT \"fresh\" PHYSICAL (RESERVE_WAL)".to_string()));
    assert!(
        q.contains(&"DROP_REPLICATION_SLOT \"fresh\"".to_string()),
        "{q:?}"
    );
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}

// ------------------------------------------------------------------ hostile archives

async fn hostile(base: Vec<u8>, check: impl Fn(&BootstrapError) -> bool) {
    let b = FakeBackup {
        start: "0/2000028".into(),
        end: "0/2000100".into(),
        timeline: 1,
        tablespaces: vec![],
        base,
        manifest: None,
    };
    let server = FakeWalsender::start(script("15.4", pg15_steps(&b)));
    let s = Scratch::new();
    let mut c = config(server.port(), &s.target);
    c.manifest_checksums = None;
    let e = run(c, None).await.unwrap_err();
    eprintln!("refused: {e}");
    assert!(check(&e), "{e}");
    s.assert_nothing_outside();
    assert!(empty_dir(&s.target), "target not cleaned");
}

fn extract_error(e: &BootstrapError) -> Option<&ExtractError> {
    match e {
        BootstrapError::Backup(BackupError::Extract(x)) => Some(x),
        _ => None,
    }
}

#[tokio::test]
async fn hostile_absolute_path() {
    let s = Scratch::new();
    let abs = format!("{}/owned", s.sentinel.display());
    hostile(
        Tar::new()
            .file("PG_VERSION", b"15\n", 0o600)
            .file(&abs, b"x", 0o600)
            .end(),
        |e| matches!(extract_error(e), Some(ExtractError::UnsafePath { .. })),
    )
    .await;
    assert!(empty_dir(&s.sentinel));
}

#[tokio::test]
async fn hostile_parent_components() {
    hostile(
        Tar::new().file("../sentinel/owned", b"x", 0o600).end(),
        |e| matches!(extract_error(e), Some(ExtractError::UnsafePath { .. })),
    )
    .await;
    hostile(
        Tar::new()
            .dir("base", 0o700)
            .file("base/../../sentinel/x", b"x", 0o600)
            .end(),
        |e| matches!(extract_error(e), Some(ExtractError::UnsafePath { .. })),
    )
    .await;
}

#[tokio::test]
async fn hostile_symlink_escape_then_file_through_it() {
    hostile(
        Tar::new()
            .symlink("escape", "../sentinel")
            .file("escape/owned", b"x", 0o600)
            .end(),
        |e| matches!(extract_error(e), Some(ExtractError::SymlinkRefused { .. })),
    )
    .await;
    let s = Scratch::new();
    hostile(
        Tar::new()
            .symlink("escape", &s.sentinel.display().to_string())
            .file("escape/owned", b"x", 0o600)
            .end(),
        |e| matches!(extract_error(e), Some(ExtractError::SymlinkRefused { .. })),
    )
    .await;
    assert!(empty_dir(&s.sentinel));
    // a link the archive may create (relative, inside) still cannot be written through
    hostile(
        Tar::new()
            .dir("a", 0o700)
            .symlink("b", "a")
            .file("b/x", b"x", 0o600)
            .end(),
        |e| matches!(extract_error(e), Some(ExtractError::ThroughSymlink { .. })),
    )
    .await;
}

#[tokio::test]
async fn hostile_hard_link_and_devices() {
    for (flag, link) in [(b'1', "PG_VERSION"), (b'3', ""), (b'4', ""), (b'6', "")] {
        hostile(
            Tar::new()
                .file("PG_VERSION", b"15\n", 0o600)
                .member("evil", flag, link)
                .end(),
            |e| {
                matches!(
                    extract_error(e),
                    Some(ExtractError::UnsupportedMember { .. })
                )
            },
        )
        .await;
    }
}

#[tokio::test]
async fn hostile_tablespace_link_elsewhere() {
    // pg_tblspc/<oid> for a tablespace the header did not announce
    hostile(
        Tar::new()
            .dir("pg_tblspc", 0o700)
            .symlink("pg_tblspc/16999", "/etc")
            .end(),
        |e| {
            matches!(
                extract_error(e),
                Some(ExtractError::UnknownTablespaceLink { .. })
            )
        },
    )
    .await;
}

// ------------------------------------------------------------------ protocol violations

async fn violation(version: &str, steps: Vec<Step>) -> BootstrapError {
    let server = FakeWalsender::start(script(version, steps));
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    let mut c = config(server.port(), &target);
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    let e = run(c, None).await.unwrap_err();
    eprintln!("{e}");
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        0,
        "target and tablespace directories removed"
    );
    e
}

fn pg15_stream(parts: &[Vec<u8>]) -> Step {
    let mut out = copy_out_response();
    for p in parts {
        out.extend(copy_data(p));
    }
    out.extend(copy_done());
    Step::Send(out)
}

#[tokio::test]
async fn protocol_violations_are_refused() {
    let b = backup(true, true);
    let with = |archives: Step| {
        let mut s = preamble(&b);
        s.push(archives);
        s.extend(trailer(&b));
        s
    };
    // an archive for a tablespace the header did not list
    let e = violation(
        "15.4",
        with(pg15_stream(&[
            new_archive("16999.tar", "/x"),
            archive_data(&ts_tar(true)),
        ])),
    )
    .await;
    assert!(
        matches!(e, BootstrapError::Backup(BackupError::Protocol(_))),
        "{e}"
    );
    // data before any archive
    let e = violation("15.4", with(pg15_stream(&[archive_data(b"xx")]))).await;
    assert!(e.to_string().contains("before any archive"), "{e}");
    // the stream ends without the base archive
    let e = violation(
        "15.4",
        with(pg15_stream(&[
            new_archive("16384.tar", TS_LOCATION),
            archive_data(&ts_tar(true)),
        ])),
    )
    .await;
    assert!(e.to_string().contains("without base.tar"), "{e}");
    // an unknown CopyData type
    let e = violation("15.4", with(pg15_stream(&[b"zzz".to_vec()]))).await;
    assert!(
        matches!(e, BootstrapError::Backup(BackupError::Protocol(_))),
        "{e}"
    );
    // a truncated archive
    let base = base_tar(true);
    let e = violation(
        "15.4",
        with(pg15_stream(&[
            new_archive("16384.tar", TS_LOCATION),
            archive_data(&ts_tar(true)),
            new_archive("base.tar", ""),
            archive_data(&base[..1000]),
            b"m".to_vec(),
            archive_data(&good_manifest()),
        ])),
    )
    .await;
    assert!(e.to_string().contains("cut off"), "{e}");
    // no manifest although one was requested
    let e = violation(
        "15.4",
        with(pg15_stream(&[
            new_archive("16384.tar", TS_LOCATION),
            archive_data(&ts_tar(true)),
            new_archive("base.tar", ""),
            archive_data(&base),
        ])),
    )
    .await;
    assert!(
        matches!(e, BootstrapError::Backup(BackupError::ManifestMissing)),
        "{e}"
    );
    // before 15: something other than CopyOutResponse where an archive should start
    let mut legacy = preamble(&b);
    legacy.push(Step::Send(position("0/1", 1)));
    let e = violation("14.9", legacy).await;
    assert!(e.to_string().contains("expected the COPY of"), "{e}");
}

#[tokio::test]
async fn manifest_mismatch_fails_verification() {
    let mut b = backup(true, false);
    let mut other = relfile();
    other[100] ^= 1;
    let ts = ts_file();
    let ts_path = format!("pg_tblspc/16384/{TS_DIR}/5/16385");
    b.manifest = Some(backup_manifest(
        &[
            ("backup_label", b"START WAL LOCATION: 0/2000028\n"),
            ("PG_VERSION", b"15\n"),
            ("base/1/1259", &other),
            (&ts_path, &ts),
            ("global/pg_control", b"missing on disk"),
        ],
        &[(1, "0/2000028", "0/2000100")],
    ));
    let e = violation("15.4", pg15_steps(&b)).await;
    match &e {
        BootstrapError::Backup(BackupError::Verify(v)) => assert_eq!(v.problems.len(), 2, "{e}"),
        other => panic!("expected a verification failure, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("checksum mismatch for file \"base/1/1259\""),
        "{msg}"
    );
    assert!(
        msg.contains("\"global/pg_control\" is present in the manifest but not on disk"),
        "{msg}"
    );

    // A manifest whose own checksum is wrong.
    let mut b = backup(true, true);
    let m = b.manifest.as_mut().unwrap();
    let i = m.windows(4).position(|w| w == b"1259").unwrap();
    m[i] = b'9';
    let e = violation("15.4", pg15_steps(&b)).await;
    assert!(
        matches!(e, BootstrapError::Backup(BackupError::Manifest(_))),
        "{e}"
    );
}

#[tokio::test]
async fn server_errors_are_classified() {
    // wal_level too low (a server that got past the connection check)
    let steps = vec![
        Step::Send(error_response(
            "ERROR",
            "55000",
            "WAL level not sufficient for making an online backup",
        )),
        Step::Send(ready_for_query()),
    ];
    let e = violation("15.4", steps).await;
    assert!(
        matches!(e, BootstrapError::Backup(BackupError::WalLevelTooLow(_))),
        "{e}"
    );

    // checksum failures reported at the end, after the end position
    let b = backup(true, true);
    let mut steps = preamble(&b);
    let mut warn = notice(
        "WARNING",
        "XX001",
        "checksum verification failed in file \"./base/1/1259\", block 1: calculated 1234 but expected 4321",
    );
    warn.extend(notice(
        "WARNING",
        "XX001",
        "file \"./base/1/1259\" has a total of 1 checksum verification failures",
    ));
    steps.push(Step::Send(warn));
    steps.extend(pg15_archive_steps(&b));
    let mut end = position(&b.end, 1);
    end.extend(error_response(
        "ERROR",
        "XX001",
        "checksum verification failure during base backup",
    ));
    end.extend(ready_for_query());
    steps.push(Step::Send(end));
    let e = violation("15.4", steps).await;
    match &e {
        BootstrapError::Backup(BackupError::ChecksumFailures(f)) => {
            assert_eq!(f.files, ["base/1/1259"]);
            assert_eq!(f.messages.len(), 2);
        }
        other => panic!("expected checksum failures, got {other}"),
    }
}

// ------------------------------------------------------------------ aborts

/// Start, header, the beginning of base.tar — then nothing more.
fn stalling_steps() -> Vec<Step> {
    let b = backup(true, true);
    let mut steps = preamble(&b);
    let base = base_tar(true);
    let mut out = copy_out_response();
    out.extend(copy_data(&new_archive("16384.tar", TS_LOCATION)));
    out.extend(copy_data(&archive_data(&ts_tar(true))));
    out.extend(copy_data(&new_archive("base.tar", "")));
    out.extend(copy_data(&archive_data(&base[..base.len() / 2])));
    steps.push(Step::Send(out));
    steps.push(Step::Stall);
    steps
}

#[tokio::test]
async fn wal_stream_failure_aborts_the_backup() {
    let server = FakeWalsender::start(script("15.4", stalling_steps()));
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    let mut c = config(server.port(), &target);
    c.wal_method = WalMethod::Stream;
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    let streamer = FailingStreamer::new(Duration::from_millis(300));
    let e = tokio::time::timeout(Duration::from_secs(20), run(c, Some(&streamer)))
        .await
        .expect("the failing stream must abort the stalled backup")
        .unwrap_err();
    assert!(matches!(e, BootstrapError::WalStreamFailed(_)), "{e}");
    assert!(
        e.to_string()
            .contains("server closed the connection unexpectedly"),
        "{e}"
    );
    assert!(
        streamer.aborted.load(Ordering::SeqCst),
        "the stream was told to stop"
    );
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    let bb = server
        .queries()
        .into_iter()
        .find(|q| q.starts_with("BASE_BACKUP"))
        .unwrap();
    assert!(
        bb.contains("WAIT 0"),
        "streaming WAL: the server must not wait for archiving: {bb}"
    );
}

#[tokio::test]
async fn cancel_future_stops_and_cleans() {
    let server = FakeWalsender::start(script("15.4", stalling_steps()));
    let d = tempfile::tempdir().unwrap();
    let mut c = config(server.port(), &d.path().join("data"));
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    let e = bootstrap(
        c,
        None,
        &BackupProgress::new(),
        tokio::time::sleep(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, BootstrapError::Cancelled), "{e}");
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_cleans_up() {
    let server = FakeWalsender::start(script("15.4", stalling_steps()));
    let s = Scratch::new();
    let ts = s.dir.path().join("ts");
    let mut c = config(server.port(), &s.target);
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", ts.display())];
    let progress = BackupProgress::new();
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        bootstrap(c, None, &progress, std::future::pending()),
    )
    .await;
    assert!(r.is_err(), "the stalled bootstrap cannot finish");
    assert!(
        progress.received_bytes() > 0,
        "data had arrived before the drop"
    );
    assert!(
        empty_dir(&s.target),
        "contents removed when the future was dropped"
    );
    assert!(
        !ts.exists(),
        "tablespace directory created for the backup removed"
    );
    s.assert_nothing_outside();
}

#[tokio::test]
async fn no_clean_keeps_the_partial_backup() {
    let b = backup(true, true);
    let mut steps = preamble(&b);
    steps.push(Step::Send(error_response(
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
    )));
    steps.push(Step::Close);
    let server = FakeWalsender::start(script("15.4", steps));
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    let mut c = config(server.port(), &target);
    c.clean_on_failure = false;
    c.tablespace_mappings = vec![format!("{TS_LOCATION}={}", d.path().join("ts").display())];
    let e = run(c, None).await.unwrap_err();
    assert!(e.to_string().contains("terminating connection"), "{e}");
    assert!(target.is_dir());
    assert!(d.path().join("ts").is_dir());
}
