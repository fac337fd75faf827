//! Replication command text for each server version.
//!
//! The replication grammar (`repl_gram.y`) changed in PostgreSQL 15: options of `BASE_BACKUP` and
//! `CREATE_REPLICATION_SLOT` moved to a parenthesized, comma-separated list; the old keyword syntax is still
//! accepted by 15+ but new options exist only in the new form. The builders here take the server version and
//! emit what pg_basebackup / pg_receivewal of the same era would send.

use std::fmt::Write as _;

use thiserror::Error;

use crate::{Lsn, TimelineId};

/// `server_version_num`, e.g. 150004 for 15.4 and 100023 for 10.23.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion(pub u32);

impl ServerVersion {
    /// The major version: 10 … 18 (and 9 for 9.x, as `90600 / 10000`).
    pub fn major(self) -> u32 {
        self.0 / 10000
    }

    /// Parses the `server_version` parameter status: `15.4 (Debian 15.4-1)`, `10.23`, `17beta1`, `18devel`.
    pub fn parse_server_version(s: &str) -> Option<ServerVersion> {
        let digits_end = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let s = s.trim();
        let major_end = digits_end(s);
        let major: u32 = s[..major_end].parse().ok()?;
        let rest = &s[major_end..];
        let minor: u32 = if let Some(r) = rest.strip_prefix('.') {
            let e = digits_end(r);
            r[..e].parse().ok()?
        } else {
            0
        };
        if major >= 10 {
            Some(ServerVersion(major * 10000 + minor))
        } else {
            // 9.6.24 → 90624
            let r = rest.strip_prefix('.')?;
            let e = digits_end(r);
            let mid: u32 = r[..e].parse().ok()?;
            let r2 = r[e..].strip_prefix('.').unwrap_or("0");
            let e2 = digits_end(r2);
            let patch: u32 = r2[..e2].parse().unwrap_or(0);
            Some(ServerVersion(major * 10000 + mid * 100 + patch))
        }
    }

    pub fn uses_new_option_syntax(self) -> bool {
        self.major() >= 15
    }

    /// `Ok` when the server is at least `needs` (a major), else what `option` needs.
    pub fn requires(self, option: &'static str, needs: u32) -> Result<(), CommandError> {
        if self.major() < needs {
            return Err(CommandError::Unsupported {
                option,
                needs,
                server: self.major(),
            });
        }
        Ok(())
    }
}

/// Oldest and newest majors walrelay speaks to.
pub const MIN_SUPPORTED_MAJOR: u32 = 10;
pub const MAX_SUPPORTED_MAJOR: u32 = 18;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("invalid replication slot name {0:?}: use only lower-case letters, digits and underscores, at most 63 characters")]
    InvalidSlotName(String),
    #[error("invalid setting name {0:?}")]
    InvalidSettingName(String),
    #[error("{option} needs PostgreSQL {needs} or later; the server is {server}")]
    Unsupported {
        option: &'static str,
        needs: u32,
        server: u32,
    },
    #[error("invalid {what}: {reason}")]
    InvalidValue {
        what: &'static str,
        reason: &'static str,
    },
}

/// Checks a physical replication slot name as `ReplicationSlotValidateName` does.
pub fn validate_slot_name(name: &str) -> Result<(), CommandError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(CommandError::InvalidSlotName(name.to_string()));
    }
    Ok(())
}

/// A string literal for the replication grammar: single quotes, `'` doubled (backslashes are literal).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

pub fn identify_system() -> String {
    "IDENTIFY_SYSTEM".to_string()
}

/// `SHOW name` (replication connections accept SHOW since PostgreSQL 10).
pub fn show(setting: &str) -> Result<String, CommandError> {
    if setting.is_empty()
        || !setting
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(CommandError::InvalidSettingName(setting.to_string()));
    }
    Ok(format!("SHOW {setting}"))
}

pub fn timeline_history(tli: TimelineId) -> String {
    format!("TIMELINE_HISTORY {}", tli.0)
}

