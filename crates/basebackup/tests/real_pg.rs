//! Against a real PostgreSQL 15, with PostgreSQL's own tools as oracles:
//! * `pg_basebackup -Ft` output extracted by walrelay verifies against its own manifest (checksums
//!   computed during extraction), for CRC-32C and SHA-256, and a damaged byte is caught;
//! * `pg_verifybackup` accepts the directory walrelay extracted from a `-Ft -X fetch` backup;
//! * a standby configured by walrelay starts and replicates: streaming, and as a sidecar fed only
//!   by segment files copied into its `pg_wal`;
//! * tablespaces land in their mapped directories and verify.
//!
//! The binaries are taken from `WALRELAY_PG_BIN` or `/usr/lib/postgresql/15/bin`. Without them
//! the tests are skipped, except under CI (`CI` set), where that is a failure. Running as root,
//! server programs run as the `postgres` OS user (PostgreSQL refuses root).

// Test-only file: helpers outside #[test] functions panic on setup failure by design.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use walrelay_basebackup::{
    prepare_tablespace_dirs, store_manifest, write_standby_config, ArchiveExtractor, ArchiveKind,
    BackupManifest, ChecksumAlgorithm, ChecksumCollector, ExtractError, StandbyConfig, StandbyMode,
    TablespaceLocation, TablespaceMapping, DEFAULT_SIDECAR_RETRY_INTERVAL,
};
use walrelay_durable::Owner;
use walrelay_protocol::{SegmentId, WalFileName, WalSegmentSize};

fn pg_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("WALRELAY_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    if dir.join("initdb").exists() && dir.join("pg_basebackup").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "PostgreSQL 15 binaries not found in {}: install them (apt-get install -y postgresql) or set WALRELAY_PG_BIN",
        dir.display()
    );
    eprintln!("skipping: no PostgreSQL binaries in {}", dir.display());
    None
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "no postgres OS user");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway cluster listening on a Unix socket in its own temp dir; stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    /// Data directories of servers started here (the primary and any standbys), stopped on drop.
    running: Vec<PathBuf>,
}

impl Cluster {
    fn start(bin: &Path) -> Cluster {
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("walrelay-bb-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            dir,
            port: free_port(),
            as_postgres,
            running: Vec::new(),
        };
        c.chown(c.dir.path());
        let data = c.data();
        c.run_ok(
            "initdb",
            &[
                "--no-sync",
                "-U",
                "postgres",
                "-A",
                "trust",
                "-D",
                data.to_str().unwrap(),
            ],
        );
        let conf = format!(
            "port = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 5\nfsync = off\n",
            c.port,
            c.dir.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        c.pg_ctl_start(&data, c.port);
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("primary")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn chown(&self, p: &Path) {
        if self.as_postgres {
            std::os::unix::fs::chown(p, Some(id_of("-u")), Some(id_of("-g"))).unwrap();
        }
    }

    fn owner(&self) -> Owner {
        if self.as_postgres {
            Owner::ids(id_of("-u"), id_of("-g"))
        } else {
            Owner::current()
        }
    }

    /// A directory the postgres user owns, for backups and extraction targets.
    fn make_dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        self.chown(&p);
        p
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(prog);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd.output().unwrap()
    }

    fn run_ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pg_ctl_start(&mut self, data: &Path, port: u16) {
        let log = data.with_extension("log");
        let opts = format!("-p {port} -k {}", self.dir.path().display());
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "server on {} did not start: {}\n{}",
            data.display(),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
        self.running.push(data.to_path_buf());
    }

    fn sql_on(&self, port: u16, sql: &str) -> String {
        let host = self.dir.path().to_str().unwrap().to_string();
        let port = port.to_string();
        self.run_ok(
            "psql",
            &[
                "-X", "-q", "-A", "-t", "-h", &host, "-p", &port, "-U", "postgres", "-d",
                "postgres", "-c", sql,
            ],
        )
        .trim()
        .to_string()
    }

    fn sql(&self, sql: &str) -> String {
        self.sql_on(self.port, sql)
    }

    fn basebackup(&self, into: &Path, extra: &[&str]) {
        let host = self.dir.path().to_str().unwrap().to_string();
        let port = self.port.to_string();
        let mut args = vec![
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            into.to_str().unwrap(),
            "-Ft",
            "-c",
            "fast",
            "--no-sync",
        ];
        args.extend_from_slice(extra);
        self.run_ok("pg_basebackup", &args);
    }

    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres application_name=walrelay_test",
            self.dir.path().display(),
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for data in self.running.clone().iter().rev() {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut s = fs::read_to_string(path).unwrap();
    s.push_str(text);
    fs::write(path, s).unwrap();
}

/// Extracts `bk/base.tar` (and tablespace archives) into `target` through walrelay, computing
/// `alg` checksums on the way; returns the collector.
fn extract_backup(
    bk: &Path,
    alg: ChecksumAlgorithm,
    mut x: ArchiveExtractor,
    tablespaces: &[(u32, &str)],
) -> (
    Result<(), ExtractError>,
    ChecksumCollector,
    ArchiveExtractor,
) {
    let mut sums = ChecksumCollector::new(&[alg]);
    for (oid, _) in tablespaces {
        let f = fs::File::open(bk.join(format!("{oid}.tar"))).unwrap();
        if let Err(e) = x.extract(ArchiveKind::Tablespace(*oid), f, &mut sums) {
            return (Err(e), sums, x);
        }
    }
    let f = fs::File::open(bk.join("base.tar")).unwrap();
    let r = x.extract(ArchiveKind::Base, f, &mut sums).map(|_| ());
    (r, sums, x)
}

fn wal_segments_in(dir: &Path) -> Vec<SegmentId> {
    let seg = WalSegmentSize::default();
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            WalFileName::parse(&name)?.segment_id(seg)
        })
        .collect()
}

