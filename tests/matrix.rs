//! The version matrix: the real `walrelay` binary against every PostgreSQL major from 10 to 18.
//!
//! One test per major (`matrix_pg10` … `matrix_pg18`). A test runs when `WALRELAY_PG_MAJORS` lists its
//! major (`scripts/test.sh` and `.ci/run` set it and install those majors first) and otherwise prints
//! a note and passes, so a plain `cargo test` stays quick. A listed major whose server binaries cannot
//! be found or installed fails: a matrix that silently lost a version would be worse than a red build.
//!
//! Each test checks, on a primary with 1 MB WAL segments (PG 11+; PG 10's are fixed at 16 MB):
//!
//! | feature | what is checked |
//! |---|---|
//! | `check` | `walrelay check` exits 0 and says READY |
//! | `bootstrap` | `bootstrap -T old=new -C -S slot -c fast` under pgbench load; recovery.conf (10/11) or standby.signal (12+); a `primary_conninfo` the standby's own libpq accepts; tablespace at the mapped path |
//! | `manifest` | 13–16: Debian 15's `pg_verifybackup` accepts the directory (WAL parsed on 15, `-n` elsewhere); 17–18 (manifest version 2, which that tool cannot read): system identifier, sizes and SHA-256 checksums of every file checked with `sha256sum`; none before 13 |
//! | `standby` | the bootstrapped directory starts as a hot standby, replays to the primary's position, shows rows inserted after the bootstrap (also in the mapped tablespace) and pgbench's final state |
//! | `receive` | `receive --create-slot`, WAL written, then `receive -S` (starting at the slot's restart_lsn on every major) across three `pg_switch_wal()`: complete segments byte-identical to the primary's, no gap; pg_waldump on 15 |
//! | `slots` | the bootstrap's and receive's slots advance with what their clients flushed; duplicate creation refused; drop |
//! | `sidecar` | `bootstrap --sidecar` + `receive --pg-wal`: a standby without a connection of its own replays what walrelay writes into its `pg_wal` |
//! | `relay` | `walrelay serve` in front of the primary; `walrelay bootstrap` through it (BASE_BACKUP proxied in the major's syntax, WAL from the relay's temporary slot) seeds a standby of this major whose `primary_conninfo` points at the relay; rows inserted on the primary reach it through the relay, which the primary serves with one walsender |
//! | `timeline` | a failover: `receive -d "host=primary,standby target_session_attrs=read-write"`, the primary crashes (immediate stop), the bootstrapped standby is promoted: walrelay goes on by itself, `00000002.history` stored, the new timeline's segments byte-identical; from 11, `--failover` keeps the slot on the standby, which walrelay streams through after the promotion |
//!
//! `walrelay subset` has its own part (`matrix_subset_pg10` … `matrix_subset_pg18`, run alone with
//! `cargo test --test matrix subset`): each major as the source of a subset into the newest major of
//! `WALRELAY_PG_MAJORS` (feature `source`), and as its target from that newest major (feature
//! `target`) — so 10 → 18 and 18 → 10 among them, and 18 → 18. What one pair checks is in
//! `support/subset_pair.rs`; the results go to `target/matrix/pgN-subset.json`, the second table of
//! the README's compatibility section.
//!
//! A failure in one feature is recorded and the test goes on with the features that do not depend on
//! it (see `support/matrix_report.rs`); the results go to `target/matrix/pgN.json`, which
//! `scripts/compat-table.sh` turns into the README's compatibility table, and one summary line is
//! printed: `matrix: PostgreSQL 13 (13.23): check ok, bootstrap ok, …`.
//!
//! Debian's 15 client tools are the only ones on the machine: pg_waldump 15 reads only version-15 WAL
//! and pg_verifybackup 15 only manifest version 1, which is why those oracles are limited by major.

mod support;

#[path = "support/matrix_report.rs"]
mod matrix_report;
#[path = "support/subset_pair.rs"]
mod subset_pair;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use walrelay_conninfo::{ConnInfo, Keyword};
use walrelay_protocol::{TimelineId, WalSegmentSize};
use walrelay_testkit::{
    matrix_includes, pg_verifybackup, Cluster, Lsn, PgBench, Role, StopMode, VerifyBackupOptions,
};

use matrix_report::MatrixReport;
use support::relay::{error_of, RawClient, Relay};
use support::walrelay_cmd::{self, Finished, Walrelay};
use support::{poll, server, wal_files};

/// Segment size asked of initdb (PG 11+).
const SEGMENT_MB: u32 = 1;

/// Slot names used on the primary.
const BOOTSTRAP_SLOT: &str = "matrix_bootstrap";
const RECEIVE_SLOT: &str = "matrix_receive";
const SIDECAR_SLOT: &str = "matrix_sidecar";
const SCRATCH_SLOT: &str = "matrix_scratch";
const FAILOVER_SLOT: &str = "matrix_failover";

/// The tablespace created on the primary, and a table in it.
const TABLESPACE: &str = "matrix_ts";

/// Connection options that are newer than some majors' libpq (12: tcp_user_timeout, 13:
/// channel_binding, 14: sslsni, 16: sslcertmode, 17: sslnegotiation), all with values that change
/// nothing here. walrelay takes them, but must not hand them to a standby whose libpq would refuse the
/// whole `primary_conninfo` ("invalid connection option"). Values as libpq's defaults.
const NEWER_LIBPQ_OPTIONS: &str =
    "tcp_user_timeout=0 channel_binding=prefer sslsni=1 sslcertmode=allow sslnegotiation=postgres";

