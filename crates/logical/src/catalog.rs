//! Reading tables from a server's catalogs — the same queries on the source and the target, valid
//! on every major from 10 to 18 (`attgenerated` is selected from 12 on only).
//!
//! The session must run with an empty `search_path` ([`catalog_session`]): `format_type` and
//! `pg_get_expr` then qualify every name outside `pg_catalog`, so the text can be used as it is in
//! DDL for another server.
//!
//! After the core's own `fetch_remote_table_info` (tablesync.c): the replica identity columns are
//! those of `pg_get_replica_identity_index()`, the primary key by default.

use walrelay_client::{ClientError, ConnectParams, Connection, QueryResult};

use crate::error::{Side, SubsetError};

use crate::schema::{
    Column, Identity, OwnedSequence, Partition, ReplicaIdentity, SequenceOptions, TableName,
    TableSchema,
};

/// Prepares a session for catalog queries and DDL: names come out schema-qualified.
pub async fn catalog_session(conn: &mut Connection) -> Result<(), ClientError> {
    conn.batch_execute("SET search_path = ''").await
}

/// A new session on one side, prepared by [`catalog_session`].
pub async fn connect(params: &ConnectParams, side: Side) -> Result<Connection, SubsetError> {
    let mut conn = Connection::connect(params)
        .await
        .map_err(SubsetError::connect(side))?;
    catalog_session(&mut conn)
        .await
        .map_err(SubsetError::sql(side, "prepare the session"))?;
    Ok(conn)
}

const TABLE_QUERY: &str = "\
SELECT c.oid::int8 AS oid, c.relkind::text AS relkind, c.relpersistence::text AS persistence,
       c.relreplident::text AS replident,
       coalesce(i.indisprimary, false) AS key_is_primary,
       coalesce(i.indkey::text, '') AS key_attnums,
       c.relpages::int8 AS pages,
       pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS can_select,
       pg_catalog.has_table_privilege(c.oid, 'INSERT') AND pg_catalog.has_table_privilege(c.oid, 'UPDATE')
         AND pg_catalog.has_table_privilege(c.oid, 'DELETE') AND pg_catalog.has_table_privilege(c.oid, 'TRUNCATE')
         AS can_write
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  -- The replica identity index; for REPLICA IDENTITY FULL (which has none) the primary key, so
  -- that the target gets it and finds rows by it.
  LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = coalesce(
       pg_catalog.pg_get_replica_identity_index(c.oid),
       CASE WHEN c.relreplident = 'f' THEN
            (SELECT p.indexrelid FROM pg_catalog.pg_index p WHERE p.indrelid = c.oid AND p.indisprimary) END)
 WHERE n.nspname = $1 AND c.relname = $2";

/// Whether a column's type (through a domain, and for an array its element's) has an equality
/// PostgreSQL can use to match rows: a default btree or hash operator class, or an enum or range.
/// `json`, `xml`, `point` and the like have none; REPLICA IDENTITY FULL matching compares their
/// text instead.
const EQUALITY: &str = "\
CASE WHEN coalesce(et.typtype, bt.typtype) IN ('e', 'r', 'm') THEN true
     ELSE EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
                   WHERE oc.opcdefault AND am.amname IN ('btree', 'hash')
                     AND oc.opcintype = coalesce(et.oid, bt.oid)) END";

fn columns_query(major: u32) -> String {
    let generated = if major >= 12 {
        "a.attgenerated::text"
    } else {
        "''::text"
    };
    format!(
        "\
SELECT a.attnum::int4 AS attnum, a.attname::text AS name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int8 AS typoid,
       a.atttypmod::int4 AS typmod, {equality} AS has_equality,
       a.attnotnull AS not_null, a.attidentity::text AS identity, {generated} AS generated,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0 THEN
            CASE WHEN cn.nspname = 'pg_catalog' THEN pg_catalog.quote_ident(co.collname)
                 ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END
       END AS collation,
       a.atttypid IN ('pg_catalog.float4'::pg_catalog.regtype, 'pg_catalog.float8'::pg_catalog.regtype) AS is_float
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
  LEFT JOIN pg_catalog.pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
  LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
 WHERE a.attrelid = $1::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum",
        equality = EQUALITY
    )
}

const SEQUENCES_QUERY: &str = "\
SELECT sn.nspname::text AS schema, s.relname::text AS name, a.attname::text AS column_name,
       d.deptype = 'i' AS identity, pg_catalog.format_type(q.seqtypid, NULL) AS type,
       q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid = $1::pg_catalog.oid AND d.deptype IN ('a', 'i')
 ORDER BY a.attnum";

