//! The connection keywords libpq knows, with the environment variable and built-in default of each.
//!
//! This is libpq's `PQconninfoOptions[]` table (`src/interfaces/libpq/fe-connect.c`), in the same order, as
//! seen by a libpq built with TLS support and without GSSAPI (which is what walrelay is). The order matters:
//! it is the order in which defaults are filled in and in which settings are written back out, so output
//! lines up with what `PQconninfo()` and pg_basebackup produce.

use std::fmt;
use std::str::FromStr;

use crate::error::ConnInfoError;

/// One libpq connection keyword (`host`, `sslmode`, …).
///
/// The variants are ordered as in libpq's option table; `Ord` follows that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyword {
    Service,
    User,
    Password,
    Passfile,
    ChannelBinding,
    ConnectTimeout,
    Dbname,
    Host,
    Hostaddr,
    Port,
    ClientEncoding,
    Options,
    ApplicationName,
    FallbackApplicationName,
    Keepalives,
    KeepalivesIdle,
    KeepalivesInterval,
    KeepalivesCount,
    TcpUserTimeout,
    SslMode,
    SslNegotiation,
    SslCompression,
    SslCert,
    SslKey,
    SslCertMode,
    SslPassword,
    SslRootCert,
    SslCrl,
    SslCrlDir,
    SslSni,
    RequirePeer,
    RequireAuth,
    SslMinProtocolVersion,
    SslMaxProtocolVersion,
    GssEncMode,
    KrbSrvName,
    GssLib,
    GssDelegation,
    Replication,
    TargetSessionAttrs,
    LoadBalanceHosts,
}

/// Per keyword: name, environment variable, built-in default, libpq major version that introduced it.
struct Info {
    name: &'static str,
    env: Option<&'static str>,
    default: Option<&'static str>,
    since: u32,
}

const fn info(
    name: &'static str,
    env: Option<&'static str>,
    default: Option<&'static str>,
    since: u32,
) -> Info {
    Info {
        name,
        env,
        default,
        since,
    }
}

impl Keyword {
    /// Every keyword, in libpq's order.
    pub const ALL: [Keyword; 41] = [
        Keyword::Service,
        Keyword::User,
        Keyword::Password,
        Keyword::Passfile,
        Keyword::ChannelBinding,
        Keyword::ConnectTimeout,
        Keyword::Dbname,
        Keyword::Host,
        Keyword::Hostaddr,
        Keyword::Port,
        Keyword::ClientEncoding,
        Keyword::Options,
        Keyword::ApplicationName,
        Keyword::FallbackApplicationName,
        Keyword::Keepalives,
        Keyword::KeepalivesIdle,
        Keyword::KeepalivesInterval,
        Keyword::KeepalivesCount,
        Keyword::TcpUserTimeout,
        Keyword::SslMode,
        Keyword::SslNegotiation,
        Keyword::SslCompression,
        Keyword::SslCert,
        Keyword::SslKey,
        Keyword::SslCertMode,
        Keyword::SslPassword,
        Keyword::SslRootCert,
        Keyword::SslCrl,
        Keyword::SslCrlDir,
        Keyword::SslSni,
        Keyword::RequirePeer,
        Keyword::RequireAuth,
        Keyword::SslMinProtocolVersion,
        Keyword::SslMaxProtocolVersion,
        Keyword::GssEncMode,
        Keyword::KrbSrvName,
        Keyword::GssLib,
        Keyword::GssDelegation,
        Keyword::Replication,
        Keyword::TargetSessionAttrs,
        Keyword::LoadBalanceHosts,
    ];

