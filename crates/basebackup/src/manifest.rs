//! Backup manifests: parsing, and verifying a backup against its manifest while it is written.
//!
//! The server sends the manifest (`backup_manifest`, PostgreSQL 13+) *after* the archives, so the
//! data cannot be checked against it as it streams. Instead [`ChecksumCollector`] — an
//! [`ExtractObserver`] — computes, for every file as it is written, the checksum with each algorithm
//! the `BASE_BACKUP` command asked for (`MANIFEST_CHECKSUMS`, CRC-32C by default) and keeps
//! `(path, size, checksums)`. When the manifest arrives, [`BackupManifest::parse`] checks its own
//! SHA-256 and [`BackupManifest::verify_files`] compares: the result is what `pg_verifybackup` would
//! say about the extracted directory, without reading a single data file back.
//!
//! Format facts (`src/common/parse_manifest.c`, `src/backend/backup/backup_manifest.c`,
//! `doc/src/sgml/backup-manifest.sgml`):
//! * a JSON object whose first key is `PostgreSQL-Backup-Manifest-Version` (1 for PostgreSQL 13–16,
//!   2 from 17, which adds `System-Identifier`), then `Files`, `WAL-Ranges`, `Manifest-Checksum`;
//! * each file has `Path` (or `Encoded-Path`, hex, for names that are not valid UTF-8), `Size`,
//!   `Last-Modified`, and optionally `Checksum-Algorithm` and `Checksum` (hex of the digest bytes;
//!   for CRC-32C the bytes of the `uint32` in memory order, i.e. little-endian on the platforms
//!   PostgreSQL streams between);
//! * `Manifest-Checksum` is the SHA-256 of the manifest text up to and including the newline that
//!   ends the second-to-last line (the last line holds the checksum itself); the text must end with
//!   a newline and have at least two lines;
//! * tablespace files are listed as `pg_tblspc/<oid>/…`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use thiserror::Error;
use walrelay_durable::{write_file_atomic, DurableError, Owner};
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};

use crate::extract::ExtractObserver;

/// The manifest's file name in a data directory.
pub const MANIFEST_FILE_NAME: &str = "backup_manifest";

/// Paths `pg_verifybackup` never compares (and their contents, for directories): the manifest
/// itself, WAL (fetched and checked separately), and files `pg_basebackup -R` creates or changes.
pub const DEFAULT_IGNORED: [&str; 5] = [
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// How many problems a [`VerifyError`] spells out before summarizing the rest.
pub const MAX_REPORTED_PROBLEMS: usize = 20;

/// A manifest checksum algorithm (`pg_checksum_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChecksumAlgorithm {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "unrecognized checksum algorithm \"{0}\": use NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512"
)]
pub struct UnknownAlgorithm(pub String);

impl FromStr for ChecksumAlgorithm {
    type Err = UnknownAlgorithm;

    /// Case-insensitive, as `pg_checksum_parse_type`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => ChecksumAlgorithm::None,
            "CRC32C" => ChecksumAlgorithm::Crc32c,
            "SHA224" => ChecksumAlgorithm::Sha224,
            "SHA256" => ChecksumAlgorithm::Sha256,
            "SHA384" => ChecksumAlgorithm::Sha384,
            "SHA512" => ChecksumAlgorithm::Sha512,
            _ => return Err(UnknownAlgorithm(s.to_string())),
        })
    }
}

impl fmt::Display for ChecksumAlgorithm {
    /// The spelling the manifest and `MANIFEST_CHECKSUMS` use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumAlgorithm::None => "NONE",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha224 => "SHA224",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
        })
    }
}

impl ChecksumAlgorithm {
    /// Digest length in bytes (`pg_checksum_final`'s return value).
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::None => 0,
            ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }
}

