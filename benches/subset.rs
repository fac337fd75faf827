//! Benchmark: `walrelay subset` against PostgreSQL's own logical replication (`CREATE
//! SUBSCRIPTION`), on the same source, the same data and the same target cluster.
//!
//! One source (PostgreSQL 15, `wal_level = logical`) with the four pgbench tables (scale 10 by
//! default, `WALRELAY_BENCH_SCALE`; `pgbench_history` given a primary key, which walrelay
//! requires), and one target cluster with two databases: `wr` for walrelay, `native` for the
//! subscription. Every round, alternating which goes first:
//!
//! * **Initial copy** (`copy`): walrelay `subset run -t … -j 2 -E <source position>` from nothing
//!   (its time includes preflight, creating the tables from the source's catalogs, the slot, the
//!   copy and the exit) against `CREATE SUBSCRIPTION … PUBLICATION …` into tables created
//!   beforehand with `pg_dump -s` (not timed), timed until every table is `ready` in
//!   `pg_subscription_rel` (two table sync workers: `max_sync_workers_per_subscription`'s
//!   default, and walrelay's `-j 2`; the target's `wal_retrieve_retry_interval` is 200 ms so that
//!   the launcher's throttle does not delay a subscription created right after the last one).
//! * **Apply** (`apply`): with walrelay stopped and the subscription disabled, `pgbench -c 4 -j 2 -t
//!   10000` (40 000 transactions; `WALRELAY_BENCH_PGBENCH_TXNS` per client) writes a backlog, then a
//!   marker transaction; timed: walrelay
//!   `subset run -E <position before the marker>` until it exits, and `ALTER SUBSCRIPTION … ENABLE`
//!   until the subscription's replication origin is past the marker. Both apply asynchronously
//!   committed transactions on the target (the subscription's `synchronous_commit = off` default).
//!
//! The ratio reported is the median of the rounds' ratios (walrelay's time over the
//! subscription's in the same round), which the machine's load drifting between rounds affects
//! least. After each part the three databases are compared (row counts and sums of every pgbench
//! table): a benchmark must not time a tool that writes the wrong thing. Run with
//! `cargo bench --bench subset`; results in `docs/benchmarks.md`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    fmt_opt, load_average, run_measured, settle_disk, tool_command, Measured, Series, Table,
};
use walrelay_testkit::{Cluster, Lsn, PgBench};

const DEFAULT_SCALE: u64 = 10;
const TABLES: [&str; 4] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
    "public.pgbench_history",
];
const PUBLICATION: &str = "bench_pub";
const SUBSCRIPTION: &str = "bench_sub";
const SUBSET: &str = "bench";
/// How often the subscription's progress is looked at.
const POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(1800);

fn with_db(conninfo: &str, db: &str) -> String {
    conninfo.replace("dbname=postgres", &format!("dbname={db}"))
}

fn walrelay_run(src: &Cluster, tgt: &Cluster, endpos: Lsn) -> Command {
    let mut cmd = tool_command(&common::walrelay_bin());
    cmd.args(["subset", "run", "-d"])
        .arg(src.conninfo())
        .arg("--target")
        .arg(with_db(&tgt.conninfo(), "wr"))
        .args(["--name", SUBSET, "-j", "2", "-E"])
        .arg(endpos.to_string());
    for t in TABLES {
        cmd.args(["-t", t]);
    }
    cmd
}

