//! Large transactions streamed before they commit (pgoutput protocol version 2, PostgreSQL 14+),
//! spilled to disk until they end.
//!
//! ```text
//!  Stream Start (xid, first) ─► data messages (each with its (sub)transaction id) ─► Stream Stop
//!     … the same transaction again in later chunks, other transactions in between …
//!  Stream Commit (xid, commit LSN)  → the file is read back and applied as one transaction
//!  Stream Abort (xid, xid)          → the file is deleted
//!  Stream Abort (xid, subxid)       → the subtransaction's changes (and those of the
//!                                     subtransactions begun after it) are left out
//! ```
//!
//! One file per streamed top-level transaction, of length-prefixed pgoutput messages exactly as
//! the source sent them; memory stays bounded by a write buffer per open transaction, whatever
//! the transaction's size. Like PostgreSQL's own apply worker (`worker.c`: `stream_write_change`,
//! `subxact_info_add`, `stream_abort_internal`), a subtransaction is known by the offset of its
//! first change, and an aborted one drops everything from there up to the abort — the
//! subtransactions begun after it are its own children, as a sibling cannot begin before it ends.
//! Unlike the worker, which truncates the file, the dropped range is remembered and skipped on
//! reading, except the Relation and Type messages in it: the source sends those once per
//! streamed transaction, and a later change of the transaction may need them.
//!
//! Nothing here outlives the session: after a reconnect the source streams every transaction that
//! has not committed on the target again from its start. The directory (under `--spool-dir`, the
//! system's temporary directory by default) is removed when the session ends.
//!
//! Files are written with blocking IO from the apply task: writes land in the page cache, and the
//! apply task is the only user of its thread's time while it writes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

use crate::error::SubsetError;
use crate::schema::SubsetName;

/// Removes the spool directories of this subset that processes no longer running left (killed
/// with -9, or by the OOM killer: nothing ran their cleanup), so that they do not pile up in the
/// temporary directory. Best effort; a directory whose process may still run is kept.
fn remove_orphans(base: &Path, subset: &SubsetName) {
    // Without /proc nothing can tell a live process from a dead one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!("walrelay-subset-{subset}-");
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, session)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), session.parse::<u32>()) else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => {
                tracing::info!(dir = %e.path().display(), "removed the spool of a walrelay that was killed")
            }
            Err(err) => {
                tracing::debug!(dir = %e.path().display(), error = %err, "could not remove an old spool")
            }
        }
    }
}

/// Write buffer of each open transaction's file.
const WRITE_BUFFER: usize = 64 * 1024;
/// Longest message accepted back from a file (a sanity bound: the file is ours).
const MAX_MESSAGE: u32 = 1 << 30;

fn spool_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SubsetError + 'a {
    move |source| SubsetError::Spool {
        what,
        path: path.to_path_buf(),
        source,
    }
}

struct SpoolFile {
    path: PathBuf,
    writer: BufWriter<File>,
    len: u64,
    /// Subtransactions by the offset of their first change, in order.
    subxacts: Vec<(u32, u64)>,
    /// Ranges of aborted subtransactions: skipped on reading but for Relation and Type messages.
    dropped: Vec<(u64, u64)>,
}

/// The spilled transactions of one session.
pub struct Spool {
    base: PathBuf,
    dir: Option<PathBuf>,
    label: String,
    files: HashMap<u32, SpoolFile>,
    /// The transaction of the open stream block.
    current: Option<u32>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("open", &self.files.len())
            .field("current", &self.current)
            .finish()
    }
}

impl Spool {
    pub fn new(base: Option<&Path>, subset: &SubsetName) -> Spool {
        static SESSION: AtomicU32 = AtomicU32::new(0);
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        if SESSION.load(Ordering::Relaxed) == 0 {
            remove_orphans(&base, subset);
        }
        Spool {
            base,
            dir: None,
            label: format!(
                "walrelay-subset-{subset}-{}-{}",
                std::process::id(),
                SESSION.fetch_add(1, Ordering::Relaxed)
            ),
            files: HashMap::new(),
            current: None,
        }
    }

    /// Whether a stream block is open: data messages belong to [`Spool::append`].
    pub fn in_block(&self) -> bool {
        self.current.is_some()
    }

    /// Transactions being received.
    #[cfg(test)]
    pub fn open_transactions(&self) -> usize {
        self.files.len()
    }