macro_rules! matrix_tests {
    ($($name:ident => $major:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                matrix($major);
            }
        )*
    };
}

matrix_tests! {
    matrix_pg10 => 10,
    matrix_pg11 => 11,
    matrix_pg12 => 12,
    matrix_pg13 => 13,
    matrix_pg14 => 14,
    matrix_pg15 => 15,
    matrix_pg16 => 16,
    matrix_pg17 => 17,
    matrix_pg18 => 18,
}

macro_rules! matrix_subset_tests {
    ($($name:ident => $major:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                matrix_subset($major);
            }
        )*
    };
}

matrix_subset_tests! {
    matrix_subset_pg10 => 10,
    matrix_subset_pg11 => 11,
    matrix_subset_pg12 => 12,
    matrix_subset_pg13 => 13,
    matrix_subset_pg14 => 14,
    matrix_subset_pg15 => 15,
    matrix_subset_pg16 => 16,
    matrix_subset_pg17 => 17,
    matrix_subset_pg18 => 18,
}

/// `walrelay subset` with `major` as the source into the newest major of the matrix, and as the
/// target from it.
fn matrix_subset(major: u32) {
    if !listed(major, "matrix subset") {
        return;
    }
    let newest = walrelay_testkit::matrix_majors()
        .into_iter()
        .max()
        .unwrap_or(major);
    let mut report = MatrixReport::subset(major);
    report.set_extra("newest", newest.into());
    for (feature, from, to) in [("source", major, newest), ("target", newest, major)] {
        let started = std::time::Instant::now();
        if let Some(versions) = report.run(feature, || subset_pair::check_pair(from, to)) {
            report.set_server_version(if from == major {
                &versions.0
            } else {
                &versions.1
            });
        }
        eprintln!(
            "matrix subset: {from} -> {to} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    report.finish();
}

/// What the primary's test data looks like, for the checks on the standbys.
struct Expected {
    /// Rows of `ts_data` (in the tablespace).
    ts_rows: u64,
    /// Rows of `after_bootstrap`.
    after_rows: u64,
}

/// Whether `WALRELAY_PG_MAJORS` lists `major`; a note when it does not.
fn listed(major: u32, label: &str) -> bool {
    let listed = matrix_includes(major);
    if !listed {
        eprintln!(
            "{label}: PostgreSQL {major} skipped: WALRELAY_PG_MAJORS ({:?}) does not list it",
            std::env::var("WALRELAY_PG_MAJORS").unwrap_or_default()
        );
    }
    listed
}

fn matrix(major: u32) {
    if !listed(major, "matrix") {
        return;
    }
    let mut report = MatrixReport::new(major);
    // Not a feature: without a primary nothing can be checked, and the test fails right here (the
    // report, dropped while panicking, still writes pgN.json with every feature not run).
    let mut primary = start_primary(major);
    if major >= 12 {
        // Left in postgresql.auto.conf by an earlier recovery to a target (a primary ignores
        // it): the bootstrapped standby must not inherit it, stop there and promote itself.
        primary.psql("ALTER SYSTEM SET recovery_target_time = '2020-01-01 00:00:00+00'");
    }
    let version = primary.psql("SHOW server_version");
    report.set_server_version(&version);
    assert_eq!(
        primary.server_version_num() / 10000,
        major,
        "PostgreSQL {major}: the server reports version {version}"
    );
    let seg = WalSegmentSize::new(primary.wal_segment_size()).expect("wal_segment_size");
    let expected_seg = if major == 10 {
        16 << 20
    } else {
        SEGMENT_MB << 20
    };
    assert_eq!(
        seg.bytes(),
        expected_seg,
        "PostgreSQL {major}: segment size"
    );

    report.run("check", || check_ready(&primary));

    // Test data: a tablespace with a table in it, and pgbench's tables for the load.
    let ts_old = primary.create_tablespace(TABLESPACE);
    primary.psql(&format!(
        "CREATE TABLE ts_data (i int, filler text) TABLESPACE {TABLESPACE}; \
         INSERT INTO ts_data SELECT g, repeat('t', 50) FROM generate_series(1, 1000) g;"
    ));
    primary.pgbench_init(1);
    let mut expected = Expected {
        ts_rows: 1000,
        after_rows: 0,
    };

    let replica = primary.scratch_path("replica");
    let ts_new = primary.scratch_path("tablespace-mapped");
    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(600))
            .clients(2)
            .rate(50),
    );
    let mut load = Some(load);
    // The bootstrap's slot position right after the bootstrap.
    let slot_after_bootstrap = report.run("bootstrap", || {
        let slot = bootstrap_under_load(&primary, major, &replica, &ts_old, &ts_new);
        let still = load.as_mut().is_some_and(|l| l.is_running());
        assert!(
            still,
            "pgbench stopped before the bootstrap ended: it did not run under load"
        );
        slot
    });
    let bootstrapped = slot_after_bootstrap.is_some();
    let load = load.expect("the load is stopped only after the standby check");

    if !bootstrapped {
        report.not_run("manifest", "bootstrap");
    } else if major < 13 {
        // (bootstrap checked that no backup_manifest appeared.)
        report.skip("manifest", "backup manifests exist from PostgreSQL 13");
    } else {
        report.run("manifest", || check_manifest(&primary, major, &replica));
    }

    let mut standby = None;
    let mut standby_replayed = None;
    if bootstrapped {
        standby = report.run("standby", || {
            let s = start_standby(&primary, &replica, &ts_new, load, &mut expected);
            standby_replayed = Some(s.replay_lsn().expect("replay position of the standby"));
            s
        });
    } else {
        load.stop();
        report.not_run("standby", "bootstrap");
    }

    let received = report.run("receive", || receive_switches(&primary, major, seg));

    match (slot_after_bootstrap, standby_replayed, received) {
        (Some(slot), Some(replayed), Some(received)) => {
            report.run("slots", || check_slots(&primary, slot, replayed, received));
        }
        _ => report.not_run("slots", "standby and receive"),
    }

    report.run("sidecar", || sidecar(&primary, &expected));

    report.run("relay", || relay_standby(&primary));

    match standby.as_mut() {
        Some(s) => {
            report.run("timeline", || follow_failover(&mut primary, s, major, seg));
        }
        None => report.not_run("timeline", "standby"),
    }

    drop(standby);
    drop(primary);
    report.finish();
}

