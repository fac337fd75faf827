//! Pure PostgreSQL replication-protocol code: no IO.
//!
//! * [`Lsn`], [`TimelineId`], WAL segment numbers and file names ([`segment`]),
//! * timeline history files ([`history`]),
//! * backend message framing and decoding beyond `postgres-protocol` ([`message`]),
//! * the CopyData sub-messages of physical replication and `BASE_BACKUP` ([`replication`]),
//! * replication command text for each server version ([`command`]), and what `BASE_BACKUP`
//!   answers besides its archives ([`base_backup`]),
//! * the messages of `pgoutput`, the logical replication output plugin ([`pgoutput`]),
//! * the server side: backend message encoders ([`server`]), the client's startup packet and
//!   messages ([`frontend`]), replication commands as a walsender reads them
//!   ([`replication_command`]) and answers them per major ([`walsender`]), and SCRAM-SHA-256
//!   authentication ([`scram`]).
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-replication.html>.

pub mod base_backup;
pub mod command;
pub mod frontend;
pub mod history;
pub mod lsn;
pub mod message;
pub mod pgoutput;
pub mod replication;
pub mod replication_command;
pub mod scram;
pub mod segment;
pub mod server;
pub mod timeline;
pub mod walsender;

pub use command::ServerVersion;
pub use history::{TimelineHistory, TimelineHistoryEntry};
pub use lsn::Lsn;
pub use message::{BackendMessage, ErrorFields, ProtocolError};
pub use replication::encode_xlog_data_message;
pub use replication::{
    BaseBackupMessage, HotStandbyFeedback, PrimaryKeepalive, ReplicationMessage,
    StandbyStatusUpdate, XLogData,
};
pub use segment::{SegmentId, WalFileName, WalSegmentSize, XLogSegNo};
pub use timeline::TimelineId;
