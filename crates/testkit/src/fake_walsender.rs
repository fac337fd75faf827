//! A scripted fake walsender, for the misbehaviour a real server will not produce.
//!
//! [`FakeWalsender::start`] listens on `127.0.0.1:0` and serves every connection on a thread of
//! its own (so it works the same under a tokio test, a plain test, or a child process of the test):
//! it answers `SSLRequest` with `N`, accepts any startup with AuthenticationOk, reports the
//! scripted `server_version`, and answers the replication commands walrelay sends:
//!
//! * `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`, `READ_REPLICATION_SLOT`,
//!   `CREATE_REPLICATION_SLOT` (refused for a slot in [`Script::slots`]), `DROP_REPLICATION_SLOT`;
//! * `START_REPLICATION`: with a [`Script::wal`], streams that WAL in XLogData messages and ends
//!   as its [`Ending`] says, recording every flush position the client reports
//!   ([`FakeWalsender::flush_positions`]); without one, it is the slot probe walrelay makes before
//!   PostgreSQL 15 — CopyBothResponse for a slot in [`Script::slots`] (ended by the client's
//!   CopyDone), "does not exist" otherwise;
//! * `BASE_BACKUP`: the list of [`Step`]s in [`Script::base_backup`], usually built by
//!   [`crate::fake_backup`] from a [`FakeBackup`](crate::fake_backup::FakeBackup), then edited to
//!   misbehave;
//! * `TIMELINE_HISTORY` of a timeline in [`Script::histories`];
//! * `START_REPLICATION … TIMELINE t` for a timeline in [`Script::historic`] (one that ended on this
//!   server): exactly what walsender.c does — a start past its end is refused ("not in this
//!   server's history"), a start at its end gets the one-row result (next timeline, its start)
//!   with no COPY, a start before it streams up to the end, sends CopyDone, waits for the client's
//!   CopyDone and then sends that result; the connection goes on with the next command;
//! * anything else: a syntax error.
//!
//! Every query is recorded ([`FakeWalsender::queries`]). The messages are encoded by the protocol
//! crate ([`crate::wire`]), the same code a walrelay server would use.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use walrelay_protocol::{Lsn, StandbyStatusUpdate};

use crate::wire;

/// One thing the server does in reply to `BASE_BACKUP`.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send these bytes (one or more complete messages).
    Send(Vec<u8>),
    /// Wait this long before the next step.
    Sleep(Duration),
    /// Never answer again (the client must give up on its own).
    Stall,
    /// Close the connection.
    Close,
}

/// How a scripted WAL stream ends once all its WAL is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Keepalives asking for a reply every 50 ms, until the client goes away (30 s at most).
    AskForReplies,
    /// One keepalive that asks for nothing, in the same write as the last WAL, then silence until
    /// a flush report reaches `until` (10 s at most), then the connection is closed: what an idle
    /// walsender does after a commit.
    QuietUntilFlushed { until: Lsn },
}

/// The reply to `START_REPLICATION`: `wal` from `start`, in XLogData messages of
/// `message_size` bytes.
#[derive(Clone, Debug)]
pub struct WalStream {
    pub start: Lsn,
    pub wal: Arc<Vec<u8>>,
    pub message_size: usize,
    pub ending: Ending,
}

impl WalStream {
    /// `wal` from `start` in 8 kB messages, ending with keepalives that ask for replies.
    pub fn new(start: Lsn, wal: Vec<u8>) -> WalStream {
        WalStream {
            start,
            wal: Arc::new(wal),
            message_size: 8192,
            ending: Ending::AskForReplies,
        }
    }

    /// Where the WAL ends: the server's `wal_end` in every message.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.wal.len() as u64)
    }
}