    fn info(self) -> Info {
        use Keyword::*;
        // The `since` column is the first libpq major release that accepts the keyword; a standby whose
        // libpq is older refuses a primary_conninfo that contains it ("invalid connection option").
        match self {
            Service => info("service", Some("PGSERVICE"), None, 8),
            User => info("user", Some("PGUSER"), None, 7),
            Password => info("password", Some("PGPASSWORD"), None, 7),
            Passfile => info("passfile", Some("PGPASSFILE"), None, 10),
            ChannelBinding => info(
                "channel_binding",
                Some("PGCHANNELBINDING"),
                Some("prefer"),
                13,
            ),
            ConnectTimeout => info("connect_timeout", Some("PGCONNECT_TIMEOUT"), None, 7),
            Dbname => info("dbname", Some("PGDATABASE"), None, 7),
            Host => info("host", Some("PGHOST"), None, 7),
            Hostaddr => info("hostaddr", Some("PGHOSTADDR"), None, 7),
            Port => info("port", Some("PGPORT"), Some("5432"), 7),
            ClientEncoding => info("client_encoding", Some("PGCLIENTENCODING"), None, 9),
            Options => info("options", Some("PGOPTIONS"), Some(""), 7),
            ApplicationName => info("application_name", Some("PGAPPNAME"), None, 9),
            FallbackApplicationName => info("fallback_application_name", None, None, 9),
            Keepalives => info("keepalives", None, None, 9),
            KeepalivesIdle => info("keepalives_idle", None, None, 9),
            KeepalivesInterval => info("keepalives_interval", None, None, 9),
            KeepalivesCount => info("keepalives_count", None, None, 9),
            TcpUserTimeout => info("tcp_user_timeout", None, None, 12),
            SslMode => info("sslmode", Some("PGSSLMODE"), Some("prefer"), 8),
            SslNegotiation => info(
                "sslnegotiation",
                Some("PGSSLNEGOTIATION"),
                Some("postgres"),
                17,
            ),
            SslCompression => info("sslcompression", Some("PGSSLCOMPRESSION"), Some("0"), 9),
            SslCert => info("sslcert", Some("PGSSLCERT"), None, 8),
            SslKey => info("sslkey", Some("PGSSLKEY"), None, 8),
            SslCertMode => info("sslcertmode", Some("PGSSLCERTMODE"), None, 16),
            SslPassword => info("sslpassword", None, None, 13),
            SslRootCert => info("sslrootcert", Some("PGSSLROOTCERT"), None, 8),
            SslCrl => info("sslcrl", Some("PGSSLCRL"), None, 8),
            SslCrlDir => info("sslcrldir", Some("PGSSLCRLDIR"), None, 14),
            SslSni => info("sslsni", Some("PGSSLSNI"), Some("1"), 14),
            RequirePeer => info("requirepeer", Some("PGREQUIREPEER"), None, 9),
            RequireAuth => info("require_auth", Some("PGREQUIREAUTH"), None, 16),
            SslMinProtocolVersion => info(
                "ssl_min_protocol_version",
                Some("PGSSLMINPROTOCOLVERSION"),
                Some("TLSv1.2"),
                13,
            ),
            SslMaxProtocolVersion => info(
                "ssl_max_protocol_version",
                Some("PGSSLMAXPROTOCOLVERSION"),
                None,
                13,
            ),
            // Without GSSAPI support libpq's default is "disable".
            GssEncMode => info("gssencmode", Some("PGGSSENCMODE"), Some("disable"), 12),
            KrbSrvName => info("krbsrvname", Some("PGKRBSRVNAME"), Some("postgres"), 8),
            GssLib => info("gsslib", Some("PGGSSLIB"), None, 9),
            GssDelegation => info("gssdelegation", Some("PGGSSDELEGATION"), Some("0"), 16),
            Replication => info("replication", None, None, 9),
            TargetSessionAttrs => info(
                "target_session_attrs",
                Some("PGTARGETSESSIONATTRS"),
                Some("any"),
                10,
            ),
            LoadBalanceHosts => info(
                "load_balance_hosts",
                Some("PGLOADBALANCEHOSTS"),
                Some("disable"),
                16,
            ),
        }
    }

    /// The keyword as written in a connection string.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The environment variable libpq falls back to, if any (`PGHOST` for `host`).
    pub fn env_var(self) -> Option<&'static str> {
        self.info().env
    }

    /// libpq's built-in default, used when neither the connection string, a service file nor the
    /// environment gives a value.
    pub fn builtin_default(self) -> Option<&'static str> {
        self.info().default
    }

    /// The first libpq major version that understands this keyword. A standby whose libpq is older
    /// rejects a `primary_conninfo` that uses it. Keywords from before PostgreSQL 10 report the first
    /// digit of their 7.x/8.x/9.x release; every libpq walrelay works with has them.
    pub fn introduced_in(self) -> u32 {
        self.info().since
    }

    /// Whether the value is a secret that must never be logged (`password`, `sslpassword`).
    pub fn is_secret(self) -> bool {
        matches!(self, Keyword::Password | Keyword::SslPassword)
    }

    /// Looks a keyword up by its exact (case-sensitive) name, as libpq does.
    pub fn from_name(name: &str) -> Option<Keyword> {
        Keyword::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Keyword {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Keyword::from_name(s).ok_or_else(|| ConnInfoError::InvalidOption(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for (i, k) in Keyword::ALL.iter().enumerate() {
            assert_eq!(Keyword::from_name(k.name()), Some(*k));
            assert_eq!(k.name().parse::<Keyword>().unwrap(), *k);
            for other in &Keyword::ALL[i + 1..] {
                assert_ne!(k.name(), other.name());
            }
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        let mut sorted = Keyword::ALL;
        sorted.sort();
        assert_eq!(sorted, Keyword::ALL);
    }

    #[test]
    fn lookup_is_case_sensitive_like_libpq() {
        assert_eq!(Keyword::from_name("Host"), None);
        assert_eq!(Keyword::from_name("host "), None);
        assert_eq!(
            "HOST".parse::<Keyword>().unwrap_err().to_string(),
            "invalid connection option \"HOST\""
        );
    }

    #[test]
    fn table_facts() {
        assert_eq!(Keyword::Host.env_var(), Some("PGHOST"));
        assert_eq!(Keyword::Port.builtin_default(), Some("5432"));
        assert_eq!(Keyword::SslMode.builtin_default(), Some("prefer"));
        assert_eq!(Keyword::Replication.env_var(), None);
        assert_eq!(Keyword::FallbackApplicationName.env_var(), None);
        assert_eq!(Keyword::SslPassword.env_var(), None);
        assert_eq!(Keyword::GssEncMode.builtin_default(), Some("disable"));
        assert_eq!(Keyword::SslNegotiation.introduced_in(), 17);
        assert!(Keyword::Password.is_secret());
        assert!(Keyword::SslPassword.is_secret());
        assert!(!Keyword::Passfile.is_secret());
    }
}
