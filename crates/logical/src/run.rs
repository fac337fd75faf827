//! `subset run`: preflight, setup, the initial copy, then streaming — again and again after
//! transient failures, with backoff, until the end position, a stop request or a definite error.
//!
//! Every attempt starts from what the servers hold (the target's state rows, the source's slot and
//! publication), so an attempt that died anywhere — killed, a connection cut, a server restarted —
//! is simply followed by another that finds its way.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use walrelay_client::{Backoff, Connection};
use walrelay_protocol::Lsn;

use crate::catalog;
use crate::config::RunConfig;
use crate::error::{Side, SubsetError};
use crate::prepare::{self, CheckReport};
use crate::stats::Phase;
use crate::stream::{self, SessionEnd};
use crate::sync;

/// An attempt that lasted this long counts as a success for the backoff.
const ATTEMPT_SUCCESS: Duration = Duration::from_secs(60);

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Everything up to the end position is applied.
    EndPosition,
    /// Stopped on request (SIGINT/SIGTERM).
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub stop: StopReason,
    /// The source position the target has applied and made durable (invalid when stopped before
    /// streaming began).
    pub applied: Lsn,
}

/// Runs preflight only: what `run` would do, or every problem that keeps it from running.
pub async fn check(cfg: &RunConfig) -> Result<CheckReport, SubsetError> {
    let (mut src, mut tgt) = connect_sql(cfg).await?;
    let p = prepare::preflight(cfg, &mut src, &mut tgt).await?;
    src.close().await;
    tgt.close().await;
    Ok(p.report)
}

async fn connect_sql(cfg: &RunConfig) -> Result<(Connection, Connection), SubsetError> {
    let src = catalog::connect(&cfg.source_sql(), Side::Source).await?;
    let tgt = catalog::connect(&cfg.target_sql(), Side::Target).await?;
    Ok((src, tgt))
}

/// Resolves once a stop is requested (never, if nobody can request one any more).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the subset until the end position, a stop request, or a definite error.
///
/// Cancellation: dropping the future abandons the target transaction in flight (the target rolls
/// it back when the connection goes); the state on both servers stays consistent. Ask for a clean
/// stop through `shutdown` instead, which also confirms the final position to the source.
pub async fn run(cfg: RunConfig) -> Result<RunSummary, SubsetError> {
    let mut backoff = Backoff::new(cfg.max_reconnect_delay);
    let mut shutdown = cfg.shutdown.clone();
    let mut retry = Retry::default();
    loop {
        if *shutdown.borrow() {
            return Ok(RunSummary {
                stop: StopReason::Shutdown,
                applied: Lsn::INVALID,
            });
        }
        let began = Instant::now();
        let before = cfg.stats.snapshot();
        let result = attempt(&cfg, &mut retry).await;
        cfg.stats.set_connected(false);
        let e = match result {
            Ok(SessionEnd::EndPosition(applied)) => {
                return Ok(RunSummary {
                    stop: StopReason::EndPosition,
                    applied,
                })
            }
            Ok(SessionEnd::Shutdown(applied)) => {
                return Ok(RunSummary {
                    stop: StopReason::Shutdown,
                    applied,
                })
            }
            Ok(SessionEnd::Restart) => continue,
            Err(SubsetError::ConflictFound { until }) => {
                // At once, without backoff: the next session names the conflict.
                warn!(until = %until, "a change conflicts with the target's rows: applying the source transactions up to commit LSN {until} one at a time to name it");
                retry.precise_until = Some(until);
                continue;
            }
            Err(e) if cfg.reconnect && e.is_retryable() => e,
            Err(e) => return Err(e),
        };
        // Only progress resets the backoff: an attempt that streams and then fails on the same
        // transaction again (a full disk on the target) waits longer each time instead of
        // fetching that transaction from the source every second.
        let after = cfg.stats.snapshot();
        let progressed =
            after.applied_lsn > before.applied_lsn || after.tables_synced > before.tables_synced;
        if progressed || began.elapsed() > ATTEMPT_SUCCESS {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(error = %e, retry_in_secs = delay.as_secs(), "subset interrupted; trying again");
        cfg.stats.reconnect();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut shutdown) => {
                return Ok(RunSummary { stop: StopReason::Shutdown, applied: Lsn::INVALID });
            }
        }
    }
}

