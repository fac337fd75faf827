//! What the relay learns from its upstream before it serves anyone: the cluster's identity, the
//! version it speaks for, and the settings downstreams ask about with `SHOW`.
//!
//! The relay presents itself as the upstream's major: it reports the upstream's `server_version`
//! verbatim (pg_basebackup and pg_receivewal refuse a server newer than themselves, and every
//! client branches on the version) and answers each command as that major would
//! ([`walrelay_protocol::walsender`]).
//!
//! What was learned is kept in the archive (`walrelay.upstream`): a relay restarted while its
//! upstream is down presents itself from that record and serves what the archive holds, while
//! the engine keeps trying to reach the upstream.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};
use walrelay_archive::RelayUpstream;
use walrelay_client::{Classify, ClientError, ConnectParams, Connection};
use walrelay_protocol::{ServerVersion, TimelineId, WalSegmentSize};

use crate::RelayError;

/// The upstream as the relay describes it to downstreams.
#[derive(Clone, Debug)]
pub struct UpstreamInfo {
    pub system_identifier: u64,
    /// `server_version` as the upstream reported it (e.g. `15.4 (Debian 15.4-1)`).
    pub server_version: String,
    pub version: ServerVersion,
    pub segment_size: WalSegmentSize,
    /// The upstream's timeline when the relay started.
    pub timeline: TimelineId,
    /// Settings read with `SHOW` (those that exist on this major).
    pub settings: BTreeMap<String, String>,
}

impl UpstreamInfo {
    pub fn major(&self) -> u32 {
        self.version.major()
    }

    /// The record kept in the archive.
    pub fn to_record(&self) -> RelayUpstream {
        RelayUpstream {
            system_identifier: self.system_identifier,
            server_version: self.server_version.clone(),
            server_version_num: self.version.0,
            wal_segment_size: self.segment_size.as_u64(),
            timeline: self.timeline,
            settings: self.settings.clone(),
        }
    }

    /// From the archive's record; `None` if it holds an impossible segment size.
    pub fn from_record(r: RelayUpstream) -> Option<UpstreamInfo> {
        Some(UpstreamInfo {
            system_identifier: r.system_identifier,
            server_version: r.server_version,
            version: ServerVersion(r.server_version_num),
            segment_size: WalSegmentSize::new(r.wal_segment_size).ok()?,
            timeline: r.timeline,
            settings: r.settings,
        })
    }
}

/// How long a restarted relay waits for its upstream to answer before it serves the archive
/// from the upstream's record.
const RECORDED_UPSTREAM_PATIENCE: Duration = Duration::from_secs(5);

