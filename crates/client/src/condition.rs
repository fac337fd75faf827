//! What an error means, decided in one place.
//!
//! Two questions are asked of every failure in walrelay, by every command:
//!
//! * **Is it worth trying again?** ([`ErrorClass::is_transient`]) — a connection that broke, a
//!   server that is starting or shutting down, all connection slots taken: a receiver reconnects
//!   with backoff. Everything else is *definite* (Materialize's `is_definite`): trying again
//!   cannot help until somebody changes something.
//! * **Which exit class?** ([`ErrorClass`]) — the binary maps each class to one exit code for every
//!   command, so that a supervisor can tell "fix the credentials" from "re-seed" from "free disk".
//!
//! A server error is classified by its SQLSTATE ([`ServerCondition::of`]). Where PostgreSQL gives
//! no distinctive SQLSTATE, the message text decides, and each such rule says why below. These
//! fallbacks only match the server's English messages (`lc_messages = C` or `en`); with another
//! language the error keeps its generic class, which is always the safe one (definite, reported
//! as the server wrote it).

use crate::error::ServerError;

/// SQLSTATE codes walrelay reacts to (`src/backend/utils/errcodes.txt`).
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
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const SYNTAX_ERROR: &str = "42601";
}

/// What a failure means for whoever handles it; the binary turns it into an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Trying again later may succeed: the connection broke, the server is starting or shutting
    /// down, every connection slot is taken, the server is not yet where we need it.
    Transient,
    /// The connection is refused for good: authentication, `pg_hba.conf`, TLS, connection
    /// settings, a host name that does not resolve.
    Connection,
    /// The server cannot serve this job as it stands: WAL removed, slot missing or invalidated,
    /// another system, a diverged timeline, a setting such as `wal_level`, an unsupported version.
    ServerState,
    /// The local side: disk full, an IO error, foreign or damaged files, a directory in the way.
    Local,
    /// The server sent WAL that failed validation.
    InvalidWal,
    /// The command line or a value in it is wrong.
    Usage,
    /// Stopped by a signal (SIGINT, SIGTERM) before the job was done.
    Interrupted,
    /// Anything else: a protocol violation, an internal failure.
    Other,
}

impl ErrorClass {
    /// Worth trying again (with backoff).
    pub fn is_transient(self) -> bool {
        self == ErrorClass::Transient
    }
}

/// Implemented by every library error that can reach the binary, so that one exit-code policy
/// applies to every command.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// What a server error reports, by SQLSTATE first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCondition {
    /// 28P01 / 28000: wrong password, role not permitted to log in.
    AuthenticationFailed,
    /// 28000 "no pg_hba.conf entry for …": no line of `pg_hba.conf` lets this client in. (Text
    /// rule: 28000 covers other refusals too; only the message names `pg_hba.conf`.)
    NoHbaEntry,
    /// 53300 with a message naming `max_wal_senders` or replication slots: no free WAL sender.
    /// (Text fallback: 53300 also means "too many clients"; only the message tells them apart.)
    WalSendersExhausted,
    /// 53300 "… exceeds max_wal_senders (currently 0)": the server takes no replication at all
    /// (as with `wal_level = minimal`); waiting will not free a sender.
    ReplicationDisabled,
    /// 53300 / 53400 otherwise: every connection slot is taken.
    TooManyConnections,
    /// 57P03: the database system is starting up, in recovery without hot standby, or shutting
    /// down.
    CannotConnectNow,
    /// 57P01 / 57P02: the server is shutting down, or the backend was terminated.
    ShuttingDown,
    /// 42704 about a replication slot: the slot does not exist. (42704 is also "unrecognized
    /// configuration parameter"; the message tells them apart.)
    SlotMissing,
    /// 42710: the object (a slot) exists already.
    DuplicateObject,
    /// 55006: the slot is active for another process.
    SlotInUse,
    /// 55000 about a slot: it was invalidated (`max_slot_wal_keep_size`, 13+; idle timeout, 18+)
    /// or cannot be used for this (e.g. a logical slot for physical streaming).
    SlotUnusable,
    /// 55000 about the WAL level: `wal_level` is too low for what was asked.
    WalLevelTooLow,
    /// "requested WAL segment … has already been removed". Text rule: `CheckXLogRemoved()` in
    /// xlog.c reports it with `errcode_for_file_access()`, whose SQLSTATE depends on the errno at
    /// hand (usually 58P01, sometimes XX000).
    WalRemoved,
    /// "requested starting point … is ahead of the WAL flush position of this server". Text rule:
    /// walsender.c reports it without an errcode (XX000). Transient: a standby feeding us is not
    /// yet there.
    StartAheadOfFlush,
    /// "requested starting point … on timeline … is not in this server's history". Text rule:
    /// walsender.c reports it without an errcode (XX000).
    TimelineNotInHistory,
    /// "requested timeline … is not in this server's history" / TIMELINE_HISTORY of an unknown
    /// timeline ("could not open file \"pg_wal/0000000N.history\"", 58P01).
    UnknownTimeline,
    /// XX001: data corrupted (checksum failures during BASE_BACKUP).
    DataCorrupted,
    /// 42501: the role lacks a privilege.
    InsufficientPrivilege,
    /// 3D000: the database does not exist.
    UnknownDatabase,
    /// 0A000: the server does not support what was asked.
    FeatureNotSupported,
    /// 57014: the statement was cancelled (statement_timeout, pg_cancel_backend).
    QueryCanceled,
    /// 42601: the server did not understand the command.
    SyntaxError,
    /// Anything else.
    Other,
}

