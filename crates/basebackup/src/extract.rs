//! Extracting the tar archives of a base backup while they arrive, without ever writing outside the
//! target directories.
//!
//! [`ArchiveExtractor`] is fed one archive at a time — `base.tar` into the data directory, `<oid>.tar`
//! into that tablespace's prepared directory — through a blocking [`Read`] that yields bytes as they
//! come off the network (a `SyncIoBridge` on a blocking thread). It is the plain-format half of
//! pg_basebackup (`astreamer_extractor` in `src/fe_utils/astreamer_file.c`), with the checks that a
//! tool trusting its server can skip and walrelay cannot:
//!
//! * member paths must be relative and free of `..` ([`crate::member_path`]);
//! * no member is written through a symbolic link — neither one the archive created nor one that was
//!   already on disk: every directory on the way is checked with `lstat` once (then remembered), and
//!   files are opened with `O_NOFOLLOW` — except the base archive's `pg_wal` when the caller made it
//!   a link to the `--waldir` directory it names ([`ArchiveExtractor::with_wal_dir_link`]);
//! * symbolic links: `pg_tblspc/<oid>` in the base archive must name a tablespace the server announced,
//!   and is pointed at that tablespace's mapped directory; any other link must be relative and resolve
//!   inside the archive root without passing through another link; a link never replaces an existing
//!   entry;
//! * hard links, devices, FIFOs and other member types are refused (PostgreSQL sends none);
//! * a non-empty `tablespace_map` in the base archive is refused unless allowed: at startup the
//!   server would re-create every `pg_tblspc/<oid>` link from it, pointing at the *unmapped*
//!   locations outside the target. The server sends one only when `BASE_BACKUP` asks for
//!   `TABLESPACE_MAP` (pg_basebackup does in tar format), which walrelay's driver does not;
//! * permissions come from the archive, masked to `0777` (never setuid/setgid/sticky from the
//!   network), files and directories are given the configured [`Owner`], modification times are kept.
//!   Directories are created `0700` and receive their final mode and mtime when the archive is done,
//!   so a restrictive mode cannot block writing their contents and writing contents does not disturb
//!   the recorded mtime.
//!
//! Nothing is fsynced here (that would make a backup of many small files crawl); every file and
//! directory written is recorded for [`crate::sync::WrittenPaths::sync_all`]. File data is written
//! straight from the buffers it arrived in ([`ArchiveExtractor::extract_chunks`]: one `writev` per
//! 256 kB or so of CopyData payloads, no copy in between) and passed to an [`ExtractObserver`] on
//! the way, so that manifest checksums are computed without reading anything back.
//!
//! A local user who can write into the target while extraction runs could still race the checks
//! (replace a checked directory by a link); the target is expected to be private to the operator, as
//! it is for pg_basebackup.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use thiserror::Error;
use walrelay_durable::{create_dir_all_durable, DurableError, Owner};

pub use walrelay_protocol::base_backup::ArchiveKind;

use crate::member_path::{resolve_relative_link, sanitize_member_path, UnsafePath};
use crate::sync::{FileWriteback, WritebackBehind, WrittenPaths};
use crate::tablespace::{canonicalize_path, PreparedTablespace};
use crate::tar_stream::{ChunkRead, CopyChunks, MemberHeader, MemberKind, TarError, TarReader};

/// Default size of one write: 32 kB, the size of the server's CopyData messages and so of
/// pg_basebackup's writes. Larger writes save system calls but make the kernel allocate larger
/// page-cache folios for them, and on the Linux 6.18 virtual machine we measured that allocation
/// is at times several times as expensive (the copy into the page cache dominated): 1 MB writes
/// cost four to ten times the kernel CPU of 512 kB ones, and with 256 kB writes one bootstrap of
/// 1.1 GB in two or three took 1.5–2.9 s of system time instead of 0.5–0.6 s, where 32 kB writes
/// stayed at 0.55–0.59 s in the same rounds (docs/benchmarks.md, "Write size").
pub const DEFAULT_WRITE_BUFFER: usize = 32 * 1024;