/// What an attempt carries over to the next.
#[derive(Debug, Default)]
struct Retry {
    /// Preflight, setup and the copies are done: a later attempt only streams (it finds the
    /// state it needs on the target, and a lost slot or a changed source are errors there).
    prepared: bool,
    /// Apply the source transactions up to here one statement at a time (a conflict was found).
    precise_until: Option<Lsn>,
    /// End the stream at this position and start it again ([`sync::loses_added_tables`]).
    restart_after: Option<Lsn>,
}

/// One attempt: prepare, copy what is not copied, stream. A stop request before streaming drops
/// the copies in flight (their target transactions roll back); the stream stops cleanly itself.
async fn attempt(cfg: &RunConfig, retry: &mut Retry) -> Result<SessionEnd, SubsetError> {
    cfg.stats.set_phase(Phase::Starting);
    let mut shutdown = cfg.shutdown.clone();
    // Connecting to the target may hang (a peer that never answers): a stop ends it at once.
    let lock = tokio::select! {
        l = lock_subset(cfg) => l?,
        _ = stop_requested(&mut shutdown) => return Ok(SessionEnd::Shutdown(Lsn::INVALID)),
    };
    if !retry.prepared {
        let result = tokio::select! {
            r = prepare_and_copy(cfg) => r,
            _ = stop_requested(&mut shutdown) => return Ok(SessionEnd::Shutdown(Lsn::INVALID)),
        };
        match result {
            Ok(restart_after) => retry.restart_after = restart_after,
            Err(e) => {
                lock.close().await;
                return Err(e);
            }
        }
        retry.prepared = true;
    }
    // Tables added on a source whose pgoutput may have cached them as unpublished: this
    // session ends at their sync point, and the next one decodes afresh from there.
    let restart_at = retry
        .restart_after
        .filter(|r| cfg.endpos.is_none_or(|e| *r < e));
    let result = match restart_at {
        Some(at) => {
            let mut until = cfg.clone();
            until.endpos = Some(at);
            match stream::session(&until, retry.precise_until).await {
                Ok(SessionEnd::EndPosition(applied)) => {
                    info!(sync_point = %at, applied = %applied, "past the sync point of the tables added: the stream starts again, so that the source decodes them afresh (PostgreSQL before 13.21, 14.18, 15.13, 16.9, 17.5 can keep a table added to a publication unpublished for the rest of a session)");
                    retry.restart_after = None;
                    Ok(SessionEnd::Restart)
                }
                other => other,
            }
        }
        None => stream::session(cfg, retry.precise_until).await,
    };
    lock.close().await;
    result
}

/// Advisory-lock class of walrelay subsets (`WRSL`).
const LOCK_CLASS: &str = "1465012044";

/// Takes the subset's session lock on the target, so that two runs of one subset never copy or
/// apply at the same time (their sync points would not agree). Held by the returned connection.
async fn lock_subset(cfg: &RunConfig) -> Result<Connection, SubsetError> {
    let mut c = Connection::connect(&cfg.target_sql())
        .await
        .map_err(SubsetError::connect(Side::Target))?;
    let r = c
        .query_params(
            &format!(
                "SELECT pg_catalog.pg_try_advisory_lock({LOCK_CLASS}, pg_catalog.hashtext($1)) AS locked"
            ),
            &[Some(&format!("walrelay subset {}", cfg.name))],
        )
        .await
        .map_err(SubsetError::sql(Side::Target, "take the subset's lock"))?;
    if r.get(0, "locked") != Some("t") {
        c.close().await;
        return Err(SubsetError::AlreadyRunning {
            name: cfg.name.to_string(),
        });
    }
    Ok(c)
}

async fn prepare_and_copy(cfg: &RunConfig) -> Result<Option<Lsn>, SubsetError> {
    let (mut src, mut tgt) = connect_sql(cfg).await?;
    let prepared = prepare::preflight(cfg, &mut src, &mut tgt).await?;
    let total = prepared.report.tables.len() as u64;
    let synced = prepared
        .report
        .tables
        .iter()
        .filter(|t| t.action == prepare::TableAction::Stream)
        .count() as u64;
    cfg.stats.set_tables(total, synced);
    prepare::setup(cfg, &prepared, &mut src, &mut tgt).await?;
    let restart_after = sync::sync_pending(cfg, &prepared, &mut src, &mut tgt).await?;
    src.close().await;
    tgt.close().await;
    Ok(restart_after)
}
