//! [`LocalDirStore`]: the object layout in a local directory (`file:///PATH`) — for an NFS mount
//! or a second disk that should hold the archive the way a bucket does, and for tests.
//!
//! An object `a/b/NAME` is the file `ROOT/a/b/NAME`. Put-if-absent writes `.NAME.PID.N.tmp` in the
//! same directory, fsyncs it, hard-links it to `NAME` (`link` fails when the name exists: no
//! replacement, no window where a partial file has the final name), removes the temp name and
//! fsyncs the directory. The WAL's SHA-256 attribute is kept in `NAME.sha256` (`sha256sum`'s line
//! format), written the same way just before the object; listings leave those files out.
//!
//! Blocking file IO runs on tokio's blocking threads.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::FutureExt;
use walrelay_durable::{self as durable, Owner};

use crate::error::{Result, StoreError};
use crate::store::{
    ArchiveStore, Fetched, NewObject, ObjectAttrs, ObjectInfo, ObjectReader, PutIfAbsent,
    StoreFuture, StreamChunk,
};

/// Suffix of the attribute files beside objects.
const ATTR_SUFFIX: &str = ".sha256";
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// An archive in a local directory, in the object layout.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
    /// Owner of what is created: the root's owner when running as root (as `receive` does for a
    /// directory archive), else the current user.
    owner: Owner,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalDirStore {
    /// The store rooted at `root`, which must exist.
    pub fn open(root: &Path) -> Result<LocalDirStore> {
        if !root.is_dir() {
            return Err(StoreError::Setup {
                location: format!("file://{}", root.display()),
                reason: "the directory does not exist: create it first".into(),
            });
        }
        Ok(LocalDirStore {
            root: root.to_path_buf(),
            owner: Owner::of_dir_if_root(root),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('.'))
        {
            return Err(StoreError::Corrupt {
                object: name.to_string(),
                reason: "not a valid object name".into(),
            });
        }
        Ok(self.root.join(name))
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::io("run file task", "", io::Error::other(e.to_string())))?
    }
}