/// An in-progress checksum.
#[derive(Clone)]
pub enum FileHasher {
    None,
    Crc32c(u32),
    Sha224(Sha224),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl FileHasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::None => FileHasher::None,
            ChecksumAlgorithm::Crc32c => FileHasher::Crc32c(0),
            ChecksumAlgorithm::Sha224 => FileHasher::Sha224(Sha224::new()),
            ChecksumAlgorithm::Sha256 => FileHasher::Sha256(Sha256::new()),
            ChecksumAlgorithm::Sha384 => FileHasher::Sha384(Sha384::new()),
            ChecksumAlgorithm::Sha512 => FileHasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileHasher::None => {}
            FileHasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            FileHasher::Sha224(h) => h.update(data),
            FileHasher::Sha256(h) => h.update(data),
            FileHasher::Sha384(h) => h.update(data),
            FileHasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest bytes as the manifest hex-encodes them.
    pub fn finish(self) -> Vec<u8> {
        match self {
            FileHasher::None => Vec::new(),
            // pg_checksum_final copies the uint32 as it lies in memory; PostgreSQL's own platforms
            // and ours are little-endian (the manifests in tests/fixtures prove the byte order).
            FileHasher::Crc32c(c) => c.to_le_bytes().to_vec(),
            FileHasher::Sha224(h) => h.finalize().to_vec(),
            FileHasher::Sha256(h) => h.finalize().to_vec(),
            FileHasher::Sha384(h) => h.finalize().to_vec(),
            FileHasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// One checksum of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

/// What the extractor wrote for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedFile {
    /// Size announced by the archive header.
    pub size: u64,
    /// Bytes actually seen (differs from `size` only if extraction stopped midway).
    pub written: u64,
    pub checksums: Vec<FileChecksum>,
}

/// Computes per-file checksums during extraction; see the module docs.
pub struct ChecksumCollector {
    algorithms: Vec<ChecksumAlgorithm>,
    files: HashMap<PathBuf, ObservedFile>,
    current: Option<(PathBuf, u64, u64, Vec<FileHasher>)>,
    /// First bytes of `global/pg_control`, for the system identifier.
    control_head: Option<Vec<u8>>,
}

impl ChecksumCollector {
    /// Computes every algorithm in `algorithms` (duplicates and `NONE` are dropped).
    pub fn new(algorithms: &[ChecksumAlgorithm]) -> Self {
        let mut algs: Vec<ChecksumAlgorithm> = algorithms
            .iter()
            .copied()
            .filter(|a| *a != ChecksumAlgorithm::None)
            .collect();
        algs.sort();
        algs.dedup();
        ChecksumCollector {
            algorithms: algs,
            files: HashMap::new(),
            current: None,
            control_head: None,
        }
    }

    pub fn files(&self) -> &HashMap<PathBuf, ObservedFile> {
        &self.files
    }

    pub fn algorithms(&self) -> &[ChecksumAlgorithm] {
        &self.algorithms
    }

    /// The system identifier from `global/pg_control` (its first field, a native-endian `uint64`),
    /// if that file was extracted.
    pub fn system_identifier(&self) -> Option<u64> {
        let head = self.control_head.as_ref()?;
        let bytes: [u8; 8] = head.get(..8)?.try_into().ok()?;
        Some(u64::from_ne_bytes(bytes))
    }
}

impl ExtractObserver for ChecksumCollector {
    fn file_started(&mut self, path: &Path, size: u64) {
        self.file_finished();
        let hashers = self
            .algorithms
            .iter()
            .map(|&a| FileHasher::new(a))
            .collect();
        if path == Path::new("global/pg_control") {
            self.control_head = Some(Vec::with_capacity(8));
        }
        self.current = Some((path.to_path_buf(), size, 0, hashers));
    }

    fn file_data(&mut self, data: &[u8]) {
        if let Some((path, _, seen, hashers)) = &mut self.current {
            if *seen < 8 && path == Path::new("global/pg_control") {
                if let Some(head) = &mut self.control_head {
                    let need = 8 - head.len().min(8);
                    head.extend_from_slice(&data[..need.min(data.len())]);
                }
            }
            *seen += data.len() as u64;
            for h in hashers {
                h.update(data);
            }
        }
    }

    fn file_finished(&mut self) {
        if let Some((path, size, seen, hashers)) = self.current.take() {
            let checksums = self
                .algorithms
                .iter()
                .zip(hashers)
                .map(|(&algorithm, h)| FileChecksum {
                    algorithm,
                    digest: h.finish(),
                })
                .collect();
            // A later member with the same path replaces the earlier one, as on disk.
            self.files.insert(
                path,
                ObservedFile {
                    size,
                    written: seen,
                    checksums,
                },
            );
        }
    }
}

/// One file listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub size: u64,
    pub last_modified: Option<String>,
    /// `None` when the manifest has no checksum for this file (algorithm `NONE`).
    pub checksum: Option<FileChecksum>,
}

/// A WAL range the backup needs to be consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

impl WalRange {
    /// The segments holding `[start_lsn, end_lsn)` on this range's timeline (at least the start
    /// segment when the range is empty), like the server's `XLByteToPrevSeg(endptr)`.
    pub fn segments(&self, seg_size: WalSegmentSize) -> impl Iterator<Item = SegmentId> {
        let first = seg_size.segno(self.start_lsn).0;
        let last = if self.end_lsn > self.start_lsn {
            seg_size.segno(Lsn(self.end_lsn.0 - 1)).0
        } else {
            first
        };
        let timeline = self.timeline;
        (first..=last).map(move |s| SegmentId::new(timeline, walrelay_protocol::XLogSegNo(s)))
    }
}

/// A parsed, checksum-verified backup manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupManifest {
    pub version: u32,
    pub system_identifier: Option<u64>,
    pub files: Vec<ManifestFile>,
    pub wal_ranges: Vec<WalRange>,
    index: HashMap<PathBuf, usize>,
}

/// Why a manifest cannot be used. All are fatal: there is no point verifying against a bad manifest.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error(
        "could not parse backup manifest: {0}; the manifest is corrupt, take the backup again"
    )]
    Parse(String),
    #[error("backup manifest has no checksum; the manifest is corrupt, take the backup again")]
    NoChecksum,
    #[error("invalid manifest checksum: \"{0}\"; the manifest is corrupt, take the backup again")]
    InvalidChecksum(String),
    #[error(
        "manifest checksum mismatch; the manifest was damaged in transit, take the backup again"
    )]
    ChecksumMismatch,
    #[error("duplicate path name in backup manifest: \"{0}\"; the manifest is corrupt, take the backup again")]
    DuplicatePath(String),
    #[error("{0}")]
    UnknownAlgorithm(#[from] UnknownAlgorithm),
    #[error("invalid checksum for file \"{path}\": \"{checksum}\"; the manifest is corrupt, take the backup again")]
    BadFileChecksum { path: String, checksum: String },
}

