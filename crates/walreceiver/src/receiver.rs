//! The WAL receiver: START_REPLICATION into an archive directory or a standby's `pg_wal`, forever.
//!
//! ```text
//!             ┌──────────── reconnect loop (backoff; transient vs definite errors) ────────────┐
//!             │ session: connect → IDENTIFY_SYSTEM → start position → history → START_REPLICATION │
//!             │                                                                                │
//!  server ──► network task ── validate page headers + record CRCs ── DiskRequest ──► disk task │
//!    ▲            │  keepalives, end of timeline (CopyDone + next TLI row)       (write, fsync, │
//!    │            │                                                               rename, hook) │
//!    └── 'r' ◄── Feedback state machine ◄── flush LSN (watch) ◄──────────────────────────┘    │
//!             └──────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! # Progress tracking (the invariant)
//! The flush position sent to the server is `min(durable, validated)`: bytes are only acknowledged
//! once the disk task has fsynced them (and the directory entry of a new file), and — with validation
//! on — once every record ending at or before that position passed its CRC check. A position beyond
//! what is on disk is never reported, so a server that recycles WAL on our say-so never loses any.
//!
//! Each session restarts at a segment boundary chosen from what is really on disk (see
//! [`crate::start`]), so a crash at any moment loses nothing and skips nothing.
//!
//! With an end position, whole messages are still written: the stream stops once the acknowledged
//! position reaches it, which for a position inside a record means once that record arrived
//! complete and passed its CRC.
//!
//! # How a stream ends
//! * End of timeline: CopyDone, then a row with the next timeline and its start — followed on the
//!   same connection (history file first).
//! * The server shuts down: after we confirmed everything it sent, the walsender sends
//!   CommandComplete *without* CopyDone and exits (`WalSndDone`) — transient, reconnect.
//! * Silence: an idle walsender sends nothing while we keep replying, so after
//!   [`SERVER_SILENCE_PING`] without a message we ask for a reply; no answer within
//!   [`SERVER_SILENCE_TIMEOUT`] means a dead connection — transient, reconnect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use walrelay_archive::Compression as ArchiveCompression;
use walrelay_client::error::sqlstate;
use walrelay_client::{ClientError, ConnectParams, Connection, ReplicationMode};
use walrelay_durable::Owner;
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::{Lsn, ReplicationMessage, SegmentId, TimelineId, WalSegmentSize};
use walrelay_wal::{ValidatorConfig, WalError, WalValidator};

use crate::disk_task::{DiskProgress, DiskRequest, DiskTask, DiskTaskConfig};
use crate::feedback::{Feedback, FeedbackConfig, FeedbackEvent, PgTimestamp};
use crate::start::{
    find_streaming_start, Layout, StartError, StartOptions, StartReason, StdWalDir, StreamStart,
};
use crate::stats::ReceiverStats;
use crate::writer::{
    BackgroundCompletion, CompletedSegment, HookError, SegmentCompletion, SegmentWriter,
    WriterConfig, WriterError, DEFAULT_COMPLETION_QUEUE,
};

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

/// Exit codes, distinct per class so that supervisors can tell them apart.
pub mod exit_code {
    /// Any other error (including a connection loss with `--no-loop`).
    pub const ERROR: i32 = 1;
    /// Connection refused definitely: authentication, pg_hba.conf, TLS, configuration.
    pub const CONNECTION: i32 = 3;
    /// The server cannot continue this stream: WAL removed, slot missing or invalidated, another
    /// system, a timeline that is not in the server's history.
    pub const SERVER_STATE: i32 = 4;
    /// The local directory: disk full, IO error, foreign or damaged files.
    pub const LOCAL: i32 = 5;
    /// The server sent WAL that failed validation.
    pub const INVALID_WAL: i32 = 6;
}

#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Writer(#[from] WriterError),
    #[error("invalid WAL from the server: {0}; nothing at or after this position was acknowledged — check the server and its storage")]
    InvalidWal(#[source] WalError),
    #[error("the server is a different cluster (system identifier {server}) than the WAL already received ({expected}); use a separate directory for each cluster")]
    SystemIdentifierMismatch { expected: u64, server: u64 },
    #[error("{0}")]
    ServerState(String),
    /// The walsender ended the stream with CommandComplete and no next timeline: what a server that
    /// shuts down cleanly does once we confirmed everything it sent (`WalSndDone` in walsender.c).
    #[error("the server ended streaming because it is shutting down; reconnect once it is back (walrelay does so unless --no-loop)")]
    ServerStopped,
    /// Nothing from the server for [`SERVER_SILENCE_TIMEOUT`], although asked for a reply.
    #[error("no message from the server for {0} s although a reply was requested; the connection is presumed dead (reconnecting unless --no-loop)")]
    ServerSilent(u64),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Local(String),
}

impl ReceiveError {
    /// Worth reconnecting for.
    pub fn is_transient(&self) -> bool {
        match self {
            ReceiveError::Client(e) => e.is_transient() || slot_in_use(e) || server_behind(e),
            ReceiveError::ServerStopped | ReceiveError::ServerSilent(_) => true,
            _ => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            ReceiveError::Client(e) if e.is_auth_failure() => exit_code::CONNECTION,
            ReceiveError::Client(ClientError::Tls { .. } | ClientError::Config(_)) => {
                exit_code::CONNECTION
            }
            ReceiveError::Client(_)
            | ReceiveError::Protocol(_)
            | ReceiveError::ServerStopped
            | ReceiveError::ServerSilent(_) => exit_code::ERROR,
            ReceiveError::Start(_) | ReceiveError::Writer(_) | ReceiveError::Local(_) => {
                exit_code::LOCAL
            }
            ReceiveError::InvalidWal(_) => exit_code::INVALID_WAL,
            ReceiveError::SystemIdentifierMismatch { .. } | ReceiveError::ServerState(_) => {
                exit_code::SERVER_STATE
            }
        }
    }
}

