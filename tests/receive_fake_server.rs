#![allow(clippy::unwrap_used)]

//! Validation on arrival against a scripted walsender: real PostgreSQL 15 WAL (the wal crate's
//! fixtures) with one byte damaged. `walrelay receive` must stop with the invalid-WAL exit code, name
//! the position, never acknowledge a flush position at or past the damage, and never give the damaged
//! segment its final name. A real server cannot be made to send bad WAL on purpose, hence the script
//! (`walrelay_testkit::FakeWalsender` with a scripted WAL stream).

use std::io::Read;
use std::path::Path;
use std::process::Command;

use walrelay_testkit::{Ending, FakeWalsender, Lsn, Script, WalStream};

mod support;
use support::scratch_mount::Tmpfs;

const SEG: usize = 1024 * 1024;
/// The fixtures start at 0/700000 (segment 7 of timeline 1, 1 MB segments).
const START: u64 = 0x70_0000;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/wal/tests/fixtures");
/// walrelay's exit code for WAL that failed validation (README, receiver::exit_code::INVALID_WAL).
const EXIT_INVALID_WAL: i32 = 6;
/// walrelay's exit code for local failures such as a full disk (README, receiver::exit_code::LOCAL).
const EXIT_LOCAL: i32 = 5;

const ALL_SEGMENTS: &[&str] = &[
    "000000010000000000000007",
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
    "00000001000000000000000B",
];

fn fixture_wal() -> (Vec<u8>, u64) {
    fixture_segments(&ALL_SEGMENTS[..2])
}

fn fixture_segments(names: &[&str]) -> (Vec<u8>, u64) {
    let mut all = Vec::new();
    for name in names {
        let f = std::fs::File::open(Path::new(FIXTURES).join(format!("{name}.gz"))).unwrap();
        let mut d = flate2::read::GzDecoder::new(f);
        let mut seg = Vec::new();
        d.read_to_end(&mut seg).unwrap();
        assert_eq!(seg.len(), SEG);
        all.extend_from_slice(&seg);
    }
    let sysid: u64 = std::fs::read_to_string(Path::new(FIXTURES).join("system_identifier"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (all, sysid)
}

fn run_against(
    wal: Vec<u8>,
    sysid: u64,
    extra: &[&str],
) -> (i32, String, Vec<u64>, tempfile::TempDir) {
    run_with_ending(wal, sysid, extra, Ending::AskForReplies)
}

fn run_with_ending(
    wal: Vec<u8>,
    sysid: u64,
    extra: &[&str],
    ending: Ending,
) -> (i32, String, Vec<u64>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, flushes) = run_into(dir.path(), wal, sysid, extra, ending, true);
    (code, err, flushes, dir)
}

/// Runs `walrelay receive` into `dir` against the scripted server; returns the exit code, stderr
/// and the flush positions the server was sent.
fn run_into(
    dir: &Path,
    wal: Vec<u8>,
    sysid: u64,
    extra: &[&str],
    ending: Ending,
    synchronous: bool,
) -> (i32, String, Vec<u64>) {
    let stream = WalStream {
        ending,
        ..WalStream::new(Lsn(START), wal)
    };
    let server = FakeWalsender::start(Script {
        system_identifier: sysid,
        xlogpos: stream.end(),
        wal_segment_size: "1MB".into(),
        wal: Some(stream),
        ..Script::default()
    });
    let port = server.port();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["receive", "--no-loop", "-s", "1", "--start", "0/700000"])
        .args(if synchronous {
            &["--synchronous"][..]
        } else {
            &[]
        })
        .arg("-D")
        .arg(dir)
        .args(extra)
        .args([
            "-d",
            &format!("host=127.0.0.1 port={port} user=x sslmode=disable"),
        ])
        .env("WALRELAY_LOG", "warn")
        .output()
        .unwrap();
    let flushes = server.flush_positions().iter().map(|f| f.0).collect();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        flushes,
    )
}

