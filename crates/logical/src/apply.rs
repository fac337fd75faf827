//! The apply core: pgoutput messages in, target statements out. No IO.
//!
//! For each source transaction (Begin … Commit) the [`Applier`] turns the changes to the subset's
//! tables into parameterized statements with the values in text form, exactly as the source's
//! output functions wrote them; the caller runs them in one target transaction together with the
//! progress row (`stream`). Rules, after PostgreSQL's own apply worker (`worker.c`):
//!
//! * **Which changes.** A change is applied only to a table whose initial copy is done, and only
//!   if its transaction commits at or after the table's sync point: `final_lsn >= sync_lsn`
//!   (`should_apply_changes_for_rel`). The copy's snapshot holds exactly the transactions that
//!   committed before the point, the stream exactly the others.
//! * **Which table.** A Relation message names the source's table by OID and by name; it is the
//!   subset table of that OID (recorded with its copy), else of that name. A subset table the
//!   source now calls otherwise was renamed there.
//! * **Matching rows.** UPDATE and DELETE find their row by the replica identity columns (the
//!   columns the Relation message flags): from the old key (`'K'`) when the key changed, else from
//!   the new row; with REPLICA IDENTITY FULL by the whole old row (`'O'`), one row at a time
//!   (`statements`).
//! * **Unchanged TOAST.** A column sent as `'u'` (an out-of-line value the update did not touch)
//!   is left out of the UPDATE's SET list, so the target keeps what it has.
//! * **TRUNCATE** empties the subset's tables among those listed (`ONLY`, never CASCADE), with
//!   RESTART IDENTITY when the source asked for it.
//! * **Schema changes.** Before the first change of a table that applies, its Relation is compared
//!   with the columns walrelay last followed ([`Applier::pending_schema_change`]); a difference is
//!   the caller's to follow or refuse (`follow`) before the change is applied.
//! * **Skipping.** The transaction committing at `--skip-lsn` is left out whole; the caller
//!   records it.
//! * Relations are learnt from Relation messages, which the source sends before a table's first
//!   change in every session: the map is rebuilt from scratch on each reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;
use walrelay_protocol::pgoutput::{
    OldTuple, PgOutputMessage, Relation, RelationColumn, ReplicaIdentity, TupleData, TupleValue,
};
use walrelay_protocol::Lsn;

use crate::config::OnConflict;
use crate::schema::{SourceColumn, SubsetName, TableName};
use crate::statements::{json_object, StatementColumn, TableStatements};

/// Why a message cannot be applied. All definite: the stream is not what the target can follow.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("the source sent a {0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("the source sent Begin inside a transaction")]
    NestedBegin,
    #[error("the source's Commit names commit LSN {commit}, its Begin said {begin}")]
    CommitMismatch { begin: Lsn, commit: Lsn },
    #[error(
        "the source sent a change for relation {relid} before describing it (at source LSN {lsn})"
    )]
    UnknownRelation { relid: u32, lsn: Lsn },
    #[error("{table} has no replica identity on the source any more (its primary key was dropped?): walrelay cannot find the rows an UPDATE or DELETE means; give it a primary key again (or REPLICA IDENTITY FULL) and run again")]
    NoKey { table: TableName },
    #[error(
        "the source sent a row of {got} columns for {table}, which has {want} (source LSN {lsn})"
    )]
    ColumnCount {
        table: TableName,
        got: usize,
        want: usize,
        lsn: Lsn,
    },
    #[error("the source sent an unusable key for a row of {table} (unchanged or binary value in a key column, source LSN {lsn})")]
    BadKey { table: TableName, lsn: Lsn },
    #[error("the source sent a {what} value for {table}, which walrelay did not ask for")]
    UnexpectedValue {
        what: &'static str,
        table: TableName,
    },
    #[error("the source sent a {0} message, which walrelay did not ask for")]
    Unexpected(&'static str),
    #[error("{table} on the source is another table than the one walrelay copied (dropped and created again there?), and its changes cannot be applied to the copy: run `walrelay subset run … --resync {table}` to copy it again")]
    Replaced { table: TableName },
}

