//! Sequences: pgoutput never sends them (no message type for them on 10–18), so walrelay copies
//! their positions itself — those owned by the subset's tables (`serial`, identity columns) and
//! those chosen with `--sequence` — when a table is copied, when a session starts, every
//! `--sequence-interval` while it streams, when it stops, and at `subset drop`.
//!
//! The target's sequence is only ever moved forward (backward for a descending one), to the
//! source's `last_value`: the last value the source handed out, or past it when sessions cache
//! values (`CACHE`). So once the source's writers have stopped and one of these copies ran
//! (`drop` does one), `nextval` on the target is beyond every value the source handed out.

use tracing::debug;
use walrelay_client::{ClientError, Connection};

use crate::catalog::sequence_options;
use crate::error::{Side, SubsetError};
use crate::schema::{quote_literal, SequenceOptions, SubsetName, TableName};

/// A sequence as `pg_sequence` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceDef {
    pub name: TableName,
    pub options: SequenceOptions,
    /// The role may read its value (SELECT or USAGE).
    pub can_read: bool,
}

/// Reads a sequence's definition; `None` when there is no sequence of that name.
pub async fn read_definition(
    conn: &mut Connection,
    name: &TableName,
) -> Result<Option<SequenceDef>, ClientError> {
    let r = conn
        .query_params(
            "SELECT pg_catalog.format_type(q.seqtypid, NULL) AS type, q.seqstart, q.seqincrement, \
                    q.seqmin, q.seqmax, q.seqcache, q.seqcycle, \
                    pg_catalog.has_sequence_privilege(c.oid, 'SELECT') \
                      OR pg_catalog.has_sequence_privilege(c.oid, 'USAGE') AS can_read \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_catalog.pg_sequence q ON q.seqrelid = c.oid \
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
            &[Some(&name.schema), Some(&name.name)],
        )
        .await?;
    if r.rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(SequenceDef {
        name: name.clone(),
        options: sequence_options(&r, 0)?,
        can_read: r.get(0, "can_read") == Some("t"),
    }))
}

/// A sequence whose position goes from the source to the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencePair {
    pub source: TableName,
    pub target: TableName,
    /// Chosen with `--sequence` (its row in `walrelay.subset_sequences` records each copy).
    pub chosen: bool,
}

/// The sequences owned by the columns of `table` (`pg_get_serial_sequence`), by column.
async fn owned(
    conn: &mut Connection,
    table: &TableName,
) -> Result<Vec<(String, TableName)>, ClientError> {
    let r = conn
        .query_params(
            "SELECT a.attname::text AS col, pg_catalog.pg_get_serial_sequence($1, a.attname::text) AS seq \
               FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                AND pg_catalog.pg_get_serial_sequence($1, a.attname::text) IS NOT NULL",
            &[Some(&table.quoted())],
        )
        .await?;
    Ok((0..r.rows.len())
        .filter_map(|i| {
            let seq = TableName::parse(r.get(i, "seq")?)?;
            Some((r.get(i, "col")?.to_string(), seq))
        })
        .collect())
}

/// Every sequence of the subset: the tables' own (matched by column on both sides) and the
/// chosen ones (same name on both sides).
pub async fn pairs(
    src: &mut Connection,
    tgt: &mut Connection,
    tables: &[TableName],
    chosen: &[TableName],
) -> Result<Vec<SequencePair>, SubsetError> {
    let mut out = Vec::new();
    for t in tables {
        let on_src = owned(src, t).await.map_err(SubsetError::sql(
            Side::Source,
            format!("read the sequences of {t}"),
        ))?;
        let on_tgt = owned(tgt, t).await.map_err(SubsetError::sql(
            Side::Target,
            format!("read the sequences of {t}"),
        ))?;
        for (col, source) in on_src {
            if let Some((_, target)) = on_tgt.iter().find(|(c, _)| *c == col) {
                out.push(SequencePair {
                    source,
                    target: target.clone(),
                    chosen: false,
                });
            }
        }
    }
    for s in chosen {
        out.push(SequencePair {
            source: s.clone(),
            target: s.clone(),
            chosen: true,
        });
    }
    Ok(out)
}

/// The source's position of a sequence (`None` before its first `nextval`).
async fn source_value(conn: &mut Connection, s: &TableName) -> Result<Option<i64>, ClientError> {
    let r = conn
        .query_params(
            "SELECT last_value::text AS v FROM pg_catalog.pg_sequences \
              WHERE schemaname = $1 AND sequencename = $2",
            &[Some(&s.schema), Some(&s.name)],
        )
        .await?;
    Ok(r.get(0, "v").and_then(|v| v.parse().ok()))
}

/// Moves the target's sequence to `value` if it is behind (in its own direction); whether it
/// moved.
async fn advance_target(
    conn: &mut Connection,
    s: &TableName,
    value: i64,
) -> Result<bool, ClientError> {
    let v = value.to_string();
    let r = conn
        .query_params(
            "SELECT pg_catalog.setval(pg_catalog.to_regclass($1), $2::bigint, true) AS v \
               FROM pg_catalog.pg_sequences ps \
              WHERE ps.schemaname = $3 AND ps.sequencename = $4 \
                AND (ps.last_value IS NULL \
                     OR CASE WHEN ps.increment_by > 0 THEN ps.last_value < $2::bigint \
                             ELSE ps.last_value > $2::bigint END)",
            &[Some(&s.quoted()), Some(&v), Some(&s.schema), Some(&s.name)],
        )
        .await?;
    Ok(!r.rows.is_empty())
}

/// Copies each source position to the target where the target is behind. Returns how many
/// sequences moved.
pub async fn advance(
    src: &mut Connection,
    tgt: &mut Connection,
    subset: &SubsetName,
    pairs: &[SequencePair],
) -> Result<usize, SubsetError> {
    let mut moved = 0;
    for p in pairs {
        let Some(value) = source_value(src, &p.source)
            .await
            .map_err(SubsetError::sql(
                Side::Source,
                format!("read sequence {}", p.source),
            ))?
        else {
            continue;
        };
        let on_tgt = SubsetError::sql(Side::Target, format!("advance sequence {}", p.target));
        if advance_target(tgt, &p.target, value)
            .await
            .map_err(on_tgt)?
        {
            moved += 1;
            debug!(sequence = %p.target, value, "sequence advanced");
        }
        if p.chosen {
            tgt.batch_execute(&format!(
                "UPDATE walrelay.subset_sequences SET last_value = {value}, synced_at = now() \
                  WHERE subset = {} AND schema_name = {} AND sequence_name = {}",
                quote_literal(subset.as_str()),
                quote_literal(&p.target.schema),
                quote_literal(&p.target.name)
            ))
            .await
            .map_err(SubsetError::sql(
                Side::Target,
                "record a sequence's position",
            ))?;
        }
    }
    Ok(moved)
}
