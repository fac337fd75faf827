//! WAL record headers (`XLogRecord` in `xlogrecord.h`) and their CRC.
//!
//! Every record starts on an 8-byte (`MAXALIGN`) boundary with a 24-byte header:
//!
//! ```text
//! offset size  field
//!      0    4  xl_tot_len  length of the whole record, header included
//!      4    4  xl_xid      transaction id
//!      8    8  xl_prev     LSN of the previous record
//!     16    1  xl_info     flags; the high 4 bits belong to the resource manager
//!     17    1  xl_rmid     resource manager (0 = XLOG)
//!     18    2  (padding, zero)
//!     20    4  xl_crc      CRC-32C (SizeOfXLogRecord = 24)
//! ```
//!
//! The CRC (`ValidXLogRecord` in `xlogreader.c`) covers the bytes after the header first, then the
//! header up to `xl_crc` — so a record's body can be checksummed as it streams in, and the header
//! folded in at the end. The rest of the record (block references, data) is opaque here.

use walrelay_protocol::Lsn;

/// `SizeOfXLogRecord`.
pub const XLOG_RECORD_HEADER_SIZE: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes that the CRC covers.
pub const XLOG_RECORD_CRC_OFFSET: usize = 20;
/// The largest `xl_tot_len` any supported version can write or read back: `MaxAllocSize`
/// (1 GB - 1; PostgreSQL 16+ stops writers at `XLogRecordMaxSize`, 1020 MB).
pub const MAX_RECORD_LENGTH: u32 = 0x3FFF_FFFF;
/// `MAXALIGN` on x86_64 and every other 64-bit platform PostgreSQL supports.
pub const MAXALIGN: u64 = 8;

/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` (`pg_control.h`): the rest of the segment is padding.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLR_INFO_MASK`: the low bits of `xl_info` that are not the resource manager's.
pub const XLR_INFO_MASK: u8 = 0x0F;

/// Rounds `lsn` up to the next `MAXALIGN` boundary, where the next record starts.
pub fn maxalign(lsn: u64) -> u64 {
    (lsn + (MAXALIGN - 1)) & !(MAXALIGN - 1)
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// Decodes the 24 header bytes.
    pub fn parse(b: &[u8; XLOG_RECORD_HEADER_SIZE]) -> RecordHeader {
        RecordHeader {
            tot_len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            xid: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            prev: Lsn(u64::from_le_bytes([
                b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
            ])),
            info: b[16],
            rmid: b[17],
            crc: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
        }
    }

    /// An `XLOG_SWITCH` record: WAL continues at the next segment.
    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && (self.info & !XLR_INFO_MASK) == XLOG_SWITCH
    }
}

/// The record CRC given the CRC of its body (`crc32c(body)`) and its header bytes.
pub fn finish_record_crc(body_crc: u32, header: &[u8; XLOG_RECORD_HEADER_SIZE]) -> u32 {
    crc32c::crc32c_append(body_crc, &header[..XLOG_RECORD_CRC_OFFSET])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert_eq!(maxalign(0), 0);
        assert_eq!(maxalign(1), 8);
        assert_eq!(maxalign(8), 8);
        assert_eq!(maxalign(0x300_0033), 0x300_0038);
    }

    #[test]
    fn crc_matches_postgres_definition() {
        // PostgreSQL: INIT (0xFFFFFFFF), COMP(body), COMP(header[..20]), FIN (xor 0xFFFFFFFF),
        // i.e. one CRC-32C over body ++ header[..20].
        let mut hdr = [0u8; 24];
        hdr[0] = 30;
        hdr[17] = 1;
        let body = [1u8, 2, 3, 4, 5, 6];
        let mut joined = body.to_vec();
        joined.extend_from_slice(&hdr[..20]);
        assert_eq!(
            finish_record_crc(crc32c::crc32c(&body), &hdr),
            crc32c::crc32c(&joined)
        );
        // Known CRC-32C check value, to be sure the crate is Castagnoli.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn switch_detection() {
        let mut b = [0u8; 24];
        b[16] = 0x40;
        assert!(RecordHeader::parse(&b).is_switch());
        b[16] = 0x41; // low bits are XLR flags, still a switch
        assert!(RecordHeader::parse(&b).is_switch());
        b[16] = 0x50;
        assert!(!RecordHeader::parse(&b).is_switch());
        b[16] = 0x40;
        b[17] = 1;
        assert!(!RecordHeader::parse(&b).is_switch());
    }
}
