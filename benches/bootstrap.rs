//! Benchmark: seeding a standby — `walrelay bootstrap` against `pg_basebackup -X stream`.
//!
//! One throwaway PostgreSQL cluster holds a pgbench data set (scale 70 ≈ 1.1 GB by default;
//! `WALRELAY_BENCH_SCALE` shrinks it for a quick run, `WALRELAY_BENCH_SCALES=10,70` measures several
//! sizes one after the other, re-initializing the data set). At every size, the rounds run once per
//! neighbour of `WALRELAY_BENCH_BUSY` (`quiet`, `fsync`: pgbench against a second cluster, `meta`:
//! threads creating, fsyncing and removing small files, `meta-nofsync`: the same without fsync; all
//! on the same file system, running during both tools' runs alike). Each round runs both tools on it,
//! one after the other, alternating which goes first, into fresh directories on the same file
//! system:
//!
//! * `walrelay bootstrap -d CONNINFO -c fast -D X` — base backup untarred as it arrives, WAL streamed
//!   in parallel into `X/pg_wal`, the backup manifest (CRC-32C) checked against checksums computed
//!   while writing, standby configuration written, everything fsynced;
//! * `pg_basebackup -d CONNINFO -X stream -c fast -D Y` — base backup and streamed WAL, manifest
//!   (CRC-32C) written but not checked, everything fsynced;
//! * and, since walrelay's run includes the check, `pg_verifybackup Y` after pg_basebackup, reported
//!   as a third line (pg_basebackup + pg_verifybackup);
//! * last in every round, a diagnostic `walrelay bootstrap … --no-verify` (no manifest check), to
//!   show what the check costs;
//! * then a diagnostic floor: `pg_basebackup -X none -Ft -D - > /dev/null`, the same base backup
//!   (without WAL streaming) read and thrown away — what the server alone needs to send it, with
//!   the two CPUs shared as in the timed runs (`WALRELAY_BENCH_FLOOR_LINE=0` leaves it out).
//!
//! Before every run all file systems are synced, so that one run's writeback does not land on the
//! next. The cluster's files stay in the page cache (nobody drops caches on a shared machine), for
//! both tools alike. walrelay's first result is checked by pg_verifybackup (untimed), so the benchmark
//! never measures a tool that produced a broken copy.
//!
//! `WALRELAY_BENCH_COMPARE=LABEL=PATH,…` adds other walrelay builds (say, the one before a change)
//! as extra lines, run in the same rounds, in the alternating order, on the same data: an A/B
//! comparison under the same load. `WALRELAY_BENCH_VARIANTS=LABEL:VAR=VALUE[;…],…` does the same
//! with this build and extra environment (e.g. `nofadv:WALRELAY_EARLY_WRITEBACK=off`).
//! `WALRELAY_BENCH_NO_VERIFY_LINE=0` leaves out the `--no-verify` diagnostic run.
//!
//! Every line reports the median and the worst of the rounds, wall time with user and system CPU
//! time and peak RSS (`wait4` rusage through GNU time), and the ratios walrelay / pg_basebackup of
//! medians and of worst runs; a summary table at the end has one line per size and neighbour.
//!
//! Run with `cargo bench --bench bootstrap`; see `benches/common/mod.rs` for the settings and
//! `docs/benchmarks.md` for results.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    fmt_opt, load_average, mib, remove_tree, run_measured, settle_disk, tool_command, tree_size,
    Busy, Measured, MetaChurn, Series, Table,
};
use walrelay_testkit::{Cluster, PgBench, VerifyBackupOptions};

/// pgbench scale of the data set: 70 gives about 1.1 GB.
const DEFAULT_SCALE: u64 = 70;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Walrelay,
    PgBasebackup,
    /// Diagnostic: walrelay without the manifest check, to show what the check costs.
    WalrelayNoVerify,
    /// Diagnostic: the server's side alone — the same base backup (without WAL) read by
    /// pg_basebackup as one tar on stdout into /dev/null: nothing written, nothing fsynced.
    ServerFloor,
    /// Another walrelay build from `WALRELAY_BENCH_COMPARE` (index into the list).
    Other(usize),
}

impl Tool {
    fn slug(self) -> String {
        match self {
            Tool::Walrelay => "walrelay".into(),
            Tool::PgBasebackup => "pg_basebackup".into(),
            Tool::WalrelayNoVerify => "walrelay-no-verify".into(),
            Tool::ServerFloor => "server-floor".into(),
            Tool::Other(i) => format!("other-{i}"),
        }
    }
}

