// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! `walrelay serve` through a failover: the relay's upstream is a host list (a primary and its
//! streaming standby); the primary stops, the standby is promoted, the relay follows it onto the
//! new timeline by itself — and leads its own downstream standby there without a restart: the
//! history file served, the end of the old timeline announced, streaming on the new one. Once the
//! switch segment is no longer in the relay's memory, a pg_receivewal asking for timeline 2 from
//! that segment gets the new primary's file byte for byte (not the old timeline's file, which
//! holds nothing — or WAL a failover lost — past the switch point).

mod support;

use std::str::FromStr;

use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};
use walrelay_testkit::{pg_command, StopMode};

use support::relay::{
    interrupt, pg_basebackup_through, primary, wait_complete_segment, walsenders, Relay,
};
use support::{poll, server};

#[test]
fn downstream_standbys_follow_a_promotion_upstream() {
    let mut primary = primary("relay-fo-primary", &["wal_keep_size = '128MB'"]);
    server::insert_rows(&primary, "before", 1000);

    // The primary's own standby, which will be promoted.
    let b_dir = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    let mut b = primary
        .standby(&b_dir)
        .name("relay-fo-b")
        .conf("cluster_name = 'b'")
        .start();
    b.catch_up(&primary);

    // The relay follows whichever of the two accepts writes.
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=replicator password=rep \
         target_session_attrs=read-write connect_timeout=5 application_name=relay",
        primary.port(),
        b.port()
    );
    let archive = primary.scratch_path("relay-archive");
    // A small buffer: the switch segment is soon read back from the archive.
    let mut relay = Relay::start(
        &hosts,
        &archive,
        &["--status-interval", "1", "--buffer-mb", "1"],
    );
    server::wait_streaming(&primary, "relay");

    // The relay's standby, seeded through the relay.
    let d_dir = primary.scratch_path("downstream");
    pg_basebackup_through(&primary, &relay, &d_dir);
    let d = primary
        .standby(&d_dir)
        .name("relay-fo-d")
        .conf("cluster_name = 'd'")
        .conf("wal_receiver_status_interval = 1")
        .start();
    let lsn = server::insert_rows(&primary, "on_one", 500);
    d.wait_replay(lsn);
    b.wait_replay(lsn);
    let mut senders = walsenders(&primary);
    senders.sort();
    assert_eq!(senders, ["b", "relay"]);

    // A clean switchover: the primary stops (its walsenders hand over everything first), the
    // standby is promoted to timeline 2.
    primary.stop(StopMode::Fast);
    b.promote();
    assert_eq!(b.current_timeline(), 2);
    let lsn = server::insert_rows(&b, "on_two", 700);
    d.wait_replay(lsn);
    assert_eq!(d.psql("SELECT count(*) FROM on_two"), "700");
    assert_eq!(d.psql("SELECT count(*) FROM on_one"), "500");
    poll::wait_until(
        "the relay's standby to stream timeline 2",
        || d.psql("SELECT received_tli FROM pg_stat_wal_receiver") == "2",
        || d.psql("SELECT status, received_tli FROM pg_stat_wal_receiver"),
    );
    assert!(archive.join("00000002.history").is_file());
    assert_eq!(
        std::fs::read(archive.join("00000002.history")).unwrap(),
        std::fs::read(b.pg_wal_dir().join("00000002.history")).unwrap()
    );
    assert_eq!(walsenders(&b), ["relay"]);
    // And the history file came to the standby through the relay.
    assert!(d.pg_wal_dir().join("00000002.history").is_file());
    // The relay ended the old timeline for its standby, which did not reconnect to get there.
    let log = relay.w.full_log();
    assert!(
        log.contains("ending this one at its switch point"),
        "the relay's log does not show the end of timeline 1 sent downstream:\n{log}"
    );

    // The switch segment, from the archive: pg_receivewal starts there on timeline 2 (the
    // segment before it, complete, in its directory), as a standby that reconnects does.
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let history = std::fs::read_to_string(b.pg_wal_dir().join("00000002.history")).unwrap();
    let switch = Lsn::from_str(history.split('\t').nth(1).unwrap()).unwrap();
    let switch_seg = SegmentId::new(TimelineId(2), seg.segno(switch));
    for i in 0..4 {
        server::insert_rows(&b, &format!("more{i}"), 5000);
        b.switch_wal();
    }
    let dir = b.scratch_path("after-switch");
    std::fs::create_dir_all(&dir).unwrap();
    let before = SegmentId::new(
        TimelineId(2),
        walrelay_protocol::XLogSegNo(switch_seg.segno.0 - 1),
    );
    std::fs::write(dir.join(before.file_name(seg)), vec![0u8; 1 << 20]).unwrap();
    let mut receivewal = pg_command(&b.install().tools().tool("pg_receivewal"))
        .args(["-d", &relay.conninfo("replicator", Some("rep"))])
        .arg("-D")
        .arg(&dir)
        .args(["-s", "1", "--no-loop"])
        .spawn()
        .unwrap();
    let end = Lsn((switch_seg.segno.0 + 1) * seg.as_u64());
    wait_complete_segment(&dir, end, seg, &mut receivewal);
    interrupt(&mut receivewal);
    let name = switch_seg.file_name(seg);
    let new_primary_s = std::fs::read(b.pg_wal_dir().join(&name)).unwrap();
    assert!(
        std::fs::read(dir.join(&name)).unwrap() == new_primary_s,
        "{name} through the relay differs from the new primary's"
    );
    relay.assert_healthy();

    // The moment right after the switch, made to last: the relay killed, the new primary down,
    // and timeline 2's file of the switch segment as the engine leaves it when it starts that
    // segment again (preallocated, nothing acknowledged in it). The switch point is servable on
    // timeline 2 — from timeline 1's file, never the zeros of timeline 2's.
    relay.w.kill9();
    b.stop(StopMode::Immediate);
    let mut t2_files: Vec<std::path::PathBuf> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.get(..24))
                .is_some_and(|n| n.starts_with("00000002") && n >= name.as_str())
        })
        .collect();
    t2_files.sort();
    assert!(
        !t2_files.is_empty(),
        "no timeline 2 files in the relay's archive"
    );
    for f in &t2_files {
        std::fs::remove_file(f).unwrap();
    }
    let sum = archive.join("walrelay.sha256");
    if sum.exists() {
        let kept: String = std::fs::read_to_string(&sum)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("  00000002"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&sum, kept).unwrap();
    }
    std::fs::write(archive.join(format!("{name}.partial")), vec![0u8; 1 << 20]).unwrap();
    relay.restart();
    let dir = b.scratch_path("right-after-switch");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(before.file_name(seg)), vec![0u8; 1 << 20]).unwrap();
    let mut receivewal = pg_command(&b.install().tools().tool("pg_receivewal"))
        .args(["-d", &relay.conninfo("replicator", Some("rep"))])
        .arg("-D")
        .arg(&dir)
        .args(["-s", "1", "--no-loop"])
        .spawn()
        .unwrap();
    let upto = seg.offset(switch) as usize;
    let partial = dir.join(format!("{name}.partial"));
    poll::wait_until(
        &format!("pg_receivewal to receive {name} up to the switch point {switch}"),
        || {
            assert!(
                receivewal.try_wait().unwrap().is_none(),
                "pg_receivewal stopped: {}",
                relay.w.full_log()
            );
            std::fs::read(&partial)
                .is_ok_and(|b| b.len() >= upto && b[..upto] == new_primary_s[..upto])
        },
        || {
            let got = std::fs::read(&partial).unwrap_or_default();
            let zeros = got
                .chunks(8192)
                .take(upto / 8192)
                .filter(|p| p.iter().all(|&x| x == 0))
                .count();
            format!(
                "{} bytes, {zeros} all-zero pages before the switch point",
                got.len()
            )
        },
    );
    interrupt(&mut receivewal);
}

