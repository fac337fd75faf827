//! What an archive directory holds: [`ArchiveDir::scan`] lists every segment per timeline with its
//! state, the history files, temp files left by a crash and damaged files; [`cleanup`] removes the
//! crash leftovers.
//!
//! "Complete" follows pg_receivewal's `FindStreamingStart`: a plain segment is complete when it has
//! exactly `wal_segment_size` bytes; a compressed one when its uncompressed size (gzip ISIZE, LZ4 or
//! zstd content size, or counted by decompressing) is exactly that. A plain non-partial file of any
//! other size is damage: it is reported, never deleted by this crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use walrelay_durable as durable;
use walrelay_protocol::segment::Compression as CompressionMethod;
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalFileName, WalSegmentSize, XLogSegNo};
use walrelay_wal::page::LONG_PAGE_HEADER_SIZE;

use crate::checksum::CHECKSUM_FILE_NAME;
use crate::compression::{open_segment, read_content, uncompressed_size};
use crate::error::{ArchiveError, Result};

/// An archive directory and the segment size of the cluster whose WAL it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveDir {
    path: PathBuf,
    seg_size: WalSegmentSize,
}

/// The state of one file holding (part of) a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentFileState {
    /// `NAME`, exactly one segment long.
    Complete,
    /// `NAME.gz`/`.lz4`/`.zst` whose uncompressed size is one segment.
    CompleteCompressed,
    /// `NAME.partial`: the segment being received (pg_receivewal pads it with zeros to full size).
    Partial,
    /// `NAME.gz.partial` etc.: a compressed stream that is still being written.
    CompressedPartial,
}

impl SegmentFileState {
    pub fn is_complete(self) -> bool {
        matches!(
            self,
            SegmentFileState::Complete | SegmentFileState::CompleteCompressed
        )
    }
}

/// One file of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub name: String,
    pub id: SegmentId,
    pub state: SegmentFileState,
    pub compression: Option<CompressionMethod>,
    /// Size on disk.
    pub file_size: u64,
    /// WAL bytes: the segment size for complete files, the file size for plain partials, `None` for
    /// compressed partials (not decoded by a scan).
    pub wal_bytes: Option<u64>,
    pub modified: Option<SystemTime>,
}

/// A file with a WAL name that cannot be what its name says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    pub name: String,
    pub reason: String,
}

/// Everything a scan found, by kind.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub dir: PathBuf,
    pub seg_size: WalSegmentSize,
    /// Usable segment files per segment, best first: complete plain, complete compressed (gz, lz4,
    /// zst), then partials newest first. Damaged files are not here but in `damaged`.
    pub segments: BTreeMap<SegmentId, Vec<SegmentFile>>,
    /// `TTTTTTTT.history` files.
    pub histories: BTreeMap<TimelineId, String>,
    /// `….backup` files (backup history files; kept, never needed by recovery).
    pub backup_histories: Vec<String>,
    /// `*.tmp` files: leftovers of a crash, or files being written right now.
    pub temp_files: Vec<String>,
    pub damaged: Vec<DamagedFile>,
    /// Anything else (ignored, reported for completeness).
    pub unrecognized: Vec<String>,
    /// `TTTTTTTT.failover.json`: what a failover to timeline `TTTTTTTT` left orphaned on the old
    /// timeline (written by `walrelay receive`).
    pub failover_reports: BTreeMap<TimelineId, String>,
    pub has_checksum_file: bool,
}

fn method_rank(m: Option<CompressionMethod>) -> u8 {
    match m {
        None => 0,
        Some(CompressionMethod::Gzip) => 1,
        Some(CompressionMethod::Lz4) => 2,
        Some(CompressionMethod::Zstd) => 3,
    }
}

/// The new timeline of a failover report's name (`TTTTTTTT.failover.json`).
pub fn failover_report_timeline(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".failover.json")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16)
        .ok()
        .filter(|&t| t > 1)
        .map(TimelineId)
}