fn walrelay_drop(src: &Cluster, tgt: &Cluster) {
    let mut cmd = tool_command(&common::walrelay_bin());
    cmd.args(["subset", "drop", "-d"])
        .arg(src.conninfo())
        .arg("--target")
        .arg(with_db(&tgt.conninfo(), "wr"))
        .args(["--name", SUBSET, "--drop-tables"]);
    let out = cmd.output().expect("run walrelay subset drop");
    assert!(
        out.status.success(),
        "subset drop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn native(tgt: &Cluster, sql: &str) -> String {
    tgt.try_psql_in("native", sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `done` holds, polling; the time from `began`.
fn timed_until(began: Instant, what: &str, mut done: impl FnMut() -> bool) -> Measured {
    loop {
        if done() {
            return Measured {
                wall: began.elapsed(),
                max_rss_kib: None,
                cpu: None,
            };
        }
        assert!(began.elapsed() < LIMIT, "{what} did not finish");
        std::thread::sleep(POLL);
    }
}

/// Drops the subscription and its tables, then creates the tables again, empty.
fn reset_native(src: &Cluster, tgt: &Cluster) {
    native(tgt, &format!("DROP SUBSCRIPTION IF EXISTS {SUBSCRIPTION}"));
    native(
        tgt,
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
    );
    let mut dump = Command::new(src.install().tools().tool("pg_dump"));
    dump.args(["-s", "-d", &src.conninfo()]);
    for t in TABLES {
        dump.args(["-t", t]);
    }
    let out = dump.output().expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    native(tgt, &String::from_utf8_lossy(&out.stdout));
}

fn native_copy(src: &Cluster, tgt: &Cluster) -> Measured {
    let began = Instant::now();
    native(
        tgt,
        &format!(
            "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION '{}' PUBLICATION {PUBLICATION}",
            src.conninfo()
        ),
    );
    timed_until(began, "the subscription's initial copy", || {
        native(
            tgt,
            "SELECT count(*) FILTER (WHERE srsubstate <> 'r') || '/' || count(*) FROM pg_subscription_rel",
        ) == format!("0/{}", TABLES.len())
    })
}

/// The subscription's applied position (its replication origin).
fn native_applied(tgt: &Cluster) -> Option<Lsn> {
    native(
        tgt,
        &format!(
            "SELECT remote_lsn FROM pg_replication_origin_status o JOIN pg_subscription s \
               ON o.external_id = 'pg_' || s.oid WHERE s.subname = '{SUBSCRIPTION}'"
        ),
    )
    .trim()
    .parse()
    .ok()
}

fn native_catch_up(tgt: &Cluster, marker: Lsn) -> Measured {
    let began = Instant::now();
    native(tgt, &format!("ALTER SUBSCRIPTION {SUBSCRIPTION} ENABLE"));
    timed_until(began, "the subscription's catch-up", || {
        native_applied(tgt).is_some_and(|l| l > marker)
    })
}

fn native_disable(src: &Cluster, tgt: &Cluster) {
    native(tgt, &format!("ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE"));
    // The slot is released once the walsender is gone.
    let began = Instant::now();
    while src.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SUBSCRIPTION}' AND active"
    )) != "0"
    {
        assert!(began.elapsed() < LIMIT, "the subscription did not stop");
        std::thread::sleep(POLL);
    }
}

/// Row counts and sums of every table: the same on the source and both targets.
fn fingerprint(c: &Cluster, db: &str) -> String {
    c.try_psql_in(
        db,
        "SELECT (SELECT count(*) || ':' || sum(abalance) FROM pgbench_accounts) || ' ' || \
                (SELECT count(*) || ':' || sum(bbalance) FROM pgbench_branches) || ' ' || \
                (SELECT count(*) || ':' || sum(tbalance) FROM pgbench_tellers) || ' ' || \
                (SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history)",
    )
    .unwrap_or_else(|e| panic!("fingerprint of {db}: {e}"))
}

fn assert_same(src: &Cluster, tgt: &Cluster, when: &str) {
    let s = fingerprint(src, "postgres");
    assert_eq!(s, fingerprint(tgt, "wr"), "walrelay's copy differs {when}");
    assert_eq!(
        s,
        fingerprint(tgt, "native"),
        "the subscription's copy differs {when}"
    );
}

