//! What a server writes: encoders for the backend messages of a replication connection.
//!
//! The inverse of [`crate::message`]: every function here appends one complete message (type
//! byte, length, body) to `out`, and [`BackendMessage::parse`](crate::BackendMessage::parse)
//! decodes it back to the same value. A walrelay relay speaking the server side of the
//! replication protocol sends these, and so do the scripted fake servers of the tests.
//!
//! Encoders whose body has a variable size return [`EncodeError`] instead of writing a message
//! the protocol cannot carry (a string with a NUL byte, more than 32767 columns, a body beyond
//! `i32::MAX` bytes); on error `out` is left as it was. Fixed-size messages cannot fail.
//!
//! The CopyData payloads of physical replication are encoded by their types:
//! [`XLogData::encode`](crate::XLogData::encode),
//! [`PrimaryKeepalive::encode`](crate::PrimaryKeepalive::encode) and
//! [`BaseBackupMessage::encode`](crate::BaseBackupMessage::encode); wrap them with
//! [`encode_copy_data`].
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

use crate::message::{CopyResponse, ErrorFields, FieldDescription};

/// Why a message could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("a {kind:?} message of {len} bytes does not fit the protocol's 32-bit length")]
    MessageTooLong { kind: char, len: usize },
    #[error("a string in a {kind:?} message contains a NUL byte, which would end it early")]
    NulInString { kind: char },
    #[error("a {kind:?} message with {count} entries: the protocol allows at most 32767")]
    TooManyEntries { kind: char, count: usize },
    #[error("a {kind:?} message with an invalid value: {reason}")]
    InvalidValue { kind: char, reason: &'static str },
}

/// `ReadyForQuery` status: not in a transaction block.
pub const TRANSACTION_IDLE: u8 = b'I';

/// Writes one message of type `kind` whose body `body` appends; the length is filled in after.
/// On error nothing is left in `out`.
pub(crate) fn frame(
    kind: u8,
    out: &mut BytesMut,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u8(kind);
    out.put_i32(0);
    let result = body(out).and_then(|()| {
        let len = out.len() - start - 1;
        i32::try_from(len).map_err(|_| EncodeError::MessageTooLong {
            kind: char::from(kind),
            len,
        })
    });
    match result {
        Ok(len) => {
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// A NUL-terminated string; refuses one with a NUL inside.
pub(crate) fn put_cstr(out: &mut BytesMut, s: &str, kind: u8) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString {
            kind: char::from(kind),
        });
    }
    out.put_slice(s.as_bytes());
    out.put_u8(0);
    Ok(())
}

/// An Int16 entry count.
fn put_count(out: &mut BytesMut, count: usize, kind: u8) -> Result<(), EncodeError> {
    let n = i16::try_from(count).map_err(|_| EncodeError::TooManyEntries {
        kind: char::from(kind),
        count,
    })?;
    out.put_i16(n);
    Ok(())
}

/// `AuthenticationOk` ('R', code 0).
pub fn encode_authentication_ok(out: &mut BytesMut) {
    out.put_u8(b'R');
    out.put_i32(8);
    out.put_i32(0);
}

/// `AuthenticationSASL` ('R', code 10): the SASL mechanisms the server offers, best first.
pub fn encode_authentication_sasl(
    mechanisms: &[&str],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'R', out, |out| {
        out.put_i32(10);
        for m in mechanisms {
            put_cstr(out, m, b'R')?;
        }
        out.put_u8(0);
        Ok(())
    })
}

/// An authentication request carrying a SASL mechanism's data.
fn encode_sasl_data(code: i32, data: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'R', out, |out| {
        out.put_i32(code);
        out.put_slice(data);
        Ok(())
    })
}

/// `AuthenticationSASLContinue` ('R', code 11) with the mechanism's data (SCRAM's server-first
/// message).
pub fn encode_authentication_sasl_continue(
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_sasl_data(11, data, out)
}

