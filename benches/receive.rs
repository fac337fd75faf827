//! Benchmark: archiving WAL — `walrelay receive` against `pg_receivewal`.
//!
//! One throwaway PostgreSQL cluster; every comparison runs the tools one after the other on it,
//! alternating the order from round to round, into fresh directories on the same file system.
//!
//! **Catch-up of a slot backlog** (`catchup`). A template slot is created, then `pgbench -i` (scale
//! 45 by default, `WALRELAY_BENCH_SCALE`) writes the backlog: about 580 MB of WAL. With
//! `WALRELAY_BENCH_WAL_GB=0.5,2,4` it is run again until each size (GB of WAL) is reached, and each
//! size is measured on its own (every configuration at the first size; pg_receivewal, walrelay and
//! walrelay `--no-verify-wal` at the others). For every run a fresh slot is copied from the template
//! (`pg_copy_physical_replication_slot`), so every run streams exactly the same WAL, from the
//! slot's restart position to a fixed end position:
//!
//! * `walrelay receive -d CONNINFO -D DIR -S SLOT -E ENDPOS --no-loop [options]` — defaults validate
//!   every page header and record CRC before acknowledging and keep SHA-256 checksums of completed
//!   segments; the variants turn those off (`--no-verify-wal`, `--no-checksums`) or compress
//!   completed segments (`--compress gzip|lz4|zstd`);
//! * `pg_receivewal -d CONNINFO -D DIR -S SLOT -E ENDPOS -n [--compress=gzip|lz4]` (PostgreSQL 15's
//!   pg_receivewal has no zstd).
//!
//! In the first round, the complete segments of walrelay's and pg_receivewal's plain archives are
//! compared byte for byte: a benchmark must not time a tool that writes the wrong thing.
//!
//! **Synchronous standby** (`sync`). `synchronous_standby_names` names the receiver, which connects
//! with that `application_name`; once the server lists it as `sync`, `pgbench -N -c N -j 2 -T 20`
//! (simple-update, `WALRELAY_BENCH_PGBENCH_SECS`) runs, so every commit waits for the receiver to
//! fsync and report. `walrelay receive --synchronous` against `pg_receivewal --synchronous`, plus a
//! baseline without a synchronous standby (the commit waits for the server's own fsync only). N
//! takes every value of `WALRELAY_BENCH_SYNC_CLIENTS` (default `4,16`), each with its own rounds
//! and table: TPS median and worst, the ratios, receiver CPU and peak RSS, and walrelay's
//! commit-path latency (p50/p99 of received → durable and received → status update sent) from the
//! `walrelay_receive_commit_path_seconds` histogram on its `--metrics-addr`, scraped before and
//! after pgbench so that only pgbench's transactions count. The three take turns in every position
//! (`sync_order`): six rounds balance them fully.
//!
//! `WALRELAY_BENCH_ONLY=catchup` or `=sync` runs one part. Run with `cargo bench --bench receive`;
//! see `benches/common/mod.rs` for the settings and `docs/benchmarks.md` for results.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    fmt_opt, load_average, median, mib, remove_tree, settle_disk, tool_command, tree_size,
    MeasuredChild, Series, Table,
};
use walrelay_testkit::{Cluster, Lsn, PgBench};

/// pgbench scale of each `pgbench -i` that writes the backlog: 45 writes about 580 MB (10^6 bytes)
/// of WAL.
const DEFAULT_SCALE: u64 = 45;
/// Backlog size when `WALRELAY_BENCH_WAL_GB` is not set: one `pgbench -i -s 45`.
const DEFAULT_BACKLOG_GB: f64 = 0.5;
/// pgbench scale for the synchronous-standby part when the catch-up part did not initialize.
const SYNC_ONLY_SCALE: u32 = 10;
/// `application_name` of the synchronous receiver.
const SYNC_APP: &str = "bench_sync";
/// The slot every catch-up run's slot is copied from.
const TEMPLATE_SLOT: &str = "bench_template";
/// Longest a single tool run may take before the benchmark gives up.
const RUN_LIMIT: Duration = Duration::from_secs(1800);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Program {
    Walrelay,
    PgReceivewal,
}

