//! WAL segment numbers and file names for any `wal_segment_size`.
//!
//! A segment file is named `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment number split into a
//! "log" part (`segno / segments_per_xlogid`) and a "seg" part (`segno % segments_per_xlogid`), where
//! `segments_per_xlogid = 2^32 / wal_segment_size` (see `XLogFileName` in `xlog_internal.h`).

use std::fmt;

use thiserror::Error;

use crate::{Lsn, TimelineId};

/// Smallest and largest `wal_segment_size` PostgreSQL accepts (`initdb --wal-segsize`).
pub const MIN_WAL_SEGMENT_SIZE: u32 = 1024 * 1024;
pub const MAX_WAL_SEGMENT_SIZE: u32 = 1024 * 1024 * 1024;
/// The default and, before PostgreSQL 11, the only segment size.
pub const DEFAULT_WAL_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;

/// A validated `wal_segment_size` in bytes: a power of two between 1 MB and 1 GB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalSegmentSize(u32);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("invalid wal_segment_size {0}: must be a power of two between 1 MB and 1 GB")]
    InvalidSegmentSize(u64),
    #[error("cannot parse wal_segment_size {0:?}")]
    UnparsableSegmentSize(String),
}

impl WalSegmentSize {
    pub fn new(bytes: u64) -> Result<Self, SegmentError> {
        if bytes.is_power_of_two()
            && bytes >= u64::from(MIN_WAL_SEGMENT_SIZE)
            && bytes <= u64::from(MAX_WAL_SEGMENT_SIZE)
        {
            Ok(WalSegmentSize(bytes as u32))
        } else {
            Err(SegmentError::InvalidSegmentSize(bytes))
        }
    }

    /// Parses the value `SHOW wal_segment_size` returns: `16MB`, `1GB`, `1048576` (plain bytes, as
    /// PostgreSQL 10 reports it in 8 kB units is not possible: PG 10 shows `16MB` too).
    pub fn parse_show(value: &str) -> Result<Self, SegmentError> {
        let v = value.trim();
        let unparsable = || SegmentError::UnparsableSegmentSize(value.to_string());
        let (num, mult) = if let Some(n) = v.strip_suffix("GB") {
            (n, 1024 * 1024 * 1024)
        } else if let Some(n) = v.strip_suffix("MB") {
            (n, 1024 * 1024)
        } else if let Some(n) = v.strip_suffix("kB") {
            (n, 1024)
        } else if let Some(n) = v.strip_suffix('B') {
            (n, 1)
        } else {
            (v, 1)
        };
        let n: u64 = num.trim().parse().map_err(|_| unparsable())?;
        Self::new(n.checked_mul(mult).ok_or_else(unparsable)?)
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn as_u64(self) -> u64 {
        u64::from(self.0)
    }

    /// `XLogSegmentsPerXLogId`.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }

    pub fn segno(self, lsn: Lsn) -> XLogSegNo {
        XLogSegNo(lsn.0 / u64::from(self.0))
    }

    pub fn segment_start(self, segno: XLogSegNo) -> Lsn {
        Lsn(segno.0 * u64::from(self.0))
    }

    pub fn offset(self, lsn: Lsn) -> u32 {
        (lsn.0 % u64::from(self.0)) as u32
    }
}

impl Default for WalSegmentSize {
    fn default() -> Self {
        WalSegmentSize(DEFAULT_WAL_SEGMENT_SIZE)
    }
}

impl fmt::Display for WalSegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 * 1024 {
            write!(f, "{}GB", self.0 / (1024 * 1024 * 1024))
        } else {
            write!(f, "{}MB", self.0 / (1024 * 1024))
        }
    }
}

/// A WAL segment number (`XLogSegNo`): the LSN divided by the segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XLogSegNo(pub u64);

impl XLogSegNo {
    pub fn next(self) -> XLogSegNo {
        XLogSegNo(self.0 + 1)
    }
}

/// A segment on a timeline: enough to name its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    pub timeline: TimelineId,
    pub segno: XLogSegNo,
}

