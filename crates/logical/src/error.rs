//! Why a subset stopped, classified like every walrelay error ([`Classify`]): transient failures
//! (a connection lost on either side, a server restarting, a deadlock on the target) are retried
//! with backoff by `run`; everything else stops it with one line naming the cause and the fix.

use std::fmt;

use thiserror::Error;
use walrelay_client::{Classify, ClientError, ErrorClass, ServerCondition};
use walrelay_protocol::{Lsn, ProtocolError};

use crate::apply::ApplyError;
use crate::schema::TableName;

/// Which server a problem is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// One reason a subset cannot run as asked: what is wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub side: Side,
    pub cause: String,
    pub fix: String,
    #[serde(skip)]
    pub class: ErrorClass,
}

impl Problem {
    /// A problem of the server's state (exit class `ServerState`).
    pub fn new(side: Side, cause: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            side,
            cause: cause.into(),
            fix: fix.into(),
            class: ErrorClass::ServerState,
        }
    }

    pub fn with_class(mut self, class: ErrorClass) -> Problem {
        self.class = class;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause, self.fix)
    }
}

fn problems_line(p: &[Problem]) -> String {
    match p {
        [] => "preflight failed".to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problem(s), listed above)", rest.len()),
    }
}

/// How to go on once the slot lost what the target still needs.
pub const SLOT_LOST_FIX: &str = "copy every table again with `walrelay subset run … --resync-all` (a new slot; each target table emptied and copied from its snapshot; the other settings kept), or drop the subset; where a standby may be promoted, give the slot --failover (PostgreSQL 17+) so that it survives";

/// What to do once the subset's publication was dropped under its slot.
pub const PUBLICATION_LOST_FIX: &str = "copy every table again with `walrelay subset run … --resync-all` (a new publication and slot; each target table emptied and copied from its snapshot; the other settings kept), or drop the subset";

/// Which change found the target's rows not as the source's stream expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    pub table: TableName,
    /// `INSERT`, `UPDATE`, `DELETE`.
    pub change: &'static str,
    /// `(id)=(5)`, or the whole row for a table without a key.
    pub key: String,
    /// What the target said or did.
    pub problem: String,
    /// The source transaction's commit LSN (what `--skip-lsn` takes) and id.
    pub lsn: Lsn,
    pub xid: u32,
    /// The target refused a value (a data exception, SQLSTATE class 22: a type or enum label the
    /// target's column cannot hold), not the rows it has.
    pub value_refused: bool,
}

impl fmt::Display for ConflictReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lsn = self.lsn;
        // The same change named either way; what to do differs.
        let (what, fix_first) = if self.value_refused {
            (
                "the target cannot take a value",
                "make the target's column able to hold it (its type or length, a missing enum label, a value an older major does not know), then run again",
            )
        } else {
            (
                "conflict on the target",
                "was the table written outside walrelay? Decide which row is right, then correct the target and run again",
            )
        };
        write!(
            f,
            "{what} in source transaction {xid} (commit LSN {lsn}): {change} of {table} key {key}: {problem}; {fix_first}, or run again with --skip-lsn {lsn} to leave out that whole source transaction",
            xid = self.xid,
            change = self.change,
            table = self.table,
            key = self.key,
            problem = self.problem,
        )?;
        if !self.value_refused {
            f.write_str(", or with --on-conflict upsert|skip (each conflict then recorded in walrelay.subset_conflicts)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum SubsetError {
    #[error("invalid subset name {0:?}: use 1 to 54 lower-case letters, digits and underscores")]
    InvalidName(String),
    #[error("{0}")]
    Usage(String),
    /// The preflight checks failed; nothing was created.
    #[error("{}", problems_line(.0))]
    Preflight(Vec<Problem>),
    #[error("could not connect to the {side}: {source}")]
    Connect {
        side: Side,
        #[source]
        source: ClientError,
    },
    #[error("{what} on the {side} failed: {source}")]
    Sql {
        side: Side,
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("replication slot {slot} is {why} on the source: the changes the target still needs are gone from it; {SLOT_LOST_FIX}")]
    SlotLost { slot: String, why: String },
    #[error("publication {publication} was dropped on the source while the subset used it: the source cannot give the subset's changes made since ({how}); {PUBLICATION_LOST_FIX}")]
    PublicationLost { publication: String, how: String },
    #[error("table {table} of the subset was taken out of publication {publication} on the source while the subset streamed: the source no longer sends its changes; copy it again with `walrelay subset run … --resync {table}`, or take it out of the subset (run with -t listing the tables to keep)")]
    TableUnpublished {
        table: TableName,
        publication: String,
    },
    #[error("the source is another server (system identifier {found}; the subset was started from {expected}): point -d at the subset's source, or drop the subset and start again")]
    OtherSource { expected: String, found: String },
    #[error("the source sent a malformed replication message: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("the source ended the replication stream")]
    StreamEnded,
    #[error("the source sent a later chunk of streamed transaction {xid} without its first: reconnecting (the source streams it again from its start)")]
    StreamGap { xid: u32 },
    #[error("the source has sent nothing for {secs} s (status updates asked it to answer): reconnecting")]
    SourceSilent { secs: u64 },
    #[error("another `walrelay subset run` for subset \"{name}\" holds its lock on the target: only one may run at a time (a run killed a moment ago lets go as soon as the target notices)")]
    AlreadyRunning { name: String },
    #[error("{0}")]
    Conflict(Box<ConflictReport>),
    /// A group of source transactions conflicted on the target: it was rolled back, and the next
    /// session applies the transactions up to `until` one statement at a time to name the change.
    #[error("a change conflicts with the target's rows in the source transactions up to commit LSN {until}: applying them one at a time to name it")]
    ConflictFound { until: Lsn },
    /// A table's columns changed on the source in a way walrelay does not follow.
    #[error(
        "{table} changed on the source (source transaction {xid}, commit LSN {lsn}): {detail}"
    )]
    SchemaChanged {
        table: TableName,
        detail: String,
        lsn: Lsn,
        xid: u32,
    },
    #[error("could not {what} {path}: {source}: free space there, or point --spool-dir at a file system with room for the largest source transaction")]
    Spool {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no subset named \"{name}\" on the target: check --name and --target (the subsets it holds: SELECT subset FROM walrelay.subset_progress on the target)")]
    UnknownSubset { name: String },
    #[error("the target has applied the source's changes up to {applied}, not yet up to {wanted}, after {seconds} s: is `walrelay subset run` running for this subset?")]
    NotCaughtUp {
        applied: Lsn,
        wanted: Lsn,
        seconds: u64,
    },
}