/// `CREATE_REPLICATION_SLOT` for a physical slot.
pub fn create_physical_slot(
    version: ServerVersion,
    name: &str,
    temporary: bool,
    reserve_wal: bool,
) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    let mut s = format!("CREATE_REPLICATION_SLOT \"{name}\"");
    if temporary {
        s.push_str(" TEMPORARY");
    }
    s.push_str(" PHYSICAL");
    if reserve_wal {
        if version.uses_new_option_syntax() {
            s.push_str(" (RESERVE_WAL)");
        } else {
            s.push_str(" RESERVE_WAL");
        }
    }
    Ok(s)
}

/// `DROP_REPLICATION_SLOT name [WAIT]`.
pub fn drop_slot(name: &str, wait: bool) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    Ok(if wait {
        format!("DROP_REPLICATION_SLOT \"{name}\" WAIT")
    } else {
        format!("DROP_REPLICATION_SLOT \"{name}\"")
    })
}

/// `READ_REPLICATION_SLOT name` (PostgreSQL 15+).
pub fn read_replication_slot(version: ServerVersion, name: &str) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    version.requires("READ_REPLICATION_SLOT", 15)?;
    Ok(format!("READ_REPLICATION_SLOT \"{name}\""))
}

/// `START_REPLICATION [SLOT name] X/X TIMELINE n` (physical), as receivelog.c sends it.
pub fn start_replication(
    slot: Option<&str>,
    start: Lsn,
    timeline: TimelineId,
) -> Result<String, CommandError> {
    let mut s = String::from("START_REPLICATION ");
    if let Some(slot) = slot {
        validate_slot_name(slot)?;
        let _ = write!(s, "SLOT \"{slot}\" ");
    }
    let _ = write!(s, "{start} TIMELINE {}", timeline.0);
    Ok(s)
}

/// What `CREATE_REPLICATION_SLOT … LOGICAL` does with the slot's initial snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it: its name comes back in the result, and `SET TRANSACTION SNAPSHOT` imports it
    /// until the next command on the same connection.
    Export,
    /// Do not keep it.
    Nothing,
    /// Install it in the (REPEATABLE READ, read-only) transaction open on this connection.
    Use,
}

/// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL plugin …`: before PostgreSQL 15 with the
/// keywords `EXPORT_SNAPSHOT` / `NOEXPORT_SNAPSHOT` / `USE_SNAPSHOT` (15+ still accepts them), from
/// 15 with the parenthesized `(SNAPSHOT 'export')`, as the core subscriber sends them.
pub fn create_logical_slot(
    version: ServerVersion,
    name: &str,
    plugin: &str,
    temporary: bool,
    snapshot: SnapshotAction,
) -> Result<String, CommandError> {
    create_logical_slot_with(version, name, plugin, temporary, snapshot, false)
}

/// [`create_logical_slot`], optionally a failover slot (`FAILOVER`, PostgreSQL 17+: synced to
/// standbys that run `sync_replication_slots`; never temporary).
pub fn create_logical_slot_with(
    version: ServerVersion,
    name: &str,
    plugin: &str,
    temporary: bool,
    snapshot: SnapshotAction,
    failover: bool,
) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    if plugin.is_empty()
        || !plugin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(CommandError::InvalidValue {
            what: "output plugin name",
            reason: "use only letters, digits and underscores",
        });
    }
    if failover {
        version.requires("FAILOVER", 17)?;
        if temporary {
            return Err(CommandError::InvalidValue {
                what: "slot options",
                reason: "a temporary slot cannot be a failover slot",
            });
        }
    }
    let mut s = format!("CREATE_REPLICATION_SLOT \"{name}\"");
    if temporary {
        s.push_str(" TEMPORARY");
    }
    let _ = write!(s, " LOGICAL {plugin}");
    if version.uses_new_option_syntax() {
        let v = match snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Nothing => "nothing",
            SnapshotAction::Use => "use",
        };
        let _ = write!(s, " (SNAPSHOT '{v}'");
        if failover {
            s.push_str(", FAILOVER");
        }
        s.push(')');
    } else {
        s.push_str(match snapshot {
            SnapshotAction::Export => " EXPORT_SNAPSHOT",
            SnapshotAction::Nothing => " NOEXPORT_SNAPSHOT",
            SnapshotAction::Use => " USE_SNAPSHOT",
        });
    }
    Ok(s)
}

