//! What a server reads: the client's startup packet and its frontend messages.
//!
//! The inverse of what a client writes (`postgres-protocol`'s `frontend` module). A connection
//! starts with an untyped packet — `int32 length, int32 code, body` — that is a StartupMessage, an
//! SSLRequest, a GSSENCRequest or a CancelRequest ([`StartupRequest::parse`]); every later message
//! is typed — `byte type, int32 length, body` ([`FrontendMessage::parse`]). Both parsers have the
//! crate's one shape: `Ok(None)` until a whole packet is buffered, nothing consumed; lengths are
//! checked before anything is buffered, so a hostile client cannot make the server allocate more
//! than the limit it passes.
//!
//! References: <https://www.postgresql.org/docs/current/protocol-message-formats.html>,
//! `ProcessStartupPacket` (`postmaster.c` 10–17, `backend_startup.c` 18).

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use crate::message::{split_message, ProtocolError, Reader};

/// `PG_PROTOCOL(3, 0)`, the protocol every PostgreSQL from 7.4 speaks.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// The request codes of the untyped first packet (`pqcomm.h`).
pub const CANCEL_REQUEST_CODE: i32 = (1234 << 16) | 5678;
pub const SSL_REQUEST_CODE: i32 = (1234 << 16) | 5679;
pub const GSSENC_REQUEST_CODE: i32 = (1234 << 16) | 5680;
/// `MAX_STARTUP_PACKET_LENGTH`: a longer first packet is refused.
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;

/// Why a client's bytes are not a valid packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrontendError {
    #[error("invalid length of startup packet")]
    InvalidStartupLength,
    #[error("client sent a {kind:?} message of {len} bytes, more than the {max}-byte limit")]
    MessageTooLong { kind: char, len: usize, max: usize },
    #[error("client sent a message with invalid length {len}")]
    InvalidLength { len: i32 },
    #[error("client sent a malformed {what} message: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    #[error("invalid frontend message type {0}")]
    UnexpectedType(u8),
}

impl From<ProtocolError> for FrontendError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Malformed { what, reason } => FrontendError::Malformed { what, reason },
            ProtocolError::InvalidLength { len } => FrontendError::InvalidLength { len },
            ProtocolError::MessageTooLong { kind, len, max } => {
                FrontendError::MessageTooLong { kind, len, max }
            }
            ProtocolError::UnexpectedType(c) => FrontendError::UnexpectedType(c as u8),
        }
    }
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// SSLRequest: answer one byte, `S` (then the TLS handshake) or `N`.
    Ssl,
    /// GSSENCRequest: answer `N` (walrelay has no GSSAPI encryption).
    GssEnc,
    /// CancelRequest: never answered; the connection is closed.
    Cancel { process_id: i32, secret_key: Bytes },
    /// StartupMessage: the protocol version asked for and the parameters, in order.
    Startup {
        major: u16,
        minor: u16,
        parameters: Vec<(String, String)>,
    },
}

impl StartupRequest {
    /// Decodes the untyped first packet from the front of `buf`.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<StartupRequest>, FrontendError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let len = usize::try_from(len).map_err(|_| FrontendError::InvalidStartupLength)?;
        if !(8..=MAX_STARTUP_PACKET_LENGTH).contains(&len) {
            return Err(FrontendError::InvalidStartupLength);
        }
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let body = buf.split_to(len - 4).freeze();
        let mut r = Reader::new(&body, "startup packet");
        let code = r.i32()?;
        let request = match code {
            SSL_REQUEST_CODE => StartupRequest::Ssl,
            GSSENC_REQUEST_CODE => StartupRequest::GssEnc,
            CANCEL_REQUEST_CODE => StartupRequest::Cancel {
                process_id: r.i32()?,
                secret_key: Bytes::copy_from_slice(r.rest()),
            },
            version => StartupRequest::Startup {
                major: (version >> 16) as u16,
                minor: (version & 0xffff) as u16,
                parameters: parse_parameters(r.rest())?,
            },
        };
        Ok(Some(request))
    }
}

/// `name\0value\0 … \0`: pairs of strings ended by an empty name. PostgreSQL requires the final
/// terminator to be the packet's last byte ("invalid startup packet layout: expected terminator as
/// last byte").
fn parse_parameters(body: &[u8]) -> Result<Vec<(String, String)>, FrontendError> {
    let layout = || FrontendError::Malformed {
        what: "startup packet",
        reason: "invalid startup packet layout: expected terminator as last byte",
    };
    if body.last() != Some(&0) {
        return Err(layout());
    }
    let mut r = Reader::new(&body[..body.len() - 1], "startup packet");
    let mut out = Vec::new();
    loop {
        let rest = r.rest();
        if rest.is_empty() {
            break;
        }
        let mut pair = Reader::new(rest, "startup packet");
        let name = pair.cstr().map_err(|_| layout())?;
        let value = pair.cstr().map_err(|_| layout())?;
        out.push((name, value));
        r = pair;
    }
    Ok(out)
}

