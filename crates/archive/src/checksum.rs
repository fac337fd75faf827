//! `walrelay.sha256`: one SHA-256 per archived file, to detect bit rot.
//!
//! # Format
//!
//! One file per archive directory, in `sha256sum`'s format: lines of `HEX  NAME`, 64 lower-case hex
//! digits, two spaces, a file name. `NAME` is the *logical* name — the 24-hex-digit segment name or
//! the `.history`/`.backup` name, never a `.gz`/`.lz4`/`.zst` name — and the hash is over the WAL
//! bytes (decompressed). So an entry stays valid when a segment is compressed or recompressed, the
//! writer can hash the bytes it already has in memory while receiving, and verification proves the
//! decompressed content is the WAL that was received; for a plain archive, `sha256sum -c
//! walrelay.sha256` works as is.
//!
//! # Durability and concurrency
//!
//! [`record_checksum`] appends one line with a single `write` and fsyncs the file (and the
//! directory when it created the file): appending never rewrites earlier entries. A crash can only
//! tear the last line; the next append cuts such a torn tail off before writing. When a segment is
//! recorded twice, the last entry wins (readers report differing duplicates). Pruning rewrites the
//! file atomically (`.tmp`, fsync, rename, fsync directory). Appends and rewrites take an exclusive
//! `flock` on the archive directory, so a `receive` appending while `prune` rewrites loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use walrelay_durable::{self as durable, Owner};
use walrelay_protocol::WalFileName;

use crate::error::{ArchiveError, Result};

/// The checksum list's file name inside the archive directory.
pub const CHECKSUM_FILE_NAME: &str = "walrelay.sha256";

const CHECKSUM_FILE_MODE: u32 = 0o600;
/// Longest line we write: 64 hex + 2 spaces + the longest WAL name (`.backup`, 40) + newline.
const MAX_LINE: usize = 64 + 2 + 40 + 1;

/// An exclusive lock on the archive directory, held while the checksum list changes.
pub(crate) struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    pub(crate) fn exclusive(dir: &Path) -> Result<DirLock> {
        let f = File::open(dir).map_err(|e| ArchiveError::io("open directory", dir, e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| {
            ArchiveError::io("lock directory", dir, io::Error::from(errno))
        })?;
        Ok(DirLock { _lock: lock })
    }
}

/// Only names that can be in the list: no path separators, no newlines, nothing that is not WAL.
fn check_name(file_name: &str) -> Result<()> {
    match WalFileName::parse(file_name) {
        Some(WalFileName::Segment {
            compression: None,
            partial: false,
            ..
        })
        | Some(WalFileName::History(_))
        | Some(WalFileName::BackupHistory { .. }) => Ok(()),
        _ => Err(ArchiveError::BadFileName {
            name: file_name.to_string(),
            reason: "checksums are recorded under a bare segment, .history or .backup name",
        }),
    }
}

fn format_line(file_name: &str, sha256: &[u8; 32]) -> String {
    format!("{}  {file_name}\n", hex::encode(sha256))
}

/// Appends `sha256  file_name` to `dir/walrelay.sha256`, durably (see the module docs).
///
/// `file_name` is the logical name (bare segment name or `.history`), `sha256` the hash of the WAL
/// bytes, e.g. from [`crate::segment_sha256`] or computed while receiving.
pub fn record_checksum(dir: &Path, file_name: &str, sha256: &[u8; 32]) -> Result<()> {
    check_name(file_name)?;
    let _lock = DirLock::exclusive(dir)?;
    let path = dir.join(CHECKSUM_FILE_NAME);
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(CHECKSUM_FILE_MODE)
        .open(&path)
        .map_err(|e| ArchiveError::io("open", &path, e))?;
    if created {
        Owner::of_dir_if_root(dir).apply(&path)?;
    }
    cut_torn_tail(&path, &mut f)?;
    f.write_all(format_line(file_name, sha256).as_bytes())
        .map_err(|e| ArchiveError::io("append to", &path, e))?;
    f.sync_all()
        .map_err(|e| ArchiveError::io("fsync", &path, e))?;
    if created {
        durable::fsync_dir(dir)?;
    }
    Ok(())
}

/// If a crash tore the last line (no final newline), truncate the file to the end of the last whole
/// line, so the next entry starts on a line of its own.
fn cut_torn_tail(path: &Path, f: &mut File) -> Result<()> {
    let len = f
        .metadata()
        .map_err(|e| ArchiveError::io("stat", path, e))?
        .len();
    if len == 0 {
        return Ok(());
    }
    let tail_len = len.min(MAX_LINE as u64 * 2);
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact_at(&mut tail, len - tail_len)
        .map_err(|e| ArchiveError::io("read", path, e))?;
    if tail.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(pos) => len - tail_len + pos as u64 + 1,
        None if tail_len == len => 0,
        // A line longer than anything we write: not a torn entry of ours, so keep it and just end it.
        None => {
            f.write_all(b"\n")
                .map_err(|e| ArchiveError::io("append to", path, e))?;
            return Ok(());
        }
    };
    tracing::warn!(file = %path.display(), bytes = len - keep, "cutting a torn last line left by a crash");
    f.set_len(keep)
        .map_err(|e| ArchiveError::io("truncate", path, e))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| ArchiveError::io("seek in", path, e))?;
    Ok(())
}

