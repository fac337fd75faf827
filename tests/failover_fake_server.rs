#![allow(clippy::unwrap_used)]

//! Following a promotion as the walsender speaks it, against a scripted server that says exactly
//! what walsender.c says (`StartReplication`): a start at the very end of a historic timeline gets
//! the next timeline in a one-row result and no COPY; a start before it streams to the end, then
//! CopyDone, then the row; a start past it is "not in this server's history".
//!
//! Synthetic WAL (the wal crate's builder) with the real format; the real-server failover tests are
//! in tests/receive.rs.

mod support;

use std::path::Path;
use std::process::Command;

use walrelay_protocol::{SegmentId, TimelineId, WalSegmentSize, XLogSegNo};
use walrelay_testkit::{Ending, FakeWalsender, HistoricTimeline, Lsn, Script, WalStream};
use walrelay_wal::synth::{SynthConfig, WalBuilder};

const MB: u64 = 1024 * 1024;
const RM_XACT_ID: u8 = 1;
const XLOG_XACT_COMMIT: u8 = 0x00;

fn cfg() -> SynthConfig {
    SynthConfig::default()
}

fn seg() -> WalSegmentSize {
    cfg().segment_size
}

fn name(tli: u32, segno: u64) -> String {
    SegmentId::new(TimelineId(tli), XLogSegNo(segno)).file_name(seg())
}

