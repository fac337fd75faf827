//! Resolution: explicit settings + service file + environment + built-in defaults → a validated
//! [`ConnectionConfig`].
//!
//! This is libpq's `conninfo_add_defaults()` followed by `pqConnectOptions2()`: precedence is explicit
//! setting > service file > environment variable > built-in default; then the host/hostaddr/port lists
//! are matched up, the user name defaults to the OS user and the database name to the user name, and every
//! enumerated value is validated with libpq's message. Checks libpq only makes while connecting (port
//! numbers, `hostaddr` syntax, integer options, socket path length, the `replication` value the server
//! would reject) are made here too, so a typo fails before any network traffic rather than after.
//!
//! The resolved settings keep their [`SettingSource`], which decides what may be written into a standby's
//! `primary_conninfo` ([`ConnectionConfig::primary_conninfo`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::connstring::{push_pair, ConnInfo};
use crate::env::Env;
use crate::error::ConnInfoError;
use crate::keyword::Keyword;
use crate::password::{Password, PasswordSource, REDACTED};
use crate::pgpass::{self, PassfileLookup, PGPASSFILE};
use crate::service::{find_service, ServiceDefinition};
use crate::target::Target;
use crate::values::{
    parse_int_param, parse_keepalives, ChannelBinding, GssEncMode, LoadBalanceHosts,
    ReplicationMode, RequireAuth, SslCertMode, SslMode, SslNegotiation, TargetSessionAttrs,
    TlsVersion,
};
use crate::{DEFAULT_PGSOCKET_DIR, DEF_PGPORT, UNIXSOCK_PATH_BUFLEN};

type Result<T> = std::result::Result<T, ConnInfoError>;

/// The directory under the home directory where libpq looks for TLS files.
pub const USER_SSL_DIR: &str = ".postgresql";
/// Default client certificate, in [`USER_SSL_DIR`].
pub const USER_CERT_FILE: &str = "postgresql.crt";
/// Default client key, in [`USER_SSL_DIR`].
pub const USER_KEY_FILE: &str = "postgresql.key";
/// Default root certificates, in [`USER_SSL_DIR`].
pub const ROOT_CERT_FILE: &str = "root.crt";
/// Default certificate revocation list, in [`USER_SSL_DIR`].
pub const ROOT_CRL_FILE: &str = "root.crl";

/// libpq sends these environment variables to the server as settings (`PQEnvironmentOption`).
const ENVIRONMENT_OPTIONS: [(&str, &str); 3] = [
    ("PGDATESTYLE", "datestyle"),
    ("PGTZ", "timezone"),
    ("PGGEQO", "geqo"),
];

/// Where a resolved setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SettingSource {
    /// The connection string, URI or a caller's override.
    ConnectionString,
    /// The service file section named by `service` or `PGSERVICE`.
    ServiceFile,
    /// A `PG*` environment variable.
    Environment,
    /// libpq's built-in default, or derived (the OS user name; `dbname` from the user name).
    Default,
}

#[derive(Clone, PartialEq, Eq)]
struct Setting {
    value: String,
    source: SettingSource,
}

/// TLS settings, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    pub negotiation: SslNegotiation,
    /// Client certificate: `sslcert`, else `~/.postgresql/postgresql.crt` if that file exists. libpq
    /// silently goes without a certificate if the file is missing at connect time.
    pub cert: Option<PathBuf>,
    /// Client key: `sslkey`, else `~/.postgresql/postgresql.key` (used only with a certificate).
    pub key: Option<PathBuf>,
    /// Passphrase of the client key (`sslpassword`).
    pub key_password: Option<Password>,
    /// Root certificates to verify the server against: `sslrootcert=system`, or `sslrootcert`'s file,
    /// or `~/.postgresql/root.crt`, in each case only if present. With `require`, a present root file
    /// still makes libpq verify the chain.
    pub root_cert: Option<SslRootCert>,
    /// The root certificate file libpq would look for (for the "root certificate file … does not exist"
    /// error of verify-ca/verify-full when [`SslSettings::root_cert`] is `None`).
    pub root_cert_path: Option<PathBuf>,
    /// `sslcrl`, else `~/.postgresql/root.crl` if that file exists.
    pub crl: Option<PathBuf>,
    /// `sslcrldir`.
    pub crl_dir: Option<PathBuf>,
    /// Send SNI (`sslsni`, on unless it is something other than "1…").
    pub sni: bool,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    pub cert_mode: SslCertMode,
}

