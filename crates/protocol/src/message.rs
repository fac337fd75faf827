//! Backend message framing and decoding for a replication client.
//!
//! `postgres-protocol` decodes most backend messages but not CopyBothResponse ('W') or
//! NegotiateProtocolVersion ('v'), and it has no length cap. A replication client meets only a handful of
//! message types, so this module decodes exactly those, from a buffer, with one parse shape:
//! [`BackendMessage::parse`] returns `Ok(None)` until a whole message is buffered.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Messages larger than this are refused. CopyData carrying WAL is at most a few hundred kB
/// (`MAX_SEND_SIZE` is 16 pages) and a BASE_BACKUP CopyData is at most a few MB; error and notice texts are small.
/// 64 MiB leaves room for big result rows (e.g. a TIMELINE_HISTORY file) while stopping a hostile server from
/// making us allocate gigabytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("server sent a {kind:?} message of {len} bytes, more than the {max}-byte limit")]
    MessageTooLong { kind: char, len: usize, max: usize },
    #[error("server sent a message with invalid length {len}")]
    InvalidLength { len: i32 },
    #[error("server sent a malformed {what} message: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    #[error("server sent an unexpected message type {0:?}")]
    UnexpectedType(char),
}

pub(crate) fn malformed(what: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what, reason }
}

/// A cursor over a message body that refuses to read past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| malformed(self.what, "truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A NUL-terminated string (lossy UTF-8: server messages may be in another encoding).
    pub(crate) fn cstr(&mut self) -> Result<String, ProtocolError> {
        let pos = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(self.what, "missing string terminator"))?;
        let s = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, "trailing bytes"))
        }
    }
}

/// An authentication request ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue {
        data: Bytes,
    },
    SaslFinal {
        data: Bytes,
    },
    /// Kerberos, SCM, GSS, SSPI: methods walrelay does not implement.
    Unsupported {
        code: i32,
    },
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S`/`V`: ERROR, FATAL, PANIC, WARNING, NOTICE, …
    pub severity: String,
    /// `C`: the SQLSTATE code.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `D`
    pub detail: Option<String>,
    /// `H`
    pub hint: Option<String>,
}

impl ErrorFields {
    fn parse(body: &[u8], what: &'static str) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, what);
        let mut f = ErrorFields::default();
        let mut localized_severity = None;
        loop {
            let t = r.u8()?;
            if t == 0 {
                break;
            }
            let v = r.cstr()?;
            match t {
                b'S' => localized_severity = Some(v),
                b'V' => f.severity = v,
                b'C' => f.code = v,
                b'M' => f.message = v,
                b'D' => f.detail = Some(v),
                b'H' => f.hint = Some(v),
                _ => {}
            }
        }
        if f.severity.is_empty() {
            f.severity = localized_severity.unwrap_or_default();
        }
        Ok(f)
    }
}

/// Column formats of a CopyOutResponse / CopyBothResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    pub binary: bool,
    pub column_formats: Vec<i16>,
}

impl CopyResponse {
    fn parse(body: &[u8], what: &'static str) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, what);
        let binary = r.u8()? != 0;
        let n = r.i16()?;
        if n < 0 {
            return Err(malformed(what, "negative column count"));
        }
        let mut column_formats = Vec::with_capacity(n as usize);
        for _ in 0..n {
            column_formats.push(r.i16()?);
        }
        r.finish()?;
        Ok(CopyResponse {
            binary,
            column_formats,
        })
    }
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// The table's OID if the column is a table column, else 0.
    pub table_oid: u32,
    /// The column's attribute number if it is a table column, else 0.
    pub column_id: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_size: i16,
    /// `pg_attribute.atttypmod`: -1 when the type has none.
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

impl FieldDescription {
    /// OID of the `text` type.
    pub const TEXT_OID: u32 = 25;

    /// A text column that is no table's: what the replication commands' results use.
    pub fn text(name: &str) -> FieldDescription {
        FieldDescription {
            name: name.to_string(),
            table_oid: 0,
            column_id: 0,
            type_oid: Self::TEXT_OID,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }
}

/// Cuts one typed message (`byte type, int32 length, body`) off the front of `buf` — how messages
/// are framed in both directions. `Ok(None)` until the whole message is buffered (nothing is
/// consumed); a length below 4 or above `max_len` is refused before anything is buffered.
pub(crate) fn split_message(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<(u8, Bytes)>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let kind = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::InvalidLength { len });
    }
    let len = len as usize;
    if len > max_len {
        return Err(ProtocolError::MessageTooLong {
            kind: kind as char,
            len,
            max: max_len,
        });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some((kind, buf.split_to(len - 4).freeze())))
}

/// A backend message a replication client can meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: Bytes,
    },
    ReadyForQuery {
        status: u8,
    },
    RowDescription(Vec<FieldDescription>),
    /// Column values; `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    CommandComplete {
        tag: String,
    },
    EmptyQueryResponse,
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    CopyOutResponse(CopyResponse),
    CopyInResponse(CopyResponse),
    CopyBothResponse(CopyResponse),
    CopyData(Bytes),
    CopyDone,
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized_options: Vec<String>,
    },
    NotificationResponse,
    ParseComplete,
    BindComplete,
    NoData,
}

