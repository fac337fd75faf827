//! What every session of one relay shares.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use walrelay_client::ConnectParams;

use crate::config::RelayConfig;
use crate::downstreams::RelayStats;
use crate::slots::SlotRegistry;
use crate::upstream::UpstreamInfo;
use crate::wal_feed::WalFeed;

pub struct Shared {
    /// The relay's settings (`--listen`, `--auth`, limits).
    pub config: RelayConfig,
    /// Who the relay speaks for: the upstream's identity, version and settings.
    pub upstream: UpstreamInfo,
    /// How to reach the upstream for proxied commands (BASE_BACKUP).
    pub upstream_params: ConnectParams,
    /// What may be served, and the bytes.
    pub feed: Arc<WalFeed>,
    /// The relay's replication slots.
    pub slots: SlotRegistry,
    /// Every downstream's state (metrics, quorum, feedback).
    pub stats: Arc<RelayStats>,
    /// Set when the relay stops: sessions say goodbye and close.
    pub shutdown: watch::Receiver<bool>,
    /// Salts the mock SCRAM verifier of unknown users.
    pub mock_secret: [u8; 32],
    next_pid: AtomicI32,
}

impl Shared {
    pub fn new(
        config: RelayConfig,
        upstream: UpstreamInfo,
        upstream_params: ConnectParams,
        feed: Arc<WalFeed>,
        slots: SlotRegistry,
        shutdown: watch::Receiver<bool>,
        mock_secret: [u8; 32],
    ) -> Self {
        let stats = config.stats.clone();
        // Distinct, nonzero pids: clients name temporary slots after them (pg_basebackup_<pid>,
        // pg_walreceiver_<pid>). Start near our own to look like one.
        let first = i32::try_from(std::process::id() % 1_000_000).unwrap_or(1) * 100 + 1;
        Shared {
            config,
            upstream,
            upstream_params,
            feed,
            slots,
            stats,
            shutdown,
            mock_secret,
            next_pid: AtomicI32::new(first.max(1)),
        }
    }

    /// A process id for a new session.
    pub fn next_pid(&self) -> i32 {
        loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
            if pid > 0 {
                return pid;
            }
            // Wrapped around: start again from 1.
            let _ = self.next_pid.compare_exchange(
                pid.wrapping_add(1),
                1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}
