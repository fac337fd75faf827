//! The version matrix's record of what worked on one PostgreSQL major (tests/matrix.rs).
//!
//! A matrix test checks several features of walrelay against one major. A failure in one feature must
//! not hide the state of the others (a broken manifest check says nothing about `receive`), so each
//! feature runs through [`MatrixReport::run`], which catches its panic, records it as failed and lets
//! the test go on with the features that do not depend on it. At the end [`MatrixReport::finish`]
//! writes `pgN.json`, prints one summary line, and fails the test naming every failed feature.
//!
//! The JSON files are what `scripts/compat-table.sh` turns into the README's compatibility table. They
//! go to `$WALRELAY_MATRIX_DIR`, else `$CARGO_TARGET_DIR/matrix`, else `target/matrix` in the
//! workspace — the same rule the script follows. A test removes its old file when it starts, so a run
//! that dies before writing leaves no stale result behind for the script to mistake for a fresh one.

use std::fmt::Write as _;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every feature a matrix test reports, in table order. The names are the JSON keys
/// `scripts/compat-table.sh` reads.
pub const FEATURES: [&str; 9] = [
    "check",
    "bootstrap",
    "standby",
    "manifest",
    "slots",
    "receive",
    "timeline",
    "sidecar",
    "relay",
];

/// The features of the `walrelay subset` part of the matrix (`pgN-subset.json`): this major as
/// the source of a subset into the newest major of the matrix, and as its target.
pub const SUBSET_FEATURES: [&str; 2] = ["source", "target"];

/// What happened to one feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Checked and correct.
    Pass,
    /// Checked and wrong: the panic message.
    Fail(String),
    /// Does not exist on this major (e.g. backup manifests before 13): why.
    Skipped(String),
    /// Not checked because a feature it needs failed: which.
    NotRun(String),
}

impl Outcome {
    fn key(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotRun(_) => "not_run",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(s) | Outcome::Skipped(s) | Outcome::NotRun(s) => Some(s),
        }
    }

    /// The words of the summary line.
    fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "ok",
            Outcome::Fail(_) => "FAILED",
            Outcome::Skipped(_) => "n/a",
            Outcome::NotRun(_) => "not run",
        }
    }
}

struct Entry {
    feature: &'static str,
    outcome: Outcome,
    duration: Duration,
}

/// The results of one major's matrix test; see the module docs.
pub struct MatrixReport {
    major: u32,
    /// The features reported, in table order.
    features: &'static [&'static str],
    /// `matrix` or `matrix subset`, in printed lines.
    label: &'static str,
    /// Further top-level keys of the JSON document.
    extra: serde_json::Map<String, serde_json::Value>,
    server_version: Option<String>,
    entries: Vec<Entry>,
    started: Instant,
    path: PathBuf,
    finished: bool,
}

/// Where the JSON files go (see the module docs).
pub fn results_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WALRELAY_MATRIX_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
    } else {
        target
    };
    target.join("matrix")
}

impl MatrixReport {
    /// Starts the record of `major` in [`results_dir`], removing the result of an earlier run.
    pub fn new(major: u32) -> MatrixReport {
        MatrixReport::new_in(&results_dir(), major)
    }

    /// [`MatrixReport::new`] writing into `dir`.
    pub fn new_in(dir: &Path, major: u32) -> MatrixReport {
        MatrixReport::of_kind(dir, major, &FEATURES, "matrix", &format!("pg{major}.json"))
    }

    /// The record of the `walrelay subset` pairs of `major` (`pgN-subset.json`).
    pub fn subset(major: u32) -> MatrixReport {
        MatrixReport::subset_in(&results_dir(), major)
    }

    /// [`MatrixReport::subset`] writing into `dir`.
    pub fn subset_in(dir: &Path, major: u32) -> MatrixReport {
        MatrixReport::of_kind(
            dir,
            major,
            &SUBSET_FEATURES,
            "matrix subset",
            &format!("pg{major}-subset.json"),
        )
    }

    /// A top-level key of the JSON document besides the standard ones.
    pub fn set_extra(&mut self, key: &str, value: serde_json::Value) {
        self.extra.insert(key.to_string(), value);
    }

