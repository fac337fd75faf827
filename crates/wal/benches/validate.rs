//! Validation throughput: real PostgreSQL 15 WAL (the test fixtures) and synthetic WAL with small
//! and page-sized records, fed whole and in 128 kB chunks (the walsender's largest XLogData).
//!
//! `cargo bench -p walrelay-wal --bench validate`

// Benchmark setup: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walrelay_protocol::{Lsn, WalSegmentSize};
use walrelay_wal::synth::{SynthConfig, WalBuilder};
use walrelay_wal::{ValidatorConfig, WalValidator};

const MB: u64 = 1024 * 1024;
const XLOGDATA_MAX: usize = 128 * 1024;

fn real_wal() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // The four complete segments 0/700000..0/B00000 (the fifth ends in zeros).
    let mut out = Vec::new();
    for seg in ["07", "08", "09", "0A"] {
        let f = std::fs::File::open(dir.join(format!("0000000100000000000000{seg}.gz"))).unwrap();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
    }
    out
}

fn synthetic(record_body: usize, total: u64) -> Vec<u8> {
    let mut b = WalBuilder::new(SynthConfig::default(), Lsn(MB));
    let body: Vec<u8> = (0..record_body).map(|i| (i * 13) as u8).collect();
    while b.position().0 < MB + total {
        b.record(10, 0x10, &body);
    }
    b.into_bytes()
}

fn validate(bytes: &[u8], start: Lsn, chunk: usize) -> Lsn {
    let cfg = ValidatorConfig::new(WalSegmentSize::new(MB).unwrap(), start);
    let mut v = WalValidator::new(cfg).unwrap();
    for c in bytes.chunks(chunk) {
        v.feed(v.position(), c).unwrap();
    }
    v.validated_lsn()
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("real_pg15", real_wal(), Lsn(7 * MB)),
        (
            "synthetic_100B_records",
            synthetic(100 - 24, 8 * MB),
            Lsn(MB),
        ),
        (
            "synthetic_8kB_records",
            synthetic(8192 - 24, 8 * MB),
            Lsn(MB),
        ),
    ];
    let mut g = c.benchmark_group("validate");
    g.sample_size(30);
    for (name, bytes, start) in &cases {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        for chunk in [XLOGDATA_MAX, bytes.len()] {
            let label = if chunk == XLOGDATA_MAX {
                "128kB_feeds"
            } else {
                "one_feed"
            };
            g.bench_with_input(BenchmarkId::new(*name, label), bytes, |b, bytes| {
                b.iter(|| validate(bytes, *start, chunk))
            });
        }
    }
    g.finish();

    // The floor: CRC-32C alone over the same bytes.
    let mut g = c.benchmark_group("crc32c_only");
    g.sample_size(30);
    let bytes = &cases[0].1;
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("real_pg15", |b| b.iter(|| crc32c::crc32c(bytes)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