/// `AuthenticationSASLFinal` ('R', code 12) with the outcome's data (SCRAM's server-final
/// message); AuthenticationOk follows.
pub fn encode_authentication_sasl_final(
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_sasl_data(12, data, out)
}

/// `NegotiateProtocolVersion` ('v'): the newest minor version of protocol 3 the server speaks,
/// and the protocol options (`_pq_.*`) of the startup packet it does not know.
pub fn encode_negotiate_protocol_version(
    newest_minor: i32,
    unrecognized_options: &[&str],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'v', out, |out| {
        out.put_i32((3 << 16) | newest_minor);
        let n =
            i32::try_from(unrecognized_options.len()).map_err(|_| EncodeError::TooManyEntries {
                kind: 'v',
                count: unrecognized_options.len(),
            })?;
        out.put_i32(n);
        for o in unrecognized_options {
            put_cstr(out, o, b'v')?;
        }
        Ok(())
    })
}

/// `ParameterStatus` ('S'): a run-time parameter the client should know (`server_version`, …).
pub fn encode_parameter_status(
    name: &str,
    value: &str,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'S', out, |out| {
        put_cstr(out, name, b'S')?;
        put_cstr(out, value, b'S')
    })
}

/// `BackendKeyData` ('K'): the process id and the cancel key (4 bytes in protocol 3.0, up to 256
/// in 3.2).
pub fn encode_backend_key_data(
    process_id: i32,
    secret_key: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !(4..=256).contains(&secret_key.len()) {
        return Err(EncodeError::InvalidValue {
            kind: 'K',
            reason: "the secret key must be 4 to 256 bytes",
        });
    }
    frame(b'K', out, |out| {
        out.put_i32(process_id);
        out.put_slice(secret_key);
        Ok(())
    })
}

/// `ReadyForQuery` ('Z') with the transaction status ([`TRANSACTION_IDLE`], `b'T'`, `b'E'`).
pub fn encode_ready_for_query(status: u8, out: &mut BytesMut) {
    out.put_u8(b'Z');
    out.put_i32(5);
    out.put_u8(status);
}

/// `RowDescription` ('T').
pub fn encode_row_description(
    fields: &[FieldDescription],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'T', out, |out| {
        put_count(out, fields.len(), b'T')?;
        for f in fields {
            put_cstr(out, &f.name, b'T')?;
            out.put_u32(f.table_oid);
            out.put_i16(f.column_id);
            out.put_u32(f.type_oid);
            out.put_i16(f.type_size);
            out.put_i32(f.type_modifier);
            out.put_i16(f.format);
        }
        Ok(())
    })
}

/// `DataRow` ('D'): column values, `None` for NULL.
pub fn encode_data_row(values: &[Option<&[u8]>], out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'D', out, |out| {
        put_count(out, values.len(), b'D')?;
        for v in values {
            match v {
                None => out.put_i32(-1),
                Some(bytes) => {
                    let len =
                        i32::try_from(bytes.len()).map_err(|_| EncodeError::MessageTooLong {
                            kind: 'D',
                            len: bytes.len(),
                        })?;
                    out.put_i32(len);
                    out.put_slice(bytes);
                }
            }
        }
        Ok(())
    })
}

/// `CommandComplete` ('C') with its tag (`SELECT`, `IDENTIFY_SYSTEM`, `BASE_BACKUP`, …).
pub fn encode_command_complete(tag: &str, out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'C', out, |out| put_cstr(out, tag, b'C'))
}

