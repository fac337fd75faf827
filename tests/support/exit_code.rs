//! walrelay's documented exit codes (README, "Exit codes"), as the tests expect them. Kept apart from
//! the binary's own constants on purpose: a test that read them from the code would follow a change
//! of the contract instead of catching it.

pub const ERROR: i32 = 1;
pub const USAGE: i32 = 2;
pub const CONNECTION: i32 = 3;
pub const SERVER_STATE: i32 = 4;
pub const LOCAL: i32 = 5;
pub const INVALID_WAL: i32 = 6;
pub const INTERRUPTED: i32 = 130;