/// The upstream the relay presents: identified now and recorded in the archive `dir`; or, when
/// the upstream cannot be reached for now (a transient failure) and a relay recorded it earlier,
/// that record — the archive's WAL is then served while the engine keeps trying to connect;
/// without a record, retried until it answers or `stop` says to give up (`None`).
pub async fn identify(
    params: &ConnectParams,
    dir: &Path,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<UpstreamInfo>, RelayError> {
    // A stop asked for while the first attempt hangs (a peer that never answers) ends it now.
    // With a record, an upstream that does not answer soon (a hung primary, a load balancer in
    // front of a dead one) does not keep downstreams from the archive for connect_timeout.
    let recorded = walrelay_archive::read_relay_upstream(dir)?.and_then(UpstreamInfo::from_record);
    let has_record = recorded.is_some();
    let probed = tokio::select! {
        r = probe(params) => r,
        _ = stop.wait_for(|s| *s) => return Ok(None),
        _ = tokio::time::sleep(RECORDED_UPSTREAM_PATIENCE), if has_record => {
            let info = recorded.ok_or_else(|| RelayError::Config("the upstream record vanished".into()))?;
            warn!(
                waited_secs = RECORDED_UPSTREAM_PATIENCE.as_secs(),
                server_version = %info.server_version,
                system_identifier = info.system_identifier,
                "upstream does not answer; serving the archive as the upstream last identified, while reconnecting"
            );
            return Ok(Some(info));
        }
    };
    let first = match probed {
        Ok(info) => Some(info),
        Err(e) if e.class().is_transient() => {
            let record = walrelay_archive::read_relay_upstream(dir)?;
            match record.and_then(UpstreamInfo::from_record) {
                Some(info) => {
                    warn!(
                        error = %e,
                        server_version = %info.server_version,
                        system_identifier = info.system_identifier,
                        "upstream not reachable; serving the archive as the upstream last identified, while reconnecting"
                    );
                    return Ok(Some(info));
                }
                None => None,
            }
        }
        Err(e) => return Err(RelayError::Upstream(e)),
    };
    let info = match first {
        Some(info) => info,
        None => match probe_until_ready(params, stop)
            .await
            .map_err(RelayError::Upstream)?
        {
            Some(info) => info,
            None => return Ok(None),
        },
    };
    info!(
        server_version = %info.server_version,
        system_identifier = info.system_identifier,
        timeline = %info.timeline,
        wal_segment_size = %info.segment_size,
        "upstream identified"
    );
    let stored = walrelay_archive::read_relay_upstream(dir)?;
    // Without a record yet, the WAL already there (pg_receivewal's, an earlier receive's) says
    // whose archive it is: the record must not be written over another cluster's WAL.
    let archived = match &stored {
        Some(stored) => Some(stored.system_identifier),
        None => {
            let (d, seg) = (dir.to_path_buf(), info.segment_size);
            tokio::task::spawn_blocking(move || crate::archive_wal::archived_system(&d, seg))
                .await
                .map_err(|e| RelayError::Config(format!("reading the archive failed: {e}")))??
        }
    };
    if let Some(archived) = archived {
        if archived != info.system_identifier {
            return Err(RelayError::OtherSystem {
                dir: dir.to_path_buf(),
                archive: archived,
                upstream: info.system_identifier,
            });
        }
    }
    let record = info.to_record();
    if stored.as_ref() == Some(&record) {
        return Ok(Some(info));
    }
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || walrelay_archive::write_relay_upstream(&dir, &record))
        .await
        .map_err(|e| RelayError::Config(format!("recording the upstream failed: {e}")))??;
    Ok(Some(info))
}

/// The upstream's settings a downstream may ask about (`walrelay check`, pg_basebackup's
/// `data_directory_mode`); the relay's own ones are answered by the relay.
const UPSTREAM_SETTINGS: &[(&str, u32)] = &[
    ("wal_level", 10),
    ("data_checksums", 10),
    ("block_size", 10),
    ("wal_block_size", 10),
    ("server_version_num", 10),
    ("full_page_writes", 10),
    ("wal_log_hints", 10),
    ("data_directory_mode", 11),
];

/// Connects once and reads what [`UpstreamInfo`] holds.
pub async fn probe(params: &ConnectParams) -> Result<UpstreamInfo, ClientError> {
    let mut conn = Connection::connect(params).await?;
    let ident = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    let version = conn.server_version();
    let server_version = conn
        .parameter("server_version")
        .unwrap_or_default()
        .to_string();
    let mut settings = BTreeMap::new();
    for (name, since) in UPSTREAM_SETTINGS {
        if version.major() >= *since {
            if let Ok(v) = conn.show(name).await {
                settings.insert(name.to_string(), v);
            }
        }
    }
    conn.close().await;
    Ok(UpstreamInfo {
        system_identifier: ident.system_identifier,
        server_version,
        version,
        segment_size,
        timeline: ident.timeline,
        settings,
    })
}

/// [`probe`], retried while the failure is transient (the upstream is down or restarting), until
/// `stop` says to give up. A definite failure (authentication, a bad setting) returns at once.
pub async fn probe_until_ready(
    params: &ConnectParams,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<UpstreamInfo>, ClientError> {
    let mut delay = Duration::from_secs(1);
    loop {
        match probe(params).await {
            Ok(info) => return Ok(Some(info)),
            Err(e) if e.class().is_transient() => {
                warn!(error = %e, retry_in_secs = delay.as_secs(), "upstream not reachable yet; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
