#![allow(clippy::unwrap_used)]

//! Command-line behaviour that needs no server: usage errors, help, exit codes.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn usage_errors_exit_2_except_under_restore() {
    let (code, out) = run(&["check", "--bogus"]);
    assert_eq!(code, 2, "{out}");
    // PostgreSQL would read 2 from a restore_command as "file not found" and end recovery early.
    let (code, out) = run(&["restore", "--bogus", "000000010000000000000001", "/tmp/x"]);
    assert!(code > 125, "restore usage error exit {code}: {out}");
    let (code, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let (code, out) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains("walrelay"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "check",
        "bootstrap",
        "receive",
        "restore",
        "verify",
        "prune",
        "demo",
        "subset",
    ] {
        let (code, out) = run(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {out}");
        assert!(out.contains("Usage: walrelay"), "{sub}: {out}");
    }
    for sub in ["run", "status", "verify", "drop"] {
        let (code, out) = run(&["subset", sub, "--help"]);
        assert_eq!(code, 0, "subset {sub}: {out}");
        assert!(out.contains("--target <CONNSTR>"), "subset {sub}: {out}");
    }
}

#[test]
fn malformed_options_name_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["receive", "-D", "/nonexistent-walrelay-dir"],
            "does not exist",
        ),
        (&["receive", "-D", "/tmp", "--start", "nope"], "invalid LSN"),
        (&["receive", "-D", "/tmp", "--compress", "brotli"], "brotli"),
        (
            &["receive", "-D", "/tmp", "--synchronous", "--no-sync"],
            "cannot be used with",
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "-c", "slow"],
            "must be \"fast\" or \"spread\"",
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "-X", "sideways"],
            "invalid wal-method",
        ),
        (
            &[
                "subset", "run", "--target", "dbname=x", "--name", "Bad", "-t", "t",
            ],
            "invalid --name \"Bad\"",
        ),
        (
            &[
                "subset", "run", "--target", "dbname=x", "--name", "ok", "-t", "a.b.c",
            ],
            "invalid table name \"a.b.c\"",
        ),
        (&["subset", "run", "--name", "ok"], "--target <CONNSTR>"),
        (
            &[
                "subset", "verify", "--target", "dbname=x", "--name", "ok", "--wait", "x",
            ],
            "invalid value 'x'",
        ),
    ];
    for (args, want) in cases {
        let (code, out) = run(args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out:?} lacks {want:?}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// Runs walrelay with `env` added (and no WALRELAY_* or PG* from the caller); exit code, stdout,
/// stderr.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WALRELAY_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines walrelay printed for a fatal error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("walrelay: error:"))
        .collect()
}

/// Issue 18, item 2: a usage error keeps clap's whole message — the argument's name, the value,
/// the "did you mean" tip — on one line, exit 2 (restore: above 125); item 5: pg habits that have
/// no meaning in walrelay say what to use instead.
#[test]
fn usage_errors_keep_clap_s_whole_message() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["bootstrap"],
            &["the following required arguments were not provided: --pgdata <DIR>"],
        ),
        (
            &["boostrap"],
            &[
                "unrecognized subcommand 'boostrap'",
                "a similar subcommand exists: 'bootstrap'",
            ],
        ),
        (
            &["receive", "-D", "/tmp", "--synchronus"],
            &[
                "unexpected argument '--synchronus'",
                "a similar argument exists: '--synchronous'",
            ],
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "-c", "slow"],
            &["invalid value 'slow' for '--checkpoint <fast|spread>'"],
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "--xlogdir", "/w"],
            &["'--xlogdir'", "use --waldir WALDIR"],
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "-F", "t"],
            &["'--format <p|plain>'", "pg_basebackup -F t"],
        ),
        (
            &["bootstrap", "-D", "/tmp/x", "-z"],
            &["'-z'", "pg_basebackup -F t -z"],
        ),
        (
            &["pg_receivewal"],
            &["walrelay receive takes pg_receivewal's options"],
        ),
        (
            &["receive", "-D", "/tmp", "--status-interval", "ten"],
            &["invalid value 'ten' for '--status-interval <SECS>'"],
        ),
    ];
    for (args, needles) in cases {
        let (code, out, err) = run_env(args, &[]);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        assert!(lines[0].starts_with("walrelay: error: "), "{err}");
        for n in *needles {
            assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
        }
        assert!(lines[0].contains("--help)"), "{err}");
    }
    let (code, _, err) = run_env(&["restore", "--bogus", "a", "b"], &[]);
    assert!(code > 125, "restore: {code} {err}");
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
}

