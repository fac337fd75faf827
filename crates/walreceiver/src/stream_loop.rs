//! One CopyBoth stream of START_REPLICATION as a small state machine: [`StreamLoop`] waits for the
//! next event — a server message, the disk's progress, the standby's replay position, the end
//! position, shutdown, the status timer — and hands it to one method, which returns whether the
//! stream goes on ([`Next::Continue`]) or how it ended ([`StreamEnd`]).
//!
//! # Progress tracking (the invariant)
//! The flush position sent to the server is `min(durable, validated)` ([`acknowledgeable`]): bytes
//! are only acknowledged once the disk task has fsynced them (and the directory entry of a new
//! file), and — with validation on — once every record ending at or before that position passed its
//! CRC check. A position beyond what is on disk is never reported, so a server that recycles WAL on
//! our say-so never loses any.
//!
//! With an end position, whole messages are still written: the stream stops once the acknowledged
//! position reaches it, which for a position inside a record means once that record arrived
//! complete and passed its CRC.
//!
//! # How a stream ends
//! * End of timeline: CopyDone, then a row with the next timeline and its start — followed on the
//!   same connection (history file first, see [`crate::session`]).
//! * The server shuts down: after we confirmed everything it sent, the walsender sends
//!   CommandComplete *without* CopyDone and exits (`WalSndDone`) — transient, reconnect.
//! * Silence: an idle walsender sends nothing while we keep replying, so after
//!   [`SERVER_SILENCE_PING`] without a message we ask for a reply; no answer within
//!   [`SERVER_SILENCE_TIMEOUT`] means a dead connection — transient, reconnect.
//!
//! # Cancellation
//! Every future [`StreamLoop::run`] waits on in its `select!` is cancellation-safe
//! (`Connection::read_message` keeps a partly read message in its buffer; watch receivers and the
//! timer lose nothing), so whichever event wins, the others are simply asked again. The handlers
//! themselves run to completion and are never raced against anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tracing::{debug, info};
use walrelay_client::{message_name, ClientError, Connection, TimelineSwitch};
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::{HotStandbyFeedback, Lsn, PrimaryKeepalive, ReplicationMessage, XLogData};
use walrelay_wal::WalValidator;

use crate::commit_path::CommitPathTracker;
use crate::config::{
    ReceiverConfig, StopReason, Target, SERVER_SILENCE_PING, SERVER_SILENCE_TIMEOUT,
};
use crate::disk_task::{DiskProgress, DiskRequest, DiskTask};
use crate::error::{ReceiveError, StreamViolation};
use crate::feedback::{Feedback, FeedbackConfig, FeedbackEvent, PgTimestamp, StandbyStatusUpdate};
use crate::replay_poller::spawn_replay_poller;
use crate::session::SessionState;
use crate::tap::{StreamTap, TimelinePosition};

/// How one START_REPLICATION ended.
pub(crate) enum StreamEnd {
    Stop(StopReason),
    /// The timeline ended; continue on the next.
    Switch(TimelineSwitch),
}

/// What a handler decided.
enum Next {
    Continue,
    End(StreamEnd),
}

/// The position that may be acknowledged: durable and (if validating) validated.
pub(crate) fn acknowledgeable(p: &DiskProgress, validator: &Option<WalValidator>) -> Lsn {
    match validator {
        Some(v) => p.flush_lsn.min(v.validated_lsn()),
        None => p.flush_lsn,
    }
}

/// Resolves once a stop is asked for (or nobody can ask any more). Cancellation-safe.
pub(crate) async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Most messages in a row after which an inline disk task's fsync is put off because more bytes
/// were already in the socket.
const MAX_DEFERRED_SETTLES: u32 = 4;

