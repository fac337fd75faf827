//! Validating one WAL segment file: complete, a `.partial` prefix, or a file in a `pg_wal`.
//!
//! A segment on disk may legitimately stop holding WAL before its end: a `.partial` file is
//! zero-padded after the last received byte, and the segment a server is writing has zeros (fresh
//! file) or an older segment's pages (recycled file) after the insert position. Those are reported
//! as [`SegmentEnd::EndOfWal`], not as errors — exactly the patterns recovery treats as the end of
//! WAL. Anything else that is wrong (CRC mismatch, wrong system, first page from another position)
//! is an error. Whoever needs a complete segment (`walrelay verify` of an archived segment) checks
//! [`SegmentReport::is_complete`].
//!
//! One ambiguity is resolved towards loudness: the last page a crashed server was writing can be
//! torn (new and old sectors mixed), which recovery also treats as the end of WAL. Here a torn
//! record is an error (usually a CRC mismatch), because in an archived segment the same symptom
//! means corruption. A caller that needs the valid prefix of such a file feeds it to a
//! [`WalValidator`] and reads [`WalValidator::validated_lsn`] after the error.

use walrelay_protocol::{Lsn, SegmentId, WalSegmentSize};

use crate::error::WalError;
use crate::page::{LongPageHeader, DEFAULT_XLOG_BLCKSZ};
use crate::validator::{StreamState, ValidatorConfig, WalValidator};

/// What a segment file must match besides its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentCheck {
    pub segment_size: WalSegmentSize,
    /// `XLOG_BLCKSZ` (8192 unless the server was built otherwise).
    pub block_size: u32,
    /// Required `XLOG_PAGE_MAGIC`; `None` accepts any PostgreSQL 10–18 magic.
    pub page_magic: Option<u16>,
    /// Required system identifier; `None` accepts the one in the long header.
    pub system_identifier: Option<u64>,
}

impl SegmentCheck {
    pub fn new(segment_size: WalSegmentSize) -> Self {
        SegmentCheck {
            segment_size,
            block_size: DEFAULT_XLOG_BLCKSZ,
            page_magic: None,
            system_identifier: None,
        }
    }
}

/// How the valid WAL in a segment file ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Valid WAL up to the segment's last byte (a final record may continue into the next
    /// segment; see [`SegmentReport::continues_into_next`]).
    Complete,
    /// The file ends at `at`, before the segment does, and everything before is valid.
    Truncated { at: Lsn },
    /// From `at` on the file holds no WAL: zeros, or pages of an older (recycled) segment.
    EndOfWal { at: Lsn, cause: WalError },
}

/// What [`validate_segment_file`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    pub segment: SegmentId,
    /// The segment's first LSN.
    pub start: Lsn,
    pub end: SegmentEnd,
    /// Everything before this LSN is proven valid (see [`WalValidator::validated_lsn`]).
    pub valid_end: Lsn,
    /// Records whose CRC matched.
    pub records: u64,
    /// Start of the last record whose CRC matched.
    pub last_record: Option<Lsn>,
    /// The `XLOG_SWITCH` record that ends the segment early, if any.
    pub switch: Option<Lsn>,
    /// The segment begins with the tail of a record from the previous segment, which cannot be
    /// checked on its own; this is the LSN where that tail ends (when it ends in this segment).
    pub contrecord_end: Option<Lsn>,
    /// Start of a record that runs past the end of the file (into the next segment, or cut off).
    pub continues_into_next: Option<Lsn>,
    /// The segment's long header, when the file holds one.
    pub header: Option<LongPageHeader>,
}

impl SegmentReport {
    /// The file holds valid WAL for the whole segment.
    pub fn is_complete(&self) -> bool {
        self.end == SegmentEnd::Complete
    }
}

/// Validates the WAL segment file `bytes` as segment `segment`: every page header (the first one
/// must name this segment's position, a timeline not after the segment's, and `check`'s cluster)
/// and every record CRC, up to the end of the file or the end of valid WAL.
pub fn validate_segment_file(
    bytes: &[u8],
    segment: SegmentId,
    check: &SegmentCheck,
) -> Result<SegmentReport, WalError> {
    validate_segment_file_keeping_state(bytes, segment, check).map(|(report, _)| report)
}

/// [`validate_segment_file`], also returning the validator as it stands after the file's last
/// byte. For a [`SegmentEnd::Complete`] segment that validator can be fed the next segment of the
/// same timeline ([`WalValidator::feed`] at [`SegmentId::end_lsn`]): then the record that spans
/// the boundary gets its CRC checked and the next segment's first record its `xl_prev` — which
/// neither segment can prove on its own.
pub fn validate_segment_file_keeping_state(
    bytes: &[u8],
    segment: SegmentId,
    check: &SegmentCheck,
) -> Result<(SegmentReport, WalValidator), WalError> {
    let start = segment.start_lsn(check.segment_size);
    if bytes.len() as u64 > check.segment_size.as_u64() {
        return Err(WalError::SegmentFileTooLong {
            lsn: start,
            len: bytes.len() as u64,
            segment_size: check.segment_size.bytes(),
        });
    }
    let cfg = ValidatorConfig {
        segment_size: check.segment_size,
        block_size: check.block_size,
        page_magic: check.page_magic,
        system_identifier: check.system_identifier,
        timeline: Some(segment.timeline),
        start_lsn: start,
    };
    let mut v = WalValidator::new(cfg)?;
    let file_end = Lsn(start.0 + bytes.len() as u64);
    let result = v.feed(start, bytes);
    let end = match result {
        Ok(()) if file_end.0 == start.0 + check.segment_size.as_u64() => SegmentEnd::Complete,
        Ok(()) => SegmentEnd::Truncated { at: file_end },
        Err(e) => {
            // A bad first page header means the file is not this segment at all — except an
            // all-zero one, which is a pre-allocated or zero-padded file that holds no WAL yet.
            let at = e.lsn().unwrap_or(start);
            let first_header = at == start && !matches!(e, WalError::ZeroPage { .. });
            if e.is_end_of_wal() && !first_header {
                SegmentEnd::EndOfWal { at, cause: e }
            } else {
                return Err(e);
            }
        }
    };
    let continues_into_next = match v.state() {
        StreamState::InRecord { start } if !matches!(end, SegmentEnd::EndOfWal { .. }) => {
            Some(start)
        }
        _ => None,
    };
    let report = SegmentReport {
        segment,
        start,
        end,
        valid_end: v.validated_lsn(),
        records: v.records(),
        last_record: v.last_record(),
        switch: v.last_switch(),
        contrecord_end: v.skipped_contrecord_end(),
        continues_into_next,
        header: v.first_long_header(),
    };
    Ok((report, v))
}
