//! `walrelay subset` end to end: the real binary between real PostgreSQL clusters, judged by an
//! independent comparison of every row (psql on both sides) besides walrelay's own `verify`.
//!
//! | test | what |
//! |---|---|
//! | `pgbench_15_to_15_survives_kill_9` | 3 of the 4 pgbench tables under pgbench load; kill -9 during the initial copy and three times while streaming, one SIGTERM while streaming; then `-E`: every row equal, `pgbench_history` count exact, `verify` green, the fourth table absent on the target, the slot confirmed up to the end |
//! | `pgbench_newer_source_into_older_target` | the same under load from PostgreSQL 17 into 12, with one kill while streaming; skipped with a note unless `WALRELAY_PG_MAJORS` lists both; `WALRELAY_SUBSET_PAIRS=10:18,18:10` runs other pairs |
//! | `edges_toast_truncate_tables_added_and_removed` | a table without a key refused at preflight (nothing created, the source keeps taking writes); `--target` reaching the source database itself refused (nothing created), another database of the same server accepted; a second subset into a table the first writes refused; `--check` creates nothing; an unchanged TOASTed value kept through updates of other columns; TRUNCATE; a table added to a running subset copied at its own sync point and one removed; a subset table dropped on the target copied again; idle subset tables still let the slot advance; `status --json`, metrics, `verify`, `drop --drop-tables` |
//! | `schema_changes_under_load_stops_resync_and_sequences_at_cut_over` | under pgbench-style load a column added with a default (existing rows get it, never NULL), one without, one dropped — followed; a type change stops naming table, column and choices, altering the target too goes on; a column rename stops, `--resync` copies that table again while the other is not copied again; a volatile default stops; a table renamed while streaming stops naming its new name (and again at preflight), renamed back its change made meanwhile applies, running with the new name goes on; a chosen sequence copied while streaming, and `drop` leaves `nextval` on the target beyond the source's sequences |
//! | `conflicts_stop_skip_lsn_resumes_on_conflict_records_replica_identity_full` | `--replica-identity-full` says its cost at `--check` and sets FULL; a DELETE of one of two identical rows removes one, json matched by text; an INSERT conflict stops naming table, key, commit LSN and xid, `--skip-lsn` leaves that transaction out and records it; an UPDATE of a missing row stops, `--on-conflict skip` and `upsert` resolve and record each case; `status` counts them |
//! | `a_big_transaction_is_streamed_spilled_and_applied_atomically` | protocol-2 streaming (`logical_decoding_work_mem` 64 kB): an aborted streamed transaction discarded, a rolled-back savepoint dropped, a `WALRELAY_SUBSET_BIG_ROWS` (default 200 000) row transaction never seen partly on the target, walrelay's peak RSS reported and under 100 MB, spill files removed |
//! | `a_lost_slot_is_named_and_resync_all_copies_again` | a slot invalidated by `max_slot_wal_keep_size`, then one dropped: each stop names the slot, why, and `--resync-all`, which copies every table again under a new slot |
//! | `a_full_target_disk_is_waited_out` | the target table's tablespace full (a 4 MB tmpfs) during a 6000-row transaction: retried with a growing delay, nothing of it on the target meanwhile, applied whole once the tmpfs is grown |
//! | `the_targets_idle_session_timeout_spares_walrelays_sessions` | a target database with `idle_session_timeout = 1s`: the lock and apply sessions outlive a quiet source, no reconnect |
//! | `a_dropped_publication_stops_the_run_and_resync_all_recovers` | the subset's publication dropped while streaming (PostgreSQL 15: the source's error; 18: its "skipped loading publication" warning, a silent loss otherwise): the run stops naming it and `--resync-all`, nothing applied or confirmed past it; a plain rerun refused at preflight; `--resync-all` brings every row; the table taken out of the publication by hand: the running subset stops naming it, so does the next run's preflight, `--resync` of it brings its rows |
//! | `the_targets_foreign_keys_and_triggers_do_not_fire_for_replicated_rows` | target tables with a cascading foreign key and a trigger refusing every row: the copy (child before parent), a cascading delete and updates applied as a replica, every row equal |
//! | `partitioned_tables_on_either_side` | a partitioned source table (a sub-partitioned partition among its partitions) copied into one plain target table, then inserts through the parent and into a partition, rows moved between partitions, a partition created and a column added while streaming; plain source tables into partitioned target tables made by hand, one under REPLICA IDENTITY FULL with two rows sharing a ctid in different partitions (a delete removes one): every row equal, `verify` green; a partitioned table listed with one of its partitions refused; with the matrix from 13 into 10, and a 12 source refused naming the fix |
//! | `a_failover_slot_survives_a_promotion` | PostgreSQL 17+ (the newest of `WALRELAY_PG_MAJORS` from 17, else skipped): `--failover` slot synced to a standby (`sync_replication_slots`), the primary crashes, the standby is promoted, `run` goes on there through the host list; every row equal |
//! | `slot_creation_names_the_transactions_it_waits_for` | a prepared transaction and a session holding an xid on the source: the first run names both (gid; pid, role, database, state) while the slot waits for them, and streams once they end |
//! | `a_column_added_and_dropped_while_the_target_is_behind_is_followed` | a column added, used and dropped on the source while walrelay did not run: followed (the source's values in the rows it sent, NULL in older rows, until the DROP drops it on the target); one added and renamed instead stops naming `--resync`, which brings every row |

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use walrelay_testkit::{matrix_includes, Cluster, Lsn, PgBench, StopMode};

use support::scratch_mount::Tmpfs;
use support::walrelay_cmd::{self, subset_args as args, Walrelay};
use support::{exit_code, poll};

/// The pgbench tables walrelay copies; `pgbench_tellers` stays behind.
const PGBENCH_TABLES: [&str; 3] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_history",
];

/// A source: `wal_level = logical`, no fsync (its durability is not under test), and WAL kept
/// long enough for the slot.
fn source(name: &str, major: u32) -> Cluster {
    Cluster::builder()
        .name(name)
        .major(major)
        .wal_level("logical")
        .fsync(false)
        .conf("max_wal_size = '1GB'")
        .start()
}

fn target(name: &str, major: u32) -> Cluster {
    Cluster::builder()
        .name(name)
        .major(major)
        .fsync(false)
        .start()
}

/// `-t T` for each table.
fn table_args(tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .flat_map(|t| ["-t".to_string(), t.to_string()])
        .collect()
}

fn with(mut a: Vec<String>, more: &[String]) -> Vec<String> {
    a.extend_from_slice(more);
    a
}

/// Every row of a table as text, ordered by the whole row.
fn rows(c: &Cluster, table: &str) -> Vec<Vec<String>> {
    c.psql_rows(&format!("SELECT * FROM {table} AS r ORDER BY r::text"))
}

/// The independent comparison: every row of every table equal on both sides.
fn assert_same_rows(src: &Cluster, tgt: &Cluster, tables: &[&str]) {
    for t in tables {
        let (a, b) = (rows(src, t), rows(tgt, t));
        assert_eq!(a.len(), b.len(), "{t}: row counts differ");
        if a != b {
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            panic!("{t}: rows differ, first at {first:?}");
        }
    }
}

fn lsn(c: &Cluster, sql: &str) -> Option<Lsn> {
    let v = c.psql(sql);
    v.trim().parse().ok()
}

fn slot_confirmed(src: &Cluster, name: &str) -> Option<Lsn> {
    lsn(
        src,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay_{name}'"),
    )
}

/// No publication and no slot on the source, and each of the target's counts 0.
fn assert_nothing_left(src: &Cluster, tgt: &Cluster, target_counts: &[&str]) {
    assert_eq!(src.psql("SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(src.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    for q in target_counts {
        assert_eq!(tgt.psql(q), "0", "{q}");
    }
}

/// SIGTERM, and a clean exit.
fn stop(w: &mut Walrelay) {
    w.stop_cleanly(poll::timeout());
}

/// Waits until the run logs that it streams.
fn wait_streaming(w: &mut Walrelay) {
    w.wait_log("streaming", poll::timeout());
}

/// Runs `subset run … -E <source's current position>` to completion.
fn run_end(src: &Cluster, tgt: &Cluster, name: &str, extra: &[&str]) -> walrelay_cmd::Finished {
    let end = src.current_wal_lsn();
    let mut a = args("run", src, tgt, name, &["-E", &end.to_string(), "-s", "1"]);
    a.extend(extra.iter().map(|s| s.to_string()));
    walrelay_cmd::run(&a, poll::timeout())
}

/// [`run_end`], which must succeed.
fn run_to_end(src: &Cluster, tgt: &Cluster, name: &str, extra: &[&str]) {
    let f = run_end(src, tgt, name, extra);
    assert_eq!(f.code(), Some(0), "run -E failed: {}", f.stderr);
}

/// [`run_to_end`], then every row of `tables` equal on both sides.
fn caught_up(src: &Cluster, tgt: &Cluster, name: &str, extra: &[&str], tables: &[&str]) {
    run_to_end(src, tgt, name, extra);
    assert_same_rows(src, tgt, tables);
}

/// [`run_end`], which must stop with exit 4 and exactly one error line containing each of
/// `needles`; the line.
fn run_stops(src: &Cluster, tgt: &Cluster, name: &str, extra: &[&str], needles: &[&str]) -> String {
    let f = run_end(src, tgt, name, extra);
    assert_eq!(f.code(), Some(exit_code::SERVER_STATE), "{}", f.stderr);
    let errors = f.error_lines();
    assert_eq!(errors.len(), 1, "{}", f.stderr);
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in: {}", errors[0]);
    }
    eprintln!("subset stop: {}", errors[0]);
    errors[0].to_string()
}

/// A running `run` (`w`) that must stop by itself with exit 4 and exactly one error line
/// containing each of `needles`; the line. `case` names the situation in a failure.
fn stops_while_running(w: &mut Walrelay, case: &str, needles: &[&str]) -> String {
    let status = w.wait(poll::timeout());
    let log = w.full_log();
    assert_eq!(
        status.code(),
        Some(exit_code::SERVER_STATE),
        "{case}: {log}"
    );
    let errors = walrelay_cmd::error_lines(&log);
    assert_eq!(errors.len(), 1, "{case}: {log}");
    for n in needles {
        assert!(errors[0].contains(n), "{case}: {n:?} not in: {}", errors[0]);
    }
    errors[0].to_string()
}

