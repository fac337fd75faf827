//! Where to continue when the server's timeline is not the one the directory is on — after a
//! promotion, a failover, or both while the receiver was down. Pure: the histories in, the
//! decision out.
//!
//! The directory holds WAL on timeline `ours` up to somewhere past `resume` (the segment boundary
//! streaming would restart at). The server is on timeline `server`, whose history file lists its
//! ancestors and where each ended (`src/backend/access/transam/timeline.c`: a switchpoint is the
//! first LSN of the child timeline). Three outcomes:
//!
//! * the server's history passes through our timeline: continue, on our timeline if we stand
//!   before the point where the server's history left it (the server streams it to that point,
//!   then names the next timeline), otherwise on the server's next timeline from the segment
//!   holding that point. Either way, WAL we hold on our timeline past that point is *orphaned*:
//!   valid history of the old primary that the new one never had — kept, and reported;
//! * the server is on an ancestor of our timeline: it has not followed the promotion we followed
//!   (an old primary restarted, a standby that lags). Another host, or later, may do better;
//! * neither history contains the other's timeline: the histories diverged.

use walrelay_protocol::{Lsn, TimelineHistory, TimelineId, WalSegmentSize};

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimelinePlan {
    /// Stream from `lsn` on `timeline`.
    Continue {
        timeline: TimelineId,
        lsn: Lsn,
        /// Set when the server's history left our timeline: WAL on it past the switchpoint is
        /// orphaned, if the directory holds any.
        left_ours: Option<Fork>,
    },
    /// The server is on `server`, an ancestor of our timeline `ours`.
    ServerBehind {
        ours: TimelineId,
        server: TimelineId,
    },
    /// Neither history holds the other's timeline, or the same timeline ID means different pasts.
    Diverged {
        ours: TimelineId,
        server: TimelineId,
    },
}

/// Where the server's history left one of our timelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// Our timeline, which the server's history leaves.
    pub old: TimelineId,
    /// The first LSN that is not on `old` any more.
    pub switchpoint: Lsn,
    /// The server's timeline that took over there.
    pub new: TimelineId,
}

