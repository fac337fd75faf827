//! The receiver's outer loop: sessions one after another until shutdown, the end position, or a
//! definite error; transient errors reconnect with exponential backoff.
//!
//! ```text
//!   run ──► session (connect → IDENTIFY_SYSTEM → resume point → START_REPLICATION → streams)
//!    ▲          │
//!    └─ backoff ┘ transient error (connection lost, server restarting, slot still held, …)
//! ```
//!
//! Which errors are worth another session is decided by [`worth_retrying`]: the error's class
//! ([`walrelay_client::ErrorClass`]) first, plus the cases only this loop can judge, because they
//! depend on whether the set-up ever worked:
//!
//! * a host name that does not resolve is definite at start-up (a typo: exit at once, naming it)
//!   but transient once a session has streamed (the resolver or the DNS entry is having a bad
//!   minute, as during a failover that moves a name);
//! * a slot active for another process is retried — after a reconnect that is usually our own
//!   previous walsender, which the server ends once it notices the old connection is gone — but
//!   not for ever when no session ever streamed: after [`SLOT_BUSY_GRACE`] (the server's default
//!   `wal_sender_timeout` and a margin) something else streams from it, typically a standby fed
//!   by `--pg-wal` that still has its own `primary_conninfo`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use walrelay_client::{Backoff, Classify, ClientError, ServerCondition};

use crate::config::{ReceiveSummary, ReceiverConfig, StopReason};
use crate::error::ReceiveError;
use crate::session::{session, SessionState};
use crate::slot_keeper;
use crate::stream_loop::stop_requested;
use crate::tap::StreamTap;

/// A session that lasted this long counts as a success for the backoff.
const SESSION_SUCCESS: Duration = Duration::from_secs(60);
/// How long a slot may stay active for another process before the first stream, before walrelay
/// stops retrying: longer than the default `wal_sender_timeout` (60 s), after which a walsender
/// whose client died (a walrelay killed a moment ago) has released the slot.
pub const SLOT_BUSY_GRACE: Duration = Duration::from_secs(75);

/// Runs until shutdown, the end position, or a definite error. Transient errors reconnect with
/// exponential backoff (unless `reconnect` is false).
///
/// Cancellation: dropping the returned future drops the session in the middle of whatever it
/// does (the disk task's thread finishes its queue on its own); ask for a clean stop through
/// `shutdown` instead.
pub async fn run(cfg: ReceiverConfig) -> Result<ReceiveSummary, ReceiveError> {
    run_with(cfg, None).await
}

/// [`run`] with a relay's seam into the engine (see [`crate::tap`]): the WAL as received, the
/// acknowledged position, a cap on the flush position reported upstream, hot standby feedback
/// to forward. Without a tap the engine behaves exactly as [`run`].
pub async fn run_tapped(
    cfg: ReceiverConfig,
    tap: StreamTap,
) -> Result<ReceiveSummary, ReceiveError> {
    run_with(cfg, Some(Arc::new(tap))).await
}

async fn run_with(
    mut cfg: ReceiverConfig,
    tap: Option<Arc<StreamTap>>,
) -> Result<ReceiveSummary, ReceiveError> {
    let mut state = SessionState::new(&cfg);
    state.tap = tap;
    let mut backoff = Backoff::new(cfg.max_reconnect_delay);
    let started = Instant::now();
    let _keeper = match (&cfg.slot, cfg.failover_slot) {
        (Some(slot), true) => Some(KeeperGuard(slot_keeper::spawn(
            cfg.connect.clone(),
            slot.clone(),
            cfg.status_interval,
            cfg.stats.clone(),
            cfg.shutdown.clone(),
        ))),
        _ => None,
    };
    loop {
        if *cfg.shutdown.borrow() {
            return Ok(summary(&cfg, &state, StopReason::Shutdown));
        }
        let began = Instant::now();
        state.streamed = false;
        let result = session(&mut cfg, &mut state).await;
        cfg.stats.set_connected(false);
        let e = match result {
            Ok(stop) => return Ok(summary(&cfg, &state, stop)),
            Err(e)
                if cfg.reconnect && worth_retrying(&e, state.ever_streamed, started.elapsed()) =>
            {
                e
            }
            Err(e) if cfg.reconnect && e.condition() == Some(ServerCondition::SlotInUse) => {
                return Err(slot_busy(e, cfg.slot.as_deref(), started.elapsed()))
            }
            Err(e) => return Err(e),
        };
        // Back off only while sessions keep failing before they stream: a server restart after
        // hours (or seconds) of streaming is retried promptly every time.
        if state.streamed || began.elapsed() > SESSION_SUCCESS {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(error = %e, retry_in_secs = delay.as_secs(), "streaming interrupted; reconnecting");
        cfg.stats.reconnect();
        let mut shutdown = cfg.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut shutdown) => {
                return Ok(summary(&cfg, &state, StopReason::Shutdown));
            }
        }
    }
}

