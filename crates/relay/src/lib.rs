//! `walrelay serve`: a relay that holds one replication connection to the primary and serves the
//! physical replication protocol to many downstreams — PostgreSQL standbys, pg_receivewal,
//! pg_basebackup, walrelay itself — as if it were the primary.
//!
//! ```text
//!                ┌───────────────────────────── walrelay serve ─────────────────────────────┐
//!  primary ─WAL─►│ receive engine ──► archive (durable, validated)      session per client │─► standby
//!   (one         │   │ tap: bytes ──► fan-out buffer ──┐                  startup, auth,    │─► standby
//!   walsender)   │   │ tap: acknowledged ──────────────┼─► servable ─►    commands, stream  │─► pg_receivewal
//!      ◄── 'r' ──│◄──┘ flush (≤ K-th downstream flush) │  archive files ─┘                  │─► pg_basebackup
//!      ◄── 'h' ──│◄── oldest downstream xmin          BASE_BACKUP ──► proxied upstream      │
//!                └─────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The upstream side is walrelay's receive engine unchanged ([`walrelay_walreceiver`]: the same
//! archive layout, validation, durability, timeline and failover following as `walrelay receive`),
//! run with a tap ([`walrelay_walreceiver::tap`]). The downstream side is this crate:
//!
//! * `session`: one task per connection — TLS, startup, `--allow`, trust or SCRAM-SHA-256
//!   (`-PLUS` over TLS), then the replication commands a walsender answers, each as the
//!   upstream's major would ([`walrelay_protocol::walsender`]);
//! * [`wal_feed`]: what may be served (only WAL the engine acknowledged: fsynced and
//!   validated) and where it comes from — the fan-out buffer ([`buffer`]) for the newest WAL,
//!   the archive's segment files ([`segment_reader`]) for the rest;
//! * [`slots`]: replication slots kept by the relay, persisted in the archive, the floor of
//!   `walrelay prune`;
//! * [`downstreams`]: who is connected and how far each got — metrics, `--sync-quorum`, hot
//!   standby feedback forwarded upstream;
//! * [`upstream`]: the identity and settings the relay presents (the upstream's).
//!
//! `BASE_BACKUP` is proxied to the upstream; its WAL (`pg_basebackup -X stream`) comes from the
//! relay.

pub mod allow;
mod archive_wal;
pub mod buffer;
pub mod config;
pub mod downstreams;
mod own_address;
mod random;
pub mod segment_reader;
mod session;
mod shared;
pub mod slots;
pub mod tls;
pub mod upstream;
pub mod userlist;
pub mod wal_feed;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};
use walrelay_archive::ArchiveDir;
use walrelay_client::{Classify, ClientError, ErrorClass};
use walrelay_protocol::Lsn;
use walrelay_walreceiver::{
    ReceiveError, ReceiveSummary, ReceiverConfig, RelayChain, StopReason, StreamTap, Target,
    TimelinePosition,
};

pub use allow::{AllowList, Network};
pub use config::{Auth, RelayConfig};
pub use downstreams::{DownstreamSnapshot, DownstreamState, RelayStats};
pub use session::{RELAY_CHAIN_PARAMETER, RELAY_PARAMETER};
pub use tls::ServerTls;
pub use userlist::{UserList, UserListError};

use crate::buffer::WalBuffer;
use crate::shared::{ChainView, Identity, Shared};
use crate::slots::SlotRegistry;
use crate::wal_feed::{BufferObserver, WalFeed};

