//! `START_REPLICATION`: one downstream's CopyBoth stream (`StartReplication`, `WalSndLoop`,
//! `XLogSendPhysical` of a walsender).
//!
//! ```text
//!  checks (slot, timeline, start) ─► [CopyBothResponse] ─► loop ─► [next_tli row] START_STREAMING, tag
//!    loop: produce XLogData up to the servable position (buffer, else archive)
//!          select { client message ('r', 'h', CopyDone) | write some | servable moved | timer | stop }
//! ```
//!
//! * **What is sent.** `[sent, limit)` where `limit` is the relay's servable position on the
//!   streamed timeline ([`crate::wal_feed`]): durable and validated WAL only. A message carries
//!   at most `MAX_SEND_SIZE` (16 pages); when more is waiting it ends on a page boundary, as a
//!   walsender cuts it. Bytes come from the fan-out buffer, or from the archive for a downstream
//!   the buffer no longer covers — which never slows anyone else.
//! * **A start just past the end** waits for the WAL (a base backup starts in a segment the relay
//!   may not have yet); further ahead is the walsender's error after CopyBothResponse.
//! * **End of a timeline.** When the upstream was promoted and the streamed timeline became
//!   historic, the stream runs to its switch point, sends CopyDone, waits for the client's, and
//!   answers with the next timeline and its start, as a cascading standby does.
//! * **Flow control.** At most [`OUT_LIMIT`] bytes wait for the client; a client that stops
//!   reading stops its own stream only. `wal_sender_timeout`: at half of it without a word from
//!   the client a keepalive asks for a reply; at the whole, the connection is dropped.
//! * **Replies.** `'r'` moves the downstream's positions (metrics, `--sync-quorum`) and its slot;
//!   `'h'` its hot standby feedback; a reply request is answered with a keepalive at once.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use walrelay_protocol::frontend::FrontendMessage;
use walrelay_protocol::replication::to_pg_timestamp;
use walrelay_protocol::server::{encode_copy_data, encode_copy_done};
use walrelay_protocol::walsender;
use walrelay_protocol::{
    encode_xlog_data_message, HotStandbyFeedback, Lsn, PrimaryKeepalive, StandbyStatusUpdate,
    TimelineId,
};
use walrelay_walreceiver::TimelinePosition;

use super::io::ReadError;
use super::{distance, error, log_lost, End, Session};
use crate::segment_reader::{ReadError as SegmentError, SegmentReader};
use crate::wal_feed::Limit;

/// `XLOG_BLCKSZ`.
const PAGE: u64 = 8192;
/// `MAX_SEND_SIZE`: the most WAL in one XLogData.
const MAX_SEND: u64 = 16 * PAGE;
/// Bytes queued for the client before the stream stops producing.
pub const OUT_LIMIT: usize = 256 * 1024;
/// One read from the archive: a few messages' worth.
const DISK_READ: usize = 1024 * 1024;

/// How a stream ends.
enum Outcome {
    /// Both sides sent CopyDone; the next timeline and its start when the streamed one ended.
    Done(Option<(TimelineId, Lsn)>),
    /// An ERROR inside the COPY: sent, then ReadyForQuery.
    Failed,
}

