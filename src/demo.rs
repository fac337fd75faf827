//! `walrelay demo`: the whole job on a throwaway local primary — start one from the PostgreSQL binaries on
//! this machine, bootstrap a standby from it, start the standby, and show rows committed on the primary
//! arriving on the standby. Everything lives in a temporary directory that is removed at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use walrelay_basebackup::{bootstrap, BackupProgress, BootstrapConfig};
use walrelay_client::{ConnectParams, Connection, Endpoint, ReplicationMode};
use walrelay_conninfo::{ConnectionConfig, ProcessEnv};
use walrelay_protocol::command::CheckpointMode;

use crate::wal_stream::EngineWalStreamer;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DemoArgs {
    /// Directory holding initdb, pg_ctl and postgres (default: pg_config --bindir, then
    /// /usr/lib/postgresql/*/bin, then the cache of scripts/install-pg.sh).
    #[arg(long = "pg-bin", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Keep the temporary directory and leave both servers running (prints how to stop them).
    #[arg(long)]
    pub keep: bool,
    /// Rows to insert on the primary after the standby is up.
    #[arg(long, default_value_t = 1000)]
    pub rows: u32,
}

/// Runs server binaries, as the `postgres` OS user when we are root (PostgreSQL refuses root).
struct Runner {
    bin: PathBuf,
    as_postgres: bool,
}

