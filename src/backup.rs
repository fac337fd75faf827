//! `walrelay backup` (take, `list`, `delete`) and `walrelay bootstrap --from-archive`: base backups
//! stored in the archive and restored from it. The jobs live in `walrelay_backup`; this module
//! parses options, shows progress and reports.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use walrelay_backup::{
    delete_backup, list_backups, parse_target_time, restore_backup, take_backup, BackupChoice,
    Codec, OpenedArchive, RecoveryTarget, RestoreAs, RestoreConfig, TakeConfig, TargetBound,
};
use walrelay_basebackup::{parse_max_rate, BackupProgress};
use walrelay_client::ReplicationMode;
use walrelay_conninfo::PrimaryConninfoOptions;
use walrelay_protocol::command::CheckpointMode;
use walrelay_protocol::Lsn;
use walrelay_store::ArchiveLocation;

use crate::bootstrap::{human_bytes, BootstrapArgs};
use crate::connect::ConnectionArgs;
use crate::progress::{Display, Reporter};
use crate::wal_stream::EngineWalStreamer;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, disable_help_flag = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    #[command(flatten)]
    pub take: TakeArgs,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// List the archive's backups (complete and incomplete).
    List(ListArgs),
    /// Remove a backup from the archive (its WAL in the archive stays; see prune).
    Delete(DeleteArgs),
}

/// Take a base backup into the archive.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct TakeArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Archive: a directory or object storage (s3://BUCKET/PREFIX, gs://…, az://…, file:///PATH).
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: Option<String>,
    /// Compression of the stored tar streams and WAL: zstd, lz4, gzip or none.
    #[arg(long = "compress", value_name = "METHOD", default_value = "zstd")]
    pub compress: Codec,
    /// The backup's label (default: its start time, YYYYMMDDTHHMMSSZ).
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    pub label: Option<String>,
    /// Checkpoint at the start: fast or spread.
    #[arg(short = 'c', long = "checkpoint", value_name = "fast|spread", default_value = "spread", value_parser = parse_checkpoint)]
    pub checkpoint: CheckpointMode,
    /// Where the backup waits before its upload (default: inside a directory archive; the
    /// temp directory for object storage).
    #[arg(long = "spool", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Transfer rate limit (kB/s; suffix k or M).
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    pub max_rate: Option<String>,
    /// Show progress (default: when stderr is a terminal).
    #[arg(short = 'P', long = "progress")]
    pub progress: bool,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ListArgs {
    /// Archive: a directory or object storage URL.
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: String,
    /// Object storage: the cluster (default: the only one stored).
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DeleteArgs {
    /// The label of the backup to remove.
    pub label: String,
    /// Archive: a directory or object storage URL.
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: String,
    /// Object storage: the cluster (default: the only one stored).
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: Option<u64>,
}

/// `bootstrap --from-archive` and its options.
#[derive(Args, Debug, Default)]
pub struct FromArchiveArgs {
    /// Seed from a backup stored in this archive (directory or URL) instead of the primary.
    #[arg(long = "from-archive", value_name = "DIR|URL")]
    pub from_archive: Option<String>,
    /// The backup to restore: a label, or latest (for --target-time/--target-lsn: the newest
    /// that ends before the target; for --target-name: the oldest).
    #[arg(
        long = "backup",
        value_name = "LABEL|latest",
        requires = "from_archive"
    )]
    pub backup: Option<BackupChoice>,
    /// Recover to this time (recovery_target_time, with a UTC offset), then promote.
    #[arg(
        long = "target-time",
        value_name = "TIME",
        requires = "from_archive",
        group = "pitr"
    )]
    pub target_time: Option<String>,
    /// Recover to this LSN, then promote.
    #[arg(
        long = "target-lsn",
        value_name = "LSN",
        requires = "from_archive",
        group = "pitr"
    )]
    pub target_lsn: Option<Lsn>,
    /// Recover to this transaction, then promote.
    #[arg(
        long = "target-xid",
        value_name = "XID",
        requires = "from_archive",
        group = "pitr"
    )]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point), then promote. Without --backup,
    /// the oldest backup is restored: a restore point's position is known only to recovery.
    #[arg(
        long = "target-name",
        value_name = "NAME",
        requires = "from_archive",
        group = "pitr"
    )]
    pub target_name: Option<String>,
    /// `immediate`: recover until consistent, then promote; `latest`: recover everything the
    /// archive holds, then promote.
    #[arg(long = "target", value_name = "immediate|latest", requires = "from_archive", group = "pitr", value_parser = ["immediate", "latest"])]
    pub target: Option<String>,
    /// Make a standby that replays from the archive, then streams from the primary (-d).
    #[arg(long = "standby", requires = "from_archive", conflicts_with = "pitr")]
    pub standby: bool,
    /// Object storage: the cluster (default: the only one stored).
    #[arg(
        long = "system-identifier",
        value_name = "N",
        requires = "from_archive"
    )]
    pub system_identifier: Option<u64>,
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