/// How much later than wanted the stream's timer may be set before it is moved: the deadlines
/// (the next status update, the server's silence) are read from two clocks, and a timer moved for
/// every microsecond of their jitter would be moved at every message.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// The state of one CopyBoth stream.
pub(crate) struct StreamLoop<'a> {
    cfg: &'a ReceiverConfig,
    state: &'a mut SessionState,
    conn: &'a mut Connection,
    disk: &'a DiskTask,
    validator: Option<WalValidator>,
    feedback: Feedback,
    progress: watch::Receiver<DiskProgress>,
    endpos: watch::Receiver<Option<Lsn>>,
    shutdown: watch::Receiver<bool>,
    replay: watch::Receiver<Lsn>,
    /// The next LSN the server must send.
    next: Lsn,
    /// The end position is received; stop once it is acknowledgeable.
    endpos_reached: bool,
    /// Consecutive messages after which an inline fsync was put off for bytes in the socket.
    deferred_settles: u32,
    /// When the server last said anything (read at every message: also the receipt time of the
    /// commit-path latency), and whether we asked it to since.
    last_heard: Instant,
    pinged: bool,
    out: BytesMut,
    /// Receipt times of the WAL not yet durable / acknowledged ([`crate::commit_path`]).
    commit_path: CommitPathTracker,
    /// A relay's seam ([`crate::tap`]) and the two watches it feeds back.
    tap: Option<Arc<StreamTap>>,
    flush_cap: Option<watch::Receiver<Lsn>>,
    hot_standby_feedback: Option<watch::Receiver<Option<HotStandbyFeedback>>>,
}

/// Resolves when the watch changes; never, without one. A watch whose sender is gone is
/// dropped (it cannot change any more).
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    let alive = match rx.as_mut() {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    };
    if !alive {
        *rx = None;
    }
}

impl<'a> StreamLoop<'a> {
    pub fn new(
        cfg: &'a ReceiverConfig,
        state: &'a mut SessionState,
        conn: &'a mut Connection,
        disk: &'a DiskTask,
        start: Lsn,
        validator: Option<WalValidator>,
    ) -> Self {
        let tap = state.tap.clone();
        // A flush cap (a relay's --sync-quorum) is reported as soon as it moves.
        let capped = tap.as_ref().is_some_and(|t| t.flush_cap.is_some());
        let fb_config = match cfg.target {
            Target::Archive { .. } => FeedbackConfig::archive(
                cfg.status_interval,
                cfg.synchronous || capped,
                cfg.slot.is_some() || cfg.temporary_slot.is_some(),
            ),
            Target::PgWal { .. } => {
                let mut c = FeedbackConfig::standby(cfg.status_interval);
                c.report_apply = cfg.apply_source.is_some();
                c
            }
        };
        let commit_path = CommitPathTracker::new(fb_config.report_flush);
        StreamLoop {
            cfg,
            state,
            conn,
            disk,
            validator,
            feedback: Feedback::new(fb_config, start),
            progress: disk.progress(),
            endpos: cfg.endpos.clone(),
            shutdown: cfg.shutdown.clone(),
            replay: spawn_replay_poller(cfg.apply_source.clone(), cfg.status_interval),
            next: start,
            endpos_reached: false,
            deferred_settles: 0,
            last_heard: Instant::now(),
            pinged: false,
            out: BytesMut::with_capacity(64),
            commit_path,
            flush_cap: tap.as_ref().and_then(|t| t.flush_cap.clone()),
            hot_standby_feedback: tap.as_ref().map(|t| t.hot_standby_feedback.clone()),
            tap,
        }
    }