// ------------------------------------------------------------------------------------------------
// setup

fn start_primary(major: u32) -> Cluster {
    // Keep the server's own copies of the segments receive compares against; the setting was renamed
    // in 13 (wal_keep_segments counts segments: 16 MB ones on PG 10).
    let keep = match major {
        10 => "wal_keep_segments = 64".to_string(),
        11 | 12 => "wal_keep_segments = 512".to_string(),
        _ => "wal_keep_size = '512MB'".to_string(),
    };
    Cluster::builder()
        .name(&format!("matrix{major}"))
        .major(major)
        .tcp_auth(walrelay_testkit::AuthMethod::ScramSha256)
        .superuser_password("su")
        .role(Role::new("replicator").password("rep").replication())
        .wal_segsize_mb(SEGMENT_MB)
        // The primary's crash safety is not under test; its fsyncs only slow two shared cores.
        .fsync(false)
        .conf(&keep)
        .conf("max_wal_size = '1GB'")
        .conf("checkpoint_timeout = '30min'")
        .start()
}

/// `walrelay ARGS` to completion, with a generous deadline.
fn walrelay(args: &[&str]) -> Finished {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    walrelay_cmd::run(&args, poll::timeout() * 2)
}

fn assert_success(out: &Finished, what: &str) {
    assert!(
        out.status.success(),
        "{what} exited with {}: {}",
        out.status,
        out.error_lines()
            .first()
            .copied()
            .unwrap_or_else(|| out.stderr.trim())
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The replication role's connection string with an application_name (found in pg_stat_replication).
fn conninfo_as(cluster: &Cluster, application_name: &str) -> String {
    format!(
        "{} application_name={application_name}",
        cluster.replication_conninfo()
    )
}

/// `pg_replication_slots.restart_lsn` (none if the slot is missing or has not reserved WAL).
fn slot_restart_lsn(cluster: &Cluster, slot: &str) -> Option<Lsn> {
    let rows = cluster.psql_rows(&format!(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    rows.first()
        .and_then(|r| r.first())
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().expect("restart_lsn"))
}

fn slot_exists(cluster: &Cluster, slot: &str) -> bool {
    cluster.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND slot_type = 'physical'"
    )) == "1"
}

/// Inserts `n` rows into `table` (created if missing) and returns the insert position after them.
fn insert_rows(cluster: &Cluster, table: &str, n: u32) -> Lsn {
    cluster.psql(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (i int, filler text); \
         INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, {n}) g;"
    ));
    cluster.current_wal_lsn()
}

/// SIGTERM and a clean exit.
fn stop(w: &mut Walrelay, what: &str) {
    w.signal(Signal::SIGTERM);
    let status = w.wait(poll::timeout());
    assert!(
        status.success(),
        "{what}: walrelay receive exited with {status} on SIGTERM"
    );
}

// ------------------------------------------------------------------------------------------------
// check

fn check_ready(primary: &Cluster) {
    let out = walrelay(&["check", "-d", &primary.replication_conninfo()]);
    assert_success(&out, "walrelay check");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("READY")),
        "walrelay check did not say READY:\n{}",
        out.stdout
    );
}

// ------------------------------------------------------------------------------------------------
// bootstrap

/// Returns the restart_lsn of the slot the bootstrap created.
fn bootstrap_under_load(
    primary: &Cluster,
    major: u32,
    replica: &Path,
    ts_old: &Path,
    ts_new: &Path,
) -> Lsn {
    // Let pgbench get going, so that the backup really runs under writes.
    let before = primary.current_wal_lsn();
    poll::wait_until(
        "pgbench to write",
        || primary.current_wal_lsn() > before,
        || "the primary's WAL position does not move".to_string(),
    );
    let conninfo = format!("{} {NEWER_LIBPQ_OPTIONS}", primary.replication_conninfo());
    let mapping = format!("{}={}", path(ts_old), path(ts_new));
    let mut args = vec![
        "bootstrap",
        "-d",
        &conninfo,
        "-D",
        path(replica),
        "-T",
        &mapping,
        "-C",
        "-S",
        BOOTSTRAP_SLOT,
        "-c",
        "fast",
    ];
    if major >= 17 {
        // pg_verifybackup 15 cannot read these manifests (version 2); SHA-256 lets sha256sum judge.
        args.extend(["--manifest-checksums", "SHA256"]);
    }
    let out = walrelay(&args);
    assert_success(&out, "walrelay bootstrap");
    let slot = slot_restart_lsn(primary, BOOTSTRAP_SLOT).unwrap_or_else(|| {
        panic!("bootstrap -C did not create slot {BOOTSTRAP_SLOT} with reserved WAL")
    });
    assert_eq!(
        replica.join("backup_manifest").is_file(),
        major >= 13,
        "backup_manifest presence in {}",
        replica.display()
    );
    check_standby_config(major, replica);
    check_tablespace_mapping(major, replica, ts_new);
    slot
}

