//! Why the receiver stopped, typed: each condition its own variant whose message names the cause
//! and the fix, the underlying error kept as `source`, and one [`Classify`] answer per variant
//! (retry, or which exit class).

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_archive::ArchiveError;
use walrelay_client::{Classify, ClientError, ErrorClass, ServerCondition, ServerError};
use walrelay_protocol::{Lsn, ProtocolError, TimelineId};
use walrelay_wal::WalError;

use crate::start::StartError;
use crate::writer::WriterError;

/// Why a receiver stopped with an error.
#[derive(Debug, Error)]
pub enum ReceiveError {
    /// A connection or server error no more specific variant explains.
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Writer(#[from] WriterError),
    #[error("invalid WAL from the server: {0}; nothing at or after this position was acknowledged — check the server and its storage")]
    InvalidWal(#[source] WalError),
    #[error("the server is a different cluster (system identifier {server}) than the WAL already received ({expected}); use a separate directory for each cluster")]
    SystemIdentifierMismatch { expected: u64, server: u64 },
    /// A relay's upstream is the relay itself, directly or through relays pointed back at it.
    /// With other hosts in the list (`other_hosts`) the next session tries them again.
    #[error("the upstream {endpoint} is this relay itself (directly or through other relays streaming from it): point the relay at the primary or at a relay upstream of it")]
    UpstreamIsThisRelay { endpoint: String, other_hosts: bool },
    /// The server no longer has WAL the stream needs.
    #[error("{}", WalRemovedText { slot: slot.as_deref(), error })]
    WalRemoved {
        slot: Option<String>,
        #[source]
        error: Box<ServerError>,
    },
    #[error("replication slot \"{slot}\" does not exist: create it with `walrelay receive --create-slot -S {slot}` or choose an existing slot")]
    SlotMissing { slot: String },
    /// The slot was invalidated (`max_slot_wal_keep_size`, an idle timeout): the WAL it held is
    /// gone. `server` is the server's own error when it reported one.
    #[error("{}", SlotInvalidatedText { slot, server: server.as_deref() })]
    SlotInvalidated {
        slot: String,
        server: Option<Box<ServerError>>,
    },
    /// The slot stayed active for another process from the start (see `reconnect`).
    #[error("{}: another client has been streaming from replication slot \"{slot}\" for all {waited_secs} s since walrelay started — stop it or choose another slot (a standby fed by receive --pg-wal must not stream from the primary itself: remove its primary_conninfo)", error.message())]
    SlotBusy {
        slot: String,
        waited_secs: u64,
        error: Box<ServerError>,
    },
    #[error("replication slot \"{slot}\" is a {kind} slot (a subscription's or a walrelay subset's, say), and WAL streaming needs a physical one: choose another name with -S (--create-slot makes it); leave this one alone, its consumer needs it")]
    SlotNotPhysical { slot: String, kind: String },
    /// The start point is beyond where the server's history left our timeline.
    #[error("{0}: this server's history diverged from the WAL already received (was another server promoted?) — use a new directory or re-seed")]
    TimelineNotInHistory(#[source] Box<ServerError>),
    /// The server is on an ancestor of the directory's timeline: an old primary that came back, or
    /// a standby that has not followed the promotion yet. Another host (or later) may do better.
    #[error("{endpoint} is on timeline {server}, an ancestor of timeline {ours} that the WAL already received follows: it has not followed the promotion (an old primary restarted, or a lagging standby) — waiting for a server on timeline {ours} or later")]
    ServerBehind {
        endpoint: String,
        ours: TimelineId,
        server: TimelineId,
    },
    /// Neither timeline history holds the other's timeline, or one timeline ID names two pasts.
    #[error("the server's timeline {server} does not descend from timeline {ours} that the WAL already received follows (two servers promoted independently?): this archive cannot continue from this server — use a new directory, or point walrelay at the server that continued timeline {ours}")]
    HistoryDiverged {
        ours: TimelineId,
        server: TimelineId,
    },
    /// Sidecar mode: the standby replayed WAL of the old timeline that the new primary never had.
    #[error("the standby replayed up to {replayed} on timeline {old}, past {switchpoint} where the new primary's timeline {new} begins: it diverged from the new primary — rebuild it with pg_rewind (or a new bootstrap), then restart")]
    StandbyDiverged {
        old: TimelineId,
        new: TimelineId,
        switchpoint: Lsn,
        replayed: Lsn,
    },
    /// Sidecar mode: WAL past the switchpoint is in the standby's `pg_wal`, and whether the
    /// standby replayed it cannot be asked.
    #[error("the new primary's timeline {new} begins at {switchpoint}, but the standby's pg_wal holds timeline {old} WAL past it, which the standby may have replayed: pass --standby-conninfo so walrelay can check the standby's replay position (if it is at or before {switchpoint} walrelay continues), otherwise rebuild the standby with pg_rewind")]
    StandbyMayHaveDiverged {
        old: TimelineId,
        new: TimelineId,
        switchpoint: Lsn,
    },
    #[error("PostgreSQL {major} is not supported (its WAL format is unknown to walrelay); supported: 10 to 18")]
    UnsupportedServer { major: u32 },
    #[error("--failover keeps the slot on the standbys with pg_replication_slot_advance, which PostgreSQL {major} does not have (it exists from PostgreSQL 11): drop --failover, and after a failover create the slot on the new primary (walrelay receive --create-slot)")]
    FailoverSlotUnsupported { major: u32 },
    /// The walsender ended the stream with CommandComplete and no next timeline: what a server that
    /// shuts down cleanly does once we confirmed everything it sent (`WalSndDone` in walsender.c).
    #[error("the server ended streaming because it is shutting down; reconnect once it is back (walrelay does so unless --no-loop)")]
    ServerStopped,
    /// Nothing from the server for [`crate::SERVER_SILENCE_TIMEOUT`], although asked for a reply.
    #[error("no message from the server for {0} s although a reply was requested; the connection is presumed dead (reconnecting unless --no-loop)")]
    ServerSilent(u64),
    #[error("protocol violation: {0}")]
    Protocol(#[from] StreamViolation),
    /// Finishing what an earlier run left in the archive (checksums, compression, temp files).
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("archive directory {0} does not exist: create it first (mkdir -p)")]
    ArchiveDirMissing(PathBuf),
    #[error("could not list {path}: {source}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A helper task of the receiver died (a bug: it panicked).
    #[error("{what} failed: {source}")]
    TaskFailed {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The disk task stopped; its own error (from `DiskTask::finish`) replaces this one.
    #[error("the WAL disk task stopped")]
    DiskTaskStopped,
}

/// What the server did that PostgreSQL's walsender never does.
#[derive(Debug, Error)]
pub enum StreamViolation {
    #[error("{0}")]
    Message(#[from] ProtocolError),
    #[error("server sent WAL at {got} but the stream is at {expected}")]
    WalOutOfOrder { expected: Lsn, got: Lsn },
    #[error("unexpected {0} during streaming")]
    UnexpectedMessage(&'static str),
    #[error("server ended timeline {ended} but named timeline {next} as the next")]
    NextTimelineNotHigher { ended: TimelineId, next: TimelineId },
    #[error("the server ended the stream without naming the next timeline")]
    EndWithoutNextTimeline,
}

struct WalRemovedText<'a> {
    slot: Option<&'a str>,
    error: &'a ServerError,
}

impl fmt::Display for WalRemovedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.error.message();
        match self.slot {
            // A slot keeps WAL unless the server invalidated it (max_slot_wal_keep_size, PG 13+) —
            // or the directory's WAL is older than the slot.
            Some(slot) => write!(
                f,
                "{msg}: replication slot \"{slot}\" did not keep it — the slot was invalidated (max_slot_wal_keep_size) or is younger than the WAL already received; drop and recreate the slot, then re-seed the standby or archive from a new base backup"
            ),
            None => write!(
                f,
                "{msg}: the server no longer has the WAL this stream needs — use a replication slot (-S) so it is kept, and re-seed the standby or archive from a new base backup"
            ),
        }
    }
}

struct SlotInvalidatedText<'a> {
    slot: &'a str,
    server: Option<&'a ServerError>,
}

impl fmt::Display for SlotInvalidatedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot;
        match self.server {
            Some(e) => {
                let detail = e.fields.detail.as_deref().unwrap_or_default();
                write!(
                    f,
                    "{} {detail}: the slot was invalidated and the WAL it held is gone — drop and recreate the slot, then re-seed from a new base backup",
                    e.message()
                )
            }
            None => write!(
                f,
                "replication slot \"{slot}\" was invalidated (wal_status lost, see max_slot_wal_keep_size) and the WAL it held is gone: drop and recreate it (walrelay receive --drop-slot / --create-slot -S {slot}), then re-seed the standby or archive from a new base backup"
            ),
        }
    }
}

