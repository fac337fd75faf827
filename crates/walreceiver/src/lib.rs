//! walrelay's WAL receiver: `START_REPLICATION` into an archive directory or a standby's `pg_wal`,
//! durable and validated before anything is acknowledged, resumed with no gap, forever.
//!
//! ```text
//!             ┌──────────── reconnect loop (backoff; transient vs definite errors) ───────────────┐
//!             │ session: connect → IDENTIFY_SYSTEM → resume point → history → START_REPLICATION │
//!             │                                                                                  │
//!  server ──► StreamLoop ── validate page headers + record CRCs ── DiskRequest ──► DiskTask      │
//!    ▲            │  keepalives, end of timeline (CopyDone + next TLI row)       (SegmentWriter:  │
//!    │            │                                                               write, fsync,   │
//!    └── 'r' ◄── Feedback state machine ◄── flush LSN (watch) ◄──────────────────  rename, hook) │
//!             └──────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! What this crate owns:
//!
//! * the engine: [`run`] (the reconnect loop, `reconnect`), one session per connection
//!   (`session`: resume point, history files, timeline after timeline), one CopyBoth stream as a
//!   state machine (`stream_loop`), and why it stopped ([`ReceiveError`], classified for retry and
//!   exit codes through [`walrelay_client::Classify`]);
//! * the disk side: [`SegmentWriter`] writes a contiguous WAL stream into segment files, in
//!   pg_receivewal's archive layout (`.partial` until complete) or straight into a standby's
//!   `pg_wal`, keeping `write_lsn` apart from `flush_lsn`; [`DiskTask`] runs it on a blocking
//!   thread behind a bounded channel (or inline, for a synchronous standby), fsyncs batched;
//!   archive mode's checksums and compression of completed segments (`archiving`);
//! * [`Feedback`]: the pure state machine deciding when to send a standby status update and with
//!   which positions;
//! * [`find_streaming_start`]: where to resume, from what is really on disk — pg_receivewal's rules
//!   for archive directories, page-header validation for `pg_wal` (where recycled segments look
//!   complete), refusal of foreign or damaged directories;
//! * [`ReceiverStats`]: live counters for metrics and health checks, and the commit-path latency
//!   histograms (`commit_path`: WAL received → durable → status update sent);
//! * [`tap`]: the seam a relay (`walrelay serve`) uses to serve what the engine receives
//!   ([`run_tapped`]).
//!
//! References: `src/bin/pg_basebackup/{pg_receivewal.c,receivelog.c,walmethods.c}`,
//! `src/backend/replication/walreceiver.c`, `src/include/access/xlog_internal.h`,
//! <https://www.postgresql.org/docs/current/protocol-replication.html>.

mod archiving;
pub mod commit_path;
mod config;
mod disk_task;
mod error;
mod failover;
mod feedback;
mod fs;
mod page_header;
mod promotion;
mod reconnect;
mod replay_poller;
mod resume;
mod session;
mod slot_keeper;
mod start;
mod stats;
mod stream_loop;
pub mod tap;
mod timeline_plan;
mod writer;

pub use commit_path::{CommitPathSnapshot, HistogramSnapshot};
pub use config::{
    ReceiveSummary, ReceiverConfig, StopReason, Target, SERVER_SILENCE_PING, SERVER_SILENCE_TIMEOUT,
};
pub use disk_task::{DiskProgress, DiskRequest, DiskTask, DiskTaskConfig, DiskTaskStopped};
pub use error::{ReceiveError, StreamViolation};
pub use feedback::{
    Feedback, FeedbackConfig, FeedbackEvent, PgTimestamp, StandbyStatusUpdate,
    DEFAULT_STATUS_INTERVAL, POSTGRES_EPOCH_UNIX_SECONDS,
};
pub use fs::{SegmentFile, StdFs, WalFs};
pub use page_header::{LongPageHeader, PageHeaderError, PageHeaderReader, WalPageHeaderReader};
pub use reconnect::{run, run_tapped};
pub use slot_keeper::create_on_standbys;
pub use start::{
    find_streaming_start, find_streaming_start_in_dir, find_streaming_start_with, DirEntryInfo,
    Layout, ScanFrom, StartError, StartOptions, StartReason, StdWalDir, StreamStart, WalDirReader,
};
pub use stats::{ReceiverStats, StatsSnapshot};
pub use tap::{RelayChain, StreamTap, TimelinePosition, WalObserver};
pub use writer::{
    ArchiveStatusMarker, CompletedSegment, Destination, HookError, SegmentCompletion,
    SegmentWriter, WriterConfig, WriterError,
};
