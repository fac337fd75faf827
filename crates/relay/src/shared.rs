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
    /// This relay's token and its upstream's chain, reported to downstreams.
    pub chain: ChainView,
    next_pid: AtomicI32,
}

/// What makes one run of a relay itself, drawn at its start.
pub struct Identity {
    pub mock_secret: [u8; 32],
    pub chain: ChainView,
}

/// The relay's place in a chain of relays ([`walrelay_walreceiver::tap`]): its own token and
/// the chain its upstream reported at the last connection.
pub struct ChainView {
    pub own: String,
    pub upstream: watch::Receiver<String>,
}

/// Tokens reported at most: a longer chain (no one builds one) is cut, not grown without bound.
const MAX_CHAIN: usize = 16;

impl ChainView {
    /// The chain a downstream is told: this relay, then its upstream's chain.
    pub fn reported(&self) -> String {
        let upstream = self.upstream.borrow();
        std::iter::once(self.own.as_str())
            .chain(upstream.split(',').filter(|t| !t.is_empty()))
            .take(MAX_CHAIN)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Shared {
    pub fn new(
        config: RelayConfig,
        upstream: UpstreamInfo,
        upstream_params: ConnectParams,
        feed: Arc<WalFeed>,
        slots: SlotRegistry,
        shutdown: watch::Receiver<bool>,
        identity: Identity,
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
            mock_secret: identity.mock_secret,
            chain: identity.chain,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_chain_is_the_relay_then_its_upstream_s_chain_cut_at_sixteen() {
        let (tx, rx) = watch::channel(String::new());
        let view = ChainView {
            own: "aa".into(),
            upstream: rx,
        };
        assert_eq!(view.reported(), "aa");
        tx.send_replace("bb,cc".into());
        assert_eq!(view.reported(), "aa,bb,cc");
        let long = (0..40)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        tx.send_replace(long);
        let reported = view.reported();
        assert_eq!(reported.split(',').count(), MAX_CHAIN);
        assert!(reported.starts_with("aa,t0,t1,"));
    }
}
