//! A scripted fake PostgreSQL server for the misbehaviour a real server will not produce.
//!
//! It listens on `127.0.0.1:0`, answers `SSLRequest` with `N`, accepts any startup with
//! AuthenticationOk, reports the scripted `server_version`, and answers the replication commands
//! walrelay's bootstrap sends: `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`,
//! `READ_REPLICATION_SLOT`, `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`,
//! `START_REPLICATION` (only to be ended with CopyDone: the slot probe before PostgreSQL 15) and
//! `BASE_BACKUP`, whose reply is a list of [`Step`]s — usually built by [`pg15_steps`] or
//! [`legacy_steps`] from a [`FakeBackup`], then edited to misbehave.
//!
//! Every query received is recorded in [`FakeServer::queries`]. The server serves any number of
//! connections until it is dropped.

// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

/// What the fake server says about itself.
#[derive(Clone, Debug)]
pub struct Script {
    pub server_version: String,
    pub system_identifier: u64,
    pub timeline: u32,
    pub xlogpos: String,
    pub wal_segment_size: String,
    /// Physical slots that exist.
    pub slots: Vec<String>,
    /// The reply to `BASE_BACKUP`.
    pub base_backup: Vec<Step>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            server_version: "15.4".into(),
            system_identifier: 7_000_000_000_000_000_001,
            timeline: 1,
            xlogpos: "0/3000148".into(),
            wal_segment_size: "16MB".into(),
            slots: Vec::new(),
            base_backup: Vec::new(),
        }
    }
}

pub struct FakeServer {
    pub port: u16,
    pub queries: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let q = queries.clone();
        let script = Arc::new(Mutex::new(script));
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                let q = q.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, script, q).await;
                });
            }
        });
        FakeServer {
            port,
            queries,
            task,
        }
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