fn slot_in_use(e: &ClientError) -> bool {
    e.sqlstate() == Some(sqlstate::OBJECT_IN_USE)
}

fn server_behind(e: &ClientError) -> bool {
    e.server_error()
        .is_some_and(|s| s.message().contains("is ahead of the WAL flush position"))
}

/// Turns server errors that mean "this stream cannot continue here" into definite, explained errors.
fn classify_server_error(e: ClientError, slot: Option<&str>) -> ReceiveError {
    let Some(se) = e.server_error() else {
        return ReceiveError::Client(e);
    };
    let msg = se.message().to_string();
    let code = se.code().to_string();
    if msg.contains("has already been removed") {
        return ReceiveError::ServerState(match slot {
            // A slot keeps WAL unless the server invalidated it (max_slot_wal_keep_size, PG 13+) —
            // or the directory's WAL is older than the slot.
            Some(slot) => format!(
                "{msg}: replication slot \"{slot}\" did not keep it — the slot was invalidated (max_slot_wal_keep_size) or is younger than the WAL already received; drop and recreate the slot, then re-seed the standby or archive from a new base backup"
            ),
            None => format!(
                "{msg}: the server no longer has the WAL this stream needs — use a replication slot (-S) so it is kept, and re-seed the standby or archive from a new base backup"
            ),
        });
    }
    if code == sqlstate::UNDEFINED_OBJECT && msg.contains("replication slot") {
        return ReceiveError::ServerState(format!(
            "{msg}: create it with `walrelay receive --create-slot -S {}` or choose an existing slot",
            slot.unwrap_or("NAME")
        ));
    }
    if code == sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE && msg.contains("slot") {
        let detail = se.fields.detail.clone().unwrap_or_default();
        return ReceiveError::ServerState(format!(
            "{msg} {detail}: the slot was invalidated and the WAL it held is gone — drop and recreate the slot, then re-seed from a new base backup"
        ));
    }
    if msg.contains("is not in this server's history") {
        return ReceiveError::ServerState(format!(
            "{msg}: this server's history diverged from the WAL already received (was another server promoted?) — use a new directory or re-seed"
        ));
    }
    ReceiveError::Client(e)
}

fn invalidated_slot(slot: &str) -> ReceiveError {
    ReceiveError::ServerState(format!(
        "replication slot \"{slot}\" was invalidated (wal_status lost, see max_slot_wal_keep_size) and the WAL it held is gone: drop and recreate it (walrelay receive --drop-slot / --create-slot -S {slot}), then re-seed the standby or archive from a new base backup"
    ))
}

/// `pg_replication_slots.wal_status` of `slot` (PG 13+) over an ordinary SQL connection with the
/// same settings; `None` when that cannot be found out (no SQL access, older server, no such slot).
async fn slot_wal_status(params: &ConnectParams, slot: &str) -> Option<String> {
    let mut params = params.clone();
    params.replication = ReplicationMode::Off;
    let query = async {
        let mut conn = Connection::connect(&params).await.ok()?;
        let sql = format!(
            "SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = '{}'",
            slot.replace('\'', "''")
        );
        let res = conn.simple_query(&sql).await;
        conn.close().await;
        res.ok()?
            .first()
            .and_then(|r| r.get_idx(0, 0))
            .map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .ok()
        .flatten()
}

/// Runs until shutdown, the end position, or a definite error. Transient errors reconnect with
/// exponential backoff (unless `reconnect` is false).
pub async fn run(mut cfg: ReceiverConfig) -> Result<ReceiveSummary, ReceiveError> {
    let mut state = SessionState {
        start_override: cfg.start,
        system_identifier: cfg.expected_system_identifier,
        last_flushed: Lsn::INVALID,
        timeline: TimelineId::FIRST,
        archive_caught_up: false,
        streamed: false,
    };
    let mut delay = Duration::from_secs(1);
    loop {
        if *cfg.shutdown.borrow() {
            return Ok(summary(&cfg, &state, StopReason::Shutdown));
        }
        let began = Instant::now();
        state.streamed = false;
        let result = session(&mut cfg, &mut state).await;
        cfg.stats.set_connected(false);
        match result {
            Ok(stop) => return Ok(summary(&cfg, &state, stop)),
            Err(e) if e.is_transient() && cfg.reconnect => {
                // Back off only while sessions keep failing before they stream: a server restart
                // after hours (or seconds) of streaming is retried promptly every time.
                if state.streamed || began.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_secs(1);
                }
                warn!(error = %e, retry_in_secs = delay.as_secs(), "streaming interrupted; reconnecting");
                cfg.stats.reconnect();
                let mut shutdown = cfg.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                        return Ok(summary(&cfg, &state, StopReason::Shutdown));
                    }
                }
                delay = (delay * 2).min(cfg.max_reconnect_delay);
            }
            Err(e) => return Err(e),
        }
    }
}

fn summary(cfg: &ReceiverConfig, state: &SessionState, stop: StopReason) -> ReceiveSummary {
    ReceiveSummary {
        stop,
        flushed: state.last_flushed,
        timeline: state.timeline,
        reconnects: cfg.stats.snapshot().reconnects,
    }
}

/// What survives from one session to the next.
struct SessionState {
    start_override: Option<Lsn>,
    system_identifier: Option<u64>,
    last_flushed: Lsn,
    timeline: TimelineId,
    archive_caught_up: bool,
    /// The current session got as far as START_REPLICATION.
    streamed: bool,
}

/// Where to start and why.
struct Start {
    lsn: Lsn,
    timeline: TimelineId,
    why: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReceiveError> + Send + 'static,
) -> Result<T, ReceiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReceiveError::Local(format!("background task failed: {e}")))?
}

