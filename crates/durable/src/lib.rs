//! Crash-safe files: the one place that knows the order of writes, fsyncs and renames.
//!
//! The rule everywhere in walrelay: write under a temporary name, fsync the file, rename it to its final
//! name, fsync the directory. A file that has its final name is therefore complete and durable, and a
//! crash leaves at most a temporary file behind.
//!
//! When walrelay runs as root and writes into a PostgreSQL data directory, what it creates must belong to
//! the data directory's owner, or the server cannot read it ("could not open file … Permission denied").
//! [`Owner`] carries that decision.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

mod dir_lock;
pub use dir_lock::{lock_dir_exclusive, DirLock, DirLockOutcome};

/// An IO error with the path and the action that failed.
#[derive(Debug, Error)]
#[error("{action} {path}: {source}")]
pub struct DurableError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl DurableError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DurableError {
            action,
            path: path.into(),
            source,
        }
    }

    /// True when the disk is full or the quota exhausted.
    pub fn is_disk_full(&self) -> bool {
        is_disk_full(&self.source)
    }
}

/// True when `e` says the disk is full or the quota exhausted (ENOSPC, EDQUOT).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

pub type Result<T> = std::result::Result<T, DurableError>;

/// Who should own the files walrelay creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    ids: Option<(u32, u32)>,
}

impl Owner {
    /// Leave ownership alone (files belong to the running user).
    pub fn current() -> Self {
        Owner { ids: None }
    }

    /// Give created files this uid/gid. Only effective (and only needed) when running as root.
    pub fn ids(uid: u32, gid: u32) -> Self {
        Owner {
            ids: Some((uid, gid)),
        }
    }

    /// When running as root, the owner of `dir` (a data directory or its `pg_wal`); otherwise none.
    /// If `dir` does not exist yet, its nearest existing ancestor decides.
    pub fn of_dir_if_root(dir: &Path) -> Self {
        if !nix::unistd::Uid::effective().is_root() {
            return Owner::current();
        }
        let mut p = Some(dir);
        while let Some(d) = p {
            if let Ok(meta) = fs::metadata(d) {
                if meta.uid() == 0 {
                    return Owner::current();
                }
                return Owner::ids(meta.uid(), meta.gid());
            }
            p = d.parent();
        }
        Owner::current()
    }

    pub fn uid_gid(&self) -> Option<(u32, u32)> {
        self.ids
    }

    /// Applies this ownership to `path` (no-op for [`Owner::current`]). Symlinks are changed themselves.
    pub fn apply(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(|e| DurableError::new("change owner of", path, e))?;
        }
        Ok(())
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| DurableError::new("open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| DurableError::new("fsync directory", dir, e))
}

/// fsyncs the directory holding `path`.
pub fn fsync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// fsyncs one file.
pub fn fsync_file(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| DurableError::new("open", path, e))?;
    f.sync_all()
        .map_err(|e| DurableError::new("fsync", path, e))
}

/// Whether walrelay manages the page cache of what it writes ([`start_writeback`] while files fill,
/// [`drop_cache`] once they are durable and done with). `WALRELAY_EARLY_WRITEBACK=off` turns it off:
/// a diagnostic for A/B benchmarks (docs/benchmarks.md). Neither hint changes what is fsynced, or
/// when; both only change when the kernel does work it would otherwise do later. Read once per
/// process: it is asked for every segment and every backup file.
pub fn page_cache_hints_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WALRELAY_EARLY_WRITEBACK").as_deref() != Ok("off"))
}

/// Starts writing back the dirty pages of `file` in `offset..offset + len` without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, what PostgreSQL's `*_flush_after` settings do).
///
/// A hint and nothing more: it makes no data durable, and the `fdatasync` that does still sees any
/// write error (this call does not consume the file's error state). What it buys is overlap: the
/// device writes what was just written while the next bytes are produced, so the fsync that makes
/// a segment or a backup durable finds little left to do, and the page cache never accumulates
/// hundreds of megabytes of dirty pages for one fsync to push out at once.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range takes a file descriptor and three integers and touches no memory of
    // ours; the descriptor is valid for the duration of the call because `file` is borrowed.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to drop the cached pages of `file` in `offset..offset + len` (`len` 0: to the
/// end) with `posix_fadvise(DONTNEED)`, for data that is written and not read again in normal
/// operation. Dirty pages are only written back, not dropped; like [`start_writeback`] it neither
/// waits nor consumes a write error.
///
/// Why bother: written pages that stay cached are pages the next write has to take fresh from the
/// allocator. On a virtual machine whose free memory is handed back to the host (virtio-balloon
/// free page reporting), every such page is faulted in again by the host on its first write, and a
/// catch-up of a few GB then spends most of its time in that (docs/benchmarks.md). Pages given
/// back right away are reused warm by the next writes.
pub fn drop_cached_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(io::Error::from)
}

/// [`drop_cached_range`] of the whole file at `path`, for files that are complete and fsynced:
/// archived WAL segments (what the server does with its own WAL segments when nothing else needs
/// them, `XLogFileClose`).
pub fn drop_cache(path: &Path) -> io::Result<()> {
    drop_cached_range(&File::open(path)?, 0, 0)
}

/// Renames `from` to `to` and fsyncs the directory (both directories if they differ).
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| DurableError::new("rename to final name", from, e))?;
    fsync_parent(to)?;
    if from.parent() != to.parent() {
        fsync_parent(from)?;
    }
    Ok(())
}

/// The modes of what walrelay creates in or for a data directory, as PostgreSQL decides them
/// (`SetDataDirectoryCreatePerm` in `common/file_perm.c`): owner only (0700 directories, 0600
/// files), or — for a cluster initialized with group access (`initdb -g`, `data_directory_mode`
/// 0750) — group read as well (0750, 0640). pg_basebackup and pg_receivewal follow the server's
/// mode the same way (`RetrieveDataDirCreatePerm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateModes {
    pub dir: u32,
    pub file: u32,
}

