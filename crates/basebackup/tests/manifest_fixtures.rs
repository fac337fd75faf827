//! Real PostgreSQL 15 manifests (tests/fixtures/pg15): they parse, their checksums verify, and the
//! checksums walrelay computes for real files match what the server wrote — including the byte order
//! of CRC-32C values.

// Test-only file: helpers outside #[test] functions panic on setup failure by design.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use walrelay_basebackup::{
    BackupManifest, ChecksumAlgorithm, ChecksumCollector, ExtractObserver, FileHasher,
    ManifestError, WalRange,
};
use walrelay_protocol::{Lsn, TimelineId};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pg15")
        .join(name)
}

fn manifest_bytes(alg: &str) -> Vec<u8> {
    let gz = fs::read(fixture(&format!("backup_manifest.{alg}.gz"))).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn digest(alg: ChecksumAlgorithm, data: &[u8]) -> Vec<u8> {
    let mut h = FileHasher::new(alg);
    h.update(data);
    h.finish()
}

#[test]
fn real_manifests_parse_and_match_real_files() {
    for (name, alg) in [
        ("crc32c", ChecksumAlgorithm::Crc32c),
        ("sha256", ChecksumAlgorithm::Sha256),
    ] {
        let text = manifest_bytes(name);
        let m = BackupManifest::parse(&text).unwrap();
        assert_eq!(m.version, 1, "PostgreSQL 15 writes manifest version 1");
        assert_eq!(m.system_identifier, None);
        assert_eq!(m.files.len(), 966);
        assert_eq!(
            m.wal_ranges,
            [WalRange {
                timeline: TimelineId(1),
                start_lsn: m.wal_ranges[0].start_lsn,
                end_lsn: m.wal_ranges[0].end_lsn,
            }]
        );
        assert!(m.wal_ranges[0].start_lsn < m.wal_ranges[0].end_lsn);
        assert!(m.wal_ranges[0].start_lsn >= Lsn(0x200_0000));

        for (path, file) in [
            ("PG_VERSION", "PG_VERSION".to_string()),
            ("postgresql.auto.conf", "postgresql.auto.conf".to_string()),
            ("backup_label", format!("backup_label.{name}")),
        ] {
            let data = fs::read(fixture(&file)).unwrap();
            let entry = m.file(Path::new(path)).unwrap();
            assert_eq!(entry.size, data.len() as u64, "{path}");
            let sum = entry.checksum.as_ref().unwrap();
            assert_eq!(sum.algorithm, alg);
            assert_eq!(sum.digest, digest(alg, &data), "{name} checksum of {path}");
        }
        // empty tablespace_map: CRC-32C of nothing is 0, SHA-256 of nothing is e3b0…
        let empty = m.file(Path::new("tablespace_map")).unwrap();
        assert_eq!(empty.checksum.as_ref().unwrap().digest, digest(alg, b""));
        // With -X fetch the segments are not listed, but their archive_status files are (and
        // verification ignores everything under pg_wal/).
        let wal: Vec<&Path> = m
            .files
            .iter()
            .map(|f| f.path.as_path())
            .filter(|p| p.starts_with("pg_wal"))
            .collect();
        assert_eq!(wal.len(), 1, "{wal:?}");
        assert!(wal[0].starts_with("pg_wal/archive_status"), "{wal:?}");
        assert_eq!(wal[0].extension().unwrap(), "done");
    }
}

#[test]
fn crc32c_byte_order_is_little_endian() {
    let m = BackupManifest::parse(&manifest_bytes("crc32c")).unwrap();
    let entry = m.file(Path::new("PG_VERSION")).unwrap();
    let crc = crc32c::crc32c(b"15\n");
    assert_eq!(entry.checksum.as_ref().unwrap().digest, crc.to_le_bytes());
    assert_ne!(crc.to_le_bytes(), crc.to_be_bytes());
}

#[test]
fn verification_flags_a_single_changed_file() {
    let m = BackupManifest::parse(&manifest_bytes("crc32c")).unwrap();
    // Pretend every file was extracted with the manifest's own checksums except one.
    let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
    let version = fs::read(fixture("PG_VERSION")).unwrap();
    c.file_started(Path::new("PG_VERSION"), 3);
    c.file_data(b"16\n");
    c.file_finished();
    let e = m.verify_files(&c, &[]).unwrap_err();
    assert!(e
        .problems
        .iter()
        .any(|p| p.to_string() == "checksum mismatch for file \"PG_VERSION\""));
    assert!(e.to_string().contains("and "), "capped list: {e}");
    assert_eq!(version, b"15\n");
}

#[test]
fn tampered_real_manifest_is_rejected() {
    let mut text = manifest_bytes("sha256");
    let pos = text.windows(10).position(|w| w == b"PG_VERSION").unwrap();
    text[pos] = b'Q';
    assert!(matches!(
        BackupManifest::parse(&text),
        Err(ManifestError::ChecksumMismatch)
    ));
    let text = manifest_bytes("sha256");
    assert!(BackupManifest::parse(&text[..text.len() - 2]).is_err());
}
