//! The backups of an archive: opening the archive, listing, deleting, retention.
//!
//! A directory archive keeps its backups under `DIR/backups/` (beside the WAL, which stays in
//! pg_receivewal's flat layout); object storage under `PREFIX/SYSID/backups/`. Both go through
//! the store seam ([`ArchiveStore`]): a directory archive is a [`LocalDirStore`] rooted at it.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use walrelay_protocol::Lsn;
use walrelay_store::{choose_system, open_store, ArchiveLocation, ArchiveStore, LocalDirStore};

use crate::descriptor::{BackupDescriptor, BackupNames, DESCRIPTOR, STARTED};
use crate::error::{BackupJobError, Result};
use crate::select::{retain, Retention};

/// An archive opened for its backups.
#[derive(Clone, Debug)]
pub struct OpenedArchive {
    pub store: Arc<dyn ArchiveStore>,
    pub names: BackupNames,
    /// The cluster (object storage: from the server or the store; a directory: unknown).
    pub system_identifier: Option<u64>,
    /// A local directory archive: its path.
    pub dir: Option<PathBuf>,
}

impl OpenedArchive {
    /// Opens `location`. For object storage the cluster is `system_identifier`, or the only one
    /// stored (`Ok(None)`-like: an error naming the fix when there is none or several).
    pub async fn open(
        location: &ArchiveLocation,
        system_identifier: Option<u64>,
    ) -> Result<OpenedArchive> {
        match location {
            ArchiveLocation::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(BackupJobError::Usage(format!(
                        "archive directory {} does not exist: create it (owned by the user who runs walrelay receive) or fix -D",
                        dir.display()
                    )));
                }
                let dir = std::path::absolute(dir)
                    .map_err(|e| BackupJobError::io("resolve", dir.clone(), e))?;
                Ok(OpenedArchive {
                    store: Arc::new(LocalDirStore::open(&dir)?),
                    names: BackupNames::new(""),
                    system_identifier,
                    dir: Some(dir),
                })
            }
            ArchiveLocation::Store(url) => {
                let store = open_store(url)?;
                let sysid = match system_identifier {
                    Some(s) => s,
                    None => choose_system(store.as_ref(), None).await?.ok_or_else(|| {
                        BackupJobError::NoBackup(format!(
                            "{url} holds no cluster: check the URL and its prefix, or take a backup with walrelay backup"
                        ))
                    })?,
                };
                Ok(OpenedArchive {
                    store,
                    names: BackupNames::new(sysid.to_string()),
                    system_identifier: Some(sysid),
                    dir: None,
                })
            }
        }
    }
}

/// What `backup list` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Catalog {
    /// Complete backups, oldest first.
    pub backups: Vec<BackupDescriptor>,
    /// Labels with objects but no descriptor: running, or failed (remove with `backup delete`).
    pub incomplete: Vec<String>,
    /// Backups with a descriptor but objects it lists missing (deleted while it ran, removed by
    /// hand): never restored, and never counted as a backup kept by retention.
    pub damaged: Vec<DamagedBackup>,
}

/// A backup whose descriptor lists objects the archive does not hold.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedBackup {
    pub label: String,
    /// The missing objects, relative to the backup's directory.
    pub missing: Vec<String>,
}

/// Lists the archive's backups, reading every descriptor.
pub async fn list_backups(archive: &OpenedArchive) -> Result<Catalog> {
    let prefix = archive.names.backups_prefix();
    let objects = archive.store.list(&prefix).await?;
    let mut labels: Vec<(String, bool)> = Vec::new();
    for o in &objects {
        let Some(rest) = o.name.strip_prefix(&prefix) else {
            continue;
        };
        let Some((label, name)) = rest.split_once('/') else {
            continue;
        };
        let complete = name == DESCRIPTOR;
        match labels.iter_mut().find(|(l, _)| l == label) {
            Some(entry) => entry.1 |= complete,
            None => labels.push((label.to_string(), complete)),
        }
    }
    let mut catalog = Catalog::default();
    for (label, complete) in labels {
        if !complete {
            catalog.incomplete.push(label);
            continue;
        }
        let name = archive.names.object(&label, DESCRIPTOR);
        let Some(fetched) = archive.store.get(&name).await? else {
            catalog.incomplete.push(label); // deleted meanwhile
            continue;
        };
        // An unreadable descriptor (cut short, edited by hand) makes that backup unusable, not
        // the archive: listed as damaged, the others still restore and retention still works.
        let descriptor = match BackupDescriptor::parse(&label, &fetched.bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(label = %label, error = %e, "a backup's descriptor cannot be read: the backup is listed as damaged (remove it with walrelay backup delete)");
                catalog.damaged.push(DamagedBackup {
                    label,
                    missing: vec![format!("{DESCRIPTOR} (unreadable: {e})")],
                });
                continue;
            }
        };
        let missing: Vec<String> = descriptor
            .required_objects()
            .filter(|name| {
                let full = archive.names.object(&label, name);
                !objects.iter().any(|o| o.name == full)
            })
            .map(str::to_string)
            .collect();
        if missing.is_empty() {
            catalog.backups.push(descriptor);
        } else {
            catalog.damaged.push(DamagedBackup { label, missing });
        }
    }
    catalog.backups = crate::select::ordered(catalog.backups);
    catalog.incomplete.sort();
    Ok(catalog)
}

