//! walrelay's state on the target, in the `walrelay` schema: one progress row per subset and one
//! row per table. These rows are the truth a restart resumes from (see `progress` for the
//! invariant); they are written only in target transactions — the progress row together with the
//! changes it covers, a table's row together with its copied data.
//!
//! ```sql
//! walrelay.subset_progress (subset PK, source_system_identifier, source_database, slot_name,
//!                           publication, applied_lsn, source_wal_end, last_commit_time,
//!                           updated_at, created_at, format)
//! walrelay.subset_tables   (subset, schema_name, table_name PK; state 'copying' | 'synced',
//!                           sync_lsn, rows_copied, created_by_walrelay, synced_at, source_oid)
//! walrelay.subset_columns  (subset, schema_name, table_name, column_name PK; source_attnum,
//!                           source_type_oid, source_typmod): the source's columns as walrelay
//!                           last followed them — written with the copy and with each schema
//!                           change followed, in the same target transaction
//! walrelay.subset_sequences (subset, schema_name, sequence_name PK; last_value, synced_at): the
//!                           sequences chosen with --sequence
//! walrelay.subset_conflicts (id PK, subset, recorded_at, source_commit_lsn, source_xid,
//!                           schema_name, table_name, change, conflict, resolution, key_values,
//!                           row_values): every change left out or applied differently
//!                           (--on-conflict, --skip-lsn), written in the transaction it concerns
//! ```
//!
//! Format 2 added `source_oid` and the last three tables; [`MIGRATE_STATE`] brings a format-1
//! target there (idempotent, run by every `subset run` that finds it needed).

use walrelay_client::{ClientError, Connection, QueryResult};
use walrelay_protocol::Lsn;

use crate::schema::{quote_literal, SourceColumn, SubsetName, TableName};

/// Version of the layout below, stored in every progress row.
pub const STATE_FORMAT: i32 = 2;

/// Creates the state tables (the schema exists by then).
pub const CREATE_STATE_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS walrelay.subset_progress (
    subset text PRIMARY KEY,
    source_system_identifier text NOT NULL,
    source_database text NOT NULL,
    slot_name text NOT NULL,
    publication text NOT NULL,
    applied_lsn pg_lsn NOT NULL,
    source_wal_end pg_lsn,
    last_commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    format integer NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS walrelay.subset_tables (
    subset text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL CHECK (state IN ('copying', 'synced')),
    sync_lsn pg_lsn,
    rows_copied bigint,
    created_by_walrelay boolean NOT NULL DEFAULT false,
    synced_at timestamptz,
    PRIMARY KEY (subset, schema_name, table_name)
)";

/// From format 1 to 2 (and a no-op on format 2): the source's table OIDs and columns, the chosen
/// sequences, the conflict record.
pub const MIGRATE_STATE: &str = "\
ALTER TABLE walrelay.subset_tables ADD COLUMN IF NOT EXISTS source_oid bigint;
CREATE TABLE IF NOT EXISTS walrelay.subset_columns (
    subset text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    source_attnum integer NOT NULL,
    source_type_oid bigint NOT NULL,
    source_typmod integer NOT NULL,
    PRIMARY KEY (subset, schema_name, table_name, column_name)
);
CREATE TABLE IF NOT EXISTS walrelay.subset_sequences (
    subset text NOT NULL,
    schema_name text NOT NULL,
    sequence_name text NOT NULL,
    last_value bigint,
    synced_at timestamptz,
    PRIMARY KEY (subset, schema_name, sequence_name)
);
CREATE TABLE IF NOT EXISTS walrelay.subset_conflicts (
    id bigserial PRIMARY KEY,
    subset text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    source_commit_lsn pg_lsn,
    source_xid bigint,
    schema_name text,
    table_name text,
    change text NOT NULL,
    conflict text NOT NULL,
    resolution text NOT NULL,
    key_values json,
    row_values json
)";

/// The SQL that records `columns` as `table`'s source columns (replacing what was there), with
/// literals: for a simple-query batch inside the transaction that copies or alters the table.
pub fn record_columns_sql(
    subset: &SubsetName,
    table: &TableName,
    columns: &[SourceColumn],
) -> String {
    let (s, sch, tab) = (
        quote_literal(subset.as_str()),
        quote_literal(&table.schema),
        quote_literal(&table.name),
    );
    let mut sql = format!(
        "DELETE FROM walrelay.subset_columns WHERE subset = {s} AND schema_name = {sch} AND table_name = {tab};\n"
    );
    if !columns.is_empty() {
        let rows: Vec<String> = columns
            .iter()
            .map(|c| {
                format!(
                    "({s}, {sch}, {tab}, {}, {}, {}, {})",
                    quote_literal(&c.name),
                    c.attnum,
                    c.type_oid,
                    c.type_mod
                )
            })
            .collect();
        sql.push_str(&format!(
            "INSERT INTO walrelay.subset_columns (subset, schema_name, table_name, column_name, source_attnum, source_type_oid, source_typmod) VALUES {};\n",
            rows.join(", ")
        ));
    }
    sql
}

/// The progress row moves to `$1` (never backwards): in an apply transaction with the commit time
/// of its last source transaction (`$2`, microseconds since 2000-01-01), or on its own with `$2`
/// NULL; `$3` is the source's end of WAL as last seen, `$4` the subset. Returns a row only if the
/// subset still exists (a concurrent `subset drop` must stop the apply).
pub const UPDATE_PROGRESS: &str = "\
UPDATE walrelay.subset_progress
   SET applied_lsn = GREATEST(applied_lsn, $1::pg_lsn),
       last_commit_time = COALESCE(
           '2000-01-01 00:00:00+00'::timestamptz + $2::bigint * interval '1 microsecond',
           last_commit_time),
       source_wal_end = GREATEST(source_wal_end, $3::pg_lsn),
       updated_at = now()
 WHERE subset = $4
RETURNING 1";

/// A table's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableState {
    pub table: TableName,
    /// `copying` (not copied yet, or its copy did not commit) or `synced`.
    pub state: String,
    pub sync_lsn: Option<Lsn>,
    pub rows_copied: Option<i64>,
    pub created_by_walrelay: bool,
    pub synced_at: Option<String>,
    /// The table's OID on the source (format 2; recorded with the copy).
    #[serde(skip)]
    pub source_oid: Option<u32>,
}

