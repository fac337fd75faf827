//! Running PostgreSQL's programs: as the right OS user, with a clean environment and a deadline.
//!
//! PostgreSQL refuses to run as root ("root execution of the PostgreSQL server is not permitted"), and CI
//! runs as root. [`ServerUser`] therefore runs `initdb`, `pg_ctl` and `postgres` as the `postgres` OS user
//! when we are root, and owns the directories they write to. We switch user with the standard library's
//! `CommandExt::uid/gid` rather than `runuser -u postgres --`: the effect is the same (root drops its
//! supplementary groups too), no PAM session is opened, and the child we hold is the program itself, so
//! killing it on a deadline really stops it. Client tools (psql, pg_waldump, …) run as ourselves.
//!
//! [`run`] never waits forever: every program gets a deadline, after which it is killed and reported.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// libpq and server environment variables that would silently change what our commands connect to or
/// which data directory they use. Every command starts without them; we pass what we mean explicitly.
const PG_ENV_VARS: &[&str] = &[
    "PGAPPNAME",
    "PGCHANNELBINDING",
    "PGCLIENTENCODING",
    "PGCONNECT_TIMEOUT",
    "PGDATA",
    "PGDATABASE",
    "PGGSSENCMODE",
    "PGHOST",
    "PGHOSTADDR",
    "PGOPTIONS",
    "PGPASSFILE",
    "PGPASSWORD",
    "PGPORT",
    "PGREQUIREAUTH",
    "PGREQUIRESSL",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLCERT",
    "PGSSLCRL",
    "PGSSLKEY",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGTARGETSESSIONATTRS",
    "PGTZ",
    "PGUSER",
    "PSQLRC",
];

/// A command for a PostgreSQL program (or any libpq client, walrelay included) with a predictable
/// environment: no `PG*` variables, C locale messages (we parse tool output), and no password file
/// or service file lookups.
pub fn pg_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in PG_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C")
        .env("LANG", "C")
        .env("PGPASSFILE", "/dev/null")
        .env("PGSYSCONFDIR", "/nonexistent");
    cmd
}

/// uid and gid of the OS user that runs the servers when it is not ourselves: `postgres` when the
/// tests run as root, `None` otherwise. Files a server must own (or that a backup tool must hand over
/// to it) belong to these ids.
pub fn server_user_ids() -> Result<Option<(u32, u32)>> {
    Ok(ServerUser::detect()?
        .switch_to
        .map(|(uid, gid, _)| (uid, gid)))
}

/// Panics unless every path under `root` (itself included; symlinks checked, not followed) belongs
/// to `ids` (uid, gid), naming the first that does not — e.g. a data directory a backup tool wrote
/// as root for a server that runs as `postgres`.
pub fn assert_tree_owned_by(root: &Path, ids: (u32, u32)) {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("could not stat {}: {e}", path.display()));
        assert_eq!((meta.uid(), meta.gid()), ids, "owner of {}", path.display());
        if meta.is_dir() {
            let entries = fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("could not list {}: {e}", path.display()));
            for entry in entries {
                let entry =
                    entry.unwrap_or_else(|e| panic!("could not list {}: {e}", path.display()));
                stack.push(entry.path());
            }
        }
    }
}

/// The OS user that runs the server: `postgres` when we are root, else ourselves.
#[derive(Clone, Debug)]
pub(crate) struct ServerUser {
    /// uid, gid and home directory of `postgres` when we are root.
    switch_to: Option<(u32, u32, PathBuf)>,
}

