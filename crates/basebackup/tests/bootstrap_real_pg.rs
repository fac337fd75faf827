//! `bootstrap` against a real PostgreSQL (15 by default; `WALRELAY_PG_MAJOR` picks another), with
//! PostgreSQL's own tools as judges:
//!
//! * fetch mode with a tablespace mapped by `-T`: `pg_verifybackup` accepts the directory, files
//!   belong to the data directory's owner, a standby started on it replays rows inserted on the
//!   primary after the backup;
//! * stream mode (with the test stand-in that copies WAL from the primary's `pg_wal`) and
//!   `--create-slot`: the standby streams from the new slot;
//! * bad input: unknown slot, existing slot with `--create-slot` (left alone), `wal_level =
//!   minimal`, a page with a wrong data checksum on the primary, the walsender killed mid-backup,
//!   Ctrl-C (the cancel future) — each a clear error, the target removed, a created slot dropped.

// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::wal_standin::CopyFromPrimaryPgWal;
use walrelay_basebackup::{
    bootstrap, BackupError, BackupPhase, BackupProgress, BootstrapConfig, BootstrapError,
    StandbySetup, WalMethod,
};
use walrelay_client::ReplicationMode;
use walrelay_conninfo::{ConnectionConfig, MapEnv};
use walrelay_protocol::command::CheckpointMode;
use walrelay_testkit::{
    assert_tree_owned_by, pg_verifybackup, server_user_ids, Cluster, VerifyBackupOptions,
};

fn config(primary: &Cluster, target: &Path) -> BootstrapConfig {
    let env = MapEnv::new().with_user("postgres");
    let connection = ConnectionConfig::from_conninfo(&primary.conninfo(), &env).unwrap();
    let connect =
        walrelay_client::connect_params(&connection, ReplicationMode::Physical, None).unwrap();
    let mut c = BootstrapConfig::new(connection, connect, target);
    c.checkpoint = CheckpointMode::Fast;
    c
}

/// pg_verifybackup on the result (PostgreSQL 13+, which sends manifests). The oracle tools are
/// Debian's 15: its pg_waldump reads only 15's WAL format (other majors skip the WAL check) and it
/// reads manifest version 1 only (17 and later write version 2: walrelay's own check, which
/// passed during the bootstrap, is all there is).
fn verify_with_pg_verifybackup(primary: &Cluster, dir: &Path) {
    if !(13..=16).contains(&primary.major()) {
        return;
    }
    let opts = VerifyBackupOptions {
        no_parse_wal: primary.major() != 15,
        ..Default::default()
    };
    let out = pg_verifybackup(dir, &opts).unwrap();
    assert!(out.contains("successfully verified"), "{out}");
}

/// The streaming standby settings as written for this major.
fn standby_settings(primary: &Cluster, dir: &Path) -> String {
    let file = if primary.major() >= 12 {
        "postgresql.auto.conf"
    } else {
        "recovery.conf"
    };
    fs::read_to_string(dir.join(file)).unwrap()
}

fn slot_exists(primary: &Cluster, slot: &str) -> bool {
    primary.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    )) == "1"
}

