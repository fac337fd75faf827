//! The standby status update ('r') state machine: when to tell the server how far we got.
//!
//! Pure: it is fed events ([`FeedbackEvent`]) and the current time, and answers with the
//! [`StandbyStatusUpdate`] to send, if any — the shape of raft-rs's `step`/`tick`. The network task owns
//! the socket and the clock, the disk task reports positions; nothing here does IO, so every rule is a
//! table test.
//!
//! # Rules (from receivelog.c `HandleCopyStream`/`ProcessKeepaliveMsg`/`sendFeedback` and walreceiver.c
//! `XLogWalRcvSendReply`)
//!
//! * The server asks for a reply (keepalive with `reply_requested`): answer at once, with the current
//!   positions, even if nothing moved (the server uses it to detect a dead standby and, at shutdown, to
//!   learn our final position).
//! * Every `status_interval` since the last update: send one (0 disables periodic updates, like
//!   `--status-interval=0`). The first tick sends one immediately, as pg_receivewal does.
//! * In synchronous mode, whenever the flush position advances: send at once (`--synchronous`, and
//!   what a walreceiver always does), so a synchronous-commit primary is not kept waiting.
//!
//! # Reported positions
//!
//! * `write_lsn`: end of the WAL received and written.
//! * `flush_lsn`: end of the durable WAL — or `0/0` (invalid) when flush reporting is off: pg_receivewal
//!   reports it only with a slot or `--synchronous`, because a valid flush position makes the client
//!   eligible as a synchronous standby.
//! * `apply_lsn`: in archive mode the durable position — an archive has nothing to replay, WAL in
//!   it is as far as it will ever get; in pg_wal mode the standby's replay position, capped at our
//!   flush position (a standby reading our files cannot have durably applied what we have not
//!   durably written), or `0/0` when it cannot be asked.
//!
//! Why an archive reports an apply position although pg_receivewal sends `0/0`
//! (`sendFeedback` in receivelog.c): the walsender computes `replay_lag` from the apply position
//! (`ProcessStandbyReplyMessage` → `LagTrackerRead(SYNC_REP_WAIT_APPLY, applyPtr, now)` in
//! walsender.c). An apply position that never moves keeps its read head at the oldest sample;
//! once the 8192-sample buffer is full (minutes of traffic), minor releases with the lag tracker's
//! overflow entry (15.15 and 18.3 have it) report `now - time of that sample` — a `replay_lag`
//! that grows for as long as the connection lasts, for pg_receivewal too (seen: 19 minutes after
//! 20 with 15.18), and trips every replay-lag alert. Reported as the durable position,
//! `replay_lag` equals the flush lag, and two consecutive replies at the server's send position
//! clear it, as for a caught-up standby (`clearLagTimes`). The flush position keeps
//! pg_receivewal's rule (reported only with a slot or `--synchronous`, because a valid flush
//! position makes the client a synchronous standby candidate); the apply position does not
//! make it one (`SyncRepGetCandidateStandbys` looks at the flush position only).
//!
//! Each is monotonic (a smaller value than before is never sent, e.g. after a timeline switch restarts
//! the stream at a segment start) and `flush_lsn <= write_lsn` always (flushed data was written).
//!
//! Time is PostgreSQL's: microseconds since 2000-01-01 00:00 UTC ([`PgTimestamp`]), which is also what
//! the update carries as the client's send time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walrelay_protocol::Lsn;

/// Seconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01), both UTC.
pub const POSTGRES_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// pg_receivewal's and walreceiver's default `--status-interval` / `wal_receiver_status_interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A PostgreSQL `TimestampTz` as sent on the wire: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The wall clock now.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a wall-clock time, saturating far outside ±292,000 years.
    pub fn from_system_time(t: SystemTime) -> Self {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS);
        match t.duration_since(pg_epoch) {
            Ok(after) => PgTimestamp(i64::try_from(after.as_micros()).unwrap_or(i64::MAX)),
            Err(before) => PgTimestamp(
                i64::try_from(before.duration().as_micros())
                    .map(|m| -m)
                    .unwrap_or(i64::MIN),
            ),
        }
    }

    /// Converts back to a wall-clock time.
    pub fn to_system_time(self) -> SystemTime {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS);
        let magnitude = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            pg_epoch + magnitude
        } else {
            pg_epoch - magnitude
        }
    }

    /// Microseconds since the PostgreSQL epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        PgTimestamp(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: PgTimestamp) -> Duration {
        let diff = self.0.saturating_sub(earlier.0);
        Duration::from_micros(u64::try_from(diff).unwrap_or(0))
    }
}

/// The 'r' message a standby sends (`StandbyStatusUpdate`). The byte encoder lives in
/// `walrelay-protocol`; field names match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    /// Client send time, microseconds since 2000-01-01 UTC.
    pub client_time_micros: i64,
    /// Whether we ask the server to reply at once. Always false here: walrelay never pings.
    pub reply_requested: bool,
}

/// What to report and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedbackConfig {
    /// Periodic update interval; zero disables periodic updates.
    pub status_interval: Duration,
    /// Send an update as soon as the flush position advances.
    pub synchronous: bool,
    /// Report the flush position (otherwise `0/0`).
    pub report_flush: bool,
    /// Report the apply position (otherwise `0/0`).
    pub report_apply: bool,
    /// The apply position is the durable position (an archive), not a replay position fed with
    /// [`FeedbackEvent::Applied`].
    pub apply_is_flush: bool,
}

impl FeedbackConfig {
    /// pg_receivewal's rule for the flush position (reported only with a slot or in synchronous
    /// mode); the durable position as the apply position (see the module documentation).
    pub fn archive(status_interval: Duration, synchronous: bool, with_slot: bool) -> Self {
        FeedbackConfig {
            status_interval,
            synchronous,
            report_flush: with_slot || synchronous,
            report_apply: true,
            apply_is_flush: true,
        }
    }

    /// A walreceiver's behaviour (pg_wal mode): flush and apply reported, an update after every flush.
    pub fn standby(status_interval: Duration) -> Self {
        FeedbackConfig {
            status_interval,
            synchronous: true,
            report_flush: true,
            report_apply: true,
            apply_is_flush: false,
        }
    }
}

/// Inputs of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackEvent {
    /// WAL up to this LSN was received and written (not necessarily durable).
    Written(Lsn),
    /// WAL up to this LSN is durable.
    Flushed(Lsn),
    /// The standby replayed WAL up to this LSN (pg_wal mode).
    Applied(Lsn),
    /// A primary keepalive ('k').
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// The feedback state machine; see the module documentation. One lives as long as one replication
/// connection: a new connection (a new walsender) starts from the new start position.
#[derive(Clone, Debug)]
pub struct Feedback {
    config: FeedbackConfig,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    server_wal_end: Lsn,
    last_sent: Option<StandbyStatusUpdate>,
    /// Internal flush position at the last update (flush may be reported as 0/0).
    last_sent_flush: Lsn,
    last_sent_at: Option<PgTimestamp>,
}

impl Feedback {
    /// Starts with write and flush at the streaming start, as pg_receivewal does (`lastFlushPosition =
    /// startpos`): what precedes the start is on disk already or not wanted.
    pub fn new(config: FeedbackConfig, start: Lsn) -> Self {
        Feedback {
            config,
            write: start,
            flush: start,
            apply: Lsn::INVALID,
            server_wal_end: Lsn::INVALID,
            last_sent: None,
            last_sent_flush: start,
            last_sent_at: None,
        }
    }

    pub fn config(&self) -> &FeedbackConfig {
        &self.config
    }

    /// The highest WAL end the server reported in a keepalive.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// The last update returned, if any.
    pub fn last_sent(&self) -> Option<&StandbyStatusUpdate> {
        self.last_sent.as_ref()
    }