impl ReceiveError {
    /// A server error in the stream, turned into the variant that explains it where one does.
    /// `slot` is the permanent slot streamed from, if any.
    pub fn from_server(e: ClientError, slot: Option<&str>) -> ReceiveError {
        let Some(server) = e.server_error().cloned() else {
            return ReceiveError::Client(e);
        };
        // A healthy slot of the wrong kind, not an invalidated one.
        if walrelay_client::refuses_logical_slot(&server) {
            return ReceiveError::SlotNotPhysical {
                slot: slot.unwrap_or("NAME").to_string(),
                kind: "logical".into(),
            };
        }
        match ServerCondition::of(&server) {
            ServerCondition::WalRemoved => ReceiveError::WalRemoved {
                slot: slot.map(str::to_string),
                error: Box::new(server),
            },
            ServerCondition::SlotMissing => ReceiveError::SlotMissing {
                slot: slot.unwrap_or("NAME").to_string(),
            },
            ServerCondition::SlotUnusable => ReceiveError::SlotInvalidated {
                slot: slot.unwrap_or_default().to_string(),
                server: Some(Box::new(server)),
            },
            ServerCondition::TimelineNotInHistory => {
                ReceiveError::TimelineNotInHistory(Box::new(server))
            }
            _ => ReceiveError::Client(e),
        }
    }