fn parse_err(msg: impl Into<String>) -> ManifestError {
    ManifestError::Parse(msg.into())
}

impl BackupManifest {
    /// Parses a manifest and verifies its `Manifest-Checksum`.
    pub fn parse(text: &[u8]) -> Result<BackupManifest, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(text).map_err(|e| parse_err(e.to_string()))?;
        verify_manifest_checksum(text, raw.manifest_checksum.as_deref())?;

        let version =
            parse_u64(&raw.version).ok_or_else(|| parse_err("manifest version not an integer"))?;
        if version != 1 && version != 2 {
            return Err(parse_err("unexpected manifest version"));
        }
        let system_identifier = match &raw.system_identifier {
            None => None,
            Some(s) => Some(
                parse_u64(s)
                    .ok_or_else(|| parse_err("manifest system identifier not an integer"))?,
            ),
        };

        let mut files = Vec::with_capacity(raw.files.len());
        let mut index = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path: PathBuf = match (f.path, f.encoded_path) {
                (None, None) => return Err(parse_err("missing path name")),
                (Some(_), Some(_)) => {
                    return Err(parse_err("both path name and encoded path name"))
                }
                (Some(p), None) => PathBuf::from(p),
                (None, Some(hexed)) => {
                    let bytes =
                        hex::decode(&hexed).map_err(|_| parse_err("could not decode file name"))?;
                    PathBuf::from(OsStr::from_bytes(&bytes))
                }
            };
            let size = match &f.size {
                None => return Err(parse_err("missing size")),
                Some(s) => parse_u64(s).ok_or_else(|| parse_err("file size is not an integer"))?,
            };
            if f.algorithm.is_none() && f.checksum.is_some() {
                return Err(parse_err("checksum without algorithm"));
            }
            let algorithm = match &f.algorithm {
                None => ChecksumAlgorithm::None,
                Some(a) => a.parse()?,
            };
            let digest = match f.checksum.as_deref() {
                None | Some("") => Vec::new(),
                Some(c) => hex::decode(c).map_err(|_| ManifestError::BadFileChecksum {
                    path: path.display().to_string(),
                    checksum: c.to_string(),
                })?,
            };
            let checksum = (algorithm != ChecksumAlgorithm::None)
                .then_some(FileChecksum { algorithm, digest });
            if index.insert(path.clone(), files.len()).is_some() {
                return Err(ManifestError::DuplicatePath(path.display().to_string()));
            }
            files.push(ManifestFile {
                path,
                size,
                last_modified: f.last_modified,
                checksum,
            });
        }

        let mut wal_ranges = Vec::with_capacity(raw.wal_ranges.len());
        for r in raw.wal_ranges {
            let timeline = r.timeline.ok_or_else(|| parse_err("missing timeline"))?;
            let start = r.start_lsn.ok_or_else(|| parse_err("missing start LSN"))?;
            let end = r.end_lsn.ok_or_else(|| parse_err("missing end LSN"))?;
            let timeline = parse_u64(&timeline)
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| parse_err("timeline is not an integer"))?;
            let start_lsn: Lsn = start
                .parse()
                .map_err(|_| parse_err("could not parse start LSN"))?;
            let end_lsn: Lsn = end
                .parse()
                .map_err(|_| parse_err("could not parse end LSN"))?;
            wal_ranges.push(WalRange {
                timeline: TimelineId(timeline),
                start_lsn,
                end_lsn,
            });
        }

        Ok(BackupManifest {
            version: version as u32,
            system_identifier,
            files,
            wal_ranges,
            index,
        })
    }

    /// The manifest entry for `path`, if listed.
    pub fn file(&self, path: &Path) -> Option<&ManifestFile> {
        self.index.get(path).map(|&i| &self.files[i])
    }

    /// Compares what was extracted with the manifest, as `pg_verifybackup` compares a directory:
    /// every file extracted must be listed with the same size and checksum, and every listed file
    /// must have been extracted — except the paths in `DEFAULT_IGNORED` and `extra_ignored`
    /// (each ignoring itself and everything below it). For a version 2 manifest the system
    /// identifier in the extracted `global/pg_control` must match too.
    pub fn verify_files(
        &self,
        observed: &ChecksumCollector,
        extra_ignored: &[&str],
    ) -> Result<VerifySummary, VerifyError> {
        let ignored: Vec<&str> = DEFAULT_IGNORED
            .iter()
            .copied()
            .chain(extra_ignored.iter().copied())
            .collect();
        let is_ignored = |p: &Path| ignored.iter().any(|i| should_ignore(i, p));
        let mut problems: Vec<Problem> = Vec::new();
        let mut summary = VerifySummary::default();

        let mut observed_paths: Vec<&PathBuf> = observed.files.keys().collect();
        observed_paths.sort();
        for path in observed_paths {
            if is_ignored(path) {
                continue;
            }
            let seen = &observed.files[path];
            let Some(m) = self.file(path) else {
                problems.push(Problem::NotInManifest(path.clone()));
                continue;
            };
            summary.files += 1;
            if seen.written != seen.size {
                problems.push(Problem::Incomplete {
                    path: path.clone(),
                    expected: seen.size,
                    written: seen.written,
                });
                continue;
            }
            if seen.size != m.size {
                problems.push(Problem::SizeMismatch {
                    path: path.clone(),
                    on_disk: seen.size,
                    manifest: m.size,
                });
                continue;
            }
            let Some(expected) = &m.checksum else {
                continue;
            };
            let Some(actual) = seen
                .checksums
                .iter()
                .find(|c| c.algorithm == expected.algorithm)
            else {
                problems.push(Problem::AlgorithmNotComputed {
                    path: path.clone(),
                    algorithm: expected.algorithm,
                });
                continue;
            };
            if actual.digest.len() != expected.digest.len() {
                problems.push(Problem::ChecksumLength {
                    path: path.clone(),
                    manifest: expected.digest.len(),
                    computed: actual.digest.len(),
                });
            } else if actual.digest != expected.digest {
                problems.push(Problem::ChecksumMismatch { path: path.clone() });
            } else {
                summary.checksums_verified += 1;
            }
        }

        for m in &self.files {
            if !observed.files.contains_key(&m.path) && !is_ignored(&m.path) {
                problems.push(Problem::Missing(m.path.clone()));
            }
        }

        if self.version >= 2 {
            if let (Some(manifest), Some(control)) =
                (self.system_identifier, observed.system_identifier())
            {
                if manifest != control {
                    problems.push(Problem::SystemIdentifier { manifest, control });
                }
            }
        }

        if problems.is_empty() {
            Ok(summary)
        } else {
            Err(VerifyError { problems })
        }
    }

    /// Checks that every WAL segment the manifest's WAL ranges need is in `present` (segments found
    /// in `pg_wal`, on the range's own timeline). Missing segments are listed by file name.
    pub fn verify_wal_ranges(
        &self,
        present: &[SegmentId],
        seg_size: WalSegmentSize,
    ) -> Result<(), WalRangeError> {
        verify_wal_ranges(&self.wal_ranges, present, seg_size)
    }
}

