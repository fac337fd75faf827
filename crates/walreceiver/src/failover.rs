//! What a failover lost: the WAL the directory holds on the old timeline past the point where the
//! new primary's history left it ("orphaned" WAL — valid history of the old primary that the new
//! one never received), and the transactions committed in it.
//!
//! No stock tool reports this. An operator who knows that 37 transactions committed on the old
//! primary between 12:01:07 and 12:01:09 never reached the new one can decide what to do (replay
//! them by hand with `pg_waldump` and the application's help, or accept the loss); one who does not
//! know finds out from users.
//!
//! The orphaned WAL stays where it is: the old timeline's files are not touched (PostgreSQL's own
//! archiver leaves the same behind), and recovery with `recovery_target_timeline = 'latest'` reads
//! the new timeline's files for every segment from the switchpoint on.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::warn;
use walrelay_archive::{open_segment, ArchiveDir};
use walrelay_durable::Owner;
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};
use walrelay_wal::xact::{self, XactEnd, CAPTURE_BYTES, RM_XACT_ID};
use walrelay_wal::{ValidatorConfig, WalValidator};

use crate::error::ReceiveError;
use crate::timeline_plan::Fork;

/// The report written next to the new timeline's history file, and logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailoverLoss {
    pub old_timeline: u32,
    pub new_timeline: u32,
    /// The first LSN of the new timeline: the old timeline's WAL from here on is orphaned.
    pub switchpoint: String,
    /// Where the valid orphaned WAL ends.
    pub orphaned_end: String,
    pub orphaned_bytes: u64,
    /// Transactions that committed on the old primary after the switchpoint.
    pub lost_commits: u64,
    /// Transactions that aborted there (nothing lost, listed for completeness).
    pub aborts: u64,
    pub first_lost_commit: Option<LostCommit>,
    pub last_lost_commit: Option<LostCommit>,
    /// The files holding the orphaned WAL (old timeline, from the switchpoint's segment on).
    pub files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostCommit {
    pub lsn: String,
    pub xid: u32,
    /// RFC 3339, UTC.
    pub time: String,
}

impl FailoverLoss {
    /// The file name of the report: next to `NNNNNNNN.history` of the new timeline.
    pub fn file_name(new_timeline: TimelineId) -> String {
        format!("{:08X}.failover.json", new_timeline.0)
    }

    /// One line for the log and for `verify`.
    pub fn summary(&self) -> String {
        let when = match (&self.first_lost_commit, &self.last_lost_commit) {
            (Some(f), Some(l)) if self.lost_commits > 1 => {
                format!(", committed between {} and {}", f.time, l.time)
            }
            (Some(f), _) => format!(", committed at {}", f.time),
            _ => String::new(),
        };
        format!(
            "failover from timeline {} to {} at {}: {} bytes of WAL of the old timeline ({} to {}) never reached the new primary, holding {} committed transaction{}{}",
            self.old_timeline,
            self.new_timeline,
            self.switchpoint,
            self.orphaned_bytes,
            self.switchpoint,
            self.orphaned_end,
            self.lost_commits,
            if self.lost_commits == 1 { "" } else { "s" },
            when
        )
    }
}

/// What [`scan_orphaned`] needs to know of the cluster.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalIdentity {
    pub seg: WalSegmentSize,
    pub page_magic: Option<u16>,
    pub system_identifier: u64,
}

