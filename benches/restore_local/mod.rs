//! The local part of `benches/restore.rs`: recovery of ≥ 1 GB of WAL from a local archive
//! directory — `cp ARCHIVE/%f %p` against `walrelay restore %f %p -D ARCHIVE` on a plain archive
//! and on a zstd archive of the same WAL.
//!
//! One throwaway cluster (16 MB segments, `max_wal_size = 8GB`, `checkpoint_timeout = 1h`). A base
//! backup (`pg_basebackup -X fetch`) is taken first; then `pgbench -i` (scale 80 by default,
//! `WALRELAY_BENCH_SCALE`) and `pgbench -c 2 -T 10` runs (`synchronous_commit = off`) until the WAL written since the backup is
//! at least `WALRELAY_BENCH_WAL_MB` (1100 by default), then `pg_switch_wal()`. Two receivers
//! archive it at the same time from their own slots: `walrelay receive -D plain` and
//! `walrelay receive -D zstd --compress zstd`.
//!
//! Every round recovers a fresh copy of the backup (`recovery.signal`, no target: to the end of the
//! archive, where the restore_command reports the next segment missing) once with each
//! restore_command, rotating the order from round to round:
//!
//! * `cp PLAIN/%f %p`;
//! * `walrelay restore %f %p -D PLAIN`;
//! * `walrelay restore %f %p -D ZSTD`.
//!
//! Each restore_command runs under GNU time (`/usr/bin/time -a -o FILE`, when installed; the same
//! wrapper for all three, `WALRELAY_BENCH_RESTORE_TIME=0` leaves it out), which gives the peak RSS
//! of every invocation (the largest is reported). The CPU of all invocations is the startup
//! process's `cutime`/`cstime` (its waited-for children, `/proc/PID/stat`, read until it exits):
//! exact sums, where GNU time's per-call figures are rounded to 10 ms. It includes the shell
//! PostgreSQL runs the command with and the GNU time wrapper, the same for every configuration.
//!
//! `WALRELAY_BENCH_ARCHIVE_CACHE=cold` drops the archive files from the page cache before each
//! recovery (see [`evict`]), so that they are read from the disk; `warm` (the default) leaves them
//! where the receivers left them. `WALRELAY_BENCH_COMPARE=LABEL=PATH,…` adds other walrelay builds
//! (plain and zstd lines each) to the same rounds.
//!
//! Timed: the server's own "redo done at … elapsed: N s" (the redo loop, which waits for every
//! restore_command; this is the figure reported) and, beside it, the wall time from `pg_ctl start`
//! to the moment that line is in the log (start-up and the first segment included).
//!
//! Oracle: every recovery must end its redo at the same LSN, after the last record written before
//! `pg_switch_wal()` and before the switch's end, and the recovered cluster must have the
//! primary's `sum(bbalance)` of `pgbench_branches` and `count(*)` of `pgbench_history`; a tool that
//! restores the wrong thing (or too little) fails the benchmark.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{self, load_average, median, tool_command, Table};
use crate::recovery;
use walrelay_testkit::{Cluster, PgBench};

/// pgbench scale of `pgbench -i`.
const DEFAULT_SCALE: u64 = 80;
/// WAL to write after the base backup, MB (10^6 bytes).
const DEFAULT_WAL_MB: u64 = 1100;

/// One restore_command configuration.
struct Variant {
    label: &'static str,
    /// The command, without the time wrapper.
    command: String,
}

/// One recovery.
struct Run {
    /// "redo done … elapsed".
    redo_secs: f64,
    /// From `pg_ctl start` to the "redo done" line.
    wall_secs: f64,
    /// Summed user / system seconds of all restore_command invocations, their largest RSS (KiB),
    /// and how many there were.
    user: f64,
    sys: f64,
    max_rss_kib: u64,
    invocations: usize,
    redo_done_lsn: u64,
}

