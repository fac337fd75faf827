//! The testkit against real PostgreSQL 15 (Debian's): authentication, TLS, lifecycle, standbys,
//! oracles, load, and cleanup.

use std::path::Path;
use std::time::Duration;

use walrelay_testkit::{
    oracle, pg_verifybackup, pg_waldump, psql_conninfo, AuthMethod, Cluster, PgBench, Role,
    StopMode, Tls, VerifyBackupOptions,
};

#[test]
fn scram_over_tcp_restart_standby_promote() {
    let mut primary = Cluster::builder()
        .name("primary")
        .major(15)
        .tcp_auth(AuthMethod::ScramSha256)
        .superuser_password("su-secret")
        .role(Role::new("replicator").password("rep secret").replication())
        .wal_segsize_mb(1)
        .start();
    assert_eq!(primary.major(), 15);
    assert_eq!(primary.server_version_num() / 10000, 15);
    assert_eq!(primary.wal_segment_size(), 1024 * 1024);

    // The password is stored as a SCRAM verifier and TCP logins need it.
    let stored = primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'");
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    assert_eq!(
        psql_conninfo(&primary.conninfo(), "SELECT current_user").unwrap(),
        "postgres"
    );
    assert_eq!(
        psql_conninfo(&primary.replication_conninfo(), "SELECT current_user").unwrap(),
        "replicator"
    );
    let wrong = psql_conninfo(
        &primary.conninfo_for("replicator", Some("wrong")),
        "SELECT 1",
    )
    .unwrap_err();
    assert!(
        wrong.to_string().contains("password authentication failed"),
        "{wrong}"
    );
    let none = psql_conninfo(&primary.conninfo_for("replicator", None), "SELECT 1").unwrap_err();
    assert!(none.stderr().is_some(), "{none}");

    // SQL helpers.
    primary.psql("CREATE TABLE t (i int, s text); INSERT INTO t SELECT g, 'row|' || g FROM generate_series(1, 100) g;");
    assert_eq!(primary.psql("SELECT count(*) FROM t"), "100");
    assert_eq!(
        primary.psql_rows("SELECT i, s, NULL FROM t WHERE i <= 2 ORDER BY i"),
        vec![vec!["1", "row|1", ""], vec!["2", "row|2", ""]]
    );
    let e = primary.try_psql("SELECT * FROM missing_table").unwrap_err();
    assert!(e.to_string().contains("missing_table"), "{e}");

    // Restart keeps data and port.
    let port = primary.port();
    primary.restart();
    assert_eq!(primary.port(), port);
    assert_eq!(primary.psql("SELECT count(*) FROM t"), "100");
    primary.restart_with(StopMode::Immediate);
    assert_eq!(primary.psql("SELECT count(*) FROM t"), "100");

    // A standby from Debian's pg_basebackup -R (as the replication role over scram).
    let backup = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    assert!(backup.join("standby.signal").is_file());
    let standby = primary.standby(&backup).start();
    assert_ne!(standby.port(), primary.port());
    assert!(standby.is_in_recovery());
    assert_eq!(standby.system_identifier(), primary.system_identifier());

    primary.psql("INSERT INTO t SELECT g, 'late' FROM generate_series(101, 200) g");
    let target = primary.current_wal_lsn();
    assert!(standby.wait_replay(target) >= target);
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "200");
    oracle::assert_same_dumpall(&primary, &standby);

    // Promotion: out of recovery, on timeline 2, writable.
    let mut standby = standby;
    standby.promote();
    assert!(!standby.is_in_recovery());
    assert_eq!(standby.current_timeline(), 2);
    standby.psql("INSERT INTO t VALUES (201, 'after promote')");
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "201");
    assert!(standby.pg_wal_dir().join("00000002.history").is_file());

    standby.stop(StopMode::Fast);
    assert!(!standby.is_running());
    primary.stop(StopMode::Smart);
    assert_eq!(
        primary.controldata().state(),
        Some("shut down"),
        "a clean stop leaves a shut-down control file"
    );
}