    /// Runs the stream until it ends. Not cancellation-safe itself (a dropped stream loses the
    /// final status update); the caller stops it through the shutdown watch.
    pub async fn run(mut self) -> Result<StreamEnd, ReceiveError> {
        let polls_replay = self.cfg.apply_source.is_some();
        // A new stream (a new walsender) learns the feedback at once.
        self.send_hot_standby_feedback().await?;
        // An end position the stream starts at or past is reached already: stop now, as
        // pg_receivewal checks it before it streams, not at the server's next message (which an
        // idle server sends only when pinged, 10 s on). Without an end position this does nothing.
        if let Next::End(end) = self.on_endpos_set().await? {
            return Ok(end);
        }
        // One timer for the whole stream, moved only when it must fire sooner than it is set to:
        // a new `Sleep` per turn of the loop cost a trip through the timer wheel for every
        // message. A timer set too early merely wakes `on_timer` for nothing, which it tolerates.
        let timer = tokio::time::sleep(self.until_next_timer());
        tokio::pin!(timer);
        loop {
            let wanted = tokio::time::Instant::now() + self.until_next_timer();
            if timer.is_elapsed() || wanted + TIMER_SLACK < timer.deadline() {
                timer.as_mut().reset(wanted);
            }
            let next = tokio::select! {
                biased;
                _ = stop_requested(&mut self.shutdown) => self.on_shutdown().await?,
                changed = self.progress.changed() => self.on_disk_progress(changed.is_ok()).await?,
                replayed = self.replay.changed(), if polls_replay => self.on_replayed(replayed.is_ok()).await?,
                _ = self.endpos.changed(), if !self.endpos_reached => self.on_endpos_set().await?,
                _ = changed(&mut self.flush_cap) => self.on_flush_cap().await?,
                _ = changed(&mut self.hot_standby_feedback) => {
                    self.send_hot_standby_feedback().await?;
                    Next::Continue
                }
                _ = &mut timer => self.on_timer().await?,
                msg = self.conn.read_message() => self.on_message(msg).await?,
            };
            if let Next::End(end) = next {
                return Ok(end);
            }
        }
    }

    /// Until the next status update is due or the server's silence needs attention.
    fn until_next_timer(&self) -> Duration {
        let silence_limit = if self.pinged {
            SERVER_SILENCE_TIMEOUT
        } else {
            SERVER_SILENCE_PING
        };
        self.feedback
            .until_next_tick(PgTimestamp::now())
            .unwrap_or(Duration::from_secs(3600))
            .min(silence_limit.saturating_sub(self.last_heard.elapsed()))
    }

    async fn on_shutdown(&mut self) -> Result<Next, ReceiveError> {
        info!("shutdown requested; flushing and closing the stream");
        self.finish(StopReason::Shutdown).await
    }

    async fn on_disk_progress(&mut self, alive: bool) -> Result<Next, ReceiveError> {
        if !alive {
            // The disk task ended: its error comes from finish().
            return Err(ReceiveError::DiskTaskStopped);
        }
        let p = *self.progress.borrow_and_update();
        self.cfg.stats.disk(p.write_lsn, p.flush_lsn);
        if let Some(s) = self.commit_path.durable(p.flush_lsn, Instant::now()) {
            self.cfg.stats.commit_sample(s);
        }
        let ack = acknowledgeable(&p, &self.validator);
        if let Some(tap) = &self.tap {
            // The disk task reports the timeline it writes; right after a switch it may still
            // describe the previous one.
            if p.timeline == self.state.timeline {
                tap.acknowledge(TimelinePosition {
                    timeline: p.timeline,
                    lsn: ack,
                });
            }
        }
        if let Some(u) =
            self.feedback
                .disk_progress(p.write_lsn, self.reportable(ack), PgTimestamp::now())
        {
            self.send_update(&u).await?;
        }
        self.state.last_flushed = self.state.last_flushed.max(p.flush_lsn);
        if self.endpos_reached {
            let end = self.endpos.borrow().unwrap_or(Lsn(u64::MAX));
            if ack >= end {
                return self.finish(StopReason::EndPosition(end)).await;
            }
        }
        Ok(Next::Continue)
    }

    /// Whether everything up to the end position has been received and, when WAL is validated,
    /// validated: a record that straddles the end position needs its last bytes first.
    fn validated_through_endpos(&self) -> bool {
        let end = self.endpos.borrow().unwrap_or(Lsn(u64::MAX));
        match &self.validator {
            Some(v) => v.validated_lsn() >= end,
            None => self.next >= end,
        }
    }

    /// The flush position to report for an acknowledgeable `ack`: capped by a relay's quorum.
    fn reportable(&self, ack: Lsn) -> Lsn {
        match &self.tap {
            Some(tap) => tap.cap(ack),
            None => ack,
        }
    }

