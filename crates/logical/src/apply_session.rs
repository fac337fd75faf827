//! The apply task of a streaming session: pgoutput messages from the network task, applied to the
//! target in transactions that carry the progress row (`progress` has the invariant).
//!
//! Besides plain transactions it
//!
//! * spills transactions the source streams before they commit (protocol 2) into the `spool`,
//!   and applies one when its Stream Commit arrives — in commit order, as one transaction;
//! * follows schema changes (`follow`) inside the transaction of the change that meets them;
//! * stops at a conflict, naming it: a group of transactions that meets one is rolled back and the
//!   next session applies those transactions one statement at a time (`precise_until`) to name
//!   the table, key, commit LSN and transaction id — or, with `--on-conflict upsert|skip`,
//!   resolves it in the statement and records it;
//! * leaves out the transaction at `--skip-lsn`, recording that it did;
//! * copies the sequences' positions every `--sequence-interval` and at a clean end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use walrelay_client::{Batch, ClientError, Connection, Pipeline};
use walrelay_protocol::pgoutput::{Begin, Commit, PgOutputDecoder, PgOutputMessage, StreamCommit};
use walrelay_protocol::Lsn;

use crate::apply::{Action, Applier, ApplyOptions, ApplyTable, SchemaDiff, Statement};
use crate::catalog;
use crate::config::{OnConflict, RunConfig};
use crate::error::{ConflictReport, Side, SubsetError};
use crate::follow;
use crate::progress::Progress;
use crate::schema::TableName;
use crate::sequences::{self, SequencePair};
use crate::spool::Spool;
use crate::state::UPDATE_PROGRESS;
use crate::stats::{Count, SubsetStats};
use crate::stream::{target_columns, Event, SessionEnd};

/// How often the apply task looks at the target's WAL positions and writes idle progress.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(200);
/// The progress row is written on its own at most this often.
const IDLE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Source transactions applied in one target transaction (group commit).
///
/// Consecutive source transactions already waiting in the channel are applied in one target
/// transaction, whose progress row names the last one: they commit together or not at all, so
/// exactly-once holds, and a backlog costs one target commit and one round trip per group, not per
/// transaction. Live, with nothing waiting, a group is one transaction.
#[derive(Debug, Clone)]
struct Group {
    /// The source transaction being received (its Begin), once it had something for the target.
    current: Option<(u32, Lsn)>,
    /// The end and commit time of the last complete source transaction in the group.
    end: Option<(Lsn, i64)>,
    transactions: u64,
    statements: u64,
    opened: Instant,
}

/// How often the apply looks whether the subset's publication still holds the subset's tables:
/// taken out of it by hand, a table's changes stop coming without a word from the source.
const PUBLICATION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A group commits once it holds this many source transactions…
const GROUP_MAX_TRANSACTIONS: u64 = 1000;
/// …or statements…
const GROUP_MAX_STATEMENTS: u64 = 20_000;
/// …or has been open this long, or nothing more is waiting.
const GROUP_MAX_AGE: Duration = Duration::from_millis(250);

/// Records a source transaction left out by `--skip-lsn`: commit LSN, xid, subset, changes.
const RECORD_SKIPPED: &str = "\
INSERT INTO walrelay.subset_conflicts (subset, source_commit_lsn, source_xid, change, conflict, resolution, row_values)
VALUES ($1, $2::pg_lsn, $3::bigint, 'transaction', 'skipped by --skip-lsn', 'skipped', $4::json)";

/// What a session hands its apply task.
pub(crate) struct ApplySession<'a> {
    pub cfg: &'a RunConfig,
    pub pipeline: &'a mut Pipeline,
    /// A catalog session on the source (schema changes, sequences).
    pub source: Connection,
    pub tables: Vec<ApplyTable>,
    pub sequences: Vec<SequencePair>,
    pub start: Lsn,
    pub precise_until: Option<Lsn>,
    pub durable_tx: watch::Sender<Lsn>,
}

