//! `walrelay bootstrap --from-archive`: a data directory from a stored backup, checked, then
//! configured for point-in-time recovery or as a standby — without reading a byte of the
//! primary's data directory.
//!
//! 1. Choose the backup (label, or the newest that ends before the target).
//! 2. Check the target (absent or empty) and the tablespace directories.
//! 3. Fetch and parse `backup_manifest` (its own checksum verified).
//! 4. Stream each tar object: SHA-256 of the stored bytes, decompress, extract with the same safe
//!    extractor bootstrap uses, every file's checksum computed as it is written.
//! 5. **Verify before configuring**: each object's SHA-256 and size against the descriptor, every
//!    file against the manifest; the backup's WAL is put into `pg_wal` (checked the same way) and
//!    must cover the manifest's WAL ranges.
//! 6. Only then: `backup_manifest` (for pg_verifybackup), the recovery configuration, fsync.
//!
//! Any failure removes what was written (the target if it was created, else its contents; the
//! tablespace directories likewise): nothing is left that looks like a restorable directory.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::io::SyncIoBridge;
use walrelay_basebackup::{
    check_dir_empty_or_absent, complete_segments, conninfo_for_libpq, prepare_tablespace_dirs,
    verify_wal_ranges, ArchiveExtractor, ArchiveKind, BackupManifest, ChecksumAlgorithm,
    ChecksumCollector, DirState, ExtractError, PreparedTablespace, TablespaceError,
    TablespaceLocation, TablespaceMapping, WalRange,
};
use walrelay_durable::{create_dir_all_durable, write_file_atomic, Owner};
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};
use walrelay_store::ArchiveLocation;

use crate::catalog::{list_backups, OpenedArchive};
use crate::codec::Codec;
use crate::descriptor::{BackupDescriptor, ObjectKind, StoredObject, MANIFEST};
use crate::error::{BackupJobError, Result};
use crate::recovery::{render, restore_command, RecoveryMode, RecoveryTarget};
use crate::select::{choose, BackupChoice, TargetBound};
use crate::targets;

/// Mode of a data directory walrelay creates.
const DATA_DIR_MODE: u32 = 0o700;

/// What the restored directory becomes.
#[derive(Clone, Debug)]
pub enum RestoreAs {
    Pitr(crate::recovery::RecoveryTarget),
    /// A standby of the primary: `primary_conninfo` as the user gave it (keywords the server's
    /// libpq does not know are dropped).
    Standby {
        primary_conninfo: String,
        slot_name: Option<String>,
    },
}

/// `bootstrap --from-archive`'s settings.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub location: ArchiveLocation,
    /// The archive as `restore_command` names it (an absolute path, or the URL).
    pub archive_for_restore_command: String,
    pub system_identifier: Option<u64>,
    pub choice: BackupChoice,
    pub bound: TargetBound,
    pub target_dir: PathBuf,
    pub tablespace_mappings: Vec<String>,
    pub restore_as: RestoreAs,
    /// The walrelay program for `restore_command`.
    pub walrelay: String,
    pub owner: Option<Owner>,
    pub sync: bool,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct RestoreSummary {
    pub descriptor: BackupDescriptor,
    pub data_dir: PathBuf,
    pub files_verified: usize,
    pub wal_files: usize,
}

