//! Throwaway PostgreSQL clusters: [`ClusterBuilder`] → [`Cluster`], and [`StandbyBuilder`] to start a
//! second cluster on a directory made by a backup tool.
//!
//! # Layout and lifetime
//!
//! Each cluster lives in its own directory `/tmp/wr-<name>-XXXXXX` (mode 0755, owned by the server
//! user): `data/` (PGDATA), `sock/` (`unix_socket_directories`), `postgres.log` (pg_ctl's `-l`), `tls/`,
//! `tblspc/` (for [`Cluster::create_tablespace`]) and `scratch/` (for [`Cluster::scratch_path`]).
//! Dropping the [`Cluster`] stops the server (immediate mode) and removes the directory, also when the
//! test panics (then the tail of the server log is printed first); a watchdog process does the same if
//! the test process dies without unwinding (see `watchdog.rs`).
//!
//! # Settings
//!
//! Our settings go to `data/walrelay_testkit.conf`, included at the end of `postgresql.conf`, and are
//! rewritten as a whole when the port or socket directory changes; a base backup copies the include, and
//! a standby rewrites it with its own values. Defaults: `listen_addresses = '127.0.0.1'` on a free port,
//! `wal_level = replica`, 10 WAL senders and slots, `max_connections = 50`, `shared_buffers = 32MB`,
//! `hot_standby = on`, and `fsync = on`: crash-safety is what walrelay is about, so the server's own
//! durability stays real unless a test opts out with [`ClusterBuilder::fsync`]`(false)`. `initdb` runs
//! with `--no-sync` (the fresh files are not what tests examine).
//!
//! # Authentication
//!
//! pg_hba.conf gets `local` lines (Unix socket) and `host`/`hostssl` lines for 127.0.0.1, for `all`
//! databases and for `replication` (which `all` does not match) unless
//! [`ClusterBuilder::no_replication_hba`]. Passwords and extra roles are set in single-user mode before
//! the first start, so the server never runs with a more permissive pg_hba.conf than the test asked
//! for. The testkit's own SQL helpers connect as the superuser over the Unix socket, with the superuser
//! password when the local method needs one.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use walrelay_protocol::Lsn;

use crate::config::{
    has_include, include_line, quote_ident, quote_literal, render_conninfo, AuthMethod, HbaSpec,
    Role, ServerSettings, Tls, TESTKIT_CONF,
};
use crate::error::{Result, TestkitError};
use crate::install::PgInstall;
use crate::pgbench::{PgBench, PgBenchRun, PgBenchSummary};
use crate::process::{self, run, run_ok, ServerUser};
use crate::tls::{path_str, ClientCert, TestCa, TlsPaths};
use crate::watchdog::Watchdog;

/// How many times the first start may pick another port after losing a race for the one it chose.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the server log shown in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// `pg_ctl stop` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, shut down cleanly (a checkpoint).
    Fast,
    /// Quit at once, like a crash; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Options of a new cluster. Every option has a test-friendly default; see the module docs.
///
/// ```no_run
/// use walrelay_testkit::{AuthMethod, Cluster, Role, Tls};
///
/// let pg = Cluster::builder()
///     .name("primary")
///     .tcp_auth(AuthMethod::ScramSha256)
///     .superuser_password("secret")
///     .role(Role::new("replicator").password("rep").replication())
///     .tls(Tls::On)
///     .wal_segsize_mb(1)
///     .start();
/// assert_eq!(pg.psql("SELECT 1"), "1");
/// ```
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    name: String,
    major: Option<u32>,
    install: Option<PgInstall>,
    superuser: String,
    superuser_password: Option<String>,
    roles: Vec<Role>,
    hba: HbaSpec,
    wal_segsize_mb: Option<u32>,
    wal_level: String,
    max_wal_senders: u32,
    max_replication_slots: u32,
    conf: Vec<String>,
    data_checksums: Option<bool>,
    initdb_sync: bool,
    group_access: bool,
    fsync: bool,
    port: u16,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            name: "pg".to_string(),
            major: None,
            install: None,
            superuser: "postgres".to_string(),
            superuser_password: None,
            roles: Vec::new(),
            hba: HbaSpec {
                local: AuthMethod::Trust,
                tcp: AuthMethod::Trust,
                tls: Tls::Off,
                replication: true,
                prepend: Vec::new(),
                custom: None,
            },
            wal_segsize_mb: None,
            wal_level: "replica".to_string(),
            max_wal_senders: 10,
            max_replication_slots: 10,
            conf: Vec::new(),
            data_checksums: None,
            initdb_sync: false,
            group_access: false,
            fsync: true,
            port: 0,
        }
    }
}