/// One way of archiving the backlog.
struct CatchupConfig {
    label: &'static str,
    program: Program,
    args: &'static [&'static str],
    /// The pg_receivewal configuration this one is compared with.
    versus: Option<&'static str>,
    /// Measured at every backlog size, not only the first.
    core: bool,
    /// Extra environment (walrelay's diagnostics, e.g. `WALRELAY_EARLY_WRITEBACK=off`).
    env: &'static [(&'static str, &'static str)],
}

const PG_RECEIVEWAL: &str = "pg_receivewal";
const PG_RECEIVEWAL_GZIP: &str = "pg_receivewal --compress=gzip";
const PG_RECEIVEWAL_LZ4: &str = "pg_receivewal --compress=lz4";
const WALRELAY: &str = "walrelay receive";
const WALRELAY_NO_VERIFY: &str = "walrelay receive --no-verify-wal";

const CATCHUP: &[CatchupConfig] = &[
    CatchupConfig {
        label: PG_RECEIVEWAL,
        program: Program::PgReceivewal,
        args: &[],
        versus: None,
        core: true,
        env: &[],
    },
    CatchupConfig {
        label: WALRELAY,
        program: Program::Walrelay,
        args: &[],
        versus: Some(PG_RECEIVEWAL),
        core: true,
        env: &[],
    },
    CatchupConfig {
        label: WALRELAY_NO_VERIFY,
        program: Program::Walrelay,
        args: &["--no-verify-wal"],
        versus: Some(PG_RECEIVEWAL),
        core: true,
        env: &[],
    },
    CatchupConfig {
        label: "walrelay receive, early writeback off",
        program: Program::Walrelay,
        args: &[],
        versus: Some(PG_RECEIVEWAL),
        core: true,
        env: &[("WALRELAY_EARLY_WRITEBACK", "off")],
    },
    CatchupConfig {
        label: "walrelay receive --no-checksums",
        program: Program::Walrelay,
        args: &["--no-checksums"],
        versus: Some(PG_RECEIVEWAL),
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: "walrelay receive --no-verify-wal --no-checksums",
        program: Program::Walrelay,
        args: &["--no-verify-wal", "--no-checksums"],
        versus: Some(PG_RECEIVEWAL),
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: PG_RECEIVEWAL_GZIP,
        program: Program::PgReceivewal,
        args: &["--compress=gzip"],
        versus: None,
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: "walrelay receive --compress gzip",
        program: Program::Walrelay,
        args: &["--compress", "gzip"],
        versus: Some(PG_RECEIVEWAL_GZIP),
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: PG_RECEIVEWAL_LZ4,
        program: Program::PgReceivewal,
        args: &["--compress=lz4"],
        versus: None,
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: "walrelay receive --compress lz4",
        program: Program::Walrelay,
        args: &["--compress", "lz4"],
        versus: Some(PG_RECEIVEWAL_LZ4),
        core: false,
        env: &[],
    },
    CatchupConfig {
        label: "walrelay receive --compress zstd",
        program: Program::Walrelay,
        args: &["--compress", "zstd"],
        versus: Some(PG_RECEIVEWAL),
        core: false,
        env: &[],
    },
];

fn program_path(cluster: &Cluster, p: Program) -> PathBuf {
    match p {
        Program::Walrelay => common::walrelay_bin(),
        Program::PgReceivewal => cluster.install().tools().pg_receivewal(),
    }
}

fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn main() {
    if !common::invoked_by_cargo_bench("receive") {
        return;
    }
    let rounds = common::rounds();
    let work = common::work_dir("receive");
    println!("# walrelay receive vs pg_receivewal");
    println!("machine: {}", common::machine_description(work.path()));
    // No checkpoint may interrupt a timed run; the slots keep the WAL anyway.
    let cluster = Cluster::builder()
        .name("bench-receive")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .max_replication_slots(20)
        .start();
    println!(
        "tools: {} | {} | PostgreSQL {}",
        common::tool_version(&common::walrelay_bin()),
        common::tool_version(&cluster.install().tools().pg_receivewal()),
        cluster.psql("SHOW server_version"),
    );
    let mut initialized = false;
    if common::part_selected("catchup") {
        catchup(&cluster, work.path(), rounds);
        initialized = true;
    }
    if common::part_selected("sync") {
        if !initialized {
            cluster.pgbench_init(SYNC_ONLY_SCALE);
        }
        synchronous_standby(&cluster, work.path(), rounds);
    }
    println!("load average at the end: {}", load_average());
}

// ------------------------------------------------------------------------------------- catch-up

