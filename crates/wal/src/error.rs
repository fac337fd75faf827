//! What can be wrong with WAL, and where.
//!
//! Every variant carries the LSN it was found at (except the pure parse errors, which only see a
//! byte slice), and its message is one line that names the cause and what to do about it. The
//! wording follows `xlogreader.c`'s messages where there is one, so an operator can compare with
//! what `pg_waldump` or the server log says.

use thiserror::Error;
use walrelay_protocol::{Lsn, TimelineId};

use crate::magic::major_for_page_magic;

/// A WAL validation failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalError {
    /// Fewer bytes than a page header needs (pure parsing only; streams wait for more bytes).
    #[error("WAL page header truncated: need {needed} bytes, got {got}; read the whole first page (8192 bytes)")]
    TruncatedPageHeader { needed: usize, got: usize },

    /// A page header of all zeros: an unwritten or zero-filled part of a segment, not WAL.
    #[error("WAL page at {lsn} is all zeros: no WAL was written here (end of WAL, or a pre-allocated/padded segment)")]
    ZeroPage { lsn: Lsn },

    /// The first page of a segment file is all zeros: the file was pre-allocated or padded but never
    /// written (no position is known, since the header that would tell is missing).
    #[error("the first WAL page of the segment is all zeros: the file holds no WAL yet; do not resume from it")]
    ZeroSegmentStart,

    /// `xlp_magic` is not the expected one.
    #[error("invalid WAL page magic {found:#06X} at {lsn} ({}): expected {}; the WAL was written by another PostgreSQL major version or is not WAL", describe_magic(*found), describe_expected(*expected))]
    BadPageMagic {
        lsn: Lsn,
        found: u16,
        /// `None`: any magic known to [`crate::magic::PAGE_MAGICS`] was acceptable.
        expected: Option<u16>,
    },

    /// Unknown bits in `xlp_info`.
    #[error(
        "invalid info bits {info:#06X} in WAL page header at {lsn}: the page is corrupt or not WAL"
    )]
    InvalidInfoBits { lsn: Lsn, info: u16 },

    /// The first page of a segment must carry a long header (`XLP_LONG_HEADER`).
    #[error("WAL page at {lsn} starts a segment but has no long header: the segment is corrupt")]
    MissingLongHeader { lsn: Lsn },

    /// A long header on a page that does not start a segment (PostgreSQL never writes one).
    #[error("WAL page at {lsn} has a long header but does not start a segment: the WAL is corrupt or the segment size is wrong")]
    UnexpectedLongHeader { lsn: Lsn },

    /// `xlp_pageaddr` is not the address the page was read from. Typical for a recycled segment that
    /// has not been overwritten yet, or a file under the wrong name.
    #[error("unexpected page address {found} in WAL page at {lsn}: the data is from another position (a recycled or misnamed segment)")]
    PageAddrMismatch { lsn: Lsn, found: Lsn },

    /// `xlp_tli` went down between two pages.
    #[error("out-of-sequence timeline {found} (after {previous}) in WAL page at {lsn}: the WAL mixes timelines; refetch it from the right timeline")]
    TimelineBackwards {
        lsn: Lsn,
        found: TimelineId,
        previous: TimelineId,
    },

    /// `xlp_tli` is newer than the timeline being streamed or named by the segment file.
    #[error("WAL page at {lsn} is on timeline {found}, after the expected timeline {expected}: the WAL is from a later timeline than requested")]
    TimelineAhead {
        lsn: Lsn,
        found: TimelineId,
        expected: TimelineId,
    },

    /// The long header's `xlp_sysid` names another cluster.
    #[error("WAL at {lsn} is from a different database system: system identifier {found}, expected {expected}; point walrelay at the right cluster")]
    SystemIdMismatch { lsn: Lsn, found: u64, expected: u64 },

    /// The long header's `xlp_seg_size` differs from the configured segment size.
    #[error("WAL at {lsn} has segment size {found} in its page header, expected {expected}: use the server's wal_segment_size")]
    SegmentSizeMismatch { lsn: Lsn, found: u32, expected: u32 },

    /// The long header's `xlp_xlog_blcksz` differs from the configured WAL block size.
    #[error("WAL at {lsn} has XLOG_BLCKSZ {found} in its page header, expected {expected}: the server was built with another WAL block size")]
    BlockSizeMismatch { lsn: Lsn, found: u32, expected: u32 },

    /// `xl_tot_len` is impossible.
    #[error("invalid record length at {lsn}: expected at least {min} and at most {max}, got {len}; the WAL is corrupt")]
    InvalidRecordLength {
        lsn: Lsn,
        len: u32,
        min: u32,
        max: u32,
    },

    /// A record header of zeros where a record must start: WAL ends here.
    #[error("no WAL record at {lsn} (zeros where a record must start): end of valid WAL")]
    EndOfWal { lsn: Lsn },

    /// `xl_prev` does not point at the previous record.
    #[error("record with incorrect prev-link {found} at {lsn} (expected {}): a stale or torn record", expected.map_or_else(|| format!("below {lsn}"), |e| e.to_string()))]
    InvalidPrevLink {
        lsn: Lsn,
        found: Lsn,
        expected: Option<Lsn>,
    },

    /// A record's CRC-32C does not match its contents.
    #[error("incorrect resource manager data checksum in record at {lsn}: stored {stored:#010X}, computed {computed:#010X}; the WAL is corrupt")]
    CrcMismatch {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },

    /// A record continues onto a page without `XLP_FIRST_IS_CONTRARECORD`.
    #[error("there is no contrecord flag at {lsn} (the record {} continues here): the WAL is corrupt", record.map_or_else(|| "begun before the stream".to_string(), |r| format!("at {r}")))]
    MissingContrecord { lsn: Lsn, record: Option<Lsn> },

    /// `xlp_rem_len` disagrees with what is left of the record being continued.
    #[error("invalid contrecord length {rem_len} (expected {}) at {lsn}: the WAL is corrupt", expected.map_or_else(|| "more than 0".to_string(), |e| e.to_string()))]
    ContrecordLength {
        lsn: Lsn,
        rem_len: u32,
        /// `None` on the first page of a stream, where only "not zero" is known.
        expected: Option<u64>,
    },

    /// The page says its data continues a record, but a new record must start there.
    #[error("contrecord is requested by {lsn} but no record continues there: the WAL is corrupt")]
    UnexpectedContrecord { lsn: Lsn },

    /// Non-zero bytes in the space an `XLOG_SWITCH` record reserves up to the segment end.
    #[error("non-zero byte at {lsn} after the XLOG_SWITCH record at {switch}: the segment's padding is corrupt")]
    SwitchPaddingNotZero { lsn: Lsn, switch: Lsn },

    /// A feed did not continue where the previous one ended.
    #[error(
        "WAL data at {got} does not continue the stream at {expected}: chunks must be contiguous"
    )]
    NonContiguousFeed { expected: Lsn, got: Lsn },

    /// A feed would run past the highest possible LSN.
    #[error("WAL data at {lsn} of {len} bytes runs past the end of the LSN space")]
    LsnOverflow { lsn: Lsn, len: usize },

    /// A segment file longer than the segment size.
    #[error("WAL segment file at {lsn} has {len} bytes, more than the segment size {segment_size}: it is not a WAL segment of this cluster")]
    SegmentFileTooLong {
        lsn: Lsn,
        len: u64,
        segment_size: u32,
    },

    /// The configured start position cannot begin a record.
    #[error("cannot start validating WAL at {lsn}: start at a page boundary, or at an 8-byte aligned record start past the page header")]
    InvalidStart { lsn: Lsn },

    /// The configured or advertised WAL block size is not a power of two in 1 kB..=64 kB.
    #[error(
        "invalid XLOG_BLCKSZ {block_size} at {lsn}: must be a power of two between 1024 and 65536"
    )]
    InvalidBlockSize { lsn: Lsn, block_size: u32 },

    /// The long header advertises an impossible segment size.
    #[error("invalid segment size {segment_size} in WAL page header at {lsn}: must be a power of two between 1 MB and 1 GB")]
    InvalidSegmentSize { lsn: Lsn, segment_size: u32 },
}

