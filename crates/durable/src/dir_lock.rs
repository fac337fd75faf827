//! One writer per directory: an exclusive advisory lock (`flock`) on the directory itself.
//!
//! Two receivers streaming into one archive (a service and a copy started by hand, a second
//! sidecar on one standby) would race each other's renames, compression and checksum list. The
//! lock is taken on the directory's own file descriptor, so nothing is created inside it (a
//! standby's `pg_wal` stays as PostgreSQL expects), and the kernel drops it when the process
//! ends, however it ends: a `kill -9` never leaves a stale lock behind.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The lock, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _held: Flock<File>,
}

/// What became of the attempt.
#[derive(Debug)]
pub enum DirLockOutcome {
    /// This process is the directory's writer now.
    Locked(DirLock),
    /// Another process holds the lock.
    HeldElsewhere,
    /// The file system cannot lock (some network file systems): go on without the lock.
    Unsupported(io::Error),
}

/// Tries to become the only writer of `dir`, without waiting. Errors only when `dir` cannot be
/// opened.
pub fn lock_dir_exclusive(dir: &Path) -> io::Result<DirLockOutcome> {
    let file = File::open(dir)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(DirLockOutcome::Locked(DirLock { _held: held })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(DirLockOutcome::HeldElsewhere),
        Err((_, e)) => Ok(DirLockOutcome::Unsupported(io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let first = lock_dir_exclusive(d.path()).unwrap();
        assert!(matches!(first, DirLockOutcome::Locked(_)));
        // A second open file description is a second holder, as another process would be.
        assert!(matches!(
            lock_dir_exclusive(d.path()).unwrap(),
            DirLockOutcome::HeldElsewhere
        ));
        drop(first);
        assert!(matches!(
            lock_dir_exclusive(d.path()).unwrap(),
            DirLockOutcome::Locked(_)
        ));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