/// `ALTER_REPLICATION_SLOT name (FAILOVER true|false)` (PostgreSQL 17+).
pub fn alter_slot_failover(
    version: ServerVersion,
    name: &str,
    failover: bool,
) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    version.requires("ALTER_REPLICATION_SLOT", 17)?;
    Ok(format!(
        "ALTER_REPLICATION_SLOT \"{name}\" (FAILOVER {failover})"
    ))
}

/// The highest pgoutput `proto_version` a server accepts: 1 on 10–13, 2 (streaming) on 14,
/// 3 (two-phase) on 15, 4 (parallel streaming) from 16 — the ladder of the core subscriber.
pub fn max_pgoutput_proto_version(version: ServerVersion) -> u32 {
    match version.major() {
        ..=13 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    }
}

/// How pgoutput streams large in-progress transactions (option `streaming`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamingMode {
    /// Not at all: the publisher spills them and sends them at commit.
    #[default]
    Off,
    /// In chunks (protocol 2, 14+).
    On,
    /// In chunks, with abort positions for parallel apply (protocol 4, 16+).
    Parallel,
}

/// Options of `START_REPLICATION … LOGICAL` for pgoutput. Only what the server knows is sent:
/// an unknown option is an ERROR on every major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOutputOptions {
    pub proto_version: u32,
    /// Publication names, case kept (each is quoted as an identifier).
    pub publication_names: Vec<String>,
    /// Binary column values where the type has a send function (14+).
    pub binary: bool,
    /// `pg_logical_emit_message()` payloads (14+).
    pub messages: bool,
    pub streaming: StreamingMode,
    /// `origin 'none'` (16+): only changes that did not come through replication.
    pub origin_none: bool,
}

impl PgOutputOptions {
    /// Protocol version 1, text values: what every major from 10 to 18 accepts.
    pub fn v1(publications: &[&str]) -> Self {
        PgOutputOptions {
            proto_version: 1,
            publication_names: publications.iter().map(|p| p.to_string()).collect(),
            binary: false,
            messages: false,
            streaming: StreamingMode::Off,
            origin_none: false,
        }
    }
}

/// An identifier in double quotes, `"` doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `START_REPLICATION SLOT name LOGICAL X/X (proto_version '1', publication_names '"p"', …)`.
pub fn start_logical_replication(
    version: ServerVersion,
    slot: &str,
    start: Lsn,
    o: &PgOutputOptions,
) -> Result<String, CommandError> {
    validate_slot_name(slot)?;
    let major = version.major();
    let needs = |option: &'static str, needs: u32| version.requires(option, needs);
    let max = max_pgoutput_proto_version(version);
    if o.proto_version == 0 || o.proto_version > max {
        return Err(CommandError::InvalidValue {
            what: "pgoutput proto_version",
            reason: "the server does not support it (1 on 10-13, up to 2 on 14, 3 on 15, 4 on 16+)",
        });
    }
    if o.publication_names.is_empty()
        || o.publication_names
            .iter()
            .any(|p| p.is_empty() || p.contains('\0'))
    {
        return Err(CommandError::InvalidValue {
            what: "publication names",
            reason: "give at least one non-empty name",
        });
    }
    let names: Vec<String> = o.publication_names.iter().map(|p| quote_ident(p)).collect();
    let mut opts = vec![
        format!("proto_version '{}'", o.proto_version),
        format!("publication_names {}", quote_literal(&names.join(","))),
    ];
    if o.binary {
        needs("binary", 14)?;
        opts.push("binary 'true'".into());
    }
    if o.messages {
        needs("messages", 14)?;
        opts.push("messages 'true'".into());
    }
    match o.streaming {
        StreamingMode::Off => {}
        StreamingMode::On => {
            needs("streaming", 14)?;
            opts.push(if major >= 16 {
                "streaming 'on'".into()
            } else {
                "streaming 'true'".into()
            });
        }
        StreamingMode::Parallel => {
            needs("streaming 'parallel'", 16)?;
            opts.push("streaming 'parallel'".into());
        }
    }
    if o.streaming != StreamingMode::Off && o.proto_version < 2 {
        return Err(CommandError::InvalidValue {
            what: "pgoutput options",
            reason: "streaming needs proto_version 2 or later",
        });
    }
    if o.origin_none {
        needs("origin", 16)?;
        opts.push("origin 'none'".into());
    }
    Ok(format!(
        "START_REPLICATION SLOT \"{slot}\" LOGICAL {start} ({})",
        opts.join(", ")
    ))
}

