//! A directory tree as data — every entry's type, mode, owner, modification time, and a file's bytes
//! or a link's target — so a test can assert that a refused command left it untouched, byte for
//! byte, including the directory itself.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one entry holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    Dir,
    Symlink(PathBuf),
    Other,
}

/// One entry, with the metadata a careless tool would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub content: Content,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
}

/// Every entry under `root` (links not followed), `root` itself as the empty path. Empty if `root`
/// does not exist.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    if fs::symlink_metadata(root).is_err() {
        return out;
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        // `root.join("")` would add a trailing slash, which a regular file does not take.
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = meta.file_type();
        let content = if ft.is_file() {
            Content::File(
                fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
            )
        } else if ft.is_symlink() {
            Content::Symlink(fs::read_link(&path).expect("read link"))
        } else if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
            {
                stack.push(rel.join(e.expect("directory entry").file_name()));
            }
            Content::Dir
        } else {
            Content::Other
        };
        out.insert(
            rel,
            Entry {
                content,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            },
        );
    }
    out
}

/// Panics naming the first difference between two snapshots of `root`.
pub fn assert_unchanged(
    root: &Path,
    before: &BTreeMap<PathBuf, Entry>,
    after: &BTreeMap<PathBuf, Entry>,
    what: &str,
) {
    for (path, b) in before {
        match after.get(path) {
            None => panic!("{what}: {} was removed", root.join(path).display()),
            Some(a) if a != b => panic!(
                "{what}: {} changed:\nbefore {b:?}\nafter  {a:?}",
                root.join(path).display()
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = after.keys().find(|p| !before.contains_key(*p)) {
        panic!("{what}: {} was added", root.join(extra).display());
    }
}
