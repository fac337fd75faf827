//! Point-in-time recovery end to end, against real PostgreSQL 15: `walrelay receive` archives a
//! primary's WAL under pgbench load, the primary is lost, and a new cluster is recovered from a
//! base backup with `restore_command = 'walrelay restore %f %p -D ARCHIVE'`.
//!
//! * [`recovers_to_a_restore_point_from_each_compression`]: one primary, four archives (none, gzip,
//!   lz4, zstd) fed by four receivers on four slots; a marker table gets rows before and after
//!   `pg_create_restore_point('before_x')`; each archive passes `walrelay verify`, and a recovery
//!   with `recovery_target_name = 'before_x'` from each holds exactly the rows before the point.
//! * [`partial_segment_recovers_the_last_transactions`]: the primary dies (immediate stop) with
//!   its last transactions only in the archive's `.partial` segment; recovery with
//!   `restore --partial` has them, recovery without it ends at the last complete segment.
//!
//! The base backups are Debian's `pg_basebackup -X fetch` (walrelay bootstrap
//! `--no-standby-config` makes equivalent ones).

// Test code: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use walrelay_protocol::{Lsn, WalSegmentSize};
use walrelay_testkit::{poll, Cluster, PgBench, StopMode};

mod support;
use support::recovery::{archive_dir, recover, walrelay_for_postgres};

const MB: u64 = 1024 * 1024;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `walrelay receive`; killed on drop.
struct Receiver {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Receiver {
    fn start(primary: &Cluster, dir: &Path, slot: &str, compress: &str) -> Receiver {
        primary.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
        let log = primary.scratch_path(&format!("receive-{slot}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["receive", "-d", &primary.replication_conninfo()])
            .args(["-D", s(dir), "-S", slot, "--compress", compress])
            .args(["--synchronous", "-s", "1"])
            .env_remove("WALRELAY_LOG")
            .env("PGPASSFILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Receiver {
            child,
            log,
            name: slot.to_string(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a clean stop: flush, keep the .partial) and wait for the exit.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + poll::timeout();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "receive {} exited with {status}: {}",
                    self.name,
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "receive {} did not stop: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- walrelay receive {} ---\n{}", self.name, self.log());
        }
    }
}

/// Whether the archive holds segment `name` complete, in any format.
fn has_complete(dir: &Path, name: &str) -> bool {
    ["", ".gz", ".lz4", ".zst"]
        .iter()
        .any(|suffix| dir.join(format!("{name}{suffix}")).is_file())
}

fn segment_name(lsn: Lsn) -> String {
    walrelay_protocol::SegmentId::new(walrelay_protocol::TimelineId(1), seg().segno(lsn))
        .file_name(seg())
}

/// The slot's `restart_lsn`: how far the receiver confirmed WAL durable.
fn slot_restart_lsn(primary: &Cluster, slot: &str) -> Option<Lsn> {
    let v = primary.psql(&format!(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    v.trim().parse().ok()
}

/// The marker table's rows, as `phase:count` sorted.
fn markers(c: &Cluster) -> String {
    c.psql("SELECT string_agg(phase || ':' || n, ' ' ORDER BY phase) FROM (SELECT phase, count(*) AS n FROM marker GROUP BY phase) x")
}

#[test]
fn recovers_to_a_restore_point_from_each_compression() {
    let mut primary = Cluster::builder().name("pitr").wal_segsize_mb(1).start();
    let bin = walrelay_for_postgres(&primary);
    primary.pgbench_init(1);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY, phase text NOT NULL)");

    let compressions = ["none", "gzip", "lz4", "zstd"];
    let archives: Vec<PathBuf> = compressions
        .iter()
        .map(|c| archive_dir(&primary, &format!("archive-{c}")))
        .collect();
    let mut receivers: Vec<Receiver> = compressions
        .iter()
        .zip(&archives)
        .map(|(c, dir)| Receiver::start(&primary, dir, &format!("pitr_{c}"), c))
        .collect();

    let backup = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);

    // Rows before the restore point while pgbench writes, then the point, then more rows.
    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(3))
            .clients(2)
            .rate(200),
    );
    for i in 1..=20 {
        primary.psql(&format!("INSERT INTO marker VALUES ({i}, 'before')"));
    }
    primary.psql("SELECT pg_create_restore_point('before_x')");
    for i in 21..=40 {
        primary.psql(&format!("INSERT INTO marker VALUES ({i}, 'after')"));
    }
    load.wait().unwrap();
    let switched = primary.switch_wal();
    let last = segment_name(Lsn(switched.0 - 1));
    for (dir, r) in archives.iter().zip(&receivers) {
        poll::wait_until(
            &format!("{last} archived by {}", r.name),
            || has_complete(dir, &last),
            || r.log(),
        );
    }
    primary.stop(StopMode::Fast);
    for r in &mut receivers {
        r.stop();
    }

