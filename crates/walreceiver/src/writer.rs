//! [`SegmentWriter`]: puts the WAL bytes of a physical replication stream into segment files.
//!
//! The writer is plain blocking `std::fs` code, meant to run on its own thread (the disk task, see
//! [`crate::disk_task`]) while the network task keeps reading; it never touches a socket. It receives
//! contiguous chunks, `(Lsn, bytes)`, in stream order and keeps three positions, as PostgreSQL's
//! walreceiver and neon's safekeeper do:
//!
//! * `next_lsn` — the end of what was received (some of it may sit in the user-space buffer),
//! * [`write_lsn`](SegmentWriter::write_lsn) — the end of what was handed to the kernel,
//! * [`flush_lsn`](SegmentWriter::flush_lsn) — the end of what is durable: the file data is fsynced
//!   *and* the directory entry of every file created since is fsynced.
//!
//! # Invariants
//!
//! * `flush_lsn` only moves after the fsyncs it depends on succeeded. A failed write or fsync returns
//!   an error and poisons the writer: every later call fails. Retrying an fsync after a failure is
//!   unsafe — Linux may have dropped the dirty pages and a second fsync reports success (PostgreSQL's
//!   2018 "fsyncgate") — and a failed write leaves the bytes past `write_lsn` undefined. Recovery is a
//!   restart: start discovery ([`crate::find_streaming_start`]) rewinds to the start of the segment.
//! * Archive layout: a segment gets its final name only when it holds exactly `wal_segment_size`
//!   bytes, all fsynced; the rename is followed by a directory fsync. Until then it is `NAME.partial`.
//! * pg_wal layout: files carry their real names from the start (the standby reads them directly), so
//!   "complete" cannot be told from the name or size; resume validates content instead. Completion is
//!   recorded the way a walreceiver does it: `archive_status/NAME.done` (or `.ready` with
//!   `archive_mode = always`).
//!
//! # Writing beside a running standby (pg_wal layout)
//!
//! The standby's startup process reads segment files while they are written; it validates page headers
//! and record CRCs, so a half-written segment only looks like "no more WAL yet". Its checkpointer
//! recycles old segments by renaming them to future names, but only to names that do not exist
//! (`InstallXLogFileSegment` looks for a free name); an existing file is never replaced. walrelay
//! cannot take the server's `ControlFileLock`, so a rename racing with our creation of the same name is
//! possible in principle; the consequence is a segment with stale content, which resume detects by its
//! page headers and streams again.
//!
//! # Preallocation
//!
//! A new segment file is padded to full size with zeros before any WAL goes in, like pg_receivewal
//! (`walmethods.c`, `pad_to_size`) and the server (`XLogFileInit`): disk space is claimed up front, so
//! `ENOSPC` shows at segment start instead of in the middle; later `fdatasync`s do not change the file
//! size, so they need no metadata journal commit; and a directory written by pg_receivewal can be
//! resumed by walrelay and vice versa. The price is that the file size says nothing about how much was
//! received — which is why resume always restarts a partial segment at its beginning, and pg_wal
//! discovery reads page headers.
//!
//! Reference: `src/bin/pg_basebackup/receivelog.c` (`ProcessXLogDataMsg`, `close_walfile`),
//! `src/backend/replication/walreceiver.c` (`XLogWalRcvWrite`, `XLogWalRcvFlush`, `XLogWalRcvClose`).

use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{debug, info};
use walrelay_durable::{self as durable, CreateModes, DurableError, Owner};
use walrelay_protocol::history::HistoryError;
use walrelay_protocol::segment::Compression;
use walrelay_protocol::{Lsn, SegmentId, TimelineHistory, TimelineId, WalSegmentSize, XLogSegNo};

use crate::fs::{SegmentFile, StdFs, WalFs};

/// Data is handed to the kernel in writes of at least this many bytes (or at segment end / flush).
/// The walsender sends at most 128 kB per XLogData message (`MAX_SEND_SIZE`), so big messages go
/// straight through and only trickles are coalesced.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 128 * 1024;
/// Mode of segment, history and status files (`pg_file_create_mode` without group access).
pub const DEFAULT_FILE_MODE: u32 = CreateModes::OWNER_ONLY.file;
/// Mode of an `archive_status` directory walrelay has to create.
const STATUS_DIR_MODE: u32 = CreateModes::OWNER_ONLY.dir;
/// pg_receivewal's suffix for a segment still being received.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Largest zero-fill write when preallocating a segment. Not larger: on the Linux 6.18 virtual
/// machine we measured, writes of 1 MB and more into new files cost several times the kernel CPU of
/// writes of 512 kB or less for the same bytes (docs/benchmarks.md, "Fixes").
const PAD_CHUNK: usize = 256 * 1024;
/// Bytes written into a segment after which their writeback is started ([`WriterConfig::writeback_after`]).
/// PostgreSQL's `wal_writer_flush_after` default. Smaller costs more system calls per segment; larger
/// leaves the device idle longer while a segment fills.
pub const DEFAULT_WRITEBACK_AFTER: u64 = 1024 * 1024;

