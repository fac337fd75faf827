//! Client errors, classified: a caller that reconnects needs to know whether trying again can help.

use std::io;

use thiserror::Error;
use walrelay_protocol::{ErrorFields, ProtocolError};

/// An error reported by the server, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub fields: ErrorFields,
}

impl ServerError {
    /// An `ERROR` with this SQLSTATE and message (what a fake server or a test needs).
    pub fn new(code: &str, message: &str) -> Self {
        ServerError {
            fields: ErrorFields {
                severity: "ERROR".into(),
                code: code.into(),
                message: message.into(),
                ..Default::default()
            },
        }
    }

    pub fn code(&self) -> &str {
        &self.fields.code
    }

    pub fn message(&self) -> &str {
        &self.fields.message
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = if self.fields.severity.is_empty() {
            "ERROR"
        } else {
            &self.fields.severity
        };
        write!(f, "{sev}:  {}", self.fields.message)?;
        if let Some(d) = &self.fields.detail {
            write!(f, " DETAIL: {d}")?;
        }
        if let Some(h) = &self.fields.hint {
            write!(f, " HINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

use crate::condition::{Classify, ErrorClass, ServerCondition};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("could not connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    /// The host name did not resolve (DNS): a typo, or the resolver is down.
    #[error("could not translate host name \"{host}\" to an address: {source}; check the host name (and the resolver, if it is right)")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("connection to {endpoint} timed out after {seconds} s (connect_timeout): no PostgreSQL server answered there in time; check the host and port (another program may be listening, or a firewall dropping packets), or raise connect_timeout if the server is only slow")]
    ConnectTimeout { endpoint: String, seconds: u64 },
    #[error("connection to {endpoint} failed: {error}")]
    Rejected {
        endpoint: String,
        error: Box<ServerError>,
    },
    #[error("TLS with {endpoint} failed: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("{0}")]
    Config(String),
    /// Every host answered, none is of the kind `target_session_attrs` asks for — as during a
    /// failover, before a standby is promoted.
    #[error("none of the {hosts} host(s) is a server with target_session_attrs={wanted}")]
    NoMatchingServer { hosts: usize, wanted: &'static str },
    #[error("authentication with {endpoint} failed: {reason}")]
    Auth { endpoint: String, reason: String },
    #[error("server error: {0}")]
    Server(Box<ServerError>),
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("protocol violation: {0}")]
    Unexpected(String),
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection unexpectedly")]
    Closed,
    #[error("could not connect to any host: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllHostsFailed(Vec<ClientError>),
}

impl ClientError {
    /// The server's error, if the server reported one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::Server(e) | ClientError::Rejected { error: e, .. } => Some(e.as_ref()),
            ClientError::AllHostsFailed(v) => v.iter().find_map(|e| e.server_error()),
            _ => None,
        }
    }

    /// Wraps a server error.
    pub fn server(fields: walrelay_protocol::ErrorFields) -> Self {
        ClientError::Server(Box::new(ServerError { fields }))
    }

    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(|e| e.code())
    }

    /// What the server's error means, when the server reported one.
    pub fn condition(&self) -> Option<ServerCondition> {
        self.server_error().map(ServerCondition::of)
    }

    /// Trying again later may succeed: the network failed, the server is starting or shutting down, or all
    /// connection slots are taken. Authentication failures, configuration mistakes and protocol
    /// violations are definite.
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    /// The host name did not resolve (for one host, or for every host of a list).
    pub fn is_name_resolution(&self) -> bool {
        match self {
            ClientError::Resolve { .. } => true,
            ClientError::AllHostsFailed(v) => v.iter().all(|e| e.is_name_resolution()),
            _ => false,
        }
    }

    /// Authentication failed or no pg_hba.conf entry allowed us.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ClientError::Auth { .. } => true,
            ClientError::AllHostsFailed(v) => v.iter().any(|e| e.is_auth_failure()),
            _ => matches!(
                self.condition(),
                Some(ServerCondition::AuthenticationFailed | ServerCondition::NoHbaEntry)
            ),
        }
    }
}

impl From<ServerError> for ClientError {
    fn from(e: ServerError) -> Self {
        ClientError::Server(Box::new(e))
    }
}

impl Classify for ClientError {
    fn class(&self) -> ErrorClass {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Io(_)
            | ClientError::Closed
            | ClientError::NoMatchingServer { .. } => ErrorClass::Transient,
            ClientError::Resolve { .. }
            | ClientError::Tls { .. }
            | ClientError::Config(_)
            | ClientError::Auth { .. } => ErrorClass::Connection,
            // Refused at startup: a missing privilege (not a replication role) is as definite as
            // a wrong password.
            ClientError::Rejected { error, .. } => match ServerCondition::of(error) {
                ServerCondition::InsufficientPrivilege | ServerCondition::UnknownDatabase => {
                    ErrorClass::Connection
                }
                c => c.class(),
            },
            ClientError::Server(error) => ServerCondition::of(error).class(),
            ClientError::Protocol(_) | ClientError::Unexpected(_) => ErrorClass::Other,
            // Every host failed: transient only if every failure was; otherwise the most
            // definite failure decides (a wrong password on one host is not cured by waiting).
            ClientError::AllHostsFailed(v) => {
                if v.iter().all(|e| e.class().is_transient()) {
                    ErrorClass::Transient
                } else {
                    v.iter()
                        .map(|e| e.class())
                        .find(|c| !c.is_transient())
                        .unwrap_or(ErrorClass::Other)
                }
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What to do when a listening socket cannot be bound: the fix that follows the cause in the
/// message, naming the option that chose the address.
pub fn bind_fix(e: &std::io::Error, option: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another program listens there (a PostgreSQL server, another walrelay): choose another port with {option}"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port above 1023 with {option}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "no network interface of this host has that address: give {option} 0.0.0.0 (every interface), 127.0.0.1 or one of the host's addresses"
        ),
        _ => format!("check the address given with {option}"),
    }
}