/// `verify` while `run` (with the tables the subset has) keeps the target current.
fn verify_green(src: &Cluster, tgt: &Cluster, name: &str) -> String {
    let mut w = Walrelay::start(
        "subset run (for verify)",
        &args("run", src, tgt, name, &["-s", "1"]),
    );
    wait_streaming(&mut w);
    let f = walrelay_cmd::run(
        &args("verify", src, tgt, name, &["--wait", "60"]),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(0), "verify: {}\n{}", f.stdout, f.stderr);
    stop(&mut w);
    f.stdout
}

/// Polls the target until a COPY into it is running (the initial copy), within `limit`.
fn wait_for_copy(tgt: &Cluster, w: &mut Walrelay, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let n = tgt.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY %FROM STDIN%'",
        );
        if n.trim() != "0" {
            return;
        }
        w.assert_running();
        assert!(
            Instant::now() < deadline,
            "no COPY seen on the target; log:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pgbench load test, for one pair of majors.
fn pgbench_under_load(src_major: u32, tgt_major: u32, scale: u32, secs: u64, kills: usize) {
    let name = "bench";
    let mut src = source(&format!("subset-src{src_major}"), src_major);
    let tgt = target(&format!("subset-tgt{tgt_major}"), tgt_major);
    assert_eq!(src.server_version_num() / 10000, src_major);
    assert_eq!(tgt.server_version_num() / 10000, tgt_major);
    eprintln!(
        "subset: PostgreSQL {} -> {}",
        src.psql("SHOW server_version"),
        tgt.psql("SHOW server_version")
    );
    src.pgbench_init(scale);
    // The fix walrelay names for a table without a key, done up front.
    src.psql("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
    let load = src.pgbench(
        &PgBench::duration(Duration::from_secs(secs))
            .clients(2)
            .rate(300),
    );
    let run_args = with(
        args("run", &src, &tgt, name, &["-s", "1", "-j", "2"]),
        &table_args(&PGBENCH_TABLES),
    );
    let mut w = Walrelay::start("subset run", &run_args);
    // kill -9 in the middle of the initial copy: the copies roll back, the next run starts over
    // from a new snapshot.
    wait_for_copy(&tgt, &mut w, poll::timeout());
    w.kill9();
    let copying = tgt.psql(
        "SELECT count(*) FROM walrelay.subset_tables WHERE subset = 'bench' AND state = 'copying'",
    );
    assert_ne!(copying.trim(), "0", "every copy finished before the kill");
    for i in 0..kills {
        w.restart();
        wait_streaming(&mut w);
        std::thread::sleep(Duration::from_millis(1500 + 700 * i as u64));
        w.kill9();
    }
    // A clean stop under load: the transaction in flight is rolled back or committed whole.
    w.restart();
    wait_streaming(&mut w);
    std::thread::sleep(Duration::from_millis(800));
    stop(&mut w);
    w.restart();
    wait_streaming(&mut w);
    let summary = load.wait().expect("pgbench");
    assert!(
        summary.transactions > 100,
        "pgbench did little: {summary:?}"
    );
    // The source restarted cleanly: its walsender ends the stream with CommandComplete
    // (no CopyDone), and the run reconnects instead of stopping.
    let streams_before = w.log().matches(" streaming slot=").count();
    src.restart_with(StopMode::Fast);
    let deadline = Instant::now() + poll::timeout();
    while w.log().matches(" streaming slot=").count() <= streams_before {
        w.assert_running();
        assert!(
            Instant::now() < deadline,
            "no new stream after the source's restart:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A clean stop, then a run to the source's end.
    stop(&mut w);
    caught_up(&src, &tgt, name, &[], &PGBENCH_TABLES);
    assert_eq!(
        src.psql("SELECT count(*) FROM pgbench_history"),
        tgt.psql("SELECT count(*) FROM pgbench_history"),
        "pgbench_history: nothing applied twice, nothing lost"
    );
    assert_eq!(
        tgt.psql("SELECT to_regclass('public.pgbench_tellers') IS NULL"),
        "t",
        "the fourth table stays behind"
    );
    let out = verify_green(&src, &tgt, name);
    assert_eq!(out.matches(": ok (").count(), 3, "{out}");
    let end = src.current_wal_lsn();
    let confirmed = slot_confirmed(&src, name).expect("slot");
    assert!(
        confirmed.0 + 64 * 1024 >= end.0,
        "slot confirmed {confirmed}, source at {end}"
    );
}

#[test]
fn pgbench_15_to_15_survives_kill_9() {
    pgbench_under_load(15, 15, 3, 25, 3);
}

/// Source → target majors of the cross-version test: `WALRELAY_SUBSET_PAIRS` (`17:12,10:18`),
/// else 17 → 12.
fn version_pairs() -> Vec<(u32, u32)> {
    let raw = std::env::var("WALRELAY_SUBSET_PAIRS").unwrap_or_else(|_| "17:12".into());
    raw.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p
                .trim()
                .split_once(':')
                .unwrap_or_else(|| panic!("WALRELAY_SUBSET_PAIRS: {p:?} is not SOURCE:TARGET"));
            let m = |v: &str| {
                v.parse::<u32>()
                    .unwrap_or_else(|_| panic!("WALRELAY_SUBSET_PAIRS: bad major {v:?}"))
            };
            (m(a), m(b))
        })
        .collect()
}

#[test]
fn pgbench_newer_source_into_older_target() {
    for (src, tgt) in version_pairs() {
        if !(matrix_includes(src) && matrix_includes(tgt)) {
            eprintln!(
                "subset {src} -> {tgt} skipped: WALRELAY_PG_MAJORS ({:?}) does not list both",
                std::env::var("WALRELAY_PG_MAJORS").unwrap_or_default()
            );
            continue;
        }
        pgbench_under_load(src, tgt, 2, 12, 1);
    }
}

/// A plain HTTP GET of `path` on `addr`; the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn edges_toast_truncate_tables_added_and_removed() {
    let src = source("subset-edge-src", 15);
    let tgt = target("subset-edge-tgt", 15);
    src.psql(
        "CREATE TABLE nokey (a int, b text);
         INSERT INTO nokey VALUES (1, 'x');
         CREATE TABLE docs (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, big text, note varchar(20) DEFAULT 'none');
         ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO docs (id, big) SELECT i, (SELECT string_agg(md5(i::text || j::text), '') FROM generate_series(1, 4000) j) FROM generate_series(1, 20) i;
         CREATE TABLE churn (id serial PRIMARY KEY, v text);
         CREATE TABLE t2 (id int PRIMARY KEY, v text);
         INSERT INTO t2 SELECT i, 'a' FROM generate_series(1, 100) i;
         CREATE TABLE late (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v float8, w real);
         INSERT INTO late (v, w) SELECT i / 3.0, i / 7.0 FROM generate_series(1, 50) i;",
    );

    // A table without a key: refused, nothing created anywhere, the source unaffected.
    let f = walrelay_cmd::run(
        &with(
            args("run", &src, &tgt, "refused", &[]),
            &table_args(&["nokey", "docs"]),
        ),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(exit_code::SERVER_STATE), "{}", f.stderr);
    let errors = f.error_lines();
    assert_eq!(errors.len(), 1, "{}", f.stderr);
    assert!(
        errors[0].contains("public.nokey has no primary key or replica identity index")
            && errors[0].contains("ADD PRIMARY KEY"),
        "{}",
        errors[0]
    );
    assert_nothing_left(
        &src,
        &tgt,
        &[
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'walrelay'",
            "SELECT count(*) FROM pg_class WHERE relname IN ('nokey', 'docs')",
        ],
    );
    src.psql("UPDATE nokey SET b = 'y'; DELETE FROM nokey; INSERT INTO nokey VALUES (2, 'z')");

    // --target naming the source database itself (here with another application_name): refused
    // up front, nothing created; another database of the same server is a fine target.
    let mut itself = args("run", &src, &tgt, "itself", &[]);
    let at = itself.iter().position(|a| a == "--target").unwrap() + 1;
    itself[at] = format!("{} application_name=as_target", src.conninfo());
    let f = walrelay_cmd::run(&with(itself, &table_args(&["t2"])), poll::timeout());
    assert_eq!(f.code(), Some(exit_code::SERVER_STATE), "{}", f.stderr);
    assert!(
        f.error_lines()[0].contains("--target reaches the source database itself")
            && f.error_lines()[0].contains("point --target at another database"),
        "{}",
        f.stderr
    );
    assert_nothing_left(
        &src,
        &tgt,
        &["SELECT count(*) FROM pg_namespace WHERE nspname = 'walrelay'"],
    );
    assert_eq!(
        src.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walrelay'"),
        "0"
    );
    assert_eq!(src.psql("SELECT count(*) FROM t2"), "100");
    src.psql("CREATE DATABASE other");
    let mut other = args("run", &src, &tgt, "other", &["--check"]);
    other[at] = src.conninfo().replace("dbname=postgres", "dbname=other");
    let f = walrelay_cmd::run(&with(other, &table_args(&["t2"])), poll::timeout());
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("table public.t2: create on the target"),
        "{}",
        f.stdout
    );

    // --check creates nothing either.
    let f = walrelay_cmd::run(
        &with(
            args("run", &src, &tgt, "edge", &["--check"]),
            &table_args(&["docs", "t2"]),
        ),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("table public.docs: create on the target"),
        "{}",
        f.stdout
    );
    assert_eq!(src.psql("SELECT count(*) FROM pg_replication_slots"), "0");

    // Streaming docs and t2, with metrics.
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let run_args = with(
        args(
            "run",
            &src,
            &tgt,
            "edge",
            &["-s", "1", "--metrics-addr", &metrics],
        ),
        &table_args(&["docs", "t2"]),
    );
    let mut w = Walrelay::start("subset run", &run_args);
    wait_streaming(&mut w);
    src.psql(
        "UPDATE docs SET n = n + 1;
         UPDATE docs SET n = n + 1 WHERE id <= 10;
         UPDATE docs SET big = 'small now', note = 'changed' WHERE id = 20;
         TRUNCATE t2;
         INSERT INTO t2 SELECT i, 'b' FROM generate_series(1, 10) i;
         UPDATE t2 SET v = 'c' WHERE id = 5;
         DELETE FROM t2 WHERE id = 6;",
    );
    poll::wait_until(
        "the updates to arrive",
        || {
            tgt.psql("SELECT count(*) FROM t2") == "9"
                && tgt.psql("SELECT sum(n) FROM docs") == "30"
        },
        || w.log(),
    );
    let body = http_get(&metrics, "/metrics");
    assert!(body.contains("walrelay_subset_phase 2"), "{body}");
    assert!(body.contains("walrelay_subset_truncates_total 1"), "{body}");
    assert!(http_get(&metrics, "/health").starts_with("HTTP/1.1 200"));
    let toast = "SELECT id, n, md5(big), length(big), note FROM docs ORDER BY id";
    assert_eq!(
        src.psql(toast),
        tgt.psql(toast),
        "TOASTed values kept through updates"
    );
    assert_eq!(
        tgt.psql("SELECT length(big) FROM docs WHERE id = 1"),
        "128000"
    );

    // A second subset into a table this one writes: refused up front, naming the first (before,
    // an empty table was taken, and a copy of either emptied the other's rows).
    let f = walrelay_cmd::run(
        &with(args("run", &src, &tgt, "edge2", &[]), &table_args(&["t2"])),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(exit_code::SERVER_STATE), "{}", f.stderr);
    assert!(
        f.error_lines()[0]
            .contains("table public.t2 on the target is written by subset edge already"),
        "{}",
        f.stderr
    );
    assert_eq!(
        src.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay_edge2'"),
        "0"
    );

    // Idle subset tables, busy source: the slot still advances.
    let before = src.current_wal_lsn();
    src.psql("INSERT INTO churn (v) SELECT md5(i::text) FROM generate_series(1, 20000) i");
    let after = src.current_wal_lsn();
    poll::wait_until(
        "the slot to advance past writes to other tables",
        || slot_confirmed(&src, "edge").is_some_and(|c| c >= after),
        || {
            format!(
                "before {before}, after {after}, confirmed {:?}",
                slot_confirmed(&src, "edge")
            )
        },
    );
    let f = walrelay_cmd::run(
        &args("status", &src, &tgt, "edge", &["--json"]),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    let status: serde_json::Value = serde_json::from_str(&f.stdout).expect("status JSON");
    assert_eq!(status["phase"], "streaming", "{status}");
    assert_eq!(
        status["tables"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    stop(&mut w);

    // A table added later (changed before and after its copy) and one removed.
    src.psql(
        "INSERT INTO late (v, w) VALUES (1e-300, 3.4e38); UPDATE t2 SET v = 'gone' WHERE id = 1",
    );
    let mut w = Walrelay::start(
        "subset run (changed tables)",
        &with(
            args("run", &src, &tgt, "edge", &["-s", "1"]),
            &table_args(&["docs", "late"]),
        ),
    );
    wait_streaming(&mut w);
    src.psql("INSERT INTO late (v, w) VALUES (0.1, 0.1); DELETE FROM late WHERE id = 3; UPDATE docs SET n = 100 WHERE id = 1");
    stop(&mut w);
    caught_up(&src, &tgt, "edge", &[], &["docs", "late"]);
    assert_eq!(
        src.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'walrelay_edge'"),
        "docs,late"
    );
    assert_eq!(
        tgt.psql("SELECT v FROM t2 WHERE id = 1"),
        "b",
        "t2 left the subset"
    );
    // A subset table dropped on the target is copied again, not streamed into empty.
    tgt.psql("DROP TABLE late");
    src.psql("UPDATE late SET v = v + 1 WHERE id < 5");
    caught_up(&src, &tgt, "edge", &[], &["docs", "late"]);
    let out = verify_green(&src, &tgt, "edge");
    assert!(out.contains("public.late: ok (51 rows)"), "{out}");

    // Drop everything.
    let f = walrelay_cmd::run(
        &args("drop", &src, &tgt, "edge", &["--drop-tables"]),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert_nothing_left(
        &src,
        &tgt,
        &[
            "SELECT count(*) FROM walrelay.subset_progress",
            "SELECT count(*) FROM pg_class WHERE relname IN ('docs', 'late')",
        ],
    );
}

/// A pgbench script file in the cluster's scratch space, readable by whoever runs pgbench.
fn script(c: &Cluster, name: &str, text: &str) -> String {
    let path = c.scratch_path(name);
    std::fs::write(&path, text).expect("write the pgbench script");
    let mut perm = std::fs::metadata(&path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&path, perm).expect("chmod");
    path.to_string_lossy().into_owned()
}

/// Waits until `sql` returns `want` on the target, showing walrelay's log if it does not.
fn wait_target(tgt: &Cluster, w: &Walrelay, sql: &str, want: &str) {
    poll::wait_until(
        &format!("{sql} = {want} on the target"),
        || tgt.psql(sql) == want,
        || w.full_log(),
    );
}

fn number(c: &Cluster, sql: &str) -> i64 {
    let v = c.psql(sql);
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {v:?}"))
}

#[test]
fn schema_changes_under_load_stops_resync_and_sequences_at_cut_over() {
    let src = source("subset-ddl-src", 15);
    let tgt = target("subset-ddl-tgt", 15);
    src.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);
         INSERT INTO items (v, note) SELECT i, 'n' || i FROM generate_series(1, 500) i;
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other SELECT i, 'o' FROM generate_series(1, 50) i;
         CREATE SEQUENCE tickets START 100;",
    );
    let stops = |needles: &[&str]| run_stops(&src, &tgt, "ddl", &[], needles);
    let load_script = script(
        &src,
        "items.sql",
        "\\set id random(1, 500)\n\
         UPDATE items SET v = v + 1 WHERE id = :id;\n\
         INSERT INTO items (v) VALUES (:id);\n\
         SELECT nextval('tickets');\n",
    );
    let mut w = Walrelay::start(
        "subset run (ddl)",
        &with(
            args(
                "run",
                &src,
                &tgt,
                "ddl",
                &[
                    "-s",
                    "1",
                    "--sequence",
                    "public.tickets",
                    "--sequence-interval",
                    "1",
                ],
            ),
            &table_args(&["public.items", "public.other"]),
        ),
    );
    wait_streaming(&mut w);
    // Under load: a column added with a default (existing rows get it), one without, one dropped.
    let load = src.pgbench(
        &PgBench::duration(Duration::from_secs(7))
            .clients(2)
            .rate(150)
            .arg("-f")
            .arg(&load_script),
    );
    std::thread::sleep(Duration::from_millis(1500));
    src.psql("ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 7");
    std::thread::sleep(Duration::from_millis(1000));
    src.psql("ALTER TABLE items ADD COLUMN extra text");
    std::thread::sleep(Duration::from_millis(1000));
    src.psql("ALTER TABLE items DROP COLUMN note");
    // The chosen sequence is copied while streaming.
    poll::wait_until(
        "sequence tickets to be copied while streaming",
        || number(&tgt, "SELECT last_value FROM tickets") > 100,
        || w.log(),
    );
    let summary = load.wait().expect("pgbench");
    assert!(
        summary.transactions > 300,
        "pgbench did little: {summary:?}"
    );
    stop(&mut w);
    assert!(
        w.full_log()
            .contains("column added on the source: added on the target"),
        "{}",
        w.full_log()
    );
    caught_up(&src, &tgt, "ddl", &[], &["items", "other"]);
    assert_eq!(
        tgt.psql("SELECT count(*) FROM items WHERE flag IS NULL"),
        "0"
    );
    assert!(
        number(
            &tgt,
            "SELECT count(*) FROM items WHERE flag = 7 AND id <= 500"
        ) == 500
    );
    assert_eq!(
        tgt.psql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'note' AND NOT attisdropped"),
        "0",
        "the dropped column is dropped on the target"
    );

    // A type change stops, naming the table, the column and the choices; altering the target
    // too is one of them.
    src.psql(
        "ALTER TABLE items ALTER COLUMN v TYPE bigint;
         UPDATE items SET v = v + 1 WHERE id = 1; INSERT INTO other VALUES (1000, 'during')",
    );
    stops(&[
        "public.items",
        "column v changed type",
        "bigint",
        "ALTER COLUMN \"v\" TYPE bigint",
        "--resync public.items",
    ]);
    tgt.psql("ALTER TABLE items ALTER COLUMN v TYPE bigint");
    caught_up(&src, &tgt, "ddl", &[], &["items", "other"]);

    // A column renamed: stop; --resync copies the table again, the other keeps streaming.
    let other_copied = "SELECT synced_at FROM walrelay.subset_tables WHERE table_name = 'other'";
    let other_before = tgt.psql(other_copied);
    src.psql(
        "ALTER TABLE items RENAME COLUMN v TO qty;
         UPDATE items SET qty = qty + 1 WHERE id <= 3; INSERT INTO other VALUES (1001, 'x')",
    );
    stops(&[
        "public.items",
        "column v was renamed to qty",
        "RENAME COLUMN",
        "--resync public.items",
    ]);
    let began = Instant::now();
    run_to_end(&src, &tgt, "ddl", &["--resync", "public.items"]);
    eprintln!(
        "subset: --resync of one table in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    assert_same_rows(&src, &tgt, &["items", "other"]);
    assert_eq!(
        tgt.psql(other_copied),
        other_before,
        "other was not copied again"
    );

    // A column whose existing rows got values the stream never sent: stop, never NULL.
    src.psql(
        "ALTER TABLE items ADD COLUMN seen timestamptz DEFAULT clock_timestamp();
         UPDATE items SET qty = 0 WHERE id = 2",
    );
    stops(&["public.items", "column seen", "--resync public.items"]);
    caught_up(&src, &tgt, "ddl", &["--resync", "public.items"], &["items"]);

    // A table renamed on the source while streaming: a clear stop naming the new name; and
    // again at the next start.
    let mut w = Walrelay::start(
        "subset run (rename)",
        &args("run", &src, &tgt, "ddl", &["-s", "1"]),
    );
    wait_streaming(&mut w);
    src.psql("ALTER TABLE other RENAME TO other2; INSERT INTO other2 VALUES (1002, 'y')");
    stops_while_running(
        &mut w,
        "rename",
        &["renamed to public.other2", "-t public.other2"],
    );
    stops(&[
        "public.other",
        "renamed to public.other2",
        "-t public.other2",
    ]);
    // The other choice: renamed back on the source. The change made under the other name is
    // the table's own and applies.
    src.psql("ALTER TABLE other2 RENAME TO other; INSERT INTO other VALUES (1003, 'z')");
    caught_up(&src, &tgt, "ddl", &[], &["items", "other"]);
    // Renamed for good: refused at preflight, and running with the new name goes on.
    src.psql("ALTER TABLE other RENAME TO other2; INSERT INTO other2 VALUES (1004, 'w')");
    stops(&[
        "public.other",
        "renamed to public.other2",
        "-t public.other2",
    ]);
    run_to_end(
        &src,
        &tgt,
        "ddl",
        &[
            "-t",
            "public.items",
            "-t",
            "public.other2",
            "--sequence",
            "public.tickets",
        ],
    );
    assert_same_rows(&src, &tgt, &["items", "other2"]);

    // A table dropped and created again on the source under the same name: copied again.
    src.psql(
        "DROP TABLE other2; CREATE TABLE other2 (id int PRIMARY KEY, v text);
         INSERT INTO other2 VALUES (1, 'new')",
    );
    caught_up(&src, &tgt, "ddl", &[], &["items", "other2"]);

    // Cut-over: the source hands out more values, its writers stop, `drop` copies the sequences
    // one last time: nextval on the target is beyond every value the source handed out.
    src.psql(
        "SELECT nextval('tickets') FROM generate_series(1, 50);
         INSERT INTO items (qty) SELECT 1 FROM generate_series(1, 20)",
    );
    let src_ticket = number(&src, "SELECT last_value FROM tickets");
    let src_id = number(&src, "SELECT max(id) FROM items");
    let f = walrelay_cmd::run(&args("drop", &src, &tgt, "ddl", &[]), poll::timeout());
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("sequence(s) moved forward"),
        "{}",
        f.stdout
    );
    assert!(number(&tgt, "SELECT nextval('tickets')") > src_ticket);
    assert!(
        number(
            &tgt,
            "SELECT nextval(pg_get_serial_sequence('items', 'id'))"
        ) > src_id
    );
}

#[test]
fn conflicts_stop_skip_lsn_resumes_on_conflict_records_replica_identity_full() {
    let src = source("subset-conflict-src", 15);
    let tgt = target("subset-conflict-tgt", 15);
    src.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, v text);
         INSERT INTO acct SELECT i, 'v' || i FROM generate_series(1, 10) i;
         CREATE TABLE logrows (a int, doc json);
         INSERT INTO logrows VALUES (1, '{\"k\": 1}'), (1, '{\"k\": 1}'), (2, '{\"k\": [1, 2]}');",
    );
    let tables = ["-t", "public.acct", "-t", "public.logrows"];
    let full = ["--replica-identity-full", "public.logrows"];

    // REPLICA IDENTITY FULL is opt-in and says what it costs; --check changes nothing.
    let mut check = tables.to_vec();
    check.extend(full);
    check.push("--check");
    let f = walrelay_cmd::run(&args("run", &src, &tgt, "c", &check), poll::timeout());
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout
            .contains("REPLICA IDENTITY FULL is set on the source")
            && f.stdout
                .contains("writes the whole old row into the source's WAL"),
        "{}",
        f.stdout
    );
    let replident = "SELECT relreplident FROM pg_class WHERE relname = 'logrows'";
    assert_eq!(src.psql(replident), "d");
    let mut first = tables.to_vec();
    first.extend(full);
    run_to_end(&src, &tgt, "c", &first);
    assert_eq!(src.psql(replident), "f");
    // One of two identical rows deleted: exactly one goes; json matched by its text.
    src.psql(
        "DELETE FROM logrows WHERE ctid = (SELECT min(ctid) FROM logrows WHERE a = 1);
         UPDATE logrows SET doc = '{\"k\": 3}' WHERE a = 2;",
    );
    run_to_end(&src, &tgt, "c", &[]);
    assert_eq!(tgt.psql("SELECT count(*) FROM logrows WHERE a = 1"), "1");
    assert_same_rows(&src, &tgt, &["logrows"]);

    // A row that already exists on the target: stop with table, key, commit LSN and xid.
    tgt.psql("INSERT INTO acct VALUES (100, 'target only')");
    src.psql(
        "BEGIN; INSERT INTO acct VALUES (100, 'source'); UPDATE acct SET v = 'same txn' WHERE id = 1; COMMIT;
         INSERT INTO acct VALUES (101, 'after')",
    );
    let line = run_stops(
        &src,
        &tgt,
        "c",
        &[],
        &[
            "conflict on the target in source transaction",
            "INSERT of public.acct key (id)=(100)",
            "exists on the target",
            "--skip-lsn",
        ],
    );
    let lsn = line
        .split("--skip-lsn ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the LSN to skip")
        .to_string();
    assert!(line.contains(&format!("commit LSN {lsn}")), "{line}");
    // The operator decided: the source transaction is left out whole, and recorded.
    run_to_end(&src, &tgt, "c", &["--skip-lsn", &lsn]);
    assert_eq!(tgt.psql("SELECT v FROM acct WHERE id = 100"), "target only");
    assert_eq!(tgt.psql("SELECT v FROM acct WHERE id = 1"), "v1");
    assert_eq!(tgt.psql("SELECT v FROM acct WHERE id = 101"), "after");
    assert_eq!(
        tgt.psql(&format!("SELECT change || ' ' || resolution FROM walrelay.subset_conflicts WHERE source_commit_lsn = '{lsn}'")),
        "transaction skipped"
    );

    // An UPDATE that finds no row: stop; --on-conflict skip leaves it out and records it.
    tgt.psql("DELETE FROM acct WHERE id = 5");
    src.psql("UPDATE acct SET v = 'x' WHERE id = 5");
    run_stops(
        &src,
        &tgt,
        "c",
        &[],
        &["UPDATE of public.acct key (id)=(5)", "no such row"],
    );
    run_to_end(&src, &tgt, "c", &["--on-conflict", "skip"]);
    assert_eq!(tgt.psql("SELECT count(*) FROM acct WHERE id = 5"), "0");
    assert_eq!(
        tgt.psql("SELECT conflict || '/' || resolution || '/' || (key_values->>'id') || '/' || (row_values->>'v') FROM walrelay.subset_conflicts WHERE change = 'update'"),
        "no row/skipped/5/x"
    );

    // --on-conflict upsert: the source's row wins, each case recorded.
    tgt.psql("INSERT INTO acct VALUES (200, 'target'); DELETE FROM acct WHERE id IN (7, 8)");
    src.psql(
        "INSERT INTO acct VALUES (200, 'source'); UPDATE acct SET v = 'seven' WHERE id = 7;
         DELETE FROM acct WHERE id = 8",
    );
    run_to_end(&src, &tgt, "c", &["--on-conflict", "upsert"]);
    assert_eq!(tgt.psql("SELECT v FROM acct WHERE id = 200"), "source");
    assert_eq!(tgt.psql("SELECT v FROM acct WHERE id = 7"), "seven");
    assert_eq!(
        tgt.psql("SELECT string_agg(change || ':' || resolution, ',' ORDER BY id) FROM walrelay.subset_conflicts WHERE id > (SELECT min(id) + 1 FROM walrelay.subset_conflicts)"),
        "insert:updated,update:inserted,delete:skipped"
    );
    let f = walrelay_cmd::run(
        &args("status", &src, &tgt, "c", &["--json"]),
        poll::timeout(),
    );
    let status: serde_json::Value = serde_json::from_str(&f.stdout).expect("status JSON");
    assert_eq!(status["conflicts_recorded"], 5, "{status}");
    let same = "SELECT * FROM acct WHERE id NOT IN (1, 5, 100) ORDER BY id";
    assert_eq!(src.psql_rows(same), tgt.psql_rows(same));
}

