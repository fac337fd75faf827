//! `walrelay receive`: stream WAL into an archive directory or a standby's `pg_wal`, forever.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tokio::sync::watch;
use tracing::{info, warn};
use walrelay_archive::Compression;
use walrelay_client::{ClientError, ConnectParams, Connection, ReplicationMode, ServerCondition};
use walrelay_durable::Owner;
use walrelay_protocol::command::validate_slot_name;
use walrelay_protocol::Lsn;
use walrelay_store::upload::DEFAULT_UPLOAD_CONCURRENCY;
use walrelay_store::{ArchiveLocation, ArchiveStore, UploadStats, UploaderConfig};
use walrelay_walreceiver::{DiskTaskConfig, ReceiverConfig, ReceiverStats, StopReason, Target};

use crate::archive_cmds::ArchiveArg;
use crate::connect::ConnectionArgs;
use crate::exit::{self, Classified};
use crate::wal_dirs;

/// Default `--status-interval`, as pg_receivewal.
pub const DEFAULT_STATUS_INTERVAL_SECS: u64 = 10;
/// Longest wait between reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Archive: a directory (pg_receivewal layout: complete segments, the one in progress as
    /// .partial) or object storage, s3://BUCKET/PREFIX, gs://…, az://…, file:///PATH (needs --spool).
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL", required_unless_present_any = ["pg_wal", "drop_slot", "create_slot"], conflicts_with = "pg_wal")]
    pub directory: Option<ArchiveArg>,
    /// For an archive in object storage: the local directory WAL is received into (durable and
    /// acknowledged there), then uploaded from in the background and removed once confirmed.
    #[arg(long = "spool", value_name = "DIR", conflicts_with = "pg_wal")]
    pub spool: Option<PathBuf>,
    /// Uploads to object storage in flight at once.
    #[arg(long = "upload-concurrency", value_name = "N", default_value_t = DEFAULT_UPLOAD_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,
    /// Feed a standby: write WAL into PGDATA/pg_wal under real segment names (sidecar mode).
    #[arg(long = "pg-wal", value_name = "PGDATA")]
    pub pg_wal: Option<PathBuf>,
    /// Replication slot to stream from.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Create the slot named by --slot (reserving WAL at once) and exit.
    #[arg(long = "create-slot")]
    pub create_slot: bool,
    /// Keep the slot on every standby of the host list too (created there, advanced to what the
    /// archive holds), so that after a promotion the new primary has it (PostgreSQL 11+).
    #[arg(long = "failover", requires = "slot")]
    pub failover: bool,
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
    /// Compress completed segments: none, gzip[:LEVEL], lz4, zstd[:LEVEL] (archive mode); as in
    /// pg_receivewal, a bare level is gzip (`-Z 5`) and 0 is none.
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "METHOD",
        default_value = "none"
    )]
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
        validate_slot_name(slot).map_err(|e| exit::usage(e.to_string()))?;
    }
    if (args.create_slot || args.drop_slot) && args.slot.is_none() {
        return Err(exit::usage(
            "--create-slot and --drop-slot need the slot name: add -S NAME",
        ));
    }
    if args.pg_wal.is_some() && args.compress != Compression::None {
        return Err(exit::usage(
            "--compress applies to archive directories only; a standby's pg_wal needs plain segments",
        ));
    }
    let resolved = args.conn.resolve()?;
    let params = resolved.params(ReplicationMode::Physical)?;
    if args.failover && params.endpoints.len() < 2 {
        tracing::warn!(
            "--failover keeps the slot on the other hosts of a host list, and only one host is given: name the primary and its standbys (host=A,B,…)"
        );
    }

    if args.create_slot || args.drop_slot {
        let slot = args.slot.as_deref().unwrap_or_default();
        let action = if args.drop_slot { "drop" } else { "create" };
        let mut conn = match Connection::connect(&params).await {
            Ok(c) => c,
            Err(e) => return Err(slot_command_failed(action, slot, e)),
        };
        if args.failover && args.create_slot {
            // Refused before any slot exists: one on the standbys that nothing advances would
            // pin their WAL until someone drops it by hand.
            let major = conn.server_version().major();
            if let Err(e) = walrelay_walreceiver::ReceiveError::check_failover_slot(major) {
                conn.close().await;
                return Err(e.into());
            }
        }
        let sysid = if args.failover && args.create_slot {
            conn.identify_system()
                .await
                .map(|i| Some(i.system_identifier))
                .map_err(|e| slot_command_failed(action, slot, e))?
        } else {
            None
        };
        // A logical slot of that name (a subscription's, a subset's) is neither ours to drop
        // nor one to stream from. Only 15+ say so on a replication connection.
        if (args.drop_slot || args.if_not_exists) && slot_is_logical(&mut conn, slot).await {
            conn.close().await;
            return Err(walrelay_walreceiver::ReceiveError::SlotNotPhysical {
                slot: slot.to_string(),
                kind: "logical".into(),
            }
            .into());
        }
        let result = if args.drop_slot {
            conn.drop_slot(slot, false).await.map(|()| "dropped")
        } else {
            match conn.create_physical_slot(slot, false, true).await {
                Ok(_) => Ok("created"),
                Err(e)
                    if args.if_not_exists
                        && e.condition() == Some(ServerCondition::DuplicateObject) =>
                {
                    Ok("exists already")
                }
                Err(e) => Err(e),
            }
        };
        conn.close().await;
        return match result {
            Ok(what) => {
                info!(slot, "replication slot {what}");
                if let Some(sysid) = sysid {
                    for line in walrelay_walreceiver::create_on_standbys(&params, slot, sysid).await
                    {
                        info!(slot, "--failover: {line}");
                    }
                }
                Ok(exit::SUCCESS)
            }
            Err(e) => Err(slot_command_failed(action, slot, e)),
        };
    }

    let mut store: Option<Arc<dyn ArchiveStore>> = None;
    let location = args.directory.as_ref().map(ArchiveArg::get).transpose()?;
    let target = match (location, &args.pg_wal) {
        (Some(ArchiveLocation::Dir(dir)), None) => {
            if args.spool.is_some() {
                return Err(exit::usage(
                    "--spool is for archives in object storage (-D s3://…); a directory archive is written directly",
                ));
            }
            wal_dirs::archive_dir_problem(dir, true).map_err(exit::local)?;
            Target::Archive {
                dir: dir.clone(),
                compression: args.compress,
                checksums: !args.no_checksums,
            }
        }
        (Some(ArchiveLocation::Store(url)), None) => {
            let Some(spool) = &args.spool else {
                return Err(exit::usage(format!(
                    "an archive in object storage ({url}) needs --spool DIR: a local directory where WAL is durable before it is acknowledged and uploaded"
                )));
            };
            wal_dirs::archive_dir_problem(spool, false).map_err(exit::local)?;
            store = Some(walrelay_store::open_store(url)?);
            Target::Archive {
                dir: spool.clone(),
                compression: args.compress,
                checksums: !args.no_checksums,
            }
        }
        (None, Some(pgdata)) => {
            let pg_wal = pgdata.join("pg_wal");
            if !pg_wal.is_dir() {
                return Err(exit::local(format!(
                    "{} is not a PostgreSQL data directory (no pg_wal in it): pass the standby's PGDATA",
                    pgdata.display()
                )));
            }
            wal_dirs::not_a_recovering_data_directory(pgdata).map_err(exit::local)?;
            if args.standby_conninfo.is_none() {
                if let Some(message) = wal_dirs::standby_streams_by_itself(pgdata) {
                    return Err(exit::server_state(message));
                }
            }
            Target::PgWal { pg_wal }
        }
        _ => {
            return Err(exit::usage(
                "give exactly one of -D DIR (archive) or --pg-wal PGDATA (sidecar)",
            ))
        }
    };
    wal_dirs::check_writable(target.dir()).map_err(exit::local)?;
    let _one_writer = wal_dirs::lock_writer_dir(target.dir())?;
    let owner = Owner::of_dir_if_root(target.dir());

    let apply_source = match &args.standby_conninfo {
        Some(s) => {
            let cfg = walrelay_conninfo::ConnectionConfig::from_conninfo(
                s,
                &walrelay_conninfo::ProcessEnv,
            )
            .map_err(|e| exit::usage(format!("invalid --standby-conninfo: {e}")))?;
            let params = walrelay_client::connect_params(&cfg, ReplicationMode::Off, None)?;
            refuse_standby_with_own_walreceiver(&params).await?;
            Some(params)
        }
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_tx = Arc::new(shutdown_tx);
    spawn_signal_handler(shutdown_tx.clone());
    let promoted = args
        .pg_wal
        .as_ref()
        .map(|pgdata| watch_promotion(pgdata.clone(), shutdown_tx.clone()));
    let (_endpos_tx, endpos_rx) = watch::channel(args.endpos);
    let stats = Arc::new(ReceiverStats::default());
    let upload_stats = store.as_ref().map(|_| Arc::new(UploadStats::default()));
    let status_interval = Duration::from_secs(args.status_interval);
    if let Some(addr) = args.metrics_addr {
        let exporter = crate::metrics::ReceiveExporter {
            stats: stats.clone(),
            labels: crate::metrics::Labels {
                slot: args.slot.clone().unwrap_or_default(),
                mode: match &target {
                    Target::Archive { .. } => "archive",
                    Target::PgWal { .. } => "pg_wal",
                },
            },
            upload: upload_stats.clone(),
            status_interval,
        };
        crate::metrics::serve(addr, Arc::new(exporter)).await?;
    }
    let uploader = match (&store, &upload_stats) {
        (Some(store), Some(upload_stats)) => {
            let s = stats.clone();
            let cfg = UploaderConfig {
                spool: target.dir().to_path_buf(),
                store: store.clone(),
                compression: args.compress,
                checksums: !args.no_checksums,
                concurrency: usize::from(args.upload_concurrency),
                system_identifier: Arc::new(move || s.snapshot().system_identifier),
            };
            Some(spawn_uploader(
                cfg,
                upload_stats.clone(),
                shutdown_rx.clone(),
                shutdown_tx.clone(),
            ))
        }
        _ => None,
    };

    let commit_path_stats = stats.clone();
    let config = ReceiverConfig {
        connect: params,
        target,
        slot: args.slot.clone(),
        failover_slot: args.failover,
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
    let received = walrelay_walreceiver::run(config).await;
    crate::metrics::log_commit_path(&commit_path_stats.commit_path());
    // The receiver stopped: the uploader finishes what is in flight (the rest waits in the spool
    // for the next start) and reports a definite error it stopped on.
    let _ = shutdown_tx.send(true);
    let uploaded = match uploader {
        Some(task) => task.await.unwrap_or_else(|e| {
            Err(walrelay_store::StoreError::Setup {
                location: "the uploader".into(),
                reason: e.to_string(),
            })
        }),
        None => Ok(()),
    };
    if let Err(e) = uploaded {
        return Err(anyhow::Error::new(e).context("uploading WAL to the archive stopped"));
    }
    if let (Some(pgdata), Some(promoted)) = (&args.pg_wal, &promoted) {
        if promoted.load(Ordering::SeqCst) {
            let flushed = received.as_ref().map(|s| s.flushed.to_string()).ok();
            return Err(exit::server_state(format!(
                "the standby at {} was promoted (no standby.signal, recovery.signal or recovery.conf any more): it writes WAL of its own now, so receive --pg-wal stopped feeding it{}; to go on, feed another standby, or archive the old primary's WAL with -D DIR",
                pgdata.display(),
                flushed.map(|f| format!(" (WAL durable up to {f})")).unwrap_or_default()
            )));
        }
    }
    match received {
        Ok(summary) => {
            match summary.stop {
                StopReason::Shutdown => {
                    info!(flushed = %summary.flushed, timeline = summary.timeline.0, "stopped")
                }
                StopReason::EndPosition(end) => {
                    info!(endpos = %end, timeline = summary.timeline.0, "end position reached")
                }
            }
            Ok(exit::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

/// How often a sidecar looks whether its standby was promoted.
const PROMOTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A sidecar's standby may be promoted while walrelay feeds it (a failover): the server removes
/// `standby.signal` (renames `recovery.conf` on 10 and 11) and writes WAL of its own timeline into
/// the same `pg_wal`, where the old primary's WAL must not go on arriving (the server renames the
/// segment walrelay is filling to `.partial` and may archive it). Looked at every second; once
/// seen, a clean stop is asked for and the returned flag is set, so that `run` reports why.
fn watch_promotion(pgdata: PathBuf, shutdown: Arc<watch::Sender<bool>>) -> Arc<AtomicBool> {
    let promoted = Arc::new(AtomicBool::new(false));
    let flag = promoted.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROMOTION_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            if wal_dirs::not_a_recovering_data_directory(&pgdata).is_err() {
                flag.store(true, Ordering::SeqCst);
                warn!(pgdata = %pgdata.display(), "the standby was promoted: no longer feeding its pg_wal");
                let _ = shutdown.send(true);
                return;
            }
        }
    });
    promoted
}

/// A failed `--create-slot` / `--drop-slot` in one line, with the fix; its class is the server's
/// condition (an existing or missing slot is the server's state, authentication is the
/// connection's).
/// Whether `slot` is a logical slot, as far as READ_REPLICATION_SLOT (PostgreSQL 15+) tells: it
/// refuses logical slots ("cannot use READ_REPLICATION_SLOT with a logical replication slot").
async fn slot_is_logical(conn: &mut Connection, slot: &str) -> bool {
    if conn.server_version().major() < 15 {
        return false;
    }
    match conn.read_replication_slot(slot).await {
        Ok(Some(info)) => info.slot_type == "logical",
        Ok(None) => false,
        Err(e) => e
            .server_error()
            .is_some_and(walrelay_client::refuses_logical_slot),
    }
}

fn slot_command_failed(action: &str, slot: &str, e: ClientError) -> anyhow::Error {
    let cause = e
        .server_error()
        .map(|s| s.message().to_string())
        .unwrap_or_else(|| e.to_string());
    // "all replication slots are in use" (53400), "replication slots can only be used if
    // max_replication_slots > 0" (55000): the server's configuration, not a passing state.
    let no_free_slot = cause.contains("all replication slots are in use")
        || cause.contains("max_replication_slots > 0");
    let fix = match e.condition() {
        _ if no_free_slot => {
            "drop a slot nobody uses (SELECT slot_name, active FROM pg_replication_slots; pg_drop_replication_slot) or raise max_replication_slots on the server (a restart applies it)"
        }
        Some(ServerCondition::DuplicateObject) => {
            "add --if-not-exists to accept the existing slot, or choose another name"
        }
        Some(ServerCondition::SlotMissing) => {
            "nothing to drop; the server's slots are listed in pg_replication_slots"
        }
        Some(ServerCondition::SlotInUse) => {
            "stop what streams from it (walrelay receive, a standby) and try again"
        }
        Some(ServerCondition::AuthenticationFailed) => {
            "check the user, the password and pg_hba.conf (a \"replication\" line)"
        }
        _ => "",
    };
    let sep = if fix.is_empty() { "" } else { ": " };
    let class = if no_free_slot {
        walrelay_client::ErrorClass::ServerState
    } else {
        walrelay_client::Classify::class(&e)
    };
    Classified {
        class,
        message: format!("{action} replication slot \"{slot}\": {cause}{sep}{fix}"),
        source: Some(Box::new(e)),
    }
    .into()
}

/// How long the sidecar's look at its standby may take before receive goes on without it.
const STANDBY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A standby fed through its `pg_wal` must not also stream from the primary: its own walreceiver
/// would write into the same `pg_wal` and hold the slot, and walrelay would retry "slot is active"
/// for ever. Asked of the standby itself (`pg_stat_wal_receiver`, and `primary_conninfo` from
/// PostgreSQL 12, where it is a setting) when `--standby-conninfo` reaches it; a standby that is
/// not up yet is checked no further.
async fn refuse_standby_with_own_walreceiver(params: &ConnectParams) -> Result<()> {
    let look = async {
        let mut conn = Connection::connect(params).await.ok()?;
        let major = conn.server_version().major();
        let receiver = conn
            .simple_query("SELECT status, coalesce(slot_name, '') FROM pg_stat_wal_receiver")
            .await
            .ok()
            .and_then(|r| {
                let r = r.first()?;
                Some((r.get_idx(0, 0)?.to_string(), r.get_idx(0, 1)?.to_string()))
            });
        let primary_conninfo = if major >= 12 {
            conn.show("primary_conninfo")
                .await
                .ok()
                .filter(|v| !v.trim().is_empty())
        } else {
            None
        };
        let endpoint = conn.endpoint().to_string();
        conn.close().await;
        Some((major, endpoint, receiver, primary_conninfo))
    };
    let Ok(Some((major, endpoint, receiver, primary_conninfo))) =
        tokio::time::timeout(STANDBY_CHECK_TIMEOUT, look).await
    else {
        tracing::warn!("could not reach the standby through --standby-conninfo to check that it has no replication connection of its own; going on");
        return Ok(());
    };
    let what = match (&receiver, &primary_conninfo) {
        (Some((status, slot)), _) => format!(
            "runs its own walreceiver ({status}{})",
            if slot.is_empty() {
                String::new()
            } else {
                format!(", slot \"{slot}\"")
            }
        ),
        (None, Some(_)) => {
            "has primary_conninfo set, so it starts its own walreceiver whenever pg_wal runs dry"
                .to_string()
        }
        (None, None) => return Ok(()),
    };
    let fix = if major >= 12 {
        "clear it on the standby (ALTER SYSTEM SET primary_conninfo = ''; ALTER SYSTEM SET primary_slot_name = ''; then SELECT pg_reload_conf() on PostgreSQL 13+, a restart on 12), or bootstrap the standby with --sidecar"
    } else {
        "remove primary_conninfo from the standby's recovery.conf and restart it, or bootstrap the standby with --sidecar"
    };
    Err(exit::server_state(format!(
        "the standby at {endpoint} {what}: it streams from the primary itself into the pg_wal that receive --pg-wal writes to — {fix}"
    )))
}

/// Runs the uploader; a definite error it stops on (a conflicting object, a damaged spool file,
/// another cluster's WAL) also stops the receiver, which then exits with it.
fn spawn_uploader(
    cfg: UploaderConfig,
    stats: Arc<UploadStats>,
    shutdown: watch::Receiver<bool>,
    stop_receiver: Arc<watch::Sender<bool>>,
) -> tokio::task::JoinHandle<walrelay_store::Result<()>> {
    tokio::spawn(async move {
        // A panic (a bug) stops the receiver too: streaming on into a spool nothing empties,
        // with a healthy /health, would hide it until the disk fills.
        let result = tokio::spawn(walrelay_store::run_uploader(cfg, stats, shutdown))
            .await
            .unwrap_or_else(|_| {
                Err(walrelay_store::StoreError::Setup {
                    location: "the uploader".into(),
                    reason: "it stopped on an internal error (above)".into(),
                })
            });
        if let Err(e) = &result {
            tracing::error!(error = %e, "uploads stopped; stopping the receiver");
            let _ = stop_receiver.send(true);
        }
        result
    })
}

/// SIGINT/SIGTERM ask for a clean stop; a second one exits at once. SIGHUP (`systemctl reload`,
/// a closed terminal), SIGUSR1 and SIGUSR2 are logged and ignored: their default action would end
/// a long-running receiver, relay or subset without a word in its log.
pub fn spawn_signal_handler(tx: Arc<watch::Sender<bool>>) {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, name) in [
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    warn!("{name} received and ignored: walrelay reads its settings only when it starts; restart it to change them (SIGTERM stops it cleanly)");
                }
            });
        }
    }
    tokio::spawn(async move {
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