async fn session(
    cfg: &mut ReceiverConfig,
    state: &mut SessionState,
) -> Result<StopReason, ReceiveError> {
    let mut conn = Connection::connect(&cfg.connect).await?;
    let ident = conn.identify_system().await?;
    if let Some(expected) = state.system_identifier {
        if expected != ident.system_identifier {
            return Err(ReceiveError::SystemIdentifierMismatch {
                expected,
                server: ident.system_identifier,
            });
        }
    }
    let version = conn.server_version();
    let seg = conn.wal_segment_size().await?;
    let major = version.major();
    let page_magic = walrelay_wal::page_magic_for_major(major);
    if page_magic.is_none() && cfg.validate {
        return Err(ReceiveError::ServerState(format!(
            "PostgreSQL {major} is not supported (its WAL format is unknown to walrelay); supported: 10 to 18"
        )));
    }

    // What is on disk, read-only: a foreign or damaged directory is refused before anything in it
    // is touched.
    let on_disk = scan_directory(cfg, &ident, seg).await?;

    // Finish what an earlier run left half done (checksums, compression) — only in a directory
    // that passed the scan above.
    if let Target::Archive {
        dir,
        compression,
        checksums,
    } = &cfg.target
    {
        if !state.archive_caught_up {
            let (dir, compression, checksums, owner) =
                (dir.clone(), *compression, *checksums, cfg.owner);
            blocking(move || catch_up_archive(&dir, seg, compression, checksums, owner)).await?;
            state.archive_caught_up = true;
        }
    }

    let start = choose_start(cfg, state, &mut conn, &ident, seg, on_disk).await?;
    if start.timeline > ident.timeline {
        return Err(ReceiveError::ServerState(format!(
            "the WAL already received is on timeline {} but the server is on timeline {}: this is not the server (or a descendant of the server) that WAL came from",
            start.timeline, ident.timeline
        )));
    }
    state.system_identifier = Some(ident.system_identifier);
    info!(
        start = %start.lsn,
        timeline = %start.timeline,
        server_timeline = %ident.timeline,
        server_position = %ident.xlogpos,
        "starting WAL stream: {}",
        start.why
    );

    if let Some(tmp) = &cfg.temporary_slot {
        conn.create_physical_slot(tmp, true, true).await?;
    }

    let writer_cfg = match &cfg.target {
        Target::Archive { dir, .. } => {
            let mut w = WriterConfig::archive(dir, seg);
            w.owner = cfg.owner;
            w.sync = cfg.sync;
            w
        }
        Target::PgWal { pg_wal } => {
            let mut w = WriterConfig::pg_wal(pg_wal, seg);
            w.owner = cfg.owner;
            w.sync = cfg.sync;
            w
        }
    };
    let dir = cfg.target.dir().to_path_buf();
    let (target, stats) = (cfg.target.clone(), cfg.stats.clone());
    let (tli, lsn, owner) = (start.timeline, start.lsn, cfg.owner);
    let writer = blocking(move || {
        let mut w = SegmentWriter::new(writer_cfg, tli, lsn)?;
        // Checksums and compression of a completed segment overlap with writing the next one.
        let hook = CompletionHook {
            target,
            owner,
            stats,
        };
        let hook = BackgroundCompletion::spawn(hook, DEFAULT_COMPLETION_QUEUE).map_err(|e| {
            ReceiveError::Local(format!("could not start the segment archiving thread: {e}"))
        })?;
        w.set_completion_hook(hook);
        Ok(w)
    })
    .await?;
    // A synchronous standby's flush latency is every commit's latency on the primary: keep the
    // writer on the network task there (no thread hand-offs); elsewhere a disk thread lets network
    // and disk work overlap.
    let disk = if cfg.synchronous {
        DiskTask::inline(writer, cfg.disk)
    } else {
        DiskTask::spawn(writer, cfg.disk)
    };

    let result = stream(
        cfg,
        state,
        &mut conn,
        disk,
        start,
        seg,
        page_magic,
        ident.system_identifier,
        &dir,
    )
    .await;
    match result {
        Ok(stop) => {
            conn.close().await;
            Ok(stop)
        }
        Err(e) => Err(e),
    }
}

/// Where the directory says to resume (see [`crate::start`]); refuses WAL of another cluster or
/// segment size, and damaged files. Reads only.
///
/// In a standby's `pg_wal`, start discovery judges completeness by page headers. A segment that
/// ends with an `XLOG_SWITCH` record (`pg_switch_wal()`, `archive_timeout`, the end of every base
/// backup) is complete, but PostgreSQL 15 and later write its padding as all-zero pages — headers
/// included — so the page scan calls it partial and stops there. Streaming would then restart at
/// that old segment, which the server may long have removed. So a segment the page scan calls
/// partial is checked record by record, and if its WAL really runs to the segment end, the scan
/// continues after it.
async fn scan_directory(
    cfg: &ReceiverConfig,
    ident: &walrelay_client::IdentifySystem,
    seg: WalSegmentSize,
) -> Result<Option<StreamStart>, ReceiveError> {
    let opts = match &cfg.target {
        Target::Archive { .. } => StartOptions::archive(seg),
        Target::PgWal { .. } => StartOptions::pg_wal(seg),
    }
    .with_system_identifier(ident.system_identifier);
    let dir = cfg.target.dir().to_path_buf();
    blocking(move || scan_directory_blocking(&dir, opts)).await
}

