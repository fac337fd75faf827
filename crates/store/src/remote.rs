//! `walrelay verify` and `walrelay prune` on an archive in object storage, with walrelay-archive's
//! rules (the same code decides; only the listing and the reads differ).
//!
//! * [`StoreFiles`] is walrelay-archive's [`ArchiveFiles`] over one cluster's WAL objects: the
//!   listing becomes an [`Inventory`], reads are object fetches, and the SHA-256 of each segment
//!   comes with the object (its `walrelay-sha256` metadata) instead of from `walrelay.sha256`.
//!   Objects are complete by construction (uploaded whole, never `.partial`), so a listing counts a
//!   compressed segment as complete; reading the content (the default) proves it.
//! * [`prune_store`] chooses with [`walrelay_archive::plan_prune`] — segments before the point to
//!   keep, on every timeline; `.history` files and failover reports are never removed — and
//!   deletes those objects.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Handle;
use walrelay_archive::{
    plan_prune, ArchiveError, ArchiveFiles, ChecksumList, Inventory, ListedFile, PruneOptions,
    PruneReport, SegmentContentCheck, VerifyOptions, VerifyReport,
};
use walrelay_protocol::{WalFileName, WalSegmentSize};

use crate::error::{Result, StoreError};
use crate::layout::WalLayout;
use crate::store::{ArchiveStore, ObjectInfo};

/// Read one cluster's WAL objects as walrelay-archive's [`ArchiveFiles`]. Its methods block:
/// call them from a blocking thread (they run the store's futures on `handle`).
pub struct StoreFiles {
    store: Arc<dyn ArchiveStore>,
    layout: WalLayout,
    seg_size: WalSegmentSize,
    handle: Handle,
    objects: Vec<ObjectInfo>,
}

/// An error of the store as the archive crate reports it (an unreadable or damaged file).
fn to_archive(e: StoreError, object: &str) -> ArchiveError {
    if e.is_corruption() {
        ArchiveError::Corrupt {
            path: PathBuf::from(object),
            reason: e.to_string(),
        }
    } else {
        ArchiveError::Io {
            action: "fetch",
            path: PathBuf::from(object),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

impl StoreFiles {
    /// Lists the cluster's WAL objects.
    pub async fn open(
        store: Arc<dyn ArchiveStore>,
        layout: WalLayout,
        seg_size: WalSegmentSize,
    ) -> Result<StoreFiles> {
        let objects = store.list(&layout.wal_prefix()).await?;
        Ok(StoreFiles {
            store,
            layout,
            seg_size,
            handle: Handle::current(),
            objects,
        })
    }

    fn shown(&self, name: &str) -> String {
        format!("{}/{}", self.store.location(), self.layout.object(name))
    }

    fn fetch(&self, name: &str, max_len: u64) -> walrelay_archive::Result<crate::Fetched> {
        let object = self.layout.object(name);
        let shown = self.shown(name);
        let fetched = self
            .handle
            .block_on(self.store.get(&object))
            .map_err(|e| to_archive(e, &shown))?
            .ok_or_else(|| ArchiveError::Io {
                action: "fetch",
                path: PathBuf::from(&shown),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        if fetched.bytes.len() as u64 > max_len.saturating_mul(2).saturating_add(1 << 20) {
            return Err(ArchiveError::Corrupt {
                path: PathBuf::from(shown),
                reason: format!("{} bytes, far more than a segment", fetched.bytes.len()),
            });
        }
        Ok(fetched)
    }
}

impl ArchiveFiles for StoreFiles {
    fn location(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}",
            self.store.location(),
            self.layout.wal_prefix().trim_end_matches('/')
        ))
    }

    fn inventory(&self) -> walrelay_archive::Result<Inventory> {
        let mut inv = Inventory::empty(self.location(), self.seg_size);
        let seg = self.seg_size.as_u64();
        for o in &self.objects {
            match self.layout.file_name(&o.name) {
                Some(name) => inv.add(name.to_string(), o.size, o.modified, || Ok(seg)),
                None => inv.unrecognized.push(o.name.clone()),
            }
        }
        inv.sort();
        Ok(inv)
    }

    fn read_wal(
        &self,
        name: &str,
        max_len: u64,
        tolerate_truncation: bool,
    ) -> walrelay_archive::Result<(Vec<u8>, Option<[u8; 32]>)> {
        let fetched = self.fetch(name, max_len)?;
        let shown = PathBuf::from(self.shown(name));
        let (wal, _) =
            walrelay_archive::decode_bytes(&shown, &fetched.bytes, max_len, tolerate_truncation)?;
        Ok((wal, fetched.attrs.wal_sha256))
    }

    fn read_raw(&self, name: &str, max_len: u64) -> walrelay_archive::Result<Vec<u8>> {
        let fetched = self.fetch(name, max_len)?;
        Ok(fetched.bytes.to_vec())
    }

    fn checksums(&self) -> walrelay_archive::Result<ChecksumList> {
        Ok(ChecksumList::default())
    }
}

/// The segment size of the cluster's WAL in the store, from the first segment object's page
/// header. `Ok(None)`: no segment objects.
pub async fn infer_store_segment_size(
    store: &dyn ArchiveStore,
    layout: WalLayout,
) -> Result<Option<WalSegmentSize>> {
    let mut names: Vec<String> = layout
        .list(store)
        .await?
        .into_iter()
        .filter(|(n, _)| matches!(WalFileName::parse(n), Some(WalFileName::Segment { .. })))
        .map(|(_, o)| o.name)
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        return Ok(None);
    };
    let shown = format!("{}/{first}", store.location());
    let fetched = store.get(first).await?.ok_or_else(|| StoreError::Corrupt {
        object: shown.clone(),
        reason: "listed but not found".into(),
    })?;
    let max = u64::from(walrelay_protocol::segment::MAX_WAL_SEGMENT_SIZE);
    let (wal, _) =
        walrelay_archive::decode_bytes(std::path::Path::new(&shown), &fetched.bytes, max, true)?;
    let header = walrelay_wal::inspect_segment_start(&wal).map_err(|e| StoreError::Corrupt {
        object: shown.clone(),
        reason: format!("no valid first page header to read the segment size from: {e}"),
    })?;
    WalSegmentSize::new(u64::from(header.segment_size))
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            object: shown,
            reason: e.to_string(),
        })
}