impl SubsetError {
    pub(crate) fn sql(side: Side, what: impl Into<String>) -> impl FnOnce(ClientError) -> Self {
        let what = what.into();
        move |source| SubsetError::Sql { side, what, source }
    }

    pub(crate) fn connect(side: Side) -> impl FnOnce(ClientError) -> Self {
        move |source| SubsetError::Connect { side, source }
    }

    /// Whether another attempt may succeed: every transient error, and a slot still held by a
    /// walsender — after a reconnect usually our own previous one, which the server ends once it
    /// notices the old connection is gone.
    pub fn is_retryable(&self) -> bool {
        let client = match self {
            SubsetError::Connect { source, .. } | SubsetError::Sql { source, .. } => Some(source),
            _ => None,
        };
        self.class().is_transient()
            || client.and_then(|c| c.condition()) == Some(ServerCondition::SlotInUse)
    }
}

/// SQLSTATEs that a retry resolves: serialization failure, deadlock, lock not available — and
/// what an operator resolves while walrelay waits, as a native subscription's apply worker does:
/// a full disk or no memory on the target (the failed transaction is rolled back and applied again
/// once there is room), a target made read-only (`default_transaction_read_only`, fenced during a
/// switchover).
const RETRY_SQLSTATES: &[&str] = &["40001", "40P01", "55P03", "53100", "53200", "25006"];

impl Classify for SubsetError {
    fn class(&self) -> ErrorClass {
        match self {
            SubsetError::InvalidName(_)
            | SubsetError::Usage(_)
            | SubsetError::UnknownSubset { .. } => ErrorClass::Usage,
            SubsetError::Preflight(p) => p.first().map_or(ErrorClass::ServerState, |p| p.class),
            SubsetError::Connect { source, .. } => source.class(),
            SubsetError::Sql { source, .. } => match source.sqlstate() {
                Some(s) if RETRY_SQLSTATES.contains(&s) => ErrorClass::Transient,
                // Integrity violations (a duplicate key, a NOT NULL): the target is not what the
                // stream expects; waiting does not change that.
                Some(s) if s.starts_with("23") => ErrorClass::ServerState,
                _ => source.class(),
            },
            SubsetError::SlotLost { .. }
            | SubsetError::PublicationLost { .. }
            | SubsetError::TableUnpublished { .. }
            | SubsetError::OtherSource { .. }
            | SubsetError::Apply(_)
            | SubsetError::Conflict(_)
            | SubsetError::SchemaChanged { .. } => ErrorClass::ServerState,
            SubsetError::Spool { .. } => ErrorClass::Local,
            SubsetError::ConflictFound { .. } => ErrorClass::Transient,
            SubsetError::Protocol(_) | SubsetError::NotCaughtUp { .. } => ErrorClass::Other,
            SubsetError::StreamEnded
            | SubsetError::StreamGap { .. }
            | SubsetError::SourceSilent { .. }
            | SubsetError::AlreadyRunning { .. } => ErrorClass::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrelay_protocol::ErrorFields;

    fn server(code: &str) -> ClientError {
        ClientError::server(ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            ..Default::default()
        })
    }

    #[test]
    fn classes() {
        let sql = |code| SubsetError::sql(Side::Target, "apply")(server(code));
        assert!(sql("40P01").is_retryable());
        assert!(sql("53100").is_retryable(), "disk full on the target");
        assert!(sql("25006").is_retryable(), "target read-only for a while");
        assert!(
            !sql("42P01").is_retryable(),
            "a missing table stays missing"
        );
        assert_eq!(sql("23505").class(), ErrorClass::ServerState);
        assert!(!sql("23505").is_retryable());
        assert!(sql("55006").is_retryable(), "slot in use");
        assert!(SubsetError::connect(Side::Source)(ClientError::Closed).is_retryable());
        assert_eq!(
            SubsetError::InvalidName("X".into()).class(),
            ErrorClass::Usage
        );
        let p = SubsetError::Preflight(vec![
            Problem::new(Side::Source, "a", "b"),
            Problem::new(Side::Target, "c", "d"),
        ]);
        assert_eq!(p.to_string(), "a: b (and 1 more problem(s), listed above)");
        assert_eq!(p.class(), ErrorClass::ServerState);
    }
}
