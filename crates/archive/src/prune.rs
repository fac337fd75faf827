//! Removing WAL that is no longer needed, with pg_archivecleanup's semantics.
//!
//! pg_archivecleanup removes every file whose name is a segment (or `.partial`) name and whose last
//! 16 hex digits sort before those of the oldest file to keep: the timeline is ignored, so a segment
//! of a parent timeline that the kept point still needs is never removed, at the price of keeping a
//! few segments of abandoned branches. We do the same for every compression suffix, and the kept
//! point can also be a base backup's start: a `.backup` history file name, as pg_archivecleanup
//! accepts, or a `backup_manifest` whose `WAL-Ranges` give the backup's `Start-LSN`.
//!
//! An age limit (by modification time) can be given too; with both, a file must satisfy both to be
//! removed, so nothing needed at or after the kept point is ever removed for being old. `.history`
//! and `.backup` files are never removed (they are tiny, and recovery to any point needs the
//! histories). Removal goes oldest first, then the directory is fsynced and the removed segments'
//! entries leave `walrelay.sha256`.
//!
//! The slots a relay keeps for its downstreams (`walrelay.slots`, see [`crate::slots`]) are a
//! floor: the segment holding the oldest slot's restart position and everything after it stay,
//! whatever point or age was given.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use walrelay_durable as durable;
use walrelay_protocol::{Lsn, WalFileName, WalSegmentSize};

use crate::checksum::remove_checksums;
use crate::error::{ArchiveError, Result};

/// The oldest WAL to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrunePoint {
    /// pg_archivecleanup's OLDESTKEPTWALFILE: a segment name, a `NAME.partial`, or a backup history
    /// file `NAME.XXXXXXXX.backup`; that segment and everything after it is kept.
    WalFile(String),
    /// Keep the segment holding this LSN and everything after it.
    Lsn(Lsn),
    /// Keep from a base backup's start: the lowest `Start-LSN` of the `WAL-Ranges` in this
    /// `backup_manifest` (PostgreSQL 13+).
    BackupManifest(PathBuf),
    /// Keep from a base backup's start: the `START WAL LOCATION` of this `backup_label` or backup
    /// history file (`NAME.XXXXXXXX.backup`), read from its content.
    BackupLabel(PathBuf),
}

/// What to prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOptions {
    pub keep_from: Option<PrunePoint>,
    /// Only remove files last modified longer ago than this.
    pub older_than: Option<Duration>,
    /// List what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What [`prune`] removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// The oldest segment name kept by the point (its timeline part is ignored when comparing).
    pub keep_from: Option<String>,
    /// File names, oldest first.
    pub removed: Vec<String>,
    /// Their total size on disk.
    pub bytes: u64,
    pub dry_run: bool,
    /// Lines dropped from `walrelay.sha256`.
    pub checksum_entries_removed: usize,
    /// The oldest position a relay's slot (`walrelay.slots`) still needs: kept whatever was asked.
    pub slot_floor: Option<Lsn>,
}

/// The position part of a segment name (`XXXXXXXXYYYYYYYY`) as numbers: pg_archivecleanup's
/// `strcmp(walfile + 8, exclusiveCleanupFileName + 8)` compares exactly this.
type LogSeg = (u32, u32);

fn log_seg_of_name(name: &str) -> Option<LogSeg> {
    match WalFileName::parse(name)? {
        WalFileName::Segment { log, seg, .. } => Some((log, seg)),
        WalFileName::BackupHistory { name } => match WalFileName::parse(name.get(..24)?)? {
            WalFileName::Segment { log, seg, .. } => Some((log, seg)),
            _ => None,
        },
        WalFileName::History(_) => None,
    }
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<WalRange>,
}

#[derive(Deserialize)]
struct WalRange {
    #[serde(rename = "Start-LSN")]
    start_lsn: String,
}

/// The backup's start: the lowest `Start-LSN` in the manifest's `WAL-Ranges`.
pub fn backup_start_from_manifest(path: &Path) -> Result<Lsn> {
    let bad = |reason: String| ArchiveError::BadManifest {
        path: path.to_path_buf(),
        reason,
    };
    let f = File::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    let m: Manifest = serde_json::from_reader(BufReader::new(f))
        .map_err(|e| bad(format!("not a backup manifest with WAL-Ranges: {e}")))?;
    let mut start: Option<Lsn> = None;
    for r in &m.wal_ranges {
        let lsn: Lsn = r
            .start_lsn
            .parse()
            .map_err(|e| bad(format!("bad Start-LSN: {e}")))?;
        start = Some(start.map_or(lsn, |s| s.min(lsn)));
    }
    start.ok_or_else(|| bad("WAL-Ranges is empty".into()))
}