/// [`DEFAULT_WRITEBACK_AFTER`], or 0 (no hints) without [`durable::page_cache_hints_on`].
fn writeback_after_default() -> u64 {
    if durable::page_cache_hints_on() {
        DEFAULT_WRITEBACK_AFTER
    } else {
        0
    }
}

/// What a walreceiver writes into `archive_status` for a segment it finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveStatusMarker {
    /// `NAME.done`: the standby's archiver must not archive it (`XLogArchiveForceDone`, any
    /// `archive_mode` but `always`).
    #[default]
    Done,
    /// `NAME.ready`: the standby archives it itself (`XLogArchiveNotify`, `archive_mode = always`).
    Ready,
}

/// Where segments go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// pg_receivewal's layout: `NAME.partial` while in progress, renamed to `NAME` when complete.
    Archive { dir: PathBuf },
    /// A standby's `PGDATA/pg_wal`: real names from the start, a status marker on completion.
    PgWal {
        pg_wal: PathBuf,
        status: ArchiveStatusMarker,
    },
}

impl Destination {
    /// The directory segments are written to.
    pub fn dir(&self) -> &Path {
        match self {
            Destination::Archive { dir } => dir,
            Destination::PgWal { pg_wal, .. } => pg_wal,
        }
    }
}

/// How a [`SegmentWriter`] lays out files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    pub destination: Destination,
    pub wal_segment_size: WalSegmentSize,
    /// Owner of created files (the data directory's owner when running as root in pg_wal mode).
    pub owner: Owner,
    /// Mode of created files.
    pub file_mode: u32,
    /// Mode of a created `archive_status` directory (pg_wal layout).
    pub dir_mode: u32,
    /// Coalescing threshold, see [`DEFAULT_WRITE_BUFFER_SIZE`].
    pub write_buffer_size: usize,
    /// fsync on [`SegmentWriter::flush`] (`--no-sync` turns it off: positions are then reported as
    /// flushed once written, as pg_receivewal `--no-sync` does; completed segments are still fsynced
    /// before their rename).
    pub sync: bool,
    /// Once this many bytes were written into the open segment since its last fsync or hint, their
    /// writeback is started (`sync_file_range`), so the device writes a segment while it fills and
    /// the fsync that completes it has little left to do. pg_receivewal leaves all 16 MB to that
    /// fsync; during a catch-up the disk then idles while a segment fills and the writer idles
    /// while it is flushed. 0: no hints. Changes nothing about what is durable when.
    pub writeback_after: u64,
}

impl WriterConfig {
    /// pg_receivewal layout in `dir`, files owned by the running user.
    pub fn archive(dir: impl Into<PathBuf>, wal_segment_size: WalSegmentSize) -> Self {
        WriterConfig {
            destination: Destination::Archive { dir: dir.into() },
            wal_segment_size,
            owner: Owner::current(),
            file_mode: DEFAULT_FILE_MODE,
            dir_mode: STATUS_DIR_MODE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            sync: true,
            writeback_after: writeback_after_default(),
        }
    }

    /// A standby's `pg_wal`, files owned by its owner when running as root, `.done` markers. Modes
    /// follow the directory as PostgreSQL's own files do: 0640 where `pg_wal` grants the group
    /// access (a cluster with group access), else 0600.
    pub fn pg_wal(pg_wal: impl Into<PathBuf>, wal_segment_size: WalSegmentSize) -> Self {
        let pg_wal = pg_wal.into();
        let modes = CreateModes::of_dir(&pg_wal);
        WriterConfig {
            owner: Owner::of_dir_if_root(&pg_wal),
            destination: Destination::PgWal {
                pg_wal,
                status: ArchiveStatusMarker::Done,
            },
            wal_segment_size,
            file_mode: modes.file,
            dir_mode: modes.dir,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            sync: true,
            writeback_after: writeback_after_default(),
        }
    }
}

/// A segment that just got complete and durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedSegment {
    pub segment: SegmentId,
    /// The 24-character segment name.
    pub file_name: String,
    /// Its final path.
    pub path: PathBuf,
    /// First LSN after the segment.
    pub end_lsn: Lsn,
}

/// Error type of completion hooks.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Called after a segment is complete and durable under its final name, and after a history file was
/// written: where the archive crate compresses, checksums or uploads.
///
/// A hook error poisons the writer (the segment itself stays complete and durable). On restart the
/// stream resumes *after* that segment, so a hook that must not miss a segment has to catch up on its
/// own at startup (e.g. by scanning for complete files it has not processed).
pub trait SegmentCompletion: Send {
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError>;

    fn history_written(&mut self, timeline: TimelineId, path: &Path) -> Result<(), HookError> {
        let _ = (timeline, path);
        Ok(())
    }

    /// Called by [`SegmentWriter::close`] after the final flush: a hook that defers work (see
    /// [`BackgroundCompletion`]) finishes it here and reports what failed.
    fn finished(&mut self) -> Result<(), HookError> {
        Ok(())
    }
}

/// Completed segments a [`BackgroundCompletion`] lets wait for its hook before the writer waits.
pub const DEFAULT_COMPLETION_QUEUE: usize = 2;

