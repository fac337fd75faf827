//! `walrelay receive`: stream WAL into an archive directory or a standby's `pg_wal`, forever.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::sync::watch;
use tracing::info;
use walrelay_archive::Compression;
use walrelay_client::error::sqlstate;
use walrelay_client::{Connection, ReplicationMode};
use walrelay_durable::Owner;
use walrelay_protocol::command::validate_slot_name;
use walrelay_protocol::Lsn;
use walrelay_walreceiver::{
    receiver::exit_code, DiskTaskConfig, ReceiverConfig, ReceiverStats, StopReason, Target,
};

use crate::connect::ConnectionArgs;

/// Default `--status-interval`, as pg_receivewal.
pub const DEFAULT_STATUS_INTERVAL_SECS: u64 = 10;
/// Longest wait between reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Archive directory (pg_receivewal layout: complete segments, the one in progress as .partial).
    #[arg(short = 'D', long = "directory", value_name = "DIR", required_unless_present_any = ["pg_wal", "drop_slot", "create_slot"], conflicts_with = "pg_wal")]
    pub directory: Option<PathBuf>,
    /// Feed a standby: write WAL into PGDATA/pg_wal under real segment names (sidecar mode).
    #[arg(long = "pg-wal", value_name = "PGDATA")]
    pub pg_wal: Option<PathBuf>,
    /// Replication slot to stream from.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Create the slot named by --slot (reserving WAL at once) and exit.
    #[arg(long = "create-slot")]
    pub create_slot: bool,
    /// With --create-slot: do not fail when the slot exists.
    #[arg(long = "if-not-exists", requires = "create_slot")]
    pub if_not_exists: bool,
    /// Drop the slot named by --slot and exit.
    #[arg(long = "drop-slot", conflicts_with = "create_slot")]
    pub drop_slot: bool,
    /// Start at this LSN (rounded down to a segment) instead of where the directory says.
    #[arg(long = "start", value_name = "LSN")]
    pub start: Option<Lsn>,
    /// Stop once WAL up to this LSN is received and durable.
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    pub endpos: Option<Lsn>,
    /// Seconds between status reports to the server (0 disables periodic reports).
    #[arg(short = 's', long = "status-interval", value_name = "SECS", default_value_t = DEFAULT_STATUS_INTERVAL_SECS)]
    pub status_interval: u64,
    /// Act as a synchronous standby: report flush positions as soon as WAL is durable.
    #[arg(long = "synchronous")]
    pub synchronous: bool,
    /// Do not fsync (unsafe: a crash can lose acknowledged WAL).
    #[arg(long = "no-sync", conflicts_with = "synchronous")]
    pub no_sync: bool,
    /// Exit on connection loss instead of reconnecting.
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,
    /// Compress completed segments: none, gzip[:LEVEL], lz4, zstd[:LEVEL] (archive mode).
    #[arg(long = "compress", value_name = "METHOD", default_value = "none")]
    pub compress: Compression,
    /// Do not keep SHA-256 checksums of completed segments (archive mode).
    #[arg(long = "no-checksums")]
    pub no_checksums: bool,
    /// Do not validate page headers and record CRCs before acknowledging WAL.
    #[arg(long = "no-verify-wal")]
    pub no_verify_wal: bool,
    /// Connection to the standby fed in --pg-wal mode, to report its replay position as apply.
    #[arg(long = "standby-conninfo", value_name = "CONNSTR", requires = "pg_wal")]
    pub standby_conninfo: Option<String>,
    /// Serve Prometheus metrics on /metrics and a health check on /health.
    #[arg(long = "metrics-addr", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