/// See [`BackupManifest::verify_wal_ranges`].
pub fn verify_wal_ranges(
    ranges: &[WalRange],
    present: &[SegmentId],
    seg_size: WalSegmentSize,
) -> Result<(), WalRangeError> {
    let have: HashSet<&SegmentId> = present.iter().collect();
    let mut missing = Vec::new();
    for r in ranges {
        if r.end_lsn < r.start_lsn {
            return Err(WalRangeError::Backwards(*r));
        }
        for seg in r.segments(seg_size) {
            if !have.contains(&seg) {
                missing.push(seg.file_name(seg_size));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(WalRangeError::Missing(missing))
    }
}

/// `should_ignore_relpath`: `ignored` names `path` itself or a directory above it
/// (`aa/bb` covers `aa/bb/cc` but not `aa/bbb`).
pub fn should_ignore(ignored: &str, path: &Path) -> bool {
    let p = path.as_os_str().as_bytes();
    let i = ignored.as_bytes();
    p.starts_with(i) && (p.len() == i.len() || p[i.len()] == b'/')
}

/// What [`BackupManifest::verify_files`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Extracted files found in the manifest.
    pub files: usize,
    /// Of those, files whose checksum was compared and matched.
    pub checksums_verified: usize,
}

/// One way the extracted backup differs from its manifest (wording as `pg_verifybackup`'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    NotInManifest(PathBuf),
    Missing(PathBuf),
    SizeMismatch {
        path: PathBuf,
        on_disk: u64,
        manifest: u64,
    },
    Incomplete {
        path: PathBuf,
        expected: u64,
        written: u64,
    },
    ChecksumMismatch {
        path: PathBuf,
    },
    ChecksumLength {
        path: PathBuf,
        manifest: usize,
        computed: usize,
    },
    AlgorithmNotComputed {
        path: PathBuf,
        algorithm: ChecksumAlgorithm,
    },
    SystemIdentifier {
        manifest: u64,
        control: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotInManifest(p) => {
                write!(f, "\"{}\" is present on disk but not in the manifest", p.display())
            }
            Problem::Missing(p) => {
                write!(f, "\"{}\" is present in the manifest but not on disk", p.display())
            }
            Problem::SizeMismatch {
                path,
                on_disk,
                manifest,
            } => write!(
                f,
                "\"{}\" has size {on_disk} on disk but size {manifest} in the manifest",
                path.display()
            ),
            Problem::Incomplete {
                path,
                expected,
                written,
            } => write!(
                f,
                "file \"{}\" should contain {expected} bytes, but {written} were written",
                path.display()
            ),
            Problem::ChecksumMismatch { path } => {
                write!(f, "checksum mismatch for file \"{}\"", path.display())
            }
            Problem::ChecksumLength {
                path,
                manifest,
                computed,
            } => write!(
                f,
                "file \"{}\" has checksum of length {manifest}, but expected {computed}",
                path.display()
            ),
            Problem::AlgorithmNotComputed { path, algorithm } => write!(
                f,
                "manifest checksum of \"{}\" uses {algorithm}, which was not requested from the server",
                path.display()
            ),
            Problem::SystemIdentifier { manifest, control } => write!(
                f,
                "global/pg_control: manifest system identifier is {manifest}, but control file has {control}"
            ),
        }
    }
}