impl ArchiveDir {
    pub fn new(path: impl Into<PathBuf>, seg_size: WalSegmentSize) -> Self {
        ArchiveDir {
            path: path.into(),
            seg_size,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn seg_size(&self) -> WalSegmentSize {
        self.seg_size
    }

    /// Lists the directory (see the module docs for what "complete" and "damaged" mean). Compressed
    /// complete files are sized cheaply where the format allows and decompressed otherwise, as
    /// pg_receivewal does for `.lz4`.
    pub fn scan(&self) -> Result<Inventory> {
        let dir = &self.path;
        if !dir.is_dir() {
            return Err(ArchiveError::NotADirectory { path: dir.clone() });
        }
        let mut inv = Inventory::empty(dir.clone(), self.seg_size);
        let entries = fs::read_dir(dir).map_err(|e| ArchiveError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io("list", dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                inv.unrecognized
                    .push(entry.file_name().to_string_lossy().into_owned());
                continue;
            };
            let path = entry.path();
            // Follow symlinks: an archive may link to files kept elsewhere.
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // Removed between listing and stat (a concurrent writer renaming a .tmp): skip.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ArchiveError::io("stat", &path, e)),
            };
            if !meta.is_file() {
                inv.unrecognized.push(name);
                continue;
            }
            inv.add(name, meta.len(), meta.modified().ok(), || {
                uncompressed_size(&path)
            });
        }
        inv.sort();
        Ok(inv)
    }
}

impl Inventory {
    /// An inventory with nothing in it yet, for files listed elsewhere (object storage): fill it
    /// with [`Inventory::add`], then call [`Inventory::sort`].
    pub fn empty(location: PathBuf, seg_size: WalSegmentSize) -> Inventory {
        Inventory {
            dir: location,
            seg_size,
            segments: BTreeMap::new(),
            histories: BTreeMap::new(),
            backup_histories: Vec::new(),
            temp_files: Vec::new(),
            damaged: Vec::new(),
            unrecognized: Vec::new(),
            failover_reports: BTreeMap::new(),
            has_checksum_file: false,
        }
    }

    /// Classifies one file of `len` bytes (see the module docs for "complete" and "damaged").
    /// `decoded_size` tells how many WAL bytes a complete compressed file holds; it is only called
    /// for those.
    pub fn add(
        &mut self,
        name: String,
        len: u64,
        modified: Option<SystemTime>,
        decoded_size: impl FnOnce() -> Result<u64>,
    ) {
        let seg = self.seg_size.as_u64();
        match WalFileName::parse(&name) {
            Some(
                ref n @ WalFileName::Segment {
                    compression,
                    partial,
                    ..
                },
            ) => {
                let Some(id) = n.segment_id(self.seg_size) else {
                    self.damaged.push(DamagedFile {
                        reason: format!(
                            "not a valid segment name for wal_segment_size {}: is the segment size right?",
                            self.seg_size
                        ),
                        name,
                    });
                    return;
                };
                let (state, wal_bytes) = match (compression, partial) {
                    (None, false) if len == seg => (SegmentFileState::Complete, Some(len)),
                    (None, false) => {
                        self.damaged.push(DamagedFile {
                            reason: format!("{len} bytes, but a complete segment has {seg}"),
                            name,
                        });
                        return;
                    }
                    (Some(_), false) => match decoded_size() {
                        Ok(n) if n == seg => (SegmentFileState::CompleteCompressed, Some(n)),
                        Ok(n) => {
                            self.damaged.push(DamagedFile {
                                reason: format!(
                                    "decompresses to {n} bytes, but a complete segment has {seg}"
                                ),
                                name,
                            });
                            return;
                        }
                        Err(e) => {
                            self.damaged.push(DamagedFile {
                                reason: e.to_string(),
                                name,
                            });
                            return;
                        }
                    },
                    (None, true) if len <= seg => (SegmentFileState::Partial, Some(len)),
                    (None, true) => {
                        self.damaged.push(DamagedFile {
                            reason: format!("{len} bytes, more than a segment ({seg})"),
                            name,
                        });
                        return;
                    }
                    (Some(_), true) => (SegmentFileState::CompressedPartial, None),
                };
                self.segments.entry(id).or_default().push(SegmentFile {
                    name,
                    id,
                    state,
                    compression,
                    file_size: len,
                    wal_bytes,
                    modified,
                });
            }
            Some(WalFileName::History(tli)) => {
                self.histories.insert(tli, name);
            }
            Some(WalFileName::BackupHistory { .. }) => self.backup_histories.push(name),
            None if name == CHECKSUM_FILE_NAME => self.has_checksum_file = true,
            // A relay's slot list and upstream record: walrelay's own, not stray files.
            None if name == crate::slots::SLOTS_FILE_NAME
                || name == crate::relay_upstream::UPSTREAM_FILE_NAME => {}
            None => match failover_report_timeline(&name) {
                Some(tli) => {
                    self.failover_reports.insert(tli, name);
                }
                None if name.ends_with(".tmp") => self.temp_files.push(name),
                None => self.unrecognized.push(name),
            },
        }
    }