/// recovery.conf with standby_mode for 10/11 (and no standby.signal, which they ignore); standby.signal
/// plus settings in postgresql.auto.conf for 12+ (and no recovery.conf, which stops 12+ from starting).
fn check_standby_config(major: u32, dir: &Path) {
    let recovery_conf = dir.join("recovery.conf");
    let signal = dir.join("standby.signal");
    let settings_file = if major < 12 {
        assert!(
            !signal.exists(),
            "standby.signal written for PostgreSQL {major}, which reads recovery.conf"
        );
        let text = fs::read_to_string(&recovery_conf)
            .unwrap_or_else(|e| panic!("no recovery.conf for PostgreSQL {major}: {e}"));
        assert!(
            text.lines().any(|l| l.trim() == "standby_mode = 'on'"),
            "recovery.conf lacks standby_mode = 'on':\n{text}"
        );
        text
    } else {
        assert!(
            !recovery_conf.exists(),
            "recovery.conf written for PostgreSQL {major}, which refuses to start with one"
        );
        assert!(signal.is_file(), "no standby.signal for PostgreSQL {major}");
        fs::read_to_string(dir.join("postgresql.auto.conf")).expect("postgresql.auto.conf")
    };
    assert!(
        settings_file
            .lines()
            .any(|l| l.trim() == format!("primary_slot_name = '{BOOTSTRAP_SLOT}'")),
        "primary_slot_name = '{BOOTSTRAP_SLOT}' missing:\n{settings_file}"
    );
    let conninfo = conf_value(&settings_file, "primary_conninfo")
        .unwrap_or_else(|| panic!("no primary_conninfo:\n{settings_file}"));
    let info = ConnInfo::parse(&conninfo)
        .unwrap_or_else(|e| panic!("primary_conninfo {conninfo:?} does not parse: {e}"));
    for (keyword, _) in info.iter() {
        assert!(
            keyword.introduced_in() <= major,
            "primary_conninfo has {} (libpq {}+), which the PostgreSQL {major} standby's libpq \
             refuses: {conninfo:?}",
            keyword.name(),
            keyword.introduced_in()
        );
    }
    for needed in [
        Keyword::Host,
        Keyword::Port,
        Keyword::User,
        Keyword::Password,
    ] {
        assert!(
            info.contains(needed),
            "primary_conninfo lacks {}: {conninfo:?}",
            needed.name()
        );
    }
    assert_eq!(
        info.contains(Keyword::Dbname),
        major >= 17,
        "dbname in primary_conninfo (wanted from 17, for slot synchronization): {conninfo:?}"
    );
}

/// The value of the last `name = '…'` line of a configuration file, unquoted.
fn conf_value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
        .map(|v| {
            let inner = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            // recovery_gen.c doubles quotes and backslashes: each pair stands for one.
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars().peekable();
            while let Some(c) = chars.next() {
                if (c == '\'' || c == '\\') && chars.peek() == Some(&c) {
                    chars.next();
                }
                out.push(c);
            }
            out
        })
}

