//! `walrelay bootstrap`: seed a replicant — base backup, WAL streamed in parallel, manifest verified,
//! standby configured — so that `pg_ctl start` on the result gives a hot standby of the primary.
//!
//! The job itself is `walrelay_basebackup::bootstrap`; this module turns the options into its
//! configuration and adds what only the program can: SIGINT and SIGTERM become the job's cancel
//! signal (so `kill` cleans up like Ctrl-C), and a failure caused by a full file system gets what to
//! do about it (free space, how much the backup needs) on its one error line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use walrelay_basebackup::{
    bootstrap, parse_max_rate, BackupProgress, BootstrapConfig, ChecksumAlgorithm, StandbySetup,
    WalMethod, DEFAULT_SIDECAR_RETRY_INTERVAL,
};
use walrelay_client::ReplicationMode;
use walrelay_durable::Owner;
use walrelay_protocol::command::CheckpointMode;

use crate::connect::ConnectionArgs;
use crate::progress::{self, Display, Reporter};
use crate::wal_stream::EngineWalStreamer;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// The new data directory (absent or empty).
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Relocate a tablespace: OLDDIR=NEWDIR (absolute paths; `\=` for a literal `=`). Repeatable.
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    pub tablespace_mapping: Vec<String>,
    /// Replication slot for the WAL stream and the standby.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Create the slot named by --slot (it must not exist).
    #[arg(short = 'C', long = "create-slot")]
    pub create_slot: bool,
    /// Checkpoint at the start: fast (at once, more I/O) or spread (as the server's checkpoints).
    #[arg(short = 'c', long = "checkpoint", value_name = "fast|spread", default_value = "spread", value_parser = parse_checkpoint)]
    pub checkpoint: CheckpointMode,
    /// Transfer rate limit (kB/s; suffix k or M), as pg_basebackup.
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    pub max_rate: Option<String>,
    /// How the needed WAL gets into pg_wal: stream (second connection), fetch (end of backup), none.
    #[arg(
        short = 'X',
        long = "wal-method",
        value_name = "METHOD",
        default_value = "stream"
    )]
    pub wal_method: WalMethod,
    /// Backup label.
    #[arg(short = 'l', long = "label", value_name = "LABEL", default_value = walrelay_basebackup::DEFAULT_LABEL)]
    pub label: String,
    /// Manifest checksum algorithm: CRC32C, SHA224, SHA256, SHA384, SHA512 or NONE.
    #[arg(
        long = "manifest-checksums",
        value_name = "ALGORITHM",
        default_value = "CRC32C"
    )]
    pub manifest_checksums: ChecksumAlgorithm,
    /// Do not ask the server for a backup manifest (and skip its verification).
    #[arg(long = "no-manifest")]
    pub no_manifest: bool,
    /// Do not let the server verify data checksums while sending.
    #[arg(long = "no-verify-checksums")]
    pub no_verify_checksums: bool,
    /// Do not verify the result against the manifest and the WAL it needs.
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// Leave a plain copy: no standby.signal / primary_conninfo.
    #[arg(long = "no-standby-config", conflicts_with_all = ["sidecar", "write_recovery_conf"])]
    pub no_standby_config: bool,
    /// Write the standby configuration (pg_basebackup's -R; walrelay's default).
    #[arg(short = 'R', long = "write-recovery-conf")]
    pub write_recovery_conf: bool,
    /// Output format: plain (p) only, as a standby needs a data directory (pg_basebackup's -F).
    #[arg(short = 'F', long = "format", value_name = "p|plain", default_value = "plain", value_parser = parse_format)]
    pub format: String,
    /// Put the WAL in this directory (absolute; absent or empty), pg_wal being a symbolic link to
    /// it (pg_basebackup's --waldir).
    #[arg(long = "waldir", value_name = "WALDIR")]
    pub waldir: Option<PathBuf>,
    /// Stream WAL without a temporary replication slot when no --slot is given (pg_basebackup's
    /// --no-slot): the primary may then remove WAL before it is streamed.
    #[arg(long = "no-slot", conflicts_with_all = ["slot", "create_slot"])]
    pub no_slot: bool,
    /// Configure a standby fed by `walrelay receive --pg-wal` instead of its own replication connection.
    #[arg(long = "sidecar")]
    pub sidecar: bool,
    /// Do not fsync the result (faster, unsafe if the machine crashes soon after).
    #[arg(short = 'N', long = "no-sync")]
    pub no_sync: bool,
    /// Keep what was written when failing (for inspection).
    #[arg(short = 'n', long = "no-clean")]
    pub no_clean: bool,
    /// Show progress: a bar on a terminal (shown there anyway), periodic lines otherwise (a file,
    /// a pipe, a journal).
    #[arg(short = 'P', long = "progress")]
    pub progress: bool,
    /// Owner of the files written, when running as root (default: the owner of DIR or its parent).
    #[arg(long = "owner", value_name = "USER")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub from_archive: crate::backup::FromArchiveArgs,
}