impl WalError {
    /// The LSN the problem was found at, if there is one.
    pub fn lsn(&self) -> Option<Lsn> {
        use WalError::*;
        match *self {
            TruncatedPageHeader { .. } | ZeroSegmentStart => None,
            NonContiguousFeed { got, .. } => Some(got),
            ZeroPage { lsn }
            | BadPageMagic { lsn, .. }
            | InvalidInfoBits { lsn, .. }
            | MissingLongHeader { lsn }
            | UnexpectedLongHeader { lsn }
            | PageAddrMismatch { lsn, .. }
            | TimelineBackwards { lsn, .. }
            | TimelineAhead { lsn, .. }
            | SystemIdMismatch { lsn, .. }
            | SegmentSizeMismatch { lsn, .. }
            | BlockSizeMismatch { lsn, .. }
            | InvalidRecordLength { lsn, .. }
            | EndOfWal { lsn }
            | InvalidPrevLink { lsn, .. }
            | CrcMismatch { lsn, .. }
            | MissingContrecord { lsn, .. }
            | ContrecordLength { lsn, .. }
            | UnexpectedContrecord { lsn }
            | SwitchPaddingNotZero { lsn, .. }
            | LsnOverflow { lsn, .. }
            | InvalidStart { lsn }
            | SegmentFileTooLong { lsn, .. }
            | InvalidBlockSize { lsn, .. }
            | InvalidSegmentSize { lsn, .. } => Some(lsn),
        }
    }

