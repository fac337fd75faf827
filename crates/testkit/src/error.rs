//! The one error type of the testkit.
//!
//! Most test-facing methods panic (a failed setup step is a failed test), but each has a `try_` form
//! returning [`TestkitError`] for tests that expect a failure, such as a refused login or a server that
//! must not start. Messages are one line and say what to do about the cause.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a testkit operation failed.
#[derive(Debug, Error)]
pub enum TestkitError {
    /// `scripts/install-pg.sh` could not provide the binaries of a major version.
    #[error("PostgreSQL {major} binaries are not available: {detail} (run scripts/install-pg.sh {major} by hand to see why)")]
    Install { major: u32, detail: String },

    /// A program could not be started at all.
    #[error(
        "could not run {program}: {source} (scripts/install-pg.sh installs the PostgreSQL tools)"
    )]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A program exited unsuccessfully. `stderr` is the program's own complaint.
    #[error("{command} failed ({status}): {}", one_line(.stderr))]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    /// A program did not finish in time and was killed.
    #[error("{command} did not finish within {secs}s and was killed (raise WALRELAY_TEST_TIMEOUT_SECS if the machine is only slow)")]
    CommandTimeout { command: String, secs: u64 },

    /// A condition polled on a running cluster did not become true in time.
    #[error("timed out after {secs}s waiting for {what} (server log: {}; raise WALRELAY_TEST_TIMEOUT_SECS if the machine is only slow)", .log.display())]
    Timeout {
        what: String,
        secs: u64,
        log: PathBuf,
    },

    /// The server did not start; its log says why.
    #[error("server did not start: {reason} (server log: {})", .log.display())]
    StartFailed { reason: String, log: PathBuf },

    /// psql reported an error for a statement (with `ON_ERROR_STOP`).
    #[error("psql failed: {} (SQL: {})", one_line(.stderr), one_line(.sql))]
    Sql { sql: String, stderr: String },

    /// A tool printed something this crate cannot parse.
    #[error("unexpected output from {tool}: {detail}")]
    Parse { tool: &'static str, detail: String },

    /// The requested cluster options contradict each other.
    #[error("invalid cluster options: {0}")]
    Config(String),

    /// PostgreSQL refuses to run as root, and there is nobody else to run it as.
    #[error("running as root but there is no `postgres` OS user to run the server as (scripts/install-pg.sh 15 installs Debian's package, which creates it)")]
    NoPostgresUser,

    /// rcgen could not build a test certificate.
    #[error("could not generate a test certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl TestkitError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TestkitError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The program's stderr for [`TestkitError::CommandFailed`] and [`TestkitError::Sql`], so a test
    /// can check *why* something was refused (`"password authentication failed"`).
    pub fn stderr(&self) -> Option<&str> {
        match self {
            TestkitError::CommandFailed { stderr, .. } | TestkitError::Sql { stderr, .. } => {
                Some(stderr)
            }
            _ => None,
        }
    }
}

/// Joins the lines of a tool's multi-line message so the error stays on one line.
fn one_line(s: &str) -> String {
    let parts: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if parts.is_empty() {
        "(no output)".to_string()
    } else {
        parts.join(" | ")
    }
}

pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_stderr_is_one_line() {
        let e = TestkitError::Sql {
            sql: "select *\nfrom nope".into(),
            stderr: "psql:<stdin>:1: ERROR:  relation \"nope\" does not exist\nLINE 1: select * from nope;\n\n".into(),
        };
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(
            s.contains("relation \"nope\" does not exist | LINE 1"),
            "{s}"
        );
        assert!(s.contains("SQL: select * | from nope"), "{s}");
        assert_eq!(e.stderr().map(|s| s.contains("nope")), Some(true));
    }

    #[test]
    fn empty_stderr_says_so() {
        let e = TestkitError::CommandFailed {
            command: "initdb".into(),
            status: "exit status: 1".into(),
            stderr: "  \n".into(),
        };
        assert_eq!(e.to_string(), "initdb failed (exit status: 1): (no output)");
    }
}
