//! The object store stopped for 30 seconds under load: `receive -D s3://… --spool DIR` goes on
//! receiving and acknowledging (the slot keeps advancing), the spool grows, the metrics and a
//! warning say so; when the store is back the uploads resume by themselves and the bucket ends
//! with every segment, identical to the primary's. Real SeaweedFS (its own server: it is stopped)
//! and real PostgreSQL 15.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::{Duration, Instant};

use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_testkit::{poll, Cluster, PgBench};

mod support;
use support::bucket::{self, has_segment, metric, metrics, mirror, segment_before};
use support::wal_files::{assert_contiguous, assert_identical_to_server};

const OUTAGE: Duration = Duration::from_secs(30);

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1024 * 1024).unwrap()
}

fn slot_lsn(primary: &Cluster) -> Lsn {
    primary
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'outage'")
        .trim()
        .parse()
        .unwrap_or(Lsn(0))
}

#[test]
fn store_outage_under_load_only_grows_the_spool() {
    let mut server = bucket::start_server("walrelay-outage");
    let url = server.url("outage");
    let primary = Cluster::builder()
        .name("s3-outage")
        .wal_segsize_mb(1)
        .conf("wal_keep_size = '1GB'")
        .start();
    let sysid = primary.system_identifier();
    primary.pgbench_init(1);
    let (metrics_addr, port) = bucket::metrics_addr();
    let (mut w, _spool) = bucket::start_receive(
        &primary,
        &url,
        "outage",
        &[
            "--compress",
            "gzip:1",
            "-s",
            "1",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let store = bucket::store(&url);
    let log_path = w.log_path().to_path_buf();
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    let load = primary.pgbench(
        &PgBench::duration(OUTAGE + Duration::from_secs(12))
            .clients(2)
            .rate(300),
    );
    poll::wait_until(
        "the first uploads",
        || {
            w.assert_running();
            bucket::wal_names(store.as_ref(), sysid).len() >= 2
        },
        log,
    );

    // The store goes away for 30 s.
    server.stop();
    let stopped = Instant::now();
    let acked_at_stop = slot_lsn(&primary);
    // restore_command against a store that is down: 201, which stops recovery (never 1, which
    // would end it early).
    let dest = tempfile::tempdir().unwrap();
    let restore = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["restore", "000000010000000000000001"])
        .arg(dest.path().join("RECOVERYXLOG"))
        .args(["-D", &url, "--system-identifier", &sysid.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&restore.stderr);
    assert_eq!(restore.status.code(), Some(201), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains(walrelay_testkit::s3::SECRET_KEY), "{err}");
    let mut max_pending = 0;
    while stopped.elapsed() < OUTAGE {
        w.assert_running();
        max_pending = max_pending.max(metric(
            &metrics(port),
            "walrelay_upload_spool_pending_files",
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
    // Receiving went on: the server saw WAL acknowledged all along.
    let acked = slot_lsn(&primary);
    assert!(
        acked.0 >= acked_at_stop.0 + 3 * 1024 * 1024,
        "the slot must advance during the outage: {acked_at_stop} -> {acked}"
    );
    let m = metrics(port);
    assert_eq!(metric(&m, "walrelay_upload_failing"), 1, "{m}");
    assert!(metric(&m, "walrelay_upload_failures_total") >= 1, "{m}");
    assert!(
        max_pending >= 3,
        "the spool grew: at most {max_pending} files waited\n{m}"
    );
    // The age of what waits tells an outage (or a hung store, where `failing` says nothing
    // until a request times out): WAL from the outage's first seconds is still there.
    let oldest = metric(&m, "walrelay_upload_spool_oldest_pending_age_seconds");
    assert!(
        oldest >= OUTAGE.as_secs() / 3 && oldest < 3600,
        "oldest pending file {oldest} s old after a {} s outage\n{m}",
        OUTAGE.as_secs()
    );
    assert!(
        w.log().contains("cannot upload to the archive"),
        "a warning says so: {}",
        w.log()
    );

    // Back: uploads resume by themselves.
    server.start_again().unwrap();
    poll::wait_until(
        "uploads to resume",
        || {
            w.assert_running();
            w.log().contains("uploads to the archive resumed")
        },
        log,
    );
    load.wait().unwrap();
    let end = primary.switch_wal();
    let last = segment_before(end, seg());
    poll::wait_until(
        "the last segment in the bucket",
        || {
            w.assert_running();
            has_segment(store.as_ref(), sysid, last, seg())
        },
        log,
    );
    poll::wait_until(
        "the spool to drain",
        || metric(&metrics(port), "walrelay_upload_spool_pending_files") <= 1,
        || metrics(port),
    );
    assert_eq!(metric(&metrics(port), "walrelay_upload_failing"), 0);

    // Nothing missing, nothing different.
    let mirror_dir = primary.scratch_path("mirror");
    let names = mirror(store.as_ref(), sysid, seg(), &mirror_dir);
    let (_, last_segno) = assert_contiguous(&mirror_dir, TimelineId(1), seg());
    assert_eq!(last_segno, last.segno, "{names:?}");
    assert_identical_to_server(&mirror_dir, &primary.data_dir().join("pg_wal"), seg());
}