/// Whether the server refused a *logical* slot for physical use: "cannot use a logical
/// replication slot for physical replication" (START_REPLICATION), "cannot use
/// READ_REPLICATION_SLOT with a logical replication slot" (15+). The slot is healthy, only of
/// the wrong kind — unlike the other 55000 slot errors, which [`ServerCondition::SlotUnusable`]
/// names (an invalidated slot).
pub fn refuses_logical_slot(e: &ServerError) -> bool {
    let msg = e.message();
    msg.contains("logical replication slot")
        && (msg.contains("physical replication") || msg.contains("READ_REPLICATION_SLOT"))
}

impl ServerCondition {
    /// Classifies a server error (see the module documentation for the text rules).
    pub fn of(e: &ServerError) -> ServerCondition {
        let msg = e.message();
        // Text rules first where the SQLSTATE says nothing specific.
        if msg.contains("has already been removed") {
            return ServerCondition::WalRemoved;
        }
        if msg.contains("is ahead of the WAL flush position") {
            return ServerCondition::StartAheadOfFlush;
        }
        if msg.contains("is not in this server's history") {
            return if msg.starts_with("requested starting point") {
                ServerCondition::TimelineNotInHistory
            } else {
                ServerCondition::UnknownTimeline
            };
        }
        match e.code() {
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
                if msg.contains("no pg_hba.conf entry") =>
            {
                ServerCondition::NoHbaEntry
            }
            sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => {
                ServerCondition::AuthenticationFailed
            }
            sqlstate::TOO_MANY_CONNECTIONS if msg.contains("max_wal_senders (currently 0)") => {
                ServerCondition::ReplicationDisabled
            }
            sqlstate::TOO_MANY_CONNECTIONS
                if msg.contains("max_wal_senders") || msg.contains("WAL sender") =>
            {
                ServerCondition::WalSendersExhausted
            }
            sqlstate::TOO_MANY_CONNECTIONS | sqlstate::CONFIGURATION_LIMIT_EXCEEDED => {
                ServerCondition::TooManyConnections
            }
            sqlstate::CANNOT_CONNECT_NOW => ServerCondition::CannotConnectNow,
            sqlstate::ADMIN_SHUTDOWN | sqlstate::CRASH_SHUTDOWN => ServerCondition::ShuttingDown,
            sqlstate::UNDEFINED_OBJECT if msg.contains("replication slot") => {
                ServerCondition::SlotMissing
            }
            sqlstate::DUPLICATE_OBJECT => ServerCondition::DuplicateObject,
            sqlstate::OBJECT_IN_USE => ServerCondition::SlotInUse,
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
                if msg.contains("WAL level") || msg.contains("wal_level") =>
            {
                ServerCondition::WalLevelTooLow
            }
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE if msg.contains("slot") => {
                ServerCondition::SlotUnusable
            }
            sqlstate::UNDEFINED_FILE if msg.contains(".history") => {
                ServerCondition::UnknownTimeline
            }
            sqlstate::DATA_CORRUPTED => ServerCondition::DataCorrupted,
            sqlstate::INSUFFICIENT_PRIVILEGE => ServerCondition::InsufficientPrivilege,
            sqlstate::INVALID_CATALOG_NAME => ServerCondition::UnknownDatabase,
            sqlstate::FEATURE_NOT_SUPPORTED => ServerCondition::FeatureNotSupported,
            sqlstate::QUERY_CANCELED => ServerCondition::QueryCanceled,
            sqlstate::SYNTAX_ERROR => ServerCondition::SyntaxError,
            _ => ServerCondition::Other,
        }
    }

