//! One writer per directory, without touching the directory.
//!
//! Two receivers streaming into one archive (a service and a copy started by hand, a second
//! sidecar on one standby) would race each other's renames, compression and checksum list. The
//! writer binds a Unix socket in the abstract namespace named after the directory's device and
//! inode: a second bind of the name fails at once, nothing is created in the directory (a
//! standby's `pg_wal` stays as PostgreSQL expects) nor anywhere else, and the kernel frees the
//! name when the process ends, however it ends — a `kill -9` never leaves a stale lock. (A
//! `flock` on the directory is not free for this: the checksum list's appends and rewrites
//! already take it, in `receive` and in `prune` beside it.) The name is per network namespace:
//! two containers with their own network sharing one volume do not see each other's.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

/// The lock, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _name: UnixListener,
}

/// What became of the attempt.
#[derive(Debug)]
pub enum DirLockOutcome {
    /// This process is the directory's writer now.
    Locked(DirLock),
    /// Another process holds the lock.
    HeldElsewhere,
    /// The name could not be bound for another reason: go on without the lock.
    Unsupported(io::Error),
}

/// Tries to become the only writer of `dir`, without waiting. Errors only when `dir` cannot be
/// looked at.
pub fn lock_dir_exclusive(dir: &Path) -> io::Result<DirLockOutcome> {
    let meta = std::fs::metadata(dir)?;
    let name = format!("walrelay-writer/{}/{}", meta.dev(), meta.ino());
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    match UnixListener::bind_addr(&addr) {
        Ok(listener) => Ok(DirLockOutcome::Locked(DirLock { _name: listener })),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(DirLockOutcome::HeldElsewhere),
        Err(e) => Ok(DirLockOutcome::Unsupported(e)),
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
        assert!(matches!(
            lock_dir_exclusive(d.path()).unwrap(),
            DirLockOutcome::HeldElsewhere
        ));
        // Another directory is another name.
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            lock_dir_exclusive(other.path()).unwrap(),
            DirLockOutcome::Locked(_)
        ));
        drop(first);
        assert!(matches!(
            lock_dir_exclusive(d.path()).unwrap(),
            DirLockOutcome::Locked(_)
        ));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_directory_s_own_flock_stays_free() {
        // The checksum list locks the directory itself while it changes; the writer's lock
        // must not be in its way.
        let d = tempfile::tempdir().unwrap();
        let _writer = lock_dir_exclusive(d.path()).unwrap();
        let f = std::fs::File::open(d.path()).unwrap();
        assert!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
            "the directory's flock is taken"
        );
    }
}
