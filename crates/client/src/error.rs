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

/// SQLSTATE codes the client reacts to.
pub mod sqlstate {
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INVALID_DATABASE_DEFINITION: &str = "42P12";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("could not connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("connection to {endpoint} timed out after {seconds} s (connect_timeout)")]
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

    /// Trying again later may succeed: the network failed, the server is starting or shutting down, or all
    /// connection slots are taken. Authentication failures, configuration mistakes and protocol
    /// violations are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Io(_)
            | ClientError::Closed => true,
            ClientError::Rejected { error, .. } | ClientError::Server(error) => matches!(
                error.code(),
                sqlstate::CANNOT_CONNECT_NOW
                    | sqlstate::ADMIN_SHUTDOWN
                    | sqlstate::CRASH_SHUTDOWN
                    | sqlstate::TOO_MANY_CONNECTIONS
                    | sqlstate::CONFIGURATION_LIMIT_EXCEEDED
            ),
            ClientError::AllHostsFailed(v) => v.iter().all(|e| e.is_transient()),
            _ => false,
        }
    }

    /// Authentication failed or no pg_hba.conf entry allowed us.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ClientError::Auth { .. } => true,
            ClientError::AllHostsFailed(v) => v.iter().any(|e| e.is_auth_failure()),
            _ => matches!(
                self.sqlstate(),
                Some(sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION)
            ),
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;
