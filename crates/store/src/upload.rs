//! The spool and its uploader: how `walrelay receive -D s3://…` keeps its durability contract.
//!
//! ```text
//!  server ──WAL──► receive engine ──► SPOOL (a local archive directory, pg_receivewal layout:
//!                  (durable +          NAME.partial → NAME → NAME.zst, walrelay.sha256, *.history)
//!                   validated, then             │
//!                   acknowledged)               ▼ Uploader (this module): complete files only,
//!                                         bounded concurrency, put-if-absent, confirmed
//!                                               │
//!                                               ▼
//!                                   STORE  PREFIX/SYSID/wal/NAME.zst  (crate::layout)
//! ```
//!
//! # What it guarantees
//!
//! * WAL is acknowledged to the server as soon as it is durable **in the spool** (the engine's
//!   rules, unchanged); the store is never on the path of a flush position. A store that is down
//!   only lets the spool grow: the uploader retries with backoff, warns (and says how much is
//!   waiting), and the metrics show it ([`UploadStats`]).
//! * Only complete files go up: complete segments in their final format (compressed when the
//!   receiver compresses, checksummed when it keeps checksums), history files and failover
//!   reports. Each is checked before the upload — it decodes to a whole segment of this cluster
//!   (system identifier in the first page header), and its SHA-256 matches the spool's
//!   `walrelay.sha256` — and stored with put-if-absent ([`crate::put_new`]): an identical object is
//!   success, a different one stops the uploader with an error naming both checksums.
//! * A spool file is removed only after its upload is confirmed, and never the newest segment
//!   file of the spool (the engine resumes from what the spool holds: keeping the newest segment
//!   means a restart never streams from an older position than what was uploaded — and never
//!   skips). History files and failover reports stay in the spool (they are tiny, and the
//!   engine's timeline logic reads them).
//! * A crash at any point is harmless: an interrupted upload leaves no object (a single PUT is
//!   atomic); a file uploaded but not yet removed is uploaded again after a restart and found
//!   identical.
//!
//! Uploads run in segment order (history files first), `concurrency` at a time.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use walrelay_archive::{Compression, ListedFile};
use walrelay_protocol::{Lsn, TimelineId, WalFileName, WalSegmentSize};

use crate::error::{Result, StoreError};
use crate::layout::{is_archivable, WalLayout};
use crate::store::{put_new, ArchiveStore, ObjectAttrs, Stored};

/// Default number of uploads in flight.
pub const DEFAULT_UPLOAD_CONCURRENCY: u16 = 4;
/// How often the spool is looked at when nothing happens.
pub const SPOOL_POLL: Duration = Duration::from_millis(250);
/// Longest wait between attempts while the store fails.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15);
/// While uploads fail, a warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How long the uploader's first request may take before it warns and goes on.
const FIRST_CONTACT_TIMEOUT: Duration = Duration::from_secs(20);

/// Live numbers of the uploader, for metrics (`walrelay_upload_*`).
#[derive(Debug, Default)]
pub struct UploadStats {
    uploaded_lsn: AtomicU64,
    uploaded_files: AtomicU64,
    uploaded_bytes: AtomicU64,
    already_there: AtomicU64,
    failures: AtomicU64,
    pending_files: AtomicU64,
    pending_bytes: AtomicU64,
    oldest_pending_unix_ms: AtomicU64,
    last_success_unix_ms: AtomicU64,
    failing: AtomicBool,
}

/// A copy of [`UploadStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadSnapshot {
    /// End of the WAL whose segments are all in the store (on the newest timeline uploaded).
    pub uploaded_lsn: Lsn,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    /// Uploads that found an identical object already there.
    pub already_there: u64,
    /// Failed upload attempts.
    pub failures: u64,
    /// Files in the spool waiting for an upload, and their size.
    pub pending_files: u64,
    pub pending_bytes: u64,
    /// When the oldest file waiting in the spool was written (Unix ms; 0: nothing waits). Its
    /// age grows while a store hangs, when `failing` still says nothing.
    pub oldest_pending_unix_ms: u64,
    pub last_success_unix_ms: u64,
    /// The last attempt failed.
    pub failing: bool,
}

