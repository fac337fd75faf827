//! The WAL archive directory: what `pg_receivewal -D DIR` keeps, and what walrelay keeps the same way.
//!
//! An archive directory holds
//! * completed segments under their 24-hex-digit names, plain or compressed as one gzip member
//!   (`.gz`), one LZ4 frame (`.lz4`, both as pg_receivewal 15 writes them) or one zstd frame (`.zst`,
//!   walrelay's own) — see [`Compression`];
//! * the segment being received as `NAME.partial` (pg_receivewal may also leave `NAME.gz.partial` or
//!   `NAME.lz4.partial`);
//! * timeline history files `TTTTTTTT.history`;
//! * walrelay's checksum list `walrelay.sha256` ([`read_checksums`], [`record_checksum`]);
//! * the replication slots a relay keeps for its downstreams, `walrelay.slots` ([`read_slots`],
//!   [`write_slots`]), which [`prune()`] never prunes past, and the upstream it last identified,
//!   `walrelay.upstream` ([`read_relay_upstream`]).
//!
//! This crate scans such a directory ([`ArchiveDir::scan`], [`infer_segment_size`]), compresses
//! segments as they complete ([`compress_completed_segment`]), serves `restore_command`
//! ([`restore()`]), verifies the whole archive ([`verify()`], with [`WalContentCheck`] checking
//! every page header and record CRC, across segment boundaries too) and removes WAL that is no
//! longer needed ([`prune()`]), with the semantics of PostgreSQL's pg_receivewal, restore_command
//! and pg_archivecleanup.
//!
//! Everything here is blocking std IO: call it from a blocking thread. The modules are private;
//! the items below are what other crates use, and the types those return.

mod checksum;
mod compression;
mod content_check;
mod error;
mod inventory;
mod prune;
mod relay_upstream;
mod restore;
mod slots;
mod verify;

pub use checksum::{
    read_checksums, record_checksum, recorded_hashes, recorded_names, remove_checksums,
    ChecksumList,
};
pub use compression::{
    compress_completed_segment, decode_bytes, open_segment, segment_sha256, suffix_info,
    uncompressed_size, Compression,
};
pub use content_check::WalContentCheck;
pub use error::{
    ArchiveError, Result, RESTORE_EXIT_CORRUPT, RESTORE_EXIT_ERROR, RESTORE_EXIT_NOT_FOUND,
    RESTORE_EXIT_RESTORED,
};
pub use inventory::{
    cleanup, failover_report_timeline, infer_segment_size, ArchiveDir, CleanupReport, DamagedFile,
    Inventory, SegmentFile, SegmentFileState,
};
pub use prune::{plan_prune, prune, ListedFile, PruneOptions, PrunePlan, PrunePoint, PruneReport};
pub use relay_upstream::{
    read_relay_upstream, write_relay_upstream, RelayUpstream, UPSTREAM_FILE_NAME,
};
pub use restore::{
    requested_is_segment, restore, restore_by_rename, restore_bytes, RestoreOptions,
    RestoreOutcome, Restored,
};
pub use slots::{read_slots, slot_floor, write_slots, PersistentSlot, SLOTS_FILE_NAME};
pub use verify::{
    verify, verify_files, ArchiveFiles, Gap, NoContentCheck, Problem, ProblemKind,
    SegmentContentCheck, TimelineSummary, VerifyOptions, VerifyReport,
};

#[cfg(test)]
pub(crate) mod testutil {
    /// WAL-like bytes: compressible but not trivially so.
    pub fn fake_segment(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i % 251) as u8))
            .collect()
    }
}
