//! `walrelay bootstrap` end to end: the real binary against real PostgreSQL clusters
//! (walrelay-testkit), judged by PostgreSQL's own tools — `pg_verifybackup` (with its WAL check), a
//! standby started on the result that must replay to the primary's position, `pg_dumpall` of both
//! compared once the load stops, `pg_amcheck` on the standby — and, for every refusal, by the exit
//! code, a single one-line error and the state of the target afterwards.
//!
//! | test | proves |
//! |---|---|
//! | [`under_pgbench_the_result_verifies_replays_and_dumps_identically`] | the main flow while pgbench writes; an empty 0755 target is made 0700 |
//! | [`mapped_tablespace_and_created_slot`] | `-T` puts the files under the new path and the link there; `-S -C` slot is used by the standby and moves |
//! | [`sidecar_feeds_a_standby_through_receive`] | `--sidecar` + `walrelay receive --pg-wal`: rows appear on the standby in seconds; the standby promoted: the sidecar stops feeding it (exit 4, one line) |
//! | [`passwords_reach_primary_conninfo_only_when_typed`] | `PGPASSWORD` stays out of the data directory, `password=` in `-d` goes in (0600); a wrong password is refused without echo |
//! | [`input_errors_leave_the_target_untouched`] | bad `-D`, `-T`, `-S`/`-C`, connection options: refused before connecting, target byte for byte as before |
//! | [`read_only_target_is_refused`] | a read-only file system (root cannot write it either) |
//! | [`server_refusals_clean_up_and_keep_what_was_there`] | unknown slot, existing slot with `-C` (kept as it was), a slot another client streams from (left streaming); an empty target handed back as it was |
//! | [`wal_level_minimal_is_refused_with_the_fix`] | the error names the settings to change |
//! | [`one_free_wal_sender_is_not_enough_for_stream_but_is_for_fetch`] | the advice in the error works |
//! | [`checksum_failure_on_the_primary_names_the_file`] | data checksums on, a damaged page: file named, target and created slot gone |
//! | [`wal_removed_before_it_was_copied`] | `-X fetch` with recycled WAL; the stream's temporary slot keeps WAL while the stream is stopped, and an invalidated one is explained |
//! | [`manifest_mismatch_from_a_fake_server`] | a manifest that does not match the files (scripted server) |
//! | [`disk_full_is_reported_and_cleaned`] | a 6 MB tmpfs |
//! | [`sigint_and_sigterm_mid_backup_clean_up`] | target removed, temporary slot gone, created slot dropped |

// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use walrelay_testkit::{
    assert_same_dumpall, assert_tree_owned_by, oracle::normalize_dump, pg_controldata,
    pg_verifybackup, server_user_ids, AuthMethod, ClientTools, Cluster, PgBench,
    VerifyBackupOptions,
};

use support::bootstrap_cli::{absent, path_arg, Bootstrap, Outcome};
use support::scratch_mount::Tmpfs;
use support::tree_snapshot::{assert_unchanged, snapshot};
use support::walrelay_cmd::{receive_args, Walrelay};
use support::{exit_code, poll, server};

/// 1 MB segments: a fresh cluster is small, and WAL can be recycled quickly where a test wants it.
const SEGMENT_MB: u32 = 1;

/// A primary whose own durability is not under test (fsync off spares two shared cores).
fn primary_builder(name: &str) -> walrelay_testkit::ClusterBuilder {
    Cluster::builder()
        .name(name)
        .wal_segsize_mb(SEGMENT_MB)
        .fsync(false)
        .conf("checkpoint_timeout = '30min'")
}

fn primary(name: &str) -> Cluster {
    primary_builder(name).start()
}

/// The server user's ids (the tests run as root, like an operator seeding a standby).
fn postgres_ids() -> (u32, u32) {
    server_user_ids()
        .unwrap()
        .expect("these tests run as root, with a postgres OS user")
}

/// An empty directory made the way an operator would (`install -d -o postgres -m 0755`).
fn empty_dir_for_postgres(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    let (uid, gid) = postgres_ids();
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// pg_verifybackup with its WAL check: the manifest matches every file, and the WAL from the backup's
/// start to its end parses.
fn assert_verifies(dir: &Path) {
    let out = pg_verifybackup(dir, &VerifyBackupOptions::default())
        .unwrap_or_else(|e| panic!("pg_verifybackup {}: {e}", dir.display()));
    assert!(out.contains("backup successfully verified"), "{out}");
}

/// The streaming-standby settings: PostgreSQL 12+ has no recovery.conf (a leftover one stops it from
/// starting), a `standby.signal`, and the settings at the end of `postgresql.auto.conf`.
fn standby_settings(dir: &Path) -> String {
    assert!(
        !dir.join("recovery.conf").exists(),
        "a PostgreSQL 12+ standby got a recovery.conf"
    );
    let signal = dir.join("standby.signal");
    assert!(signal.is_file(), "no standby.signal");
    assert_eq!(mode_of(&signal), 0o600);
    let auto = dir.join("postgresql.auto.conf");
    assert_eq!(
        mode_of(&auto),
        0o600,
        "postgresql.auto.conf may hold a password"
    );
    fs::read_to_string(auto).unwrap()
}

/// The `primary_conninfo` value written last, unquoted (`''` is a quote in a configuration file).
fn primary_conninfo(settings: &str) -> String {
    settings
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("primary_conninfo = '"))
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no primary_conninfo in:\n{settings}"))
        .replace("''", "'")
}