/// Whether a table's copy is done, and from which point the stream applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSync {
    /// Not copied yet: its changes are not applied.
    Pending,
    /// Copied under a snapshot taken at this source LSN.
    Synced(Lsn),
}

/// A column of a subset table on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    pub type_name: String,
    /// The type has an equality (else REPLICA IDENTITY FULL compares its text).
    pub has_equality: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: inserts need `OVERRIDING SYSTEM VALUE`, updates leave it.
    pub always_identity: bool,
}

/// A subset table as the apply needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyTable {
    pub name: TableName,
    pub sync: TableSync,
    /// The table's OID on the source, when known (recorded with the copy).
    pub source_oid: Option<u32>,
    /// The target's columns that the source writes (not generated ones).
    pub target_columns: Vec<TargetColumn>,
    /// The source's columns as walrelay last followed them (empty: not known).
    pub source_columns: Vec<SourceColumn>,
    /// The target table is partitioned (rows routed to its partitions).
    pub target_partitioned: bool,
}

impl ApplyTable {
    fn target_column(&self, name: &str) -> Option<&TargetColumn> {
        self.target_columns.iter().find(|c| c.name == name)
    }
}

/// How the session applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    pub subset: SubsetName,
    pub on_conflict: OnConflict,
    /// The commit LSN of a source transaction to leave out.
    pub skip_lsn: Option<Lsn>,
}

/// One statement for the target, text parameters (`None` is NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: Arc<str>,
    pub params: Vec<Option<Bytes>>,
    pub kind: ChangeKind,
    /// The source relation it applies a change of.
    pub relid: u32,
    /// With [`Applier::set_describe`]: the row's key, as `(id)=(5)`.
    pub key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl ChangeKind {
    pub fn as_sql(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
            ChangeKind::Truncate => "TRUNCATE",
        }
    }
}

/// What a message means for the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do (another table, a Relation, a change before a table's sync point, …).
    None,
    /// A source transaction begins.
    Begin { final_lsn: Lsn, xid: u32 },
    /// Run this in the target transaction of the current source transaction.
    Execute(Statement),
    /// The source transaction commits; `changes` statements were produced for it. `skipped`:
    /// it was left out whole (`--skip-lsn`), with that many changes.
    Commit {
        end_lsn: Lsn,
        commit_time: i64,
        changes: u64,
        skipped: Option<u64>,
    },
}

/// How a subset table's Relation differs from what walrelay followed last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDiff {
    pub relid: u32,
    pub table: TableName,
    /// The source's name for the table, when it is not the subset's (renamed on the source).
    pub renamed_to: Option<TableName>,
    /// Columns the source sends that walrelay did not follow yet.
    pub added: Vec<RelationColumn>,
    /// Columns followed before that the source no longer sends.
    pub removed: Vec<SourceColumn>,
    /// Columns whose type (or type modifier) differs: as followed, as sent now.
    pub retyped: Vec<(SourceColumn, RelationColumn)>,
    /// Columns the source sends, followed before, that the target lacks.
    pub missing_on_target: Vec<String>,
    /// The source transaction whose change met it.
    pub lsn: Lsn,
    pub xid: u32,
}

/// What tells two UPDATE or DELETE texts apart: the kind, the columns set, which key values are
/// NULL, and whether an upsert inserts the whole row.
type Shape = (ChangeKind, Vec<bool>, Vec<bool>, bool);

/// A Relation message matched to a subset table, with its statements.
#[derive(Debug)]
struct RelationPlan {
    relation: Relation,
    statements: TableStatements,
    /// Compared with what walrelay followed (before the first change that applies).
    checked: bool,
    insert: Arc<str>,
    /// UPDATE and DELETE texts by shape.
    shapes: HashMap<Shape, Arc<str>>,
}

