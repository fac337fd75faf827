//! `walrelay verify`: is every byte of WAL the archive claims to hold there, readable, and
//! the WAL that was received?
//!
//! Checks, each reported by file name:
//! * **structure** — every name is a valid segment name for the segment size; complete files have
//!   the segment size (plain) or decompress to it (compressed); no `.tmp` leftovers (a note);
//! * **contiguity** — per timeline, no missing segment between the first and the last, and, along the
//!   newest timeline's history, none missing where an ancestor timeline's WAL is needed (from the
//!   archive's first segment to the ancestor's switchpoint); a `.partial` is only normal as the last
//!   segment of its timeline;
//! * **timelines** — a `.history` file for every timeline above 1 that has segments; history files
//!   parse; no segment of a timeline lies past its switchpoint (per the histories of later timelines)
//!   or before the timeline began; ancestor timelines the newest history names have segments, unless
//!   their WAL ends before the archive's first segment (a note);
//! * **content** (with [`VerifyOptions::read_content`]) — every file decompresses completely (gzip
//!   CRC, LZ4 and zstd checksums where present), its SHA-256 matches `walrelay.sha256`, copies of one
//!   segment in several formats agree, and the pluggable [`SegmentContentCheck`] (the wal crate's
//!   page and record validation, [`crate::WalContentCheck`]) accepts each segment, partial ones
//!   included, and the records that span segment boundaries.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use walrelay_protocol::{Lsn, SegmentId, TimelineHistory, TimelineId, WalSegmentSize, XLogSegNo};

use crate::checksum::{read_checksums, ChecksumList, CHECKSUM_FILE_NAME};
use crate::compression::read_content;
use crate::error::{ArchiveError, Result};
use crate::inventory::{ArchiveDir, Inventory};

/// Where [`verify_files`] reads an archive from: a directory ([`ArchiveDir`]), or object storage
/// (walrelay-store's bucket reader). Thread-safe: files are read in parallel.
pub trait ArchiveFiles: Sync {
    /// The directory or URL, for the report.
    fn location(&self) -> PathBuf;
    /// Every file, classified.
    fn inventory(&self) -> Result<Inventory>;
    /// The WAL a segment file holds, decompressed (at most `max_len` bytes; with
    /// `tolerate_truncation` a compressed stream that just stops ends the data), and the SHA-256
    /// stored with the file, if the store keeps one per file.
    fn read_wal(
        &self,
        name: &str,
        max_len: u64,
        tolerate_truncation: bool,
    ) -> Result<(Vec<u8>, Option<[u8; 32]>)>;
    /// A small file as it is stored (history files, failover reports), at most `max_len` bytes.
    fn read_raw(&self, name: &str, max_len: u64) -> Result<Vec<u8>>;
    /// The archive's checksum list (`walrelay.sha256` in a directory).
    fn checksums(&self) -> Result<ChecksumList>;
}

/// History files and failover reports are a few lines.
const MAX_SMALL_FILE: u64 = 64 * 1024 * 1024;

impl ArchiveFiles for ArchiveDir {
    fn location(&self) -> PathBuf {
        self.path().to_path_buf()
    }

    fn inventory(&self) -> Result<Inventory> {
        self.scan()
    }

    fn read_wal(
        &self,
        name: &str,
        max_len: u64,
        tolerate_truncation: bool,
    ) -> Result<(Vec<u8>, Option<[u8; 32]>)> {
        read_content(&self.path().join(name), max_len, tolerate_truncation).map(|(b, _)| (b, None))
    }

    fn read_raw(&self, name: &str, max_len: u64) -> Result<Vec<u8>> {
        let path = self.path().join(name);
        let f = fs::File::open(&path).map_err(|e| ArchiveError::io("open", &path, e))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, max_len), &mut out)
            .map_err(|e| ArchiveError::io("read", &path, e))?;
        Ok(out)
    }

    fn checksums(&self) -> Result<ChecksumList> {
        read_checksums(self.path())
    }
}

/// Validation of a segment's WAL content, supplied by the caller ([`crate::WalContentCheck`]: the
/// wal crate's page-header and record checks). Must be thread-safe: verify may read files in
/// parallel, in any order, and calls it once per file (a segment kept in two formats is checked
/// twice).
pub trait SegmentContentCheck: Send + Sync {
    /// Checks one complete segment; `Err` carries a one-line reason.
    fn check(&self, segment: SegmentId, bytes: &[u8]) -> std::result::Result<(), String>;

    /// Checks the WAL a `.partial` file holds so far (decompressed; a compressed partial may stop
    /// anywhere, a plain one is zero-padded after the last byte received). Default: accept.
    fn check_partial(&self, _segment: SegmentId, _bytes: &[u8]) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Called once, after every file was read: problems that only show across files (a record
    /// spanning two segments, segments of different clusters), each with the segment it concerns
    /// and a one-line reason. Default: none.
    fn finish(&self) -> Vec<(SegmentId, String)> {
        Vec::new()
    }
}

/// Accepts any content: structure, sizes and checksums are still verified.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoContentCheck;

impl SegmentContentCheck for NoContentCheck {
    fn check(&self, _segment: SegmentId, _bytes: &[u8]) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Read every file (decompress, size, checksum, content check). Without it only names, sizes
    /// from the scan, contiguity and timelines are checked.
    pub read_content: bool,
    /// A complete segment without an entry in `walrelay.sha256` is a problem (not just unverified).
    pub require_checksums: bool,
    /// Files read in parallel (at least 1).
    pub jobs: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            read_content: true,
            require_checksums: false,
            jobs: 1,
        }
    }
}

