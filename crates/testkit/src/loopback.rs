//! What the loopback test servers ([`crate::s3`], [`crate::azurite`]) share: free ports, and the
//! guard that stops a server when the test process dies without running `Drop`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use crate::error::{Result, TestkitError};

/// Runs `"$0" "$@"` under `sh -c`, in the background, and kills it when our stdin pipe closes: a
/// test process killed with SIGKILL (a runner's timeout) closes the pipe, so no server outlives
/// its test. (A background job's stdin is /dev/null unless redirected, so the pipe is kept on fd 3
/// for the watcher.)
pub(crate) const GUARD: &str = r#"
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
