//! Who is connected downstream and how far each got: the relay's `pg_stat_replication`.
//!
//! Every session registers here ([`RelayStats::register`]) and reports what it sends and what
//! its client confirms. Three things are derived from it:
//!
//! * metrics per downstream ([`RelayStats::snapshot`]): state, positions, lag in bytes and in
//!   seconds — the time since the relay could first have sent the WAL the downstream has not yet
//!   flushed, as PostgreSQL's `flush_lag` (a [`LagTracker`] of when the served position moved);
//! * `--sync-quorum K`: the flush position the relay reports upstream is the K-th highest flush
//!   position among streaming downstreams ([`quorum_flush`]); it never moves back, and with fewer
//!   than K downstreams it does not move at all — a synchronous primary then waits, which is the
//!   point;
//! * hot standby feedback: the oldest xmin any downstream asked for is forwarded upstream
//!   ([`oldest_feedback`]), as a cascading standby forwards its standbys' horizons.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use walrelay_protocol::{HotStandbyFeedback, Lsn, TimelineId};

/// What a downstream is doing, as `pg_stat_replication.state` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownstreamState {
    /// Connected, between commands.
    Startup,
    /// Streaming, not yet caught up with the relay.
    Catchup,
    /// Streaming, caught up at least once.
    Streaming,
    /// A base backup proxied to the upstream.
    Backup,
}

impl DownstreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            DownstreamState::Startup => "startup",
            DownstreamState::Catchup => "catchup",
            DownstreamState::Streaming => "streaming",
            DownstreamState::Backup => "backup",
        }
    }
}

/// One downstream as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamSnapshot {
    /// The process id the session reported in BackendKeyData.
    pub pid: i32,
    /// From the startup packet (a standby's `cluster_name`, or `walreceiver`).
    pub application_name: String,
    pub user: String,
    pub client_addr: SocketAddr,
    pub state: DownstreamState,
    /// The timeline streamed (none before START_REPLICATION).
    pub timeline: Option<TimelineId>,
    /// End of the WAL sent.
    pub sent_lsn: Lsn,
    /// What its last standby status update said (0/0: not reported).
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    /// The relay's slot it streams through, if any.
    pub slot: Option<String>,
    /// The relay's servable position minus the downstream's flush position — its write position
    /// when it reports no flush (pg_receivewal without a slot), what was sent to it when it
    /// reports nothing.
    pub lag_bytes: u64,
    pub lag: Duration,
    pub backend_start: SystemTime,
}

#[derive(Debug)]
struct Entry {
    snapshot: DownstreamSnapshot,
    feedback: Option<HotStandbyFeedback>,
}

/// The registry; shared by the sessions, the engine's seam and the metrics endpoint.
#[derive(Debug)]
pub struct RelayStats {
    entries: Mutex<BTreeMap<i32, Entry>>,
    lag: Mutex<LagTracker>,
    sync_quorum: Option<usize>,
    flush_cap: watch::Sender<Lsn>,
    feedback: watch::Sender<Option<HotStandbyFeedback>>,
    served: Mutex<Lsn>,
}

impl RelayStats {
    /// `sync_quorum`: `--sync-quorum K`, if given.
    pub fn new(sync_quorum: Option<usize>) -> Self {
        RelayStats {
            entries: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(LagTracker::default()),
            sync_quorum,
            flush_cap: watch::channel(Lsn::INVALID).0,
            feedback: watch::channel(None).0,
            served: Mutex::new(Lsn::INVALID),
        }
    }

    /// The cap on the flush position reported upstream (`--sync-quorum`), for the engine.
    pub fn flush_cap(&self) -> Option<watch::Receiver<Lsn>> {
        self.sync_quorum.map(|_| self.flush_cap.subscribe())
    }

    /// The hot standby feedback to forward upstream, for the engine.
    pub fn hot_standby_feedback(&self) -> watch::Receiver<Option<HotStandbyFeedback>> {
        self.feedback.subscribe()
    }

