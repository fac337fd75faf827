//! The archive in object storage, end to end against a real S3-compatible server (SeaweedFS,
//! started by the testkit) and real PostgreSQL 15:
//!
//! * [`archives_into_s3_and_recovers_from_the_bucket`]: `receive -D s3://… --spool DIR
//!   --compress zstd` under pgbench; every uploaded segment, decompressed, is byte-identical to the
//!   primary's own; the spool keeps only what is not uploaded yet; the metrics report the uploaded
//!   position; `verify` on the bucket passes; a PITR straight from the bucket (with `--prefetch`)
//!   reaches the last commit; `prune` on the bucket removes old segments and never `.history`.
//! * [`kill9_during_uploads_leaves_the_bucket_complete`]: `receive` killed with SIGKILL three
//!   times while it uploads, restarted each time: the bucket ends with every segment, contiguous,
//!   each whole (no half-written object) and identical to the server's.
//!
//! * [`a_store_that_refuses_walrelay_stops_receive_at_once`]: a wrong secret, no credentials at
//!   all (the client's fallback to a metadata service gets none), a bucket that does not exist:
//!   `receive` exits 3 within seconds with one error line naming the fix, instead of filling its
//!   spool; a store that is down is no reason to stop (the spool is for that).
//!
//! The tests share one server (different prefixes); the outage test has its own file.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_testkit::{poll, Cluster, PgBench, S3Server, StopMode};

mod support;
use support::bucket::{self, has_segment, mirror, segment_before};
use support::recovery::{recover, walrelay_for_postgres};
use support::wal_files::{assert_contiguous, assert_identical_to_server};
use support::walrelay_cmd::Walrelay;

const MB: u64 = 1024 * 1024;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

/// One server for this test process.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| bucket::start_server("walrelay-tests"))
}

