//! Where to resume streaming: [`find_streaming_start`] looks at what is really on disk.
//!
//! # Archive layout (pg_receivewal's rules, `FindStreamingStart` in pg_receivewal.c)
//!
//! Every name that is a segment, bare or with `.gz`/`.lz4`/`.zst` and/or `.partial`, counts; a bare file
//! is complete only at full size, a `.gz` only if its trailer's ISIZE says full size, `.lz4`/`.zst` if
//! the size closure says so (or, when it cannot tell, because a compressed file only gets its final
//! name once complete). The highest segment wins, then the highest timeline, then complete over
//! partial. Complete → start at the next segment; partial → at its start. pg_receivewal ignores a
//! result of segment 0; walrelay does not (segment 0 never exists on a real server anyway).
//!
//! Extended, so a damaged or foreign directory is refused instead of silently continued:
//! * a complete uncompressed file must start with a long page header for its own address;
//! * a `.partial` must be empty, full-size, or shorter but consistent with its content (WAL pages for
//!   its own addresses followed only by zeros — what a crash while preallocating leaves);
//! * WAL of another system identifier or `wal_segment_size` anywhere in the directory is an error that
//!   names the file and both values.
//!
//! # pg_wal layout (a standby's data directory)
//!
//! Names and sizes prove nothing there: the standby's checkpointer recycles old segments by renaming
//! them to *future* names, so full-size files with valid names hold stale WAL. A file counts as
//! received only if its first page's long header has `xlp_pageaddr` equal to the segment's own start
//! (a recycled file still carries its old address), the expected system identifier and segment size,
//! and a timeline not above the file's (the first segment of a new timeline begins with its parent's
//! pages, so `xlp_tli` may be lower). It is complete if its last page is addressed to itself too.
//!
//! The scan goes upward from the standby's replay/checkpoint position ([`ScanFrom`]) — or, without one,
//! from the oldest segment present — taking at each segment the received file of the highest timeline
//! not below the previous one, and stops at the first segment that is not genuinely complete. The last
//! complete segment is re-checked page by page (its last page may have reached the disk while earlier
//! ones did not, if it was never fsynced), and for a partial segment the end of valid WAL is found from
//! the page headers. Like pg_receivewal, streaming always restarts at a segment boundary, even inside
//! a partial segment: the server resends the whole segment and the writer rewrites it in place, which
//! needs no trust in anything after the segment start.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{debug, warn};
use walrelay_protocol::segment::Compression;
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalFileName, WalSegmentSize, XLogSegNo};
use walrelay_wal::page::{LONG_PAGE_HEADER_SIZE, SHORT_PAGE_HEADER_SIZE, XLP_LONG_HEADER};
use walrelay_wal::WalError;

use crate::page_header::{LongPageHeader, PageHeaderError, PageHeaderReader, WalPageHeaderReader};

/// Which directory layout is being resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// pg_receivewal's archive directory (`.partial` for in-progress segments).
    Archive,
    /// A standby's `pg_wal`.
    PgWal,
}

/// The position pg_wal discovery scans upward from: the standby's replay or last checkpoint's redo
/// position, and its timeline (`pg_controldata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanFrom {
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

/// Inputs of [`find_streaming_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartOptions {
    pub layout: Layout,
    pub wal_segment_size: WalSegmentSize,
    /// The server's system identifier (`IDENTIFY_SYSTEM`); WAL of any other cluster is refused.
    pub system_identifier: Option<u64>,
    /// pg_wal layout only: where to start scanning (default: the oldest segment present).
    pub scan_from: Option<ScanFrom>,
}

impl StartOptions {
    pub fn archive(wal_segment_size: WalSegmentSize) -> Self {
        StartOptions {
            layout: Layout::Archive,
            wal_segment_size,
            system_identifier: None,
            scan_from: None,
        }
    }

    pub fn pg_wal(wal_segment_size: WalSegmentSize) -> Self {
        StartOptions {
            layout: Layout::PgWal,
            ..Self::archive(wal_segment_size)
        }
    }

    pub fn with_system_identifier(mut self, system_identifier: u64) -> Self {
        self.system_identifier = Some(system_identifier);
        self
    }

    pub fn with_scan_from(mut self, lsn: Lsn, timeline: TimelineId) -> Self {
        self.scan_from = Some(ScanFrom { lsn, timeline });
        self
    }
}

/// One regular file of the directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryInfo {
    pub name: String,
    pub len: u64,
}