/// Most buffers gathered into one `writev`. CopyData payloads are 32 kB, so 256 kB take about 9;
/// the cap keeps a stream of tiny messages far from the kernel's `IOV_MAX` (1024).
const MAX_WRITE_SLICES: usize = 64;

/// Mode of directories created before the archive says otherwise (`pg_dir_create_mode`).
const NEW_DIR_MODE: u32 = 0o700;

/// Sees every regular file as it is written: its path as the backup manifest names it (relative to
/// the data directory; tablespace files under `pg_tblspc/<oid>/`), its size, then its bytes in order.
pub trait ExtractObserver {
    fn file_started(&mut self, path: &Path, size: u64) {
        let _ = (path, size);
    }
    fn file_data(&mut self, data: &[u8]) {
        let _ = data;
    }
    fn file_finished(&mut self) {}
}

/// No observation.
impl ExtractObserver for () {}

/// Archive bytes consumed so far by one [`ArchiveExtractor`], over all its archives; readable from
/// another thread for progress reports (compare with the server's `'p'` progress messages).
#[derive(Clone, Debug, Default)]
pub struct ExtractProgress(Arc<AtomicU64>);

impl ExtractProgress {
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one archive contained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Archive bytes consumed (headers, data, padding, end blocks).
    pub archive_bytes: u64,
    pub files: u64,
    /// Bytes of file data written.
    pub file_bytes: u64,
    pub directories: u64,
    pub symlinks: u64,
}

/// Why extraction stopped. Every variant names the member and what to do.
#[derive(Debug, Error)]
pub enum ExtractError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("refusing archive member \"{path}\": {reason}; the server sent a path outside the target directory")]
    UnsafePath { path: String, reason: UnsafePath },
    #[error("refusing archive member \"{path}\": it would be written through the symbolic link \"{link}\"; remove the link from the target directory or check the server")]
    ThroughSymlink { path: String, link: PathBuf },
    #[error("refusing archive member \"{path}\": it is a {kind}, which a PostgreSQL base backup never contains")]
    UnsupportedMember { path: String, kind: String },
    #[error("refusing symbolic link \"{path}\" -> \"{target}\": {reason}")]
    SymlinkRefused {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("the server sent an archive for tablespace {0}, which was not in its tablespace list: the server is misbehaving")]
    UnknownTablespace(u32),
    #[error("the server sent tablespace link \"{path}\" for a tablespace it did not announce: the server is misbehaving")]
    UnknownTablespaceLink { path: String },
    #[error("tablespace link \"{path}\" points to \"{sent}\" but the server announced that tablespace at \"{announced}\": the server is misbehaving")]
    TablespaceLinkMismatch {
        path: String,
        sent: String,
        announced: String,
    },
    #[error("the server sent a non-empty tablespace_map, which would link tablespaces to their original, unmapped locations when the standby starts: do not request TABLESPACE_MAP")]
    TablespaceMap,
    #[error("\"{0}\" exists and is not a directory, but the archive needs a directory there: empty the target directory and retry")]
    NotADirectory(PathBuf),
    #[error("\"{0}\" already exists as something the archive member cannot replace: empty the target directory and retry")]
    Exists(PathBuf),
    #[error("could not {action} \"{path}\": {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Durable(#[from] DurableError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Extracts the archives of one base backup. See the module documentation for the rules.
pub struct ArchiveExtractor {
    data_dir: PathBuf,
    tablespaces: Vec<PreparedTablespace>,
    owner: Owner,
    /// Largest single write.
    write_size: usize,
    progress: ExtractProgress,
    written: WrittenPaths,
    allow_tablespace_map: bool,
    writeback: Option<WritebackBehind>,
    /// `pg_wal` in the base archive's root is a link to this directory, made by the caller
    /// (pg_basebackup's `--waldir`): written through, the one link that may be.
    wal_link: Option<PathBuf>,
    /// Write `global/pg_control` as [`HELD_CONTROL_FILE`]; the caller renames it into place
    /// ([`release_control_file`]) once the directory is configured.
    hold_control: bool,
}