/// Where the server certificate chain is verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SslRootCert {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, libpq 16).
    System,
}

/// TCP keepalive settings (for TCP targets only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    /// `keepalives`, on by default.
    pub enabled: bool,
    /// `keepalives_idle` (negative values become 0, as in libpq).
    pub idle: Option<Duration>,
    /// `keepalives_interval`.
    pub interval: Option<Duration>,
    /// `keepalives_count`.
    pub count: Option<u32>,
}

/// What to write into `primary_conninfo`; see [`ConnectionConfig::primary_conninfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryConninfoOptions {
    /// Write `dbname` if the user gave one (PostgreSQL 17+ needs it for replication slot
    /// synchronization). pg_basebackup before 17 never writes it.
    pub include_dbname: bool,
    /// Write a password the user passed (connection string, `PGPASSWORD`, service file). A password
    /// found in a password file is never written.
    pub include_password: bool,
}

impl Default for PrimaryConninfoOptions {
    fn default() -> Self {
        PrimaryConninfoOptions {
            include_dbname: false,
            include_password: true,
        }
    }
}

/// A host/port entry as libpq keeps it, for the password file lookup (which matches the strings as
/// written, not the parsed values).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PassKey {
    host: String,
    port: String,
}

/// Fully resolved, validated connection settings.
#[derive(Clone)]
pub struct ConnectionConfig {
    settings: BTreeMap<Keyword, Setting>,
    targets: Vec<Target>,
    pass_keys: Vec<PassKey>,
    user: String,
    dbname: String,
    password: Option<Password>,
    passfile: Option<PathBuf>,
    service: Option<ServiceDefinition>,
    application_name: Option<String>,
    options: Option<String>,
    client_encoding: Option<String>,
    replication: ReplicationMode,
    connect_timeout: Option<Duration>,
    keepalives: Keepalives,
    tcp_user_timeout: Option<Duration>,
    ssl: SslSettings,
    channel_binding: ChannelBinding,
    require_auth: Option<RequireAuth>,
    requirepeer: Option<String>,
    target_session_attrs: TargetSessionAttrs,
    load_balance_hosts: LoadBalanceHosts,
    startup_params: Vec<(&'static str, String)>,
}

impl ConnectionConfig {
    /// Parses `conninfo` (a `keyword=value` string, a URI, or — as with `psql -d` — a bare database
    /// name) and resolves it against `env`.
    pub fn from_conninfo(conninfo: &str, env: &dyn Env) -> Result<ConnectionConfig> {
        ConnectionConfig::resolve(&ConnInfo::parse_dbname_or_conninfo(conninfo)?, env)
    }

