//! `walrelay backup`: a `BASE_BACKUP` stored in an archive.
//!
//! 1. Connect (replication), check the version, `IDENTIFY_SYSTEM`.
//! 2. **Claim the label**: `LABEL/started.json` with put-if-absent — a second backup with the same
//!    label fails here, before anything else is written.
//! 3. `BASE_BACKUP` (manifest with CRC-32C on 13+); as soon as the start is known, the backup's
//!    own WAL is streamed (temporary slot) into the spool's `pg_wal`, as bootstrap does.
//! 4. Each tar stream is compressed while it arrives ([`SpoolSink`]) — into object storage as a
//!    multipart upload fed as the bytes come, or into a spool inside a directory archive — every
//!    file's bytes checked against the manifest on the way; the manifest's own checksum is
//!    verified.
//! 5. The WAL stream ends at the backup's end; the WAL the manifest's `WAL-Ranges` need must be
//!    there, complete.
//! 6. Upload: spooled tar streams (a hard link into the directory archive), WAL, manifest —
//!    never replacing an object — then **`descriptor.json` last**: a backup without it is never
//!    restored.
//!
//! On failure everything stored under the label (and the spool) is removed, best effort.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use walrelay_basebackup::{
    complete_segments, verify_wal_ranges, BackupPhase, BackupProgress, BaseBackupStream,
    ExtractionGate, StartWal, WalRange, WalStreamHandle, WalStreamer,
};
use walrelay_client::{ClientError, ConnectParams, Connection};
use walrelay_durable::{create_dir_all_durable, Owner};
use walrelay_protocol::command::{BaseBackupOptions, CheckpointMode};
use walrelay_protocol::{WalFileName, WalSegmentSize};
use walrelay_store::{put_new, ArchiveLocation, ObjectAttrs, PutIfAbsent, Stored};

use crate::catalog::OpenedArchive;
use crate::codec::Codec;
use crate::descriptor::{
    default_label, rfc3339, rfc3339_precise, validate_label, wal_object_name, BackupDescriptor,
    ObjectKind, StoredObject, DESCRIPTOR, FORMAT_VERSION, MANIFEST, STARTED,
};
use crate::error::{BackupJobError, Result};
use crate::sink::{compress_file, Destination, SpoolSink, UploadFailure};

/// First major with backup manifests.
const MANIFEST_MAJOR: u32 = 13;

/// `walrelay backup`'s settings.
#[derive(Clone, Debug)]
pub struct TakeConfig {
    pub connect: ConnectParams,
    pub location: ArchiveLocation,
    /// `None`: the start time, `YYYYMMDDTHHMMSSZ`.
    pub label: Option<String>,
    pub codec: Codec,
    pub checkpoint: CheckpointMode,
    /// Where the tar streams and WAL wait before the upload; default: inside a directory
    /// archive (hard-linked into place), the system's temp directory for object storage.
    pub spool: Option<PathBuf>,
    pub max_rate_kb: Option<u32>,
}

