//! `walrelay check`: can this server feed a replicant? A pre-flight that names each problem in plain words.
//!
//! Everything the replication protocol can answer is asked over a replication connection (what
//! bootstrap and receive will use). Slot state and sender usage live in catalogs that only an SQL
//! session can read; when the role may also open one, those are checked too, otherwise they are
//! reported as unknown rather than guessed.

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use walrelay_client::{ClientError, Connection, ReplicationMode, ServerCondition};
use walrelay_protocol::command::{MAX_SUPPORTED_MAJOR, MIN_SUPPORTED_MAJOR};

use crate::connect::{ConnectionArgs, Resolved};

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct CheckArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Replication slot the replicant will use; its state is checked too.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub ready: bool,
    pub endpoint: Option<String>,
    pub tls: bool,
    pub server_version: Option<String>,
    pub server_version_num: Option<u32>,
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub current_wal_lsn: Option<String>,
    pub in_recovery: Option<bool>,
    pub wal_level: Option<String>,
    pub max_wal_senders: Option<u32>,
    pub wal_senders_in_use: Option<u32>,
    pub wal_segment_size: Option<String>,
    pub max_replication_slots: Option<u32>,
    pub max_slot_wal_keep_size: Option<String>,
    pub idle_replication_slot_timeout: Option<String>,
    pub wal_keep: Option<String>,
    pub data_checksums: Option<String>,
    pub slot: Option<SlotReport>,
    /// With a host list: every host, as it answers now (the report's other fields describe the one
    /// that `target_session_attrs` picks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReport>,
    /// Things that stop a replicant from being fed.
    pub problems: Vec<String>,
    /// Things an operator should know.
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// One host of a host list.
#[derive(Debug, Default, Serialize)]
pub struct HostReport {
    pub endpoint: String,
    /// `primary`, `standby`, or `unreachable`.
    pub role: String,
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub wal_lsn: Option<String>,
    /// With `-S`: the slot's `restart_lsn` on this host, `missing`, or `unknown` (before
    /// PostgreSQL 15 a replication connection cannot read slots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct SlotReport {
    pub name: String,
    pub exists: bool,
    pub slot_type: Option<String>,
    pub active: Option<bool>,
    /// Who streams from it when it is active: `pg_stat_replication`'s application name and state.
    pub active_client: Option<String>,
    pub restart_lsn: Option<String>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<String>,
    pub invalidation_reason: Option<String>,
}

pub async fn run(args: CheckArgs) -> Result<i32> {
    let resolved = args.conn.resolve()?;
    let report = check(&resolved, args.slot.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if report.ready { 0 } else { 1 })
}

/// No WAL sender for us: all taken, or none at all (`max_wal_senders = 0`, as with
/// `wal_level = minimal`); the report then looks at the server over SQL.
fn is_sender_exhaustion(e: &ClientError) -> bool {
    matches!(
        e.condition(),
        Some(ServerCondition::WalSendersExhausted | ServerCondition::ReplicationDisabled)
    )
}

