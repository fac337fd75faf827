//! Connection service files (`pg_service.conf`): named sections of `keyword=value` lines.
//!
//! Follows libpq's `parseServiceInfo()` / `parseServiceFile()`: the file named by `PGSERVICEFILE` (which
//! must exist) or else `~/.pg_service.conf` (if it exists) is searched first, then
//! `$PGSYSCONFDIR/pg_service.conf` (default [`SYSCONFDIR`], Debian's location). The first file with the
//! section wins. Inside a section, lines are `keyword=value` with nothing trimmed around the `=` and no
//! quoting; the first setting of a keyword wins; `#` starts a comment line; lines of 1023 bytes or more
//! are rejected, as libpq's 1024-byte line buffer does.
//!
//! Reference: <https://www.postgresql.org/docs/current/libpq-pgservice.html>

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::connstring::is_c_space;
use crate::env::Env;
use crate::error::ConnInfoError;
use crate::keyword::Keyword;

type Result<T> = std::result::Result<T, ConnInfoError>;

/// Where the system-wide `pg_service.conf` lives when `PGSYSCONFDIR` is not set. This is the directory
/// Debian's libpq is built with (`--sysconfdir=/etc/postgresql-common`).
pub const SYSCONFDIR: &str = "/etc/postgresql-common";

/// The per-user service file, relative to the home directory.
pub const USER_SERVICE_FILE: &str = ".pg_service.conf";

/// The system-wide service file name inside the sysconf directory.
pub const SYSTEM_SERVICE_FILE: &str = "pg_service.conf";

/// libpq reads service files with `fgets()` into a 1024-byte buffer and rejects lines that fill it.
const LINE_BUFFER: usize = 1024;

/// The settings of one service section.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub name: String,
    /// The file the section was found in.
    pub file: PathBuf,
    /// `keyword=value` lines in file order (a keyword may repeat; the first one counts).
    pub settings: Vec<(Keyword, String)>,
}

impl std::fmt::Debug for ServiceDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.settings.iter().map(|(k, _)| k.name()).collect();
        f.debug_struct("ServiceDefinition")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("keywords", &keys)
            .finish()
    }
}

/// Finds the section for `service` in the service files, in libpq's search order.
pub fn find_service(service: &str, env: &dyn Env) -> Result<ServiceDefinition> {
    let user_file = match env.var("PGSERVICEFILE") {
        // Named explicitly: it must exist.
        Some(path) => Some(PathBuf::from(path)),
        None => env
            .home_dir()
            .map(|home| home.join(USER_SERVICE_FILE))
            .filter(|path| path.metadata().is_ok()),
    };
    if let Some(path) = user_file {
        if let Some(settings) = parse_service_file(&path, service)? {
            return Ok(definition(service, path, settings));
        }
    }

    let sysconfdir = env
        .var("PGSYSCONFDIR")
        .unwrap_or_else(|| SYSCONFDIR.to_string());
    // Plain concatenation, as libpq does (an empty PGSYSCONFDIR means "/pg_service.conf").
    let path = PathBuf::from(format!("{sysconfdir}/{SYSTEM_SERVICE_FILE}"));
    if path.metadata().is_ok() {
        if let Some(settings) = parse_service_file(&path, service)? {
            return Ok(definition(service, path, settings));
        }
    }
    Err(ConnInfoError::ServiceNotFound(service.to_string()))
}

fn definition(name: &str, file: PathBuf, settings: Vec<(Keyword, String)>) -> ServiceDefinition {
    ServiceDefinition {
        name: name.to_string(),
        file,
        settings,
    }
}