/// What a finished backup is.
#[derive(Clone, Debug)]
pub struct TakeSummary {
    pub descriptor: BackupDescriptor,
    pub duration: Duration,
    pub location: String,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Takes a backup into the archive; see the module docs. `cancel` resolving stops it (and
/// cleans up) with [`BackupJobError::Cancelled`].
pub async fn take_backup<C: Future<Output = ()>>(
    config: TakeConfig,
    streamer: &dyn WalStreamer,
    progress: &BackupProgress,
    cancel: C,
) -> Result<TakeSummary> {
    let started = Instant::now();
    let start_unix = now_unix();
    let label = config
        .label
        .clone()
        .unwrap_or_else(|| default_label(start_unix));
    validate_label(&label)?;
    if matches!(config.location, ArchiveLocation::Dir(_)) {
        // fail on a missing archive before connecting
        OpenedArchive::open(&config.location, None).await?;
    }
    progress.set_phase(BackupPhase::Connecting);
    // Until the label is claimed nothing is stored: a stop asked for while connecting (a server
    // slow to let us in, a peer that never answers) or checking the archive just ends the run.
    tokio::pin!(cancel);
    let prepared = async {
        let mut conn = Connection::connect(&config.connect)
            .await
            .map_err(BackupJobError::Connect)?;
        if let Some(version) = conn.unsupported_server_version() {
            conn.close().await;
            return Err(BackupJobError::UnsupportedVersion(version));
        }
        let ident = conn
            .identify_system()
            .await
            .map_err(command_error("IDENTIFY_SYSTEM"))?;
        let seg_size = conn
            .wal_segment_size()
            .await
            .map_err(command_error("SHOW wal_segment_size"))?;
        let archive = OpenedArchive::open(&config.location, Some(ident.system_identifier)).await?;
        // A directory archive holds one cluster: its WAL and its other backups say which. A
        // backup of another cluster there would let `prune` judge the archive's WAL by it.
        if let Some(dir) = &archive.dir {
            if let Some(other) =
                wal_system_identifier(dir).filter(|&found| found != ident.system_identifier)
            {
                return Err(BackupJobError::SystemMismatch {
                    archive: other,
                    server: ident.system_identifier,
                });
            }
            let catalog = crate::catalog::list_backups(&archive).await?;
            if let Some(other) = catalog
                .backups
                .iter()
                .find(|b| b.system_identifier != ident.system_identifier)
            {
                return Err(BackupJobError::SystemMismatch {
                    archive: other.system_identifier,
                    server: ident.system_identifier,
                });
            }
        }
        Ok::<_, BackupJobError>((conn, ident, seg_size, archive))
    };
    let (mut conn, ident, seg_size, archive) = tokio::select! {
        r = prepared => r?,
        () = &mut cancel => return Err(BackupJobError::Cancelled),
    };
    claim(&archive, &label, ident.system_identifier, start_unix).await?;
    let spool = match (&config.spool, &archive.dir) {
        (Some(dir), _) => dir.join(format!("walrelay-backup-{label}")),
        (None, Some(dir)) => dir.join("backups").join(format!(".{label}.spool")),
        (None, None) => store_spool(ident.system_identifier, &label, &archive.store.location()),
    };
    let job = Job {
        config: &config,
        archive: &archive,
        label: &label,
        spool: &spool,
        seg_size,
        start_unix,
    };
    let outcome = {
        let run = job.run(&mut conn, streamer, progress, &ident);
        tokio::select! {
            r = run => r,
            () = &mut cancel => Err(BackupJobError::Cancelled),
        }
    };
    conn.close().await;
    let _ = fs::remove_dir_all(&spool);
    match outcome {
        Ok(descriptor) => {
            progress.set_phase(BackupPhase::Done);
            Ok(TakeSummary {
                descriptor,
                duration: started.elapsed(),
                location: archive.store.location(),
            })
        }
        Err(e) => {
            tracing::info!(%label, error = %e, "backup failed: removing what was stored under its label");
            if let Err(d) = crate::catalog::delete_backup(&archive, &label).await {
                tracing::warn!(%label, error = %d, "could not remove the failed backup's objects: remove them with walrelay backup delete");
            }
            Err(e)
        }
    }
}

/// Maps a failed replication command to the job's error naming it.
fn command_error(what: &'static str) -> impl FnOnce(ClientError) -> BackupJobError {
    move |source| BackupJobError::Command { what, source }
}

/// The spool of a backup into object storage when `--spool` is not given: only its WAL waits
/// there. Named by the cluster, the label and the archive (two buckets may hold the same label:
/// two backups running at once must not share it), so that `backup delete` can find what a
/// killed backup left.
/// The cluster whose WAL a directory archive holds: the system identifier in the long page header
/// of its newest segment file (complete or partial, any compression). `None`: no segment, or
/// none whose start can be read.
fn wal_system_identifier(dir: &std::path::Path) -> Option<u64> {
    use std::io::Read;
    use walrelay_protocol::WalFileName;
    let mut segments: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| matches!(WalFileName::parse(n), Some(WalFileName::Segment { .. })))
        .collect();
    segments.sort();
    segments.iter().rev().find_map(|name| {
        let mut start = [0u8; walrelay_wal::page::LONG_PAGE_HEADER_SIZE];
        walrelay_archive::open_segment(&dir.join(name))
            .ok()?
            .read_exact(&mut start)
            .ok()?;
        walrelay_wal::inspect_segment_start(&start)
            .ok()
            .map(|h| h.system_identifier)
    })
}

pub(crate) fn store_spool(system_identifier: u64, label: &str, location: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let archive = hex::encode(&Sha256::digest(location.as_bytes())[..4]);
    std::env::temp_dir().join(format!(
        "walrelay-backup-{system_identifier}-{label}-{archive}"
    ))
}

/// The lock a running backup holds on its spool (a file inside it), released when it ends or
/// dies: `backup delete` and another backup leave a spool in use alone.
const SPOOL_LOCK: &str = ".walrelay-backup.lock";

/// Takes the spool's lock for the life of the returned file.
fn lock_spool(spool: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let path = spool.join(SPOOL_LOCK);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BackupJobError::io("create", &path, e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        BackupJobError::Usage(format!(
            "another walrelay backup is using the spool {}: wait for it, or give this one another --label or --spool",
            spool.display()
        ))
    })
}