/// Removes a backup: its descriptor first (from then on it is incomplete and never restored),
/// then its other objects, the claim last. Returns the number of objects removed.
pub async fn delete_backup(archive: &OpenedArchive, label: &str) -> Result<usize> {
    crate::descriptor::validate_label(label)?;
    let prefix = archive.names.backup_prefix(label);
    let objects = archive.store.list(&prefix).await?;
    // The spool of a backup that was killed (it holds nothing listed): inside a directory
    // archive, or this machine's temp directory for object storage.
    let spool = match (&archive.dir, archive.system_identifier) {
        (Some(d), _) => Some(
            d.join(crate::descriptor::BACKUPS_DIR)
                .join(format!(".{label}.spool")),
        ),
        (None, Some(sysid)) => Some(crate::take::store_spool(
            sysid,
            label,
            &archive.store.location(),
        )),
        (None, None) => None,
    };
    if let Some(spool) = spool.as_ref().filter(|p| p.exists()) {
        if crate::take::spool_in_use(spool) {
            // The backup runs now: it finds its objects gone at its end, says so, and removes
            // its spool itself.
            tracing::info!(%label, spool = %spool.display(), "the backup is running on this machine: its spool is left to it");
        } else {
            std::fs::remove_dir_all(spool).map_err(|e| BackupJobError::io("remove", spool, e))?;
            if objects.is_empty() {
                return Ok(0);
            }
        }
    }
    if objects.is_empty() {
        return Err(BackupJobError::NoBackup(format!(
            "the archive has no backup labelled {label:?}: see walrelay backup list"
        )));
    }
    let descriptor = archive.names.object(label, DESCRIPTOR);
    let started = archive.names.object(label, STARTED);
    archive.store.delete(&descriptor).await?;
    for o in &objects {
        if o.name != descriptor && o.name != started {
            archive.store.delete(&o.name).await?;
        }
    }
    archive.store.delete(&started).await?;
    if let Some(dir) = &archive.dir {
        // A directory archive: leave no empty directories behind.
        let path = dir.join(prefix.trim_end_matches('/'));
        let _ = std::fs::remove_dir(path.join(crate::descriptor::WAL_DIR));
        let _ = std::fs::remove_dir(&path);
    }
    tracing::info!(%label, objects = objects.len(), "backup deleted");
    Ok(objects.len())
}

/// What `prune --keep-backups/--keep-days` did (or would do).
#[derive(Clone, Debug, Serialize)]
pub struct BackupPrune {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    /// The oldest kept backup's start: WAL before its segment is not needed by any kept backup.
    pub keep_wal_from: Option<Lsn>,
    pub wal_segment_size: Option<u32>,
}

