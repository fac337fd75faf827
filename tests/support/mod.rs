//! Helpers of the `walrelay receive` integration tests (tests/receive.rs).
//!
//! * [`walrelay_cmd`]: the real `walrelay` binary as a child process — start, kill -9, SIGTERM, wait
//!   with a deadline, its stderr kept in a file and shown when a test fails.
//! * [`wal_files`]: judging what `receive` wrote — byte comparison with the server's own `pg_wal`,
//!   the valid end of `.partial` files, pg_waldump over a whole range, a timeline view for pg_waldump
//!   across a promotion.
//! * [`server`]: what the server says about us (`pg_stat_replication`, `pg_replication_slots`).
//! * [`poll`]: waiting for a condition with a deadline instead of sleeping.
//!
//! [`bucket`]: what `receive -D s3://…` put into a bucket, fetched and checked.
//! [`relay`]: `walrelay serve` started for a test, its metrics, and a raw protocol client for
//! misbehaving downstreams.
//!
//! [`exit_code`]: the documented exit codes. [`interrupted_backup`]: a `backup` stopped mid-stream, for any archive.
//! [`recovery`]: PITR from an archive with `walrelay restore`.
//!
//! Helpers of the `walrelay bootstrap` integration tests (tests/bootstrap.rs):
//!
//! * [`bootstrap_cli`]: `walrelay bootstrap` as a one-shot run with a chosen environment, and the
//!   contract of a refused run (exit code, exactly one error line, no panic).
//! * [`tree_snapshot`]: a directory tree as data, to prove a refused run left it untouched.
//! * [`scratch_mount`]: tmpfs mounts for a full disk and a read-only target.

// Every test file that includes this module uses a different subset of it.
#![allow(dead_code)]

pub mod bootstrap_cli;
pub mod bucket;
pub mod exit_code;
pub mod interrupted_backup;
pub use walrelay_testkit::poll;
pub mod recovery;
pub mod relay;
pub mod scratch_mount;
pub mod server;
pub mod tree_snapshot;
pub mod wal_files;
pub mod walrelay_cmd;

/// A port free on 127.0.0.1 a moment ago, never handed out twice in this test binary (metrics
/// endpoints, relays and fake servers of parallel tests must not race for one).
pub fn free_port() -> u16 {
    walrelay_testkit::free_port().expect("a free port")
}