    /// Every downstream, by pid.
    pub fn snapshot(&self) -> Vec<DownstreamSnapshot> {
        let served = *lock(&self.served);
        let lag = lock(&self.lag);
        lock(&self.entries)
            .values()
            .map(|e| {
                let mut s = e.snapshot.clone();
                // What the downstream has: its flush position, else (pg_receivewal without a
                // slot reports none) its write position, else what was sent to it — a stalled
                // client must not read as caught up.
                let confirmed = [s.flush_lsn, s.write_lsn, s.sent_lsn]
                    .into_iter()
                    .find(|l| l.is_valid())
                    .unwrap_or(Lsn::INVALID);
                if confirmed.is_valid() {
                    s.lag_bytes = served.saturating_sub(confirmed);
                    s.lag = lag.lag_of(confirmed, Instant::now());
                }
                s
            })
            .collect()
    }

    /// How many sessions are connected.
    pub fn connected(&self) -> usize {
        lock(&self.entries).len()
    }

    pub(crate) fn register(
        &self,
        pid: i32,
        client_addr: SocketAddr,
        user: &str,
        application_name: &str,
    ) {
        lock(&self.entries).insert(
            pid,
            Entry {
                snapshot: DownstreamSnapshot {
                    pid,
                    application_name: application_name.to_string(),
                    user: user.to_string(),
                    client_addr,
                    state: DownstreamState::Startup,
                    timeline: None,
                    sent_lsn: Lsn::INVALID,
                    write_lsn: Lsn::INVALID,
                    flush_lsn: Lsn::INVALID,
                    apply_lsn: Lsn::INVALID,
                    slot: None,
                    lag_bytes: 0,
                    lag: Duration::ZERO,
                    backend_start: SystemTime::now(),
                },
                feedback: None,
            },
        );
    }

    pub(crate) fn deregister(&self, pid: i32) {
        let had_feedback = lock(&self.entries)
            .remove(&pid)
            .is_some_and(|e| e.feedback.is_some());
        if had_feedback {
            self.publish_feedback();
        }
        self.publish_quorum();
    }

    fn update(&self, pid: i32, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = lock(&self.entries).get_mut(&pid) {
            f(e);
        }
    }

    pub(crate) fn set_state(&self, pid: i32, state: DownstreamState) {
        self.update(pid, |e| e.snapshot.state = state);
    }

    /// Streaming starts on `timeline` at `start`, through `slot`.
    pub(crate) fn streaming(&self, pid: i32, timeline: TimelineId, start: Lsn, slot: Option<&str>) {
        self.update(pid, |e| {
            e.snapshot.state = DownstreamState::Catchup;
            e.snapshot.timeline = Some(timeline);
            e.snapshot.sent_lsn = start;
            e.snapshot.slot = slot.map(str::to_string);
        });
    }

    pub(crate) fn sent(&self, pid: i32, sent: Lsn, caught_up: bool) {
        self.update(pid, |e| {
            e.snapshot.sent_lsn = sent;
            if caught_up {
                e.snapshot.state = DownstreamState::Streaming;
            }
        });
    }

    /// A standby status update: its write, flush and apply positions (0/0 = not reported).
    pub(crate) fn reply(&self, pid: i32, write: Lsn, flush: Lsn, apply: Lsn) {
        self.update(pid, |e| {
            e.snapshot.write_lsn = write;
            e.snapshot.flush_lsn = flush;
            e.snapshot.apply_lsn = apply;
        });
        self.publish_quorum();
    }

    /// Hot standby feedback from a downstream; xmin and catalog_xmin both invalid means "off".
    pub(crate) fn feedback(&self, pid: i32, hs: HotStandbyFeedback) {
        let on = hs.xmin >= FIRST_NORMAL_XID || hs.catalog_xmin >= FIRST_NORMAL_XID;
        self.update(pid, |e| e.feedback = on.then_some(hs));
        self.publish_feedback();
    }

    /// The relay's servable position moved (for lag).
    pub(crate) fn served(&self, lsn: Lsn) {
        let mut served = lock(&self.served);
        if lsn > *served {
            *served = lsn;
            lock(&self.lag).record(lsn, Instant::now());
        }
    }

    fn publish_quorum(&self) {
        let Some(k) = self.sync_quorum else { return };
        let flushes: Vec<Lsn> = lock(&self.entries)
            .values()
            .filter(|e| {
                matches!(
                    e.snapshot.state,
                    DownstreamState::Streaming | DownstreamState::Catchup
                )
            })
            .map(|e| e.snapshot.flush_lsn)
            .collect();
        if let Some(cap) = quorum_flush(&flushes, k) {
            self.flush_cap.send_if_modified(|c| {
                let moved = cap > *c;
                if moved {
                    *c = cap;
                }
                moved
            });
        }
    }

