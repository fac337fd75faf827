//! [`WalContentCheck`]: the WAL content check behind `walrelay verify`, built on the wal crate.
//!
//! [`crate::verify()`] decompresses every archive file and hands its WAL bytes to a
//! [`SegmentContentCheck`]; this one validates them the way recovery will read them
//! (`xlogreader.c`): every page header (magic, flags, `xlp_pageaddr`, timeline, the long header's
//! system identifier and segment size) and every record's header, prev-link and CRC-32C.
//!
//! # Across segment boundaries
//!
//! One file alone cannot prove everything: the record that runs off the end of segment N has its
//! header and the first part of its CRC'd bytes in N and the rest in N+1, so checked per file its
//! CRC is never computed — and neither is the prev-link of N+1's first record, nor whether N+1
//! comes from the same WAL history at all. verify reads files in parallel and in any order, so
//! instead of streaming the archive through one validator this check keeps, per segment,
//!
//! * the validator as it stands after the segment's last byte (a few hundred bytes: the running
//!   CRC of a record in progress, the last record's start, the pinned magic and system
//!   identifier), and
//! * the segment's *head*: its first bytes up to a little past the end of the record tail it
//!   begins with (typically a few kB; the whole segment when a huge record covers it);
//!
//! and [`SegmentContentCheck::finish`] feeds each head to the previous segment's validator, in
//! segment order, so a record spanning any number of segments is checked end to end. Heads are
//! capped ([`MAX_HEAD_BYTES`] each, [`MAX_HEAD_BYTES_TOTAL`] in all); a boundary whose head did not
//! fit is left to the per-file checks ("where possible"), and counted in
//! [`WalContentCheck::boundaries_skipped`].
//!
//! Boundaries are followed within a timeline only: the first segment of a new timeline begins
//! with a copy of its parent's WAL, whose continuity the per-file check of that copy covers.
//!
//! The system identifier of every segment's long header is compared too: a segment from another
//! cluster passes its own checks, but is reported against the identifier most segments carry.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use walrelay_protocol::{SegmentId, WalSegmentSize, XLogSegNo};
use walrelay_wal::page::LONG_PAGE_HEADER_SIZE;
use walrelay_wal::{
    parse_page_header, validate_segment_file_keeping_state, SegmentCheck, SegmentEnd,
    SegmentReport, WalValidator,
};

use crate::verify::SegmentContentCheck;

/// Largest head kept for one segment (see the module docs): a 16 MB segment that a huge record
/// covers entirely still fits.
pub const MAX_HEAD_BYTES: usize = 16 * 1024 * 1024;
/// Largest total of heads kept for one verify run, so that an archive full of huge records costs
/// bounded memory.
pub const MAX_HEAD_BYTES_TOTAL: usize = 256 * 1024 * 1024;
/// Bytes kept after the end of a continued record's tail so that the next record's header is
/// included: up to 7 bytes of alignment, a short page header (24) and a record header (24).
const NEXT_RECORD_MARGIN: usize = 64;

/// Page-header and record validation of archived WAL; see the module docs.
#[derive(Debug)]
pub struct WalContentCheck {
    check: SegmentCheck,
    state: Mutex<Boundaries>,
}

#[derive(Debug, Default)]
struct Boundaries {
    /// The validator after the last byte of each complete segment that validated to its end.
    ends: BTreeMap<SegmentId, WalValidator>,
    /// The first bytes of each segment (see the module docs).
    heads: BTreeMap<SegmentId, Vec<u8>>,
    head_bytes: usize,
    skipped: u64,
    /// The system identifier in each segment's long header.
    systems: BTreeMap<SegmentId, u64>,
}

impl WalContentCheck {
    /// A check for WAL of `segment_size` segments with 8 kB pages, any PostgreSQL 10–18 magic and
    /// the system identifier the segments themselves carry.
    pub fn new(segment_size: WalSegmentSize) -> Self {
        Self::with_check(SegmentCheck::new(segment_size))
    }

    /// A check with explicit expectations (page size, magic, system identifier).
    pub fn with_check(check: SegmentCheck) -> Self {
        WalContentCheck {
            check,
            state: Mutex::new(Boundaries::default()),
        }
    }

