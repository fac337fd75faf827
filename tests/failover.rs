//! `receive` through a failover, against real PostgreSQL 15: the HA set-up every Patroni/repmgr shop
//! runs — primary A, streaming standby B, `walrelay receive -d "host=A,B
//! target_session_attrs=read-write"` — then A crashes and B is promoted.
//!
//! * [`a_caught_up_standby_promoted_at_a_segment_boundary`]: B had everything; A's last act was a
//!   `pg_switch_wal()`, so the archive stands exactly at B's switchpoint (the walsender answers a
//!   start there without COPY). The archive goes on by itself on timeline 2, byte-identical to B,
//!   and a PITR from a base backup taken before the failover reaches B's last commit.
//! * [`a_standby_behind_the_archive_is_followed_and_the_loss_counted`]: B was stopped while A
//!   committed more (an asynchronous standby behind the archive). walrelay keeps A's orphaned WAL,
//!   continues on B's timeline 2, and reports exactly the commits B never had; `verify` accepts the
//!   archive; the PITR reaches B's commits and has none of the lost ones.
//! * [`a_sidecar_standby_continues_only_if_it_did_not_replay_the_lost_wal`]: a standby fed by
//!   `receive --pg-wal` whose replay was paused before the lost commits continues on timeline 2
//!   (walrelay takes the orphaned WAL out of its `pg_wal`); with replay running past the switch,
//!   walrelay stops, naming pg_rewind.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use walrelay_protocol::{TimelineId, WalSegmentSize};
use walrelay_testkit::{poll, Cluster, Lsn, StopMode};

use support::recovery::{archive_dir, copy_dir, recover, walrelay_for_postgres};
use support::walrelay_cmd::{receive_args, Walrelay};
use support::{exit_code, server, wal_files};

const APP: &str = "wr_failover";

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1024 * 1024).unwrap()
}

/// Primary A (no autovacuum: every commit in its WAL is one the test made), a base backup taken
/// now for the PITR at the end, and B streaming from A.
struct Pair {
    a: Cluster,
    b: Cluster,
    backup: PathBuf,
}

fn pair(name: &str) -> Pair {
    let a = Cluster::builder()
        .name(name)
        .wal_segsize_mb(1)
        .fsync(false)
        .conf("autovacuum = off")
        .conf("wal_keep_size = '1GB'")
        .conf("max_wal_size = '1GB'")
        .conf("checkpoint_timeout = '30min'")
        .start();
    a.psql("CREATE TABLE marker (id int PRIMARY KEY, phase text NOT NULL)");
    let backup = a.pg_basebackup(&["-X", "stream", "-c", "fast"]);
    let b_dir = a.scratch_path("b-data");
    copy_dir(&backup, &b_dir);
    let b = a
        .standby(&b_dir)
        .name(&format!("{name}-b"))
        .follow(&a.replication_conninfo())
        .start();
    b.catch_up(&a);
    Pair { a, b, backup }
}