#[test]
fn tls_required_with_server_and_client_certificates() {
    let pg = Cluster::builder()
        .name("tls")
        .tls(Tls::Required)
        .tcp_auth(AuthMethod::ScramSha256)
        .superuser_password("pw")
        .start();
    let ca = pg.ca_cert_path().expect("TLS on").to_path_buf();
    assert!(ca.is_file());
    // conninfo() verifies the server certificate against the test CA, by IP address.
    assert!(
        pg.conninfo().contains("sslmode=verify-full"),
        "{}",
        pg.conninfo()
    );
    let ssl = psql_conninfo(
        &pg.conninfo(),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(ssl, "t");
    // verify-full by host name works too (the certificate names localhost).
    let by_name = pg
        .conninfo()
        .replace("host=127.0.0.1", "host=localhost hostaddr=127.0.0.1");
    assert_eq!(psql_conninfo(&by_name, "SELECT 1").unwrap(), "1");
    // hostssl only: a plain connection finds no pg_hba.conf entry.
    let plain = format!(
        "host=127.0.0.1 port={} user=postgres password=pw dbname=postgres sslmode=disable",
        pg.port()
    );
    let e = psql_conninfo(&plain, "SELECT 1").unwrap_err();
    assert!(e.to_string().contains("no pg_hba.conf entry"), "{e}");
    // A certificate from another CA is rejected by verify-full.
    let other = Cluster::builder().name("other-ca").tls(Tls::On).start();
    let foreign = pg.conninfo().replace(
        &ca.to_string_lossy().to_string(),
        &other.ca_cert_path().unwrap().to_string_lossy(),
    );
    let e = psql_conninfo(&foreign, "SELECT 1").unwrap_err();
    assert!(e.to_string().contains("certificate verify failed"), "{e}");
}

#[test]
fn cert_authentication() {
    let pg = Cluster::builder()
        .name("cert")
        .tls(Tls::On)
        .tcp_auth(AuthMethod::Cert)
        .role(Role::new("alice"))
        .start();
    // conninfo() carries a client certificate for the superuser, conninfo_as() for each role.
    assert_eq!(
        psql_conninfo(&pg.conninfo(), "SELECT current_user").unwrap(),
        "postgres"
    );
    assert_eq!(
        psql_conninfo(&pg.conninfo_as("alice"), "SELECT current_user").unwrap(),
        "alice"
    );
    // Without a certificate, or with one for another user, the login is refused.
    let bare = pg.conninfo_for("bob", None);
    assert!(psql_conninfo(&bare, "SELECT 1").is_err());
    let mallory = pg.client_cert("mallory");
    let wrong = format!(
        "{} {}",
        pg.conninfo_for("alice", None),
        mallory.conninfo_params()
    );
    let e = psql_conninfo(&wrong, "SELECT 1").unwrap_err();
    assert!(
        e.to_string().contains("certificate authentication failed"),
        "{e}"
    );
}

#[test]
fn md5_and_password_methods() {
    let pg = Cluster::builder()
        .name("md5")
        .auth(AuthMethod::Md5)
        .superuser_password("pw")
        .role(Role::new("u").password("upw"))
        .start();
    let stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'u'");
    assert!(
        stored.starts_with("md5"),
        "md5 auth must store MD5 hashes: {stored}"
    );
    assert_eq!(
        psql_conninfo(&pg.conninfo_as("u"), "SELECT 1").unwrap(),
        "1"
    );
    assert!(psql_conninfo(&pg.conninfo_for("u", Some("bad")), "SELECT 1").is_err());
    // The Unix socket asks for the password too; the testkit's own psql passes it.
    assert_eq!(pg.psql("SELECT 2"), "2");
    let e = psql_conninfo(
        &pg.unix_conninfo().replace("password=pw", "password=bad"),
        "SELECT 1",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );

    let pg = Cluster::builder()
        .name("password")
        .tcp_auth(AuthMethod::Password)
        .superuser_password("pw")
        .start();
    assert_eq!(psql_conninfo(&pg.conninfo(), "SELECT 1").unwrap(), "1");
}

#[test]
fn without_replication_hba_replication_is_refused() {
    let mut pg = Cluster::builder()
        .name("norepl")
        .no_replication_hba()
        .start();
    let target = pg.scratch_path("refused");
    let tools = pg.install().tools().clone();
    let out = std::process::Command::new(tools.pg_basebackup())
        .arg("-d")
        .arg(pg.conninfo())
        .arg("-D")
        .arg(&target)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no pg_hba.conf entry for replication connection"),
        "{stderr}"
    );
    // Normal connections still work.
    assert_eq!(psql_conninfo(&pg.conninfo(), "SELECT 1").unwrap(), "1");

    // A new pg_hba.conf and settings take effect on reload (SIGHUP is asynchronous: poll).
    pg.set_hba([
        "local all all trust",
        "host all all 127.0.0.1/32 trust",
        "host replication all 127.0.0.1/32 trust",
    ]);
    pg.append_conf("work_mem = '7MB'");
    pg.reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pg.psql("SHOW work_mem") != "7MB" {
        assert!(
            std::time::Instant::now() < deadline,
            "reload did not apply work_mem"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let backup = pg.pg_basebackup(&["-X", "fetch", "-c", "fast"]);
    assert!(backup.join("PG_VERSION").is_file());
}

#[test]
fn cluster_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<walrelay_testkit::PgBenchRun>();
}

#[test]
fn oracles_on_wal_and_backups() {
    let primary = Cluster::builder()
        .name("oracles")
        .wal_segsize_mb(1)
        .data_checksums(true)
        .conf("wal_keep_size = '64MB'")
        .start();
    assert_eq!(primary.psql("SHOW data_checksums"), "on");
    assert_eq!(primary.psql("SHOW wal_keep_size"), "64MB");
    let start = primary.current_wal_lsn();
    primary.psql("CREATE TABLE w AS SELECT generate_series(1, 20000) AS i");
    primary.switch_wal();
    let end = primary.current_wal_lsn();
    assert!(end > start);

    let dump = pg_waldump(&primary.pg_wal_dir(), start, end).unwrap();
    assert!(!dump.records.is_empty());
    assert_eq!(dump.check_chain(), Ok(()));
    assert!(dump.by_rmgr("Heap").count() > 0 || dump.by_rmgr("Heap2").count() > 0);
    assert!(dump.records[0].lsn >= start);
    // A range beyond the WAL that exists fails with pg_waldump's reason.
    let e = pg_waldump(
        &primary.pg_wal_dir(),
        start,
        walrelay_testkit::Lsn(end.0 + (64 << 20)),
    )
    .unwrap_err();
    assert!(e.stderr().is_some(), "{e}");

    // pg_controldata agrees with the server.
    let control = oracle::pg_controldata(primary.data_dir()).unwrap();
    assert_eq!(
        control.system_identifier(),
        Some(primary.system_identifier())
    );
    assert_eq!(control.wal_segment_size(), Some(1 << 20));

    // pg_verifybackup accepts a fresh backup and notices a damaged one.
    let tablespace = primary.create_tablespace("ts1");
    primary.psql("CREATE TABLE in_ts (i int) TABLESPACE ts1; INSERT INTO in_ts VALUES (1)");
    let mapped = primary.scratch_path("ts1-copy");
    let backup = primary.pg_basebackup(&[
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
        &format!("-T{}={}", tablespace.display(), mapped.display()),
    ]);
    let ok = pg_verifybackup(&backup, &VerifyBackupOptions::default()).unwrap();
    assert!(ok.contains("backup successfully verified"), "{ok}");
    // A standby on it uses the mapped (root-written, then re-owned) tablespace directory.
    {
        let standby = primary.standby(&backup).start();
        assert_eq!(standby.psql("SELECT i FROM in_ts"), "1");
    }
    let damaged = primary.pg_basebackup(&[
        "-X",
        "fetch",
        "-c",
        "fast",
        &format!(
            "-T{}={}",
            tablespace.display(),
            primary.scratch_path("ts1-again").display()
        ),
    ]);
    std::fs::write(damaged.join("PG_VERSION"), "99\n").unwrap();
    let e = pg_verifybackup(&damaged, &VerifyBackupOptions::default()).unwrap_err();
    assert!(e.to_string().contains("PG_VERSION"), "{e}");
}

#[test]
fn pgbench_in_background_and_foreground() {
    let pg = Cluster::builder().name("load").fsync(false).start();
    pg.pgbench_init(1);
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_branches"), "1");
    let run = pg.pgbench(&PgBench::duration(Duration::from_secs(2)).clients(2));
    let before = pg.current_wal_lsn();
    let summary = run.wait().unwrap();
    assert!(summary.transactions > 0, "{summary:?}");
    assert_eq!(summary.failed, 0);
    assert!(pg.current_wal_lsn() > before);

    let summary = pg.pgbench_run(&PgBench::transactions(25).clients(2));
    assert_eq!(summary.transactions, 50);

    // Dropping a background run kills it: the server has no pgbench sessions left.
    let mut run = pg.pgbench(&PgBench::duration(Duration::from_secs(600)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(run.is_running());
    drop(run);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'");
        if n == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pgbench sessions remain: {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn leftover_recovery_conf_stops_pg12_plus_from_starting() {
    let mut pg = Cluster::builder().name("recoveryconf").start();
    pg.stop(StopMode::Fast);
    std::fs::write(pg.data_dir().join("recovery.conf"), "standby_mode = 'on'\n").unwrap();
    let e = pg.try_start().unwrap_err();
    assert!(e.to_string().contains("recovery.conf"), "{e}");
    assert!(!pg.is_running());
    std::fs::remove_file(pg.data_dir().join("recovery.conf")).unwrap();
    pg.start();
    assert_eq!(pg.psql("SELECT 1"), "1");
}

#[test]
fn cold_copy_makes_a_following_standby() {
    let mut primary = Cluster::builder()
        .name("cold")
        .role(Role::new("rep").password("x").replication())
        .start();
    primary.psql("CREATE TABLE c AS SELECT 1 AS i");
    let copy = primary.cold_copy();
    let standby = primary
        .standby(&copy)
        .follow(&primary.replication_conninfo())
        .start();
    assert!(standby.is_in_recovery());
    primary.psql("INSERT INTO c VALUES (2)");
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM c"), "2");
    let sender = primary.psql("SELECT usename FROM pg_stat_replication");
    assert_eq!(sender, "rep");
}

#[test]
fn drop_removes_directory_and_stops_server() {
    let pg = Cluster::builder().name("dropme").start();
    let root = pg.root_dir().to_path_buf();
    let port = pg.port();
    let pid = postmaster_pid(pg.data_dir());
    drop(pg);
    assert!(!root.exists(), "{} was not removed", root.display());
    assert!(!process_alive(pid), "postmaster {pid} still runs");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Child half of `watchdog_cleans_up_after_sigkill`: starts a cluster, reports it, and waits to be
/// killed. Ignored so that normal runs skip it.
#[test]
#[ignore = "run by watchdog_cleans_up_after_sigkill"]
fn watchdog_child() {
    if std::env::var_os("WALRELAY_TESTKIT_WATCHDOG_CHILD").is_none() {
        return;
    }
    let pg = Cluster::builder().name("orphan").start();
    println!(
        "CLUSTER {} {} {}",
        pg.root_dir().display(),
        pg.port(),
        postmaster_pid(pg.data_dir())
    );
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn watchdog_cleans_up_after_sigkill() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "watchdog_child", "--ignored", "--nocapture"])
        .env("WALRELAY_TESTKIT_WATCHDOG_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("CLUSTER "))
        .expect("child reports its cluster");
    let parts: Vec<&str> = line.split_whitespace().collect();
    let (root, port, pid) = (
        std::path::PathBuf::from(parts[1]),
        parts[2].parse::<u16>().unwrap(),
        parts[3].parse::<i32>().unwrap(),
    );
    assert!(root.exists());
    assert!(process_alive(pid));
    child.kill().unwrap(); // SIGKILL: no Drop runs in the child
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (root.exists() || process_alive(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!process_alive(pid), "postmaster {pid} leaked");
    assert!(!root.exists(), "{} leaked", root.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn postmaster_pid(data_dir: &Path) -> i32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid on the first line of postmaster.pid")
}

fn process_alive(pid: i32) -> bool {
    // /proc/<pid> exists for zombies too; a zombie postmaster would have exited, so check its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn failures_panic_with_the_server_log_tail() {
    let pg = Cluster::builder().name("loud").start();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.psql("SELECT * FROM no_such_table");
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("loud (PostgreSQL 15"), "{msg}");
    assert!(msg.contains("psql failed"), "{msg}");
    assert!(msg.contains(&pg.log_file().display().to_string()), "{msg}");
    // The tail shows the server's side of the failure.
    assert!(
        msg.contains("relation \"no_such_table\" does not exist at character"),
        "{msg}"
    );
}

#[test]
fn a_taken_port_is_replaced_by_a_free_one() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let pg = Cluster::builder().name("portrace").port(port).start();
    assert_ne!(pg.port(), port);
    assert_eq!(psql_conninfo(&pg.conninfo(), "SELECT 1").unwrap(), "1");
    // The first attempt's failure is in the log.
    let log = std::fs::read_to_string(pg.log_file()).unwrap();
    assert!(log.contains("could not bind IPv4 address"), "{log}");
}