/// A commit record's body: a short main-data header, then `xact_time` and a little more.
fn commit(time: i64) -> Vec<u8> {
    let mut b = vec![255u8, 12];
    b.extend_from_slice(&time.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

/// Heap-like records (and a commit after each) up to `until`.
fn fill(b: &mut WalBuilder, until: Lsn, commits: &mut u64) {
    let mut i = 0i64;
    while b.position() < until {
        b.record(0x0A, 0, &[(i % 251) as u8; 2000]);
        b.record(RM_XACT_ID, XLOG_XACT_COMMIT, &commit(i));
        *commits += 1;
        i += 1;
    }
}

/// Writes `bytes` (WAL from `start`, a segment boundary) as segment files of timeline `tli`: whole
/// segments under their names, a last short one as `.partial` padded with zeros.
fn write_segments(dir: &Path, tli: u32, start: Lsn, bytes: &[u8]) {
    let seg = seg().as_u64() as usize;
    for (i, chunk) in bytes.chunks(seg).enumerate() {
        let segno = start.0 / MB + i as u64;
        if chunk.len() == seg {
            std::fs::write(dir.join(name(tli, segno)), chunk).unwrap();
        } else {
            let mut padded = chunk.to_vec();
            padded.resize(seg, 0);
            std::fs::write(dir.join(format!("{}.partial", name(tli, segno))), padded).unwrap();
        }
    }
}

fn history(switch: Lsn) -> String {
    format!("1\t{switch}\tno recovery target specified\n")
}

/// A server promoted to timeline 2 at `switch`: timeline 1 historic (streamed from `old_wal` when
/// asked for before the switch), timeline 2 streamed from `new_wal`.
fn promoted(switch: Lsn, old_wal: Option<WalStream>, new_wal: WalStream) -> Script {
    Script {
        timeline: 2,
        xlogpos: new_wal.end(),
        wal_segment_size: "1MB".into(),
        system_identifier: cfg().system_identifier,
        histories: vec![(2, history(switch))],
        historic: vec![HistoricTimeline {
            timeline: 1,
            end: switch,
            next: 2,
            wal: old_wal,
        }],
        wal: Some(new_wal),
        ..Script::default()
    }
}

/// Runs `walrelay receive -D dir` to `endpos` against `script`; returns (exit code, stderr, the
/// server's queries).
fn receive(dir: &Path, script: Script, endpos: Lsn) -> (i32, String, Vec<String>) {
    let server = FakeWalsender::start(script);
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["receive", "--no-loop", "-s", "1", "-E", &endpos.to_string()])
        .arg("-D")
        .arg(dir)
        .args(["-d", &server.conninfo()])
        .env("WALRELAY_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr, server.queries())
}

fn position_of(queries: &[String], q: &str) -> usize {
    queries
        .iter()
        .position(|x| x == q)
        .unwrap_or_else(|| panic!("{q:?} was not sent: {queries:#?}"))
}

/// The new primary was promoted exactly at a segment boundary, and the archive holds timeline 1 up
/// to there: the start on timeline 1 is the timeline's very end, answered without COPY.
#[test]
fn a_start_at_the_end_of_a_historic_timeline_moves_on_without_copy() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Lsn(3 * MB);
    // Timeline 1: segments 1 and 2, the second ending with XLOG_SWITCH.
    let mut tl1 = WalBuilder::new(cfg(), Lsn(MB));
    let mut commits = 0;
    fill(&mut tl1, Lsn(2 * MB + 500_000), &mut commits);
    let last = tl1.switch();
    assert_eq!(tl1.position(), switch);
    write_segments(dir.path(), 1, Lsn(MB), tl1.bytes());
    // Timeline 2 from the switchpoint.
    let mut tl2 = WalBuilder::new(cfg(), switch);
    tl2.set_timeline(TimelineId(2));
    tl2.set_prev(last);
    fill(&mut tl2, Lsn(4 * MB + 300_000), &mut commits);
    let end = tl2.position();
    let tl2_bytes = tl2.into_bytes();

    let script = promoted(
        switch,
        None,
        WalStream {
            ending: Ending::AskForReplies,
            ..WalStream::new(switch, tl2_bytes.clone())
        },
    );
    let (code, stderr, queries) = receive(dir.path(), script, end);
    assert_eq!(code, 0, "{stderr}\n{queries:#?}");
    assert!(!stderr.contains("protocol violation"), "{stderr}");
    let on_tl1 = position_of(&queries, "START_REPLICATION 0/300000 TIMELINE 1");
    let on_tl2 = position_of(&queries, "START_REPLICATION 0/300000 TIMELINE 2");
    assert!(on_tl1 < on_tl2, "{queries:#?}");
    assert!(
        position_of(&queries, "TIMELINE_HISTORY 2") < on_tl2,
        "the history before its timeline's WAL: {queries:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("00000002.history")).unwrap(),
        history(switch)
    );
    assert_eq!(
        std::fs::read(dir.path().join(name(2, 3))).unwrap(),
        &tl2_bytes[..MB as usize],
        "timeline 2's first segment as the server sent it"
    );
    assert!(!dir.path().join("00000002.failover.json").exists());
    assert!(stderr.contains("nothing lost"), "{stderr}");
}

/// The archive stands before the switchpoint: timeline 1 is streamed up to it, the server ends the
/// COPY, and the row names timeline 2 — the same connection goes on there.
#[test]
fn a_historic_timeline_is_streamed_to_its_end_then_the_next_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Lsn(2 * MB + 600_008);
    let mut common = WalBuilder::new(cfg(), Lsn(MB));
    let mut commits = 0;
    fill(&mut common, Lsn(2 * MB), &mut commits);
    // The archive has segment 1; the server has timeline 1 up to the switchpoint.
    write_segments(dir.path(), 1, Lsn(MB), &common.bytes()[..MB as usize]);
    fill(&mut common, switch, &mut commits);
    let switch = common.position();
    let tl1 = common.bytes().to_vec();
    let mut tl2 = common.clone();
    tl2.set_timeline(TimelineId(2));
    fill(&mut tl2, Lsn(3 * MB + 100_000), &mut commits);
    let end = tl2.position();
    let tl2_bytes = tl2.into_bytes();
    let seg2 = MB as usize..2 * MB as usize;

    // The new timeline's copy of segment 2: timeline 1's WAL up to the switch, then its own.
    let script = promoted(
        switch,
        Some(WalStream::new(Lsn(MB), tl1.clone())),
        WalStream::new(Lsn(2 * MB), tl2_bytes[seg2.start..].to_vec()),
    );
    let (code, stderr, queries) = receive(dir.path(), script, end);
    assert_eq!(code, 0, "{stderr}\n{queries:#?}");
    let on_tl1 = position_of(&queries, "START_REPLICATION 0/200000 TIMELINE 1");
    let on_tl2 = position_of(&queries, "START_REPLICATION 0/200000 TIMELINE 2");
    assert!(on_tl1 < on_tl2, "{queries:#?}");
    // Timeline 1's last segment stays partial (pg_receivewal does the same), holding the WAL up to
    // the switch; timeline 2's copy of it is complete.
    let partial = std::fs::read(dir.path().join(format!("{}.partial", name(1, 2)))).unwrap();
    let upto = (switch.0 - 2 * MB) as usize;
    assert_eq!(&partial[..upto], &tl1[MB as usize..MB as usize + upto]);
    assert_eq!(
        std::fs::read(dir.path().join(name(2, 2))).unwrap(),
        &tl2_bytes[seg2]
    );
    assert!(dir.path().join("00000002.history").exists());
    assert!(!dir.path().join("00000002.failover.json").exists());
}

