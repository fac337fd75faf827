//! Shared pieces of walrelay's side-by-side benchmarks (`benches/bootstrap.rs`, `benches/receive.rs`).
//!
//! The benchmarks run real tools against a real cluster: walrelay (the binary cargo built for this
//! bench, `CARGO_BIN_EXE_walrelay`) and PostgreSQL's own pg_basebackup / pg_receivewal, one after the
//! other on the same cluster and data, alternating which goes first, for N rounds. They report
//! medians, never assert timings, and fail only when a tool fails (or produces output that an oracle
//! rejects).
//!
//! Each tool runs as a child process under GNU time (`/usr/bin/time -f … -o FILE`), which takes the
//! child's resource usage from `wait4`: `ru_maxrss` is the peak resident set of the process (for
//! pg_basebackup, whose `-X stream` WAL streamer is a forked child, the larger of the two, not their
//! sum), and user/system CPU seconds come with it. Without GNU time the peak is sampled from
//! `/proc/<pid>/status` (`VmHWM`) every 10 ms instead, and CPU times are not reported.
//!
//! Settings (environment):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `WALRELAY_BENCH_ROUNDS` | rounds of every comparison | 3 |
//! | `WALRELAY_BENCH_SCALE` | pgbench scale of the data set (shrink for a quick run) | per bench |
//! | `WALRELAY_BENCH_PGBENCH_SECS` | length of each pgbench run (receive, synchronous standby) | 20 |
//! | `WALRELAY_BENCH_ONLY` | comma list of parts to run (receive: `catchup`, `sync`) | all |
//! | `WALRELAY_BENCH_WALRELAY` | path of the walrelay binary to measure | the one cargo built |
//! | `WALRELAY_BENCH_WRAP` | a wrapper every tool runs under (`WRAP PROGRAM ARGS…`), for profiles | none |
//! | `WALRELAY_BENCH_SPREAD_DIRS` | `0`: do not spread the output directories over the file system (see [`work_dir`]) | spread |

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// GNU time, which reports the child's `wait4` resource usage.
const GNU_TIME: &str = "/usr/bin/time";
/// Marks our line in GNU time's output file (a failing command gets a "Command exited…" line first).
const TIME_TAG: &str = "WALRELAY_BENCH_TIME";
/// Period of the `/proc` sampler used without GNU time.
const HWM_POLL: Duration = Duration::from_millis(10);
/// Lines of a failing tool's output shown in the panic message.
const LOG_TAIL_LINES: usize = 30;

/// `WALRELAY_BENCH_ROUNDS`, at least 1.
pub fn rounds() -> usize {
    env_u64("WALRELAY_BENCH_ROUNDS", 3).max(1) as usize
}

/// A positive integer from the environment, or `default` when unset. Panics on a malformed value: a
/// typo would otherwise silently run a different benchmark than the one asked for.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={v:?}: expected a positive integer"),
        },
        _ => default,
    }
}

/// Whether `part` is selected by `WALRELAY_BENCH_ONLY` (everything when unset).
pub fn part_selected(part: &str) -> bool {
    match std::env::var("WALRELAY_BENCH_ONLY") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|p| p.trim() == part),
        _ => true,
    }
}

/// `cargo bench` passes `--bench` to a `harness = false` target; `cargo test --benches` (or
/// `--all-targets`) runs the same binary without it, where a benchmark that starts clusters and
/// copies gigabytes has no business. Returns false (after saying so) in that case.
pub fn invoked_by_cargo_bench(name: &str) -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    println!("{name}: benchmark skipped (run it with `cargo bench --bench {name}`)");
    false
}

/// The walrelay binary: the one cargo built for this benchmark, or `WALRELAY_BENCH_WALRELAY` (to
/// compare another build, e.g. before and after a change, on the same cluster and data).
pub fn walrelay_bin() -> PathBuf {
    match std::env::var_os("WALRELAY_BENCH_WALRELAY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_walrelay")),
    }
}

