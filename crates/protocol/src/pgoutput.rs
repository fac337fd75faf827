//! The messages of `pgoutput`, PostgreSQL's logical replication output plugin, decoded from the
//! payload of an XLogData (`'w'`) message of a logical `START_REPLICATION` stream.
//!
//! Every XLogData of a logical stream carries exactly one pgoutput message: its first byte is the
//! message type (`LogicalRepMsgType` in `logicalproto.h`), the rest is written by `proto.c`. This
//! module decodes protocol version 1 (every major from 10 to 18: Begin, Commit, Origin, Relation,
//! Type, Insert, Update, Delete, Truncate from 11, Message from 14) and the streaming messages of
//! version 2 (14+: Stream Start/Stop/Commit/Abort). Inside a stream block (between Stream Start and
//! Stream Stop) every data message carries the transaction id right after its type byte, so the
//! decoder ([`PgOutputDecoder`]) keeps that one bit of state. Two-phase messages (version 3) are
//! refused as unexpected: walrelay never asks for them.
//!
//! Decoding never panics and never trusts a count: a truncated message, a negative or oversized
//! length, an unknown tuple kind or trailing bytes are a [`ProtocolError`]. Column values are
//! slices of the payload ([`Bytes`]), not copies.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>,
//! `src/backend/replication/logical/proto.c`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{malformed, ProtocolError, Reader};
use crate::Lsn;

/// `'B'`: a transaction begins. Everything up to the matching [`Commit`] belongs to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the commit record (`Commit::commit_lsn`).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01.
    pub commit_time: i64,
    pub xid: u32,
}

/// `'C'`: the transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: where a restart continues after this transaction.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// `'O'`: the transaction came from another node through a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub origin_lsn: Lsn,
    pub name: String,
}

/// `pg_class.relreplident` of a published table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key, if any.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: the whole row.
    Full,
    /// `'i'`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        Some(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`], in the order of the tuples that refer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 0: the column is part of the replica identity (every column with REPLICA IDENTITY FULL).
    pub flags: u8,
    pub name: String,
    /// The column's type OID on the publisher.
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl RelationColumn {
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `'R'`: the publisher's description of a table, sent before the first change of the table in a
/// session and again after any change to it. Changes refer to it by `relid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Present inside a stream block.
    pub xid: Option<u32>,
    /// The table's OID on the publisher.
    pub relid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// `'Y'`: a non-built-in type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<u32>,
    pub type_oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `'n'`: NULL.
    Null,
    /// `'u'`: a TOASTed value the update did not change; it is not sent. Keep the stored value.
    UnchangedToast,
    /// `'t'`: the output function's text (in the connection's client encoding).
    Text(Bytes),
    /// `'b'`: the send function's binary form (only with the `binary` option, 14+).
    Binary(Bytes),
}

/// A row: one value per column of the relation, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<TupleValue>);

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: the replica identity columns; the other columns are NULL.
    Key(TupleData),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `'I'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relid: u32,
    pub new: TupleData,
}

/// `'U'`. `old` is sent only when the key changed (`'K'`) or with REPLICA IDENTITY FULL (`'O'`);
/// without it the key is in `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relid: u32,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// `'D'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relid: u32,
    pub old: OldTuple,
}

/// `'T'` (PostgreSQL 11+): the listed published tables were truncated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    /// Bit 0 CASCADE, bit 1 RESTART IDENTITY.
    pub flags: u8,
    pub relids: Vec<u32>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.flags & 1 != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.flags & 2 != 0
    }
}

/// `'M'` (PostgreSQL 14+, option `messages`): a `pg_logical_emit_message()` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub xid: Option<u32>,
    /// Bit 0: transactional.
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// `'S'` (protocol 2, 14+): a chunk of an in-progress transaction follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

