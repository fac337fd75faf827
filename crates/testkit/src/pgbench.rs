//! Write load with pgbench, in the foreground or in the background while a test streams or backs up.
//!
//! A background run ([`PgBenchRun`]) is killed when dropped, so a failing test never leaves pgbench
//! hammering a server (or waiting on one that is gone).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};
use crate::process::{describe, drain, join_drain};

/// How long a pgbench run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgBenchLimit {
    /// `-T`: seconds.
    Duration(Duration),
    /// `-t`: transactions per client.
    Transactions(u64),
}

/// Options of a pgbench run (TPC-B-like default script, no vacuum before the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBench {
    pub limit: PgBenchLimit,
    pub clients: u32,
    pub jobs: u32,
    /// `-R`: target rate in transactions per second.
    pub rate: Option<u32>,
    /// Extra arguments, appended last (e.g. `-N` for the simple-update script).
    pub args: Vec<String>,
}

impl PgBench {
    /// Runs for `d` (rounded up to whole seconds, at least one).
    pub fn duration(d: Duration) -> PgBench {
        PgBench::with_limit(PgBenchLimit::Duration(d))
    }

    /// Runs `n` transactions per client.
    pub fn transactions(n: u64) -> PgBench {
        PgBench::with_limit(PgBenchLimit::Transactions(n))
    }

    fn with_limit(limit: PgBenchLimit) -> PgBench {
        PgBench {
            limit,
            clients: 2,
            jobs: 1,
            rate: None,
            args: Vec::new(),
        }
    }

    pub fn clients(mut self, n: u32) -> PgBench {
        self.clients = n.max(1);
        self
    }

    pub fn jobs(mut self, n: u32) -> PgBench {
        self.jobs = n.max(1);
        self
    }

    pub fn rate(mut self, tps: u32) -> PgBench {
        self.rate = Some(tps);
        self
    }

    pub fn arg(mut self, a: &str) -> PgBench {
        self.args.push(a.to_string());
        self
    }

    /// The arguments after the connection options.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "-n".to_string(),
            "-c".to_string(),
            self.clients.to_string(),
            "-j".to_string(),
            self.jobs.min(self.clients).to_string(),
        ];
        match self.limit {
            PgBenchLimit::Duration(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                a.push("-T".to_string());
                a.push(secs.max(1).to_string());
            }
            PgBenchLimit::Transactions(n) => {
                a.push("-t".to_string());
                a.push(n.to_string());
            }
        }
        if let Some(r) = self.rate {
            a.push("-R".to_string());
            a.push(r.to_string());
        }
        a.extend(self.args.iter().cloned());
        a
    }

    /// How long the run should take, for the deadline of [`PgBenchRun::wait`].
    pub(crate) fn expected(&self) -> Duration {
        match self.limit {
            PgBenchLimit::Duration(d) => d,
            PgBenchLimit::Transactions(_) => Duration::ZERO,
        }
    }
}

/// What a finished pgbench run reported.
#[derive(Clone, Debug, PartialEq)]
pub struct PgBenchSummary {
    /// `number of transactions actually processed`.
    pub transactions: u64,
    /// `number of failed transactions` (0 when pgbench does not print it).
    pub failed: u64,
    /// `tps = …`, when printed.
    pub tps: Option<f64>,
    /// pgbench's full stdout.
    pub output: String,
}

/// Parses pgbench's end-of-run report.
pub fn parse_pgbench_summary(out: &str) -> Result<PgBenchSummary> {
    let mut transactions = None;
    let mut failed = 0;
    let mut tps = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // "1000/1000" with -t, "1234" with -T
            let n = rest.trim().split('/').next().unwrap_or("");
            transactions = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("tps = ") {
            if tps.is_none() {
                tps = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
    }
    let transactions = transactions.ok_or_else(|| TestkitError::Parse {
        tool: "pgbench",
        detail: format!("no 'number of transactions actually processed' line in {out:?}"),
    })?;
    Ok(PgBenchSummary {
        transactions,
        failed,
        tps,
        output: out.to_string(),
    })
}

/// A pgbench running in the background. Dropping it kills pgbench.
pub struct PgBenchRun {
    child: Option<Child>,
    command: String,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    deadline: Instant,
}

impl PgBenchRun {
    pub(crate) fn spawn(mut cmd: Command, expected: Duration) -> Result<PgBenchRun> {
        let command = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| TestkitError::Spawn {
            program: command.clone(),
            source,
        })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(PgBenchRun {
            child: Some(child),
            command,
            stdout,
            stderr,
            deadline: Instant::now() + expected + crate::env::timeout(),
        })
    }

    /// True while pgbench has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits for pgbench to finish (killing it past its expected duration plus the test timeout) and
    /// returns its report; an error if it failed, e.g. because the server went away.
    pub fn wait(mut self) -> Result<PgBenchSummary> {
        let Some(mut child) = self.child.take() else {
            return Err(TestkitError::Parse {
                tool: "pgbench",
                detail: "already waited for".to_string(),
            });
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= self.deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TestkitError::CommandTimeout {
                        command: self.command.clone(),
                        secs: crate::env::timeout().as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TestkitError::Spawn {
                        program: self.command.clone(),
                        source: e,
                    });
                }
            }
        };
        let out = join_drain(self.stdout.take());
        let err = join_drain(self.stderr.take());
        if !status.success() {
            return Err(TestkitError::CommandFailed {
                command: self.command.clone(),
                status: status.to_string(),
                stderr: err,
            });
        }
        parse_pgbench_summary(&out)
    }

    /// Kills pgbench now (what dropping does).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBenchRun {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = PgBench::transactions(100)
            .clients(4)
            .jobs(8)
            .rate(50)
            .arg("-N")
            .to_args();
        assert_eq!(
            a,
            ["-n", "-c", "4", "-j", "4", "-t", "100", "-R", "50", "-N"]
        );
        let a = PgBench::duration(Duration::from_millis(1500)).to_args();
        assert_eq!(a, ["-n", "-c", "2", "-j", "1", "-T", "2"]);
        let a = PgBench::duration(Duration::ZERO).clients(0).to_args();
        assert_eq!(a, ["-n", "-c", "1", "-j", "1", "-T", "1"]);
    }

    #[test]
    fn summary_pg15() {
        let out = "\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 1
maximum number of tries: 1
number of transactions per client: 100
number of transactions actually processed: 200/200
number of failed transactions: 0 (0.000%)
latency average = 3.139 ms
initial connection time = 4.297 ms
tps = 637.235410 (without initial connection time)
";
        let s = parse_pgbench_summary(out).unwrap();
        assert_eq!(s.transactions, 200);
        assert_eq!(s.failed, 0);
        assert_eq!(s.tps, Some(637.235410));
    }

    #[test]
    fn summary_with_duration_and_failures() {
        let out = "number of transactions actually processed: 1234\nnumber of failed transactions: 7 (0.5%)\n";
        let s = parse_pgbench_summary(out).unwrap();
        assert_eq!((s.transactions, s.failed, s.tps), (1234, 7, None));
    }

    #[test]
    fn summary_missing() {
        assert!(parse_pgbench_summary("").is_err());
        assert!(parse_pgbench_summary("number of transactions actually processed: x/1").is_err());
    }
}