impl ClusterBuilder {
    /// A name for messages and the directory name (default `pg`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The major version (default: `WALRELAY_PG_MAJOR`, else 15).
    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }

    /// Use these binaries (overrides [`ClusterBuilder::major`]).
    pub fn install(mut self, install: PgInstall) -> Self {
        self.install = Some(install);
        self
    }

    /// The bootstrap superuser's name (default `postgres`).
    pub fn superuser(mut self, name: &str) -> Self {
        self.superuser = name.to_string();
        self
    }

    /// The superuser's password (default none). Required when a password method is chosen.
    pub fn superuser_password(mut self, password: &str) -> Self {
        self.superuser_password = Some(password.to_string());
        self
    }

    /// The same method for TCP and the Unix socket (Cert applies to TCP only; the socket then trusts).
    pub fn auth(mut self, method: AuthMethod) -> Self {
        self.hba.tcp = method;
        self.hba.local = if method == AuthMethod::Cert {
            AuthMethod::Trust
        } else {
            method
        };
        self
    }

    /// The method for TCP connections to 127.0.0.1 (default trust).
    pub fn tcp_auth(mut self, method: AuthMethod) -> Self {
        self.hba.tcp = method;
        self
    }

    /// The method for Unix-socket connections (default trust; `cert` is not possible there).
    pub fn local_auth(mut self, method: AuthMethod) -> Self {
        self.hba.local = method;
        self
    }

    /// An extra role created at setup.
    pub fn role(mut self, role: Role) -> Self {
        self.roles.push(role);
        self
    }

    /// Generate no pg_hba.conf lines for the `replication` pseudo-database: replication connections
    /// are then refused ("no pg_hba.conf entry for replication connection").
    pub fn no_replication_hba(mut self) -> Self {
        self.hba.replication = false;
        self
    }

    /// Replace the generated pg_hba.conf lines with these.
    pub fn hba_lines<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hba.custom = Some(lines.into_iter().map(Into::into).collect());
        self
    }

    /// A pg_hba.conf line placed before the generated ones (the first matching line wins).
    pub fn hba_prepend(mut self, line: &str) -> Self {
        self.hba.prepend.push(line.to_string());
        self
    }

    /// TLS on the TCP listener (default off). When on, a test CA and a server certificate for
    /// `localhost`/127.0.0.1 are generated; see [`Cluster::ca_cert_path`] and [`Cluster::client_cert`].
    pub fn tls(mut self, tls: Tls) -> Self {
        self.hba.tls = tls;
        self
    }

    /// `initdb --wal-segsize` in MB (a power of two, 1-1024). Ignored on PG 10, where it is fixed at
    /// build time (16 MB).
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }

    /// `wal_level` (default `replica`).
    pub fn wal_level(mut self, level: &str) -> Self {
        self.wal_level = level.to_string();
        self
    }

    pub fn max_wal_senders(mut self, n: u32) -> Self {
        self.max_wal_senders = n;
        self
    }

    pub fn max_replication_slots(mut self, n: u32) -> Self {
        self.max_replication_slots = n;
        self
    }

    /// A postgresql.conf line, e.g. `"wal_keep_size = '64MB'"`; applied after (so overriding) ours.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// Data checksums on or off (default: initdb's default, which is off before 18 and on from 18).
    pub fn data_checksums(mut self, on: bool) -> Self {
        self.data_checksums = Some(on);
        self
    }

    /// Let initdb fsync its files (default: `--no-sync`).
    pub fn initdb_sync(mut self, sync: bool) -> Self {
        self.initdb_sync = sync;
        self
    }

    /// `initdb --allow-group-access` (PostgreSQL 11+): the data directory 0750, its files 0640.
    pub fn group_access(mut self, on: bool) -> Self {
        self.group_access = on;
        self
    }

    /// The server's `fsync` (default on). `false` is fine for a primary whose crash-safety the test
    /// does not examine, and makes pgbench faster.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// The TCP port to try first (default: a free one). If it is taken when the server starts, another
    /// free port is used, as for the default; [`Cluster::port`] tells which.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Creates and starts the cluster; panics with the server log's tail on failure.
    pub fn start(self) -> Cluster {
        let name = self.name.clone();
        self.try_start()
            .unwrap_or_else(|e| panic!("could not start cluster {name}: {e}"))
    }

    /// Creates and starts the cluster.
    pub fn try_start(self) -> Result<Cluster> {
        self.validate()?;
        let install = match self.install.clone() {
            Some(i) => i,
            None => match self.major {
                Some(m) => PgInstall::for_major(m)?,
                None => PgInstall::from_env()?,
            },
        };
        let user = ServerUser::detect()?;
        let root = make_root(&self.name, &user)?;
        let socket_dir = root.join("sock");
        let data_dir = root.join("data");
        let settings = ServerSettings {
            port: self.port,
            socket_dir: path_str(&socket_dir),
            wal_level: self.wal_level.clone(),
            max_wal_senders: self.max_wal_senders,
            max_replication_slots: self.max_replication_slots,
            fsync: self.fsync,
            password_encryption: self.hba.password_encryption(),
            ssl_files: None,
            extra: self.conf.clone(),
        };
        // From here on the Cluster owns the directory: an early return drops it, which cleans up.
        let mut cluster = Cluster::new_shell(ShellParts {
            name: self.name.clone(),
            install,
            user,
            root,
            data_dir,
            socket_dir,
            settings,
            superuser: self.superuser.clone(),
            superuser_password: self.superuser_password.clone(),
            roles: self.roles.clone(),
            ca: None,
        })?;
        cluster.initdb(&self)?;
        if self.hba.tls != Tls::Off {
            cluster.setup_tls(Arc::new(TestCa::new()?))?;
        }
        cluster.write_settings()?;
        cluster.write_hba(&self.hba.render())?;
        cluster.setup_roles()?;
        if self.hba.tcp == AuthMethod::Cert {
            // conninfo() must work for cert auth: give every login role a certificate up front.
            let mut users = vec![cluster.superuser.clone()];
            users.extend(
                cluster
                    .roles
                    .iter()
                    .filter(|r| r.login)
                    .map(|r| r.name.clone()),
            );
            for u in users {
                let c = cluster.try_client_cert(&u)?;
                cluster.cert_for_user.insert(u, c);
            }
        }
        cluster.start_server(true)?;
        Ok(cluster)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TestkitError::Config(m));
        if self.hba.local == AuthMethod::Cert {
            return bad("cert authentication needs TLS, which Unix sockets do not have: use it for tcp_auth only".into());
        }
        if self.hba.tcp == AuthMethod::Cert && self.hba.tls == Tls::Off {
            return bad("cert authentication needs .tls(Tls::On) or .tls(Tls::Required)".into());
        }
        if (self.hba.local.needs_password() || self.hba.tcp.needs_password())
            && self.superuser_password.is_none()
            && self.hba.custom.is_none()
        {
            return bad(format!(
                "{} authentication needs .superuser_password(…)",
                if self.hba.local.needs_password() {
                    self.hba.local.hba_keyword()
                } else {
                    self.hba.tcp.hba_keyword()
                }
            ));
        }
        if self.hba.local.needs_password() && self.superuser_password.is_none() {
            return bad("a password method on the Unix socket needs .superuser_password(…) for the testkit's own psql".into());
        }
        if let Some(mb) = self.wal_segsize_mb {
            if !(1..=1024).contains(&mb) || !mb.is_power_of_two() {
                return bad(format!(
                    "wal_segsize_mb {mb} is not a power of two between 1 and 1024"
                ));
            }
        }
        // Setup SQL runs in single-user mode, which reads one statement per line.
        let names = std::iter::once(&self.superuser)
            .chain(self.superuser_password.iter())
            .chain(self.roles.iter().map(|r| &r.name))
            .chain(self.roles.iter().filter_map(|r| r.password.as_ref()));
        if names.clone().any(|s| s.contains(['\n', '\r', '\0'])) {
            return bad("role names and passwords must not contain line breaks or NUL".into());
        }
        if self.superuser.is_empty() || self.roles.iter().any(|r| r.name.is_empty()) {
            return bad("role names must not be empty".into());
        }
        Ok(())
    }
}

/// Starts a cluster on an existing data directory, typically one a backup tool (pg_basebackup, walrelay
/// bootstrap) produced: gives it to the server user, points its port and socket at a new directory, and
/// starts it. The data directory itself is *not* removed on drop: it belongs to whoever created it (use
/// [`Cluster::scratch_path`] of the primary to have it cleaned up with the primary), and must outlive
/// the standby's [`Cluster`] — declare it before, so it is dropped after.
///
/// Tablespace symlinks in the directory are used as they are (their directories are given to the
/// server user too): map tablespaces when backing up (`pg_basebackup -T old=new`), or primary and
/// standby will share a tablespace directory.
#[derive(Clone, Debug)]
pub struct StandbyBuilder {
    name: String,
    major: Option<u32>,
    install: Option<PgInstall>,
    data_dir: PathBuf,
    superuser: String,
    superuser_password: Option<String>,
    roles: Vec<Role>,
    template: Option<ServerSettings>,
    conf: Vec<String>,
    ca: Option<Arc<TestCa>>,
    tls: bool,
    follow: Option<String>,
    slot: Option<String>,
}