async fn run(
    c: BootstrapConfig,
    wal: Option<&CopyFromPrimaryPgWal>,
) -> Result<walrelay_basebackup::BootstrapSummary, BootstrapError> {
    let progress = BackupProgress::new();
    let r = bootstrap(
        c,
        wal.map(|w| w as &dyn walrelay_basebackup::WalStreamer),
        &progress,
        std::future::pending(),
    )
    .await;
    if r.is_ok() {
        assert_eq!(progress.phase(), BackupPhase::Done);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_mapped_tablespace_verifies_and_replays() {
    let primary = Cluster::builder().name("bb-fetch").start();
    let ts = primary.create_tablespace("ts1");
    primary.psql(
        "CREATE TABLE t (i int) TABLESPACE ts1; INSERT INTO t SELECT generate_series(1, 20000);
         CREATE TABLE u AS SELECT generate_series(1, 5000) AS j;",
    );
    let target = primary.scratch_path("standby");
    let ts_new = primary.scratch_path("ts1-copy");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.tablespace_mappings = vec![format!("{}={}", ts.display(), ts_new.display())];
    let summary = run(c, None).await.unwrap();
    eprintln!("{summary:#?}");

    let major = primary.major();
    assert_eq!(summary.manifest_stored, major >= 13);
    if major >= 13 {
        let verified = summary
            .verified
            .expect("manifest verified during extraction");
        assert!(verified.files > 900, "{verified:?}");
        assert_eq!(verified.files, verified.checksums_verified);
    }
    assert_eq!(summary.tablespaces.len(), 1);
    assert_eq!(summary.tablespaces[0].target, ts_new);
    assert!(summary.wal_segments >= 1);
    assert!(summary.synced.is_some());
    assert!(summary.end.lsn > summary.start.lsn);
    if major >= 12 {
        assert_eq!(
            summary.standby_files,
            ["standby.signal", "postgresql.auto.conf"]
        );
    } else {
        assert_eq!(summary.standby_files, ["recovery.conf"]);
    }
    let oid = summary.tablespaces[0].oid;
    assert_eq!(
        fs::read_link(target.join("pg_tblspc").join(oid.to_string())).unwrap(),
        ts_new
    );
    assert!(
        fs::read_dir(&ts).unwrap().count() > 0,
        "the primary's tablespace is untouched"
    );
    let auto = standby_settings(&primary, &target);
    assert!(
        auto.contains("primary_conninfo = 'user=postgres ")
            && auto.contains(&format!("host=127.0.0.1 port={}'", primary.port())),
        "{auto}"
    );
    assert_eq!(
        auto.contains("dbname=postgres"),
        major >= 17,
        "dbname only from 17: {auto}"
    );
    if let Some(ids) = server_user_ids().unwrap() {
        assert_tree_owned_by(&target, ids);
        assert_tree_owned_by(&ts_new, ids);
    }

    verify_with_pg_verifybackup(&primary, &target);

    let standby = primary.standby(&target).start();
    primary.psql("INSERT INTO t SELECT generate_series(20001, 20100)");
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "20100");
    assert_eq!(standby.psql("SELECT count(*) FROM u"), "5000");
    assert!(standby.is_in_recovery());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_created_slot_then_standby_uses_it() {
    let primary = Cluster::builder().name("bb-stream").start();
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let target = primary.scratch_path("standby");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Stream;
    c.slot = Some("bb_standby".into());
    c.create_slot = true;
    let wal = CopyFromPrimaryPgWal::new(primary.pg_wal_dir());
    let summary = run(c, Some(&wal)).await.unwrap();
    let started = wal.started.lock().unwrap().clone().unwrap();
    assert_eq!(started.slot.as_deref(), Some("bb_standby"));
    assert!(!started.create_temporary_slot);
    assert_eq!(started.start_lsn.0 % started.wal_segment_size.as_u64(), 0);
    assert!(summary.slot_created);
    assert!(summary.wal.unwrap().segments >= 1);
    assert!(slot_exists(&primary, "bb_standby"));
    let auto = standby_settings(&primary, &target);
    assert!(auto.contains("primary_slot_name = 'bb_standby'"), "{auto}");

    verify_with_pg_verifybackup(&primary, &target);

    let standby = primary.standby(&target).start();
    primary.psql("INSERT INTO t SELECT generate_series(1001, 1500)");
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "1500");
    assert_eq!(
        primary.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'bb_standby'"),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_errors_are_clear_and_leave_nothing() {
    let primary = Cluster::builder().name("bb-slots").start();
    let target = primary.scratch_path("standby");

    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.slot = Some("no_such_slot".into());
    let e = run(c, None).await.unwrap_err();
    eprintln!("unknown slot: {e}");
    assert!(matches!(e, BootstrapError::SlotNotFound(_)), "{e}");
    assert!(
        e.to_string().contains("\"no_such_slot\" does not exist"),
        "{e}"
    );
    assert!(
        !target.exists(),
        "target created by the bootstrap must be removed"
    );

    primary.psql("SELECT pg_create_physical_replication_slot('taken')");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.slot = Some("taken".into());
    c.create_slot = true;
    let e = run(c, None).await.unwrap_err();
    eprintln!("slot exists: {e}");
    assert!(matches!(e, BootstrapError::SlotExists(_)), "{e}");
    assert!(!target.exists());
    assert!(
        slot_exists(&primary, "taken"),
        "a slot we did not create is never dropped"
    );

    // An existing slot passes the check.
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.slot = Some("taken".into());
    c.standby = StandbySetup::None;
    run(c, None).await.unwrap();
    assert!(target.join("PG_VERSION").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_minimal_is_refused_with_the_fix() {
    let primary = Cluster::builder()
        .name("bb-minimal")
        .wal_level("minimal")
        .max_wal_senders(0)
        .max_replication_slots(0)
        .start();
    let target = primary.scratch_path("standby");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    let e = run(c, None).await.unwrap_err();
    eprintln!("wal_level=minimal: {e}");
    assert!(matches!(e, BootstrapError::ReplicationRefused(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("max_wal_senders") && msg.contains("wal_level = replica"),
        "{msg}"
    );
    assert!(!target.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_failure_names_the_file_and_cleans_up() {
    let mut primary = Cluster::builder()
        .name("bb-checksum")
        .data_checksums(true)
        .start();
    if primary.major() < 11 {
        eprintln!("skipping: BASE_BACKUP verifies data checksums from PostgreSQL 11");
        return;
    }
    primary.psql("CREATE TABLE damaged AS SELECT generate_series(1, 5000) AS i; CHECKPOINT;");
    let rel = primary.damage_first_page("damaged");

    let target = primary.scratch_path("standby");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    let e = run(c, None).await.unwrap_err();
    eprintln!("checksum failure: {e}");
    match &e {
        BootstrapError::Backup(BackupError::ChecksumFailures(f)) => {
            assert_eq!(f.files, std::slice::from_ref(&rel), "{e}");
            assert!(!f.messages.is_empty());
        }
        other => panic!("expected a checksum failure, got {other}"),
    }
    assert!(e.to_string().contains(&rel), "{e}");
    assert!(!target.exists());
}

/// Waits until bytes arrive, then returns.
async fn wait_transferring(progress: &BackupProgress) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !(progress.phase() == BackupPhase::Transferring && progress.received_bytes() > 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backup never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_walsender_mid_backup_is_a_clean_error() {
    let primary = Cluster::builder().name("bb-kill").start();
    let target = primary.scratch_path("standby");
    let ts = primary.create_tablespace("ts_kill");
    let ts_new = primary.scratch_path("ts-copy");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.max_rate_kb = Some(32); // about 12 minutes for a fresh cluster: it will be killed long before
    c.tablespace_mappings = vec![format!("{}={}", ts.display(), ts_new.display())];
    let progress = BackupProgress::new();
    let job = {
        let progress = progress.clone();
        tokio::spawn(async move { bootstrap(c, None, &progress, std::future::pending()).await })
    };
    wait_transferring(&progress).await;
    primary.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'",
    );
    let e = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the bootstrap noticed the kill")
        .unwrap()
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("killed walsender: {msg}");
    assert!(
        msg.contains("base backup failed while receiving data"),
        "{msg}"
    );
    assert!(
        msg.contains("terminating connection") || msg.contains("connection"),
        "{msg}"
    );
    assert!(!target.exists(), "partial backup left behind");
    assert!(
        !ts_new.exists(),
        "tablespace directory created for the backup left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_cleans_up_and_drops_the_created_slot() {
    let primary = Cluster::builder().name("bb-cancel").start();
    let target = primary.scratch_path("standby");
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.max_rate_kb = Some(32);
    c.slot = Some("cancelled".into());
    c.create_slot = true;
    let progress = BackupProgress::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let job = {
        let progress = progress.clone();
        tokio::spawn(async move {
            bootstrap(c, None, &progress, async {
                let _ = rx.await;
            })
            .await
        })
    };
    wait_transferring(&progress).await;
    assert!(slot_exists(&primary, "cancelled"));
    assert!(target.join("global").exists() || target.exists());
    tx.send(()).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, BootstrapError::Cancelled), "{e}");
    assert!(!target.exists());
    assert!(
        !slot_exists(&primary, "cancelled"),
        "the slot made for this bootstrap is dropped"
    );
}

/// The data directory owner rule, run as root: an existing empty target owned by `postgres` gives
/// `postgres` everything, even under a root-owned parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_target_owner_is_used() {
    let Some(ids) = server_user_ids().unwrap() else {
        eprintln!("skipping: not running as root");
        return;
    };
    let primary = Cluster::builder().name("bb-owner").start();
    let parent = tempfile::tempdir().unwrap(); // root-owned
    let target: PathBuf = parent.path().join("data");
    fs::create_dir(&target).unwrap();
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(ids.0)),
        Some(nix::unistd::Gid::from_raw(ids.1)),
    )
    .unwrap();
    let mut c = config(&primary, &target);
    c.wal_method = WalMethod::Fetch;
    c.sync = false;
    let summary = run(c, None).await.unwrap();
    assert!(summary.synced.is_none());
    assert_tree_owned_by(&target, ids);
}
