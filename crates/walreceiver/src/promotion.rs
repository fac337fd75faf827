//! Following promotions: at the start of every session, the directory's timeline is set against
//! the server's history ([`crate::timeline_plan`]) before anything is streamed.
//!
//! * The server continued our timeline: stream on.
//! * The server's history left our timeline (a promotion, maybe several while we were down):
//!   continue there — on our timeline up to the switchpoint if we stand before it, otherwise on the
//!   next timeline from the segment holding the switchpoint. WAL we hold past the switchpoint is
//!   orphaned; in an archive it stays (recovery reads the new timeline's files from the switchpoint
//!   on) and is reported ([`crate::failover`]). A standby fed in `pg_wal` must not replay it:
//!   walrelay checks the standby's replay position, takes the orphaned WAL out of `pg_wal`, and
//!   continues — or stops, naming `pg_rewind`, when the standby already replayed past the switch.
//! * The server is behind us (on an ancestor timeline): transient — another host or a later try.
//! * The histories diverged: definite.
//!
//! History files of every timeline the server's history names are stored before streaming (what
//! a walreceiver does, `WalRcvFetchTimeLineHistoryFiles`), so that recovery with
//! `recovery_target_timeline = 'latest'` finds each of them.

use std::path::Path;

use bytes::Bytes;
use tracing::{info, warn};
use walrelay_client::{ConnectParams, Connection, IdentifySystem, ReplicationMode};
use walrelay_protocol::{Lsn, SegmentId, TimelineHistory, TimelineId, WalSegmentSize};

use crate::config::{ReceiverConfig, Target};
use crate::error::ReceiveError;
use crate::failover::{log_loss, scan_orphaned, write_report, WalIdentity};
use crate::resume::Start;
use crate::session::{blocking, SessionState};
use crate::timeline_plan::{plan, Fork, TimelinePlan};
use crate::writer::WriterError;

/// What the session learned of the server, for [`resolve`].
pub(crate) struct ServerWal<'a> {
    pub ident: &'a IdentifySystem,
    pub seg: WalSegmentSize,
    pub page_magic: Option<u16>,
}

/// Where to stream from, and the history files to store first.
pub(crate) struct Resolved {
    pub start: Start,
    /// History files of later timelines that the directory lacks, oldest first: store them (as
    /// the writer does, with their status files in `pg_wal`) before streaming.
    pub histories: Vec<(TimelineId, Bytes)>,
}

/// The start the directory asked for, checked against the server's history (see the module
/// documentation), with the server's history files that are missing here.
pub(crate) async fn resolve(
    cfg: &ReceiverConfig,
    state: &mut SessionState,
    conn: &mut Connection,
    server: ServerWal<'_>,
    start: Start,
) -> Result<Resolved, ReceiveError> {
    let dir = cfg.target.dir().to_path_buf();
    let ident = server.ident;
    let mut fetched: Vec<(TimelineId, Bytes)> = Vec::new();
    let server_history = match history_of(conn, ident.timeline).await? {
        Some(content) => {
            let h = parse(ident.timeline, &content)?;
            fetched.push((ident.timeline, content));
            h
        }
        None => TimelineHistory::first(),
    };
    let ours = match local_history(&dir, start.timeline)? {
        Some(h) => h,
        // Not stored (a start from the slot or the server): the server tells, if it knows it.
        None if server_history.contains(start.timeline) && start.timeline != ident.timeline => {
            let content = history_of(conn, start.timeline).await?.unwrap_or_default();
            parse(start.timeline, &content)?
        }
        None if start.timeline == ident.timeline => server_history.clone(),
        None => {
            return Err(ReceiveError::HistoryDiverged {
                ours: start.timeline,
                server: ident.timeline,
            })
        }
    };
    let resumed = match plan(&ours, start.lsn, &server_history, server.seg) {
        TimelinePlan::Continue {
            timeline,
            lsn,
            left_ours,
        } => {
            if let Some(fork) = left_ours {
                handle_fork(cfg, state, &server, fork).await?;
            }
            if timeline == start.timeline && lsn == start.lsn {
                start
            } else {
                Start {
                    lsn,
                    timeline,
                    why: format!(
                        "the server's history left timeline {} at {}; continuing on timeline {timeline}",
                        start.timeline,
                        server_history
                            .switchpoint_of(start.timeline)
                            .unwrap_or(lsn)
                    ),
                }
            }
        }
        TimelinePlan::ServerBehind { ours, server } => {
            return Err(ReceiveError::ServerBehind {
                endpoint: conn.endpoint().to_string(),
                ours,
                server,
            })
        }
        TimelinePlan::Diverged { ours, server } => {
            return Err(ReceiveError::HistoryDiverged { ours, server })
        }
    };
    let histories =
        missing_histories(&dir, conn, &server_history, resumed.timeline, fetched).await?;
    Ok(Resolved {
        start: resumed,
        histories,
    })
}