    /// Resolves explicit settings against a service file, the environment and libpq's defaults.
    pub fn resolve(explicit: &ConnInfo, env: &dyn Env) -> Result<ConnectionConfig> {
        let mut settings: BTreeMap<Keyword, Setting> = explicit
            .iter()
            .map(|(k, v)| {
                let setting = Setting {
                    value: v.to_string(),
                    source: SettingSource::ConnectionString,
                };
                (k, setting)
            })
            .collect();

        // The service section fills in what the connection string left out. PGSERVICE is consulted
        // here, before the other environment variables, so that the service beats them.
        let service_name = match settings.get(&Keyword::Service) {
            Some(s) => Some(s.value.clone()),
            None => env.var("PGSERVICE"),
        };
        let service = match service_name {
            Some(name) => {
                let definition = find_service(&name, env)?;
                for (keyword, value) in &definition.settings {
                    settings.entry(*keyword).or_insert_with(|| Setting {
                        value: value.clone(),
                        source: SettingSource::ServiceFile,
                    });
                }
                Some(definition)
            }
            None => None,
        };

        // Environment variables, then built-in defaults.
        let mut sslmode_is_builtin = false;
        for keyword in Keyword::ALL {
            if settings.contains_key(&keyword) {
                continue;
            }
            if let Some(value) = keyword.env_var().and_then(|var| env.var(var)) {
                settings.insert(keyword, setting(value, SettingSource::Environment));
                continue;
            }
            if keyword == Keyword::SslMode {
                // The deprecated PGREQUIRESSL: a value starting with "1" means require.
                if env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) {
                    settings.insert(keyword, setting("require", SettingSource::Environment));
                    continue;
                }
                sslmode_is_builtin = true;
            }
            if let Some(default) = keyword.builtin_default() {
                settings.insert(keyword, setting(default, SettingSource::Default));
                continue;
            }
            if keyword == Keyword::User {
                if let Some(name) = env.os_user_name() {
                    settings.insert(keyword, setting(name, SettingSource::Default));
                }
            }
        }
        // sslrootcert=system strengthens the *default* sslmode to verify-full.
        if sslmode_is_builtin
            && settings
                .get(&Keyword::SslRootCert)
                .is_some_and(|s| s.value == "system")
        {
            settings.insert(
                Keyword::SslMode,
                setting("verify-full", SettingSource::Default),
            );
        }

        Resolver {
            settings,
            env,
            service,
        }
        .finish()
    }

    /// The hosts to try, in order. With `load_balance_hosts=random` the caller shuffles them.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The password given in the settings (connection string, service file or `PGPASSWORD`), if any.
    /// [`ConnectionConfig::password_for`] also consults the password file.
    pub fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    /// The password for `target`: the explicit one, else the password file's. A warning about an
    /// ignored password file is logged with `tracing`; use [`ConnectionConfig::lookup_password`] to get
    /// it as text instead.
    pub fn password_for(&self, target: &Target) -> Option<Password> {
        let lookup = self.lookup_password(target);
        if let Some(warning) = &lookup.warning {
            tracing::warn!("{warning}");
        }
        lookup.password
    }

    /// Like [`ConnectionConfig::password_for`], returning the password file warning instead of logging
    /// it.
    pub fn lookup_password(&self, target: &Target) -> PassfileLookup {
        if let Some(password) = &self.password {
            return PassfileLookup {
                password: Some(password.clone()),
                warning: None,
            };
        }
        let Some(passfile) = &self.passfile else {
            return PassfileLookup::default();
        };
        let key = self
            .targets
            .iter()
            .position(|t| t == target)
            .and_then(|i| self.pass_keys.get(i).cloned())
            .unwrap_or_else(|| pass_key_for(target));
        pgpass::lookup(passfile, &key.host, &key.port, &self.dbname, &self.user)
    }

    /// The password file consulted when no password was given (`passfile`, `PGPASSFILE`, `~/.pgpass`).
    pub fn passfile(&self) -> Option<&std::path::Path> {
        self.passfile.as_deref()
    }

    /// The service section that was applied, if any.
    pub fn service(&self) -> Option<&ServiceDefinition> {
        self.service.as_ref()
    }

    /// The application name sent to the server: `application_name` if set (even to empty, which sends
    /// none), else `fallback_application_name`.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// `options`, the command-line options sent to the server (`-c name=value …`), if not empty.
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// `client_encoding` as sent (with `auto` resolved from the locale).
    pub fn client_encoding(&self) -> Option<&str> {
        self.client_encoding.as_deref()
    }

    pub fn replication(&self) -> ReplicationMode {
        self.replication
    }

