//! WAL validation for walrelay: page headers and record CRCs, with no IO.
//!
//! walrelay must not acknowledge WAL it has not checked. This crate checks WAL the way
//! PostgreSQL's `xlogreader.c` reads it — page magic, `xlp_pageaddr`, timelines, the long header's
//! system identifier / segment size / page size, record prev-links and every record's CRC-32C —
//! but as a stream of contiguous chunks (XLogData messages or file reads) in constant memory.
//!
//! * [`magic`]: `XLOG_PAGE_MAGIC` per major version.
//! * [`page`]: page headers, and [`inspect_segment_start`] to identify a segment file cheaply.
//! * [`record`]: record headers and the record CRC.
//! * [`validator`]: [`WalValidator`], the streaming validator, and its progress rule
//!   ([`WalValidator::validated_lsn`]).
//! * [`segment`]: [`validate_segment_file`] for a whole or partial segment file.
//! * [`xact`]: commit and abort records decoded from records the validator kept (what a failover
//!   lost).
//! * [`restore_point`]: restore points, likewise (where a `recovery_target_name` stops).
//! * `synth` (cargo feature `synth`, for dev-dependencies only): synthetic WAL for tests and
//!   benchmarks (and fake servers).
//!
//! Formats: `src/include/access/xlog_internal.h`, `src/include/access/xlogrecord.h`,
//! `src/backend/access/transam/xlogreader.c` in PostgreSQL's source.

pub mod error;
pub mod magic;
pub mod page;
pub mod record;
pub mod restore_point;
pub mod segment;
#[cfg(feature = "synth")]
pub mod synth;
pub mod validator;
pub mod xact;

pub use error::WalError;
pub use magic::{major_for_page_magic, page_magic_for_major};
pub use page::{inspect_segment_start, parse_page_header, LongPageHeader, PageHeader};
pub use segment::{
    validate_segment_file, validate_segment_file_keeping_state, SegmentCheck, SegmentEnd,
    SegmentReport,
};
pub use validator::{CapturedRecord, StreamState, ValidatorConfig, WalValidator};
pub use xact::{XactEnd, XactKind};
