//! The file-system operations the [`SegmentWriter`](crate::SegmentWriter) needs, behind a trait.
//!
//! Two reasons for the seam: the order of writes, fsyncs and renames is the whole point of the writer,
//! so tests record it; and failures that a real disk rarely produces on demand (`ENOSPC` half-way
//! through a segment, `EIO` from fsync) must be tested anyway. [`StdFs`] is the real thing and
//! delegates the crash-safe steps to `walrelay-durable`; the test fakes wrap it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use walrelay_durable::{self as durable, DurableError, Owner};

/// Result of a file-system step; errors name the action and the path.
pub type FsResult<T> = Result<T, DurableError>;

/// An open segment file, written with positional writes so the writer's offsets are the only truth.
pub trait SegmentFile {
    /// Current size in bytes.
    fn size(&self) -> FsResult<u64>;
    /// Writes all of `buf` at `offset` (`pwrite`, retried on short writes and `EINTR`).
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> FsResult<()>;
    /// `fdatasync`: the data, and the metadata needed to read it back, are durable.
    fn sync_data(&mut self) -> FsResult<()>;
    /// Starts writing `offset..offset + len` back to the device without waiting
    /// ([`walrelay_durable::start_writeback`]). A hint: it makes nothing durable and cannot fail in
    /// a way the caller must handle (a write error shows at the next `sync_data`).
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}
}

/// Directory-level operations on the WAL directory.
pub trait WalFs {
    type File: SegmentFile;

    /// Opens an existing file for writing, without truncating it; `Ok(None)` if it does not exist.
    fn open_existing(&self, path: &Path) -> FsResult<Option<Self::File>>;
    /// Creates `path` (truncating a leftover) with `mode` and `owner`.
    fn create(&self, path: &Path, mode: u32, owner: Owner) -> FsResult<Self::File>;
    /// Whether anything exists at `path` (symlinks are not followed).
    fn exists(&self, path: &Path) -> FsResult<bool>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Renames and fsyncs the directory (`walrelay_durable::rename_durable`).
    fn rename_durable(&self, from: &Path, to: &Path) -> FsResult<()>;
    /// fsyncs a directory so entries created in it survive a crash.
    fn fsync_dir(&self, dir: &Path) -> FsResult<()>;
    /// Creates a directory and its parents durably.
    fn create_dir_all(&self, dir: &Path, mode: u32, owner: Owner) -> FsResult<()>;
    /// Writes a small file atomically: temporary name, fsync, rename, fsync the directory.
    fn write_file_atomic(&self, path: &Path, data: &[u8], mode: u32, owner: Owner) -> FsResult<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

/// A segment file on the real file system.
#[derive(Debug)]
pub struct StdSegmentFile {
    file: File,
    path: PathBuf,
}

impl SegmentFile for StdSegmentFile {
    fn size(&self) -> FsResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| DurableError::new("stat", &self.path, e))
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> FsResult<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| DurableError::new("write", &self.path, e))
    }

    fn sync_data(&mut self) -> FsResult<()> {
        self.file
            .sync_data()
            .map_err(|e| DurableError::new("fsync", &self.path, e))
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        if let Err(e) = durable::start_writeback(&self.file, offset, len) {
            tracing::debug!(path = %self.path.display(), error = %e, "early writeback hint refused");
        }
    }
}

impl WalFs for StdFs {
    type File = StdSegmentFile;