fn primary(name: &str) -> Cluster {
    Cluster::builder()
        .name(name)
        .wal_segsize_mb(1)
        .conf("wal_keep_size = '1GB'")
        .start()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Waits until the bucket holds the segment before `lsn`, while `w` keeps running.
fn wait_uploaded(url: &str, sysid: u64, lsn: Lsn, w: &mut Walrelay) {
    let store = bucket::store(url);
    let segment = segment_before(lsn, seg());
    poll::wait_until(
        &format!("{} in {url}", segment.file_name(seg())),
        || {
            w.assert_running();
            has_segment(store.as_ref(), sysid, segment, seg())
        },
        || format!("bucket: {:?}", bucket::wal_names(store.as_ref(), sysid)),
    );
}

/// `walrelay ARGS` against the S3 endpoint `endpoint` with the test server's credentials (the
/// store may be down or the endpoint malformed); returns (exit code, stderr).
fn walrelay_at(endpoint: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "walrelay-test")
        .env("AWS_SECRET_ACCESS_KEY", "walrelay-test-secret")
        .env("AWS_REGION", "us-east-1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `walrelay ARGS` to completion; returns (exit code, stdout, stderr).
fn walrelay(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn archives_into_s3_and_recovers_from_the_bucket() {
    let server = server();
    let url = server.url("pitr");
    let mut primary = primary("s3-pitr");
    let sysid = primary.system_identifier();
    let bin = walrelay_for_postgres(&primary);
    primary.pgbench_init(1);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    let (metrics_addr, port) = bucket::metrics_addr();
    let (mut w, spool) = bucket::start_receive(
        &primary,
        &url,
        "s3_pitr",
        &["--compress", "zstd", "--metrics-addr", &metrics_addr],
    );
    let backup = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);

    let mut load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(6))
            .clients(2)
            .rate(300),
    );
    let mut i = 0;
    while load.is_running() {
        i += 1;
        primary.psql(&format!("INSERT INTO marker VALUES ({i})"));
    }
    load.wait().unwrap();
    primary.psql("INSERT INTO marker VALUES (1000)"); // the last commit
    let end = primary.switch_wal();
    wait_uploaded(&url, sysid, end, &mut w);

    // The uploaded position is exported, and the spool holds only what is not uploaded (plus the
    // newest segment file, which a restart resumes from).
    poll::wait_until(
        "walrelay_upload_uploaded_lsn to reach the switch",
        || bucket::metric(&bucket::metrics(port), "walrelay_upload_uploaded_lsn") >= end.0 - 1,
        || bucket::metrics(port),
    );
    let in_spool: Vec<String> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() >= 24 && n.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit))
        .collect();
    assert!(
        in_spool.len() <= 3,
        "the spool keeps uploaded segments: {in_spool:?}"
    );

    primary.stop(StopMode::Fast);
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.wait(poll::timeout());

    // Every object is a whole segment whose SHA-256 was stored with it, and, decompressed,
    // byte-identical to the primary's copy; no gap.
    let store = bucket::store(&url);
    let mirror_dir = primary.scratch_path("mirror");
    let names = mirror(store.as_ref(), sysid, seg(), &mirror_dir);
    assert!(names.len() >= 5, "{names:?}");
    let compared =
        assert_identical_to_server(&mirror_dir, &primary.data_dir().join("pg_wal"), seg());
    assert_eq!(compared, names.len());
    assert_contiguous(&mirror_dir, TimelineId(1), seg());
    let objects = bucket::wal_names(store.as_ref(), sysid);
    assert!(
        objects
            .iter()
            .filter(|n| n.len() > 24)
            .all(|n| n.ends_with(".zst")),
        "{objects:?}"
    );

    // verify reads the bucket: every page header and record CRC, every stored SHA-256.
    let (code, out, err) = walrelay(&["verify", "-D", &url, "--require-checksums"]);
    assert_eq!(code, Some(0), "verify: {out}{err}");
    assert!(
        out.contains(&format!("{} checksums matched", names.len())),
        "{out}"
    );

    // PITR straight from the bucket, with prefetch: the last commit is there.
    let restore = format!("{} restore %f %p -D {url} --prefetch 4 -v", s(&bin));
    {
        let recovered = recover(&primary, &backup, "s3-recovered", &restore, &[]);
        assert_eq!(
            recovered.psql("SELECT max(id), count(*) FROM marker"),
            format!("1000|{}", i + 1),
            "every commit up to the last"
        );
        let log = recovered.log_tail(400);
        assert!(
            log.contains("restored log file"),
            "WAL came from the bucket: {log}"
        );
        assert!(
            log.contains(".walrelay-prefetch/"),
            "segments came from the prefetch cache: {log}"
        );
    }

    // prune on the bucket: segments before the point go, on every timeline; .history never (an
    // old timeline's history, as a failover would have left it).
    let keep = &names[names.len() / 2];
    let history = walrelay_store::WalLayout::new(sysid).object("00000001.history");
    bucket::runtime()
        .block_on(walrelay_store::put_new(
            store.as_ref(),
            &history,
            bytes::Bytes::from_static(b""),
            &walrelay_store::ObjectAttrs::default(),
        ))
        .unwrap();
    let objects = bucket::wal_names(store.as_ref(), sysid);
    let (code, out, err) = walrelay(&["prune", "-D", &url, "--before", keep, "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        bucket::wal_names(store.as_ref(), sysid),
        objects,
        "dry run removes nothing"
    );
    let (code, out, err) = walrelay(&["prune", "-D", &url, "--before", keep, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let left = bucket::wal_names(store.as_ref(), sysid);
    assert!(
        left.iter()
            .all(|n| n.as_str() >= keep.as_str() || n.ends_with(".history")),
        "{left:?}"
    );
    assert!(left.contains(&"00000001.history".to_string()), "{left:?}");
    assert_eq!(left.len(), objects.len() - names.len() / 2, "{out}");
    bucket::runtime().block_on(store.delete(&history)).unwrap();
    let (code, out, err) = walrelay(&["verify", "-D", &url]);
    assert_eq!(code, Some(0), "verify after prune: {out}{err}");
}

#[test]
fn kill9_during_uploads_leaves_the_bucket_complete() {
    let server = server();
    let url = server.url("kill9");
    let primary = primary("s3-kill9");
    let sysid = primary.system_identifier();
    primary.pgbench_init(1);
    let (mut w, _spool) = bucket::start_receive(
        &primary,
        &url,
        "s3_kill9",
        &["--compress", "lz4", "--upload-concurrency", "2"],
    );
    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(12))
            .clients(2)
            .rate(400),
    );
    let store = bucket::store(&url);
    for round in 0..3 {
        // Kill while uploads are going on: once objects have started to arrive.
        let before = bucket::wal_names(store.as_ref(), sysid).len();
        poll::wait_until(
            &format!("uploads before kill {round}"),
            || {
                w.assert_running();
                bucket::wal_names(store.as_ref(), sysid).len() > before
            },
            || format!("bucket: {:?}", bucket::wal_names(store.as_ref(), sysid)),
        );
        w.kill9();
        w.restart();
    }
    load.wait().unwrap();
    let end = primary.switch_wal();
    wait_uploaded(&url, sysid, end, &mut w);
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.wait(poll::timeout());

    let mirror_dir = primary.scratch_path("mirror");
    let names = mirror(store.as_ref(), sysid, seg(), &mirror_dir);
    let (first, last) = assert_contiguous(&mirror_dir, TimelineId(1), seg());
    assert_eq!(last, segment_before(end, seg()).segno, "{names:?}");
    assert_eq!(names.len() as u64, last.0 - first.0 + 1);
    assert_identical_to_server(&mirror_dir, &primary.data_dir().join("pg_wal"), seg());
    assert!(
        w.full_log()
            .contains("uploading completed WAL from the spool"),
        "{}",
        w.full_log()
    );
}