/// Restores a backup; see the module docs.
pub async fn restore_backup(config: RestoreConfig) -> Result<RestoreSummary> {
    let archive = OpenedArchive::open(&config.location, config.system_identifier).await?;
    let catalog = list_backups(&archive).await?;
    let mut descriptor = choose(&catalog.backups, &config.choice, &config.bound)
        .map_err(BackupJobError::NoBackup)?;
    match (&config.bound, &config.restore_as) {
        (TargetBound::Lsn(target), _) => {
            targets::check_lsn_target_in_archive(&archive, &descriptor, *target).await?
        }
        (TargetBound::Time(target), _) => {
            targets::check_time_target_in_archive(&archive, &descriptor, *target).await?
        }
        (TargetBound::Xid(xid), _) => {
            targets::check_xid_target_in_archive(&archive, &descriptor, *xid).await?
        }
        (TargetBound::None, RestoreAs::Pitr(RecoveryTarget::Latest)) => {
            targets::check_latest_in_archive(&archive, &descriptor).await?
        }
        (TargetBound::Oldest, RestoreAs::Pitr(RecoveryTarget::Name(name))) => {
            let found = targets::find_restore_point(&archive, &descriptor, name).await?;
            if let Some(rp) = found {
                if config.choice == BackupChoice::Latest {
                    // The newest backup that ends before it: recovery replays the least.
                    descriptor =
                        choose(&catalog.backups, &config.choice, &TargetBound::Lsn(rp.lsn))
                            .map_err(BackupJobError::NoBackup)?;
                    tracing::info!(name = %rp.name, lsn = %rp.lsn, backup = %descriptor.label, "restore point found: restoring the newest backup that ends before it");
                }
                targets::check_wal_continuous(&archive, &descriptor, rp.lsn, "the restore point")
                    .await?;
            }
        }
        _ => {}
    }
    tracing::info!(label = %descriptor.label, end_lsn = %descriptor.end_lsn, end_time = %descriptor.end_time, "restoring backup");

    let target = std::path::absolute(&config.target_dir)
        .map_err(|e| BackupJobError::io("resolve", config.target_dir.clone(), e))?;
    let owner = config
        .owner
        .unwrap_or_else(|| Owner::of_dir_if_root(&target));
    let mut mapping = TablespaceMapping::new();
    for arg in &config.tablespace_mappings {
        mapping
            .push_arg(arg)
            .map_err(|e| BackupJobError::Usage(e.to_string()))?;
    }
    let created = match check_dir_empty_or_absent(&target) {
        Ok(DirState::Absent) => {
            create_dir_all_durable(&target, DATA_DIR_MODE, owner)?;
            true
        }
        Ok(DirState::Empty) => {
            // PostgreSQL refuses a data directory others can access (0755 from mkdir).
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&target)
                .map_err(|e| BackupJobError::io("stat", &target, e))?
                .permissions()
                .mode()
                & 0o7777;
            if mode != 0o700 && mode != 0o750 {
                fs::set_permissions(&target, fs::Permissions::from_mode(DATA_DIR_MODE))
                    .map_err(|e| BackupJobError::io("set the mode of", &target, e))?;
            }
            false
        }
        Err(TablespaceError::NotEmpty { dir, .. }) => {
            return Err(BackupJobError::TargetNotEmpty(dir))
        }
        Err(e) => return Err(e.into()),
    };
    let mut cleanup = Cleanup {
        target: target.clone(),
        created,
        tablespaces: Vec::new(),
        armed: true,
        stop: StopFlag::default(),
    };
    let result = restore_into(
        &config,
        &archive,
        &descriptor,
        &target,
        &mapping,
        owner,
        &mut cleanup,
    )
    .await;
    match result {
        Ok(summary) => {
            cleanup.armed = false;
            Ok(summary)
        }
        Err(e) => {
            cleanup.run();
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    config: &RestoreConfig,
    archive: &OpenedArchive,
    d: &BackupDescriptor,
    target: &Path,
    mapping: &TablespaceMapping,
    owner: Owner,
    cleanup: &mut Cleanup,
) -> Result<RestoreSummary> {
    let label = d.label.as_str();
    let codec: Codec = d
        .compression
        .parse()
        .map_err(|e: String| BackupJobError::damaged(label, "descriptor.json", e))?;
    let seg_size = WalSegmentSize::new(u64::from(d.wal_segment_size))
        .map_err(|e| BackupJobError::damaged(label, "descriptor.json", e.to_string()))?;

    let locations: Vec<TablespaceLocation> = d
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Tablespace)
        .filter_map(|o| {
            Some(TablespaceLocation {
                oid: o.tablespace_oid?,
                location: o.tablespace_location.clone().unwrap_or_default(),
            })
        })
        .collect();
    let prepared = prepare_tablespace_dirs(target, &locations, mapping, owner, DATA_DIR_MODE)?;
    cleanup.tablespaces = prepared.clone();

    let manifest = if d.manifest {
        let name = archive.names.object(label, MANIFEST);
        let fetched = archive
            .store
            .get(&name)
            .await?
            .ok_or_else(|| BackupJobError::damaged(label, MANIFEST, "is missing"))?;
        let parsed = BackupManifest::parse(&fetched.bytes).map_err(|source| {
            BackupJobError::BadManifest {
                label: label.to_string(),
                source,
            }
        })?;
        Some((fetched.bytes, parsed))
    } else {
        None
    };
    let mut algorithms: Vec<ChecksumAlgorithm> = Vec::new();
    if let Some((_, m)) = &manifest {
        for f in &m.files {
            if let Some(c) = &f.checksum {
                if !algorithms.contains(&c.algorithm) {
                    algorithms.push(c.algorithm);
                }
            }
        }
    }
    let mut collector = ChecksumCollector::new(&algorithms);
    // pg_control waits until the recovery configuration is written: killed before, the
    // directory must not start (it would, as a primary).
    let mut extractor = Some(ArchiveExtractor::new(target, prepared, owner).hold_control_file());

    let mut tars: Vec<&StoredObject> = d
        .objects
        .iter()
        .filter(|o| o.kind != ObjectKind::Wal)
        .collect();
    tars.sort_by_key(|o| o.kind != ObjectKind::Base);
    for object in tars {
        let kind = match object.kind {
            ObjectKind::Tablespace => ArchiveKind::Tablespace(object.tablespace_oid.unwrap_or(0)),
            _ => ArchiveKind::Base,
        };
        let name = archive.names.object(label, &object.name);
        let reader = archive
            .store
            .reader(&name)
            .await?
            .ok_or_else(|| BackupJobError::damaged(label, &object.name, "is missing"))?;
        let bridge = SyncIoBridge::new(reader);
        let mut ex = extractor.take().ok_or(BackupJobError::Cancelled)?;
        let mut col = std::mem::replace(&mut collector, ChecksumCollector::new(&[]));
        let obj = object.clone();
        let lab = label.to_string();
        let stop = cleanup.stop.clone();
        let (ex, col, outcome) = tokio::task::spawn_blocking(move || {
            let _active = stop.enter();
            let input = Stoppable {
                inner: bridge,
                stop: stop.clone(),
            };
            let r = extract_object(&mut ex, &mut col, input, codec, kind, &obj, &lab);
            (ex, col, r)
        })
        .await
        .map_err(|e| BackupJobError::io("extract", target, io::Error::other(e.to_string())))?;
        extractor = Some(ex);
        collector = col;
        outcome?;
        tracing::info!(object = %object.name, bytes = object.raw_bytes, "restored and checked");
    }

    let mut files_verified = 0;
    if let Some((_, m)) = &manifest {
        let summary =
            m.verify_files(&collector, &[])
                .map_err(|source| BackupJobError::ManifestMismatch {
                    label: label.to_string(),
                    source,
                })?;
        files_verified = m.files.len();
        tracing::info!(summary = ?summary, "every file matched the backup manifest");
    }

    // The backup's own WAL into pg_wal.
    let pg_wal = target.join("pg_wal");
    create_dir_all_durable(&pg_wal, DATA_DIR_MODE, owner)?;
    let mut wal_files = 0;
    for object in d.objects.iter().filter(|o| o.kind == ObjectKind::Wal) {
        let name = archive.names.object(label, &object.name);
        let reader = archive
            .store
            .reader(&name)
            .await?
            .ok_or_else(|| BackupJobError::damaged(label, &object.name, "is missing"))?;
        let file = object
            .name
            .rsplit('/')
            .next()
            .unwrap_or(&object.name)
            .trim_end_matches(codec.suffix())
            .to_string();
        let bridge = SyncIoBridge::new(reader);
        let (obj, lab, dir, stop) = (
            object.clone(),
            label.to_string(),
            pg_wal.clone(),
            cleanup.stop.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _active = stop.enter();
            let input = Stoppable {
                inner: bridge,
                stop: stop.clone(),
            };
            restore_wal_file(input, codec, &obj, &lab, &dir, &file, owner)
        })
        .await
        .map_err(|e| BackupJobError::io("restore", &pg_wal, io::Error::other(e.to_string())))??;
        wal_files += 1;
    }
    let present = complete_segments(&pg_wal, seg_size)
        .map_err(|e| BackupJobError::io("read", &pg_wal, io::Error::other(e.to_string())))?;
    let ranges = match &manifest {
        Some((_, m)) => m.wal_ranges.clone(),
        None => vec![WalRange {
            timeline: TimelineId(d.start_timeline),
            start_lsn: d.start_lsn,
            end_lsn: Lsn(d.end_lsn.0),
        }],
    };
    verify_wal_ranges(&ranges, &present, seg_size)?;
    if let TargetBound::Xid(x) = config.bound {
        if let Some(end) = xid_ended_during(&pg_wal, d, seg_size, x) {
            return Err(BackupJobError::NoBackup(format!(
                "transaction {x} ended at {} while backup {:?} ran (it ends at {}): recovery from it cannot stop before the backup's end; choose an older backup with --backup LABEL (walrelay backup list)",
                end, d.label, d.end_lsn
            )));
        }
    }

    // Verified: now the files that make it a server to start.
    if let Some((text, _)) = &manifest {
        write_file_atomic(&target.join(MANIFEST), text, 0o600, owner)?;
    }
    let major = d.server_major();
    let mode = match &config.restore_as {
        RestoreAs::Pitr(t) => RecoveryMode::Pitr(t.clone()),
        RestoreAs::Standby {
            primary_conninfo,
            slot_name,
        } => RecoveryMode::Standby {
            primary_conninfo: conninfo_for_libpq(primary_conninfo, major).0,
            slot_name: slot_name.clone(),
        },
    };
    // A backup taken on a standby carries its standby.signal: kept, the "PITR" starts as a
    // standby of the production primary (its primary_conninfo and slot), never promotes, and
    // holds that slot. Without it, archive recovery ignores primary_conninfo.
    if matches!(config.restore_as, RestoreAs::Pitr(_)) {
        let signal = target.join("standby.signal");
        match fs::remove_file(&signal) {
            Ok(()) => tracing::warn!("the backup was taken on a standby: its standby.signal removed, so that the restored cluster recovers from the archive and promotes instead of streaming from that standby's primary"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupJobError::io("remove", &signal, e)),
        }
    }
    let command = restore_command(
        &config.walrelay,
        &config.archive_for_restore_command,
        matches!(config.restore_as, RestoreAs::Standby { .. }),
    );
    for file in render(major, &command, &mode) {
        let path = target.join(file.name);
        let contents = if file.append {
            let old = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(BackupJobError::io("read", &path, e)),
            };
            // A backup of a cluster that was itself recovered to a target (or of a standby)
            // carries its recovery settings: kept, they clash with the new target or make a
            // standby stop and promote itself.
            let (mut old, disabled) =
                walrelay_basebackup::disable_inherited_recovery_settings(&old);
            if !disabled.is_empty() {
                tracing::warn!(settings = %disabled.join(", "), "the backup's postgresql.auto.conf set recovery targets of its own (a cluster recovered to a target, or a standby): commented out");
            }
            if !old.is_empty() && !old.ends_with(b"\n") {
                old.push(b'\n');
            }
            old.extend_from_slice(&file.contents);
            old
        } else {
            file.contents
        };
        write_file_atomic(&path, &contents, 0o600, owner)?;
    }
    walrelay_basebackup::release_control_file(target).map_err(BackupJobError::Durable)?;
    if config.sync {
        if let Some(ex) = extractor {
            let mut written = ex.into_written();
            written.forget_file(&target.join("standby.signal"));
            written.add_dir(pg_wal.clone());
            written.sync_all(8).map_err(BackupJobError::Durable)?;
        }
    }
    Ok(RestoreSummary {
        descriptor: d.clone(),
        data_dir: target.to_path_buf(),
        files_verified,
        wal_files,
    })
}