/// A relay in front of a standby that is promoted: its upstream ends the old timeline inside the
/// stream and goes on with the new one (no reconnect). The new timeline's history must be in the
/// relay's archive before the switch shows: its downstreams on the old timeline were told
/// "timeline 1 is no longer in this server's history", and a walrelay receive behind it stopped.
#[test]
fn a_relay_in_front_of_a_promoted_standby_leads_its_downstreams_on() {
    let mut primary = primary("relay-casc-a", &["wal_keep_size = '128MB'"]);
    server::insert_rows(&primary, "before", 100);
    let b_dir = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    let mut b = primary.standby(&b_dir).name("relay-casc-b").start();
    b.catch_up(&primary);
    let archive = primary.scratch_path("relay-archive");
    let relay = Relay::start(
        &format!("{} application_name=relay", b.replication_conninfo()),
        &archive,
        &["--status-interval", "1"],
    );
    let down = primary.scratch_path("downstream");
    std::fs::create_dir_all(&down).unwrap();
    let args: Vec<String> = [
        "receive",
        "-d",
        &relay.conninfo("replicator", Some("rep")),
        "-D",
        down.to_str().unwrap(),
        "-s",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let mut receiver = support::walrelay_cmd::Walrelay::start("receive", &args);
    receiver.wait_log("starting WAL stream", poll::timeout());
    let lsn = server::insert_rows(&primary, "on_one", 200);
    b.wait_replay(lsn);

    primary.stop(StopMode::Fast);
    b.promote();
    server::insert_rows(&b, "on_two", 300);
    let end = b.switch_wal();
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let last = SegmentId::new(TimelineId(2), seg.segno(Lsn(end.0 - 1))).file_name(seg);
    poll::wait_until(
        &format!("the downstream receive to archive {last} through the relay"),
        || {
            receiver.assert_running();
            down.join(&last).is_file() || down.join(format!("{last}.partial")).is_file()
        },
        || format!("{:?}", std::fs::read_dir(&down).map(|d| d.count())),
    );
    assert!(down.join("00000002.history").is_file());
    let log = receiver.full_log();
    assert!(!log.contains("no longer in this server's history"), "{log}");
    let mut relay = relay;
    relay.assert_healthy();
}
