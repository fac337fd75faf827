use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use proptest::prelude::*;

use super::*;
use crate::page_header::fixtures::{long_header, segment, short_header};

const MB: u64 = 1024 * 1024;
const PAGE: u32 = 8192;
const PAGES: usize = (MB / PAGE as u64) as usize;
const SYSID: u64 = 7_712_898_326_429_307_183;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn name(tli: u32, segno: u64) -> String {
    SegmentId::new(TimelineId(tli), XLogSegNo(segno)).file_name(seg())
}

/// A full segment of timeline `tli`'s WAL.
fn complete(tli: u32, segno: u64) -> Vec<u8> {
    segment(tli, segno, SYSID, MB as u32, PAGE, PAGES)
}

/// A zero-filled segment with the first `pages` pages written.
fn partial(tli: u32, segno: u64, pages: usize) -> Vec<u8> {
    segment(tli, segno, SYSID, MB as u32, PAGE, pages)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// File names and contents.
type Files = Vec<(String, Vec<u8>)>;

/// An in-memory directory that counts what is read.
#[derive(Default)]
struct MemDir {
    files: BTreeMap<String, Vec<u8>>,
    sizes: HashMap<String, u64>,
    reads: usize,
    bytes_read: usize,
}

impl MemDir {
    fn with(files: Files) -> Self {
        MemDir {
            files: files.into_iter().collect(),
            ..Default::default()
        }
    }

    fn entries(&self) -> Vec<DirEntryInfo> {
        self.files
            .iter()
            .map(|(name, data)| DirEntryInfo {
                name: name.clone(),
                len: data.len() as u64,
            })
            .collect()
    }

    fn start(&mut self, options: &StartOptions) -> Result<Option<StreamStart>, StartError> {
        let entries = self.entries();
        find_streaming_start(&entries, options, self)
    }
}

impl WalDirReader for MemDir {
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let data = self
            .files
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let from = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        self.reads += 1;
        self.bytes_read += n;
        Ok(n)
    }

    fn uncompressed_size(&mut self, name: &str, _: Compression) -> io::Result<Option<u64>> {
        Ok(self.sizes.get(name).copied())
    }
}

fn archive() -> StartOptions {
    StartOptions::archive(seg()).with_system_identifier(SYSID)
}

fn pg_wal() -> StartOptions {
    StartOptions::pg_wal(seg()).with_system_identifier(SYSID)
}

fn after(tli: u32, segno: u64) -> StreamStart {
    after_file(tli, segno, name(tli, segno))
}

fn after_file(tli: u32, segno: u64, file: String) -> StreamStart {
    StreamStart {
        lsn: Lsn((segno + 1) * MB),
        timeline: TimelineId(tli),
        reason: StartReason::AfterComplete { file },
    }
}

fn resume_partial(tli: u32, segno: u64, file: String, valid_pages: Option<u64>) -> StreamStart {
    StreamStart {
        lsn: Lsn(segno * MB),
        timeline: TimelineId(tli),
        reason: StartReason::Partial {
            file,
            valid_until: valid_pages.map(|p| Lsn(segno * MB + p * u64::from(PAGE))),
        },
    }
}

fn p(tli: u32, segno: u64) -> String {
    format!("{}.partial", name(tli, segno))
}

// ---------------------------------------------------------------------------------------------
// Archive layout: pg_receivewal's rules