    /// Puts every list in its order: a segment's files best first (complete files ranked by
    /// format, then partials newest first), the other lists by name.
    pub fn sort(&mut self) {
        for files in self.segments.values_mut() {
            files.sort_by(|a, b| {
                let (pa, pb) = (!a.state.is_complete(), !b.state.is_complete());
                pa.cmp(&pb).then_with(|| {
                    if pa {
                        b.modified.cmp(&a.modified).then(a.state.cmp(&b.state))
                    } else {
                        method_rank(a.compression).cmp(&method_rank(b.compression))
                    }
                })
            });
        }
        self.backup_histories.sort();
        self.temp_files.sort();
        self.damaged.sort_by(|a, b| a.name.cmp(&b.name));
        self.unrecognized.sort();
    }

    /// Timelines that have at least one segment file.
    pub fn timelines(&self) -> BTreeSet<TimelineId> {
        self.segments.keys().map(|id| id.timeline).collect()
    }

    /// The segments of one timeline, in order.
    pub fn segments_of(
        &self,
        tli: TimelineId,
    ) -> impl Iterator<Item = (&SegmentId, &Vec<SegmentFile>)> {
        self.segments
            .range(SegmentId::new(tli, XLogSegNo(0))..=SegmentId::new(tli, XLogSegNo(u64::MAX)))
    }

    /// The best file for a segment (what restore would use first).
    pub fn preferred(&self, id: SegmentId) -> Option<&SegmentFile> {
        self.segments.get(&id).and_then(|v| v.first())
    }

    /// The lowest segment number on any timeline: where the archive starts.
    pub fn first_segno(&self) -> Option<XLogSegNo> {
        self.segments.keys().map(|id| id.segno).min()
    }

    /// Where pg_receivewal would resume streaming into this directory (`FindStreamingStart`): the
    /// highest segment number, then the highest timeline, a complete file beating a partial one;
    /// after a complete segment at the next segment's start, after a partial one at its own start.
    /// [`Inventory::streaming_start`] on the newest timeline that has segments: after a failover
    /// that left WAL of the old timeline past the switch point (orphaned, at higher segment
    /// numbers), the new timeline is where the stream goes on — not the old one's last file.
    pub fn streaming_start_on_newest_timeline(&self) -> Option<(TimelineId, Lsn)> {
        let (id, complete) = self
            .segments
            .iter()
            .map(|(id, files)| (*id, files.iter().any(|f| f.state.is_complete())))
            .max_by_key(|(id, complete)| (id.timeline, id.segno, *complete))?;
        let segno = if complete { id.segno.next() } else { id.segno };
        Some((id.timeline, self.seg_size.segment_start(segno)))
    }