/// pg_tblspc/OID points at the mapped directory, which holds this major's `PG_<major>_…` directory.
fn check_tablespace_mapping(major: u32, replica: &Path, ts_new: &Path) {
    let links: Vec<PathBuf> = fs::read_dir(replica.join("pg_tblspc"))
        .expect("pg_tblspc")
        .map(|e| e.expect("pg_tblspc entry").path())
        .collect();
    assert_eq!(links.len(), 1, "pg_tblspc entries: {links:?}");
    let target = fs::read_link(&links[0])
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", links[0].display()));
    assert_eq!(target, ts_new, "tablespace symlink target");
    let version_dirs: Vec<String> = fs::read_dir(ts_new)
        .unwrap_or_else(|e| panic!("mapped tablespace {}: {e}", ts_new.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        version_dirs.len() == 1 && version_dirs[0].starts_with(&format!("PG_{major}_")),
        "mapped tablespace {} holds {version_dirs:?}, not one PG_{major}_* directory",
        ts_new.display()
    );
}

// ------------------------------------------------------------------------------------------------
// manifest

fn check_manifest(primary: &Cluster, major: u32, replica: &Path) {
    match major {
        13..=16 => {
            // pg_verifybackup 15 parses only version-15 WAL; elsewhere it checks the files only.
            let opts = VerifyBackupOptions {
                no_parse_wal: major != 15,
                ..Default::default()
            };
            let out = pg_verifybackup(replica, &opts)
                .unwrap_or_else(|e| panic!("pg_verifybackup rejected the bootstrap: {e}"));
            assert!(out.contains("successfully verified"), "{out}");
        }
        _ => check_manifest_v2(primary, replica),
    }
}

/// Files pg_verifybackup does not compare (its default ignore list): walrelay (like pg_basebackup -R)
/// changes or adds them after the server made the manifest.
const NOT_VERIFIED: &[&str] = &[
    "backup_manifest",
    "postgresql.auto.conf",
    "standby.signal",
    "recovery.signal",
];

/// A version-2 manifest (17+) judged without pg_verifybackup: it names this system, its own SHA-256 is
/// right, and every file it lists has the listed size and SHA-256 (`sha256sum`, not our code).
fn check_manifest_v2(primary: &Cluster, replica: &Path) {
    let text = fs::read_to_string(replica.join("backup_manifest")).expect("backup_manifest");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    assert_eq!(
        manifest["PostgreSQL-Backup-Manifest-Version"], 2,
        "manifest version"
    );
    assert_eq!(
        manifest["System-Identifier"].as_u64(),
        Some(primary.system_identifier()),
        "manifest System-Identifier"
    );
    // Manifest-Checksum: SHA-256 of everything up to and including the newline before that key.
    let at = text
        .find("\"Manifest-Checksum\"")
        .expect("Manifest-Checksum key");
    let prefix = text[..at].to_string();
    let own = manifest["Manifest-Checksum"].as_str().expect("checksum");
    assert_eq!(sha256_of_bytes(prefix.as_bytes()), own, "Manifest-Checksum");

    let files = manifest["Files"].as_array().expect("Files");
    let mut wanted = Vec::new();
    for f in files {
        let p = f["Path"].as_str().expect("Path (no Encoded-Path expected)");
        if NOT_VERIFIED.contains(&p) {
            continue;
        }
        let size = f["Size"].as_u64().expect("Size");
        let on_disk = fs::metadata(replica.join(p))
            .unwrap_or_else(|e| panic!("{p} listed in the manifest: {e}"))
            .len();
        assert_eq!(on_disk, size, "size of {p}");
        assert_eq!(f["Checksum-Algorithm"], "SHA256", "algorithm of {p}");
        let sum = f["Checksum"].as_str().expect("Checksum").to_string();
        wanted.push((p.to_string(), sum));
    }
    assert!(
        wanted.len() > 100,
        "only {} files in the manifest",
        wanted.len()
    );
    let sums = sha256sum(replica, wanted.iter().map(|(p, _)| p.as_str()));
    for (p, sum) in &wanted {
        assert_eq!(sums.get(p.as_str()), Some(sum), "SHA-256 of {p}");
    }
}

/// `sha256sum` of files relative to `dir`: path → hex digest.
fn sha256sum<'a>(
    dir: &Path,
    files: impl Iterator<Item = &'a str>,
) -> std::collections::HashMap<String, String> {
    let out = Command::new("sha256sum")
        .current_dir(dir)
        .arg("--")
        .args(files)
        .output()
        .expect("run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("sha256sum output")
        .lines()
        .filter_map(|l| {
            let (sum, file) = l.split_once("  ")?;
            Some((file.to_string(), sum.to_string()))
        })
        .collect()
}

fn sha256_of_bytes(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("prefix"), bytes).expect("write manifest prefix");
    let sums = sha256sum(dir.path(), std::iter::once("prefix"));
    sums.get("prefix")
        .cloned()
        .expect("sha256sum of the prefix")
}

// ------------------------------------------------------------------------------------------------
// standby

fn start_standby(
    primary: &Cluster,
    replica: &Path,
    ts_new: &Path,
    load: walrelay_testkit::PgBenchRun,
    expected: &mut Expected,
) -> Cluster {
    // The configuration walrelay wrote is used as it is: the testkit only sets port and socket.
    let standby = primary.standby(replica).name("matrix-standby").start();
    assert!(standby.is_in_recovery(), "the standby is not in recovery");
    assert_eq!(
        standby.system_identifier(),
        primary.system_identifier(),
        "system identifier of the standby"
    );

    // Rows written after the bootstrap, also into the mapped tablespace, while pgbench still runs.
    primary.psql("INSERT INTO ts_data SELECT g, 'after' FROM generate_series(1001, 1500) g");
    expected.ts_rows = 1500;
    let lsn = insert_rows(primary, "after_bootstrap", 300);
    expected.after_rows = 300;
    standby.wait_replay(lsn);
    assert_eq!(
        standby.psql("SELECT count(*) FROM after_bootstrap"),
        "300",
        "rows inserted after the bootstrap"
    );
    assert_eq!(
        standby.psql("SELECT count(*) FROM ts_data"),
        "1500",
        "rows of the table in the tablespace"
    );
    assert_eq!(
        standby.psql(&format!(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = '{TABLESPACE}'"
        )),
        path(ts_new),
        "tablespace location on the standby"
    );
    let row = server::wait_streaming(primary, "walreceiver");
    assert!(row.flush_lsn.is_some(), "standby reports no flush position");

    // pgbench stops; the standby ends with exactly the primary's data.
    load.stop();
    standby.catch_up(primary);
    let state = "SELECT count(*), sum(delta) FROM pgbench_history";
    let on_primary = primary.psql(state);
    assert!(
        !on_primary.starts_with("0|"),
        "pgbench wrote no transaction: {on_primary}"
    );
    assert_eq!(standby.psql(state), on_primary, "pgbench_history");
    let accounts = "SELECT sum(abalance), count(*) FROM pgbench_accounts";
    assert_eq!(
        standby.psql(accounts),
        primary.psql(accounts),
        "pgbench_accounts"
    );
    assert!(standby.is_in_recovery(), "the standby promoted itself");
    standby
}

