//! The real `walrelay` binary as a child process.
//!
//! Every run gets its stderr written to a file (so a test can read it while the process runs, and a
//! failing test shows it), a clean environment (no `PG*` variables from the caller's shell, which
//! would silently change what it connects to), and a deadline: nothing here waits forever. Dropping a
//! [`Walrelay`] kills the process, and prints its log when the test is failing.

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary with the caller's libpq environment removed ([`walrelay_testkit::pg_command`]), and
/// no `WALRELAY_LOG` either: the tests read walrelay's default log output.
fn command(args: &[String]) -> Command {
    let mut cmd = walrelay_testkit::pg_command(Path::new(env!("CARGO_BIN_EXE_walrelay")));
    cmd.env_remove("WALRELAY_LOG")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// `receive` plus `args`, as owned strings (paths and conninfos are built at run time).
pub fn receive_args(args: &[&str]) -> Vec<String> {
    std::iter::once("receive")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect()
}

/// `subset CMD -d SOURCE --target TARGET --name NAME EXTRA…`
pub fn subset_args(
    cmd: &str,
    src: &walrelay_testkit::Cluster,
    tgt: &walrelay_testkit::Cluster,
    name: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "subset",
        cmd,
        "-d",
        &src.conninfo(),
        "--target",
        &tgt.conninfo(),
        "--name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A finished one-shot run.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The lines walrelay prints for a fatal error (`walrelay: error: …`).
    pub fn error_lines(&self) -> Vec<&str> {
        error_lines(&self.stderr)
    }
}

/// The lines of `stderr` that walrelay prints for a fatal error (`walrelay: error: …`).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("walrelay: error:"))
        .collect()
}

/// Runs `walrelay ARGS` to completion (killed after `limit`).
pub fn run(args: &[String], limit: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir for walrelay output");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command(args)
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("spawn walrelay");
    let status = wait_child(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "walrelay {args:?} did not exit within {}s; stderr:\n{}",
            limit.as_secs(),
            fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Finished {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait for walrelay") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `walrelay` running in the background.
pub struct Walrelay {
    label: String,
    args: Vec<String>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    /// The current run's stderr.
    log: PathBuf,
    /// The logs of earlier runs (before [`Walrelay::restart`]).
    history: String,
    runs: u32,
    dir: tempfile::TempDir,
}

impl Walrelay {
    /// Starts `walrelay ARGS`; `label` names it in failure messages.
    pub fn start(label: &str, args: &[String]) -> Walrelay {
        let dir = tempfile::tempdir().expect("temp dir for walrelay's log");
        let log = dir.path().join("stderr-0");
        let child = spawn(args, &log);
        Walrelay {
            label: label.to_string(),
            args: args.to_vec(),
            child: Some(child),
            status: None,
            log,
            history: String::new(),
            runs: 1,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the current run wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The logs of all runs, earlier ones first.
    pub fn full_log(&self) -> String {
        format!("{}{}", self.history, self.log())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.status = c.try_wait().expect("wait for walrelay");
            }
        }
        self.status
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.exited() {
            panic!(
                "walrelay ({}) exited unexpectedly with {s}; log:\n{}",
                self.label,
                self.log()
            );
        }
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.exited() {
            panic!(
                "walrelay ({}) was to be killed but had already exited with {s}; log:\n{}",
                self.label,
                self.log()
            );
        }
        let child = self.child.as_mut().expect("child");
        child.kill().expect("kill -9 walrelay");
        let s = child.wait().expect("wait for killed walrelay");
        assert_eq!(
            s.signal(),
            Some(9),
            "walrelay was not killed by SIGKILL: {s}"
        );
        self.status = Some(s);
        s
    }

    /// Sends a signal (SIGTERM, SIGINT) without waiting.
    pub fn signal(&mut self, signal: Signal) {
        self.assert_running();
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal walrelay");
    }

    /// SIGTERM, and a clean exit (status 0) within `limit`; panics with every run's log
    /// otherwise.
    pub fn stop_cleanly(&mut self, limit: Duration) {
        self.signal(Signal::SIGTERM);
        let status = self.wait(limit);
        assert_eq!(
            status.code(),
            Some(0),
            "walrelay ({}) exited with {status} after SIGTERM; log:\n{}",
            self.label,
            self.full_log()
        );
    }

    /// Waits until it exits (panics with the log after `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = self.child.as_mut().expect("child");
        match wait_child(child, limit) {
            Some(s) => {
                self.status = Some(s);
                s
            }
            None => panic!(
                "walrelay ({}) did not exit within {}s; log:\n{}",
                self.label,
                limit.as_secs(),
                self.log()
            ),
        }
    }

    /// Waits until its log contains `needle` (panics if it exits first, or after `limit`).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return;
            }
            self.assert_running();
            if Instant::now() >= deadline {
                panic!(
                    "walrelay ({}) did not log {needle:?} within {}s; log:\n{}",
                    self.label,
                    limit.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same command again (after a kill or a stop). [`Walrelay::log`] then shows the new
    /// run only; [`Walrelay::full_log`] all of them.
    pub fn restart(&mut self) {
        let status = self.exited().expect("restart of a running walrelay");
        self.history.push_str(&self.log());
        self.history
            .push_str(&format!("--- run {} ended: {status} ---\n", self.runs));
        self.log = self.dir.path().join(format!("stderr-{}", self.runs));
        self.runs += 1;
        self.child = Some(spawn(&self.args, &self.log));
        self.status = None;
    }
}

impl Drop for Walrelay {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- walrelay ({}) {:?} log ---\n{}",
                self.label,
                self.args,
                self.full_log()
            );
        }
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    command(args)
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("create log file"))
        .spawn()
        .expect("spawn walrelay")
}

/// `walrelay verify -D dir`: asserts it accepted the archive (exit 0) and returns what it printed.
pub fn verify_accepts(dir: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["verify", "-D"])
        .arg(dir)
        .output()
        .expect("run walrelay verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify refused the archive:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