fn parse_checkpoint(s: &str) -> Result<CheckpointMode, String> {
    match s {
        "fast" => Ok(CheckpointMode::Fast),
        "spread" => Ok(CheckpointMode::Spread),
        _ => Err(format!(
            "invalid checkpoint argument \"{s}\", must be \"fast\" or \"spread\""
        )),
    }
}

/// `-F`: pg_basebackup's plain format is the only one a standby can start from.
fn parse_format(s: &str) -> Result<String, String> {
    match s {
        "p" | "plain" => Ok("plain".to_string()),
        "t" | "tar" => Err(
            "walrelay bootstrap writes a plain data directory (-F p) that a standby starts from; for a tar-format backup use pg_basebackup -F t"
                .to_string(),
        ),
        _ => Err(format!(
            "invalid output format \"{s}\", must be \"plain\" (walrelay writes no tar format)"
        )),
    }
}

pub(crate) fn owner_by_name(name: &str) -> Result<Owner> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("look up user \"{name}\""))?
        .ok_or_else(|| crate::exit::usage(format!("--owner: no such user \"{name}\"")))?;
    Ok(Owner::ids(user.uid.as_raw(), user.gid.as_raw()))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`kill`, a service manager), naming the signal. The
/// handlers are installed when this is called — before the bootstrap creates anything — so a signal
/// at any later moment leads to its cleanup (directory removed, created slot dropped) instead of the
/// default action, which would leave a half-written data directory and a slot behind.
/// SIGHUP (the terminal closed) stops it the same way: its default action would kill it
/// without the cleanup.
pub(crate) fn stop_signals(job: &'static str) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        tracing::warn!("{name} received: stopping the {job}");
    })
}

pub async fn run(args: BootstrapArgs) -> Result<i32> {
    if args.from_archive.from_archive.is_some() {
        return crate::backup::run_from_archive(&args).await;
    }
    let max_rate_kb = args
        .max_rate
        .as_deref()
        .map(parse_max_rate)
        .transpose()
        .map_err(|e| crate::exit::usage(e.to_string()))?;
    let owner = args.owner.as_deref().map(owner_by_name).transpose()?;
    if owner.is_none() {
        warn_if_root_owned(&args.pgdata);
    }
    if args.slot.is_some()
        && !args.create_slot
        && args.wal_method == WalMethod::None
        && args.no_standby_config
    {
        tracing::warn!(
            "--slot with --wal-method none and --no-standby-config does nothing with the slot: no WAL is streamed through it and no standby is configured to use it; drop -S, or keep the standby configuration"
        );
    }
    // `-W` prompts here: Ctrl-C at that prompt must still end the program the default way.
    let resolved = args.conn.resolve()?;
    let connect = resolved.params(ReplicationMode::Physical)?;
    let cancel = stop_signals("bootstrap")?;
    let mut config = BootstrapConfig::new(resolved.config.clone(), connect, &args.pgdata);
    config.tablespace_mappings = args.tablespace_mapping.clone();
    config.wal_method = args.wal_method;
    config.slot = args.slot.clone();
    config.create_slot = args.create_slot;
    config.checkpoint = args.checkpoint;
    config.label = args.label.clone();
    config.manifest_checksums = if args.no_manifest {
        None
    } else {
        Some(args.manifest_checksums)
    };
    config.verify_checksums = !args.no_verify_checksums;
    config.max_rate_kb = max_rate_kb;
    config.verify = !args.no_verify;
    config.standby = if args.no_standby_config {
        StandbySetup::None
    } else if args.sidecar {
        StandbySetup::Sidecar {
            wal_retrieve_retry_interval: DEFAULT_SIDECAR_RETRY_INTERVAL,
        }
    } else {
        StandbySetup::Streaming
    };
    config.sync = !args.no_sync;
    config.clean_on_failure = !args.no_clean;
    config.owner = owner;
    config.temporary_slot = !args.no_slot;
    config.wal_dir = args.waldir.clone();

    let progress = BackupProgress::new();
    let display = Display::choose(args.progress, progress::stderr_is_terminal());
    let reporter = Reporter::start(display, progress.clone(), args.checkpoint);
    let streamer = EngineWalStreamer;
    let result = bootstrap(config, Some(&streamer), &progress, cancel).await;
    if let Some(r) = reporter {
        r.finish(result.is_ok());
    }
    let s = result.map_err(|e| explain_failure(e, &args, &progress))?;
    let secs = s.duration.as_secs_f64();
    eprintln!(
        "walrelay: bootstrapped {} from PostgreSQL {} (system {}): {} in {:.1} s ({}/s), WAL {} to {} on timeline {}{}{}",
        s.data_dir.display(),
        s.server_version.major(),
        s.system_identifier,
        human_bytes(s.bytes_received),
        secs,
        human_bytes(s.bytes_per_second() as u64),
        s.start.lsn,
        s.end.lsn,
        s.end.timeline,
        match &s.slot {
            Some(slot) if s.slot_created => format!(", slot \"{slot}\" created"),
            Some(slot) => format!(", slot \"{slot}\""),
            None => String::new(),
        },
        match (&s.verified, args.sidecar, args.no_standby_config) {
            (_, true, _) => "; standby configured for a receive --pg-wal sidecar".to_string(),
            (_, _, true) => "; no standby configuration written".to_string(),
            _ => "; start it with pg_ctl start".to_string(),
        }
    );
    Ok(0)
}

