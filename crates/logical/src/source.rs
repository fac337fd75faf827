//! The source side's objects: what the server is (settings, free slots and senders, the role's
//! rights), the publication `walrelay_NAME`, and the logical slots — the permanent one the stream
//! reads, and temporary ones whose exported snapshot copies tables.
//!
//! Publication first, slot second: decoding resolves the publication in the catalog snapshot of
//! each change, so a slot whose start predates its publication fails on 10–17 (`LoadPublications`).

use walrelay_client::{ClientError, ConnectParams, Connection, QueryResult};
use walrelay_protocol::command::{self, SnapshotAction};
use walrelay_protocol::Lsn;

use crate::error::{Side, SubsetError};
use crate::schema::{quote_ident, TableName};

/// What preflight needs to know about a server (source or target).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerFacts {
    pub version_num: u32,
    pub version: String,
    pub in_recovery: bool,
    pub wal_level: String,
    pub user: String,
    pub database: String,
    pub superuser: bool,
    /// `rolreplication` (or superuser).
    pub can_replicate: bool,
    /// CREATE on the current database (new schemas, publications).
    pub can_create_in_database: bool,
    pub max_replication_slots: i64,
    pub used_replication_slots: i64,
    pub max_wal_senders: i64,
    pub used_wal_senders: i64,
    /// Which database of which running server this is: the postmaster's start time (µs since the
    /// epoch) and the database's OID. Two connections with the same identity reach the same
    /// database, whatever host name, port or socket each used.
    pub database_identity: (i64, u32),
}

impl ServerFacts {
    pub fn free_slots(&self) -> i64 {
        self.max_replication_slots - self.used_replication_slots
    }

    pub fn free_senders(&self) -> i64 {
        self.max_wal_senders - self.used_wal_senders
    }
}

fn flag(r: &QueryResult, col: &str) -> bool {
    r.get(0, col) == Some("t")
}