/// The field list of an ErrorResponse or NoticeResponse: severity both localized (`S`) and not
/// (`V`), SQLSTATE, message, then detail and hint when present.
fn put_fields(out: &mut BytesMut, f: &ErrorFields, kind: u8) -> Result<(), EncodeError> {
    let required = [
        (b'S', f.severity.as_str()),
        (b'V', f.severity.as_str()),
        (b'C', f.code.as_str()),
        (b'M', f.message.as_str()),
    ];
    let optional = [(b'D', f.detail.as_deref()), (b'H', f.hint.as_deref())];
    let present = optional.iter().filter_map(|&(t, v)| v.map(|v| (t, v)));
    for (t, v) in required.into_iter().chain(present) {
        out.put_u8(t);
        put_cstr(out, v, kind)?;
    }
    out.put_u8(0);
    Ok(())
}

/// `ErrorResponse` ('E').
pub fn encode_error_response(fields: &ErrorFields, out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'E', out, |out| put_fields(out, fields, b'E'))
}

/// `NoticeResponse` ('N'): a WARNING, NOTICE, … that does not end the command.
pub fn encode_notice_response(fields: &ErrorFields, out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'N', out, |out| put_fields(out, fields, b'N'))
}

fn put_copy_response(out: &mut BytesMut, r: &CopyResponse, kind: u8) -> Result<(), EncodeError> {
    out.put_u8(u8::from(r.binary));
    put_count(out, r.column_formats.len(), kind)?;
    for &f in &r.column_formats {
        out.put_i16(f);
    }
    Ok(())
}

/// `CopyOutResponse` ('H'): `BASE_BACKUP` sends its archives in one (PostgreSQL 15+) or one per
/// tablespace.
pub fn encode_copy_out_response(
    response: &CopyResponse,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'H', out, |out| put_copy_response(out, response, b'H'))
}

/// `CopyInResponse` ('G'): `UPLOAD_MANIFEST` asks the client for the manifest with one.
pub fn encode_copy_in_response(
    response: &CopyResponse,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'G', out, |out| put_copy_response(out, response, b'G'))
}

/// `CopyBothResponse` ('W'): `START_REPLICATION` switches to it.
pub fn encode_copy_both_response(
    response: &CopyResponse,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    frame(b'W', out, |out| put_copy_response(out, response, b'W'))
}

/// `CopyData` ('d') carrying `payload` as it is.
pub fn encode_copy_data(payload: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    frame(b'd', out, |out| {
        out.put_slice(payload);
        Ok(())
    })
}