    /// The relay's quorum moved: report at once what it now allows.
    async fn on_flush_cap(&mut self) -> Result<Next, ReceiveError> {
        let p = *self.progress.borrow();
        let ack = self.reportable(acknowledgeable(&p, &self.validator));
        if let Some(u) = self
            .feedback
            .disk_progress(p.write_lsn, ack, PgTimestamp::now())
        {
            self.send_update(&u).await?;
        }
        Ok(Next::Continue)
    }

    /// Sends the relay's hot standby feedback ('h'), if it has any.
    async fn send_hot_standby_feedback(&mut self) -> Result<(), ReceiveError> {
        let Some(mut hs) = self
            .hot_standby_feedback
            .as_mut()
            .and_then(|rx| *rx.borrow_and_update())
        else {
            return Ok(());
        };
        hs.client_time = PgTimestamp::now().micros();
        self.out.clear();
        hs.encode(&mut self.out);
        self.conn.queue_copy_data(&self.out);
        self.conn.flush().await?;
        debug!(
            xmin = hs.xmin,
            catalog_xmin = hs.catalog_xmin,
            "hot standby feedback sent"
        );
        Ok(())
    }

    async fn on_replayed(&mut self, alive: bool) -> Result<Next, ReceiveError> {
        if alive {
            let applied = *self.replay.borrow_and_update();
            if let Some(u) = self
                .feedback
                .step(FeedbackEvent::Applied(applied), PgTimestamp::now())
            {
                self.send_update(&u).await?;
            }
        }
        Ok(Next::Continue)
    }

    async fn on_endpos_set(&mut self) -> Result<Next, ReceiveError> {
        let Some(end) = *self.endpos.borrow_and_update() else {
            return Ok(Next::Continue);
        };
        if self.next >= end {
            self.endpos_reached = true;
            self.disk_send(DiskRequest::Flush).await?;
            let p = *self.progress.borrow();
            if acknowledgeable(&p, &self.validator) >= end {
                return self.finish(StopReason::EndPosition(end)).await;
            }
        }
        Ok(Next::Continue)
    }

    async fn on_timer(&mut self) -> Result<Next, ReceiveError> {
        let silent = self.last_heard.elapsed();
        if silent >= SERVER_SILENCE_TIMEOUT {
            return Err(ReceiveError::ServerSilent(silent.as_secs()));
        }
        if !self.pinged && silent >= SERVER_SILENCE_PING {
            // A walsender with nothing to send stays silent as long as we keep replying, so ask
            // for a sign of life (what a walreceiver does at wal_receiver_timeout / 2).
            let mut u = self.feedback.current(PgTimestamp::now());
            u.reply_requested = true;
            self.send_update(&u).await?;
            self.pinged = true;
        }
        if let Some(u) = self.feedback.tick(PgTimestamp::now()) {
            self.send_update(&u).await?;
            // Feedback goes with every periodic update, as a walreceiver sends it.
            if let Some(rx) = self.hot_standby_feedback.as_mut() {
                rx.mark_changed();
            }
        }
        Ok(Next::Continue)
    }

    async fn on_message(
        &mut self,
        msg: Result<BackendMessage, ClientError>,
    ) -> Result<Next, ReceiveError> {
        self.last_heard = Instant::now();
        self.pinged = false;
        match msg.map_err(|e| self.server_error(e))? {
            BackendMessage::CopyData(payload) => self.on_copy_data(payload).await,
            BackendMessage::CopyDone => self.on_copy_done().await,
            BackendMessage::CommandComplete { .. } => {
                // A walsender shutting down cleanly sends CommandComplete without CopyDone
                // (walsender.c, WalSndDone) and exits; libpq's PQgetCopyData reports that as the
                // end of the copy too. Everything queued is made durable by the caller.
                self.disk_send(DiskRequest::Flush).await?;
                Err(ReceiveError::ServerStopped)
            }
            BackendMessage::ErrorResponse(e) => {
                let _ = self.conn.drain_until_ready().await;
                Err(self.server_error(ClientError::server(e)))
            }
            other => Err(StreamViolation::UnexpectedMessage(message_name(&other)).into()),
        }
    }