fn int(r: &QueryResult, col: &str) -> i64 {
    r.get(0, col).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The server's facts. WAL senders of `own_application_name` are not counted as used: after a
/// crash, walrelay's previous walsender may linger for a moment.
pub async fn facts(
    conn: &mut Connection,
    own_application_name: &str,
) -> Result<ServerFacts, ClientError> {
    let r = conn
        .query_params(
            "SELECT pg_catalog.current_setting('server_version_num') AS version_num,
                    pg_catalog.current_setting('server_version') AS version,
                    pg_catalog.pg_is_in_recovery() AS in_recovery,
                    pg_catalog.current_setting('wal_level') AS wal_level,
                    current_user::text AS usr, pg_catalog.current_database()::text AS db,
                    r.rolsuper AS superuser, r.rolreplication OR r.rolsuper AS can_replicate,
                    pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') AS can_create,
                    pg_catalog.current_setting('max_replication_slots') AS max_slots,
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots) AS used_slots,
                    pg_catalog.current_setting('max_wal_senders') AS max_senders,
                    (SELECT count(*) FROM pg_catalog.pg_stat_replication
                      WHERE application_name IS DISTINCT FROM $1) AS used_senders,
                    (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::int8 AS started_us,
                    (SELECT d.oid FROM pg_catalog.pg_database d
                      WHERE d.datname = pg_catalog.current_database()) AS db_oid
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[Some(own_application_name)],
        )
        .await?;
    if r.rows.is_empty() {
        return Err(ClientError::Unexpected(
            "the server did not describe the current role".into(),
        ));
    }
    Ok(ServerFacts {
        version_num: int(&r, "version_num") as u32,
        version: r.get(0, "version").unwrap_or_default().to_string(),
        in_recovery: flag(&r, "in_recovery"),
        wal_level: r.get(0, "wal_level").unwrap_or_default().to_string(),
        user: r.get(0, "usr").unwrap_or_default().to_string(),
        database: r.get(0, "db").unwrap_or_default().to_string(),
        superuser: flag(&r, "superuser"),
        can_replicate: flag(&r, "can_replicate"),
        can_create_in_database: flag(&r, "can_create"),
        max_replication_slots: int(&r, "max_slots"),
        used_replication_slots: int(&r, "used_slots"),
        max_wal_senders: int(&r, "max_senders"),
        used_wal_senders: int(&r, "used_senders"),
        database_identity: (int(&r, "started_us"), int(&r, "db_oid") as u32),
    })
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    /// `wal_status = 'lost'` (13+): the slot was invalidated.
    pub lost: bool,
    /// `invalidation_reason` (17+; `conflicting` on 16): why the slot was invalidated.
    pub invalidation_reason: Option<String>,
    /// `failover` (17+): synced to standbys that run `sync_replication_slots`.
    pub failover: Option<bool>,
}

impl SlotInfo {
    /// Why the slot cannot stream any more, if it cannot: "invalidated (…)".
    pub fn invalidation(&self) -> Option<String> {
        let why = match self.invalidation_reason.as_deref() {
            Some("wal_removed") => "the source removed WAL it still needed: max_slot_wal_keep_size",
            Some("rows_removed") => "rows it needed were vacuumed away (a standby's conflict)",
            Some("wal_level_insufficient") => "wal_level was lowered below logical",
            Some("idle_timeout") => "it was idle longer than idle_replication_slot_timeout",
            Some(other) => other,
            None if self.lost => "the source removed WAL it still needed: max_slot_wal_keep_size",
            None => return None,
        };
        Some(format!("invalidated ({why})"))
    }
}

pub async fn slot(conn: &mut Connection, name: &str) -> Result<Option<SlotInfo>, ClientError> {
    let major = conn.server_version().major();
    let lost = if major >= 13 {
        "wal_status = 'lost'"
    } else {
        "false"
    };
    let reason = match major {
        17.. => "invalidation_reason::text",
        16 => "CASE WHEN conflicting THEN 'rows_removed' END",
        _ => "NULL::text",
    };
    let failover = if major >= 17 {
        "failover"
    } else {
        "NULL::bool"
    };
    let r = conn
        .query_params(
            &format!(
                "SELECT plugin::text AS plugin, database::text AS database, active, \
                        confirmed_flush_lsn::text AS confirmed_flush, {lost} AS lost, \
                        {reason} AS reason, {failover} AS failover \
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1"
            ),
            &[Some(name)],
        )
        .await?;
    if r.rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(SlotInfo {
        plugin: r.get(0, "plugin").map(str::to_string),
        database: r.get(0, "database").map(str::to_string),
        active: flag(&r, "active"),
        confirmed_flush: r.get(0, "confirmed_flush").and_then(|v| v.parse().ok()),
        lost: flag(&r, "lost"),
        invalidation_reason: r.get(0, "reason").map(str::to_string),
        failover: r.get(0, "failover").map(|v| v == "t"),
    }))
}

/// A publication: whether it is `FOR ALL TABLES`, and its tables (names, and OIDs in the same
/// order: a table renamed since is still the same table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicationInfo {
    pub all_tables: bool,
    /// `publish_via_partition_root` (13+): a partition's changes published as its root's.
    pub via_root: bool,
    pub tables: Vec<TableName>,
    pub table_oids: Vec<u32>,
}

pub async fn publication(
    conn: &mut Connection,
    name: &str,
) -> Result<Option<PublicationInfo>, ClientError> {
    let via_root = if conn.server_version().major() >= 13 {
        "pubviaroot"
    } else {
        "false"
    };
    let p = conn
        .query_params(
            &format!(
                "SELECT puballtables, {via_root} AS via_root FROM pg_catalog.pg_publication WHERE pubname = $1"
            ),
            &[Some(name)],
        )
        .await?;
    if p.rows.is_empty() {
        return Ok(None);
    }
    let t = conn
        .query_params(
            "SELECT n.nspname::text AS schema, c.relname::text AS name, c.oid::int8 AS oid \
               FROM pg_catalog.pg_publication_rel pr \
               JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
               JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE p.pubname = $1 ORDER BY 1, 2",
            &[Some(name)],
        )
        .await?;
    Ok(Some(PublicationInfo {
        all_tables: flag(&p, "puballtables"),
        via_root: flag(&p, "via_root"),
        tables: (0..t.rows.len())
            .map(|i| {
                TableName::new(
                    t.get(i, "schema").unwrap_or_default(),
                    t.get(i, "name").unwrap_or_default(),
                )
            })
            .collect(),
        table_oids: (0..t.rows.len())
            .filter_map(|i| t.get(i, "oid").and_then(|v| v.parse().ok()))
            .collect(),
    }))
}

