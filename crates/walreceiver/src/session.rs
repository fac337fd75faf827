//! One session of the receiver: connect, IDENTIFY_SYSTEM, resume point, START_REPLICATION — then
//! streams on that connection, timeline after timeline, until it ends (see [`crate::stream_loop`]
//! for one stream, [`crate::reconnect`] for what happens between sessions).
//!
//! Cancellation: [`session`] is not cancellation-safe as a whole (it owns the disk task); the
//! reconnect loop never drops it, and asks it to stop through the shutdown watch instead.

use std::path::Path;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use walrelay_client::{
    ConnectParams, Connection, Endpoint, IdentifySystem, StartedReplication, TimelineSwitch,
};
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_wal::{ValidatorConfig, WalValidator};

use crate::archiving::{catch_up_archive, CompletionHook};
use crate::config::{ReceiverConfig, StopReason, Target};
use crate::disk_task::{DiskRequest, DiskTask};
use crate::error::{ReceiveError, StreamViolation};
use crate::promotion::{self, ServerWal};
use crate::resume::{choose_start, scan_directory, Start};
use crate::stream_loop::{StreamEnd, StreamLoop};
use crate::tap::StreamTap;
use crate::writer::{BackgroundCompletion, SegmentWriter, WriterConfig, DEFAULT_COMPLETION_QUEUE};

/// What survives from one session to the next.
pub(crate) struct SessionState {
    pub start_override: Option<Lsn>,
    pub system_identifier: Option<u64>,
    pub last_flushed: Lsn,
    pub timeline: TimelineId,
    pub archive_caught_up: bool,
    /// The current session got as far as START_REPLICATION.
    pub streamed: bool,
    /// Some session got as far as START_REPLICATION: the set-up worked once.
    pub ever_streamed: bool,
    /// Promotions already followed (old timeline, switchpoint), so that each is reported once.
    pub forks_seen: HashSet<(TimelineId, Lsn)>,
    /// A host that is behind the directory's timeline, and since when: the next sessions try the
    /// other hosts of the list first.
    pub avoid: Option<(Endpoint, Instant)>,
    /// A relay's seam into the engine ([`crate::tap`]), if any.
    pub tap: Option<Arc<StreamTap>>,
}

impl SessionState {
    pub fn new(cfg: &ReceiverConfig) -> Self {
        SessionState {
            start_override: cfg.start,
            system_identifier: cfg.expected_system_identifier,
            last_flushed: Lsn::INVALID,
            timeline: TimelineId::FIRST,
            archive_caught_up: false,
            streamed: false,
            ever_streamed: false,
            forks_seen: HashSet::new(),
            avoid: None,
            tap: None,
        }
    }
}

impl SessionState {
    /// The connection settings for the next session: a host found behind the directory's timeline
    /// goes last for a while, so a host list reaches the server that followed the promotion.
    fn connect_params(&self, params: &ConnectParams) -> ConnectParams {
        let mut p = params.clone();
        if let Some((avoid, since)) = &self.avoid {
            if since.elapsed() < AVOID_BEHIND_HOST && p.endpoints.len() > 1 {
                if let Some(i) = p.endpoints.iter().position(|e| e == avoid) {
                    let e = p.endpoints.remove(i);
                    p.endpoints.push(e);
                }
            }
        }
        p
    }
}

/// How long a host found behind the directory's timeline goes last in the host list.
const AVOID_BEHIND_HOST: Duration = Duration::from_secs(300);

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReceiveError> + Send + 'static,
) -> Result<T, ReceiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReceiveError::TaskFailed {
            what: "a background file task",
            source: std::io::Error::other(e.to_string()),
        })?
}