fn slot_names(primary: &Cluster) -> Vec<String> {
    primary
        .psql_rows("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// Waits until a standby (not walrelay) streams from `primary`.
fn wait_standby_streaming(primary: &Cluster) {
    poll::wait_until(
        "a standby streaming from the primary",
        || {
            primary.psql(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE state = 'streaming' AND application_name <> 'walrelay'",
            ) == "1"
        },
        || primary.psql("SELECT application_name, state FROM pg_stat_replication"),
    );
}

/// `pg_amcheck` (heap and B-tree checks of every relation) on `cluster`'s `postgres` database, where
/// the amcheck extension was created on the primary. Skipped if the tool is missing.
fn assert_amcheck_clean(cluster: &Cluster) {
    let tool = ClientTools::debian().unwrap().tool("pg_amcheck");
    if !tool.exists() {
        eprintln!("skipping pg_amcheck: {} not found", tool.display());
        return;
    }
    let out = Command::new(&tool)
        .arg("-h")
        .arg(cluster.socket_dir())
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", cluster.superuser(), "--heapallindexed", "postgres"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "pg_amcheck on {} found problems ({}):\n{stdout}\n{stderr}",
        cluster.name(),
        out.status
    );
}

// ------------------------------------------------------------------------------- the main flows

/// Issue "bootstrap" 1 (and 7 without a slot): bootstrap while pgbench writes, with a fast
/// checkpoint, into an empty 0755 directory owned by postgres. pg_verifybackup accepts the result
/// (including WAL parsing), the standby started on it reaches the primary's position while pgbench
/// still writes, and once the load stops both dump identically and pg_amcheck finds nothing.
#[test]
fn under_pgbench_the_result_verifies_replays_and_dumps_identically() {
    let primary = primary_builder("bs-pgbench").data_checksums(true).start();
    primary.pgbench_init(2);
    primary.psql("CREATE EXTENSION amcheck");
    let target = primary.scratch_path("standby");
    empty_dir_for_postgres(&target, 0o755);

    let load = primary.pgbench(&PgBench::duration(Duration::from_secs(12)).clients(2));
    std::thread::sleep(Duration::from_millis(500));
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast"])
        .run();
    let summary = out.assert_succeeded();
    assert!(summary.contains("start it with pg_ctl start"), "{summary}");
    // The directory PostgreSQL would refuse (0755) was tightened, and the log says so.
    assert!(
        out.stderr.contains("had mode 0755, set it to 0700"),
        "{}",
        out.stderr
    );
    assert_eq!(mode_of(&target), 0o700);
    assert_tree_owned_by(&target, postgres_ids());

    assert_verifies(&target);
    let control = pg_controldata(&target).unwrap();
    assert_eq!(
        control.system_identifier(),
        Some(primary.system_identifier())
    );
    let settings = standby_settings(&target);
    let conninfo = primary_conninfo(&settings);
    assert!(
        conninfo.contains(&format!("port={}", primary.port()))
            && conninfo.contains("host=127.0.0.1"),
        "{conninfo}"
    );
    assert!(!settings.contains("primary_slot_name"), "{settings}");
    // The stream's temporary slot went with its connection.
    assert!(
        slot_names(&primary).is_empty(),
        "{:?}",
        slot_names(&primary)
    );

    let standby = primary.standby(&target).name("bs-pgbench-standby").start();
    assert!(standby.is_in_recovery());
    wait_standby_streaming(&primary);
    let mut load = load;
    let reached = standby.wait_replay(primary.current_wal_lsn());
    eprintln!(
        "standby replayed to {reached}; pgbench still writing: {}",
        load.is_running()
    );
    let summary = load.wait().expect("pgbench");
    assert!(summary.transactions > 0, "pgbench did nothing: {summary:?}");
    standby.catch_up(&primary);
    assert_same_dumpall(&primary, &standby);
    assert_amcheck_clean(&standby);
}

/// Issue "bootstrap" 2 (and 7 with a slot): a tablespace mapped with `-T` lands under the new path
/// with `pg_tblspc/<oid>` pointing there (the primary's own directory gets nothing), and a slot made
/// with `-S -C` is named in the standby's settings, used by the standby, and moves as it streams.
#[test]
fn mapped_tablespace_and_created_slot() {
    let primary = primary("bs-tblspc");
    primary.pgbench_init(1);
    let ts_dir = primary.create_tablespace("ts1");
    primary.psql(
        "CREATE TABLE ts_t (i int, filler text) TABLESPACE ts1; \
         INSERT INTO ts_t SELECT g, repeat('t', 200) FROM generate_series(1, 5000) g; \
         CHECKPOINT;",
    );
    let rel = primary.psql("SELECT pg_relation_filepath('ts_t')");
    let oid = primary.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let names_before: Vec<PathBuf> = snapshot(&ts_dir).into_keys().collect();
    let mapped = primary.scratch_path("ts1-mapped");
    let target = primary.scratch_path("standby");

    let load = primary.pgbench(&PgBench::duration(Duration::from_secs(6)).clients(1));
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&[
            "-c",
            "fast",
            "-T",
            &format!("{}={}", path_arg(&ts_dir), path_arg(&mapped)),
            "-S",
            "bs_slot",
            "-C",
        ])
        .run();
    let summary = out.assert_succeeded();
    assert!(summary.contains("slot \"bs_slot\" created"), "{summary}");

    // The link points at the new location, and the relation's file is there.
    let link = target.join("pg_tblspc").join(&oid);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), mapped);
    let in_mapped = mapped.join(
        Path::new(&rel)
            .strip_prefix(format!("pg_tblspc/{oid}"))
            .unwrap(),
    );
    assert!(in_mapped.is_file(), "{} missing", in_mapped.display());
    assert_eq!(
        fs::metadata(&in_mapped).unwrap().len(),
        fs::metadata(ts_dir.join(in_mapped.strip_prefix(&mapped).unwrap()))
            .unwrap()
            .len()
    );
    let names_after: Vec<PathBuf> = snapshot(&ts_dir).into_keys().collect();
    assert_eq!(
        names_before, names_after,
        "the primary's tablespace directory was written"
    );
    assert_verifies(&target);

    let settings = standby_settings(&target);
    assert!(
        settings.contains("primary_slot_name = 'bs_slot'"),
        "{settings}"
    );
    let after_bootstrap = server::slot(&primary, "bs_slot").expect("slot bs_slot");
    let r0 = after_bootstrap.restart_lsn.expect("the slot reserves WAL");
    assert!(!after_bootstrap.active, "{after_bootstrap:?}");

    let standby = primary.standby(&target).name("bs-tblspc-standby").start();
    wait_standby_streaming(&primary);
    load.wait().expect("pgbench");
    primary.psql("INSERT INTO ts_t SELECT g, 'after' FROM generate_series(1, 1000) g");
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM ts_t"), "6000");
    let moved = poll::wait_for(
        "the slot's restart_lsn to move past where bootstrap left it",
        poll::timeout(),
        Duration::from_millis(200),
        || {
            server::slot(&primary, "bs_slot")
                .filter(|s| s.active && s.restart_lsn.is_some_and(|l| l > r0))
        },
        || format!("{:?}", server::slot(&primary, "bs_slot")),
    );
    eprintln!("slot bs_slot: {r0} after bootstrap, {moved:?} with the standby");
    // The same data; the tablespace's location differs, as it was mapped to.
    let on_primary = normalize_dump(&primary.dumpall());
    let on_standby = normalize_dump(&standby.dumpall()).replace(
        &format!("LOCATION '{}'", path_arg(&mapped)),
        &format!("LOCATION '{}'", path_arg(&ts_dir)),
    );
    assert!(
        on_primary == on_standby,
        "pg_dumpall of primary and standby differ beyond the tablespace location"
    );
    assert!(on_primary.contains("CREATE TABLESPACE ts1"));
}

