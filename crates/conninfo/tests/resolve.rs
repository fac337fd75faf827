//! Resolution end to end through the public API: defaults, environment precedence, service files,
//! password files, multiple hosts, validation messages, and what gets written back out.

// Helpers of a test crate: a panic is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walrelay_conninfo::{
    AuthMethod, ChannelBinding, ConnInfo, ConnectionConfig, Keyword, LoadBalanceHosts, MapEnv,
    PasswordSource, PrimaryConninfoOptions, ReplicationMode, SettingSource, SslMode,
    SslNegotiation, SslRootCert, Target, TargetSessionAttrs, TlsVersion,
};

fn env() -> MapEnv {
    MapEnv::new().with_user("osuser")
}

fn resolve(conninfo: &str, env: &MapEnv) -> ConnectionConfig {
    ConnectionConfig::from_conninfo(conninfo, env).unwrap_or_else(|e| panic!("{conninfo:?}: {e}"))
}

fn error(conninfo: &str, env: &MapEnv) -> String {
    match ConnectionConfig::from_conninfo(conninfo, env) {
        Ok(c) => panic!("{conninfo:?} resolved to {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn unix(dir: &str, port: u16) -> Target {
    Target::Unix {
        socket: PathBuf::from(format!("{dir}/.s.PGSQL.{port}")),
        port,
    }
}

fn tcp(host: Option<&str>, addr: Option<&str>, port: u16) -> Target {
    Target::Tcp {
        host: host.map(str::to_string),
        addr: addr.map(|a| a.parse::<IpAddr>().unwrap()),
        port,
    }
}

fn write_mode(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn empty_string_gives_libpq_defaults() {
    let c = resolve("", &env());
    assert_eq!(c.targets(), &[unix("/var/run/postgresql", 5432)]);
    assert_eq!(c.user(), "osuser");
    assert_eq!(c.dbname(), "osuser");
    assert_eq!(c.password(), None);
    assert_eq!(c.passfile(), None, "no home directory, no password file");
    assert_eq!(c.ssl().mode, SslMode::Prefer);
    assert_eq!(c.ssl().negotiation, SslNegotiation::Postgres);
    assert!(c.ssl().sni);
    assert_eq!(c.ssl().min_protocol_version, Some(TlsVersion::Tls1_2));
    assert_eq!(c.ssl().max_protocol_version, None);
    assert_eq!(c.ssl().root_cert, None);
    assert_eq!(c.channel_binding(), ChannelBinding::Prefer);
    assert_eq!(c.replication(), ReplicationMode::Off);
    assert!(c.keepalives().enabled);
    assert_eq!(c.connect_timeout(), None);
    assert_eq!(c.target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(c.load_balance_hosts(), LoadBalanceHosts::Disable);
    assert_eq!(c.require_auth(), None);
    assert_eq!(c.application_name(), None);
    assert_eq!(
        c.startup_params(),
        &[
            ("user", "osuser".to_string()),
            ("database", "osuser".to_string())
        ]
    );
    assert_eq!(
        c.setting(Keyword::Port),
        Some(("5432", SettingSource::Default))
    );
    assert_eq!(c.setting(Keyword::Host), None);
}

#[test]
fn bare_word_is_a_database_name() {
    let c = resolve("mydb", &env());
    assert_eq!(c.dbname(), "mydb");
    assert_eq!(c.user(), "osuser");
}

#[test]
fn user_falls_back_to_os_user_even_when_given_empty() {
    let c = resolve("user=''", &env());
    assert_eq!(c.user(), "osuser");
    assert_eq!(
        error("", &MapEnv::new()),
        "could not determine the local user name for the effective user ID; set PGUSER or pass user="
    );
    assert_eq!(
        resolve("", &MapEnv::new().with_var("PGUSER", "u")).user(),
        "u"
    );
}

#[test]
fn environment_fills_in_and_explicit_settings_win() {
    let env = env()
        .with_var("PGHOST", "envhost")
        .with_var("PGPORT", "6000")
        .with_var("PGUSER", "envuser")
        .with_var("PGDATABASE", "envdb")
        .with_var("PGSSLMODE", "require")
        .with_var("PGAPPNAME", "envapp")
        .with_var("PGCONNECT_TIMEOUT", "7")
        .with_var("PGOPTIONS", "-c work_mem=1MB");
    let c = resolve("", &env);
    assert_eq!(c.targets(), &[tcp(Some("envhost"), None, 6000)]);
    assert_eq!((c.user(), c.dbname()), ("envuser", "envdb"));
    assert_eq!(c.ssl().mode, SslMode::Require);
    assert_eq!(c.application_name(), Some("envapp"));
    assert_eq!(c.connect_timeout(), Some(Duration::from_secs(7)));
    assert_eq!(c.options(), Some("-c work_mem=1MB"));
    assert_eq!(
        c.setting(Keyword::Host),
        Some(("envhost", SettingSource::Environment))
    );

    let c = resolve("host=h port=1 user=u dbname=d sslmode=disable", &env);
    assert_eq!(c.targets(), &[tcp(Some("h"), None, 1)]);
    assert_eq!((c.user(), c.dbname()), ("u", "d"));
    assert_eq!(c.ssl().mode, SslMode::Disable);

    // Set-but-empty variables count as set: PGHOST="" means the default socket, not "unset".
    let c = resolve("", &env.clone().with_var("PGHOST", ""));
    assert_eq!(c.targets(), &[unix("/var/run/postgresql", 6000)]);
}

#[test]
fn pgrequiressl_is_honoured_below_pgsslmode() {
    let c = resolve("", &env().with_var("PGREQUIRESSL", "1"));
    assert_eq!(c.ssl().mode, SslMode::Require);
    let c = resolve("", &env().with_var("PGREQUIRESSL", "0"));
    assert_eq!(c.ssl().mode, SslMode::Prefer);
    let c = resolve(
        "",
        &env()
            .with_var("PGREQUIRESSL", "1")
            .with_var("PGSSLMODE", "allow"),
    );
    assert_eq!(c.ssl().mode, SslMode::Allow);
    let c = resolve("sslmode=disable", &env().with_var("PGREQUIRESSL", "1"));
    assert_eq!(c.ssl().mode, SslMode::Disable);
    // requiressl in the string is translated too.
    assert_eq!(resolve("requiressl=1", &env()).ssl().mode, SslMode::Require);
}

#[test]
fn system_root_certificates_strengthen_only_the_default_sslmode() {
    let c = resolve("sslrootcert=system", &env());
    assert_eq!(c.ssl().mode, SslMode::VerifyFull);
    assert_eq!(c.ssl().root_cert, Some(SslRootCert::System));
    assert_eq!(
        error("sslrootcert=system sslmode=require", &env()),
        "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
    );
    assert_eq!(
        error(
            "sslrootcert=system",
            &env().with_var("PGSSLMODE", "verify-ca")
        ),
        "weak sslmode \"verify-ca\" may not be used with sslrootcert=system (use \"verify-full\") \
         (from environment variable PGSSLMODE)"
    );
    // PGREQUIRESSL's require is not a built-in default either.
    assert_eq!(
        error("sslrootcert=system", &env().with_var("PGREQUIRESSL", "1")),
        "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\") \
         (from environment variable PGREQUIRESSL)"
    );
}

#[test]
fn invalid_values_use_libpqs_messages_and_name_their_source() {
    let cases = [
        ("sslmode=bogus", "invalid sslmode value: \"bogus\""),
        ("sslmode=", "invalid sslmode value: \"\""),
        ("channel_binding=maybe", "invalid channel_binding value: \"maybe\""),
        ("sslnegotiation=tls", "invalid sslnegotiation value: \"tls\""),
        (
            "sslnegotiation=direct",
            "weak sslmode \"prefer\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")",
        ),
        ("target_session_attrs=primary-ish", "invalid target_session_attrs value: \"primary-ish\""),
        ("load_balance_hosts=yes", "invalid load_balance_hosts value: \"yes\""),
        ("sslcertmode=always", "invalid sslcertmode value: \"always\""),
        ("gssencmode=sometimes", "invalid gssencmode value: \"sometimes\""),
        (
            "gssencmode=require",
            "gssencmode value \"require\" invalid when GSSAPI support is not compiled in",
        ),
        ("require_auth=ldap", "invalid require_auth value: \"ldap\""),
        ("ssl_min_protocol_version=SSLv3", "invalid ssl_min_protocol_version value: \"SSLv3\""),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "invalid SSL protocol version range",
        ),
        (
            "ssl_min_protocol_version=TLSv1.1 ssl_max_protocol_version=TLSv1",
            "invalid SSL protocol version range",
        ),
        ("replication=maybe", "invalid value for parameter \"replication\": \"maybe\""),
        ("connect_timeout=soon", "invalid integer value \"soon\" for connection option \"connect_timeout\""),
        ("keepalives=yes", "keepalives parameter must be an integer"),
        ("keepalives_idle=1s", "invalid integer value \"1s\" for connection option \"keepalives_idle\""),
        ("tcp_user_timeout=9999999999", "invalid integer value \"9999999999\" for connection option \"tcp_user_timeout\""),
        ("port=abc", "invalid integer value \"abc\" for connection option \"port\""),
        ("port=0", "invalid port number: \"0\""),
        ("port=65536", "invalid port number: \"65536\""),
        ("port=-1", "invalid port number: \"-1\""),
        ("hostaddr=db.example.com", "could not parse network address \"db.example.com\""),
        ("foo=bar", "invalid connection option \"foo\""),
    ];
    for (input, want) in cases {
        let got = error(input, &env());
        assert!(
            got.starts_with(want),
            "{input:?}: got {got:?}, want prefix {want:?}"
        );
    }
    assert_eq!(
        error("", &env().with_var("PGSSLMODE", "bogus")),
        "invalid sslmode value: \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full) \
         (from environment variable PGSSLMODE)"
    );
    assert!(
        error("", &env().with_var("PGPORT", "x")).ends_with("(from environment variable PGPORT)")
    );
    // Accepted TLS ranges.
    assert!(ConnectionConfig::from_conninfo(
        "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1",
        &env()
    )
    .is_ok());
    assert!(ConnectionConfig::from_conninfo("ssl_max_protocol_version=TLSv1", &env()).is_err());
    assert!(ConnectionConfig::from_conninfo(
        "ssl_min_protocol_version='' ssl_max_protocol_version=TLSv1",
        &env()
    )
    .is_ok());
}

#[test]
fn multiple_hosts_and_ports() {
    let c = resolve("host=a,b,c port=5433", &env());
    assert_eq!(
        c.targets(),
        &[
            tcp(Some("a"), None, 5433),
            tcp(Some("b"), None, 5433),
            tcp(Some("c"), None, 5433)
        ]
    );
    let c = resolve("host=a,b port=1,2", &env());
    assert_eq!(
        c.targets(),
        &[tcp(Some("a"), None, 1), tcp(Some("b"), None, 2)]
    );
    let c = resolve("host=a,,/tmp,@abs port=1,,3,4", &env());
    assert_eq!(
        c.targets(),
        &[
            tcp(Some("a"), None, 1),
            unix("/var/run/postgresql", 5432),
            unix("/tmp", 3),
            unix("@abs", 4)
        ]
    );
    assert_eq!(
        c.targets()[3].abstract_socket_name(),
        Some("abs/.s.PGSQL.4")
    );

    assert_eq!(
        error("host=a,b port=1,2,3", &env()),
        "could not match 3 port numbers to 2 hosts; give one port for all hosts or one per host"
    );
    assert_eq!(
        error("host=a port=1,2", &env()),
        "could not match 2 port numbers to 1 hosts; give one port for all hosts or one per host"
    );
    assert_eq!(
        error("host=a,b,c hostaddr=10.0.0.1,10.0.0.2", &env()),
        "could not match 3 host names to 2 hostaddr values"
    );

    let c = resolve("host=a,b hostaddr=10.0.0.1,::1", &env());
    assert_eq!(
        c.targets(),
        &[
            tcp(Some("a"), Some("10.0.0.1"), 5432),
            tcp(Some("b"), Some("::1"), 5432)
        ]
    );
    let c = resolve("hostaddr=10.0.0.1,", &env());
    assert_eq!(
        c.targets(),
        &[
            tcp(None, Some("10.0.0.1"), 5432),
            unix("/var/run/postgresql", 5432)
        ]
    );
    // hostaddr wins over a socket-directory host, which still names the target.
    let c = resolve("host=/tmp hostaddr=127.0.0.1", &env());
    assert_eq!(c.targets(), &[tcp(Some("/tmp"), Some("127.0.0.1"), 5432)]);

    // URI form.
    let c = resolve("postgresql://h1:1,[::1]:2,%2Ftmp/db", &env());
    assert_eq!(
        c.targets(),
        &[
            tcp(Some("h1"), None, 1),
            tcp(Some("::1"), None, 2),
            unix("/tmp", 5432)
        ]
    );
    assert_eq!(c.dbname(), "db");
    assert_eq!(c.targets()[1].sni_host_name(), None);
}

#[test]
fn socket_path_length_limit() {
    let dir = format!("/{}", "d".repeat(93));
    // "/ddd…" (94 bytes) + "/.s.PGSQL.5432" (14 bytes) is 108 bytes: one too many.
    let msg = error(&format!("host={dir}"), &env());
    assert!(
        msg.starts_with("Unix-domain socket path \"/ddd")
            && msg.ends_with("is too long (maximum 107 bytes)"),
        "{msg}"
    );
    let ok = format!("/{}", "d".repeat(92));
    assert!(ConnectionConfig::from_conninfo(&format!("host={ok}"), &env()).is_ok());
}

#[test]
fn timeouts_and_keepalives() {
    let c = resolve(
        "connect_timeout=1 keepalives=0 keepalives_idle=-5 keepalives_interval=10 keepalives_count=3 tcp_user_timeout=1500",
        &env(),
    );
    assert_eq!(c.connect_timeout(), Some(Duration::from_secs(2)));
    let k = c.keepalives();
    assert!(!k.enabled);
    assert_eq!(k.idle, Some(Duration::ZERO));
    assert_eq!(k.interval, Some(Duration::from_secs(10)));
    assert_eq!(k.count, Some(3));
    assert_eq!(c.tcp_user_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(resolve("connect_timeout=0", &env()).connect_timeout(), None);
    assert_eq!(
        resolve("connect_timeout=-3", &env()).connect_timeout(),
        None
    );
    assert_eq!(
        resolve("connect_timeout=' 30 '", &env()).connect_timeout(),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn startup_parameters() {
    let env = env()
        .with_var("PGDATESTYLE", "ISO, MDY")
        .with_var("PGTZ", "DEFAULT")
        .with_var("PGGEQO", "off");
    let c = resolve(
        "user=u dbname=replication replication=yes options='-c wal_sender_timeout=0' \
         fallback_application_name=walrelay client_encoding=UTF8",
        &env,
    );
    assert_eq!(c.replication(), ReplicationMode::Physical);
    let want: Vec<(&str, String)> = vec![
        ("user", "u".into()),
        ("database", "replication".into()),
        ("replication", "yes".into()),
        ("options", "-c wal_sender_timeout=0".into()),
        ("application_name", "walrelay".into()),
        ("client_encoding", "UTF8".into()),
        ("datestyle", "ISO, MDY".into()),
        ("geqo", "off".into()),
    ];
    assert_eq!(c.startup_params(), want.as_slice());

    // application_name beats the fallback; set-but-empty sends nothing at all.
    let c = resolve(
        "application_name=app fallback_application_name=fb",
        &MapEnv::new().with_user("u"),
    );
    assert_eq!(c.application_name(), Some("app"));
    let c = resolve(
        "fallback_application_name=fb",
        &MapEnv::new().with_user("u").with_var("PGAPPNAME", ""),
    );
    assert_eq!(c.application_name(), None);

    let c = resolve("replication=database", &env);
    assert_eq!(c.replication(), ReplicationMode::Database);
    let c = resolve("replication=false", &env);
    assert_eq!(c.replication(), ReplicationMode::Off);
    assert!(c
        .startup_params()
        .contains(&("replication", "false".to_string())));

    let c = resolve(
        "client_encoding=auto",
        &MapEnv::new().with_user("u").with_var("LANG", "en_US.UTF-8"),
    );
    assert_eq!(c.client_encoding(), Some("UTF8"));
    let c = resolve("client_encoding=auto", &MapEnv::new().with_user("u"));
    assert_eq!(c.client_encoding(), Some("SQL_ASCII"));
}

#[test]
fn other_typed_settings() {
    let c = resolve(
        "require_auth=scram-sha-256 target_session_attrs=read-write load_balance_hosts=random \
         channel_binding=require sslmode=verify-full sslnegotiation=direct sslsni=0 \
         ssl_max_protocol_version=tlsv1.3 sslcertmode=require requirepeer=postgres \
         gssencmode=prefer krbsrvname=x gsslib=gssapi gssdelegation=1 sslcompression=1",
        &env(),
    );
    let ra = c.require_auth().unwrap();
    assert!(ra.allows(AuthMethod::ScramSha256) && !ra.allows(AuthMethod::Md5));
    assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
    assert_eq!(c.load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(c.channel_binding(), ChannelBinding::Require);
    assert_eq!(c.ssl().mode, SslMode::VerifyFull);
    assert_eq!(c.ssl().negotiation, SslNegotiation::Direct);
    assert!(!c.ssl().sni);
    assert_eq!(c.ssl().max_protocol_version, Some(TlsVersion::Tls1_3));
    assert_eq!(c.requirepeer(), Some("postgres"));
    // An empty require_auth means no restriction.
    assert_eq!(resolve("require_auth=''", &env()).require_auth(), None);
}

#[test]
fn tls_files_default_to_the_home_directory_if_present() {
    let home = tempfile::tempdir().unwrap();
    let env = env().with_home(home.path());
    let c = resolve("", &env);
    let ssl_dir = home.path().join(".postgresql");
    assert_eq!(c.ssl().cert, None);
    assert_eq!(c.ssl().key, Some(ssl_dir.join("postgresql.key")));
    assert_eq!(c.ssl().root_cert, None);
    assert_eq!(c.ssl().root_cert_path, Some(ssl_dir.join("root.crt")));
    assert_eq!(c.ssl().crl, None);

    fs::create_dir(&ssl_dir).unwrap();
    for f in ["postgresql.crt", "root.crt", "root.crl"] {
        fs::write(ssl_dir.join(f), "x").unwrap();
    }
    let c = resolve("", &env);
    assert_eq!(c.ssl().cert, Some(ssl_dir.join("postgresql.crt")));
    assert_eq!(
        c.ssl().root_cert,
        Some(SslRootCert::File(ssl_dir.join("root.crt")))
    );
    assert_eq!(c.ssl().crl, Some(ssl_dir.join("root.crl")));

    // Explicit settings replace the defaults; a root file that does not exist is not used.
    let c = resolve(
        "sslcert=/c.pem sslkey=/k.pem sslrootcert=/nonexistent.pem sslcrl=/crl.pem sslcrldir=/crls sslpassword=kp",
        &env,
    );
    assert_eq!(c.ssl().cert, Some(PathBuf::from("/c.pem")));
    assert_eq!(c.ssl().key, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.ssl().root_cert, None);
    assert_eq!(
        c.ssl().root_cert_path,
        Some(PathBuf::from("/nonexistent.pem"))
    );
    assert_eq!(c.ssl().crl, Some(PathBuf::from("/crl.pem")));
    assert_eq!(c.ssl().crl_dir, Some(PathBuf::from("/crls")));
    assert_eq!(c.ssl().key_password.as_ref().unwrap().as_str(), Some("kp"));
}

#[test]
fn service_file_sits_between_the_string_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    fs::write(
        home.join(".pg_service.conf"),
        "[primary]\nhost=svchost\nport=7000\nuser=svcuser\npassword=svcpass\nsslmode=bogus\n\
         [clean]\nhost=svchost\nsslmode=verify-ca\n",
    )
    .unwrap();
    let env = env()
        .with_home(home)
        .with_var("PGSYSCONFDIR", home.join("no-such-dir").to_str().unwrap())
        .with_var("PGPORT", "6000")
        .with_var("PGDATABASE", "envdb");

    let c = resolve("service=clean port=1", &env);
    assert_eq!(c.targets(), &[tcp(Some("svchost"), None, 1)]);
    assert_eq!(c.ssl().mode, SslMode::VerifyCa);
    assert_eq!(c.dbname(), "envdb");
    assert_eq!(c.service().unwrap().name, "clean");
    assert_eq!(
        c.setting(Keyword::Host),
        Some(("svchost", SettingSource::ServiceFile))
    );

    // PGSERVICE names the service when the string does not.
    let c = resolve("", &env.clone().with_var("PGSERVICE", "clean"));
    assert_eq!(c.targets(), &[tcp(Some("svchost"), None, 6000)]);

    // A bad value from the service is reported as such.
    assert_eq!(
        error("service=primary", &env),
        "invalid sslmode value: \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full) \
         (from service \"primary\")"
    );
    let c = resolve("service=primary sslmode=disable", &env);
    assert_eq!(c.user(), "svcuser");
    let pw = c.password().unwrap();
    assert_eq!(pw.as_str(), Some("svcpass"));
    assert_eq!(pw.source(), &PasswordSource::ServiceFile);

    assert!(error("service=nope", &env).starts_with("definition of service \"nope\" not found"));
    assert!(error("", &env.clone().with_var("PGSERVICE", "nope"))
        .starts_with("definition of service \"nope\" not found"));
}

#[test]
fn passwords_from_string_environment_and_password_file() {
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    write_mode(
        &pgpass,
        "# host:port:db:user:password\n\
         localhost:5432:*:rep:sockpw\n\
         db1:5433:*:rep:db1pw\n\
         10.0.0.9:*:*:rep:addrpw\n\
         /tmp:5432:*:rep:tmppw\n",
        0o600,
    );
    let env = env().with_home(home.path());

    let c = resolve("user=rep password=explicit host=db1 port=5433", &env);
    let pw = c.password_for(&c.targets()[0]).unwrap();
    assert_eq!(
        (pw.as_str(), pw.source()),
        (Some("explicit"), &PasswordSource::ConnectionString)
    );

    let c = resolve("user=rep", &env.clone().with_var("PGPASSWORD", "fromenv"));
    assert_eq!(c.password().unwrap().source(), &PasswordSource::Environment);

    // password='' means "not given": the password file is consulted.
    let c = resolve(
        "user=rep password='' host=db1,/var/run/postgresql,,/tmp,db2 hostaddr=',,,,10.0.0.9' port=5433,5432,5432,5432,1",
        &env,
    );
    assert_eq!(c.passfile(), Some(pgpass.as_path()));
    let found: Vec<Option<String>> = c
        .targets()
        .iter()
        .map(|t| c.password_for(t).map(|p| p.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        found,
        vec![
            Some("db1pw".to_string()),
            Some("sockpw".to_string()),
            Some("sockpw".to_string()),
            Some("tmppw".to_string()),
            None, // host "db2" is the key, not its hostaddr
        ]
    );
    let pw = c.password_for(&c.targets()[0]).unwrap();
    assert_eq!(pw.source(), &PasswordSource::PasswordFile(pgpass.clone()));

    // hostaddr is the key when there is no host.
    let c = resolve("user=rep hostaddr=10.0.0.9", &env);
    assert_eq!(
        c.password_for(&c.targets()[0]).unwrap().as_str(),
        Some("addrpw")
    );

    // passfile= and PGPASSFILE choose another file.
    let other = home.path().join("other");
    write_mode(&other, "*:*:*:*:otherpw\n", 0o600);
    let c = resolve(&format!("user=rep passfile={}", other.display()), &env);
    assert_eq!(
        c.password_for(&c.targets()[0]).unwrap().as_str(),
        Some("otherpw")
    );
    let c = resolve(
        "user=rep",
        &env.clone().with_var("PGPASSFILE", other.to_str().unwrap()),
    );
    assert_eq!(
        c.password_for(&c.targets()[0]).unwrap().as_str(),
        Some("otherpw")
    );

    // An insecure file is skipped, and the warning comes back as text.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let c = resolve("user=rep", &env);
    let lookup = c.lookup_password(&c.targets()[0]);
    assert_eq!(lookup.password, None);
    assert_eq!(
        lookup.warning.unwrap(),
        format!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            pgpass.display()
        )
    );
}

#[test]
fn command_line_overrides_the_connection_string() {
    let info = ConnInfo::from_command_line(
        Some("host=a port=1 user=x sslmode=require"),
        Some("b"),
        None,
        Some(""),
    )
    .unwrap();
    let c = ConnectionConfig::resolve(&info, &env()).unwrap();
    assert_eq!(c.targets(), &[tcp(Some("b"), None, 1)]);
    assert_eq!(c.user(), "x");
    assert_eq!(c.ssl().mode, SslMode::Require);

    let info = ConnInfo::from_command_line(Some("mydb"), None, Some("5433"), Some("u")).unwrap();
    let c = ConnectionConfig::resolve(&info, &env()).unwrap();
    assert_eq!((c.dbname(), c.user()), ("mydb", "u"));
    assert_eq!(c.targets(), &[unix("/var/run/postgresql", 5433)]);

    let info = ConnInfo::from_command_line(None, Some("h"), None, None).unwrap();
    assert_eq!(info.get(Keyword::Host), Some("h"));
}

#[test]
fn primary_conninfo_keeps_what_the_standby_needs() {
    let env = env()
        .with_var("PGHOST", "primary.example.com")
        .with_var("PGSSLMODE", "verify-full");
    let mut info = ConnInfo::parse(
        "port=5433 password='it\\'s' application_name=standby1 dbname=postgres \
         fallback_application_name=walrelay keepalives_idle=30 sslnegotiation=postgres",
    )
    .unwrap();
    info.set(Keyword::Replication, "true");
    let c = ConnectionConfig::resolve(&info, &env).unwrap();

    assert_eq!(
        c.primary_conninfo(PrimaryConninfoOptions::default()),
        "user=osuser password='it\\'s' host=primary.example.com port=5433 application_name=standby1 \
         keepalives_idle=30 sslmode='verify-full' sslnegotiation=postgres"
    );
    assert_eq!(
        c.primary_conninfo(PrimaryConninfoOptions {
            include_dbname: true,
            include_password: false
        }),
        "user=osuser dbname=postgres host=primary.example.com port=5433 application_name=standby1 \
         keepalives_idle=30 sslmode='verify-full' sslnegotiation=postgres"
    );
    // Whatever is written parses back to the same settings.
    let back = ConnInfo::parse(&c.primary_conninfo(PrimaryConninfoOptions::default())).unwrap();
    assert_eq!(back.get(Keyword::Password), Some("it's"));
    assert_eq!(back.get(Keyword::Host), Some("primary.example.com"));
    assert_eq!(back.get(Keyword::Replication), None);
}

#[test]
fn primary_conninfo_never_copies_a_password_file_password() {
    let home = tempfile::tempdir().unwrap();
    write_mode(&home.path().join(".pgpass"), "*:*:*:*:filepw\n", 0o600);
    let env = env().with_home(home.path());
    let c = resolve("host=h user=rep replication=true", &env);
    assert_eq!(
        c.password_for(&c.targets()[0]).unwrap().as_str(),
        Some("filepw")
    );
    let text = c.primary_conninfo(PrimaryConninfoOptions::default());
    assert_eq!(text, "user=rep host=h");
    // A default dbname (the user name) is not written even when asked for.
    let text = c.primary_conninfo(PrimaryConninfoOptions {
        include_dbname: true,
        include_password: true,
    });
    assert_eq!(text, "user=rep host=h");
}

#[test]
fn service_settings_are_written_inline() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("svc.conf"),
        "[s]\nhost=svchost\nport=7000\n",
    )
    .unwrap();
    let env = env()
        .with_var(
            "PGSERVICEFILE",
            dir.path().join("svc.conf").to_str().unwrap(),
        )
        .with_var("PGSYSCONFDIR", dir.path().to_str().unwrap());
    let c = resolve("service=s", &env);
    assert_eq!(
        c.primary_conninfo(PrimaryConninfoOptions::default()),
        "user=osuser host=svchost port=7000"
    );
    // The general form lets the caller choose.
    assert_eq!(
        c.to_conninfo(|k, _| matches!(k, Keyword::Service | Keyword::Port)),
        "service=s port=7000"
    );
}

#[test]
fn errors_and_logs_never_contain_the_password() {
    let secret = "Sup3rS3cret";
    let bad = [
        format!("password={secret} sslmode=bogus"),
        format!("password={secret} port=abc"),
        format!("password={secret} foo=bar"),
        format!("password='{secret}' host=a,b port=1,2,3"),
        format!("password={secret} more"),
        format!("password={secret} more=1"),
        format!("postgresql://u:{secret}@h:99999/db"),
        format!("postgresql://u:{secret}@[::1/db"),
        format!("postgresql://u:{secret}@h?sslmode=bogus"),
        format!("postgresql://u:{secret}@h?bogus=1"),
        format!("postgresql://u:{secret}%zz@h"),
        format!("postgresql://h?password={secret}%zz"),
        format!("postgresql://h?password={secret}&sslmode"),
        format!("sslpassword={secret} replication=maybe"),
    ];
    for input in &bad {
        let msg = error(input, &env());
        assert!(!msg.contains(secret), "{input:?} -> {msg}");
    }
    let env_bad = env()
        .with_var("PGPASSWORD", secret)
        .with_var("PGSSLMODE", "x");
    assert!(!error("", &env_bad).contains(secret));

    let c = resolve(
        &format!("host=h password={secret} sslpassword={secret} user=u"),
        &env(),
    );
    let shown = format!("{c} {c:?} {c:#?} {:?}", c.ssl());
    assert!(!shown.contains(secret), "{shown}");
    assert_eq!(
        c.to_string(),
        "user=u password='********' dbname=u host=h sslpassword='********'"
    );
}

#[test]
fn config_can_be_shared_across_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<ConnectionConfig>();
    assert_send_sync::<ConnInfo>();
    assert_send_sync::<walrelay_conninfo::ConnInfoError>();
}
