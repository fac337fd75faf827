//! `walrelay subset run|status|verify|drop`: a chosen set of tables copied into another database
//! and kept current over logical replication (the work is in `walrelay-logical`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tokio::sync::watch;
use tracing::info;
use walrelay_client::{ConnectParams, ReplicationMode};
use walrelay_logical::{
    CheckReport, OnConflict, RunConfig, StopReason, SubsetName, SubsetStats, SubsetStatus,
    TableAction, TableName, VerifyReport,
};
use walrelay_protocol::Lsn;

use crate::connect::ConnectionArgs;
use crate::exit;
use crate::metrics::{families, heard_recently, Exporter, Family, Kind};

/// Longest wait between attempts after transient failures.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Default `verify --wait`.
const DEFAULT_VERIFY_WAIT_SECS: u64 = 120;

#[derive(Args, Debug)]
pub struct SubsetArgs {
    #[command(subcommand)]
    pub command: SubsetCommand,
}

#[derive(Subcommand, Debug)]
pub enum SubsetCommand {
    /// Create the subset's tables on the target, copy them, then apply the source's changes forever.
    Run(Box<RunArgs>),
    /// Show a subset's phase, tables, applied position and lag.
    Status(StatusArgs),
    /// Compare row counts and content hashes of every table on both sides (exit 1 on a difference).
    Verify(VerifyArgs),
    /// Remove the subset: slot and publication on the source, walrelay's state on the target.
    Drop(DropArgs),
}

/// Where the subset goes and what it is called: every subcommand's common options.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The target database: a libpq connection string or URI (`host=… dbname=…`).
    #[arg(long = "target", value_name = "CONNSTR")]
    pub target: String,
    /// The subset's name: lower-case letters, digits and underscores (the source's slot and
    /// publication are called walrelay_NAME).
    #[arg(long = "name", value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub subset: TargetArgs,
    /// A table to copy and keep current, SCHEMA.TABLE (repeatable). Without -t and --schema: the
    /// tables the subset already has.
    #[arg(short = 't', long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Every table of this schema (repeatable).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub schemas: Vec<String>,
    /// Exit once everything up to this source LSN is applied.
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    pub endpos: Option<Lsn>,
    /// Copy this table of the subset again from a fresh snapshot (repeatable); the other tables
    /// keep streaming from where they are. After a schema change walrelay stopped at.
    #[arg(long = "resync", value_name = "SCHEMA.TABLE")]
    pub resync: Vec<String>,
    /// Copy every table again under a new replication slot: after the slot was lost
    /// (invalidated, dropped, or missing on a promoted standby).
    #[arg(long = "resync-all")]
    pub resync_all: bool,
    /// A table without a primary key to copy anyway, by setting REPLICA IDENTITY FULL on it on
    /// the source (repeatable). Costs WAL on the source and a row search per change on the
    /// target (see docs/subset.md).
    #[arg(long = "replica-identity-full", value_name = "SCHEMA.TABLE")]
    pub replica_identity_full: Vec<String>,
    /// `full`: every table of the run without a primary key gets REPLICA IDENTITY FULL on the
    /// source (each named, with its cost, by the preflight).
    #[arg(long = "replica-identity", value_name = "MODE", value_enum)]
    pub replica_identity: Option<IdentityMode>,
    /// A sequence to copy besides the tables' own (repeatable); created on the target if absent.
    #[arg(long = "sequence", value_name = "SCHEMA.SEQUENCE")]
    pub sequences: Vec<String>,
    /// Seconds between two copies of the sequences' positions while streaming.
    #[arg(long = "sequence-interval", value_name = "SECS", default_value_t = walrelay_logical::DEFAULT_SEQUENCE_INTERVAL.as_secs())]
    pub sequence_interval: u64,
    /// What a change the target's rows contradict does: stop (error), win (upsert), or is left
    /// out (skip). upsert and skip record each one in walrelay.subset_conflicts on the target.
    #[arg(long = "on-conflict", value_name = "MODE", value_enum, default_value_t = ConflictMode::Error)]
    pub on_conflict: ConflictMode,
    /// Leave out the source transaction that commits at this LSN (the one a conflict named).
    #[arg(long = "skip-lsn", value_name = "LSN")]
    pub skip_lsn: Option<Lsn>,
    /// Make the slot a failover slot (PostgreSQL 17+), kept on standbys that run
    /// sync_replication_slots, so that the stream survives a promotion (name every host in -d).
    #[arg(long = "failover")]
    pub failover: bool,
    /// Where large transactions streamed before their commit are spilled (default: the
    /// system's temporary directory).
    #[arg(long = "spool-dir", value_name = "DIR")]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Tables copied at the same time during the initial copy.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = walrelay_logical::DEFAULT_COPY_JOBS)]
    pub jobs: usize,
    /// Seconds between status reports to the source (at least).
    #[arg(short = 's', long = "status-interval", value_name = "SECS", default_value_t = walrelay_logical::DEFAULT_STATUS_INTERVAL.as_secs())]
    pub status_interval: u64,
    /// Exit at the first failure instead of trying again.
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,
    /// Run the preflight checks, print what would be done, and exit (nothing is created).
    #[arg(long = "check")]
    pub check: bool,
    /// Serve Prometheus metrics on /metrics and a health check on /health.
    #[arg(long = "metrics-addr", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// `--replica-identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityMode {
    Full,
}

