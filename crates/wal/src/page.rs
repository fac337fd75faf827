//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData` in `xlog_internal.h`).
//!
//! WAL is a sequence of `XLOG_BLCKSZ` pages (8 kB unless the server was built otherwise). Each page
//! starts with a 24-byte short header; the first page of every segment has a 40-byte long header
//! that adds the cluster's system identifier, the segment size and the page size, so a segment file
//! can be identified on its own. Layout (little-endian, x86_64 alignment):
//!
//! ```text
//! offset size  field
//!      0    2  xlp_magic        WAL format version (see crate::magic)
//!      2    2  xlp_info         XLP_* flags
//!      4    4  xlp_tli          timeline of the first record on the page
//!      8    8  xlp_pageaddr     LSN of this page
//!     16    4  xlp_rem_len      bytes of a record continued from the previous page
//!     20    4  (padding to MAXALIGN: SizeOfXLogShortPHD = 24)
//!     24    8  xlp_sysid        long header only
//!     32    4  xlp_seg_size     long header only
//!     36    4  xlp_xlog_blcksz  long header only (SizeOfXLogLongPHD = 40)
//! ```

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};

use crate::error::WalError;
use crate::magic::major_for_page_magic;

/// `SizeOfXLogShortPHD`.
pub const SHORT_PAGE_HEADER_SIZE: usize = 24;
/// `SizeOfXLogLongPHD`.
pub const LONG_PAGE_HEADER_SIZE: usize = 40;
/// The default (and practically universal) `XLOG_BLCKSZ`.
pub const DEFAULT_XLOG_BLCKSZ: u32 = 8192;

/// The data at the start of this page continues a record from the previous page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has a long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Set by PostgreSQL 10–18 on pages written while no base backup runs (once meant "backup blocks on
/// this page may be removed by an archiver"). Removed after 18, when the next flag took its value.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// Written by crash recovery on the page where a record that was cut short by the crash should have
/// continued: the partial record is abandoned and a new record (`XLOG_OVERWRITE_CONTRECORD`) starts
/// here. Added in PostgreSQL 15 and back-patched to 10–14 (minor releases of November 2021).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every `xlp_info` bit PostgreSQL 10–18 defines.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// A decoded page header, short or long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimelineId,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    /// The extra fields of a long header (`XLP_LONG_HEADER` set).
    pub long: Option<LongHeaderFields>,
}

/// The fields only a long page header has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeaderFields {
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// The long header that starts every WAL segment: enough to tell which cluster, timeline and
/// position a segment file really holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimelineId,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

impl PageHeader {
    /// Bytes the header occupies on the page (`XLogPageHeaderSize`).
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        }
    }

    /// `XLP_FIRST_IS_CONTRECORD`: the page begins with the rest of a record.
    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: a record cut short by a crash is abandoned here.
    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }

    /// The PostgreSQL major version that writes this page's magic, if known.
    pub fn major(&self) -> Option<u32> {
        major_for_page_magic(self.magic)
    }

    /// Appends the header as PostgreSQL lays it out: [`Self::size`] bytes, the padding zeroed. The
    /// inverse of [`parse_page_header`], for synthetic WAL and test fixtures.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.timeline.0.to_le_bytes());
        out.extend_from_slice(&self.pageaddr.0.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0; SHORT_PAGE_HEADER_SIZE - 20]);
        if let Some(l) = &self.long {
            out.extend_from_slice(&l.system_identifier.to_le_bytes());
            out.extend_from_slice(&l.segment_size.to_le_bytes());
            out.extend_from_slice(&l.block_size.to_le_bytes());
        }
    }

    /// The long header, if this is one.
    pub fn as_long(&self) -> Option<LongPageHeader> {
        self.long.map(|l| LongPageHeader {
            magic: self.magic,
            info: self.info,
            timeline: self.timeline,
            pageaddr: self.pageaddr,
            rem_len: self.rem_len,
            system_identifier: l.system_identifier,
            segment_size: l.segment_size,
            block_size: l.block_size,
        })
    }
}

impl From<LongPageHeader> for PageHeader {
    fn from(l: LongPageHeader) -> Self {
        PageHeader {
            magic: l.magic,
            info: l.info,
            timeline: l.timeline,
            pageaddr: l.pageaddr,
            rem_len: l.rem_len,
            long: Some(LongHeaderFields {
                system_identifier: l.system_identifier,
                segment_size: l.segment_size,
                block_size: l.block_size,
            }),
        }
    }
}

