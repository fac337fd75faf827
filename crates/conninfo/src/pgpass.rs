//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`): `hostname:port:database:username:password`
//! lines, the first match wins.
//!
//! Follows libpq's `passwordFromFile()` / `pwdfMatchesString()`: a field that is exactly `*` matches
//! anything; `\` escapes the next character (so `\:` and `\\`); lines starting with `#` are comments;
//! trailing CR/LF is ignored. The host to match is `localhost` when the host is empty or is the default
//! socket directory ([`crate::DEFAULT_PGSOCKET_DIR`]), otherwise the `host` value as written (or
//! `hostaddr` when no host was given). A file that is not a regular file, or that group or others may
//! access, is ignored with a warning, exactly as libpq does; a missing file is silently ignored.
//!
//! Reference: <https://www.postgresql.org/docs/current/libpq-pgpass.html>

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::password::{Password, PasswordSource};
use crate::{DEFAULT_HOST, DEFAULT_PGSOCKET_DIR, DEF_PGPORT_STR};

/// The name of the password file in the home directory.
pub const PGPASSFILE: &str = ".pgpass";

/// The result of looking in a password file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassfileLookup {
    /// The password of the first matching line, if it is not empty.
    pub password: Option<Password>,
    /// Why the file was ignored, in libpq's words (`password file "…" has group or world access; …`).
    pub warning: Option<String>,
}

