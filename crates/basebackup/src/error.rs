//! Why a base backup failed: [`BackupError`], with the stage of the protocol flow it hit, and how
//! a server error becomes the most helpful variant (wal_level too low, WAL removed, data checksum
//! failures with the damaged files named).

use std::fmt;

use thiserror::Error;
use walrelay_client::{ClientError, ServerCondition, ServerError};
use walrelay_protocol::command::{CommandError, MAX_RATE_MAX_KB, MAX_RATE_MIN_KB};
use walrelay_protocol::ErrorFields;

use crate::extract::ExtractError;
use crate::manifest::{ManifestError, UnknownAlgorithm, VerifyError};
use crate::session::MAX_MANIFEST_BYTES;
use crate::tablespace::TablespaceError;

/// The error an abort signal carries (typically: why the WAL stream died).
pub type AbortReason = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where in the protocol flow a server error or a lost connection hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStage {
    /// Before the start position (the checkpoint, option checks).
    Start,
    /// The tablespace header.
    Header,
    /// Archives and manifest.
    Transfer,
    /// The end position and the final status.
    End,
}

impl fmt::Display for BackupStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupStage::Start => "could not initiate base backup",
            BackupStage::Header => "could not get backup header",
            BackupStage::Transfer => "base backup failed while receiving data",
            BackupStage::End => "base backup failed at its end",
        })
    }
}

/// Files whose data checksums the server found wrong (`XX001` at the end of the backup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksumFailures {
    /// Files named by the server's warnings, relative to the data directory, in the order reported.
    pub files: Vec<String>,
    /// The server's WARNING messages about checksums (all warnings if none could be attributed).
    pub messages: Vec<String>,
    /// The final error.
    pub error: ServerError,
}

impl fmt::Display for ChecksumFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server found data checksum failures")?;
        if self.files.is_empty() {
            write!(f, " ({})", self.error.message())?;
        } else {
            let n = self.files.len();
            write!(
                f,
                " in {n} file{}: {}",
                if n == 1 { "" } else { "s" },
                self.files.join(", ")
            )?;
        }
        f.write_str(
            "; the primary's data is damaged: repair those relations (or copy them unverified with --no-verify-checksums)",
        )
    }
}

/// Why a base backup failed. Each message names the cause and what to do.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("transfer rate \"{0}\" is not a valid value: give kB/s as a number, optionally with suffix k or M (e.g. 512k, 20M)")]
    MaxRateSyntax(String),
    #[error("transfer rate must be greater than zero")]
    MaxRateNotPositive,
    #[error("transfer rate {0} kB/s is out of range: use {MAX_RATE_MIN_KB} kB/s to {MAX_RATE_MAX_KB} kB/s (1 GB/s)")]
    MaxRateRange(String),
    #[error("invalid BASE_BACKUP option: {0}")]
    Command(#[from] CommandError),
    #[error(transparent)]
    ManifestAlgorithm(#[from] UnknownAlgorithm),
    #[error("{stage}: {source}; check the server log for details")]
    Connection {
        stage: BackupStage,
        #[source]
        source: ClientError,
    },
    #[error("{stage}: {error}")]
    Server {
        stage: BackupStage,
        error: Box<ServerError>,
    },
    #[error("the primary's wal_level is too low for a base backup ({0}): set wal_level = replica (or logical) on the primary and restart it")]
    WalLevelTooLow(Box<ServerError>),
    /// `WAL` (`--wal-method fetch`): the server recycled a segment the backup needs before it
    /// could send it — nothing kept it (no slot, `wal_keep_size` too small for the backup's
    /// duration).
    #[error("the primary removed WAL this backup needs before sending it ({0}): use --wal-method stream (the default), or keep the WAL on the primary with a replication slot (-S NAME -C) or a larger wal_keep_size")]
    WalRemoved(Box<ServerError>),
    #[error("{0}")]
    ChecksumFailures(Box<ChecksumFailures>),
    #[error(
        "protocol violation during base backup: {0}; the server is not behaving like PostgreSQL"
    )]
    Protocol(String),
    #[error(transparent)]
    Tablespace(#[from] TablespaceError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("the backup manifest exceeds {MAX_MANIFEST_BYTES} bytes: refusing a server that does not stop sending it")]
    ManifestTooLarge,
    #[error(
        "the server sent no backup manifest although one was requested: take the backup again"
    )]
    ManifestMissing,
    #[error("base backup aborted: {0}")]
    Aborted(#[source] AbortReason),
    #[error("the extraction thread stopped unexpectedly (it panicked); nothing it wrote can be trusted, take the backup again")]
    ExtractorFailed,
}

impl BackupError {
    /// The server's error, if the server reported one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            BackupError::Server { error, .. }
            | BackupError::WalLevelTooLow(error)
            | BackupError::WalRemoved(error) => Some(error),
            BackupError::ChecksumFailures(c) => Some(&c.error),
            BackupError::Connection { source, .. } => source.server_error(),
            _ => None,
        }
    }

    /// The server's SQLSTATE, if the server reported an error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(ServerError::code)
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        BackupError::Protocol(msg.into())
    }
}

