//! The validator against synthetic WAL with chosen layouts: split record headers, records spanning
//! pages and segments, overwritten contrecords, switch padding, timelines, arbitrary chunking and
//! corruption, and arbitrary bytes.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_wal::synth::{SynthConfig, WalBuilder};
use walrelay_wal::{StreamState, ValidatorConfig, WalError, WalValidator};

const MB: u64 = 1024 * 1024;

fn synth(block_size: u32) -> SynthConfig {
    SynthConfig {
        block_size,
        ..SynthConfig::default()
    }
}

fn validator_for(s: &SynthConfig, start: Lsn) -> WalValidator {
    WalValidator::new(ValidatorConfig {
        block_size: s.block_size,
        page_magic: Some(s.page_magic),
        system_identifier: Some(s.system_identifier),
        timeline: Some(s.timeline),
        ..ValidatorConfig::new(s.segment_size, start)
    })
    .unwrap()
}

fn feed_chunked(v: &mut WalValidator, bytes: &[u8], sizes: &[usize]) -> Result<(), WalError> {
    let mut off = 0;
    let mut i = 0;
    let mut last_validated = v.validated_lsn();
    while off < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - off);
        let r = v.feed(v.position(), &bytes[off..off + n]);
        // Progress is monotonic and never beyond what was fed.
        assert!(v.validated_lsn() >= last_validated);
        assert!(v.validated_lsn() <= v.position());
        last_validated = v.validated_lsn();
        r?;
        off += n;
        i += 1;
    }
    Ok(())
}

/// Offset in `b`'s image of byte `k` of the record starting at `start` (skipping page headers).
fn record_byte_offset(b: &WalBuilder, s: &SynthConfig, start: Lsn, k: u64) -> usize {
    let page = u64::from(s.block_size);
    let seg = s.segment_size.as_u64();
    let mut pos = start.0;
    let mut left = k;
    loop {
        let page_end = (pos / page + 1) * page;
        let room = page_end - pos;
        if left < room {
            return (pos + left - b.start().0) as usize;
        }
        left -= room;
        pos = page_end + if page_end % seg == 0 { 40 } else { 24 };
    }
}

#[derive(Clone, Debug)]
enum Op {
    Record(usize),
    Switch,
    Aborted(usize),
    Timeline,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0usize..120).prop_map(Op::Record),
        8 => (100usize..3000).prop_map(Op::Record),
        3 => (3000usize..40_000).prop_map(Op::Record),
        1 => (200_000usize..1_200_000).prop_map(Op::Record),
        1 => Just(Op::Switch),
        1 => (0usize..200).prop_map(Op::Aborted),
        1 => Just(Op::Timeline),
    ]
}

struct Built {
    cfg: SynthConfig,
    builder: WalBuilder,
    records: Vec<(Lsn, usize)>,
    expected_validated: Lsn,
}