/// Another walrelay line in the same rounds: another build, or this one with extra environment.
struct Variant {
    label: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// `WALRELAY_BENCH_COMPARE`: `LABEL=PATH` pairs separated by commas (other builds), and
/// `WALRELAY_BENCH_VARIANTS`: `LABEL:VAR=VALUE[;VAR=VALUE…]` items separated by commas (the bench's
/// walrelay with extra environment, e.g. `nofadvise:WALRELAY_EARLY_WRITEBACK=off`).
fn other_builds() -> Vec<Variant> {
    let mut out = Vec::new();
    if let Ok(list) = std::env::var("WALRELAY_BENCH_COMPARE") {
        for item in list.split(',').filter(|item| !item.trim().is_empty()) {
            match item.split_once('=') {
                Some((label, path)) if Path::new(path.trim()).is_file() => out.push(Variant {
                    label: label.trim().to_string(),
                    bin: PathBuf::from(path.trim()),
                    env: Vec::new(),
                }),
                _ => panic!(
                    "WALRELAY_BENCH_COMPARE item {item:?}: expected LABEL=PATH of a walrelay binary"
                ),
            }
        }
    }
    if let Ok(list) = std::env::var("WALRELAY_BENCH_VARIANTS") {
        for item in list.split(',').filter(|item| !item.trim().is_empty()) {
            let Some((label, vars)) = item.split_once(':') else {
                panic!(
                    "WALRELAY_BENCH_VARIANTS item {item:?}: expected LABEL:VAR=VALUE[;VAR=VALUE]"
                )
            };
            let env = vars
                .split(';')
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                    None => {
                        panic!("WALRELAY_BENCH_VARIANTS item {item:?}: {kv:?} is not VAR=VALUE")
                    }
                })
                .collect();
            out.push(Variant {
                label: label.trim().to_string(),
                bin: common::walrelay_bin(),
                env,
            });
        }
    }
    out
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

/// The floor: how fast the server sends the base backup to a reader that only discards it.
fn server_floor_command(cluster: &Cluster, conninfo: &str) -> Command {
    let mut cmd = tool_command(Path::new("/bin/sh"));
    cmd.arg("-c")
        .arg("exec \"$0\" -d \"$1\" -X none -c fast -Ft -D - > /dev/null")
        .arg(cluster.install().tools().pg_basebackup())
        .arg(conninfo);
    cmd
}

fn pg_verifybackup_command(cluster: &Cluster, target: &Path) -> Command {
    let mut cmd = tool_command(&cluster.install().tools().pg_verifybackup());
    cmd.arg(target);
    cmd
}

/// One tool's run as shown in a round's line: wall (user + sys).
fn brief(name: &str, m: &Measured) -> String {
    match m.cpu {
        Some((u, s)) => format!(" {name} {:.2}s (u {u:.2} s {s:.2})", m.secs()),
        None => format!(" {name} {:.2}s", m.secs()),
    }
}

/// The results of the rounds at one size under one load.
struct Rounds {
    walrelay: Series,
    basebackup: Series,
    verify: Series,
    no_verify: Series,
    floor: Series,
    others: Vec<Series>,
    output_bytes: u64,
    loads: Vec<String>,
}

/// The untimed-comparison lines run last in every round.
#[derive(Clone, Copy)]
struct Diagnostics {
    /// `walrelay bootstrap --no-verify`.
    no_verify: bool,
    /// The server floor (see [`Tool::ServerFloor`]).
    floor: bool,
}