/// `'c'` (protocol 2): a streamed transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// `'A'` (protocol 2): a streamed (sub)transaction aborted. `xid == subxid` for the top level.
/// The abort position and time come only with `streaming = parallel` (protocol 4, 16+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    pub abort: Option<(Lsn, i64)>,
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl PgOutputMessage {
    /// The message's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            PgOutputMessage::Begin(_) => b'B',
            PgOutputMessage::Commit(_) => b'C',
            PgOutputMessage::Origin(_) => b'O',
            PgOutputMessage::Relation(_) => b'R',
            PgOutputMessage::Type(_) => b'Y',
            PgOutputMessage::Insert(_) => b'I',
            PgOutputMessage::Update(_) => b'U',
            PgOutputMessage::Delete(_) => b'D',
            PgOutputMessage::Truncate(_) => b'T',
            PgOutputMessage::Message(_) => b'M',
            PgOutputMessage::StreamStart(_) => b'S',
            PgOutputMessage::StreamStop => b'E',
            PgOutputMessage::StreamCommit(_) => b'c',
            PgOutputMessage::StreamAbort(_) => b'A',
        }
    }
}

/// Decodes the pgoutput messages of one stream, in order: it knows whether a stream block is open
/// (and so whether data messages carry a transaction id).
#[derive(Debug, Clone, Default)]
pub struct PgOutputDecoder {
    in_stream: bool,
    abort_info: bool,
}