fn build(ops: &[Op], block_size: u32, start_pages_before_segment_end: u64) -> Built {
    let mut cfg = synth(block_size);
    let start = Lsn(5 * MB - start_pages_before_segment_end * u64::from(block_size));
    let mut b = WalBuilder::new(cfg, start);
    b.set_prev(Lsn(start.0 - 0x100));
    let mut records = Vec::new();
    let mut expected_validated = start;
    let mut abandoned = false;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Record(n) => {
                let body: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
                let at = b.record(0x0A, 0x10, &body);
                records.push((at, 24 + n));
                expected_validated = b.position();
                abandoned = false;
            }
            Op::Switch => {
                let at = b.switch();
                records.push((at, 24));
                expected_validated = b.position();
                abandoned = false;
            }
            Op::Aborted(n) => {
                let at = b.aborted_record(1_000_000, &vec![0x5A; n]);
                // An abandoned record is not vouched for until a record after it passes its
                // checks: progress stays at the first of a run of them.
                if !abandoned {
                    expected_validated = at;
                }
                abandoned = true;
            }
            Op::Timeline => {
                cfg.timeline = TimelineId(cfg.timeline.0 + 1);
                b.set_timeline(cfg.timeline);
            }
        }
    }
    Built {
        cfg,
        builder: b,
        records,
        expected_validated,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Synthetic WAL of any layout validates, with the right record count and progress, however
    /// it is chunked.
    #[test]
    fn any_layout_any_chunking(
        ops in prop::collection::vec(op(), 1..60),
        block_size in prop::sample::select(vec![1024u32, 8192, 32768]),
        pages_before in 0u64..6,
        sizes in prop::collection::vec(1usize..9000, 1..20),
    ) {
        let built = build(&ops, block_size, pages_before);
        let bytes = built.builder.bytes();
        let start = built.builder.start();
        let mut whole = validator_for(&built.cfg, start);
        whole.feed(start, bytes).unwrap();
        prop_assert_eq!(whole.records(), built.records.len() as u64);
        prop_assert_eq!(whole.validated_lsn(), built.expected_validated);

        let mut v = validator_for(&built.cfg, start);
        feed_chunked(&mut v, bytes, &sizes).unwrap();
        prop_assert_eq!(v.records(), whole.records());
        prop_assert_eq!(v.validated_lsn(), whole.validated_lsn());
        prop_assert_eq!(v.state(), whole.state());
    }

    /// Any flipped bit inside any record is caught at that record — or, when it makes the record
    /// claim more bytes than the stream holds, leaves it incomplete — and never counts as validated.
    #[test]
    fn flipped_record_bit_is_caught(
        ops in prop::collection::vec(op(), 1..30),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        sizes in prop::collection::vec(1usize..9000, 1..8),
    ) {
        let built = build(&ops, 8192, 2);
        prop_assume!(!built.records.is_empty());
        let (rec, len) = built.records[pick.index(built.records.len())];
        let k = at.index(len) as u64;
        let mut bytes = built.builder.bytes().to_vec();
        let off = record_byte_offset(&built.builder, &built.cfg, rec, k);
        bytes[off] ^= 1 << bit;
        let start = built.builder.start();
        let mut v = validator_for(&built.cfg, start);
        let r = feed_chunked(&mut v, &bytes, &sizes);
        prop_assert!(v.validated_lsn() <= rec);
        match r {
            // Not the length: the record's own checks or CRC name it.
            Err(e) if k >= 4 => prop_assert_eq!(e.lsn(), Some(rec), "{}", e),
            Err(_) => {}
            Ok(()) => {
                prop_assert!(k < 4, "corruption went unnoticed");
                prop_assert_eq!(v.state(), StreamState::InRecord { start: rec });
            }
        }
    }

    /// Arbitrary bytes, configurations and chunkings never panic, and progress stays sane.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..20_000),
        start_page in 0u64..300,
        mid_page in prop::option::of(3u64..1024),
        sizes in prop::collection::vec(1usize..5000, 1..10),
        magic in prop::option::of(any::<u16>()),
    ) {
        let page = 8192u64;
        let start = Lsn(start_page * page + mid_page.map_or(0, |m| m * 8));
        let cfg = ValidatorConfig {
            page_magic: magic,
            ..ValidatorConfig::new(WalSegmentSize::new(MB).unwrap(), start)
        };
        if let Ok(mut v) = WalValidator::new(cfg) {
            let _ = feed_chunked(&mut v, &bytes, &sizes);
        }
    }

    /// Valid-looking WAL with one random byte overwritten anywhere never panics either.
    #[test]
    fn mutated_wal_never_panics(
        ops in prop::collection::vec(op(), 1..20),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        sizes in prop::collection::vec(1usize..9000, 1..8),
    ) {
        let built = build(&ops, 8192, 1);
        let mut bytes = built.builder.bytes().to_vec();
        prop_assume!(!bytes.is_empty());
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let mut v = validator_for(&built.cfg, built.builder.start());
        let _ = feed_chunked(&mut v, &bytes, &sizes);
    }
}

#[test]
fn every_truncation_is_safe() {
    let built = build(
        &[
            Op::Record(10),
            Op::Record(9000),
            Op::Record(0),
            Op::Switch,
            Op::Record(50),
        ],
        1024,
        3,
    );
    let bytes = built.builder.bytes();
    let start = built.builder.start();
    let mut previous = start;
    // Every length through the records, then a sample through the switch padding.
    let records_end = 12_000.min(bytes.len());
    let lengths = (0..records_end).chain((records_end..bytes.len()).step_by(4093));
    for len in lengths.chain([bytes.len()]) {
        let mut v = validator_for(&built.cfg, start);
        v.feed(start, &bytes[..len]).unwrap();
        assert!(v.validated_lsn() <= Lsn(start.0 + len as u64));
        assert!(v.validated_lsn() >= previous);
        previous = v.validated_lsn();
    }
    assert_eq!(previous, built.expected_validated);
}

