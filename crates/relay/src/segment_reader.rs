//! Reading WAL back from the archive's segment files, for downstreams the fan-out buffer no
//! longer covers (catch-up, slow standbys) — blocking file IO, run on a blocking thread.
//!
//! A segment may be in the archive as `NAME` (complete), `NAME.partial` (being written: the
//! engine preallocates it, and only what the relay acknowledged is ever read from it), or
//! compressed once complete (`NAME.zst`, `.gz`, `.lz4`: decoded whole into memory and kept while
//! it is read). The engine renames and compresses files while a downstream reads: an open file
//! stays readable after a rename or removal, and a file not found is looked for once more under
//! every name before the segment counts as gone.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};

/// Why WAL could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// No file holds the segment: it was pruned, or never received (before the archive's start).
    #[error("requested WAL segment {segment} has already been removed")]
    Removed { segment: String },
    #[error("could not read from WAL file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Suffixes to try, best first.
const SUFFIXES: [&str; 5] = ["", ".partial", ".zst", ".gz", ".lz4"];

enum Source {
    File(File),
    Decoded(Bytes),
}

/// An open segment file, kept between reads of the same segment.
pub struct SegmentReader {
    dir: PathBuf,
    seg: WalSegmentSize,
    open: Option<(SegmentId, PathBuf, Source)>,
}

impl SegmentReader {
    pub fn new(dir: &Path, seg: WalSegmentSize) -> Self {
        SegmentReader {
            dir: dir.to_path_buf(),
            seg,
            open: None,
        }
    }