impl PgOutputDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stream Abort messages carry the abort position and time (`streaming = parallel`).
    pub fn with_parallel_abort_info(mut self, on: bool) -> Self {
        self.abort_info = on;
        self
    }

    /// Whether a stream block (Stream Start … Stream Stop) is open.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes one XLogData payload. `data` is the whole message, type byte first.
    pub fn decode(&mut self, data: &Bytes) -> Result<PgOutputMessage, ProtocolError> {
        let (&kind, body) = data
            .split_first()
            .ok_or_else(|| malformed("pgoutput", "empty message"))?;
        let what = kind_name(kind);
        let mut r = Fields {
            r: Reader::new(body, what),
            what,
            data,
        };
        let in_stream = self.in_stream;
        let xid = |r: &mut Fields| -> Result<Option<u32>, ProtocolError> {
            if in_stream {
                r.u32().map(Some)
            } else {
                Ok(None)
            }
        };
        let outside_stream = |m: PgOutputMessage| {
            if in_stream {
                Err(malformed(what, "inside a stream block"))
            } else {
                Ok(m)
            }
        };
        let msg = match kind {
            b'B' => {
                let final_lsn = r.lsn()?;
                let commit_time = r.i64()?;
                let xid = r.u32()?;
                if !final_lsn.is_valid() {
                    return Err(malformed(what, "final LSN not set"));
                }
                outside_stream(PgOutputMessage::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                }))?
            }
            b'C' => {
                let flags = r.u8()?;
                if flags != 0 {
                    return Err(malformed(what, "unknown flags"));
                }
                outside_stream(PgOutputMessage::Commit(Commit {
                    flags,
                    commit_lsn: r.lsn()?,
                    end_lsn: r.lsn()?,
                    commit_time: r.i64()?,
                }))?
            }
            b'O' => PgOutputMessage::Origin(Origin {
                origin_lsn: r.lsn()?,
                name: r.string()?,
            }),
            b'R' => {
                let xid = xid(&mut r)?;
                let relid = r.u32()?;
                let namespace = r.string()?;
                let name = r.string()?;
                let replica_identity = ReplicaIdentity::from_byte(r.u8()?)
                    .ok_or_else(|| malformed(what, "unknown replica identity"))?;
                let n = r.count16()?;
                let mut columns = Vec::with_capacity(r.capacity_for(n, 10));
                for _ in 0..n {
                    columns.push(RelationColumn {
                        flags: r.u8()?,
                        name: r.string()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                PgOutputMessage::Relation(Relation {
                    xid,
                    relid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => PgOutputMessage::Type(Type {
                xid: xid(&mut r)?,
                type_oid: r.u32()?,
                namespace: r.string()?,
                name: r.string()?,
            }),
            b'I' => {
                let xid = xid(&mut r)?;
                let relid = r.u32()?;
                if r.u8()? != b'N' {
                    return Err(malformed(what, "expected a new tuple ('N')"));
                }
                PgOutputMessage::Insert(Insert {
                    xid,
                    relid,
                    new: r.tuple()?,
                })
            }
            b'U' => {
                let xid = xid(&mut r)?;
                let relid = r.u32()?;
                let mut tag = r.u8()?;
                let old = match tag {
                    b'K' | b'O' => {
                        let t = r.tuple()?;
                        let old = if tag == b'K' {
                            OldTuple::Key(t)
                        } else {
                            OldTuple::Full(t)
                        };
                        tag = r.u8()?;
                        Some(old)
                    }
                    _ => None,
                };
                if tag != b'N' {
                    return Err(malformed(what, "expected a new tuple ('N')"));
                }
                PgOutputMessage::Update(Update {
                    xid,
                    relid,
                    old,
                    new: r.tuple()?,
                })
            }
            b'D' => {
                let xid = xid(&mut r)?;
                let relid = r.u32()?;
                let old = match r.u8()? {
                    b'K' => OldTuple::Key(r.tuple()?),
                    b'O' => OldTuple::Full(r.tuple()?),
                    _ => return Err(malformed(what, "expected an old tuple ('K' or 'O')")),
                };
                PgOutputMessage::Delete(Delete { xid, relid, old })
            }
            b'T' => {
                let xid = xid(&mut r)?;
                let n = r.u32()?;
                let flags = r.u8()?;
                let n = usize::try_from(n).map_err(|_| malformed(what, "too many relations"))?;
                let mut relids = Vec::with_capacity(r.capacity_for(n, 4));
                for _ in 0..n {
                    relids.push(r.u32()?);
                }
                PgOutputMessage::Truncate(Truncate { xid, flags, relids })
            }
            b'M' => {
                let xid = xid(&mut r)?;
                let flags = r.u8()?;
                let lsn = r.lsn()?;
                let prefix = r.string()?;
                let content = r.counted()?;
                PgOutputMessage::Message(Message {
                    xid,
                    flags,
                    lsn,
                    prefix,
                    content,
                })
            }
            b'S' => {
                if self.in_stream {
                    return Err(malformed(what, "stream block already open"));
                }
                let xid = r.u32()?;
                let first_segment = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed(what, "invalid first-segment flag")),
                };
                PgOutputMessage::StreamStart(StreamStart { xid, first_segment })
            }
            b'E' => {
                if !self.in_stream {
                    return Err(malformed(what, "no stream block open"));
                }
                PgOutputMessage::StreamStop
            }
            b'c' => {
                let xid = r.u32()?;
                let flags = r.u8()?;
                if flags != 0 {
                    return Err(malformed(what, "unknown flags"));
                }
                outside_stream(PgOutputMessage::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn: r.lsn()?,
                    end_lsn: r.lsn()?,
                    commit_time: r.i64()?,
                }))?
            }
            b'A' => {
                let xid = r.u32()?;
                let subxid = r.u32()?;
                let abort = if self.abort_info {
                    Some((r.lsn()?, r.i64()?))
                } else {
                    None
                };
                outside_stream(PgOutputMessage::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort,
                }))?
            }
            other => return Err(ProtocolError::UnexpectedType(other as char)),
        };
        r.r.finish()?;
        match msg {
            PgOutputMessage::StreamStart(_) => self.in_stream = true,
            PgOutputMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        b'B' => "pgoutput Begin",
        b'C' => "pgoutput Commit",
        b'O' => "pgoutput Origin",
        b'R' => "pgoutput Relation",
        b'Y' => "pgoutput Type",
        b'I' => "pgoutput Insert",
        b'U' => "pgoutput Update",
        b'D' => "pgoutput Delete",
        b'T' => "pgoutput Truncate",
        b'M' => "pgoutput Message",
        b'S' => "pgoutput Stream Start",
        b'E' => "pgoutput Stream Stop",
        b'c' => "pgoutput Stream Commit",
        b'A' => "pgoutput Stream Abort",
        _ => "pgoutput",
    }
}

/// The protocol crate's [`Reader`] plus what pgoutput adds: LSNs, counted values sliced out of
/// the payload, tuples.
struct Fields<'a> {
    r: Reader<'a>,
    what: &'static str,
    data: &'a Bytes,
}

