//! The initial copy: tables copied from one consistent snapshot of the source, each into its
//! target table in one target transaction that also marks it synced.
//!
//! ```text
//!  replication conn ── CREATE_REPLICATION_SLOT … LOGICAL pgoutput EXPORT_SNAPSHOT ──► (point C, snapshot S)
//!  source session 1..J ── BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S ──► all hold S
//!  replication conn closed (a temporary slot goes; the imported snapshots stay)
//!  worker k: COPY t TO STDOUT (source, in S) ──► bounded channel ──► COPY t FROM STDIN (target)
//!            target txn: TRUNCATE ONLY t; COPY … WITH (FREEZE) (DELETE and a plain COPY for a table a
//!            foreign key references); sequences; state 'synced' at C; COMMIT
//! ```
//!
//! **Sync points.** The snapshot holds exactly the transactions that committed before C, and the
//! slot streams exactly the others (`start_decoding_at`, snapbuild.c). So a table copied under S is
//! complete up to C, and the stream applies to it only transactions with `final_lsn >= C`
//! (`apply`). The very first copy uses the permanent slot's own snapshot, so every table's point
//! is where the stream starts. Tables added later — or whose copy was cut short by a crash — are
//! copied under the snapshot of a temporary slot created then, at a later point; the permanent
//! slot, which never confirmed anything beyond the target's progress row, still streams
//! everything after it.
//!
//! **Crash safety.** A copy that did not commit leaves its table empty and `copying` on the
//! target; the next run copies it again from a fresh snapshot. Memory is bounded: rows travel in
//! 256 kB chunks through a channel of four.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};
use walrelay_client::Connection;
use walrelay_protocol::Lsn;

use crate::config::RunConfig;
use crate::error::{Side, SubsetError};
use crate::prepare::Prepared;
use crate::schema::{quote_literal, SubsetName, TableSchema};
use crate::source::{self, CreatedSlot};
use crate::state::{self, record_columns_sql, STATE_FORMAT};
use crate::stats::{Phase, SubsetStats};

/// Rows are forwarded in chunks of this size.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between a table's reader and writer.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Whether the source's pgoutput keeps a table added to the publication unpublished for the
/// rest of a decoding session when a transaction running across the `ALTER PUBLICATION … ADD
/// TABLE` touched it (its cache entry, built from that transaction's older snapshot, is never
/// invalidated again) — fixed in 13.21, 14.18, 15.13, 16.9 and 17.5, never in 10–12.
pub(crate) fn loses_added_tables(version: walrelay_protocol::command::ServerVersion) -> bool {
    match version.major() {
        ..=12 => true,
        13 => version.0 < 130_021,
        14 => version.0 < 140_018,
        15 => version.0 < 150_013,
        16 => version.0 < 160_009,
        17 => version.0 < 170_005,
        _ => false,
    }
}