/// Issue "bootstrap" 4: `--sidecar -S s -C`, the standby started, `walrelay receive --pg-wal DIR -S
/// s` feeding it; rows committed on the primary are visible on the standby within seconds, without
/// a segment switch. Then the standby is promoted: the sidecar stops feeding it (exit 4).
#[test]
fn sidecar_feeds_a_standby_through_receive() {
    let primary = primary("bs-sidecar");
    let target = primary.scratch_path("standby");
    Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast", "--sidecar", "-S", "side", "-C"])
        .run()
        .assert_succeeded();
    let settings = standby_settings(&target);
    // The standby must not start streaming on its own: its connection settings are emptied.
    assert_eq!(primary_conninfo(&settings), "", "{settings}");
    let standby = primary.standby(&target).name("bs-sidecar-standby").start();
    assert!(standby.is_in_recovery());

    let mut receive = Walrelay::start(
        "sidecar receive",
        &receive_args(&[
            "-d",
            &primary.conninfo(),
            "--pg-wal",
            &path_arg(&target),
            "-S",
            "side",
            "--status-interval",
            "1",
        ]),
    );
    server::wait_streaming(&primary, "walrelay");
    primary
        .psql("CREATE TABLE side_t (i int); INSERT INTO side_t SELECT generate_series(1, 1000);");
    let committed = Instant::now();
    poll::wait_for(
        "the rows on the sidecar-fed standby",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            receive.assert_running();
            (standby.try_psql("SELECT count(*) FROM side_t").ok()? == "1000").then_some(())
        },
        || format!("standby log:\n{}", standby.log_tail(20)),
    );
    eprintln!(
        "rows visible on the standby {:.1} s after the commit",
        committed.elapsed().as_secs_f64()
    );
    // The slot follows what receive made durable.
    assert!(server::slot(&primary, "side").unwrap().active);

    // A failover: the standby is promoted while the old primary goes on. The sidecar stops
    // feeding it (one line, exit 4) instead of writing the old primary's WAL into the pg_wal the
    // new primary now writes its own timeline into.
    let mut standby = standby;
    standby.promote();
    let stopped = receive.wait(poll::timeout());
    let log = receive.full_log();
    assert_eq!(stopped.code(), Some(exit_code::SERVER_STATE), "{log}");
    let errors = support::walrelay_cmd::error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("was promoted"), "{}", errors[0]);
    primary.psql("INSERT INTO side_t SELECT generate_series(1, 10); SELECT pg_switch_wal();");
    assert_eq!(standby.psql("SELECT count(*) FROM side_t"), "1000");
}