    /// `connect_timeout` per target: `None` waits forever; values below 2 seconds become 2, as in libpq.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    pub fn keepalives(&self) -> Keepalives {
        self.keepalives
    }

    /// `tcp_user_timeout` (milliseconds in the connection string).
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp_user_timeout
    }

    pub fn ssl(&self) -> &SslSettings {
        &self.ssl
    }

    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// `require_auth`; `None` allows every method.
    pub fn require_auth(&self) -> Option<&RequireAuth> {
        self.require_auth.as_ref()
    }

    /// `requirepeer`: the OS user the server process must run as (Unix sockets only).
    pub fn requirepeer(&self) -> Option<&str> {
        self.requirepeer.as_deref()
    }

    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    pub fn load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts
    }

    /// The startup packet parameters, in libpq's order: `user`, `database`, `replication`, `options`,
    /// `application_name`, `client_encoding`, then `datestyle`/`timezone`/`geqo` from `PGDATESTYLE`,
    /// `PGTZ`, `PGGEQO`.
    pub fn startup_params(&self) -> &[(&'static str, String)] {
        &self.startup_params
    }

    /// A resolved setting and where it came from. Secret values included: don't log them.
    pub fn setting(&self, keyword: Keyword) -> Option<(&str, SettingSource)> {
        self.settings
            .get(&keyword)
            .map(|s| (s.value.as_str(), s.source))
    }

    /// Writes the resolved settings as a `keyword=value` connection string, in libpq's keyword order,
    /// keeping those for which `keep` returns true. Empty values are never written. Contains secrets if
    /// `keep` keeps them.
    pub fn to_conninfo(&self, keep: impl Fn(Keyword, SettingSource) -> bool) -> String {
        let mut out = String::new();
        for (keyword, s) in &self.settings {
            if !s.value.is_empty() && keep(*keyword, s.source) {
                push_pair(&mut out, *keyword, &s.value);
            }
        }
        out
    }

    /// The connection string for a standby's `primary_conninfo`, like pg_basebackup's `-R`: everything
    /// that was set explicitly, by a service file or by the environment (the standby's server does not
    /// see walrelay's environment), plus the resolved user name (the walreceiver runs as a different OS
    /// user). Left out: `replication` and `fallback_application_name` (the walreceiver sets its own),
    /// `service` (its settings are written inline instead), other built-in defaults (so the string also
    /// works with an older libpq), `dbname` unless asked for, and any password that was not passed by
    /// the user.
    ///
    /// The result is a connection string; writing it into `postgresql.auto.conf` needs GUC quoting on
    /// top (`'` doubled), which is the writer's job.
    pub fn primary_conninfo(&self, options: PrimaryConninfoOptions) -> String {
        let password_passed = self
            .password
            .as_ref()
            .is_some_and(|p| p.source().was_passed_by_user());
        self.to_conninfo(|keyword, source| match keyword {
            Keyword::Replication | Keyword::FallbackApplicationName | Keyword::Service => false,
            Keyword::Dbname => options.include_dbname && source != SettingSource::Default,
            Keyword::Password => options.include_password && password_passed,
            Keyword::User => true,
            _ => source != SettingSource::Default,
        })
    }

    /// The connection string for logs: settings that did not come from built-in defaults, plus the
    /// resolved user and database, with secrets shown as `********`.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        for (keyword, s) in &self.settings {
            let shown = match keyword {
                Keyword::User | Keyword::Dbname => true,
                _ => s.source != SettingSource::Default && !s.value.is_empty(),
            };
            if !shown {
                continue;
            }
            if keyword.is_secret() {
                push_pair(&mut out, *keyword, REDACTED);
            } else {
                push_pair(&mut out, *keyword, &s.value);
            }
        }
        out
    }
}

impl fmt::Display for ConnectionConfig {
    /// Same as [`ConnectionConfig::redacted`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("conninfo", &self.redacted())
            .field("targets", &self.targets)
            .field("password", &self.password)
            .field("passfile", &self.passfile)
            .field("ssl", &self.ssl)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

fn setting(value: impl Into<String>, source: SettingSource) -> Setting {
    Setting {
        value: value.into(),
        source,
    }
}

/// The password file key for a target that did not come from this configuration.
fn pass_key_for(target: &Target) -> PassKey {
    match target {
        Target::Tcp { host, addr, port } => PassKey {
            host: host
                .clone()
                .or_else(|| addr.map(|a| a.to_string()))
                .unwrap_or_default(),
            port: port.to_string(),
        },
        Target::Unix { socket, port } => PassKey {
            host: socket
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
            port: port.to_string(),
        },
    }
}

/// libpq splits host/hostaddr/port lists on every comma, keeping empty entries.
fn split_list(value: &str) -> Vec<&str> {
    value.split(',').collect()
}

/// The second half of resolution (`pqConnectOptions2()`), over settings with all defaults applied.
struct Resolver<'a> {
    settings: BTreeMap<Keyword, Setting>,
    env: &'a dyn Env,
    service: Option<ServiceDefinition>,
}