/// The extracted backup does not match its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct VerifyError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "backup does not match its manifest ({n} problem{}): ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, p) in self.problems.iter().take(MAX_REPORTED_PROBLEMS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        if n > MAX_REPORTED_PROBLEMS {
            write!(f, "; and {} more", n - MAX_REPORTED_PROBLEMS)?;
        }
        f.write_str("; the data was damaged in transit or on disk, take the backup again")
    }
}

/// The WAL a backup needs is not all there.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WalRangeError {
    #[error("backup manifest WAL range on timeline {} ends at {} before it starts at {}: the manifest is corrupt", .0.timeline, .0.end_lsn, .0.start_lsn)]
    Backwards(WalRange),
    #[error("{}", missing_message(.0))]
    Missing(Vec<String>),
}

fn missing_message(files: &[String]) -> String {
    let mut s = format!(
        "{} WAL segment{} needed to make the backup consistent {} missing: ",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        if files.len() == 1 { "is" } else { "are" }
    );
    s.push_str(
        &files
            .iter()
            .take(MAX_REPORTED_PROBLEMS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    );
    if files.len() > MAX_REPORTED_PROBLEMS {
        s.push_str(&format!(
            " and {} more",
            files.len() - MAX_REPORTED_PROBLEMS
        ));
    }
    s.push_str("; stream or fetch the WAL up to the backup's end position");
    s
}

/// Stores the manifest as `backup_manifest` in `data_dir` (atomically, mode `mode`).
pub fn store_manifest(
    data_dir: &Path,
    text: &[u8],
    mode: u32,
    owner: Owner,
) -> Result<(), DurableError> {
    write_file_atomic(&data_dir.join(MANIFEST_FILE_NAME), text, mode, owner)
}

/// The `verify_manifest_checksum` rule; see the module docs.
fn verify_manifest_checksum(text: &[u8], stated: Option<&str>) -> Result<(), ManifestError> {
    let newlines: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    if newlines.len() < 2 {
        return Err(parse_err("expected at least 2 lines"));
    }
    if newlines.last() != Some(&(text.len() - 1)) {
        return Err(parse_err("last line not newline-terminated"));
    }
    let penultimate = newlines[newlines.len() - 2];
    let actual = Sha256::digest(&text[..=penultimate]);
    let stated = stated.ok_or(ManifestError::NoChecksum)?;
    let expected = match hex::decode(stated) {
        Ok(b) if b.len() == 32 => b,
        _ => return Err(ManifestError::InvalidChecksum(stated.to_string())),
    };
    if actual.as_slice() != expected.as_slice() {
        return Err(ManifestError::ChecksumMismatch);
    }
    Ok(())
}

/// `strtou64`/`strtoul` with nothing after the digits.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A JSON scalar kept as text, as PostgreSQL's JSON parser hands every scalar to the manifest
/// parser as a token string (so `1` and `"1"` are the same to it).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::ops::Deref for Scalar {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: Option<Scalar>,
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: Option<Scalar>,
    #[serde(rename = "Start-LSN")]
    start_lsn: Option<String>,
    #[serde(rename = "End-LSN")]
    end_lsn: Option<String>,
}

struct RawManifest {
    version: Scalar,
    system_identifier: Option<Scalar>,
    files: Vec<RawFile>,
    wal_ranges: Vec<RawWalRange>,
    manifest_checksum: Option<String>,
}

