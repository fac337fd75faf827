//! The descriptor of a stored base backup (`descriptor.json`), and the names of a backup's
//! objects. Pure: no IO.
//!
//! ```text
//! ROOT/                         a directory archive itself, or SYSID/ in object storage
//!   backups/
//!     LABEL/
//!       started.json            written first, with put-if-absent: claims the label
//!       base.tar.zst            the data directory's tar stream, as the server sent it, compressed
//!       16385.tar.zst           one per tablespace (its OID)
//!       backup_manifest         verbatim (PostgreSQL 13+)
//!       wal/000000010000000000000004.zst   the WAL from the backup's start to its end
//!       descriptor.json         written LAST: its presence means the backup is complete
//! ```
//!
//! A backup without `descriptor.json` is incomplete (running, or failed): it is never restored
//! and `backup list` shows it as such.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use walrelay_protocol::Lsn;

/// Directory of the backups under an archive's root.
pub const BACKUPS_DIR: &str = "backups";
/// The completion marker, written last.
pub const DESCRIPTOR: &str = "descriptor.json";
/// Written first: claims the label.
pub const STARTED: &str = "started.json";
/// The server's backup manifest, verbatim.
pub const MANIFEST: &str = "backup_manifest";
/// Sub-directory of a backup holding its own WAL.
pub const WAL_DIR: &str = "wal";
/// The descriptor's format version.
pub const FORMAT_VERSION: u32 = 1;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 100;

/// What a stored object of a backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// The data directory's tar stream.
    Base,
    /// A tablespace's tar stream.
    Tablespace,
    /// A WAL segment or history file (compressed like the tar streams).
    Wal,
}

/// One stored object of a backup (not the manifest or the descriptor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The name relative to the backup's directory (`base.tar.zst`, `wal/NAME.zst`).
    pub name: String,
    pub kind: ObjectKind,
    /// Tablespaces: the OID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_oid: Option<u32>,
    /// Tablespaces: the directory on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_location: Option<String>,
    /// Bytes stored (compressed).
    pub stored_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// SHA-256 of the stored bytes, lower-case hex.
    pub sha256: String,
}

/// The content of `descriptor.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDescriptor {
    pub format_version: u32,
    pub label: String,
    pub system_identifier: u64,
    /// `server_version_num`.
    pub server_version: u32,
    pub wal_segment_size: u32,
    pub start_lsn: Lsn,
    pub start_timeline: u32,
    /// The WAL position recovery must reach for the backup to be consistent.
    pub end_lsn: Lsn,
    pub end_timeline: u32,
    /// When the backup started and ended (RFC 3339, UTC, walrelay's clock).
    pub start_time: String,
    pub end_time: String,
    /// `none`, `gzip`, `lz4` or `zstd`: how the objects are compressed.
    pub compression: String,
    /// Whether `backup_manifest` is stored (PostgreSQL 13+).
    pub manifest: bool,
    /// The base and tablespace tar streams, then the WAL.
    pub objects: Vec<StoredObject>,
    /// The next transaction ID (epoch << 32 | xid) of the backup's `global/pg_control`: a
    /// transaction assigned from it on committed after the backup began. Absent in backups
    /// stored by walrelay before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_xid: Option<u64>,
}

/// Why a descriptor or a label is not acceptable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("invalid backup label {0:?}: use 1 to 100 letters, digits, `.`, `_` and `-`, not starting with `.`")]
    BadLabel(String),
    #[error("descriptor of backup {label:?} is not valid: {reason}")]
    Invalid { label: String, reason: String },
}

impl BackupDescriptor {
    /// The objects a restore of it needs, relative to its directory: what it lists, and its
    /// manifest when it has one.
    pub fn required_objects(&self) -> impl Iterator<Item = &str> {
        self.objects
            .iter()
            .map(|o| o.name.as_str())
            .chain(self.manifest.then_some(MANIFEST))
    }