/// Applies the retention rule to the complete backups; removes the others unless `dry_run`.
pub async fn prune_backups(
    archive: &OpenedArchive,
    rule: Retention,
    now_unix: i64,
    dry_run: bool,
) -> Result<BackupPrune> {
    let catalog = list_backups(archive).await?;
    let (kept, removed) = retain(&catalog.backups, rule, now_unix);
    if !dry_run {
        for b in &removed {
            delete_backup(archive, &b.label).await?;
        }
    }
    let oldest = kept.first();
    Ok(BackupPrune {
        kept: kept.iter().map(|b| b.label.clone()).collect(),
        removed: removed.iter().map(|b| b.label.clone()).collect(),
        keep_wal_from: oldest.map(|b| b.start_lsn),
        wal_segment_size: oldest.map(|b| b.wal_segment_size),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::descriptor::{
        rfc3339, BackupDescriptor, ObjectKind, StoredObject, FORMAT_VERSION, MANIFEST,
    };
    use bytes::Bytes;
    use walrelay_store::{put_new, ObjectAttrs};

    fn descriptor(label: &str, start: u64, end_unix: i64) -> BackupDescriptor {
        BackupDescriptor {
            format_version: FORMAT_VERSION,
            label: label.into(),
            system_identifier: 7,
            server_version: 150000,
            wal_segment_size: 1 << 20,
            start_lsn: Lsn(start),
            start_timeline: 1,
            end_lsn: Lsn(start + 100),
            end_timeline: 1,
            start_time: rfc3339(end_unix - 1),
            end_time: rfc3339(end_unix),
            compression: "zstd".into(),
            manifest: true,
            objects: vec![StoredObject {
                name: "base.tar.zst".into(),
                kind: ObjectKind::Base,
                tablespace_oid: None,
                tablespace_location: None,
                stored_bytes: 1,
                raw_bytes: 1,
                sha256: "0".repeat(64),
            }],
            next_xid: None,
        }
    }

    async fn put(a: &OpenedArchive, label: &str, name: &str, data: Vec<u8>) {
        put_new(
            a.store.as_ref(),
            &a.names.object(label, name),
            Bytes::from(data),
            &ObjectAttrs::default(),
        )
        .await
        .unwrap();
    }

    async fn stored(a: &OpenedArchive, label: &str, start: u64, end_unix: i64) {
        for name in [
            STARTED,
            "base.tar.zst",
            MANIFEST,
            "wal/000000010000000000000001.zst",
        ] {
            put(a, label, name, b"x".to_vec()).await;
        }
        put(
            a,
            label,
            DESCRIPTOR,
            descriptor(label, start, end_unix).to_json(),
        )
        .await;
    }

    /// A backup deleted while it ran (its tar gone, its descriptor written after): not a backup
    /// restore may choose, and not one retention keeps in place of an intact one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_descriptor_whose_objects_are_gone_is_damaged_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = OpenedArchive::open(&ArchiveLocation::Dir(d.path().to_path_buf()), None)
            .await
            .unwrap();
        stored(&a, "old", 1 << 20, 1000).await;
        put(&a, "new", MANIFEST, b"x".to_vec()).await;
        put(
            &a,
            "new",
            DESCRIPTOR,
            descriptor("new", 2 << 20, 2000).to_json(),
        )
        .await;
        let c = list_backups(&a).await.unwrap();
        let labels: Vec<&str> = c.backups.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["old"]);
        assert_eq!(c.damaged.len(), 1);
        assert_eq!(c.damaged[0].label, "new");
        assert_eq!(c.damaged[0].missing, ["base.tar.zst"]);
        let rule = Retention {
            keep_backups: Some(1),
            keep_seconds: None,
        };
        let p = prune_backups(&a, rule, 5000, false).await.unwrap();
        assert_eq!(p.kept, ["old"]);
        assert!(p.removed.is_empty());
        assert_eq!(p.keep_wal_from, Some(Lsn(1 << 20)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_delete_and_retention_over_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let a = OpenedArchive::open(&ArchiveLocation::Dir(d.path().to_path_buf()), None)
            .await
            .unwrap();
        assert!(list_backups(&a).await.unwrap().backups.is_empty());
        stored(&a, "c", 3 << 20, 3000).await;
        stored(&a, "a", 1 << 20, 1000).await;
        stored(&a, "b", 2 << 20, 2000).await;
        // one without a descriptor: running or failed
        put(&a, "x", STARTED, b"{}".to_vec()).await;
        let c = list_backups(&a).await.unwrap();
        let labels: Vec<&str> = c.backups.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["a", "b", "c"]);
        assert_eq!(c.incomplete, ["x"]);

        // an unreadable descriptor: that backup is damaged (named, with why), the others stay
        put(&a, "bad", DESCRIPTOR, b"{".to_vec()).await;
        let c = list_backups(&a).await.unwrap();
        assert_eq!(c.backups.len(), 3);
        assert_eq!(c.damaged.len(), 1);
        assert_eq!(c.damaged[0].label, "bad");
        assert!(
            c.damaged[0].missing[0].contains("unreadable"),
            "{:?}",
            c.damaged
        );
        assert_eq!(delete_backup(&a, "bad").await.unwrap(), 1);

        // retention: a dry run removes nothing; then the oldest goes, WAL kept from b's start
        let p = prune_backups(
            &a,
            Retention {
                keep_backups: Some(2),
                keep_seconds: None,
            },
            5000,
            true,
        )
        .await
        .unwrap();
        assert_eq!(
            (p.kept.clone(), p.removed.clone()),
            (vec!["b".into(), "c".into()], vec!["a".to_string()])
        );
        assert_eq!(list_backups(&a).await.unwrap().backups.len(), 3);
        let p = prune_backups(
            &a,
            Retention {
                keep_backups: Some(2),
                keep_seconds: None,
            },
            5000,
            false,
        )
        .await
        .unwrap();
        assert_eq!(p.keep_wal_from, Some(Lsn(2 << 20)));
        assert_eq!(p.wal_segment_size, Some(1 << 20));
        assert!(
            !d.path().join("backups/a").exists(),
            "no empty directory left"
        );
        let c = list_backups(&a).await.unwrap();
        assert_eq!(c.backups.len(), 2);
        assert!(matches!(
            delete_backup(&a, "a").await,
            Err(BackupJobError::NoBackup(_))
        ));
        assert!(matches!(
            delete_backup(&a, "../a").await,
            Err(BackupJobError::Descriptor(_))
        ));
    }
}
