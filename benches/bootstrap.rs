//! Benchmark: seeding a standby — `walrelay bootstrap` against `pg_basebackup -X stream`.
//!
//! One throwaway PostgreSQL cluster holds a pgbench data set (scale 70 ≈ 1.1 GB by default;
//! `WALRELAY_BENCH_SCALE` shrinks it for a quick run). Each round runs both tools on it, one after
//! the other, alternating which goes first, into fresh directories on the same file system:
//!
//! * `walrelay bootstrap -d CONNINFO -c fast -D X` — base backup untarred as it arrives, WAL streamed
//!   in parallel into `X/pg_wal`, the backup manifest (CRC-32C) checked against checksums computed
//!   while writing, standby configuration written, everything fsynced;
//! * `pg_basebackup -d CONNINFO -X stream -c fast -D Y` — base backup and streamed WAL, manifest
//!   (CRC-32C) written but not checked, everything fsynced;
//! * and, since walrelay's run includes the check, `pg_verifybackup Y` after pg_basebackup, reported
//!   as a third line (pg_basebackup + pg_verifybackup);
//! * last in every round, a diagnostic `walrelay bootstrap … --no-verify` (no manifest check), to
//!   show what the check costs.
//!
//! Before every run all file systems are synced, so that one run's writeback does not land on the
//! next. The cluster's files stay in the page cache (nobody drops caches on a shared machine), for
//! both tools alike. walrelay's first result is checked by pg_verifybackup (untimed), so the benchmark
//! never measures a tool that produced a broken copy.
//!
//! `WALRELAY_BENCH_COMPARE=LABEL=PATH,…` adds other walrelay builds (say, the one before a change)
//! as extra lines, run in the same rounds, in the alternating order, on the same data: an A/B
//! comparison under the same load.
//!
//! Run with `cargo bench --bench bootstrap`; see `benches/common/mod.rs` for the settings and
//! `docs/benchmarks.md` for results.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    fmt_opt, load_average, mib, remove_tree, run_measured, settle_disk, tool_command, tree_size,
    Series, Table,
};
use walrelay_testkit::{Cluster, VerifyBackupOptions};

/// pgbench scale of the data set: 70 gives about 1.1 GB.
const DEFAULT_SCALE: u64 = 70;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Walrelay,
    PgBasebackup,
    /// Diagnostic: walrelay without the manifest check, to show what the check costs.
    WalrelayNoVerify,
    /// Another walrelay build from `WALRELAY_BENCH_COMPARE` (index into the list).
    Other(usize),
}

impl Tool {
    fn slug(self) -> String {
        match self {
            Tool::Walrelay => "walrelay".into(),
            Tool::PgBasebackup => "pg_basebackup".into(),
            Tool::WalrelayNoVerify => "walrelay-no-verify".into(),
            Tool::Other(i) => format!("other-{i}"),
        }
    }
}

/// `WALRELAY_BENCH_COMPARE`: `LABEL=PATH` pairs separated by commas.
fn other_builds() -> Vec<(String, PathBuf)> {
    let Ok(list) = std::env::var("WALRELAY_BENCH_COMPARE") else {
        return Vec::new();
    };
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| match item.split_once('=') {
            Some((label, path)) if Path::new(path.trim()).is_file() => {
                (label.trim().to_string(), PathBuf::from(path.trim()))
            }
            _ => panic!(
                "WALRELAY_BENCH_COMPARE item {item:?}: expected LABEL=PATH of a walrelay binary"
            ),
        })
        .collect()
}

fn walrelay_command(conninfo: &str, target: &Path, verify: bool) -> Command {
    walrelay_command_of(&common::walrelay_bin(), conninfo, target, verify)
}

fn walrelay_command_of(bin: &Path, conninfo: &str, target: &Path, verify: bool) -> Command {
    let mut cmd = tool_command(bin);
    cmd.arg("bootstrap")
        .arg("-d")
        .arg(conninfo)
        .args(["-c", "fast", "-D"])
        .arg(target);
    if !verify {
        cmd.arg("--no-verify");
    }
    cmd
}

