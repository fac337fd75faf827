//! Transaction records (`RM_XACT_ID`): which transactions committed or aborted, and when —
//! decoded from records the validator kept ([`crate::CapturedRecord`]).
//!
//! Used after a failover to say what the old primary committed that the new one never saw. Only
//! what that needs is decoded: the opcode, the top-level xid and `xact_time`.
//!
//! Layout (`src/include/access/xlogrecord.h`, `xact.h`, `DecodeXLogRecord` in xlogreader.c): after
//! the 24-byte record header come block headers (ids 0–32), optional origin (253) and top-level
//! xid (252, PostgreSQL 14+) headers, and last the main-data header (255: 1-byte length, 254:
//! 4-byte length); the payloads follow in the same order, so the main data is the record's last
//! `main_data_len` bytes. A commit or abort record's main data starts with `xact_time`, a
//! `TimestampTz` (microseconds since 2000-01-01 UTC).

use walrelay_protocol::Lsn;

use crate::record::XLOG_RECORD_HEADER_SIZE;
use crate::validator::CapturedRecord;

/// `RM_XACT_ID` (`rmgrlist.h`; stable since 9.x).
pub const RM_XACT_ID: u8 = 1;
/// `XLOG_XACT_OPMASK`: the opcode bits of `xl_info`.
pub const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

/// How much of a transaction record to keep for [`decode`]: block headers and the start of the main
/// data of any commit record fit many times over.
pub const CAPTURE_BYTES: usize = 4096;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;

/// What a transaction record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XactKind {
    Commit,
    Abort,
    CommitPrepared,
    AbortPrepared,
}

impl XactKind {
    /// The transaction's changes became visible.
    pub fn is_commit(self) -> bool {
        matches!(self, XactKind::Commit | XactKind::CommitPrepared)
    }
}

/// A decoded commit or abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XactEnd {
    pub lsn: Lsn,
    pub kind: XactKind,
    /// `xl_xid`: the top-level transaction (0 for COMMIT PREPARED run outside a transaction).
    pub xid: u32,
    /// `xact_time`: microseconds since 2000-01-01 00:00:00 UTC.
    pub time: i64,
}

/// Decodes a captured record; `None` for any record that is not a commit or abort of a
/// transaction, or whose main data cannot be found in the captured bytes.
pub fn decode(rec: &CapturedRecord) -> Option<XactEnd> {
    if rec.header.rmid != RM_XACT_ID {
        return None;
    }
    let kind = match rec.header.info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        XLOG_XACT_ABORT_PREPARED => XactKind::AbortPrepared,
        _ => return None,
    };
    let time = main_data(rec)?.get(..8)?;
    Some(XactEnd {
        lsn: rec.lsn,
        kind,
        xid: rec.header.xid,
        time: i64::from_le_bytes(time.try_into().ok()?),
    })
}

/// The captured part of a record's main data (its last bytes; see the module docs): `None` when
/// the headers cannot be walked or the main data lies past what was captured. Records with block
/// images are not walked.
pub fn main_data(rec: &CapturedRecord) -> Option<&[u8]> {
    let main_len = main_data_len(&rec.body_prefix)?;
    let body_len = (rec.header.tot_len as usize).checked_sub(XLOG_RECORD_HEADER_SIZE)?;
    let start = body_len.checked_sub(main_len)?;
    rec.body_prefix.get(start..)
}

/// Walks the headers after the fixed record header to the main-data header; its length.
fn main_data_len(body: &[u8]) -> Option<usize> {
    let mut r = Reader(body);
    loop {
        match r.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => return r.u8().map(usize::from),
            XLR_BLOCK_ID_DATA_LONG => return r.u32().map(|n| n as usize),
            XLR_BLOCK_ID_ORIGIN => r.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID => r.skip(4)?,
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = r.u8()?;
                r.skip(2)?; // data_length
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    r.skip(2)?; // bimg_len
                    r.skip(2)?; // hole_offset
                    let bimg_info = r.u8()?;
                    // A compressed image with a hole also stores the hole's length. The flag
                    // values changed in PostgreSQL 15 (IS_COMPRESSED 0x02 before; PGLZ 0x04, LZ4
                    // 0x08, ZSTD 0x10 since) — but HAS_HOLE is 0x01 in both, and 0x02 alone is
                    // "compressed" before 15 and "apply" since. Transaction records carry no
                    // block images; a record that does is not decoded.
                    let _ = bimg_info;
                    return None;
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    r.skip(12)?; // RelFileLocator
                }
                r.skip(4)?; // BlockNumber
            }
            _ => return None,
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*b))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }
}

