//! One downstream connection, from accept to close.
//!
//! ```text
//!  accept ─► startup (TLS, startup packet, --allow, auth, parameters)        startup.rs
//!         ─► command loop: ReadyForQuery, then one replication command at a time
//!              IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, *_REPLICATION_SLOT   here
//!              START_REPLICATION ─► the CopyBoth stream                       stream.rs
//!              BASE_BACKUP, UPLOAD_MANIFEST ─► proxied to the upstream        backup.rs
//!         ─► close: temporary slots dropped, slots released, unregistered
//! ```
//!
//! A command's failure is an ErrorResponse with PostgreSQL's SQLSTATE, and the connection stays
//! (as on a server); a protocol violation is FATAL and closes it. Nothing a client sends can make
//! the relay panic or touch another session: each session is its own task, and what they share
//! (the WAL feed, the slots, the registry) is behind short locks.

mod backup;
mod io;
mod startup;
mod stream;

pub use startup::{RELAY_CHAIN_PARAMETER, RELAY_PARAMETER};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument};
use walrelay_client::Connection;
use walrelay_protocol::replication_command::{
    CommandError, GenericOption, ReplicationCommand, SlotKind,
};
use walrelay_protocol::server::{
    encode_error_response, encode_notice_response, encode_ready_for_query, TRANSACTION_IDLE,
};
use walrelay_protocol::walsender::{self, SlotInfo};
use walrelay_protocol::ErrorFields;
use walrelay_protocol::{Lsn, TimelineId};

use self::io::{Io, ReadError};
use self::startup::Startup;
use crate::shared::Shared;
use crate::slots::SlotError;

/// Why a connection ends before it is in.
pub enum Refused {
    /// Send this FATAL error, then close.
    Fatal(ErrorFields),
    /// Close without a word (the client left, or cannot be answered).
    Quietly,
}

/// The connection ends (what is queued is still sent).
#[derive(Debug)]
pub struct End;

/// A name the client chose (user, application_name), for the log: control characters escaped,
/// so that a name holding a line break cannot forge a log line of its own (the JSON format
/// escapes by itself; the text format does not).
pub(crate) struct Printable<'a>(pub &'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn fields(severity: &str, code: &str, message: &str) -> ErrorFields {
    ErrorFields {
        severity: severity.to_string(),
        code: code.to_string(),
        message: message.to_string(),
        detail: None,
        hint: None,
    }
}

/// An ERROR: the command fails, the connection stays.
pub fn error(code: &str, message: &str) -> ErrorFields {
    fields("ERROR", code, message)
}

/// A FATAL error: the connection closes after it.
pub fn fatal(code: &str, message: &str) -> ErrorFields {
    fields("FATAL", code, message)
}

impl From<SlotError> for ErrorFields {
    fn from(e: SlotError) -> Self {
        let mut f = error(e.sqlstate(), &e.to_string());
        f.hint = e.hint().map(str::to_string);
        f
    }
}

/// Sends a FATAL error on a connection that is not yet in.
async fn send_fatal_raw(io: &mut Io, f: &ErrorFields) {
    if encode_error_response(f, &mut io.tx.out).is_ok() {
        let _ = io.flush(Duration::from_secs(5)).await;
    }
}

/// Runs one downstream connection to its end.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let pid = shared.next_pid();
    let span = info_span!("downstream", pid, %peer);
    async move {
        let _ = tcp.set_nodelay(true);
        let (io, startup) = match startup::handshake(tcp, peer, pid, &shared).await {
            Ok(x) => x,
            Err(_) => return,
        };
        shared
            .stats
            .register(pid, peer, &startup.user, &startup.application_name);
        info!(
            user = %Printable(&startup.user),
            application_name = %Printable(&startup.application_name),
            tls = startup.tls,
            "downstream connected"
        );
        let mut session = Session {
            io,
            shared: shared.clone(),
            pid,
            startup,
            upstream: None,
        };
        let ended = session.command_loop().await;
        if let Some(c) = session.upstream.take() {
            c.close().await;
        }
        session.io.close().await;
        shared.slots.session_ended(pid);
        shared.stats.deregister(pid);
        info!(clean = ended.is_ok(), "downstream disconnected");
    }
    .instrument(span)
    .await
}