fn main() {
    if !common::invoked_by_cargo_bench("subset") {
        return;
    }
    let rounds = common::rounds();
    let scale = common::env_u64("WALRELAY_BENCH_SCALE", DEFAULT_SCALE) as u32;
    let pgbench_txns = common::env_u64("WALRELAY_BENCH_PGBENCH_TXNS", 10_000);
    let work = common::work_dir("subset");
    println!("# walrelay subset vs CREATE SUBSCRIPTION");
    println!("machine: {}", common::machine_description(work.path()));
    let src = Cluster::builder()
        .name("bench-subset-src")
        .wal_level("logical")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    // The subscription launcher starts workers at most every wal_retrieve_retry_interval (5 s):
    // a subscription created less than that after the last one's workers started would wait for
    // it, which is not the copy's speed.
    let tgt = Cluster::builder()
        .name("bench-subset-tgt")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .conf("wal_retrieve_retry_interval = '200ms'")
        .start();
    tgt.psql("CREATE DATABASE wr");
    tgt.psql("CREATE DATABASE native");
    println!(
        "tools: {} | {}",
        common::tool_version(&common::walrelay_bin()),
        src.psql("SHOW server_version")
    );
    src.pgbench_init(scale);
    src.psql("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
    src.psql(&format!(
        "CREATE PUBLICATION {PUBLICATION} FOR TABLE {}",
        TABLES.join(", ")
    ));
    src.psql("CHECKPOINT");
    println!(
        "data: pgbench scale {scale} ({}); {rounds} rounds; backlog: pgbench -c 4 -j 2 -t {pgbench_txns}",
        src.psql("SELECT pg_size_pretty(sum(pg_total_relation_size(c))) FROM unnest(ARRAY['pgbench_accounts','pgbench_branches','pgbench_tellers','pgbench_history']::regclass[]) c")
    );

    let (mut wr_copy, mut nat_copy, mut wr_apply, mut nat_apply) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let mut backlog_txns = Vec::new();
    let mut backlog_bytes = Vec::new();
    for round in 0..rounds {
        walrelay_drop(&src, &tgt);
        reset_native(&src, &tgt);
        let walrelay_first = round % 2 == 0;
        let mut line = format!("round {}:", round + 1);
        for first in [true, false] {
            settle_disk();
            if first == walrelay_first {
                let log = work.path().join(format!("copy-{round}.log"));
                let m = run_measured(
                    "walrelay subset run (copy)",
                    walrelay_run(&src, &tgt, src.current_wal_lsn()),
                    &log,
                );
                line.push_str(&format!(
                    " copy walrelay {:.2}s (CPU {}s)",
                    m.secs(),
                    fmt_opt(m.cpu_secs(), 2)
                ));
                wr_copy.push(m);
            } else {
                let m = native_copy(&src, &tgt);
                line.push_str(&format!(" copy native {:.2}s", m.secs()));
                nat_copy.push(m);
            }
        }
        assert_same(&src, &tgt, "after the initial copy");

        native_disable(&src, &tgt);
        let before = src.current_wal_lsn();
        let run = src.pgbench_run(&PgBench::transactions(pgbench_txns).clients(4).jobs(2));
        let marker = src.current_wal_lsn();
        src.psql("UPDATE pgbench_branches SET filler = 'marker' WHERE bid = 1");
        backlog_txns.push(run.transactions as f64);
        backlog_bytes.push(marker.saturating_sub(before) as f64);
        for first in [true, false] {
            settle_disk();
            if first == walrelay_first {
                let log = work.path().join(format!("apply-{round}.log"));
                let m = run_measured(
                    "walrelay subset run (apply)",
                    walrelay_run(&src, &tgt, marker),
                    &log,
                );
                line.push_str(&format!(
                    " apply walrelay {:.2}s (CPU {}s)",
                    m.secs(),
                    fmt_opt(m.cpu_secs(), 2)
                ));
                wr_apply.push(m);
            } else {
                let m = native_catch_up(&tgt, marker);
                line.push_str(&format!(" apply native {:.2}s", m.secs()));
                nat_apply.push(m);
            }
        }
        // walrelay stopped at the marker's position; the marker itself comes with one more run.
        let end = src.current_wal_lsn();
        let _ = run_measured(
            "walrelay subset run (marker)",
            walrelay_run(&src, &tgt, end),
            &work.path().join(format!("marker-{round}.log")),
        );
        assert_same(&src, &tgt, "after the catch-up");
        println!(
            "{line}; backlog {} transactions; load {}",
            run.transactions,
            load_average()
        );
    }

    let txns = common::median(&backlog_txns);
    let bytes = common::median(&backlog_bytes);
    let rows_copied: f64 = src
        .psql("SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE relname LIKE 'pgbench_%'")
        .trim()
        .parse()
        .unwrap_or(0.0);
    let mut table = Table::new(&[
        "part",
        "tool",
        "median s",
        "rounds s",
        "throughput",
        "time ratio (walrelay / native, median of rounds)",
        "walrelay CPU s",
        "walrelay peak RSS MiB",
    ]);
    for (part, wr, nat, unit, amount) in [
        ("initial copy", &wr_copy, &nat_copy, "rows/s", rows_copied),
        ("apply a backlog", &wr_apply, &nat_apply, "txn/s", txns),
    ] {
        let ratios: Vec<f64> = wr
            .runs
            .iter()
            .zip(&nat.runs)
            .map(|(w, n)| w.secs() / n.secs())
            .collect();
        let ratio = common::median(&ratios);
        for (tool, s, mine) in [
            ("walrelay subset", wr, true),
            ("CREATE SUBSCRIPTION", nat, false),
        ] {
            table.row(vec![
                part.to_string(),
                tool.to_string(),
                format!("{:.2}", s.median_secs()),
                s.all_secs(),
                format!("{:.0} {unit}", amount / s.median_secs()),
                if mine {
                    format!("{ratio:.2}")
                } else {
                    "1.00".into()
                },
                if mine {
                    fmt_opt(s.median_cpu_secs(), 2)
                } else {
                    "(in the server)".into()
                },
                if mine {
                    fmt_opt(s.peak_rss_mib(), 1)
                } else {
                    "-".into()
                },
            ]);
        }
    }
    println!();
    println!(
        "initial copy: {rows_copied:.0} rows; backlog: median {txns:.0} pgbench transactions, {:.0} MB of WAL",
        bytes / 1e6
    );
    println!("{}", table.render());
    println!("load average at the end: {}", load_average());
}