#[test]
fn record_header_split_across_pages() {
    let s = synth(8192);
    // Fill the first page so that 8, then 16, bytes remain before the page end.
    for left in [8usize, 16] {
        let mut b = WalBuilder::new(s, Lsn(3 * MB));
        let first_room = 8192 - 40;
        b.record(1, 0, &vec![1; first_room - left - 24]);
        assert_eq!(b.position().0 % 8192, (8192 - left) as u64);
        let split = b.record(1, 0, &[7; 100]);
        assert_eq!(split.0 % 8192, (8192 - left) as u64);
        b.record(1, 0, &[8; 10]);
        let mut v = validator_for(&s, b.start());
        for chunk in [1usize, 3, 8192] {
            let mut v2 = validator_for(&s, b.start());
            feed_chunked(&mut v2, b.bytes(), &[chunk]).unwrap();
            assert_eq!(v2.records(), 3);
        }
        v.feed(b.start(), b.bytes()).unwrap();
        assert_eq!(v.records(), 3);
        assert_eq!(v.validated_lsn(), b.position());

        // A wrong xlp_rem_len on the page that continues the split header.
        let mut bad = b.bytes().to_vec();
        bad[8192 + 16] ^= 1;
        let mut v = validator_for(&s, b.start());
        assert!(matches!(
            v.feed(b.start(), &bad),
            Err(WalError::ContrecordLength { lsn, .. }) if lsn == Lsn(3 * MB + 8192)
        ));
    }
}

#[test]
fn overwritten_contrecord_is_abandoned() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(2 * MB));
    let before = b.record(1, 0, &[1; 100]);
    let aborted = b.aborted_record(50_000, &[2; 500]);
    let next = b.record(0, 0xD0, &[3; 16]);
    assert_eq!(next.0, 2 * MB + 8192 + 24);
    let mut v = validator_for(&s, b.start());
    v.feed(b.start(), b.bytes()).unwrap();
    assert_eq!(v.records(), 2);
    assert_eq!(v.last_record(), Some(next));
    assert_eq!(v.validated_lsn(), b.position());
    assert!(before < aborted);

    // Without the flag the continuation is missing.
    let mut bad = b.bytes().to_vec();
    bad[8192 + 2] &= !0x08;
    let mut v = validator_for(&s, b.start());
    assert_eq!(
        v.feed(b.start(), &bad),
        Err(WalError::MissingContrecord {
            lsn: Lsn(2 * MB + 8192),
            record: Some(aborted)
        })
    );
    assert_eq!(v.validated_lsn(), aborted);
}

#[test]
fn switch_padding_old_and_new_style() {
    for zero_headers in [true, false] {
        let s = synth(8192);
        let mut b = WalBuilder::new(s, Lsn(4 * MB - 3 * 8192));
        b.zero_switch_page_headers(zero_headers);
        b.record(1, 0, &[1; 30]);
        let sw = b.switch();
        assert_eq!(b.position(), Lsn(4 * MB));
        let after = b.record(1, 0, &[2; 30]);
        assert_eq!(after, Lsn(4 * MB + 40));
        let mut v = validator_for(&s, b.start());
        feed_chunked(&mut v, b.bytes(), &[1000]).unwrap();
        assert_eq!(v.records(), 3);
        assert_eq!(v.last_switch(), Some(sw));

        // Streaming stops in the padding: all of it counts as validated.
        let mut v = validator_for(&s, b.start());
        v.feed(b.start(), &b.bytes()[..3 * 8192 - 100]).unwrap();
        assert_eq!(v.state(), StreamState::SwitchPadding { switch: sw });
        assert_eq!(v.validated_lsn(), Lsn(4 * MB - 100));

        // A page header inside the padding that claims a continuation is wrong.
        if !zero_headers {
            let mut bad = b.bytes().to_vec();
            bad[2 * 8192 + 2] |= 0x01;
            let mut v = validator_for(&s, b.start());
            assert!(matches!(
                v.feed(b.start(), &bad),
                Err(WalError::UnexpectedContrecord { .. })
            ));
        }
    }
}

