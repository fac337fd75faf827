//! The archive crate against the real thing: directories written by Debian's pg_receivewal 15 with
//! `--compress=gzip` and `lz4` from a throwaway PostgreSQL 15 cluster (1 MB segments), and our own
//! compressed files read back by pg_receivewal, pg_waldump and the gzip/lz4/zstd tools.
//!
//! The cluster comes from walrelay-testkit (Debian's PostgreSQL 15, installed by
//! `scripts/install-pg.sh` if missing); where it cannot be had, the test says so and passes.

// Test-harness code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use walrelay_archive::{
    compress_completed_segment, restore, verify, ArchiveDir, Compression, NoContentCheck,
    RestoreOptions, RestoreOutcome, SegmentFileState, VerifyOptions,
};
use walrelay_durable::Owner;
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_testkit::install::DEBIAN_MAJOR;
use walrelay_testkit::{pg_command, ClientTools, Cluster, PgInstall};

const MB: u64 = 1024 * 1024;

/// A PostgreSQL 15 primary with 1 MB segments that keeps all its WAL, or `None` (with a message)
/// where PostgreSQL 15 cannot be installed.
fn primary() -> Option<Cluster> {
    let install = match PgInstall::for_major(DEBIAN_MAJOR) {
        Ok(install) => install,
        Err(e) => {
            eprintln!("SKIPPED: no PostgreSQL 15 to test against ({e})");
            return None;
        }
    };
    Some(
        Cluster::builder()
            .name("archive-pg")
            .install(install)
            .wal_segsize_mb(1)
            .fsync(false)
            .conf("wal_keep_size = '1GB'")
            .start(),
    )
}

/// Runs a client program to completion; panics with its output unless it succeeded.
fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Debian's pg_receivewal from `primary` into `dir` up to `endpos`, without looping.
fn receivewal(primary: &Cluster, dir: &Path, extra: &[&str], endpos: Lsn) -> Output {
    let mut cmd = pg_command(&ClientTools::debian().unwrap().pg_receivewal());
    cmd.arg("-d")
        .arg(primary.replication_conninfo())
        .arg("-D")
        .arg(dir)
        .args(["-n", "-v", "-E", &endpos.to_string()])
        .args(extra);
    run_ok(cmd)
}

/// A new directory in the cluster's scratch space (removed with it).
fn new_dir(primary: &Cluster, name: &str) -> PathBuf {
    let p = primary.scratch_path(name);
    fs::create_dir(&p).unwrap();
    p
}

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn complete_segment_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

fn tool_ok(tool: &str, args: &[&str]) -> Option<bool> {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|o| o.status.success())
}

