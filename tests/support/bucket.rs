// Test-only helpers: a failed step panics with its message.
#![allow(clippy::unwrap_used)]

//! Judging what `receive -D s3://…` put into a bucket: the objects of a cluster's WAL, fetched,
//! decompressed and checked (a whole segment, the SHA-256 stored with it), mirrored into a local
//! directory as plain files — where the directory helpers ([`super::wal_files`]) compare them with
//! the server's own `pg_wal`.

use std::fs;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use walrelay_protocol::{SegmentId, TimelineId, WalFileName, WalSegmentSize};
use walrelay_store::{open_store, ArchiveLocation, ArchiveStore, WalLayout};
use walrelay_testkit::{AzuriteServer, S3Server, StoreServer};

/// A runtime for the store's async calls from synchronous tests.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Starts a server for this test process and puts its endpoint and credentials into the
/// environment — which every `walrelay` the test starts, and every PostgreSQL server (its
/// restore_command), inherits.
pub fn start_server(bucket: &str) -> S3Server {
    exported(S3Server::start(bucket).unwrap())
}

/// Starts an Azurite server with `container` for this test process and puts its settings into the
/// environment, as [`start_server`] does for S3.
pub fn start_azurite(container: &str) -> AzuriteServer {
    exported(AzuriteServer::start(container).unwrap())
}

/// `server`, its settings put into this process's environment.
fn exported<S: StoreServer>(server: S) -> S {
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    server
}

/// `walrelay receive` from `primary` into the store `url` through `spool`, as a one-shot run
/// whose environment a test can change (credentials, endpoint).
pub fn receive_once(
    primary: &walrelay_testkit::Cluster,
    url: &str,
    spool: &Path,
) -> super::bootstrap_cli::Bootstrap {
    let spool = spool.to_str().expect("a UTF-8 spool path");
    super::bootstrap_cli::Bootstrap::command_line(&[
        "receive",
        "-d",
        &primary.replication_conninfo(),
        "-D",
        url,
        "--spool",
        spool,
    ])
}

/// The store a URL names.
pub fn store(url: &str) -> Arc<dyn ArchiveStore> {
    let ArchiveLocation::Store(u) = ArchiveLocation::parse(url).unwrap() else {
        panic!("{url} is not a store URL")
    };
    open_store(&u).unwrap()
}

/// The cluster's WAL file names in the store.
pub fn wal_names(store: &dyn ArchiveStore, sysid: u64) -> Vec<String> {
    let layout = WalLayout::new(sysid);
    let mut names: Vec<String> = runtime()
        .block_on(store.list(&layout.wal_prefix()))
        .unwrap()
        .iter()
        .filter_map(|o| layout.file_name(&o.name).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Whether the store holds the complete segment (any compression).
pub fn has_segment(
    store: &dyn ArchiveStore,
    sysid: u64,
    segment: SegmentId,
    seg: WalSegmentSize,
) -> bool {
    let name = segment.file_name(seg);
    wal_names(store, sysid)
        .iter()
        .any(|n| n.get(..24) == Some(name.as_str()) && !n.ends_with(".partial"))
}

/// Fetches every WAL object of the cluster into `into` as plain files: segments decompressed,
/// each checked to be exactly one segment whose SHA-256 is the one stored with it. Returns the
/// segment names.
pub fn mirror(
    store: &dyn ArchiveStore,
    sysid: u64,
    seg: WalSegmentSize,
    into: &Path,
) -> Vec<String> {
    fs::create_dir_all(into).unwrap();
    let layout = WalLayout::new(sysid);
    let mut segments = Vec::new();
    for name in wal_names(store, sysid) {
        let fetched = runtime()
            .block_on(store.get(&layout.object(&name)))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} listed but not found"));
        match WalFileName::parse(&name) {
            Some(WalFileName::Segment { partial, .. }) => {
                assert!(!partial, "{name}: no .partial object may exist");
                let (wal, truncated) = walrelay_archive::decode_bytes(
                    Path::new(&name),
                    &fetched.bytes,
                    seg.as_u64(),
                    false,
                )
                .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
                assert!(!truncated);
                assert_eq!(
                    wal.len() as u64,
                    seg.as_u64(),
                    "{name}: not a whole segment"
                );
                let sha: [u8; 32] = Sha256::digest(&wal).into();
                assert_eq!(
                    fetched.attrs.wal_sha256,
                    Some(sha),
                    "{name}: the SHA-256 stored with it"
                );
                let plain = &name[..24];
                fs::write(into.join(plain), &wal).unwrap();
                segments.push(plain.to_string());
            }
            _ => fs::write(into.join(&name), &fetched.bytes).unwrap(),
        }
    }
    segments
}

/// The segment holding the byte before `lsn` on timeline 1.
pub fn segment_before(lsn: walrelay_protocol::Lsn, seg: WalSegmentSize) -> SegmentId {
    SegmentId::new(TimelineId(1), seg.segno(walrelay_protocol::Lsn(lsn.0 - 1)))
}

/// `walrelay receive -D URL --spool SPOOL -S SLOT` (the slot is created first, the spool is a new
/// scratch directory of the primary) plus `extra` options, running in the background; and SPOOL.
pub fn start_receive(
    primary: &walrelay_testkit::Cluster,
    url: &str,
    slot: &str,
    extra: &[&str],
) -> (super::walrelay_cmd::Walrelay, std::path::PathBuf) {
    primary.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{slot}', true)"
    ));
    let spool = primary.scratch_path(&format!("spool-{slot}"));
    fs::create_dir_all(&spool).unwrap();
    let conninfo = primary.replication_conninfo();
    let mut args = vec![
        "-d",
        &conninfo,
        "-D",
        url,
        "--spool",
        spool.to_str().unwrap(),
        "-S",
        slot,
    ];
    args.extend_from_slice(extra);
    let w = super::walrelay_cmd::Walrelay::start(
        &format!("receive into {url}"),
        &super::walrelay_cmd::receive_args(&args),
    );
    (w, spool)
}

/// A loopback address for `--metrics-addr` and its port.
pub fn metrics_addr() -> (String, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    (format!("127.0.0.1:{port}"), port)
}

/// The text of `/metrics` on `port` (empty when nothing answers).
pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut out = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let _ = s.read_to_string(&mut out);
    }
    out
}

/// One value of a metrics text (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}