/// `WALRELAY_SUBSET_BIG_ROWS` (default 200 000; the documented benchmark is 5 000 000).
fn big_rows() -> u64 {
    std::env::var("WALRELAY_SUBSET_BIG_ROWS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(200_000)
}

/// The peak resident memory of a process (`VmHWM`), in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    walk_files(dir).iter().map(|m| m.len()).sum()
}

fn walk_files(dir: &std::path::Path) -> Vec<std::fs::Metadata> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => out.extend(walk_files(&e.path())),
            Ok(m) => out.push(m),
            Err(_) => {}
        }
    }
    out
}

#[test]
fn a_big_transaction_is_streamed_spilled_and_applied_atomically() {
    let rows = big_rows();
    let src = Cluster::builder()
        .name("subset-big-src")
        .major(15)
        .wal_level("logical")
        .fsync(false)
        .conf("max_wal_size = '4GB'")
        .conf("logical_decoding_work_mem = '64kB'")
        .start();
    let tgt = Cluster::builder()
        .name("subset-big-tgt")
        .major(15)
        .fsync(false)
        .conf("max_wal_size = '4GB'")
        .start();
    src.psql(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
         CREATE TABLE small (id int PRIMARY KEY);",
    );
    let spool = tempfile::tempdir().expect("spool dir");
    let spool_path = spool.path().to_string_lossy().into_owned();
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let mut w = Walrelay::start(
        "subset run (big)",
        &with(
            args(
                "run",
                &src,
                &tgt,
                "big",
                &[
                    "-s",
                    "1",
                    "--spool-dir",
                    &spool_path,
                    "--metrics-addr",
                    &metrics,
                ],
            ),
            &table_args(&["public.big", "public.small"]),
        ),
    );
    wait_streaming(&mut w);
    // Aborted on the source after it was streamed: nothing of it arrives.
    src.psql(
        "BEGIN; INSERT INTO big SELECT g, 'aborted' FROM generate_series(1, 30000) g; ROLLBACK",
    );
    // A rolled-back savepoint inside a streamed transaction: only its own changes go.
    src.psql(
        "BEGIN; INSERT INTO small VALUES (1);
         INSERT INTO big SELECT g, 'a' FROM generate_series(1, 20000) g;
         SAVEPOINT s; INSERT INTO big SELECT g, 'b' FROM generate_series(20001, 40000) g; ROLLBACK TO s;
         INSERT INTO big SELECT g, 'c' FROM generate_series(40001, 60000) g; COMMIT",
    );
    wait_target(&tgt, &w, "SELECT count(*) FROM small", "1");
    assert_eq!(
        tgt.psql("SELECT count(*) || ' ' || count(*) FILTER (WHERE pad = 'b') FROM big"),
        "40000 0"
    );

    // The big one: atomically on the target, in bounded memory.
    let before = 40_000u64;
    let began = Instant::now();
    let src_conn = src.conninfo();
    let insert = std::thread::spawn(move || {
        walrelay_testkit::psql_conninfo(
            &src_conn,
            &format!(
                "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(100001, {}) g",
                100_000 + rows
            ),
        )
    });
    let mut spooled_max = 0u64;
    let mut seen_partial = None;
    loop {
        let n = number(&tgt, "SELECT count(*) FROM big") as u64;
        if n != before && n != before + rows {
            seen_partial = Some(n);
        }
        spooled_max = spooled_max.max(dir_bytes(spool.path()));
        if n == before + rows {
            break;
        }
        w.assert_running();
        assert!(
            began.elapsed() < poll::timeout() * 10,
            "the big transaction did not arrive; log:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = began.elapsed().as_secs_f64();
    insert.join().expect("insert thread").expect("insert");
    let peak_kb = peak_rss_kb(w.pid());
    let body = http_get(&metrics, "/metrics");
    eprintln!(
        "subset: a {rows}-row transaction streamed, spilled (spool peak {:.0} MB) and applied in {secs:.1} s; walrelay peak RSS {:.1} MB",
        spooled_max as f64 / 1e6,
        peak_kb as f64 / 1024.0
    );
    assert_eq!(
        seen_partial, None,
        "the target showed part of the transaction"
    );
    assert!(peak_kb > 0 && peak_kb < 100 * 1024, "peak RSS {peak_kb} kB");
    assert!(
        body.contains("walrelay_subset_streamed_transactions_total 2"),
        "{body}"
    );
    stop(&mut w);
    assert_eq!(walk_files(spool.path()).len(), 0, "spool files left behind");
    let digest = "SELECT count(*), sum(id), md5(string_agg(pad, ',' ORDER BY id)) FROM big";
    assert_eq!(src.psql(digest), tgt.psql(digest));
}

#[test]
fn a_failover_slot_survives_a_promotion() {
    let Some(major) = walrelay_testkit::matrix_majors()
        .into_iter()
        .filter(|&m| m >= 17)
        .max()
    else {
        eprintln!("subset --failover skipped: WALRELAY_PG_MAJORS lists no major from 17 (logical failover slots)");
        return;
    };
    let mut a = Cluster::builder()
        .name("subset-fo-a")
        .major(major)
        .wal_level("logical")
        .fsync(false)
        .conf("synchronized_standby_slots = 'fo_standby'")
        .start();
    a.psql(
        "SELECT pg_create_physical_replication_slot('fo_standby');
         CREATE TABLE fo (id int PRIMARY KEY, v text);
         INSERT INTO fo SELECT g, 'a' FROM generate_series(1, 100) g;",
    );
    let copy = a.cold_copy();
    let mut b = a
        .standby(&copy)
        .name("subset-fo-b")
        .follow(&a.replication_conninfo())
        .primary_slot("fo_standby")
        .conf("sync_replication_slots = on")
        .conf("hot_standby_feedback = on")
        .conf("synchronized_standby_slots = ''")
        .start();
    let tgt = target("subset-fo-tgt", major);
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={} dbname=postgres target_session_attrs=read-write connect_timeout=5",
        a.port(),
        b.port(),
        a.superuser()
    );
    let mut w = Walrelay::start(
        "subset run (failover)",
        &[
            "subset",
            "run",
            "-d",
            &hosts,
            "--target",
            &tgt.conninfo(),
            "--name",
            "fo",
            "-t",
            "public.fo",
            "--failover",
            "-s",
            "1",
        ]
        .map(String::from),
    );
    wait_streaming(&mut w);
    a.psql("INSERT INTO fo SELECT g, 'b' FROM generate_series(101, 200) g");
    wait_target(&tgt, &w, "SELECT count(*) FROM fo", "200");
    assert_eq!(
        a.psql("SELECT failover FROM pg_replication_slots WHERE slot_name = 'walrelay_fo'"),
        "t"
    );
    // The standby keeps a synced copy of the slot.
    let synced = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay_fo' AND synced AND NOT temporary";
    // A synced slot becomes usable once the primary's copy has moved past the standby's catalog
    // horizon: running-transaction records (which walrelay then confirms) make that happen soon.
    let t0 = Instant::now();
    poll::wait_until(
        "the slot synced to the standby",
        || {
            a.psql("SELECT pg_log_standby_snapshot()");
            std::thread::sleep(Duration::from_millis(200));
            b.psql(synced) == "1"
        },
        || b.log_tail(20),
    );
    eprintln!(
        "subset --failover: slot synced to the standby in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    a.psql("INSERT INTO fo SELECT g, 'c' FROM generate_series(201, 300) g");
    wait_target(&tgt, &w, "SELECT count(*) FROM fo", "300");
    b.catch_up(&a);
    // The primary crashes; its standby is promoted; walrelay goes on there by itself.
    a.stop(walrelay_testkit::StopMode::Immediate);
    b.promote();
    b.psql("INSERT INTO fo SELECT g, 'after' FROM generate_series(301, 400) g; UPDATE fo SET v = 'u' WHERE id <= 10");
    let t0 = Instant::now();
    wait_target(&tgt, &w, "SELECT count(*) FROM fo", "400");
    eprintln!(
        "subset --failover: streaming again from the promoted standby {:.1} s after the promotion",
        t0.elapsed().as_secs_f64()
    );
    stop(&mut w);
    assert_same_rows(&b, &tgt, &["fo"]);
}

#[test]
fn a_lost_slot_is_named_and_resync_all_copies_again() {
    let src = Cluster::builder()
        .name("subset-lost-src")
        .major(15)
        .wal_level("logical")
        .wal_segsize_mb(1)
        .fsync(false)
        .conf("max_slot_wal_keep_size = '2MB'")
        .conf("max_wal_size = '32MB'")
        .start();
    let tgt = target("subset-lost-tgt", 15);
    src.psql(
        "CREATE TABLE kept (id int PRIMARY KEY, v text);
         INSERT INTO kept SELECT g, 'a' FROM generate_series(1, 100) g;
         CREATE TABLE noise (id serial PRIMARY KEY, pad text);",
    );
    run_to_end(&src, &tgt, "lost", &["-t", "public.kept"]);
    // Invalidated while walrelay is away: more WAL than max_slot_wal_keep_size, checkpoints.
    src.psql("UPDATE kept SET v = 'b' WHERE id <= 10");
    for _ in 0..3 {
        src.psql("INSERT INTO noise (pad) SELECT repeat('x', 500) FROM generate_series(1, 5000); SELECT pg_switch_wal(); CHECKPOINT");
    }
    assert_eq!(
        src.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walrelay_lost'"),
        "lost"
    );
    run_stops(
        &src,
        &tgt,
        "lost",
        &[],
        &[
            "replication slot walrelay_lost",
            "invalidated",
            "max_slot_wal_keep_size",
            "--resync-all",
        ],
    );
    caught_up(&src, &tgt, "lost", &["--resync-all"], &["kept"]);
    // Missing altogether (dropped by someone): the same way out.
    src.psql(
        "SELECT pg_drop_replication_slot('walrelay_lost'); UPDATE kept SET v = 'c' WHERE id <= 5",
    );
    run_stops(
        &src,
        &tgt,
        "lost",
        &[],
        &["walrelay_lost", "missing", "--resync-all"],
    );
    caught_up(&src, &tgt, "lost", &["--resync-all"], &["kept"]);
    let f = walrelay_cmd::run(&args("status", &src, &tgt, "lost", &[]), poll::timeout());
    assert!(
        f.stdout.contains("slot walrelay_lost: inactive"),
        "{}",
        f.stdout
    );
}

/// A full disk on the target (the table's tablespace on a 4 MB tmpfs) while a transaction of
/// 6000 rows — more statements than the apply pipeline leaves unanswered — is applied: the
/// target's "could not extend file" is logged and retried with a growing delay, nothing of the
/// transaction shows on the target meanwhile, and once there is room it is applied whole. Before,
/// the error read early in the long batch confused the pipeline into a protocol violation and the
/// run stopped.
#[test]
fn a_full_target_disk_is_waited_out() {
    let src = source("subset-full-src", 15);
    let tgt = target("subset-full-tgt", 15);
    let mount_point = tgt.scratch_path("small-tablespace");
    let owner = std::fs::metadata(tgt.data_dir()).expect("stat the data directory");
    let ids = [
        format!("uid={}", owner.uid()),
        format!("gid={}", owner.gid()),
    ];
    // Dropped before the target (declared after it): a lazy unmount, then the cluster's cleanup.
    let Some(small) = Tmpfs::mount(&mount_point, 4096, &[&ids[0], &ids[1]]) else {
        eprintln!("a_full_target_disk_is_waited_out skipped: no tmpfs here");
        return;
    };
    src.psql("CREATE TABLE wide (id int PRIMARY KEY, pad text NOT NULL)");
    tgt.psql(&format!(
        "CREATE TABLESPACE small LOCATION '{}';
         CREATE TABLE wide (id int PRIMARY KEY, pad text NOT NULL) TABLESPACE small",
        small.path().display()
    ));
    let mut w = Walrelay::start(
        "subset-full",
        &args("run", &src, &tgt, "full", &["-t", "public.wide", "-s", "1"]),
    );
    wait_streaming(&mut w);
    // 6000 rows of 1000 bytes (pad not compressible by TOAST): 6 MB into 4.
    src.psql(
        "INSERT INTO wide SELECT g, string_agg(md5(g::text || r::text), '')
           FROM generate_series(1, 6000) g, generate_series(1, 31) r GROUP BY g",
    );
    w.wait_log("No space left on device", poll::timeout());
    w.wait_log("retry_in_secs=2", poll::timeout());
    w.assert_running();
    assert_eq!(tgt.psql("SELECT count(*) FROM wide"), "0", "{}", w.log());

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=65536k"])
        .arg(small.path())
        .status()
        .expect("run mount");
    assert!(grown.success(), "remount the tablespace's tmpfs larger");
    wait_target(&tgt, &w, "SELECT count(*) FROM wide", "6000");
    stop(&mut w);
    assert_same_rows(&src, &tgt, &["public.wide"]);
    let log = w.full_log();
    assert!(
        !log.contains("protocol violation"),
        "the target's error was read as a protocol violation: {log}"
    );
    tgt.psql("DROP TABLE wide; DROP TABLESPACE small");
}

/// A target database with `idle_session_timeout` (PostgreSQL 14+; `transaction_timeout`, 17+, is
/// set off the same way): walrelay's sessions there — the one holding the subset's lock, the
/// apply session — are not ended while the source is quiet. Before, both were ended after the
/// timeout: the lock silently released (a second `run` could start) and the next transaction
/// failed on a dead connection before a reconnect.
#[test]
fn the_targets_idle_session_timeout_spares_walrelays_sessions() {
    let src = source("subset-idle-src", 15);
    let tgt = target("subset-idle-tgt", 15);
    src.psql("CREATE TABLE quiet (id int PRIMARY KEY, v text)");
    tgt.psql("ALTER DATABASE postgres SET idle_session_timeout = '1s'");
    let mut w = Walrelay::start(
        "subset-idle",
        &args(
            "run",
            &src,
            &tgt,
            "idle",
            &["-t", "public.quiet", "-s", "1"],
        ),
    );
    wait_streaming(&mut w);
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'walrelay_idle'";
    let before = number(&tgt, sessions);
    assert!(before >= 2, "the lock and the apply session: {before}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(number(&tgt, sessions), before, "{}", w.log());
    src.psql("INSERT INTO quiet VALUES (1, 'after a quiet while')");
    wait_target(&tgt, &w, "SELECT count(*) FROM quiet", "1");
    stop(&mut w);
    let log = w.full_log();
    assert!(!log.contains("trying again"), "a session was lost: {log}");
}

/// The subset's publication dropped on the source while `run` streams: PostgreSQL up to 17 ends
/// the stream with "publication … does not exist"; 18 only warns ("skipped loading publication")
/// and sends nothing for the changes that follow — a silent loss walrelay must not confirm. Both
/// stop the run naming the publication and `--resync-all`, with the slot not confirmed past the
/// last change applied; a plain rerun is refused at preflight (recreating the publication would
/// not let the slot decode the changes made meanwhile); `--resync-all` brings every row back. Then
/// the table taken out of the publication by hand (no error, no warning from the source): the
/// next run is refused naming `--resync` of it.
/// PostgreSQL 15, and 18 when the version matrix lists it.
#[test]
fn a_dropped_publication_stops_the_run_and_resync_all_recovers() {
    for major in [15, 18]
        .into_iter()
        .filter(|&m| m == 15 || matrix_includes(m))
    {
        let src = source(&format!("subset-pub-src-{major}"), major);
        let tgt = target(&format!("subset-pub-tgt-{major}"), 15);
        src.psql("CREATE TABLE p (id int PRIMARY KEY, v text)");
        let mut w = Walrelay::start(
            "subset-pub",
            &args("run", &src, &tgt, "pub", &["-t", "public.p", "-s", "1"]),
        );
        wait_streaming(&mut w);
        src.psql("INSERT INTO p VALUES (1, 'before')");
        wait_target(&tgt, &w, "SELECT count(*) FROM p", "1");
        src.psql("DROP PUBLICATION walrelay_pub");
        let before_the_loss = src.current_wal_lsn();
        src.psql("INSERT INTO p VALUES (2, 'after')");
        stops_while_running(
            &mut w,
            &format!("{major}: publication dropped"),
            &["publication walrelay_pub was dropped", "--resync-all"],
        );
        assert_eq!(tgt.psql("SELECT count(*) FROM p"), "1", "{major}");
        let confirmed = slot_confirmed(&src, "pub");
        assert!(
            confirmed.is_some_and(|c| c <= before_the_loss),
            "{major}: the slot was confirmed to {confirmed:?}, past {before_the_loss} where the changes stopped coming"
        );
        src.psql("INSERT INTO p VALUES (3, 'later')");

        run_stops(
            &src,
            &tgt,
            "pub",
            &[],
            &["publication walrelay_pub", "missing", "--resync-all"],
        );
        assert_eq!(
            slot_confirmed(&src, "pub"),
            confirmed,
            "{major}: a refused run moved the slot"
        );
        caught_up(&src, &tgt, "pub", &["--resync-all"], &["public.p"]);
        assert_eq!(tgt.psql("SELECT count(*) FROM p"), "3", "{major}");

        // The table taken out of the publication by hand: the source sends nothing for it and
        // says nothing. The running subset notices within its check interval, the next run at
        // preflight; `--resync` of it brings the rows.
        let mut w = Walrelay::start(
            "subset-pub-unpublished",
            &args("run", &src, &tgt, "pub", &["-s", "1"]),
        );
        wait_streaming(&mut w);
        src.psql("ALTER PUBLICATION walrelay_pub DROP TABLE p; INSERT INTO p VALUES (4, 'unsent')");
        stops_while_running(
            &mut w,
            &format!("{major}: table taken out of the publication"),
            &[
                "table public.p of the subset was taken out of publication walrelay_pub",
                "--resync public.p",
            ],
        );
        run_stops(
            &src,
            &tgt,
            "pub",
            &[],
            &[
                "public.p",
                "taken out of publication walrelay_pub",
                "--resync public.p",
            ],
        );
        caught_up(&src, &tgt, "pub", &["--resync", "public.p"], &["public.p"]);
    }
}

/// The target's own foreign keys and triggers, as an application adds them: walrelay writes as a
/// replica (`session_replication_role = replica`, as PostgreSQL's apply worker does), so the copy
/// may fill the child before its parent, a trigger that would refuse every row does not fire, and
/// a cascading delete on the source — which arrives as the deletes it caused — is not cascaded
/// a second time on the target. Before, the copy stopped on the foreign key.
#[test]
fn the_targets_foreign_keys_and_triggers_do_not_fire_for_replicated_rows() {
    let src = source("subset-fk-src", 15);
    let tgt = target("subset-fk-tgt", 15);
    let ddl = "CREATE TABLE parent (id int PRIMARY KEY, v text);
               CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE, pad text);";
    src.psql(ddl);
    src.psql(
        "INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 10) g;
         INSERT INTO child SELECT g, 1 + g % 10, repeat('c', 200) FROM generate_series(1, 20000) g;",
    );
    tgt.psql(ddl);
    tgt.psql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'an application trigger fired'; END$$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON child FOR EACH ROW EXECUTE PROCEDURE refuse();",
    );
    let mut w = Walrelay::start(
        "subset-fk",
        &args(
            "run",
            &src,
            &tgt,
            "fk",
            &["-t", "public.parent", "-t", "public.child", "-s", "1"],
        ),
    );
    wait_streaming(&mut w);
    src.psql("DELETE FROM parent WHERE id = 1; UPDATE child SET pad = 'u' WHERE id = 2; INSERT INTO parent VALUES (11, 'new'); INSERT INTO child VALUES (20001, 11, 'x');");
    wait_target(&tgt, &w, "SELECT count(*) FROM child", "18001");
    assert_same_rows(&src, &tgt, &["public.parent", "public.child"]);
    // TRUNCATE … CASCADE on the source lists both tables: one TRUNCATE of both on the target.
    src.psql("TRUNCATE parent CASCADE; INSERT INTO parent VALUES (12, 'after'); INSERT INTO child VALUES (1, 12, 'y');");
    wait_target(&tgt, &w, "SELECT count(*) FROM child", "1");
    stop(&mut w);
    assert_same_rows(&src, &tgt, &["public.parent", "public.child"]);
    let log = w.full_log();
    assert!(!log.contains("trying again"), "{log}");
    assert!(
        !log.contains("session_replication_role"),
        "a superuser may set it: {log}"
    );

    // A second target given the same --name: refused before anything is done; a first run there
    // used to drop the slot, and this target, resuming on the new slot, lost what came between.
    tgt.psql("CREATE DATABASE second");
    let mut second = args(
        "run",
        &src,
        &tgt,
        "fk",
        &["-t", "public.parent", "-s", "1", "-E", "0/0"],
    );
    let at = second.iter().position(|a| a == "--target").unwrap() + 1;
    assert!(second[at].contains("dbname=postgres"), "{}", second[at]);
    second[at] = second[at].replace("dbname=postgres", "dbname=second");
    let slot_before = slot_confirmed(&src, "fk");
    let refused = walrelay_cmd::run(&second, poll::timeout());
    assert_eq!(refused.code(), Some(4), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("this target has never run subset fk: another target streams from it"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        slot_confirmed(&src, "fk"),
        slot_before,
        "the slot is untouched"
    );
    // A target that lost applied changes (restored from a backup, say): its progress row is
    // behind what the slot confirmed, and the changes in between will not come again.
    src.psql("INSERT INTO parent VALUES (13, 'while the target was away')");
    let end = src.current_wal_lsn();
    let f = run_end(&src, &tgt, "fk", &[]);
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    let applied = tgt.psql("SELECT applied_lsn FROM walrelay.subset_progress WHERE subset = 'fk'");
    assert!(slot_confirmed(&src, "fk").unwrap() >= end, "confirmed");
    tgt.psql("DELETE FROM parent WHERE id = 13");
    tgt.psql(&format!(
        "UPDATE walrelay.subset_progress SET applied_lsn = '{end}'::pg_lsn - 1 WHERE subset = 'fk'"
    ));
    let behind = run_end(&src, &tgt, "fk", &[]);
    assert_eq!(behind.code(), Some(4), "{}", behind.stderr);
    assert!(
        behind.stderr.contains("has confirmed changes up to")
            && behind.stderr.contains("--resync-all"),
        "{}",
        behind.stderr
    );
    tgt.psql(&format!(
        "UPDATE walrelay.subset_progress SET applied_lsn = '{applied}' WHERE subset = 'fk'"
    ));
}

/// A partitioned source table (range partitions, one of them hash-partitioned again) copied whole
/// into one plain target table and followed: changes through the parent and into a partition
/// directly, an update moving rows to another partition, a partition created and a column added
/// to the parent while streaming. Listed together with one of its partitions it is refused; from
/// a source older than 13 (with the matrix) too. And the other way round: plain source tables
/// into partitioned target tables made by hand, one under REPLICA IDENTITY FULL whose rows in two
/// partitions share a ctid (a delete of one must leave the other). With the matrix, from 13 into
/// 10.
#[test]
fn partitioned_tables_on_either_side() {
    // With the matrix: the oldest source that can (13), into the oldest target.
    let src = source("subset-part-src", if matrix_includes(13) { 13 } else { 15 });
    let tgt = target("subset-part-tgt", if matrix_includes(10) { 10 } else { 15 });
    src.psql(
        "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE m_jan PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE m_feb PARTITION OF m FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')
           PARTITION BY HASH (id);
         CREATE TABLE m_feb_0 PARTITION OF m_feb FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE m_feb_1 PARTITION OF m_feb FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         INSERT INTO m SELECT g, date '2026-01-01' + (g % 59), 'v' || g FROM generate_series(1, 3000) g;
         CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev SELECT g, 'e' || g FROM generate_series(1, 2000) g;
         CREATE TABLE kv (a int, b text);
         INSERT INTO kv VALUES (1, 'x'), (2, 'x'), (1, 'y');",
    );
    // By hand on the target: ev and kv partitioned (list and range exist from 10 on).
    tgt.psql(
        "CREATE TABLE ev (id int NOT NULL, v text) PARTITION BY RANGE (id);
         CREATE TABLE ev_low PARTITION OF ev FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE ev_high PARTITION OF ev FOR VALUES FROM (1000) TO (MAXVALUE);
         CREATE TABLE kv (a int, b text) PARTITION BY LIST (a);
         CREATE TABLE kv_1 PARTITION OF kv FOR VALUES IN (1);
         CREATE TABLE kv_2 PARTITION OF kv FOR VALUES IN (2);",
    );
    let tables = ["public.m", "public.ev", "public.kv"];
    let mut run_args = table_args(&tables);
    run_args.extend([
        "--replica-identity-full".to_string(),
        "public.kv".to_string(),
    ]);
    let run_args: Vec<&str> = run_args.iter().map(String::as_str).collect();

    let f = walrelay_cmd::run(
        &with(
            args("run", &src, &tgt, "part", &[]),
            &table_args(&["public.m", "public.m_feb_1"]),
        ),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(exit_code::USAGE), "{}", f.stderr);
    let errors = f.error_lines();
    assert_eq!(errors.len(), 1, "{}", f.stderr);
    assert!(
        errors[0]
            .contains("public.m_feb_1 is a partition of public.m, which the subset copies whole"),
        "{}",
        errors[0]
    );
    assert_nothing_left(
        &src,
        &tgt,
        &["SELECT count(*) FROM pg_namespace WHERE nspname = 'walrelay'"],
    );

    caught_up(&src, &tgt, "part", &run_args, &["m", "ev", "kv"]);
    assert_eq!(
        tgt.psql("SELECT relkind FROM pg_class WHERE relname = 'm'"),
        "r"
    );
    assert_eq!(
        tgt.psql(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'm\\_%' AND relkind IN ('r', 'p')"
        ),
        "0"
    );
    assert_eq!(number(&tgt, "SELECT count(*) FROM ONLY ev_high"), 1001);

    let mut w = Walrelay::start(
        "subset run (partitioned)",
        &with(
            args("run", &src, &tgt, "part", &["-s", "1"]),
            &run_args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ),
    );
    wait_streaming(&mut w);
    src.psql(
        "INSERT INTO m SELECT g, date '2026-01-01' + (g % 59), 'new' FROM generate_series(3001, 3500) g;
         INSERT INTO m_jan VALUES (9001, '2026-01-15', 'into a partition');
         UPDATE m SET d = d + 31 WHERE id % 10 = 0 AND d < '2026-01-29';
         UPDATE m SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM m WHERE id % 13 = 0;
         CREATE TABLE m_mar PARTITION OF m FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
         INSERT INTO m SELECT g, date '2026-03-01' + (g % 31), 'march' FROM generate_series(1, 400) g;
         ALTER TABLE m ADD COLUMN note text NOT NULL DEFAULT 'n';
         INSERT INTO m VALUES (9002, '2026-03-03', 'after the column', 'noted');
         UPDATE m SET note = 'moved' WHERE id % 11 = 0;
         UPDATE ev SET v = 'u' WHERE id % 3 = 0;
         DELETE FROM ev WHERE id % 17 = 0;
         INSERT INTO ev SELECT g, 'late' FROM generate_series(20001, 20100) g;
         DELETE FROM kv WHERE a = 1 AND b = 'x';
         UPDATE kv SET b = 'z' WHERE a = 2;",
    );
    // A row moved to another partition of the target: 11+ (10 cannot, and preflight says so).
    if tgt.major() >= 11 {
        src.psql("UPDATE ev SET id = id + 5000 WHERE id BETWEEN 990 AND 1009");
    }
    stop(&mut w);
    caught_up(&src, &tgt, "part", &run_args, &["m", "ev", "kv"]);
    assert_eq!(
        number(&tgt, "SELECT count(*) FROM m WHERE d >= '2026-03-01'"),
        number(&src, "SELECT count(*) FROM m_mar")
    );
    assert_eq!(
        tgt.psql("SELECT string_agg(a || b, ',' ORDER BY a, b) FROM kv"),
        "1y,2z"
    );
    let report = verify_green(&src, &tgt, "part");
    for t in tables {
        assert!(report.contains(t), "{report}");
    }

    if matrix_includes(12) {
        let old = source("subset-part-src12", 12);
        old.psql(
            "CREATE TABLE m12 (id int PRIMARY KEY) PARTITION BY RANGE (id);
             CREATE TABLE m12_1 PARTITION OF m12 FOR VALUES FROM (0) TO (100);",
        );
        let f = walrelay_cmd::run(
            &with(
                args("run", &old, &tgt, "part12", &[]),
                &table_args(&["public.m12"]),
            ),
            poll::timeout(),
        );
        assert_eq!(f.code(), Some(exit_code::SERVER_STATE), "{}", f.stderr);
        let errors = f.error_lines();
        assert_eq!(errors.len(), 1, "{}", f.stderr);
        assert!(
            errors[0].contains("needs publish_via_partition_root")
                && errors[0].contains("list its partitions with -t instead"),
            "{}",
            errors[0]
        );
    }
}

#[test]
fn a_value_the_target_cannot_hold_is_named_with_its_own_commit_lsn() {
    let src = source("subset-value-src", 15);
    let tgt = target("subset-value-tgt", 15);
    src.psql(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE moods (id int PRIMARY KEY, m mood);",
    );
    // Made by hand on the target, without the label 'sad'.
    tgt.psql(
        "CREATE TYPE mood AS ENUM ('ok');
         CREATE TABLE moods (id int PRIMARY KEY, m mood);",
    );
    run_to_end(&src, &tgt, "value", &["-t", "public.moods"]);
    // Three transactions applied in one target transaction; the middle one carries the value.
    src.psql("INSERT INTO moods VALUES (1, 'ok')");
    src.psql("INSERT INTO moods VALUES (2, 'sad')");
    src.psql("INSERT INTO moods VALUES (3, 'ok')");
    let f = run_end(&src, &tgt, "value", &[]);
    assert_eq!(f.code(), Some(4), "{}", f.stderr);
    let line = f.stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        line.contains("the target cannot take a value in source transaction")
            && line.contains("INSERT of public.moods key (id)=(2)")
            && line.contains("invalid input value for enum mood"),
        "{line}"
    );
    let lsn = line
        .split("(commit LSN ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no commit LSN in {line}"))
        .to_string();
    // The LSN named is that transaction's: skipping it applies the two others.
    let skipped = run_end(&src, &tgt, "value", &["--skip-lsn", &lsn]);
    assert_eq!(skipped.code(), Some(0), "{}", skipped.stderr);
    assert_eq!(
        tgt.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM moods"),
        "1,3"
    );

    // A source schema named walrelay is refused up front: on the target that schema holds
    // walrelay's state, which the table's copy and its advice would mix up.
    src.psql("CREATE SCHEMA walrelay; CREATE TABLE walrelay.subset_progress (id int PRIMARY KEY)");
    let refused = run_end(&src, &tgt, "other", &["-t", "walrelay.subset_progress"]);
    assert_eq!(refused.code(), Some(4), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("is in a schema named walrelay"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        tgt.psql("SELECT count(*) FROM walrelay.subset_progress WHERE subset = 'value'"),
        "1",
        "the state is untouched"
    );
    // A table without columns, even with --replica-identity-full: refused before anything is
    // set on the source.
    src.psql("CREATE TABLE zero_columns ()");
    let refused = run_end(
        &src,
        &tgt,
        "other",
        &[
            "-t",
            "public.zero_columns",
            "--replica-identity-full",
            "public.zero_columns",
        ],
    );
    assert_eq!(refused.code(), Some(4), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("has no columns"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        src.psql("SELECT relreplident FROM pg_class WHERE relname = 'zero_columns'"),
        "d"
    );
    // A plain target column for a generated source column would stay NULL: refused.
    src.psql("CREATE TABLE gen (id int PRIMARY KEY, g int GENERATED ALWAYS AS (id * 2) STORED)");
    tgt.psql("CREATE TABLE gen (id int PRIMARY KEY, g int)");
    let refused = run_end(&src, &tgt, "gen", &["-t", "public.gen"]);
    assert_eq!(refused.code(), Some(4), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "column g of public.gen is generated on the source but a plain column on the target"
        ),
        "{}",
        refused.stderr
    );
    // -d at another database of the source's server: named as that, with no advice to drop the
    // slot or copy everything again.
    src.psql("CREATE DATABASE otherdb");
    let mut wrong_db = args("run", &src, &tgt, "value", &["-E", "0/0"]);
    assert!(wrong_db[3].contains("dbname=postgres"), "{}", wrong_db[3]);
    wrong_db[3] = wrong_db[3].replace("dbname=postgres", "dbname=otherdb");
    let refused = walrelay_cmd::run(&wrong_db, poll::timeout());
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("subset value streams from database postgres of the source, but -d connects to database otherdb")
            && !refused.stderr.contains("pg_drop_replication_slot")
            && !refused.stderr.contains("--resync-all"),
        "{}",
        refused.stderr
    );
}