impl Fields<'_> {
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.r.u8()
    }

    fn i32(&mut self) -> Result<i32, ProtocolError> {
        self.r.i32()
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.r.i32().map(|v| v as u32)
    }

    fn i64(&mut self) -> Result<i64, ProtocolError> {
        self.r.u64().map(|v| v as i64)
    }

    fn lsn(&mut self) -> Result<Lsn, ProtocolError> {
        self.r.u64().map(Lsn)
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        self.r.cstr()
    }

    /// An Int16 count that must not be negative.
    fn count16(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.r.i16()?).map_err(|_| malformed(self.what, "negative count"))
    }

    /// How many items to reserve room for: never more than the bytes left could hold, so a lying
    /// count cannot make us allocate.
    fn capacity_for(&self, n: usize, min_item_bytes: usize) -> usize {
        n.min(self.r.remaining() / min_item_bytes.max(1))
    }

    /// `Int32 len` + `len` bytes, as a slice of the payload.
    fn counted(&mut self) -> Result<Bytes, ProtocolError> {
        let len =
            usize::try_from(self.r.i32()?).map_err(|_| malformed(self.what, "negative length"))?;
        let bytes = self.r.bytes(len)?;
        Ok(self.data.slice_ref(bytes))
    }

    fn tuple(&mut self) -> Result<TupleData, ProtocolError> {
        let n = self.count16()?;
        let mut values = Vec::with_capacity(self.capacity_for(n, 1));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => TupleValue::Text(self.counted()?),
                b'b' => TupleValue::Binary(self.counted()?),
                _ => return Err(malformed(self.what, "unknown column kind in tuple data")),
            });
        }
        Ok(TupleData(values))
    }
}

// ---------------------------------------------------------------- encoding

