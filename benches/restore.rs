//! Benchmark: recovery through `restore_command`. Two parts (`WALRELAY_BENCH_ONLY=local` or
//! `bucket`; both by default):
//!
//! * `local` ([`local`]): ≥ 1 GB of WAL recovered from a local archive directory, `cp` against
//!   `walrelay restore` from a plain and from a zstd archive, with an LSN and data oracle;
//! * `bucket` (below): `walrelay restore` from a bucket, with and without `--prefetch`, against
//!   `cp` from a local archive directory.
//!
//! The bucket part: one throwaway PostgreSQL cluster (16 MB segments) and one SeaweedFS server on
//! loopback (the testkit's `S3Server`). A base backup is taken (`pg_basebackup -X fetch`), then
//! `pgbench -i` (scale 25 by default, `WALRELAY_BENCH_SCALE`) and a `pgbench -T` run write the WAL
//! to replay, about 500 MB. Two receivers archive it at the same time from their own slots:
//!
//! * `walrelay receive -D DIR` — a plain local archive, for `restore_command = 'cp DIR/%f %p'`;
//! * `walrelay receive -D s3://bucket/bench --spool SPOOL --compress zstd` — the bucket.
//!
//! Every round recovers a fresh copy of the backup to the end of the archive
//! (`recovery_target_action = promote`) with each restore_command, alternating the order:
//!
//! * `cp` from the local directory (the floor: no network, no decompression);
//! * `walrelay restore %f %p -D s3://…` (one listing and one fetch per segment);
//! * `walrelay restore %f %p -D s3://… --prefetch 8` (the next 8 segments fetched in the
//!   background into `pg_wal/.walrelay-prefetch`).
//!
//! The time is from `pg_ctl start` to the end of recovery (`pg_is_in_recovery()` false). Loopback
//! has no network latency: against a real bucket every fetch also pays a round trip (tens of
//! milliseconds), which prefetch hides and the plain fetch does not. `WALRELAY_BENCH_S3_DELAY_MS`
//! is not simulated; the numbers here are the CPU and IO side only.
//!
//! Run with `cargo bench --bench restore`; results in `docs/benchmarks.md`.

mod common;
// The local part: `cp` against `walrelay restore` from a directory, plain and zstd.
#[path = "restore_local/mod.rs"]
mod local;
// The integration tests' recovery helpers (copying a backup as the server needs it).
#[allow(dead_code)]
#[path = "../tests/support/recovery.rs"]
mod recovery;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{load_average, median, tool_command, Table};
use walrelay_testkit::{Cluster, PgBench, S3Server};

/// pgbench scale of the WAL to replay.
const DEFAULT_SCALE: u64 = 25;
/// Segments prefetched in the `--prefetch` runs.
const PREFETCH: u32 = 8;

fn main() {
    if !common::invoked_by_cargo_bench("restore") {
        return;
    }
    let rounds = common::rounds();
    if common::part_selected("local") {
        local::run(rounds);
    }
    if common::part_selected("bucket") {
        bucket_part(rounds);
    }
}

