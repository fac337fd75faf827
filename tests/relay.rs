// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! `walrelay serve` end to end, with PostgreSQL's own programs as the relay's clients and judges:
//! hot standbys whose `primary_conninfo` points at the relay, pg_receivewal, pg_basebackup and
//! pg_verifybackup (Debian's PostgreSQL 15), and the primary's `pg_stat_replication`, which must
//! show the relay alone.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use walrelay_protocol::WalSegmentSize;
use walrelay_testkit::{pg_command, Cluster, Lsn, PgBench, StopMode, VerifyBackupOptions};

use support::relay::{
    interrupt, metrics, pg_basebackup_through, primary, wait_complete_segment, walsenders, Relay,
};
use support::{poll, server, wal_files};

const SEGMENT_MB: u32 = 1;
/// The relay's application_name on the primary.
const RELAY_APP: &str = "relay";

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(u64::from(SEGMENT_MB) << 20).expect("segment size")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The relay's upstream connection string.
fn upstream(primary: &Cluster) -> String {
    format!(
        "{} application_name={RELAY_APP}",
        primary.replication_conninfo()
    )
}

/// `walrelay serve` in front of `primary` with `extra` options, once the primary streams to it.
fn relay_for(primary: &Cluster, extra: &[&str]) -> Relay {
    let archive = primary.scratch_path("relay-archive");
    let relay = Relay::start(&upstream(primary), &archive, extra);
    server::wait_streaming(primary, RELAY_APP);
    relay
}

/// A Debian 15 client tool with a clean environment.
fn tool(primary: &Cluster, name: &str) -> Command {
    pg_command(&primary.install().tools().tool(name))
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A standby in `dir` (made by a backup tool with `-R`, so it follows whatever it was taken
/// from), named so the relay's metrics tell it apart.
fn start_standby(primary: &Cluster, dir: &Path, name: &str) -> Cluster {
    primary
        .standby(dir)
        .name(name)
        .conf(&format!("cluster_name = '{name}'"))
        .conf("hot_standby_feedback = on")
        .conf("wal_receiver_status_interval = 1")
        .start()
}

/// A physical slot on the primary for the relay, reserving WAL now.
fn create_slot(primary: &Cluster, name: &str) {
    primary.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{name}', true)"
    ));
}

/// The pgbench state both sides must agree on.
fn pgbench_state(c: &Cluster) -> (String, String) {
    (
        c.psql("SELECT count(*), sum(delta) FROM pgbench_history"),
        c.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
    )
}