/// Where transaction `xid` committed or aborted in the backup's own WAL (in `pg_wal`, between its
/// start and end), if it did. A backup chosen because it began before the transaction was
/// assigned may still have run while it committed: recovery from it cannot stop there (the
/// server refuses: "requested recovery stop point is before consistent recovery point").
/// WAL that cannot be read ends the search without an answer.
fn xid_ended_during(
    pg_wal: &Path,
    d: &BackupDescriptor,
    seg: WalSegmentSize,
    xid: u64,
) -> Option<Lsn> {
    use walrelay_protocol::SegmentId;
    use walrelay_wal::validator::{ValidatorConfig, WalValidator};
    use walrelay_wal::xact::{self, CAPTURE_BYTES, RM_XACT_ID};
    let wanted = (xid & 0xFFFF_FFFF) as u32;
    let timeline = TimelineId(d.start_timeline);
    let first = seg.segno(d.start_lsn);
    let cfg = ValidatorConfig::new(seg, SegmentId::new(timeline, first).start_lsn(seg));
    let mut validator = WalValidator::new(cfg).ok()?;
    validator.capture_records(RM_XACT_ID, CAPTURE_BYTES);
    let mut segno = first;
    while SegmentId::new(timeline, segno).start_lsn(seg) < d.end_lsn {
        let id = SegmentId::new(timeline, segno);
        let bytes = fs::read(pg_wal.join(id.file_name(seg))).ok()?;
        let fed = validator.feed(id.start_lsn(seg), &bytes);
        if let Some(end) = validator
            .take_captured()
            .iter()
            .filter_map(xact::decode)
            .find(|e| e.xid == wanted && e.lsn >= d.start_lsn && e.lsn < d.end_lsn)
        {
            return Some(end.lsn);
        }
        fed.ok()?;
        segno = segno.next();
    }
    None
}