    async fn on_copy_data(&mut self, payload: Bytes) -> Result<Next, ReceiveError> {
        self.cfg.stats.message();
        match ReplicationMessage::parse(&payload).map_err(StreamViolation::from)? {
            ReplicationMessage::XLogData(x) => self.on_xlog_data(x).await?,
            ReplicationMessage::PrimaryKeepalive(k) => self.on_keepalive(k).await?,
        }
        if self.conn.has_buffered_message() {
            return Ok(Next::Continue);
        }
        // More of the stream already in the socket (WAL sent while this was validated and
        // written): an inline disk task reads it before it fsyncs, so that one fsync covers it
        // too — pg_receivewal reads until the socket is empty. A few times in a row at most, so
        // that a steady stream cannot hold a flush back.
        if self.disk.is_inline()
            && self.deferred_settles < MAX_DEFERRED_SETTLES
            && self.conn.has_unread_bytes()
        {
            self.deferred_settles += 1;
            return Ok(Next::Continue);
        }
        self.deferred_settles = 0;
        // Nothing more at hand: an inline disk task fsyncs now, one fsync for every message read
        // so far (group commit). Also after a keepalive: WAL read just before it must not wait
        // for the next WAL to be flushed.
        self.disk
            .settle()
            .map_err(|_| ReceiveError::DiskTaskStopped)?;
        // What that fsync made durable is reported now rather than at the next turn of the loop
        // (the watch is marked seen, so the loop does not report it again).
        if self.disk.is_inline() && self.progress.has_changed().unwrap_or(false) {
            return self.on_disk_progress(true).await;
        }
        Ok(Next::Continue)
    }

    async fn on_xlog_data(&mut self, x: XLogData) -> Result<(), ReceiveError> {
        if self.endpos_reached && self.validated_through_endpos() {
            // The end position is received (and validated); what the server sends while the last
            // flush completes is not written, as pg_receivewal stops after the message that
            // crossed it. Without this, a fast server's next megabytes landed in the archive.
            return Ok(());
        }
        if x.data_start != self.next {
            return Err(StreamViolation::WalOutOfOrder {
                expected: self.next,
                got: x.data_start,
            }
            .into());
        }
        self.cfg.stats.server_end(x.wal_end);
        let received_at = self.last_heard;
        // Whole messages are kept even past the end position: the record holding it can only be
        // validated (and so acknowledged) once its last byte arrived, and pg_receivewal writes
        // whole messages too.
        let data = x.data;
        if let Some(v) = self.validator.as_mut() {
            v.feed(self.next, &data).map_err(ReceiveError::InvalidWal)?;
        }
        if let Some(tap) = &self.tap {
            tap.observer.received(self.state.timeline, self.next, &data);
        }
        let len = data.len() as u64;
        if len > 0 {
            let lsn = self.next;
            self.commit_path.received(received_at, Lsn(lsn.0 + len));
            self.disk_send(DiskRequest::Write { lsn, data }).await?;
            // Waiting for a slow disk (backpressure) is not server silence: the server's next
            // messages wait in the socket meanwhile.
            self.last_heard = Instant::now();
        }
        self.next = Lsn(self.next.0 + len);
        self.cfg.stats.received(self.next, len);
        if !self.endpos_reached && self.endpos.borrow().is_some_and(|end| self.next >= end) {
            self.endpos_reached = true;
            self.disk_send(DiskRequest::Flush).await?;
        }
        Ok(())
    }