/// Where `global/pg_control` waits, under [`ArchiveExtractor::hold_control_file`], until the
/// data directory is configured. Without pg_control the server refuses to start, and a
/// bootstrap re-run sees an unfinished backup (`backup_label` without it).
pub const HELD_CONTROL_FILE: &str = "global/pg_control.walrelay-held";

/// Renames the held `global/pg_control` into place (a no-op when none is held), owned and
/// moded as extracted; the caller fsyncs `global/` afterwards.
pub fn release_control_file(data_dir: &Path) -> Result<(), DurableError> {
    let held = data_dir.join(HELD_CONTROL_FILE);
    let control = data_dir.join("global/pg_control");
    match fs::rename(&held, &control) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::new("rename into place", held, e)),
    }
}

impl ArchiveExtractor {
    /// `tablespaces` are the prepared targets from [`crate::tablespace::prepare_tablespace_dirs`].
    pub fn new(
        data_dir: impl Into<PathBuf>,
        tablespaces: Vec<PreparedTablespace>,
        owner: Owner,
    ) -> Self {
        ArchiveExtractor {
            data_dir: data_dir.into(),
            tablespaces,
            owner,
            write_size: DEFAULT_WRITE_BUFFER,
            progress: ExtractProgress::default(),
            written: WrittenPaths::new(),
            allow_tablespace_map: false,
            writeback: None,
            wal_link: None,
            hold_control: false,
        }
    }

    /// Write `global/pg_control` under [`HELD_CONTROL_FILE`] until [`release_control_file`]:
    /// a directory killed before its standby configuration is written must not start as a
    /// primary (a writable clone with the primary's system identifier). Its path in
    /// [`ArchiveExtractor::written`] is the final one.
    pub fn hold_control_file(mut self) -> Self {
        self.hold_control = true;
        self
    }

    /// `DATA_DIR/pg_wal` is a symbolic link to `wal_dir` that the caller made (`--waldir`): the
    /// base archive's `pg_wal` entries are written through it. Any other link, or this one
    /// pointing elsewhere, is still refused.
    pub fn with_wal_dir_link(mut self, wal_dir: Option<PathBuf>) -> Self {
        self.wal_link = wal_dir;
        self
    }

    /// Starts the writeback of every file as soon as it is complete, on a thread of its own
    /// (`WritebackBehind`), so that a final [`WrittenPaths::sync_all`] has less left to wait for.
    pub fn with_writeback_behind(mut self) -> Self {
        self.writeback = WritebackBehind::start();
        self
    }

    /// Accept a non-empty `tablespace_map` in the base archive (only for archives from a
    /// `BASE_BACKUP` that asked for `TABLESPACE_MAP`, such as `pg_basebackup -Ft` output).
    pub fn allow_tablespace_map(mut self, allow: bool) -> Self {
        self.allow_tablespace_map = allow;
        self
    }

    /// Largest single write (default `DEFAULT_WRITE_BUFFER`); at least 16 kB. Also the size of
    /// the reads [`extract`](Self::extract) makes from a plain [`Read`].
    pub fn with_buffer_size(mut self, bytes: usize) -> Self {
        self.write_size = bytes.max(16 * 1024);
        self
    }

    /// A handle that reads the number of archive bytes consumed so far, from any thread.
    pub fn progress(&self) -> ExtractProgress {
        self.progress.clone()
    }

    /// Everything written so far, for [`WrittenPaths::sync_all`].
    pub fn written(&self) -> &WrittenPaths {
        &self.written
    }

