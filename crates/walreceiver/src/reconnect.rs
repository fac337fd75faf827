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
//! ([`walrelay_client::ErrorClass`]) first, plus the cases only this loop can judge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use walrelay_client::{Classify, ServerCondition};

use crate::config::{ReceiveSummary, ReceiverConfig, StopReason};
use crate::error::ReceiveError;
use crate::session::{session, SessionState};
use crate::slot_keeper;
use crate::stream_loop::stop_requested;
use crate::tap::StreamTap;

/// The first wait before reconnecting.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// A session that lasted this long counts as a success for the backoff.
const SESSION_SUCCESS: Duration = Duration::from_secs(60);

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
            Err(e) if cfg.reconnect && worth_retrying(&e) => e,
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

/// Whether another session may succeed where this one failed: every transient error, and a slot
/// still active — after a reconnect that is usually our own previous walsender, which the server
/// ends once it notices the old connection is gone.
pub(crate) fn worth_retrying(e: &ReceiveError) -> bool {
    e.class().is_transient() || e.condition() == Some(ServerCondition::SlotInUse)
}

/// Exponential backoff from [`FIRST_DELAY`] up to a ceiling.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_DELAY.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_DELAY.min(self.max);
    }

    /// The wait before this attempt; doubles the next one.
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
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
    use walrelay_client::{ClientError, ServerError};

    fn server(code: &str, message: &str) -> ReceiveError {
        ReceiveError::from_server(ServerError::new(code, message).into(), Some("s"))
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn what_is_worth_another_session() {
        assert!(worth_retrying(&ReceiveError::ServerStopped));
        assert!(worth_retrying(&ReceiveError::Client(ClientError::Closed)));
        assert!(worth_retrying(&server(
            "55006",
            "replication slot \"s\" is active for PID 7"
        )));
        assert!(worth_retrying(&server(
            "XX000",
            "requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000000"
        )));
        assert!(!worth_retrying(&server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed"
        )));
        assert!(!worth_retrying(&server(
            "28P01",
            "password authentication failed for user \"r\""
        )));
        assert!(!worth_retrying(&ReceiveError::SystemIdentifierMismatch {
            expected: 1,
            server: 2
        }));
    }
}