    fn of_kind(
        dir: &Path,
        major: u32,
        features: &'static [&'static str],
        label: &'static str,
        file: &str,
    ) -> MatrixReport {
        let path = dir.join(file);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!(
                "PostgreSQL {major}: could not remove the old result {}: {e}",
                path.display()
            ),
        }
        MatrixReport {
            major,
            features,
            label,
            extra: serde_json::Map::new(),
            server_version: None,
            entries: Vec::new(),
            started: Instant::now(),
            path,
            finished: false,
        }
    }

    pub fn set_server_version(&mut self, version: &str) {
        self.server_version = Some(version.to_string());
    }

    /// Runs one feature's checks; a panic inside is recorded as its failure (and printed by the panic
    /// hook as usual) instead of ending the test. Returns what `f` returned, or `None` if it failed.
    pub fn run<T>(&mut self, feature: &'static str, f: impl FnOnce() -> T) -> Option<T> {
        self.assert_known(feature);
        let start = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        let duration = start.elapsed();
        let (outcome, value) = match result {
            Ok(v) => (Outcome::Pass, Some(v)),
            Err(payload) => (Outcome::Fail(panic_message(payload.as_ref())), None),
        };
        eprintln!(
            "{}: PostgreSQL {}: {feature} {} in {:.1} s",
            self.label,
            self.major,
            outcome.word(),
            duration.as_secs_f64()
        );
        self.record(feature, outcome, duration);
        value
    }

    /// Records a feature that does not exist on this major.
    pub fn skip(&mut self, feature: &'static str, why: &str) {
        self.assert_known(feature);
        self.record(feature, Outcome::Skipped(why.to_string()), Duration::ZERO);
    }

    /// Records a feature that could not be checked because `needed` failed.
    pub fn not_run(&mut self, feature: &'static str, needed: &str) {
        self.assert_known(feature);
        self.record(
            feature,
            Outcome::NotRun(format!("needs {needed}, which failed")),
            Duration::ZERO,
        );
    }

    /// The outcome recorded for `feature`, if any.
    pub fn outcome(&self, feature: &str) -> Option<&Outcome> {
        self.entries
            .iter()
            .find(|e| e.feature == feature)
            .map(|e| &e.outcome)
    }

    fn assert_known(&self, feature: &str) {
        assert!(
            self.features.contains(&feature),
            "matrix feature {feature:?} is not one of {:?}",
            self.features
        );
        assert!(
            self.outcome(feature).is_none(),
            "matrix feature {feature:?} recorded twice"
        );
    }

    fn record(&mut self, feature: &'static str, outcome: Outcome, duration: Duration) {
        self.entries.push(Entry {
            feature,
            outcome,
            duration,
        });
    }

    /// The one-line summary: `matrix: PostgreSQL 13 (13.23): check ok, bootstrap ok, …`.
    pub fn summary_line(&self) -> String {
        let mut line = format!("{}: PostgreSQL {}", self.label, self.major);
        if let Some(v) = &self.server_version {
            let _ = write!(line, " ({v})");
        }
        line.push(':');
        for (i, f) in self.features.iter().enumerate() {
            let word = self.outcome(f).map_or("not run", Outcome::word);
            let _ = write!(line, "{} {f} {word}", if i == 0 { "" } else { "," });
        }
        let _ = write!(line, " ({:.0} s)", self.started.elapsed().as_secs_f64());
        line
    }

    /// The JSON document (see `scripts/compat-table.sh` for the reader).
    pub fn to_json(&self) -> serde_json::Value {
        let mut features = serde_json::Map::new();
        for &f in self.features {
            let entry = self.entries.iter().find(|e| e.feature == f);
            let (status, detail, secs) = match entry {
                Some(e) => (
                    e.outcome.key(),
                    e.outcome.detail().map(str::to_string),
                    e.duration.as_secs_f64(),
                ),
                // The test ended (panicked) before reaching it.
                None => (
                    "not_run",
                    Some("the test ended before this feature".to_string()),
                    0.0,
                ),
            };
            let mut obj = serde_json::Map::new();
            obj.insert("status".into(), status.into());
            if let Some(d) = detail {
                obj.insert("detail".into(), d.into());
            }
            obj.insert(
                "seconds".into(),
                serde_json::json!((secs * 10.0).round() / 10.0),
            );
            features.insert(f.to_string(), obj.into());
        }
        let mut doc = serde_json::json!({
            "major": self.major,
            "server_version": self.server_version,
            "features": features,
            "seconds": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        if let Some(obj) = doc.as_object_mut() {
            obj.extend(self.extra.clone());
        }
        doc
    }

    fn write(&self) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = fs::create_dir_all(dir) {
            eprintln!(
                "matrix: PostgreSQL {}: could not create {}: {e}",
                self.major,
                dir.display()
            );
            return;
        }
        let text = match serde_json::to_string_pretty(&self.to_json()) {
            Ok(t) => t + "\n",
            Err(e) => {
                eprintln!("matrix: PostgreSQL {}: JSON: {e}", self.major);
                return;
            }
        };
        // Written under a temporary name and renamed, so the script never reads half a file.
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &self.path)) {
            eprintln!(
                "matrix: PostgreSQL {}: could not write {}: {e}",
                self.major,
                self.path.display()
            );
        }
    }

    /// Writes the JSON file, prints the summary line, and panics naming each failed feature.
    pub fn finish(mut self) {
        self.finished = true;
        self.write();
        // The test harness shows it for a failed test, or always with --nocapture; CI prints the
        // table from the JSON files (scripts/compat-table.sh).
        println!("{}", self.summary_line());
        let failures: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| match &e.outcome {
                Outcome::Fail(msg) => Some(format!("{} failed: {}", e.feature, first_line(msg))),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            panic!("PostgreSQL {}: {}", self.major, failures.join("; "));
        }
    }
}

