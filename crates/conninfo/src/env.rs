//! The process environment as libpq sees it: `PG*` variables, the home directory, the OS user name.
//!
//! Resolution takes an [`Env`] instead of reading the process environment directly, so tests (and callers
//! that must ignore the caller's environment) can supply their own. [`ProcessEnv`] is the real thing;
//! [`MapEnv`] is a fixed set of values.

use std::collections::HashMap;
use std::path::PathBuf;

/// Where libpq-style defaults come from.
pub trait Env {
    /// An environment variable. `Some("")` (set but empty) is different from `None` (unset), as in libpq.
    fn var(&self, name: &str) -> Option<String>;

    /// The home directory for `~/.pgpass`, `~/.pg_service.conf` and `~/.postgresql/`: `$HOME` if set and
    /// not empty, else the password database entry of the effective user (libpq's
    /// `pqGetHomeDirectory()`).
    fn home_dir(&self) -> Option<PathBuf>;

    /// The effective user's login name, libpq's default `user` (`pg_fe_getauthname()`).
    fn os_user_name(&self) -> Option<String>;
}

/// The real process environment and password database.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        let value = std::env::var_os(name)?;
        match value.into_string() {
            Ok(s) => Some(s),
            Err(_) => {
                // Connection settings are text; a value that is not UTF-8 cannot be passed on faithfully.
                tracing::warn!(
                    variable = name,
                    "ignoring environment variable that is not valid UTF-8"
                );
                None
            }
        }
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match self.var("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.dir),
        }
    }

    fn os_user_name(&self) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
    }
}

/// A fixed environment: given variables, home directory and user name, nothing else.
#[derive(Clone, Debug, Default)]
pub struct MapEnv {
    vars: HashMap<String, String>,
    home: Option<PathBuf>,
    user: Option<String>,
}

impl MapEnv {
    /// No variables, no home directory, no user name.
    pub fn new() -> Self {
        MapEnv::default()
    }

    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    /// `HOME` from the variables if set and not empty, else the configured home directory.
    fn home_dir(&self) -> Option<PathBuf> {
        match self.vars.get("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => self.home.clone(),
        }
    }

    fn os_user_name(&self) -> Option<String> {
        self.user.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_env_distinguishes_empty_from_unset() {
        let env = MapEnv::new().with_var("PGHOST", "");
        assert_eq!(env.var("PGHOST"), Some(String::new()));
        assert_eq!(env.var("PGPORT"), None);
    }

    #[test]
    fn map_env_home_prefers_non_empty_home_variable() {
        let env = MapEnv::new().with_home("/h");
        assert_eq!(env.home_dir(), Some(PathBuf::from("/h")));
        let env = env.with_var("HOME", "");
        assert_eq!(env.home_dir(), Some(PathBuf::from("/h")));
        let env = env.with_var("HOME", "/x");
        assert_eq!(env.home_dir(), Some(PathBuf::from("/x")));
    }

    #[test]
    fn process_env_knows_the_effective_user() {
        // Runs as whatever user the tests run as; every CI and dev machine has a passwd entry for it.
        let name = ProcessEnv.os_user_name();
        assert!(name.is_some_and(|n| !n.is_empty()));
    }
}
