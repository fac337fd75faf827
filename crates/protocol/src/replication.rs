//! CopyData sub-messages of physical replication (`START_REPLICATION`) and of `BASE_BACKUP` (PG 15+).
//!
//! Server → client in a START_REPLICATION CopyBoth stream: XLogData `'w'` and PrimaryKeepalive `'k'`.
//! Client → server: StandbyStatusUpdate `'r'` and HotStandbyFeedback `'h'`.
//! In a PG 15+ BASE_BACKUP CopyOut stream: new archive `'n'`, archive or manifest data `'d'`, progress `'p'`,
//! manifest follows `'m'`. Reference: protocol-replication.html, "START_REPLICATION" and "BASE_BACKUP".

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{malformed, ProtocolError, Reader};
use crate::server::{put_cstr, EncodeError};
use crate::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Converts a `SystemTime` to PostgreSQL's `TimestampTz` (microseconds since 2000-01-01).
pub fn to_pg_timestamp(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX) - POSTGRES_EPOCH_UNIX_MICROS,
        Err(_) => -POSTGRES_EPOCH_UNIX_MICROS,
    }
}

/// A chunk of WAL: `data` belongs at `data_start` and following bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    pub data_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    pub send_time: i64,
    pub data: Bytes,
}

/// The server's heartbeat; `reply_requested` asks for an immediate StandbyStatusUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time: i64,
    pub reply_requested: bool,
}

impl XLogData {
    /// The CopyData payload (without the CopyData framing): `'w'`, the header, then the WAL.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(XLOG_DATA_HEADER + self.data.len());
        out.put_u8(b'w');
        out.put_u64(self.data_start.0);
        out.put_u64(self.wal_end.0);
        out.put_i64(self.send_time);
        out.put_slice(&self.data);
    }
}

/// A complete CopyData message carrying an XLogData whose WAL is `parts`, in order — what a
/// walsender writes, without first gathering the parts into one buffer. Fails only when the
/// message would exceed the protocol's 32-bit length.
pub fn encode_xlog_data_message(
    data_start: Lsn,
    wal_end: Lsn,
    send_time: i64,
    parts: &[&[u8]],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let wal: usize = parts.iter().map(|p| p.len()).sum();
    let len = 4 + XLOG_DATA_HEADER + wal;
    let len = i32::try_from(len).map_err(|_| EncodeError::MessageTooLong { kind: 'd', len })?;
    out.reserve(1 + len as usize);
    out.put_u8(b'd');
    out.put_i32(len);
    out.put_u8(b'w');
    out.put_u64(data_start.0);
    out.put_u64(wal_end.0);
    out.put_i64(send_time);
    for p in parts {
        out.put_slice(p);
    }
    Ok(())
}

impl PrimaryKeepalive {
    /// The CopyData payload (without the CopyData framing).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(18);
        out.put_u8(b'k');
        out.put_u64(self.wal_end.0);
        out.put_i64(self.send_time);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// Bytes before the WAL in an XLogData payload: type, start, end, send time.
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;

/// A message the server sends inside the START_REPLICATION CopyBoth stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

impl ReplicationMessage {
    /// Decodes one CopyData payload. Takes `Bytes` so WAL data is sliced, not copied.
    pub fn parse(payload: &Bytes) -> Result<ReplicationMessage, ProtocolError> {
        let Some(&kind) = payload.first() else {
            return Err(malformed("replication CopyData", "empty message"));
        };
        match kind {
            b'w' => {
                const HEADER: usize = XLOG_DATA_HEADER;
                let mut r = Reader::new(&payload[1..], "XLogData");
                let data_start = Lsn(r.u64()?);
                let wal_end = Lsn(r.u64()?);
                let send_time = r.u64()? as i64;
                if data_start
                    .0
                    .checked_add((payload.len() - HEADER) as u64)
                    .is_none()
                {
                    return Err(malformed(
                        "XLogData",
                        "data runs past the end of the WAL address space",
                    ));
                }
                Ok(ReplicationMessage::XLogData(XLogData {
                    data_start,
                    wal_end,
                    send_time,
                    data: payload.slice(HEADER..),
                }))
            }
            b'k' => {
                let mut r = Reader::new(&payload[1..], "PrimaryKeepalive");
                let wal_end = Lsn(r.u64()?);
                let send_time = r.u64()? as i64;
                let reply_requested = r.u8()? != 0;
                r.finish()?;
                Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                }))
            }
            _ => Err(malformed(
                "replication CopyData",
                "unknown message type (expected 'w' or 'k')",
            )),
        }
    }
}

