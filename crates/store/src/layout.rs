//! The object layout of an archive in object storage (documented in docs/archive-and-pitr.md,
//! "Archives in object storage"):
//!
//! ```text
//! PREFIX/                              the URL's prefix (s3://bucket/PREFIX)
//!   7312345678901234567/               the cluster's system identifier, in decimal (pg_controldata)
//!     wal/
//!       000000010000000A000000F3.zst   complete segments, as the spool held them (plain, .gz, .lz4, .zst)
//!       00000002.history               timeline history files (never pruned)
//!       00000002.failover.json         failover reports (never pruned)
//!     backups/                         base backups (issue 16)
//! ```
//!
//! The system identifier in every name keeps two clusters that share a bucket and prefix apart:
//! WAL of one can never be restored into the other, and `receive` refuses a spool whose WAL
//! belongs to another cluster. Objects are whole files and never replaced; there are no
//! `.partial` objects (the segment in progress stays in the receiver's spool).

use walrelay_protocol::WalFileName;

use crate::error::{Result, StoreError};
use crate::store::{ArchiveStore, ObjectInfo};

/// The directory of a cluster's WAL under its system identifier.
pub const WAL_DIR: &str = "wal";

/// Where one cluster's WAL lives in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalLayout {
    pub system_identifier: u64,
}

impl WalLayout {
    pub fn new(system_identifier: u64) -> Self {
        WalLayout { system_identifier }
    }

    /// `SYSID/wal/`: the prefix every WAL object name starts with.
    pub fn wal_prefix(&self) -> String {
        format!("{}/{WAL_DIR}/", self.system_identifier)
    }

    /// The object name of an archive file name (`NAME`, `NAME.zst`, `00000002.history`, …).
    pub fn object(&self, file_name: &str) -> String {
        format!("{}{file_name}", self.wal_prefix())
    }

    /// The file name of an object of this layout, if it is one.
    pub fn file_name<'a>(&self, object: &'a str) -> Option<&'a str> {
        let prefix = self.wal_prefix();
        object
            .strip_prefix(prefix.as_str())
            .filter(|n| !n.contains('/'))
    }

    /// The cluster's WAL objects in `store`, each with its archive file name.
    pub async fn list(&self, store: &dyn ArchiveStore) -> Result<Vec<(String, ObjectInfo)>> {
        Ok(store
            .list(&self.wal_prefix())
            .await?
            .into_iter()
            .filter_map(|o| Some((self.file_name(&o.name)?.to_string(), o)))
            .collect())
    }
}

/// Whether an archive file name may be stored as an object: complete segments (any compression),
/// history files, backup history files and failover reports. Never `.partial` or temp files.
pub fn is_archivable(file_name: &str) -> bool {
    match WalFileName::parse(file_name) {
        Some(WalFileName::Segment { partial, .. }) => !partial,
        Some(WalFileName::History(_)) | Some(WalFileName::BackupHistory { .. }) => true,
        None => walrelay_archive::failover_report_timeline(file_name).is_some(),
    }
}

/// The system identifiers that have a directory under the store's root.
pub async fn systems(store: &dyn ArchiveStore) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = store
        .list_dirs("")
        .await?
        .iter()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|d| d.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The cluster to work on: `wanted` if given, else the only one in the store. `Ok(None)` when the
/// store holds no cluster at all.
pub async fn choose_system(store: &dyn ArchiveStore, wanted: Option<u64>) -> Result<Option<u64>> {
    if let Some(w) = wanted {
        return Ok(Some(w));
    }
    let found = systems(store).await?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(StoreError::AmbiguousSystem {
            location: store.location(),
            found: many
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let l = WalLayout::new(7312345678901234567);
        assert_eq!(
            l.object("000000010000000000000003.zst"),
            "7312345678901234567/wal/000000010000000000000003.zst"
        );
        assert_eq!(
            l.file_name("7312345678901234567/wal/00000002.history"),
            Some("00000002.history")
        );
        assert_eq!(l.file_name("7312345678901234567/wal/x/y"), None);
        assert_eq!(l.file_name("1/wal/00000002.history"), None);
        for ok in [
            "000000010000000000000003",
            "000000010000000000000003.gz",
            "00000002.history",
            "00000002.failover.json",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(is_archivable(ok), "{ok}");
        }
        for no in [
            "000000010000000000000003.partial",
            "000000010000000000000003.gz.tmp",
            "walrelay.sha256",
            "README",
        ] {
            assert!(!is_archivable(no), "{no}");
        }
    }
}
