//! Judging what `walrelay receive` wrote, against the server's own files and PostgreSQL's tools.
//!
//! The server's `pg_wal` is the reference: a segment walrelay completed must be byte-identical to the
//! server's copy of it (tests set `wal_keep_size` so the server keeps its copies), and whatever
//! walrelay acknowledged must be in its files, byte-identical to the server's, when it is killed.

use std::fs;
use std::path::{Path, PathBuf};

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalFileName, WalSegmentSize, XLogSegNo};
use walrelay_wal::{StreamState, ValidatorConfig, WalValidator};

/// One segment file in an archive directory (plain or `.partial`, not compressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub name: String,
    pub segment: SegmentId,
    pub partial: bool,
    pub len: u64,
}

impl SegmentFile {
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.name)
    }
}

/// The segment files of `dir` (uncompressed, complete or `.partial`), by timeline then segment.
pub fn segment_files(dir: &Path, seg: WalSegmentSize) -> Vec<SegmentFile> {
    let mut out: Vec<SegmentFile> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry"))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let parsed = WalFileName::parse(&name)?;
            let WalFileName::Segment {
                compression: None,
                partial,
                ..
            } = parsed
            else {
                return None;
            };
            let segment = parsed.segment_id(seg)?;
            let len = e.metadata().ok()?.len();
            Some(SegmentFile {
                name,
                segment,
                partial,
                len,
            })
        })
        .collect();
    out.sort_by_key(|f| (f.segment.timeline, f.segment.segno, f.partial));
    out
}

/// Complete segments (final names) of `dir`.
pub fn complete_segments(dir: &Path, seg: WalSegmentSize) -> Vec<SegmentFile> {
    segment_files(dir, seg)
        .into_iter()
        .filter(|f| !f.partial)
        .collect()
}

/// A one-line listing of `dir` for failure messages.
pub fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("{}({len})", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(" ")
}

/// Whether the complete segment `name` exists in `dir`.
pub fn has_complete(dir: &Path, segment: SegmentId, seg: WalSegmentSize) -> bool {
    let p = dir.join(segment.file_name(seg));
    fs::metadata(&p).is_ok_and(|m| m.len() == seg.as_u64())
}

/// Asserts each complete segment of `archive` is byte-identical to the file of the same name in
/// `server_pg_wal` (and exactly one segment long). Returns how many were compared.
pub fn assert_identical_to_server(
    archive: &Path,
    server_pg_wal: &Path,
    seg: WalSegmentSize,
) -> usize {
    assert_identical_on_timeline(archive, server_pg_wal, seg, None)
}

/// [`assert_identical_to_server`] for the segments of one timeline only (`None`: all).
pub fn assert_identical_on_timeline(
    archive: &Path,
    server_pg_wal: &Path,
    seg: WalSegmentSize,
    timeline: Option<TimelineId>,
) -> usize {
    let complete: Vec<SegmentFile> = complete_segments(archive, seg)
        .into_iter()
        .filter(|f| timeline.is_none_or(|t| f.segment.timeline == t))
        .collect();
    for f in &complete {
        assert_eq!(
            f.len,
            seg.as_u64(),
            "{} has {} bytes, not one segment",
            f.name,
            f.len
        );
        let ours = fs::read(f.path(archive)).expect("read archived segment");
        let theirs_path = server_pg_wal.join(&f.name);
        let theirs = fs::read(&theirs_path).unwrap_or_else(|e| {
            panic!(
                "the server no longer has {} to compare with ({e}); raise wal_keep_size. pg_wal: {}",
                f.name,
                listing(server_pg_wal)
            )
        });
        if let Some(at) = first_difference(&ours, &theirs) {
            panic!(
                "{} differs from the server's copy at byte {at} (LSN {})",
                f.name,
                Lsn(f.segment.start_lsn(seg).0 + at as u64)
            );
        }
    }
    complete.len()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    (0..n)
        .find(|&i| a[i] != b[i])
        .or((a.len() != b.len()).then_some(n))
}

/// Asserts the complete segments of one timeline in `archive` have no hole between the first and the
/// last, and returns their range.
pub fn assert_contiguous(
    archive: &Path,
    timeline: TimelineId,
    seg: WalSegmentSize,
) -> (XLogSegNo, XLogSegNo) {
    let segnos: Vec<u64> = complete_segments(archive, seg)
        .iter()
        .filter(|f| f.segment.timeline == timeline)
        .map(|f| f.segment.segno.0)
        .collect();
    assert!(
        !segnos.is_empty(),
        "no complete segment of timeline {timeline} in {}: {}",
        archive.display(),
        listing(archive)
    );
    for w in segnos.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap in the archive between segments {} and {} of timeline {timeline}: {}",
            w[0],
            w[1],
            listing(archive)
        );
    }
    (
        XLogSegNo(segnos[0]),
        XLogSegNo(*segnos.last().expect("non-empty")),
    )
}