impl TableState {
    pub fn is_synced(&self) -> bool {
        self.state == "synced" && self.sync_lsn.is_some()
    }
}

/// A subset's progress row.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProgressRow {
    pub source_system_identifier: String,
    pub source_database: String,
    pub slot_name: String,
    pub publication: String,
    pub applied_lsn: Lsn,
    pub source_wal_end: Option<Lsn>,
    pub last_commit_time: Option<String>,
    pub updated_at: String,
    /// Seconds since `updated_at`, and since the last applied commit, by the target's clock.
    pub updated_age_secs: f64,
    pub commit_age_secs: Option<f64>,
}

/// What the target holds for a subset.
#[derive(Clone, Debug, PartialEq)]
pub struct SubsetState {
    pub progress: Option<ProgressRow>,
    pub tables: Vec<TableState>,
    /// Sequences chosen with `--sequence`.
    pub sequences: Vec<TableName>,
}

impl SubsetState {
    pub fn table(&self, t: &TableName) -> Option<&TableState> {
        self.tables.iter().find(|s| &s.table == t)
    }
}

fn lsn_at(r: &QueryResult, row: usize, col: &str) -> Option<Lsn> {
    r.get(row, col).and_then(|v| v.parse().ok())
}

/// Whether the state tables exist on this server.
pub async fn exists(conn: &mut Connection) -> Result<bool, ClientError> {
    Ok(layout(conn).await? > 0)
}