/// Checkpoint mode for `BASE_BACKUP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    #[default]
    Fast,
    Spread,
}

/// Options of a `BASE_BACKUP` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    pub label: String,
    pub progress: bool,
    pub checkpoint: CheckpointMode,
    /// Include the needed WAL in the tar (`WAL`); walrelay streams WAL instead.
    pub include_wal: bool,
    /// Wait for WAL archiving at the end; false when the client streams WAL itself (pg_basebackup `-X`).
    pub wait_for_archive: bool,
    /// kB/s, 32 … 1048576.
    pub max_rate_kb: Option<u32>,
    /// Send a `tablespace_map` file instead of `pg_tblspc` symlinks.
    pub tablespace_map: bool,
    pub verify_checksums: bool,
    /// `MANIFEST 'yes'` (PG 13+), with this checksum algorithm (`CRC32C`, `SHA256`, …, `NONE`).
    pub manifest: Option<String>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "walrelay base backup".to_string(),
            progress: true,
            checkpoint: CheckpointMode::Fast,
            include_wal: false,
            wait_for_archive: false,
            max_rate_kb: None,
            tablespace_map: false,
            verify_checksums: true,
            manifest: Some("CRC32C".to_string()),
        }
    }
}

pub const MAX_RATE_MIN_KB: u32 = 32;
pub const MAX_RATE_MAX_KB: u32 = 1024 * 1024;

