//! The disk side of walrelay's WAL receiver, and its feedback state machine.
//!
//! The network side (connection, `START_REPLICATION`, CopyBoth decoding) lives in `walrelay-client`;
//! this crate holds everything that needs no socket:
//!
//! * [`SegmentWriter`] ([`writer`]): blocking code that writes a contiguous WAL stream into segment
//!   files, in pg_receivewal's archive layout (`.partial` until complete) or straight into a standby's
//!   `pg_wal` like a walreceiver; keeps `write_lsn` (handed to the kernel) apart from `flush_lsn`
//!   (durable), and never reports a flush position that is not fsynced.
//! * [`DiskTask`] ([`disk_task`]): runs the writer on a blocking thread behind a bounded channel, with
//!   fsyncs batched when the queue drains.
//! * [`Feedback`] ([`feedback`]): the pure state machine deciding when to send a standby status update
//!   and with which positions.
//! * [`find_streaming_start`] ([`start`]): where to resume, from what is really on disk — pg_receivewal's
//!   rules for archive directories, page-header validation for `pg_wal` (where recycled segments look
//!   complete), and refusal of foreign or damaged directories.
//! * [`page_header`]: the page-header seam of start discovery, over `walrelay-wal`'s parser.
//!
//! References: `src/bin/pg_basebackup/{pg_receivewal.c,receivelog.c,walmethods.c}`,
//! `src/backend/replication/walreceiver.c`, `src/include/access/xlog_internal.h`,
//! <https://www.postgresql.org/docs/current/protocol-replication.html>.

pub mod disk_task;
pub mod feedback;
pub mod fs;
pub mod page_header;
pub mod receiver;
pub mod start;
pub mod stats;
pub mod writer;

pub use disk_task::{DiskProgress, DiskRequest, DiskTask, DiskTaskConfig, DiskTaskStopped};
pub use feedback::{
    Feedback, FeedbackConfig, FeedbackEvent, PgTimestamp, StandbyStatusUpdate,
    DEFAULT_STATUS_INTERVAL, POSTGRES_EPOCH_UNIX_SECONDS,
};
pub use fs::{SegmentFile, StdFs, WalFs};
pub use page_header::{LongPageHeader, PageHeaderError, PageHeaderReader, WalPageHeaderReader};
pub use receiver::{run, ReceiveError, ReceiveSummary, ReceiverConfig, StopReason, Target};
pub use start::{
    find_streaming_start, find_streaming_start_in_dir, find_streaming_start_with, DirEntryInfo,
    Layout, ScanFrom, StartError, StartOptions, StartReason, StdWalDir, StreamStart, WalDirReader,
};
pub use stats::{ReceiverStats, StatsSnapshot};
pub use writer::{
    ArchiveStatusMarker, CompletedSegment, Destination, HookError, SegmentCompletion,
    SegmentWriter, WriterConfig, WriterError,
};