/// The bootstrap's error for the user; a full disk also gets what to do about it, naming the
/// directory whose file system is full (the data directory, `--waldir` or a `-T` target).
fn explain_failure(
    e: walrelay_basebackup::BootstrapError,
    args: &BootstrapArgs,
    progress: &BackupProgress,
) -> anyhow::Error {
    if !crate::exit::is_disk_full(&e) {
        return e.into();
    }
    let size = progress
        .total_bytes()
        .map(|b| format!(" (the base backup is about {}, plus WAL)", human_bytes(b)))
        .unwrap_or_default();
    let failed = failed_write(&e);
    let (dir, what) = match &failed {
        Some((path, _)) => full_directory(path, args),
        None => (args.pgdata.clone(), "the data directory"),
    };
    let cause = failed.map_or_else(|| e.to_string(), |(_, text)| text);
    crate::exit::local(format!(
        "bootstrap stopped and removed what it wrote: {cause}: the file system holding {what} {} is full: free space there{size} or choose another directory",
        dir.display()
    ))
}

/// Which directory given to bootstrap holds `path`, the file whose write found the disk full:
/// `--waldir` or a `-T` target (also when written through the data directory's `pg_wal` or
/// `pg_tblspc` links; the longest match wins), else the data directory.
fn full_directory(
    path: &std::path::Path,
    args: &BootstrapArgs,
) -> (std::path::PathBuf, &'static str) {
    let tablespaces: Vec<std::path::PathBuf> = args
        .tablespace_mapping
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(_, new)| std::path::PathBuf::from(new))
        .collect();
    if let (Some(w), true) = (&args.waldir, path.starts_with(args.pgdata.join("pg_wal"))) {
        return (w.clone(), "--waldir");
    }
    if path.starts_with(args.pgdata.join("pg_tblspc")) {
        return match tablespaces.as_slice() {
            [one] => (one.clone(), "the tablespace directory"),
            _ => (
                args.pgdata.join("pg_tblspc"),
                "a tablespace directory linked from",
            ),
        };
    }
    let waldir = args.waldir.iter().map(|w| (w.clone(), "--waldir"));
    let mapped = tablespaces
        .into_iter()
        .map(|t| (t, "the tablespace directory"));
    waldir
        .chain(mapped)
        .filter(|(d, _)| path.starts_with(d))
        .max_by_key(|(d, _)| d.as_os_str().len())
        .unwrap_or_else(|| (args.pgdata.clone(), "the data directory"))
}

/// The path and text of the write that failed, from the error's causes.
fn failed_write(e: &(dyn std::error::Error + 'static)) -> Option<(std::path::PathBuf, String)> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<walrelay_durable::DurableError>() {
            return Some((d.path.clone(), d.to_string()));
        }
        if let Some(walrelay_basebackup::ExtractError::Io { path, .. }) =
            err.downcast_ref::<walrelay_basebackup::ExtractError>()
        {
            return Some((path.clone(), err.to_string()));
        }
        cur = err.source();
    }
    None
}

/// A size in binary units for operator output: `512 B`, `1.5 kB`, `23.0 MB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Running as root with no `--owner`, files get the owner of the target or its nearest existing
/// parent: a root-owned parent (`/srv`, `/data`) gives a root-owned data directory that PostgreSQL,
/// which never runs as root, cannot start on. Said before anything is copied.
fn warn_if_root_owned(target: &Path) {
    let abs = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    let root = nix::unistd::Uid::effective().is_root();
    if root && Owner::of_dir_if_root(&abs).uid_gid().is_none() {
        tracing::warn!(
            dir = %abs.display(),
            "running as root, the new data directory will be owned by root (its nearest existing directory is root's), and PostgreSQL refuses to run as root: add --owner postgres (the server's OS user), or create the directory owned by that user first"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(23 << 20), "23.0 MB");
    }
}