/// Whether a running backup holds `spool`.
pub(crate) fn spool_in_use(spool: &Path) -> bool {
    match fs::File::open(spool.join(SPOOL_LOCK)) {
        Ok(f) => nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .is_err_and(|(_, errno)| errno == nix::errno::Errno::EWOULDBLOCK),
        Err(_) => false,
    }
}

/// Claims `label`: fails if anything is stored under it.
async fn claim(archive: &OpenedArchive, label: &str, sysid: u64, start_unix: i64) -> Result<()> {
    let prefix = archive.names.backup_prefix(label);
    let exists = |object: String| BackupJobError::LabelExists {
        label: label.to_string(),
        object,
    };
    if let Some(o) = archive.store.list(&prefix).await?.into_iter().next() {
        return Err(exists(o.name));
    }
    let name = archive.names.object(label, STARTED);
    let body = serde_json::json!({
        "label": label,
        "system_identifier": sysid,
        "start_time": rfc3339(start_unix),
        "walrelay": env!("CARGO_PKG_VERSION"),
    });
    let put = walrelay_store::NewObject {
        data: Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default()),
        attrs: ObjectAttrs::default(),
    };
    match archive.store.put_if_absent(&name, put).await? {
        PutIfAbsent::Created => Ok(()),
        PutIfAbsent::Exists => Err(exists(name)),
    }
}

struct Job<'a> {
    config: &'a TakeConfig,
    archive: &'a OpenedArchive,
    label: &'a str,
    spool: &'a Path,
    seg_size: WalSegmentSize,
    start_unix: i64,
}