/// Looks up the password for `host`/`port`/`dbname`/`user` in the password file at `path`.
///
/// `host` is the `host` setting for this target (or `hostaddr` if `host` was empty); `port` is the port
/// as written (empty means the default).
pub fn lookup(path: &Path, host: &str, port: &str, dbname: &str, user: &str) -> PassfileLookup {
    if dbname.is_empty() || user.is_empty() {
        return PassfileLookup::default();
    }
    let host = if host.is_empty() || host == DEFAULT_PGSOCKET_DIR {
        DEFAULT_HOST
    } else {
        host
    };
    let port = if port.is_empty() {
        DEF_PGPORT_STR
    } else {
        port
    };

    let Ok(meta) = fs::metadata(path) else {
        return PassfileLookup::default();
    };
    if !meta.is_file() {
        return warn(format!(
            "password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return warn(format!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        ));
    }
    let Ok(contents) = fs::read(path) else {
        return PassfileLookup::default();
    };
    let password = find_password(&contents, host, port, dbname, user)
        .filter(|p| !p.is_empty())
        .map(|p| Password::from_bytes(p, PasswordSource::PasswordFile(path.to_path_buf())));
    PassfileLookup {
        password,
        warning: None,
    }
}

fn warn(message: String) -> PassfileLookup {
    PassfileLookup {
        password: None,
        warning: Some(message),
    }
}

/// The password field (unescaped) of the first line that matches, from the file's bytes. The host must
/// already be mapped (`localhost` for the default socket).
pub fn find_password(
    contents: &[u8],
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<Vec<u8>> {
    for line in contents.split(|&b| b == b'\n') {
        if line.first() == Some(&b'#') {
            continue;
        }
        // pg_strip_crlf(): drop every trailing CR and LF.
        let mut line = line;
        while let [rest @ .., b'\r' | b'\n'] = line {
            line = rest;
        }
        if line.is_empty() {
            continue;
        }
        let rest = match_field(line, host.as_bytes())
            .and_then(|rest| match_field(rest, port.as_bytes()))
            .and_then(|rest| match_field(rest, dbname.as_bytes()))
            .and_then(|rest| match_field(rest, user.as_bytes()));
        if let Some(rest) = rest {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// libpq's `pwdfMatchesString()`: if the field at the start of `line` matches `token`, the rest of the
/// line after the field's `:`.
fn match_field<'a>(line: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if line.starts_with(b"*:") {
        return Some(&line[2..]);
    }
    let mut i = 0;
    let mut t = 0;
    while i < line.len() {
        let mut escaped = false;
        if line[i] == b'\\' {
            i += 1;
            escaped = true;
        }
        let c = *line.get(i)?;
        if c == b':' && t == token.len() && !escaped {
            return Some(&line[i + 1..]);
        }
        if t == token.len() || c != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field runs to the first unescaped `:` or the end of the line; `\x` stands for `x`.
fn unescape_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() && field[i] != b':' {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn find(contents: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
        find_password(contents.as_bytes(), host, port, db, user)
            .map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn matching_table() {
        let file = "\
# comment line
db1:5432:app:alice:first
*:5433:*:bob:wild
db\\:odd:5432:*:*:colon-host
h:5432:d:u:p\\:w\\\\x:extra
h2:5432:d:u:trailing\\
*:*:*:*:catch-all
";
        let cases = [
            (("db1", "5432", "app", "alice"), Some("first")),
            (("db1", "5432", "other", "alice"), Some("catch-all")),
            (("anything", "5433", "x", "bob"), Some("wild")),
            (("db:odd", "5432", "x", "y"), Some("colon-host")),
            (("h", "5432", "d", "u"), Some("p:w\\x")),
            (("h2", "5432", "d", "u"), Some("trailing\\")),
            (("DB1", "5432", "app", "alice"), Some("catch-all")),
        ];
        for ((h, p, d, u), want) in cases {
            assert_eq!(find(file, h, p, d, u).as_deref(), want, "{h}:{p}:{d}:{u}");
        }
    }

    #[test]
    fn field_rules() {
        // A prefix is not a match, nor is a longer token.
        assert_eq!(find("db:5432:d:u:x\n", "db1", "5432", "d", "u"), None);
        assert_eq!(find("db1:5432:d:u:x\n", "db", "5432", "d", "u"), None);
        // '*' only as the whole field.
        assert_eq!(find("d*:5432:d:u:x\n", "db", "5432", "d", "u"), None);
        assert_eq!(
            find("\\*:5432:d:u:x\n", "*", "5432", "d", "u").as_deref(),
            Some("x")
        );
        // Too few fields: no match.
        assert_eq!(find("h:5432:d:u\n", "h", "5432", "d", "u"), None);
        // CRLF and a missing final newline are fine; an empty password is returned as empty.
        assert_eq!(
            find("h:1:d:u:pw\r\n", "h", "1", "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(
            find("h:1:d:u:pw", "h", "1", "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(find("h:1:d:u:\n", "h", "1", "d", "u").as_deref(), Some(""));
        // Leading '#' only, not indented.
        assert_eq!(
            find(" #h:1:d:u:pw\n", " #h", "1", "d", "u").as_deref(),
            Some("pw")
        );
        // The first match wins even if later lines are more specific.
        assert_eq!(
            find("*:*:*:*:a\nh:1:d:u:b\n", "h", "1", "d", "u").as_deref(),
            Some("a")
        );
        // A backslash at the very end of a field cannot escape anything.
        assert_eq!(find("h\\", "h", "1", "d", "u"), None);
    }

    fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn lookup_maps_default_socket_to_localhost_and_empty_port_to_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "pgpass", "localhost:5432:db:user:sock\n", 0o600);
        for host in ["", DEFAULT_PGSOCKET_DIR, "localhost"] {
            let found = lookup(&path, host, "", "db", "user");
            assert_eq!(found.warning, None);
            let pw = found.password.unwrap();
            assert_eq!(pw.as_str(), Some("sock"));
            assert_eq!(pw.source(), &PasswordSource::PasswordFile(path.clone()));
        }
        // Another socket directory is matched literally.
        assert_eq!(lookup(&path, "/tmp", "5432", "db", "user").password, None);
        // Empty database or user: no lookup at all.
        assert_eq!(lookup(&path, "", "", "", "user"), PassfileLookup::default());
    }

    #[test]
    fn lookup_skips_insecure_or_odd_files_with_libpqs_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "pgpass", "*:*:*:*:pw\n", 0o640);
        let found = lookup(&path, "h", "1", "d", "u");
        assert_eq!(found.password, None);
        assert_eq!(
            found.warning.unwrap(),
            format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            )
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(lookup(&path, "h", "1", "d", "u").warning.is_some());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            lookup(&path, "h", "1", "d", "u").password.unwrap().as_str(),
            Some("pw")
        );

        let found = lookup(dir.path(), "h", "1", "d", "u");
        assert_eq!(
            found.warning.unwrap(),
            format!(
                "password file \"{}\" is not a plain file",
                dir.path().display()
            )
        );
        // Missing file: nothing, no warning.
        assert_eq!(
            lookup(&dir.path().join("missing"), "h", "1", "d", "u"),
            PassfileLookup::default()
        );
    }

    #[test]
    fn empty_password_in_file_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "pgpass", "h:1:d:u:\n*:*:*:*:later\n", 0o600);
        assert_eq!(lookup(&path, "h", "1", "d", "u"), PassfileLookup::default());
    }

    #[test]
    fn warning_never_contains_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "pgpass", "*:*:*:*:s3cr3t\n", 0o666);
        let found = lookup(&path, "h", "1", "d", "u");
        assert!(!found.warning.unwrap().contains("s3cr3t"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                            host in "[a-z:*\\\\]{0,4}", port in "[0-9]{0,4}") {
                let _ = find_password(&bytes, &host, &port, "d", "u");
            }

            /// Escaping every ':' and '\' in the fields makes any value match itself.
            #[test]
            fn escaped_fields_match(host in "[a-z:\\\\]{1,6}", pw in "[a-z:\\\\]{1,6}") {
                let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
                let line = format!("{}:5432:d:u:{}\n", esc(&host), esc(&pw));
                let found = find_password(line.as_bytes(), &host, "5432", "d", "u");
                prop_assert_eq!(found, Some(pw.into_bytes()));
            }
        }
    }
}
