//! What the relay's archive holds already, read before serving from it (blocking file IO).
//!
//! * Whose WAL it is: a directory with WAL but no `walrelay.upstream` record yet (pg_receivewal's
//!   archive, say) must hold the upstream's cluster before the relay records that upstream in
//!   it — a record written over another cluster's WAL would, on a restart while the upstream is
//!   down, present that WAL under the upstream's identity.
//! * How far its newest `.partial` is servable after a restart: the engine resumes streaming at
//!   the start of that segment, but the WAL it wrote and acknowledged there before the stop is
//!   durable and was validated; a downstream of a relay restarted while the upstream is down
//!   needs it (the last commits before the outage). The file is fsynced and its records checked
//!   again, and only its validated prefix is served.

use std::io::Read;
use std::path::Path;

use tracing::{info, warn};
use walrelay_archive::{ArchiveDir, Inventory, SegmentFileState};
use walrelay_protocol::{Lsn, SegmentId, TimelineId, WalSegmentSize};
use walrelay_wal::{inspect_segment_start, validate_segment_file, SegmentCheck};

/// The system identifier in the long header of the archive's newest segment file, plain or
/// compressed; `None` when it holds no segment file or that header cannot be read.
pub fn archived_system(
    dir: &Path,
    seg: WalSegmentSize,
) -> Result<Option<u64>, walrelay_archive::ArchiveError> {
    let inventory = ArchiveDir::new(dir, seg).scan()?;
    let Some(file) = inventory
        .segments
        .values()
        .next_back()
        .and_then(|f| f.first())
    else {
        return Ok(None);
    };
    let path = dir.join(&file.name);
    let mut header = Vec::with_capacity(64);
    walrelay_archive::open_segment(&path)?
        .take(64)
        .read_to_end(&mut header)
        .map_err(|source| walrelay_archive::ArchiveError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
    Ok(inspect_segment_start(&header)
        .ok()
        .map(|h| h.system_identifier))
}

/// Where the relay may serve up to after a restart that resumes streaming at `resume` (the start
/// of a segment, from `inventory`, the archive's scan): the end of the validated WAL in that
/// segment's `.partial`, fsynced first, or `resume` itself when there is none or it cannot be
/// read.
pub fn servable_in_partial(
    inventory: &Inventory,
    resume: (TimelineId, Lsn),
    system_identifier: u64,
    page_magic: Option<u16>,
) -> Lsn {
    let (timeline, start) = resume;
    let seg = inventory.seg_size;
    let id = SegmentId::new(timeline, seg.segno(start));
    let Some(file) = inventory
        .segments
        .get(&id)
        .and_then(|files| files.iter().find(|f| f.state == SegmentFileState::Partial))
    else {
        return start;
    };
    let path = inventory.dir.join(&file.name);
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(&path)?;
        // Written before a crash of the relay is not yet durable: it is now.
        f.sync_all()?;
        let mut bytes = Vec::with_capacity(seg.bytes() as usize);
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = match read() {
        Ok(b) => b,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "could not read the newest partial segment; serving up to its start until the upstream is back");
            return start;
        }
    };
    let check = SegmentCheck {
        page_magic,
        system_identifier: Some(system_identifier),
        ..SegmentCheck::new(seg)
    };
    match validate_segment_file(&bytes, id, &check) {
        Ok(report) if report.valid_end > start => {
            info!(file = %file.name, servable = %report.valid_end, "the newest partial segment is validated again and served up to its last whole record");
            report.valid_end
        }
        Ok(_) => start,
        Err(e) => {
            warn!(file = %file.name, error = %e, "the newest partial segment does not validate; serving up to its start until the upstream is back");
            start
        }
    }
}