#[test]
fn pg_basebackup_tar_output_verifies_and_pg_verifybackup_accepts_it() {
    let Some(bin) = pg_bin() else { return };
    let c = Cluster::start(&bin);
    c.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");

    for (alg, name) in [
        (ChecksumAlgorithm::Crc32c, "CRC32C"),
        (ChecksumAlgorithm::Sha256, "SHA256"),
    ] {
        let bk = c.make_dir(&format!("bk_{name}"));
        c.basebackup(
            &bk,
            &["-X", "fetch", &format!("--manifest-checksums={name}")],
        );
        let target = c.make_dir(&format!("ext_{name}"));
        let x = ArchiveExtractor::new(&target, Vec::new(), c.owner());
        let progress = x.progress();
        let (r, sums, x) = extract_backup(&bk, alg, x, &[]);
        r.unwrap();
        assert_eq!(
            progress.bytes(),
            fs::metadata(bk.join("base.tar")).unwrap().len()
        );

        // walrelay's own verification, from checksums computed while extracting
        let text = fs::read(bk.join("backup_manifest")).unwrap();
        let manifest = BackupManifest::parse(&text).unwrap();
        let summary = manifest.verify_files(&sums, &[]).unwrap();
        assert!(summary.files > 900, "{summary:?}");
        assert_eq!(summary.files, summary.checksums_verified);
        manifest
            .verify_wal_ranges(
                &wal_segments_in(&target.join("pg_wal")),
                WalSegmentSize::default(),
            )
            .unwrap();
        store_manifest(&target, &text, 0o600, c.owner()).unwrap();
        x.into_written().sync_all(4).unwrap();

        // the oracle: PostgreSQL's own verifier, including its pg_waldump pass over the WAL
        let out = c.run_ok("pg_verifybackup", &[target.to_str().unwrap()]);
        assert!(out.contains("backup successfully verified"), "{out}");
    }

    // A damaged byte in the stream is caught by walrelay's verification.
    let bk = c.path("bk_CRC32C");
    let mut tar = fs::read(bk.join("base.tar")).unwrap();
    let header = tar
        .chunks(512)
        .position(|b| b.starts_with(b"PG_VERSION\0"))
        .unwrap();
    tar[(header + 1) * 512] ^= 0x01; // first data byte of PG_VERSION
    let damaged = c.make_dir("damaged");
    fs::write(damaged.join("base.tar"), &tar).unwrap();
    let target = c.make_dir("ext_damaged");
    let x = ArchiveExtractor::new(&target, Vec::new(), c.owner());
    let (r, sums, _) = extract_backup(&damaged, ChecksumAlgorithm::Crc32c, x, &[]);
    r.unwrap();
    let manifest = BackupManifest::parse(&fs::read(bk.join("backup_manifest")).unwrap()).unwrap();
    let e = manifest.verify_files(&sums, &[]).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.to_string()
            .contains("checksum mismatch for file \"PG_VERSION\""),
        "{e}"
    );
    drop(c);
}