    pub fn streaming_start(&self) -> Option<(TimelineId, Lsn)> {
        let (id, complete) = self
            .segments
            .iter()
            .map(|(id, files)| (*id, files.iter().any(|f| f.state.is_complete())))
            .max_by_key(|(id, complete)| (id.segno, id.timeline, *complete))?;
        let segno = if complete { id.segno.next() } else { id.segno };
        Some((id.timeline, self.seg_size.segment_start(segno)))
    }
}

/// How many segment files [`infer_segment_size`] tries before giving up.
const SEGMENT_SIZE_PROBES: usize = 16;

/// The `wal_segment_size` of the WAL in the archive `dir`, read from the long page header
/// (`xlp_seg_size`) that starts every segment: from the first of its segment files (by name, any
/// compression, partial or not) whose header is readable and valid. `Ok(None)` when the directory
/// holds no segment files at all (the size does not matter then); an error when it holds some but
/// none of the first few has a usable header (pass the size explicitly then).
pub fn infer_segment_size(dir: &Path) -> Result<Option<WalSegmentSize>> {
    if !dir.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ArchiveError::io("list", dir, e))? {
        let entry = entry.map_err(|e| ArchiveError::io("list", dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            if matches!(WalFileName::parse(&name), Some(WalFileName::Segment { .. })) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    // Complete files before partials: a pre-padded partial may hold no header yet.
    names.sort_by_key(|n| (n.ends_with(".partial"), n.clone()));
    let mut last_reason = String::new();
    for name in names.iter().take(SEGMENT_SIZE_PROBES) {
        let path = dir.join(name);
        let mut head = Vec::with_capacity(LONG_PAGE_HEADER_SIZE);
        let read = open_segment(&path).and_then(|r| {
            r.take(LONG_PAGE_HEADER_SIZE as u64)
                .read_to_end(&mut head)
                .map_err(|e| ArchiveError::io("read", &path, e))
        });
        if let Err(e) = read {
            last_reason = e.to_string();
            continue;
        }
        // Magic, flags, a long header with a valid segment and page size: PostgreSQL WAL.
        match walrelay_wal::inspect_segment_start(&head)
            .map(|h| WalSegmentSize::new(u64::from(h.segment_size)))
        {
            Ok(Ok(size)) => return Ok(Some(size)),
            Ok(Err(e)) => last_reason = format!("{name}: {e}"),
            Err(e) => last_reason = format!("{name}: {e}"),
        }
    }
    Err(ArchiveError::UnknownSegmentSize {
        path: dir.to_path_buf(),
        reason: format!(
            "none of its first {} segment files starts with a valid WAL page header (last: {last_reason})",
            names.len().min(SEGMENT_SIZE_PROBES)
        ),
    })
}

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// `.tmp` files of WAL names (and of the checksum list) that were removed.
    pub removed_temp_files: Vec<String>,
    /// Other `.tmp` files: not ours to remove.
    pub kept_temp_files: Vec<String>,
    /// Plain segments removed because an identical compressed copy exists (a compression that a
    /// crash interrupted after the rename).
    pub finished_compressions: Vec<String>,
    /// Segments with a plain and a compressed copy that differ: both kept, restore uses the plain one.
    pub conflicts: Vec<String>,
}

/// Removes crash leftovers: temp files of WAL names and the checksum list, and plain segments whose
/// compression finished all but the final unlink. Run it when no writer (receive, compression) is
/// active in the directory — at receive's start-up — since a temp file may be in use otherwise.
pub fn cleanup(dir: &Path, seg_size: WalSegmentSize) -> Result<CleanupReport> {
    let inv = ArchiveDir::new(dir, seg_size).scan()?;
    let mut report = CleanupReport::default();
    for name in &inv.temp_files {
        let stem = name.strip_suffix(".tmp").unwrap_or(name);
        if WalFileName::parse(stem).is_some() || stem == CHECKSUM_FILE_NAME {
            let p = dir.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArchiveError::io("remove", &p, e)),
            }
            tracing::info!(file = %name, "removed temp file left by a crash");
            report.removed_temp_files.push(name.clone());
        } else {
            report.kept_temp_files.push(name.clone());
        }
    }
    let seg = seg_size.as_u64();
    for files in inv.segments.values() {
        let Some(plain) = files.iter().find(|f| f.state == SegmentFileState::Complete) else {
            continue;
        };
        let compressed: Vec<_> = files
            .iter()
            .filter(|f| f.state == SegmentFileState::CompleteCompressed)
            .collect();
        if compressed.is_empty() {
            continue;
        }
        let plain_path = dir.join(&plain.name);
        let (plain_bytes, _) = read_content(&plain_path, seg, false)?;
        let mut identical = false;
        for c in &compressed {
            match read_content(&dir.join(&c.name), seg, false) {
                Ok((bytes, _)) if bytes == plain_bytes => identical = true,
                Ok(_) => {}
                Err(e) if e.is_corruption() => {
                    tracing::warn!(file = %c.name, error = %e, "compressed copy is damaged")
                }
                Err(e) => return Err(e),
            }
        }
        if identical {
            fs::remove_file(&plain_path).map_err(|e| ArchiveError::io("remove", &plain_path, e))?;
            tracing::info!(file = %plain.name, "finished a compression interrupted by a crash");
            report.finished_compressions.push(plain.name.clone());
        } else {
            tracing::warn!(file = %plain.name, "plain and compressed copies differ; keeping both");
            report.conflicts.push(plain.name.clone());
        }
    }
    if !report.removed_temp_files.is_empty() || !report.finished_compressions.is_empty() {
        durable::fsync_dir(dir)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::compress_completed_segment;
    use crate::testutil::fake_segment;
    use crate::Compression;
    use walrelay_durable::Owner;

    const MB: usize = 1024 * 1024;

    fn seg1mb() -> WalSegmentSize {
        WalSegmentSize::new(MB as u64).unwrap()
    }

    fn name(tli: u32, segno: u64) -> String {
        SegmentId::new(TimelineId(tli), XLogSegNo(segno)).file_name(seg1mb())
    }

    #[test]
    fn scan_classifies_everything() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join(name(1, 1)), fake_segment(MB, 1)).unwrap();
        fs::write(p.join(name(1, 2)), fake_segment(MB, 2)).unwrap();
        compress_completed_segment(
            p,
            &name(1, 2),
            Compression::Gzip { level: 1 },
            Owner::current(),
        )
        .unwrap();
        fs::write(p.join(name(1, 3)), fake_segment(MB, 3)).unwrap();
        compress_completed_segment(p, &name(1, 3), Compression::Lz4, Owner::current()).unwrap();
        fs::write(
            p.join(format!("{}.partial", name(1, 4))),
            fake_segment(MB, 4),
        )
        .unwrap();
        fs::write(p.join(name(1, 5)), vec![0u8; 1000]).unwrap(); // wrong size
        fs::write(
            p.join(format!("{}.gz", name(1, 6))),
            b"not gzip at all, sorry",
        )
        .unwrap();
        fs::write(p.join(format!("{}.gz.partial", name(2, 4))), b"x").unwrap();
        fs::write(p.join("00000002.history"), "1\t0/4000000\tno reason\n").unwrap();
        fs::write(p.join(format!("{}.00000028.backup", name(1, 1))), "x").unwrap();
        fs::write(p.join(format!("{}.gz.tmp", name(1, 7))), "x").unwrap();
        fs::write(p.join("README"), "hello").unwrap();
        fs::write(p.join(CHECKSUM_FILE_NAME), "").unwrap();
        // A name whose "seg" half is out of range for 1 MB segments (4096 per xlogid).
        fs::write(p.join("000000010000000000001000"), vec![0u8; MB]).unwrap();
        fs::create_dir(p.join("archive_status")).unwrap();

