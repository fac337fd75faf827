//! Making an extracted backup durable in one pass at the end (pg_basebackup's `fsync_pgdata`).
//!
//! Extraction does not fsync file by file: that would make a base backup of many small files crawl.
//! Instead every file and directory written is recorded in [`WrittenPaths`], and
//! [`WrittenPaths::sync_all`] fsyncs the files on a few threads (fsyncs on different files proceed in
//! parallel in the kernel and on the device), then the directories, so that the new directory entries
//! are durable too. `--no-sync` simply skips the call.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use walrelay_durable::{fsync_dir, fsync_file, DurableError};

/// Finished files waiting for [`WritebackBehind`]'s thread; beyond that a file is simply closed.
const WRITEBACK_QUEUE: usize = 64;

/// Starts the writeback of finished files on a thread of its own while extraction goes on, so
/// that the final [`WrittenPaths::sync_all`] finds most data already on its way to the disk
/// instead of starting all of it at the end (pg_basebackup's `fsync_pgdata` starts it with
/// `sync_file_range` just before its fsyncs; here it overlaps with the transfer).
///
/// `posix_fadvise(POSIX_FADV_DONTNEED)` starts writeback of a file's dirty pages without waiting
/// for it (and lets the kernel drop pages that are already clean: the backup's data is not read
/// again). It is only a hint: it changes nothing about what is durable when, which stays the
/// business of `sync_all`. A full queue never blocks extraction; the file is closed unhinted.
pub struct WritebackBehind {
    tx: Option<mpsc::SyncSender<File>>,
    worker: Option<JoinHandle<()>>,
}

/// Whether finished files get the early writeback hint: `WALRELAY_EARLY_WRITEBACK=off` turns it
/// off, a diagnostic for A/B benchmarks (docs/benchmarks.md). Not an `fdatasync` on this thread:
/// its error would be ignored here and, once reported, not reported again to the final fsync of
/// the file reopened by [`WrittenPaths::sync_all`].
fn early_writeback_on() -> bool {
    std::env::var("WALRELAY_EARLY_WRITEBACK").as_deref() != Ok("off")
}

impl WritebackBehind {
    /// Starts the thread; `None` if it cannot be started (extraction then works without it).
    pub fn start() -> Option<WritebackBehind> {
        if !early_writeback_on() {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel::<File>(WRITEBACK_QUEUE);
        let worker = std::thread::Builder::new()
            .name("walrelay-writeback".into())
            .spawn(move || {
                for file in rx {
                    // A hint: an error (EBADF cannot happen; ESPIPE for a FIFO we never write)
                    // changes nothing.
                    let _ = posix_fadvise(
                        file.as_raw_fd(),
                        0,
                        0,
                        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                }
            })
            .ok()?;
        Some(WritebackBehind {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Hands over a file whose data is completely written.
    pub fn submit(&self, file: File) {
        if let Some(tx) = &self.tx {
            // Full (the disk is behind) or stopped: close it now, sync_all takes care of it.
            let _ = tx.try_send(file);
        }
    }
}

impl Drop for WritebackBehind {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Everything an extraction wrote, to be fsynced once at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrittenPaths {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// Counts of what [`WrittenPaths::sync_all`] fsynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub files: usize,
    pub dirs: usize,
}

impl WrittenPaths {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_file(&mut self, path: PathBuf) {
        self.files.push(path);
    }

    /// Records a directory whose entries changed (created, or given new files or links).
    pub fn add_dir(&mut self, path: PathBuf) {
        self.dirs.push(path);
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Appends another extraction's record (the base archive and each tablespace's).
    pub fn extend(&mut self, other: WrittenPaths) {
        self.files.extend(other.files);
        self.dirs.extend(other.dirs);
    }

    /// fsyncs every recorded file using up to `threads` threads, then every recorded directory
    /// (each once). Stops at the first error and returns it. `WALRELAY_SYNC_THREADS=N` overrides
    /// `threads`, a diagnostic for A/B benchmarks (docs/benchmarks.md).
    pub fn sync_all(&self, threads: usize) -> Result<SyncSummary, DurableError> {
        let threads = std::env::var("WALRELAY_SYNC_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(threads);
        let started = std::time::Instant::now();
        parallel_each(&self.files, threads, fsync_file)?;
        let files_done = started.elapsed();
        let mut dirs: Vec<&PathBuf> = self.dirs.iter().collect();
        dirs.sort();
        dirs.dedup();
        let dirs: Vec<PathBuf> = dirs.into_iter().cloned().collect();
        parallel_each(&dirs, threads, fsync_dir)?;
        tracing::debug!(
            files = self.files.len(),
            dirs = dirs.len(),
            files_ms = files_done.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "fsynced what was written"
        );
        Ok(SyncSummary {
            files: self.files.len(),
            dirs: dirs.len(),
        })
    }
}

/// Runs `f` on every path with up to `threads` worker threads; the first error stops the others.
fn parallel_each(
    paths: &[PathBuf],
    threads: usize,
    f: impl Fn(&Path) -> Result<(), DurableError> + Sync,
) -> Result<(), DurableError> {
    if paths.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, paths.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<DurableError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = paths.get(i) else { return };
                if let Err(e) = f(p) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        // A worker panicked while holding the lock: fsync cannot panic, so this is unreachable in
        // practice; report it as an fsync failure rather than claim durability.
        Err(_) => Err(DurableError::new(
            "fsync",
            paths[0].clone(),
            std::io::Error::other("fsync worker panicked"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn syncs_everything_recorded() {
        let d = tempfile::tempdir().unwrap();
        let mut w = WrittenPaths::new();
        for i in 0..50 {
            let p = d.path().join(format!("f{i}"));
            fs::write(&p, b"x").unwrap();
            w.add_file(p);
        }
        w.add_dir(d.path().to_path_buf());
        w.add_dir(d.path().to_path_buf());
        let s = w.sync_all(4).unwrap();
        assert_eq!(s, SyncSummary { files: 50, dirs: 1 });
        assert_eq!(
            WrittenPaths::new().sync_all(4).unwrap(),
            SyncSummary::default()
        );
    }

    #[test]
    fn reports_a_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let mut w = WrittenPaths::new();
        w.add_file(d.path().join("gone"));
        let e = w.sync_all(2).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
