// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! `walrelay serve` in the tests: started on a port chosen up front (so a restart after kill -9
//! listens where the standbys look), connection strings for its downstreams, its metrics, and a
//! raw protocol client for the misbehaving ones.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use walrelay_protocol::message::MAX_MESSAGE_LEN;
use walrelay_protocol::{BackendMessage, ErrorFields, Lsn, WalSegmentSize};
use walrelay_testkit::{pg_command, Cluster, Role};

use super::walrelay_cmd::Walrelay;
use super::{poll, wal_files};

/// A primary for relay tests: 1 MB segments, SCRAM over TCP, a `replicator` role (password
/// `rep`), no fsync (its durability is not under test), and `conf` lines.
pub fn primary(name: &str, conf: &[&str]) -> Cluster {
    let mut b = Cluster::builder()
        .name(name)
        .wal_segsize_mb(1)
        .tcp_auth(walrelay_testkit::AuthMethod::ScramSha256)
        .superuser_password("su")
        .role(Role::new("replicator").password("rep").replication())
        .fsync(false)
        .conf("checkpoint_timeout = '30min'");
    for c in conf {
        b = b.conf(c);
    }
    b.start()
}

/// `pg_basebackup -X stream -R -c fast` (Debian 15's) through the relay into `dir`: the standby
/// it makes follows the relay.
pub fn pg_basebackup_through(primary: &Cluster, relay: &Relay, dir: &Path) {
    let out = pg_command(&primary.install().tools().pg_basebackup())
        .args(["-d", &relay.conninfo("replicator", Some("rep"))])
        .arg("-D")
        .arg(dir)
        .args(["-X", "stream", "-R", "-c", "fast", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup through the relay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `dir` holds the complete segment with the byte before `end`, while `receiver`
/// (a pg_receivewal) keeps running.
pub fn wait_complete_segment(
    dir: &Path,
    end: Lsn,
    seg: WalSegmentSize,
    receiver: &mut std::process::Child,
) {
    let want = seg.segno(Lsn(end.0 - 1));
    poll::wait_until(
        &format!("{} to get the segment before {end}", dir.display()),
        || {
            assert!(
                receiver.try_wait().unwrap().is_none(),
                "the receiver exited"
            );
            wal_files::complete_segments(dir, seg)
                .iter()
                .any(|f| f.segment.segno == want)
        },
        || wal_files::listing(dir),
    );
}

/// SIGINT (pg_receivewal's clean stop), then waits for the exit.
pub fn interrupt(child: &mut std::process::Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let _ = child.wait();
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    super::free_port()
}

/// A running `walrelay serve`.
pub struct Relay {
    pub w: Walrelay,
    pub port: u16,
    pub archive: PathBuf,
}

impl Relay {
    /// `walrelay serve -d UPSTREAM -D ARCHIVE --listen 127.0.0.1:PORT EXTRA…`, waited for until it
    /// listens.
    pub fn start(upstream: &str, archive: &Path, extra: &[&str]) -> Relay {
        std::fs::create_dir_all(archive).unwrap();
        let port = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "-d".into(),
            upstream.into(),
            "-D".into(),
            archive.to_str().unwrap().into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut w = Walrelay::start("serve", &args);
        w.wait_log(
            "listening for replication connections",
            super::poll::timeout(),
        );
        Relay {
            w,
            port,
            archive: archive.to_path_buf(),
        }
    }

    /// After [`Walrelay::kill9`] or a stop: the same command again, waited for.
    pub fn restart(&mut self) {
        self.w.restart();
        self.w.wait_log(
            "listening for replication connections",
            super::poll::timeout(),
        );
    }

    /// A connection string for a downstream (libpq's and walrelay's).
    pub fn conninfo(&self, user: &str, password: Option<&str>) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={user}", self.port);
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Asserts the relay still runs and never panicked.
    pub fn assert_healthy(&mut self) {
        self.w.assert_running();
        let log = self.w.full_log();
        assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
    }
}

/// `GET /metrics` of a metrics endpoint, as text.
pub fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The primary's `pg_stat_replication`: application names of the connected walsenders.
pub fn walsenders(primary: &Cluster) -> Vec<String> {
    primary
        .psql_rows("SELECT application_name FROM pg_stat_replication ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// A protocol client over a plain socket, for misbehaving on purpose: it sends what the test
/// says and reads what comes back, message by message, with a deadline.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// From a given local address (to be outside an allow list on the loopback network).
    pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> RawClient {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        Self::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// A StartupMessage with these parameters.
    pub fn startup(&mut self, params: &[(&str, &str)]) {
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        self.send(&msg);
    }

    /// A simple Query.
    pub fn query(&mut self, text: &str) {
        let mut msg = BytesMut::new();
        msg.put_u8(b'Q');
        msg.put_i32(text.len() as i32 + 5);
        msg.put_slice(text.as_bytes());
        msg.put_u8(0);
        self.send(&msg);
    }

    /// The next message; `None` when the server closed the connection.
    pub fn read(&mut self) -> Option<BackendMessage> {
        loop {
            if let Some(m) = BackendMessage::parse(&mut self.buf, MAX_MESSAGE_LEN).unwrap() {
                return Some(m);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the relay: {e}"),
            }
        }
    }

    /// Messages up to and including ReadyForQuery (or the end of the connection).
    pub fn until_ready(&mut self) -> Vec<BackendMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.read() {
            let ready = matches!(m, BackendMessage::ReadyForQuery { .. });
            out.push(m);
            if ready {
                break;
            }
        }
        out
    }

    /// Logs in with trust as a replication connection; returns the messages up to ReadyForQuery.
    pub fn login(addr: SocketAddr, user: &str) -> (RawClient, Vec<BackendMessage>) {
        let mut c = RawClient::connect(addr);
        c.startup(&[("user", user), ("replication", "true")]);
        let msgs = c.until_ready();
        assert!(
            matches!(msgs.last(), Some(BackendMessage::ReadyForQuery { .. })),
            "login failed: {msgs:?}"
        );
        (c, msgs)
    }

    /// Logs in with SCRAM-SHA-256 as a replication connection (postgres-protocol's client side,
    /// what walrelay's own client uses); returns the client and every message the server sent,
    /// up to ReadyForQuery or the error that ended the attempt.
    pub fn login_scram(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> (RawClient, Vec<BackendMessage>) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
        use postgres_protocol::message::frontend;
        use walrelay_protocol::message::Authentication;
        let mut c = RawClient::connect(addr);
        c.startup(&[("user", user), ("replication", "true")]);
        let mut seen = Vec::new();
        let Some(first) = c.read() else {
            return (c, seen);
        };
        let is_sasl = matches!(
            &first,
            BackendMessage::Authentication(Authentication::Sasl { .. })
        );
        seen.push(first);
        if !is_sasl {
            return (c, seen);
        }
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap();
        c.send(&out);
        match c.read() {
            Some(BackendMessage::Authentication(Authentication::SaslContinue { data })) => {
                scram.update(&data).unwrap();
            }
            other => {
                seen.extend(other);
                return (c, seen);
            }
        }
        let mut out = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut out).unwrap();
        c.send(&out);
        match c.read() {
            Some(BackendMessage::Authentication(Authentication::SaslFinal { data })) => {
                scram
                    .finish(&data)
                    .expect("the relay proved it knows the verifier");
            }
            other => {
                seen.extend(other);
                return (c, seen);
            }
        }
        seen.extend(c.until_ready());
        (c, seen)
    }

    /// Whether the server closed the connection, waiting at most `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// The ErrorResponse among `msgs`, if any.
pub fn error_of(msgs: &[BackendMessage]) -> Option<&ErrorFields> {
    msgs.iter().find_map(|m| match m {
        BackendMessage::ErrorResponse(e) => Some(e),
        _ => None,
    })
}