/// A command for a PostgreSQL client tool or walrelay with a predictable environment: no `PG*`
/// variables (the connection string says everything), C locale, no password file.
///
/// With `WALRELAY_BENCH_WRAP=PATH`, every tool runs as `PATH PROGRAM ARGS…` (a script that runs it
/// under `perf record` or `strace`, say), for profiles of both tools under the same load.
pub fn tool_command(program: &Path) -> Command {
    let mut cmd = match std::env::var_os("WALRELAY_BENCH_WRAP") {
        Some(wrap) if !wrap.is_empty() => {
            let mut c = Command::new(wrap);
            c.arg(program);
            c
        }
        _ => Command::new(program),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("LANG", "C")
        .env("PGPASSFILE", "/dev/null")
        .env("PGSYSCONFDIR", "/nonexistent")
        .env("WALRELAY_LOG", "info");
    cmd
}

/// A directory for the tools' output, removed on drop. Root-owned like the tools that write into it,
/// under testkit's temp base (`/tmp` unless `WALRELAY_TEST_TMPDIR`), so on the same file system as
/// the cluster.
///
/// On ext4 the directory gets the "top of directory hierarchy" attribute (`chattr +T`), so that the
/// output directories made in it are spread over the file system's block groups like top-level
/// directories, instead of all landing in the group of the one just deleted. This matters on a file
/// system without a journal (the machine of docs/benchmarks.md): there ext4 will not reuse an inode
/// freed in the last minute, and skips each one, through the buffer cache, on *every* file it
/// creates in that group — a run following the removal of another run's thousand files spent 30–40%
/// of its CPU time in `ext4_create` (`recently_deleted`), more with every round. That measures the
/// order of the runs, not the tools. `WALRELAY_BENCH_SPREAD_DIRS=0` leaves the attribute off.
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    let base = walrelay_testkit::env::tmp_base();
    let dir = tempfile::Builder::new()
        .prefix(&format!("wr-bench-{prefix}-"))
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("create a work directory in {}: {e}", base.display()));
    if std::env::var("WALRELAY_BENCH_SPREAD_DIRS").as_deref() != Ok("0") {
        let spread = Command::new("chattr")
            .arg("+T")
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !spread {
            println!(
                "note: could not set the top-directory attribute on {} (not ext4, or no chattr): output directories are not spread",
                dir.path().display()
            );
        }
    } else {
        println!("note: output directories are not spread (WALRELAY_BENCH_SPREAD_DIRS=0)");
    }
    dir
}

/// What one tool run cost.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub wall: Duration,
    /// Peak resident set in KiB.
    pub max_rss_kib: Option<u64>,
    /// User and system CPU seconds (GNU time only).
    pub cpu: Option<(f64, f64)>,
}

impl Measured {
    pub fn secs(&self) -> f64 {
        self.wall.as_secs_f64()
    }

    pub fn cpu_secs(&self) -> Option<f64> {
        self.cpu.map(|(u, s)| u + s)
    }
}

/// How the peak RSS of a run is found.
enum RssProbe {
    /// GNU time writes `TIME_TAG elapsed user sys maxrss` to this file.
    GnuTime(PathBuf),
    /// A thread samples `VmHWM`; the highest value seen.
    Sampler {
        peak: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

/// A tool running as a child process, measured. Panics with the tail of its output when it fails.
pub struct MeasuredChild {
    label: String,
    child: Child,
    started: Instant,
    log: PathBuf,
    probe: RssProbe,
}

fn gnu_time_available() -> bool {
    Command::new(GNU_TIME)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.contains("GNU")
        })
        .unwrap_or(false)
}

impl MeasuredChild {
    /// Starts `cmd` in its own process group, its stdout and stderr going to `log`.
    pub fn spawn(label: &str, cmd: Command, log: &Path) -> MeasuredChild {
        let out = fs::File::create(log)
            .unwrap_or_else(|e| panic!("create log file {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicate log file handle: {e}"));
        let (mut run, probe) = if gnu_time_available() {
            let time_file = log.with_extension("time");
            let mut wrapped = Command::new(GNU_TIME);
            wrapped
                .arg("-f")
                .arg(format!("{TIME_TAG} %e %U %S %M"))
                .arg("-o")
                .arg(&time_file)
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            if let Some(dir) = cmd.get_current_dir() {
                wrapped.current_dir(dir);
            }
            (wrapped, RssProbe::GnuTime(time_file))
        } else {
            let peak = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            (
                cmd,
                RssProbe::Sampler {
                    peak,
                    stop,
                    thread: None,
                },
            )
        };
        // Its own process group: an interrupt reaches the tool itself (GNU time ignores SIGINT while
        // it waits), and never the benchmark.
        run.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let started = Instant::now();
        let child = run
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: could not start {:?}: {e}", run.get_program()));
        let mut probe = probe;
        if let RssProbe::Sampler { peak, stop, thread } = &mut probe {
            let (pid, peak, stop) = (child.id(), peak.clone(), stop.clone());
            *thread = Some(std::thread::spawn(move || sample_hwm(pid, &peak, &stop)));
        }
        MeasuredChild {
            label: label.to_string(),
            child,
            started,
            log: log.to_path_buf(),
            probe,
        }
    }