/// Item 5: help as PostgreSQL's tools spell it, and pg_basebackup / pg_receivewal options that mean
/// something in walrelay are accepted (the runs then fail on the unreachable server, not on usage).
#[test]
fn pg_habits_are_accepted() {
    for args in [
        &["-h"][..],
        &["-?"],
        &["bootstrap", "-?"],
        &["receive", "-?"],
    ] {
        let (code, out, err) = run_env(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage: walrelay"), "{args:?}: {out}");
    }
    let dead = "host=127.0.0.1 port=1 connect_timeout=2";
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("standby");
    let target = target.to_str().unwrap();
    let archive = d.path().to_str().unwrap();
    for args in [
        &[
            "bootstrap",
            "-d",
            dead,
            "-D",
            target,
            "-R",
            "-N",
            "-n",
            "-F",
            "p",
            "-v",
            "-X",
            "s",
        ][..],
        &[
            "bootstrap",
            "-d",
            dead,
            "-D",
            target,
            "--no-slot",
            "--format=plain",
        ],
        &["receive", "-d", dead, "-D", archive, "-Z", "5", "-v", "-n"],
        &[
            "receive",
            "-d",
            dead,
            "-D",
            archive,
            "--compress=gzip:level=3",
            "-n",
        ],
    ] {
        let (code, _, err) = run_env(args, &[]);
        assert_ne!(code, 2, "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        assert_eq!(error_lines(&err).len(), 1, "{args:?}: {err}");
    }
}

/// Item 6: every option also comes from WALRELAY_<LONG_NAME> (switches as true/false), the command
/// line wins, and --help names the variable without showing its value.
#[test]
fn every_option_has_an_environment_variable() {
    let (code, _, err) = run_env(
        &["receive"],
        &[
            ("WALRELAY_DIRECTORY", "/nonexistent-walrelay-env"),
            ("WALRELAY_NO_LOOP", "true"),
            ("WALRELAY_STATUS_INTERVAL", "5"),
        ],
    );
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("/nonexistent-walrelay-env does not exist"),
        "{err}"
    );
    let (code, _, err) = run_env(
        &["receive", "-D", "/nonexistent-from-argv"],
        &[("WALRELAY_DIRECTORY", "/nonexistent-walrelay-env")],
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("/nonexistent-from-argv"), "{err}");
    let (code, _, err) = run_env(
        &["receive", "-D", "/tmp"],
        &[("WALRELAY_STATUS_INTERVAL", "ten")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--status-interval"), "{err}");
    let (code, out, _) = run_env(
        &["bootstrap", "--help"],
        &[("WALRELAY_DBNAME", "password=sekrit")],
    );
    assert_eq!(code, 0);
    for var in [
        "WALRELAY_PGDATA",
        "WALRELAY_SLOT",
        "WALRELAY_NO_SYNC",
        "WALRELAY_DBNAME",
        "WALRELAY_LOG_FORMAT",
    ] {
        assert!(out.contains(&format!("[env: {var}]")), "{var}: {out}");
    }
    assert!(!out.contains("sekrit"), "{out}");
    assert!(!out.contains("WALRELAY_PASSWORD"), "-W is a prompt: {out}");
    // Subcommands of subcommands too (`subset status`, `backup list`).
    let (_, _, err) = run_env(
        &["subset", "status"],
        &[
            ("WALRELAY_TARGET", "host=/nonexistent-walrelay-env"),
            ("WALRELAY_NAME", "envsubset"),
        ],
    );
    assert!(!err.contains("required arguments"), "{err}");
    assert!(err.contains("/nonexistent-walrelay-env"), "{err}");
    let (_, _, err) = run_env(
        &["backup", "list"],
        &[("WALRELAY_DIRECTORY", "/nonexistent-walrelay-env")],
    );
    assert!(
        err.contains("/nonexistent-walrelay-env does not exist"),
        "{err}"
    );
}

/// Item 7: the documented exit code for each class a command can meet without a server (the
/// server's classes are in tests/operator.rs), every command.
#[test]
fn exit_codes_per_command_without_a_server() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap().to_string();
    let file = d.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let file = file.to_str().unwrap().to_string();
    let damaged = d.path().join("wal");
    std::fs::create_dir(&damaged).unwrap();
    std::fs::write(damaged.join("000000010000000000000001"), vec![0u8; 100]).unwrap();
    let damaged = damaged.to_str().unwrap().to_string();
    let out = format!("{dir}/restored");
    let dns = "host=nosuchhost.invalid";
    let table: Vec<(Vec<&str>, i32)> = vec![
        (vec!["check", "--bogus"], 2),
        (vec!["check", "-d", dns], 3),
        (
            vec!["bootstrap", "-D", "/tmp/x", "-r", "20MB", "-d", dns],
            2,
        ),
        (vec!["bootstrap", "-D", "/tmp/x", "-C", "-d", dns], 2),
        (vec!["bootstrap", "-D", &file, "-d", dns], 5),
        (
            vec!["bootstrap", "-D", "/tmp/walrelay-cli-dns", "-d", dns],
            3,
        ),
        (vec!["receive", "--create-slot", "-d", dns], 2),
        (vec!["receive", "-D", "/nonexistent-walrelay", "-d", dns], 5),
        (vec!["receive", "-D", &dir, "-d", dns], 3),
        (vec!["verify", "-D", &dir, "--wal-segsize", "3MB"], 2),
        (vec!["verify", "-D", "/nonexistent-walrelay"], 5),
        (vec!["verify", "-D", &damaged, "--wal-segsize", "16MB"], 1),
        (vec!["prune", "-D", &dir, "--before", "27"], 2),
        (vec!["prune", "-D", &dir], 2),
        (
            vec![
                "prune",
                "-D",
                "/nonexistent-walrelay",
                "--before",
                "000000010000000000000002",
            ],
            5,
        ),
        (
            vec!["prune", "-D", &dir, "--before", "000000010000000000000002"],
            0,
        ),
        (
            vec!["restore", "000000010000000000000009", &out, "-D", &damaged],
            1,
        ),
        (
            vec!["restore", "000000010000000000000001", &out, "-D", &damaged],
            200,
        ),
        (vec!["restore", "000000010000000000000001", &out], 201),
        (vec!["demo", "--rows", "many"], 2),
    ];
    for (args, want) in table {
        let (code, stdout, err) = run_env(&args, &[]);
        assert_eq!(code, want, "{args:?}: {stdout}{err}");
        assert!(!err.contains("panicked"), "{err}");
        if want != 0 && want != 1 {
            assert_eq!(error_lines(&err).len(), 1, "{args:?}: {err}");
        }
    }
}

/// Item 8: a host name that does not resolve is a definite error before the first stream: receive
/// (which reconnects for ever after transient failures) exits at once, naming the name, exit 3.
#[test]
fn dns_failure_exits_at_start_up() {
    let d = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let (code, _, err) = run_env(
        &[
            "receive",
            "-h",
            "nosuchhost.invalid",
            "-D",
            d.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 3, "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("\"nosuchhost.invalid\""), "{err}");
    assert!(!err.contains("reconnecting"), "no retry: {err}");
}

/// Item 9: the traps a bootstrap can see before connecting are said at once — a root-owned target
/// (the result would be root's, which PostgreSQL refuses), a slot that nothing uses, and a non-empty
/// directory names what is in it.
#[test]
fn bootstrap_names_its_traps_before_connecting() {
    let dead = "host=127.0.0.1 port=1 connect_timeout=2";
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("standby");
    let target = target.to_str().unwrap();
    let (_, _, err) = run_env(
        &[
            "bootstrap",
            "-d",
            dead,
            "-D",
            target,
            "-S",
            "s1",
            "-X",
            "none",
            "--no-standby-config",
        ],
        &[],
    );
    assert!(err.contains("does nothing with the slot"), "{err}");
    if nix::unistd::Uid::effective().is_root() {
        assert!(err.contains("add --owner postgres"), "{err}");
        let (_, _, err) = run_env(
            &["bootstrap", "-d", dead, "-D", target, "--owner", "root"],
            &[],
        );
        assert!(!err.contains("add --owner"), "{err}");
    }
    let mounted = d.path().join("mnt");
    std::fs::create_dir_all(mounted.join("lost+found")).unwrap();
    let (code, _, err) = run_env(
        &["bootstrap", "-d", dead, "-D", mounted.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("(it holds \"lost+found\")"), "{err}");
    assert!(err.contains("mount point"), "{err}");
}

/// A long-running command outlives SIGHUP (`systemctl reload`, a closed terminal) and SIGUSR1,
/// saying so in its log — their default action ended it without a line — and still stops
/// cleanly on SIGTERM.
#[test]
fn reload_and_user_signals_are_logged_not_fatal() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    // Nothing listens on port 1: receive retries, as it does while a primary is down.
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["receive", "-d", "host=127.0.0.1 port=1", "-D"])
        .arg(&archive)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let wait_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log).unwrap().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} not logged");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_log("reconnecting");
    for (signal, name) in [(Signal::SIGHUP, "SIGHUP"), (Signal::SIGUSR1, "SIGUSR1")] {
        kill(pid, signal).unwrap();
        wait_log(&format!("{name} received and ignored"));
        assert!(child.try_wait().unwrap().is_none(), "{name} ended receive");
    }
    kill(pid, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// A connection string typed where none is expected (without -d, or unquoted after it): the
/// parser's "unexpected argument" repeats it, so its password is masked, and the tip says how
/// to pass one.
#[test]
fn a_misplaced_connection_string_does_not_show_its_password() {
    for args in [
        &[
            "check",
            "postgresql://replicator:TopSecret@db.example.com/postgres",
        ][..],
        &[
            "receive",
            "-d",
            "host=db",
            "password=TopSecret",
            "-D",
            "/tmp",
        ][..],
        &["check", "password=Top Secret"][..],
        &[
            "--log-format",
            "json",
            "check",
            "-d",
            "host=db",
            "password=TopSecret",
        ][..],
        &[
            "subset",
            "status",
            "postgres://u:TopSecret@h/db?password=TopSecret",
        ][..],
    ] {
        let (code, out) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            !out.contains("TopSecret") && !out.contains("Top Secret"),
            "{args:?}: {out}"
        );
        assert!(out.contains("********"), "{args:?}: {out}");
        assert_eq!(out.trim_end().lines().count(), 1, "{args:?}: {out}");
    }
    let (_, out) = run(&["check", "password=TopSecret"]);
    assert!(
        out.contains("a connection string is given with -d"),
        "{out}"
    );
}