/// Issue "bootstrap" 5 and the wrong-password case: a password from `PGPASSWORD` is used to connect
/// but never written; one typed into `-d` is written (the files are 0600) and works for the standby;
/// a wrong one is refused with one line that does not repeat it.
#[test]
fn passwords_reach_primary_conninfo_only_when_typed() {
    const PASSWORD: &str = "Sup3r-s3cret-pw";
    let primary = primary_builder("bs-password")
        .tcp_auth(AuthMethod::ScramSha256)
        .superuser_password(PASSWORD)
        .start();
    let no_password = primary.conninfo_for("postgres", None);
    assert!(!no_password.contains(PASSWORD));

    let wrong = primary.conninfo_for("postgres", Some("Wr0ng-guess-42"));
    let target = primary.scratch_path("wrong");
    let out = Bootstrap::new(&wrong, &target).args(&["-w"]).run();
    out.assert_failed(
        exit_code::CONNECTION,
        &["password authentication failed for user \"postgres\""],
    );
    out.assert_not_printed("Wr0ng-guess-42");
    assert!(!target.exists());

    let out = Bootstrap::new(&no_password, &target).args(&["-w"]).run();
    out.assert_failed(exit_code::CONNECTION, &["password"]);
    assert!(!target.exists());

    // From the environment: connects, writes no password.
    let from_env = primary.scratch_path("from-env");
    let out = Bootstrap::new(&no_password, &from_env)
        .args(&["-c", "fast", "-w"])
        .env("PGPASSWORD", PASSWORD)
        .run();
    out.assert_succeeded();
    out.assert_not_printed(PASSWORD);
    assert!(
        out.stderr
            .contains("without the password used for this run"),
        "{}",
        out.stderr
    );
    let settings = standby_settings(&from_env);
    assert!(!settings.contains(PASSWORD), "{settings}");
    assert!(
        !primary_conninfo(&settings).contains("password"),
        "{settings}"
    );

    // Typed into the connection string: written, as pg_basebackup -R does.
    let typed = primary.scratch_path("typed");
    let out = Bootstrap::new(&primary.conninfo(), &typed)
        .args(&["-c", "fast"])
        .run();
    out.assert_succeeded();
    out.assert_not_printed(PASSWORD);
    let settings = standby_settings(&typed);
    assert!(
        // Quoted as libpq's appendConnStrVal does: '-' is not a plain character.
        primary_conninfo(&settings).contains(&format!("password='{PASSWORD}'")),
        "{settings}"
    );
    let standby = primary.standby(&typed).name("bs-password-standby").start();
    wait_standby_streaming(&primary);
    standby.catch_up(&primary);
}

// ------------------------------------------------------------------------------- refusals

/// A conninfo nothing listens on (port 1: privileged, never a test cluster's): a check that should
/// come before connecting shows as a connection error if it does not.
fn dead_conninfo() -> String {
    "host=127.0.0.1 port=1 user=postgres connect_timeout=5".to_string()
}