/// Streams one stored WAL file into `dir/file` (a temp name, fsynced, renamed), checking its
/// stored size and SHA-256 before the rename.
fn restore_wal_file<R: Read + Send>(
    input: R,
    codec: Codec,
    object: &StoredObject,
    label: &str,
    dir: &Path,
    file: &str,
    owner: Owner,
) -> Result<()> {
    let mut hashing = HashingReader {
        inner: io::BufReader::with_capacity(1 << 20, input),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let tmp = dir.join(format!("{file}.walrelay-tmp"));
    let path = dir.join(file);
    let result = (|| {
        let mut out = walrelay_durable::create_new_file(&tmp, 0o600, owner)?;
        {
            let mut decoder = codec.decoder(&mut hashing).map_err(|e| {
                BackupJobError::damaged(label, &object.name, format!("does not decompress: {e}"))
            })?;
            io::copy(&mut decoder, &mut out).map_err(|e| {
                BackupJobError::damaged(label, &object.name, format!("does not decompress: {e}"))
            })?;
        }
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| BackupJobError::damaged(label, &object.name, e.to_string()))?;
        let sha = hex::encode(std::mem::take(&mut hashing.hasher).finalize());
        check_stored(label, object, hashing.bytes, &sha)?;
        out.sync_all()
            .map_err(|e| BackupJobError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| BackupJobError::io("rename", &tmp, e))?;
        walrelay_durable::fsync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The stored size and SHA-256 must be what the descriptor recorded.
fn check_stored(label: &str, object: &StoredObject, size: u64, sha256: &str) -> Result<()> {
    if size != object.stored_bytes {
        return Err(BackupJobError::damaged(
            label,
            &object.name,
            format!(
                "has {size} bytes, the backup stored {}",
                object.stored_bytes
            ),
        ));
    }
    if sha256 != object.sha256 {
        return Err(BackupJobError::damaged(
            label,
            &object.name,
            format!("has SHA-256 {sha256}, the backup stored {}", object.sha256),
        ));
    }
    Ok(())
}

/// Hashes and counts what is read.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Extracts one stored tar object, then checks its size and SHA-256 (the whole object is read).
fn extract_object<R: Read + Send>(
    extractor: &mut ArchiveExtractor,
    collector: &mut ChecksumCollector,
    input: R,
    codec: Codec,
    kind: ArchiveKind,
    object: &StoredObject,
    label: &str,
) -> Result<()> {
    let mut hashing = HashingReader {
        inner: io::BufReader::with_capacity(1 << 20, input),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let damaged = |e: &dyn std::fmt::Display| {
        BackupJobError::damaged(label, &object.name, format!("cannot be read back: {e}"))
    };
    {
        let mut decoder = codec.decoder(&mut hashing).map_err(|e| damaged(&e))?;
        match extractor.extract(kind, &mut decoder, collector) {
            Ok(_) => {}
            // reading the stored stream failed: damage (a write failure stays what it is)
            Err(ExtractError::Tar(e)) => return Err(damaged(&e)),
            Err(e) => return Err(e.into()),
        }
        io::copy(&mut decoder, &mut io::sink()).map_err(|e| damaged(&e))?;
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| damaged(&e))?;
    let sha = hex::encode(hashing.hasher.finalize());
    check_stored(label, object, hashing.bytes, &sha)
}

/// Stops the extraction thread when the restore is dropped (a signal), and lets the cleanup wait
/// until it no longer writes.
#[derive(Clone, Debug, Default)]
struct StopFlag {
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
}

/// Counts one running extraction thread.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StopFlag {
    fn enter(&self) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.active.clone())
    }

    /// Stops the thread at its next read and waits (up to 30 s) until it has stopped.
    fn stop_and_wait(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A reader that fails once the restore is stopped.
struct Stoppable<R> {
    inner: R,
    stop: StopFlag,
}

impl<R: Read> Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.stop.load(Ordering::SeqCst) {
            return Err(io::Error::other("the restore was stopped"));
        }
        self.inner.read(buf)
    }
}

/// Undoes a failed restore.
struct Cleanup {
    target: PathBuf,
    created: bool,
    tablespaces: Vec<PreparedTablespace>,
    armed: bool,
    stop: StopFlag,
}

impl Cleanup {
    fn run(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        self.stop.stop_and_wait();
        tracing::info!(dir = %self.target.display(), "restore failed: removing what it wrote");
        if self.created {
            let _ = fs::remove_dir_all(&self.target);
        } else {
            remove_contents(&self.target);
        }
        for ts in &self.tablespaces {
            if ts.in_place {
                continue;
            }
            if ts.created {
                let _ = fs::remove_dir_all(&ts.target);
            } else {
                remove_contents(&ts.target);
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

fn remove_contents(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let _ = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
}