/// A mistyped log level is refused: the filter took it for a target name and kept every line
/// out, warnings included — silence that reads as "no WAL arrived".
#[test]
fn a_mistyped_log_level_is_refused() {
    for (args, env) in [
        (
            &["--log", "warnn", "verify", "-D", "/nonexistent"][..],
            &[][..],
        ),
        (&["--log", "", "verify", "-D", "/nonexistent"][..], &[][..]),
        (
            &["verify", "-D", "/nonexistent"][..],
            &[("WALRELAY_LOG", "inf")][..],
        ),
    ] {
        let (code, _, err) = run_env(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(
            err.contains("is not a log level") || err.contains("give a level"),
            "{args:?} {env:?}: {err}"
        );
    }
    // Levels in any case and directives pass on to the command (whose own error follows).
    for level in [
        "DEBUG",
        "warn",
        "walrelay_client=debug,info",
        "info,object_store=debug",
    ] {
        let (_, _, err) = run_env(&["--log", level, "verify", "-D", "/nonexistent"], &[]);
        assert!(
            err.contains("archive directory /nonexistent"),
            "{level}: {err}"
        );
    }
}

/// prune with a point past everything the archive holds (a mistyped LSN, the primary's position
/// while the receiver lags) is refused: it removed every segment, the live `.partial` of a running
/// receive included. The newest position is never removed.
#[test]
fn prune_refuses_a_point_past_the_archive_s_end() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000003.partial",
    ] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let d = dir.path().to_str().unwrap();
    for point in [
        &["--before-lsn", "FF/0"][..],
        &["--before", "000000010000000000000009"],
    ] {
        let mut args = vec!["prune", "-D", d, "--wal-segsize", "16"];
        args.extend_from_slice(point);
        let (code, out) = run(&args);
        assert_eq!(code, 2, "{point:?}: {out}");
        assert!(
            out.contains("is past the archive's newest WAL (000000010000000000000003.partial)"),
            "{out}"
        );
    }
    let (code, out) = run(&[
        "prune",
        "-D",
        d,
        "--wal-segsize",
        "16",
        "--before-lsn",
        "0/3000000",
    ]);
    assert_eq!(code, 0, "{out}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["000000010000000000000003.partial"]);
}