#[derive(Debug)]
enum RelEntry {
    /// Not one of the subset's tables; `reported` once a change of it arrived and was reported.
    /// (The source describes more relations than it sends changes of: with a partitioned table
    /// published as itself, each partition a change touches is described too.)
    Foreign {
        name: TableName,
        reported: bool,
    },
    /// A table of a subset table's name but another OID than the one copied.
    Replaced(TableName),
    Subset(Box<RelationPlan>),
}

#[derive(Debug)]
struct Transaction {
    final_lsn: Lsn,
    xid: u32,
    changes: u64,
    /// Left out whole (`--skip-lsn`).
    skip: bool,
}

/// The apply core for one session.
#[derive(Debug)]
pub struct Applier {
    tables: HashMap<TableName, ApplyTable>,
    options: ApplyOptions,
    relations: HashMap<u32, RelEntry>,
    txn: Option<Transaction>,
    /// Relations not among the subset's tables whose changes arrived, not yet reported.
    foreign: Vec<TableName>,
    describe: bool,
    /// A Relation that matched what walrelay follows by name and type, whose columns' identity
    /// (`attnum`) the caller has still to check on the source: see
    /// [`Applier::take_identity_check`].
    identity_check: Option<SchemaDiff>,
}

impl Applier {
    pub fn new(tables: impl IntoIterator<Item = ApplyTable>, options: ApplyOptions) -> Self {
        Applier {
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            options,
            relations: HashMap::new(),
            txn: None,
            foreign: Vec::new(),
            describe: false,
            identity_check: None,
        }
    }

    /// Whether statements carry their row's key (to name it in a conflict); costs an allocation
    /// per change.
    pub fn set_describe(&mut self, on: bool) {
        self.describe = on;
    }

    /// Relations not among the subset's tables whose changes the source sent, once each: a
    /// table removed from the subset whose older changes still arrive.
    pub fn take_foreign_relations(&mut self) -> Vec<TableName> {
        std::mem::take(&mut self.foreign)
    }

    /// Whether a source transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// The open source transaction: its id and commit LSN.
    pub fn current(&self) -> Option<(u32, Lsn)> {
        self.txn.as_ref().map(|t| (t.xid, t.final_lsn))
    }

    pub fn table(&self, name: &TableName) -> Option<&ApplyTable> {
        self.tables.get(name)
    }

    /// The subset table a source relation is, if it is one.
    pub fn table_of(&self, relid: u32) -> Option<&TableName> {
        match self.relations.get(&relid) {
            Some(RelEntry::Subset(p)) => Some(&p.statements.table),
            _ => None,
        }
    }

    /// The source's latest description of a subset table.
    pub fn relation(&self, relid: u32) -> Option<&Relation> {
        match self.relations.get(&relid) {
            Some(RelEntry::Subset(p)) => Some(&p.relation),
            _ => None,
        }
    }

    /// Whether a change committed at `final_lsn` applies to `table`.
    fn applies(&self, table: &TableName, final_lsn: Lsn) -> bool {
        match self.tables.get(table).map(|t| t.sync) {
            Some(TableSync::Synced(at)) => final_lsn >= at,
            Some(TableSync::Pending) | None => false,
        }
    }

    /// Before `msg` is applied: a difference between its table's Relation and what walrelay
    /// followed, which the caller must follow (then [`Applier::schema_followed`]) or refuse.
    /// Only for a change that applies, so that a table copied after a schema change is never
    /// compared with the Relation of a transaction its copy already holds.
    pub fn pending_schema_change(&mut self, msg: &PgOutputMessage) -> Option<SchemaDiff> {
        let relid = match msg {
            PgOutputMessage::Insert(i) => i.relid,
            PgOutputMessage::Update(u) => u.relid,
            PgOutputMessage::Delete(d) => d.relid,
            _ => return None,
        };
        let (xid, final_lsn) = self.current()?;
        let table_name = match self.relations.get(&relid) {
            Some(RelEntry::Subset(p)) if !p.checked => p.statements.table.clone(),
            _ => return None,
        };
        if !self.applies(&table_name, final_lsn) {
            return None;
        }
        let table = self.tables.get(&table_name)?;
        let Some(RelEntry::Subset(plan)) = self.relations.get_mut(&relid) else {
            return None;
        };
        let diff = diff(&plan.relation, table, relid, final_lsn, xid);
        if diff.is_none() {
            plan.checked = true;
            // Same names and types: the columns may still not be the ones followed (two
            // swapped by renames, one dropped and added again) — only the source's attnums
            // tell, where walrelay knows them.
            if table.source_columns.iter().any(|c| c.attnum != 0) {
                self.identity_check = Some(SchemaDiff {
                    relid,
                    table: table_name,
                    renamed_to: None,
                    added: Vec::new(),
                    removed: Vec::new(),
                    retyped: Vec::new(),
                    missing_on_target: Vec::new(),
                    lsn: final_lsn,
                    xid,
                });
            }
        }
        diff
    }