fn catchup_command(
    cluster: &Cluster,
    cfg: &CatchupConfig,
    conninfo: &str,
    dir: &Path,
    slot: &str,
    endpos: Lsn,
) -> Command {
    let mut cmd = tool_command(&program_path(cluster, cfg.program));
    if cfg.program == Program::Walrelay {
        cmd.arg("receive");
    }
    cmd.arg("-d")
        .arg(conninfo)
        .arg("-D")
        .arg(dir)
        .arg("-S")
        .arg(slot)
        .arg("-E")
        .arg(endpos.to_string());
    cmd.arg(match cfg.program {
        Program::Walrelay => "--no-loop",
        Program::PgReceivewal => "-n",
    });
    cmd.args(cfg.args);
    cmd.envs(cfg.env.iter().copied());
    cmd
}

/// `WALRELAY_BENCH_WAL_GB`: backlog sizes in GB (10^9 bytes) of WAL, smallest first.
fn backlog_sizes() -> Vec<f64> {
    let mut sizes =
        common::env_list("WALRELAY_BENCH_WAL_GB", "0.5,2,4").unwrap_or(vec![DEFAULT_BACKLOG_GB]);
    sizes.sort_by(f64::total_cmp);
    sizes
}

/// One backlog: the same WAL from the template slot's restart position to `endpos`.
struct Backlog {
    endpos: Lsn,
    bytes: u64,
}

/// Writes WAL with `pgbench -i -s SCALE` (the tables are dropped and loaded again each time, so the
/// data set stays one scale's worth while the slot keeps every byte) until each size is reached,
/// and returns the end position of each.
fn write_backlogs(cluster: &Cluster, from: Lsn, scale: u32, sizes: &[f64]) -> Vec<Backlog> {
    let mut out = Vec::new();
    for &gb in sizes {
        let want = (gb * 1e9) as u64;
        loop {
            let written = cluster.current_wal_lsn().saturating_sub(from);
            if written >= want && !out.iter().any(|b: &Backlog| b.bytes == written) {
                break;
            }
            cluster.pgbench_init(scale);
        }
        let endpos = cluster.current_wal_lsn();
        out.push(Backlog {
            endpos,
            bytes: endpos.saturating_sub(from),
        });
    }
    // pg_receivewal stops only once it has received WAL *past* the end position
    // (`stop_streaming` in pg_receivewal.c compares with `<`), so some WAL must follow it; otherwise
    // it waits for the server's next running-xacts record, up to 15 s.
    cluster.psql("CREATE TABLE bench_past_endpos AS SELECT 1 AS one");
    out
}

fn catchup(cluster: &Cluster, work: &Path, rounds: usize) {
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE) as u32;
    let sizes = backlog_sizes();
    cluster.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{TEMPLATE_SLOT}', true)"
    ));
    let restart: Lsn = cluster
        .psql(&format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{TEMPLATE_SLOT}'"
        ))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("template slot has no restart_lsn: {e}"));
    let seg = cluster.wal_segment_size() as u32;
    let from = restart.segment_start(seg);
    let prepared = Instant::now();
    let backlogs = write_backlogs(cluster, from, scale, &sizes);
    println!();
    println!("## catch-up of a slot backlog");
    println!(
        "backlogs: {} of WAL from {from} (pgbench -i -s {scale} repeated, written in {:.0} s); {rounds} rounds",
        backlogs
            .iter()
            .map(|b| format!("{} to {}", mib(b.bytes), b.endpos))
            .collect::<Vec<_>>()
            .join(", "),
        prepared.elapsed().as_secs_f64()
    );
    let all_configs = std::env::var("WALRELAY_BENCH_CATCHUP_ALL").as_deref() != Ok("0");
    for (k, backlog) in backlogs.iter().enumerate() {
        // Every configuration at the first size; at the larger ones the comparison the targets are
        // about (validation and checksums on) and the same without them.
        let configs: Vec<&CatchupConfig> = CATCHUP
            .iter()
            .filter(|c| (k == 0 && all_configs) || c.core)
            .collect();
        catchup_backlog(cluster, work, rounds, backlog, &configs, seg, k == 0);
    }
    cluster.psql(&format!(
        "SELECT pg_drop_replication_slot('{TEMPLATE_SLOT}')"
    ));
    cluster.psql("CHECKPOINT");
}

