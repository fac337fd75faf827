//! `restore_command = 'walrelay restore %f %p -D s3://bucket/prefix --prefetch 8'`: a file from an
//! archive in object storage, with the same exit-code rules as a directory archive
//! (walrelay-archive's `restore`): 0 restored, 1 not in the archive, 200 damaged, 201 any other
//! failure — an unreachable store included, so that recovery stops instead of ending early.
//!
//! # Which cluster
//!
//! Objects live under the system identifier ([`crate::layout`]). PostgreSQL runs restore_command
//! in the data directory, whose `global/pg_control` starts with the system identifier
//! (`ControlFileData.system_identifier`, the first field on every major): restore reads it there,
//! so WAL of another cluster in the same bucket can never be restored. Elsewhere (a test by hand),
//! `--system-identifier` or the only cluster in the store decides.
//!
//! # Prefetch
//!
//! One object fetch per segment makes recovery wait a round trip per segment. With
//! `--prefetch N`, restore hands the next N segments of the timeline to a background process
//! (`walrelay restore-prefetch`, detached, so that restore itself returns at once) that fetches
//! them, checks them (whole segment, SHA-256 stored with the object) and leaves them in the cache
//! directory (`--cache DIR`, default `pg_wal/.walrelay-prefetch`) as plain segments. The next
//! restore takes its segment from there; a segment still being fetched is waited for (the
//! fetcher holds a lock on `.NAME.lock` meanwhile), a damaged or missing one is fetched directly.
//! Cached segments older than the one asked for are removed, so the cache holds at most about
//! N segments.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use walrelay_archive::{RestoreOptions, RestoreOutcome, Restored};
use walrelay_protocol::{SegmentId, WalFileName, WalSegmentSize, XLogSegNo};

use crate::error::{Result, StoreError};
use crate::layout::{choose_system, WalLayout};
use crate::store::{ArchiveStore, Fetched};

/// The cache directory's name beside `%p` (in `pg_wal`) when `--cache` is not given.
pub const DEFAULT_CACHE_DIR_NAME: &str = ".walrelay-prefetch";

/// How to restore from a store: [`StoreRestoreOptions::new`], then
/// [`StoreRestoreOptions::with_prefetch`].
#[derive(Clone, Debug, Default)]
pub struct StoreRestoreOptions {
    restore: RestoreOptions,
    /// The cluster; default: the data directory's `global/pg_control`, else the only one stored.
    system_identifier: Option<u64>,
    /// Segments to fetch ahead.
    prefetch: usize,
    /// Where prefetched segments wait; default: [`DEFAULT_CACHE_DIR_NAME`] beside `%p`.
    cache: Option<PathBuf>,
}

impl StoreRestoreOptions {
    /// Restore with `restore`'s rules, the WAL of `system_identifier` (default: the data
    /// directory's, else the only cluster stored), no prefetch.
    pub fn new(restore: RestoreOptions, system_identifier: Option<u64>) -> Self {
        StoreRestoreOptions {
            restore,
            system_identifier,
            prefetch: 0,
            cache: None,
        }
    }

    /// Fetch `depth` segments ahead into `cache` (default: [`DEFAULT_CACHE_DIR_NAME`] beside `%p`).
    pub fn with_prefetch(mut self, depth: usize, cache: Option<PathBuf>) -> Self {
        self.prefetch = depth;
        self.cache = cache;
        self
    }
}

/// Largest number of fetches the prefetcher runs at once.
const PREFETCH_CONCURRENCY: usize = 4;

/// The system identifier in `global/pg_control` of the current directory (a data directory).
fn sysid_from_pg_control() -> Option<u64> {
    let mut f = File::open("global/pg_control").ok()?;
    let mut b = [0u8; 8];
    f.read_exact(&mut b).ok()?;
    Some(u64::from_ne_bytes(b))
}

/// The copies of a segment, best first: the order a directory archive's restore uses.
const SEGMENT_SUFFIXES: [&str; 4] = ["", ".gz", ".lz4", ".zst"];

/// The complete objects of a segment, best first (see [`SEGMENT_SUFFIXES`]), found with one
/// listing.
async fn find_segment_objects(
    store: &dyn ArchiveStore,
    layout: WalLayout,
    name: &str,
) -> Result<Vec<String>> {
    let objects = store.list(&layout.object(name)).await?;
    let mut ranked: Vec<(usize, String)> = objects
        .into_iter()
        .filter_map(|o| {
            let file = layout.file_name(&o.name)?;
            let rank = SEGMENT_SUFFIXES
                .iter()
                .position(|s| file.strip_prefix(name) == Some(*s))?;
            Some((rank, o.name))
        })
        .collect();
    ranked.sort();
    Ok(ranked.into_iter().map(|(_, n)| n).collect())
}

