//! Preflight and setup of `subset run`.
//!
//! Preflight only reads. It checks both servers and every table, collects **all** problems (each
//! one line: the cause and the fix) and stops before anything is created if there is one: a
//! table without a key never reaches the publication, so no write on the source can start
//! failing because walrelay published it (`CheckCmdReplicaIdentity` refuses UPDATE and DELETE on
//! a published table without a replica identity).
//!
//! Setup then makes the servers match the request, idempotently: on the target, in one
//! transaction, the `walrelay` state tables, missing schemas and tables, and a state row per table
//! (`copying` until its copy commits); on the source, the publication with exactly the requested
//! tables (created, or altered to add and drop).

use std::collections::BTreeSet;

use tracing::{info, warn};
use walrelay_client::{Connection, ErrorClass};
use walrelay_protocol::ServerVersion;

use crate::catalog;
use crate::config::OnConflict;
use crate::config::RunConfig;
use crate::ddl;
use crate::error::{Problem, Side, SubsetError};
use crate::schema::{quote_ident, quote_literal, ReplicaIdentity, TableName, TableSchema};
use crate::sequences;
use crate::source::{self, PublicationInfo, ServerFacts, SlotInfo};
use crate::state::{
    self, SubsetState, TableState, CREATE_STATE_TABLES, MIGRATE_STATE, STATE_FORMAT,
};

/// What walrelay will do with a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableAction {
    /// Create it on the target, then copy it.
    Create,
    /// Copy into the (empty) table that exists on the target.
    CopyIntoExisting,
    /// Copy again: a copy was started and did not finish.
    Recopy,
    /// Copy again from a fresh snapshot, as asked (`--resync`, `--resync-all`).
    Resync,
    /// Copied already: stream only.
    Stream,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TablePlan {
    pub table: TableName,
    pub action: TableAction,
    /// The source's estimate (`pg_class.relpages` × 8 kB).
    pub size_bytes: i64,
}

/// Preflight's findings: the servers, what happens to each table, and remarks.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub source: ServerFacts,
    pub target: ServerFacts,
    pub tables: Vec<TablePlan>,
    /// Tables of the subset that are no longer requested: dropped from the publication (the target
    /// tables stay).
    pub removed: Vec<TableName>,
    pub notes: Vec<String>,
}

pub(crate) struct Planned {
    pub source: TableSchema,
    pub target: Option<TableSchema>,
    ddl: Vec<String>,
    in_state: bool,
    /// Copy it again (`--resync`): its state goes back to `copying` at setup.
    resync: bool,
    /// The target table is dropped and created again at setup (a resync of a table walrelay
    /// created, whose source columns changed).
    recreate: bool,
    /// `REPLICA IDENTITY FULL` is set on the source at setup.
    set_full_identity: bool,
}

/// A sequence chosen with `--sequence`, as preflight found it.
pub(crate) struct PlannedSequence {
    pub name: TableName,
    /// The statement that creates it on the target, when it is missing there.
    create: Option<String>,
}

pub(crate) struct Prepared {
    pub report: CheckReport,
    pub tables: Vec<Planned>,
    publication: Option<PublicationInfo>,
    pub slot: Option<SlotInfo>,
    state_tables: bool,
    /// The state tables are of an older layout ([`state::MIGRATE_STATE`] runs at setup).
    state_migrate: bool,
    walrelay_schema: bool,
    pub sequences: Vec<PlannedSequence>,
    /// Schemas of new tables that the target lacks.
    missing_schemas: BTreeSet<String>,
}

fn problem(side: Side, cause: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem::new(side, cause, fix)
}

/// What both servers must be: PostgreSQL 10 or later, and a primary.
fn check_server(side: Side, f: &ServerFacts, where_to: &str, problems: &mut Vec<Problem>) {
    if f.version_num < 100_000 {
        problems.push(problem(
            side,
            format!("the {side} runs PostgreSQL {}", f.version),
            "walrelay subset needs PostgreSQL 10 or later on both sides (pgoutput)",
        ));
    }
    if f.in_recovery {
        problems.push(problem(
            side,
            format!("the {side} is a standby (read-only)"),
            format!("point {where_to} at the primary"),
        ));
    }
}

/// The source's checks that do not depend on tables.
fn check_source(f: &ServerFacts, problems: &mut Vec<Problem>) {
    check_server(Side::Source, f, "-d", problems);
    if f.wal_level != "logical" {
        problems.push(problem(
            Side::Source,
            format!("wal_level is {} on the source, and logical decoding needs logical", f.wal_level),
            "set wal_level = logical on the source (ALTER SYSTEM SET wal_level = logical) and restart it",
        ));
    }
    if !f.can_replicate {
        problems.push(problem(
            Side::Source,
            format!("role {} may not start replication on the source", f.user),
            format!(
                "ALTER ROLE {} REPLICATION on the source, or connect as a role that has it",
                quote_ident(&f.user)
            ),
        ));
    }
}

/// The target must not be the source database itself: a plain slip (a `--target` without
/// `dbname`, or naming the source's host another way) that would otherwise make walrelay truncate
/// the tables it is reading from and then apply every change to the table it came from. Another
/// database of the same server is fine.
fn check_not_the_source(sf: &ServerFacts, tf: &ServerFacts, problems: &mut Vec<Problem>) {
    if sf.database_identity == tf.database_identity {
        problems.push(problem(
            Side::Target,
            format!(
                "--target reaches the source database itself (database {} of the same running server)",
                sf.database
            ),
            "point --target at another database (dbname=…) or another server",
        ));
    }
}