impl Drop for MatrixReport {
    /// A test that panics outside [`MatrixReport::run`] (a cluster that did not start) still leaves its
    /// result, with the features it did not reach marked `not_run`.
    fn drop(&mut self) {
        if !self.finished {
            self.write();
            eprintln!("{}", self.summary_line());
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or with formatting).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = MatrixReport::new_in(dir.path(), 99);
        r.set_server_version("99.1");
        assert_eq!(r.run("check", || 7), Some(7));
        assert_eq!(r.run("bootstrap", || -> u32 { panic!("boom\nmore") }), None);
        r.skip("manifest", "no manifests before 13");
        r.not_run("standby", "bootstrap");
        let j = r.to_json();
        assert_eq!(j["major"], 99);
        assert_eq!(j["features"]["check"]["status"], "pass");
        assert_eq!(j["features"]["bootstrap"]["status"], "fail");
        assert_eq!(j["features"]["bootstrap"]["detail"], "boom\nmore");
        assert_eq!(j["features"]["manifest"]["status"], "skipped");
        assert_eq!(j["features"]["standby"]["status"], "not_run");
        assert_eq!(j["features"]["sidecar"]["status"], "not_run");
        let line = r.summary_line();
        assert!(
            line.starts_with("matrix: PostgreSQL 99 (99.1): check ok, bootstrap FAILED, standby not run, manifest n/a"),
            "{line}"
        );
        let e = panic::catch_unwind(AssertUnwindSafe(|| r.finish())).unwrap_err();
        assert_eq!(
            panic_message(e.as_ref()),
            "PostgreSQL 99: bootstrap failed: boom"
        );
        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("pg99.json")).unwrap())
                .unwrap();
        assert_eq!(written["features"]["check"]["status"], "pass");
    }

    #[test]
    fn the_subset_part_has_its_own_features_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = MatrixReport::subset_in(dir.path(), 98);
        r.set_extra("newest", 18.into());
        r.run("source", || ());
        r.skip("target", "not today");
        assert!(r
            .summary_line()
            .starts_with("matrix subset: PostgreSQL 98: source ok, target n/a"));
        r.finish();
        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("pg98-subset.json")).unwrap())
                .unwrap();
        assert_eq!(written["newest"], 18);
        assert_eq!(written["features"]["source"]["status"], "pass");
        assert!(written["features"].get("check").is_none());
    }
}
