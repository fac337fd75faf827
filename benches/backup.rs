//! Benchmark: stored base backups — `walrelay backup` against `pg_basebackup -Ft -z`, and
//! `walrelay bootstrap --from-archive` against a plain copy of the same data.
//!
//! One throwaway PostgreSQL cluster holds a pgbench data set (scale 30 ≈ 450 MB by default;
//! `WALRELAY_BENCH_SCALE` changes it). Each round, alternating which goes first:
//!
//! * backup: `walrelay backup -d CONNINFO -D ARCHIVE -c fast` (zstd, manifest checked as the
//!   tar streams are written, the backup's WAL streamed and stored with it, descriptor last, all
//!   fsynced) against `pg_basebackup -Ft -z -X fetch -c fast -D DIR` (gzip tar files, WAL in the
//!   tar, manifest written but not checked);
//! * restore: `walrelay bootstrap --from-archive ARCHIVE --target immediate -D X` (every object's
//!   SHA-256 and every file's manifest checksum checked, recovery configuration written, fsynced)
//!   against `cp -a` of a directory walrelay restored before (the same bytes, at rest: the
//!   cheapest way to put them in place), followed by `sync`.
//!
//! Before every run all file systems are synced. The first restored directory is checked by
//! pg_verifybackup (untimed). Run with `cargo bench --bench backup`; results in
//! `docs/benchmarks.md`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{
    fmt_opt, load_average, mib, remove_tree, run_measured, settle_disk, tool_command, tree_size,
    Series, Table,
};
use walrelay_testkit::{Cluster, StopMode, VerifyBackupOptions};

/// pgbench scale of the data set: 30 gives about 450 MB.
const DEFAULT_SCALE: u64 = 30;

fn walrelay_backup(conninfo: &str, archive: &Path, label: &str) -> Command {
    let mut cmd = tool_command(&common::walrelay_bin());
    cmd.arg("backup")
        .arg("-d")
        .arg(conninfo)
        .arg("-D")
        .arg(archive)
        .args(["-c", "fast", "-l", label]);
    cmd
}

fn pg_basebackup_tar(cluster: &Cluster, conninfo: &str, target: &Path) -> Command {
    let mut cmd = tool_command(&cluster.install().tools().pg_basebackup());
    cmd.arg("-d")
        .arg(conninfo)
        .args(["-Ft", "-z", "-X", "fetch", "-c", "fast", "-D"])
        .arg(target);
    cmd
}

fn walrelay_restore(archive: &Path, label: &str, target: &Path) -> Command {
    let mut cmd = tool_command(&common::walrelay_bin());
    cmd.arg("bootstrap")
        .arg("--from-archive")
        .arg(archive)
        .args(["--backup", label, "--target", "immediate", "-D"])
        .arg(target);
    cmd
}

/// `cp -a FROM TO && sync`: the same bytes in place, made durable.
fn plain_copy(from: &Path, to: &Path) -> Command {
    let mut cmd = tool_command(Path::new("sh"));
    cmd.arg("-c")
        .arg("cp -a \"$0\" \"$1\" && sync")
        .arg(from)
        .arg(to);
    cmd
}