fn field<'a>(r: &'a QueryResult, row: usize, col: &str) -> Result<&'a str, ClientError> {
    r.get(row, col).ok_or_else(|| {
        ClientError::Unexpected(format!("catalog query returned no value for {col}"))
    })
}

fn number<T: std::str::FromStr>(r: &QueryResult, row: usize, col: &str) -> Result<T, ClientError> {
    field(r, row, col)?
        .parse()
        .map_err(|_| ClientError::Unexpected(format!("catalog query returned a bad {col}")))
}

fn flag(r: &QueryResult, row: usize, col: &str) -> bool {
    r.get(row, col) == Some("t")
}

fn first_char(r: &QueryResult, row: usize, col: &str) -> char {
    r.get(row, col)
        .and_then(|s| s.chars().next())
        .unwrap_or(' ')
}

/// The columns `type, seqstart, seqincrement, seqmin, seqmax, seqcache, seqcycle` of a row of
/// `pg_sequence` (the type as `format_type` prints it).
pub fn sequence_options(r: &QueryResult, row: usize) -> Result<SequenceOptions, ClientError> {
    Ok(SequenceOptions {
        data_type: field(r, row, "type")?.to_string(),
        start: number(r, row, "seqstart")?,
        increment: number(r, row, "seqincrement")?,
        min: number(r, row, "seqmin")?,
        max: number(r, row, "seqmax")?,
        cache: number(r, row, "seqcache")?,
        cycle: flag(r, row, "seqcycle"),
    })
}

/// Reads a table; `None` when there is no relation of that name.
pub async fn read_table(
    conn: &mut Connection,
    name: &TableName,
) -> Result<Option<TableSchema>, ClientError> {
    let t = conn
        .query_params(TABLE_QUERY, &[Some(&name.schema), Some(&name.name)])
        .await?;
    if t.rows.is_empty() {
        return Ok(None);
    }
    let oid: u32 = number(&t, 0, "oid")?;
    let oid_text = oid.to_string();
    let major = conn.server_version().major();
    let c = conn
        .query_params(&columns_query(major), &[Some(&oid_text)])
        .await?;
    let mut columns = Vec::with_capacity(c.rows.len());
    let mut attnums = Vec::with_capacity(c.rows.len());
    for i in 0..c.rows.len() {
        attnums.push(number::<i32>(&c, i, "attnum")?);
        let generated = c.get(i, "generated").unwrap_or_default();
        columns.push(Column {
            attnum: number(&c, i, "attnum")?,
            type_mod: number(&c, i, "typmod")?,
            has_equality: flag(&c, i, "has_equality"),
            name: field(&c, i, "name")?.to_string(),
            type_name: field(&c, i, "type")?.to_string(),
            type_oid: number(&c, i, "typoid")?,
            not_null: flag(&c, i, "not_null"),
            default: c.get(i, "default_expr").map(str::to_string),
            identity: match c.get(i, "identity") {
                Some("a") => Identity::Always,
                Some("d") => Identity::ByDefault,
                _ => Identity::None,
            },
            generated: !generated.is_empty(),
            collation: c.get(i, "collation").map(str::to_string),
            is_float: flag(&c, i, "is_float"),
        });
    }
    // indkey is an int2vector: "1 3".
    let key: Vec<String> = field(&t, 0, "key_attnums")?
        .split_whitespace()
        .filter_map(|n| n.parse::<i32>().ok())
        .filter_map(|n| attnums.iter().position(|&a| a == n))
        .map(|i| columns[i].name.clone())
        .collect();
    let s = conn
        .query_params(SEQUENCES_QUERY, &[Some(&oid_text)])
        .await?;
    let mut sequences = Vec::with_capacity(s.rows.len());
    for i in 0..s.rows.len() {
        sequences.push(OwnedSequence {
            name: TableName::new(field(&s, i, "schema")?, field(&s, i, "name")?),
            column: field(&s, i, "column_name")?.to_string(),
            identity: flag(&s, i, "identity"),
            options: sequence_options(&s, i)?,
        });
    }
    let relkind = first_char(&t, 0, "relkind");
    let partitions = if relkind == 'p' {
        leaf_partitions(conn, &oid_text).await?
    } else {
        Vec::new()
    };
    // A partitioned table has no pages of its own: its partitions' say how big its copy is.
    let pages = number::<i64>(&t, 0, "pages").unwrap_or(0)
        + partitions.iter().map(|(_, pages)| pages).sum::<i64>();
    Ok(Some(TableSchema {
        name: name.clone(),
        oid,
        relkind,
        persistence: first_char(&t, 0, "persistence"),
        replica_identity: ReplicaIdentity::from_byte(first_char(&t, 0, "replident") as u8)
            .unwrap_or(ReplicaIdentity::Nothing),
        key,
        key_is_primary: flag(&t, 0, "key_is_primary"),
        columns,
        sequences,
        pages,
        can_read: flag(&t, 0, "can_select"),
        can_write: flag(&t, 0, "can_write"),
        owned: flag(&t, 0, "owned"),
        partitions: partitions.into_iter().map(|(p, _)| p).collect(),
    }))
}

