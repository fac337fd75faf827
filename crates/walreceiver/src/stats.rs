//! Live counters of a running receiver, shared with the metrics endpoint (and tests).
//!
//! Plain atomics: the streaming tasks update them without locks; readers take a consistent-enough
//! snapshot (each value is exact, the set is not one atomic transaction — fine for monitoring).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walrelay_protocol::Lsn;

use crate::commit_path::{CommitPathSnapshot, LatencyHistogram, Sample};

#[derive(Debug, Default)]
pub struct ReceiverStats {
    received_lsn: AtomicU64,
    written_lsn: AtomicU64,
    flushed_lsn: AtomicU64,
    reported_flush_lsn: AtomicU64,
    server_wal_end: AtomicU64,
    bytes_received: AtomicU64,
    reconnects: AtomicU64,
    last_message_unix_ms: AtomicU64,
    timeline: AtomicU64,
    connected: AtomicU64,
    segments_completed: AtomicU64,
    failovers: AtomicU64,
    failover_lost_commits: AtomicU64,
    failover_orphaned_bytes: AtomicU64,
    /// The server's system identifier, once known (0 = not yet).
    system_identifier: AtomicU64,
    /// Commit-path latency (see [`crate::commit_path`]): received → durable, received →
    /// acknowledged.
    commit_durable: LatencyHistogram,
    commit_acknowledged: LatencyHistogram,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub received_lsn: Lsn,
    pub written_lsn: Lsn,
    pub flushed_lsn: Lsn,
    /// The flush position last reported to the server.
    pub reported_flush_lsn: Lsn,
    pub server_wal_end: Lsn,
    pub bytes_received: u64,
    pub reconnects: u64,
    /// Milliseconds since the Unix epoch of the last message from the server; 0 = none yet.
    pub last_message_unix_ms: u64,
    pub timeline: u32,
    pub connected: bool,
    pub segments_completed: u64,
    /// Times the server's history left the timeline the directory was on (a promotion followed).
    pub failovers: u64,
    /// Commits found in orphaned WAL (past the switchpoint on an old timeline): transactions the
    /// new primary never had.
    pub failover_lost_commits: u64,
    /// Bytes of orphaned WAL found.
    pub failover_orphaned_bytes: u64,
    /// The system identifier of the cluster streamed from, once a session learned it.
    pub system_identifier: Option<u64>,
}

impl StatsSnapshot {
    /// How long ago the last message from the server arrived; `None` before the first one. A clock
    /// that went backwards reads as zero.
    pub fn since_last_message(&self) -> Option<Duration> {
        (self.last_message_unix_ms != 0)
            .then(|| Duration::from_millis(now_ms().saturating_sub(self.last_message_unix_ms)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ReceiverStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| Lsn(a.load(Ordering::Relaxed));
        StatsSnapshot {
            received_lsn: l(&self.received_lsn),
            written_lsn: l(&self.written_lsn),
            flushed_lsn: l(&self.flushed_lsn),
            reported_flush_lsn: l(&self.reported_flush_lsn),
            server_wal_end: l(&self.server_wal_end),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_message_unix_ms: self.last_message_unix_ms.load(Ordering::Relaxed),
            timeline: self.timeline.load(Ordering::Relaxed) as u32,
            connected: self.connected.load(Ordering::Relaxed) != 0,
            segments_completed: self.segments_completed.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            failover_lost_commits: self.failover_lost_commits.load(Ordering::Relaxed),
            failover_orphaned_bytes: self.failover_orphaned_bytes.load(Ordering::Relaxed),
            system_identifier: Some(self.system_identifier.load(Ordering::Relaxed))
                .filter(|&s| s != 0),
        }
    }

    /// The commit-path latency histograms (received → durable, received → acknowledged).
    pub fn commit_path(&self) -> CommitPathSnapshot {
        CommitPathSnapshot {
            durable: self.commit_durable.snapshot(),
            acknowledged: self.commit_acknowledged.snapshot(),
        }
    }

    pub(crate) fn commit_sample(&self, sample: Sample) {
        match sample {
            Sample::Durable(d) => self.commit_durable.record(d),
            Sample::Acknowledged(d) => self.commit_acknowledged.record(d),
        }
    }

    pub(crate) fn received(&self, end: Lsn, bytes: u64) {
        self.received_lsn.fetch_max(end.0, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.message();
    }

    pub(crate) fn message(&self) {
        self.last_message_unix_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn server_end(&self, lsn: Lsn) {
        self.server_wal_end.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub(crate) fn disk(&self, written: Lsn, flushed: Lsn) {
        self.written_lsn.fetch_max(written.0, Ordering::Relaxed);
        self.flushed_lsn.fetch_max(flushed.0, Ordering::Relaxed);
    }

    pub(crate) fn reported(&self, flush: Lsn) {
        self.reported_flush_lsn
            .fetch_max(flush.0, Ordering::Relaxed);
    }

    pub(crate) fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_timeline(&self, tli: u32) {
        self.timeline.store(u64::from(tli), Ordering::Relaxed);
    }

    pub(crate) fn set_system_identifier(&self, sysid: u64) {
        self.system_identifier.store(sysid, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, c: bool) {
        self.connected.store(u64::from(c), Ordering::Relaxed);
    }

    pub(crate) fn failover(&self, lost_commits: u64, orphaned_bytes: u64) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
        self.failover_lost_commits
            .fetch_add(lost_commits, Ordering::Relaxed);
        self.failover_orphaned_bytes
            .fetch_add(orphaned_bytes, Ordering::Relaxed);
    }

    pub(crate) fn segment_completed(&self) {
        self.segments_completed.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_last_message() {
        let stats = ReceiverStats::default();
        assert_eq!(stats.snapshot().since_last_message(), None, "none yet");
        stats.message();
        let age = stats.snapshot().since_last_message().unwrap();
        assert!(age < Duration::from_secs(60), "{age:?}");
        let long_ago = StatsSnapshot {
            last_message_unix_ms: 1,
            ..Default::default()
        };
        assert!(long_ago.since_last_message().unwrap() > Duration::from_secs(365 * 86_400));
        let future = StatsSnapshot {
            last_message_unix_ms: u64::MAX,
            ..Default::default()
        };
        assert_eq!(future.since_last_message(), Some(Duration::ZERO));
    }
}
