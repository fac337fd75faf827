//! `BASE_BACKUP` and `UPLOAD_MANIFEST`, proxied to the upstream.
//!
//! A base backup is the primary's to take: the relay opens a replication connection of its own
//! to the upstream (with its own credentials), sends the command text exactly as the client wrote
//! it — the client chose the syntax from the version the relay reports, which is the upstream's —
//! and forwards every message of the reply until the upstream is ready again: the result sets,
//! the CopyOut stream of archives and manifest (one per tablespace before 15, one with `n`/`d`/
//! `p`/`m` messages from 15), errors. `UPLOAD_MANIFEST` (17+, incremental backups) is a CopyIn the
//! other way; its upstream connection is kept for the `BASE_BACKUP` that follows, because the
//! manifest is state of that walsender session. The WAL a backup needs comes from the relay
//! itself (`pg_basebackup -X stream` opens a second connection to it and streams from a temporary
//! slot).
//!
//! Flow control: the upstream is read only while less than [`PROXY_OUT_LIMIT`] bytes wait for
//! the client, so a slow client slows its own backup (and the upstream's walsender), nothing else.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use walrelay_client::Connection;
use walrelay_protocol::frontend::FrontendMessage;
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::server::{
    encode_command_complete, encode_copy_data, encode_copy_done, encode_copy_in_response,
    encode_copy_out_response, encode_data_row, encode_error_response, encode_row_description,
    EncodeError,
};

use super::io::ReadError;
use super::{error, log_lost, End, Session};
use crate::downstreams::DownstreamState;

/// Bytes of the upstream's reply queued for the client before the upstream is read again.
const PROXY_OUT_LIMIT: usize = 1024 * 1024;

/// Forwards `text` to the upstream and its reply to the client, up to (not including) the
/// upstream's ReadyForQuery. `is_backup`: the command is BASE_BACKUP (the upstream connection is
/// closed after it); otherwise UPLOAD_MANIFEST (kept for the backup).
pub(super) async fn proxy(s: &mut Session, text: &str, is_backup: bool) -> Result<(), End> {
    let what = if is_backup {
        "BASE_BACKUP"
    } else {
        "UPLOAD_MANIFEST"
    };
    let mut conn = match s.upstream.take() {
        Some(c) => c,
        None => match Connection::connect(&s.shared.upstream_params).await {
            Ok(c) => c,
            Err(e) => return upstream_failed(s, &format!("connecting for {what}"), e),
        },
    };
    if conn.server_version().major() != s.major() {
        s.send_error(&error(
            "55000",
            &format!(
                "the upstream is PostgreSQL {} now, not {} as when walrelay serve started: restart walrelay serve",
                conn.server_version().major(),
                s.major()
            ),
        ));
        conn.close().await;
        return Ok(());
    }
    if is_backup {
        info!("base backup proxied to the upstream");
        s.shared.stats.set_state(s.pid, DownstreamState::Backup);
    }
    let result = forward(s, &mut conn, text, what).await;
    s.shared.stats.set_state(s.pid, DownstreamState::Startup);
    match result {
        Ok(()) if !is_backup => s.upstream = Some(conn),
        Ok(()) => conn.close().await,
        Err(e) => {
            conn.close().await;
            return Err(e);
        }
    }
    Ok(())
}