/// Runs a [`SegmentCompletion`] hook on a thread of its own, so that slow work on a completed
/// segment (its SHA-256 checksum, compression) overlaps with receiving and writing the next one
/// instead of stalling the disk task — and with it the network reader — for every segment.
///
/// * Events reach the hook in the writer's order. At most `depth` completed segments wait for it;
///   then the writer waits (backpressure), so plain segments never pile up unarchived.
/// * The segment is complete and durable before the hook hears of it, exactly as with a hook called
///   inline; flush positions never depend on the hook.
/// * A hook error is reported by the writer's next call into the hook (the next completed segment
///   or history file) or by [`SegmentWriter::close`], and poisons the writer then, naming the file
///   the hook failed on. As with an inline hook, a restart must catch up on that file.
/// * [`finished`](SegmentCompletion::finished) (called by `close`) and `Drop` wait until the hook
///   has processed everything queued.
pub struct BackgroundCompletion {
    tx: Option<std::sync::mpsc::SyncSender<CompletionEvent>>,
    worker: Option<std::thread::JoinHandle<Result<(), HookError>>>,
}

enum CompletionEvent {
    Segment(CompletedSegment),
    History(TimelineId, PathBuf),
}

/// A hook failure reported after the fact, naming the file it was about.
#[derive(Debug, Error)]
#[error("archiving {file} failed: {source}")]
pub struct DeferredCompletionError {
    pub file: String,
    #[source]
    pub source: HookError,
}

impl BackgroundCompletion {
    /// Starts the thread that runs `hook`, with room for `depth` (at least 1) waiting segments.
    pub fn spawn(
        mut hook: impl SegmentCompletion + 'static,
        depth: usize,
    ) -> std::io::Result<BackgroundCompletion> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<CompletionEvent>(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("walrelay-archive".into())
            .spawn(move || -> Result<(), HookError> {
                // Ends when the writer closes the queue, or at the first error (which drops the
                // receiver, so the writer's next send fails and collects this result).
                for event in rx {
                    let (file, result) = match event {
                        CompletionEvent::Segment(s) => {
                            let r = hook.segment_completed(&s);
                            (s.file_name, r)
                        }
                        CompletionEvent::History(timeline, path) => {
                            let r = hook.history_written(timeline, &path);
                            (path.display().to_string(), r)
                        }
                    };
                    result.map_err(|source| DeferredCompletionError { file, source })?;
                }
                hook.finished()
            })?;
        Ok(BackgroundCompletion {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    fn send(&mut self, event: CompletionEvent) -> Result<(), HookError> {
        if let Some(tx) = &self.tx {
            if tx.send(event).is_ok() {
                return Ok(());
            }
        }
        // The thread stopped taking events: only an error stops it early, and its result says which.
        match self.join() {
            Err(e) => Err(e),
            Ok(()) => Err("the segment archiving thread has stopped".into()),
        }
    }

    /// Closes the queue and waits until the hook processed everything in it.
    fn join(&mut self) -> Result<(), HookError> {
        self.tx = None;
        match self.worker.take() {
            None => Ok(()),
            Some(worker) => match worker.join() {
                Ok(result) => result,
                Err(_) => Err("the segment archiving thread panicked".into()),
            },
        }
    }
}

impl SegmentCompletion for BackgroundCompletion {
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError> {
        self.send(CompletionEvent::Segment(segment.clone()))
    }

    fn history_written(&mut self, timeline: TimelineId, path: &Path) -> Result<(), HookError> {
        self.send(CompletionEvent::History(timeline, path.to_path_buf()))
    }

    fn finished(&mut self) -> Result<(), HookError> {
        self.join()
    }
}

impl Drop for BackgroundCompletion {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!(error = %e, "archiving of completed segments stopped with an error; a restart finishes it");
        }
    }
}

impl std::fmt::Debug for BackgroundCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundCompletion")
            .field("running", &self.worker.is_some())
            .finish()
    }
}

impl<F> SegmentCompletion for F
where
    F: FnMut(&CompletedSegment) -> Result<(), HookError> + Send,
{
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError> {
        self(segment)
    }
}

