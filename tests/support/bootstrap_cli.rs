//! `walrelay bootstrap` as a one-shot child process, and the checks every run gets.
//!
//! Unlike [`super::walrelay_cmd`], a run here can be given environment variables (`PGPASSWORD` is
//! part of what is under test); everything else in the environment that libpq would read is
//! removed, so that the caller's shell cannot change what the binary connects to.
//!
//! [`Outcome::assert_failed`] is the contract of a refused bootstrap: the expected exit code, exactly
//! one `walrelay: error:` line naming the cause, and nothing that looks like a crash (`panicked`,
//! a backtrace).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `walrelay bootstrap` command line under construction.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_removed: Vec<String>,
}

/// A finished run.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stderr: String,
}

impl Bootstrap {
    /// `walrelay bootstrap -d CONNINFO -D TARGET`.
    pub fn new(conninfo: &str, target: &Path) -> Bootstrap {
        Bootstrap {
            args: vec![
                "bootstrap".into(),
                "-d".into(),
                conninfo.into(),
                "-D".into(),
                path_arg(target),
            ],
            env: Vec::new(),
            env_removed: Vec::new(),
        }
    }

    /// `walrelay bootstrap` with exactly these arguments (for command lines without `-d`/`-D`).
    pub fn raw(args: &[&str]) -> Bootstrap {
        Bootstrap::command_line(&[&["bootstrap"], args].concat())
    }

    /// `walrelay ARGS`, any command, with this module's environment and checks.
    pub fn command_line(args: &[&str]) -> Bootstrap {
        Bootstrap {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            env_removed: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Bootstrap {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Bootstrap {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs without `name` in the environment (one the test process set, say).
    pub fn env_remove(mut self, name: &str) -> Bootstrap {
        self.env_removed.push(name.into());
        self
    }

    /// The full argument list (after the program name).
    pub fn argv(&self) -> &[String] {
        &self.args
    }

    /// Runs to completion; panics (with what it printed) if it takes longer than `limit`.
    pub fn run_within(&self, limit: Duration) -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir for walrelay's stderr");
        let err_path = dir.path().join("stderr");
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(File::create(&err_path).expect("create stderr file"))
            .spawn()
            .expect("spawn walrelay");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for walrelay") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "walrelay {:?} did not exit within {}s; stderr:\n{}",
                    self.args,
                    limit.as_secs(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome {
            args: self.args.clone(),
            status,
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// [`Bootstrap::run_within`] the test timeout.
    pub fn run(&self) -> Outcome {
        self.run_within(super::poll::timeout())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
        // Everything libpq (and so walrelay) reads from the environment, whatever the caller set.
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("PG") || n == "WALRELAY_LOG" || n == "RUST_BACKTRACE" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("PGPASSFILE", "/dev/null")
            .env("PGSYSCONFDIR", "/nonexistent")
            .env("LC_ALL", "C")
            // A crash must show as one, with a backtrace the checks below would catch.
            .env("RUST_BACKTRACE", "1");
        for k in &self.env_removed {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args).stdin(Stdio::null());
        cmd
    }
}

impl Outcome {
    /// The lines walrelay prints for a fatal error.
    pub fn error_lines(&self) -> Vec<&str> {
        super::walrelay_cmd::error_lines(&self.stderr)
    }

    fn crash_signs(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| {
                l.contains("panicked")
                    || l.contains("stack backtrace")
                    || l.contains("RUST_BACKTRACE")
            })
            .collect()
    }

    /// Exit 0, no error line, no crash; returns the summary line (`walrelay: bootstrapped …`).
    pub fn assert_succeeded(&self) -> String {
        assert!(
            self.status.success() && self.error_lines().is_empty() && self.crash_signs().is_empty(),
            "walrelay {:?} failed with {}; stderr:\n{}",
            self.args,
            self.status,
            self.stderr
        );
        self.stderr
            .lines()
            .find(|l| l.starts_with("walrelay: bootstrapped "))
            .unwrap_or_else(|| panic!("no summary line; stderr:\n{}", self.stderr))
            .to_string()
    }

    /// Exit `code`, exactly one `walrelay: error:` line containing every one of `needles`, no sign
    /// of a panic or backtrace. Returns the error line.
    pub fn assert_failed(&self, code: i32, needles: &[&str]) -> String {
        let errors = self.error_lines();
        assert_eq!(
            self.status.code(),
            Some(code),
            "walrelay {:?}: expected exit code {code}, got {}; stderr:\n{}",
            self.args,
            self.status,
            self.stderr
        );
        assert_eq!(
            errors.len(),
            1,
            "walrelay {:?}: expected exactly one error line; stderr:\n{}",
            self.args,
            self.stderr
        );
        assert!(
            self.crash_signs().is_empty(),
            "walrelay {:?} crashed; stderr:\n{}",
            self.args,
            self.stderr
        );
        let line = errors[0];
        eprintln!("refused as expected: {line}");
        for n in needles {
            assert!(
                line.contains(n),
                "walrelay {:?}: the error line lacks {n:?}:\n{line}\nstderr:\n{}",
                self.args,
                self.stderr
            );
        }
        line.to_string()
    }

    /// Nothing walrelay printed contains `secret`.
    pub fn assert_not_printed(&self, secret: &str) {
        assert!(
            !self.stderr.contains(secret),
            "walrelay {:?} printed the secret {secret:?}:\n{}",
            self.args,
            self.stderr
        );
    }
}

/// A path as a command-line argument (the tests only use UTF-8 paths).
pub fn path_arg(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}

/// A fresh path inside `base` that does not exist yet.
pub fn absent(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    assert!(!p.exists(), "{} exists already", p.display());
    p
}
