//! One exit-code policy for every command (README, "Exit codes").
//!
//! Commands return `anyhow::Error`s that keep the libraries' typed errors in their source chains;
//! [`class_of`] walks the chain and asks each typed error what it means
//! ([`walrelay_client::Classify`]), and [`code`] turns the class into the documented exit code.
//! `restore` is the one exception: PostgreSQL reads its status, so it keeps its own codes
//! (`walrelay_archive::RESTORE_EXIT_*`).

use std::error::Error as StdError;
use std::fmt;

use walrelay_client::{Classify, ClientError, ErrorClass, ServerError};

/// Success.
pub const SUCCESS: i32 = 0;
/// Any other error, including a transient one (connection lost) where nothing retries.
pub const ERROR: i32 = 1;
/// The command line is wrong.
pub const USAGE: i32 = 2;
/// The connection is refused for good: authentication, `pg_hba.conf`, TLS, a host name that does
/// not resolve, connection settings.
pub const CONNECTION: i32 = 3;
/// The server cannot serve this job as it stands: WAL removed, slot missing or invalidated,
/// another system, a diverged timeline, `wal_level`, an unsupported version.
pub const SERVER_STATE: i32 = 4;
/// The local side: disk full, IO errors, foreign files, a target directory in the way.
pub const LOCAL: i32 = 5;
/// The server sent WAL that failed validation.
pub const INVALID_WAL: i32 = 6;
/// Stopped by SIGINT or SIGTERM before the job was done (128 + SIGINT, as shells report it).
pub const INTERRUPTED: i32 = 130;

/// The exit code of a class.
pub fn code(class: ErrorClass) -> i32 {
    match class {
        ErrorClass::Transient | ErrorClass::Other => ERROR,
        ErrorClass::Usage => USAGE,
        ErrorClass::Connection => CONNECTION,
        ErrorClass::ServerState => SERVER_STATE,
        ErrorClass::Local => LOCAL,
        ErrorClass::InvalidWal => INVALID_WAL,
        ErrorClass::Interrupted => INTERRUPTED,
    }
}

/// An error in what the user typed: exit [`USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for UsageError {}

/// A usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A problem of the local side with its message ready: exit [`LOCAL`].
#[derive(Debug)]
pub struct LocalError(pub String);

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for LocalError {}

/// A local problem as an `anyhow::Error`.
pub fn local(msg: impl Into<String>) -> anyhow::Error {
    LocalError(msg.into()).into()
}

/// A state of a server (or of the standby walrelay feeds) that the command cannot go on with, its
/// message ready: exit [`SERVER_STATE`].
pub fn server_state(msg: impl Into<String>) -> anyhow::Error {
    Classified {
        class: ErrorClass::ServerState,
        message: msg.into(),
        source: None,
    }
    .into()
}

/// An archive that could not be reached (an object store down, a network timing out) under a
/// command that only reads or tidies it, `verify` and `prune`: exit [`LOCAL`], "archive
/// unreadable", so that a cron check does not take it for `verify`'s "problems found" (1).
/// Other classes pass through unchanged.
pub fn archive_unreachable(e: anyhow::Error, what: &str) -> anyhow::Error {
    if class_of(&e) != ErrorClass::Transient {
        return e;
    }
    Classified {
        class: ErrorClass::Local,
        message: format!("the archive could not be reached, {what}"),
        source: Some(e.into()),
    }
    .into()
}

/// The class an error exits with: [`class_of`], except that an object store that could not be
/// reached is a store problem (5) for every command, as for a directory that cannot be read —
/// not the "other" (1) of a transient failure, which `verify` uses for its verdict and PostgreSQL
/// tools for "try again".
pub fn exit_class(e: &anyhow::Error) -> ErrorClass {
    let class = class_of(e);
    // A store error inside a transparent wrapper is not a link of the chain of its own.
    let store_unreachable = e.chain().any(|c| {
        let store = c.downcast_ref::<walrelay_store::StoreError>().or_else(|| {
            match c.downcast_ref::<walrelay_backup::BackupJobError>() {
                Some(walrelay_backup::BackupJobError::Store(s)) => Some(s),
                _ => None,
            }
        });
        store.is_some_and(|s| s.class() == ErrorClass::Transient)
    });
    if class == ErrorClass::Transient && store_unreachable {
        ErrorClass::Local
    } else {
        class
    }
}