/// Why the writer refused or failed.
#[derive(Debug, Error)]
pub enum WriterError {
    #[error("disk full: {0}; free space in the WAL directory and restart (streaming resumes at the start of the segment)")]
    DiskFull(#[source] DurableError),
    #[error("{0}; fix the cause and restart (streaming resumes at the start of the segment)")]
    Io(#[source] DurableError),
    #[error("{0}; WAL since the last flush may be lost, so the writer accepts nothing more: check the disk and restart")]
    SyncFailed(#[source] DurableError),
    #[error("WAL writer stopped after an earlier error ({0}); restart so streaming resumes from what is on disk")]
    Poisoned(String),
    #[error("received WAL at {got} but expected {expected}: the stream is not contiguous; restart streaming at a segment boundary")]
    NotContiguous { expected: Lsn, got: Lsn },
    #[error("WAL chunk at {lsn} of {len} bytes runs past the end of the WAL address space")]
    LsnOverflow { lsn: Lsn, len: usize },
    #[error("streaming must start at a segment boundary, but {lsn} is {offset} bytes into its segment; round the start down to the segment start")]
    UnalignedStart { lsn: Lsn, offset: u32 },
    #[error("timeline 0 does not exist; timelines start at 1")]
    InvalidTimeline,
    #[error("WAL directory {0} does not exist or is not a directory; create it first")]
    MissingDirectory(PathBuf),
    #[error("{path} has {size} bytes, more than wal_segment_size {segment_size}; it is not a segment of this cluster: move it away")]
    OversizedSegmentFile {
        path: PathBuf,
        size: u64,
        segment_size: u32,
    },
    #[error("segment {name} is already complete in {path}; start streaming after it (use find_streaming_start)")]
    SegmentAlreadyComplete { name: String, path: PathBuf },
    #[error("timeline history file {path} is missing; fetch it with TIMELINE_HISTORY and write_history_file before streaming timeline {timeline}")]
    HistoryMissing { timeline: TimelineId, path: PathBuf },
    #[error("timeline 1 has no history file; only timelines 2 and up do")]
    NoHistoryForTimelineOne,
    #[error("TIMELINE_HISTORY content for timeline {timeline} is malformed ({source}); the server sent an unreadable history file")]
    InvalidHistory {
        timeline: TimelineId,
        #[source]
        source: HistoryError,
    },
    #[error(
        "cannot switch from timeline {from} to timeline {to}: the next timeline must be higher"
    )]
    TimelineNotIncreasing { from: TimelineId, to: TimelineId },
    #[error("timeline {to} starts at {switch_lsn}, beyond the WAL received on timeline {from} (up to {received}); the server's end-of-timeline result is inconsistent")]
    SwitchBeyondReceived {
        from: TimelineId,
        to: TimelineId,
        switch_lsn: Lsn,
        received: Lsn,
    },
    #[error("completion hook failed for segment {file_name}: {source}; the segment is complete and durable, restart to continue after it")]
    Completion {
        file_name: String,
        #[source]
        source: HookError,
    },
    #[error("completion hook failed for {path}: {source}; the history file is durable, restart to continue")]
    HistoryHook {
        path: PathBuf,
        #[source]
        source: HookError,
    },
    #[error("completion hook failed when the writer closed: {0}; the segments are complete and durable, restart to finish archiving them")]
    CompletionFinish(#[source] HookError),
}

impl WriterError {
    /// True when the disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            WriterError::DiskFull(_) => true,
            WriterError::SyncFailed(e) => e.is_disk_full(),
            // Archiving a completed segment (checksum file, compression) can meet it too.
            WriterError::Completion { source, .. }
            | WriterError::HistoryHook { source, .. }
            | WriterError::CompletionFinish(source) => hook_disk_full(source.as_ref()),
            _ => false,
        }
    }
}