/// `-W` without a terminal (a script, cron): the password is the first line of stdin, as psql
/// and pg_basebackup read it; with nothing there, one line naming the ways to give it.
#[test]
fn a_password_asked_for_without_a_terminal_comes_from_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let start = |stdin: Stdio| {
        // setsid(1): no controlling terminal, whatever runs the tests.
        Command::new("setsid")
            .arg(env!("CARGO_BIN_EXE_walrelay"))
            .args(["check", "-h", "127.0.0.1", "-p", "1", "-W"])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = start(Stdio::null()).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no terminal to ask on and nothing on stdin"),
        "{err}"
    );
    // Given on stdin: read, and the command goes on to connect (nothing listens on port 1).
    let mut child = start(Stdio::piped());
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not connect to 127.0.0.1 port 1"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

/// Under --log-format json the fatal error is a JSON object too (level, message, exit code), so
/// a log shipper does not drop the one line that says why walrelay stopped.
#[test]
fn the_fatal_error_is_json_under_json_logs() {
    let (code, _, err) = run_env(
        &["--log-format", "json", "verify", "-D", "/nonexistent-json"],
        &[],
    );
    assert_eq!(code, 5, "{err}");
    let line = err.trim_end().lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "ERROR", "{line}");
    assert_eq!(v["exit_code"], 5, "{line}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent-json")),
        "{line}"
    );
}