/// TIMELINE_HISTORY of `tli`, or `None` for timeline 1 (which has no history file).
async fn history_of(conn: &mut Connection, tli: TimelineId) -> Result<Option<Bytes>, ReceiveError> {
    if tli == TimelineId::FIRST {
        return Ok(None);
    }
    let (_, content) = conn.timeline_history(tli).await?;
    Ok(Some(content))
}

fn parse(tli: TimelineId, content: &[u8]) -> Result<TimelineHistory, ReceiveError> {
    TimelineHistory::parse(tli, content).map_err(|source| {
        WriterError::InvalidHistory {
            timeline: tli,
            source,
        }
        .into()
    })
}

/// The history file of `tli` in the directory; timeline 1 has none.
fn local_history(dir: &Path, tli: TimelineId) -> Result<Option<TimelineHistory>, ReceiveError> {
    if tli == TimelineId::FIRST {
        return Ok(Some(TimelineHistory::first()));
    }
    let path = dir.join(tli.history_file_name());
    match std::fs::read(&path) {
        Ok(content) => parse(tli, &content).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReceiveError::ListDir { path, source }),
    }
}

/// The server's history files for the timelines after `from` (up to the server's own) that the
/// directory lacks.
async fn missing_histories(
    dir: &Path,
    conn: &mut Connection,
    server_history: &TimelineHistory,
    from: TimelineId,
    mut fetched: Vec<(TimelineId, Bytes)>,
) -> Result<Vec<(TimelineId, Bytes)>, ReceiveError> {
    let mut missing = Vec::new();
    let later = server_history
        .ancestors
        .iter()
        .map(|e| e.timeline)
        .chain([server_history.timeline])
        .filter(|&t| t > from && t != TimelineId::FIRST);
    for tli in later {
        if dir.join(tli.history_file_name()).exists() {
            continue;
        }
        let content = match fetched.iter().position(|(t, _)| *t == tli) {
            Some(i) => fetched.swap_remove(i).1,
            None => history_of(conn, tli).await?.unwrap_or_default(),
        };
        missing.push((tli, content));
    }
    Ok(missing)
}