    fn open_existing(&self, path: &Path) -> FsResult<Option<StdSegmentFile>> {
        match OpenOptions::new().write(true).open(path) {
            Ok(file) => Ok(Some(StdSegmentFile {
                file,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DurableError::new("open", path, e)),
        }
    }

    fn create(&self, path: &Path, mode: u32, owner: Owner) -> FsResult<StdSegmentFile> {
        let file = durable::create_new_file(path, mode, owner)?;
        Ok(StdSegmentFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn exists(&self, path: &Path) -> FsResult<bool> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DurableError::new("stat", path, e)),
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn rename_durable(&self, from: &Path, to: &Path) -> FsResult<()> {
        durable::rename_durable(from, to)
    }

    fn fsync_dir(&self, dir: &Path) -> FsResult<()> {
        durable::fsync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path, mode: u32, owner: Owner) -> FsResult<()> {
        durable::create_dir_all_durable(dir, mode, owner)
    }

    fn write_file_atomic(&self, path: &Path, data: &[u8], mode: u32, owner: Owner) -> FsResult<()> {
        durable::write_file_atomic(path, data, mode, owner)
    }
}

/// A recording, fault-injecting wrapper around [`StdFs`] for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::*;

    /// One recorded file-system step.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum FsOp {
        Open(PathBuf),
        Create(PathBuf),
        Write {
            path: PathBuf,
            offset: u64,
            len: usize,
        },
        SyncData(PathBuf),
        Writeback {
            path: PathBuf,
            offset: u64,
            len: u64,
        },
        Rename {
            from: PathBuf,
            to: PathBuf,
        },
        FsyncDir(PathBuf),
        CreateDirAll(PathBuf),
        AtomicWrite(PathBuf),
    }

    /// Which operation fails, and how.
    #[derive(Debug, Default)]
    pub struct Faults {
        /// Fail the write whose 0-based index (among all writes) is this, and every later one.
        pub fail_write_from: Option<usize>,
        pub write_errno: i32,
        /// Bytes a failing write still puts on disk before reporting the error (a short write).
        pub short_write: usize,
        /// Fail the fsync (file data) with this 0-based index, and every later one.
        pub fail_sync_from: Option<usize>,
        pub sync_errno: i32,
        writes: usize,
        syncs: usize,
    }

    #[derive(Clone, Default)]
    pub struct FaultFs {
        pub log: Arc<Mutex<Vec<FsOp>>>,
        pub faults: Arc<Mutex<Faults>>,
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl FaultFs {
        pub fn ops(&self) -> Vec<FsOp> {
            lock(&self.log).clone()
        }

        pub fn clear_log(&self) {
            lock(&self.log).clear();
        }

        pub fn fail_writes_from(&self, index: usize, errno: i32, short_write: usize) {
            let mut f = lock(&self.faults);
            f.fail_write_from = Some(f.writes + index);
            f.write_errno = errno;
            f.short_write = short_write;
        }

        pub fn fail_syncs_from(&self, index: usize, errno: i32) {
            let mut f = lock(&self.faults);
            f.fail_sync_from = Some(f.syncs + index);
            f.sync_errno = errno;
        }

        fn record(&self, op: FsOp) {
            lock(&self.log).push(op);
        }

        fn wrap(&self, inner: StdSegmentFile) -> FaultFile {
            FaultFile {
                inner,
                fs: self.clone(),
            }
        }
    }

    pub struct FaultFile {
        inner: StdSegmentFile,
        fs: FaultFs,
    }

    impl SegmentFile for FaultFile {
        fn size(&self) -> FsResult<u64> {
            self.inner.size()
        }

        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> FsResult<()> {
            let path = self.inner.path.clone();
            self.fs.record(FsOp::Write {
                path: path.clone(),
                offset,
                len: buf.len(),
            });
            let (fail, errno, short) = {
                let mut f = lock(&self.fs.faults);
                let idx = f.writes;
                f.writes += 1;
                (
                    f.fail_write_from.is_some_and(|from| idx >= from),
                    f.write_errno,
                    f.short_write,
                )
            };
            if fail {
                let keep = short.min(buf.len());
                if keep > 0 {
                    self.inner.write_all_at(&buf[..keep], offset)?;
                }
                return Err(DurableError::new(
                    "write",
                    path,
                    io::Error::from_raw_os_error(errno),
                ));
            }
            self.inner.write_all_at(buf, offset)
        }

        fn sync_data(&mut self) -> FsResult<()> {
            let path = self.inner.path.clone();
            self.fs.record(FsOp::SyncData(path.clone()));
            let (fail, errno) = {
                let mut f = lock(&self.fs.faults);
                let idx = f.syncs;
                f.syncs += 1;
                (
                    f.fail_sync_from.is_some_and(|from| idx >= from),
                    f.sync_errno,
                )
            };
            if fail {
                return Err(DurableError::new(
                    "fsync",
                    path,
                    io::Error::from_raw_os_error(errno),
                ));
            }
            self.inner.sync_data()
        }

        fn start_writeback(&mut self, offset: u64, len: u64) {
            self.fs.record(FsOp::Writeback {
                path: self.inner.path.clone(),
                offset,
                len,
            });
            self.inner.start_writeback(offset, len)
        }
    }

    impl WalFs for FaultFs {
        type File = FaultFile;

        fn open_existing(&self, path: &Path) -> FsResult<Option<FaultFile>> {
            let f = StdFs.open_existing(path)?;
            if f.is_some() {
                self.record(FsOp::Open(path.to_path_buf()));
            }
            Ok(f.map(|f| self.wrap(f)))
        }

        fn create(&self, path: &Path, mode: u32, owner: Owner) -> FsResult<FaultFile> {
            self.record(FsOp::Create(path.to_path_buf()));
            StdFs.create(path, mode, owner).map(|f| self.wrap(f))
        }

        fn exists(&self, path: &Path) -> FsResult<bool> {
            StdFs.exists(path)
        }

        fn is_dir(&self, path: &Path) -> bool {
            StdFs.is_dir(path)
        }

        fn rename_durable(&self, from: &Path, to: &Path) -> FsResult<()> {
            self.record(FsOp::Rename {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
            });
            fs::rename(from, to).map_err(|e| DurableError::new("rename", from, e))?;
            self.fsync_dir(to.parent().unwrap_or(Path::new(".")))
        }

        fn fsync_dir(&self, dir: &Path) -> FsResult<()> {
            self.record(FsOp::FsyncDir(dir.to_path_buf()));
            StdFs.fsync_dir(dir)
        }

        fn create_dir_all(&self, dir: &Path, mode: u32, owner: Owner) -> FsResult<()> {
            self.record(FsOp::CreateDirAll(dir.to_path_buf()));
            StdFs.create_dir_all(dir, mode, owner)
        }

        fn write_file_atomic(
            &self,
            path: &Path,
            data: &[u8],
            mode: u32,
            owner: Owner,
        ) -> FsResult<()> {
            self.record(FsOp::AtomicWrite(path.to_path_buf()));
            StdFs.write_file_atomic(path, data, mode, owner)
        }
    }
}
