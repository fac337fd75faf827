//! Connection options shared by every subcommand, pg_basebackup style: `-d CONNSTR` plus `-h/-p/-U`
//! overrides, libpq environment variables, `.pgpass`, service files, and `-w`/`-W` for the prompt.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use walrelay_client::{ConnectParams, Endpoint, PasswordLookup, ReplicationMode, Secret};
use walrelay_conninfo::{ConnInfo, ConnectionConfig, ProcessEnv};

#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Connection string or URI (`host=… user=…`, `postgresql://…`), as libpq takes it.
    #[arg(short = 'd', long = "dbname", value_name = "CONNSTR")]
    pub dbname: Option<String>,
    /// Server host name or socket directory (overrides the connection string).
    #[arg(short = 'h', long = "host", value_name = "HOSTNAME")]
    pub host: Option<String>,
    /// Server port (overrides the connection string).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// User name to connect as (overrides the connection string).
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
    /// Never prompt for a password.
    #[arg(short = 'w', long = "no-password", conflicts_with = "password")]
    pub no_password: bool,
    /// Prompt for a password before connecting.
    #[arg(short = 'W', long = "password")]
    pub password: bool,
}

/// Resolved settings: what to connect with, and the libpq settings (for `primary_conninfo`).
pub struct Resolved {
    pub config: ConnectionConfig,
    pub prompt: Option<PasswordLookup>,
}

impl ConnectionArgs {
    pub fn resolve(&self) -> Result<Resolved> {
        let info = ConnInfo::from_command_line(
            self.dbname.as_deref(),
            self.host.as_deref(),
            self.port.as_deref(),
            self.username.as_deref(),
        )
        .context("invalid connection options")?;
        let config =
            ConnectionConfig::resolve(&info, &ProcessEnv).context("invalid connection settings")?;
        let prompt = self.password_prompt(config.user())?;
        Ok(Resolved { config, prompt })
    }

    /// `-W` asks once up front; otherwise, when a terminal is attached and `-w` is not given, ask when
    /// the server wants a password that no setting provides (like pg_basebackup).
    fn password_prompt(&self, user: &str) -> Result<Option<PasswordLookup>> {
        if self.no_password {
            return Ok(None);
        }
        if self.password {
            let pw = match rpassword::prompt_password(format!("Password for user {user}: ")) {
                Ok(pw) => pw,
                // No terminal (a script, cron, systemd): the first line of stdin, as psql and
                // pg_basebackup read it then.
                Err(_) => {
                    let mut line = String::new();
                    let read = std::io::stdin().read_line(&mut line).unwrap_or(0);
                    if read == 0 {
                        return Err(crate::exit::usage(
                            "-W asks for the password, but there is no terminal to ask on and nothing on stdin: pipe it in, set PGPASSWORD, use ~/.pgpass, or drop -W",
                        ));
                    }
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            let secret = Secret::new(pw);
            return Ok(Some(Arc::new(move |_: &Endpoint| Some(secret.clone()))));
        }
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        let user = user.to_string();
        let cached: Arc<Mutex<Option<Secret>>> = Arc::new(Mutex::new(None));
        Ok(Some(Arc::new(move |_: &Endpoint| {
            let mut c = cached.lock().ok()?;
            if c.is_none() {
                let pw = rpassword::prompt_password(format!("Password for user {user}: ")).ok()?;
                *c = Some(Secret::new(pw));
            }
            c.clone()
        })))
    }
}

impl Resolved {
    pub fn params(&self, replication: ReplicationMode) -> Result<ConnectParams> {
        let mut p =
            walrelay_client::connect_params(&self.config, replication, self.prompt.clone())?;
        if p.application_name.is_none() {
            p.application_name = Some("walrelay".to_string());
        }
        Ok(p)
    }

    /// Parameters for an SQL session (catalog queries the replication protocol cannot answer).
    pub fn sql_params(&self) -> Result<ConnectParams> {
        self.params(ReplicationMode::Off)
    }
}