impl ServerUser {
    pub(crate) fn detect() -> Result<ServerUser> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(ServerUser { switch_to: None });
        }
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(TestkitError::NoPostgresUser)?;
        Ok(ServerUser {
            switch_to: Some((user.uid.as_raw(), user.gid.as_raw(), user.dir)),
        })
    }

    /// A [`pg_command`] that runs as the server user, from `cwd` (a directory that user can enter: a
    /// server process started from a directory it cannot read fails in surprising places).
    pub(crate) fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = pg_command(program);
        cmd.current_dir(cwd);
        if let Some((uid, gid, home)) = &self.switch_to {
            cmd.uid(*uid)
                .gid(*gid)
                .env("HOME", home)
                .env("USER", "postgres");
        }
        cmd
    }

    /// Gives `path` (not following symlinks) to the server user; a no-op unless we are root.
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid, _)) = &self.switch_to {
            std::os::unix::fs::lchown(path, Some(*uid), Some(*gid))
                .map_err(|e| TestkitError::io("change owner of", path, e))?;
        }
        Ok(())
    }

    /// [`ServerUser::chown`] for a whole tree. Symlinks are re-owned but not followed, so a tablespace
    /// link in `pg_tblspc` does not drag another cluster's directory along.
    pub(crate) fn chown_tree(&self, root: &Path) -> Result<()> {
        if self.switch_to.is_none() {
            return Ok(());
        }
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            self.chown(&path)?;
            let meta =
                fs::symlink_metadata(&path).map_err(|e| TestkitError::io("inspect", &path, e))?;
            if meta.is_dir() {
                for entry in fs::read_dir(&path).map_err(|e| TestkitError::io("list", &path, e))? {
                    let entry = entry.map_err(|e| TestkitError::io("list", &path, e))?;
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Creates `dir` with `mode`, owned by the server user.
    pub(crate) fn create_dir(&self, dir: &Path, mode: u32) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| TestkitError::io("create directory", dir, e))?;
        set_mode(dir, mode)?;
        self.chown(dir)
    }

    /// Writes a file the server reads (configuration, keys) with `mode`, owned by the server user.
    pub(crate) fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        write_file(path, contents, mode)?;
        self.chown(path)
    }
}

/// Writes `path` and forces `mode` (the umask would otherwise decide).
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::write(path, contents).map_err(|e| TestkitError::io("write", path, e))?;
    set_mode(path, mode)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| TestkitError::io("set permissions of", path, e))
}

/// What a finished program printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A short human description of a command for error messages: the program's file name and its
/// arguments (passwords never appear in arguments; they travel in `PGPASSWORD`).
pub(crate) fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_else(|| OsStr::new("?"))
        .to_string_lossy()
        .into_owned();
    let mut s = program;
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with `stdin` as its input, killing it after `timeout`.
///
/// stdout and stderr are drained on their own threads so a chatty program cannot block on a full pipe
/// while we wait for it to exit.
pub(crate) fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Finished> {
    let what = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| TestkitError::Spawn {
        program: what.clone(),
        source,
    })?;

    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            // A program that exits without reading all input makes this write fail with EPIPE;
            // its exit status tells the real story, so the write error is ignored.
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&input);
            }))
        }
        _ => None,
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::CommandTimeout {
                    command: what,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::Spawn {
                    program: what,
                    source: e,
                });
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Finished {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

/// [`run`], turning a non-zero exit into [`TestkitError::CommandFailed`]; returns stdout.
pub(crate) fn run_ok(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<String> {
    let what = describe(&cmd);
    let out = run(cmd, stdin, timeout)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(TestkitError::CommandFailed {
            command: what,
            status: out.status.to_string(),
            stderr: if out.stderr.trim().is_empty() {
                out.stdout
            } else {
                out.stderr
            },
        })
    }
}

type Drain = Option<thread::JoinHandle<Vec<u8>>>;

pub(crate) fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

pub(crate) fn join_drain(d: Drain) -> String {
    d.and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = pg_command(Path::new("/bin/sh"));
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn captures_output_and_status() {
        let out = run(
            sh("echo out; echo err >&2; exit 3"),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn feeds_stdin() {
        let out = run_ok(sh("tr a-z A-Z"), Some(b"hello"), Duration::from_secs(10)).unwrap();
        assert_eq!(out, "HELLO");
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let out = run_ok(
            sh("head -c 1000000 /dev/zero | tr '\\0' x; head -c 300000 /dev/zero >&2"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.len(), 1_000_000);
    }

    #[test]
    fn failure_reports_stderr() {
        let e = run_ok(sh("echo nope >&2; exit 1"), None, Duration::from_secs(10)).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("sh -c echo nope"), "{s}");
        assert!(s.ends_with(": nope"), "{s}");
    }

    #[test]
    fn deadline_kills() {
        let start = Instant::now();
        let e = run(sh("sleep 30"), None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, TestkitError::CommandTimeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn pg_environment_is_removed() {
        let mut c = sh("echo \"[$PGHOST][$PGPASSWORD][$LC_ALL]\"");
        c.env("PGHOST", "/elsewhere"); // set after pg_command: an explicit choice wins
        let out = run_ok(c, None, Duration::from_secs(10)).unwrap();
        assert_eq!(out, "[/elsewhere][][C]\n");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(
            pg_command(Path::new("/nonexistent/psql")),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, TestkitError::Spawn { .. }), "{e}");
    }
}
