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
//! Extraction runs on one blocking thread for all archives in turn, fed through a channel of at
//! most [`FEED_CHANNEL_CHUNKS`] batches of CopyData payloads, so a slow disk slows the network
//! reader down (memory stays bounded) and a slow network never blocks the disk. Payloads travel in
//! batches of about [`FEED_BATCH_BYTES`] because the server sends 32 kB messages: handing them over
//! one by one woke the extractor thread for every message (some 30 000 times per gigabyte).
//! Manifest checksums are computed
//! in the same pass ([`ChecksumCollector`]); the manifest itself (sent last) is kept in memory, up to
//! [`MAX_MANIFEST_BYTES`], and checked against what was written without reading anything back.
//!
//! Tablespace directories are checked (absent or empty) and created before the first archive byte
//! is read, with the `-T` mapping ([`prepare_tablespace_dirs`]).
//!
//! Cancellation: the futures here may be dropped at any await. Dropping stops the extractor at its
//! next read and waits (briefly) until it no longer writes, so that whoever removes the target
//! directories afterwards does not race it; [`ExtractionGate`] lets that owner do the same
//! explicitly.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use walrelay_client::sqlstate;
use walrelay_client::{ClientError, Connection, ServerError};
use walrelay_durable::Owner;
use walrelay_protocol::command::{
    self, BaseBackupOptions, CommandError, ServerVersion, MAX_RATE_MAX_KB, MAX_RATE_MIN_KB,
};
use walrelay_protocol::{BackendMessage, BaseBackupMessage, ErrorFields, Lsn, TimelineId};

use crate::extract::{ArchiveExtractor, ArchiveKind, ArchiveSummary, ExtractError};
use crate::manifest::{
    BackupManifest, ChecksumAlgorithm, ChecksumCollector, ManifestError, UnknownAlgorithm,
    VerifyError, VerifySummary,
};
use crate::sync::WrittenPaths;
use crate::tablespace::{
    prepare_tablespace_dirs, PreparedTablespace, TablespaceError, TablespaceLocation,
    TablespaceMapping,
};
use crate::tar_stream::ChunkRead;

/// Items queued between the network task and the extractor thread: with data batches of at most
/// [`FEED_BATCH_BYTES`] (plus one message), this bounds the queue to about 4 MB while still
/// absorbing short stalls on either side.
pub const FEED_CHANNEL_CHUNKS: usize = 4;

/// Archive data is handed to the extractor thread once this many bytes of CopyData payloads have
/// arrived (or when the archive ends): PostgreSQL sends archive data in messages of 32 kB
/// (`SINK_BUFFER_LENGTH` in `basebackup.c`), and one channel item per message cost one thread
/// wake-up per message. Measured on PostgreSQL 15 with a 620 MB data directory, 256 kB batches
/// halved the process's context switches (docs/benchmarks.md, "Fixes").
pub const FEED_BATCH_BYTES: usize = 1024 * 1024;

/// The largest manifest accepted. A manifest lists each file in about 150 bytes; this is room for
/// millions of files while refusing a server that never stops sending one.
pub const MAX_MANIFEST_BYTES: usize = 1 << 30;

/// How long dropping a running extraction waits for its thread to stop writing.
pub const EXTRACTOR_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// First major version that sends all archives in one COPY with `'n'`/`'d'`/`'p'`/`'m'` messages.
const MINIMUM_VERSION_FOR_ARCHIVE_STREAM: u32 = 15;

/// First major version that can send a backup manifest.
const MINIMUM_VERSION_FOR_MANIFESTS: u32 = 13;

/// The error an abort signal carries (typically: why the WAL stream died).
pub type AbortReason = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A WAL position with its timeline, as `BASE_BACKUP` reports its start and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupPosition {
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

impl fmt::Display for BackupPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on timeline {}", self.lsn, self.timeline)
    }
}

/// One row of the tablespace header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceHeader {
    /// `spcoid`: `None` for the main data directory.
    pub oid: Option<u32>,
    /// `spclocation`: `None` for the main data directory; relative (`pg_tblspc/<oid>`) for an
    /// in-place tablespace.
    pub location: Option<String>,
    /// Estimated size in kB; `None` without `PROGRESS`.
    pub size_kb: Option<u64>,
}

impl TablespaceHeader {
    /// The archive this row stands for.
    pub fn archive_kind(&self) -> ArchiveKind {
        match self.oid {
            None => ArchiveKind::Base,
            Some(oid) => ArchiveKind::Tablespace(oid),
        }
    }
}

/// What a base backup is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackupPhase {
    /// Connecting, identifying the server, checking or creating the slot.
    Connecting = 0,
    /// `BASE_BACKUP` sent; the server is running its checkpoint.
    Checkpoint = 1,
    /// Archives are arriving and being extracted.
    Transferring = 2,
    /// Data received; waiting for the WAL up to the end position, verifying.
    Finishing = 3,
    /// Making everything durable.
    Syncing = 4,
    /// Finished successfully.
    Done = 5,
}

impl BackupPhase {
    fn from_u8(v: u8) -> BackupPhase {
        match v {
            0 => BackupPhase::Connecting,
            1 => BackupPhase::Checkpoint,
            2 => BackupPhase::Transferring,
            3 => BackupPhase::Finishing,
            4 => BackupPhase::Syncing,
            _ => BackupPhase::Done,
        }
    }
}

#[derive(Debug, Default)]
struct ProgressInner {
    phase: AtomicU8,
    /// Estimated total in bytes (sum of the header's kB); 0 when unknown.
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    received_bytes: AtomicU64,
}

/// Shared, lock-free progress counters: cheap to clone, readable from any thread (a progress bar).
///
/// `done_bytes` follows the server's own count (`'p'` messages, PostgreSQL 15+) or, before 15, the
/// archive bytes received — the same numbers pg_basebackup's `--progress` shows. `total_bytes` is
/// the server's estimate and may be exceeded when files grow during the backup.
#[derive(Clone, Debug, Default)]
pub struct BackupProgress(Arc<ProgressInner>);

impl BackupProgress {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn phase(&self) -> BackupPhase {
        BackupPhase::from_u8(self.0.phase.load(Ordering::Relaxed))
    }

