//! `--failover`: the receiver's replication slot kept on every standby of the host list, so that
//! after a promotion the new primary already holds the slot, with the WAL the receiver still needs.
//!
//! PostgreSQL 17's failover slots do not cover this: `FAILOVER` is refused for physical slots
//! (`parseCreateReplSlotOptions` in walsender.c: "conflicting or redundant options"), and slot
//! synchronization (slotsync.c) copies logical slots only. So walrelay does it itself: every
//! [`KEEP_INTERVAL`] it visits each standby of the list (a host in recovery, of the same system),
//! creates the slot there if it is missing (physical, WAL reserved), and advances it to what the
//! archive holds durably — never past the standby's own replay position, never backwards
//! (`pg_replication_slot_advance`, PostgreSQL 11+). A slot on a standby pins WAL there exactly as
//! on a primary; it is at most one interval behind the receiver.
//!
//! Everything here is best effort: a standby that is down, refuses, or belongs to another system
//! is logged (once per condition) and visited again later; streaming never waits for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};
use walrelay_client::{ConnectParams, Connection, Endpoint, ReplicationMode, ServerCondition};
use walrelay_protocol::Lsn;

use crate::stats::ReceiverStats;

/// How often the standbys' slots are visited at most: the receiver's status interval, but not
/// more than once a second.
pub const MIN_KEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What one visit found on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Visit {
    /// A standby of our system: its slot exists at `restart_lsn` (after any creation or advance).
    Kept { restart_lsn: Lsn, created: bool },
    /// A primary (the one we stream from, or another): not ours to touch.
    Primary,
    /// Another system's server.
    Foreign(u64),
    /// Could not be asked.
    Failed(String),
}