impl Runner {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn find_pg_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    let has = |d: &Path| {
        d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file()
    };
    if let Some(d) = explicit {
        if has(d) {
            return Ok(d.to_path_buf());
        }
        bail!("{} holds no initdb/pg_ctl/postgres", d.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = Vec::new();
    for root in ["/usr/lib/postgresql", "/var/cache/walrelay/pg"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                let major: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
                for sub in ["bin", "native/bin"] {
                    let d = e.path().join(sub);
                    if has(&d) {
                        candidates.push((major, d));
                    }
                }
            }
        }
    }
    candidates.sort();
    candidates.pop().map(|(_, d)| d).context(
        "no PostgreSQL server binaries found: install them (apt-get install postgresql, or scripts/install-pg.sh 15) or pass --pg-bin DIR",
    )
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_ids() -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name("postgres").ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// Stops the servers and removes the directory, whatever happens.
struct Scratch {
    dir: PathBuf,
    runner_bin: PathBuf,
    as_postgres: bool,
    data_dirs: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let runner = Runner {
            bin: self.runner_bin.clone(),
            as_postgres: self.as_postgres,
        };
        for d in &self.data_dirs {
            if d.join("postmaster.pid").exists() {
                let _ = runner
                    .command("pg_ctl")
                    .args(["-D"])
                    .arg(d)
                    .args(["-m", "immediate", "-w", "stop"])
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn local_params(socket_dir: &Path, port: u16, dbname: &str) -> ConnectParams {
    let mut p = ConnectParams::new(
        Endpoint::Unix {
            socket: socket_dir.join(format!(".s.PGSQL.{port}")),
            port,
        },
        "postgres",
    );
    p.dbname = Some(dbname.to_string());
    p.replication = ReplicationMode::Off;
    p
}

async fn query_count(socket_dir: &Path, port: u16) -> Result<i64> {
    let mut c = Connection::connect(&local_params(socket_dir, port, "postgres")).await?;
    let r = c.simple_query("SELECT count(*) FROM walrelay_demo").await?;
    c.close().await;
    r.first()
        .and_then(|r| r.get_idx(0, 0))
        .and_then(|v| v.parse().ok())
        .context("count rows")
}

pub async fn run(args: DemoArgs) -> Result<i32> {
    let bin = find_pg_bin(args.pg_bin.as_deref())?;
    let as_postgres = nix::unistd::Uid::effective().is_root();
    let ids = if as_postgres {
        Some(postgres_ids().context(
            "running as root, PostgreSQL must run as the `postgres` OS user, which does not exist: create it (useradd -r postgres) or run as another user",
        )?)
    } else {
        None
    };
    let runner = Runner {
        bin: bin.clone(),
        as_postgres,
    };
    let base = std::env::temp_dir().join(format!("walrelay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let mut scratch = Scratch {
        dir: base.clone(),
        runner_bin: bin.clone(),
        as_postgres,
        data_dirs: Vec::new(),
        keep: args.keep,
    };
    // Ctrl-C or a SIGTERM must not leave two servers running in /tmp (pg_ctl starts them in a
    // session of their own, so the signal does not reach them): the demo stops, and the scratch
    // directory's cleanup stops them and removes everything — unless --keep.
    let stop = crate::bootstrap::stop_signals("demo")?;
    let outcome = tokio::select! {
        r = steps(&args, &runner, ids, &base, &mut scratch) => r,
        () = stop => {
            let what = if args.keep { "kept" } else { "stopping the servers and removing" };
            eprintln!("walrelay demo: interrupted: {what} {}", base.display());
            Ok(130)
        }
    };
    if !args.keep && outcome.as_ref().is_ok_and(|&c| c == 0) {
        drop(scratch);
        println!("  [5/5] servers stopped, {} removed", base.display());
    }
    outcome
}

/// The demo's five steps, in `base`; the servers are recorded in `scratch` as they are made.
async fn steps(
    args: &DemoArgs,
    runner: &Runner,
    ids: Option<(u32, u32)>,
    base: &Path,
    scratch: &mut Scratch,
) -> Result<i32> {
    let bin = &runner.bin;
    let version = runner.run("postgres", &["--version"])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(base, Some(uid), Some(gid))?;
    }
    let primary = base.join("primary");
    let standby = base.join("standby");
    let socket = base.to_path_buf();
    let (pport, sport) = (free_port()?, free_port()?);
    println!(
        "walrelay demo: throwaway primary from {} ({}) in {}",
        bin.display(),
        version.trim(),
        base.display()
    );

    runner.run(
        "initdb",
        &[
            "-D",
            &primary.to_string_lossy(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
    )?;
    scratch.data_dirs.push(primary.clone());
    let opts = format!(
        "-p {pport} -k {} -c listen_addresses='' -c wal_level=replica -c max_wal_senders=10 -c hot_standby=on",
        socket.display()
    );
    runner.run(
        "pg_ctl",
        &[
            "-D",
            &primary.to_string_lossy(),
            "-o",
            &opts,
            "-l",
            &base.join("primary.log").to_string_lossy(),
            "-w",
            "start",
        ],
    )?;
    let mut c = Connection::connect(&local_params(&socket, pport, "postgres")).await?;
    c.simple_query("CREATE TABLE walrelay_demo (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now())")
        .await?;
    c.simple_query("INSERT INTO walrelay_demo (note) SELECT 'before bootstrap ' || g FROM generate_series(1, 1000) g")
        .await?;
    println!("  [1/5] primary up on port {pport}: walrelay_demo holds 1000 rows");

    // Bootstrap through the library, exactly as `walrelay bootstrap -D standby -c fast` does.
    let conninfo = format!(
        "host={} port={pport} user=postgres application_name=walrelay_demo",
        socket.display()
    );
    let cfg = ConnectionConfig::from_conninfo(&conninfo, &ProcessEnv)?;
    let params = walrelay_client::connect_params(&cfg, ReplicationMode::Physical, None)?;
    let mut config = BootstrapConfig::new(cfg, params, &standby);
    config.checkpoint = CheckpointMode::Fast;
    config.owner = ids.map(|(u, g)| walrelay_durable::Owner::ids(u, g));
    scratch.data_dirs.push(standby.clone());
    let summary = bootstrap(
        config,
        Some(&EngineWalStreamer),
        &BackupProgress::new(),
        std::future::pending::<()>(),
    )
    .await
    .context("bootstrap the standby")?;
    println!(
        "  [2/5] bootstrapped {}: {} in {:.2} s, WAL {} to {}, manifest verified: {}",
        standby.display(),
        crate::bootstrap::human_bytes(summary.bytes_received),
        summary.duration.as_secs_f64(),
        summary.start.lsn,
        summary.end.lsn,
        summary.verified.is_some()
    );

    let sopts = format!("-p {sport} -k {} -c listen_addresses=''", socket.display());
    runner.run(
        "pg_ctl",
        &[
            "-D",
            &standby.to_string_lossy(),
            "-o",
            &sopts,
            "-l",
            &base.join("standby.log").to_string_lossy(),
            "-w",
            "start",
        ],
    )?;
    let before = query_count(&socket, sport).await?;
    println!("  [3/5] standby up on port {sport} (hot standby): sees {before} rows");

    let t0 = Instant::now();
    c.simple_query(&format!(
        "INSERT INTO walrelay_demo (note) SELECT 'after bootstrap ' || g FROM generate_series(1, {}) g",
        args.rows
    ))
    .await?;
    let want = before + i64::from(args.rows);
    let seen = loop {
        let n = query_count(&socket, sport).await?;
        if n >= want {
            break n;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "the standby did not receive the new rows within 60 s (sees {n} of {want}); see {}",
                base.join("standby.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "  [4/5] inserted {} rows on the primary; the standby shows {seen} rows after {} ms",
        args.rows,
        t0.elapsed().as_millis()
    );
    c.close().await;
    if args.keep {
        println!(
            "  [5/5] kept {}: stop with `pg_ctl -D {} stop` and `pg_ctl -D {} stop`",
            base.display(),
            standby.display(),
            primary.display()
        );
    }
    Ok(0)
}
