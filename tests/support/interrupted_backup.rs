//! A `walrelay backup` stopped mid-stream, the same checks for every kind of archive (a directory,
//! a bucket, a container): SIGTERM (exit 130) leaves nothing of it; SIGKILL leaves an incomplete
//! backup that `backup list` shows as such, that `bootstrap --from-archive` refuses, and whose label
//! stays taken until `backup delete` clears it; one deleted while it runs fails and leaves nothing;
//! after which a new backup of that label completes.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use walrelay_testkit::{poll, Cluster};

use super::walrelay_cmd::{self, Walrelay};

/// Where the backup goes and how to see it there.
pub struct InterruptedBackup<'a> {
    /// The `-D` of `backup`: a directory or a store URL.
    pub location: &'a str,
    /// Arguments every `backup` run here gets after `-D` and `-l` (a spool directory, say).
    pub extra_args: &'a [&'a str],
    /// True once the backup has written a part of its tar stream to the archive (or its spool).
    pub under_way: &'a dyn Fn() -> bool,
    /// What is left of label "slow" in the archive (paths or object names); empty when nothing is.
    pub remains: &'a dyn Fn() -> Vec<String>,
    /// How long to let the stream run after `under_way` before stopping it.
    pub settle: Duration,
}

const LABEL: &str = "slow";

impl InterruptedBackup<'_> {
    /// Runs every check against `primary` (which needs about 25 MB of data: `pgbench -i -s 1`).
    pub fn check(&self, primary: &Cluster) {
        let conn = primary.replication_conninfo();
        // 25 MB at 1 MB/s: long enough to be interrupted mid-stream.
        let mut child = self.start_slow(&conn, "backup-term");
        child.signal(Signal::SIGTERM);
        let status = child.wait(poll::timeout());
        assert_eq!(status.code(), Some(130), "{}", child.full_log());
        assert_eq!(
            (self.remains)(),
            Vec::<String>::new(),
            "a stopped backup leaves nothing: {}",
            child.full_log()
        );

        let mut child = self.start_slow(&conn, "backup-kill");
        child.kill9();
        let listed = self.list();
        assert_eq!(count(&listed, "backups"), 0, "{listed}");
        assert_eq!(listed["incomplete"][0], LABEL, "{listed}");
        assert_eq!(count(&listed, "incomplete"), 1, "{listed}");

        let target = primary.scratch_path("never");
        let refused = run(&[
            "bootstrap",
            "--from-archive",
            self.location,
            "--backup",
            LABEL,
            "--target",
            "immediate",
            "-D",
            target.to_str().expect("a UTF-8 scratch path"),
        ]);
        assert_eq!(refused.code(), Some(2), "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("no complete backup labelled \"slow\""),
            "{refused:?}"
        );
        assert!(!Path::new(&target).exists());

        // The label is taken until the remains are deleted.
        let taken = run(&self.backup_args(&conn, &[]));
        assert_eq!(taken.code(), Some(2), "{taken:?}");
        assert!(
            !(self.remains)().is_empty(),
            "a refused backup removed the remains"
        );
        run_ok(&["backup", "delete", LABEL, "-D", self.location]);
        assert_eq!(
            (self.remains)(),
            Vec::<String>::new(),
            "backup delete left remains"
        );

        // Deleted while it runs (`backup list` shows it as incomplete and names the delete): it
        // fails, instead of finishing with a descriptor of objects that are gone.
        let mut child = self.start_slow(&conn, "backup-deleted");
        run_ok(&["backup", "delete", LABEL, "-D", self.location]);
        let status = child.wait(poll::timeout());
        assert_ne!(status.code(), Some(0), "{}", child.full_log());
        // A store: the check before the descriptor is written. A directory: its spool went too.
        if self.location.contains("://") {
            assert!(
                child.full_log().contains("was deleted while it ran"),
                "{}",
                child.full_log()
            );
        }
        // Nothing under the label: no complete backup, no damaged one.
        poll::wait_until(
            "the failed backup to leave nothing",
            || (self.remains)().is_empty(),
            || format!("{:?}\n{}", (self.remains)(), child.full_log()),
        );

        run_ok(&self.backup_args(&conn, &["-c", "fast"]));
        let listed = self.list();
        assert_eq!(listed["backups"][0]["label"], LABEL, "{listed}");
        assert_eq!(count(&listed, "incomplete"), 0, "{listed}");
    }

    fn backup_args(&self, conn: &str, more: &[&str]) -> Vec<String> {
        ["backup", "-d", conn, "-D", self.location, "-l", LABEL]
            .iter()
            .chain(self.extra_args)
            .chain(more)
            .map(|a| a.to_string())
            .collect()
    }

    /// A rate-limited backup, returned once it is well into its tar stream.
    fn start_slow(&self, conn: &str, name: &str) -> Walrelay {
        let mut child = Walrelay::start(name, &self.backup_args(conn, &["-r", "1M", "-c", "fast"]));
        poll::wait_until(
            "the backup to be under way",
            || {
                child.assert_running();
                (self.under_way)()
            },
            String::new,
        );
        std::thread::sleep(self.settle);
        child.assert_running();
        child
    }

    fn list(&self) -> serde_json::Value {
        let out = run_ok(&["backup", "list", "-D", self.location, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// The length of the list `key` in `backup list --json`'s output.
fn count(listed: &serde_json::Value, key: &str) -> usize {
    listed[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list {key:?} in {listed}"))
        .len()
}

fn run<S: AsRef<str>>(args: &[S]) -> walrelay_cmd::Finished {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    walrelay_cmd::run(&args, poll::timeout())
}

/// Runs walrelay to completion, panics unless it exits 0; returns stdout.
fn run_ok<S: AsRef<str>>(args: &[S]) -> String {
    let done = run(args);
    assert_eq!(done.code(), Some(0), "{done:?}");
    done.stdout
}
