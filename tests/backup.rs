//! Stored base backups end to end, against real PostgreSQL 15: `walrelay backup` into an
//! archive (a directory, and the SeaweedFS S3 test server) while pgbench writes, and
//! `walrelay bootstrap --from-archive` back out of it.
//!
//! * [`directory_archive_backups_pitr_damage_prune_and_standby`]: `receive` keeps the archive;
//!   three backups (b0 uncompressed, b1, b2) under pgbench, marker commits between b1 and b2;
//!   `backup list --json`; a byte flipped in b0's stored `base.tar` is caught by `bootstrap
//!   --from-archive` before anything is configured (exit 5, one line, no directory left);
//!   `prune --keep-days 7 --dry-run` keeps all three, and would remove b0 once its descriptor is
//!   dated 2020; `prune --keep-backups 2` removes b0 and the WAL before b1 only; a PITR to a time between
//!   the two markers, with `--backup latest`, picks b1 (the oldest kept backup) and lands exactly
//!   between them, and so does one to an LSN between them and one to a restore point (`--target-name`, from the oldest backup); an LSN past the archive's end and a time in the future are refused, `--target latest` recovers everything; `pg_verifybackup` accepts the restored directory before it starts; `--standby`
//!   seeds a standby from the archive that ends up streaming from the primary; a flipped bit in a
//!   backup's stored WAL is caught as well.
//! * [`backup_into_s3_and_restore_from_the_bucket`]: the same backup into a bucket under pgbench
//!   (each tar stream uploaded while it arrives), listed, restored with `--target immediate` and
//!   started: consistent, every row of the backup's time there; a label in use is refused; a
//!   40 MB object goes up as a multipart upload from a file and reads back byte for byte; the
//!   same into a `file://` archive; `backup delete` leaves nothing of it.
//! * [`an_interrupted_backup_is_never_complete`]: SIGTERM mid-stream cleans up (exit 130);
//!   SIGKILL leaves an incomplete backup that is listed as such, never restored, keeps its
//!   label, and goes with `backup delete` (its spool too).
//! * [`bad_input_is_refused_with_one_line`]: usage errors, one line each, nothing created.
//! * [`backup_and_restore_on_the_matrix_majors`]: PostgreSQL 10–18 when `WALRELAY_PG_MAJORS`
//!   lists them.
//! * [`a_transaction_that_ended_during_the_backup_is_no_target_from_it`]: `--target-xid` of a
//!   transaction committed while the newest backup ran: refused naming `--backup`, and the older
//!   backup recovers to it.

#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};
use walrelay_testkit::{
    pg_verifybackup, poll, Cluster, PgBench, S3Server, StopMode, VerifyBackupOptions,
};

mod support;
use support::interrupted_backup::InterruptedBackup;
use support::recovery::{archive_dir, empty_data_dir, start_recovered, walrelay_for_postgres};