/// `CopyDone` ('c').
pub fn encode_copy_done(out: &mut BytesMut) {
    out.put_u8(b'c');
    out.put_i32(4);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::message::{Authentication, MAX_MESSAGE_LEN};
    use crate::BackendMessage;

    /// Decodes exactly one message from `out` and checks nothing is left.
    fn decode_one(mut out: BytesMut) -> BackendMessage {
        let msg = BackendMessage::parse(&mut out, MAX_MESSAGE_LEN)
            .expect("decodes")
            .expect("a whole message");
        assert!(out.is_empty(), "trailing bytes: {out:?}");
        msg
    }

    fn encoded(f: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> BytesMut {
        let mut out = BytesMut::new();
        f(&mut out).expect("encodes");
        out
    }

    fn fields(detail: Option<&str>, hint: Option<&str>) -> ErrorFields {
        ErrorFields {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "requested WAL segment 000000010000000000000003 has already been removed"
                .into(),
            detail: detail.map(str::to_string),
            hint: hint.map(str::to_string),
        }
    }

    #[test]
    fn startup_messages_round_trip() {
        let mut out = BytesMut::new();
        encode_authentication_ok(&mut out);
        assert_eq!(
            decode_one(out),
            BackendMessage::Authentication(Authentication::Ok)
        );
        let out = encoded(|o| encode_parameter_status("server_version", "15.4", o));
        assert_eq!(
            decode_one(out),
            BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "15.4".into()
            }
        );
        let out = encoded(|o| encode_backend_key_data(4242, &[0, 0, 0, 7], o));
        assert_eq!(
            decode_one(out),
            BackendMessage::BackendKeyData {
                process_id: 4242,
                secret_key: Bytes::from_static(&[0, 0, 0, 7])
            }
        );
        let mut out = BytesMut::new();
        encode_ready_for_query(TRANSACTION_IDLE, &mut out);
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        assert_eq!(
            decode_one(out),
            BackendMessage::ReadyForQuery { status: b'I' }
        );
    }

    #[test]
    fn result_set_round_trips() {
        let columns = [
            FieldDescription::text("systemid"),
            FieldDescription {
                type_oid: 23,
                type_size: 4,
                ..FieldDescription::text("timeline")
            },
        ];
        let out = encoded(|o| encode_row_description(&columns, o));
        assert_eq!(
            decode_one(out),
            BackendMessage::RowDescription(columns.to_vec())
        );
        let out = encoded(|o| encode_data_row(&[Some(b"7000"), None, Some(b"")], o));
        assert_eq!(
            decode_one(out),
            BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"7000")),
                None,
                Some(Bytes::new())
            ])
        );
        let out = encoded(|o| encode_data_row(&[], o));
        assert_eq!(decode_one(out), BackendMessage::DataRow(vec![]));
        let out = encoded(|o| encode_command_complete("IDENTIFY_SYSTEM", o));
        assert_eq!(
            decode_one(out),
            BackendMessage::CommandComplete {
                tag: "IDENTIFY_SYSTEM".into()
            }
        );
    }

    #[test]
    fn row_description_layout_is_postgresql_s() {
        // name, table oid, column number, type oid, type size, type modifier, format
        let out = encoded(|o| encode_row_description(&[FieldDescription::text("a")], o));
        let mut expected = vec![b'T', 0, 0, 0, 26, 0, 1, b'a', 0];
        expected.extend(0u32.to_be_bytes());
        expected.extend(0i16.to_be_bytes());
        expected.extend(25u32.to_be_bytes());
        expected.extend((-1i16).to_be_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend(0i16.to_be_bytes());
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn error_and_notice_round_trip() {
        for f in [
            fields(None, None),
            fields(Some("the detail"), None),
            fields(None, Some("the hint")),
            fields(Some("d"), Some("h")),
        ] {
            let out = encoded(|o| encode_error_response(&f, o));
            assert_eq!(decode_one(out), BackendMessage::ErrorResponse(f.clone()));
            let out = encoded(|o| encode_notice_response(&f, o));
            assert_eq!(decode_one(out), BackendMessage::NoticeResponse(f));
        }
    }

    #[test]
    fn copy_messages_round_trip() {
        let text = CopyResponse {
            binary: false,
            column_formats: vec![],
        };
        let out = encoded(|o| encode_copy_out_response(&text, o));
        assert_eq!(&out[..], b"H\0\0\0\x07\0\0\0");
        assert_eq!(
            decode_one(out),
            BackendMessage::CopyOutResponse(text.clone())
        );
        let binary = CopyResponse {
            binary: true,
            column_formats: vec![1, 1],
        };
        let out = encoded(|o| encode_copy_both_response(&binary, o));
        assert_eq!(decode_one(out), BackendMessage::CopyBothResponse(binary));
        let out = encoded(|o| encode_copy_data(b"payload", o));
        assert_eq!(
            decode_one(out),
            BackendMessage::CopyData(Bytes::from_static(b"payload"))
        );
        let out = encoded(|o| encode_copy_data(b"", o));
        assert_eq!(decode_one(out), BackendMessage::CopyData(Bytes::new()));
        let mut out = BytesMut::new();
        encode_copy_done(&mut out);
        assert_eq!(decode_one(out), BackendMessage::CopyDone);
    }

    #[test]
    fn authentication_and_negotiation_round_trip() {
        let out =
            encoded(|o| encode_authentication_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], o));
        assert_eq!(
            decode_one(out),
            BackendMessage::Authentication(Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })
        );
        let out = encoded(|o| encode_authentication_sasl_continue(b"r=abc,s=c2FsdA==,i=4096", o));
        assert_eq!(
            decode_one(out),
            BackendMessage::Authentication(Authentication::SaslContinue {
                data: Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096")
            })
        );
        let out = encoded(|o| encode_authentication_sasl_final(b"v=xyz", o));
        assert_eq!(
            decode_one(out),
            BackendMessage::Authentication(Authentication::SaslFinal {
                data: Bytes::from_static(b"v=xyz")
            })
        );
        let out = encoded(|o| encode_negotiate_protocol_version(0, &["_pq_.test"], o));
        assert_eq!(
            decode_one(out),
            BackendMessage::NegotiateProtocolVersion {
                newest_minor: 196608,
                unrecognized_options: vec!["_pq_.test".into()]
            }
        );
        let text = CopyResponse {
            binary: false,
            column_formats: vec![],
        };
        let out = encoded(|o| encode_copy_in_response(&text, o));
        assert_eq!(decode_one(out), BackendMessage::CopyInResponse(text));
    }

    #[test]
    fn messages_append_to_what_is_there() {
        let mut out = BytesMut::new();
        encode_command_complete("SELECT", &mut out).unwrap();
        encode_ready_for_query(TRANSACTION_IDLE, &mut out);
        let first = BackendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap();
        let second = BackendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(
            first,
            Some(BackendMessage::CommandComplete {
                tag: "SELECT".into()
            })
        );
        assert_eq!(second, Some(BackendMessage::ReadyForQuery { status: b'I' }));
        assert!(out.is_empty());
    }

    #[test]
    fn unencodable_input_is_refused_and_leaves_out_unchanged() {
        let mut out = BytesMut::from(&b"before"[..]);
        assert_eq!(
            encode_command_complete("SEL\0ECT", &mut out),
            Err(EncodeError::NulInString { kind: 'C' })
        );
        assert_eq!(
            encode_parameter_status("a", "b\0", &mut out),
            Err(EncodeError::NulInString { kind: 'S' })
        );
        assert_eq!(
            encode_row_description(&[FieldDescription::text("x\0")], &mut out),
            Err(EncodeError::NulInString { kind: 'T' })
        );
        let mut f = fields(None, Some("h\0int"));
        assert!(encode_error_response(&f, &mut out).is_err());
        f.hint = None;
        f.message.push('\0');
        assert!(encode_notice_response(&f, &mut out).is_err());
        let many = vec![None; 40_000];
        assert_eq!(
            encode_data_row(&many, &mut out),
            Err(EncodeError::TooManyEntries {
                kind: 'D',
                count: 40_000
            })
        );
        for key in [&[1u8, 2, 3][..], &[0u8; 257][..]] {
            assert!(matches!(
                encode_backend_key_data(1, key, &mut out),
                Err(EncodeError::InvalidValue { kind: 'K', .. })
            ));
        }
        assert_eq!(&out[..], b"before");
    }

    proptest! {
        #[test]
        fn data_rows_round_trip(values in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..12)
        ) {
            let borrowed: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            let mut out = BytesMut::new();
            encode_data_row(&borrowed, &mut out).unwrap();
            let expected: Vec<Option<Bytes>> =
                values.iter().map(|v| v.clone().map(Bytes::from)).collect();
            prop_assert_eq!(decode_one(out), BackendMessage::DataRow(expected));
        }

        #[test]
        fn error_fields_round_trip(
            severity in "[A-Z]{0,8}",
            code in "[0-9A-Z]{0,5}",
            message in "[^\u{0}]{0,60}",
            detail in proptest::option::of("[^\u{0}]{0,30}"),
            hint in proptest::option::of("[^\u{0}]{0,30}"),
        ) {
            let f = ErrorFields { severity, code, message, detail, hint };
            let mut out = BytesMut::new();
            encode_error_response(&f, &mut out).unwrap();
            prop_assert_eq!(decode_one(out), BackendMessage::ErrorResponse(f));
        }
    }
}