impl<'de> Deserialize<'de> for RawManifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawManifest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backup manifest object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawManifest, A::Error> {
                // The version indicator must come first (json_manifest_object_field_start).
                match map.next_key::<String>()? {
                    Some(k) if k == "PostgreSQL-Backup-Manifest-Version" => {}
                    _ => return Err(de::Error::custom("expected version indicator")),
                }
                let version: Scalar = map.next_value()?;
                let mut system_identifier = None;
                let mut files = None;
                let mut wal_ranges = None;
                let mut manifest_checksum = None;
                while let Some(key) = map.next_key::<String>()? {
                    let dup = || de::Error::custom(format!("duplicate top-level field \"{key}\""));
                    match key.as_str() {
                        "System-Identifier" => {
                            if system_identifier.is_some() {
                                return Err(dup());
                            }
                            system_identifier = Some(map.next_value::<Scalar>()?);
                        }
                        "Files" => {
                            if files.is_some() {
                                return Err(dup());
                            }
                            files = Some(map.next_value::<Vec<RawFile>>()?);
                        }
                        "WAL-Ranges" => {
                            if wal_ranges.is_some() {
                                return Err(dup());
                            }
                            wal_ranges = Some(map.next_value::<Vec<RawWalRange>>()?);
                        }
                        "Manifest-Checksum" => {
                            if manifest_checksum.is_some() {
                                return Err(dup());
                            }
                            manifest_checksum = Some(map.next_value::<String>()?);
                        }
                        _ => return Err(de::Error::custom("unrecognized top-level field")),
                    }
                }
                Ok(RawManifest {
                    version,
                    system_identifier,
                    files: files.unwrap_or_default(),
                    wal_ranges: wal_ranges.unwrap_or_default(),
                    manifest_checksum,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a manifest the way backup_manifest.c lays it out, with a correct checksum.
    fn manifest_text(
        version: u32,
        sysid: Option<u64>,
        files: &[String],
        ranges: &[&str],
    ) -> Vec<u8> {
        let mut s = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": {version},\n");
        if let Some(id) = sysid {
            s.push_str(&format!("\"System-Identifier\": {id},\n"));
        }
        s.push_str("\"Files\": [\n");
        s.push_str(&files.join(",\n"));
        s.push_str(" ],\n\"WAL-Ranges\": [\n");
        s.push_str(&ranges.join(",\n"));
        s.push_str(" ],\n");
        let sum = hex::encode(Sha256::digest(s.as_bytes()));
        s.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
        s.into_bytes()
    }

    fn file_entry(path: &str, data: &[u8]) -> String {
        let crc = crc32c::crc32c(data).to_le_bytes();
        format!(
            "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2024-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            data.len(),
            hex::encode(crc)
        )
    }

    fn observe(c: &mut ChecksumCollector, path: &str, data: &[u8]) {
        c.file_started(Path::new(path), data.len() as u64);
        for chunk in data.chunks(3) {
            c.file_data(chunk);
        }
        c.file_finished();
    }

    const RANGE: &str =
        "{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }";

    #[test]
    fn parses_and_verifies_a_matching_backup() {
        let text = manifest_text(
            1,
            None,
            &[
                file_entry("PG_VERSION", b"15\n"),
                file_entry("base/1/1259", b"data"),
            ],
            &[RANGE],
        );
        let m = BackupManifest::parse(&text).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.wal_ranges,
            vec![WalRange {
                timeline: TimelineId(1),
                start_lsn: Lsn(0x200_0028),
                end_lsn: Lsn(0x200_0100)
            }]
        );
        let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
        observe(&mut c, "PG_VERSION", b"15\n");
        observe(&mut c, "base/1/1259", b"data");
        // ignored paths may appear freely
        observe(&mut c, "pg_wal/000000010000000000000002", b"wal");
        observe(&mut c, "postgresql.auto.conf", b"changed");
        let s = m.verify_files(&c, &[]).unwrap();
        assert_eq!(
            s,
            VerifySummary {
                files: 2,
                checksums_verified: 2
            }
        );
    }

    #[test]
    fn reports_every_mismatch() {
        let text = manifest_text(
            1,
            None,
            &[
                file_entry("a", b"aaa"),
                file_entry("b", b"bbb"),
                file_entry("c", b"ccc"),
                file_entry("pg_wal/x", b"ignored even when missing"),
            ],
            &[],
        );
        let m = BackupManifest::parse(&text).unwrap();
        let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
        observe(&mut c, "a", b"aaX"); // same size, different bytes
        observe(&mut c, "b", b"bbbb"); // size differs
        observe(&mut c, "extra", b"e"); // not in manifest
                                        // "c" missing
        let e = m.verify_files(&c, &[]).unwrap_err();
        assert_eq!(e.problems.len(), 4, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("checksum mismatch for file \"a\""), "{msg}");
        assert!(
            msg.contains("\"b\" has size 4 on disk but size 3 in the manifest"),
            "{msg}"
        );
        assert!(
            msg.contains("\"extra\" is present on disk but not in the manifest"),
            "{msg}"
        );
        assert!(
            msg.contains("\"c\" is present in the manifest but not on disk"),
            "{msg}"
        );
        // extra ignore
        let e = m.verify_files(&c, &["extra", "c"]).unwrap_err();
        assert_eq!(e.problems.len(), 2);
    }

    #[test]
    fn error_list_is_capped() {
        let files: Vec<String> = (0..30)
            .map(|i| file_entry(&format!("f{i}"), b"x"))
            .collect();
        let m = BackupManifest::parse(&manifest_text(1, None, &files, &[])).unwrap();
        let c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
        let e = m.verify_files(&c, &[]).unwrap_err();
        assert_eq!(e.problems.len(), 30);
        assert!(e.to_string().contains("and 10 more"), "{e}");
        assert_eq!(
            e.to_string().matches("is present in the manifest").count(),
            20
        );
    }

