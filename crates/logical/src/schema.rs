//! What walrelay knows about a table: its name, columns, replica identity and owned sequences, as
//! read from a server's catalogs (`catalog`), and the names walrelay gives the objects of a subset.

use std::fmt;

use serde::Serialize;
pub use walrelay_protocol::pgoutput::ReplicaIdentity;

/// Longest subset name: `walrelay_` + name must be a valid slot name (63 bytes).
pub const MAX_SUBSET_NAME: usize = 54;

/// An identifier in double quotes (`"` doubled): always quoted, so case and odd characters survive.
pub fn quote_ident(s: &str) -> String {
    walrelay_protocol::command::quote_ident(s)
}

/// A string literal for SQL (standard_conforming_strings, on by default since 9.1): `'` doubled.
pub fn quote_literal(s: &str) -> String {
    walrelay_protocol::command::quote_literal(s)
}

/// The name of a subset and of the objects walrelay creates for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SubsetName(String);

impl SubsetName {
    /// Lower-case letters, digits and underscores, at most [`MAX_SUBSET_NAME`] bytes.
    pub fn new(name: &str) -> Option<SubsetName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_SUBSET_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| SubsetName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The publication and the replication slot on the source: `walrelay_NAME`.
    pub fn slot(&self) -> String {
        format!("walrelay_{}", self.0)
    }

    pub fn publication(&self) -> String {
        self.slot()
    }
}

impl fmt::Display for SubsetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A schema-qualified table name. The same name is used on the source and the target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: &str, name: &str) -> Self {
        TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    /// Parses `schema.table`, `table` (schema `public`), with SQL's rules: unquoted parts are
    /// folded to lower case, `"Quoted"` parts kept as written (`""` is a quote).
    pub fn parse(s: &str) -> Option<TableName> {
        let parts = split_identifiers(s)?;
        match parts.as_slice() {
            [name] => Some(TableName::new("public", name)),
            [schema, name] => Some(TableName::new(schema, name)),
            _ => None,
        }
    }

    /// `"schema"."name"`, for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The name as a string literal of its quoted form, for `'…'::regclass`.
    pub fn regclass_literal(&self) -> String {
        quote_literal(&self.quoted())
    }
}

impl fmt::Display for TableName {
    /// `schema.name`, each part quoted only when it would not read back as itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            let plain = !s.is_empty()
                && s.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_lowercase()
                        || b == b'_'
                        || (i > 0 && (b.is_ascii_digit() || b == b'$'))
                });
            if plain {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

/// Splits `a."B c".d` into identifiers, folding unquoted ones to lower case.
fn split_identifiers(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
            if part.is_empty() {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return None;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return None;
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// `pg_attribute.attidentity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Identity {
    None,
    Always,
    ByDefault,
}

/// One column, as `format_type` and `pg_get_expr` print it with an empty `search_path` (so every
/// name outside `pg_catalog` is schema-qualified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `pg_attribute.attnum` on the server read.
    pub attnum: i32,
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: `integer`, `character varying(20)`, `public.mood[]`.
    pub type_name: String,
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_mod: i32,
    /// Whether the type has an equality usable to match rows (see `catalog`): not `json`, `xml`,
    /// `point`, …
    pub has_equality: bool,
    pub not_null: bool,
    /// The default expression, or the generation expression of a generated column.
    pub default: Option<String>,
    pub identity: Identity,
    /// A stored generated column (12+): never sent by pgoutput, never written by walrelay.
    pub generated: bool,
    /// A collation other than the type's default, quoted.
    pub collation: Option<String>,
    /// `float4`/`float8`: their text form differs between majors (verify normalizes it).
    pub is_float: bool,
}

/// How a sequence counts, as `pg_sequence` (10+) says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SequenceOptions {
    /// `format_type` of `pg_sequence.seqtypid`.
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
}

impl SequenceOptions {
    /// ` INCREMENT BY … MINVALUE … MAXVALUE … START WITH … CACHE … [NO] CYCLE` (the type is
    /// the caller's: an identity column's sequence takes the column's).
    pub fn clauses(&self) -> String {
        format!(
            " INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {}{}",
            self.increment,
            self.min,
            self.max,
            self.start,
            self.cache.max(1),
            if self.cycle { " CYCLE" } else { " NO CYCLE" }
        )
    }
}

/// A sequence owned by a column: `serial` (`OWNED BY`) or an identity column's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnedSequence {
    pub name: TableName,
    pub column: String,
    pub identity: bool,
    pub options: SequenceOptions,
}

/// A column of a subset table as the source had it when walrelay last followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceColumn {
    pub name: String,
    /// `pg_attribute.attnum` on the source: a renamed column keeps it, a new one never reuses it.
    pub attnum: i32,
    pub type_oid: u32,
    pub type_mod: i32,
}

