//! Bootstrap's WAL stream: the `receive` engine pointed at the new data directory's `pg_wal`, with an
//! end position set once the base backup has ended (pg_basebackup `-X stream`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use walrelay_basebackup::{
    BoxFuture, StartWal, WalStreamError, WalStreamHandle, WalStreamer, WalSummary,
};
use walrelay_protocol::Lsn;
use walrelay_walreceiver::{
    DiskTaskConfig, ReceiveError, ReceiveSummary, ReceiverConfig, ReceiverStats, Target,
};

/// How often the status is reported to the primary during bootstrap (keeps the slot moving).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

pub struct EngineWalStreamer;

struct Handle {
    task: Option<JoinHandle<Result<ReceiveSummary, ReceiveError>>>,
    endpos: watch::Sender<Option<Lsn>>,
    shutdown: watch::Sender<bool>,
    stats: Arc<ReceiverStats>,
}

fn err(e: impl std::fmt::Display) -> WalStreamError {
    e.to_string().into()
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
            let config = ReceiverConfig {
                connect: p.connect,
                target: Target::PgWal {
                    pg_wal: p.pg_wal_dir,
                },
                slot: p.slot,
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
                            Ok(Err(e)) => err(e),
                            Err(e) => err(format!("WAL stream task failed: {e}")),
                        });
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Ok(Box::new(Handle {
                task: Some(task),
                endpos: endpos_tx,
                shutdown: shutdown_tx,
                stats,
            }) as Box<dyn WalStreamHandle>)
        })
    }
}

impl WalStreamHandle for Handle {
    fn failed(&mut self) -> BoxFuture<'_, WalStreamError> {
        Box::pin(async move {
            match self.task.as_mut() {
                Some(task) => {
                    let r = task.await;
                    self.task = None;
                    match r {
                        Ok(Ok(_)) => err("the WAL stream stopped before the backup ended"),
                        Ok(Err(e)) => err(e),
                        Err(e) => err(format!("WAL stream task failed: {e}")),
                    }
                }
                None => std::future::pending().await,
            }
        })
    }

    fn finish(
        mut self: Box<Self>,
        end_lsn: Lsn,
    ) -> BoxFuture<'static, Result<WalSummary, WalStreamError>> {
        Box::pin(async move {
            let _ = self.endpos.send(Some(end_lsn));
            let Some(task) = self.task.take() else {
                return Err(err("the WAL stream had already stopped"));
            };
            match task.await {
                Ok(Ok(summary)) => {
                    let s = self.stats.snapshot();
                    Ok(WalSummary {
                        flushed_lsn: summary.flushed,
                        segments: s.segments_completed + 1,
                        bytes: s.bytes_received,
                    })
                }
                Ok(Err(e)) => Err(err(e)),
                Err(e) => Err(err(format!("WAL stream task failed: {e}"))),
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
