//! Where to connect: one [`Target`] per entry of the `host` / `hostaddr` lists, tried in order.
//!
//! libpq's rules (`pqConnectOptions2()`): a `hostaddr` entry means TCP to that numeric address (the `host`
//! entry, if any, is still the name for TLS and `.pgpass`); otherwise a `host` entry starting with `/` or
//! `@` is a Unix-socket directory (`@` = Linux abstract namespace), any other `host` is a TCP host name;
//! an empty entry means the default socket directory, [`crate::DEFAULT_PGSOCKET_DIR`].

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One place to try.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// TCP. `host` is the name given in `host` (used for TLS SNI, `sslmode=verify-full` and `.pgpass`);
    /// `addr` is the numeric `hostaddr`, which skips name resolution. At least one of them is set.
    Tcp {
        host: Option<String>,
        addr: Option<IpAddr>,
        port: u16,
    },
    /// A Unix-domain socket: `socket` is the socket file itself, `dir/.s.PGSQL.port`. A path starting
    /// with `@` names a socket in Linux's abstract namespace (see [`Target::abstract_socket_name`]).
    Unix { socket: PathBuf, port: u16 },
}

impl Target {
    pub fn port(&self) -> u16 {
        match self {
            Target::Tcp { port, .. } | Target::Unix { port, .. } => *port,
        }
    }

    /// The host name to verify the server certificate against (`sslmode=verify-full`): the `host`
    /// entry. `None` for Unix sockets and for a bare `hostaddr`, where libpq refuses verify-full
    /// ("host name must be specified for a verified SSL connection").
    pub fn tls_host_name(&self) -> Option<&str> {
        match self {
            Target::Tcp {
                host: Some(host), ..
            } if !host.is_empty() => Some(host),
            _ => None,
        }
    }

    /// The name to send as TLS SNI when `sslsni` is on: the host name, unless it is an IP address
    /// literal (libpq skips names made only of digits and dots, and names containing `:`).
    pub fn sni_host_name(&self) -> Option<&str> {
        self.tls_host_name().filter(|host| {
            let numeric_v4 = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            !numeric_v4 && !host.contains(':')
        })
    }

    /// For a socket in the abstract namespace (`host=@name`), the name without the leading `@`.
    pub fn abstract_socket_name(&self) -> Option<&str> {
        match self {
            Target::Unix { socket, .. } => socket.to_str()?.strip_prefix('@'),
            Target::Tcp { .. } => None,
        }
    }

    /// The socket file for a Unix target.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Target::Unix { socket, .. } => Some(socket),
            Target::Tcp { .. } => None,
        }
    }
}

impl fmt::Display for Target {
    /// In libpq's words, for "connection to server … failed" messages:
    /// `at "db1" (10.0.0.5), port 5432` or `on socket "/var/run/postgresql/.s.PGSQL.5432"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, addr, port } => match (host.as_deref(), addr) {
                (Some(h), Some(a)) if !h.is_empty() => write!(f, "at \"{h}\" ({a}), port {port}"),
                (Some(h), None) => write!(f, "at \"{h}\", port {port}"),
                (_, Some(a)) => write!(f, "at \"{a}\", port {port}"),
                (None, None) => write!(f, "at port {port}"),
            },
            Target::Unix { socket, .. } => write!(f, "on socket \"{}\"", socket.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: Option<&str>, addr: Option<&str>) -> Target {
        Target::Tcp {
            host: host.map(str::to_string),
            addr: addr.map(|a| a.parse().unwrap()),
            port: 5432,
        }
    }

    #[test]
    fn tls_names() {
        assert_eq!(
            tcp(Some("db.example.com"), None).sni_host_name(),
            Some("db.example.com")
        );
        assert_eq!(
            tcp(Some("10.0.0.1"), None).tls_host_name(),
            Some("10.0.0.1")
        );
        assert_eq!(tcp(Some("10.0.0.1"), None).sni_host_name(), None);
        assert_eq!(tcp(Some("::1"), None).sni_host_name(), None);
        assert_eq!(tcp(None, Some("10.0.0.1")).tls_host_name(), None);
        assert_eq!(
            tcp(Some("db"), Some("10.0.0.1")).sni_host_name(),
            Some("db")
        );
        let unix = Target::Unix {
            socket: PathBuf::from("/tmp/.s.PGSQL.5432"),
            port: 5432,
        };
        assert_eq!(unix.tls_host_name(), None);
        assert_eq!(unix.abstract_socket_name(), None);
        let abs = Target::Unix {
            socket: PathBuf::from("@pg/.s.PGSQL.5432"),
            port: 5432,
        };
        assert_eq!(abs.abstract_socket_name(), Some("pg/.s.PGSQL.5432"));
    }

    #[test]
    fn display_like_libpq() {
        assert_eq!(tcp(Some("db"), None).to_string(), "at \"db\", port 5432");
        assert_eq!(
            tcp(Some("db"), Some("10.0.0.1")).to_string(),
            "at \"db\" (10.0.0.1), port 5432"
        );
        assert_eq!(tcp(None, Some("::1")).to_string(), "at \"::1\", port 5432");
        let unix = Target::Unix {
            socket: PathBuf::from("/tmp/.s.PGSQL.5433"),
            port: 5433,
        };
        assert_eq!(unix.to_string(), "on socket \"/tmp/.s.PGSQL.5433\"");
    }
}
