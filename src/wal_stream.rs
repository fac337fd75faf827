//! Bootstrap's WAL stream: the `receive` engine pointed at the new data directory's `pg_wal`, with an
//! end position set once the base backup has ended (pg_basebackup `-X stream`).
//!
//! The engine's errors are written for `walrelay receive`; a bootstrap meets some of them for its
//! own reasons and gets its own advice: no free WAL sender for the second connection (raise
//! `max_wal_senders` or use `--wal-method fetch`), a slot another client streams from, and a stream
//! the primary ended — which, when the primary sets `max_slot_wal_keep_size`, is most likely the
//! slot's invalidation, so the primary is asked for that setting before the error is reported.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use walrelay_basebackup::{
    BoxFuture, StartWal, WalStreamError, WalStreamHandle, WalStreamer, WalSummary,
};
use walrelay_client::{ClientError, ConnectParams, Connection, ServerCondition};
use walrelay_protocol::Lsn;
use walrelay_walreceiver::{
    DiskTaskConfig, ReceiveError, ReceiveSummary, ReceiverConfig, ReceiverStats, Target,
};

/// How often the status is reported to the primary during bootstrap (keeps the slot moving).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long explaining a failed stream may take (one extra connection to the primary).
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EngineWalStreamer;

/// How the engine's task ended.
enum Ended {
    Stopped(ReceiveSummary),
    Failed(Arc<ReceiveError>),
    Crashed(String),
}

struct Handle {
    task: Option<JoinHandle<Result<ReceiveSummary, ReceiveError>>>,
    /// Set once the task has ended (see [`Handle::wait_ended`]).
    ended: Option<Ended>,
    /// To ask the primary why the stream ended, if it does.
    connect: ConnectParams,
    endpos: watch::Sender<Option<Lsn>>,
    shutdown: watch::Sender<bool>,
    stats: Arc<ReceiverStats>,
}

fn err(e: impl std::fmt::Display) -> WalStreamError {
    e.to_string().into()
}