/// Runs until `shutdown`: keeps `slot` on every standby in `connect`'s host list.
pub(crate) fn spawn(
    connect: ConnectParams,
    slot: String,
    interval: Duration,
    stats: Arc<ReceiverStats>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(MIN_KEEP_INTERVAL);
    tokio::spawn(async move {
        let mut last: HashMap<String, Visit> = HashMap::new();
        loop {
            let snapshot = stats.snapshot();
            // Only what the server was told is durable (and validated) may be given up.
            let keep_from = snapshot.reported_flush_lsn;
            if let Some(sysid) = snapshot.system_identifier {
                for endpoint in &connect.endpoints {
                    let v = visit(&connect, endpoint, &slot, sysid, keep_from).await;
                    let key = endpoint.to_string();
                    log_change(endpoint, &slot, last.get(&key), &v);
                    last.insert(key, v);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    })
}

/// One round, for `receive --create-slot --failover`: the slot created on every standby of the
/// list that lacks it (nothing advanced). One line per host, for the operator.
pub async fn create_on_standbys(connect: &ConnectParams, slot: &str, sysid: u64) -> Vec<String> {
    let mut lines = Vec::new();
    for endpoint in &connect.endpoints {
        let line = match visit(connect, endpoint, slot, sysid, Lsn::INVALID).await {
            Visit::Kept {
                restart_lsn,
                created: true,
            } => format!("{endpoint}: standby, slot created (restart_lsn {restart_lsn})"),
            Visit::Kept { restart_lsn, .. } => {
                format!("{endpoint}: standby, slot exists (restart_lsn {restart_lsn})")
            }
            Visit::Primary => format!("{endpoint}: primary"),
            Visit::Foreign(s) => format!("{endpoint}: another system ({s}), skipped"),
            Visit::Failed(e) => format!("{endpoint}: not reached ({e})"),
        };
        lines.push(line);
    }
    lines
}

fn log_change(endpoint: &Endpoint, slot: &str, before: Option<&Visit>, now: &Visit) {
    let same_kind = matches!(
        (before, now),
        (Some(Visit::Kept { .. }), Visit::Kept { created: false, .. })
            | (Some(Visit::Primary), Visit::Primary)
            | (Some(Visit::Foreign(_)), Visit::Foreign(_))
            | (Some(Visit::Failed(_)), Visit::Failed(_))
    );
    match now {
        Visit::Kept {
            restart_lsn,
            created: true,
        } => {
            info!(%endpoint, slot, %restart_lsn, "created the replication slot on the standby (--failover)")
        }
        Visit::Kept { restart_lsn, .. } if !same_kind => {
            info!(%endpoint, slot, %restart_lsn, "keeping the replication slot on the standby (--failover)")
        }
        Visit::Foreign(sysid) if !same_kind => warn!(
            %endpoint,
            "--failover: this host belongs to another system ({sysid}); not keeping a slot there"
        ),
        Visit::Failed(e) if !same_kind => {
            warn!(%endpoint, slot, error = %e, "--failover: could not keep the replication slot on this host (retrying)")
        }
        _ => debug!(%endpoint, slot, visit = ?now, "slot keeper visit"),
    }
}

/// One visit to one host, over an ordinary SQL session.
async fn visit(
    connect: &ConnectParams,
    endpoint: &Endpoint,
    slot: &str,
    sysid: u64,
    keep_from: Lsn,
) -> Visit {
    match visit_inner(connect, endpoint, slot, sysid, keep_from).await {
        Ok(v) => v,
        Err(e) => Visit::Failed(e),
    }
}

async fn visit_inner(
    connect: &ConnectParams,
    endpoint: &Endpoint,
    slot: &str,
    sysid: u64,
    keep_from: Lsn,
) -> Result<Visit, String> {
    let mut conn = sql_session(connect, endpoint).await?;
    let result = keep(&mut conn, slot, sysid, keep_from).await;
    conn.close().await;
    result
}

/// An SQL session to `endpoint` alone, with the receiver's settings; the `postgres` database when
/// the default one does not exist.
async fn sql_session(connect: &ConnectParams, endpoint: &Endpoint) -> Result<Connection, String> {
    let mut params = connect.clone();
    params.endpoints = vec![endpoint.clone()];
    params.replication = ReplicationMode::Off;
    params.target_session_attrs = walrelay_client::SessionAttrs::Any;
    match Connection::connect(&params).await {
        Ok(c) => Ok(c),
        Err(e) if e.condition() == Some(ServerCondition::UnknownDatabase) => {
            params.dbname = Some("postgres".into());
            Connection::connect(&params)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// First value of the first row.
async fn one(conn: &mut Connection, sql: &str) -> Result<Option<String>, String> {
    let res = conn.simple_query(sql).await.map_err(|e| e.to_string())?;
    Ok(res
        .first()
        .and_then(|r| r.get_idx(0, 0))
        .map(str::to_string))
}

async fn keep(
    conn: &mut Connection,
    slot: &str,
    sysid: u64,
    keep_from: Lsn,
) -> Result<Visit, String> {
    let theirs: Option<u64> = one(
        conn,
        "SELECT system_identifier FROM pg_catalog.pg_control_system()",
    )
    .await?
    .and_then(|v| v.parse().ok());
    match theirs {
        Some(s) if s != sysid => return Ok(Visit::Foreign(s)),
        _ => {}
    }
    if one(conn, "SELECT pg_catalog.pg_is_in_recovery()")
        .await?
        .as_deref()
        != Some("t")
    {
        return Ok(Visit::Primary);
    }
    // `slot` is validated ([a-z0-9_]{1,63}): safe inside quotes.
    let existing = one(
        conn,
        &format!(
            "SELECT coalesce(restart_lsn::text, '') || CASE WHEN active THEN ' active' ELSE '' END \
             FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = '{slot}' AND slot_type = 'physical'"
        ),
    )
    .await?;
    // A slot in use is someone's stream (ours, when we stream from this standby): leave it alone.
    if let Some(active) = existing.as_deref().and_then(|v| v.strip_suffix(" active")) {
        return Ok(Visit::Kept {
            restart_lsn: active.parse().unwrap_or(Lsn::INVALID),
            created: false,
        });
    }
    let restart = existing;
    let created = restart.is_none();
    let restart: Lsn = match restart {
        Some(v) => v.parse().unwrap_or(Lsn::INVALID),
        None => {
            one(
                conn,
                &format!(
                    "SELECT lsn FROM pg_catalog.pg_create_physical_replication_slot('{slot}', true)"
                ),
            )
            .await?;
            one(
                conn,
                &format!(
                    "SELECT coalesce(restart_lsn::text, '') FROM pg_catalog.pg_replication_slots \
                     WHERE slot_name = '{slot}'"
                ),
            )
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(Lsn::INVALID)
        }
    };
    let replayed: Lsn = one(conn, "SELECT pg_catalog.pg_last_wal_replay_lsn()")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(Lsn::INVALID);
    let target = keep_from.min(replayed);
    if restart != Lsn::INVALID && target > restart {
        one(
            conn,
            &format!(
                "SELECT end_lsn FROM pg_catalog.pg_replication_slot_advance('{slot}', '{target}')"
            ),
        )
        .await?;
        return Ok(Visit::Kept {
            restart_lsn: target,
            created,
        });
    }
    Ok(Visit::Kept {
        restart_lsn: restart,
        created,
    })
}
