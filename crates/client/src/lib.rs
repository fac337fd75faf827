//! A PostgreSQL client for replication connections.
//!
//! * [`Connection`]: TCP or Unix socket, TLS with libpq's `sslmode` semantics, trust / password / md5 /
//!   SCRAM-SHA-256 (with `tls-server-end-point` channel binding) authentication, simple queries, and raw
//!   message access for COPY streams (BASE_BACKUP's CopyOut, START_REPLICATION's CopyBoth).
//! * SQL beyond the simple query ([`Connection::query_params`], a [`Pipeline`] of prepared
//!   statements with text parameters) and COPY streams in both directions
//!   ([`Connection::copy_out`], [`Connection::copy_in`]) for ordinary sessions.
//! * typed replication commands on [`Connection`] (IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, slots,
//!   START_REPLICATION).
//! * [`ConnectParams`]: a resolved target; [`connect_params`] builds one from libpq-style settings.
//! * [`ClientError`], classified: [`ServerCondition`] says what a server error means (by SQLSTATE),
//!   [`ErrorClass`] what to do about any failure (retry, or which exit class) — the one place where
//!   walrelay decides that, for every command.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-flow.html>.

mod backoff;
mod condition;
mod connection;
mod copy;
mod error;
mod params;
mod replication;
mod resolve;
mod sql;
mod stream;
mod tls;
mod unresponsive;

pub use backoff::{Backoff, FIRST_RECONNECT_DELAY};
pub use condition::{refuses_logical_slot, sqlstate, Classify, ErrorClass, ServerCondition};
pub use connection::{message_name, Connection, QueryResult};
pub use error::{bind_fix, ClientError, Result, ServerError};
pub use params::{
    AuthMethod, ChannelBindingMode, ConnectParams, Endpoint, PasswordLookup, ReplicationMode,
    RootCerts, Secret, SessionAttrs, SslMode, TlsParams, VersionedSetting,
};
pub use replication::{IdentifySystem, ReplicationSlotInfo, StartedReplication, TimelineSwitch};
pub use resolve::{connect_params, DEFAULT_CONNECT_TIMEOUT};
pub use sql::{Batch, Pipeline};
/// TLS files and channel binding, for the server side too (`walrelay serve --tls-cert`).
pub use tls::{load_certs as load_pem_certs, load_key as load_pem_key, tls_server_end_point};