/// Encodes a message as a walsender would send it (for fake servers and tests). `in_stream` says
/// whether data messages get their transaction id; `abort_info` whether Stream Abort carries its
/// position and time. A data message without `xid` inside a stream is written with xid 0.
pub fn encode(msg: &PgOutputMessage, in_stream: bool, abort_info: bool, out: &mut BytesMut) {
    fn cstr(out: &mut BytesMut, s: &str) {
        out.put_slice(s.as_bytes());
        out.put_u8(0);
    }
    fn tuple(out: &mut BytesMut, t: &TupleData) {
        out.put_i16(t.0.len() as i16);
        for v in &t.0 {
            match v {
                TupleValue::Null => out.put_u8(b'n'),
                TupleValue::UnchangedToast => out.put_u8(b'u'),
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    out.put_u8(if matches!(v, TupleValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.put_i32(b.len() as i32);
                    out.put_slice(b);
                }
            }
        }
    }
    let xid = |out: &mut BytesMut, xid: Option<u32>| {
        if in_stream {
            out.put_u32(xid.unwrap_or(0));
        }
    };
    out.put_u8(msg.kind());
    match msg {
        PgOutputMessage::Begin(b) => {
            out.put_u64(b.final_lsn.0);
            out.put_i64(b.commit_time);
            out.put_u32(b.xid);
        }
        PgOutputMessage::Commit(c) => {
            out.put_u8(c.flags);
            out.put_u64(c.commit_lsn.0);
            out.put_u64(c.end_lsn.0);
            out.put_i64(c.commit_time);
        }
        PgOutputMessage::Origin(o) => {
            out.put_u64(o.origin_lsn.0);
            cstr(out, &o.name);
        }
        PgOutputMessage::Relation(r) => {
            xid(out, r.xid);
            out.put_u32(r.relid);
            cstr(out, &r.namespace);
            cstr(out, &r.name);
            out.put_u8(r.replica_identity.as_byte());
            out.put_i16(r.columns.len() as i16);
            for c in &r.columns {
                out.put_u8(c.flags);
                cstr(out, &c.name);
                out.put_u32(c.type_oid);
                out.put_i32(c.type_modifier);
            }
        }
        PgOutputMessage::Type(t) => {
            xid(out, t.xid);
            out.put_u32(t.type_oid);
            cstr(out, &t.namespace);
            cstr(out, &t.name);
        }
        PgOutputMessage::Insert(i) => {
            xid(out, i.xid);
            out.put_u32(i.relid);
            out.put_u8(b'N');
            tuple(out, &i.new);
        }
        PgOutputMessage::Update(u) => {
            xid(out, u.xid);
            out.put_u32(u.relid);
            match &u.old {
                Some(OldTuple::Key(t)) => {
                    out.put_u8(b'K');
                    tuple(out, t);
                }
                Some(OldTuple::Full(t)) => {
                    out.put_u8(b'O');
                    tuple(out, t);
                }
                None => {}
            }
            out.put_u8(b'N');
            tuple(out, &u.new);
        }
        PgOutputMessage::Delete(d) => {
            xid(out, d.xid);
            out.put_u32(d.relid);
            out.put_u8(match d.old {
                OldTuple::Key(_) => b'K',
                OldTuple::Full(_) => b'O',
            });
            tuple(out, d.old.tuple());
        }
        PgOutputMessage::Truncate(t) => {
            xid(out, t.xid);
            out.put_u32(t.relids.len() as u32);
            out.put_u8(t.flags);
            for r in &t.relids {
                out.put_u32(*r);
            }
        }
        PgOutputMessage::Message(m) => {
            xid(out, m.xid);
            out.put_u8(m.flags);
            out.put_u64(m.lsn.0);
            cstr(out, &m.prefix);
            out.put_i32(m.content.len() as i32);
            out.put_slice(&m.content);
        }
        PgOutputMessage::StreamStart(s) => {
            out.put_u32(s.xid);
            out.put_u8(u8::from(s.first_segment));
        }
        PgOutputMessage::StreamStop => {}
        PgOutputMessage::StreamCommit(c) => {
            out.put_u32(c.xid);
            out.put_u8(c.flags);
            out.put_u64(c.commit_lsn.0);
            out.put_u64(c.end_lsn.0);
            out.put_i64(c.commit_time);
        }
        PgOutputMessage::StreamAbort(a) => {
            out.put_u32(a.xid);
            out.put_u32(a.subxid);
            if abort_info {
                let (lsn, time) = a.abort.unwrap_or((Lsn::INVALID, 0));
                out.put_u64(lsn.0);
                out.put_i64(time);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_one(bytes: &[u8]) -> Result<PgOutputMessage, ProtocolError> {
        PgOutputDecoder::new().decode(&Bytes::copy_from_slice(bytes))
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The Relation message for `CREATE TABLE public.t (id int PRIMARY KEY, body text)`, laid out
    /// by hand after proto.c's `logicalrep_write_rel` (the real servers' messages are decoded by
    /// the logical crate's tests).
    const RELATION_FIXTURE: &[u8] = b"R\x00\x00\x40\x01public\0t\0d\x00\x02\
        \x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\
        \x00body\0\x00\x00\x00\x19\xff\xff\xff\xff";

    #[test]
    fn relation_fixture() {
        let m = decode_one(RELATION_FIXTURE).unwrap();
        let PgOutputMessage::Relation(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.relid, 0x4001);
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("public", "t"));
        assert_eq!(r.replica_identity, ReplicaIdentity::Default);
        assert_eq!(r.columns.len(), 2);
        assert!(r.columns[0].is_key() && !r.columns[1].is_key());
        assert_eq!(r.columns[0].type_oid, 23);
        assert_eq!(r.columns[1].type_modifier, -1);
        // Every strict prefix is refused, never a panic.
        for cut in 1..RELATION_FIXTURE.len() {
            assert!(decode_one(&RELATION_FIXTURE[..cut]).is_err(), "cut {cut}");
        }
        let mut long = RELATION_FIXTURE.to_vec();
        long.push(0);
        assert!(decode_one(&long).is_err(), "trailing byte");
    }

    #[test]
    fn begin_commit_fixture() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x1_0000_0100);
        b.put_i64(7);
        b.put_u32(733);
        assert_eq!(
            decode_one(&b).unwrap(),
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0100),
                commit_time: 7,
                xid: 733
            })
        );
        let mut c = BytesMut::new();
        c.put_u8(b'C');
        c.put_u8(0);
        c.put_u64(0x100);
        c.put_u64(0x130);
        c.put_i64(7);
        assert!(matches!(
            decode_one(&c).unwrap(),
            PgOutputMessage::Commit(Commit {
                end_lsn: Lsn(0x130),
                ..
            })
        ));
        c[1] = 1;
        assert!(decode_one(&c).is_err(), "unknown commit flags");
        let mut zero = BytesMut::new();
        zero.put_u8(b'B');
        zero.put_bytes(0, 20);
        assert!(decode_one(&zero).is_err(), "invalid final LSN");
    }

    #[test]
    fn update_with_unchanged_toast_and_old_key() {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(16385);
        b.put_u8(b'K');
        b.put_i16(2);
        b.put_u8(b't');
        b.put_i32(1);
        b.put_slice(b"1");
        b.put_u8(b'n');
        b.put_u8(b'N');
        b.put_i16(2);
        b.put_u8(b't');
        b.put_i32(1);
        b.put_slice(b"2");
        b.put_u8(b'u');
        let m = decode_one(&b).unwrap();
        assert_eq!(
            m,
            PgOutputMessage::Update(Update {
                xid: None,
                relid: 16385,
                old: Some(OldTuple::Key(TupleData(vec![text("1"), TupleValue::Null]))),
                new: TupleData(vec![text("2"), TupleValue::UnchangedToast]),
            })
        );
    }

    #[test]
    fn malformed_tuples() {
        let base = |f: &dyn Fn(&mut BytesMut)| {
            let mut b = BytesMut::new();
            b.put_u8(b'I');
            b.put_u32(1);
            b.put_u8(b'N');
            f(&mut b);
            decode_one(&b)
        };
        assert!(base(&|b| b.put_i16(-1)).is_err(), "negative column count");
        assert!(base(&|b| {
            b.put_i16(1);
            b.put_u8(b't');
            b.put_i32(-5);
        })
        .is_err());
        assert!(base(&|b| {
            b.put_i16(1);
            b.put_u8(b't');
            b.put_i32(i32::MAX);
        })
        .is_err());
        assert!(base(&|b| {
            b.put_i16(1);
            b.put_u8(b'x');
        })
        .is_err());
        assert!(base(&|b| b.put_i16(i16::MAX)).is_err(), "lying count");
        let mut wrong_tag = BytesMut::new();
        wrong_tag.put_u8(b'I');
        wrong_tag.put_u32(1);
        wrong_tag.put_u8(b'K');
        wrong_tag.put_i16(0);
        assert!(decode_one(&wrong_tag).is_err());
        let mut t = BytesMut::new();
        t.put_u8(b'T');
        t.put_u32(u32::MAX);
        t.put_u8(0);
        assert!(decode_one(&t).is_err(), "truncate count beyond the message");
        assert!(decode_one(b"").is_err());
        assert_eq!(decode_one(b"?"), Err(ProtocolError::UnexpectedType('?')));
        assert_eq!(decode_one(b"P"), Err(ProtocolError::UnexpectedType('P')));
    }

    #[test]
    fn stream_blocks_carry_xids() {
        let mut d = PgOutputDecoder::new();
        let mut buf = BytesMut::new();
        let start = PgOutputMessage::StreamStart(StreamStart {
            xid: 9,
            first_segment: true,
        });
        encode(&start, false, false, &mut buf);
        assert_eq!(d.decode(&buf.split().freeze()).unwrap(), start);
        assert!(d.in_stream());
        let ins = PgOutputMessage::Insert(Insert {
            xid: Some(9),
            relid: 5,
            new: TupleData(vec![text("a")]),
        });
        encode(&ins, true, false, &mut buf);
        assert_eq!(d.decode(&buf.split().freeze()).unwrap(), ins);
        // Begin inside a stream block is a protocol violation.
        encode(
            &PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(1),
                commit_time: 0,
                xid: 1,
            }),
            true,
            false,
            &mut buf,
        );
        assert!(d.decode(&buf.split().freeze()).is_err());
        encode(&PgOutputMessage::StreamStop, true, false, &mut buf);
        assert_eq!(
            d.decode(&buf.split().freeze()).unwrap(),
            PgOutputMessage::StreamStop
        );
        assert!(!d.in_stream());
        encode(&PgOutputMessage::StreamStop, false, false, &mut buf);
        assert!(
            d.decode(&buf.split().freeze()).is_err(),
            "stop without start"
        );
    }

    #[test]
    fn values_are_slices_of_the_payload() {
        let mut b = BytesMut::new();
        encode(
            &PgOutputMessage::Insert(Insert {
                xid: None,
                relid: 1,
                new: TupleData(vec![text("hello")]),
            }),
            false,
            false,
            &mut b,
        );
        let payload = b.freeze();
        let PgOutputMessage::Insert(i) = PgOutputDecoder::new().decode(&payload).unwrap() else {
            panic!()
        };
        let TupleValue::Text(v) = &i.new.0[0] else {
            panic!()
        };
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        assert!(range.contains(&(v.as_ptr() as usize)), "copied, not sliced");
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_ ]{0,12}"
    }

    fn arb_tuple() -> impl Strategy<Value = TupleData> {
        proptest::collection::vec(
            prop_oneof![
                Just(TupleValue::Null),
                Just(TupleValue::UnchangedToast),
                arb_bytes().prop_map(TupleValue::Text),
                arb_bytes().prop_map(TupleValue::Binary),
            ],
            0..6,
        )
        .prop_map(TupleData)
    }

    fn arb_old() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            arb_tuple().prop_map(OldTuple::Key),
            arb_tuple().prop_map(OldTuple::Full)
        ]
    }

    /// Messages valid outside a stream block (xid fields None).
    fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
        let lsn = (1u64..u64::MAX).prop_map(Lsn);
        prop_oneof![
            (lsn.clone(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                PgOutputMessage::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }),
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(a, b, t)| {
                PgOutputMessage::Commit(Commit {
                    flags: 0,
                    commit_lsn: Lsn(a),
                    end_lsn: Lsn(b),
                    commit_time: t,
                })
            }),
            (any::<u64>(), arb_name()).prop_map(|(l, name)| PgOutputMessage::Origin(Origin {
                origin_lsn: Lsn(l),
                name
            })),
            (
                any::<u32>(),
                arb_name(),
                arb_name(),
                prop_oneof![
                    Just(ReplicaIdentity::Default),
                    Just(ReplicaIdentity::Nothing),
                    Just(ReplicaIdentity::Full),
                    Just(ReplicaIdentity::Index)
                ],
                proptest::collection::vec(
                    (0u8..2, arb_name(), any::<u32>(), any::<i32>()).prop_map(
                        |(flags, name, type_oid, type_modifier)| RelationColumn {
                            flags,
                            name,
                            type_oid,
                            type_modifier
                        }
                    ),
                    0..5
                )
            )
                .prop_map(|(relid, namespace, name, replica_identity, columns)| {
                    PgOutputMessage::Relation(Relation {
                        xid: None,
                        relid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), arb_name(), arb_name()).prop_map(|(type_oid, namespace, name)| {
                PgOutputMessage::Type(Type {
                    xid: None,
                    type_oid,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), arb_tuple()).prop_map(|(relid, new)| PgOutputMessage::Insert(Insert {
                xid: None,
                relid,
                new
            })),
            (any::<u32>(), proptest::option::of(arb_old()), arb_tuple()).prop_map(
                |(relid, old, new)| PgOutputMessage::Update(Update {
                    xid: None,
                    relid,
                    old,
                    new
                })
            ),
            (any::<u32>(), arb_old()).prop_map(|(relid, old)| PgOutputMessage::Delete(Delete {
                xid: None,
                relid,
                old
            })),
            (0u8..4, proptest::collection::vec(any::<u32>(), 0..5)).prop_map(|(flags, relids)| {
                PgOutputMessage::Truncate(Truncate {
                    xid: None,
                    flags,
                    relids,
                })
            }),
            (0u8..2, any::<u64>(), arb_name(), arb_bytes()).prop_map(
                |(flags, l, prefix, content)| PgOutputMessage::Message(Message {
                    xid: None,
                    flags,
                    lsn: Lsn(l),
                    prefix,
                    content
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(m in arb_message()) {
            let mut b = BytesMut::new();
            encode(&m, false, false, &mut b);
            let bytes = b.freeze();
            prop_assert_eq!(PgOutputDecoder::new().decode(&bytes).unwrap(), m);
            // Cut anywhere: an error, never a panic or a wrong message.
            for cut in 0..bytes.len() {
                prop_assert!(PgOutputDecoder::new().decode(&bytes.slice(..cut)).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), stream in any::<bool>()) {
            let mut d = PgOutputDecoder::new();
            if stream {
                let _ = d.decode(&Bytes::from_static(b"S\0\0\0\x01\x01"));
            }
            let _ = d.decode(&Bytes::from(data));
        }

        #[test]
        fn flipped_bytes_never_panic(m in arb_message(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut b = BytesMut::new();
            encode(&m, false, false, &mut b);
            let i = pos.index(b.len());
            b[i] = byte;
            let _ = PgOutputDecoder::new().decode(&b.freeze());
        }
    }
}