/// The new primary was behind the archive (an asynchronous standby promoted): the archive holds
/// timeline 1 past the switchpoint. Nothing is asked of timeline 1 any more; the stream continues
/// on timeline 2 from the switchpoint's segment, the orphaned WAL stays, and the report counts the
/// commits the failover lost.
#[test]
fn a_promotion_behind_the_archive_is_followed_and_the_loss_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut common = WalBuilder::new(cfg(), Lsn(MB));
    let mut before = 0;
    fill(&mut common, Lsn(2 * MB + 400_000), &mut before);
    let switch = common.position();
    // The old primary went on: commits the new primary never had, up into segment 4.
    let mut old = common.clone();
    let mut lost = 0;
    fill(&mut old, Lsn(4 * MB + 200_000), &mut lost);
    write_segments(dir.path(), 1, Lsn(MB), old.bytes());
    // The new primary's timeline 2 from the switchpoint.
    let mut tl2 = common.clone();
    tl2.set_timeline(TimelineId(2));
    let mut more = 0;
    fill(&mut tl2, Lsn(3 * MB + 500_000), &mut more);
    let end = tl2.position();
    let tl2_bytes = tl2.into_bytes();

    let script = promoted(
        switch,
        None,
        WalStream::new(Lsn(2 * MB), tl2_bytes[MB as usize..].to_vec()),
    );
    let (code, stderr, queries) = receive(dir.path(), script, end);
    assert_eq!(code, 0, "{stderr}\n{queries:#?}");
    assert!(
        !queries.iter().any(|q| q.ends_with("TIMELINE 1")),
        "nothing past the switchpoint is asked of timeline 1: {queries:#?}"
    );
    position_of(&queries, "START_REPLICATION 0/200000 TIMELINE 2");
    // The orphaned WAL is kept as it was.
    for segno in [2, 3] {
        assert_eq!(
            std::fs::read(dir.path().join(name(1, segno))).unwrap(),
            &old.bytes()[((segno - 1) * MB) as usize..(segno * MB) as usize]
        );
    }
    assert!(dir.path().join(format!("{}.partial", name(1, 4))).exists());
    // Timeline 2 continues from the switchpoint's segment.
    assert_eq!(
        std::fs::read(dir.path().join(name(2, 2))).unwrap(),
        &tl2_bytes[MB as usize..2 * MB as usize]
    );
    // The loss: logged once, reported next to the history file, counted right.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("00000002.failover.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["lost_commits"], lost, "{report:#}");
    assert_eq!(report["old_timeline"], 1);
    assert_eq!(report["new_timeline"], 2);
    assert_eq!(report["switchpoint"], switch.to_string());
    // Where the next record would have started (records are 8-byte aligned).
    let old_end = Lsn((old.position().0 + 7) & !7);
    assert_eq!(report["orphaned_end"], old_end.to_string(), "{report:#}");
    assert!(
        stderr.contains(&format!("holding {lost} committed transactions")),
        "{stderr}"
    );

    // verify accepts the archive and names the orphaned range as information.
    let text = support::walrelay_cmd::verify_accepts(dir.path());
    assert!(text.contains("past its end"), "{text}");
    assert!(text.contains("00000002.failover.json"), "{text}");
    assert!(
        text.contains(&format!("holding {lost} committed transactions")),
        "{text}"
    );
}

/// A start past the end of a historic timeline is refused by the server as walsender.c words it;
/// walrelay never asks for one — but a server that says so anyway is a definite error, not a loop.
#[test]
fn a_diverged_history_stops_with_the_server_state_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = WalBuilder::new(cfg(), Lsn(MB));
    let mut n = 0;
    fill(&mut b, Lsn(2 * MB + 100), &mut n);
    write_segments(dir.path(), 1, Lsn(MB), b.bytes());
    // The server is on timeline 3, whose history never went through timeline 1 the way ours did:
    // its timeline 2 began at another point than our own 00000002.history says.
    std::fs::write(dir.path().join("00000002.history"), history(Lsn(MB + 8))).unwrap();
    let mut tl2 = WalBuilder::new(cfg(), Lsn(2 * MB));
    tl2.set_timeline(TimelineId(2));
    fill(&mut tl2, Lsn(2 * MB + 10_000), &mut n);
    write_segments(dir.path(), 2, Lsn(2 * MB), tl2.bytes());
    let script = Script {
        timeline: 3,
        xlogpos: Lsn(3 * MB),
        wal_segment_size: "1MB".into(),
        system_identifier: cfg().system_identifier,
        histories: vec![
            (2, history(Lsn(MB + 800))),
            (3, format!("{}2\t0/280000\tx\n", history(Lsn(MB + 800)))),
        ],
        ..Script::default()
    };
    let (code, stderr, queries) = receive(dir.path(), script, Lsn(3 * MB));
    assert_eq!(
        code,
        support::exit_code::SERVER_STATE,
        "{stderr}\n{queries:#?}"
    );
    assert!(
        stderr.contains("does not descend from timeline 2"),
        "{stderr}"
    );
    assert!(
        !queries.iter().any(|q| q.starts_with("START_REPLICATION")),
        "{queries:#?}"
    );
}