/// [`scan_directory`] on the calling thread.
fn scan_directory_blocking(
    dir: &Path,
    mut opts: StartOptions,
) -> Result<Option<StreamStart>, ReceiveError> {
    let seg = opts.wal_segment_size;
    loop {
        let mut reader = StdWalDir::new(dir).with_uncompressed_size(|path, _| {
            walrelay_archive::uncompressed_size(path)
                .map(Some)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let entries = reader.list().map_err(|source| StartError::Io {
            file: dir.display().to_string(),
            source,
        })?;
        let found = find_streaming_start(&entries, &opts, &mut reader)?;
        if let Some(StreamStart {
            lsn,
            timeline,
            reason: StartReason::Partial { file, .. },
        }) = &found
        {
            let segment = SegmentId::new(*timeline, seg.segno(*lsn));
            if opts.layout == Layout::PgWal
                && complete_by_records(&dir.join(file), segment, seg, opts.system_identifier)
            {
                debug!(%file, "segment ends with an XLOG_SWITCH and its padding: complete");
                opts = opts.with_scan_from(segment.end_lsn(seg), *timeline);
                continue;
            }
        }
        return Ok(found);
    }
}

/// Whether the segment file at `path` holds valid WAL (headers and record CRCs) up to the segment
/// end. Any doubt (unreadable, damaged, ends early) is "no": the segment is then streamed again.
fn complete_by_records(
    path: &Path,
    segment: SegmentId,
    seg: WalSegmentSize,
    system_identifier: Option<u64>,
) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let mut check = walrelay_wal::SegmentCheck::new(seg);
    check.system_identifier = system_identifier;
    walrelay_wal::validate_segment_file(&bytes, segment, &check).is_ok_and(|r| r.is_complete())
}

/// Chooses the start: the directory, then an explicit `--start` (first session), then the slot, then
/// the server's current position. Always a segment boundary.
async fn choose_start(
    cfg: &ReceiverConfig,
    state: &mut SessionState,
    conn: &mut Connection,
    ident: &walrelay_client::IdentifySystem,
    seg: WalSegmentSize,
    on_disk: Option<StreamStart>,
) -> Result<Start, ReceiveError> {
    let from_override = state.start_override.take();
    if let Some(lsn) = from_override {
        let lsn = lsn.segment_start(seg.bytes());
        if let Some(s) = &on_disk {
            if lsn < s.lsn {
                warn!(requested = %lsn, on_disk = %s.lsn, "--start is before WAL already on disk; resuming from the directory instead");
            } else {
                return Ok(Start {
                    lsn,
                    timeline: ident.timeline,
                    why: format!("--start {lsn}"),
                });
            }
        } else {
            return Ok(Start {
                lsn,
                timeline: ident.timeline,
                why: format!("--start {lsn}"),
            });
        }
    }
    if let Some(s) = on_disk {
        return Ok(Start {
            lsn: s.lsn,
            timeline: s.timeline,
            why: s.reason.to_string(),
        });
    }
    if let Some(slot) = &cfg.slot {
        if conn.server_version().major() >= 15 {
            match conn.read_replication_slot(slot).await? {
                None => {
                    return Err(ReceiveError::ServerState(format!(
                        "replication slot \"{slot}\" does not exist: create it with `walrelay receive --create-slot -S {slot}` or choose an existing slot"
                    )))
                }
                Some(info) => {
                    if info.slot_type != "physical" {
                        return Err(ReceiveError::ServerState(format!(
                            "replication slot \"{slot}\" is a {} slot; walrelay needs a physical slot",
                            info.slot_type
                        )));
                    }
                    if let (Some(lsn), Some(tli)) = (info.restart_lsn, info.restart_tli) {
                        return Ok(Start {
                            lsn: lsn.segment_start(seg.bytes()),
                            timeline: tli,
                            why: format!("directory empty; slot \"{slot}\" restart_lsn {lsn}"),
                        });
                    }
                    // No restart_lsn: a slot created without reserving WAL, or one the server
                    // invalidated. Starting at the server's position is right for the first and
                    // would hide the loss for the second; only SQL tells them apart.
                    if slot_wal_status(&cfg.connect, slot).await.as_deref() == Some("lost") {
                        return Err(invalidated_slot(slot));
                    }
                }
            }
        }
    }
    Ok(Start {
        lsn: ident.xlogpos.segment_start(seg.bytes()),
        timeline: ident.timeline,
        why: format!("directory empty; server position {}", ident.xlogpos),
    })
}

/// What the stream reports when the disk task has ended; [`stream`] replaces it by the writer's
/// own error.
const DISK_STOPPED: &str = "the WAL disk task stopped";

fn disk_stopped() -> ReceiveError {
    ReceiveError::Local(DISK_STOPPED.into())
}

/// How one START_REPLICATION ended.
enum StreamEnd {
    Stop(StopReason),
    /// The timeline ended; continue on the next.
    Switch(walrelay_client::TimelineSwitch),
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    cfg: &mut ReceiverConfig,
    state: &mut SessionState,
    conn: &mut Connection,
    disk: DiskTask,
    start: Start,
    seg: WalSegmentSize,
    page_magic: Option<u16>,
    system_identifier: u64,
    dir: &Path,
) -> Result<StopReason, ReceiveError> {
    let mut timeline = start.timeline;
    let mut lsn = start.lsn;
    let mut disk = Some(disk);
    let outcome: Result<StopReason, ReceiveError> = async {
        loop {
            let d = disk.as_ref().ok_or_else(|| ReceiveError::Local("disk task gone".into()))?;
            // History first: a timeline's WAL is never on disk without its history file.
            if timeline.0 > 1 && !dir.join(timeline.history_file_name()).exists() {
                let (_, content) = conn.timeline_history(timeline).await?;
                d.send(DiskRequest::WriteHistory { timeline, content })
                    .await
                    .map_err(|_| disk_stopped())?;
            }
            let slot = cfg.slot.as_deref().or(cfg.temporary_slot.as_deref());
            conn.start_replication(slot, lsn, timeline)
                .await
                .map_err(|e| classify_server_error(e, cfg.slot.as_deref()))?;
            cfg.stats.set_connected(true);
            cfg.stats.set_timeline(timeline.0);
            state.streamed = true;
            state.timeline = timeline;
            let validator = if cfg.validate {
                Some(
                    WalValidator::new(ValidatorConfig {
                        segment_size: seg,
                        block_size: walrelay_wal::page::DEFAULT_XLOG_BLCKSZ,
                        page_magic,
                        system_identifier: Some(system_identifier),
                        timeline: Some(timeline),
                        start_lsn: lsn,
                    })
                    .map_err(ReceiveError::InvalidWal)?,
                )
            } else {
                None
            };
            match copy_both(cfg, state, conn, d, lsn, validator).await? {
                StreamEnd::Stop(reason) => return Ok(reason),
                StreamEnd::Switch(sw) => {
                    if sw.next_timeline <= timeline {
                        return Err(ReceiveError::Protocol(format!(
                            "server ended timeline {timeline} but named timeline {} as the next",
                            sw.next_timeline
                        )));
                    }
                    info!(from = %timeline, to = %sw.next_timeline, switch = %sw.next_start, "end of timeline; following the server to the next");
                    d.send(DiskRequest::SwitchTimeline {
                        timeline: sw.next_timeline,
                        switch_lsn: sw.next_start,
                    })
                    .await
                    .map_err(|_| disk_stopped())?;
                    timeline = sw.next_timeline;
                    lsn = sw.next_start.segment_start(seg.bytes());
                }
            }
        }
    }
    .await;
    // Always let the disk task finish what it has: a clean stop flushes, an error still makes the
    // received prefix durable (the next session resumes from it).
    let finished = match disk.take() {
        Some(d) => d.finish().await,
        None => Ok(state.last_flushed),
    };
    match (&outcome, finished) {
        (_, Ok(flushed)) => {
            state.last_flushed = state.last_flushed.max(flushed);
            cfg.stats.disk(flushed, flushed);
        }
        (Ok(_), Err(e)) => return Err(e.into()),
        // The stream stopped because the writer failed: its error (disk full, ...) is the cause.
        (Err(ReceiveError::Local(m)), Err(e)) if m == DISK_STOPPED => return Err(e.into()),
        (Err(_), Err(e)) => warn!(error = %e, "could not flush the WAL received before the error"),
    }
    outcome
}

/// One CopyBoth stream: read, validate, queue for disk, report.
async fn copy_both(
    cfg: &mut ReceiverConfig,
    state: &mut SessionState,
    conn: &mut Connection,
    disk: &DiskTask,
    start: Lsn,
    mut validator: Option<WalValidator>,
) -> Result<StreamEnd, ReceiveError> {
    let fb_config = match cfg.target {
        Target::Archive { .. } => FeedbackConfig::archive(
            cfg.status_interval,
            cfg.synchronous,
            cfg.slot.is_some() || cfg.temporary_slot.is_some(),
        ),
        Target::PgWal { .. } => {
            let mut c = FeedbackConfig::standby(cfg.status_interval);
            c.report_apply = cfg.apply_source.is_some();
            c
        }
    };
    let mut feedback = Feedback::new(fb_config, start);
    let mut progress = disk.progress();
    let mut next = start;
    let mut endpos_rx = cfg.endpos.clone();
    let mut shutdown = cfg.shutdown.clone();
    let mut apply_rx = spawn_apply_poller(cfg.apply_source.clone(), cfg.status_interval);
    let mut out = BytesMut::with_capacity(64);
    let mut endpos_reached = false;
    // When the server last said anything, and whether we asked it to since.
    let mut last_heard = Instant::now();
    let mut pinged = false;

    loop {
        let now = PgTimestamp::now();
        let silence_limit = if pinged {
            SERVER_SILENCE_TIMEOUT
        } else {
            SERVER_SILENCE_PING
        };
        let wait = feedback
            .until_next_tick(now)
            .unwrap_or(Duration::from_secs(3600))
            .min(silence_limit.saturating_sub(last_heard.elapsed()));
        tokio::select! {
            biased;
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                info!("shutdown requested; flushing and closing the stream");
                return finish_copy(conn, disk, &mut feedback, &mut progress, &validator, state, cfg, next, StopReason::Shutdown).await;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    // The disk task ended: its error comes from finish().
                    return Err(disk_stopped());
                }
                let p = *progress.borrow_and_update();
                cfg.stats.disk(p.write_lsn, p.flush_lsn);
                let ack = acknowledgeable(&p, &validator);
                if let Some(u) = feedback.disk_progress(p.write_lsn, ack, PgTimestamp::now()) {
                    send_update(conn, &mut out, &u, cfg).await?;
                }
                state.last_flushed = state.last_flushed.max(p.flush_lsn);
                if endpos_reached {
                    let end = endpos_rx.borrow().unwrap_or(Lsn(u64::MAX));
                    if ack >= end {
                        return finish_copy(conn, disk, &mut feedback, &mut progress, &validator, state, cfg, next, StopReason::EndPosition(end)).await;
                    }
                }
            }
            applied = apply_rx.changed(), if cfg.apply_source.is_some() => {
                if applied.is_ok() {
                    let a = *apply_rx.borrow_and_update();
                    if let Some(u) = feedback.step(FeedbackEvent::Applied(a), PgTimestamp::now()) {
                        send_update(conn, &mut out, &u, cfg).await?;
                    }
                }
            }
            _ = endpos_rx.changed(), if !endpos_reached => {
                let end = *endpos_rx.borrow_and_update();
                if let Some(end) = end {
                    if next >= end {
                        endpos_reached = true;
                        disk.send(DiskRequest::Flush).await.map_err(|_| disk_stopped())?;
                        let p = *progress.borrow();
                        if acknowledgeable(&p, &validator) >= end {
                            return finish_copy(conn, disk, &mut feedback, &mut progress, &validator, state, cfg, next, StopReason::EndPosition(end)).await;
                        }
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                let silent = last_heard.elapsed();
                if silent >= SERVER_SILENCE_TIMEOUT {
                    return Err(ReceiveError::ServerSilent(silent.as_secs()));
                }
                if !pinged && silent >= SERVER_SILENCE_PING {
                    // A walsender with nothing to send stays silent as long as we keep replying, so
                    // ask for a sign of life (what a walreceiver does at wal_receiver_timeout / 2).
                    let mut u = feedback.current(PgTimestamp::now());
                    u.reply_requested = true;
                    send_update(conn, &mut out, &u, cfg).await?;
                    pinged = true;
                }
                if let Some(u) = feedback.tick(PgTimestamp::now()) {
                    send_update(conn, &mut out, &u, cfg).await?;
                }
            }
            msg = conn.read_message() => {
                last_heard = Instant::now();
                pinged = false;
                match msg.map_err(|e| classify_server_error(e, cfg.slot.as_deref()))? {
                    BackendMessage::CopyData(payload) => {
                        cfg.stats.message();
                        let m = ReplicationMessage::parse(&payload)
                            .map_err(|e| ReceiveError::Protocol(e.to_string()))?;
                        match m {
                            ReplicationMessage::XLogData(x) => {
                                if x.data_start != next {
                                    return Err(ReceiveError::Protocol(format!(
                                        "server sent WAL at {} but the stream is at {next}", x.data_start
                                    )));
                                }
                                cfg.stats.server_end(x.wal_end);
                                // Whole messages are kept even past the end position: the record
                                // holding it can only be validated (and so acknowledged) once its
                                // last byte arrived, and pg_receivewal writes whole messages too.
                                let data = x.data;
                                if let Some(v) = validator.as_mut() {
                                    v.feed(next, &data).map_err(ReceiveError::InvalidWal)?;
                                }
                                let len = data.len() as u64;
                                if len > 0 {
                                    disk.send(DiskRequest::Write { lsn: next, data })
                                        .await
                                        .map_err(|_| disk_stopped())?;
                                    // Waiting for a slow disk (backpressure) is not server silence:
                                    // the server's next messages wait in the socket meanwhile.
                                    last_heard = Instant::now();
                                }
                                next = Lsn(next.0 + len);
                                cfg.stats.received(next, len);
                                if !endpos_reached && endpos_rx.borrow().is_some_and(|end| next >= end) {
                                    endpos_reached = true;
                                    disk.send(DiskRequest::Flush).await.map_err(|_| disk_stopped())?;
                                }
                            }
                            ReplicationMessage::PrimaryKeepalive(k) => {
                                cfg.stats.server_end(k.wal_end);
                                if k.reply_requested {
                                    // Reply with everything received durable, as pg_receivewal
                                    // does (an inline disk task flushes now; a disk thread has
                                    // published what it has).
                                    disk.settle().map_err(|_| disk_stopped())?;
                                    let p = *progress.borrow();
                                    let _ = feedback.disk_progress(p.write_lsn, acknowledgeable(&p, &validator), PgTimestamp::now());
                                }
                                if let Some(u) = feedback.step(
                                    FeedbackEvent::Keepalive { wal_end: k.wal_end, reply_requested: k.reply_requested },
                                    PgTimestamp::now(),
                                ) {
                                    send_update(conn, &mut out, &u, cfg).await?;
                                }
                            }
                        }
                        if !conn.has_buffered_message() {
                            // Nothing more at hand: an inline disk task fsyncs now, one fsync for
                            // every message read so far (group commit). Also after a keepalive:
                            // WAL read just before it must not wait for the next WAL to be flushed.
                            disk.settle().map_err(|_| disk_stopped())?;
                        }
                    }
                    BackendMessage::CopyDone => {
                        // End of timeline (or the server stopping). Acknowledge and read what follows.
                        conn.queue_copy_done();
                        conn.flush().await?;
                        let switch = conn.finish_replication().await
                            .map_err(|e| classify_server_error(e, cfg.slot.as_deref()))?;
                        disk.send(DiskRequest::Flush).await.map_err(|_| disk_stopped())?;
                        return match switch {
                            Some(sw) => Ok(StreamEnd::Switch(sw)),
                            None => Err(ReceiveError::Client(ClientError::Closed)),
                        };
                    }
                    BackendMessage::CommandComplete { .. } => {
                        // A walsender shutting down cleanly sends CommandComplete without CopyDone
                        // (walsender.c, WalSndDone) and exits; libpq's PQgetCopyData reports that as
                        // the end of the copy too. Everything queued is made durable by the caller.
                        disk.send(DiskRequest::Flush).await.map_err(|_| disk_stopped())?;
                        return Err(ReceiveError::ServerStopped);
                    }
                    BackendMessage::ErrorResponse(e) => {
                        let _ = conn.drain_until_ready().await;
                        return Err(classify_server_error(ClientError::server(e), cfg.slot.as_deref()));
                    }
                    other => {
                        return Err(ReceiveError::Protocol(format!(
                            "unexpected {} during streaming",
                            walrelay_client::connection::message_name(&other)
                        )));
                    }
                }
            }
        }
    }
}

/// The position that may be acknowledged: durable and (if validating) validated.
fn acknowledgeable(p: &DiskProgress, validator: &Option<WalValidator>) -> Lsn {
    match validator {
        Some(v) => p.flush_lsn.min(v.validated_lsn()),
        None => p.flush_lsn,
    }
}

async fn send_update(
    conn: &mut Connection,
    out: &mut BytesMut,
    u: &crate::feedback::StandbyStatusUpdate,
    cfg: &ReceiverConfig,
) -> Result<(), ReceiveError> {
    out.clear();
    walrelay_protocol::StandbyStatusUpdate {
        write_lsn: u.write_lsn,
        flush_lsn: u.flush_lsn,
        apply_lsn: u.apply_lsn,
        client_time: u.client_time_micros,
        reply_requested: u.reply_requested,
    }
    .encode(out);
    conn.queue_copy_data(out);
    conn.flush().await?;
    cfg.stats.reported(u.flush_lsn);
    debug!(write = %u.write_lsn, flush = %u.flush_lsn, apply = %u.apply_lsn, "status update sent");
    Ok(())
}

/// Clean end of a stream: everything durable, the final position reported, COPY ended.
#[allow(clippy::too_many_arguments)]
async fn finish_copy(
    conn: &mut Connection,
    disk: &DiskTask,
    feedback: &mut Feedback,
    progress: &mut watch::Receiver<DiskProgress>,
    validator: &Option<WalValidator>,
    state: &mut SessionState,
    cfg: &ReceiverConfig,
    received: Lsn,
    reason: StopReason,
) -> Result<StreamEnd, ReceiveError> {
    disk.send(DiskRequest::Flush)
        .await
        .map_err(|_| disk_stopped())?;
    // Wait until everything received is durable, so the final status update reports all of it. A
    // published flush position that merely catches up with the write position is not enough: the
    // disk task may not have taken the last writes off the queue yet.
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    loop {
        let p = *progress.borrow_and_update();
        if p.flush_lsn >= received {
            break;
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() { break },
            _ = &mut deadline => break,
        }
    }
    let p = *progress.borrow();
    state.last_flushed = state.last_flushed.max(p.flush_lsn);
    let now = PgTimestamp::now();
    let _ = feedback.disk_progress(p.write_lsn, acknowledgeable(&p, validator), now);
    let mut out = BytesMut::new();
    let update = feedback.current(now);
    let _ = send_update(conn, &mut out, &update, cfg).await;
    conn.queue_copy_done();
    let _ = conn.flush().await;
    // Read the server's CopyDone / CommandComplete; a server that already went away is fine here.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.finish_replication()).await;
    Ok(StreamEnd::Stop(reason))
}

/// Polls the standby's replay position (pg_wal mode) so `remote_apply` and replay lag work.
fn spawn_apply_poller(source: Option<ConnectParams>, interval: Duration) -> watch::Receiver<Lsn> {
    let (tx, rx) = watch::channel(Lsn::INVALID);
    if let Some(mut params) = source {
        params.replication = ReplicationMode::Off;
        let period = if interval.is_zero() {
            Duration::from_secs(1)
        } else {
            interval.min(Duration::from_secs(1))
        };
        tokio::spawn(async move {
            let mut conn: Option<Connection> = None;
            loop {
                if tx.is_closed() {
                    return;
                }
                if conn.is_none() {
                    conn = Connection::connect(&params).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    match c.simple_query("SELECT pg_last_wal_replay_lsn()").await {
                        Ok(res) => {
                            if let Some(lsn) = res
                                .first()
                                .and_then(|r| r.get_idx(0, 0))
                                .and_then(|v| v.parse::<Lsn>().ok())
                            {
                                tx.send_if_modified(|cur| {
                                    let changed = lsn > *cur;
                                    if changed {
                                        *cur = lsn;
                                    }
                                    changed
                                });
                            }
                        }
                        Err(_) => conn = None,
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
    }
    rx
}

/// Archive mode: after a segment is complete and durable, record its checksum and compress it.
struct CompletionHook {
    target: Target,
    owner: Owner,
    stats: Arc<ReceiverStats>,
}

impl SegmentCompletion for CompletionHook {
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError> {
        self.stats.segment_completed();
        if let Target::Archive {
            dir,
            compression,
            checksums,
        } = &self.target
        {
            archive_segment(
                dir,
                &segment.file_name,
                *compression,
                *checksums,
                self.owner,
            )?;
        }
        Ok(())
    }
}

fn archive_segment(
    dir: &Path,
    name: &str,
    compression: ArchiveCompression,
    checksums: bool,
    owner: Owner,
) -> Result<(), HookError> {
    if checksums {
        let sum = walrelay_archive::segment_sha256(&dir.join(name))?;
        walrelay_archive::record_checksum(dir, name, &sum)?;
    }
    if compression != ArchiveCompression::None {
        walrelay_archive::compress_completed_segment(dir, name, compression, owner)?;
    }
    Ok(())
}

/// Finishes what a crash or a failed hook left: temp files, complete plain segments not yet
/// compressed or checksummed.
fn catch_up_archive(
    dir: &Path,
    seg: WalSegmentSize,
    compression: ArchiveCompression,
    checksums: bool,
    owner: Owner,
) -> Result<(), ReceiveError> {
    if !dir.is_dir() {
        return Err(ReceiveError::Local(format!(
            "archive directory {} does not exist: create it first (mkdir -p)",
            dir.display()
        )));
    }
    let local = |e: walrelay_archive::ArchiveError| ReceiveError::Local(e.to_string());
    walrelay_archive::cleanup(dir, seg).map_err(local)?;
    let known: std::collections::BTreeSet<String> = if checksums {
        walrelay_archive::read_checksums(dir)
            .map_err(local)?
            .entries
            .into_keys()
            .collect()
    } else {
        Default::default()
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ReceiveError::Local(format!("could not list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            matches!(
                walrelay_protocol::WalFileName::parse(n),
                Some(walrelay_protocol::WalFileName::Segment {
                    compression: None,
                    partial: false,
                    ..
                })
            )
        })
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len != seg.as_u64() {
            continue;
        }
        let needs_sum = checksums && !known.contains(&name);
        if needs_sum || compression != ArchiveCompression::None {
            info!(segment = %name, "finishing archiving of a segment completed by an earlier run");
            archive_segment(dir, &name, compression, needs_sum, owner)
                .map_err(|e| ReceiveError::Local(format!("archive {name}: {e}")))?;
        }
    }
    Ok(())
}

/// The segment holding `lsn` on `timeline`.
pub fn segment_of(lsn: Lsn, timeline: TimelineId, seg: WalSegmentSize) -> SegmentId {
    SegmentId::new(timeline, seg.segno(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_protocol::ErrorFields;
    use walrelay_wal::synth::{SynthConfig, WalBuilder};

    const MB: u64 = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB).unwrap()
    }

    fn server_error(code: &str, message: &str) -> ClientError {
        ClientError::server(ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        })
    }

    /// Segment `segno` (1 MB) holding a few records; ends with `XLOG_SWITCH` and its zeroed
    /// padding (PostgreSQL 15), or with zeros where WAL never arrived.
    fn segment(segno: u64, ends_with_switch: bool) -> Vec<u8> {
        let start = Lsn(segno * MB);
        let mut b = WalBuilder::new(SynthConfig::default(), start);
        for i in 0..20u8 {
            b.record(0x0A, 0x00, &[i; 300]);
        }
        if ends_with_switch {
            b.switch();
        } else {
            b.zero_fill_to(Lsn(start.0 + MB));
        }
        let bytes = b.into_bytes();
        assert_eq!(bytes.len() as u64, MB);
        bytes
    }

    fn pg_wal_with(files: &[(u64, bool)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for &(segno, switch) in files {
            let name =
                SegmentId::new(TimelineId(1), walrelay_protocol::XLogSegNo(segno)).file_name(seg());
            std::fs::write(d.path().join(name), segment(segno, switch)).unwrap();
        }
        d
    }

    fn pg_wal_opts() -> StartOptions {
        StartOptions::pg_wal(seg()).with_system_identifier(SynthConfig::default().system_identifier)
    }

    #[test]
    fn a_switch_ended_segment_is_complete_by_its_records() {
        let d = pg_wal_with(&[(3, true), (4, false)]);
        let sysid = Some(SynthConfig::default().system_identifier);
        let id = |n| SegmentId::new(TimelineId(1), walrelay_protocol::XLogSegNo(n));
        let path = |n| d.path().join(id(n).file_name(seg()));
        assert!(complete_by_records(&path(3), id(3), seg(), sysid));
        assert!(!complete_by_records(&path(4), id(4), seg(), sysid));
        assert!(
            !complete_by_records(&path(5), id(5), seg(), sysid),
            "missing file"
        );
        // Another cluster's segment is not "complete" for us.
        assert!(!complete_by_records(&path(3), id(3), seg(), Some(1)));
    }

    #[test]
    fn pg_wal_scan_continues_past_switch_ended_segments() {
        // What a standby's pg_wal looks like after a base backup (ends with the backup's switch)
        // and some streaming: resume in segment 5, not at the backup's segment 3.
        let d = pg_wal_with(&[(3, true), (4, true), (5, false)]);
        let start = scan_directory_blocking(d.path(), pg_wal_opts())
            .unwrap()
            .unwrap();
        assert_eq!(start.lsn, Lsn(5 * MB), "{start}");
        assert!(
            matches!(start.reason, StartReason::Partial { .. }),
            "{start}"
        );

        // Only switch-ended segments: streaming continues after the last one.
        let d = pg_wal_with(&[(3, true)]);
        let start = scan_directory_blocking(d.path(), pg_wal_opts())
            .unwrap()
            .unwrap();
        assert_eq!(start.lsn, Lsn(4 * MB), "{start}");
    }

    #[test]
    fn archive_scan_is_not_changed_by_the_record_check() {
        // In an archive a file is complete by its name; a .partial is restarted from its start
        // even when its content happens to end with a switch (pg_receivewal's rule).
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("000000010000000000000003.partial"),
            segment(3, true),
        )
        .unwrap();
        let opts = StartOptions::archive(seg())
            .with_system_identifier(SynthConfig::default().system_identifier);
        let start = scan_directory_blocking(d.path(), opts).unwrap().unwrap();
        assert_eq!(start.lsn, Lsn(3 * MB), "{start}");
    }

    #[test]
    fn removed_wal_is_explained_with_and_without_a_slot() {
        let removed = || {
            server_error(
                "58P01",
                "requested WAL segment 000000010000000000000007 has already been removed",
            )
        };
        let with_slot = classify_server_error(removed(), Some("s1")).to_string();
        assert!(
            with_slot.contains("\"s1\"") && with_slot.contains("invalidated"),
            "{with_slot}"
        );
        assert!(!with_slot.contains("use a replication slot"), "{with_slot}");
        let without = classify_server_error(removed(), None).to_string();
        assert!(without.contains("use a replication slot (-S)"), "{without}");
        let e = classify_server_error(removed(), None);
        assert!(!e.is_transient());
        assert_eq!(e.exit_code(), exit_code::SERVER_STATE);
        let unknown = classify_server_error(
            server_error(
                sqlstate::UNDEFINED_OBJECT,
                "replication slot \"nope\" does not exist",
            ),
            Some("nope"),
        );
        assert!(
            unknown.to_string().contains("--create-slot -S nope"),
            "{unknown}"
        );
        assert!(invalidated_slot("s2")
            .to_string()
            .contains("--create-slot -S s2"));
        assert_eq!(invalidated_slot("s2").exit_code(), exit_code::SERVER_STATE);
    }

    #[test]
    fn server_shutdown_and_silence_are_transient() {
        for e in [ReceiveError::ServerStopped, ReceiveError::ServerSilent(60)] {
            assert!(e.is_transient(), "{e}");
            assert_eq!(e.exit_code(), exit_code::ERROR);
            assert!(!e.to_string().contains('\n'));
        }
        assert!(SERVER_SILENCE_PING < SERVER_SILENCE_TIMEOUT);
    }
}
