#![allow(clippy::unwrap_used)]

//! The client against real PostgreSQL 15: every transport and authentication method, TLS modes,
//! channel binding, replication commands compared with psql, and the errors a user meets.

use walrelay_client::{connect_params, ClientError, Connection, ReplicationMode};
use walrelay_conninfo::{ConnectionConfig, MapEnv};
use walrelay_protocol::TimelineId;
use walrelay_testkit::{psql_conninfo, AuthMethod, Cluster, Role, Tls};

fn params(conninfo: &str) -> walrelay_client::ConnectParams {
    // No environment, no home directory: only what the string says (no ~/.pgpass surprises).
    let cfg = ConnectionConfig::from_conninfo(conninfo, &MapEnv::new()).expect("valid conninfo");
    connect_params(&cfg, ReplicationMode::Physical, None).expect("connect params")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(conninfo: &str) -> Result<Connection, ClientError> {
    Connection::connect(&params(conninfo)).await
}

/// IDENTIFY_SYSTEM through walrelay equals what `psql "… replication=true"` prints.
async fn identify_matches_psql(conninfo: &str) {
    let mut c = connect(conninfo).await.expect("connect");
    let ours = c.identify_system().await.expect("IDENTIFY_SYSTEM");
    c.close().await;
    let psql = psql_conninfo(&format!("{conninfo} replication=true"), "IDENTIFY_SYSTEM")
        .expect("psql IDENTIFY_SYSTEM");
    let fields: Vec<&str> = psql.trim().split('|').collect();
    assert_eq!(fields[0], ours.system_identifier.to_string(), "systemid");
    assert_eq!(fields[1], ours.timeline.0.to_string(), "timeline");
    // xlogpos moves; ours was read first, so it can only be behind or equal.
    let theirs: walrelay_protocol::Lsn = fields[2].parse().unwrap();
    assert!(
        ours.xlogpos <= theirs,
        "xlogpos {} > {}",
        ours.xlogpos,
        theirs
    );
}

#[test]
fn tcp_and_unix_socket_with_trust_md5_and_scram() {
    for auth in [AuthMethod::Trust, AuthMethod::Md5, AuthMethod::ScramSha256] {
        let mut b = Cluster::builder()
            .name(&format!("client-{auth:?}"))
            .auth(auth)
            .role(Role::new("repl").password("s3cret'pw").replication());
        if auth != AuthMethod::Trust {
            b = b.superuser_password("su-pw");
        }
        let c = b.start();
        rt().block_on(async {
            identify_matches_psql(&c.conninfo_as("repl")).await;
            identify_matches_psql(&c.unix_conninfo()).await;
            let mut conn = connect(&c.unix_conninfo()).await.unwrap();
            assert!(!conn.is_tls());
            assert_eq!(conn.server_version().major(), 15);
            assert_eq!(
                conn.wal_segment_size().await.unwrap().bytes(),
                16 * 1024 * 1024
            );
        });
    }
}

#[test]
fn tls_require_verify_full_and_channel_binding() {
    let c = Cluster::builder()
        .name("client-tls")
        .auth(AuthMethod::ScramSha256)
        .superuser_password("pw")
        .tls(Tls::Required)
        .start();
    let ca = c.ca_cert_path().unwrap().display().to_string();
    let base = format!("host=127.0.0.1 port={} user=postgres password=pw", c.port());
    rt().block_on(async {
        // require: encrypted, certificate not checked.
        let conn = connect(&format!("{base} sslmode=require")).await.unwrap();
        assert!(conn.is_tls());
        // verify-full with the test CA, and SCRAM-SHA-256-PLUS insisted upon.
        let mut conn = connect(&format!(
            "{base} sslmode=verify-full sslrootcert={ca} channel_binding=require"
        ))
        .await
        .unwrap();
        assert!(conn.is_tls());
        identify_matches_psql(&format!("{base} sslmode=verify-full sslrootcert={ca}")).await;
        conn.identify_system().await.unwrap();
        // localhost is in the certificate too.
        let localhost = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=postgres password=pw sslmode=verify-full sslrootcert={ca}",
            c.port()
        );
        connect(&localhost).await.unwrap();
        // A name the certificate does not carry fails verify-full but passes verify-ca.
        let wrong = format!(
            "host=db.example.invalid hostaddr=127.0.0.1 port={} user=postgres password=pw sslrootcert={ca}",
            c.port()
        );
        let e = connect(&format!("{wrong} sslmode=verify-full")).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("TLS") && msg.to_lowercase().contains("not valid for"), "{msg}");
        assert!(!msg.contains("pw "), "{msg}");
        connect(&format!("{wrong} sslmode=verify-ca")).await.unwrap();
        // hostssl only: plaintext refused by the server.
        let e = connect(&format!("{base} sslmode=disable")).await.unwrap_err();
        assert!(e.to_string().contains("no pg_hba.conf entry"), "{e}");
    });
}