/// Three hot standbys behind the relay under pgbench, seeded by pg_basebackup through the relay
/// (verified by pg_verifybackup); the relay killed with SIGKILL and restarted mid-load; at the end
/// all three hold the primary's data, and the primary's only walsender is the relay's.
#[test]
fn standbys_follow_the_primary_through_the_relay() {
    let primary = primary("relay-primary", &["wal_keep_size = '64MB'"]);
    primary.pgbench_init(2);
    create_slot(&primary, "relay_slot");
    let archive = primary.scratch_path("relay-archive");
    let metrics_port = support::relay::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut relay = Relay::start(
        &upstream(&primary),
        &archive,
        &[
            "-S",
            "relay_slot",
            "--status-interval",
            "1",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    server::wait_streaming(&primary, RELAY_APP);

    // pg_basebackup -X stream -R through the relay: BASE_BACKUP proxied, WAL from the relay
    // (a temporary slot there), then pg_verifybackup — WAL included — accepts it.
    let backup = primary.scratch_path("backup-through-relay");
    pg_basebackup_through(&primary, &relay, &backup);
    let verified = walrelay_testkit::pg_verifybackup(&backup, &VerifyBackupOptions::default())
        .unwrap_or_else(|e| {
            panic!("pg_verifybackup rejected the backup taken through the relay: {e}")
        });
    assert!(verified.contains("successfully verified"), "{verified}");
    let auto = std::fs::read_to_string(backup.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("port={}", relay.port)),
        "pg_basebackup -R did not point the standby at the relay:\n{auto}"
    );

    // Three standbys from that backup, all following the relay.
    let names = ["standby1", "standby2", "standby3"];
    let dirs: Vec<_> = names
        .iter()
        .map(|n| {
            let d = primary.scratch_path(n);
            support::recovery::copy_dir(&backup, &d);
            d
        })
        .collect();
    let load = primary.pgbench(
        &PgBench::duration(Duration::from_secs(600))
            .clients(2)
            .rate(100),
    );
    let standbys: Vec<Cluster> = names
        .iter()
        .zip(&dirs)
        .map(|(n, d)| start_standby(&primary, d, n))
        .collect();
    for s in &standbys {
        assert!(s.is_in_recovery());
        s.catch_up(&primary);
    }
    poll::wait_until(
        "the relay's metrics to show three streaming standbys",
        || {
            let m = metrics(metrics_addr.parse().unwrap());
            names.iter().all(|n| {
                m.lines().any(|l| {
                    l.starts_with("walrelay_serve_downstream_state")
                        && l.contains(&format!("application_name=\"{n}\""))
                        && l.contains("state=\"streaming\"")
                })
            })
        },
        || metrics(metrics_addr.parse().unwrap()),
    );
    let m = metrics(metrics_addr.parse().unwrap());
    assert!(m.contains("walrelay_serve_downstream_lag_seconds{"), "{m}");
    assert!(m.contains("walrelay_receive_flushed_lsn"), "{m}");
    assert_eq!(walsenders(&primary), vec![RELAY_APP.to_string()]);
    // The standbys' hot standby feedback reaches the primary through the relay (on its slot).
    poll::wait_until(
        "the relay's slot on the primary to hold the standbys' xmin",
        || {
            !primary
                .psql("SELECT xmin FROM pg_replication_slots WHERE slot_name = 'relay_slot'")
                .is_empty()
        },
        || primary.psql("SELECT slot_name, xmin, catalog_xmin FROM pg_replication_slots"),
    );
    // walrelay check through the relay: ready, and it knows it talks to a relay.
    let check = support::walrelay_cmd::run(
        &[
            "check".to_string(),
            "-d".to_string(),
            relay.conninfo("replicator", Some("rep")),
        ],
        poll::timeout(),
    );
    assert!(check.status.success(), "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("READY"), "{}", check.stdout);
    assert!(check.stdout.contains("walrelay serve"), "{}", check.stdout);

    // kill -9 of the relay under load; the standbys reconnect to the restarted relay by
    // themselves and continue.
    relay.w.kill9();
    let during = primary.current_wal_lsn();
    std::thread::sleep(Duration::from_secs(2));
    relay.restart();
    for s in &standbys {
        s.wait_replay(during);
        s.catch_up(&primary);
    }

    load.stop();
    let end = primary.current_wal_lsn();
    for s in &standbys {
        s.wait_replay(end);
        assert_eq!(pgbench_state(s), pgbench_state(&primary), "{}", s.name());
    }
    walrelay_testkit::assert_same_dumpall(&primary, &standbys[0]);
    assert_eq!(
        walsenders(&primary),
        vec![RELAY_APP.to_string()],
        "the primary streams to the relay only"
    );
    // The relay's slot on the primary follows what the relay made durable.
    let slot = server::slot(&primary, "relay_slot").expect("the relay's slot");
    assert!(slot.active && slot.restart_lsn.is_some(), "{slot:?}");
    relay.assert_healthy();
    drop(standbys);
    relay.w.signal(Signal::SIGTERM);
    assert!(relay.w.wait(poll::timeout()).success());
}

/// pg_receivewal through the relay (its slot created on the relay with --create-slot): every
/// complete segment is byte-identical to the primary's own.
#[test]
fn pg_receivewal_through_the_relay_writes_the_primary_s_segments() {
    let primary = primary("relay-receivewal", &["wal_keep_size = '256MB'"]);
    let mut relay = relay_for(&primary, &["--status-interval", "1"]);
    let conninfo = relay.conninfo("replicator", Some("rep"));
    run_ok(
        {
            let mut c = tool(&primary, "pg_receivewal");
            c.args(["-d", &conninfo, "-S", "archiver", "--create-slot"]);
            c
        },
        "pg_receivewal --create-slot through the relay",
    );
    // Again: the slot exists; --if-not-exists takes 42710 as success.
    run_ok(
        {
            let mut c = tool(&primary, "pg_receivewal");
            c.args([
                "-d",
                &conninfo,
                "-S",
                "archiver",
                "--create-slot",
                "--if-not-exists",
            ]);
            c
        },
        "pg_receivewal --create-slot --if-not-exists",
    );
    let dir = primary.scratch_path("pg_receivewal");
    std::fs::create_dir_all(&dir).unwrap();
    let mut receivewal = tool(&primary, "pg_receivewal")
        .args([
            "-d",
            &conninfo,
            "-D",
            path(&dir),
            "-S",
            "archiver",
            "-s",
            "1",
            "-v",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pg_receivewal");
    let mut last = Lsn(0);
    for i in 0..4 {
        server::insert_rows(&primary, "through_relay", 2000 + i);
        last = primary.switch_wal();
    }
    wait_complete_segment(&dir, last, seg(), &mut receivewal);
    interrupt(&mut receivewal);
    let compared = wal_files::assert_identical_to_server(&dir, &primary.pg_wal_dir(), seg());
    assert!(compared >= 4, "only {compared} segments compared");
    // The relay's slot follows pg_receivewal's flush (READ_REPLICATION_SLOT shows it).
    let slots = walrelay_archive::read_slots(&relay.archive).unwrap();
    let archiver = slots
        .iter()
        .find(|s| s.name == "archiver")
        .expect("slot saved");
    assert!(archiver.restart_lsn.is_some(), "{slots:?}");
    run_ok(
        {
            let mut c = tool(&primary, "pg_receivewal");
            c.args(["-d", &conninfo, "-S", "archiver", "--drop-slot"]);
            c
        },
        "pg_receivewal --drop-slot",
    );
    assert!(walrelay_archive::read_slots(&relay.archive)
        .unwrap()
        .is_empty());
    relay.assert_healthy();
}

/// A standby from a backup taken long before catches up from the relay's archive after the
/// primary recycled that WAL: the relay's archive as an unbounded wal_keep_size.
#[test]
fn an_old_backup_catches_up_from_the_relay_after_the_primary_recycled_its_wal() {
    let primary = primary(
        "relay-recycled",
        &[
            "wal_keep_size = 0",
            "max_wal_size = '32MB'",
            "min_wal_size = '2MB'",
        ],
    );
    primary.pgbench_init(1);
    create_slot(&primary, "relay_slot");
    // A 1 MB fan-out buffer and compressed segments: the catch-up reads the archive's files,
    // decompressing them.
    let relay = relay_for(
        &primary,
        &[
            "-S",
            "relay_slot",
            "--status-interval",
            "1",
            "--buffer-mb",
            "1",
            "--compress",
            "zstd",
        ],
    );
    // The backup: straight from the primary, WAL fetched, then told to follow the relay.
    let old = primary.pg_basebackup(&["-X", "fetch", "-c", "fast"]);
    let backup_end = primary.current_wal_lsn();
    let first_needed = seg().segno(backup_end);
    // Much WAL and checkpoints later, the primary no longer has what the backup needs next.
    primary.pgbench_run(&PgBench::transactions(4000).clients(2));
    for _ in 0..3 {
        server::insert_rows(&primary, "later", 5000);
        primary.switch_wal();
        primary.psql("CHECKPOINT");
    }
    let name = walrelay_protocol::SegmentId::new(walrelay_protocol::TimelineId(1), first_needed)
        .file_name(seg());
    assert!(
        !primary.pg_wal_dir().join(&name).exists(),
        "the primary still has {name}; the test needs it recycled"
    );
    poll::wait_until(
        &format!("{name} to be compressed in the relay's archive"),
        || relay.archive.join(format!("{name}.zst")).is_file(),
        || wal_files::listing(&relay.archive),
    );
    assert!(!relay.archive.join(&name).exists());
    let standby = primary
        .standby(&old)
        .name("old-backup")
        .follow(&relay.conninfo("replicator", Some("rep")))
        .start();
    standby.catch_up(&primary);
    assert_eq!(
        standby.psql("SELECT count(*) FROM later"),
        primary.psql("SELECT count(*) FROM later")
    );
    assert_eq!(walsenders(&primary), vec![RELAY_APP.to_string()]);
}

/// `--sync-quorum 1` with the relay as the primary's synchronous standby: a commit waits until a
/// downstream of the relay has it durable — with none connected it waits, once a standby behind
/// the relay confirms it, it completes.
#[test]
fn sync_quorum_makes_commits_wait_for_a_downstream() {
    let primary = primary("relay-sync", &["wal_keep_size = '64MB'"]);
    // The standby's data directory, taken before the primary waits for anyone.
    let standby_dir = primary.pg_basebackup(&["-X", "stream", "-c", "fast"]);
    primary.psql("CREATE TABLE s (i int)");
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'relay'");
    primary.reload();
    let relay = relay_for(&primary, &["--sync-quorum", "1", "--status-interval", "1"]);
    let mut commit = tool(&primary, "psql")
        .args([
            "-d",
            &primary.conninfo(),
            "-X",
            "-c",
            "INSERT INTO s VALUES (1)",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    poll::wait_until(
        "the commit to wait for synchronous replication",
        || {
            primary.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                == "1"
        },
        || primary.psql("SELECT pid, state, wait_event FROM pg_stat_activity"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        commit.try_wait().unwrap().is_none(),
        "the commit did not wait for a downstream of the relay"
    );
    let standby = primary
        .standby(&standby_dir)
        .name("sync-standby")
        .follow(&relay.conninfo("replicator", Some("rep")))
        .conf("wal_receiver_status_interval = 1")
        .start();
    let status = poll::wait_for(
        "the commit to complete once a standby behind the relay has it",
        poll::timeout(),
        Duration::from_millis(100),
        || commit.try_wait().unwrap(),
        || primary.psql("SELECT application_name, flush_lsn, sync_state FROM pg_stat_replication"),
    );
    assert!(status.success());
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM s"), "1");
    let row = server::replication_row(&primary, RELAY_APP).expect("the relay's walsender");
    assert_eq!(row.sync_state, "sync", "{row:?}");
}

/// TLS for downstreams: libpq's `sslmode=verify-full` against the relay's certificate, and
/// `channel_binding=require`, which only SCRAM-SHA-256-PLUS satisfies — pg_receivewal streams to
/// its end position, walrelay's own client checks the relay the same way.
#[test]
fn tls_and_scram_channel_binding_for_downstreams() {
    use std::os::unix::fs::PermissionsExt;
    let primary = primary("relay-tls", &["wal_keep_size = '64MB'"]);
    let ca = walrelay_testkit::TestCa::new().expect("a test CA");
    let server = ca.issue_server().expect("a server certificate");
    let dir = primary.scratch_path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, root) = (
        dir.join("relay.crt"),
        dir.join("relay.key"),
        dir.join("ca.crt"),
    );
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&root, ca.cert_pem()).unwrap();
    let verifier = primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'");
    let users = dir.join("users.txt");
    std::fs::write(&users, format!("\"replicator\" \"{verifier}\"\n")).unwrap();
    let mut relay = relay_for(
        &primary,
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--auth",
            "scram",
            "--auth-file",
            path(&users),
        ],
    );
    let secure = format!(
        "{} sslmode=verify-full sslrootcert={} channel_binding=require",
        relay.conninfo("replicator", Some("rep")),
        path(&root)
    );
    let out_dir = primary.scratch_path("received-over-tls");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut receivewal = tool(&primary, "pg_receivewal")
        .args(["-d", &secure, "-D", path(&out_dir), "-s", "1", "-n"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pg_receivewal over TLS");
    poll::wait_until(
        "pg_receivewal over TLS to open its segment",
        || {
            wal_files::segment_files(&out_dir, seg())
                .iter()
                .any(|f| f.partial)
        },
        || wal_files::listing(&out_dir),
    );
    server::insert_rows(&primary, "over_tls", 500);
    let end = primary.switch_wal();
    wait_complete_segment(&out_dir, end, seg(), &mut receivewal);
    interrupt(&mut receivewal);
    assert!(wal_files::assert_identical_to_server(&out_dir, &primary.pg_wal_dir(), seg()) >= 1);
    let check = support::walrelay_cmd::run(
        &["check".to_string(), "-d".to_string(), secure.clone()],
        poll::timeout(),
    );
    assert!(check.status.success(), "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("(TLS)"), "{}", check.stdout);
    // A wrong CA is refused by the client, as against any server.
    let other = walrelay_testkit::TestCa::new().unwrap();
    let wrong_root = dir.join("other-ca.crt");
    std::fs::write(&wrong_root, other.cert_pem()).unwrap();
    let out = tool(&primary, "pg_receivewal")
        .args([
            "-d",
            &format!(
                "{} sslmode=verify-full sslrootcert={}",
                relay.conninfo("replicator", Some("rep")),
                path(&wrong_root)
            ),
            "-D",
            path(&out_dir),
            "-n",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    relay.assert_healthy();
}

/// A relay restarted while its primary is down serves what its archive holds, presenting itself as
/// the upstream it recorded (`walrelay.upstream`): pg_receivewal through it gets the archived
/// segments byte for byte. When the primary is back, the relay streams from it again.
#[test]
fn a_relay_restarted_while_the_primary_is_down_serves_its_archive() {
    let mut primary = primary("relay-offline", &["wal_keep_size = '256MB'"]);
    let mut relay = relay_for(&primary, &["--status-interval", "1"]);
    let mut last = Lsn(0);
    for i in 0..4 {
        server::insert_rows(&primary, "offline", 1000 + i);
        last = primary.switch_wal();
    }
    let want = seg().segno(Lsn(last.0 - 1));
    poll::wait_until(
        "the relay to archive the segment before the last switch",
        || {
            wal_files::complete_segments(&relay.archive, seg())
                .iter()
                .any(|f| f.segment.segno == want)
        },
        || wal_files::listing(&relay.archive),
    );
    let recorded = walrelay_archive::read_relay_upstream(&relay.archive)
        .unwrap()
        .expect("the relay recorded its upstream");
    assert_eq!(recorded.system_identifier, primary.system_identifier());
    // The last commits before the outage, in the segment being filled: durable at the relay.
    let tail = server::insert_rows(&primary, "offline_tail", 300);
    let tail_seg =
        walrelay_protocol::SegmentId::new(walrelay_protocol::TimelineId(1), seg().segno(tail))
            .file_name(seg());
    let upto = seg().offset(tail) as usize;
    let primary_wal = primary.pg_wal_dir();
    let holds_tail = |dir: &Path| {
        let primary_seg = std::fs::read(primary_wal.join(&tail_seg)).unwrap();
        std::fs::read(dir.join(format!("{tail_seg}.partial")))
            .is_ok_and(|got| got.len() >= upto && got[..upto] == primary_seg[..upto])
    };
    poll::wait_until(
        "the relay to write the last commits",
        || holds_tail(&relay.archive),
        || wal_files::listing(&relay.archive),
    );

    relay.w.kill9();
    primary.stop(StopMode::Fast);
    relay.restart();
    relay.w.wait_log(
        "upstream not reachable; serving the archive",
        poll::timeout(),
    );
    relay.w.wait_log(
        "the newest partial segment is validated again",
        poll::timeout(),
    );

    // pg_receivewal resumes after the oldest complete segment it is given, so it asks the relay
    // for archived WAL only.
    let dir = primary.scratch_path("offline-receivewal");
    std::fs::create_dir_all(&dir).unwrap();
    let complete = wal_files::complete_segments(&relay.archive, seg());
    let seed = complete
        .iter()
        .find(|f| f.segment.segno.0 + 2 <= want.0)
        .expect("an older complete segment");
    std::fs::copy(seed.path(&relay.archive), dir.join(&seed.name)).unwrap();
    let conninfo = relay.conninfo("replicator", Some("rep"));
    let mut receivewal = tool(&primary, "pg_receivewal")
        .args(["-d", &conninfo, "-D", path(&dir), "-s", "1", "-v"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pg_receivewal");
    wait_complete_segment(&dir, last, seg(), &mut receivewal);
    // And the segment being filled, up to the last commit before the outage (a relay restarted
    // while the upstream is down serves what it had acknowledged, not only whole segments).
    poll::wait_until(
        "pg_receivewal to get the last commits from the restarted relay",
        || holds_tail(&dir),
        || wal_files::listing(&dir),
    );
    interrupt(&mut receivewal);
    let compared = wal_files::assert_identical_to_server(&dir, &primary.pg_wal_dir(), seg());
    assert!(compared >= 3, "only {compared} segments compared");

    // An upstream that takes the connection and never answers (a hung primary, a load balancer
    // in front of a dead one): the restarted relay serves the archive from its record after a
    // few seconds, not after connect_timeout.
    relay.w.kill9();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_upstream = format!(
        "host=127.0.0.1 port={} user=replicator password=rep connect_timeout=90",
        silent.local_addr().unwrap().port()
    );
    let began = std::time::Instant::now();
    let mut hung = Relay::start(
        &silent_upstream,
        &relay.archive,
        &["--status-interval", "1"],
    );
    hung.w.wait_log(
        "upstream does not answer; serving the archive",
        poll::timeout(),
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "the relay served only after {:?}",
        began.elapsed()
    );
    let (mut c, _) = support::relay::RawClient::login(hung.addr(), "replicator");
    c.query("IDENTIFY_SYSTEM");
    let answer = c.until_ready();
    assert!(
        support::relay::error_of(&answer).is_none(),
        "IDENTIFY_SYSTEM through the relay: {answer:?}"
    );
    assert!(
        format!("{answer:?}").contains(&recorded.system_identifier.to_string()),
        "{answer:?}"
    );
    drop(c);
    hung.w.kill9();
    drop(silent);
    relay.restart();

    // The primary is back: the relay's engine reconnects by itself.
    primary.start();
    server::wait_streaming(&primary, RELAY_APP);
    relay.assert_healthy();
}

/// A relay pointed at itself would serve its archive and wait for WAL only it could produce. Its
/// own listen address as the upstream is refused at the start; a loop through a second relay (A
/// restarted to stream from B, which streams from A) is seen by the relay chain each reports, and
/// one of the two stops with one line naming the loop.
#[test]
fn a_relay_streaming_from_itself_is_refused() {
    let primary = primary("relay-loop", &["wal_keep_size = '64MB'"]);
    let mut a = relay_for(&primary, &["--status-interval", "1"]);

    // Its own address: refused before anything is served or written.
    let port = support::relay::free_port();
    let own_dir = primary.scratch_path("relay-own");
    std::fs::create_dir_all(&own_dir).unwrap();
    let own = support::walrelay_cmd::run(
        &[
            "serve".into(),
            "-d".into(),
            format!("host=localhost port={port} user=replicator"),
            "-D".into(),
            path(&own_dir).into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(own.code(), Some(2), "{}", own.stderr);
    let lines = own.error_lines();
    assert_eq!(lines.len(), 1, "{}", own.stderr);
    assert!(
        lines[0].contains("is this relay's own --listen address"),
        "{}",
        own.stderr
    );
    assert!(
        wal_files::complete_segments(&own_dir, seg()).is_empty(),
        "{}",
        wal_files::listing(&own_dir)
    );

    // B streams from A; then A, restarted, streams from B: a loop of two.
    let b_archive = primary.scratch_path("relay-loop-b");
    let mut b = Relay::start(&a.conninfo("replicator", None), &b_archive, &[]);
    server::insert_rows(&primary, "loop", 100);
    primary.switch_wal();
    poll::wait_until(
        "relay B to archive what A serves",
        || !wal_files::complete_segments(&b.archive, seg()).is_empty(),
        || wal_files::listing(&b.archive),
    );
    a.w.kill9();
    let mut a_again = support::walrelay_cmd::Walrelay::start(
        "serve-a-from-b",
        &[
            "serve".into(),
            "-d".into(),
            b.conninfo("replicator", None),
            "-D".into(),
            path(&a.archive).into(),
            "--listen".into(),
            format!("127.0.0.1:{}", a.port),
        ],
    );
    // A, the relay pointed the wrong way, is the one that stops: its token is the same as
    // before the restart (kept in its archive directory), so it finds itself in B's chain. B,
    // whose configuration is right, goes on. Each relay's log is shown by its Drop should this
    // fail.
    let (status, stopped) = poll::wait_for(
        "one relay of the loop to stop",
        poll::timeout(),
        Duration::from_millis(100),
        || {
            if let Some(s) = a_again.exited() {
                Some((s, a_again.log()))
            } else {
                b.w.exited()
                    .map(|s| (s, format!("B stopped, not A: {}", b.w.log())))
            }
        },
        || "both still run".to_string(),
    );
    let errors = support::walrelay_cmd::error_lines(&stopped);
    assert_eq!(errors.len(), 1, "{stopped}");
    assert!(errors[0].contains("is this relay itself"), "{stopped}");
    assert!(!stopped.starts_with("B stopped"), "{stopped}");
    assert_eq!(status.code(), Some(2), "{stopped}");
    std::thread::sleep(Duration::from_secs(2));
    b.w.assert_running();
}

/// A directory holding another cluster's WAL (pg_receivewal's archive, say) and no relay record:
/// refused before the upstream is recorded in it — a record over foreign WAL would, on a restart
/// while the upstream is down, present that WAL under the upstream's identity.
#[test]
fn another_cluster_s_wal_is_refused_before_the_upstream_is_recorded() {
    let other = primary("relay-foreign-b", &[]);
    let primary = primary("relay-foreign-a", &[]);
    let segment = other.switch_wal();
    let name = walrelay_protocol::SegmentId::new(
        walrelay_protocol::TimelineId(1),
        seg().segno(Lsn(segment.0 - 1)),
    )
    .file_name(seg());
    let dir = primary.scratch_path("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(other.pg_wal_dir().join(&name), dir.join(&name)).unwrap();
    let port = support::relay::free_port();
    let out = support::walrelay_cmd::run(
        &[
            "serve".into(),
            "-d".into(),
            upstream(&primary),
            "-D".into(),
            path(&dir).into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
        poll::timeout(),
    );
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].contains(&format!(
            "belongs to system {}, but the upstream is system {}",
            other.system_identifier(),
            primary.system_identifier()
        )),
        "{}",
        lines[0]
    );
    assert!(
        walrelay_archive::read_relay_upstream(&dir)
            .unwrap()
            .is_none(),
        "the upstream was recorded in {}",
        wal_files::listing(&dir)
    );
}