impl StandbyBuilder {
    /// A cluster on `data_dir` with default settings (superuser `postgres`, no password, major from
    /// `WALRELAY_PG_MAJOR`). [`Cluster::standby`] fills these in from a primary instead.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StandbyBuilder {
            name: "standby".to_string(),
            major: None,
            install: None,
            data_dir: data_dir.into(),
            superuser: "postgres".to_string(),
            superuser_password: None,
            roles: Vec::new(),
            template: None,
            conf: Vec::new(),
            ca: None,
            tls: false,
            follow: None,
            slot: None,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self.install = None;
        self
    }

    pub fn superuser(mut self, name: &str) -> Self {
        self.superuser = name.to_string();
        self
    }

    pub fn superuser_password(mut self, password: &str) -> Self {
        self.superuser_password = Some(password.to_string());
        self
    }

    /// A postgresql.conf line for this cluster (after, so overriding, the inherited ones).
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// Make the directory a streaming standby of `primary_conninfo`: `standby.signal` plus
    /// `primary_conninfo` in our settings file on PG 12+, `recovery.conf` with `standby_mode = 'on'`
    /// before. Not needed when the backup tool already wrote this (`pg_basebackup -R`); if both did, the
    /// backup tool's `postgresql.auto.conf` wins on PG 12+.
    pub fn follow(mut self, primary_conninfo: &str) -> Self {
        self.follow = Some(primary_conninfo.to_string());
        self
    }

    /// `primary_slot_name`, with [`StandbyBuilder::follow`].
    pub fn primary_slot(mut self, slot: &str) -> Self {
        self.slot = Some(slot.to_string());
        self
    }

    /// Starts the cluster; panics with the server log's tail on failure.
    pub fn start(self) -> Cluster {
        let name = self.name.clone();
        self.try_start()
            .unwrap_or_else(|e| panic!("could not start standby {name}: {e}"))
    }

    /// Starts the cluster and waits until it accepts connections (for a hot standby: until it reached
    /// a consistent state).
    pub fn try_start(self) -> Result<Cluster> {
        let install = match self.install.clone() {
            Some(i) => i,
            None => match self.major {
                Some(m) => PgInstall::for_major(m)?,
                None => PgInstall::from_env()?,
            },
        };
        if !self.data_dir.join("PG_VERSION").is_file() {
            return Err(TestkitError::Config(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                self.data_dir.display()
            )));
        }
        let user = ServerUser::detect()?;
        let root = make_root(&self.name, &user)?;
        let socket_dir = root.join("sock");
        let mut settings = self.template.clone().unwrap_or_else(|| ServerSettings {
            port: 0,
            socket_dir: String::new(),
            wal_level: "replica".to_string(),
            max_wal_senders: 10,
            max_replication_slots: 10,
            fsync: true,
            password_encryption: "scram-sha-256",
            ssl_files: None,
            extra: Vec::new(),
        });
        settings.port = 0;
        settings.socket_dir = path_str(&socket_dir);
        settings.ssl_files = None;
        settings.extra.extend(self.conf.iter().cloned());
        let major = install.major();
        let mut cluster = Cluster::new_shell(ShellParts {
            name: self.name.clone(),
            install,
            user,
            root,
            data_dir: self.data_dir.clone(),
            socket_dir,
            settings,
            superuser: self.superuser.clone(),
            superuser_password: self.superuser_password.clone(),
            roles: self.roles.clone(),
            ca: None,
        })?;
        // A backup tool running as root leaves root-owned files; the server must own its directory
        // and refuses group/world access to it.
        cluster.user.chown_tree(&self.data_dir)?;
        process::set_mode(&self.data_dir, 0o700)?;
        // Tablespaces the tool mapped elsewhere (`-T old=new`) are the server's too.
        let tblspc = self.data_dir.join("pg_tblspc");
        if let Ok(entries) = fs::read_dir(&tblspc) {
            for entry in entries.flatten() {
                if let Ok(target) = fs::read_link(entry.path()) {
                    let target = tblspc.join(target);
                    if target.is_dir() {
                        cluster.user.chown_tree(&target)?;
                    }
                }
            }
        }
        if self.tls {
            let ca = match &self.ca {
                Some(ca) => ca.clone(),
                None => Arc::new(TestCa::new()?),
            };
            cluster.setup_tls(ca)?;
        }
        if let Some(conninfo) = &self.follow {
            cluster.write_standby_config(major, conninfo, self.slot.as_deref())?;
        }
        cluster.write_settings()?;
        cluster.start_server(true)?;
        Ok(cluster)
    }
}

/// What [`Cluster::new_shell`] needs.
struct ShellParts {
    name: String,
    install: PgInstall,
    user: ServerUser,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    settings: ServerSettings,
    superuser: String,
    superuser_password: Option<String>,
    roles: Vec<Role>,
    ca: Option<Arc<TestCa>>,
}

/// A running (or stopped) throwaway PostgreSQL cluster. See the module docs.
pub struct Cluster {
    name: String,
    install: PgInstall,
    user: ServerUser,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    settings: ServerSettings,
    superuser: String,
    superuser_password: Option<String>,
    roles: Vec<Role>,
    ca: Option<Arc<TestCa>>,
    tls_paths: Option<TlsPaths>,
    cert_for_user: BTreeMap<String, ClientCert>,
    next_file: AtomicU32,
    /// Set when a panic message already carried the log's tail, so `Drop` does not repeat it.
    tail_shown: AtomicBool,
    running: bool,
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("major", &self.install.major())
            .field("port", &self.settings.port)
            .field("data_dir", &self.data_dir)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Options for a new cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    fn new_shell(mut p: ShellParts) -> Result<Cluster> {
        if p.settings.port == 0 {
            p.settings.port = free_port()?;
        }
        let remove = (!crate::env::keep_dirs()).then_some(p.root.as_path());
        // Armed before anything can start a server in this directory.
        let watchdog = Watchdog::spawn(&p.data_dir, remove);
        let mut cluster = Cluster {
            log_file: p.root.join("postgres.log"),
            name: p.name,
            install: p.install,
            user: p.user,
            root: p.root,
            data_dir: p.data_dir,
            socket_dir: p.socket_dir,
            settings: p.settings,
            superuser: p.superuser,
            superuser_password: p.superuser_password,
            roles: p.roles,
            ca: p.ca,
            tls_paths: None,
            cert_for_user: BTreeMap::new(),
            next_file: AtomicU32::new(1),
            tail_shown: AtomicBool::new(false),
            running: false,
            watchdog: None,
        };
        cluster.watchdog = Some(watchdog?);
        for sub in ["sock", "tls", "tblspc", "scratch"] {
            cluster.user.create_dir(&cluster.root.join(sub), 0o755)?;
        }
        Ok(cluster)
    }