/// The best complete object for a segment and its content: the first in [`SEGMENT_SUFFIXES`]
/// order that carries the SHA-256 its WAL was stored with, else the first. A copy without one
/// (put there by another tool, or by `receive --no-checksums`) cannot be checked, so a copy
/// that can wins over it. Where listing a name prefix would list the whole WAL directory, the
/// four possible names are asked for in order instead: at most four requests, however large
/// the archive.
async fn get_segment_object(
    store: &dyn ArchiveStore,
    layout: WalLayout,
    name: &str,
) -> Result<Option<(String, Fetched)>> {
    let candidates: Vec<String> = if store.lists_name_prefixes_cheaply() {
        find_segment_objects(store, layout, name).await?
    } else {
        SEGMENT_SUFFIXES
            .iter()
            .map(|suffix| layout.object(&format!("{name}{suffix}")))
            .collect()
    };
    let mut unchecked: Option<(String, Fetched)> = None;
    for object in candidates {
        let Some(f) = store.get(&object).await? else {
            continue;
        };
        if f.attrs.wal_sha256.is_some() {
            return Ok(Some((object, f)));
        }
        if unchecked.is_none() {
            unchecked = Some((object, f));
        }
    }
    Ok(unchecked)
}

/// Fetches a segment object, decodes it and checks it: a whole segment, and the SHA-256 stored
/// with it. `Ok(None)`: no such object.
pub async fn fetch_segment(
    store: &dyn ArchiveStore,
    layout: WalLayout,
    name: &str,
    seg_size: Option<WalSegmentSize>,
) -> Result<Option<Vec<u8>>> {
    let Some((object, fetched)) = get_segment_object(store, layout, name).await? else {
        return Ok(None);
    };
    let shown = format!("{}/{object}", store.location());
    let max = seg_size.map_or(
        u64::from(walrelay_protocol::segment::MAX_WAL_SEGMENT_SIZE),
        WalSegmentSize::as_u64,
    );
    let bytes = fetched.bytes;
    let sha = fetched.attrs.wal_sha256;
    let decoded = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let (wal, _) = walrelay_archive::decode_bytes(Path::new(&shown), &bytes, max, false)?;
        if let Some(want) = sha {
            let got: [u8; 32] = Sha256::digest(&wal).into();
            if got != want {
                return Err(StoreError::Corrupt {
                    object: shown,
                    reason: format!(
                        "its WAL has SHA-256 {} but was stored with {}",
                        hex::encode(got),
                        hex::encode(want)
                    ),
                });
            }
        }
        Ok(wal)
    })
    .await
    .map_err(|e| StoreError::io("decode", "", io::Error::other(e.to_string())))??;
    Ok(Some(decoded))
}

fn cache_dir_for(dest: &Path, opts: &StoreRestoreOptions) -> PathBuf {
    opts.cache.clone().unwrap_or_else(|| {
        dest.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(DEFAULT_CACHE_DIR_NAME)
    })
}

fn lock_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!(".{name}.lock"))
}