/// The kinds of problems, stable names for `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Segments missing where WAL is needed.
    Gap,
    /// Wrong size, undecodable header or a name invalid for the segment size (found by the scan).
    Damaged,
    /// The compressed stream is truncated or corrupt, or decodes to the wrong size.
    Corrupt,
    /// Content differs from the SHA-256 recorded in `walrelay.sha256`.
    ChecksumMismatch,
    /// No SHA-256 recorded (only with [`VerifyOptions::require_checksums`]).
    ChecksumMissing,
    /// `walrelay.sha256` records different hashes for one file.
    ChecksumConflict,
    /// The [`SegmentContentCheck`] rejected the segment.
    ContentCheck,
    /// Copies of one segment in different formats hold different WAL.
    DuplicateMismatch,
    /// A timeline above 1 has segments but no `.history` file.
    MissingHistory,
    /// A `.history` file does not parse.
    BadHistory,
    /// A segment of a timeline lies entirely before the timeline began.
    BeforeTimelineStart,
    /// An ancestor timeline whose WAL the archive should hold has no segments.
    MissingParentTimeline,
    /// A `.partial` segment where a complete one is needed (not the last of its timeline).
    IncompletePartial,
    /// A file could not be read (IO error).
    Unreadable,
}

/// One problem, named by the file it concerns (for a gap: the first missing file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub kind: ProblemKind,
    pub detail: String,
}

/// A run of missing segments on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
}

/// What the archive holds for one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    pub timeline: TimelineId,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    /// Segment numbers with at least one usable file.
    pub segments: u64,
    /// Of those, how many only have a `.partial` file.
    pub partial_segments: u64,
    /// Start of the first segment.
    pub start_lsn: Option<Lsn>,
    /// End of the last complete segment.
    pub end_lsn: Option<Lsn>,
    pub history_file: Option<String>,
    /// Where this timeline ends according to the histories of later timelines.
    pub switchpoint: Option<Lsn>,
    pub gaps: Vec<Gap>,
}

/// The result of [`verify`]; serializable for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub directory: PathBuf,
    pub wal_segment_size: u64,
    pub timelines: Vec<TimelineSummary>,
    /// Files whose content was read.
    pub files_read: u64,
    /// WAL bytes decoded while reading them.
    pub wal_bytes_read: u64,
    /// Files whose SHA-256 matched `walrelay.sha256`.
    pub checksums_matched: u64,
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not damage (crash leftovers, WAL before the archive's start,
    /// orphaned WAL after a failover).
    pub notes: Vec<String>,
    /// WAL of a timeline past the point where the next timeline's history says it ended: what the
    /// old primary wrote after a failover that the new primary never had. Kept on purpose (as
    /// PostgreSQL's archiver keeps it); recovery reads the new timeline's files there.
    pub orphaned: Vec<OrphanedWal>,
}

/// One timeline's segments past its end (see [`VerifyReport::orphaned`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanedWal {
    pub timeline: u32,
    /// Where the timeline ends according to `history`.
    pub switchpoint: String,
    /// The history file that says so.
    pub history: String,
    /// The segment files that start at or past the switchpoint.
    pub files: Vec<String>,
    /// `TTTTTTTT.failover.json` written by `walrelay receive` when it followed that failover.
    pub report: Option<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problems_of(&self, kind: ProblemKind) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.kind == kind)
    }
}

/// One line about a failover report written by `walrelay receive`.
fn failover_note(files: &dyn ArchiveFiles, name: &str) -> String {
    let Some(v) = files
        .read_raw(name, MAX_SMALL_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return format!("{name}: a failover report that cannot be read");
    };
    let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    let commits = num("lost_commits");
    let when = match (
        v["first_lost_commit"]["time"].as_str(),
        v["last_lost_commit"]["time"].as_str(),
    ) {
        (Some(f), Some(l)) if commits > 1 => format!(" (committed between {f} and {l})"),
        (Some(f), _) => format!(" (committed at {f})"),
        _ => String::new(),
    };
    format!(
        "{name}: the failover from timeline {} to {} at {} left {} bytes of the old timeline's WAL (to {}) that the new primary never had, holding {commits} committed transaction{}{when}",
        num("old_timeline"),
        num("new_timeline"),
        text("switchpoint"),
        num("orphaned_bytes"),
        text("orphaned_end"),
        if commits == 1 { "" } else { "s" },
    )
}

fn problem(file: impl Into<String>, kind: ProblemKind, detail: impl Into<String>) -> Problem {
    Problem {
        file: file.into(),
        kind,
        detail: detail.into(),
    }
}

/// Verifies the archive `dir` (see the module docs). Fails only when the directory cannot be
/// listed; everything else is a [`Problem`] in the report.
pub fn verify(
    dir: &Path,
    seg_size: WalSegmentSize,
    checks: &dyn SegmentContentCheck,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    verify_files(&ArchiveDir::new(dir, seg_size), seg_size, checks, opts)
}

