//! The fan-out buffer: the newest WAL the upstream sent, in memory, shared by every downstream.
//!
//! The engine hands each XLogData payload to the buffer as it arrives ([`WalBuffer::push`],
//! through the engine's [`walrelay_walreceiver::WalObserver`]); downstreams copy slices out of it
//! ([`WalBuffer::get`]) up to the position the relay may serve (durable and validated — the
//! buffer itself holds bytes that are neither yet, and never decides what may be sent). Chunks
//! are `Bytes` shared with the engine: pushing costs no copy, and a downstream holding a slice
//! keeps only that chunk alive.
//!
//! The buffer is bounded: past its capacity the oldest chunks go. A downstream whose position
//! fell out of it (a slow standby, a catch-up from old WAL) reads from the archive's segment
//! files instead and comes back to the buffer once it caught up — it never holds up the upstream
//! or the other downstreams.
//!
//! It follows one timeline, the one the engine streams; a push on another timeline, or one that
//! does not continue the buffered bytes (the engine reconnected at an earlier segment start and
//! re-sends what is here already: the overlap is skipped; a gap: the buffer starts over), keeps
//! the buffer contiguous.

use std::collections::VecDeque;

use bytes::Bytes;
use walrelay_protocol::{Lsn, TimelineId};

/// The buffered WAL of one timeline: contiguous from `start` to `end`.
#[derive(Debug)]
pub struct WalBuffer {
    timeline: TimelineId,
    start: Lsn,
    end: Lsn,
    /// Chunks in order; each one's start is the previous one's end.
    chunks: VecDeque<(Lsn, Bytes)>,
    bytes: usize,
    capacity: usize,
}

