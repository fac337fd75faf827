//! The relay's replication slots: what `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`,
//! `READ_REPLICATION_SLOT` and `START_REPLICATION SLOT` act on.
//!
//! A slot here is PostgreSQL's physical slot, kept by the relay: a name, the position its
//! consumer last confirmed as flushed (`restart_lsn`), and the session using it. Persistent
//! slots are written to the archive (`walrelay.slots`, [`walrelay_archive::write_slots`]) on
//! creation and drop, and as they advance — at most once per segment each, since the position
//! only serves as `walrelay prune`'s floor, which keeps whole segments; the file is also written
//! when the relay stops. Temporary slots (pg_basebackup's `-X stream`, a walreceiver's
//! `wal_receiver_create_temp_slot`) are dropped when their session ends.
//!
//! Errors carry PostgreSQL's SQLSTATE and wording (`slot.c`), so that clients react as they do
//! to a server: pg_receivewal `--create-slot --if-not-exists` reads 42710 as success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;
use tracing::warn;
use walrelay_archive::{read_slots, write_slots, PersistentSlot};
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};

/// Why a slot operation failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("replication slot \"{0}\" already exists")]
    Exists(String),
    #[error("replication slot \"{0}\" does not exist")]
    Missing(String),
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active { name: String, pid: i32 },
    #[error("all replication slots are in use")]
    Full,
    #[error("replication slot name \"{0}\" contains invalid character")]
    InvalidName(String),
    #[error("could not save the replication slots: {0}")]
    Save(String),
}

