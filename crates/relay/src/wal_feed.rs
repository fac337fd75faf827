//! What the relay may serve, and where the bytes come from.
//!
//! ```text
//!   engine ──(timeline, lsn, bytes)──► WalBuffer (newest WAL, bounded)  ─┐
//!   engine ──acknowledged (durable ∧ validated)──► watch ──► limit ──────┼──► downstream sessions
//!   archive dir: segments, .partial, compressed; TTTTTTTT.history ───────┘     (buffer, else files)
//! ```
//!
//! # The one invariant
//! A downstream is never sent a byte past the *servable* position: on the current timeline, the
//! engine's acknowledged position (fsynced in the archive, every record up to it CRC-checked); on
//! an older timeline, its switch point from the timeline history. Bytes come from the fan-out
//! buffer when it still holds them and from the archive otherwise — the same bytes either way,
//! since the buffer is what the engine wrote.
//!
//! # Timelines
//! The current timeline is the acknowledged position's. A timeline the relay's history lists as
//! an ancestor is *historic*: it ends at its switch point, and the next timeline is the one that
//! took over there (`tliSwitchPoint`), which is what a walsender tells a standby at the end of a
//! historic timeline. When WAL of timeline T at position P is read from the archive, the file is
//! the one of the timeline that held P according to T's history — for the segment holding a
//! switch point, the old timeline's file, then the new one's, which holds the same bytes before
//! the switch point (PostgreSQL copies them at promotion, and the engine writes them again).
//!
//! Before the engine has acknowledged anything (right after a start), the servable position is
//! where the engine resumes in the archive: everything before it is in complete segments.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use walrelay_protocol::{Lsn, TimelineHistory, TimelineId, WalSegmentSize};
use walrelay_walreceiver::{ReceiverStats, TimelinePosition, WalObserver};

use crate::buffer::WalBuffer;

/// A timeline history file: its bytes (served as they are) and what they say.
#[derive(Debug)]
pub struct History {
    pub content: Bytes,
    pub parsed: TimelineHistory,
}

/// How far a timeline may be streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The current timeline: up to the servable position, which moves.
    Live(Lsn),
    /// A timeline that ended at `end`; `next` took over there.
    Historic { end: Lsn, next: TimelineId },
}

/// The engine's view into the fan-out buffer.
pub struct BufferObserver(pub Arc<Mutex<WalBuffer>>);

