//! The disk side of a base backup: what happens to the bytes of a `BASE_BACKUP` stream once they are
//! off the network.
//!
//! * [`extract`] — [`ArchiveExtractor`] unpacks `base.tar` and each `<oid>.tar` into the data directory
//!   and the tablespace directories *while they arrive*, refusing anything that would write outside
//!   them (absolute paths, `..`, symbolic links on the way, hard links, devices), and records what it
//!   wrote so that [`WrittenPaths::sync_all`] can make it durable in one parallel pass at the end;
//! * [`tar_stream`] — the streaming tar reader it uses (bounded memory, PostgreSQL's end-of-archive
//!   rules for servers before and after 15);
//! * [`tablespace`] — `-T OLDDIR=NEWDIR` parsing exactly as pg_basebackup, and up-front checks that
//!   every tablespace target is absent or empty;
//! * [`manifest`] — backup manifest parsing and verification against checksums computed during
//!   extraction ([`ChecksumCollector`]), so the backup is verified without reading it back;
//! * [`standby`] — `standby.signal`/`postgresql.auto.conf` (PostgreSQL 12+) or `recovery.conf`
//!   (10, 11) for a streaming standby or one fed by walrelay as a sidecar.
//!
//! The network side (the `BASE_BACKUP` command, demultiplexing the CopyData stream into archives and
//! the manifest) lives elsewhere and hands this crate a blocking [`std::io::Read`] per archive.
//!
//! References: `src/bin/pg_basebackup/pg_basebackup.c`, `src/fe_utils/astreamer_*.c`,
//! `src/fe_utils/recovery_gen.c`, `src/bin/pg_verifybackup/pg_verifybackup.c`,
//! `src/common/parse_manifest.c`, `src/backend/backup/basebackup.c` in PostgreSQL, and
//! <https://www.postgresql.org/docs/current/backup-manifest-format.html>.

pub mod extract;
pub mod manifest;
pub mod member_path;
pub mod standby;
pub mod sync;
pub mod tablespace;
pub mod tar_stream;

pub use extract::{
    ArchiveExtractor, ArchiveKind, ArchiveSummary, ExtractError, ExtractObserver, ExtractProgress,
    DEFAULT_WRITE_BUFFER,
};
pub use manifest::{
    store_manifest, verify_wal_ranges, BackupManifest, ChecksumAlgorithm, ChecksumCollector,
    ManifestError, ManifestFile, Problem, VerifyError, VerifySummary, WalRange, WalRangeError,
};
pub use standby::{
    write_standby_config, StandbyConfig, StandbyConfigError, StandbyMode,
    DEFAULT_SIDECAR_RETRY_INTERVAL,
};
pub use sync::{SyncSummary, WrittenPaths};
pub use tablespace::{
    canonicalize_path, check_dir_empty_or_absent, prepare_tablespace_dirs, MappingEntry,
    MappingError, PreparedTablespace, TablespaceError, TablespaceLocation, TablespaceMapping,
};