#[test]
fn slots_create_read_drop() {
    let c = Cluster::builder().name("client-slots").start();
    rt().block_on(async {
        let mut conn = connect(&c.unix_conninfo()).await.unwrap();
        conn.create_physical_slot("walrelay_t", false, true)
            .await
            .unwrap();
        let info = conn.read_replication_slot("walrelay_t").await.unwrap().unwrap();
        assert_eq!(info.slot_type, "physical");
        assert!(info.restart_lsn.is_some(), "RESERVE_WAL sets restart_lsn");
        assert_eq!(info.restart_tli, Some(TimelineId(1)));
        assert_eq!(
            c.psql("SELECT slot_type, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'walrelay_t'"),
            "physical|t"
        );
        let e = conn
            .create_physical_slot("walrelay_t", false, true)
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate(), Some("42710"), "{e}");
        conn.drop_slot("walrelay_t", false).await.unwrap();
        assert!(conn.read_replication_slot("walrelay_t").await.unwrap().is_none());
        // Temporary slots vanish with their connection.
        conn.create_physical_slot("walrelay_tmp", true, true).await.unwrap();
        assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots WHERE temporary"), "1");
        conn.close().await;
        let mut gone = String::new();
        for _ in 0..50 {
            gone = c.psql("SELECT count(*) FROM pg_replication_slots");
            if gone == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(gone, "0");
        let e = conn_err(connect(&c.unix_conninfo()).await.unwrap().drop_slot("nope", false).await);
        assert_eq!(e.sqlstate(), Some("42704"), "{e}");
    });
}

fn conn_err<T>(r: Result<T, ClientError>) -> ClientError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn errors_a_user_meets_are_one_line_and_never_show_the_password() {
    let c = Cluster::builder()
        .name("client-errors")
        .auth(AuthMethod::ScramSha256)
        .superuser_password("right-pw")
        .no_replication_hba()
        .start();
    let plain = Cluster::builder().name("client-errors-plain").start();
    rt().block_on(async {
        let check = |e: ClientError, want: &str| {
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(!msg.contains('\n'), "not one line: {msg:?}");
            assert!(
                !msg.contains("wrong-pw") && !msg.contains("right-pw"),
                "password leaked: {msg}"
            );
        };
        let base = format!("host=127.0.0.1 port={}", c.port());
        // No replication line in pg_hba.conf (the password is right).
        let e = conn_err(connect(&format!("{base} user=postgres password=right-pw")).await);
        assert!(e.is_auth_failure());
        check(e, "no pg_hba.conf entry for replication connection");
        // Wrong password / unknown user, over a normal session so pg_hba matches.
        let sql = |s: &str| {
            let cfg = ConnectionConfig::from_conninfo(s, &MapEnv::new()).unwrap();
            connect_params(&cfg, ReplicationMode::Off, None).unwrap()
        };
        let e = conn_err(
            Connection::connect(&sql(&format!(
                "{base} user=postgres password=wrong-pw dbname=postgres"
            )))
            .await,
        );
        assert_eq!(e.sqlstate(), Some("28P01"));
        assert!(!e.is_transient());
        check(e, "password authentication failed for user \"postgres\"");
        let e = conn_err(
            Connection::connect(&sql(&format!(
                "{base} user=nobody password=wrong-pw dbname=postgres"
            )))
            .await,
        );
        check(e, "password authentication failed for user \"nobody\"");
        // No password at all.
        let e = conn_err(
            Connection::connect(&sql(&format!("{base} user=postgres dbname=postgres"))).await,
        );
        check(e, "but none was given");
        // Nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = conn_err(connect(&format!("host=127.0.0.1 port={port} user=postgres")).await);
        assert!(e.is_transient());
        check(e, "Connection refused");
        // TLS required, server without TLS.
        let e = conn_err(
            connect(&format!(
                "host=127.0.0.1 port={} user=postgres sslmode=require",
                plain.port()
            ))
            .await,
        );
        check(e, "server does not support SSL, but SSL was required");
    });
    // Malformed connection strings fail before any connection.
    for bad in [
        "host=",
        "port=abc host=x",
        "sslmode=sometimes",
        "nokey=1",
        "host='unterminated",
    ] {
        let r = ConnectionConfig::from_conninfo(bad, &MapEnv::new());
        if let Ok(cfg) = r {
            // Some (like an empty host) are legal; they must still not panic when used.
            let _ = connect_params(&cfg, ReplicationMode::Physical, None);
        } else if let Err(e) = r {
            assert!(!e.to_string().contains('\n'));
        }
    }
    assert!(ConnectionConfig::from_conninfo("sslmode=sometimes", &MapEnv::new()).is_err());
    assert!(ConnectionConfig::from_conninfo("nokey=1", &MapEnv::new()).is_err());
}

#[test]
fn target_session_attrs_picks_the_right_host() {
    let primary = Cluster::builder().name("client-tsa-primary").start();
    let backup = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
    let standby = primary.standby(&backup).start();
    let (p, s) = (primary.port(), standby.port());
    let port_of = |c: &Connection| match c.endpoint() {
        walrelay_client::Endpoint::Tcp { port, .. } => *port,
        other => panic!("{other:?}"),
    };
    rt().block_on(async {
        for (attrs, hosts, want) in [
            ("read-write", format!("{s},{p}"), p),
            ("primary", format!("{s},{p}"), p),
            ("read-only", format!("{p},{s}"), s),
            ("standby", format!("{p},{s}"), s),
            ("prefer-standby", format!("{p},{s}"), s),
            ("prefer-standby", format!("{p}"), p),
            ("any", format!("{s},{p}"), s),
        ] {
            let ci = format!(
                "host=127.0.0.1,127.0.0.1 port={hosts} user=postgres target_session_attrs={attrs}"
            );
            let ci = if !hosts.contains(',') {
                ci.replace("host=127.0.0.1,127.0.0.1", "host=127.0.0.1")
            } else {
                ci
            };
            let c = connect(&ci)
                .await
                .unwrap_or_else(|e| panic!("{attrs}: {e}"));
            assert_eq!(port_of(&c), want, "{attrs} over {hosts}");
            c.close().await;
        }
        let e = conn_err(
            connect(&format!(
                "host=127.0.0.1 port={s} user=postgres target_session_attrs=read-write"
            ))
            .await,
        );
        assert!(
            e.to_string().contains("target_session_attrs=read-write"),
            "{e}"
        );
    });
}