/// Read access to the files of the listing, so the decision logic stays testable without a disk.
pub trait WalDirReader {
    /// Reads up to `buf.len()` bytes of file `name` at `offset`; fewer at end of file.
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Uncompressed size of a `.lz4`/`.zst` segment if known (the archive crate can tell); `Ok(None)`
    /// when it cannot, and the file is then trusted by its final name.
    fn uncompressed_size(
        &mut self,
        name: &str,
        compression: Compression,
    ) -> io::Result<Option<u64>> {
        let _ = (name, compression);
        Ok(None)
    }
}

/// Where to start and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    /// Always a segment boundary.
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub reason: StartReason,
}

/// Why [`StreamStart`] says what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartReason {
    /// The highest complete segment; streaming continues with the next one.
    AfterComplete { file: String },
    /// A partially received segment, restarted from its beginning. `valid_until` is where its pages
    /// stop being valid WAL for their own addresses (`None` when the content was not inspected, e.g.
    /// compressed); equal to the segment start if nothing was received yet.
    Partial {
        file: String,
        valid_until: Option<Lsn>,
    },
    /// pg_wal layout: nothing received at or after the scan position, so streaming starts there.
    NothingReceived { from: Lsn },
}

impl fmt::Display for StartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartReason::AfterComplete { file } => write!(f, "resuming after {file} (complete)"),
            StartReason::Partial {
                file,
                valid_until: Some(lsn),
            } => write!(
                f,
                "resuming partial {file} from its start (valid WAL pages up to {lsn})"
            ),
            StartReason::Partial {
                file,
                valid_until: None,
            } => write!(f, "resuming partial {file} from its start"),
            StartReason::NothingReceived { from } => {
                write!(f, "no WAL received at or after {from} yet")
            }
        }
    }
}

impl fmt::Display for StreamStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on timeline {}: {}",
            self.lsn, self.timeline, self.reason
        )
    }
}

/// Why the directory cannot be resumed.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("could not read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file} holds WAL of another cluster (system identifier {found}, the server's is {expected}); use a separate directory for each cluster")]
    SystemIdentifierMismatch {
        file: String,
        found: u64,
        expected: u64,
    },
    #[error("{file} was written with wal_segment_size {found} but {expected} is expected; use a separate directory for each segment size")]
    SegmentSizeMismatch {
        file: String,
        found: u32,
        expected: u32,
    },
    #[error("{file} has {size} bytes, neither 0 nor the segment size {segment_size}, and its content is not a cleanly interrupted segment; move it away and restart")]
    PartialSizeInconsistent {
        file: String,
        size: u64,
        segment_size: u32,
    },
    #[error("{file} is not valid WAL for its name ({reason}); move it away and restart")]
    CorruptSegment { file: String, reason: String },
    /// A file named as a complete segment whose size (or, compressed, whose recorded
    /// uncompressed size) is not a segment's: cut short or damaged. Skipping it as
    /// pg_receivewal does either fails later on that name or, with newer WAL beside it, leaves a
    /// gap in the archive for good.
    #[error("{file} is named as a complete segment but holds {size} of WAL, not the segment size {segment_size}: it was cut short or damaged; move it out of the directory (keep it if you may need it) and restart: the segment is streamed again if the server still has it, otherwise restore it from another copy of the archive")]
    DamagedSegment {
        file: String,
        size: String,
        segment_size: u32,
    },
}

/// Decides where to resume from the directory listing `entries`, reading file content through `dir`,
/// with `walrelay-wal`'s page-header parser ([`WalPageHeaderReader`]). `Ok(None)`: nothing usable on
/// disk (an empty directory) — the caller falls back to the slot's `restart_lsn`, then the server's
/// flush position.
pub fn find_streaming_start(
    entries: &[DirEntryInfo],
    options: &StartOptions,
    dir: &mut dyn WalDirReader,
) -> Result<Option<StreamStart>, StartError> {
    find_streaming_start_with(entries, options, dir, &WalPageHeaderReader)
}

/// [`find_streaming_start`] with a pluggable page-header reader.
pub fn find_streaming_start_with(
    entries: &[DirEntryInfo],
    options: &StartOptions,
    dir: &mut dyn WalDirReader,
    headers: &dyn PageHeaderReader,
) -> Result<Option<StreamStart>, StartError> {
    let mut scanner = Scanner {
        dir,
        headers,
        options,
        long_headers: HashMap::new(),
    };
    let candidates = scanner.candidates(entries);
    scanner.check_identities(&candidates)?;
    let start = match options.layout {
        Layout::Archive => scanner.archive_start(candidates)?,
        Layout::PgWal => scanner.pg_wal_start(candidates)?,
    };
    match &start {
        Some(s) => debug!(start = %s, "found streaming start on disk"),
        None => debug!("no WAL on disk to resume from"),
    }
    Ok(start)
}