    /// Parses and checks a descriptor read from `LABEL/descriptor.json`.
    pub fn parse(label: &str, text: &[u8]) -> Result<BackupDescriptor, DescriptorError> {
        let invalid = |reason: String| DescriptorError::Invalid {
            label: label.to_string(),
            reason,
        };
        let d: BackupDescriptor =
            serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        if d.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {} (this walrelay reads {FORMAT_VERSION}): use a newer walrelay",
                d.format_version
            )));
        }
        if d.label != label {
            return Err(invalid(format!("it names the label {:?}", d.label)));
        }
        if d.end_lsn < d.start_lsn {
            return Err(invalid("it ends before it starts".into()));
        }
        if !d.objects.iter().any(|o| o.kind == ObjectKind::Base) {
            return Err(invalid("it lists no base.tar".into()));
        }
        for o in &d.objects {
            if o.name.is_empty()
                || o.name.starts_with('/')
                || o.name
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(invalid(format!("object name {:?}", o.name)));
            }
            if o.sha256.len() != 64 || !o.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("SHA-256 of {}", o.name)));
            }
            if o.kind == ObjectKind::Tablespace && o.tablespace_oid.is_none() {
                return Err(invalid(format!("tablespace {} without an OID", o.name)));
            }
        }
        Ok(d)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn server_major(&self) -> u32 {
        self.server_version / 10000
    }

    /// The stored bytes of every object.
    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.stored_bytes).sum()
    }

    /// The bytes of the tar streams before compression (about the data directory's size).
    pub fn data_bytes(&self) -> u64 {
        self.objects
            .iter()
            .filter(|o| o.kind != ObjectKind::Wal)
            .map(|o| o.raw_bytes)
            .sum()
    }

    /// End time as seconds since the epoch (with fractions).
    pub fn end_seconds(&self) -> Option<f64> {
        parse_rfc3339(&self.end_time)
    }
}

/// Checks a label (a directory and object name component).
pub fn validate_label(label: &str) -> Result<(), DescriptorError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !label.starts_with('.')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DescriptorError::BadLabel(label.to_string()))
    }
}

/// The default label: the start time, `YYYYMMDDTHHMMSSZ` (sorts by time).
pub fn default_label(unix_seconds: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(unix_seconds: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 in UTC with the clock's fractions: a backup's end time is compared with recovery
/// target times, which have microseconds.
pub fn rfc3339_precise(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An RFC 3339 time cut to whole seconds (rounded down), for listings; text that is not one is
/// returned as it is.
pub fn whole_seconds(text: &str) -> String {
    parse_rfc3339(text).map_or_else(|| text.to_string(), |s| rfc3339(s.floor() as i64))
}

fn seconds(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64 + f64::from(t.nanosecond()) / 1e9
}

/// Seconds since the epoch (with fractions) of an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(seconds)
}

/// A recovery target time as PostgreSQL's `recovery_target_time` reads it — `2024-06-01
/// 12:00:00+00`, with optional fractions, `T` or a space, an offset `Z`, `+HH`, `+HHMM` or
/// `+HH:MM` — as seconds since the epoch (fractions dropped: used only to pick a backup that ends
/// before it). A time without an offset is refused: the server would read it in its own time zone,
/// which walrelay cannot know.
pub fn parse_target_time(text: &str) -> Result<f64, String> {
    let normalized = target_time_for_postgres(text);
    let t = normalized.as_str();
    let fix = |reason: &str| {
        format!("invalid target time {text:?}: {reason}; give it like 2024-06-01 12:00:00+00")
    };
    if t.len() < 19 {
        return Err(fix("too short"));
    }
    let (date, rest) = t.split_at(10);
    let rest = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('T'))
        .ok_or_else(|| fix("expected a space or T after the date"))?;
    let (clock, mut zone) = rest.split_at(rest.find(['+', '-', 'Z', 'z']).unwrap_or(rest.len()));
    zone = zone.trim();
    if zone.is_empty() {
        return Err(fix("no UTC offset"));
    }
    let zone = match zone {
        "Z" | "z" => "Z".to_string(),
        z => {
            let (sign, digits) = z.split_at(1);
            let digits: String = digits.chars().filter(|c| *c != ':').collect();
            match digits.len() {
                2 => format!("{sign}{digits}:00"),
                4 => format!("{sign}{}:{}", &digits[..2], &digits[2..]),
                _ => return Err(fix("bad UTC offset")),
            }
        }
    };
    let whole = format!("{date}T{}{zone}", clock.trim());
    let parsed =
        time::OffsetDateTime::parse(&whole, &time::format_description::well_known::Rfc3339)
            .map_err(|e| fix(&e.to_string()))?;
    Ok(seconds(parsed))
}

/// A target time as `recovery_target_time` takes it on every major: PostgreSQL 12 and later
/// refuse a `Z` (or `z`) zone — "invalid value for parameter" at startup, after a restore that
/// looked done — so it becomes `+00`, as does a ` UTC` / ` GMT` suffix.
pub fn target_time_for_postgres(text: &str) -> String {
    let t = text.trim();
    for suffix in ["Z", "z", " UTC", " utc", " GMT", " gmt"] {
        if let Some(rest) = t.strip_suffix(suffix) {
            return format!("{}+00", rest.trim_end());
        }
    }
    t.to_string()
}

/// Object names inside an archive for the backups under `root` (`""` for a directory archive,
/// `SYSID/` in object storage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupNames {
    root: String,
}

