//! Receiving one `BASE_BACKUP` over a replication connection and extracting it while it arrives.
//!
//! ```text
//!  server ──► Connection::read_message (async task) ──► bounded channel ──► extractor thread
//!             result sets, CopyOut, 'n'/'d'/'p'/'m'     (FEED_CHANNEL_CHUNKS    ArchiveExtractor::extract
//!             manifest bytes kept in memory              chunks of Bytes)        + ChecksumCollector
//! ```
//!
//! The message flow, per server version (`src/backend/backup/basebackup_copy.c` and, before 15,
//! `basebackup.c`; the client side is `BaseBackup()` in `src/bin/pg_basebackup/pg_basebackup.c`):
//!
//! 1. the command (built by [`walrelay_protocol::command::base_backup`] in the server's syntax);
//! 2. a result set with the start position (`recptr`, `tli`), sent after the checkpoint;
//! 3. a result set with one row per tablespace (`spcoid`, `spclocation`, `size` in kB — NULL
//!    without `PROGRESS`); the main data directory is the row whose `spcoid` is NULL, and the
//!    server lists it last;
//! 4. the archives:
//!    * PostgreSQL 15+: a single CopyOutResponse; every CopyData starts with a type byte — `'n'`
//!      a new archive (name, tablespace location, empty for `base.tar`), `'d'` data of the
//!      current archive (or of the manifest after `'m'`), `'p'` progress (bytes sent so far),
//!      `'m'` the manifest follows; the tar streams end with two zero blocks;
//!    * before 15: one CopyOutResponse per header row, in header order, raw tar bytes without
//!      end-of-archive blocks, then (13, 14, manifest requested) one more CopyOutResponse that
//!      carries the manifest;
//! 5. a result set with the end position (`recptr`, `tli`);
//! 6. CommandComplete and ReadyForQuery — or, when data checksums failed to verify on the server,
//!    an ErrorResponse with SQLSTATE `XX001` after WARNING notices naming the files.
//!
//! [`BaseBackupStream`] drives that flow; the pieces live beside it: the result sets are read by
//! [`crate::result_set`] and their rows parsed by [`walrelay_protocol::base_backup`], the archives
//! and the manifest received by [`crate::session`], the extractor thread fed by [`crate::feed`],
//! server errors classified by [`crate::error`], progress counted by [`crate::progress`].
//!
//! Extraction runs on one blocking thread for all archives in turn, fed through a channel of at
//! most [`FEED_CHANNEL_CHUNKS`](crate::feed::FEED_CHANNEL_CHUNKS) batches of CopyData payloads, so a slow disk slows the network
//! reader down (memory stays bounded) and a slow network never blocks the disk. Payloads travel in
//! batches of about [`FEED_BATCH_BYTES`](crate::feed::FEED_BATCH_BYTES) because the server sends 32 kB messages: handing them over
//! one by one woke the extractor thread for every message (some 30 000 times per gigabyte).
//! Manifest checksums are computed
//! in the same pass ([`ChecksumCollector`]); the manifest itself (sent last) is kept in memory, up to
//! [`MAX_MANIFEST_BYTES`](crate::session::MAX_MANIFEST_BYTES), and checked against what was written without reading anything back.
//!
//! Tablespace directories are checked (absent or empty) and created before the first archive byte
//! is read, with the `-T` mapping ([`prepare_tablespace_dirs`]).
//!
//! Cancellation: the futures here may be dropped at any await. Dropping stops the extractor at its
//! next read and waits (briefly) until it no longer writes, so that whoever removes the target
//! directories afterwards does not race it; [`ExtractionGate`] lets that owner do the same
//! explicitly.

use std::future::Future;
use std::path::{Path, PathBuf};

use walrelay_client::Connection;
use walrelay_durable::Owner;
use walrelay_protocol::base_backup::{BackupPosition, PositionKind, TablespaceHeader};
use walrelay_protocol::command::{self, BaseBackupOptions, ServerVersion};

use crate::error::{AbortReason, BackupError, BackupStage};
use crate::extract::ArchiveExtractor;
use crate::feed::{ArchiveSink, Extraction, ExtractionGate, Feed};
use crate::manifest::{BackupManifest, ChecksumAlgorithm, ChecksumCollector, VerifySummary};
use crate::max_rate::validate_max_rate;
use crate::progress::{BackupPhase, BackupProgress};
use crate::result_set::read_result_set;
use crate::session::Session;
use crate::sync::WrittenPaths;
use crate::tablespace::{
    prepare_tablespace_dirs, PreparedTablespace, TablespaceLocation, TablespaceMapping,
};

/// First major version that sends all archives in one COPY with `'n'`/`'d'`/`'p'`/`'m'` messages.
const MINIMUM_VERSION_FOR_ARCHIVE_STREAM: u32 = 15;