impl Job<'_> {
    async fn run(
        &self,
        conn: &mut Connection,
        streamer: &dyn WalStreamer,
        progress: &BackupProgress,
        ident: &walrelay_client::IdentifySystem,
    ) -> Result<BackupDescriptor> {
        let config = self.config;
        let version = conn.server_version();
        // A directory archive: its owner (when running as root), as receive does.
        let owner = self
            .archive
            .dir
            .as_deref()
            .map(Owner::of_dir_if_root)
            .unwrap_or_else(Owner::current);
        if self.spool.exists() {
            if spool_in_use(self.spool) {
                // A backup with the same spool runs now (the same --spool and label, into
                // another archive): its files are not ours to remove.
                return Err(lock_spool(self.spool).err().unwrap_or_else(|| {
                    BackupJobError::Usage(format!("the spool {} is in use", self.spool.display()))
                }));
            }
            // left by an interrupted run of this label (the claim made it ours)
            fs::remove_dir_all(self.spool)
                .map_err(|e| BackupJobError::io("remove", self.spool, e))?;
        }
        let pg_wal = self.spool.join("pg_wal");
        create_dir_all_durable(&pg_wal.join("archive_status"), 0o700, owner)?;
        let _in_use = lock_spool(self.spool)?;

        let with_manifest = version.major() >= MANIFEST_MAJOR;
        let opts = BaseBackupOptions {
            label: format!("walrelay backup {}", self.label),
            progress: true,
            checkpoint: config.checkpoint,
            include_wal: false,
            wait_for_archive: false,
            max_rate_kb: config.max_rate_kb,
            tablespace_map: false,
            verify_checksums: true,
            manifest: with_manifest.then(|| "CRC32C".to_string()),
        };
        let stream = BaseBackupStream::begin(conn, &opts, progress).await?;
        let start = stream.start();
        let locations = stream.tablespace_locations();
        let params = StartWal {
            connect: config.connect.clone(),
            server_version: version,
            system_identifier: ident.system_identifier,
            timeline: start.timeline,
            start_lsn: start.lsn.segment_start(self.seg_size.bytes()),
            wal_segment_size: self.seg_size,
            slot: None,
            create_temporary_slot: true,
            pg_wal_dir: pg_wal.clone(),
            owner,
        };
        tracing::info!(start_lsn = %params.start_lsn, timeline = %params.timeline, "starting the backup's WAL stream");
        let mut handle: Box<dyn WalStreamHandle> = streamer
            .start(params)
            .await
            .map_err(BackupJobError::WalStreamStart)?;
        // A directory archive: a spool inside it, hard-linked into place; object storage: each
        // tar stream uploaded while it arrives.
        let failure = Arc::new(Mutex::new(None));
        let dest = if self.archive.dir.is_some() {
            Destination::Spool(self.spool.to_path_buf())
        } else {
            Destination::Upload {
                store: self.archive.store.clone(),
                prefix: self.archive.names.backup_prefix(self.label),
                runtime: tokio::runtime::Handle::current(),
                failure: failure.clone(),
            }
        };
        let sink = SpoolSink::new(dest, config.codec, owner);
        let spooled = sink.spooled();
        let pg_control = sink.pg_control();
        let received = stream
            .receive_into(
                Box::new(sink),
                Vec::new(),
                true,
                ExtractionGate::new(),
                handle.failed(),
            )
            .await;
        let result = match received {
            Ok(r) => r,
            Err(e) => {
                handle.abort().await;
                let typed = failure.lock().ok().and_then(|mut f| f.take());
                return Err(match typed {
                    Some(UploadFailure::Store(s)) => BackupJobError::Store(s),
                    Some(UploadFailure::Exists(object)) => BackupJobError::LabelExists {
                        label: self.label.to_string(),
                        object,
                    },
                    None => e.into(),
                });
            }
        };
        progress.set_phase(BackupPhase::Finishing);
        tracing::info!(end_lsn = %result.end.lsn, "waiting for the backup's WAL to reach its end");
        handle
            .finish(result.end.lsn)
            .await
            .map_err(BackupJobError::WalStreamFailed)?;
        let present = complete_segments(&pg_wal, self.seg_size).map_err(|e| {
            BackupJobError::io("read", &pg_wal, std::io::Error::other(e.to_string()))
        })?;
        let ranges: Vec<WalRange> = match result.manifest.as_ref().and_then(|m| m.parsed.as_ref()) {
            Some(m) => m.wal_ranges.clone(),
            None => vec![WalRange {
                timeline: result.start.timeline,
                start_lsn: result.start.lsn,
                end_lsn: result.end.lsn,
            }],
        };
        verify_wal_ranges(&ranges, &present, self.seg_size)?;
        if let Some(v) = result.manifest.as_ref().and_then(|m| m.verified.as_ref()) {
            tracing::info!(summary = ?v, "every file matched the backup manifest");
        }
        let end_time = SystemTime::now();

        // What goes into the archive.
        let mut objects: Vec<(StoredObject, Option<PathBuf>)> = Vec::new();
        let archives = spooled.lock().map(|v| v.clone()).unwrap_or_default();
        for a in &archives {
            let (kind, oid, location) = match a.kind {
                walrelay_basebackup::ArchiveKind::Base => (ObjectKind::Base, None, None),
                walrelay_basebackup::ArchiveKind::Tablespace(oid) => (
                    ObjectKind::Tablespace,
                    Some(oid),
                    locations
                        .iter()
                        .find(|l| l.oid == oid)
                        .map(|l| l.location.clone()),
                ),
            };
            objects.push((
                StoredObject {
                    name: a.name.clone(),
                    kind,
                    tablespace_oid: oid,
                    tablespace_location: location,
                    stored_bytes: a.stored_bytes,
                    raw_bytes: a.raw_bytes,
                    sha256: a.sha256.clone(),
                },
                a.path.clone(),
            ));
        }
        objects.extend(
            self.compress_wal(&pg_wal, owner)?
                .into_iter()
                .map(|(o, p)| (o, Some(p))),
        );

        for (object, path) in &objects {
            let Some(path) = path else {
                continue; // streamed into the store while it arrived
            };
            let name = self.archive.names.object(self.label, &object.name);
            tracing::debug!(object = %name, bytes = object.stored_bytes, "uploading");
            if self.archive.store.put_file_if_absent(&name, path).await? == PutIfAbsent::Exists {
                return Err(BackupJobError::LabelExists {
                    label: self.label.to_string(),
                    object: name,
                });
            }
        }
        let manifest = result.manifest.as_ref().map(|m| m.text.clone());
        if let Some(text) = &manifest {
            let name = self.archive.names.object(self.label, MANIFEST);
            put_new(
                self.archive.store.as_ref(),
                &name,
                Bytes::from(text.clone()),
                &ObjectAttrs::default(),
            )
            .await?;
        }
        let descriptor = BackupDescriptor {
            format_version: FORMAT_VERSION,
            label: self.label.to_string(),
            system_identifier: ident.system_identifier,
            server_version: version.0,
            wal_segment_size: self.seg_size.bytes(),
            start_lsn: result.start.lsn,
            start_timeline: result.start.timeline.0,
            end_lsn: result.end.lsn,
            end_timeline: result.end.timeline.0,
            start_time: rfc3339(self.start_unix),
            end_time: rfc3339_precise(end_time),
            compression: config.codec.name().to_string(),
            manifest: manifest.is_some(),
            objects: objects.into_iter().map(|(o, _)| o).collect(),
            next_xid: pg_control
                .lock()
                .ok()
                .and_then(|c| c.as_deref().and_then(crate::pg_control::next_full_xid)),
        };
        // `backup delete` of this label while it ran (a running backup is listed as incomplete)
        // removed what it had stored: its descriptor would name objects that are gone.
        let stored_now = self
            .archive
            .store
            .list(&self.archive.names.backup_prefix(self.label))
            .await?;
        if let Some(gone) = std::iter::once(STARTED)
            .chain(descriptor.required_objects())
            .find(|n| {
                let full = self.archive.names.object(self.label, n);
                !stored_now.iter().any(|o| o.name == full)
            })
        {
            return Err(BackupJobError::DeletedWhileRunning {
                label: self.label.to_string(),
                missing: gone.to_string(),
            });
        }
        let name = self.archive.names.object(self.label, DESCRIPTOR);
        let stored = put_new(
            self.archive.store.as_ref(),
            &name,
            Bytes::from(descriptor.to_json()),
            &ObjectAttrs::default(),
        )
        .await?;
        if stored != Stored::Created {
            return Err(BackupJobError::LabelExists {
                label: self.label.to_string(),
                object: name,
            });
        }
        Ok(descriptor)
    }

    /// Compresses the streamed WAL (complete segments and history files) in the spool.
    fn compress_wal(&self, pg_wal: &Path, owner: Owner) -> Result<Vec<(StoredObject, PathBuf)>> {
        let out_dir = self.spool.join("wal");
        create_dir_all_durable(&out_dir, 0o700, owner)?;
        let mut names: Vec<String> = fs::read_dir(pg_wal)
            .map_err(|e| BackupJobError::io("list", pg_wal, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                matches!(
                    WalFileName::parse(n),
                    Some(WalFileName::Segment {
                        partial: false,
                        compression: None,
                        ..
                    }) | Some(WalFileName::History(_))
                )
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            let object = wal_object_name(&n, self.config.codec.suffix());
            let to = out_dir.join(format!("{n}{}", self.config.codec.suffix()));
            let from = pg_wal.join(&n);
            let (raw, stored, sha256) = compress_file(&from, &to, self.config.codec, owner)
                .map_err(|e| BackupJobError::io("compress", &from, e))?;
            out.push((
                StoredObject {
                    name: object,
                    kind: ObjectKind::Wal,
                    tablespace_oid: None,
                    tablespace_location: None,
                    stored_bytes: stored,
                    raw_bytes: raw,
                    sha256,
                },
                to,
            ));
        }
        walrelay_durable::fsync_dir(&out_dir)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_spool_in_use_is_left_alone_and_the_same_label_in_two_archives_has_two_spools() {
        let a = store_spool(7, "nightly", "s3://one/p");
        let b = store_spool(7, "nightly", "s3://two/p");
        assert_ne!(a, b);
        assert_eq!(a, store_spool(7, "nightly", "s3://one/p"));

        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        assert!(!spool_in_use(&spool));
        let held = lock_spool(&spool).unwrap();
        assert!(spool_in_use(&spool));
        let e = lock_spool(&spool).unwrap_err().to_string();
        assert!(
            e.contains("another walrelay backup is using the spool"),
            "{e}"
        );
        drop(held);
        assert!(!spool_in_use(&spool));
    }
}
