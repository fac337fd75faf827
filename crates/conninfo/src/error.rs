//! Errors from parsing and resolving connection settings.
//!
//! Messages start with libpq's own wording (so they can be searched for and compared with what `psql`
//! says) and, where libpq stops at the cause, add what to change. No message ever contains the value of
//! `password` or `sslpassword`: URIs are shown with the password replaced by `********`, and a token that
//! follows an unquoted password value (usually the tail of a password containing a space) is not echoed.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why connection settings could not be parsed or resolved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnInfoError {
    // --- keyword/value strings --------------------------------------------------------------------------
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),

    #[error(
        "missing \"=\" after the text following an unquoted password in connection info string; \
         quote values that contain spaces, e.g. password='two words'"
    )]
    MissingEqualsAfterSecret,

    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,

    #[error("invalid connection option \"{0}\"")]
    InvalidOption(String),

    #[error(
        "invalid connection option after an unquoted password; quote values that contain spaces, \
         e.g. password='two words'"
    )]
    InvalidOptionAfterSecret,

    #[error("connection info string contains a NUL byte; remove it")]
    NulByte,

    // --- URIs --------------------------------------------------------------------------------------------
    #[error(
        "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{0}\""
    )]
    UnterminatedIpv6(String),

    #[error("IPv6 host address may not be empty in URI: \"{0}\"")]
    EmptyIpv6(String),

    #[error(
        "unexpected character \"{ch}\" at position {position} in URI (expected \":\" or \"/\"): \"{uri}\""
    )]
    UnexpectedUriCharacter {
        ch: char,
        position: usize,
        uri: String,
    },

    #[error("extra key/value separator \"=\" in URI query parameter: \"{0}\"")]
    ExtraUriSeparator(String),

    #[error("missing key/value separator \"=\" in URI query parameter: \"{0}\"")]
    MissingUriSeparator(String),

    #[error("invalid URI query parameter: \"{0}\"")]
    InvalidUriParameter(String),

    /// `what` is the offending text, or a description of it when the text is secret.
    #[error("invalid percent-encoded token: \"{0}\"")]
    InvalidPercentEncoding(String),

    #[error("forbidden value %00 in percent-encoded value: \"{0}\"")]
    PercentEncodedNul(String),

    #[error("percent-decoded value is not valid UTF-8: \"{0}\"")]
    PercentDecodedNotUtf8(String),

    // --- service files -----------------------------------------------------------------------------------
    #[error("service file \"{}\" not found", .0.display())]
    ServiceFileNotFound(PathBuf),

    #[error("could not read service file \"{}\": {source}", .path.display())]
    ServiceFileRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("line {line} too long in service file \"{}\"", .path.display())]
    ServiceLineTooLong { path: PathBuf, line: usize },

    #[error(
        "syntax error in service file \"{}\", line {line}: expected keyword=value with a libpq keyword",
        .path.display()
    )]
    ServiceSyntax { path: PathBuf, line: usize },

    #[error(
        "nested service specifications not supported in service file \"{}\", line {line}",
        .path.display()
    )]
    NestedService { path: PathBuf, line: usize },

    #[error("service file \"{}\", line {line} is not valid UTF-8", .path.display())]
    ServiceNotUtf8 { path: PathBuf, line: usize },

    #[error(
        "definition of service \"{0}\" not found; add a [{0}] section to ~/.pg_service.conf or the file \
         named by PGSERVICEFILE, or drop service="
    )]
    ServiceNotFound(String),

    // --- values ------------------------------------------------------------------------------------------
    /// An enumerated setting with a value libpq does not accept.
    #[error("invalid {keyword} value: \"{value}\" (expected {expected})")]
    InvalidValue {
        keyword: &'static str,
        value: String,
        expected: &'static str,
    },

    #[error("invalid integer value \"{value}\" for connection option \"{keyword}\"")]
    InvalidInteger {
        keyword: &'static str,
        value: String,
    },

    #[error("invalid port number: \"{0}\" (expected 1 to 65535)")]
    InvalidPort(String),

    #[error("keepalives parameter must be an integer")]
    KeepalivesNotInteger,

    #[error("could not match {hosts} host names to {hostaddrs} hostaddr values")]
    HostCountMismatch { hosts: usize, hostaddrs: usize },

    #[error(
        "could not match {ports} port numbers to {hosts} hosts; give one port for all hosts or one per host"
    )]
    PortCountMismatch { ports: usize, hosts: usize },

    #[error(
        "could not parse network address \"{0}\": hostaddr must be a numeric IPv4 or IPv6 address"
    )]
    InvalidHostaddr(String),

    #[error("Unix-domain socket path \"{path}\" is too long (maximum {max} bytes)")]
    SocketPathTooLong { path: String, max: usize },

    #[error("invalid value for parameter \"replication\": \"{0}\" (valid values are: \"false\", 0, \"true\", 1, \"database\")")]
    InvalidReplication(String),

    #[error("negative require_auth method \"{0}\" cannot be mixed with non-negative methods")]
    RequireAuthNegativeMixed(String),

    #[error("require_auth method \"{0}\" cannot be mixed with negative methods")]
    RequireAuthPositiveMixed(String),

    #[error("require_auth method \"{0}\" is specified more than once")]
    RequireAuthDuplicate(String),

    #[error(
        "weak sslmode \"{0}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")"
    )]
    WeakSslModeForDirect(String),

    #[error("weak sslmode \"{0}\" may not be used with sslrootcert=system (use \"verify-full\")")]
    WeakSslModeForSystemRoots(String),

    #[error("invalid SSL protocol version range: ssl_min_protocol_version is above ssl_max_protocol_version")]
    InvalidSslProtocolRange,

    #[error(
        "gssencmode value \"{0}\" invalid when GSSAPI support is not compiled in; walrelay has no GSSAPI, \
         use gssencmode=disable or prefer"
    )]
    GssEncryptionUnsupported(String),

    #[error(
        "could not determine the local user name for the effective user ID; set PGUSER or pass user="
    )]
    NoLocalUser,

    /// A setting that came from an environment variable was rejected; says which variable.
    #[error("{inner} (from environment variable {var})")]
    FromEnvironment {
        var: &'static str,
        inner: Box<ConnInfoError>,
    },

    /// A setting that came from a service file was rejected; says which service.
    #[error("{inner} (from service \"{service}\")")]
    FromService {
        service: String,
        inner: Box<ConnInfoError>,
    },
}
