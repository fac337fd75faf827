#![allow(clippy::unwrap_used)]

//! The README's first command runs `walrelay demo`: a throwaway primary, a standby bootstrapped from
//! it, rows inserted on the primary arriving on the standby, everything removed at the end. This
//! keeps that command true.

use std::process::Command;

#[test]
fn demo_bootstraps_a_standby_that_follows_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["demo", "--rows", "500"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("manifest verified: true"), "{text}");
    assert!(text.contains("(hot standby): sees 1000 rows"), "{text}");
    assert!(
        text.contains("inserted 500 rows on the primary; the standby shows 1500 rows"),
        "{text}"
    );
    // The work directory is named on the first line and gone at the end.
    let dir = text
        .split_whitespace()
        .find(|w| w.starts_with("/tmp/walrelay-demo-") || w.contains("walrelay-demo-"))
        .map(|w| w.trim_end_matches([',', ':', ')']))
        .unwrap_or_else(|| panic!("no work directory named: {text}"));
    assert!(text.contains(&format!("{dir} removed")), "{text}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}