impl LongPageHeader {
    /// Checks that this header starts the WAL segment `segment` of a cluster with `segment_size`
    /// and (when known) `system_identifier`.
    ///
    /// This is the test for "does this file really hold the WAL its name claims": a standby's
    /// checkpointer renames old segments to future names for reuse, so a full-size file proves
    /// nothing until its header says so. The page's timeline may be older than the segment's: the
    /// first segment of a new timeline starts with a copy of the old timeline's pages.
    pub fn check_segment(
        &self,
        segment: SegmentId,
        segment_size: WalSegmentSize,
        system_identifier: Option<u64>,
    ) -> Result<(), WalError> {
        let lsn = segment.start_lsn(segment_size);
        if self.segment_size != segment_size.bytes() {
            return Err(WalError::SegmentSizeMismatch {
                lsn,
                found: self.segment_size,
                expected: segment_size.bytes(),
            });
        }
        if self.pageaddr != lsn {
            return Err(WalError::PageAddrMismatch {
                lsn,
                found: self.pageaddr,
            });
        }
        if let Some(expected) = system_identifier {
            if self.system_identifier != expected {
                return Err(WalError::SystemIdMismatch {
                    lsn,
                    found: self.system_identifier,
                    expected,
                });
            }
        }
        if self.timeline > segment.timeline {
            return Err(WalError::TimelineAhead {
                lsn,
                found: self.timeline,
                expected: segment.timeline,
            });
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the page header at the start of `page` without judging it (no LSN is known here; see
/// [`crate::WalValidator`] for the checks). `page` may be longer than the header.
pub fn parse_page_header(page: &[u8]) -> Result<PageHeader, WalError> {
    if page.len() < SHORT_PAGE_HEADER_SIZE {
        return Err(WalError::TruncatedPageHeader {
            needed: SHORT_PAGE_HEADER_SIZE,
            got: page.len(),
        });
    }
    let info = u16_at(page, 2);
    let long = if info & XLP_LONG_HEADER != 0 {
        if page.len() < LONG_PAGE_HEADER_SIZE {
            return Err(WalError::TruncatedPageHeader {
                needed: LONG_PAGE_HEADER_SIZE,
                got: page.len(),
            });
        }
        Some(LongHeaderFields {
            system_identifier: u64_at(page, 24),
            segment_size: u32_at(page, 32),
            block_size: u32_at(page, 36),
        })
    } else {
        None
    };
    Ok(PageHeader {
        magic: u16_at(page, 0),
        info,
        timeline: TimelineId(u32_at(page, 4)),
        pageaddr: Lsn(u64_at(page, 8)),
        rem_len: u32_at(page, 16),
        long,
    })
}

/// True if `block_size` is a possible `XLOG_BLCKSZ` (`configure --with-wal-blocksize`: a power of
/// two from 1 to 64 kB).
pub fn is_valid_block_size(block_size: u32) -> bool {
    block_size.is_power_of_two() && (1024..=65536).contains(&block_size)
}

/// Reads the long header of a segment's first page: which position (`pageaddr`), timeline, cluster
/// (`system_identifier`), segment size and page size the segment holds. Cheap — for deciding where
/// to resume streaming; [`crate::validate_segment_file`] checks the rest.
///
/// `first_page` needs at least the 40 header bytes. The header must look like PostgreSQL 10–18 WAL:
/// known magic, only defined flag bits, `XLP_LONG_HEADER` set, a valid segment and page size and a
/// segment-aligned `pageaddr`. Compare the result with the file's name using
/// [`LongPageHeader::check_segment`].
pub fn inspect_segment_start(first_page: &[u8]) -> Result<LongPageHeader, WalError> {
    let hdr_bytes = first_page.get(..LONG_PAGE_HEADER_SIZE).ok_or({
        WalError::TruncatedPageHeader {
            needed: LONG_PAGE_HEADER_SIZE,
            got: first_page.len(),
        }
    })?;
    if hdr_bytes.iter().all(|&b| b == 0) {
        return Err(WalError::ZeroSegmentStart);
    }
    let hdr = parse_page_header(hdr_bytes)?;
    let lsn = hdr.pageaddr;
    if major_for_page_magic(hdr.magic).is_none() {
        return Err(WalError::BadPageMagic {
            lsn,
            found: hdr.magic,
            expected: None,
        });
    }
    if hdr.info & !XLP_ALL_FLAGS != 0 {
        return Err(WalError::InvalidInfoBits {
            lsn,
            info: hdr.info,
        });
    }
    let Some(long) = hdr.as_long() else {
        return Err(WalError::MissingLongHeader { lsn });
    };
    if WalSegmentSize::new(u64::from(long.segment_size)).is_err() {
        return Err(WalError::InvalidSegmentSize {
            lsn,
            segment_size: long.segment_size,
        });
    }
    if !is_valid_block_size(long.block_size) {
        return Err(WalError::InvalidBlockSize {
            lsn,
            block_size: long.block_size,
        });
    }
    let seg_start = Lsn(lsn.0 - lsn.segment_offset(long.segment_size));
    if seg_start != lsn {
        return Err(WalError::PageAddrMismatch {
            lsn: seg_start,
            found: lsn,
        });
    }
    Ok(long)
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_protocol::XLogSegNo;

    /// Segment 0/3000000 of a PostgreSQL 15 cluster with 1 MB segments.
    fn good_header() -> LongPageHeader {
        LongPageHeader {
            magic: 0xD110,
            info: XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
            timeline: TimelineId(1),
            pageaddr: Lsn(0x300_0000),
            rem_len: 0,
            system_identifier: 7_123_456_789_012_345_678,
            segment_size: 1 << 20,
            block_size: 8192,
        }
    }

    /// [`good_header`]'s bytes.
    fn good() -> Vec<u8> {
        let mut b = Vec::with_capacity(LONG_PAGE_HEADER_SIZE);
        PageHeader::from(good_header()).encode_into(&mut b);
        b
    }

    #[test]
    fn parses_long_header_fixture() {
        let h = parse_page_header(&good()).unwrap();
        assert_eq!(h.size(), LONG_PAGE_HEADER_SIZE);
        assert_eq!(h.major(), Some(15));
        assert!(!h.is_contrecord());
        let l = inspect_segment_start(&good()).unwrap();
        assert_eq!(l, good_header());
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        let id = SegmentId::new(TimelineId(1), XLogSegNo(0x30));
        assert_eq!(
            l.check_segment(id, seg, Some(7_123_456_789_012_345_678)),
            Ok(())
        );
        assert!(matches!(
            l.check_segment(SegmentId::new(TimelineId(1), XLogSegNo(0x31)), seg, None),
            Err(WalError::PageAddrMismatch { .. })
        ));
        assert!(matches!(
            l.check_segment(id, seg, Some(1)),
            Err(WalError::SystemIdMismatch { .. })
        ));
        assert!(matches!(
            l.check_segment(id, WalSegmentSize::default(), None),
            Err(WalError::SegmentSizeMismatch { .. })
        ));
        // A timeline-2 segment may start with timeline-1 pages, never the reverse.
        assert_eq!(
            l.check_segment(SegmentId::new(TimelineId(2), XLogSegNo(0x30)), seg, None),
            Ok(())
        );
        let mut tli3 = good();
        tli3[4] = 3;
        assert!(matches!(
            inspect_segment_start(&tli3).unwrap().check_segment(
                SegmentId::new(TimelineId(2), XLogSegNo(0x30)),
                seg,
                None
            ),
            Err(WalError::TimelineAhead { .. })
        ));
    }

    #[test]
    fn parses_short_header() {
        let mut b = good();
        b[2] = (XLP_FIRST_IS_CONTRECORD) as u8;
        b[16] = 0x10;
        let h = parse_page_header(&b[..24]).unwrap();
        assert_eq!(h.size(), SHORT_PAGE_HEADER_SIZE);
        assert!(h.is_contrecord());
        assert_eq!(h.rem_len, 0x10);
        assert_eq!(h.as_long(), None);
    }

    #[test]
    fn truncated_inputs() {
        let g = good();
        for n in 0..LONG_PAGE_HEADER_SIZE {
            assert!(
                matches!(
                    inspect_segment_start(&g[..n]),
                    Err(WalError::TruncatedPageHeader { .. })
                ),
                "{n}"
            );
        }
        for n in 0..SHORT_PAGE_HEADER_SIZE {
            assert!(parse_page_header(&g[..n]).is_err());
        }
        // A long flag with only the short part present.
        assert_eq!(
            parse_page_header(&g[..30]),
            Err(WalError::TruncatedPageHeader {
                needed: 40,
                got: 30
            })
        );
    }

    #[test]
    fn rejects_bad_segment_starts() {
        assert_eq!(
            inspect_segment_start(&[0; 8192]),
            Err(WalError::ZeroSegmentStart)
        );
        let mut b = good();
        b[0] = 0x0D; // 0xD10D: PostgreSQL 14 is still a known magic
        assert_eq!(inspect_segment_start(&b).unwrap().magic, 0xD10D);
        b[0] = 0x42;
        assert!(matches!(
            inspect_segment_start(&b),
            Err(WalError::BadPageMagic { found: 0xD142, .. })
        ));
        let mut b = good();
        b[2] = 0;
        assert_eq!(
            inspect_segment_start(&b),
            Err(WalError::MissingLongHeader {
                lsn: Lsn(0x300_0000)
            })
        );
        let mut b = good();
        b[2] = 0x12;
        assert!(matches!(
            inspect_segment_start(&b),
            Err(WalError::InvalidInfoBits { info: 0x12, .. })
        ));
        // Every flag PostgreSQL 10-18 defines is accepted (0x0F); 0x10 is not a flag.
        b[2] = 0x0F;
        assert_eq!(inspect_segment_start(&b).unwrap().info, 0x0F);
        let mut b = good();
        b[32..36].copy_from_slice(&3_000_000u32.to_le_bytes());
        assert!(matches!(
            inspect_segment_start(&b),
            Err(WalError::InvalidSegmentSize { .. })
        ));
        let mut b = good();
        b[36..40].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            inspect_segment_start(&b),
            Err(WalError::InvalidBlockSize { .. })
        ));
        let mut b = good();
        b[8..16].copy_from_slice(&0x300_2000u64.to_le_bytes());
        assert_eq!(
            inspect_segment_start(&b),
            Err(WalError::PageAddrMismatch {
                lsn: Lsn(0x300_0000),
                found: Lsn(0x300_2000)
            })
        );
    }

    /// The first 40 bytes of `000000010000000000000006` from a PostgreSQL 15 `initdb --wal-segsize=1`
    /// (system identifier 7712898326429307183).
    const PG15_SEGMENT_6_START: [u8; 40] = [
        0x10, 0xd1, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xd9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2f, 0x11, 0x86, 0xc7, 0x29, 0xb8,
        0x09, 0x6b, 0x00, 0x00, 0x10, 0x00, 0x00, 0x20, 0x00, 0x00,
    ];
    /// Page 1 of that same file: stale content of segment 3, left there when initdb recycled the file.
    const PG15_SEGMENT_6_PAGE_1: [u8; 24] = [
        0x10, 0xd1, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x20, 0x30, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xe4, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn reads_real_pg15_long_header() {
        let h = inspect_segment_start(&PG15_SEGMENT_6_START).unwrap();
        assert_eq!(
            h,
            LongPageHeader {
                magic: 0xD110,
                info: XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
                timeline: TimelineId(1),
                pageaddr: Lsn(0x60_0000),
                rem_len: 0xd9,
                system_identifier: 7_712_898_326_429_307_183,
                segment_size: 1024 * 1024,
                block_size: 8192,
            }
        );
        let mut encoded = Vec::new();
        PageHeader::from(h).encode_into(&mut encoded);
        assert_eq!(encoded, PG15_SEGMENT_6_START);
    }

    #[test]
    fn reads_real_pg15_recycled_page() {
        let h = parse_page_header(&PG15_SEGMENT_6_PAGE_1).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.timeline, TimelineId(1));
        // Page 1 of segment 6 should be at 0/602000; the stale page says 0/302000.
        assert_eq!(h.pageaddr, Lsn(0x30_2000));
        assert_eq!(h.as_long(), None);
        let mut encoded = Vec::new();
        h.encode_into(&mut encoded);
        assert_eq!(encoded, PG15_SEGMENT_6_PAGE_1);
    }

    proptest::proptest! {
        /// Whatever parses encodes back to the same bytes (the padding aside), and never panics.
        #[test]
        fn parse_encode_round_trip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            if let Ok(h) = parse_page_header(&bytes) {
                let mut encoded = Vec::new();
                h.encode_into(&mut encoded);
                proptest::prop_assert_eq!(encoded.len(), h.size());
                proptest::prop_assert_eq!(&encoded[..20], &bytes[..20]);
                proptest::prop_assert_eq!(&encoded[24..], &bytes[24..h.size()]);
            }
            let _ = inspect_segment_start(&bytes);
        }
    }
}
