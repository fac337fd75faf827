//! The streaming WAL validator: feed contiguous chunks, learn how far the WAL is proven good.
//!
//! walrelay receives WAL as XLogData messages (a start LSN and bytes; consecutive messages are
//! contiguous, and may split pages, page headers and records anywhere). Before it reports a
//! position as flushed it must know the bytes up to there are real WAL of the right cluster and
//! timeline: [`WalValidator`] checks them the way `xlogreader.c` would, in constant memory.
//!
//! # What is checked
//!
//! * every page header (`XLogReaderValidatePageHeader`): magic (pinned to one major version),
//!   flag bits, a long header exactly on segment starts, the long header's system identifier /
//!   segment size / page size, `xlp_pageaddr`, and `xlp_tli` (never decreasing, never past the
//!   streamed timeline);
//! * every record header (`ValidXLogRecordHeader`): `xl_tot_len` between 24 bytes and 1 GB, and
//!   `xl_prev` equal to the previous record's start (or just below the record for the first one);
//! * continuation pages: `XLP_FIRST_IS_CONTRECORD` present exactly when a record continues, with
//!   `xlp_rem_len` equal to what is left of it; `XLP_FIRST_IS_OVERWRITE_CONTRECORD` abandons the
//!   record in progress, as crash recovery intended;
//! * every record's CRC-32C, computed incrementally (records may be up to 1 GB);
//! * after an `XLOG_SWITCH` record, the rest of the segment is zeros (or, as older servers wrote
//!   it, zeros with ordinary short page headers).
//!
//! The resource manager id is not range-checked: the set of ids differs between major versions
//! (custom resource managers since 15) and the CRC covers it anyway.
//!
//! # Progress tracking
//!
//! [`WalValidator::validated_lsn`] is the highest position that may be reported as flushed: the
//! end of the last record whose CRC matched, moved further over bytes whose content is fully
//! known good without a CRC — alignment padding after a record, page headers between records,
//! and `XLOG_SWITCH` padding. While a record is incomplete, `validated_lsn` stays at its start,
//! however many of its bytes have arrived.
//!
//! A stream that starts on a page beginning with the tail of a record (`XLP_FIRST_IS_CONTRECORD`,
//! the usual case at a segment boundary) cannot check that tail: its header and the start of its
//! CRC lie before the stream. The tail is skipped by `xlp_rem_len` (checking the `xlp_rem_len` of
//! each page it spans), exactly as `XLogFindNextRecord` does, and `validated_lsn` moves past it:
//! nothing later could ever check those bytes, so holding the position back would not make it any
//! safer. The previous segment's own validation is what vouches for that record.
//!
//! After any error the validator is stuck: every later `feed` returns the same error, and
//! `validated_lsn` stays where it was. Only a non-contiguous feed is refused without poisoning it.

use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};

use crate::error::WalError;
use crate::magic::major_for_page_magic;
use crate::page::{
    is_valid_block_size, parse_page_header, LongPageHeader, DEFAULT_XLOG_BLCKSZ,
    LONG_PAGE_HEADER_SIZE, SHORT_PAGE_HEADER_SIZE, XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use crate::record::{finish_record_crc, RecordHeader, MAX_RECORD_LENGTH, XLOG_RECORD_HEADER_SIZE};

/// What the validator expects of the WAL it is fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// The cluster's `wal_segment_size`; long headers must agree.
    pub segment_size: WalSegmentSize,
    /// `XLOG_BLCKSZ`, 8192 unless the server was built otherwise; long headers must agree.
    pub block_size: u32,
    /// The `XLOG_PAGE_MAGIC` to require (see [`crate::page_magic_for_major`]). `None`: accept any
    /// magic of PostgreSQL 10–18 on the first page, then require that one.
    pub page_magic: Option<u16>,
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`). `None`: learn it from the first long
    /// page header, then require it.
    pub system_identifier: Option<u64>,
    /// The timeline being streamed: no page may carry a later one. `None`: no upper bound.
    pub timeline: Option<TimelineId>,
    /// Where the first fed byte is. Either a page boundary (normally a segment boundary), or the
    /// 8-byte aligned start of a record inside a page, past the page header.
    pub start_lsn: Lsn,
}

impl ValidatorConfig {
    /// Defaults: 8 kB pages, any known magic, system identifier learned, no timeline bound.
    pub fn new(segment_size: WalSegmentSize, start_lsn: Lsn) -> Self {
        ValidatorConfig {
            segment_size,
            block_size: DEFAULT_XLOG_BLCKSZ,
            page_magic: None,
            system_identifier: None,
            timeline: None,
            start_lsn,
        }
    }
}

/// Where the validator is relative to records, at [`WalValidator::position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Between records (possibly inside a page header or alignment padding).
    BetweenRecords,
    /// Inside the record starting at `start`; `validated_lsn` is held at `start`.
    InRecord { start: Lsn },
    /// Skipping the unverifiable tail of a record that began before the stream; `remaining` bytes
    /// of it are still to come.
    SkippingContrecord { remaining: u32 },
    /// In the zero padding that follows the `XLOG_SWITCH` record at `switch`.
    SwitchPadding { switch: Lsn },
}

