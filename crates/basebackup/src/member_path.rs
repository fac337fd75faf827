//! Checking archive member paths before anything touches the disk.
//!
//! A member path from the server is untrusted: it must stay inside the directory it is extracted
//! into. This module only looks at the bytes (absolute paths, `..`); the extractor adds the checks
//! that need the filesystem (symbolic links on the way).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Why a member path is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum UnsafePath {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("path contains a \"..\" component")]
    ParentComponent,
}

/// Turns a member path into a relative path made only of normal components.
///
/// `.` components, repeated and trailing slashes are dropped (`./pg_wal/archive_status`, which
/// `basebackup.c` sends with a leading `./`, becomes `pg_wal/archive_status`). The result is empty
/// when the member names the archive root itself (`./`), which only a directory may do.
pub fn sanitize_member_path(raw: &[u8]) -> Result<PathBuf, UnsafePath> {
    if raw.is_empty() {
        return Err(UnsafePath::Empty);
    }
    if raw[0] == b'/' {
        return Err(UnsafePath::Absolute);
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(UnsafePath::ParentComponent),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok(out)
}

/// Resolves a relative symbolic link target against the directory holding the link (`link_parent`,
/// relative to the archive root) without touching the disk.
///
/// Accepted: optional leading `..` components that do not climb above the archive root, then
/// normal components only. A `..` after a normal component is refused, because once the path has
/// gone through a symbolic link a textual `..` no longer means "the directory above".
/// Returns the target relative to the archive root.
pub fn resolve_relative_link(link_parent: &Path, target: &[u8]) -> Option<PathBuf> {
    if target.is_empty() || target[0] == b'/' {
        return None;
    }
    let mut base: Vec<&OsStr> = link_parent
        .components()
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let mut seen_normal = false;
    let mut tail: Vec<&OsStr> = Vec::new();
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if seen_normal {
                    return None;
                }
                base.pop()?;
            }
            name => {
                seen_normal = true;
                tail.push(OsStr::from_bytes(name));
            }
        }
    }
    let mut out = PathBuf::new();
    for c in base.into_iter().chain(tail) {
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalizes() {
        for (raw, want) in [
            ("PG_VERSION", "PG_VERSION"),
            ("base/1/1259", "base/1/1259"),
            ("base/", "base"),
            ("./pg_wal/archive_status", "pg_wal/archive_status"),
            ("a//b/./c/", "a/b/c"),
            ("./", ""),
            (".", ""),
            ("...", "..."),
            ("..a/b..", "..a/b.."),
        ] {
            assert_eq!(
                sanitize_member_path(raw.as_bytes()),
                Ok(PathBuf::from(want)),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(sanitize_member_path(b""), Err(UnsafePath::Empty));
        assert_eq!(
            sanitize_member_path(b"/etc/passwd"),
            Err(UnsafePath::Absolute)
        );
        assert_eq!(sanitize_member_path(b"//x"), Err(UnsafePath::Absolute));
        for bad in ["..", "../x", "a/../../x", "a/..", "a/b/../c", "./.."] {
            assert_eq!(
                sanitize_member_path(bad.as_bytes()),
                Err(UnsafePath::ParentComponent),
                "{bad}"
            );
        }
    }

    #[test]
    fn relative_links() {
        let p = Path::new("a/b");
        assert_eq!(resolve_relative_link(p, b"c"), Some(PathBuf::from("a/b/c")));
        assert_eq!(
            resolve_relative_link(p, b"../c"),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(
            resolve_relative_link(p, b"../../c/d"),
            Some(PathBuf::from("c/d"))
        );
        assert_eq!(resolve_relative_link(p, b"../.."), Some(PathBuf::new()));
        assert_eq!(resolve_relative_link(p, b"../../.."), None);
        assert_eq!(resolve_relative_link(p, b"/etc"), None);
        assert_eq!(resolve_relative_link(p, b""), None);
        assert_eq!(resolve_relative_link(p, b"c/../d"), None);
        assert_eq!(resolve_relative_link(Path::new(""), b".."), None);
    }

    proptest! {
        #[test]
        fn sanitized_paths_stay_inside(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = sanitize_member_path(&raw) {
                prop_assert!(p.is_relative());
                for c in p.components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?}", p);
                }
            }
        }

        #[test]
        fn resolved_links_stay_inside(
            parent in "[a-z]{1,3}(/[a-z]{1,3}){0,3}",
            target in "((\\.\\.|\\.|[a-z]{1,2})/){0,5}(\\.\\.|[a-z]{1,2})?",
        ) {
            if let Some(p) = resolve_relative_link(Path::new(&parent), target.as_bytes()) {
                for c in p.components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?}", p);
                }
            }
        }
    }
}
