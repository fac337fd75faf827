//! The page-header seam of start-position discovery: [`PageHeaderReader`], and its implementation
//! [`WalPageHeaderReader`] over `walrelay-wal`'s parser.
//!
//! Start-position discovery must tell a segment walrelay really received from one that only *looks*
//! complete: a standby's checkpointer recycles old segments by renaming them to future names, so a
//! full-size file under a valid name may hold stale WAL of an older segment. The page headers say which
//! (`XLogPageHeaderData`, and `XLogLongPageHeaderData` on a segment's first page; layout and parsing
//! in `walrelay_wal::page`).
//!
//! Discovery asks two questions — "what does this segment's first page say" and "what does page N
//! say" — and needs one answer the parser does not give as such: *nothing was written here* (an
//! all-zero header, [`PageHeaderError::Zeroed`]), which makes a `.partial` file resumable rather than
//! corrupt. [`WalPageHeaderReader`] maps the parser's errors onto that, and judges short headers by
//! what [`walrelay_wal::parse_page_header`] leaves to its callers (flag bits, a zero timeline).
//!
//! The [`PageHeaderReader`] trait stays so tests can plug in a reader that fails on purpose.

use thiserror::Error;
use walrelay_wal::page::{SHORT_PAGE_HEADER_SIZE, XLP_ALL_FLAGS};
use walrelay_wal::{inspect_segment_start, parse_page_header, WalError};

pub use walrelay_wal::{LongPageHeader, PageHeader};

/// Why bytes are not a usable WAL page header.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PageHeaderError {
    #[error("only {len} bytes where a {need}-byte WAL page header belongs: the file is truncated")]
    Truncated { len: usize, need: usize },
    #[error("the page header is all zeros: no WAL was written here")]
    Zeroed,
    #[error("xlp_tli is 0: not a WAL page")]
    ZeroTimeline,
    /// The header is not plausible WAL (magic, flag bits, sizes, address), as the wal crate says.
    #[error(transparent)]
    Wal(WalError),
    /// A pluggable reader's own error, as text.
    #[error("{0}")]
    Invalid(String),
}

impl From<WalError> for PageHeaderError {
    fn from(e: WalError) -> Self {
        match e {
            WalError::TruncatedPageHeader { needed, got } => PageHeaderError::Truncated {
                len: got,
                need: needed,
            },
            WalError::ZeroSegmentStart | WalError::ZeroPage { .. } => PageHeaderError::Zeroed,
            other => PageHeaderError::Wal(other),
        }
    }
}

/// Reads page headers for [`crate::find_streaming_start`].
pub trait PageHeaderReader {
    /// Parses the long header at the start of a segment's first page.
    fn segment_start(&self, first_page: &[u8]) -> Result<LongPageHeader, PageHeaderError>;
    /// Parses the (short) header at the start of any page.
    fn page(&self, page: &[u8]) -> Result<PageHeader, PageHeaderError>;
}

/// The reader discovery uses: `walrelay-wal`'s parser, plus the checks described in the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalPageHeaderReader;

impl PageHeaderReader for WalPageHeaderReader {
    /// [`inspect_segment_start`] (known magic, defined flag bits, long header, valid sizes, a
    /// segment-aligned address), and a timeline that is not 0.
    fn segment_start(&self, first_page: &[u8]) -> Result<LongPageHeader, PageHeaderError> {
        let header = inspect_segment_start(first_page)?;
        if header.timeline.0 == 0 {
            return Err(PageHeaderError::ZeroTimeline);
        }
        Ok(header)
    }