/// The backup's start from a `backup_label` or a backup history file: the `START WAL LOCATION:
/// X/X (file NAME)` line both begin with (`do_pg_backup_stop` writes the history file from the
/// label's lines).
pub fn backup_start_from_label(path: &Path) -> Result<Lsn> {
    /// Both files are a dozen short lines.
    const MAX_LABEL: u64 = 64 * 1024;
    let bad = |reason: String| ArchiveError::BadBackupLabel {
        path: path.to_path_buf(),
        reason,
    };
    let f = File::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_LABEL), &mut text).map_err(
        |e| match e.kind() {
            io::ErrorKind::InvalidData => bad("not a text file".into()),
            _ => ArchiveError::io("read", path, e),
        },
    )?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
        .ok_or_else(|| bad("no START WAL LOCATION line".into()))?;
    let lsn = line.split_whitespace().next().unwrap_or_default();
    lsn.parse()
        .map_err(|e| bad(format!("bad START WAL LOCATION {lsn:?}: {e}")))
}

fn cutoff(point: &PrunePoint, seg_size: WalSegmentSize) -> Result<LogSeg> {
    let lsn = match point {
        PrunePoint::WalFile(name) => {
            return match WalFileName::parse(name) {
                Some(WalFileName::Segment {
                    compression: None, ..
                })
                | Some(WalFileName::BackupHistory { .. }) => log_seg_of_name(name).ok_or(
                    ArchiveError::BadFileName {
                        name: name.clone(),
                        reason: "expected a WAL segment, .partial or .backup file name",
                    },
                ),
                _ => Err(ArchiveError::BadFileName {
                    name: name.clone(),
                    reason: "expected a WAL segment, .partial or .backup file name, like 000000010000000000000010.00000020.backup",
                }),
            };
        }
        PrunePoint::Lsn(lsn) => *lsn,
        PrunePoint::BackupManifest(path) => backup_start_from_manifest(path)?,
        PrunePoint::BackupLabel(path) => backup_start_from_label(path)?,
    };
    let segno = seg_size.segno(lsn).0;
    let per = seg_size.segments_per_xlogid();
    // segno / per < 2^32 for any u64 LSN and per >= 2^2.
    Ok(((segno / per) as u32, (segno % per) as u32))
}

/// One file of an archive as a listing gives it (a directory entry, an object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// What [`plan_prune`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// The oldest segment name kept by the point (`XXXXXXXX` for the ignored timeline).
    pub keep_from: Option<String>,
    /// The files to remove, oldest first.
    pub victims: Vec<ListedFile>,
}