/// A downstream that is in.
pub struct Session {
    io: Io,
    shared: Arc<Shared>,
    pid: i32,
    startup: Startup,
    /// A connection to the upstream for proxied commands (kept from UPLOAD_MANIFEST to the
    /// BASE_BACKUP that uses it).
    upstream: Option<Connection>,
}

impl Session {
    fn major(&self) -> u32 {
        self.shared.upstream.major()
    }

    /// How long a client may take to take what it is sent in command mode.
    fn write_limit(&self) -> Duration {
        match self.shared.config.wal_sender_timeout {
            t if t.is_zero() => Duration::from_secs(3600),
            t => t,
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        let limit = self.write_limit();
        self.io.flush(limit).await.map_err(|e| {
            debug!(error = %e, "could not send to the client");
            End
        })
    }

    /// Queues an ErrorResponse.
    fn send_error(&mut self, f: &ErrorFields) {
        if encode_error_response(f, &mut self.io.tx.out).is_err() {
            let plain = error(&f.code, "error message not encodable");
            let _ = encode_error_response(&plain, &mut self.io.tx.out);
        }
    }

    /// Queues a NOTICE: the command goes on.
    fn send_notice(&mut self, f: &ErrorFields) {
        // A notice too long to encode is dropped: it is advice, never the command's outcome.
        let _ = encode_notice_response(f, &mut self.io.tx.out);
    }

    /// Queues a FATAL error; the caller ends the connection.
    fn send_fatal(&mut self, code: &str, message: &str) -> End {
        self.send_error(&fatal(code, message));
        End
    }

    /// Commands until the client leaves or breaks the protocol.
    async fn command_loop(&mut self) -> Result<(), End> {
        let mut shutdown = self.shared.shutdown.clone();
        let mut ready = true;
        loop {
            if ready {
                encode_ready_for_query(TRANSACTION_IDLE, &mut self.io.tx.out);
            }
            ready = true;
            self.flush().await?;
            let msg = tokio::select! {
                m = self.io.read_message() => m,
                _ = shutdown.wait_for(|s| *s) => {
                    return Err(self.send_fatal("57P01", "terminating connection due to administrator command"));
                }
            };
            match msg {
                Ok(walrelay_protocol::frontend::FrontendMessage::Query(text)) => {
                    self.dispatch(&text).await?
                }
                Ok(walrelay_protocol::frontend::FrontendMessage::Terminate)
                | Err(ReadError::Closed) => return Ok(()),
                Err(ReadError::Io(e)) => {
                    debug!(error = %e, "connection lost");
                    return Err(End);
                }
                Err(ReadError::Protocol(e)) => {
                    return Err(self.send_fatal("08P01", &e.to_string()));
                }
                Ok(walrelay_protocol::frontend::FrontendMessage::Extended(_)) => {
                    return Err(self.send_fatal(
                        "08P01",
                        "extended query protocol not supported in a replication connection",
                    ));
                }
                // Accepted and ignored outside COPY, as PostgresMain does.
                Ok(walrelay_protocol::frontend::FrontendMessage::CopyData(_))
                | Ok(walrelay_protocol::frontend::FrontendMessage::CopyDone)
                | Ok(walrelay_protocol::frontend::FrontendMessage::CopyFail(_))
                | Ok(walrelay_protocol::frontend::FrontendMessage::Flush) => ready = false,
                Ok(walrelay_protocol::frontend::FrontendMessage::Sync) => {}
                Ok(walrelay_protocol::frontend::FrontendMessage::Password(_)) => {
                    return Err(self.send_fatal("08P01", "invalid frontend message type 112"));
                }
            }
        }
    }

    async fn dispatch(&mut self, text: &str) -> Result<(), End> {
        let cmd = match ReplicationCommand::parse_with_notices(text) {
            Ok((c, notices)) => {
                for n in notices {
                    self.send_notice(&fields("NOTICE", "42622", &n));
                }
                c
            }
            Err(CommandError::NotReplicationCommand) => {
                debug!(query = %text.chars().take(80).collect::<String>(), "refused SQL");
                let mut f = error(
                    "0A000",
                    "cannot execute SQL commands in WAL sender for physical replication",
                );
                f.hint = Some(
                    "walrelay serve answers replication commands only; run SQL on the primary."
                        .into(),
                );
                self.send_error(&f);
                return Ok(());
            }
            Err(CommandError::Syntax(m)) => {
                self.send_error(&error("42601", &m));
                return Ok(());
            }
        };
        debug!(?cmd, "replication command");
        let major = self.major();
        if let Some(keyword) = newer_than(&cmd, major) {
            // What the upstream's own walsender answers: its grammar has no such command.
            self.send_error(&error(
                "42601",
                &format!("syntax error at or near \"{keyword}\" (PostgreSQL {major} has no such replication command)"),
            ));
            return Ok(());
        }
        match cmd {
            ReplicationCommand::IdentifySystem => self.identify_system().await,
            ReplicationCommand::Show { name } => {
                match self.show_value(&name) {
                    Some(v) => self.reply(|out| walsender::show(major, &name, &v, out)),
                    None => self.send_error(&error(
                        "42704",
                        &format!("unrecognized configuration parameter \"{name}\""),
                    )),
                }
                Ok(())
            }
            ReplicationCommand::TimelineHistory { timeline } => {
                self.timeline_history(timeline);
                Ok(())
            }
            ReplicationCommand::ReadReplicationSlot { slot } => {
                self.read_replication_slot(&slot);
                Ok(())
            }
            ReplicationCommand::CreateReplicationSlot {
                slot,
                temporary,
                kind,
                options,
            } => {
                self.create_replication_slot(&slot, temporary, &kind, &options);
                Ok(())
            }
            ReplicationCommand::DropReplicationSlot { slot, wait } => {
                self.drop_replication_slot(&slot, wait).await;
                Ok(())
            }
            ReplicationCommand::AlterReplicationSlot { slot, .. } => {
                let f = match self.shared.slots.read(&slot) {
                    None => SlotError::Missing(slot).into(),
                    Some(_) => error(
                        "0A000",
                        "cannot use ALTER_REPLICATION_SLOT with a physical replication slot",
                    ),
                };
                self.send_error(&f);
                Ok(())
            }
            ReplicationCommand::StartReplication {
                slot,
                start,
                timeline,
            } => stream::start_replication(self, slot, start, timeline).await,
            ReplicationCommand::StartLogicalReplication { .. } => {
                self.send_error(&logical_refused());
                Ok(())
            }
            ReplicationCommand::BaseBackup { options } => {
                if let Some(target) = options
                    .iter()
                    .find(|o| o.name == "target")
                    .and_then(GenericOption::as_text)
                    .filter(|t| *t != "client")
                {
                    let mut f = error(
                        "0A000",
                        &format!("walrelay serve sends base backups to the client only, not to target \"{target}\""),
                    );
                    f.hint = Some("Take a server-side backup on the primary itself.".into());
                    self.send_error(&f);
                    return Ok(());
                }
                backup::proxy(self, text, true).await
            }
            ReplicationCommand::UploadManifest => backup::proxy(self, text, false).await,
        }
    }

    /// Queues a reply produced by an encoder of [`walsender`]; an encoding failure (a value that
    /// cannot be carried) becomes an error reply.
    fn reply(
        &mut self,
        encode: impl FnOnce(&mut bytes::BytesMut) -> Result<(), walrelay_protocol::server::EncodeError>,
    ) {
        if let Err(e) = encode(&mut self.io.tx.out) {
            self.send_error(&error("XX000", &e.to_string()));
        }
    }

    async fn identify_system(&mut self) -> Result<(), End> {
        // Right after a start the relay may not have acknowledged any WAL yet; a client asking
        // then waits a little rather than being told 0/0.
        let mut ack = self.shared.feed.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), ack.wait_for(|a| a.lsn.is_valid())).await;
        let cur = match self.shared.feed.current() {
            Ok(c) if c.lsn.is_valid() => c,
            Ok(_) => {
                self.send_error(&error(
                    "57P03",
                    "walrelay serve has no WAL to serve yet: it is still connecting to its upstream",
                ));
                return Ok(());
            }
            Err(e) => {
                self.send_error(&error("58030", &e.to_string()));
                return Ok(());
            }
        };
        let (major, sysid) = (self.major(), self.shared.upstream.system_identifier);
        let db = self.startup.database.clone();
        self.reply(|out| {
            walsender::identify_system(major, sysid, cur.timeline, cur.lsn, db.as_deref(), out)
        });
        Ok(())
    }

    /// What `SHOW name` answers: the relay's own settings, then the upstream's.
    fn show_value(&self, name: &str) -> Option<String> {
        let major = self.major();
        let cfg = &self.shared.config;
        let lower = name.to_ascii_lowercase();
        let v = match lower.as_str() {
            "wal_segment_size" => self.shared.upstream.segment_size.to_string(),
            "max_wal_senders" => cfg.max_senders.to_string(),
            "max_replication_slots" => cfg.max_slots.to_string(),
            "wal_sender_timeout" => show_duration(cfg.wal_sender_timeout),
            "transaction_read_only" | "default_transaction_read_only" => "off".into(),
            "in_hot_standby" if major >= 14 => "off".into(),
            "integer_datetimes" | "standard_conforming_strings" => "on".into(),
            "server_version" => self.shared.upstream.server_version.clone(),
            "server_encoding" => "SQL_ASCII".into(),
            "client_encoding" => self.startup.client_encoding.clone(),
            "application_name" => self.startup.application_name.clone(),
            "session_authorization" => self.startup.user.clone(),
            "datestyle" => "ISO, MDY".into(),
            "timezone" => "UTC".into(),
            // The relay never invalidates a slot, and keeps all WAL until pruned.
            "max_slot_wal_keep_size" if major >= 13 => "-1".into(),
            "wal_keep_size" if major >= 13 => "0".into(),
            "wal_keep_segments" if major < 13 => "0".into(),
            "idle_replication_slot_timeout" if major >= 18 => "0".into(),
            other => return self.shared.upstream.settings.get(other).cloned(),
        };
        Some(v)
    }

    fn timeline_history(&mut self, timeline: TimelineId) {
        let major = self.major();
        match self.shared.feed.history(timeline) {
            Ok(Some(h)) if timeline != TimelineId::FIRST => {
                let content = h.content.clone();
                self.reply(|out| walsender::timeline_history(major, timeline, &content, out));
            }
            Ok(_) => self.send_error(&error(
                "58P01",
                &format!(
                    "could not open file \"pg_wal/{}\": No such file or directory",
                    timeline.history_file_name()
                ),
            )),
            Err(e) => self.send_error(&error("58030", &e.to_string())),
        }
    }

    fn read_replication_slot(&mut self, slot: &str) {
        let info = self.shared.slots.read(slot).map(|restart| {
            let restart_lsn = restart.map(|(_, l)| l);
            SlotInfo {
                restart_lsn,
                restart_tli: restart_lsn
                    .and_then(|l| self.shared.feed.timeline_of(l).ok())
                    .or(restart.map(|(t, _)| t)),
            }
        });
        self.reply(|out| walsender::read_replication_slot(info, out));
    }

    fn create_replication_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        kind: &SlotKind,
        options: &[GenericOption],
    ) {
        if let SlotKind::Logical { .. } = kind {
            self.send_error(&logical_refused());
            return;
        }
        let mut reserve_wal = None;
        for o in options {
            match o.name.as_str() {
                "reserve_wal" if reserve_wal.is_none() => match o.as_bool() {
                    Some(b) => reserve_wal = Some(b),
                    None => {
                        self.send_error(&error(
                            "22023",
                            &format!("{} requires a Boolean value", o.name),
                        ));
                        return;
                    }
                },
                "reserve_wal" | "snapshot" | "two_phase" | "failover" => {
                    self.send_error(&error("42601", "conflicting or redundant options"));
                    return;
                }
                other => {
                    self.send_error(&error("XX000", &format!("unrecognized option: {other}")));
                    return;
                }
            }
        }
        let reserve = match reserve_wal {
            Some(true) => match self.shared.feed.current() {
                Ok(cur) if cur.lsn.is_valid() => Some((cur.timeline, cur.lsn)),
                Ok(_) => None,
                Err(e) => {
                    self.send_error(&error("58030", &e.to_string()));
                    return;
                }
            },
            _ => None,
        };
        let owner = temporary.then_some(self.pid);
        match self.shared.slots.create(slot, owner, reserve) {
            Ok(()) => {
                info!(slot = %Printable(slot), temporary, "replication slot created");
                let major = self.major();
                self.reply(|out| walsender::create_replication_slot(major, slot, out));
            }
            Err(e) => self.send_error(&e.into()),
        }
    }

    async fn drop_replication_slot(&mut self, slot: &str, wait: bool) {
        // WAIT: until the session using it lets go (bounded, unlike a server's).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while wait
            && self.shared.slots.held_by_another(slot, self.pid)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match self.shared.slots.drop_slot(slot, self.pid) {
            Ok(()) => {
                info!(slot = %Printable(slot), "replication slot dropped");
                let major = self.major();
                self.reply(|out| walsender::drop_replication_slot(major, out));
            }
            Err(e) => self.send_error(&e.into()),
        }
    }
}

