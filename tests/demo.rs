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

/// Ctrl-C in the middle: pg_ctl starts the servers in a session of their own, so the signal does
/// not reach them — the demo stops them and removes its directory itself, and exits 130.
#[test]
fn an_interrupted_demo_leaves_no_server_and_no_directory() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["demo", "--rows", "3000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let dir = first
        .split_whitespace()
        .find(|w| w.contains("walrelay-demo-"))
        .unwrap_or_else(|| panic!("no work directory named: {first}"))
        .to_string();
    // The primary is up and the standby on its way.
    let up = lines.next().unwrap().unwrap();
    assert!(up.contains("[1/5] primary up"), "{up}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: stopping the servers and removing"),
        "{err}"
    );
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir))
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
}