fn catchup_backlog(
    cluster: &Cluster,
    work: &Path,
    rounds: usize,
    backlog: &Backlog,
    configs: &[&CatchupConfig],
    seg: u32,
    compare: bool,
) {
    let endpos = backlog.endpos;
    println!();
    println!("### backlog of {} (to {endpos})", mib(backlog.bytes));
    let conninfo = cluster.replication_conninfo();
    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for round in 0..rounds {
        let mut order: Vec<&CatchupConfig> = configs.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        // Kept until both are done in the first round, for the byte comparison.
        let mut plain_dirs: BTreeMap<&str, PathBuf> = BTreeMap::new();
        let mut line = format!("round {}:", round + 1);
        for (i, cfg) in order.iter().enumerate() {
            let slot = format!("bench_r{round}_{i}");
            cluster.psql(&format!(
                "SELECT pg_copy_physical_replication_slot('{TEMPLATE_SLOT}', '{slot}')"
            ));
            let dir = work.join(format!("catchup-{}-{round}", slug(cfg.label)));
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            let log = work.join(format!("catchup-{}-{round}.log", slug(cfg.label)));
            settle_disk();
            let child = MeasuredChild::spawn(
                cfg.label,
                catchup_command(cluster, cfg, &conninfo, &dir, &slot, endpos),
                &log,
            );
            let m = child.wait_with_deadline(RUN_LIMIT);
            cluster.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
            line.push_str(&format!(" [{} {:.2}s]", cfg.label, m.secs()));
            series.entry(cfg.label).or_default().push(m);
            if round == 0 {
                sizes.insert(cfg.label, tree_size(&dir));
            }
            if compare && round == 0 && (cfg.label == WALRELAY || cfg.label == PG_RECEIVEWAL) {
                plain_dirs.insert(cfg.label, dir);
            } else {
                remove_tree(&dir);
            }
        }
        if let (Some(a), Some(b)) = (plain_dirs.get(WALRELAY), plain_dirs.get(PG_RECEIVEWAL)) {
            compare_archives(a, b, seg);
        }
        for dir in plain_dirs.values() {
            remove_tree(dir);
        }
        println!("{line}; load {}", load_average());
    }
    print_catchup_table(backlog.bytes, configs, &series, &sizes);
}

fn print_catchup_table(
    backlog: u64,
    configs: &[&CatchupConfig],
    series: &BTreeMap<&str, Series>,
    sizes: &BTreeMap<&str, u64>,
) {
    let mut table = Table::new(&[
        "configuration",
        "median / worst s",
        "rounds s",
        "MB/s (median)",
        "throughput ratio median / worst (vs)",
        "user / sys s (median)",
        "peak RSS MiB",
        "archive size",
    ]);
    for cfg in configs {
        let Some(s) = series.get(cfg.label) else {
            continue;
        };
        let secs = s.median_secs();
        let ratio = match cfg.versus.and_then(|v| series.get(v)) {
            Some(theirs) => format!(
                "**{:.2}** / **{:.2}** (vs {})",
                theirs.median_secs() / secs,
                theirs.worst_secs() / s.worst_secs(),
                cfg.versus.unwrap_or_default()
            ),
            None => "—".to_string(),
        };
        table.row(vec![
            cfg.label.to_string(),
            format!("{secs:.2} / {:.2}", s.worst_secs()),
            s.all_secs(),
            format!("{:.0}", backlog as f64 / 1e6 / secs),
            ratio,
            s.median_user_sys()
                .map(|(u, y)| format!("{u:.2} / {y:.2}"))
                .unwrap_or_default(),
            fmt_opt(s.peak_rss_mib(), 1),
            sizes.get(cfg.label).map(|b| mib(*b)).unwrap_or_default(),
        ]);
    }
    println!();
    println!(
        "MB/s = 10^6 bytes of backlog / median s; throughput ratio > 1 means walrelay is faster \
         (median: pg_receivewal's median / walrelay's; worst: slowest run / slowest run)"
    );
    println!("{}", table.render());
    let secs_of = |label: &str| series.get(label).map(Series::median_secs);
    if let (Some(with), Some(without)) = (secs_of(WALRELAY), secs_of(WALRELAY_NO_VERIFY)) {
        println!();
        println!(
            "validation overhead (walrelay receive vs --no-verify-wal, medians): {:+.1}% (target < 10%)",
            (with / without - 1.0) * 100.0
        );
    }
}