/// Takes the segment from the cache if a fetcher left it there (waiting for one that is still
/// fetching it). `Ok(None)`: not cached (or damaged there; then removed).
fn take_cached(
    cache: &Path,
    name: &str,
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<Option<Restored>> {
    let cached = cache.join(name);
    if !cache.is_dir() {
        return Ok(None);
    }
    // A fetcher holds this lock while it fetches the segment: wait for it.
    let _lock = match File::open(lock_path(cache, name)) {
        Ok(f) => Flock::lock(f, FlockArg::LockExclusive).ok(),
        Err(_) => None,
    };
    if !cached.is_file() {
        return Ok(None);
    }
    // The fetcher checked it (whole segment, SHA-256) and fsynced it: on the same file system it
    // is renamed into place; elsewhere copied.
    let result = match walrelay_archive::restore_by_rename(&cached, dest, opts) {
        Ok(true) => Ok(Restored {
            source: cached.clone(),
            bytes: fs::metadata(dest).map(|m| m.len()).unwrap_or_default(),
            padded_from: None,
        }),
        Ok(false) => {
            let bytes = fs::read(&cached).map_err(|e| StoreError::io("read", &cached, e))?;
            walrelay_archive::restore_bytes(name, &cached, &bytes, dest, opts)
        }
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(&cached);
    match result {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_corruption() => {
            warn!(error = %e, "prefetched segment is damaged; fetching it again");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes cached segments (and lock and temp files) of the timeline before `segno`: recovery is
/// past them.
fn drop_stale_cache(cache: &Path, current: SegmentId, seg: WalSegmentSize) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file) = entry.file_name().into_string() else {
            continue;
        };
        let name = file.trim_start_matches('.');
        let Some(id) = name
            .get(..24)
            .and_then(WalFileName::parse)
            .and_then(|n| n.segment_id(seg))
        else {
            continue;
        };
        if id.timeline == current.timeline && id.segno < current.segno {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Restores `wal_file_name` from the store to `dest` (see the module docs). Returns the outcome
/// and, with prefetch, what a background fetcher should bring next.
pub async fn restore_from_store(
    store: &dyn ArchiveStore,
    wal_file_name: &str,
    dest: &Path,
    opts: &StoreRestoreOptions,
) -> Result<(RestoreOutcome, Option<PrefetchPlan>)> {
    let is_segment = walrelay_archive::requested_is_segment(wal_file_name)?;
    let wanted = opts.system_identifier.or_else(sysid_from_pg_control);
    let Some(sysid) = choose_system(store, wanted).await? else {
        return Err(StoreError::NoCluster {
            location: store.location(),
            system_identifier: wanted.unwrap_or_default(),
        });
    };
    let layout = WalLayout::new(sysid);

    if !is_segment {
        let object = layout.object(wal_file_name);
        let Some(fetched) = store.get(&object).await? else {
            return not_found(store, sysid).await;
        };
        let shown = PathBuf::from(format!("{}/{object}", store.location()));
        let r = walrelay_archive::restore_bytes(
            wal_file_name,
            &shown,
            &fetched.bytes,
            dest,
            &opts.restore,
        )?;
        return Ok((RestoreOutcome::Restored(r), None));
    }

    // One directory per cluster: a cache shared by the servers of several clusters (`--cache`
    // given to each) never hands one cluster's segment to another.
    let cache = cache_dir_for(dest, opts).join(sysid.to_string());
    let mut restored = None;
    if opts.prefetch > 0 {
        let (c, n, d, o) = (
            cache.clone(),
            wal_file_name.to_string(),
            dest.to_path_buf(),
            opts.restore.clone(),
        );
        restored = tokio::task::spawn_blocking(move || take_cached(&c, &n, &d, &o))
            .await
            .map_err(|e| StoreError::io("read cache", "", io::Error::other(e.to_string())))??;
        if restored.is_some() {
            debug!(file = %wal_file_name, "restored from the prefetch cache");
        }
    }
    let restored = match restored {
        Some(r) => r,
        None => {
            let Some(wal) =
                fetch_segment(store, layout, wal_file_name, opts.restore.seg_size).await?
            else {
                return not_found(store, sysid).await;
            };
            walrelay_archive::restore_bytes(
                wal_file_name,
                Path::new(wal_file_name),
                &wal,
                dest,
                &opts.restore,
            )?
        }
    };
    let plan = if opts.prefetch > 0 {
        plan_prefetch(wal_file_name, restored.bytes, &cache, opts, sysid)
    } else {
        None
    };
    Ok((RestoreOutcome::Restored(restored), plan))
}

/// "Not in the archive" — if the archive holds the cluster at all: a store without any of its
/// WAL is a wrong URL or prefix, an error that stops recovery.
async fn not_found(
    store: &dyn ArchiveStore,
    sysid: u64,
) -> Result<(RestoreOutcome, Option<PrefetchPlan>)> {
    if crate::layout::systems(store).await?.contains(&sysid) {
        Ok((RestoreOutcome::NotFound, None))
    } else {
        Err(StoreError::NoCluster {
            location: store.location(),
            system_identifier: sysid,
        })
    }
}

/// The next segments to prefetch: neither cached nor being fetched.
fn plan_prefetch(
    name: &str,
    seg_bytes: u64,
    cache: &Path,
    opts: &StoreRestoreOptions,
    sysid: u64,
) -> Option<PrefetchPlan> {
    let seg = opts
        .restore
        .seg_size
        .or_else(|| WalSegmentSize::new(seg_bytes).ok())?;
    let id = WalFileName::parse(name)?.segment_id(seg)?;
    if let Err(e) = walrelay_durable::create_dir_all_durable(
        cache,
        0o700,
        walrelay_durable::Owner::of_dir_if_root(cache.parent().unwrap_or(Path::new("."))),
    ) {
        warn!(error = %e, "cannot create the prefetch cache; no prefetch");
        return None;
    }
    drop_stale_cache(cache, id, seg);
    let names: Vec<String> = (1..=opts.prefetch as u64)
        .map(|i| SegmentId::new(id.timeline, XLogSegNo(id.segno.0 + i)).file_name(seg))
        .filter(|n| !cache.join(n).exists() && !busy(cache, n))
        .collect();
    (!names.is_empty()).then(|| PrefetchPlan {
        system_identifier: sysid,
        cache: cache.to_path_buf(),
        names,
    })
}

/// Segments a background fetcher should bring into the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchPlan {
    pub system_identifier: u64,
    pub cache: PathBuf,
    pub names: Vec<String>,
}

/// Whether a fetcher holds the segment's lock right now.
fn busy(cache: &Path, name: &str) -> bool {
    match File::open(lock_path(cache, name)) {
        Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => false,
    }
}

/// The background fetcher (`walrelay restore-prefetch`): brings `plan.names` into the cache,
/// [`PREFETCH_CONCURRENCY`] at a time; a segment another fetcher has, or that the store does not
/// have, is skipped. Errors are logged, never fatal: restore fetches what is missing itself.
pub async fn prefetch_worker(
    store: &dyn ArchiveStore,
    plan: &PrefetchPlan,
    seg_size: Option<WalSegmentSize>,
) {
    let layout = WalLayout::new(plan.system_identifier);
    futures::stream::iter(plan.names.iter())
        .for_each_concurrent(PREFETCH_CONCURRENCY, |name| async move {
            if let Err(e) = prefetch_one(store, layout, &plan.cache, name, seg_size).await {
                debug!(file = %name, error = %e, "prefetch failed; restore fetches it itself");
            }
        })
        .await;
}

async fn prefetch_one(
    store: &dyn ArchiveStore,
    layout: WalLayout,
    cache: &Path,
    name: &str,
    seg_size: Option<WalSegmentSize>,
) -> Result<()> {
    let target = cache.join(name);
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(cache, name))
        .map_err(|e| StoreError::io("open", lock_path(cache, name), e))?;
    let Ok(_lock) = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) else {
        return Ok(()); // another fetcher has it
    };
    if target.exists() {
        return Ok(());
    }
    let Some(wal) = fetch_segment(store, layout, name, seg_size).await? else {
        return Ok(());
    };
    // Durable before it gets its name: restore renames it into pg_wal as it is.
    let tmp = cache.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    std::io::Write::write_all(&mut f, &wal).map_err(|e| StoreError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| StoreError::io("rename", &tmp, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::store::{put_new, ObjectAttrs};
    use crate::testutil::{name, segment};

    const SYSID: u64 = 7_400_000_000_000_000_001;

    async fn stored(
        segnos: std::ops::RangeInclusive<u64>,
    ) -> (tempfile::TempDir, Arc<dyn ArchiveStore>) {
        let root = tempfile::tempdir().unwrap();
        let store: Arc<dyn ArchiveStore> =
            Arc::new(crate::LocalDirStore::open(root.path()).unwrap());
        let layout = WalLayout::new(SYSID);
        for segno in segnos {
            let wal = segment(segno, segno as u8, SYSID);
            let sha: [u8; 32] = Sha256::digest(&wal).into();
            let mut enc = zstd::stream::encode_all(&wal[..], 1).unwrap();
            enc.shrink_to_fit();
            put_new(
                store.as_ref(),
                &layout.object(&format!("{}.zst", name(segno))),
                Bytes::from(enc),
                &ObjectAttrs {
                    wal_sha256: Some(sha),
                },
            )
            .await
            .unwrap();
        }
        put_new(
            store.as_ref(),
            &layout.object("00000002.history"),
            Bytes::from_static(b"1\t0/3000000\tx\n"),
            &ObjectAttrs::default(),
        )
        .await
        .unwrap();
        (root, store)
    }

    fn opts(prefetch: usize, cache: &Path) -> StoreRestoreOptions {
        StoreRestoreOptions::new(RestoreOptions::default(), Some(SYSID))
            .with_prefetch(prefetch, Some(cache.to_path_buf()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restores_segments_histories_and_prefetches_ahead() {
        let (_root, store) = stored(1..=4).await;
        let pg_wal = tempfile::tempdir().unwrap();
        let cache = pg_wal.path().join(DEFAULT_CACHE_DIR_NAME);
        // The cluster's own directory in the cache.
        let cached = cache.join(SYSID.to_string());
        let dest = pg_wal.path().join("RECOVERYXLOG");

        let (out, plan) = restore_from_store(store.as_ref(), &name(1), &dest, &opts(2, &cache))
            .await
            .unwrap();
        assert!(matches!(out, RestoreOutcome::Restored(_)), "{out:?}");
        assert_eq!(fs::read(&dest).unwrap(), segment(1, 1, SYSID));
        let plan = plan.unwrap();
        assert_eq!(plan.names, vec![name(2), name(3)]);
        prefetch_worker(store.as_ref(), &plan, None).await;
        assert!(cached.join(name(2)).is_file() && cached.join(name(3)).is_file());

        // The next one comes from the cache (and leaves it); the plan moves on.
        let (out, plan) = restore_from_store(store.as_ref(), &name(2), &dest, &opts(2, &cache))
            .await
            .unwrap();
        let RestoreOutcome::Restored(r) = out else {
            panic!()
        };
        assert_eq!(r.source, cached.join(name(2)));
        assert_eq!(fs::read(&dest).unwrap(), segment(2, 2, SYSID));
        assert!(!cached.join(name(2)).exists());
        assert_eq!(plan.unwrap().names, vec![name(4)], "3 is cached already");
        // Past the end of the archive: not found, and prefetch of missing segments is harmless.
        let (out, _) = restore_from_store(store.as_ref(), &name(9), &dest, &opts(2, &cache))
            .await
            .unwrap();
        assert_eq!(out, RestoreOutcome::NotFound);
        // History files, and ones that do not exist.
        let h = pg_wal.path().join("RECOVERYHISTORY");
        let (out, _) = restore_from_store(store.as_ref(), "00000002.history", &h, &opts(0, &cache))
            .await
            .unwrap();
        assert!(matches!(out, RestoreOutcome::Restored(_)));
        assert_eq!(fs::read_to_string(&h).unwrap(), "1\t0/3000000\tx\n");
        let (out, _) = restore_from_store(store.as_ref(), "00000003.history", &h, &opts(0, &cache))
            .await
            .unwrap();
        assert_eq!(out, RestoreOutcome::NotFound);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_objects_and_a_damaged_cache_are_caught() {
        let (root, store) = stored(1..=2).await;
        let pg_wal = tempfile::tempdir().unwrap();
        let cache = pg_wal.path().join("cache");
        fs::create_dir_all(cache.join(SYSID.to_string())).unwrap();
        let dest = pg_wal.path().join("RECOVERYXLOG");
        // A cached copy that is not a whole segment is dropped and fetched again.
        fs::write(cache.join(SYSID.to_string()).join(name(1)), b"short").unwrap();
        // Another cluster's segment of that name in the cache, where an older walrelay kept
        // every cluster's: never handed out.
        fs::write(cache.join(name(1)), segment(1, 9, SYSID + 1)).unwrap();
        let (out, _) = restore_from_store(store.as_ref(), &name(1), &dest, &opts(1, &cache))
            .await
            .unwrap();
        assert!(matches!(out, RestoreOutcome::Restored(_)));
        assert_eq!(fs::read(&dest).unwrap(), segment(1, 1, SYSID));
        // An object whose WAL does not match the SHA-256 stored with it: damaged (exit 200).
        let attr = root
            .path()
            .join(WalLayout::new(SYSID).object(&format!("{}.zst.sha256", name(2))));
        fs::write(&attr, format!("{}  x\n", "00".repeat(32))).unwrap();
        let e = restore_from_store(store.as_ref(), &name(2), &dest, &opts(0, &cache))
            .await
            .unwrap_err();
        assert!(e.is_corruption(), "{e}");
        // Another cluster's WAL is never handed out; a store without the cluster's WAL is a
        // wrong URL, an error (never "not found", which would end recovery early).
        let mut o = opts(0, &cache);
        o.system_identifier = Some(42);
        let e = restore_from_store(store.as_ref(), &name(1), &dest, &o)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NoCluster { .. }), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let empty: Arc<dyn ArchiveStore> =
            Arc::new(crate::LocalDirStore::open(empty.path()).unwrap());
        let e = restore_from_store(empty.as_ref(), &name(1), &dest, &opts(0, &cache))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NoCluster { .. }), "{e}");
    }

    /// A plain copy that carries no SHA-256 (put there by hand or by another tool) beside the
    /// checked `.zst`: the copy that can be checked is the one restored, here from a store that
    /// lists prefixes and from one that does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_copy_wins_over_one_that_cannot_be_checked() {
        let (_root, store) = stored(3..=3).await;
        let mut rotten = segment(3, 3, SYSID);
        rotten[20_000] ^= 0xff;
        put_new(
            store.as_ref(),
            &WalLayout::new(SYSID).object(&name(3)),
            Bytes::from(rotten),
            &ObjectAttrs::default(),
        )
        .await
        .unwrap();
        let pg_wal = tempfile::tempdir().unwrap();
        let dest = pg_wal.path().join("RECOVERYXLOG");
        let cache = pg_wal.path().join("cache");
        let by_listing: Arc<dyn ArchiveStore> = store.clone();
        let by_name: Arc<dyn ArchiveStore> = Arc::new(DirectoryLister {
            inner: store.clone(),
            name_prefix_listings: std::sync::atomic::AtomicUsize::new(0),
        });
        for s in [by_listing, by_name] {
            let _ = fs::remove_file(&dest);
            let (out, _) = restore_from_store(s.as_ref(), &name(3), &dest, &opts(0, &cache))
                .await
                .unwrap();
            assert!(matches!(out, RestoreOutcome::Restored(_)));
            assert!(fs::read(&dest).unwrap() == segment(3, 3, SYSID));
        }
    }

    /// A store that lists whole directories only (as Azure does): a listing of a prefix inside a
    /// name is counted, and must not happen.
    #[derive(Debug)]
    struct DirectoryLister {
        inner: Arc<dyn ArchiveStore>,
        name_prefix_listings: std::sync::atomic::AtomicUsize,
    }

    impl ArchiveStore for DirectoryLister {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn lists_name_prefixes_cheaply(&self) -> bool {
            false
        }
        fn list<'a>(&'a self, prefix: &'a str) -> crate::StoreFuture<'a, Vec<crate::ObjectInfo>> {
            if !prefix.is_empty() && !prefix.ends_with('/') {
                self.name_prefix_listings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.inner.list(prefix)
        }
        fn list_dirs<'a>(&'a self, prefix: &'a str) -> crate::StoreFuture<'a, Vec<String>> {
            self.inner.list_dirs(prefix)
        }
        fn get<'a>(&'a self, name: &'a str) -> crate::StoreFuture<'a, Option<Fetched>> {
            self.inner.get(name)
        }
        fn put_if_absent<'a>(
            &'a self,
            name: &'a str,
            put: crate::NewObject,
        ) -> crate::StoreFuture<'a, crate::PutIfAbsent> {
            self.inner.put_if_absent(name, put)
        }
        fn delete<'a>(&'a self, name: &'a str) -> crate::StoreFuture<'a, ()> {
            self.inner.delete(name)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_lists_directories_is_asked_for_names_best_first() {
        let (root, inner) = stored(1..=2).await;
        // A plain copy of segment 2 beside its .zst, which is damaged (its stored SHA-256 is
        // wrong): the plain copy comes first, so the damaged one is never read.
        let layout = WalLayout::new(SYSID);
        let attr = root
            .path()
            .join(layout.object(&format!("{}.zst.sha256", name(2))));
        fs::write(&attr, format!("{}  x\n", "00".repeat(32))).unwrap();
        let wal = segment(2, 2, SYSID);
        let sha: [u8; 32] = Sha256::digest(&wal).into();
        put_new(
            inner.as_ref(),
            &layout.object(&name(2)),
            Bytes::from(wal.clone()),
            &ObjectAttrs {
                wal_sha256: Some(sha),
            },
        )
        .await
        .unwrap();
        let store = DirectoryLister {
            inner,
            name_prefix_listings: Default::default(),
        };
        let pg_wal = tempfile::tempdir().unwrap();
        let cache = pg_wal.path().join("cache");
        let dest = pg_wal.path().join("RECOVERYXLOG");
        for (segno, want) in [(1, segment(1, 1, SYSID)), (2, wal)] {
            let (out, _) = restore_from_store(&store, &name(segno), &dest, &opts(0, &cache))
                .await
                .unwrap();
            assert!(matches!(out, RestoreOutcome::Restored(_)), "{out:?}");
            assert_eq!(fs::read(&dest).unwrap(), want);
        }
        let (out, _) = restore_from_store(&store, &name(3), &dest, &opts(0, &cache))
            .await
            .unwrap();
        assert_eq!(out, RestoreOutcome::NotFound);
        assert_eq!(
            store
                .name_prefix_listings
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