    for (c, dir) in compressions.iter().zip(&archives) {
        // The archive is whole, and its WAL checks out record by record.
        let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["verify", "-D", s(dir)])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "verify {c}: {report}");
        if *c != "none" {
            let suffix = match *c {
                "gzip" => ".gz",
                "lz4" => ".lz4",
                _ => ".zst",
            };
            let listing: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                listing.iter().any(|n| n.ends_with(suffix)),
                "{c}: {listing:?}"
            );
        }

        let restore = format!("{} restore %f %p -D {}", s(&bin), s(dir));
        let recovered = recover(
            &primary,
            &backup,
            &format!("pitr-{c}"),
            &restore,
            &[
                "recovery_target_name = 'before_x'",
                "recovery_target_action = 'promote'",
            ],
        );
        assert_eq!(
            markers(&recovered),
            "before:20",
            "{c}: exactly the rows committed before the restore point"
        );
        assert!(
            recovered
                .log_tail(200)
                .contains("recovery stopping at restore point \"before_x\""),
            "{c}: {}",
            recovered.log_tail(40)
        );
        assert!(
            recovered.log_tail(200).contains("restored log file"),
            "{c}: WAL came from the archive"
        );
    }

    // Bit rot (four bytes inverted) in a plain segment keeps its size: only the SHA-256 receive recorded can tell, and
    // restore must exit 200 (recovery stops) instead of handing PostgreSQL WAL that would end
    // recovery early at the damaged record and promote.
    let plain = &archives[0];
    let seg_path = plain.join(&last);
    let mut bytes = fs::read(&seg_path).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0xff;
    }
    fs::write(&seg_path, &bytes).unwrap();
    let dest = primary.scratch_path("rotten-RECOVERYXLOG");
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["restore", &last, s(&dest), "-D", s(plain)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(walrelay_archive::RESTORE_EXIT_CORRUPT),
        "{err}"
    );
    assert!(
        err.contains(&last) && err.contains("walrelay.sha256"),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn partial_segment_recovers_the_last_transactions() {
    let mut primary = Cluster::builder()
        .name("pitr-partial")
        .wal_segsize_mb(1)
        .start();
    let bin = walrelay_for_postgres(&primary);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY, phase text NOT NULL)");
    let dir = archive_dir(&primary, "archive");
    let mut receiver = Receiver::start(&primary, &dir, "pitr_partial", "gzip");
    let backup = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);

    for i in 1..=10 {
        primary.psql(&format!("INSERT INTO marker VALUES ({i}, 'complete')"));
    }
    let switched = primary.switch_wal();
    // The last transactions: in the segment being received, only ever a .partial in the archive.
    for i in 11..=15 {
        primary.psql(&format!("INSERT INTO marker VALUES ({i}, 'last')"));
    }
    let end = primary.current_wal_lsn();
    poll::wait_until(
        "receive to confirm the last commit",
        || slot_restart_lsn(&primary, "pitr_partial").is_some_and(|l| l >= end),
        || {
            format!(
                "slot at {:?}, end {end}",
                slot_restart_lsn(&primary, "pitr_partial")
            )
        },
    );
    primary.stop(StopMode::Immediate);
    receiver.stop();
    let partial = format!("{}.partial", segment_name(end));
    assert!(dir.join(&partial).is_file(), "{partial} in the archive");
    assert!(has_complete(&dir, &segment_name(Lsn(switched.0 - 1))));

    // Without --partial, recovery ends with the last complete segment.
    let restore = format!("{} restore %f %p -D {}", s(&bin), s(&dir));
    {
        let without = recover(&primary, &backup, "without-partial", &restore, &[]);
        assert_eq!(markers(&without), "complete:10");
    }
    // With it, the last transactions are back.
    let restore = format!("{} restore %f %p -D {} --partial", s(&bin), s(&dir));
    let with = recover(&primary, &backup, "with-partial", &restore, &[]);
    assert_eq!(markers(&with), "complete:10 last:5");
}