/// What REPLICA IDENTITY FULL costs, said wherever walrelay sets or accepts it.
const FULL_IDENTITY_COST: &str = "every UPDATE and DELETE of it then writes the whole old row into the source's WAL, and walrelay finds each changed row on the target by comparing every column (a scan of the table unless an index covers the columns compared; types without equality, such as json, compared by their text)";

/// Why a source table cannot be in a subset, if it cannot. `full_ok`: the table may go without a
/// key because it has (or is given, `--replica-identity-full`) REPLICA IDENTITY FULL.
fn check_source_table(
    t: &TableSchema,
    f: &ServerFacts,
    published: bool,
    full_ok: bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let name = &t.name;
    match t.relkind {
        'r' => {}
        'p' => out.extend(check_partitioned(t, f)),
        k => out.push(problem(
            Side::Source,
            format!("{name} is not a table (relkind '{k}')"),
            "name tables only: views, sequences and foreign tables are not replicated",
        )),
    }
    if t.columns.is_empty() {
        out.push(problem(
            Side::Source,
            format!("{name} has no columns: there is nothing of it to copy or replicate"),
            "leave it out of the subset, or add its columns on the source first",
        ));
    }
    if t.persistence != 'p' {
        out.push(problem(
            Side::Source,
            format!("{name} is unlogged or temporary: PostgreSQL does not replicate it"),
            format!(
                "ALTER TABLE {} SET LOGGED on the source, or leave it out",
                name.quoted()
            ),
        ));
    }
    // A partitioned table's own check names what it needs instead.
    if !t.has_usable_key() && !full_ok && !t.is_partitioned() {
        out.push(problem(
            Side::Source,
            format!("{name} has no primary key or replica identity index, so its updated and deleted rows cannot be found on the target"),
            format!(
                "give it one on the source (ALTER TABLE {q} ADD PRIMARY KEY (…), or ALTER TABLE {q} REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>), or run with --replica-identity-full {name} (or --replica-identity full for every such table: walrelay sets REPLICA IDENTITY FULL on it; {FULL_IDENTITY_COST}), or leave it out",
                q = name.quoted()
            ),
        ));
    }
    if !t.can_read {
        out.push(problem(
            Side::Source,
            format!("role {} may not read {name} on the source", f.user),
            format!(
                "GRANT SELECT ON {} TO {}",
                name.quoted(),
                quote_ident(&f.user)
            ),
        ));
    }
    if !published && !t.owned {
        out.push(problem(
            Side::Source,
            format!("role {} does not own {name}, and only its owner (or a superuser) may add it to a publication", f.user),
            "run as the table's owner, or add it to the publication yourself as its owner",
        ));
    }
    out
}

/// A partitioned table is copied whole into one target table, its changes published as its own
/// (`publish_via_partition_root`, 13+) whichever partition they touch: it needs a key of its own
/// that every partition keeps as its replica identity, and partitions PostgreSQL replicates.
fn check_partitioned(t: &TableSchema, f: &ServerFacts) -> Vec<Problem> {
    let name = &t.name;
    let q = name.quoted();
    if f.version_num < 130_000 {
        return vec![problem(
            Side::Source,
            format!("{name} is a partitioned table: copying one whole needs publish_via_partition_root, which PostgreSQL {} does not have (13 and later)", f.version),
            "list its partitions with -t instead (each is copied into a table of its own)",
        )];
    }
    let mut out = Vec::new();
    if !t.has_usable_key() {
        out.push(problem(
            Side::Source,
            format!("partitioned table {name} has no primary key, so its updated and deleted rows cannot be found on the target (REPLICA IDENTITY FULL is not taken for a partitioned table)"),
            format!("give it one on the source (ALTER TABLE {q} ADD PRIMARY KEY (…), its partition key columns among them), or list its partitions with -t instead"),
        ));
    }
    for p in &t.partitions {
        let pq = p.name.quoted();
        if p.relkind == 'f' {
            out.push(problem(
                Side::Source,
                format!("partition {} of {name} is a foreign table: its rows are not in the source's WAL and cannot be replicated", p.name),
                format!("detach it (ALTER TABLE {q} DETACH PARTITION {pq}), or list the other partitions with -t instead"),
            ));
        } else if p.persistence != 'p' {
            out.push(problem(
                Side::Source,
                format!(
                    "partition {} of {name} is unlogged: PostgreSQL does not replicate its rows",
                    p.name
                ),
                format!("ALTER TABLE {pq} SET LOGGED on the source"),
            ));
        } else if p.replica_identity != 'd' {
            out.push(problem(
                Side::Source,
                format!("partition {} of {name} has a replica identity of its own (not the default): its changes would not carry {name}'s key", p.name),
                format!("ALTER TABLE {pq} REPLICA IDENTITY DEFAULT on the source"),
            ));
        }
    }
    out
}

/// Tables listed together with a partitioned table that holds them: with the parent copied
/// whole, the source publishes their changes as the parent's, and they would get none.
fn check_partitions_listed_twice(sources: &[&TableSchema], problems: &mut Vec<Problem>) {
    for parent in sources.iter().filter(|t| t.is_partitioned()) {
        for p in &parent.partitions {
            if sources.iter().any(|t| t.name == p.name) {
                problems.push(
                    problem(
                        Side::Source,
                        format!(
                            "{} is a partition of {}, which the subset copies whole",
                            p.name, parent.name
                        ),
                        format!(
                            "leave out -t {} (its rows are copied with {})",
                            p.name, parent.name
                        ),
                    )
                    .with_class(ErrorClass::Usage),
                );
            }
        }
    }
}