pub async fn run(args: ReceiveArgs) -> Result<i32> {
    if let Some(slot) = &args.slot {
        validate_slot_name(slot)?;
    }
    if (args.create_slot || args.drop_slot) && args.slot.is_none() {
        bail!("--create-slot and --drop-slot need the slot name: add -S NAME");
    }
    if args.pg_wal.is_some() && args.compress != Compression::None {
        bail!("--compress applies to archive directories only; a standby's pg_wal needs plain segments");
    }
    let resolved = args.conn.resolve()?;
    let params = resolved.params(ReplicationMode::Physical)?;

    if args.create_slot || args.drop_slot {
        let slot = args.slot.as_deref().unwrap_or_default();
        let mut conn = Connection::connect(&params)
            .await
            .context("connect for replication")?;
        if args.drop_slot {
            conn.drop_slot(slot, false)
                .await
                .with_context(|| format!("drop replication slot \"{slot}\""))?;
            info!(slot, "replication slot dropped");
        } else {
            match conn.create_physical_slot(slot, false, true).await {
                Ok(_) => info!(slot, "replication slot created"),
                Err(e)
                    if args.if_not_exists && e.sqlstate() == Some(sqlstate::DUPLICATE_OBJECT) =>
                {
                    info!(slot, "replication slot exists already")
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e))
                        .with_context(|| format!("create replication slot \"{slot}\""))
                }
            }
        }
        conn.close().await;
        return Ok(0);
    }

    let target = match (&args.directory, &args.pg_wal) {
        (Some(dir), None) => {
            if !dir.is_dir() {
                bail!(
                    "archive directory {} does not exist or is not a directory: create it first (mkdir -p {})",
                    dir.display(),
                    dir.display()
                );
            }
            Target::Archive {
                dir: dir.clone(),
                compression: args.compress,
                checksums: !args.no_checksums,
            }
        }
        (None, Some(pgdata)) => {
            let pg_wal = pgdata.join("pg_wal");
            if !pg_wal.is_dir() {
                bail!(
                    "{} is not a PostgreSQL data directory (no pg_wal in it): pass the standby's PGDATA",
                    pgdata.display()
                );
            }
            Target::PgWal { pg_wal }
        }
        _ => bail!("give exactly one of -D DIR (archive) or --pg-wal PGDATA (sidecar)"),
    };
    check_writable(target.dir())?;
    let owner = Owner::of_dir_if_root(target.dir());

    let apply_source = match &args.standby_conninfo {
        Some(s) => {
            let cfg = walrelay_conninfo::ConnectionConfig::from_conninfo(
                s,
                &walrelay_conninfo::ProcessEnv,
            )
            .context("invalid --standby-conninfo")?;
            Some(walrelay_client::connect_params(
                &cfg,
                ReplicationMode::Off,
                None,
            )?)
        }
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx);
    let (_endpos_tx, endpos_rx) = watch::channel(args.endpos);
    let stats = Arc::new(ReceiverStats::default());
    let status_interval = Duration::from_secs(args.status_interval);
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr, stats.clone(), status_interval).await?;
    }

    let config = ReceiverConfig {
        connect: params,
        target,
        slot: args.slot.clone(),
        temporary_slot: None,
        start: args.start,
        endpos: endpos_rx,
        status_interval,
        synchronous: args.synchronous,
        sync: !args.no_sync,
        validate: !args.no_verify_wal,
        reconnect: !args.no_loop,
        expected_system_identifier: None,
        apply_source,
        owner,
        stats,
        shutdown: shutdown_rx,
        max_reconnect_delay: MAX_RECONNECT_DELAY,
        disk: DiskTaskConfig::default(),
    };
    match walrelay_walreceiver::run(config).await {
        Ok(summary) => {
            match summary.stop {
                StopReason::Shutdown => {
                    info!(flushed = %summary.flushed, timeline = %summary.timeline, "stopped")
                }
                StopReason::EndPosition(end) => {
                    info!(endpos = %end, timeline = %summary.timeline, "end position reached")
                }
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("walrelay: error: {e}");
            Ok(e.exit_code())
        }
    }
}

/// A directory we cannot write to is found now, not after connecting.
fn check_writable(dir: &std::path::Path) -> Result<()> {
    let probe = dir.join(format!(".walrelay-write-test-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "walrelay: error: cannot write to {}: {e}; fix its permissions or run as its owner",
                dir.display()
            );
            std::process::exit(exit_code::LOCAL);
        }
    }
}

/// SIGINT/SIGTERM ask for a clean stop; a second one exits at once.
pub fn spawn_signal_handler(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        info!("received a stop signal; finishing (send it again to exit at once)");
        let _ = tx.send(true);
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
}