fn list_tree(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // temp files
        }
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("stat", &path, e)),
        };
        if meta.is_dir() {
            list_tree(root, &path, out)?;
        } else if meta.is_file() && !name.ends_with(ATTR_SUFFIX) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(ObjectInfo {
                name: rel.to_string_lossy().into_owned(),
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}

/// Writes `data` to a temp file beside `target`, fsyncs it, and links it to `target` unless that
/// exists. Returns false when it existed.
fn link_new(target: &Path, data: &[u8], owner: Owner) -> Result<bool> {
    let created = write_then_link(target, owner, |f, tmp| {
        f.write_all(data)
            .map_err(|e| StoreError::io("write", tmp, e))
    })?;
    durable::fsync_dir(target.parent().unwrap_or(Path::new("/")))?;
    Ok(created)
}

/// A temp file beside `target`, filled by `fill`, fsynced and hard-linked to `target` unless that
/// exists (false then); the temp name is removed whatever happens. The directory is not fsynced.
fn write_then_link(
    target: &Path,
    owner: Owner,
    fill: impl FnOnce(&mut fs::File, &Path) -> Result<()>,
) -> Result<bool> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{base}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = durable::create_new_file(&tmp, FILE_MODE, owner)?;
        fill(&mut f, &tmp)?;
        f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
        match fs::hard_link(&tmp, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::io("link", target, e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// `EXDEV`: a hard link across file systems.
fn libc_exdev() -> i32 {
    nix::errno::Errno::EXDEV as i32
}

/// Copies `source` to a temp file beside `target`, fsyncs it and links it to `target` unless
/// that exists (false then).
fn copy_new(source: &Path, target: &Path, owner: Owner) -> Result<bool> {
    write_then_link(target, owner, |f, tmp| {
        let mut src = fs::File::open(source).map_err(|e| StoreError::io("open", source, e))?;
        io::copy(&mut src, f).map_err(|e| StoreError::io("copy to", tmp, e))?;
        Ok(())
    })
}

impl ArchiveStore for LocalDirStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        Self::blocking(move || {
            let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
            let mut out = Vec::new();
            list_tree(&root, &root.join(dir), &mut out)?;
            out.retain(|o| o.name.starts_with(&prefix));
            Ok(out)
        })
        .boxed()
    }

    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        Self::blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::io("list", &dir, e)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && entry.path().is_dir() {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .boxed()
    }

    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Fetched>> {
        let path = self.path(name);
        async move {
            let path = path?;
            Self::blocking(move || {
                let bytes = match fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(StoreError::io("read", &path, e)),
                };
                let attr_path = PathBuf::from(format!("{}{ATTR_SUFFIX}", path.display()));
                let wal_sha256 = fs::read_to_string(&attr_path).ok().and_then(|t| {
                    let mut out = [0u8; 32];
                    let hex = t.split_whitespace().next()?;
                    hex::decode_to_slice(hex, &mut out).ok().map(|()| out)
                });
                Ok(Some(Fetched {
                    bytes: Bytes::from(bytes),
                    attrs: ObjectAttrs { wal_sha256 },
                }))
            })
            .await
        }
        .boxed()
    }

    fn put_if_absent<'a>(&'a self, name: &'a str, put: NewObject) -> StoreFuture<'a, PutIfAbsent> {
        let path = self.path(name);
        let owner = self.owner;
        let NewObject { data, attrs } = put;
        let name = name.to_string();
        async move {
            let path = path?;
            Self::blocking(move || {
                let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                durable::create_dir_all_durable(&dir, DIR_MODE, owner)?;
                if path.exists() {
                    return Ok(PutIfAbsent::Exists);
                }
                if let Some(sha) = attrs.wal_sha256 {
                    let base = name.rsplit('/').next().unwrap_or(&name);
                    let line = format!("{}  {base}\n", hex::encode(sha));
                    let attr_path = PathBuf::from(format!("{}{ATTR_SUFFIX}", path.display()));
                    durable::write_file_atomic(&attr_path, line.as_bytes(), FILE_MODE, owner)?;
                }
                Ok(if link_new(&path, &data, owner)? {
                    PutIfAbsent::Created
                } else {
                    PutIfAbsent::Exists
                })
            })
            .await
        }
        .boxed()
    }

    /// A hard link from the (fsynced) file when it is on the same file system — no copy, and
    /// `link` never replaces an existing name; otherwise a copy to a temp name, fsynced, then
    /// linked the same way.
    fn put_file_if_absent<'a>(
        &'a self,
        name: &'a str,
        source: &'a Path,
    ) -> StoreFuture<'a, PutIfAbsent> {
        let path = self.path(name);
        let owner = self.owner;
        let source = source.to_path_buf();
        async move {
            let path = path?;
            Self::blocking(move || {
                let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                durable::create_dir_all_durable(&dir, DIR_MODE, owner)?;
                let created = match fs::hard_link(&source, &path) {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                    Err(e) if e.raw_os_error() == Some(libc_exdev()) => {
                        copy_new(&source, &path, owner)?
                    }
                    Err(e) => return Err(StoreError::io("link", &path, e)),
                };
                durable::fsync_dir(&dir)?;
                Ok(if created {
                    PutIfAbsent::Created
                } else {
                    PutIfAbsent::Exists
                })
            })
            .await
        }
        .boxed()
    }

    /// Written to a temp file beside the object as the chunks arrive, fsynced at the end and
    /// linked to the name (never replacing); an abandoned stream leaves nothing.
    fn put_stream<'a>(
        &'a self,
        name: &'a str,
        mut chunks: tokio::sync::mpsc::Receiver<StreamChunk>,
    ) -> StoreFuture<'a, PutIfAbsent> {
        let path = self.path(name);
        let owner = self.owner;
        let shown = name.to_string();
        async move {
            let path = path?;
            Self::blocking(move || {
                let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                durable::create_dir_all_durable(&dir, DIR_MODE, owner)?;
                if path.exists() {
                    return Ok(PutIfAbsent::Exists);
                }
                let created = write_then_link(&path, owner, |f, tmp| loop {
                    match chunks.blocking_recv() {
                        Some(StreamChunk::Data(b)) => f
                            .write_all(&b)
                            .map_err(|e| StoreError::io("write", tmp, e))?,
                        Some(StreamChunk::End) => return Ok(()),
                        None => return Err(StreamChunk::abandoned(&shown)),
                    }
                })?;
                durable::fsync_dir(&dir)?;
                Ok(if created {
                    PutIfAbsent::Created
                } else {
                    PutIfAbsent::Exists
                })
            })
            .await
        }
        .boxed()
    }

    fn reader<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ObjectReader>> {
        let path = self.path(name);
        async move {
            let path = path?;
            match tokio::fs::File::open(&path).await {
                Ok(f) => Ok(Some(Box::new(f) as ObjectReader)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io("open", &path, e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        let path = self.path(name);
        async move {
            let path = path?;
            Self::blocking(move || {
                for p in [
                    path.clone(),
                    PathBuf::from(format!("{}{ATTR_SUFFIX}", path.display())),
                ] {
                    match fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io("remove", &p, e)),
                    }
                }
                if let Some(dir) = path.parent() {
                    durable::fsync_dir(dir)?;
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }
}