const MB: u64 = 1024 * 1024;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `BIN ARGS` to completion: (exit code, stdout, stderr).
fn run(bin: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("WALRELAY_LOG")
        .env("PGPASSFILE", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(bin: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(bin, args);
    assert_eq!(code, Some(0), "walrelay {args:?}: {out}{err}");
    out
}

/// A `walrelay receive` into a directory archive; killed on drop.
struct Receiver(Child);

impl Receiver {
    fn start(primary: &Cluster, dir: &Path) -> Receiver {
        primary.psql("SELECT pg_create_physical_replication_slot('archive', true)");
        let log = primary.scratch_path("receive.log");
        Receiver(
            Command::new(env!("CARGO_BIN_EXE_walrelay"))
                .args(["receive", "-d", &primary.replication_conninfo()])
                .args([
                    "-D",
                    s(dir),
                    "-S",
                    "archive",
                    "--compress",
                    "zstd",
                    "-s",
                    "1",
                ])
                .env_remove("WALRELAY_LOG")
                .env("PGPASSFILE", "/dev/null")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn segment_name(lsn: Lsn) -> String {
    SegmentId::new(TimelineId(1), seg().segno(lsn)).file_name(seg())
}

/// Waits until the archive holds the segment before `lsn`, complete.
fn wait_archived(dir: &Path, lsn: Lsn) {
    let name = segment_name(Lsn(lsn.0 - 1));
    poll::wait_until(
        &format!("{name} archived"),
        || dir.join(format!("{name}.zst")).is_file() || dir.join(&name).is_file(),
        || format!("{:?}", fs::read_dir(dir).map(|d| d.count())),
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn directory_archive_backups_pitr_damage_prune_and_standby() {
    let primary = Cluster::builder()
        .name("backup-dir")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    primary.pgbench_init(1);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY, at timestamptz)");
    let archive = archive_dir(&primary, "archive");
    let _receiver = Receiver::start(&primary, &archive);
    let conn = primary.replication_conninfo();

    // Three backups while pgbench writes; the markers between the second and the third.
    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(8))
            .clients(2)
            .rate(300),
    );
    let backup = |label: &str, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "-d",
            &conn,
            "-D",
            s(&archive),
            "-l",
            label,
            "-c",
            "fast",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run(&bin, &args);
        assert_eq!(code, Some(0), "backup {label}: {out}{err}");
        assert!(err.contains(&format!("backup {label} stored")), "{err}");
    };
    backup("b0", &["--compress", "none"]);
    backup("b1", &[]);
    primary.psql("INSERT INTO marker VALUES (1, clock_timestamp())");
    // A stored backup holds pg_authid's password verifiers and any server key: readable by the
    // archive's owner only, as pg_basebackup's tar files are.
    {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![archive.join("backups")];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files += 1;
                    let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "{}", e.path().display());
                }
            }
        }
        assert!(files >= 4, "{files} files under backups/");
    }
    let marker1_xid = primary.psql("SELECT xmin::text FROM marker WHERE id = 1");
    let between = primary.psql("SELECT clock_timestamp()::text");
    let between_lsn = primary.current_wal_lsn();
    primary.psql("SELECT pg_create_restore_point('between_markers')");
    std::thread::sleep(Duration::from_millis(50));
    primary.psql("INSERT INTO marker VALUES (2, clock_timestamp())");
    backup("b2", &["--compress", "lz4"]);
    load.wait().unwrap();
    let switched = primary.switch_wal();
    wait_archived(&archive, switched);

    // The stored layout: descriptor last, WAL and manifest beside the tar streams.
    let b1 = archive.join("backups/b1");
    for f in [
        "base.tar.zst",
        "backup_manifest",
        "descriptor.json",
        "started.json",
    ] {
        assert!(b1.join(f).is_file(), "{f}");
    }
    assert!(fs::read_dir(b1.join("wal")).unwrap().count() >= 1);
    assert!(archive.join("backups/b0/base.tar").is_file());
    assert!(archive.join("backups/b2/base.tar.lz4").is_file());
    let listed = json(&run_ok(
        &bin,
        &["backup", "list", "-D", s(&archive), "--json"],
    ));
    let labels: Vec<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["b0", "b1", "b2"], "{listed}");
    assert_eq!(
        listed["backups"][1]["system_identifier"].as_u64(),
        Some(primary.system_identifier())
    );
    let human = run_ok(&bin, &["backup", "list", "-D", s(&archive)]);
    assert!(human.contains("b1") && human.contains("zstd"), "{human}");
    // Times in whole seconds: the columns line up (the JSON keeps the fractions).
    let end = listed["backups"][1]["end_time"].as_str().unwrap();
    let shown = format!("{}Z", &end[..19]);
    assert!(human.contains(&shown), "{shown} in {human}");
    let time_column = human
        .lines()
        .nth(2)
        .unwrap()
        .get(25..45)
        .unwrap_or_default();
    assert!(!time_column.contains('.'), "{human}");
    // The WAL archive still verifies with backups beside it.
    let (code, out, err) = run(&bin, &["verify", "-D", s(&archive), "--no-content"]);
    assert_eq!(code, Some(0), "verify: {out}{err}");

    // A damaged byte in b0's stored tar: refused before the server could start, nothing left.
    {
        let tar = archive.join("backups/b0/base.tar");
        let mut bytes = fs::read(&tar).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&tar, bytes).unwrap();
        let target = primary.scratch_path("damaged");
        let (code, out, err) = run(
            &bin,
            &[
                "bootstrap",
                "--from-archive",
                s(&archive),
                "--backup",
                "b0",
                "--target",
                "immediate",
                "-D",
                s(&target),
            ],
        );
        assert_eq!(code, Some(5), "{out}{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("b0") && lines[0].contains("damaged"),
            "{err}"
        );
        assert!(!target.exists(), "a refused restore leaves nothing");
    }

    // Retention by age: all three are new, so --keep-days 7 keeps them; with b0's descriptor
    // dated 2020, it would remove b0 (dry run: nothing goes).
    let keep_days = |label: &str| {
        let (code, out, err) = run(
            &bin,
            &["prune", "-D", s(&archive), "--keep-days", "7", "--dry-run"],
        );
        assert_eq!(code, Some(0), "prune --keep-days ({label}): {out}{err}");
        err
    };
    let err = keep_days("new");
    assert!(
        err.contains("backups kept: b0, b1, b2; would remove: none"),
        "{err}"
    );
    {
        let path = archive.join("backups/b0/descriptor.json");
        let mut d = json(&fs::read_to_string(&path).unwrap());
        d["start_time"] = "2020-01-01T00:00:00Z".into();
        d["end_time"] = "2020-01-01T00:05:00Z".into();
        fs::write(&path, serde_json::to_vec_pretty(&d).unwrap()).unwrap();
    }
    let err = keep_days("b0 old");
    assert!(
        err.contains("backups kept: b1, b2; would remove: b0"),
        "{err}"
    );
    assert!(
        archive.join("backups/b0").is_dir(),
        "a dry run removes nothing"
    );

    // Retention: keep two backups; b0 goes, and the WAL before b1's start.
    let b1_start: Lsn = listed["backups"][1]["start_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let keep_from = segment_name(b1_start);
    let (code, out, err) = run(
        &bin,
        &["prune", "-D", s(&archive), "--keep-backups", "2", "--json"],
    );
    assert_eq!(code, Some(0), "prune: {out}{err}");
    assert!(!archive.join("backups/b0").exists());
    let wal: Vec<String> = fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() >= 24 && n.as_bytes()[0].is_ascii_digit() && !n.ends_with(".history"))
        .collect();
    assert!(!wal.is_empty());
    assert!(
        wal.iter().all(|n| n[..24] >= *keep_from),
        "kept WAL before {keep_from}: {wal:?}"
    );
    assert!(
        wal.iter().any(|n| n.starts_with(&keep_from)),
        "removed {keep_from}: {wal:?}"
    );

    // PITR between the markers; "latest before the target" is b1, the oldest kept backup.
    let pitr = empty_data_dir(&primary, "pitr");
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "--target-time",
            &between,
            "-D",
            s(&pitr),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("restored backup b1"), "{err}");
    assert!(pitr.join("recovery.signal").is_file());
    let auto = fs::read_to_string(pitr.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("recovery_target_time = '{between}'")),
        "{auto}"
    );
    let verified = pg_verifybackup(&pitr, &VerifyBackupOptions::default()).unwrap();
    assert!(
        verified.contains("backup successfully verified"),
        "{verified}"
    );
    {
        let recovered = start_recovered(&primary, &pitr, "pitr");
        assert_eq!(
            recovered.psql("SELECT string_agg(id::text, ',') FROM marker"),
            "1"
        );
        assert!(recovered.log_tail(200).contains("restored log file"));
    }

    // By transaction ID: b2, the newest, began after marker 1's transaction (recovery from it
    // would replay past the target, or stop short of it on 13+): b1, which began before.
    let b2_next = json(&fs::read_to_string(archive.join("backups/b2/descriptor.json")).unwrap())
        ["next_xid"]
        .as_u64()
        .expect("b2 records its next transaction ID");
    assert!(b2_next > marker1_xid.parse::<u64>().unwrap(), "{b2_next}");
    // Restores b1 (the newest backup before the target) and recovers to exactly marker 1.
    let recovers_marker_1_from_b1 = |name: &str, target: &[&str]| {
        let dir = empty_data_dir(&primary, name);
        let mut args = vec!["bootstrap", "--from-archive", s(&archive), "-D", s(&dir)];
        args.extend_from_slice(target);
        let (code, out, err) = run(&bin, &args);
        assert_eq!(code, Some(0), "{name}: {out}{err}");
        assert!(err.contains("restored backup b1"), "{name}: {err}");
        let recovered = start_recovered(&primary, &dir, name);
        assert_eq!(
            recovered.psql("SELECT string_agg(id::text, ',') FROM marker"),
            "1",
            "{name}"
        );
    };
    recovers_marker_1_from_b1("pitr-xid", &["--target-xid", &marker1_xid]);
    // The same by LSN: the newest backup ending before it is b1 again.
    recovers_marker_1_from_b1("pitr-lsn", &["--target-lsn", &between_lsn.to_string()]);
    // And by restore point: the oldest backup (b1 since the prune), whose WAL leads to it.
    recovers_marker_1_from_b1("pitr-name", &["--target-name", "between_markers"]);
    // A target recovery could not reach: refused with exit 2 before anything is written.
    let beyond = empty_data_dir(&primary, "pitr-beyond");
    let refused = |target: &[&str]| -> String {
        let mut args = vec!["bootstrap", "--from-archive", s(&archive), "-D", s(&beyond)];
        args.extend_from_slice(target);
        let (code, _, err) = run(&bin, &args);
        assert_eq!(code, Some(2), "{target:?}: {err}");
        assert_eq!(fs::read_dir(&beyond).unwrap().count(), 0, "{target:?}");
        err
    };
    // An LSN past the archive's end (10-12 would promote at the end of the archive as if the
    // target had been reached).
    let err = refused(&["--target-lsn", "FF/0"]);
    assert!(
        err.contains("the archive's WAL ends at") && err.contains("before the target FF/0"),
        "{err}"
    );
    // A time in the future (a mistyped year); --target latest recovers everything.
    let err = refused(&["--target-time", "2099-01-01 00:00:00+00"]);
    assert!(
        err.contains("is in the future") && err.contains("--target latest"),
        "{err}"
    );
    // A transaction that never ended in the archive's WAL (a mistyped ID), a restore point that
    // is not there (a mistyped name): 13+ would refuse to start after the whole restore, 10-12
    // would promote at the archive's end.
    let err = refused(&["--target-xid", "999999999"]);
    assert!(
        err.contains("transaction 999999999 has no commit or abort in the archive's WAL"),
        "{err}"
    );
    let err = refused(&["--target-name", "between_markerz"]);
    assert!(
        err.contains("holds no restore point named \"between_markerz\""),
        "{err}"
    );
    // A time after the archive's last transaction, not in the future: the WAL committed since
    // is still in the segment in progress (no complete segment holds a later commit), so 13+
    // would refuse to start and 10-12 would promote short of the target.
    let after_last = primary.psql("SELECT clock_timestamp()::text");
    let err = refused(&["--target-time", &after_last]);
    assert!(
        err.contains("the archive's last transaction ended at")
            && err.contains("--target latest")
            && err.contains("pg_switch_wal()"),
        "{err}"
    );
    run_ok(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "-D",
            s(&beyond),
            "--target",
            "latest",
        ],
    );
    {
        let recovered = start_recovered(&primary, &beyond, "pitr-latest");
        assert_eq!(
            recovered.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker"),
            "1,2"
        );
    }

    // A standby seeded from the archive (latest = b2), then streaming from the primary.
    let standby_dir = empty_data_dir(&primary, "standby");
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "--standby",
            "-d",
            &conn,
            "-D",
            s(&standby_dir),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("restored backup b2"), "{err}");
    assert!(standby_dir.join("standby.signal").is_file());
    let standby = primary.standby(&standby_dir).name("standby").start();
    primary.psql("INSERT INTO marker VALUES (3, clock_timestamp())");
    let target = primary.current_wal_lsn();
    standby.wait_replay(target);
    assert_eq!(
        standby.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker"),
        "1,2,3"
    );
    poll::wait_until(
        "the standby to stream from the primary",
        || {
            primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'walrelay'") == "1"
        },
        || standby.log_tail(30),
    );
    // Its archive unreadable (a store down, a mount gone): the standby still starts and streams
    // (restore_command --standby reports "not in the archive" rather than stopping it).
    let auto = standby_dir.join("postgresql.auto.conf");
    let conf = fs::read_to_string(&auto).unwrap();
    assert!(conf.contains(" --standby'"), "{conf}");
    let mut standby = standby;
    standby.stop(StopMode::Fast);
    let gone = format!("{}-gone", s(&archive));
    fs::write(&auto, conf.replace(s(&archive), &gone)).unwrap();
    standby.start();
    primary.psql("INSERT INTO marker VALUES (4, clock_timestamp())");
    standby.wait_replay(primary.current_wal_lsn());
    assert_eq!(
        standby.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker"),
        "1,2,3,4"
    );
    let log = standby.log_tail(200);
    assert!(
        log.contains("reported as not in the archive")
            && !log.contains("shutting down due to startup process failure"),
        "{log}"
    );
    drop(standby);

    // A damaged WAL file of a backup is caught too, and the restore leaves nothing.
    let wal_dir = archive.join("backups/b2/wal");
    let first = fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "lz4"))
        .unwrap();
    let mut bytes = fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    fs::write(&first, bytes).unwrap();
    let target = empty_data_dir(&primary, "damaged-wal");
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "--backup",
            "b2",
            "--target",
            "immediate",
            "-D",
            s(&target),
        ],
    );
    assert_eq!(code, Some(5), "{out}{err}");
    assert!(err.contains("damaged") && err.contains("wal/"), "{err}");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "emptied");

    let mut primary = primary;
    primary.stop(StopMode::Fast);
}

