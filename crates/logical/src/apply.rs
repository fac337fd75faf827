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
//! * **Matching rows.** UPDATE and DELETE find their row by the replica identity columns (the
//!   columns the Relation message flags): from the old key (`'K'`) when the key changed, else from
//!   the new row.
//! * **Unchanged TOAST.** A column sent as `'u'` (an out-of-line value the update did not touch)
//!   is left out of the UPDATE's SET list, so the target keeps what it has.
//! * **TRUNCATE** empties the subset's tables among those listed (`ONLY`, never CASCADE), with
//!   RESTART IDENTITY when the source asked for it.
//! * Relations are learnt from Relation messages, which the source sends before a table's first
//!   change in every session: the map is rebuilt from scratch on each reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;
use walrelay_protocol::pgoutput::{OldTuple, PgOutputMessage, Relation, TupleData, TupleValue};
use walrelay_protocol::Lsn;

use crate::schema::{quote_ident, TableName};

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
    #[error("{table} changed on the source: its column {column} is not on the target; walrelay does not follow schema changes yet: add the column on the target (ALTER TABLE {quoted} ADD COLUMN …) and run again")]
    ColumnMissing {
        table: TableName,
        column: String,
        quoted: String,
    },
    #[error("{table} has no replica identity on the source any more (its primary key was dropped?): walrelay cannot find the rows an UPDATE or DELETE means; give it a primary key again and run again")]
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
}

/// Whether a table's copy is done, and from which point the stream applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSync {
    /// Not copied yet: its changes are not applied.
    Pending,
    /// Copied under a snapshot taken at this source LSN.
    Synced(Lsn),
}

/// A subset table as the apply needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyTable {
    pub name: TableName,
    pub sync: TableSync,
    /// The target's columns (a source column not among them stops the stream).
    pub target_columns: Vec<String>,
    /// Target columns `GENERATED ALWAYS AS IDENTITY`: inserts need `OVERRIDING SYSTEM VALUE`,
    /// updates leave them alone.
    pub always_identity: Vec<String>,
}

/// One statement for the target, text parameters (`None` is NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: Arc<str>,
    pub params: Vec<Option<Bytes>>,
    pub kind: ChangeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
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
    /// The source transaction commits; `changes` statements were produced for it.
    Commit {
        end_lsn: Lsn,
        commit_time: i64,
        changes: u64,
    },
}

/// A Relation message matched to a subset table, with its statements.
#[derive(Debug)]
struct RelationPlan {
    table: TableName,
    /// Relation column names, in tuple order.
    columns: Vec<String>,
    /// Indexes of the replica identity columns.
    key: Vec<usize>,
    /// Columns an UPDATE never sets (target identity ALWAYS).
    never_set: Vec<bool>,
    insert: Arc<str>,
    delete: Arc<str>,
    /// UPDATE statements by the set of columns they set.
    updates: HashMap<Vec<bool>, Arc<str>>,
}

#[derive(Debug)]
struct Transaction {
    final_lsn: Lsn,
    changes: u64,
}

/// The apply core for one session.
#[derive(Debug)]
pub struct Applier {
    tables: HashMap<TableName, ApplyTable>,
    /// By the source's relid; `None` for a relation that is not one of the subset's tables.
    relations: HashMap<u32, Option<RelationPlan>>,
    txn: Option<Transaction>,
    /// Relations the source described that are not the subset's tables, not yet reported.
    foreign: Vec<TableName>,
}

impl Applier {
    pub fn new(tables: impl IntoIterator<Item = ApplyTable>) -> Self {
        Applier {
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            relations: HashMap::new(),
            txn: None,
            foreign: Vec::new(),
        }
    }

    /// Relations the source sent that are not among the subset's tables, once each: a table
    /// removed from the subset whose older changes still arrive, or one renamed on the source
    /// (whose changes are then not applied).
    pub fn take_foreign_relations(&mut self) -> Vec<TableName> {
        std::mem::take(&mut self.foreign)
    }