/// The layout of the state tables on this server: 0 (none), 1 or [`STATE_FORMAT`].
pub async fn layout(conn: &mut Connection) -> Result<i32, ClientError> {
    let r = conn
        .query_params(
            "SELECT CASE WHEN to_regclass('walrelay.subset_progress') IS NULL \
                          OR to_regclass('walrelay.subset_tables') IS NULL THEN 0 \
                         WHEN to_regclass('walrelay.subset_conflicts') IS NULL \
                          OR to_regclass('walrelay.subset_sequences') IS NULL \
                          OR to_regclass('walrelay.subset_columns') IS NULL \
                          OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                                          WHERE attrelid = pg_catalog.to_regclass('walrelay.subset_tables') \
                                            AND attname = 'source_oid' AND NOT attisdropped) THEN 1 \
                         ELSE 2 END AS format",
            &[],
        )
        .await?;
    Ok(r.get(0, "format").and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The source columns recorded for each of a subset's tables (format 2).
pub async fn load_columns(
    conn: &mut Connection,
    subset: &SubsetName,
) -> Result<Vec<(TableName, SourceColumn)>, ClientError> {
    if layout(conn).await? < 2 {
        return Ok(Vec::new());
    }
    let r = conn
        .query_params(
            "SELECT schema_name, table_name, column_name, source_attnum, source_type_oid, source_typmod \
               FROM walrelay.subset_columns WHERE subset = $1 \
              ORDER BY schema_name, table_name, source_attnum",
            &[Some(subset.as_str())],
        )
        .await?;
    let mut out = Vec::with_capacity(r.rows.len());
    for i in 0..r.rows.len() {
        let num = |c: &str| r.get(i, c).and_then(|v| v.parse::<i64>().ok());
        let (Some(attnum), Some(type_oid), Some(type_mod)) = (
            num("source_attnum"),
            num("source_type_oid"),
            num("source_typmod"),
        ) else {
            continue;
        };
        out.push((
            TableName::new(
                r.get(i, "schema_name").unwrap_or_default(),
                r.get(i, "table_name").unwrap_or_default(),
            ),
            SourceColumn {
                name: r.get(i, "column_name").unwrap_or_default().to_string(),
                attnum: attnum as i32,
                type_oid: type_oid as u32,
                type_mod: type_mod as i32,
            },
        ));
    }
    Ok(out)
}

/// The target tables other subsets write into: table → the first such subset's name.
pub async fn tables_of_other_subsets(
    conn: &mut Connection,
    subset: &SubsetName,
) -> Result<std::collections::BTreeMap<TableName, String>, ClientError> {
    let mut out = std::collections::BTreeMap::new();
    if !exists(conn).await? {
        return Ok(out);
    }
    let r = conn
        .query_params(
            "SELECT schema_name, table_name, min(subset) AS subset \
               FROM walrelay.subset_tables WHERE subset <> $1 \
              GROUP BY schema_name, table_name",
            &[Some(subset.as_str())],
        )
        .await?;
    for i in 0..r.rows.len() {
        out.insert(
            TableName::new(
                r.get(i, "schema_name").unwrap_or_default(),
                r.get(i, "table_name").unwrap_or_default(),
            ),
            r.get(i, "subset").unwrap_or_default().to_string(),
        );
    }
    Ok(out)
}

/// Reads a subset's state; `None` when the target holds nothing for it.
pub async fn load(
    conn: &mut Connection,
    subset: &SubsetName,
) -> Result<Option<SubsetState>, ClientError> {
    if !exists(conn).await? {
        return Ok(None);
    }
    let p = conn
        .query_params(
            "SELECT source_system_identifier, source_database, slot_name, publication, \
                    applied_lsn::text AS applied_lsn, source_wal_end::text AS source_wal_end, \
                    last_commit_time::text AS last_commit_time, updated_at::text AS updated_at, \
                    extract(epoch FROM now() - updated_at)::float8 AS updated_age, \
                    extract(epoch FROM now() - last_commit_time)::float8 AS commit_age \
               FROM walrelay.subset_progress WHERE subset = $1",
            &[Some(subset.as_str())],
        )
        .await?;
    let progress = if p.rows.is_empty() {
        None
    } else {
        let text = |c: &str| p.get(0, c).unwrap_or_default().to_string();
        Some(ProgressRow {
            source_system_identifier: text("source_system_identifier"),
            source_database: text("source_database"),
            slot_name: text("slot_name"),
            publication: text("publication"),
            applied_lsn: lsn_at(&p, 0, "applied_lsn").unwrap_or(Lsn::INVALID),
            source_wal_end: lsn_at(&p, 0, "source_wal_end"),
            last_commit_time: p.get(0, "last_commit_time").map(str::to_string),
            updated_at: text("updated_at"),
            updated_age_secs: p
                .get(0, "updated_age")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            commit_age_secs: p.get(0, "commit_age").and_then(|v| v.parse().ok()),
        })
    };
    let v2 = layout(conn).await? >= 2;
    let oid = if v2 {
        "source_oid"
    } else {
        "NULL::bigint AS source_oid"
    };
    let t = conn
        .query_params(
            &format!(
                "SELECT schema_name, table_name, state, sync_lsn::text AS sync_lsn, rows_copied, \
                        created_by_walrelay, synced_at::text AS synced_at, {oid} \
                   FROM walrelay.subset_tables WHERE subset = $1 ORDER BY schema_name, table_name"
            ),
            &[Some(subset.as_str())],
        )
        .await?;
    let tables: Vec<TableState> = (0..t.rows.len())
        .map(|i| TableState {
            table: TableName::new(
                t.get(i, "schema_name").unwrap_or_default(),
                t.get(i, "table_name").unwrap_or_default(),
            ),
            state: t.get(i, "state").unwrap_or_default().to_string(),
            sync_lsn: lsn_at(&t, i, "sync_lsn"),
            rows_copied: t.get(i, "rows_copied").and_then(|v| v.parse().ok()),
            created_by_walrelay: t.get(i, "created_by_walrelay") == Some("t"),
            synced_at: t.get(i, "synced_at").map(str::to_string),
            source_oid: t.get(i, "source_oid").and_then(|v| v.parse().ok()),
        })
        .collect();
    let mut sequences = Vec::new();
    if v2 {
        let s = conn
            .query_params(
                "SELECT schema_name, sequence_name FROM walrelay.subset_sequences \
                  WHERE subset = $1 ORDER BY 1, 2",
                &[Some(subset.as_str())],
            )
            .await?;
        sequences = (0..s.rows.len())
            .map(|i| {
                TableName::new(
                    s.get(i, "schema_name").unwrap_or_default(),
                    s.get(i, "sequence_name").unwrap_or_default(),
                )
            })
            .collect();
    }
    if progress.is_none() && tables.is_empty() {
        return Ok(None);
    }
    Ok(Some(SubsetState {
        progress,
        tables,
        sequences,
    }))
}
