//! `subset verify`: wait until the target has applied everything the source has written, then
//! compare each table's row count and content hash on both sides.
//!
//! The hash is walrelay's own and order-independent: every row is read as text with `COPY`
//! (the same settings on both sides: ISO dates, UTC, hex bytea, exact floats), its SHA-256 is
//! cut to 128 bits, and the values are added up (wrapping). Equal multisets of rows give equal
//! sums, whatever the physical order or the servers' majors. One text form differs between
//! majors: `float4`/`float8` print their shortest exact form from 12 on and 17 digits before (with
//! `extra_float_digits = 3`); those columns are normalized by parsing and printing again.
//!
//! Writes to the subset's tables must pause while verify reads them: under load the two sides
//! are read at different moments.

use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use walrelay_client::{ConnectParams, Connection};
use walrelay_protocol::Lsn;

use crate::catalog;
use crate::config::{source_sql, target_sql};
use crate::error::{Side, SubsetError};
use crate::schema::{SubsetName, TableName, TableSchema};
use crate::source;
use crate::state;

/// How often the target's progress is looked at while waiting.
const POLL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, Serialize)]
pub struct TableVerdict {
    pub table: TableName,
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_hash: String,
    pub target_hash: String,
}

impl TableVerdict {
    pub fn matches(&self) -> bool {
        self.source_rows == self.target_rows && self.source_hash == self.target_hash
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The source's position when verify started.
    pub source_lsn: Lsn,
    /// The target's applied position when the comparison started (at or past `source_lsn`).
    pub applied_lsn: Lsn,
    pub tables: Vec<TableVerdict>,
}

impl VerifyReport {
    pub fn all_match(&self) -> bool {
        self.tables.iter().all(TableVerdict::matches)
    }
}

/// An order-independent hash of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentHash {
    pub rows: u64,
    pub sum: u128,
}

impl ContentHash {
    pub fn add_row(&mut self, row: &[u8]) {
        let d = Sha256::digest(row);
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// How a column's text is normalized before hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    Keep,
    Float4,
    Float8,
}

/// A COPY text row with its float fields printed in one canonical form.
pub fn normalize_row(row: &[u8], columns: &[Normalize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.len());
    for (i, field) in row.split(|&b| b == b'\t').enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let canonical = match columns.get(i) {
            Some(Normalize::Float4) => std::str::from_utf8(field)
                .ok()
                .and_then(|s| s.parse::<f32>().ok())
                .filter(|f| f.is_finite())
                .map(|f| f.to_string()),
            Some(Normalize::Float8) => std::str::from_utf8(field)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|f| f.is_finite())
                .map(|f| f.to_string()),
            _ => None,
        };
        match canonical {
            Some(c) => out.extend_from_slice(c.as_bytes()),
            None => out.extend_from_slice(field),
        }
    }
    out
}

/// Hashes a table's rows, read with `COPY (SELECT cols FROM ONLY t) TO STDOUT` — without `ONLY`
/// for a partitioned table (`partitioned`), whose rows are its partitions'.
async fn hash_table(
    conn: &mut Connection,
    t: &TableSchema,
    columns: &[Normalize],
    partitioned: bool,
) -> Result<ContentHash, walrelay_client::ClientError> {
    conn.copy_out(&format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        t.column_names(),
        crate::schema::rows_of(&t.name, partitioned)
    ))
    .await?;
    let mut h = ContentHash::default();
    let normalize = columns.iter().any(|c| *c != Normalize::Keep);
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = conn.copy_out_next().await? {
        // PostgreSQL sends one row per message; rows are cut at newlines all the same (a newline
        // inside a value is escaped in the text format).
        let mut rest: &[u8] = &chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let line: &[u8] = if partial.is_empty() {
                &rest[..pos]
            } else {
                partial.extend_from_slice(&rest[..pos]);
                &partial
            };
            if normalize {
                h.add_row(&normalize_row(line, columns));
            } else {
                h.add_row(line);
            }
            partial.clear();
            rest = &rest[pos + 1..];
        }
        partial.extend_from_slice(rest);
    }
    Ok(h)
}

async fn verify_session(params: &ConnectParams, side: Side) -> Result<Connection, SubsetError> {
    let mut c = Connection::connect(params)
        .await
        .map_err(SubsetError::connect(side))?;
    c.batch_execute("SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET search_path = ''")
        .await
        .map_err(SubsetError::sql(side, "prepare the session"))?;
    Ok(c)
}