/// Reads one service file and returns the settings of the `[service]` section, or `None` if the file has
/// no such section.
pub fn parse_service_file(path: &Path, service: &str) -> Result<Option<Vec<(Keyword, String)>>> {
    let mut file =
        File::open(path).map_err(|_| ConnInfoError::ServiceFileNotFound(path.to_path_buf()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| ConnInfoError::ServiceFileRead {
            path: path.to_path_buf(),
            source,
        })?;
    parse_service_text(&bytes, path, service)
}

/// The parsing half of [`parse_service_file`]; `path` is only used in error messages.
pub fn parse_service_text(
    bytes: &[u8],
    path: &Path,
    service: &str,
) -> Result<Option<Vec<(Keyword, String)>>> {
    let mut in_group = false;
    let mut found = false;
    let mut settings = Vec::new();

    for (index, raw) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let line_number = index + 1;
        // C string semantics: a NUL ends the line.
        let raw = match raw.iter().position(|&b| b == 0) {
            Some(nul) => &raw[..nul],
            None => raw,
        };
        if raw.len() >= LINE_BUFFER - 1 {
            return Err(ConnInfoError::ServiceLineTooLong {
                path: path.to_path_buf(),
                line: line_number,
            });
        }
        let line = trim_c_space(raw);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }

        if line[0] == b'[' {
            if in_group {
                // End of the wanted section.
                break;
            }
            let name = service.as_bytes();
            in_group = line.len() > name.len() + 1
                && &line[1..=name.len()] == name
                && line[name.len() + 1] == b']';
            found |= in_group;
            continue;
        }
        if !in_group {
            continue;
        }

        let line = std::str::from_utf8(line).map_err(|_| ConnInfoError::ServiceNotUtf8 {
            path: path.to_path_buf(),
            line: line_number,
        })?;
        let syntax_error = || ConnInfoError::ServiceSyntax {
            path: path.to_path_buf(),
            line: line_number,
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax_error)?;
        if key == "service" {
            return Err(ConnInfoError::NestedService {
                path: path.to_path_buf(),
                line: line_number,
            });
        }
        let keyword = Keyword::from_name(key).ok_or_else(syntax_error)?;
        settings.push((keyword, value.to_string()));
    }
    Ok(found.then_some(settings))
}