/// Reads the directory's WAL on `fork.old` from the segment holding the switchpoint on, as far as
/// it is valid, and reports what lies past the switchpoint. `None` when nothing does.
pub(crate) fn scan_orphaned(
    dir: &Path,
    fork: Fork,
    id: WalIdentity,
) -> Result<Option<FailoverLoss>, ReceiveError> {
    let seg = id.seg;
    let inventory = ArchiveDir::new(dir, seg).scan()?;
    let first = seg.segno(fork.switchpoint);
    let mut validator = WalValidator::new(ValidatorConfig {
        segment_size: seg,
        block_size: walrelay_wal::page::DEFAULT_XLOG_BLCKSZ,
        page_magic: id.page_magic,
        system_identifier: Some(id.system_identifier),
        timeline: Some(fork.old),
        start_lsn: SegmentId::new(fork.old, first).start_lsn(seg),
    })
    .map_err(ReceiveError::InvalidWal)?;
    validator.capture_records(RM_XACT_ID, CAPTURE_BYTES);
    let mut ends: Vec<XactEnd> = Vec::new();
    let mut files = Vec::new();
    let mut segno = first;
    'segments: loop {
        let id = SegmentId::new(fork.old, segno);
        let Some(file) = inventory.segments.get(&id).and_then(|f| f.first()) else {
            break;
        };
        let path = dir.join(&file.name);
        let mut reader = open_segment(&path)?;
        let mut lsn = id.start_lsn(seg);
        let end = id.end_lsn(seg);
        let mut buf = vec![0u8; 1 << 20];
        // Whether this file holds orphaned WAL: valid WAL past the switchpoint.
        let holds_orphans =
            |v: &WalValidator| v.validated_lsn() > fork.switchpoint.max(id.start_lsn(seg));
        while lsn < end {
            let want = buf.len().min((end.0 - lsn.0) as usize);
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                // A damaged or cut-off file ends the valid WAL here, as anything else would.
                Err(_) => break,
            };
            let fed = validator.feed(lsn, &buf[..n]);
            ends.extend(validator.take_captured().iter().filter_map(xact::decode));
            if fed.is_err() {
                if holds_orphans(&validator) {
                    files.push(file.name.clone());
                }
                break 'segments;
            }
            lsn = Lsn(lsn.0 + n as u64);
        }
        if holds_orphans(&validator) {
            files.push(file.name.clone());
        }
        if lsn < end || !file.state.is_complete() {
            break;
        }
        segno = segno.next();
    }
    let orphaned_end = validator.validated_lsn();
    if orphaned_end <= fork.switchpoint {
        return Ok(None);
    }
    ends.retain(|e| e.lsn >= fork.switchpoint);
    let commits: Vec<&XactEnd> = ends.iter().filter(|e| e.kind.is_commit()).collect();
    let lost = |e: &&XactEnd| LostCommit {
        lsn: e.lsn.to_string(),
        xid: e.xid,
        time: rfc3339(xact::unix_micros(e.time)),
    };
    Ok(Some(FailoverLoss {
        old_timeline: fork.old.0,
        new_timeline: fork.new.0,
        switchpoint: fork.switchpoint.to_string(),
        orphaned_end: orphaned_end.to_string(),
        orphaned_bytes: orphaned_end.0 - fork.switchpoint.0,
        lost_commits: commits.len() as u64,
        aborts: (ends.len() - commits.len()) as u64,
        first_lost_commit: commits.first().map(lost),
        last_lost_commit: commits.last().map(lost),
        files,
    }))
}

/// Writes the report next to the new timeline's history file (once: a restart finds the same loss
/// and leaves the first report as it is). Returns its path.
pub(crate) fn write_report(
    dir: &Path,
    loss: &FailoverLoss,
    owner: Owner,
) -> Result<PathBuf, ReceiveError> {
    let path = dir.join(FailoverLoss::file_name(TimelineId(loss.new_timeline)));
    if path.exists() {
        return Ok(path);
    }
    let mut json = serde_json::to_vec_pretty(loss).unwrap_or_default();
    json.push(b'\n');
    walrelay_durable::write_file_atomic(&path, &json, 0o644, owner)
        .map_err(|e| ReceiveError::Archive(e.into()))?;
    Ok(path)
}

/// Logs the loss once per session.
pub(crate) fn log_loss(loss: &FailoverLoss, report: Option<&Path>) {
    match report {
        Some(p) => warn!(report = %p.display(), "{}", loss.summary()),
        None => warn!("{}", loss.summary()),
    }
}

