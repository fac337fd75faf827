//! Real PostgreSQL for walrelay's tests and benchmarks (dev-only).
//!
//! walrelay is judged against real servers of every supported major (10–18) and against PostgreSQL's
//! own tools. This crate makes that cheap to write:
//!
//! * [`PgInstall`] finds the server binaries of a major version (Debian's 15, or the npm builds that
//!   `scripts/install-pg.sh` caches), and [`ClientTools`] Debian 15's client programs.
//! * [`Cluster`] is a throwaway cluster in its own `/tmp` directory, run as the `postgres` OS user when
//!   the tests run as root, on a free port and a private Unix socket, with the authentication method,
//!   roles, TLS and WAL settings a test asks for. It stops and removes itself on drop, even when the
//!   test panics or the process dies.
//! * [`StandbyBuilder`] starts a second cluster on a directory a backup tool produced.
//! * [`PgBench`] / [`PgBenchRun`] generate write load, in the background if needed.
//! * [`oracle`]: pg_waldump, pg_verifybackup, pg_controldata and pg_dumpall as judges.
//! * [`poll`]: waiting for a condition with a deadline instead of sleeping.
//! * [`S3Server`] ([`s3`]): a real S3-compatible server (SeaweedFS `weed mini`) on loopback ports.
//! * [`AzuriteServer`] ([`azurite`]): a real Azure Blob Storage emulator (Azurite) on a loopback port.
//! * [`pg_command`]: a command for any libpq client with the caller's `PG*` environment removed.
//!
//! And for the misbehaviour a real server will not produce, one wire kit shared by every
//! fake-server suite:
//!
//! * [`FakeWalsender`] ([`fake_walsender`]): a scripted walsender on `127.0.0.1:0` that answers
//!   walrelay's replication commands, plays scripted `BASE_BACKUP` replies and streams scripted
//!   (possibly damaged) WAL;
//! * [`fake_backup`]: the `BASE_BACKUP` replies for a [`FakeBackup`] and its manifest, with
//!   [`tar_builder::Tar`] for the archives;
//! * [`wire`]: backend messages as bytes, encoded by the protocol crate.
//!
//! ```no_run
//! use walrelay_testkit::{oracle, Cluster, StopMode};
//!
//! let primary = Cluster::builder().name("primary").wal_segsize_mb(1).start();
//! primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
//! let backup = primary.pg_basebackup(&["-R", "-X", "stream", "-c", "fast"]);
//! let standby = primary.standby(&backup).start();
//! standby.catch_up(&primary);
//! assert_eq!(standby.psql("SELECT count(*) FROM t"), "1000");
//! oracle::assert_same_dumpall(&primary, &standby);
//! ```
//!
//! Environment variables are listed in [`mod@env`]. Version-matrix tests guard themselves with
//! [`matrix_includes`]; `scripts/test.sh` sets `WALRELAY_PG_MAJORS` and installs those majors first.

pub mod azurite;
pub mod cluster;
pub mod config;
mod csv;
pub mod env;
pub mod error;
pub mod fake_backup;
pub mod fake_walsender;
pub mod install;
pub mod loopback;
pub mod oracle;
pub mod pgbench;
pub mod poll;
mod process;
pub mod s3;
pub mod tar_builder;
pub mod tls;
mod watchdog;
pub mod wire;

pub use azurite::AzuriteServer;
pub use cluster::{free_port, psql_conninfo, Cluster, ClusterBuilder, StandbyBuilder, StopMode};
pub use config::{AuthMethod, Role, Tls};
pub use env::{matrix_includes, matrix_majors};
pub use error::{Result, TestkitError};
pub use fake_backup::FakeBackup;
pub use fake_walsender::{Ending, FakeWalsender, HistoricTimeline, Script, Step, WalStream};
pub use install::{ClientTools, PgInstall};
pub use loopback::StoreServer;
pub use oracle::{
    assert_same_dumpall, pg_controldata, pg_dumpall, pg_verifybackup, pg_waldump, ControlData,
    VerifyBackupOptions, WalDump, WalRecord,
};
pub use pgbench::{PgBench, PgBenchRun, PgBenchSummary};
pub use process::{assert_tree_owned_by, pg_command, server_user_ids};
pub use s3::S3Server;
pub use tls::{ClientCert, TestCa, TlsPaths};
pub use walrelay_protocol::Lsn;