/// Copies every table that is not synced yet (creating the permanent slot on the first run).
/// Returns the sync point of tables added to a subset that streamed already, when the source
/// is one that [`loses_added_tables`]: the stream must start afresh once past it.
pub(crate) async fn sync_pending(
    cfg: &RunConfig,
    prepared: &Prepared,
    src: &mut Connection,
    tgt: &mut Connection,
) -> Result<Option<Lsn>, SubsetError> {
    let on_src = |what: &str| SubsetError::sql(Side::Source, what.to_string());
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let slot_name = cfg.name.slot();
    let state = state::load(tgt, &cfg.name)
        .await
        .map_err(on_tgt("read walrelay's state"))?;
    let progress = state.as_ref().and_then(|s| s.progress.clone());
    let (mut repl, sysid) = source::replication_session(&cfg.source_replication()).await?;
    let pending: Vec<TableSchema>;
    let created: CreatedSlot;
    let mut restart_after = None;
    match progress {
        None => {
            // A slot without a progress row is what a first run left when it died right after
            // creating it: nothing was applied from it.
            if prepared.slot.is_some() {
                source::drop_slot(src, &slot_name)
                    .await
                    .map_err(on_src("drop the unused replication slot"))?;
            }
            created = create_slot_naming_waits(src, &mut repl, &slot_name, false, cfg.failover)
                .await
                .map_err(on_src("create the replication slot"))?;
            info!(slot = %slot_name, consistent_point = %created.consistent_point, "replication slot created");
            let subset = quote_literal(cfg.name.as_str());
            tgt.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO walrelay.subset_progress
                     (subset, source_system_identifier, source_database, slot_name, publication, applied_lsn, format)
                 VALUES ({subset}, {}, {}, {}, {}, '{}', {STATE_FORMAT});
                 UPDATE walrelay.subset_tables SET state = 'copying', sync_lsn = NULL WHERE subset = {subset};
                 COMMIT",
                quote_literal(&sysid),
                quote_literal(&prepared.report.source.database),
                quote_literal(&slot_name),
                quote_literal(&cfg.name.publication()),
                created.consistent_point,
            ))
            .await
            .map_err(on_tgt("record the subset's start"))?;
            pending = prepared.tables.iter().map(|t| t.source.clone()).collect();
        }
        Some(p) => {
            match source::slot(src, &slot_name)
                .await
                .map_err(on_src("read the replication slot"))?
            {
                None => {
                    return Err(SubsetError::SlotLost {
                        slot: slot_name,
                        why: "missing".into(),
                    })
                }
                Some(s) => {
                    if let Some(why) = s.invalidation() {
                        return Err(SubsetError::SlotLost {
                            slot: slot_name,
                            why,
                        });
                    }
                }
            }
            if p.source_system_identifier != sysid {
                return Err(SubsetError::OtherSource {
                    expected: p.source_system_identifier,
                    found: sysid,
                });
            }
            let st = state.as_ref();
            pending = prepared
                .tables
                .iter()
                .filter(|t| {
                    !st.and_then(|s| s.table(&t.source.name))
                        .is_some_and(|s| s.is_synced())
                })
                .map(|t| t.source.clone())
                .collect();
            if pending.is_empty() {
                repl.close().await;
                return Ok(None);
            }
            created = create_slot_naming_waits(src, &mut repl, &sync_slot_name(), true, false)
                .await
                .map_err(on_src("create a temporary slot for the copy"))?;
            // The temporary slot's creation waited for every transaction running across the
            // ALTER PUBLICATION to end, so none commits after its point: a decoding session
            // started past it never meets one.
            if loses_added_tables(src.server_version()) {
                restart_after = Some(created.consistent_point);
            }
        }
    }
    cfg.stats.set_phase(Phase::Copying);
    copy_tables(cfg, pending, created, repl).await?;
    Ok(restart_after)
}

/// First report of what slot creation waits for, then every [`SLOT_WAIT_REPEAT`].
const SLOT_WAIT_FIRST: Duration = Duration::from_secs(5);
const SLOT_WAIT_REPEAT: Duration = Duration::from_secs(30);

/// [`source::create_slot`], which waits for every transaction open on the source (any database,
/// prepared ones too) to end — forever, for a forgotten `idle in transaction` session or prepared
/// transaction. While it waits, the transactions it waits for are named (on `src`, a plain
/// session), so that a run that looks hung says why and what to end.
async fn create_slot_naming_waits(
    src: &mut Connection,
    repl: &mut Connection,
    name: &str,
    temporary: bool,
    failover: bool,
) -> Result<CreatedSlot, walrelay_client::ClientError> {
    let started = Instant::now();
    let create = source::create_slot(repl, name, temporary, failover);
    tokio::pin!(create);
    let mut report_at = started + SLOT_WAIT_FIRST;
    loop {
        tokio::select! {
            created = &mut create => return created,
            _ = tokio::time::sleep_until(report_at.into()) => {
                report_at += SLOT_WAIT_REPEAT;
                let waited = started.elapsed().as_secs();
                match source::open_transactions(src, 5).await {
                    Ok(open) if !open.is_empty() => warn!(
                        slot = name,
                        waited_s = waited,
                        "creating the replication slot waits for the transactions open on the source to end: {}; \
                         commit or roll them back (pg_terminate_backend(pid), ROLLBACK PREPARED 'gid') and the subset starts",
                        open.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("; ")
                    ),
                    Ok(_) => warn!(
                        slot = name,
                        waited_s = waited,
                        "creating the replication slot waits for transactions open on the source to end \
                         (none is visible to this role now; the wait ends when the last of them does)"
                    ),
                    Err(e) => warn!(
                        slot = name,
                        waited_s = waited,
                        "creating the replication slot waits for transactions open on the source to end \
                         (could not list them: {e})"
                    ),
                }
            }
        }
    }
}

