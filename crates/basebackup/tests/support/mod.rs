//! Shared by the bootstrap integration tests: WAL stand-ins. The scripted fake server is
//! `walrelay_testkit::FakeWalsender`.

pub mod wal_standin;