pub(super) async fn start_replication(
    s: &mut Session,
    slot: Option<String>,
    start: Lsn,
    timeline: Option<TimelineId>,
) -> Result<(), End> {
    let feed = s.shared.feed.clone();
    let cur = match feed.current() {
        Ok(c) => c,
        Err(e) => {
            s.send_error(&error("58030", &e.to_string()));
            return Ok(());
        }
    };
    let tli = timeline.unwrap_or(cur.timeline);
    if let Some(name) = &slot {
        if let Err(e) = s.shared.slots.acquire(name, s.pid) {
            s.send_error(&e.into());
            return Ok(());
        }
    }
    let release = |s: &mut Session| {
        if let Some(name) = &slot {
            s.shared.slots.release(name, s.pid);
        }
    };
    let historic = match feed.limit(tli) {
        Ok(Some(Limit::Live(_))) => None,
        Ok(Some(Limit::Historic { end, next })) => {
            if start > end {
                let mut f = error(
                    "XX000",
                    &format!(
                        "requested starting point {start} on timeline {tli} is not in this server's history"
                    ),
                );
                f.detail = Some(format!(
                    "This server's history forked from timeline {tli} at {end}."
                ));
                s.send_error(&f);
                release(s);
                return Ok(());
            }
            Some((end, next))
        }
        Ok(None) => {
            s.send_error(&error(
                "XX000",
                &format!(
                    "requested timeline {} is not in this server's history",
                    tli.0
                ),
            ));
            release(s);
            return Ok(());
        }
        Err(e) => {
            s.send_error(&error("58030", &e.to_string()));
            release(s);
            return Ok(());
        }
    };
    let major = s.major();
    if let Some((end, next)) = historic {
        if start == end {
            // Exactly at the end of a historic timeline: no COPY, just where to go next.
            release(s);
            s.reply(|out| walsender::end_of_streaming(major, Some((next, end)), out));
            return Ok(());
        }
    }
    walsender::copy_both_response(&mut s.io.tx.out);
    if historic.is_none() && start > cur.lsn {
        let near = feed.worth_waiting_for(start).unwrap_or(false);
        if !near {
            s.send_error(&error(
                "XX000",
                &format!(
                    "requested starting point {start} is ahead of the WAL flush position of this server {}",
                    cur.lsn
                ),
            ));
            release(s);
            return Ok(());
        }
        debug!(%start, servable = %cur.lsn, "start point just ahead of the relay's WAL: waiting for it");
    }
    info!(%start, timeline = %tli, slot = %super::Printable(slot.as_deref().unwrap_or("")), "streaming WAL");
    s.shared.stats.streaming(s.pid, tli, start, slot.as_deref());
    let stream = Stream {
        timeline: tli,
        sent: start,
        historic,
        acknowledged: feed.subscribe(),
        done_sending: false,
        done_receiving: false,
        caught_up: false,
        last_heard: Instant::now(),
        pinged: false,
        reader: None,
        read_ahead: None,
        slot: slot.clone(),
    };
    let outcome = stream.run(s).await;
    release(s);
    s.shared
        .stats
        .set_state(s.pid, crate::downstreams::DownstreamState::Startup);
    match outcome? {
        Outcome::Done(next) => {
            s.reply(|out| walsender::end_of_streaming(major, next, out));
        }
        Outcome::Failed => {}
    }
    Ok(())
}

struct Stream {
    timeline: TimelineId,
    /// The next byte to send.
    sent: Lsn,
    /// The streamed timeline ended: its end and the next timeline.
    historic: Option<(Lsn, TimelineId)>,
    acknowledged: watch::Receiver<TimelinePosition>,
    done_sending: bool,
    done_receiving: bool,
    /// Everything servable is sent; waiting for more.
    caught_up: bool,
    last_heard: Instant,
    pinged: bool,
    reader: Option<SegmentReader>,
    /// WAL read from the archive and not yet sent.
    read_ahead: Option<(Lsn, Bytes)>,
    slot: Option<String>,
}

