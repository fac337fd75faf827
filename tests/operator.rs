#![allow(clippy::unwrap_used)]

//! Issue 18, "an operator's day", against real PostgreSQL 15: the items that need a server. (The
//! ones that need none — usage errors, pg habits, `WALRELAY_*`, exit codes without a server, DNS at
//! start-up, bootstrap's early warnings — are in tests/cli.rs.)
//!
//! * item 1/3: `bootstrap -P` with stderr in a file prints progress lines, the checkpoint wait
//!   explained, the copy in pg_basebackup's `kB (N%)` numbers;
//! * item 9/11: a primary with group access gives a standby whose every directory is 0750 and
//!   every file 0640;
//! * items 4, 6, 9, 10 on one running receiver: `/metrics` read by the reference Prometheus
//!   parsers (Python's `prometheus_client`, both formats), JSON logs with a line per segment,
//!   `check -S` green on the slot the receiver uses, and `replay_lag` that does not grow;
//! * item 7: the exit codes a server decides (authentication, a missing slot), per command;
//! * item 8: a `--pg-wal` standby that streams from the primary itself is refused.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use walrelay_testkit::{AuthMethod, Cluster};

use support::bootstrap_cli::Bootstrap;
use support::exit_code;
use support::walrelay_cmd::{self, receive_args, Walrelay};
use support::{poll, server};

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Items 1 and 3: `-P` with stderr not a terminal prints plain lines — the checkpoint wait says what
/// it waits for and how not to, the copy shows pg_basebackup's numbers, the last line 100%.
#[test]
fn progress_lines_when_stderr_is_a_file() {
    // A spread checkpoint paced over 10% of 30 s: about 3 s of waiting to see explained.
    let primary = Cluster::builder()
        .name("op-progress")
        .fsync(false)
        .conf("checkpoint_timeout = '30s'")
        .conf("checkpoint_completion_target = 0.1")
        .start();
    primary.psql(
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );
    let target = primary.scratch_path("standby");
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-P", "-c", "spread"])
        .run();
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!out.stderr.contains('\r'), "no terminal redraws in a file");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("walrelay: waiting for checkpoint (")
                && l.contains("use -c fast to start now")),
        "{}",
        out.stderr
    );
    let copy: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("walrelay: ") && l.contains(" kB"))
        .collect();
    let last = copy
        .last()
        .unwrap_or_else(|| panic!("no copy line: {}", out.stderr));
    assert!(last.contains("(100%)"), "{}", out.stderr);
    // The same units as the summary line (PostgreSQL's kB/MB of 1024).
    assert!(
        last.contains(" MB") || last.contains(" kB copied"),
        "{last}"
    );
    let summary = lines
        .iter()
        .find(|l| l.starts_with("walrelay: bootstrapped"))
        .expect("summary line");
    assert!(
        summary.contains(" MB") || summary.contains(" kB"),
        "{summary}"
    );
}