/// Creating the subset's slot waits for every transaction open on the source, in any database —
/// forever for a forgotten prepared transaction or an `idle in transaction` session, which is how
/// a first run looks hung. The run names them (the session by pid, the prepared transaction by
/// gid) while it waits, and starts once they end.
#[test]
fn slot_creation_names_the_transactions_it_waits_for() {
    let src = Cluster::builder()
        .name("subset-wait-src")
        .major(15)
        .wal_level("logical")
        .fsync(false)
        .conf("max_prepared_transactions = 2")
        .start();
    let tgt = target("subset-wait-tgt", 15);
    src.psql("CREATE TABLE waits (id int PRIMARY KEY); INSERT INTO waits VALUES (1)");
    src.psql("BEGIN; INSERT INTO waits VALUES (2); PREPARE TRANSACTION 'forgotten'");
    std::thread::scope(|s| {
        let sleeper =
            s.spawn(|| src.try_psql("BEGIN; SELECT txid_current(); SELECT pg_sleep(600); COMMIT"));
        let pid_sql = "SELECT pid FROM pg_stat_activity \
                       WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(600)%'";
        poll::wait_until(
            "the open transaction on the source",
            || !src.psql(pid_sql).trim().is_empty(),
            String::new,
        );
        let pid = src.psql(pid_sql).trim().to_string();
        let mut w = Walrelay::start(
            "subset-wait",
            &args(
                "run",
                &src,
                &tgt,
                "wait",
                &["-t", "public.waits", "-s", "1"],
            ),
        );
        w.wait_log("prepared transaction 'forgotten'", poll::timeout());
        let log = w.log();
        let line = log
            .lines()
            .find(|l| l.contains("prepared transaction 'forgotten'"))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("pid {pid} (postgres@postgres, active)"))
                && line.contains("waits for the transactions open on the source to end")
                && line.contains("ROLLBACK PREPARED"),
            "{line}"
        );
        eprintln!("{line}");
        assert!(!log.contains("streaming"), "{log}");
        src.psql("ROLLBACK PREPARED 'forgotten'");
        src.psql(&format!("SELECT pg_terminate_backend({pid})"));
        assert!(sleeper.join().expect("psql thread").is_err());
        wait_streaming(&mut w);
        src.psql("INSERT INTO waits VALUES (3)");
        wait_target(&tgt, &w, "SELECT count(*) FROM waits", "2");
        stop(&mut w);
    });
    assert_same_rows(&src, &tgt, &["public.waits"]);
}