impl Stream {
    async fn run(mut self, s: &mut Session) -> Result<Outcome, End> {
        let mut shutdown = s.shared.shutdown.clone();
        let timeout = s.shared.config.wal_sender_timeout;
        loop {
            if let Err(f) = self.produce(s).await {
                s.send_error(&f);
                return Ok(Outcome::Failed);
            }
            if self.done_sending && self.done_receiving && s.io.tx.out.is_empty() {
                return Ok(Outcome::Done(self.historic.map(|(end, next)| (next, end))));
            }
            let waiting_for_wal = self.caught_up && !self.done_sending;
            let wake = self.next_timer(timeout);
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|v| *v) => {
                    // A walsender at shutdown: CommandComplete inside the COPY, then close.
                    walsender::shutdown_while_streaming(&mut s.io.tx.out);
                    return Err(End);
                }
                msg = s.io.rx.read_message() => self.on_message(s, msg)?,
                written = s.io.tx.write_some(), if !s.io.tx.out.is_empty() => {
                    if let Err(e) = written {
                        log_lost(&e);
                        return Err(End);
                    }
                }
                _ = self.acknowledged.changed(), if waiting_for_wal => {}
                _ = sleep_until(wake) => self.on_timer(s, timeout)?,
            }
        }
    }

    /// When the keepalive or the timeout is due; `None` without a timeout.
    fn next_timer(&self, timeout: Duration) -> Option<Instant> {
        if timeout.is_zero() {
            return None;
        }
        Some(if self.pinged {
            self.last_heard + timeout
        } else {
            self.last_heard + timeout / 2
        })
    }

    fn on_timer(&mut self, s: &mut Session, timeout: Duration) -> Result<(), End> {
        let silent = self.last_heard.elapsed();
        if silent >= timeout {
            // What a walsender logs; the client is told nothing (it is not listening).
            info!(
                silent_secs = silent.as_secs(),
                "terminating walsender process due to replication timeout"
            );
            s.io.tx.out.clear();
            return Err(End);
        }
        if !self.pinged && silent >= timeout / 2 {
            self.keepalive(s, true);
            self.pinged = true;
        }
        Ok(())
    }

    fn keepalive(&self, s: &mut Session, reply_requested: bool) {
        let mut payload = BytesMut::with_capacity(18);
        PrimaryKeepalive {
            wal_end: self.sent,
            send_time: now(),
            reply_requested,
        }
        .encode(&mut payload);
        let _ = encode_copy_data(&payload, &mut s.io.tx.out);
    }

    fn on_message(
        &mut self,
        s: &mut Session,
        msg: Result<FrontendMessage, ReadError>,
    ) -> Result<(), End> {
        self.last_heard = Instant::now();
        self.pinged = false;
        match msg {
            Ok(FrontendMessage::CopyData(payload)) if !self.done_receiving => {
                self.on_copy_data(s, &payload)
            }
            Ok(FrontendMessage::CopyDone) if !self.done_receiving => {
                self.done_receiving = true;
                if !self.done_sending {
                    // The client stops (pg_receivewal -E, pg_basebackup's WAL streamer).
                    encode_copy_done(&mut s.io.tx.out);
                    self.done_sending = true;
                }
                Ok(())
            }
            Ok(FrontendMessage::Terminate) | Err(ReadError::Closed) => Err(End),
            Err(ReadError::Io(e)) => {
                log_lost(&e);
                Err(End)
            }
            Err(ReadError::Protocol(e)) => Err(s.send_fatal("08P01", &e.to_string())),
            Ok(other) => Err(s.send_fatal(
                "08P01",
                &format!("invalid standby message type \"{}\"", message_type(&other)),
            )),
        }
    }

    fn on_copy_data(&mut self, s: &mut Session, payload: &Bytes) -> Result<(), End> {
        match payload.first() {
            Some(b'r') => {
                let Ok(r) = StandbyStatusUpdate::parse(payload) else {
                    return Err(s.send_fatal("08P01", "invalid standby status update"));
                };
                s.shared
                    .stats
                    .reply(s.pid, r.write_lsn, r.flush_lsn, r.apply_lsn);
                if let Some(slot) = &self.slot {
                    s.shared.slots.advance(slot, self.timeline, r.flush_lsn);
                }
                if r.reply_requested {
                    self.keepalive(s, false);
                }
                Ok(())
            }
            Some(b'h') => {
                let Ok(h) = HotStandbyFeedback::parse(payload) else {
                    return Err(s.send_fatal("08P01", "invalid hot standby feedback message"));
                };
                s.shared.stats.feedback(s.pid, h);
                Ok(())
            }
            other => {
                warn!(message_type = ?other.map(|b| char::from(*b)), "unexpected message type from a standby");
                Err(s.send_fatal(
                    "08P01",
                    &format!(
                        "unexpected message type \"{}\"",
                        other.map_or('?', |b| char::from(*b))
                    ),
                ))
            }
        }
    }

    /// The servable end of the streamed timeline now; notices the timeline becoming historic.
    fn limit(&mut self, s: &Session) -> Result<Lsn, walrelay_protocol::ErrorFields> {
        if let Some((end, _)) = self.historic {
            return Ok(end);
        }
        match s.shared.feed.limit(self.timeline) {
            Ok(Some(Limit::Live(l))) => Ok(l),
            Ok(Some(Limit::Historic { end, next })) => {
                info!(timeline = %self.timeline, %end, next = %next, "the upstream moved to a new timeline; ending this one at its switch point");
                self.historic = Some((end, next));
                Ok(end)
            }
            Ok(None) => Err(error(
                "XX000",
                &format!(
                    "timeline {} is no longer in this server's history: the upstream moved to a timeline that does not descend from it",
                    self.timeline
                ),
            )),
            Err(e) => Err(error("58030", &e.to_string())),
        }
    }

    /// Queues WAL (or the end of a historic timeline) until the output is full or nothing is
    /// servable.
    async fn produce(&mut self, s: &mut Session) -> Result<(), walrelay_protocol::ErrorFields> {
        self.caught_up = false;
        while !self.done_sending && s.io.tx.out.len() < OUT_LIMIT {
            let limit = self.limit(s)?;
            if let Some((end, _)) = self.historic {
                if self.sent >= end {
                    debug!(timeline = %self.timeline, %end, sent = %self.sent, "reached the end of the timeline");
                    encode_copy_done(&mut s.io.tx.out);
                    self.done_sending = true;
                    break;
                }
            }
            if self.sent >= limit {
                self.caught_up = true;
                s.shared.stats.sent(s.pid, self.sent, true);
                break;
            }
            let remaining = distance(self.sent, limit);
            let len = if remaining <= MAX_SEND {
                remaining
            } else {
                // Cut on a page boundary when more is waiting, as XLogSendPhysical does.
                let end = (self.sent.0 + MAX_SEND) / PAGE * PAGE;
                (end - self.sent.0).max(1)
            };
            let shared = s.shared.clone();
            let parts = self.wal(&shared, len as usize, limit).await?;
            let n: usize = parts.iter().map(Bytes::len).sum();
            if n == 0 {
                self.caught_up = true;
                break;
            }
            let slices: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
            encode_xlog_data_message(self.sent, limit, now(), &slices, &mut s.io.tx.out)
                .map_err(|e| error("XX000", &e.to_string()))?;
            self.sent = Lsn(self.sent.0 + n as u64);
            s.shared.stats.sent(s.pid, self.sent, false);
        }
        Ok(())
    }

    /// Up to `len` bytes at `self.sent`, not past `limit`: from the buffer, else the archive.
    async fn wal(
        &mut self,
        shared: &crate::shared::Shared,
        len: usize,
        limit: Lsn,
    ) -> Result<Vec<Bytes>, walrelay_protocol::ErrorFields> {
        let from = self.sent;
        if let Some((at, data)) = &self.read_ahead {
            let end = at.0 + data.len() as u64;
            if *at <= from && from.0 < end {
                let lo = (from.0 - at.0) as usize;
                let hi = (lo + len).min(data.len());
                return Ok(vec![data.slice(lo..hi)]);
            }
        }
        self.read_ahead = None;
        let until = Lsn(from.0 + len as u64).min(limit);
        if let Some(parts) = shared.feed.from_buffer(self.timeline, from, until, len) {
            if !parts.is_empty() {
                return Ok(parts);
            }
        }
        // The archive: read a larger piece and keep what this message does not take.
        let want = (distance(from, limit) as usize).clamp(1, DISK_READ);
        let timelines = shared
            .feed
            .file_timelines(self.timeline, from)
            .map_err(|e| error("58030", &e.to_string()))?;
        let mut reader = self.reader.take().unwrap_or_else(|| {
            SegmentReader::new(shared.feed.archive_dir(), shared.feed.segment_size())
        });
        let (reader, result) = tokio::task::spawn_blocking(move || {
            let r = reader.read(&timelines, from, want);
            (reader, r)
        })
        .await
        .map_err(|e| error("XX000", &format!("reading WAL failed: {e}")))?;
        self.reader = Some(reader);
        let data = result.map_err(|e| match e {
            SegmentError::Removed { .. } => error("58P01", &e.to_string()),
            SegmentError::Io { .. } => error("58030", &e.to_string()),
        })?;
        let take = len.min(data.len());
        let first = data.slice(..take);
        if data.len() > take {
            self.read_ahead = Some((from, data));
        }
        Ok(vec![first])
    }
}

/// The type byte of a frontend message, for errors.
fn message_type(m: &FrontendMessage) -> char {
    match m {
        FrontendMessage::Query(_) => 'Q',
        FrontendMessage::Terminate => 'X',
        FrontendMessage::CopyData(_) => 'd',
        FrontendMessage::CopyDone => 'c',
        FrontendMessage::CopyFail(_) => 'f',
        FrontendMessage::Password(_) => 'p',
        FrontendMessage::Sync => 'S',
        FrontendMessage::Flush => 'H',
        FrontendMessage::Extended(k) => char::from(*k),
    }
}

fn now() -> i64 {
    to_pg_timestamp(std::time::SystemTime::now())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