    fn initdb(&mut self, b: &ClusterBuilder) -> Result<()> {
        let major = self.install.major();
        let mut cmd = self.user.command(&self.install.initdb(), &self.root);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&self.superuser)
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C"]);
        if !b.initdb_sync {
            cmd.arg("--no-sync");
        }
        if b.group_access && major >= 11 {
            cmd.arg("--allow-group-access");
        }
        if let Some(mb) = b.wal_segsize_mb {
            if major >= 11 {
                cmd.arg(format!("--wal-segsize={mb}"));
            }
        }
        match b.data_checksums {
            Some(true) => {
                cmd.arg("--data-checksums");
            }
            // Off is the default before 18; 18 has an explicit switch because it flipped the default.
            Some(false) if major >= 18 => {
                cmd.arg("--no-data-checksums");
            }
            _ => {}
        }
        run_ok(cmd, None, crate::env::timeout())?;
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf =
            fs::read_to_string(&conf_path).map_err(|e| TestkitError::io("read", &conf_path, e))?;
        conf.push_str(&format!("\n{}\n", include_line()));
        self.user
            .write_file(&conf_path, conf.as_bytes(), self.data_file_mode())
    }

    /// Mode of the configuration files the testkit writes into the data directory: 0640 in a data
    /// directory with group access (`initdb -g`), as the server's own files, else 0600.
    fn data_file_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        match fs::metadata(&self.data_dir) {
            Ok(m) if m.permissions().mode() & 0o750 == 0o750 => 0o640,
            _ => 0o600,
        }
    }

    /// Creates the CA's server certificate files in `tls/` and records them in the settings.
    fn setup_tls(&mut self, ca: Arc<TestCa>) -> Result<()> {
        let dir = self.root.join("tls");
        let server = ca.issue_server()?;
        let paths = TlsPaths {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        self.user
            .write_file(&paths.ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
        self.user
            .write_file(&paths.server_cert, server.cert_pem.as_bytes(), 0o644)?;
        // The server refuses a key readable by group or others.
        self.user
            .write_file(&paths.server_key, server.key_pem.as_bytes(), 0o600)?;
        self.settings.ssl_files = Some((
            path_str(&paths.server_cert),
            path_str(&paths.server_key),
            path_str(&paths.ca_cert),
        ));
        self.tls_paths = Some(paths);
        self.ca = Some(ca);
        Ok(())
    }

    /// Writes [`TESTKIT_CONF`] from the current settings and makes sure postgresql.conf includes it.
    fn write_settings(&self) -> Result<()> {
        let conf_path = self.data_dir.join("postgresql.conf");
        let conf =
            fs::read_to_string(&conf_path).map_err(|e| TestkitError::io("read", &conf_path, e))?;
        if !has_include(&conf) {
            let conf = format!("{conf}\n{}\n", include_line());
            self.user
                .write_file(&conf_path, conf.as_bytes(), self.data_file_mode())?;
        }
        self.user.write_file(
            &self.data_dir.join(TESTKIT_CONF),
            self.settings.render().as_bytes(),
            self.data_file_mode(),
        )
    }

    fn write_standby_config(
        &mut self,
        major: u32,
        conninfo: &str,
        slot: Option<&str>,
    ) -> Result<()> {
        use crate::config::conf_string;
        let mut lines = vec![conf_string("primary_conninfo", conninfo)];
        if let Some(s) = slot {
            lines.push(conf_string("primary_slot_name", s));
        }
        if major >= 12 {
            self.user
                .write_file(&self.data_dir.join("standby.signal"), b"", 0o600)?;
            self.settings.extra.extend(lines);
        } else {
            lines.insert(0, "standby_mode = 'on'".to_string());
            let text = lines.join("\n") + "\n";
            self.user
                .write_file(&self.data_dir.join("recovery.conf"), text.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// Sets passwords and creates roles in single-user mode, before the server ever listens.
    fn setup_roles(&self) -> Result<()> {
        let mut sql = Vec::new();
        if let Some(p) = &self.superuser_password {
            sql.push(format!(
                "ALTER ROLE {} PASSWORD {};",
                quote_ident(&self.superuser),
                quote_literal(p)
            ));
        }
        sql.extend(self.roles.iter().map(Role::create_sql));
        if sql.is_empty() {
            return Ok(());
        }
        let input = sql.join("\n") + "\n";
        let mut cmd = self.user.command(&self.install.postgres(), &self.root);
        cmd.arg("--single").arg("-D").arg(&self.data_dir).args([
            "-c",
            "exit_on_error=true",
            "postgres",
        ]);
        let out = run(cmd, Some(input.as_bytes()), crate::env::timeout())?;
        // exit_on_error turns an ERROR into FATAL and a non-zero exit; also look for the word, since the
        // stand-alone backend reports errors on stderr and carries on otherwise.
        if !out.status.success() || out.stderr.contains("ERROR:") || out.stderr.contains("FATAL:") {
            return Err(TestkitError::CommandFailed {
                command: "postgres --single (role setup)".to_string(),
                status: out.status.to_string(),
                stderr: out.stderr,
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- lifecycle

    /// Starts the server with `pg_ctl start -w`, retrying on another free port when allowed and the
    /// chosen one was taken in the meantime.
    fn start_server(&mut self, may_change_port: bool) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.write_settings()?;
            let log_before = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let timeout = crate::env::timeout();
            let mut cmd = self.user.command(&self.install.pg_ctl(), &self.root);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .args(["-w", "-t", &timeout.as_secs().to_string(), "start"]);
            match run_ok(cmd, None, timeout + Duration::from_secs(30)) {
                Ok(_) => {
                    self.running = true;
                    return self.try_wait_ready();
                }
                Err(e) => {
                    let new_log = read_from(&self.log_file, log_before);
                    // pg_ctl gave up, but a slow server may still be coming up: never leave it behind.
                    if self.data_dir.join("postmaster.pid").exists() {
                        self.running = true;
                        let _ = self.pg_ctl_stop(StopMode::Immediate);
                    }
                    self.running = false;
                    let bind_failed = new_log.contains("could not bind IPv4 address")
                        || new_log.contains("could not create any TCP/IP sockets");
                    if may_change_port && bind_failed && attempt < PORT_ATTEMPTS {
                        self.settings.port = free_port()?;
                        continue;
                    }
                    let reason = failure_reason(&new_log);
                    // The directory (and log) may be gone by the time the caller reads the error.
                    eprintln!(
                        "--- {}: server did not start; last {LOG_TAIL_LINES} lines of {} ---\n{}",
                        self.name,
                        self.log_file.display(),
                        last_lines(&new_log, LOG_TAIL_LINES)
                    );
                    return Err(TestkitError::StartFailed {
                        reason: if reason.is_empty() {
                            e.to_string()
                        } else {
                            reason.replace('\n', " | ")
                        },
                        log: self.log_file.clone(),
                    });
                }
            }
        }
    }

    /// Starts a stopped cluster (same port). Panics on failure.
    pub fn start(&mut self) {
        let r = self.try_start();
        self.check(r, "start");
    }

    /// Starts a stopped cluster on the same port: an error (with the log's last lines) if the server
    /// refuses, e.g. because of a leftover recovery.conf on PG 12+.
    pub fn try_start(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        self.start_server(false)
    }

    /// Stops the server. Panics on failure.
    pub fn stop(&mut self, mode: StopMode) {
        let r = self.pg_ctl_stop(mode);
        self.check(r, "stop");
    }

    fn pg_ctl_stop(&mut self, mode: StopMode) -> Result<()> {
        if !self.running && !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let timeout = crate::env::timeout();
        let mut cmd = self.user.command(&self.install.pg_ctl(), &self.root);
        cmd.arg("-D").arg(&self.data_dir).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-t",
            &timeout.as_secs().to_string(),
            "stop",
        ]);
        let r = run_ok(cmd, None, timeout + Duration::from_secs(30));
        if r.is_ok() || !self.data_dir.join("postmaster.pid").exists() {
            self.running = false;
            return Ok(());
        }
        r.map(|_| ())
    }

    /// Fast stop, then start on the same port.
    pub fn restart(&mut self) {
        self.restart_with(StopMode::Fast);
    }

    /// Stop with `mode`, then start on the same port (immediate: the start runs crash recovery).
    pub fn restart_with(&mut self, mode: StopMode) {
        self.stop(mode);
        self.start();
    }

    /// `pg_ctl reload`: re-read configuration files (settings and pg_hba.conf).
    pub fn reload(&self) {
        let mut cmd = self.user.command(&self.install.pg_ctl(), &self.root);
        cmd.arg("-D").arg(&self.data_dir).arg("reload");
        let r = run_ok(cmd, None, crate::env::timeout()).map(|_| ());
        self.check(r, "reload");
    }

    /// `pg_ctl promote`, then waits until the server is out of recovery.
    pub fn promote(&mut self) {
        let timeout = crate::env::timeout();
        let mut cmd = self.user.command(&self.install.pg_ctl(), &self.root);
        cmd.arg("-D").arg(&self.data_dir).args([
            "-w",
            "-t",
            &timeout.as_secs().to_string(),
            "promote",
        ]);
        let r = run_ok(cmd, None, timeout + Duration::from_secs(30)).map(|_| ());
        self.check(r, "promote");
        let r = self.poll("the end of recovery after promotion", || {
            Ok(self.try_psql("SELECT pg_is_in_recovery()")? == "f")
        });
        self.check(r, "promote");
    }

    /// Waits until the server accepts a superuser connection (panics after the test timeout).
    pub fn wait_ready(&self) {
        let r = self.try_wait_ready();
        self.check(r, "wait until ready");
    }

    fn try_wait_ready(&self) -> Result<()> {
        self.poll("the server to accept connections", || {
            Ok(self.try_psql("SELECT 1").is_ok())
        })
    }

    /// Polls `f` every 100 ms until it returns true, failing after the test timeout.
    fn poll(&self, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
        let timeout = crate::env::timeout();
        let deadline = Instant::now() + timeout;
        loop {
            if f()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout {
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                    log: self.log_file.clone(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the testkit started the server and has not stopped it.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Appends a postgresql.conf line (after all others, so it wins) and rewrites our settings file.
    /// Takes effect on [`Cluster::reload`] or [`Cluster::restart`], as the setting requires.
    pub fn append_conf(&mut self, line: &str) {
        self.settings.extra.push(line.to_string());
        let r = self.write_settings();
        self.check(r, "write settings");
    }

    /// Replaces pg_hba.conf with these lines; takes effect on [`Cluster::reload`].
    pub fn set_hba<I, S>(&self, lines: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut text = String::from("# written by a test\n");
        for l in lines {
            text.push_str(l.as_ref());
            text.push('\n');
        }
        let r = self.write_hba(&text);
        self.check(r, "write pg_hba.conf");
    }

    fn write_hba(&self, text: &str) -> Result<()> {
        self.user.write_file(
            &self.data_dir.join("pg_hba.conf"),
            text.as_bytes(),
            self.data_file_mode(),
        )
    }

    // ---------------------------------------------------------------- SQL

    /// psql connected as the superuser over the Unix socket: no psqlrc, unaligned, tuples only,
    /// quiet, stop at the first error.
    fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = process::pg_command(&self.install.tools().psql());
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.settings.port.to_string())
            .arg("-U")
            .arg(&self.superuser)
            .arg("-d")
            .arg(dbname)
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(p) = &self.superuser_password {
            cmd.env("PGPASSWORD", p);
        }
        cmd
    }

    /// Runs SQL (one or more statements, each in its own transaction unless the SQL says otherwise)
    /// in database `postgres` and returns the output, one row per line with `|` between columns,
    /// without the trailing newline. Panics on error.
    pub fn psql(&self, sql: &str) -> String {
        let r = self.try_psql(sql);
        self.check(r, "psql")
    }

    /// [`Cluster::psql`] returning the error (with psql's stderr) instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String> {
        self.try_psql_in("postgres", sql)
    }

    /// [`Cluster::try_psql`] in another database.
    pub fn try_psql_in(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_command(dbname);
        cmd.args(["-f", "-"]);
        psql_output(cmd, sql)
    }

    /// Runs a query and returns its rows as fields (via psql's CSV output, so values may contain `|`,
    /// commas or newlines). NULL and the empty string both come back as `""`.
    pub fn psql_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let r = self.try_psql_rows(sql);
        self.check(r, "psql")
    }

    pub fn try_psql_rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let mut cmd = self.psql_command("postgres");
        cmd.args(["--csv", "-f", "-"]);
        let out = psql_output(cmd, sql)?;
        crate::csv::parse_csv(&out).map_err(|detail| TestkitError::Parse {
            tool: "psql --csv",
            detail,
        })
    }

    /// A single value that must parse as `T` (an LSN, a number); panics like the other helpers
    /// without `try_`, naming `what`.
    fn psql_value<T: std::str::FromStr>(&self, sql: &str, what: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let r = self.try_psql(sql).and_then(|out| {
            out.trim().parse().map_err(|e| TestkitError::Parse {
                tool: "psql",
                detail: format!("{sql}: {out:?}: {e}"),
            })
        });
        self.check(r, what)
    }

    /// `pg_current_wal_lsn()` (primary only).
    pub fn current_wal_lsn(&self) -> Lsn {
        self.psql_value("SELECT pg_current_wal_lsn()", "current_wal_lsn")
    }

    /// `pg_switch_wal()`: ends the current segment and returns the end of the switch record. The
    /// server does not switch when nothing was written since the last switch.
    pub fn switch_wal(&self) -> Lsn {
        self.psql_value("SELECT pg_switch_wal()", "switch_wal")
    }

    /// The system identifier (as in IDENTIFY_SYSTEM and pg_controldata).
    pub fn system_identifier(&self) -> u64 {
        self.psql_value(
            "SELECT system_identifier FROM pg_control_system()",
            "system_identifier",
        )
    }

    /// `wal_segment_size` in bytes.
    pub fn wal_segment_size(&self) -> u64 {
        self.psql_value(
            "SELECT pg_size_bytes(current_setting('wal_segment_size'))",
            "wal_segment_size",
        )
    }

    /// `server_version_num`, e.g. 150018.
    pub fn server_version_num(&self) -> u32 {
        self.psql_value("SHOW server_version_num", "server_version_num")
    }

    /// `pg_is_in_recovery()`.
    pub fn is_in_recovery(&self) -> bool {
        let r = self.try_psql("SELECT pg_is_in_recovery()");
        self.check(r, "is_in_recovery") == "t"
    }

    /// The timeline the primary writes on (from the name of its current WAL file; primary only).
    pub fn current_timeline(&self) -> u32 {
        let r = self
            .try_psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
            .and_then(|s| {
                u32::from_str_radix(s.trim(), 16).map_err(|e| TestkitError::Parse {
                    tool: "psql",
                    detail: format!("timeline {s:?}: {e}"),
                })
            });
        self.check(r, "current_timeline")
    }

    /// `pg_last_wal_replay_lsn()`: how far a standby has replayed (`None` on a primary that never was
    /// in recovery).
    pub fn replay_lsn(&self) -> Option<Lsn> {
        let r = self.try_replay_lsn();
        self.check(r, "replay_lsn")
    }

    fn try_replay_lsn(&self) -> Result<Option<Lsn>> {
        let out = self.try_psql("SELECT pg_last_wal_replay_lsn()")?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        out.trim()
            .parse()
            .map(Some)
            .map_err(|e| TestkitError::Parse {
                tool: "psql",
                detail: format!("pg_last_wal_replay_lsn {out:?}: {e}"),
            })
    }

    /// Waits until this standby has replayed up to `target`; panics (with the log's tail) after the
    /// test timeout. Returns the replay position reached.
    pub fn wait_replay(&self, target: Lsn) -> Lsn {
        let mut reached = None;
        let r = self.poll(&format!("replay to reach {target}"), || {
            reached = self.try_replay_lsn()?;
            Ok(reached.is_some_and(|r| r >= target))
        });
        self.check(r, "wait_replay");
        reached.unwrap_or(target)
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub fn catch_up(&self, primary: &Cluster) -> Lsn {
        self.wait_replay(primary.current_wal_lsn())
    }

    /// Creates a tablespace in a fresh directory owned by the server user and returns its path.
    pub fn create_tablespace(&self, name: &str) -> PathBuf {
        let dir = self.root.join("tblspc").join(sanitize(name));
        let r = self.user.create_dir(&dir, 0o700).and_then(|_| {
            self.try_psql(&format!(
                "CREATE TABLESPACE {} LOCATION {};",
                quote_ident(name),
                quote_literal(&path_str(&dir))
            ))
        });
        self.check(r, "create_tablespace");
        dir
    }

    /// Damages the first page of `relation`'s main fork on disk, as a failing disk would, so that a
    /// base backup verifying data checksums must notice: stops the server (fast), overwrites 64
    /// bytes of tuple data, starts it again. Returns the file's path relative to the data directory
    /// (`pg_relation_filepath`). Write and `CHECKPOINT` the relation first, so the page is on disk;
    /// only a cluster built with [`ClusterBuilder::data_checksums`]`(true)` can tell.
    pub fn damage_first_page(&mut self, relation: &str) -> String {
        let rel = self.psql(&format!(
            "SELECT pg_relation_filepath({})",
            quote_literal(relation)
        ));
        self.stop(StopMode::Fast);
        let path = self.data_dir.join(&rel);
        // Tuple data, away from the page header: pd_lsn must stay old, or the server would take the
        // page for one being written and skip the checksum check.
        let r = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| {
                f.write_all_at(&[0x5a; 64], 4000)?;
                f.sync_all()
            })
            .map_err(|e| TestkitError::io("damage", &path, e));
        self.check(r, "damage_first_page");
        self.start();
        rel
    }

    // ---------------------------------------------------------------- paths and connection strings

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn major(&self) -> u32 {
        self.install.major()
    }

    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pg_wal_dir(&self) -> PathBuf {
        self.data_dir.join("pg_wal")
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn port(&self) -> u16 {
        self.settings.port
    }

    /// The server log (pg_ctl's `-l` file).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&read_from(&self.log_file, 0), n)
    }

    /// The cluster's own directory (removed on drop).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// A path in this cluster's directory that does not exist yet, for a backup tool's target
    /// (`pg_basebackup -D`, `walrelay bootstrap`): removed together with the cluster.
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("scratch")
            .join(format!("{}-{n}", sanitize(name)))
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn superuser_password(&self) -> Option<&str> {
        self.superuser_password.as_deref()
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// TCP connection string for the superuser (`host=127.0.0.1 port=… user=… dbname=postgres`, plus
    /// `password`, and with TLS on `sslmode=verify-full sslrootcert=<CA>`; with cert auth also
    /// `sslcert`/`sslkey`). Usable by libpq tools and by walrelay.
    pub fn conninfo(&self) -> String {
        self.conninfo_for(&self.superuser, self.superuser_password.as_deref())
    }

    /// Like [`Cluster::conninfo`] for the first role with `REPLICATION` (else the superuser). Tools add
    /// `replication=…` themselves; `dbname` is kept because PG 17's slot sync wants it.
    pub fn replication_conninfo(&self) -> String {
        match self.roles.iter().find(|r| r.replication && r.login) {
            Some(r) => self.conninfo_for(&r.name, r.password.as_deref()),
            None => self.conninfo(),
        }
    }

    /// TCP connection string for one of the roles created at setup (with its password).
    pub fn conninfo_as(&self, role: &str) -> String {
        if role == self.superuser {
            return self.conninfo();
        }
        let password = self
            .roles
            .iter()
            .find(|r| r.name == role)
            .and_then(|r| r.password.as_deref());
        self.conninfo_for(role, password)
    }

    /// TCP connection string for any user and password (e.g. a wrong one).
    pub fn conninfo_for(&self, user: &str, password: Option<&str>) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", "127.0.0.1".to_string()),
            ("port", self.settings.port.to_string()),
            ("user", user.to_string()),
            ("dbname", "postgres".to_string()),
        ];
        if let Some(p) = password {
            pairs.push(("password", p.to_string()));
        }
        let mut s = render_conninfo(&pairs);
        if let Some(t) = &self.tls_paths {
            s.push(' ');
            s.push_str(&t.verify_full_params());
        }
        if let Some(c) = self.cert_for_user.get(user) {
            s.push(' ');
            s.push_str(&c.conninfo_params());
        }
        s
    }

    /// Unix-socket connection string for the superuser.
    pub fn unix_conninfo(&self) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", path_str(&self.socket_dir)),
            ("port", self.settings.port.to_string()),
            ("user", self.superuser.clone()),
            ("dbname", "postgres".to_string()),
        ];
        if let Some(p) = &self.superuser_password {
            pairs.push(("password", p.clone()));
        }
        render_conninfo(&pairs)
    }

    /// The test CA's certificate when TLS is on (for `sslrootcert`).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls_paths.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// The CA, server certificate and key files when TLS is on.
    pub fn tls_paths(&self) -> Option<&TlsPaths> {
        self.tls_paths.as_ref()
    }

    /// A client certificate (CN = `user`) signed by this cluster's test CA, written to files readable
    /// only by us. Panics when TLS is off.
    pub fn client_cert(&self, user: &str) -> ClientCert {
        let r = self.try_client_cert(user);
        self.check(r, "client_cert")
    }

    fn try_client_cert(&self, user: &str) -> Result<ClientCert> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            TestkitError::Config("client_cert needs a cluster with TLS on".into())
        })?;
        let issued = ca.issue_client(user)?;
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let base = self
            .root
            .join("tls")
            .join(format!("client-{n}-{}", sanitize(user)));
        let cert = base.with_extension("crt");
        let key = base.with_extension("key");
        // Ours, not the server's: the client (psql, walrelay) runs as us, and libpq refuses a key that
        // others can read.
        process::write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
        process::write_file(&key, issued.key_pem.as_bytes(), 0o600)?;
        Ok(ClientCert {
            user: user.to_string(),
            cert,
            key,
        })
    }

    // ---------------------------------------------------------------- load

    /// Connection arguments for client tools over the Unix socket, as the superuser.
    fn client_command(&self, program: &Path) -> Command {
        let mut cmd = process::pg_command(program);
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.settings.port.to_string())
            .arg("-U")
            .arg(&self.superuser);
        if let Some(p) = &self.superuser_password {
            cmd.env("PGPASSWORD", p);
        }
        cmd
    }

    /// `pgbench -i -s scale` in database `postgres`.
    pub fn pgbench_init(&self, scale: u32) {
        let mut cmd = self.client_command(&self.install.tools().pgbench());
        cmd.args(["-i", "-q", "-s", &scale.max(1).to_string(), "postgres"]);
        let timeout = crate::env::timeout() * scale.max(1);
        let r = run_ok(cmd, None, timeout).map(|_| ());
        self.check(r, "pgbench -i");
    }

    /// Starts pgbench in the background (after [`Cluster::pgbench_init`]); killed when the returned
    /// run is dropped.
    pub fn pgbench(&self, opts: &PgBench) -> PgBenchRun {
        let mut cmd = self.client_command(&self.install.tools().pgbench());
        cmd.args(opts.to_args()).arg("postgres");
        let r = PgBenchRun::spawn(cmd, opts.expected());
        self.check(r, "pgbench")
    }

    /// Runs pgbench to completion and returns its report.
    pub fn pgbench_run(&self, opts: &PgBench) -> PgBenchSummary {
        let r = self.pgbench(opts).wait();
        self.check(r, "pgbench")
    }

    // ---------------------------------------------------------------- oracles

    /// `pg_dumpall` of this cluster (Debian 15's: refuses servers newer than 15).
    pub fn dumpall(&self) -> String {
        let r = self.try_dumpall();
        self.check(r, "pg_dumpall")
    }

    pub fn try_dumpall(&self) -> Result<String> {
        let mut cmd = self.client_command(&self.install.tools().pg_dumpall());
        cmd.arg("-l").arg("postgres");
        run_ok(cmd, None, crate::env::timeout())
    }

    /// `pg_controldata` of this cluster's data directory.
    pub fn controldata(&self) -> crate::oracle::ControlData {
        let r = crate::oracle::pg_controldata(&self.data_dir);
        self.check(r, "pg_controldata")
    }

    // ---------------------------------------------------------------- standbys

    /// A [`StandbyBuilder`] for `data_dir` that inherits this cluster's major, superuser, roles,
    /// settings and (with TLS) CA.
    pub fn standby(&self, data_dir: impl Into<PathBuf>) -> StandbyBuilder {
        StandbyBuilder {
            name: format!("{}-standby", self.name),
            major: Some(self.install.major()),
            install: Some(self.install.clone()),
            data_dir: data_dir.into(),
            superuser: self.superuser.clone(),
            superuser_password: self.superuser_password.clone(),
            roles: self.roles.clone(),
            template: Some(self.settings.clone()),
            conf: Vec::new(),
            ca: self.ca.clone(),
            tls: self.tls_paths.is_some(),
            follow: None,
            slot: None,
        }
    }

    /// Runs Debian 15's `pg_basebackup` against this cluster into a fresh [`Cluster::scratch_path`]
    /// with `args` (e.g. `["-R", "-X", "stream", "-c", "fast"]`) and returns the directory.
    pub fn pg_basebackup(&self, args: &[&str]) -> PathBuf {
        let target = self.scratch_path("basebackup");
        let mut cmd = process::pg_command(&self.install.tools().pg_basebackup());
        cmd.arg("-d")
            .arg(self.replication_conninfo())
            .arg("-D")
            .arg(&target)
            .args(["--no-sync"])
            .args(args);
        let r = run_ok(cmd, None, crate::env::timeout()).map(|_| ());
        self.check(r, "pg_basebackup");
        target
    }

    /// A copy of the data directory taken while the server is cleanly stopped (fast stop, `cp -a`,
    /// start again), in a fresh [`Cluster::scratch_path`]. With [`StandbyBuilder::follow`] it makes a
    /// standby without `pg_basebackup`, which matters for majors newer than Debian's 15 client.
    pub fn cold_copy(&mut self) -> PathBuf {
        let target = self.scratch_path("cold-copy");
        self.stop(StopMode::Fast);
        let mut cmd = process::pg_command(Path::new("cp"));
        cmd.arg("-a").arg(&self.data_dir).arg(&target);
        let r = run_ok(cmd, None, crate::env::timeout()).map(|_| ());
        self.check(r, "copy the data directory");
        self.start();
        target
    }

    // ---------------------------------------------------------------- failure reporting

    /// Unwraps `r`, or panics naming the cluster, the step, the log file and the log's tail.
    fn check<T>(&self, r: Result<T>, what: &str) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.tail_shown.store(true, Ordering::Relaxed);
                let tail = self.log_tail(LOG_TAIL_LINES);
                panic!(
                    "{} (PostgreSQL {}, port {}): {what} failed: {e}\n\
                     --- last {LOG_TAIL_LINES} lines of {} ---\n{tail}",
                    self.name,
                    self.install.major(),
                    self.settings.port,
                    self.log_file.display(),
                )
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.tail_shown.load(Ordering::Relaxed) {
            eprintln!(
                "--- {} (PostgreSQL {}): last {LOG_TAIL_LINES} lines of {} ---\n{}",
                self.name,
                self.install.major(),
                self.log_file.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        let _ = self.pg_ctl_stop(StopMode::Immediate);
        // Kills the server if pg_ctl could not, then removes the directory (unless kept).
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
        if crate::env::keep_dirs() {
            eprintln!("WALRELAY_TEST_KEEP=1: kept {}", self.root.display());
        } else if let Err(e) = fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {e}", self.root.display());
            }
        }
    }
}