/// Items 9 and 11: from a primary initialized with group access, every directory of the standby
/// is 0750 and every file 0640 — data directory, tablespace-free tree, backup_manifest, the
/// standby configuration and the WAL streamed into pg_wal included — as pg_basebackup makes it.
#[test]
fn group_access_primary_gives_a_group_readable_standby() {
    let primary = Cluster::builder()
        .name("op-group")
        .fsync(false)
        .group_access(true)
        .start();
    assert_eq!(primary.psql("SHOW data_directory_mode"), "0750");
    let target = primary.scratch_path("standby");
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "fast"])
        .run();
    assert!(out.status.success(), "{}", out.stderr);
    let mut wrong = Vec::new();
    let mut seen = (0, 0);
    let mut stack = vec![target.clone()];
    while let Some(dir) = stack.pop() {
        let mode = fs::symlink_metadata(&dir).unwrap().permissions().mode() & 0o7777;
        seen.0 += 1;
        if mode != 0o750 {
            wrong.push(format!("{} {mode:04o}", dir.display()));
        }
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                seen.1 += 1;
                let mode = meta.permissions().mode() & 0o7777;
                if mode != 0o640 {
                    wrong.push(format!("{} {mode:04o}", e.path().display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "modes not 0750/0640: {wrong:#?}");
    for f in ["backup_manifest", "standby.signal", "postgresql.auto.conf"] {
        assert!(target.join(f).is_file(), "{f}");
    }
    let wal = fs::read_dir(target.join("pg_wal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 24)
        .count();
    assert!(wal > 0, "streamed WAL is among the files checked");
    assert!(seen.0 > 10 && seen.1 > 100, "{seen:?}");
}

/// Both exposition formats of `/metrics`, read by the Python Prometheus client's parsers: one line
/// per sample, `family<TAB>type<TAB>sample<TAB>labels as JSON<TAB>value`.
fn parse_with_prometheus_client(body: &str, openmetrics: bool) -> Vec<Vec<String>> {
    let module = if openmetrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys, json\n\
         from {module} import text_string_to_metric_families\n\
         for f in text_string_to_metric_families(sys.stdin.read()):\n\
         \x20   for s in f.samples:\n\
         \x20       print('\\t'.join([f.name, f.type, s.name, json.dumps(s.labels, sort_keys=True), repr(s.value)]))\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (the tests read /metrics with its prometheus_client)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(body.as_bytes())
            .expect("write /metrics to python");
    }
    let out = child.wait_with_output().expect("python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "the Prometheus parser is missing: pip install prometheus_client (scripts/test.sh does)"
    );
    assert!(
        out.status.success(),
        "the parser refused /metrics: {err}\n{body}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// `GET /metrics` with an `Accept` header: (content type, body).
fn scrape(port: u16, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// Items 4, 6, 9 and 10 on one receiver running as a service would: JSON logs, metrics, a slot.
#[test]
fn a_receiver_in_service_mode_is_observable() {
    let primary = Cluster::builder()
        .name("op-service")
        .wal_segsize_mb(1)
        .fsync(false)
        .conf("wal_keep_size = '256MB'")
        .start();
    let archive = primary.scratch_path("archive");
    fs::create_dir_all(&archive).unwrap();
    let conninfo = format!("{} application_name=wr_service", primary.conninfo());
    let created = walrelay_cmd::run(
        &receive_args(&["-d", &conninfo, "-S", "svc", "--create-slot"]),
        poll::timeout(),
    );
    assert_eq!(created.code(), Some(0), "{created:?}");
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = Walrelay::start(
        "service",
        &receive_args(&[
            "-d",
            &conninfo,
            "-D",
            path(&archive),
            "-S",
            "svc",
            "--metrics-addr",
            &addr,
            "--log-format",
            "json",
            "--status-interval",
            "1",
        ]),
    );
    server::wait_streaming(&primary, "wr_service");

    // Item 6: a healthy receiver says something at INFO — a line per completed segment — and every
    // line is a JSON object with clean fields.
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    primary.switch_wal();
    w.wait_log("segment complete", poll::timeout());
    for line in w.log().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("starting WAL stream"))
        {
            assert_eq!(v["timeline"], 1, "a number, as everywhere: {line}");
        }
        if v["message"] == "segment complete" {
            assert!(
                v["segment"].as_str().is_some_and(|s| s.len() == 24),
                "{line}"
            );
            assert_eq!(v["timeline"], 1, "{line}");
            assert!(
                v["end_lsn"].as_str().is_some_and(|s| s.contains('/')),
                "{line}"
            );
        }
    }

    // Item 4: both formats, read by the reference parsers, every metric typed.
    let (ctype, text) = scrape(port, "text/plain;version=0.0.4;q=1,*/*;q=0.1");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (ctype, om) = scrape(port, prometheus);
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ctype}"
    );
    for (samples, format) in [
        (parse_with_prometheus_client(&text, false), "0.0.4"),
        (parse_with_prometheus_client(&om, true), "OpenMetrics"),
    ] {
        let typed = |family: &str| {
            samples
                .iter()
                .find(|s| s[0] == family)
                .map(|s| s[1].clone())
                .unwrap_or_else(|| panic!("{format}: no {family}: {samples:?}"))
        };
        for s in &samples {
            assert!(s[1] != "unknown" && s[1] != "untyped", "{format}: {s:?}");
            if s[0].starts_with("walrelay_receive_") {
                assert!(s[3].contains("\"mode\": \"archive\""), "{format}: {s:?}");
                assert!(s[3].contains("\"slot\": \"svc\""), "{format}: {s:?}");
            }
        }
        assert_eq!(typed("walrelay_receive_reconnects"), "counter", "{format}");
        assert_eq!(
            typed("walrelay_receive_segments_completed"),
            "counter",
            "{format}"
        );
        assert_eq!(typed("walrelay_receive_flushed_lsn"), "gauge", "{format}");
        // The commit-path latency: a histogram per stage, buckets up to +Inf, the count equal
        // to the +Inf bucket (the parsers check it), at least one flush cycle measured.
        assert_eq!(
            typed("walrelay_receive_commit_path_seconds"),
            "histogram",
            "{format}"
        );
        for stage in ["durable", "acknowledged"] {
            let of = |name: &str| {
                samples
                    .iter()
                    .filter(|s| s[2] == name && s[3].contains(&format!("\"stage\": \"{stage}\"")))
                    .collect::<Vec<_>>()
            };
            let buckets = of("walrelay_receive_commit_path_seconds_bucket");
            assert!(buckets.len() > 10, "{format} {stage}: {buckets:?}");
            assert!(
                buckets.last().unwrap()[3].contains("\"le\": \"+Inf\""),
                "{format} {stage}: {buckets:?}"
            );
            let count = of("walrelay_receive_commit_path_seconds_count");
            assert_eq!(count.len(), 1, "{format} {stage}");
            assert_eq!(count[0][4], buckets.last().unwrap()[4], "{format} {stage}");
            assert_eq!(of("walrelay_receive_commit_path_seconds_sum").len(), 1);
            if stage == "durable" {
                let n: f64 = count[0][4].parse().expect("a number");
                assert!(n >= 1.0, "{format}: no flush cycle measured");
            }
        }
        // 0.0.4 has no info type: a gauge named with its sample's name.
        if format == "0.0.4" {
            assert_eq!(typed("walrelay_build_info"), "gauge", "{format}");
        } else {
            assert_eq!(typed("walrelay_build"), "info", "{format}");
        }
        let stream = samples
            .iter()
            .find(|s| s[2] == "walrelay_receive_stream_info")
            .expect("stream info");
        assert!(stream[3].contains("\"timeline\": \"1\""), "{stream:?}");
        // An LSN as a number: the byte position, comparable with the server's.
        let flushed: f64 = samples
            .iter()
            .find(|s| s[2] == "walrelay_receive_flushed_lsn")
            .map(|s| s[4].parse().expect("a number"))
            .expect("flushed_lsn");
        assert!(flushed >= 2.0 * 1024.0 * 1024.0, "{format}: {flushed}");
    }

    // Item 9: check -S is the monitoring probe of that slot: in use by the receiver is healthy,
    // and unbounded retention is worth a warning.
    let check = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["check", "-d", &primary.conninfo(), "-S", "svc", "--json"])
        .env("WALRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&check.stdout)));
    assert_eq!(check.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ready"], true, "{report:#}");
    assert_eq!(report["slot"]["active"], true, "{report:#}");
    assert!(
        report["notes"].to_string().contains("wr_service"),
        "the note names who uses it: {report:#}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains("max_slot_wal_keep_size = -1"),
        "{report:#}"
    );

    // Item 10: the archive's row in pg_stat_replication reports its durable position as replayed,
    // so replay_lag tracks the flush lag instead of growing for as long as the connection lasts.
    for _ in 0..5 {
        primary.psql("INSERT INTO t SELECT g FROM generate_series(1, 5000) g");
        primary.switch_wal();
        std::thread::sleep(Duration::from_millis(300));
    }
    server::wait_reported(
        &primary,
        "wr_service",
        "the archive's replay_lsn to reach the end of the load",
        |r| r.replay_lsn,
        primary.current_wal_lsn(),
    );
    let row = primary.psql_rows(
        "SELECT replay_lsn = flush_lsn, coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication WHERE application_name = 'wr_service'",
    );
    assert_eq!(row[0][0], "t", "{row:?}");
    let lag: f64 = row[0][1].parse().unwrap();
    assert!(lag < 10.0, "replay_lag {lag} s");

    w.stop_cleanly(poll::timeout());
}

/// Item 7: the exit codes the server decides, the same in every command: authentication refused
/// is 3, a missing slot 4 (check reports it and exits 1: not ready).
#[test]
fn server_decided_exit_codes_per_command() {
    let primary = Cluster::builder()
        .name("op-exit")
        .auth(AuthMethod::ScramSha256)
        .superuser_password("pw-Sekr1t")
        .start();
    let wrong = format!(
        "host=127.0.0.1 port={} user={} password=wrong dbname=postgres",
        primary.port(),
        primary.superuser()
    );
    let good = primary.conninfo();
    let archive = primary.scratch_path("archive");
    fs::create_dir_all(&archive).unwrap();
    let target = primary.scratch_path("standby");
    let table: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["check", "-d", &wrong],
            exit_code::CONNECTION,
            "password authentication failed",
        ),
        (
            vec!["bootstrap", "-d", &wrong, "-D", path(&target)],
            exit_code::CONNECTION,
            "password authentication failed",
        ),
        (
            vec!["receive", "-d", &wrong, "-D", path(&archive)],
            exit_code::CONNECTION,
            "password authentication failed",
        ),
        (
            vec!["receive", "-d", &wrong, "--create-slot", "-S", "x"],
            exit_code::CONNECTION,
            "password authentication failed",
        ),
        (
            vec![
                "bootstrap",
                "-d",
                &good,
                "-D",
                path(&target),
                "-S",
                "nosuch",
            ],
            exit_code::SERVER_STATE,
            "\"nosuch\" does not exist",
        ),
        (
            vec!["receive", "-d", &good, "-D", path(&archive), "-S", "nosuch"],
            exit_code::SERVER_STATE,
            "\"nosuch\" does not exist",
        ),
        (
            vec!["receive", "-d", &good, "--drop-slot", "-S", "nosuch"],
            exit_code::SERVER_STATE,
            "\"nosuch\" does not exist",
        ),
        (
            vec!["check", "-d", &good, "-S", "nosuch"],
            exit_code::ERROR,
            "does not exist",
        ),
    ];
    for (args, want, needle) in table {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = walrelay_cmd::run(&args, poll::timeout());
        assert_eq!(out.code(), Some(want), "{args:?}: {out:?}");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains(needle), "{args:?}: {text}");
        assert!(!text.contains("Sekr1t"), "password leaked: {text}");
        if want != exit_code::ERROR {
            assert_eq!(out.error_lines().len(), 1, "{args:?}: {}", out.stderr);
        }
    }
    assert!(!target.exists(), "a refused bootstrap leaves nothing");
}

/// Item 8: a standby fed through its pg_wal must not stream from the primary itself; with
/// --standby-conninfo walrelay asks it and refuses at once (exit 4) with the fix, instead of
/// retrying "slot is active" for ever; without it, the data directory's configuration files say.
#[test]
fn a_sidecar_standby_with_its_own_walreceiver_is_refused() {
    let primary = Cluster::builder().name("op-sidecar").fsync(false).start();
    let dir = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    let standby = primary.standby(&dir).start();
    standby.catch_up(&primary);
    let out = walrelay_cmd::run(
        &receive_args(&[
            "-d",
            &primary.conninfo(),
            "--pg-wal",
            path(&dir),
            "--standby-conninfo",
            &standby.conninfo(),
        ]),
        poll::timeout(),
    );
    assert_eq!(out.code(), Some(exit_code::SERVER_STATE), "{out:?}");
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].contains("runs its own walreceiver (streaming"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("primary_conninfo"), "{}", lines[0]);

    // Without --standby-conninfo: the standby's configuration read as the server reads it,
    // refused the same way before connecting; the line names where primary_conninfo is set.
    let sidecar_refusal = |origin: &str| {
        let out = walrelay_cmd::run(
            &receive_args(&["-d", &primary.conninfo(), "--pg-wal", path(&dir)]),
            poll::timeout(),
        );
        assert_eq!(out.code(), Some(exit_code::SERVER_STATE), "{out:?}");
        let lines = out.error_lines();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(
            lines[0].contains(&format!("has primary_conninfo set ({origin})")),
            "{}",
            lines[0]
        );
        lines[0].to_string()
    };
    // pg_basebackup -R wrote it into postgresql.auto.conf.
    let line = sidecar_refusal("postgresql.auto.conf");
    assert!(
        line.contains("ALTER SYSTEM SET primary_conninfo = ''"),
        "{line}"
    );

    // Set where only the server's own way of reading its configuration finds it: a file of an
    // include_dir, then the command line it started with (postmaster.opts).
    let auto = dir.join("postgresql.auto.conf");
    let cleared: String = std::fs::read_to_string(&auto)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("primary_conninfo"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&auto, cleared).unwrap();
    let conf = dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("include_dir = 'conf.d'\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let stream = dir.join("conf.d/10-stream.conf");
    std::fs::write(
        &stream,
        format!("primary_conninfo = '{}'\n", primary.conninfo()),
    )
    .unwrap();
    sidecar_refusal("conf.d/10-stream.conf");
    std::fs::remove_file(&stream).unwrap();
    let opts = dir.join("postmaster.opts");
    let mut text = std::fs::read_to_string(&opts).unwrap();
    text = format!(
        "{} \"-c\" \"primary_conninfo={}\"\n",
        text.trim_end(),
        primary.conninfo()
    );
    std::fs::write(&opts, text).unwrap();
    sidecar_refusal("the command line it last started with, in postmaster.opts");
}

/// Item 3: a tablespace whose directory is in the way (here the primary's own, on the same host,
/// and no `-T`) is reported before the checkpoint — not after a spread checkpoint that would take
/// 27 minutes here.
#[test]
fn a_tablespace_clash_is_reported_before_the_checkpoint() {
    let primary = Cluster::builder()
        .name("op-tblspc")
        .fsync(false)
        .conf("checkpoint_timeout = '30min'")
        .conf("checkpoint_completion_target = 0.9")
        .start();
    let location = primary.create_tablespace("ts1");
    primary.psql("CREATE TABLE big TABLESPACE ts1 AS SELECT g FROM generate_series(1, 10000) g");
    let target = primary.scratch_path("standby");
    let t0 = std::time::Instant::now();
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["-c", "spread"])
        .run_within(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(exit_code::LOCAL), "{}", out.stderr);
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let lines = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("walrelay: error:"))
        .collect::<Vec<_>>();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains(path(&location)), "{}", lines[0]);
    assert!(lines[0].contains("-T OLDDIR=NEWDIR"), "{}", lines[0]);
    assert!(!target.exists(), "nothing left behind");
}