    /// Whether the tool is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The tool's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the tool to stop as its users would (SIGINT: both walrelay and pg_receivewal finish
    /// cleanly and exit 0).
    pub fn interrupt(&self) {
        // The child leads its own process group (process_group(0)), so its pid is the group id.
        let pgid = Pid::from_raw(self.child.id() as i32);
        if let Err(e) = killpg(pgid, Signal::SIGINT) {
            panic!("{}: could not interrupt: {e}", self.label);
        }
    }

    /// Waits for the tool to exit; panics unless it succeeded.
    pub fn wait(mut self) -> Measured {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: wait failed: {e}", self.label));
        let wall = self.started.elapsed();
        self.finish(status, wall)
    }

    /// Waits at most `limit`, then kills the tool and panics.
    pub fn wait_with_deadline(mut self, limit: Duration) -> Measured {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let wall = self.started.elapsed();
                    return self.finish(status, wall);
                }
                Ok(None) if self.started.elapsed() > limit => {
                    let pgid = Pid::from_raw(self.child.id() as i32);
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let _ = self.child.wait();
                    panic!(
                        "{}: still running after {}s; killed. Output:\n{}",
                        self.label,
                        limit.as_secs(),
                        tail(&self.log_text(), LOG_TAIL_LINES)
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{}: wait failed: {e}", self.label),
            }
        }
    }

    fn finish(mut self, status: ExitStatus, wall: Duration) -> Measured {
        if !status.success() {
            panic!(
                "{} failed ({status}). Output:\n{}",
                self.label,
                tail(&self.log_text(), LOG_TAIL_LINES)
            );
        }
        match &mut self.probe {
            RssProbe::GnuTime(file) => {
                let text = fs::read_to_string(&*file).unwrap_or_default();
                let line = text
                    .lines()
                    .rev()
                    .find(|l| l.starts_with(TIME_TAG))
                    .unwrap_or_else(|| {
                        panic!("{}: GNU time wrote no usage line: {text:?}", self.label)
                    });
                let f: Vec<&str> = line.split_whitespace().skip(1).collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
                Measured {
                    wall,
                    max_rss_kib: num(3).map(|v| v as u64),
                    cpu: num(1).zip(num(2)),
                }
            }
            RssProbe::Sampler { peak, stop, thread } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
                let kib = peak.load(Ordering::Relaxed);
                Measured {
                    wall,
                    max_rss_kib: (kib > 0).then_some(kib),
                    cpu: None,
                }
            }
        }
    }
}

impl Drop for MeasuredChild {
    fn drop(&mut self) {
        // A panicking benchmark never leaves a tool streaming from (or into) its cluster.
        if matches!(self.child.try_wait(), Ok(None)) {
            let pgid = Pid::from_raw(self.child.id() as i32);
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Samples `VmHWM` of `pid` until it exits (a zombie has no memory map, so no `VmHWM` line).
fn sample_hwm(pid: u32, peak: &AtomicU64, stop: &AtomicBool) {
    let path = format!("/proc/{pid}/status");
    while !stop.load(Ordering::Relaxed) {
        let Ok(status) = fs::read_to_string(&path) else {
            return;
        };
        let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        else {
            return;
        };
        peak.fetch_max(kib, Ordering::Relaxed);
        std::thread::sleep(HWM_POLL);
    }
}

/// Runs `cmd` to completion, measured.
pub fn run_measured(label: &str, cmd: Command, log: &Path) -> Measured {
    MeasuredChild::spawn(label, cmd, log).wait()
}

/// Flushes dirty pages of every file system so that one run's writeback does not slow the next.
pub fn settle_disk() {
    let _ = Command::new("sync").status();
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The median (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Measurements of one tool configuration over all rounds.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub runs: Vec<Measured>,
}

impl Series {
    pub fn push(&mut self, m: Measured) {
        self.runs.push(m);
    }

    pub fn median_secs(&self) -> f64 {
        median(&self.runs.iter().map(Measured::secs).collect::<Vec<_>>())
    }

    pub fn median_cpu_secs(&self) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().filter_map(Measured::cpu_secs).collect();
        (!v.is_empty()).then(|| median(&v))
    }

    /// The slowest run's wall time.
    pub fn worst_secs(&self) -> f64 {
        self.runs
            .iter()
            .map(Measured::secs)
            .fold(f64::NAN, f64::max)
    }

    /// Median user and system CPU seconds (GNU time only).
    pub fn median_user_sys(&self) -> Option<(f64, f64)> {
        let u: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|m| m.cpu.map(|c| c.0))
            .collect();
        let s: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|m| m.cpu.map(|c| c.1))
            .collect();
        (!u.is_empty()).then(|| (median(&u), median(&s)))
    }

    /// The slowest run's user and system CPU seconds.
    pub fn worst_user_sys(&self) -> Option<(f64, f64)> {
        self.runs
            .iter()
            .max_by(|a, b| a.secs().total_cmp(&b.secs()))
            .and_then(|m| m.cpu)
    }

    /// The largest peak RSS of any round, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.runs
            .iter()
            .filter_map(|m| m.max_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }

    /// Every round's wall time, for the stability column.
    pub fn all_secs(&self) -> String {
        self.runs
            .iter()
            .map(|m| format!("{:.2}", m.secs()))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// A markdown table, printed as the benchmark's result (and pasted into docs/benchmarks.md).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![3; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let _ = write!(s, " {c:<w$} |");
            }
            s
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push('|');
        for w in &width {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        }
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }
}