#[test]
fn unexpected_contrecord_flag() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    // Exactly fills the first page after the long header.
    b.record(1, 0, &vec![1; 8192 - 40 - 24]);
    assert_eq!(b.position(), Lsn(MB + 8192));
    b.record(1, 0, &[2; 10]);
    let mut bad = b.bytes().to_vec();
    bad[8192 + 2] |= 0x01;
    let mut v = validator_for(&s, b.start());
    assert_eq!(
        v.feed(b.start(), &bad),
        Err(WalError::UnexpectedContrecord {
            lsn: Lsn(MB + 8192 + 24)
        })
    );
}

#[test]
fn start_mid_page_at_a_record() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 100]);
    let second = b.record(1, 0, &[2; 20_000]);
    b.record(1, 0, &[3; 5]);
    let off = (second.0 - MB) as usize;
    let mut cfg = ValidatorConfig::new(s.segment_size, second);
    cfg.system_identifier = Some(s.system_identifier);
    let mut v = WalValidator::new(cfg).unwrap();
    v.feed(second, &b.bytes()[off..]).unwrap();
    assert_eq!(v.records(), 2);
    assert_eq!(v.validated_lsn(), b.position());

    for bad in [MB + 4, MB + 8, MB + 32, MB + 8192 + 8, MB + 8192 + 100 + 3] {
        assert_eq!(
            WalValidator::new(ValidatorConfig::new(s.segment_size, Lsn(bad))).unwrap_err(),
            WalError::InvalidStart { lsn: Lsn(bad) },
            "{bad:#x}"
        );
    }
}

#[test]
fn start_at_a_page_inside_a_record() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 100]);
    b.record(1, 0, &[2; 30_000]); // spans pages 0..4
    let last = b.record(1, 0, &[3; 5]);
    let mut v = validator_for(&s, Lsn(MB + 8192));
    v.feed(Lsn(MB + 8192), &b.bytes()[8192..]).unwrap();
    assert_eq!(v.records(), 1);
    assert_eq!(v.last_record(), Some(last));
    // The record after the skipped tail starts at the tail's end, 8-byte aligned.
    let tail_end = v.skipped_contrecord_end().unwrap();
    assert!(tail_end <= last && last.0 - tail_end.0 < 8);
}

#[test]
fn timelines_only_go_up_to_the_streamed_one() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 9000]);
    b.set_timeline(TimelineId(2));
    b.record(1, 0, &[1; 9000]);
    let mut v = validator_for(&s, b.start()); // streaming timeline 1
    assert!(matches!(
        v.feed(b.start(), b.bytes()),
        Err(WalError::TimelineAhead {
            found: TimelineId(2),
            expected: TimelineId(1),
            ..
        })
    ));
    let mut cfg = ValidatorConfig::new(s.segment_size, b.start());
    cfg.timeline = Some(TimelineId(2));
    let mut v = WalValidator::new(cfg).unwrap();
    v.feed(b.start(), b.bytes()).unwrap();
    assert_eq!(v.latest_timeline(), Some(TimelineId(2)));
}

#[test]
fn cluster_identity_mismatches() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(16 * MB));
    b.record(1, 0, &[1; 10]);

    let mut v = WalValidator::new(ValidatorConfig::new(
        WalSegmentSize::new(16 * MB).unwrap(),
        b.start(),
    ))
    .unwrap();
    assert_eq!(
        v.feed(b.start(), b.bytes()),
        Err(WalError::SegmentSizeMismatch {
            lsn: Lsn(16 * MB),
            found: MB as u32,
            expected: 16 * MB as u32
        })
    );

    let mut cfg = ValidatorConfig::new(s.segment_size, b.start());
    cfg.block_size = 4096;
    let mut v = WalValidator::new(cfg).unwrap();
    assert!(matches!(
        v.feed(b.start(), b.bytes()),
        Err(WalError::BlockSizeMismatch {
            found: 8192,
            expected: 4096,
            ..
        })
    ));

    // Magic: learned from the first page, then pinned.
    let mut b14 = WalBuilder::new(
        SynthConfig {
            page_magic: 0xD10D,
            ..s
        },
        Lsn(16 * MB),
    );
    b14.record(1, 0, &[1; 10]);
    let mut v = WalValidator::new(ValidatorConfig::new(s.segment_size, b14.start())).unwrap();
    v.feed(b14.start(), b14.bytes()).unwrap();
    assert_eq!(v.page_magic(), Some(0xD10D));
    assert_eq!(v.system_identifier(), Some(s.system_identifier));
    let mut unknown = b14.bytes().to_vec();
    unknown[0] = 0x42;
    let mut v = WalValidator::new(ValidatorConfig::new(s.segment_size, b14.start())).unwrap();
    assert_eq!(
        v.feed(b14.start(), &unknown),
        Err(WalError::BadPageMagic {
            lsn: Lsn(16 * MB),
            found: 0xD142,
            expected: None
        })
    );
}

