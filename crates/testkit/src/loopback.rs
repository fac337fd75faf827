//! What the loopback test servers ([`crate::s3`], [`crate::azurite`]) share: free ports, and the
//! guard that stops a server when the test process dies without running `Drop`.

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// Runs `"$0" "$@"` under `sh -c`, in the background, and kills it when our stdin pipe closes: a
/// test process killed with SIGKILL (a runner's timeout) closes the pipe, so no server outlives
/// its test. (A background job's stdin is /dev/null unless redirected, so the pipe is kept on fd 3
/// for the watcher.)
const GUARD: &str = r#"
exec 3<&0
"$0" "$@" </dev/null &
pid=$!
( while read -r _line <&3; do :; done; kill -TERM "$pid" 2>/dev/null ) &
wait "$pid"
"#;

/// `N` distinct free ports on 127.0.0.1.
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // Hold every listener until all ports are chosen, so they differ.
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in ports.iter_mut() {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| TestkitError::io("bind a free port on", "127.0.0.1", e))?;
        *p = l
            .local_addr()
            .map_err(|e| TestkitError::io("read the address of", "127.0.0.1", e))?
            .port();
        held.push(l);
    }
    Ok(ports)
}

/// Runs an install script of `scripts/` (the one place that knows how to find or install a test
/// server; `scripts/test.sh` runs the same) and returns the program path it prints.
pub(crate) fn installed_program(script: &str) -> Result<PathBuf> {
    let script = crate::install::workspace_root()
        .join("scripts")
        .join(script);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| TestkitError::Spawn {
            program: script.display().to_string(),
            source,
        })?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        return Err(TestkitError::CommandFailed {
            command: script.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(path)
}

/// A server process under [`GUARD`], its output appended to a log file.
pub(crate) struct GuardedServer {
    child: Child,
    /// Closing it makes the guard send the server SIGTERM.
    stdin: ChildStdin,
    name: String,
    port: u16,
}

impl GuardedServer {
    /// Starts `program ARGS` (with `envs`) in `dir`, in a process group of its own.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        envs: &[(&str, &str)],
        dir: &Path,
        log_path: &Path,
        port: u16,
    ) -> Result<GuardedServer> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| TestkitError::io("open", log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestkitError::io("open", log_path, e))?;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(GUARD)
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .process_group(0)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| TestkitError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            return Err(TestkitError::Config(format!("no stdin pipe for {name}")));
        };
        Ok(GuardedServer {
            child,
            stdin,
            name: name.to_string(),
            port,
        })
    }

    /// The server once its port accepts connections and `ready` says so too; an exit or
    /// `timeout` is an error (with `log_tail`), and the server is stopped.
    pub(crate) fn ready(
        mut self,
        timeout: Duration,
        ready: impl Fn() -> bool,
        log_tail: impl Fn() -> String,
    ) -> Result<GuardedServer> {
        match self.wait_ready(timeout, ready, log_tail) {
            Ok(()) => Ok(self),
            Err(e) => {
                self.stop();
                Err(e)
            }
        }
    }

    fn wait_ready(
        &mut self,
        timeout: Duration,
        ready: impl Fn() -> bool,
        log_tail: impl Fn() -> String,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestkitError::CommandFailed {
                    command: self.name.clone(),
                    status: status.to_string(),
                    stderr: log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::CommandTimeout {
                    command: format!("{} (log: {})", self.name, log_tail()),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM through the guard, SIGKILL to the group after 15 s) and waits
    /// until its port is closed, so that "stopped" means unreachable.
    pub(crate) fn stop(self) {
        let GuardedServer {
            mut child,
            stdin,
            port,
            ..
        } = self;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    // The guard leads its own process group, the server included.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A temp directory for one server's data and log, under the testkit's temp base.
pub(crate) fn server_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = crate::env::tmp_base();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| TestkitError::io("create a temp directory in", base, e))
}

/// The last `lines` lines of a log file (empty if unreadable).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An object storage server of the test suite ([`crate::S3Server`], [`crate::AzuriteServer`]),
/// for tests that run the same checks on each.
pub trait StoreServer: Send + 'static {
    /// The archive URL of `prefix` in the server's bucket or container.
    fn url(&self, prefix: &str) -> String;
    /// The environment a client needs to reach it.
    fn env(&self) -> Vec<(&'static str, String)>;
    /// Stops it; its port is closed when this returns.
    fn stop(&mut self);
    /// The credential that must never appear in a message.
    fn secret(&self) -> &'static str;
}

impl StoreServer for crate::S3Server {
    fn url(&self, prefix: &str) -> String {
        crate::S3Server::url(self, prefix)
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        crate::S3Server::env(self)
    }
    fn stop(&mut self) {
        crate::S3Server::stop(self)
    }
    fn secret(&self) -> &'static str {
        crate::s3::SECRET_KEY
    }
}

impl StoreServer for crate::AzuriteServer {
    fn url(&self, prefix: &str) -> String {
        crate::AzuriteServer::url(self, prefix)
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        crate::AzuriteServer::env(self)
    }
    fn stop(&mut self) {
        crate::AzuriteServer::stop(self)
    }
    fn secret(&self) -> &'static str {
        crate::azurite::ACCOUNT_KEY
    }
}