impl UploadStats {
    pub fn snapshot(&self) -> UploadSnapshot {
        UploadSnapshot {
            uploaded_lsn: Lsn(self.uploaded_lsn.load(Ordering::Relaxed)),
            uploaded_files: self.uploaded_files.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Ordering::Relaxed),
            already_there: self.already_there.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            pending_files: self.pending_files.load(Ordering::Relaxed),
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            oldest_pending_unix_ms: self.oldest_pending_unix_ms.load(Ordering::Relaxed),
            last_success_unix_ms: self.last_success_unix_ms.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
        }
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now()).unwrap_or(0)
}

fn unix_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// What the uploader needs.
pub struct UploaderConfig {
    pub spool: PathBuf,
    pub store: Arc<dyn ArchiveStore>,
    /// The receiver's `--compress`: with compression, a plain segment in the spool is waiting to
    /// be compressed and not uploaded yet.
    pub compression: Compression,
    /// The receiver keeps `walrelay.sha256`: a segment is ready once its entry is there.
    pub checksums: bool,
    pub concurrency: usize,
    /// The cluster, once known (from IDENTIFY_SYSTEM); segments say it themselves.
    pub system_identifier: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
}

/// One spool file ready for upload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ready {
    name: String,
    size: u64,
    segment: Option<(TimelineId, u64, u64)>, // (timeline, log, seg) of a segment file
}

/// What one look at the spool found.
#[derive(Debug, Default)]
struct SpoolScan {
    ready: Vec<Ready>,
    /// The newest segment file of any state: never removed.
    newest: Option<String>,
    /// Segment files uploaded while they were the newest, kept then, and no longer the newest:
    /// to be removed now.
    uploaded_older: Vec<String>,
    pending_files: u64,
    pending_bytes: u64,
    /// The oldest modification time among the pending files (Unix ms).
    oldest_pending_unix_ms: Option<u64>,
}

fn segment_key(name: &str) -> Option<(TimelineId, u64, u64)> {
    match WalFileName::parse(name)? {
        WalFileName::Segment {
            timeline, log, seg, ..
        } => Some((timeline, u64::from(log), u64::from(seg))),
        _ => None,
    }
}

/// Lists the spool: what may be uploaded now (see the module docs).
fn scan_spool(
    spool: &Path,
    compression: Compression,
    checksums: bool,
    done: &HashSet<String>,
) -> Result<SpoolScan> {
    let entries = fs::read_dir(spool).map_err(|e| StoreError::io("list", spool, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", spool, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let (size, modified) = match entry.metadata() {
            Ok(m) if m.is_file() => (m.len(), m.modified().ok()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("stat", entry.path(), e)),
        };
        files.push(ListedFile {
            name,
            size,
            modified,
        });
    }
    let recorded = match checksums {
        true => walrelay_archive::recorded_names(spool)?,
        false => BTreeSet::new(),
    };
    let mut scan = SpoolScan {
        newest: files
            .iter()
            .filter_map(|f| segment_key(&f.name).map(|k| (k, f.name.clone())))
            .max()
            .map(|(_, n)| n),
        ..Default::default()
    };
    for f in files {
        if done.contains(&f.name) {
            if segment_key(&f.name).is_some() && scan.newest.as_deref() != Some(f.name.as_str()) {
                scan.uploaded_older.push(f.name);
            }
            continue;
        }
        if !is_archivable(&f.name) {
            continue;
        }
        let key = segment_key(&f.name);
        if let Some(ms) = f.modified.and_then(unix_ms) {
            scan.oldest_pending_unix_ms =
                Some(scan.oldest_pending_unix_ms.map_or(ms, |o| o.min(ms)));
        }
        if key.is_some() {
            let (method, _) = walrelay_archive::suffix_info(&f.name);
            let waiting_for_compression = method.is_none() && compression != Compression::None;
            let logical = f.name.get(..24).unwrap_or(&f.name);
            let waiting_for_checksum = checksums && !recorded.contains(logical);
            if waiting_for_compression || waiting_for_checksum {
                scan.pending_files += 1;
                scan.pending_bytes += f.size;
                continue;
            }
        }
        scan.pending_files += 1;
        scan.pending_bytes += f.size;
        scan.ready.push(Ready {
            name: f.name,
            size: f.size,
            segment: key,
        });
    }
    // History files and reports first (a timeline's history before any of its WAL), then
    // segments in WAL order.
    scan.ready.sort_by(|a, b| {
        (a.segment.is_some(), a.segment, &a.name).cmp(&(b.segment.is_some(), b.segment, &b.name))
    });
    Ok(scan)
}