    pub fn into_written(self) -> WrittenPaths {
        self.written
    }

    /// Extracts one archive read from `reader` until its end (end-of-archive blocks or end of
    /// input). `observer` sees each regular file's path, size and data as it is written.
    pub fn extract<R: Read>(
        &mut self,
        kind: ArchiveKind,
        reader: R,
        observer: &mut dyn ExtractObserver,
    ) -> Result<ArchiveSummary, ExtractError> {
        self.extract_chunks(kind, CopyChunks::new(reader), observer)
    }

    /// [`extract`](Self::extract) from a source that lends its buffers: file data is written
    /// straight from them, gathered into `writev` calls of up to the write size.
    pub(crate) fn extract_chunks<R: ChunkRead>(
        &mut self,
        kind: ArchiveKind,
        reader: R,
        observer: &mut dyn ExtractObserver,
    ) -> Result<ArchiveSummary, ExtractError> {
        let (root, manifest_prefix) = match kind {
            ArchiveKind::Base => (self.data_dir.clone(), PathBuf::new()),
            ArchiveKind::Tablespace(oid) => {
                let ts = self
                    .tablespaces
                    .iter()
                    .find(|t| t.oid == oid)
                    .ok_or(ExtractError::UnknownTablespace(oid))?;
                (
                    ts.target.clone(),
                    Path::new("pg_tblspc").join(oid.to_string()),
                )
            }
        };
        if !root.is_dir() {
            create_dir_all_durable(&root, NEW_DIR_MODE, self.owner)?;
        }
        let counting = CountingReader {
            inner: reader,
            counter: self.progress.0.clone(),
        };
        let mut run = ArchiveRun {
            kind,
            root: &root,
            manifest_prefix: &manifest_prefix,
            tablespaces: &self.tablespaces,
            owner: self.owner,
            allow_tablespace_map: self.allow_tablespace_map,
            hold_control: self.hold_control && kind == ArchiveKind::Base,
            writeback: self.writeback.as_ref(),
            wal_link: match kind {
                ArchiveKind::Base => self.wal_link.as_deref(),
                ArchiveKind::Tablespace(_) => None,
            },
            verified_dirs: HashSet::new(),
            created_links: HashSet::new(),
            deferred_dirs: Vec::new(),
            written: WrittenPaths::new(),
            summary: ArchiveSummary::default(),
        };
        tracing::debug!(archive = ?kind, root = %root.display(), "extracting archive");
        let mut tar = TarReader::new(counting);
        let result = run.extract_all(&mut tar, self.write_size, observer);
        run.summary.archive_bytes = tar.position();
        // Record what was written even on failure, so a caller that keeps a partial result can
        // still sync it; directories get their final metadata only on success.
        let outcome = result.and_then(|()| run.finish_directories());
        run.written.add_dir(root.clone());
        for d in &run.verified_dirs {
            run.written.add_dir(root.join(d));
        }
        let summary = run.summary;
        self.written.extend(std::mem::take(&mut run.written));
        outcome?;
        tracing::debug!(archive = ?kind, files = summary.files, bytes = summary.archive_bytes, "archive extracted");
        Ok(summary)
    }
}

/// Counts archive bytes into the shared progress counter as they are read.
struct CountingReader<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: ChunkRead> ChunkRead for CountingReader<R> {
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        let chunk = self.inner.read_chunk(max)?;
        self.counter
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(chunk)
    }
}

/// The state of extracting one archive into one root directory.
struct ArchiveRun<'a> {
    kind: ArchiveKind,
    root: &'a Path,
    manifest_prefix: &'a Path,
    tablespaces: &'a [PreparedTablespace],
    owner: Owner,
    allow_tablespace_map: bool,
    /// `global/pg_control` goes to [`HELD_CONTROL_FILE`].
    hold_control: bool,
    writeback: Option<&'a WritebackBehind>,
    /// The `--waldir` link's target, for the base archive.
    wal_link: Option<&'a Path>,
    /// Paths (relative to `root`) known to be real directories, not links.
    verified_dirs: HashSet<PathBuf>,
    /// Symbolic links this archive created (relative to `root`): nothing may be written through them.
    created_links: HashSet<PathBuf>,
    /// Directories to give their archive mode and mtime once all their contents are written.
    deferred_dirs: Vec<(PathBuf, u32, i64)>,
    written: WrittenPaths,
    summary: ArchiveSummary,
}

