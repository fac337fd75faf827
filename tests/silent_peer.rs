#![allow(clippy::unwrap_used)]
//! A peer that accepts connections and never answers — the wrong port (an HTTP server, a stuck
//! proxy), a hung host. No real PostgreSQL server behaves so (it gives up on a client after
//! `authentication_timeout`), hence a fake one: a TCP listener that holds every connection open
//! in silence.
//!
//! | test | what |
//! |---|---|
//! | `a_stop_signal_ends_every_long_running_command_while_it_connects` | `receive`, `serve`, `subset run` and `backup`, each stuck in its first connection: SIGTERM ends it within seconds (before, only a second signal did) with its clean-stop status |
//! | `a_silent_host_of_a_list_is_named_and_tried_last_afterwards` | `-d "host=SILENT,REAL connect_timeout=12"`: after 10 s of silence `receive` names the host it waits on, streams from the real server after the timeout, and reconnects to it after its walsender ended without waiting on the silent host again |
//! | `connect_timeout_gives_up_retries_and_says_what_to_check` | with `connect_timeout=2`, `receive` warns that the attempt timed out, names what to check, and keeps retrying; `check` stops with the same line |

mod support;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use support::walrelay_cmd::{self, Walrelay};
use support::{exit_code, poll};

/// The silent peer: accepts on a free loopback port, keeps every connection open, answers nothing.
struct SilentPeer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentPeer {
    fn start() -> SilentPeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                h.lock().unwrap().push(conn);
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        SilentPeer {
            port,
            accepted,
            _held: held,
        }
    }

    fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres {extra}", self.port)
    }

    /// Waits until `n` connections in all have reached the peer.
    fn wait_accepted(&self, n: usize, w: &mut Walrelay) {
        poll::wait_until(
            &format!("{n} connection(s) to the silent peer"),
            || {
                w.assert_running();
                self.accepted.load(Ordering::SeqCst) >= n
            },
            || format!("{} accepted", self.accepted.load(Ordering::SeqCst)),
        );
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_stop_signal_ends_every_long_running_command_while_it_connects() {
    let peer = SilentPeer::start();
    let scratch = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let p = scratch.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.to_str().unwrap().to_string()
    };
    let upstream = peer.conninfo("");
    let sql = peer.conninfo("dbname=postgres");
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        (
            "receive",
            strings(&["receive", "-d", &upstream, "-D", &dir("archive")]),
            0,
        ),
        (
            "serve",
            strings(&[
                "serve",
                "-d",
                &upstream,
                "-D",
                &dir("relay"),
                "--listen",
                "127.0.0.1:0",
            ]),
            0,
        ),
        (
            "subset run",
            strings(&[
                "subset", "run", "-d", &sql, "--target", &sql, "--name", "silent", "-t", "public.t",
            ]),
            0,
        ),
        (
            "backup",
            strings(&["backup", "-d", &upstream, "-D", &dir("backups")]),
            exit_code::INTERRUPTED,
        ),
    ];
    for (label, args, status) in cases {
        let before = peer.accepted.load(Ordering::SeqCst);
        let mut w = Walrelay::start(label, &args);
        peer.wait_accepted(before + 1, &mut w);
        // Let it sit in the connection for a moment, as a user would before giving up.
        std::thread::sleep(Duration::from_millis(500));
        let asked = Instant::now();
        w.signal(Signal::SIGTERM);
        let exit = w.wait(Duration::from_secs(10));
        assert_eq!(exit.code(), Some(status), "{label}: {}", w.log());
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{label} took {:?} to stop",
            asked.elapsed()
        );
        assert!(!w.log().contains("panicked"), "{label}: {}", w.log());
    }
    assert_eq!(
        std::fs::read_dir(scratch.path().join("backups"))
            .unwrap()
            .count(),
        0,
        "the stopped backup left something in its archive"
    );
}

#[test]
fn connect_timeout_gives_up_retries_and_says_what_to_check() {
    let peer = SilentPeer::start();
    let archive = tempfile::tempdir().unwrap();
    let timed_out = "timed out after 2 s (connect_timeout): no PostgreSQL server answered there";
    let mut w = Walrelay::start(
        "receive",
        &strings(&[
            "receive",
            "-d",
            &peer.conninfo("connect_timeout=2"),
            "-D",
            archive.path().to_str().unwrap(),
        ]),
    );
    w.wait_log(timed_out, Duration::from_secs(30));
    assert!(w.log().contains("check the host and port"), "{}", w.log());
    // It keeps trying: a second connection reaches the peer after the backoff.
    peer.wait_accepted(2, &mut w);
    w.stop_cleanly(Duration::from_secs(10));
    assert_eq!(std::fs::read_dir(archive.path()).unwrap().count(), 0);

    let f = walrelay_cmd::run(
        &strings(&["check", "-d", &peer.conninfo("connect_timeout=2")]),
        Duration::from_secs(60),
    );
    assert_ne!(f.code(), Some(0), "{}", f.stderr);
    let errors = f.error_lines();
    assert_eq!(errors.len(), 1, "{}", f.stderr);
    assert!(errors[0].contains(timed_out), "{}", errors[0]);
}

#[test]
fn a_silent_host_of_a_list_is_named_and_tried_last_afterwards() {
    let peer = SilentPeer::start();
    let server = walrelay_testkit::Cluster::builder()
        .name("silent-list")
        .start();
    let archive = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres connect_timeout=12",
        peer.port,
        server.port()
    );
    let mut w = Walrelay::start(
        "receive",
        &strings(&[
            "receive",
            "-d",
            &conninfo,
            "-D",
            archive.path().to_str().unwrap(),
        ]),
    );
    w.wait_log(
        &format!("no answer from 127.0.0.1 port {} after 10 s", peer.port),
        Duration::from_secs(30),
    );
    w.wait_log("starting WAL stream", Duration::from_secs(60));
    assert_eq!(peer.accepted.load(Ordering::SeqCst), 1);
    // The next session, after the server ended the stream (its walsender terminated; the
    // server stays up, so no attempt meets it down and moves on to the silent host), goes to
    // the host that answers first: streaming again well within the 12 s the silent host would
    // cost.
    let streams = |w: &Walrelay| w.log().matches("starting WAL stream").count();
    let before = streams(&w);
    server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    let restarted = Instant::now();
    poll::wait_until(
        "streaming again after the restart",
        || streams(&w) > before,
        || w.log(),
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "waited on the silent host again: {}",
        w.log()
    );
    assert_eq!(peer.accepted.load(Ordering::SeqCst), 1, "{}", w.log());
    w.stop_cleanly(Duration::from_secs(10));
}
