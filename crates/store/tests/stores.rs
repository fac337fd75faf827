//! The [`ArchiveStore`] contract, against a real S3-compatible server (SeaweedFS, started by the
//! testkit), a real Azure Blob Storage emulator (Azurite) and the local-directory store: put-if-absent never replaces, an identical
//! object is success and a different one an error naming both SHA-256 values, the WAL checksum
//! attribute round-trips, listings and deletes.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use walrelay_store::{
    open_store, put_new, sha256_hex, ArchiveLocation, ArchiveStore, NewObject, ObjectAttrs,
    PutIfAbsent, StoreError, Stored, StreamChunk,
};
use walrelay_testkit::{AzuriteServer, S3Server, StoreServer};

fn store_for(url: &str) -> Arc<dyn ArchiveStore> {
    let ArchiveLocation::Store(u) = ArchiveLocation::parse(url).unwrap() else {
        panic!("{url} is not a store URL")
    };
    open_store(&u).unwrap()
}

async fn contract(store: &dyn ArchiveStore) {
    let name = "42/wal/000000010000000000000003.zst";
    let a = Bytes::from_static(b"first content");
    let attrs = ObjectAttrs {
        wal_sha256: Some([7u8; 32]),
    };
    assert_eq!(store.get(name).await.unwrap().map(|f| f.bytes), None);
    let first = NewObject {
        data: a.clone(),
        attrs: attrs.clone(),
    };
    let other = NewObject {
        data: Bytes::from_static(b"other"),
        attrs: ObjectAttrs::default(),
    };
    assert_eq!(
        store.put_if_absent(name, first).await.unwrap(),
        PutIfAbsent::Created
    );
    // The raw put never replaces.
    assert_eq!(
        store.put_if_absent(name, other).await.unwrap(),
        PutIfAbsent::Exists
    );
    let got = store.get(name).await.unwrap().unwrap();
    assert_eq!(got.bytes, a);
    assert_eq!(
        got.attrs.wal_sha256,
        Some([7u8; 32]),
        "the checksum attribute round-trips"
    );

    // Identical content: success; different content: an error naming both checksums — of the
    // WAL when both sides carry it (the same WAL compressed otherwise is the same content),
    // else of the bytes.
    assert_eq!(
        put_new(store, name, a.clone(), &attrs).await.unwrap(),
        Stored::AlreadyThere
    );
    let b = Bytes::from_static(b"second content");
    assert_eq!(
        put_new(store, name, b.clone(), &attrs).await.unwrap(),
        Stored::AlreadyThere,
        "the same WAL in other bytes"
    );
    let other_wal = ObjectAttrs {
        wal_sha256: Some([8u8; 32]),
    };
    let e = put_new(store, name, b.clone(), &other_wal)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&"07".repeat(32)) && text.contains(&"08".repeat(32)),
        "{text}"
    );
    let e = put_new(store, name, b.clone(), &ObjectAttrs::default())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&sha256_hex(&a)) && text.contains(&sha256_hex(&b)),
        "{text}"
    );
    assert_eq!(
        store.get(name).await.unwrap().unwrap().bytes,
        a,
        "unchanged"
    );

    // Listing by prefix and by directory.
    for (object, data) in [
        ("42/wal/00000002.history", &b"1\t0/3000000\tx\n"[..]),
        ("43/wal/000000010000000000000001", b"x"),
    ] {
        let data = Bytes::copy_from_slice(data);
        put_new(store, object, data, &ObjectAttrs::default())
            .await
            .unwrap();
    }
    for (prefix, want) in [
        ("42/wal/", vec![name, "42/wal/00000002.history"]),
        ("42/wal/0000000100", vec![name]),
    ] {
        let mut names: Vec<String> = store
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        names.sort();
        assert_eq!(names, want, "{prefix}");
    }
    let mut dirs = store.list_dirs("").await.unwrap();
    dirs.sort();
    assert_eq!(dirs, vec!["42", "43"]);
    assert_eq!(
        walrelay_store::layout::systems(store).await.unwrap(),
        vec![42, 43]
    );
    assert!(
        walrelay_store::choose_system(store, None).await.is_err(),
        "two clusters: ambiguous"
    );

    // Delete, and deleting what is gone.
    store.delete(name).await.unwrap();
    store.delete(name).await.unwrap();
    assert!(store.get(name).await.unwrap().is_none());
    assert_eq!(
        put_new(store, name, b.clone(), &attrs).await.unwrap(),
        Stored::Created,
        "the name is free again"
    );
}

