//! `restore_command = 'walrelay restore %f %p -D /archive'`: hand PostgreSQL one file from the archive.
//!
//! PostgreSQL runs restore_command for every segment and history file recovery needs, and also for
//! files that do not exist (history files of timelines that were never created, the segment after the
//! end of WAL). Its contract (`RestoreArchivedFile` in `xlogarchive.c`):
//! * exit 0 means "the file is at %p now", and a segment must then have exactly `wal_segment_size`
//!   bytes — a shorter one is FATAL outside standby mode;
//! * any other exit below 126 means "not available"; PostgreSQL falls back to pg_wal or streaming,
//!   and when nothing has the file, archive recovery ends there and the server is promoted;
//! * an exit above 125 (or death by a signal) is FATAL: the startup process stops.
//!
//! So a missing file exits 1 quietly ([`RestoreOutcome::NotFound`]), while a damaged one exits
//! [`RESTORE_EXIT_CORRUPT`] (200) and an IO error [`RESTORE_EXIT_ERROR`] (201) with a one-line
//! message: a broken archive stops recovery instead of silently ending it before the damaged file
//! (see [`crate::error`]). What we write is complete: decoded into `%p.tmp` in the destination
//! directory, size-checked, and only then renamed to `%p` — `%p` never exists half-written.
//!
//! # Durability: PostgreSQL's job, not restore_command's
//!
//! `%p` is a scratch name (`pg_wal/RECOVERYXLOG`, `RECOVERYHISTORY`). PostgreSQL removes it before
//! every call, and keeps what it restored by renaming it to its real name with `durable_rename()`
//! (`KeepFileRestoredFromArchive`, every major walrelay supports), which fsyncs the file before the
//! rename and the directory after it. After a crash, recovery starts again from its last
//! restartpoint and asks restore_command again. So restore does not fsync by default: `cp`, the
//! restore_command of PostgreSQL's documentation, does not either, and the fsync would only be
//! paid twice (ours, then PostgreSQL's, each a cache flush of the disk). [`RestoreOptions::fsync`]
//! (`walrelay restore --fsync`) fsyncs `%p` and its directory before exiting, for consumers other
//! than PostgreSQL's recovery.
//!
//! # Fast paths
//!
//! A plain segment is copied by the kernel (`copy_file_range`, as `cp` does) instead of through
//! user-space buffers; a `.zst` segment that is one frame recording its size (walrelay's are) is
//! decoded on one thread while a second writes it, in 256 kB writes. Both check what the slow
//! path checks: the size of a complete segment, the zstd frame's content checksum. Anything else
//! (gzip, LZ4, a zstd frame without a size, a damaged file) takes the streaming decoder, which
//! names what is wrong.
//!
//! [`RESTORE_EXIT_CORRUPT`]: crate::RESTORE_EXIT_CORRUPT
//! [`RESTORE_EXIT_ERROR`]: crate::RESTORE_EXIT_ERROR
//!
//! # Partial segments
//!
//! With [`RestoreOptions::partial`], when `NAME` has no complete copy, the newest of `NAME.partial`,
//! `NAME.gz.partial`, `NAME.lz4.partial`, `NAME.zst.partial` is served instead, zero-padded to a full
//! segment. pg_receivewal pre-pads its plain `.partial` files with zeros, and WAL after the last
//! record is zeros too: recovery reads the valid records, then finds a page whose header is all zeros
//! ("invalid magic number 0000"), treats that as the end of WAL and stops cleanly there — exactly
//! what it does at the end of a segment PostgreSQL itself was writing when it crashed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use walrelay_durable::{self as durable, Owner};
use walrelay_protocol::segment::MAX_WAL_SEGMENT_SIZE;
use walrelay_protocol::{WalFileName, WalSegmentSize};

use crate::compression::{
    copy_content, decode_bytes, read_content, segment_sha256, Copied, HashTee,
};
use crate::error::{ArchiveError, Result, RESTORE_EXIT_NOT_FOUND, RESTORE_EXIT_RESTORED};

/// History files are a few lines per timeline switch; anything this large is not one.
const MAX_HISTORY_FILE: u64 = 64 * 1024 * 1024;

/// How to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The cluster's `wal_segment_size`. `None`: take it from the file — the size of a complete
    /// segment, or the `xlp_seg_size` field of a partial segment's first page header.
    pub seg_size: Option<WalSegmentSize>,
    /// Serve a zero-padded `.partial` segment when no complete copy exists (see the module docs).
    pub partial: bool,
    /// Owner of the restored file; `None`: the destination directory's owner when running as root.
    pub owner: Option<Owner>,
    /// fsync `dest` and its directory before returning (see the module docs: PostgreSQL does this
    /// itself for the files it keeps, so `walrelay restore` leaves it to `--fsync`).
    pub fsync: bool,
}

/// What was restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The archive file it came from.
    pub source: PathBuf,
    /// Bytes written to the destination.
    pub bytes: u64,
    /// For a partial segment: how many bytes came from the archive before the zero padding.
    pub padded_from: Option<u64>,
}

/// The outcome of a restore that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Restored(Restored),
    /// The archive has no usable copy of the file.
    NotFound,
}

impl RestoreOutcome {
    /// The exit code for restore_command: 0 restored, 1 not found.
    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreOutcome::Restored(_) => RESTORE_EXIT_RESTORED,
            RestoreOutcome::NotFound => RESTORE_EXIT_NOT_FOUND,
        }
    }
}