fn location(text: &str) -> Result<ArchiveLocation> {
    ArchiveLocation::parse(text).map_err(|e| crate::exit::usage(e.to_string()))
}

pub async fn run(args: BackupArgs) -> Result<i32> {
    match args.command {
        Some(BackupCommand::List(a)) => run_list(a).await,
        Some(BackupCommand::Delete(a)) => run_delete(a).await,
        None => run_take(args.take).await,
    }
}

async fn run_take(args: TakeArgs) -> Result<i32> {
    let Some(directory) = args.directory.as_deref() else {
        return Err(crate::exit::usage(
            "backup needs the archive: -D DIR or -D s3://BUCKET/PREFIX",
        ));
    };
    let location = location(directory)?;
    if let ArchiveLocation::Dir(dir) = &location {
        // An archive in a server's own directories races the server and grows every backup.
        if let Some(what) = crate::wal_dirs::server_directory(dir) {
            return Err(crate::exit::local(format!(
                "{what}: an archive needs a directory of its own (mkdir one)"
            )));
        }
    }
    let max_rate_kb = args
        .max_rate
        .as_deref()
        .map(parse_max_rate)
        .transpose()
        .map_err(|e| crate::exit::usage(e.to_string()))?;
    let resolved = args.conn.resolve()?;
    let connect = resolved.params(ReplicationMode::Physical)?;
    let cancel = crate::bootstrap::stop_signals("backup")?;
    let config = TakeConfig {
        connect,
        location,
        label: args.label.clone(),
        codec: args.compress,
        checkpoint: args.checkpoint,
        spool: args.spool.clone(),
        max_rate_kb,
    };
    let progress = BackupProgress::new();
    let display = Display::choose(args.progress, crate::progress::stderr_is_terminal());
    let reporter = Reporter::start(display, progress.clone(), args.checkpoint);
    let result = take_backup(config, &EngineWalStreamer, &progress, cancel).await;
    if let Some(r) = reporter {
        r.finish(result.is_ok());
    }
    let s = result.with_context(|| format!("back up into {directory}"))?;
    let d = &s.descriptor;
    eprintln!(
        "walrelay: backup {} stored in {}: PostgreSQL {}, system {}, {} of data as {} ({}) in {:.1} s, WAL {} to {} on timeline {}, {} WAL files",
        d.label,
        s.location,
        d.server_major(),
        d.system_identifier,
        human_bytes(d.data_bytes()),
        human_bytes(d.stored_bytes()),
        d.compression,
        s.duration.as_secs_f64(),
        d.start_lsn,
        d.end_lsn,
        d.end_timeline,
        d.objects
            .iter()
            .filter(|o| o.kind == walrelay_backup::descriptor::ObjectKind::Wal)
            .count(),
    );
    Ok(0)
}

async fn run_list(args: ListArgs) -> Result<i32> {
    let archive = OpenedArchive::open(&location(&args.directory)?, args.system_identifier)
        .await
        .with_context(|| format!("open {}", args.directory))?;
    let catalog = list_backups(&archive)
        .await
        .with_context(|| format!("list the backups in {}", args.directory))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
        return Ok(0);
    }
    if catalog.backups.is_empty() {
        println!("no complete backups in {}", archive.store.location());
    } else {
        println!(
            "{:<24} {:<20} {:<20} {:>3} {:>8} {:>10} {:>10}  compression",
            "label", "start time", "end time", "tli", "major", "data", "stored"
        );
        for b in &catalog.backups {
            println!(
                "{:<24} {:<20} {:<20} {:>3} {:>8} {:>10} {:>10}  {}   {} - {}",
                b.label,
                walrelay_backup::whole_seconds(&b.start_time),
                walrelay_backup::whole_seconds(&b.end_time),
                b.end_timeline,
                b.server_major(),
                human_bytes(b.data_bytes()),
                human_bytes(b.stored_bytes()),
                b.compression,
                b.start_lsn,
                b.end_lsn
            );
        }
    }
    for label in &catalog.incomplete {
        println!("{label:<24} incomplete (running, or failed: remove it with walrelay backup delete {label}; deleting a running backup makes it fail)");
    }
    for d in &catalog.damaged {
        println!(
            "{:<24} damaged: {} missing, never restored (remove it with walrelay backup delete {})",
            d.label,
            d.missing.join(", "),
            d.label
        );
    }
    Ok(0)
}

