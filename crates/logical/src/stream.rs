//! One streaming session: the slot's changes read from the source and applied to the target.
//!
//! ```text
//!  source ── START_REPLICATION SLOT walrelay_NAME LOGICAL <progress row> (proto_version '1',  ──┐
//!    ▲        or '2' with streaming 'on' from PostgreSQL 14)                                      │
//!    │  network task: XLogData → pgoutput decoder ── Event (bounded channel) ──► apply task:      │
//!    │  keepalives answered, status updates sent        Applier (pure) → Pipeline on target:     │
//!    │                                                  BEGIN; changes…; progress row; COMMIT     │
//!    │                                                  streamed transactions: Spool (disk)       │
//!    └── 'r' flush = durable ◄── watch ◄── Progress (pure): committed → flushed on the target ◄───┘
//! ```
//!
//! The two tasks run as two futures of one `try_join!`: the network one keeps answering the
//! source (a status update at least every `status_interval`, at once when asked) while the apply
//! one waits for the target; the channel's bound is the backpressure. Either failing ends the
//! session; the target transaction in flight is then abandoned with its connection, so the
//! progress row still names the last transaction that really committed — where the next session
//! starts (see `progress` for the invariant).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tracing::info;
use walrelay_client::{Connection, Pipeline, ServerCondition};
use walrelay_protocol::command::{self, PgOutputOptions, StreamingMode};
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::pgoutput::{PgOutputDecoder, PgOutputMessage};
use walrelay_protocol::replication::to_pg_timestamp;
use walrelay_protocol::{Lsn, ReplicationMessage, StandbyStatusUpdate};

use crate::apply::{ApplyTable, TableSync, TargetColumn};
use crate::apply_session::{ApplySession, ApplyTask};
use crate::catalog;
use crate::config::RunConfig;
use crate::error::{Side, SubsetError};
use crate::schema::{quote_literal, Identity, SourceColumn, TableName, TableSchema};
use crate::sequences;
use crate::source;
use crate::state::{self, SubsetState};
use crate::stats::{Count, Phase};

/// Messages between the network and the apply task.
const EVENTS_IN_FLIGHT: usize = 1024;
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
    /// Ended on purpose to start a fresh session (see `run`).
    Restart,
}

/// What the network task hands to the apply task.
#[derive(Debug)]
pub(crate) enum Event {
    /// A pgoutput message, decoded, and as sent (a streamed transaction's are spilled as sent).
    Message {
        msg: PgOutputMessage,
        raw: Bytes,
        wal_end: Lsn,
    },
    Keepalive(Lsn),
}

/// Runs one session to its end.
/// `precise_until`: the source transactions committing up to there are applied one statement at
/// a time, to name a conflict found there by the previous session.
pub(crate) async fn session(
    cfg: &RunConfig,
    precise_until: Option<Lsn>,
) -> Result<SessionEnd, SubsetError> {
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let mut tgt = Connection::connect(&cfg.target_apply())
        .await
        .map_err(SubsetError::connect(Side::Target))?;
    crate::target_session::replica_role(&mut tgt)
        .await
        .map_err(on_tgt("set session_replication_role"))?;
    let mut pipeline = Pipeline::new(tgt);
    let unknown = || SubsetError::UnknownSubset {
        name: cfg.name.to_string(),
    };
    let st = state::load(pipeline.connection(), &cfg.name)
        .await
        .map_err(on_tgt("read walrelay's state"))?
        .ok_or_else(unknown)?;
    let row = st.progress.clone().ok_or_else(unknown)?;
    let mut src = catalog::connect(&cfg.source_sql(), Side::Source).await?;
    let tables = apply_tables(cfg, &st, &mut src, pipeline.connection()).await?;
    let start = row.applied_lsn;
    cfg.stats.applied(start);
    if cfg.endpos.is_some_and(|e| start >= e) {
        return Ok(SessionEnd::EndPosition(start));
    }
    let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
    let sequences =
        sequences::pairs(&mut src, pipeline.connection(), &names, &st.sequences).await?;
    let moved = sequences::advance(&mut src, pipeline.connection(), &cfg.name, &sequences).await?;
    cfg.stats.count(Count::SequencesAdvanced, moved as u64);

    let (mut repl, sysid) = source::replication_session(&cfg.source_replication()).await?;
    if sysid != row.source_system_identifier {
        return Err(SubsetError::OtherSource {
            expected: row.source_system_identifier,
            found: sysid,
        });
    }
    if cfg.failover {
        source::ensure_failover(&mut src, &mut repl, &cfg.name.slot()).await?;
    }
    let streaming = start_streaming(cfg, &mut repl, start).await?;
    info!(slot = %cfg.name.slot(), start = %start, tables = tables.len(), streaming_large_transactions = streaming, "streaming");
    cfg.stats.set_phase(Phase::Streaming);
    cfg.stats.set_connected(true);

    let (tx, rx) = mpsc::channel(EVENTS_IN_FLIGHT);
    let (durable_tx, durable_rx) = watch::channel(Lsn::INVALID);
    let (done_tx, done_rx) = watch::channel(false);
    let net = network(&mut repl, cfg, tx, durable_rx, done_rx, start);
    let apply = ApplyTask::new(ApplySession {
        cfg,
        pipeline: &mut pipeline,
        source: src,
        tables,
        sequences,
        start,
        precise_until,
        durable_tx,
    })
    .run(rx, done_tx);
    let ((), (end, src)) = tokio::try_join!(net, apply)?;
    repl.close().await;
    src.close().await;
    pipeline.into_inner().close().await;
    Ok(end)
}

