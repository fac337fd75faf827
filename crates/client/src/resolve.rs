//! From libpq-style settings ([`walrelay_conninfo::ConnectionConfig`]) to [`ConnectParams`].

use std::sync::Arc;

use walrelay_conninfo as ci;

use crate::error::ClientError;
use crate::params::{
    AuthMethod, ChannelBindingMode, ConnectParams, Endpoint, PasswordLookup, ReplicationMode,
    RootCerts, Secret, SessionAttrs, SslMode, TlsParams,
};

/// How long one connection attempt (TCP, TLS, authentication) may take when the settings give no
/// `connect_timeout` (libpq would wait for ever): PostgreSQL's own `authentication_timeout`
/// default, after which a real server gives up on a client that is not in yet. A peer that
/// accepts the connection and never answers (the wrong port, a hung proxy) is then an error —
/// retried by the long-running commands — instead of a silent wait for ever.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Builds connection parameters from resolved libpq settings. `replication` overrides the
/// `replication` keyword (walrelay decides what kind of session it needs). `prompt` is asked for a
/// password when neither the settings nor `.pgpass` have one and the server wants one.
pub fn connect_params(
    cfg: &ci::ConnectionConfig,
    replication: ReplicationMode,
    prompt: Option<PasswordLookup>,
) -> Result<ConnectParams, ClientError> {
    let mut pairs: Vec<(Endpoint, ci::Target)> = Vec::new();
    for t in cfg.targets() {
        let ep = match t {
            ci::Target::Tcp { host, addr, port } => Endpoint::Tcp {
                host: host
                    .clone()
                    .or_else(|| addr.map(|a| a.to_string()))
                    .unwrap_or_else(|| "localhost".to_string()),
                addr: *addr,
                port: *port,
            },
            ci::Target::Unix { socket, port } => {
                if t.abstract_socket_name().is_some() {
                    return Err(ClientError::Config(format!(
                        "abstract Unix sockets ({}) are not supported; use a socket directory or a TCP host",
                        socket.display()
                    )));
                }
                Endpoint::Unix {
                    socket: socket.clone(),
                    port: *port,
                }
            }
        };
        pairs.push((ep, t.clone()));
    }
    let mut endpoints: Vec<Endpoint> = pairs.iter().map(|(e, _)| e.clone()).collect();
    if cfg.load_balance_hosts() == ci::LoadBalanceHosts::Random {
        shuffle(&mut endpoints);
    }

    let cfg_for_lookup = cfg.clone();
    let lookup: PasswordLookup = Arc::new(move |ep: &Endpoint| {
        let from_settings = pairs
            .iter()
            .find(|(e, _)| e == ep)
            .and_then(|(_, t)| cfg_for_lookup.password_for(t))
            .map(|p| Secret::new(String::from_utf8_lossy(p.as_bytes()).into_owned()));
        from_settings.or_else(|| prompt.as_ref().and_then(|p| p(ep)))
    });

    let ssl = cfg.ssl();
    let mode = match ssl.mode {
        ci::SslMode::Disable => SslMode::Disable,
        ci::SslMode::Allow => SslMode::Allow,
        ci::SslMode::Prefer => SslMode::Prefer,
        ci::SslMode::Require => SslMode::Require,
        ci::SslMode::VerifyCa => SslMode::VerifyCa,
        ci::SslMode::VerifyFull => SslMode::VerifyFull,
    };
    if ssl.negotiation == ci::SslNegotiation::Direct {
        return Err(ClientError::Config(
            "sslnegotiation=direct is not supported by walrelay; use sslnegotiation=postgres"
                .into(),
        ));
    }
    let root_certs = match &ssl.root_cert {
        Some(ci::SslRootCert::File(p)) => Some(RootCerts::File(p.clone())),
        Some(ci::SslRootCert::System) => Some(RootCerts::System),
        None => None,
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_certs.is_none() {
        let path = ssl
            .root_cert_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.postgresql/root.crt".into());
        return Err(ClientError::Config(format!(
            "root certificate file \"{path}\" does not exist; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification"
        )));
    }
    let tls = TlsParams {
        mode,
        root_certs,
        client_cert: ssl.cert.clone(),
        client_key: ssl.key.clone(),
        sni: ssl.sni,
    };
    let channel_binding = match cfg.channel_binding() {
        ci::ChannelBinding::Disable => ChannelBindingMode::Disable,
        ci::ChannelBinding::Prefer => ChannelBindingMode::Prefer,
        ci::ChannelBinding::Require => ChannelBindingMode::Require,
    };
    let allowed_auth = cfg.require_auth().map(|ra| {
        let mut v = Vec::new();
        if ra.allows_no_authentication() {
            v.push(AuthMethod::None);
        }
        for (ours, theirs) in [
            (AuthMethod::Password, ci::AuthMethod::Password),
            (AuthMethod::Md5, ci::AuthMethod::Md5),
            (AuthMethod::ScramSha256, ci::AuthMethod::ScramSha256),
        ] {
            if ra.allows(theirs) {
                v.push(ours);
            }
        }
        v
    });
    let ka = cfg.keepalives();
    let dbname = match replication {
        // A physical walsender ignores the database; libpq still sends it, and so do we.
        _ if cfg.dbname().is_empty() => None,
        _ => Some(cfg.dbname().to_string()),
    };
    let extra_startup = cfg
        .startup_params()
        .iter()
        .filter(|(k, _)| matches!(*k, "datestyle" | "timezone" | "geqo"))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let target_session_attrs = match cfg.target_session_attrs() {
        ci::TargetSessionAttrs::Any => SessionAttrs::Any,
        ci::TargetSessionAttrs::ReadWrite => SessionAttrs::ReadWrite,
        ci::TargetSessionAttrs::ReadOnly => SessionAttrs::ReadOnly,
        ci::TargetSessionAttrs::Primary => SessionAttrs::Primary,
        ci::TargetSessionAttrs::Standby => SessionAttrs::Standby,
        ci::TargetSessionAttrs::PreferStandby => SessionAttrs::PreferStandby,
    };
    Ok(ConnectParams {
        endpoints,
        user: cfg.user().to_string(),
        dbname,
        password: Some(lookup),
        application_name: cfg.application_name().map(str::to_string),
        options: cfg.options().map(str::to_string),
        replication,
        tls,
        channel_binding,
        connect_timeout: Some(cfg.connect_timeout().unwrap_or(DEFAULT_CONNECT_TIMEOUT)),
        keepalives: ka.enabled,
        keepalives_idle: ka.idle,
        keepalives_interval: ka.interval,
        keepalives_count: ka.count,
        tcp_user_timeout: cfg.tcp_user_timeout(),
        allowed_auth,
        extra_startup,
        target_session_attrs,
        settings_since: Vec::new(),
    })
}

/// `load_balance_hosts=random`: a Fisher–Yates shuffle seeded from the clock and the process id (no
/// cryptographic quality needed: it only spreads connections over hosts).
fn shuffle<T>(v: &mut [T]) {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    for i in (1..v.len()).rev() {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(s: &str) -> ci::ConnectionConfig {
        let env = ci::MapEnv::new().with_var("PGUSER", "alice");
        ci::ConnectionConfig::from_conninfo(s, &env).unwrap()
    }

    #[test]
    fn maps_hosts_and_tls() {
        let cfg = resolve("host=db1,/tmp port=5433,5434 sslmode=require password=pw");
        let p = connect_params(&cfg, ReplicationMode::Physical, None).unwrap();
        assert_eq!(p.endpoints.len(), 2);
        assert!(matches!(&p.endpoints[0], Endpoint::Tcp { host, port: 5433, .. } if host == "db1"));
        assert!(
            matches!(&p.endpoints[1], Endpoint::Unix { socket, .. } if socket.ends_with(".s.PGSQL.5434"))
        );
        assert_eq!(p.tls.mode, SslMode::Require);
        assert_eq!(p.user, "alice");
        let pw = (p.password.unwrap())(&p.endpoints[0]).unwrap();
        assert_eq!(pw.expose(), "pw");
        assert!(!format!("{pw:?}").contains("pw\""));
    }

    #[test]
    fn a_connection_attempt_is_bounded_unless_told_otherwise() {
        let p = connect_params(&resolve("host=db1"), ReplicationMode::Physical, None).unwrap();
        assert_eq!(p.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        let p = connect_params(
            &resolve("host=db1 connect_timeout=5"),
            ReplicationMode::Physical,
            None,
        )
        .unwrap();
        assert_eq!(p.connect_timeout, Some(std::time::Duration::from_secs(5)));
    }

    #[test]
    fn session_attrs_and_load_balancing() {
        let cfg =
            resolve("host=a,b,c,d,e,f target_session_attrs=read-write load_balance_hosts=random");
        let p = connect_params(&cfg, ReplicationMode::Physical, None).unwrap();
        assert_eq!(p.target_session_attrs, SessionAttrs::ReadWrite);
        let mut hosts: Vec<String> = p
            .endpoints
            .iter()
            .map(|e| match e {
                Endpoint::Tcp { host, .. } => host.clone(),
                Endpoint::Unix { .. } => unreachable!(),
            })
            .collect();
        hosts.sort();
        assert_eq!(hosts, ["a", "b", "c", "d", "e", "f"]);
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted, "a shuffle of 100 items left them in order");
    }

    #[test]
    fn verify_full_without_root_cert_is_an_error() {
        let cfg = resolve("host=db1 sslmode=verify-full sslrootcert=/nonexistent/root.crt");
        let e = connect_params(&cfg, ReplicationMode::Physical, None).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn prompt_is_the_fallback() {
        let cfg = resolve("host=db1 passfile=/nonexistent");
        let prompt: PasswordLookup = Arc::new(|_| Some(Secret::new("typed")));
        let p = connect_params(&cfg, ReplicationMode::Physical, Some(prompt)).unwrap();
        let pw = (p.password.unwrap())(&p.endpoints[0]).unwrap();
        assert_eq!(pw.expose(), "typed");
    }
}