/// `1.23` with two decimals, or `n/a`.
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "n/a".to_string(),
    }
}

/// Bytes in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Total size of the regular files under `dir` (symlinks are not followed).
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(m) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            total += tree_size(&e.path());
        } else if m.is_file() {
            total += m.len();
        }
    }
    total
}

/// Removes a tool's output (ignoring absence).
pub fn remove_tree(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            panic!("remove {}: {e}", dir.display());
        }
    }
}

/// The machine, for the report: CPUs, memory, kernel, the file system under `dir`, and the load.
pub fn machine_description(dir: &Path) -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let fs_line = Command::new("df")
        .args(["-h", "--output=source,fstype,size,avail"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{cpus} CPUs ({cpu_model}), {mem} RAM, Linux {kernel}, {} on {fs_line}; load average {}",
        dir.display(),
        load_average()
    )
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The version line of a tool (`--version`).
pub fn tool_version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Names of the complete segment files (24 hex digits, no suffix) in an archive directory, with
/// their sizes.
pub fn complete_segments(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.insert(name, len);
        }
    }
    out
}

/// Whether two files have the same bytes.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// A comma list of positive numbers from the variable `name` (e.g. `10,70`); `None` when unset or
/// empty. Anything else stops the benchmark, naming the variable and `example`.
pub fn env_list<T>(name: &str, example: &str) -> Option<Vec<T>>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    let v = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    let list = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim().parse::<T>() {
            Ok(n) if n > T::default() => n,
            _ => panic!("{name}={v:?}: expected positive numbers, e.g. {example}"),
        })
        .collect();
    Some(list)
}

/// `WALRELAY_BENCH_SCALES`: a comma list of pgbench scales (e.g. `10,70`), else
/// `WALRELAY_BENCH_SCALE`, else `default`.
pub fn scales(default: u64) -> Vec<u64> {
    env_list("WALRELAY_BENCH_SCALES", "10,70")
        .unwrap_or_else(|| vec![env_u64("WALRELAY_BENCH_SCALE", default)])
}

/// What else runs on the file system of the benchmark while the tools are measured
/// (`WALRELAY_BENCH_BUSY`, a comma list of `quiet`, `fsync`, `meta`, `meta-nofsync`; `quiet` when
/// unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Nothing but the benchmark (and whatever else the machine runs).
    Quiet,
    /// fsync-heavy: pgbench (TPC-B-like, `synchronous_commit = on`, 4 clients) against a second
    /// cluster on the same file system: a WAL fsync per commit.
    Fsync,
    /// Metadata-heavy, as a test suite running many `initdb`s: threads that create trees of small
    /// files, fsync every file and directory, and remove the trees again, without pause.
    Meta,
    /// The same without any fsync (as `initdb -N` followed by `rm -rf`): the neighbour's dirty
    /// data and metadata go to the disk by the kernel's writeback while the tools run.
    MetaNoFsync,
    /// Memory churn, as a compiler next door: a thread mapping 1 GiB, touching every page and
    /// unmapping it again, in a loop (the guest's freed memory goes back to the host and has to be
    /// faulted in again by whoever takes it next).
    Mem,
}

