//! Passwords that cannot leak into logs, and where each one came from.
//!
//! A [`Password`] prints as `********` through both `Debug` and `Display`; the bytes are only reachable
//! through [`Password::as_bytes`] / [`Password::as_str`], which the authentication code calls. The
//! [`PasswordSource`] matters when walrelay writes `primary_conninfo` for a new standby: a password the
//! user passed (connection string, `PGPASSWORD`, service file) may be copied there, one that was merely
//! found in `~/.pgpass` must not be.

use std::fmt;
use std::path::PathBuf;

/// What a password looks like in logs, error messages and redacted connection strings.
pub const REDACTED: &str = "********";

/// Where a password came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password=` in the connection string (or URI `user:password@`), or set by the caller.
    ConnectionString,
    /// `password=` in the service file section named by `service` / `PGSERVICE`.
    ServiceFile,
    /// The `PGPASSWORD` environment variable.
    Environment,
    /// A matching line of the password file (`passfile`, `PGPASSFILE` or `~/.pgpass`).
    PasswordFile(PathBuf),
}

impl PasswordSource {
    /// True when the user handed this password to walrelay as part of the connection settings, so it may
    /// be repeated in a generated `primary_conninfo`. A password found in a password file is not: the
    /// standby should find it in its own password file (or be told with an explicit option).
    pub fn was_passed_by_user(&self) -> bool {
        !matches!(self, PasswordSource::PasswordFile(_))
    }
}

/// A password (or TLS key passphrase). `Debug` and `Display` print `********`.
///
/// Held as bytes: a password file may contain any bytes, and md5/SCRAM authentication work on bytes
/// (SCRAM applies SASLprep only when the bytes are valid UTF-8, as libpq does).
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    bytes: Vec<u8>,
    source: PasswordSource,
}

impl Password {
    pub fn new(password: impl Into<String>, source: PasswordSource) -> Self {
        Password {
            bytes: password.into().into_bytes(),
            source,
        }
    }

    pub fn from_bytes(bytes: impl Into<Vec<u8>>, source: PasswordSource) -> Self {
        Password {
            bytes: bytes.into(),
            source,
        }
    }

    /// The secret itself. Never log it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The secret as text, if it is valid UTF-8. Never log it.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn source(&self) -> &PasswordSource {
        &self.source
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password({REDACTED}, from {:?})", self.source)
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_secret() {
        let p = Password::new("hunter2", PasswordSource::ConnectionString);
        assert_eq!(p.to_string(), "********");
        let dbg = format!("{p:?} {p:#?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(p.as_str(), Some("hunter2"));
        assert_eq!(p.as_bytes(), b"hunter2");
    }

    #[test]
    fn non_utf8_password_bytes_are_kept() {
        let p = Password::from_bytes(vec![0xff, b'a'], PasswordSource::Environment);
        assert_eq!(p.as_str(), None);
        assert_eq!(p.as_bytes(), &[0xff, b'a']);
    }

    #[test]
    fn only_password_file_passwords_are_not_user_passed() {
        assert!(PasswordSource::ConnectionString.was_passed_by_user());
        assert!(PasswordSource::Environment.was_passed_by_user());
        assert!(PasswordSource::ServiceFile.was_passed_by_user());
        assert!(!PasswordSource::PasswordFile(PathBuf::from("/x/.pgpass")).was_passed_by_user());
    }
}
