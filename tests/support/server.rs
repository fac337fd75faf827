//! What the server says about walrelay: its `pg_stat_replication` row and its slot.

use walrelay_testkit::{Cluster, Lsn};

use super::poll;

/// `pg_stat_replication` for one `application_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationRow {
    pub state: String,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub sync_state: String,
}

fn lsn(field: &str) -> Option<Lsn> {
    if field.is_empty() {
        None
    } else {
        Some(
            field
                .parse()
                .unwrap_or_else(|e| panic!("LSN {field:?}: {e}")),
        )
    }
}

/// The `pg_stat_replication` row of `application_name`, if it is connected.
pub fn replication_row(server: &Cluster, application_name: &str) -> Option<ReplicationRow> {
    let rows = server.psql_rows(&format!(
        "SELECT state, sent_lsn, write_lsn, flush_lsn, replay_lsn, sync_state \
         FROM pg_stat_replication WHERE application_name = '{application_name}'"
    ));
    // A connection that has not started streaming yet ('startup': a reconnect in progress, or a
    // walsender whose client is gone and that has not exited yet) is not the standby; two that
    // stream under one name would be a bug.
    let live: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] != "startup").collect();
    assert!(
        live.len() <= 1,
        "more than one walsender for {application_name}: {rows:?}"
    );
    live.first()
        .copied()
        .or(rows.first())
        .map(|r| ReplicationRow {
            state: r[0].clone(),
            sent_lsn: lsn(&r[1]),
            write_lsn: lsn(&r[2]),
            flush_lsn: lsn(&r[3]),
            replay_lsn: lsn(&r[4]),
            sync_state: r[5].clone(),
        })
}

/// Waits until `application_name` streams (walsender state `streaming`) and returns its row.
pub fn wait_streaming(server: &Cluster, application_name: &str) -> ReplicationRow {
    poll::wait_for(
        &format!("{application_name} to stream from {}", server.name()),
        poll::timeout(),
        std::time::Duration::from_millis(100),
        || replication_row(server, application_name).filter(|r| r.state == "streaming"),
        || {
            format!(
                "pg_stat_replication: {}",
                server.psql("SELECT application_name, state FROM pg_stat_replication")
            )
        },
    )
}

/// Waits until the `pg_stat_replication` row of `application_name` shows `position` (e.g.
/// `|r| r.write_lsn`) at or past `target`; on timeout the panic names `what` and shows the row.
pub fn wait_reported(
    server: &Cluster,
    application_name: &str,
    what: &str,
    position: impl Fn(&ReplicationRow) -> Option<Lsn>,
    target: Lsn,
) {
    poll::wait_until(
        what,
        || {
            replication_row(server, application_name)
                .and_then(|r| position(&r))
                .is_some_and(|l| l >= target)
        },
        || format!("{:?}", replication_row(server, application_name)),
    );
}

/// `pg_replication_slots` for one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub wal_status: String,
}

pub fn slot(server: &Cluster, name: &str) -> Option<SlotRow> {
    let rows = server.psql_rows(&format!(
        "SELECT slot_type, active, restart_lsn, wal_status FROM pg_replication_slots \
         WHERE slot_name = '{name}'"
    ));
    rows.first().map(|r| SlotRow {
        slot_type: r[0].clone(),
        active: r[1] == "t",
        restart_lsn: lsn(&r[2]),
        wal_status: r[3].clone(),
    })
}

/// Inserts `rows` rows into table `t` (created if missing) and returns the insert position after.
pub fn insert_rows(server: &Cluster, table: &str, rows: u32) -> Lsn {
    server.psql(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (i int, filler text); \
         INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g;"
    ));
    server.current_wal_lsn()
}
