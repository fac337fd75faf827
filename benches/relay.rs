//! Benchmark: fan-out — ten `pg_receivewal`s through `walrelay serve` against the same ten
//! connected to the primary directly.
//!
//! One throwaway PostgreSQL 15 cluster (16 MB segments, pgbench scale 10). Each round runs both
//! modes, alternating which goes first:
//!
//! * **direct**: N pg_receivewal (`WALRELAY_BENCH_RECEIVERS`, default 10) connect to the primary —
//!   N walsenders;
//! * **relay**: `walrelay serve` connects to the primary (one walsender), the N pg_receivewal
//!   connect to the relay.
//!
//! Once every receiver streams, `pgbench -N -c 4 -j 2 -T 20` (`WALRELAY_BENCH_PGBENCH_SECS`)
//! writes, and every second a marker row is committed and its bytes are looked for in every
//! receiver's current segment file: the time from the commit returning to the marker being in all
//! N files is the **downstream lag** (what a downstream has, not what it reported). Measured on the
//! primary, from `/proc`: the **CPU of its walsenders** (user + system), the **CPU of the whole
//! cluster** (the postmaster, its live children and the children it reaped), and the **WAL bytes
//! its walsenders sent** (the sum over walsenders of how far `pg_stat_replication.sent_lsn`
//! moved: the replication traffic without the few protocol bytes). The relay's own CPU is
//! reported too. Nothing is asserted about timings; a round fails only if a tool fails.
//!
//! Run with `cargo bench --bench relay`; see `benches/common/mod.rs` for the common settings and
//! `docs/benchmarks.md` for results.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{load_average, median, tool_command, Table};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use walrelay_testkit::{Cluster, Lsn, PgBench};

const SCALE: u32 = 10;
const RELAY_APP: &str = "bench_relay";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Direct,
    Relay,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct: N × pg_receivewal → primary",
            Mode::Relay => "relay: N × pg_receivewal → walrelay serve → primary",
        }
    }
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
struct Sample {
    walsenders: usize,
    walsender_cpu: f64,
    cluster_cpu: f64,
    walsender_bytes: u64,
    relay_cpu: Option<f64>,
    wal_bytes: u64,
    tps: f64,
    lags_ms: Vec<f64>,
}

fn main() {
    if !common::invoked_by_cargo_bench("relay") {
        return;
    }
    let rounds = common::rounds();
    let secs = common::env_u64("WALRELAY_BENCH_PGBENCH_SECS", 20);
    let receivers = common::env_u64("WALRELAY_BENCH_RECEIVERS", 10) as usize;
    let work = common::work_dir("relay");
    println!("# fan-out: {receivers} pg_receivewal through walrelay serve vs directly");
    println!("machine: {}", common::machine_description(work.path()));
    let cluster = Cluster::builder()
        .name("bench-relay")
        .max_wal_senders(receivers as u32 + 5)
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .conf("wal_keep_size = '2GB'")
        .start();
    cluster.pgbench_init(SCALE);
    cluster.psql("CREATE TABLE bench_marker (m text)");
    println!(
        "tools: {} | {} | PostgreSQL {}; pgbench -N -c 4 -j 2 -T {secs}; {rounds} rounds",
        common::tool_version(&common::walrelay_bin()),
        common::tool_version(&cluster.install().tools().pg_receivewal()),
        cluster.psql("SHOW server_version"),
    );
    let mut results: BTreeMap<Mode, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order = [Mode::Direct, Mode::Relay];
        if round % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            let s = run(&cluster, mode, work.path(), round, receivers, secs);
            println!(
                "round {} {:?}: walsenders {} cpu {:.2}s, cluster cpu {:.2}s, sent {:.1} MB, WAL {:.1} MB, {:.0} tps, lag median {:.1} ms max {:.1} ms{}",
                round + 1,
                mode,
                s.walsenders,
                s.walsender_cpu,
                s.cluster_cpu,
                s.walsender_bytes as f64 / 1e6,
                s.wal_bytes as f64 / 1e6,
                s.tps,
                median(&s.lags_ms),
                s.lags_ms.iter().copied().fold(0.0, f64::max),
                s.relay_cpu
                    .map(|c| format!(", relay cpu {c:.2}s"))
                    .unwrap_or_default()
            );
            results.entry(mode).or_default().push(s);
        }
    }
    report(&results, receivers);
    println!("load average at the end: {}", load_average());
}