    /// Feeds one event; returns the update to send now, if the rules call for one.
    pub fn step(&mut self, event: FeedbackEvent, now: PgTimestamp) -> Option<StandbyStatusUpdate> {
        match event {
            FeedbackEvent::Written(lsn) => {
                self.write = self.write.max(lsn);
                None
            }
            FeedbackEvent::Flushed(lsn) => {
                self.flush = self.flush.max(lsn);
                // Flushed data was written, whatever order the reports arrived in.
                self.write = self.write.max(self.flush);
                if self.config.synchronous && self.flush > self.last_sent_flush {
                    Some(self.send(now))
                } else {
                    None
                }
            }
            FeedbackEvent::Applied(lsn) => {
                self.apply = self.apply.max(lsn);
                None
            }
            FeedbackEvent::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                reply_requested.then(|| self.send(now))
            }
        }
    }

    /// The disk's progress in one call: `written` as [`FeedbackEvent::Written`], then
    /// `acknowledgeable` (durable, and validated where WAL is validated) as
    /// [`FeedbackEvent::Flushed`]; returns the update either asks for.
    pub fn disk_progress(
        &mut self,
        written: Lsn,
        acknowledgeable: Lsn,
        now: PgTimestamp,
    ) -> Option<StandbyStatusUpdate> {
        let on_write = self.step(FeedbackEvent::Written(written), now);
        self.step(FeedbackEvent::Flushed(acknowledgeable), now)
            .or(on_write)
    }

    /// Called when time passes; returns a periodic update when one is due.
    pub fn tick(&mut self, now: PgTimestamp) -> Option<StandbyStatusUpdate> {
        if self.config.status_interval.is_zero() {
            return None;
        }
        match self.last_sent_at {
            None => Some(self.send(now)),
            // The wall clock went backwards: restart the interval rather than go silent until the clock
            // catches up again.
            Some(last) if now < last => {
                self.last_sent_at = Some(now);
                None
            }
            Some(last) if now.saturating_duration_since(last) >= self.config.status_interval => {
                Some(self.send(now))
            }
            Some(_) => None,
        }
    }

    /// How long until [`tick`](Self::tick) has something to send; `None` when periodic updates are off.
    pub fn until_next_tick(&self, now: PgTimestamp) -> Option<Duration> {
        if self.config.status_interval.is_zero() {
            return None;
        }
        Some(match self.last_sent_at {
            None => Duration::ZERO,
            Some(last) => self
                .config
                .status_interval
                .saturating_sub(now.saturating_duration_since(last)),
        })
    }

    /// The update that would be sent now, without recording it as sent.
    pub fn current(&self, now: PgTimestamp) -> StandbyStatusUpdate {
        let flush = self.flush.min(self.write);
        StandbyStatusUpdate {
            write_lsn: self.write,
            flush_lsn: if self.config.report_flush {
                flush
            } else {
                Lsn::INVALID
            },
            apply_lsn: match (self.config.report_apply, self.config.apply_is_flush) {
                (false, _) => Lsn::INVALID,
                (true, true) => flush,
                (true, false) => self.apply.min(flush),
            },
            client_time_micros: now.micros(),
            reply_requested: false,
        }
    }

    fn send(&mut self, now: PgTimestamp) -> StandbyStatusUpdate {
        let update = self.current(now);
        self.last_sent = Some(update);
        self.last_sent_flush = self.flush;
        self.last_sent_at = Some(now);
        update
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000;

    fn t(secs: i64) -> PgTimestamp {
        PgTimestamp(1_000 * SEC + secs * SEC)
    }

    fn lsn(v: u64) -> Lsn {
        Lsn(v)
    }

    #[test]
    fn epoch_conversion() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(PgTimestamp::from_system_time(pg_epoch), PgTimestamp(0));
        assert_eq!(
            PgTimestamp::from_system_time(pg_epoch + Duration::from_micros(1_500_000)),
            PgTimestamp(1_500_000)
        );
        assert_eq!(
            PgTimestamp::from_system_time(UNIX_EPOCH),
            PgTimestamp(-946_684_800 * SEC)
        );
        // 2024-01-01 00:00:00 UTC = 1704067200 Unix seconds; SELECT extract(epoch from
        // '2024-01-01'::timestamptz - '2000-01-01'::timestamptz) * 1e6 = 757382400000000.
        let t2024 = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        assert_eq!(
            PgTimestamp::from_system_time(t2024),
            PgTimestamp(757_382_400_000_000)
        );
        assert_eq!(PgTimestamp(757_382_400_000_000).to_system_time(), t2024);
        assert_eq!(
            PgTimestamp(-5).to_system_time(),
            pg_epoch - Duration::from_micros(5)
        );
        let now = PgTimestamp::now();
        assert!(now > PgTimestamp(757_382_400_000_000), "clock before 2024?");
    }

    #[test]
    fn timestamp_arithmetic() {
        assert_eq!(t(5).saturating_duration_since(t(2)), Duration::from_secs(3));
        assert_eq!(t(2).saturating_duration_since(t(5)), Duration::ZERO);
        assert_eq!(t(0).saturating_add(Duration::from_secs(2)), t(2));
        assert_eq!(
            PgTimestamp(i64::MAX).saturating_add(Duration::from_secs(1)),
            PgTimestamp(i64::MAX)
        );
        assert_eq!(
            PgTimestamp(i64::MIN).saturating_duration_since(PgTimestamp(i64::MAX)),
            Duration::ZERO
        );
    }

    fn archive(interval: u64, synchronous: bool, slot: bool) -> Feedback {
        Feedback::new(
            FeedbackConfig::archive(Duration::from_secs(interval), synchronous, slot),
            lsn(0x100_0000),
        )
    }

    #[test]
    fn first_tick_sends_then_every_interval() {
        let mut f = archive(10, false, true);
        let u = f.tick(t(0)).unwrap();
        assert_eq!(u.write_lsn, lsn(0x100_0000));
        assert_eq!(u.flush_lsn, lsn(0x100_0000));
        assert_eq!(u.client_time_micros, t(0).micros());
        assert!(!u.reply_requested);
        assert_eq!(f.tick(t(9)), None);
        assert_eq!(f.until_next_tick(t(9)), Some(Duration::from_secs(1)));
        f.step(FeedbackEvent::Written(lsn(0x100_2000)), t(9));
        let u = f.tick(t(10)).unwrap();
        assert_eq!(u.write_lsn, lsn(0x100_2000));
        assert_eq!(u.flush_lsn, lsn(0x100_0000), "nothing flushed yet");
        assert_eq!(f.tick(t(15)), None);
        assert!(f.tick(t(20)).is_some());
    }

    #[test]
    fn disk_progress_reports_write_and_flush_together() {
        // Synchronous: a flush that moves is sent at once, with the write position beside it.
        let mut f = archive(10, true, true);
        let u = f
            .disk_progress(lsn(0x100_3000), lsn(0x100_2000), t(1))
            .unwrap();
        assert_eq!(
            (u.write_lsn, u.flush_lsn),
            (lsn(0x100_3000), lsn(0x100_2000))
        );
        assert_eq!(
            f.disk_progress(lsn(0x100_4000), lsn(0x100_2000), t(2)),
            None
        );
        // Not synchronous: recorded for the next update, nothing sent now.
        let mut f = archive(10, false, true);
        assert_eq!(
            f.disk_progress(lsn(0x100_3000), lsn(0x100_2000), t(1)),
            None
        );
        let u = f.current(t(1));
        assert_eq!(
            (u.write_lsn, u.flush_lsn),
            (lsn(0x100_3000), lsn(0x100_2000))
        );
    }

    #[test]
    fn zero_interval_disables_periodic_updates() {
        let mut f = archive(0, false, true);
        assert_eq!(f.tick(t(0)), None);
        assert_eq!(f.tick(t(1_000_000)), None);
        assert_eq!(f.until_next_tick(t(0)), None);
        // ...but a reply request is still answered.
        let u = f.step(
            FeedbackEvent::Keepalive {
                wal_end: lsn(0x200_0000),
                reply_requested: true,
            },
            t(3),
        );
        assert!(u.is_some());
    }

    /// The table: (config, events, expected send after each event).
    #[test]
    fn event_table() {
        /// An event and the (write, flush, apply) it must make the machine send, if anything.
        type Step = (FeedbackEvent, Option<(u64, u64, u64)>);
        struct Case {
            name: &'static str,
            feedback: Feedback,
            steps: Vec<Step>,
        }
        let k = |end: u64, reply: bool| FeedbackEvent::Keepalive {
            wal_end: lsn(end),
            reply_requested: reply,
        };
        let s = 0x100_0000u64;
        let cases = vec![
            Case {
                name: "reply requested answers at once with current positions",
                feedback: archive(10, false, true),
                steps: vec![
                    (FeedbackEvent::Written(lsn(s + 100)), None),
                    (k(s + 500, false), None),
                    (k(s + 500, true), Some((s + 100, s, s))),
                    (k(s + 500, true), Some((s + 100, s, s))),
                ],
            },
            Case {
                name: "no slot, not synchronous: flush reported as invalid",
                feedback: archive(10, false, false),
                steps: vec![
                    (FeedbackEvent::Written(lsn(s + 100)), None),
                    (FeedbackEvent::Flushed(lsn(s + 100)), None),
                    (k(0, true), Some((s + 100, 0, s + 100))),
                ],
            },
            Case {
                name: "synchronous: every flush advance is sent at once",
                feedback: archive(10, true, false),
                steps: vec![
                    (FeedbackEvent::Written(lsn(s + 100)), None),
                    (
                        FeedbackEvent::Flushed(lsn(s + 100)),
                        Some((s + 100, s + 100, s + 100)),
                    ),
                    (FeedbackEvent::Flushed(lsn(s + 100)), None),
                    (FeedbackEvent::Flushed(lsn(s + 50)), None),
                    (FeedbackEvent::Written(lsn(s + 300)), None),
                    (
                        FeedbackEvent::Flushed(lsn(s + 300)),
                        Some((s + 300, s + 300, s + 300)),
                    ),
                ],
            },
            Case {
                name: "not synchronous: flush advance waits for the interval",
                feedback: archive(10, false, true),
                steps: vec![(FeedbackEvent::Flushed(lsn(s + 100)), None)],
            },
            Case {
                name: "positions never go backwards (timeline switch restarts at segment start)",
                feedback: archive(10, true, true),
                steps: vec![
                    (
                        FeedbackEvent::Flushed(lsn(s + 0x800)),
                        Some((s + 0x800, s + 0x800, s + 0x800)),
                    ),
                    (FeedbackEvent::Written(lsn(s)), None),
                    (FeedbackEvent::Flushed(lsn(s)), None),
                    (k(0, true), Some((s + 0x800, s + 0x800, s + 0x800))),
                ],
            },
            Case {
                name: "flush report ahead of write report raises write",
                feedback: archive(10, true, true),
                steps: vec![(
                    FeedbackEvent::Flushed(lsn(s + 64)),
                    Some((s + 64, s + 64, s + 64)),
                )],
            },
            Case {
                name: "archive mode reports the durable position as applied, whatever replays",
                feedback: archive(10, true, true),
                steps: vec![
                    (FeedbackEvent::Applied(lsn(s + 64)), None),
                    (
                        FeedbackEvent::Flushed(lsn(s + 64)),
                        Some((s + 64, s + 64, s + 64)),
                    ),
                ],
            },
            Case {
                name: "standby mode reports apply, capped at flush",
                feedback: Feedback::new(FeedbackConfig::standby(DEFAULT_STATUS_INTERVAL), lsn(s)),
                steps: vec![
                    (FeedbackEvent::Written(lsn(s + 400)), None),
                    (FeedbackEvent::Applied(lsn(s + 300)), None),
                    (
                        FeedbackEvent::Flushed(lsn(s + 200)),
                        Some((s + 400, s + 200, s + 200)),
                    ),
                    (
                        FeedbackEvent::Flushed(lsn(s + 400)),
                        Some((s + 400, s + 400, s + 300)),
                    ),
                    (FeedbackEvent::Applied(lsn(s + 100)), None),
                    (k(0, true), Some((s + 400, s + 400, s + 300))),
                ],
            },
        ];
        for mut case in cases {
            for (i, (event, want)) in case.steps.into_iter().enumerate() {
                let got = case
                    .feedback
                    .step(event, t(i as i64))
                    .map(|u| (u.write_lsn.0, u.flush_lsn.0, u.apply_lsn.0));
                assert_eq!(got, want, "{}: step {i} ({event:?})", case.name);
            }
        }
    }

    #[test]
    fn reply_resets_the_interval() {
        let mut f = archive(10, false, true);
        f.tick(t(0)).unwrap();
        f.step(
            FeedbackEvent::Keepalive {
                wal_end: lsn(1),
                reply_requested: true,
            },
            t(8),
        )
        .unwrap();
        assert_eq!(f.tick(t(10)), None, "last update was at 8");
        assert!(f.tick(t(18)).is_some());
        assert_eq!(f.server_wal_end(), lsn(1));
    }

    #[test]
    fn clock_going_backwards_restarts_the_interval() {
        let mut f = archive(10, false, true);
        f.tick(t(100)).unwrap();
        assert_eq!(f.tick(t(50)), None);
        assert_eq!(f.tick(t(59)), None);
        assert!(f.tick(t(60)).is_some());
    }

    proptest! {
        /// Whatever the order and values of events, what is sent is monotonic and consistent.
        #[test]
        fn sent_positions_are_monotonic_and_ordered(
            events in proptest::collection::vec((0u8..4, 0u64..10_000, any::<bool>()), 0..60),
            synchronous: bool,
            slot: bool,
            standby: bool,
        ) {
            let config = if standby {
                FeedbackConfig::standby(Duration::from_secs(3))
            } else {
                FeedbackConfig::archive(Duration::from_secs(3), synchronous, slot)
            };
            let mut f = Feedback::new(config, lsn(1000));
            let mut prev: Option<StandbyStatusUpdate> = None;
            for (i, (kind, v, reply)) in events.into_iter().enumerate() {
                let now = t(i as i64);
                let event = match kind {
                    0 => FeedbackEvent::Written(lsn(v)),
                    1 => FeedbackEvent::Flushed(lsn(v)),
                    2 => FeedbackEvent::Applied(lsn(v)),
                    _ => FeedbackEvent::Keepalive { wal_end: lsn(v), reply_requested: reply },
                };
                let sent: Vec<_> = f.step(event, now).into_iter().chain(f.tick(now)).collect();
                for u in sent {
                    prop_assert!(u.flush_lsn <= u.write_lsn);
                    prop_assert!(u.apply_lsn <= u.write_lsn);
                    if config.report_flush {
                        prop_assert!(u.apply_lsn <= u.flush_lsn);
                    } else {
                        prop_assert_eq!(u.flush_lsn, Lsn::INVALID);
                    }
                    if !config.report_apply {
                        prop_assert_eq!(u.apply_lsn, Lsn::INVALID);
                    }
                    if config.apply_is_flush && config.report_flush {
                        prop_assert_eq!(u.apply_lsn, u.flush_lsn);
                    }
                    prop_assert!(!u.reply_requested);
                    if let Some(p) = prev {
                        prop_assert!(u.write_lsn >= p.write_lsn);
                        prop_assert!(u.flush_lsn >= p.flush_lsn);
                        prop_assert!(u.apply_lsn >= p.apply_lsn);
                        prop_assert!(u.client_time_micros >= p.client_time_micros);
                    }
                    prev = Some(u);
                }
            }
        }
    }
}
