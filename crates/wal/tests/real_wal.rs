//! Validation of real PostgreSQL 15 WAL (fixtures made by `tests/fixtures/make-fixtures.sh`; see
//! `tests/fixtures/README.md` for what each segment holds), including a cross-check against
//! `pg_waldump` when it is installed.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize, XLogSegNo};
use walrelay_wal::{
    inspect_segment_start, validate_segment_file, SegmentCheck, SegmentEnd, StreamState,
    ValidatorConfig, WalError, WalValidator,
};

const SEG: u64 = 1024 * 1024;
/// Segments 0/700000 .. 0/B00000 on timeline 1.
const FIRST_SEGNO: u64 = 7;
const LAST_SEGNO: u64 = 0xB;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn seg_size() -> WalSegmentSize {
    WalSegmentSize::new(SEG).unwrap()
}

fn segment_id(segno: u64) -> SegmentId {
    SegmentId::new(TimelineId(1), XLogSegNo(segno))
}

fn load(segno: u64) -> Vec<u8> {
    let name = segment_id(segno).file_name(seg_size());
    let f = std::fs::File::open(fixtures().join(format!("{name}.gz"))).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out.len() as u64, SEG, "{name}");
    out
}

fn system_identifier() -> u64 {
    std::fs::read_to_string(fixtures().join("system_identifier"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn check() -> SegmentCheck {
    SegmentCheck {
        page_magic: Some(0xD110),
        system_identifier: Some(system_identifier()),
        ..SegmentCheck::new(seg_size())
    }
}

/// All fixture segments back to back, starting at 0/700000.
fn all_segments() -> Vec<u8> {
    (FIRST_SEGNO..=LAST_SEGNO).flat_map(load).collect()
}

fn stream_config() -> ValidatorConfig {
    ValidatorConfig {
        page_magic: Some(0xD110),
        system_identifier: Some(system_identifier()),
        timeline: Some(TimelineId(1)),
        ..ValidatorConfig::new(seg_size(), Lsn(FIRST_SEGNO * SEG))
    }
}

/// Feeds `bytes` in pieces of the given sizes (cycled); returns the validator and the result.
fn feed_chunked(bytes: &[u8], sizes: &[usize]) -> (WalValidator, Result<(), WalError>) {
    let mut v = WalValidator::new(stream_config()).unwrap();
    let mut off = 0;
    let mut i = 0;
    while off < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - off);
        let r = v.feed(v.position(), &bytes[off..off + n]);
        if r.is_err() {
            return (v, r);
        }
        off += n;
        i += 1;
    }
    (v, Ok(()))
}

#[test]
fn first_page_identifies_each_segment() {
    for segno in FIRST_SEGNO..=LAST_SEGNO {
        let bytes = load(segno);
        let h = inspect_segment_start(&bytes[..8192]).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.pageaddr, Lsn(segno * SEG));
        assert_eq!(h.system_identifier, system_identifier());
        assert_eq!(h.segment_size as u64, SEG);
        assert_eq!(h.block_size, 8192);
        assert_eq!(h.timeline, TimelineId(1));
        h.check_segment(segment_id(segno), seg_size(), Some(system_identifier()))
            .unwrap();
        // The same file under the next segment's name is caught.
        assert!(matches!(
            h.check_segment(segment_id(segno + 1), seg_size(), None),
            Err(WalError::PageAddrMismatch { .. })
        ));
    }
}

