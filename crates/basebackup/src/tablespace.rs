//! Tablespace mapping (`-T OLDDIR=NEWDIR`) and preparing the directories tablespaces land in.
//!
//! The parsing follows `tablespace_list_append` in `pg_basebackup.c` to the letter, so that an
//! operator's existing `-T` arguments mean the same thing here: `\=` stands for a literal `=`, a
//! backslash before anything else is kept, both sides must be absolute, and both are cleaned up with
//! PostgreSQL's `canonicalize_path` (trailing and doubled slashes, `.` and `..`).
//!
//! A tablespace the server reports is placed at its mapped directory, or at its original location when
//! no mapping names it; either way that directory must be absent or empty, and this is checked for all
//! tablespaces before any of them is created and before any archive byte is written
//! ([`prepare_tablespace_dirs`]). In-place tablespaces (`allow_in_place_tablespaces`, PostgreSQL 15+)
//! report a location relative to the data directory and stay inside it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use walrelay_durable::{create_dir_all_durable, DurableError, Owner};

use crate::member_path::sanitize_member_path;

/// `MAXPGPATH`: pg_basebackup refuses mapping directories this long or longer.
pub const MAXPGPATH: usize = 1024;

/// Why a `-T` argument is not a valid mapping. Messages match pg_basebackup's.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("directory name too long in tablespace mapping \"{0}\": paths must be shorter than 1024 bytes")]
    TooLong(String),
    #[error("multiple \"=\" signs in tablespace mapping \"{0}\": write a literal \"=\" in a path as \"\\=\"")]
    MultipleEquals(String),
    #[error("invalid tablespace mapping format \"{0}\", must be \"OLDDIR=NEWDIR\"")]
    Format(String),
    #[error("old directory is not an absolute path in tablespace mapping: {0}; give the tablespace's location on the primary as an absolute path (pg_tablespace_location())")]
    OldNotAbsolute(String),
    #[error("new directory is not an absolute path in tablespace mapping: {0}; give the new location as an absolute path")]
    NewNotAbsolute(String),
}

/// One `OLDDIR=NEWDIR` pair, both canonicalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingEntry {
    pub old_dir: String,
    pub new_dir: String,
}

impl FromStr for MappingEntry {
    type Err = MappingError;

    /// Parses one `-T` argument exactly as `tablespace_list_append` does.
    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let bytes = arg.as_bytes();
        let mut old_dir: Vec<u8> = Vec::new();
        let mut new_dir: Vec<u8> = Vec::new();
        let mut in_new = false;
        for (i, &b) in bytes.iter().enumerate() {
            let current_len = if in_new { new_dir.len() } else { old_dir.len() };
            if current_len >= MAXPGPATH {
                return Err(MappingError::TooLong(arg.to_string()));
            }
            let next = bytes.get(i + 1).copied();
            let prev = if i == 0 { None } else { Some(bytes[i - 1]) };
            if b == b'\\' && next == Some(b'=') {
                // skip the backslash that escapes '='
            } else if b == b'=' && prev != Some(b'\\') {
                if in_new {
                    // pg_basebackup checks "new_dir already started", i.e. a second '=' after
                    // at least one character of NEWDIR; "a==b" reaches the format check instead.
                    if !new_dir.is_empty() {
                        return Err(MappingError::MultipleEquals(arg.to_string()));
                    }
                }
                in_new = true;
            } else if in_new {
                new_dir.push(b);
            } else {
                old_dir.push(b);
            }
        }
        if old_dir.is_empty() || new_dir.is_empty() {
            return Err(MappingError::Format(arg.to_string()));
        }
        // Only ASCII bytes were removed from valid UTF-8, so both halves are still UTF-8.
        let old_dir = String::from_utf8_lossy(&old_dir).into_owned();
        let new_dir = String::from_utf8_lossy(&new_dir).into_owned();
        if !old_dir.starts_with('/') {
            return Err(MappingError::OldNotAbsolute(old_dir));
        }
        if !new_dir.starts_with('/') {
            return Err(MappingError::NewNotAbsolute(new_dir));
        }
        Ok(MappingEntry {
            old_dir: canonicalize_path(&old_dir),
            new_dir: canonicalize_path(&new_dir),
        })
    }
}

/// All `-T` mappings, in command-line order (the first match wins, as in `get_tablespace_mapping`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablespaceMapping {
    entries: Vec<MappingEntry>,
}

impl TablespaceMapping {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and appends one `-T OLDDIR=NEWDIR` argument.
    pub fn push_arg(&mut self, arg: &str) -> Result<(), MappingError> {
        self.entries.push(arg.parse()?);
        Ok(())
    }