/// [`find_streaming_start`] over a real directory.
pub fn find_streaming_start_in_dir(
    dir: &Path,
    options: &StartOptions,
) -> Result<Option<StreamStart>, StartError> {
    let mut reader = StdWalDir::new(dir);
    let entries = reader.list().map_err(|source| StartError::Io {
        file: dir.display().to_string(),
        source,
    })?;
    find_streaming_start(&entries, options, &mut reader)
}

/// A segment file of the listing.
#[derive(Clone, Debug)]
struct Candidate {
    name: String,
    len: u64,
    segment: SegmentId,
    compression: Option<Compression>,
    partial: bool,
}

impl Candidate {
    /// The file is not valid WAL for its name, because of `reason`.
    fn corrupt(&self, reason: impl fmt::Display) -> StartError {
        StartError::CorruptSegment {
            file: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// The file is named as a complete segment, but `size` (of its WAL) is not `seg`'s.
    fn damaged(&self, size: String, seg: WalSegmentSize) -> StartError {
        StartError::DamagedSegment {
            file: self.name.clone(),
            size,
            segment_size: seg.bytes(),
        }
    }

    /// Streaming continues with the segment after this complete one.
    fn resume_after(self, seg: WalSegmentSize) -> StreamStart {
        StreamStart {
            lsn: self.segment.end_lsn(seg),
            timeline: self.segment.timeline,
            reason: StartReason::AfterComplete { file: self.name },
        }
    }

    /// Streaming restarts at the start of this partially received segment.
    fn restart_at_start(self, seg: WalSegmentSize, valid_until: Option<Lsn>) -> StreamStart {
        StreamStart {
            lsn: self.segment.start_lsn(seg),
            timeline: self.segment.timeline,
            reason: StartReason::Partial {
                file: self.name,
                valid_until,
            },
        }
    }
}

type UncompressedSize<'a> =
    Box<dyn FnMut(&Path, Compression) -> io::Result<Option<u64>> + Send + 'a>;

/// [`WalDirReader`] over a real directory. Keeps the last file open, so page-by-page scans of one
/// segment do not reopen it.
pub struct StdWalDir<'a> {
    dir: PathBuf,
    open: Option<(String, File)>,
    uncompressed_size: Option<UncompressedSize<'a>>,
}

impl<'a> StdWalDir<'a> {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StdWalDir {
            dir: dir.into(),
            open: None,
            uncompressed_size: None,
        }
    }

    /// Plugs in the archive crate's knowledge of `.lz4`/`.zst` uncompressed sizes.
    pub fn with_uncompressed_size(
        mut self,
        f: impl FnMut(&Path, Compression) -> io::Result<Option<u64>> + Send + 'a,
    ) -> Self {
        self.uncompressed_size = Some(Box::new(f));
        self
    }

    /// The regular files of the directory with UTF-8 names (others cannot be WAL file names).
    pub fn list(&self) -> io::Result<Vec<DirEntryInfo>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed meanwhile (the standby's checkpointer does that): not a candidate.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta.is_file() {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string() {
                out.push(DirEntryInfo {
                    name,
                    len: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl WalDirReader for StdWalDir<'_> {
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = match &self.open {
            Some((open_name, file)) if open_name == name => file,
            _ => {
                let file = File::open(self.dir.join(name))?;
                &self.open.insert((name.to_string(), file)).1
            }
        };
        file.read_at(buf, offset)
    }

    fn uncompressed_size(
        &mut self,
        name: &str,
        compression: Compression,
    ) -> io::Result<Option<u64>> {
        match self.uncompressed_size.as_mut() {
            Some(f) => f(&self.dir.join(name), compression),
            None => Ok(None),
        }
    }
}

struct Scanner<'a> {
    dir: &'a mut dyn WalDirReader,
    headers: &'a dyn PageHeaderReader,
    options: &'a StartOptions,
    long_headers: HashMap<String, Result<LongPageHeader, PageHeaderError>>,
}

impl Scanner<'_> {
    fn seg_size(&self) -> WalSegmentSize {
        self.options.wal_segment_size
    }