/// `host=A,B target_session_attrs=read-write`, as an HA set-up names its servers.
fn host_list(a: &Cluster, b: &Cluster) -> String {
    format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={} dbname=postgres target_session_attrs=read-write application_name={APP} connect_timeout=5",
        a.port(),
        b.port(),
        a.superuser()
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `n` single-row transactions in `marker`, ids from `first`, each its own commit.
fn commit_markers(c: &Cluster, first: u32, n: u32, phase: &str) {
    for id in first..first + n {
        c.psql(&format!("INSERT INTO marker VALUES ({id}, '{phase}')"));
    }
}

fn marker_ids(c: &Cluster) -> Vec<u32> {
    c.psql_rows("SELECT id FROM marker ORDER BY id")
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect()
}

/// Waits until walrelay reported `lsn` as written to `server` (an archive without a slot reports
/// no flush position, as pg_receivewal; walrelay is not the one that crashes here).
fn wait_received(server: &Cluster, lsn: Lsn) {
    server::wait_reported(
        server,
        APP,
        &format!("walrelay to receive {lsn}"),
        |r| r.write_lsn,
        lsn,
    );
}

/// A crash of A, then B (started again if it was stopped: A is gone, so it gets nothing more)
/// promoted; walrelay finds B by itself and streams timeline 2 from it.
fn fail_over(p: &mut Pair) {
    p.a.stop(StopMode::Immediate);
    if !p.b.is_running() {
        p.b.start();
    }
    p.b.promote();
    assert_eq!(p.b.current_timeline(), 2);
    server::wait_streaming(&p.b, APP);
}

/// `walrelay check -d hosts -S slot --json`.
fn check_json(hosts: &str, slot: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["check", "-d", hosts, "-S", slot, "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `walrelay receive` into `archive` from the host list, streaming from A.
fn archive_from_hosts(label: &str, p: &Pair, archive: &Path) -> Walrelay {
    let hosts = host_list(&p.a, &p.b);
    let w = Walrelay::start(
        label,
        &receive_args(&["-d", &hosts, "-D", path(archive), "-s", "1"]),
    );
    server::wait_streaming(&p.a, APP);
    w
}

/// [`fail_over`], then ten commits on B (ids 100–109) and a segment switch, archived on timeline 2.
fn fail_over_and_write_on_b(p: &mut Pair, archive: &Path, w: &mut Walrelay) {
    fail_over(p);
    commit_markers(&p.b, 100, 10, "on B");
    let end = p.b.switch_wal();
    wal_files::wait_complete(archive, end, 2, seg(), w);
}

/// PITR of the pre-failover backup from the archive to the latest timeline.
fn pitr(p: &Pair, archive: &Path, name: &str) -> Cluster {
    let bin = walrelay_for_postgres(&p.a);
    let restore = format!("{} restore %f %p -D {}", bin.display(), path(archive));
    recover(
        &p.a,
        &p.backup,
        name,
        &restore,
        &["recovery_target_timeline = 'latest'"],
    )
}

#[test]
fn a_caught_up_standby_promoted_at_a_segment_boundary() {
    let mut p = pair("fo-caught-up");
    let archive = archive_dir(&p.a, "archive");
    let mut w = archive_from_hosts("fo-caught-up", &p, &archive);
    commit_markers(&p.a, 1, 20, "on A");
    // A's last act: a segment switch that walrelay and B both have.
    let switched = p.a.switch_wal();
    wal_files::wait_complete(&archive, switched, 1, seg(), &mut w);
    p.b.catch_up(&p.a);
    let pid = w.pid();

    fail_over_and_write_on_b(&mut p, &archive, &mut w);
    let history = std::fs::read_to_string(p.b.pg_wal_dir().join("00000002.history")).unwrap();
    assert_eq!(w.pid(), pid, "walrelay went on by itself");
    let log = w.log();
    assert!(log.contains("nothing lost"), "{log}");
    assert!(!log.contains("protocol violation"), "{log}");

    assert_eq!(
        std::fs::read_to_string(archive.join("00000002.history")).unwrap(),
        history
    );
    let n2 = wal_files::assert_identical_on_timeline(
        &archive,
        &p.b.pg_wal_dir(),
        seg(),
        Some(TimelineId(2)),
    );
    assert!(n2 >= 1, "no timeline-2 segment compared");
    assert!(!archive.join("00000002.failover.json").exists());

    // The new primary seeds a new standby: bootstrap's own WAL stream on timeline 2.
    let seeded = p.b.scratch_path("seeded");
    let out = support::walrelay_cmd::run(
        &[
            "bootstrap".to_string(),
            "-d".into(),
            p.b.replication_conninfo(),
            "-D".into(),
            path(&seeded).to_string(),
            "-c".into(),
            "fast".into(),
        ],
        poll::timeout(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(seeded.join("pg_wal/00000002.history").is_file());
    let follower = p.b.standby(&seeded).name("fo-caught-up-seeded").start();
    follower.catch_up(&p.b);
    assert_eq!(marker_ids(&follower).len(), 30);

    let recovered = pitr(&p, &archive, "fo-caught-up-pitr");
    assert_eq!(recovered.current_timeline(), 3, "promoted after timeline 2");
    let ids = marker_ids(&recovered);
    assert_eq!(ids.len(), 30, "{ids:?}");
    assert_eq!(ids.last(), Some(&109), "B's last commit reached");
}

#[test]
fn a_standby_behind_the_archive_is_followed_and_the_loss_counted() {
    let mut p = pair("fo-behind");
    let archive = archive_dir(&p.a, "archive");
    let mut w = archive_from_hosts("fo-behind", &p, &archive);
    commit_markers(&p.a, 1, 20, "on A and B");
    p.b.catch_up(&p.a);
    // B stops receiving; A commits on, walrelay archives it all.
    p.b.stop(StopMode::Fast);
    let lost = 25;
    let t0 = std::time::SystemTime::now();
    commit_markers(&p.a, 1000, lost, "lost");
    let t1 = std::time::SystemTime::now();
    wait_received(&p.a, p.a.current_wal_lsn());

    // A crashes; B comes back and is promoted.
    fail_over_and_write_on_b(&mut p, &archive, &mut w);

    // The report: exactly the commits B never had, at the times they were made.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(archive.join("00000002.failover.json")).unwrap_or_else(|e| {
            panic!(
                "no failover report ({e}): {}\n{}",
                wal_files::listing(&archive),
                w.log()
            )
        }),
    )
    .unwrap();
    assert_eq!(report["lost_commits"], lost, "{report:#}");
    let first = report["first_lost_commit"]["time"].as_str().unwrap();
    let last = report["last_lost_commit"]["time"].as_str().unwrap();
    let unix = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    };
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    };
    assert!(
        unix(first) >= secs(t0) - 1 && unix(last) <= secs(t1) + 1,
        "{report:#}"
    );
    let log = w.log();
    assert!(
        log.contains(&format!("holding {lost} committed transactions")),
        "{log}"
    );
    if std::env::var_os("WALRELAY_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }

    // Timeline 2 byte-identical to the new primary's; the orphaned timeline-1 WAL kept.
    wal_files::assert_identical_on_timeline(
        &archive,
        &p.b.pg_wal_dir(),
        seg(),
        Some(TimelineId(2)),
    );
    for f in report["files"].as_array().unwrap() {
        assert!(archive.join(f.as_str().unwrap()).exists(), "{f}");
    }

    // verify: accepted, the orphaned range named as information.
    let text = support::walrelay_cmd::verify_accepts(&archive);
    assert!(
        text.contains(&format!("holding {lost} committed transactions")),
        "{text}"
    );

    // PITR to the latest timeline: B's commits, none of the lost ones.
    let recovered = pitr(&p, &archive, "fo-behind-pitr");
    let ids = marker_ids(&recovered);
    assert_eq!(ids.len(), 30, "{ids:?}");
    assert!(
        ids.iter().all(|&i| i < 1000),
        "a lost commit came back: {ids:?}"
    );
    assert_eq!(ids.last(), Some(&109));
}

#[test]
fn a_sidecar_standby_continues_only_if_it_did_not_replay_the_lost_wal() {
    let mut p = pair("fo-sidecar");
    // C: a standby without a connection of its own, fed by walrelay in its pg_wal.
    let c_dir = p.a.scratch_path("c-data");
    copy_dir(&p.backup, &c_dir);
    std::fs::write(c_dir.join("standby.signal"), b"").unwrap();
    let c = p.a.standby(&c_dir).name("fo-sidecar-c").start();
    let standby_conninfo = c.conninfo();
    let args = receive_args(&[
        "-d",
        &host_list(&p.a, &p.b),
        "--pg-wal",
        path(&c_dir),
        "--standby-conninfo",
        &standby_conninfo,
        "-s",
        "1",
    ]);
    let mut w = Walrelay::start("fo-sidecar", &args);
    server::wait_streaming(&p.a, APP);
    commit_markers(&p.a, 1, 20, "on A and B");
    p.b.catch_up(&p.a);
    c.catch_up(&p.a);
    // C stops replaying; B stops receiving; A commits on: walrelay writes it into C's pg_wal.
    c.psql("SELECT pg_wal_replay_pause()");
    p.b.stop(StopMode::Fast);
    commit_markers(&p.a, 1000, 15, "lost");
    wait_received(&p.a, p.a.current_wal_lsn());
    fail_over(&mut p);
    commit_markers(&p.b, 100, 10, "on B");
    p.b.switch_wal();
    let on_b = p.b.current_wal_lsn();
    // walrelay takes the orphaned WAL out of C's pg_wal; C, resumed, follows timeline 2.
    w.wait_log("out of the standby's pg_wal", poll::timeout());
    c.psql("SELECT pg_wal_replay_resume()");
    poll::wait_until(
        "C to replay B's commits on timeline 2",
        || {
            w.assert_running();
            c.try_psql("SELECT count(*) FROM marker WHERE phase = 'on B'")
                .is_ok_and(|n| n == "10")
        },
        || c.log_tail(20),
    );
    c.wait_replay(on_b);
    let ids = marker_ids(&c);
    assert!(
        ids.iter().all(|&i| i < 1000),
        "C replayed a lost commit: {ids:?}"
    );

    // Now the bad case: C replays everything walrelay gives it, the new primary falls behind.
    let mut q = pair("fo-sidecar-2");
    let d_dir = q.a.scratch_path("d-data");
    copy_dir(&q.backup, &d_dir);
    std::fs::write(d_dir.join("standby.signal"), b"").unwrap();
    let d = q.a.standby(&d_dir).name("fo-sidecar-d").start();
    let args = receive_args(&[
        "-d",
        &host_list(&q.a, &q.b),
        "--pg-wal",
        path(&d_dir),
        "--standby-conninfo",
        &d.conninfo(),
        "-s",
        "1",
    ]);
    let mut w2 = Walrelay::start("fo-sidecar-2", &args);
    server::wait_streaming(&q.a, APP);
    q.b.catch_up(&q.a);
    q.b.stop(StopMode::Fast);
    commit_markers(&q.a, 1000, 5, "lost");
    let lost_end = q.a.current_wal_lsn();
    wait_received(&q.a, lost_end);
    d.wait_replay(lost_end);
    q.a.stop(StopMode::Immediate);
    q.b.start();
    q.b.promote();
    let status = w2.wait(poll::timeout());
    assert_eq!(status.code(), Some(exit_code::SERVER_STATE), "{}", w2.log());
    let errors = support::walrelay_cmd::error_lines(&w2.log()).join("\n");
    assert!(errors.contains("pg_rewind"), "{errors}");
    assert!(errors.contains("diverged"), "{errors}");
    drop(c);
}

/// `--failover`: the slot is created on the standby and advanced with the archive, so the new
/// primary has it after the promotion and walrelay streams from it there.
#[test]
fn with_failover_the_slot_is_kept_on_the_standby_and_used_after_the_promotion() {
    let mut p = pair("fo-slot");
    let archive = archive_dir(&p.a, "archive");
    let hosts = host_list(&p.a, &p.b);
    // check names the standby that would have no slot after a failover.
    let before = check_json(&hosts, "wr_slot");
    assert!(
        before["warnings"].to_string().contains("has no slot"),
        "{before:#}"
    );
    let created = support::walrelay_cmd::run(
        &receive_args(&["-d", &hosts, "-S", "wr_slot", "--create-slot", "--failover"]),
        poll::timeout(),
    );
    assert_eq!(created.code(), Some(0), "{created:?}");
    assert!(
        server::slot(&p.a, "wr_slot").is_some(),
        "slot on the primary"
    );
    let on_b = server::slot(&p.b, "wr_slot").expect("slot created on the standby too");
    assert_eq!(on_b.slot_type, "physical");
    let after = check_json(&hosts, "wr_slot");
    for h in after["hosts"].as_array().unwrap() {
        assert!(
            h["slot"].as_str().is_some_and(|s| s.contains('/')),
            "the slot on every host: {after:#}"
        );
    }

    let mut w = Walrelay::start(
        "fo-slot",
        &receive_args(&[
            "-d",
            &hosts,
            "-D",
            path(&archive),
            "-S",
            "wr_slot",
            "--failover",
            "-s",
            "1",
        ]),
    );
    server::wait_streaming(&p.a, APP);
    commit_markers(&p.a, 1, 20, "on A");
    let end = p.a.switch_wal();
    wal_files::wait_complete(&archive, end, 1, seg(), &mut w);
    p.b.catch_up(&p.a);
    // The standby's copy follows what the archive holds.
    poll::wait_until(
        "the standby's slot to advance with the archive",
        || {
            w.assert_running();
            server::slot(&p.b, "wr_slot")
                .and_then(|s| s.restart_lsn)
                .is_some_and(|l| l >= end)
        },
        || format!("{:?}", server::slot(&p.b, "wr_slot")),
    );

    fail_over(&mut p);
    commit_markers(&p.b, 100, 10, "on B");
    let end2 = p.b.switch_wal();
    wal_files::wait_complete(&archive, end2, 2, seg(), &mut w);
    let slot = server::slot(&p.b, "wr_slot").expect("the slot on the new primary");
    assert!(
        slot.active,
        "walrelay streams through the kept slot: {slot:?}"
    );
    let log = w.log();
    assert!(!log.contains("does not exist"), "{log}");
}
