//! What a receiver is asked to do ([`ReceiverConfig`]), and how it ended ([`ReceiveSummary`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use walrelay_archive::Compression as ArchiveCompression;
use walrelay_client::ConnectParams;
use walrelay_durable::Owner;
use walrelay_protocol::{Lsn, TimelineId};

use crate::disk_task::DiskTaskConfig;
use crate::stats::ReceiverStats;

/// Where the receiver writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// pg_receivewal's layout, with optional compression of completed segments and a checksum file.
    Archive {
        dir: PathBuf,
        compression: ArchiveCompression,
        checksums: bool,
    },
    /// A standby's `pg_wal` (sidecar, and bootstrap's WAL stream).
    PgWal { pg_wal: PathBuf },
}

impl Target {
    pub fn dir(&self) -> &Path {
        match self {
            Target::Archive { dir, .. } => dir,
            Target::PgWal { pg_wal } => pg_wal,
        }
    }
}

/// Everything the receiver needs; built by the CLI (receive) or by bootstrap.
pub struct ReceiverConfig {
    pub connect: ConnectParams,
    pub target: Target,
    /// A permanent slot to stream from.
    pub slot: Option<String>,
    /// Keep `slot` on every standby of the host list too, so that it survives a promotion
    /// (`--failover`, see the slot keeper).
    pub failover_slot: bool,
    /// Create a temporary slot with this name on every connection (bootstrap without `-S`): the
    /// server keeps our WAL while we are connected.
    pub temporary_slot: Option<String>,
    /// Start here (rounded down to a segment) instead of what the directory says — first session only.
    pub start: Option<Lsn>,
    /// Stop once WAL up to this position is durable. A watch so bootstrap can set it when the backup
    /// ends.
    pub endpos: watch::Receiver<Option<Lsn>>,
    pub status_interval: Duration,
    /// Reply as soon as data is durable (synchronous standby).
    pub synchronous: bool,
    /// fsync before reporting a flush position (false: `--no-sync`).
    pub sync: bool,
    /// Validate page headers and record CRCs before acknowledging.
    pub validate: bool,
    /// Reconnect after transient failures (false: `--no-loop`).
    pub reconnect: bool,
    /// The cluster we must be receiving from (bootstrap knows it; receive learns it from the directory).
    pub expected_system_identifier: Option<u64>,
    /// An SQL connection to the standby fed by a pg_wal sidecar, to report its replay position.
    pub apply_source: Option<ConnectParams>,
    pub owner: Owner,
    pub stats: Arc<ReceiverStats>,
    /// Set to true to stop: flush, report, close the partial segment, return.
    pub shutdown: watch::Receiver<bool>,
    pub max_reconnect_delay: Duration,
    pub disk: DiskTaskConfig,
}

/// Silence from the server after which walrelay asks it for a reply. An idle walsender sends nothing
/// while its standby keeps replying, so without asking, "no message lately" could not tell an idle
/// server from a dead connection (and the health check would fail on idle servers).
pub const SERVER_SILENCE_PING: Duration = Duration::from_secs(10);
/// Silence after which the connection is presumed dead and streaming reconnects: the default
/// `wal_receiver_timeout` of a standby.
pub const SERVER_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the receiver stopped without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A shutdown request (SIGINT/SIGTERM).
    Shutdown,
    /// The end position was reached and is durable.
    EndPosition(Lsn),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveSummary {
    pub stop: StopReason,
    pub flushed: Lsn,
    pub timeline: TimelineId,
    pub reconnects: u64,
}