    /// Up to `max` bytes from `lsn`, not past the end of its segment, from the first of
    /// `timelines` whose file of that segment exists — and not past the position given with that
    /// timeline, where its file stops holding the WAL wanted (a switch point).
    pub fn read(
        &mut self,
        timelines: &[(TimelineId, Option<Lsn>)],
        lsn: Lsn,
        max: usize,
    ) -> Result<Bytes, ReadError> {
        let segno = self.seg.segno(lsn);
        let usable: Vec<&(TimelineId, Option<Lsn>)> = timelines
            .iter()
            .filter(|(_, end)| end.is_none_or(|e| e > lsn))
            .collect();
        let wanted: Vec<SegmentId> = usable
            .iter()
            .map(|&&(t, _)| SegmentId::new(t, segno))
            .collect();
        if !self
            .open
            .as_ref()
            .is_some_and(|(id, _, _)| wanted.contains(id))
        {
            self.open = None;
            self.open = Some(self.find(&wanted)?);
        }
        let offset = u64::from(self.seg.offset(lsn));
        let Some((id, path, source)) = self.open.as_ref() else {
            return Err(self.removed(&wanted));
        };
        let end = usable
            .iter()
            .find(|(t, _)| *t == id.timeline)
            .and_then(|(_, end)| *end);
        let mut len = (self.seg.as_u64() - offset).min(max as u64);
        if let Some(end) = end {
            len = len.min(end.0 - lsn.0);
        }
        let len = len as usize;
        match source {
            Source::Decoded(all) => {
                let end = (offset as usize + len).min(all.len());
                if (offset as usize) >= end {
                    return Err(ReadError::Io {
                        path: path.clone(),
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, "segment too short"),
                    });
                }
                Ok(all.slice(offset as usize..end))
            }
            Source::File(f) => {
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, offset)
                    .map_err(|source| ReadError::Io {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Bytes::from(buf))
            }
        }
    }

    fn removed(&self, wanted: &[SegmentId]) -> ReadError {
        ReadError::Removed {
            segment: wanted
                .first()
                .map(|id| id.file_name(self.seg))
                .unwrap_or_default(),
        }
    }

    fn find(&self, wanted: &[SegmentId]) -> Result<(SegmentId, PathBuf, Source), ReadError> {
        // Twice: a file renamed or compressed between two tries is found under its new name.
        for _ in 0..2 {
            for id in wanted {
                let name = id.file_name(self.seg);
                for suffix in SUFFIXES {
                    let path = self.dir.join(format!("{name}{suffix}"));
                    match self.open_one(&path, suffix) {
                        Ok(source) => return Ok((*id, path, source)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(source) => return Err(ReadError::Io { path, source }),
                    }
                }
            }
        }
        Err(self.removed(wanted))
    }

    fn open_one(&self, path: &Path, suffix: &str) -> io::Result<Source> {
        if suffix.is_empty() || suffix == ".partial" {
            return File::open(path).map(Source::File);
        }
        // Compressed: decoded whole (one segment) and kept while this segment is read.
        let mut reader = walrelay_archive::open_segment(path).map_err(|e| match e {
            walrelay_archive::ArchiveError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        let mut all = Vec::with_capacity(self.seg.bytes() as usize);
        reader
            .by_ref()
            .take(self.seg.as_u64())
            .read_to_end(&mut all)?;
        Ok(Source::Decoded(Bytes::from(all)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    fn content(segno: u64) -> Vec<u8> {
        (0..1usize << 20)
            .map(|i| ((i as u64 * 7 + segno) % 253) as u8)
            .collect()
    }

    #[test]
    fn reads_complete_partial_and_compressed_segments() {
        let d = tempfile::tempdir().unwrap();
        let t1 = TimelineId(1);
        let name = |segno| SegmentId::new(t1, walrelay_protocol::XLogSegNo(segno)).file_name(seg());
        std::fs::write(d.path().join(name(1)), content(1)).unwrap();
        std::fs::write(d.path().join(format!("{}.partial", name(2))), content(2)).unwrap();
        std::fs::write(d.path().join(name(3)), content(3)).unwrap();
        walrelay_archive::compress_completed_segment(
            d.path(),
            &name(3),
            walrelay_archive::Compression::Zstd { level: 1 },
            walrelay_durable::Owner::current(),
        )
        .unwrap();
        assert!(!d.path().join(name(3)).exists());
        let mut r = SegmentReader::new(d.path(), seg());
        let at = |segno: u64, off: u64| Lsn(segno * (1 << 20) + off);
        assert_eq!(
            &r.read(&[(t1, None)], at(1, 100), 50).unwrap()[..],
            &content(1)[100..150]
        );
        // Never past the segment's end.
        assert_eq!(
            r.read(&[(t1, None)], at(1, (1 << 20) - 10), 50)
                .unwrap()
                .len(),
            10
        );
        assert_eq!(
            &r.read(&[(t1, None)], at(2, 0), 8).unwrap()[..],
            &content(2)[..8]
        );
        assert_eq!(
            &r.read(&[(t1, None)], at(3, 5000), 100).unwrap()[..],
            &content(3)[5000..5100]
        );
        match r.read(&[(t1, None)], at(4, 0), 8) {
            Err(ReadError::Removed { segment }) => assert_eq!(segment, name(4)),
            other => panic!("{other:?}"),
        }
        // Another timeline's file serves when the first has none (the switch segment).
        let t2 = TimelineId(2);
        let n2 = SegmentId::new(t2, walrelay_protocol::XLogSegNo(4)).file_name(seg());
        std::fs::write(d.path().join(n2), content(4)).unwrap();
        assert_eq!(
            &r.read(&[(t1, None), (t2, None)], at(4, 1), 3).unwrap()[..],
            &content(4)[1..4]
        );
    }

    /// The switch segment after a failover: timeline 1's file goes on past the switch point with
    /// WAL timeline 2 does not have. Read for timeline 2, it serves only up to the switch point;
    /// timeline 2's own file, once there, serves the whole segment.
    #[test]
    fn an_ancestor_s_file_stops_at_its_switch_point() {
        let d = tempfile::tempdir().unwrap();
        let (t1, t2) = (TimelineId(1), TimelineId(2));
        let segno = walrelay_protocol::XLogSegNo(5);
        let name = |t| SegmentId::new(t, segno).file_name(seg());
        let old = content(1);
        std::fs::write(d.path().join(format!("{}.partial", name(t1))), &old).unwrap();
        let at = |off: u64| Lsn(5 * (1 << 20) + off);
        let switch = at(0x8_31D0);
        let files = [(t2, None), (t1, Some(switch))];
        let mut r = SegmentReader::new(d.path(), seg());
        let got = r.read(&files, at(0), 1 << 20).unwrap();
        assert_eq!(&got[..], &old[..0x8_31D0]);
        assert!(r.read(&[(t1, Some(switch))], switch, 100).is_err());
        let new = content(2);
        std::fs::write(d.path().join(format!("{}.partial", name(t2))), &new).unwrap();
        let mut r = SegmentReader::new(d.path(), seg());
        assert_eq!(
            &r.read(&files, at(0x10), 100).unwrap()[..],
            &new[0x10..0x10 + 100]
        );
        assert_eq!(
            &r.read(&files, switch, 100).unwrap()[..],
            &new[0x8_31D0..0x8_31D0 + 100]
        );
    }

    /// Right after the engine followed the promotion (or a restart), timeline 2's file of the
    /// switch segment is preallocated and written again from the segment's start: only what the
    /// engine acknowledged of it may be read; below the switch point, timeline 1's file holds
    /// the rest — never the zeros.
    #[test]
    fn the_new_timeline_s_file_serves_only_what_was_acknowledged() {
        let d = tempfile::tempdir().unwrap();
        let (t1, t2) = (TimelineId(1), TimelineId(2));
        let segno = walrelay_protocol::XLogSegNo(5);
        let name = |t| SegmentId::new(t, segno).file_name(seg());
        let old = content(1);
        std::fs::write(d.path().join(format!("{}.partial", name(t1))), &old).unwrap();
        let mut new = content(1)[..0x1000].to_vec();
        new.resize(1 << 20, 0);
        std::fs::write(d.path().join(format!("{}.partial", name(t2))), &new).unwrap();
        let at = |off: u64| Lsn(5 * (1 << 20) + off);
        let (switch, acked) = (at(0x8_31D0), at(0x1000));
        let files = [(t2, Some(acked)), (t1, Some(switch))];
        let mut r = SegmentReader::new(d.path(), seg());
        let got = r.read(&files, at(0), 1 << 20).unwrap();
        assert_eq!(&got[..], &old[..0x1000], "timeline 2's acknowledged part");
        let got = r.read(&files, acked, 1 << 20).unwrap();
        assert_eq!(
            &got[..],
            &old[0x1000..0x8_31D0],
            "the rest from timeline 1's file"
        );
    }
}