/// `walrelay verify` of one cluster's WAL in a store. Runs the checks on a blocking thread.
pub async fn verify_store(
    store: Arc<dyn ArchiveStore>,
    layout: WalLayout,
    seg_size: WalSegmentSize,
    checks: Arc<dyn SegmentContentCheck>,
    opts: VerifyOptions,
) -> Result<VerifyReport> {
    let files = StoreFiles::open(store, layout, seg_size).await?;
    tokio::task::spawn_blocking(move || {
        walrelay_archive::verify_files(&files, seg_size, checks.as_ref(), &opts)
    })
    .await
    .map_err(|e| StoreError::io("verify", "", std::io::Error::other(e.to_string())))?
    .map_err(StoreError::from)
}

/// `walrelay prune` of one cluster's WAL in a store (see the module docs).
pub async fn prune_store(
    store: &dyn ArchiveStore,
    layout: WalLayout,
    seg_size: WalSegmentSize,
    opts: &PruneOptions,
) -> Result<PruneReport> {
    let objects = layout.list(store).await?;
    let listed = objects.iter().map(|(n, o)| ListedFile {
        name: n.clone(),
        size: o.size,
        modified: o.modified,
    });
    // A relay serves from a local directory only: a bucket has no slots to hold WAL for.
    let plan = plan_prune(listed, seg_size, opts, None)?;
    let mut report = PruneReport {
        keep_from: plan.keep_from,
        removed: Vec::new(),
        bytes: 0,
        dry_run: opts.dry_run,
        checksum_entries_removed: 0,
        slot_floor: None,
    };
    for f in plan.victims {
        if !opts.dry_run {
            store.delete(&layout.object(&f.name)).await?;
        }
        report.bytes += f.size;
        report.removed.push(f.name);
    }
    if !opts.dry_run && !report.removed.is_empty() {
        tracing::info!(
            files = report.removed.len(),
            bytes = report.bytes,
            "pruned WAL in the store"
        );
    }
    Ok(report)
}
