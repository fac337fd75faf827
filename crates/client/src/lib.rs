//! A PostgreSQL client for replication connections.
//!
//! * [`Connection`]: TCP or Unix socket, TLS with libpq's `sslmode` semantics, trust / password / md5 /
//!   SCRAM-SHA-256 (with `tls-server-end-point` channel binding) authentication, simple queries, and raw
//!   message access for COPY streams (BASE_BACKUP's CopyOut, START_REPLICATION's CopyBoth).
//! * [`replication`]: typed replication commands (IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, slots,
//!   START_REPLICATION).
//! * [`ConnectParams`]: a resolved target; [`connect_params`] builds one from libpq-style settings.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-flow.html>.

pub mod connection;
pub mod error;
pub mod params;
pub mod replication;
pub mod resolve;
mod stream;
pub mod tls;

pub use connection::{Connection, QueryResult};
pub use error::{ClientError, ServerError};
pub use params::{
    AuthMethod, ChannelBindingMode, ConnectParams, Endpoint, PasswordLookup, ReplicationMode,
    RootCerts, Secret, SessionAttrs, SslMode, TlsParams,
};
pub use replication::{IdentifySystem, ReplicationSlotInfo, TimelineSwitch};
pub use resolve::connect_params;
