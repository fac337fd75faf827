//! The SQL text of applied changes, per table and per shape. Pure: names in, statements out.
//!
//! One shape per kind of change, per set of columns an UPDATE sets, and per which key values are
//! NULL (only possible with REPLICA IDENTITY FULL); each text is built once per session and then
//! executed as a prepared statement with text parameters.
//!
//! * **Finding the row.** By the replica identity columns (`"id" = $n`); with REPLICA IDENTITY
//!   FULL by every column and at most one row (`ctid = (SELECT ctid … LIMIT 1)`), so that a
//!   DELETE of one of two identical rows removes exactly one, as PostgreSQL's own apply does
//!   (`RelationFindReplTupleSeq` stops at the first match). A NULL compares as `IS NULL`; a type
//!   without equality (`json`, `xml`, `point`, …) compares by its text (`"doc"::text = $n`).
//! * **Conflicts** (`--on-conflict`): `error` runs the plain statement and the apply stops on a
//!   unique violation or a row not found. `skip` and `upsert` fold the check into the statement
//!   with data-modifying CTEs, so that no round trip is added, and record each conflict in
//!   `walrelay.subset_conflicts` in the same target transaction:
//!
//! ```sql
//! -- skip, INSERT:   WITH c AS (INSERT … ON CONFLICT DO NOTHING RETURNING 1) <record> WHERE NOT EXISTS (SELECT 1 FROM c)
//! -- upsert, INSERT: WITH o AS (SELECT 1 FROM ONLY t WHERE <key>), c AS (INSERT … ON CONFLICT (<key>) DO UPDATE SET …)
//! --                 <record> WHERE EXISTS (SELECT 1 FROM o)
//! -- upsert, UPDATE: WITH c AS (UPDATE … RETURNING 1), i AS (INSERT … SELECT … WHERE NOT EXISTS (SELECT 1 FROM c))
//! --                 <record> WHERE NOT EXISTS (SELECT 1 FROM c)
//! -- DELETE (both):  WITH c AS (DELETE … RETURNING 1) <record> WHERE NOT EXISTS (SELECT 1 FROM c)
//! ```
//!
//! The record's four parameters follow the change's: the source transaction's commit LSN and
//! id, and the key and the row as JSON objects of text values.

use crate::config::OnConflict;
use crate::schema::{quote_ident, quote_literal, SubsetName, TableName};

/// A column of a relation as the statements need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementColumn {
    pub name: String,
    /// The target's type, for casts (`$3::integer`).
    pub type_name: String,
    /// Compared by text when matching rows: the type has no equality.
    pub text_compare: bool,
    /// Never written by an UPDATE: a target identity column `GENERATED ALWAYS`.
    pub never_set: bool,
}

/// The statements of one subset table, as one Relation message describes it.
#[derive(Clone, Debug)]
pub struct TableStatements {
    pub table: TableName,
    pub columns: Vec<StatementColumn>,
    /// Indexes of the replica identity columns (every column with REPLICA IDENTITY FULL).
    pub key: Vec<usize>,
    /// REPLICA IDENTITY FULL: rows matched by every column, one at a time.
    pub full: bool,
    /// The target table is partitioned: read whole (not `ONLY`), and a row located by its
    /// partition and ctid (a ctid alone repeats across partitions).
    pub partitioned: bool,
    /// Inserts need `OVERRIDING SYSTEM VALUE` (a target identity column `GENERATED ALWAYS`).
    pub overriding: bool,
    pub on_conflict: OnConflict,
    pub subset: SubsetName,
}

/// What a conflict record says.
struct Record {
    change: &'static str,
    conflict: &'static str,
    resolution: &'static str,
}