impl ArchiveRun<'_> {
    fn extract_all<R: ChunkRead>(
        &mut self,
        tar: &mut TarReader<R>,
        write_size: usize,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(), ExtractError> {
        while let Some(member) = tar.next_member()? {
            let rel =
                sanitize_member_path(&member.path).map_err(|reason| ExtractError::UnsafePath {
                    path: lossy(&member.path),
                    reason,
                })?;
            match member.kind {
                MemberKind::Directory => self.directory(&rel, &member)?,
                MemberKind::Regular => {
                    self.regular_file(&rel, &member, tar, write_size, observer)?
                }
                MemberKind::Symlink => self.symlink(&rel, &member)?,
                other => {
                    return Err(ExtractError::UnsupportedMember {
                        path: lossy(&member.path),
                        kind: other.describe(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Makes sure every directory above `rel` is a real directory inside the root, creating missing
    /// ones.
    fn ensure_parents(&mut self, rel: &Path, member: &MemberHeader) -> Result<(), ExtractError> {
        let mut prefix = PathBuf::new();
        let mut components = rel.components().peekable();
        while let Some(c) = components.next() {
            if components.peek().is_none() {
                break;
            }
            prefix.push(c);
            self.ensure_dir(&prefix, member, false)?;
        }
        Ok(())
    }

    /// Makes sure `rel` is a real directory (creating it if absent). `explicit` is true when the
    /// archive itself names this directory.
    fn ensure_dir(
        &mut self,
        rel: &Path,
        member: &MemberHeader,
        explicit: bool,
    ) -> Result<(), ExtractError> {
        if self.verified_dirs.contains(rel) {
            return Ok(());
        }
        if self.created_links.contains(rel) {
            return Err(ExtractError::ThroughSymlink {
                path: lossy(&member.path),
                link: self.root.join(rel),
            });
        }
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(NEW_DIR_MODE)
                    .create(&abs)
                    .map_err(io_err("create directory", &abs))?;
                self.owner.apply(&abs)?;
            }
            Err(e) => return Err(io_err("examine", &abs)(e)),
            Ok(m) if m.file_type().is_symlink() && self.is_wal_link(rel, &abs) => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    path: lossy(&member.path),
                    link: abs,
                })
            }
            Ok(m) if m.is_dir() => {
                // Pre-existing (e.g. pg_wal, created by the WAL receiver): take ownership as the
                // archive would have it.
                if explicit {
                    self.owner.apply(&abs)?;
                }
            }
            Ok(_) => return Err(ExtractError::NotADirectory(abs)),
        }
        self.verified_dirs.insert(rel.to_path_buf());
        Ok(())
    }

    fn directory(&mut self, rel: &Path, member: &MemberHeader) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            // "./": the root itself, which the caller created with the mode it wants.
            return Ok(());
        }
        self.ensure_parents(rel, member)?;
        self.ensure_dir(rel, member, true)?;
        self.deferred_dirs
            .push((self.root.join(rel), member.mode & 0o777, member.mtime));
        self.summary.directories += 1;
        Ok(())
    }

    fn regular_file<R: ChunkRead>(
        &mut self,
        rel: &Path,
        member: &MemberHeader,
        tar: &mut TarReader<R>,
        write_size: usize,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            return Err(ExtractError::UnsafePath {
                path: lossy(&member.path),
                reason: UnsafePath::Empty,
            });
        }
        if self.kind == ArchiveKind::Base
            && rel == Path::new("tablespace_map")
            && member.size > 0
            && !self.allow_tablespace_map
        {
            return Err(ExtractError::TablespaceMap);
        }
        self.ensure_parents(rel, member)?;
        let abs = self.root.join(rel);
        if self.created_links.contains(rel) {
            return Err(ExtractError::ThroughSymlink {
                path: lossy(&member.path),
                link: abs,
            });
        }
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    path: lossy(&member.path),
                    link: abs,
                })
            }
            Ok(m) if !m.is_file() => return Err(ExtractError::Exists(abs)),
            _ => {}
        }
        let mode = member.mode & 0o777;
        let final_path = abs.clone();
        let abs = if self.hold_control && rel == Path::new("global/pg_control") {
            self.root.join(HELD_CONTROL_FILE)
        } else {
            abs
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&abs)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    ExtractError::ThroughSymlink {
                        path: lossy(&member.path),
                        link: abs.clone(),
                    }
                } else {
                    io_err("create file", &abs)(e)
                }
            })?;
        // The umask may have removed bits the archive asks for (group read on 0640 clusters).
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err("set permissions of", &abs))?;
        if let Some((uid, gid)) = self.owner.uid_gid() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(io_err("change owner of", &abs))?;
        }

        let manifest_path = self.manifest_prefix.join(rel);
        observer.file_started(&manifest_path, member.size);
        // Gather the payload's buffers up to the write size, write them with one writev, show them
        // to the observer, drop them (which lets the connection reuse their memory).
        let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_WRITE_SLICES);
        let mut batch_bytes = 0;
        let mut file_pos = 0u64;
        let mut writeback = FileWriteback::default();
        loop {
            let chunk = tar.read_data_chunk(write_size - batch_bytes)?;
            let done = chunk.is_empty();
            if !done {
                batch_bytes += chunk.len();
                batch.push(chunk);
            }
            if !batch.is_empty()
                && (done || batch_bytes >= write_size || batch.len() == MAX_WRITE_SLICES)
            {
                write_chunks(&mut file, &batch).map_err(io_err("write to file", &abs))?;
                for chunk in batch.drain(..) {
                    observer.file_data(&chunk);
                }
                file_pos += batch_bytes as u64;
                batch_bytes = 0;
                if let Some(w) = self.writeback {
                    w.written(&file, &mut writeback, file_pos);
                }
            }
            if done {
                break;
            }
        }
        observer.file_finished();
        file.set_modified(system_time(member.mtime))
            .map_err(io_err("set modification time of", &abs))?;
        match self.writeback {
            Some(w) if member.size > 0 => w.submit(file),
            _ => drop(file),
        }

        self.written.add_file(final_path);
        self.summary.files += 1;
        self.summary.file_bytes += member.size;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, member: &MemberHeader) -> Result<(), ExtractError> {
        let target = member.link_target.clone().unwrap_or_default();
        let refuse = |reason: &'static str| ExtractError::SymlinkRefused {
            path: lossy(&member.path),
            target: lossy(&target),
            reason,
        };
        if rel.as_os_str().is_empty() {
            return Err(refuse("a link cannot replace the target directory"));
        }
        self.ensure_parents(rel, member)?;
        let abs = self.root.join(rel);

        let link_to: PathBuf = if let Some(oid) = self.tablespace_link_oid(rel) {
            let ts = self
                .tablespaces
                .iter()
                .find(|t| Some(t.oid) == oid && !t.in_place)
                .ok_or_else(|| ExtractError::UnknownTablespaceLink {
                    path: lossy(&member.path),
                })?;
            let sent = lossy(&target);
            if canonicalize_path(&sent) != canonicalize_path(&ts.server_location) {
                return Err(ExtractError::TablespaceLinkMismatch {
                    path: lossy(&member.path),
                    sent,
                    announced: ts.server_location.clone(),
                });
            }
            ts.target.clone()
        } else {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let resolved = resolve_relative_link(parent, &target).ok_or_else(|| {
                refuse("only pg_tblspc/<oid> may link outside the archive, and other links must be relative without \"..\" after a name")
            })?;
            self.check_link_path_has_no_links(&resolved)
                .map_err(|()| refuse("its target passes through another symbolic link"))?;
            PathBuf::from(std::ffi::OsStr::from_bytes(&target))
        };

        match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("examine", &abs)(e)),
            Ok(_) => return Err(ExtractError::Exists(abs)),
        }
        std::os::unix::fs::symlink(&link_to, &abs).map_err(io_err("create symbolic link", &abs))?;
        self.owner.apply(&abs)?;
        self.created_links.insert(rel.to_path_buf());
        self.summary.symlinks += 1;
        Ok(())
    }

    /// `Some(oid)` for `pg_tblspc/<digits>` in the base archive (`Some(None)` if the digits do not
    /// fit an OID), `None` for any other path.
    #[allow(clippy::option_option)]
    fn tablespace_link_oid(&self, rel: &Path) -> Option<Option<u32>> {
        if self.kind != ArchiveKind::Base {
            return None;
        }
        let parts: Vec<Component<'_>> = rel.components().collect();
        match parts.as_slice() {
            [Component::Normal(dir), Component::Normal(name)]
                if dir.as_bytes() == b"pg_tblspc"
                    && !name.is_empty()
                    && name.as_bytes().iter().all(u8::is_ascii_digit) =>
            {
                Some(name.to_str().and_then(|s| s.parse().ok()))
            }
            _ => None,
        }
    }

    /// `pg_wal` as the caller linked it to the `--waldir` directory.
    fn is_wal_link(&self, rel: &Path, abs: &Path) -> bool {
        rel == Path::new("pg_wal")
            && self
                .wal_link
                .is_some_and(|target| fs::read_link(abs).is_ok_and(|t| t == target))
    }

    /// A link target inside the root may not pass through a link (ours or pre-existing): checks
    /// each existing component of `resolved` (relative to the root).
    fn check_link_path_has_no_links(&self, resolved: &Path) -> Result<(), ()> {
        let mut prefix = PathBuf::new();
        for c in resolved.components() {
            prefix.push(c);
            if self.created_links.contains(&prefix) {
                return Err(());
            }
            match fs::symlink_metadata(self.root.join(&prefix)) {
                Ok(m) if m.file_type().is_symlink() => return Err(()),
                Ok(_) => {}
                Err(_) => return Ok(()), // nothing further down exists yet
            }
        }
        Ok(())
    }

    /// Gives directories their archive mode and mtime, deepest last-created first.
    fn finish_directories(&mut self) -> Result<(), ExtractError> {
        for (dir, mode, mtime) in self.deferred_dirs.drain(..).rev() {
            let f = File::open(&dir).map_err(io_err("open directory", &dir))?;
            f.set_modified(system_time(mtime))
                .map_err(io_err("set modification time of", &dir))?;
            fs::set_permissions(&dir, Permissions::from_mode(mode))
                .map_err(io_err("set permissions of", &dir))?;
        }
        Ok(())
    }
}

