//! Where a session resumes: what is really on disk (see [`crate::start`]), then an explicit
//! `--start`, then the slot, then the server's position — always a segment boundary.

use std::path::Path;
use std::time::Duration;

use tracing::{debug, warn};
use walrelay_client::{ConnectParams, Connection, IdentifySystem, ReplicationMode};
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};

use crate::config::{ReceiverConfig, Target};
use crate::error::ReceiveError;
use crate::session::{blocking, SessionState};
use crate::start::{
    find_streaming_start, Layout, StartError, StartOptions, StartReason, StdWalDir, StreamStart,
};

/// Where to start and why.
pub(crate) struct Start {
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub why: String,
}

/// Where the directory says to resume (see [`crate::start`]); refuses WAL of another cluster or
/// segment size, and damaged files. Reads only.
///
/// In a standby's `pg_wal`, start discovery judges completeness by page headers. A segment that
/// ends with an `XLOG_SWITCH` record (`pg_switch_wal()`, `archive_timeout`, the end of every base
/// backup) is complete, but PostgreSQL 15 and later write its padding as all-zero pages — headers
/// included — so the page scan calls it partial and stops there. Streaming would then restart at
/// that old segment, which the server may long have removed. So a segment the page scan calls
/// partial is checked record by record, and if its WAL really runs to the segment end, the scan
/// continues after it.
pub(crate) async fn scan_directory(
    cfg: &ReceiverConfig,
    ident: &IdentifySystem,
    seg: WalSegmentSize,
) -> Result<Option<StreamStart>, ReceiveError> {
    let opts = match &cfg.target {
        Target::Archive { .. } => StartOptions::archive(seg),
        Target::PgWal { .. } => StartOptions::pg_wal(seg),
    }
    .with_system_identifier(ident.system_identifier);
    let dir = cfg.target.dir().to_path_buf();
    blocking(move || scan_directory_blocking(&dir, opts)).await
}

