//! Where a WAL archive lives when it is not (only) a local directory: object storage — Amazon S3
//! and S3-compatible stores, Google Cloud Storage, Azure Blob Storage — or a directory in the same
//! object layout (`file://`).
//!
//! * [`ArchiveLocation`]: what `-D` names — a plain path (a local directory, as before) or a URL.
//! * [`ArchiveStore`]: the one seam — list, get, put-if-absent, delete — with
//!   [`ObjectStoreArchive`] (the `object_store` crate, rustls + ring) and [`LocalDirStore`];
//!   [`put_new`] never replaces an object: identical content is success, other content an error
//!   naming both SHA-256 values.
//! * [`layout`]: `PREFIX/SYSID/wal/NAME` — the system identifier keeps clusters apart.
//! * [`upload`]: the spool uploader behind `receive -D s3://… --spool DIR` — acknowledged when
//!   durable in the spool, uploaded in the background, removed from the spool once confirmed.
//! * [`restore`]: `restore_command` from a bucket, with background prefetch into a cache.
//! * [`remote`]: verify and prune over a bucket, sharing walrelay-archive's rules.
//!
//! The modules are private except [`layout`] and [`upload`]; the items below are the crate's face.

mod error;
pub mod layout;
mod local;
mod location;
mod object;
mod remote;
mod restore;
mod store;
pub mod upload;

use std::sync::Arc;

pub use error::{Conflict, Result, StoreError};
pub use layout::{choose_system, WalLayout};
pub use local::LocalDirStore;
pub use location::{ArchiveLocation, Service, StoreUrl};
pub use object::{
    sha256_metadata_key, ObjectStoreArchive, AZURE_SHA256_METADATA_KEY, SHA256_METADATA_KEY,
};
pub use remote::{infer_store_segment_size, prune_store, verify_store, StoreFiles};
pub use restore::{
    fetch_segment, prefetch_worker, restore_from_store, PrefetchPlan, StoreRestoreOptions,
    DEFAULT_CACHE_DIR_NAME,
};
pub use store::{
    put_new, sha256_hex, ArchiveStore, Fetched, NewObject, ObjectAttrs, ObjectInfo, ObjectReader,
    PutIfAbsent, StoreFuture, Stored, StreamChunk,
};
pub use upload::{run_uploader, UploadSnapshot, UploadStats, UploaderConfig};

/// Opens the store a URL names (nothing is contacted yet).
pub fn open_store(url: &StoreUrl) -> Result<Arc<dyn ArchiveStore>> {
    Ok(match (&url.path, url.service) {
        (Some(path), Service::File) => Arc::new(LocalDirStore::open(path)?),
        _ => Arc::new(ObjectStoreArchive::open(url)?),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    #![allow(clippy::unwrap_used)]
    use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize, XLogSegNo};

    pub const MB: u64 = 1024 * 1024;

    /// A valid 1 MB segment of cluster `sysid` (synthetic WAL: page headers, a record, zeros).
    pub fn segment(segno: u64, seed: u8, sysid: u64) -> Vec<u8> {
        use walrelay_wal::synth::{SynthConfig, WalBuilder};
        let cfg = SynthConfig {
            system_identifier: sysid,
            ..Default::default()
        };
        let mut b = WalBuilder::new(cfg, Lsn(segno * MB));
        b.record(0x0A, 0x10, &[seed; 300]);
        b.zero_fill_to(Lsn((segno + 1) * MB));
        let v = b.into_bytes();
        assert_eq!(v.len() as u64, MB);
        v
    }

    /// The name of segment `segno` of timeline 1 (1 MB segments).
    pub fn name(segno: u64) -> String {
        SegmentId::new(TimelineId(1), XLogSegNo(segno)).file_name(WalSegmentSize::new(MB).unwrap())
    }
}