impl SlotError {
    /// PostgreSQL's SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SlotError::Exists(_) => "42710",
            SlotError::Missing(_) => "42704",
            SlotError::Active { .. } => "55006",
            SlotError::Full => "53400",
            SlotError::InvalidName(_) => "42602",
            SlotError::Save(_) => "58030",
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotError::InvalidName(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            SlotError::Full => {
                Some("Free one or increase walrelay serve --max-replication-slots.")
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    temporary_of: Option<i32>,
    restart: Option<(TimelineId, Lsn)>,
    active_pid: Option<i32>,
    /// The segment of the restart position last written to the file.
    saved_segment: Option<u64>,
}

/// The slots of one relay.
#[derive(Debug)]
pub struct SlotRegistry {
    dir: PathBuf,
    seg: WalSegmentSize,
    max: usize,
    slots: Mutex<BTreeMap<String, Slot>>,
}

/// `ReplicationSlotValidateName`: 1 to 63 bytes of `[a-z0-9_]`.
pub fn validate_slot_name(name: &str) -> Result<(), SlotError> {
    walrelay_protocol::command::validate_slot_name(name)
        .map_err(|_| SlotError::InvalidName(name.to_string()))
}

impl SlotRegistry {
    /// The persistent slots of the archive `dir`.
    pub fn load(
        dir: &Path,
        seg: WalSegmentSize,
        max: usize,
    ) -> Result<SlotRegistry, walrelay_archive::ArchiveError> {
        let slots = read_slots(dir)?
            .into_iter()
            .map(|p| {
                let restart = p
                    .restart_lsn
                    .map(|l| (p.restart_timeline.unwrap_or(TimelineId::FIRST), l));
                (
                    p.name,
                    Slot {
                        temporary_of: None,
                        restart,
                        active_pid: None,
                        saved_segment: restart.map(|(_, l)| seg.segno(l).0),
                    },
                )
            })
            .collect();
        Ok(SlotRegistry {
            dir: dir.to_path_buf(),
            seg,
            max,
            slots: Mutex::new(slots),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the persistent slots (under the lock, so writes never cross).
    fn save(&self, slots: &BTreeMap<String, Slot>) -> Result<(), SlotError> {
        let list: Vec<PersistentSlot> = slots
            .iter()
            .filter(|(_, s)| s.temporary_of.is_none())
            .map(|(name, s)| PersistentSlot {
                name: name.clone(),
                restart_lsn: s.restart.map(|(_, l)| l),
                restart_timeline: s.restart.map(|(t, _)| t),
            })
            .collect();
        write_slots(&self.dir, &list).map_err(|e| SlotError::Save(e.to_string()))
    }

    /// CREATE_REPLICATION_SLOT: `reserve` is where WAL is reserved from (RESERVE_WAL), if asked.
    pub fn create(
        &self,
        name: &str,
        temporary_of: Option<i32>,
        reserve: Option<(TimelineId, Lsn)>,
    ) -> Result<(), SlotError> {
        validate_slot_name(name)?;
        let mut slots = self.lock();
        if slots.contains_key(name) {
            return Err(SlotError::Exists(name.to_string()));
        }
        if slots.len() >= self.max {
            return Err(SlotError::Full);
        }
        slots.insert(
            name.to_string(),
            Slot {
                temporary_of,
                restart: reserve,
                active_pid: None,
                saved_segment: reserve.map(|(_, l)| self.seg.segno(l).0),
            },
        );
        if temporary_of.is_none() {
            if let Err(e) = self.save(&slots) {
                slots.remove(name);
                return Err(e);
            }
        }
        Ok(())
    }

    /// DROP_REPLICATION_SLOT by session `by`. A slot another session streams from, or another
    /// session's temporary slot (held by it until it ends, as on a server: a running
    /// pg_basebackup's), is refused.
    pub fn drop_slot(&self, name: &str, by: i32) -> Result<(), SlotError> {
        let mut slots = self.lock();
        let slot = slots
            .get(name)
            .ok_or_else(|| SlotError::Missing(name.to_string()))?;
        if let Some(pid) = Self::held_by_other(slot, by) {
            return Err(SlotError::Active {
                name: name.to_string(),
                pid,
            });
        }
        let persistent = slot.temporary_of.is_none();
        let removed = slots.remove(name);
        if persistent {
            if let Err(e) = self.save(&slots) {
                if let Some(s) = removed {
                    slots.insert(name.to_string(), s);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// START_REPLICATION SLOT: marks the slot in use by `pid`.
    pub fn acquire(&self, name: &str, pid: i32) -> Result<(), SlotError> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| SlotError::Missing(name.to_string()))?;
        match slot.active_pid {
            Some(other) if other != pid => Err(SlotError::Active {
                name: name.to_string(),
                pid: other,
            }),
            _ => {
                slot.active_pid = Some(pid);
                Ok(())
            }
        }
    }

    pub fn release(&self, name: &str, pid: i32) {
        if let Some(s) = self.lock().get_mut(name) {
            if s.active_pid == Some(pid) {
                s.active_pid = None;
            }
        }
    }

    /// The session other than `by` that holds `slot`: streams from it, or made it temporary.
    fn held_by_other(slot: &Slot, by: i32) -> Option<i32> {
        slot.active_pid
            .or(slot.temporary_of)
            .filter(|&pid| pid != by)
    }

    /// Whether a session other than `by` holds the slot (see [`SlotRegistry::drop_slot`]).
    pub fn held_by_another(&self, name: &str, by: i32) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|s| Self::held_by_other(s, by).is_some())
    }

    pub fn is_active(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|s| s.active_pid.is_some())
    }

    /// The consumer confirmed `flush` on `timeline`: the slot's restart position moves there
    /// (never back). Written to the archive when it enters a new segment.
    pub fn advance(&self, name: &str, timeline: TimelineId, flush: Lsn) {
        if !flush.is_valid() {
            return;
        }
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        if slot.restart.is_some_and(|(_, l)| l >= flush) {
            return;
        }
        slot.restart = Some((timeline, flush));
        let segno = self.seg.segno(flush).0;
        if slot.temporary_of.is_some() || slot.saved_segment == Some(segno) {
            return;
        }
        slot.saved_segment = Some(segno);
        if let Err(e) = self.save(&slots) {
            warn!(slot = name, error = %e, "could not save the slot's new position; it is kept in memory and saved with the next change");
        }
    }

    /// What READ_REPLICATION_SLOT reports: `None` for a slot that does not exist.
    pub fn read(&self, name: &str) -> Option<Option<(TimelineId, Lsn)>> {
        self.lock().get(name).map(|s| s.restart)
    }

    /// The session `pid` ended: its temporary slots go, its active slots are released.
    pub fn session_ended(&self, pid: i32) {
        let mut slots = self.lock();
        slots.retain(|_, s| s.temporary_of != Some(pid));
        for s in slots.values_mut() {
            if s.active_pid == Some(pid) {
                s.active_pid = None;
            }
        }
    }

    /// Writes the persistent slots' current positions (at shutdown).
    pub fn flush(&self) -> Result<(), SlotError> {
        let slots = self.lock();
        self.save(&slots)
    }

    /// Names and restart positions, for logs and metrics.
    pub fn list(&self) -> Vec<(String, bool, Option<Lsn>)> {
        self.lock()
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.temporary_of.is_some(),
                    s.restart.map(|(_, l)| l),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    #[test]
    fn create_acquire_advance_drop_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let r = SlotRegistry::load(d.path(), seg(), 3).unwrap();
        let t1 = TimelineId(1);
        r.create("standby1", None, Some((t1, Lsn(0x10_0000))))
            .unwrap();
        assert_eq!(
            r.create("standby1", None, None),
            Err(SlotError::Exists("standby1".into()))
        );
        assert_eq!(
            r.create("Bad-Name", None, None).unwrap_err().sqlstate(),
            "42602"
        );
        r.create("archiver", None, None).unwrap();
        r.create("pg_basebackup_7", Some(7), Some((t1, Lsn(1))))
            .unwrap();
        assert_eq!(r.create("one_more", None, None), Err(SlotError::Full));
        assert_eq!(
            read_slots(d.path()).unwrap().len(),
            2,
            "temporary slots are not saved"
        );

        r.acquire("standby1", 40).unwrap();
        assert_eq!(
            r.acquire("standby1", 41),
            Err(SlotError::Active {
                name: "standby1".into(),
                pid: 40
            })
        );
        assert_eq!(r.drop_slot("standby1", 41).unwrap_err().sqlstate(), "55006");
        // Another session's temporary slot is held by it (a running pg_basebackup's).
        assert_eq!(
            r.drop_slot("pg_basebackup_7", 41),
            Err(SlotError::Active {
                name: "pg_basebackup_7".into(),
                pid: 7
            })
        );
        assert!(r.held_by_another("pg_basebackup_7", 41));
        assert!(!r.held_by_another("pg_basebackup_7", 7));
        r.advance("standby1", t1, Lsn(0x10_0100));
        r.advance("standby1", t1, Lsn(0x10_0050));
        assert_eq!(r.read("standby1"), Some(Some((t1, Lsn(0x10_0100)))));
        // Same segment as saved: not written yet; a new segment is.
        assert_eq!(
            read_slots(d.path()).unwrap()[1].restart_lsn,
            Some(Lsn(0x10_0000))
        );
        r.advance("standby1", t1, Lsn(0x20_0000));
        let saved = read_slots(d.path()).unwrap();
        assert_eq!(saved[1].name, "standby1");
        assert_eq!(saved[1].restart_lsn, Some(Lsn(0x20_0000)));

        r.session_ended(40);
        r.session_ended(7);
        assert_eq!(r.read("pg_basebackup_7"), None);
        assert!(!r.is_active("standby1"));
        r.drop_slot("standby1", 41).unwrap();
        assert_eq!(
            r.drop_slot("standby1", 41),
            Err(SlotError::Missing("standby1".into()))
        );
        assert_eq!(r.read("archiver"), Some(None));

        // A new registry finds what was saved.
        let again = SlotRegistry::load(d.path(), seg(), 3).unwrap();
        assert_eq!(again.list(), vec![("archiver".to_string(), false, None)]);
    }
}