/// Decides where to continue. `ours` is the history of the directory's timeline (its history file,
/// or [`TimelineHistory::first`]), `server` the history of the server's current timeline.
pub fn plan(
    ours: &TimelineHistory,
    resume: Lsn,
    server: &TimelineHistory,
    seg: WalSegmentSize,
) -> TimelinePlan {
    let (mine, theirs) = (ours.timeline, server.timeline);
    if mine == theirs {
        return if ours == server || ours.ancestors == server.ancestors {
            TimelinePlan::Continue {
                timeline: mine,
                lsn: resume,
                left_ours: None,
            }
        } else {
            TimelinePlan::Diverged {
                ours: mine,
                server: theirs,
            }
        };
    }
    if mine > theirs {
        return if server.is_prefix_of(ours) {
            TimelinePlan::ServerBehind {
                ours: mine,
                server: theirs,
            }
        } else {
            TimelinePlan::Diverged {
                ours: mine,
                server: theirs,
            }
        };
    }
    // The server is on a later timeline: its history must pass through ours, the same way.
    let (Some(switchpoint), Some(new)) = (server.switchpoint_of(mine), server.child_of(mine))
    else {
        return TimelinePlan::Diverged {
            ours: mine,
            server: theirs,
        };
    };
    if !ours.is_prefix_of(server) {
        return TimelinePlan::Diverged {
            ours: mine,
            server: theirs,
        };
    }
    let fork = Fork {
        old: mine,
        switchpoint,
        new,
    };
    if resume <= switchpoint {
        // The server streams our timeline up to the switchpoint, then names the next.
        TimelinePlan::Continue {
            timeline: mine,
            lsn: resume,
            left_ours: Some(fork),
        }
    } else {
        // Everything we would resume from lies past the point where our timeline ended on the
        // server: continue on its next timeline from the segment holding that point (the server
        // sends that segment from its new timeline's file, whose first part is the old
        // timeline's WAL up to the switchpoint).
        TimelinePlan::Continue {
            timeline: new,
            lsn: switchpoint.segment_start(seg.bytes()),
            left_ours: Some(fork),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB).unwrap()
    }

    fn history(tli: u32, lines: &str) -> TimelineHistory {
        TimelineHistory::parse(TimelineId(tli), lines.as_bytes()).unwrap()
    }

    #[test]
    fn same_timeline_continues_where_the_directory_says() {
        let h = history(2, "1\t0/300000\tx\n");
        assert_eq!(
            plan(&h, Lsn(5 * MB), &h, seg()),
            TimelinePlan::Continue {
                timeline: TimelineId(2),
                lsn: Lsn(5 * MB),
                left_ours: None
            }
        );
        let first = TimelineHistory::first();
        assert!(matches!(
            plan(&first, Lsn(MB), &first, seg()),
            TimelinePlan::Continue {
                left_ours: None,
                ..
            }
        ));
    }

    #[test]
    fn a_caught_up_promotion_is_streamed_through() {
        // We stand at 0/300000 (or before); the new primary's timeline 2 began at 0/300006.
        let server = history(2, "1\t0/300006\tno recovery target specified\n");
        let p = plan(&TimelineHistory::first(), Lsn(3 * MB), &server, seg());
        assert_eq!(
            p,
            TimelinePlan::Continue {
                timeline: TimelineId(1),
                lsn: Lsn(3 * MB),
                left_ours: Some(Fork {
                    old: TimelineId(1),
                    switchpoint: Lsn(0x30_0006),
                    new: TimelineId(2)
                })
            }
        );
        // Exactly at a segment-aligned switchpoint: still timeline 1 (the server answers with the
        // next timeline and no COPY).
        let server = history(2, "1\t0/400000\tx\n");
        assert!(matches!(
            plan(&TimelineHistory::first(), Lsn(4 * MB), &server, seg()),
            TimelinePlan::Continue {
                timeline: TimelineId(1),
                ..
            }
        ));
    }

    #[test]
    fn a_promotion_behind_us_continues_on_the_new_timeline_from_the_switch_segment() {
        // We hold timeline 1 up to segment 7; the new primary left timeline 1 at 0/5000A2.
        let server = history(2, "1\t0/5000A2\tx\n");
        let p = plan(&TimelineHistory::first(), Lsn(7 * MB), &server, seg());
        assert_eq!(
            p,
            TimelinePlan::Continue {
                timeline: TimelineId(2),
                lsn: Lsn(5 * MB),
                left_ours: Some(Fork {
                    old: TimelineId(1),
                    switchpoint: Lsn(0x50_00A2),
                    new: TimelineId(2)
                })
            }
        );
    }

    #[test]
    fn several_promotions_while_down_are_followed_one_by_one() {
        let server = history(4, "1\t0/300000\ta\n2\t0/500000\tb\n3\t0/900000\tc\n");
        // From timeline 1, before its end: timeline 1 first.
        assert!(matches!(
            plan(&TimelineHistory::first(), Lsn(2 * MB), &server, seg()),
            TimelinePlan::Continue { timeline: TimelineId(1), lsn: Lsn(l), left_ours: Some(Fork { new: TimelineId(2), .. }) } if l == 2 * MB
        ));
        // From timeline 2 past its end: timeline 3 from the segment of 0/500000.
        let ours = history(2, "1\t0/300000\ta\n");
        assert!(matches!(
            plan(&ours, Lsn(6 * MB), &server, seg()),
            TimelinePlan::Continue { timeline: TimelineId(3), lsn: Lsn(l), .. } if l == 5 * MB
        ));
    }

    #[test]
    fn an_older_server_is_behind_and_a_foreign_history_diverged() {
        let ours = history(2, "1\t0/300000\ta\n");
        assert_eq!(
            plan(&ours, Lsn(4 * MB), &TimelineHistory::first(), seg()),
            TimelinePlan::ServerBehind {
                ours: TimelineId(2),
                server: TimelineId(1)
            }
        );
        // Timeline 2 created twice (two promotions of different standbys).
        let theirs = history(2, "1\t0/380000\tb\n");
        assert!(matches!(
            plan(&ours, Lsn(4 * MB), &theirs, seg()),
            TimelinePlan::Diverged { .. }
        ));
        // A server on timeline 3 whose history never went through our timeline 2.
        let theirs = history(3, "1\t0/380000\tb\n");
        assert!(matches!(
            plan(&ours, Lsn(4 * MB), &theirs, seg()),
            TimelinePlan::Diverged { .. }
        ));
        // Our timeline 3 descends from a timeline 2 the server does not know.
        let ours3 = history(3, "1\t0/300000\ta\n2\t0/400000\tb\n");
        let theirs2 = history(2, "1\t0/380000\tb\n");
        assert!(matches!(
            plan(&ours3, Lsn(5 * MB), &theirs2, seg()),
            TimelinePlan::Diverged { .. }
        ));
    }
}
