//! The archive in Azure Blob Storage, end to end against Azurite (Microsoft's emulator, started by
//! the testkit) and real PostgreSQL 15 — the S3 tests' job on the other API:
//!
//! * [`archives_backs_up_and_recovers_through_azure`]: `receive -D az://… --spool --compress zstd`
//!   under pgbench, killed with SIGKILL once while it uploads and restarted; a `backup` into the
//!   same container meanwhile (its tar stream uploaded while it arrives). Then: every segment is
//!   there, contiguous, decompressed byte-identical to the primary's, each with the SHA-256 stored
//!   in its metadata (Azure takes only C#-identifier metadata names: with the S3 spelling
//!   `walrelay-sha256` every upload was refused with `400 InvalidMetadata`); `verify
//!   --require-checksums` on the container passes; a point-in-time recovery out of the container
//!   (`bootstrap --from-archive az://… --target-lsn`) has every commit up to the target; `prune`
//!   removes old WAL and `backup delete` the backup.
//! * [`an_interrupted_backup_into_azure_is_never_complete`]: a rate-limited `backup` into the
//!   container stopped mid-stream: SIGTERM (exit 130) leaves no object of it; SIGKILL leaves an
//!   incomplete backup, listed as such, refused by `bootstrap --from-archive`, keeping its label
//!   until `backup delete`, after which a new backup of that label completes.
//! * [`a_container_that_refuses_walrelay_stops_receive_at_once`]: a wrong account key and a
//!   container that does not exist stop `receive` with exit 3 and the fix, before its spool
//!   fills.
//!
//! The store's own contract on Azurite (conditional puts, streamed and multipart uploads, an
//! abandoned upload leaving nothing, a stopped server) is `crates/store/tests/stores.rs`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_testkit::{poll, AzuriteServer, Cluster, PgBench, StopMode};

mod support;
use support::bucket::{self, has_segment, mirror, segment_before};
use support::interrupted_backup::InterruptedBackup;
use support::recovery::{empty_data_dir, start_recovered, walrelay_for_postgres};
use support::wal_files::{assert_contiguous, assert_identical_to_server};
use support::walrelay_cmd;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1024 * 1024).unwrap()
}