impl BackendMessage {
    /// Decodes one message from the front of `buf`, consuming it. `Ok(None)` means more bytes are needed
    /// (nothing is consumed). Messages longer than `max_len` are refused before they are buffered.
    pub fn parse(
        buf: &mut BytesMut,
        max_len: usize,
    ) -> Result<Option<BackendMessage>, ProtocolError> {
        match split_message(buf, max_len)? {
            Some((kind, body)) => Self::decode(kind, body).map(Some),
            None => Ok(None),
        }
    }

    fn decode(kind: u8, body: Bytes) -> Result<BackendMessage, ProtocolError> {
        Ok(match kind {
            b'd' => BackendMessage::CopyData(body),
            b'R' => {
                let mut r = Reader::new(&body, "Authentication");
                let code = r.i32()?;
                let auth = match code {
                    0 => Authentication::Ok,
                    3 => Authentication::CleartextPassword,
                    5 => {
                        let s = r.bytes(4)?;
                        Authentication::Md5Password {
                            salt: [s[0], s[1], s[2], s[3]],
                        }
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        Authentication::Sasl { mechanisms }
                    }
                    11 => Authentication::SaslContinue {
                        data: Bytes::copy_from_slice(r.rest()),
                    },
                    12 => Authentication::SaslFinal {
                        data: Bytes::copy_from_slice(r.rest()),
                    },
                    other => {
                        r.rest();
                        Authentication::Unsupported { code: other }
                    }
                };
                r.finish()?;
                BackendMessage::Authentication(auth)
            }
            b'S' => {
                let mut r = Reader::new(&body, "ParameterStatus");
                let name = r.cstr()?;
                let value = r.cstr()?;
                r.finish()?;
                BackendMessage::ParameterStatus { name, value }
            }
            b'K' => {
                let mut r = Reader::new(&body, "BackendKeyData");
                let process_id = r.i32()?;
                let key = r.rest();
                if key.len() < 4 || key.len() > 256 {
                    return Err(malformed("BackendKeyData", "bad secret key length"));
                }
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key: Bytes::copy_from_slice(key),
                }
            }
            b'Z' => {
                let mut r = Reader::new(&body, "ReadyForQuery");
                let status = r.u8()?;
                r.finish()?;
                BackendMessage::ReadyForQuery { status }
            }
            b'T' => {
                let mut r = Reader::new(&body, "RowDescription");
                let n = r.i16()?;
                if n < 0 {
                    return Err(malformed("RowDescription", "negative field count"));
                }
                let mut fields = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: r.cstr()?,
                        table_oid: r.i32()? as u32,
                        column_id: r.i16()?,
                        type_oid: r.i32()? as u32,
                        type_size: r.i16()?,
                        type_modifier: r.i32()?,
                        format: r.i16()?,
                    });
                }
                r.finish()?;
                BackendMessage::RowDescription(fields)
            }
            b'D' => {
                let mut r = Reader::new(&body, "DataRow");
                let n = r.i16()?;
                if n < 0 {
                    return Err(malformed("DataRow", "negative column count"));
                }
                let mut cols = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = r.i32()?;
                    if len == -1 {
                        cols.push(None);
                    } else if len < 0 {
                        return Err(malformed("DataRow", "negative column length"));
                    } else {
                        cols.push(Some(Bytes::copy_from_slice(r.bytes(len as usize)?)));
                    }
                }
                r.finish()?;
                BackendMessage::DataRow(cols)
            }
            b'C' => {
                let mut r = Reader::new(&body, "CommandComplete");
                let tag = r.cstr()?;
                r.finish()?;
                BackendMessage::CommandComplete { tag }
            }
            b'I' => BackendMessage::EmptyQueryResponse,
            b'E' => BackendMessage::ErrorResponse(ErrorFields::parse(&body, "ErrorResponse")?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::parse(&body, "NoticeResponse")?),
            b'H' => BackendMessage::CopyOutResponse(CopyResponse::parse(&body, "CopyOutResponse")?),
            b'G' => BackendMessage::CopyInResponse(CopyResponse::parse(&body, "CopyInResponse")?),
            b'W' => {
                BackendMessage::CopyBothResponse(CopyResponse::parse(&body, "CopyBothResponse")?)
            }
            b'c' => {
                if !body.is_empty() {
                    return Err(malformed("CopyDone", "trailing bytes"));
                }
                BackendMessage::CopyDone
            }
            b'v' => {
                let mut r = Reader::new(&body, "NegotiateProtocolVersion");
                let newest_minor = r.i32()?;
                let n = r.i32()?;
                if n < 0 {
                    return Err(malformed(
                        "NegotiateProtocolVersion",
                        "negative option count",
                    ));
                }
                let mut unrecognized_options = Vec::new();
                for _ in 0..n {
                    unrecognized_options.push(r.cstr()?);
                }
                r.finish()?;
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized_options,
                }
            }
            b'A' => BackendMessage::NotificationResponse,
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'n' => BackendMessage::NoData,
            other => return Err(ProtocolError::UnexpectedType(other as char)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(kind: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[kind]);
        b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn parse_one(kind: u8, body: &[u8]) -> Result<Option<BackendMessage>, ProtocolError> {
        BackendMessage::parse(&mut msg(kind, body), MAX_MESSAGE_LEN)
    }

    #[test]
    fn needs_more_bytes() {
        let mut b = BytesMut::new();
        assert_eq!(BackendMessage::parse(&mut b, MAX_MESSAGE_LEN), Ok(None));
        let full = msg(b'Z', b"I");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(BackendMessage::parse(&mut part, MAX_MESSAGE_LEN), Ok(None));
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn two_messages_in_one_buffer() {
        let mut b = msg(b'Z', b"I");
        b.extend_from_slice(&msg(b'c', b""));
        assert_eq!(
            BackendMessage::parse(&mut b, MAX_MESSAGE_LEN),
            Ok(Some(BackendMessage::ReadyForQuery { status: b'I' }))
        );
        assert_eq!(
            BackendMessage::parse(&mut b, MAX_MESSAGE_LEN),
            Ok(Some(BackendMessage::CopyDone))
        );
        assert!(b.is_empty());
    }

    #[test]
    fn copy_both_response() {
        assert_eq!(
            parse_one(b'W', &[0, 0, 0]),
            Ok(Some(BackendMessage::CopyBothResponse(CopyResponse {
                binary: false,
                column_formats: vec![]
            })))
        );
        assert!(parse_one(b'W', &[0, 0, 1]).is_err(), "missing format");
        assert!(parse_one(b'W', &[0, 0xff, 0xff]).is_err(), "negative count");
    }

    #[test]
    fn negotiate_protocol_version() {
        let mut body = vec![];
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(b"_pq_.x\0");
        assert_eq!(
            parse_one(b'v', &body),
            Ok(Some(BackendMessage::NegotiateProtocolVersion {
                newest_minor: 0,
                unrecognized_options: vec!["_pq_.x".into()]
            }))
        );
        body.truncate(body.len() - 1);
        assert!(parse_one(b'v', &body).is_err());
    }

    #[test]
    fn error_response_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        match parse_one(b'E', body) {
            Ok(Some(BackendMessage::ErrorResponse(f))) => {
                assert_eq!(f.severity, "FATAL");
                assert_eq!(f.code, "28P01");
                assert!(f.message.starts_with("password authentication failed"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_one(b'E', b"SFATAL").is_err(), "unterminated");
    }

    #[test]
    fn data_row() {
        let mut body = vec![];
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            parse_one(b'D', &body),
            Ok(Some(BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"abc")),
                None
            ])))
        );
        let mut bad = vec![];
        bad.extend_from_slice(&1i16.to_be_bytes());
        bad.extend_from_slice(&100i32.to_be_bytes());
        bad.extend_from_slice(b"abc");
        assert!(parse_one(b'D', &bad).is_err());
        let mut neg = vec![];
        neg.extend_from_slice(&1i16.to_be_bytes());
        neg.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(parse_one(b'D', &neg).is_err());
    }

    #[test]
    fn auth_requests() {
        let mut md5 = 5i32.to_be_bytes().to_vec();
        md5.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse_one(b'R', &md5),
            Ok(Some(BackendMessage::Authentication(
                Authentication::Md5Password { salt: [1, 2, 3, 4] }
            )))
        );
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            parse_one(b'R', &sasl),
            Ok(Some(BackendMessage::Authentication(Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })))
        );
        assert!(parse_one(b'R', &[0, 0]).is_err());
        assert!(
            parse_one(b'R', &5i32.to_be_bytes()).is_err(),
            "md5 without salt"
        );
    }

    #[test]
    fn oversized_and_invalid_lengths() {
        let mut b = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            BackendMessage::parse(&mut b, MAX_MESSAGE_LEN),
            Err(ProtocolError::MessageTooLong { .. })
        ));
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(
            BackendMessage::parse(&mut b, MAX_MESSAGE_LEN),
            Err(ProtocolError::InvalidLength { .. })
        ));
        let mut b = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(BackendMessage::parse(&mut b, MAX_MESSAGE_LEN).is_err());
        assert_eq!(
            parse_one(b'?', b""),
            Err(ProtocolError::UnexpectedType('?'))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = BackendMessage::parse(&mut b, 4096) {}
        }

        #[test]
        fn arbitrary_body_never_panics(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_one(kind, &body);
        }
    }
}