/// Issue "bootstrap" 3, the part decided before connecting: non-empty target, target under a
/// regular file, target that is a file, malformed `-T`, `-C` without `-S`, a bad slot name, malformed
/// connection options. Each: exit 1, one error line naming the cause, and the target exactly as it
/// was — an existing non-empty directory byte for byte (modes and times included), an empty 0755
/// directory still empty and 0755, an absent path still absent.
#[test]
fn input_errors_leave_the_target_untouched() {
    let base = tempfile::Builder::new()
        .prefix("wr-bs-input-")
        .tempdir()
        .unwrap();
    let dead = dead_conninfo();

    // Non-empty: a file, a subdirectory, a symlink.
    let full = base.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("PG_VERSION"), b"15\n").unwrap();
    fs::create_dir(full.join("base")).unwrap();
    fs::write(full.join("base/keep"), vec![7u8; 10_000]).unwrap();
    std::os::unix::fs::symlink("/nonexistent", full.join("link")).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(0o750)).unwrap();
    let before = snapshot(&full);
    for extra in [&[][..], &["-S", "s", "-C"][..]] {
        let out = Bootstrap::new(&dead, &full).args(extra).run();
        out.assert_failed(
            exit_code::LOCAL,
            &["holds a PostgreSQL data directory", &path_arg(&full)],
        );
        assert_unchanged(&full, &before, &snapshot(&full), "non-empty target");
    }

    // What a killed bootstrap leaves: a backup_label without global/pg_control — named as such.
    let killed = base.path().join("killed");
    fs::create_dir(&killed).unwrap();
    fs::write(killed.join("PG_VERSION"), b"15\n").unwrap();
    fs::write(
        killed.join("backup_label"),
        b"START WAL LOCATION: 0/2000028\n",
    )
    .unwrap();
    let before_killed = snapshot(&killed);
    let out = Bootstrap::new(&dead, &killed).run();
    out.assert_failed(
        exit_code::LOCAL,
        &["unfinished base backup", "remove its contents"],
    );
    assert_unchanged(
        &killed,
        &before_killed,
        &snapshot(&killed),
        "interrupted target",
    );
    // A finished one has pg_control, and, before 13, no backup_manifest: a data directory, not
    // a killed run.
    let finished = base.path().join("finished-pg12");
    fs::create_dir_all(finished.join("global")).unwrap();
    fs::write(finished.join("PG_VERSION"), b"12\n").unwrap();
    fs::write(
        finished.join("backup_label"),
        b"START WAL LOCATION: 0/2000028\n",
    )
    .unwrap();
    fs::write(finished.join("global/pg_control"), vec![0u8; 8192]).unwrap();
    Bootstrap::new(&dead, &finished)
        .run()
        .assert_failed(exit_code::LOCAL, &["holds a PostgreSQL data directory"]);

    // Anything else in the way.
    let other = base.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("notes.txt"), b"mine").unwrap();
    let out = Bootstrap::new(&dead, &other).run();
    out.assert_failed(
        exit_code::LOCAL,
        &["exists but is not empty", &path_arg(&other)],
    );

    // Under a regular file, and a regular file itself.
    let file = base.path().join("file");
    fs::write(&file, b"not a directory").unwrap();
    let file_before = snapshot(&file);
    Bootstrap::new(&dead, &file.join("sub"))
        .run()
        .assert_failed(exit_code::LOCAL, &["Not a directory", "file/sub"]);
    Bootstrap::new(&dead, &file)
        .run()
        .assert_failed(exit_code::LOCAL, &["is not a directory"]);
    assert_unchanged(&file, &file_before, &snapshot(&file), "regular file");

    // Usage errors, checked against an absent target and an empty 0755 one.
    let empty = base.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
    let empty_before = snapshot(&empty);
    let new = absent(base.path(), "new");
    let usage: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["-T".into(), "=/x".into()],
            vec!["tablespace mapping", "=/x"],
        ),
        (
            vec!["-T".into(), "/x=".into()],
            vec!["tablespace mapping", "/x="],
        ),
        (
            vec!["-T".into(), "x=/y".into()],
            vec!["not an absolute path", "x"],
        ),
        (
            vec!["-T".into(), "/x=y".into()],
            vec!["not an absolute path", "y"],
        ),
        (vec!["-T".into(), "/x".into()], vec!["OLDDIR=NEWDIR", "/x"]),
        (
            vec!["-T".into(), "/a=/b=/c".into()],
            vec!["tablespace mapping"],
        ),
        (vec!["-C".into()], vec!["--create-slot needs --slot"]),
        (
            vec!["-S".into(), "Bad-Name".into()],
            vec!["invalid replication slot name"],
        ),
        (vec!["-r".into(), "1".into()], vec!["out of range"]),
    ];
    for target in [&new, &empty] {
        for (args, needles) in &usage {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Bootstrap::new(&dead, target)
                .args(&args)
                .run()
                .assert_failed(exit_code::USAGE, needles);
        }
    }

    // Malformed connection options, and a server that is not there (a definite error, not a hang).
    let bad_conn: &[(&str, &str)] = &[
        (
            "host=127.0.0.1 bogus=1",
            "invalid connection option \"bogus\"",
        ),
        (
            "host=127.0.0.1 user='postgres",
            "unterminated quoted string",
        ),
        ("postgresql://[::1", "IPv6"),
        (
            "host=127.0.0.1 port=notaport",
            "invalid integer value \"notaport\"",
        ),
        ("host=127.0.0.1 sslmode=bogus", "sslmode"),
        ("host=127.0.0.1 password=hunter2 sslmode=nope", "sslmode"),
    ];
    for target in [&new, &empty] {
        for (conninfo, needle) in bad_conn {
            let out = Bootstrap::new(conninfo, target).run();
            out.assert_failed(exit_code::USAGE, &["invalid connection", needle]);
            out.assert_not_printed("hunter2");
        }
        Bootstrap::new(&dead, target).run().assert_failed(
            exit_code::ERROR,
            &["could not connect to the primary", "Connection refused"],
        );
    }
    assert!(
        !new.exists(),
        "a refused bootstrap created {}",
        new.display()
    );
    assert_unchanged(&empty, &empty_before, &snapshot(&empty), "empty target");
    assert_eq!(mode_of(&empty), 0o755);

    // Options clap refuses: its own usage error (exit 2), nothing touched.
    for args in [&["-X", "tar"][..], &["-c", "slow"][..]] {
        let out = Bootstrap::new(&dead, &new).args(args).run();
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("invalid value"), "{}", out.stderr);
    }
    assert!(!new.exists());
}