        let inv = ArchiveDir::new(p, seg1mb()).scan().unwrap();
        let states: Vec<_> = inv
            .segments
            .values()
            .map(|v| (v[0].name.clone(), v[0].state))
            .collect();
        assert_eq!(
            states,
            vec![
                (name(1, 1), SegmentFileState::Complete),
                (
                    format!("{}.gz", name(1, 2)),
                    SegmentFileState::CompleteCompressed
                ),
                (
                    format!("{}.lz4", name(1, 3)),
                    SegmentFileState::CompleteCompressed
                ),
                (format!("{}.partial", name(1, 4)), SegmentFileState::Partial),
                (
                    format!("{}.gz.partial", name(2, 4)),
                    SegmentFileState::CompressedPartial
                ),
            ]
        );
        let damaged: Vec<_> = inv.damaged.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            damaged,
            vec![
                name(1, 5).as_str(),
                format!("{}.gz", name(1, 6)).as_str(),
                "000000010000000000001000",
            ]
        );
        assert!(
            inv.damaged[0].reason.contains("1000 bytes"),
            "{:?}",
            inv.damaged
        );
        assert_eq!(inv.histories.len(), 1);
        assert_eq!(inv.backup_histories.len(), 1);
        assert_eq!(inv.temp_files, vec![format!("{}.gz.tmp", name(1, 7))]);
        assert_eq!(inv.unrecognized, vec!["README", "archive_status"]);
        assert!(inv.has_checksum_file);
        assert_eq!(
            inv.timelines().into_iter().collect::<Vec<_>>(),
            vec![TimelineId(1), TimelineId(2)]
        );
        assert_eq!(inv.segments_of(TimelineId(1)).count(), 4);
        assert_eq!(inv.first_segno(), Some(XLogSegNo(1)));
        // Highest segno 4: timeline 2's compressed partial beats timeline 1's (higher timeline).
        assert_eq!(
            inv.streaming_start(),
            Some((TimelineId(2), Lsn(4 * MB as u64)))
        );
        assert_eq!(
            inv.streaming_start_on_newest_timeline(),
            Some((TimelineId(2), Lsn(4 * MB as u64)))
        );
    }

    /// After a failover that left the old timeline's WAL past the switch point (orphaned, at
    /// higher segment numbers): pg_receivewal's rule picks the old timeline's last file; the
    /// newest timeline's is where a relay goes on.
    #[test]
    fn the_newest_timeline_wins_over_orphaned_wal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let data = fake_segment(MB, 1);
        for segno in 4..=5 {
            fs::write(p.join(name(1, segno)), &data).unwrap();
        }
        fs::write(p.join(format!("{}.partial", name(1, 6))), &data).unwrap();
        fs::write(p.join("00000002.history"), "1\t0/4000000\tno reason\n").unwrap();
        fs::write(p.join(name(2, 4)), &data).unwrap();
        fs::write(p.join(format!("{}.partial", name(2, 5))), &data).unwrap();
        let inv = ArchiveDir::new(p, seg1mb()).scan().unwrap();
        assert_eq!(
            inv.streaming_start(),
            Some((TimelineId(1), Lsn(6 * MB as u64)))
        );
        assert_eq!(
            inv.streaming_start_on_newest_timeline(),
            Some((TimelineId(2), Lsn(5 * MB as u64)))
        );
    }

    #[test]
    fn plain_beats_compressed_and_complete_beats_partial() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let data = fake_segment(MB, 1);
        fs::write(p.join(name(1, 1)), &data).unwrap();
        compress_completed_segment(
            p,
            &name(1, 1),
            Compression::Zstd { level: 1 },
            Owner::current(),
        )
        .unwrap();
        fs::write(p.join(name(1, 1)), &data).unwrap(); // crash leftover: both present
        fs::write(p.join(format!("{}.partial", name(1, 1))), &data[..10]).unwrap();
        let inv = ArchiveDir::new(p, seg1mb()).scan().unwrap();
        let files = &inv.segments[&SegmentId::new(TimelineId(1), XLogSegNo(1))];
        let names: Vec<_> = files.iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            names,
            vec![
                name(1, 1),
                format!("{}.zst", name(1, 1)),
                format!("{}.partial", name(1, 1))
            ]
        );
        assert_eq!(
            inv.streaming_start(),
            Some((TimelineId(1), Lsn(2 * MB as u64)))
        );
    }

    #[test]
    fn segment_size_is_read_from_the_first_long_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        assert_eq!(infer_segment_size(p).unwrap(), None, "no segments: no size");
        assert!(matches!(
            infer_segment_size(&p.join("nope")).unwrap_err(),
            ArchiveError::NotADirectory { .. }
        ));
        // A pre-padded partial holds no header; junk has none either.
        fs::write(p.join(format!("{}.partial", name(1, 3))), vec![0u8; 4096]).unwrap();
        fs::write(p.join(name(1, 1)), b"not WAL").unwrap();
        fs::write(p.join("00000002.history"), "1\t0/3000000\tx\n").unwrap();
        let e = infer_segment_size(p).unwrap_err();
        assert!(matches!(e, ArchiveError::UnknownSegmentSize { .. }), "{e}");
        // A compressed segment with a real long header (16 MB segments) answers.
        let mut b = walrelay_wal::synth::WalBuilder::new(
            walrelay_wal::synth::SynthConfig {
                segment_size: WalSegmentSize::new(16 * MB as u64).unwrap(),
                ..Default::default()
            },
            Lsn(2 * 16 * MB as u64),
        );
        b.record(0x0A, 0x10, &[1; 100]);
        let seg16 =
            SegmentId::new(TimelineId(1), XLogSegNo(2)).file_name(WalSegmentSize::default());
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, b.bytes()).unwrap();
        fs::write(p.join(format!("{seg16}.gz")), enc.finish().unwrap()).unwrap();
        assert_eq!(
            infer_segment_size(p).unwrap(),
            Some(WalSegmentSize::new(16 * MB as u64).unwrap())
        );
    }

    #[test]
    fn empty_and_missing_dirs() {
        let d = tempfile::tempdir().unwrap();
        let inv = ArchiveDir::new(d.path(), seg1mb()).scan().unwrap();
        assert!(inv.segments.is_empty());
        assert_eq!(inv.streaming_start(), None);
        assert_eq!(inv.first_segno(), None);
        let e = ArchiveDir::new(d.path().join("nope"), seg1mb())
            .scan()
            .unwrap_err();
        assert!(matches!(e, ArchiveError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn cleanup_removes_crash_leftovers_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let data = fake_segment(MB, 1);
        // Interrupted compression: plain + identical .gz.
        fs::write(p.join(name(1, 1)), &data).unwrap();
        compress_completed_segment(
            p,
            &name(1, 1),
            Compression::Gzip { level: 1 },
            Owner::current(),
        )
        .unwrap();
        fs::write(p.join(name(1, 1)), &data).unwrap();
        // Plain + a different .lz4: keep both.
        fs::write(p.join(name(1, 2)), fake_segment(MB, 2)).unwrap();
        compress_completed_segment(p, &name(1, 2), Compression::Lz4, Owner::current()).unwrap();
        fs::write(p.join(name(1, 2)), fake_segment(MB, 22)).unwrap();
        // Temp files: ours and somebody else's.
        fs::write(p.join(format!("{}.gz.tmp", name(1, 3))), "x").unwrap();
        fs::write(p.join(format!("{CHECKSUM_FILE_NAME}.tmp")), "x").unwrap();
        fs::write(p.join("notes.tmp"), "mine").unwrap();

        let r = cleanup(p, seg1mb()).unwrap();
        assert_eq!(r.finished_compressions, vec![name(1, 1)]);
        assert_eq!(r.conflicts, vec![name(1, 2)]);
        assert_eq!(
            r.removed_temp_files,
            vec![
                format!("{}.gz.tmp", name(1, 3)),
                format!("{CHECKSUM_FILE_NAME}.tmp")
            ]
        );
        assert_eq!(r.kept_temp_files, vec!["notes.tmp"]);
        assert!(!p.join(name(1, 1)).exists());
        assert!(p.join(format!("{}.gz", name(1, 1))).exists());
        assert!(p.join(name(1, 2)).exists() && p.join(format!("{}.lz4", name(1, 2))).exists());
        assert!(p.join("notes.tmp").exists());
        // Idempotent.
        let again = cleanup(p, seg1mb()).unwrap();
        assert!(again.finished_compressions.is_empty() && again.removed_temp_files.is_empty());
    }
}
