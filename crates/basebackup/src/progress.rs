//! Progress of a base backup, shared lock-free with whoever displays it.
//!
//! The network side of a backup ([`crate::BaseBackupStream`]) and the bootstrap job update a
//! [`BackupProgress`]; a progress bar or the metrics endpoint reads it from any thread.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// What a base backup is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackupPhase {
    /// Connecting, identifying the server, checking or creating the slot.
    Connecting = 0,
    /// `BASE_BACKUP` sent; the server is running its checkpoint.
    Checkpoint = 1,
    /// Archives are arriving and being extracted.
    Transferring = 2,
    /// Data received; waiting for the WAL up to the end position, verifying.
    Finishing = 3,
    /// Making everything durable.
    Syncing = 4,
    /// Finished successfully.
    Done = 5,
}

impl BackupPhase {
    fn from_u8(v: u8) -> BackupPhase {
        match v {
            0 => BackupPhase::Connecting,
            1 => BackupPhase::Checkpoint,
            2 => BackupPhase::Transferring,
            3 => BackupPhase::Finishing,
            4 => BackupPhase::Syncing,
            _ => BackupPhase::Done,
        }
    }
}

#[derive(Debug, Default)]
struct ProgressInner {
    phase: AtomicU8,
    /// Estimated total in bytes (sum of the header's kB); 0 when unknown.
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    received_bytes: AtomicU64,
}

/// Shared, lock-free progress counters: cheap to clone, readable from any thread (a progress bar).
///
/// `done_bytes` follows the server's own count (`'p'` messages, PostgreSQL 15+) or, before 15, the
/// archive bytes received — the same numbers pg_basebackup's `--progress` shows. `total_bytes` is
/// the server's estimate and may be exceeded when files grow during the backup.
#[derive(Clone, Debug, Default)]
pub struct BackupProgress(Arc<ProgressInner>);

impl BackupProgress {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn phase(&self) -> BackupPhase {
        BackupPhase::from_u8(self.0.phase.load(Ordering::Relaxed))
    }

    /// The server's size estimate, when `PROGRESS` was requested.
    pub fn total_bytes(&self) -> Option<u64> {
        match self.0.total_bytes.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn done_bytes(&self) -> u64 {
        self.0.done_bytes.load(Ordering::Relaxed)
    }

    /// Every CopyData byte received (archives and manifest).
    pub fn received_bytes(&self) -> u64 {
        self.0.received_bytes.load(Ordering::Relaxed)
    }

    pub fn set_phase(&self, phase: BackupPhase) {
        self.0.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, bytes: u64) {
        self.0.total_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_done(&self, bytes: u64) {
        self.0.done_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_done(&self, bytes: u64) {
        self.0.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, bytes: u64) {
        self.0.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
