//! What a subset run is given, and the session settings walrelay uses on each side.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use walrelay_client::{ConnectParams, ReplicationMode, VersionedSetting};
use walrelay_protocol::Lsn;

use crate::schema::{SubsetName, TableName};
use crate::stats::SubsetStats;

/// Default parallel table copies.
pub const DEFAULT_COPY_JOBS: usize = 4;
/// Default interval of status updates to the source.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default interval between two copies of the sequences' positions to the target.
pub const DEFAULT_SEQUENCE_INTERVAL: Duration = Duration::from_secs(30);

/// What the apply does with a change the target's rows contradict: an INSERT of a key the target
/// already has, an UPDATE or DELETE of a row the target does not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Stop, naming the table, the key, the source transaction and its commit LSN.
    #[default]
    Error,
    /// The source's row wins: an INSERT updates the existing row, an UPDATE of a missing row
    /// inserts it; a DELETE of a missing row is left out. Each recorded.
    Upsert,
    /// The change is left out and recorded.
    Skip,
}

impl OnConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Error => "error",
            OnConflict::Upsert => "upsert",
            OnConflict::Skip => "skip",
        }
    }
}

/// `walrelay subset run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub name: SubsetName,
    /// Where the tables come from (any replication mode: walrelay picks per session).
    pub source: ConnectParams,
    pub target: ConnectParams,
    /// The tables wanted (`-t`); with `schemas`, the whole desired set. Both empty: the set the
    /// target's state lists.
    pub tables: Vec<TableName>,
    /// Every permanent table of these schemas (`--schema`), as the source has them now.
    pub schemas: Vec<String>,
    /// Stop once everything up to this source LSN is applied (`-E`).
    pub endpos: Option<Lsn>,
    /// Tables to copy again from a fresh snapshot (`--resync`); the others keep streaming.
    pub resync: Vec<TableName>,
    /// Copy every table again under a new slot (`--resync-all`): after the slot was lost.
    pub resync_all: bool,
    /// Tables without a key given `REPLICA IDENTITY FULL` on the source (`--replica-identity-full`).
    pub replica_identity_full: Vec<TableName>,
    /// Every table of the run without a key given `REPLICA IDENTITY FULL` (`--replica-identity
    /// full`).
    pub replica_identity_full_all: bool,
    /// Sequences copied besides the tables' own (`--sequence`). Empty with no tables named: the
    /// ones the subset has.
    pub sequences: Vec<TableName>,
    /// How often the sequences' positions are copied to the target while streaming.
    pub sequence_interval: Duration,
    pub on_conflict: OnConflict,
    /// Leave out the source transaction that commits at this LSN (`--skip-lsn`).
    pub skip_lsn: Option<Lsn>,
    /// Make the slot a failover slot (PostgreSQL 17+), synced to standbys with
    /// `sync_replication_slots`.
    pub failover: bool,
    /// Where streamed in-progress transactions are spilled (`--spool-dir`; the system's
    /// temporary directory by default).
    pub spool_dir: Option<PathBuf>,
    /// Tables copied at the same time.
    pub copy_jobs: usize,
    pub status_interval: Duration,
    /// Retry transient failures with backoff (else stop at the first).
    pub reconnect: bool,
    pub max_reconnect_delay: Duration,
    pub stats: Arc<SubsetStats>,
    pub shutdown: watch::Receiver<bool>,
}

/// Settings that make every text form portable between majors: what PostgreSQL's own
/// subscriber asks of its publisher (libpqwalreceiver), and no timeouts cutting a long copy.
const TEXT_FORMS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
];
const NO_TIMEOUTS: &[(&str, &str)] = &[
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
];
/// The timeouts newer servers add, set once connected (an older server refuses them at startup):
/// a database's `idle_session_timeout` would end the session holding the subset's lock and the
/// apply session whenever the source is quiet; its `transaction_timeout` would end a long copy.
const NO_NEWER_TIMEOUTS: &[VersionedSetting] = &[
    VersionedSetting {
        since: 140000,
        name: "idle_session_timeout",
        value: "0",
    },
    VersionedSetting {
        since: 170000,
        name: "transaction_timeout",
        value: "0",
    },
];

fn with_settings(
    p: &ConnectParams,
    mode: ReplicationMode,
    app: &str,
    settings: &[&[(&str, &str)]],
) -> ConnectParams {
    let mut p = p.clone();
    p.replication = mode;
    if p.application_name
        .as_deref()
        .is_none_or(|a| a == "walrelay")
    {
        p.application_name = Some(app.to_string());
    }
    for (k, v) in settings.iter().flat_map(|s| s.iter()) {
        p.extra_startup
            .retain(|(ek, _)| !ek.eq_ignore_ascii_case(k));
        p.extra_startup.push((k.to_string(), v.to_string()));
    }
    // Sent to SQL sessions only (`Connection::connect` skips them in replication mode), which
    // all go without the older timeouts too.
    p.settings_since.extend_from_slice(NO_NEWER_TIMEOUTS);
    p
}

impl RunConfig {
    /// An SQL session on the source (catalogs, copies).
    pub fn source_sql(&self) -> ConnectParams {
        source_sql(&self.source, &self.name)
    }

    /// The logical replication session (slots, the stream).
    pub fn source_replication(&self) -> ConnectParams {
        with_settings(
            &self.source,
            ReplicationMode::Database,
            &self.name.slot(),
            &[TEXT_FORMS],
        )
    }

    /// An SQL session on the target (DDL, copies).
    pub fn target_sql(&self) -> ConnectParams {
        target_sql(&self.target, &self.name)
    }

    /// The apply session: asynchronous commits, made safe by `progress`'s flush tracking.
    pub fn target_apply(&self) -> ConnectParams {
        with_settings(
            &self.target,
            ReplicationMode::Off,
            &self.name.slot(),
            &[TEXT_FORMS, NO_TIMEOUTS, &[("synchronous_commit", "off")]],
        )
    }
}

pub fn source_sql(p: &ConnectParams, name: &SubsetName) -> ConnectParams {
    with_settings(
        p,
        ReplicationMode::Off,
        &name.slot(),
        &[TEXT_FORMS, NO_TIMEOUTS],
    )
}

pub fn target_sql(p: &ConnectParams, name: &SubsetName) -> ConnectParams {
    with_settings(
        p,
        ReplicationMode::Off,
        &name.slot(),
        &[TEXT_FORMS, NO_TIMEOUTS],
    )
}
