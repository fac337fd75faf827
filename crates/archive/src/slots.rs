//! Replication slots that a relay (`walrelay serve`) keeps for its downstreams, stored in the
//! archive directory as `walrelay.slots`.
//!
//! A slot is a name and the position its consumer last confirmed as flushed (`restart_lsn`): the
//! WAL from there on must stay in the archive, exactly as a slot on a primary keeps WAL in
//! `pg_wal`. [`prune`](crate::prune()) honours it: nothing at or after the oldest slot's segment is
//! removed, whatever else it is asked. A slot created without reserving WAL (`pg_receivewal
//! --create-slot`) has no restart position and holds nothing until its consumer reports one.
//! Temporary slots live in the relay's memory only.
//!
//! The file is JSON, replaced atomically (temporary name, fsync, rename, directory fsync); a
//! missing file means no slots.

use std::path::Path;

use serde::{Deserialize, Serialize};
use walrelay_durable::{self as durable, Owner};
use walrelay_protocol::{Lsn, TimelineId};

use crate::error::{ArchiveError, Result};

/// The slot file's name in the archive directory.
pub const SLOTS_FILE_NAME: &str = "walrelay.slots";
/// Readable by the archive's owner only: slot names are not secret, but nothing else needs them.
const SLOTS_FILE_MODE: u32 = 0o600;
const FORMAT_VERSION: u32 = 1;

/// One persistent slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentSlot {
    pub name: String,
    /// The oldest WAL the slot's consumer still needs; `None` until it reported a position.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`, as READ_REPLICATION_SLOT reports it.
    #[serde(default)]
    pub restart_timeline: Option<TimelineId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SlotsFile {
    version: u32,
    slots: Vec<PersistentSlot>,
}

/// The slots stored in `dir` (none when the file does not exist).
pub fn read_slots(dir: &Path) -> Result<Vec<PersistentSlot>> {
    let path = dir.join(SLOTS_FILE_NAME);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ArchiveError::io("read", &path, e)),
    };
    let file: SlotsFile = serde_json::from_slice(&text)
        .map_err(|e| ArchiveError::corrupt(&path, format!("not a slot list: {e}")))?;
    if file.version != FORMAT_VERSION {
        return Err(ArchiveError::corrupt(
            &path,
            format!(
                "slot list version {} (this walrelay reads {FORMAT_VERSION})",
                file.version
            ),
        ));
    }
    Ok(file.slots)
}

/// Replaces the slot list of `dir` durably.
pub fn write_slots(dir: &Path, slots: &[PersistentSlot]) -> Result<()> {
    let file = SlotsFile {
        version: FORMAT_VERSION,
        slots: slots.to_vec(),
    };
    let mut text = serde_json::to_vec_pretty(&file)
        .map_err(|e| ArchiveError::io("encode the slot list for", dir, std::io::Error::other(e)))?;
    text.push(b'\n');
    durable::write_file_atomic(
        &dir.join(SLOTS_FILE_NAME),
        &text,
        SLOTS_FILE_MODE,
        Owner::of_dir_if_root(dir),
    )?;
    Ok(())
}

/// The oldest position any slot of `dir` still needs, if any slot holds WAL.
pub fn slot_floor(dir: &Path) -> Result<Option<Lsn>> {
    Ok(read_slots(dir)?.iter().filter_map(|s| s.restart_lsn).min())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_floor() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_slots(d.path()).unwrap(), vec![]);
        assert_eq!(slot_floor(d.path()).unwrap(), None);
        let slots = vec![
            PersistentSlot {
                name: "a".into(),
                restart_lsn: Some(Lsn(0x300_0000)),
                restart_timeline: Some(TimelineId(1)),
            },
            PersistentSlot {
                name: "b".into(),
                restart_lsn: None,
                restart_timeline: None,
            },
            PersistentSlot {
                name: "c".into(),
                restart_lsn: Some(Lsn(0x200_0000)),
                restart_timeline: Some(TimelineId(1)),
            },
        ];
        write_slots(d.path(), &slots).unwrap();
        assert_eq!(read_slots(d.path()).unwrap(), slots);
        assert_eq!(slot_floor(d.path()).unwrap(), Some(Lsn(0x200_0000)));
        let text = std::fs::read_to_string(d.path().join(SLOTS_FILE_NAME)).unwrap();
        assert!(text.contains("\"restart_lsn\": \"0/2000000\""), "{text}");
        std::fs::write(d.path().join(SLOTS_FILE_NAME), "{ not json").unwrap();
        assert!(read_slots(d.path()).unwrap_err().is_corruption());
        std::fs::write(
            d.path().join(SLOTS_FILE_NAME),
            r#"{"version":9,"slots":[]}"#,
        )
        .unwrap();
        assert!(read_slots(d.path()).is_err());
    }
}