/// `--on-conflict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConflictMode {
    Error,
    Upsert,
    Skip,
}

impl From<ConflictMode> for OnConflict {
    fn from(m: ConflictMode) -> OnConflict {
        match m {
            ConflictMode::Error => OnConflict::Error,
            ConflictMode::Upsert => OnConflict::Upsert,
            ConflictMode::Skip => OnConflict::Skip,
        }
    }
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct StatusArgs {
    /// Optional: the source, to report the exact lag and the slot's state.
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub subset: TargetArgs,
    /// Print JSON.
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub subset: TargetArgs,
    /// Seconds to wait for the target to apply up to the source's current position.
    #[arg(long = "wait", value_name = "SECS", default_value_t = DEFAULT_VERIFY_WAIT_SECS)]
    pub wait: u64,
    /// Print JSON.
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DropArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub subset: TargetArgs,
    /// Also drop the subset's tables on the target.
    #[arg(long = "drop-tables")]
    pub drop_tables: bool,
}

pub async fn run(args: SubsetArgs) -> Result<i32> {
    match args.command {
        SubsetCommand::Run(a) => run_subset(*a).await,
        SubsetCommand::Status(a) => status(a).await,
        SubsetCommand::Verify(a) => verify(a).await,
        SubsetCommand::Drop(a) => drop(a).await,
    }
}

fn subset_name(name: &str) -> Result<SubsetName> {
    SubsetName::new(name).ok_or_else(|| {
        exit::usage(format!(
            "invalid --name {name:?}: use 1 to 54 lower-case letters, digits and underscores"
        ))
    })
}

fn target_params(conninfo: &str) -> Result<ConnectParams> {
    let cfg = walrelay_conninfo::ConnectionConfig::from_conninfo(
        conninfo,
        &walrelay_conninfo::ProcessEnv,
    )
    .map_err(|e| exit::usage(format!("invalid --target: {e}")))?;
    let mut p = walrelay_client::connect_params(&cfg, ReplicationMode::Off, None)?;
    if p.application_name.is_none() {
        p.application_name = Some("walrelay".to_string());
    }
    Ok(p)
}

fn source_params(conn: &ConnectionArgs) -> Result<ConnectParams> {
    conn.resolve()?.sql_params()
}

fn parse_tables(tables: &[String]) -> Result<Vec<TableName>> {
    parse_names(tables, "table", "SCHEMA.TABLE")
}

fn parse_names(names: &[String], what: &str, form: &str) -> Result<Vec<TableName>> {
    names
        .iter()
        .map(|t| {
            TableName::parse(t).ok_or_else(|| {
                exit::usage(format!(
                    "invalid {what} name {t:?}: use {form} (quote mixed case: '\"Schema\".\"Name\"')"
                ))
            })
        })
        .collect()
}

async fn run_subset(a: RunArgs) -> Result<i32> {
    let name = subset_name(&a.subset.name)?;
    if a.jobs == 0 {
        return Err(exit::usage("--jobs must be at least 1"));
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stats = Arc::new(SubsetStats::default());
    let status_interval = Duration::from_secs(a.status_interval.max(1));
    if a.resync_all && !a.resync.is_empty() {
        return Err(exit::usage(
            "--resync-all copies every table again: leave out --resync",
        ));
    }
    let source = source_params(&a.conn)?;
    if a.failover && source.endpoints.len() < 2 {
        tracing::warn!("--failover: -d names one host; after a promotion walrelay reaches the new primary only through a host list (host=A,B target_session_attrs=read-write)");
    }
    let cfg = RunConfig {
        name: name.clone(),
        source,
        target: target_params(&a.subset.target)?,
        tables: parse_tables(&a.tables)?,
        schemas: a.schemas.clone(),
        endpos: a.endpos,
        resync: parse_tables(&a.resync)?,
        resync_all: a.resync_all,
        replica_identity_full: parse_tables(&a.replica_identity_full)?,
        replica_identity_full_all: a.replica_identity == Some(IdentityMode::Full),
        sequences: parse_names(&a.sequences, "sequence", "SCHEMA.SEQUENCE")?,
        sequence_interval: Duration::from_secs(a.sequence_interval.max(1)),
        on_conflict: a.on_conflict.into(),
        skip_lsn: a.skip_lsn,
        failover: a.failover,
        spool_dir: a.spool_dir.clone(),
        copy_jobs: a.jobs,
        status_interval,
        reconnect: !a.no_loop,
        max_reconnect_delay: MAX_RECONNECT_DELAY,
        stats: stats.clone(),
        shutdown: shutdown_rx,
    };
    if a.check {
        let report = walrelay_logical::check(&cfg).await?;
        print_check(&report);
        return Ok(exit::SUCCESS);
    }
    crate::receive::spawn_signal_handler(Arc::new(shutdown_tx));
    if let Some(addr) = a.metrics_addr {
        let exporter = SubsetExporter {
            stats: stats.clone(),
            status_interval,
        };
        crate::metrics::serve(addr, Arc::new(exporter)).await?;
    }
    let summary = walrelay_logical::run(cfg).await?;
    match summary.stop {
        StopReason::EndPosition => {
            info!(subset = %name, applied = %summary.applied, "end position reached")
        }
        StopReason::Shutdown => info!(subset = %name, applied = %summary.applied, "stopped"),
    }
    Ok(exit::SUCCESS)
}

fn print_check(r: &CheckReport) {
    let side = |what: &str, f: &walrelay_logical::ServerFacts| {
        println!(
            "{what}: PostgreSQL {}, database {}, role {}, wal_level {}, {} free replication slot(s), {} free WAL sender(s)",
            f.version,
            f.database,
            f.user,
            f.wal_level,
            f.free_slots().max(0),
            f.free_senders().max(0)
        );
    };
    side("source", &r.source);
    side("target", &r.target);
    for t in &r.tables {
        let action = match t.action {
            TableAction::Create => "create on the target, then copy",
            TableAction::CopyIntoExisting => "copy into the existing (empty) target table",
            TableAction::Recopy => "copy again (an earlier copy did not finish)",
            TableAction::Resync => "copy again from a fresh snapshot (--resync)",
            TableAction::Stream => "copied already: stream changes",
        };
        println!(
            "table {}: {action} (about {} MB)",
            t.table,
            t.size_bytes / (1024 * 1024)
        );
    }
    for t in &r.removed {
        println!(
            "table {t}: leaves the subset (removed from the publication; the target table stays)"
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    println!("ready: no problem found");
}

async fn status(a: StatusArgs) -> Result<i32> {
    let name = subset_name(&a.subset.name)?;
    let target = target_params(&a.subset.target)?;
    let source = if a.conn.dbname.is_some() || a.conn.host.is_some() {
        Some(source_params(&a.conn)?)
    } else {
        None
    };
    let s = walrelay_logical::status(&target, source.as_ref(), &name).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).context("render the status as JSON")?
        );
    } else {
        print_status(&s);
    }
    Ok(exit::SUCCESS)
}

fn print_status(s: &SubsetStatus) {
    let lsn = |l: Option<Lsn>| l.map_or("-".to_string(), |l| l.to_string());
    let lag = match (s.lag_bytes, s.lag_seconds) {
        (Some(b), Some(secs)) => format!(", lag {b} bytes, {secs:.1} s"),
        (Some(b), None) => format!(", lag {b} bytes"),
        _ => String::new(),
    };
    let source_kind = if s.source_lsn_is_current {
        "source at"
    } else {
        "source last seen at"
    };
    println!(
        "subset {}: {}, applied {} ({source_kind} {}{lag}), progress written {}",
        s.name,
        s.phase,
        lsn(s.applied_lsn),
        lsn(s.source_lsn),
        s.updated_age_seconds
            .map_or("never".to_string(), |a| format!("{a:.1} s ago"))
    );
    if let Some(slot) = &s.slot {
        println!(
            "slot {}: {}, confirmed up to {}",
            slot.name,
            match (slot.exists, &slot.invalidation, slot.active) {
                (false, _, _) => "MISSING: copy every table again with --resync-all".to_string(),
                (true, Some(why), _) =>
                    format!("LOST, {why}: copy every table again with --resync-all"),
                (true, None, true) => "active".to_string(),
                (true, None, false) => "inactive".to_string(),
            },
            lsn(slot.confirmed_flush_lsn)
        );
        if slot.failover == Some(true) {
            println!(
                "slot {}: failover slot (synced to standbys that run sync_replication_slots)",
                slot.name
            );
        }
    }
    for q in &s.sequences {
        println!("  sequence {q}: copied with the tables (--sequence)");
    }
    if s.conflicts_recorded > 0 {
        println!(
            "{} change(s) left out or applied differently are recorded in walrelay.subset_conflicts on the target",
            s.conflicts_recorded
        );
    }
    for t in &s.tables {
        match (t.is_synced(), t.sync_lsn) {
            (true, Some(at)) => println!(
                "  {}: synced at {at} ({} rows copied)",
                t.table,
                t.rows_copied.unwrap_or(0)
            ),
            _ => println!("  {}: copying", t.table),
        }
    }
}

async fn verify(a: VerifyArgs) -> Result<i32> {
    let name = subset_name(&a.subset.name)?;
    let target = target_params(&a.subset.target)?;
    let source = source_params(&a.conn)?;
    let r = walrelay_logical::verify(&source, &target, &name, Duration::from_secs(a.wait)).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("render the report as JSON")?
        );
    } else {
        print_verify(&r);
    }
    Ok(if r.all_match() {
        exit::SUCCESS
    } else {
        exit::ERROR
    })
}

