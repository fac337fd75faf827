//! The backup crate's one error type, classified for the exit code.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_basebackup::{
    BackupError, ExtractError, ManifestError, TablespaceError, VerifyError, WalRangeError,
    WalStreamError,
};
use walrelay_client::{Classify, ClientError, ErrorClass};
use walrelay_durable::DurableError;
use walrelay_store::StoreError;

use crate::descriptor::DescriptorError;

/// Everything that can go wrong taking, listing, restoring or deleting a stored backup. Each
/// variant's text names the cause and the fix.
#[derive(Debug, Error)]
pub enum BackupJobError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    #[error("the archive already holds a backup labelled {label:?} ({object} exists): choose another --label, or remove it with walrelay backup delete")]
    LabelExists { label: String, object: String },
    #[error("backup {label:?} was deleted while it ran ({missing} is gone from the archive): it is not stored; run walrelay backup again")]
    DeletedWhileRunning { label: String, missing: String },
    #[error("could not connect to the primary: {0}")]
    Connect(#[source] ClientError),
    #[error(
        "the server runs PostgreSQL {0}, which walrelay does not support: use PostgreSQL 10 to 18"
    )]
    UnsupportedVersion(String),
    #[error("{what} failed: {source}")]
    Command {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("the archive holds WAL or backups of system {archive}, but the server is system {server}: a directory archive holds one cluster — use another archive")]
    SystemMismatch { archive: u64, server: u64 },
    #[error(transparent)]
    Backup(BackupError),
    #[error("could not start streaming the backup's WAL: {0}; no data was stored")]
    WalStreamStart(#[source] WalStreamError),
    #[error("streaming the backup's WAL failed: {0}; the backup is not complete, take it again")]
    WalStreamFailed(#[source] WalStreamError),
    #[error("{0}")]
    WalMissing(#[from] WalRangeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("could not {action} \"{path}\": {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    NoBackup(String),
    #[error("backup {label:?} is damaged: {object} {reason}; restore from another backup (walrelay backup list), and delete this one")]
    Damaged {
        label: String,
        object: String,
        reason: String,
    },
    #[error("backup {label:?} is damaged: its backup_manifest does not parse ({source}); restore from another backup")]
    BadManifest {
        label: String,
        #[source]
        source: ManifestError,
    },
    #[error("backup {label:?} does not match its manifest: {source}; restore from another backup")]
    ManifestMismatch {
        label: String,
        #[source]
        source: VerifyError,
    },
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Tablespace(#[from] TablespaceError),
    #[error("directory \"{0}\" exists but is not empty; choose an empty or new directory")]
    TargetNotEmpty(PathBuf),
    #[error("cancelled")]
    Cancelled,
}

impl From<BackupError> for BackupJobError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Aborted(reason) => BackupJobError::WalStreamFailed(reason),
            other => BackupJobError::Backup(other),
        }
    }
}

impl BackupJobError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BackupJobError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn damaged(label: &str, object: &str, reason: impl Into<String>) -> Self {
        BackupJobError::Damaged {
            label: label.to_string(),
            object: object.to_string(),
            reason: reason.into(),
        }
    }
}

/// The class of a stream error, from the typed errors in its chain.
fn stream_class(e: &WalStreamError) -> ErrorClass {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ClientError>() {
            return c.class();
        }
        cur = err.source();
    }
    ErrorClass::Other
}

impl Classify for BackupJobError {
    fn class(&self) -> ErrorClass {
        match self {
            BackupJobError::Usage(_)
            | BackupJobError::Descriptor(DescriptorError::BadLabel(_))
            | BackupJobError::LabelExists { .. }
            | BackupJobError::NoBackup(_) => ErrorClass::Usage,
            BackupJobError::DeletedWhileRunning { .. } => ErrorClass::Local,
            BackupJobError::Descriptor(_)
            | BackupJobError::Damaged { .. }
            | BackupJobError::BadManifest { .. }
            | BackupJobError::ManifestMismatch { .. }
            | BackupJobError::TargetNotEmpty(_)
            | BackupJobError::Durable(_)
            | BackupJobError::Io { .. }
            | BackupJobError::WalMissing(_) => ErrorClass::Local,
            BackupJobError::Connect(e) | BackupJobError::Command { source: e, .. } => e.class(),
            BackupJobError::UnsupportedVersion(_) | BackupJobError::SystemMismatch { .. } => {
                ErrorClass::ServerState
            }
            BackupJobError::Backup(e) => e.class(),
            BackupJobError::WalStreamStart(e) | BackupJobError::WalStreamFailed(e) => {
                stream_class(e)
            }
            BackupJobError::Store(e) => e.class(),
            BackupJobError::Extract(e) => e.class(),
            BackupJobError::Tablespace(e) => e.class(),
            BackupJobError::Cancelled => ErrorClass::Interrupted,
        }
    }
}

pub type Result<T, E = BackupJobError> = std::result::Result<T, E>;