    /// Whether a source transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn on_message(&mut self, msg: PgOutputMessage) -> Result<Action, ApplyError> {
        match msg {
            PgOutputMessage::Begin(b) => {
                if self.txn.is_some() {
                    return Err(ApplyError::NestedBegin);
                }
                self.txn = Some(Transaction {
                    final_lsn: b.final_lsn,
                    changes: 0,
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
                    changes: txn.changes,
                })
            }
            PgOutputMessage::Relation(r) => {
                self.relation(r)?;
                Ok(Action::None)
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) | PgOutputMessage::Message(_) => {
                Ok(Action::None)
            }
            PgOutputMessage::Insert(i) => self.change(i.relid, |plan, lsn| {
                let params = values(&plan.table, &i.new, plan.columns.len(), lsn)?;
                if params.iter().any(|p| p.is_unchanged()) {
                    return Err(ApplyError::UnexpectedValue {
                        what: "unchanged-TOAST",
                        table: plan.table.clone(),
                    });
                }
                Ok(Some(Statement {
                    sql: plan.insert.clone(),
                    params: params.into_iter().map(Param::into_value).collect(),
                    kind: ChangeKind::Insert,
                }))
            }),
            PgOutputMessage::Update(u) => self.change(u.relid, |plan, lsn| {
                let new = values(&plan.table, &u.new, plan.columns.len(), lsn)?;
                let key_source = match &u.old {
                    Some(old) => values(&plan.table, old.tuple(), plan.columns.len(), lsn)?,
                    None => new.clone(),
                };
                let key = plan.key_params(&key_source, lsn)?;
                let set: Vec<bool> = new
                    .iter()
                    .zip(&plan.never_set)
                    .map(|(v, never)| !v.is_unchanged() && !never)
                    .collect();
                if !set.contains(&true) {
                    return Ok(None);
                }
                let sql = plan.update_sql(&set);
                let mut params: Vec<Option<Bytes>> = new
                    .into_iter()
                    .zip(&set)
                    .filter(|(_, s)| **s)
                    .map(|(v, _)| v.into_value())
                    .collect();
                params.extend(key);
                Ok(Some(Statement {
                    sql,
                    params,
                    kind: ChangeKind::Update,
                }))
            }),
            PgOutputMessage::Delete(d) => self.change(d.relid, |plan, lsn| {
                let old = match &d.old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                };
                let old = values(&plan.table, old, plan.columns.len(), lsn)?;
                Ok(Some(Statement {
                    sql: plan.delete.clone(),
                    params: plan.key_params(&old, lsn)?,
                    kind: ChangeKind::Delete,
                }))
            }),
            PgOutputMessage::Truncate(t) => {
                let txn = self
                    .txn
                    .as_ref()
                    .ok_or(ApplyError::OutsideTransaction("Truncate"))?;
                let final_lsn = txn.final_lsn;
                let mut names = Vec::new();
                for relid in &t.relids {
                    match self.relations.get(relid) {
                        None => {
                            return Err(ApplyError::UnknownRelation {
                                relid: *relid,
                                lsn: final_lsn,
                            })
                        }
                        Some(None) => {}
                        Some(Some(plan)) => {
                            if self.applies(&plan.table, final_lsn) {
                                names.push(plan.table.quoted());
                            }
                        }
                    }
                }
                if names.is_empty() {
                    return Ok(Action::None);
                }
                let restart = if t.restart_identity() {
                    " RESTART IDENTITY"
                } else {
                    ""
                };
                if let Some(txn) = self.txn.as_mut() {
                    txn.changes += 1;
                }
                Ok(Action::Execute(Statement {
                    sql: format!("TRUNCATE ONLY {}{restart}", names.join(", ")).into(),
                    params: Vec::new(),
                    kind: ChangeKind::Truncate,
                }))
            }
            PgOutputMessage::StreamStart(_) => Err(ApplyError::Unexpected("Stream Start")),
            PgOutputMessage::StreamStop => Err(ApplyError::Unexpected("Stream Stop")),
            PgOutputMessage::StreamCommit(_) => Err(ApplyError::Unexpected("Stream Commit")),
            PgOutputMessage::StreamAbort(_) => Err(ApplyError::Unexpected("Stream Abort")),
        }
    }

    /// Whether a change committed at `final_lsn` applies to `table`.
    fn applies(&self, table: &TableName, final_lsn: Lsn) -> bool {
        match self.tables.get(table).map(|t| t.sync) {
            Some(TableSync::Synced(at)) => final_lsn >= at,
            Some(TableSync::Pending) | None => false,
        }
    }

    fn change(
        &mut self,
        relid: u32,
        build: impl FnOnce(&mut RelationPlan, Lsn) -> Result<Option<Statement>, ApplyError>,
    ) -> Result<Action, ApplyError> {
        let final_lsn = self
            .txn
            .as_ref()
            .ok_or(ApplyError::OutsideTransaction("change"))?
            .final_lsn;
        let table = match self.relations.get(&relid) {
            None => {
                return Err(ApplyError::UnknownRelation {
                    relid,
                    lsn: final_lsn,
                })
            }
            Some(None) => return Ok(Action::None),
            Some(Some(plan)) => plan.table.clone(),
        };
        if !self.applies(&table, final_lsn) {
            return Ok(Action::None);
        }
        let Some(Some(plan)) = self.relations.get_mut(&relid) else {
            return Ok(Action::None);
        };
        match build(plan, final_lsn)? {
            Some(stmt) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.changes += 1;
                }
                Ok(Action::Execute(stmt))
            }
            None => Ok(Action::None),
        }
    }

    fn relation(&mut self, r: Relation) -> Result<(), ApplyError> {
        let schema = if r.namespace.is_empty() {
            "pg_catalog"
        } else {
            &r.namespace
        };
        let name = TableName::new(schema, &r.name);
        let Some(table) = self.tables.get(&name) else {
            if self.relations.insert(r.relid, None).is_none() {
                self.foreign.push(name);
            }
            return Ok(());
        };
        for c in &r.columns {
            if !table.target_columns.contains(&c.name) {
                return Err(ApplyError::ColumnMissing {
                    quoted: name.quoted(),
                    table: name,
                    column: c.name.clone(),
                });
            }
        }
        let columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        let key: Vec<usize> = r
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key())
            .map(|(i, _)| i)
            .collect();
        let never_set = columns
            .iter()
            .map(|c| table.always_identity.contains(c))
            .collect();
        let quoted_cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let overriding = if table.always_identity.is_empty() {
            ""
        } else {
            " OVERRIDING SYSTEM VALUE"
        };
        let insert = format!(
            "INSERT INTO {} ({}){overriding} VALUES ({})",
            name.quoted(),
            quoted_cols.join(", "),
            placeholders.join(", ")
        );
        let delete = format!(
            "DELETE FROM {} WHERE {}",
            name.quoted(),
            key_condition(&columns, &key, 1)
        );
        self.relations.insert(
            r.relid,
            Some(RelationPlan {
                table: name,
                columns,
                key,
                never_set,
                insert: insert.into(),
                delete: delete.into(),
                updates: HashMap::new(),
            }),
        );
        Ok(())
    }
}

