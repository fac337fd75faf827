// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! Hostile and broken downstreams against `walrelay serve`: each gets PostgreSQL's answer — an
//! ErrorResponse with the right SQLSTATE naming the cause, or the connection dropped after
//! `wal_sender_timeout` — while a well-behaved pg_receivewal behind the same relay streams on,
//! and the relay never panics.
//!
//! The misbehaviour is sent over raw sockets (`support::relay::RawClient`), the refusals that
//! libpq clients meet are checked with the real tools (their messages are what users read).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use walrelay_protocol::{BackendMessage, Lsn, WalSegmentSize};
use walrelay_testkit::{pg_command, Cluster};

use support::relay::{error_of, interrupt, primary, wait_complete_segment, RawClient, Relay};
use support::{server, wal_files};

/// The relay drops a silent streaming client after this.
const SENDER_TIMEOUT_SECS: u64 = 4;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1 << 20).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a Debian 15 client tool; returns (success, stderr).
fn tool(primary: &Cluster, name: &str, args: &[&str]) -> (bool, String) {
    let out = pg_command(&primary.install().tools().tool(name))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SQLSTATE of the error among `msgs` (panics without one).
fn code(msgs: &[BackendMessage]) -> String {
    error_of(msgs)
        .unwrap_or_else(|| panic!("no ErrorResponse in {msgs:?}"))
        .code
        .clone()
}

fn message(msgs: &[BackendMessage]) -> String {
    error_of(msgs)
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// After an error the session goes on: the next command works.
fn still_usable(c: &mut RawClient) {
    c.query("IDENTIFY_SYSTEM");
    let msgs = c.until_ready();
    assert!(
        msgs.iter().any(|m| matches!(m, BackendMessage::DataRow(_))),
        "the session broke after an error: {msgs:?}"
    );
}

fn spawn_receivewal(primary: &Cluster, conninfo: &str, dir: &Path) -> Child {
    pg_command(&primary.install().tools().pg_receivewal())
        .args(["-d", conninfo, "-D", path(dir), "-s", "1", "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn hostile_clients_get_errors_and_nobody_else_notices() {
    let primary = primary("relay-hostile", &["wal_keep_size = '128MB'"]);
    let archive = primary.scratch_path("relay-archive");
    std::fs::create_dir_all(&archive).unwrap();
    // The replicator's verifier as the primary stores it, and a user with a plain password.
    let verifier = primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'");
    let auth_file = primary.scratch_path("userlist.txt");
    std::fs::write(
        &auth_file,
        format!("; relay users\n\"replicator\" \"{verifier}\"\n\"archiver\" \"arch-pass\"\n"),
    )
    .unwrap();
    // A plain password: readable by its owner only, or the relay refuses the file.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let upstream = format!("{} application_name=relay", primary.replication_conninfo());
    let timeout = SENDER_TIMEOUT_SECS.to_string();
    let mut relay = Relay::start(
        &upstream,
        &archive,
        &[
            "--auth-file",
            path(&auth_file),
            "--allow",
            "127.0.0.1/32",
            "--wal-sender-timeout",
            &timeout,
        ],
    );
    server::wait_streaming(&primary, "relay");
    let addr = relay.addr();

    // The well-behaved downstream, streaming all along.
    let good_dir = primary.scratch_path("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let mut good = spawn_receivewal(
        &primary,
        &relay.conninfo("archiver", Some("arch-pass")),
        &good_dir,
    );

    // Wrong password, unknown user: what libpq clients print.
    let empty = primary.scratch_path("never-written");
    std::fs::create_dir_all(&empty).unwrap();
    for (user, password) in [("replicator", "wrong"), ("mallory", "x")] {
        let conninfo = relay.conninfo(user, Some(password));
        let args = ["-d", &conninfo, "-D", path(&empty), "-n", "-w"];
        let (ok, err) = tool(&primary, "pg_receivewal", &args);
        let want = format!("password authentication failed for user \"{user}\"");
        assert!(!ok && err.contains(&want), "{err}");
    }
    // The same through the raw client: FATAL 28P01, then the connection closes.
    let (mut c, msgs) = RawClient::login_scram(addr, "replicator", "nope");
    assert_eq!(code(&msgs), "28P01");
    assert!(c.closed_within(Duration::from_secs(5)));

    // A non-replication connection (psql): refused with the reason.
    let (ok, err) = tool(
        &primary,
        "psql",
        &[
            "-d",
            &format!(
                "{} dbname=postgres",
                relay.conninfo("replicator", Some("rep"))
            ),
            "-c",
            "SELECT 1",
        ],
    );
    assert!(
        !ok && err.contains("accepts only replication connections"),
        "{err}"
    );

    // Outside --allow: a loopback address the list does not name.
    let mut c = RawClient::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), addr);
    c.startup(&[("user", "replicator"), ("replication", "true")]);
    let msgs = c.until_ready();
    assert_eq!(code(&msgs), "28000", "{msgs:?}");
    assert!(message(&msgs).contains("127.0.0.2"), "{msgs:?}");

    // Logged in properly, then misbehaving with commands: each is an ERROR, the session stays.
    let (mut c, msgs) = RawClient::login_scram(addr, "replicator", "rep");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert!(msgs
        .iter()
        .any(|m| matches!(m, BackendMessage::BackendKeyData { .. })));
    for (cmd, want_code, want_text) in [
        (
            "SELECT pg_is_in_recovery()",
            "0A000",
            "cannot execute SQL commands",
        ),
        (
            "show wal_segment_size",
            "0A000",
            "cannot execute SQL commands",
        ),
        (
            "SHOW no_such_setting",
            "42704",
            "unrecognized configuration parameter",
        ),
        (
            "START_REPLICATION 0/1 TIMELINE 0",
            "42601",
            "invalid timeline 0",
        ),
        ("START_REPLICATION garbage", "42601", "syntax error"),
        (
            "START_REPLICATION 0/3000000 TIMELINE 7",
            "XX000",
            "requested timeline 7 is not in this server's history",
        ),
        (
            "CREATE_REPLICATION_SLOT \"Bad-Name\" PHYSICAL",
            "42602",
            "contains invalid character",
        ),
        (
            "CREATE_REPLICATION_SLOT l LOGICAL pgoutput",
            "0A000",
            "physical replication only",
        ),
        (
            "START_REPLICATION SLOT \"nosuchslot\" 0/0",
            "42704",
            "does not exist",
        ),
        (
            "DROP_REPLICATION_SLOT nosuchslot",
            "42704",
            "does not exist",
        ),
        ("TIMELINE_HISTORY 5", "58P01", "00000005.history"),
        (
            "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/tmp/x')",
            "0A000",
            "client only",
        ),
    ] {
        c.query(cmd);
        let msgs = c.until_ready();
        assert_eq!(code(&msgs), want_code, "{cmd}: {msgs:?}");
        assert!(message(&msgs).contains(want_text), "{cmd}: {msgs:?}");
        assert!(
            matches!(msgs.last(), Some(BackendMessage::ReadyForQuery { .. })),
            "{cmd}"
        );
    }
    still_usable(&mut c);

    // A slot name past 63 bytes is cut, as a server cuts it, and the client is told (NOTICE 42622).
    let long = format!("relay_{}", "x".repeat(70));
    c.query(&format!("CREATE_REPLICATION_SLOT {long} PHYSICAL"));
    let msgs = c.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    let cut = &long[..63];
    assert!(
        msgs.iter().any(|m| matches!(m, BackendMessage::NoticeResponse(f)
            if f.code == "42622" && f.message.contains(&format!("will be truncated to \"{cut}\"")))),
        "{msgs:?}"
    );
    c.query(&format!("DROP_REPLICATION_SLOT {cut}"));
    let msgs = c.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    still_usable(&mut c);

    // Start points: far in the future, and before the archive's oldest WAL. Both get COPY, then
    // the walsender's error naming the position, then ReadyForQuery.
    for (start, want_code, want_text) in [
        ("FF/0", "XX000", "is ahead of the WAL flush position"),
        ("0/0", "58P01", "has already been removed"),
    ] {
        c.query(&format!("START_REPLICATION {start} TIMELINE 1"));
        let msgs = c.until_ready();
        assert!(
            matches!(msgs.first(), Some(BackendMessage::CopyBothResponse(_))),
            "{msgs:?}"
        );
        assert_eq!(code(&msgs), want_code, "{start}: {msgs:?}");
        assert!(message(&msgs).contains(want_text), "{start}: {msgs:?}");
        still_usable(&mut c);
    }

    // Protocol garbage: the extended query protocol, a password message out of place, an unknown
    // message type — FATAL 08P01 and closed.
    for bytes in [
        &b"P\0\0\0\x08\0\0\0\0"[..],
        b"p\0\0\0\x08abcd",
        b"?\0\0\0\x04",
    ] {
        let (mut c, _) = RawClient::login_scram(addr, "replicator", "rep");
        c.send(bytes);
        let msgs = c.until_ready();
        assert_eq!(code(&msgs), "08P01", "{bytes:?}: {msgs:?}");
        assert!(c.closed_within(Duration::from_secs(5)), "{bytes:?}");
    }
    // Garbage before login: a startup packet of absurd length, random bytes, a CancelRequest, a
    // protocol 2 startup: closed (with an error where the client can read one).
    for bytes in [
        &b"\x7f\xff\xff\xff"[..],
        b"\0\0\0\x09\x01\x02\x03\x04\x05",
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02",
        b"\0\0\0\x09\0\x02\0\0\0",
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let mut c = RawClient::connect(addr);
        c.send(bytes);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{bytes:?} left the connection open"
        );
    }
    // A client that vanishes mid-startup does no harm either.
    let mut c = RawClient::connect(addr);
    c.send(b"\0\0\0\x50\0\x03\0\0user");
    drop(c);

    // A client that starts streaming, then neither reads nor answers: dropped after
    // wal_sender_timeout, while the good downstream goes on.
    let (mut stuck, _) = RawClient::login_scram(addr, "replicator", "rep");
    stuck.query("IDENTIFY_SYSTEM");
    let ident = stuck.until_ready();
    let pos = ident
        .iter()
        .find_map(|m| match m {
            BackendMessage::DataRow(cols) => cols[2]
                .as_ref()
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<Lsn>().ok()),
            _ => None,
        })
        .expect("IDENTIFY_SYSTEM's xlogpos");
    let start = pos.segment_start(seg().bytes());
    stuck.query(&format!("START_REPLICATION {start} TIMELINE 1"));
    let mut last = Lsn(0);
    for i in 0..6 {
        server::insert_rows(&primary, "while_stuck", 4000 + i);
        last = primary.switch_wal();
    }
    wait_complete_segment(&good_dir, last, seg(), &mut good);
    std::thread::sleep(Duration::from_secs(SENDER_TIMEOUT_SECS + 2));
    assert!(
        stuck.closed_within(Duration::from_secs(SENDER_TIMEOUT_SECS)),
        "the silent client was not dropped"
    );
    assert!(
        relay.w.full_log().contains("due to replication timeout"),
        "{}",
        relay.w.full_log()
    );

    // Everything the good downstream got is the primary's own WAL.
    let compared = wal_files::assert_identical_to_server(&good_dir, &primary.pg_wal_dir(), seg());
    assert!(compared >= 6, "{compared}");
    assert!(good.try_wait().unwrap().is_none(), "pg_receivewal exited");

    // A second relay told to listen where this one does, or to serve metrics on the primary's
    // port: exit 5 (local), the cause and the option to change; the first relay is unaffected.
    let second = primary.scratch_path("second-relay");
    std::fs::create_dir_all(&second).unwrap();
    let primary_port = format!("127.0.0.1:{}", primary.port());
    for (option, value, extra) in [
        ("--listen", addr.to_string(), vec![]),
        (
            "--metrics-addr",
            primary_port,
            vec!["--listen", "127.0.0.1:0"],
        ),
    ] {
        let mut args: Vec<String> = [
            "serve",
            "-d",
            &upstream,
            "-D",
            path(&second),
            option,
            &value,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = support::walrelay_cmd::run(&args, Duration::from_secs(60));
        assert_eq!(out.code(), Some(5), "{option}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{option}: {}", out.stderr);
        assert!(
            errors[0].contains(&value)
                && errors[0].contains("another program listens there")
                && errors[0].contains(&format!("choose another port with {option}")),
            "{}",
            errors[0]
        );
    }
    // The same on a first start whose upstream does not answer: said at once, not after the
    // upstream is back.
    let nobody = format!(
        "host=127.0.0.1 port={} user=replicator connect_timeout=2",
        support::free_port()
    );
    let fresh = primary.scratch_path("fresh-relay");
    std::fs::create_dir_all(&fresh).unwrap();
    let out = support::walrelay_cmd::run(
        &[
            "serve".to_string(),
            "-d".into(),
            nobody,
            "-D".into(),
            path(&fresh).into(),
            "--listen".into(),
            addr.to_string(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(5), "{}", out.stderr);
    assert!(
        out.error_lines()
            .first()
            .is_some_and(|l| l.contains("another program listens there")),
        "{}",
        out.stderr
    );
    interrupt(&mut good);
    relay.assert_healthy();
}

/// Bad command lines: one error line naming the problem, exit 2 (usage), nothing started.
#[test]
fn serve_refuses_malformed_options() {
    let run = |args: &[&str]| {
        let args: Vec<String> = std::iter::once("serve")
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect();
        support::walrelay_cmd::run(&args, std::time::Duration::from_secs(30))
    };
    let help = run(&["--help"]);
    assert!(
        help.status.success() && help.stdout.contains("--sync-quorum"),
        "{}",
        help.stdout
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "\"u\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n").unwrap();
    let users = users.to_str().unwrap();
    for (args, want) in [
        (&["-D", d, "--listen", "nope"][..], "HOST:PORT"),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "--allow", "10.0.0.0/33"],
            "invalid network",
        ),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "--auth", "scram"],
            "needs --auth-file",
        ),
        (
            &[
                "-D",
                d,
                "--listen",
                "127.0.0.1:0",
                "--auth",
                "trust",
                "--auth-file",
                users,
            ],
            "takes no --auth-file",
        ),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "--auth-file", users],
            "MD5",
        ),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "--sync-quorum", "0"],
            "at least 1",
        ),
        (
            &[
                "-D",
                d,
                "--listen",
                "127.0.0.1:0",
                "--sync-quorum",
                "5",
                "--max-wal-senders",
                "4",
            ],
            "can never be met",
        ),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "--max-wal-senders", "0"],
            "would serve nobody",
        ),
        (
            &[
                "-D",
                d,
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/nonexistent.crt",
            ],
            "required arguments were not provided",
        ),
        (
            &["-D", d, "--listen", "127.0.0.1:0", "-S", "Bad-Slot"],
            "invalid replication slot name",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{args:?}: {}", out.stderr);
        assert!(
            errors[0].contains(want),
            "{args:?}: {:?} lacks {want:?}",
            errors[0]
        );
        assert!(!out.stderr.contains("panicked"));
    }
}
