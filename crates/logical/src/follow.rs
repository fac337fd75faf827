//! Schema changes on the source, followed on the target — or refused with the choices named.
//!
//! The source sends a table's Relation message again after every change to it; the apply compares
//! it with the columns walrelay last followed (`walrelay.subset_columns`: name, `attnum`, type)
//! before the first change that applies (`apply::Applier::pending_schema_change`). What differs
//! is decided here, with the source's catalog at hand, and done in the target transaction that
//! applies the change — together with the new column state, so a crash either keeps all or none:
//!
//! | on the source | on the target |
//! |---|---|
//! | `ADD COLUMN` | `ADD COLUMN` of the same type, existing rows given the value they have on the source: the stored default of PostgreSQL 11+ (`attmissingval`), a constant default (10), or NULL; the default itself where it means the same on the target |
//! | `DROP COLUMN` | `DROP COLUMN` (only of columns walrelay followed: the target's own stay) |
//! | `RENAME COLUMN` (same `attnum`, new name) | stop: rename it on the target, or `--resync` |
//! | `ALTER COLUMN … TYPE` | stop: alter it on the target, or `--resync` |
//! | `ADD COLUMN` with a volatile default, or one set after the rows existed | stop: their values were never sent; `--resync` |
//! | `RENAME TO` | stop: run with the new name (renamed back since: followed) |
//! | `ADD COLUMN` then `DROP COLUMN` before the stream got there | `ADD COLUMN`, nullable, no default, for the changes in between; the `DROP` further down drops it |
//!
//! A change the operator already made on the target by hand (a column renamed or retyped there
//! too) is recognised and recorded, so that running again goes on.
//!
//! Never a silently NULL column: a new column is either given the rows' real values or the
//! stream stops — except one the source has already dropped again, which the stream drops on the
//! target before it reaches any change made after the DROP.

use std::collections::BTreeMap;

use tracing::{info, warn};
use walrelay_client::{ClientError, Connection, QueryResult};
use walrelay_protocol::pgoutput::RelationColumn;

use crate::apply::{ApplyTable, SchemaDiff};
use crate::ddl::portable_default;
use crate::error::{Side, SubsetError};
use crate::schema::{quote_ident, quote_literal, SourceColumn, SubsetName, TableName};
use crate::state::record_columns_sql;

/// A source column as its catalog says now.
#[derive(Clone, Debug)]
struct CatalogColumn {
    attnum: i32,
    name: String,
    type_oid: u32,
    type_mod: i32,
    /// `format_type`, schema-qualified (the session's search_path is empty).
    type_name: String,
    not_null: bool,
    default: Option<String>,
    /// PostgreSQL 11+: the value rows that existed at `ADD COLUMN` have (`attmissingval`).
    missing: Option<Option<String>>,
    /// The partitions of a partitioned table hold different missing values (each got its own
    /// `ADD COLUMN … DEFAULT` while detached): no one value is right for all its rows.
    missing_differs: bool,
}

/// A partitioned table stores no rows, so it has no missing values of its own: its partitions'
/// say what the rows that existed at `ADD COLUMN` have (the same in each: the column was added to
/// all of them at once). Partitions are walked only below partitioned tables, so a table with
/// inheritance children answers for itself alone.
const MISSING_VALUE: &str = "LEFT JOIN LATERAL ( \
       WITH RECURSIVE tree(oid) AS ( \
         SELECT a.attrelid \
         UNION ALL \
         SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid \
           JOIN pg_catalog.pg_class pc ON pc.oid = tree.oid AND pc.relkind = 'p') \
       SELECT true AS has, min((la.attmissingval::text::text[])[1]) AS value, \
              count(DISTINCT coalesce((la.attmissingval::text::text[])[1], '\\N')) AS values \
         FROM tree JOIN pg_catalog.pg_attribute la ON la.attrelid = tree.oid AND la.attname = a.attname \
        WHERE la.atthasmissing HAVING count(*) > 0) m ON true";

fn catalog_query(major: u32) -> String {
    let (has_missing, missing, values, join) = if major >= 11 {
        (
            "coalesce(m.has, false)",
            "m.value",
            "coalesce(m.values, 0)",
            MISSING_VALUE,
        )
    } else {
        ("false", "NULL::text", "0", "")
    };
    format!(
        "SELECT a.attnum::int4 AS attnum, a.attname::text AS name, a.atttypid::int8 AS typoid, \
                a.atttypmod::int4 AS typmod, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, \
                a.attnotnull AS not_null, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr, \
                {has_missing} AS has_missing, {missing} AS missing, \
                {values}::int8 AS missing_values \
           FROM pg_catalog.pg_attribute a \
           LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
           {join} \
          WHERE a.attrelid = $1::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped"
    )
}