/// A temporary slot's name, unique to this attempt: the previous attempt's walsender, killed
/// with it, may not have dropped its own yet.
fn sync_slot_name() -> String {
    static ATTEMPT: AtomicU32 = AtomicU32::new(0);
    format!(
        "walrelay_sync_{}_{}",
        std::process::id(),
        ATTEMPT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Copies `tables` under the slot's snapshot with up to `copy_jobs` sessions on each side.
async fn copy_tables(
    cfg: &RunConfig,
    mut tables: Vec<TableSchema>,
    slot: CreatedSlot,
    repl: Connection,
) -> Result<(), SubsetError> {
    let jobs = cfg.copy_jobs.clamp(1, tables.len().max(1));
    info!(
        tables = tables.len(),
        sessions = jobs,
        snapshot = %slot.snapshot,
        sync_point = %slot.consistent_point,
        "copying"
    );
    // Every session imports the snapshot before the replication connection does anything else:
    // the export ends with its next command.
    let mut sessions = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let mut s = Connection::connect(&cfg.source_sql())
            .await
            .map_err(SubsetError::connect(Side::Source))?;
        s.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&slot.snapshot)
        ))
        .await
        .map_err(SubsetError::sql(Side::Source, "import the copy's snapshot"))?;
        let mut t = Connection::connect(&cfg.target_sql())
            .await
            .map_err(SubsetError::connect(Side::Target))?;
        crate::target_session::replica_role(&mut t)
            .await
            .map_err(SubsetError::sql(
                Side::Target,
                "set session_replication_role",
            ))?;
        sessions.push((s, t));
    }
    repl.close().await;
    tables.sort_by_key(|t| std::cmp::Reverse(t.pages));
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let mut workers = JoinSet::new();
    for (src, tgt) in sessions {
        workers.spawn(worker(
            src,
            tgt,
            queue.clone(),
            cfg.name.clone(),
            slot.consistent_point,
            cfg.stats.clone(),
        ));
    }
    while let Some(done) = workers.join_next().await {
        let result = match done {
            Ok(r) => r,
            Err(e) => Err(SubsetError::Usage(format!("a copy task failed: {e}"))),
        };
        if let Err(e) = result {
            workers.abort_all();
            return Err(e);
        }
    }
    Ok(())
}

async fn worker(
    mut src: Connection,
    mut tgt: Connection,
    queue: Arc<Mutex<VecDeque<TableSchema>>>,
    subset: SubsetName,
    sync_lsn: Lsn,
    stats: Arc<SubsetStats>,
) -> Result<(), SubsetError> {
    loop {
        let next = queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(t) = next else { break };
        let began = Instant::now();
        let rows = copy_table(&mut src, &mut tgt, &t, &subset, sync_lsn, &stats).await?;
        stats.table_synced(rows);
        info!(
            table = %t.name,
            rows,
            secs = format_args!("{:.1}", began.elapsed().as_secs_f64()),
            "table copied"
        );
    }
    let _ = src.batch_execute("COMMIT").await;
    src.close().await;
    tgt.close().await;
    Ok(())
}

