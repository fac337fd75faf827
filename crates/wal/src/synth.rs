//! Synthetic WAL: byte-exact pages and records, laid out the way PostgreSQL's
//! `CopyXLogRecordToWAL` writes them, with real page headers and CRCs.
//!
//! For tests and benchmarks that need WAL a real server would not produce on demand: chosen record
//! sizes and boundaries, `XLP_FIRST_IS_OVERWRITE_CONTRECORD`, old-style switch padding, other
//! timelines, a fake server's XLogData. The records' bodies are opaque bytes (no block references),
//! which is all the validator looks at.

use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};

use crate::magic::page_magic_for_major;
use crate::page::{
    LongHeaderFields, PageHeader, DEFAULT_XLOG_BLCKSZ, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use crate::record::{maxalign, RM_XLOG_ID, XLOG_RECORD_CRC_OFFSET, XLOG_SWITCH};

/// The identity the synthetic WAL claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    pub segment_size: WalSegmentSize,
    pub block_size: u32,
    pub page_magic: u16,
    pub system_identifier: u64,
    pub timeline: TimelineId,
}

impl Default for SynthConfig {
    /// PostgreSQL 15, 1 MB segments, 8 kB pages, timeline 1.
    fn default() -> Self {
        SynthConfig {
            segment_size: WalSegmentSize::new(1024 * 1024).unwrap_or_default(),
            block_size: DEFAULT_XLOG_BLCKSZ,
            page_magic: page_magic_for_major(15).unwrap_or(0xD110),
            system_identifier: 7_400_000_000_000_000_001,
            timeline: TimelineId::FIRST,
        }
    }
}

/// Appends records to an in-memory WAL image starting at a page boundary.
#[derive(Clone, Debug)]
pub struct WalBuilder {
    cfg: SynthConfig,
    start: u64,
    pos: u64,
    prev: Lsn,
    xid: u32,
    overwrite_next_page: bool,
    zero_switch_page_headers: bool,
    buf: Vec<u8>,
}

impl WalBuilder {
    /// A builder whose first byte is at `start` rounded down to a page boundary. The first record's
    /// `xl_prev` is 0/0 unless [`Self::set_prev`] says otherwise.
    pub fn new(cfg: SynthConfig, start: Lsn) -> Self {
        let page = u64::from(cfg.block_size.max(1));
        let start = start.0 - start.0 % page;
        WalBuilder {
            cfg,
            start,
            pos: start,
            prev: Lsn::INVALID,
            xid: 1000,
            overwrite_next_page: false,
            zero_switch_page_headers: true,
            buf: Vec::new(),
        }
    }

    /// The `xl_prev` of the next record.
    pub fn set_prev(&mut self, prev: Lsn) {
        self.prev = prev;
    }

    /// The timeline written into page headers from now on.
    pub fn set_timeline(&mut self, timeline: TimelineId) {
        self.cfg.timeline = timeline;
    }

    /// Whether the pages after an `XLOG_SWITCH` get zeroed headers (current servers, the default)
    /// or ordinary short headers (older servers).
    pub fn zero_switch_page_headers(&mut self, zero: bool) {
        self.zero_switch_page_headers = zero;
    }

    pub fn start(&self) -> Lsn {
        Lsn(self.start)
    }

    /// The LSN after the last byte written.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Appends a record of resource manager `rmid` with `xl_info` `info` and `body` after the
    /// 24-byte header; returns its start LSN.
    pub fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> Lsn {
        let start = self.begin_record();
        let rec = self.encode_record(rmid, info, body, None);
        self.write_record_bytes(&rec);
        self.prev = start;
        start
    }

    /// Appends an `XLOG_SWITCH` record and the padding up to the end of its segment.
    pub fn switch(&mut self) -> Lsn {
        let start = self.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
        let seg = self.cfg.segment_size.as_u64();
        let page = u64::from(self.cfg.block_size);
        while self.pos % seg != 0 {
            if self.pos % page == 0 && !self.zero_switch_page_headers {
                self.page_header(0, false);
                continue;
            }
            let to_page_end = page - self.pos % page;
            self.zeros(to_page_end);
        }
        start
    }

