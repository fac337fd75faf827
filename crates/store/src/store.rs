//! The one seam between walrelay and the place an archive's objects live: [`ArchiveStore`] — list,
//! get, put-if-absent, delete — with two implementations: [`crate::ObjectStoreArchive`] (S3, GCS,
//! Azure through the `object_store` crate) and [`crate::LocalDirStore`] (`file://`, a directory with
//! crash-safe files).
//!
//! # The rule that makes an object store an archive: never replace
//!
//! Every write is [`ArchiveStore::put_if_absent`]: the object is created whole or not at all (a
//! single PUT, atomic in every store), and an existing object is never overwritten. [`put_new`] adds
//! the comparison on top: when the name exists, the stored object is fetched and compared; identical
//! content is success (an upload retried after a crash, or the same segment received twice), other
//! content is [`StoreError::Conflict`] naming both SHA-256 values. Content means the WAL when both
//! objects carry the SHA-256 of the WAL they hold: the same segment compressed at another level
//! (or by another build of the compressor) is the same segment.
//!
//! # Objects are whole files
//!
//! A WAL segment (16 MB by default, at most 1 GB) is uploaded in one request from memory; so is
//! every small object. Large objects (a base backup's tar streams) go through
//! [`ArchiveStore::put_stream`] (chunks as they are produced) or
//! [`ArchiveStore::put_file_if_absent`] (a file): a multipart upload for object storage, which
//! makes the object visible only when it completes, after a check that the name is free (a
//! multipart upload cannot be conditional everywhere: the backup that writes it has claimed its
//! label with a conditional put first, and is made complete by a descriptor put last);
//! [`ArchiveStore::reader`] reads them back as a stream.
//!
//! Names are relative to the store's root (the URL's prefix), `/`-separated, built by
//! [`crate::layout`].

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The name relative to the store's root.
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Attributes stored with an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectAttrs {
    /// SHA-256 of the WAL the object holds (decompressed), as `walrelay.sha256` records it for a
    /// directory archive. Stored as user metadata (`x-amz-meta-walrelay-sha256` and its GCS and
    /// Azure equivalents).
    pub wal_sha256: Option<[u8; 32]>,
}

/// A fetched object.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub attrs: ObjectAttrs,
}

/// An object to create: its bytes and attributes.
#[derive(Clone, Debug)]
pub struct NewObject {
    pub data: Bytes,
    pub attrs: ObjectAttrs,
}

/// What [`ArchiveStore::put_if_absent`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutIfAbsent {
    Created,
    /// An object of that name exists (not compared, not changed).
    Exists,
}

/// What [`put_new`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Created,
    /// The object existed with identical content.
    AlreadyThere,
}

/// What the store's methods return.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T>>;

/// An object's bytes as they arrive (from [`ArchiveStore::reader`]).
pub type ObjectReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// What a writer sends [`ArchiveStore::put_stream`].
#[derive(Debug)]
pub enum StreamChunk {
    /// The next bytes of the object.
    Data(Bytes),
    /// The object is complete: make it visible. A channel that closes without `End` means the
    /// writer failed, and the upload is abandoned (no object appears).
    End,
}

/// An archive's object storage. Every method is cancellation-safe in the sense that dropping the
/// future leaves no partial object under a final name (object stores create objects atomically;
/// [`crate::LocalDirStore`] writes a temp file first).
pub trait ArchiveStore: Send + Sync + fmt::Debug {
    /// The location for messages: the URL without credentials.
    fn location(&self) -> String;

    /// Every object whose name starts with `prefix` (not only a directory's direct children), in
    /// no particular order.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectInfo>>;

    /// Whether [`ArchiveStore::list`] of a prefix inside a name costs about one request. False
    /// where the service lists whole directories only (Azure: a name prefix lists the whole WAL
    /// directory, thousands of objects), so that callers looking for a few known names ask for
    /// them instead.
    fn lists_name_prefixes_cheaply(&self) -> bool {
        true
    }

    /// The "directories" directly under `prefix` (a name ending in `/` or empty): their names
    /// without the prefix and without a trailing `/`.
    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// The whole object, or `None` when there is none of that name.
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Fetched>>;

    /// Creates the object `name` with `data` and `attrs` unless one of that name exists; never
    /// replaces one.
    fn put_if_absent<'a>(&'a self, name: &'a str, put: NewObject) -> StoreFuture<'a, PutIfAbsent>;

    /// Removes the object; a missing object is not an error.
    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;