async fn check(resolved: &Resolved, slot: Option<&str>) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    if let Some(s) = slot {
        if let Err(e) = walrelay_protocol::command::validate_slot_name(s) {
            r.problems.push(e.to_string());
            return Ok(r);
        }
    }
    let params = resolved.params(ReplicationMode::Physical)?;
    if params.endpoints.len() > 1 {
        r.hosts = check_hosts(&params, slot).await;
        if let Some(name) = slot {
            for h in r.hosts.iter().filter(|h| h.role == "standby") {
                if h.slot.as_deref() == Some("missing") {
                    r.warnings.push(format!(
                        "standby {} has no slot \"{name}\": after a failover to it, nothing keeps the WAL a replicant needs — run walrelay receive with --failover (it keeps the slot on every standby of the list)",
                        h.endpoint
                    ));
                }
            }
        }
        let systems: std::collections::BTreeSet<&str> = r
            .hosts
            .iter()
            .filter_map(|h| h.system_identifier.as_deref())
            .collect();
        if systems.len() > 1 {
            r.problems.push(format!(
                "the hosts belong to different clusters (system identifiers {}): a host list must name servers of one cluster (a primary and its standbys)",
                systems.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let primaries = r.hosts.iter().filter(|h| h.role == "primary").count();
        if primaries > 1 {
            r.warnings.push(format!(
                "{primaries} hosts accept writes: after a failover the old primary must not come back as a primary (split brain); walrelay follows the one whose timeline continues its archive"
            ));
        }
    }
    let mut sql = open_sql(resolved).await;

    let mut conn = match Connection::connect(&params).await {
        Ok(c) => c,
        Err(e) if is_sender_exhaustion(&e) => {
            // Either every sender is busy, or max_wal_senders is 0 — which is forced by wal_level=minimal.
            let wal_level = match &mut sql {
                Some(s) => show_sql(s, "wal_level").await,
                None => None,
            };
            if wal_level.as_deref() == Some("minimal") {
                r.wal_level = wal_level;
                r.problems.push(
                    "wal_level is minimal, so the server cannot stream WAL: set wal_level = replica and max_wal_senders > 0 (e.g. 10) in postgresql.conf, then restart the server".into(),
                );
            } else {
                r.problems.push(format!(
                    "no free WAL sender: {} — raise max_wal_senders on the server (needs a restart) or stop an unused replication client",
                    e.server_error().map(|s| s.message().to_string()).unwrap_or_default()
                ));
            }
            return Ok(r);
        }
        Err(e) => {
            if e.condition() == Some(ServerCondition::NoHbaEntry) {
                r.problems.push(format!(
                    "{e} — add a line like \"host replication {} <client-address>/32 scram-sha-256\" to pg_hba.conf and reload the server",
                    params.user
                ));
                return Ok(r);
            }
            return Err(anyhow::Error::new(e).context("connect for replication"));
        }
    };
    r.endpoint = Some(conn.endpoint().to_string());
    r.tls = conn.is_tls();
    r.server_version = conn.parameter("server_version").map(str::to_string);
    let version = conn.server_version();
    r.server_version_num = Some(version.0);
    let major = version.major();
    if !(MIN_SUPPORTED_MAJOR..=MAX_SUPPORTED_MAJOR).contains(&major) {
        r.problems.push(format!(
            "server version {} is not supported: walrelay supports PostgreSQL {MIN_SUPPORTED_MAJOR} to {MAX_SUPPORTED_MAJOR}",
            r.server_version.clone().unwrap_or_default()
        ));
    }
    let relay = conn.parameter(walrelay_relay::RELAY_PARAMETER).is_some();
    if relay {
        r.notes.push(format!(
            "this is walrelay serve, relaying PostgreSQL {}: the settings shown are the relay's (its slots, senders and WAL it keeps) or its upstream's; SQL checks do not go through a relay",
            r.server_version.as_deref().unwrap_or("?")
        ));
    }
    let ident = conn.identify_system().await?;
    r.system_identifier = Some(ident.system_identifier.to_string());
    r.timeline = Some(ident.timeline.0);
    r.current_wal_lsn = Some(ident.xlogpos.to_string());

    let show = |name: &'static str| name;
    r.wal_level = conn.show(show("wal_level")).await.ok();
    r.max_wal_senders = conn
        .show("max_wal_senders")
        .await
        .ok()
        .and_then(|v| v.parse().ok());
    r.wal_segment_size = conn.show("wal_segment_size").await.ok();
    r.max_replication_slots = conn
        .show("max_replication_slots")
        .await
        .ok()
        .and_then(|v| v.parse().ok());
    r.data_checksums = conn.show("data_checksums").await.ok();
    if major >= 13 {
        r.max_slot_wal_keep_size = conn.show("max_slot_wal_keep_size").await.ok();
        r.wal_keep = conn
            .show("wal_keep_size")
            .await
            .ok()
            .map(|v| format!("wal_keep_size = {v}"));
    } else {
        r.wal_keep = conn
            .show("wal_keep_segments")
            .await
            .ok()
            .map(|v| format!("wal_keep_segments = {v}"));
    }
    if major >= 18 {
        r.idle_replication_slot_timeout = conn.show("idle_replication_slot_timeout").await.ok();
    }

    match r.wal_level.as_deref() {
        Some("replica") | Some("logical") | Some("hot_standby") | Some("archive") => {}
        Some(other) => r.problems.push(format!(
            "wal_level is {other}: set wal_level = replica in postgresql.conf and restart the server"
        )),
        None => r.warnings.push("could not read wal_level".into()),
    }

    // A replicant needs a second sender for bootstrap's parallel WAL stream. Try to open one.
    match Connection::connect(&params).await {
        Ok(c2) => c2.close().await,
        Err(e) if is_sender_exhaustion(&e) => r.problems.push(format!(
            "only one WAL sender is free (max_wal_senders = {}): bootstrap needs two at once (backup + WAL stream) — raise max_wal_senders (needs a restart) or stop an unused replication client",
            r.max_wal_senders.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        )),
        Err(e) => r.warnings.push(format!("a second replication connection failed: {e}")),
    }

    if let Some(s) = &mut sql {
        // Our own replication connection is not "in use" by anyone else.
        let ours = conn.backend_pid();
        r.wal_senders_in_use = query_one(
            s,
            &format!("SELECT count(*) FROM pg_stat_replication WHERE pid <> {ours}"),
        )
        .await
        .and_then(|v| v.parse().ok());
        r.in_recovery = query_one(s, "SELECT pg_is_in_recovery()")
            .await
            .map(|v| v == "t");
    } else {
        r.notes.push(
            "no SQL session could be opened with these settings, so sender usage and slot WAL status were not checked".into(),
        );
    }
    if r.in_recovery == Some(true) {
        r.notes.push("this server is a standby: replicants will cascade from it, and follow its timeline switches when it is promoted".into());
    }

    if let Some(kb) = r.max_slot_wal_keep_size.as_deref() {
        if kb != "-1" {
            r.warnings.push(format!(
                "max_slot_wal_keep_size = {kb}: a slot whose consumer falls that far behind is invalidated and the replicant must be re-seeded"
            ));
        } else if let Some(name) = slot {
            r.warnings.push(format!(
                "max_slot_wal_keep_size = -1: replication slot \"{name}\" retains WAL without limit — if its consumer stops, pg_wal grows until the primary's disk is full; set max_slot_wal_keep_size to bound it (the slot is then invalidated instead, and the replicant re-seeded)"
            ));
        }
    }
    if let Some(t) = r.idle_replication_slot_timeout.as_deref() {
        if t != "0" {
            r.warnings.push(format!(
                "idle_replication_slot_timeout = {t}: a slot unused for that long is invalidated"
            ));
        }
    }

    if let Some(name) = slot {
        r.slot = Some(
            check_slot(
                &mut conn,
                sql.as_mut(),
                name,
                major,
                relay,
                Findings {
                    problems: &mut r.problems,
                    warnings: &mut r.warnings,
                    notes: &mut r.notes,
                },
            )
            .await,
        );
        if r.max_replication_slots == Some(0) && r.slot.as_ref().is_some_and(|s| !s.exists) {
            r.problems.push(
                "max_replication_slots = 0: the server cannot create that slot (or any) — set max_replication_slots > 0 (e.g. 10) in postgresql.conf and restart the server".into(),
            );
        }
    } else if r.max_replication_slots == Some(0) {
        r.warnings.push("max_replication_slots = 0: no slot can hold WAL for a replicant; the primary may remove WAL it still needs".into());
    }

    conn.close().await;
    if let Some(s) = sql {
        s.close().await;
    }
    r.ready = r.problems.is_empty();
    Ok(r)
}

/// Every host of the list on its own: role, timeline, position — so a failover set-up can be
/// checked before the bad day (which host is the primary, are the standbys on its timeline).
async fn check_hosts(
    params: &walrelay_client::ConnectParams,
    slot: Option<&str>,
) -> Vec<HostReport> {
    let mut out = Vec::new();
    for endpoint in &params.endpoints {
        let mut one = params.clone();
        one.endpoints = vec![endpoint.clone()];
        one.target_session_attrs = walrelay_client::SessionAttrs::Any;
        let mut h = HostReport {
            endpoint: endpoint.to_string(),
            ..Default::default()
        };
        match Connection::connect(&one).await {
            Ok(mut c) => {
                match c.identify_system().await {
                    Ok(ident) => {
                        h.system_identifier = Some(ident.system_identifier.to_string());
                        h.timeline = Some(ident.timeline.0);
                        h.wal_lsn = Some(ident.xlogpos.to_string());
                    }
                    Err(e) => h.error = Some(e.to_string()),
                }
                let standby = match c.parameter("in_hot_standby") {
                    Some(v) => Some(v == "on"),
                    None => c
                        .show("transaction_read_only")
                        .await
                        .ok()
                        .map(|v| v == "on"),
                };
                h.role = match standby {
                    Some(true) => "standby",
                    Some(false) => "primary",
                    None => "unknown",
                }
                .to_string();
                if let Some(name) = slot {
                    h.slot = Some(if c.server_version().major() >= 15 {
                        match c.read_replication_slot(name).await {
                            Ok(Some(info)) => info
                                .restart_lsn
                                .map_or("exists, no WAL reserved".into(), |l| l.to_string()),
                            Ok(None) => "missing".into(),
                            Err(_) => "unknown".into(),
                        }
                    } else {
                        "unknown".into()
                    });
                }
                c.close().await;
            }
            Err(e) => {
                h.role = "unreachable".to_string();
                h.error = Some(e.to_string());
            }
        }
        out.push(h);
    }
    out
}

/// Where a check puts what it finds.
struct Findings<'a> {
    problems: &'a mut Vec<String>,
    warnings: &'a mut Vec<String>,
    notes: &'a mut Vec<String>,
}

async fn check_slot(
    conn: &mut Connection,
    sql: Option<&mut Connection>,
    name: &str,
    major: u32,
    relay: bool,
    found: Findings<'_>,
) -> SlotReport {
    let Findings {
        problems,
        warnings,
        notes,
    } = found;
    let mut s = SlotReport {
        name: name.to_string(),
        ..Default::default()
    };
    if let Some(sql) = sql {
        let cols = match major {
            m if m >= 17 => {
                "slot_type, active, restart_lsn, wal_status, safe_wal_size, invalidation_reason"
            }
            m if m >= 13 => "slot_type, active, restart_lsn, wal_status, safe_wal_size, NULL",
            _ => "slot_type, active, restart_lsn, NULL, NULL, NULL",
        };
        let q = format!(
            "SELECT {cols}, (SELECT format('PID %s, application_name \"%s\", %s', r.pid, r.application_name, r.state) FROM pg_stat_replication r WHERE r.pid = s.active_pid) FROM pg_replication_slots s WHERE slot_name = '{}'",
            name // validated: [a-z0-9_] only
        );
        if let Ok(res) = sql.simple_query(&q).await {
            if let Some(r) = res.first() {
                if !r.rows.is_empty() {
                    s.exists = true;
                    s.slot_type = r.get_idx(0, 0).map(str::to_string);
                    s.active = r.get_idx(0, 1).map(|v| v == "t");
                    s.restart_lsn = r.get_idx(0, 2).map(str::to_string);
                    s.wal_status = r.get_idx(0, 3).map(str::to_string);
                    s.safe_wal_size = r.get_idx(0, 4).map(str::to_string);
                    s.invalidation_reason = r.get_idx(0, 5).map(str::to_string);
                    s.active_client = r.get_idx(0, 6).map(str::to_string);
                }
            }
        }
    } else if major >= 15 {
        if let Ok(Some(info)) = conn.read_replication_slot(name).await {
            s.exists = true;
            s.slot_type = Some(info.slot_type);
            s.restart_lsn = info.restart_lsn.map(|l| l.to_string());
        }
    } else if relay {
        // A relay answers READ_REPLICATION_SLOT for its own slots whatever major it relays.
        let q = format!("READ_REPLICATION_SLOT {name}");
        if let Ok(res) = conn.simple_query(&q).await {
            if let Some(slot_type) = res.first().and_then(|r| r.get_idx(0, 0)) {
                s.exists = true;
                s.slot_type = Some(slot_type.to_string());
                s.restart_lsn = res
                    .first()
                    .and_then(|r| r.get_idx(0, 1))
                    .map(str::to_string);
            }
        }
    } else {
        warnings.push(format!(
            "slot \"{name}\" could not be checked: PostgreSQL {major} cannot report slots over a replication connection and no SQL session was possible"
        ));
        return s;
    }
    if !s.exists {
        problems.push(format!(
            "replication slot \"{name}\" does not exist: create it with `walrelay receive --create-slot -S {name}` or bootstrap with `-C -S {name}`"
        ));
        return s;
    }
    if s.slot_type.as_deref() != Some("physical") {
        problems.push(format!(
            "replication slot \"{name}\" is a {} slot; walrelay needs a physical slot",
            s.slot_type.as_deref().unwrap_or("non-physical")
        ));
    }
    // In use is what a healthy slot is while its receiver runs: `check -S` is also the probe that
    // monitors it. A replicant about to be started on it needs it free, which the note says.
    if s.active == Some(true) {
        notes.push(format!(
            "replication slot \"{name}\" is in use{}: healthy while its consumer streams; a new replicant can use it only once that client stops",
            s.active_client.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        ));
    }
    match s.wal_status.as_deref() {
        Some("lost") => problems.push(format!(
            "replication slot \"{name}\" is invalidated (wal_status = lost{}): the WAL it needed is gone — drop it, create a new one and re-seed the replicant",
            s.invalidation_reason.as_deref().map(|r| format!(", reason {r}")).unwrap_or_default()
        )),
        Some("unreserved") => warnings.push(format!(
            "replication slot \"{name}\" is about to lose WAL (wal_status = unreserved): start its consumer now"
        )),
        _ => {}
    }
    if let Some(reason) = s.invalidation_reason.as_deref() {
        if s.wal_status.as_deref() != Some("lost") {
            problems.push(format!(
                "replication slot \"{name}\" is invalidated ({reason}): drop it, create a new one and re-seed the replicant"
            ));
        }
    }
    if s.exists && s.restart_lsn.is_none() && s.wal_status.as_deref() != Some("lost") {
        warnings.push(format!(
            "replication slot \"{name}\" reserves no WAL yet (no restart_lsn): WAL is kept only after its first connection"
        ));
    }
    s
}

async fn open_sql(resolved: &Resolved) -> Option<Connection> {
    let params = resolved.sql_params().ok()?;
    match Connection::connect(&params).await {
        Ok(c) => Some(c),
        Err(e) if e.condition() == Some(ServerCondition::UnknownDatabase) => {
            // The default database (named after the user) does not exist; `postgres` usually does.
            let mut p = params;
            p.dbname = Some("postgres".into());
            Connection::connect(&p).await.ok()
        }
        Err(_) => None,
    }
}

async fn show_sql(c: &mut Connection, name: &str) -> Option<String> {
    query_one(c, &format!("SHOW {name}")).await
}

async fn query_one(c: &mut Connection, sql: &str) -> Option<String> {
    let res = c.simple_query(sql).await.ok()?;
    res.first()?.get_idx(0, 0).map(str::to_string)
}

fn print_human(r: &CheckReport) {
    let line = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            println!("  {k:<28} {v}");
        }
    };
    if !r.hosts.is_empty() {
        println!("hosts:");
        for h in &r.hosts {
            let slot = h
                .slot
                .as_deref()
                .map(|s| format!(", slot {s}"))
                .unwrap_or_default();
            let detail = match (&h.error, h.timeline, &h.wal_lsn) {
                (Some(e), _, _) if h.role == "unreachable" => e.clone(),
                (_, Some(t), Some(l)) => format!(
                    "timeline {t}, WAL at {l}, system {}{slot}",
                    h.system_identifier.as_deref().unwrap_or("?")
                ),
                (Some(e), _, _) => e.clone(),
                _ => String::new(),
            };
            println!("  {:<28} {:<11} {detail}", h.endpoint, h.role);
        }
    }
    if let Some(ep) = &r.endpoint {
        println!("connected to {ep}{}", if r.tls { " (TLS)" } else { "" });
    }
    line("server version", &r.server_version);
    line("system identifier", &r.system_identifier);
    line("timeline", &r.timeline.map(|t| t.to_string()));
    line("current WAL position", &r.current_wal_lsn);
    line("wal_level", &r.wal_level);
    let senders = r.max_wal_senders.map(|m| match r.wal_senders_in_use {
        Some(u) => format!("{m} ({u} in use)"),
        None => m.to_string(),
    });
    line("max_wal_senders", &senders);
    line("wal_segment_size", &r.wal_segment_size);
    line(
        "max_replication_slots",
        &r.max_replication_slots.map(|v| v.to_string()),
    );
    line(
        "max_slot_wal_keep_size",
        &r.max_slot_wal_keep_size.as_ref().map(|v| {
            if v == "-1" {
                "-1 (unlimited)".to_string()
            } else {
                v.clone()
            }
        }),
    );
    line(
        "idle_replication_slot_timeout",
        &r.idle_replication_slot_timeout,
    );
    line("WAL kept for standbys", &r.wal_keep);
    line("data_checksums", &r.data_checksums);
    if let Some(s) = &r.slot {
        let state = if !s.exists {
            "missing".to_string()
        } else {
            format!(
                "{}{}, restart_lsn {}{}",
                s.slot_type.as_deref().unwrap_or("?"),
                match s.active {
                    Some(true) => ", active",
                    Some(false) => ", inactive",
                    None => "",
                },
                s.restart_lsn.as_deref().unwrap_or("none"),
                s.wal_status
                    .as_deref()
                    .map(|w| format!(", wal_status {w}"))
                    .unwrap_or_default()
            )
        };
        line(&format!("slot \"{}\"", s.name), &Some(state));
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    if r.ready {
        println!("READY: this server can feed a replicant");
    } else {
        println!(
            "NOT READY: {} problem{} to fix",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        );
    }
}
