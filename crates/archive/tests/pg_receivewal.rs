//! The archive crate against the real thing: directories written by Debian's pg_receivewal 15 with
//! `--compress=gzip` and `lz4` from a throwaway PostgreSQL 15 cluster (1 MB segments), and our own
//! compressed files read back by pg_receivewal, pg_waldump and the gzip/lz4/zstd tools.
//!
//! Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin (or WALRELAY_PG_BIN); when run as root, the
//! server runs as the `postgres` OS user. Without the binaries the test says so and passes.

// Test-harness code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use walrelay_archive::{
    compress_completed_segment, restore, verify, ArchiveDir, Compression, NoContentCheck,
    RestoreOptions, RestoreOutcome, SegmentFileState, VerifyOptions,
};
use walrelay_durable::Owner;
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};

const MB: u64 = 1024 * 1024;

fn pg_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("WALRELAY_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join("pg_receivewal").exists().then_some(dir)
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// uid/gid of the `postgres` OS user, when we are root and must hand files to it.
fn postgres_owner() -> Owner {
    if !is_root() {
        return Owner::current();
    }
    let u = nix::unistd::User::from_name("postgres")
        .expect("look up user postgres")
        .expect("PostgreSQL refuses to run as root: create the postgres OS user");
    Owner::ids(u.uid.as_raw(), u.gid.as_raw())
}

struct Cluster {
    bin: PathBuf,
    root: tempfile::TempDir,
    owner: Owner,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    /// Runs a PostgreSQL program (as the postgres user when we are root).
    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(prog);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(self.root.path());
        let out = cmd.output().unwrap_or_else(|e| panic!("run {prog}: {e}"));
        out
    }

    fn run_ok(&self, prog: &str, args: &[&str]) -> Output {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn sql(&self, q: &str) -> String {
        let sock = self.sock();
        let out = self.run_ok(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-h",
                sock.to_str().unwrap(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                q,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A directory the postgres user can write.
    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        self.owner.apply(&p).unwrap();
        p
    }

    fn receivewal(&self, dir: &Path, extra: &[&str], endpos: Lsn) -> Output {
        let sock = self.sock();
        let end = endpos.to_string();
        let mut args = vec![
            "-D",
            dir.to_str().unwrap(),
            "-h",
            sock.to_str().unwrap(),
            "-U",
            "postgres",
            "-n",
            "-v",
            "-E",
            &end,
        ];
        args.extend_from_slice(extra);
        self.run_ok("pg_receivewal", &args)
    }

    fn start(bin: PathBuf) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("walrelay-archive-pg")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let owner = postgres_owner();
        owner.apply(root.path()).unwrap();
        let c = Cluster { bin, root, owner };
        c.mkdir("sock");
        let data = c.data();
        c.run_ok(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "--no-sync",
                "--wal-segsize=1",
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        );
        let conf = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_senders = 8\nmax_replication_slots = 8\nfsync = off\nwal_keep_size = '1GB'\n",
            c.sock().display()
        );
        let mut text = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        fs::write(data.join("postgresql.conf"), text).unwrap();
        let log = c.root.path().join("server.log");
        c.run_ok(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
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

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

fn complete_segment_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

fn tool_ok(tool: &str, args: &[&str]) -> Option<bool> {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|o| o.status.success())
}

#[test]
fn pg_receivewal_15_directories_and_our_files_for_pg_tools() {
    let Some(bin) = pg_bin() else {
        eprintln!("SKIPPED: PostgreSQL 15 binaries not found (set WALRELAY_PG_BIN)");
        return;
    };
    let c = Cluster::start(bin);
    for slot in ["s_plain", "s_gz", "s_lz4"] {
        c.sql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
    }
    // Several full segments, each ended by a switch, then a little WAL in an unfinished segment.
    c.sql("CREATE TABLE t (x int, pad text)");
    for _ in 0..4 {
        c.sql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 6000) g");
        c.sql("SELECT pg_switch_wal()");
    }
    c.sql("INSERT INTO t SELECT g, 'tail' FROM generate_series(1, 200) g");
    let end: Lsn = c.sql("SELECT pg_current_wal_lsn()").parse().unwrap();

    let plain = c.mkdir("plain");
    let gz = c.mkdir("gz");
    let lz4 = c.mkdir("lz4");
    c.receivewal(&plain, &["-S", "s_plain"], end);
    c.receivewal(&gz, &["-S", "s_gz", "--compress=gzip"], end);
    c.receivewal(&lz4, &["-S", "s_lz4", "--compress=lz4"], end);

    let names = complete_segment_names(&plain);
    assert!(
        names.len() >= 4,
        "expected several complete segments: {names:?}"
    );
    let partial_name = seg().segno(end).0;
    let partial_name = walrelay_protocol::SegmentId::new(
        TimelineId(1),
        walrelay_protocol::XLogSegNo(partial_name),
    )
    .file_name(seg());
    let pg_wal = c.data().join("pg_wal");

    // Scan and verify accept what pg_receivewal wrote, in all three forms.
    for (dir, state, partial_suffix) in [
        (&plain, SegmentFileState::Complete, ".partial"),
        (&gz, SegmentFileState::CompleteCompressed, ".gz.partial"),
        (&lz4, SegmentFileState::CompleteCompressed, ".lz4.partial"),
    ] {
        let inv = ArchiveDir::new(dir, seg()).scan().unwrap();
        assert!(
            inv.damaged.is_empty(),
            "{}: {:?}",
            dir.display(),
            inv.damaged
        );
        let complete: Vec<_> = inv
            .segments
            .values()
            .filter(|f| f[0].state == state)
            .collect();
        assert_eq!(complete.len(), names.len(), "{}", dir.display());
        let last = inv.segments.values().last().unwrap();
        assert_eq!(last[0].name, format!("{partial_name}{partial_suffix}"));
        assert!(!last[0].state.is_complete());
        // pg_receivewal's own resume rule: the partial segment's start.
        assert_eq!(
            inv.streaming_start(),
            Some((TimelineId(1), end.segment_start(MB as u32)))
        );
        let report = verify(dir, seg(), &NoContentCheck, &VerifyOptions::default()).unwrap();
        assert!(report.is_ok(), "{}: {:#?}", dir.display(), report.problems);
        assert_eq!(report.files_read as usize, names.len() + 1);
    }

    // Restore every complete segment from each directory: byte-identical to the server's pg_wal.
    let restored = c.mkdir("restored");
    for name in &names {
        let want = fs::read(pg_wal.join(name)).unwrap();
        assert_eq!(fs::read(plain.join(name)).unwrap(), want, "{name}");
        for dir in [&plain, &gz, &lz4] {
            let dest = restored.join(name);
            let out = restore(dir, name, &dest, &RestoreOptions::default()).unwrap();
            assert!(
                matches!(out, RestoreOutcome::Restored(_)),
                "{name} from {}",
                dir.display()
            );
            assert!(
                fs::read(&dest).unwrap() == want,
                "{name} from {}",
                dir.display()
            );
        }
    }
    // pg_waldump reads the restored segments as one stream of valid WAL.
    let first = names.first().unwrap();
    let last = names.last().unwrap();
    c.run_ok(
        "pg_waldump",
        &["-p", restored.to_str().unwrap(), "-q", first, last],
    );

    // --partial: the unfinished segment, zero-padded, its WAL identical to the server's.
    let server_partial = fs::read(pg_wal.join(&partial_name)).unwrap();
    for dir in [&plain, &gz, &lz4] {
        let dest = c.root.path().join("RECOVERYXLOG");
        let opts = RestoreOptions {
            partial: true,
            ..Default::default()
        };
        let RestoreOutcome::Restored(r) = restore(dir, &partial_name, &dest, &opts).unwrap() else {
            panic!("no partial restored from {}", dir.display())
        };
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len() as u64, MB, "{}", dir.display());
        let valid = r.padded_from.unwrap() as usize;
        assert!(
            valid as u64 >= end.segment_offset(MB as u32),
            "{}: {valid}",
            dir.display()
        );
        let wal_end = end.segment_offset(MB as u32) as usize;
        assert!(
            got[..wal_end] == server_partial[..wal_end],
            "{}: partial WAL differs from the server's",
            dir.display()
        );
        assert!(got[valid..].iter().all(|&b| b == 0));
        // Without --partial, the segment is simply not there.
        assert_eq!(
            restore(dir, &partial_name, &dest, &RestoreOptions::default()).unwrap(),
            RestoreOutcome::NotFound
        );
    }

    // Our compressed files, read by PostgreSQL's tools: pg_receivewal's FindStreamingStart must see
    // them as complete (gzip ISIZE; LZ4 decompressed by LZ4F) and resume after the last one.
    for method in [Compression::Gzip { level: 6 }, Compression::Lz4] {
        let ours = c.mkdir(&format!("ours_{}", method.suffix().trim_start_matches('.')));
        for name in &names {
            fs::copy(plain.join(name), ours.join(name)).unwrap();
            c.owner.apply(&ours.join(name)).unwrap();
            let p = compress_completed_segment(&ours, name, method, Owner::of_dir_if_root(&ours))
                .unwrap();
            let ok = match method {
                Compression::Gzip { .. } => tool_ok("gzip", &["-t", p.to_str().unwrap()]),
                _ => tool_ok("lz4", &["-t", p.to_str().unwrap()]),
            };
            assert_ne!(ok, Some(false), "{} rejects {}", method, p.display());
        }
        let out = c.receivewal(&ours, &[], end);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let next = walrelay_protocol::WalFileName::parse(last)
            .unwrap()
            .segment_id(seg())
            .unwrap()
            .end_lsn(seg());
        assert!(
            stderr.contains(&format!("starting log streaming at {next} (timeline 1)")),
            "{method}: pg_receivewal did not resume after our files:\n{stderr}"
        );
        assert!(!stderr.contains("incorrect"), "{method}: {stderr}");
    }

    // zstd: readable by the zstd tool.
    let ours_zst = c.mkdir("ours_zst");
    fs::copy(plain.join(first), ours_zst.join(first)).unwrap();
    let p = compress_completed_segment(
        &ours_zst,
        first,
        Compression::Zstd { level: 3 },
        Owner::current(),
    )
    .unwrap();
    assert_ne!(
        tool_ok("zstd", &["-t", "-q", p.to_str().unwrap()]),
        Some(false)
    );
}
