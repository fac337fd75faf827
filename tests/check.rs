#![allow(clippy::unwrap_used)]

//! `walrelay check` against real PostgreSQL 15: ready for a good primary; names the problem for
//! wal_level=minimal, exhausted WAL senders and a missing slot; bad input is one line, no password.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walrelay_testkit::{AuthMethod, Cluster, PgInstall};

fn walrelay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env_remove("PGPASSWORD")
        .env("WALRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Holds a WAL sender busy (Debian's pg_receivewal, killed on drop).
struct BusySender(Child);

impl Drop for BusySender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn occupy_sender(c: &Cluster, dir: &std::path::Path) -> BusySender {
    std::fs::create_dir_all(dir).unwrap();
    let tools = PgInstall::for_major(15).unwrap();
    let child = Command::new(tools.tools().pg_receivewal())
        .args(["-D"])
        .arg(dir)
        .args(["-n", "-d", &c.unix_conninfo()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    BusySender(child)
}

fn wait_senders(c: &Cluster, n: usize) {
    let t0 = Instant::now();
    while c.psql("SELECT count(*) FROM pg_stat_replication") != n.to_string() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "senders never reached {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ready_primary_and_json() {
    let c = Cluster::builder()
        .name("check-ready")
        .auth(AuthMethod::ScramSha256)
        .superuser_password("pw")
        .start();
    let ci = c.conninfo();
    let (code, out, err) = walrelay(&["check", "-d", &ci]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("READY: this server can feed a replicant"),
        "{out}"
    );
    assert!(out.contains(&c.system_identifier().to_string()), "{out}");
    let (code, json, _) = walrelay(&["check", "-d", &ci, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["wal_level"], "replica");
    assert_eq!(v["system_identifier"], c.system_identifier().to_string());
    assert_eq!(v["server_version_num"].as_u64().unwrap() / 10000, 15);
    assert!(!json.contains("\"pw\""));

    // A missing slot is a problem; an existing one is reported with its state.
    let (code, out, _) = walrelay(&["check", "-d", &ci, "-S", "standby1"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("replication slot \"standby1\" does not exist"),
        "{out}"
    );
    c.psql("SELECT pg_create_physical_replication_slot('standby1', true)");
    let (code, out, _) = walrelay(&["check", "-d", &ci, "-S", "standby1", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["slot"]["exists"], true);
    assert_eq!(v["slot"]["wal_status"], "reserved");
    assert!(v["slot"]["restart_lsn"].is_string());
}

#[test]
fn wal_level_minimal_is_named() {
    let c = Cluster::builder()
        .name("check-minimal")
        .wal_level("minimal")
        .max_wal_senders(0)
        .start();
    let (code, out, err) = walrelay(&["check", "-d", &c.unix_conninfo()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("wal_level is minimal"), "{out}");
    assert!(out.contains("set wal_level = replica"), "{out}");
    assert!(out.contains("NOT READY"), "{out}");
}

#[test]
fn exhausted_wal_senders_are_named() {
    let c = Cluster::builder()
        .name("check-senders")
        .max_wal_senders(2)
        .start();
    let dir = c.scratch_path("busy");
    let _a = occupy_sender(&c, &dir.join("a"));
    wait_senders(&c, 1);
    // One left: check itself can connect, but bootstrap needs two.
    let (code, out, _) = walrelay(&["check", "-d", &c.unix_conninfo()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("only one WAL sender is free"), "{out}");
    // The check's own walsender may outlive its connection for a moment; pg_receivewal -n gives up
    // at once if it finds no free sender.
    wait_senders(&c, 1);
    let _b = occupy_sender(&c, &dir.join("b"));
    wait_senders(&c, 2);
    let (code, out, _) = walrelay(&["check", "-d", &c.unix_conninfo()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no free WAL sender"), "{out}");
    assert!(out.contains("max_wal_senders"), "{out}");
}

#[test]
fn bad_input_is_one_line_without_the_password() {
    let c = Cluster::builder()
        .name("check-bad")
        .auth(AuthMethod::ScramSha256)
        .superuser_password("right-pw")
        .start();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-d".into(), c.conninfo_for("postgres", Some("wrong-pw"))],
            "password authentication failed",
        ),
        (vec!["-d".into(), "sslmode=sometimes".into()], "sslmode"),
        (
            vec!["-d".into(), "host='unterminated".into()],
            "unterminated",
        ),
        (
            vec![
                "-d".into(),
                format!("host=127.0.0.1 port={} user=postgres password=wrong-pw", 1),
            ],
            "could not connect",
        ),
        (
            vec!["-d".into(), c.conninfo(), "-S".into(), "Bad-Slot".into()],
            "invalid replication slot name",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["check".to_string()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, out, err) = walrelay(&refs);
        let all = format!("{out}{err}");
        assert_ne!(code, 0, "{all}");
        assert!(all.contains(want), "{refs:?}: {all:?} lacks {want:?}");
        assert!(
            !all.contains("wrong-pw") && !all.contains("right-pw"),
            "password leaked: {all}"
        );
        assert!(
            !all.contains("panicked") && !all.contains("backtrace"),
            "{all}"
        );
        let error_lines = err.lines().filter(|l| l.contains("error")).count();
        assert!(error_lines <= 1, "more than one error line: {err}");
    }
}

/// A host list is checked host by host: role, timeline and position of each, one that is down
/// named as unreachable, while the report's other fields describe the server libpq would pick.
#[test]
fn a_host_list_reports_every_host() {
    let primary = Cluster::builder().name("check-hosts").start();
    let backup = primary.pg_basebackup(&["-X", "stream", "-c", "fast", "-R"]);
    let standby = primary.standby(&backup).name("check-hosts-standby").start();
    standby.catch_up(&primary);
    // A third host that is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{dead_port} user={} dbname=postgres target_session_attrs=read-write connect_timeout=3",
        standby.port(),
        primary.port(),
        primary.superuser()
    );
    let (code, json, err) = walrelay(&["check", "-d", &hosts, "--json"]);
    assert_eq!(code, 0, "{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{json}");
    assert_eq!(hosts[0]["role"], "standby", "{json}");
    assert_eq!(hosts[1]["role"], "primary", "{json}");
    assert_eq!(hosts[2]["role"], "unreachable", "{json}");
    for h in &hosts[..2] {
        assert_eq!(h["timeline"], 1);
        assert_eq!(
            h["system_identifier"],
            primary.system_identifier().to_string()
        );
        assert!(h["wal_lsn"].is_string());
    }
    // target_session_attrs=read-write picked the primary for the rest of the report.
    assert_eq!(v["in_recovery"], false, "{json}");
    assert!(
        v["endpoint"]
            .as_str()
            .unwrap()
            .contains(&primary.port().to_string()),
        "{json}"
    );
    let (code, text, _) = walrelay(&["check", "-d", &hosts_text(&primary, &standby)]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("hosts:") && text.contains("standby"),
        "{text}"
    );
}

fn hosts_text(primary: &Cluster, standby: &Cluster) -> String {
    format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={} dbname=postgres target_session_attrs=read-write",
        primary.port(),
        standby.port(),
        primary.superuser()
    )
}

/// A server that cannot have slots at all: `check -S` says so (not only "create it"), and
/// `receive --create-slot` exits 4 with the fix (it exited 1, the server's hint dropped).
#[test]
fn no_slots_allowed_is_named() {
    let c = Cluster::builder()
        .name("check-noslots")
        .conf("max_replication_slots = 0")
        .start();
    let (code, out, err) = walrelay(&["check", "-d", &c.unix_conninfo(), "-S", "s1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("\"s1\" does not exist"), "{out}");
    assert!(
        out.contains("max_replication_slots = 0: the server cannot create that slot"),
        "{out}"
    );
    let (code, out, err) = walrelay(&[
        "receive",
        "-d",
        &c.unix_conninfo(),
        "-S",
        "s1",
        "--create-slot",
    ]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        err.contains("raise max_replication_slots on the server"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("walrelay: error:"))
            .count(),
        1,
        "{err}"
    );
}