async fn run_delete(args: DeleteArgs) -> Result<i32> {
    let archive = OpenedArchive::open(&location(&args.directory)?, args.system_identifier)
        .await
        .with_context(|| format!("open {}", args.directory))?;
    let n = delete_backup(&archive, &args.label)
        .await
        .with_context(|| format!("delete backup {}", args.label))?;
    eprintln!(
        "walrelay: deleted backup {} ({n} objects) from {}",
        args.label,
        archive.store.location()
    );
    Ok(0)
}

/// `bootstrap --from-archive`.
pub async fn run_from_archive(args: &BootstrapArgs) -> Result<i32> {
    let fa = &args.from_archive;
    let Some(archive_text) = fa.from_archive.as_deref() else {
        return Err(anyhow::anyhow!("internal: --from-archive missing"));
    };
    if args.create_slot {
        return Err(crate::exit::usage(
            "--create-slot does not apply to --from-archive: create the standby's slot on the primary (SELECT pg_create_physical_replication_slot('NAME')) and pass -S NAME",
        ));
    }
    if let Some(slot) = &args.slot {
        walrelay_protocol::command::validate_slot_name(slot)
            .map_err(|e| crate::exit::usage(e.to_string()))?;
    }
    let location = location(archive_text)?;
    let archive_for_restore_command = match &location {
        ArchiveLocation::Dir(d) => std::path::absolute(d)
            .with_context(|| format!("resolve {}", d.display()))?
            .display()
            .to_string(),
        ArchiveLocation::Store(u) => u.to_string(),
    };
    let (restore_as, bound) = if fa.standby {
        if args.conn.dbname.is_none() && args.conn.host.is_none() {
            return Err(crate::exit::usage(
                "--standby needs the primary's connection: -d CONNSTR (it becomes primary_conninfo)",
            ));
        }
        let resolved = args.conn.resolve()?;
        let include_password = resolved
            .config
            .password()
            .is_some_and(|p| *p.source() == walrelay_conninfo::PasswordSource::ConnectionString);
        let conninfo = resolved.config.primary_conninfo(PrimaryConninfoOptions {
            include_dbname: false,
            include_password,
        });
        (
            RestoreAs::Standby {
                primary_conninfo: conninfo,
                slot_name: args.slot.clone(),
            },
            TargetBound::None,
        )
    } else if let Some(t) = &fa.target_time {
        let at = parse_target_time(t).map_err(crate::exit::usage)?;
        refuse_future_target(t, at)?;
        (
            RestoreAs::Pitr(RecoveryTarget::Time(
                walrelay_backup::descriptor::target_time_for_postgres(t),
            )),
            TargetBound::Time(at),
        )
    } else if let Some(l) = fa.target_lsn {
        (
            RestoreAs::Pitr(RecoveryTarget::Lsn(l.to_string())),
            TargetBound::Lsn(l),
        )
    } else if let Some(x) = fa.target_xid {
        (
            RestoreAs::Pitr(RecoveryTarget::Xid(x.to_string())),
            TargetBound::Xid(x),
        )
    } else if let Some(n) = &fa.target_name {
        if n.is_empty() || n.len() >= 64 {
            return Err(crate::exit::usage(format!(
                "--target-name {n:?}: a restore point's name has 1 to 63 bytes (pg_create_restore_point)"
            )));
        }
        (
            RestoreAs::Pitr(RecoveryTarget::Name(n.clone())),
            TargetBound::Oldest,
        )
    } else if fa.target.as_deref() == Some("latest") {
        (RestoreAs::Pitr(RecoveryTarget::Latest), TargetBound::None)
    } else if fa.target.is_some() {
        (
            RestoreAs::Pitr(RecoveryTarget::Immediate),
            TargetBound::None,
        )
    } else {
        return Err(crate::exit::usage(
            "--from-archive needs what to make of the backup: --target-time T, --target-lsn L, --target-xid X, --target-name NAME, --target immediate|latest, or --standby -d CONNSTR",
        ));
    };
    let walrelay = std::env::current_exe()
        .context("find the walrelay program for restore_command")?
        .display()
        .to_string();
    let owner = match args.owner.as_deref() {
        Some(name) => Some(crate::bootstrap::owner_by_name(name)?),
        None => None,
    };
    let config = RestoreConfig {
        location,
        archive_for_restore_command,
        system_identifier: fa.system_identifier,
        choice: fa.backup.clone().unwrap_or(BackupChoice::Latest),
        bound,
        target_dir: args.pgdata.clone(),
        tablespace_mappings: args.tablespace_mapping.clone(),
        restore_as,
        walrelay,
        owner,
        sync: !args.no_sync,
    };
    // A signal drops the restore, whose cleanup removes what it wrote.
    let cancel = crate::bootstrap::stop_signals("restore")?;
    let restored = tokio::select! {
        r = restore_backup(config) => r,
        () = cancel => Err(walrelay_backup::BackupJobError::Cancelled),
    };
    let s = restored
        .with_context(|| format!("restore {} from {archive_text}", args.pgdata.display()))?;
    eprintln!(
        "walrelay: restored backup {} (PostgreSQL {}, ended {} at {}) into {}: {}, {} WAL files; {}",
        s.descriptor.label,
        s.descriptor.server_major(),
        s.descriptor.end_time,
        s.descriptor.end_lsn,
        s.data_dir.display(),
        if s.descriptor.manifest {
            format!("{} files checked against its manifest", s.files_verified)
        } else {
            "every stored object checked against its SHA-256 (no manifest before PostgreSQL 13)"
                .to_string()
        },
        s.wal_files,
        if fa.standby {
            "start it with pg_ctl start: it replays from the archive, then streams from the primary"
        } else {
            "start it with pg_ctl start: it recovers to the target and promotes"
        }
    );
    if fa.target_name.is_some() && s.descriptor.server_major() < 13 {
        eprintln!(
            "walrelay: note: PostgreSQL {} ends recovery at the end of the archive without an error when it finds no restore point of that name: its log says \"recovery stopping at restore point\" when it found it",
            s.descriptor.server_major()
        );
    }
    Ok(0)
}

