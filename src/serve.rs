//! `walrelay serve`: the relay — one replication connection to the primary, its own validated and
//! durable archive (exactly as `receive -D`), and the physical replication protocol served to
//! downstream standbys, pg_receivewal and pg_basebackup (`walrelay_relay`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use tokio::sync::watch;
use tracing::info;
use walrelay_archive::Compression;
use walrelay_client::ReplicationMode;
use walrelay_durable::Owner;
use walrelay_protocol::command::validate_slot_name;
use walrelay_relay::{AllowList, Auth, Network, RelayConfig, RelayStats, ServerTls, UserList};
use walrelay_walreceiver::{DiskTaskConfig, ReceiverConfig, ReceiverStats, Target};

use crate::connect::ConnectionArgs;
use crate::exit;
use crate::receive::{spawn_signal_handler, DEFAULT_STATUS_INTERVAL_SECS, MAX_RECONNECT_DELAY};

/// How downstreams prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMethod {
    /// Anyone --allow lets in.
    Trust,
    /// SCRAM-SHA-256 against --auth-file (PgBouncer's userlist.txt format).
    Scram,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// The upstream: -d CONNSTR (a host list follows failovers), -h/-p/-U as for receive.
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Archive directory, as `receive -D`: the relay's own durable copy of the WAL it serves.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// Where downstreams connect: HOST:PORT (e.g. 0.0.0.0:5433).
    #[arg(long = "listen", value_name = "HOST:PORT", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Replication slot on the upstream to stream from (recommended: the primary keeps WAL for the relay).
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Keep --slot on every standby of the upstream host list too (PostgreSQL 11+), as receive --failover.
    #[arg(long = "failover", requires = "slot")]
    pub failover: bool,
    /// Downstream authentication: trust, or scram with --auth-file (default: scram when --auth-file is given).
    #[arg(long = "auth", value_name = "METHOD")]
    pub auth: Option<AuthMethod>,
    /// Users and their SCRAM verifiers (or passwords), PgBouncer's format: "user" "SCRAM-SHA-256$…".
    #[arg(long = "auth-file", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Client networks allowed to connect (repeatable), e.g. 10.0.0.0/8. Default: loopback only.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Network>,
    /// TLS certificate chain (PEM) for downstream connections; needs --tls-key.
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600).
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Report upstream the K-th highest flush position of the downstreams instead of the relay's
    /// own: a synchronous primary then waits until K downstreams have a commit durable.
    #[arg(long = "sync-quorum", value_name = "K")]
    pub sync_quorum: Option<usize>,
    /// Report the relay's flush position upstream as soon as WAL is durable (a synchronous standby).
    #[arg(long = "synchronous")]
    pub synchronous: bool,
    /// Seconds between status reports to the upstream.
    #[arg(short = 's', long = "status-interval", value_name = "SECS", default_value_t = DEFAULT_STATUS_INTERVAL_SECS)]
    pub status_interval: u64,
    /// Seconds without a word from a streaming downstream before it is dropped (0: never).
    #[arg(long = "wal-sender-timeout", value_name = "SECS", default_value_t = 60)]
    pub wal_sender_timeout: u64,
    /// Downstream connections at once (the relay's max_wal_senders).
    #[arg(long = "max-wal-senders", value_name = "N", default_value_t = walrelay_relay::config::DEFAULT_MAX_SENDERS)]
    pub max_wal_senders: usize,
    /// Replication slots the relay keeps at most.
    #[arg(long = "max-replication-slots", value_name = "N", default_value_t = walrelay_relay::config::DEFAULT_MAX_SLOTS)]
    pub max_replication_slots: usize,
    /// Megabytes of the newest WAL kept in memory for the downstreams (slower ones read the archive).
    #[arg(long = "buffer-mb", value_name = "MB", default_value_t = 64)]
    pub buffer_mb: usize,
    /// Compress completed segments in the archive: none, gzip[:LEVEL], lz4, zstd[:LEVEL].
    #[arg(long = "compress", value_name = "METHOD", default_value = "none")]
    pub compress: Compression,
    /// Do not keep SHA-256 checksums of completed segments.
    #[arg(long = "no-checksums")]
    pub no_checksums: bool,
    /// Serve Prometheus metrics (the upstream stream and every downstream) on /metrics, health on /health.
    #[arg(long = "metrics-addr", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// `HOST:PORT`, the host a name or an address.
fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e} (expected HOST:PORT, like 0.0.0.0:5433)"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