/// `"a" = $n AND "b" = $n+1` over the key columns.
fn key_condition(columns: &[String], key: &[usize], first: usize) -> String {
    key.iter()
        .enumerate()
        .map(|(i, &k)| format!("{} = ${}", quote_ident(&columns[k]), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

impl RelationPlan {
    fn update_sql(&mut self, set: &[bool]) -> Arc<str> {
        if let Some(s) = self.updates.get(set) {
            return s.clone();
        }
        let assignments: Vec<String> = self
            .columns
            .iter()
            .zip(set)
            .filter(|(_, s)| **s)
            .enumerate()
            .map(|(i, (c, _))| format!("{} = ${}", quote_ident(c), i + 1))
            .collect();
        let sql: Arc<str> = format!(
            "UPDATE {} SET {} WHERE {}",
            self.table.quoted(),
            assignments.join(", "),
            key_condition(&self.columns, &self.key, assignments.len() + 1)
        )
        .into();
        self.updates.insert(set.to_vec(), sql.clone());
        sql
    }

    /// The key columns' values of a row, which must all be present.
    fn key_params(&self, row: &[Param], lsn: Lsn) -> Result<Vec<Option<Bytes>>, ApplyError> {
        if self.key.is_empty() {
            return Err(ApplyError::NoKey {
                table: self.table.clone(),
            });
        }
        self.key
            .iter()
            .map(|&k| match row.get(k) {
                Some(Param::Value(v)) => Ok(v.clone()),
                _ => Err(ApplyError::BadKey {
                    table: self.table.clone(),
                    lsn,
                }),
            })
            .collect()
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

    fn into_value(self) -> Option<Bytes> {
        match self {
            Param::Value(v) => v,
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
mod tests {
    use super::*;
    use walrelay_protocol::pgoutput::{
        Begin, Commit, Delete, Insert, RelationColumn, ReplicaIdentity, Truncate, Update,
    };

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn p(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn table(name: &str, sync: TableSync) -> ApplyTable {
        ApplyTable {
            name: TableName::new("public", name),
            sync,
            target_columns: vec!["id".into(), "v".into(), "big".into()],
            always_identity: vec![],
        }
    }

    fn relation(relid: u32, name: &str) -> PgOutputMessage {
        let col = |name: &str, key: bool| RelationColumn {
            flags: u8::from(key),
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        PgOutputMessage::Relation(Relation {
            xid: None,
            relid,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("v", false), col("big", false)],
        })
    }

    fn begin(lsn: u64) -> PgOutputMessage {
        PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(lsn),
            commit_time: 1,
            xid: 7,
        })
    }

    fn commit(lsn: u64) -> PgOutputMessage {
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 0x30),
            commit_time: 1,
        })
    }

    fn stmt(a: Action) -> Statement {
        match a {
            Action::Execute(s) => s,
            other => panic!("expected a statement, got {other:?}"),
        }
    }

    #[test]
    fn inserts_updates_deletes_and_unchanged_toast() {
        let mut a = Applier::new([table("t", TableSync::Synced(Lsn(0x100)))]);
        a.on_message(relation(1, "t")).unwrap();
        a.on_message(begin(0x200)).unwrap();
        let s = stmt(
            a.on_message(PgOutputMessage::Insert(Insert {
                xid: None,
                relid: 1,
                new: TupleData(vec![t("1"), TupleValue::Null, t("x")]),
            }))
            .unwrap(),
        );
        assert_eq!(
            &*s.sql,
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"big\") VALUES ($1, $2, $3)"
        );
        assert_eq!(s.params, [p("1"), None, p("x")]);
        // The big column unchanged: not in SET; the key from the new row.
        let s = stmt(
            a.on_message(PgOutputMessage::Update(Update {
                xid: None,
                relid: 1,
                old: None,
                new: TupleData(vec![t("1"), t("v2"), TupleValue::UnchangedToast]),
            }))
            .unwrap(),
        );
        assert_eq!(
            &*s.sql,
            "UPDATE \"public\".\"t\" SET \"id\" = $1, \"v\" = $2 WHERE \"id\" = $3"
        );
        assert_eq!(s.params, [p("1"), p("v2"), p("1")]);
        // A key change: the old key finds the row.
        let s = stmt(
            a.on_message(PgOutputMessage::Update(Update {
                xid: None,
                relid: 1,
                old: Some(OldTuple::Key(TupleData(vec![
                    t("1"),
                    TupleValue::Null,
                    TupleValue::Null,
                ]))),
                new: TupleData(vec![t("2"), t("v3"), t("y")]),
            }))
            .unwrap(),
        );
        assert_eq!(
            &*s.sql,
            "UPDATE \"public\".\"t\" SET \"id\" = $1, \"v\" = $2, \"big\" = $3 WHERE \"id\" = $4"
        );
        assert_eq!(s.params, [p("2"), p("v3"), p("y"), p("1")]);
        let s = stmt(
            a.on_message(PgOutputMessage::Delete(Delete {
                xid: None,
                relid: 1,
                old: OldTuple::Key(TupleData(vec![t("2"), TupleValue::Null, TupleValue::Null])),
            }))
            .unwrap(),
        );
        assert_eq!(&*s.sql, "DELETE FROM \"public\".\"t\" WHERE \"id\" = $1");
        assert_eq!(s.params, [p("2")]);
        assert_eq!(
            a.on_message(commit(0x200)).unwrap(),
            Action::Commit {
                end_lsn: Lsn(0x230),
                commit_time: 1,
                changes: 4
            }
        );
        assert!(!a.in_transaction());
    }

    #[test]
    fn sync_points_other_tables_and_truncate() {
        let mut a = Applier::new([
            table("early", TableSync::Synced(Lsn(0x100))),
            table("late", TableSync::Synced(Lsn(0x500))),
            table("pending", TableSync::Pending),
        ]);
        for (relid, name) in [(1, "early"), (2, "late"), (3, "pending"), (4, "other")] {
            a.on_message(relation(relid, name)).unwrap();
        }
        assert_eq!(
            a.take_foreign_relations(),
            [TableName::new("public", "other")]
        );
        a.on_message(relation(4, "other")).unwrap();
        assert!(a.take_foreign_relations().is_empty(), "reported once");
        let ins = |relid| {
            PgOutputMessage::Insert(Insert {
                xid: None,
                relid,
                new: TupleData(vec![t("1"), t("a"), t("b")]),
            })
        };
        // Before late's sync point: only early.
        a.on_message(begin(0x400)).unwrap();
        assert!(matches!(a.on_message(ins(1)).unwrap(), Action::Execute(_)));
        assert_eq!(a.on_message(ins(2)).unwrap(), Action::None);
        assert_eq!(a.on_message(ins(3)).unwrap(), Action::None);
        assert_eq!(a.on_message(ins(4)).unwrap(), Action::None);
        assert!(matches!(
            a.on_message(commit(0x400)).unwrap(),
            Action::Commit { changes: 1, .. }
        ));
        // At the sync point exactly: applied (the snapshot has what committed before it).
        a.on_message(begin(0x500)).unwrap();
        assert!(matches!(a.on_message(ins(2)).unwrap(), Action::Execute(_)));
        let s = stmt(
            a.on_message(PgOutputMessage::Truncate(Truncate {
                xid: None,
                flags: 3,
                relids: vec![1, 2, 3, 4],
            }))
            .unwrap(),
        );
        assert_eq!(
            &*s.sql,
            "TRUNCATE ONLY \"public\".\"early\", \"public\".\"late\" RESTART IDENTITY"
        );
        assert_eq!(
            a.on_message(PgOutputMessage::Truncate(Truncate {
                xid: None,
                flags: 0,
                relids: vec![3, 4],
            }))
            .unwrap(),
            Action::None
        );
        a.on_message(commit(0x500)).unwrap();
        // An empty transaction.
        a.on_message(begin(0x600)).unwrap();
        assert!(matches!(
            a.on_message(commit(0x600)).unwrap(),
            Action::Commit { changes: 0, .. }
        ));
    }

    #[test]
    fn what_cannot_be_applied() {
        let mut a = Applier::new([table("t", TableSync::Synced(Lsn(1)))]);
        assert_eq!(
            a.on_message(commit(5)).unwrap_err(),
            ApplyError::OutsideTransaction("Commit")
        );
        a.on_message(begin(0x10)).unwrap();
        assert!(matches!(
            a.on_message(PgOutputMessage::Insert(Insert {
                xid: None,
                relid: 9,
                new: TupleData(vec![])
            })),
            Err(ApplyError::UnknownRelation { relid: 9, .. })
        ));
        a.on_message(relation(1, "t")).unwrap();
        assert!(matches!(
            a.on_message(PgOutputMessage::Insert(Insert {
                xid: None,
                relid: 1,
                new: TupleData(vec![t("1")])
            })),
            Err(ApplyError::ColumnCount {
                got: 1,
                want: 3,
                ..
            })
        ));
        assert!(matches!(
            a.on_message(PgOutputMessage::Delete(Delete {
                xid: None,
                relid: 1,
                old: OldTuple::Key(TupleData(vec![
                    TupleValue::UnchangedToast,
                    TupleValue::Null,
                    TupleValue::Null
                ]))
            })),
            Err(ApplyError::BadKey { .. })
        ));
        assert_eq!(
            a.on_message(begin(0x20)).unwrap_err(),
            ApplyError::NestedBegin
        );
        assert!(matches!(
            a.on_message(PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x11),
                end_lsn: Lsn(0x40),
                commit_time: 0
            })),
            Err(ApplyError::CommitMismatch { .. })
        ));
        // A column the target does not have: stop, naming it.
        let mut a = Applier::new([ApplyTable {
            target_columns: vec!["id".into(), "v".into()],
            ..table("t", TableSync::Synced(Lsn(1)))
        }]);
        let e = a.on_message(relation(1, "t")).unwrap_err();
        assert!(
            e.to_string().contains("column big is not on the target"),
            "{e}"
        );
        // A table whose key went away.
        let mut a = Applier::new([table("t", TableSync::Synced(Lsn(1)))]);
        let PgOutputMessage::Relation(mut r) = relation(1, "t") else {
            unreachable!()
        };
        for c in &mut r.columns {
            c.flags = 0;
        }
        a.on_message(PgOutputMessage::Relation(r)).unwrap();
        a.on_message(begin(0x10)).unwrap();
        assert!(matches!(
            a.on_message(PgOutputMessage::Delete(Delete {
                xid: None,
                relid: 1,
                old: OldTuple::Full(TupleData(vec![t("1"), t("a"), t("b")]))
            })),
            Err(ApplyError::NoKey { .. })
        ));
    }

    #[test]
    fn identity_always_on_the_target() {
        let mut a = Applier::new([ApplyTable {
            always_identity: vec!["id".into()],
            ..table("t", TableSync::Synced(Lsn(1)))
        }]);
        a.on_message(relation(1, "t")).unwrap();
        a.on_message(begin(0x10)).unwrap();
        let s = stmt(
            a.on_message(PgOutputMessage::Insert(Insert {
                xid: None,
                relid: 1,
                new: TupleData(vec![t("1"), t("a"), t("b")]),
            }))
            .unwrap(),
        );
        assert!(s.sql.contains("OVERRIDING SYSTEM VALUE"), "{}", s.sql);
        let s = stmt(
            a.on_message(PgOutputMessage::Update(Update {
                xid: None,
                relid: 1,
                old: None,
                new: TupleData(vec![t("1"), t("c"), TupleValue::UnchangedToast]),
            }))
            .unwrap(),
        );
        assert_eq!(
            &*s.sql,
            "UPDATE \"public\".\"t\" SET \"v\" = $1 WHERE \"id\" = $2"
        );
        // Nothing left to set: nothing to do.
        assert_eq!(
            a.on_message(PgOutputMessage::Update(Update {
                xid: None,
                relid: 1,
                old: None,
                new: TupleData(vec![
                    t("1"),
                    TupleValue::UnchangedToast,
                    TupleValue::UnchangedToast
                ]),
            }))
            .unwrap(),
            Action::None
        );
    }
}
