//! Shared by the bootstrap integration tests: the scripted fake server and WAL stand-ins.

pub mod fake_server;
pub mod wal_standin;
