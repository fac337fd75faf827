//! `--auth-file`: who may connect with `--auth scram`, in PgBouncer's `userlist.txt` format.
//!
//! ```text
//! ; comments start with ; or #
//! "replicator" "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$StoredKeyBase64=:ServerKeyBase64="
//! "archiver"   "a plain password"
//! ```
//!
//! One user per line: the name and the secret, each in double quotes (`""` inside stands for
//! `"`). A secret is a SCRAM-SHA-256 verifier as PostgreSQL stores it (copy it from
//! `SELECT rolpassword FROM pg_authid WHERE rolname = '…'`), or a plain password, from which a
//! verifier is made at load time (printable ASCII only: PostgreSQL normalizes other passwords
//! with SASLprep first, so give their verifier instead). MD5 hashes cannot serve SCRAM and are
//! refused. The file's secrets are never logged.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;
use walrelay_protocol::scram::{ScramSecret, DEFAULT_ITERATIONS, DEFAULT_SALT_BYTES};

use crate::random::random_bytes;

/// Why an auth file cannot be used.
#[derive(Debug, Error)]
pub enum UserListError {
    #[error("read auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("auth file {path} lists no user: add lines like \"replicator\" \"SCRAM-SHA-256$…\"")]
    Empty { path: String },
    /// Plain passwords in a file others can read (as libpq refuses such a password file).
    #[error("auth file {path} holds plain passwords and others can read it (mode {mode:04o}): chmod 600 {path}, or give SCRAM verifiers instead")]
    Exposed { path: String, mode: u32 },
}

/// The users and their SCRAM verifiers.
#[derive(Clone, Default)]
pub struct UserList {
    users: HashMap<String, ScramSecret>,
    /// Some secret was a plain password.
    plaintext: bool,
}

impl std::fmt::Debug for UserList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("UserList").field("users", &names).finish()
    }
}

/// Reads one double-quoted field; returns it and the rest of the line.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut out = String::new();
    let mut rest = chars.peekable();
    while let Some((i, c)) = rest.next() {
        if c == '"' {
            if rest.peek().map(|&(_, c)| c) == Some('"') {
                rest.next();
                out.push('"');
            } else {
                return Some((out, &s[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

impl UserList {
    pub fn load(path: &Path) -> Result<UserList, UserListError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UserListError::Read {
            path: shown.clone(),
            source,
        })?;
        let list = UserList::parse(&text).map_err(|(line, reason)| UserListError::Line {
            path: shown.clone(),
            line,
            reason,
        })?;
        if list.users.is_empty() {
            return Err(UserListError::Empty { path: shown });
        }
        if list.plaintext {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| UserListError::Read {
                    path: shown.clone(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o077 != 0 {
                return Err(UserListError::Exposed { path: shown, mode });
            }
        }
        Ok(list)
    }

    /// Parses the file's text; an error names the line (1-based) and why.
    pub fn parse(text: &str) -> Result<UserList, (usize, String)> {
        let mut users = HashMap::new();
        let mut plaintext = false;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let t = line.trim();
            if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
                continue;
            }
            let (user, rest) = quoted(t).ok_or((
                n,
                "expected \"user\" \"secret\" (each in double quotes)".to_string(),
            ))?;
            let (secret, _) = quoted(rest).ok_or((
                n,
                format!("no secret for user {user:?}: expected \"user\" \"secret\""),
            ))?;
            if user.is_empty() {
                return Err((n, "empty user name".into()));
            }
            if users.contains_key(&user) {
                return Err((
                    n,
                    format!("user {user:?} is listed twice: keep one line (which secret counts would be a guess)"),
                ));
            }
            plaintext |= !secret.starts_with("SCRAM-SHA-256$");
            users.insert(user.clone(), verifier(&user, &secret).map_err(|r| (n, r))?);
        }
        Ok(UserList { users, plaintext })
    }

    /// The verifier of `user`, if listed.
    pub fn secret(&self, user: &str) -> Option<&ScramSecret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn verifier(user: &str, secret: &str) -> Result<ScramSecret, String> {
    if secret.starts_with("SCRAM-SHA-256$") {
        return secret
            .parse()
            .map_err(|e| format!("the secret of user {user:?} is {e}"));
    }
    let looks_md5 = secret.len() == 35
        && secret.starts_with("md5")
        && secret[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if looks_md5 {
        return Err(format!(
            "the secret of user {user:?} is an MD5 hash, which cannot serve SCRAM-SHA-256: give its SCRAM verifier (SET password_encryption = 'scram-sha-256' and set the password again) or the password"
        ));
    }
    if secret.is_empty() || !secret.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "the password of user {user:?} is empty or not printable ASCII: give its SCRAM verifier instead"
        ));
    }
    let mut salt = [0u8; DEFAULT_SALT_BYTES];
    random_bytes(&mut salt).map_err(|e| format!("cannot make a salt: {e}"))?;
    Ok(ScramSecret::from_password(
        secret,
        &salt,
        DEFAULT_ITERATIONS,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbouncer_userlists() {
        let verifier = ScramSecret::from_password("pw", b"0123456789abcdef", 4096).to_string();
        let text = format!(
            "; a comment\n# another\n\n\"replicator\" \"{verifier}\"\n  \"a \"\"quoted\"\" name\" \"plain pass\" trailing words\n"
        );
        let list = UserList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.secret("replicator").unwrap().to_string(), verifier);
        let plain = list.secret("a \"quoted\" name").unwrap();
        assert_eq!(
            *plain,
            ScramSecret::from_password("plain pass", &plain.salt, 4096)
        );
        assert!(list.secret("nobody").is_none());
        assert!(!format!("{list:?}").contains("SCRAM"), "{list:?}");
    }

    #[test]
    fn refuses_duplicates_and_exposed_plain_passwords() {
        use std::os::unix::fs::PermissionsExt;
        let e = UserList::parse("\"u\" \"one\"\n\"u\" \"two\"\n").unwrap_err();
        assert_eq!(e.0, 2);
        assert!(e.1.contains("listed twice"), "{}", e.1);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("users.txt");
        std::fs::write(&f, "\"u\" \"plain\"\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = UserList::load(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        assert!(!e.contains("plain\""), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(UserList::load(&f).unwrap().len(), 1);
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (text, want) in [
            ("replicator pw", "double quotes"),
            ("\"replicator\"", "no secret"),
            (
                "\"replicator\" \"md5a3556571e93b0d20722ba62be61e8c2d\"",
                "MD5",
            ),
            (
                "\"r\" \"SCRAM-SHA-256$4096:abc\"",
                "not a SCRAM-SHA-256 verifier",
            ),
            ("\"r\" \"\"", "empty or not printable"),
            ("\"r\" \"pässword\"", "empty or not printable"),
            ("\"\" \"pw\"", "empty user name"),
            ("\"unterminated \"pw\"", "no secret"),
        ] {
            let (line, reason) = UserList::parse(text).unwrap_err();
            assert_eq!(line, 1);
            assert!(reason.contains(want), "{text:?}: {reason}");
            assert!(!reason.contains("pässword"), "the password is not echoed");
        }
    }
}