// ------------------------------------------------------------------------------------------------
// receive

/// What `receive` got: the last segment it completed.
#[derive(Clone, Copy, Debug)]
struct Received {
    last_complete_end: Lsn,
}

fn receive_switches(primary: &Cluster, major: u32, seg: WalSegmentSize) -> Received {
    let archive = primary.scratch_path("archive");
    fs::create_dir_all(&archive).expect("archive directory");
    let conninfo = conninfo_as(primary, "matrix_receive");

    let out = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-D",
        path(&archive),
        "-S",
        RECEIVE_SLOT,
        "--create-slot",
    ]);
    assert_success(&out, "receive --create-slot");
    let reserved = slot_restart_lsn(primary, RECEIVE_SLOT)
        .unwrap_or_else(|| panic!("receive --create-slot left no slot with reserved WAL"));
    // WAL written between the slot's creation and the first start: the slot holds it for the
    // archive, which must begin at the slot's restart_lsn, not at the server's position.
    insert_rows(primary, "before_first_start", 100);
    primary.switch_wal();

    let args = walrelay_cmd::receive_args(&[
        "-d",
        &conninfo,
        "-D",
        path(&archive),
        "-S",
        RECEIVE_SLOT,
        "-s",
        "1",
    ]);
    let mut w = Walrelay::start("receive", &args);
    server::wait_streaming(primary, "matrix_receive");
    let timeline = primary.current_timeline();
    let mut last = None;
    for i in 0..3 {
        insert_rows(primary, "received", 200 + i);
        let end = primary.switch_wal();
        last = Some(wal_files::wait_complete(
            &archive, end, timeline, seg, &mut w,
        ));
    }
    let last = last.expect("three switches");
    let last_end = last.end_lsn(seg);
    // The slot follows what walrelay flushed (status every second).
    poll::wait_until(
        &format!("slot {RECEIVE_SLOT} to reach {last_end}"),
        || slot_restart_lsn(primary, RECEIVE_SLOT).is_some_and(|l| l >= last_end),
        || format!("restart_lsn {:?}", slot_restart_lsn(primary, RECEIVE_SLOT)),
    );
    stop(&mut w, "receive");

    let compared = wal_files::assert_identical_to_server(&archive, &primary.pg_wal_dir(), seg);
    assert!(compared >= 3, "only {compared} complete segments");
    let (first, _) = wal_files::assert_contiguous(&archive, TimelineId(timeline), seg);
    // The start comes from the slot: READ_REPLICATION_SLOT from 15 on, pg_replication_slots
    // before (where pg_receivewal starts at the server's position and leaves a hole).
    assert!(
        seg.segment_start(first) <= reserved,
        "receive started at segment {}, after the slot's restart_lsn {reserved}",
        first.0
    );
    if major == 15 {
        wal_files::assert_waldump(&archive, None, seg.segment_start(first), last_end);
    }
    Received {
        last_complete_end: last_end,
    }
}

// ------------------------------------------------------------------------------------------------
// slots

fn check_slots(primary: &Cluster, after_bootstrap: Lsn, standby_replayed: Lsn, received: Received) {
    assert!(
        standby_replayed > after_bootstrap,
        "the standby replayed only to {standby_replayed}, not past the slot's {after_bootstrap}"
    );
    // The bootstrap's slot serves the standby: it moves at least to what the standby replayed (the
    // standby reports its flush position right after each write, so this takes no status interval).
    poll::wait_until(
        &format!("slot {BOOTSTRAP_SLOT} to reach the standby's replay position {standby_replayed}"),
        || slot_restart_lsn(primary, BOOTSTRAP_SLOT).is_some_and(|l| l >= standby_replayed),
        || {
            format!(
                "restart_lsn {:?}",
                slot_restart_lsn(primary, BOOTSTRAP_SLOT)
            )
        },
    );
    let restart = slot_restart_lsn(primary, RECEIVE_SLOT)
        .unwrap_or_else(|| panic!("slot {RECEIVE_SLOT} is gone"));
    assert!(
        restart >= received.last_complete_end,
        "slot {RECEIVE_SLOT} stayed at {restart}, behind {}",
        received.last_complete_end
    );

    // Creating an existing slot fails with one line, unless --if-not-exists; --drop-slot drops.
    let conninfo = primary.replication_conninfo();
    let again = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-S",
        RECEIVE_SLOT,
        "--create-slot",
    ]);
    assert!(
        !again.status.success() && again.error_lines().len() == 1,
        "creating the existing slot {RECEIVE_SLOT}: exit {}, stderr:\n{}",
        again.status,
        again.stderr
    );
    assert!(
        again.error_lines()[0].contains("already exists"),
        "{}",
        again.error_lines()[0]
    );
    let ok = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-S",
        RECEIVE_SLOT,
        "--create-slot",
        "--if-not-exists",
    ]);
    assert_success(&ok, "receive --create-slot --if-not-exists");
    let created = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-S",
        SCRATCH_SLOT,
        "--create-slot",
    ]);
    assert_success(&created, "receive --create-slot");
    assert!(
        slot_exists(primary, SCRATCH_SLOT),
        "slot {SCRATCH_SLOT} not created"
    );
    let dropped = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-S",
        SCRATCH_SLOT,
        "--drop-slot",
    ]);
    assert_success(&dropped, "receive --drop-slot");
    assert!(
        !slot_exists(primary, SCRATCH_SLOT),
        "slot {SCRATCH_SLOT} still there after --drop-slot"
    );
}