fn print_verify(r: &VerifyReport) {
    for t in &r.tables {
        if t.matches() {
            println!("{}: ok ({} rows)", t.table, t.source_rows);
        } else {
            println!(
                "{}: DIFFERENT: source {} rows (hash {}), target {} rows (hash {})",
                t.table, t.source_rows, t.source_hash, t.target_rows, t.target_hash
            );
        }
    }
    let bad = r.tables.iter().filter(|t| !t.matches()).count();
    if bad == 0 {
        println!(
            "verify: {} table(s) identical (source at {}, target applied {})",
            r.tables.len(),
            r.source_lsn,
            r.applied_lsn
        );
    } else {
        println!(
            "verify: {bad} of {} table(s) differ (were the source's tables written to while verify read them?)",
            r.tables.len()
        );
    }
}

async fn drop(a: DropArgs) -> Result<i32> {
    let name = subset_name(&a.subset.name)?;
    let target = target_params(&a.subset.target)?;
    let source = source_params(&a.conn)?;
    let r = walrelay_logical::drop_subset(&source, &target, &name, a.drop_tables).await?;
    if r.sequences_advanced > 0 {
        println!(
            "subset {name}: {} sequence(s) moved forward on the target to the source's positions",
            r.sequences_advanced
        );
    }
    if r.nothing_dropped() {
        println!("subset {name}: nothing to drop");
    } else {
        let mut done = Vec::new();
        if r.slot_dropped {
            done.push(format!("slot {}", name.slot()));
        }
        if r.publication_dropped {
            done.push(format!("publication {}", name.publication()));
        }
        if r.state_removed {
            done.push("walrelay's state on the target".to_string());
        }
        for t in &r.tables_dropped {
            done.push(format!("table {t}"));
        }
        println!("subset {name}: dropped {}", done.join(", "));
    }
    Ok(exit::SUCCESS)
}