/// The complete segments of two plain archives made from the same backlog are the same files.
fn compare_archives(walrelay: &Path, pg_receivewal: &Path, seg: u32) {
    let a = common::complete_segments(walrelay);
    let b = common::complete_segments(pg_receivewal);
    if a.keys().ne(b.keys()) {
        panic!(
            "walrelay and pg_receivewal archived different segments from the same backlog:\n walrelay: {:?}\n pg_receivewal: {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        );
    }
    for (name, len) in &a {
        if *len != u64::from(seg)
            || !common::same_content(&walrelay.join(name), &pg_receivewal.join(name))
        {
            panic!("segment {name} differs between walrelay's and pg_receivewal's archive");
        }
    }
    println!(
        "check: {} complete segments, byte-identical in both archives",
        a.len()
    );
}

// --------------------------------------------------------------------------- synchronous standby

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SyncSetup {
    /// `synchronous_standby_names` empty: commits wait for the server's own fsync only.
    NoStandby,
    Receiver(Program),
}

impl SyncSetup {
    fn label(self) -> &'static str {
        match self {
            SyncSetup::NoStandby => "no synchronous standby (baseline)",
            SyncSetup::Receiver(Program::Walrelay) => "walrelay receive --synchronous",
            SyncSetup::Receiver(Program::PgReceivewal) => "pg_receivewal --synchronous",
        }
    }
}