    /// The server's error behind this one, if the server reported one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ReceiveError::Client(c) => c.server_error(),
            ReceiveError::WalRemoved { error, .. } => Some(error),
            ReceiveError::SlotInvalidated { server, .. } => server.as_deref(),
            ReceiveError::TimelineNotInHistory(e) => Some(e),
            ReceiveError::SlotBusy { error, .. } => Some(error),
            _ => None,
        }
    }

    /// What the server's error reports, if the server reported one.
    pub fn condition(&self) -> Option<ServerCondition> {
        self.server_error().map(ServerCondition::of)
    }

    /// `--failover` keeps the slot on the standbys with `pg_replication_slot_advance`, which a
    /// server of `major` must have (11+): the one rule, for starting a stream and for creating
    /// the slot.
    pub fn check_failover_slot(major: u32) -> Result<(), ReceiveError> {
        if major < 11 {
            return Err(ReceiveError::FailoverSlotUnsupported { major });
        }
        Ok(())
    }

    /// The disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ReceiveError::Writer(w) => w.is_disk_full(),
            ReceiveError::Archive(ArchiveError::Durable(d)) => d.is_disk_full(),
            _ => false,
        }
    }
}

impl Classify for ReceiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ReceiveError::Client(e) => e.class(),
            ReceiveError::ServerStopped | ReceiveError::ServerSilent(_) => ErrorClass::Transient,
            // A host list may hold the primary again once it is back (relays listed as fallbacks
            // of one another); a single host never will.
            ReceiveError::UpstreamIsThisRelay { other_hosts, .. } => {
                if *other_hosts {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Usage
                }
            }
            // The server is another cluster than the WAL already received: the server's state,
            // as with SystemIdentifierMismatch (the directory is left untouched either way).
            ReceiveError::Start(StartError::SystemIdentifierMismatch { .. }) => {
                ErrorClass::ServerState
            }
            ReceiveError::Start(_)
            | ReceiveError::Writer(_)
            | ReceiveError::Archive(_)
            | ReceiveError::ArchiveDirMissing(_)
            | ReceiveError::ListDir { .. }
            | ReceiveError::DiskTaskStopped => ErrorClass::Local,
            ReceiveError::InvalidWal(_) => ErrorClass::InvalidWal,
            ReceiveError::SystemIdentifierMismatch { .. }
            | ReceiveError::WalRemoved { .. }
            | ReceiveError::SlotMissing { .. }
            | ReceiveError::SlotInvalidated { .. }
            | ReceiveError::SlotNotPhysical { .. }
            | ReceiveError::SlotBusy { .. }
            | ReceiveError::TimelineNotInHistory(_)
            | ReceiveError::HistoryDiverged { .. }
            | ReceiveError::StandbyDiverged { .. }
            | ReceiveError::StandbyMayHaveDiverged { .. }
            | ReceiveError::UnsupportedServer { .. }
            | ReceiveError::FailoverSlotUnsupported { .. } => ErrorClass::ServerState,
            ReceiveError::ServerBehind { .. } => ErrorClass::Transient,
            ReceiveError::Protocol(_) | ReceiveError::TaskFailed { .. } => ErrorClass::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_client::sqlstate;

    fn server_error(code: &str, message: &str) -> ClientError {
        ServerError::new(code, message).into()
    }

    #[test]
    fn removed_wal_is_explained_with_and_without_a_slot() {
        let removed = || {
            server_error(
                "58P01",
                "requested WAL segment 000000010000000000000007 has already been removed",
            )
        };
        let with_slot = ReceiveError::from_server(removed(), Some("s1")).to_string();
        assert!(
            with_slot.contains("\"s1\"") && with_slot.contains("invalidated"),
            "{with_slot}"
        );
        assert!(!with_slot.contains("use a replication slot"), "{with_slot}");
        let without = ReceiveError::from_server(removed(), None).to_string();
        assert!(without.contains("use a replication slot (-S)"), "{without}");
        let e = ReceiveError::from_server(removed(), None);
        assert!(matches!(e, ReceiveError::WalRemoved { .. }));
        assert_eq!(e.class(), ErrorClass::ServerState);
        let unknown = ReceiveError::from_server(
            server_error(
                sqlstate::UNDEFINED_OBJECT,
                "replication slot \"nope\" does not exist",
            ),
            Some("nope"),
        );
        assert!(
            unknown.to_string().contains("--create-slot -S nope"),
            "{unknown}"
        );
        let invalidated = ReceiveError::SlotInvalidated {
            slot: "s2".into(),
            server: None,
        };
        assert!(invalidated.to_string().contains("--create-slot -S s2"));
        assert_eq!(invalidated.class(), ErrorClass::ServerState);
    }

    #[test]
    fn server_shutdown_and_silence_are_transient() {
        for e in [ReceiveError::ServerStopped, ReceiveError::ServerSilent(60)] {
            assert!(e.class().is_transient(), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn the_writers_disk_full_is_found_without_reading_text() {
        let full = walrelay_durable::DurableError::new(
            "write",
            "/x/000000010000000000000001.partial",
            std::io::Error::from_raw_os_error(28),
        );
        let e = ReceiveError::Writer(WriterError::DiskFull(full));
        assert!(e.is_disk_full());
        assert_eq!(e.class(), ErrorClass::Local);
        assert!(!ReceiveError::ServerStopped.is_disk_full());
    }
}