/// A spool file read and checked, ready to go up.
struct Prepared {
    bytes: Bytes,
    attrs: ObjectAttrs,
    system_identifier: Option<u64>,
    /// End LSN of a segment.
    end_lsn: Option<Lsn>,
}

/// Reads a spool file and checks it: a segment decodes to a whole segment of one cluster whose
/// SHA-256 matches the spool's record.
fn prepare(spool: &Path, name: &str, checksums: bool) -> Result<Prepared> {
    let path = spool.join(name);
    let bytes = fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
    let Some(WalFileName::Segment { .. }) = WalFileName::parse(name) else {
        return Ok(Prepared {
            bytes: Bytes::from(bytes),
            attrs: ObjectAttrs::default(),
            system_identifier: None,
            end_lsn: None,
        });
    };
    let max = u64::from(walrelay_protocol::segment::MAX_WAL_SEGMENT_SIZE);
    let (wal, _) = walrelay_archive::decode_bytes(&path, &bytes, max, false)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        object: path.display().to_string(),
        reason,
    };
    let header = walrelay_wal::inspect_segment_start(&wal)
        .map_err(|e| corrupt(format!("its first page header is not valid: {e}")))?;
    let seg =
        WalSegmentSize::new(u64::from(header.segment_size)).map_err(|e| corrupt(e.to_string()))?;
    if wal.len() as u64 != seg.as_u64() {
        return Err(corrupt(format!(
            "holds {} bytes of WAL, a segment has {}",
            wal.len(),
            seg.as_u64()
        )));
    }
    let id = WalFileName::parse(name)
        .and_then(|n| n.segment_id(seg))
        .ok_or_else(|| corrupt("not a valid segment name for its segment size".into()))?;
    header
        .check_segment(id, seg, None)
        .map_err(|e| corrupt(format!("holds other WAL than its name says: {e}")))?;
    let sha: [u8; 32] = Sha256::digest(&wal).into();
    if checksums {
        let list = walrelay_archive::read_checksums(spool)?;
        let logical = &name[..24];
        if let Some(want) = list.entries.get(logical) {
            if *want != sha {
                return Err(corrupt(format!(
                    "its WAL has SHA-256 {} but walrelay.sha256 records {}: the spool file changed after it was received",
                    hex::encode(sha),
                    hex::encode(want)
                )));
            }
        }
    }
    Ok(Prepared {
        bytes: Bytes::from(bytes),
        attrs: ObjectAttrs {
            wal_sha256: Some(sha),
        },
        system_identifier: Some(header.system_identifier),
        end_lsn: Some(id.end_lsn(seg)),
    })
}

/// The uploader's state between rounds.
struct Uploader {
    cfg: UploaderConfig,
    stats: Arc<UploadStats>,
    /// Files uploaded that stay in the spool (history files, reports, the newest segment).
    done: HashSet<String>,
    system_identifier: Option<u64>,
    failing_since: Option<Instant>,
    last_warning: Option<Instant>,
    retry_delay: Duration,
}