impl Busy {
    pub fn name(self) -> &'static str {
        match self {
            Busy::Quiet => "quiet",
            Busy::Fsync => "fsync",
            Busy::Meta => "meta",
            Busy::MetaNoFsync => "meta-nofsync",
            Busy::Mem => "mem",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Busy::Quiet => "quiet: no neighbour".into(),
            Busy::Fsync => "busy (fsync): pgbench -c 4 -j 1 (TPC-B-like) against a second cluster on the same file system".into(),
            Busy::Mem => "busy (memory): a thread mapping 1 GiB, touching every page, unmapping it, in a loop".into(),
            Busy::Meta | Busy::MetaNoFsync => format!(
                "busy (metadata): {} threads creating trees of {META_DIRS} directories x {META_FILES} files of {} KiB, {}, removing each tree, in a loop, on the same file system",
                meta_threads(),
                META_FILE_BYTES / 1024,
                if self == Busy::Meta {
                    "fsyncing every file and directory"
                } else {
                    "without any fsync"
                }
            ),
        }
    }
}

/// `WALRELAY_BENCH_BUSY`: `quiet`, `fsync`, `meta`, comma separated.
pub fn busy_modes() -> Vec<Busy> {
    match std::env::var("WALRELAY_BENCH_BUSY") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim() {
                "quiet" => Busy::Quiet,
                "fsync" => Busy::Fsync,
                "meta" => Busy::Meta,
                "meta-nofsync" => Busy::MetaNoFsync,
                "mem" => Busy::Mem,
                other => panic!(
                    "WALRELAY_BENCH_BUSY: unknown {other:?} (quiet, fsync, meta, meta-nofsync, mem)"
                ),
            })
            .collect(),
        _ => vec![Busy::Quiet],
    }
}

/// Directories per tree of the metadata neighbour.
const META_DIRS: usize = 8;
/// Files per directory of the metadata neighbour.
const META_FILES: usize = 32;
/// Size of each of its files (initdb's catalog files are mostly 8–16 kB).
const META_FILE_BYTES: usize = 8192;

/// `WALRELAY_BENCH_META_THREADS`: threads of the metadata neighbour (default 2).
pub fn meta_threads() -> usize {
    env_u64("WALRELAY_BENCH_META_THREADS", 2) as usize
}

/// The metadata-heavy neighbour: threads churning small files in `dir` until dropped.
pub struct MetaChurn {
    stop: Arc<AtomicBool>,
    files: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl MetaChurn {
    /// Starts the threads; `sync`: fsync every file and directory.
    pub fn start(dir: &Path, sync: bool) -> MetaChurn {
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(AtomicU64::new(0));
        let threads = (0..meta_threads())
            .map(|t| {
                let (stop, files) = (stop.clone(), files.clone());
                let base = dir.join(format!("churn-{t}"));
                fs::create_dir_all(&base)
                    .unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
                std::thread::spawn(move || churn(&base, sync, &stop, &files))
            })
            .collect();
        MetaChurn {
            stop,
            files,
            threads,
            started: Instant::now(),
        }
    }

    /// Files created, fsynced and removed per second so far.
    pub fn files_per_sec(&self) -> f64 {
        self.files.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

impl Drop for MetaChurn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn churn(base: &Path, sync: bool, stop: &AtomicBool, files: &AtomicU64) {
    let data = vec![0x5au8; META_FILE_BYTES];
    let fsync_dir = |d: &Path| {
        if !sync {
            return;
        }
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    };
    let mut tree = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let root = base.join(format!("t{tree}"));
        tree += 1;
        for d in 0..META_DIRS {
            let dir = root.join(format!("d{d}"));
            if fs::create_dir_all(&dir).is_err() {
                return;
            }
            for f in 0..META_FILES {
                let path = dir.join(format!("f{f}"));
                if let Ok(mut file) = fs::File::create(&path) {
                    let _ = std::io::Write::write_all(&mut file, &data);
                    if sync {
                        let _ = file.sync_all();
                    }
                    files.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            fsync_dir(&dir);
        }
        fsync_dir(&root);
        fsync_dir(base);
        let _ = fs::remove_dir_all(&root);
        fsync_dir(base);
    }
}

/// The memory-churning neighbour ([`Busy::Mem`]), until dropped.
pub struct MemChurn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemChurn {
    pub fn start() -> MemChurn {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut v = vec![0u8; 1 << 30];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                    if i % (64 << 20) == 0 && s.load(Ordering::Relaxed) {
                        break;
                    }
                }
                std::hint::black_box(&v);
                drop(v);
            }
        });
        MemChurn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MemChurn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