/// [`scan_directory`] on the calling thread.
fn scan_directory_blocking(
    dir: &Path,
    mut opts: StartOptions,
) -> Result<Option<StreamStart>, ReceiveError> {
    let seg = opts.wal_segment_size;
    loop {
        let mut reader = StdWalDir::new(dir).with_uncompressed_size(|path, _| {
            walrelay_archive::uncompressed_size(path)
                .map(Some)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let entries = reader.list().map_err(|source| StartError::Io {
            file: dir.display().to_string(),
            source,
        })?;
        let found = find_streaming_start(&entries, &opts, &mut reader)?;
        if let Some(StreamStart {
            lsn,
            timeline,
            reason: StartReason::Partial { file, .. },
        }) = &found
        {
            let segment = SegmentId::new(*timeline, seg.segno(*lsn));
            if opts.layout == Layout::PgWal
                && complete_by_records(&dir.join(file), segment, seg, opts.system_identifier)
            {
                debug!(%file, "segment ends with an XLOG_SWITCH and its padding: complete");
                opts = opts.with_scan_from(segment.end_lsn(seg), *timeline);
                continue;
            }
        }
        return Ok(found);
    }
}

/// Whether the segment file at `path` holds valid WAL (headers and record CRCs) up to the segment
/// end. Any doubt (unreadable, damaged, ends early) is "no": the segment is then streamed again.
fn complete_by_records(
    path: &Path,
    segment: SegmentId,
    seg: WalSegmentSize,
    system_identifier: Option<u64>,
) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let mut check = walrelay_wal::SegmentCheck::new(seg);
    check.system_identifier = system_identifier;
    walrelay_wal::validate_segment_file(&bytes, segment, &check).is_ok_and(|r| r.is_complete())
}

/// Chooses the start: the directory, then an explicit `--start` (first session), then the slot, then
/// the server's current position. Always a segment boundary.
pub(crate) async fn choose_start(
    cfg: &ReceiverConfig,
    state: &mut SessionState,
    conn: &mut Connection,
    ident: &IdentifySystem,
    seg: WalSegmentSize,
    on_disk: Option<StreamStart>,
) -> Result<Start, ReceiveError> {
    let from_override = state.start_override.take();
    if let Some(lsn) = from_override {
        let lsn = lsn.segment_start(seg.bytes());
        if let Some(s) = &on_disk {
            if lsn < s.lsn {
                warn!(requested = %lsn, on_disk = %s.lsn, "--start is before WAL already on disk; resuming from the directory instead");
            } else {
                return Ok(Start {
                    lsn,
                    timeline: ident.timeline,
                    why: format!("--start {lsn}"),
                });
            }
        } else {
            return Ok(Start {
                lsn,
                timeline: ident.timeline,
                why: format!("--start {lsn}"),
            });
        }
    }
    if let Some(s) = on_disk {
        return Ok(Start {
            lsn: s.lsn,
            timeline: s.timeline,
            why: s.reason.to_string(),
        });
    }
    if let Some(slot) = &cfg.slot {
        if conn.server_version().major() >= 15 {
            match conn
                .read_replication_slot(slot)
                .await
                .map_err(|e| ReceiveError::from_server(e, Some(slot)))?
            {
                None => return Err(ReceiveError::SlotMissing { slot: slot.clone() }),
                Some(info) => {
                    if info.slot_type != "physical" {
                        return Err(ReceiveError::SlotNotPhysical {
                            slot: slot.clone(),
                            kind: info.slot_type,
                        });
                    }
                    if let (Some(lsn), Some(tli)) = (info.restart_lsn, info.restart_tli) {
                        return Ok(Start {
                            lsn: lsn.segment_start(seg.bytes()),
                            timeline: tli,
                            why: format!("directory empty; slot \"{slot}\" restart_lsn {lsn}"),
                        });
                    }
                    // No restart_lsn: a slot created without reserving WAL, or one the server
                    // invalidated. Starting at the server's position is right for the first and
                    // would hide the loss for the second; only SQL tells them apart.
                    if slot_wal_status(&cfg.connect, slot).await.as_deref() == Some("lost") {
                        return Err(ReceiveError::SlotInvalidated {
                            slot: slot.clone(),
                            server: None,
                        });
                    }
                }
            }
        } else if let Some(lsn) = slot_restart_lsn(&cfg.connect, slot).await {
            // Before 15 there is no READ_REPLICATION_SLOT; SQL tells the slot's restart_lsn
            // (pg_receivewal starts at the server's position here and leaves a hole: the WAL
            // written between the slot's creation and the first start). Its timeline is the
            // one holding it in the server's history.
            let timeline = if ident.timeline == TimelineId::FIRST {
                ident.timeline
            } else {
                let (_, content) = conn.timeline_history(ident.timeline).await?;
                walrelay_protocol::TimelineHistory::parse(ident.timeline, &content)
                    .map(|h| h.timeline_of(lsn))
                    .unwrap_or(ident.timeline)
            };
            return Ok(Start {
                lsn: lsn.segment_start(seg.bytes()),
                timeline,
                why: format!(
                    "directory empty; slot \"{slot}\" restart_lsn {lsn} (pg_replication_slots)"
                ),
            });
        }
    }
    Ok(Start {
        lsn: ident.xlogpos.segment_start(seg.bytes()),
        timeline: ident.timeline,
        why: format!("directory empty; server position {}", ident.xlogpos),
    })
}

/// `pg_replication_slots.restart_lsn` of the physical slot `slot` (see [`slot_column`]); `None`
/// also when the slot reserves no WAL.
async fn slot_restart_lsn(params: &ConnectParams, slot: &str) -> Option<Lsn> {
    slot_column(
        params,
        slot,
        "restart_lsn::text",
        "AND slot_type = 'physical'",
    )
    .await?
    .parse()
    .ok()
}

/// `pg_replication_slots.wal_status` of `slot` (PG 13+; see [`slot_column`]).
async fn slot_wal_status(params: &ConnectParams, slot: &str) -> Option<String> {
    slot_column(params, slot, "wal_status", "").await
}

/// One column of `slot`'s row in `pg_replication_slots` (with the further condition `and`), read
/// over an ordinary SQL connection with the same settings; `None` when that cannot be found out
/// (no SQL access, older server, no such slot, a NULL).
async fn slot_column(
    params: &ConnectParams,
    slot: &str,
    column: &str,
    and: &str,
) -> Option<String> {
    let mut params = params.clone();
    params.replication = ReplicationMode::Off;
    let query = async {
        let mut conn = Connection::connect(&params).await.ok()?;
        let sql = format!(
            "SELECT {column} FROM pg_catalog.pg_replication_slots WHERE slot_name = '{}' {and}",
            slot.replace('\'', "''")
        );
        let res = conn.simple_query(&sql).await;
        conn.close().await;
        res.ok()?
            .first()
            .and_then(|r| r.get_idx(0, 0))
            .map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_wal::synth::{SynthConfig, WalBuilder};

    const MB: u64 = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB).unwrap()
    }

    /// Segment `segno` (1 MB) holding a few records; ends with `XLOG_SWITCH` and its zeroed
    /// padding (PostgreSQL 15), or with zeros where WAL never arrived.
    fn segment(segno: u64, ends_with_switch: bool) -> Vec<u8> {
        let start = Lsn(segno * MB);
        let mut b = WalBuilder::new(SynthConfig::default(), start);
        for i in 0..20u8 {
            b.record(0x0A, 0x00, &[i; 300]);
        }
        if ends_with_switch {
            b.switch();
        } else {
            b.zero_fill_to(Lsn(start.0 + MB));
        }
        let bytes = b.into_bytes();
        assert_eq!(bytes.len() as u64, MB);
        bytes
    }

    fn pg_wal_with(files: &[(u64, bool)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for &(segno, switch) in files {
            let name =
                SegmentId::new(TimelineId(1), walrelay_protocol::XLogSegNo(segno)).file_name(seg());
            std::fs::write(d.path().join(name), segment(segno, switch)).unwrap();
        }
        d
    }

    fn pg_wal_opts() -> StartOptions {
        StartOptions::pg_wal(seg()).with_system_identifier(SynthConfig::default().system_identifier)
    }

    #[test]
    fn a_switch_ended_segment_is_complete_by_its_records() {
        let d = pg_wal_with(&[(3, true), (4, false)]);
        let sysid = Some(SynthConfig::default().system_identifier);
        let id = |n| SegmentId::new(TimelineId(1), walrelay_protocol::XLogSegNo(n));
        let path = |n| d.path().join(id(n).file_name(seg()));
        assert!(complete_by_records(&path(3), id(3), seg(), sysid));
        assert!(!complete_by_records(&path(4), id(4), seg(), sysid));
        assert!(
            !complete_by_records(&path(5), id(5), seg(), sysid),
            "missing file"
        );
        // Another cluster's segment is not "complete" for us.
        assert!(!complete_by_records(&path(3), id(3), seg(), Some(1)));
    }

    #[test]
    fn pg_wal_scan_continues_past_switch_ended_segments() {
        // What a standby's pg_wal looks like after a base backup (ends with the backup's switch)
        // and some streaming: resume in segment 5, not at the backup's segment 3.
        let d = pg_wal_with(&[(3, true), (4, true), (5, false)]);
        let start = scan_directory_blocking(d.path(), pg_wal_opts())
            .unwrap()
            .unwrap();
        assert_eq!(start.lsn, Lsn(5 * MB), "{start}");
        assert!(
            matches!(start.reason, StartReason::Partial { .. }),
            "{start}"
        );

        // Only switch-ended segments: streaming continues after the last one.
        let d = pg_wal_with(&[(3, true)]);
        let start = scan_directory_blocking(d.path(), pg_wal_opts())
            .unwrap()
            .unwrap();
        assert_eq!(start.lsn, Lsn(4 * MB), "{start}");
    }

    #[test]
    fn archive_scan_is_not_changed_by_the_record_check() {
        // In an archive a file is complete by its name; a .partial is restarted from its start
        // even when its content happens to end with a switch (pg_receivewal's rule).
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("000000010000000000000003.partial"),
            segment(3, true),
        )
        .unwrap();
        let opts = StartOptions::archive(seg())
            .with_system_identifier(SynthConfig::default().system_identifier);
        let start = scan_directory_blocking(d.path(), opts).unwrap().unwrap();
        assert_eq!(start.lsn, Lsn(3 * MB), "{start}");
    }
}
