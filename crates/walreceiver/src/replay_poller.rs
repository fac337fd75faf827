//! Sidecar mode's view of the standby it feeds: its replay position, polled over an ordinary SQL
//! connection (`pg_last_wal_replay_lsn()`), so that the apply position in status updates is real
//! and `remote_apply` and `replay_lag` work on the primary.

use std::time::Duration;

use tokio::sync::watch;
use walrelay_client::{ConnectParams, Connection, ReplicationMode};
use walrelay_protocol::Lsn;

/// Polls the standby's replay position (pg_wal mode) so `remote_apply` and replay lag work.
pub(crate) fn spawn_replay_poller(
    source: Option<ConnectParams>,
    interval: Duration,
) -> watch::Receiver<Lsn> {
    let (tx, rx) = watch::channel(Lsn::INVALID);
    if let Some(mut params) = source {
        params.replication = ReplicationMode::Off;
        let period = if interval.is_zero() {
            Duration::from_secs(1)
        } else {
            interval.min(Duration::from_secs(1))
        };
        tokio::spawn(async move {
            let mut conn: Option<Connection> = None;
            loop {
                if tx.is_closed() {
                    return;
                }
                if conn.is_none() {
                    conn = Connection::connect(&params).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    match c.simple_query("SELECT pg_last_wal_replay_lsn()").await {
                        Ok(res) => {
                            if let Some(lsn) = res
                                .first()
                                .and_then(|r| r.get_idx(0, 0))
                                .and_then(|v| v.parse::<Lsn>().ok())
                            {
                                tx.send_if_modified(|cur| {
                                    let changed = lsn > *cur;
                                    if changed {
                                        *cur = lsn;
                                    }
                                    changed
                                });
                            }
                        }
                        Err(_) => conn = None,
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
    }
    rx
}