/// Writes every byte of `chunks`, in order, with as few `writev` calls as the kernel allows
/// (`chunks.len()` is at most [`MAX_WRITE_SLICES`]; more would only take more calls).
fn write_chunks<W: Write>(file: &mut W, chunks: &[Bytes]) -> io::Result<()> {
    // First chunk not completely written, and how much of it was.
    let (mut first, mut offset) = (0, 0);
    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
    while first < chunks.len() {
        let mut n = 0;
        for (i, chunk) in chunks[first..].iter().take(MAX_WRITE_SLICES).enumerate() {
            let start = if i == 0 { offset } else { 0 };
            slices[n] = IoSlice::new(&chunk[start..]);
            n += 1;
        }
        let mut written = match file.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // A short write (a signal, a full disk on the next call): resume where it stopped.
        while first < chunks.len() && written >= chunks[first].len() - offset {
            written -= chunks[first].len() - offset;
            first += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

fn system_time(mtime: i64) -> SystemTime {
    if mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(mtime.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(mtime.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `step` bytes per call, spread over the slices as a kernel would, and fails
    /// with EINTR every third call.
    struct Stingy {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut left = self.step;
            for b in bufs {
                let n = left.min(b.len());
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(self.step - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        let chunks: Vec<Bytes> = (0..MAX_WRITE_SLICES)
            .map(|i| Bytes::from(vec![i as u8; i * 13 % 97]))
            .collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for step in [1, 2, 7, 96, 97, 98, 1000, all.len(), all.len() + 1] {
            let mut w = Stingy {
                out: Vec::new(),
                step,
                calls: 0,
            };
            write_chunks(&mut w, &chunks).unwrap();
            assert_eq!(w.out, all, "step {step}");
        }
        // A writer that takes nothing is an error, not a loop.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = write_chunks(&mut Full, &chunks[1..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        write_chunks(&mut Full, &[]).unwrap();
    }

    /// Hands out an archive in pieces of 1 to 11 bytes: more pieces per write than
    /// [`MAX_WRITE_SLICES`].
    struct Crumbs(Bytes, usize);

    impl Read for Crumbs {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let c = self.read_chunk(buf.len())?;
            buf[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    impl ChunkRead for Crumbs {
        fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
            self.1 += 1;
            let n = (1 + self.1 % 11).min(max).min(self.0.len());
            Ok(self.0.split_to(n))
        }
    }

    /// Sees the same bytes through `file_data` as were written.
    #[derive(Default)]
    struct Collect(Vec<(PathBuf, u64, Vec<u8>)>);

    impl ExtractObserver for Collect {
        fn file_started(&mut self, path: &Path, size: u64) {
            self.0.push((path.to_path_buf(), size, Vec::new()));
        }
        fn file_data(&mut self, data: &[u8]) {
            if let Some(f) = self.0.last_mut() {
                f.2.extend_from_slice(data);
            }
        }
    }

    #[test]
    fn files_are_written_from_the_pieces_they_arrive_in() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [("big", &big[..]), ("empty", &[][..]), ("sub/small", b"x\n")] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let archive = Bytes::from(b.into_inner().unwrap());
        let dir = tempfile::tempdir().unwrap();
        for write_size in [64 * 1024, DEFAULT_WRITE_BUFFER] {
            let target = dir.path().join(format!("w{write_size}"));
            let mut x = ArchiveExtractor::new(&target, Vec::new(), Owner::current())
                .with_buffer_size(write_size);
            let mut seen = Collect::default();
            let summary = x
                .extract_chunks(ArchiveKind::Base, Crumbs(archive.clone(), 0), &mut seen)
                .unwrap();
            assert_eq!(summary.files, 3);
            assert_eq!(summary.archive_bytes, archive.len() as u64);
            assert_eq!(fs::read(target.join("big")).unwrap(), big);
            assert_eq!(fs::read(target.join("empty")).unwrap(), b"");
            assert_eq!(fs::read(target.join("sub/small")).unwrap(), b"x\n");
            assert_eq!(seen.0.len(), 3);
            assert_eq!(
                seen.0[0],
                (PathBuf::from("big"), big.len() as u64, big.clone())
            );
            assert_eq!(seen.0[2].2, b"x\n");
            assert_eq!(x.progress().bytes(), archive.len() as u64);
        }
    }

    #[test]
    fn times() {
        assert_eq!(system_time(0), UNIX_EPOCH);
        assert_eq!(system_time(10), UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(system_time(-10) + Duration::from_secs(10), UNIX_EPOCH);
    }
}
