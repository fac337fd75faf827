//! Whether a point-in-time target is in the archive at all — checked before anything is
//! restored. A target recovery never meets is no error to PostgreSQL 10–12: they promote at the end
//! of the archive as if it had been reached; 13+ refuse to start only after the whole restore
//! ("recovery ended before configured recovery target was reached"). So `bootstrap
//! --from-archive` looks first, in the archive's own WAL (a directory's files, a store's objects):
//!
//! * `--target-lsn`: the end of the newest complete segment;
//! * `--target-time`: the newest transaction end (recovery stops only at a commit or abort after
//!   the target), read newest segment first;
//! * `--target-xid`: that transaction's commit or abort, read from the backup's start on — the
//!   WAL recovery itself would replay up to it;
//! * `--target-name`: the restore point, read from the backup's start on; found, it also says
//!   which backup is the newest that ends before it (less to replay than the oldest).
//!
//! Only complete segments count (restore hands `.partial` files out only when asked). A segment
//! that cannot be read ends a check without a verdict: recovery will report it itself.

use std::fs;
use std::io::Read;
use std::sync::Arc;

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize, XLogSegNo};
use walrelay_wal::restore_point::{self, RestorePoint, RM_XLOG_ID};
use walrelay_wal::validator::{ValidatorConfig, WalValidator};
use walrelay_wal::xact::{self, XactEnd, CAPTURE_BYTES, RM_XACT_ID};
use walrelay_wal::CapturedRecord;

use crate::catalog::OpenedArchive;
use crate::descriptor::BackupDescriptor;
use crate::error::{BackupJobError, Result};

/// The names of the archive's WAL files: a directory's entries, or the file names of the store's
/// WAL objects. `None` when the store's cluster is not known.
async fn archive_wal_names(archive: &OpenedArchive) -> Result<Option<Vec<String>>> {
    Ok(Some(match (&archive.dir, archive.system_identifier) {
        (Some(dir), _) => fs::read_dir(dir)
            .map_err(|e| BackupJobError::io("list", dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        (None, Some(sysid)) => walrelay_store::WalLayout::new(sysid)
            .list(archive.store.as_ref())
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        (None, None) => return Ok(None),
    }))
}

/// What every check reads first: the backup's segment size and the archive's WAL file names.
/// `None` when either is unknown: the check gives no verdict.
async fn archive_wal(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
) -> Result<Option<(WalSegmentSize, Vec<String>)>> {
    let Ok(seg) = WalSegmentSize::new(u64::from(d.wal_segment_size)) else {
        return Ok(None);
    };
    Ok(archive_wal_names(archive).await?.map(|names| (seg, names)))
}

/// The complete segments among `names` (no `.partial`: restore leaves those out unless asked),
/// one name per segment (the uncompressed copy first), newest position first.
fn complete_segments_newest_first(
    names: &[String],
    seg: WalSegmentSize,
) -> Vec<(SegmentId, String)> {
    use walrelay_protocol::WalFileName;
    let mut found: Vec<(SegmentId, bool, String)> = names
        .iter()
        .filter_map(|n| match WalFileName::parse(n) {
            Some(
                w @ WalFileName::Segment {
                    partial: false,
                    compression,
                    ..
                },
            ) => Some((w.segment_id(seg)?, compression.is_some(), n.clone())),
            _ => None,
        })
        .collect();
    found.sort_by(|a, b| {
        (b.0.segno, b.0.timeline)
            .cmp(&(a.0.segno, a.0.timeline))
            .then(a.1.cmp(&b.1))
    });
    found.dedup_by(|later, kept| later.0 == kept.0);
    found.into_iter().map(|(id, _, name)| (id, name)).collect()
}

/// An LSN target past the end of the archive's WAL is never reached: PostgreSQL 13+ refuse to
/// start, and 10–12 promote at the end of the archive without an error — a recovery that looks
/// done and is not. The end is that of the newest complete segment (restore leaves `.partial`
/// files out unless asked) or of the backup's own WAL.
pub(crate) async fn check_lsn_target_in_archive(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    target: Lsn,
) -> Result<()> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(());
    };
    let segments = complete_segments_newest_first(&names, seg);
    let newest = segments.first();
    let archived = newest.map(|(id, _)| id.end_lsn(seg));
    let end = archived.unwrap_or(d.end_lsn).max(d.end_lsn);
    let past_end = |end: Lsn, what: &str| {
        BackupJobError::NoBackup(format!(
            "the archive's WAL ends at {end}{what}, before the target {target}: recovery could not reach it (PostgreSQL 10-12 would promote at {end} without an error); wait until the WAL past the target is archived (pg_switch_wal() on the primary completes the segment in progress), or choose an earlier target"
        ))
    };
    if target > end {
        return Err(past_end(end, ""));
    }
    // Inside the newest segment: recovery stops at a record that starts at or after the target,
    // so a target past the last record there (the position pg_switch_wal() returned, the
    // segment's end after a switch) is not reached either.
    if let Some((id, name)) = newest.filter(|(id, _)| seg.segno(target) == id.segno) {
        if let Some(bytes) = read_archived_segment(archive, name, seg).await {
            let id = *id;
            let last = tokio::task::spawn_blocking(move || {
                let start = id.start_lsn(seg);
                let mut v = WalValidator::new(ValidatorConfig::new(seg, start)).ok()?;
                let _ = v.feed(start, &bytes);
                v.last_record()
            })
            .await
            .ok()
            .flatten();
            if let Some(last) = last.filter(|l| target > *l) {
                return Err(past_end(last, " (its last record starts there)"));
            }
        }
    }
    check_continuous(&names, d, seg, seg.segno(target), "the target")
}

