//! The latency walrelay adds on a commit's path: from the moment the oldest not-yet-durable WAL
//! byte was read off the socket (its CopyData message) to
//!
//! * **durable** — the fsync covering it returned (as the receiving task learns it: at once for the
//!   inline disk task of `--synchronous`, after the disk thread's hand-off otherwise), and
//! * **acknowledged** — the standby status update whose flush position covers it was written to
//!   the socket (only when flush positions are reported: `--synchronous`, a slot, `pg_wal` mode).
//!
//! One sample per flush cycle and stage: a cycle's sample is the wait of the oldest message it
//! made durable (or acknowledged); the messages that arrived after it in the same cycle waited less.
//! A message counts once its last byte is covered.
//!
//! Cheap by construction: one `Instant::now()` per XLogData message, a fixed ring of pending
//! messages (allocated once per stream; when full, neighbours are merged keeping the older receipt
//! time), and per cycle a bucket search and three relaxed atomic adds into a [`LatencyHistogram`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use walrelay_protocol::Lsn;

/// Upper bounds (inclusive, in microseconds) of the histogram's buckets; a last bucket takes the
/// rest (`+Inf`). Finer around the fsync floor (~100 µs – 1 ms) than above.
pub const BUCKET_BOUNDS_MICROS: [u64; 22] = [
    50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

const BUCKETS: usize = BUCKET_BOUNDS_MICROS.len() + 1;

/// A fixed-bucket latency histogram on relaxed atomics: one writer (the stream task), any number
/// of readers (metrics, the exit log).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let micros = d.as_micros();
        let i = BUCKET_BOUNDS_MICROS.partition_point(|&b| u128::from(b) < micros);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0; BUCKETS];
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            counts,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`LatencyHistogram`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative), the last one past the largest bound.
    pub counts: [u64; BUCKETS],
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Samples, the sum of the bucket counts (so that it always equals the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(upper bound in seconds or None for +Inf, cumulative count)` per bucket, as exported.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let mut total = 0;
        self.counts.iter().enumerate().map(move |(i, c)| {
            total += c;
            let bound = BUCKET_BOUNDS_MICROS.get(i).map(|&b| b as f64 / 1e6);
            (bound, total)
        })
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does (the first bucket starts at 0; a quantile in the
    /// `+Inf` bucket is the largest bound). `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&upper) = BUCKET_BOUNDS_MICROS.get(i) else {
                    break;
                };
                let lower = if i == 0 {
                    0
                } else {
                    BUCKET_BOUNDS_MICROS[i - 1]
                };
                let into = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some((lower as f64 + (upper - lower) as f64 * into) / 1e6);
            }
            below += c;
        }
        Some(BUCKET_BOUNDS_MICROS[BUCKETS - 2] as f64 / 1e6)
    }
}

/// The two stages of [`ReceiverStats`](crate::ReceiverStats)' commit-path latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitPathSnapshot {
    pub durable: HistogramSnapshot,
    pub acknowledged: HistogramSnapshot,
}

/// Messages the tracker follows one by one before it merges neighbours.
const TRACKED: usize = 64;

/// The stream task's bookkeeping: receipt time and end of the messages received and not yet
/// acknowledged (or not yet durable, when flush positions are not reported), oldest first.
#[derive(Debug)]
pub(crate) struct CommitPathTracker {
    pending: VecDeque<(Instant, Lsn)>,
    /// How many of the first pending messages are durable.
    durable: usize,
    /// Whether status updates carry the flush position (otherwise there is nothing to wait for).
    acknowledges: bool,
}

/// What a step measured, for the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sample {
    Durable(Duration),
    Acknowledged(Duration),
}

impl CommitPathTracker {
    pub fn new(acknowledges: bool) -> Self {
        CommitPathTracker {
            pending: VecDeque::with_capacity(TRACKED),
            durable: 0,
            acknowledges,
        }
    }

    /// A message ending at `end` was read at `at`.
    pub fn received(&mut self, at: Instant, end: Lsn) {
        if self.pending.len() >= TRACKED {
            if self.durable < self.pending.len() {
                // Join the newest pending message: its (older) receipt time stands for both.
                if let Some(back) = self.pending.back_mut() {
                    back.1 = end;
                }
                return;
            }
            // All durable, none acknowledged yet: join the two oldest (the older time stays).
            if let Some((_, second)) = self.pending.remove(1) {
                self.pending[0].1 = second;
                self.durable -= 1;
            }
        }
        self.pending.push_back((at, end));
    }