/// One S3 server for this test process.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| support::bucket::start_server("walrelay-backups"))
}

#[test]
fn backup_into_s3_and_restore_from_the_bucket() {
    let url = server().url("backup-test");
    let primary = Cluster::builder()
        .name("backup-s3")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    primary.pgbench_init(2);
    // A tablespace: its own tar stream, restored elsewhere with -T.
    let ts_dir = primary.create_tablespace("ts1");
    primary.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT generate_series(1, 5000) AS i");
    let conn = primary.replication_conninfo();
    let spool = primary.scratch_path("spool");
    fs::create_dir_all(&spool).unwrap();

    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(3))
            .clients(2)
            .rate(200),
    );
    let (code, out, err) = run(
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
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("archive stored archive=base.tar.zst") && err.contains("streamed=true"),
        "the tar stream goes up while it arrives: {err}"
    );
    load.wait().unwrap();
    assert_eq!(
        fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is emptied"
    );
    // The same label again is refused, and changes nothing.
    let (code, out, err) = run(&bin, &["backup", "-d", &conn, "-D", &url, "-l", "nightly"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("already holds a backup labelled"), "{err}");

    let listed = json(&run_ok(&bin, &["backup", "list", "-D", &url, "--json"]));
    assert_eq!(listed["backups"][0]["label"], "nightly", "{listed}");
    assert_eq!(listed["incomplete"].as_array().unwrap().len(), 0);
    let sysid = primary.system_identifier();
    let objects = support::bucket::runtime()
        .block_on(support::bucket::store(&url).list(&format!("{sysid}/backups/nightly/")))
        .unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o.name.ends_with("/base.tar.zst") && o.size > MB),
        "{objects:?}"
    );

    // Large objects go up as multipart uploads from the file and come back as a stream.
    {
        let store = support::bucket::store(&url);
        let big = primary.scratch_path("big-object");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..40 * MB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(&big, &data).unwrap();
        let name = "multipart-check/big";
        let rt = support::bucket::runtime();
        let put = |s: &dyn walrelay_store::ArchiveStore| {
            rt.block_on(s.put_file_if_absent(name, &big)).unwrap()
        };
        assert_eq!(put(store.as_ref()), walrelay_store::PutIfAbsent::Created);
        assert_eq!(put(store.as_ref()), walrelay_store::PutIfAbsent::Exists);
        let back = rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let mut r = store.reader(name).await.unwrap().unwrap();
            let mut v = Vec::new();
            r.read_to_end(&mut v).await.unwrap();
            v
        });
        assert!(back == data, "the object reads back byte for byte");
        rt.block_on(store.delete(name)).unwrap();
    }

    // An LSN past the end of what the bucket holds: refused, nothing written.
    let beyond = empty_data_dir(&primary, "beyond-s3");
    let (code, _, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target-lsn",
            "FF/0",
            "-D",
            s(&beyond),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the archive's WAL ends at"), "{err}");
    assert_eq!(fs::read_dir(&beyond).unwrap().count(), 0);
    // A time after the backup, when the bucket holds no WAL past the backup's own: recovery
    // could not stop anywhere.
    let now = primary.psql("SELECT clock_timestamp()::text");
    let (code, _, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target-time",
            &now,
            "-D",
            s(&beyond),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("holds no transaction that ended after backup \"nightly\" began"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&beyond).unwrap().count(), 0);

    let data = empty_data_dir(&primary, "from-s3");
    let ts_new = primary.scratch_path("ts1-restored");
    let mapping = format!("{}={}", s(&ts_dir), s(&ts_new));
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target",
            "immediate",
            "-D",
            s(&data),
            "-T",
            &mapping,
        ],
    );
    assert!(
        objects
            .iter()
            .any(|o| o.name.ends_with(".tar.zst") && !o.name.ends_with("/base.tar.zst")),
        "the tablespace has its own object: {objects:?}"
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let verified = pg_verifybackup(&data, &VerifyBackupOptions::default()).unwrap();
    assert!(
        verified.contains("backup successfully verified"),
        "{verified}"
    );
    {
        let restored = start_recovered(&primary, &data, "from-s3");
        assert_eq!(
            restored.psql("SELECT count(*) FROM pgbench_accounts"),
            "200000"
        );
        assert_eq!(restored.psql("SELECT count(*) FROM pgbench_branches"), "2");
        assert_eq!(restored.psql("SELECT count(*) FROM in_ts"), "5000");
        assert_eq!(
            restored.psql(
                "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"
            ),
            s(&ts_new)
        );
    }

    // The object layout in a local directory (file://): streamed into place the same way.
    {
        let root = archive_dir(&primary, "file-archive");
        let file_url = format!("file://{}", s(&root));
        run_ok(
            &bin,
            &[
                "backup", "-d", &conn, "-D", &file_url, "-l", "local", "-c", "fast",
            ],
        );
        assert!(root
            .join(format!("{sysid}/backups/local/descriptor.json"))
            .is_file());
        let data = empty_data_dir(&primary, "from-file");
        let mapping = format!("{}={}", s(&ts_dir), s(&primary.scratch_path("ts1-file")));
        run_ok(
            &bin,
            &[
                "bootstrap",
                "--from-archive",
                &file_url,
                "--target",
                "immediate",
                "-D",
                s(&data),
                "-T",
                &mapping,
            ],
        );
        let restored = start_recovered(&primary, &data, "from-file");
        assert_eq!(restored.psql("SELECT count(*) FROM pgbench_branches"), "2");
    }

    let (code, out, err) = run(&bin, &["backup", "delete", "nightly", "-D", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    let left = support::bucket::runtime()
        .block_on(support::bucket::store(&url).list(&format!("{sysid}/backups/")))
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let (code, _, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            &url,
            "--target",
            "immediate",
            "-D",
            s(&primary.scratch_path("none")),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no complete backup"), "{err}");
}

/// Bad input: exit 2 with one line naming the cause and the fix; nothing created.
#[test]
fn bad_input_is_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let a = s(&archive);
    let target = tmp.path().join("target");
    let t = s(&target);
    let bin = Path::new(env!("CARGO_BIN_EXE_walrelay"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backup", "-d", "host=/nonexistent"],
            "needs the archive",
        ),
        (
            vec!["backup", "-d", "host=/nonexistent", "-D", a, "-l", "../x"],
            "invalid backup label",
        ),
        (
            vec!["backup", "-D", a, "--compress", "xz"],
            "invalid compression",
        ),
        (
            vec!["bootstrap", "--from-archive", a, "-D", t],
            "--target-time",
        ),
        (
            vec![
                "bootstrap",
                "--from-archive",
                a,
                "--target-time",
                "2024-06-01 12:00:00",
                "-D",
                t,
            ],
            "no UTC offset",
        ),
        (
            vec![
                "bootstrap",
                "--from-archive",
                a,
                "--target",
                "immediate",
                "--standby",
                "-D",
                t,
            ],
            "cannot be used with",
        ),
        (
            vec!["bootstrap", "--from-archive", a, "--standby", "-D", t],
            "-d CONNSTR",
        ),
        (
            vec![
                "bootstrap",
                "--from-archive",
                "/nonexistent/a",
                "--target",
                "immediate",
                "-D",
                t,
            ],
            "does not exist",
        ),
        (
            vec![
                "bootstrap",
                "--from-archive",
                a,
                "--target",
                "immediate",
                "-D",
                t,
            ],
            "no complete backup",
        ),
        (
            vec!["bootstrap", "--target", "immediate", "-D", t],
            "--from-archive",
        ),
        (
            vec!["prune", "-D", a, "--keep-backups", "1"],
            "no complete backup",
        ),
        (
            vec![
                "prune",
                "-D",
                a,
                "--keep-backups",
                "1",
                "--before-lsn",
                "0/1000000",
            ],
            "leave out --before",
        ),
        (
            vec!["backup", "delete", "nosuch", "-D", a],
            "no backup labelled",
        ),
    ];
    for (args, expected) in cases {
        let (code, out, err) = run(bin, &args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        assert!(lines[0].contains(expected), "{args:?}: {err}");
        assert!(!target.exists(), "{args:?} created the target");
    }
    assert_eq!(
        fs::read_dir(&archive).unwrap().count(),
        0,
        "the archive is untouched"
    );
}

/// The majors of the version matrix (`WALRELAY_PG_MAJORS`, as tests/matrix.rs; none by default):
/// for each, a backup into a directory archive, a restore to consistency (`--target immediate`,
/// which PostgreSQL 10 and 11 read from `recovery.conf`) that starts with every row, checked by
/// pg_verifybackup where Debian's 15 reads the manifest (13–16; its WAL check on 15 only), and a
/// `--standby` that replays a row written after the backup.
#[test]
fn backup_and_restore_on_the_matrix_majors() {
    for major in walrelay_testkit::env::matrix_majors() {
        let primary = Cluster::builder()
            .name(&format!("backup-pg{major}"))
            .major(major)
            .start();
        let bin = walrelay_for_postgres(&primary);
        primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
        let archive = archive_dir(&primary, "archive");
        let conn = primary.replication_conninfo();
        if major >= 12 {
            // What a cluster that was itself recovered to a target keeps in postgresql.auto.conf
            // (a primary ignores it): copied into the backup, it made the restore refuse to
            // start ("multiple recovery targets specified") and the standby stop at it and
            // promote itself.
            primary.psql(
                "ALTER SYSTEM SET recovery_target_time = '2020-01-01 00:00:00+00';
                 ALTER SYSTEM SET recovery_target_action = 'promote'",
            );
        }
        let txid = || -> u64 { primary.psql("SELECT txid_current()").parse().unwrap() };
        let before = txid();
        run_ok(
            &bin,
            &[
                "backup",
                "-d",
                &conn,
                "-D",
                s(&archive),
                "-l",
                "m",
                "-c",
                "fast",
            ],
        );
        // The next transaction ID of its pg_control, read where this major keeps it.
        let after = txid();
        let next = json(&fs::read_to_string(archive.join("backups/m/descriptor.json")).unwrap())
            ["next_xid"]
            .as_u64();
        assert!(
            next.is_some_and(|n| before < n && n <= after),
            "PG {major}: next_xid {next:?} not in ({before}, {after}]"
        );
        let restored = empty_data_dir(&primary, "restored");
        run_ok(
            &bin,
            &[
                "bootstrap",
                "--from-archive",
                s(&archive),
                "--target",
                "immediate",
                "-D",
                s(&restored),
            ],
        );
        let legacy = major < 12;
        assert_eq!(
            restored.join("recovery.conf").is_file(),
            legacy,
            "PG {major}"
        );
        assert_eq!(
            restored.join("recovery.signal").is_file(),
            !legacy,
            "PG {major}"
        );
        if (13..=16).contains(&major) {
            // Debian's pg_waldump 15 reads only 15's WAL format.
            let opts = VerifyBackupOptions {
                no_parse_wal: major != 15,
                ..Default::default()
            };
            let v = pg_verifybackup(&restored, &opts).unwrap();
            assert!(
                v.contains("backup successfully verified"),
                "PG {major}: {v}"
            );
        }
        {
            let c = start_recovered(&primary, &restored, &format!("restored-pg{major}"));
            assert_eq!(c.psql("SELECT count(*) FROM t"), "1000", "PG {major}");
        }
        let standby_dir = empty_data_dir(&primary, "standby");
        run_ok(
            &bin,
            &[
                "bootstrap",
                "--from-archive",
                s(&archive),
                "--standby",
                "-d",
                &conn,
                "-D",
                s(&standby_dir),
            ],
        );
        let standby = primary
            .standby(&standby_dir)
            .name(&format!("standby-pg{major}"))
            .start();
        primary.psql("INSERT INTO t VALUES (1001)");
        standby.wait_replay(primary.current_wal_lsn());
        assert_eq!(standby.psql("SELECT count(*) FROM t"), "1001", "PG {major}");
        assert_eq!(
            standby.psql("SELECT pg_is_in_recovery()"),
            "t",
            "PG {major}: the standby promoted itself"
        );
        eprintln!("PostgreSQL {major}: backup, restore and standby from the archive passed");
    }
}

/// A backup stopped by SIGTERM cleans up after itself (exit 130, nothing under its label); one
/// killed with SIGKILL is listed as incomplete, never restored, and `backup delete` removes it
/// with its spool.
#[test]
fn an_interrupted_backup_is_never_complete() {
    let primary = Cluster::builder().name("backup-kill").start();
    primary.pgbench_init(1);
    let archive = archive_dir(&primary, "archive");
    let label_dir = archive.join("backups/slow");
    let spool = archive.join("backups/.slow.spool");
    InterruptedBackup {
        location: s(&archive),
        extra_args: &[],
        under_way: &|| spool.join("base.tar.zst.partial").is_file(),
        remains: &|| {
            [&label_dir, &spool]
                .iter()
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect()
        },
        settle: Duration::ZERO,
    }
    .check(&primary);
}

/// `--target-xid` picks the newest backup that began before the transaction was assigned; one
/// that was still running when the transaction ended cannot stop there (the server refuses to
/// start: "requested recovery stop point is before consistent recovery point"). That backup's
/// own WAL shows it: refused with exit 2 naming the way out, nothing left behind, and the older
/// backup named with --backup recovers to the transaction.
#[test]
fn a_transaction_that_ended_during_the_backup_is_no_target_from_it() {
    let primary = Cluster::builder()
        .name("backup-xid-inside")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    let archive = archive_dir(&primary, "archive");
    let conn = primary.replication_conninfo();
    let _receiver = Receiver::start(&primary, &archive);
    primary.psql(
        "CREATE TABLE t AS SELECT g AS i, repeat('x', 400) AS pad FROM generate_series(1, 40000) g",
    );
    let backup = |label: &str, rate: &str| {
        Command::new(&bin)
            .args([
                "backup",
                "-d",
                &conn,
                "-D",
                s(&archive),
                "-l",
                label,
                "-c",
                "fast",
                "-r",
                rate,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let finished = |c: Child| {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    finished(backup("old", "1000M"));
    // About 20 MB at 4 MB/s: the transaction commits while it streams.
    let slow = backup("slow", "4M");
    // Past its checkpoint (whose next transaction ID the descriptor records), sending files.
    poll::wait_until(
        "the backup streaming its files",
        || {
            primary.psql(
                "SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files'",
            ) == "1"
        },
        String::new,
    );
    let xid = primary.psql("INSERT INTO t VALUES (0, 'inside') RETURNING xmin::text");
    assert_eq!(
        primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'backup'"),
        "1",
        "the backup ended before the transaction: make the table bigger"
    );
    finished(slow);
    let switched = primary.switch_wal();
    wait_archived(&archive, switched);

    let dir = empty_data_dir(&primary, "inside");
    let (code, _, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "-D",
            s(&dir),
            "--target-xid",
            &xid,
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("transaction {xid} ended at"))
            && err.contains("while backup \"slow\" ran")
            && err.contains("--backup LABEL"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    let (code, _, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "-D",
            s(&dir),
            "--target-xid",
            &xid,
            "--backup",
            "old",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let recovered = start_recovered(&primary, &dir, "inside-recovered");
    assert_eq!(recovered.psql("SELECT pad FROM t WHERE i = 0"), "inside");
}

/// A directory archive holds one cluster: `backup` of another cluster into an archive holding
/// the first one's WAL is refused (exit 4) — `prune` would judge the first cluster's WAL by the
/// second one's backup and remove it. A server's own directories (its data directory, its
/// `pg_wal`, anything inside them) are refused as archives (exit 5): they race the server and
/// grow every later backup of it.
#[test]
fn backup_refuses_another_cluster_s_archive_and_a_server_s_directories() {
    let first = Cluster::builder()
        .name("backup-first")
        .wal_segsize_mb(1)
        .start();
    let second = Cluster::builder()
        .name("backup-second")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&second);
    // The first cluster's WAL in the archive, as receive would have put it there.
    let archive = archive_dir(&first, "archive");
    let pg_wal = first.data_dir().join("pg_wal");
    let segment = fs::read_dir(&pg_wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .max()
        .expect("a segment in pg_wal");
    fs::copy(pg_wal.join(&segment), archive.join(&segment)).unwrap();

    let conn = second.replication_conninfo();
    let (code, out, err) = run(
        &bin,
        &["backup", "-d", &conn, "-D", s(&archive), "-l", "other"],
    );
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains(&format!(
            "the archive holds WAL or backups of system {}",
            first.system_identifier()
        )),
        "{err}"
    );
    assert!(!archive.join("backups").join("other").exists());

    for dir in [
        first.data_dir().to_path_buf(),
        pg_wal.clone(),
        first.data_dir().join("base"),
    ] {
        let (code, out, err) = run(
            &bin,
            &["backup", "-d", &conn, "-D", s(&dir), "-l", "inside"],
        );
        assert_eq!(code, Some(5), "{}: {out}{err}", dir.display());
        assert!(
            err.contains("an archive needs a directory of its own"),
            "{err}"
        );
        assert!(!dir.join("backups").exists(), "{}", dir.display());
    }
}

/// A backup taken on a standby carries its standby.signal (and primary_conninfo, a slot):
/// restored for point-in-time recovery it must recover from the archive and promote — it
/// started as a standby of the production primary, streaming, never promoted, holding the slot.
#[test]
fn a_backup_taken_on_a_standby_recovers_and_promotes() {
    let primary = Cluster::builder()
        .name("backup-onstandby")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    let archive = archive_dir(&primary, "archive");
    let _receiver = Receiver::start(&primary, &archive);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    let standby_dir = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    let standby = primary
        .standby(&standby_dir)
        .name("backup-onstandby-sb")
        .start();
    standby.catch_up(&primary);
    run_ok(
        &bin,
        &[
            "backup",
            "-d",
            &standby.replication_conninfo(),
            "-D",
            s(&archive),
            "-l",
            "from_standby",
        ],
    );
    primary.psql("INSERT INTO marker SELECT generate_series(1, 10)");
    let end = primary.switch_wal();
    wait_archived(&archive, end);
    let pitr = empty_data_dir(&primary, "pitr-from-standby-backup");
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "--target",
            "latest",
            "-D",
            s(&pitr),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("its standby.signal removed"), "{err}");
    assert!(!pitr.join("standby.signal").exists());
    let recovered = start_recovered(&primary, &pitr, "pitr-from-standby-backup");
    assert_eq!(recovered.psql("SELECT count(*) FROM marker"), "10");
}

/// --target-xid of a two-phase transaction: it ends in COMMIT PREPARED, logged by the session
/// that ran it, whose record does not carry the prepared ID in its header — the target was
/// refused as never ending. PostgreSQL stops there; so must the restore.
#[test]
fn a_prepared_transaction_is_a_target() {
    let primary = Cluster::builder()
        .name("backup-2pc")
        .wal_segsize_mb(1)
        .conf("max_prepared_transactions = 2")
        .start();
    let bin = walrelay_for_postgres(&primary);
    let archive = archive_dir(&primary, "archive");
    let _receiver = Receiver::start(&primary, &archive);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    run_ok(
        &bin,
        &[
            "backup",
            "-d",
            &primary.replication_conninfo(),
            "-D",
            s(&archive),
            "-l",
            "b1",
        ],
    );
    primary.psql("BEGIN; INSERT INTO marker VALUES (1); PREPARE TRANSACTION 'two_phase'");
    let xid =
        primary.psql("SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'two_phase'");
    primary.psql("COMMIT PREPARED 'two_phase'");
    primary.psql("INSERT INTO marker VALUES (2)");
    let end = primary.switch_wal();
    wait_archived(&archive, end);
    let pitr = empty_data_dir(&primary, "pitr-2pc");
    let (code, out, err) = run(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "--target-xid",
            &xid,
            "-D",
            s(&pitr),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let recovered = start_recovered(&primary, &pitr, "pitr-2pc");
    assert_eq!(
        recovered.psql("SELECT string_agg(id::text, ',') FROM marker"),
        "1"
    );
}

/// A gap in the archive between the backup and the target (a segment deleted, an archive that
/// started after the backup): recovery ends at the gap — 10-12 promote there silently, and
/// `--target latest` promotes short of the rest on every major. Refused, naming the segment;
/// with the segment back, the same restore works. A target LSN past the archive's last record
/// (the position pg_switch_wal() returns) is refused like one past its end.
#[test]
fn a_gap_or_a_target_past_the_last_record_is_refused() {
    let primary = Cluster::builder()
        .name("backup-gap")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    let archive = archive_dir(&primary, "archive");
    let _receiver = Receiver::start(&primary, &archive);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    run_ok(
        &bin,
        &[
            "backup",
            "-d",
            &primary.replication_conninfo(),
            "-D",
            s(&archive),
            "-l",
            "b1",
        ],
    );
    let mut switched = Vec::new();
    for i in 1..=3 {
        primary.psql(&format!("INSERT INTO marker VALUES ({i})"));
        switched.push(primary.switch_wal());
    }
    let time_after = primary.psql("SELECT clock_timestamp()::text");
    primary.psql("INSERT INTO marker VALUES (4)");
    let end = primary.switch_wal();
    wait_archived(&archive, end);
    let target = empty_data_dir(&primary, "gap");
    let refused = |args: &[&str]| -> String {
        let mut all = vec!["bootstrap", "--from-archive", s(&archive), "-D", s(&target)];
        all.extend_from_slice(args);
        let (code, _, err) = run(&bin, &all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "{args:?}");
        err
    };
    // pg_switch_wal()'s position: after the last record of the newest complete segment.
    let err = refused(&["--target-lsn", &end.to_string()]);
    assert!(err.contains("its last record starts there"), "{err}");
    // A segment written after the backup, gone from the archive.
    let gone = segment_name(Lsn(switched[1].0 - 1));
    let kept = archive.join(format!("{gone}.kept"));
    fs::rename(archive.join(format!("{gone}.zst")), &kept).unwrap();
    for args in [
        &["--target", "latest"][..],
        &["--target-time", &time_after],
        &["--target-lsn", &switched[2].to_string()],
    ] {
        let err = refused(args);
        assert!(
            err.contains(&format!("lacks WAL segment {gone}")),
            "{args:?}: {err}"
        );
    }
    fs::rename(&kept, archive.join(format!("{gone}.zst"))).unwrap();
    run_ok(
        &bin,
        &[
            "bootstrap",
            "--from-archive",
            s(&archive),
            "-D",
            s(&target),
            "--target",
            "latest",
        ],
    );
    let recovered = start_recovered(&primary, &target, "gap");
    assert_eq!(
        recovered.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker"),
        "1,2,3,4"
    );
}
