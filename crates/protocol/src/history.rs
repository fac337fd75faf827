//! Timeline history files (`00000002.history`), as `readTimeLineHistory` reads them.
//!
//! Each non-comment line is `parentTLI <tab> switchpoint <tab> reason`: WAL of `parentTLI` is valid up
//! to `switchpoint`, after which the next entry's timeline (or the file's own) takes over.

use thiserror::Error;

use crate::{Lsn, TimelineId};

/// One ancestor timeline and where it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistoryEntry {
    pub timeline: TimelineId,
    /// First LSN that is *not* on this timeline.
    pub switchpoint: Lsn,
    pub reason: String,
}

/// The parsed history of one timeline: its ancestors in order, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    pub timeline: TimelineId,
    pub ancestors: Vec<TimelineHistoryEntry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("timeline history line {line}: {reason}")]
    Syntax { line: usize, reason: &'static str },
    #[error("timeline history is not UTF-8")]
    NotUtf8,
    #[error("timeline history line {line}: timeline IDs must be increasing")]
    NotIncreasing { line: usize },
    #[error("timeline history line {line}: switchpoints must not go backwards")]
    SwitchpointBackwards { line: usize },
    #[error("timeline history of timeline {timeline} lists timeline {found}, which is not older")]
    TargetNotNewer {
        timeline: TimelineId,
        found: TimelineId,
    },
}

impl TimelineHistory {
    /// Parses the content of `timeline`'s history file.
    pub fn parse(timeline: TimelineId, content: &[u8]) -> Result<Self, HistoryError> {
        let text = std::str::from_utf8(content).map_err(|_| HistoryError::NotUtf8)?;
        let mut ancestors: Vec<TimelineHistoryEntry> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.splitn(3, ['\t', ' ']);
            let tli: u32 =
                fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or(HistoryError::Syntax {
                        line,
                        reason: "expected a numeric timeline ID",
                    })?;
            let switchpoint: Lsn = fields
                .next()
                .map(str::trim)
                .and_then(|f| f.parse().ok())
                .ok_or(HistoryError::Syntax {
                    line,
                    reason: "expected a switchpoint LSN like 0/3000000",
                })?;
            let reason = fields.next().unwrap_or("").trim().to_string();
            if let Some(prev) = ancestors.last() {
                if tli <= prev.timeline.0 {
                    return Err(HistoryError::NotIncreasing { line });
                }
                if switchpoint < prev.switchpoint {
                    return Err(HistoryError::SwitchpointBackwards { line });
                }
            }
            ancestors.push(TimelineHistoryEntry {
                timeline: TimelineId(tli),
                switchpoint,
                reason,
            });
        }
        if let Some(last) = ancestors.last() {
            if last.timeline >= timeline {
                return Err(HistoryError::TargetNotNewer {
                    timeline,
                    found: last.timeline,
                });
            }
        }
        Ok(TimelineHistory {
            timeline,
            ancestors,
        })
    }

    /// The timeline that holds `lsn` according to this history (the target timeline when `lsn` is past
    /// every switchpoint).
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        for e in &self.ancestors {
            if lsn < e.switchpoint {
                return e.timeline;
            }
        }
        self.timeline
    }

    /// Where `tli` ends (its switchpoint), or `None` if it is the target timeline or unknown here.
    pub fn switchpoint_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.ancestors
            .iter()
            .find(|e| e.timeline == tli)
            .map(|e| e.switchpoint)
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        tli == self.timeline || self.ancestors.iter().any(|e| e.timeline == tli)
    }

    /// The timeline that took over from ancestor `tli` at its switchpoint; `None` when `tli` is
    /// not an ancestor.
    pub fn child_of(&self, tli: TimelineId) -> Option<TimelineId> {
        let i = self.ancestors.iter().position(|e| e.timeline == tli)?;
        Some(
            self.ancestors
                .get(i + 1)
                .map_or(self.timeline, |e| e.timeline),
        )
    }

    /// Whether `self` describes the same past as `other` up to `self`'s own timeline: every
    /// ancestor of `self` is an ancestor of `other` with the same switchpoint, and `self`'s
    /// timeline is `other`'s or one of its ancestors. (A timeline created twice — two servers
    /// promoted to the same timeline ID — fails this.)
    pub fn is_prefix_of(&self, other: &TimelineHistory) -> bool {
        other.contains(self.timeline)
            && self.ancestors.iter().all(|mine| {
                other
                    .ancestors
                    .iter()
                    .any(|e| e.timeline == mine.timeline && e.switchpoint == mine.switchpoint)
            })
            && other
                .ancestors
                .iter()
                .filter(|e| e.timeline < self.timeline)
                .count()
                == self.ancestors.len()
    }

    /// The history of timeline 1, which has no file and no ancestors.
    pub fn first() -> Self {
        TimelineHistory {
            timeline: TimelineId::FIRST,
            ancestors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLI3: &str = "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000A28\tat restore point \"x\"\n";

    #[test]
    fn children_and_prefixes() {
        let h3 = TimelineHistory::parse(TimelineId(3), TLI3.as_bytes()).unwrap();
        assert_eq!(h3.child_of(TimelineId(1)), Some(TimelineId(2)));
        assert_eq!(h3.child_of(TimelineId(2)), Some(TimelineId(3)));
        assert_eq!(h3.child_of(TimelineId(3)), None);
        let h2 = TimelineHistory::parse(TimelineId(2), b"1\t0/3000000\tx\n").unwrap();
        assert!(h2.is_prefix_of(&h3));
        assert!(TimelineHistory::first().is_prefix_of(&h3));
        assert!(h3.is_prefix_of(&h3));
        assert!(!h3.is_prefix_of(&h2));
        // Timeline 2 created twice, at different points.
        let other2 = TimelineHistory::parse(TimelineId(2), b"1\t0/3800000\tx\n").unwrap();
        assert!(!other2.is_prefix_of(&h3));
    }

    #[test]
    fn parses_real_format() {
        let h = TimelineHistory::parse(TimelineId(3), TLI3.as_bytes()).unwrap();
        assert_eq!(h.ancestors.len(), 2);
        assert_eq!(h.ancestors[0].timeline, TimelineId(1));
        assert_eq!(h.ancestors[0].switchpoint, Lsn(0x300_0000));
        assert_eq!(h.ancestors[1].reason, "at restore point \"x\"");
        assert_eq!(h.timeline_of(Lsn(0x200_0000)), TimelineId(1));
        assert_eq!(h.timeline_of(Lsn(0x300_0000)), TimelineId(2));
        assert_eq!(h.timeline_of(Lsn(0x600_0000)), TimelineId(3));
        assert_eq!(h.switchpoint_of(TimelineId(2)), Some(Lsn(0x500_0A28)));
        assert_eq!(h.switchpoint_of(TimelineId(3)), None);
        assert!(h.contains(TimelineId(1)) && !h.contains(TimelineId(4)));
    }

    #[test]
    fn rejects_bad() {
        assert!(TimelineHistory::parse(TimelineId(3), b"x\t0/0\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(3), b"1\tnope\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(3), b"1\t").is_err());
        assert!(TimelineHistory::parse(TimelineId(3), b"2\t0/1\n1\t0/2\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(3), b"1\t0/5\n2\t0/2\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(2), b"2\t0/5\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(2), &[0xff, 0xfe]).is_err());
        assert_eq!(
            TimelineHistory::parse(TimelineId(1), b"")
                .unwrap()
                .ancestors
                .len(),
            0
        );
    }
}