async fn read_exact(sock: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    sock.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn serve(
    mut sock: TcpStream,
    script: Arc<Mutex<Script>>,
    queries: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    // Startup (after an optional SSLRequest).
    loop {
        let len = u32::from_be_bytes(read_exact(&mut sock, 4).await?.try_into().unwrap());
        let body = read_exact(&mut sock, len as usize - 4).await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code == 80_877_103 {
            sock.write_all(b"N").await?;
            continue;
        }
        break;
    }
    let s = script.lock().unwrap().clone();
    let mut out = msg(b'R', &0u32.to_be_bytes());
    out.extend(parameter_status("server_version", &s.server_version));
    out.extend(parameter_status("integer_datetimes", "on"));
    let mut key = 4242i32.to_be_bytes().to_vec();
    key.extend(7i32.to_be_bytes());
    out.extend(msg(b'K', &key));
    out.extend(ready_for_query());
    sock.write_all(&out).await?;

    let mut in_copy_both = false;
    loop {
        let kind = read_exact(&mut sock, 1).await?[0];
        let len = u32::from_be_bytes(read_exact(&mut sock, 4).await?.try_into().unwrap());
        let body = read_exact(&mut sock, len as usize - 4).await?;
        match kind {
            b'X' => return Ok(()),
            b'c' if in_copy_both => {
                in_copy_both = false;
                let mut out = copy_done();
                out.extend(command_complete("START_STREAMING"));
                out.extend(ready_for_query());
                sock.write_all(&out).await?;
            }
            b'd' | b'c' => {}
            b'Q' => {
                let q = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
                queries.lock().unwrap().push(q.clone());
                if q.starts_with("BASE_BACKUP") {
                    for step in s.base_backup.clone() {
                        match step {
                            Step::Send(b) => sock.write_all(&b).await?,
                            Step::Sleep(d) => tokio::time::sleep(d).await,
                            Step::Stall => {
                                // Keep the socket open, answer nothing, until the client leaves.
                                let mut sink = [0u8; 4096];
                                while sock.read(&mut sink).await? > 0 {}
                                return Ok(());
                            }
                            Step::Close => return Ok(()),
                        }
                    }
                    continue;
                }
                let reply = answer(&s, &q, &mut in_copy_both);
                sock.write_all(&reply).await?;
            }
            _ => {}
        }
    }
}

fn quoted_name(q: &str) -> String {
    q.split('"').nth(1).unwrap_or("").to_string()
}

fn answer(s: &Script, q: &str, in_copy_both: &mut bool) -> Vec<u8> {
    let mut out = Vec::new();
    if q == "IDENTIFY_SYSTEM" {
        out.extend(row_description(&[
            "systemid", "timeline", "xlogpos", "dbname",
        ]));
        out.extend(data_row(&[
            Some(&s.system_identifier.to_string()),
            Some(&s.timeline.to_string()),
            Some(&s.xlogpos),
            None,
        ]));
        out.extend(command_complete("IDENTIFY_SYSTEM"));
    } else if q == "SHOW wal_segment_size" {
        out.extend(row_description(&["wal_segment_size"]));
        out.extend(data_row(&[Some(&s.wal_segment_size)]));
        out.extend(command_complete("SHOW"));
    } else if q.starts_with("READ_REPLICATION_SLOT") {
        let name = quoted_name(q);
        out.extend(row_description(&[
            "slot_type",
            "restart_lsn",
            "restart_tli",
        ]));
        if s.slots.contains(&name) {
            out.extend(data_row(&[Some("physical"), Some("0/3000000"), Some("1")]));
        } else {
            out.extend(data_row(&[None, None, None]));
        }
        out.extend(command_complete("READ_REPLICATION_SLOT"));
    } else if q.starts_with("CREATE_REPLICATION_SLOT") {
        let name = quoted_name(q);
        if s.slots.contains(&name) {
            out.extend(error_response(
                "ERROR",
                "42710",
                &format!("replication slot \"{name}\" already exists"),
            ));
        } else {
            out.extend(row_description(&[
                "slot_name",
                "consistent_point",
                "snapshot_name",
                "output_plugin",
            ]));
            out.extend(data_row(&[Some(&name), Some("0/3000148"), None, None]));
            out.extend(command_complete("CREATE_REPLICATION_SLOT"));
        }
    } else if q.starts_with("DROP_REPLICATION_SLOT") {
        out.extend(command_complete("DROP_REPLICATION_SLOT"));
    } else if q.starts_with("START_REPLICATION") {
        let name = quoted_name(q);
        if s.slots.contains(&name) {
            *in_copy_both = true;
            return msg(b'W', &[0, 0, 0]);
        }
        out.extend(error_response(
            "ERROR",
            "42704",
            &format!("replication slot \"{name}\" does not exist"),
        ));
    } else {
        out.extend(error_response(
            "ERROR",
            "42601",
            "syntax error (the fake server does not know this command)",
        ));
    }
    out.extend(ready_for_query());
    out
}

// ------------------------------------------------------------------ messages

pub fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend(((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(value));
    msg(b'S', &b)
}

pub fn ready_for_query() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// Text columns.
pub fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut b = (columns.len() as u16).to_be_bytes().to_vec();
    for c in columns {
        b.extend(cstr(c));
        b.extend(0u32.to_be_bytes()); // table oid
        b.extend(0u16.to_be_bytes()); // column number
        b.extend(25u32.to_be_bytes()); // text
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend(0u16.to_be_bytes());
    }
    msg(b'T', &b)
}

pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => b.extend((-1i32).to_be_bytes()),
            Some(s) => {
                b.extend((s.len() as i32).to_be_bytes());
                b.extend(s.as_bytes());
            }
        }
    }
    msg(b'D', &b)
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

pub fn copy_out_response() -> Vec<u8> {
    msg(b'H', &[0, 0, 0])
}

pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    msg(b'd', payload)
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', b"")
}

fn fields(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(t);
        b.extend(cstr(v));
    }
    b.push(0);
    b
}

pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    msg(b'E', &fields(severity, code, message))
}

pub fn notice(severity: &str, code: &str, message: &str) -> Vec<u8> {
    msg(b'N', &fields(severity, code, message))
}

/// A one-row result set of (`recptr`, `tli`).
pub fn position(lsn: &str, tli: u32) -> Vec<u8> {
    let mut out = row_description(&["recptr", "tli"]);
    out.extend(data_row(&[Some(lsn), Some(&tli.to_string())]));
    out.extend(command_complete("SELECT"));
    out
}

// ------------------------------------------------------------------ base backups

/// The content of a fake base backup.
#[derive(Clone, Debug)]
pub struct FakeBackup {
    pub start: String,
    pub end: String,
    pub timeline: u32,
    /// `(oid, server location, archive bytes)`.
    pub tablespaces: Vec<(u32, String, Vec<u8>)>,
    pub base: Vec<u8>,
    pub manifest: Option<Vec<u8>>,
}