    fn dir(&mut self) -> Result<PathBuf, SubsetError> {
        if let Some(d) = &self.dir {
            // Removed under us (a cleaner of the temporary directory): made again, rather than
            // failing the next file with advice about free space.
            if !d.is_dir() {
                fs::create_dir_all(d).map_err(spool_err("create the spool directory", d))?;
            }
            return Ok(d.clone());
        }
        let d = self.base.join(&self.label);
        fs::create_dir_all(&d).map_err(spool_err("create the spool directory", &d))?;
        self.dir = Some(d.clone());
        Ok(d)
    }

    /// Stream Start: the first chunk of `xid` creates its file (afresh, if it was streamed
    /// before), a later chunk appends to it. A later chunk of a transaction whose first was not
    /// seen is an error (retried: a new session streams the transaction from its start).
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), SubsetError> {
        if !first_segment && !self.files.contains_key(&xid) {
            return Err(SubsetError::StreamGap { xid });
        }
        if first_segment {
            let path = self.dir()?.join(format!("{xid}.stream"));
            let file = File::create(&path).map_err(spool_err("create", &path))?;
            self.files.insert(
                xid,
                SpoolFile {
                    writer: BufWriter::with_capacity(WRITE_BUFFER, file),
                    path,
                    len: 0,
                    subxacts: Vec::new(),
                    dropped: Vec::new(),
                },
            );
        }
        self.current = Some(xid);
        Ok(())
    }

    /// A data message of the open block; `xid` is the (sub)transaction it belongs to.
    pub fn append(&mut self, xid: Option<u32>, raw: &[u8]) -> Result<(), SubsetError> {
        let Some(top) = self.current else {
            return Err(SubsetError::Usage(
                "internal: a streamed change outside a stream block".into(),
            ));
        };
        let Some(f) = self.files.get_mut(&top) else {
            return Err(SubsetError::Usage(
                "internal: a stream block without its file".into(),
            ));
        };
        if let Some(x) = xid.filter(|&x| x != top) {
            if !f.subxacts.iter().any(|(s, _)| *s == x) {
                f.subxacts.push((x, f.len));
            }
        }
        let len = u32::try_from(raw.len()).map_err(|_| SubsetError::Spool {
            what: "write",
            path: f.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GB"),
        })?;
        let write = |w: &mut BufWriter<File>| -> io::Result<()> {
            w.write_all(&len.to_be_bytes())?;
            w.write_all(raw)
        };
        write(&mut f.writer).map_err(spool_err("write", &f.path))?;
        f.len += 4 + u64::from(len);
        Ok(())
    }

    /// Stream Stop.
    pub fn stop(&mut self) -> Result<(), SubsetError> {
        if let Some(f) = self.current.take().and_then(|x| self.files.get_mut(&x)) {
            f.writer.flush().map_err(spool_err("write", &f.path))?;
        }
        Ok(())
    }

    /// Stream Abort: the whole transaction (`subxid == xid`), or one subtransaction.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<(), SubsetError> {
        if xid == subxid {
            if let Some(f) = self.files.remove(&xid) {
                drop(f.writer);
                let _ = fs::remove_file(&f.path);
            }
            return Ok(());
        }
        if let Some(f) = self.files.get_mut(&xid) {
            if let Some(i) = f.subxacts.iter().position(|(s, _)| *s == subxid) {
                let from = f.subxacts[i].1;
                f.dropped.push((from, f.len));
                f.subxacts.truncate(i);
            }
        }
        Ok(())
    }

    /// Stream Commit: the transaction's messages, to be applied; `None` if it was never streamed.
    pub fn finish(&mut self, xid: u32) -> Result<Option<SpoolReader>, SubsetError> {
        if self.current == Some(xid) {
            self.current = None;
        }
        let Some(mut f) = self.files.remove(&xid) else {
            return Ok(None);
        };
        f.writer.flush().map_err(spool_err("write", &f.path))?;
        drop(f.writer);
        let file = File::open(&f.path).map_err(spool_err("read", &f.path))?;
        Ok(Some(SpoolReader {
            reader: BufReader::with_capacity(WRITE_BUFFER, file),
            path: f.path,
            offset: 0,
            len: f.len,
            dropped: f.dropped,
        }))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.files.clear();
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// A committed streamed transaction, read back; its file is removed when dropped.
pub struct SpoolReader {
    reader: BufReader<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
    dropped: Vec<(u64, u64)>,
}

impl SpoolReader {
    /// The next message to apply, or `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, SubsetError> {
        loop {
            if self.offset >= self.len {
                return Ok(None);
            }
            let at = self.offset;
            let mut len = [0u8; 4];
            self.reader
                .read_exact(&mut len)
                .map_err(spool_err("read", &self.path))?;
            let len = u32::from_be_bytes(len);
            if len == 0 || len > MAX_MESSAGE {
                return Err(SubsetError::Spool {
                    what: "read",
                    path: self.path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "damaged spool file"),
                });
            }
            let mut buf = vec![0u8; len as usize];
            self.reader
                .read_exact(&mut buf)
                .map_err(spool_err("read", &self.path))?;
            self.offset += 4 + u64::from(len);
            let in_dropped = self.dropped.iter().any(|&(a, b)| at >= a && at < b);
            if in_dropped && !matches!(buf.first(), Some(b'R' | b'Y')) {
                continue;
            }
            return Ok(Some(Bytes::from(buf)));
        }
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spools_of_killed_processes_are_removed_and_a_removed_directory_is_made_again() {
        let base = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        // 999999999 is above any Linux pid_max: a process that is not running.
        let dead = base.path().join("walrelay-subset-s1-999999999-0");
        let mine = base.path().join(format!("walrelay-subset-s1-{me}-7"));
        let init = base.path().join("walrelay-subset-s1-1-0");
        let other_subset = base.path().join("walrelay-subset-s10-999999999-0");
        let not_ours = base.path().join("walrelay-subset-s1-notapid");
        for d in [&dead, &mine, &init, &other_subset, &not_ours] {
            fs::create_dir_all(d.join("inner")).expect("mkdir");
        }
        remove_orphans(base.path(), &SubsetName::new("s1").expect("name"));
        assert!(!dead.exists());
        for kept in [&mine, &init, &other_subset, &not_ours] {
            assert!(kept.exists(), "{}", kept.display());
        }

        let mut spool = Spool::new(Some(base.path()), &SubsetName::new("s2").expect("name"));
        let dir = spool.dir().expect("dir");
        fs::remove_dir_all(&dir).expect("remove");
        spool.start(7, true).expect("the directory is made again");
        assert!(dir.join("7.stream").exists());
    }

    fn all(r: &mut SpoolReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = r.next_message().expect("read") {
            out.push(m.to_vec());
        }
        out
    }

    #[test]
    fn chunks_commit_abort_and_subtransactions() {
        let base = tempfile::tempdir().expect("tempdir");
        let name = SubsetName::new("s").expect("name");
        let mut s = Spool::new(Some(base.path()), &name);
        // Two transactions interleaved, in two chunks each.
        s.start(10, true).unwrap();
        s.append(Some(10), b"R-rel").unwrap();
        s.append(Some(10), b"I-a").unwrap();
        s.stop().unwrap();
        s.start(20, true).unwrap();
        s.append(Some(20), b"I-x").unwrap();
        s.stop().unwrap();
        s.start(10, false).unwrap();
        // A subtransaction that aborts, with a Relation in it, and a child begun after it.
        s.append(Some(11), b"R-rel2").unwrap();
        s.append(Some(11), b"I-b").unwrap();
        s.append(Some(12), b"I-c").unwrap();
        s.stop().unwrap();
        s.abort(10, 11).unwrap();
        s.start(10, false).unwrap();
        s.append(Some(10), b"I-d").unwrap();
        s.stop().unwrap();
        assert_eq!(s.open_transactions(), 2);
        // 20 aborts whole: its file goes.
        s.abort(20, 20).unwrap();
        assert_eq!(s.open_transactions(), 1);
        let mut r = s.finish(10).unwrap().expect("streamed");
        let path = r.path.clone();
        assert_eq!(all(&mut r), [&b"R-rel"[..], b"I-a", b"R-rel2", b"I-d"]);
        drop(r);
        assert!(!path.exists(), "read back, then removed");
        assert!(s.finish(99).unwrap().is_none());
        let dir = s.dir.clone().expect("created");
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn a_first_segment_starts_over() {
        let base = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::new(Some(base.path()), &SubsetName::new("s").expect("name"));
        s.start(5, true).unwrap();
        s.append(Some(5), b"I-old").unwrap();
        s.stop().unwrap();
        s.start(5, true).unwrap();
        s.append(Some(5), b"I-new").unwrap();
        s.stop().unwrap();
        let mut r = s.finish(5).unwrap().expect("streamed");
        assert_eq!(all(&mut r), [&b"I-new"[..]]);
    }
}
