use super::*;
use walrelay_protocol::pgoutput::{Begin, Commit, Delete, Insert, Truncate, Update};

fn t(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn p(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn tcol(name: &str) -> TargetColumn {
    TargetColumn {
        name: name.into(),
        type_name: "text".into(),
        has_equality: true,
        always_identity: false,
    }
}

fn scol(name: &str, attnum: i32) -> SourceColumn {
    SourceColumn {
        name: name.into(),
        attnum,
        type_oid: 25,
        type_mod: -1,
    }
}

fn table(name: &str, sync: TableSync) -> ApplyTable {
    ApplyTable {
        name: TableName::new("public", name),
        sync,
        source_oid: None,
        target_columns: vec![tcol("id"), tcol("v"), tcol("big")],
        source_columns: vec![scol("id", 1), scol("v", 2), scol("big", 3)],
        target_partitioned: false,
    }
}

fn options(on_conflict: OnConflict) -> ApplyOptions {
    ApplyOptions {
        subset: SubsetName::new("s").expect("name"),
        on_conflict,
        skip_lsn: None,
    }
}

fn applier(tables: impl IntoIterator<Item = ApplyTable>) -> Applier {
    Applier::new(tables, options(OnConflict::Error))
}

fn rel_col(name: &str, key: bool) -> RelationColumn {
    RelationColumn {
        flags: u8::from(key),
        name: name.into(),
        type_oid: 25,
        type_modifier: -1,
    }
}

fn relation_of(relid: u32, name: &str, columns: Vec<RelationColumn>) -> PgOutputMessage {
    PgOutputMessage::Relation(Relation {
        xid: None,
        relid,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns,
    })
}

fn relation(relid: u32, name: &str) -> PgOutputMessage {
    relation_of(
        relid,
        name,
        vec![
            rel_col("id", true),
            rel_col("v", false),
            rel_col("big", false),
        ],
    )
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

fn insert(relid: u32, row: Vec<TupleValue>) -> PgOutputMessage {
    PgOutputMessage::Insert(Insert {
        xid: None,
        relid,
        new: TupleData(row),
    })
}

fn update(relid: u32, old: Option<OldTuple>, row: Vec<TupleValue>) -> PgOutputMessage {
    PgOutputMessage::Update(Update {
        xid: None,
        relid,
        old,
        new: TupleData(row),
    })
}

/// An UPDATE of row 1 of relation 1 setting `v`, its big column unchanged (TOAST).
fn big_unchanged(v: &str) -> PgOutputMessage {
    update(1, None, vec![t("1"), t(v), TupleValue::UnchangedToast])
}

/// The statement `m` makes.
fn exec(a: &mut Applier, m: PgOutputMessage) -> Statement {
    match a.on_message(m) {
        Ok(Action::Execute(s)) => s,
        other => panic!("expected a statement, got {other:?}"),
    }
}

#[test]
fn inserts_updates_deletes_and_unchanged_toast() {
    let mut a = applier([table("t", TableSync::Synced(Lsn(0x100)))]);
    a.on_message(relation(1, "t")).unwrap();
    a.on_message(begin(0x200)).unwrap();
    let ins = insert(1, vec![t("1"), TupleValue::Null, t("x")]);
    assert_eq!(a.pending_schema_change(&ins), None);
    let s = exec(&mut a, ins);
    assert_eq!(
        &*s.sql,
        "INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"big\") VALUES ($1, $2, $3)"
    );
    assert_eq!(s.params, [p("1"), None, p("x")]);
    assert_eq!(s.key, None, "keys are described only when asked");
    // The big column unchanged: not in SET; the key from the new row.
    let s = exec(&mut a, big_unchanged("v2"));
    assert_eq!(
        &*s.sql,
        "UPDATE \"public\".\"t\" SET \"id\" = $1, \"v\" = $2 WHERE \"id\" = $3"
    );
    assert_eq!(s.params, [p("1"), p("v2"), p("1")]);
    // A key change: the old key finds the row.
    a.set_describe(true);
    let s = exec(
        &mut a,
        update(
            1,
            Some(OldTuple::Key(TupleData(vec![
                t("1"),
                TupleValue::Null,
                TupleValue::Null,
            ]))),
            vec![t("2"), t("v3"), t("y")],
        ),
    );
    assert_eq!(
        &*s.sql,
        "UPDATE \"public\".\"t\" SET \"id\" = $1, \"v\" = $2, \"big\" = $3 WHERE \"id\" = $4"
    );
    assert_eq!(s.params, [p("2"), p("v3"), p("y"), p("1")]);
    assert_eq!(s.key.as_deref(), Some("(id)=(1)"));
    let s = exec(
        &mut a,
        PgOutputMessage::Delete(Delete {
            xid: None,
            relid: 1,
            old: OldTuple::Key(TupleData(vec![t("2"), TupleValue::Null, TupleValue::Null])),
        }),
    );
    assert_eq!(&*s.sql, "DELETE FROM \"public\".\"t\" WHERE \"id\" = $1");
    assert_eq!(s.params, [p("2")]);
    assert_eq!(
        a.on_message(commit(0x200)).unwrap(),
        Action::Commit {
            end_lsn: Lsn(0x230),
            commit_time: 1,
            changes: 4,
            skipped: None
        }
    );
    assert!(!a.in_transaction());
}

#[test]
fn sync_points_other_tables_and_truncate() {
    let mut a = applier([
        table("early", TableSync::Synced(Lsn(0x100))),
        table("late", TableSync::Synced(Lsn(0x500))),
        table("pending", TableSync::Pending),
    ]);
    for (relid, name) in [(1, "early"), (2, "late"), (3, "pending"), (4, "other")] {
        a.on_message(relation(relid, name)).unwrap();
    }
    // Described only (a partition of a table published as itself): nothing to report.
    assert!(a.take_foreign_relations().is_empty());
    let ins = |relid| insert(relid, vec![t("1"), t("a"), t("b")]);
    // Before late's sync point: only early.
    a.on_message(begin(0x400)).unwrap();
    assert!(matches!(a.on_message(ins(1)).unwrap(), Action::Execute(_)));
    assert_eq!(a.on_message(ins(2)).unwrap(), Action::None);
    assert_eq!(a.on_message(ins(3)).unwrap(), Action::None);
    assert_eq!(a.on_message(ins(4)).unwrap(), Action::None);
    assert_eq!(
        a.take_foreign_relations(),
        [TableName::new("public", "other")]
    );
    a.on_message(relation(4, "other")).unwrap();
    assert_eq!(a.on_message(ins(4)).unwrap(), Action::None);
    assert!(a.take_foreign_relations().is_empty(), "reported once");
    assert!(matches!(
        a.on_message(commit(0x400)).unwrap(),
        Action::Commit { changes: 1, .. }
    ));
    // At the sync point exactly: applied (the snapshot has what committed before it).
    a.on_message(begin(0x500)).unwrap();
    assert!(matches!(a.on_message(ins(2)).unwrap(), Action::Execute(_)));
    let s = exec(
        &mut a,
        PgOutputMessage::Truncate(Truncate {
            xid: None,
            flags: 3,
            relids: vec![1, 2, 3, 4],
        }),
    );
    assert_eq!(
        &*s.sql,
        "TRUNCATE ONLY \"public\".\"early\", ONLY \"public\".\"late\" RESTART IDENTITY"
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
    let mut a = applier([table("t", TableSync::Synced(Lsn(1)))]);
    assert_eq!(
        a.on_message(commit(5)).unwrap_err(),
        ApplyError::OutsideTransaction("Commit")
    );
    a.on_message(begin(0x10)).unwrap();
    assert!(matches!(
        a.on_message(insert(9, vec![])),
        Err(ApplyError::UnknownRelation { relid: 9, .. })
    ));
    a.on_message(relation(1, "t")).unwrap();
    assert!(matches!(
        a.on_message(insert(1, vec![t("1")])),
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
    // A table whose key went away.
    let mut a = applier([table("t", TableSync::Synced(Lsn(1)))]);
    a.on_message(relation_of(
        1,
        "t",
        vec![
            rel_col("id", false),
            rel_col("v", false),
            rel_col("big", false),
        ],
    ))
    .unwrap();
    a.on_message(begin(0x10)).unwrap();
    assert!(matches!(
        a.on_message(PgOutputMessage::Delete(Delete {
            xid: None,
            relid: 1,
            old: OldTuple::Key(TupleData(vec![t("1"), t("a"), t("b")]))
        })),
        Err(ApplyError::NoKey { .. })
    ));
}

#[test]
fn schema_changes_are_found_before_the_first_change_that_applies() {
    let mut late = table("t", TableSync::Synced(Lsn(0x500)));
    late.source_oid = Some(1);
    let mut a = applier([late]);
    // A column added and one dropped since the copy.
    let changed = vec![
        rel_col("id", true),
        rel_col("big", false),
        rel_col("w", false),
    ];
    a.on_message(relation_of(1, "t", changed.clone())).unwrap();
    let ins = insert(1, vec![t("1"), t("b"), t("w")]);
    // Before the sync point: the copy has it; nothing to compare.
    a.on_message(begin(0x400)).unwrap();
    assert_eq!(a.pending_schema_change(&ins), None);
    assert_eq!(a.on_message(ins.clone()).unwrap(), Action::None);
    a.on_message(commit(0x400)).unwrap();
    a.on_message(begin(0x600)).unwrap();
    let d = a.pending_schema_change(&ins).expect("a difference");
    assert_eq!(d.added, [rel_col("w", false)]);
    assert_eq!(d.removed, [scol("v", 2)]);
    assert_eq!(
        (d.lsn, d.xid, d.renamed_to.is_none()),
        (Lsn(0x600), 7, true)
    );
    // Followed: the statements know the new columns, and no difference is left.
    a.schema_followed(
        &TableName::new("public", "t"),
        vec![tcol("id"), tcol("big"), tcol("w")],
        vec![scol("id", 1), scol("big", 3), scol("w", 4)],
    );
    assert_eq!(a.pending_schema_change(&ins), None);
    let s = exec(&mut a, ins);
    assert!(s.sql.contains("(\"id\", \"big\", \"w\")"), "{}", s.sql);
    // A type change.
    let mut retyped = changed;
    retyped[1].type_oid = 20;
    a.on_message(relation_of(1, "t", retyped)).unwrap();
    let d = a
        .pending_schema_change(&insert(1, vec![t("1"), t("2"), t("w")]))
        .expect("a difference");
    assert_eq!(d.retyped.len(), 1);
    assert_eq!(d.retyped[0].1.type_oid, 20);
    // The table renamed on the source: same OID, another name.
    a.on_message(relation_of(
        1,
        "t_renamed",
        vec![
            rel_col("id", true),
            rel_col("big", false),
            rel_col("w", false),
        ],
    ))
    .unwrap();
    assert!(a.take_foreign_relations().is_empty(), "matched by its OID");
    let d = a
        .pending_schema_change(&insert(1, vec![t("1"), t("2"), t("w")]))
        .expect("a rename");
    assert_eq!(d.renamed_to, Some(TableName::new("public", "t_renamed")));
}

#[test]
fn a_table_created_again_under_the_same_name_is_not_the_copy() {
    let mut copied = table("t", TableSync::Synced(Lsn(0x100)));
    copied.source_oid = Some(1);
    let mut a = applier([copied]);
    a.on_message(relation(2, "t")).unwrap();
    assert!(a.take_foreign_relations().is_empty());
    a.on_message(begin(0x50)).unwrap();
    let ins = || insert(2, vec![t("1"), t("a"), t("b")]);
    assert_eq!(
        a.on_message(ins()).unwrap(),
        Action::None,
        "before its sync point"
    );
    a.on_message(commit(0x50)).unwrap();
    a.on_message(begin(0x200)).unwrap();
    assert!(matches!(
        a.on_message(ins()),
        Err(ApplyError::Replaced { .. })
    ));
}

#[test]
fn replica_identity_full_matches_whole_rows() {
    let mut tb = table("t", TableSync::Synced(Lsn(1)));
    tb.target_columns[2].has_equality = false;
    let mut a = applier([tb]);
    let PgOutputMessage::Relation(mut r) = relation(1, "t") else {
        unreachable!()
    };
    r.replica_identity = ReplicaIdentity::Full;
    for c in &mut r.columns {
        c.flags = 1;
    }
    a.on_message(PgOutputMessage::Relation(r)).unwrap();
    a.on_message(begin(0x10)).unwrap();
    let s = exec(
        &mut a,
        PgOutputMessage::Delete(Delete {
            xid: None,
            relid: 1,
            old: OldTuple::Full(TupleData(vec![t("1"), TupleValue::Null, t("{}")])),
        }),
    );
    assert_eq!(
        &*s.sql,
        "DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"public\".\"t\" \
         WHERE \"id\" = $1 AND \"v\" IS NULL AND \"big\"::text = $2 LIMIT 1)"
    );
    assert_eq!(s.params, [p("1"), p("{}")]);
}

#[test]
fn skip_lsn_leaves_out_one_transaction() {
    let mut a = Applier::new(
        [table("t", TableSync::Synced(Lsn(1)))],
        ApplyOptions {
            skip_lsn: Some(Lsn(0x20)),
            ..options(OnConflict::Error)
        },
    );
    a.on_message(relation(1, "t")).unwrap();
    a.on_message(begin(0x20)).unwrap();
    assert_eq!(
        a.on_message(insert(1, vec![t("1"), t("a"), t("b")]))
            .unwrap(),
        Action::None
    );
    assert_eq!(
        a.on_message(commit(0x20)).unwrap(),
        Action::Commit {
            end_lsn: Lsn(0x50),
            commit_time: 1,
            changes: 0,
            skipped: Some(1)
        }
    );
    a.on_message(begin(0x60)).unwrap();
    assert!(matches!(
        a.on_message(insert(1, vec![t("1"), t("a"), t("b")]))
            .unwrap(),
        Action::Execute(_)
    ));
}

#[test]
fn conflicts_are_recorded_with_the_change() {
    let mut a = Applier::new(
        [table("t", TableSync::Synced(Lsn(1)))],
        options(OnConflict::Skip),
    );
    a.on_message(relation(1, "t")).unwrap();
    a.on_message(begin(0x20)).unwrap();
    let s = exec(&mut a, insert(1, vec![t("1"), TupleValue::Null, t("b")]));
    assert!(s.sql.contains("ON CONFLICT DO NOTHING"), "{}", s.sql);
    assert_eq!(
        s.params[3..],
        [
            p("0/20"),
            p("7"),
            p("{\"id\": \"1\"}"),
            p("{\"id\": \"1\", \"v\": null, \"big\": \"b\"}")
        ]
    );
}

#[test]
fn identity_always_on_the_target() {
    let mut tb = table("t", TableSync::Synced(Lsn(1)));
    tb.target_columns[0].always_identity = true;
    let mut a = applier([tb]);
    a.on_message(relation(1, "t")).unwrap();
    a.on_message(begin(0x10)).unwrap();
    let s = exec(&mut a, insert(1, vec![t("1"), t("a"), t("b")]));
    assert!(s.sql.contains("OVERRIDING SYSTEM VALUE"), "{}", s.sql);
    let s = exec(&mut a, big_unchanged("c"));
    assert_eq!(
        &*s.sql,
        "UPDATE \"public\".\"t\" SET \"v\" = $1 WHERE \"id\" = $2"
    );
    // Nothing left to set: nothing to do.
    assert_eq!(
        a.on_message(update(
            1,
            None,
            vec![
                t("1"),
                TupleValue::UnchangedToast,
                TupleValue::UnchangedToast
            ]
        ))
        .unwrap(),
        Action::None
    );
}
