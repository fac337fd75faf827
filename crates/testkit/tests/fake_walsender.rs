// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]

//! The scripted fake walsender as a client sees it: its bytes decoded by the protocol crate's own
//! decoder, the replies to the replication commands, a scripted WAL stream and the flush positions
//! it records.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{BufMut, BytesMut};
use walrelay_protocol::message::{Authentication, MAX_MESSAGE_LEN};
use walrelay_protocol::{BackendMessage, Lsn, ReplicationMessage, StandbyStatusUpdate, XLogData};
use walrelay_testkit::{Ending, FakeWalsender, Script, WalStream};

/// A raw client: writes frontend messages, decodes backend ones.
struct Client {
    sock: TcpStream,
    buf: BytesMut,
}

impl Client {
    fn connect(server: &FakeWalsender) -> Client {
        let mut sock = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        let mut startup = BytesMut::new();
        let params = b"user\0rep\0replication\0true\0\0";
        startup.put_i32((8 + params.len()) as i32);
        startup.put_i32(196_608);
        startup.put_slice(params);
        sock.write_all(&startup).unwrap();
        let mut c = Client {
            sock,
            buf: BytesMut::new(),
        };
        assert_eq!(c.next(), BackendMessage::Authentication(Authentication::Ok));
        loop {
            if let BackendMessage::ReadyForQuery { .. } = c.next() {
                return c;
            }
        }
    }

    fn next(&mut self) -> BackendMessage {
        loop {
            if let Some(m) = BackendMessage::parse(&mut self.buf, MAX_MESSAGE_LEN).unwrap() {
                return m;
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).unwrap();
            assert!(n > 0, "the fake walsender closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next CopyData, decoded as a START_REPLICATION message.
    fn replication_message(&mut self) -> ReplicationMessage {
        match self.next() {
            BackendMessage::CopyData(payload) => ReplicationMessage::parse(&payload).unwrap(),
            other => panic!("expected CopyData, got {other:?}"),
        }
    }

    /// The SQLSTATE of the ErrorResponse that must come next.
    fn error_code(&mut self) -> String {
        match self.next() {
            BackendMessage::ErrorResponse(e) => e.code,
            other => panic!("expected an ErrorResponse, got {other:?}"),
        }
    }

    fn send(&mut self, kind: u8, body: &[u8]) {
        let mut m = BytesMut::new();
        m.put_u8(kind);
        m.put_i32((body.len() + 4) as i32);
        m.put_slice(body);
        self.sock.write_all(&m).unwrap();
    }

    fn query(&mut self, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body);
    }
}

#[test]
fn answers_replication_commands() {
    let server = FakeWalsender::start(Script {
        slots: vec!["exists".into()],
        ..Script::default()
    });
    let mut c = Client::connect(&server);
    c.query("IDENTIFY_SYSTEM");
    match c.next() {
        BackendMessage::RowDescription(f) => assert_eq!(f.len(), 4),
        other => panic!("{other:?}"),
    }
    match c.next() {
        BackendMessage::DataRow(v) => {
            assert_eq!(v[0].as_deref(), Some(&b"7000000000000000001"[..]));
            assert_eq!(v[2].as_deref(), Some(&b"0/3000148"[..]));
            assert_eq!(v[3], None);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.next(), BackendMessage::CommandComplete { .. }));
    assert!(matches!(c.next(), BackendMessage::ReadyForQuery { .. }));

    c.query("CREATE_REPLICATION_SLOT \"exists\" PHYSICAL");
    assert_eq!(c.error_code(), "42710");
    assert!(matches!(c.next(), BackendMessage::ReadyForQuery { .. }));

    // the slot probe before PostgreSQL 15: CopyBoth, ended by the client's CopyDone
    c.query("START_REPLICATION SLOT \"exists\" 0/3000000 TIMELINE 1");
    assert!(matches!(c.next(), BackendMessage::CopyBothResponse(_)));
    c.send(b'c', b"");
    assert_eq!(c.next(), BackendMessage::CopyDone);
    assert!(matches!(c.next(), BackendMessage::CommandComplete { .. }));
    assert!(matches!(c.next(), BackendMessage::ReadyForQuery { .. }));

    c.query("NOT_A_COMMAND");
    assert_eq!(c.error_code(), "42601");
    assert_eq!(
        server.queries(),
        [
            "IDENTIFY_SYSTEM",
            "CREATE_REPLICATION_SLOT \"exists\" PHYSICAL",
            "START_REPLICATION SLOT \"exists\" 0/3000000 TIMELINE 1",
            "NOT_A_COMMAND"
        ]
    );
}

#[test]
fn streams_scripted_wal_and_records_flush_positions() {
    let wal: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let start = Lsn(0x70_0000);
    let stream = WalStream {
        ending: Ending::QuietUntilFlushed {
            until: Lsn(start.0 + 20_000),
        },
        ..WalStream::new(start, wal.clone())
    };
    let end = stream.end();
    let server = FakeWalsender::start(Script {
        wal: Some(stream),
        ..Script::default()
    });
    let mut c = Client::connect(&server);
    c.query("START_REPLICATION 0/700000 TIMELINE 1");
    assert!(matches!(c.next(), BackendMessage::CopyBothResponse(_)));
    let mut received = Vec::new();
    while received.len() < wal.len() {
        match c.replication_message() {
            ReplicationMessage::XLogData(XLogData {
                data_start,
                wal_end,
                data,
                ..
            }) => {
                assert_eq!(data_start, Lsn(start.0 + received.len() as u64));
                assert_eq!(wal_end, end);
                assert!(data.len() <= 8192);
                received.extend_from_slice(&data);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received, wal);
    // the last WAL comes with a keepalive that asks for nothing
    match c.replication_message() {
        ReplicationMessage::PrimaryKeepalive(k) => {
            assert_eq!(k.wal_end, end);
            assert!(!k.reply_requested);
        }
        other => panic!("{other:?}"),
    }
    let mut status = BytesMut::new();
    StandbyStatusUpdate {
        write_lsn: end,
        flush_lsn: end,
        apply_lsn: Lsn(0),
        client_time: 0,
        reply_requested: false,
    }
    .encode(&mut status);
    c.send(b'd', &status);
    // the server hangs up once the flush position reached `until`
    let mut rest = Vec::new();
    let _ = c.sock.read_to_end(&mut rest);
    assert_eq!(server.flush_positions(), [end]);
}