fn run_rounds(
    cluster: &Cluster,
    conninfo: &str,
    work: &Path,
    rounds: usize,
    others: &[Variant],
    diagnostics: Diagnostics,
    check_first: bool,
) -> Rounds {
    let mut r = Rounds {
        walrelay: Series::default(),
        basebackup: Series::default(),
        verify: Series::default(),
        no_verify: Series::default(),
        floor: Series::default(),
        others: vec![Series::default(); others.len()],
        output_bytes: 0,
        loads: Vec::new(),
    };
    for round in 0..rounds {
        // walrelay, the other builds and pg_basebackup take turns in an order that reverses from
        // round to round; the diagnostic run comes last.
        let mut order = vec![Tool::Walrelay];
        order.extend((0..others.len()).map(Tool::Other));
        order.push(Tool::PgBasebackup);
        if round % 2 == 1 {
            order.reverse();
        }
        if diagnostics.no_verify {
            order.push(Tool::WalrelayNoVerify);
        }
        if diagnostics.floor {
            order.push(Tool::ServerFloor);
        }
        let load_before = load_average();
        let mut line = format!("round {}:", round + 1);
        for tool in order {
            let target = work.join(format!("{}-{round}", tool.slug()));
            let log = work.join(format!("{}-{round}.log", tool.slug()));
            settle_disk();
            match tool {
                Tool::Walrelay => {
                    let m = run_measured(
                        "walrelay bootstrap",
                        walrelay_command(conninfo, &target, true),
                        &log,
                    );
                    line.push_str(&brief("walrelay", &m));
                    r.walrelay.push(m);
                    if round == 0 {
                        if check_first {
                            // The oracle: what walrelay wrote is a valid backup with the WAL it
                            // needs.
                            walrelay_testkit::pg_verifybackup(
                                &target,
                                &VerifyBackupOptions::default(),
                            )
                            .unwrap_or_else(|e| {
                                panic!("pg_verifybackup rejects walrelay's backup: {e}")
                            });
                        }
                        r.output_bytes = tree_size(&target);
                    }
                }
                Tool::Other(i) => {
                    let v = &others[i];
                    let mut cmd = walrelay_command_of(&v.bin, conninfo, &target, true);
                    for (k, val) in &v.env {
                        cmd.env(k, val);
                    }
                    let m = run_measured(&v.label, cmd, &log);
                    line.push_str(&brief(&v.label, &m));
                    r.others[i].push(m);
                }
                Tool::WalrelayNoVerify => {
                    let m = run_measured(
                        "walrelay bootstrap --no-verify",
                        walrelay_command(conninfo, &target, false),
                        &log,
                    );
                    line.push_str(&format!(" [{}]", brief("--no-verify", &m).trim()));
                    r.no_verify.push(m);
                }
                Tool::ServerFloor => {
                    let m = run_measured(
                        "server floor",
                        server_floor_command(cluster, conninfo),
                        &log,
                    );
                    line.push_str(&format!(" [{}]", brief("floor", &m).trim()));
                    r.floor.push(m);
                }
                Tool::PgBasebackup => {
                    let m = run_measured(
                        "pg_basebackup",
                        pg_basebackup_command(cluster, conninfo, &target),
                        &log,
                    );
                    line.push_str(&brief("pg_basebackup", &m));
                    r.basebackup.push(m);
                    let vlog = work.join(format!("pg_verifybackup-{round}.log"));
                    let v = run_measured(
                        "pg_verifybackup",
                        pg_verifybackup_command(cluster, &target),
                        &vlog,
                    );
                    line.push_str(&format!(" (+ pg_verifybackup {:.2}s)", v.secs()));
                    r.verify.push(v);
                }
            }
            remove_tree(&target);
        }
        let load_after = load_average();
        println!("{line}; load {load_before} -> {load_after}");
        r.loads.push(load_after);
    }
    r
}

/// `median / worst` of a CPU pair, as `u.uu / s.ss`.
fn user_sys(v: Option<(f64, f64)>) -> String {
    match v {
        Some((u, s)) => format!("{u:.2} / {s:.2}"),
        None => "n/a".into(),
    }
}

