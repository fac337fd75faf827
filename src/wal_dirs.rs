//! The local directories `receive` and `serve` write WAL into, checked before anything is
//! connected or written: an archive (or spool) must be a directory of its own, a `--pg-wal`
//! target must be a standby's, neither may be a running server's own, and only one walrelay
//! writes into a directory at a time.

use std::path::Path;

use anyhow::Result;

use crate::exit;

/// `--pg-wal` feeds a server that replays from its `pg_wal`: a standby (`standby.signal`, or
/// `recovery.conf` on 10 and 11) or a server in targeted recovery (`recovery.signal`). A data
/// directory with none of them is a primary's, most likely the very primary walrelay streams
/// from: writing its WAL back into the files that primary is writing would race it for its own
/// WAL. Refused before anything is opened.
pub(crate) fn not_a_recovering_data_directory(pgdata: &Path) -> std::result::Result<(), String> {
    const RECOVERY_FILES: [&str; 3] = ["standby.signal", "recovery.signal", "recovery.conf"];
    if RECOVERY_FILES.iter().any(|f| pgdata.join(f).exists()) {
        return Ok(());
    }
    Err(format!(
        "{} is not set up as a standby (no standby.signal, recovery.signal or recovery.conf), so it is a primary's data directory, possibly the one receive streams from: --pg-wal feeds a standby's pg_wal; to archive WAL use -D DIR, to feed a standby create its standby.signal (recovery.conf with standby_mode = on on 10 and 11) or bootstrap it with --sidecar",
        pgdata.display()
    ))
}

/// Whether the standby in `pgdata` is set up to stream from a primary by itself: a non-empty
/// `primary_conninfo` as its configuration leaves it ([`crate::standby_conf`]: the configuration
/// file with its includes, `postgresql.auto.conf`, `recovery.conf` on 10 and 11, the command
/// line it last started with). Its walreceiver would write into the `pg_wal` that `--pg-wal`
/// writes to whenever that runs dry. For when `--standby-conninfo` cannot ask the server; a
/// command line changed since its last start is not seen. The message, if so.
pub(crate) fn standby_streams_by_itself(pgdata: &Path) -> Option<String> {
    let settings = crate::standby_conf::read(pgdata);
    let set = crate::standby_conf::last(&settings, "primary_conninfo")?;
    if set.value.trim().is_empty() {
        return None;
    }
    let fix = if set.origin == "recovery.conf" {
        "remove primary_conninfo from its recovery.conf and restart it"
    } else {
        "clear it (ALTER SYSTEM SET primary_conninfo = ''; ALTER SYSTEM SET primary_slot_name = ''; then SELECT pg_reload_conf() on PostgreSQL 13+, a restart on 12)"
    };
    Some(format!(
        "the standby in {} has primary_conninfo set ({}), so it streams from the primary itself into the pg_wal that receive --pg-wal writes to, whenever that runs dry — {fix}, or bootstrap the standby with --sidecar",
        pgdata.display(),
        set.origin
    ))
}

/// What `dir` is, if it is a PostgreSQL server's own: its data directory, or its `pg_wal` (an
/// `archive_status/` inside, which no archive has, or the `pg_wal` of a data directory). Archives
/// written or pruned there would race the server for its own WAL.
pub(crate) fn server_directory(dir: &Path) -> Option<String> {
    let is_data_dir = |d: &Path| d.join("PG_VERSION").is_file() && d.join("global").is_dir();
    if is_data_dir(dir) {
        return Some(format!("{} is a PostgreSQL data directory", dir.display()));
    }
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let in_data_dir = real.parent().filter(|p| {
        is_data_dir(p)
            && matches!(
                real.file_name().and_then(|n| n.to_str()),
                Some("pg_wal" | "pg_xlog")
            )
    });
    if in_data_dir.is_some() || dir.join("archive_status").is_dir() {
        return Some(format!("{} is a PostgreSQL server's pg_wal", dir.display()));
    }
    // Anywhere else inside a data directory, every base backup of the server would copy the
    // archive too (and a standby seeded from one would carry it).
    if let Some(data_dir) = real.ancestors().skip(1).find(|a| is_data_dir(a)) {
        return Some(format!(
            "{} is inside the PostgreSQL data directory {}",
            dir.display(),
            data_dir.display()
        ));
    }
    None
}

/// Makes this process the only walrelay writing WAL into `dir` (an archive, a spool, a standby's
/// `pg_wal`) for as long as the returned lock lives: a second receiver there would race the
/// first one's renames, compression and checksum list. A lock that cannot be taken for another
/// reason is warned about and the directory used without it.
pub(crate) fn lock_writer_dir(dir: &Path) -> Result<Option<walrelay_durable::DirLock>> {
    use walrelay_durable::DirLockOutcome;
    match walrelay_durable::lock_dir_exclusive(dir) {
        Ok(DirLockOutcome::Locked(lock)) => Ok(Some(lock)),
        Ok(DirLockOutcome::HeldElsewhere) => Err(exit::local(format!(
            "another walrelay process is writing into {} (it holds the directory's lock): stop it first, or give this one a directory of its own; two writers in one directory race each other's files",
            dir.display()
        ))),
        Ok(DirLockOutcome::Unsupported(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not take the directory's writer lock; make sure no other walrelay writes into it");
            Ok(None)
        }
        Err(e) => Err(exit::local(format!(
            "cannot look at {}: {e}; fix its path or permissions",
            dir.display()
        ))),
    }
}

/// Why `dir` cannot be an archive directory, if it cannot. `pg_wal_option`: the command has
/// `--pg-wal` (receive), which the advice then names.
pub(crate) fn archive_dir_problem(
    dir: &Path,
    pg_wal_option: bool,
) -> std::result::Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match server_directory(dir) {
            Some(what) => Err(format!(
                "{what}: an archive needs a directory of its own (mkdir one){}",
                if pg_wal_option {
                    "; to feed a standby's pg_wal use --pg-wal PGDATA"
                } else {
                    ""
                }
            )),
            None => Ok(()),
        },
        Ok(_) => Err(format!(
            "archive directory {} is not a directory: pass a directory (walrelay creates its files inside)",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "archive directory {} does not exist: create it first (mkdir -p {})",
            dir.display(),
            dir.display()
        )),
        Err(e) => Err(format!(
            "cannot use archive directory {}: {e}; fix its path or permissions",
            dir.display()
        )),
    }
}

/// A directory we cannot write to is found now, not after connecting.
///
/// Asked of the kernel with the effective user's rights (`eaccess`), without creating anything:
/// a probe file would appear for a moment in a live standby's `pg_wal`, where other tools walk
/// the directory (a backup, a `chown -R`) and trip over a file that vanishes under them.
pub(crate) fn check_writable(dir: &Path) -> std::result::Result<(), String> {
    use nix::unistd::{eaccess, AccessFlags};
    eaccess(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        format!(
            "cannot write to {}: {}; fix its permissions or run as its owner",
            dir.display(),
            std::io::Error::from(e)
        )
    })
}
