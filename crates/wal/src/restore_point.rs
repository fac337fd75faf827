//! Restore points (`pg_create_restore_point`): `XLOG_RESTORE_POINT` records of `RM_XLOG_ID`,
//! decoded from records the validator kept ([`crate::CapturedRecord`]) — where a
//! `recovery_target_name` recovery would stop.
//!
//! Main data (`xl_restore_point` in `src/include/access/xlog_internal.h`, unchanged since 9.1): a
//! `TimestampTz rp_time`, then `char rp_name[MAXFNAMELEN]` (64 bytes, NUL-terminated).

use walrelay_protocol::Lsn;

use crate::validator::CapturedRecord;
use crate::xact::main_data;

/// `RM_XLOG_ID` (`rmgrlist.h`).
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_RESTORE_POINT` (`pg_control.h`): the info bits of a restore point.
pub const XLOG_RESTORE_POINT: u8 = 0x70;
/// The high four bits of `xl_info` are the resource manager's (`XLR_RMGR_INFO_MASK`).
const XLR_RMGR_INFO_MASK: u8 = 0xF0;
/// `MAXFNAMELEN`.
const NAME_LEN: usize = 64;

/// A restore point found in the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePoint {
    /// Where its record starts.
    pub lsn: Lsn,
    pub name: String,
    /// `rp_time`: microseconds since 2000-01-01 00:00:00 UTC.
    pub time: i64,
}

/// Decodes a captured record; `None` for any record that is not a restore point.
pub fn decode(rec: &CapturedRecord) -> Option<RestorePoint> {
    if rec.header.rmid != RM_XLOG_ID || rec.header.info & XLR_RMGR_INFO_MASK != XLOG_RESTORE_POINT {
        return None;
    }
    let data = main_data(rec)?;
    let time = i64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let raw = data.get(8..(8 + NAME_LEN).min(data.len()))?;
    let name = raw.split(|&b| b == 0).next().unwrap_or(raw);
    Some(RestorePoint {
        lsn: rec.lsn,
        name: String::from_utf8_lossy(name).into_owned(),
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordHeader;

    fn captured(rmid: u8, info: u8, name: &[u8]) -> CapturedRecord {
        // The main-data header (short form) and the main data: time, then the padded name.
        let mut main = 1234_i64.to_le_bytes().to_vec();
        let mut padded = name.to_vec();
        padded.resize(NAME_LEN, 0);
        main.extend_from_slice(&padded);
        let mut body = vec![255u8, main.len() as u8];
        body.extend_from_slice(&main);
        CapturedRecord {
            lsn: Lsn(0x0300_0028),
            header: RecordHeader {
                tot_len: (24 + body.len()) as u32,
                xid: 0,
                prev: Lsn(0x0300_0000),
                info,
                rmid,
                crc: 0,
            },
            body_prefix: body,
        }
    }

    #[test]
    fn decodes_a_restore_point_and_nothing_else() {
        let rp = decode(&captured(RM_XLOG_ID, XLOG_RESTORE_POINT, b"before_upgrade")).unwrap();
        assert_eq!(rp.name, "before_upgrade");
        assert_eq!(rp.time, 1234);
        assert_eq!(rp.lsn, Lsn(0x0300_0028));
        // Another XLOG record (a checkpoint, 0x10) and another resource manager's 0x70.
        assert_eq!(decode(&captured(RM_XLOG_ID, 0x10, b"x")), None);
        assert_eq!(decode(&captured(1, XLOG_RESTORE_POINT, b"x")), None);
    }
}
