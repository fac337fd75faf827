//! `walrelay bootstrap` as a library function: a new standby data directory from a running primary,
//! consistent on its own, configured, durable — or nothing at all.
//!
//! [`bootstrap`] does what `pg_basebackup -D DIR -R -X stream|fetch` does, in this order:
//!
//! 1. **Check the input before touching anything**: `-T` mappings, slot name, `--create-slot`
//!    without `--slot`, max rate, label. Then the target: absent (created, mode 0700) or empty
//!    (only what walrelay adds will be removed on failure), and writable; anything else is refused
//!    with the directory's name. An empty target whose mode PostgreSQL would refuse (anything but
//!    0700 or 0750, typically 0755 from `mkdir`) is set to 0700, with a log line, and gets its
//!    mode back if the bootstrap fails.
//! 2. **Connect** (replication), check the server version (10–18), `IDENTIFY_SYSTEM`,
//!    `wal_segment_size`. A server with `max_wal_senders = 0` (which `wal_level = minimal`
//!    requires) refuses the connection itself; the error says what to change.
//! 3. **Slot**: `--create-slot` creates a permanent physical slot with `RESERVE_WAL` *before* the
//!    backup starts, so the WAL it needs is retained from before the backup's checkpoint. An
//!    existing slot (`--slot` alone) is checked before the backup starts: `READ_REPLICATION_SLOT` on
//!    PostgreSQL 15+; before 15 (no SQL on a physical replication connection) by a
//!    `START_REPLICATION SLOT` at the current position that is ended at once with CopyDone. That
//!    probe changes nothing: a physical slot only moves when the client reports a flush position,
//!    and the probe reports none. A slot in use by another walsender is reported as such.
//!    With `--waldir` the WAL directory (absent or empty, checked with the target) is created
//!    and `DIR/pg_wal` made a symbolic link to it before the backup, as pg_basebackup does.
//! 4. **BASE_BACKUP** ([`BaseBackupStream`]) with a manifest (PostgreSQL 13+), the checkpoint mode,
//!    label, checksum verification and rate limit asked for. As soon as the start position is
//!    known the tablespace directories are prepared and, with [`WalMethod::Stream`], the WAL
//!    stream is started from the start of its segment into `DIR/pg_wal` by a [`WalStreamer`]
//!    (like pg_basebackup's `StartLogStreamer`). If that stream fails, the backup is aborted at once.
//!    [`WalMethod::Fetch`] asks the server to put the WAL in the base archive instead (`WAL`),
//!    [`WalMethod::None`] takes no WAL (and lets the server wait for archiving, as pg_basebackup
//!    `-X none` does).
//! 5. **End**: the stream is finished at the end position; unless `--no-verify`, the extracted
//!    files were already checked against the manifest during extraction and the segments the
//!    manifest's `WAL-Ranges` need (or, without a manifest, the start..end range) must be in
//!    `pg_wal`, complete.
//! 6. **Standby configuration** (streaming with `primary_conninfo` from the user's own settings,
//!    `dbname` from PostgreSQL 17, the slot if named; or sidecar), unless disabled. A password is
//!    written only if the user put it in the connection string: one from `PGPASSWORD`, a service
//!    file or a password file stays out of the data directory.
//!    `global/pg_control` was extracted under another name ([`crate::extract::HELD_CONTROL_FILE`])
//!    and is renamed into place only now: a run killed before its configuration was written
//!    leaves a directory that cannot start — without `standby.signal` it would start as a
//!    writable clone of the primary — and that a re-run recognises as unfinished.
//! 7. **fsync** everything written (extracted files, WAL, directories), unless `--no-sync`.
//! 8. **`backup_manifest` last**, atomically: a directory without it was never finished, so a crash
//!    at any earlier point cannot leave something that looks like a complete backup.
//!
//! On failure — an error, [`BootstrapError::Cancelled`] from the `cancel` future, or the
//! [`bootstrap`] future being dropped — everything walrelay added is removed (the target itself if
//! walrelay created it, else its contents; tablespace directories likewise) unless
//! `clean_on_failure` is off, and a slot created with `--create-slot` is dropped. pg_basebackup keeps
//! such a slot; walrelay drops it because a slot nobody uses retains WAL on the primary until its
//! disk fills, and the backup it was made for is gone. With `clean_on_failure` off the slot stays,
//! with the directory. When the future is dropped, files are removed synchronously in `Drop` (after
//! the extractor has stopped) and the slot drop is attempted on a spawned task, best effort; an
//! explicit `cancel` future gives the cleaner path. Unlike pg_basebackup, a checksum failure on the
//! primary is cleaned up like any other failure (the error lists the damaged files).
//!
//! **Ownership** when running as root: operators run `walrelay bootstrap` as root to build a
//! standby for the `postgres` user. Everything created (directories, files, WAL, configuration)
//! gets the owner of the target directory if it exists, else of its nearest existing ancestor
//! ([`Owner::of_dir_if_root`]) — so `/var/lib/postgresql/15/main` owned by `postgres` yields
//! `postgres`-owned files — unless [`BootstrapConfig::owner`] says otherwise (a `--owner USER`
//! option). A root-owned ancestor means root-owned files, as when walrelay is not run as root.

use std::fmt;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::unistd::AccessFlags;
use thiserror::Error;
use walrelay_client::{
    ClientError, ConnectParams, Connection, IdentifySystem, ServerCondition, StartedReplication,
};
use walrelay_conninfo::{ConnectionConfig, PasswordSource, PrimaryConninfoOptions};
use walrelay_durable::{create_dir_all_durable, CreateModes, DurableError, Owner};
use walrelay_protocol::command::{
    self, BaseBackupOptions, CheckpointMode, CommandError, ServerVersion, MAX_SUPPORTED_MAJOR,
    MIN_SUPPORTED_MAJOR,
};
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalFileName, WalSegmentSize};

use crate::error::BackupError;
use crate::feed::{ExtractionGate, EXTRACTOR_STOP_TIMEOUT};
use crate::manifest::{
    store_manifest, verify_wal_ranges, ChecksumAlgorithm, VerifySummary, WalRange, WalRangeError,
};
use crate::max_rate::validate_max_rate;
use crate::progress::{BackupPhase, BackupProgress};
use crate::standby::{write_standby_config, StandbyConfig, StandbyConfigError, StandbyMode};
use crate::stream::{BaseBackupStream, ReceiveTarget};
use crate::sync::{SyncSummary, WrittenPaths};
use crate::tablespace::{
    check_dir_empty_or_absent, lost_found_hint, plan_tablespace_dirs, DirState, MappingError,
    PreparedTablespace, TablespaceError, TablespaceLocation, TablespaceMapping,
};
use walrelay_protocol::base_backup::BackupPosition;

/// A boxed future that can cross threads, for the object-safe [`WalStreamer`] traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whatever went wrong in a WAL streamer.
pub type WalStreamError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Mode of directories walrelay creates (`pg_dir_create_mode`).
pub const DATA_DIR_MODE: u32 = 0o700;

/// Default label of the `BASE_BACKUP` (shown in `backup_label`).
pub const DEFAULT_LABEL: &str = "walrelay bootstrap";

/// Default number of threads fsyncing the result.
pub const DEFAULT_SYNC_THREADS: usize = 8;

/// How the WAL that makes the backup consistent gets into `DIR/pg_wal` (pg_basebackup `-X`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WalMethod {
    /// Streamed over a second connection while the backup runs (the default, as in pg_basebackup).
    #[default]
    Stream,
    /// Sent by the server at the end of the base archive (`BASE_BACKUP … WAL`): simple, but the
    /// primary must keep all of it until the backup ends (`wal_keep_size` or a slot).
    Fetch,
    /// No WAL: the result needs a WAL archive to start.
    None,
}