// ------------------------------------------------------------------------------------------------
// sidecar

/// Where the primary's tablespace is (its `pg_tblspc` link).
fn primary_tablespace(primary: &Cluster) -> PathBuf {
    fs::read_dir(primary.data_dir().join("pg_tblspc"))
        .expect("primary pg_tblspc")
        .map(|e| fs::read_link(e.expect("entry").path()).expect("tablespace link"))
        .next()
        .expect("the primary's tablespace")
}

/// `walrelay bootstrap -d CONNINFO -D DIR -c fast EXTRA…` with the primary's tablespace mapped
/// to a fresh directory named `tablespace` (the standby runs on the same machine).
fn bootstrap_mapped(
    primary: &Cluster,
    conninfo: &str,
    dir: &Path,
    tablespace: &str,
    extra: &[&str],
) -> Finished {
    let ts_new = primary.scratch_path(tablespace);
    let mapping = format!("{}={}", path(&primary_tablespace(primary)), path(&ts_new));
    let mut args = vec![
        "bootstrap",
        "-d",
        conninfo,
        "-D",
        path(dir),
        "-T",
        &mapping,
        "-c",
        "fast",
    ];
    args.extend_from_slice(extra);
    walrelay(&args)
}

fn sidecar(primary: &Cluster, expected: &Expected) {
    let dir = primary.scratch_path("sidecar");
    let conninfo = primary.replication_conninfo();
    let out = bootstrap_mapped(
        primary,
        &conninfo,
        &dir,
        "tablespace-sidecar",
        &["-C", "-S", SIDECAR_SLOT, "--sidecar"],
    );
    assert_success(&out, "bootstrap --sidecar");
    let auto = fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap_or_default();
    let recovery = fs::read_to_string(dir.join("recovery.conf")).unwrap_or_default();
    for text in [&auto, &recovery] {
        if let Some(v) = conf_value(text, "primary_conninfo") {
            assert!(v.is_empty(), "a sidecar standby got primary_conninfo {v:?}");
        }
    }

    let args = walrelay_cmd::receive_args(&[
        "-d",
        &conninfo_as(primary, "matrix_sidecar"),
        "--pg-wal",
        path(&dir),
        "-S",
        SIDECAR_SLOT,
        "-s",
        "1",
    ]);
    let mut w = Walrelay::start("receive --pg-wal", &args);
    let standby = primary.standby(&dir).name("matrix-sidecar").start();
    assert!(
        standby.is_in_recovery(),
        "the sidecar standby is not in recovery"
    );
    assert_eq!(
        standby.psql("SELECT count(*) FROM pg_stat_wal_receiver"),
        "0",
        "the sidecar standby runs a walreceiver of its own"
    );
    let lsn = insert_rows(primary, "sidecar_rows", 250);
    // The standby reads what walrelay writes; it needs no segment switch to see it.
    poll::wait_until(
        &format!("the sidecar standby to replay to {lsn}"),
        || {
            w.assert_running();
            standby.replay_lsn().is_some_and(|r| r >= lsn)
        },
        || format!("replayed {:?}", standby.replay_lsn()),
    );
    assert_eq!(standby.psql("SELECT count(*) FROM sidecar_rows"), "250");
    assert_eq!(
        standby.psql("SELECT count(*) FROM ts_data"),
        expected.ts_rows.to_string(),
        "tablespace rows on the sidecar standby"
    );
    if expected.after_rows > 0 {
        assert_eq!(
            standby.psql("SELECT count(*) FROM after_bootstrap"),
            expected.after_rows.to_string()
        );
    }
    drop(standby);
    stop(&mut w, "receive --pg-wal");
    // The slot is not needed any more and would hold WAL for the rest of the test.
    let dropped = walrelay(&[
        "receive",
        "-d",
        &conninfo,
        "-S",
        SIDECAR_SLOT,
        "--drop-slot",
    ]);
    assert_success(&dropped, "receive --drop-slot");
}

// ------------------------------------------------------------------------------------------------
// relay

/// A standby of this major behind `walrelay serve`, seeded through the relay too.
fn relay_standby(primary: &Cluster) {
    let archive = primary.scratch_path("relay-archive");
    let mut relay = Relay::start(
        &conninfo_as(primary, "matrix_relay"),
        &archive,
        &["--status-interval", "1"],
    );
    server::wait_streaming(primary, "matrix_relay");
    let senders_before = primary.psql("SELECT count(*) FROM pg_stat_replication");

    let dir = primary.scratch_path("relay-standby");
    let conninfo = format!(
        "{} {NEWER_LIBPQ_OPTIONS}",
        relay.conninfo("replicator", Some("rep"))
    );
    let out = bootstrap_mapped(primary, &conninfo, &dir, "tablespace-relay", &[]);
    assert_success(&out, "walrelay bootstrap through walrelay serve");
    let standby = primary.standby(&dir).name("matrix-relay-standby").start();
    let lsn = insert_rows(primary, "through_relay", 400);
    poll::wait_until(
        &format!("the standby behind the relay to replay to {lsn}"),
        || {
            relay.w.assert_running();
            standby.replay_lsn().is_some_and(|r| r >= lsn)
        },
        || format!("replayed {:?}", standby.replay_lsn()),
    );
    assert_eq!(standby.psql("SELECT count(*) FROM through_relay"), "400");
    let receiver = standby.psql("SELECT conninfo FROM pg_stat_wal_receiver");
    assert!(
        receiver.contains(&format!("port={}", relay.port)),
        "the standby streams from {receiver:?}, not from the relay"
    );
    assert_eq!(
        primary.psql("SELECT count(*) FROM pg_stat_replication"),
        senders_before,
        "the standby behind the relay took a walsender of the primary"
    );
    drop(standby);
    // The primary's grammar through the relay: READ_REPLICATION_SLOT came in 15 (a client of a
    // newer major must meet the same syntax error as at the primary itself).
    let (mut raw, _) = RawClient::login(relay.addr(), "replicator");
    raw.query("READ_REPLICATION_SLOT matrix_absent");
    let answer = raw.until_ready();
    let refused = error_of(&answer).map(|e| e.code.clone());
    if primary.server_version_num() >= 150_000 {
        assert_eq!(refused, None, "{answer:?}");
    } else {
        assert_eq!(refused.as_deref(), Some("42601"), "{answer:?}");
    }
    drop(raw);
    relay.assert_healthy();
    stop(&mut relay.w, "serve");
}