/// The standby's progress report (`'r'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandbyStatusUpdate {
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    pub client_time: i64,
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Decodes the CopyData payload a standby sent (what a walsender reads).
    pub fn parse(payload: &[u8]) -> Result<StandbyStatusUpdate, ProtocolError> {
        let mut r = Reader::new(payload, "StandbyStatusUpdate");
        if r.u8()? != b'r' {
            return Err(malformed("StandbyStatusUpdate", "not an 'r' message"));
        }
        let update = StandbyStatusUpdate {
            write_lsn: Lsn(r.u64()?),
            flush_lsn: Lsn(r.u64()?),
            apply_lsn: Lsn(r.u64()?),
            client_time: r.u64()? as i64,
            reply_requested: r.u8()? != 0,
        };
        r.finish()?;
        Ok(update)
    }

    /// The CopyData payload (without the CopyData framing).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(34);
        out.put_u8(b'r');
        out.put_u64(self.write_lsn.0);
        out.put_u64(self.flush_lsn.0);
        out.put_u64(self.apply_lsn.0);
        out.put_i64(self.client_time);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// Hot standby feedback (`'h'`): the standby's xmin so the primary keeps rows it still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HotStandbyFeedback {
    pub client_time: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

impl HotStandbyFeedback {
    /// Decodes the CopyData payload a standby sent (what a walsender reads).
    pub fn parse(payload: &[u8]) -> Result<HotStandbyFeedback, ProtocolError> {
        let mut r = Reader::new(payload, "HotStandbyFeedback");
        if r.u8()? != b'h' {
            return Err(malformed("HotStandbyFeedback", "not an 'h' message"));
        }
        let client_time = r.u64()? as i64;
        let mut u32_field = || -> Result<u32, ProtocolError> {
            let b = r.bytes(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let feedback = HotStandbyFeedback {
            client_time,
            xmin: u32_field()?,
            xmin_epoch: u32_field()?,
            catalog_xmin: u32_field()?,
            catalog_xmin_epoch: u32_field()?,
        };
        r.finish()?;
        Ok(feedback)
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(25);
        out.put_u8(b'h');
        out.put_i64(self.client_time);
        out.put_u32(self.xmin);
        out.put_u32(self.xmin_epoch);
        out.put_u32(self.catalog_xmin);
        out.put_u32(self.catalog_xmin_epoch);
    }
}

/// A CopyData message of a PostgreSQL 15+ BASE_BACKUP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseBackupMessage {
    /// `'n'`: a new archive begins. `tablespace_location` is empty for the main data directory.
    NewArchive {
        archive_name: String,
        tablespace_location: String,
    },
    /// `'d'`: bytes of the current archive or of the manifest.
    Data(Bytes),
    /// `'p'`: total bytes sent so far.
    Progress(u64),
    /// `'m'`: the backup manifest follows (as `'d'` messages).
    ManifestFollows,
}

impl BaseBackupMessage {
    /// The CopyData payload (without the CopyData framing). Fails only for a name or location
    /// with a NUL byte in it; then `out` is left as it was.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            BaseBackupMessage::NewArchive {
                archive_name,
                tablespace_location,
            } => {
                let start = out.len();
                out.put_u8(b'n');
                let strings = put_cstr(out, archive_name, b'd')
                    .and_then(|()| put_cstr(out, tablespace_location, b'd'));
                if strings.is_err() {
                    out.truncate(start);
                }
                strings
            }
            BaseBackupMessage::Data(data) => {
                out.reserve(1 + data.len());
                out.put_u8(b'd');
                out.put_slice(data);
                Ok(())
            }
            BaseBackupMessage::Progress(done) => {
                out.put_u8(b'p');
                out.put_u64(*done);
                Ok(())
            }
            BaseBackupMessage::ManifestFollows => {
                out.put_u8(b'm');
                Ok(())
            }
        }
    }

    pub fn parse(payload: &Bytes) -> Result<BaseBackupMessage, ProtocolError> {
        let Some(&kind) = payload.first() else {
            return Err(malformed("BASE_BACKUP CopyData", "empty message"));
        };
        match kind {
            b'n' => {
                let mut r = Reader::new(&payload[1..], "BASE_BACKUP new-archive");
                let archive_name = r.cstr()?;
                let tablespace_location = r.cstr()?;
                r.finish()?;
                if archive_name.is_empty() {
                    return Err(malformed("BASE_BACKUP new-archive", "empty archive name"));
                }
                Ok(BaseBackupMessage::NewArchive {
                    archive_name,
                    tablespace_location,
                })
            }
            b'd' => Ok(BaseBackupMessage::Data(payload.slice(1..))),
            b'p' => {
                let mut r = Reader::new(&payload[1..], "BASE_BACKUP progress");
                let n = r.u64()?;
                r.finish()?;
                Ok(BaseBackupMessage::Progress(n))
            }
            b'm' => {
                if payload.len() != 1 {
                    return Err(malformed("BASE_BACKUP manifest", "trailing bytes"));
                }
                Ok(BaseBackupMessage::ManifestFollows)
            }
            _ => Err(malformed(
                "BASE_BACKUP CopyData",
                "unknown message type (expected 'n', 'd', 'p' or 'm')",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_standby_feedback_round_trips() {
        let h = HotStandbyFeedback {
            client_time: 5,
            xmin: 1000,
            xmin_epoch: 1,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(b.len(), 25);
        assert_eq!(HotStandbyFeedback::parse(&b), Ok(h));
        assert!(HotStandbyFeedback::parse(&b[..24]).is_err());
        assert!(HotStandbyFeedback::parse(b"r").is_err());
    }

    #[test]
    fn xlog_data_message_from_parts_is_copy_data_of_xlog_data() {
        let mut want = BytesMut::new();
        crate::server::encode_copy_data(&xlogdata(0x100_0000, 0x100_2000, b"abcdef"), &mut want)
            .unwrap();
        let mut got = BytesMut::new();
        let parts: [&[u8]; 3] = [b"ab", b"", b"cdef"];
        encode_xlog_data_message(Lsn(0x100_0000), Lsn(0x100_2000), 12345, &parts, &mut got)
            .unwrap();
        assert_eq!(got, want);
    }
    use proptest::prelude::*;

    fn xlogdata(start: u64, end: u64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(12345);
        b.extend_from_slice(data);
        b.freeze()
    }

    #[test]
    fn xlogdata_slices_payload() {
        let p = xlogdata(0x100_0000, 0x200_0000, b"walbytes");
        match ReplicationMessage::parse(&p).unwrap() {
            ReplicationMessage::XLogData(x) => {
                assert_eq!(x.data_start, Lsn(0x100_0000));
                assert_eq!(x.wal_end, Lsn(0x200_0000));
                assert_eq!(x.send_time, 12345);
                assert_eq!(&x.data[..], b"walbytes");
            }
            other => panic!("{other:?}"),
        }
        // header only: empty data is legal
        assert!(ReplicationMessage::parse(&xlogdata(1, 1, b"")).is_ok());
        // truncated header
        let short = Bytes::copy_from_slice(&p[..20]);
        assert!(ReplicationMessage::parse(&short).is_err());
        // overflow of the address space
        assert!(ReplicationMessage::parse(&xlogdata(u64::MAX, 0, b"x")).is_err());
    }

    #[test]
    fn keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x300_0000);
        b.put_i64(7);
        b.put_u8(1);
        assert_eq!(
            ReplicationMessage::parse(&b.clone().freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x300_0000),
                send_time: 7,
                reply_requested: true
            })
        );
        b.put_u8(0);
        assert!(
            ReplicationMessage::parse(&b.freeze()).is_err(),
            "trailing byte"
        );
        assert!(ReplicationMessage::parse(&Bytes::new()).is_err());
        assert!(ReplicationMessage::parse(&Bytes::from_static(b"z")).is_err());
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        let update = StandbyStatusUpdate {
            write_lsn: Lsn(1),
            flush_lsn: Lsn(2),
            apply_lsn: Lsn(3),
            client_time: 4,
            reply_requested: true,
        };
        update.encode(&mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(out[0], b'r');
        assert_eq!(&out[1..9], &1u64.to_be_bytes());
        assert_eq!(&out[9..17], &2u64.to_be_bytes());
        assert_eq!(&out[17..25], &3u64.to_be_bytes());
        assert_eq!(&out[25..33], &4i64.to_be_bytes());
        assert_eq!(out[33], 1);
        assert_eq!(StandbyStatusUpdate::parse(&out).unwrap(), update);
        assert!(StandbyStatusUpdate::parse(&out[..33]).is_err(), "truncated");
        let mut long = out.to_vec();
        long.push(0);
        assert!(StandbyStatusUpdate::parse(&long).is_err(), "trailing byte");
        let mut other = out.to_vec();
        other[0] = b'h';
        assert!(StandbyStatusUpdate::parse(&other).is_err(), "not 'r'");
        assert!(StandbyStatusUpdate::parse(&[]).is_err(), "empty");
    }

    #[test]
    fn hot_standby_feedback_layout() {
        let mut out = BytesMut::new();
        HotStandbyFeedback {
            client_time: 1,
            xmin: 2,
            xmin_epoch: 3,
            catalog_xmin: 4,
            catalog_xmin_epoch: 5,
        }
        .encode(&mut out);
        assert_eq!(out.len(), 25);
        assert_eq!(out[0], b'h');
        assert_eq!(&out[21..25], &5u32.to_be_bytes());
    }

    #[test]
    fn base_backup_messages() {
        let n = Bytes::from_static(b"n16384.tar\0/srv/ts1\0");
        assert_eq!(
            BaseBackupMessage::parse(&n).unwrap(),
            BaseBackupMessage::NewArchive {
                archive_name: "16384.tar".into(),
                tablespace_location: "/srv/ts1".into()
            }
        );
        assert!(BaseBackupMessage::parse(&Bytes::from_static(b"nbase.tar\0")).is_err());
        assert!(BaseBackupMessage::parse(&Bytes::from_static(b"n\0\0")).is_err());
        assert_eq!(
            BaseBackupMessage::parse(&Bytes::from_static(b"dabc")).unwrap(),
            BaseBackupMessage::Data(Bytes::from_static(b"abc"))
        );
        let mut p = BytesMut::new();
        p.put_u8(b'p');
        p.put_u64(8192);
        assert_eq!(
            BaseBackupMessage::parse(&p.freeze()).unwrap(),
            BaseBackupMessage::Progress(8192)
        );
        assert!(BaseBackupMessage::parse(&Bytes::from_static(b"p\0\0")).is_err());
        assert_eq!(
            BaseBackupMessage::parse(&Bytes::from_static(b"m")).unwrap(),
            BaseBackupMessage::ManifestFollows
        );
        assert!(BaseBackupMessage::parse(&Bytes::from_static(b"mx")).is_err());
        assert!(BaseBackupMessage::parse(&Bytes::new()).is_err());
    }

    #[test]
    fn replication_payloads_round_trip() {
        let x = XLogData {
            data_start: Lsn(0x100_0000),
            wal_end: Lsn(0x200_0000),
            send_time: 12345,
            data: Bytes::from_static(b"walbytes"),
        };
        let mut out = BytesMut::new();
        x.encode(&mut out);
        let out = out.freeze();
        assert_eq!(out, xlogdata(0x100_0000, 0x200_0000, b"walbytes"));
        assert_eq!(
            ReplicationMessage::parse(&out).unwrap(),
            ReplicationMessage::XLogData(x)
        );
        for reply_requested in [false, true] {
            let k = PrimaryKeepalive {
                wal_end: Lsn(0x300_0000),
                send_time: 7,
                reply_requested,
            };
            let mut out = BytesMut::new();
            k.encode(&mut out);
            assert_eq!(out.len(), 18);
            assert_eq!(
                ReplicationMessage::parse(&out.freeze()).unwrap(),
                ReplicationMessage::PrimaryKeepalive(k)
            );
        }
    }

    #[test]
    fn base_backup_messages_round_trip() {
        for m in [
            BaseBackupMessage::NewArchive {
                archive_name: "base.tar".into(),
                tablespace_location: String::new(),
            },
            BaseBackupMessage::NewArchive {
                archive_name: "16384.tar".into(),
                tablespace_location: "/srv/ts1".into(),
            },
            BaseBackupMessage::Data(Bytes::from_static(b"tar bytes")),
            BaseBackupMessage::Data(Bytes::new()),
            BaseBackupMessage::Progress(8192),
            BaseBackupMessage::ManifestFollows,
        ] {
            let mut out = BytesMut::new();
            m.encode(&mut out).unwrap();
            assert_eq!(BaseBackupMessage::parse(&out.freeze()).unwrap(), m);
        }
        let mut out = BytesMut::from(&b"x"[..]);
        let bad = BaseBackupMessage::NewArchive {
            archive_name: "base.tar".into(),
            tablespace_location: "/a\0b".into(),
        };
        assert!(bad.encode(&mut out).is_err());
        assert_eq!(&out[..], b"x");
    }

    #[test]
    fn pg_epoch() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800);
        assert_eq!(to_pg_timestamp(t), 0);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = Bytes::from(data);
            let _ = ReplicationMessage::parse(&b);
            let _ = BaseBackupMessage::parse(&b);
            let _ = StandbyStatusUpdate::parse(&b);
        }
    }
}