impl BackupNames {
    /// `root` is empty or ends with `/`.
    pub fn new(root: impl Into<String>) -> BackupNames {
        let mut root = root.into();
        if !root.is_empty() && !root.ends_with('/') {
            root.push('/');
        }
        BackupNames { root }
    }

    /// `ROOT/backups/`.
    pub fn backups_prefix(&self) -> String {
        format!("{}{BACKUPS_DIR}/", self.root)
    }

    /// `ROOT/backups/LABEL/`.
    pub fn backup_prefix(&self, label: &str) -> String {
        format!("{}{label}/", self.backups_prefix())
    }

    /// `ROOT/backups/LABEL/NAME`.
    pub fn object(&self, label: &str, name: &str) -> String {
        format!("{}{name}", self.backup_prefix(label))
    }
}

/// The name of a WAL file of a backup inside its directory: `wal/NAME` plus the compression's
/// suffix.
pub fn wal_object_name(file_name: &str, suffix: &str) -> String {
    format!("{WAL_DIR}/{file_name}{suffix}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> BackupDescriptor {
        BackupDescriptor {
            format_version: FORMAT_VERSION,
            label: "b1".into(),
            system_identifier: 7312345678901234567,
            server_version: 150004,
            wal_segment_size: 16 << 20,
            start_lsn: Lsn(0x3000028),
            start_timeline: 1,
            end_lsn: Lsn(0x3000100),
            end_timeline: 1,
            start_time: rfc3339(1_700_000_000),
            end_time: rfc3339(1_700_000_060),
            compression: "zstd".into(),
            manifest: true,
            objects: vec![
                StoredObject {
                    name: "base.tar.zst".into(),
                    kind: ObjectKind::Base,
                    tablespace_oid: None,
                    tablespace_location: None,
                    stored_bytes: 10,
                    raw_bytes: 100,
                    sha256: "a".repeat(64),
                },
                StoredObject {
                    name: "wal/000000010000000000000003.zst".into(),
                    kind: ObjectKind::Wal,
                    tablespace_oid: None,
                    tablespace_location: None,
                    stored_bytes: 5,
                    raw_bytes: 16 << 20,
                    sha256: "b".repeat(64),
                },
            ],
            next_xid: Some(751),
        }
    }

    #[test]
    fn descriptor_round_trips_and_is_checked() {
        let d = sample();
        let text = d.to_json();
        assert_eq!(BackupDescriptor::parse("b1", &text).unwrap(), d);
        // A descriptor stored before next_xid was recorded still reads.
        let mut older: serde_json::Value = serde_json::from_slice(&text).unwrap();
        older.as_object_mut().unwrap().remove("next_xid");
        let older = BackupDescriptor::parse("b1", older.to_string().as_bytes()).unwrap();
        assert_eq!(older.next_xid, None);
        assert!(String::from_utf8_lossy(&text).contains("\"start_lsn\": \"0/3000028\""));
        assert_eq!(d.stored_bytes(), 15);
        assert_eq!(d.data_bytes(), 100);
        assert_eq!(d.end_seconds(), Some(1_700_000_060.0));
        let precise = rfc3339_precise(
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_060_250_000),
        );
        assert_eq!(precise, "2023-11-14T22:14:20.25Z");
        assert_eq!(parse_rfc3339(&precise), Some(1_700_000_060.25));
        assert_eq!(whole_seconds(&precise), "2023-11-14T22:14:20Z");
        assert_eq!(whole_seconds("not a time"), "not a time");
        assert_eq!(d.server_major(), 15);
        // another label, garbage, bad names, bad checksums, no base
        assert!(BackupDescriptor::parse("b2", &text).is_err());
        assert!(BackupDescriptor::parse("b1", b"").is_err());
        assert!(BackupDescriptor::parse("b1", b"{\"format_version\":1}").is_err());
        for (i, bad) in ["../x", "/abs", "a//b", ""].iter().enumerate() {
            let mut d = sample();
            d.objects[i % 2].name = bad.to_string();
            assert!(
                BackupDescriptor::parse("b1", &d.to_json()).is_err(),
                "{bad}"
            );
        }
        let mut d2 = sample();
        d2.objects[0].sha256 = "xyz".into();
        assert!(BackupDescriptor::parse("b1", &d2.to_json()).is_err());
        let mut d3 = sample();
        d3.objects.remove(0);
        assert!(BackupDescriptor::parse("b1", &d3.to_json()).is_err());
        let mut d4 = sample();
        d4.format_version = 2;
        let e = BackupDescriptor::parse("b1", &d4.to_json()).unwrap_err();
        assert!(e.to_string().contains("newer walrelay"), "{e}");
    }

    #[test]
    fn labels() {
        for ok in ["b1", "20240601T120000Z", "nightly-1.2_x"] {
            validate_label(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(101)] {
            assert!(validate_label(bad).is_err(), "{bad}");
        }
        assert_eq!(default_label(1_717_243_200), "20240601T120000Z");
        validate_label(&default_label(0)).unwrap();
    }

    #[test]
    fn target_times() {
        let noon = 1_717_243_200.0;
        for ok in [
            "2024-06-01 12:00:00+00",
            "2024-06-01T12:00:00Z",
            "2024-06-01 14:00:00+02:00",
            "2024-06-01 14:00:00+0200",
            "2024-06-01 10:00:00-02",
            "2024-06-01 12:00:00 UTC",
            "2024-06-01T12:00:00z",
        ] {
            assert_eq!(parse_target_time(ok).unwrap(), noon, "{ok}");
        }
        // What PostgreSQL 12+ is given: never a Z zone (refused at startup there).
        assert_eq!(
            target_time_for_postgres("2024-06-01T12:00:00Z"),
            "2024-06-01T12:00:00+00"
        );
        assert_eq!(
            target_time_for_postgres("2024-06-01 12:00:00 UTC"),
            "2024-06-01 12:00:00+00"
        );
        assert_eq!(
            target_time_for_postgres("2024-06-01 12:00:00+02"),
            "2024-06-01 12:00:00+02"
        );
        let frac = parse_target_time("2024-06-01 12:00:00.25+00").unwrap();
        assert!((frac - noon - 0.25).abs() < 1e-6);
        for bad in [
            "",
            "2024-06-01",
            "2024-06-01 12:00:00",
            "2024-13-01 12:00:00+00",
            "2024-06-01 12:00:00+123",
            "yesterday",
        ] {
            let e = parse_target_time(bad).unwrap_err();
            assert!(e.contains("like 2024-06-01 12:00:00+00"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        let n = BackupNames::new("7312345678901234567");
        assert_eq!(
            n.object("b1", DESCRIPTOR),
            "7312345678901234567/backups/b1/descriptor.json"
        );
        let d = BackupNames::new("");
        assert_eq!(d.backups_prefix(), "backups/");
        assert_eq!(
            d.object("b1", &wal_object_name("000000010000000000000003", ".zst")),
            "backups/b1/wal/000000010000000000000003.zst"
        );
    }
}