    fn publish_feedback(&self) {
        let all: Vec<HotStandbyFeedback> = lock(&self.entries)
            .values()
            .filter_map(|e| e.feedback)
            .collect();
        let oldest = oldest_feedback(&all);
        self.feedback.send_if_modified(|current| {
            // Once feedback was sent, "nobody wants any" is said explicitly (xmin 0 clears the
            // upstream's horizon for us), not by silence.
            let next = match (oldest, current.is_some()) {
                (Some(h), _) => Some(h),
                (None, true) => Some(HotStandbyFeedback::default()),
                (None, false) => None,
            };
            let changed = next.map(key) != current.map(key);
            *current = next;
            changed
        });
    }
}

/// What identifies a feedback value (the client time does not).
fn key(h: HotStandbyFeedback) -> (u32, u32, u32, u32) {
    (h.xmin, h.xmin_epoch, h.catalog_xmin, h.catalog_xmin_epoch)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these plain values half-updated in a way that
    // matters more than stopping every session would.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `FirstNormalTransactionId`: xids below are special (invalid, bootstrap, frozen).
const FIRST_NORMAL_XID: u32 = 3;

/// The K-th highest valid flush position, if at least K downstreams reported one.
pub fn quorum_flush(flushes: &[Lsn], k: usize) -> Option<Lsn> {
    if k == 0 {
        return None;
    }
    let mut valid: Vec<Lsn> = flushes.iter().copied().filter(|l| l.is_valid()).collect();
    valid.sort_unstable_by(|a, b| b.cmp(a));
    valid.get(k - 1).copied()
}

/// The oldest horizon of several downstreams: the minimum xmin and the minimum catalog xmin,
/// each compared with its epoch (a 64-bit transaction id), ignoring invalid ones.
pub fn oldest_feedback(all: &[HotStandbyFeedback]) -> Option<HotStandbyFeedback> {
    let full = |xid: u32, epoch: u32| {
        (xid >= FIRST_NORMAL_XID).then(|| (u64::from(epoch) << 32) | u64::from(xid))
    };
    let xmin = all.iter().filter_map(|h| full(h.xmin, h.xmin_epoch)).min();
    let catalog = all
        .iter()
        .filter_map(|h| full(h.catalog_xmin, h.catalog_xmin_epoch))
        .min();
    if xmin.is_none() && catalog.is_none() {
        return None;
    }
    let split = |v: Option<u64>| v.map_or((0, 0), |v| (v as u32, (v >> 32) as u32));
    let (xmin, xmin_epoch) = split(xmin);
    let (catalog_xmin, catalog_xmin_epoch) = split(catalog);
    Some(HotStandbyFeedback {
        client_time: 0,
        xmin,
        xmin_epoch,
        catalog_xmin,
        catalog_xmin_epoch,
    })
}

/// When the relay's servable position passed each point, to tell how old the WAL is that a
/// downstream has not yet confirmed (PostgreSQL's `LagTracker`, simplified: one series, samples
/// thinned to a bounded number).
#[derive(Debug, Default)]
pub struct LagTracker {
    samples: VecDeque<(Lsn, Instant)>,
}

/// Samples kept; older ones are dropped (the lag of a downstream further behind reads as at
/// least the age of the oldest sample).
const LAG_SAMPLES: usize = 4096;
/// Samples closer together than this replace each other's end.
const LAG_RESOLUTION: Duration = Duration::from_millis(10);

impl LagTracker {
    pub fn record(&mut self, lsn: Lsn, at: Instant) {
        let several = self.samples.len() > 1;
        if let Some((last_lsn, last_at)) = self.samples.back_mut() {
            if lsn <= *last_lsn {
                return;
            }
            if at.saturating_duration_since(*last_at) < LAG_RESOLUTION && several {
                *last_lsn = lsn;
                return;
            }
        }
        if self.samples.len() == LAG_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((lsn, at));
    }

    /// How long ago the relay could first serve WAL past `confirmed`: zero when nothing newer
    /// was served.
    pub fn lag_of(&self, confirmed: Lsn, now: Instant) -> Duration {
        // The first sample beyond `confirmed` is when the unconfirmed WAL became servable.
        let i = self.samples.partition_point(|(l, _)| *l <= confirmed);
        match self.samples.get(i) {
            Some((_, at)) => now.saturating_duration_since(*at),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_the_kth_highest_valid_flush() {
        let l = |v| Lsn(v);
        let flushes = [l(300), l(0), l(100), l(200)];
        assert_eq!(quorum_flush(&flushes, 1), Some(l(300)));
        assert_eq!(quorum_flush(&flushes, 2), Some(l(200)));
        assert_eq!(quorum_flush(&flushes, 3), Some(l(100)));
        assert_eq!(quorum_flush(&flushes, 4), None, "0/0 reports nothing");
        assert_eq!(quorum_flush(&[], 1), None);
    }

    fn hs(xmin: u32, epoch: u32, catalog: u32) -> HotStandbyFeedback {
        HotStandbyFeedback {
            client_time: 0,
            xmin,
            xmin_epoch: epoch,
            catalog_xmin: catalog,
            catalog_xmin_epoch: epoch,
        }
    }

    #[test]
    fn oldest_feedback_compares_with_epochs() {
        assert_eq!(oldest_feedback(&[]), None);
        assert_eq!(oldest_feedback(&[hs(0, 0, 0)]), None, "feedback off");
        let got =
            oldest_feedback(&[hs(500, 1, 0), hs(4_000_000_000, 0, 0), hs(900, 1, 0)]).unwrap();
        assert_eq!((got.xmin, got.xmin_epoch), (4_000_000_000, 0));
        assert_eq!((got.catalog_xmin, got.catalog_xmin_epoch), (0, 0));
        let got = oldest_feedback(&[hs(800, 2, 700), hs(900, 2, 0)]).unwrap();
        assert_eq!((got.xmin, got.catalog_xmin), (800, 700));
    }

    #[test]
    fn registry_publishes_quorum_and_feedback() {
        let stats = RelayStats::new(Some(2));
        let mut cap = stats.flush_cap().unwrap();
        let mut fb = stats.hot_standby_feedback();
        let addr: SocketAddr = "127.0.0.1:5".parse().unwrap();
        for pid in [1, 2, 3] {
            stats.register(pid, addr, "u", "standby");
            stats.streaming(pid, TimelineId(1), Lsn(0), None);
        }
        stats.reply(1, Lsn(500), Lsn(500), Lsn(0));
        assert_eq!(*cap.borrow_and_update(), Lsn(0), "one of two is not enough");
        stats.reply(2, Lsn(400), Lsn(400), Lsn(0));
        assert_eq!(*cap.borrow_and_update(), Lsn(400));
        stats.reply(3, Lsn(450), Lsn(450), Lsn(0));
        assert_eq!(*cap.borrow_and_update(), Lsn(450));
        // A downstream leaving never moves the cap back.
        stats.deregister(1);
        assert_eq!(*cap.borrow_and_update(), Lsn(450));

        stats.feedback(2, hs(1000, 0, 0));
        stats.feedback(3, hs(900, 0, 0));
        assert_eq!(fb.borrow_and_update().map(|h| h.xmin), Some(900));
        stats.deregister(3);
        assert_eq!(fb.borrow_and_update().map(|h| h.xmin), Some(1000));
        stats.feedback(2, hs(0, 0, 0));
        assert_eq!(
            fb.borrow_and_update().map(|h| h.xmin),
            Some(0),
            "cleared explicitly"
        );

        stats.served(Lsn(1000));
        let snap = stats.snapshot();
        let two = snap.iter().find(|s| s.pid == 2).unwrap();
        assert_eq!(two.lag_bytes, 600);
        assert_eq!(two.state.as_str(), "catchup");
        // pg_receivewal without a slot reports no flush position: its write position counts,
        // not "caught up".
        stats.reply(2, Lsn(300), Lsn(0), Lsn(0));
        let snap = stats.snapshot();
        let two = snap.iter().find(|s| s.pid == 2).unwrap();
        assert_eq!(two.lag_bytes, 700);
        assert!(RelayStats::new(None).flush_cap().is_none());
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unconfirmed_wal() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.record(Lsn(100), t0);
        t.record(Lsn(200), t0 + Duration::from_secs(1));
        t.record(Lsn(300), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.lag_of(Lsn(300), now), Duration::ZERO);
        assert_eq!(t.lag_of(Lsn(250), now), Duration::from_secs(3));
        assert_eq!(t.lag_of(Lsn(100), now), Duration::from_secs(4));
        assert_eq!(t.lag_of(Lsn(50), now), Duration::from_secs(5));
    }
}
