//! Archive mode's work on completed segments: the SHA-256 checksum list and compression, run after
//! a segment is complete and durable (never on the path of a flush position), and the catch-up of
//! whatever a crash or a failed hook left half done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;
use walrelay_archive::Compression as ArchiveCompression;
use walrelay_durable::Owner;
use walrelay_protocol::WalSegmentSize;

use crate::config::Target;
use crate::error::ReceiveError;
use crate::stats::ReceiverStats;
use crate::writer::{CompletedSegment, HookError, SegmentCompletion, WriterError};

/// Archive mode: after a segment is complete and durable, record its checksum, compress it and
/// drop it from the page cache.
pub(crate) struct CompletionHook {
    pub target: Target,
    pub owner: Owner,
    pub stats: Arc<ReceiverStats>,
}

impl SegmentCompletion for CompletionHook {
    /// Archives the segment, then says so at INFO: one line per segment is a healthy receiver's
    /// sign of life in a service's log.
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError> {
        self.stats.segment_completed();
        match &self.target {
            Target::Archive {
                dir,
                compression,
                checksums,
            } => {
                let stored = archive_segment(
                    dir,
                    &segment.file_name,
                    *compression,
                    *checksums,
                    self.owner,
                )?;
                drop_from_page_cache(&stored);
                info!(
                    segment = %segment.file_name,
                    timeline = segment.segment.timeline.0,
                    end_lsn = %segment.end_lsn,
                    compression = %compression,
                    "segment complete"
                );
            }
            Target::PgWal { .. } => info!(
                segment = %segment.file_name,
                timeline = segment.segment.timeline.0,
                end_lsn = %segment.end_lsn,
                "segment complete"
            ),
        }
        Ok(())
    }
}

/// A stored segment is complete, durable and checksummed: nothing reads it again in normal
/// operation, so its pages go back to the kernel now ([`walrelay_durable::drop_cache`]).
fn drop_from_page_cache(stored: &Path) {
    if !walrelay_durable::page_cache_hints_on() {
        return;
    }
    if let Err(e) = walrelay_durable::drop_cache(stored) {
        tracing::debug!(path = %stored.display(), error = %e, "could not drop a segment's cached pages");
    }
}

/// Checksums and compresses a completed segment; returns the path it is stored under.
fn archive_segment(
    dir: &Path,
    name: &str,
    compression: ArchiveCompression,
    checksums: bool,
    owner: Owner,
) -> Result<PathBuf, HookError> {
    if checksums {
        let sum = walrelay_archive::segment_sha256(&dir.join(name))?;
        walrelay_archive::record_checksum(dir, name, &sum)?;
    }
    if compression != ArchiveCompression::None {
        return Ok(walrelay_archive::compress_completed_segment(
            dir,
            name,
            compression,
            owner,
        )?);
    }
    Ok(dir.join(name))
}

/// Finishes what a crash or a failed hook left: temp files, complete plain segments not yet
/// compressed or checksummed.
pub(crate) fn catch_up_archive(
    dir: &Path,
    seg: WalSegmentSize,
    compression: ArchiveCompression,
    checksums: bool,
    owner: Owner,
) -> Result<(), ReceiveError> {
    if !dir.is_dir() {
        return Err(ReceiveError::ArchiveDirMissing(dir.to_path_buf()));
    }
    walrelay_archive::cleanup(dir, seg)?;
    let known = if checksums {
        walrelay_archive::recorded_names(dir)?
    } else {
        Default::default()
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| ReceiveError::ListDir {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            matches!(
                walrelay_protocol::WalFileName::parse(n),
                Some(walrelay_protocol::WalFileName::Segment {
                    compression: None,
                    partial: false,
                    ..
                })
            )
        })
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len != seg.as_u64() {
            continue;
        }
        let needs_sum = checksums && !known.contains(&name);
        if needs_sum || compression != ArchiveCompression::None {
            info!(segment = %name, "finishing archiving of a segment completed by an earlier run");
            let stored =
                archive_segment(dir, &name, compression, needs_sum, owner).map_err(|source| {
                    WriterError::Completion {
                        file_name: name.clone(),
                        source,
                    }
                })?;
            drop_from_page_cache(&stored);
        }
    }
    Ok(())
}