    /// The server's size estimate, when `PROGRESS` was requested.
    pub fn total_bytes(&self) -> Option<u64> {
        match self.0.total_bytes.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn done_bytes(&self) -> u64 {
        self.0.done_bytes.load(Ordering::Relaxed)
    }

    /// Every CopyData byte received (archives and manifest).
    pub fn received_bytes(&self) -> u64 {
        self.0.received_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn set_phase(&self, phase: BackupPhase) {
        self.0.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn set_total(&self, bytes: u64) {
        self.0.total_bytes.store(bytes, Ordering::Relaxed);
    }

    fn set_done(&self, bytes: u64) {
        self.0.done_bytes.store(bytes, Ordering::Relaxed);
    }

    fn add_done(&self, bytes: u64) {
        self.0.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn add_received(&self, bytes: u64) {
        self.0.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

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

    fn protocol(msg: impl Into<String>) -> Self {
        BackupError::Protocol(msg.into())
    }
}

/// Parses a `--max-rate` value as pg_basebackup does: a positive number of kB/s, optionally
/// followed by `k` (kB/s) or `M` (MB/s), surrounded by optional white space; the result must lie
/// between 32 kB/s and 1 GB/s. Fractions are truncated after scaling (`1.5M` is 1536 kB/s).
pub fn parse_max_rate(arg: &str) -> Result<u32, BackupError> {
    let s = arg.trim_start();
    let num_len = s
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    let value: f64 = s[..num_len]
        .parse()
        .map_err(|_| BackupError::MaxRateSyntax(arg.to_string()))?;
    if value.is_nan() || value <= 0.0 {
        return Err(BackupError::MaxRateNotPositive);
    }
    let rest = s[num_len..].trim();
    let kb = match rest {
        "" | "k" => value,
        "M" => value * 1024.0,
        _ => return Err(BackupError::MaxRateSyntax(arg.to_string())),
    };
    if !(f64::from(MAX_RATE_MIN_KB)..=f64::from(MAX_RATE_MAX_KB)).contains(&kb) {
        return Err(BackupError::MaxRateRange(arg.trim().to_string()));
    }
    // In range, hence finite and below u32::MAX: the truncating cast is exact for the integer part.
    Ok(kb as u32)
}

/// Checks a rate given directly in kB/s.
pub fn validate_max_rate(kb: u32) -> Result<u32, BackupError> {
    if (MAX_RATE_MIN_KB..=MAX_RATE_MAX_KB).contains(&kb) {
        Ok(kb)
    } else {
        Err(BackupError::MaxRateRange(kb.to_string()))
    }
}

/// Lets the owner of the target directories stop an extraction and wait until its thread no longer
/// writes (before removing the directories after a failure). One gate serves one backup: once
/// aborted it stays aborted.
#[derive(Clone, Debug, Default)]
pub struct ExtractionGate(Arc<GateInner>);

#[derive(Debug, Default)]
struct GateInner {
    aborted: AtomicBool,
    active: Mutex<usize>,
    idle: Condvar,
    /// Senders that can wake an extractor blocked waiting for data.
    wake: Mutex<Vec<mpsc::Sender<Feed>>>,
}

impl ExtractionGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every extraction under this gate fail at its next read (it writes nothing more).
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        let wake = match self.0.wake.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for tx in wake {
            // A full channel means the extractor is not blocked: it sees the flag on its next read.
            let _ = tx.try_send(Feed::Abort);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Waits until no extraction thread runs under this gate; false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut active = match self.0.active.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        while *active > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            active = match self.0.idle.wait_timeout(active, deadline - now) {
                Ok((a, _)) => a,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// [`abort`](Self::abort), then [`wait_idle`](Self::wait_idle).
    pub fn abort_and_wait(&self, timeout: Duration) -> bool {
        self.abort();
        self.wait_idle(timeout)
    }

    fn enter(&self) -> ActiveWriter {
        match self.0.active.lock() {
            Ok(mut a) => *a += 1,
            Err(p) => *p.into_inner() += 1,
        }
        ActiveWriter(self.clone())
    }

    fn register_wake(&self, tx: mpsc::Sender<Feed>) {
        if let Ok(mut w) = self.0.wake.lock() {
            w.push(tx);
        }
        // Aborted before the extractor even started: make sure it stops at once.
        if self.is_aborted() {
            self.abort();
        }
    }

    fn clear_wake(&self) {
        if let Ok(mut w) = self.0.wake.lock() {
            w.clear();
        }
    }
}

/// Counts one running extractor; dropped (also when the thread unwinds) when it stops.
struct ActiveWriter(ExtractionGate);

impl Drop for ActiveWriter {
    fn drop(&mut self) {
        let inner = &(self.0).0;
        match inner.active.lock() {
            Ok(mut a) => *a = a.saturating_sub(1),
            Err(p) => {
                let mut a = p.into_inner();
                *a = a.saturating_sub(1);
            }
        }
        inner.idle.notify_all();
    }
}

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
}

/// Everything [`run_base_backup`] needs besides the connection and the command options.
#[derive(Clone, Debug)]
pub struct BackupSink {
    pub data_dir: PathBuf,
    pub mapping: TablespaceMapping,
    pub owner: Owner,
    pub verify_manifest: bool,
    pub progress: BackupProgress,
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
    pub server_version: ServerVersion,
    pub start: BackupPosition,
    pub end: BackupPosition,
    /// Every tablespace: oid, the server's location and where it was extracted.
    pub tablespaces: Vec<PreparedTablespace>,
    pub manifest: Option<ReceivedManifest>,
    /// Everything extracted, for [`WrittenPaths::sync_all`].
    pub written: WrittenPaths,
    pub archives: Vec<(ArchiveKind, ArchiveSummary)>,
    /// CopyData bytes received (archives and manifest).
    pub bytes_received: u64,
    /// WARNING messages the server sent during the backup.
    pub warnings: Vec<String>,
}

/// Runs one complete `BASE_BACKUP` into `sink.data_dir`: [`BaseBackupStream::begin`],
/// [`BaseBackupStream::prepare_tablespaces`], [`BaseBackupStream::receive`]. Nothing is fsynced
/// (see [`BaseBackupResult::written`]) and the manifest is not stored; the caller decides both.
pub async fn run_base_backup(
    conn: &mut Connection,
    opts: &BaseBackupOptions,
    sink: &BackupSink,
) -> Result<BaseBackupResult, BackupError> {
    let stream = BaseBackupStream::begin(conn, opts, &sink.progress).await?;
    let tablespaces = stream.prepare_tablespaces(&sink.data_dir, &sink.mapping, sink.owner)?;
    let target = ReceiveTarget {
        data_dir: sink.data_dir.clone(),
        tablespaces,
        owner: sink.owner,
        verify_manifest: sink.verify_manifest,
        gate: ExtractionGate::new(),
    };
    stream
        .receive(target, std::future::pending::<AbortReason>())
        .await
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

        let start_rows = read_result_set(conn, BackupStage::Start).await?;
        let start = parse_position(&start_rows, "start")?;
        let header_rows = read_result_set(conn, BackupStage::Header).await?;
        let header = parse_header(&header_rows)?;
        let total_kb: u64 = header.iter().filter_map(|h| h.size_kb).sum();
        progress.set_total(total_kb.saturating_mul(1024));
        progress.set_done(0);
        tracing::info!(start = %start, tablespaces = header.len() - 1, total_kb, "base backup started");
        Ok(BaseBackupStream {
            conn,
            version,
            manifest_algorithm,
            start,
            header,
            progress: progress.clone(),
        })
    }

    pub fn server_version(&self) -> ServerVersion {
        self.version
    }

    /// The start position (the checkpoint's redo point) and its timeline.
    pub fn start(&self) -> BackupPosition {
        self.start
    }

    /// The tablespace header as the server sent it (the data directory's row included).
    pub fn header(&self) -> &[TablespaceHeader] {
        &self.header
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

    /// The server's size estimate in bytes, when `PROGRESS` was requested.
    pub fn total_bytes(&self) -> Option<u64> {
        self.progress.total_bytes()
    }

    /// Whether a manifest will follow the archives.
    pub fn manifest_expected(&self) -> bool {
        self.manifest_algorithm.is_some()
    }

    /// Checks every tablespace's target directory (its `-T` mapping or its own location) and
    /// creates the missing ones, before any data is written; refuses a directory that exists and is
    /// not empty. A mapping that matches no tablespace is logged as a warning.
    pub fn prepare_tablespaces(
        &self,
        data_dir: &Path,
        mapping: &TablespaceMapping,
        owner: Owner,
    ) -> Result<Vec<PreparedTablespace>, BackupError> {
        let locations = self.tablespace_locations();
        for unused in mapping.unused(&locations) {
            tracing::warn!(old_dir = %unused.old_dir, "tablespace mapping matches no tablespace of the server");
        }
        Ok(prepare_tablespace_dirs(
            data_dir, &locations, mapping, owner,
        )?)
    }

    /// Receives the archives, extracting them into `target` while they arrive, then the manifest
    /// and the end position. `abort` resolving stops the backup with [`BackupError::Aborted`]
    /// (pass `std::future::pending()` for none).
    pub async fn receive<A>(
        self,
        target: ReceiveTarget,
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
        let collector = if target.verify_manifest {
            manifest_algorithm.map(|a| ChecksumCollector::new(&[a]))
        } else {
            None
        };
        let extractor = ArchiveExtractor::new(
            target.data_dir.clone(),
            target.tablespaces.clone(),
            target.owner,
        )
        .with_writeback_behind();
        let extraction = Extraction::spawn(extractor, collector, target.gate.clone());
        tokio::pin!(abort);
        let mut session = Session {
            conn,
            extraction,
            abort: abort.as_mut(),
            progress: &progress,
            received: 0,
            batch: Vec::new(),
            batch_bytes: 0,
        };

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

        let end_rows = session.result_set(BackupStage::End).await?;
        let end = parse_position(&end_rows, "end")?;
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
        tracing::info!(end = %end, bytes = received, "base backup received");
        Ok(BaseBackupResult {
            server_version: version,
            start,
            end,
            tablespaces: target.tablespaces,
            manifest,
            written: outcome.written,
            archives: outcome.archives,
            bytes_received: received,
            warnings,
        })
    }
}

/// The network side of one `receive`.
struct Session<'a, 'c, A: Future<Output = AbortReason>> {
    conn: &'c mut Connection,
    extraction: Extraction,
    abort: std::pin::Pin<&'a mut A>,
    progress: &'a BackupProgress,
    received: u64,
    /// Archive data not yet handed to the extractor (see [`FEED_BATCH_BYTES`]).
    batch: Vec<Bytes>,
    batch_bytes: usize,
}

impl<A: Future<Output = AbortReason>> Session<'_, '_, A> {
    /// The next message, unless the abort signal fires or the extractor failed first.
    async fn next(&mut self, stage: BackupStage) -> Result<BackendMessage, BackupError> {
        let Session {
            conn,
            extraction,
            abort,
            ..
        } = self;
        tokio::select! {
            biased;
            reason = abort.as_mut() => Err(BackupError::Aborted(reason)),
            failure = extraction.failed_early() => Err(failure),
            msg = conn.read_message() => msg.map_err(|source| BackupError::Connection { stage, source }),
        }
    }

    /// Reads a result set (RowDescription, DataRow…, CommandComplete).
    async fn result_set(&mut self, stage: BackupStage) -> Result<Rows, BackupError> {
        let mut rows = Rows::default();
        loop {
            let msg = self.next(stage).await?;
            match rows.accept(msg, stage)? {
                RowStep::More => {}
                RowStep::Done => return Ok(rows),
                RowStep::Failed(e) => return Err(self.server_failure(stage, e)),
            }
        }
    }

    fn server_failure(&mut self, stage: BackupStage, e: ErrorFields) -> BackupError {
        classify_server_error(stage, e, self.conn.take_notices())
    }

    /// Hands a marker to the extractor, after the archive data queued before it.
    async fn send(&mut self, item: Feed) -> Result<(), BackupError> {
        self.flush_data().await?;
        self.extraction.feed(item, &mut self.abort).await
    }

    /// Queues archive data of the current archive; it goes to the extractor in batches of about
    /// [`FEED_BATCH_BYTES`], and at the latest with the next marker ([`send`](Self::send)).
    async fn send_data(&mut self, data: Bytes) -> Result<(), BackupError> {
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch_bytes >= FEED_BATCH_BYTES {
            self.flush_data().await?;
        }
        Ok(())
    }

    async fn flush_data(&mut self) -> Result<(), BackupError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.extraction
            .feed(Feed::Data(batch), &mut self.abort)
            .await
    }

    async fn expect_copy_out(&mut self, what: &str) -> Result<(), BackupError> {
        match self.next(BackupStage::Transfer).await? {
            BackendMessage::CopyOutResponse(_) => Ok(()),
            BackendMessage::ErrorResponse(e) => Err(self.server_failure(BackupStage::Transfer, e)),
            other => Err(BackupError::protocol(format!(
                "expected the COPY of {what}, got {}",
                walrelay_client::message_name(&other)
            ))),
        }
    }

    /// PostgreSQL 15+: one COPY carrying every archive, then the manifest.
    async fn archive_stream(
        &mut self,
        header: &[TablespaceHeader],
    ) -> Result<Option<Vec<u8>>, BackupError> {
        self.expect_copy_out("the archives").await?;
        let mut current: Option<ArchiveKind> = None;
        let mut seen: HashSet<ArchiveKind> = HashSet::new();
        let mut manifest: Option<Vec<u8>> = None;
        loop {
            match self.next(BackupStage::Transfer).await? {
                BackendMessage::CopyData(payload) => {
                    self.count_received(payload.len());
                    let msg = BaseBackupMessage::parse(&payload)
                        .map_err(|e| BackupError::protocol(e.to_string()))?;
                    match msg {
                        BaseBackupMessage::NewArchive {
                            archive_name,
                            tablespace_location,
                        } => {
                            if manifest.is_some() {
                                return Err(BackupError::protocol(
                                    "a new archive after the manifest (archives must precede the manifest)",
                                ));
                            }
                            let kind = archive_for(header, &archive_name, &tablespace_location)?;
                            if !seen.insert(kind) {
                                return Err(BackupError::protocol(format!(
                                    "archive \"{archive_name}\" sent twice"
                                )));
                            }
                            if current.take().is_some() {
                                self.send(Feed::End).await?;
                            }
                            self.send(Feed::Begin(kind)).await?;
                            current = Some(kind);
                        }
                        BaseBackupMessage::Data(data) => {
                            if let Some(m) = manifest.as_mut() {
                                append_manifest(m, &data)?;
                            } else if current.is_some() {
                                if !data.is_empty() {
                                    self.send_data(data).await?;
                                }
                            } else {
                                return Err(BackupError::protocol(
                                    "archive data before any archive began",
                                ));
                            }
                        }
                        BaseBackupMessage::Progress(done) => self.progress.set_done(done),
                        BaseBackupMessage::ManifestFollows => {
                            if manifest.is_some() {
                                return Err(BackupError::protocol("two manifests"));
                            }
                            if current.take().is_some() {
                                self.send(Feed::End).await?;
                            }
                            manifest = Some(Vec::new());
                        }
                    }
                }
                BackendMessage::CopyDone => {
                    if current.take().is_some() {
                        self.send(Feed::End).await?;
                    }
                    break;
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(self.server_failure(BackupStage::Transfer, e))
                }
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} inside the archive stream",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
        check_all_archives_seen(header, &seen)?;
        Ok(manifest)
    }

    /// Before PostgreSQL 15: one COPY per header row in order, then one for the manifest.
    async fn tablespace_copies(
        &mut self,
        header: &[TablespaceHeader],
        manifest_expected: bool,
    ) -> Result<Option<Vec<u8>>, BackupError> {
        for row in header {
            let kind = row.archive_kind();
            self.expect_copy_out(&archive_name(kind)).await?;
            self.send(Feed::Begin(kind)).await?;
            loop {
                match self.next(BackupStage::Transfer).await? {
                    BackendMessage::CopyData(data) => {
                        self.count_received(data.len());
                        self.progress.add_done(data.len() as u64);
                        if !data.is_empty() {
                            self.send_data(data).await?;
                        }
                    }
                    BackendMessage::CopyDone => break,
                    BackendMessage::ErrorResponse(e) => {
                        return Err(self.server_failure(BackupStage::Transfer, e))
                    }
                    other => {
                        return Err(BackupError::protocol(format!(
                            "unexpected {} inside the COPY of {}",
                            walrelay_client::message_name(&other),
                            archive_name(kind)
                        )))
                    }
                }
            }
            self.send(Feed::End).await?;
        }
        if !manifest_expected {
            return Ok(None);
        }
        self.expect_copy_out("the backup manifest").await?;
        let mut manifest = Vec::new();
        loop {
            match self.next(BackupStage::Transfer).await? {
                BackendMessage::CopyData(data) => {
                    self.count_received(data.len());
                    append_manifest(&mut manifest, &data)?;
                }
                BackendMessage::CopyDone => return Ok(Some(manifest)),
                BackendMessage::ErrorResponse(e) => {
                    return Err(self.server_failure(BackupStage::Transfer, e))
                }
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} inside the COPY of the backup manifest",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
    }

    /// After the end position: CommandComplete (or the error that replaces it), ReadyForQuery.
    async fn final_status(&mut self) -> Result<(), BackupError> {
        let mut error: Option<ErrorFields> = None;
        loop {
            match self.next(BackupStage::End).await? {
                BackendMessage::CommandComplete { .. } => {}
                BackendMessage::ErrorResponse(e) => {
                    error.get_or_insert(e);
                }
                BackendMessage::ReadyForQuery { .. } => break,
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} after the end position",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(self.server_failure(BackupStage::End, e)),
            None => Ok(()),
        }
    }

    fn count_received(&mut self, n: usize) {
        self.received += n as u64;
        self.progress.add_received(n as u64);
    }
}

fn archive_name(kind: ArchiveKind) -> String {
    match kind {
        ArchiveKind::Base => "base.tar".to_string(),
        ArchiveKind::Tablespace(oid) => format!("{oid}.tar"),
    }
}

/// Matches a PostgreSQL 15+ `'n'` message with the header: the name must be `base.tar` with an
/// empty location, or `<oid>.tar` for an announced tablespace at the announced location.
fn archive_for(
    header: &[TablespaceHeader],
    name: &str,
    location: &str,
) -> Result<ArchiveKind, BackupError> {
    let kind = ArchiveKind::from_archive_name(name).ok_or_else(|| {
        BackupError::protocol(format!(
            "invalid archive name \"{name}\" (expected base.tar or <oid>.tar)"
        ))
    })?;
    let row = header
        .iter()
        .find(|h| h.archive_kind() == kind)
        .ok_or_else(|| {
            BackupError::protocol(format!(
                "archive \"{name}\" is for a tablespace missing from the tablespace header"
            ))
        })?;
    let announced = row.location.as_deref().unwrap_or("");
    if announced != location {
        return Err(BackupError::protocol(format!(
            "archive \"{name}\" names location \"{location}\" but the header said \"{announced}\""
        )));
    }
    Ok(kind)
}

fn check_all_archives_seen(
    header: &[TablespaceHeader],
    seen: &HashSet<ArchiveKind>,
) -> Result<(), BackupError> {
    let missing: Vec<String> = header
        .iter()
        .map(TablespaceHeader::archive_kind)
        .filter(|k| !seen.contains(k))
        .map(archive_name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BackupError::protocol(format!(
            "the archive stream ended without {}",
            missing.join(", ")
        )))
    }
}

fn append_manifest(manifest: &mut Vec<u8>, data: &[u8]) -> Result<(), BackupError> {
    if manifest.len().saturating_add(data.len()) > MAX_MANIFEST_BYTES {
        return Err(BackupError::ManifestTooLarge);
    }
    manifest.extend_from_slice(data);
    Ok(())
}

/// Turns a server error into the most helpful [`BackupError`].
fn classify_server_error(
    stage: BackupStage,
    e: ErrorFields,
    notices: Vec<ErrorFields>,
) -> BackupError {
    let error = ServerError { fields: e };
    if error.code() == sqlstate::DATA_CORRUPTED {
        let (files, messages) = checksum_failure_files(&notices);
        return BackupError::ChecksumFailures(Box::new(ChecksumFailures {
            files,
            messages,
            error,
        }));
    }
    let msg = error.message();
    if error.code() == sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
        && (msg.contains("WAL level") || msg.contains("wal_level"))
    {
        return BackupError::WalLevelTooLow(Box::new(error));
    }
    // xlog.c CheckXLogRemoved(), called by basebackup.c before and while sending WAL: "requested
    // WAL segment %s has already been removed". Its SQLSTATE comes from errcode_for_file_access()
    // and so depends on whatever errno was at hand (58P01, or XX000), so the text decides; a
    // translated message just gets the generic error.
    if msg.contains("has already been removed") {
        return BackupError::WalRemoved(Box::new(error));
    }
    BackupError::Server {
        stage,
        error: Box::new(error),
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

/// Rows of a result set, values as sent (text format).
#[derive(Debug, Default)]
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<Bytes>>>,
    /// Whether the RowDescription has arrived.
    described: bool,
}

/// Where a result set stands after one more message.
enum RowStep {
    More,
    Done,
    /// The server reported an error instead of (the rest of) the result.
    Failed(ErrorFields),
}

impl Rows {
    /// Takes the next message of a result set: RowDescription, DataRow…, CommandComplete.
    fn accept(&mut self, msg: BackendMessage, stage: BackupStage) -> Result<RowStep, BackupError> {
        match msg {
            BackendMessage::RowDescription(fields) if !self.described => {
                self.columns = fields.into_iter().map(|f| f.name).collect();
                self.described = true;
            }
            BackendMessage::DataRow(values) if self.described => {
                if values.len() != self.columns.len() {
                    return Err(BackupError::protocol(
                        "a result row has a different number of columns than its description",
                    ));
                }
                self.rows.push(values);
            }
            BackendMessage::CommandComplete { .. } if self.described => return Ok(RowStep::Done),
            BackendMessage::ErrorResponse(e) => return Ok(RowStep::Failed(e)),
            other => {
                return Err(BackupError::protocol(format!(
                    "unexpected {} while reading a result set ({stage})",
                    walrelay_client::message_name(&other)
                )))
            }
        }
        Ok(RowStep::More)
    }

    fn text(&self, row: usize, col: usize) -> Result<Option<&str>, BackupError> {
        match self.rows.get(row).and_then(|r| r.get(col)) {
            None => Err(BackupError::protocol(format!(
                "result has no column {col} in row {row}"
            ))),
            Some(None) => Ok(None),
            Some(Some(b)) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| BackupError::protocol("a result value is not valid UTF-8")),
        }
    }
}

async fn read_result_set(conn: &mut Connection, stage: BackupStage) -> Result<Rows, BackupError> {
    let mut rows = Rows::default();
    loop {
        let msg = conn
            .read_message()
            .await
            .map_err(|source| BackupError::Connection { stage, source })?;
        match rows.accept(msg, stage)? {
            RowStep::More => {}
            RowStep::Done => return Ok(rows),
            RowStep::Failed(e) => {
                // The command failed as a whole: the server sends ReadyForQuery next.
                let notices = conn.take_notices();
                let _ = conn.drain_until_ready().await;
                return Err(classify_server_error(stage, e, notices));
            }
        }
    }
}

fn parse_position(rows: &Rows, what: &str) -> Result<BackupPosition, BackupError> {
    if rows.rows.len() != 1 || rows.columns.len() < 2 {
        return Err(BackupError::protocol(format!(
            "the {what} position result has {} rows and {} columns, expected 1 row and 2 columns",
            rows.rows.len(),
            rows.columns.len()
        )));
    }
    let lsn: Lsn = rows
        .text(0, 0)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BackupError::protocol(format!("invalid {what} position")))?;
    let timeline: u32 = rows
        .text(0, 1)?
        .and_then(|v| v.trim().parse().ok())
        .filter(|&t| t > 0)
        .ok_or_else(|| BackupError::protocol(format!("invalid {what} timeline")))?;
    Ok(BackupPosition {
        lsn,
        timeline: TimelineId(timeline),
    })
}

fn parse_header(rows: &Rows) -> Result<Vec<TablespaceHeader>, BackupError> {
    if rows.columns.len() < 2 {
        return Err(BackupError::protocol(format!(
            "the tablespace header has {} columns, expected at least 2",
            rows.columns.len()
        )));
    }
    let mut out = Vec::with_capacity(rows.rows.len());
    for i in 0..rows.rows.len() {
        let oid = match rows.text(i, 0)? {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&o| o != 0)
                    .ok_or_else(|| {
                        BackupError::protocol(format!("invalid tablespace OID \"{v}\""))
                    })?,
            ),
        };
        let location = rows.text(i, 1)?.map(str::to_string);
        let size_kb = if rows.columns.len() >= 3 {
            match rows.text(i, 2)? {
                None => None,
                Some(v) => {
                    let n: i64 = v.trim().parse().map_err(|_| {
                        BackupError::protocol(format!("invalid tablespace size \"{v}\""))
                    })?;
                    u64::try_from(n).ok()
                }
            }
        } else {
            None
        };
        match (oid, &location) {
            (Some(oid), None) => {
                return Err(BackupError::protocol(format!(
                    "tablespace {oid} has no location"
                )))
            }
            (Some(_), Some(l)) if l.is_empty() => {
                return Err(BackupError::protocol("a tablespace has an empty location"))
            }
            _ => {}
        }
        out.push(TablespaceHeader {
            oid,
            location,
            size_kb,
        });
    }
    let bases = out.iter().filter(|h| h.oid.is_none()).count();
    if bases != 1 {
        return Err(BackupError::protocol(format!(
            "the tablespace header has {bases} rows for the data directory, expected 1"
        )));
    }
    let mut oids = HashSet::new();
    for h in &out {
        if let Some(oid) = h.oid {
            if !oids.insert(oid) {
                return Err(BackupError::protocol(format!(
                    "tablespace {oid} appears twice in the header"
                )));
            }
        }
    }
    Ok(out)
}

/// What the network task sends the extractor thread.
#[derive(Debug)]
enum Feed {
    /// The next archive starts.
    Begin(ArchiveKind),
    /// Bytes of the current archive, in order (CopyData payloads as they arrived).
    Data(Vec<Bytes>),
    /// The current archive's bytes are complete.
    End,
    /// No more archives: hand back the results.
    Finish,
    /// Stop at once (sent by [`ExtractionGate::abort`]).
    Abort,
}

/// What the extractor thread hands back.
struct ExtractOutcome {
    written: WrittenPaths,
    collector: Option<ChecksumCollector>,
    archives: Vec<(ArchiveKind, ArchiveSummary)>,
}

/// The extractor thread as seen from the network task.
struct Extraction {
    tx: Option<mpsc::Sender<Feed>>,
    done: Option<oneshot::Receiver<Result<ExtractOutcome, BackupError>>>,
    gate: ExtractionGate,
    /// `Finish` was sent: the thread's result is now expected, and no longer a failure.
    finishing: bool,
}

impl Extraction {
    fn spawn(
        extractor: ArchiveExtractor,
        collector: Option<ChecksumCollector>,
        gate: ExtractionGate,
    ) -> Extraction {
        let (tx, rx) = mpsc::channel(FEED_CHANNEL_CHUNKS);
        let (done_tx, done_rx) = oneshot::channel();
        // Counted before the thread exists, so that a wait_idle() right after sees it.
        let active = gate.enter();
        gate.register_wake(tx.clone());
        let thread_gate = gate.clone();
        tokio::task::spawn_blocking(move || {
            let _active = active;
            let result = extract_all(rx, extractor, collector, &thread_gate);
            let _ = done_tx.send(result);
        });
        Extraction {
            tx: Some(tx),
            done: Some(done_rx),
            gate,
            finishing: false,
        }
    }

    /// Sends one item, waiting for room (this is the backpressure), unless aborted or the
    /// extractor failed.
    async fn feed<A: Future<Output = AbortReason>>(
        &mut self,
        item: Feed,
        abort: &mut std::pin::Pin<&mut A>,
    ) -> Result<(), BackupError> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(BackupError::ExtractorFailed);
        };
        let finish = matches!(item, Feed::Finish);
        let sent = tokio::select! {
            biased;
            reason = abort.as_mut() => return Err(BackupError::Aborted(reason)),
            r = tx.send(item) => r,
        };
        if sent.is_ok() {
            self.finishing |= finish;
            return Ok(());
        }
        // The thread stopped reading: it failed. Its result says why.
        self.tx = None;
        match self.done.take() {
            Some(done) => match done.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(BackupError::protocol(
                    "the extractor finished before all archives were sent",
                )),
                Err(_) => Err(BackupError::ExtractorFailed),
            },
            None => Err(BackupError::ExtractorFailed),
        }
    }

    /// Resolves only if the extractor stopped on its own (always an error before `Finish`).
    /// Cancellation-safe.
    async fn failed_early(&mut self) -> BackupError {
        let Some(done) = self.done.as_mut().filter(|_| !self.finishing) else {
            return std::future::pending().await;
        };
        let result = done.await;
        self.done = None;
        self.tx = None;
        match result {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => BackupError::protocol("the extractor finished before it was told to"),
            Err(_) => BackupError::ExtractorFailed,
        }
    }

    /// The extractor's results after `Finish`.
    async fn outcome<A: Future<Output = AbortReason>>(
        &mut self,
        abort: &mut std::pin::Pin<&mut A>,
    ) -> Result<ExtractOutcome, BackupError> {
        let Some(done) = self.done.as_mut() else {
            return Err(BackupError::ExtractorFailed);
        };
        let result = tokio::select! {
            biased;
            reason = abort.as_mut() => return Err(BackupError::Aborted(reason)),
            r = done => r,
        };
        self.done = None;
        self.tx = None;
        self.gate.clear_wake();
        match result {
            Ok(r) => r,
            Err(_) => Err(BackupError::ExtractorFailed),
        }
    }
}