#[test]
fn bad_record_lengths() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    let r = b.record(1, 0, &[1; 10]);
    let off = (r.0 - MB) as usize;
    for (len, want) in [
        (0u32, WalError::EndOfWal { lsn: r }),
        (
            23,
            WalError::InvalidRecordLength {
                lsn: r,
                len: 23,
                min: 24,
                max: 0x3FFF_FFFF,
            },
        ),
        (
            0x4000_0000,
            WalError::InvalidRecordLength {
                lsn: r,
                len: 0x4000_0000,
                min: 24,
                max: 0x3FFF_FFFF,
            },
        ),
    ] {
        let mut bad = b.bytes().to_vec();
        bad[off..off + 4].copy_from_slice(&len.to_le_bytes());
        for chunk in [1usize, 2, 5, 100_000] {
            let mut v = validator_for(&s, b.start());
            assert_eq!(feed_chunked(&mut v, &bad, &[chunk]), Err(want.clone()));
        }
    }
}

#[test]
fn prev_links_are_checked() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 10]);
    b.set_prev(Lsn(MB + 8)); // wrong: the previous record is at MB + 40
    let second = b.record(1, 0, &[1; 10]);
    let mut v = validator_for(&s, b.start());
    assert_eq!(
        v.feed(b.start(), b.bytes()),
        Err(WalError::InvalidPrevLink {
            lsn: second,
            found: Lsn(MB + 8),
            expected: Some(Lsn(MB + 40))
        })
    );
    // The first record of a stream only needs a prev-link below itself.
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.set_prev(Lsn(MB + 0x1000));
    let first = b.record(1, 0, &[1; 10]);
    let mut v = validator_for(&s, b.start());
    assert!(matches!(
        v.feed(b.start(), b.bytes()),
        Err(WalError::InvalidPrevLink { lsn, expected: None, .. }) if lsn == first
    ));
}

#[test]
fn feeds_must_be_contiguous_and_errors_stick() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 10]);
    b.record(1, 0, &[1; 10]);
    let mut v = validator_for(&s, b.start());
    v.feed(b.start(), &b.bytes()[..50]).unwrap();
    assert_eq!(
        v.feed(Lsn(MB + 60), &b.bytes()[60..]),
        Err(WalError::NonContiguousFeed {
            expected: Lsn(MB + 50),
            got: Lsn(MB + 60)
        })
    );
    // Refusing a misplaced chunk does not poison the stream.
    v.feed(Lsn(MB + 50), &b.bytes()[50..]).unwrap();
    assert_eq!(v.records(), 2);

    let mut bad = b.bytes().to_vec();
    bad[40 + 30] ^= 1;
    let mut v = validator_for(&s, b.start());
    let e = v.feed(b.start(), &bad).unwrap_err();
    assert!(matches!(e, WalError::CrcMismatch { .. }));
    assert_eq!(v.feed(v.position(), &[]), Err(e.clone()));
    assert_eq!(v.failure(), Some(&e));
    assert_eq!(v.validated_lsn(), Lsn(MB + 40));
}

#[test]
fn zero_page_where_wal_should_be() {
    let s = synth(8192);
    let mut b = WalBuilder::new(s, Lsn(MB));
    b.record(1, 0, &[1; 10]);
    b.zero_fill_to(Lsn(MB + 3 * 8192));
    let mut v = validator_for(&s, b.start());
    let e = v.feed(b.start(), b.bytes()).unwrap_err();
    // The rest of the first page is zeros where the next record would start.
    assert_eq!(
        e,
        WalError::EndOfWal {
            lsn: Lsn(MB + 40 + 40)
        }
    );
    assert!(e.is_end_of_wal());

    let mut v = validator_for(&s, Lsn(MB + 8192));
    let e = v.feed(Lsn(MB + 8192), &b.bytes()[8192..]).unwrap_err();
    assert_eq!(
        e,
        WalError::ZeroPage {
            lsn: Lsn(MB + 8192)
        }
    );
}