#[derive(Clone, Copy, Debug)]
enum State {
    BetweenRecords,
    InRecord {
        start: u64,
        /// `xl_tot_len`, or 0 while fewer than 4 header bytes have arrived.
        total: u32,
        /// Bytes of the record seen so far, header included.
        got: u32,
        /// CRC-32C of the body bytes seen so far.
        crc: u32,
    },
    SkipContrecord {
        remaining: u32,
    },
    SwitchPadding {
        switch: u64,
    },
}

/// Validates a WAL byte stream; see the module documentation.
#[derive(Clone, Debug)]
pub struct WalValidator {
    segment_size: u64,
    page_size: u64,
    magic: Option<u16>,
    system_identifier: Option<u64>,
    max_timeline: Option<TimelineId>,

    /// Next byte expected.
    pos: u64,
    validated: u64,
    state: State,
    /// The next page header is the first of the stream (decides what a contrecord flag means).
    first_page: bool,
    latest_timeline: Option<TimelineId>,
    /// Start of the last record whose CRC matched: the next record's `xl_prev`.
    prev_record: Option<Lsn>,
    /// Start of a record abandoned at an `XLP_FIRST_IS_OVERWRITE_CONTRECORD` page, while no record
    /// has passed its checks since: `validated` stays there meanwhile, and the next record's
    /// `xl_prev` must point before it (the abandoned record was never complete).
    abandoned_record: Option<u64>,
    failed: Option<WalError>,

    page_hdr: [u8; LONG_PAGE_HEADER_SIZE],
    rec_hdr: [u8; XLOG_RECORD_HEADER_SIZE],

    records: u64,
    last_switch: Option<Lsn>,
    first_long_header: Option<LongPageHeader>,
    skipped_tail_end: Option<Lsn>,
    capture: Option<Capture>,
}

/// A record that passed its checks, kept by [`WalValidator::capture_records`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    pub header: RecordHeader,
    /// The first bytes after the 24-byte header (block headers, then data), at most the limit
    /// given to [`WalValidator::capture_records`].
    pub body_prefix: Vec<u8>,
}

/// Which records to keep, and the ones kept.
#[derive(Clone, Debug)]
struct Capture {
    rmid: u8,
    max_body: usize,
    /// The body of the record in progress, when it is one to keep.
    current: Option<Vec<u8>>,
    done: Vec<CapturedRecord>,
}

impl WalValidator {
    /// A validator expecting its first byte at `cfg.start_lsn`.
    pub fn new(cfg: ValidatorConfig) -> Result<Self, WalError> {
        let start = cfg.start_lsn;
        if !is_valid_block_size(cfg.block_size) || cfg.block_size > cfg.segment_size.bytes() {
            return Err(WalError::InvalidBlockSize {
                lsn: start,
                block_size: cfg.block_size,
            });
        }
        let page_size = u64::from(cfg.block_size);
        let page_off = start.0 & (page_size - 1);
        let first_page = page_off == 0;
        if !first_page {
            let page_start = start.0 - page_off;
            let header = if page_start % cfg.segment_size.as_u64() == 0 {
                LONG_PAGE_HEADER_SIZE
            } else {
                SHORT_PAGE_HEADER_SIZE
            };
            if page_off % 8 != 0 || page_off < header as u64 {
                return Err(WalError::InvalidStart { lsn: start });
            }
        }
        Ok(WalValidator {
            segment_size: cfg.segment_size.as_u64(),
            page_size,
            magic: cfg.page_magic,
            system_identifier: cfg.system_identifier,
            max_timeline: cfg.timeline,
            pos: start.0,
            validated: start.0,
            state: State::BetweenRecords,
            first_page,
            latest_timeline: None,
            prev_record: None,
            abandoned_record: None,
            failed: None,
            page_hdr: [0; LONG_PAGE_HEADER_SIZE],
            rec_hdr: [0; XLOG_RECORD_HEADER_SIZE],
            records: 0,
            last_switch: None,
            first_long_header: None,
            skipped_tail_end: None,
            capture: None,
        })
    }

