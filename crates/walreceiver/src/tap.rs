//! The engine's seam for a relay (`walrelay serve`): what a relay learns from the engine while it
//! streams, and the two things it feeds back upstream. `walrelay receive` runs without one
//! ([`crate::run`]); a relay runs the same engine with one ([`crate::run_tapped`]).
//!
//! ```text
//!   upstream ──XLogData──► StreamLoop ──(timeline, lsn, bytes)──► WalObserver::received   (not yet durable)
//!                              │ disk progress ∧ validation
//!                              └──(timeline, lsn)──► watch: acknowledged                  (durable ∧ validated)
//!   upstream ◄──'r' flush ≤ flush_cap ◄── watch: flush_cap        (K-th downstream flush, --sync-quorum)
//!   upstream ◄──'h' ◄── watch: hot_standby_feedback                (the oldest downstream xmin)
//! ```
//!
//! # The acknowledged position
//! `acknowledged` carries the position the engine would report upstream as flushed: every byte
//! before it is fsynced in the archive and, with validation on, belongs to records whose CRC
//! passed (the stream loop's `acknowledgeable`). It moves forward only — on one timeline by
//! position, and to a higher timeline when the engine follows a timeline switch (the value then
//! names the new timeline, starting at the start of the segment holding the switch point, as the
//! engine writes it). A relay serves downstreams nothing beyond it. It is published only while a
//! stream runs, from the disk task's progress on the stream's own timeline.
//!
//! # The WAL bytes
//! [`WalObserver::received`] sees every XLogData payload in stream order, after the validator
//! accepted what it could check so far and before the bytes go to the disk task. A session that
//! reconnects starts again at a segment boundary, so the observer sees bytes it saw before (the
//! same bytes: the server only ever sends WAL it flushed); it must tolerate overlap.
//!
//! # The chain of relays
//! A relay reports, in a ParameterStatus of its own, a token of its own followed by its
//! upstream's chain. At each connection the engine reads the upstream's chain: one that holds
//! the relay's own token means the relay would stream from itself (directly, or through other
//! relays pointed back at it), and the engine stops with a definite error instead of waiting for
//! WAL that only it could produce.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use walrelay_protocol::{HotStandbyFeedback, Lsn, TimelineId};

/// A position on a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelinePosition {
    pub timeline: TimelineId,
    pub lsn: Lsn,
}

impl TimelinePosition {
    /// Whether `self` is ahead of `other`: a higher timeline, or further on the same one.
    pub fn is_ahead_of(&self, other: &TimelinePosition) -> bool {
        self.timeline > other.timeline || (self.timeline == other.timeline && self.lsn > other.lsn)
    }
}

/// Sees the WAL as it arrives (see the module documentation). Called on the network task: it
/// must not block.
pub trait WalObserver: Send + Sync {
    fn received(&self, timeline: TimelineId, lsn: Lsn, data: &Bytes);
}

/// The seam itself; every part is optional in effect (a watch nobody changes changes nothing).
pub struct StreamTap {
    pub observer: Arc<dyn WalObserver>,
    /// Published by the engine: the acknowledgeable position (see the module documentation).
    pub acknowledged: watch::Sender<TimelinePosition>,
    /// Read by the engine: the flush position reported upstream is at most this (the K-th
    /// highest downstream flush, for `--sync-quorum`). `None`: the engine's own position.
    /// With a cap, the engine reports as soon as either moves, as a synchronous standby does.
    pub flush_cap: Option<watch::Receiver<Lsn>>,
    /// Read by the engine: hot standby feedback to send upstream whenever it changes (and with
    /// every periodic status update); `None` sends nothing.
    pub hot_standby_feedback: watch::Receiver<Option<HotStandbyFeedback>>,
    /// The relay's place in a chain of relays (see the module documentation); `None` checks nothing.
    pub chain: Option<RelayChain>,
}

/// A relay's token and what it learns of its upstream's chain.
pub struct RelayChain {
    /// The ParameterStatus in which a relay reports its chain.
    pub parameter: &'static str,
    /// This relay's own token.
    pub own: String,
    /// Published by the engine at each connection: the upstream's chain ("" for a server).
    pub upstream: watch::Sender<String>,
}

impl RelayChain {
    /// Whether `upstream_chain` (as an upstream reported it) passes through this relay.
    pub fn holds_self(&self, upstream_chain: &str) -> bool {
        upstream_chain.split(',').any(|token| token == self.own)
    }
}

impl StreamTap {
    /// Publishes `position` if it is ahead of what was published.
    pub(crate) fn acknowledge(&self, position: TimelinePosition) {
        self.acknowledged.send_if_modified(|current| {
            if position.is_ahead_of(current) {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    /// `flush` capped by [`StreamTap::flush_cap`].
    pub(crate) fn cap(&self, flush: Lsn) -> Lsn {
        match &self.flush_cap {
            Some(cap) => flush.min(*cap.borrow()),
            None => flush,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl WalObserver for Nothing {
        fn received(&self, _: TimelineId, _: Lsn, _: &Bytes) {}
    }

    #[test]
    fn acknowledged_only_moves_forward() {
        let (tx, rx) = watch::channel(TimelinePosition {
            timeline: TimelineId::FIRST,
            lsn: Lsn::INVALID,
        });
        let (_cap_tx, cap_rx) = watch::channel(Lsn(500));
        let (_hs_tx, hs_rx) = watch::channel(None);
        let tap = StreamTap {
            observer: Arc::new(Nothing),
            acknowledged: tx,
            flush_cap: Some(cap_rx),
            hot_standby_feedback: hs_rx,
            chain: None,
        };
        let at = |t, l| TimelinePosition {
            timeline: TimelineId(t),
            lsn: Lsn(l),
        };
        tap.acknowledge(at(1, 100));
        tap.acknowledge(at(1, 90));
        assert_eq!(*rx.borrow(), at(1, 100));
        // A new timeline starts lower (at a segment start) and still wins.
        tap.acknowledge(at(2, 50));
        assert_eq!(*rx.borrow(), at(2, 50));
        tap.acknowledge(at(1, 1000));
        assert_eq!(*rx.borrow(), at(2, 50));
        assert_eq!(tap.cap(Lsn(700)), Lsn(500));
        assert_eq!(tap.cap(Lsn(300)), Lsn(300));
    }

    #[test]
    fn a_chain_through_the_relay_is_seen() {
        let (tx, _rx) = watch::channel(String::new());
        let chain = RelayChain {
            parameter: "walrelay_serve_chain",
            own: "b2".into(),
            upstream: tx,
        };
        assert!(chain.holds_self("b2"));
        assert!(chain.holds_self("a1,b2,c3"));
        assert!(!chain.holds_self(""));
        assert!(!chain.holds_self("a1,b22,c3"));
    }
}