/// One connection's worth of streaming.
pub(crate) async fn session(
    cfg: &mut ReceiverConfig,
    state: &mut SessionState,
) -> Result<StopReason, ReceiveError> {
    // A stop asked for while connecting (a peer that never answers, a server that is slow to let
    // us in) is honoured at once: nothing is on disk yet to finish.
    let mut shutdown = cfg.shutdown.clone();
    let connecting = async {
        let mut conn = Connection::connect(&state.connect_params(&cfg.connect)).await?;
        let ident = conn.identify_system().await?;
        Ok::<_, ReceiveError>((conn, ident))
    };
    let (mut conn, ident) = tokio::select! {
        connected = connecting => connected?,
        _ = crate::stream_loop::stop_requested(&mut shutdown) => return Ok(StopReason::Shutdown),
    };
    if let Some(chain) = state.tap.as_ref().and_then(|tap| tap.chain.as_ref()) {
        let theirs = conn.parameter(chain.parameter).unwrap_or_default();
        if chain.holds_self(theirs) {
            return Err(ReceiveError::UpstreamIsThisRelay {
                endpoint: conn.endpoint().to_string(),
                other_hosts: cfg.connect.endpoints.len() > 1,
            });
        }
        chain.upstream.send_replace(theirs.to_string());
    }
    if let Some(expected) = state.system_identifier {
        if expected != ident.system_identifier {
            return Err(ReceiveError::SystemIdentifierMismatch {
                expected,
                server: ident.system_identifier,
            });
        }
    }
    let major = conn.server_version().major();
    let seg = conn.wal_segment_size().await?;
    let page_magic = walrelay_wal::page_magic_for_major(major);
    if page_magic.is_none() && cfg.validate {
        return Err(ReceiveError::UnsupportedServer { major });
    }
    if cfg.failover_slot {
        ReceiveError::check_failover_slot(major)?;
    }
    cfg.stats.set_system_identifier(ident.system_identifier);

    // What is on disk, read-only: a foreign or damaged directory is refused before anything in it
    // is touched.
    let on_disk = scan_directory(cfg, &ident, seg).await?;

    // Finish what an earlier run left half done (checksums, compression) — only in a directory
    // that passed the scan above.
    if let Target::Archive {
        dir,
        compression,
        checksums,
    } = &cfg.target
    {
        if !state.archive_caught_up {
            let (dir, compression, checksums, owner) =
                (dir.clone(), *compression, *checksums, cfg.owner);
            blocking(move || catch_up_archive(&dir, seg, compression, checksums, owner)).await?;
            state.archive_caught_up = true;
        }
    }

    // An archive with no segment yet may still hold timeline history files (left by a prune, or
    // copied in): a server on an older timeline than the newest of them has not followed the
    // promotion they record — an old primary restarted — and is not streamed from.
    if on_disk.is_none() {
        if let Target::Archive { dir, .. } = &cfg.target {
            let newest = newest_history_timeline(dir);
            if let Some(ours) = newest.filter(|t| *t > ident.timeline) {
                state.avoid = Some((conn.endpoint().clone(), Instant::now()));
                return Err(ReceiveError::ServerBehind {
                    endpoint: conn.endpoint().to_string(),
                    ours,
                    server: ident.timeline,
                });
            }
        }
    }
    let start = choose_start(cfg, state, &mut conn, &ident, seg, on_disk).await?;
    let server = ServerWal {
        ident: &ident,
        seg,
        page_magic,
    };
    let resolved = match promotion::resolve(cfg, state, &mut conn, server, start).await {
        Ok(r) => r,
        Err(e @ ReceiveError::ServerBehind { .. }) => {
            state.avoid = Some((conn.endpoint().clone(), Instant::now()));
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    state.avoid = None;
    let start = resolved.start;
    state.system_identifier = Some(ident.system_identifier);
    info!(
        start = %start.lsn,
        timeline = start.timeline.0,
        server_timeline = ident.timeline.0,
        server_position = %ident.xlogpos,
        "starting WAL stream: {}",
        start.why
    );

    if let Some(tmp) = &cfg.temporary_slot {
        conn.create_physical_slot(tmp, true, true).await?;
    }

    let disk = start_disk_task(cfg, &start, seg).await?;
    let stream = Timelines {
        seg,
        page_magic,
        ident: &ident,
        histories: resolved.histories,
    };
    let stop = stream.run(cfg, state, &mut conn, disk, start).await?;
    conn.close().await;
    Ok(stop)
}

/// The segment writer for this session, on a disk thread — or inline on the network task for a
/// synchronous standby, whose flush latency is every commit's latency on the primary (no thread
/// hand-offs there); elsewhere a disk thread lets network and disk work overlap.
async fn start_disk_task(
    cfg: &ReceiverConfig,
    start: &Start,
    seg: WalSegmentSize,
) -> Result<DiskTask, ReceiveError> {
    let mut writer_cfg = match &cfg.target {
        Target::Archive { dir, .. } => WriterConfig::archive(dir, seg),
        Target::PgWal { pg_wal } => WriterConfig::pg_wal(pg_wal, seg),
    };
    writer_cfg.owner = cfg.owner;
    writer_cfg.sync = cfg.sync;
    let (target, stats) = (cfg.target.clone(), cfg.stats.clone());
    let (tli, lsn, owner) = (start.timeline, start.lsn, cfg.owner);
    let writer = blocking(move || {
        let mut w = SegmentWriter::new(writer_cfg, tli, lsn)?;
        // Checksums and compression of a completed segment overlap with writing the next one.
        let hook = CompletionHook {
            target,
            owner,
            stats,
        };
        let hook =
            BackgroundCompletion::spawn(hook, DEFAULT_COMPLETION_QUEUE).map_err(|source| {
                ReceiveError::TaskFailed {
                    what: "starting the segment archiving thread",
                    source,
                }
            })?;
        w.set_completion_hook(hook);
        Ok(w)
    })
    .await?;
    Ok(if cfg.synchronous {
        DiskTask::inline(writer, cfg.disk)
    } else {
        DiskTask::spawn(writer, cfg.disk)
    })
}

/// Streams timeline after timeline on one connection.
struct Timelines<'a> {
    seg: WalSegmentSize,
    page_magic: Option<u16>,
    ident: &'a IdentifySystem,
    /// History files to store before anything is streamed.
    histories: Vec<(TimelineId, bytes::Bytes)>,
}

impl Timelines<'_> {
    /// Streams from `start` until the stream stops; at the end of a timeline continues on the next
    /// (history file first). Always lets the disk task finish what it has: a clean stop flushes,
    /// an error still makes the received prefix durable (the next session resumes from it).
    async fn run(
        &self,
        cfg: &mut ReceiverConfig,
        state: &mut SessionState,
        conn: &mut Connection,
        disk: DiskTask,
        start: Start,
    ) -> Result<StopReason, ReceiveError> {
        let outcome = self.follow(cfg, state, conn, &disk, start).await;
        let finished = disk.finish().await;
        match (&outcome, finished) {
            (_, Ok(flushed)) => {
                state.last_flushed = state.last_flushed.max(flushed);
                cfg.stats.disk(flushed, flushed);
            }
            (Ok(_), Err(e)) => return Err(e.into()),
            // The stream stopped because the writer failed: its error (disk full, ...) is the cause.
            (Err(ReceiveError::DiskTaskStopped), Err(e)) => return Err(e.into()),
            (Err(_), Err(e)) => {
                warn!(error = %e, "could not flush the WAL received before the error")
            }
        }
        outcome
    }

    async fn follow(
        &self,
        cfg: &mut ReceiverConfig,
        state: &mut SessionState,
        conn: &mut Connection,
        disk: &DiskTask,
        start: Start,
    ) -> Result<StopReason, ReceiveError> {
        let dir = cfg.target.dir().to_path_buf();
        for (timeline, content) in self.histories.iter().cloned() {
            info!(%timeline, "storing the timeline history file");
            disk.send(DiskRequest::WriteHistory { timeline, content })
                .await
                .map_err(|_| ReceiveError::DiskTaskStopped)?;
        }
        let mut timeline = start.timeline;
        let mut lsn = start.lsn;
        loop {
            store_history_if_missing(conn, disk, &dir, timeline).await?;
            let slot = cfg.slot.as_deref().or(cfg.temporary_slot.as_deref());
            let started = conn
                .start_replication(slot, lsn, timeline)
                .await
                .map_err(|e| ReceiveError::from_server(e, cfg.slot.as_deref()))?;
            let end = match started {
                StartedReplication::TimelineEnded(switch) => StreamEnd::Switch(switch),
                StartedReplication::Streaming => {
                    cfg.stats.set_connected(true);
                    cfg.stats.set_timeline(timeline.0);
                    state.streamed = true;
                    state.ever_streamed = true;
                    state.timeline = timeline;
                    let validator = self.validator(cfg, timeline, lsn)?;
                    StreamLoop::new(cfg, state, conn, disk, lsn, validator)
                        .run()
                        .await?
                }
            };
            match end {
                StreamEnd::Stop(reason) => return Ok(reason),
                StreamEnd::Switch(switch) => {
                    // The next timeline's history before its WAL or the switch: a relay serving
                    // from this directory finds the history of the timeline it moves to (its
                    // downstreams on the old one were told it is not in the history, and
                    // stopped).
                    if switch.next_timeline > timeline {
                        store_history_if_missing(conn, disk, &dir, switch.next_timeline).await?;
                    }
                    let (next, next_lsn) = self.switch(disk, timeline, switch).await?;
                    timeline = next;
                    lsn = next_lsn;
                }
            }
        }
    }

    fn validator(
        &self,
        cfg: &ReceiverConfig,
        timeline: TimelineId,
        start: Lsn,
    ) -> Result<Option<WalValidator>, ReceiveError> {
        if !cfg.validate {
            return Ok(None);
        }
        WalValidator::new(ValidatorConfig {
            segment_size: self.seg,
            block_size: walrelay_wal::page::DEFAULT_XLOG_BLCKSZ,
            page_magic: self.page_magic,
            system_identifier: Some(self.ident.system_identifier),
            timeline: Some(timeline),
            start_lsn: start,
        })
        .map(Some)
        .map_err(ReceiveError::InvalidWal)
    }

    /// The end of `ended`: the writer closes its segment and continues on the next timeline, at the
    /// start of the segment holding the switch point.
    async fn switch(
        &self,
        disk: &DiskTask,
        ended: TimelineId,
        switch: TimelineSwitch,
    ) -> Result<(TimelineId, Lsn), ReceiveError> {
        if switch.next_timeline <= ended {
            return Err(StreamViolation::NextTimelineNotHigher {
                ended,
                next: switch.next_timeline,
            }
            .into());
        }
        info!(from = %ended, to = %switch.next_timeline, switch = %switch.next_start, "end of timeline; following the server to the next");
        disk.send(DiskRequest::SwitchTimeline {
            timeline: switch.next_timeline,
            switch_lsn: switch.next_start,
        })
        .await
        .map_err(|_| ReceiveError::DiskTaskStopped)?;
        Ok((
            switch.next_timeline,
            switch.next_start.segment_start(self.seg.bytes()),
        ))
    }
}

/// The newest timeline with a history file (`TTTTTTTT.history`) in `dir`.
fn newest_history_timeline(dir: &Path) -> Option<TimelineId> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            match walrelay_protocol::WalFileName::parse(&e.file_name().to_string_lossy()) {
                Some(walrelay_protocol::WalFileName::History(t)) => Some(t),
                _ => None,
            }
        })
        .max()
}

/// History first: a timeline's WAL is never on disk without its history file.
async fn store_history_if_missing(
    conn: &mut Connection,
    disk: &DiskTask,
    dir: &Path,
    timeline: TimelineId,
) -> Result<(), ReceiveError> {
    if timeline.0 > 1 && !dir.join(timeline.history_file_name()).exists() {
        let (_, content) = conn.timeline_history(timeline).await?;
        disk.send(DiskRequest::WriteHistory { timeline, content })
            .await
            .map_err(|_| ReceiveError::DiskTaskStopped)?;
    }
    Ok(())
}
