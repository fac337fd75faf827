//! Base backups stored in a walrelay archive — a directory or object storage — and restoring
//! them: `walrelay backup` (take, list, delete), `walrelay bootstrap --from-archive` (point-in-time
//! recovery or a standby, seeded from the archive), and retention for `walrelay prune`.
//!
//! * [`descriptor`] (pure): the layout of a stored backup, `descriptor.json` (written last: its
//!   presence means complete), labels, target times;
//! * [`select`] (pure): which backup to restore for a target, which to keep;
//! * [`recovery`] (pure): `restore_command` and the recovery settings per major;
//! * `codec`: zstd, lz4, gzip or none, streaming;
//! * `sink`: the `BASE_BACKUP` tar streams compressed into a spool as they arrive, checked
//!   against the manifest on the way;
//! * `take`, `restore`, `catalog`: the jobs, over the store seam (`walrelay_store::ArchiveStore`).

mod catalog;
mod codec;
pub mod descriptor;
mod error;
pub mod pg_control;
pub mod recovery;
mod restore;
pub mod select;
mod sink;
mod take;
mod targets;

pub use catalog::{
    delete_backup, list_backups, prune_backups, BackupPrune, Catalog, OpenedArchive,
};
pub use codec::Codec;
pub use descriptor::{parse_target_time, whole_seconds, BackupDescriptor};
pub use error::{BackupJobError, Result};
pub use recovery::RecoveryTarget;
pub use restore::{restore_backup, RestoreAs, RestoreConfig, RestoreSummary};
pub use select::{BackupChoice, Retention, TargetBound};
pub use take::{take_backup, TakeConfig, TakeSummary};