/// Stops the slot keeper when the receiver stops.
struct KeeperGuard(tokio::task::JoinHandle<()>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether another session may succeed where this one failed (see the module documentation):
/// every transient error; a host name that did not resolve once a session streamed; a slot still
/// active once a session streamed, or for [`SLOT_BUSY_GRACE`] after the start.
pub(crate) fn worth_retrying(e: &ReceiveError, ever_streamed: bool, since_start: Duration) -> bool {
    if e.class().is_transient() {
        return true;
    }
    if e.condition() == Some(ServerCondition::SlotInUse) {
        return ever_streamed || since_start < SLOT_BUSY_GRACE;
    }
    ever_streamed && matches!(e, ReceiveError::Client(c) if resolves_later(c))
}

/// A failure of name resolution, or of a host list where every host failed either that way or
/// transiently (one name gone from DNS while the other host restarts, mid-failover).
fn resolves_later(e: &ClientError) -> bool {
    match e {
        ClientError::AllHostsFailed(v) => {
            v.iter().all(|h| h.is_name_resolution() || h.is_transient())
        }
        other => other.is_name_resolution(),
    }
}

/// A slot that stayed active for another client since the start, as the error that says so.
fn slot_busy(e: ReceiveError, slot: Option<&str>, waited: Duration) -> ReceiveError {
    match e.server_error().cloned() {
        Some(error) => ReceiveError::SlotBusy {
            slot: slot.unwrap_or_default().to_string(),
            waited_secs: waited.as_secs(),
            error: Box::new(error),
        },
        None => e,
    }
}

fn summary(cfg: &ReceiverConfig, state: &SessionState, stop: StopReason) -> ReceiveSummary {
    ReceiveSummary {
        stop,
        flushed: state.last_flushed,
        timeline: state.timeline,
        reconnects: cfg.stats.snapshot().reconnects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_client::ServerError;

    fn server(code: &str, message: &str) -> ReceiveError {
        ReceiveError::from_server(ServerError::new(code, message).into(), Some("s"))
    }

    #[test]
    fn what_is_worth_another_session() {
        let retry = |e: &ReceiveError| worth_retrying(e, true, Duration::from_secs(3600));
        assert!(retry(&ReceiveError::ServerStopped));
        assert!(retry(&ReceiveError::Client(ClientError::Closed)));
        assert!(retry(&server(
            "55006",
            "replication slot \"s\" is active for PID 7"
        )));
        assert!(retry(&server(
            "XX000",
            "requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000000"
        )));
        assert!(!retry(&server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed"
        )));
        assert!(!retry(&server(
            "28P01",
            "password authentication failed for user \"r\""
        )));
        assert!(!retry(&ReceiveError::SystemIdentifierMismatch {
            expected: 1,
            server: 2
        }));
    }

    #[test]
    fn a_setup_that_never_worked_is_not_retried_for_ever() {
        let dns = || {
            ReceiveError::Client(ClientError::Resolve {
                host: "nosuchhost.invalid".into(),
                source: std::io::Error::other("Name or service not known"),
            })
        };
        let early = Duration::from_secs(1);
        // A name that never resolved: a typo, not worth a retry.
        assert!(!worth_retrying(&dns(), false, early));
        // After streaming: the resolver's bad minute, also for one host of a list while the
        // other is down.
        assert!(worth_retrying(&dns(), true, early));
        let list = || {
            let ReceiveError::Client(resolve) = dns() else {
                unreachable!()
            };
            ReceiveError::Client(ClientError::AllHostsFailed(vec![
                resolve,
                ClientError::Closed,
            ]))
        };
        assert!(!worth_retrying(&list(), false, early));
        assert!(worth_retrying(&list(), true, early));
        let busy = || server("55006", "replication slot \"s\" is active for PID 7");
        assert!(
            worth_retrying(&busy(), false, early),
            "maybe our own old walsender"
        );
        let late = SLOT_BUSY_GRACE + Duration::from_secs(1);
        assert!(!worth_retrying(&busy(), false, late));
        assert!(worth_retrying(&busy(), true, late));
        let e = slot_busy(busy(), Some("s"), late);
        assert_eq!(e.class(), walrelay_client::ErrorClass::ServerState);
        let text = e.to_string();
        assert!(text.contains("is active for PID 7"), "{text}");
        assert!(text.contains("primary_conninfo"), "{text}");
    }
}