    /// After [`Applier::pending_schema_change`] found no difference: the table whose Relation's
    /// columns must be checked against the source's attnums before the change applies.
    pub fn take_identity_check(&mut self) -> Option<SchemaDiff> {
        self.identity_check.take()
    }

    /// The caller followed a schema change of `table` on the target: its columns are now these.
    pub fn schema_followed(
        &mut self,
        table: &TableName,
        target_columns: Vec<TargetColumn>,
        source_columns: Vec<SourceColumn>,
    ) {
        if let Some(t) = self.tables.get_mut(table) {
            t.target_columns = target_columns;
            t.source_columns = source_columns;
        }
        let relids: Vec<u32> = self
            .relations
            .iter()
            .filter_map(|(id, e)| match e {
                RelEntry::Subset(p) if &p.statements.table == table => Some(*id),
                _ => None,
            })
            .collect();
        for relid in relids {
            if let Some(RelEntry::Subset(p)) = self.relations.remove(&relid) {
                let relation = p.relation;
                self.learn_relation(relation);
                if let Some(RelEntry::Subset(p)) = self.relations.get_mut(&relid) {
                    p.checked = true;
                }
            }
        }
    }

    pub fn on_message(&mut self, msg: PgOutputMessage) -> Result<Action, ApplyError> {
        match msg {
            PgOutputMessage::Begin(b) => {
                if self.txn.is_some() {
                    return Err(ApplyError::NestedBegin);
                }
                self.txn = Some(Transaction {
                    final_lsn: b.final_lsn,
                    xid: b.xid,
                    changes: 0,
                    skip: self.options.skip_lsn == Some(b.final_lsn),
                });
                Ok(Action::Begin {
                    final_lsn: b.final_lsn,
                    xid: b.xid,
                })
            }
            PgOutputMessage::Commit(c) => {
                let txn = self
                    .txn
                    .take()
                    .ok_or(ApplyError::OutsideTransaction("Commit"))?;
                if c.commit_lsn != txn.final_lsn {
                    return Err(ApplyError::CommitMismatch {
                        begin: txn.final_lsn,
                        commit: c.commit_lsn,
                    });
                }
                Ok(Action::Commit {
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_time,
                    changes: if txn.skip { 0 } else { txn.changes },
                    skipped: txn.skip.then_some(txn.changes),
                })
            }
            PgOutputMessage::Relation(r) => {
                self.learn_relation(r);
                Ok(Action::None)
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) | PgOutputMessage::Message(_) => {
                Ok(Action::None)
            }
            PgOutputMessage::Insert(i) => {
                self.change(i.relid, |plan, ctx| plan.insert(&i.new, ctx))
            }
            PgOutputMessage::Update(u) => self.change(u.relid, |plan, ctx| {
                plan.update(u.old.as_ref(), &u.new, ctx)
            }),
            PgOutputMessage::Delete(d) => {
                self.change(d.relid, |plan, ctx| plan.delete(&d.old, ctx))
            }
            PgOutputMessage::Truncate(t) => {
                let txn = self
                    .txn
                    .as_ref()
                    .ok_or(ApplyError::OutsideTransaction("Truncate"))?;
                let (final_lsn, skip) = (txn.final_lsn, txn.skip);
                let mut names = Vec::new();
                let mut foreign = Vec::new();
                for relid in &t.relids {
                    match self.relations.get(relid) {
                        None => {
                            return Err(ApplyError::UnknownRelation {
                                relid: *relid,
                                lsn: final_lsn,
                            })
                        }
                        Some(RelEntry::Foreign { .. }) => foreign.push(*relid),
                        Some(RelEntry::Replaced(_)) => {}
                        Some(RelEntry::Subset(plan)) => {
                            if self.applies(&plan.statements.table, final_lsn) {
                                names.push(crate::schema::rows_of(
                                    &plan.statements.table,
                                    plan.statements.partitioned,
                                ));
                            }
                        }
                    }
                }
                for relid in foreign {
                    self.report_foreign(relid);
                }
                if names.is_empty() {
                    return Ok(Action::None);
                }
                if let Some(txn) = self.txn.as_mut() {
                    txn.changes += 1;
                }
                if skip {
                    return Ok(Action::None);
                }
                let restart = if t.restart_identity() {
                    " RESTART IDENTITY"
                } else {
                    ""
                };
                Ok(Action::Execute(Statement {
                    sql: format!("TRUNCATE {}{restart}", names.join(", ")).into(),
                    params: Vec::new(),
                    kind: ChangeKind::Truncate,
                    relid: t.relids.first().copied().unwrap_or(0),
                    key: None,
                }))
            }
            PgOutputMessage::StreamStart(_) => Err(ApplyError::Unexpected("Stream Start")),
            PgOutputMessage::StreamStop => Err(ApplyError::Unexpected("Stream Stop")),
            PgOutputMessage::StreamCommit(_) => Err(ApplyError::Unexpected("Stream Commit")),
            PgOutputMessage::StreamAbort(_) => Err(ApplyError::Unexpected("Stream Abort")),
        }
    }