    /// [`parse_page_header`], refusing what cannot be a page PostgreSQL wrote: all zeros, flag bits
    /// it does not define, timeline 0. Whether the page belongs where it was read is the caller's
    /// comparison of `pageaddr`.
    fn page(&self, page: &[u8]) -> Result<PageHeader, PageHeaderError> {
        let bytes = page
            .get(..SHORT_PAGE_HEADER_SIZE)
            .ok_or(PageHeaderError::Truncated {
                len: page.len(),
                need: SHORT_PAGE_HEADER_SIZE,
            })?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(PageHeaderError::Zeroed);
        }
        let header = parse_page_header(page)?;
        if header.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::InvalidInfoBits {
                lsn: header.pageaddr,
                info: header.info,
            }
            .into());
        }
        if header.timeline.0 == 0 {
            return Err(PageHeaderError::ZeroTimeline);
        }
        Ok(header)
    }
}

/// Test helpers that build page headers the way PostgreSQL lays them out.
#[cfg(test)]
pub(crate) mod fixtures {
    use walrelay_protocol::{Lsn, TimelineId};
    use walrelay_wal::page::{
        LongHeaderFields, LONG_PAGE_HEADER_SIZE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
    };

    use super::*;

    /// PostgreSQL 15's `XLOG_PAGE_MAGIC`.
    pub const MAGIC_PG15: u16 = 0xD110;