    /// From now on, keeps every record of resource manager `rmid` that passes its checks — its
    /// header and the first `max_body` bytes after it — for [`Self::take_captured`]. Costs nothing
    /// for other records.
    pub fn capture_records(&mut self, rmid: u8, max_body: usize) {
        self.capture = Some(Capture {
            rmid,
            max_body,
            current: None,
            done: Vec::new(),
        });
    }

    /// The records kept since the last call (see [`Self::capture_records`]).
    pub fn take_captured(&mut self) -> Vec<CapturedRecord> {
        self.capture
            .as_mut()
            .map(|c| std::mem::take(&mut c.done))
            .unwrap_or_default()
    }

    /// A record's header is complete: start keeping its body if it is one to keep.
    fn capture_begin(&mut self, rmid: u8, body: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            c.current = (rmid == c.rmid).then(|| body[..body.len().min(c.max_body)].to_vec());
        }
    }

    /// More body bytes of the record in progress.
    fn capture_more(&mut self, body: &[u8]) {
        if let Some(Capture {
            current: Some(buf),
            max_body,
            ..
        }) = self.capture.as_mut()
        {
            let room = max_body.saturating_sub(buf.len());
            buf.extend_from_slice(&body[..body.len().min(room)]);
        }
    }

    /// Validates `bytes`, which must start at [`Self::position`] (where the previous feed ended).
    pub fn feed(&mut self, lsn: Lsn, bytes: &[u8]) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if lsn.0 != self.pos {
            return Err(WalError::NonContiguousFeed {
                expected: Lsn(self.pos),
                got: lsn,
            });
        }
        if self.pos.checked_add(bytes.len() as u64).is_none() {
            return Err(WalError::LsnOverflow {
                lsn,
                len: bytes.len(),
            });
        }
        let result = self.feed_bytes(bytes);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// The highest LSN up to which every byte is proven good (see "Progress tracking").
    pub fn validated_lsn(&self) -> Lsn {
        Lsn(self.validated)
    }

    /// Where the next [`Self::feed`] must start: the end of everything fed so far.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// Where the validator stands relative to records.
    pub fn state(&self) -> StreamState {
        match self.state {
            State::BetweenRecords => StreamState::BetweenRecords,
            State::InRecord { start, .. } => StreamState::InRecord { start: Lsn(start) },
            State::SkipContrecord { remaining } => StreamState::SkippingContrecord { remaining },
            State::SwitchPadding { switch } => StreamState::SwitchPadding {
                switch: Lsn(switch),
            },
        }
    }

    /// Records whose CRC matched so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Start of the last record whose CRC matched.
    pub fn last_record(&self) -> Option<Lsn> {
        self.prev_record
    }

    /// Start of the last `XLOG_SWITCH` record seen.
    pub fn last_switch(&self) -> Option<Lsn> {
        self.last_switch
    }

    /// The pinned page magic (configured, or learned from the first page).
    pub fn page_magic(&self) -> Option<u16> {
        self.magic
    }

    /// The system identifier (configured, or learned from the first long header).
    pub fn system_identifier(&self) -> Option<u64> {
        self.system_identifier
    }

    /// The timeline of the last page header seen.
    pub fn latest_timeline(&self) -> Option<TimelineId> {
        self.latest_timeline
    }

    /// The first long (segment-start) page header seen.
    pub fn first_long_header(&self) -> Option<LongPageHeader> {
        self.first_long_header
    }

    /// Where the unverifiable tail of a record begun before the stream ended (see "Progress
    /// tracking"), once it has been skipped.
    pub fn skipped_contrecord_end(&self) -> Option<Lsn> {
        self.skipped_tail_end
    }

    /// The error that stopped this validator, if any.
    pub fn failure(&self) -> Option<&WalError> {
        self.failed.as_ref()
    }

    fn header_len_at(&self, page_start: u64) -> usize {
        if page_start % self.segment_size == 0 {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        }
    }

    fn feed_bytes(&mut self, mut data: &[u8]) -> Result<(), WalError> {
        while !data.is_empty() {
            let page_off = (self.pos & (self.page_size - 1)) as usize;
            let page_start = self.pos - page_off as u64;
            let hdr_len = self.header_len_at(page_start);
            if page_off < hdr_len {
                let need = hdr_len - page_off;
                if page_off == 0 && data.len() >= hdr_len {
                    self.page_header(page_start, &data[..hdr_len])?;
                } else {
                    let n = need.min(data.len());
                    self.page_hdr[page_off..page_off + n].copy_from_slice(&data[..n]);
                    if n < need {
                        // The rest of the header comes with the next feed.
                        self.pos += n as u64;
                        return Ok(());
                    }
                    let hdr = self.page_hdr;
                    self.page_header(page_start, &hdr[..hdr_len])?;
                }
                self.pos += need as u64;
                data = &data[need..];
                if !matches!(self.state, State::InRecord { .. }) {
                    self.advance_validated();
                }
                continue;
            }
            let n = (self.page_size as usize - page_off).min(data.len());
            self.consume_in_page(&data[..n])?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Checks a complete page header (`hdr` is exactly as long as a header at `page_lsn` must be)
    /// and applies its continuation flags to the record state.
    fn page_header(&mut self, page_lsn: u64, hdr: &[u8]) -> Result<(), WalError> {
        let lsn = Lsn(page_lsn);
        let segment_start = page_lsn % self.segment_size == 0;
        if hdr.iter().all(|&b| b == 0) {
            // Pages after an XLOG_SWITCH record have zeroed headers (they are never a segment's
            // first page: the padding state ends at the segment boundary).
            if matches!(self.state, State::SwitchPadding { .. }) {
                return Ok(());
            }
            return Err(WalError::ZeroPage { lsn });
        }
        let magic = u16::from_le_bytes([hdr[0], hdr[1]]);
        let info = u16::from_le_bytes([hdr[2], hdr[3]]);
        match self.magic {
            Some(expected) if magic != expected => {
                return Err(WalError::BadPageMagic {
                    lsn,
                    found: magic,
                    expected: Some(expected),
                })
            }
            Some(_) => {}
            None if major_for_page_magic(magic).is_some() => self.magic = Some(magic),
            None => {
                return Err(WalError::BadPageMagic {
                    lsn,
                    found: magic,
                    expected: None,
                })
            }
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::InvalidInfoBits { lsn, info });
        }
        let long = info & XLP_LONG_HEADER != 0;
        if segment_start && !long {
            return Err(WalError::MissingLongHeader { lsn });
        }
        if !segment_start && long {
            return Err(WalError::UnexpectedLongHeader { lsn });
        }
        let h = parse_page_header(hdr)?;
        if let Some(l) = h.as_long() {
            match self.system_identifier {
                Some(expected) if l.system_identifier != expected => {
                    return Err(WalError::SystemIdMismatch {
                        lsn,
                        found: l.system_identifier,
                        expected,
                    })
                }
                Some(_) => {}
                None => self.system_identifier = Some(l.system_identifier),
            }
            if u64::from(l.segment_size) != self.segment_size {
                return Err(WalError::SegmentSizeMismatch {
                    lsn,
                    found: l.segment_size,
                    expected: self.segment_size as u32,
                });
            }
            if u64::from(l.block_size) != self.page_size {
                return Err(WalError::BlockSizeMismatch {
                    lsn,
                    found: l.block_size,
                    expected: self.page_size as u32,
                });
            }
            if self.first_long_header.is_none() {
                self.first_long_header = Some(l);
            }
        }
        if h.pageaddr != lsn {
            return Err(WalError::PageAddrMismatch {
                lsn,
                found: h.pageaddr,
            });
        }
        // Child timelines always have higher ids than their parents, so along one WAL sequence
        // the page timeline never goes down.
        if let Some(previous) = self.latest_timeline {
            if h.timeline < previous {
                return Err(WalError::TimelineBackwards {
                    lsn,
                    found: h.timeline,
                    previous,
                });
            }
        }
        if let Some(expected) = self.max_timeline {
            if h.timeline > expected {
                return Err(WalError::TimelineAhead {
                    lsn,
                    found: h.timeline,
                    expected,
                });
            }
        }
        self.latest_timeline = Some(h.timeline);

        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
        let data_lsn = Lsn(page_lsn + h.size() as u64);
        if self.first_page {
            self.first_page = false;
            if contrecord && !overwrite {
                if h.rem_len == 0 {
                    return Err(WalError::ContrecordLength {
                        lsn,
                        rem_len: 0,
                        expected: None,
                    });
                }
                self.state = State::SkipContrecord {
                    remaining: h.rem_len,
                };
            }
            return Ok(());
        }
        match self.state {
            State::BetweenRecords | State::SwitchPadding { .. } => {
                if contrecord && !overwrite {
                    return Err(WalError::UnexpectedContrecord { lsn: data_lsn });
                }
            }
            State::InRecord {
                start, total, got, ..
            } => {
                if overwrite {
                    // Crash recovery found this record cut short and wrote a new record here:
                    // the partial record is not WAL any more, and the next record's xl_prev
                    // points before it. Its bytes are not vouched for, though: a damaged length
                    // can make a good record look cut short, which only the next record's xl_prev
                    // check reveals. So nothing counts as validated past the abandoned record's
                    // start until a record after it has passed its checks.
                    self.state = State::BetweenRecords;
                    self.abandoned_record = Some(start);
                    if let Some(c) = self.capture.as_mut() {
                        c.current = None;
                    }
                    return Ok(());
                }
                if !contrecord {
                    return Err(WalError::MissingContrecord {
                        lsn,
                        record: Some(Lsn(start)),
                    });
                }
                // Records start 8-byte aligned, so at least 8 header bytes (xl_tot_len included)
                // precede any page boundary: `total` is known here.
                let expected = u64::from(total.saturating_sub(got));
                if h.rem_len == 0 || u64::from(h.rem_len) != expected {
                    return Err(WalError::ContrecordLength {
                        lsn,
                        rem_len: h.rem_len,
                        expected: Some(expected),
                    });
                }
            }
            State::SkipContrecord { remaining } => {
                if overwrite {
                    self.state = State::BetweenRecords;
                    return Ok(());
                }
                if !contrecord {
                    return Err(WalError::MissingContrecord { lsn, record: None });
                }
                if h.rem_len != remaining {
                    return Err(WalError::ContrecordLength {
                        lsn,
                        rem_len: h.rem_len,
                        expected: Some(u64::from(remaining)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Consumes `chunk`, which lies inside one page after its header.
    fn consume_in_page(&mut self, chunk: &[u8]) -> Result<(), WalError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            match self.state {
                State::BetweenRecords => {
                    let pad = (self.pos.wrapping_neg() & 7) as usize;
                    if pad > 0 {
                        let n = pad.min(rest.len());
                        rest = &rest[n..];
                        self.pos += n as u64;
                        self.advance_validated();
                        continue;
                    }
                    let start = self.pos;
                    if let Some(hdr) = rest.first_chunk::<XLOG_RECORD_HEADER_SIZE>() {
                        // Fast path: the whole header is here.
                        let h = RecordHeader::parse(hdr);
                        check_tot_len(start, h.tot_len)?;
                        self.check_prev(start, h.prev)?;
                        let total = h.tot_len as usize;
                        if total <= rest.len() {
                            let body_crc = crc32c::crc32c(&rest[XLOG_RECORD_HEADER_SIZE..total]);
                            check_crc(start, &h, finish_record_crc(body_crc, hdr))?;
                            self.capture_begin(h.rmid, &rest[XLOG_RECORD_HEADER_SIZE..total]);
                            rest = &rest[total..];
                            self.pos += total as u64;
                            self.record_done(start, &h);
                            continue;
                        }
                        self.rec_hdr = *hdr;
                        let crc = crc32c::crc32c(&rest[XLOG_RECORD_HEADER_SIZE..]);
                        self.capture_begin(h.rmid, &rest[XLOG_RECORD_HEADER_SIZE..]);
                        self.state = State::InRecord {
                            start,
                            total: h.tot_len,
                            got: rest.len() as u32,
                            crc,
                        };
                        self.pos += rest.len() as u64;
                        return Ok(());
                    }
                    // The header itself is split (page end or chunk end).
                    let got = rest.len();
                    self.rec_hdr[..got].copy_from_slice(rest);
                    let total = if got >= 4 {
                        let t = self.header_tot_len();
                        check_tot_len(start, t)?;
                        t
                    } else {
                        0
                    };
                    self.state = State::InRecord {
                        start,
                        total,
                        got: got as u32,
                        crc: 0,
                    };
                    self.pos += got as u64;
                    return Ok(());
                }
                State::InRecord {
                    start,
                    mut total,
                    mut got,
                    mut crc,
                } => {
                    let hdr_size = XLOG_RECORD_HEADER_SIZE as u32;
                    if got < hdr_size {
                        let have = got as usize;
                        let n = (XLOG_RECORD_HEADER_SIZE - have).min(rest.len());
                        self.rec_hdr[have..have + n].copy_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        self.pos += n as u64;
                        got += n as u32;
                        if total == 0 && got >= 4 {
                            total = self.header_tot_len();
                            check_tot_len(start, total)?;
                        }
                        if got == hdr_size {
                            let h = RecordHeader::parse(&self.rec_hdr);
                            self.check_prev(start, h.prev)?;
                            self.capture_begin(h.rmid, &[]);
                            if total == hdr_size {
                                check_crc(start, &h, finish_record_crc(0, &self.rec_hdr))?;
                                self.record_done(start, &h);
                                continue;
                            }
                        }
                        self.state = State::InRecord {
                            start,
                            total,
                            got,
                            crc,
                        };
                        continue;
                    }
                    let n = ((total - got) as usize).min(rest.len());
                    crc = crc32c::crc32c_append(crc, &rest[..n]);
                    self.capture_more(&rest[..n]);
                    rest = &rest[n..];
                    self.pos += n as u64;
                    got += n as u32;
                    if got == total {
                        let h = RecordHeader::parse(&self.rec_hdr);
                        check_crc(start, &h, finish_record_crc(crc, &self.rec_hdr))?;
                        self.record_done(start, &h);
                    } else {
                        self.state = State::InRecord {
                            start,
                            total,
                            got,
                            crc,
                        };
                    }
                }
                State::SkipContrecord { remaining } => {
                    let n = (remaining as usize).min(rest.len());
                    rest = &rest[n..];
                    self.pos += n as u64;
                    self.validated = self.pos;
                    let remaining = remaining - n as u32;
                    self.state = if remaining == 0 {
                        self.skipped_tail_end = Some(Lsn(self.pos));
                        State::BetweenRecords
                    } else {
                        State::SkipContrecord { remaining }
                    };
                }
                State::SwitchPadding { switch } => {
                    if let Some(i) = first_nonzero(rest) {
                        return Err(WalError::SwitchPaddingNotZero {
                            lsn: Lsn(self.pos + i as u64),
                            switch: Lsn(switch),
                        });
                    }
                    self.pos += rest.len() as u64;
                    self.validated = self.pos;
                    rest = &[];
                    if self.pos % self.segment_size == 0 {
                        self.state = State::BetweenRecords;
                    }
                }
            }
        }
        Ok(())
    }

    fn header_tot_len(&self) -> u32 {
        u32::from_le_bytes([
            self.rec_hdr[0],
            self.rec_hdr[1],
            self.rec_hdr[2],
            self.rec_hdr[3],
        ])
    }

    /// `ValidXLogRecordHeader`'s prev-link rule: exactly the previous record when we read it,
    /// otherwise (first record of the stream) at least below this record.
    fn check_prev(&self, start: u64, prev: Lsn) -> Result<(), WalError> {
        let ok = match self.prev_record {
            Some(expected) => prev == expected,
            // After an abandoned record, the link skips it: a record that links to it was
            // complete once, and only damage made it look cut short.
            None => prev.0 < self.abandoned_record.unwrap_or(start).min(start),
        };
        if ok {
            Ok(())
        } else {
            Err(WalError::InvalidPrevLink {
                lsn: Lsn(start),
                found: prev,
                expected: self.prev_record,
            })
        }
    }

    /// Bytes up to `self.pos` between records (page headers, alignment) count as validated,
    /// unless an abandoned record is still unvouched for.
    fn advance_validated(&mut self) {
        if self.abandoned_record.is_none() {
            self.validated = self.pos;
        }
    }

    /// A record ending at `self.pos` passed its CRC check.
    fn record_done(&mut self, start: u64, h: &RecordHeader) {
        self.records += 1;
        if let Some(c) = self.capture.as_mut() {
            if let Some(body_prefix) = c.current.take() {
                c.done.push(CapturedRecord {
                    lsn: Lsn(start),
                    header: *h,
                    body_prefix,
                });
            }
        }
        self.prev_record = Some(Lsn(start));
        self.abandoned_record = None;
        self.validated = self.pos;
        if h.is_switch() {
            self.last_switch = Some(Lsn(start));
            if self.pos % self.segment_size != 0 {
                self.state = State::SwitchPadding { switch: start };
                return;
            }
        }
        self.state = State::BetweenRecords;
    }
}

fn check_tot_len(start: u64, tot_len: u32) -> Result<(), WalError> {
    if tot_len == 0 {
        return Err(WalError::EndOfWal { lsn: Lsn(start) });
    }
    if tot_len < XLOG_RECORD_HEADER_SIZE as u32 || tot_len > MAX_RECORD_LENGTH {
        return Err(WalError::InvalidRecordLength {
            lsn: Lsn(start),
            len: tot_len,
            min: XLOG_RECORD_HEADER_SIZE as u32,
            max: MAX_RECORD_LENGTH,
        });
    }
    Ok(())
}

fn check_crc(start: u64, h: &RecordHeader, computed: u32) -> Result<(), WalError> {
    if computed == h.crc {
        Ok(())
    } else {
        Err(WalError::CrcMismatch {
            lsn: Lsn(start),
            stored: h.crc,
            computed,
        })
    }
}

/// Index of the first non-zero byte, scanning 16 bytes at a time.
fn first_nonzero(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(16);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        if u128::from_ne_bytes(w) != 0 {
            return c.iter().position(|&x| x != 0).map(|i| base + i);
        }
        base += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&x| x != 0)
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nonzero_finds_the_first() {
        assert_eq!(first_nonzero(&[]), None);
        assert_eq!(first_nonzero(&[0; 100]), None);
        for len in [1usize, 15, 16, 17, 33, 100] {
            for at in 0..len {
                let mut b = vec![0u8; len];
                b[at] = 1;
                if at + 1 < len {
                    b[len - 1] = 9;
                }
                assert_eq!(first_nonzero(&b), Some(at), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn configuration_is_checked() {
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        for bad in [0u32, 512, 3000, 131_072] {
            let mut cfg = ValidatorConfig::new(seg, Lsn(0x100_0000));
            cfg.block_size = bad;
            assert!(matches!(
                WalValidator::new(cfg),
                Err(WalError::InvalidBlockSize { .. })
            ));
        }
        let v = WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_0000))).unwrap();
        assert_eq!(v.position(), Lsn(0x100_0000));
        assert_eq!(v.validated_lsn(), Lsn(0x100_0000));
        assert_eq!(v.state(), StreamState::BetweenRecords);
        // Mid-page starts: 8-byte aligned and past the header (long on a segment's first page).
        assert!(WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_0028))).is_ok());
        assert!(WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_0020))).is_err());
        assert!(WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_2018))).is_ok());
        assert!(WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_2010))).is_err());
        assert!(WalValidator::new(ValidatorConfig::new(seg, Lsn(0x100_2019))).is_err());
    }

    #[test]
    fn lsn_overflow_is_refused() {
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        let start = Lsn(u64::MAX - 8191);
        let mut v = WalValidator::new(ValidatorConfig::new(seg, start)).unwrap();
        assert!(matches!(
            v.feed(start, &[0; 8192]),
            Err(WalError::LsnOverflow { .. })
        ));
    }
}
