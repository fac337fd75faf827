//! `walrelay restore`, `verify` and `prune` as operators and PostgreSQL run them: the real binary,
//! its exit statuses and its output.
//!
//! Most archives here are built from real WAL without a server: the wal crate's fixtures, five
//! consecutive PostgreSQL 15 segments (1 MB) in which a 3.2 MB record spans segments 7 to A and the
//! last one was still being written (a `.partial`). One test streams a real cluster's WAL with
//! `walrelay receive` and with Debian's `pg_receivewal` (plain, gzip, lz4) and has `verify` pass
//! all of them.

// Test code: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use walrelay_archive::{compress_completed_segment, open_segment, Compression};
use walrelay_durable::Owner;
use walrelay_protocol::Lsn;
use walrelay_testkit::{poll, ClientTools, Cluster};

const MB: usize = 1024 * 1024;
const SEG7: &str = "000000010000000000000007";
const SEG8: &str = "000000010000000000000008";
const SEG9: &str = "000000010000000000000009";
const SEGA: &str = "00000001000000000000000A";
const SEGB: &str = "00000001000000000000000B";

/// Runs the walrelay binary with a clean environment.
fn walrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env_remove("WALRELAY_LOG")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One of the wal crate's real segments, decompressed.
fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/wal/tests/fixtures")
        .join(format!("{name}.gz"));
    let mut out = Vec::new();
    open_segment(&p).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), MB, "{name}");
    out
}

/// An archive of the fixtures: 7 plain, 8 gzip, 9 lz4, A zstd, B as the `.partial` being received.
/// `edit` may change a segment's bytes before it is stored (and compressed).
fn archive_with(edit: impl Fn(&str, &mut Vec<u8>)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, c) in [
        (SEG7, Compression::None),
        (SEG8, Compression::Gzip { level: 1 }),
        (SEG9, Compression::Lz4),
        (SEGA, Compression::Zstd { level: 1 }),
    ] {
        let mut bytes = fixture(name);
        edit(name, &mut bytes);
        fs::write(d.path().join(name), &bytes).unwrap();
        compress_completed_segment(d.path(), name, c, Owner::current()).unwrap();
    }
    let mut b = fixture(SEGB);
    edit(SEGB, &mut b);
    fs::write(d.path().join(format!("{SEGB}.partial")), b).unwrap();
    d
}

fn good_archive() -> tempfile::TempDir {
    archive_with(|_, _| {})
}

/// The problem lines of a human verify report.
fn problem_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("  0")).collect()
}