/// The file of `dir` holding `segment`: the complete one, else the `.partial`.
pub fn file_of(dir: &Path, segment: SegmentId, seg: WalSegmentSize) -> Option<PathBuf> {
    let name = segment.file_name(seg);
    [name.clone(), format!("{name}.partial")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Where valid WAL ends in the segment file at `path` (holding `segment`): page headers and record
/// CRCs checked by walrelay-wal's streaming validator, up to the first byte that is not valid WAL;
/// and, when the file ends inside a record, where that record starts.
pub fn valid_wal_end(path: &Path, segment: SegmentId, seg: WalSegmentSize) -> (Lsn, Option<Lsn>) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = segment.start_lsn(seg);
    let mut cfg = ValidatorConfig::new(seg, start);
    cfg.timeline = Some(segment.timeline);
    let mut v = WalValidator::new(cfg).expect("validator");
    // An error marks the end of valid WAL (zero padding, or bytes never written); what came before
    // is what validated_lsn reports.
    let fed = v.feed(start, &bytes);
    let open_record = match (fed, v.state()) {
        (Ok(()), StreamState::InRecord { start }) => Some(start),
        _ => None,
    };
    (v.validated_lsn(), open_record)
}

/// Asserts that everything before `upto` (on `timeline`) is on disk in `archive`, byte-identical to
/// the server's copy, and valid WAL: the files of every segment below `upto` and the prefix of the
/// segment holding it. `what` names the position in failure messages.
pub fn assert_durable_prefix(
    archive: &Path,
    server_pg_wal: &Path,
    timeline: TimelineId,
    upto: Lsn,
    seg: WalSegmentSize,
    what: &str,
) {
    // Like pg_receivewal, walrelay reports its start position (a segment boundary) as flushed before
    // anything arrived: that WAL is not needed, and the report only keeps the slot where it was.
    let first = segment_files(archive, seg)
        .into_iter()
        .find(|f| f.segment.timeline == timeline);
    if upto.0 == 0 || first.is_none_or(|f| upto <= f.segment.start_lsn(seg)) {
        assert_eq!(
            seg.offset(upto),
            0,
            "{what} is {upto}, before any WAL received: {}",
            listing(archive)
        );
        return;
    }
    let last = SegmentId::new(timeline, seg.segno(Lsn(upto.0 - 1)));
    let path = file_of(archive, last, seg).unwrap_or_else(|| {
        panic!(
            "{what} is {upto}, but {} has no file for segment {}: {}",
            archive.display(),
            last.file_name(seg),
            listing(archive)
        )
    });
    let needed = (upto.0 - last.start_lsn(seg).0) as usize;
    let ours = fs::read(&path).expect("read our segment file");
    let server_name = last.file_name(seg);
    let server_path = [server_name.clone(), format!("{server_name}.partial")]
        .into_iter()
        .map(|n| server_pg_wal.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("the server has no {server_name} to compare with"));
    let theirs = fs::read(&server_path).expect("read the server's segment");
    assert!(
        ours.len() >= needed,
        "{what} is {upto}, but {} has only {} bytes",
        path.display(),
        ours.len()
    );
    if let Some(at) = first_difference(&ours[..needed], &theirs[..needed.min(theirs.len())]) {
        panic!(
            "{what} is {upto}, but {} differs from the server's {} at LSN {}: WAL was acknowledged \
             before it was on disk",
            path.display(),
            server_path.display(),
            Lsn(last.start_lsn(seg).0 + at as u64)
        );
    }
    // The validator's position only rests on record boundaries (and the page headers and padding
    // between records), like the position walrelay may acknowledge — except that walrelay may
    // acknowledge the durable part of a record that runs into the next segment once it saw the
    // whole record pass its CRC. A file alone cannot prove that record, so there the byte comparison
    // above is the check.
    let (valid, open_record) = valid_wal_end(&path, last, seg);
    assert!(
        valid >= upto || open_record.is_some_and(|r| r < upto && valid == r),
        "{what} is {upto}, but valid WAL in {} ends at {valid}",
        path.display()
    );
}

/// pg_waldump over `[start, end)` of `dir`: every record decodes, the chain has no gap. Returns the
/// number of records.
pub fn assert_waldump(dir: &Path, timeline: Option<u32>, start: Lsn, end: Lsn) -> usize {
    let dump = match timeline {
        Some(t) => walrelay_testkit::oracle::pg_waldump_on_timeline(dir, t, start, end),
        None => walrelay_testkit::pg_waldump(dir, start, end),
    }
    .unwrap_or_else(|e| {
        panic!(
            "pg_waldump -p {} -s {start} -e {end} failed: {e}\nfiles: {}",
            dir.display(),
            listing(dir)
        )
    });
    dump.check_chain().expect("record chain");
    assert!(
        !dump.records.is_empty(),
        "pg_waldump found no record between {start} and {end}"
    );
    dump.records.len()
}

/// A directory showing the WAL as recovery on `timeline` reads it: for each segment number, the
/// complete file of the highest timeline not above `timeline` — all named for `timeline`, because
/// pg_waldump does not follow timeline history (`-t` picks one file-name prefix). Page headers inside
/// keep their own `xlp_tli`, which pg_waldump checks never decreases.
pub fn timeline_view(archive: &Path, timeline: TimelineId, seg: WalSegmentSize, into: &Path) {
    fs::create_dir_all(into).expect("create timeline view");
    let mut chosen: std::collections::BTreeMap<u64, SegmentFile> = Default::default();
    for f in complete_segments(archive, seg) {
        if f.segment.timeline <= timeline {
            chosen.insert(f.segment.segno.0, f); // sorted by timeline: the highest wins
        }
    }
    for (segno, f) in chosen {
        let name = SegmentId::new(timeline, XLogSegNo(segno)).file_name(seg);
        fs::copy(f.path(archive), into.join(name)).expect("copy segment into the view");
    }
}

/// Waits until `dir` holds the complete segment of `timeline` holding the byte before `lsn` (while
/// `w` keeps running); returns that segment.
pub fn wait_complete(
    dir: &Path,
    lsn: Lsn,
    timeline: u32,
    seg: WalSegmentSize,
    w: &mut super::walrelay_cmd::Walrelay,
) -> SegmentId {
    let segment = SegmentId::new(TimelineId(timeline), seg.segno(Lsn(lsn.0 - 1)));
    super::poll::wait_until(
        &format!(
            "{} to be complete in {}",
            segment.file_name(seg),
            dir.display()
        ),
        || {
            w.assert_running();
            has_complete(dir, segment, seg)
        },
        || format!("files: {}", listing(dir)),
    );
    segment
}