/// Extracts a fresh `-X fetch` backup and returns the target, ready to be started as a standby.
fn extracted_copy(c: &Cluster, name: &str) -> PathBuf {
    let bk = c.make_dir(&format!("bk_{name}"));
    c.basebackup(&bk, &["-X", "fetch"]);
    let target = c.make_dir(name);
    let x = ArchiveExtractor::new(&target, Vec::new(), c.owner());
    let (r, _, x) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[]);
    r.unwrap();
    x.into_written().sync_all(2).unwrap();
    // a standby may not share the primary's socket lock or port settings
    append(&target.join("postgresql.conf"), "\n");
    target
}

/// Polls `f` for up to a minute; on timeout fails with the server log at `log`.
fn wait_for(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; server log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn streaming_standby_configured_by_walrelay_replicates() {
    let Some(bin) = pg_bin() else { return };
    let mut c = Cluster::start(&bin);
    c.sql("SELECT pg_create_physical_replication_slot('walrelay_standby')");
    let standby = extracted_copy(&c, "standby");
    let config = StandbyConfig::new(
        15,
        StandbyMode::Streaming {
            primary_conninfo: c.conninfo(),
            slot_name: Some("walrelay_standby".into()),
        },
    )
    .unwrap();
    let written = write_standby_config(&standby, &config, c.owner()).unwrap();
    assert_eq!(written, ["standby.signal", "postgresql.auto.conf"]);

    let port = free_port();
    c.pg_ctl_start(&standby, port);
    assert_eq!(c.sql_on(port, "SELECT pg_is_in_recovery()"), "t");
    c.sql("CREATE TABLE after_backup AS SELECT 42 AS answer");
    wait_for(
        "the standby to replay",
        &standby.with_extension("log"),
        || {
            c.sql_on(
                port,
                "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'",
            ) == "1"
        },
    );
    assert_eq!(c.sql_on(port, "SELECT answer FROM after_backup"), "42");
    assert_eq!(
        c.sql("SELECT application_name || ' ' || state FROM pg_stat_replication"),
        "walrelay_test streaming"
    );
    assert_eq!(
        c.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay_standby'"),
        "t"
    );
}

#[test]
fn sidecar_standby_replays_segments_dropped_into_pg_wal() {
    let Some(bin) = pg_bin() else { return };
    let mut c = Cluster::start(&bin);
    let standby = extracted_copy(&c, "sidecar");
    let config = StandbyConfig::new(
        15,
        StandbyMode::Sidecar {
            wal_retrieve_retry_interval: DEFAULT_SIDECAR_RETRY_INTERVAL,
        },
    )
    .unwrap();
    write_standby_config(&standby, &config, c.owner()).unwrap();
    let port = free_port();
    c.pg_ctl_start(&standby, port);
    assert_eq!(c.sql_on(port, "SELECT pg_is_in_recovery()"), "t");
    // no replication connection of its own
    assert_eq!(c.sql("SELECT count(*) FROM pg_stat_replication"), "0");

    c.sql("CREATE TABLE fed_by_files AS SELECT 7 AS n");
    // pg_switch_wal() flushes the switch record and the padding to the end of the segment; its
    // result is the end of that segment, which pg_walfile_name() maps to the segment itself.
    let last_complete = c.sql("SELECT pg_walfile_name(pg_switch_wal())");
    // Act as the sidecar: put every completed segment into the standby's pg_wal, atomically. The
    // backup's own copy of its last segment was taken mid-segment, so it is replaced too.
    let primary_wal = c.data().join("pg_wal");
    for e in fs::read_dir(&primary_wal).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name <= last_complete {
            let tmp = standby.join("pg_wal").join(format!("{name}.tmp"));
            fs::copy(primary_wal.join(&name), &tmp).unwrap();
            c.chown(&tmp);
            fs::rename(&tmp, standby.join("pg_wal").join(&name)).unwrap();
        }
    }
    wait_for(
        "the sidecar-fed standby to replay",
        &standby.with_extension("log"),
        || {
            c.sql_on(
                port,
                "SELECT count(*) FROM pg_class WHERE relname = 'fed_by_files'",
            ) == "1"
        },
    );
    assert_eq!(c.sql_on(port, "SELECT n FROM fed_by_files"), "7");
}