/// A target time later than now (a mistyped year, a wrong offset) is never reached: 13+ refuse
/// to start at the end of the archive, and 10–12 promote there without saying the target was
/// not reached. A minute of clock skew is allowed.
fn refuse_future_target(text: &str, at_unix: f64) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if at_unix > now + 60.0 {
        return Err(crate::exit::usage(format!(
            "--target-time {text:?} is in the future: recovery could not reach it; for everything the archive holds use --target latest"
        )));
    }
    Ok(())
}

/// `prune --keep-backups N / --keep-days D`: removes the stored backups the rule does not keep
/// (unless `--dry-run`), then points the WAL prune at the oldest kept backup's start.
pub async fn apply_retention(args: &mut crate::archive_cmds::PruneArgs) -> Result<()> {
    if args.before.is_some() || args.before_backup.is_some() || args.before_lsn.is_some() {
        return Err(crate::exit::usage(
            "--keep-backups/--keep-days choose the point to keep from themselves: leave out --before, --before-backup and --before-lsn",
        ));
    }
    let location = args.directory.get()?.clone();
    let archive = OpenedArchive::open(&location, args.system_identifier)
        .await
        .context("open the archive")?;
    let rule = walrelay_backup::Retention {
        keep_backups: args.keep_backups,
        keep_seconds: args.keep_days.map(|d| d.saturating_mul(86_400) as i64),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let done = walrelay_backup::prune_backups(&archive, rule, now, args.dry_run)
        .await
        .context("apply the backup retention")?;
    let Some(keep_from) = done.keep_wal_from else {
        return Err(crate::exit::usage(
            "the archive holds no complete backup, so no WAL can be judged unneeded: take one with walrelay backup first",
        ));
    };
    eprintln!(
        "walrelay: backups kept: {}; {}: {}; WAL kept from {keep_from} (the oldest kept backup's start)",
        done.kept.join(", "),
        if args.dry_run { "would remove" } else { "removed" },
        if done.removed.is_empty() {
            "none".to_string()
        } else {
            done.removed.join(", ")
        }
    );
    args.before_lsn = Some(keep_from);
    if args.wal_segsize.is_none() {
        args.wal_segsize = done
            .wal_segment_size
            .and_then(|s| walrelay_protocol::WalSegmentSize::new(u64::from(s)).ok());
    }
    Ok(())
}