/// Waits (up to `wait`) until the target has applied the source's current position, then
/// compares every table of the subset.
pub async fn verify(
    source_params: &ConnectParams,
    target: &ConnectParams,
    name: &SubsetName,
    wait: Duration,
) -> Result<VerifyReport, SubsetError> {
    let mut src = verify_session(&source_sql(source_params, name), Side::Source).await?;
    let mut tgt = verify_session(&target_sql(target, name), Side::Target).await?;
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let unknown = || SubsetError::UnknownSubset {
        name: name.to_string(),
    };
    let wanted = source::current_lsn(&mut src)
        .await
        .map_err(SubsetError::sql(Side::Source, "read the WAL position"))?;
    let began = Instant::now();
    let (st, applied) = loop {
        let st = state::load(&mut tgt, name)
            .await
            .map_err(on_tgt("read walrelay's state"))?
            .ok_or_else(unknown)?;
        let applied = st.progress.as_ref().ok_or_else(unknown)?.applied_lsn;
        if applied >= wanted {
            break (st, applied);
        }
        if began.elapsed() >= wait {
            return Err(SubsetError::NotCaughtUp {
                applied,
                wanted,
                seconds: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    };
    let mut verdicts = Vec::with_capacity(st.tables.len());
    for ts in &st.tables {
        let t = catalog::read_table(&mut src, &ts.table)
            .await
            .map_err(SubsetError::sql(Side::Source, "read the subset's tables"))?
            .ok_or_else(|| {
                SubsetError::Usage(format!("table {} is gone from the source", ts.table))
            })?;
        let columns: Vec<Normalize> = t
            .replicated_columns()
            .map(|c| match (c.is_float, c.type_name.as_str()) {
                (true, "real") => Normalize::Float4,
                (true, _) => Normalize::Float8,
                _ => Normalize::Keep,
            })
            .collect();
        let target_partitioned = catalog::read_table(&mut tgt, &ts.table)
            .await
            .map_err(SubsetError::sql(Side::Target, "read the subset's tables"))?
            .is_some_and(|t| t.is_partitioned());
        let what = format!("read {}", ts.table);
        let (s, g) = tokio::try_join!(
            async {
                hash_table(&mut src, &t, &columns, t.is_partitioned())
                    .await
                    .map_err(SubsetError::sql(Side::Source, what.clone()))
            },
            async {
                hash_table(&mut tgt, &t, &columns, target_partitioned)
                    .await
                    .map_err(SubsetError::sql(Side::Target, what.clone()))
            }
        )?;
        verdicts.push(TableVerdict {
            table: ts.table.clone(),
            source_rows: s.rows,
            target_rows: g.rows,
            source_hash: s.hex(),
            target_hash: g.hex(),
        });
    }
    src.close().await;
    tgt.close().await;
    Ok(VerifyReport {
        source_lsn: wanted,
        applied_lsn: applied,
        tables: verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_order_independent_and_counts_duplicates() {
        let rows: [&[u8]; 3] = [b"1\ta", b"2\tb", b"1\ta"];
        let mut a = ContentHash::default();
        for r in rows {
            a.add_row(r);
        }
        let mut b = ContentHash::default();
        for r in rows.iter().rev() {
            b.add_row(r);
        }
        assert_eq!(a, b);
        let mut c = ContentHash::default();
        c.add_row(b"1\ta");
        c.add_row(b"2\tb");
        assert_ne!(a, c, "a missing duplicate changes the hash");
        c.add_row(b"2\tb");
        assert_eq!(a.rows, c.rows);
        assert_ne!(a.sum, c.sum);
    }

    #[test]
    fn floats_print_the_same_whatever_the_major() {
        use Normalize::*;
        let cols = [Keep, Float8, Float4, Float8];
        // PostgreSQL 11 with extra_float_digits = 3, and 12+.
        let old = normalize_row(b"x\t0.100000000000000006\t0.100000001\t\\N", &cols);
        let new = normalize_row(b"x\t0.1\t0.1\t\\N", &cols);
        assert_eq!(old, new);
        assert_eq!(new, b"x\t0.1\t0.1\t\\N");
        assert_eq!(
            normalize_row(b"Infinity\tNaN\t-Infinity\t1e+300", &cols),
            normalize_row(b"Infinity\tNaN\t-Infinity\t1e300", &cols)
        );
    }
}