    /// Appends the beginning of a record that claims `tot_len` bytes but is cut off at the next
    /// page boundary (a crash), and marks the next page `XLP_FIRST_IS_OVERWRITE_CONTRECORD`, as
    /// crash recovery does. The next record starts on that page and links to the record before
    /// the aborted one. Returns the aborted record's start.
    pub fn aborted_record(&mut self, tot_len: u32, body: &[u8]) -> Lsn {
        let start = self.begin_record();
        let rec = self.encode_record(0x0A, 0x10, body, Some(tot_len));
        let page = u64::from(self.cfg.block_size);
        let room = (page - self.pos % page) as usize;
        let n = room.min(rec.len());
        self.buf.extend_from_slice(&rec[..n]);
        self.pos += n as u64;
        if self.pos % page != 0 {
            self.zeros(page - self.pos % page);
        }
        self.overwrite_next_page = true;
        start
    }

    /// Appends zeros up to `lsn` (e.g. the zero tail of a `.partial` segment).
    pub fn zero_fill_to(&mut self, lsn: Lsn) {
        if lsn.0 > self.pos {
            self.zeros(lsn.0 - self.pos);
        }
    }

    fn zeros(&mut self, n: u64) {
        self.buf.resize(self.buf.len() + n as usize, 0);
        self.pos += n;
    }

    /// Aligns to `MAXALIGN` and writes a page header if the record starts a page.
    fn begin_record(&mut self) -> Lsn {
        let aligned = maxalign(self.pos);
        self.zeros(aligned - self.pos);
        if self.pos % u64::from(self.cfg.block_size) == 0 {
            self.page_header(0, false);
        }
        Lsn(self.pos)
    }

    fn encode_record(&mut self, rmid: u8, info: u8, body: &[u8], tot_len: Option<u32>) -> Vec<u8> {
        let len = 24 + body.len();
        let mut rec = Vec::with_capacity(len);
        rec.extend_from_slice(&tot_len.unwrap_or(len as u32).to_le_bytes());
        rec.extend_from_slice(&self.xid.to_le_bytes());
        rec.extend_from_slice(&self.prev.0.to_le_bytes());
        rec.push(info);
        rec.push(rmid);
        rec.extend_from_slice(&[0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &rec[..XLOG_RECORD_CRC_OFFSET]);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(body);
        self.xid = self.xid.wrapping_add(1);
        rec
    }

    fn write_record_bytes(&mut self, rec: &[u8]) {
        let page = u64::from(self.cfg.block_size);
        let mut written = 0;
        while written < rec.len() {
            if self.pos % page == 0 {
                self.page_header((rec.len() - written) as u32, true);
            }
            let room = (page - self.pos % page) as usize;
            let n = room.min(rec.len() - written);
            self.buf.extend_from_slice(&rec[written..written + n]);
            self.pos += n as u64;
            written += n;
        }
    }

    fn page_header(&mut self, rem_len: u32, contrecord: bool) {
        let long = self.pos % self.cfg.segment_size.as_u64() == 0;
        let mut info = XLP_BKP_REMOVABLE;
        if long {
            info |= XLP_LONG_HEADER;
        }
        if contrecord {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if std::mem::take(&mut self.overwrite_next_page) {
            info |= XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        }
        let header = PageHeader {
            magic: self.cfg.page_magic,
            info,
            timeline: self.cfg.timeline,
            pageaddr: Lsn(self.pos),
            rem_len: if contrecord { rem_len } else { 0 },
            long: long.then_some(LongHeaderFields {
                system_identifier: self.cfg.system_identifier,
                segment_size: self.cfg.segment_size.bytes(),
                block_size: self.cfg.block_size,
            }),
        };
        header.encode_into(&mut self.buf);
        self.pos += header.size() as u64;
    }
}