impl FromStr for WalMethod {
    type Err = String;

    /// `stream`/`s`, `fetch`/`f`, `none`/`n`, as pg_basebackup's `-X`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "s" | "stream" => Ok(WalMethod::Stream),
            "f" | "fetch" => Ok(WalMethod::Fetch),
            "n" | "none" => Ok(WalMethod::None),
            _ => Err(format!(
                "invalid wal-method option \"{s}\", must be \"fetch\", \"stream\", or \"none\""
            )),
        }
    }
}

impl fmt::Display for WalMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalMethod::Stream => "stream",
            WalMethod::Fetch => "fetch",
            WalMethod::None => "none",
        })
    }
}

/// What a [`WalStreamer`] is asked to stream.
#[derive(Clone, Debug)]
pub struct StartWal {
    /// How to open the streamer's own replication connection.
    pub connect: ConnectParams,
    pub server_version: ServerVersion,
    /// From `IDENTIFY_SYSTEM`: the streamer must refuse a server reporting another one.
    pub system_identifier: u64,
    /// The backup's start timeline.
    pub timeline: TimelineId,
    /// The backup's start position rounded down to its segment.
    pub start_lsn: Lsn,
    pub wal_segment_size: WalSegmentSize,
    /// A slot to stream from (named by the user, existing or just created).
    pub slot: Option<String>,
    /// Create a temporary slot on the streaming connection (when no slot is named), so that the
    /// primary keeps the WAL until it has been streamed.
    pub create_temporary_slot: bool,
    /// `DIR/pg_wal`, already created with `archive_status/` inside.
    pub pg_wal_dir: PathBuf,
    /// Owner of the files to write.
    pub owner: Owner,
}

/// What a finished stream wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalSummary {
    /// Everything before this position is in `pg_wal_dir`.
    pub flushed_lsn: Lsn,
    /// Segment files written.
    pub segments: u64,
    /// WAL bytes received.
    pub bytes: u64,
}

/// Starts WAL streams for [`bootstrap`] (the START_REPLICATION engine lives in another crate and
/// implements this).
pub trait WalStreamer: Send + Sync {
    /// Connects, creates a temporary slot if asked, and starts streaming from
    /// `params.start_lsn` into `params.pg_wal_dir`. Returns once streaming has begun, so that
    /// errors a user can fix (unknown slot, no permission) arrive here, before the data.
    fn start(
        &self,
        params: StartWal,
    ) -> BoxFuture<'_, Result<Box<dyn WalStreamHandle>, WalStreamError>>;
}

/// A running WAL stream.
///
/// Dropping a handle must stop the stream; [`bootstrap`] may remove `pg_wal_dir` right after, so
/// a writer that outlives the handle for a moment must tolerate its directory vanishing and must
/// never re-create it.
pub trait WalStreamHandle: Send {
    /// Resolves only if the stream fails before [`finish`](Self::finish) is called (the
    /// connection is lost, the slot was invalidated, a write failed). Must be cancellation-safe:
    /// it is polled in a `select!` loop, and may be created and dropped many times.
    fn failed(&mut self) -> BoxFuture<'_, WalStreamError>;

    /// Keeps streaming until every byte before `end_lsn` is written into `pg_wal_dir`, then stops
    /// and closes the connection. On success every segment holding WAL from `start_lsn` up to
    /// `end_lsn` is there under its final name with its full size (the last one padded past the
    /// WAL it holds, as pg_basebackup `-X stream` leaves it), and `.done` files in
    /// `archive_status/` for the segments the standby must not archive again. Durability is not
    /// required: [`bootstrap`] fsyncs everything in `pg_wal_dir` afterwards.
    fn finish(
        self: Box<Self>,
        end_lsn: Lsn,
    ) -> BoxFuture<'static, Result<WalSummary, WalStreamError>>;

    /// Stops at once: the backup failed. Returns when nothing is written any more.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// What to make of the new directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbySetup {
    /// Leave it a plain copy (`--no-standby-config`).
    None,
    /// A streaming standby of the primary (`primary_conninfo`, `primary_slot_name`), like
    /// `pg_basebackup -R`.
    Streaming,
    /// A standby fed by `walrelay receive` writing into its `pg_wal` (`--sidecar`).
    Sidecar {
        wal_retrieve_retry_interval: Duration,
    },
}

/// The whole job's settings, validated by [`bootstrap`] before anything is touched.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// The user's connection settings: written into `primary_conninfo`.
    pub connection: ConnectionConfig,
    /// The same settings resolved for connecting (`walrelay_client::connect_params` with
    /// physical replication).
    pub connect: ConnectParams,
    /// `-D`: the new data directory.
    pub target_dir: PathBuf,
    /// `-T OLDDIR=NEWDIR` arguments as given.
    pub tablespace_mappings: Vec<String>,
    pub wal_method: WalMethod,
    /// `-S`: a physical slot for the WAL stream and the standby.
    pub slot: Option<String>,
    /// `-C`: create `slot` (it must not exist).
    pub create_slot: bool,
    pub checkpoint: CheckpointMode,
    pub label: String,
    /// Manifest checksum algorithm; `None` asks for no manifest (`--no-manifest`).
    pub manifest_checksums: Option<ChecksumAlgorithm>,
    /// Let the server verify data checksums while sending (`--no-verify-checksums` turns it off).
    pub verify_checksums: bool,
    /// `--max-rate` in kB/s (see [`crate::max_rate::parse_max_rate`]).
    pub max_rate_kb: Option<u32>,
    /// Check the result against the manifest and the WAL it needs (`--no-verify` turns it off).
    pub verify: bool,
    pub standby: StandbySetup,
    /// fsync the result (`--no-sync` turns it off).
    pub sync: bool,
    pub sync_threads: usize,
    /// Remove what was added when failing (`--no-clean` turns it off).
    pub clean_on_failure: bool,
    /// Owner of everything created; `None`: see the module docs.
    pub owner: Option<Owner>,
    /// Without `slot`, stream the WAL through a temporary slot (pg_basebackup's default; false is
    /// its `--no-slot`).
    pub temporary_slot: bool,
    /// `--waldir`: the WAL goes into this directory (absolute; absent or empty), and `pg_wal` in
    /// the data directory is a symbolic link to it, as pg_basebackup makes it.
    pub wal_dir: Option<PathBuf>,
}

impl BootstrapConfig {
    /// pg_basebackup's defaults: WAL streamed, spread checkpoint, CRC-32C manifest, checksums
    /// verified, streaming standby configuration, fsync, cleanup on failure.
    pub fn new(
        connection: ConnectionConfig,
        connect: ConnectParams,
        target_dir: impl Into<PathBuf>,
    ) -> Self {
        BootstrapConfig {
            connection,
            connect,
            target_dir: target_dir.into(),
            tablespace_mappings: Vec::new(),
            wal_method: WalMethod::Stream,
            slot: None,
            create_slot: false,
            checkpoint: CheckpointMode::Spread,
            label: DEFAULT_LABEL.to_string(),
            manifest_checksums: Some(ChecksumAlgorithm::Crc32c),
            verify_checksums: true,
            max_rate_kb: None,
            verify: true,
            standby: StandbySetup::Streaming,
            sync: true,
            sync_threads: DEFAULT_SYNC_THREADS,
            clean_on_failure: true,
            owner: None,
            temporary_slot: true,
            wal_dir: None,
        }
    }
}