fn main() {
    if !common::invoked_by_cargo_bench("backup") {
        return;
    }
    let rounds = common::rounds();
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE) as u32;
    let work = common::work_dir("backup");
    println!("# walrelay backup vs pg_basebackup -Ft -z; bootstrap --from-archive vs cp -a");
    println!("machine: {}", common::machine_description(work.path()));
    let mut cluster = Cluster::builder()
        .name("bench-backup")
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
    let archive = work.path().join("archive");
    std::fs::create_dir_all(&archive).expect("create the archive directory");

    // Backups.
    let mut wr_backup = Series::default();
    let mut pg_backup = Series::default();
    let mut stored = (0u64, 0u64);
    for round in 0..rounds {
        let walrelay_first = round % 2 == 0;
        let mut line = format!("backup round {}:", round + 1);
        for walrelay in [walrelay_first, !walrelay_first] {
            settle_disk();
            if walrelay {
                let label = format!("r{round}");
                let log = work.path().join(format!("walrelay-backup-{round}.log"));
                let m = run_measured(
                    "walrelay backup",
                    walrelay_backup(&conninfo, &archive, &label),
                    &log,
                );
                line.push_str(&format!(
                    " walrelay {:.2}s (CPU {}s)",
                    m.secs(),
                    fmt_opt(m.cpu_secs(), 2)
                ));
                wr_backup.push(m);
                if round == 0 {
                    stored.0 = tree_size(&archive.join("backups").join(&label));
                }
            } else {
                let target = work.path().join(format!("pg-tar-{round}"));
                let log = work.path().join(format!("pg_basebackup-{round}.log"));
                let m = run_measured(
                    "pg_basebackup -Ft -z",
                    pg_basebackup_tar(&cluster, &conninfo, &target),
                    &log,
                );
                line.push_str(&format!(
                    " pg_basebackup -Ft -z {:.2}s (CPU {}s)",
                    m.secs(),
                    fmt_opt(m.cpu_secs(), 2)
                ));
                pg_backup.push(m);
                if round == 0 {
                    stored.1 = tree_size(&target);
                }
                remove_tree(&target);
            }
        }
        println!("{line}; load {}", load_average());
    }

    // Restores, from the first stored backup. The plain copy copies what walrelay restored in
    // the first round (kept aside, never started): exactly the same bytes.
    cluster.stop(StopMode::Fast);
    let reference = work.path().join("reference");
    let log = work.path().join("walrelay-restore-reference.log");
    run_measured(
        "walrelay bootstrap --from-archive",
        walrelay_restore(&archive, "r0", &reference),
        &log,
    );
    walrelay_testkit::pg_verifybackup(&reference, &VerifyBackupOptions::default())
        .unwrap_or_else(|e| panic!("pg_verifybackup rejects the restored directory: {e}"));
    let data_bytes = tree_size(&reference);
    let mut wr_restore = Series::default();
    let mut copy = Series::default();
    for round in 0..rounds {
        let walrelay_first = round % 2 == 0;
        let mut line = format!("restore round {}:", round + 1);
        for walrelay in [walrelay_first, !walrelay_first] {
            settle_disk();
            if walrelay {
                let target = work.path().join(format!("restored-{round}"));
                let log = work.path().join(format!("walrelay-restore-{round}.log"));
                let m = run_measured(
                    "walrelay bootstrap --from-archive",
                    walrelay_restore(&archive, "r0", &target),
                    &log,
                );
                line.push_str(&format!(
                    " walrelay {:.2}s (CPU {}s)",
                    m.secs(),
                    fmt_opt(m.cpu_secs(), 2)
                ));
                wr_restore.push(m);
                remove_tree(&target);
            } else {
                let target = work.path().join(format!("copy-{round}"));
                let log = work.path().join(format!("copy-{round}.log"));
                let m = run_measured("cp -a", plain_copy(&reference, &target), &log);
                line.push_str(&format!(" cp -a {:.2}s", m.secs()));
                copy.push(m);
                remove_tree(&target);
            }
        }
        println!("{line}; load {}", load_average());
    }

    let mut table = Table::new(&[
        "job",
        "median s",
        "rounds s",
        "MB/s of data",
        "ratio (walrelay / this)",
        "median CPU s",
        "peak RSS MiB",
    ]);
    let rows: Vec<(&str, &Series, &Series)> = vec![
        ("walrelay backup -c fast (zstd)", &wr_backup, &wr_backup),
        (
            "pg_basebackup -Ft -z -X fetch -c fast",
            &pg_backup,
            &wr_backup,
        ),
        (
            "walrelay bootstrap --from-archive",
            &wr_restore,
            &wr_restore,
        ),
        ("cp -a + sync", &copy, &wr_restore),
    ];
    for (name, s, walrelay) in rows {
        let secs = s.median_secs();
        table.row(vec![
            name.to_string(),
            format!("{secs:.2}"),
            s.all_secs(),
            format!("{:.0}", data_bytes as f64 / 1e6 / secs),
            format!("{:.2}", walrelay.median_secs() / secs),
            fmt_opt(s.median_cpu_secs(), 2),
            fmt_opt(s.peak_rss_mib(), 1),
        ]);
    }
    println!();
    println!(
        "restored data directory {} (with the backup's WAL); stored: walrelay {} (zstd, with its WAL), pg_basebackup -Ft -z {}",
        mib(data_bytes),
        mib(stored.0),
        mib(stored.1)
    );
    println!("{}", table.render());
    println!("load average at the end: {}", load_average());
}
