//! The one error type of the archive crate, and how `walrelay restore` turns it into an exit code.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_durable::DurableError;

/// Exit code of `walrelay restore` when the file was restored.
pub const RESTORE_EXIT_RESTORED: i32 = 0;
/// Exit code when the archive does not have the file. PostgreSQL probes for files that do not exist
/// (history files of future timelines, the segment after the end of WAL), so this one is quiet, and
/// PostgreSQL reads it as "not available": it looks in pg_wal, then ends recovery (or, as a standby,
/// turns to streaming).
pub const RESTORE_EXIT_NOT_FOUND: i32 = 1;
/// Exit code when the archive has the file but it is damaged (wrong size, bad compressed stream).
///
/// It must be above 125. `RestoreArchivedFile` (`xlogarchive.c`) treats every failing exit status
/// as "file not available" — which ends archive recovery there and promotes the server with only
/// the WAL before the damaged file — except when `wait_result_is_any_signal(rc, true)` holds:
/// killed by a signal, or an exit status above 125 (the shell's "not executable"/"not found" and
/// 128+N "killed by signal N"). Then the startup process stops with FATAL and recovery can be
/// resumed once the archive is repaired. 200 and 201 are above every code a shell or a signal
/// produces (128 + 64 at most on Linux), so the server log's "child process exited with exit
/// code 200" can only mean walrelay.
pub const RESTORE_EXIT_CORRUPT: i32 = 200;
/// Exit code for every other failure (IO error, archive directory missing, bad arguments): above
/// 125 for the same reason as [`RESTORE_EXIT_CORRUPT`] — an archive that cannot be read must stop
/// recovery, not end it early.
pub const RESTORE_EXIT_ERROR: i32 = 201;

/// Everything that can go wrong in the archive directory.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Durable(#[from] DurableError),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is damaged: {reason}; restore it from another copy, or move it away after checking with `walrelay verify`")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{name:?} is not usable here: {reason}")]
    BadFileName { name: String, reason: &'static str },

    #[error("invalid compression {input:?}: {reason}")]
    BadCompression { input: String, reason: String },

    #[error("cannot tell the WAL segment size of {path}: {reason}; pass the cluster's wal_segment_size (SHOW wal_segment_size)")]
    UnknownSegmentSize { path: PathBuf, reason: String },

    #[error("backup manifest {path}: {reason}; pass the backup_manifest of a PostgreSQL 13+ base backup")]
    BadManifest { path: PathBuf, reason: String },

    #[error("backup label {path}: {reason}; pass a backup_label or a NAME.XXXXXXXX.backup file")]
    BadBackupLabel { path: PathBuf, reason: String },

    #[error(
        "archive directory {path} is missing or not a directory: create it or fix the -D argument"
    )]
    NotADirectory { path: PathBuf },

    #[error("prune needs a point to keep from (WAL file name, .backup file or backup_manifest) or an age: give at least one")]
    NoPruneCriterion,

    /// The point to keep from is past every segment the archive holds: everything would go, the
    /// segment a running `receive` writes included.
    #[error("the point to keep from ({asked}) is past the archive's newest WAL ({newest}): prune would remove every segment, the one being written included; give a point inside the archive (walrelay verify lists it), or remove the archive's files yourself if that is meant")]
    PrunePointPastEnd { asked: String, newest: String },
}

impl ArchiveError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ArchiveError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ArchiveError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// True when the error means a damaged archive file rather than an IO or usage problem.
    pub fn is_corruption(&self) -> bool {
        matches!(self, ArchiveError::Corrupt { .. })
    }

    /// The exit code `walrelay restore` reports for this error: [`RESTORE_EXIT_CORRUPT`] for damaged
    /// files, [`RESTORE_EXIT_ERROR`] for everything else. Both are above 125, so PostgreSQL stops
    /// recovery with FATAL instead of taking the file for missing and ending recovery early.
    pub fn restore_exit_code(&self) -> i32 {
        if self.is_corruption() {
            RESTORE_EXIT_CORRUPT
        } else {
            RESTORE_EXIT_ERROR
        }
    }
}

pub type Result<T> = std::result::Result<T, ArchiveError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_exit_codes_make_postgres_stop_recovery() {
        // wait_result_is_any_signal(rc, true): exit status > 125 is FATAL for the startup process.
        for code in [RESTORE_EXIT_CORRUPT, RESTORE_EXIT_ERROR] {
            assert!(code > 125 && code <= 255, "{code}");
            // Not 126/127 (shell: not executable/not found) nor 128+N for a real signal N
            // (128 + SIGTERM = 143 makes the startup process exit quietly instead).
            assert!(code > 128 + 64, "{code}");
        }
        assert_ne!(RESTORE_EXIT_CORRUPT, RESTORE_EXIT_ERROR);
        assert_eq!((RESTORE_EXIT_RESTORED, RESTORE_EXIT_NOT_FOUND), (0, 1));
        let corrupt = ArchiveError::corrupt("/a/x", "truncated");
        assert_eq!(corrupt.restore_exit_code(), RESTORE_EXIT_CORRUPT);
        let io = ArchiveError::io("read", "/a/x", io::Error::other("EIO"));
        assert_eq!(io.restore_exit_code(), RESTORE_EXIT_ERROR);
    }
}