/// What the fake server says about itself and how it answers.
#[derive(Clone, Debug)]
pub struct Script {
    /// The `server_version` parameter status (`15.4`, `9.6.24`, `19devel`).
    pub server_version: String,
    /// `IDENTIFY_SYSTEM`'s `systemid`.
    pub system_identifier: u64,
    /// `IDENTIFY_SYSTEM`'s `timeline`.
    pub timeline: u32,
    /// `IDENTIFY_SYSTEM`'s `xlogpos`.
    pub xlogpos: Lsn,
    /// `SHOW wal_segment_size` (`16MB`, `1MB`).
    pub wal_segment_size: String,
    /// Physical slots that exist.
    pub slots: Vec<String>,
    /// The reply to `BASE_BACKUP`.
    pub base_backup: Vec<Step>,
    /// The reply to `START_REPLICATION`, if it streams WAL.
    pub wal: Option<WalStream>,
    /// `TIMELINE_HISTORY` replies: (timeline, content of `TTTTTTTT.history`).
    pub histories: Vec<(u32, String)>,
    /// Timelines that ended on this server, for `START_REPLICATION … TIMELINE t` with `t` below
    /// [`Script::timeline`].
    pub historic: Vec<HistoricTimeline>,
}

/// A timeline that ended on the fake server.
#[derive(Clone, Debug)]
pub struct HistoricTimeline {
    pub timeline: u32,
    /// Its switchpoint: the first LSN of `next`.
    pub end: Lsn,
    pub next: u32,
    /// Its WAL, from some segment start up to at least `end`, for starts before `end`.
    pub wal: Option<WalStream>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            server_version: "15.4".into(),
            system_identifier: 7_000_000_000_000_000_001,
            timeline: 1,
            xlogpos: Lsn(0x300_0148),
            wal_segment_size: "16MB".into(),
            slots: Vec::new(),
            base_backup: Vec::new(),
            wal: None,
            histories: Vec::new(),
            historic: Vec::new(),
        }
    }
}

/// What the server saw, shared by its connection threads.
#[derive(Debug, Default)]
struct Seen {
    queries: Vec<String>,
    flush_positions: Vec<Lsn>,
}

/// A running fake walsender; stops accepting connections when dropped.
pub struct FakeWalsender {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeWalsender {
    /// Listens on a free port of `127.0.0.1` and serves `script` to every connection.
    pub fn start(script: Script) -> FakeWalsender {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("fake walsender: bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake walsender: local address: {e}"))
            .port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let script = Arc::new(script);
        thread::spawn(move || {
            for sock in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(sock) = sock else { continue };
                let (script, seen) = (script.clone(), seen2.clone());
                thread::spawn(move || {
                    let _ = serve(sock, &script, &seen);
                });
            }
        });
        FakeWalsender { port, seen, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string for this server (no TLS).
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=rep sslmode=disable", self.port)
    }

    /// Every query received so far, in order, over all connections.
    pub fn queries(&self) -> Vec<String> {
        lock(&self.seen).queries.clone()
    }

    /// Every flush position a client reported during a scripted WAL stream, in order.
    pub fn flush_positions(&self) -> Vec<Lsn> {
        lock(&self.seen).flush_positions.clone()
    }
}

impl Drop for FakeWalsender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `SSLRequest`'s request code.
const SSL_REQUEST_CODE: u32 = 80_877_103;

/// Reads `n` bytes; `None` at end of input.
fn read_bytes(sock: &mut TcpStream, n: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; n];
    match sock.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// A message body after its length word (which counts itself).
fn read_body(sock: &mut TcpStream, len: [u8; 4]) -> io::Result<Option<Vec<u8>>> {
    let len = u32::from_be_bytes(len) as usize;
    let Some(body_len) = len.checked_sub(4) else {
        return Err(io::Error::other("frontend message length below 4"));
    };
    read_bytes(sock, body_len)
}

/// Reads one typed frontend message; `None` at end of input.
fn read_message(sock: &mut TcpStream) -> io::Result<Option<(u8, Vec<u8>)>> {
    let Some(head) = read_bytes(sock, 5)? else {
        return Ok(None);
    };
    let body = read_body(sock, [head[1], head[2], head[3], head[4]])?;
    Ok(body.map(|b| (head[0], b)))
}