/// Runs psql with `sql` on stdin; the output without its trailing newline, or the error with stderr.
fn psql_output(cmd: Command, sql: &str) -> Result<String> {
    let out = run(cmd, Some(sql.as_bytes()), crate::env::timeout())?;
    if !out.status.success() {
        return Err(TestkitError::Sql {
            sql: sql.to_string(),
            stderr: if out.stderr.trim().is_empty() {
                format!("psql exited with {}", out.status)
            } else {
                out.stderr
            },
        });
    }
    Ok(out.stdout.trim_end_matches('\n').to_string())
}

/// Runs SQL through Debian 15's psql on any connection string (TCP, TLS, another user), e.g. to check
/// that authentication is set up as intended: `psql_conninfo(&pg.conninfo_for("u", Some("bad")), "…")`
/// must fail.
pub fn psql_conninfo(conninfo: &str, sql: &str) -> Result<String> {
    let tools = crate::install::ClientTools::debian()?;
    let mut cmd = process::pg_command(&tools.psql());
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-w", "-d"])
        .arg(conninfo)
        .args(["-f", "-"])
        .env("PGCONNECT_TIMEOUT", "10");
    psql_output(cmd, sql)
}

/// A directory `/tmp/wr-<name>-XXXXXX`, mode 0755, owned by the server user.
fn make_root(name: &str, user: &ServerUser) -> Result<PathBuf> {
    let base = crate::env::tmp_base();
    let dir = tempfile::Builder::new()
        .prefix(&format!("wr-{}-", sanitize(name)))
        .tempdir_in(&base)
        .map_err(|e| TestkitError::io("create a directory in", &base, e))?
        .keep();
    process::set_mode(&dir, 0o755)?;
    user.chown(&dir)?;
    Ok(dir)
}