fn main() {
    if !common::invoked_by_cargo_bench("bootstrap") {
        return;
    }
    let rounds = common::rounds();
    let scales = common::scales(DEFAULT_SCALE);
    let busy_modes = common::busy_modes();
    let diagnostics = Diagnostics {
        no_verify: std::env::var("WALRELAY_BENCH_NO_VERIFY_LINE").as_deref() != Ok("0"),
        floor: std::env::var("WALRELAY_BENCH_FLOOR_LINE").as_deref() != Ok("0"),
    };
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
    // The fsync-heavy neighbour's cluster, on the same file system, when asked for.
    let neighbour = busy_modes.contains(&Busy::Fsync).then(|| {
        let n = Cluster::builder().name("bench-neighbour").start();
        n.pgbench_init(5);
        n
    });
    let conninfo = cluster.replication_conninfo();
    let others = other_builds();
    for v in &others {
        let env: Vec<String> = v.env.iter().map(|(k, val)| format!("{k}={val}")).collect();
        println!(
            "compared: {} = {} {}",
            v.label,
            v.bin.display(),
            env.join(" ")
        );
    }

    let mut summary = Table::new(&[
        "size",
        "neighbour",
        "walrelay median / worst s",
        "pg_basebackup median / worst s",
        "ratio median",
        "ratio worst",
        "walrelay u / s (median)",
        "pg_basebackup u / s (median)",
        "load (1 min) after rounds",
    ]);
    let mut checked = false;
    for &scale in &scales {
        let prepared = Instant::now();
        cluster.pgbench_init(scale as u32);
        cluster.psql("CHECKPOINT");
        let db_bytes: u64 = cluster
            .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")
            .trim()
            .parse()
            .unwrap_or(0);
        println!();
        println!(
            "## data: pgbench scale {scale}, databases {} (prepared in {:.0} s); {rounds} rounds",
            mib(db_bytes),
            prepared.elapsed().as_secs_f64()
        );
        for &busy in &busy_modes {
            println!();
            println!("### scale {scale}, {}", busy.describe());
            let pgbench = match (busy, &neighbour) {
                (Busy::Fsync, Some(n)) => Some(
                    n.pgbench(
                        &PgBench::duration(std::time::Duration::from_secs(3600))
                            .clients(4)
                            .jobs(1),
                    ),
                ),
                _ => None,
            };
            let churn = matches!(busy, Busy::Meta | Busy::MetaNoFsync)
                .then(|| MetaChurn::start(work.path(), busy == Busy::Meta));
            let mem = (busy == Busy::Mem).then(common::MemChurn::start);
            if busy != Busy::Quiet {
                // Let the neighbour reach its pace.
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            let r = run_rounds(
                &cluster,
                &conninfo,
                work.path(),
                rounds,
                &others,
                diagnostics,
                !checked,
            );
            checked = true;
            if let Some(c) = &churn {
                println!(
                    "neighbour: {:.0} small files created and removed per second",
                    c.files_per_sec()
                );
            }
            drop(churn);
            drop(pgbench);
            drop(mem);
            print_tables(&r, &others, scale, busy, &mut summary);
        }
    }
    println!();
    println!("## summary (ratio = walrelay / pg_basebackup; worst = slowest run of each)");
    println!("{}", summary.render());
    println!();
    println!("targets: ratio <= 1.0 at every size, worst included, quiet and busy; median <= 0.8 from 1 GB");
    println!("load average at the end: {}", load_average());
}

fn print_tables(r: &Rounds, others: &[Variant], scale: u64, busy: Busy, summary: &mut Table) {
    // pg_basebackup followed by pg_verifybackup, round by round.
    let mut both = Series::default();
    for (b, v) in r.basebackup.runs.iter().zip(&r.verify.runs) {
        both.push(Measured {
            wall: b.wall + v.wall,
            max_rss_kib: b.max_rss_kib.max(v.max_rss_kib),
            cpu: b
                .cpu
                .zip(v.cpu)
                .map(|((bu, bs), (vu, vs))| (bu + vu, bs + vs)),
        });
    }
    let bytes = r.output_bytes;
    let mut table = Table::new(&[
        "tool",
        "median s",
        "worst s",
        "rounds s",
        "MB/s",
        "ratio median (walrelay / this)",
        "ratio worst",
        "user / sys s (median)",
        "user / sys s (worst run)",
        "peak RSS MiB",
    ]);
    let wr = r.walrelay.median_secs();
    let wr_worst = r.walrelay.worst_secs();
    let mut lines: Vec<(String, &Series)> = vec![
        ("walrelay bootstrap -c fast".into(), &r.walrelay),
        ("pg_basebackup -X stream -c fast".into(), &r.basebackup),
        ("pg_basebackup + pg_verifybackup".into(), &both),
    ];
    if !r.no_verify.runs.is_empty() {
        lines.push(("(walrelay bootstrap --no-verify)".into(), &r.no_verify));
    }
    if !r.floor.runs.is_empty() {
        lines.push((
            "(server floor: pg_basebackup -X none -Ft -D - > /dev/null)".into(),
            &r.floor,
        ));
    }
    for (v, s) in others.iter().zip(&r.others) {
        lines.push((format!("({}: walrelay bootstrap -c fast)", v.label), s));
    }
    for (name, s) in lines {
        let secs = s.median_secs();
        table.row(vec![
            name,
            format!("{secs:.2}"),
            format!("{:.2}", s.worst_secs()),
            s.all_secs(),
            format!("{:.0}", bytes as f64 / 1e6 / secs),
            format!("{:.2}", wr / secs),
            format!("{:.2}", wr_worst / s.worst_secs()),
            user_sys(s.median_user_sys()),
            user_sys(s.worst_user_sys()),
            fmt_opt(s.peak_rss_mib(), 1),
        ]);
    }
    println!();
    println!(
        "backup size {} (walrelay's first copy, files incl. pg_wal); MB/s = 10^6 bytes / median s; loads after each round: {}",
        mib(bytes),
        r.loads.join(" | ")
    );
    println!("{}", table.render());
    let base = r.basebackup.median_secs();
    let base_worst = r.basebackup.worst_secs();
    println!(
        "walrelay / pg_basebackup: median {:.2}, worst {:.2}; walrelay peak RSS {} MiB",
        wr / base,
        wr_worst / base_worst,
        fmt_opt(r.walrelay.peak_rss_mib(), 1)
    );
    summary.row(vec![
        mib(bytes),
        busy.name().into(),
        format!("{wr:.2} / {wr_worst:.2}"),
        format!("{base:.2} / {base_worst:.2}"),
        format!("{:.2}", wr / base),
        format!("{:.2}", wr_worst / base_worst),
        user_sys(r.walrelay.median_user_sys()),
        user_sys(r.basebackup.median_user_sys()),
        r.loads.last().cloned().unwrap_or_default(),
    ]);
    let _ = scale;
}