fn read_catalog(r: &QueryResult) -> Vec<CatalogColumn> {
    (0..r.rows.len())
        .filter_map(|i| {
            let num = |c: &str| r.get(i, c).and_then(|v| v.parse::<i64>().ok());
            Some(CatalogColumn {
                attnum: num("attnum")? as i32,
                name: r.get(i, "name")?.to_string(),
                type_oid: num("typoid")? as u32,
                type_mod: num("typmod")? as i32,
                type_name: r.get(i, "type")?.to_string(),
                not_null: r.get(i, "not_null") == Some("t"),
                default: r.get(i, "default_expr").map(str::to_string),
                missing: (r.get(i, "has_missing") == Some("t"))
                    .then(|| r.get(i, "missing").map(str::to_string)),
                missing_differs: num("missing_values").unwrap_or(0) > 1,
            })
        })
        .collect()
}

/// What following a schema change takes: SQL for the open target transaction, and the columns
/// walrelay follows from then on.
#[derive(Debug)]
pub(crate) struct Followed {
    pub sql: String,
    pub source_columns: Vec<SourceColumn>,
}

/// `--resync TABLE`, as a choice in a message.
fn resync(table: &ApplyTable) -> String {
    format!(
        "`walrelay subset run … --resync {}` (copies the table again from a fresh snapshot; the other tables keep streaming from where they are)",
        table.name
    )
}