    /// The durable position is now `flush`.
    pub fn durable(&mut self, flush: Lsn, now: Instant) -> Option<Sample> {
        let first = self.durable;
        while self
            .pending
            .get(self.durable)
            .is_some_and(|&(_, end)| end <= flush)
        {
            self.durable += 1;
        }
        let sample = (self.durable > first)
            .then(|| Sample::Durable(now.saturating_duration_since(self.pending[first].0)));
        if !self.acknowledges {
            self.pending.drain(..self.durable);
            self.durable = 0;
        }
        sample
    }

    /// A status update reporting `flush` was written to the socket.
    pub fn acknowledged(&mut self, flush: Lsn, now: Instant) -> Option<Sample> {
        let oldest = self.pending.front()?.0;
        let mut n = 0;
        while n < self.durable && self.pending[n].1 <= flush {
            n += 1;
        }
        if n == 0 {
            return None;
        }
        self.pending.drain(..n);
        self.durable -= n;
        Some(Sample::Acknowledged(now.saturating_duration_since(oldest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn buckets_sum_and_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            h.record(us(180)); // (150, 200]
        }
        h.record(us(200)); // inclusive bound: still (150, 200]
        h.record(us(2_000_000)); // past 1 s: +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.counts[4], 99);
        assert_eq!(s.counts[BUCKETS - 1], 1);
        assert!((s.sum_seconds() - (98.0 * 180e-6 + 200e-6 + 2.0)).abs() < 1e-9);
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 > 150e-6 && p50 <= 200e-6, "{p50}");
        assert_eq!(s.quantile(0.99), Some(200e-6));
        assert_eq!(
            s.quantile(1.0),
            Some(1.0),
            "the +Inf bucket reads as the largest bound"
        );
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.len(), BUCKETS);
        assert_eq!(cumulative[3], (Some(150e-6), 0));
        assert_eq!(cumulative[4], (Some(200e-6), 99));
        assert_eq!(cumulative[BUCKETS - 1], (None, 100));
        h.record(us(10));
        assert_eq!(h.snapshot().counts[0], 1);
    }

    #[test]
    fn a_cycle_measures_its_oldest_message_to_durable_and_to_acknowledged() {
        let t0 = Instant::now();
        let mut t = CommitPathTracker::new(true);
        t.received(t0, Lsn(100));
        t.received(t0 + us(50), Lsn(200));
        // Durable up to the middle of the second message: only the first counts.
        assert_eq!(
            t.durable(Lsn(150), t0 + us(300)),
            Some(Sample::Durable(us(300)))
        );
        assert_eq!(t.durable(Lsn(150), t0 + us(310)), None, "nothing new");
        assert_eq!(
            t.durable(Lsn(200), t0 + us(400)),
            Some(Sample::Durable(us(350)))
        );
        // An update reporting less than a whole message acknowledges nothing.
        assert_eq!(t.acknowledged(Lsn(99), t0 + us(420)), None);
        assert_eq!(
            t.acknowledged(Lsn(200), t0 + us(450)),
            Some(Sample::Acknowledged(us(450)))
        );
        assert_eq!(t.acknowledged(Lsn(200), t0 + us(460)), None);
        // Not durable yet: not acknowledgeable either.
        t.received(t0 + us(500), Lsn(300));
        assert_eq!(t.acknowledged(Lsn(300), t0 + us(600)), None);
    }

    #[test]
    fn without_acknowledgements_durable_messages_are_forgotten() {
        let t0 = Instant::now();
        let mut t = CommitPathTracker::new(false);
        for i in 0..1000u64 {
            t.received(t0 + us(i), Lsn(i + 1));
            assert!(t.durable(Lsn(i + 1), t0 + us(i + 5)).is_some());
        }
        assert!(t.pending.is_empty());
        assert_eq!(t.acknowledged(Lsn(1000), t0), None);
    }

    #[test]
    fn a_full_ring_merges_and_keeps_the_older_time() {
        let t0 = Instant::now();
        let mut t = CommitPathTracker::new(true);
        for i in 0..(TRACKED as u64 + 10) {
            t.received(t0 + us(i), Lsn(i + 1));
        }
        assert_eq!(t.pending.len(), TRACKED);
        assert_eq!(
            t.pending.back(),
            Some(&(t0 + us(TRACKED as u64 - 1), Lsn(74)))
        );
        assert_eq!(
            t.durable(Lsn(74), t0 + us(100)),
            Some(Sample::Durable(us(100)))
        );
        // All durable, none acknowledged: the two oldest join.
        t.received(t0 + us(200), Lsn(75));
        assert_eq!(t.pending.len(), TRACKED);
        assert_eq!(t.pending[0], (t0, Lsn(2)));
        assert_eq!(t.durable, TRACKED - 1);
        assert_eq!(
            t.acknowledged(Lsn(74), t0 + us(300)),
            Some(Sample::Acknowledged(us(300)))
        );
        assert_eq!(t.pending.len(), 1);
        assert_eq!(t.durable, 0);
    }
}