/// A migration's temporary column — added, used, dropped — while walrelay is behind: when the
/// stream reaches the ADD, the source's catalog no longer has the column. Dropped since (no live
/// column unaccounted for): followed, the column there for the changes in between and dropped
/// with the source's DROP. Renamed since: the values could belong to the new name, so the run
/// stops naming `--resync`, which brings every row.
#[test]
fn a_column_added_and_dropped_while_the_target_is_behind_is_followed() {
    let src = source("subset-adddrop-src", 15);
    let tgt = target("subset-adddrop-tgt", 15);
    src.psql(
        "CREATE TABLE m (id int PRIMARY KEY, v text);
         INSERT INTO m SELECT g, 'old' FROM generate_series(1, 3) g",
    );
    run_to_end(&src, &tgt, "adddrop", &["-t", "public.m"]);
    src.psql("ALTER TABLE m ADD COLUMN tmp int NOT NULL DEFAULT 7");
    src.psql("INSERT INTO m VALUES (4, 'new', 8)");
    src.psql("UPDATE m SET v = 'touched' WHERE id = 1");
    let between = src.current_wal_lsn();
    src.psql("ALTER TABLE m DROP COLUMN tmp");
    src.psql("INSERT INTO m VALUES (5, 'after')");
    let f = walrelay_cmd::run(
        &args(
            "run",
            &src,
            &tgt,
            "adddrop",
            &["-E", &between.to_string(), "-s", "1"],
        ),
        poll::timeout(),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stderr
            .contains("column added and dropped again on the source since"),
        "{}",
        f.stderr
    );
    // In between: the rows the source sent carry its values; older rows hold NULL.
    assert_eq!(
        tgt.psql(
            "SELECT string_agg(id || ':' || v || ':' || coalesce(tmp::text, 'NULL'), ',' ORDER BY id) FROM m"
        ),
        "1:touched:7,2:old:NULL,3:old:NULL,4:new:8"
    );
    caught_up(&src, &tgt, "adddrop", &[], &["public.m"]);
    assert_eq!(
        tgt.psql(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'm'::regclass AND attname = 'tmp' AND NOT attisdropped"
        ),
        "0"
    );

    // Renamed instead of dropped: not followed.
    src.psql("ALTER TABLE m ADD COLUMN x int DEFAULT 1");
    src.psql("INSERT INTO m VALUES (6, 'x', 2)");
    src.psql("ALTER TABLE m RENAME COLUMN x TO y");
    src.psql("INSERT INTO m VALUES (7, 'y', 3)");
    run_stops(
        &src,
        &tgt,
        "adddrop",
        &[],
        &[
            "column x (new in this transaction) was dropped or renamed again since",
            "--resync public.m",
        ],
    );
    caught_up(
        &src,
        &tgt,
        "adddrop",
        &["--resync", "public.m"],
        &["public.m"],
    );
}