/// A table in a FROM, DELETE or TRUNCATE clause, its own rows only: `ONLY t` (no inheritance
/// children), but a partitioned table whole (its rows are its partitions', and `ONLY` would
/// reach none of them).
pub fn rows_of(name: &TableName, partitioned: bool) -> String {
    if partitioned {
        name.quoted()
    } else {
        format!("ONLY {}", name.quoted())
    }
}

/// A table as one server's catalogs describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableSchema {
    pub name: TableName,
    pub oid: u32,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, …
    pub relkind: char,
    /// `pg_class.relpersistence`: `p` permanent, `u` unlogged, `t` temporary.
    pub persistence: char,
    #[serde(skip)]
    pub replica_identity: ReplicaIdentity,
    /// The replica identity columns in index order (the primary key's by default; with REPLICA
    /// IDENTITY FULL the primary key's, if any); empty when the table has none.
    pub key: Vec<String>,
    pub key_is_primary: bool,
    pub columns: Vec<Column>,
    pub sequences: Vec<OwnedSequence>,
    /// `pg_class.relpages`: to start the largest copies first.
    pub pages: i64,
    /// Whether the role may SELECT from it.
    pub can_read: bool,
    /// Whether the role may INSERT, UPDATE, DELETE and TRUNCATE it.
    pub can_write: bool,
    /// Whether the role owns it (or is a superuser): needed to add it to a publication.
    pub owned: bool,
    /// For a partitioned table: its leaf partitions, at any depth (empty otherwise).
    pub partitions: Vec<Partition>,
}

/// A leaf partition of a partitioned table, as far as replicating its parent cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub name: TableName,
    /// `pg_class.relkind`: `r`, or `f` for a foreign table.
    pub relkind: char,
    pub persistence: char,
    /// `pg_class.relreplident`.
    pub replica_identity: char,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns that carry data over the wire: all but generated ones, in attribute order.
    pub fn replicated_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }

    pub fn is_partitioned(&self) -> bool {
        self.relkind == 'p'
    }

    /// The table in a FROM clause that reads its own rows only ([`rows_of`]).
    pub fn rows(&self) -> String {
        rows_of(&self.name, self.is_partitioned())
    }

    /// The table's rows as of the session's snapshot, in COPY's text format: a partitioned
    /// table's from all its partitions (COPY cannot read one directly).
    pub fn copy_out_sql(&self) -> String {
        if self.is_partitioned() {
            format!(
                "COPY (SELECT {} FROM {}) TO STDOUT",
                self.column_names(),
                self.name.quoted()
            )
        } else {
            format!(
                "COPY {} {} TO STDOUT",
                self.name.quoted(),
                self.copy_column_list()
            )
        }
    }

    /// `("a", "b")`: the replicated columns for COPY.
    pub fn copy_column_list(&self) -> String {
        format!("({})", self.column_names())
    }

    /// `"a", "b"`: the replicated columns, quoted, for a SELECT list.
    pub fn column_names(&self) -> String {
        self.replicated_columns()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The replicated columns as the source's state records them.
    pub fn source_columns(&self) -> Vec<SourceColumn> {
        self.replicated_columns()
            .map(|c| SourceColumn {
                name: c.name.clone(),
                attnum: c.attnum,
                type_oid: c.type_oid,
                type_mod: c.type_mod,
            })
            .collect()
    }

    /// Whether changes to it can be matched to rows: a primary key or replica identity index.
    pub fn has_usable_key(&self) -> bool {
        matches!(
            self.replica_identity,
            ReplicaIdentity::Default | ReplicaIdentity::Index
        ) && !self.key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_names() {
        assert!(SubsetName::new("orders_1").is_some());
        for bad in ["", "Orders", "a-b", "a b", &"x".repeat(55)] {
            assert!(SubsetName::new(bad).is_none(), "{bad}");
        }
        let n = SubsetName::new(&"x".repeat(54)).unwrap();
        assert_eq!(n.slot().len(), 63);
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("public.t"),
            Some(TableName::new("public", "t"))
        );
        assert_eq!(TableName::parse("T"), Some(TableName::new("public", "t")));
        assert_eq!(
            TableName::parse("\"My Schema\".\"Odd\"\"Name\""),
            Some(TableName::new("My Schema", "Odd\"Name"))
        );
        for bad in ["", "a.b.c", "a.", ".b", "\"\"", "\"open", "a b", "a.\"b\"x"] {
            assert_eq!(TableName::parse(bad), None, "{bad}");
        }
        let t = TableName::new("My Schema", "t");
        assert_eq!(t.quoted(), "\"My Schema\".\"t\"");
        assert_eq!(t.to_string(), "\"My Schema\".t");
        assert_eq!(
            TableName::new("public", "it's").regclass_literal(),
            "'\"public\".\"it''s\"'"
        );
    }
}