/// The subset's tables as the apply needs them: from the target's catalog and walrelay's state.
/// A table copied by an older walrelay lacks the source's OID and columns in the state: they are
/// read from the source now and recorded.
async fn apply_tables(
    cfg: &RunConfig,
    st: &SubsetState,
    src: &mut Connection,
    tgt: &mut Connection,
) -> Result<Vec<ApplyTable>, SubsetError> {
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let recorded = state::load_columns(tgt, &cfg.name)
        .await
        .map_err(on_tgt("read walrelay's state"))?;
    let mut tables = Vec::with_capacity(st.tables.len());
    let mut record = String::new();
    for ts in &st.tables {
        let t = catalog::read_table(tgt, &ts.table)
            .await
            .map_err(on_tgt("read the subset's tables"))?
            .ok_or_else(|| {
                SubsetError::Usage(format!(
                    "table {} of the subset is gone from the target: run `walrelay subset run` with the subset's tables again (it copies it again), or `walrelay subset drop`",
                    ts.table
                ))
            })?;
        let mut source_columns: Vec<SourceColumn> = recorded
            .iter()
            .filter(|(n, _)| n == &ts.table)
            .map(|(_, c)| c.clone())
            .collect();
        let mut source_oid = ts.source_oid;
        if ts.is_synced() && (source_oid.is_none() || source_columns.is_empty()) {
            if let Some(s) = catalog::read_table(src, &ts.table)
                .await
                .map_err(SubsetError::sql(Side::Source, "read the subset's tables"))?
            {
                source_oid = Some(s.oid);
                source_columns = s
                    .source_columns()
                    .into_iter()
                    .filter(|c| t.column(&c.name).is_some())
                    .collect();
                record.push_str(&state::record_columns_sql(
                    &cfg.name,
                    &ts.table,
                    &source_columns,
                ));
                record.push_str(&format!(
                    "UPDATE walrelay.subset_tables SET source_oid = {} WHERE subset = {} AND schema_name = {} AND table_name = {};\n",
                    s.oid,
                    quote_literal(cfg.name.as_str()),
                    quote_literal(&ts.table.schema),
                    quote_literal(&ts.table.name)
                ));
            }
        }
        tables.push(ApplyTable {
            name: ts.table.clone(),
            sync: match ts.sync_lsn {
                Some(lsn) if ts.is_synced() => TableSync::Synced(lsn),
                _ => TableSync::Pending,
            },
            source_oid,
            target_columns: target_columns(&t),
            source_columns,
            target_partitioned: t.is_partitioned(),
        });
    }
    if !record.is_empty() {
        tgt.batch_execute(&format!("BEGIN;\n{record}COMMIT"))
            .await
            .map_err(on_tgt("record the source's tables"))?;
    }
    Ok(tables)
}