/// The slot must still hold the subset's stream (unless it is being started again), and
/// `--failover` needs logical failover slots (PostgreSQL 17+).
fn check_slot_health(
    cfg: &RunConfig,
    sf: &ServerFacts,
    slot: Option<&SlotInfo>,
    started: bool,
    standby_slots: Option<&str>,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) {
    let name = cfg.name.slot();
    if started && !cfg.resync_all {
        let why = match slot {
            None => Some("missing".to_string()),
            Some(s) => s.invalidation(),
        };
        if let Some(why) = why {
            problems.push(problem(
                Side::Source,
                format!("replication slot {name} of the subset is {why} on the source: the changes the target still needs are gone from it"),
                crate::error::SLOT_LOST_FIX,
            ));
        }
    }
    if cfg.failover {
        if sf.version_num < 170_000 {
            problems.push(problem(
                Side::Source,
                format!("--failover needs logical failover slots, which PostgreSQL {} does not have (17 and later)", sf.version),
                "run without --failover; after a promotion of a standby of this source the subset is then copied again (--resync-all)",
            ));
        } else if standby_slots.is_none_or(str::is_empty) {
            notes.push(format!(
                "--failover: synchronized_standby_slots is empty on the source, so walrelay may apply changes a standby never received; after its promotion the target would hold them and the new primary not: list the standbys' physical slots in synchronized_standby_slots (slot {name} is synced to standbys with sync_replication_slots = on)"
            ));
        }
    }
}

/// The subset's slot must be this target's. A slot this target never ran from is another
/// target's (two targets given one `--name`, or a target wiped and started over): a first run
/// drops a leftover slot, which would cut the other target's stream, and that target, resuming
/// from a new slot, would silently miss every change in between. And a slot that confirmed more
/// than this target's progress row says it applied has let changes go that this target never
/// got (a target restored from a backup or failed over to a standby that lagged, or another
/// target sharing the name): the source will not send them again, so streaming on would hide
/// the loss.
fn check_slot_belongs_here(
    cfg: &RunConfig,
    slot: Option<&SlotInfo>,
    state: Option<&SubsetState>,
    problems: &mut Vec<Problem>,
) {
    let Some(slot) = slot else { return };
    let name = cfg.name.slot();
    let progress = state.and_then(|st| st.progress.as_ref());
    let ran_here = state.is_some_and(|st| progress.is_some() || !st.tables.is_empty());
    if !ran_here {
        problems.push(problem(
            Side::Source,
            format!("replication slot {name} exists on the source, but this target has never run subset {}: another target streams from it (or did, before its state was removed); a first run here would drop it and cut that target's changes", cfg.name.as_str()),
            format!("give this target another --name; if nothing uses the slot any more, drop it on the source (SELECT pg_drop_replication_slot('{name}')) and run again"),
        ));
        return;
    }
    let (Some(p), Some(confirmed)) = (progress, slot.confirmed_flush) else {
        return;
    };
    if cfg.resync_all || slot.invalidation().is_some() || confirmed <= p.applied_lsn {
        return;
    }
    problems.push(problem(
        Side::Target,
        format!("the source's slot {name} has confirmed changes up to {confirmed}, but this target applied only up to {} (its walrelay.subset_progress row): the changes in between were confirmed by something other than this target — it was restored from a backup or failed over to a standby that had not received them, or another target runs subset {} — and the source will not send them again", p.applied_lsn, cfg.name.as_str()),
        crate::error::SLOT_LOST_FIX,
    ));
}

/// What the command line asks of tables must concern tables of the run.
fn check_request(
    cfg: &RunConfig,
    names: &[TableName],
    state: Option<&SubsetState>,
    problems: &mut Vec<Problem>,
) {
    let usage =
        |cause: String, fix: &str| problem(Side::Source, cause, fix).with_class(ErrorClass::Usage);
    for t in &cfg.resync {
        if !names.contains(t) || state.is_none_or(|s| s.table(t).is_none()) {
            problems.push(usage(
                format!("--resync {t}: it is not a table of the subset"),
                "name a table the subset has (`walrelay subset status` lists them); a new table is added with -t",
            ));
        }
    }
    for t in &cfg.replica_identity_full {
        if !names.contains(t) {
            problems.push(usage(
                format!("--replica-identity-full {t}: the run does not copy it"),
                "list it with -t as well",
            ));
        }
    }
    if let (Some(skip), Some(p)) = (cfg.skip_lsn, state.and_then(|s| s.progress.as_ref())) {
        if skip < p.applied_lsn {
            problems.push(usage(
                format!("--skip-lsn {skip}: the subset has applied the source's changes up to {}, past it", p.applied_lsn),
                "give the commit LSN the stop named (nothing needs skipping when the subset is past it)",
            ));
        }
    }
}