/// Every segment from the backup's start to `until` (the segment where recovery stops) must be
/// in the archive or among the backup's own WAL: at a missing one, recovery ends — PostgreSQL
/// 10–12 promote there without an error, 13+ refuse to start for a target, and `--target latest`
/// promotes short of the rest on every major. `verify` lists such gaps; here they stop the
/// restore before anything is written.
pub(crate) fn check_continuous(
    names: &[String],
    d: &BackupDescriptor,
    seg: WalSegmentSize,
    until: XLogSegNo,
    what: &str,
) -> Result<()> {
    let mut present: std::collections::HashSet<u64> = complete_segments_newest_first(names, seg)
        .iter()
        .map(|(id, _)| id.segno.0)
        .collect();
    for o in d
        .objects
        .iter()
        .filter(|o| o.kind == crate::descriptor::ObjectKind::Wal)
    {
        let file = o.name.rsplit('/').next().unwrap_or(&o.name);
        if let Some(Some(id)) =
            walrelay_protocol::WalFileName::parse(file).map(|w| w.segment_id(seg))
        {
            present.insert(id.segno.0);
        }
    }
    let from = seg.segno(d.start_lsn).0;
    if let Some(missing) = (from..=until.0).find(|n| !present.contains(n)) {
        let id = SegmentId::new(TimelineId(d.end_timeline), XLogSegNo(missing));
        return Err(BackupJobError::NoBackup(format!(
            "the archive lacks WAL segment {} (or any timeline's copy of it), between backup {:?} and {what}: recovery would stop there (PostgreSQL 10-12 promote at the gap without an error); put the segment back into the archive (walrelay verify lists the gaps), or choose a later backup (--backup) or an earlier target",
            id.file_name(seg),
            d.label
        )));
    }
    Ok(())
}