pub fn run(rounds: usize) {
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE);
    let wal_target = common::env_u64("WALRELAY_BENCH_WAL_MB", DEFAULT_WAL_MB) * 1_000_000;
    let timed = std::env::var("WALRELAY_BENCH_RESTORE_TIME").as_deref() != Ok("0")
        && Path::new("/usr/bin/time").is_file();
    let cold = match std::env::var("WALRELAY_BENCH_ARCHIVE_CACHE").as_deref() {
        Ok("cold") => true,
        Ok("warm") | Err(_) => false,
        Ok(other) => panic!("WALRELAY_BENCH_ARCHIVE_CACHE={other:?}: expected warm or cold"),
    };

    let primary = Cluster::builder()
        .name("bench-restore-local")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        // pgbench writes WAL faster (the commits' flushes are not what is measured).
        .conf("synchronous_commit = off")
        .start();
    let work = common::work_dir("restore-local");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod work dir");
    let bin = work.path().join("walrelay");
    fs::copy(common::walrelay_bin(), &bin).expect("copy walrelay");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod walrelay");
    let plain = work.path().join("plain");
    let zstd = work.path().join("zstd");
    let times = work.path().join("times");
    for d in [&plain, &zstd, &times] {
        fs::create_dir_all(d).expect("create directory");
        crate::chown_like(d, primary.data_dir());
    }

    let conninfo = primary.replication_conninfo();
    let mut receivers = Vec::new();
    for (slot, dest, extra) in [
        ("bench_plain", &plain, vec![]),
        ("bench_zstd", &zstd, vec!["--compress", "zstd"]),
    ] {
        primary.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
        let mut cmd = tool_command(&bin);
        cmd.args(["receive", "-d", &conninfo, "-S", slot, "-D"])
            .arg(dest)
            .args(extra);
        let log = work.path().join(format!("{slot}.log"));
        receivers.push(common::MeasuredChild::spawn(slot, cmd, &log));
    }

    let backup = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);
    let start_lsn = primary.current_wal_lsn().0;
    let started = Instant::now();
    primary.pgbench_init(scale as u32);
    // At least one pgbench run, so that the oracle's balances and history are not empty.
    loop {
        primary.pgbench_run(&PgBench::duration(Duration::from_secs(10)).clients(2));
        if primary.current_wal_lsn().0 - start_lsn >= wal_target {
            break;
        }
    }
    let expected_balance = primary.psql("SELECT sum(bbalance) FROM pgbench_branches");
    let expected_history = primary.psql("SELECT count(*) FROM pgbench_history");
    let before_switch = primary.current_wal_lsn().0;
    let end = primary.switch_wal().0;
    let seg_size = walrelay_protocol::WalSegmentSize::default();
    let last = walrelay_protocol::SegmentId::new(
        walrelay_protocol::TimelineId(1),
        seg_size.segno(walrelay_protocol::Lsn(end - 1)),
    )
    .file_name(seg_size);
    println!(
        "wrote {:.0} MB of WAL after the backup in {:.0} s; waiting for both archives to hold {last}",
        (end - start_lsn) as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    walrelay_testkit::poll::wait_until(
        "both archives complete",
        || plain.join(&last).is_file() && zstd.join(format!("{last}.zst")).is_file(),
        || {
            format!(
                "plain: {}, zstd: {}",
                plain.join(&last).is_file(),
                zstd.join(format!("{last}.zst")).is_file()
            )
        },
    );
    for r in receivers {
        r.interrupt();
        // (`wait_with_deadline` counts from the spawn, long ago: SIGINT stops them at once.)
        r.wait();
    }
    let backup_segno = seg_size.segno(walrelay_protocol::Lsn(start_lsn));
    let segments = common::complete_segments(&plain)
        .keys()
        .filter_map(|n| walrelay_protocol::WalFileName::parse(n)?.segment_id(seg_size))
        .filter(|id| id.segno >= backup_segno)
        .count();
    let zstd_bytes = dir_bytes(&zstd, ".zst");
    let plain_bytes = dir_bytes(&plain, "");
    println!(
        "archives: plain {} segments, {:.1} MiB; zstd {:.1} MiB",
        common::complete_segments(&plain).len(),
        plain_bytes as f64 / 1048576.0,
        zstd_bytes as f64 / 1048576.0
    );

    let mut variants = vec![
        Variant {
            label: "`cp PLAIN/%f %p`",
            command: format!("cp {}/%f %p", plain.display()),
        },
        Variant {
            label: "`walrelay restore %f %p -D PLAIN`",
            command: format!("{} restore %f %p -D {}", bin.display(), plain.display()),
        },
        Variant {
            label: "`walrelay restore %f %p -D ZSTD` (zstd archive)",
            command: format!("{} restore %f %p -D {}", bin.display(), zstd.display()),
        },
    ];
    // Other builds as extra lines in the same rounds: WALRELAY_BENCH_COMPARE=LABEL=PATH,…
    if let Ok(list) = std::env::var("WALRELAY_BENCH_COMPARE") {
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let (label, path) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("WALRELAY_BENCH_COMPARE: {item:?} is not LABEL=PATH"));
            let copy = work.path().join(format!("walrelay-{label}"));
            fs::copy(path, &copy).unwrap_or_else(|e| panic!("copy {path}: {e}"));
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
            for (archive, what) in [(&plain, "PLAIN"), (&zstd, "ZSTD")] {
                variants.push(Variant {
                    label: Box::leak(
                        format!("({label}) `walrelay restore %f %p -D {what}`").into_boxed_str(),
                    ),
                    command: format!("{} restore %f %p -D {}", copy.display(), archive.display()),
                });
            }
        }
    }
    let mut runs: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    let mut loads = Vec::new();
    for round in 0..rounds {
        let n = variants.len();
        let order: Vec<usize> = (0..n).map(|k| (k + round) % n).collect();
        for i in order {
            let time_file = times.join(format!("r{round}-v{i}.time"));
            let command = if timed {
                format!(
                    "/usr/bin/time -a -o {} -f \"%%e %%U %%S %%M\" {}",
                    time_file.display(),
                    variants[i].command
                )
            } else {
                variants[i].command.clone()
            };
            if cold {
                evict(&plain);
                evict(&zstd);
            }
            let run = recover(
                &primary,
                &backup,
                &command,
                &time_file,
                &format!("local-{round}-{i}"),
                (&expected_balance, &expected_history),
            );
            println!(
                "round {round}: {}: redo {:.2} s, start to redo done {:.2} s, restore_command user {:.2} s sys {:.2} s max RSS {:.1} MiB ({} calls), redo done at {:X}/{:X}",
                variants[i].label,
                run.redo_secs,
                run.wall_secs,
                run.user,
                run.sys,
                run.max_rss_kib as f64 / 1024.0,
                run.invocations,
                run.redo_done_lsn >> 32,
                run.redo_done_lsn & 0xffff_ffff
            );
            runs[i].push(run);
        }
        loads.push(load_average());
    }

    // The oracle: the same end for everyone, at the end of what was written.
    let lsn = runs[0][0].redo_done_lsn;
    for (i, v) in runs.iter().enumerate() {
        for r in v {
            assert_eq!(
                r.redo_done_lsn, lsn,
                "{}: redo ended at a different LSN than the first cp recovery",
                variants[i].label
            );
        }
    }
    assert!(
        lsn >= before_switch && lsn < end,
        "redo ended at {lsn:X}, not at the end of the archive ({before_switch:X}..{end:X})"
    );

    let mut table = Table::new(&[
        "restore_command",
        "redo median s",
        "redo worst s",
        "vs cp (median / worst)",
        "start → redo done median / worst s",
        "restore_command user / sys s (median of sums)",
        "restore_command peak RSS MiB",
        "redo rounds s",
    ]);
    let base = &runs[0];
    let base_med = median(&redo(base));
    let base_worst = worst(&redo(base));
    for (i, v) in variants.iter().enumerate() {
        let r = &runs[i];
        let (m, w) = (median(&redo(r)), worst(&redo(r)));
        let walls: Vec<f64> = r.iter().map(|x| x.wall_secs).collect();
        let cpu = if timed {
            format!(
                "{:.2} / {:.2}",
                median(&r.iter().map(|x| x.user).collect::<Vec<_>>()),
                median(&r.iter().map(|x| x.sys).collect::<Vec<_>>())
            )
        } else {
            "n/a".into()
        };
        let rss = if timed {
            format!(
                "{:.1}",
                r.iter().map(|x| x.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0
            )
        } else {
            "n/a".into()
        };
        table.row(vec![
            v.label.to_string(),
            format!("{m:.2}"),
            format!("{w:.2}"),
            format!("{:.3} / {:.3}", m / base_med, w / base_worst),
            format!("{:.2} / {:.2}", median(&walls), worst(&walls)),
            cpu,
            rss,
            r.iter()
                .map(|x| format!("{:.2}", x.redo_secs))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    println!(
        "\nRecovery from a local archive: {segments} segments of 16 MiB after the backup ({:.0} MB of WAL, pgbench -i -s {scale} and pgbench -c 2), plain archive {:.1} MiB, zstd archive {:.1} MiB; redo ended at {:X}/{:X} in every run; {rounds} rounds; restore_command {} GNU time; archive files {}; load after each round: {}\n{}\n",
        (end - start_lsn) as f64 / 1e6,
        plain_bytes as f64 / 1048576.0,
        zstd_bytes as f64 / 1048576.0,
        lsn >> 32,
        lsn & 0xffff_ffff,
        if timed { "under" } else { "not under" },
        if cold { "cold (evicted before each recovery)" } else { "warm (in the page cache)" },
        loads.join(" | "),
        common::machine_description(work.path())
    );
    println!("{}", table.render());
}

/// The segment number of a 16 MiB segment's file name.
fn redo(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.redo_secs).collect()
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// Drops the page cache of every file in `dir` (`dd iflag=nocache count=0`, which is
/// `posix_fadvise(POSIX_FADV_DONTNEED)` on the whole file; clean pages only, which the receivers'
/// fsynced files are): the archive is then read from the disk, as in a recovery from an archive
/// older than the page cache. Only these files are dropped, nobody else's.
fn evict(dir: &Path) {
    for e in fs::read_dir(dir).expect("list archive").flatten() {
        let _ = std::process::Command::new("dd")
            .arg(format!("if={}", e.path().display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status();
    }
}

/// Bytes of the files in `dir` whose names end with `suffix` and are segment names otherwise.
fn dir_bytes(dir: &Path, suffix: &str) -> u64 {
    fs::read_dir(dir)
        .expect("list archive")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(suffix)
                .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// The startup process of the server on `data` (the postmaster's child named "postgres: startup").
fn startup_pid(data: &Path) -> Option<u32> {
    let pm = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pm: u32 = pm.lines().next()?.trim().parse().ok()?;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some((ppid, _, _)) = proc_stat(pid) else {
            continue;
        };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == pm && String::from_utf8_lossy(&cmd).starts_with("postgres: startup") {
            return Some(pid);
        }
    }
    None
}

/// `/proc/PID/stat`: the parent, and the user and system CPU ticks of the waited-for children
/// (`cutime`, `cstime`: every restore_command the startup process ran, shell and wrapper
/// included — the same for every configuration).
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm) ": state is field 3 (index 0 here), ppid 4, cutime 16, cstime 17.
    Some((
        f.get(1)?.parse().ok()?,
        f.get(13)?.parse().ok()?,
        f.get(14)?.parse().ok()?,
    ))
}

fn children_ticks(pid: u32) -> Option<(u64, u64)> {
    proc_stat(pid).map(|(_, u, s)| (u, s))
}

/// From the server log: the LSN and the elapsed seconds of "redo done at X/Y system usage: CPU:
/// user: … s, system: … s, elapsed: N s".
fn redo_done(log: &str) -> Option<(u64, f64)> {
    let line = log.lines().find(|l| l.contains("redo done at "))?;
    let rest = &line[line.find("redo done at ")? + "redo done at ".len()..];
    let lsn = rest
        .split_whitespace()
        .next()?
        .parse::<walrelay_protocol::Lsn>()
        .ok()?
        .0;
    let elapsed = rest
        .split("elapsed: ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((lsn, elapsed))
}

/// Recovers a copy of `backup` with `restore_command` to the end of the archive and checks it.
fn recover(
    primary: &Cluster,
    backup: &Path,
    restore_command: &str,
    time_file: &Path,
    name: &str,
    expected: (&str, &str),
) -> Run {
    let data: PathBuf = primary.scratch_path(name);
    recovery::copy_dir(backup, &data);
    File::create(data.join("recovery.signal")).expect("recovery.signal");
    let _ = fs::remove_file(time_file);
    common::settle_disk();
    let started = Instant::now();
    let c = primary
        .standby(&data)
        .name(name)
        .conf(&format!(
            "restore_command = '{}'",
            restore_command.replace('\'', "''")
        ))
        .start();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let startup = startup_pid(&data);
    let mut children_cpu = (0u64, 0u64);
    let (lsn, redo_secs) = loop {
        if let Some(t) = startup.and_then(children_ticks) {
            children_cpu = t;
        }
        let log = fs::read_to_string(c.log_file()).unwrap_or_default();
        if let Some(done) = redo_done(&log) {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no end of redo: {}",
            c.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall_secs = started.elapsed().as_secs_f64();
    // The startup process goes on for the end of recovery (one more restore_command call for
    // the next timeline's history file), then exits: its children's CPU until then.
    while let Some(t) = startup.and_then(children_ticks) {
        children_cpu = t;
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::wait_until_promoted(&c);
    let balance = c.psql("SELECT sum(bbalance) FROM pgbench_branches");
    let history = c.psql("SELECT count(*) FROM pgbench_history");
    assert_eq!(
        (balance.as_str(), history.as_str()),
        expected,
        "{name}: the recovered cluster differs from the primary (sum(bbalance), count(*) of pgbench_history)"
    );
    let (mut max_rss_kib, mut invocations) = (0u64, 0usize);
    if let Ok(text) = fs::read_to_string(time_file) {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 {
                continue; // "Command exited with non-zero status 1"
            }
            let Ok(m) = f[3].parse::<u64>() else {
                continue;
            };
            max_rss_kib = max_rss_kib.max(m);
            invocations += 1;
        }
    }
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let (user, sys) = (children_cpu.0 as f64 / tick, children_cpu.1 as f64 / tick);
    drop(c);
    common::remove_tree(&data);
    Run {
        redo_secs,
        wall_secs,
        user,
        sys,
        max_rss_kib,
        invocations,
        redo_done_lsn: lsn,
    }
}
