//! Helpers shared by the integration tests: a sentinel directory that must stay empty, and a tree
//! listing. Hand-made tar members come from `walrelay_testkit::tar_builder`.

// Test-only file: helpers outside #[test] functions panic on setup failure by design.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// A scratch area with a target directory and a sentinel directory beside it that nothing may
/// write into.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub target: PathBuf,
    pub sentinel: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let sentinel = dir.path().join("sentinel");
        fs::create_dir(&target).unwrap();
        fs::create_dir(&sentinel).unwrap();
        Scratch {
            dir,
            target,
            sentinel,
        }
    }

    /// Fails the test if anything appeared in the sentinel directory or beside the target.
    pub fn assert_nothing_outside(&self) {
        let inside: Vec<_> = fs::read_dir(&self.sentinel).unwrap().collect();
        assert!(inside.is_empty(), "sentinel written: {inside:?}");
        let mut beside: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(
            beside,
            ["sentinel", "target"],
            "something written beside the target"
        );
    }
}

/// Every path under `root`, relative, sorted (symlinks not followed).
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