/// A time target later than every transaction in the archive is never reached: recovery stops
/// at the first commit or abort *after* the target (`recoveryStopsBefore`, inclusive), so
/// PostgreSQL 13+ refuse to start at the end of the WAL ("recovery ended before configured
/// recovery target was reached") and 10–12 promote there without an error — missing whatever
/// the primary committed before the target that the archive does not hold yet. The archive's
/// segments after the backup's start are read newest first, until one holds a transaction's end.
/// A segment that cannot be read ends the check without a verdict: recovery reports it.
pub(crate) async fn check_time_target_in_archive(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    target_unix: f64,
) -> Result<()> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(());
    };
    let target_micros = (target_unix * 1e6).round() as i64;
    let first = seg.segno(d.start_lsn);
    // The segment read before (the next one by position): a record that begins in this one and
    // ends there is only whole with both.
    let mut next: Option<(SegmentId, Arc<Vec<u8>>)> = None;
    for (id, name) in complete_segments_newest_first(&names, seg) {
        if id.segno < first {
            break;
        }
        let Some(bytes) = read_archived_segment(archive, &name, seg).await else {
            return Ok(());
        };
        let bytes = Arc::new(bytes);
        let following = next
            .take()
            .filter(|(n, _)| n.timeline == id.timeline && n.segno == id.segno.next());
        next = Some((id, bytes.clone()));
        let newest = tokio::task::spawn_blocking(move || {
            let mut chunks = vec![(id, bytes)];
            chunks.extend(following);
            let mut found = None;
            scan_records(&chunks, seg, RM_XACT_ID, |rec| {
                if let Some(e) = xact::decode(rec) {
                    if rec.lsn < id.end_lsn(seg) && found.is_none_or(|f: XactEnd| e.time > f.time) {
                        found = Some(e);
                    }
                }
                false
            });
            found
        })
        .await
        .ok()
        .flatten();
        let Some(end) = newest else { continue };
        let ended = xact::unix_micros(end.time);
        if ended > target_micros {
            // Reachable: where recovery stops is the first transaction end after the target
            // (after the backup's end); the WAL up to it must be there without a gap.
            let after = d.end_lsn;
            let stop = scan_forward(archive, &names, seg, d.start_lsn, RM_XACT_ID, move |rec| {
                xact::decode(rec)
                    .filter(|e| e.lsn >= after && xact::unix_micros(e.time) > target_micros)
                    .map(|e| e.lsn)
            })
            .await;
            let until = match stop {
                Scan::Found(lsn) => seg.segno(lsn),
                _ => id.segno,
            };
            return check_continuous(&names, d, seg, until, "the target");
        }
        return Err(BackupJobError::NoBackup(format!(
            "the archive's last transaction ended at {} (at {} in {name}), before the target {}: recovery stops only at a transaction that ends after its target, so it could not stop there (PostgreSQL 13+ refuse to start, 10-12 promote at the archive's end without an error); wait until WAL past the target is archived (pg_switch_wal() on the primary completes the segment in progress), or give --target latest to recover everything the archive holds",
            format_unix_micros(ended),
            end.lsn,
            format_unix_micros(target_micros),
        )));
    }
    Err(BackupJobError::NoBackup(format!(
        "the archive holds no transaction that ended after backup {:?} began: recovery to a time could not stop anywhere; give --target latest to recover everything the archive holds, or wait until WAL past the target is archived",
        d.label
    )))
}

/// The decoded WAL of one archived segment (`name` as listed: a directory's file, or a store's
/// segment whose best copy is fetched and checked); `None` when it cannot be read.
async fn read_archived_segment(
    archive: &OpenedArchive,
    name: &str,
    seg: WalSegmentSize,
) -> Option<Vec<u8>> {
    match (&archive.dir, archive.system_identifier) {
        (Some(dir), _) => {
            let path = dir.join(name);
            tokio::task::spawn_blocking(move || {
                let mut bytes = Vec::with_capacity(seg.as_u64() as usize);
                walrelay_archive::open_segment(&path)
                    .ok()?
                    .read_to_end(&mut bytes)
                    .ok()?;
                Some(bytes)
            })
            .await
            .ok()
            .flatten()
        }
        (None, Some(sysid)) => {
            let base = name.split('.').next().unwrap_or(name);
            walrelay_store::fetch_segment(
                archive.store.as_ref(),
                walrelay_store::WalLayout::new(sysid),
                base,
                Some(seg),
            )
            .await
            .ok()
            .flatten()
        }
        (None, None) => None,
    }
}