/// Decides how to follow `diff` on the target, or why not. `src` is a catalog session on the
/// source (empty search_path), `tgt` the apply session inside its open transaction.
pub(crate) async fn follow(
    src: &mut Connection,
    tgt: &mut Connection,
    subset: &SubsetName,
    diff: &SchemaDiff,
    table: &ApplyTable,
    relation_columns: &[RelationColumn],
) -> Result<Followed, SubsetError> {
    let stop = |detail: String| SubsetError::SchemaChanged {
        table: table.name.clone(),
        detail,
        lsn: diff.lsn,
        xid: diff.xid,
    };
    let t = table.name.quoted();
    let on_src = |what: &'static str| SubsetError::sql(Side::Source, what);
    if let Some(new) = &diff.renamed_to {
        // Renamed and renamed back since: the changes made under the other name are this
        // table's (the same relation), and the subset's name is right again.
        if current_name(src, diff.relid)
            .await
            .map_err(on_src("read the renamed table's name"))?
            .as_ref()
            == Some(&table.name)
        {
            info!(table = %table.name, while_named = %new, "table renamed on the source and back again: its changes made under the other name applied to it");
        } else {
            return Err(stop(format!(
                "it was renamed to {new} there; walrelay does not rename tables on the target by itself: choose to run with -t {new} in place of -t {} (walrelay copies it under its new name; drop {} on the target afterwards), or to rename it back on the source",
                table.name, table.name
            )));
        }
    }
    if let Some(c) = diff.missing_on_target.first() {
        return Err(stop(format!(
            "its column {c} is missing on the target (dropped there?): {} to get its values back; or add it back on the target (ALTER TABLE {t} ADD COLUMN {} …) and run again — the rows already there then hold NULL (or its default) in it, not the source's values, until they change on the source",
            resync(table),
            quote_ident(c)
        )));
    }
    let on_tgt = |what: &'static str| SubsetError::sql(Side::Target, what);
    let relid = diff.relid.to_string();
    let r = src
        .query_params(
            &catalog_query(src.server_version().major()),
            &[Some(&relid)],
        )
        .await
        .map_err(on_src("read the changed table's columns"))?;
    let catalog = read_catalog(&r);
    if let Some(detail) = identity_changed(&catalog, table) {
        return Err(stop(detail));
    }
    let by_name = |n: &str| catalog.iter().find(|c| c.name == n);
    let target = target_types(tgt, table)
        .await
        .map_err(on_tgt("read the table's columns"))?;
    let mut sql = String::new();
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut attnums: BTreeMap<String, i32> = table
        .source_columns
        .iter()
        .map(|c| (c.name.clone(), c.attnum))
        .collect();

    for a in &diff.added {
        let Some(cat) = by_name(&a.name) else {
            if !dropped_since(&catalog, table, relation_columns) {
                return Err(stop(format!(
                    "its column {} (new in this transaction) was dropped or renamed again since, so walrelay cannot learn what it holds: {}",
                    a.name,
                    resync(table)
                )));
            }
            sql.push_str(&add_dropped_column(src, tgt, table, a).await.map_err(stop)?);
            attnums.insert(a.name.clone(), 0);
            continue;
        };
        // A new name on an attnum walrelay knows under another: a rename.
        if let Some(old) = diff.removed.iter().find(|r| r.attnum == cat.attnum) {
            if target.contains_key(&a.name) && !target.contains_key(&old.name) {
                renamed.push((old.name.clone(), a.name.clone()));
                attnums.remove(&old.name);
                attnums.insert(a.name.clone(), cat.attnum);
                continue;
            }
            return Err(stop(format!(
                "its column {} was renamed to {} there; walrelay does not rename columns on the target by itself: choose ALTER TABLE {t} RENAME COLUMN {} TO {} on the target and run again, or {}",
                old.name,
                a.name,
                quote_ident(&old.name),
                quote_ident(&a.name),
                resync(table)
            )));
        }
        if cat.type_oid != a.type_oid || cat.type_mod != a.type_modifier {
            return Err(stop(format!(
                "its column {} (new in this transaction) changed again since: {}",
                a.name,
                resync(table)
            )));
        }
        attnums.insert(a.name.clone(), cat.attnum);
        if let Some(have) = target.get(&a.name) {
            if same_type(tgt, have, &cat.type_name).await? {
                continue; // added on the target by hand already
            }
            return Err(stop(format!(
                "its new column {} is {} there but {have} on the target: ALTER TABLE {t} ALTER COLUMN {} TYPE {} on the target and run again, or {}",
                a.name,
                cat.type_name,
                quote_ident(&a.name),
                cat.type_name,
                resync(table)
            )));
        }
        sql.push_str(
            &add_column(tgt, table, cat, src.server_version().major())
                .await
                .map_err(stop)?,
        );
    }
    for (old, new) in &renamed {
        info!(table = %table.name, from = %old, to = %new, "column renamed on the source and on the target: followed");
    }
    for rem in &diff.removed {
        if renamed.iter().any(|(o, _)| o == &rem.name) {
            continue;
        }
        attnums.remove(&rem.name);
        if target.contains_key(&rem.name) {
            sql.push_str(&format!(
                "ALTER TABLE {t} DROP COLUMN {};\n",
                quote_ident(&rem.name)
            ));
            info!(table = %table.name, column = %rem.name, "column dropped on the source: dropped on the target");
        }
    }
    for (was, now) in &diff.retyped {
        let new_type = format_type(src, now).await?;
        let have = target.get(&now.name).cloned().unwrap_or_default();
        if same_type(tgt, &have, &new_type).await? {
            continue; // altered on the target by hand already
        }
        let _ = was;
        return Err(stop(format!(
            "its column {} changed type there, from {have} to {new_type}; walrelay does not change types on the target by itself (it can rewrite the table and change values): choose ALTER TABLE {t} ALTER COLUMN {} TYPE {new_type} on the target and run again, or {}",
            now.name,
            quote_ident(&now.name),
            resync(table)
        )));
    }
    let source_columns: Vec<SourceColumn> = relation_columns
        .iter()
        .map(|c| SourceColumn {
            name: c.name.clone(),
            attnum: attnums.get(&c.name).copied().unwrap_or(0),
            type_oid: c.type_oid,
            type_mod: c.type_modifier,
        })
        .collect();
    sql.push_str(&record_columns_sql(subset, &table.name, &source_columns));
    Ok(Followed {
        sql,
        source_columns,
    })
}

/// Why a column walrelay follows under a name is not that column any more, if it is not: the
/// name now belongs to another `attnum` — renamed away and another column added or renamed into
/// its name (`RENAME n TO n_old; ADD n`), two columns swapped by renames, or dropped and added
/// again. Matched by name, the values of one would go into the other without an error.
fn identity_changed(catalog: &[CatalogColumn], table: &ApplyTable) -> Option<String> {
    let (name, was, now) = table
        .source_columns
        .iter()
        .filter(|s| s.attnum != 0)
        .find_map(|s| {
            let now = catalog.iter().find(|c| c.name == s.name)?;
            (now.attnum != s.attnum).then(|| (s.name.clone(), s.attnum, now.attnum))
        })?;
    let was_now = catalog.iter().find(|c| c.attnum == was).map_or_else(
        || "is gone (dropped)".to_string(),
        |c| format!("is named {} now", c.name),
    );
    Some(format!(
        "its column {name} there is not the column walrelay followed under that name (that one, attribute {was}, {was_now}; {name} is attribute {now}): a column was renamed and another took its name, columns were swapped, or {name} was dropped and added again — matched by name, values would land in the wrong column; walrelay does not follow that by itself: {}",
        resync(table)
    ))
}