/// Sets `synchronous_standby_names` and waits until new sessions see it.
fn set_sync_names(cluster: &Cluster, value: &str) {
    cluster.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{value}'"
    ));
    cluster.psql("SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.psql("SHOW synchronous_standby_names").trim() != value {
        if Instant::now() > deadline {
            panic!("synchronous_standby_names did not become {value:?} after a reload");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn receiver_command(
    cluster: &Cluster,
    program: Program,
    conninfo: &str,
    dir: &Path,
    metrics_port: u16,
) -> Command {
    let mut cmd = tool_command(&program_path(cluster, program));
    match program {
        Program::Walrelay => {
            cmd.arg("receive");
        }
        Program::PgReceivewal => {}
    }
    cmd.arg("-d")
        .arg(format!("{conninfo} application_name={SYNC_APP}"))
        .arg("-D")
        .arg(dir)
        .arg("--synchronous");
    match program {
        Program::Walrelay => cmd
            .arg("--no-loop")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}")),
        Program::PgReceivewal => cmd.arg("-n"),
    };
    cmd
}

/// Waits until the server treats the receiver as its synchronous standby.
fn wait_until_sync(cluster: &Cluster, child: &mut MeasuredChild, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = format!(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{SYNC_APP}' AND state = 'streaming'"
    );
    loop {
        if cluster.psql(&query).trim() == "sync" {
            return;
        }
        if !child.is_running() || Instant::now() > deadline {
            panic!(
                "{label} did not become the synchronous standby. Output:\n{}",
                common::tail(&child.log_text(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The order of the setups in round `round`: rotated by one every round and reversed every
/// third, so that over six rounds each setup runs once in every position and after each of the
/// others. (Alternating one order with its reverse kept walrelay in the middle in every round.)
fn sync_order(setups: &[SyncSetup], round: usize) -> Vec<SyncSetup> {
    let mut order = setups.to_vec();
    order.rotate_left(round % setups.len());
    if (round / setups.len()) % 2 == 1 {
        order.reverse();
    }
    order
}

/// `WALRELAY_BENCH_SYNC_CLIENTS`: the pgbench client counts, comma-separated (default `4,16`).
fn sync_clients() -> Vec<u32> {
    common::env_list("WALRELAY_BENCH_SYNC_CLIENTS", "4,16").unwrap_or(vec![4, 16])
}

/// The two stages of `walrelay_receive_commit_path_seconds`, cumulative buckets `(le, count)`.
#[derive(Clone, Debug, Default)]
struct CommitPath {
    durable: Vec<(f64, f64)>,
    acknowledged: Vec<(f64, f64)>,
}

impl CommitPath {
    /// Reads the histogram off walrelay's `/metrics` (text format).
    fn scrape(port: u16) -> CommitPath {
        use std::io::{Read, Write};
        let mut body = String::new();
        let read = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )?;
            s.read_to_string(&mut body)
        });
        if let Err(e) = read {
            panic!("scrape walrelay's /metrics on port {port}: {e}");
        }
        let mut out = CommitPath::default();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("walrelay_receive_commit_path_seconds_bucket{")
            else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let le = labels
                .split("le=\"")
                .nth(1)
                .and_then(|l| l.split('"').next())
                .map(|l| {
                    if l == "+Inf" {
                        f64::INFINITY
                    } else {
                        l.parse().unwrap_or(f64::NAN)
                    }
                })
                .unwrap_or(f64::NAN);
            let value: f64 = value.trim().parse().unwrap_or(f64::NAN);
            if labels.contains("stage=\"durable\"") {
                out.durable.push((le, value));
            } else if labels.contains("stage=\"acknowledged\"") {
                out.acknowledged.push((le, value));
            }
        }
        assert!(
            !out.durable.is_empty(),
            "walrelay's /metrics has no walrelay_receive_commit_path_seconds:\n{body}"
        );
        out
    }

    /// What was recorded after `before`.
    fn since(&self, before: &CommitPath) -> CommitPath {
        let diff = |a: &[(f64, f64)], b: &[(f64, f64)]| {
            a.iter()
                .zip(b.iter().map(|x| x.1).chain(std::iter::repeat(0.0)))
                .map(|(&(le, v), w)| (le, v - w))
                .collect()
        };
        CommitPath {
            durable: diff(&self.durable, &before.durable),
            acknowledged: diff(&self.acknowledged, &before.acknowledged),
        }
    }
}

/// The `q` quantile of cumulative buckets in microseconds, as Prometheus' `histogram_quantile`
/// computes it (linear inside the bucket; the largest finite bound for the `+Inf` bucket).
fn quantile_micros(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cumulative) in buckets {
        if cumulative >= rank && cumulative > below {
            if le.is_infinite() {
                return lower * 1e6;
            }
            return (lower + (le - lower) * (rank - below) / (cumulative - below)) * 1e6;
        }
        lower = if le.is_finite() { le } else { lower };
        below = cumulative;
    }
    lower * 1e6
}

/// One run's commit-path latency in µs: durable p50/p99, acknowledged p50/p99, flush cycles.
#[derive(Clone, Copy, Debug)]
struct Latency {
    durable: (f64, f64),
    acknowledged: (f64, f64),
    cycles: f64,
}

impl Latency {
    fn of(h: &CommitPath) -> Latency {
        Latency {
            durable: (
                quantile_micros(&h.durable, 0.5),
                quantile_micros(&h.durable, 0.99),
            ),
            acknowledged: (
                quantile_micros(&h.acknowledged, 0.5),
                quantile_micros(&h.acknowledged, 0.99),
            ),
            cycles: h.durable.last().map_or(0.0, |b| b.1),
        }
    }
}

fn synchronous_standby(cluster: &Cluster, work: &Path, rounds: usize) {
    let secs = common::env_u64("WALRELAY_BENCH_PGBENCH_SECS", 20);
    for clients in sync_clients() {
        synchronous_standby_with(cluster, work, rounds, secs, clients);
    }
    set_sync_names(cluster, "");
}

fn synchronous_standby_with(
    cluster: &Cluster,
    work: &Path,
    rounds: usize,
    secs: u64,
    clients: u32,
) {
    let conninfo = cluster.replication_conninfo();
    let setups = [
        SyncSetup::NoStandby,
        SyncSetup::Receiver(Program::Walrelay),
        SyncSetup::Receiver(Program::PgReceivewal),
    ];
    println!();
    println!("## synchronous standby under pgbench, {clients} clients");
    println!("pgbench -N -c {clients} -j 2 -T {secs} (simple-update); {rounds} rounds");
    let mut tps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut receivers: BTreeMap<&str, Series> = BTreeMap::new();
    let mut latencies: Vec<Latency> = Vec::new();
    for round in 0..rounds {
        let order = sync_order(&setups, round);
        let mut line = format!("round {}:", round + 1);
        for setup in order {
            // Every run starts from a checkpoint, so none pays for the previous run's dirty pages.
            cluster.psql("CHECKPOINT");
            settle_disk();
            let label = setup.label();
            let port = walrelay_testkit::free_port().expect("a free port for walrelay's metrics");
            let run = match setup {
                SyncSetup::NoStandby => {
                    set_sync_names(cluster, "");
                    None
                }
                SyncSetup::Receiver(program) => {
                    set_sync_names(cluster, SYNC_APP);
                    let dir = work.join(format!("sync-{}-{clients}-{round}", slug(label)));
                    std::fs::create_dir(&dir)
                        .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                    let log = work.join(format!("sync-{}-{clients}-{round}.log", slug(label)));
                    let mut child = MeasuredChild::spawn(
                        label,
                        receiver_command(cluster, program, &conninfo, &dir, port),
                        &log,
                    );
                    wait_until_sync(cluster, &mut child, label);
                    Some((child, dir, program))
                }
            };
            let before = match &run {
                Some((_, _, Program::Walrelay)) => Some(CommitPath::scrape(port)),
                _ => None,
            };
            let summary = cluster.pgbench_run(
                &PgBench::duration(Duration::from_secs(secs))
                    .clients(clients)
                    .jobs(2)
                    .arg("-N"),
            );
            let t = summary
                .tps
                .unwrap_or_else(|| panic!("pgbench printed no tps:\n{}", summary.output));
            if summary.failed > 0 {
                panic!("pgbench had {} failed transactions", summary.failed);
            }
            line.push_str(&format!(" [{label} {t:.0} tps"));
            if let Some(before) = before {
                let l = Latency::of(&CommitPath::scrape(port).since(&before));
                line.push_str(&format!(
                    ", durable p50/p99 {:.0}/{:.0} µs, acknowledged {:.0}/{:.0} µs",
                    l.durable.0, l.durable.1, l.acknowledged.0, l.acknowledged.1
                ));
                latencies.push(l);
            }
            line.push(']');
            if let Some((child, dir, _)) = run {
                child.interrupt();
                let m = child.wait_with_deadline(Duration::from_secs(120));
                receivers.entry(label).or_default().push(m);
                remove_tree(&dir);
            }
            tps.entry(label).or_default().push(t);
        }
        println!("{line}; load {}", load_average());
    }

    let worst = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let theirs = tps.get(SyncSetup::Receiver(Program::PgReceivewal).label());
    let mut table = Table::new(&[
        "synchronous standby",
        "median tps",
        "worst tps",
        "rounds tps",
        "tps ratio median (worst)",
        "receiver median CPU s",
        "receiver peak RSS MiB",
    ]);
    for setup in setups {
        let label = setup.label();
        let Some(values) = tps.get(label) else {
            continue;
        };
        let r = receivers.get(label);
        table.row(vec![
            label.to_string(),
            format!("{:.0}", median(values)),
            format!("{:.0}", worst(values)),
            values
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            match (setup, theirs) {
                (SyncSetup::Receiver(_), Some(t)) => format!(
                    "{:.2} ({:.2})",
                    median(values) / median(t),
                    worst(values) / worst(t)
                ),
                _ => "—".to_string(),
            },
            fmt_opt(r.and_then(Series::median_cpu_secs), 2),
            fmt_opt(r.and_then(Series::peak_rss_mib), 1),
        ]);
    }
    println!();
    println!("tps ratio: walrelay's / pg_receivewal's, of the medians (of the worst rounds)");
    println!("{}", table.render());
    if !latencies.is_empty() {
        let col = |f: fn(&Latency) -> f64| -> Vec<f64> { latencies.iter().map(f).collect() };
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let mut lt = Table::new(&[
            "walrelay commit path (µs, from /metrics)",
            "p50 median of rounds",
            "p50 rounds",
            "p99 median of rounds",
            "p99 worst round",
            "p99 rounds",
        ]);
        let rounds_of = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (stage, p50, p99) in [
            (
                "received → durable (fsync returned)",
                col(|l| l.durable.0),
                col(|l| l.durable.1),
            ),
            (
                "received → status update sent",
                col(|l| l.acknowledged.0),
                col(|l| l.acknowledged.1),
            ),
        ] {
            lt.row(vec![
                stage.to_string(),
                format!("{:.0}", median(&p50)),
                rounds_of(&p50),
                format!("{:.0}", median(&p99)),
                format!("{:.0}", max(&p99)),
                rounds_of(&p99),
            ]);
        }
        println!();
        println!(
            "flush cycles per run (median): {:.0}; per transaction: {:.2}",
            median(&col(|l| l.cycles)),
            median(&col(|l| l.cycles))
                / (median(
                    tps.get(SyncSetup::Receiver(Program::Walrelay).label())
                        .map_or(&[][..], |v| v)
                ) * secs as f64)
        );
        println!("{}", lt.render());
    }
}