    /// Where a tablespace at `location` (as the server reports it) goes: the mapped directory, or
    /// `location` itself (unchanged, as pg_basebackup returns it) when no mapping matches.
    pub fn map<'a>(&'a self, location: &'a str) -> Cow<'a, str> {
        let canon = canonicalize_path(location);
        match self.entries.iter().find(|e| e.old_dir == canon) {
            Some(e) => Cow::Borrowed(&e.new_dir),
            None => Cow::Borrowed(location),
        }
    }

    /// Mappings whose OLDDIR matches none of the server's tablespaces: almost always a typo the
    /// operator wants to hear about.
    pub(crate) fn unused<'a>(
        &'a self,
        tablespaces: &[TablespaceLocation],
    ) -> Vec<&'a MappingEntry> {
        let canon: HashSet<String> = tablespaces
            .iter()
            .map(|t| canonicalize_path(&t.location))
            .collect();
        self.entries
            .iter()
            .filter(|e| !canon.contains(&e.old_dir))
            .collect()
    }
}

/// PostgreSQL's `canonicalize_path` (`src/port/path.c`) for Unix: drops repeated and trailing
/// slashes and `.` components, and resolves `..` against the preceding component where there is one.
/// An absolute path cannot climb above `/`; a relative one keeps the `..` it cannot resolve. A
/// relative path that reduces to nothing is `.`; the empty string stays empty.
pub fn canonicalize_path(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            name => parts.push(name),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// A tablespace as the server announces it before sending archives (`spcoid`, `spclocation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceLocation {
    pub oid: u32,
    pub location: String,
}

/// A tablespace whose target directory has been checked (and created if absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedTablespace {
    pub oid: u32,
    /// The location the server reported.
    pub server_location: String,
    /// Where its archive is extracted and where `pg_tblspc/<oid>` will point.
    pub target: PathBuf,
    /// True for in-place tablespaces, which live inside the data directory and have no symlink.
    pub in_place: bool,
    /// True when walrelay created the directory (so a failed run may remove it).
    pub created: bool,
}

/// Why the tablespaces cannot be placed.
#[derive(Debug, Error)]
pub enum TablespaceError {
    #[error("directory \"{}\" exists but is not empty (it holds \"{entry}\"){}: empty it, remove it, or map the tablespace elsewhere with -T OLDDIR=NEWDIR", dir.display(), lost_found_hint(entry))]
    NotEmpty { dir: PathBuf, entry: String },
    #[error("\"{0}\" exists but is not a directory: remove it or map the tablespace elsewhere with -T OLDDIR=NEWDIR")]
    NotADirectory(PathBuf),
    #[error("could not access directory \"{path}\": {source}")]
    Access {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tablespaces {first} and {second} would both be extracted into \"{dir}\": map one of them elsewhere with -T OLDDIR=NEWDIR")]
    SameTarget {
        first: u32,
        second: u32,
        dir: PathBuf,
    },
    #[error("the server reported tablespace {oid} at \"{location}\", which is neither absolute nor a safe path inside the data directory: the server is misbehaving")]
    BadLocation { oid: u32, location: String },
    #[error("the server reported tablespace {0} twice: the server is misbehaving")]
    DuplicateOid(u32),
    #[error(transparent)]
    Create(#[from] DurableError),
}

/// `lost+found` is what a freshly made file system holds: the directory is a mount point.
pub(crate) fn lost_found_hint(entry: &str) -> &'static str {
    if entry == "lost+found" {
        ", so it is a file system's mount point: use a directory below it"
    } else {
        ""
    }
}

/// What a directory looks like before a backup is written into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirState {
    Absent,
    Empty,
}

/// `pg_check_dir` reduced to what matters: absent or empty is fine, anything else is an error
/// (`directory "…" exists but is not empty`).
pub fn check_dir_empty_or_absent(dir: &Path) -> Result<DirState, TablespaceError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DirState::Absent),
        Err(e) => Err(TablespaceError::Access {
            path: dir.to_path_buf(),
            source: e,
        }),
        Ok(_) => {
            // Follows a symlink here on purpose: a data directory given as a link is fine.
            if !dir.is_dir() {
                return Err(TablespaceError::NotADirectory(dir.to_path_buf()));
            }
            let mut entries = fs::read_dir(dir).map_err(|e| TablespaceError::Access {
                path: dir.to_path_buf(),
                source: e,
            })?;
            match entries.next() {
                None => Ok(DirState::Empty),
                Some(Ok(first)) => Err(TablespaceError::NotEmpty {
                    dir: dir.to_path_buf(),
                    entry: first.file_name().to_string_lossy().into_owned(),
                }),
                Some(Err(e)) => Err(TablespaceError::Access {
                    path: dir.to_path_buf(),
                    source: e,
                }),
            }
        }
    }
}