/// [`verify`] of an archive wherever its files are (see [`ArchiveFiles`]).
pub fn verify_files(
    files: &dyn ArchiveFiles,
    seg_size: WalSegmentSize,
    checks: &dyn SegmentContentCheck,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let inv = files.inventory()?;
    let mut report = VerifyReport {
        directory: files.location(),
        wal_segment_size: seg_size.as_u64(),
        timelines: Vec::new(),
        files_read: 0,
        wal_bytes_read: 0,
        checksums_matched: 0,
        problems: Vec::new(),
        notes: Vec::new(),
        orphaned: Vec::new(),
    };
    for d in &inv.damaged {
        report
            .problems
            .push(problem(&d.name, ProblemKind::Damaged, &d.reason));
    }
    for t in &inv.temp_files {
        report.notes.push(format!(
            "{t}: temp file (being written, or left by a crash; `cleanup` removes ours)"
        ));
    }
    for name in inv.failover_reports.values() {
        report.notes.push(failover_note(files, name));
    }

    let checksums = match files.checksums() {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(problem(
                CHECKSUM_FILE_NAME,
                ProblemKind::Unreadable,
                e.to_string(),
            ));
            ChecksumList::default()
        }
    };
    for name in &checksums.conflicts {
        report.problems.push(problem(
            name,
            ProblemKind::ChecksumConflict,
            format!("{CHECKSUM_FILE_NAME} records different SHA-256 values for it"),
        ));
    }
    for line in &checksums.malformed_lines {
        report.notes.push(format!(
            "{CHECKSUM_FILE_NAME} line {line} is not `SHA256  NAME` (ignored)"
        ));
    }

    let histories = check_histories(files, &inv, &checksums, opts, &mut report);
    check_timelines(&inv, &histories, &mut report);
    if opts.read_content {
        check_contents(files, &inv, &checksums, checks, opts, &mut report);
    }

    let present: BTreeSet<String> = inv
        .segments
        .values()
        .flat_map(|files| files.iter().map(|f| logical_name(&f.name)))
        .chain(inv.histories.values().cloned())
        .chain(inv.backup_histories.iter().cloned())
        .collect();
    let orphans = checksums
        .entries
        .keys()
        .filter(|n| !present.contains(*n))
        .count();
    if orphans > 0 {
        report.notes.push(format!(
            "{orphans} entries in {CHECKSUM_FILE_NAME} name files that are not in the archive"
        ));
    }
    report.problems.sort_by(|a, b| {
        a.file
            .cmp(&b.file)
            .then(a.kind.cmp(&b.kind))
            .then(a.detail.cmp(&b.detail))
    });
    Ok(report)
}

/// The 24-hex-digit name of a segment file name (`X.gz.partial` → `X`).
fn logical_name(name: &str) -> String {
    name.get(..24).unwrap_or(name).to_string()
}