fn header_rows(b: &FakeBackup) -> Vec<u8> {
    let mut out = row_description(&["spcoid", "spclocation", "size"]);
    for (oid, loc, data) in &b.tablespaces {
        out.extend(data_row(&[
            Some(&oid.to_string()),
            Some(loc),
            Some(&(data.len() / 1024).to_string()),
        ]));
    }
    out.extend(data_row(&[
        None,
        None,
        Some(&(b.base.len() / 1024).to_string()),
    ]));
    out.extend(command_complete("SELECT"));
    out
}

/// Splits `data` into CopyData messages of at most 8 kB, each payload prefixed by `prefix`.
fn chunks(data: &[u8], prefix: Option<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(8192) {
        let mut p = Vec::with_capacity(c.len() + 1);
        if let Some(t) = prefix {
            p.push(t);
        }
        p.extend(c);
        out.extend(copy_data(&p));
    }
    out
}

/// The start and header of any version, as separate steps so tests can cut in between.
pub fn preamble(b: &FakeBackup) -> Vec<Step> {
    vec![
        Step::Send(position(&b.start, b.timeline)),
        Step::Send(header_rows(b)),
    ]
}

/// The trailer after the archives: end position, CommandComplete, ReadyForQuery.
pub fn trailer(b: &FakeBackup) -> Vec<Step> {
    let mut out = position(&b.end, b.timeline);
    out.extend(command_complete("BASE_BACKUP"));
    out.extend(ready_for_query());
    vec![Step::Send(out)]
}

/// PostgreSQL 15+: one COPY with 'n'/'d'/'p'/'m' messages.
pub fn pg15_archive_steps(b: &FakeBackup) -> Vec<Step> {
    let mut out = copy_out_response();
    let mut done: u64 = 0;
    let mut archive = |out: &mut Vec<u8>, name: &str, loc: &str, data: &[u8]| {
        let mut n = vec![b'n'];
        n.extend(cstr(name));
        n.extend(cstr(loc));
        out.extend(copy_data(&n));
        out.extend(chunks(data, Some(b'd')));
        done += data.len() as u64;
        let mut p = vec![b'p'];
        p.extend(done.to_be_bytes());
        out.extend(copy_data(&p));
    };
    for (oid, loc, data) in &b.tablespaces {
        archive(&mut out, &format!("{oid}.tar"), loc, data);
    }
    archive(&mut out, "base.tar", "", &b.base);
    if let Some(m) = &b.manifest {
        out.extend(copy_data(b"m"));
        out.extend(chunks(m, Some(b'd')));
    }
    out.extend(copy_done());
    vec![Step::Send(out)]
}

pub fn pg15_steps(b: &FakeBackup) -> Vec<Step> {
    let mut steps = preamble(b);
    steps.extend(pg15_archive_steps(b));
    steps.extend(trailer(b));
    steps
}

/// Before PostgreSQL 15: a COPY per tablespace (header order: tablespaces, then base), then one
/// for the manifest.
pub fn legacy_steps(b: &FakeBackup) -> Vec<Step> {
    let mut steps = preamble(b);
    let mut out = Vec::new();
    for (_, _, data) in &b.tablespaces {
        out.extend(copy_out_response());
        out.extend(chunks(data, None));
        out.extend(copy_done());
    }
    out.extend(copy_out_response());
    out.extend(chunks(&b.base, None));
    out.extend(copy_done());
    if let Some(m) = &b.manifest {
        out.extend(copy_out_response());
        out.extend(chunks(m, None));
        out.extend(copy_done());
    }
    steps.push(Step::Send(out));
    steps.extend(trailer(b));
    steps
}

/// A backup manifest as `backup_manifest.c` writes it, CRC-32C per file, with its SHA-256.
/// `files` are `(path as in the manifest, content)`.
pub fn manifest(files: &[(&str, &[u8])], wal_ranges: &[(u32, &str, &str)]) -> Vec<u8> {
    let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
    let entries: Vec<String> = files
        .iter()
        .map(|(path, data)| {
            format!(
                "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2024-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                data.len(),
                hex::encode(crc32c::crc32c(data).to_le_bytes())
            )
        })
        .collect();
    text.push_str(&entries.join(",\n"));
    text.push_str("\n],\n\"WAL-Ranges\": [\n");
    let ranges: Vec<String> = wal_ranges
        .iter()
        .map(|(tli, s, e)| {
            format!("{{ \"Timeline\": {tli}, \"Start-LSN\": \"{s}\", \"End-LSN\": \"{e}\" }}")
        })
        .collect();
    text.push_str(&ranges.join(",\n"));
    text.push_str("\n],\n");
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    text.into_bytes()
}
