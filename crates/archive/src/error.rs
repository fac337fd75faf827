//! The one error type of the archive crate, and how `walrelay restore` turns it into an exit code.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_durable::DurableError;

/// Exit code of `walrelay restore` when the file was restored.
pub const RESTORE_EXIT_RESTORED: i32 = 0;
/// Exit code when the archive does not have the file. PostgreSQL probes for files that do not exist
/// (history files of future timelines, the segment after the end of WAL), so this one is quiet.
pub const RESTORE_EXIT_NOT_FOUND: i32 = 1;
/// Exit code when the archive has the file but it is damaged (wrong size, bad compressed stream).
pub const RESTORE_EXIT_CORRUPT: i32 = 2;
/// Exit code for every other failure (IO error, bad arguments).
pub const RESTORE_EXIT_ERROR: i32 = 3;

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

    #[error("{path} is damaged: {reason}; restore it from another copy, or move it away after checking with `walrelay archive verify`")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{name:?} is not usable here: {reason}")]
    BadFileName { name: String, reason: &'static str },

    #[error("invalid compression {input:?}: {reason}")]
    BadCompression { input: String, reason: String },

    #[error("cannot tell the WAL segment size of {path}: {reason}; pass the cluster's wal_segment_size (SHOW wal_segment_size)")]
    UnknownSegmentSize { path: PathBuf, reason: String },

    #[error("backup manifest {path}: {reason}; pass the backup_manifest of a PostgreSQL 13+ base backup")]
    BadManifest { path: PathBuf, reason: String },

    #[error(
        "archive directory {path} is missing or not a directory: create it or fix the -D argument"
    )]
    NotADirectory { path: PathBuf },

    #[error("prune needs a point to keep from (WAL file name, .backup file or backup_manifest) or an age: give at least one")]
    NoPruneCriterion,
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
    /// files, [`RESTORE_EXIT_ERROR`] for everything else. Both are below 126, so PostgreSQL treats
    /// them as "file not available" rather than as a fatal restore_command failure.
    pub fn restore_exit_code(&self) -> i32 {
        if self.is_corruption() {
            RESTORE_EXIT_CORRUPT
        } else {
            RESTORE_EXIT_ERROR
        }
    }
}

pub type Result<T> = std::result::Result<T, ArchiveError>;