fn logical_refused() -> ErrorFields {
    let mut f = error(
        "0A000",
        "walrelay serve relays physical replication only: logical replication is not available",
    );
    f.hint = Some("Create logical slots and subscriptions on the primary.".into());
    f
}

/// A duration as `SHOW` prints one in milliseconds units: `1min`, `30s`, `250ms`, `0`.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Logs a downstream that went away with an error at the right level.
fn log_lost(e: &std::io::Error) {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::UnexpectedEof => debug!(error = %e, "downstream connection lost"),
        _ => warn!(error = %Printable(&e.to_string()), "downstream connection failed"),
    }
}

/// `Lsn` arithmetic shared by the stream: bytes from `a` to `b`.
fn distance(a: Lsn, b: Lsn) -> u64 {
    b.0.saturating_sub(a.0)
}

/// The command's keyword when the upstream's major does not have it: READ_REPLICATION_SLOT came
/// in PostgreSQL 15, ALTER_REPLICATION_SLOT in 17. A client of a newer major than the primary must
/// meet the primary's grammar through the relay too.
fn newer_than(cmd: &ReplicationCommand, major: u32) -> Option<&'static str> {
    match cmd {
        ReplicationCommand::ReadReplicationSlot { .. } if major < 15 => {
            Some("READ_REPLICATION_SLOT")
        }
        ReplicationCommand::AlterReplicationSlot { .. } if major < 17 => {
            Some("ALTER_REPLICATION_SLOT")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_chosen_name_cannot_forge_a_log_line() {
        let forged = "x\n2026-12-05T08:04:00Z ERROR relay stopped\u{1}\u{7f}";
        let shown = Printable(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.chars().any(char::is_control),
            "{shown}"
        );
        assert_eq!(
            shown,
            "x\\n2026-12-05T08:04:00Z ERROR relay stopped\\u{1}\\u{7f}"
        );
        assert_eq!(Printable("app é").to_string(), "app é");
    }

    #[test]
    fn durations_as_show_prints_them() {
        assert_eq!(show_duration(Duration::from_secs(60)), "1min");
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::ZERO), "0");
    }
}
