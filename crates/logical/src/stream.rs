//! One streaming session: the slot's changes read from the source and applied to the target.
//!
//! ```text
//!  source ── START_REPLICATION SLOT walrelay_NAME LOGICAL <progress row> (proto_version '1') ──┐
//!    ▲                                                                                         │
//!    │  network task: XLogData → pgoutput decoder ── Event (bounded channel) ──► apply task:   │
//!    │  keepalives answered, status updates sent        Applier (pure) → Pipeline on target:  │
//!    │                                                  BEGIN; changes…; progress row; COMMIT  │
//!    └── 'r' flush = durable ◄── watch ◄── Progress (pure): committed → flushed on the target ◄┘
//! ```
//!
//! The two tasks run as two futures of one `try_join!`: the network one keeps answering the
//! source (a status update at least every `status_interval`, at once when asked) while the apply
//! one waits for the target; the channel's bound is the backpressure. Either failing ends the
//! session; the target transaction in flight is then abandoned with its connection, so the
//! progress row still names the last transaction that really committed — where the next session
//! starts (see `progress` for the invariant).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use walrelay_client::{Connection, Pipeline, ServerCondition};
use walrelay_protocol::command::{self, PgOutputOptions};
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::pgoutput::{PgOutputDecoder, PgOutputMessage};
use walrelay_protocol::replication::to_pg_timestamp;
use walrelay_protocol::{Lsn, ReplicationMessage, StandbyStatusUpdate};

use crate::apply::{Action, Applier, ApplyTable, TableSync};
use crate::catalog;
use crate::config::RunConfig;
use crate::error::{Side, SubsetError};
use crate::progress::Progress;
use crate::source;
use crate::state::{self, UPDATE_PROGRESS};
use crate::stats::{Phase, SubsetStats};

/// Messages between the network and the apply task.
const EVENTS_IN_FLIGHT: usize = 1024;
/// How often the apply task looks at the target's WAL positions and writes idle progress.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(200);
/// The progress row is written on its own at most this often.
const IDLE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How long a clean end waits for the source to acknowledge it.
const END_GRACE: Duration = Duration::from_secs(5);
/// A source silent for this long (and at least three status intervals), although every status
/// update asks it to answer, is taken for gone.
const SOURCE_SILENCE: Duration = Duration::from_secs(60);

/// Why a session ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Everything up to the end position (`-E`) is applied and durable; the position reached.
    EndPosition(Lsn),
    /// Asked to stop; the position applied and durable.
    Shutdown(Lsn),
}

/// What the network task hands to the apply task.
#[derive(Debug)]
enum Event {
    Message { msg: PgOutputMessage, wal_end: Lsn },
    Keepalive(Lsn),
}

/// Runs one session to its end. `streamed` is set once the source accepted START_REPLICATION.
pub(crate) async fn session(
    cfg: &RunConfig,
    streamed: &mut bool,
) -> Result<SessionEnd, SubsetError> {
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let tgt = Connection::connect(&cfg.target_apply())
        .await
        .map_err(SubsetError::connect(Side::Target))?;
    let mut pipeline = Pipeline::new(tgt);
    let unknown = || SubsetError::UnknownSubset {
        name: cfg.name.to_string(),
    };
    let st = state::load(pipeline.connection(), &cfg.name)
        .await
        .map_err(on_tgt("read walrelay's state"))?
        .ok_or_else(unknown)?;
    let row = st.progress.clone().ok_or_else(unknown)?;
    let mut tables = Vec::with_capacity(st.tables.len());
    for ts in &st.tables {
        let t = catalog::read_table(pipeline.connection(), &ts.table)
            .await
            .map_err(on_tgt("read the subset's tables"))?
            .ok_or_else(|| {
                SubsetError::Usage(format!(
                    "table {} of the subset is gone from the target: create it again (or run `walrelay subset drop` and start over)",
                    ts.table
                ))
            })?;
        tables.push(ApplyTable {
            name: ts.table.clone(),
            sync: match ts.sync_lsn {
                Some(lsn) if ts.is_synced() => TableSync::Synced(lsn),
                _ => TableSync::Pending,
            },
            target_columns: t.replicated_columns().map(|c| c.name.clone()).collect(),
            always_identity: t
                .columns
                .iter()
                .filter(|c| c.identity == crate::schema::Identity::Always)
                .map(|c| c.name.clone())
                .collect(),
        });
    }
    let start = row.applied_lsn;
    cfg.stats.applied(start);
    if cfg.endpos.is_some_and(|e| start >= e) {
        return Ok(SessionEnd::EndPosition(start));
    }

    let (mut repl, sysid) = source::replication_session(&cfg.source_replication()).await?;
    if sysid != row.source_system_identifier {
        return Err(SubsetError::OtherSource {
            expected: row.source_system_identifier,
            found: sysid,
        });
    }
    start_streaming(cfg, &mut repl, start).await?;
    *streamed = true;
    info!(slot = %cfg.name.slot(), start = %start, tables = tables.len(), "streaming");
    cfg.stats.set_phase(Phase::Streaming);
    cfg.stats.set_connected(true);

    let (tx, rx) = mpsc::channel(EVENTS_IN_FLIGHT);
    let (durable_tx, durable_rx) = watch::channel(Lsn::INVALID);
    let (done_tx, done_rx) = watch::channel(false);
    let net = network(
        &mut repl,
        tx,
        durable_rx,
        done_rx,
        start,
        cfg.status_interval,
        &cfg.stats,
    );
    let apply = ApplyTask {
        cfg,
        pipeline: &mut pipeline,
        applier: Applier::new(tables),
        progress: Progress::new(start),
        received: start,
        group: None,
        last_persist: Instant::now(),
        durable_tx,
        stats: &cfg.stats,
    }
    .run(rx, done_tx);
    let ((), end) = tokio::try_join!(net, apply)?;
    repl.close().await;
    pipeline.into_inner().close().await;
    Ok(end)
}