/// The startup packet (after any SSLRequest, answered `N`) and the server's greeting.
fn startup(sock: &mut TcpStream, script: &Script) -> io::Result<bool> {
    loop {
        let Some(len) = read_bytes(sock, 4)? else {
            return Ok(false);
        };
        let Some(body) = read_body(sock, [len[0], len[1], len[2], len[3]])? else {
            return Ok(false);
        };
        if body.get(..4) == Some(&SSL_REQUEST_CODE.to_be_bytes()[..]) {
            sock.write_all(b"N")?;
            continue;
        }
        break;
    }
    let mut out = wire::authentication_ok();
    out.extend(wire::parameter_status(
        "server_version",
        &script.server_version,
    ));
    out.extend(wire::parameter_status("integer_datetimes", "on"));
    out.extend(wire::backend_key_data(4242, 7));
    out.extend(wire::ready_for_query());
    sock.write_all(&out)?;
    Ok(true)
}

fn serve(mut sock: TcpStream, script: &Script, seen: &Arc<Mutex<Seen>>) -> io::Result<()> {
    if !startup(&mut sock, script)? {
        return Ok(());
    }
    let mut in_copy_both = false;
    while let Some((kind, body)) = read_message(&mut sock)? {
        match kind {
            b'X' => return Ok(()),
            b'c' if in_copy_both => {
                in_copy_both = false;
                let mut out = wire::copy_done();
                out.extend(wire::command_complete("START_STREAMING"));
                out.extend(wire::ready_for_query());
                sock.write_all(&out)?;
            }
            b'Q' => {
                let text = body.strip_suffix(&[0]).unwrap_or(&body);
                let q = String::from_utf8_lossy(text).into_owned();
                lock(seen).queries.push(q.clone());
                if q.starts_with("BASE_BACKUP") {
                    if !run_steps(&mut sock, &script.base_backup)? {
                        return Ok(());
                    }
                } else if let Some((h, start)) = historic_start(script, &q) {
                    if !end_of_timeline(&mut sock, h, start, seen)? {
                        return Ok(());
                    }
                } else if let (true, Some(wal)) = (q.starts_with("START_REPLICATION"), &script.wal)
                {
                    return stream_wal(sock, wal, seen);
                } else {
                    sock.write_all(&answer(script, &q, &mut in_copy_both))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Plays `BASE_BACKUP`'s steps; false when the connection is to end.
fn run_steps(sock: &mut TcpStream, steps: &[Step]) -> io::Result<bool> {
    for step in steps {
        match step {
            Step::Send(b) => sock.write_all(b)?,
            Step::Sleep(d) => thread::sleep(*d),
            Step::Stall => {
                // Keep the socket open, answer nothing, until the client leaves.
                let mut sink = [0u8; 4096];
                while sock.read(&mut sink)? > 0 {}
                return Ok(false);
            }
            Step::Close => return Ok(false),
        }
    }
    Ok(true)
}

/// The slot name in a command: the first double-quoted word.
fn quoted_name(q: &str) -> String {
    q.split('"').nth(1).unwrap_or("").to_string()
}

fn answer(s: &Script, q: &str, in_copy_both: &mut bool) -> Vec<u8> {
    let mut out = Vec::new();
    if q.starts_with("IDENTIFY_SYSTEM") {
        out.extend(wire::row_description(&[
            "systemid", "timeline", "xlogpos", "dbname",
        ]));
        out.extend(wire::data_row(&[
            Some(&s.system_identifier.to_string()),
            Some(&s.timeline.to_string()),
            Some(&s.xlogpos.to_string()),
            None,
        ]));
        out.extend(wire::command_complete("IDENTIFY_SYSTEM"));
    } else if q == "SHOW wal_segment_size" {
        out.extend(wire::row_description(&["wal_segment_size"]));
        out.extend(wire::data_row(&[Some(&s.wal_segment_size)]));
        out.extend(wire::command_complete("SHOW"));
    } else if q.starts_with("READ_REPLICATION_SLOT") {
        let name = quoted_name(q);
        out.extend(wire::row_description(&[
            "slot_type",
            "restart_lsn",
            "restart_tli",
        ]));
        if s.slots.contains(&name) {
            out.extend(wire::data_row(&[
                Some("physical"),
                Some("0/3000000"),
                Some("1"),
            ]));
        } else {
            out.extend(wire::data_row(&[None, None, None]));
        }
        out.extend(wire::command_complete("READ_REPLICATION_SLOT"));
    } else if q.starts_with("CREATE_REPLICATION_SLOT") {
        let name = quoted_name(q);
        if s.slots.contains(&name) {
            out.extend(wire::error_response(
                "ERROR",
                "42710",
                &format!("replication slot \"{name}\" already exists"),
            ));
        } else {
            out.extend(wire::row_description(&[
                "slot_name",
                "consistent_point",
                "snapshot_name",
                "output_plugin",
            ]));
            out.extend(wire::data_row(&[
                Some(&name),
                Some("0/3000148"),
                None,
                None,
            ]));
            out.extend(wire::command_complete("CREATE_REPLICATION_SLOT"));
        }
    } else if let Some(tli) = q.strip_prefix("TIMELINE_HISTORY ") {
        let tli: u32 = tli.trim().parse().unwrap_or(0);
        match s.histories.iter().find(|(t, _)| *t == tli) {
            Some((_, content)) => {
                out.extend(wire::row_description(&["filename", "content"]));
                out.extend(wire::data_row(&[
                    Some(&format!("{tli:08X}.history")),
                    Some(content),
                ]));
                out.extend(wire::command_complete("TIMELINE_HISTORY"));
            }
            None => out.extend(wire::error_response(
                "ERROR",
                "58P01",
                &format!(
                    "could not open file \"pg_wal/{tli:08X}.history\": No such file or directory"
                ),
            )),
        }
    } else if q.starts_with("DROP_REPLICATION_SLOT") {
        out.extend(wire::command_complete("DROP_REPLICATION_SLOT"));
    } else if q.starts_with("START_REPLICATION") {
        let name = quoted_name(q);
        if s.slots.contains(&name) {
            *in_copy_both = true;
            return wire::copy_both_response();
        }
        out.extend(wire::error_response(
            "ERROR",
            "42704",
            &format!("replication slot \"{name}\" does not exist"),
        ));
    } else {
        out.extend(wire::error_response(
            "ERROR",
            "42601",
            "syntax error (the fake server does not know this command)",
        ));
    }
    out.extend(wire::ready_for_query());
    out
}

/// The historic timeline and start position a `START_REPLICATION … TIMELINE t` asks for, when `t`
/// is one of [`Script::historic`].
fn historic_start<'s>(script: &'s Script, q: &str) -> Option<(&'s HistoricTimeline, Lsn)> {
    if !q.starts_with("START_REPLICATION") {
        return None;
    }
    let words: Vec<&str> = q.split_whitespace().collect();
    let tli: u32 = words
        .iter()
        .position(|w| *w == "TIMELINE")
        .and_then(|i| words.get(i + 1))
        .and_then(|t| t.parse().ok())?;
    let start: Lsn = words.iter().find(|w| w.contains('/'))?.parse().ok()?;
    script
        .historic
        .iter()
        .find(|h| h.timeline == tli)
        .map(|h| (h, start))
}

/// The end of a historic timeline as walsender.c's `StartReplication` handles it. False when the
/// connection is to end.
fn end_of_timeline(
    sock: &mut TcpStream,
    h: &HistoricTimeline,
    start: Lsn,
    seen: &Arc<Mutex<Seen>>,
) -> io::Result<bool> {
    if start > h.end {
        let mut out = wire::error_response_detail(
            "ERROR",
            "XX000",
            &format!(
                "requested starting point {start} on timeline {} is not in this server's history",
                h.timeline
            ),
            &format!(
                "This server's history forked from timeline {} at {}.",
                h.timeline, h.end
            ),
        );
        out.extend(wire::ready_for_query());
        sock.write_all(&out)?;
        return Ok(true);
    }
    if start < h.end {
        let Some(w) = &h.wal else {
            return Ok(false);
        };
        sock.write_all(&wire::copy_both_response())?;
        let from = (start.0.saturating_sub(w.start.0)) as usize;
        let to = ((h.end.0 - w.start.0) as usize).min(w.wal.len());
        let mut at = start;
        for chunk in w.wal[from.min(to)..to].chunks(w.message_size.max(1)) {
            sock.write_all(&wire::xlog_data(at, h.end, chunk))?;
            at = Lsn(at.0 + chunk.len() as u64);
        }
        sock.write_all(&wire::copy_done())?;
        // The walsender waits for the client's CopyDone before the result (WalSndLoop).
        loop {
            match read_message(sock)? {
                Some((b'c', _)) => break,
                Some((b'd', body)) => {
                    if let Ok(update) = StandbyStatusUpdate::parse(&body) {
                        lock(seen).flush_positions.push(update.flush_lsn);
                    }
                }
                Some(_) => {}
                None => return Ok(false),
            }
        }
    }
    // One row (next_tli int8, next_tli_startpos text), then CommandComplete twice: the second is
    // the one libpqrcv_endstreaming needs ("START_REPLICATION" from 14 on, "SELECT" before).
    let mut out = wire::row_description(&["next_tli", "next_tli_startpos"]);
    out.extend(wire::data_row(&[
        Some(&h.next.to_string()),
        Some(&h.end.to_string()),
    ]));
    out.extend(wire::command_complete("START_STREAMING"));
    out.extend(wire::command_complete("START_REPLICATION"));
    out.extend(wire::ready_for_query());
    sock.write_all(&out)?;
    Ok(true)
}

/// `START_REPLICATION` with WAL to send: CopyBothResponse, the WAL, then the ending. A second
/// thread reads the client's status updates meanwhile.
fn stream_wal(mut sock: TcpStream, w: &WalStream, seen: &Arc<Mutex<Seen>>) -> io::Result<()> {
    sock.write_all(&wire::copy_both_response())?;
    let disconnected = Arc::new(AtomicBool::new(false));
    let mut reader = sock.try_clone()?;
    let (disconnected2, seen2) = (disconnected.clone(), seen.clone());
    let status_reader = thread::spawn(move || {
        while let Ok(Some((kind, body))) = read_message(&mut reader) {
            if kind != b'd' {
                continue;
            }
            if let Ok(update) = StandbyStatusUpdate::parse(&body) {
                lock(&seen2).flush_positions.push(update.flush_lsn);
            }
        }
        disconnected2.store(true, Ordering::SeqCst);
    });

    let end = w.end();
    let size = w.message_size.max(1);
    let messages = w.wal.chunks(size).count();
    for (i, chunk) in w.wal.chunks(size).enumerate() {
        let at = Lsn(w.start.0 + (i * size) as u64);
        let mut out = wire::xlog_data(at, end, chunk);
        if i + 1 == messages && w.ending != Ending::AskForReplies {
            out.extend(wire::keepalive(end, false));
        }
        if sock.write_all(&out).is_err() {
            break;
        }
    }
    match w.ending {
        Ending::QuietUntilFlushed { until } => {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if disconnected.load(Ordering::SeqCst)
                    || lock(seen).flush_positions.iter().any(|&f| f >= until)
                {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = sock.shutdown(Shutdown::Both);
        }
        Ending::AskForReplies => {
            let t0 = Instant::now();
            while !disconnected.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
                if sock.write_all(&wire::keepalive(end, true)).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = status_reader.join();
    Ok(())
}
