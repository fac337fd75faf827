//! What a relay (`walrelay serve`) last learned of its upstream, stored in the archive directory as
//! `walrelay.upstream`: the cluster's identity, the version the relay presents itself as, and the
//! settings downstreams ask about.
//!
//! A relay needs them before it can answer a downstream's first command. Written each time the
//! relay identifies its upstream, the file lets a relay restarted while the upstream is down serve
//! what its archive already holds (a standby catching up, pg_receivewal) instead of waiting for
//! the primary. The archive's WAL is of the same cluster by construction (the engine refuses WAL
//! of another system), so the stored identity is the archive's.
//!
//! The file is JSON, replaced atomically (temporary name, fsync, rename, directory fsync).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use walrelay_durable::{self as durable, Owner};
use walrelay_protocol::TimelineId;

use crate::error::{ArchiveError, Result};

/// The file's name in the archive directory.
pub const UPSTREAM_FILE_NAME: &str = "walrelay.upstream";
const UPSTREAM_FILE_MODE: u32 = 0o600;
const FORMAT_VERSION: u32 = 1;

/// The upstream as a relay last identified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayUpstream {
    pub system_identifier: u64,
    /// `server_version` as the upstream reported it.
    pub server_version: String,
    /// `server_version_num`.
    pub server_version_num: u32,
    pub wal_segment_size: u64,
    /// The upstream's timeline when it was identified.
    pub timeline: TimelineId,
    /// Settings read with `SHOW`.
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UpstreamFile {
    version: u32,
    upstream: RelayUpstream,
}

/// The stored upstream of `dir`, if a relay ever identified one there.
pub fn read_relay_upstream(dir: &Path) -> Result<Option<RelayUpstream>> {
    let path = dir.join(UPSTREAM_FILE_NAME);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ArchiveError::io("read", &path, e)),
    };
    let file: UpstreamFile = serde_json::from_slice(&text)
        .map_err(|e| ArchiveError::corrupt(&path, format!("not a relay's upstream record: {e}")))?;
    if file.version != FORMAT_VERSION {
        return Err(ArchiveError::corrupt(
            &path,
            format!(
                "upstream record version {} (this walrelay reads {FORMAT_VERSION})",
                file.version
            ),
        ));
    }
    Ok(Some(file.upstream))
}

/// Stores `upstream` in `dir` durably (replacing what was there).
pub fn write_relay_upstream(dir: &Path, upstream: &RelayUpstream) -> Result<()> {
    let file = UpstreamFile {
        version: FORMAT_VERSION,
        upstream: upstream.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| {
        ArchiveError::io(
            "encode the upstream record for",
            dir,
            std::io::Error::other(e),
        )
    })?;
    text.push(b'\n');
    durable::write_file_atomic(
        &dir.join(UPSTREAM_FILE_NAME),
        &text,
        UPSTREAM_FILE_MODE,
        Owner::of_dir_if_root(dir),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RelayUpstream {
        RelayUpstream {
            system_identifier: 7_300_000_000_000_000_001,
            server_version: "15.4 (Debian 15.4-1)".into(),
            server_version_num: 150_004,
            wal_segment_size: 16 * 1024 * 1024,
            timeline: TimelineId(3),
            settings: [("wal_level".to_string(), "replica".to_string())]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_relay_upstream(d.path()).unwrap(), None);
        write_relay_upstream(d.path(), &sample()).unwrap();
        assert_eq!(read_relay_upstream(d.path()).unwrap(), Some(sample()));
        let mut changed = sample();
        changed.timeline = TimelineId(4);
        write_relay_upstream(d.path(), &changed).unwrap();
        assert_eq!(read_relay_upstream(d.path()).unwrap(), Some(changed));
    }

    #[test]
    fn damaged_or_newer_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(UPSTREAM_FILE_NAME), "{").unwrap();
        let e = read_relay_upstream(d.path()).unwrap_err().to_string();
        assert!(e.contains(UPSTREAM_FILE_NAME), "{e}");
        std::fs::write(
            d.path().join(UPSTREAM_FILE_NAME),
            r#"{"version": 9, "upstream": {}}"#,
        )
        .unwrap();
        let e = read_relay_upstream(d.path()).unwrap_err().to_string();
        assert!(e.contains(UPSTREAM_FILE_NAME), "{e}");
    }
}