fn pg_basebackup_command(cluster: &Cluster, conninfo: &str, target: &Path) -> Command {
    let mut cmd = tool_command(&cluster.install().tools().pg_basebackup());
    cmd.arg("-d")
        .arg(conninfo)
        .args(["-X", "stream", "-c", "fast", "-D"])
        .arg(target);
    cmd
}

fn pg_verifybackup_command(cluster: &Cluster, target: &Path) -> Command {
    let mut cmd = tool_command(&cluster.install().tools().pg_verifybackup());
    cmd.arg(target);
    cmd
}

fn main() {
    if !common::invoked_by_cargo_bench("bootstrap") {
        return;
    }
    let rounds = common::rounds();
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE) as u32;
    let work = common::work_dir("bootstrap");
    println!("# walrelay bootstrap vs pg_basebackup -X stream");
    println!("machine: {}", common::machine_description(work.path()));

    // Checkpoints during a run would be noise: the data set is written before the first round, and
    // each backup starts with its own (fast) checkpoint.
    let cluster = Cluster::builder()
        .name("bench-bootstrap")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    println!(
        "tools: {} | {} | {}",
        common::tool_version(&common::walrelay_bin()),
        common::tool_version(&cluster.install().tools().pg_basebackup()),
        cluster.psql("SHOW server_version"),
    );
    let prepared = Instant::now();
    cluster.pgbench_init(scale);
    cluster.psql("CHECKPOINT");
    let db_bytes: u64 = cluster
        .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")
        .trim()
        .parse()
        .unwrap_or(0);
    println!(
        "data: pgbench scale {scale}, databases {} (prepared in {:.0} s); {rounds} rounds",
        mib(db_bytes),
        prepared.elapsed().as_secs_f64()
    );
    let conninfo = cluster.replication_conninfo();

    let others = other_builds();
    for (label, path) in &others {
        println!("compared: {label} = {}", path.display());
    }
    let mut walrelay = Series::default();
    let mut no_verify = Series::default();
    let mut basebackup = Series::default();
    let mut verify = Series::default();
    let mut other_series = vec![Series::default(); others.len()];
    let mut output_bytes = None;
    for round in 0..rounds {
        // walrelay, the other builds and pg_basebackup take turns in an order that reverses from
        // round to round; the diagnostic run comes last.
        let mut order = vec![Tool::Walrelay];
        order.extend((0..others.len()).map(Tool::Other));
        order.push(Tool::PgBasebackup);
        if round % 2 == 1 {
            order.reverse();
        }
        order.push(Tool::WalrelayNoVerify);
        let mut line = format!("round {}:", round + 1);
        for tool in order {
            let target = work.path().join(format!("{}-{round}", tool.slug()));
            let log = work.path().join(format!("{}-{round}.log", tool.slug()));
            settle_disk();
            match tool {
                Tool::Walrelay => {
                    let m = run_measured(
                        "walrelay bootstrap",
                        walrelay_command(&conninfo, &target, true),
                        &log,
                    );
                    line.push_str(&format!(
                        " walrelay {:.2}s (CPU {}s)",
                        m.secs(),
                        fmt_opt(m.cpu_secs(), 2)
                    ));
                    walrelay.push(m);
                    if round == 0 {
                        // The oracle: what walrelay wrote is a valid backup with the WAL it needs.
                        walrelay_testkit::pg_verifybackup(&target, &VerifyBackupOptions::default())
                            .unwrap_or_else(|e| {
                                panic!("pg_verifybackup rejects walrelay's backup: {e}")
                            });
                        output_bytes = Some(tree_size(&target));
                    }
                }
                Tool::Other(i) => {
                    let (label, bin) = &others[i];
                    let m = run_measured(
                        label,
                        walrelay_command_of(bin, &conninfo, &target, true),
                        &log,
                    );
                    line.push_str(&format!(
                        " {label} {:.2}s (CPU {}s)",
                        m.secs(),
                        fmt_opt(m.cpu_secs(), 2)
                    ));
                    other_series[i].push(m);
                }
                Tool::WalrelayNoVerify => {
                    let m = run_measured(
                        "walrelay bootstrap --no-verify",
                        walrelay_command(&conninfo, &target, false),
                        &log,
                    );
                    line.push_str(&format!(
                        " [--no-verify {:.2}s (CPU {}s)]",
                        m.secs(),
                        fmt_opt(m.cpu_secs(), 2)
                    ));
                    no_verify.push(m);
                }
                Tool::PgBasebackup => {
                    let m = run_measured(
                        "pg_basebackup",
                        pg_basebackup_command(&cluster, &conninfo, &target),
                        &log,
                    );
                    line.push_str(&format!(
                        " pg_basebackup {:.2}s (CPU {}s)",
                        m.secs(),
                        fmt_opt(m.cpu_secs(), 2)
                    ));
                    basebackup.push(m);
                    let vlog = work.path().join(format!("pg_verifybackup-{round}.log"));
                    let v = run_measured(
                        "pg_verifybackup",
                        pg_verifybackup_command(&cluster, &target),
                        &vlog,
                    );
                    line.push_str(&format!(" (+ pg_verifybackup {:.2}s)", v.secs()));
                    verify.push(v);
                }
            }
            remove_tree(&target);
        }
        println!("{line}; load {}", load_average());
    }

    // pg_basebackup followed by pg_verifybackup, round by round.
    let mut both = Series::default();
    for (b, v) in basebackup.runs.iter().zip(&verify.runs) {
        both.push(common::Measured {
            wall: b.wall + v.wall,
            max_rss_kib: b.max_rss_kib.max(v.max_rss_kib),
            cpu: b
                .cpu
                .zip(v.cpu)
                .map(|((bu, bs), (vu, vs))| (bu + vu, bs + vs)),
        });
    }

    let bytes = output_bytes.unwrap_or(0);
    let base = basebackup.median_secs();
    let mut table = Table::new(&[
        "tool",
        "median s",
        "rounds s",
        "MB/s",
        "time ratio (walrelay / this)",
        "median CPU s",
        "peak RSS MiB",
    ]);
    let wr = walrelay.median_secs();
    let mut lines: Vec<(String, &Series)> = vec![
        ("walrelay bootstrap -c fast".into(), &walrelay),
        ("pg_basebackup -X stream -c fast".into(), &basebackup),
        ("pg_basebackup + pg_verifybackup".into(), &both),
        ("(walrelay bootstrap --no-verify)".into(), &no_verify),
    ];
    for ((label, _), s) in others.iter().zip(&other_series) {
        lines.push((format!("({label}: walrelay bootstrap -c fast)"), s));
    }
    for (name, s) in lines {
        let secs = s.median_secs();
        table.row(vec![
            name,
            format!("{secs:.2}"),
            s.all_secs(),
            format!("{:.0}", bytes as f64 / 1e6 / secs),
            format!("{:.2}", wr / secs),
            fmt_opt(s.median_cpu_secs(), 2),
            fmt_opt(s.peak_rss_mib(), 1),
        ]);
    }
    println!();
    println!(
        "backup size {} (walrelay's first copy, files incl. pg_wal); MB/s = 10^6 bytes / median s",
        mib(bytes)
    );
    println!("{}", table.render());
    println!();
    println!(
        "walrelay / pg_basebackup time ratio: {:.2} (target <= 1.0); walrelay peak RSS {} MiB (target < 64)",
        wr / base,
        fmt_opt(walrelay.peak_rss_mib(), 1)
    );
    println!("load average at the end: {}", load_average());
}