/// Columns whose names and types look unchanged but are other columns: two swapped by renames
/// (no difference in the Relation at all), and one renamed away with a new column taking its
/// name. Matched by name, values landed in the wrong column without a word; both stop naming
/// the change, and --resync recovers.
#[test]
fn columns_swapped_or_renamed_and_replaced_stop_the_run() {
    let src = source("subset-swap-src", 15);
    let tgt = target("subset-swap-tgt", 15);
    src.psql(
        "CREATE TABLE s (id int PRIMARY KEY, a int, b int);
         INSERT INTO s SELECT g, g, 100 + g FROM generate_series(1, 3) g",
    );
    run_to_end(&src, &tgt, "swap", &["-t", "public.s"]);

    // Swapped while walrelay streams.
    let mut w = Walrelay::start("subset run", &args("run", &src, &tgt, "swap", &["-s", "1"]));
    wait_streaming(&mut w);
    src.psql("INSERT INTO s VALUES (4, 4, 104)");
    wait_target(&tgt, &w, "SELECT count(*) FROM s", "4");
    src.psql(
        "BEGIN;
         ALTER TABLE s RENAME COLUMN a TO tmp;
         ALTER TABLE s RENAME COLUMN b TO a;
         ALTER TABLE s RENAME COLUMN tmp TO b;
         COMMIT;
         INSERT INTO s VALUES (5, 105, 5)",
    );
    stops_while_running(
        &mut w,
        "swapped columns",
        &[
            "its column a there is not the column walrelay followed under that name",
            "is named b now",
            "--resync public.s",
        ],
    );
    assert_eq!(tgt.psql("SELECT count(*) FROM s"), "4", "row 5 applied");
    // The columns' order differs now (the source's a is its third): compared by name.
    let by_name = "SELECT string_agg(id || ':' || a || ':' || b, ',' ORDER BY id) FROM s";
    run_to_end(&src, &tgt, "swap", &["--resync", "public.s"]);
    assert_eq!(tgt.psql(by_name), src.psql(by_name));
    assert_eq!(src.psql(by_name), "1:101:1,2:102:2,3:103:3,4:104:4,5:5:105");

    // Renamed away, and a new column under the old name (a migration keeping the old values).
    src.psql(
        "BEGIN;
         ALTER TABLE s RENAME COLUMN a TO a_old;
         ALTER TABLE s ADD COLUMN a int DEFAULT 0;
         COMMIT;
         INSERT INTO s (id, b, a) VALUES (6, 6, 7)",
    );
    run_stops(
        &src,
        &tgt,
        "swap",
        &[],
        &[
            "its column a there is not the column walrelay followed under that name",
            "is named a_old now",
            "--resync public.s",
        ],
    );
    run_to_end(&src, &tgt, "swap", &["--resync", "public.s"]);
    let by_name = "SELECT string_agg(id || ':' || a || ':' || b || ':' || coalesce(a_old::text, '-'), ',' ORDER BY id) FROM s";
    assert_eq!(tgt.psql(by_name), src.psql(by_name));
}

