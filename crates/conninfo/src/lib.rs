//! libpq-compatible connection settings: parsing and resolution, no sockets.
//!
//! walrelay accepts the connection settings PostgreSQL users already have: `keyword=value` strings and
//! `postgresql://` URIs, `PG*` environment variables, `~/.pgpass`, `pg_service.conf`. This crate turns them
//! into a validated [`ConnectionConfig`] exactly the way libpq (`src/interfaces/libpq/fe-connect.c`) would,
//! so a string that works with `psql` works with walrelay and means the same thing, and one libpq
//! rejects is rejected with libpq's message.
//!
//! The pieces, in the order they are used:
//!
//! 1. [`ConnInfo`] — what a connection string says (`PQconninfoParse()`): [`ConnInfo::parse`],
//!    [`ConnInfo::parse_dbname_or_conninfo`] (a bare word is a database name), [`ConnInfo::from_params`]
//!    (`PQconnectdbParams()`), [`ConnInfo::from_command_line`] (`-d`/`-h`/`-p`/`-U`).
//! 2. [`ConnectionConfig::resolve`] — adds the service file section, environment variables and
//!    built-in defaults through an injectable [`Env`], then validates everything (`pqConnectOptions2()`).
//! 3. The result: [`ConnectionConfig::targets`] to try in order, [`ConnectionConfig::password_for`] (the
//!    explicit password, else the password file's), [`ConnectionConfig::startup_params`], TLS settings,
//!    and [`ConnectionConfig::primary_conninfo`] to hand the settings on to a standby.
//!
//! Passwords are [`Password`] values that print as `********`; no error message contains one.
//!
//! ```
//! use walrelay_conninfo::{ConnectionConfig, MapEnv, Target};
//!
//! let env = MapEnv::new().with_user("postgres");
//! let config = ConnectionConfig::from_conninfo(
//!     "host=db1,db2 port=5433 user=replicator replication=true sslmode=require",
//!     &env,
//! )
//! .unwrap();
//! assert_eq!(config.targets().len(), 2);
//! assert!(matches!(&config.targets()[1], Target::Tcp { host: Some(h), port: 5433, .. } if h == "db2"));
//! assert_eq!(config.dbname(), "replicator");
//! assert_eq!(
//!     config.primary_conninfo(Default::default()),
//!     "user=replicator host='db1,db2' port=5433 sslmode=require"
//! );
//! ```
//!
//! Deliberate differences from libpq: GSSAPI is not supported (`gssencmode=require` is rejected as a
//! libpq built without GSSAPI rejects it; `krbsrvname`, `gsslib`, `gssdelegation` are accepted and ignored);
//! LDAP lookups in service files are not supported; problems libpq only finds while connecting (a bad
//! port or `hostaddr` in a multi-host list, an integer option that is not an integer, a socket path that
//! is too long, a `replication` value the server would refuse) fail resolution instead.
//!
//! References: <https://www.postgresql.org/docs/current/libpq-connect.html>,
//! <https://www.postgresql.org/docs/current/libpq-envars.html>,
//! <https://www.postgresql.org/docs/current/libpq-pgpass.html>,
//! <https://www.postgresql.org/docs/current/libpq-pgservice.html>.

mod config;
mod connstring;
mod env;
mod error;
mod keyword;
mod password;
pub mod pgpass;
pub mod service;
mod target;
mod values;

pub use config::{
    ConnectionConfig, Keepalives, PrimaryConninfoOptions, SettingSource, SslRootCert, SslSettings,
    ROOT_CERT_FILE, ROOT_CRL_FILE, USER_CERT_FILE, USER_KEY_FILE, USER_SSL_DIR,
};
pub use connstring::{quote_value, redact_text, ConnInfo};
pub use env::{Env, MapEnv, ProcessEnv};
pub use error::ConnInfoError;
pub use keyword::Keyword;
pub use password::{Password, PasswordSource, REDACTED};
pub use pgpass::PassfileLookup;
pub use target::Target;
pub use values::{
    parse_bool, AuthMethod, ChannelBinding, GssEncMode, LoadBalanceHosts, ReplicationMode,
    RequireAuth, SslCertMode, SslMode, SslNegotiation, TargetSessionAttrs, TlsVersion,
};

/// The Unix-socket directory libpq uses when no host is given. Debian's libpq is built with
/// `/var/run/postgresql` (upstream's default is `/tmp`).
pub const DEFAULT_PGSOCKET_DIR: &str = "/var/run/postgresql";

/// The host name the default socket stands for in the password file.
pub const DEFAULT_HOST: &str = "localhost";

/// The default port, `DEF_PGPORT`.
pub const DEF_PGPORT: u16 = 5432;

/// [`DEF_PGPORT`] as text, as the password file matches it.
pub const DEF_PGPORT_STR: &str = "5432";

/// `sizeof(((struct sockaddr_un *) 0)->sun_path)` on Linux: a socket path must be shorter than this.
pub const UNIXSOCK_PATH_BUFLEN: usize = 108;