/// One table: its rows, its sequences' positions and its state, in one target transaction.
async fn copy_table(
    src: &mut Connection,
    tgt: &mut Connection,
    t: &TableSchema,
    subset: &SubsetName,
    sync_lsn: Lsn,
    stats: &SubsetStats,
) -> Result<u64, SubsetError> {
    let name = &t.name;
    let on_src = |what: &str| SubsetError::sql(Side::Source, format!("{what} {name}"));
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, format!("{what} {name}"));
    let q = name.quoted();
    // The table as the snapshot has it: its columns are what the copy holds, and what the stream
    // compares schema changes with (recorded below).
    let t = &crate::catalog::read_table(src, name)
        .await
        .map_err(on_src("read, in the copy's snapshot, the table"))?
        .ok_or_else(|| {
            SubsetError::Usage(format!(
                "table {name} is gone from the source (dropped or renamed since the run began): run again"
            ))
        })?;
    let cols = t.copy_column_list();
    // A table that another target table references by a foreign key cannot be truncated alone
    // (and cascading would empty a table another copy may be filling): it is emptied with
    // DELETE, which the replica session's foreign-key triggers ignore, and copied without FREEZE.
    let target = tgt
        .query_params(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                             WHERE contype = 'f' AND confrelid = $1::regclass \
                               AND conrelid <> confrelid) AS referenced, \
                    (SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1::regclass) AS partitioned",
            &[Some(q.as_str())],
        )
        .await
        .map_err(on_tgt("look up foreign keys referencing"))?;
    let referenced = target.get(0, "referenced") == Some("t");
    let partitioned = target.get(0, "partitioned") == Some("t");
    let rows = crate::schema::rows_of(name, partitioned);
    let (empty, freeze) = if referenced {
        (format!("BEGIN; DELETE FROM {rows}"), "")
    } else if partitioned {
        // COPY cannot FREEZE into a partitioned table.
        (format!("BEGIN; TRUNCATE {rows}"), "")
    } else {
        // FREEZE: the rows are written frozen, as the table was emptied in this transaction; no
        // later VACUUM has to rewrite every page of a freshly copied table.
        (format!("BEGIN; TRUNCATE {rows}"), " WITH (FREEZE)")
    };
    tgt.batch_execute(&empty).await.map_err(on_tgt("empty"))?;
    tgt.copy_in(&format!("COPY {q} {cols} FROM STDIN{freeze}"))
        .await
        .map_err(on_tgt("copy into"))?;
    src.copy_out(&t.copy_out_sql())
        .await
        .map_err(on_src("copy"))?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let read = async {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        while let Some(row) = src.copy_out_next().await.map_err(on_src("copy"))? {
            chunk.extend_from_slice(&row);
            if chunk.len() >= CHUNK && tx.send(chunk.split().freeze()).await.is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk.freeze()).await;
        }
        drop(tx);
        Ok::<(), SubsetError>(())
    };
    let write = async {
        while let Some(c) = rx.recv().await {
            tgt.copy_in_send(&c).await.map_err(on_tgt("copy into"))?;
            stats.copied_bytes(c.len() as u64);
        }
        tgt.copy_in_finish().await.map_err(on_tgt("copy into"))
    };
    let ((), rows) = tokio::try_join!(read, write)?;
    for s in &t.sequences {
        let r = src
            .query_params(
                "SELECT last_value::text AS v FROM pg_catalog.pg_sequences \
                  WHERE schemaname = $1 AND sequencename = $2",
                &[Some(&s.name.schema), Some(&s.name.name)],
            )
            .await
            .map_err(on_src("read the sequences of"))?;
        if let Some(v) = r.get(0, "v") {
            tgt.query_params(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence($1, $2), $3::bigint, true)",
                &[Some(&q), Some(&s.column), Some(v)],
            )
            .await
            .map_err(on_tgt("set the sequences of"))?;
        }
    }
    let rows_text = rows.to_string();
    let lsn_text = sync_lsn.to_string();
    let oid_text = t.oid.to_string();
    tgt.batch_execute(&record_columns_sql(subset, name, &t.source_columns()))
        .await
        .map_err(on_tgt("record the columns of"))?;
    let marked = tgt
        .execute_params(
            "UPDATE walrelay.subset_tables \
                SET state = 'synced', sync_lsn = $1::pg_lsn, rows_copied = $2::bigint, synced_at = now(), \
                    source_oid = $6::bigint \
              WHERE subset = $3 AND schema_name = $4 AND table_name = $5",
            &[
                Some(&lsn_text),
                Some(&rows_text),
                Some(subset.as_str()),
                Some(&name.schema),
                Some(&name.name),
                Some(&oid_text),
            ],
        )
        .await
        .map_err(on_tgt("record the copy of"))?;
    if marked != 1 {
        return Err(SubsetError::Usage(format!(
            "the subset's state row for {name} disappeared from the target during the copy (was the subset dropped?)"
        )));
    }
    tgt.batch_execute("COMMIT")
        .await
        .map_err(on_tgt("commit the copy of"))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::loses_added_tables;
    use walrelay_protocol::command::ServerVersion;

    #[test]
    fn the_minor_releases_that_fixed_added_tables() {
        for (v, loses) in [
            (100_023, true),
            (120_022, true),
            (130_020, true),
            (130_021, false),
            (140_017, true),
            (140_018, false),
            (150_012, true),
            (150_018, false),
            (160_008, true),
            (160_009, false),
            (170_004, true),
            (170_005, false),
            (180_000, false),
        ] {
            assert_eq!(loses_added_tables(ServerVersion(v)), loses, "{v}");
        }
    }
}