impl SegmentId {
    pub fn new(timeline: TimelineId, segno: XLogSegNo) -> Self {
        SegmentId { timeline, segno }
    }

    /// The 24-character file name (`XLogFileName`).
    pub fn file_name(self, seg: WalSegmentSize) -> String {
        let per = seg.segments_per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline.0,
            self.segno.0 / per,
            self.segno.0 % per
        )
    }

    pub fn start_lsn(self, seg: WalSegmentSize) -> Lsn {
        seg.segment_start(self.segno)
    }

    pub fn end_lsn(self, seg: WalSegmentSize) -> Lsn {
        seg.segment_start(self.segno.next())
    }
}

/// What a WAL-ish file name in an archive or `pg_wal` directory denotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFileName {
    /// A segment, maybe compressed and/or partial.
    Segment {
        timeline: TimelineId,
        /// The "log" half of the segment number, as written in the name.
        log: u32,
        /// The "seg" half of the segment number, as written in the name.
        seg: u32,
        compression: Option<Compression>,
        partial: bool,
    },
    /// `TTTTTTTT.history`.
    History(TimelineId),
    /// A backup history file `TTTTTTTTXXXXXXXXYYYYYYYY.ZZZZZZZZ.backup`.
    BackupHistory { name: String },
}

/// Compression suffixes that pg_receivewal and walrelay use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Lz4 => ".lz4",
            Compression::Zstd => ".zst",
        }
    }
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalFileName {
    /// Parses a directory entry name; `None` for anything that is not WAL-related.
    pub fn parse(name: &str) -> Option<WalFileName> {
        if let Some(tli) = name.strip_suffix(".history") {
            if tli.len() == 8 && is_upper_hex(tli) {
                let t = u32::from_str_radix(tli, 16).ok()?;
                return Some(WalFileName::History(TimelineId(t)));
            }
            return None;
        }
        if let Some(stem) = name.strip_suffix(".backup") {
            if stem.len() == 24 + 1 + 8
                && is_upper_hex(&stem[..24])
                && stem.as_bytes()[24] == b'.'
                && is_upper_hex(&stem[25..])
            {
                return Some(WalFileName::BackupHistory {
                    name: name.to_string(),
                });
            }
            return None;
        }
        let (rest, partial) = match name.strip_suffix(".partial") {
            Some(r) => (r, true),
            None => (name, false),
        };
        let (hex, compression) = if let Some(h) = rest.strip_suffix(".gz") {
            (h, Some(Compression::Gzip))
        } else if let Some(h) = rest.strip_suffix(".lz4") {
            (h, Some(Compression::Lz4))
        } else if let Some(h) = rest.strip_suffix(".zst") {
            (h, Some(Compression::Zstd))
        } else {
            (rest, None)
        };
        if hex.len() != 24 || !is_upper_hex(hex) {
            return None;
        }
        let timeline = u32::from_str_radix(&hex[0..8], 16).ok()?;
        let log = u32::from_str_radix(&hex[8..16], 16).ok()?;
        let seg = u32::from_str_radix(&hex[16..24], 16).ok()?;
        Some(WalFileName::Segment {
            timeline: TimelineId(timeline),
            log,
            seg,
            compression,
            partial,
        })
    }

    /// The segment this name denotes, when it is a segment name valid for `seg_size`
    /// (the "seg" half must be below `segments_per_xlogid`).
    pub fn segment_id(&self, seg_size: WalSegmentSize) -> Option<SegmentId> {
        match *self {
            WalFileName::Segment {
                timeline, log, seg, ..
            } => {
                let per = seg_size.segments_per_xlogid();
                if u64::from(seg) >= per {
                    return None;
                }
                Some(SegmentId::new(
                    timeline,
                    XLogSegNo(u64::from(log) * per + u64::from(seg)),
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_size_validation() {
        assert!(WalSegmentSize::new(16 * 1024 * 1024).is_ok());
        assert!(WalSegmentSize::new(1024 * 1024).is_ok());
        assert!(WalSegmentSize::new(1024 * 1024 * 1024).is_ok());
        assert!(WalSegmentSize::new(512 * 1024).is_err());
        assert!(WalSegmentSize::new(3 * 1024 * 1024).is_err());
        assert!(WalSegmentSize::new(2048 * 1024 * 1024).is_err());
        assert!(WalSegmentSize::new(0).is_err());
    }

    #[test]
    fn parse_show_values() {
        assert_eq!(
            WalSegmentSize::parse_show("16MB").unwrap().bytes(),
            16 * 1024 * 1024
        );
        assert_eq!(
            WalSegmentSize::parse_show("1GB").unwrap().bytes(),
            1024 * 1024 * 1024
        );
        assert_eq!(
            WalSegmentSize::parse_show("1048576").unwrap().bytes(),
            1024 * 1024
        );
        assert!(WalSegmentSize::parse_show("banana").is_err());
        assert!(WalSegmentSize::parse_show("").is_err());
        assert!(WalSegmentSize::parse_show("99999999999999999999GB").is_err());
    }

    #[test]
    fn file_names_16mb() {
        let s = WalSegmentSize::default();
        let id = SegmentId::new(TimelineId(1), s.segno(Lsn(0x1_0300_0028)));
        assert_eq!(id.file_name(s), "000000010000000100000003");
        assert_eq!(id.start_lsn(s), Lsn(0x1_0300_0000));
        assert_eq!(id.end_lsn(s), Lsn(0x1_0400_0000));
    }

    #[test]
    fn file_names_1mb() {
        let s = WalSegmentSize::new(1024 * 1024).unwrap();
        // 0/FF00000 -> segno 0xFF in log 0
        let id = SegmentId::new(TimelineId(2), s.segno(Lsn(0x0FF0_0000)));
        assert_eq!(id.file_name(s), "0000000200000000000000FF");
        let id = SegmentId::new(TimelineId(2), s.segno(Lsn(0x1_0010_0000)));
        assert_eq!(id.file_name(s), "000000020000000100000001");
    }

    #[test]
    fn parse_names() {
        let s = WalSegmentSize::default();
        match WalFileName::parse("000000010000000100000003").unwrap() {
            n @ WalFileName::Segment {
                partial: false,
                compression: None,
                ..
            } => assert_eq!(
                n.segment_id(s),
                Some(SegmentId::new(TimelineId(1), XLogSegNo(0x103)))
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            WalFileName::parse("000000010000000100000003.gz.partial"),
            Some(WalFileName::Segment {
                partial: true,
                compression: Some(Compression::Gzip),
                ..
            })
        ));
        assert!(matches!(
            WalFileName::parse("000000010000000100000003.lz4"),
            Some(WalFileName::Segment {
                compression: Some(Compression::Lz4),
                ..
            })
        ));
        assert_eq!(
            WalFileName::parse("0000000A.history"),
            Some(WalFileName::History(TimelineId(10)))
        );
        assert!(matches!(
            WalFileName::parse("000000010000000000000002.00000028.backup"),
            Some(WalFileName::BackupHistory { .. })
        ));
        for bad in [
            "",
            "00000001000000010000000",
            "0000000100000001000000033",
            "00000001000000010000000g",
            "00000001000000010000000a",
            "0000000a.history",
            "000000010000000100000003.tmp",
            ".partial",
            "archive_status",
        ] {
            assert_eq!(WalFileName::parse(bad), None, "{bad}");
        }
        // seg half out of range for 16MB segments (256 per xlogid)
        let n = WalFileName::parse("000000010000000100000100").unwrap();
        assert_eq!(n.segment_id(s), None);
    }

    proptest! {
        #[test]
        fn name_roundtrip(tli in 1u32.., segno in 0u64..(1u64 << 40), shift in 20u32..=30) {
            let s = WalSegmentSize::new(1u64 << shift).unwrap();
            let id = SegmentId::new(TimelineId(tli), XLogSegNo(segno % ((1u64 << 32) * s.segments_per_xlogid())));
            let name = id.file_name(s);
            prop_assert_eq!(WalFileName::parse(&name).unwrap().segment_id(s), Some(id));
        }

        #[test]
        fn parse_never_panics(s in ".{0,50}") {
            let _ = WalFileName::parse(&s);
        }
    }
}