/// The result of a successful bootstrap.
#[derive(Clone, Debug)]
pub struct BootstrapSummary {
    pub data_dir: PathBuf,
    pub server_version: ServerVersion,
    pub system_identifier: u64,
    pub wal_segment_size: WalSegmentSize,
    pub start: BackupPosition,
    pub end: BackupPosition,
    pub tablespaces: Vec<PreparedTablespace>,
    pub slot: Option<String>,
    pub slot_created: bool,
    pub wal_method: WalMethod,
    /// What the WAL stream reported ([`WalMethod::Stream`]).
    pub wal: Option<WalSummary>,
    /// WAL segments found in `pg_wal` at the end.
    pub wal_segments: usize,
    /// CopyData bytes received for the base backup.
    pub bytes_received: u64,
    pub duration: Duration,
    /// Whether `backup_manifest` was written (PostgreSQL 13+, unless no manifest was requested).
    pub manifest_stored: bool,
    /// What the manifest check confirmed (`None` with `verify` off or without a manifest).
    pub verified: Option<VerifySummary>,
    /// Configuration files written for the standby.
    pub standby_files: Vec<&'static str>,
    /// What was fsynced (`None` with `sync` off).
    pub synced: Option<SyncSummary>,
    /// WARNING messages from the server.
    pub warnings: Vec<String>,
}