/// Works out every tablespace's target directory, checks that each is absent or empty, and only
/// then creates the missing ones (`dir_mode`: 0700, or 0750 for a primary with group access;
/// `owner`). Nothing is created when any check fails.
pub fn prepare_tablespace_dirs(
    data_dir: &Path,
    tablespaces: &[TablespaceLocation],
    mapping: &TablespaceMapping,
    owner: Owner,
    dir_mode: u32,
) -> Result<Vec<PreparedTablespace>, TablespaceError> {
    let planned = plan_tablespace_dirs(data_dir, tablespaces, mapping)?;
    let mut out = Vec::with_capacity(planned.len());
    for ts in planned {
        if ts.created {
            create_dir_all_durable(&ts.target, dir_mode, owner)?;
        } else {
            owner.apply(&ts.target)?;
        }
        out.push(ts);
    }
    Ok(out)
}

/// Works out every tablespace's target directory and checks that each is absent or empty (and that
/// no two share one), creating nothing: `created` says which are absent. A bootstrap runs it once
/// before the backup's checkpoint, with the tablespaces an SQL session lists, so a clash is
/// reported before the wait.
pub fn plan_tablespace_dirs(
    data_dir: &Path,
    tablespaces: &[TablespaceLocation],
    mapping: &TablespaceMapping,
) -> Result<Vec<PreparedTablespace>, TablespaceError> {
    let mut planned: Vec<PreparedTablespace> = Vec::new();
    let mut oids = HashSet::new();
    for ts in tablespaces {
        if !oids.insert(ts.oid) {
            return Err(TablespaceError::DuplicateOid(ts.oid));
        }
        let bad = || TablespaceError::BadLocation {
            oid: ts.oid,
            location: ts.location.clone(),
        };
        let (target, in_place) = if ts.location.starts_with('/') {
            (PathBuf::from(mapping.map(&ts.location).as_ref()), false)
        } else {
            // In-place tablespace: "pg_tblspc/<oid>" relative to the data directory.
            let rel = sanitize_member_path(ts.location.as_bytes()).map_err(|_| bad())?;
            if rel.as_os_str().is_empty() {
                return Err(bad());
            }
            (data_dir.join(rel), true)
        };
        if let Some(other) = planned.iter().find(|p| p.target == target) {
            return Err(TablespaceError::SameTarget {
                first: other.oid,
                second: ts.oid,
                dir: target,
            });
        }
        let state = check_dir_empty_or_absent(&target)?;
        planned.push(PreparedTablespace {
            oid: ts.oid,
            server_location: ts.location.clone(),
            target,
            in_place,
            created: state == DirState::Absent,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = |arg: &str, old: &str, new: &str| {
            assert_eq!(
                arg.parse::<MappingEntry>(),
                Ok(MappingEntry {
                    old_dir: old.into(),
                    new_dir: new.into()
                }),
                "{arg}"
            );
        };
        ok("/a=/b", "/a", "/b");
        ok("/old/ts/=/new//ts//", "/old/ts", "/new/ts");
        ok("/a\\=b=/c", "/a=b", "/c");
        ok("/a=/c\\=d", "/a", "/c=d");
        ok("/a\\b=/c", "/a\\b", "/c");
        ok("/x/./y/../z=/n", "/x/z", "/n");
        ok("/=/n", "/", "/n");
        // "a==b": the second '=' arrives while NEWDIR is still empty, so pg_basebackup does not see
        // "multiple" signs; the mapping is "/a" -> "/b".
        ok("/a==/b", "/a", "/b");
    }

    #[test]
    fn parse_errors() {
        use MappingError::*;
        let err = |arg: &str| arg.parse::<MappingEntry>().unwrap_err();
        assert_eq!(err("/a"), Format("/a".into()));
        assert_eq!(err(""), Format("".into()));
        assert_eq!(err("=/x"), Format("=/x".into()));
        assert_eq!(err("/x="), Format("/x=".into()));
        assert_eq!(err("/x\\=/y"), Format("/x\\=/y".into()));
        assert_eq!(err("/a=/b=/c"), MultipleEquals("/a=/b=/c".into()));
        assert_eq!(err("x=/y"), OldNotAbsolute("x".into()));
        assert_eq!(err("/x=y"), NewNotAbsolute("y".into()));
        assert_eq!(
            err("x=/y").to_string(),
            "old directory is not an absolute path in tablespace mapping: x; give the tablespace's location on the primary as an absolute path (pg_tablespace_location())"
        );
        assert_eq!(
            err("/x").to_string(),
            "invalid tablespace mapping format \"/x\", must be \"OLDDIR=NEWDIR\""
        );
        let long = format!("/{}=/b", "a".repeat(MAXPGPATH));
        assert!(matches!(err(&long), TooLong(_)));
    }

    #[test]
    fn canonicalize_like_postgres() {
        for (input, want) in [
            ("", ""),
            ("/", "/"),
            ("//", "/"),
            ("/a/", "/a"),
            ("/a//b///", "/a/b"),
            ("/a/./b/.", "/a/b"),
            ("/a/b/..", "/a"),
            ("/a/../..", "/"),
            ("/..", "/"),
            ("/../a", "/a"),
            (".", "."),
            ("./", "."),
            ("a/..", "."),
            ("..", ".."),
            ("../..", "../.."),
            ("../a/../b", "../b"),
            ("a/../../b", "../b"),
            ("a/./b//c/", "a/b/c"),
        ] {
            assert_eq!(canonicalize_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn mapping_lookup() {
        let mut m = TablespaceMapping::new();
        m.push_arg("/srv/ts1=/data/ts1").unwrap();
        m.push_arg("/srv/ts1=/data/other").unwrap();
        assert_eq!(m.map("/srv/ts1"), "/data/ts1"); // first match wins
        assert_eq!(m.map("/srv//ts1/"), "/data/ts1"); // server's path canonicalized for the lookup
        assert_eq!(m.map("/srv/ts2/"), "/srv/ts2/"); // unmapped: returned as given
        let unused = m.unused(&[TablespaceLocation {
            oid: 1,
            location: "/srv/ts2".into(),
        }]);
        assert_eq!(unused.len(), 2);
    }

    #[test]
    fn prepare_checks_all_before_creating_any() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let free = d.path().join("free");
        let busy = d.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("x"), b"x").unwrap();
        let mut m = TablespaceMapping::new();
        m.push_arg(&format!("/srv/a={}", free.display())).unwrap();
        m.push_arg(&format!("/srv/b={}", busy.display())).unwrap();
        let ts = [
            TablespaceLocation {
                oid: 16384,
                location: "/srv/a".into(),
            },
            TablespaceLocation {
                oid: 16385,
                location: "/srv/b".into(),
            },
        ];
        let e = prepare_tablespace_dirs(&data, &ts, &m, Owner::current(), 0o700).unwrap_err();
        assert!(
            matches!(e, TablespaceError::NotEmpty { ref dir, .. } if *dir == busy),
            "{e}"
        );
        assert!(e.to_string().contains("exists but is not empty"));
        assert!(!free.exists(), "nothing may be created when a check fails");

        fs::remove_file(busy.join("x")).unwrap();
        let prepared = prepare_tablespace_dirs(&data, &ts, &m, Owner::current(), 0o700).unwrap();
        assert_eq!(prepared[0].target, free);
        assert!(prepared[0].created);
        assert!(!prepared[1].created);
        assert!(free.is_dir());
    }

    #[test]
    fn prepare_in_place_and_bad_locations() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let m = TablespaceMapping::new();
        let p = prepare_tablespace_dirs(
            &data,
            &[TablespaceLocation {
                oid: 16390,
                location: "pg_tblspc/16390".into(),
            }],
            &m,
            Owner::current(),
            0o700,
        )
        .unwrap();
        assert!(p[0].in_place);
        assert_eq!(p[0].target, data.join("pg_tblspc/16390"));
        for bad in ["../escape", "", "pg_tblspc/../../x"] {
            let e = prepare_tablespace_dirs(
                &data,
                &[TablespaceLocation {
                    oid: 1,
                    location: bad.into(),
                }],
                &m,
                Owner::current(),
                0o700,
            )
            .unwrap_err();
            assert!(
                matches!(e, TablespaceError::BadLocation { .. }),
                "{bad}: {e}"
            );
        }
        // two tablespaces onto one directory
        let mut m = TablespaceMapping::new();
        let same = d.path().join("same");
        m.push_arg(&format!("/a={}", same.display())).unwrap();
        m.push_arg(&format!("/b={}", same.display())).unwrap();
        let e = prepare_tablespace_dirs(
            &data,
            &[
                TablespaceLocation {
                    oid: 1,
                    location: "/a".into(),
                },
                TablespaceLocation {
                    oid: 2,
                    location: "/b".into(),
                },
            ],
            &m,
            Owner::current(),
            0o700,
        )
        .unwrap_err();
        assert!(matches!(e, TablespaceError::SameTarget { .. }), "{e}");
    }

    #[test]
    fn dir_state() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            check_dir_empty_or_absent(&d.path().join("nope")).unwrap(),
            DirState::Absent
        );
        assert_eq!(
            check_dir_empty_or_absent(d.path()).unwrap(),
            DirState::Empty
        );
        fs::write(d.path().join("f"), b"").unwrap();
        assert!(matches!(
            check_dir_empty_or_absent(&d.path().join("f")),
            Err(TablespaceError::NotADirectory(_))
        ));
        assert!(matches!(
            check_dir_empty_or_absent(d.path()),
            Err(TablespaceError::NotEmpty { .. })
        ));
    }
}