/// ADD COLUMN where the value the existing rows got cannot be read off the source's catalog:
/// partitions that got different defaults while detached (one value would be wrong for some
/// rows) stop, naming --resync. On PostgreSQL 10, which records no `attmissingval`, the default
/// the column was added with is followed, rows updated since keeping their own values.
#[test]
fn added_columns_whose_old_rows_value_is_unknown_stop_known_ones_follow() {
    let src = source("subset-addval-src", 15);
    let tgt = target("subset-addval-tgt", 15);
    src.psql(
        "CREATE TABLE p (id int, w int, PRIMARY KEY (id, w)) PARTITION BY LIST (w);
         CREATE TABLE p5 PARTITION OF p FOR VALUES IN (5);
         CREATE TABLE p7 PARTITION OF p FOR VALUES IN (7);
         INSERT INTO p SELECT g, 5 + 2 * (g % 2) FROM generate_series(1, 10) g",
    );
    run_to_end(&src, &tgt, "addval", &["-t", "public.p"]);
    src.psql(
        "ALTER TABLE p DETACH PARTITION p7;
         ALTER TABLE p7 ADD COLUMN c int DEFAULT 7;
         ALTER TABLE p ADD COLUMN c int DEFAULT 5;
         ALTER TABLE p ATTACH PARTITION p7 FOR VALUES IN (7);
         INSERT INTO p VALUES (100, 5, 5)",
    );
    run_stops(
        &src,
        &tgt,
        "addval",
        &[],
        &[
            "with different values in different partitions",
            "--resync public.p",
        ],
    );
    let by_name = "SELECT string_agg(id || ':' || w || ':' || c, ',' ORDER BY id, w) FROM p";
    run_to_end(&src, &tgt, "addval", &["--resync", "public.p"]);
    assert_eq!(tgt.psql(by_name), src.psql(by_name));

    if !matrix_includes(10) {
        eprintln!("PostgreSQL 10 part skipped: WALRELAY_PG_MAJORS does not list 10");
        return;
    }
    let old = source("subset-addval-src10", 10);
    old.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5)");
    run_to_end(&old, &tgt, "addval10", &["-t", "public.t"]);
    // The default the column was added with: the old rows' value; a row updated since streams
    // its own.
    old.psql("ALTER TABLE t ADD COLUMN b int DEFAULT 3; INSERT INTO t VALUES (6)");
    old.psql("UPDATE t SET b = 9 WHERE id = 2");
    run_to_end(&old, &tgt, "addval10", &[]);
    let b_only = "SELECT string_agg(id || ':' || b, ',' ORDER BY id) FROM t";
    assert_eq!(tgt.psql(b_only), old.psql(b_only));
    assert_eq!(old.psql(b_only), "1:3,2:9,3:3,4:3,5:3,6:3");
}

