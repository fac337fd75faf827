//! Making an extracted backup durable in one pass at the end (pg_basebackup's `fsync_pgdata`).
//!
//! Extraction does not fsync file by file: that would make a base backup of many small files crawl.
//! Instead every file and directory written is recorded in [`WrittenPaths`], and
//! [`WrittenPaths::sync_all`] fsyncs the files on a few threads (fsyncs on different files proceed in
//! parallel in the kernel and on the device), then the directories, so that the new directory entries
//! are durable too. `--no-sync` simply skips the call.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use walrelay_durable::{fsync_dir, fsync_file, DurableError};

/// Hints waiting for [`WritebackBehind`]'s thread; beyond that a hint is skipped (a finished file
/// is then simply closed).
const WRITEBACK_QUEUE: usize = 64;

/// While a large file is written, its writeback is started every this many bytes, and what was
/// written a chunk before that (by then on the disk) is dropped from the page cache.
pub const WRITEBACK_CHUNK: u64 = 8 * 1024 * 1024;

/// Manages the page cache of an extraction on a thread of its own while extraction goes on, so
/// that the final [`WrittenPaths::sync_all`] finds most data already on the disk instead of
/// starting all of it at the end (pg_basebackup's `fsync_pgdata` starts it with `sync_file_range`
/// just before its fsyncs; here it overlaps with the transfer), and so that the page cache holds
/// a few chunks of the backup at a time instead of all of it.
///
/// * While a file is written, every [`WRITEBACK_CHUNK`] bytes: `sync_file_range(WRITE)` of the
///   chunk just written ([`walrelay_durable::start_writeback`]), and `posix_fadvise(DONTNEED)` of
///   the chunks before the previous one, whose writeback has had a chunk's time to finish.
/// * When a file is finished: `posix_fadvise(DONTNEED)` of the whole file, which starts the
///   writeback of what is still dirty and drops what is clean.
///
/// Why dropping matters: pages the backup keeps cached are pages every next write takes fresh from
/// the allocator, and on a virtual machine that hands its free memory back to the host (virtio
/// free page reporting) each of them is faulted in again on its first write. With a few chunks
/// cached, writes reuse warm pages (docs/benchmarks.md, "Page cache").
///
/// All of it is a hint: it changes nothing about what is durable when, which stays the business
/// of `sync_all`. Neither call waits for writeback or consumes a write error, which the final
/// fsync of each file still sees. A full queue never blocks extraction; the hint is skipped.
pub struct WritebackBehind {
    tx: Option<mpsc::SyncSender<Hint>>,
    worker: Option<JoinHandle<()>>,
}

enum Hint {
    /// Part of a file being written, with a duplicate of its descriptor.
    Range { file: File, hint: ChunkHint },
    /// A file whose data is completely written.
    Finished(File),
}

/// A hint: an error (ESPIPE for a FIFO we never write) changes nothing.
fn drop_cached(file: &File, range: Range<u64>) {
    let _ = walrelay_durable::drop_cached_range(file, range.start, range.end - range.start);
}

impl WritebackBehind {
    /// Starts the thread; `None` if it cannot be started (extraction then works without it) or
    /// the hints are switched off (`WALRELAY_EARLY_WRITEBACK=off`).
    pub fn start() -> Option<WritebackBehind> {
        if !walrelay_durable::page_cache_hints_on() {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel::<Hint>(WRITEBACK_QUEUE);
        let worker = std::thread::Builder::new()
            .name("walrelay-writeback".into())
            .spawn(move || {
                for hint in rx {
                    match hint {
                        Hint::Range { file, hint } => {
                            let w = hint.write;
                            let _ =
                                walrelay_durable::start_writeback(&file, w.start, w.end - w.start);
                            if let Some(d) = hint.drop {
                                drop_cached(&file, d);
                            }
                        }
                        // Length 0: to the end of the file.
                        Hint::Finished(file) => {
                            let _ = walrelay_durable::drop_cached_range(&file, 0, 0);
                        }
                    }
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
            let _ = tx.try_send(Hint::Finished(file));
        }
    }

    /// Called as a file grows: once [`WRITEBACK_CHUNK`] bytes were written since the last hint,
    /// hands over their range (and the range to drop) with a duplicate of `file`'s descriptor.
    pub fn written(&self, file: &File, progress: &mut FileWriteback, written_to: u64) {
        let Some(tx) = &self.tx else {
            return;
        };
        let Some(hint) = progress.advance(written_to) else {
            return;
        };
        let Ok(dup) = file.try_clone() else {
            return;
        };
        let _ = tx.try_send(Hint::Range { file: dup, hint });
    }
}

/// Where one file stands in [`WritebackBehind`]'s chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileWriteback {
    /// End of the last range whose writeback was started.
    hinted_to: u64,
    /// End of what was dropped from the cache.
    dropped_to: u64,
}

impl FileWriteback {
    /// With the file written up to `written_to`: the range to start writing back and the range to
    /// drop, once a chunk's worth is new. Drops stop a chunk behind the range being started.
    pub fn advance(&mut self, written_to: u64) -> Option<ChunkHint> {
        if written_to < self.hinted_to + WRITEBACK_CHUNK {
            return None;
        }
        let write = self.hinted_to..written_to;
        let drop_to = write.start.saturating_sub(WRITEBACK_CHUNK);
        let drop = (drop_to > self.dropped_to).then_some(self.dropped_to..drop_to);
        self.hinted_to = written_to;
        if drop.is_some() {
            self.dropped_to = drop_to;
        }
        Some(ChunkHint { write, drop })
    }
}

/// What [`FileWriteback::advance`] asks for: start the writeback of `write`, drop `drop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkHint {
    pub write: Range<u64>,
    pub drop: Option<Range<u64>>,
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

    /// Drops `path` from the files to sync (the caller removed it after it was written).
    pub fn forget_file(&mut self, path: &Path) {
        self.files.retain(|f| f != path);
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

    /// Ranges start where the last one ended and cover everything written; drops cover
    /// everything up to a chunk before the range being started, each byte once.
    #[test]
    fn file_writeback_ranges_and_drops() {
        const C: u64 = WRITEBACK_CHUNK;
        let hint = |write: Range<u64>, drop: Option<Range<u64>>| Some(ChunkHint { write, drop });
        let mut w = FileWriteback::default();
        assert_eq!(w.advance(C - 1), None);
        assert_eq!(w.advance(C + 5), hint(0..C + 5, None));
        assert_eq!(w.advance(2 * C), None);
        assert_eq!(w.advance(2 * C + 5), hint(C + 5..2 * C + 5, Some(0..5)));
        assert_eq!(w.advance(4 * C), hint(2 * C + 5..4 * C, Some(5..C + 5)));
        assert_eq!(w.advance(5 * C), hint(4 * C..5 * C, Some(C + 5..3 * C)));
        let mut covered = 0;
        let mut w = FileWriteback::default();
        let mut dropped = 0;
        for pos in (0..100 * C).step_by(32 * 1024) {
            if let Some(ChunkHint { write, drop }) = w.advance(pos) {
                assert_eq!(write.start, covered);
                covered = write.end;
                if let Some(d) = drop {
                    assert_eq!(d.start, dropped);
                    assert!(d.end + C <= write.start, "drops stay a chunk behind");
                    dropped = d.end;
                }
            }
        }
        assert!(covered > 98 * C && dropped > 96 * C);
    }

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