fn only_list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(|t| format!("ONLY {}", t.quoted()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the publication with its tables, or brings an existing one to exactly `tables`.
/// `via_root`: a partitioned table is among them, whose partitions' changes must come as its own
/// (`publish_via_partition_root`, set before the table is added).
pub async fn ensure_publication(
    conn: &mut Connection,
    name: &str,
    tables: &[TableName],
    via_root: bool,
    existing: Option<&PublicationInfo>,
) -> Result<(), ClientError> {
    let q = quote_ident(name);
    let with = if via_root {
        " WITH (publish_via_partition_root = true)"
    } else {
        ""
    };
    match existing {
        None => {
            let sql = if tables.is_empty() {
                format!("CREATE PUBLICATION {q}{with}")
            } else {
                format!(
                    "CREATE PUBLICATION {q} FOR TABLE {}{with}",
                    only_list(tables)
                )
            };
            conn.batch_execute(&sql).await
        }
        Some(p) => {
            if via_root && !p.via_root {
                conn.batch_execute(&format!(
                    "ALTER PUBLICATION {q} SET (publish_via_partition_root = true)"
                ))
                .await?;
            }
            let add: Vec<TableName> = tables
                .iter()
                .filter(|t| !p.tables.contains(t))
                .cloned()
                .collect();
            let drop: Vec<TableName> = p
                .tables
                .iter()
                .filter(|t| !tables.contains(t))
                .cloned()
                .collect();
            if !add.is_empty() {
                conn.batch_execute(&format!(
                    "ALTER PUBLICATION {q} ADD TABLE {}",
                    only_list(&add)
                ))
                .await?;
            }
            if !drop.is_empty() {
                conn.batch_execute(&format!(
                    "ALTER PUBLICATION {q} DROP TABLE {}",
                    only_list(&drop)
                ))
                .await?;
            }
            Ok(())
        }
    }
}

pub async fn drop_publication(conn: &mut Connection, name: &str) -> Result<(), ClientError> {
    conn.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
}

/// Drops a slot if it exists. An active slot is an error (55006): something streams from it.
pub async fn drop_slot(conn: &mut Connection, name: &str) -> Result<bool, ClientError> {
    let r = conn
        .query_params(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
              WHERE slot_name = $1",
            &[Some(name)],
        )
        .await?;
    Ok(!r.rows.is_empty())
}

/// A `replication=database` session on the source, and the source's system identifier.
pub async fn replication_session(
    params: &ConnectParams,
) -> Result<(Connection, String), SubsetError> {
    let mut repl = Connection::connect(params)
        .await
        .map_err(SubsetError::connect(Side::Source))?;
    let ident = repl
        .identify_system()
        .await
        .map_err(SubsetError::sql(Side::Source, "IDENTIFY_SYSTEM"))?;
    Ok((repl, ident.system_identifier.to_string()))
}

/// A slot just created with an exported snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Transactions committing at or after it are streamed; the snapshot holds the others.
    pub consistent_point: Lsn,
    /// Importable with `SET TRANSACTION SNAPSHOT` until the next command on the replication
    /// connection that created it.
    pub snapshot: String,
}

/// `CREATE_REPLICATION_SLOT … LOGICAL pgoutput` with an exported snapshot, on a
/// `replication=database` connection.
pub async fn create_slot(
    repl: &mut Connection,
    name: &str,
    temporary: bool,
    failover: bool,
) -> Result<CreatedSlot, ClientError> {
    let sql = command::create_logical_slot_with(
        repl.server_version(),
        name,
        "pgoutput",
        temporary,
        SnapshotAction::Export,
        failover,
    )
    .map_err(|e| ClientError::Config(e.to_string()))?;
    let r = repl.simple_query(&sql).await?;
    let row = r
        .first()
        .filter(|r| r.rows.len() == 1)
        .ok_or_else(|| ClientError::Unexpected("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let consistent_point = row
        .get(0, "consistent_point")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ClientError::Unexpected("CREATE_REPLICATION_SLOT returned no consistent point".into())
        })?;
    let snapshot = row
        .get(0, "snapshot_name")
        .ok_or_else(|| {
            ClientError::Unexpected("CREATE_REPLICATION_SLOT exported no snapshot".into())
        })?
        .to_string();
    Ok(CreatedSlot {
        consistent_point,
        snapshot,
    })
}

/// A transaction that keeps a logical slot from being created: the slot's start must be a point
/// that no running transaction spans, so `CREATE_REPLICATION_SLOT` waits for every transaction
/// holding an xid when it began — in any database, prepared ones included (snapbuild.c).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTransaction {
    /// `pid 4242 (alice@shop, idle in transaction)` or `prepared transaction 'gid' (alice@shop)`.
    pub who: String,
    /// Seconds since it began; unknown when the role may not see other roles' sessions.
    pub open_secs: Option<i64>,
}