/// `Ok` when the upstream is ready again (the client got the whole reply, errors included);
/// `Err` when the client left or the upstream connection broke (an error was queued).
async fn forward(
    s: &mut Session,
    conn: &mut Connection,
    text: &str,
    what: &str,
) -> Result<(), End> {
    let sent = match conn.queue_query(text) {
        Ok(()) => conn.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        return upstream_failed(s, what, e);
    }
    let stall = s.write_limit();
    let mut copy_in = false;
    let mut last_progress = Instant::now();
    loop {
        let room = s.io.tx.out.len() < PROXY_OUT_LIMIT;
        tokio::select! {
            biased;
            written = s.io.tx.write_some(), if !s.io.tx.out.is_empty() => {
                if let Err(e) = written {
                    log_lost(&e);
                    return Err(End);
                }
                last_progress = Instant::now();
            }
            msg = conn.read_message(), if room => {
                match msg {
                    Ok(BackendMessage::ReadyForQuery { .. }) => return Ok(()),
                    Ok(m) => {
                        if matches!(m, BackendMessage::CopyInResponse(_)) {
                            copy_in = true;
                        }
                        if let Err(e) = relay_message(&m, &mut s.io.tx.out) {
                            s.send_error(&error("XX000", &e.to_string()));
                        }
                    }
                    Err(e) => return upstream_failed(s, what, e),
                }
            }
            msg = s.io.rx.read_message() => match msg {
                Ok(FrontendMessage::CopyData(d)) if copy_in => {
                    conn.queue_copy_data(&d);
                    if let Err(e) = conn.flush().await {
                        return upstream_failed(s, what, e);
                    }
                }
                Ok(FrontendMessage::CopyDone) if copy_in => {
                    copy_in = false;
                    conn.queue_copy_done();
                    if let Err(e) = conn.flush().await {
                        return upstream_failed(s, what, e);
                    }
                }
                Ok(FrontendMessage::CopyFail(reason)) if copy_in => {
                    debug!(%reason, "the client gave up the COPY");
                    s.send_error(&error("57014", &format!("COPY from stdin failed: {reason}")));
                    return Err(End);
                }
                // Nothing else belongs here; a client that leaves ends the upstream's work too.
                Ok(FrontendMessage::Terminate) | Err(ReadError::Closed) => return Err(End),
                Err(ReadError::Io(e)) => {
                    log_lost(&e);
                    return Err(End);
                }
                Err(ReadError::Protocol(e)) => return Err(s.send_fatal("08P01", &e.to_string())),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_secs(1)), if !s.io.tx.out.is_empty() => {
                if last_progress.elapsed() > stall {
                    info!("the client stopped reading its base backup; giving up");
                    return Err(End);
                }
            }
        }
    }
}

/// The upstream connection failed (`during` says in what): logged, the client is told, the
/// command is over.
fn upstream_failed(
    s: &mut Session,
    during: &str,
    e: walrelay_client::ClientError,
) -> Result<(), End> {
    warn!(error = %e, "the upstream connection failed ({during})");
    s.send_error(&error(
        "08006",
        &format!("walrelay serve's connection to its upstream failed ({during}): {e}"),
    ));
    Ok(())
}

/// Re-encodes one upstream message for the client. An upstream FATAL becomes an ERROR: the
/// upstream connection ends, the client's connection to the relay does not.
fn relay_message(m: &BackendMessage, out: &mut bytes::BytesMut) -> Result<(), EncodeError> {
    match m {
        BackendMessage::RowDescription(fields) => encode_row_description(fields, out),
        BackendMessage::DataRow(cols) => {
            let values: Vec<Option<&[u8]>> = cols.iter().map(|c| c.as_deref()).collect();
            encode_data_row(&values, out)
        }
        BackendMessage::CommandComplete { tag } => encode_command_complete(tag, out),
        BackendMessage::CopyOutResponse(r) => encode_copy_out_response(r, out),
        BackendMessage::CopyInResponse(r) => encode_copy_in_response(r, out),
        BackendMessage::CopyData(d) => encode_copy_data(d, out),
        BackendMessage::CopyDone => {
            encode_copy_done(out);
            Ok(())
        }
        BackendMessage::ErrorResponse(f) => {
            let mut f = f.clone();
            if f.severity != "ERROR" {
                f.severity = "ERROR".into();
            }
            encode_error_response(&f, out)
        }
        other => {
            debug!(
                message = walrelay_client::message_name(other),
                "not forwarded"
            );
            Ok(())
        }
    }
}