/// `BASE_BACKUP` in the syntax of the server's version. Options the server does not know are left out
/// (a manifest before 13, checksum verification switches before 11) — callers decide whether that is
/// acceptable.
pub fn base_backup(version: ServerVersion, o: &BaseBackupOptions) -> Result<String, CommandError> {
    if o.label.contains('\0') {
        return Err(CommandError::InvalidValue {
            what: "backup label",
            reason: "contains a NUL byte",
        });
    }
    if let Some(r) = o.max_rate_kb {
        if !(MAX_RATE_MIN_KB..=MAX_RATE_MAX_KB).contains(&r) {
            return Err(CommandError::InvalidValue {
                what: "max rate",
                reason: "must be between 32 kB/s and 1 GB/s",
            });
        }
    }
    let new = version.uses_new_option_syntax();
    let major = version.major();
    let mut opts: Vec<String> = Vec::new();
    let mut plain = |name: &str| opts.push(name.to_string());
    plain(&format!("LABEL {}", quote_literal(&o.label)));
    if o.progress {
        plain("PROGRESS");
    }
    if o.include_wal {
        plain("WAL");
    }
    if o.checkpoint == CheckpointMode::Fast {
        plain(if new { "CHECKPOINT 'fast'" } else { "FAST" });
    }
    if !o.wait_for_archive {
        plain(if new { "WAIT 0" } else { "NOWAIT" });
    }
    if let Some(r) = o.max_rate_kb {
        plain(&format!("MAX_RATE {r}"));
    }
    if o.tablespace_map {
        plain("TABLESPACE_MAP");
    }
    if !o.verify_checksums && major >= 11 {
        plain(if new {
            "VERIFY_CHECKSUMS 0"
        } else {
            "NOVERIFY_CHECKSUMS"
        });
    }
    if let Some(alg) = &o.manifest {
        if major >= 13 {
            if !alg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(CommandError::InvalidValue {
                    what: "manifest checksum algorithm",
                    reason: "use NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512",
                });
            }
            plain("MANIFEST 'yes'");
            plain(&format!("MANIFEST_CHECKSUMS {}", quote_literal(alg)));
        }
    }
    if new {
        plain("TARGET 'client'");
    }
    Ok(if new {
        format!("BASE_BACKUP ({})", opts.join(", "))
    } else {
        format!("BASE_BACKUP {}", opts.join(" "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_slots() {
        let v17 = ServerVersion(170004);
        assert_eq!(
            create_logical_slot_with(v17, "s", "pgoutput", false, SnapshotAction::Export, true)
                .unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER)"
        );
        assert!(matches!(
            create_logical_slot_with(
                ServerVersion(160000),
                "s",
                "pgoutput",
                false,
                SnapshotAction::Export,
                true
            ),
            Err(CommandError::Unsupported { needs: 17, .. })
        ));
        assert!(
            create_logical_slot_with(v17, "s", "pgoutput", true, SnapshotAction::Export, true)
                .is_err()
        );
        assert_eq!(
            alter_slot_failover(v17, "s", true).unwrap(),
            "ALTER_REPLICATION_SLOT \"s\" (FAILOVER true)"
        );
        assert!(alter_slot_failover(ServerVersion(160000), "s", true).is_err());
    }

    const V10: ServerVersion = ServerVersion(100023);
    const V11: ServerVersion = ServerVersion(110022);
    const V13: ServerVersion = ServerVersion(130023);
    const V15: ServerVersion = ServerVersion(150018);
    const V18: ServerVersion = ServerVersion(180004);

    #[test]
    fn parses_server_version() {
        let p = ServerVersion::parse_server_version;
        assert_eq!(
            p("15.4 (Debian 15.4-1.pgdg120+1)"),
            Some(ServerVersion(150004))
        );
        assert_eq!(p("10.23"), Some(ServerVersion(100023)));
        assert_eq!(p("17beta1"), Some(ServerVersion(170000)));
        assert_eq!(p("18devel"), Some(ServerVersion(180000)));
        assert_eq!(p("9.6.24"), Some(ServerVersion(90624)));
        assert_eq!(p(""), None);
        assert_eq!(p("x"), None);
        assert_eq!(ServerVersion(150018).major(), 15);
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("walrelay_1").is_ok());
        for bad in [
            "",
            "Upper",
            "has-dash",
            "sp ace",
            "q\"uote",
            &"a".repeat(64),
        ] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_slot_per_version() {
        assert_eq!(
            create_physical_slot(V10, "s", false, true).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" PHYSICAL RESERVE_WAL"
        );
        assert_eq!(
            create_physical_slot(V15, "s", true, true).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            create_physical_slot(V15, "s", false, false).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" PHYSICAL"
        );
        assert!(create_physical_slot(V15, "Bad", false, false).is_err());
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            drop_slot("s", true).unwrap(),
            "DROP_REPLICATION_SLOT \"s\" WAIT"
        );
        assert_eq!(
            drop_slot("s", false).unwrap(),
            "DROP_REPLICATION_SLOT \"s\""
        );
        assert_eq!(
            read_replication_slot(V15, "s").unwrap(),
            "READ_REPLICATION_SLOT \"s\""
        );
        assert!(read_replication_slot(ServerVersion(140010), "s").is_err());
        assert_eq!(
            start_replication(Some("s"), Lsn(0x1_0300_0000), TimelineId(2)).unwrap(),
            "START_REPLICATION SLOT \"s\" 1/3000000 TIMELINE 2"
        );
        assert_eq!(
            start_replication(None, Lsn(0x300_0000), TimelineId(1)).unwrap(),
            "START_REPLICATION 0/3000000 TIMELINE 1"
        );
        assert_eq!(show("wal_segment_size").unwrap(), "SHOW wal_segment_size");
        assert!(show("x; DROP").is_err());
        assert_eq!(timeline_history(TimelineId(3)), "TIMELINE_HISTORY 3");
    }

    #[test]
    fn logical_slot_per_version() {
        assert_eq!(
            create_logical_slot(V10, "walrelay_x", "pgoutput", false, SnapshotAction::Export)
                .unwrap(),
            "CREATE_REPLICATION_SLOT \"walrelay_x\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_logical_slot(V13, "s", "pgoutput", true, SnapshotAction::Nothing).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_logical_slot(V15, "s", "pgoutput", true, SnapshotAction::Export).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_logical_slot(V18, "s", "pgoutput", false, SnapshotAction::Use).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'use')"
        );
        assert!(create_logical_slot(V15, "s", "pg output", false, SnapshotAction::Use).is_err());
        assert!(create_logical_slot(V15, "S", "pgoutput", false, SnapshotAction::Use).is_err());
    }

    #[test]
    fn start_logical_replication_options() {
        let o = PgOutputOptions::v1(&["walrelay_x", "My\"Pub"]);
        assert_eq!(
            start_logical_replication(V10, "walrelay_x", Lsn(0x1_0000_0010), &o).unwrap(),
            "START_REPLICATION SLOT \"walrelay_x\" LOGICAL 1/10 (proto_version '1', publication_names '\"walrelay_x\",\"My\"\"Pub\"')"
        );
        let mut o = PgOutputOptions::v1(&["p"]);
        o.binary = true;
        assert!(matches!(
            start_logical_replication(V13, "s", Lsn(0), &o),
            Err(CommandError::Unsupported { needs: 14, .. })
        ));
        o.proto_version = 2;
        o.streaming = StreamingMode::On;
        assert_eq!(
            start_logical_replication(ServerVersion(140010), "s", Lsn(0), &o).unwrap(),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '2', publication_names '\"p\"', binary 'true', streaming 'true')"
        );
        o.proto_version = 1;
        assert!(
            start_logical_replication(V18, "s", Lsn(0), &o).is_err(),
            "streaming needs 2"
        );
        o.proto_version = 5;
        assert!(start_logical_replication(V18, "s", Lsn(0), &o).is_err());
        let mut o = PgOutputOptions::v1(&["p"]);
        o.origin_none = true;
        assert!(start_logical_replication(V15, "s", Lsn(0), &o).is_err());
        assert!(start_logical_replication(V18, "s", Lsn(0), &o)
            .unwrap()
            .ends_with("origin 'none')"));
        assert!(start_logical_replication(V18, "s", Lsn(0), &PgOutputOptions::v1(&[])).is_err());
        assert_eq!(max_pgoutput_proto_version(V10), 1);
        assert_eq!(max_pgoutput_proto_version(V15), 3);
        assert_eq!(max_pgoutput_proto_version(V18), 4);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
    }

    #[test]
    fn base_backup_legacy_10() {
        let o = BaseBackupOptions {
            label: "l".into(),
            max_rate_kb: Some(1024),
            verify_checksums: false,
            ..Default::default()
        };
        assert_eq!(
            base_backup(V10, &o).unwrap(),
            "BASE_BACKUP LABEL 'l' PROGRESS FAST NOWAIT MAX_RATE 1024"
        );
    }

    #[test]
    fn base_backup_legacy_11_13() {
        let o = BaseBackupOptions {
            label: "l".into(),
            verify_checksums: false,
            ..Default::default()
        };
        assert_eq!(
            base_backup(V11, &o).unwrap(),
            "BASE_BACKUP LABEL 'l' PROGRESS FAST NOWAIT NOVERIFY_CHECKSUMS"
        );
        let o = BaseBackupOptions {
            label: "l".into(),
            ..Default::default()
        };
        assert_eq!(
            base_backup(V13, &o).unwrap(),
            "BASE_BACKUP LABEL 'l' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
    }

    #[test]
    fn base_backup_new_syntax() {
        let o = BaseBackupOptions {
            label: "it's".into(),
            checkpoint: CheckpointMode::Spread,
            verify_checksums: false,
            manifest: Some("SHA256".into()),
            ..Default::default()
        };
        assert_eq!(
            base_backup(V15, &o).unwrap(),
            "BASE_BACKUP (LABEL 'it''s', PROGRESS, WAIT 0, VERIFY_CHECKSUMS 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA256', TARGET 'client')"
        );
        let o = BaseBackupOptions::default();
        assert_eq!(
            base_backup(V18, &o).unwrap(),
            "BASE_BACKUP (LABEL 'walrelay base backup', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TARGET 'client')"
        );
    }

    #[test]
    fn base_backup_rejects_bad_values() {
        let o = BaseBackupOptions {
            max_rate_kb: Some(1),
            ..Default::default()
        };
        assert!(base_backup(V15, &o).is_err());
        let o = BaseBackupOptions {
            manifest: Some("SHA256'; x".into()),
            ..Default::default()
        };
        assert!(base_backup(V15, &o).is_err());
    }
}