/// The engine's error, kept as the source (so that its class and a full disk are found by type),
/// with what to do about it when the cause is one a bootstrap typically meets.
#[derive(Debug)]
struct StreamFailure {
    error: Arc<ReceiveError>,
    hint: Option<String>,
}

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hint {
            Some(h) => write!(f, "{}; {h}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for StreamFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// What to add to the engine's error when the cause is one a bootstrap typically meets. `limit` is
/// the primary's `max_slot_wal_keep_size` when [`slot_wal_limit`] found one.
fn stream_hint(e: &ReceiveError, limit: Option<&str>) -> Option<String> {
    match e.condition() {
        Some(ServerCondition::WalSendersExhausted) => Some(
            "a base backup with its WAL stream needs two free WAL senders (one for each): raise \
             max_wal_senders on the primary and restart it, or stop an unused replication client \
             (bootstrap can also fetch the WAL through the backup's own connection: --wal-method fetch)"
                .to_string(),
        ),
        Some(ServerCondition::SlotInUse) => Some(
            "another client is streaming from that replication slot: stop it (the standby or \
             receiver using the slot), or choose another slot"
                .to_string(),
        ),
        // The checkpointer invalidates a slot that fell more than max_slot_wal_keep_size behind
        // and terminates the walsender holding it ("terminating process … to release replication
        // slot" in the primary's log). The client sees "terminating connection due to
        // administrator command" — or, when the walsender exits with our unread status messages
        // in its socket, only a connection reset. Either way the stream's WAL is gone.
        _ if stream_ended_by_server(e) => match limit {
            Some(limit) => Some(format!(
                "the primary limits the WAL a slot may hold (max_slot_wal_keep_size = {limit}): if \
                 the stream fell that far behind, the primary invalidated its slot and ended the \
                 stream (see the primary's log) — raise max_slot_wal_keep_size, or check why the \
                 stream was slow"
            )),
            None if e.condition() == Some(ServerCondition::ShuttingDown) => Some(
                "the primary ended the WAL stream: it is shutting down, or the walsender was \
                 terminated (pg_terminate_backend)"
                    .to_string(),
            ),
            None => None,
        },
        _ => None,
    }
}

fn stream_error(e: Arc<ReceiveError>, limit: Option<&str>) -> WalStreamError {
    let hint = stream_hint(&e, limit);
    Box::new(StreamFailure { error: e, hint })
}

/// The walsender was told to exit, or the connection broke.
fn stream_ended_by_server(e: &ReceiveError) -> bool {
    match e {
        ReceiveError::Client(c) => {
            c.condition() == Some(ServerCondition::ShuttingDown)
                || matches!(c, ClientError::Io(_) | ClientError::Closed)
        }
        _ => false,
    }
}

/// After the stream ended that way: the primary's `max_slot_wal_keep_size` if it sets one (PostgreSQL
/// 13+; `-1` is no limit), asked on a new replication connection. `None` when there is no limit or
/// the primary cannot be asked (it may be the one that went away).
async fn slot_wal_limit(e: &ReceiveError, connect: &ConnectParams) -> Option<String> {
    if !stream_ended_by_server(e) {
        return None;
    }
    let ask = async {
        let mut conn = Connection::connect(connect).await.ok()?;
        let v = conn.show("max_slot_wal_keep_size").await.ok();
        conn.close().await;
        v
    };
    let v = tokio::time::timeout(DIAGNOSIS_TIMEOUT, ask).await.ok()??;
    (v.trim() != "-1").then_some(v)
}

/// The engine's error as the bootstrap reports it (see [`stream_hint`]).
async fn explain(e: Arc<ReceiveError>, connect: &ConnectParams) -> WalStreamError {
    let limit = slot_wal_limit(&e, connect).await;
    stream_error(e, limit.as_deref())
}

impl WalStreamer for EngineWalStreamer {
    fn start(
        &self,
        p: StartWal,
    ) -> BoxFuture<'_, Result<Box<dyn WalStreamHandle>, WalStreamError>> {
        Box::pin(async move {
            let (endpos_tx, endpos_rx) = watch::channel(None);
            let (shutdown_tx, shutdown_rx) = watch::channel(false);
            let stats = Arc::new(ReceiverStats::default());
            let temporary_slot = if p.create_temporary_slot {
                Some(format!("walrelay_{}", std::process::id()))
            } else {
                None
            };
            let connect = p.connect.clone();
            let config = ReceiverConfig {
                connect: p.connect,
                target: Target::PgWal {
                    pg_wal: p.pg_wal_dir,
                },
                slot: p.slot,
                failover_slot: false,
                temporary_slot,
                start: Some(p.start_lsn),
                endpos: endpos_rx,
                status_interval: STATUS_INTERVAL,
                synchronous: false,
                // bootstrap fsyncs the whole directory at the end.
                sync: false,
                validate: true,
                // A backup whose WAL stream broke is unusable: fail it rather than reconnect.
                reconnect: false,
                expected_system_identifier: Some(p.system_identifier),
                apply_source: None,
                owner: p.owner,
                stats: stats.clone(),
                shutdown: shutdown_rx,
                max_reconnect_delay: Duration::from_secs(1),
                disk: DiskTaskConfig::default(),
            };
            let mut task = tokio::spawn(walrelay_walreceiver::run(config));
            // Return once streaming has begun, so slot and permission errors surface before any data.
            loop {
                if stats.snapshot().connected {
                    break;
                }
                tokio::select! {
                    r = &mut task => {
                        return Err(match r {
                            Ok(Ok(_)) => err("the WAL stream ended before it started"),
                            Ok(Err(e)) => explain(Arc::new(e), &connect).await,
                            Err(e) => err(format!("WAL stream task failed: {e}")),
                        });
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Ok(Box::new(Handle {
                task: Some(task),
                ended: None,
                connect,
                endpos: endpos_tx,
                shutdown: shutdown_tx,
                stats,
            }) as Box<dyn WalStreamHandle>)
        })
    }
}

impl Handle {
    /// Waits for the engine's task to end and keeps how it ended. Cancellation-safe: the task is
    /// awaited by reference, and only taken once it has finished.
    async fn wait_ended(&mut self) -> &Ended {
        let ended = match self.ended.take() {
            Some(ended) => ended,
            None => {
                let ended = match self.task.as_mut() {
                    Some(task) => match task.await {
                        Ok(Ok(summary)) => Ended::Stopped(summary),
                        Ok(Err(e)) => Ended::Failed(Arc::new(e)),
                        Err(e) => Ended::Crashed(format!("WAL stream task failed: {e}")),
                    },
                    None => Ended::Crashed("the WAL stream task is gone".into()),
                };
                self.task = None;
                ended
            }
        };
        self.ended.insert(ended)
    }
}

impl WalStreamHandle for Handle {
    /// Cancellation-safe: how the stream ended is kept in the handle, so a `failed()` dropped while
    /// it asks the primary for the reason loses nothing — the next call (or `finish`) asks again.
    fn failed(&mut self) -> BoxFuture<'_, WalStreamError> {
        Box::pin(async move {
            let connect = self.connect.clone();
            match self.wait_ended().await {
                Ended::Stopped(_) => err("the WAL stream stopped before the backup ended"),
                Ended::Failed(e) => explain(e.clone(), &connect).await,
                Ended::Crashed(m) => err(m),
            }
        })
    }

    fn finish(
        mut self: Box<Self>,
        end_lsn: Lsn,
    ) -> BoxFuture<'static, Result<WalSummary, WalStreamError>> {
        Box::pin(async move {
            let stopped_early = self.ended.is_some();
            let _ = self.endpos.send(Some(end_lsn));
            let connect = self.connect.clone();
            let stats = self.stats.clone();
            match self.wait_ended().await {
                Ended::Stopped(_) if stopped_early => {
                    Err(err("the WAL stream stopped before the backup ended"))
                }
                Ended::Stopped(summary) => {
                    let s = stats.snapshot();
                    Ok(WalSummary {
                        flushed_lsn: summary.flushed,
                        segments: s.segments_completed + 1,
                        bytes: s.bytes_received,
                    })
                }
                Ended::Failed(e) => Err(explain(e.clone(), &connect).await),
                Ended::Crashed(m) => Err(err(m)),
            }
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.shutdown.send(true);
            if let Some(task) = self.task.take() {
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
        })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_protocol::message::ErrorFields;
    use walrelay_walreceiver::StreamViolation;

    fn explained(e: ReceiveError, limit: Option<&str>) -> String {
        stream_error(Arc::new(e), limit).to_string()
    }

    fn server(severity: &str, code: &str, message: &str) -> ReceiveError {
        ReceiveError::Client(ClientError::server(ErrorFields {
            severity: severity.into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }))
    }

    #[test]
    fn no_free_wal_sender_names_the_setting_and_the_alternative() {
        let e = explained(
            server(
                "FATAL",
                "53300",
                "number of requested standby connections exceeds max_wal_senders (currently 1)",
            ),
            None,
        );
        assert!(e.contains("(currently 1)"), "{e}");
        assert!(e.contains("raise max_wal_senders"), "{e}");
        assert!(e.contains("--wal-method fetch"), "{e}");
        // Too many ordinary connections is another problem: no WAL sender advice.
        let e = explained(
            server("FATAL", "53300", "sorry, too many clients already"),
            None,
        );
        assert!(!e.contains("max_wal_senders"), "{e}");
    }

    #[test]
    fn a_slot_in_use_says_what_to_do() {
        let e = explained(
            server(
                "ERROR",
                "55006",
                "replication slot \"s\" is active for PID 42",
            ),
            None,
        );
        assert!(e.contains("is active for PID 42"), "{e}");
        assert!(e.contains("choose another slot"), "{e}");
    }

    #[test]
    fn an_ended_stream_names_the_slot_limit_when_the_primary_has_one() {
        let terminated = || {
            server(
                "FATAL",
                "57P01",
                "terminating connection due to administrator command",
            )
        };
        let reset = || {
            ReceiveError::Client(ClientError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
        };
        for e in [terminated(), reset()] {
            let text = explained(e, Some("1MB"));
            assert!(text.contains("max_slot_wal_keep_size = 1MB"), "{text}");
            assert!(text.contains("invalidated its slot"), "{text}");
        }
        let text = explained(terminated(), None);
        assert!(
            text.starts_with("server error: FATAL:  terminating connection"),
            "{text}"
        );
        assert!(text.contains("pg_terminate_backend"), "{text}");
        assert!(!text.contains("max_slot_wal_keep_size"), "{text}");
        // A plain reset with no limit to blame: the error as it is.
        assert_eq!(explained(reset(), None).to_string(), reset().to_string());
        let plain = explained(
            ReceiveError::Protocol(StreamViolation::EndWithoutNextTimeline),
            Some("1MB"),
        );
        assert_eq!(
            plain,
            "protocol violation: the server ended the stream without naming the next timeline"
        );
    }
}