    fn io(name: &str) -> impl FnOnce(io::Error) -> StartError + '_ {
        move |source| StartError::Io {
            file: name.to_string(),
            source,
        }
    }

    /// Reads until `buf` is full or the file ends.
    fn read_full(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StartError> {
        let mut got = 0;
        while got < buf.len() {
            match self.dir.read_at(name, offset + got as u64, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(name)(e)),
            }
        }
        Ok(got)
    }

    fn candidates(&self, entries: &[DirEntryInfo]) -> Vec<Candidate> {
        let mut out = Vec::new();
        for e in entries {
            let Some(
                parsed @ WalFileName::Segment {
                    compression,
                    partial,
                    ..
                },
            ) = WalFileName::parse(&e.name)
            else {
                continue;
            };
            let Some(segment) = parsed
                .segment_id(self.seg_size())
                .filter(|s| s.timeline.0 != 0)
            else {
                warn!(file = %e.name, "not a segment name for wal_segment_size {}, skipping", self.seg_size());
                continue;
            };
            out.push(Candidate {
                name: e.name.clone(),
                len: e.len,
                segment,
                compression,
                partial,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The long header of an uncompressed file's first page (cached).
    fn long_header(
        &mut self,
        name: &str,
    ) -> Result<Result<LongPageHeader, PageHeaderError>, StartError> {
        if let Some(h) = self.long_headers.get(name) {
            return Ok(h.clone());
        }
        let mut buf = [0u8; LONG_PAGE_HEADER_SIZE];
        let n = self.read_full(name, 0, &mut buf)?;
        // "Nothing written here" is decided here, whatever error a plugged-in reader would give.
        let h = if n > 0 && buf[..n].iter().all(|&b| b == 0) {
            Err(PageHeaderError::Zeroed)
        } else {
            self.headers.segment_start(&buf[..n])
        };
        self.long_headers.insert(name.to_string(), h.clone());
        Ok(h)
    }

    /// Refuses foreign WAL: every uncompressed file whose first page has a long header must carry the
    /// expected system identifier and segment size.
    fn check_identities(&mut self, candidates: &[Candidate]) -> Result<(), StartError> {
        for c in candidates
            .iter()
            .filter(|c| c.compression.is_none() && c.len > 0)
        {
            if let Ok(h) = self.long_header(&c.name)? {
                self.check_identity(c, &h)?;
            }
        }
        Ok(())
    }

    fn check_identity(&self, c: &Candidate, h: &LongPageHeader) -> Result<(), StartError> {
        if let Some(expected) = self.options.system_identifier {
            if h.system_identifier != expected {
                return Err(StartError::SystemIdentifierMismatch {
                    file: c.name.clone(),
                    found: h.system_identifier,
                    expected,
                });
            }
        }
        if h.segment_size != self.seg_size().bytes() {
            return Err(StartError::SegmentSizeMismatch {
                file: c.name.clone(),
                found: h.segment_size,
                expected: self.seg_size().bytes(),
            });
        }
        Ok(())
    }

    /// Whether the first page was written for this file's own segment (`xlp_pageaddr`) and a
    /// timeline not above the file's. The system identifier and segment size were checked for every
    /// file first ([`Self::check_identities`]), so the error names the address or the timeline.
    fn belongs(&self, c: &Candidate, h: &LongPageHeader) -> Result<(), WalError> {
        h.check_segment(c.segment, self.seg_size(), None)
    }

    /// Whether page `index` (≥ 1) of `c` carries a header for its own address.
    fn page_valid(
        &mut self,
        c: &Candidate,
        first: &LongPageHeader,
        index: u64,
        min_tli: TimelineId,
    ) -> Result<Option<TimelineId>, StartError> {
        let offset = index * u64::from(first.block_size);
        let mut buf = [0u8; SHORT_PAGE_HEADER_SIZE];
        if self.read_full(&c.name, offset, &mut buf)? < buf.len() {
            return Ok(None);
        }
        let Ok(p) = self.headers.page(&buf) else {
            return Ok(None);
        };
        let expected = Lsn(c.segment.start_lsn(self.seg_size()).0 + offset);
        let ok = p.magic == first.magic
            && p.info & XLP_LONG_HEADER == 0
            && p.pageaddr == expected
            && p.timeline >= min_tli
            && p.timeline <= c.segment.timeline;
        Ok(ok.then_some(p.timeline))
    }

    fn pages(&self, first: &LongPageHeader) -> u64 {
        self.seg_size().as_u64() / u64::from(first.block_size)
    }

    /// Fast completeness test: the last page is addressed to itself.
    fn last_page_valid(
        &mut self,
        c: &Candidate,
        first: &LongPageHeader,
    ) -> Result<bool, StartError> {
        let last = self.pages(first) - 1;
        Ok(last == 0 || self.page_valid(c, first, last, first.timeline)?.is_some())
    }

    /// Start of the first page (after the first) that is not valid WAL for its own address, or the
    /// segment end if all are. Page timelines must not decrease.
    fn valid_until(&mut self, c: &Candidate, first: &LongPageHeader) -> Result<Lsn, StartError> {
        let start = c.segment.start_lsn(self.seg_size());
        let mut tli = first.timeline;
        for index in 1..self.pages(first) {
            match self.page_valid(c, first, index, tli)? {
                Some(t) => tli = t,
                None => return Ok(Lsn(start.0 + index * u64::from(first.block_size))),
            }
        }
        Ok(c.segment.end_lsn(self.seg_size()))
    }

    fn all_zero(&mut self, name: &str, from: u64, to: u64) -> Result<bool, StartError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = from;
        while at < to {
            let want = buf.len().min((to - at) as usize);
            let n = self.read_full(name, at, &mut buf[..want])?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            if n < want {
                break;
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Sanity of an uncompressed `.partial`; returns where its valid WAL ends.
    fn check_partial(&mut self, c: &Candidate) -> Result<Lsn, StartError> {
        let seg = self.seg_size();
        let start = c.segment.start_lsn(seg);
        let inconsistent = || StartError::PartialSizeInconsistent {
            file: c.name.clone(),
            size: c.len,
            segment_size: seg.bytes(),
        };
        if c.len == 0 {
            return Ok(start);
        }
        if c.len > seg.as_u64() {
            return Err(inconsistent());
        }
        let valid_until = match self.long_header(&c.name)? {
            Ok(h) => {
                if let Err(reason) = self.belongs(c, &h) {
                    return Err(c.corrupt(reason));
                }
                self.valid_until(c, &h)?
            }
            Err(PageHeaderError::Zeroed) => start,
            Err(PageHeaderError::Truncated { .. }) => return Err(inconsistent()),
            Err(e) => return Err(c.corrupt(e)),
        };
        // A short file is only acceptable as an interrupted preallocation: WAL pages, then zeros.
        if c.len != seg.as_u64() && !self.all_zero(&c.name, valid_until.0 - start.0, c.len)? {
            return Err(inconsistent());
        }
        Ok(valid_until)
    }

    /// ISIZE, the last four bytes of a gzip member: the uncompressed size modulo 2^32.
    fn gzip_isize(&mut self, c: &Candidate) -> Result<Option<u64>, StartError> {
        if c.len < 4 {
            return Ok(None);
        }
        let mut buf = [0u8; 4];
        if self.read_full(&c.name, c.len - 4, &mut buf)? < 4 {
            return Ok(None);
        }
        Ok(Some(u64::from(u32::from_le_bytes(buf))))
    }

    fn archive_start(
        &mut self,
        candidates: Vec<Candidate>,
    ) -> Result<Option<StreamStart>, StartError> {
        let seg = self.seg_size();
        let mut best: Option<(Candidate, bool, Option<Lsn>)> = None;
        for c in candidates {
            let (complete, valid_until) = match (c.partial, c.compression) {
                (false, None) => {
                    if c.len != seg.as_u64() {
                        return Err(c.damaged(format!("{} bytes", c.len), seg));
                    }
                    match self.long_header(&c.name)? {
                        Ok(h) => {
                            if let Err(reason) = self.belongs(&c, &h) {
                                return Err(c.corrupt(reason));
                            }
                        }
                        Err(e) => return Err(c.corrupt(e)),
                    }
                    (true, None)
                }
                (false, Some(Compression::Gzip)) => match self.gzip_isize(&c)? {
                    Some(n) if n == seg.as_u64() => (true, None),
                    other => {
                        let size = match other {
                            Some(n) => format!("{n} bytes (its gzip trailer's size)"),
                            None => "too few bytes for a gzip trailer".to_string(),
                        };
                        return Err(c.damaged(size, seg));
                    }
                },
                (false, Some(compression)) => {
                    match self
                        .dir
                        .uncompressed_size(&c.name, compression)
                        .map_err(Self::io(&c.name))?
                    {
                        Some(n) if n != seg.as_u64() => {
                            let size = format!("{n} bytes (its frame's content size)");
                            return Err(c.damaged(size, seg));
                        }
                        _ => (true, None),
                    }
                }
                (true, None) => (false, Some(self.check_partial(&c)?)),
                (true, Some(_)) => (false, None),
            };
            // pg_receivewal takes the highest segment, then the highest timeline. After a
            // failover the old timeline may hold orphaned segments beyond the new timeline's
            // first ones (WAL the new primary never had): the highest timeline decides first,
            // then its highest segment.
            let key =
                |c: &Candidate, complete: bool| (c.segment.timeline, c.segment.segno, complete);
            let better = match &best {
                None => true,
                Some((b, b_complete, _)) => key(&c, complete) > key(b, *b_complete),
            };
            if better {
                best = Some((c, complete, valid_until));
            }
        }
        Ok(best.map(|(c, complete, valid_until)| {
            if complete {
                c.resume_after(seg)
            } else {
                c.restart_at_start(seg, valid_until)
            }
        }))
    }

    /// Whether a pg_wal file was genuinely received (`Some`), and if so whether it looks complete.
    fn classify_pg_wal(
        &mut self,
        c: &Candidate,
    ) -> Result<Option<(LongPageHeader, bool)>, StartError> {
        if c.len != self.seg_size().as_u64() {
            debug!(file = %c.name, size = c.len, "not a full-size segment, not counted as received");
            return Ok(None);
        }
        let h = match self.long_header(&c.name)? {
            Ok(h) => h,
            Err(e) => {
                debug!(file = %c.name, error = %e, "no valid long page header, not counted as received");
                return Ok(None);
            }
        };
        if let Err(reason) = self.belongs(c, &h) {
            debug!(file = %c.name, %reason, "not counted as received");
            return Ok(None);
        }
        let complete = self.last_page_valid(c, &h)?;
        Ok(Some((h, complete)))
    }

    fn pg_wal_start(
        &mut self,
        candidates: Vec<Candidate>,
    ) -> Result<Option<StreamStart>, StartError> {
        let seg = self.seg_size();
        let mut by_segno: BTreeMap<XLogSegNo, Vec<Candidate>> = BTreeMap::new();
        // `.partial` files in pg_wal are the server's own (end of recovery), compressed ones are not
        // readable by the standby: neither was received by a walreceiver.
        for c in candidates
            .into_iter()
            .filter(|c| !c.partial && c.compression.is_none())
        {
            by_segno.entry(c.segment.segno).or_default().push(c);
        }
        for files in by_segno.values_mut() {
            files.sort_by_key(|c| std::cmp::Reverse(c.segment.timeline));
        }
        let scan_from = self.options.scan_from;
        let mut segno = match (scan_from, by_segno.keys().next()) {
            (Some(s), _) => seg.segno(s.lsn),
            (None, Some(&oldest)) => oldest,
            (None, None) => return Ok(None),
        };
        let mut min_tli = scan_from.map(|s| s.timeline);
        let mut last_complete: Option<(Candidate, LongPageHeader)> = None;
        loop {
            let mut received = None;
            for c in by_segno.get(&segno).map(Vec::as_slice).unwrap_or_default() {
                if min_tli.is_some_and(|t| c.segment.timeline < t) {
                    break; // sorted by timeline, highest first
                }
                if let Some((h, complete)) = self.classify_pg_wal(c)? {
                    received = Some((c.clone(), h, complete));
                    break;
                }
            }
            match received {
                Some((c, h, true)) => {
                    min_tli = Some(c.segment.timeline);
                    last_complete = Some((c, h));
                    segno = segno.next();
                }
                Some((c, h, false)) => {
                    let valid_until = self.valid_until(&c, &h)?;
                    return Ok(Some(c.restart_at_start(seg, Some(valid_until))));
                }
                None => break,
            }
        }
        if let Some((c, h)) = last_complete {
            // Its last page says complete; check every page before trusting it.
            let valid_until = self.valid_until(&c, &h)?;
            return Ok(Some(if valid_until == c.segment.end_lsn(seg) {
                c.resume_after(seg)
            } else {
                c.restart_at_start(seg, Some(valid_until))
            }));
        }
        Ok(scan_from.map(|s| StreamStart {
            lsn: s.lsn.segment_start(seg.bytes()),
            timeline: s.timeline,
            reason: StartReason::NothingReceived { from: s.lsn },
        }))
    }
}

#[cfg(test)]
#[path = "start_tests.rs"]
mod tests;