// ------------------------------------------------------------------------------------------------
// timeline following

fn follow_failover(primary: &mut Cluster, standby: &mut Cluster, major: u32, seg: WalSegmentSize) {
    let archive = primary.scratch_path("archive-timeline");
    fs::create_dir_all(&archive).expect("archive directory");
    // The HA set-up: both servers in a host list, the one that accepts writes wins.
    let hosts = format!(
        "{} target_session_attrs=read-write application_name=matrix_timeline connect_timeout=5",
        primary
            .replication_conninfo()
            .replacen("host=127.0.0.1", "host=127.0.0.1,127.0.0.1", 1)
            .replacen(
                &format!("port={}", primary.port()),
                &format!("port={},{}", primary.port(), standby.port()),
                1
            )
    );
    assert!(hosts.contains(','), "{hosts}");
    // --failover (PostgreSQL 11+): the slot is kept on the standby too.
    let keep_slot = major >= 11;
    let mut args = vec!["-d", hosts.as_str(), "-D", path(&archive), "-s", "1"];
    let create_failover_slot = || {
        walrelay_cmd::run(
            &walrelay_cmd::receive_args(&[
                "-d",
                &hosts,
                "-S",
                FAILOVER_SLOT,
                "--create-slot",
                "--failover",
            ]),
            poll::timeout(),
        )
    };
    if keep_slot {
        let created = create_failover_slot();
        assert_success(&created, "receive --create-slot --failover");
        assert!(
            slot_restart_lsn(standby, FAILOVER_SLOT).is_some(),
            "--failover created no slot on the standby"
        );
        args.extend_from_slice(&["-S", FAILOVER_SLOT, "--failover"]);
    } else {
        // Refused before any slot exists: one left on the standby would pin its WAL for ever.
        let refused = create_failover_slot();
        assert_eq!(refused.code(), Some(4), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("pg_replication_slot_advance"),
            "{}",
            refused.stderr
        );
        assert!(!slot_exists(primary, FAILOVER_SLOT) && !slot_exists(standby, FAILOVER_SLOT));
    }
    let mut w = Walrelay::start(
        "receive through a failover",
        &walrelay_cmd::receive_args(&args),
    );
    server::wait_streaming(primary, "matrix_timeline");

    insert_rows(primary, "timeline_rows", 100);
    let end1 = primary.switch_wal();
    standby.wait_replay(end1);
    wal_files::wait_complete(&archive, end1, 1, seg, &mut w);
    if keep_slot {
        poll::wait_until(
            "the standby's copy of the slot to follow the archive",
            || slot_restart_lsn(standby, FAILOVER_SLOT).is_some_and(|l| l >= end1),
            || format!("{:?}", slot_restart_lsn(standby, FAILOVER_SLOT)),
        );
    }

    // The primary crashes; the standby is promoted; walrelay finds it through the host list.
    primary.stop(StopMode::Immediate);
    standby.promote();
    assert_eq!(standby.current_timeline(), 2, "timeline after promotion");
    insert_rows(standby, "timeline_rows", 100);
    let end2 = standby.switch_wal();
    let on_tli2 = wal_files::wait_complete(&archive, end2, 2, seg, &mut w);

    let history = fs::read(archive.join("00000002.history")).unwrap_or_else(|e| {
        panic!(
            "00000002.history was not stored ({e}): {}",
            wal_files::listing(&archive)
        )
    });
    let theirs = fs::read(standby.pg_wal_dir().join("00000002.history"))
        .expect("the promoted server's 00000002.history");
    assert_eq!(
        history, theirs,
        "00000002.history differs from the server's"
    );
    if keep_slot {
        let active = standby.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{FAILOVER_SLOT}'"
        ));
        assert_eq!(
            active, "t",
            "walrelay does not stream through the kept slot"
        );
    }
    stop(&mut w, "receive through a failover");

    let n2 = wal_files::assert_identical_on_timeline(
        &archive,
        &standby.pg_wal_dir(),
        seg,
        Some(TimelineId(2)),
    );
    assert!(
        n2 >= 1 && wal_files::has_complete(&archive, on_tli2, seg),
        "no complete timeline-2 segment: {}",
        wal_files::listing(&archive)
    );
}