#[test]
fn a_store_that_refuses_walrelay_stops_receive_at_once() {
    let server = server();
    let primary = primary("s3-refusals");
    let spool = primary.scratch_path("spool");
    fs::create_dir_all(&spool).unwrap();
    let receive = |url: &str, spool: &Path| bucket::receive_once(&primary, url, spool);
    // Long enough for a stream that should not stop to show it, short of the test's timeout.
    let limit = Duration::from_secs(60);
    let url = server.url("refused");

    let wrong_secret = receive(&url, &spool)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .run_within(limit);
    let line = wrong_secret.assert_failed(3, &["uploading WAL to the archive stopped"]);
    assert!(line.contains("check the credentials"), "{line}");
    assert!(!line.contains("not-the-secret"), "{line}");

    // No credentials in the environment: the client asks a metadata service (here one that is
    // not there, instead of whatever 169.254.169.254 is on the machine running the tests).
    let no_credentials = receive(&url, &spool)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env(
            "AWS_METADATA_ENDPOINT",
            &format!("http://127.0.0.1:{}", support::free_port()),
        )
        .run_within(limit);
    no_credentials.assert_failed(
        3,
        &["no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"],
    );

    let no_bucket = receive("s3://no-such-bucket/p", &spool).run_within(limit);
    no_bucket.assert_failed(3, &["check the bucket name"]);

    // A store that is down is not a refusal: the stream goes on into the spool (here up to an end
    // position, then a normal stop).
    let down_spool = primary.scratch_path("down-spool");
    fs::create_dir_all(&down_spool).unwrap();
    primary.psql("SELECT pg_create_physical_replication_slot('down', true)");
    let end = primary.switch_wal();
    let down = receive(&server.url("down"), &down_spool)
        .args(&["-S", "down", "-E", &end.to_string()])
        .env(
            "AWS_ENDPOINT_URL",
            &format!("http://127.0.0.1:{}", support::free_port()),
        )
        .run_within(limit);
    assert_eq!(down.status.code(), Some(0), "{}", down.stderr);
    assert!(
        down.stderr.contains("end position reached"),
        "{}",
        down.stderr
    );
    let spooled: Vec<String> = fs::read_dir(&down_spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let wal = segment_before(end, seg()).file_name(seg());
    assert!(
        spooled.iter().any(|n| n.starts_with(&wal)),
        "{wal} in the spool: {spooled:?}"
    );
}

#[test]
fn remote_archive_usage_errors() {
    // An archive in object storage needs a spool; credentials never go into a URL, and the
    // refusal does not repeat them.
    let (code, _, err) = walrelay(&["receive", "-d", "host=127.0.0.1", "-D", "s3://b/p"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--spool"), "{err}");
    let (code, _, err) = walrelay(&["verify", "-D", "s3://AKIDEXAMPLE:hunter2@bucket/p"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("hunter2") && !err.contains("AKIDEXAMPLE"),
        "{err}"
    );
    // restore_command with a bad URL: 201, never 1 or 2 (PostgreSQL would end recovery early).
    let (code, _, err) = walrelay(&[
        "restore",
        "000000010000000000000001",
        "/tmp/x",
        "-D",
        "ftp://x/y",
    ]);
    assert_eq!(code, Some(201), "{err}");

    // A malformed endpoint (no scheme, a trailing space from an EnvironmentFile, a bad port)
    // made the S3 client panic on its first request: restore exited 1 ("not in the archive", so
    // PostgreSQL promoted early) and receive streamed on into a spool nothing emptied. Now each
    // command refuses it up front, naming the variable: restore 201, the others 3.
    let spool = tempfile::tempdir().unwrap();
    for endpoint in [
        "127.0.0.1:8333",
        "http://127.0.0.1:8333 ",
        "http://127.0.0.1:99999",
    ] {
        for (args, want) in [
            (
                vec![
                    "restore",
                    "000000010000000000000001",
                    "/tmp/x",
                    "-D",
                    "s3://b/p",
                ],
                201,
            ),
            (vec!["verify", "-D", "s3://b/p"], 3),
            (vec!["backup", "list", "-D", "s3://b/p"], 3),
            (
                vec![
                    "receive",
                    "-d",
                    "host=127.0.0.1 port=1",
                    "-D",
                    "s3://b/p",
                    "--spool",
                    s(spool.path()),
                ],
                3,
            ),
        ] {
            let (code, err) = walrelay_at(endpoint, &args);
            assert_eq!(code, Some(want), "{args:?} {endpoint:?}: {err}");
            assert!(
                err.contains("AWS_ENDPOINT_URL") && err.contains("write the store's address")
                    || err.contains("remove it"),
                "{args:?} {endpoint:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn an_unreachable_store_is_not_a_verdict() {
    // verify's 1 means "problems found": a store that cannot be reached must not read the same to
    // a cron check. Both commands that only read or tidy the archive exit 5, "archive unreadable".
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        &["verify", "-D", "s3://bucket/p"][..],
        &["prune", "-D", "s3://bucket/p", "--keep-backups", "1"][..],
        &[
            "prune",
            "-D",
            "s3://bucket/p",
            "--before",
            "000000010000000000000009",
        ][..],
    ] {
        let (code, err) = walrelay_at(&closed, args);
        assert_eq!(code, Some(5), "{args:?}: {err}");
        assert!(err.contains("the archive could not be reached"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!err.contains("walrelay-test-secret"), "{err}");
    }
    // The backup commands and a restore from the bucket: a store problem (5), as documented,
    // not "other" (1); nothing is left where the restore was to go.
    let scratch = tempfile::tempdir().unwrap();
    let restored = scratch.path().join("restored");
    for args in [
        &["backup", "list", "-D", "s3://bucket/p"][..],
        &["backup", "delete", "-D", "s3://bucket/p", "b1"][..],
        &[
            "bootstrap",
            "-D",
            s(&restored),
            "--from-archive",
            "s3://bucket/p",
            "--target",
            "immediate",
        ][..],
    ] {
        let (code, err) = walrelay_at(&closed, args);
        assert_eq!(code, Some(5), "{args:?}: {err}");
        assert!(err.contains("check the endpoint"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert!(!restored.exists());
}
