// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! Recovery from an archive as PostgreSQL does it: `walrelay restore` as the server's OS user,
//! `recovery.signal` on a copy of a base backup.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use walrelay_testkit::{poll, Cluster};

/// The walrelay binary where the `postgres` OS user can run it (the build directory may not be
/// reachable for it): a copy in the primary's directory, which lives as long as the test.
pub fn walrelay_for_postgres(primary: &Cluster) -> PathBuf {
    let to = primary.root_dir().join("walrelay");
    fs::copy(env!("CARGO_BIN_EXE_walrelay"), &to).unwrap();
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// `cp -a from to`: a data directory copied with its modes and owners.
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An empty archive directory owned by the server's OS user: `receive` (run by the test, maybe as
/// root) gives its files the directory's owner, and `restore` runs as that user.
pub fn archive_dir(primary: &Cluster, name: &str) -> PathBuf {
    let dir = primary.scratch_path(name);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let owner = fs::metadata(primary.data_dir()).unwrap();
    std::os::unix::fs::chown(
        &dir,
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .unwrap();
    dir
}

/// Recovers a copy of `backup` with `restore_command` and `extra` settings, waits for the end of
/// recovery (promotion), and returns the new cluster.
pub fn recover(
    primary: &Cluster,
    backup: &Path,
    name: &str,
    restore_command: &str,
    extra: &[&str],
) -> Cluster {
    let data = primary.scratch_path(name);
    copy_dir(backup, &data);
    File::create(data.join("recovery.signal")).unwrap();
    let mut b = primary
        .standby(&data)
        .name(name)
        .conf(&format!("restore_command = '{restore_command}'"));
    for line in extra {
        b = b.conf(line);
    }
    let c = b.start();
    wait_promoted(&c, name);
    c
}

/// An empty directory for a restored cluster, owned by the server's OS user.
pub fn empty_data_dir(primary: &Cluster, name: &str) -> PathBuf {
    let dir = archive_dir(primary, name);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Starts a restored directory and waits until recovery has ended (promotion).
pub fn start_recovered(primary: &Cluster, data: &Path, name: &str) -> Cluster {
    let c = primary.standby(data).name(name).start();
    wait_promoted(&c, name);
    c
}

/// Waits until `c` has ended recovery (promoted).
fn wait_promoted(c: &Cluster, name: &str) {
    poll::wait_until(
        &format!("{name} to finish recovery"),
        || {
            c.try_psql("SELECT pg_is_in_recovery()")
                .is_ok_and(|v| v == "f")
        },
        || c.log_tail(30),
    );
}