/// Every type of a table to be created must exist on the target.
async fn check_types_exist(
    tgt: &mut Connection,
    s: &TableSchema,
    tf: &ServerFacts,
    problems: &mut Vec<Problem>,
) -> Result<(), SubsetError> {
    let mut seen_types = BTreeSet::new();
    for (ty, col) in s
        .columns
        .iter()
        .map(|c| (c.type_name.as_str(), c.name.as_str()))
        .filter(|(ty, _)| seen_types.insert(*ty))
    {
        if !catalog::type_exists(tgt, ty)
            .await
            .map_err(SubsetError::sql(Side::Target, "look up types"))?
        {
            problems.push(problem(
                Side::Target,
                format!(
                    "type {ty} of column {col} of {} does not exist on the target (PostgreSQL {})",
                    s.name, tf.version
                ),
                "create it on the target first (CREATE TYPE, CREATE EXTENSION), or leave the table out",
            ));
        }
    }
    Ok(())
}

/// The role must be able to create objects in `schema` on the target, or the schema itself.
async fn check_schema_access(
    tgt: &mut Connection,
    schema: &str,
    tf: &ServerFacts,
    missing_schemas: &mut BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Result<(), SubsetError> {
    let (present, can_create) = catalog::schema_access(tgt, schema)
        .await
        .map_err(SubsetError::sql(Side::Target, "look up schemas"))?;
    if !can_create {
        problems.push(problem(
            Side::Target,
            if present {
                format!(
                    "role {} may not create objects in schema {schema} on the target",
                    tf.user
                )
            } else {
                format!(
                    "schema {schema} does not exist on the target and role {} may not create it",
                    tf.user
                )
            },
            if present {
                format!(
                    "GRANT CREATE ON SCHEMA {} TO {} on the target",
                    quote_ident(schema),
                    quote_ident(&tf.user)
                )
            } else {
                format!(
                    "CREATE SCHEMA {} on the target, or GRANT CREATE ON DATABASE {} TO {}",
                    quote_ident(schema),
                    quote_ident(&tf.database),
                    quote_ident(&tf.user)
                )
            },
        ));
    }
    if !present {
        missing_schemas.insert(schema.to_string());
    }
    Ok(())
}

/// The sequences chosen with `--sequence` (with no table named: the ones the subset has): each
/// must exist on the source and be readable; a missing one is created on the target.
async fn plan_sequences(
    cfg: &RunConfig,
    state: Option<&SubsetState>,
    src: &mut Connection,
    tgt: &mut Connection,
    tf: &ServerFacts,
    missing_schemas: &mut BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Result<Vec<PlannedSequence>, SubsetError> {
    let named = !cfg.tables.is_empty() || !cfg.schemas.is_empty() || !cfg.sequences.is_empty();
    let names = if named {
        cfg.sequences.clone()
    } else {
        state.map(|s| s.sequences.clone()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for name in names {
        let Some(def) = sequences::read_definition(src, &name)
            .await
            .map_err(SubsetError::sql(
                Side::Source,
                format!("read sequence {name}"),
            ))?
        else {
            problems.push(problem(
                Side::Source,
                format!("sequence {name} does not exist on the source"),
                "check the name (--sequence SCHEMA.SEQUENCE)",
            ));
            continue;
        };
        if !def.can_read {
            problems.push(problem(
                Side::Source,
                format!("role may not read sequence {name} on the source"),
                format!(
                    "GRANT SELECT ON SEQUENCE {} TO the role walrelay connects as",
                    name.quoted()
                ),
            ));
        }
        let on_target = sequences::read_definition(tgt, &name)
            .await
            .map_err(SubsetError::sql(
                Side::Target,
                format!("read sequence {name}"),
            ))?;
        let create = match on_target {
            Some(_) => None,
            None => {
                if !missing_schemas.contains(&name.schema) {
                    check_schema_access(tgt, &name.schema, tf, missing_schemas, problems).await?;
                }
                Some(ddl::create_sequence(&def.name, &def.options))
            }
        };
        out.push(PlannedSequence { name, create });
    }
    Ok(out)
}

/// The tables the run is about: `-t` and `--schema`, else those the target's state lists.
async fn desired_tables(
    cfg: &RunConfig,
    src: &mut Connection,
    state: Option<&SubsetState>,
) -> Result<Vec<TableName>, SubsetError> {
    let mut names = cfg.tables.clone();
    for schema in &cfg.schemas {
        let found = catalog::tables_in_schema(src, schema)
            .await
            .map_err(SubsetError::sql(
                Side::Source,
                format!("list the tables of schema {schema}"),
            ))?;
        if found.is_empty() {
            return Err(SubsetError::Preflight(vec![problem(
                Side::Source,
                format!("schema {schema} has no tables on the source"),
                "check the schema name (--schema is case-sensitive once quoted)",
            )
            .with_class(ErrorClass::Usage)]));
        }
        names.extend(found);
    }
    if names.is_empty() {
        if let Some(s) = state {
            names = s.tables.iter().map(|t| t.table.clone()).collect();
        }
    }
    if names.is_empty() {
        return Err(SubsetError::Usage(
            "no tables: name them with -t SCHEMA.TABLE (repeatable) or --schema SCHEMA".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

/// Checks everything and plans the run; creates nothing.
pub(crate) async fn preflight(
    cfg: &RunConfig,
    src: &mut Connection,
    tgt: &mut Connection,
) -> Result<Prepared, SubsetError> {
    let read_src = |what: &str| SubsetError::sql(Side::Source, what.to_string());
    let read_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let sf = source::facts(src, &cfg.name.slot())
        .await
        .map_err(read_src("read the source's settings"))?;
    let tf = source::facts(tgt, &cfg.name.slot())
        .await
        .map_err(read_tgt("read the target's settings"))?;
    check_source(&sf, &mut problems);
    check_server(Side::Target, &tf, "--target", &mut problems);
    check_not_the_source(&sf, &tf, &mut problems);
    // Whether the copy and apply sessions will write as a replica (this session's DDL does not).
    if crate::target_session::replica_role(tgt)
        .await
        .map_err(read_tgt("set session_replication_role"))?
    {
        tgt.batch_execute("RESET session_replication_role")
            .await
            .map_err(read_tgt("reset session_replication_role"))?;
    } else {
        notes.push(crate::target_session::ordinary_role_note(&quote_ident(
            &tf.user,
        )));
    }
    let target_version = ServerVersion(tf.version_num);

    let state = state::load(tgt, &cfg.name)
        .await
        .map_err(read_tgt("read walrelay's state"))?;
    // Another database of the source's server than the subset's: its slot, publication and
    // tables all look wrong from here, and the advice for each (drop the slot, copy everything
    // again) would harm the real one. Say what is wrong, and only that.
    if let Some(p) = state.as_ref().and_then(|st| st.progress.as_ref()) {
        if !p.source_database.is_empty() && p.source_database != sf.database {
            return Err(SubsetError::Preflight(vec![problem(
                Side::Source,
                format!(
                    "subset {} streams from database {} of the source, but -d connects to database {}",
                    cfg.name.as_str(),
                    p.source_database,
                    sf.database
                ),
                format!("connect -d to dbname={} (or check --name and --target)", p.source_database),
            )
            .with_class(ErrorClass::Usage)]));
        }
    }
    let names = desired_tables(cfg, src, state.as_ref()).await?;
    let others = state::tables_of_other_subsets(tgt, &cfg.name)
        .await
        .map_err(read_tgt("read walrelay's state"))?;
    for name in names.iter().filter(|n| n.schema == "walrelay") {
        problems.push(problem(
            Side::Source,
            format!("table {name} is in a schema named walrelay, which on the target holds walrelay's own state (walrelay.subset_progress, …): its copy would sit among those tables, and advice for it could empty them"),
            "move the table to another schema on the source (ALTER TABLE … SET SCHEMA), or leave it out of the subset",
        ));
    }
    for name in &names {
        if let Some(other) = others.get(name) {
            problems.push(problem(
                Side::Target,
                format!("table {name} on the target is written by subset {other} already: two subsets in one table undo each other (a copy or --resync of one empties the table)"),
                format!("give this subset another target database (or leave {name} out), or add the table to subset {other} instead (walrelay subset run --name {other} -t …)"),
            ));
        }
    }
    let pub_name = cfg.name.publication();
    let publication = source::publication(src, &pub_name)
        .await
        .map_err(read_src("read the publication"))?;
    if publication.as_ref().is_some_and(|p| p.all_tables) {
        problems.push(problem(
            Side::Source,
            format!(
                "publication {pub_name} exists and is FOR ALL TABLES; walrelay did not create it"
            ),
            format!(
                "drop it (DROP PUBLICATION {}) or choose another --name",
                quote_ident(&pub_name)
            ),
        ));
    }
    let slot = source::slot(src, &cfg.name.slot())
        .await
        .map_err(read_src("read the replication slots"))?;
    if let Some(s) = &slot {
        if s.plugin.as_deref() != Some("pgoutput") || s.database.as_deref() != Some(&sf.database) {
            problems.push(problem(
                Side::Source,
                format!(
                    "replication slot {} exists but is not a pgoutput slot of database {}",
                    cfg.name.slot(),
                    sf.database
                ),
                "drop it (SELECT pg_drop_replication_slot('…')) or choose another --name",
            ));
        }
    }

    let started = state.as_ref().is_some_and(|st| st.progress.is_some());
    check_slot_belongs_here(cfg, slot.as_ref(), state.as_ref(), &mut problems);
    let standby_slots = if cfg.failover && sf.version_num >= 170_000 {
        src.query_params(
            "SELECT pg_catalog.current_setting('synchronized_standby_slots', true) AS v",
            &[],
        )
        .await
        .map_err(read_src("read synchronized_standby_slots"))?
        .get(0, "v")
        .map(str::to_string)
    } else {
        None
    };
    check_slot_health(
        cfg,
        &sf,
        slot.as_ref(),
        started,
        standby_slots.as_deref(),
        &mut problems,
        &mut notes,
    );
    // A subset that streamed has a publication from its first run on; gone (and the slot not),
    // someone dropped it, and the slot cannot decode past that point with a publication created
    // now (PostgreSQL 18 would even skip the changes silently).
    if started
        && !cfg.resync_all
        && publication.is_none()
        && slot.as_ref().is_some_and(|s| s.invalidation().is_none())
    {
        problems.push(problem(
            Side::Source,
            format!("publication {pub_name} of the subset is missing on the source (dropped while its slot was in use): the slot cannot give the changes made since without it"),
            crate::error::PUBLICATION_LOST_FIX,
        ));
    }
    check_request(cfg, &names, state.as_ref(), &mut problems);

    let mut tables = Vec::new();
    let mut plans = Vec::new();
    let mut missing_schemas: BTreeSet<String> = BTreeSet::new();
    for name in &names {
        let Some(s) = catalog::read_table(src, name)
            .await
            .map_err(read_src(&format!("read table {name}")))?
        else {
            let in_subset = state.as_ref().and_then(|st| st.table(name));
            let renamed = match in_subset.and_then(|t| t.source_oid) {
                Some(oid) => catalog::table_name_of(src, oid)
                    .await
                    .map_err(read_src("look up a table by OID"))?,
                None => None,
            };
            problems.push(match renamed {
                Some(new) => problem(
                    Side::Source,
                    format!("table {name} of the subset was renamed to {new} on the source"),
                    format!("run with -t {new} in place of -t {name} (walrelay copies it under its new name; drop {name} on the target afterwards), or rename it back on the source"),
                ),
                None => problem(
                    Side::Source,
                    format!("table {name} does not exist on the source"),
                    if in_subset.is_some() {
                        "it is in the subset: was it dropped there? Run with -t listing the tables the subset should keep"
                    } else {
                        "check the name (schema.table; quote mixed-case names: '\"Schema\".\"Table\"')"
                    },
                ),
            });
            continue;
        };
        let published = publication
            .as_ref()
            .is_some_and(|p| p.tables.contains(name));
        let already_full = s.replica_identity == ReplicaIdentity::Full;
        let wants_full = cfg.replica_identity_full.contains(name)
            || (cfg.replica_identity_full_all && !s.has_usable_key());
        let set_full = wants_full && !already_full && !s.has_usable_key() && !s.is_partitioned();
        problems.extend(check_source_table(
            &s,
            &sf,
            published || sf.superuser,
            already_full || wants_full,
        ));
        if set_full {
            if !s.owned && !sf.superuser {
                problems.push(problem(
                    Side::Source,
                    format!("role {} does not own {name}, and only its owner may set its REPLICA IDENTITY", sf.user),
                    format!("run as the table's owner, or run ALTER TABLE {} REPLICA IDENTITY FULL yourself as its owner", name.quoted()),
                ));
            }
            notes.push(format!(
                "{name}: REPLICA IDENTITY FULL is set on the source (--replica-identity-full): {FULL_IDENTITY_COST}"
            ));
        } else if wants_full && s.has_usable_key() {
            notes.push(format!(
                "{name} has a key already: its REPLICA IDENTITY stays as it is (--replica-identity-full is for tables without one)"
            ));
        } else if already_full {
            notes.push(format!(
                "{name} has REPLICA IDENTITY FULL on the source: {FULL_IDENTITY_COST}"
            ));
        }
        let in_state: Option<&TableState> = state.as_ref().and_then(|st| st.table(name));
        // Dropped and created again on the source since its copy: the copy is of another table.
        let recreated = in_state
            .and_then(|st| st.source_oid)
            .is_some_and(|oid| oid != s.oid);
        if recreated {
            notes.push(format!(
                "{name} was dropped and created again on the source since walrelay copied it: copied again"
            ));
        }
        let resync =
            in_state.is_some() && (recreated || cfg.resync_all || cfg.resync.contains(name));
        // walrelay publishes a table before copying it and keeps it published while it is in the
        // subset: a copied table missing from the publication was taken out by hand, and the
        // source sent none of its changes since (no error, no warning).
        if publication.is_some()
            && !published
            && !resync
            && in_state.is_some_and(TableState::is_synced)
        {
            problems.push(problem(
                Side::Source,
                format!("table {name} of the subset was taken out of publication {pub_name} on the source: its changes since were not sent"),
                format!("copy it again with --resync {name} (or take it out of the subset: run with -t listing the tables to keep)"),
            ));
        }
        let target = catalog::read_table(tgt, name)
            .await
            .map_err(read_tgt(&format!("read table {name}")))?;
        let mut ddl_statements = Vec::new();
        let mut recreate = false;
        let mut create = target.is_none();
        if let Some(t) = &target {
            let (mut p, n) = ddl::check_existing(&s, t);
            if t.is_partitioned() && tf.version_num < 110_000 {
                notes.push(format!(
                    "{name} is partitioned on the target, and PostgreSQL {} cannot move a row to another partition: an UPDATE of its partition key on the source will stop the subset (11 and later move it)",
                    tf.version
                ));
            }
            if !resync && in_state.is_some_and(TableState::is_synced) {
                // Streaming: the source's columns may be ahead of the stream; the stream follows
                // (or names) each change when it gets there.
                p.clear();
            }
            if resync && !p.is_empty() && in_state.is_some_and(|st| st.created_by_walrelay) {
                // Its source columns changed (the stop that led to --resync): walrelay made it,
                // so walrelay makes it again.
                notes.push(format!(
                    "{name}: the target table is created again (its columns differ from the source's)"
                ));
                ddl_statements.push(format!("DROP TABLE {}", name.quoted()));
                recreate = true;
                create = true;
            } else {
                problems.extend(p);
                notes.extend(n);
                if !t.can_read || !t.can_write {
                    problems.push(problem(
                        Side::Target,
                        format!("role {} may not read and write {name} on the target", tf.user),
                        format!(
                            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {} on the target",
                            name.quoted(),
                            quote_ident(&tf.user)
                        ),
                    ));
                } else if in_state.is_none()
                    && catalog::has_rows(tgt, t)
                        .await
                        .map_err(read_tgt(&format!("look into {name}")))?
                {
                    problems.push(problem(
                        Side::Target,
                        format!("{name} exists on the target and is not empty"),
                        format!(
                            "empty it (TRUNCATE {}) or drop it on the target; walrelay copies into empty tables only",
                            name.quoted()
                        ),
                    ));
                }
                if cfg.on_conflict == OnConflict::Upsert && s.has_usable_key() {
                    let mut want = s.key.clone();
                    let mut have = t.key.clone();
                    want.sort();
                    have.sort();
                    if want != have {
                        problems.push(problem(
                            Side::Target,
                            format!(
                                "--on-conflict upsert needs a unique index on ({}) of {name} on the target, and it has none",
                                s.key.join(", ")
                            ),
                            format!(
                                "CREATE UNIQUE INDEX ON {} ({}) on the target, or use --on-conflict skip",
                                name.quoted(),
                                s.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if create {
            match ddl::create_table(&s, target_version) {
                Ok((stmts, dropped)) => {
                    ddl_statements.extend(stmts);
                    for d in dropped {
                        notes.push(format!(
                            "{name}: the default of column {d} is not created on the target (it may not mean the same there)"
                        ));
                    }
                }
                Err(p) => problems.push(p),
            }
            check_types_exist(tgt, &s, &tf, &mut problems).await?;
            if target.is_none() && !missing_schemas.contains(&name.schema) {
                check_schema_access(tgt, &name.schema, &tf, &mut missing_schemas, &mut problems)
                    .await?;
            }
        }
        let action = match (&target, in_state) {
            (None, _) => TableAction::Create,
            _ if resync => TableAction::Resync,
            (Some(_), Some(st)) if st.is_synced() => TableAction::Stream,
            (Some(_), Some(_)) => TableAction::Recopy,
            (Some(_), None) => TableAction::CopyIntoExisting,
        };
        plans.push(TablePlan {
            table: name.clone(),
            action,
            size_bytes: s.pages.saturating_mul(8192),
        });
        tables.push(Planned {
            source: s,
            target,
            ddl: ddl_statements,
            in_state: in_state.is_some(),
            resync,
            recreate,
            set_full_identity: set_full,
        });
    }
    check_partitions_listed_twice(
        &tables.iter().map(|t| &t.source).collect::<Vec<_>>(),
        &mut problems,
    );
    for t in tables.iter().filter(|t| t.source.is_partitioned()) {
        notes.push(format!(
            "{} is partitioned: copied whole into one target table with its {} partition(s), and partitions created later followed; as with native subscriptions, the rows of a table attached as a partition later are not copied, and a partition dropped, detached or truncated on the source is not replicated (the target keeps its rows)",
            t.source.name,
            t.source.partitions.len()
        ));
    }
    let sequences = plan_sequences(
        cfg,
        state.as_ref(),
        src,
        tgt,
        &tf,
        &mut missing_schemas,
        &mut problems,
    )
    .await?;
    let removed: Vec<TableName> = state
        .iter()
        .flat_map(|s| s.tables.iter())
        .map(|t| t.table.clone())
        .filter(|t| !names.contains(t))
        .collect();

    let layout = state::layout(tgt)
        .await
        .map_err(read_tgt("look up walrelay's state"))?;
    let state_tables = layout > 0;
    let (walrelay_schema, can_create_state) = catalog::schema_access(tgt, "walrelay")
        .await
        .map_err(read_tgt("look up schema walrelay"))?;
    if !state_tables && !can_create_state {
        problems.push(problem(
            Side::Target,
            format!("walrelay keeps its progress in schema walrelay on the target, and role {} may not create it", tf.user),
            format!(
                "GRANT CREATE ON DATABASE {} TO {} on the target (or create schema walrelay owned by that role)",
                quote_ident(&tf.database),
                quote_ident(&tf.user)
            ),
        ));
    }
    if publication.is_none() && !sf.can_create_in_database {
        problems.push(problem(
            Side::Source,
            format!(
                "role {} may not create publications in database {} on the source",
                sf.user, sf.database
            ),
            format!(
                "GRANT CREATE ON DATABASE {} TO {} on the source",
                quote_ident(&sf.database),
                quote_ident(&sf.user)
            ),
        ));
    }
    let copies = plans.iter().any(|p| p.action != TableAction::Stream);
    let slots_needed = i64::from(slot.is_none()) + i64::from(slot.is_some() && copies);
    if slots_needed > sf.free_slots() {
        problems.push(problem(
            Side::Source,
            format!(
                "the source has {} free replication slot(s) of max_replication_slots = {}, and walrelay needs {slots_needed}",
                sf.free_slots().max(0),
                sf.max_replication_slots
            ),
            "raise max_replication_slots on the source (restart needed) or drop unused slots (pg_replication_slots)",
        ));
    }
    if sf.free_senders() < 1 {
        problems.push(problem(
            Side::Source,
            format!(
                "the source has no free WAL sender (max_wal_senders = {}, all in use)",
                sf.max_wal_senders
            ),
            "raise max_wal_senders on the source (restart needed) or stop a client that streams from it",
        ));
    }
    for n in &notes {
        info!("{n}");
    }
    if !problems.is_empty() {
        for p in &problems {
            warn!(side = %p.side, "{p}");
        }
        return Err(SubsetError::Preflight(problems));
    }
    Ok(Prepared {
        report: CheckReport {
            source: sf,
            target: tf,
            tables: plans,
            removed,
            notes,
        },
        tables,
        publication,
        slot,
        state_tables,
        state_migrate: state_tables && layout < STATE_FORMAT,
        walrelay_schema,
        missing_schemas,
        sequences,
    })
}

/// Creates what preflight planned. Idempotent: a second run finds everything in place.
pub(crate) async fn setup(
    cfg: &RunConfig,
    p: &Prepared,
    src: &mut Connection,
    tgt: &mut Connection,
) -> Result<(), SubsetError> {
    let on_target = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let mut sql = String::from("BEGIN;\n");
    if !p.state_tables {
        if !p.walrelay_schema {
            sql.push_str("CREATE SCHEMA walrelay;\n");
        }
        sql.push_str(CREATE_STATE_TABLES);
        sql.push_str(";\n");
    }
    if !p.state_tables || p.state_migrate {
        sql.push_str(MIGRATE_STATE);
        sql.push_str(";\n");
    }
    for schema in &p.missing_schemas {
        sql.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(schema)));
    }
    for t in p.tables.iter().filter(|t| t.target.is_none() || t.recreate) {
        for s in &t.ddl {
            sql.push_str(s);
            sql.push_str(";\n");
        }
    }
    let subset = quote_literal(cfg.name.as_str());
    let table_row = |t: &TableName| {
        format!(
            "subset = {subset} AND schema_name = {} AND table_name = {}",
            quote_literal(&t.schema),
            quote_literal(&t.name)
        )
    };
    for r in &p.report.removed {
        sql.push_str(&format!(
            "DELETE FROM walrelay.subset_tables WHERE {w};\nDELETE FROM walrelay.subset_columns WHERE {w};\n",
            w = table_row(r)
        ));
    }
    if cfg.resync_all {
        sql.push_str(&format!(
            "DELETE FROM walrelay.subset_progress WHERE subset = {subset};\n"
        ));
    }
    for t in p.tables.iter().filter(|t| t.resync) {
        sql.push_str(&format!(
            "UPDATE walrelay.subset_tables SET state = 'copying', sync_lsn = NULL WHERE {};\n",
            table_row(&t.source.name)
        ));
    }
    let chosen: Vec<String> = p
        .sequences
        .iter()
        .map(|q| {
            format!(
                "({}, {})",
                quote_literal(&q.name.schema),
                quote_literal(&q.name.name)
            )
        })
        .collect();
    sql.push_str(&format!(
        "DELETE FROM walrelay.subset_sequences WHERE subset = {subset}{};\n",
        if chosen.is_empty() {
            String::new()
        } else {
            format!(
                " AND (schema_name, sequence_name) NOT IN ({})",
                chosen.join(", ")
            )
        }
    ));
    for q in &p.sequences {
        if let Some(create) = &q.create {
            sql.push_str(create);
            sql.push_str(";\n");
        }
        sql.push_str(&format!(
            "INSERT INTO walrelay.subset_sequences (subset, schema_name, sequence_name) VALUES ({subset}, {}, {}) ON CONFLICT DO NOTHING;\n",
            quote_literal(&q.name.schema),
            quote_literal(&q.name.name)
        ));
    }
    for t in p.tables.iter().filter(|t| t.in_state && t.target.is_none()) {
        // Gone from the target although copied once: copy it again from a fresh snapshot.
        sql.push_str(&format!(
            "UPDATE walrelay.subset_tables SET state = 'copying', sync_lsn = NULL, created_by_walrelay = true \
             WHERE subset = {subset} AND schema_name = {} AND table_name = {};\n",
            quote_literal(&t.source.name.schema),
            quote_literal(&t.source.name.name)
        ));
    }
    for t in p.tables.iter().filter(|t| !t.in_state) {
        sql.push_str(&format!(
            "INSERT INTO walrelay.subset_tables (subset, schema_name, table_name, state, created_by_walrelay) \
             VALUES ({subset}, {}, {}, 'copying', {});\n",
            quote_literal(&t.source.name.schema),
            quote_literal(&t.source.name.name),
            t.target.is_none()
        ));
    }
    sql.push_str("COMMIT");
    tgt.batch_execute(&sql)
        .await
        .map_err(on_target("create the subset's tables and state"))?;
    for t in p.tables.iter().filter(|t| t.target.is_none()) {
        info!(table = %t.source.name, "created on the target");
    }
    for r in &p.report.removed {
        info!(table = %r, "no longer in the subset (the target table stays)");
    }
    // Before the publication: from the moment a table is published, UPDATE and DELETE on it
    // need its replica identity.
    for t in p.tables.iter().filter(|t| t.set_full_identity) {
        src.batch_execute(&format!(
            "ALTER TABLE {} REPLICA IDENTITY FULL",
            t.source.name.quoted()
        ))
        .await
        .map_err(SubsetError::sql(
            Side::Source,
            format!("set REPLICA IDENTITY FULL on {}", t.source.name),
        ))?;
        warn!(table = %t.source.name, "REPLICA IDENTITY FULL set on the source: {FULL_IDENTITY_COST}");
    }
    let names: Vec<TableName> = p.tables.iter().map(|t| t.source.name.clone()).collect();
    let via_root = p.tables.iter().any(|t| t.source.is_partitioned());
    source::ensure_publication(
        src,
        &cfg.name.publication(),
        &names,
        via_root,
        p.publication.as_ref(),
    )
    .await
    .map_err(SubsetError::sql(
        Side::Source,
        "create or update the publication",
    ))?;
    Ok(())
}