pub(crate) struct ApplyTask<'a> {
    cfg: &'a RunConfig,
    pipeline: &'a mut Pipeline,
    source: Connection,
    applier: Applier,
    progress: Progress,
    /// The source's end of WAL as last seen.
    received: Lsn,
    /// The open target transaction.
    group: Option<Group>,
    /// The source transaction being received (its Begin).
    begin: Option<(u32, Lsn)>,
    last_persist: Instant,
    durable_tx: watch::Sender<Lsn>,
    stats: &'a Arc<SubsetStats>,
    spool: Spool,
    sequences: Vec<SequencePair>,
    last_sequences: Instant,
    precise_until: Option<Lsn>,
    /// The open source transaction is applied one statement at a time.
    precise: bool,
    /// `--skip-lsn` was met (or passed, with a warning).
    skip_settled: bool,
    /// The subset's tables (and their OIDs on the source, when known), which its publication
    /// must hold.
    published_tables: Vec<(TableName, Option<u32>)>,
    last_publication_check: Instant,
}

impl<'a> ApplyTask<'a> {
    pub(crate) fn new(s: ApplySession<'a>) -> Self {
        let cfg = s.cfg;
        let published_tables = s
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.source_oid))
            .collect();
        ApplyTask {
            cfg,
            pipeline: s.pipeline,
            source: s.source,
            applier: Applier::new(
                s.tables,
                ApplyOptions {
                    subset: cfg.name.clone(),
                    on_conflict: cfg.on_conflict,
                    skip_lsn: cfg.skip_lsn,
                },
            ),
            progress: Progress::new(s.start),
            received: s.start,
            group: None,
            begin: None,
            last_persist: Instant::now(),
            durable_tx: s.durable_tx,
            stats: &cfg.stats,
            spool: Spool::new(cfg.spool_dir.as_deref(), &cfg.name),
            sequences: s.sequences,
            last_sequences: Instant::now(),
            precise_until: s.precise_until,
            precise: false,
            skip_settled: cfg.skip_lsn.is_none(),
            published_tables,
            last_publication_check: Instant::now(),
        }
    }

    /// Applies until the end position, a stop request or an error; hands the source session back.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        done: watch::Sender<bool>,
    ) -> Result<(SessionEnd, Connection), SubsetError> {
        let mut shutdown = self.cfg.shutdown.clone();
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching_shutdown = true;
        loop {
            if !self.applier.in_transaction() {
                if let Some(end) = self.cfg.endpos.filter(|&e| self.progress.caught() >= e) {
                    self.commit_group().await?;
                    let reached = self.finish().await?;
                    let _ = done.send(true);
                    info!(endpos = %end, applied = %reached, "end position reached");
                    return Ok((SessionEnd::EndPosition(reached), self.source));
                }
            }
            if *shutdown.borrow() {
                if self.applier.in_transaction() {
                    self.abandon_group().await?;
                } else {
                    self.commit_group().await?;
                }
                let reached = self.finish().await?;
                let _ = done.send(true);
                return Ok((SessionEnd::Shutdown(reached), self.source));
            }
            tokio::select! {
                biased;
                r = shutdown.changed(), if watching_shutdown => watching_shutdown = r.is_ok(),
                _ = maintenance.tick(), if !self.applier.in_transaction() => self.maintain().await?,
                ev = rx.recv() => match ev {
                    None => return Err(SubsetError::StreamEnded),
                    Some(Event::Keepalive(lsn)) => {
                        self.received = self.received.max(lsn);
                        self.progress.keepalive(lsn);
                    }
                    Some(Event::Message { msg, raw, wal_end }) => {
                        self.received = self.received.max(wal_end);
                        let more_waiting = !rx.is_empty();
                        self.event(msg, raw, more_waiting).await?;
                    }
                },
            }
        }
    }

    /// Routes a message: stream blocks to the spool, everything else to the apply.
    async fn event(
        &mut self,
        msg: PgOutputMessage,
        raw: Bytes,
        more_waiting: bool,
    ) -> Result<(), SubsetError> {
        match &msg {
            PgOutputMessage::StreamStart(s) => return self.spool.start(s.xid, s.first_segment),
            PgOutputMessage::StreamStop => return self.spool.stop(),
            PgOutputMessage::StreamAbort(a) => {
                if a.xid == a.subxid {
                    info!(
                        xid = a.xid,
                        "streamed transaction aborted on the source: discarded"
                    );
                }
                return self.spool.abort(a.xid, a.subxid);
            }
            PgOutputMessage::StreamCommit(c) => return self.replay(c, more_waiting).await,
            _ if self.spool.in_block() => {
                self.stats.count(Count::StreamedBytes, raw.len() as u64);
                return self.spool.append(change_xid(&msg), &raw);
            }
            _ => {}
        }
        self.message(msg, more_waiting).await
    }

    /// A streamed transaction committed on the source: its spilled messages, applied as one
    /// transaction that commits at its commit LSN.
    async fn replay(&mut self, c: &StreamCommit, more_waiting: bool) -> Result<(), SubsetError> {
        let Some(mut reader) = self.spool.finish(c.xid)? else {
            return Err(SubsetError::StreamGap { xid: c.xid });
        };
        let began = Instant::now();
        self.message(
            PgOutputMessage::Begin(Begin {
                final_lsn: c.commit_lsn,
                commit_time: c.commit_time,
                xid: c.xid,
            }),
            false,
        )
        .await?;
        let mut decoder = stream_decoder()?;
        let mut changes = 0u64;
        while let Some(raw) = reader.next_message()? {
            let msg = decoder.decode(&raw)?;
            self.message(msg, false).await?;
            changes += 1;
        }
        self.message(
            PgOutputMessage::Commit(Commit {
                flags: c.flags,
                commit_lsn: c.commit_lsn,
                end_lsn: c.end_lsn,
                commit_time: c.commit_time,
            }),
            more_waiting,
        )
        .await?;
        self.stats.count(Count::StreamedTransactions, 1);
        info!(xid = c.xid, commit_lsn = %c.commit_lsn, messages = changes, secs = format_args!("{:.1}", began.elapsed().as_secs_f64()), "streamed transaction applied");
        Ok(())
    }

    async fn message(
        &mut self,
        msg: PgOutputMessage,
        more_waiting: bool,
    ) -> Result<(), SubsetError> {
        if let Some(diff) = self.applier.pending_schema_change(&msg) {
            self.follow(diff).await?;
        } else if let Some(unchanged) = self.applier.take_identity_check() {
            if let Some(table) = self.applier.table(&unchanged.table).cloned() {
                follow::check_column_identity(&mut self.source, &unchanged, &table).await?;
            }
        }
        match self.applier.on_message(msg)? {
            Action::None => {
                for t in self.applier.take_foreign_relations() {
                    warn!(
                        table = %t,
                        "the source sends changes to a table that is not in the subset (removed from it?): they are not applied"
                    );
                }
            }
            Action::Begin { final_lsn, xid } => {
                self.progress.begin();
                self.begin = Some((xid, final_lsn));
                self.precise = self.precise_until.is_some_and(|u| final_lsn <= u);
                self.applier.set_describe(self.precise);
                if let Some(skip) = self
                    .cfg
                    .skip_lsn
                    .filter(|&s| !self.skip_settled && final_lsn > s)
                {
                    warn!(skip_lsn = %skip, "no source transaction committed at the --skip-lsn position: nothing was skipped (give the commit LSN a conflict names)");
                    self.skip_settled = true;
                }
            }
            Action::Execute(stmt) => self.execute(stmt).await?,
            Action::Commit {
                end_lsn,
                commit_time,
                changes,
                skipped,
            } => {
                self.begin = None;
                if let Some(n) = skipped {
                    self.record_skipped(n).await?;
                }
                match self.group.as_mut() {
                    Some(g) => {
                        // An empty transaction joins an open group too: its end is covered.
                        g.end = Some((end_lsn, commit_time));
                        g.current = None;
                        if changes > 0 || skipped.is_some() {
                            g.transactions += 1;
                            self.stats.transaction(true);
                        } else {
                            self.stats.transaction(false);
                        }
                        self.progress.deferred();
                        let full = g.transactions >= GROUP_MAX_TRANSACTIONS
                            || g.statements >= GROUP_MAX_STATEMENTS
                            || g.opened.elapsed() >= GROUP_MAX_AGE;
                        let at_end = self.cfg.endpos.is_some_and(|e| end_lsn >= e);
                        if full || at_end || !more_waiting || self.precise {
                            self.commit_group().await?;
                        }
                    }
                    None => {
                        self.progress.skipped(end_lsn);
                        self.stats.transaction(false);
                    }
                }
                self.precise = false;
            }
        }
        Ok(())
    }

    /// Opens a target transaction for the current source transaction, if none is open.
    async fn open_group(&mut self) -> Result<(), SubsetError> {
        if self.group.is_none() {
            self.pipeline
                .execute("BEGIN", [])
                .await
                .map_err(SubsetError::sql(Side::Target, "begin a transaction"))?;
            self.group = Some(Group {
                current: None,
                end: None,
                transactions: 0,
                statements: 0,
                opened: Instant::now(),
            });
        }
        if let Some(g) = self.group.as_mut() {
            g.current = self.begin;
        }
        Ok(())
    }

    async fn execute(&mut self, stmt: Statement) -> Result<(), SubsetError> {
        self.open_group().await?;
        if let Some(g) = self.group.as_mut() {
            g.statements += 1;
        }
        self.stats.change(stmt.kind);
        let result = self
            .pipeline
            .execute(&stmt.sql, stmt.params.iter().map(|p| p.as_deref()))
            .await;
        if let Err(e) = result {
            return Err(self.failed(e, Some(&stmt)));
        }
        if self.precise {
            // One statement at a time: its answer names the change that conflicts.
            let batch = match self.pipeline.sync().await {
                Ok(b) => b,
                Err(e) => return Err(self.failed(e, Some(&stmt))),
            };
            if batch.unmatched > 0 {
                return Err(self.conflict(&stmt, "no such row on the target".to_string()));
            }
        }
        Ok(())
    }

    /// A change the target's rows contradict, named.
    fn conflict(&self, stmt: &Statement, problem: String) -> SubsetError {
        self.named(stmt, problem, false)
    }

    /// A change the target refused, named: its rows (`value_refused` false) or a value.
    fn named(&self, stmt: &Statement, problem: String, value_refused: bool) -> SubsetError {
        let (xid, lsn) = self.begin.unwrap_or((0, Lsn::INVALID));
        SubsetError::Conflict(Box::new(ConflictReport {
            table: self
                .applier
                .table_of(stmt.relid)
                .cloned()
                .unwrap_or_else(|| TableName::new("?", "?")),
            change: stmt.kind.as_sql(),
            key: stmt.key.clone().unwrap_or_else(|| "(unknown)".into()),
            problem,
            lsn,
            xid,
            value_refused,
        }))
    }

    /// The highest commit LSN the open group holds: what the next session applies precisely.
    fn group_reach(&self) -> Lsn {
        let g = self.group.as_ref();
        [
            self.begin.map(|b| b.1),
            g.and_then(|g| g.current.map(|c| c.1)),
            g.and_then(|g| g.end.map(|e| e.0)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Lsn::INVALID)
    }

    /// What a failed target statement means: a conflict (named if the statement is known in
    /// precise mode, else found again precisely by the next session), or an error — retried if
    /// the target says so (a deadlock, a lost connection), else a stop naming the transactions.
    fn failed(&self, e: ClientError, stmt: Option<&Statement>) -> SubsetError {
        // A value the target cannot hold (class 22: "Infinity" into a numeric of 10, an enum
        // label it lacks): found and named like a conflict, so that the commit LSN given is the
        // transaction's own — what --skip-lsn takes — and not the end of a group of several.
        if e.sqlstate().is_some_and(|s| s.starts_with("22")) {
            if let (true, Some(stmt)) = (self.precise, stmt) {
                let problem = match e.server_error() {
                    Some(se) => se.message().to_string(),
                    None => e.to_string(),
                };
                return self.named(stmt, problem, true);
            }
            return SubsetError::ConflictFound {
                until: self.group_reach(),
            };
        }
        if e.sqlstate().is_some_and(|s| s.starts_with("23")) {
            if let (true, Some(stmt)) = (self.precise, stmt) {
                let problem = match e.server_error() {
                    Some(se) if se.code() == "23505" => format!(
                        "a row with this key exists on the target ({}{})",
                        se.message(),
                        se.fields
                            .detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                    Some(se) => format!("the target refused it: {}", se.message()),
                    None => e.to_string(),
                };
                return self.conflict(stmt, problem);
            }
            return SubsetError::ConflictFound {
                until: self.group_reach(),
            };
        }
        let what = match &self.group {
            Some(Group {
                current: Some((xid, final_lsn)),
                transactions: 0,
                ..
            }) => format!("applying the source transaction {xid} (commit LSN {final_lsn})"),
            Some(g) => format!(
                "applying {} source transaction(s) from commit LSN {}",
                g.transactions + u64::from(g.current.is_some()),
                g.current
                    .map(|c| c.1)
                    .or(g.end.map(|e| e.0))
                    .unwrap_or(Lsn::INVALID)
            ),
            None => "applying the stream".to_string(),
        };
        SubsetError::sql(Side::Target, what)(e)
    }

    /// Reads every answer so far; an UPDATE or DELETE that found no row is a conflict (with
    /// `--on-conflict error`; the other modes resolve it in the statement).
    async fn sync_checked(&mut self) -> Result<Batch, SubsetError> {
        let batch = match self.pipeline.sync().await {
            Ok(b) => b,
            Err(e) => return Err(self.failed(e, None)),
        };
        if batch.unmatched > 0 && self.cfg.on_conflict == OnConflict::Error {
            return Err(SubsetError::ConflictFound {
                until: self.group_reach(),
            });
        }
        Ok(batch)
    }

    /// Follows a schema change on the target, inside the open transaction (or stops).
    async fn follow(&mut self, diff: SchemaDiff) -> Result<(), SubsetError> {
        self.open_group().await?;
        self.sync_checked().await?;
        let Some(table) = self.applier.table(&diff.table).cloned() else {
            return Ok(());
        };
        let relation = self
            .applier
            .relation(diff.relid)
            .map(|r| r.columns.clone())
            .unwrap_or_default();
        let followed = follow::follow(
            &mut self.source,
            self.pipeline.connection(),
            &self.cfg.name,
            &diff,
            &table,
            &relation,
        )
        .await?;
        let on_tgt = |what: String| SubsetError::sql(Side::Target, what);
        self.pipeline
            .connection()
            .batch_execute(&followed.sql)
            .await
            .map_err(on_tgt(format!(
                "follow the schema change of {}",
                diff.table
            )))?;
        let t = catalog::read_table(self.pipeline.connection(), &diff.table)
            .await
            .map_err(on_tgt(format!("read {} again", diff.table)))?
            .ok_or_else(|| {
                SubsetError::Usage(format!("table {} vanished from the target", diff.table))
            })?;
        self.applier
            .schema_followed(&diff.table, target_columns(&t), followed.source_columns);
        self.stats.count(Count::SchemaChanges, 1);
        Ok(())
    }

    /// Records a transaction left out by `--skip-lsn`, in the transaction that moves past it.
    async fn record_skipped(&mut self, changes: u64) -> Result<(), SubsetError> {
        let (xid, lsn) = self
            .begin
            .or(self.applier.current())
            .unwrap_or((0, Lsn::INVALID));
        let (xid, lsn) = match self.cfg.skip_lsn {
            Some(s) => (xid, s),
            None => (xid, lsn),
        };
        self.open_group().await?;
        let (l, x, row) = (
            lsn.to_string(),
            xid.to_string(),
            format!("{{\"changes\": {changes}}}"),
        );
        let result = self
            .pipeline
            .execute(
                RECORD_SKIPPED,
                [
                    Some(self.cfg.name.as_str().as_bytes()),
                    Some(l.as_bytes()),
                    Some(x.as_bytes()),
                    Some(row.as_bytes()),
                ],
            )
            .await;
        if let Err(e) = result {
            return Err(self.failed(e, None));
        }
        warn!(commit_lsn = %lsn, changes, "source transaction left out as --skip-lsn asked (recorded in walrelay.subset_conflicts)");
        self.skip_settled = true;
        self.stats.count(Count::SkippedTransactions, 1);
        Ok(())
    }

    /// Commits the open group with its progress row.
    async fn commit_group(&mut self) -> Result<(), SubsetError> {
        let Some(g) = self.group.clone() else {
            return Ok(());
        };
        let Some((end_lsn, commit_time)) = g.end else {
            // Nothing complete in it (only possible mid-transaction, which callers exclude).
            return self.abandon_group().await;
        };
        if let Err(e) = self.queue_progress(end_lsn, Some(commit_time)).await {
            return Err(self.failed(e, None));
        }
        if self.cfg.on_conflict == OnConflict::Error {
            // Every answer before COMMIT: an UPDATE or DELETE that found no row must stop the
            // group before it commits.
            let batch = match self.pipeline.sync().await {
                Ok(b) => b,
                Err(e) => return Err(self.failed(e, None)),
            };
            self.progress_row_written(&batch)?;
            if batch.unmatched > 0 {
                return Err(SubsetError::ConflictFound {
                    until: self.group_reach(),
                });
            }
        }
        let result = async {
            self.pipeline.execute("COMMIT", []).await?;
            self.pipeline.sync().await
        }
        .await;
        let batch = match result {
            Ok(b) => b,
            Err(e) => return Err(self.failed(e, None)),
        };
        self.group = None;
        if self.cfg.on_conflict != OnConflict::Error {
            self.progress_row_written(&batch)?;
        }
        self.progress.applied(end_lsn);
        self.stats.applied(end_lsn);
        Ok(())
    }

    /// Between transactions: commit a group that waited long enough, write idle progress, copy
    /// the sequences when due, learn what the target flushed, publish it.
    async fn maintain(&mut self) -> Result<(), SubsetError> {
        if self.group.is_some() {
            self.commit_group().await?;
        }
        if let Some(lsn) = self.progress.to_persist() {
            if self.last_persist.elapsed() >= IDLE_PERSIST_INTERVAL {
                self.persist(lsn).await?;
            }
        }
        if self.last_sequences.elapsed() >= self.cfg.sequence_interval {
            self.advance_sequences().await?;
        }
        if self.last_publication_check.elapsed() >= PUBLICATION_CHECK_INTERVAL {
            self.check_publication().await?;
        }
        if self.progress.needs_flush_check() {
            let r = self
                .pipeline
                .connection()
                .query_params(
                    "SELECT pg_catalog.pg_current_wal_flush_lsn()::text AS f, \
                            pg_catalog.pg_current_wal_insert_lsn()::text AS i",
                    &[],
                )
                .await
                .map_err(SubsetError::sql(
                    Side::Target,
                    "read the target's WAL position",
                ))?;
            let lsn = |c| r.get(0, c).and_then(|v| v.parse().ok());
            if let (Some(f), Some(i)) = (lsn("f"), lsn("i")) {
                self.progress.target_positions(f, i);
            }
        }
        self.publish();
        Ok(())
    }

    /// Stops when the subset's publication is gone or no longer holds one of its tables: the
    /// source sends nothing for what it does not publish (PostgreSQL 18 not even an error for a
    /// dropped publication), so going on would confirm changes the target never got.
    /// Tables are matched by OID: a table renamed on the source stays published (the stream
    /// names the rename when its next change arrives).
    async fn check_publication(&mut self) -> Result<(), SubsetError> {
        self.last_publication_check = Instant::now();
        let name = self.cfg.name.publication();
        let Some(publication) = crate::source::publication(&mut self.source, &name)
            .await
            .map_err(SubsetError::sql(Side::Source, "read the publication"))?
        else {
            return Err(SubsetError::PublicationLost {
                publication: name,
                how: "it is gone from the source's catalog".into(),
            });
        };
        if publication.all_tables {
            return Ok(());
        }
        let missing = self
            .published_tables
            .iter()
            .find(|(_, oid)| oid.is_some_and(|o| !publication.table_oids.contains(&o)));
        if let Some((table, _)) = missing {
            return Err(SubsetError::TableUnpublished {
                table: table.clone(),
                publication: name,
            });
        }
        Ok(())
    }

    /// Copies the sequences' positions (no target transaction may be open).
    async fn advance_sequences(&mut self) -> Result<(), SubsetError> {
        self.last_sequences = Instant::now();
        if self.sequences.is_empty() {
            return Ok(());
        }
        let moved = sequences::advance(
            &mut self.source,
            self.pipeline.connection(),
            &self.cfg.name,
            &self.sequences,
        )
        .await?;
        self.stats.count(Count::SequencesAdvanced, moved as u64);
        Ok(())
    }

    fn publish(&mut self) {
        let d = self.progress.durable();
        if d > *self.durable_tx.borrow() {
            let _ = self.durable_tx.send(d);
        }
    }

    /// Writes `lsn` into the progress row on its own (asynchronous commit).
    async fn persist(&mut self, lsn: Lsn) -> Result<(), SubsetError> {
        let on_tgt = |e| SubsetError::sql(Side::Target, "record progress")(e);
        self.queue_progress(lsn, None).await.map_err(on_tgt)?;
        let batch = self.pipeline.sync().await.map_err(on_tgt)?;
        self.progress_row_written(&batch)?;
        self.progress.persisted(lsn);
        self.stats.applied(lsn);
        self.last_persist = Instant::now();
        Ok(())
    }

    /// Queues the progress row's update.
    async fn queue_progress(
        &mut self,
        lsn: Lsn,
        commit_time: Option<i64>,
    ) -> Result<(), ClientError> {
        let l = lsn.to_string();
        let time = commit_time.map(|t| t.to_string());
        let received = self.received.to_string();
        self.pipeline
            .execute(
                UPDATE_PROGRESS,
                [
                    Some(l.as_bytes()),
                    time.as_deref().map(str::as_bytes),
                    Some(received.as_bytes()),
                    Some(self.cfg.name.as_str().as_bytes()),
                ],
            )
            .await
    }

    /// A progress update that found no row: the subset was dropped under us.
    fn progress_row_written(&self, batch: &Batch) -> Result<(), SubsetError> {
        if batch.rows.is_empty() {
            return Err(SubsetError::UnknownSubset {
                name: self.cfg.name.to_string(),
            });
        }
        Ok(())
    }

    /// A stop in the middle of a source transaction: the open group is rolled back (the next
    /// session streams its transactions again).
    async fn abandon_group(&mut self) -> Result<(), SubsetError> {
        if self.group.take().is_some() {
            let _ = self.pipeline.execute("ROLLBACK", []).await;
            let _ = self.pipeline.sync().await;
            if self.pipeline.connection().in_transaction() {
                self.pipeline
                    .connection()
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(SubsetError::sql(Side::Target, "roll back"))?;
            }
        }
        self.progress.rolled_back();
        Ok(())
    }

    /// Writes the final position with a synchronous commit, which also flushes every earlier
    /// asynchronous one: everything committed is then durable and may be confirmed. The
    /// sequences are copied one last time.
    async fn finish(&mut self) -> Result<Lsn, SubsetError> {
        self.advance_sequences().await?;
        let lsn = self.progress.caught().max(self.progress.committed());
        let result: Result<_, ClientError> = async {
            self.pipeline.execute("BEGIN", []).await?;
            self.pipeline
                .execute("SET LOCAL synchronous_commit = on", [])
                .await?;
            self.queue_progress(lsn, None).await?;
            self.pipeline.execute("COMMIT", []).await?;
            self.pipeline.sync().await
        }
        .await;
        let batch = result.map_err(SubsetError::sql(Side::Target, "record the final progress"))?;
        self.progress_row_written(&batch)?;
        self.progress.persisted(lsn);
        self.progress.flushed();
        self.stats.applied(lsn);
        self.publish();
        Ok(lsn)
    }
}

/// The (sub)transaction a message inside a stream block belongs to.
fn change_xid(m: &PgOutputMessage) -> Option<u32> {
    match m {
        PgOutputMessage::Relation(r) => r.xid,
        PgOutputMessage::Type(t) => t.xid,
        PgOutputMessage::Insert(i) => i.xid,
        PgOutputMessage::Update(u) => u.xid,
        PgOutputMessage::Delete(d) => d.xid,
        PgOutputMessage::Truncate(t) => t.xid,
        PgOutputMessage::Message(m) => m.xid,
        _ => None,
    }
}

/// A decoder for messages spilled from stream blocks (each carries its transaction id).
fn stream_decoder() -> Result<PgOutputDecoder, SubsetError> {
    let mut d = PgOutputDecoder::new();
    // Stream Start of transaction 0, first segment: puts the decoder inside a stream block.
    d.decode(&Bytes::from_static(&[b'S', 0, 0, 0, 0, 1]))?;
    Ok(d)
}