/// Microseconds since the Unix epoch as RFC 3339 in UTC.
fn format_unix_micros(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{micros} µs after 1970"))
}

/// [`check_continuous`] up to the segment of `until`, for a target found before the backup
/// was chosen (a restore point).
pub(crate) async fn check_wal_continuous(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    until: Lsn,
    what: &str,
) -> Result<()> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(());
    };
    check_continuous(&names, d, seg, seg.segno(until), what)
}

/// `--target latest`: everything the archive holds is replayed — up to its first gap, where
/// recovery ends and promotes on every major, short of the rest.
pub(crate) async fn check_latest_in_archive(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
) -> Result<()> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(());
    };
    match complete_segments_newest_first(&names, seg).first() {
        Some((newest, _)) if newest.segno >= seg.segno(d.start_lsn) => {
            check_continuous(&names, d, seg, newest.segno, "the archive's newest WAL")
        }
        _ => Ok(()),
    }
}

/// Feeds `chunks` (consecutive segments of one timeline) to one validator capturing records of
/// `rmid`, handing each to `visit` until it returns `true`. Returns whether it did. The WAL's end
/// (zeros after a switch, a record cut by the last chunk's end) stops the validator quietly.
fn scan_records(
    chunks: &[(SegmentId, Arc<Vec<u8>>)],
    seg: WalSegmentSize,
    rmid: u8,
    mut visit: impl FnMut(&CapturedRecord) -> bool,
) -> bool {
    let Some((first, _)) = chunks.first() else {
        return false;
    };
    let Ok(mut validator) = WalValidator::new(ValidatorConfig::new(seg, first.start_lsn(seg)))
    else {
        return false;
    };
    validator.capture_records(rmid, CAPTURE_BYTES);
    for (id, bytes) in chunks {
        let fed = validator.feed(id.start_lsn(seg), bytes);
        if validator.take_captured().iter().any(&mut visit) {
            return true;
        }
        if fed.is_err() {
            break;
        }
    }
    false
}

/// What a forward scan of the archive found.
enum Scan<T> {
    Found(T),
    /// Every complete segment from the start on was read.
    NotFound,
    /// A segment could not be read: no verdict.
    Unreadable,
}

/// Reads the archive's complete segments from `from` on, oldest first, one validator per run of
/// consecutive segments of a timeline (so records that cross a segment boundary are whole), until
/// `visit` returns `Some`. Every timeline's copy of a position is read: after a failover the
/// target may be on either.
async fn scan_forward<T: Send + 'static>(
    archive: &OpenedArchive,
    names: &[String],
    seg: WalSegmentSize,
    from: Lsn,
    rmid: u8,
    visit: impl Fn(&CapturedRecord) -> Option<T> + Send + Sync + 'static,
) -> Scan<T> {
    let from_segno = seg.segno(from);
    let mut segments: Vec<(SegmentId, String)> = complete_segments_newest_first(names, seg)
        .into_iter()
        .filter(|(id, _)| id.segno >= from_segno)
        .collect();
    segments.sort_by_key(|(id, _)| (id.timeline, id.segno));
    let visit = Arc::new(visit);
    let mut run: Vec<(SegmentId, Arc<Vec<u8>>)> = Vec::new();
    for (id, name) in segments {
        let continues = run
            .last()
            .is_some_and(|(last, _)| last.timeline == id.timeline && last.segno.next() == id.segno);
        if !continues {
            run.clear();
        }
        let Some(bytes) = read_archived_segment(archive, &name, seg).await else {
            return Scan::Unreadable;
        };
        // The validator is run over the previous segment and this one: what crossed the boundary
        // is whole, and memory stays at two segments. Records of the previous segment are seen
        // twice, which no search minds.
        if run.len() == 2 {
            run.remove(0);
        }
        run.push((id, Arc::new(bytes)));
        let chunks = run.clone();
        let v = visit.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = None;
            scan_records(&chunks, seg, rmid, |rec| {
                found = v(rec);
                found.is_some()
            });
            found
        })
        .await
        .ok()
        .flatten();
        if let Some(t) = found {
            return Scan::Found(t);
        }
    }
    Scan::NotFound
}

