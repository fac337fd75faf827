//! The testkit on every other major version (npm builds). Each test runs only when
//! `WALRELAY_PG_MAJORS` lists its major (`scripts/test.sh` sets it and installs those majors first),
//! so a plain `cargo test` skips them.

use walrelay_testkit::{
    matrix_includes, psql_conninfo, AuthMethod, Cluster, PgBench, Role, StopMode,
};

fn smoke(major: u32) {
    if !matrix_includes(major) {
        eprintln!("skipped: WALRELAY_PG_MAJORS does not include {major}");
        return;
    }
    let mut primary = Cluster::builder()
        .name(&format!("pg{major}"))
        .major(major)
        .tcp_auth(AuthMethod::ScramSha256)
        .superuser_password("su")
        .role(Role::new("replicator").password("rep").replication())
        .wal_segsize_mb(1)
        .start();
    assert_eq!(primary.server_version_num() / 10000, major);
    let version = primary.install().version().expect("postgres --version");
    assert!(
        version.contains(&format!("(PostgreSQL) {major}.")),
        "{version}"
    );
    // PG 10 builds its segment size in (16 MB); later majors honour --wal-segsize.
    let expected_segment = if major == 10 { 16 << 20 } else { 1 << 20 };
    assert_eq!(primary.wal_segment_size(), expected_segment);

    // scram over TCP, for the superuser and the replication role.
    assert_eq!(
        psql_conninfo(&primary.conninfo(), "SELECT current_user").expect("scram login"),
        "postgres"
    );
    assert_eq!(
        psql_conninfo(&primary.replication_conninfo(), "SELECT current_user")
            .expect("replication role login"),
        "replicator"
    );
    assert!(psql_conninfo(&primary.conninfo_for("replicator", Some("no")), "SELECT 1").is_err());

    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS i");
    primary.restart();
    assert_eq!(primary.psql("SELECT count(*) FROM t"), "100");
    primary.pgbench_init(1);
    let s = primary.pgbench_run(&PgBench::transactions(20).clients(2));
    assert_eq!(s.transactions, 40);

    // A streaming standby: Debian 15's pg_basebackup serves majors up to 15; newer ones get a copy of
    // the cleanly stopped data directory. pg_basebackup 15's -R writes libpq 14+ options (`sslsni`)
    // into primary_conninfo, which a 10-13 walreceiver rejects ("invalid connection option"), so
    // those get their standby configuration from the testkit instead.
    let copy = match major {
        14..=15 => primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]),
        ..=13 => primary.pg_basebackup(&["-X", "stream", "-c", "fast"]),
        _ => primary.cold_copy(),
    };
    let builder = primary.standby(&copy);
    let builder = if (14..=15).contains(&major) {
        builder
    } else {
        builder.follow(&primary.replication_conninfo())
    };
    let mut standby = builder.start();
    assert!(standby.is_in_recovery());
    primary.psql("INSERT INTO t VALUES (101)");
    primary.switch_wal();
    standby.catch_up(&primary);
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "101");

    standby.promote();
    assert!(!standby.is_in_recovery());
    assert_eq!(standby.current_timeline(), 2);
    standby.psql("INSERT INTO t VALUES (102)");
    standby.stop(StopMode::Fast);
    primary.stop(StopMode::Fast);
}

#[test]
fn major_10() {
    smoke(10);
}

#[test]
fn major_11() {
    smoke(11);
}

#[test]
fn major_12() {
    smoke(12);
}

#[test]
fn major_13() {
    smoke(13);
}

#[test]
fn major_14() {
    smoke(14);
}

/// Debian's 15 is covered by tests/cluster.rs; this runs the npm build of 15 when
/// `WALRELAY_PG15_FROM_NPM=1` and the matrix includes 15.
#[test]
fn major_15_npm() {
    if std::env::var("WALRELAY_PG15_FROM_NPM").as_deref() != Ok("1") {
        eprintln!("skipped: WALRELAY_PG15_FROM_NPM is not 1");
        return;
    }
    smoke(15);
}

#[test]
fn major_16() {
    smoke(16);
}

#[test]
fn major_17() {
    smoke(17);
}

#[test]
fn major_18() {
    smoke(18);
}