/// Unix microseconds as RFC 3339 in UTC (`2026-12-03T12:01:07.123456Z`).
fn rfc3339(unix_micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_micros} µs after 1970-01-01"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_wal::synth::{SynthConfig, WalBuilder};
    use walrelay_wal::xact::{XLOG_XACT_ABORT, XLOG_XACT_COMMIT};

    const MB: u64 = 1024 * 1024;

    fn commit_body(time: i64) -> Vec<u8> {
        let mut b = vec![255u8, 12];
        b.extend_from_slice(&time.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    /// Timeline-1 WAL from segment 3: commits before and after the switchpoint, the second segment
    /// left partial (as an archive's last segment is).
    fn archive_with_orphans() -> (tempfile::TempDir, Lsn, usize) {
        let cfg = SynthConfig::default();
        let seg = cfg.segment_size.as_u64();
        assert_eq!(seg, MB);
        let start = Lsn(3 * MB);
        let mut b = WalBuilder::new(cfg, start);
        let mut switchpoint = None;
        let mut after = 0;
        for i in 0..400i64 {
            b.record(0x0A, 0, &[7; 3000]);
            if i == 150 {
                switchpoint = Some(b.position());
            }
            let info = if i % 4 == 0 {
                XLOG_XACT_ABORT
            } else {
                XLOG_XACT_COMMIT
            };
            let at = b.record(RM_XACT_ID, info, &commit_body(i * 1_000_000));
            if switchpoint.is_some_and(|s| at >= s) && info == XLOG_XACT_COMMIT {
                after += 1;
            }
        }
        let end = b.position();
        b.zero_fill_to(Lsn(5 * MB));
        let bytes = b.into_bytes();
        let d = tempfile::tempdir().unwrap();
        let name = |segno: u64| {
            SegmentId::new(TimelineId(1), walrelay_protocol::XLogSegNo(segno))
                .file_name(cfg.segment_size)
        };
        std::fs::write(d.path().join(name(3)), &bytes[..MB as usize]).unwrap();
        std::fs::write(
            d.path().join(format!("{}.partial", name(4))),
            &bytes[MB as usize..],
        )
        .unwrap();
        assert!(end.0 > 4 * MB && end.0 < 5 * MB);
        (d, switchpoint.unwrap(), after)
    }

    /// The fork from timeline 1 to 2 at `switchpoint`, and the synthetic WAL's identity.
    fn fork_at(switchpoint: Lsn) -> (Fork, WalIdentity) {
        let cfg = SynthConfig::default();
        let fork = Fork {
            old: TimelineId(1),
            switchpoint,
            new: TimelineId(2),
        };
        let id = WalIdentity {
            seg: cfg.segment_size,
            page_magic: None,
            system_identifier: cfg.system_identifier,
        };
        (fork, id)
    }

    #[test]
    fn orphaned_commits_are_counted_from_the_switchpoint() {
        let (d, switchpoint, after) = archive_with_orphans();
        let (fork, id) = fork_at(switchpoint);
        let loss = scan_orphaned(d.path(), fork, id).unwrap().unwrap();
        assert_eq!(loss.lost_commits, after as u64);
        assert!(loss.aborts > 0);
        assert_eq!(loss.files.len(), 2, "{loss:?}");
        assert!(loss.orphaned_bytes > MB / 2, "{loss:?}");
        let last = loss.last_lost_commit.clone().unwrap();
        assert_eq!(last.time, "2000-01-01T00:06:39Z");
        assert!(loss
            .summary()
            .contains(&format!("{after} committed transactions")));

        // A switchpoint at the end of what we hold: nothing orphaned.
        let fork = Fork {
            switchpoint: Lsn(loss.orphaned_end.parse::<Lsn>().unwrap().0),
            ..fork
        };
        assert_eq!(scan_orphaned(d.path(), fork, id).unwrap(), None);
    }

    #[test]
    fn the_report_is_written_once() {
        let (d, switchpoint, _) = archive_with_orphans();
        let (fork, id) = fork_at(switchpoint);
        let loss = scan_orphaned(d.path(), fork, id).unwrap().unwrap();
        let path = write_report(d.path(), &loss, Owner::current()).unwrap();
        assert!(path.ends_with("00000002.failover.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["lost_commits"], loss.lost_commits);
        let mut other = loss.clone();
        other.lost_commits = 0;
        write_report(d.path(), &other, Owner::current()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
