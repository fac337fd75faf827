//! A guard process that stops a cluster's server and removes its directory if the test process dies
//! without running `Drop` (Ctrl-C, SIGKILL from a test runner's timeout, `process::exit`).
//!
//! `pg_ctl start` puts the postmaster in its own session, so nothing else would stop it: every such death
//! would leak a running server. The watchdog is a tiny `sh` in its own process group (so the terminal's
//! Ctrl-C does not reach it) blocked reading a pipe whose only write end we hold. When our process exits
//! for any reason the kernel closes that end, `read` returns, and the script sends the postmaster SIGQUIT
//! (immediate shutdown), waits for it, falls back to SIGKILL, and removes the directory.
//!
//! On a normal `Drop` the cluster stops the server and removes its directory itself, then
//! [`Watchdog::disarm`]s: the script wakes up to find no `postmaster.pid` and nothing to remove.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::error::{Result, TestkitError};

const SCRIPT: &str = r#"
# $1: data directory, $2: directory to remove ("" for none)
while read -r _line; do :; done
pidfile="$1/postmaster.pid"
if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile" 2>/dev/null)
    case "$pid" in
        ''|*[!0-9]*) ;;
        *)
            if kill -QUIT "$pid" 2>/dev/null; then
                i=0
                while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
                kill -KILL "$pid" 2>/dev/null
            fi
            ;;
    esac
fi
if [ -n "$2" ]; then rm -rf -- "$2"; fi
"#;

pub(crate) struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Arms a watchdog for the server of `data_dir`, removing `remove` (if any) after stopping it.
    pub(crate) fn spawn(data_dir: &Path, remove: Option<&Path>) -> Result<Watchdog> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("walrelay-testkit-watchdog")
            .arg(data_dir)
            .arg(remove.map(|p| p.as_os_str()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| TestkitError::Spawn {
            program: "/bin/sh (cluster watchdog)".to_string(),
            source,
        })?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }

    /// Lets the watchdog run its cleanup now and reaps it. After the cluster stopped its server and
    /// removed its directory this is a no-op; if stopping failed, this is the fallback that kills it.
    pub(crate) fn disarm(self) {
        drop(self);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.pipe.take();
        let _ = self.child.wait();
    }
}