#[test]
fn segment_reports_match_what_postgres_wrote() {
    // Values from pg_waldump 15 at generation time (see tests/fixtures/README.md).
    let r = validate_segment_file(&load(7), segment_id(7), &check()).unwrap();
    assert_eq!(r.end, SegmentEnd::Complete);
    assert_eq!(r.records, 1572);
    assert_eq!(r.last_record, Some(Lsn(0x76_B388)));
    // The 3.2 MB logical message starts here and runs through segments 8 and 9 into A.
    assert_eq!(r.continues_into_next, Some(Lsn(0x76_B3B0)));
    assert_eq!(r.valid_end, Lsn(0x76_B3B0));
    assert_eq!(r.contrecord_end, None);
    assert_eq!(r.header.unwrap().system_identifier, system_identifier());

    for segno in [8, 9] {
        // Nothing but continuation data: nothing to check but page headers.
        let r = validate_segment_file(&load(segno), segment_id(segno), &check()).unwrap();
        assert_eq!(r.end, SegmentEnd::Complete);
        assert_eq!(r.records, 0);
        assert_eq!(r.contrecord_end, None);
        assert_eq!(r.continues_into_next, None);
        assert_eq!(r.valid_end, Lsn((segno + 1) * SEG));
    }

    let r = validate_segment_file(&load(0xA), segment_id(0xA), &check()).unwrap();
    assert_eq!(r.end, SegmentEnd::Complete);
    assert_eq!(r.records, 603);
    assert_eq!(r.switch, Some(Lsn(0xA8_6C68)));
    assert_eq!(r.last_record, Some(Lsn(0xA8_6C68)));
    assert!(r.contrecord_end.unwrap() > Lsn(0xA0_0028));
    assert_eq!(r.valid_end, Lsn(0xB0_0000));

    // The segment the server was writing: zeros after the last record.
    let r = validate_segment_file(&load(0xB), segment_id(0xB), &check()).unwrap();
    assert_eq!(r.records, 121);
    assert_eq!(r.last_record, Some(Lsn(0xB0_2020)));
    match &r.end {
        SegmentEnd::EndOfWal { at, cause } => {
            assert_eq!(*at, Lsn(0xB0_2048));
            assert_eq!(
                *cause,
                WalError::EndOfWal {
                    lsn: Lsn(0xB0_2048)
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.valid_end, Lsn(0xB0_2048));
    assert!(!r.is_complete());
}

#[test]
fn streaming_all_segments_checks_the_huge_record() {
    let bytes = all_segments();
    let mut v = WalValidator::new(stream_config()).unwrap();
    let err = v.feed(Lsn(FIRST_SEGNO * SEG), &bytes).unwrap_err();
    assert_eq!(
        err,
        WalError::EndOfWal {
            lsn: Lsn(0xB0_2048)
        }
    );
    // Each segment's records plus the record spanning 7..A, checked by CRC this time.
    assert_eq!(v.records(), 1572 + 1 + 603 + 121);
    assert_eq!(v.validated_lsn(), Lsn(0xB0_2048));
    assert_eq!(v.last_switch(), Some(Lsn(0xA8_6C68)));

    // The valid prefix alone (as streamed by a server) is accepted entirely.
    let mut v = WalValidator::new(stream_config()).unwrap();
    v.feed(Lsn(FIRST_SEGNO * SEG), &bytes[..(0xB0_2042 - 0x70_0000)])
        .unwrap();
    assert_eq!(v.validated_lsn(), Lsn(0xB0_2042));
    assert_eq!(v.state(), StreamState::BetweenRecords);
}

#[test]
fn stream_starting_mid_record_skips_the_tail() {
    // Start at segment 8: the huge record's head is not in the stream.
    let bytes: Vec<u8> = (8..=0xA).flat_map(load).collect();
    let mut cfg = stream_config();
    cfg.start_lsn = Lsn(8 * SEG);
    let mut v = WalValidator::new(cfg).unwrap();
    v.feed(cfg.start_lsn, &bytes[..SEG as usize]).unwrap();
    assert!(matches!(v.state(), StreamState::SkippingContrecord { .. }));
    assert_eq!(v.validated_lsn(), Lsn(9 * SEG));
    v.feed(v.position(), &bytes[SEG as usize..]).unwrap();
    assert_eq!(v.records(), 603);
    assert_eq!(v.validated_lsn(), Lsn(0xB0_0000));
}

#[test]
fn flipped_record_byte_is_a_crc_error_at_that_record() {
    let mut bytes = load(7);
    // Inside the body of the second record (0/700048, 42 bytes).
    bytes[0x48 + 30] ^= 0x01;
    let err = validate_segment_file(&bytes, segment_id(7), &check()).unwrap_err();
    assert!(
        matches!(err, WalError::CrcMismatch { lsn, .. } if lsn == Lsn(0x70_0048)),
        "{err}"
    );
    assert!(err.to_string().contains("0/700048"), "{err}");

    // A byte of the huge record in segment 9: found when the record completes in segment A.
    let mut all = all_segments();
    all[(9 * SEG - 7 * SEG) as usize + 5000] ^= 0x80;
    let (v, r) = feed_chunked(&all, &[65536]);
    assert!(
        matches!(r, Err(WalError::CrcMismatch { lsn, .. }) if lsn == Lsn(0x76_B3B0)),
        "{r:?}"
    );
    assert_eq!(v.validated_lsn(), Lsn(0x76_B3B0));
}

#[test]
fn corrupted_page_headers_are_named() {
    let page = 3 * 8192;
    let lsn = Lsn(7 * SEG + page as u64);

    let mut b = load(7);
    b[page] ^= 0x01; // 0xD110 -> 0xD111
    assert_eq!(
        validate_segment_file(&b, segment_id(7), &check()).unwrap_err(),
        WalError::BadPageMagic {
            lsn,
            found: 0xD111,
            expected: Some(0xD110)
        }
    );

    let mut b = load(7);
    b[page + 8..page + 16].copy_from_slice(&(lsn.0 + 0x10_0000).to_le_bytes());
    assert_eq!(
        validate_segment_file(&b, segment_id(7), &check()).unwrap_err(),
        WalError::PageAddrMismatch {
            lsn,
            found: Lsn(lsn.0 + 0x10_0000)
        }
    );
    // A page from an earlier position after valid WAL is what a recycled segment looks like: the
    // end of WAL, not an error — unless it is the first page.
    let mut b = load(7);
    b[page + 8..page + 16].copy_from_slice(&(lsn.0 - 0x10_0000).to_le_bytes());
    let r = validate_segment_file(&b, segment_id(7), &check()).unwrap();
    assert!(matches!(r.end, SegmentEnd::EndOfWal { at, .. } if at == lsn));
    let mut b = load(7);
    b[8..16].copy_from_slice(&(6 * SEG).to_le_bytes());
    assert!(matches!(
        validate_segment_file(&b, segment_id(7), &check()),
        Err(WalError::PageAddrMismatch { .. })
    ));

    let mut b = load(7);
    b[page + 4] = 2; // page timeline 2 in a timeline-1 segment
    assert_eq!(
        validate_segment_file(&b, segment_id(7), &check()).unwrap_err(),
        WalError::TimelineAhead {
            lsn,
            found: TimelineId(2),
            expected: TimelineId(1)
        }
    );
    // As a timeline-2 segment: pages 0..2 on timeline 2, page 3 back on 1.
    let mut b = load(7);
    for p in 0..3 {
        b[p * 8192 + 4] = 2;
    }
    assert_eq!(
        validate_segment_file(&b, SegmentId::new(TimelineId(2), XLogSegNo(7)), &check())
            .unwrap_err(),
        WalError::TimelineBackwards {
            lsn,
            found: TimelineId(1),
            previous: TimelineId(2)
        }
    );

    let mut other = check();
    other.system_identifier = Some(system_identifier() + 1);
    assert_eq!(
        validate_segment_file(&load(7), segment_id(7), &other).unwrap_err(),
        WalError::SystemIdMismatch {
            lsn: Lsn(7 * SEG),
            found: system_identifier(),
            expected: system_identifier() + 1
        }
    );

    let mut pg14 = check();
    pg14.page_magic = Some(0xD10D);
    let e = validate_segment_file(&load(7), segment_id(7), &pg14).unwrap_err();
    assert!(
        e.to_string().contains("PostgreSQL 15's") && e.to_string().contains("(PostgreSQL 14)"),
        "{e}"
    );

    // Flags: a continuation page without XLP_FIRST_IS_CONTRECORD (segment 8, page 1).
    let mut b = load(8);
    b[8192 + 2] &= !0x01;
    assert!(matches!(
        validate_segment_file(&b, segment_id(8), &check()),
        Err(WalError::MissingContrecord { .. })
    ));
    // ... and a wrong xlp_rem_len.
    let mut b = load(8);
    b[8192 + 16] ^= 0x08;
    assert!(matches!(
        validate_segment_file(&b, segment_id(8), &check()),
        Err(WalError::ContrecordLength { .. })
    ));
}

#[test]
fn switch_padding_must_be_zero() {
    let mut b = load(0xA);
    b[0x9_0000 + 100] = 1;
    assert_eq!(
        validate_segment_file(&b, segment_id(0xA), &check()).unwrap_err(),
        WalError::SwitchPaddingNotZero {
            lsn: Lsn(0xA9_0064),
            switch: Lsn(0xA8_6C68)
        }
    );
}

#[test]
fn truncated_and_empty_files() {
    let b = load(7);
    for len in [
        0,
        1,
        23,
        24,
        39,
        40,
        41,
        100,
        8191,
        8192,
        8193,
        20_000,
        SEG as usize - 1,
    ] {
        let r = validate_segment_file(&b[..len], segment_id(7), &check()).unwrap();
        assert_eq!(
            r.end,
            SegmentEnd::Truncated {
                at: Lsn(7 * SEG + len as u64)
            }
        );
        assert!(r.valid_end <= Lsn(7 * SEG + len as u64));
    }
    let mut long = b.clone();
    long.push(0);
    assert!(matches!(
        validate_segment_file(&long, segment_id(7), &check()),
        Err(WalError::SegmentFileTooLong { .. })
    ));
    // A zero-filled file (pre-allocated, or a fresh .partial) holds no WAL yet.
    let r = validate_segment_file(&vec![0; SEG as usize], segment_id(7), &check()).unwrap();
    assert!(matches!(r.end, SegmentEnd::EndOfWal { at, .. } if at == Lsn(7 * SEG)));
    assert_eq!(r.records, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any chunking gives the same verdict and the same progress as one big feed.
    #[test]
    fn chunking_does_not_matter(sizes in prop::collection::vec(1usize..20_000, 1..40)) {
        let bytes = all_segments();
        let (whole, whole_result) = feed_chunked(&bytes, &[bytes.len()]);
        let (v, r) = feed_chunked(&bytes, &sizes);
        prop_assert_eq!(r, whole_result);
        prop_assert_eq!(v.validated_lsn(), whole.validated_lsn());
        prop_assert_eq!(v.records(), whole.records());
    }
}

/// Runs pg_waldump (if installed) on the fixtures and compares record boundaries.
#[test]
fn record_boundaries_match_pg_waldump() {
    let Some(waldump) = find_pg_waldump() else {
        eprintln!("pg_waldump 15 not found; skipping the cross-check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for segno in FIRST_SEGNO..=LAST_SEGNO {
        let name = segment_id(segno).file_name(seg_size());
        std::fs::write(dir.path().join(&name), load(segno)).unwrap();
    }
    let first = segment_id(FIRST_SEGNO).file_name(seg_size());
    let last = segment_id(LAST_SEGNO).file_name(seg_size());
    // pg_waldump exits non-zero at the end of WAL in the last segment; its stdout is what counts.
    let out = Command::new(&waldump)
        .arg("-p")
        .arg(dir.path())
        .arg(&first)
        .arg(&last)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lsns: Vec<Lsn> = stdout
        .lines()
        .filter(|l| l.starts_with("rmgr:"))
        .map(|l| {
            let at = l.find("lsn: ").unwrap() + 5;
            l[at..].split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    let bytes = all_segments();
    let mut v = WalValidator::new(stream_config()).unwrap();
    let mut starts = Vec::new();
    // Feed record by record to collect the start of every validated record.
    let mut off = 0usize;
    while off < bytes.len() {
        let before = v.records();
        let step = 8usize.min(bytes.len() - off);
        if v.feed(v.position(), &bytes[off..off + step]).is_err() {
            break;
        }
        off += step;
        if v.records() != before {
            starts.push(v.last_record().unwrap());
        }
    }
    assert_eq!(
        starts.len(),
        lsns.len(),
        "record count differs from pg_waldump"
    );
    assert_eq!(starts, lsns);
    assert!(String::from_utf8_lossy(&out.stderr).contains("0/B02048"));
}

fn find_pg_waldump() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/lib/postgresql/15/bin/pg_waldump");
    p.exists().then_some(p)
}

#[test]
fn kept_state_continues_into_the_next_segment() {
    // Validated one file at a time, the 3.2 MB record spanning 7..A is never CRC-checked; carrying
    // the validator from one file into the next checks it, as one stream would.
    let (r, mut v) =
        walrelay_wal::validate_segment_file_keeping_state(&load(7), segment_id(7), &check())
            .unwrap();
    assert_eq!(r.continues_into_next, Some(Lsn(0x76_B3B0)));
    for segno in 8..=0xA {
        v.feed(segment_id(segno).start_lsn(seg_size()), &load(segno))
            .unwrap();
    }
    assert_eq!(v.records(), 1572 + 1 + 603);
    assert_eq!(v.validated_lsn(), Lsn(0xB0_0000));

    // A flipped byte in the record's tail (segment 9) passes segment 9's own check, and is
    // caught only by the carried validator, as a CRC mismatch of the record begun in segment 7.
    let mut nine = load(9);
    nine[300_000] ^= 0x01;
    assert!(validate_segment_file(&nine, segment_id(9), &check())
        .unwrap()
        .is_complete());
    let (_, mut v) =
        walrelay_wal::validate_segment_file_keeping_state(&load(7), segment_id(7), &check())
            .unwrap();
    v.feed(Lsn(8 * SEG), &load(8)).unwrap();
    v.feed(Lsn(9 * SEG), &nine).unwrap();
    let err = v.feed(Lsn(0xA * SEG), &load(0xA)).unwrap_err();
    assert!(
        matches!(err, WalError::CrcMismatch { lsn, .. } if lsn == Lsn(0x76_B3B0)),
        "{err}"
    );
}