    fn change(
        &mut self,
        relid: u32,
        build: impl FnOnce(&mut RelationPlan, &ChangeContext) -> Result<Option<Statement>, ApplyError>,
    ) -> Result<Action, ApplyError> {
        let txn = self
            .txn
            .as_ref()
            .ok_or(ApplyError::OutsideTransaction("change"))?;
        let (final_lsn, xid, skip) = (txn.final_lsn, txn.xid, txn.skip);
        let table = match self.relations.get(&relid) {
            None => {
                return Err(ApplyError::UnknownRelation {
                    relid,
                    lsn: final_lsn,
                })
            }
            Some(RelEntry::Foreign { .. }) => {
                self.report_foreign(relid);
                return Ok(Action::None);
            }
            Some(RelEntry::Replaced(name)) => {
                if self.applies(name, final_lsn) {
                    return Err(ApplyError::Replaced {
                        table: name.clone(),
                    });
                }
                return Ok(Action::None);
            }
            Some(RelEntry::Subset(plan)) => plan.statements.table.clone(),
        };
        if !self.applies(&table, final_lsn) {
            return Ok(Action::None);
        }
        if skip {
            if let Some(txn) = self.txn.as_mut() {
                txn.changes += 1;
            }
            return Ok(Action::None);
        }
        let ctx = ChangeContext {
            lsn: final_lsn,
            xid,
            relid,
            describe: self.describe,
        };
        let Some(RelEntry::Subset(plan)) = self.relations.get_mut(&relid) else {
            return Ok(Action::None);
        };
        match build(plan, &ctx)? {
            Some(stmt) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.changes += 1;
                }
                Ok(Action::Execute(stmt))
            }
            None => Ok(Action::None),
        }
    }

    /// Which subset table a relation is: by OID when the table's is known, else by name.
    fn match_table(&self, relid: u32, name: &TableName) -> Option<TableName> {
        if let Some(t) = self.tables.values().find(|t| t.source_oid == Some(relid)) {
            return Some(t.name.clone());
        }
        self.tables
            .get(name)
            .filter(|t| t.source_oid.is_none())
            .map(|t| t.name.clone())
    }

    /// A change of a relation not in the subset arrived: reported once.
    fn report_foreign(&mut self, relid: u32) {
        if let Some(RelEntry::Foreign { name, reported }) = self.relations.get_mut(&relid) {
            if !*reported {
                *reported = true;
                self.foreign.push(name.clone());
            }
        }
    }

    fn learn_relation(&mut self, r: Relation) {
        let name = relation_name(&r);
        let Some(table_name) = self.match_table(r.relid, &name) else {
            if self.tables.contains_key(&name) {
                self.relations.insert(r.relid, RelEntry::Replaced(name));
            } else {
                let reported = matches!(
                    self.relations.get(&r.relid),
                    Some(RelEntry::Foreign { reported: true, .. })
                );
                self.relations
                    .insert(r.relid, RelEntry::Foreign { name, reported });
            }
            return;
        };
        let Some(table) = self.tables.get(&table_name) else {
            return;
        };
        let columns: Vec<StatementColumn> = r
            .columns
            .iter()
            .map(|c| {
                let t = table.target_column(&c.name);
                StatementColumn {
                    name: c.name.clone(),
                    type_name: t.map_or_else(|| "text".to_string(), |t| t.type_name.clone()),
                    text_compare: t.is_some_and(|t| !t.has_equality),
                    never_set: t.is_some_and(|t| t.always_identity),
                }
            })
            .collect();
        let statements = TableStatements {
            table: table_name,
            key: r
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key())
                .map(|(i, _)| i)
                .collect(),
            full: r.replica_identity == ReplicaIdentity::Full,
            partitioned: table.target_partitioned,
            overriding: table.target_columns.iter().any(|c| c.always_identity),
            columns,
            on_conflict: self.options.on_conflict,
            subset: self.options.subset.clone(),
        };
        let insert: Arc<str> = statements.insert().into();
        self.relations.insert(
            r.relid,
            RelEntry::Subset(Box::new(RelationPlan {
                relation: r,
                statements,
                checked: false,
                insert,
                shapes: HashMap::new(),
            })),
        );
    }
}

