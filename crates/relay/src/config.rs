//! What a relay is asked to do ([`RelayConfig`]); the upstream side is the engine's
//! [`walrelay_walreceiver::ReceiverConfig`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::allow::AllowList;
use crate::downstreams::RelayStats;
use crate::tls::ServerTls;
use crate::userlist::UserList;

/// How downstreams authenticate.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Anyone the allow list lets in (`--auth trust`).
    Trust,
    /// SCRAM-SHA-256 against the users of an auth file (`--auth scram --auth-file FILE`).
    Scram(UserList),
}

/// `wal_sender_timeout`'s default.
pub const DEFAULT_WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(60);
/// `authentication_timeout`'s default: a client has this long from connecting to being in.
pub const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Downstream connections at once (the relay's `max_wal_senders`).
pub const DEFAULT_MAX_SENDERS: usize = 32;
/// Slots the relay keeps at most (its `max_replication_slots`).
pub const DEFAULT_MAX_SLOTS: usize = 32;
/// The fan-out buffer: the newest WAL every downstream reads from memory.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// The downstream side of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where downstreams connect (`--listen`); port 0 picks a free one.
    pub listen: SocketAddr,
    /// How they prove who they are (`--auth`, `--auth-file`).
    pub auth: Auth,
    /// The client networks let in at all (`--allow`).
    pub allow: AllowList,
    /// `--tls-cert`/`--tls-key`: TLS offered to clients that ask (and SCRAM-SHA-256-PLUS).
    pub tls: Option<ServerTls>,
    /// Silence after which a streaming downstream is dropped (0 disables), as the server's
    /// `wal_sender_timeout`; at half of it the relay asks for a reply.
    pub wal_sender_timeout: Duration,
    /// Downstream sessions at once, streaming or not (the relay's `max_wal_senders`).
    pub max_senders: usize,
    /// Replication slots the relay keeps, persistent and temporary.
    pub max_slots: usize,
    /// Capacity of the fan-out buffer of the newest WAL.
    pub buffer_bytes: usize,
    /// The downstreams, shared with the metrics endpoint; `--sync-quorum K` is set when it is
    /// made ([`RelayStats::new`]).
    pub stats: Arc<RelayStats>,
}

impl RelayConfig {
    /// Loopback, trust, defaults everywhere else.
    pub fn new(listen: SocketAddr) -> Self {
        RelayConfig {
            listen,
            auth: Auth::Trust,
            allow: AllowList::loopback(),
            tls: None,
            wal_sender_timeout: DEFAULT_WAL_SENDER_TIMEOUT,
            max_senders: DEFAULT_MAX_SENDERS,
            max_slots: DEFAULT_MAX_SLOTS,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            stats: Arc::new(RelayStats::new(None)),
        }
    }
}