async fn start_streaming(
    cfg: &RunConfig,
    repl: &mut Connection,
    start: Lsn,
) -> Result<(), SubsetError> {
    let on_src = |what: &str| SubsetError::sql(Side::Source, what.to_string());
    let publication = cfg.name.publication();
    let sql = command::start_logical_replication(
        repl.server_version(),
        &cfg.name.slot(),
        start,
        &PgOutputOptions::v1(&[&publication]),
    )
    .map_err(|e| SubsetError::Usage(e.to_string()))?;
    repl.queue_query(&sql)
        .map_err(on_src("START_REPLICATION"))?;
    repl.flush().await.map_err(on_src("START_REPLICATION"))?;
    match repl
        .read_message()
        .await
        .map_err(on_src("START_REPLICATION"))?
    {
        BackendMessage::CopyBothResponse(_) => Ok(()),
        BackendMessage::ErrorResponse(e) => {
            let _ = repl.drain_until_ready().await;
            let e = walrelay_client::ClientError::server(e);
            if e.condition() == Some(ServerCondition::SlotMissing) {
                return Err(SubsetError::SlotLost {
                    slot: cfg.name.slot(),
                });
            }
            Err(on_src("START_REPLICATION")(e))
        }
        other => Err(on_src("START_REPLICATION")(
            walrelay_client::ClientError::Unexpected(format!(
                "unexpected {} in reply to START_REPLICATION",
                walrelay_client::message_name(&other)
            )),
        )),
    }
}

/// Sends a standby status update: `flush` advances the slot.
async fn send_status(
    conn: &mut Connection,
    received: Lsn,
    durable: Lsn,
    reply_requested: bool,
) -> Result<(), SubsetError> {
    let mut buf = BytesMut::with_capacity(34);
    StandbyStatusUpdate {
        write_lsn: received.max(durable),
        flush_lsn: durable,
        apply_lsn: durable,
        client_time: to_pg_timestamp(std::time::SystemTime::now()),
        reply_requested,
    }
    .encode(&mut buf);
    conn.queue_copy_data(&buf);
    conn.flush()
        .await
        .map_err(SubsetError::sql(Side::Source, "send a status update"))
}