/// Checks that the columns a Relation names are still the ones walrelay followed under those
/// names (see [`identity_changed`]); the Relation matched by name and type.
pub(crate) async fn check_column_identity(
    src: &mut Connection,
    unchanged: &SchemaDiff,
    table: &ApplyTable,
) -> Result<(), SubsetError> {
    let relid = unchanged.relid.to_string();
    let r = src
        .query_params(
            &catalog_query(src.server_version().major()),
            &[Some(&relid)],
        )
        .await
        .map_err(SubsetError::sql(Side::Source, "read the table's columns"))?;
    match identity_changed(&read_catalog(&r), table) {
        None => Ok(()),
        Some(detail) => Err(SubsetError::SchemaChanged {
            table: table.name.clone(),
            detail,
            lsn: unchanged.lsn,
            xid: unchanged.xid,
        }),
    }
}

/// Whether the Relation's columns missing from the source's catalog were all dropped since (not
/// renamed): every live column of the catalog is one walrelay followed or one this Relation
/// names. A rename keeps the column's `attnum` under a new name, which would show as a live
/// column neither followed nor sent — and then the values could belong to it.
fn dropped_since(
    catalog: &[CatalogColumn],
    table: &ApplyTable,
    relation_columns: &[RelationColumn],
) -> bool {
    catalog.iter().all(|c| {
        table.source_columns.iter().any(|f| f.attnum == c.attnum)
            || relation_columns.iter().any(|r| r.name == c.name)
    })
}

/// A column added and dropped again on the source since this Relation was sent (a migration's
/// temporary column, met by a target that was behind): it is added on the target for the
/// changes in between, nullable and without a default, and the DROP COLUMN further down the
/// stream removes it again. The rows that existed before it was added hold NULL in it meanwhile:
/// its default or stored value went with the DROP, and none of it outlives the DROP.
async fn add_dropped_column(
    src: &mut Connection,
    tgt: &mut Connection,
    table: &ApplyTable,
    column: &RelationColumn,
) -> Result<String, String> {
    let type_name = format_type(src, column).await.map_err(|e| e.to_string())?;
    if type_name.contains("???") {
        return Err(format!(
            "its column {} (new in this transaction) was dropped since, and its type with it, so walrelay cannot add it on the target for the changes in between: {}",
            column.name,
            resync(table)
        ));
    }
    let cat = CatalogColumn {
        attnum: 0,
        name: column.name.clone(),
        type_oid: column.type_oid,
        type_mod: column.type_modifier,
        type_name,
        not_null: false,
        default: None,
        missing: None,
        missing_differs: false,
    };
    let sql = add_column(tgt, table, &cat, 0).await?;
    warn!(table = %table.name, column = %column.name, "column added and dropped again on the source since: added on the target for the changes in between, rows older than it hold NULL in it until the source's DROP COLUMN, further in the stream, drops it here too");
    Ok(sql)
}

/// The source table's name now, by its OID (none if it was dropped).
async fn current_name(src: &mut Connection, relid: u32) -> Result<Option<TableName>, ClientError> {
    let r = src
        .query_params(
            "SELECT n.nspname::text AS schema, c.relname::text AS name \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = $1::pg_catalog.oid",
            &[Some(&relid.to_string())],
        )
        .await?;
    Ok(r.get(0, "schema")
        .zip(r.get(0, "name"))
        .map(|(schema, name)| TableName::new(schema, name)))
}

/// The target's columns of `table` and their types, as `format_type` prints them there.
async fn target_types(
    tgt: &mut Connection,
    table: &crate::apply::ApplyTable,
) -> Result<BTreeMap<String, String>, ClientError> {
    let r = tgt
        .query_params(
            "SELECT a.attname::text AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type \
               FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[Some(&table.name.quoted())],
        )
        .await?;
    Ok((0..r.rows.len())
        .filter_map(|i| Some((r.get(i, "name")?.to_string(), r.get(i, "type")?.to_string())))
        .collect())
}

/// Whether the target's type `have` (its `format_type`) is the source's `want` (qualified).
async fn same_type(tgt: &mut Connection, have: &str, want: &str) -> Result<bool, SubsetError> {
    let r = tgt
        .query_params(
            "SELECT pg_catalog.to_regtype($1) IS NOT NULL \
                AND pg_catalog.format_type(pg_catalog.to_regtype($1), NULL) = \
                    pg_catalog.format_type(pg_catalog.to_regtype($2), NULL) \
                AND pg_catalog.regexp_replace($1, '^[^(]*', '') = pg_catalog.regexp_replace($2, '^[^(]*', '') AS same",
            &[Some(want), Some(have)],
        )
        .await
        .map_err(SubsetError::sql(Side::Target, "compare column types"))?;
    Ok(r.get(0, "same") == Some("t"))
}

