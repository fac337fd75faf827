//! Start discovery and the segment writer against what real PostgreSQL tools produce:
//!
//! * a server's own `pg_wal` after initdb and a restart, where recycled segments sit under future names
//!   with full size and stale content, and pg_waldump says where WAL really ends;
//! * a directory pg_receivewal wrote, where pg_receivewal's own choice of restart position
//!   ("starting log streaming at …") is the oracle for ours;
//! * real segments streamed through [`SegmentWriter`] must come out byte-identical, and pg_waldump must
//!   decode them.
//!
//! Needs PostgreSQL 15 (Debian's, via walrelay-testkit); skipped with a message when it is missing.

// Test helpers outside #[test] functions: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalFileName, WalSegmentSize};
use walrelay_testkit::{oracle, ClientTools, Cluster, StopMode};
use walrelay_walreceiver::{
    find_streaming_start_in_dir, SegmentWriter, StartError, StartOptions, StartReason, WriterConfig,
};

const MB: u64 = 1024 * 1024;
const PAGE: u64 = 8192;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn cluster(name: &str) -> Option<Cluster> {
    match Cluster::builder().name(name).wal_segsize_mb(1).try_start() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: no PostgreSQL to test against ({e})");
            None
        }
    }
}

/// Where pg_waldump stops decoding after `start`: "invalid record length at X" on stderr.
fn end_of_wal(dir: &Path, start: Lsn) -> Lsn {
    let tools = ClientTools::debian().unwrap();
    let out = Command::new(tools.pg_waldump())
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(start.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = stderr
        .split(" at ")
        .last()
        .and_then(|s| s.split(|c: char| c == ':' || c.is_whitespace()).next())
        .and_then(|s| s.parse::<Lsn>().ok());
    at.unwrap_or_else(|| panic!("cannot find the end of WAL in pg_waldump's output: {stderr}"))
}

#[test]
fn server_pg_wal_with_recycled_segments() {
    let Some(mut pg) = cluster("wr-start-pgwal") else {
        return;
    };
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS g");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    pg.stop(StopMode::Fast);
    let control = pg.controldata();
    let sysid = control.system_identifier().unwrap();
    let redo: Lsn = control
        .get("Latest checkpoint's REDO location")
        .unwrap()
        .parse()
        .unwrap();
    let tli = TimelineId(control.latest_checkpoint_timeline().unwrap());
    let pg_wal = pg.pg_wal_dir();

    let end = end_of_wal(&pg_wal, redo);
    let options = StartOptions::pg_wal(seg()).with_system_identifier(sysid);
    for options in [options, options.with_scan_from(redo, tli)] {
        let start = find_streaming_start_in_dir(&pg_wal, &options)
            .unwrap()
            .unwrap();
        eprintln!("{start} (pg_waldump: WAL ends at {end})");
        assert_eq!(start.timeline, tli);
        assert_eq!(
            start.lsn,
            end.segment_start(MB as u32),
            "the segment holding the end of WAL"
        );
        match start.reason {
            StartReason::Partial {
                valid_until: Some(valid),
                ..
            } => {
                // The page holding the end of WAL is valid; what follows is zeros or recycled pages.
                assert!(
                    valid >= end,
                    "valid pages end at {valid}, before the end of WAL {end}"
                );
                assert!(
                    valid.0 <= end.0 - end.0 % PAGE + PAGE,
                    "{valid} is past the end of WAL {end}"
                );
            }
            other => panic!("expected a partial segment, got {other}"),
        }
    }

    // The recycled files are really there, full size, under future names: not counted as received.
    let mut future = 0;
    for e in fs::read_dir(&pg_wal).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if let Some(id) = WalFileName::parse(&name).and_then(|n| n.segment_id(seg())) {
            if id.start_lsn(seg()) > end {
                assert_eq!(e.metadata().unwrap().len(), MB);
                future += 1;
            }
        }
    }
    assert!(
        future > 0,
        "expected recycled segments in {}",
        pg_wal.display()
    );

    let wrong = StartOptions::pg_wal(seg()).with_system_identifier(sysid ^ 1);
    let e = find_streaming_start_in_dir(&pg_wal, &wrong).unwrap_err();
    assert!(
        matches!(e, StartError::SystemIdentifierMismatch { .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&sysid.to_string()), "{e}");
}

/// The first record at or after `from` (a segment usually starts with the tail of a record).
fn first_record(dir: &Path, from: Lsn) -> Lsn {
    let tools = ClientTools::debian().unwrap();
    let out = Command::new(tools.pg_waldump())
        .arg("-p")
        .arg(dir)
        .args(["-n", "1", "-s"])
        .arg(from.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split("lsn: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no record in pg_waldump's output: {stdout}"))
}

/// Runs pg_receivewal until it has received WAL past `endpos`; returns its stderr.
fn pg_receivewal(pg: &Cluster, dir: &Path, endpos: Lsn) -> String {
    let tools = ClientTools::debian().unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg(tools.pg_receivewal())
        .arg("-d")
        .arg(pg.unix_conninfo())
        .args(["-S", "wr", "-n", "-v", "--no-sync", "-E"])
        .arg(endpos.to_string())
        .arg("-D")
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pg_receivewal failed: {stderr}");
    stderr
}

/// "pg_receivewal: starting log streaming at 0/3000000 (timeline 1)".
fn pg_receivewal_start(stderr: &str) -> (Lsn, TimelineId) {
    let line = stderr
        .lines()
        .find_map(|l| l.split("starting log streaming at ").nth(1))
        .unwrap_or_else(|| panic!("no start position in pg_receivewal's output: {stderr}"));
    let (lsn, rest) = line.split_once(" (timeline ").unwrap();
    let tli = rest.trim_end_matches(')').parse().unwrap();
    (lsn.parse().unwrap(), TimelineId(tli))
}

fn make_wal(pg: &Cluster) -> Lsn {
    pg.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT generate_series(1, 5000)");
    let endpos = pg.current_wal_lsn();
    // pg_receivewal stops only once it received WAL *past* endpos: make some.
    pg.psql("INSERT INTO t SELECT generate_series(1, 100)");
    pg.switch_wal();
    endpos
}

#[test]
fn resumes_a_pg_receivewal_directory_where_pg_receivewal_would() {
    let Some(pg) = cluster("wr-start-receivewal") else {
        return;
    };
    pg.psql("SELECT pg_create_physical_replication_slot('wr', true)");
    pg.psql("CREATE TABLE t (g int)");
    let sysid = pg.system_identifier();
    let archive = pg.scratch_path("archive");
    fs::create_dir_all(&archive).unwrap();

    pg_receivewal(&pg, &archive, make_wal(&pg));
    let options = StartOptions::archive(seg()).with_system_identifier(sysid);
    for round in 0..2 {
        let ours = find_streaming_start_in_dir(&archive, &options)
            .unwrap()
            .unwrap();
        let stderr = pg_receivewal(&pg, &archive, make_wal(&pg));
        let theirs = pg_receivewal_start(&stderr);
        eprintln!(
            "round {round}: walrelay: {ours}; pg_receivewal: {} on timeline {}",
            theirs.0, theirs.1
        );
        assert_eq!((ours.lsn, ours.timeline), theirs, "round {round}");
    }

    // Stream pg_receivewal's complete segments through the writer, in uneven chunks.
    let mut complete: Vec<(SegmentId, PathBuf)> = fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_string();
            match WalFileName::parse(&name)? {
                n @ WalFileName::Segment {
                    partial: false,
                    compression: None,
                    ..
                } => Some((n.segment_id(seg())?, path)),
                _ => None,
            }
        })
        .collect();
    complete.sort();
    assert!(complete.len() >= 3, "{complete:?}");
    let first = complete[0].0.start_lsn(seg());
    let last = complete.last().unwrap().0.end_lsn(seg());
    assert_eq!(
        (last.0 - first.0) / MB,
        complete.len() as u64,
        "pg_receivewal left no gap"
    );
    let copy = pg.scratch_path("copy");
    fs::create_dir_all(&copy).unwrap();
    let mut w =
        SegmentWriter::new(WriterConfig::archive(&copy, seg()), TimelineId(1), first).unwrap();
    let mut lsn = first;
    let sizes = [1, 24, 8192, 131_072, 100_003, 65_536 * 3, 7];
    let mut i = 0;
    for (_, path) in &complete {
        let data = fs::read(path).unwrap();
        let mut at = 0;
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            w.write(lsn, &data[at..at + n]).unwrap();
            lsn = Lsn(lsn.0 + n as u64);
            at += n;
            i += 1;
        }
    }
    assert_eq!(w.close().unwrap(), last);
    for (id, path) in &complete {
        let ours = copy.join(id.file_name(seg()));
        assert!(
            fs::read(&ours).unwrap() == fs::read(path).unwrap(),
            "{} differs",
            ours.display()
        );
    }
    let dump = oracle::pg_waldump(&copy, first_record(&copy, first), Lsn(last.0 - 1)).unwrap();
    assert!(dump.records.len() > 1000, "{} records", dump.records.len());
    dump.check_chain().unwrap();
}