/// File-name-safe version of a user-chosen name.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "x".to_string()
    } else {
        s
    }
}

/// A port that was free on 127.0.0.1 a moment ago, never the same twice in this process (parallel
/// tests would otherwise race for the kernel's next ephemeral port).
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| TestkitError::io("bind a free port on", "127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestkitError::io("read the port of", "127.0.0.1", e))?
            .port();
        if handed.insert(port) {
            return Ok(port);
        }
    }
    Err(TestkitError::Config(
        "no unused TCP port found on 127.0.0.1".to_string(),
    ))
}

/// The text of `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Why the server did not start, from the log it wrote during the attempt: its FATAL/PANIC lines (the
/// cause; the lines after them are only the shutdown), else the last lines.
fn failure_reason(log: &str) -> String {
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .take(3)
        .collect();
    if fatal.is_empty() {
        last_lines(log, 3)
    } else {
        fatal.join("\n")
    }
}

/// The last `n` non-empty lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(last_lines("a\nb\n\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn start_failure_reason_prefers_fatal_lines() {
        let log = "LOG:  starting\nFATAL:  using recovery command file \"recovery.conf\" is not supported\nLOG:  shutting down\nLOG:  database system is shut down\n";
        assert_eq!(
            failure_reason(log),
            "FATAL:  using recovery command file \"recovery.conf\" is not supported"
        );
        assert_eq!(failure_reason("a\nb\nc\nd\n"), "b\nc\nd");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("primary"), "primary");
        assert_eq!(sanitize("../x y"), "___x_y");
        assert_eq!(sanitize(""), "x");
        assert_eq!(sanitize(&"a".repeat(100)).len(), 40);
    }

    #[test]
    fn ports_are_not_reused() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn builder_validation() {
        let e = Cluster::builder()
            .tcp_auth(AuthMethod::ScramSha256)
            .try_start()
            .unwrap_err();
        assert!(e.to_string().contains("superuser_password"), "{e}");
        let e = Cluster::builder()
            .tcp_auth(AuthMethod::Cert)
            .try_start()
            .unwrap_err();
        assert!(e.to_string().contains("Tls::On"), "{e}");
        let e = Cluster::builder()
            .local_auth(AuthMethod::Cert)
            .tls(Tls::On)
            .try_start()
            .unwrap_err();
        assert!(e.to_string().contains("Unix sockets"), "{e}");
        let e = Cluster::builder()
            .wal_segsize_mb(3)
            .try_start()
            .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = Cluster::builder()
            .superuser_password("a\nb")
            .try_start()
            .unwrap_err();
        assert!(e.to_string().contains("line breaks"), "{e}");
    }

    #[test]
    fn read_from_offset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        fs::write(&p, "first\nsecond\n").unwrap();
        assert_eq!(read_from(&p, 6), "second\n");
        assert_eq!(read_from(&p, 100), "");
        assert_eq!(read_from(&d.path().join("missing"), 0), "");
    }
}