    /// The class of a server error with this condition, wherever it happens. Callers that know
    /// more (a slot in use during a reconnect is our own dying walsender) may decide otherwise.
    pub fn class(self) -> ErrorClass {
        use ServerCondition::*;
        match self {
            AuthenticationFailed | NoHbaEntry => ErrorClass::Connection,
            WalSendersExhausted | TooManyConnections | CannotConnectNow | ShuttingDown
            | StartAheadOfFlush => ErrorClass::Transient,
            SlotMissing
            | DuplicateObject
            | SlotInUse
            | SlotUnusable
            | WalLevelTooLow
            | ReplicationDisabled
            | WalRemoved
            | TimelineNotInHistory
            | UnknownTimeline
            | InsufficientPrivilege
            | UnknownDatabase
            | FeatureNotSupported => ErrorClass::ServerState,
            DataCorrupted | QueryCanceled | SyntaxError | Other => ErrorClass::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ServerError {
        ServerError::new(code, message)
    }

    #[test]
    fn a_logical_slot_refused_for_physical_use_is_told_apart() {
        for (msg, want) in [
            (
                "cannot use a logical replication slot for physical replication",
                true,
            ),
            (
                "cannot use READ_REPLICATION_SLOT with a logical replication slot",
                true,
            ),
            // An invalidated logical slot: another trouble.
            ("cannot read from logical replication slot \"s\"", false),
            ("replication slot \"s\" does not exist", false),
        ] {
            assert_eq!(refuses_logical_slot(&server("55000", msg)), want, "{msg}");
        }
    }

    #[test]
    fn conditions_by_sqlstate_and_documented_text() {
        use ServerCondition::*;
        let cases = [
            ("28P01", "password authentication failed for user \"x\"", AuthenticationFailed),
            ("28000", "no pg_hba.conf entry for replication connection", NoHbaEntry),
            ("28000", "role \"x\" is not permitted to log in", AuthenticationFailed),
            ("53300", "number of requested standby connections exceeds max_wal_senders (currently 1)", WalSendersExhausted),
            ("53300", "sorry, too many clients already", TooManyConnections),
            ("53300", "number of requested standby connections exceeds max_wal_senders (currently 0)", ReplicationDisabled),
            ("57P03", "the database system is starting up", CannotConnectNow),
            ("57P01", "terminating connection due to administrator command", ShuttingDown),
            ("42704", "replication slot \"s\" does not exist", SlotMissing),
            ("42704", "unrecognized configuration parameter \"x\"", Other),
            ("42710", "replication slot \"s\" already exists", DuplicateObject),
            ("55006", "replication slot \"s\" is active for PID 42", SlotInUse),
            ("55000", "cannot read from logical replication slot \"s\"", SlotUnusable),
            ("55000", "WAL level not sufficient for making an online backup", WalLevelTooLow),
            ("58P01", "requested WAL segment 000000010000000000000003 has already been removed", WalRemoved),
            ("XX000", "requested WAL segment 000000010000000000000003 has already been removed", WalRemoved),
            ("XX000", "requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000000", StartAheadOfFlush),
            ("XX000", "requested starting point 0/5000000 on timeline 1 is not in this server's history", TimelineNotInHistory),
            ("58P01", "could not open file \"pg_wal/00000005.history\": No such file or directory", UnknownTimeline),
            ("XX001", "checksum verification failure during base backup", DataCorrupted),
            ("42501", "permission denied to start WAL sender", InsufficientPrivilege),
            ("3D000", "database \"x\" does not exist", UnknownDatabase),
            ("XX000", "something else", Other),
        ];
        for (code, msg, want) in cases {
            assert_eq!(
                ServerCondition::of(&server(code, msg)),
                want,
                "{code} {msg}"
            );
        }
    }

    #[test]
    fn only_waiting_helps_for_transient_conditions() {
        assert!(ServerCondition::ShuttingDown.class().is_transient());
        assert!(ServerCondition::StartAheadOfFlush.class().is_transient());
        assert!(!ServerCondition::WalRemoved.class().is_transient());
        assert_eq!(
            ServerCondition::AuthenticationFailed.class(),
            ErrorClass::Connection
        );
        assert_eq!(
            ServerCondition::SlotMissing.class(),
            ErrorClass::ServerState
        );
    }
}