impl WalBuffer {
    pub fn new(capacity: usize) -> Self {
        WalBuffer {
            timeline: TimelineId::FIRST,
            start: Lsn::INVALID,
            end: Lsn::INVALID,
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    fn reset(&mut self, timeline: TimelineId, at: Lsn) {
        self.timeline = timeline;
        self.start = at;
        self.end = at;
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Appends what the engine received: `data` belongs at `lsn` on `timeline`.
    pub fn push(&mut self, timeline: TimelineId, lsn: Lsn, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        let end = Lsn(lsn.0.saturating_add(data.len() as u64));
        let continues = timeline == self.timeline
            && lsn >= self.start
            && lsn <= self.end
            && (!self.chunks.is_empty() || lsn == self.end);
        if !continues {
            self.reset(timeline, lsn);
        }
        if end <= self.end {
            return; // all of it is here already
        }
        let skip = (self.end.0 - lsn.0) as usize;
        let fresh = data.slice(skip..);
        self.bytes += fresh.len();
        self.chunks.push_back((self.end, fresh));
        self.end = end;
        while self.bytes > self.capacity && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
            if let Some((first, _)) = self.chunks.front() {
                self.start = *first;
            }
        }
    }

    /// Up to `max` bytes from `from` on `timeline`, not beyond `limit`, as slices of the buffered
    /// chunks in order; `None` when the buffer does not hold `from` (read the archive instead).
    /// An empty result means `from` is at the buffer's end (or at `limit`).
    pub fn get(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max: usize,
    ) -> Option<Vec<Bytes>> {
        if timeline != self.timeline || from < self.start || from > self.end {
            return None;
        }
        let until = limit
            .min(self.end)
            .min(Lsn(from.0.saturating_add(max as u64)));
        let mut out = Vec::new();
        if until <= from {
            return Some(out);
        }
        // The chunk holding `from`: chunks are in order, find the last one starting at or before it.
        let first = self
            .chunks
            .partition_point(|(s, _)| *s <= from)
            .checked_sub(1)?;
        for (s, chunk) in self.chunks.iter().skip(first) {
            if *s >= until {
                break;
            }
            let lo = from.0.saturating_sub(s.0) as usize;
            let hi = ((until.0 - s.0) as usize).min(chunk.len());
            if lo < hi {
                out.push(chunk.slice(lo..hi));
            }
        }
        Some(out)
    }

    /// The buffered range: timeline, first and end position.
    pub fn range(&self) -> (TimelineId, Lsn, Lsn) {
        (self.timeline, self.start, self.end)
    }

    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TimelineId = TimelineId(1);

    fn data(from: u64, len: usize) -> Bytes {
        (0..len)
            .map(|i| ((from as usize + i) % 251) as u8)
            .collect()
    }

    fn joined(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn serves_slices_across_chunks_up_to_the_limit() {
        let mut b = WalBuffer::new(1 << 20);
        b.push(T1, Lsn(1000), &data(1000, 100));
        b.push(T1, Lsn(1100), &data(1100, 100));
        b.push(T1, Lsn(1200), &data(1200, 100));
        assert_eq!(b.range(), (T1, Lsn(1000), Lsn(1300)));
        let got = b.get(T1, Lsn(1050), Lsn(1250), 1 << 20).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(joined(&got), data(1050, 200).to_vec());
        // max cuts too.
        let got = b.get(T1, Lsn(1050), Lsn(1300), 60).unwrap();
        assert_eq!(joined(&got), data(1050, 60).to_vec());
        // At the end or the limit: nothing, but in range.
        assert_eq!(b.get(T1, Lsn(1300), Lsn(2000), 10), Some(vec![]));
        assert_eq!(b.get(T1, Lsn(1100), Lsn(1100), 10), Some(vec![]));
        // Outside: read the archive.
        assert_eq!(b.get(T1, Lsn(999), Lsn(2000), 10), None);
        assert_eq!(b.get(T1, Lsn(1301), Lsn(2000), 10), None);
        assert_eq!(b.get(TimelineId(2), Lsn(1100), Lsn(2000), 10), None);
    }

    #[test]
    fn evicts_the_oldest_beyond_capacity() {
        let mut b = WalBuffer::new(250);
        for i in 0..5 {
            b.push(T1, Lsn(i * 100), &data(i * 100, 100));
        }
        assert_eq!(b.range(), (T1, Lsn(300), Lsn(500)));
        assert_eq!(b.len(), 200);
        assert_eq!(b.get(T1, Lsn(250), Lsn(500), 10), None);
        // One chunk larger than the capacity is still kept (the newest WAL is always there).
        b.push(T1, Lsn(500), &data(500, 1000));
        assert_eq!(b.range(), (T1, Lsn(500), Lsn(1500)));
    }

    #[test]
    fn overlap_gap_and_timeline_switch() {
        let mut b = WalBuffer::new(1 << 20);
        b.push(T1, Lsn(0), &data(0, 300));
        // A reconnect re-sends from an earlier (segment) start: only the new part is added.
        b.push(T1, Lsn(100), &data(100, 400));
        assert_eq!(b.range(), (T1, Lsn(0), Lsn(500)));
        assert_eq!(
            joined(&b.get(T1, Lsn(0), Lsn(500), 1000).unwrap()),
            data(0, 500).to_vec()
        );
        b.push(T1, Lsn(200), &data(200, 100)); // entirely known
        assert_eq!(b.range(), (T1, Lsn(0), Lsn(500)));
        // A gap: start over.
        b.push(T1, Lsn(800), &data(800, 100));
        assert_eq!(b.range(), (T1, Lsn(800), Lsn(900)));
        // Before the buffer: start over there.
        b.push(T1, Lsn(700), &data(700, 50));
        assert_eq!(b.range(), (T1, Lsn(700), Lsn(750)));
        // The next timeline starts again at a segment start.
        b.push(TimelineId(2), Lsn(0), &data(0, 100));
        assert_eq!(b.range(), (TimelineId(2), Lsn(0), Lsn(100)));
        assert_eq!(b.get(T1, Lsn(700), Lsn(750), 10), None);
        b.push(TimelineId(2), Lsn(100), &Bytes::new());
        assert_eq!(b.len(), 100);
    }
}