pub async fn run(args: ServeArgs) -> Result<i32> {
    if let Some(slot) = &args.slot {
        validate_slot_name(slot).map_err(|e| exit::usage(e.to_string()))?;
    }
    let auth = match (args.auth, &args.auth_file) {
        (Some(AuthMethod::Trust), Some(_)) => {
            return Err(exit::usage(
                "--auth trust takes no --auth-file: drop one of them",
            ))
        }
        (Some(AuthMethod::Scram), None) => {
            return Err(exit::usage(
                "--auth scram needs --auth-file FILE with the users' SCRAM verifiers",
            ))
        }
        (None | Some(AuthMethod::Scram), Some(file)) => {
            let users = UserList::load(file).map_err(|e| exit::usage(e.to_string()))?;
            info!(
                users = users.len(),
                "downstreams authenticate with SCRAM-SHA-256"
            );
            Auth::Scram(users)
        }
        (None | Some(AuthMethod::Trust), None) => Auth::Trust,
    };
    if args.sync_quorum == Some(0) {
        return Err(exit::usage("--sync-quorum needs at least 1"));
    }
    if args.max_wal_senders == 0 {
        return Err(exit::usage(
            "--max-wal-senders 0 would serve nobody: give at least 1",
        ));
    }
    if let Some(k) = args.sync_quorum.filter(|&k| k > args.max_wal_senders) {
        return Err(exit::usage(format!(
            "--sync-quorum {k} can never be met with --max-wal-senders {}: commits on the primary would wait for ever; lower it or raise --max-wal-senders",
            args.max_wal_senders
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key).map_err(exit::usage)?),
        _ => None,
    };
    let allow = if args.allow.is_empty() {
        AllowList::loopback()
    } else {
        AllowList::new(args.allow.clone())
    };
    let dir = args.directory.clone();
    if let Some(text) = dir.to_str() {
        if let Ok(location) = walrelay_store::ArchiveLocation::parse(text) {
            if location.is_store() {
                return Err(exit::usage(format!(
                    "serve needs a local archive directory to serve from, not {text}: run serve -D DIR, and a second `walrelay receive -D {text} --spool …` (or a copy of DIR) for the bucket"
                )));
            }
        }
    }
    crate::wal_dirs::archive_dir_problem(&dir, false).map_err(exit::local)?;
    let _one_writer = crate::wal_dirs::lock_writer_dir(&dir)?;
    let resolved = args.conn.resolve()?;
    let params = resolved.params(ReplicationMode::Physical)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(Arc::new(shutdown_tx));
    let (_endpos_tx, endpos_rx) = watch::channel(None);
    let receiver_stats = Arc::new(ReceiverStats::default());
    let relay_stats = Arc::new(RelayStats::new(args.sync_quorum));
    let status_interval = Duration::from_secs(args.status_interval);
    if let Some(addr) = args.metrics_addr {
        let exporter = crate::metrics::RelayExporter {
            receive: crate::metrics::ReceiveExporter {
                stats: receiver_stats.clone(),
                labels: crate::metrics::Labels {
                    slot: args.slot.clone().unwrap_or_default(),
                    mode: "archive",
                },
                upload: None,
                status_interval,
            },
            relay: relay_stats.clone(),
        };
        crate::metrics::serve(addr, Arc::new(exporter)).await?;
    }
    let engine = ReceiverConfig {
        connect: params,
        target: Target::Archive {
            dir: dir.clone(),
            compression: args.compress,
            checksums: !args.no_checksums,
        },
        slot: args.slot.clone(),
        failover_slot: args.failover,
        temporary_slot: None,
        start: None,
        endpos: endpos_rx,
        status_interval,
        synchronous: args.synchronous,
        sync: true,
        validate: true,
        reconnect: true,
        expected_system_identifier: None,
        apply_source: None,
        owner: Owner::of_dir_if_root(&dir),
        stats: receiver_stats,
        shutdown: shutdown_rx,
        max_reconnect_delay: MAX_RECONNECT_DELAY,
        disk: DiskTaskConfig::default(),
    };
    let config = RelayConfig {
        auth,
        allow,
        tls,
        wal_sender_timeout: Duration::from_secs(args.wal_sender_timeout),
        max_senders: args.max_wal_senders.max(1),
        max_slots: args.max_replication_slots,
        buffer_bytes: args.buffer_mb.max(1) * 1024 * 1024,
        stats: relay_stats,
        ..RelayConfig::new(args.listen)
    };
    let listen = args.listen;
    match walrelay_relay::serve(config, engine, |addr| {
        // One line a supervisor (or a test) can wait for.
        info!(%addr, requested = %listen, "listening for replication connections");
    })
    .await
    {
        Ok(summary) => {
            info!(flushed = %summary.flushed, timeline = summary.timeline.0, "stopped");
            Ok(exit::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}