    fn encode(header: PageHeader) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(LONG_PAGE_HEADER_SIZE);
        header.encode_into(&mut bytes);
        bytes
    }

    /// A first page's long header (`XLP_LONG_HEADER` only, no record continued).
    pub fn long_header(tli: u32, pageaddr: u64, sysid: u64, seg_size: u32, blcksz: u32) -> Vec<u8> {
        encode(PageHeader {
            magic: MAGIC_PG15,
            info: XLP_LONG_HEADER,
            timeline: TimelineId(tli),
            pageaddr: Lsn(pageaddr),
            rem_len: 0,
            long: Some(LongHeaderFields {
                system_identifier: sysid,
                segment_size: seg_size,
                block_size: blcksz,
            }),
        })
    }

    /// Any other page's short header, continuing a 100-byte record remainder.
    pub fn short_header(tli: u32, pageaddr: u64) -> Vec<u8> {
        encode(PageHeader {
            magic: MAGIC_PG15,
            info: XLP_FIRST_IS_CONTRECORD,
            timeline: TimelineId(tli),
            pageaddr: Lsn(pageaddr),
            rem_len: 100,
            long: None,
        })
    }

    /// The first `valid_pages` pages of segment `segno` written as WAL of timeline `tli` (headers plus a
    /// recognisable non-zero filler), the rest zeros — what a walreceiver leaves in a zero-filled file.
    pub fn segment(
        tli: u32,
        segno: u64,
        sysid: u64,
        seg_size: u32,
        blcksz: u32,
        valid_pages: usize,
    ) -> Vec<u8> {
        let mut v = vec![0u8; seg_size as usize];
        let start = segno * u64::from(seg_size);
        for (i, page) in v.chunks_mut(blcksz as usize).enumerate() {
            if i >= valid_pages {
                break;
            }
            let addr = start + (i as u64) * u64::from(blcksz);
            let header = if i == 0 {
                long_header(tli, addr, sysid, seg_size, blcksz)
            } else {
                short_header(tli, addr)
            };
            page[..header.len()].copy_from_slice(&header);
            for (j, b) in page[header.len()..].iter_mut().enumerate() {
                *b = ((addr as usize + j) % 251) as u8 | 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use proptest::prelude::*;
    use walrelay_protocol::{Lsn, TimelineId};
    use walrelay_wal::page::{LONG_PAGE_HEADER_SIZE, XLP_LONG_HEADER};

    /// The first 40 bytes of `000000010000000000000006` from a PostgreSQL 15 `initdb --wal-segsize=1`
    /// (system identifier 7712898326429307183); the wal crate's tests read the same bytes.
    const PG15_SEGMENT_6_START: [u8; 40] = [
        0x10, 0xd1, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xd9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2f, 0x11, 0x86, 0xc7, 0x29, 0xb8,
        0x09, 0x6b, 0x00, 0x00, 0x10, 0x00, 0x00, 0x20, 0x00, 0x00,
    ];

    fn reader() -> WalPageHeaderReader {
        WalPageHeaderReader
    }

    #[test]
    fn fixture_matches_real_layout() {
        let mut real = PG15_SEGMENT_6_START;
        // Normalise the fields the fixture does not model (info flags, xlp_rem_len).
        real[2] = 0x02;
        real[16] = 0;
        assert_eq!(
            long_header(1, 0x60_0000, 7_712_898_326_429_307_183, 1 << 20, 8192),
            real
        );
        let h = reader().segment_start(&PG15_SEGMENT_6_START).unwrap();
        assert_eq!(h.pageaddr, Lsn(0x60_0000));
        assert_eq!(h.system_identifier, 7_712_898_326_429_307_183);
    }

    #[test]
    fn rejects_empty_truncated_and_zeroed() {
        let r = reader();
        assert_eq!(
            r.segment_start(&[]),
            Err(PageHeaderError::Truncated { len: 0, need: 40 })
        );
        assert_eq!(
            r.segment_start(&PG15_SEGMENT_6_START[..39]),
            Err(PageHeaderError::Truncated { len: 39, need: 40 })
        );
        assert_eq!(r.segment_start(&[0u8; 8192]), Err(PageHeaderError::Zeroed));
        let page_1 = short_header(1, 0x30_2000);
        assert_eq!(
            r.page(&page_1[..23]),
            Err(PageHeaderError::Truncated { len: 23, need: 24 })
        );
        assert_eq!(r.page(&[0u8; 24]), Err(PageHeaderError::Zeroed));
    }

    #[test]
    fn rejects_implausible_fields() {
        let r = reader();
        let good = long_header(1, 0, 1, 1 << 20, 8192);
        let mut b = good.clone();
        b[2] = 0x12; // 0x10 is no flag PostgreSQL defines
        assert!(matches!(
            r.segment_start(&b),
            Err(PageHeaderError::Wal(WalError::InvalidInfoBits { .. }))
        ));
        let mut b = good.clone();
        b[2] = 0x01; // no long-header flag
        assert!(matches!(
            r.segment_start(&b),
            Err(PageHeaderError::Wal(WalError::MissingLongHeader { .. }))
        ));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(r.segment_start(&b), Err(PageHeaderError::ZeroTimeline));
        let mut b = good.clone();
        b[32..36].copy_from_slice(&(3u32 << 20).to_le_bytes());
        assert!(matches!(
            r.segment_start(&b),
            Err(PageHeaderError::Wal(WalError::InvalidSegmentSize { .. }))
        ));
        let mut b = good.clone();
        b[36..40].copy_from_slice(&512u32.to_le_bytes());
        assert!(matches!(
            r.segment_start(&b),
            Err(PageHeaderError::Wal(WalError::InvalidBlockSize { .. }))
        ));

        let short = short_header(1, 0x2000);
        let mut b = short.clone();
        b[2] = 0x11;
        assert!(matches!(
            r.page(&b),
            Err(PageHeaderError::Wal(WalError::InvalidInfoBits { .. }))
        ));
        let mut b = short;
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(r.page(&b), Err(PageHeaderError::ZeroTimeline));
    }

    #[test]
    fn synthetic_segment_layout() {
        let r = reader();
        let seg = segment(2, 5, 42, 1 << 20, 8192, 3);
        let h = r.segment_start(&seg).unwrap();
        assert_eq!(h.pageaddr, Lsn(5 << 20));
        assert_eq!(h.timeline, TimelineId(2));
        let p2 = r.page(&seg[2 * 8192..]).unwrap();
        assert_eq!(p2.pageaddr, Lsn((5 << 20) + 2 * 8192));
        assert_eq!(p2.info & XLP_LONG_HEADER, 0);
        assert_eq!(r.page(&seg[3 * 8192..]), Err(PageHeaderError::Zeroed));
        assert_eq!(
            &seg[..LONG_PAGE_HEADER_SIZE],
            &long_header(2, 5 << 20, 42, 1 << 20, 8192)[..]
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = reader().segment_start(&bytes);
            let _ = reader().page(&bytes);
        }
    }
}