impl Drop for Extraction {
    fn drop(&mut self) {
        if self.done.is_none() && self.tx.is_none() {
            return; // finished (or failed) and collected
        }
        // Dropped mid-backup (error, abort, or the future itself was dropped): stop the thread
        // and wait until it no longer writes, so the caller may remove what it wrote.
        self.tx = None;
        if !self.gate.abort_and_wait(EXTRACTOR_STOP_TIMEOUT) {
            tracing::warn!("the extraction thread did not stop in time");
        }
    }
}

/// The extractor thread: archives one after the other, as the feed announces them.
fn extract_all(
    mut rx: mpsc::Receiver<Feed>,
    mut extractor: ArchiveExtractor,
    mut collector: Option<ChecksumCollector>,
    gate: &ExtractionGate,
) -> Result<ExtractOutcome, BackupError> {
    let mut archives = Vec::new();
    loop {
        if gate.is_aborted() {
            return Err(aborted_by_gate());
        }
        match rx.blocking_recv() {
            Some(Feed::Begin(kind)) => {
                let mut reader = FeedReader::new(&mut rx, gate);
                let summary = match collector.as_mut() {
                    Some(c) => extractor.extract_chunks(kind, &mut reader, c),
                    None => extractor.extract_chunks(kind, &mut reader, &mut ()),
                }
                .map_err(|e| {
                    if gate.is_aborted() {
                        aborted_by_gate()
                    } else {
                        BackupError::Extract(e)
                    }
                })?;
                reader.expect_end(kind)?;
                archives.push((kind, summary));
            }
            Some(Feed::Finish) => {
                return Ok(ExtractOutcome {
                    written: extractor.into_written(),
                    collector,
                    archives,
                })
            }
            Some(Feed::Abort) | None => return Err(aborted_by_gate()),
            Some(Feed::Data(_) | Feed::End) => {
                return Err(BackupError::protocol("archive data outside an archive"))
            }
        }
    }
}