/// Unix time in microseconds of a PostgreSQL `TimestampTz`.
pub fn unix_micros(pg_time: i64) -> i64 {
    /// Seconds from 1970-01-01 to 2000-01-01.
    const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    pg_time.saturating_add(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordHeader;

    fn record(info: u8, body: Vec<u8>) -> CapturedRecord {
        CapturedRecord {
            lsn: Lsn(0x100_0028),
            header: RecordHeader {
                tot_len: (XLOG_RECORD_HEADER_SIZE + body.len()) as u32,
                xid: 742,
                prev: Lsn(0x100_0000),
                info,
                rmid: RM_XACT_ID,
                crc: 0,
            },
            body_prefix: body,
        }
    }

    fn commit_body(headers: &[u8], time: i64, extra: &[u8]) -> Vec<u8> {
        let main_len = 8 + extra.len();
        let mut b = headers.to_vec();
        b.push(XLR_BLOCK_ID_DATA_SHORT);
        b.push(main_len as u8);
        b.extend_from_slice(&time.to_le_bytes());
        b.extend_from_slice(extra);
        b
    }

    #[test]
    fn a_plain_commit_gives_its_time_and_xid() {
        let t = 786_000_000_000_000i64;
        let r = record(XLOG_XACT_COMMIT, commit_body(&[], t, &[0; 4]));
        let d = decode(&r).unwrap();
        assert_eq!((d.kind, d.xid, d.time), (XactKind::Commit, 742, t));
        assert!(d.kind.is_commit());
        // HAS_INFO (0x80) and a top-level xid header (PostgreSQL 14+) and an origin header.
        let r = record(
            0x80 | XLOG_XACT_COMMIT,
            commit_body(
                &[
                    XLR_BLOCK_ID_ORIGIN,
                    1,
                    0,
                    XLR_BLOCK_ID_TOPLEVEL_XID,
                    7,
                    0,
                    0,
                    0,
                ],
                t,
                &[1, 0, 0, 0],
            ),
        );
        assert_eq!(decode(&r).map(|d| d.time), Some(t));
    }

    #[test]
    fn aborts_and_prepared_ends_are_told_apart() {
        let r = record(XLOG_XACT_ABORT, commit_body(&[], 5, &[]));
        assert_eq!(decode(&r).map(|d| d.kind), Some(XactKind::Abort));
        let r = record(XLOG_XACT_COMMIT_PREPARED, commit_body(&[], 5, &[]));
        assert_eq!(decode(&r).map(|d| d.kind), Some(XactKind::CommitPrepared));
        for op in [XLOG_XACT_PREPARE, 0x50, 0x60] {
            assert_eq!(
                decode(&record(op, commit_body(&[], 5, &[]))),
                None,
                "{op:#x}"
            );
        }
    }

    #[test]
    fn long_main_data_and_block_references_are_walked() {
        // A 4-byte main-data length, after a block header with its own relation.
        let mut b = vec![0u8, 0x00, 0, 0];
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0; 4]);
        b.push(XLR_BLOCK_ID_DATA_LONG);
        b.extend_from_slice(&300u32.to_le_bytes());
        b.extend_from_slice(&99i64.to_le_bytes());
        b.extend_from_slice(&[0; 292]);
        assert_eq!(
            decode(&record(XLOG_XACT_COMMIT, b)).map(|d| d.time),
            Some(99)
        );
    }

    #[test]
    fn malformed_or_cut_records_are_not_decoded() {
        for body in [
            vec![],
            vec![XLR_BLOCK_ID_DATA_SHORT],
            vec![XLR_BLOCK_ID_DATA_SHORT, 8, 1, 2, 3],
            vec![77, 0, 0],
            vec![
                XLR_BLOCK_ID_DATA_LONG,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
            ],
            vec![0, BKPBLOCK_HAS_IMAGE, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(
                decode(&record(XLOG_XACT_COMMIT, body.clone())),
                None,
                "{body:?}"
            );
        }
        let mut other = record(XLOG_XACT_COMMIT, commit_body(&[], 1, &[]));
        other.header.rmid = 0;
        assert_eq!(decode(&other), None);
    }

    /// Commit records among others, some split across pages and fed in odd chunks, come out of
    /// the validator's capture in order with their times.
    #[test]
    fn the_validator_keeps_transaction_records_for_decoding() {
        use crate::synth::{SynthConfig, WalBuilder};
        use crate::{ValidatorConfig, WalValidator};
        let cfg = SynthConfig::default();
        let start = Lsn(3 * cfg.segment_size.as_u64());
        let mut b = WalBuilder::new(cfg, start);
        let mut expected = Vec::new();
        for i in 0..40i64 {
            // Heap-like records of varying size push commits across page boundaries.
            b.record(0x0A, 0x00, &vec![i as u8; 300 + (i as usize * 97) % 5000]);
            let info = if i % 3 == 0 {
                XLOG_XACT_ABORT
            } else {
                XLOG_XACT_COMMIT
            };
            let at = b.record(RM_XACT_ID, info, &commit_body(&[], 1_000_000 * i, &[0; 12]));
            expected.push((at, info == XLOG_XACT_COMMIT, 1_000_000 * i));
        }
        let wal = b.into_bytes();
        let mut v = WalValidator::new(ValidatorConfig::new(cfg.segment_size, start)).unwrap();
        v.capture_records(RM_XACT_ID, CAPTURE_BYTES);
        let mut pos = 0usize;
        let mut got = Vec::new();
        for (i, step) in [1usize, 7, 23, 8192, 333, 4096, 65536]
            .iter()
            .cycle()
            .enumerate()
        {
            if pos >= wal.len() || i > 100_000 {
                break;
            }
            let end = (pos + step).min(wal.len());
            v.feed(Lsn(start.0 + pos as u64), &wal[pos..end]).unwrap();
            got.extend(v.take_captured().iter().filter_map(decode));
            pos = end;
        }
        let got: Vec<_> = got
            .iter()
            .map(|d| (d.lsn, d.kind.is_commit(), d.time))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn timestamps_convert_from_the_postgres_epoch() {
        assert_eq!(unix_micros(0), 946_684_800_000_000);
    }
}