fn relation_name(r: &Relation) -> TableName {
    let schema = if r.namespace.is_empty() {
        "pg_catalog"
    } else {
        &r.namespace
    };
    TableName::new(schema, &r.name)
}

/// Compares a Relation with what walrelay followed of `table`.
fn diff(r: &Relation, table: &ApplyTable, relid: u32, lsn: Lsn, xid: u32) -> Option<SchemaDiff> {
    let name = relation_name(r);
    let renamed_to = (name != table.name).then_some(name);
    let mut added = Vec::new();
    let mut retyped = Vec::new();
    let mut missing_on_target = Vec::new();
    for c in &r.columns {
        if table.source_columns.is_empty() {
            // Not known (a subset of an older walrelay): the target's columns stand for them.
            if table.target_column(&c.name).is_none() {
                added.push(c.clone());
            }
            continue;
        }
        match table.source_columns.iter().find(|s| s.name == c.name) {
            None => added.push(c.clone()),
            Some(s) if s.type_oid != c.type_oid || s.type_mod != c.type_modifier => {
                retyped.push((s.clone(), c.clone()))
            }
            Some(_) if table.target_column(&c.name).is_none() => {
                missing_on_target.push(c.name.clone())
            }
            Some(_) => {}
        }
    }
    let removed: Vec<SourceColumn> = table
        .source_columns
        .iter()
        .filter(|s| !r.columns.iter().any(|c| c.name == s.name))
        .cloned()
        .collect();
    if renamed_to.is_none()
        && added.is_empty()
        && removed.is_empty()
        && retyped.is_empty()
        && missing_on_target.is_empty()
    {
        return None;
    }
    Some(SchemaDiff {
        relid,
        table: table.name.clone(),
        renamed_to,
        added,
        removed,
        retyped,
        missing_on_target,
        lsn,
        xid,
    })
}