/// Whether a hook's error (or anything in its source chain) is a full disk.
fn hook_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DurableError>() {
            if d.is_disk_full() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if walrelay_durable::is_disk_full(io) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn io_error(e: DurableError) -> WriterError {
    if e.is_disk_full() {
        WriterError::DiskFull(e)
    } else {
        WriterError::Io(e)
    }
}

/// The segment file currently being written.
struct OpenSegment<Fl> {
    file: Fl,
    segment: SegmentId,
    /// The 24-character name.
    name: String,
    /// The path written to (`NAME.partial` in archive mode).
    path: PathBuf,
    /// LSN of the file's first byte.
    start: Lsn,
    /// File offset up to which writeback was started or the data fsynced.
    writeback_from: u64,
}

/// Writes a WAL stream into segment files; see the module documentation.
pub struct SegmentWriter<F: WalFs = StdFs> {
    fs: F,
    config: WriterConfig,
    timeline: TimelineId,
    current: Option<OpenSegment<F::File>>,
    /// End of what was received; where the next chunk must start.
    received: Lsn,
    /// End of what was handed to the kernel. `buffer` holds `written..received`.
    written: Lsn,
    /// End of what is durable.
    flushed: Lsn,
    /// After a timeline switch, everything below the switch point is durable and on the new timeline's
    /// history, while the stream restarts at the segment start: positions are reported at least here.
    floor: Lsn,
    buffer: Vec<u8>,
    /// A file was created (or reopened after a possible crash) since the last directory fsync.
    dir_needs_sync: bool,
    /// The current timeline's history file is known to exist (always true for timeline 1).
    history_present: bool,
    poisoned: Option<String>,
    hook: Option<Box<dyn SegmentCompletion>>,
}

impl SegmentWriter<StdFs> {
    /// A writer on the real file system that expects the stream to start at `start` on `timeline`.
    pub fn new(
        config: WriterConfig,
        timeline: TimelineId,
        start: Lsn,
    ) -> Result<Self, WriterError> {
        Self::with_fs(StdFs, config, timeline, start)
    }
}

impl<F: WalFs> SegmentWriter<F> {
    /// A writer over `fs`. `start` must be a segment boundary: like pg_receivewal, walrelay always
    /// (re)starts streaming at the beginning of a segment, so every file is written from its start.
    pub fn with_fs(
        fs: F,
        config: WriterConfig,
        timeline: TimelineId,
        start: Lsn,
    ) -> Result<Self, WriterError> {
        let offset = config.wal_segment_size.offset(start);
        if offset != 0 {
            return Err(WriterError::UnalignedStart { lsn: start, offset });
        }
        if timeline.0 == 0 {
            return Err(WriterError::InvalidTimeline);
        }
        let dir = config.destination.dir();
        if !fs.is_dir(dir) {
            return Err(WriterError::MissingDirectory(dir.to_path_buf()));
        }
        if let Destination::PgWal { pg_wal, .. } = &config.destination {
            fs.create_dir_all(
                &pg_wal.join("archive_status"),
                config.dir_mode,
                config.owner,
            )
            .map_err(io_error)?;
        }
        sync_previous_segment(&fs, &config, timeline, start)?;
        let buffer = Vec::with_capacity(config.write_buffer_size);
        Ok(SegmentWriter {
            fs,
            timeline,
            current: None,
            received: start,
            written: start,
            flushed: start,
            floor: Lsn::INVALID,
            buffer,
            dir_needs_sync: false,
            history_present: timeline == TimelineId::FIRST,
            poisoned: None,
            hook: None,
            config,
        })
    }

    /// Installs the hook called after each completed segment and history file.
    pub fn set_completion_hook(&mut self, hook: impl SegmentCompletion + 'static) {
        self.hook = Some(Box::new(hook));
    }

    pub fn config(&self) -> &WriterConfig {
        &self.config
    }

    /// The timeline being written.
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// Where the next chunk must start.
    pub fn next_lsn(&self) -> Lsn {
        self.received
    }

    /// End of the WAL handed to the kernel (not necessarily durable).
    pub fn write_lsn(&self) -> Lsn {
        self.written.max(self.floor)
    }

    /// End of the durable WAL: safe to report as the flush position.
    pub fn flush_lsn(&self) -> Lsn {
        self.flushed.max(self.floor)
    }

    /// The segment file currently open, if any.
    pub fn current_segment(&self) -> Option<SegmentId> {
        self.current.as_ref().map(|c| c.segment)
    }

    /// Whether anything received is not yet durable.
    pub fn has_unflushed(&self) -> bool {
        self.flushed < self.received || self.dir_needs_sync
    }

    /// The error that poisoned the writer, if one did.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_usable(&self) -> Result<(), WriterError> {
        match &self.poisoned {
            Some(cause) => Err(WriterError::Poisoned(cause.clone())),
            None => Ok(()),
        }
    }

    /// Records the first failure; from then on every call fails.
    fn poison_on_err<T>(&mut self, r: Result<T, WriterError>) -> Result<T, WriterError> {
        if let Err(e) = &r {
            if self.poisoned.is_none() {
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    /// Accepts the WAL bytes starting at `lsn`, which must be where the previous chunk ended.
    ///
    /// Bytes go to the kernel once `write_buffer_size` bytes are pending (a chunk at least that big is
    /// written without copying). A chunk that reaches the end of a segment completes it: the file is
    /// fsynced and (archive layout) renamed, so `flush_lsn` advances at every segment boundary.
    pub fn write(&mut self, lsn: Lsn, data: &[u8]) -> Result<(), WriterError> {
        self.check_usable()?;
        if lsn != self.received {
            return Err(WriterError::NotContiguous {
                expected: self.received,
                got: lsn,
            });
        }
        if lsn.checked_add(data.len() as u64).is_none() {
            return Err(WriterError::LsnOverflow {
                lsn,
                len: data.len(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        if !self.history_present {
            self.check_history()?;
        }
        let r = self.write_inner(data);
        self.poison_on_err(r)
    }

    fn write_inner(&mut self, mut rest: &[u8]) -> Result<(), WriterError> {
        let seg = self.config.wal_segment_size;
        while !rest.is_empty() {
            let offset = seg.offset(self.received) as usize;
            let room = seg.bytes() as usize - offset;
            let (now, later) = rest.split_at(room.min(rest.len()));
            if self.current.is_none() {
                self.open_segment()?;
            }
            self.append(now)?;
            self.received = Lsn(self.received.0 + now.len() as u64);
            rest = later;
            if seg.offset(self.received) == 0 {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<(), WriterError> {
        if self.buffer.is_empty() && data.len() >= self.config.write_buffer_size {
            return self.write_at_current(data);
        }
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= self.config.write_buffer_size {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes `data` at the current write position (`written`) of the open segment.
    fn write_at_current(&mut self, data: &[u8]) -> Result<(), WriterError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        cur.file
            .write_all_at(data, self.written.0 - cur.start.0)
            .map_err(io_error)?;
        self.written = Lsn(self.written.0 + data.len() as u64);
        self.hint_writeback();
        Ok(())
    }

    /// Starts the writeback of what was written into the open segment since the last hint or
    /// fsync, once that is at least [`WriterConfig::writeback_after`] bytes.
    fn hint_writeback(&mut self) {
        let after = self.config.writeback_after;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let end = self.written.0 - cur.start.0;
        // A full segment is fsynced right away by its completion: no hint for that.
        if after == 0
            || end < cur.writeback_from + after
            || end >= self.config.wal_segment_size.as_u64()
        {
            return;
        }
        cur.file
            .start_writeback(cur.writeback_from, end - cur.writeback_from);
        cur.writeback_from = end;
    }

    /// Hands the buffered bytes to the kernel.
    fn write_out(&mut self) -> Result<(), WriterError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut() else {
            // Unreachable: bytes are only buffered while a segment is open.
            self.buffer.clear();
            return Ok(());
        };
        cur.file
            .write_all_at(&self.buffer, self.written.0 - cur.start.0)
            .map_err(io_error)?;
        self.written = Lsn(self.written.0 + self.buffer.len() as u64);
        self.buffer.clear();
        self.hint_writeback();
        Ok(())
    }

    fn check_history(&mut self) -> Result<(), WriterError> {
        let path = self
            .config
            .destination
            .dir()
            .join(self.timeline.history_file_name());
        if self.fs.exists(&path).map_err(io_error)? {
            self.history_present = true;
            Ok(())
        } else {
            Err(WriterError::HistoryMissing {
                timeline: self.timeline,
                path,
            })
        }
    }

    /// Opens (creating and zero-filling if needed) the segment that `received` starts.
    fn open_segment(&mut self) -> Result<(), WriterError> {
        let seg = self.config.wal_segment_size;
        let offset = seg.offset(self.received);
        if offset != 0 {
            return Err(WriterError::UnalignedStart {
                lsn: self.received,
                offset,
            });
        }
        let segment = SegmentId::new(self.timeline, seg.segno(self.received));
        let name = segment.file_name(seg);
        let (file, path) = match &self.config.destination {
            Destination::Archive { dir } => {
                // Never stream over a segment that is already complete: its rename would replace it.
                let compressed = [Compression::Gzip, Compression::Lz4, Compression::Zstd];
                for suffix in std::iter::once("").chain(compressed.map(Compression::suffix)) {
                    let done = dir.join(format!("{name}{suffix}"));
                    if self.fs.exists(&done).map_err(io_error)? {
                        return Err(WriterError::SegmentAlreadyComplete { name, path: done });
                    }
                }
                let path = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
                let file = match self.fs.open_existing(&path).map_err(io_error)? {
                    Some(file) => self.prepare_existing(file, &path)?,
                    None => {
                        let mut file = self
                            .fs
                            .create(&path, self.config.file_mode, self.config.owner)
                            .map_err(io_error)?;
                        self.pad(&mut file, 0)?;
                        file
                    }
                };
                (file, path)
            }
            Destination::PgWal { pg_wal, .. } => {
                let path = pg_wal.join(&name);
                let file = match self.fs.open_existing(&path).map_err(io_error)? {
                    // A recycled or partially received file: overwrite in place, never truncate —
                    // the standby may be reading it, and it validates what it reads.
                    Some(file) => self.prepare_existing(file, &path)?,
                    None => self.install_new_pg_wal_segment(&path)?,
                };
                (file, path)
            }
        };
        // A new name, or one that a crashed predecessor may not have made durable.
        self.dir_needs_sync = true;
        debug!(segment = %name, timeline = %self.timeline, "opened segment");
        self.current = Some(OpenSegment {
            file,
            segment,
            name,
            path,
            start: self.received,
            writeback_from: 0,
        });
        Ok(())
    }

    /// Checks an existing file's size and pads it to a full segment.
    fn prepare_existing(&self, mut file: F::File, path: &Path) -> Result<F::File, WriterError> {
        let size = file.size().map_err(io_error)?;
        let segment_size = self.config.wal_segment_size.bytes();
        if size > u64::from(segment_size) {
            return Err(WriterError::OversizedSegmentFile {
                path: path.to_path_buf(),
                size,
                segment_size,
            });
        }
        self.pad(&mut file, size)?;
        Ok(file)
    }

    /// Zero-fills `file` from `from` to the segment size.
    fn pad(&self, file: &mut F::File, from: u64) -> Result<(), WriterError> {
        let end = self.config.wal_segment_size.as_u64();
        if from >= end {
            return Ok(());
        }
        let zeros = vec![0u8; PAD_CHUNK.min((end - from) as usize)];
        let mut at = from;
        while at < end {
            let n = zeros.len().min((end - at) as usize);
            file.write_all_at(&zeros[..n], at).map_err(io_error)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Creates a zero-filled segment under a temporary name and renames it into place, as the server's
    /// `XLogFileInit` does: a file with a real segment name in pg_wal is never shorter than a segment.
    fn install_new_pg_wal_segment(&self, path: &Path) -> Result<F::File, WriterError> {
        let tmp = durable::temp_path_for(path);
        let mut file = self
            .fs
            .create(&tmp, self.config.file_mode, self.config.owner)
            .map_err(io_error)?;
        self.pad(&mut file, 0)?;
        file.sync_data().map_err(WriterError::SyncFailed)?;
        drop(file);
        self.fs.rename_durable(&tmp, path).map_err(io_error)?;
        match self.fs.open_existing(path).map_err(io_error)? {
            Some(file) => Ok(file),
            None => Err(WriterError::Io(DurableError::new(
                "reopen",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))),
        }
    }

    /// The current segment holds a full segment of WAL: make it durable, give it its final name,
    /// record its status, tell the hook.
    fn complete_segment(&mut self) -> Result<(), WriterError> {
        self.write_out()?;
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        cur.file.sync_data().map_err(WriterError::SyncFailed)?;
        let final_path = match &self.config.destination {
            Destination::Archive { dir } => {
                let final_path = dir.join(&cur.name);
                // rename_durable fsyncs the directory, which also covers the `.partial` creation.
                self.fs
                    .rename_durable(&cur.path, &final_path)
                    .map_err(io_error)?;
                final_path
            }
            Destination::PgWal { pg_wal, status } => {
                if self.dir_needs_sync {
                    self.fs.fsync_dir(pg_wal).map_err(WriterError::SyncFailed)?;
                }
                self.mark_status(pg_wal, *status, &cur.name)?;
                cur.path.clone()
            }
        };
        self.dir_needs_sync = false;
        self.flushed = self.written;
        let end_lsn = self.written;
        drop(cur.file);
        debug!(segment = %cur.name, "segment complete");
        if let Some(hook) = self.hook.as_mut() {
            let done = CompletedSegment {
                segment: cur.segment,
                file_name: cur.name.clone(),
                path: final_path,
                end_lsn,
            };
            hook.segment_completed(&done)
                .map_err(|source| WriterError::Completion {
                    file_name: cur.name,
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes `archive_status/NAME.done` (or `.ready`) durably, as `XLogArchiveForceDone` /
    /// `XLogArchiveNotify` do for a walreceiver's segments.
    fn mark_status(
        &self,
        pg_wal: &Path,
        marker: ArchiveStatusMarker,
        name: &str,
    ) -> Result<(), WriterError> {
        let status_dir = pg_wal.join("archive_status");
        let done = status_dir.join(format!("{name}.done"));
        let ready = status_dir.join(format!("{name}.ready"));
        let (mode, owner) = (self.config.file_mode, self.config.owner);
        match marker {
            ArchiveStatusMarker::Done => {
                if self.fs.exists(&done).map_err(io_error)? {
                    return Ok(());
                }
                if self.fs.exists(&ready).map_err(io_error)? {
                    return self.fs.rename_durable(&ready, &done).map_err(io_error);
                }
                self.fs
                    .write_file_atomic(&done, b"", mode, owner)
                    .map_err(io_error)
            }
            ArchiveStatusMarker::Ready => {
                if self.fs.exists(&ready).map_err(io_error)? {
                    return Ok(());
                }
                self.fs
                    .write_file_atomic(&ready, b"", mode, owner)
                    .map_err(io_error)
            }
        }
    }

    /// Makes everything received durable and returns the new flush position: writes out the buffer,
    /// `fdatasync`s the open segment if it has unsynced bytes, fsyncs the directory if a file was
    /// created since the last flush.
    pub fn flush(&mut self) -> Result<Lsn, WriterError> {
        self.check_usable()?;
        let r = self.flush_inner();
        self.poison_on_err(r)
    }

    fn flush_inner(&mut self) -> Result<Lsn, WriterError> {
        self.write_out()?;
        if !self.config.sync {
            self.flushed = self.written;
            return Ok(self.flush_lsn());
        }
        if self.flushed < self.written {
            if let Some(cur) = self.current.as_mut() {
                cur.file.sync_data().map_err(WriterError::SyncFailed)?;
                cur.writeback_from = self.written.0 - cur.start.0;
            }
        }
        if self.dir_needs_sync {
            self.fs
                .fsync_dir(self.config.destination.dir())
                .map_err(WriterError::SyncFailed)?;
            self.dir_needs_sync = false;
        }
        self.flushed = self.written;
        Ok(self.flush_lsn())
    }

    /// The server ended `timeline` and continues on `new_timeline` from `switch_lsn` (the row sent
    /// after the end of COPY). The current segment is flushed and closed the way pg_receivewal closes it
    /// (it stays `.partial` in the archive layout) or a walreceiver does (marked `.done`/`.ready` in
    /// pg_wal); the stream must then restart at the start of the segment holding `switch_lsn`, on the
    /// new timeline, after its history file was written with [`write_history_file`](Self::write_history_file).
    pub fn switch_timeline(
        &mut self,
        new_timeline: TimelineId,
        switch_lsn: Lsn,
    ) -> Result<(), WriterError> {
        self.check_usable()?;
        if new_timeline <= self.timeline {
            return Err(WriterError::TimelineNotIncreasing {
                from: self.timeline,
                to: new_timeline,
            });
        }
        if switch_lsn > self.received {
            return Err(WriterError::SwitchBeyondReceived {
                from: self.timeline,
                to: new_timeline,
                switch_lsn,
                received: self.received,
            });
        }
        let r = self.end_timeline();
        self.poison_on_err(r)?;
        info!(
            from = %self.timeline,
            to = %new_timeline,
            %switch_lsn,
            "switching timeline"
        );
        let restart = switch_lsn.segment_start(self.config.wal_segment_size.bytes());
        self.timeline = new_timeline;
        self.history_present = false;
        self.received = restart;
        self.written = restart;
        self.flushed = restart;
        // Everything below switch_lsn is durable (flushed above) and shared by the new timeline.
        self.floor = self.floor.max(switch_lsn);
        Ok(())
    }

    fn end_timeline(&mut self) -> Result<(), WriterError> {
        self.flush_inner()?;
        if let Some(cur) = self.current.take() {
            match &self.config.destination {
                Destination::Archive { .. } => {
                    info!(file = %cur.path.display(), "not renaming partial segment at end of timeline, segment is not complete");
                }
                Destination::PgWal { pg_wal, status } => {
                    // walreceiver.c marks the last segment of a finished timeline like a complete one.
                    self.mark_status(pg_wal, *status, &cur.name)?;
                }
            }
        }
        Ok(())
    }

    /// Stores `TTTTTTTT.history` for `timeline` atomically (temporary name, fsync, rename, directory
    /// fsync), and in pg_wal its status marker. Must happen before any WAL of that timeline is written;
    /// the writer refuses to open a segment of a timeline > 1 whose history file is missing.
    pub fn write_history_file(
        &mut self,
        timeline: TimelineId,
        content: &[u8],
    ) -> Result<(), WriterError> {
        self.check_usable()?;
        if timeline.0 <= 1 {
            return Err(WriterError::NoHistoryForTimelineOne);
        }
        TimelineHistory::parse(timeline, content)
            .map_err(|source| WriterError::InvalidHistory { timeline, source })?;
        let name = timeline.history_file_name();
        let path = self.config.destination.dir().join(&name);
        self.fs
            .write_file_atomic(&path, content, self.config.file_mode, self.config.owner)
            .map_err(io_error)?;
        if let Destination::PgWal { pg_wal, status } = &self.config.destination {
            self.mark_status(pg_wal, *status, &name)?;
        }
        if timeline == self.timeline {
            self.history_present = true;
        }
        if let Some(hook) = self.hook.as_mut() {
            let r = hook
                .history_written(timeline, &path)
                .map_err(|source| WriterError::HistoryHook { path, source });
            return self.poison_on_err(r);
        }
        Ok(())
    }

    /// Clean shutdown: flushes and closes. An incomplete segment keeps its `.partial` name (archive
    /// layout) and gets no status marker (pg_wal). The completion hook finishes its deferred work
    /// ([`SegmentCompletion::finished`]). Returns the final flush position.
    pub fn close(mut self) -> Result<Lsn, WriterError> {
        let flushed = self.flush()?;
        if let Some(cur) = self.current.take() {
            if matches!(self.config.destination, Destination::Archive { .. }) {
                info!(file = %cur.path.display(), "not renaming partial segment, segment is not complete");
            }
        }
        if let Some(hook) = self.hook.as_mut() {
            hook.finished().map_err(WriterError::CompletionFinish)?;
        }
        Ok(flushed)
    }
}

/// Everything before `start` is reported as flushed from the first status update on, as pg_receivewal
/// does. Whoever wrote the segment before `start` fsynced it on completion — unless that process was
/// killed between its last write and the fsync: the bytes then sit in the page cache, where start
/// discovery reads them, but not necessarily on disk. One fsync of that file (and its directory) makes
/// the claim true. Only the file on `timeline` is tried; an older timeline's segment was closed (and
/// fsynced) at its timeline switch.
fn sync_previous_segment<F: WalFs>(
    fs: &F,
    config: &WriterConfig,
    timeline: TimelineId,
    start: Lsn,
) -> Result<(), WriterError> {
    let seg = config.wal_segment_size;
    let segno = seg.segno(start);
    if segno.0 == 0 {
        return Ok(());
    }
    let previous = SegmentId::new(timeline, XLogSegNo(segno.0 - 1)).file_name(seg);
    let dir = config.destination.dir();
    if let Some(mut file) = fs.open_existing(&dir.join(previous)).map_err(io_error)? {
        file.sync_data().map_err(WriterError::SyncFailed)?;
        fs.fsync_dir(dir).map_err(WriterError::SyncFailed)?;
    }
    Ok(())
}

impl<F: WalFs> Drop for SegmentWriter<F> {
    fn drop(&mut self) {
        if self.poisoned.is_none() && self.has_unflushed() {
            debug!(
                next_lsn = %self.received,
                flush_lsn = %self.flushed,
                "WAL writer dropped without close: unflushed WAL will be received again"
            );
        }
    }
}

impl<F: WalFs> std::fmt::Debug for SegmentWriter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("destination", &self.config.destination)
            .field("timeline", &self.timeline)
            .field("next_lsn", &self.received)
            .field("write_lsn", &self.write_lsn())
            .field("flush_lsn", &self.flush_lsn())
            .field("current_segment", &self.current.as_ref().map(|c| &c.name))
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