impl WalObserver for BufferObserver {
    fn received(&self, timeline: TimelineId, lsn: Lsn, data: &Bytes) {
        lock(&self.0).push(timeline, lsn, data);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The relay's WAL, shared by every session.
pub struct WalFeed {
    dir: PathBuf,
    seg: WalSegmentSize,
    acknowledged: watch::Receiver<TimelinePosition>,
    buffer: Arc<Mutex<WalBuffer>>,
    histories: Mutex<HashMap<TimelineId, Arc<History>>>,
    stats: Arc<ReceiverStats>,
}

impl WalFeed {
    pub fn new(
        dir: PathBuf,
        seg: WalSegmentSize,
        acknowledged: watch::Receiver<TimelinePosition>,
        buffer: Arc<Mutex<WalBuffer>>,
        stats: Arc<ReceiverStats>,
    ) -> Self {
        WalFeed {
            dir,
            seg,
            acknowledged,
            buffer,
            histories: Mutex::new(HashMap::new()),
            stats,
        }
    }

    pub fn segment_size(&self) -> WalSegmentSize {
        self.seg
    }

    pub fn archive_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A receiver of the acknowledged position (wakes streaming sessions).
    pub fn subscribe(&self) -> watch::Receiver<TimelinePosition> {
        self.acknowledged.clone()
    }

    /// The current timeline and its servable end.
    pub fn current(&self) -> Result<TimelinePosition, io::Error> {
        let ack = *self.acknowledged.borrow();
        let begin = self.timeline_begin(ack.timeline)?;
        Ok(TimelinePosition {
            timeline: ack.timeline,
            lsn: ack.lsn.max(begin),
        })
    }

    /// Where `timeline` begins: its parent's switch point (0/0 for timeline 1).
    fn timeline_begin(&self, timeline: TimelineId) -> Result<Lsn, io::Error> {
        if timeline == TimelineId::FIRST {
            return Ok(Lsn::INVALID);
        }
        Ok(self
            .history(timeline)?
            .and_then(|h| h.parsed.ancestors.last().map(|a| a.switchpoint))
            .unwrap_or(Lsn::INVALID))
    }

    /// The history of `timeline` (timeline 1 has none: an empty history). `None` when the
    /// archive has no history file for it.
    pub fn history(&self, timeline: TimelineId) -> Result<Option<Arc<History>>, io::Error> {
        if timeline == TimelineId::FIRST {
            return Ok(Some(Arc::new(History {
                content: Bytes::new(),
                parsed: TimelineHistory::first(),
            })));
        }
        if let Some(h) = lock(&self.histories).get(&timeline) {
            return Ok(Some(h.clone()));
        }
        let path = self.dir.join(timeline.history_file_name());
        let content = match std::fs::read(&path) {
            Ok(c) => Bytes::from(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let parsed = TimelineHistory::parse(timeline, &content).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        let h = Arc::new(History { content, parsed });
        // History files never change once written: cached for good.
        lock(&self.histories).insert(timeline, h.clone());
        Ok(Some(h))
    }

    /// How far `timeline` may be streamed now; `None` when the relay's history does not know it
    /// (a future timeline, or one from another branch).
    pub fn limit(&self, timeline: TimelineId) -> Result<Option<Limit>, io::Error> {
        let cur = self.current()?;
        if timeline == cur.timeline {
            return Ok(Some(Limit::Live(cur.lsn)));
        }
        if timeline > cur.timeline {
            return Ok(None);
        }
        let Some(h) = self.history(cur.timeline)? else {
            return Ok(None);
        };
        Ok(h.parsed
            .switchpoint_of(timeline)
            .map(|end| Limit::Historic {
                end,
                next: h.parsed.child_of(timeline).unwrap_or(cur.timeline),
            }))
    }

    /// Whether a start point ahead of what is servable is close enough to wait for: in the
    /// segment holding the upstream's end of WAL as last heard, or the next one (a base backup
    /// starts in a fresh segment the relay may not have seen yet). Further ahead is an error, as
    /// on a server.
    pub fn worth_waiting_for(&self, start: Lsn) -> Result<bool, io::Error> {
        let known = self
            .current()?
            .lsn
            .max(self.stats.snapshot().server_wal_end);
        let next_segment_end = (self.seg.segno(known).0 + 2).saturating_mul(self.seg.as_u64());
        Ok(start.0 <= next_segment_end)
    }

    /// The timeline that holds `lsn` on the current timeline's history (for a slot's
    /// `restart_tli`).
    pub fn timeline_of(&self, lsn: Lsn) -> Result<TimelineId, io::Error> {
        let cur = self.current()?;
        Ok(match self.history(cur.timeline)? {
            Some(h) => h.parsed.timeline_of(lsn),
            None => cur.timeline,
        })
    }

    /// WAL of `timeline` from `from` to at most `until`, at most `max` bytes, from the fan-out
    /// buffer; `None` when the buffer does not hold `from` on that timeline.
    pub fn from_buffer(
        &self,
        timeline: TimelineId,
        from: Lsn,
        until: Lsn,
        max: usize,
    ) -> Option<Vec<Bytes>> {
        lock(&self.buffer).get(timeline, from, until, max)
    }

    /// The archive files to read position `lsn` of `timeline` from, best first, each with the
    /// position where its content stops being `timeline`'s (`None`: never). A timeline's file of
    /// the segment where it begins holds its parent's WAL up to the switch point, then its own;
    /// an ancestor's file holds, past its switch point, WAL the new timeline does not have (zeros,
    /// or WAL a failover lost). So: the newest timeline of `timeline`'s history that begins in
    /// `lsn`'s segment first, down to the one holding `lsn`; each read from it ends where that
    /// timeline ends in the history.
    pub fn file_timelines(
        &self,
        timeline: TimelineId,
        lsn: Lsn,
    ) -> Result<Vec<(TimelineId, Option<Lsn>)>, io::Error> {
        let Some(h) = self.history(timeline)? else {
            return Ok(vec![(timeline, None)]);
        };
        // Each timeline of the history with the position where it begins.
        let mut begins: Vec<(TimelineId, Lsn)> = Vec::new();
        let mut begin = Lsn::INVALID;
        for a in &h.parsed.ancestors {
            begins.push((a.timeline, begin));
            begin = a.switchpoint;
        }
        begins.push((h.parsed.timeline, begin));
        let owner = h.parsed.timeline_of(lsn);
        let segno = self.seg.segno(lsn);
        // The timeline the engine writes holds only what it acknowledged: right after a switch
        // (or a restart) its file of the switch segment is being written again from the
        // segment's start — zeros, or too short, past that — while the servable position is
        // already the switch point. Past the acknowledged position, the parent's file serves.
        let ack = *self.acknowledged.borrow();
        let mut out: Vec<(TimelineId, Option<Lsn>)> = begins
            .iter()
            .filter(|(t, b)| *t == owner || (*t > owner && self.seg.segno(*b) == segno))
            .map(|(t, _)| {
                let end = h.parsed.switchpoint_of(*t);
                let end = if *t == ack.timeline {
                    Some(end.map_or(ack.lsn, |e| e.min(ack.lsn)))
                } else {
                    end
                };
                (*t, end)
            })
            .collect();
        out.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        dir: &std::path::Path,
        ack: TimelinePosition,
    ) -> (WalFeed, watch::Sender<TimelinePosition>) {
        let (tx, rx) = watch::channel(ack);
        let f = WalFeed::new(
            dir.to_path_buf(),
            WalSegmentSize::new(1 << 20).unwrap(),
            rx,
            Arc::new(Mutex::new(WalBuffer::new(1 << 20))),
            Arc::new(ReceiverStats::default()),
        );
        (f, tx)
    }

    fn historic(end: u64, next: u32) -> Option<Limit> {
        Some(Limit::Historic {
            end: Lsn(end),
            next: TimelineId(next),
        })
    }

    fn at(t: u32, l: u64) -> TimelinePosition {
        TimelinePosition {
            timeline: TimelineId(t),
            lsn: Lsn(l),
        }
    }

    #[test]
    fn limits_follow_the_history() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00000002.history"), "1\t0/350000\tpromoted\n").unwrap();
        std::fs::write(
            d.path().join("00000003.history"),
            "1\t0/350000\tpromoted\n2\t0/800028\tpromoted again\n",
        )
        .unwrap();
        let (f, tx) = feed(d.path(), at(1, 0x20_0000));
        assert_eq!(
            f.limit(TimelineId(1)).unwrap(),
            Some(Limit::Live(Lsn(0x20_0000)))
        );
        assert_eq!(f.limit(TimelineId(2)).unwrap(), None, "a future timeline");
        // The engine followed a promotion: timeline 2 starts at a segment start, below its
        // switch point, which is servable already (timeline 1's file holds it).
        tx.send(at(2, 0x30_0000)).unwrap();
        assert_eq!(f.current().unwrap(), at(2, 0x35_0000));
        // Its own file of that segment holds only what the engine acknowledged (written again
        // from the segment's start: zeros, or short, past it): timeline 1's file serves there.
        assert_eq!(
            f.file_timelines(TimelineId(2), Lsn(0x32_0000)).unwrap(),
            vec![
                (TimelineId(2), Some(Lsn(0x30_0000))),
                (TimelineId(1), Some(Lsn(0x35_0000)))
            ]
        );
        assert_eq!(f.limit(TimelineId(1)).unwrap(), historic(0x35_0000, 2));
        tx.send(at(3, 0x90_0000)).unwrap();
        assert_eq!(
            f.limit(TimelineId(1)).unwrap(),
            historic(0x35_0000, 2),
            "the immediate child, not the newest"
        );
        assert_eq!(f.limit(TimelineId(2)).unwrap(), historic(0x80_0028, 3));
        assert_eq!(f.limit(TimelineId(4)).unwrap(), None);
        assert_eq!(f.timeline_of(Lsn(0x40_0000)).unwrap(), TimelineId(2));
        // Files: a timeline beginning in the segment first, then the owner; each up to where it
        // ends in the history.
        // The timeline the engine writes, up to what it acknowledged.
        let (end1, end2, acked) = (
            Some(Lsn(0x35_0000)),
            Some(Lsn(0x80_0028)),
            Some(Lsn(0x90_0000)),
        );
        for (streamed, lsn, files) in [
            (3, 0x10_0000, &[(1, end1)][..]),
            (3, 0x30_0000, &[(2, end2), (1, end1)]),
            (3, 0x36_0000, &[(2, end2)]),
            (3, 0x80_0000, &[(3, acked), (2, end2)]),
            (3, 0x90_0000, &[(3, acked)]),
            (2, 0x30_0000, &[(2, None), (1, end1)]),
            (1, 0x90_0000, &[(1, None)]),
        ] {
            let want: Vec<(TimelineId, Option<Lsn>)> =
                files.iter().map(|&(t, end)| (TimelineId(t), end)).collect();
            assert_eq!(
                f.file_timelines(TimelineId(streamed), Lsn(lsn)).unwrap(),
                want,
                "timeline {streamed} at {lsn:X}"
            );
        }
        assert!(f.history(TimelineId(7)).unwrap().is_none());
    }

    #[test]
    fn waits_only_for_what_is_near() {
        let d = tempfile::tempdir().unwrap();
        let (f, _tx) = feed(d.path(), at(1, 0x20_0100));
        assert!(f.worth_waiting_for(Lsn(0x20_0200)).unwrap());
        assert!(
            f.worth_waiting_for(Lsn(0x30_0000)).unwrap(),
            "the next segment"
        );
        assert!(f.worth_waiting_for(Lsn(0x40_0000)).unwrap());
        assert!(!f.worth_waiting_for(Lsn(0x40_0001)).unwrap());
        assert!(!f.worth_waiting_for(Lsn(0xFF_0000_0000)).unwrap());
    }
}