/// One server for this test process.
fn server() -> &'static AzuriteServer {
    static SERVER: OnceLock<AzuriteServer> = OnceLock::new();
    SERVER.get_or_init(|| bucket::start_azurite("walrelay-tests"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `walrelay ARGS` to completion; panics unless it exits 0. Returns stdout and stderr.
fn run_ok(bin: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec![bin.to_str().unwrap().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = std::process::Command::new(&all[0])
        .args(&all[1..])
        .env_remove("WALRELAY_LOG")
        .env("PGPASSFILE", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "walrelay {args:?}: {}\n{stdout}{stderr}\nAzurite log:\n{}",
        out.status,
        server().log_tail(20)
    );
    (stdout, stderr)
}

#[test]
fn archives_backs_up_and_recovers_through_azure() {
    let url = server().url("cluster-a");
    let mut primary = Cluster::builder()
        .name("azure")
        .wal_segsize_mb(1)
        .conf("wal_keep_size = '1GB'")
        .start();
    let sysid = primary.system_identifier();
    let bin = walrelay_for_postgres(&primary);
    primary.pgbench_init(1);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    let store = bucket::store(&url);

    let (mut w, _spool) = bucket::start_receive(&primary, &url, "azure", &["--compress", "zstd"]);
    let mut load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(6))
            .clients(2)
            .rate(300),
    );
    // A stored base backup into the same container while the WAL goes up.
    let spool = primary.scratch_path("backup-spool");
    fs::create_dir_all(&spool).unwrap();
    let conn = primary.replication_conninfo();
    let (_, err) = run_ok(
        &bin,
        &[
            "backup",
            "-d",
            &conn,
            "-D",
            &url,
            "-l",
            "nightly",
            "-c",
            "fast",
            "--spool",
            s(&spool),
        ],
    );
    assert!(err.contains("streamed=true"), "{err}");

    // One SIGKILL while uploads go on; the restarted receiver resumes from its spool.
    let before = bucket::wal_names(store.as_ref(), sysid).len();
    poll::wait_until(
        "uploads before the kill",
        || {
            w.assert_running();
            bucket::wal_names(store.as_ref(), sysid).len() > before
        },
        || format!("container: {:?}", bucket::wal_names(store.as_ref(), sysid)),
    );
    w.kill9();
    w.restart();
    let mut i = 0;
    while load.is_running() {
        i += 1;
        primary.psql(&format!("INSERT INTO marker VALUES ({i})"));
    }
    load.wait().unwrap();
    primary.psql("INSERT INTO marker VALUES (1000)"); // the last commit before the target
    let target: Lsn = primary
        .psql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .unwrap();
    let target_time = primary.psql("SELECT clock_timestamp()::text");
    primary.psql("INSERT INTO marker VALUES (2000)"); // after the target: must not come back
    let after_every_commit = primary.psql("SELECT clock_timestamp()::text");
    let end = primary.switch_wal();
    let last = segment_before(end, seg());
    poll::wait_until(
        &format!("{} in {url}", last.file_name(seg())),
        || {
            w.assert_running();
            has_segment(store.as_ref(), sysid, last, seg())
        },
        || format!("container: {:?}", bucket::wal_names(store.as_ref(), sysid)),
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.wait(poll::timeout());
    primary.stop(StopMode::Fast);

    // Every object a whole segment with its SHA-256 in the metadata, byte-identical to the
    // primary's, no gap.
    let mirror_dir = primary.scratch_path("mirror");
    let names = mirror(store.as_ref(), sysid, seg(), &mirror_dir);
    let compared =
        assert_identical_to_server(&mirror_dir, &primary.data_dir().join("pg_wal"), seg());
    assert_eq!(compared, names.len());
    let (_, newest) = assert_contiguous(&mirror_dir, TimelineId(1), seg());
    assert_eq!(newest, last.segno, "{names:?}");
    assert!(
        w.full_log()
            .contains("uploading completed WAL from the spool"),
        "{}",
        w.full_log()
    );

    let (out, _) = run_ok(&bin, &["verify", "-D", &url, "--require-checksums"]);
    assert!(
        out.contains(&format!("{} checksums matched", names.len())),
        "{out}"
    );

    // Point-in-time recovery out of the container: the stored backup, then WAL to the target.
    let data = empty_data_dir(&primary, "recovered");
    let target_text = target.to_string();
    run_ok(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target-lsn",
            &target_text,
            "-D",
            s(&data),
        ],
    );
    {
        let recovered = start_recovered(&primary, &data, "recovered");
        assert_eq!(
            recovered.psql("SELECT max(id), count(*) FROM marker"),
            format!("1000|{}", i + 1),
            "every commit up to the target and none after it"
        );
    }
    // The same target as a time; one after the container's last commit is refused (recovery
    // could not stop there), with nothing written.
    let by_time = empty_data_dir(&primary, "recovered-by-time");
    let refused = walrelay_cmd::run(
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target-time",
            &after_every_commit,
            "-D",
            s(&by_time),
        ]
        .map(String::from),
        poll::timeout(),
    );
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("the archive's last transaction ended at"),
        "{refused:?}"
    );
    assert_eq!(fs::read_dir(&by_time).unwrap().count(), 0);
    run_ok(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target-time",
            &target_time,
            "-D",
            s(&by_time),
        ],
    );
    {
        let recovered = start_recovered(&primary, &by_time, "recovered-by-time");
        assert_eq!(
            recovered.psql("SELECT max(id), count(*) FROM marker"),
            format!("1000|{}", i + 1),
            "every commit up to the target time and none after it"
        );
    }

    // prune on the container, then the backup goes.
    let keep = &names[names.len() / 2];
    run_ok(&bin, &["prune", "-D", &url, "--before", keep]);
    let left = bucket::wal_names(store.as_ref(), sysid);
    assert!(left.iter().all(|n| n.as_str() >= keep.as_str()), "{left:?}");
    assert_eq!(left.len(), names.len() - names.len() / 2, "{left:?}");
    run_ok(&bin, &["backup", "delete", "nightly", "-D", &url]);
    let backups = bucket::runtime()
        .block_on(store.list(&format!("{sysid}/backups/")))
        .unwrap();
    assert!(backups.is_empty(), "{backups:?}");

    // A refused request names the service's answer in one line, without the account key.
    let finished = walrelay_cmd::run(
        &[
            "verify".to_string(),
            "-D".to_string(),
            server().url("nothing-here"),
        ],
        poll::timeout(),
    );
    assert_ne!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(finished.error_lines().len(), 1, "{finished:?}");
    assert!(
        !finished
            .stderr
            .contains(walrelay_testkit::azurite::ACCOUNT_KEY),
        "{finished:?}"
    );
}

/// `backup` into the container stopped mid-stream: SIGTERM leaves nothing of the backup; SIGKILL
/// leaves an incomplete backup that is listed as such, never restored, keeps its label until
/// `backup delete`, after which the label is free again.
#[test]
fn an_interrupted_backup_into_azure_is_never_complete() {
    let url = server().url("interrupted");
    let primary = Cluster::builder().name("azure-backup-kill").start();
    primary.pgbench_init(1);
    let sysid = primary.system_identifier();
    let spool = primary.scratch_path("spool");
    fs::create_dir_all(&spool).unwrap();
    let store = bucket::store(&url);
    let label_objects = || {
        bucket::runtime()
            .block_on(store.list(&format!("{sysid}/backups/slow/")))
            .unwrap()
    };
    InterruptedBackup {
        location: &url,
        extra_args: &["--spool", s(&spool)],
        under_way: &|| !label_objects().is_empty(),
        remains: &|| label_objects().into_iter().map(|o| o.name).collect(),
        // Well into the tar stream: the spool holds a part of it.
        settle: Duration::from_secs(2),
    }
    .check(&primary);
}

#[test]
fn a_container_that_refuses_walrelay_stops_receive_at_once() {
    let url = server().url("refused");
    let primary = Cluster::builder().name("azure-refusals").start();
    let spool = primary.scratch_path("spool");
    fs::create_dir_all(&spool).unwrap();
    let receive = |url: &str| bucket::receive_once(&primary, url, &spool);
    let limit = Duration::from_secs(60);
    // A well-formed key that is not the account's.
    let wrong_key = receive(&url)
        .env(
            "AZURE_STORAGE_ACCOUNT_KEY",
            "bm90LXRoZS1rZXktbm90LXRoZS1rZXk=",
        )
        .run_within(limit);
    let line = wrong_key.assert_failed(3, &["uploading WAL to the archive stopped"]);
    assert!(line.contains("check the credentials"), "{line}");
    assert!(!line.contains("bm90LXRoZS1rZXk"), "{line}");
    let no_container = receive("az://no-such-container/p").run_within(limit);
    no_container.assert_failed(3, &["check the container name and that it exists"]);
}