/// The source transaction and relation of a change, and whether to describe its key.
struct ChangeContext {
    lsn: Lsn,
    xid: u32,
    relid: u32,
    describe: bool,
}

impl RelationPlan {
    fn table(&self) -> &TableName {
        &self.statements.table
    }

    fn width(&self) -> usize {
        self.statements.columns.len()
    }

    fn recording(&self) -> bool {
        self.statements.on_conflict != OnConflict::Error
    }

    fn shape(
        &mut self,
        kind: ChangeKind,
        set: &[bool],
        nulls: &[bool],
        upsert_row: bool,
    ) -> Arc<str> {
        let key = (kind, set.to_vec(), nulls.to_vec(), upsert_row);
        if let Some(s) = self.shapes.get(&key) {
            return s.clone();
        }
        let sql: Arc<str> = match kind {
            ChangeKind::Update => self.statements.update(set, nulls, upsert_row),
            _ => self.statements.delete(nulls),
        }
        .into();
        self.shapes.insert(key, sql.clone());
        sql
    }

    /// The key values of a row (non-NULL ones, in key order) and which are NULL. Without
    /// REPLICA IDENTITY FULL every key value must be there.
    fn key_values(
        &self,
        row: &[Param],
        lsn: Lsn,
    ) -> Result<(Vec<Option<Bytes>>, Vec<bool>), ApplyError> {
        let s = &self.statements;
        if s.key.is_empty() {
            return Err(ApplyError::NoKey {
                table: self.table().clone(),
            });
        }
        let mut values = Vec::with_capacity(s.key.len());
        let mut nulls = Vec::with_capacity(s.key.len());
        for &k in &s.key {
            match row.get(k) {
                Some(Param::Value(Some(v))) => {
                    values.push(Some(v.clone()));
                    nulls.push(false);
                }
                Some(Param::Value(None)) if s.full => nulls.push(true),
                _ => {
                    return Err(ApplyError::BadKey {
                        table: self.table().clone(),
                        lsn,
                    })
                }
            }
        }
        Ok((values, nulls))
    }

    /// `(id)=(5)`: a row's key for messages.
    fn describe_key(&self, row: &[Param]) -> String {
        let s = &self.statements;
        let names: Vec<&str> = s.key.iter().map(|&k| s.columns[k].name.as_str()).collect();
        let values: Vec<String> = s
            .key
            .iter()
            .map(|&k| match row.get(k) {
                Some(Param::Value(Some(v))) => String::from_utf8_lossy(v).into_owned(),
                _ => "NULL".to_string(),
            })
            .collect();
        format!("({})=({})", names.join(", "), values.join(", "))
    }

    /// The four parameters of a conflict record: commit LSN, xid, key, row (as JSON).
    fn record_params(
        &self,
        ctx: &ChangeContext,
        key_row: &[Param],
        row: &[Param],
    ) -> [Option<Bytes>; 4] {
        let s = &self.statements;
        let pairs = |idx: &mut dyn Iterator<Item = usize>, r: &[Param]| {
            let items: Vec<(&str, Option<&[u8]>)> = idx
                .filter_map(|i| match r.get(i) {
                    Some(Param::Value(v)) => Some((s.columns[i].name.as_str(), v.as_deref())),
                    _ => None,
                })
                .collect();
            json_object(items)
        };
        let key = pairs(&mut s.key.iter().copied(), key_row);
        let row = pairs(&mut (0..s.columns.len()), row);
        [
            Some(Bytes::from(ctx.lsn.to_string())),
            Some(Bytes::from(ctx.xid.to_string())),
            Some(Bytes::from(key)),
            Some(Bytes::from(row)),
        ]
    }

    fn statement(
        &self,
        sql: Arc<str>,
        params: Vec<Option<Bytes>>,
        kind: ChangeKind,
        ctx: &ChangeContext,
        key_row: &[Param],
    ) -> Statement {
        Statement {
            sql,
            params,
            kind,
            relid: ctx.relid,
            key: ctx.describe.then(|| self.describe_key(key_row)),
        }
    }

