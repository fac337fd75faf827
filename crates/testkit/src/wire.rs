//! Backend messages as bytes, for scripted servers and byte fixtures.
//!
//! Thin wrappers over the protocol crate's encoders ([`walrelay_protocol::server`], and the
//! `encode` methods of the replication sub-messages) that return a `Vec<u8>` to send or splice,
//! and panic on input the protocol cannot carry (a NUL inside a string): test data is written by
//! the test, so that is a bug in the test. Nothing here writes bytes by hand.
//!
//! ```
//! use walrelay_testkit::wire;
//!
//! let mut reply = wire::row_description(&["wal_segment_size"]);
//! reply.extend(wire::data_row(&[Some("16MB")]));
//! reply.extend(wire::command_complete("SHOW"));
//! reply.extend(wire::ready_for_query());
//! ```

use bytes::{Bytes, BytesMut};
use walrelay_protocol::message::{CopyResponse, FieldDescription};
use walrelay_protocol::server::{self, EncodeError, TRANSACTION_IDLE};
use walrelay_protocol::{BaseBackupMessage, ErrorFields, Lsn, PrimaryKeepalive, XLogData};

fn encoded(f: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Err(e) = f(&mut out) {
        panic!("test data the protocol cannot carry: {e}");
    }
    out.to_vec()
}

/// `AuthenticationOk`.
pub fn authentication_ok() -> Vec<u8> {
    encoded(|o| {
        server::encode_authentication_ok(o);
        Ok(())
    })
}

/// `ParameterStatus`.
pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    encoded(|o| server::encode_parameter_status(name, value, o))
}

/// `BackendKeyData` with a 4-byte secret key.
pub fn backend_key_data(process_id: i32, secret_key: i32) -> Vec<u8> {
    encoded(|o| server::encode_backend_key_data(process_id, &secret_key.to_be_bytes(), o))
}

/// `ReadyForQuery`, idle.
pub fn ready_for_query() -> Vec<u8> {
    encoded(|o| {
        server::encode_ready_for_query(TRANSACTION_IDLE, o);
        Ok(())
    })
}

/// `RowDescription` of text columns, as the replication commands describe their results.
pub fn row_description(columns: &[&str]) -> Vec<u8> {
    let fields: Vec<FieldDescription> = columns.iter().map(|c| FieldDescription::text(c)).collect();
    encoded(|o| server::encode_row_description(&fields, o))
}

/// `DataRow` of text values, `None` for NULL.
pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
    encoded(|o| server::encode_data_row(&values, o))
}

/// `CommandComplete`.
pub fn command_complete(tag: &str) -> Vec<u8> {
    encoded(|o| server::encode_command_complete(tag, o))
}

fn fields(severity: &str, code: &str, message: &str) -> ErrorFields {
    ErrorFields {
        severity: severity.into(),
        code: code.into(),
        message: message.into(),
        detail: None,
        hint: None,
    }
}

/// `ErrorResponse` with severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    encoded(|o| server::encode_error_response(&fields(severity, code, message), o))
}

/// `ErrorResponse` with severity, SQLSTATE, message and detail.
pub fn error_response_detail(severity: &str, code: &str, message: &str, detail: &str) -> Vec<u8> {
    let mut f = fields(severity, code, message);
    f.detail = Some(detail.to_string());
    encoded(|o| server::encode_error_response(&f, o))
}

/// `NoticeResponse` with severity, SQLSTATE and message.
pub fn notice(severity: &str, code: &str, message: &str) -> Vec<u8> {
    encoded(|o| server::encode_notice_response(&fields(severity, code, message), o))
}

const TEXT_COPY: CopyResponse = CopyResponse {
    binary: false,
    column_formats: Vec::new(),
};

/// `CopyOutResponse` as `BASE_BACKUP` sends it (text, no columns).
pub fn copy_out_response() -> Vec<u8> {
    encoded(|o| server::encode_copy_out_response(&TEXT_COPY, o))
}

/// `CopyBothResponse` as `START_REPLICATION` sends it (text, no columns).
pub fn copy_both_response() -> Vec<u8> {
    encoded(|o| server::encode_copy_both_response(&TEXT_COPY, o))
}

/// `CopyData` carrying `payload`.
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    encoded(|o| server::encode_copy_data(payload, o))
}

/// `CopyDone`.
pub fn copy_done() -> Vec<u8> {
    encoded(|o| {
        server::encode_copy_done(o);
        Ok(())
    })
}

/// A one-row result set of (`recptr`, `tli`): `BASE_BACKUP`'s start or end position.
pub fn position(lsn: &str, tli: u32) -> Vec<u8> {
    let mut out = row_description(&["recptr", "tli"]);
    out.extend(data_row(&[Some(lsn), Some(&tli.to_string())]));
    out.extend(command_complete("SELECT"));
    out
}

/// The payload of a PostgreSQL 15+ `BASE_BACKUP` CopyData message (wrap it with [`copy_data`]).
pub fn base_backup_message(m: &BaseBackupMessage) -> Vec<u8> {
    encoded(|o| m.encode(o))
}

/// The `'n'` payload: a new archive begins (`location` empty for `base.tar`).
pub fn new_archive(name: &str, location: &str) -> Vec<u8> {
    base_backup_message(&BaseBackupMessage::NewArchive {
        archive_name: name.into(),
        tablespace_location: location.into(),
    })
}

/// The `'d'` payload: bytes of the current archive or of the manifest.
pub fn archive_data(bytes: &[u8]) -> Vec<u8> {
    base_backup_message(&BaseBackupMessage::Data(Bytes::copy_from_slice(bytes)))
}

/// A CopyData message carrying an XLogData (`'w'`) payload, sent at time 0.
pub fn xlog_data(data_start: Lsn, wal_end: Lsn, wal: &[u8]) -> Vec<u8> {
    let mut payload = BytesMut::new();
    XLogData {
        data_start,
        wal_end,
        send_time: 0,
        data: Bytes::copy_from_slice(wal),
    }
    .encode(&mut payload);
    copy_data(&payload)
}

/// A CopyData message carrying a PrimaryKeepalive (`'k'`) payload, sent at time 0.
pub fn keepalive(wal_end: Lsn, reply_requested: bool) -> Vec<u8> {
    let mut payload = BytesMut::new();
    PrimaryKeepalive {
        wal_end,
        send_time: 0,
        reply_requested,
    }
    .encode(&mut payload);
    copy_data(&payload)
}
