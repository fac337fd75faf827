//! The one field of `global/pg_control` a stored backup records: the next transaction ID of the
//! latest checkpoint (`ControlFileData.checkPointCopy.nextXid`), so that a recovery to a
//! transaction ID can start from a backup taken before that transaction (one taken after it
//! would replay past it, or — 13+ — stop with "recovery ended before configured recovery target
//! was reached"). No IO.
//!
//! Layout (pg_control.h, 10–18, little-endian as written by the server on x86-64):
//! `system_identifier` u64, `pg_control_version` u32, `catalog_version_no` u32, `state` (enum,
//! 4 bytes), padding, `time` i64 at 24, `checkPoint` u64 at 32, then on PostgreSQL 10 only
//! `prevCheckPoint` u64; then `CheckPoint checkPointCopy` (at 48 on 10, 40 from 11): `redo` u64,
//! `ThisTimeLineID` u32, `PrevTimeLineID` u32, `fullPageWrites` bool (+ `wal_level` int on 17+,
//! within the padding), then the next XID at offset 24 in it: a `FullTransactionId` (u64) from
//! 12 on, `nextXidEpoch` u32 at 20 and `nextXid` u32 at 24 before.

/// `PG_CONTROL_VERSION` of PostgreSQL 11 (the first without `prevCheckPoint`).
const VERSION_11: u32 = 1100;
/// `PG_CONTROL_VERSION` of PostgreSQL 12 (the first with a 64-bit `nextXid`).
const VERSION_12: u32 = 1201;

/// The next full transaction ID (epoch << 32 | xid) at the latest checkpoint, if `bytes` is a
/// pg_control of PostgreSQL 10 to 18.
pub fn next_full_xid(bytes: &[u8]) -> Option<u64> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let version = u32_at(8)?;
    if !(1002..=1999).contains(&version) {
        return None;
    }
    let checkpoint = if version < VERSION_11 { 48 } else { 40 };
    let xid = u32_at(checkpoint + 24)?;
    let epoch = if version >= VERSION_12 {
        u32_at(checkpoint + 28)?
    } else {
        u32_at(checkpoint + 20)?
    };
    Some((u64::from(epoch) << 32) | u64::from(xid))
}

/// Whether transaction `target` (as `recovery_target_xid` takes it: a 32-bit ID, or epoch and ID
/// as one 64-bit number) was assigned at or after `next` — the next ID of a backup's checkpoint —
/// so that its commit comes after the backup began. A 32-bit target is compared modulo 2^32, as
/// the server compares transaction IDs (`TransactionIdPrecedes`).
pub fn assigned_at_or_after(target: u64, next: u64) -> bool {
    if target > u64::from(u32::MAX) {
        return target >= next;
    }
    (target as u32).wrapping_sub(next as u32) as i32 >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(version: u32, at: &[(usize, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[8..12].copy_from_slice(&version.to_le_bytes());
        for (off, v) in at {
            b[*off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn the_next_xid_where_each_major_keeps_it() {
        // 10: checkPointCopy at 48, epoch at +20, xid at +24.
        assert_eq!(
            next_full_xid(&control(1002, &[(68, 2), (72, 750)])),
            Some((2 << 32) | 750)
        );
        // 11: at 40.
        assert_eq!(
            next_full_xid(&control(1100, &[(60, 0), (64, 751)])),
            Some(751)
        );
        // 12+: a 64-bit FullTransactionId at +24.
        assert_eq!(
            next_full_xid(&control(1300, &[(64, 752), (68, 1)])),
            Some((1 << 32) | 752)
        );
        assert_eq!(next_full_xid(&control(1800, &[(64, 753)])), Some(753));
        assert_eq!(next_full_xid(&control(942, &[])), None);
        assert_eq!(next_full_xid(&[0u8; 16]), None);
    }

    #[test]
    fn transaction_ids_compare_as_the_server_compares_them() {
        assert!(assigned_at_or_after(800, 750));
        assert!(assigned_at_or_after(750, 750));
        assert!(!assigned_at_or_after(700, 750));
        // Across the wrap of 32-bit IDs.
        assert!(assigned_at_or_after(5, u64::from(u32::MAX - 10)));
        // With an epoch.
        assert!(assigned_at_or_after((1 << 32) | 5, (1 << 32) | 4));
        assert!(!assigned_at_or_after((1 << 32) | 5, (2 << 32) | 4));
    }
}