fn aborted_by_gate() -> BackupError {
    BackupError::Aborted("the extraction was stopped".into())
}

/// A blocking [`Read`] over the feed for one archive: EOF at [`Feed::End`].
struct FeedReader<'a> {
    rx: &'a mut mpsc::Receiver<Feed>,
    /// Received, not yet read; never holds an empty `Bytes`.
    pending: VecDeque<Bytes>,
    ended: bool,
    gate: &'a ExtractionGate,
}

impl<'a> FeedReader<'a> {
    /// A reader for the archive whose `Begin` was just taken from `rx`.
    fn new(rx: &'a mut mpsc::Receiver<Feed>, gate: &'a ExtractionGate) -> Self {
        FeedReader {
            rx,
            pending: VecDeque::new(),
            ended: false,
            gate,
        }
    }

    /// After the extractor saw the end of the archive, nothing but the end may follow.
    fn expect_end(&mut self, kind: ArchiveKind) -> Result<(), BackupError> {
        let mut probe = [0u8; 1];
        match self.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(BackupError::protocol(format!(
                "data after the end of {}",
                archive_name(kind)
            ))),
            Err(_) => Err(aborted_by_gate()),
        }
    }
}

/// What the extractor's reads return once the backup is aborted.
fn feed_aborted() -> io::Error {
    io::Error::other("base backup aborted")
}

