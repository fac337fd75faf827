//! The environment variables that steer the test suite, read in one place.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `WALRELAY_PG_MAJOR` | major version of clusters whose builder names none | 15 |
//! | `WALRELAY_PG_MAJORS` | comma list of majors the version-matrix tests run for | none: matrix tests skip |
//! | `WALRELAY_PG15_FROM_NPM` | `1`: use the npm build of 15 instead of Debian's | unset |
//! | `WALRELAY_TEST_TIMEOUT_SECS` | deadline of every wait (server start, replay, tools) | 120 |
//! | `WALRELAY_TEST_KEEP` | `1`: keep cluster directories after a test, for post-mortems | unset |
//! | `WALRELAY_TEST_TMPDIR` | where cluster directories are created | `/tmp` |
//!
//! `/tmp` rather than `$TMPDIR`: the server runs as the `postgres` OS user, which must be able to reach
//! the directory, and Unix socket paths must stay short (107 bytes).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::install::{DEBIAN_MAJOR, SUPPORTED_MAJORS};

const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// The major version for clusters that do not choose one: `WALRELAY_PG_MAJOR`, else 15.
pub fn default_major() -> Result<u32> {
    match std::env::var("WALRELAY_PG_MAJOR") {
        Ok(v) if !v.trim().is_empty() => parse_major(v.trim())
            .map_err(|detail| TestkitError::Config(format!("WALRELAY_PG_MAJOR={v:?}: {detail}"))),
        _ => Ok(DEBIAN_MAJOR),
    }
}

/// The majors listed in `WALRELAY_PG_MAJORS` (empty when unset). Panics on a malformed list: a typo
/// there would otherwise silently skip part of the matrix.
pub fn matrix_majors() -> Vec<u32> {
    let raw = std::env::var("WALRELAY_PG_MAJORS").unwrap_or_default();
    parse_majors(&raw).unwrap_or_else(|e| panic!("WALRELAY_PG_MAJORS={raw:?}: {e}"))
}

/// True when the version matrix (`WALRELAY_PG_MAJORS`) includes `major`. Matrix tests start with
/// `if !matrix_includes(17) { return; }` so that a plain `cargo test` skips them.
pub fn matrix_includes(major: u32) -> bool {
    matrix_majors().contains(&major)
}

/// The deadline for every wait: `WALRELAY_TEST_TIMEOUT_SECS`, else 120 s (generous: two cores run
/// several clusters at once).
pub fn timeout() -> Duration {
    let secs = std::env::var("WALRELAY_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

/// `WALRELAY_TEST_KEEP=1`: leave cluster directories behind (servers are still stopped).
pub fn keep_dirs() -> bool {
    std::env::var("WALRELAY_TEST_KEEP").is_ok_and(|v| v == "1")
}

/// Where cluster directories are created.
pub fn tmp_base() -> PathBuf {
    std::env::var_os("WALRELAY_TEST_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn parse_major(s: &str) -> std::result::Result<u32, String> {
    let m: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a major version number"))?;
    if SUPPORTED_MAJORS.contains(&m) {
        Ok(m)
    } else {
        Err(format!(
            "{m} is outside the supported majors {}-{}",
            SUPPORTED_MAJORS.start(),
            SUPPORTED_MAJORS.end()
        ))
    }
}

/// Parses `"10, 11,17"`; empty means none.
pub(crate) fn parse_majors(s: &str) -> std::result::Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m = parse_major(part)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_list() {
        assert_eq!(parse_majors(""), Ok(vec![]));
        assert_eq!(parse_majors(" , "), Ok(vec![]));
        assert_eq!(parse_majors("10,11, 17,10"), Ok(vec![10, 11, 17]));
        assert!(parse_majors("10,1x").unwrap_err().contains("\"1x\""));
        assert!(parse_majors("9").unwrap_err().contains("outside"));
        assert!(parse_majors("19").is_err());
        assert!(parse_majors("-1").is_err());
    }
}