/// The bucket part: `walrelay restore` from S3 with and without `--prefetch`, against `cp`.
fn bucket_part(rounds: usize) {
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE);

    let server = S3Server::start("walrelay-bench").expect("start SeaweedFS");
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let url = server.url("bench");
    let primary = Cluster::builder()
        .name("bench-restore")
        .conf("wal_keep_size = '4GB'")
        .conf("max_wal_size = '4GB'")
        .start();
    let work = common::work_dir("restore");
    let bin = work.path().join("walrelay");
    fs::copy(common::walrelay_bin(), &bin).expect("copy walrelay");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod walrelay");
    for dir in ["local", "spool"] {
        let d = work.path().join(dir);
        fs::create_dir_all(&d).expect("create archive directory");
        chown_like(&d, primary.data_dir());
    }
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod work dir");

    let conninfo = primary.replication_conninfo();
    let mut receivers = Vec::new();
    for (slot, dest, extra) in [
        ("bench_local", work.path().join("local"), vec![]),
        (
            "bench_s3",
            work.path().join("spool"),
            vec!["--compress", "zstd"],
        ),
    ] {
        primary.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
        let mut cmd = tool_command(&bin);
        cmd.args(["receive", "-d", &conninfo, "-S", slot]);
        if slot == "bench_s3" {
            cmd.args(["-D", &url, "--spool"]).arg(&dest);
        } else {
            cmd.arg("-D").arg(&dest);
        }
        cmd.args(extra);
        let log = work.path().join(format!("{slot}.log"));
        receivers.push(common::MeasuredChild::spawn(slot, cmd, &log));
    }

    let backup = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);
    let started = Instant::now();
    primary.pgbench_init(scale as u32);
    primary.pgbench_run(&PgBench::duration(Duration::from_secs(10)).clients(2));
    let end = primary.switch_wal();
    let last = walrelay_protocol::SegmentId::new(
        walrelay_protocol::TimelineId(1),
        walrelay_protocol::WalSegmentSize::default().segno(walrelay_protocol::Lsn(end.0 - 1)),
    )
    .file_name(walrelay_protocol::WalSegmentSize::default());
    println!(
        "wrote {:.0} MB of WAL in {:.0} s; waiting for both archives to hold {last}",
        end.0 as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let spool = work.path().join("spool");
    let local = work.path().join("local");
    walrelay_testkit::poll::wait_until(
        "both archives complete",
        || local.join(&last).is_file() && bucket_has(&url, &last) && !spool.join(&last).is_file(),
        || {
            format!(
                "local: {}, bucket has it: {}",
                local.join(&last).is_file(),
                bucket_has(&url, &last)
            )
        },
    );
    let segments = fs::read_dir(&local)
        .expect("list local archive")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().len() == 24))
        .count();
    for r in receivers {
        r.interrupt();
        let _ = r.wait_with_deadline(Duration::from_secs(60));
    }

    let variants: Vec<(&str, String)> = vec![
        (
            "cp from a local directory",
            format!("cp {}/%f %p", local.display()),
        ),
        (
            "walrelay restore from the bucket",
            format!("{} restore %f %p -D {url}", bin.display()),
        ),
        (
            "walrelay restore from the bucket, --prefetch 8",
            format!(
                "{} restore %f %p -D {url} --prefetch {PREFETCH}",
                bin.display()
            ),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let secs = recover(&primary, &backup, &variants[i].1, round, i);
            println!("round {round}: {}: {secs:.2} s", variants[i].0);
            times[i].push(secs);
        }
    }

    let mut table = Table::new(&[
        "restore_command",
        "median s",
        "per segment ms",
        "vs cp",
        "rounds",
    ]);
    let base = median(&times[0]);
    for (i, (label, _)) in variants.iter().enumerate() {
        let m = median(&times[i]);
        table.row(vec![
            label.to_string(),
            format!("{m:.2}"),
            format!("{:.1}", m * 1000.0 / segments.max(1) as f64),
            format!("{:.2}x", m / base),
            times[i]
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    println!(
        "\nRecovery of {segments} segments of 16 MB ({:.0} MB of WAL, pgbench scale {scale}) to the end of the archive; {rounds} rounds, load {}\n",
        end.0 as f64 / 1e6,
        load_average()
    );
    println!("{}", table.render());
    drop(server);
}

/// Whether the bucket holds the segment (any compression), asked with `walrelay restore` itself.
fn bucket_has(url: &str, name: &str) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tool_command(&common::walrelay_bin())
        .args(["restore", name])
        .arg(dir.path().join("x"))
        .args(["-D", url])
        .output()
        .expect("run walrelay restore");
    out.status.code() == Some(0)
}

/// Gives `dir` the owner of `like` (the server runs as that user and writes the restored files).
/// Waits until the recovering server `c` has ended recovery and promoted.
fn wait_until_promoted(c: &Cluster) {
    walrelay_testkit::poll::wait_until(
        "the end of recovery",
        || {
            c.try_psql("SELECT pg_is_in_recovery()")
                .is_ok_and(|v| v == "f")
        },
        || c.log_tail(20),
    );
}

fn chown_like(dir: &Path, like: &Path) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(like).expect("stat data directory");
    std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid())).expect("chown");
}

/// Recovers a copy of `backup` with `restore_command` to the end of the archive; seconds from
/// start to the end of recovery.
fn recover(primary: &Cluster, backup: &Path, restore_command: &str, round: usize, i: usize) -> f64 {
    let data: PathBuf = primary.scratch_path(&format!("recover-{round}-{i}"));
    recovery::copy_dir(backup, &data);
    File::create(data.join("recovery.signal")).expect("recovery.signal");
    let started = Instant::now();
    let c = primary
        .standby(&data)
        .name(&format!("recover-{round}-{i}"))
        .conf(&format!("restore_command = '{restore_command}'"))
        .conf("recovery_target_action = 'promote'")
        .start();
    wait_until_promoted(&c);
    let secs = started.elapsed().as_secs_f64();
    drop(c);
    common::remove_tree(&data);
    secs
}
