//! The store crate's one error type, classified for retries and exit codes.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_archive::ArchiveError;
use walrelay_client::{Classify, ErrorClass};
use walrelay_durable::DurableError;

/// Everything that can go wrong with an archive in object storage.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid archive location {input:?}: {reason}")]
    BadLocation { input: String, reason: String },

    #[error("cannot set up {location}: {reason}")]
    Setup { location: String, reason: String },

    /// The store answered with an error or could not be reached. The text of `source` comes from
    /// object_store, which never includes credentials.
    #[error("{action} {object}: {source}; {}", remote_fix(.source))]
    Remote {
        action: &'static str,
        object: String,
        #[source]
        source: object_store::Error,
    },

    #[error("{object} exists with different content (stored SHA-256 {stored}, ours {ours}): objects are never replaced; find out which receiver wrote it — two clusters or receivers must not share a prefix and system identifier")]
    Conflict {
        object: String,
        stored: String,
        ours: String,
    },

    #[error("{object} is damaged: {reason}; restore it from another copy or re-upload it from the spool")]
    Corrupt { object: String, reason: String },

    #[error("{location} holds the WAL of several clusters (system identifiers {found}): pass --system-identifier, or run restore in the recovering data directory")]
    AmbiguousSystem { location: String, found: String },

    #[error("{what} belongs to the cluster with system identifier {found}, but this archive is for {expected}: a spool or archive must hold one cluster's WAL only")]
    SystemMismatch {
        what: String,
        expected: u64,
        found: u64,
    },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    Durable(#[from] DurableError),

    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

fn remote_fix(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => {
            "check the credentials in the environment and the bucket's permissions"
        }
        object_store::Error::NotFound { .. } => "check the bucket name and that it exists",
        _ => "check the endpoint, the network and the store's health",
    }
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn remote(
        action: &'static str,
        object: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        StoreError::Remote {
            action,
            object: object.into(),
            source,
        }
    }

    /// True when the content of the archive is wrong (damaged or conflicting objects): restore
    /// reports it with its "damaged" exit code.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::Conflict { .. } => true,
            StoreError::Archive(a) => a.is_corruption(),
            _ => false,
        }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        use object_store::Error as O;
        match self {
            StoreError::BadLocation { .. } | StoreError::AmbiguousSystem { .. } => {
                ErrorClass::Usage
            }
            StoreError::Setup { .. } => ErrorClass::Connection,
            StoreError::Remote { source, .. } => match source {
                O::Unauthenticated { .. } | O::PermissionDenied { .. } => ErrorClass::Connection,
                O::NotImplemented { .. } | O::NotSupported { .. } => ErrorClass::Connection,
                _ => ErrorClass::Transient,
            },
            StoreError::Conflict { .. }
            | StoreError::Corrupt { .. }
            | StoreError::SystemMismatch { .. }
            | StoreError::Io { .. }
            | StoreError::Durable(_) => ErrorClass::Local,
            StoreError::Archive(a) => match a {
                ArchiveError::BadFileName { .. }
                | ArchiveError::BadCompression { .. }
                | ArchiveError::UnknownSegmentSize { .. } => ErrorClass::Usage,
                _ => ErrorClass::Local,
            },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