impl CreateModes {
    /// `pg_dir_create_mode` / `pg_file_create_mode` without group access.
    pub const OWNER_ONLY: CreateModes = CreateModes {
        dir: 0o700,
        file: 0o600,
    };
    /// With group access (`PG_DIR_MODE_GROUP`, `PG_FILE_MODE_GROUP`).
    pub const GROUP_READ: CreateModes = CreateModes {
        dir: 0o750,
        file: 0o640,
    };

    /// The modes for a data directory of mode `mode` (as `SHOW data_directory_mode` or `stat` gives
    /// it): group access when the group may read and enter it.
    pub fn for_data_directory_mode(mode: u32) -> CreateModes {
        if mode & Self::GROUP_READ.dir == Self::GROUP_READ.dir {
            Self::GROUP_READ
        } else {
            Self::OWNER_ONLY
        }
    }

    /// `SHOW data_directory_mode`'s value (`0750`, octal); owner only when it cannot be read.
    pub fn from_show(value: &str) -> CreateModes {
        u32::from_str_radix(value.trim(), 8)
            .map(Self::for_data_directory_mode)
            .unwrap_or(Self::OWNER_ONLY)
    }

    /// The modes that fit the existing directory `dir` (owner only if it cannot be read).
    pub fn of_dir(dir: &Path) -> CreateModes {
        fs::metadata(dir)
            .map(|m| Self::for_data_directory_mode(m.mode() & 0o7777))
            .unwrap_or(Self::OWNER_ONLY)
    }

    pub fn has_group_access(&self) -> bool {
        *self == Self::GROUP_READ
    }
}

/// Creates a directory (and missing parents) with `mode`, owned by `owner`, fsyncing each new entry's
/// parent. Existing directories are left as they are.
pub fn create_dir_all_durable(dir: &Path, mode: u32, owner: Owner) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent, mode, owner)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(DurableError::new("create directory", dir, e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| DurableError::new("set permissions of", dir, e))?;
    owner.apply(dir)?;
    fsync_parent(dir)
}

/// The temporary name used while `path` is being written.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `data` to `path` atomically: `path.tmp`, fsync, rename, fsync directory.
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32, owner: Owner) -> Result<()> {
    let tmp = temp_path_for(path);
    let mut f = create_new_file(&tmp, mode, owner)?;
    f.write_all(data)
        .map_err(|e| DurableError::new("write", &tmp, e))
        .and_then(|_| {
            f.sync_all()
                .map_err(|e| DurableError::new("fsync", &tmp, e))
        })
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
    drop(f);
    rename_durable(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Creates (truncating any leftover) a file with `mode` and `owner`. The mode is forced even under a
/// restrictive umask.
pub fn create_new_file(path: &Path, mode: u32, owner: Owner) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| DurableError::new("create", path, e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| DurableError::new("set permissions of", path, e))?;
    owner.apply(path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_writeback_is_a_hint_on_files_and_refuses_pipes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(&[7u8; 64 * 1024]).unwrap();
        start_writeback(&f, 0, 64 * 1024).unwrap();
        start_writeback(&f, 4096, 0).unwrap(); // 0: to the end of the file
        assert_eq!(fs::read(&p).unwrap(), vec![7u8; 64 * 1024]);
        let too_far = start_writeback(&f, u64::MAX, 1).unwrap_err();
        assert_eq!(too_far.kind(), io::ErrorKind::InvalidInput);
        let (r, _w) = nix::unistd::pipe().unwrap();
        let pipe = File::from(r);
        assert_eq!(
            start_writeback(&pipe, 0, 0).unwrap_err().raw_os_error(),
            Some(nix::libc::ESPIPE)
        );
        f.sync_all().unwrap();
        drop_cached_range(&f, 0, 4096).unwrap();
        drop_cache(&p).unwrap();
        assert_eq!(
            fs::read(&p).unwrap(),
            vec![7u8; 64 * 1024],
            "dropping loses nothing"
        );
        let too_far = drop_cached_range(&f, u64::MAX, 1).unwrap_err();
        assert_eq!(too_far.kind(), io::ErrorKind::InvalidInput);
        assert!(drop_cache(&d.path().join("missing")).is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_file_atomic(&p, b"hello", 0o600, Owner::current()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert!(!temp_path_for(&p).exists());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing/f");
        let e = write_file_atomic(&p, b"x", 0o600, Owner::current()).unwrap_err();
        assert!(e.to_string().contains("create"), "{e}");
    }

    #[test]
    fn create_modes_follow_the_data_directory() {
        assert_eq!(CreateModes::from_show("0750"), CreateModes::GROUP_READ);
        assert_eq!(CreateModes::from_show("0700"), CreateModes::OWNER_ONLY);
        assert_eq!(CreateModes::from_show("garbage"), CreateModes::OWNER_ONLY);
        assert_eq!(
            CreateModes::for_data_directory_mode(0o710),
            CreateModes::OWNER_ONLY
        );
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(CreateModes::of_dir(d.path()), CreateModes::GROUP_READ);
    }

    #[test]
    fn create_dirs_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        create_dir_all_durable(&p, 0o700, Owner::current()).unwrap();
        assert!(p.is_dir());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        create_dir_all_durable(&p, 0o700, Owner::current()).unwrap();
    }

    #[test]
    fn owner_of_dir_when_not_root_or_root_owned() {
        let d = tempfile::tempdir().unwrap();
        // A root-owned (or our own, when not root) directory never asks for a chown.
        assert_eq!(Owner::of_dir_if_root(d.path()), Owner::current());
    }
}