/// The network task: decodes what the source sends, forwards it, and reports progress.
/// Cancellation-safe at each `select!` arm (reads are; a status update in flight is resent).
async fn network(
    conn: &mut Connection,
    tx: mpsc::Sender<Event>,
    mut durable: watch::Receiver<Lsn>,
    mut done: watch::Receiver<bool>,
    start: Lsn,
    status_interval: Duration,
    stats: &SubsetStats,
) -> Result<(), SubsetError> {
    let mut decoder = PgOutputDecoder::new();
    let mut received = start;
    let mut reported = Lsn::INVALID;
    let mut last_status = Instant::now();
    let mut last_heard = Instant::now();
    let silence_limit = SOURCE_SILENCE.max(status_interval * 3);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<Event> = None;
    loop {
        tokio::select! {
            biased;
            r = done.changed() => {
                if r.is_err() || *done.borrow() {
                    let flush = *durable.borrow();
                    return end_stream(conn, received, flush).await;
                }
            }
            r = durable.changed() => {
                if r.is_err() {
                    // The apply task ended: with an error that try_join reports, or done.
                    let flush = *durable.borrow();
                    return end_stream(conn, received, flush).await;
                }
                let flush = *durable.borrow();
                if flush > reported {
                    send_status(conn, received, flush, false).await?;
                    reported = flush;
                    last_status = Instant::now();
                    stats.confirmed(flush);
                }
            }
            _ = tick.tick() => {
                if pending.is_none() && last_heard.elapsed() >= silence_limit {
                    return Err(SubsetError::SourceSilent { secs: last_heard.elapsed().as_secs() });
                }
                if last_status.elapsed() >= status_interval {
                    let flush = *durable.borrow();
                    // Asking for a reply makes an idle source tell us where it is.
                    send_status(conn, received, flush, true).await?;
                    reported = reported.max(flush);
                    last_status = Instant::now();
                }
            }
            permit = tx.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else {
                    let flush = *durable.borrow();
                    return end_stream(conn, received, flush).await;
                };
                if let Some(ev) = pending.take() {
                    permit.send(ev);
                }
                // Not reading while the apply task was busy is not the source's silence.
                last_heard = last_heard.max(Instant::now() - Duration::from_secs(1));
            }
            m = conn.read_message(), if pending.is_none() => {
                let m = m.map_err(SubsetError::sql(Side::Source, "stream"))?;
                last_heard = Instant::now();
                pending = Some(match m {
                    BackendMessage::CopyData(payload) => match ReplicationMessage::parse(&payload)? {
                        ReplicationMessage::XLogData(x) => {
                            received = received.max(x.wal_end);
                            stats.received(x.wal_end);
                            Event::Message { msg: decoder.decode(&x.data)?, wal_end: x.wal_end }
                        }
                        ReplicationMessage::PrimaryKeepalive(k) => {
                            received = received.max(k.wal_end);
                            stats.received(k.wal_end);
                            if k.reply_requested {
                                let flush = *durable.borrow();
                                send_status(conn, received, flush, false).await?;
                                reported = reported.max(flush);
                                last_status = Instant::now();
                            }
                            Event::Keepalive(k.wal_end)
                        }
                    },
                    BackendMessage::CopyDone => return Err(SubsetError::StreamEnded),
                    BackendMessage::ErrorResponse(e) => {
                        return Err(SubsetError::sql(Side::Source, "stream")(
                            walrelay_client::ClientError::server(e),
                        ))
                    }
                    other => {
                        return Err(SubsetError::sql(Side::Source, "stream")(
                            walrelay_client::ClientError::Unexpected(format!(
                                "unexpected {} in the replication stream",
                                walrelay_client::message_name(&other)
                            )),
                        ))
                    }
                });
            }
        }
    }
}