/// The source's name of a Relation column's type.
async fn format_type(src: &mut Connection, c: &RelationColumn) -> Result<String, SubsetError> {
    let (oid, typmod) = (c.type_oid.to_string(), c.type_modifier.to_string());
    let r = src
        .query_params(
            "SELECT pg_catalog.format_type($1::pg_catalog.oid, $2::int4) AS type",
            &[Some(&oid), Some(&typmod)],
        )
        .await
        .map_err(SubsetError::sql(Side::Source, "name a column type"))?;
    Ok(r.get(0, "type").unwrap_or("unknown").to_string())
}

/// Whether the table on the target has no rows (then no row's value for a new column matters).
async fn target_empty(tgt: &mut Connection, table: &ApplyTable) -> Result<bool, String> {
    let empty = tgt
        .simple_query(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            crate::schema::rows_of(&table.name, table.target_partitioned)
        ))
        .await
        .map_err(|e| format!("could not look into the table on the target: {e}"))?;
    Ok(empty.first().and_then(|r| r.get_idx(0, 0)) == Some("t"))
}

/// `ALTER TABLE … ADD COLUMN` giving the existing rows the source's value, or why that cannot be.
///
/// The catalog is read now, not as it was at the ADD COLUMN: on 11+ `attmissingval` keeps the
/// value the rows of then got; on 10 only the current default is known (rewritten into every row
/// by ADD COLUMN … DEFAULT), taken as theirs — a default changed since is not seen there.
async fn add_column(
    tgt: &mut Connection,
    table: &ApplyTable,
    cat: &CatalogColumn,
    source_major: u32,
) -> Result<String, String> {
    let t = table.name.quoted();
    let col = quote_ident(&cat.name);
    let ty = &cat.type_name;
    let exists = tgt
        .query_params(
            "SELECT pg_catalog.to_regtype($1) IS NOT NULL AS ok",
            &[Some(ty)],
        )
        .await
        .map_err(|e| format!("could not look up type {ty} on the target: {e}"))?;
    if exists.get(0, "ok") != Some("t") {
        return Err(format!(
            "its new column {} is of type {ty}, which the target does not have: create the type on the target and run again, or {}",
            cat.name,
            resync(table)
        ));
    }
    if cat.missing_differs && !target_empty(tgt, table).await? {
        return Err(format!(
            "its column {} was added with different values in different partitions (each given its own DEFAULT while detached), and walrelay adds a column with one value for all the rows that existed then: choose {}, or add the column on the target yourself with the right values and run again",
            cat.name,
            resync(table)
        ));
    }
    // The value of the rows that existed when the column was added.
    let existing: Option<String> = match (&cat.missing, &cat.default) {
        (Some(Some(v)), _) => Some(format!("{}::{ty}", quote_literal(v))),
        (Some(None), _) | (None, None) => None,
        (None, Some(d)) if source_major < 11 && crate::ddl::is_constant(d) => Some(d.clone()),
        (None, Some(d)) => {
            if !target_empty(tgt, table).await? {
                return Err(format!(
                    "its column {} was added with the default {d}, whose values for the rows that existed then were never sent (a volatile default rewrites the table; a default set after ADD COLUMN leaves them NULL — walrelay cannot tell which): choose {}, or add the column on the target yourself with the right values and run again",
                    cat.name,
                    resync(table)
                ));
            }
            None
        }
    };
    let mut sql = format!("ALTER TABLE {t} ADD COLUMN {col} {ty}");
    if let Some(v) = &existing {
        sql.push_str(&format!(" DEFAULT {v}"));
    }
    if cat.not_null {
        sql.push_str(" NOT NULL");
    }
    sql.push_str(";\n");
    match cat.default.as_deref().filter(|d| portable_default(d, &[])) {
        Some(d) => sql.push_str(&format!(
            "ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {d};\n"
        )),
        None if existing.is_some() => sql.push_str(&format!(
            "ALTER TABLE {t} ALTER COLUMN {col} DROP DEFAULT;\n"
        )),
        None => {}
    }
    info!(table = %table.name, column = %cat.name, r#type = %ty, existing_rows = existing.as_deref().unwrap_or("NULL"), "column added on the source: added on the target");
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_queries_per_major() {
        assert!(catalog_query(10).contains("false AS has_missing"));
        assert!(catalog_query(11).contains("la.atthasmissing"));
    }
}