fn report(results: &BTreeMap<Mode, Vec<Sample>>, receivers: usize) {
    let mut table = Table::new(&[
        "mode",
        "primary walsenders",
        "walsender CPU s",
        "walsender CPU ms / WAL MB",
        "primary CPU s",
        "bytes sent by the primary MB",
        "sent / WAL",
        "relay CPU s",
        "lag median ms",
        "lag p90 ms",
        "lag max ms",
        "tps",
    ]);
    for (mode, samples) in results {
        let med = |f: &dyn Fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
        let mut lags: Vec<f64> = samples.iter().flat_map(|s| s.lags_ms.clone()).collect();
        lags.sort_by(f64::total_cmp);
        let p90 = lags
            .get(((lags.len() as f64) * 0.9) as usize)
            .or(lags.last())
            .copied()
            .unwrap_or(f64::NAN);
        table.row(vec![
            mode.label().replace('N', &receivers.to_string()),
            samples.first().map_or(0, |s| s.walsenders).to_string(),
            format!("{:.2}", med(&|s| s.walsender_cpu)),
            format!(
                "{:.1}",
                med(&|s| s.walsender_cpu * 1000.0 / (s.wal_bytes as f64 / 1e6))
            ),
            format!("{:.2}", med(&|s| s.cluster_cpu)),
            format!("{:.1}", med(&|s| s.walsender_bytes as f64 / 1e6)),
            format!(
                "{:.2}",
                med(&|s| s.walsender_bytes as f64 / s.wal_bytes as f64)
            ),
            samples
                .first()
                .and_then(|s| s.relay_cpu)
                .map(|_| format!("{:.2}", med(&|s| s.relay_cpu.unwrap_or(f64::NAN))))
                .unwrap_or_else(|| "—".into()),
            format!("{:.1}", median(&lags)),
            format!("{p90:.1}"),
            format!("{:.1}", lags.last().copied().unwrap_or(f64::NAN)),
            format!("{:.0}", med(&|s| s.tps)),
        ]);
    }
    println!();
    println!("{}", table.render());
}

/// CPU seconds (user + system) of a process: its own and, with `children`, those of the
/// children it reaped.
fn cpu_secs(pid: u32, children: bool) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime, cutime, cstime are fields 14–17 (indexes 11–14 after the name).
    let ticks = num(11) + num(12) + if children { num(13) + num(14) } else { 0.0 };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks / hz)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `sent_lsn` of each walsender, by pid.
fn sent_positions(cluster: &Cluster) -> BTreeMap<u32, Lsn> {
    cluster
        .psql_rows("SELECT pid, sent_lsn FROM pg_stat_replication")
        .into_iter()
        .filter_map(|r| Some((r[0].parse().ok()?, r[1].parse().ok()?)))
        .collect()
}

/// The cluster's CPU so far: the postmaster with its reaped children, plus its live children.
fn cluster_cpu(cluster: &Cluster) -> f64 {
    let pid: u32 = fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid");
    let mut total = cpu_secs(pid, true).unwrap_or(0.0);
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(child) == Some(pid) {
            total += cpu_secs(child, false).unwrap_or(0.0);
        }
    }
    total
}

/// pids of the cluster's walsenders now.
fn walsender_pids(cluster: &Cluster) -> Vec<u32> {
    cluster
        .psql_rows("SELECT pid FROM pg_stat_replication")
        .into_iter()
        .filter_map(|r| r[0].parse().ok())
        .collect()
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn")
}

