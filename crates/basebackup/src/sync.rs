//! Making an extracted backup durable in one pass at the end (pg_basebackup's `fsync_pgdata`).
//!
//! Extraction does not fsync file by file: that would make a base backup of many small files crawl.
//! Instead every file and directory written is recorded in [`WrittenPaths`], and
//! [`WrittenPaths::sync_all`] fsyncs the files on a few threads (fsyncs on different files proceed in
//! parallel in the kernel and on the device), then the directories, so that the new directory entries
//! are durable too. `--no-sync` simply skips the call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use walrelay_durable::{fsync_dir, fsync_file, DurableError};

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
    /// (each once). Stops at the first error and returns it.
    pub fn sync_all(&self, threads: usize) -> Result<SyncSummary, DurableError> {
        parallel_each(&self.files, threads, fsync_file)?;
        let mut dirs: Vec<&PathBuf> = self.dirs.iter().collect();
        dirs.sort();
        dirs.dedup();
        let dirs: Vec<PathBuf> = dirs.into_iter().cloned().collect();
        parallel_each(&dirs, threads, fsync_dir)?;
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