fn trim_c_space(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_c_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_c_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;
    use std::fs;

    fn parse(text: &str, service: &str) -> Result<Option<Vec<(Keyword, String)>>> {
        parse_service_text(text.as_bytes(), Path::new("/svc.conf"), service)
    }

    fn settings(list: &[(Keyword, &str)]) -> Option<Vec<(Keyword, String)>> {
        Some(list.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    const SAMPLE: &str = "\
# comment
[other]
host=elsewhere
bogus line that is never parsed

  [main]  
host=db1.example.com
port=5433
 # indented comment
  user=replicator   
dbname=postgres
password=with = sign
host=ignored-second
[next]
host=x
";

    #[test]
    fn finds_the_section_and_keeps_file_order() {
        assert_eq!(
            parse(SAMPLE, "main").unwrap(),
            settings(&[
                (Keyword::Host, "db1.example.com"),
                (Keyword::Port, "5433"),
                (Keyword::User, "replicator"),
                (Keyword::Dbname, "postgres"),
                (Keyword::Password, "with = sign"),
                (Keyword::Host, "ignored-second"),
            ])
        );
        assert_eq!(
            parse(SAMPLE, "other").unwrap_err().to_string(),
            "syntax error in service file \"/svc.conf\", line 4: expected keyword=value with a libpq keyword"
        );
        assert_eq!(parse(SAMPLE, "missing").unwrap(), None);
        assert_eq!(parse(SAMPLE, "mai").unwrap(), None);
        assert_eq!(parse("", "main").unwrap(), None);
    }

    #[test]
    fn section_header_rules_are_libpqs() {
        // Text after the closing bracket is ignored; the name must match exactly up to ']'.
        assert_eq!(
            parse("[main] trailing\nport=1\n", "main").unwrap(),
            settings(&[(Keyword::Port, "1")])
        );
        assert_eq!(parse("[main\nport=1\n", "main").unwrap(), None);
        assert_eq!(parse("[mainx]\nport=1\n", "main").unwrap(), None);
        // An empty section still counts as found.
        assert_eq!(parse("[main]\n[b]\n", "main").unwrap(), settings(&[]));
        // Windows line endings are whitespace.
        assert_eq!(
            parse("[main]\r\nport=1\r\n", "main").unwrap(),
            settings(&[(Keyword::Port, "1")])
        );
    }

    #[test]
    fn line_errors() {
        let err = |text: &str| parse(text, "s").unwrap_err().to_string();
        assert_eq!(
            err("[s]\nhost db\n"),
            "syntax error in service file \"/svc.conf\", line 2: expected keyword=value with a libpq keyword"
        );
        // No trimming around '=': "host " is not a keyword.
        assert_eq!(
            err("[s]\nhost = db\n"),
            "syntax error in service file \"/svc.conf\", line 2: expected keyword=value with a libpq keyword"
        );
        assert_eq!(
            err("[s]\nservice=t\n"),
            "nested service specifications not supported in service file \"/svc.conf\", line 2"
        );
        assert_eq!(
            parse_service_text(b"[s]\nhost=\xff\n", Path::new("/svc.conf"), "s")
                .unwrap_err()
                .to_string(),
            "service file \"/svc.conf\", line 2 is not valid UTF-8"
        );
    }

    #[test]
    fn long_lines_are_rejected_at_libpqs_limit() {
        let ok = format!("[s]\nhost={}\n", "a".repeat(1021 - 5));
        assert!(parse(&ok, "s").is_ok());
        let too_long = format!("[s]\nhost={}\n", "a".repeat(1022 - 5));
        assert_eq!(
            parse(&too_long, "s").unwrap_err().to_string(),
            "line 2 too long in service file \"/svc.conf\""
        );
        // Even outside the wanted section.
        let too_long = format!("#{}\n[s]\n", "x".repeat(2000));
        assert!(parse(&too_long, "s").is_err());
    }

    #[test]
    fn search_order_user_file_then_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let sys = dir.path().join("etc");
        fs::create_dir_all(&home).unwrap();
        fs::create_dir_all(&sys).unwrap();
        fs::write(home.join(".pg_service.conf"), "[a]\nport=1\n").unwrap();
        fs::write(sys.join("pg_service.conf"), "[a]\nport=2\n[b]\nport=3\n").unwrap();
        let env = MapEnv::new()
            .with_home(&home)
            .with_var("PGSYSCONFDIR", sys.to_str().unwrap());

        let a = find_service("a", &env).unwrap();
        assert_eq!(a.settings, vec![(Keyword::Port, "1".to_string())]);
        assert_eq!(a.file, home.join(".pg_service.conf"));
        let b = find_service("b", &env).unwrap();
        assert_eq!(b.settings, vec![(Keyword::Port, "3".to_string())]);
        assert_eq!(
            find_service("c", &env).unwrap_err().to_string(),
            "definition of service \"c\" not found; add a [c] section to ~/.pg_service.conf or the file named by PGSERVICEFILE, or drop service="
        );

        // PGSERVICEFILE replaces ~/.pg_service.conf, and must exist.
        let custom = dir.path().join("custom.conf");
        fs::write(&custom, "[a]\nport=9\n").unwrap();
        let env2 = env
            .clone()
            .with_var("PGSERVICEFILE", custom.to_str().unwrap());
        assert_eq!(
            find_service("a", &env2).unwrap().settings,
            vec![(Keyword::Port, "9".to_string())]
        );
        assert_eq!(
            find_service("b", &env2).unwrap().file,
            sys.join("pg_service.conf")
        );
        let env3 = env.with_var("PGSERVICEFILE", dir.path().join("nope").to_str().unwrap());
        let msg = find_service("a", &env3).unwrap_err().to_string();
        assert!(
            msg.starts_with("service file \"") && msg.ends_with("nope\" not found"),
            "{msg}"
        );
    }

    #[test]
    fn missing_home_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let env = MapEnv::new()
            .with_home(dir.path())
            .with_var("PGSYSCONFDIR", dir.path().join("none").to_str().unwrap());
        assert!(matches!(
            find_service("x", &env),
            Err(ConnInfoError::ServiceNotFound(name)) if name == "x"
        ));
    }

    #[test]
    fn debug_does_not_show_values() {
        let def = definition(
            "s",
            PathBuf::from("/f"),
            vec![(Keyword::Password, "hunter2".to_string())],
        );
        assert!(!format!("{def:?}").contains("hunter2"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), name in "[a-z]{0,3}") {
                let _ = parse_service_text(&bytes, Path::new("/p"), &name);
            }
        }
    }
}