#[test]
fn a_damaged_record_is_never_acknowledged_or_archived() {
    let (mut wal, sysid) = fixture_wal();
    // A byte inside record data in the middle of segment 7 (well past the page header at 0x6000).
    let damage = 0x6200usize;
    wal[damage] ^= 0xFF;
    let damaged_lsn = START + damage as u64;
    let (code, err, flushes, dir) = run_against(wal, sysid, &[]);
    assert_eq!(code, EXIT_INVALID_WAL, "{err}");
    assert!(err.contains("invalid WAL"), "{err}");
    assert!(err.contains("checksum in record at 0/70"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    let max = flushes.iter().copied().max().unwrap_or(0);
    assert!(
        max <= damaged_lsn,
        "flush {max:X} acknowledged at or past the damage at {damaged_lsn:X}"
    );
    assert!(
        !dir.path().join("000000010000000000000007").exists(),
        "the damaged segment got its final name"
    );
}

#[test]
fn a_wrong_page_address_is_refused() {
    let (mut wal, sysid) = fixture_wal();
    // xlp_pageaddr of the page at 0/720000 (bytes 8..16 of its header), pointing elsewhere.
    let page = 0x2_0000usize;
    wal[page + 8] ^= 0x10;
    let (code, err, flushes, _dir) = run_against(wal, sysid, &[]);
    assert_eq!(code, EXIT_INVALID_WAL, "{err}");
    assert!(err.contains("0/720000"), "{err}");
    let max = flushes.iter().copied().max().unwrap_or(0);
    assert!(
        max <= START + page as u64,
        "flush {max:X} past the bad page"
    );
}

#[test]
fn good_wal_from_the_same_script_is_archived_and_acknowledged() {
    let (mut wal, sysid) = fixture_segments(ALL_SEGMENTS);
    let orig = wal.clone();
    // A real walsender never sends past its flush position: the fixture's WAL ends at 0/B02048, and
    // zeros after it would (rightly) be refused as invalid.
    wal.truncate(0xB0_2048 - START as usize);
    // Stop at segment B's start: the 3.2 MB record that crosses segments 7 to A is complete by then,
    // so everything before it is acknowledged only once its end arrived.
    let (code, err, flushes, dir) = run_against(wal, sysid, &["-E", "0/B00000"]);
    assert_eq!(code, 0, "{err}");
    for (i, name) in ALL_SEGMENTS[..4].iter().enumerate() {
        let archived = std::fs::read(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name} not archived: {e}; {err}"));
        assert!(
            archived == orig[i * SEG..(i + 1) * SEG],
            "{name} differs from what was sent"
        );
    }
    let max = flushes.iter().copied().max().unwrap_or(0);
    assert!(
        max >= 0xB0_0000,
        "flush {max:X} never reached the end position"
    );
}

#[test]
fn a_synchronous_flush_does_not_wait_for_more_wal() {
    // The last WAL arrives together with a keepalive that asks for nothing, and then the server
    // says nothing more, as after a commit on an idle primary. A synchronous receiver must still
    // make that WAL durable and report it, or the commit waits forever.
    let (mut wal, sysid) = fixture_segments(ALL_SEGMENTS);
    wal.truncate(0xB0_2048 - START as usize);
    let (_code, err, flushes, dir) = run_with_ending(
        wal,
        sysid,
        &[],
        Ending::QuietUntilFlushed {
            until: Lsn(0xB0_2048),
        },
    );
    let max = flushes.iter().copied().max().unwrap_or(0);
    assert!(
        max >= 0xB0_2048,
        "flush {max:X} reported after the last WAL, expected B02048 (its end): {err}"
    );
    assert!(
        dir.path().join("00000001000000000000000A").exists(),
        "{err}"
    );
}

/// A full disk mid-stream (a 2.5 MB tmpfs for 4 MB of WAL in 1 MB segments), with the writer on its
/// own thread and inline (`--synchronous`): the write error itself is reported in one line, the
/// exit code is the local-failure one, no file gets a final segment name unless it is complete,
/// and no flush position beyond the complete segments is ever reported.
#[test]
fn a_full_disk_is_named_and_nothing_short_looks_complete() {
    let (mut wal, sysid) = fixture_segments(ALL_SEGMENTS);
    wal.truncate(0xB0_2048 - START as usize);
    for synchronous in [false, true] {
        let scratch = tempfile::tempdir().unwrap();
        let Some(small) = Tmpfs::mount(&scratch.path().join("small"), 2560, &[]) else {
            eprintln!("skipping: no tmpfs mount here (needs root with CAP_SYS_ADMIN)");
            return;
        };
        let (code, err, flushes) = run_into(
            small.path(),
            wal.clone(),
            sysid,
            &[],
            Ending::AskForReplies,
            synchronous,
        );
        let mode = if synchronous { "inline" } else { "thread" };
        eprintln!("disk full ({mode}): {}", err.trim());
        assert_eq!(code, EXIT_LOCAL, "{mode}: {err}");
        assert!(err.contains("No space left on device"), "{mode}: {err}");
        // One error line. The checksum file of an earlier segment may hit the full disk first;
        // that is logged as a warning (a restart finishes it), not as a second error.
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("walrelay: error:"))
                .count(),
            1,
            "{mode}: {err}"
        );
        assert!(!err.contains("panicked"), "{mode}: {err}");
        let mut complete = 0u64;
        for entry in std::fs::read_dir(small.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                let len = entry.metadata().unwrap().len();
                assert_eq!(
                    len, SEG as u64,
                    "{mode}: {name} is short but looks complete"
                );
                let seg = u64::from_str_radix(&name[16..], 16).unwrap();
                complete = complete.max((seg + 1) * SEG as u64);
            }
        }
        let max = flushes.iter().copied().max().unwrap_or(0);
        assert!(
            max <= complete.max(START),
            "{mode}: flush {max:X} reported past the complete segments (up to {complete:X})"
        );
    }
}