#[test]
fn pg_receivewal_15_directories_and_our_files_for_pg_tools() {
    let Some(c) = primary() else {
        return;
    };
    for slot in ["s_plain", "s_gz", "s_lz4"] {
        c.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
    }
    // Several full segments, each ended by a switch, then a little WAL in an unfinished segment.
    c.psql("CREATE TABLE t (x int, pad text)");
    for _ in 0..4 {
        c.psql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 6000) g");
        c.switch_wal();
    }
    c.psql("INSERT INTO t SELECT g, 'tail' FROM generate_series(1, 200) g");
    let end = c.current_wal_lsn();

    let plain = new_dir(&c, "plain");
    let gz = new_dir(&c, "gz");
    let lz4 = new_dir(&c, "lz4");
    receivewal(&c, &plain, &["-S", "s_plain"], end);
    receivewal(&c, &gz, &["-S", "s_gz", "--compress=gzip"], end);
    receivewal(&c, &lz4, &["-S", "s_lz4", "--compress=lz4"], end);

    let names = complete_segment_names(&plain);
    assert!(
        names.len() >= 4,
        "expected several complete segments: {names:?}"
    );
    let partial_name = seg().segno(end).0;
    let partial_name = walrelay_protocol::SegmentId::new(
        TimelineId(1),
        walrelay_protocol::XLogSegNo(partial_name),
    )
    .file_name(seg());
    let pg_wal = c.pg_wal_dir();

    // Scan and verify accept what pg_receivewal wrote, in all three forms.
    for (dir, state, partial_suffix) in [
        (&plain, SegmentFileState::Complete, ".partial"),
        (&gz, SegmentFileState::CompleteCompressed, ".gz.partial"),
        (&lz4, SegmentFileState::CompleteCompressed, ".lz4.partial"),
    ] {
        let inv = ArchiveDir::new(dir, seg()).scan().unwrap();
        assert!(
            inv.damaged.is_empty(),
            "{}: {:?}",
            dir.display(),
            inv.damaged
        );
        let complete: Vec<_> = inv
            .segments
            .values()
            .filter(|f| f[0].state == state)
            .collect();
        assert_eq!(complete.len(), names.len(), "{}", dir.display());
        let last = inv.segments.values().last().unwrap();
        assert_eq!(last[0].name, format!("{partial_name}{partial_suffix}"));
        assert!(!last[0].state.is_complete());
        // pg_receivewal's own resume rule: the partial segment's start.
        assert_eq!(
            inv.streaming_start(),
            Some((TimelineId(1), end.segment_start(MB as u32)))
        );
        let report = verify(dir, seg(), &NoContentCheck, &VerifyOptions::default()).unwrap();
        assert!(report.is_ok(), "{}: {:#?}", dir.display(), report.problems);
        assert_eq!(report.files_read as usize, names.len() + 1);
    }

    // Restore every complete segment from each directory: byte-identical to the server's pg_wal.
    let restored = new_dir(&c, "restored");
    for name in &names {
        let want = fs::read(pg_wal.join(name)).unwrap();
        assert_eq!(fs::read(plain.join(name)).unwrap(), want, "{name}");
        for dir in [&plain, &gz, &lz4] {
            let dest = restored.join(name);
            let out = restore(dir, name, &dest, &RestoreOptions::default()).unwrap();
            assert!(
                matches!(out, RestoreOutcome::Restored(_)),
                "{name} from {}",
                dir.display()
            );
            assert!(
                fs::read(&dest).unwrap() == want,
                "{name} from {}",
                dir.display()
            );
        }
    }
    // pg_waldump reads the restored segments as one stream of valid WAL.
    let first = names.first().unwrap();
    let last = names.last().unwrap();
    let mut waldump = pg_command(&ClientTools::debian().unwrap().pg_waldump());
    waldump.arg("-p").arg(&restored).args(["-q", first, last]);
    run_ok(waldump);

    // --partial: the unfinished segment, zero-padded, its WAL identical to the server's.
    let server_partial = fs::read(pg_wal.join(&partial_name)).unwrap();
    for dir in [&plain, &gz, &lz4] {
        let dest = c.scratch_path("RECOVERYXLOG");
        let opts = RestoreOptions {
            partial: true,
            ..Default::default()
        };
        let RestoreOutcome::Restored(r) = restore(dir, &partial_name, &dest, &opts).unwrap() else {
            panic!("no partial restored from {}", dir.display())
        };
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len() as u64, MB, "{}", dir.display());
        let valid = r.padded_from.unwrap() as usize;
        assert!(
            valid as u64 >= end.segment_offset(MB as u32),
            "{}: {valid}",
            dir.display()
        );
        let wal_end = end.segment_offset(MB as u32) as usize;
        assert!(
            got[..wal_end] == server_partial[..wal_end],
            "{}: partial WAL differs from the server's",
            dir.display()
        );
        assert!(got[valid..].iter().all(|&b| b == 0));
        // Without --partial, the segment is simply not there.
        assert_eq!(
            restore(dir, &partial_name, &dest, &RestoreOptions::default()).unwrap(),
            RestoreOutcome::NotFound
        );
    }

    // Our compressed files, read by PostgreSQL's tools: pg_receivewal's FindStreamingStart must see
    // them as complete (gzip ISIZE; LZ4 decompressed by LZ4F) and resume after the last one.
    for method in [Compression::Gzip { level: 6 }, Compression::Lz4] {
        let ours = new_dir(
            &c,
            &format!("ours_{}", method.suffix().trim_start_matches('.')),
        );
        for name in &names {
            fs::copy(plain.join(name), ours.join(name)).unwrap();
            let p = compress_completed_segment(&ours, name, method, Owner::of_dir_if_root(&ours))
                .unwrap();
            let ok = match method {
                Compression::Gzip { .. } => tool_ok("gzip", &["-t", p.to_str().unwrap()]),
                _ => tool_ok("lz4", &["-t", p.to_str().unwrap()]),
            };
            assert_ne!(ok, Some(false), "{} rejects {}", method, p.display());
        }
        let out = receivewal(&c, &ours, &[], end);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let next = walrelay_protocol::WalFileName::parse(last)
            .unwrap()
            .segment_id(seg())
            .unwrap()
            .end_lsn(seg());
        assert!(
            stderr.contains(&format!("starting log streaming at {next} (timeline 1)")),
            "{method}: pg_receivewal did not resume after our files:\n{stderr}"
        );
        assert!(!stderr.contains("incorrect"), "{method}: {stderr}");
    }

    // zstd: readable by the zstd tool.
    let ours_zst = new_dir(&c, "ours_zst");
    fs::copy(plain.join(first), ours_zst.join(first)).unwrap();
    let p = compress_completed_segment(
        &ours_zst,
        first,
        Compression::Zstd { level: 3 },
        Owner::current(),
    )
    .unwrap();
    assert_ne!(
        tool_ok("zstd", &["-t", "-q", p.to_str().unwrap()]),
        Some(false)
    );
}