/// Runs the uploader until `shutdown` turns true (then finishes the uploads in flight and
/// returns) or a definite error (a conflicting object, a damaged spool file, another cluster's
/// WAL). Transient store errors are retried forever.
pub async fn run_uploader(
    cfg: UploaderConfig,
    stats: Arc<UploadStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut up = Uploader {
        cfg,
        stats,
        done: HashSet::new(),
        system_identifier: None,
        failing_since: None,
        last_warning: None,
        retry_delay: Duration::from_secs(1),
    };
    info!(store = %up.cfg.store.location(), spool = %up.cfg.spool.display(), "uploading completed WAL from the spool");
    // One request before anything else, so that a store turning walrelay away (no or bad
    // credentials, no permission, no such bucket) stops `receive` at once, instead of leaving the
    // spool to fill silently until the first segment completes and then for days. A store that is
    // down is what the spool is for: a warning, and the rounds retry. The stream does not wait for
    // this answer.
    let contact = tokio::select! {
        c = first_contact(up.cfg.store.as_ref(), FIRST_CONTACT_TIMEOUT) => c,
        _ = shutdown.changed() => return Ok(()),
    };
    match contact {
        FirstContact::Answered => {}
        FirstContact::Refused(e) => return Err(e),
        FirstContact::NoAnswer(why) => warn!(
            error = %why,
            "the archive does not answer now; WAL is kept in the spool and goes up once it answers"
        ),
    }
    loop {
        // A stop request cancels the round: an upload cut short leaves no object, and its file
        // stays in the spool for the next start.
        let round = tokio::select! {
            r = up.round() => r,
            _ = shutdown.changed() => return Ok(()),
        };
        let wait = match round {
            Ok(true) => Duration::ZERO,
            Ok(false) => SPOOL_POLL,
            Err(e) if is_definite(&e) => return Err(e),
            Err(e) => up.failed(&e),
        };
        if *shutdown.borrow() {
            return Ok(());
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// What one cheap request (the listing of the archive's top level) said about a store, before a
/// job that runs for days relies on it.
#[derive(Debug)]
enum FirstContact {
    /// The store answered.
    Answered,
    /// The store turned walrelay away for a reason that waiting does not fix
    /// ([`StoreError::is_refusal`]).
    Refused(StoreError),
    /// No answer now (down, unreachable, slow): the reason, for a warning.
    NoAnswer(String),
}

/// Asks the store once, waiting at most `limit`.
async fn first_contact(store: &dyn ArchiveStore, limit: Duration) -> FirstContact {
    match tokio::time::timeout(limit, store.list_dirs("")).await {
        Ok(Ok(_)) => FirstContact::Answered,
        Ok(Err(e)) if e.is_refusal() => FirstContact::Refused(e),
        Ok(Err(e)) => FirstContact::NoAnswer(e.to_string()),
        Err(_) => FirstContact::NoAnswer(format!(
            "{} did not answer within {} s",
            store.location(),
            limit.as_secs()
        )),
    }
}

/// Errors that retrying cannot fix.
fn is_definite(e: &StoreError) -> bool {
    !matches!(e, StoreError::Remote { .. } | StoreError::Durable(_))
}

impl Uploader {
    /// A failed round: warn (at most every [`WARN_EVERY`]), back off.
    fn failed(&mut self, e: &StoreError) -> Duration {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.failing.store(true, Ordering::Relaxed);
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let due = self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            let s = self.stats.snapshot();
            warn!(
                error = %e,
                failing_for_secs = since.elapsed().as_secs(),
                pending_files = s.pending_files,
                pending_bytes = s.pending_bytes,
                "cannot upload to the archive; WAL keeps arriving in the spool and goes up once the store answers again"
            );
            self.last_warning = Some(Instant::now());
        }
        let d = self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
        d
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            info!(
                after_secs = since.elapsed().as_secs(),
                "uploads to the archive resumed"
            );
        }
        self.last_warning = None;
        self.retry_delay = Duration::from_secs(1);
        self.stats.failing.store(false, Ordering::Relaxed);
        self.stats
            .last_success_unix_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// One pass over the spool. True when something was uploaded (look again at once).
    async fn round(&mut self) -> Result<bool> {
        let (spool, compression, checksums) = (
            self.cfg.spool.clone(),
            self.cfg.compression,
            self.cfg.checksums,
        );
        let done = self.done.clone();
        let scan = blocking(move || scan_spool(&spool, compression, checksums, &done)).await?;
        self.stats
            .pending_files
            .store(scan.pending_files, Ordering::Relaxed);
        self.stats
            .pending_bytes
            .store(scan.pending_bytes, Ordering::Relaxed);
        self.stats
            .oldest_pending_unix_ms
            .store(scan.oldest_pending_unix_ms.unwrap_or(0), Ordering::Relaxed);
        if !scan.uploaded_older.is_empty() {
            // Uploaded while newest (kept for the engine to resume from), and newer WAL has
            // come since: without this they would stay in the spool for ever, and come back
            // into the store after a restart even once `prune` removed them there.
            let names: BTreeSet<String> = scan.uploaded_older.iter().cloned().collect();
            for n in &names {
                self.done.remove(n);
            }
            let (spool, checksums) = (self.cfg.spool.clone(), self.cfg.checksums);
            blocking(move || remove_uploaded(&spool, &names, checksums)).await?;
        }
        if scan.ready.is_empty() {
            return Ok(false);
        }
        let mut uploaded_any = false;
        // Segments go up `concurrency` at a time; the order of completion does not matter for
        // correctness (each object is whole), only removal and the uploaded position are ordered.
        let concurrency = self.cfg.concurrency.max(1);
        let jobs: Vec<Ready> = scan.ready;
        let spool = self.cfg.spool.clone();
        let mut results = futures::stream::iter(jobs.into_iter().map(|r| {
            let spool = spool.clone();
            async move {
                let name = r.name.clone();
                let prepared = blocking(move || prepare(&spool, &name, checksums)).await;
                (r, prepared)
            }
        }))
        .buffered(concurrency);
        let mut removed = BTreeSet::new();
        let mut uploads = Vec::new();
        while let Some((ready, prepared)) = results.next().await {
            let prepared = prepared?;
            let sysid = self.check_system(&ready.name, prepared.system_identifier)?;
            let Some(sysid) = sysid else {
                debug!(file = %ready.name, "the cluster is not known yet; uploading later");
                continue;
            };
            uploads.push((ready, prepared, WalLayout::new(sysid)));
            if uploads.len() >= concurrency {
                uploaded_any |= self
                    .upload_batch(&mut uploads, &scan.newest, &mut removed)
                    .await?;
            }
        }
        uploaded_any |= self
            .upload_batch(&mut uploads, &scan.newest, &mut removed)
            .await?;
        Ok(uploaded_any)
    }

    /// The cluster of a file: a segment's own header, checked against what is known.
    fn check_system(&mut self, name: &str, from_header: Option<u64>) -> Result<Option<u64>> {
        let known = self
            .system_identifier
            .or_else(|| (self.cfg.system_identifier)());
        match (known, from_header) {
            (Some(k), Some(h)) if k != h => Err(StoreError::SystemMismatch {
                what: format!("spool file {}", self.cfg.spool.join(name).display()),
                expected: k,
                found: h,
            }),
            (k, h) => {
                let id = k.or(h);
                if self.system_identifier.is_none() {
                    self.system_identifier = id;
                }
                Ok(id)
            }
        }
    }

    /// Uploads a batch in parallel; then removes what may go from the spool.
    async fn upload_batch(
        &mut self,
        batch: &mut Vec<(Ready, Prepared, WalLayout)>,
        newest: &Option<String>,
        removed: &mut BTreeSet<String>,
    ) -> Result<bool> {
        if batch.is_empty() {
            return Ok(false);
        }
        let store = self.cfg.store.clone();
        let items = std::mem::take(batch);
        let outcomes = futures::future::join_all(items.iter().map(|(r, p, layout)| {
            let store = store.clone();
            let object = layout.object(&r.name);
            let (data, attrs) = (p.bytes.clone(), p.attrs.clone());
            async move { put_new(store.as_ref(), &object, data, &attrs).await }
        }))
        .await;
        let mut first_error = None;
        let mut to_remove = Vec::new();
        for ((ready, prepared, _), outcome) in items.into_iter().zip(outcomes) {
            // The uploaded position moves only over an unbroken run of uploads.
            let contiguous = first_error.is_none();
            match outcome {
                Ok(stored) => {
                    self.succeeded();
                    match stored {
                        Stored::Created => {
                            self.stats.uploaded_files.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .uploaded_bytes
                                .fetch_add(ready.size, Ordering::Relaxed);
                        }
                        Stored::AlreadyThere => {
                            self.stats.already_there.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    debug!(file = %ready.name, ?stored, "uploaded");
                    if let (Some(end), true) = (prepared.end_lsn, contiguous) {
                        self.stats.uploaded_lsn.fetch_max(end.0, Ordering::Relaxed);
                    }
                    if ready.segment.is_some() && newest.as_deref() != Some(ready.name.as_str()) {
                        to_remove.push(ready.name);
                    } else {
                        self.done.insert(ready.name);
                    }
                }
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        let any = !to_remove.is_empty();
        if any {
            let spool = self.cfg.spool.clone();
            let checksums = self.cfg.checksums;
            let names: BTreeSet<String> = to_remove.iter().cloned().collect();
            removed.extend(names.iter().cloned());
            blocking(move || remove_uploaded(&spool, &names, checksums)).await?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(any || !removed.is_empty()),
        }
    }
}

/// Removes uploaded segment files from the spool (and their checksum entries), durably.
fn remove_uploaded(spool: &Path, names: &BTreeSet<String>, checksums: bool) -> Result<()> {
    for name in names {
        let p = spool.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &p, e)),
        }
    }
    walrelay_durable::fsync_dir(spool)?;
    if checksums {
        let logical: BTreeSet<String> = names
            .iter()
            .filter_map(|n| n.get(..24))
            .map(str::to_string)
            .collect();
        walrelay_archive::remove_checksums(spool, &logical)?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::io("run file task", "", io::Error::other(e.to_string())))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spool_scan_takes_only_finished_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for n in [
            "000000010000000000000001.zst",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "000000010000000000000002.zst.tmp",
            "00000002.history",
            "00000002.failover.json",
            "walrelay.sha256",
        ] {
            fs::write(p.join(n), b"x").unwrap();
        }
        let s = scan_spool(p, Compression::Zstd { level: 1 }, false, &HashSet::new()).unwrap();
        let names: Vec<_> = s.ready.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "00000002.failover.json",
                "00000002.history",
                "000000010000000000000001.zst"
            ]
        );
        assert_eq!(
            s.newest.as_deref(),
            Some("000000010000000000000003.partial")
        );
        // Without compression the plain segment is ready; with checksums it waits for its entry.
        let s = scan_spool(p, Compression::None, true, &HashSet::new()).unwrap();
        assert!(
            !s.ready.iter().any(|r| r.segment.is_some()),
            "{:?}",
            s.ready
        );
        walrelay_archive::record_checksum(p, "000000010000000000000002", &[7; 32]).unwrap();
        let s = scan_spool(p, Compression::None, true, &HashSet::new()).unwrap();
        assert!(s.ready.iter().any(|r| r.name == "000000010000000000000002"));
    }

    use crate::testutil::{name, segment, MB};

    fn uploader(spool: &Path, store: Arc<dyn ArchiveStore>) -> UploaderConfig {
        UploaderConfig {
            spool: spool.to_path_buf(),
            store,
            compression: Compression::None,
            checksums: true,
            concurrency: 2,
            system_identifier: Arc::new(|| None),
        }
    }

    /// Runs the uploader until it has nothing left to do (or fails).
    async fn drain(cfg: UploaderConfig) -> Result<UploadSnapshot> {
        let stats = Arc::new(UploadStats::default());
        let (tx, rx) = watch::channel(false);
        let s2 = stats.clone();
        let task = tokio::spawn(run_uploader(cfg, s2, rx));
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if task.is_finished() {
                break;
            }
            let snap = stats.snapshot();
            if snap.pending_files == 0 && snap.uploaded_files + snap.already_there > 0 {
                break;
            }
        }
        let _ = tx.send(true);
        task.await
            .map_err(|e| StoreError::io("join", "", io::Error::other(e.to_string())))??;
        Ok(stats.snapshot())
    }

    const SYSID: u64 = 7_400_000_000_000_000_001;

    /// A spool and a `file://` store, both empty.
    fn spool_and_store() -> (tempfile::TempDir, tempfile::TempDir, Arc<dyn ArchiveStore>) {
        let spool = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::LocalDirStore::open(root.path()).unwrap());
        (spool, root, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_then_removes_all_but_the_newest_and_is_idempotent() {
        let (spool, _root, store) = spool_and_store();
        let sysid = SYSID;
        for segno in 1..=3 {
            let data = segment(segno, segno as u8, sysid);
            fs::write(spool.path().join(name(segno)), &data).unwrap();
            let sha: [u8; 32] = Sha256::digest(&data).into();
            walrelay_archive::record_checksum(spool.path(), &name(segno), &sha).unwrap();
        }
        fs::write(spool.path().join("00000002.history"), "1\t0/3000000\tx\n").unwrap();
        let snap = drain(uploader(spool.path(), store.clone())).await.unwrap();
        assert_eq!(snap.uploaded_files, 4, "{snap:?}");
        assert_eq!(snap.uploaded_lsn, Lsn(4 * MB));
        let layout = WalLayout::new(sysid);
        for segno in 1..=3 {
            let f = store
                .get(&layout.object(&name(segno)))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(f.bytes.len() as u64, MB);
            assert!(f.attrs.wal_sha256.is_some());
        }
        // The newest segment and the history file stay in the spool; the rest and their
        // checksum entries are gone.
        for (file, kept) in [
            (name(1), false),
            (name(2), false),
            (name(3), true),
            ("00000002.history".into(), true),
        ] {
            assert_eq!(spool.path().join(&file).exists(), kept, "{file}");
        }
        let list = walrelay_archive::read_checksums(spool.path()).unwrap();
        assert_eq!(
            list.entries.keys().cloned().collect::<Vec<_>>(),
            vec![name(3)]
        );
        // A restart uploads what is left again and finds it identical.
        let snap = drain(uploader(spool.path(), store.clone())).await.unwrap();
        assert_eq!(
            (snap.uploaded_files, snap.already_there),
            (0, 2),
            "{snap:?}"
        );
    }

    /// A segment uploaded while it was the newest stays (the engine resumes from it) until newer
    /// WAL arrives; then it goes, as every older uploaded segment does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_uploaded_as_the_newest_goes_once_a_newer_one_arrives() {
        let (spool, _root, store) = spool_and_store();
        let add = |segno: u64| {
            let data = segment(segno, segno as u8, SYSID);
            fs::write(spool.path().join(name(segno)), &data).unwrap();
            let sha: [u8; 32] = Sha256::digest(&data).into();
            walrelay_archive::record_checksum(spool.path(), &name(segno), &sha).unwrap();
        };
        add(1);
        let stats = Arc::new(UploadStats::default());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run_uploader(
            uploader(spool.path(), store.clone()),
            stats.clone(),
            rx,
        ));
        let uploaded = |n: u64| {
            let stats = stats.clone();
            async move { wait_uploads(&stats, n).await }
        };
        async fn wait_uploads(stats: &UploadStats, n: u64) {
            for _ in 0..200 {
                if stats.snapshot().uploaded_files >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{n} uploads expected: {:?}", stats.snapshot());
        }
        uploaded(1).await;
        assert!(spool.path().join(name(1)).exists(), "the newest stays");
        add(2);
        uploaded(2).await;
        let mut gone = false;
        for _ in 0..200 {
            gone = !spool.path().join(name(1)).exists();
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "segment 1 left in the spool");
        assert!(spool.path().join(name(2)).exists());
        let list = walrelay_archive::read_checksums(spool.path()).unwrap();
        assert_eq!(
            list.entries.keys().cloned().collect::<Vec<_>>(),
            vec![name(2)]
        );
        let _ = tx.send(true);
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_different_object_under_the_same_name_stops_the_uploader() {
        let (spool, _root, store) = spool_and_store();
        let sysid = SYSID;
        let ours = segment(1, 1, sysid);
        let theirs = segment(1, 2, sysid);
        fs::write(spool.path().join(name(1)), &ours).unwrap();
        fs::write(spool.path().join(format!("{}.partial", name(2))), b"").unwrap();
        let mut cfg = uploader(spool.path(), store.clone());
        cfg.checksums = false;
        let object = WalLayout::new(sysid).object(&name(1));
        let put = crate::NewObject {
            data: Bytes::from(theirs.clone()),
            attrs: ObjectAttrs::default(),
        };
        store.put_if_absent(&object, put).await.unwrap();
        let e = drain(cfg).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains(&crate::sha256_hex(&ours)), "{text}");
        assert!(text.contains(&crate::sha256_hex(&theirs)), "{text}");
        assert!(spool.path().join(name(1)).exists(), "kept in the spool");

        // WAL of another cluster in the spool is refused too.
        let spool2 = tempfile::tempdir().unwrap();
        fs::write(spool2.path().join(name(5)), segment(5, 1, 42)).unwrap();
        let mut cfg = uploader(spool2.path(), store);
        cfg.checksums = false;
        cfg.system_identifier = Arc::new(move || Some(sysid));
        let e = drain(cfg).await.unwrap_err();
        assert!(matches!(e, StoreError::SystemMismatch { .. }), "{e}");
    }
}
