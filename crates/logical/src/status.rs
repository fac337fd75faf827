//! `subset status`: what the target's state says — the phase, each table's state, the position
//! applied — and, when the source can be asked, the lag and the slot.

use serde::Serialize;
use walrelay_client::{ConnectParams, Connection};
use walrelay_protocol::Lsn;

use crate::config::{source_sql, target_sql};
use crate::error::{Side, SubsetError};
use crate::schema::{SubsetName, TableName};
use crate::source;
use crate::state::{self, TableState};

/// The source's replication slot, seen from the source.
#[derive(Clone, Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    pub active: bool,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub lost: bool,
    /// Why it was invalidated ("invalidated (…)"), when it was.
    pub invalidation: Option<String>,
    /// A failover slot (PostgreSQL 17+).
    pub failover: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubsetStatus {
    pub name: String,
    /// `copying` while a table is not synced, else `streaming`.
    pub phase: &'static str,
    /// The source position the target has applied (its progress row).
    pub applied_lsn: Option<Lsn>,
    /// The source's position: current when the source was asked, else as last seen by `run`.
    pub source_lsn: Option<Lsn>,
    pub source_lsn_is_current: bool,
    pub lag_bytes: Option<u64>,
    /// Seconds since the source committed the last transaction applied, while behind; 0 when
    /// caught up.
    pub lag_seconds: Option<f64>,
    pub last_commit_time: Option<String>,
    pub updated_at: Option<String>,
    /// Seconds since `run` last wrote the progress row (it writes at least every second or so
    /// while it runs and the source moves).
    pub updated_age_seconds: Option<f64>,
    pub slot: Option<SlotStatus>,
    pub tables: Vec<TableState>,
    /// Sequences chosen with `--sequence`.
    pub sequences: Vec<TableName>,
    /// Changes recorded in `walrelay.subset_conflicts` (`--on-conflict`, `--skip-lsn`).
    pub conflicts_recorded: u64,
}

pub async fn status(
    target: &ConnectParams,
    source_params: Option<&ConnectParams>,
    name: &SubsetName,
) -> Result<SubsetStatus, SubsetError> {
    let mut tgt = Connection::connect(&target_sql(target, name))
        .await
        .map_err(SubsetError::connect(Side::Target))?;
    let st = state::load(&mut tgt, name)
        .await
        .map_err(SubsetError::sql(Side::Target, "read walrelay's state"))?
        .ok_or_else(|| SubsetError::UnknownSubset {
            name: name.to_string(),
        })?;
    let conflicts_recorded = if state::layout(&mut tgt)
        .await
        .map_err(SubsetError::sql(Side::Target, "read walrelay's state"))?
        >= 2
    {
        tgt.query_params(
            "SELECT count(*) AS n FROM walrelay.subset_conflicts WHERE subset = $1",
            &[Some(name.as_str())],
        )
        .await
        .map_err(SubsetError::sql(
            Side::Target,
            "count the recorded conflicts",
        ))?
        .get(0, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
    } else {
        0
    };
    tgt.close().await;
    let (mut current, mut slot) = (None, None);
    if let Some(p) = source_params {
        let mut src = Connection::connect(&source_sql(p, name))
            .await
            .map_err(SubsetError::connect(Side::Source))?;
        let on_src = |what: &str| SubsetError::sql(Side::Source, what.to_string());
        current = Some(
            source::current_lsn(&mut src)
                .await
                .map_err(on_src("read the WAL position"))?,
        );
        let s = source::slot(&mut src, &name.slot())
            .await
            .map_err(on_src("read the replication slot"))?;
        slot = Some(SlotStatus {
            name: name.slot(),
            exists: s.is_some(),
            active: s.as_ref().is_some_and(|s| s.active),
            confirmed_flush_lsn: s.as_ref().and_then(|s| s.confirmed_flush),
            lost: s.as_ref().is_some_and(|s| s.invalidation().is_some()),
            invalidation: s.as_ref().and_then(|s| s.invalidation()),
            failover: s.as_ref().and_then(|s| s.failover),
        });
        src.close().await;
    }
    let p = st.progress.as_ref();
    let applied = p.map(|p| p.applied_lsn);
    let source_lsn = current.or_else(|| p.and_then(|p| p.source_wal_end));
    let lag_bytes = match (source_lsn, applied) {
        (Some(s), Some(a)) => Some(s.saturating_sub(a)),
        _ => None,
    };
    let lag_seconds = match (lag_bytes, p) {
        (Some(0), _) => Some(0.0),
        (Some(_), Some(p)) => p.commit_age_secs.or(Some(p.updated_age_secs)),
        _ => None,
    };
    let copying = st.tables.iter().any(|t| !t.is_synced());
    Ok(SubsetStatus {
        name: name.to_string(),
        phase: match (p.is_some(), copying) {
            (false, _) => "not started",
            (true, true) => "copying",
            (true, false) => "streaming",
        },
        applied_lsn: applied,
        source_lsn,
        source_lsn_is_current: current.is_some(),
        lag_bytes,
        lag_seconds,
        last_commit_time: p.and_then(|p| p.last_commit_time.clone()),
        updated_at: p.map(|p| p.updated_at.clone()),
        updated_age_seconds: p.map(|p| p.updated_age_secs),
        slot,
        tables: st.tables,
        sequences: st.sequences,
        conflicts_recorded,
    })
}