/// A frontend message after the startup packet. Only what a replication connection can meet is
/// decoded; the extended query protocol is recognized (to refuse it by name) but not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: a simple query (in a replication connection: a replication command).
    Query(String),
    /// `X`
    Terminate,
    /// `d`
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `f`: the client gives up a COPY, with its reason.
    CopyFail(String),
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse — which one depends on what the
    /// server asked for ([`SaslInitialResponse::parse`] decodes the second).
    Password(Bytes),
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `P`, `B`, `E`, `D`, `C`: the extended query protocol, by its type byte.
    Extended(u8),
}

impl FrontendMessage {
    /// Decodes one message from the front of `buf`; `Ok(None)` until it is complete. Messages
    /// longer than `max_len` are refused before they are buffered.
    pub fn parse(
        buf: &mut BytesMut,
        max_len: usize,
    ) -> Result<Option<FrontendMessage>, FrontendError> {
        match split_message(buf, max_len)? {
            Some((kind, body)) => Self::decode(kind, body).map(Some),
            None => Ok(None),
        }
    }

    fn decode(kind: u8, body: Bytes) -> Result<FrontendMessage, FrontendError> {
        let empty = |what: &'static str, m: FrontendMessage| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(FrontendError::Malformed {
                    what,
                    reason: "trailing bytes",
                })
            }
        };
        match kind {
            b'd' => Ok(FrontendMessage::CopyData(body)),
            b'Q' => Ok(FrontendMessage::Query(one_string(&body, "Query")?)),
            b'f' => Ok(FrontendMessage::CopyFail(one_string(&body, "CopyFail")?)),
            b'p' => Ok(FrontendMessage::Password(body)),
            b'X' => empty("Terminate", FrontendMessage::Terminate),
            b'c' => empty("CopyDone", FrontendMessage::CopyDone),
            b'S' => empty("Sync", FrontendMessage::Sync),
            b'H' => empty("Flush", FrontendMessage::Flush),
            b'P' | b'B' | b'E' | b'D' | b'C' => Ok(FrontendMessage::Extended(kind)),
            other => Err(FrontendError::UnexpectedType(other)),
        }
    }
}

/// A body that is exactly one NUL-terminated string.
fn one_string(body: &[u8], what: &'static str) -> Result<String, FrontendError> {
    let mut r = Reader::new(body, what);
    let s = r.cstr()?;
    r.finish()?;
    Ok(s)
}

/// The body of a SASLInitialResponse (`p` after an AuthenticationSASL request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    /// The client-first message; `None` when the client sent none (length -1), in which case the
    /// server answers with an empty SASLContinue and the client sends it next.
    pub data: Option<Bytes>,
}

impl SaslInitialResponse {
    pub fn parse(body: &Bytes) -> Result<SaslInitialResponse, FrontendError> {
        let mut r = Reader::new(body, "SASLInitialResponse");
        let mechanism = r.cstr()?;
        let len = r.i32()?;
        let data = match len {
            -1 => None,
            n if n >= 0 => Some(Bytes::copy_from_slice(r.bytes(n as usize)?)),
            _ => {
                return Err(FrontendError::Malformed {
                    what: "SASLInitialResponse",
                    reason: "negative length",
                })
            }
        };
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn startup_packet(code: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + body.len() as i32);
        b.put_i32(code);
        b.put_slice(body);
        b
    }