/// An error whose class the command decided itself, with its message and cause.
#[derive(Debug)]
pub struct Classified {
    pub class: ErrorClass,
    pub message: String,
    pub source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Classified {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The class of one error, if it is one walrelay knows.
fn class_of_one(e: &(dyn StdError + 'static)) -> Option<ErrorClass> {
    macro_rules! classified {
        ($($t:ty),* $(,)?) => {
            $(if let Some(x) = e.downcast_ref::<$t>() {
                return Some(x.class());
            })*
        };
    }
    classified!(
        walrelay_walreceiver::ReceiveError,
        walrelay_basebackup::BootstrapError,
        walrelay_basebackup::BackupError,
        walrelay_basebackup::ExtractError,
        walrelay_logical::SubsetError,
        walrelay_store::StoreError,
        walrelay_relay::RelayError,
        walrelay_backup::BackupJobError,
        ClientError,
    );
    if let Some(c) = e.downcast_ref::<Classified>() {
        return Some(c.class);
    }
    if e.is::<UsageError>() || e.is::<walrelay_conninfo::ConnInfoError>() {
        return Some(ErrorClass::Usage);
    }
    if let Some(a) = e.downcast_ref::<walrelay_archive::ArchiveError>() {
        return Some(archive_class(a));
    }
    if e.is::<LocalError>()
        || e.is::<walrelay_durable::DurableError>()
        || e.is::<walrelay_walreceiver::WriterError>()
        || e.is::<walrelay_walreceiver::StartError>()
        || e.is::<std::io::Error>()
    {
        return Some(ErrorClass::Local);
    }
    if let Some(s) = server_error_in(e) {
        return Some(walrelay_client::ServerCondition::of(s).class());
    }
    None
}

/// The archive crate's errors: a name or value the user gave is a usage error; the rest is the
/// archive directory's (local) problem.
fn archive_class(e: &walrelay_archive::ArchiveError) -> ErrorClass {
    use walrelay_archive::ArchiveError as A;
    match e {
        A::BadFileName { .. }
        | A::BadCompression { .. }
        | A::UnknownSegmentSize { .. }
        | A::BadManifest { .. }
        | A::BadBackupLabel { .. }
        | A::NoPruneCriterion
        | A::PrunePointPastEnd { .. } => ErrorClass::Usage,
        _ => ErrorClass::Local,
    }
}

/// The server's error, if `e` is one (plain, boxed, or a client error carrying it).
fn server_error_in<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a ServerError> {
    e.downcast_ref::<ServerError>()
        .or_else(|| e.downcast_ref::<Box<ServerError>>().map(|b| b.as_ref()))
        .or_else(|| {
            e.downcast_ref::<ClientError>()
                .and_then(ClientError::server_error)
        })
}

/// The class of an error: the outermost error in the chain with a class more specific than
/// [`ErrorClass::Other`] decides (wrappers such as "WAL streaming failed" answer `Other` and let
/// their cause speak).
pub fn class_of(e: &anyhow::Error) -> ErrorClass {
    let mut found = None;
    for cause in e.chain() {
        match class_of_one(cause) {
            Some(ErrorClass::Other) => {
                found.get_or_insert(ErrorClass::Other);
            }
            Some(c) => return c,
            None => {}
        }
    }
    found.unwrap_or(ErrorClass::Other)
}

/// Whether a full disk (or quota) is anywhere in the chain.
pub fn is_disk_full(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let full = if let Some(d) = err.downcast_ref::<walrelay_durable::DurableError>() {
            d.is_disk_full()
        } else if let Some(r) = err.downcast_ref::<walrelay_walreceiver::ReceiveError>() {
            r.is_disk_full()
        } else if let Some(w) = err.downcast_ref::<walrelay_walreceiver::WriterError>() {
            w.is_disk_full()
        } else if let Some(io) = err.downcast_ref::<std::io::Error>() {
            walrelay_durable::is_disk_full(io)
        } else {
            false
        };
        if full {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error and its causes as one line — never a backtrace. A cause whose text the line already
/// holds is left out (a server error counts by its message, which the explaining error quotes).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        let core = server_error_in(cause)
            .map(|s| s.message().to_string())
            .unwrap_or_else(|| text.clone());
        if !msg.contains(&core) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    let replication_off = e.chain().any(|c| {
        server_error_in(c).is_some_and(|s| {
            walrelay_client::ServerCondition::of(s)
                == walrelay_client::ServerCondition::ReplicationDisabled
        })
    });
    if replication_off && !msg.contains(REPLICATION_FIX) {
        msg.push_str("; ");
        msg.push_str(REPLICATION_FIX);
    }
    msg.replace('\n', " ")
}

/// What a server that takes no replication connection needs (`max_wal_senders = 0`).
const REPLICATION_FIX: &str = "set wal_level = replica and max_wal_senders above the number of connected standbys on the primary, then restart it";

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_walreceiver::{ReceiveError, WriterError};

    fn server(code: &str, message: &str) -> ClientError {
        ServerError::new(code, message).into()
    }

    #[test]
    fn the_same_condition_exits_the_same_way_in_every_command() {
        // A missing slot: receive and bootstrap report it through different types.
        let receive: anyhow::Error = ReceiveError::SlotMissing { slot: "s".into() }.into();
        let bootstrap: anyhow::Error =
            walrelay_basebackup::BootstrapError::SlotNotFound("s".into()).into();
        assert_eq!(code(class_of(&receive)), SERVER_STATE);
        assert_eq!(code(class_of(&bootstrap)), SERVER_STATE);
        // Authentication, wherever it happens.
        let auth: anyhow::Error =
            anyhow::Error::new(server("28P01", "password authentication failed"))
                .context("connect for replication");
        assert_eq!(code(class_of(&auth)), CONNECTION);
        let auth = walrelay_basebackup::BootstrapError::Connect(server(
            "28P01",
            "password authentication failed",
        ));
        assert_eq!(code(class_of(&anyhow::Error::new(auth))), CONNECTION);
        assert_eq!(code(class_of(&usage("bad"))), USAGE);
        assert_eq!(code(class_of(&local("full"))), LOCAL);
        assert_eq!(code(class_of(&anyhow::anyhow!("plain"))), ERROR);
    }

    #[test]
    fn object_storage_errors_have_their_classes() {
        let conflict = walrelay_store::StoreError::Conflict(Box::new(walrelay_store::Conflict {
            object: "s3://b/p/1/wal/000000010000000000000001".into(),
            stored: "aa".into(),
            ours: "bb".into(),
        }));
        let e = anyhow::Error::new(conflict).context("uploading WAL to the archive stopped");
        assert_eq!(code(class_of(&e)), LOCAL);
        let bad = walrelay_store::ArchiveLocation::parse("ftp://x").unwrap_err();
        assert_eq!(code(class_of(&anyhow::Error::new(bad))), USAGE);
    }

    #[test]
    fn a_wrapper_lets_its_cause_decide() {
        let full = walrelay_durable::DurableError::new(
            "write",
            "/x/000000010000000000000001.partial",
            std::io::Error::from_raw_os_error(28),
        );
        let inner = ReceiveError::Writer(WriterError::DiskFull(full));
        let wrapped = walrelay_basebackup::BootstrapError::WalStreamFailed(Box::new(inner));
        let e = anyhow::Error::new(wrapped);
        assert_eq!(code(class_of(&e)), LOCAL);
        assert!(is_disk_full(e.as_ref()));
    }

    #[test]
    fn one_line_does_not_repeat_the_server_message() {
        let e: anyhow::Error = ReceiveError::WalRemoved {
            slot: None,
            error: Box::new(
                server(
                    "58P01",
                    "requested WAL segment 000000010000000000000003 has already been removed",
                )
                .server_error()
                .cloned()
                .expect("a server error"),
            ),
        }
        .into();
        let line = one_line(&e);
        assert_eq!(
            line.matches("has already been removed").count(),
            1,
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