/// The leaf partitions of a partitioned table at any depth (`pg_inherits`, walked as
/// `pg_partition_tree` would on 12+), with their pages.
async fn leaf_partitions(
    conn: &mut Connection,
    oid: &str,
) -> Result<Vec<(Partition, i64)>, ClientError> {
    let r = conn
        .query_params(
            "WITH RECURSIVE tree(oid) AS ( \
               SELECT $1::pg_catalog.oid \
               UNION ALL \
               SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
             SELECT n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS relkind, \
                    c.relpersistence::text AS persistence, c.relreplident::text AS replident, \
                    c.relpages::int8 AS pages \
               FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind <> 'p' ORDER BY 1, 2",
            &[Some(oid)],
        )
        .await?;
    let mut out = Vec::with_capacity(r.rows.len());
    for i in 0..r.rows.len() {
        out.push((
            Partition {
                name: TableName::new(field(&r, i, "schema")?, field(&r, i, "name")?),
                relkind: first_char(&r, i, "relkind"),
                persistence: first_char(&r, i, "persistence"),
                replica_identity: first_char(&r, i, "replident"),
            },
            number(&r, i, "pages").unwrap_or(0),
        ));
    }
    Ok(out)
}

/// The name of the table with this OID, if there is one.
pub async fn table_name_of(
    conn: &mut Connection,
    oid: u32,
) -> Result<Option<TableName>, ClientError> {
    let r = conn
        .query_params(
            "SELECT n.nspname::text AS schema, c.relname::text AS name FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = $1::pg_catalog.oid AND c.relkind IN ('r', 'p')",
            &[Some(&oid.to_string())],
        )
        .await?;
    Ok(r.get(0, "schema")
        .zip(r.get(0, "name"))
        .map(|(s, n)| TableName::new(s, n)))
}

/// The permanent tables of a schema (partitions included, partitioned parents not).
pub async fn tables_in_schema(
    conn: &mut Connection,
    schema: &str,
) -> Result<Vec<TableName>, ClientError> {
    let r = conn
        .query_params(
            "SELECT c.relname::text AS name FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relpersistence = 'p' \
              ORDER BY 1",
            &[Some(schema)],
        )
        .await?;
    Ok((0..r.rows.len())
        .filter_map(|i| r.get(i, "name").map(|n| TableName::new(schema, n)))
        .collect())
}

/// Whether a type name (as `format_type` prints it) means a type on this server.
pub async fn type_exists(conn: &mut Connection, type_name: &str) -> Result<bool, ClientError> {
    let r = conn
        .query_params(
            "SELECT pg_catalog.to_regtype($1) IS NOT NULL AS ok",
            &[Some(type_name)],
        )
        .await?;
    Ok(flag(&r, 0, "ok"))
}

/// Whether a schema exists, and whether the role may create objects in it (or, when it does
/// not exist, create it).
pub async fn schema_access(
    conn: &mut Connection,
    schema: &str,
) -> Result<(bool, bool), ClientError> {
    let r = conn
        .query_params(
            "SELECT n.oid IS NOT NULL AS present, \
                    CASE WHEN n.oid IS NOT NULL THEN pg_catalog.has_schema_privilege(n.oid, 'CREATE') \
                         ELSE pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') END AS can_create \
               FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1",
            &[Some(schema)],
        )
        .await?;
    Ok((flag(&r, 0, "present"), flag(&r, 0, "can_create")))
}

/// Whether a table has any row.
pub async fn has_rows(conn: &mut Connection, t: &TableSchema) -> Result<bool, ClientError> {
    let r = conn
        .simple_query(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.rows()))
        .await?;
    Ok(r.first().and_then(|r| r.get_idx(0, 0)) == Some("t"))
}