    fn typed(kind: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_i32(4 + body.len() as i32);
        b.put_slice(body);
        b
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        // The bytes libpq sends for sslmode=prefer.
        let mut b = BytesMut::from(&[0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
        assert_eq!(StartupRequest::parse(&mut b), Ok(Some(StartupRequest::Ssl)));
        assert!(b.is_empty());
        let mut b = startup_packet(GSSENC_REQUEST_CODE, b"");
        assert_eq!(
            StartupRequest::parse(&mut b),
            Ok(Some(StartupRequest::GssEnc))
        );
        let mut b = startup_packet(CANCEL_REQUEST_CODE, &[0, 0, 0x30, 0x39, 1, 2, 3, 4]);
        assert_eq!(
            StartupRequest::parse(&mut b),
            Ok(Some(StartupRequest::Cancel {
                process_id: 12345,
                secret_key: Bytes::from_static(&[1, 2, 3, 4])
            }))
        );
    }

    #[test]
    fn startup_message_as_a_walreceiver_sends_it() {
        let body = b"user\0replicator\0database\0replication\0replication\0true\0application_name\0walreceiver\0\0";
        let mut b = startup_packet(PROTOCOL_3_0, body);
        let before = b.clone();
        for cut in 0..before.len() {
            let mut part = BytesMut::from(&before[..cut]);
            assert_eq!(StartupRequest::parse(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
        let Some(StartupRequest::Startup {
            major,
            minor,
            parameters,
        }) = StartupRequest::parse(&mut b).unwrap()
        else {
            panic!("not a startup message")
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(
            parameters,
            vec![
                ("user".to_string(), "replicator".to_string()),
                ("database".into(), "replication".into()),
                ("replication".into(), "true".into()),
                ("application_name".into(), "walreceiver".into()),
            ]
        );
    }

    #[test]
    fn bad_startup_packets() {
        // The terminator must be the last byte.
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0x\0");
        assert!(matches!(
            StartupRequest::parse(&mut b),
            Err(FrontendError::Malformed { .. })
        ));
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0x\0\0junk");
        assert!(StartupRequest::parse(&mut b).is_err());
        let mut b = startup_packet(PROTOCOL_3_0, b"user\0\0");
        assert!(StartupRequest::parse(&mut b).is_err(), "name without value");
        // Lengths: too short, negative, too long (refused before buffering).
        for len in [0i32, 7, -1, 10_001, i32::MAX] {
            let mut b = BytesMut::new();
            b.put_i32(len);
            assert_eq!(
                StartupRequest::parse(&mut b),
                Err(FrontendError::InvalidStartupLength),
                "{len}"
            );
        }
        // An empty parameter list is only the terminator.
        let mut b = startup_packet(PROTOCOL_3_0, b"\0");
        assert!(matches!(
            StartupRequest::parse(&mut b),
            Ok(Some(StartupRequest::Startup { parameters, .. })) if parameters.is_empty()
        ));
        // Protocol 3.2 (libpq 18 with max_protocol_version) is parsed, not judged here.
        let mut b = startup_packet((3 << 16) | 2, b"user\0u\0\0");
        assert!(matches!(
            StartupRequest::parse(&mut b),
            Ok(Some(StartupRequest::Startup {
                major: 3,
                minor: 2,
                ..
            }))
        ));
    }

    #[test]
    fn frontend_messages() {
        let mut b = typed(b'Q', b"IDENTIFY_SYSTEM\0");
        b.extend_from_slice(&typed(b'X', b""));
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Ok(Some(FrontendMessage::Query("IDENTIFY_SYSTEM".into())))
        );
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Ok(Some(FrontendMessage::Terminate))
        );
        assert_eq!(FrontendMessage::parse(&mut b, 1024), Ok(None));
        let mut b = typed(b'd', b"r123");
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Ok(Some(FrontendMessage::CopyData(Bytes::from_static(b"r123"))))
        );
        let mut b = typed(b'P', b"\0SELECT 1\0\0\0");
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Ok(Some(FrontendMessage::Extended(b'P')))
        );
        for (kind, body) in [
            (b'Q', &b"no terminator"[..]),
            (b'Q', b"two\0strings\0"),
            (b'c', b"x"),
            (b'X', b"x"),
        ] {
            let mut b = typed(kind, body);
            assert!(
                matches!(
                    FrontendMessage::parse(&mut b, 1024),
                    Err(FrontendError::Malformed { .. })
                ),
                "{} {body:?}",
                kind as char
            );
        }
        let mut b = typed(b'?', b"");
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Err(FrontendError::UnexpectedType(b'?'))
        );
        let mut b = BytesMut::from(&[b'd', 0x7f, 0, 0, 0][..]);
        assert!(matches!(
            FrontendMessage::parse(&mut b, 1024),
            Err(FrontendError::MessageTooLong { .. })
        ));
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert_eq!(
            FrontendMessage::parse(&mut b, 1024),
            Err(FrontendError::InvalidLength { len: 3 })
        );
    }

    #[test]
    fn sasl_initial_response() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,n=");
        assert_eq!(
            SaslInitialResponse::parse(&Bytes::from(body)),
            Ok(SaslInitialResponse {
                mechanism: "SCRAM-SHA-256".into(),
                data: Some(Bytes::from_static(b"n,,n="))
            })
        );
        let mut none = b"SCRAM-SHA-256\0".to_vec();
        none.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            SaslInitialResponse::parse(&Bytes::from(none)).map(|r| r.data),
            Ok(None)
        );
        for bad in [
            &b"SCRAM-SHA-256"[..],
            b"SCRAM-SHA-256\0\0\0\0\x09n,,",
            b"SCRAM-SHA-256\0\xff\xff\xff\xfe",
            b"SCRAM-SHA-256\0\0\0\0\x01ab",
        ] {
            assert!(
                SaslInitialResponse::parse(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            let _ = StartupRequest::parse(&mut b);
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = FrontendMessage::parse(&mut b, 256) {}
            let _ = SaslInitialResponse::parse(&Bytes::from(data));
        }
    }
}
