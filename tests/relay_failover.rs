// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! `walrelay serve` through a failover: the relay's upstream is a host list (a primary and its
//! streaming standby); the primary stops, the standby is promoted, the relay follows it onto the
//! new timeline by itself — and leads its own downstream standby there without a restart: the
//! history file served, the end of the old timeline announced, streaming on the new one.

mod support;

use walrelay_testkit::StopMode;

use support::relay::{pg_basebackup_through, primary, walsenders, Relay};
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
    let mut relay = Relay::start(&hosts, &archive, &["--status-interval", "1"]);
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
    relay.assert_healthy();
}