/// First major version that can send a backup manifest.
const MINIMUM_VERSION_FOR_MANIFESTS: u32 = 13;

/// Where the archives go.
#[derive(Clone, Debug)]
pub struct ReceiveTarget {
    /// The new data directory (created if absent; it should be empty).
    pub data_dir: PathBuf,
    /// From [`BaseBackupStream::prepare_tablespaces`].
    pub tablespaces: Vec<PreparedTablespace>,
    /// Owner of everything created (see [`Owner::of_dir_if_root`]).
    pub owner: Owner,
    /// Compute checksums while extracting and check the manifest against them.
    pub verify_manifest: bool,
    pub gate: ExtractionGate,
    /// `data_dir/pg_wal` is a link to this directory (`--waldir`), made before the backup.
    pub wal_dir: Option<PathBuf>,
}

/// The manifest as received, and what checking it found.
#[derive(Clone, Debug)]
pub struct ReceivedManifest {
    /// The exact bytes the server sent (store them as `backup_manifest`).
    pub text: Vec<u8>,
    /// Parsed (its own checksum verified) when verification was asked for.
    pub parsed: Option<BackupManifest>,
    /// What [`BackupManifest::verify_files`] confirmed.
    pub verified: Option<VerifySummary>,
}

/// A finished base backup.
#[derive(Debug)]
pub struct BaseBackupResult {
    /// Where the backup starts: the checkpoint's redo point, and its timeline.
    pub start: BackupPosition,
    /// The WAL position a restore must reach for the backup to be consistent.
    pub end: BackupPosition,
    /// Every tablespace: oid, the server's location and where it was extracted.
    pub tablespaces: Vec<PreparedTablespace>,
    pub manifest: Option<ReceivedManifest>,
    /// Everything extracted, for [`WrittenPaths::sync_all`].
    pub written: WrittenPaths,
    /// CopyData bytes received (archives and manifest).
    pub bytes_received: u64,
    /// WARNING messages the server sent during the backup.
    pub warnings: Vec<String>,
}

/// A `BASE_BACKUP` whose start position and tablespace header have been read; the archives are
/// next. Split from [`BaseBackupStream::receive`] so that a caller can start streaming WAL from
/// the start position, and record the tablespace directories, before the data arrives.
pub struct BaseBackupStream<'c> {
    conn: &'c mut Connection,
    version: ServerVersion,
    manifest_algorithm: Option<ChecksumAlgorithm>,
    start: BackupPosition,
    header: Vec<TablespaceHeader>,
    progress: BackupProgress,
}

impl<'c> BaseBackupStream<'c> {
    /// Sends `BASE_BACKUP` and reads the start position and the tablespace header.
    /// Cancellation-safe in the sense that dropping it leaves nothing behind but a connection in
    /// an unknown state (close it).
    pub async fn begin(
        conn: &'c mut Connection,
        opts: &BaseBackupOptions,
        progress: &BackupProgress,
    ) -> Result<BaseBackupStream<'c>, BackupError> {
        let version = conn.server_version();
        if let Some(kb) = opts.max_rate_kb {
            validate_max_rate(kb)?;
        }
        let manifest_algorithm = match &opts.manifest {
            Some(alg) if version.major() >= MINIMUM_VERSION_FOR_MANIFESTS => {
                Some(alg.parse::<ChecksumAlgorithm>()?)
            }
            _ => None,
        };
        let sql = command::base_backup(version, opts)?;
        tracing::debug!(command = %sql, "starting base backup");
        conn.queue_query(&sql)
            .map_err(|source| BackupError::Connection {
                stage: BackupStage::Start,
                source,
            })?;
        conn.flush()
            .await
            .map_err(|source| BackupError::Connection {
                stage: BackupStage::Start,
                source,
            })?;
        progress.set_phase(BackupPhase::Checkpoint);