/// Restores `wal_file_name` (`%f`: a segment, `.history` or `.backup` name) from the archive `dir`
/// to `dest` (`%p`). See the module docs for the outcomes.
pub fn restore(
    dir: &Path,
    wal_file_name: &str,
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome> {
    let is_segment = requested_is_segment(wal_file_name)?;
    if !dir.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let target = Target::for_dest(dest, opts)?;
    let recorded = RecordedHashes::of(dir, wal_file_name);

    if !is_segment {
        let src = dir.join(wal_file_name);
        if !is_file(&src)? {
            return Ok(RestoreOutcome::NotFound);
        }
        let copied = target.write_with(|out| {
            let mut tee = HashTee::new(out);
            let c = copy_content(&src, &mut tee, MAX_HISTORY_FILE, false)?;
            recorded.check(&src, tee.finish())?;
            Ok(c)
        })?;
        return Ok(RestoreOutcome::Restored(Restored {
            source: src,
            bytes: copied.bytes,
            padded_from: None,
        }));
    }

    // Complete copies, best first. A damaged one is skipped (with a warning) if a later one is good:
    // the copies hold the same segment, so any good one is the right answer.
    let mut damaged: Option<ArchiveError> = None;
    for suffix in ["", ".gz", ".lz4", ".zst"] {
        let src = dir.join(format!("{wal_file_name}{suffix}"));
        if !is_file(&src)? {
            continue;
        }
        match restore_complete(&src, &target, opts.seg_size, &recorded) {
            Ok(r) => {
                if let Some(e) = &damaged {
                    tracing::warn!(error = %e, used = %src.display(), "skipped a damaged copy");
                }
                return Ok(RestoreOutcome::Restored(r));
            }
            Err(e) if e.is_corruption() => {
                damaged.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = damaged {
        return Err(e);
    }
    if !opts.partial {
        return Ok(RestoreOutcome::NotFound);
    }

    let mut partials = Vec::new();
    for suffix in [".partial", ".gz.partial", ".lz4.partial", ".zst.partial"] {
        let src = dir.join(format!("{wal_file_name}{suffix}"));
        match fs::metadata(&src) {
            Ok(m) if m.is_file() => {
                partials.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), src))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io("stat", &src, e)),
        }
    }
    // Newest first; the sort is stable, so on equal times a plain partial wins.
    partials.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (_, src) in partials {
        match restore_partial(&src, &target, opts.seg_size) {
            Ok(Some(r)) => return Ok(RestoreOutcome::Restored(r)),
            Ok(None) => tracing::debug!(file = %src.display(), "partial segment holds no WAL"),
            Err(e) if e.is_corruption() => {
                tracing::warn!(error = %e, "skipping damaged partial segment");
                damaged.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match damaged {
        Some(e) => Err(e),
        None => Ok(RestoreOutcome::NotFound),
    }
}

/// Checks a name PostgreSQL asks restore_command for (`%f`): true for a segment, false for a
/// `.history` or `.backup` file, an error for anything else.
pub fn requested_is_segment(wal_file_name: &str) -> Result<bool> {
    match WalFileName::parse(wal_file_name) {
        Some(WalFileName::Segment {
            compression: None,
            partial: false,
            ..
        }) => Ok(true),
        Some(WalFileName::History(_)) | Some(WalFileName::BackupHistory { .. }) => Ok(false),
        _ => Err(ArchiveError::BadFileName {
            name: wal_file_name.to_string(),
            reason:
                "restore_command is asked for segment (24 hex digits), .history or .backup names",
        }),
    }
}

fn is_file(p: &Path) -> Result<bool> {
    match fs::metadata(p) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArchiveError::io("stat", p, e)),
    }
}

/// Where and how the restored file is written.
struct Target<'a> {
    dest: &'a Path,
    mode: u32,
    owner: Owner,
    fsync: bool,
}

impl<'a> Target<'a> {
    /// Where `dest` goes: its mode follows the directory (pg_file_create_mode: group-readable files
    /// in a group-accessible data directory), its owner is the directory's when running as root.
    fn for_dest(dest: &'a Path, opts: &RestoreOptions) -> Result<Target<'a>> {
        let dest_dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir_mode = fs::metadata(&dest_dir)
            .map_err(|e| ArchiveError::io("stat destination directory", &dest_dir, e))?
            .permissions()
            .mode();
        let mode = if dir_mode & 0o050 == 0o050 {
            0o640
        } else {
            0o600
        };
        let owner = opts
            .owner
            .unwrap_or_else(|| Owner::of_dir_if_root(&dest_dir));
        Ok(Target {
            dest,
            mode,
            owner,
            fsync: opts.fsync,
        })
    }

    /// Writes `dest.tmp` with `fill` (through a 64 kB buffer) and renames it to `dest`; see
    /// [`Target::write_file_with`].
    fn write_with<T>(&self, fill: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
        self.write_file_with(|file, tmp| {
            let mut out = BufWriter::with_capacity(1 << 16, file);
            let value = fill(&mut out)?;
            out.flush().map_err(|e| ArchiveError::io("write", tmp, e))?;
            Ok(value)
        })
    }

    /// Writes `dest.tmp` with `fill` (given the file and its path), fsyncs it if asked, and
    /// renames it to `dest` (then fsyncs the directory if asked); removes the temp file on any
    /// failure, including `fill` rejecting the content. `dest` appears only complete.
    fn write_file_with<T>(&self, fill: impl FnOnce(&mut File, &Path) -> Result<T>) -> Result<T> {
        let tmp = durable::temp_path_for(self.dest);
        let result = (|| {
            let mut file = durable::create_new_file(&tmp, self.mode, self.owner)?;
            let value = fill(&mut file, &tmp)?;
            if self.fsync {
                file.sync_all()
                    .map_err(|e| ArchiveError::io("fsync", &tmp, e))?;
            }
            drop(file);
            if self.fsync {
                durable::rename_durable(&tmp, self.dest)?;
            } else {
                fs::rename(&tmp, self.dest)
                    .map_err(|e| ArchiveError::io("rename into place", &tmp, e))?;
            }
            Ok(value)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Size of each `write` of a decoded segment: large writes into new page-cache memory were at
/// times several times as expensive in the kernel on the benchmark machine (docs/benchmarks.md,
/// bootstrap fix 1); 256 kB never were.
const WRITE_CHUNK: usize = 256 * 1024;

/// The plain fast path: the kernel copies (`copy_file_range`, falling back to `sendfile` or a
/// copy loop in `std::io::copy`), at most `max + 1` bytes so that an oversized file is seen.
fn copy_plain(src: &Path, out: &mut File, tmp: &Path, max: u64) -> Result<u64> {
    let file = File::open(src).map_err(|e| ArchiveError::io("open", src, e))?;
    let mut limited = file.take(max.saturating_add(1));
    io::copy(&mut limited, out).map_err(|e| {
        if e.kind() == io::ErrorKind::WriteZero {
            ArchiveError::io("write", tmp, e)
        } else {
            ArchiveError::io("copy", src, e)
        }
    })
}

/// Decoded bytes per buffer handed from the decoding thread to the writing one.
const DECODE_CHUNK: usize = 1 << 20;
/// Buffers in flight between the two (reused: each is page-faulted in once).
const DECODE_BUFFERS: usize = 3;

/// The zstd fast path: the file read in one piece, decoded on this thread while a second one
/// writes what is decoded to `out` (decompression is most of the cost, the copy into the page
/// cache most of the rest; PostgreSQL's startup process waits idle meanwhile). The frame's
/// checksum, when it has one, is checked by the decoder at its end. `Ok(None)` when the file does
/// not qualify — not one frame with a recorded size of at most `max` — or does not decode: the
/// caller then starts over with the streaming decoder, which names the problem. Errors are
/// failures to read `src` or to write `out`.
fn restore_zstd_pipelined(src: &Path, out: &mut File, tmp: &Path, max: u64) -> Result<Option<u64>> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};

    let mut file = File::open(src).map_err(|e| ArchiveError::io("open", src, e))?;
    let len = file
        .metadata()
        .map_err(|e| ArchiveError::io("stat", src, e))?
        .len();
    if len == 0 || len > max.saturating_add(1 << 20) {
        return Ok(None);
    }
    let mut stored = Vec::with_capacity(len as usize);
    file.read_to_end(&mut stored)
        .map_err(|e| ArchiveError::io("read", src, e))?;
    let size = match zstd::zstd_safe::get_frame_content_size(&stored) {
        Ok(Some(n)) if n <= max => n,
        _ => return Ok(None),
    };
    match zstd::zstd_safe::find_frame_compressed_size(&stored) {
        Ok(n) if n == stored.len() => {}
        _ => return Ok(None),
    }

    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(DECODE_BUFFERS);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..DECODE_BUFFERS {
        let _ = free_tx.send(vec![0u8; DECODE_CHUNK]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<()> {
            for (buf, n) in full_rx {
                for chunk in buf[..n].chunks(WRITE_CHUNK) {
                    out.write_all(chunk)?;
                }
                let _ = free_tx.send(buf);
            }
            Ok(())
        });
        // Decode: `Some(total)` when the frame ended cleanly, `None` on any decoding problem.
        let decoded = (|| {
            let mut dctx = DCtx::create();
            let mut input = InBuffer::around(&stored);
            let mut total = 0u64;
            loop {
                let mut buf = free_rx.recv().ok()?; // the writer stopped: its error is reported
                let mut output = OutBuffer::around(buf.as_mut_slice());
                let mut finished = false;
                while output.pos() < DECODE_CHUNK {
                    let (in_before, out_before) = (input.pos(), output.pos());
                    match dctx.decompress_stream(&mut output, &mut input) {
                        Ok(0) => {
                            finished = true;
                            break;
                        }
                        Ok(_) if input.pos() == in_before && output.pos() == out_before => {
                            return None; // no progress: the frame is truncated
                        }
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
                let n = output.pos();
                total += n as u64;
                if total > size {
                    return None;
                }
                full_tx.send((buf, n)).ok()?;
                if finished {
                    return (input.pos() == stored.len() && total == size).then_some(total);
                }
            }
        })();
        drop(full_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writing thread panicked")));
        written.map_err(|e| ArchiveError::io("write", tmp, e))?;
        Ok(decoded)
    })
}

fn restore_complete(
    src: &Path,
    target: &Target<'_>,
    seg_size: Option<WalSegmentSize>,
    recorded: &RecordedHashes,
) -> Result<Restored> {
    let max = seg_size.map_or(u64::from(MAX_WAL_SEGMENT_SIZE), WalSegmentSize::as_u64);
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (method, _) = crate::compression::suffix_info(&name);
    let bytes = match method {
        None => target.write_file_with(|out, tmp| {
            // The kernel copies while a second thread hashes the same file (from the page
            // cache): the check costs about the hash's time beyond the copy's, not both.
            let hashing = recorded.any().then(|| {
                let src = src.to_path_buf();
                std::thread::spawn(move || segment_sha256(&src))
            });
            let n = copy_plain(src, out, tmp, max)?;
            if n > max {
                return Err(ArchiveError::corrupt(
                    src,
                    format!("holds more than {max} bytes of WAL"),
                ));
            }
            check_segment_size(src, n, seg_size)?;
            if let Some(h) = hashing {
                let got = h.join().map_err(|_| {
                    ArchiveError::io("hash", src, io::Error::other("the hashing thread panicked"))
                })??;
                recorded.check(src, got)?;
            }
            Ok(n)
        })?,
        // The frame's own content checksum (walrelay always writes one) covers the fast path.
        Some(walrelay_protocol::segment::Compression::Zstd) => {
            let mut declined = false;
            let fast = target.write_file_with(|out, tmp| {
                match restore_zstd_pipelined(src, out, tmp, max)? {
                    Some(n) => {
                        check_segment_size(src, n, seg_size)?;
                        Ok(n)
                    }
                    None => {
                        // Not renamed into place: write_file_with removes the temp file.
                        declined = true;
                        Err(ArchiveError::corrupt(src, "left to the streaming decoder"))
                    }
                }
            });
            match fast {
                Ok(n) => n,
                Err(_) if declined => restore_streaming(src, target, max, seg_size, recorded)?,
                Err(e) => return Err(e),
            }
        }
        Some(_) => restore_streaming(src, target, max, seg_size, recorded)?,
    };
    Ok(Restored {
        source: src.to_path_buf(),
        bytes,
        padded_from: None,
    })
}

/// The general path: decode through the streaming reader of the file's format.
fn restore_streaming(
    src: &Path,
    target: &Target<'_>,
    max: u64,
    seg_size: Option<WalSegmentSize>,
    recorded: &RecordedHashes,
) -> Result<u64> {
    let copied = target.write_with(|out| {
        let mut tee = HashTee::new(out);
        let c = copy_content(src, &mut tee, max, false)?;
        check_segment_size(src, c.bytes, seg_size)?;
        recorded.check(src, tee.finish())?;
        Ok(c)
    })?;
    Ok(copied.bytes)
}

/// The SHA-256 `walrelay.sha256` recorded for the file asked for, when the archive keeps the list
/// (`receive`'s default). A plain segment has no checksum of its own: a flipped byte in it would
/// otherwise be handed to PostgreSQL, whose recovery would stop at the bad record and promote —
/// ending recovery early, the one thing restore must never cause. Checked, a damaged file exits
/// 200 (recovery stops, FATAL) unless another copy is good.
struct RecordedHashes(Vec<[u8; 32]>);

impl RecordedHashes {
    fn of(dir: &Path, wal_file_name: &str) -> RecordedHashes {
        match crate::checksum::recorded_hashes(dir, wal_file_name) {
            Ok(h) => RecordedHashes(h),
            // Unreadable (another user's 0600 list, say): restore without it, as before there was
            // one, rather than stop recovery over the list.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the archive's checksum list; restoring without it");
                RecordedHashes(Vec::new())
            }
        }
    }

    fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// Ok when nothing is recorded or `got` is a recorded hash.
    fn check(&self, src: &Path, got: [u8; 32]) -> Result<()> {
        if self.0.is_empty() || self.0.contains(&got) {
            return Ok(());
        }
        Err(ArchiveError::corrupt(
            src,
            "its SHA-256 is not the one walrelay.sha256 recorded when it was archived: the file was damaged since (walrelay verify lists every damaged file)",
        ))
    }
}

/// A complete segment holds exactly the segment size (or, when unknown, a valid one).
fn check_segment_size(src: &Path, bytes: u64, seg_size: Option<WalSegmentSize>) -> Result<()> {
    let size_ok = match seg_size {
        Some(s) => bytes == s.as_u64(),
        None => WalSegmentSize::new(bytes).is_ok(),
    };
    if size_ok {
        return Ok(());
    }
    let expected = seg_size.map_or_else(
        || "a power of two between 1 MB and 1 GB".to_string(),
        |s| s.as_u64().to_string(),
    );
    Err(ArchiveError::corrupt(
        src,
        format!("holds {bytes} bytes of WAL, expected {expected}"),
    ))
}

/// Moves a complete segment that is already a plain, checked file on the destination's file
/// system (a prefetch cache in `pg_wal`) to `dest` (`%p`): its size is checked, it gets the mode
/// and owner [`restore`] would give it, and it is renamed into place (the directory fsynced after
/// it with [`RestoreOptions::fsync`]) — no copy. `Ok(false)`
/// when it cannot be renamed there (another file system): the caller copies instead.
pub fn restore_by_rename(src: &Path, dest: &Path, opts: &RestoreOptions) -> Result<bool> {
    let target = Target::for_dest(dest, opts)?;
    let len = fs::metadata(src)
        .map_err(|e| ArchiveError::io("stat", src, e))?
        .len();
    check_segment_size(src, len, opts.seg_size)?;
    fs::set_permissions(src, fs::Permissions::from_mode(target.mode))
        .map_err(|e| ArchiveError::io("set the mode of", src, e))?;
    target.owner.apply(src)?;
    match fs::rename(src, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => return Ok(false),
        Err(e) => return Err(ArchiveError::io("rename into place", src, e)),
    }
    if target.fsync {
        durable::fsync_parent(dest)?;
    }
    Ok(true)
}

/// Restores `wal_file_name` (`%f`) from bytes fetched elsewhere — an object store, a prefetch
/// cache — to `dest` (`%p`), with the same checks and the same atomic write as [`restore`].
/// `shown_as` is where the bytes came from (for messages; its file name's suffix says how they
/// are compressed). A segment must decode to a whole segment; `.history` and `.backup` files are
/// written as they are.
pub fn restore_bytes(
    wal_file_name: &str,
    shown_as: &Path,
    stored: &[u8],
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<Restored> {
    let is_segment = requested_is_segment(wal_file_name)?;
    let target = Target::for_dest(dest, opts)?;
    let bytes = if is_segment {
        let max = opts
            .seg_size
            .map_or(u64::from(MAX_WAL_SEGMENT_SIZE), WalSegmentSize::as_u64);
        let (decoded, _) = decode_bytes(shown_as, stored, max, false)?;
        check_segment_size(shown_as, decoded.len() as u64, opts.seg_size)?;
        std::borrow::Cow::Owned(decoded)
    } else {
        if stored.len() as u64 > MAX_HISTORY_FILE {
            return Err(ArchiveError::corrupt(
                shown_as,
                "too large for a history file",
            ));
        }
        std::borrow::Cow::Borrowed(stored)
    };
    target.write_with(|out| {
        out.write_all(&bytes)
            .map_err(|e| ArchiveError::io("write", target.dest, e))
    })?;
    Ok(Restored {
        source: shown_as.to_path_buf(),
        bytes: bytes.len() as u64,
        padded_from: None,
    })
}

/// `XLP_LONG_HEADER` in `xlp_info`: the page starts with `XLogLongPageHeaderData`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Offsets in `XLogLongPageHeaderData` (x86-64/aarch64 layout: the 20-byte short header is padded
/// to 24 before `xlp_sysid`): `xlp_info` at 2, `xlp_seg_size` at 32.
const XLP_INFO_OFFSET: usize = 2;
const XLP_SEG_SIZE_OFFSET: usize = 32;

/// The segment size a segment's first page header records, if it has a long header with a valid
/// size. (The wal crate validates headers fully; this only reads the one field restore needs.)
pub(crate) fn seg_size_from_first_page(bytes: &[u8]) -> Option<WalSegmentSize> {
    let info = bytes.get(XLP_INFO_OFFSET..XLP_INFO_OFFSET + 2)?;
    if u16::from_le_bytes([info[0], info[1]]) & XLP_LONG_HEADER == 0 {
        return None;
    }
    let sz = bytes.get(XLP_SEG_SIZE_OFFSET..XLP_SEG_SIZE_OFFSET + 4)?;
    WalSegmentSize::new(u64::from(u32::from_le_bytes([sz[0], sz[1], sz[2], sz[3]]))).ok()
}

/// Restores a partial segment zero-padded to full size; `None` when it holds no WAL at all.
fn restore_partial(
    src: &Path,
    target: &Target<'_>,
    seg_size: Option<WalSegmentSize>,
) -> Result<Option<Restored>> {
    let max = seg_size.map_or(u64::from(MAX_WAL_SEGMENT_SIZE), WalSegmentSize::as_u64);
    let (bytes, Copied { truncated, .. }) = read_content(src, max, true)?;
    if bytes.is_empty() || bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let seg = match seg_size {
        Some(s) => s,
        None => {
            seg_size_from_first_page(&bytes).ok_or_else(|| ArchiveError::UnknownSegmentSize {
                path: src.to_path_buf(),
                reason: "a partial segment whose first page has no long header to read it from"
                    .into(),
            })?
        }
    };
    if bytes.len() as u64 > seg.as_u64() {
        return Err(ArchiveError::corrupt(
            src,
            format!(
                "holds {} bytes, more than a segment ({})",
                bytes.len(),
                seg.as_u64()
            ),
        ));
    }
    if truncated {
        tracing::debug!(file = %src.display(), bytes = bytes.len(), "compressed partial segment ends mid-stream, as expected");
    }
    let valid = bytes.len() as u64;
    let total = target.write_with(|out| {
        let w = |e| ArchiveError::io("write", target.dest, e);
        out.write_all(&bytes).map_err(w)?;
        let zeros = vec![0u8; 1 << 16];
        let mut left = seg.as_u64() - valid;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            out.write_all(&zeros[..n]).map_err(w)?;
            left -= n as u64;
        }
        Ok(seg.as_u64())
    })?;
    Ok(Some(Restored {
        source: src.to_path_buf(),
        bytes: total,
        padded_from: Some(valid),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::compress_completed_segment;
    use crate::error::{RESTORE_EXIT_CORRUPT, RESTORE_EXIT_ERROR};
    use crate::testutil::fake_segment;
    use crate::Compression;
    use sha2::{Digest, Sha256};
    use std::fs::File;

    const MB: usize = 1024 * 1024;
    const SEG: &str = "000000010000000000000003";

    fn seg1mb() -> Option<WalSegmentSize> {
        Some(WalSegmentSize::new(MB as u64).unwrap())
    }

    /// Bytes that start like a segment's first page: long header with xlp_seg_size = 1 MB.
    fn wal_like(len: usize, seed: u8) -> Vec<u8> {
        let mut v = fake_segment(len, seed);
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        v[32..36].copy_from_slice(&(MB as u32).to_le_bytes());
        v
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        archive: PathBuf,
        pg_wal: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("archive");
        let pg_wal = tmp.path().join("pg_wal");
        fs::create_dir(&archive).unwrap();
        fs::create_dir(&pg_wal).unwrap();
        fs::set_permissions(&pg_wal, fs::Permissions::from_mode(0o700)).unwrap();
        Fixture {
            _tmp: tmp,
            archive,
            pg_wal,
        }
    }

    fn opts(partial: bool) -> RestoreOptions {
        RestoreOptions {
            seg_size: seg1mb(),
            partial,
            owner: None,
            fsync: false,
        }
    }

    #[test]
    fn restores_each_format_byte_identical() {
        for method in [
            Compression::None,
            Compression::Gzip { level: 1 },
            Compression::Lz4,
            Compression::Zstd { level: 1 },
        ] {
            let f = fixture();
            let data = wal_like(MB, 7);
            fs::write(f.archive.join(SEG), &data).unwrap();
            compress_completed_segment(&f.archive, SEG, method, Owner::current()).unwrap();
            let dest = f.pg_wal.join("RECOVERYXLOG");
            let out = restore(&f.archive, SEG, &dest, &opts(false)).unwrap();
            let RestoreOutcome::Restored(r) = &out else {
                panic!("{method}: {out:?}")
            };
            assert_eq!(r.bytes, MB as u64);
            assert_eq!(out.exit_code(), 0);
            assert_eq!(fs::read(&dest).unwrap(), data, "{method}");
            assert!(!durable::temp_path_for(&dest).exists());
            assert_eq!(
                fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // Inferring the size works for complete files too.
            let inferred = RestoreOptions::default();
            assert!(matches!(
                restore(&f.archive, SEG, &dest, &inferred).unwrap(),
                RestoreOutcome::Restored(_)
            ));
        }
    }

    #[test]
    fn missing_files_are_quiet_not_found() {
        let f = fixture();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        for name in [
            SEG,
            "00000005.history",
            "000000010000000000000002.00000028.backup",
        ] {
            let out = restore(&f.archive, name, &dest, &opts(true)).unwrap();
            assert_eq!(out, RestoreOutcome::NotFound, "{name}");
            assert_eq!(out.exit_code(), RESTORE_EXIT_NOT_FOUND);
        }
        assert!(!dest.exists());
        // A partial is not served without --partial.
        fs::write(f.archive.join(format!("{SEG}.partial")), wal_like(1000, 1)).unwrap();
        assert_eq!(
            restore(&f.archive, SEG, &dest, &opts(false)).unwrap(),
            RestoreOutcome::NotFound
        );
    }

    #[test]
    fn history_files_are_copied_as_is() {
        let f = fixture();
        let text = "1\t0/3000000\tno recovery target specified\n";
        fs::write(f.archive.join("00000002.history"), text).unwrap();
        let dest = f.pg_wal.join("RECOVERYHISTORY");
        let out = restore(&f.archive, "00000002.history", &dest, &opts(false)).unwrap();
        assert!(matches!(out, RestoreOutcome::Restored(_)));
        assert_eq!(fs::read_to_string(&dest).unwrap(), text);
    }

    #[test]
    fn bad_names_and_missing_archive_are_errors() {
        let f = fixture();
        let dest = f.pg_wal.join("x");
        for bad in [
            "",
            "../../etc/passwd",
            "000000010000000000000003.gz",
            "000000010000000000000003.partial",
            "walrelay.sha256",
        ] {
            let e = restore(&f.archive, bad, &dest, &opts(false)).unwrap_err();
            assert_eq!(e.restore_exit_code(), RESTORE_EXIT_ERROR, "{bad}: {e}");
        }
        let e = restore(&f.archive.join("nope"), SEG, &dest, &opts(false)).unwrap_err();
        assert!(matches!(e, ArchiveError::NotADirectory { .. }));
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_ERROR);
        let e = restore(
            &f.archive,
            SEG,
            &f.pg_wal.join("no/such/dir/x"),
            &opts(false),
        )
        .unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_ERROR, "{e}");
    }

    #[test]
    fn wrong_size_and_corrupt_files_exit_corrupt_and_leave_nothing() {
        let f = fixture();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        fs::write(f.archive.join(SEG), vec![1u8; MB - 1]).unwrap();
        let e = restore(&f.archive, SEG, &dest, &opts(false)).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");
        assert!(e.to_string().contains(SEG), "names the file: {e}");
        assert!(!dest.exists() && !durable::temp_path_for(&dest).exists());
        // Inferred size: 1 MB - 1 is not a segment size either.
        let e = restore(&f.archive, SEG, &dest, &RestoreOptions::default()).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");

        // Truncated .gz alone.
        let f = fixture();
        let data = wal_like(MB, 3);
        fs::write(f.archive.join(SEG), &data).unwrap();
        let gz = compress_completed_segment(
            &f.archive,
            SEG,
            Compression::Gzip { level: 1 },
            Owner::current(),
        )
        .unwrap();
        let bytes = fs::read(&gz).unwrap();
        fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let e = restore(&f.archive, SEG, &dest, &opts(false)).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");
        assert!(!dest.exists());
        // Even with --partial: a damaged complete copy is an error, not a reason to serve less.
        fs::write(f.archive.join(format!("{SEG}.partial")), &data[..1000]).unwrap();
        assert!(restore(&f.archive, SEG, &dest, &opts(true)).is_err());
    }

    #[test]
    fn damaged_plain_falls_back_to_good_compressed_copy() {
        let f = fixture();
        let data = wal_like(MB, 4);
        fs::write(f.archive.join(SEG), &data).unwrap();
        compress_completed_segment(&f.archive, SEG, Compression::Lz4, Owner::current()).unwrap();
        fs::write(f.archive.join(SEG), &data[..1234]).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        let out = restore(&f.archive, SEG, &dest, &opts(false)).unwrap();
        let RestoreOutcome::Restored(r) = out else {
            panic!()
        };
        assert!(r.source.to_string_lossy().ends_with(".lz4"));
        assert_eq!(fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn recorded_sha256_catches_damage_a_plain_copy_cannot_show() {
        let f = fixture();
        let data = wal_like(MB, 5);
        let sha: [u8; 32] = Sha256::digest(&data).into();
        crate::record_checksum(&f.archive, SEG, &sha).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        // A good plain copy restores.
        fs::write(f.archive.join(SEG), &data).unwrap();
        assert_eq!(
            restore(&f.archive, SEG, &dest, &opts(false))
                .unwrap()
                .exit_code(),
            0
        );
        assert_eq!(fs::read(&dest).unwrap(), data);
        fs::remove_file(&dest).unwrap();
        // Four bytes zeroed in the middle: the right size, so only the hash tells. Exit 200, and
        // nothing at %p.
        let mut rotten = data.clone();
        rotten[MB / 2..MB / 2 + 4].fill(0);
        fs::write(f.archive.join(SEG), &rotten).unwrap();
        let e = restore(&f.archive, SEG, &dest, &opts(false)).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");
        assert!(e.to_string().contains("walrelay.sha256"), "{e}");
        assert!(!dest.exists());
        assert_eq!(
            fs::read_dir(&f.pg_wal).unwrap().count(),
            0,
            "no temp file left"
        );
        // A good compressed copy beside it is used instead.
        fs::write(f.archive.join(SEG), &data).unwrap();
        compress_completed_segment(
            &f.archive,
            SEG,
            Compression::Gzip { level: 1 },
            Owner::current(),
        )
        .unwrap();
        fs::write(f.archive.join(SEG), &rotten).unwrap();
        let RestoreOutcome::Restored(r) = restore(&f.archive, SEG, &dest, &opts(false)).unwrap()
        else {
            panic!()
        };
        assert!(r.source.to_string_lossy().ends_with(".gz"), "{r:?}");
        assert_eq!(fs::read(&dest).unwrap(), data);
        // A history file is checked the same way.
        let hist = "00000002.history";
        let text = b"1\t0/3000000\tno recovery target specified\n";
        crate::record_checksum(&f.archive, hist, &Sha256::digest(text).into()).unwrap();
        fs::write(
            f.archive.join(hist),
            b"1\t0/3000001\tno recovery target specified\n",
        )
        .unwrap();
        let hdest = f.pg_wal.join("RECOVERYHISTORY");
        let e = restore(&f.archive, hist, &hdest, &opts(false)).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");
        fs::write(f.archive.join(hist), text).unwrap();
        assert_eq!(
            restore(&f.archive, hist, &hdest, &opts(false))
                .unwrap()
                .exit_code(),
            0
        );
        // A segment without an entry is restored as before (an archive kept with --no-checksums).
        let other = "000000010000000000000004";
        fs::write(f.archive.join(other), &rotten).unwrap();
        fs::remove_file(&dest).unwrap();
        assert_eq!(
            restore(&f.archive, other, &dest, &opts(false))
                .unwrap()
                .exit_code(),
            0
        );
    }

    #[test]
    fn prefers_plain_when_both_exist() {
        let f = fixture();
        let data = wal_like(MB, 5);
        fs::write(f.archive.join(SEG), &data).unwrap();
        compress_completed_segment(
            &f.archive,
            SEG,
            Compression::Zstd { level: 1 },
            Owner::current(),
        )
        .unwrap();
        fs::write(f.archive.join(SEG), &data).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        let RestoreOutcome::Restored(r) = restore(&f.archive, SEG, &dest, &opts(false)).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.source, f.archive.join(SEG));
    }

    #[test]
    fn partial_is_zero_padded_to_a_full_segment() {
        let f = fixture();
        let data = wal_like(300_000, 6);
        fs::write(f.archive.join(format!("{SEG}.partial")), &data).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        // No segment size given: read from the first page's long header.
        let o = RestoreOptions {
            partial: true,
            ..Default::default()
        };
        let RestoreOutcome::Restored(r) = restore(&f.archive, SEG, &dest, &o).unwrap() else {
            panic!()
        };
        assert_eq!(r.padded_from, Some(300_000));
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), MB);
        assert_eq!(&got[..300_000], &data[..]);
        assert!(got[300_000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn compressed_partial_mid_stream_is_served() {
        let f = fixture();
        let data = wal_like(500_000, 8);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&data).unwrap();
        enc.flush().unwrap(); // Z_SYNC_FLUSH, no trailer: what pg_receivewal leaves
        fs::write(f.archive.join(format!("{SEG}.gz.partial")), enc.get_ref()).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        let RestoreOutcome::Restored(r) = restore(&f.archive, SEG, &dest, &opts(true)).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.padded_from, Some(500_000));
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), MB);
        assert_eq!(&got[..500_000], &data[..]);
    }

    #[test]
    fn newest_partial_wins_and_useless_partials_are_not_found() {
        let f = fixture();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        let older = f.archive.join(format!("{SEG}.partial"));
        fs::write(&older, wal_like(1000, 1)).unwrap();
        let old_time = SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&older)
            .unwrap()
            .set_modified(old_time)
            .unwrap();
        let newer_data = wal_like(2000, 2);
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(&newer_data).unwrap();
        fs::write(
            f.archive.join(format!("{SEG}.lz4.partial")),
            enc.finish().unwrap(),
        )
        .unwrap();
        let RestoreOutcome::Restored(r) = restore(&f.archive, SEG, &dest, &opts(true)).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.padded_from, Some(2000));
        assert_eq!(&fs::read(&dest).unwrap()[..2000], &newer_data[..]);

        // An all-zero (pre-padded, never written) partial holds no WAL.
        let g = fixture();
        fs::write(g.archive.join(format!("{SEG}.partial")), vec![0u8; MB]).unwrap();
        assert_eq!(
            restore(&g.archive, SEG, &dest, &opts(true)).unwrap(),
            RestoreOutcome::NotFound
        );
        // Oversized partial: damage.
        fs::write(
            g.archive.join(format!("{SEG}.partial")),
            wal_like(MB + 1, 1),
        )
        .unwrap();
        assert_eq!(
            restore(&g.archive, SEG, &dest, &opts(true))
                .unwrap_err()
                .restore_exit_code(),
            RESTORE_EXIT_CORRUPT
        );
        // No size known and no long header: ask for the size.
        fs::write(g.archive.join(format!("{SEG}.partial")), vec![1u8; 100]).unwrap();
        let o = RestoreOptions {
            partial: true,
            ..Default::default()
        };
        let e = restore(&g.archive, SEG, &dest, &o).unwrap_err();
        assert!(matches!(e, ArchiveError::UnknownSegmentSize { .. }), "{e}");
    }

    #[test]
    fn zstd_fast_path_and_its_fallbacks() {
        let data = wal_like(MB, 9);
        let dest_of = |f: &Fixture| f.pg_wal.join("RECOVERYXLOG");
        let zst = |f: &Fixture| f.archive.join(format!("{SEG}.zst"));

        // walrelay's own frames (content size, checksum): the fast path, byte-identical, with
        // or without fsync.
        for fsync in [false, true] {
            let f = fixture();
            fs::write(f.archive.join(SEG), &data).unwrap();
            compress_completed_segment(
                &f.archive,
                SEG,
                Compression::Zstd { level: 3 },
                Owner::current(),
            )
            .unwrap();
            let o = RestoreOptions {
                fsync,
                ..opts(false)
            };
            let out = restore(&f.archive, SEG, &dest_of(&f), &o).unwrap();
            assert!(matches!(out, RestoreOutcome::Restored(_)), "{out:?}");
            assert_eq!(fs::read(dest_of(&f)).unwrap(), data);
            assert!(!durable::temp_path_for(&dest_of(&f)).exists());
        }

        // A frame without a recorded size (the zstd tool reading a pipe): the streaming decoder.
        let f = fixture();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(&data).unwrap();
        fs::write(zst(&f), enc.finish().unwrap()).unwrap();
        restore(&f.archive, SEG, &dest_of(&f), &opts(false)).unwrap();
        assert_eq!(fs::read(dest_of(&f)).unwrap(), data);

        // Two frames in one file: the streaming decoder reads both.
        let f = fixture();
        let mut both = zstd::bulk::compress(&data[..MB / 2], 3).unwrap();
        both.extend(zstd::bulk::compress(&data[MB / 2..], 3).unwrap());
        fs::write(zst(&f), both).unwrap();
        restore(&f.archive, SEG, &dest_of(&f), &opts(false)).unwrap();
        assert_eq!(fs::read(dest_of(&f)).unwrap(), data);

        // Damage: a flipped byte (the checksum or the decoder catches it), a cut-off frame, a
        // frame of the wrong size — exit 200, nothing at %p, no temp file left.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.set_pledged_src_size(Some(MB as u64)).unwrap();
        enc.write_all(&data).unwrap();
        let good = enc.finish().unwrap();
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        let short = zstd::bulk::compress(&data[..MB - 4096], 3).unwrap();
        for (what, bytes) in [
            ("flipped", flipped),
            ("cut", good[..good.len() - 100].to_vec()),
            ("short", short),
        ] {
            let f = fixture();
            fs::write(zst(&f), bytes).unwrap();
            let e = restore(&f.archive, SEG, &dest_of(&f), &opts(false)).unwrap_err();
            assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{what}: {e}");
            assert!(!dest_of(&f).exists(), "{what}");
            assert!(!durable::temp_path_for(&dest_of(&f)).exists(), "{what}");
        }
    }

    #[test]
    fn oversized_plain_segment_is_damage() {
        let f = fixture();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        fs::write(f.archive.join(SEG), wal_like(MB + 1, 2)).unwrap();
        let e = restore(&f.archive, SEG, &dest, &opts(false)).unwrap_err();
        assert_eq!(e.restore_exit_code(), RESTORE_EXIT_CORRUPT, "{e}");
        assert!(!dest.exists() && !durable::temp_path_for(&dest).exists());
    }

    #[test]
    fn group_readable_data_directory_gets_0640() {
        let f = fixture();
        fs::set_permissions(&f.pg_wal, fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(f.archive.join(SEG), wal_like(MB, 1)).unwrap();
        let dest = f.pg_wal.join("RECOVERYXLOG");
        restore(&f.archive, SEG, &dest, &opts(false)).unwrap();
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn header_field_reader_is_safe() {
        assert_eq!(seg_size_from_first_page(&[]), None);
        assert_eq!(seg_size_from_first_page(&[0; 35]), None);
        let mut page = vec![0u8; 40];
        page[2] = 2;
        assert_eq!(seg_size_from_first_page(&page), None); // size 0
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        assert_eq!(
            seg_size_from_first_page(&page),
            Some(WalSegmentSize::new(16 << 20).unwrap())
        );
        page[2] = 0; // short header
        assert_eq!(seg_size_from_first_page(&page), None);
    }
}