impl Resolver<'_> {
    fn get(&self, keyword: Keyword) -> Option<&Setting> {
        self.settings.get(&keyword)
    }

    fn value(&self, keyword: Keyword) -> Option<&str> {
        self.get(keyword).map(|s| s.value.as_str())
    }

    fn non_empty(&self, keyword: Keyword) -> Option<&str> {
        self.value(keyword).filter(|v| !v.is_empty())
    }

    /// Adds where a rejected value came from (an environment variable, a service) to the error.
    fn blame(&self, keyword: Keyword, error: ConnInfoError) -> ConnInfoError {
        match self.get(keyword).map(|s| s.source) {
            Some(SettingSource::Environment) => {
                // sslmode=require may also have come from the deprecated PGREQUIRESSL.
                let var = match keyword.env_var() {
                    Some(var) if self.env.var(var).is_some() => var,
                    _ if keyword == Keyword::SslMode => "PGREQUIRESSL",
                    Some(var) => var,
                    None => return error,
                };
                ConnInfoError::FromEnvironment {
                    var,
                    inner: Box::new(error),
                }
            }
            Some(SettingSource::ServiceFile) => ConnInfoError::FromService {
                service: self
                    .service
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                inner: Box::new(error),
            },
            _ => error,
        }
    }

    /// Parses `keyword` with `parse` if it is set, blaming its source on failure.
    fn parse<T>(
        &self,
        keyword: Keyword,
        parse: impl FnOnce(&str) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.value(keyword) {
            Some(v) => parse(v).map(Some).map_err(|e| self.blame(keyword, e)),
            None => Ok(None),
        }
    }

    fn parse_enum<T: std::str::FromStr<Err = ConnInfoError>>(
        &self,
        keyword: Keyword,
    ) -> Result<Option<T>> {
        self.parse(keyword, str::parse::<T>)
    }

    fn finish(mut self) -> Result<ConnectionConfig> {
        let (targets, pass_keys) = self.hosts()?;

        // User: the setting if not empty, else the OS user (as pqConnectOptions2 does for user='').
        let user = match self.non_empty(Keyword::User) {
            Some(u) => u.to_string(),
            None => {
                let name = self.env.os_user_name().ok_or(ConnInfoError::NoLocalUser)?;
                self.settings
                    .insert(Keyword::User, setting(&name, SettingSource::Default));
                name
            }
        };
        let dbname = match self.non_empty(Keyword::Dbname) {
            Some(d) => d.to_string(),
            None => {
                self.settings
                    .insert(Keyword::Dbname, setting(&user, SettingSource::Default));
                user.clone()
            }
        };

        let password = self.secret(Keyword::Password);
        let passfile = match self.non_empty(Keyword::Passfile) {
            Some(p) => Some(PathBuf::from(p)),
            None => self.env.home_dir().map(|home| home.join(PGPASSFILE)),
        };

        let require_auth = match self.non_empty(Keyword::RequireAuth) {
            Some(v) => {
                Some(RequireAuth::parse(v).map_err(|e| self.blame(Keyword::RequireAuth, e))?)
            }
            None => None,
        };
        let channel_binding = self
            .parse_enum::<ChannelBinding>(Keyword::ChannelBinding)?
            .unwrap_or(ChannelBinding::Prefer);
        let ssl = self.ssl()?;
        if self.parse_enum::<GssEncMode>(Keyword::GssEncMode)? == Some(GssEncMode::Require) {
            return Err(self.blame(
                Keyword::GssEncMode,
                ConnInfoError::GssEncryptionUnsupported("require".to_string()),
            ));
        }
        let target_session_attrs = self
            .parse_enum::<TargetSessionAttrs>(Keyword::TargetSessionAttrs)?
            .unwrap_or(TargetSessionAttrs::Any);
        let load_balance_hosts = self
            .parse_enum::<LoadBalanceHosts>(Keyword::LoadBalanceHosts)?
            .unwrap_or(LoadBalanceHosts::Disable);

        // Checked by libpq only while connecting; checked here up front.
        let connect_timeout = self
            .parse(Keyword::ConnectTimeout, |v| {
                parse_int_param("connect_timeout", v)
            })?
            .filter(|&t| t > 0)
            // Rounding could make a 1-second timeout fire almost at once; libpq insists on 2.
            .map(|t| Duration::from_secs(t.max(2).unsigned_abs().into()));
        let keepalives = Keepalives {
            enabled: self
                .parse(Keyword::Keepalives, parse_keepalives)?
                .unwrap_or(true),
            idle: self.seconds(Keyword::KeepalivesIdle, "keepalives_idle")?,
            interval: self.seconds(Keyword::KeepalivesInterval, "keepalives_interval")?,
            count: self
                .parse(Keyword::KeepalivesCount, |v| {
                    parse_int_param("keepalives_count", v)
                })?
                .map(|n| n.max(0).unsigned_abs()),
        };
        let tcp_user_timeout = self
            .parse(Keyword::TcpUserTimeout, |v| {
                parse_int_param("tcp_user_timeout", v)
            })?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs().into()));
        let replication = self
            .parse(Keyword::Replication, ReplicationMode::parse)?
            .unwrap_or_default();

        let application_name = match self.value(Keyword::ApplicationName) {
            Some(name) => Some(name),
            None => self.value(Keyword::FallbackApplicationName),
        }
        .filter(|n| !n.is_empty())
        .map(str::to_string);
        let options = self.non_empty(Keyword::Options).map(str::to_string);
        let client_encoding = match self.non_empty(Keyword::ClientEncoding) {
            Some("auto") => encoding_from_locale(self.env).map(str::to_string),
            Some(e) => Some(e.to_string()),
            None => None,
        };

        let mut startup_params: Vec<(&'static str, String)> =
            vec![("user", user.clone()), ("database", dbname.clone())];
        if let Some(r) = self.non_empty(Keyword::Replication) {
            startup_params.push(("replication", r.to_string()));
        }
        if let Some(o) = &options {
            startup_params.push(("options", o.clone()));
        }
        if let Some(a) = &application_name {
            startup_params.push(("application_name", a.clone()));
        }
        if let Some(e) = &client_encoding {
            startup_params.push(("client_encoding", e.clone()));
        }
        for (var, guc) in ENVIRONMENT_OPTIONS {
            if let Some(v) = self.env.var(var) {
                if !v.eq_ignore_ascii_case("default") {
                    startup_params.push((guc, v));
                }
            }
        }

        Ok(ConnectionConfig {
            requirepeer: self.non_empty(Keyword::RequirePeer).map(str::to_string),
            settings: self.settings,
            targets,
            pass_keys,
            user,
            dbname,
            password,
            passfile,
            service: self.service,
            application_name,
            options,
            client_encoding,
            replication,
            connect_timeout,
            keepalives,
            tcp_user_timeout,
            ssl,
            channel_binding,
            require_auth,
            target_session_attrs,
            load_balance_hosts,
            startup_params,
        })
    }

    /// A non-empty `password` / `sslpassword`, remembering where it came from.
    fn secret(&self, keyword: Keyword) -> Option<Password> {
        let s = self.get(keyword).filter(|s| !s.value.is_empty())?;
        let source = match s.source {
            SettingSource::ServiceFile => PasswordSource::ServiceFile,
            SettingSource::Environment => PasswordSource::Environment,
            // Neither keyword has a built-in default.
            SettingSource::ConnectionString | SettingSource::Default => {
                PasswordSource::ConnectionString
            }
        };
        Some(Password::new(s.value.clone(), source))
    }

    fn seconds(&self, keyword: Keyword, name: &'static str) -> Result<Option<Duration>> {
        Ok(self
            .parse(keyword, |v| parse_int_param(name, v))?
            .map(|s| Duration::from_secs(s.max(0).unsigned_abs().into())))
    }

    /// Matches up the host, hostaddr and port lists into targets.
    fn hosts(&self) -> Result<(Vec<Target>, Vec<PassKey>)> {
        let hostaddrs = self.non_empty(Keyword::Hostaddr).map(split_list);
        let hosts = self.non_empty(Keyword::Host).map(split_list);
        let count = match (&hostaddrs, &hosts) {
            (Some(a), _) => a.len(),
            (None, Some(h)) => h.len(),
            (None, None) => 1,
        };
        if let Some(h) = &hosts {
            if h.len() != count {
                return Err(self.blame(
                    Keyword::Host,
                    ConnInfoError::HostCountMismatch {
                        hosts: h.len(),
                        hostaddrs: count,
                    },
                ));
            }
        }
        let ports = match self.non_empty(Keyword::Port).map(split_list) {
            None => vec![""; count],
            Some(p) if p.len() == 1 => vec![p[0]; count],
            Some(p) if p.len() == count => p,
            Some(p) => {
                return Err(self.blame(
                    Keyword::Port,
                    ConnInfoError::PortCountMismatch {
                        ports: p.len(),
                        hosts: count,
                    },
                ))
            }
        };

        let mut targets = Vec::with_capacity(count);
        let mut keys = Vec::with_capacity(count);
        for i in 0..count {
            let host = hosts.as_ref().map_or("", |h| h[i]);
            let hostaddr = hostaddrs.as_ref().map_or("", |a| a[i]);
            let port_text = ports[i];
            let port = self.port(port_text)?;

            let target = if !hostaddr.is_empty() {
                let addr: IpAddr = hostaddr.parse().map_err(|_| {
                    self.blame(
                        Keyword::Hostaddr,
                        ConnInfoError::InvalidHostaddr(hostaddr.to_string()),
                    )
                })?;
                Target::Tcp {
                    host: (!host.is_empty()).then(|| host.to_string()),
                    addr: Some(addr),
                    port,
                }
            } else if !host.is_empty() && !is_unix_socket_path(host) {
                Target::Tcp {
                    host: Some(host.to_string()),
                    addr: None,
                    port,
                }
            } else {
                let dir = if host.is_empty() {
                    DEFAULT_PGSOCKET_DIR
                } else {
                    host
                };
                let path = format!("{dir}/.s.PGSQL.{port}");
                if path.len() >= UNIXSOCK_PATH_BUFLEN {
                    return Err(self.blame(
                        Keyword::Host,
                        ConnInfoError::SocketPathTooLong {
                            path,
                            max: UNIXSOCK_PATH_BUFLEN - 1,
                        },
                    ));
                }
                Target::Unix {
                    socket: PathBuf::from(path),
                    port,
                }
            };
            // .pgpass matches the host as written, or hostaddr when there is no host; the default
            // socket directory stands for the empty host (both become "localhost" there).
            let pass_host = if !host.is_empty() {
                host
            } else if !hostaddr.is_empty() {
                hostaddr
            } else {
                DEFAULT_PGSOCKET_DIR
            };
            targets.push(target);
            keys.push(PassKey {
                host: pass_host.to_string(),
                port: port_text.to_string(),
            });
        }
        Ok((targets, keys))
    }

    fn port(&self, text: &str) -> Result<u16> {
        if text.is_empty() {
            return Ok(DEF_PGPORT);
        }
        let n = parse_int_param("port", text).map_err(|e| self.blame(Keyword::Port, e))?;
        u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| self.blame(Keyword::Port, ConnInfoError::InvalidPort(text.to_string())))
    }

    fn ssl(&self) -> Result<SslSettings> {
        let mode = self
            .parse_enum::<SslMode>(Keyword::SslMode)?
            .unwrap_or(SslMode::Prefer);
        let negotiation = self
            .parse_enum::<SslNegotiation>(Keyword::SslNegotiation)?
            .unwrap_or(SslNegotiation::Postgres);
        if negotiation == SslNegotiation::Direct && mode.allows_plaintext() {
            return Err(self.blame(
                Keyword::SslNegotiation,
                ConnInfoError::WeakSslModeForDirect(mode.as_str().to_string()),
            ));
        }
        let system_roots = self.value(Keyword::SslRootCert) == Some("system");
        if system_roots && mode != SslMode::VerifyFull {
            return Err(self.blame(
                Keyword::SslMode,
                ConnInfoError::WeakSslModeForSystemRoots(mode.as_str().to_string()),
            ));
        }
        let min_protocol_version = self
            .parse(Keyword::SslMinProtocolVersion, |v| {
                TlsVersion::parse_bound("ssl_min_protocol_version", v)
            })?
            .flatten();
        let max_protocol_version = self
            .parse(Keyword::SslMaxProtocolVersion, |v| {
                TlsVersion::parse_bound("ssl_max_protocol_version", v)
            })?
            .flatten();
        if let (Some(min), Some(max)) = (min_protocol_version, max_protocol_version) {
            // libpq: any maximum is fine with a TLSv1 minimum; otherwise TLSv1 as maximum, or a maximum
            // below the minimum, is wrong.
            if min != TlsVersion::Tls1_0 && (max == TlsVersion::Tls1_0 || min > max) {
                return Err(ConnInfoError::InvalidSslProtocolRange);
            }
        }
        let cert_mode = self
            .parse_enum::<SslCertMode>(Keyword::SslCertMode)?
            .unwrap_or(SslCertMode::Allow);

        let ssl_dir = self.env.home_dir().map(|home| home.join(USER_SSL_DIR));
        let default_file = |name: &str| ssl_dir.as_ref().map(|dir| dir.join(name));
        let existing = |path: Option<PathBuf>| path.filter(|p| p.exists());
        let explicit = |keyword: Keyword| self.non_empty(keyword).map(PathBuf::from);

        let root_cert_path = if system_roots {
            None
        } else {
            explicit(Keyword::SslRootCert).or_else(|| default_file(ROOT_CERT_FILE))
        };
        let root_cert = if system_roots {
            Some(SslRootCert::System)
        } else {
            existing(root_cert_path.clone()).map(SslRootCert::File)
        };

        Ok(SslSettings {
            mode,
            negotiation,
            cert: explicit(Keyword::SslCert).or_else(|| existing(default_file(USER_CERT_FILE))),
            key: explicit(Keyword::SslKey).or_else(|| default_file(USER_KEY_FILE)),
            key_password: self.secret(Keyword::SslPassword),
            root_cert,
            root_cert_path,
            crl: explicit(Keyword::SslCrl).or_else(|| existing(default_file(ROOT_CRL_FILE))),
            crl_dir: explicit(Keyword::SslCrlDir),
            sni: self
                .value(Keyword::SslSni)
                .is_some_and(|v| v.starts_with('1')),
            min_protocol_version,
            max_protocol_version,
            cert_mode,
        })
    }
}

/// libpq's `is_unixsock_path()`: an absolute path, or `@` for the abstract namespace.
fn is_unix_socket_path(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// `client_encoding=auto`: the encoding of the locale's character set, like libpq's
/// `pg_get_encoding_from_locale()` for the common cases. UTF-8 locales map to `UTF8`, the C/POSIX locale
/// to `SQL_ASCII`; for anything else nothing is sent and the server's default applies.
fn encoding_from_locale(env: &dyn Env) -> Option<&'static str> {
    let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
        .into_iter()
        .find_map(|var| env.var(var).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "C".to_string());
    if locale == "C" || locale == "POSIX" {
        return Some("SQL_ASCII");
    }
    let codeset = locale.split_once('.').map(|(_, c)| c)?;
    let codeset = codeset.split('@').next().unwrap_or(codeset);
    let normalized: String = codeset
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    match normalized.as_str() {
        "utf8" => Some("UTF8"),
        "iso88591" => Some("LATIN1"),
        "iso885915" => Some("LATIN9"),
        _ => None,
    }
}