    async fn on_keepalive(&mut self, k: PrimaryKeepalive) -> Result<(), ReceiveError> {
        self.cfg.stats.server_end(k.wal_end);
        if k.reply_requested {
            // Reply with everything received durable, as pg_receivewal does (an inline disk task
            // flushes now; a disk thread has published what it has).
            self.disk
                .settle()
                .map_err(|_| ReceiveError::DiskTaskStopped)?;
            let p = *self.progress.borrow();
            let _ = self.feedback.disk_progress(
                p.write_lsn,
                self.reportable(acknowledgeable(&p, &self.validator)),
                PgTimestamp::now(),
            );
        }
        let event = FeedbackEvent::Keepalive {
            wal_end: k.wal_end,
            reply_requested: k.reply_requested,
        };
        if let Some(u) = self.feedback.step(event, PgTimestamp::now()) {
            self.send_update(&u).await?;
        }
        Ok(())
    }

    /// End of timeline (or the server stopping): acknowledge and read what follows.
    async fn on_copy_done(&mut self) -> Result<Next, ReceiveError> {
        self.conn.queue_copy_done();
        self.conn.flush().await?;
        let switch = self
            .conn
            .finish_replication()
            .await
            .map_err(|e| self.server_error(e))?;
        self.disk_send(DiskRequest::Flush).await?;
        match switch {
            Some(sw) => Ok(Next::End(StreamEnd::Switch(sw))),
            None => Err(ReceiveError::Client(ClientError::Closed)),
        }
    }

    /// Clean end of the stream: everything durable, the final position reported, COPY ended.
    async fn finish(&mut self, reason: StopReason) -> Result<Next, ReceiveError> {
        self.disk_send(DiskRequest::Flush).await?;
        // Wait until everything received is durable, so the final status update reports all of
        // it. A published flush position that merely catches up with the write position is not
        // enough: the disk task may not have taken the last writes off the queue yet.
        let received = self.next;
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        loop {
            let p = *self.progress.borrow_and_update();
            if p.flush_lsn >= received {
                break;
            }
            tokio::select! {
                r = self.progress.changed() => if r.is_err() { break },
                _ = &mut deadline => break,
            }
        }
        let p = *self.progress.borrow();
        self.state.last_flushed = self.state.last_flushed.max(p.flush_lsn);
        let now = PgTimestamp::now();
        let ack = self.reportable(acknowledgeable(&p, &self.validator));
        let _ = self.feedback.disk_progress(p.write_lsn, ack, now);
        let update = self.feedback.current(now);
        let _ = self.send_update(&update).await;
        self.conn.queue_copy_done();
        let _ = self.conn.flush().await;
        // Read the server's CopyDone / CommandComplete; a server that already went away is fine.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.finish_replication()).await;
        Ok(Next::End(StreamEnd::Stop(reason)))
    }

    async fn disk_send(&self, request: DiskRequest) -> Result<(), ReceiveError> {
        self.disk
            .send(request)
            .await
            .map_err(|_| ReceiveError::DiskTaskStopped)
    }

    async fn send_update(&mut self, u: &StandbyStatusUpdate) -> Result<(), ReceiveError> {
        // A flush this task has not handled as disk progress yet (a reply to a keepalive) counts
        // as durable now, before the write.
        let flushed = self.progress.borrow().flush_lsn;
        if let Some(s) = self.commit_path.durable(flushed, Instant::now()) {
            self.cfg.stats.commit_sample(s);
        }
        self.out.clear();
        walrelay_protocol::StandbyStatusUpdate {
            write_lsn: u.write_lsn,
            flush_lsn: u.flush_lsn,
            apply_lsn: u.apply_lsn,
            client_time: u.client_time_micros,
            reply_requested: u.reply_requested,
        }
        .encode(&mut self.out);
        self.conn.queue_copy_data(&self.out);
        self.conn.flush().await?;
        if let Some(s) = self.commit_path.acknowledged(u.flush_lsn, Instant::now()) {
            self.cfg.stats.commit_sample(s);
        }
        self.cfg.stats.reported(u.flush_lsn);
        debug!(write = %u.write_lsn, flush = %u.flush_lsn, apply = %u.apply_lsn, "status update sent");
        Ok(())
    }

    fn server_error(&self, e: ClientError) -> ReceiveError {
        ReceiveError::from_server(e, self.cfg.slot.as_deref())
    }
}