/// Why a relay stopped with an error.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
    #[error(
        "the archive {} belongs to system {archive}, but the upstream is system {upstream}: serve another cluster from a new directory",
        dir.display()
    )]
    OtherSystem {
        dir: std::path::PathBuf,
        archive: u64,
        upstream: u64,
    },
    #[error("could not identify the upstream server")]
    Upstream(#[source] ClientError),
    #[error("cannot listen on {addr}: {source}: {}", walrelay_client::bind_fix(.source, "--listen"))]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("archive directory: {0}")]
    Archive(#[from] walrelay_archive::ArchiveError),
    #[error(transparent)]
    Engine(#[from] ReceiveError),
}

impl Classify for RelayError {
    fn class(&self) -> ErrorClass {
        match self {
            RelayError::Config(_) => ErrorClass::Usage,
            RelayError::Upstream(e) => e.class(),
            RelayError::OtherSystem { .. } => ErrorClass::ServerState,
            RelayError::Listen { .. } | RelayError::Archive(_) => ErrorClass::Local,
            RelayError::Engine(e) => e.class(),
        }
    }
}

/// Connections accepted but not yet through authentication, at most: beyond, new ones are closed
/// at once (a flood of half-open connections must not exhaust the relay).
const MAX_PENDING: usize = 128;

/// Runs a relay: identifies the upstream, listens, serves downstreams, and streams from the
/// upstream into the archive with `engine` (an archive target; its shutdown watch stops
/// everything) until it stops. Returns the engine's summary.
///
/// `ready` is told the address the relay listens on once it does.
pub async fn serve(
    config: RelayConfig,
    engine: ReceiverConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<ReceiveSummary, RelayError> {
    let dir = match &engine.target {
        Target::Archive { dir, .. } => dir.clone(),
        Target::PgWal { .. } => {
            return Err(RelayError::Config(
                "walrelay serve keeps an archive directory (-D), not a standby's pg_wal".into(),
            ))
        }
    };
    if !engine.validate {
        return Err(RelayError::Config(
            "walrelay serve sends only validated WAL: validation cannot be turned off".into(),
        ));
    }
    let own = own_address::endpoints_reaching(&engine.connect, config.listen).await;
    if !own.is_empty() {
        if own.len() == engine.connect.endpoints.len() {
            return Err(RelayError::Config(format!(
                "the upstream {} is this relay's own --listen address {}: point -d/-h at the primary (or at a relay upstream of this one)",
                own.join(", "),
                config.listen
            )));
        }
        warn!(
            hosts = %own.join(", "),
            listen = %config.listen,
            "the upstream host list holds this relay's own --listen address: a session that reaches it is ended and the list tried again"
        );
    }
    // The address is taken now, so that one in use is reported at once rather than after the
    // upstream answers (which may take long on a first start); connections wait in the backlog
    // until the relay knows whom it speaks for.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RelayError::Listen {
            addr: config.listen,
            source,
        })?;
    let mut stop = engine.shutdown.clone();
    // Identified without the relay's own address: nothing answers there until the relay does
    // (the listener does not accept yet), so it would hang until connect_timeout.
    let mut identify_params = engine.connect.clone();
    identify_params
        .endpoints
        .retain(|e| !own.contains(&e.to_string()));
    let Some(upstream) = upstream::identify(&identify_params, &dir, &mut stop).await? else {
        return Ok(ReceiveSummary {
            stop: StopReason::Shutdown,
            flushed: Lsn::INVALID,
            timeline: walrelay_protocol::TimelineId::FIRST,
            reconnects: 0,
        });
    };
    let (seg, upstream_timeline) = (upstream.segment_size, upstream.timeline);

    // What the archive holds already is servable up to where the engine resumes.
    let scan_dir = dir.clone();
    let inventory = tokio::task::spawn_blocking(move || ArchiveDir::new(scan_dir, seg).scan())
        .await
        .map_err(|e| RelayError::Config(format!("scanning the archive failed: {e}")))??;
    let (sysid, magic) = (
        upstream.system_identifier,
        walrelay_wal::page_magic_for_major(upstream.major()),
    );
    let initial =
        tokio::task::spawn_blocking(
            move || match inventory.streaming_start_on_newest_timeline() {
                Some(resume) => TimelinePosition {
                    timeline: resume.0,
                    lsn: archive_wal::servable_in_partial(&inventory, resume, sysid, magic),
                },
                None => TimelinePosition {
                    timeline: upstream_timeline,
                    lsn: Lsn::INVALID,
                },
            },
        )
        .await
        .map_err(|e| RelayError::Config(format!("reading the archive failed: {e}")))?;
    let slots = SlotRegistry::load(&dir, seg, config.max_slots)?;
    let (ack_tx, ack_rx) = watch::channel(initial);
    let buffer = Arc::new(Mutex::new(WalBuffer::new(config.buffer_bytes)));
    let feed = Arc::new(WalFeed::new(
        dir.clone(),
        seg,
        ack_rx,
        buffer.clone(),
        engine.stats.clone(),
    ));
    let stats = config.stats.clone();
    let mut mock_secret = [0u8; 32];
    random::random_bytes(&mut mock_secret).map_err(|e| RelayError::Config(e.to_string()))?;
    let own = relay_token(&dir)?;
    let (chain_tx, chain_rx) = watch::channel(String::new());
    let tap = StreamTap {
        observer: Arc::new(BufferObserver(buffer)),
        acknowledged: ack_tx,
        flush_cap: stats.flush_cap(),
        hot_standby_feedback: stats.hot_standby_feedback(),
        chain: Some(RelayChain {
            parameter: RELAY_CHAIN_PARAMETER,
            own: own.clone(),
            upstream: chain_tx,
        }),
    };

    let local = listener.local_addr().map_err(|source| RelayError::Listen {
        addr: config.listen,
        source,
    })?;
    let (sessions_stop, sessions_stop_rx) = watch::channel(false);
    info!(
        listen = %local,
        archive = %dir.display(),
        servable = %initial.lsn,
        timeline = %initial.timeline,
        slots = slots.list().len(),
        "serving physical replication"
    );
    let shared = Arc::new(Shared::new(
        config,
        upstream,
        engine.connect.clone(),
        feed.clone(),
        slots,
        sessions_stop_rx,
        Identity {
            mock_secret,
            chain: ChainView {
                own,
                upstream: chain_rx,
            },
        },
    ));
    let accept = tokio::spawn(accept_loop(listener, shared.clone()));
    let lag = tokio::spawn(track_served(feed.subscribe(), stats.clone()));
    ready(local);

    let result = walrelay_walreceiver::run_tapped(engine, tap).await;

    accept.abort();
    lag.abort();
    let _ = sessions_stop.send(true);
    // Sessions say goodbye (CommandComplete inside a stream, FATAL between commands).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while stats.connected() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = shared.slots.flush() {
        warn!(error = %e, "could not save the replication slots");
    }
    match &result {
        Ok(summary) => info!(flushed = %summary.flushed, "relay stopped"),
        Err(e) => warn!(error = %e, "relay stopped: the upstream side failed"),
    }
    Ok(result?)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING + shared.config.max_senders));
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    warn!(%peer, "too many connections at once; closing a new one");
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    session::handle(tcp, peer, shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Feeds the lag tracker with each move of the servable position.
async fn track_served(mut ack: watch::Receiver<TimelinePosition>, stats: Arc<RelayStats>) {
    loop {
        let lsn = ack.borrow_and_update().lsn;
        stats.served(lsn);
        if ack.changed().await.is_err() {
            return;
        }
    }
}

/// The file in the archive directory that keeps the relay's chain token across restarts.
const RELAY_TOKEN_FILE: &str = "walrelay.relay-token";

/// This relay's token in `walrelay_serve_chain`: drawn once and kept in its archive directory.
/// A token drawn at every start let a relay restarted to stream from its own downstream (A
/// restarted with B as upstream, B streaming from A) pass B's chain, which held A's old token;
/// B then found itself in A's chain and stopped, naming B's correct configuration. Kept, A finds
/// itself and stops: the relay whose `-d` points the wrong way.
fn relay_token(dir: &std::path::Path) -> Result<String, RelayError> {
    let path = dir.join(RELAY_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim();
        if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(t.to_ascii_lowercase());
        }
    }
    let mut token = [0u8; 8];
    random::random_bytes(&mut token).map_err(|e| RelayError::Config(e.to_string()))?;
    let own = token.iter().map(|b| format!("{b:02x}")).collect::<String>();
    walrelay_durable::write_file_atomic(
        &path,
        format!("{own}\n").as_bytes(),
        0o600,
        walrelay_durable::Owner::of_dir_if_root(dir),
    )
    .map_err(|e| {
        RelayError::Config(format!(
            "cannot keep the relay's token in {}: {e}",
            path.display()
        ))
    })?;
    Ok(own)
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn the_chain_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = relay_token(dir.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(relay_token(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(relay_token(other.path()).unwrap(), first);
        std::fs::write(dir.path().join(RELAY_TOKEN_FILE), "garbage").unwrap();
        let redrawn = relay_token(dir.path()).unwrap();
        assert_eq!(redrawn.len(), 16);
        assert_eq!(relay_token(dir.path()).unwrap(), redrawn);
    }
}