/// Turns a server error into the most helpful [`BackupError`] (what it means is decided by
/// [`ServerCondition`]).
pub(crate) fn classify_server_error(
    stage: BackupStage,
    e: ErrorFields,
    notices: Vec<ErrorFields>,
) -> BackupError {
    let error = ServerError { fields: e };
    match ServerCondition::of(&error) {
        ServerCondition::DataCorrupted => {
            let (files, messages) = checksum_failure_files(&notices);
            BackupError::ChecksumFailures(Box::new(ChecksumFailures {
                files,
                messages,
                error,
            }))
        }
        ServerCondition::WalLevelTooLow => BackupError::WalLevelTooLow(Box::new(error)),
        // xlog.c CheckXLogRemoved(), called by basebackup.c before and while sending WAL.
        ServerCondition::WalRemoved => BackupError::WalRemoved(Box::new(error)),
        _ => BackupError::Server {
            stage,
            error: Box::new(error),
        },
    }
}

/// Pulls file names out of the server's checksum warnings (`sendFile()` in basebackup.c):
/// "checksum verification failed in file \"F\", block N: …", "file \"F\" has a total of N checksum
/// verification failures", "further checksum verification failures in file \"F\" will not be
/// reported". Messages in another language name no file; then every warning is kept.
pub fn checksum_failure_files(notices: &[ErrorFields]) -> (Vec<String>, Vec<String>) {
    let mut files: Vec<String> = Vec::new();
    let mut messages = Vec::new();
    let quoted_after = |msg: &str, prefix: &str| -> Option<String> {
        let rest = msg.strip_prefix(prefix)?;
        let end = rest.find('"')?;
        Some(rest[..end].to_string())
    };
    let warnings: Vec<&ErrorFields> = notices.iter().filter(|n| n.severity == "WARNING").collect();
    for n in &warnings {
        let m = n.message.as_str();
        let file = quoted_after(m, "checksum verification failed in file \"")
            .or_else(|| {
                m.contains("checksum verification failure")
                    .then(|| quoted_after(m, "file \""))
                    .flatten()
            })
            .or_else(|| quoted_after(m, "further checksum verification failures in file \""));
        if let Some(f) = file {
            let f = f.strip_prefix("./").unwrap_or(&f).to_string();
            if !files.contains(&f) {
                files.push(f);
            }
            messages.push(n.message.clone());
        } else if m.contains("checksum") {
            messages.push(n.message.clone());
        }
    }
    if files.is_empty() && messages.is_empty() {
        messages = warnings.iter().map(|n| n.message.clone()).collect();
    }
    (files, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(msg: &str) -> ErrorFields {
        ErrorFields {
            severity: "WARNING".into(),
            code: "XX001".into(),
            message: msg.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn checksum_warnings_name_files() {
        let notices = vec![
            warning("checksum verification failed in file \"./base/5/16384\", block 0: calculated 1A2B but expected 3C4D"),
            warning("checksum verification failed in file \"./base/5/16384\", block 3: calculated 1 but expected 2"),
            warning("further checksum verification failures in file \"./base/5/16390\" will not be reported"),
            warning("file \"./base/5/16384\" has a total of 2 checksum verification failures"),
            warning("something else entirely"),
        ];
        let (files, messages) = checksum_failure_files(&notices);
        assert_eq!(files, ["base/5/16384", "base/5/16390"]);
        assert_eq!(messages.len(), 4);
        // A localized server: no file recognised, every warning kept.
        let (files, messages) = checksum_failure_files(&[warning("Prüfsummenfehler")]);
        assert!(files.is_empty());
        assert_eq!(messages, ["Prüfsummenfehler"]);
        assert_eq!(checksum_failure_files(&[]), (vec![], vec![]));
    }

    #[test]
    fn classifies_server_errors() {
        let e = |code: &str, msg: &str| ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: msg.into(),
            detail: None,
            hint: None,
        };
        let wal = classify_server_error(
            BackupStage::Start,
            e(
                "55000",
                "WAL level not sufficient for making an online backup",
            ),
            vec![],
        );
        assert!(matches!(wal, BackupError::WalLevelTooLow(_)), "{wal}");
        assert!(wal.to_string().contains("wal_level = replica"));
        let sum = classify_server_error(
            BackupStage::End,
            e("XX001", "checksum verification failure during base backup"),
            vec![warning(
                "file \"./base/1/2\" has a total of 1 checksum verification failures",
            )],
        );
        assert!(sum.to_string().contains("base/1/2"), "{sum}");
        assert_eq!(sum.sqlstate(), Some("XX001"));
        for code in ["58P01", "XX000"] {
            let removed = classify_server_error(
                BackupStage::Transfer,
                e(
                    code,
                    "requested WAL segment 000000010000000000000218 has already been removed",
                ),
                vec![],
            );
            assert!(matches!(removed, BackupError::WalRemoved(_)), "{removed}");
            let text = removed.to_string();
            assert!(text.contains("000000010000000000000218"), "{text}");
            assert!(text.contains("--wal-method stream"), "{text}");
            assert_eq!(removed.sqlstate(), Some(code));
        }
        let other =
            classify_server_error(BackupStage::Start, e("42501", "permission denied"), vec![]);
        assert!(matches!(other, BackupError::Server { .. }));
        assert_eq!(
            other.to_string(),
            "could not initiate base backup: ERROR:  permission denied"
        );
    }
}