    /// Segment boundaries that could not be checked because their head was over the caps.
    pub fn boundaries_skipped(&self) -> u64 {
        self.lock().skipped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Boundaries> {
        // The state is plain data updated by single inserts: still consistent after a panic
        // elsewhere in a thread that held the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates one file and remembers what the boundary checks need.
    fn validate(
        &self,
        segment: SegmentId,
        bytes: &[u8],
    ) -> Result<(SegmentReport, WalValidator), String> {
        let (report, validator) = validate_segment_file_keeping_state(bytes, segment, &self.check)
            .map_err(|e| e.to_string())?;
        let head_len = self.head_len(&report, bytes);
        let mut st = self.lock();
        if let Some(h) = report.header {
            st.systems.entry(segment).or_insert(h.system_identifier);
        }
        // A segment kept in two formats is checked twice; the first copy's head serves (the
        // duplicate check compares the copies).
        if !st.heads.contains_key(&segment) {
            if head_len <= MAX_HEAD_BYTES && st.head_bytes + head_len <= MAX_HEAD_BYTES_TOTAL {
                st.head_bytes += head_len;
                st.heads.insert(segment, bytes[..head_len].to_vec());
            } else {
                st.skipped += 1;
            }
        }
        Ok((report, validator))
    }

    /// How many leading bytes of a segment the boundary check needs.
    fn head_len(&self, report: &SegmentReport, bytes: &[u8]) -> usize {
        let continues = parse_page_header(bytes).is_ok_and(|h| h.is_contrecord());
        let len = match (continues, report.contrecord_end) {
            (true, Some(end)) => {
                usize::try_from(end.0 - report.start.0).unwrap_or(usize::MAX) + NEXT_RECORD_MARGIN
            }
            // The record begun before covers the whole file.
            (true, None) => bytes.len(),
            (false, _) => LONG_PAGE_HEADER_SIZE + NEXT_RECORD_MARGIN,
        };
        len.min(bytes.len())
    }

    fn seg_size(&self) -> WalSegmentSize {
        self.check.segment_size
    }
}

impl SegmentContentCheck for WalContentCheck {
    fn check(&self, segment: SegmentId, bytes: &[u8]) -> Result<(), String> {
        let (report, validator) = self.validate(segment, bytes)?;
        match report.end {
            SegmentEnd::Complete => {
                if validator.failure().is_none() {
                    self.lock().ends.entry(segment).or_insert(validator);
                }
                Ok(())
            }
            SegmentEnd::Truncated { at } => Err(format!(
                "the WAL ends at {at}, before the end of the segment ({})",
                segment.end_lsn(self.seg_size())
            )),
            SegmentEnd::EndOfWal { at, cause } => Err(format!(
                "valid WAL ends at {at}, but a complete segment must hold WAL to its end ({}): {cause}",
                segment.end_lsn(self.seg_size())
            )),
        }
    }

    fn check_partial(&self, segment: SegmentId, bytes: &[u8]) -> Result<(), String> {
        // Zeros or a cut-off stream after the last record are what a partial segment is.
        self.validate(segment, bytes).map(|_| ())
    }

    fn finish(&self) -> Vec<(SegmentId, String)> {
        let seg = self.seg_size();
        let mut st = self.lock();
        let mut problems = Vec::new();

        // Segments of another cluster: compare with the identifier most segments carry.
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for sys in st.systems.values() {
            *counts.entry(*sys).or_default() += 1;
        }
        if let Some((&majority, _)) = counts.iter().max_by_key(|(sys, n)| (**n, **sys)) {
            for (id, sys) in &st.systems {
                if *sys != majority {
                    problems.push((
                        *id,
                        format!(
                            "WAL from a different database system: system identifier {sys}, but the archive's other segments have {majority}"
                        ),
                    ));
                }
            }
        }

        // Boundaries, in segment order, so that a validator that went through a whole segment
        // replaces that segment's own end state (whose record in progress began before it).
        let ids: Vec<SegmentId> = st.heads.keys().copied().collect();
        for next in ids {
            let Some(prev_segno) = next.segno.0.checked_sub(1) else {
                continue;
            };
            let prev = SegmentId::new(next.timeline, XLogSegNo(prev_segno));
            let Some(mut v) = st.ends.get(&prev).cloned() else {
                continue;
            };
            let Some(head) = st.heads.get(&next) else {
                continue;
            };
            let start = next.start_lsn(seg);
            match v.feed(start, head) {
                Ok(()) => {
                    if head.len() as u64 == seg.as_u64() && st.ends.contains_key(&next) {
                        st.ends.insert(next, v);
                    }
                }
                // Zeros after the last record: the end of WAL (a partial segment), which the
                // per-file check judges.
                Err(e) if e.is_end_of_wal() => {}
                Err(e) => {
                    let at = e.lsn().unwrap_or(start);
                    // The segment holding the error's LSN: for a CRC mismatch, the one where
                    // the record begins, however many segments it spans.
                    let blame = if at < start {
                        SegmentId::new(next.timeline, seg.segno(at))
                    } else {
                        next
                    };
                    problems.push((
                        blame,
                        format!(
                            "{e}; found by reading the WAL on from {} into {}: it does not continue across the segment boundary",
                            prev.file_name(seg),
                            next.file_name(seg),
                        ),
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;
    use walrelay_protocol::{Lsn, TimelineId};
    use walrelay_wal::synth::{SynthConfig, WalBuilder};

    const MB: u64 = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB).unwrap()
    }

    fn id(segno: u64) -> SegmentId {
        SegmentId::new(TimelineId(1), XLogSegNo(segno))
    }

    /// The wal crate's real PostgreSQL 15 segments 7..=B (a 3.2 MB record spans 7..A).
    fn fixture(segno: u64) -> Vec<u8> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wal/tests/fixtures");
        let f =
            std::fs::File::open(dir.join(format!("{}.gz", id(segno).file_name(seg())))).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Synthetic WAL over `segments` segments from segment 2, with records that cross every
    /// boundary.
    fn synthetic(segments: u64, sys: u64) -> Vec<Vec<u8>> {
        let cfg = SynthConfig {
            system_identifier: sys,
            ..SynthConfig::default()
        };
        let start = Lsn(2 * MB);
        let mut b = WalBuilder::new(cfg, start);
        b.set_prev(Lsn(2 * MB - 0x100));
        let mut i = 0u32;
        while b.position().0 < start.0 + segments * MB + 3000 {
            let body: Vec<u8> = (0..(1000 + (i * 37) % 9000))
                .map(|x| (x ^ i) as u8)
                .collect();
            b.record(0x0A, 0x10, &body);
            i += 1;
        }
        let bytes = b.into_bytes();
        (0..segments)
            .map(|k| bytes[(k * MB) as usize..((k + 1) * MB) as usize].to_vec())
            .collect()
    }

    #[test]
    fn real_segments_pass_and_the_spanning_record_is_checked() {
        let c = WalContentCheck::new(seg());
        // Any order: verify reads in parallel.
        for segno in [9, 7, 0xA, 8] {
            c.check(id(segno), &fixture(segno)).unwrap();
        }
        // The segment being written when the fixtures were taken: a partial.
        c.check_partial(id(0xB), &fixture(0xB)).unwrap();
        assert_eq!(c.finish(), vec![]);
        assert_eq!(c.boundaries_skipped(), 0);
        // Not complete: a complete segment must hold WAL to its end.
        let c = WalContentCheck::new(seg());
        let e = c.check(id(0xB), &fixture(0xB)).unwrap_err();
        assert!(e.contains("valid WAL ends at 0/B02048"), "{e}");
    }

    #[test]
    fn damage_only_visible_across_files_is_found() {
        // A flipped byte in the 3.2 MB record's tail (segment 9) passes every per-file check.
        let c = WalContentCheck::new(seg());
        let mut nine = fixture(9);
        nine[300_000] ^= 0x01;
        for segno in 7..=0xA {
            let bytes = if segno == 9 {
                nine.clone()
            } else {
                fixture(segno)
            };
            c.check(id(segno), &bytes).unwrap();
        }
        let p = c.finish();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, id(7), "blamed on the record's first segment");
        assert!(
            p[0].1.contains("checksum in record at 0/76B3B0"),
            "{}",
            p[0].1
        );
        assert!(p[0].1.contains("000000010000000000000009"), "{}", p[0].1);
    }

    #[test]
    fn synthetic_boundaries_and_foreign_segments() {
        let good = synthetic(4, 42);
        let c = WalContentCheck::new(seg());
        for (k, s) in good.iter().enumerate() {
            c.check(id(2 + k as u64), s).unwrap();
        }
        assert_eq!(c.finish(), vec![]);

        // Segment 4 from another run of the same cluster: page headers are fine and its own
        // records check out, but it does not continue segment 3's last record.
        let other = synthetic(4, 42);
        let mut shifted = WalBuilder::new(
            SynthConfig {
                system_identifier: 42,
                ..SynthConfig::default()
            },
            Lsn(4 * MB),
        );
        shifted.set_prev(Lsn(4 * MB - 0x100));
        while shifted.position().0 < 5 * MB + 10 {
            shifted.record(0x0A, 0x10, &[7u8; 500]);
        }
        let foreign = shifted.into_bytes()[..MB as usize].to_vec();
        let c = WalContentCheck::new(seg());
        c.check(id(2), &other[0]).unwrap();
        c.check(id(3), &other[1]).unwrap();
        c.check(id(4), &foreign).unwrap();
        let p = c.finish();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("segment boundary"), "{}", p[0].1);

        // A segment of another cluster in the middle.
        let c = WalContentCheck::new(seg());
        let alien = synthetic(4, 99);
        c.check(id(2), &good[0]).unwrap();
        c.check(id(3), &good[1]).unwrap();
        c.check(id(4), &alien[2]).unwrap();
        c.check(id(5), &good[3]).unwrap();
        let p = c.finish();
        assert!(
            p.iter()
                .any(|(s, d)| *s == id(4) && d.contains("different database system")),
            "{p:?}"
        );
    }

    #[test]
    fn per_file_damage_names_the_lsn() {
        let c = WalContentCheck::new(seg());
        let mut s = fixture(7);
        // Inside the body of the second record (0/700048, 42 bytes).
        s[0x48 + 30] ^= 0x01;
        let e = c.check(id(7), &s).unwrap_err();
        assert!(e.contains("checksum in record at 0/700048"), "{e}");
        // Garbage, empty and oversized input are errors, never panics.
        assert!(c.check(id(0xA), &[]).is_err());
        assert!(c.check(id(0xA), &[0xFF; 100]).is_err());
        assert!(c.check(id(0xA), &vec![0u8; MB as usize + 1]).is_err());
        assert!(c.check_partial(id(0xA), &[0xFF; 100]).is_err());
        // A compressed partial may stop anywhere, even inside the first page header.
        c.check_partial(id(7), &fixture(7)[..2]).unwrap();
        // A partial that holds no WAL yet (pre-padded zeros) is fine.
        c.check_partial(id(0xC), &vec![0u8; MB as usize]).unwrap();
        let _ = c.finish();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Damage anywhere, of any kind, in any of three consecutive segments: never a panic, and
        /// a flipped byte in a record or page header is always reported somewhere.
        #[test]
        fn damage_is_reported_never_a_panic(
            which in 0usize..3,
            at in 0usize..(MB as usize),
            xor in 1u8..=255,
            cut in proptest::option::of(0usize..(MB as usize)),
        ) {
            let mut segs = synthetic(3, 42);
            segs[which][at] ^= xor;
            if let Some(c) = cut {
                segs[which].truncate(c);
            }
            let c = WalContentCheck::new(seg());
            let mut reported = false;
            for (k, s) in segs.iter().enumerate() {
                let r = if k == 2 { c.check_partial(id(2 + k as u64), s) } else { c.check(id(2 + k as u64), s) };
                reported |= r.is_err();
            }
            reported |= !c.finish().is_empty();
            // Bytes no check covers, in PostgreSQL either: the padding after the 20 bytes of a
            // page header's fields, and the MAXALIGN padding after a record.
            let header_padding = (20..24).contains(&(at % 8192));
            if cut.is_none() && which < 2 && !header_padding {
                proptest::prop_assert!(
                    reported || is_alignment_padding(&synthetic(3, 42)[which], which, at)
                );
            }
        }
    }

    /// Whether byte `at` of a synthetic segment is MAXALIGN padding between records (not covered
    /// by any CRC, and not checked by PostgreSQL either).
    fn is_alignment_padding(seg_bytes: &[u8], which: usize, at: usize) -> bool {
        let mut flipped = seg_bytes.to_vec();
        flipped[at] ^= 0xFF;
        let segment = id(2 + which as u64);
        validate_segment_file_keeping_state(&flipped, segment, &SegmentCheck::new(seg())).is_ok()
    }

    #[test]
    fn heads_over_the_cap_are_skipped_not_checked() {
        let c = WalContentCheck::new(seg());
        {
            let mut st = c.lock();
            st.head_bytes = MAX_HEAD_BYTES_TOTAL;
        }
        c.check(id(7), &fixture(7)).unwrap();
        c.check(id(8), &fixture(8)).unwrap();
        assert_eq!(c.boundaries_skipped(), 2);
        assert_eq!(c.finish(), vec![]);
    }
}