impl std::fmt::Display for OpenTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.open_secs {
            Some(s) => write!(f, "{}, open {s} s", self.who),
            None => f.write_str(&self.who),
        }
    }
}

/// The source's transactions that hold an xid (oldest first, at most `limit`), which a slot being
/// created waits for.
pub async fn open_transactions(
    conn: &mut Connection,
    limit: u32,
) -> Result<Vec<OpenTransaction>, ClientError> {
    let r = conn
        .query_params(
            &format!(
                "SELECT who, open_secs FROM (
                   SELECT 'pid ' || a.pid || ' (' || coalesce(a.usename::text, '?') || '@'
                          || coalesce(a.datname::text, '?') || ', '
                          || coalesce(a.state, 'state hidden') || ')' AS who,
                          extract(epoch FROM pg_catalog.now() - a.xact_start)::int8 AS open_secs
                     FROM pg_catalog.pg_stat_activity a
                    WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_catalog.pg_backend_pid()
                   UNION ALL
                   SELECT 'prepared transaction ' || pg_catalog.quote_literal(p.gid) || ' ('
                          || p.owner::text || '@' || p.database::text || ')',
                          extract(epoch FROM pg_catalog.now() - p.prepared)::int8
                     FROM pg_catalog.pg_prepared_xacts p) t
                 ORDER BY open_secs DESC NULLS LAST LIMIT {limit}"
            ),
            &[],
        )
        .await?;
    Ok((0..r.rows.len())
        .map(|i| OpenTransaction {
            who: r.get(i, "who").unwrap_or_default().to_string(),
            open_secs: r.get(i, "open_secs").and_then(|v| v.parse().ok()),
        })
        .collect())
}

/// The source's current WAL position.
pub async fn current_lsn(conn: &mut Connection) -> Result<Lsn, ClientError> {
    let r = conn
        .query_params("SELECT pg_catalog.pg_current_wal_lsn()::text AS lsn", &[])
        .await?;
    r.get(0, "lsn")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Unexpected("pg_current_wal_lsn() returned no LSN".into()))
}

/// Makes the subset's slot a failover slot (PostgreSQL 17+) if it is not one yet, so that
/// standbys with `sync_replication_slots = on` keep a copy that a promotion makes usable.
pub async fn ensure_failover(
    src: &mut Connection,
    repl: &mut Connection,
    name: &str,
) -> Result<(), SubsetError> {
    let info = slot(src, name)
        .await
        .map_err(SubsetError::sql(Side::Source, "read the replication slot"))?;
    if info.and_then(|s| s.failover) == Some(false) {
        let sql = command::alter_slot_failover(repl.server_version(), name, true)
            .map_err(|e| SubsetError::Usage(format!("--failover: {e}")))?;
        repl.simple_query(&sql).await.map_err(SubsetError::sql(
            Side::Source,
            "make the slot a failover slot",
        ))?;
        tracing::info!(
            slot = name,
            "slot made a failover slot (synced to standbys that run sync_replication_slots)"
        );
    }
    Ok(())
}