/// Chooses what [`prune`] removes from an archive holding `files` — wherever they are (a
/// directory, a bucket): segment files (any format, `.partial` included) before the point to keep
/// and older than the age limit; never `.history`, `.backup` or anything else. A file without a
/// modification time is kept when an age limit is given. `held_from` (a relay's oldest slot) is a
/// floor: the segment holding it and everything after stay, whatever was asked.
pub fn plan_prune(
    files: impl IntoIterator<Item = ListedFile>,
    seg_size: WalSegmentSize,
    opts: &PruneOptions,
    held_from: Option<Lsn>,
) -> Result<PrunePlan> {
    if opts.keep_from.is_none() && opts.older_than.is_none() {
        return Err(ArchiveError::NoPruneCriterion);
    }
    let asked = opts
        .keep_from
        .as_ref()
        .map(|p| cutoff(p, seg_size))
        .transpose()?;
    // A relay's slots hold WAL whatever was asked: their consumers still need it.
    let held = held_from
        .map(|l| cutoff(&PrunePoint::Lsn(l), seg_size))
        .transpose()?;
    let limit = match (asked, held) {
        (Some(a), Some(h)) => Some(a.min(h)),
        (a, h) => a.or(h),
    };
    let max_mtime = opts.older_than.map(|age| {
        SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let segments: Vec<(LogSeg, ListedFile)> = files
        .into_iter()
        .filter_map(|f| match WalFileName::parse(&f.name) {
            Some(WalFileName::Segment { log, seg, .. }) => Some(((log, seg), f)),
            _ => None,
        })
        .collect();
    // The newest position is kept whatever was asked: it is the segment a running receive
    // writes (its `.partial`), or the one it completed last and may still compress. A point
    // past it would remove everything: refused, as a mistyped LSN or a primary's position taken
    // while the receiver lags.
    let newest = segments.iter().map(|(ls, _)| *ls).max();
    if let (Some(a), Some(n)) = (asked, newest) {
        if a > n {
            return Err(ArchiveError::PrunePointPastEnd {
                asked: format!("XXXXXXXX{:08X}{:08X}", a.0, a.1),
                newest: segments
                    .iter()
                    .filter(|(ls, _)| *ls == n)
                    .map(|(_, f)| f.name.clone())
                    .max()
                    .unwrap_or_default(),
            });
        }
    }
    let mut victims: Vec<(LogSeg, ListedFile)> = segments
        .into_iter()
        .filter(|(ls, _)| newest.is_none_or(|n| *ls < n))
        .filter(|(ls, _)| limit.is_none_or(|l| *ls < l))
        .filter(|(_, f)| match max_mtime {
            Some(max) => f.modified.is_some_and(|m| m < max),
            None => true,
        })
        .collect();
    victims.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    Ok(PrunePlan {
        keep_from: limit.map(|(log, seg)| format!("XXXXXXXX{log:08X}{seg:08X}")),
        victims: victims.into_iter().map(|(_, f)| f).collect(),
    })
}

/// Removes old WAL from the archive `dir` (see the module docs).
pub fn prune(dir: &Path, seg_size: WalSegmentSize, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.keep_from.is_none() && opts.older_than.is_none() {
        return Err(ArchiveError::NoPruneCriterion);
    }
    if !dir.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut listed = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| ArchiveError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io("list", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !matches!(WalFileName::parse(&name), Some(WalFileName::Segment { .. })) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ArchiveError::io("stat", entry.path(), e)),
        };
        if !meta.is_file() {
            continue;
        }
        let modified = match opts.older_than {
            Some(_) => Some(
                meta.modified()
                    .map_err(|e| ArchiveError::io("read modification time of", entry.path(), e))?,
            ),
            None => None,
        };
        listed.push(ListedFile {
            name,
            size: meta.len(),
            modified,
        });
    }
    let slot_floor = crate::slots::slot_floor(dir)?;
    let plan = plan_prune(listed, seg_size, opts, slot_floor)?;
    let victims: Vec<(String, u64)> = plan.victims.into_iter().map(|f| (f.name, f.size)).collect();
    let limit = plan.keep_from;

    let mut report = PruneReport {
        keep_from: limit,
        removed: Vec::new(),
        bytes: 0,
        dry_run: opts.dry_run,
        checksum_entries_removed: 0,
        slot_floor,
    };
    if opts.dry_run {
        for (name, len) in victims {
            report.bytes += len;
            report.removed.push(name);
        }
        return Ok(report);
    }

    let mut failure = None;
    for (name, len) in victims {
        let p = dir.join(&name);
        match fs::remove_file(&p) {
            Ok(()) => {
                report.bytes += len;
                report.removed.push(name);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                failure = Some(ArchiveError::io("remove", p, e));
                break;
            }
        }
    }
    if !report.removed.is_empty() {
        durable::fsync_dir(dir)?;
        // Entries go only for segments with no file left (an age limit may keep one copy).
        let removed_logical: BTreeSet<String> = report
            .removed
            .iter()
            .filter_map(|n| n.get(..24))
            .filter(|l| !has_any_copy(dir, l))
            .map(str::to_string)
            .collect();
        report.checksum_entries_removed = remove_checksums(dir, &removed_logical)?;
        tracing::info!(
            files = report.removed.len(),
            bytes = report.bytes,
            "pruned WAL"
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn has_any_copy(dir: &Path, logical: &str) -> bool {
    [
        "",
        ".gz",
        ".lz4",
        ".zst",
        ".partial",
        ".gz.partial",
        ".lz4.partial",
        ".zst.partial",
    ]
    .iter()
    .any(|s| dir.join(format!("{logical}{s}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{read_checksums, record_checksum};

    fn seg16() -> WalSegmentSize {
        WalSegmentSize::default()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn populate(dir: &Path) {
        for n in [
            "000000010000000000000001",
            "000000010000000000000002.gz",
            "000000010000000000000003.lz4",
            "000000010000000000000004.partial",
            "000000020000000000000004.zst",
            "000000020000000000000005",
            "000000020000000000000006.gz.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "README",
        ] {
            fs::write(dir.join(n), n).unwrap();
        }
    }

    #[test]
    fn a_relay_slot_holds_wal() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        crate::slots::write_slots(
            d.path(),
            &[crate::slots::PersistentSlot {
                name: "standby1".into(),
                restart_lsn: Some(Lsn(0x300_0010)),
                restart_timeline: None,
            }],
        )
        .unwrap();
        let opts = PruneOptions {
            keep_from: Some(PrunePoint::WalFile("000000020000000000000005".into())),
            ..Default::default()
        };
        let r = prune(d.path(), seg16(), &opts).unwrap();
        assert_eq!(r.slot_floor, Some(Lsn(0x300_0010)));
        assert_eq!(
            r.removed,
            ["000000010000000000000001", "000000010000000000000002.gz"]
        );
        assert!(d.path().join("000000010000000000000003.lz4").exists());
        // An age alone never goes past the slot either.
        let opts = PruneOptions {
            older_than: Some(Duration::ZERO),
            ..Default::default()
        };
        let r = prune(d.path(), seg16(), &opts).unwrap();
        assert!(r.removed.is_empty(), "{:?}", r.removed);
    }

    #[test]
    fn keeps_from_wal_file_ignoring_timeline() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        for n in ["000000010000000000000002", "000000010000000000000004"] {
            record_checksum(d.path(), n, &[1; 32]).unwrap();
        }
        let opts = PruneOptions {
            keep_from: Some(PrunePoint::WalFile("000000020000000000000004".into())),
            ..Default::default()
        };
        let r = prune(d.path(), seg16(), &opts).unwrap();
        assert_eq!(
            r.removed,
            vec![
                "000000010000000000000001",
                "000000010000000000000002.gz",
                "000000010000000000000003.lz4"
            ]
        );
        assert_eq!(r.keep_from.as_deref(), Some("XXXXXXXX0000000000000004"));
        assert_eq!(r.checksum_entries_removed, 1);
        assert_eq!(
            read_checksums(d.path())
                .unwrap()
                .entries
                .keys()
                .collect::<Vec<_>>(),
            vec!["000000010000000000000004"]
        );
        let left = names(d.path());
        assert!(left.contains(&"000000010000000000000004.partial".to_string()));
        assert!(left.contains(&"00000002.history".to_string()));
        assert!(left.contains(&"000000010000000000000002.00000028.backup".to_string()));
        assert!(left.contains(&"README".to_string()));
    }

    #[test]
    fn backup_history_and_partial_names_use_their_segment() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        let dry = |name: &str| {
            prune(
                d.path(),
                seg16(),
                &PruneOptions {
                    keep_from: Some(PrunePoint::WalFile(name.into())),
                    dry_run: true,
                    ..Default::default()
                },
            )
            .unwrap()
            .removed
        };
        assert_eq!(
            dry("000000010000000000000003.00000028.backup"),
            vec!["000000010000000000000001", "000000010000000000000002.gz"]
        );
        assert_eq!(
            dry("000000010000000000000002.partial"),
            vec!["000000010000000000000001"]
        );
        assert_eq!(dry("000000010000000000000001"), Vec::<String>::new());
        assert_eq!(names(d.path()).len(), 10, "dry run removes nothing");
        for bad in [
            "00000002.history",
            "junk",
            "000000010000000000000002.gz",
            "",
        ] {
            let e = prune(
                d.path(),
                seg16(),
                &PruneOptions {
                    keep_from: Some(PrunePoint::WalFile(bad.into())),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(matches!(e, ArchiveError::BadFileName { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn keeps_from_lsn_and_manifest() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        let manifest = d.path().join("backup_manifest");
        fs::write(
            &manifest,
            r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
                "Files": [ {"Path": "PG_VERSION", "Size": 3} ],
                "WAL-Ranges": [
                  { "Timeline": 2, "Start-LSN": "0/5000000", "End-LSN": "0/5000100" },
                  { "Timeline": 1, "Start-LSN": "0/3000028", "End-LSN": "0/5000000" } ],
                "Manifest-Checksum": "00" }"#,
        )
        .unwrap();
        assert_eq!(
            backup_start_from_manifest(&manifest).unwrap(),
            Lsn(0x300_0028)
        );
        let dry = |p: PrunePoint| {
            prune(
                d.path(),
                seg16(),
                &PruneOptions {
                    keep_from: Some(p),
                    dry_run: true,
                    ..Default::default()
                },
            )
            .unwrap()
            .removed
        };
        let expect = vec!["000000010000000000000001", "000000010000000000000002.gz"];
        assert_eq!(dry(PrunePoint::BackupManifest(manifest.clone())), expect);
        assert_eq!(dry(PrunePoint::Lsn(Lsn(0x3FF_FFFF))), expect);
        // 1 MB segments: 0/3000028 is segment 0x30, past every file here (the newest is
        // segment 6): everything would go, the segment being written included — refused.
        let one = WalSegmentSize::new(1 << 20).unwrap();
        let past = |p: PrunePoint, seg| {
            prune(
                d.path(),
                seg,
                &PruneOptions {
                    keep_from: Some(p),
                    dry_run: true,
                    ..Default::default()
                },
            )
        };
        match past(PrunePoint::Lsn(Lsn(0x300_0028)), one) {
            Err(ArchiveError::PrunePointPastEnd { asked, newest }) => {
                assert_eq!(asked, "XXXXXXXX0000000000000030");
                assert_eq!(newest, "000000020000000000000006.gz.partial");
            }
            other => panic!("{other:?}"),
        }
        // The newest position itself: everything before it goes, never the newest's files.
        let r = past(PrunePoint::Lsn(Lsn(0x600_0000)), seg16()).unwrap();
        assert!(
            r.removed.iter().all(|n| !n.contains("0000000000000006")),
            "{:?}",
            r.removed
        );
        assert!(!r.removed.is_empty());
    }

    #[test]
    fn keeps_from_backup_label_and_history_file() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        let label = d.path().join("backup_label");
        fs::write(
            &label,
            "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
             CHECKPOINT LOCATION: 0/3000060\nBACKUP METHOD: streamed\n",
        )
        .unwrap();
        assert_eq!(backup_start_from_label(&label).unwrap(), Lsn(0x300_0028));
        let r = prune(
            d.path(),
            seg16(),
            &PruneOptions {
                keep_from: Some(PrunePoint::BackupLabel(label.clone())),
                dry_run: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            r.removed,
            vec!["000000010000000000000001", "000000010000000000000002.gz"]
        );
        for text in [
            "",
            "START WAL LOCATION:",
            "START WAL LOCATION: banana (file x)",
            "LABEL: x\n",
        ] {
            fs::write(&label, text).unwrap();
            let e = backup_start_from_label(&label).unwrap_err();
            assert!(
                matches!(e, ArchiveError::BadBackupLabel { .. }),
                "{text:?}: {e}"
            );
        }
        fs::write(&label, [0xFFu8, 0xFE, 0]).unwrap();
        assert!(matches!(
            backup_start_from_label(&label).unwrap_err(),
            ArchiveError::BadBackupLabel { .. }
        ));
        assert!(matches!(
            backup_start_from_label(&d.path().join("missing")).unwrap_err(),
            ArchiveError::Io { .. }
        ));
    }

    #[test]
    fn bad_manifests() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("backup_manifest");
        for text in [
            "",
            "{}",
            "not json",
            r#"{"WAL-Ranges": []}"#,
            r#"{"WAL-Ranges": [{"Start-LSN": "x/y"}]}"#,
            r#"{"WAL-Ranges": [{"Start-LSN": 5}]}"#,
        ] {
            fs::write(&m, text).unwrap();
            let e = backup_start_from_manifest(&m).unwrap_err();
            assert!(matches!(e, ArchiveError::BadManifest { .. }), "{text}: {e}");
        }
        assert!(matches!(
            backup_start_from_manifest(&d.path().join("missing")).unwrap_err(),
            ArchiveError::Io { .. }
        ));
    }

    #[test]
    fn age_limit_combines_with_point() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        let old = SystemTime::now() - Duration::from_secs(10 * 86400);
        for n in [
            "000000010000000000000001",
            "000000010000000000000003.lz4",
            "000000020000000000000005",
        ] {
            File::options()
                .write(true)
                .open(d.path().join(n))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let week = Some(Duration::from_secs(7 * 86400));
        // Age alone.
        let r = prune(
            d.path(),
            seg16(),
            &PruneOptions {
                older_than: week,
                dry_run: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            r.removed,
            vec![
                "000000010000000000000001",
                "000000010000000000000003.lz4",
                "000000020000000000000005"
            ]
        );
        // Age and point: old files needed after the point stay.
        let r = prune(
            d.path(),
            seg16(),
            &PruneOptions {
                older_than: week,
                keep_from: Some(PrunePoint::WalFile("000000010000000000000003".into())),
                dry_run: false,
            },
        )
        .unwrap();
        assert_eq!(r.removed, vec!["000000010000000000000001"]);
        assert!(d.path().join("000000010000000000000002.gz").exists());
    }

    #[test]
    fn needs_a_criterion_and_a_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            prune(d.path(), seg16(), &PruneOptions::default()).unwrap_err(),
            ArchiveError::NoPruneCriterion
        ));
        let opts = PruneOptions {
            keep_from: Some(PrunePoint::Lsn(Lsn(0))),
            ..Default::default()
        };
        assert!(matches!(
            prune(&d.path().join("x"), seg16(), &opts).unwrap_err(),
            ArchiveError::NotADirectory { .. }
        ));
        // Empty archive: nothing to do.
        assert!(prune(d.path(), seg16(), &opts).unwrap().removed.is_empty());
    }
}
