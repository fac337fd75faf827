//! What the client needs to open one connection, already resolved: where to connect, who to be, how to
//! secure it. Building this from libpq-style settings (conninfo strings, `PG*` variables, `.pgpass`, service
//! files) is the `walrelay-conninfo` crate's job; see [`crate::connect_params`].

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One place to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `host` is the name used for TLS verification and SNI; `addr` skips DNS (libpq `hostaddr`).
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        port: u16,
    },
    /// The socket file itself (`dir/.s.PGSQL.port`).
    Unix { socket: PathBuf, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, addr, port } => match addr {
                Some(a) if a.to_string() != *host => write!(f, "{host} ({a}) port {port}"),
                _ => write!(f, "{host} port {port}"),
            },
            Endpoint::Unix { socket, .. } => write!(f, "socket \"{}\"", socket.display()),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Whether a plaintext connection is acceptable.
    pub fn allows_plaintext(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
    }
}

/// libpq's `channel_binding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// Where the server's certificate chain is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=path`).
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `None` with verify-ca/verify-full is an error at connect time, as in libpq.
    pub root_certs: Option<RootCerts>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Send the host name as SNI (libpq `sslsni`, default on).
    pub sni: bool,
}

/// Physical replication (`replication=true`), logical (`replication=database`) or a normal session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplicationMode {
    #[default]
    Physical,
    Database,
    Off,
}

/// A password that never shows up in Debug output or error text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// Looks up a password for an endpoint (explicit password, `.pgpass`, a prompt).
pub type PasswordLookup = Arc<dyn Fn(&Endpoint) -> Option<Secret> + Send + Sync>;

/// Fully resolved connection parameters.
#[derive(Clone)]
pub struct ConnectParams {
    /// Tried in order until one accepts us (libpq's multi-host behaviour).
    pub endpoints: Vec<Endpoint>,
    pub user: String,
    pub dbname: Option<String>,
    pub password: Option<PasswordLookup>,
    pub application_name: Option<String>,
    /// `options` startup parameter (e.g. `-c wal_sender_timeout=0`).
    pub options: Option<String>,
    pub replication: ReplicationMode,
    pub tls: TlsParams,
    pub channel_binding: ChannelBindingMode,
    /// Per endpoint, for TCP connect + TLS + authentication.
    pub connect_timeout: Option<Duration>,
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    pub tcp_user_timeout: Option<Duration>,
    /// Methods the server may ask for (libpq `require_auth`); `None` allows all.
    pub allowed_auth: Option<Vec<AuthMethod>>,
    /// Further startup parameters (`datestyle`, `timezone`, `geqo` from `PGDATESTYLE`, …).
    pub extra_startup: Vec<(String, String)>,
    /// Which kind of server is acceptable when several hosts are given (libpq `target_session_attrs`).
    pub target_session_attrs: SessionAttrs,
    /// Settings made with `SET` once connected, each only on servers of at least its version
    /// (`server_version_num`): parameters an older server does not know, which it would refuse
    /// as startup parameters. Applied to SQL sessions ([`ReplicationMode::Off`]) only.
    pub settings_since: Vec<VersionedSetting>,
}

/// A setting for [`ConnectParams::settings_since`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionedSetting {
    /// The first `server_version_num` that knows the parameter (e.g. 170000).
    pub since: u32,
    pub name: &'static str,
    pub value: &'static str,
}

/// libpq's `target_session_attrs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("replication", &self.replication)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Authentication methods, for `require_auth` and for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    None,
    Password,
    Md5,
    ScramSha256,
}

impl ConnectParams {
    /// Parameters for a local server: one endpoint, no TLS, no password.
    pub fn new(endpoint: Endpoint, user: impl Into<String>) -> Self {
        ConnectParams {
            endpoints: vec![endpoint],
            user: user.into(),
            dbname: None,
            password: None,
            application_name: Some("walrelay".to_string()),
            options: None,
            replication: ReplicationMode::Physical,
            tls: TlsParams {
                mode: SslMode::Prefer,
                sni: true,
                ..Default::default()
            },
            channel_binding: ChannelBindingMode::Prefer,
            connect_timeout: None,
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tcp_user_timeout: None,
            allowed_auth: None,
            extra_startup: Vec::new(),
            target_session_attrs: SessionAttrs::Any,
            settings_since: Vec::new(),
        }
    }
}