impl BootstrapSummary {
    /// Average transfer rate of the base backup, bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.bytes_received as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a bootstrap failed. One line each, naming the cause and the fix.
#[derive(Debug, Error)]
pub enum BootstrapError {
    #[error("--create-slot needs --slot NAME: name the replication slot to create")]
    CreateSlotWithoutName,
    #[error("{0}")]
    InvalidSlotName(CommandError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("the backup label contains a NUL byte: remove it")]
    InvalidLabel,
    #[error("--waldir {0} is not an absolute path: give the WAL directory's absolute path")]
    WalDirNotAbsolute(PathBuf),
    #[error("--waldir {0} is the data directory itself or inside it: choose a directory outside the data directory")]
    WalDirInsideTarget(PathBuf),
    #[error("--wal-method stream needs a WAL streamer and none is available here: use --wal-method fetch or none")]
    NoWalStreamer,
    #[error("directory \"{}\" exists but is not empty (it holds \"{entry}\"){}; choose an empty or new directory", dir.display(), lost_found_hint(entry))]
    TargetNotEmpty { dir: PathBuf, entry: String },
    #[error("directory \"{0}\" holds an unfinished base backup (backup_label but no global/pg_control, which a bootstrap writes last: an earlier run was killed); remove its contents, and those of the tablespace directories it mapped with -T, and run again")]
    TargetInterrupted(PathBuf),
    #[error("directory \"{0}\" holds a PostgreSQL data directory (PG_VERSION); refusing to overwrite it — choose an empty or new directory")]
    TargetIsDataDirectory(PathBuf),
    #[error("\"{0}\" exists but is not a directory; choose an empty or new directory")]
    TargetNotADirectory(PathBuf),
    #[error("could not access directory \"{path}\": {source}; check its permissions or choose another directory")]
    TargetAccess {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not create directory \"{path}\": {source}; check the permissions of its parent or choose another directory")]
    TargetCreate {
        path: PathBuf,
        #[source]
        source: DurableError,
    },
    #[error("directory \"{path}\" is not writable ({source}); fix its permissions or choose another directory")]
    TargetNotWritable {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("could not connect to the primary: {0}")]
    Connect(#[source] ClientError),
    #[error("the primary refuses the replication connection ({0}): set wal_level = replica and max_wal_senders above the number of connected standbys on the primary, then restart it")]
    ReplicationRefused(#[source] ClientError),
    #[error("the server runs PostgreSQL {version}, which walrelay does not support: use a primary running PostgreSQL {MIN_SUPPORTED_MAJOR} to {MAX_SUPPORTED_MAJOR}")]
    UnsupportedVersion { version: String },
    #[error("{what} failed: {source}")]
    Command {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("replication slot \"{0}\" does not exist: create it on the primary (SELECT pg_create_physical_replication_slot('{0}')) or add --create-slot")]
    SlotNotFound(String),
    #[error("replication slot \"{0}\" already exists: use it without --create-slot, or choose another name")]
    SlotExists(String),
    #[error("replication slot \"{slot}\" is a {kind} slot (a subscription's or a walrelay subset's, say): a base backup needs a physical slot — choose another name (--create-slot makes it); leave this one alone, its consumer needs it")]
    SlotNotPhysical { slot: String, kind: String },
    #[error("replication slot \"{slot}\" is in use ({source}): stop the client using it or choose another slot")]
    SlotInUse {
        slot: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Backup(BackupError),
    #[error("could not create \"{path}\": {source}")]
    CreateWalDir {
        path: PathBuf,
        #[source]
        source: DurableError,
    },
    #[error("could not start streaming WAL: {0}; no data was copied")]
    WalStreamStart(#[source] WalStreamError),
    #[error("WAL streaming failed: {0}; the backup is unusable without that WAL, take it again")]
    WalStreamFailed(#[source] WalStreamError),
    #[error("{0}")]
    WalMissing(#[from] WalRangeError),
    #[error("could not read \"{path}\": {source}")]
    ReadWalDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Standby(#[from] StandbyConfigError),
    #[error("could not make the backup durable: {0}")]
    Sync(#[source] DurableError),
    #[error("could not store backup_manifest: {0}")]
    StoreManifest(#[source] DurableError),
    #[error("bootstrap cancelled")]
    Cancelled,
}

impl From<BackupError> for BootstrapError {
    fn from(e: BackupError) -> Self {
        match e {
            // In a bootstrap only the WAL stream's failure signal aborts the base backup.
            BackupError::Aborted(reason) => BootstrapError::WalStreamFailed(reason),
            other => BootstrapError::Backup(other),
        }
    }
}

impl From<TablespaceError> for BootstrapError {
    fn from(e: TablespaceError) -> Self {
        BootstrapError::Backup(BackupError::Tablespace(e))
    }
}

/// Checked settings that need parsing.
struct Plan<'a> {
    config: &'a BootstrapConfig,
    mapping: TablespaceMapping,
}

fn validate(config: &BootstrapConfig, have_streamer: bool) -> Result<Plan<'_>, BootstrapError> {
    let mut mapping = TablespaceMapping::new();
    for arg in &config.tablespace_mappings {
        mapping.push_arg(arg)?;
    }
    if config.create_slot && config.slot.is_none() {
        return Err(BootstrapError::CreateSlotWithoutName);
    }
    if let Some(slot) = &config.slot {
        command::validate_slot_name(slot).map_err(BootstrapError::InvalidSlotName)?;
    }
    if let Some(kb) = config.max_rate_kb {
        validate_max_rate(kb).map_err(BootstrapError::Backup)?;
    }
    if config.label.contains('\0') {
        return Err(BootstrapError::InvalidLabel);
    }
    if config.wal_method == WalMethod::Stream && !have_streamer {
        return Err(BootstrapError::NoWalStreamer);
    }
    if let Some(w) = &config.wal_dir {
        if !w.is_absolute() {
            return Err(BootstrapError::WalDirNotAbsolute(w.clone()));
        }
        if w.starts_with(&config.target_dir) {
            return Err(BootstrapError::WalDirInsideTarget(w.clone()));
        }
    }
    Ok(Plan { config, mapping })
}

/// How the target directory was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetState {
    Created,
    /// It existed, empty; `original_mode` is set when walrelay tightened its permissions (and
    /// restores them if the bootstrap fails).
    ExistedEmpty {
        original_mode: Option<u32>,
    },
}

/// Permission bits PostgreSQL accepts on a data directory as they are: `u=rwx` (0700) or, for a
/// cluster initialized with group access, `u=rwx,g=rx` (0750). `checkDataDir()` refuses to start
/// on anything group-writable or accessible to others.
const ACCEPTED_DATA_DIR_MODES: [u32; 2] = [0o700, 0o750];

fn prepare_target(dir: &Path, owner: Owner) -> Result<TargetState, BootstrapError> {
    let state = match check_dir_empty_or_absent(dir) {
        Ok(DirState::Absent) => {
            create_dir_all_durable(dir, DATA_DIR_MODE, owner).map_err(|source| {
                BootstrapError::TargetCreate {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
            TargetState::Created
        }
        Ok(DirState::Empty) => TargetState::ExistedEmpty {
            original_mode: None,
        },
        Err(TablespaceError::NotEmpty { dir: p, entry }) => {
            // Say what is in the way when it is recognisably ours or PostgreSQL's.
            return Err(
                // pg_control comes last (the backup's tar ends with it, and the extraction
                // holds it back): without it, the run that wrote backup_label did not finish.
                // (backup_manifest cannot tell: before 13 there is none.)
                if p.join("backup_label").exists() && !p.join("global/pg_control").exists() {
                    BootstrapError::TargetInterrupted(p)
                } else if p.join("PG_VERSION").exists() {
                    BootstrapError::TargetIsDataDirectory(p)
                } else {
                    BootstrapError::TargetNotEmpty { dir: p, entry }
                },
            );
        }
        Err(TablespaceError::NotADirectory(p)) => {
            return Err(BootstrapError::TargetNotADirectory(p))
        }
        Err(TablespaceError::Access { path, source }) => {
            return Err(BootstrapError::TargetAccess { path, source })
        }
        Err(other) => {
            return Err(BootstrapError::TargetAccess {
                path: dir.to_path_buf(),
                source: io::Error::other(other.to_string()),
            })
        }
    };
    if let Err(source) = nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        if state == TargetState::Created {
            let _ = fs::remove_dir(dir);
        }
        return Err(BootstrapError::TargetNotWritable {
            path: dir.to_path_buf(),
            source,
        });
    }
    if state == TargetState::Created {
        return Ok(state);
    }
    // An existing empty directory made with the default umask (0755) would hold a complete
    // backup that PostgreSQL refuses to start on ("data directory has invalid permissions").
    let mode = fs::metadata(dir)
        .map_err(|source| BootstrapError::TargetAccess {
            path: dir.to_path_buf(),
            source,
        })?
        .mode()
        & 0o7777;
    if ACCEPTED_DATA_DIR_MODES.contains(&mode) {
        return Ok(state);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(DATA_DIR_MODE)).map_err(|source| {
        BootstrapError::TargetAccess {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    tracing::info!(
        dir = %dir.display(),
        "data directory had mode {mode:04o}, set it to {DATA_DIR_MODE:04o}: PostgreSQL refuses to start on a data directory that others can access"
    );
    Ok(TargetState::ExistedEmpty {
        original_mode: Some(mode),
    })
}

/// What to undo if the bootstrap fails.
struct Cleanup {
    target: PathBuf,
    target_state: TargetState,
    tablespaces: Vec<PreparedTablespace>,
    /// The `--waldir` directory once prepared, and whether walrelay created it.
    wal_dir: Option<PreparedWalDir>,
    created_slot: Option<String>,
    connect: ConnectParams,
    gate: ExtractionGate,
    clean: bool,
    armed: bool,
}

impl Cleanup {
    /// Stops the extractor, removes files, drops a created slot.
    async fn after_failure(&mut self, error: &BootstrapError) {
        self.armed = false;
        if !self.clean {
            tracing::info!(dir = %self.target.display(), error = %error, "data directory not removed at the user's request");
            if let Some(slot) = &self.created_slot {
                tracing::info!(%slot, "replication slot not dropped at the user's request");
            }
            return;
        }
        self.remove_files();
        if let Some(slot) = self.created_slot.take() {
            drop_slot(&self.connect, &slot).await;
        }
    }

    fn remove_files(&mut self) {
        if !self.gate.abort_and_wait(EXTRACTOR_STOP_TIMEOUT) {
            tracing::warn!("the extraction thread is still running; removing its files anyway");
        }
        match self.target_state {
            TargetState::Created => {
                tracing::info!(dir = %self.target.display(), "removing data directory");
                remove_tree(&self.target);
            }
            TargetState::ExistedEmpty { original_mode } => {
                tracing::info!(dir = %self.target.display(), "removing contents of data directory");
                remove_contents(&self.target);
                if let Some(mode) = original_mode {
                    if let Err(e) =
                        fs::set_permissions(&self.target, fs::Permissions::from_mode(mode))
                    {
                        tracing::warn!(dir = %self.target.display(), error = %e, "could not restore the directory's mode {mode:04o}");
                    }
                }
            }
        }
        match &self.wal_dir {
            Some(w) if w.created => remove_tree(&w.dir),
            Some(w) => {
                remove_contents(&w.dir);
                if let Some(mode) = w.original_mode {
                    if let Err(e) = fs::set_permissions(&w.dir, fs::Permissions::from_mode(mode)) {
                        tracing::warn!(dir = %w.dir.display(), error = %e, "could not restore the directory's mode {mode:04o}");
                    }
                }
            }
            None => {}
        }
        for ts in &self.tablespaces {
            if ts.in_place {
                continue; // inside the data directory
            }
            if ts.created {
                remove_tree(&ts.target);
            } else {
                remove_contents(&ts.target);
            }
        }
    }
}

impl Drop for Cleanup {
    /// The bootstrap future was dropped mid-way (Ctrl-C in a `select!`, a timeout).
    fn drop(&mut self) {
        if !self.armed || !self.clean {
            return;
        }
        self.remove_files();
        if let Some(slot) = self.created_slot.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let connect = self.connect.clone();
                    rt.spawn(async move { drop_slot(&connect, &slot).await });
                }
                Err(_) => {
                    tracing::warn!(%slot, "replication slot created for the bootstrap was not dropped: drop it on the primary")
                }
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    // remove_dir_all removes symbolic links (pg_tblspc/<oid>) without following them.
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::error!(dir = %dir.display(), error = %e, "could not remove directory");
        }
    }
}

fn remove_contents(dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(dir = %dir.display(), error = %e, "could not read directory to clean it");
            }
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, "could not remove");
        }
    }
}

/// How long a failed bootstrap waits for its slot to be released before giving up on dropping it.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

async fn drop_slot(connect: &ConnectParams, slot: &str) {
    let result = async {
        let mut conn = Connection::connect(connect).await?;
        // The WAL stream of this very bootstrap may still hold the slot for a moment: its task is
        // stopped without waiting when the bootstrap is cancelled, and the walsender releases the
        // slot only once it has seen the connection close. Retry while the server says "active"
        // (not `DROP_REPLICATION_SLOT … WAIT`: that would wait forever for a stranger's stream).
        let deadline = Instant::now() + SLOT_RELEASE_TIMEOUT;
        let r = loop {
            match conn.drop_slot(slot, false).await {
                Err(e)
                    if e.condition() == Some(ServerCondition::SlotInUse)
                        && Instant::now() < deadline =>
                {
                    tracing::debug!(%slot, "the replication slot is still active; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r,
            }
        };
        conn.close().await;
        r
    }
    .await;
    match result {
        Ok(()) => tracing::info!(%slot, "dropped the replication slot created for the bootstrap"),
        Err(e) => {
            tracing::warn!(%slot, error = %e, "could not drop the replication slot created for the bootstrap: drop it on the primary")
        }
    }
}

/// Runs the whole bootstrap; see the module documentation. `wal` is needed for
/// [`WalMethod::Stream`]. `progress` is updated as the job goes. When `cancel` resolves (Ctrl-C),
/// the job stops, cleans up and returns [`BootstrapError::Cancelled`]; pass
/// `std::future::pending()` for none.
pub async fn bootstrap<C>(
    config: BootstrapConfig,
    wal: Option<&dyn WalStreamer>,
    progress: &BackupProgress,
    cancel: C,
) -> Result<BootstrapSummary, BootstrapError>
where
    C: Future<Output = ()>,
{
    let started = Instant::now();
    progress.set_phase(BackupPhase::Connecting);
    let mut config = config;
    // Absolute, so that the owner rule and the messages see the real location.
    config.target_dir =
        std::path::absolute(&config.target_dir).map_err(|source| BootstrapError::TargetAccess {
            path: config.target_dir.clone(),
            source,
        })?;
    let plan = validate(&config, wal.is_some())?;
    // Decided before the target exists: for a new directory, its nearest existing ancestor.
    let owner = config
        .owner
        .unwrap_or_else(|| Owner::of_dir_if_root(&config.target_dir));
    if let Some(w) = &config.wal_dir {
        check_wal_dir(w)?;
    }
    let target_state = prepare_target(&config.target_dir, owner)?;
    let mut cleanup = Cleanup {
        target: config.target_dir.clone(),
        target_state,
        tablespaces: Vec::new(),
        wal_dir: None,
        created_slot: None,
        connect: config.connect.clone(),
        gate: ExtractionGate::new(),
        clean: config.clean_on_failure,
        armed: true,
    };
    let outcome = {
        let job = run(&plan, wal, progress, owner, &mut cleanup, started);
        tokio::pin!(cancel);
        tokio::select! {
            r = job => r,
            () = &mut cancel => Err(BootstrapError::Cancelled),
        }
    };
    match outcome {
        Ok(summary) => {
            cleanup.armed = false;
            progress.set_phase(BackupPhase::Done);
            Ok(summary)
        }
        Err(e) => {
            tracing::debug!(error = %e, "bootstrap failed, cleaning up");
            cleanup.after_failure(&e).await;
            Err(e)
        }
    }
}

fn connect_error(e: ClientError) -> BootstrapError {
    if matches!(
        e.condition(),
        Some(ServerCondition::WalSendersExhausted | ServerCondition::ReplicationDisabled)
    ) {
        BootstrapError::ReplicationRefused(e)
    } else {
        BootstrapError::Connect(e)
    }
}

fn command_error(what: &'static str) -> impl FnOnce(ClientError) -> BootstrapError {
    move |source| BootstrapError::Command { what, source }
}

async fn run(
    plan: &Plan<'_>,
    wal: Option<&dyn WalStreamer>,
    progress: &BackupProgress,
    owner: Owner,
    cleanup: &mut Cleanup,
    started: Instant,
) -> Result<BootstrapSummary, BootstrapError> {
    let config = plan.config;
    let target = &config.target_dir;

    let mut conn = Connection::connect(&config.connect)
        .await
        .map_err(connect_error)?;
    if let Some(version) = conn.unsupported_server_version() {
        conn.close().await;
        return Err(BootstrapError::UnsupportedVersion { version });
    }
    let version = conn.server_version();
    let ident = conn
        .identify_system()
        .await
        .map_err(command_error("IDENTIFY_SYSTEM"))?;
    let seg_size = conn
        .wal_segment_size()
        .await
        .map_err(command_error("SHOW wal_segment_size"))?;
    let modes = create_modes(&mut conn).await;
    tracing::info!(
        server_version = version.0,
        system_identifier = ident.system_identifier,
        timeline = %ident.timeline,
        group_access = modes.has_group_access(),
        "connected to the primary"
    );
    follow_server_mode(target, cleanup.target_state, modes)?;
    precheck_tablespaces(config, &plan.mapping).await?;
    if let Some(w) = &config.wal_dir {
        cleanup.wal_dir = Some(link_wal_dir(target, w, modes, owner)?);
    }

    let mut slot_created = false;
    if let Some(slot) = &config.slot {
        if config.create_slot {
            match conn.create_physical_slot(slot, false, true).await {
                Ok(_) => {
                    cleanup.created_slot = Some(slot.clone());
                    slot_created = true;
                    tracing::info!(%slot, "created replication slot");
                }
                Err(e) if e.condition() == Some(ServerCondition::DuplicateObject) => {
                    return Err(BootstrapError::SlotExists(slot.clone()))
                }
                Err(e) => return Err(command_error("CREATE_REPLICATION_SLOT")(e)),
            }
        } else {
            check_slot(&mut conn, slot, &ident, seg_size).await?;
        }
    }

    let opts = BaseBackupOptions {
        label: config.label.clone(),
        progress: true,
        checkpoint: config.checkpoint,
        include_wal: config.wal_method == WalMethod::Fetch,
        wait_for_archive: config.wal_method == WalMethod::None,
        max_rate_kb: config.max_rate_kb,
        tablespace_map: false,
        verify_checksums: config.verify_checksums,
        manifest: config.manifest_checksums.map(|a| a.to_string()),
    };
    let stream = BaseBackupStream::begin(&mut conn, &opts, progress).await?;
    let start = stream.start();
    let tablespaces = stream.prepare_tablespaces(target, &plan.mapping, owner, modes.dir)?;
    cleanup.tablespaces = tablespaces.clone();

    let mut handle: Option<Box<dyn WalStreamHandle>> = None;
    if config.wal_method == WalMethod::Stream {
        let streamer = wal.ok_or(BootstrapError::NoWalStreamer)?;
        let pg_wal = target.join("pg_wal");
        // The stream may write before the archive's own pg_wal entry arrives.
        let status = pg_wal.join("archive_status");
        create_dir_all_durable(&status, modes.dir, owner).map_err(|source| {
            BootstrapError::CreateWalDir {
                path: status.clone(),
                source,
            }
        })?;
        let params = StartWal {
            connect: config.connect.clone(),
            server_version: version,
            system_identifier: ident.system_identifier,
            timeline: start.timeline,
            start_lsn: start.lsn.segment_start(seg_size.bytes()),
            wal_segment_size: seg_size,
            slot: config.slot.clone(),
            create_temporary_slot: config.slot.is_none() && config.temporary_slot,
            pg_wal_dir: pg_wal,
            owner,
        };
        tracing::info!(start_lsn = %params.start_lsn, timeline = %params.timeline, "starting WAL stream");
        handle = Some(
            streamer
                .start(params)
                .await
                .map_err(BootstrapError::WalStreamStart)?,
        );
    }

    let receive_target = ReceiveTarget {
        data_dir: target.clone(),
        tablespaces,
        owner,
        verify_manifest: config.verify,
        gate: cleanup.gate.clone(),
        wal_dir: config.wal_dir.clone(),
    };
    let received = match handle.as_mut() {
        Some(h) => stream.receive(receive_target, h.failed()).await,
        None => stream.receive(receive_target, std::future::pending()).await,
    };
    let result = match received {
        Ok(r) => r,
        Err(e) => {
            if let Some(h) = handle.take() {
                h.abort().await;
            }
            return Err(e.into());
        }
    };
    conn.close().await;
    progress.set_phase(BackupPhase::Finishing);

    let wal_summary = match handle.take() {
        Some(h) => {
            tracing::info!(end_lsn = %result.end.lsn, "waiting for the WAL stream to reach the end position");
            Some(
                h.finish(result.end.lsn)
                    .await
                    .map_err(BootstrapError::WalStreamFailed)?,
            )
        }
        None => None,
    };

    let pg_wal = target.join("pg_wal");
    let present = if config.wal_method == WalMethod::None {
        Vec::new()
    } else {
        complete_segments(&pg_wal, seg_size)?
    };
    if config.verify && config.wal_method != WalMethod::None {
        let ranges: Vec<WalRange> = match result.manifest.as_ref().and_then(|m| m.parsed.as_ref()) {
            Some(m) => m.wal_ranges.clone(),
            // No manifest (before 13, or none requested): the range BASE_BACKUP reported, when it
            // stayed on one timeline (a switch needs the manifest's list of ranges).
            None if result.start.timeline == result.end.timeline => vec![WalRange {
                timeline: result.start.timeline,
                start_lsn: result.start.lsn,
                end_lsn: result.end.lsn,
            }],
            None => Vec::new(),
        };
        verify_wal_ranges(&ranges, &present, seg_size)?;
    }

    let mut standby_files = Vec::new();
    let include_password = password_given_in_conninfo(&config.connection);
    if config.standby == StandbySetup::Streaming
        && config.connection.password().is_some()
        && !include_password
    {
        tracing::warn!(
            "primary_conninfo is written without the password used for this run (it did not come from the connection string): give the standby's OS user a ~/.pgpass entry, or put password= in -d to have it written"
        );
    }
    let standby_mode = match &config.standby {
        StandbySetup::None => None,
        StandbySetup::Streaming => Some(StandbyMode::Streaming {
            primary_conninfo: config.connection.primary_conninfo(PrimaryConninfoOptions {
                include_dbname: version.major() >= 17,
                include_password,
            }),
            slot_name: config.slot.clone(),
        }),
        StandbySetup::Sidecar {
            wal_retrieve_retry_interval,
        } => Some(StandbyMode::Sidecar {
            wal_retrieve_retry_interval: *wal_retrieve_retry_interval,
        }),
    };
    if let Some(mode) = standby_mode {
        let standby = StandbyConfig::new(version.major(), mode)?;
        standby_files = write_standby_config(target, &standby, owner, modes.file)?;
    }
    // Only now pg_control: killed before this, the directory cannot start (as a primary, which
    // it would without standby.signal) and a re-run sees an unfinished backup.
    crate::extract::release_control_file(target).map_err(BootstrapError::Sync)?;

    let synced = if config.sync {
        progress.set_phase(BackupPhase::Syncing);
        let mut written = result.written.clone();
        if config.wal_method == WalMethod::Stream {
            // Written by the stream, not the extractor (which recorded fetched WAL itself).
            add_wal_files(&mut written, &pg_wal)?;
        }
        let threads = config.sync_threads.max(1);
        let summary = tokio::task::spawn_blocking(move || written.sync_all(threads))
            .await
            .map_err(|e| {
                BootstrapError::Sync(DurableError::new(
                    "fsync",
                    target.clone(),
                    io::Error::other(e.to_string()),
                ))
            })?
            .map_err(BootstrapError::Sync)?;
        Some(summary)
    } else {
        None
    };

    let mut manifest_stored = false;
    let mut verified = None;
    if let Some(m) = &result.manifest {
        store_manifest(target, &m.text, modes.file, owner)
            .map_err(BootstrapError::StoreManifest)?;
        manifest_stored = true;
        verified = m.verified;
    }

    let duration = started.elapsed();
    tracing::info!(
        bytes = result.bytes_received,
        seconds = %format_args!("{:.2}", duration.as_secs_f64()),
        end_lsn = %result.end.lsn,
        timeline = %result.end.timeline,
        "bootstrap complete"
    );
    Ok(BootstrapSummary {
        data_dir: target.clone(),
        server_version: version,
        system_identifier: ident.system_identifier,
        wal_segment_size: seg_size,
        start: result.start,
        end: result.end,
        tablespaces: result.tablespaces,
        slot: config.slot.clone(),
        slot_created,
        wal_method: config.wal_method,
        wal: wal_summary,
        wal_segments: present.len(),
        bytes_received: result.bytes_received,
        duration,
        manifest_stored,
        verified,
        standby_files,
        synced,
        warnings: result.warnings,
    })
}

/// Checks that `slot` exists and is physical before the backup starts; see the module docs for
/// the probe used before PostgreSQL 15.
async fn check_slot(
    conn: &mut Connection,
    slot: &str,
    ident: &IdentifySystem,
    seg_size: WalSegmentSize,
) -> Result<(), BootstrapError> {
    if conn.server_version().major() >= 15 {
        return match conn.read_replication_slot(slot).await {
            Ok(None) => Err(BootstrapError::SlotNotFound(slot.to_string())),
            Ok(Some(info)) if info.slot_type != "physical" => {
                Err(BootstrapError::SlotNotPhysical {
                    slot: slot.to_string(),
                    kind: info.slot_type,
                })
            }
            Ok(Some(_)) => Ok(()),
            Err(e) if names_logical_slot(&e) => Err(BootstrapError::SlotNotPhysical {
                slot: slot.to_string(),
                kind: "logical".into(),
            }),
            Err(e) => Err(command_error("READ_REPLICATION_SLOT")(e)),
        };
    }
    let start = ident.xlogpos.segment_start(seg_size.bytes());
    match conn
        .start_replication(Some(slot), start, ident.timeline)
        .await
    {
        // A start at the very end of a historic timeline answers without COPY: the slot exists.
        Ok(StartedReplication::TimelineEnded(_)) => Ok(()),
        Ok(StartedReplication::Streaming) => {
            conn.queue_copy_done();
            conn.flush()
                .await
                .map_err(command_error("START_REPLICATION (slot check)"))?;
            conn.finish_replication()
                .await
                .map_err(command_error("START_REPLICATION (slot check)"))?;
            Ok(())
        }
        Err(e) => match e.condition() {
            Some(ServerCondition::SlotMissing) => {
                Err(BootstrapError::SlotNotFound(slot.to_string()))
            }
            Some(ServerCondition::SlotInUse) => Err(BootstrapError::SlotInUse {
                slot: slot.to_string(),
                source: e,
            }),
            _ if names_logical_slot(&e) => Err(BootstrapError::SlotNotPhysical {
                slot: slot.to_string(),
                kind: "logical".into(),
            }),
            _ => Err(command_error("START_REPLICATION (slot check)")(e)),
        },
    }
}

/// The server's refusal of a logical slot for physical use ([`walrelay_client::refuses_logical_slot`]).
fn names_logical_slot(e: &walrelay_client::ClientError) -> bool {
    e.server_error()
        .is_some_and(walrelay_client::refuses_logical_slot)
}

/// Segments in `pg_wal` under their final names with their full size (anything else — `.partial`,
/// short files, other names — does not count).
pub fn complete_segments(
    pg_wal: &Path,
    seg_size: WalSegmentSize,
) -> Result<Vec<SegmentId>, BootstrapError> {
    let read_err = |source| BootstrapError::ReadWalDir {
        path: pg_wal.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(pg_wal) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(
            parsed @ WalFileName::Segment {
                compression: None,
                partial: false,
                ..
            },
        ) = WalFileName::parse(&name)
        else {
            continue;
        };
        let Some(id) = parsed.segment_id(seg_size) else {
            continue;
        };
        let meta = entry.metadata().map_err(read_err)?;
        if meta.is_file() && meta.len() == seg_size.as_u64() {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

/// Adds the files the WAL stream (or the fetch) wrote in `pg_wal` to the fsync list.
fn add_wal_files(written: &mut WrittenPaths, pg_wal: &Path) -> Result<(), BootstrapError> {
    for dir in [pg_wal.to_path_buf(), pg_wal.join("archive_status")] {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(BootstrapError::ReadWalDir { path: dir, source }),
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                written.add_file(entry.path());
            }
        }
        written.add_dir(dir);
    }
    Ok(())
}

/// Whether `primary_conninfo` may carry the password: only when the user wrote it into the
/// connection string (`-d "… password=…"` or a URI with `user:password@`). A password from
/// `PGPASSWORD`, a service file or a password file was found in the environment of *this* run; it
/// is not copied into a file of the new data directory, where it would outlive the shell that set
/// it. The standby then finds its password as any libpq client does (its own `~/.pgpass`).
fn password_given_in_conninfo(connection: &ConnectionConfig) -> bool {
    connection
        .password()
        .is_some_and(|p| *p.source() == PasswordSource::ConnectionString)
}

/// The modes of everything the bootstrap creates: the primary's `data_directory_mode` decides
/// (PostgreSQL 11+; before 11 there is no group access), as pg_basebackup's
/// `RetrieveDataDirCreatePerm` does — 0750/0640 for a cluster with group access, else 0700/0600.
async fn create_modes(conn: &mut Connection) -> CreateModes {
    if conn.server_version().major() < 11 {
        return CreateModes::OWNER_ONLY;
    }
    match conn.show("data_directory_mode").await {
        Ok(v) => CreateModes::from_show(&v),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the primary's data_directory_mode; the copy gets owner-only modes");
            CreateModes::OWNER_ONLY
        }
    }
}

/// Gives the target the primary's directory mode when walrelay made it or chose its mode (a new
/// directory, or an empty one whose mode PostgreSQL would refuse); a mode the user set stays.
fn follow_server_mode(
    target: &Path,
    state: TargetState,
    modes: CreateModes,
) -> Result<(), BootstrapError> {
    let ours = matches!(
        state,
        TargetState::Created
            | TargetState::ExistedEmpty {
                original_mode: Some(_)
            }
    );
    if ours && modes.dir != DATA_DIR_MODE {
        fs::set_permissions(target, fs::Permissions::from_mode(modes.dir)).map_err(|source| {
            BootstrapError::TargetAccess {
                path: target.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// `--waldir` must be absent or empty, like the target; checked before anything is created.
fn check_wal_dir(dir: &Path) -> Result<(), BootstrapError> {
    match check_dir_empty_or_absent(dir) {
        Ok(_) => Ok(()),
        Err(TablespaceError::NotEmpty { dir, entry }) => {
            Err(BootstrapError::TargetNotEmpty { dir, entry })
        }
        Err(TablespaceError::NotADirectory(p)) => Err(BootstrapError::TargetNotADirectory(p)),
        Err(TablespaceError::Access { path, source }) => {
            Err(BootstrapError::TargetAccess { path, source })
        }
        Err(other) => Err(BootstrapError::TargetAccess {
            path: dir.to_path_buf(),
            source: io::Error::other(other.to_string()),
        }),
    }
}

/// The `--waldir` directory as the bootstrap prepared it, for the cleanup.
struct PreparedWalDir {
    dir: PathBuf,
    /// walrelay created it (removed whole on failure).
    created: bool,
    /// It existed with another mode, changed to the data directory's (restored on failure).
    original_mode: Option<u32>,
}

/// Creates the `--waldir` directory (with the data directory's modes and owner) if it is absent
/// — or, existing and empty, gives it those modes and owner, as initdb does ("fixing permissions
/// on existing directory"): the WAL files take their mode from it, and a 0755 directory would
/// have made them readable by the group of a cluster that grants none — and `target/pg_wal` as a
/// symbolic link to it, durably.
fn link_wal_dir(
    target: &Path,
    wal_dir: &Path,
    modes: CreateModes,
    owner: Owner,
) -> Result<PreparedWalDir, BootstrapError> {
    let create_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootstrapError::CreateWalDir { path, source }
    };
    let created = !wal_dir.exists();
    let mut original_mode = None;
    if created {
        create_dir_all_durable(wal_dir, modes.dir, owner).map_err(create_err(wal_dir))?;
    } else {
        owner.apply(wal_dir).map_err(create_err(wal_dir))?;
        let mode = fs::metadata(wal_dir)
            .map_err(|e| DurableError::new("stat", wal_dir, e))
            .map_err(create_err(wal_dir))?
            .permissions()
            .mode()
            & 0o7777;
        if mode != modes.dir {
            fs::set_permissions(wal_dir, fs::Permissions::from_mode(modes.dir))
                .map_err(|e| DurableError::new("set the mode of", wal_dir, e))
                .map_err(create_err(wal_dir))?;
            original_mode = Some(mode);
        }
    }
    let link = target.join("pg_wal");
    std::os::unix::fs::symlink(wal_dir, &link).map_err(|e| BootstrapError::CreateWalDir {
        path: link.clone(),
        source: DurableError::new("create symbolic link", &link, e),
    })?;
    owner.apply(&link).map_err(create_err(&link))?;
    walrelay_durable::fsync_dir(target).map_err(create_err(target))?;
    Ok(PreparedWalDir {
        dir: wal_dir.to_path_buf(),
        created,
        original_mode,
    })
}

/// How long the tablespace pre-check may take (one SQL connection to the primary).
const TABLESPACE_PRECHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the tablespace targets before `BASE_BACKUP`, so that a clash (a tablespace whose
/// directory exists and is not empty, on a machine that has the primary's paths) is reported before
/// the checkpoint wait, not after it. The list comes from `pg_tablespace` over an SQL session;
/// when the role cannot open one (pg_hba.conf may allow replication only), the same check runs as
/// soon as `BASE_BACKUP` names the tablespaces.
async fn precheck_tablespaces(
    config: &BootstrapConfig,
    mapping: &TablespaceMapping,
) -> Result<(), BootstrapError> {
    let list = tokio::time::timeout(
        TABLESPACE_PRECHECK_TIMEOUT,
        list_tablespaces(&config.connect),
    )
    .await
    .ok()
    .flatten();
    let Some(locations) = list else {
        tracing::debug!("no SQL session to list the tablespaces before the backup; they are checked when it starts");
        return Ok(());
    };
    plan_tablespace_dirs(&config.target_dir, &locations, mapping)
        .map(|_| ())
        .map_err(BootstrapError::from)
}

/// The primary's tablespaces (`oid`, location) over an SQL session; `None` when none can be opened.
async fn list_tablespaces(connect: &ConnectParams) -> Option<Vec<TablespaceLocation>> {
    let mut params = connect.clone();
    params.replication = walrelay_client::ReplicationMode::Off;
    let mut conn = match Connection::connect(&params).await {
        Ok(c) => c,
        Err(e) if e.condition() == Some(ServerCondition::UnknownDatabase) => {
            // The default database (named after the user) does not exist; `postgres` usually does.
            params.dbname = Some("postgres".into());
            Connection::connect(&params).await.ok()?
        }
        Err(_) => return None,
    };
    let rows = conn
        .simple_query(
            "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
        )
        .await
        .ok();
    conn.close().await;
    let rows = rows?;
    let result = rows.first()?;
    let mut out = Vec::new();
    for i in 0..result.rows.len() {
        let oid = result.get_idx(i, 0)?.parse().ok()?;
        let location = result.get_idx(i, 1)?.to_string();
        out.push(TablespaceLocation { oid, location });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use walrelay_client::Endpoint;
    use walrelay_conninfo::MapEnv;

    fn config(target: &Path) -> BootstrapConfig {
        let env = MapEnv::new().with_user("postgres");
        let connection =
            ConnectionConfig::from_conninfo("host=127.0.0.1 port=1 user=postgres", &env).unwrap();
        let connect = ConnectParams::new(
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                addr: None,
                port: 1,
            },
            "postgres",
        );
        BootstrapConfig::new(connection, connect, target)
    }

    #[test]
    fn wal_methods() {
        assert_eq!("s".parse::<WalMethod>().unwrap(), WalMethod::Stream);
        assert_eq!("fetch".parse::<WalMethod>().unwrap(), WalMethod::Fetch);
        assert_eq!("none".parse::<WalMethod>().unwrap(), WalMethod::None);
        assert!("tar".parse::<WalMethod>().is_err());
        assert_eq!(WalMethod::Fetch.to_string(), "fetch");
    }

    #[test]
    fn validation_before_anything() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(&d.path().join("new"));
        c.create_slot = true;
        assert!(matches!(
            validate(&c, true),
            Err(BootstrapError::CreateSlotWithoutName)
        ));
        c.slot = Some("Bad-Name".into());
        assert!(matches!(
            validate(&c, true),
            Err(BootstrapError::InvalidSlotName(_))
        ));
        c.slot = Some("good".into());
        assert!(validate(&c, true).is_ok());
        c.tablespace_mappings = vec!["/a=/b".into(), "nonsense".into()];
        let e = validate(&c, true).err().unwrap();
        assert!(e.to_string().contains("OLDDIR=NEWDIR"), "{e}");
        c.tablespace_mappings.clear();
        c.max_rate_kb = Some(1);
        assert!(validate(&c, true)
            .err()
            .unwrap()
            .to_string()
            .contains("out of range"));
        c.max_rate_kb = None;
        assert!(matches!(
            validate(&c, false),
            Err(BootstrapError::NoWalStreamer)
        ));
        c.wal_method = WalMethod::Fetch;
        assert!(validate(&c, false).is_ok());
        c.label = "a\0b".into();
        assert!(matches!(
            validate(&c, false),
            Err(BootstrapError::InvalidLabel)
        ));
    }

    #[test]
    fn target_states() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("a/b");
        assert_eq!(
            prepare_target(&new, Owner::current()).unwrap(),
            TargetState::Created
        );
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            prepare_target(&new, Owner::current()).unwrap(),
            TargetState::ExistedEmpty {
                original_mode: None
            }
        );
        fs::write(new.join("x"), b"").unwrap();
        let e = prepare_target(&new, Owner::current()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "directory \"{}\" exists but is not empty (it holds \"x\"); choose an empty or new directory",
                new.display()
            )
        );
        assert!(matches!(
            prepare_target(&new.join("x"), Owner::current()),
            Err(BootstrapError::TargetNotADirectory(_))
        ));
    }

    #[test]
    fn empty_target_gets_a_mode_postgres_accepts_and_it_is_restored_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for (given, expected, changed) in [
            (0o755, 0o700, true),
            (0o777, 0o700, true),
            (0o711, 0o700, true),
            (0o700, 0o700, false),
            (0o750, 0o750, false),
        ] {
            let dir = d.path().join(format!("m{given:o}"));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(given)).unwrap();
            let state = prepare_target(&dir, Owner::current()).unwrap();
            assert_eq!(
                state,
                TargetState::ExistedEmpty {
                    original_mode: changed.then_some(given)
                },
                "{given:o}"
            );
            assert_eq!(mode(&dir), expected, "{given:o}");

            // A failed bootstrap leaves the directory as it found it: empty, with its own mode.
            fs::write(dir.join("PG_VERSION"), b"15\n").unwrap();
            let mut cl = Cleanup {
                target: dir.clone(),
                target_state: state,
                tablespaces: Vec::new(),
                wal_dir: None,
                created_slot: None,
                connect: config(&dir).connect,
                gate: ExtractionGate::new(),
                clean: true,
                armed: false,
            };
            cl.remove_files();
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
            assert_eq!(mode(&dir), given, "{given:o} restored");
        }
    }

    #[test]
    fn password_reaches_primary_conninfo_only_from_the_connection_string() {
        let env = MapEnv::new()
            .with_user("postgres")
            .with_var("PGPASSWORD", "fromenv");
        let from_env = ConnectionConfig::from_conninfo("host=h user=u", &env).unwrap();
        assert!(from_env.password().is_some());
        assert!(!password_given_in_conninfo(&from_env));
        let given = ConnectionConfig::from_conninfo("host=h user=u password=typed", &env).unwrap();
        assert!(password_given_in_conninfo(&given));
        let uri = ConnectionConfig::from_conninfo("postgresql://u:typed@h/db", &env).unwrap();
        assert!(password_given_in_conninfo(&uri));
        let none = ConnectionConfig::from_conninfo("host=h user=u", &MapEnv::new().with_user("u"))
            .unwrap();
        assert!(!password_given_in_conninfo(&none));
    }

    #[test]
    fn unwritable_target_is_refused() {
        if nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: root may write anywhere");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let ro = d.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let e = prepare_target(&ro, Owner::current()).unwrap_err();
        assert!(matches!(e, BootstrapError::TargetNotWritable { .. }), "{e}");
        let e = prepare_target(&ro.join("sub"), Owner::current()).unwrap_err();
        assert!(matches!(e, BootstrapError::TargetCreate { .. }), "{e}");
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn cleanup_removes_only_what_was_added() {
        let d = tempfile::tempdir().unwrap();
        let created = d.path().join("created");
        let existing = d.path().join("existing");
        let ts_created = d.path().join("ts1");
        let ts_existing = d.path().join("ts2");
        for p in [&created, &existing, &ts_created, &ts_existing] {
            fs::create_dir(p).unwrap();
            fs::create_dir(p.join("sub")).unwrap();
            fs::write(p.join("sub/f"), b"x").unwrap();
        }
        // a link inside must be removed, not followed
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, existing.join("link")).unwrap();
        let ts = |oid, target: &PathBuf, created| PreparedTablespace {
            oid,
            server_location: "/srv".into(),
            target: target.clone(),
            in_place: false,
            created,
        };
        let c = config(&created);
        for (dir, state) in [
            (&created, TargetState::Created),
            (
                &existing,
                TargetState::ExistedEmpty {
                    original_mode: None,
                },
            ),
        ] {
            let mut cl = Cleanup {
                target: dir.clone(),
                target_state: state,
                tablespaces: vec![ts(1, &ts_created, true), ts(2, &ts_existing, false)],
                wal_dir: None,
                created_slot: None,
                connect: c.connect.clone(),
                gate: ExtractionGate::new(),
                clean: true,
                armed: true,
            };
            cl.remove_files();
            cl.armed = false;
        }
        assert!(!created.exists());
        assert!(existing.is_dir());
        assert_eq!(fs::read_dir(&existing).unwrap().count(), 0);
        assert!(!ts_created.exists());
        assert_eq!(fs::read_dir(&ts_existing).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn segments_must_be_complete() {
        let d = tempfile::tempdir().unwrap();
        let seg = WalSegmentSize::new(1024 * 1024).unwrap();
        let full = vec![0u8; 1024 * 1024];
        fs::write(d.path().join("000000010000000000000002"), &full).unwrap();
        fs::write(d.path().join("000000010000000000000003"), &full[..100]).unwrap();
        fs::write(d.path().join("000000010000000000000004.partial"), &full).unwrap();
        fs::write(d.path().join("00000002.history"), b"").unwrap();
        fs::create_dir(d.path().join("archive_status")).unwrap();
        let got = complete_segments(d.path(), seg).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].file_name(seg), "000000010000000000000002");
        assert!(complete_segments(&d.path().join("none"), seg)
            .unwrap()
            .is_empty());
        let mut w = WrittenPaths::new();
        add_wal_files(&mut w, d.path()).unwrap();
        assert_eq!(w.files().len(), 4);
    }

    #[test]
    fn messages_name_cause_and_fix() {
        let e = BootstrapError::SlotNotFound("s1".into());
        assert!(e.to_string().contains("--create-slot"));
        let e = BootstrapError::UnsupportedVersion {
            version: "9.6.24".into(),
        };
        assert_eq!(
            e.to_string(),
            "the server runs PostgreSQL 9.6.24, which walrelay does not support: use a primary running PostgreSQL 10 to 18"
        );
        let e: BootstrapError = BackupError::Aborted("connection lost".into()).into();
        assert!(matches!(e, BootstrapError::WalStreamFailed(_)));
    }
}