    /// True for the patterns PostgreSQL itself leaves after the last valid record of a segment on
    /// disk: a zero record header, a zero page, or a page whose address is from an earlier position
    /// (a recycled segment not yet overwritten). Recovery stops at these silently; a stream from a
    /// server never contains them.
    pub fn is_end_of_wal(&self) -> bool {
        match *self {
            WalError::EndOfWal { .. } | WalError::ZeroPage { .. } => true,
            WalError::PageAddrMismatch { lsn, found } => found < lsn,
            _ => false,
        }
    }
}

fn describe_magic(magic: u16) -> String {
    match major_for_page_magic(magic) {
        Some(major) => format!("PostgreSQL {major}'s"),
        None => "unknown to walrelay".to_string(),
    }
}

fn describe_expected(expected: Option<u16>) -> String {
    match expected {
        Some(m) => match major_for_page_magic(m) {
            Some(major) => format!("{m:#06X} (PostgreSQL {major})"),
            None => format!("{m:#06X}"),
        },
        None => "the magic of PostgreSQL 10 to 18".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_with_lsn() {
        let errs = [
            WalError::BadPageMagic {
                lsn: Lsn(0x1_0300_0000),
                found: 0xD10D,
                expected: Some(0xD110),
            },
            WalError::CrcMismatch {
                lsn: Lsn(0x300_0028),
                stored: 1,
                computed: 2,
            },
            WalError::InvalidPrevLink {
                lsn: Lsn(0x300_0028),
                found: Lsn(0x400_0000),
                expected: None,
            },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert!(s.contains(&e.lsn().unwrap().to_string()), "{s}");
        }
        let s = WalError::BadPageMagic {
            lsn: Lsn(0x1_0300_0000),
            found: 0xD10D,
            expected: Some(0xD110),
        }
        .to_string();
        assert_eq!(
            s,
            "invalid WAL page magic 0xD10D at 1/3000000 (PostgreSQL 14's): expected 0xD110 \
             (PostgreSQL 15); the WAL was written by another PostgreSQL major version or is not WAL"
        );
    }

    #[test]
    fn end_of_wal_classification() {
        assert!(WalError::EndOfWal { lsn: Lsn(8) }.is_end_of_wal());
        assert!(WalError::ZeroPage { lsn: Lsn(8192) }.is_end_of_wal());
        assert!(WalError::PageAddrMismatch {
            lsn: Lsn(0x300_2000),
            found: Lsn(0x100_2000)
        }
        .is_end_of_wal());
        assert!(!WalError::PageAddrMismatch {
            lsn: Lsn(0x300_2000),
            found: Lsn(0x500_2000)
        }
        .is_end_of_wal());
        assert!(!WalError::CrcMismatch {
            lsn: Lsn(8),
            stored: 0,
            computed: 1
        }
        .is_end_of_wal());
    }
}