/// The columns the source writes, of a table as the target's catalog describes it.
pub(crate) fn target_columns(t: &TableSchema) -> Vec<TargetColumn> {
    t.replicated_columns()
        .map(|c| TargetColumn {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            has_equality: c.has_equality,
            always_identity: c.identity == Identity::Always,
        })
        .collect()
}

/// START_REPLICATION; whether large transactions are streamed before they commit (protocol
/// version 2, PostgreSQL 14+).
async fn start_streaming(
    cfg: &RunConfig,
    repl: &mut Connection,
    start: Lsn,
) -> Result<bool, SubsetError> {
    let on_src = |what: &str| SubsetError::sql(Side::Source, what.to_string());
    let publication = cfg.name.publication();
    let mut options = PgOutputOptions::v1(&[&publication]);
    let streaming = repl.server_version().major() >= 14;
    if streaming {
        options.proto_version = 2;
        options.streaming = StreamingMode::On;
    }
    let sql = command::start_logical_replication(
        repl.server_version(),
        &cfg.name.slot(),
        start,
        &options,
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
        BackendMessage::CopyBothResponse(_) => Ok(streaming),
        BackendMessage::ErrorResponse(e) => {
            let _ = repl.drain_until_ready().await;
            let detail = e.detail.clone();
            let e = walrelay_client::ClientError::server(e);
            let why = match e.condition() {
                Some(ServerCondition::SlotMissing) => Some("missing".to_string()),
                Some(ServerCondition::SlotUnusable) => Some(format!(
                    "invalidated ({})",
                    detail.unwrap_or_else(|| {
                        "the source says it can no longer get changes from it".into()
                    })
                )),
                _ => None,
            };
            if let Some(why) = why {
                return Err(SubsetError::SlotLost {
                    slot: cfg.name.slot(),
                    why,
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
    cfg: &RunConfig,
    tx: mpsc::Sender<Event>,
    mut durable: watch::Receiver<Lsn>,
    mut done: watch::Receiver<bool>,
    start: Lsn,
) -> Result<(), SubsetError> {
    let (status_interval, stats) = (cfg.status_interval, &cfg.stats);
    let publication = cfg.name.publication();
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
                publication_skipped(conn, &publication)?;
                last_heard = Instant::now();
                pending = Some(match m {
                    BackendMessage::CopyData(payload) => match ReplicationMessage::parse(&payload)? {
                        ReplicationMessage::XLogData(x) => {
                            received = received.max(x.wal_end);
                            stats.received(x.wal_end);
                            Event::Message { msg: decoder.decode(&x.data)?, raw: x.data.clone(), wal_end: x.wal_end }
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
                    // A walsender that stops with its server (a clean restart) sends
                    // CommandComplete "COPY 0" without a CopyDone once its client has caught up
                    // (`WalSndDone`): the end of this stream, and a reconnect, like CopyDone.
                    BackendMessage::CopyDone | BackendMessage::CommandComplete { .. } => {
                        return Err(SubsetError::StreamEnded)
                    }
                    BackendMessage::ErrorResponse(e) => {
                        if e.code == "42704" && e.message.starts_with("publication ") {
                            return Err(SubsetError::PublicationLost {
                                publication: publication.to_string(),
                                how: format!("the source says: {}", e.message),
                            });
                        }
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

/// PostgreSQL 18's pgoutput no longer stops when the publication is missing at a point of the
/// WAL: it warns ("skipped loading publication …") and sends nothing for the changes there. For
/// the subset that is a silent loss, so the warning stops the stream before anything after it is
/// applied or confirmed. (Only the subset's own publication is ever asked for.)
fn publication_skipped(conn: &mut Connection, publication: &str) -> Result<(), SubsetError> {
    for n in conn.take_notices() {
        if n.message.starts_with("skipped loading publication") {
            return Err(SubsetError::PublicationLost {
                publication: publication.to_string(),
                how: format!("the source skips them: {}", n.message),
            });
        }
    }
    Ok(())
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