/// `walrelay verify -D dir`, which must fail (exit 1) with exactly one problem: that problem's line,
/// and the whole report for assertion messages.
fn single_problem(dir: &Path) -> (String, String) {
    let o = walrelay(&["verify", "-D", s(dir)]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let out = stdout(&o);
    let lines = problem_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    (lines[0].to_string(), out)
}

// ------------------------------------------------------------------------------------- verify

#[test]
fn verify_passes_a_good_archive_in_every_format() {
    let d = good_archive();
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("wal_segment_size 1MB"), "inferred: {out}");
    assert!(out.contains("5 segments (1 partial)"), "{out}");
    assert!(out.contains("OK: no problems found"), "{out}");

    let o = walrelay(&["verify", "-D", s(d.path()), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["content_check"], "wal");
    assert_eq!(v["wal_segment_size_from"], "wal");
    assert_eq!(v["wal_segment_size"], MB);
    assert_eq!(v["files_read"], 5);
    assert_eq!(v["boundaries_not_checked"], 0);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["timelines"][0]["end_lsn"], "0/B00000");

    // Structure only, and an explicit segment size.
    let o = walrelay(&[
        "verify",
        "-D",
        s(d.path()),
        "--no-content",
        "--wal-segsize",
        "1MB",
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("--no-content"), "{}", stdout(&o));
}

#[test]
fn verify_names_a_deleted_segment_as_a_gap() {
    let d = good_archive();
    fs::remove_file(d.path().join(format!("{SEG8}.gz"))).unwrap();
    let (line, out) = single_problem(d.path());
    assert!(line.starts_with(&format!("  {SEG8}: gap:")), "{out}");
    assert!(out.contains("FAILED: 1 problems"), "{out}");

    let o = walrelay(&["verify", "-D", s(d.path()), "--json"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["file"], SEG8);
    assert_eq!(v["problems"][0]["kind"], "gap");
    assert_eq!(v["timelines"][0]["gaps"][0]["first_missing"], SEG8);
}

#[test]
fn verify_names_file_and_lsn_of_a_flipped_byte() {
    // In segment 7 (kept plain): inside the second record, 0/700048.
    let d = archive_with(|name, b| {
        if name == SEG7 {
            b[0x48 + 30] ^= 0x01;
        }
    });
    let (line, out) = single_problem(d.path());
    assert!(
        line.starts_with(&format!("  {SEG7}: content_check:")),
        "{out}"
    );
    assert!(line.contains("checksum in record at 0/700048"), "{out}");

    // In segment 9 (kept as .lz4, flipped before compressing, so the LZ4 checksum is fine): a
    // byte of the 3.2 MB record that begins in segment 7. Segment 9 alone is only continuation
    // data; reading on across the files finds the record's CRC wrong.
    let d = archive_with(|name, b| {
        if name == SEG9 {
            b[300_000] ^= 0x01;
        }
    });
    let (line, out) = single_problem(d.path());
    assert!(
        line.starts_with(&format!("  {SEG7}: content_check:")),
        "{out}"
    );
    assert!(line.contains("record at 0/76B3B0"), "{out}");
    assert!(line.contains(SEGA), "names where it was found: {out}");
}

#[test]
fn verify_finds_a_truncated_gz() {
    let d = good_archive();
    let gz = d.path().join(format!("{SEG8}.gz"));
    let bytes = fs::read(&gz).unwrap();
    fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        problem_lines(&out)
            .iter()
            .any(|l| l.starts_with(&format!("  {SEG8}.gz: damaged:"))
                || l.starts_with(&format!("  {SEG8}.gz: corrupt:"))),
        "{out}"
    );
    // The hole it leaves is named too.
    assert!(out.contains(&format!("  {SEG8}: gap:")), "{out}");
    // Nothing was touched.
    assert_eq!(fs::read(&gz).unwrap().len(), bytes.len() / 2);
}

#[test]
fn verify_wants_the_history_of_a_later_timeline() {
    // The same WAL under timeline 2's names (its pages still say timeline 1, as the first segment
    // of a new timeline does) but no 00000002.history.
    let d = tempfile::tempdir().unwrap();
    for name in [SEG7, SEG8, SEG9, SEGA] {
        fs::write(
            d.path().join(format!("00000002{}", &name[8..])),
            fixture(name),
        )
        .unwrap();
    }
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("  00000002.history: missing_history:"),
        "{out}"
    );
    // With the history file the archive is whole: timeline 1 ended before its first segment.
    fs::write(
        d.path().join("00000002.history"),
        "1\t0/700000\tno recovery target specified\n",
    )
    .unwrap();
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn verify_with_the_wrong_segment_size_fails_loudly() {
    let d = good_archive();
    let o = walrelay(&["verify", "-D", s(d.path()), "--wal-segsize", "16MB"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("damaged"), "{}", stdout(&o));
}

#[test]
fn verify_bad_input() {
    let d = tempfile::tempdir().unwrap();
    // Missing directory: a local problem (5), one line.
    let o = walrelay(&["verify", "-D", s(&d.path().join("nope"))]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    // Malformed option values are usage errors.
    for bad in ["3MB", "banana", "0"] {
        let o = walrelay(&["verify", "-D", s(d.path()), "--wal-segsize", bad]);
        assert_eq!(code(&o), 2, "{bad}");
        assert!(stderr(&o).contains("wal-segsize"), "{}", stderr(&o));
    }
    // No WAL at all (the wrong -D, a file system not mounted): not a passing check.
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("no WAL in"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("FAILED: no WAL found"),
        "{}",
        stdout(&o)
    );
    // Segments without any readable header and no size given.
    fs::write(d.path().join(SEG7), b"junk").unwrap();
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("wal_segment_size"), "{}", stderr(&o));
}

// ------------------------------------------------------------------------------------ restore

/// A pg_wal-like destination directory.
fn pg_wal() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn restore_exit_statuses() {
    let d = good_archive();
    let w = pg_wal();
    let dest = w.path().join("RECOVERYXLOG");

    // Found, in each format: exit 0, byte-identical, nothing printed.
    for name in [SEG7, SEG8, SEG9, SEGA] {
        let o = walrelay(&["restore", name, s(&dest), "-D", s(d.path())]);
        assert_eq!(code(&o), 0, "{name}: {}", stderr(&o));
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", stderr(&o));
        assert_eq!(fs::read(&dest).unwrap(), fixture(name), "{name}");
    }
    // -v says what it did.
    let o = walrelay(&["restore", SEG8, s(&dest), "-D", s(d.path()), "-v"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains(&format!("{SEG8}.gz")), "{}", stderr(&o));

    // Missing: exit 1, quietly (PostgreSQL asks for files that do not exist).
    fs::remove_file(&dest).unwrap();
    for name in ["00000001000000000000000C", "00000002.history", SEGB] {
        let o = walrelay(&["restore", name, s(&dest), "-D", s(d.path())]);
        assert_eq!(code(&o), 1, "{name}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{name}: {}", stderr(&o));
        assert!(!dest.exists());
    }

    // --partial: the .partial segment B, full size (pg_receivewal pre-pads it).
    let o = walrelay(&["restore", SEGB, s(&dest), "-D", s(d.path()), "--partial"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(&dest).unwrap(), fixture(SEGB));

    // History files.
    fs::write(d.path().join("00000002.history"), "1\t0/A86C90\tbefore_x\n").unwrap();
    let hist = w.path().join("RECOVERYHISTORY");
    let o = walrelay(&["restore", "00000002.history", s(&hist), "-D", s(d.path())]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(&hist).unwrap(),
        "1\t0/A86C90\tbefore_x\n"
    );

    // Corrupt: a truncated .gz is > 125 (recovery must stop, not end early), one line naming it.
    let gz = d.path().join(format!("{SEG8}.gz"));
    let bytes = fs::read(&gz).unwrap();
    fs::write(&gz, &bytes[..bytes.len() - 1000]).unwrap();
    let o = walrelay(&["restore", SEG8, s(&dest), "-D", s(d.path())]);
    assert_eq!(
        code(&o),
        walrelay_archive::RESTORE_EXIT_CORRUPT,
        "{}",
        stderr(&o)
    );
    assert!(code(&o) > 125);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{SEG8}.gz")), "{}", stderr(&o));
    assert!(
        !w.path().join("RECOVERYXLOG.tmp").exists(),
        "no temp file left"
    );
    // A plain segment of the wrong size too.
    fs::write(d.path().join(SEG7), &fixture(SEG7)[..MB - 8192]).unwrap();
    let o = walrelay(&["restore", SEG7, s(&dest), "-D", s(d.path())]);
    assert_eq!(
        code(&o),
        walrelay_archive::RESTORE_EXIT_CORRUPT,
        "{}",
        stderr(&o)
    );
}

#[test]
fn restore_bad_input_stops_recovery() {
    let d = good_archive();
    let w = pg_wal();
    let dest = w.path().join("RECOVERYXLOG");
    let error = walrelay_archive::RESTORE_EXIT_ERROR;
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Archive directory missing (an unmounted volume, a typo).
        (
            vec![
                SEG7.into(),
                s(&dest).into(),
                "-D".into(),
                s(&d.path().join("nope")).into(),
            ],
            "nope",
        ),
        // No -D, no destination, nothing.
        (vec![SEG7.into(), s(&dest).into()], "-D"),
        (vec![SEG7.into(), "-D".into(), s(d.path()).into()], "%p"),
        (vec![], "%f"),
        // Names PostgreSQL never asks for.
        (
            vec![
                "../../etc/passwd".into(),
                s(&dest).into(),
                "-D".into(),
                s(d.path()).into(),
            ],
            "passwd",
        ),
        (
            vec![
                format!("{SEG7}.gz"),
                s(&dest).into(),
                "-D".into(),
                s(d.path()).into(),
            ],
            ".gz",
        ),
        // Destination directory missing.
        (
            vec![
                SEG7.into(),
                s(&w.path().join("x/y")).into(),
                "-D".into(),
                s(d.path()).into(),
            ],
            "destination",
        ),
        // Malformed segment size.
        (
            vec![
                SEG7.into(),
                s(&dest).into(),
                "-D".into(),
                s(d.path()).into(),
                "--wal-segsize".into(),
                "3MB".into(),
            ],
            "wal-segsize",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["restore".to_string()];
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = walrelay(&refs);
        assert_eq!(code(&o), error, "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(!dest.exists());
}

// -------------------------------------------------------------------------------------- prune

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn prune_dry_run_then_real_run() {
    let d = good_archive();
    fs::write(
        d.path().join("00000002.history"),
        "1\t0/B80000\tno recovery target specified\n",
    )
    .unwrap();
    let before = names(d.path());

    let o = walrelay(&["prune", "-D", s(d.path()), "--before", SEG9, "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("would remove {SEG7}\n")), "{out}");
    assert!(out.contains(&format!("would remove {SEG8}.gz\n")), "{out}");
    assert!(out.contains("would remove 2 files"), "{out}");
    assert!(!out.contains(SEG9), "{out}");
    assert_eq!(names(d.path()), before, "a dry run removes nothing");

    // From a backup_label's start (0/9xxxxx keeps segment 9), as JSON.
    let label = d.path().join("backup_label");
    fs::write(
        &label,
        "START WAL LOCATION: 0/9000A0 (file 000000010000000000000009)\nCHECKPOINT LOCATION: 0/9000D8\n",
    )
    .unwrap();
    let o = walrelay(&[
        "prune",
        "-D",
        s(d.path()),
        "--before-backup",
        s(&label),
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["removed"],
        serde_json::json!([SEG7, format!("{SEG8}.gz")])
    );
    assert_eq!(v["dry_run"], false);
    let left = names(d.path());
    assert!(!left.contains(&SEG7.to_string()));
    assert!(left.contains(&format!("{SEG9}.lz4")));
    assert!(
        left.contains(&"00000002.history".to_string()),
        "histories stay"
    );

    // By LSN; nothing older is left.
    let o = walrelay(&["prune", "-D", s(d.path()), "--before-lsn", "0/A00000"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("removed {SEG9}.lz4")),
        "{}",
        stdout(&o)
    );
    let o = walrelay(&["prune", "-D", s(d.path()), "--before-lsn", "0/A00000"]);
    assert!(
        stdout(&o).starts_with("nothing to remove"),
        "{}",
        stdout(&o)
    );

    // The rest still verifies (A and the partial B).
    let o = walrelay(&["verify", "-D", s(d.path())]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn prune_refuses_age_alone_and_bad_input() {
    let d = good_archive();
    let before = names(d.path());
    let o = walrelay(&["prune", "-D", s(d.path()), "--older-than", "7d"]);
    assert_eq!(code(&o), 2, "a usage error");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // Files are new: with --force nothing is old enough.
    let o = walrelay(&["prune", "-D", s(d.path()), "--older-than", "7d", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("nothing to remove"),
        "{}",
        stdout(&o)
    );

    let dir = s(d.path());
    for (args, status, needle) in [
        // Usage errors exit 2, a missing archive directory (local) 5 — README, "Exit codes".
        (vec!["prune", "-D", dir], 2, "--before"),
        (vec!["prune", "-D", dir, "--before", "junk"], 2, "junk"),
        (
            vec!["prune", "-D", dir, "--before", "00000002.history"],
            2,
            "history",
        ),
        (
            vec!["prune", "-D", "/no/such/dir", "--before", SEG9],
            5,
            "/no/such/dir",
        ),
        (
            vec!["prune", "-D", dir, "--before-backup", "/no/backup_manifest"],
            2,
            "not found",
        ),
        (vec!["prune", "-D", dir, "--before-lsn", "x/y"], 2, "x/y"),
        (
            vec!["prune", "-D", dir, "--before", SEG9, "--older-than", "7"],
            2,
            "unit",
        ),
        (
            vec![
                "prune",
                "-D",
                dir,
                "--before",
                SEG9,
                "--older-than",
                "7 fortnights",
            ],
            2,
            "fortnights",
        ),
        (
            vec!["prune", "-D", dir, "--before", SEG9, "--before-lsn", "0/1"],
            2,
            "cannot be used",
        ),
    ] {
        let o = walrelay(&args);
        assert_eq!(code(&o), status, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(names(d.path()), before, "nothing removed by refused runs");

    // A server's own pg_wal (archive_status/ inside) and a data directory are not archives: the
    // server removes its WAL itself.
    fs::create_dir(d.path().join("archive_status")).unwrap();
    let o = walrelay(&["prune", "-D", dir, "--before", SEG9]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("server's pg_wal"), "{}", stderr(&o));
    let pgdata = tempfile::tempdir().unwrap();
    fs::write(pgdata.path().join("PG_VERSION"), "15\n").unwrap();
    fs::create_dir(pgdata.path().join("global")).unwrap();
    let wal = pgdata.path().join("pg_wal");
    fs::create_dir(&wal).unwrap();
    for dir in [pgdata.path(), wal.as_path()] {
        let o = walrelay(&["prune", "-D", s(dir), "--before", SEG9]);
        assert_eq!(code(&o), 5, "{}", stderr(&o));
        assert!(
            stderr(&o).contains("removes files of walrelay archives only"),
            "{}",
            stderr(&o)
        );
    }
    let mut left = names(d.path());
    left.retain(|n| n != "archive_status");
    assert_eq!(left, before, "nothing removed from a server's pg_wal");
}

// ------------------------------------------------------------- archives written by real tools

fn new_dir(c: &Cluster, name: &str) -> PathBuf {
    let p = c.scratch_path(name);
    fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn verify_passes_archives_of_walrelay_receive_and_pg_receivewal() {
    let primary = Cluster::builder()
        .name("archive-verify")
        .wal_segsize_mb(1)
        .start();
    let tools = ClientTools::debian().unwrap();
    // Slots first, so every tool streams the whole workload.
    let kinds: [(&str, &[&str]); 4] = [
        ("plain", &[]),
        ("gzip", &["--compress=gzip"]),
        ("lz4", &["--compress=lz4"]),
        ("walrelay", &[]),
    ];
    for (kind, _) in kinds {
        primary.psql(&format!(
            "SELECT pg_create_physical_replication_slot('s_{kind}', true)"
        ));
    }
    primary.psql("CREATE TABLE t (i int, v text)");
    primary.psql("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 3000) g");
    primary.switch_wal();
    // A record spanning several segments, and full-page images after a checkpoint.
    primary.psql("SELECT pg_logical_emit_message(false, 'big', repeat('y', 2500000))");
    primary.psql("CHECKPOINT");
    primary.psql("UPDATE t SET v = v || 'z' WHERE i % 7 = 0");
    primary.switch_wal();
    primary.psql("INSERT INTO t VALUES (0, 'last')");
    let end: Lsn = primary.current_wal_lsn();

    let mut dirs = Vec::new();
    for (kind, extra) in kinds {
        let dir = new_dir(&primary, kind);
        let out = if kind == "walrelay" {
            walrelay(&[
                "receive",
                "-d",
                &primary.replication_conninfo(),
                "-D",
                s(&dir),
                "-S",
                "s_walrelay",
                "--compress",
                "zstd",
                "-E",
                &end.to_string(),
                "-n",
            ])
        } else {
            Command::new(tools.pg_receivewal())
                .args(["-d", &primary.replication_conninfo(), "-D", s(&dir)])
                .args(["-S", &format!("s_{kind}"), "-n", "-E", &end.to_string()])
                .args(extra)
                .env("PGPASSFILE", "/dev/null")
                .output()
                .unwrap()
        };
        assert!(
            out.status.success(),
            "{kind}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        dirs.push((kind, dir));
    }
    poll::wait_until(
        "archives",
        || dirs.iter().all(|(_, d)| names(d).len() >= 4),
        || {
            format!(
                "{:?}",
                dirs.iter().map(|(_, d)| names(d)).collect::<Vec<_>>()
            )
        },
    );

    for (kind, dir) in &dirs {
        let o = walrelay(&["verify", "-D", s(dir), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{kind}: {e}: {}{}", stdout(&o), stderr(&o)));
        assert_eq!(code(&o), 0, "{kind}: {}", stdout(&o));
        assert_eq!(v["ok"], true, "{kind}");
        assert_eq!(
            v["wal_segment_size"], MB,
            "{kind}: inferred from the headers"
        );
        let files = v["files_read"].as_u64().unwrap();
        assert!(files >= 4, "{kind}: {files} files");
        let listing = names(dir);
        match *kind {
            "gzip" => assert!(listing.iter().any(|n| n.ends_with(".gz")), "{listing:?}"),
            "lz4" => assert!(listing.iter().any(|n| n.ends_with(".lz4")), "{listing:?}"),
            "walrelay" => {
                assert!(listing.iter().any(|n| n.ends_with(".zst")), "{listing:?}");
                assert!(
                    v["checksums_matched"].as_u64().unwrap() >= 3,
                    "walrelay.sha256 checked: {}",
                    stdout(&o)
                );
            }
            _ => {}
        }
    }

    // Damage one walrelay segment on disk: its recorded SHA-256 and its zstd checksum both say so.
    let (_, wr) = dirs.iter().find(|(k, _)| *k == "walrelay").unwrap();
    let zst = names(wr).into_iter().find(|n| n.ends_with(".zst")).unwrap();
    let p = wr.join(&zst);
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&p, &bytes).unwrap();
    let o = walrelay(&["verify", "-D", s(wr)]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("  {zst}: ")), "{}", stdout(&o));
}