    /// Creates the object `name` from the local file `path` (complete and fsynced) unless one of
    /// that name exists; never replaces one. For large objects (base backups): the implementations
    /// stream the file (a multipart upload, a hard link) instead of holding it in memory; this
    /// default reads it whole.
    fn put_file_if_absent<'a>(
        &'a self,
        name: &'a str,
        path: &'a std::path::Path,
    ) -> StoreFuture<'a, PutIfAbsent> {
        Box::pin(async move {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| StoreError::io("read", path, e))?;
            let put = NewObject {
                data: Bytes::from(data),
                attrs: ObjectAttrs::default(),
            };
            self.put_if_absent(name, put).await
        })
    }

    /// Creates `name` from chunks as they are produced (a base backup's tar stream while it
    /// arrives) unless it exists; never replaces one. The object appears only after
    /// [`StreamChunk::End`]; if the channel closes before, nothing appears and this fails. Memory
    /// is bounded by the implementations (a multipart upload's parts in flight, a temp file);
    /// this default collects the chunks in memory.
    fn put_stream<'a>(
        &'a self,
        name: &'a str,
        mut chunks: tokio::sync::mpsc::Receiver<StreamChunk>,
    ) -> StoreFuture<'a, PutIfAbsent> {
        Box::pin(async move {
            let mut data = Vec::new();
            loop {
                match chunks.recv().await {
                    Some(StreamChunk::Data(b)) => data.extend_from_slice(&b),
                    Some(StreamChunk::End) => break,
                    None => return Err(StreamChunk::abandoned(name)),
                }
            }
            let put = NewObject {
                data: Bytes::from(data),
                attrs: ObjectAttrs::default(),
            };
            self.put_if_absent(name, put).await
        })
    }

    /// The object's bytes as a stream (bounded memory for large objects), or `None` when there is
    /// none of that name. This default fetches it whole.
    fn reader<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ObjectReader>> {
        Box::pin(async move {
            Ok(self
                .get(name)
                .await?
                .map(|f| Box::new(std::io::Cursor::new(f.bytes)) as ObjectReader))
        })
    }
}

impl StreamChunk {
    /// The error of a stream whose writer stopped before [`StreamChunk::End`].
    pub fn abandoned(name: &str) -> StoreError {
        StoreError::io(
            "upload",
            name,
            std::io::Error::other("the writer stopped before the end; nothing was stored"),
        )
    }
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Stores `data` under `name` unless that name exists; an existing object with the same bytes is
/// success, one with other bytes is [`StoreError::Conflict`] (see the module docs).
pub async fn put_new(
    store: &dyn ArchiveStore,
    name: &str,
    data: Bytes,
    attrs: &ObjectAttrs,
) -> Result<Stored> {
    // Twice at most: an object that exists but is gone when fetched was deleted in between
    // (a prune), and the name is free again.
    for _ in 0..2 {
        let put = NewObject {
            data: data.clone(),
            attrs: attrs.clone(),
        };
        if store.put_if_absent(name, put).await? == PutIfAbsent::Created {
            return Ok(Stored::Created);
        }
        let Some(existing) = store.get(name).await? else {
            continue;
        };
        let (ours, theirs) = match (attrs.wal_sha256, existing.attrs.wal_sha256) {
            (Some(ours), Some(theirs)) => (hex::encode(ours), hex::encode(theirs)),
            _ => (sha256_hex(&data), sha256_hex(&existing.bytes)),
        };
        return if ours == theirs {
            Ok(Stored::AlreadyThere)
        } else {
            Err(StoreError::Conflict(Box::new(crate::error::Conflict {
                object: format!("{}/{name}", store.location()),
                stored: theirs,
                ours,
            })))
        };
    }
    Err(StoreError::Corrupt {
        object: format!("{}/{name}", store.location()),
        reason: "the store says it exists but returns nothing for it".into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attrs(wal: u8) -> ObjectAttrs {
        ObjectAttrs {
            wal_sha256: Some([wal; 32]),
        }
    }

    /// The same WAL compressed otherwise (another level, another compressor build) is the same
    /// segment; other WAL under the name is a conflict, named by the WAL's SHA-256.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_object_is_compared_by_the_wal_it_holds() {
        let root = tempfile::tempdir().unwrap();
        let store = crate::LocalDirStore::open(root.path()).unwrap();
        let name = "w/000000010000000000000001.zst";
        let first = Bytes::from_static(b"compressed at level 1");
        assert_eq!(
            put_new(&store, name, first.clone(), &attrs(7))
                .await
                .unwrap(),
            Stored::Created
        );
        let other_level = Bytes::from_static(b"compressed at level 19");
        assert_eq!(
            put_new(&store, name, other_level.clone(), &attrs(7))
                .await
                .unwrap(),
            Stored::AlreadyThere
        );
        let e = put_new(&store, name, other_level, &attrs(8))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&hex::encode([7u8; 32])) && text.contains(&hex::encode([8u8; 32])),
            "{text}"
        );
        // Without the WAL's SHA-256 on either side: the bytes.
        assert_eq!(
            put_new(&store, name, first, &ObjectAttrs::default())
                .await
                .unwrap(),
            Stored::AlreadyThere
        );
    }
}