    #[test]
    fn algorithm_not_computed_and_none() {
        let sha = format!(
            "{{ \"Path\": \"s\", \"Size\": 1, \"Last-Modified\": \"x\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }}",
            hex::encode(Sha256::digest(b"s"))
        );
        let none = "{ \"Path\": \"n\", \"Size\": 1, \"Last-Modified\": \"x\" }".to_string();
        let m = BackupManifest::parse(&manifest_text(1, None, &[sha, none], &[])).unwrap();
        let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
        observe(&mut c, "s", b"s");
        observe(&mut c, "n", b"n");
        let e = m.verify_files(&c, &[]).unwrap_err();
        assert!(
            matches!(e.problems[..], [Problem::AlgorithmNotComputed { .. }]),
            "{e}"
        );
        let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Sha256]);
        observe(&mut c, "s", b"s");
        observe(&mut c, "n", b"n");
        assert_eq!(
            m.verify_files(&c, &[]).unwrap(),
            VerifySummary {
                files: 2,
                checksums_verified: 1
            }
        );
    }

    #[test]
    fn system_identifier_v2() {
        let id: u64 = 7_300_000_000_000_000_001;
        let mut control = id.to_ne_bytes().to_vec();
        control.extend([0u8; 8184]);
        let entry = file_entry("global/pg_control", &control);
        let m = BackupManifest::parse(&manifest_text(
            2,
            Some(id),
            std::slice::from_ref(&entry),
            &[],
        ))
        .unwrap();
        assert_eq!(m.system_identifier, Some(id));
        let mut c = ChecksumCollector::new(&[ChecksumAlgorithm::Crc32c]);
        observe(&mut c, "global/pg_control", &control);
        assert_eq!(c.system_identifier(), Some(id));
        m.verify_files(&c, &[]).unwrap();
        let m = BackupManifest::parse(&manifest_text(2, Some(id + 1), &[entry], &[])).unwrap();
        let e = m.verify_files(&c, &[]).unwrap_err();
        assert!(matches!(e.problems[..], [Problem::SystemIdentifier { .. }]));
    }

    #[test]
    fn encoded_path() {
        let name = b"weird\xffname";
        let entry = format!(
            "{{ \"Encoded-Path\": \"{}\", \"Size\": 0, \"Last-Modified\": \"x\" }}",
            hex::encode(name)
        );
        let m = BackupManifest::parse(&manifest_text(1, None, &[entry], &[])).unwrap();
        assert_eq!(m.files[0].path.as_os_str().as_bytes(), name);
    }

    #[test]
    fn manifest_checksum_rules() {
        let good = manifest_text(1, None, &[file_entry("a", b"a")], &[]);
        BackupManifest::parse(&good).unwrap();
        // flip one byte in the checksummed part
        let mut bad = good.clone();
        let pos = bad.windows(3).position(|w| w == b"\"a\"").unwrap();
        bad[pos + 1] = b'b';
        assert!(matches!(
            BackupManifest::parse(&bad),
            Err(ManifestError::ChecksumMismatch)
        ));
        // no trailing newline
        let cut = &good[..good.len() - 1];
        assert!(
            matches!(BackupManifest::parse(cut), Err(ManifestError::Parse(m)) if m.contains("newline"))
        );
        // one line only
        let one = b"{\"PostgreSQL-Backup-Manifest-Version\": 1, \"Files\": [], \"WAL-Ranges\": [], \"Manifest-Checksum\": \"00\"}\n";
        assert!(
            matches!(BackupManifest::parse(one), Err(ManifestError::Parse(m)) if m.contains("2 lines"))
        );
        // no checksum key
        let s = b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": []\n}\n";
        assert!(matches!(
            BackupManifest::parse(s),
            Err(ManifestError::NoChecksum)
        ));
        // short checksum
        let s = b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Manifest-Checksum\": \"abcd\"}\n";
        assert!(matches!(
            BackupManifest::parse(s),
            Err(ManifestError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn structural_errors() {
        let cases: Vec<(String, &str)> = vec![
            ("{ \"Files\": [],\n\"PostgreSQL-Backup-Manifest-Version\": 1 }\n".into(), "version indicator"),
            ("{ \"PostgreSQL-Backup-Manifest-Version\": 3,\n\"X\": 1 }\n".into(), "unrecognized top-level field"),
            ("[]\n\n".into(), "expected"),
            ("".into(), "EOF"),
            ("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [{\"Path\": \"a\", \"Bogus\": 1}] }\n".into(), "unknown field"),
        ];
        for (text, want) in cases {
            match BackupManifest::parse(text.as_bytes()) {
                Err(ManifestError::Parse(m)) => assert!(m.contains(want), "{text:?}: {m}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let with_sum = |files: &[String]| manifest_text(1, None, files, &[]);
        for (entry, want) in [
            ("{ \"Size\": 1 }", "missing path name"),
            (
                "{ \"Path\": \"a\", \"Encoded-Path\": \"61\", \"Size\": 1 }",
                "both path name",
            ),
            ("{ \"Path\": \"a\" }", "missing size"),
            ("{ \"Path\": \"a\", \"Size\": -1 }", "not an integer"),
            (
                "{ \"Path\": \"a\", \"Size\": 1, \"Checksum\": \"00\" }",
                "checksum without algorithm",
            ),
            (
                "{ \"Encoded-Path\": \"6\", \"Size\": 1 }",
                "decode file name",
            ),
        ] {
            match BackupManifest::parse(&with_sum(&[entry.to_string()])) {
                Err(ManifestError::Parse(m)) => assert!(m.contains(want), "{entry}: {m}"),
                other => panic!("{entry}: {other:?}"),
            }
        }
        let dup = with_sum(&[file_entry("a", b"1"), file_entry("a", b"1")]);
        assert!(matches!(
            BackupManifest::parse(&dup),
            Err(ManifestError::DuplicatePath(_))
        ));
        let alg =
            with_sum(&["{ \"Path\": \"a\", \"Size\": 1, \"Checksum-Algorithm\": \"MD5\" }".into()]);
        assert!(matches!(
            BackupManifest::parse(&alg),
            Err(ManifestError::UnknownAlgorithm(_))
        ));
        let badsum = with_sum(&["{ \"Path\": \"a\", \"Size\": 1, \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"zz\" }".into()]);
        assert!(matches!(
            BackupManifest::parse(&badsum),
            Err(ManifestError::BadFileChecksum { .. })
        ));
        for (range, want) in [
            (
                "{ \"Start-LSN\": \"0/1\", \"End-LSN\": \"0/2\" }",
                "missing timeline",
            ),
            (
                "{ \"Timeline\": 1, \"End-LSN\": \"0/2\" }",
                "missing start LSN",
            ),
            (
                "{ \"Timeline\": 1, \"Start-LSN\": \"0/1\" }",
                "missing end LSN",
            ),
            (
                "{ \"Timeline\": 1, \"Start-LSN\": \"x\", \"End-LSN\": \"0/2\" }",
                "start LSN",
            ),
            (
                "{ \"Timeline\": \"one\", \"Start-LSN\": \"0/1\", \"End-LSN\": \"0/2\" }",
                "timeline is not",
            ),
        ] {
            match BackupManifest::parse(&manifest_text(1, None, &[], &[range])) {
                Err(ManifestError::Parse(m)) => assert!(m.contains(want), "{range}: {m}"),
                other => panic!("{range}: {other:?}"),
            }
        }
    }

    #[test]
    fn algorithms() {
        for (s, a, len) in [
            ("crc32c", ChecksumAlgorithm::Crc32c, 4),
            ("SHA224", ChecksumAlgorithm::Sha224, 28),
            ("sha256", ChecksumAlgorithm::Sha256, 32),
            ("Sha384", ChecksumAlgorithm::Sha384, 48),
            ("SHA512", ChecksumAlgorithm::Sha512, 64),
            ("none", ChecksumAlgorithm::None, 0),
        ] {
            let parsed: ChecksumAlgorithm = s.parse().unwrap();
            assert_eq!(parsed, a);
            assert_eq!(parsed.to_string(), s.to_ascii_uppercase());
            let mut h = FileHasher::new(a);
            h.update(b"abc");
            assert_eq!(h.finish().len(), len);
        }
        assert!("md5".parse::<ChecksumAlgorithm>().is_err());
        // CRC-32C (Castagnoli) of "123456789" is 0xE3069283; the manifest stores its LE bytes.
        let mut h = FileHasher::new(ChecksumAlgorithm::Crc32c);
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(hex::encode(h.finish()), "839206e3");
    }

    #[test]
    fn wal_ranges() {
        let seg = WalSegmentSize::new(16 * 1024 * 1024).unwrap();
        let r = WalRange {
            timeline: TimelineId(1),
            start_lsn: Lsn(0x200_0028),
            end_lsn: Lsn(0x400_0000), // exactly at a segment boundary: segment 4 not needed
        };
        let names: Vec<String> = r.segments(seg).map(|s| s.file_name(seg)).collect();
        assert_eq!(
            names,
            ["000000010000000000000002", "000000010000000000000003"]
        );
        let present: Vec<SegmentId> = r.segments(seg).collect();
        verify_wal_ranges(&[r], &present, seg).unwrap();
        let e = verify_wal_ranges(&[r], &present[..1], seg).unwrap_err();
        assert_eq!(
            e,
            WalRangeError::Missing(vec!["000000010000000000000003".into()])
        );
        assert!(e.to_string().contains("1 WAL segment needed"), "{e}");
        // present on the wrong timeline does not count
        let other: Vec<SegmentId> = present
            .iter()
            .map(|s| SegmentId::new(TimelineId(2), s.segno))
            .collect();
        assert!(verify_wal_ranges(&[r], &other, seg).is_err());
        let back = WalRange {
            timeline: TimelineId(1),
            start_lsn: Lsn(10),
            end_lsn: Lsn(5),
        };
        assert!(matches!(
            verify_wal_ranges(&[back], &[], seg),
            Err(WalRangeError::Backwards(_))
        ));
        let empty = WalRange {
            timeline: TimelineId(1),
            start_lsn: Lsn(0x300_0000),
            end_lsn: Lsn(0x300_0000),
        };
        assert_eq!(empty.segments(seg).count(), 1);
    }

    #[test]
    fn ignore_prefix_semantics() {
        assert!(should_ignore("pg_wal", Path::new("pg_wal")));
        assert!(should_ignore(
            "pg_wal",
            Path::new("pg_wal/000000010000000000000001")
        ));
        assert!(!should_ignore("pg_wal", Path::new("pg_walx")));
        assert!(!should_ignore("aa/bb", Path::new("aa/bbb")));
        assert!(should_ignore("aa/bb", Path::new("aa/bb/cc")));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BackupManifest::parse(&bytes);
        }

        #[test]
        fn chunking_does_not_change_checksums(data in proptest::collection::vec(any::<u8>(), 0..3000), split in 1usize..500) {
            let algs = [ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Sha256];
            let mut a = ChecksumCollector::new(&algs);
            a.file_started(Path::new("f"), data.len() as u64);
            for c in data.chunks(split) { a.file_data(c); }
            a.file_finished();
            let f = &a.files()[Path::new("f")];
            prop_assert_eq!(&f.checksums[0].digest, &crc32c::crc32c(&data).to_le_bytes().to_vec());
            prop_assert_eq!(&f.checksums[1].digest, &Sha256::digest(&data).to_vec());
        }
    }
}