/// The parsed checksum list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChecksumList {
    /// The last recorded hash per name.
    pub entries: BTreeMap<String, [u8; 32]>,
    /// Names recorded more than once with different hashes (the last one is in `entries`).
    pub conflicts: BTreeSet<String>,
    /// 1-based numbers of lines that are not `HEX  NAME` (a torn last line after a crash, or damage).
    pub malformed_lines: Vec<usize>,
}

/// Parses checksum-list text. Never fails: bad lines are listed in `malformed_lines`.
pub fn parse_checksums(text: &[u8]) -> ChecksumList {
    let mut list = ChecksumList::default();
    for (idx, raw) in text.split(|&b| b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        let parsed = std::str::from_utf8(raw).ok().and_then(|line| {
            let (hash, name) = line.split_once("  ")?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).ok()?;
            check_name(name).ok()?;
            Some((name.to_string(), bytes))
        });
        match parsed {
            Some((name, bytes)) => {
                if let Some(old) = list.entries.insert(name.clone(), bytes) {
                    if old != bytes {
                        list.conflicts.insert(name);
                    }
                }
            }
            None => list.malformed_lines.push(idx + 1),
        }
    }
    list
}

/// Reads `dir/walrelay.sha256`; a missing file is an empty list.
pub fn read_checksums(dir: &Path) -> Result<ChecksumList> {
    let path = dir.join(CHECKSUM_FILE_NAME);
    let mut text = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut text)
                .map_err(|e| ArchiveError::io("read", &path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io("open", &path, e)),
    }
    Ok(parse_checksums(&text))
}

/// The hashes `dir/walrelay.sha256` records for `file_name` (a logical name: bare segment or
/// `.history`): normally one, more if the list holds a conflict; none when the file has no entry
/// or there is no list. Only the lines naming `file_name` are decoded, so `restore`, which asks
/// once per file recovery needs, does not parse the whole list each time.
pub fn recorded_hashes(dir: &Path, file_name: &str) -> Result<Vec<[u8; 32]>> {
    let path = dir.join(CHECKSUM_FILE_NAME);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ArchiveError::io("read", &path, e)),
    };
    let suffix = format!("  {file_name}");
    let mut found = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(hash) = line.strip_suffix(suffix.as_bytes()) else {
            continue;
        };
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(hash, &mut bytes).is_ok() && !found.contains(&bytes) {
            found.push(bytes);
        }
    }
    Ok(found)
}

/// The names `dir/walrelay.sha256` has an entry for (none when the list is missing).
pub fn recorded_names(dir: &Path) -> Result<BTreeSet<String>> {
    Ok(read_checksums(dir)?.entries.into_keys().collect())
}