/// `--target-xid`: the transaction's commit or abort must be in the archive's WAL from the
/// backup's start on (an end inside the backup's own WAL is refused later, with the backup in
/// hand). A transaction still running, or cut by a crash (which writes no abort), has none.
pub(crate) async fn check_xid_target_in_archive(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    xid: u64,
) -> Result<()> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(());
    };
    let wanted = (xid & 0xFFFF_FFFF) as u32;
    tracing::info!(xid, backup = %d.label, "looking for the transaction's end in the archive's WAL");
    // A two-phase transaction ends in COMMIT PREPARED / ROLLBACK PREPARED, logged by whichever
    // session ran it (the prepared transaction's ID is inside its data): its PREPARE record,
    // which carries the ID, stands for it.
    let found = scan_forward(archive, &names, seg, d.start_lsn, RM_XACT_ID, move |rec| {
        let prepared = rec.header.info & xact::XLOG_XACT_OPMASK == xact::XLOG_XACT_PREPARE
            && rec.header.xid == wanted;
        (prepared || xact::decode(rec).is_some_and(|e| e.xid == wanted)).then_some(rec.lsn)
    })
    .await;
    match found {
        Scan::Found(lsn) => check_continuous(&names, d, seg, seg.segno(lsn), "the target"),
        Scan::Unreadable => Ok(()),
        Scan::NotFound => Err(BackupJobError::NoBackup(format!(
            "transaction {xid} has no commit or abort in the archive's WAL after backup {:?} began: recovery could not stop at it (PostgreSQL 13+ refuse to start, 10-12 promote at the archive's end without an error); check the transaction ID — the top-level transaction's (txid_current() inside it): a row's xmin is a subtransaction's ID when it was written after a SAVEPOINT, and recovery does not stop at those — or wait until WAL past its end is archived (pg_switch_wal() on the primary completes the segment in progress)",
            d.label
        ))),
    }
}

/// `--target-name`: the first restore point of that name after the end of backup `d` (recovery
/// cannot stop before a backup's end). `Ok(None)`: no verdict (a segment could not be read).
pub(crate) async fn find_restore_point(
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    name: &str,
) -> Result<Option<RestorePoint>> {
    let Some((seg, names)) = archive_wal(archive, d).await? else {
        return Ok(None);
    };
    tracing::info!(name, backup = %d.label, "looking for the restore point in the archive's WAL");
    let wanted = name.to_string();
    let after = d.end_lsn;
    let found = scan_forward(archive, &names, seg, d.start_lsn, RM_XLOG_ID, move |rec| {
        restore_point::decode(rec).filter(|rp| rp.name == wanted && rp.lsn >= after)
    })
    .await;
    match found {
        Scan::Found(rp) => Ok(Some(rp)),
        Scan::Unreadable => Ok(None),
        Scan::NotFound => Err(BackupJobError::NoBackup(format!(
            "the archive's WAL after backup {:?} holds no restore point named {name:?}: recovery could not stop at it (PostgreSQL 13+ refuse to start, 10-12 promote at the archive's end without an error); check the name (pg_create_restore_point() on the primary made it), or wait until WAL past it is archived (pg_switch_wal() completes the segment in progress)",
            d.label
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_segment_first_one_copy_each() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let names: Vec<String> = [
            "000000010000000000000003",
            "000000010000000000000004.zst",
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "000000020000000000000004.gz",
            "00000002.history",
            "walrelay.sha256",
        ]
        .map(String::from)
        .to_vec();
        let got: Vec<String> = complete_segments_newest_first(&names, seg)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(
            got,
            [
                "000000020000000000000004.gz",
                "000000010000000000000004",
                "000000010000000000000003"
            ]
        );
    }
}
