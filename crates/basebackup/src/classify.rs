//! What the base-backup errors mean for retries and exit codes ([`walrelay_client::Classify`]).
//!
//! A wrapper whose meaning is its cause (a WAL stream's failure, an aborted backup) answers
//! [`ErrorClass::Other`]; the binary then looks further down the source chain for a more specific
//! class.

use walrelay_client::{Classify, ErrorClass, ServerCondition};

use crate::bootstrap::BootstrapError;
use crate::error::BackupError;
use crate::extract::ExtractError;
use crate::standby::StandbyConfigError;
use crate::tablespace::TablespaceError;

impl Classify for BootstrapError {
    fn class(&self) -> ErrorClass {
        use BootstrapError as E;
        match self {
            E::CreateSlotWithoutName
            | E::InvalidSlotName(_)
            | E::Mapping(_)
            | E::InvalidLabel
            | E::WalDirNotAbsolute(_)
            | E::WalDirInsideTarget(_) => ErrorClass::Usage,
            E::TargetNotEmpty { .. }
            | E::TargetInterrupted(_)
            | E::TargetIsDataDirectory(_)
            | E::TargetNotADirectory(_)
            | E::TargetAccess { .. }
            | E::TargetCreate { .. }
            | E::TargetNotWritable { .. }
            | E::CreateWalDir { .. }
            | E::ReadWalDir { .. }
            | E::Sync(_)
            | E::StoreManifest(_) => ErrorClass::Local,
            E::Connect(c) | E::Command { source: c, .. } => c.class(),
            E::ReplicationRefused(_)
            | E::UnsupportedVersion { .. }
            | E::SlotNotFound(_)
            | E::SlotExists(_)
            | E::SlotNotPhysical { .. }
            | E::SlotInUse { .. }
            | E::WalMissing(_) => ErrorClass::ServerState,
            E::Backup(b) => b.class(),
            E::Standby(s) => s.class(),
            E::Cancelled => ErrorClass::Interrupted,
            E::NoWalStreamer | E::WalStreamStart(_) | E::WalStreamFailed(_) => ErrorClass::Other,
        }
    }
}

impl Classify for BackupError {
    fn class(&self) -> ErrorClass {
        use BackupError as E;
        match self {
            E::MaxRateSyntax(_)
            | E::MaxRateNotPositive
            | E::MaxRateRange(_)
            | E::Command(_)
            | E::ManifestAlgorithm(_) => ErrorClass::Usage,
            E::Connection { source, .. } => source.class(),
            E::Server { error, .. } => ServerCondition::of(error).class(),
            E::WalLevelTooLow(_) | E::WalRemoved(_) | E::ChecksumFailures(_) => {
                ErrorClass::ServerState
            }
            E::Tablespace(t) => t.class(),
            E::Extract(x) => x.class(),
            E::Protocol(_)
            | E::Manifest(_)
            | E::Verify(_)
            | E::ManifestTooLarge
            | E::ManifestMissing
            | E::Aborted(_)
            | E::ExtractorFailed => ErrorClass::Other,
        }
    }
}

impl Classify for ExtractError {
    fn class(&self) -> ErrorClass {
        match self {
            ExtractError::NotADirectory(_)
            | ExtractError::Exists(_)
            | ExtractError::Io { .. }
            | ExtractError::Durable(_) => ErrorClass::Local,
            // Everything else is the server's stream: cut off, corrupt or hostile.
            _ => ErrorClass::Other,
        }
    }
}

impl Classify for TablespaceError {
    fn class(&self) -> ErrorClass {
        match self {
            TablespaceError::BadLocation { .. } | TablespaceError::DuplicateOid(_) => {
                ErrorClass::Other
            }
            TablespaceError::SameTarget { .. } => ErrorClass::Usage,
            _ => ErrorClass::Local,
        }
    }
}

impl Classify for StandbyConfigError {
    fn class(&self) -> ErrorClass {
        match self {
            StandbyConfigError::UnsupportedVersion(_) => ErrorClass::ServerState,
            StandbyConfigError::InvalidSlotName(_)
            | StandbyConfigError::UnwritableConninfo
            | StandbyConfigError::RetryIntervalTooShort => ErrorClass::Usage,
            StandbyConfigError::Read { .. } | StandbyConfigError::Write(_) => ErrorClass::Local,
        }
    }
}