/// Parses every history file (and checks its checksum). Returns the ones that parse.
fn check_histories(
    files: &dyn ArchiveFiles,
    inv: &Inventory,
    checksums: &ChecksumList,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> BTreeMap<TimelineId, TimelineHistory> {
    let mut parsed = BTreeMap::new();
    for (&tli, name) in &inv.histories {
        let bytes = match files.read_raw(name, MAX_SMALL_FILE) {
            Ok(b) => b,
            Err(e) => {
                report
                    .problems
                    .push(problem(name, ProblemKind::Unreadable, e.to_string()));
                continue;
            }
        };
        if opts.read_content {
            report.files_read += 1;
            if let Some(want) = checksums.entries.get(name) {
                let got: [u8; 32] = Sha256::digest(&bytes).into();
                if &got == want {
                    report.checksums_matched += 1;
                } else {
                    report.problems.push(problem(
                        name,
                        ProblemKind::ChecksumMismatch,
                        format!(
                            "SHA-256 {} but {CHECKSUM_FILE_NAME} has {}",
                            hex::encode(got),
                            hex::encode(want)
                        ),
                    ));
                }
            }
        }
        match TimelineHistory::parse(tli, &bytes) {
            Ok(h) => {
                parsed.insert(tli, h);
            }
            Err(e) => report
                .problems
                .push(problem(name, ProblemKind::BadHistory, e.to_string())),
        }
    }
    parsed
}

/// One timeline of the lineage recovery follows by default (to the newest timeline).
struct LineageEntry {
    begin: Lsn,
    end: Option<Lsn>,
}

fn check_timelines(
    inv: &Inventory,
    histories: &BTreeMap<TimelineId, TimelineHistory>,
    report: &mut VerifyReport,
) {
    let seg = inv.seg_size;
    let name_of = |tli: TimelineId, segno: XLogSegNo| SegmentId::new(tli, segno).file_name(seg);

    // Where each timeline ends (the latest switchpoint any history gives it: branches may end it at
    // different points) and where each begins (its own history's last switchpoint).
    let mut ends: BTreeMap<TimelineId, (Lsn, TimelineId)> = BTreeMap::new();
    let mut begins: BTreeMap<TimelineId, Lsn> = BTreeMap::new();
    for (tli, h) in histories {
        for e in &h.ancestors {
            let slot = ends.entry(e.timeline).or_insert((e.switchpoint, *tli));
            if e.switchpoint > slot.0 {
                *slot = (e.switchpoint, *tli);
            }
        }
        if let Some(last) = h.ancestors.last() {
            begins.insert(*tli, last.switchpoint);
        }
    }

    // The newest timeline and its lineage.
    let with_segments = inv.timelines();
    let newest = with_segments.iter().chain(histories.keys()).max().copied();
    let mut lineage: BTreeMap<TimelineId, LineageEntry> = BTreeMap::new();
    // A timeline above 1 without its history has an unknown lineage (reported as MissingHistory).
    if let Some(newest) = newest.filter(|t| t.0 == 1 || histories.contains_key(t)) {
        let mut begin = Lsn(0);
        if let Some(h) = histories.get(&newest) {
            for e in &h.ancestors {
                lineage.insert(
                    e.timeline,
                    LineageEntry {
                        begin,
                        end: Some(e.switchpoint),
                    },
                );
                begin = e.switchpoint;
            }
        }
        lineage.insert(newest, LineageEntry { begin, end: None });
    }
    let newest_history = newest.map(|t| t.history_file_name()).unwrap_or_default();
    let archive_start = inv.first_segno();

    let all: BTreeSet<TimelineId> = with_segments
        .iter()
        .copied()
        .chain(lineage.keys().copied())
        .collect();
    for tli in all {
        // segno -> has a complete file
        let on_disk: BTreeMap<XLogSegNo, bool> = inv
            .segments_of(tli)
            .map(|(id, files)| (id.segno, files.iter().any(|f| f.state.is_complete())))
            .collect();
        let preferred_name = |segno: XLogSegNo| {
            inv.preferred(SegmentId::new(tli, segno))
                .map(|f| f.name.clone())
                .unwrap_or_else(|| name_of(tli, segno))
        };
        let switchpoint = ends.get(&tli).map(|e| e.0);

        if tli.0 > 1 && !on_disk.is_empty() && !inv.histories.contains_key(&tli) {
            report.problems.push(problem(
                tli.history_file_name(),
                ProblemKind::MissingHistory,
                format!(
                    "timeline {tli} has segments but no history file; fetch it with TIMELINE_HISTORY {tli} or copy it from the primary's pg_wal"
                ),
            ));
        }
        if let Some((end, by)) = ends.get(&tli) {
            let files: Vec<String> = on_disk
                .keys()
                .filter(|s| seg.segment_start(**s) >= *end)
                .map(|s| preferred_name(*s))
                .collect();
            if !files.is_empty() {
                let report_file = inv.failover_reports.get(by).cloned();
                report.notes.push(format!(
                    "timeline {tli} has {} segment{} past its end at {end} per {} ({}{}): WAL the old primary wrote after the failover, which the new primary never had — kept, and not read by recovery, which takes timeline {by} from there{}",
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                    by.history_file_name(),
                    files[0],
                    if files.len() > 1 { format!(" to {}", files[files.len() - 1]) } else { String::new() },
                    report_file
                        .as_ref()
                        .map(|f| format!("; what it held is in {f}"))
                        .unwrap_or_default()
                ));
                report.orphaned.push(OrphanedWal {
                    timeline: tli.0,
                    switchpoint: end.to_string(),
                    history: by.history_file_name(),
                    files,
                    report: report_file,
                });
            }
        }
        if let Some(begin) = begins.get(&tli) {
            for segno in on_disk
                .keys()
                .filter(|s| seg.segment_start(s.next()) <= *begin)
            {
                report.problems.push(problem(
                    preferred_name(*segno),
                    ProblemKind::BeforeTimelineStart,
                    format!(
                        "ends at {}, but timeline {tli} begins at {begin} per {}",
                        seg.segment_start(segno.next()),
                        tli.history_file_name()
                    ),
                ));
            }
        }

        // Segments outside the timeline's own span were reported above; they say nothing about
        // which segments the timeline needs.
        let present: BTreeMap<XLogSegNo, bool> = on_disk
            .iter()
            .map(|(s, c)| (*s, *c))
            .filter(|(s, _)| {
                let before_end = match ends.get(&tli) {
                    Some((end, _)) => seg.segment_start(*s) < *end,
                    None => true,
                };
                let after_begin = match begins.get(&tli) {
                    Some(begin) => seg.segment_start(s.next()) > *begin,
                    None => true,
                };
                before_end && after_begin
            })
            .collect();

        // The range of segment numbers that must be present on this timeline.
        let mut range = match (present.keys().next(), present.keys().next_back()) {
            (Some(lo), Some(hi)) => Some((*lo, *hi)),
            _ => None,
        };
        if let (Some(l), Some(start)) = (lineage.get(&tli), archive_start) {
            let need_lo = seg.segno(l.begin).max(start);
            // An ancestor's last needed segment is the one before its switchpoint's segment: the
            // segment holding the switchpoint is read from the next timeline's copy.
            let need_hi = match l.end {
                Some(end) => seg.segno(end).0.checked_sub(1).map(XLogSegNo),
                None => range.map(|r| r.1),
            };
            match need_hi {
                Some(hi) if need_lo <= hi => {
                    if present.is_empty() {
                        report.problems.push(problem(
                            name_of(tli, need_lo),
                            ProblemKind::MissingParentTimeline,
                            format!(
                                "timeline {tli} holds the WAL from {} to {} per {newest_history}, but the archive has none of its segments",
                                l.begin.max(seg.segment_start(start)),
                                l.end.map_or_else(|| "its end".to_string(), |e| e.to_string())
                            ),
                        ));
                    }
                    range = Some(match range {
                        Some((lo, h)) => (lo.min(need_lo), h.max(hi)),
                        None => (need_lo, hi),
                    });
                }
                _ if present.is_empty() => report.notes.push(format!(
                    "timeline {tli} (ends at {}) lies before the archive's first segment {}",
                    l.end.map_or_else(|| "?".to_string(), |e| e.to_string()),
                    name_of(tli, start)
                )),
                _ => {}
            }
        }

        let mut gaps = Vec::new();
        if let Some((lo, hi)) = range {
            let mut run: Option<(XLogSegNo, u64)> = None;
            let mut segno = lo;
            while segno <= hi {
                if present.contains_key(&segno) {
                    if let Some((first, count)) = run.take() {
                        gaps.push((first, count));
                    }
                } else {
                    match &mut run {
                        Some((_, count)) => *count += 1,
                        None => run = Some((segno, 1)),
                    }
                }
                segno = segno.next();
            }
            if let Some(r) = run {
                gaps.push(r);
            }
            for (segno, complete) in &present {
                if !complete && *segno < hi {
                    report.problems.push(problem(
                        preferred_name(*segno),
                        ProblemKind::IncompletePartial,
                        format!(
                            "only a partial copy, but timeline {tli} needs this segment complete (WAL continues after it)"
                        ),
                    ));
                }
            }
        }
        let gaps: Vec<Gap> = gaps
            .into_iter()
            .map(|(first, count)| Gap {
                first_missing: name_of(tli, first),
                last_missing: name_of(tli, XLogSegNo(first.0 + count - 1)),
                count,
            })
            .collect();
        for g in &gaps {
            report.problems.push(problem(
                &g.first_missing,
                ProblemKind::Gap,
                if g.count == 1 {
                    format!("missing on timeline {tli}")
                } else {
                    format!(
                        "missing {} through {} ({} segments) on timeline {tli}",
                        g.first_missing, g.last_missing, g.count
                    )
                },
            ));
        }

        let first = on_disk.keys().next().copied();
        let last = on_disk.keys().next_back().copied();
        let last_complete = on_disk.iter().rev().find(|(_, c)| **c).map(|(s, _)| *s);
        report.timelines.push(TimelineSummary {
            timeline: tli,
            first_segment: first.map(|s| name_of(tli, s)),
            last_segment: last.map(|s| name_of(tli, s)),
            segments: on_disk.len() as u64,
            partial_segments: on_disk.values().filter(|c| !**c).count() as u64,
            start_lsn: first.map(|s| seg.segment_start(s)),
            end_lsn: last_complete.map(|s| seg.segment_start(s.next())),
            history_file: inv.histories.get(&tli).cloned(),
            switchpoint,
            gaps,
        });
    }
}

/// The result of reading one segment file.
struct FileOutcome {
    id: SegmentId,
    name: String,
    complete: bool,
    sha256: Option<[u8; 32]>,
    wal_bytes: u64,
    checksum_matched: bool,
    problems: Vec<Problem>,
}

fn check_contents(
    source: &dyn ArchiveFiles,
    inv: &Inventory,
    checksums: &ChecksumList,
    checks: &dyn SegmentContentCheck,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) {
    let files: Vec<_> = inv.segments.values().flatten().collect();
    let next = AtomicUsize::new(0);
    let jobs = opts.jobs.clamp(1, files.len().max(1));
    let mut outcomes: Vec<(usize, FileOutcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        let complete = f.state.is_complete();
                        mine.push((
                            i,
                            check_file(
                                source, inv, f.id, &f.name, complete, checksums, checks, opts,
                            ),
                        ));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    outcomes.sort_by_key(|(i, _)| *i);

    for (id, detail) in checks.finish() {
        let file = inv
            .preferred(id)
            .map(|f| f.name.clone())
            .unwrap_or_else(|| id.file_name(inv.seg_size));
        report
            .problems
            .push(problem(file, ProblemKind::ContentCheck, detail));
    }

    let mut by_segment: BTreeMap<SegmentId, Vec<(String, [u8; 32])>> = BTreeMap::new();
    for (_, o) in outcomes {
        report.files_read += 1;
        report.wal_bytes_read += o.wal_bytes;
        if o.checksum_matched {
            report.checksums_matched += 1;
        }
        report.problems.extend(o.problems);
        if let (true, Some(sha)) = (o.complete, o.sha256) {
            by_segment.entry(o.id).or_default().push((o.name, sha));
        }
    }
    for copies in by_segment.values() {
        if let Some((first_name, first_sha)) = copies.first() {
            for (name, sha) in &copies[1..] {
                if sha != first_sha {
                    report.problems.push(problem(
                        name,
                        ProblemKind::DuplicateMismatch,
                        format!("holds different WAL than {first_name}; restore uses {first_name}"),
                    ));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_file(
    source: &dyn ArchiveFiles,
    inv: &Inventory,
    id: SegmentId,
    name: &str,
    complete: bool,
    checksums: &ChecksumList,
    checks: &dyn SegmentContentCheck,
    opts: &VerifyOptions,
) -> FileOutcome {
    let mut out = FileOutcome {
        id,
        name: name.to_string(),
        complete,
        sha256: None,
        wal_bytes: 0,
        checksum_matched: false,
        problems: Vec::new(),
    };
    let seg = inv.seg_size.as_u64();
    let (bytes, recorded) = match source.read_wal(name, seg, !complete) {
        Ok(r) => r,
        Err(e) => {
            let kind = match e {
                ArchiveError::Corrupt { .. } => ProblemKind::Corrupt,
                _ => ProblemKind::Unreadable,
            };
            out.problems.push(problem(name, kind, e.to_string()));
            return out;
        }
    };
    out.wal_bytes = bytes.len() as u64;
    if !complete {
        if let Err(reason) = checks.check_partial(id, &bytes) {
            out.problems
                .push(problem(name, ProblemKind::ContentCheck, reason));
        }
        return out;
    }
    if bytes.len() as u64 != seg {
        out.problems.push(problem(
            name,
            ProblemKind::Corrupt,
            format!("decodes to {} bytes, a segment has {seg}", bytes.len()),
        ));
        return out;
    }
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    out.sha256 = Some(sha);
    let logical = logical_name(name);
    match recorded.as_ref().or_else(|| checksums.entries.get(&logical)) {
        Some(want) if *want == sha => out.checksum_matched = true,
        Some(want) => out.problems.push(problem(
            name,
            ProblemKind::ChecksumMismatch,
            format!(
                "SHA-256 {} but {CHECKSUM_FILE_NAME} has {} for {logical}: the file changed after it was archived (bit rot?)",
                hex::encode(sha),
                hex::encode(want)
            ),
        )),
        None if opts.require_checksums => out.problems.push(problem(
            name,
            ProblemKind::ChecksumMissing,
            format!("no entry for {logical} in {CHECKSUM_FILE_NAME}"),
        )),
        None => {}
    }
    if let Err(reason) = checks.check(id, &bytes) {
        out.problems
            .push(problem(name, ProblemKind::ContentCheck, reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::record_checksum;
    use crate::compression::compress_completed_segment;
    use crate::testutil::fake_segment;
    use crate::Compression;
    use walrelay_durable::Owner;

    const MB: usize = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB as u64).unwrap()
    }

    fn name(tli: u32, segno: u64) -> String {
        SegmentId::new(TimelineId(tli), XLogSegNo(segno)).file_name(seg())
    }

    /// Writes a complete segment, compressed as asked, and records its checksum.
    fn put(dir: &Path, tli: u32, segno: u64, c: Compression) -> Vec<u8> {
        let n = name(tli, segno);
        let data = fake_segment(MB, (tli as u8) ^ (segno as u8));
        fs::write(dir.join(&n), &data).unwrap();
        let sha: [u8; 32] = Sha256::digest(&data).into();
        record_checksum(dir, &n, &sha).unwrap();
        compress_completed_segment(dir, &n, c, Owner::current()).unwrap();
        data
    }

    fn run(dir: &Path) -> VerifyReport {
        verify(dir, seg(), &NoContentCheck, &VerifyOptions::default()).unwrap()
    }

    fn kinds(r: &VerifyReport) -> Vec<(String, ProblemKind)> {
        r.problems
            .iter()
            .map(|p| (p.file.clone(), p.kind))
            .collect()
    }

    #[test]
    fn clean_archive_in_every_format() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 1, 1, Compression::None);
        put(d.path(), 1, 2, Compression::Gzip { level: 1 });
        put(d.path(), 1, 3, Compression::Lz4);
        put(d.path(), 1, 4, Compression::Zstd { level: 1 });
        fs::write(
            d.path().join(format!("{}.partial", name(1, 5))),
            vec![0u8; MB],
        )
        .unwrap();
        let r = run(d.path());
        assert!(r.is_ok(), "{:#?}", r.problems);
        assert_eq!(r.files_read, 5);
        assert_eq!(r.checksums_matched, 4);
        assert_eq!(r.wal_bytes_read, 5 * MB as u64);
        assert_eq!(r.timelines.len(), 1);
        let t = &r.timelines[0];
        assert_eq!(t.first_segment.as_deref(), Some(name(1, 1).as_str()));
        assert_eq!(t.last_segment.as_deref(), Some(name(1, 5).as_str()));
        assert_eq!((t.segments, t.partial_segments), (5, 1));
        assert_eq!(t.end_lsn, Some(Lsn(5 * MB as u64)));
        // Parallel reading gives the same answer.
        let r2 = verify(
            d.path(),
            seg(),
            &NoContentCheck,
            &VerifyOptions {
                jobs: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r, r2);
        // JSON for --json.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["timelines"][0]["timeline"], 1);
        assert_eq!(json["timelines"][0]["end_lsn"], "0/500000");
    }

    #[test]
    fn gaps_are_named_by_missing_files() {
        let d = tempfile::tempdir().unwrap();
        for s in [1, 2, 4, 8] {
            put(d.path(), 1, s, Compression::Lz4);
        }
        let r = run(d.path());
        assert_eq!(
            kinds(&r),
            vec![
                (name(1, 3), ProblemKind::Gap),
                (name(1, 5), ProblemKind::Gap)
            ]
        );
        let g = &r.timelines[0].gaps;
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].last_missing, name(1, 7));
        assert_eq!(g[1].count, 3);
        assert!(
            r.problems[1].detail.contains(&name(1, 7)),
            "{}",
            r.problems[1].detail
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""kind":"gap""#), "{json}");
    }

    #[test]
    fn damaged_files_are_reported_by_name() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 1, 1, Compression::None);
        // Wrong-size plain segment.
        fs::write(d.path().join(name(1, 2)), vec![1u8; 4096]).unwrap();
        // Truncated .gz: its ISIZE trailer is gone, the scan sees a wrong size.
        put(d.path(), 1, 3, Compression::Gzip { level: 1 });
        let gz = d.path().join(format!("{}.gz", name(1, 3)));
        let bytes = fs::read(&gz).unwrap();
        fs::write(&gz, &bytes[..bytes.len() - 100]).unwrap();
        // Corrupt .lz4 whose header still claims a full segment: only reading finds it.
        put(d.path(), 1, 4, Compression::Lz4);
        let lz = d.path().join(format!("{}.lz4", name(1, 4)));
        let mut bytes = fs::read(&lz).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        bytes[mid + 1] ^= 0xFF;
        fs::write(&lz, &bytes).unwrap();
        put(d.path(), 1, 5, Compression::None);
        fs::write(d.path().join(format!("{}.gz.tmp", name(1, 6))), "x").unwrap();

        let r = run(d.path());
        let k = kinds(&r);
        assert!(k.contains(&(name(1, 2), ProblemKind::Damaged)), "{k:?}");
        assert!(
            k.contains(&(format!("{}.gz", name(1, 3)), ProblemKind::Damaged)),
            "{k:?}"
        );
        assert!(
            k.contains(&(format!("{}.lz4", name(1, 4)), ProblemKind::Corrupt)),
            "{k:?}"
        );
        // The damaged ones leave holes the gap check names too.
        assert!(k.contains(&(name(1, 2), ProblemKind::Gap)), "{k:?}");
        assert!(
            r.notes.iter().any(|n| n.contains(".gz.tmp")),
            "{:?}",
            r.notes
        );
        // Nothing was deleted.
        assert!(d.path().join(name(1, 2)).exists() && gz.exists() && lz.exists());
    }

    #[test]
    fn checksums_catch_bit_rot_in_plain_files() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 1, 1, Compression::None);
        let p = d.path().join(name(1, 1));
        let mut bytes = fs::read(&p).unwrap();
        bytes[1000] ^= 1;
        fs::write(&p, &bytes).unwrap();
        // No checksum recorded for this one.
        fs::write(d.path().join(name(1, 2)), fake_segment(MB, 2)).unwrap();
        let r = run(d.path());
        assert_eq!(kinds(&r), vec![(name(1, 1), ProblemKind::ChecksumMismatch)]);
        let strict = verify(
            d.path(),
            seg(),
            &NoContentCheck,
            &VerifyOptions {
                require_checksums: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(kinds(&strict).contains(&(name(1, 2), ProblemKind::ChecksumMissing)));
        // Conflicting entries.
        record_checksum(d.path(), &name(1, 2), &[1; 32]).unwrap();
        record_checksum(d.path(), &name(1, 2), &[2; 32]).unwrap();
        let r = run(d.path());
        assert!(kinds(&r).contains(&(name(1, 2), ProblemKind::ChecksumConflict)));
    }

    #[test]
    fn content_check_is_pluggable() {
        struct RejectSegno(u64);
        impl SegmentContentCheck for RejectSegno {
            fn check(&self, s: SegmentId, bytes: &[u8]) -> std::result::Result<(), String> {
                assert_eq!(bytes.len(), MB);
                if s.segno.0 == self.0 {
                    Err("invalid magic number 0000 in log segment".into())
                } else {
                    Ok(())
                }
            }
        }
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 1, 1, Compression::None);
        put(d.path(), 1, 2, Compression::Zstd { level: 1 });
        let r = verify(d.path(), seg(), &RejectSegno(2), &VerifyOptions::default()).unwrap();
        assert_eq!(
            kinds(&r),
            vec![(format!("{}.zst", name(1, 2)), ProblemKind::ContentCheck)]
        );
        assert!(r.problems[0].detail.contains("invalid magic"));
        // Without reading content, the check is not run.
        let r = verify(
            d.path(),
            seg(),
            &RejectSegno(2),
            &VerifyOptions {
                read_content: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.is_ok() && r.files_read == 0);
    }

    #[test]
    fn crash_leftover_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let data = put(d.path(), 1, 1, Compression::Gzip { level: 1 });
        fs::write(d.path().join(name(1, 1)), &data).unwrap(); // identical plain + .gz
        assert!(run(d.path()).is_ok());
        fs::write(d.path().join(name(1, 1)), fake_segment(MB, 99)).unwrap(); // now different
        let k = kinds(&run(d.path()));
        assert!(
            k.contains(&(format!("{}.gz", name(1, 1)), ProblemKind::DuplicateMismatch)),
            "{k:?}"
        );
    }

    #[test]
    fn partial_in_the_middle_is_a_problem() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 1, 1, Compression::None);
        fs::write(
            d.path().join(format!("{}.partial", name(1, 2))),
            vec![0u8; 10],
        )
        .unwrap();
        put(d.path(), 1, 3, Compression::None);
        assert_eq!(
            kinds(&run(d.path())),
            vec![(
                format!("{}.partial", name(1, 2)),
                ProblemKind::IncompletePartial
            )]
        );
    }

    #[test]
    fn timeline_switch_done_right() {
        // Timeline 1 ends at 0/500028 (in segment 5); timeline 2 continues from segment 5.
        let d = tempfile::tempdir().unwrap();
        for s in 1..=4 {
            put(d.path(), 1, s, Compression::Lz4);
        }
        fs::write(
            d.path().join(format!("{}.partial", name(1, 5))),
            vec![0u8; MB],
        )
        .unwrap();
        fs::write(
            d.path().join("00000002.history"),
            "1\t0/500028\tno recovery target specified\n",
        )
        .unwrap();
        record_checksum(
            d.path(),
            "00000002.history",
            &Sha256::digest(b"1\t0/500028\tno recovery target specified\n").into(),
        )
        .unwrap();
        for s in 5..=7 {
            put(d.path(), 2, s, Compression::Lz4);
        }
        let r = run(d.path());
        assert!(r.is_ok(), "{:#?}", r.problems);
        assert_eq!(r.checksums_matched, 8);
        assert_eq!(r.timelines[0].switchpoint, Some(Lsn(0x50_0028)));
        assert_eq!(
            r.timelines[1].history_file.as_deref(),
            Some("00000002.history")
        );
    }

    #[test]
    fn timeline_inconsistencies() {
        let d = tempfile::tempdir().unwrap();
        for s in 1..=4 {
            put(d.path(), 1, s, Compression::None);
        }
        put(d.path(), 1, 7, Compression::None); // after timeline 1 ended: a diverged primary
        fs::write(d.path().join("00000002.history"), "1\t0/500028\tx\n").unwrap();
        for s in 5..=7 {
            put(d.path(), 2, s, Compression::None);
        }
        put(d.path(), 2, 2, Compression::None); // before timeline 2 began
        put(d.path(), 3, 7, Compression::None); // no 00000003.history
        let r = run(d.path());
        let k = kinds(&r);
        // Timeline 1's segment past its end is orphaned WAL after a failover: information.
        assert!(!k.iter().any(|(f, _)| *f == name(1, 7)), "{k:?}");
        assert_eq!(r.orphaned.len(), 1, "{:?}", r.orphaned);
        assert_eq!(r.orphaned[0].files, vec![name(1, 7)]);
        assert_eq!(r.orphaned[0].switchpoint, "0/500028");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("past its end at 0/500028")),
            "{:?}",
            r.notes
        );
        assert!(
            k.contains(&(name(2, 2), ProblemKind::BeforeTimelineStart)),
            "{k:?}"
        );
        assert!(
            k.contains(&("00000003.history".into(), ProblemKind::MissingHistory)),
            "{k:?}"
        );
        // Timeline 1's segments 5 and 6 are not needed (timeline 2's copy of 5 holds its tail),
        // so the jump from 4 to 7 on timeline 1 is not reported as a gap.
        assert!(!k.contains(&(name(1, 5), ProblemKind::Gap)), "{k:?}");
    }

    #[test]
    fn lineage_needs_parent_timelines() {
        // 00000003.history: 1 until 0/300000, 2 until 0/600000. The archive has timeline 1 and 3
        // but nothing of timeline 2, whose WAL (segments 3..=5) recovery needs.
        let d = tempfile::tempdir().unwrap();
        for s in 1..=2 {
            put(d.path(), 1, s, Compression::None);
        }
        fs::write(d.path().join("00000002.history"), "1\t0/300000\tx\n").unwrap();
        fs::write(
            d.path().join("00000003.history"),
            "1\t0/300000\tx\n2\t0/600000\ty\n",
        )
        .unwrap();
        for s in 6..=7 {
            put(d.path(), 3, s, Compression::None);
        }
        let r = run(d.path());
        let k = kinds(&r);
        assert!(
            k.contains(&(name(2, 3), ProblemKind::MissingParentTimeline)),
            "{k:?}"
        );
        assert!(k.contains(&(name(2, 3), ProblemKind::Gap)), "{k:?}");

        // Only timeline 3 in the archive: the older timelines end before its start (a note).
        let e = tempfile::tempdir().unwrap();
        fs::write(
            e.path().join("00000003.history"),
            "1\t0/300000\tx\n2\t0/600000\ty\n",
        )
        .unwrap();
        for s in 6..=7 {
            put(e.path(), 3, s, Compression::None);
        }
        let r = run(e.path());
        assert!(r.is_ok(), "{:#?}", r.problems);
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(r.notes[0].contains("before the archive's first segment"));

        // Timeline 2 partially present: the missing head of its range is a gap.
        let f = tempfile::tempdir().unwrap();
        for s in 1..=2 {
            put(f.path(), 1, s, Compression::None);
        }
        fs::write(f.path().join("00000002.history"), "1\t0/300000\tx\n").unwrap();
        for s in 4..=5 {
            put(f.path(), 2, s, Compression::None);
        }
        assert_eq!(kinds(&run(f.path())), vec![(name(2, 3), ProblemKind::Gap)]);
    }

    #[test]
    fn bad_history_files() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), 2, 1, Compression::None);
        fs::write(d.path().join("00000002.history"), "banana\n").unwrap();
        let k = kinds(&run(d.path()));
        assert_eq!(
            k,
            vec![("00000002.history".into(), ProblemKind::BadHistory)]
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(verify(
            &d.path().join("x"),
            seg(),
            &NoContentCheck,
            &VerifyOptions::default()
        )
        .is_err());
        let r = run(d.path());
        assert!(r.is_ok() && r.timelines.is_empty());
    }
}