impl FeedReader<'_> {
    /// Waits for the next batch (or the end of the archive) when nothing is pending.
    fn refill(&mut self) -> io::Result<()> {
        match self.rx.blocking_recv() {
            Some(Feed::Data(batch)) => self
                .pending
                .extend(batch.into_iter().filter(|b| !b.is_empty())),
            Some(Feed::End) => self.ended = true,
            Some(Feed::Abort) | None => return Err(feed_aborted()),
            Some(Feed::Begin(_) | Feed::Finish) => {
                return Err(io::Error::other(
                    "the archive stream ended without its end marker",
                ))
            }
        }
        Ok(())
    }
}

impl Read for FeedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.gate.is_aborted() {
                return Err(feed_aborted());
            }
            // Fill as much of `buf` as is here: fewer, larger reads for the tar parser.
            let mut filled = 0;
            while filled < buf.len() {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                let n = (buf.len() - filled).min(front.len());
                buf[filled..filled + n].copy_from_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                filled += n;
            }
            if filled > 0 {
                return Ok(filled);
            }
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            self.refill()?;
        }
    }
}

impl ChunkRead for FeedReader<'_> {
    /// The payloads as they came off the network (or the first `max` bytes of one).
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        loop {
            if self.gate.is_aborted() {
                return Err(feed_aborted());
            }
            if let Some(front) = self.pending.front_mut() {
                if front.len() > max {
                    return Ok(front.split_to(max));
                }
                if let Some(chunk) = self.pending.pop_front() {
                    return Ok(chunk);
                }
            }
            if self.ended || max == 0 {
                return Ok(Bytes::new());
            }
            self.refill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn max_rate_like_pg_basebackup() {
        assert_eq!(parse_max_rate("32").unwrap(), 32);
        assert_eq!(parse_max_rate("100k").unwrap(), 100);
        assert_eq!(parse_max_rate(" 20 M ").unwrap(), 20 * 1024);
        assert_eq!(parse_max_rate("1.5M").unwrap(), 1536);
        assert_eq!(parse_max_rate("1024M").unwrap(), 1_048_576);
        assert_eq!(parse_max_rate("1048576").unwrap(), 1_048_576);
        assert!(matches!(
            parse_max_rate("31"),
            Err(BackupError::MaxRateRange(_))
        ));
        assert!(matches!(
            parse_max_rate("1025M"),
            Err(BackupError::MaxRateRange(_))
        ));
        assert!(matches!(
            parse_max_rate("0"),
            Err(BackupError::MaxRateNotPositive)
        ));
        assert!(matches!(
            parse_max_rate("-5"),
            Err(BackupError::MaxRateNotPositive)
        ));
        for bad in ["", "k", "abc", "10G", "10 kB", "10MM", "1e"] {
            assert!(
                matches!(parse_max_rate(bad), Err(BackupError::MaxRateSyntax(_))),
                "{bad}"
            );
        }
        let msg = parse_max_rate("8").unwrap_err().to_string();
        assert!(msg.contains("32 kB/s") && msg.contains("1048576"), "{msg}");
        assert!(validate_max_rate(32).is_ok());
        assert!(validate_max_rate(31).is_err());
        assert!(validate_max_rate(MAX_RATE_MAX_KB + 1).is_err());
    }

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

    fn rows(columns: &[&str], values: &[&[Option<&str>]]) -> Rows {
        Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: values
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                        .collect()
                })
                .collect(),
            described: true,
        }
    }

    #[test]
    fn header_rows() {
        let h = parse_header(&rows(
            &["spcoid", "spclocation", "size"],
            &[
                &[Some("16384"), Some("/srv/ts"), Some("100")],
                &[None, None, Some("2000")],
            ],
        ))
        .unwrap();
        assert_eq!(h[0].archive_kind(), ArchiveKind::Tablespace(16384));
        assert_eq!(h[1].archive_kind(), ArchiveKind::Base);
        assert_eq!(h[1].size_kb, Some(2000));
        // without PROGRESS the size is NULL
        let h = parse_header(&rows(
            &["spcoid", "spclocation", "size"],
            &[&[None, None, None]],
        ))
        .unwrap();
        assert_eq!(h[0].size_kb, None);
        for bad in [
            rows(&["spcoid", "spclocation", "size"], &[]),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[None, None, None], &[None, None, None]],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[Some("0"), Some("/x"), None], &[None, None, None]],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[Some("x"), Some("/x"), None], &[None, None, None]],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[Some("7"), None, None], &[None, None, None]],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[Some("7"), Some(""), None], &[None, None, None]],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[
                    &[Some("7"), Some("/a"), None],
                    &[Some("7"), Some("/b"), None],
                    &[None, None, None],
                ],
            ),
            rows(
                &["spcoid", "spclocation", "size"],
                &[&[None, None, Some("lots")]],
            ),
            rows(&["spcoid"], &[&[None]]),
        ] {
            assert!(
                matches!(parse_header(&bad), Err(BackupError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn positions() {
        let p = parse_position(
            &rows(&["recptr", "tli"], &[&[Some("0/2000028"), Some("1")]]),
            "start",
        )
        .unwrap();
        assert_eq!(p.lsn, Lsn(0x200_0028));
        assert_eq!(p.timeline, TimelineId(1));
        for bad in [
            rows(&["recptr", "tli"], &[]),
            rows(&["recptr"], &[&[Some("0/1")]]),
            rows(&["recptr", "tli"], &[&[Some("nope"), Some("1")]]),
            rows(&["recptr", "tli"], &[&[Some("0/1"), Some("0")]]),
            rows(&["recptr", "tli"], &[&[None, Some("1")]]),
            rows(
                &["recptr", "tli"],
                &[&[Some("0/1"), Some("1")], &[Some("0/2"), Some("1")]],
            ),
        ] {
            assert!(parse_position(&bad, "start").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn archive_names_match_header() {
        let header = vec![
            TablespaceHeader {
                oid: Some(16384),
                location: Some("/srv/ts".into()),
                size_kb: None,
            },
            TablespaceHeader {
                oid: None,
                location: None,
                size_kb: None,
            },
        ];
        assert_eq!(
            archive_for(&header, "base.tar", "").unwrap(),
            ArchiveKind::Base
        );
        assert_eq!(
            archive_for(&header, "16384.tar", "/srv/ts").unwrap(),
            ArchiveKind::Tablespace(16384)
        );
        assert!(archive_for(&header, "16384.tar", "/elsewhere").is_err());
        assert!(archive_for(&header, "16385.tar", "/srv/ts").is_err());
        assert!(archive_for(&header, "base.tar", "/srv/ts").is_err());
        assert!(archive_for(&header, "../x.tar", "").is_err());
        let mut seen = HashSet::new();
        seen.insert(ArchiveKind::Base);
        assert!(check_all_archives_seen(&header, &seen).is_err());
        seen.insert(ArchiveKind::Tablespace(16384));
        assert!(check_all_archives_seen(&header, &seen).is_ok());
    }

    #[test]
    fn manifest_cap() {
        let mut m = vec![0u8; MAX_MANIFEST_BYTES - 1];
        assert!(append_manifest(&mut m, b"x").is_ok());
        assert!(matches!(
            append_manifest(&mut m, b"y"),
            Err(BackupError::ManifestTooLarge)
        ));
    }

    #[test]
    fn gate_counts_and_wakes() {
        let gate = ExtractionGate::new();
        assert!(gate.wait_idle(Duration::from_millis(1)));
        let w = gate.enter();
        assert!(!gate.wait_idle(Duration::from_millis(20)));
        let g2 = gate.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(w);
            g2.is_aborted()
        });
        gate.abort();
        assert!(gate.wait_idle(Duration::from_secs(5)));
        assert!(t.join().unwrap());
    }

    #[test]
    fn feed_reader_stops_at_end_and_on_abort() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        rt.block_on(async {
            tx.send(Feed::Data(vec![Bytes::from_static(b"hello ")]))
                .await
                .unwrap();
            tx.send(Feed::Data(vec![Bytes::from_static(b"world")]))
                .await
                .unwrap();
            tx.send(Feed::End).await.unwrap();
        });
        let gate = ExtractionGate::new();
        let mut r = FeedReader::new(&mut rx, &gate);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        assert!(r.expect_end(ArchiveKind::Base).is_ok());
        drop(tx);
        let mut r = FeedReader::new(&mut rx, &gate);
        // sender gone without End: an error, never a clean end of archive
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    /// Batches (with empty payloads among them) read back as the same byte stream, whatever the
    /// reader's buffer size: reads fill across payload boundaries and never split the order.
    #[test]
    fn feed_reader_reads_batches_in_order_across_payloads() {
        let payloads: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7) * 3]))
            .collect();
        let expected: Vec<u8> = payloads.iter().flat_map(|b| b.iter().copied()).collect();
        for read_size in [1, 5, 64, 4096] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (tx, mut rx) = mpsc::channel(64);
            rt.block_on(async {
                for chunk in payloads.chunks(6) {
                    tx.send(Feed::Data(chunk.to_vec())).await.unwrap();
                }
                tx.send(Feed::Data(Vec::new())).await.unwrap();
                tx.send(Feed::End).await.unwrap();
            });
            let gate = ExtractionGate::new();
            let mut r = FeedReader::new(&mut rx, &gate);
            let mut got = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, expected, "read size {read_size}");
            assert!(r.pending.is_empty());
        }
    }

    proptest! {
        #[test]
        fn max_rate_never_panics(s in ".{0,20}") {
            if let Ok(kb) = parse_max_rate(&s) {
                prop_assert!((MAX_RATE_MIN_KB..=MAX_RATE_MAX_KB).contains(&kb));
            }
        }
    }
}