        let start = read_result_set(conn, BackupStage::Start)
            .await?
            .position(PositionKind::Start)?;
        let header = read_result_set(conn, BackupStage::Header)
            .await?
            .tablespace_header()?;
        let total_kb: u64 = header.iter().filter_map(|h| h.size_kb).sum();
        progress.set_total(total_kb.saturating_mul(1024));
        progress.set_done(0);
        tracing::info!(start_lsn = %start.lsn, timeline = %start.timeline, tablespaces = header.len() - 1, total_kb, "base backup started");
        Ok(BaseBackupStream {
            conn,
            version,
            manifest_algorithm,
            start,
            header,
            progress: progress.clone(),
        })
    }

    /// The start position (the checkpoint's redo point) and its timeline.
    pub fn start(&self) -> BackupPosition {
        self.start
    }

    /// The tablespaces other than the data directory.
    pub fn tablespace_locations(&self) -> Vec<TablespaceLocation> {
        self.header
            .iter()
            .filter_map(|h| {
                Some(TablespaceLocation {
                    oid: h.oid?,
                    location: h.location.clone().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Checks every tablespace's target directory (its `-T` mapping or its own location) and
    /// creates the missing ones, before any data is written; refuses a directory that exists and is
    /// not empty. A mapping that matches no tablespace is logged as a warning.
    pub fn prepare_tablespaces(
        &self,
        data_dir: &Path,
        mapping: &TablespaceMapping,
        owner: Owner,
        dir_mode: u32,
    ) -> Result<Vec<PreparedTablespace>, BackupError> {
        let locations = self.tablespace_locations();
        for unused in mapping.unused(&locations) {
            tracing::warn!(old_dir = %unused.old_dir, "tablespace mapping matches no tablespace of the server");
        }
        Ok(prepare_tablespace_dirs(
            data_dir, &locations, mapping, owner, dir_mode,
        )?)
    }

    /// Receives the archives, extracting them into `target` while they arrive, then the manifest
    /// and the end position. `global/pg_control` is held back under
    /// [`crate::extract::HELD_CONTROL_FILE`]: the caller releases it
    /// ([`crate::extract::release_control_file`]) once the directory is configured. `abort` resolving stops the backup with [`BackupError::Aborted`]
    /// (pass `std::future::pending()` for none).
    pub async fn receive<A>(
        self,
        target: ReceiveTarget,
        abort: A,
    ) -> Result<BaseBackupResult, BackupError>
    where
        A: Future<Output = AbortReason>,
    {
        let extractor = ArchiveExtractor::new(
            target.data_dir.clone(),
            target.tablespaces.clone(),
            target.owner,
        )
        .with_wal_dir_link(target.wal_dir.clone())
        .hold_control_file()
        .with_writeback_behind();
        self.receive_into(
            Box::new(extractor),
            target.tablespaces,
            target.verify_manifest,
            target.gate,
            abort,
        )
        .await
    }

    /// [`receive`](Self::receive) into any [`ArchiveSink`] (the extractor, or a sink that stores
    /// the tar streams): `tablespaces` are reported back in the result; with `verify_manifest` the
    /// sink's observed files are checked against the manifest.
    pub async fn receive_into<A>(
        self,
        sink: Box<dyn ArchiveSink>,
        tablespaces: Vec<PreparedTablespace>,
        verify_manifest: bool,
        gate: ExtractionGate,
        abort: A,
    ) -> Result<BaseBackupResult, BackupError>
    where
        A: Future<Output = AbortReason>,
    {
        let BaseBackupStream {
            conn,
            version,
            manifest_algorithm,
            start,
            header,
            progress,
        } = self;
        progress.set_phase(BackupPhase::Transferring);
        let collector = if verify_manifest {
            manifest_algorithm.map(|a| ChecksumCollector::new(&[a]))
        } else {
            None
        };
        let extraction = Extraction::spawn(sink, collector, gate);
        tokio::pin!(abort);
        let mut session = Session::new(conn, extraction, abort.as_mut(), &progress);

        let manifest_text = if version.major() >= MINIMUM_VERSION_FOR_ARCHIVE_STREAM {
            session.archive_stream(&header).await?
        } else {
            session
                .tablespace_copies(&header, manifest_algorithm.is_some())
                .await?
        };
        if manifest_algorithm.is_some() && manifest_text.is_none() {
            return Err(BackupError::ManifestMissing);
        }
        session.send(Feed::Finish).await?;

        let end = session
            .result_set(BackupStage::End)
            .await?
            .position(PositionKind::End)?;
        session.final_status().await?;
        let outcome = session.extraction.outcome(&mut session.abort).await?;
        let received = session.received;
        let warnings: Vec<String> = session
            .conn
            .take_notices()
            .into_iter()
            .filter(|n| n.severity == "WARNING")
            .map(|n| n.message)
            .collect();

        let manifest = match manifest_text {
            None => None,
            Some(text) => {
                let (parsed, verified) = match &outcome.collector {
                    Some(collector) => {
                        let parsed = BackupManifest::parse(&text)?;
                        let summary = parsed.verify_files(collector, &[])?;
                        (Some(parsed), Some(summary))
                    }
                    None => (None, None),
                };
                Some(ReceivedManifest {
                    text,
                    parsed,
                    verified,
                })
            }
        };
        tracing::info!(end_lsn = %end.lsn, timeline = %end.timeline, bytes = received, "base backup received");
        Ok(BaseBackupResult {
            start,
            end,
            tablespaces,
            manifest,
            written: outcome.written,
            bytes_received: received,
            warnings,
        })
    }
}