/// Item 11: `--waldir` as pg_basebackup has it — the WAL in another directory, `pg_wal` a symbolic
/// link to it — streamed or fetched, and the result starts as a standby; a failed run removes the
/// WAL directory it created.
#[test]
fn waldir_puts_the_wal_elsewhere_behind_a_link() {
    let primary = Cluster::builder().name("op-waldir").fsync(false).start();
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    for method in ["stream", "fetch"] {
        let target = primary.scratch_path(&format!("standby-{method}"));
        let waldir = primary.scratch_path(&format!("wal-{method}"));
        if method == "fetch" {
            // An existing empty directory of mode 0755: given the data directory's mode, so that
            // the WAL files in it are not readable by the group (the cluster grants none).
            fs::create_dir(&waldir).unwrap();
            fs::set_permissions(&waldir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Bootstrap::new(&primary.conninfo(), &target)
            .args(&["-c", "fast", "-X", method, "--waldir", path(&waldir)])
            .run();
        assert!(out.status.success(), "{method}: {}", out.stderr);
        let link = target.join("pg_wal");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{method}: pg_wal is a link"
        );
        assert_eq!(fs::read_link(&link).unwrap(), waldir, "{method}");
        let segments = fs::read_dir(&waldir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 24)
            .count();
        assert!(segments > 0, "{method}: no WAL in {}", waldir.display());
        assert_eq!(
            fs::metadata(&waldir).unwrap().permissions().mode() & 0o777,
            0o700,
            "{method}"
        );
        for e in fs::read_dir(&waldir).unwrap() {
            let e = e.unwrap();
            if e.file_name().len() == 24 {
                assert_eq!(
                    e.metadata().unwrap().permissions().mode() & 0o777,
                    0o600,
                    "{method}: {:?}",
                    e.file_name()
                );
            }
        }
        assert!(waldir.join("archive_status").is_dir(), "{method}");
        if method == "stream" {
            let standby = primary.standby(&target).name("op-waldir-standby").start();
            primary.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
            standby.catch_up(&primary);
            assert_eq!(standby.psql("SELECT count(*) FROM t"), "2000");
        }
    }
    let target = primary.scratch_path("standby-failed");
    let waldir = primary.scratch_path("wal-failed");
    // A slot that does not exist: refused by the server once the directories were prepared.
    let refused_for_its_slot = || {
        let out = Bootstrap::new(&primary.conninfo(), &target)
            .args(&["-c", "fast", "-S", "nosuch", "--waldir", path(&waldir)])
            .run();
        assert_eq!(
            out.status.code(),
            Some(exit_code::SERVER_STATE),
            "{}",
            out.stderr
        );
    };
    refused_for_its_slot();
    assert!(
        !waldir.exists() && !target.exists(),
        "a failed run leaves nothing"
    );
    // An existing --waldir gets its mode back after a failure.
    fs::create_dir(&waldir).unwrap();
    fs::set_permissions(&waldir, fs::Permissions::from_mode(0o755)).unwrap();
    refused_for_its_slot();
    assert_eq!(fs::read_dir(&waldir).unwrap().count(), 0);
    assert_eq!(
        fs::metadata(&waldir).unwrap().permissions().mode() & 0o777,
        0o755
    );
    fs::remove_dir(&waldir).unwrap();
    let out = Bootstrap::new(&primary.conninfo(), &target)
        .args(&["--waldir", "relative/wal"])
        .run();
    assert_eq!(out.status.code(), Some(exit_code::USAGE), "{}", out.stderr);
    assert!(
        out.stderr.contains("not an absolute path"),
        "{}",
        out.stderr
    );
}