/// `subset run`'s metrics.
struct SubsetExporter {
    stats: Arc<SubsetStats>,
    status_interval: Duration,
}

impl Exporter for SubsetExporter {
    fn families(&self) -> Vec<Family> {
        let s = self.stats.snapshot();
        use Kind::{Counter as C, Gauge as G};
        let phase = match s.phase {
            walrelay_logical::Phase::Starting => 0,
            walrelay_logical::Phase::Copying => 1,
            walrelay_logical::Phase::Streaming => 2,
        };
        let age = s.since_last_message().map_or(0, |d| d.as_secs());
        families(
            "walrelay_subset",
            [
                ("phase", "0 starting, 1 copying, 2 streaming", G(phase)),
                ("tables", "Tables in the subset", G(s.tables_total)),
                ("tables_synced", "Tables copied", G(s.tables_synced)),
                (
                    "rows_copied",
                    "Rows copied by the initial copy",
                    C(s.rows_copied),
                ),
                (
                    "bytes_copied",
                    "Bytes copied by the initial copy",
                    C(s.bytes_copied),
                ),
                (
                    "received_lsn",
                    "Source position received (bytes)",
                    G(s.received_lsn),
                ),
                (
                    "applied_lsn",
                    "Source position applied on the target (bytes)",
                    G(s.applied_lsn),
                ),
                (
                    "confirmed_lsn",
                    "Source position confirmed to the source (bytes)",
                    G(s.confirmed_lsn),
                ),
                (
                    "source_wal_end_lsn",
                    "The source's end of WAL as last seen (bytes)",
                    G(s.source_wal_end),
                ),
                (
                    "lag_bytes",
                    "Source end of WAL minus applied",
                    G(s.source_wal_end.saturating_sub(s.applied_lsn)),
                ),
                (
                    "transactions_applied",
                    "Source transactions applied",
                    C(s.transactions_applied),
                ),
                (
                    "transactions_skipped",
                    "Source transactions with nothing for the subset",
                    C(s.transactions_skipped),
                ),
                ("inserts", "Rows inserted", C(s.inserts)),
                ("updates", "Rows updated", C(s.updates)),
                ("deletes", "Rows deleted", C(s.deletes)),
                ("truncates", "TRUNCATEs applied", C(s.truncates)),
                (
                    "streamed_transactions",
                    "Large transactions streamed before their commit, spilled and applied",
                    C(s.streamed_transactions),
                ),
                (
                    "streamed_bytes",
                    "Bytes of streamed transactions spilled to disk",
                    C(s.streamed_bytes),
                ),
                (
                    "schema_changes",
                    "Schema changes of the source followed on the target",
                    C(s.schema_changes),
                ),
                (
                    "skipped_transactions",
                    "Source transactions left out by --skip-lsn",
                    C(s.skipped_transactions),
                ),
                (
                    "sequences_advanced",
                    "Times a target sequence was moved to the source's position",
                    C(s.sequences_advanced),
                ),
                (
                    "reconnects",
                    "Attempts after transient failures",
                    C(s.reconnects),
                ),
                ("connected", "1 while streaming", G(s.connected)),
                (
                    "last_message_age_seconds",
                    "Seconds since the last message from the source",
                    G(age),
                ),
            ],
        )
    }

    fn healthy(&self) -> bool {
        let s = self.stats.snapshot();
        s.phase == walrelay_logical::Phase::Copying
            || heard_recently(
                s.connected == 1,
                s.since_last_message(),
                self.status_interval,
            )
    }
}