/// Reports the final position, ends the COPY and gives the source a moment to acknowledge.
async fn end_stream(conn: &mut Connection, received: Lsn, flush: Lsn) -> Result<(), SubsetError> {
    send_status(conn, received, flush, false).await?;
    conn.queue_copy_done();
    let _ = conn.flush().await;
    let _ = tokio::time::timeout(END_GRACE, async {
        while let Ok(m) = conn.read_message().await {
            if matches!(m, BackendMessage::ReadyForQuery { .. }) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

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

/// A group commits once it holds this many source transactions…
const GROUP_MAX_TRANSACTIONS: u64 = 1000;
/// …or statements…
const GROUP_MAX_STATEMENTS: u64 = 20_000;
/// …or has been open this long, or nothing more is waiting.
const GROUP_MAX_AGE: Duration = Duration::from_millis(250);

struct ApplyTask<'a> {
    cfg: &'a RunConfig,
    pipeline: &'a mut Pipeline,
    applier: Applier,
    progress: Progress,
    /// The source's end of WAL as last seen.
    received: Lsn,
    /// The open target transaction.
    group: Option<Group>,
    last_persist: Instant,
    durable_tx: watch::Sender<Lsn>,
    stats: &'a Arc<SubsetStats>,
}

impl ApplyTask<'_> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        done: watch::Sender<bool>,
    ) -> Result<SessionEnd, SubsetError> {
        let mut shutdown = self.cfg.shutdown.clone();
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut begin = None;
        let mut watching_shutdown = true;
        loop {
            if !self.applier.in_transaction() {
                if let Some(end) = self.cfg.endpos.filter(|&e| self.progress.caught() >= e) {
                    self.commit_group().await?;
                    let reached = self.finish().await?;
                    let _ = done.send(true);
                    info!(endpos = %end, applied = %reached, "end position reached");
                    return Ok(SessionEnd::EndPosition(reached));
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
                return Ok(SessionEnd::Shutdown(reached));
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
                    Some(Event::Message { msg, wal_end }) => {
                        self.received = self.received.max(wal_end);
                        let more_waiting = !rx.is_empty();
                        self.message(msg, &mut begin, more_waiting).await?;
                    }
                },
            }
        }
    }

    async fn message(
        &mut self,
        msg: PgOutputMessage,
        begin: &mut Option<(u32, Lsn)>,
        more_waiting: bool,
    ) -> Result<(), SubsetError> {
        match self.applier.on_message(msg)? {
            Action::None => {
                for t in self.applier.take_foreign_relations() {
                    warn!(
                        table = %t,
                        "the source sends changes to a table that is not in the subset (removed from it, or renamed on the source?): they are not applied"
                    );
                }
            }
            Action::Begin { final_lsn, xid } => {
                self.progress.begin();
                *begin = Some((xid, final_lsn));
            }
            Action::Execute(stmt) => {
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
                    g.current = *begin;
                    g.statements += 1;
                }
                self.stats.change(stmt.kind);
                let result = self
                    .pipeline
                    .execute(&stmt.sql, stmt.params.iter().map(|p| p.as_deref()))
                    .await;
                result.map_err(self.apply_failed())?;
            }
            Action::Commit {
                end_lsn,
                commit_time,
                changes,
            } => {
                *begin = None;
                match self.group.as_mut() {
                    Some(g) => {
                        // An empty transaction joins an open group too: its end is covered.
                        g.end = Some((end_lsn, commit_time));
                        g.current = None;
                        if changes > 0 {
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
                        if full || at_end || !more_waiting {
                            self.commit_group().await?;
                        }
                    }
                    None => {
                        self.progress.skipped(end_lsn);
                        self.stats.transaction(false);
                    }
                }
            }
        }
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
        let result = async {
            self.queue_progress(end_lsn, Some(commit_time)).await?;
            self.pipeline.execute("COMMIT", []).await?;
            self.pipeline.sync().await
        }
        .await;
        let batch = result.map_err(self.apply_failed())?;
        self.group = None;
        self.progress_row_written(&batch)?;
        if batch.unmatched > 0 {
            warn!(
                rows = batch.unmatched,
                source_lsn = %end_lsn,
                "UPDATE or DELETE found no row on the target: skipped, as PostgreSQL's own apply does"
            );
            self.stats.unmatched(batch.unmatched);
        }
        self.progress.applied(end_lsn);
        self.stats.applied(end_lsn);
        Ok(())
    }

    /// What a failed target statement means: retried if the target says so (a deadlock, a lost
    /// connection), else a stop naming the source transaction(s).
    fn apply_failed(&self) -> impl FnOnce(walrelay_client::ClientError) -> SubsetError {
        let what = match &self.group {
            Some(Group {
                current: Some((xid, final_lsn)),
                transactions: 0,
                ..
            }) => format!("applying the source transaction {xid} (commit LSN {final_lsn})"),
            Some(g) => format!(
                "applying {} source transaction(s) from commit LSN {} on",
                g.transactions + u64::from(g.current.is_some()),
                g.current
                    .map(|c| c.1)
                    .or(g.end.map(|e| e.0))
                    .unwrap_or(Lsn::INVALID)
            ),
            None => "applying the stream".to_string(),
        };
        move |e| {
            if e.sqlstate().is_some_and(|s| s.starts_with("23")) {
                SubsetError::Conflict { what, source: e }
            } else {
                SubsetError::sql(Side::Target, what)(e)
            }
        }
    }

    /// Between transactions: commit a group that waited long enough, write idle progress, learn
    /// what the target flushed, publish it.
    async fn maintain(&mut self) -> Result<(), SubsetError> {
        if self.group.is_some() {
            self.commit_group().await?;
        }
        if let Some(lsn) = self.progress.to_persist() {
            if self.last_persist.elapsed() >= IDLE_PERSIST_INTERVAL {
                self.persist(lsn).await?;
            }
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
    ) -> Result<(), walrelay_client::ClientError> {
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
    fn progress_row_written(&self, batch: &walrelay_client::Batch) -> Result<(), SubsetError> {
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
    /// asynchronous one: everything committed is then durable and may be confirmed.
    async fn finish(&mut self) -> Result<Lsn, SubsetError> {
        let lsn = self.progress.caught().max(self.progress.committed());
        let result: Result<_, walrelay_client::ClientError> = async {
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
