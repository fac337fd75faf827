//! Base backups: the `BASE_BACKUP` network driver, the whole `walrelay bootstrap` job, and what
//! happens to the bytes once they are off the network.
//!
//! The modules are private; this page lists what other crates use. By module:
//!
//! * `bootstrap` — [`bootstrap()`] takes a standby data directory from a running primary, like
//!   `pg_basebackup -R -X stream|fetch`: input checks, connection, slot, `BASE_BACKUP`, WAL
//!   through a [`WalStreamer`] (or fetched), verification, standby configuration, fsync,
//!   `backup_manifest` last — and cleanup of everything it added on failure;
//! * `stream` — `BaseBackupStream` runs one `BASE_BACKUP` on a `walrelay_client::Connection`:
//!   both message flows (PostgreSQL 15+'s single COPY with `'n'`/`'d'`/`'p'`/`'m'` messages, and
//!   one COPY per tablespace plus one for the manifest before 15, in `session`), the result sets
//!   read in `result_set` and parsed by `walrelay_protocol::base_backup`; extraction on a blocking
//!   thread behind a bounded channel (`feed`), progress counters ([`BackupProgress`], `progress`),
//!   typed server errors ([`BackupError`], `error`: checksum failures with the damaged files
//!   named), `--max-rate` ([`parse_max_rate`], `max_rate`);
//! * `extract` — [`ArchiveExtractor`] unpacks `base.tar` and each `<oid>.tar` into the data
//!   directory and the tablespace directories *while they arrive*, refusing anything that would
//!   write outside them (absolute paths, `..`, symbolic links on the way, hard links, devices), and
//!   records what it wrote so that [`WrittenPaths::sync_all`] can make it durable in one parallel
//!   pass at the end;
//! * `tar_stream` — the streaming tar reader it uses (bounded memory, PostgreSQL's end-of-archive
//!   rules for servers before and after 15);
//! * `tablespace` — `-T OLDDIR=NEWDIR` parsing exactly as pg_basebackup ([`TablespaceMapping`]),
//!   and up-front checks that every tablespace target is absent or empty;
//! * `manifest` — backup manifest parsing and verification against checksums computed during
//!   extraction ([`ChecksumCollector`]), so the backup is verified without reading it back;
//! * `standby` — `standby.signal`/`postgresql.auto.conf` (PostgreSQL 12+) or `recovery.conf`
//!   (10, 11) for a streaming standby or one fed by walrelay as a sidecar ([`StandbyConfig`]).
//!
//! References: `src/bin/pg_basebackup/pg_basebackup.c`, `src/fe_utils/astreamer_*.c`,
//! `src/fe_utils/recovery_gen.c`, `src/bin/pg_verifybackup/pg_verifybackup.c`,
//! `src/common/parse_manifest.c`, `src/backend/backup/basebackup.c` and `basebackup_copy.c` in
//! PostgreSQL, <https://www.postgresql.org/docs/current/protocol-replication.html> and
//! <https://www.postgresql.org/docs/current/backup-manifest-format.html>.

mod bootstrap;
mod classify;
mod error;
mod extract;
mod feed;
mod manifest;
mod max_rate;
mod member_path;
mod progress;
mod result_set;
mod session;
mod standby;
mod stream;
mod sync;
mod tablespace;
mod tar_stream;

pub use bootstrap::{
    bootstrap, complete_segments, BootstrapConfig, BootstrapError, BootstrapSummary, BoxFuture,
    StandbySetup, StartWal, WalMethod, WalStreamError, WalStreamHandle, WalStreamer, WalSummary,
    DEFAULT_LABEL,
};
pub use error::{AbortReason, BackupError, BackupStage, ChecksumFailures};
pub use extract::{
    release_control_file, ArchiveExtractor, ArchiveKind, ArchiveSummary, ExtractError,
    ExtractObserver, ExtractProgress, HELD_CONTROL_FILE,
};
pub use feed::{ArchiveSink, ExtractionGate};
pub use manifest::{
    store_manifest, verify_wal_ranges, BackupManifest, ChecksumAlgorithm, ChecksumCollector,
    FileChecksum, FileHasher, ManifestError, ManifestFile, ObservedFile, Problem, UnknownAlgorithm,
    VerifyError, VerifySummary, WalRange, WalRangeError,
};
pub use max_rate::parse_max_rate;
pub use member_path::{sanitize_member_path, UnsafePath};
pub use progress::{BackupPhase, BackupProgress};
pub use standby::{
    conninfo_for_libpq, disable_inherited_recovery_settings, escape_quotes, write_standby_config,
    StandbyConfig, StandbyConfigError, StandbyMode, DEFAULT_SIDECAR_RETRY_INTERVAL,
    INHERITED_RECOVERY_SETTINGS,
};
pub use stream::{BaseBackupResult, BaseBackupStream, ReceivedManifest};
pub use sync::{SyncSummary, WrittenPaths};
pub use tablespace::{
    check_dir_empty_or_absent, prepare_tablespace_dirs, DirState, MappingError, PreparedTablespace,
    TablespaceError, TablespaceLocation, TablespaceMapping,
};
pub use tar_stream::{ChunkRead, CopyChunks, MemberKind, TarError, TarReader};
pub use walrelay_protocol::base_backup::BackupPosition;