    fn insert(
        &mut self,
        new: &TupleData,
        ctx: &ChangeContext,
    ) -> Result<Option<Statement>, ApplyError> {
        let row = values(self.table(), new, self.width(), ctx.lsn)?;
        if row.iter().any(Param::is_unchanged) {
            return Err(ApplyError::UnexpectedValue {
                what: "unchanged-TOAST",
                table: self.table().clone(),
            });
        }
        let mut params: Vec<Option<Bytes>> = row.iter().map(Param::value).collect();
        if self.recording() {
            params.extend(self.record_params(ctx, &row, &row));
        }
        Ok(Some(self.statement(
            self.insert.clone(),
            params,
            ChangeKind::Insert,
            ctx,
            &row,
        )))
    }

    fn update(
        &mut self,
        old: Option<&OldTuple>,
        new: &TupleData,
        ctx: &ChangeContext,
    ) -> Result<Option<Statement>, ApplyError> {
        let new = values(self.table(), new, self.width(), ctx.lsn)?;
        let key_row = match old {
            Some(old) => values(self.table(), old.tuple(), self.width(), ctx.lsn)?,
            None => new.clone(),
        };
        let (key, nulls) = self.key_values(&key_row, ctx.lsn)?;
        let set: Vec<bool> = new
            .iter()
            .zip(&self.statements.columns)
            .map(|(v, c)| !v.is_unchanged() && !c.never_set)
            .collect();
        if !set.contains(&true) {
            return Ok(None);
        }
        let upsert_row = self.statements.on_conflict == OnConflict::Upsert
            && !new.iter().any(Param::is_unchanged);
        let sql = self.shape(ChangeKind::Update, &set, &nulls, upsert_row);
        let mut params: Vec<Option<Bytes>> = if upsert_row {
            new.iter().map(Param::value).collect()
        } else {
            new.iter()
                .zip(&set)
                .filter(|(_, s)| **s)
                .map(|(v, _)| v.value())
                .collect()
        };
        params.extend(key);
        if self.recording() {
            params.extend(self.record_params(ctx, &key_row, &new));
        }
        Ok(Some(self.statement(
            sql,
            params,
            ChangeKind::Update,
            ctx,
            &key_row,
        )))
    }

    fn delete(
        &mut self,
        old: &OldTuple,
        ctx: &ChangeContext,
    ) -> Result<Option<Statement>, ApplyError> {
        let old = values(self.table(), old.tuple(), self.width(), ctx.lsn)?;
        let (mut params, nulls) = self.key_values(&old, ctx.lsn)?;
        let sql = self.shape(ChangeKind::Delete, &[], &nulls, false);
        if self.recording() {
            params.extend(self.record_params(ctx, &old, &old));
        }
        Ok(Some(self.statement(
            sql,
            params,
            ChangeKind::Delete,
            ctx,
            &old,
        )))
    }
}

/// A column value on its way to a parameter.
#[derive(Clone, Debug)]
enum Param {
    Value(Option<Bytes>),
    Unchanged,
}

impl Param {
    fn is_unchanged(&self) -> bool {
        matches!(self, Param::Unchanged)
    }

    fn value(&self) -> Option<Bytes> {
        match self {
            Param::Value(v) => v.clone(),
            Param::Unchanged => None,
        }
    }
}

fn values(
    table: &TableName,
    t: &TupleData,
    want: usize,
    lsn: Lsn,
) -> Result<Vec<Param>, ApplyError> {
    if t.0.len() != want {
        return Err(ApplyError::ColumnCount {
            table: table.clone(),
            got: t.0.len(),
            want,
            lsn,
        });
    }
    t.0.iter()
        .map(|v| match v {
            TupleValue::Null => Ok(Param::Value(None)),
            TupleValue::Text(b) => Ok(Param::Value(Some(b.clone()))),
            TupleValue::UnchangedToast => Ok(Param::Unchanged),
            TupleValue::Binary(_) => Err(ApplyError::UnexpectedValue {
                what: "binary",
                table: table.clone(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests;