#[test]
fn archive_table() {
    let cases: Vec<(&str, Files, Option<StreamStart>)> = vec![
        ("empty directory", vec![], None),
        (
            "nothing WAL-like",
            vec![
                ("notes.txt".into(), b"hi".to_vec()),
                ("00000002.history".into(), b"1\t0/3000000\tx\n".to_vec()),
                (
                    "000000010000000000000002.00000028.backup".into(),
                    b"x".to_vec(),
                ),
                ("000000010000000000000003.tmp".into(), complete(1, 3)),
                ("00000001000000000000000a".into(), complete(1, 10)),
            ],
            None,
        ),
        (
            "highest complete segment: continue with the next",
            vec![
                (name(1, 1), complete(1, 1)),
                (name(1, 2), complete(1, 2)),
                (name(1, 3), complete(1, 3)),
            ],
            Some(after(1, 3)),
        ),
        (
            "partial after complete: restart the partial at its start",
            vec![(name(1, 2), complete(1, 2)), (p(1, 3), partial(1, 3, 5))],
            Some(resume_partial(1, 3, p(1, 3), Some(5))),
        ),
        (
            "empty (0-byte) partial",
            vec![(name(1, 2), complete(1, 2)), (p(1, 3), vec![])],
            Some(resume_partial(1, 3, p(1, 3), Some(0))),
        ),
        (
            "preallocated partial with nothing written",
            vec![(p(1, 3), vec![0; MB as usize])],
            Some(resume_partial(1, 3, p(1, 3), Some(0))),
        ),
        (
            "complete beats partial of the same segment and timeline",
            vec![(p(1, 3), partial(1, 3, 5)), (name(1, 3), complete(1, 3))],
            Some(after(1, 3)),
        ),
        (
            "same segment: the higher timeline wins, even partial",
            vec![(name(1, 5), complete(1, 5)), (p(2, 5), partial(2, 5, 9))],
            Some(resume_partial(2, 5, p(2, 5), Some(9))),
        ),
        (
            // Unlike pg_receivewal: after a failover the old timeline may hold segments beyond
            // the new timeline's first ones (orphaned WAL); the new timeline is where to go on.
            "a higher timeline beats a higher segment of an older timeline",
            vec![(name(2, 4), complete(2, 4)), (p(1, 5), partial(1, 5, 1))],
            Some(after(2, 4)),
        ),
        (
            "gzip partial counts as partial",
            vec![
                (format!("{}.gz", name(1, 2)), gzip(&complete(1, 2))),
                (
                    format!("{}.gz.partial", name(1, 3)),
                    gzip(&partial(1, 3, 2)[..20_000]),
                ),
            ],
            Some(resume_partial(
                1,
                3,
                format!("{}.gz.partial", name(1, 3)),
                None,
            )),
        ),
        (
            "lz4 and zst: trusted by name when the size is unknown",
            vec![
                (format!("{}.lz4", name(1, 2)), b"lz4 frame".to_vec()),
                (format!("{}.zst", name(1, 3)), b"zstd frame".to_vec()),
                (format!("{}.lz4.partial", name(1, 3)), b"lz4 frame".to_vec()),
            ],
            Some(after_file(1, 3, format!("{}.zst", name(1, 3)))),
        ),
        (
            "segment 0 is not ignored (pg_receivewal's high_segno > 0 quirk)",
            vec![(name(1, 0), complete(1, 0))],
            Some(after(1, 0)),
        ),
        (
            "a complete file of a new timeline may start with its parent's pages",
            vec![(name(2, 4), complete(1, 4))],
            Some(after(2, 4)),
        ),
    ];
    for (what, files, want) in cases {
        let mut dir = MemDir::with(files);
        let got = dir
            .start(&archive())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn a_complete_name_of_the_wrong_size_is_damage_named() {
    // Skipped, a damaged file was streamed again and then refused as "already complete", or,
    // with newer WAL beside it, left a gap for good: now refused at the start, named.
    type Files = Vec<(String, Vec<u8>)>;
    let cases: Vec<(&str, Files, String)> = vec![
        (
            "a bare file cut short, the newest",
            vec![
                (name(1, 2), complete(1, 2)),
                (name(1, 3), complete(1, 3)[..4096].to_vec()),
            ],
            name(1, 3),
        ),
        (
            "a bare file cut short, a .partial after it",
            vec![
                (name(1, 2), complete(1, 2)),
                (name(1, 3), complete(1, 3)[..4096].to_vec()),
                (p(1, 4), partial(1, 4, 3)),
            ],
            name(1, 3),
        ),
        (
            "gzip whose trailer gives another size",
            vec![
                (format!("{}.gz", name(1, 2)), gzip(&complete(1, 2))),
                (format!("{}.gz", name(1, 3)), gzip(&complete(1, 3)[..1000])),
            ],
            format!("{}.gz", name(1, 3)),
        ),
        (
            "gzip too short for a trailer",
            vec![
                (name(1, 2), complete(1, 2)),
                (format!("{}.gz", name(1, 3)), vec![0x1f, 0x8b]),
            ],
            format!("{}.gz", name(1, 3)),
        ),
    ];
    for (what, files, want) in cases {
        let mut dir = MemDir::with(files);
        let e = dir.start(&archive()).unwrap_err();
        assert!(
            matches!(&e, StartError::DamagedSegment { file, .. } if *file == want),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("move it out"), "{what}: {e}");
    }
}

#[test]
fn archive_uses_the_uncompressed_size_closure() {
    let lz4 = format!("{}.lz4", name(1, 3));
    let mut dir = MemDir::with(vec![
        (name(1, 2), complete(1, 2)),
        (lz4.clone(), b"x".to_vec()),
    ]);
    dir.sizes.insert(lz4.clone(), MB - 1);
    let e = dir.start(&archive()).unwrap_err();
    assert!(
        matches!(&e, StartError::DamagedSegment { file, .. } if *file == lz4),
        "{e}"
    );
    dir.sizes.insert(lz4.clone(), MB);
    assert_eq!(dir.start(&archive()).unwrap(), Some(after_file(1, 3, lz4)));
}

#[test]
fn short_partial_consistent_with_content_is_accepted() {
    // An interrupted preallocation: some zeros, no WAL yet.
    let mut dir = MemDir::with(vec![(p(1, 3), vec![0; 123_456])]);
    assert_eq!(
        dir.start(&archive()).unwrap(),
        Some(resume_partial(1, 3, p(1, 3), Some(0)))
    );
    // Valid pages followed by zeros, cut short.
    let mut dir = MemDir::with(vec![(p(1, 3), partial(1, 3, 4)[..300_000].to_vec())]);
    assert_eq!(
        dir.start(&archive()).unwrap(),
        Some(resume_partial(1, 3, p(1, 3), Some(4)))
    );
}

#[test]
fn inconsistent_partials_are_refused_with_the_file_named() {
    let mut garbage_tail = partial(1, 3, 4)[..300_000].to_vec();
    garbage_tail[200_000] = 7;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-zero bytes after the valid pages of a short file",
            garbage_tail,
        ),
        ("larger than a segment", vec![0; MB as usize + 1]),
        ("shorter than a page header, not zeros", vec![1, 2, 3]),
    ];
    for (what, content) in cases {
        let mut dir = MemDir::with(vec![(p(1, 3), content)]);
        let e = dir.start(&archive()).unwrap_err();
        assert!(
            matches!(e, StartError::PartialSizeInconsistent { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains(&p(1, 3)), "{what}: {e}");
    }
    // A partial whose first page belongs to another segment.
    let mut dir = MemDir::with(vec![(p(1, 3), partial(1, 9, 4))]);
    let e = dir.start(&archive()).unwrap_err();
    assert!(matches!(e, StartError::CorruptSegment { .. }), "{e}");
}

#[test]
fn corrupt_complete_segments_are_refused() {
    let mut zeros_first = complete(1, 3);
    zeros_first[..PAGE as usize].fill(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("first page never written", zeros_first),
        ("first page addressed to another segment", complete(1, 2)),
        ("first page of a later timeline", complete(3, 3)),
        ("not WAL at all", vec![0xAB; MB as usize]),
    ];
    for (what, content) in cases {
        let mut dir = MemDir::with(vec![(name(1, 3), content)]);
        let e = dir.start(&archive()).unwrap_err();
        assert!(
            matches!(e, StartError::CorruptSegment { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains(&name(1, 3)), "{what}: {e}");
    }
}

#[test]
fn foreign_wal_is_refused_naming_file_and_identifiers() {
    let foreign = segment(1, 2, 99, MB as u32, PAGE, PAGES);
    for options in [archive(), pg_wal()] {
        let mut dir = MemDir::with(vec![
            (name(1, 1), complete(1, 1)),
            (name(1, 2), foreign.clone()),
        ]);
        let e = dir.start(&options).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                StartError::SystemIdentifierMismatch {
                    found: 99,
                    expected: SYSID,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains(&name(1, 2)) && msg.contains("99") && msg.contains(&SYSID.to_string()),
            "{msg}"
        );
    }
    // Even a stray partial or a file that discovery would otherwise skip.
    let mut dir = MemDir::with(vec![
        (name(1, 5), complete(1, 5)),
        (p(1, 2), segment(1, 2, 99, MB as u32, PAGE, 3)),
    ]);
    assert!(matches!(
        dir.start(&archive()),
        Err(StartError::SystemIdentifierMismatch { .. })
    ));
    // Without an expected identifier, nothing to compare.
    let mut dir = MemDir::with(vec![(name(1, 2), foreign)]);
    assert_eq!(
        dir.start(&StartOptions::archive(seg())).unwrap(),
        Some(after(1, 2))
    );
}

#[test]
fn other_segment_size_is_refused() {
    let sixteen = segment(1, 2, SYSID, 16 * MB as u32, PAGE, 1);
    let mut dir = MemDir::with(vec![(name(1, 2), sixteen[..MB as usize].to_vec())]);
    let e = dir.start(&archive()).unwrap_err();
    assert!(
        matches!(e, StartError::SegmentSizeMismatch { found, .. } if found == 16 * MB as u32),
        "{e}"
    );
}

#[test]
fn names_out_of_range_for_the_segment_size_are_skipped() {
    // With 16 MB segments there are 256 per xlogid, so a seg half of 0x100 is not a segment name.
    let s16 = WalSegmentSize::new(16 * MB).unwrap();
    let mut dir = MemDir::with(vec![(
        "000000010000000000000100".into(),
        vec![0; 16 * MB as usize],
    )]);
    assert_eq!(dir.start(&StartOptions::archive(s16)).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// pg_wal layout: recycled files look complete

/// Segment `old` renamed to a future name, as a checkpointer recycles it.
fn recycled(old: u64) -> Vec<u8> {
    complete(1, old)
}

#[test]
fn pg_wal_table() {
    let cases: Vec<(&str, StartOptions, Files, Option<StreamStart>)> = vec![
        ("empty, no scan position", pg_wal(), vec![], None),
        (
            "empty, scan position known",
            pg_wal().with_scan_from(Lsn(5 * MB + 0x768), TimelineId(1)),
            vec![],
            Some(StreamStart {
                lsn: Lsn(5 * MB),
                timeline: TimelineId(1),
                reason: StartReason::NothingReceived {
                    from: Lsn(5 * MB + 0x768),
                },
            }),
        ),
        (
            "complete, complete, partial, then recycled future segments",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), complete(1, 6)),
                (name(1, 7), partial(1, 7, 10)),
                (name(1, 8), recycled(2)),
                (name(1, 9), recycled(3)),
            ],
            Some(resume_partial(1, 7, name(1, 7), Some(10))),
        ),
        (
            "complete segments then only recycled ones",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), complete(1, 6)),
                (name(1, 7), recycled(1)),
                (name(1, 8), recycled(2)),
            ],
            Some(after(1, 6)),
        ),
        (
            "a partially overwritten recycled file: valid pages, then stale ones",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), {
                    let mut f = recycled(2);
                    f[..3 * PAGE as usize].copy_from_slice(&complete(1, 6)[..3 * PAGE as usize]);
                    f
                }),
            ],
            Some(resume_partial(1, 6, name(1, 6), Some(3))),
        ),
        (
            "a gap stops the scan",
            pg_wal(),
            vec![(name(1, 5), complete(1, 5)), (name(1, 7), complete(1, 7))],
            Some(after(1, 5)),
        ),
        (
            "zero-filled file with nothing written is not received",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), vec![0; MB as usize]),
            ],
            Some(after(1, 5)),
        ),
        (
            "wrong-size file is not received",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), complete(1, 6)[..MB as usize / 2].to_vec()),
            ],
            Some(after(1, 5)),
        ),
        (
            "scan starts at the standby's position; older files do not matter",
            pg_wal().with_scan_from(Lsn(6 * MB + 0x28), TimelineId(1)),
            vec![
                (name(1, 3), vec![0xEE; MB as usize]),
                (name(1, 6), complete(1, 6)),
                (name(1, 7), complete(1, 7)),
            ],
            Some(after(1, 7)),
        ),
        (
            "nothing received at or after the standby's position",
            pg_wal().with_scan_from(Lsn(9 * MB), TimelineId(1)),
            vec![(name(1, 6), complete(1, 6)), (name(1, 9), recycled(4))],
            Some(StreamStart {
                lsn: Lsn(9 * MB),
                timeline: TimelineId(1),
                reason: StartReason::NothingReceived { from: Lsn(9 * MB) },
            }),
        ),
        (
            "timeline switch inside segment 6: the new timeline's file continues",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (name(1, 6), partial(1, 6, 40)),
                (name(2, 6), complete(1, 6)), // starts with timeline 1's pages
                (name(2, 7), partial(2, 7, 3)),
            ],
            Some(resume_partial(2, 7, name(2, 7), Some(3))),
        ),
        (
            "a lower timeline after a higher one is not a continuation",
            pg_wal(),
            vec![(name(2, 5), complete(2, 5)), (name(1, 6), complete(1, 6))],
            Some(after(2, 5)),
        ),
        (
            "the scan position's timeline filters older timelines",
            pg_wal().with_scan_from(Lsn(5 * MB), TimelineId(2)),
            vec![(name(1, 5), complete(1, 5)), (name(2, 5), partial(2, 5, 2))],
            Some(resume_partial(2, 5, name(2, 5), Some(2))),
        ),
        (
            "a recycled file on the higher timeline falls back to the genuine lower one",
            pg_wal(),
            vec![(name(1, 5), complete(1, 5)), (name(2, 5), recycled(1))],
            Some(after(1, 5)),
        ),
        (
            ".partial and compressed files in pg_wal are not the walreceiver's",
            pg_wal(),
            vec![
                (name(1, 5), complete(1, 5)),
                (p(1, 6), complete(1, 6)),
                (format!("{}.gz", name(1, 6)), gzip(&complete(1, 6))),
            ],
            Some(after(1, 5)),
        ),
    ];
    for (what, options, files, want) in cases {
        let mut dir = MemDir::with(files);
        let got = dir
            .start(&options)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn pg_wal_last_complete_segment_is_checked_page_by_page() {
    // Its last page reached the disk, a middle one did not (never fsynced before a crash).
    let mut hole = complete(1, 6);
    hole[50 * PAGE as usize..51 * PAGE as usize].fill(0);
    let mut dir = MemDir::with(vec![(name(1, 5), complete(1, 5)), (name(1, 6), hole)]);
    assert_eq!(
        dir.start(&pg_wal()).unwrap(),
        Some(resume_partial(1, 6, name(1, 6), Some(50)))
    );
    // A page whose timeline goes backwards is not valid either.
    let mut back = complete(2, 6);
    back[20 * PAGE as usize..][..24]
        .copy_from_slice(&short_header(1, 6 * MB + 20 * u64::from(PAGE)));
    let mut dir = MemDir::with(vec![(name(2, 6), back)]);
    assert_eq!(
        dir.start(&pg_wal()).unwrap(),
        Some(resume_partial(2, 6, name(2, 6), Some(20)))
    );
}

#[test]
fn pg_wal_scan_reads_little_of_segments_before_the_last() {
    let files: Vec<_> = (1..=40).map(|s| (name(1, s), complete(1, s))).collect();
    let mut dir = MemDir::with(files);
    assert_eq!(dir.start(&pg_wal()).unwrap(), Some(after(1, 40)));
    // Two headers per segment, plus one full page scan of the last one; never whole segments.
    assert!(
        dir.bytes_read < 40 * 2 * 40 + 2 * PAGES * 24,
        "read {} bytes",
        dir.bytes_read
    );
}

#[test]
fn start_reason_messages() {
    let s = after(1, 5);
    assert_eq!(
        s.to_string(),
        "0/600000 on timeline 1: resuming after 000000010000000000000005 (complete)"
    );
    assert_eq!(
        resume_partial(1, 6, p(1, 6), Some(3)).reason.to_string(),
        "resuming partial 000000010000000000000006.partial from its start (valid WAL pages up to 0/606000)"
    );
    assert_eq!(
        StartReason::NothingReceived {
            from: Lsn(0x60_0768)
        }
        .to_string(),
        "no WAL received at or after 0/600768 yet"
    );
}

#[test]
fn read_errors_name_the_file() {
    struct Broken;
    impl WalDirReader for Broken {
        fn read_at(&mut self, _: &str, _: u64, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }
    let entries = vec![DirEntryInfo {
        name: name(1, 3),
        len: MB,
    }];
    let e = find_streaming_start(&entries, &archive(), &mut Broken).unwrap_err();
    assert!(matches!(e, StartError::Io { .. }), "{e}");
    assert!(e.to_string().contains(&name(1, 3)), "{e}");
}

#[test]
fn a_pluggable_header_reader_is_used() {
    /// Rejects everything, as a stricter reader might for an unknown magic.
    struct Strict;
    impl PageHeaderReader for Strict {
        fn segment_start(&self, _: &[u8]) -> Result<LongPageHeader, PageHeaderError> {
            Err(PageHeaderError::Invalid("unknown XLOG_PAGE_MAGIC".into()))
        }
        fn page(&self, _: &[u8]) -> Result<crate::page_header::PageHeader, PageHeaderError> {
            Err(PageHeaderError::Invalid("unknown XLOG_PAGE_MAGIC".into()))
        }
    }
    let mut dir = MemDir::with(vec![(name(1, 5), complete(1, 5))]);
    let entries = dir.entries();
    let e = find_streaming_start_with(&entries, &archive(), &mut dir, &Strict).unwrap_err();
    assert!(e.to_string().contains("unknown XLOG_PAGE_MAGIC"), "{e}");
    let got = find_streaming_start_with(&entries, &pg_wal(), &mut dir, &Strict).unwrap();
    assert_eq!(got, None, "nothing provably received");
}

// ---------------------------------------------------------------------------------------------
// Real directories

#[test]
fn std_wal_dir_lists_regular_files_and_reads_them() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join(name(1, 2)), complete(1, 2)).unwrap();
    fs::write(d.path().join(p(1, 3)), partial(1, 3, 7)).unwrap();
    fs::create_dir(d.path().join("archive_status")).unwrap();
    std::os::unix::fs::symlink(d.path().join(name(1, 2)), d.path().join(name(1, 9))).unwrap();
    let reader = StdWalDir::new(d.path());
    let listed: Vec<_> = reader.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(
        listed,
        vec![name(1, 2), p(1, 3)],
        "directories and symlinks are not segments"
    );
    assert_eq!(
        find_streaming_start_in_dir(d.path(), &archive()).unwrap(),
        Some(resume_partial(1, 3, p(1, 3), Some(7)))
    );
    let lz4 = format!("{}.lz4", name(1, 4));
    fs::write(d.path().join(&lz4), b"frame").unwrap();
    let mut reader = StdWalDir::new(d.path()).with_uncompressed_size(|path, c| {
        assert_eq!(c, Compression::Lz4);
        assert!(path.ends_with(format!("{}.lz4", name(1, 4))));
        Ok(Some(MB))
    });
    let entries = reader.list().unwrap();
    assert_eq!(
        find_streaming_start(&entries, &archive(), &mut reader).unwrap(),
        Some(after_file(1, 4, lz4))
    );
    let missing = d.path().join("missing");
    let e = find_streaming_start_in_dir(&missing, &archive()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn long_header_fixture_is_what_the_writer_tests_use() {
    // Guard against the two fixture builders drifting apart.
    let h = long_header(1, 0, SYSID, MB as u32, PAGE);
    assert_eq!(&complete(1, 0)[..40], &h[..]);
}

proptest! {
    /// Arbitrary file names, sizes and contents never make discovery panic, and whatever it returns is
    /// a segment boundary.
    #[test]
    fn never_panics_on_arbitrary_directories(
        files in proptest::collection::vec(
            (0u32..3, 0u64..6, 0u8..4, proptest::collection::vec(any::<u8>(), 0..64), 0usize..3),
            0..8,
        ),
        layout_pg_wal: bool,
    ) {
        let mut entries = Vec::new();
        for (tli, segno, suffix, head, kind) in files {
            let suffix = [".partial", "", ".gz", ".gz.partial"][suffix as usize];
            let mut content = match kind {
                0 => complete(tli.max(1), segno),
                1 => partial(tli.max(1), segno, 3),
                _ => vec![],
            };
            let n = head.len().min(content.len());
            content[..n].copy_from_slice(&head[..n]);
            if kind == 2 {
                content = head;
            }
            entries.push((format!("{}{suffix}", name(tli, segno)), content));
        }
        let mut dir = MemDir::with(entries);
        let options = if layout_pg_wal { pg_wal().with_scan_from(Lsn(MB), TimelineId(1)) } else { archive() };
        if let Ok(Some(s)) = dir.start(&options) {
            prop_assert_eq!(s.lsn.0 % MB, 0);
        }
    }
}