/// Large objects: streamed in (a multipart upload for S3: 40 MB is three parts) and from a file,
/// never replacing, read back as a stream; an abandoned stream leaves nothing.
async fn large_objects(store: &dyn ArchiveStore) {
    use tokio::io::AsyncReadExt;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..40 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let read_back = |name: &'static str| async move {
        let mut r = store.reader(name).await.unwrap().unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        v
    };
    let stream = |chunks: Vec<Bytes>, end: bool| {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let feeder = tokio::spawn(async move {
            for c in chunks {
                if tx.send(StreamChunk::Data(c)).await.is_err() {
                    return;
                }
            }
            if end {
                let _ = tx.send(StreamChunk::End).await;
            }
        });
        (rx, feeder)
    };
    let pieces: Vec<Bytes> = data.chunks(3 << 20).map(Bytes::copy_from_slice).collect();
    let (rx, feeder) = stream(pieces.clone(), true);
    assert_eq!(
        store.put_stream("big/streamed", rx).await.unwrap(),
        PutIfAbsent::Created
    );
    feeder.await.unwrap();
    assert!(read_back("big/streamed").await == data, "streamed object");
    let (rx, feeder) = stream(vec![Bytes::from_static(b"x")], true);
    assert_eq!(
        store.put_stream("big/streamed", rx).await.unwrap(),
        PutIfAbsent::Exists
    );
    feeder.await.unwrap();
    // The writer stops before the end: an error, and no object.
    let (rx, feeder) = stream(pieces[..3].to_vec(), false);
    assert!(store.put_stream("big/abandoned", rx).await.is_err());
    feeder.await.unwrap();
    assert!(store.get("big/abandoned").await.unwrap().is_none());
    // From a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &data).unwrap();
    assert_eq!(
        store.put_file_if_absent("big/file", &file).await.unwrap(),
        PutIfAbsent::Created
    );
    assert_eq!(
        store.put_file_if_absent("big/file", &file).await.unwrap(),
        PutIfAbsent::Exists
    );
    assert!(read_back("big/file").await == data, "object from a file");
    assert!(store.reader("big/none").await.unwrap().is_none());
    for n in ["big/streamed", "big/file"] {
        store.delete(n).await.unwrap();
    }
}

/// The contract on a remote store, started by `start`; isolation between prefixes; then the
/// server stopped: an error the uploader retries (transient), named by the object, without the
/// server's secret.
async fn remote_store_keeps_the_contract<S: StoreServer>(
    start: impl FnOnce() -> walrelay_testkit::Result<S> + Send + 'static,
) {
    let mut server = tokio::task::spawn_blocking(start).await.unwrap().unwrap();
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let store = store_for(&server.url("archive/one"));
    contract(store.as_ref()).await;
    large_objects(store.as_ref()).await;
    // The prefix isolates: nothing of it shows at another prefix.
    let other = store_for(&server.url("archive/two"));
    assert!(other.list("").await.unwrap().is_empty());

    let secret = server.secret();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let e = store.get("42/wal/00000002.history").await.unwrap_err();
    assert_eq!(
        walrelay_client::Classify::class(&e),
        walrelay_client::ErrorClass::Transient,
        "{e}"
    );
    assert!(e.to_string().contains("00000002.history"), "{e}");
    assert!(!e.to_string().contains(secret), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_keeps_the_contract() {
    remote_store_keeps_the_contract(|| S3Server::start("walrelay-contract")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_store_keeps_the_contract() {
    remote_store_keeps_the_contract(|| AzuriteServer::start("walrelay-contract")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_keeps_the_contract() {
    let d = tempfile::tempdir().unwrap();
    let store = store_for(&format!("file://{}", d.path().display()));
    contract(store.as_ref()).await;
    large_objects(store.as_ref()).await;
    // No temp files are left, and the attribute files do not show in listings.
    let all = store.list("").await.unwrap();
    assert!(all.iter().all(|o| !o.name.ends_with(".sha256")), "{all:?}");
}