/// Removes the entries for `names` (all of their lines, and malformed lines) by rewriting the list
/// atomically. Returns how many lines were dropped. A missing list is left missing.
pub fn remove_checksums(dir: &Path, names: &BTreeSet<String>) -> Result<usize> {
    if names.is_empty() {
        return Ok(0);
    }
    let _lock = DirLock::exclusive(dir)?;
    let path = dir.join(CHECKSUM_FILE_NAME);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ArchiveError::io("read", &path, e)),
    };
    let mut kept = Vec::with_capacity(text.len());
    let mut dropped = 0;
    for raw in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let keep = std::str::from_utf8(raw)
            .ok()
            .and_then(|l| l.split_once("  "))
            .is_some_and(|(hash, name)| {
                hash.len() == 64 && check_name(name).is_ok() && !names.contains(name)
            });
        if keep {
            kept.extend_from_slice(raw);
            kept.push(b'\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        durable::write_file_atomic(&path, &kept, CHECKSUM_FILE_MODE, Owner::of_dir_if_root(dir))?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000000010000000000000001";
    const B: &str = "000000010000000000000002";

    #[test]
    fn append_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        record_checksum(d.path(), B, &[2; 32]).unwrap();
        record_checksum(d.path(), "00000002.history", &[3; 32]).unwrap();
        let text = fs::read_to_string(d.path().join(CHECKSUM_FILE_NAME)).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            format!("{}  {A}", "01".repeat(32))
        );
        let list = read_checksums(d.path()).unwrap();
        assert_eq!(list.entries.len(), 3);
        assert_eq!(list.entries[B], [2; 32]);
        assert!(list.conflicts.is_empty() && list.malformed_lines.is_empty());
    }

    #[test]
    fn format_is_sha256sum_compatible() {
        let d = tempfile::tempdir().unwrap();
        let data = b"some wal bytes";
        fs::write(d.path().join(A), data).unwrap();
        let sum = crate::segment_sha256(&d.path().join(A)).unwrap();
        record_checksum(d.path(), A, &sum).unwrap();
        if let Ok(out) = std::process::Command::new("sha256sum")
            .arg("-c")
            .arg(CHECKSUM_FILE_NAME)
            .current_dir(d.path())
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    #[test]
    fn refuses_names_that_are_not_logical_wal_names() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            "x",
            "000000010000000000000001.gz",
            "000000010000000000000001.partial",
            "a\nb",
            "../000000010000000000000001",
        ] {
            assert!(record_checksum(d.path(), bad, &[0; 32]).is_err(), "{bad}");
        }
        assert!(!d.path().join(CHECKSUM_FILE_NAME).exists());
    }

    #[test]
    fn torn_tail_is_cut_before_appending() {
        let d = tempfile::tempdir().unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        let p = d.path().join(CHECKSUM_FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"abcdef0123").unwrap(); // a crash mid-append
        drop(f);
        assert_eq!(read_checksums(d.path()).unwrap().malformed_lines, vec![2]);
        record_checksum(d.path(), B, &[2; 32]).unwrap();
        let list = read_checksums(d.path()).unwrap();
        assert!(list.malformed_lines.is_empty(), "{list:?}");
        assert_eq!(list.entries.len(), 2);
    }

    #[test]
    fn torn_first_line_is_cut() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(CHECKSUM_FILE_NAME), b"0123").unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        let list = read_checksums(d.path()).unwrap();
        assert!(list.malformed_lines.is_empty());
        assert_eq!(list.entries.len(), 1);
    }

    #[test]
    fn duplicates_last_wins_and_conflicts_are_listed() {
        let d = tempfile::tempdir().unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        record_checksum(d.path(), B, &[1; 32]).unwrap();
        record_checksum(d.path(), B, &[2; 32]).unwrap();
        let list = read_checksums(d.path()).unwrap();
        assert_eq!(list.entries[B], [2; 32]);
        assert_eq!(list.conflicts.iter().collect::<Vec<_>>(), vec![B]);
    }

    #[test]
    fn parse_garbage() {
        let list = parse_checksums(b"\n\xff\xfe\nzz  000000010000000000000001\n");
        assert_eq!(list.malformed_lines, vec![2, 3]);
        assert!(list.entries.is_empty());
        let short = format!("{}  {A}\n", "ab".repeat(31));
        assert_eq!(parse_checksums(short.as_bytes()).malformed_lines, vec![1]);
        assert_eq!(parse_checksums(b"").entries.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let list = parse_checksums(&text);
            proptest::prop_assert!(list.entries.len() + list.malformed_lines.len() <= text.len());
        }

        #[test]
        fn recorded_lines_parse_back(hash in proptest::array::uniform32(proptest::num::u8::ANY), segno in 0u64..100_000) {
            let name = format!("00000001{:08X}{:08X}", segno / 256, segno % 256);
            let list = parse_checksums(format_line(&name, &hash).as_bytes());
            proptest::prop_assert_eq!(list.entries.get(&name), Some(&hash));
        }
    }

    #[test]
    fn remove_rewrites_atomically() {
        let d = tempfile::tempdir().unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        record_checksum(d.path(), B, &[2; 32]).unwrap();
        record_checksum(d.path(), A, &[1; 32]).unwrap();
        let names: BTreeSet<String> = [A.to_string()].into();
        assert_eq!(remove_checksums(d.path(), &names).unwrap(), 2);
        let list = read_checksums(d.path()).unwrap();
        assert_eq!(list.entries.keys().collect::<Vec<_>>(), vec![B]);
        assert!(!durable::temp_path_for(&d.path().join(CHECKSUM_FILE_NAME)).exists());
        // Nothing to remove: no rewrite, no error; missing list stays missing.
        assert_eq!(remove_checksums(d.path(), &names).unwrap(), 0);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(remove_checksums(empty.path(), &names).unwrap(), 0);
        assert!(!empty.path().join(CHECKSUM_FILE_NAME).exists());
    }

    #[test]
    fn concurrent_appends_and_rewrites_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let names: Vec<String> = (0..200u64)
            .map(|i| format!("00000001{:08X}{:08X}", i / 256, i % 256))
            .collect();
        std::thread::scope(|s| {
            let (first, second) = names.split_at(100);
            let dir1 = dir.clone();
            s.spawn(move || {
                for n in first {
                    record_checksum(&dir1, n, &[7; 32]).unwrap();
                }
            });
            let dir2 = dir.clone();
            s.spawn(move || {
                for n in second {
                    record_checksum(&dir2, n, &[8; 32]).unwrap();
                    // A rewrite on every step, racing with the other thread's appends.
                    let gone = "000000FF000000FF000000FF";
                    record_checksum(&dir2, gone, &[9; 32]).unwrap();
                    let set: BTreeSet<String> = [gone.to_string()].into();
                    assert_eq!(remove_checksums(&dir2, &set).unwrap(), 1);
                }
            });
        });
        let list = read_checksums(&dir).unwrap();
        assert_eq!(list.entries.len(), 200);
        assert!(list.malformed_lines.is_empty());
    }
}