/// A target on a read-only file system: root cannot write there either, so this is the unwritable
/// target a root test can make. Both a new directory in it and the (empty) mount point itself.
#[test]
fn read_only_target_is_refused() {
    let base = tempfile::Builder::new()
        .prefix("wr-bs-ro-")
        .tempdir()
        .unwrap();
    let Some(ro) = Tmpfs::mount(&base.path().join("ro"), 1024, &["ro"]) else {
        eprintln!("skipping: no tmpfs mount here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let dead = dead_conninfo();
    let before = snapshot(ro.path());
    Bootstrap::new(&dead, &ro.path().join("new"))
        .run()
        .assert_failed(
            exit_code::LOCAL,
            &["could not create directory", "Read-only file system"],
        );
    Bootstrap::new(&dead, ro.path()).run().assert_failed(
        exit_code::LOCAL,
        &["is not writable", "Read-only file system"],
    );
    assert_unchanged(ro.path(), &before, &snapshot(ro.path()), "read-only mount");
}

/// Issue "bootstrap" 3, refusals that need the server: an unknown slot; `-C` for a slot that
/// exists (which must survive untouched: it belongs to someone else). An empty 0755 target is
/// tightened for the attempt and handed back empty with its own mode.
#[test]
fn server_refusals_clean_up_and_keep_what_was_there() {
    let primary = primary("bs-refusals");
    let empty = primary.scratch_path("empty");
    empty_dir_for_postgres(&empty, 0o755);
    let new = primary.scratch_path("new");

    for target in [&new, &empty] {
        let out = Bootstrap::new(&primary.conninfo(), target)
            .args(&["-S", "nosuch"])
            .run();
        out.assert_failed(
            exit_code::SERVER_STATE,
            &[
                "replication slot \"nosuch\" does not exist",
                "--create-slot",
            ],
        );
    }
    assert!(!new.exists());
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(
        mode_of(&empty),
        0o755,
        "the directory's mode was not given back"
    );

    primary.psql("SELECT pg_create_physical_replication_slot('taken', true)");
    let before = server::slot(&primary, "taken").unwrap();
    let out = Bootstrap::new(&primary.conninfo(), &new)
        .args(&["-S", "taken", "-C"])
        .run();
    out.assert_failed(
        exit_code::SERVER_STATE,
        &["replication slot \"taken\" already exists"],
    );
    assert_eq!(server::slot(&primary, "taken"), Some(before));
    assert!(!new.exists());
    assert_eq!(slot_names(&primary), ["taken"]);

    // A slot another client streams from: refused before any data is copied, and the other
    // client keeps streaming.
    let archive = primary.scratch_path("receivewal");
    fs::create_dir_all(&archive).unwrap();
    let mut other = Command::new(ClientTools::debian().unwrap().pg_receivewal())
        .arg("-d")
        .arg(primary.conninfo())
        .args(["-S", "taken", "-n", "-D"])
        .arg(&archive)
        .env("PGPASSFILE", "/dev/null")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll::wait_until(
        "pg_receivewal streaming from slot taken",
        || server::slot(&primary, "taken").is_some_and(|s| s.active),
        || format!("{:?}", server::slot(&primary, "taken")),
    );
    let out = Bootstrap::new(&primary.conninfo(), &new)
        .args(&["-c", "fast", "-S", "taken"])
        .run();
    out.assert_failed(
        exit_code::SERVER_STATE,
        &[
            "is active for PID",
            "choose another slot",
            "no data was copied",
        ],
    );
    assert!(!new.exists());
    assert!(
        other.try_wait().unwrap().is_none(),
        "pg_receivewal was disturbed"
    );
    assert!(server::slot(&primary, "taken").unwrap().active);
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn wal_level_minimal_is_refused_with_the_fix() {
    let primary = primary_builder("bs-minimal")
        .wal_level("minimal")
        .max_wal_senders(0)
        .start();
    let target = primary.scratch_path("standby");
    Bootstrap::new(&primary.conninfo(), &target)
        .run()
        .assert_failed(
            exit_code::SERVER_STATE,
            &["wal_level = replica", "max_wal_senders"],
        );
    assert!(!target.exists());
    // receive and serve: at once, not retried for ever as if a sender might come free.
    let archive = primary.scratch_path("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let archive = path_arg(&archive);
    let port = support::free_port();
    for args in [
        support::walrelay_cmd::receive_args(&["-d", &primary.conninfo(), "-D", &archive]),
        [
            "serve",
            "-d",
            &primary.conninfo(),
            "-D",
            &archive,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<String>>(),
    ] {
        let out = support::walrelay_cmd::run(&args, Duration::from_secs(60));
        assert_eq!(
            out.code(),
            Some(exit_code::SERVER_STATE),
            "{args:?}: {}",
            out.stderr
        );
        let lines = out.error_lines();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(
            lines[0].contains("max_wal_senders (currently 0)"),
            "{}",
            lines[0]
        );
    }
}

/// Bootstrap streams WAL on a second replication connection: with `max_wal_senders = 1` the error
/// says so and offers `--wal-method fetch`, which then works.
#[test]
fn one_free_wal_sender_is_not_enough_for_stream_but_is_for_fetch() {
    let primary = primary_builder("bs-senders")
        .max_wal_senders(1)
        .conf("wal_keep_size = '256MB'")
        .start();
    let target = primary.scratch_path("standby");
    Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast"])
        .run()
        .assert_failed(
            exit_code::ERROR,
            &[
                "could not start streaming WAL",
                "max_wal_senders (currently 1)",
                "--wal-method fetch",
            ],
        );
    assert!(!target.exists());
    assert!(slot_names(&primary).is_empty());

    Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast", "--wal-method", "fetch"])
        .run()
        .assert_succeeded();
    assert_verifies(&target);
}

/// A page with a wrong data checksum on the primary: the error names the relation's file, the
/// target is removed and the slot made for this bootstrap dropped.
#[test]
fn checksum_failure_on_the_primary_names_the_file() {
    let mut primary = primary_builder("bs-checksum").data_checksums(true).start();
    primary.psql("CREATE TABLE damaged AS SELECT generate_series(1, 5000) AS i; CHECKPOINT;");
    let rel = primary.damage_first_page("damaged");
    let target = primary.scratch_path("standby");
    Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast", "-S", "damaged_slot", "-C"])
        .run()
        .assert_failed(
            exit_code::SERVER_STATE,
            &["data checksum failures", &rel, "--no-verify-checksums"],
        );
    assert!(!target.exists(), "the damaged copy was left behind");
    assert!(
        slot_names(&primary).is_empty(),
        "{:?}",
        slot_names(&primary)
    );
}

/// Generates a segment's worth of WAL, switches, and checkpoints: with nothing holding WAL back,
/// the checkpoint removes the old segments.
fn recycle_wal(primary: &Cluster) {
    primary.psql(
        "CREATE TABLE IF NOT EXISTS churn (i int, filler text); \
         INSERT INTO churn SELECT g, repeat('c', 200) FROM generate_series(1, 3000) g; \
         SELECT pg_switch_wal(); CHECKPOINT;",
    );
}

/// Runs a streaming bootstrap (slowed by `--max-rate`), stops the process (SIGSTOP) once its WAL
/// stream holds a temporary slot, recycles WAL on the primary `rounds` times or until `until`
/// says so, lets the process continue, and returns how it ended.
fn stopped_stream(
    primary: &Cluster,
    target: &Path,
    label: &str,
    rounds: usize,
    until: &dyn Fn() -> bool,
) -> Outcome {
    let mut w = Walrelay::start(
        label,
        Bootstrap::new(&primary.conninfo(), target)
            .args(&["-c", "fast", "-r", "4M"])
            .argv(),
    );
    w.wait_log("starting WAL stream:", poll::timeout());
    poll::wait_until(
        "the stream's temporary slot",
        || primary.psql("SELECT count(*) FROM pg_replication_slots WHERE temporary") == "1",
        || primary.psql("SELECT * FROM pg_replication_slots"),
    );
    w.signal(Signal::SIGSTOP);
    for _ in 0..rounds {
        recycle_wal(primary);
        if until() {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid() as i32), Signal::SIGCONT).unwrap();
    let status = w.wait(poll::timeout());
    Outcome {
        args: vec![label.to_string()],
        status,
        stderr: w.log(),
    }
}

/// Issue "bootstrap" 3, "WAL already removed". Forced three ways on a primary that keeps no extra
/// WAL (`max_wal_size` at its 2-segment minimum, `wal_keep_size = 0`), with the transfer slowed by
/// `--max-rate` so that the primary can recycle WAL while the backup runs:
/// * `-X fetch` and no slot: the primary has removed the backup's first segment by the time it
///   sends the WAL — a clear error with the fix (`stream`, a slot, `wal_keep_size`);
/// * `-X stream` with the walrelay process stopped (SIGSTOP) while WAL is recycled: the stream's
///   temporary slot keeps the WAL, and the bootstrap succeeds;
/// * the same with `max_slot_wal_keep_size` small enough that the checkpointer invalidates that
///   slot: the primary terminates the stream, and the error names the setting.
#[test]
fn wal_removed_before_it_was_copied() {
    let mut primary = primary_builder("bs-walgone")
        .conf("max_wal_size = '2MB'")
        .conf("min_wal_size = '2MB'")
        .conf("wal_keep_size = 0")
        .start();

    let target = primary.scratch_path("fetch");
    let mut w = Walrelay::start(
        "fetch",
        Bootstrap::new(&primary.conninfo(), &target)
            .args(&["-c", "fast", "-X", "fetch", "-r", "4M"])
            .argv(),
    );
    w.wait_log("base backup started", poll::timeout());
    for _ in 0..4 {
        recycle_wal(&primary);
    }
    let status = w.wait(poll::timeout());
    let log = w.log();
    let out = Outcome {
        args: vec![],
        status,
        stderr: log,
    };
    out.assert_failed(
        exit_code::SERVER_STATE,
        &[
            "has already been removed",
            "--wal-method stream",
            "wal_keep_size",
        ],
    );
    assert!(!target.exists());

    // Stream: the temporary slot holds the WAL while the stream is frozen.
    let kept = primary.scratch_path("kept");
    // As many rounds as removed the fetch backup's WAL above.
    let out = stopped_stream(&primary, &kept, "stream kept", 4, &|| false);
    out.assert_succeeded();
    assert_verifies(&kept);

    primary.append_conf("max_slot_wal_keep_size = '1MB'");
    primary.reload();
    let lost = primary.scratch_path("lost");
    let invalidated = || {
        primary.psql(
            "SELECT count(*) FROM pg_replication_slots WHERE temporary AND wal_status <> 'lost'",
        ) == "0"
    };
    let out = stopped_stream(&primary, &lost, "stream lost", 20, &invalidated);
    out.assert_failed(
        exit_code::ERROR,
        &[
            "WAL streaming failed",
            "max_slot_wal_keep_size = 1MB",
            "invalidated its slot",
        ],
    );
    assert!(!lost.exists());
    assert!(slot_names(&primary).is_empty());
}

/// A manifest that does not match the files, from the testkit's scripted fake walsender (a real
/// server does not lie): the file is named, the target removed.
#[test]
fn manifest_mismatch_from_a_fake_server() {
    use walrelay_testkit::fake_backup::{backup_manifest, pg15_steps};
    use walrelay_testkit::tar_builder::Tar;
    use walrelay_testkit::{FakeBackup, FakeWalsender, Script};

    let relfile: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let label = b"START WAL LOCATION: 0/2000028\n";
    let base = Tar::new()
        .file("backup_label", label, 0o600)
        .file("PG_VERSION", b"15\n", 0o600)
        .dir("base", 0o700)
        .dir("base/1", 0o700)
        .file("base/1/1259", &relfile, 0o600)
        .dir("global", 0o700)
        .dir("pg_wal", 0o700)
        .dir("pg_wal/archive_status", 0o700)
        .end();
    let mut damaged = relfile.clone();
    damaged[100] ^= 1;
    let backup = FakeBackup {
        start: "0/2000028".into(),
        end: "0/2000100".into(),
        timeline: 1,
        tablespaces: vec![],
        base,
        manifest: Some(backup_manifest(
            &[
                ("backup_label", label),
                ("PG_VERSION", b"15\n"),
                ("base/1/1259", &damaged),
            ],
            &[(1, "0/2000028", "0/2000100")],
        )),
    };
    let server = FakeWalsender::start(Script {
        base_backup: pg15_steps(&backup),
        ..Script::default()
    });
    let base_dir = tempfile::Builder::new()
        .prefix("wr-bs-fake-")
        .tempdir()
        .unwrap();
    let target = base_dir.path().join("standby");
    Bootstrap::new(&server.conninfo(), &target)
        .args(&["-c", "fast", "-X", "none", "--no-standby-config"])
        .run()
        .assert_failed(
            exit_code::ERROR,
            &["checksum mismatch for file \"base/1/1259\""],
        );
    assert!(!target.exists());
    assert!(server
        .queries()
        .iter()
        .any(|q| q.starts_with("BASE_BACKUP")));
}

/// A full disk (a 6 MB tmpfs, smaller than a fresh cluster): one line naming the file and the
/// cause, the partial copy removed, the file system empty again.
#[test]
fn disk_full_is_reported_and_cleaned() {
    let primary = primary("bs-diskfull");
    let Some(small) = Tmpfs::mount(&primary.scratch_path("small"), 6 * 1024, &[]) else {
        eprintln!("skipping: no tmpfs mount here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let target = small.path().join("standby");
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast"])
        .run();
    let line = out.assert_failed(
        exit_code::LOCAL,
        &[
            "No space left on device",
            "is full: free space there",
            "choose another directory",
        ],
    );
    eprintln!("disk full: {line}");
    assert!(
        !target.exists(),
        "the partial copy was left on the full disk"
    );
    assert_eq!(fs::read_dir(small.path()).unwrap().count(), 0);
    assert!(slot_names(&primary).is_empty());
    assert!(
        line.contains(&format!("the data directory {}", target.display())),
        "{line}"
    );

    // Only --waldir's file system is full (smaller than one WAL segment): that one is named,
    // and not with receive's advice.
    let Some(tiny) = Tmpfs::mount(&primary.scratch_path("tiny"), 512, &[]) else {
        panic!("a second tmpfs could not be mounted");
    };
    let roomy = primary.scratch_path("roomy-standby");
    let waldir = tiny.path().join("wal");
    let out = Bootstrap::new(&primary.conninfo(), &roomy)
        .args(&["-c", "fast", "--waldir", waldir.to_str().unwrap()])
        .run();
    let line = out.assert_failed(exit_code::LOCAL, &["No space left on device"]);
    assert!(
        line.contains(&format!(
            "the file system holding --waldir {} is full",
            waldir.display()
        )),
        "{line}"
    );
    assert!(!line.contains("streaming resumes"), "{line}");
    assert!(!roomy.exists() && !waldir.exists(), "cleaned up");
}

/// Issue "bootstrap" 6: SIGINT mid-backup (without a slot: the stream's temporary slot exists until
/// then), and SIGTERM with `-S -C`: a non-zero exit, the target removed, no slot left behind, no
/// walsender left streaming.
#[test]
fn sigint_and_sigterm_mid_backup_clean_up() {
    let primary = primary("bs-signal");
    primary.pgbench_init(2);
    for (signal, slot_args) in [
        (Signal::SIGINT, &[][..]),
        (Signal::SIGTERM, &["-S", "sig_slot", "-C"][..]),
    ] {
        let target = primary.scratch_path("standby");
        let mut w = Walrelay::start(
            &format!("{signal}"),
            Bootstrap::new(&primary.conninfo(), &target)
                .args(&["-c", "fast", "-r", "2M"])
                .args(slot_args)
                .argv(),
        );
        w.wait_log("starting WAL stream:", poll::timeout());
        poll::wait_until(
            "the backup's files in the target",
            || target.join("base").is_dir(),
            || format!("{:?}", fs::read_dir(&target).map(|d| d.count())),
        );
        assert_eq!(
            primary.psql("SELECT count(*) FROM pg_stat_replication"),
            "2",
            "base backup and WAL stream"
        );
        w.signal(signal);
        let out = Outcome {
            args: vec![signal.to_string()],
            status: w.wait(poll::timeout()),
            stderr: w.log(),
        };
        out.assert_failed(exit_code::INTERRUPTED, &["bootstrap cancelled"]);
        assert!(
            out.stderr.contains(&format!("{signal} received")),
            "{}",
            out.stderr
        );
        assert!(
            !target.exists(),
            "{signal}: {} left behind",
            target.display()
        );
        poll::wait_until(
            "no slot and no walsender left",
            || {
                slot_names(&primary).is_empty()
                    && primary.psql("SELECT count(*) FROM pg_stat_replication") == "0"
            },
            || {
                format!(
                    "slots {:?}, walsenders {}",
                    slot_names(&primary),
                    primary.psql("SELECT application_name, state FROM pg_stat_replication")
                )
            },
        );
    }
}