/// The server's history left our timeline at `fork.switchpoint`: find what we hold past it and
/// deal with it as the target requires.
async fn handle_fork(
    cfg: &ReceiverConfig,
    state: &mut SessionState,
    server: &ServerWal<'_>,
    fork: Fork,
) -> Result<(), ReceiveError> {
    let dir = cfg.target.dir().to_path_buf();
    let id = WalIdentity {
        seg: server.seg,
        page_magic: server.page_magic,
        system_identifier: server.ident.system_identifier,
    };
    let scan_dir = dir.clone();
    let loss = blocking(move || scan_orphaned(&scan_dir, fork, id)).await?;
    let Some(loss) = loss else {
        if state.forks_seen.insert((fork.old, fork.switchpoint)) {
            info!(old = %fork.old, new = %fork.new, switchpoint = %fork.switchpoint, "following a promotion: nothing was received past the switchpoint, nothing lost");
            cfg.stats.failover(0, 0);
        }
        return Ok(());
    };
    match &cfg.target {
        Target::Archive { .. } => {
            let (report_dir, report, owner) = (dir.clone(), loss.clone(), cfg.owner);
            let path = blocking(move || write_report(&report_dir, &report, owner)).await?;
            if state.forks_seen.insert((fork.old, fork.switchpoint)) {
                log_loss(&loss, Some(&path));
                cfg.stats.failover(loss.lost_commits, loss.orphaned_bytes);
            }
        }
        Target::PgWal { .. } => {
            let Some(standby) = cfg.apply_source.clone() else {
                log_loss(&loss, None);
                return Err(ReceiveError::StandbyMayHaveDiverged {
                    old: fork.old,
                    new: fork.new,
                    switchpoint: fork.switchpoint,
                });
            };
            check_standby_replay(&standby, fork).await?;
            let (pg_wal, seg, files) = (dir.clone(), server.seg, loss.files.clone());
            blocking(move || remove_orphans(&pg_wal, fork, seg, &files)).await?;
            // The standby may have read further meanwhile; it must still be before the switch.
            check_standby_replay(&standby, fork).await?;
            if state.forks_seen.insert((fork.old, fork.switchpoint)) {
                log_loss(&loss, None);
                warn!(
                    "took the orphaned WAL of timeline {} out of the standby's pg_wal; it will continue on timeline {}",
                    fork.old, fork.new
                );
                cfg.stats.failover(loss.lost_commits, loss.orphaned_bytes);
            }
        }
    }
    Ok(())
}

/// The standby fed in `pg_wal` must not have replayed past the switchpoint.
async fn check_standby_replay(standby: &ConnectParams, fork: Fork) -> Result<(), ReceiveError> {
    let mut params = standby.clone();
    params.replication = ReplicationMode::Off;
    let mut conn = Connection::connect(&params).await?;
    let res = conn
        .simple_query("SELECT pg_catalog.pg_last_wal_replay_lsn()")
        .await;
    conn.close().await;
    let replayed = res?
        .first()
        .and_then(|r| r.get_idx(0, 0))
        .and_then(|v| v.parse::<Lsn>().ok())
        .unwrap_or(Lsn::INVALID);
    if replayed > fork.switchpoint {
        return Err(ReceiveError::StandbyDiverged {
            old: fork.old,
            new: fork.new,
            switchpoint: fork.switchpoint,
            replayed,
        });
    }
    Ok(())
}

/// Takes orphaned WAL out of a standby's `pg_wal`: later segments of the old timeline are removed,
/// and the switch segment's bytes from the switchpoint on are zeroed, so the standby finds the end
/// of its timeline exactly there, looks for a newer timeline and follows it.
fn remove_orphans(
    pg_wal: &Path,
    fork: Fork,
    seg: WalSegmentSize,
    files: &[String],
) -> Result<(), ReceiveError> {
    use std::io::{Seek, SeekFrom, Write};
    let switch_segment = SegmentId::new(fork.old, seg.segno(fork.switchpoint)).file_name(seg);
    for name in files {
        let path = pg_wal.join(name);
        let io = |action: &'static str| {
            let p = path.clone();
            move |e| ReceiveError::Archive(walrelay_durable::DurableError::new(action, p, e).into())
        };
        if *name == switch_segment {
            let offset = fork.switchpoint.0 - fork.switchpoint.segment_start(seg.bytes()).0;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("open"))?;
            f.seek(SeekFrom::Start(offset)).map_err(io("seek in"))?;
            let zeros = vec![0u8; (seg.as_u64() - offset) as usize];
            f.write_all(&zeros)
                .map_err(io("zero the orphaned WAL in"))?;
            f.sync_all().map_err(io("fsync"))?;
        } else {
            std::fs::remove_file(&path).map_err(io("remove"))?;
        }
    }
    walrelay_durable::fsync_dir(pg_wal).map_err(|e| ReceiveError::Archive(e.into()))?;
    Ok(())
}
