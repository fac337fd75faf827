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
