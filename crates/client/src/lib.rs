//! A PostgreSQL client for replication connections.
//!
//! * [`Connection`]: TCP or Unix socket, TLS with libpq's `sslmode` semantics, trust / password / md5 /
//!   SCRAM-SHA-256 (with `tls-server-end-point` channel binding) authentication, simple queries, and raw
//!   message access for COPY streams (BASE_BACKUP's CopyOut, START_REPLICATION's CopyBoth).
//! * typed replication commands on [`Connection`] (IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, slots,
//!   START_REPLICATION).
//! * [`ConnectParams`]: a resolved target; [`connect_params`] builds one from libpq-style settings.
//! * [`ClientError`], classified: [`ServerCondition`] says what a server error means (by SQLSTATE),
//!   [`ErrorClass`] what to do about any failure (retry, or which exit class) — the one place where
//!   walrelay decides that, for every command.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-flow.html>.

mod condition;
mod connection;
mod error;
mod params;
mod replication;
mod resolve;
mod stream;
mod tls;

pub use condition::{sqlstate, Classify, ErrorClass, ServerCondition};
pub use connection::{message_name, Connection, QueryResult};
pub use error::{ClientError, Result, ServerError};
pub use params::{
    AuthMethod, ChannelBindingMode, ConnectParams, Endpoint, PasswordLookup, ReplicationMode,
    RootCerts, Secret, SessionAttrs, SslMode, TlsParams,
};
pub use replication::{IdentifySystem, ReplicationSlotInfo, StartedReplication, TimelineSwitch};
pub use resolve::connect_params;
/// TLS files and channel binding, for the server side too (`walrelay serve --tls-cert`).
pub use tls::{load_certs as load_pem_certs, load_key as load_pem_key, tls_server_end_point};