#[test]
fn tablespaces_extract_to_mapped_directories_and_verify() {
    let Some(bin) = pg_bin() else { return };
    let c = Cluster::start(&bin);
    let ts_dir = c.make_dir("ts_on_primary");
    c.sql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        ts_dir.display()
    ));
    c.sql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g");
    let row = c.sql(
        "SELECT oid || ' ' || pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'",
    );
    let (oid, location) = row.split_once(' ').unwrap();
    let oid: u32 = oid.parse().unwrap();

    let bk = c.make_dir("bk_ts");
    c.basebackup(&bk, &["-X", "fetch"]);
    assert!(bk.join(format!("{oid}.tar")).exists());

    let target = c.make_dir("ext_ts");
    let mapped = c.path("ts_mapped");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("{location}={}", mapped.display()))
        .unwrap();
    let tablespaces = [TablespaceLocation {
        oid,
        location: location.to_string(),
    }];
    let prepared = prepare_tablespace_dirs(&target, &tablespaces, &mapping, c.owner()).unwrap();
    assert_eq!(prepared[0].target, mapped);

    // pg_basebackup -Ft asks for TABLESPACE_MAP: refused by default...
    let x = ArchiveExtractor::new(&target, prepared.clone(), c.owner());
    let (r, _, _) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[(oid, location)]);
    assert!(matches!(r, Err(ExtractError::TablespaceMap)), "{r:?}");

    // ...and accepted when allowed; the tablespace's files land in the mapped directory.
    let target = c.make_dir("ext_ts2");
    let mapped = c.path("ts_mapped2");
    let mut mapping = TablespaceMapping::new();
    mapping
        .push_arg(&format!("{location}={}", mapped.display()))
        .unwrap();
    let prepared = prepare_tablespace_dirs(&target, &tablespaces, &mapping, c.owner()).unwrap();
    let x = ArchiveExtractor::new(&target, prepared, c.owner()).allow_tablespace_map(true);
    let (r, sums, _) = extract_backup(&bk, ChecksumAlgorithm::Crc32c, x, &[(oid, location)]);
    r.unwrap();
    let manifest = BackupManifest::parse(&fs::read(bk.join("backup_manifest")).unwrap()).unwrap();
    let summary = manifest.verify_files(&sums, &[]).unwrap();
    let ts_files = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with(format!("pg_tblspc/{oid}")))
        .count();
    assert!(ts_files > 0);
    assert_eq!(summary.files, summary.checksums_verified);
    let version_dir: Vec<String> = fs::read_dir(&mapped)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(version_dir.len(), 1);
    assert!(version_dir[0].starts_with("PG_15_"), "{version_dir:?}");
    let mut buf = Vec::new();
    fs::File::open(target.join("tablespace_map"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with(&format!("{oid} ")));
}
