//! Live counters of a running subset, for metrics and health checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use walrelay_protocol::Lsn;

/// What the subset is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Starting,
    Copying,
    Streaming,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Copying => "copying",
            Phase::Streaming => "streaming",
        }
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters updated by the run as it goes (all relaxed atomics).
        #[derive(Debug, Default)]
        pub struct SubsetStats {
            phase: AtomicU64,
            $($name: AtomicU64,)*
        }

        /// A copy of the counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct SubsetStatsSnapshot {
            pub phase: Phase,
            $(pub $name: u64,)*
        }

        impl SubsetStats {
            pub fn snapshot(&self) -> SubsetStatsSnapshot {
                SubsetStatsSnapshot {
                    phase: match self.phase.load(Ordering::Relaxed) {
                        1 => Phase::Copying,
                        2 => Phase::Streaming,
                        _ => Phase::Starting,
                    },
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    tables_total,
    tables_synced,
    rows_copied,
    bytes_copied,
    received_lsn,
    applied_lsn,
    confirmed_lsn,
    source_wal_end,
    transactions_applied,
    transactions_skipped,
    inserts,
    updates,
    deletes,
    truncates,
    streamed_transactions,
    streamed_bytes,
    schema_changes,
    skipped_transactions,
    sequences_advanced,
    reconnects,
    connected,
    last_message_unix_ms,
);

/// Events counted by [`SubsetStats::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// A transaction streamed before its commit was applied.
    StreamedTransactions,
    /// Bytes of streamed transactions spilled.
    StreamedBytes,
    /// A schema change followed on the target.
    SchemaChanges,
    /// A transaction left out (`--skip-lsn`).
    SkippedTransactions,
    /// Target sequences moved.
    SequencesAdvanced,
}

fn max(a: &AtomicU64, v: u64) {
    a.fetch_max(v, Ordering::Relaxed);
}

fn add(a: &AtomicU64, v: u64) {
    a.fetch_add(v, Ordering::Relaxed);
}

impl SubsetStats {
    pub(crate) fn set_phase(&self, p: Phase) {
        let v = match p {
            Phase::Starting => 0,
            Phase::Copying => 1,
            Phase::Streaming => 2,
        };
        self.phase.store(v, Ordering::Relaxed);
    }

    pub(crate) fn set_tables(&self, total: u64, synced: u64) {
        self.tables_total.store(total, Ordering::Relaxed);
        self.tables_synced.store(synced, Ordering::Relaxed);
    }

    pub(crate) fn table_synced(&self, rows: u64) {
        add(&self.tables_synced, 1);
        add(&self.rows_copied, rows);
    }

    pub(crate) fn copied_bytes(&self, n: u64) {
        add(&self.bytes_copied, n);
    }

    pub(crate) fn received(&self, lsn: Lsn) {
        max(&self.received_lsn, lsn.0);
        max(&self.source_wal_end, lsn.0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_message_unix_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn applied(&self, lsn: Lsn) {
        max(&self.applied_lsn, lsn.0);
    }

    pub(crate) fn confirmed(&self, lsn: Lsn) {
        max(&self.confirmed_lsn, lsn.0);
    }

    pub(crate) fn transaction(&self, applied: bool) {
        add(
            if applied {
                &self.transactions_applied
            } else {
                &self.transactions_skipped
            },
            1,
        );
    }

    pub(crate) fn change(&self, kind: crate::apply::ChangeKind) {
        use crate::apply::ChangeKind::*;
        add(
            match kind {
                Insert => &self.inserts,
                Update => &self.updates,
                Delete => &self.deletes,
                Truncate => &self.truncates,
            },
            1,
        );
    }

    pub(crate) fn count(&self, what: Count, n: u64) {
        add(
            match what {
                Count::StreamedTransactions => &self.streamed_transactions,
                Count::StreamedBytes => &self.streamed_bytes,
                Count::SchemaChanges => &self.schema_changes,
                Count::SkippedTransactions => &self.skipped_transactions,
                Count::SequencesAdvanced => &self.sequences_advanced,
            },
            n,
        );
    }

    pub(crate) fn reconnect(&self) {
        add(&self.reconnects, 1);
    }

    pub(crate) fn set_connected(&self, on: bool) {
        self.connected.store(u64::from(on), Ordering::Relaxed);
    }
}

impl SubsetStatsSnapshot {
    /// Time since the last message from the source, if any arrived.
    pub fn since_last_message(&self) -> Option<std::time::Duration> {
        if self.last_message_unix_ms == 0 {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Some(std::time::Duration::from_millis(
            now.saturating_sub(self.last_message_unix_ms),
        ))
    }
}