/// A table added to a subset that streams, on a source whose pgoutput can keep it unpublished
/// for the rest of a decoding session (10–12; 13–17 before their 2025 minors): a transaction
/// running across the ALTER PUBLICATION that touches the table makes the walsender cache it as
/// not published, and every later change of it was filtered out — the copy was complete, the
/// stream silently lost everything after it. walrelay starts the stream afresh past the new
/// table's sync point.
#[test]
fn a_table_added_across_an_open_transaction_keeps_its_changes() {
    let Some(major) = [12, 11, 10].into_iter().find(|&m| matrix_includes(m)) else {
        eprintln!("skipped: WALRELAY_PG_MAJORS lists none of 10, 11, 12");
        return;
    };
    let src = source("subset-addtx-src", major);
    let tgt = target("subset-addtx-tgt", 15);
    src.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1)",
    );
    run_to_end(&src, &tgt, "addtx", &["-t", "public.a"]);
    std::thread::scope(|s| {
        // Begun before walrelay adds b to the publication, committed after: the slot for b's
        // copy waits for it.
        let across = s.spawn(|| {
            src.psql(
                "BEGIN; INSERT INTO b VALUES (1000); SELECT pg_sleep(4);
                 INSERT INTO b VALUES (1001); COMMIT",
            )
        });
        poll::wait_until(
            "the transaction across the ALTER PUBLICATION",
            || {
                src.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(4)%'",
                ) == "1"
            },
            String::new,
        );
        let mut w = Walrelay::start(
            "subset run",
            &args(
                "run",
                &src,
                &tgt,
                "addtx",
                &["-t", "public.a", "-t", "public.b", "-s", "1"],
            ),
        );
        across.join().expect("psql thread");
        wait_streaming(&mut w);
        src.psql("INSERT INTO b SELECT generate_series(2, 101); INSERT INTO a VALUES (2)");
        wait_target(&tgt, &w, "SELECT count(*) FROM a", "2");
        wait_target(&tgt, &w, "SELECT count(*) FROM b", "103");
        stop(&mut w);
    });
    assert_same_rows(&src, &tgt, &["public.a", "public.b"]);
}