impl TableStatements {
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn overriding(&self) -> &'static str {
        if self.overriding {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        }
    }

    fn placeholders(&self, first: usize, cast: bool) -> String {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if cast {
                    format!("${}::{}", first + i, c.type_name)
                } else {
                    format!("${}", first + i)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The condition on the key columns: `nulls[i]` says the i-th key value is NULL (it takes no
    /// parameter); the others take parameters from `first` on, in key order.
    fn key_condition(&self, nulls: &[bool], first: usize) -> String {
        let mut n = first;
        self.key
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let c = &self.columns[k];
                let col = quote_ident(&c.name);
                if nulls.get(i).copied().unwrap_or(false) {
                    format!("{col} IS NULL")
                } else {
                    n += 1;
                    if c.text_compare {
                        format!("{col}::text = ${}", n - 1)
                    } else {
                        format!("{col} = ${}", n - 1)
                    }
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The row-finding condition of an UPDATE or DELETE.
    fn row_condition(&self, nulls: &[bool], first: usize) -> String {
        let cond = self.key_condition(nulls, first);
        if self.full {
            let (row, columns) = if self.partitioned {
                ("(tableoid, ctid)", "tableoid, ctid")
            } else {
                ("ctid", "ctid")
            };
            format!(
                "{row} = (SELECT {columns} FROM {} WHERE {cond} LIMIT 1)",
                crate::schema::rows_of(&self.table, self.partitioned)
            )
        } else {
            cond
        }
    }

    fn record(&self, r: &Record, first: usize) -> String {
        format!(
            "INSERT INTO walrelay.subset_conflicts (subset, source_commit_lsn, source_xid, schema_name, \
             table_name, change, conflict, resolution, key_values, row_values) \
             SELECT {}, ${}::pg_lsn, ${}::bigint, {}, {}, '{}', '{}', '{}', ${}::json, ${}::json",
            quote_literal(self.subset.as_str()),
            first,
            first + 1,
            quote_literal(&self.table.schema),
            quote_literal(&self.table.name),
            r.change,
            r.conflict,
            r.resolution,
            first + 2,
            first + 3
        )
    }

    /// `INSERT` with every column as `$1…$n`, then (not `error`) the four record parameters.
    pub fn insert(&self) -> String {
        let t = self.table.quoted();
        let n = self.columns.len();
        let plain = format!(
            "INSERT INTO {t} ({}){} VALUES ({})",
            self.column_list(),
            self.overriding(),
            self.placeholders(1, false)
        );
        let exists = Record {
            change: "insert",
            conflict: "row exists",
            resolution: "skipped",
        };
        match self.on_conflict {
            OnConflict::Error => plain,
            OnConflict::Upsert if !self.full && !self.key.is_empty() => {
                let keys: Vec<String> = self
                    .key
                    .iter()
                    .map(|&k| quote_ident(&self.columns[k].name))
                    .collect();
                let set: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| !self.key.contains(i) && !c.never_set)
                    .map(|(_, c)| format!("{q} = EXCLUDED.{q}", q = quote_ident(&c.name)))
                    .collect();
                let action = if set.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", set.join(", "))
                };
                let cond: String = self
                    .key
                    .iter()
                    .map(|&k| format!("{} = ${}", quote_ident(&self.columns[k].name), k + 1))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                format!(
                    "WITH o AS (SELECT 1 FROM {} WHERE {cond}), c AS ({plain} ON CONFLICT ({}) {action}) {} WHERE EXISTS (SELECT 1 FROM o)",
                    crate::schema::rows_of(&self.table, self.partitioned),
                    keys.join(", "),
                    self.record(
                        &Record {
                            resolution: "updated",
                            ..exists
                        },
                        n + 1
                    )
                )
            }
            OnConflict::Upsert | OnConflict::Skip => format!(
                "WITH c AS ({plain} ON CONFLICT DO NOTHING RETURNING 1) {} WHERE NOT EXISTS (SELECT 1 FROM c)",
                self.record(&exists, n + 1)
            ),
        }
    }

    /// `UPDATE` setting the columns marked in `set`. Parameters: with `upsert_row`, every column
    /// of the new row, else the set columns; then the non-NULL key values; then (not `error`) the
    /// record's.
    pub fn update(&self, set: &[bool], nulls: &[bool], upsert_row: bool) -> String {
        let t = self.table.quoted();
        let mut n = 0;
        let assignments: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| set.get(*i).copied().unwrap_or(false))
            .map(|(i, c)| {
                let p = if upsert_row {
                    i + 1
                } else {
                    n += 1;
                    n
                };
                format!("{} = ${p}", quote_ident(&c.name))
            })
            .collect();
        let after_values = if upsert_row {
            self.columns.len()
        } else {
            assignments.len()
        };
        let keys = nulls.iter().filter(|n| !**n).count();
        let plain = format!(
            "UPDATE {t} SET {} WHERE {}",
            assignments.join(", "),
            self.row_condition(nulls, after_values + 1)
        );
        let record_at = after_values + keys + 1;
        match self.on_conflict {
            OnConflict::Error => plain,
            OnConflict::Upsert if upsert_row => format!(
                "WITH c AS ({plain} RETURNING 1), i AS (INSERT INTO {t} ({}){} SELECT {} WHERE NOT EXISTS (SELECT 1 FROM c)) {} WHERE NOT EXISTS (SELECT 1 FROM c)",
                self.column_list(),
                self.overriding(),
                self.placeholders(1, true),
                self.record(
                    &Record {
                        change: "update",
                        conflict: "no row",
                        resolution: "inserted",
                    },
                    record_at
                )
            ),
            OnConflict::Upsert | OnConflict::Skip => format!(
                "WITH c AS ({plain} RETURNING 1) {} WHERE NOT EXISTS (SELECT 1 FROM c)",
                self.record(
                    &Record {
                        change: "update",
                        conflict: "no row",
                        resolution: "skipped",
                    },
                    record_at
                )
            ),
        }
    }

    /// `DELETE`: the non-NULL key values, then (not `error`) the record's parameters.
    pub fn delete(&self, nulls: &[bool]) -> String {
        let plain = format!(
            "DELETE FROM {} WHERE {}",
            self.table.quoted(),
            self.row_condition(nulls, 1)
        );
        let keys = nulls.iter().filter(|n| !**n).count();
        match self.on_conflict {
            OnConflict::Error => plain,
            OnConflict::Upsert | OnConflict::Skip => format!(
                "WITH c AS ({plain} RETURNING 1) {} WHERE NOT EXISTS (SELECT 1 FROM c)",
                self.record(
                    &Record {
                        change: "delete",
                        conflict: "no row",
                        resolution: "skipped",
                    },
                    keys + 1
                )
            ),
        }
    }
}

/// A JSON object of text values (`null` for NULL), for the conflict record.
pub fn json_object<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        json_string(&mut out, k);
        out.push_str(": ");
        match v {
            Some(b) => json_string(&mut out, &String::from_utf8_lossy(b)),
            None => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> StatementColumn {
        StatementColumn {
            name: name.into(),
            type_name: ty.into(),
            text_compare: false,
            never_set: false,
        }
    }

    fn table(mode: OnConflict, full: bool) -> TableStatements {
        let mut doc = col("doc", "json");
        doc.text_compare = true;
        TableStatements {
            table: TableName::new("public", "t"),
            columns: vec![col("id", "integer"), col("v", "text"), doc],
            key: if full { vec![0, 1, 2] } else { vec![0] },
            full,
            partitioned: false,
            overriding: false,
            on_conflict: mode,
            subset: SubsetName::new("s").expect("name"),
        }
    }

    #[test]
    fn plain_statements() {
        let t = table(OnConflict::Error, false);
        assert_eq!(
            t.insert(),
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"doc\") VALUES ($1, $2, $3)"
        );
        assert_eq!(
            t.update(&[false, true, true], &[false], false),
            "UPDATE \"public\".\"t\" SET \"v\" = $1, \"doc\" = $2 WHERE \"id\" = $3"
        );
        assert_eq!(
            t.delete(&[false]),
            "DELETE FROM \"public\".\"t\" WHERE \"id\" = $1"
        );
    }

    #[test]
    fn full_identity_matches_one_row_by_every_column() {
        let t = table(OnConflict::Error, true);
        assert_eq!(
            t.delete(&[false, true, false]),
            "DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"public\".\"t\" \
             WHERE \"id\" = $1 AND \"v\" IS NULL AND \"doc\"::text = $2 LIMIT 1)"
        );
        assert_eq!(
            t.update(&[false, true, false], &[false, false, false], false),
            "UPDATE \"public\".\"t\" SET \"v\" = $1 WHERE ctid = (SELECT ctid FROM ONLY \"public\".\"t\" \
             WHERE \"id\" = $2 AND \"v\" = $3 AND \"doc\"::text = $4 LIMIT 1)"
        );
    }

    #[test]
    fn a_partitioned_target_is_read_whole_and_its_rows_located_with_their_partition() {
        let mut t = table(OnConflict::Error, true);
        t.partitioned = true;
        assert_eq!(
            t.delete(&[false, false, false]),
            "DELETE FROM \"public\".\"t\" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"public\".\"t\" \
             WHERE \"id\" = $1 AND \"v\" = $2 AND \"doc\"::text = $3 LIMIT 1)"
        );
        let mut u = table(OnConflict::Upsert, false);
        u.partitioned = true;
        assert!(
            u.insert()
                .starts_with("WITH o AS (SELECT 1 FROM \"public\".\"t\" WHERE \"id\" = $1)"),
            "{}",
            u.insert()
        );
    }

    #[test]
    fn conflict_modes_record_in_the_same_statement() {
        let t = table(OnConflict::Skip, false);
        let s = t.insert();
        assert!(s.starts_with("WITH c AS (INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"doc\") VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1) INSERT INTO walrelay.subset_conflicts"), "{s}");
        assert!(s.contains("'s', $4::pg_lsn, $5::bigint, 'public', 't', 'insert', 'row exists', 'skipped', $6::json, $7::json WHERE NOT EXISTS (SELECT 1 FROM c)"), "{s}");
        let s = t.delete(&[false]);
        assert!(s.contains("$2::pg_lsn"), "{s}");
        let u = table(OnConflict::Upsert, false);
        let s = u.insert();
        assert!(
            s.starts_with(
                "WITH o AS (SELECT 1 FROM ONLY \"public\".\"t\" WHERE \"id\" = $1), c AS (INSERT"
            ),
            "{s}"
        );
        assert!(
            s.contains("ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\", \"doc\" = EXCLUDED.\"doc\")"),
            "{s}"
        );
        assert!(s.ends_with("WHERE EXISTS (SELECT 1 FROM o)"), "{s}");
        let s = u.update(&[true, true, true], &[false], true);
        assert!(s.starts_with("WITH c AS (UPDATE \"public\".\"t\" SET \"id\" = $1, \"v\" = $2, \"doc\" = $3 WHERE \"id\" = $4 RETURNING 1), i AS (INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"doc\") SELECT $1::integer, $2::text, $3::json WHERE NOT EXISTS (SELECT 1 FROM c))"), "{s}");
        assert!(s.contains("'inserted', $7::json, $8::json"), "{s}");
        // A row the source did not send whole (unchanged TOAST): only skipped.
        let s = u.update(&[false, true, false], &[false], false);
        assert!(s.contains("'update', 'no row', 'skipped', $5::json"), "{s}");
    }

    #[test]
    fn json_objects() {
        assert_eq!(
            json_object([
                ("id", Some(&b"1"[..])),
                ("v", None),
                ("q\"", Some(&b"a\nb\\"[..]))
            ]),
            "{\"id\": \"1\", \"v\": null, \"q\\\"\": \"a\\nb\\\\\"}"
        );
    }
}