fn interrupt(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(
    cluster: &Cluster,
    mode: Mode,
    work: &Path,
    round: usize,
    receivers: usize,
    secs: u64,
) -> Sample {
    let base = work.join(format!("{mode:?}-{round}"));
    fs::create_dir_all(&base).expect("run directory");
    let mut relay = None;
    let target = match mode {
        Mode::Direct => cluster.replication_conninfo(),
        Mode::Relay => {
            let port = free_port();
            let archive = base.join("relay-archive");
            fs::create_dir_all(&archive).expect("archive");
            let mut cmd = tool_command(&common::walrelay_bin());
            cmd.arg("serve")
                .arg("-d")
                .arg(format!(
                    "{} application_name={RELAY_APP}",
                    cluster.replication_conninfo()
                ))
                .arg("-D")
                .arg(&archive)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--max-wal-senders")
                .arg((receivers + 5).to_string());
            relay = Some(spawn(&mut cmd, &base.join("relay.log")));
            wait_until("the relay to stream", || {
                cluster.psql(&format!(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{RELAY_APP}' AND state = 'streaming'"
                )) == "1"
            });
            format!("host=127.0.0.1 port={port} user={}", cluster.superuser())
        }
    };
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..receivers {
        let dir = base.join(format!("rw{i}"));
        fs::create_dir_all(&dir).expect("receiver directory");
        let mut cmd = tool_command(&cluster.install().tools().pg_receivewal());
        cmd.arg("-d")
            .arg(format!("{target} application_name=bench_rw_{i}"))
            .arg("-D")
            .arg(&dir)
            .args(["-s", "1", "-n"]);
        children.push(spawn(&mut cmd, &base.join(format!("rw{i}.log"))));
        dirs.push(dir);
    }
    wait_until("every receiver to open its segment", || {
        dirs.iter().all(|d| {
            fs::read_dir(d)
                .map(|mut e| {
                    e.any(|f| {
                        f.is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".partial"))
                    })
                })
                .unwrap_or(false)
        })
    });
    let pids = walsender_pids(cluster);
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|&p| cpu_secs(p, false).unwrap_or(0.0))
        .collect();
    let sent0 = sent_positions(cluster);
    let cluster0 = cluster_cpu(cluster);
    let relay0 = relay.as_ref().and_then(|r| cpu_secs(r.id(), false));
    let lsn0 = cluster.current_wal_lsn();

    let mut load = cluster.pgbench(
        &PgBench::duration(Duration::from_secs(secs))
            .clients(4)
            .jobs(2)
            .arg("-N"),
    );
    let mut lags = Vec::new();
    let mut n = 0;
    while load.is_running() {
        std::thread::sleep(Duration::from_secs(1));
        n += 1;
        if let Some(lag) = marker_lag(cluster, &dirs, &format!("marker-{mode:?}-{round}-{n}")) {
            lags.push(lag.as_secs_f64() * 1000.0);
        }
    }
    let summary = load.wait().expect("pgbench");
    let lsn1 = cluster.current_wal_lsn();

    let cpu1: Vec<f64> = pids
        .iter()
        .map(|&p| cpu_secs(p, false).unwrap_or(0.0))
        .collect();
    // Every receiver has everything: the walsenders sent all the WAL of the run.
    let done = cluster.current_wal_lsn();
    wait_until("the walsenders to send everything", || {
        sent_positions(cluster).values().all(|&l| l >= done)
    });
    let sent1 = sent_positions(cluster);
    let cluster1 = cluster_cpu(cluster);
    let relay1 = relay.as_ref().and_then(|r| cpu_secs(r.id(), false));
    for c in &mut children {
        interrupt(c);
    }
    if let Some(r) = relay.as_mut() {
        interrupt(r);
    }
    common::remove_tree(&base);
    Sample {
        walsenders: pids.len(),
        walsender_cpu: cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum(),
        cluster_cpu: cluster1 - cluster0,
        walsender_bytes: sent1
            .iter()
            .map(|(pid, end)| end.saturating_sub(sent0.get(pid).copied().unwrap_or(*end)))
            .sum(),
        relay_cpu: relay0.zip(relay1).map(|(a, b)| b - a),
        wal_bytes: lsn1.saturating_sub(lsn0),
        tps: summary.tps.unwrap_or(f64::NAN),
        lags_ms: lags,
    }
}

/// Commits a row holding `marker` and returns how long until its bytes are in every receiver's
/// segment files (`None` if they are not within 30 s).
fn marker_lag(cluster: &Cluster, dirs: &[PathBuf], marker: &str) -> Option<Duration> {
    let end: Lsn = cluster
        .psql(&format!(
            "INSERT INTO bench_marker VALUES ('{marker}'); SELECT pg_current_wal_insert_lsn()"
        ))
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()?;
    let committed = Instant::now();
    let seg = 16 * 1024 * 1024u64;
    let mut pending: Vec<&PathBuf> = dirs.iter().collect();
    while !pending.is_empty() {
        pending.retain(|d| !contains_marker(d, end, seg, marker.as_bytes()));
        if committed.elapsed() > Duration::from_secs(30) {
            return None;
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Some(committed.elapsed())
}

/// Whether the WAL shortly before `end` in `dir` (its segment files, partial or complete) holds
/// `needle`.
fn contains_marker(dir: &Path, end: Lsn, seg: u64, needle: &[u8]) -> bool {
    // The marker's insert record is within the last few kB before the commit's end, unless the
    // concurrent load wrote much in between: 256 kB covers that.
    const WINDOW: u64 = 256 * 1024;
    let from = end.0.saturating_sub(WINDOW);
    let mut data = Vec::new();
    let mut pos = from;
    while pos < end.0 {
        let segno = pos / seg;
        let seg_end = ((segno + 1) * seg).min(end.0);
        let name = format!(
            "{:08X}{:08X}{:08X}",
            1,
            segno / (0x1_0000_0000 / seg),
            segno % (0x1_0000_0000 / seg)
        );
        let file = ["", ".partial"]
            .iter()
            .find_map(|s| fs::File::open(dir.join(format!("{name}{s}"))).ok());
        let Some(mut f) = file else {
            return false;
        };
        let mut buf = vec![0u8; (seg_end - pos) as usize];
        if f.seek(SeekFrom::Start(pos % seg)).is_err() || f.read_exact(&mut buf).is_err() {
            return false;
        }
        data.extend_from_slice(&buf);
        pos = seg_end;
    }
    data.windows(needle.len()).any(|w| w == needle)
}
