//! [`SpoolSink`]: the [`ArchiveSink`] of `walrelay backup` — each tar stream of a `BASE_BACKUP`
//! compressed while it arrives, into a spool file (a directory archive, which then hard-links
//! it into place) or straight into object storage (a multipart upload fed as the bytes come,
//! [`Destination::Upload`]), and parsed on the way so that every file's bytes reach the manifest
//! checksum collector (the backup is verified as it is written, without reading anything back).
//!
//! ```text
//!  feed ──► Tee ──► compress ──► hash (SHA-256, size) ──► SPOOL/base.tar.zst.partial
//!            │                                              fsync, rename to base.tar.zst
//!            │                                       or ──► channel (2 × 4 MB) ──► put_stream
//!            └──► TarReader ──► ExtractObserver (manifest checksums)
//! ```
//!
//! A streamed object becomes visible only when its upload completes; a failure abandons it.
//!
//! Servers before 15 send no end-of-archive blocks; the stored stream gets them, so that every
//! stored tar is a complete tar file (`tar -t` reads it).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use walrelay_basebackup::{
    sanitize_member_path, ArchiveKind, ArchiveSink, ChunkRead, ExtractError, ExtractObserver,
    MemberKind, TarReader, WrittenPaths,
};
use walrelay_durable::{fsync_dir, Owner};
use walrelay_store::{ArchiveStore, PutIfAbsent, StoreError, StreamChunk};

use crate::codec::Codec;

/// Two tar blocks of zeros: the end of an archive.
const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];

/// Mode of spool files (they become the archive's objects: a directory archive hard-links them).
const SPOOL_FILE_MODE: u32 = 0o600;

/// Largest chunk of member data shown to the observer at once.
const OBSERVE_CHUNK: usize = 1024 * 1024;

/// Bytes handed to the uploader at once.
const UPLOAD_CHUNK: usize = 4 * 1024 * 1024;

/// Where the tar streams go.
pub enum Destination {
    /// Files in this spool directory, uploaded afterwards.
    Spool(PathBuf),
    /// Straight into the store, under `prefix` (the backup's directory, ending in `/`).
    Upload {
        store: std::sync::Arc<dyn ArchiveStore>,
        prefix: String,
        runtime: tokio::runtime::Handle,
        /// Why an upload failed, typed (the sink's own error is an IO error).
        failure: Arc<Mutex<Option<UploadFailure>>>,
    },
}

/// A failed streamed upload, for the caller to report with its real cause.
#[derive(Debug)]
pub enum UploadFailure {
    Store(StoreError),
    /// The object name was taken.
    Exists(String),
}

/// One tar stream stored, complete: in the spool (fsynced) or already uploaded.
#[derive(Clone, Debug)]
pub struct SpooledArchive {
    pub kind: ArchiveKind,
    /// The object name (`base.tar.zst`).
    pub name: String,
    /// The spool file; `None` when it was streamed into the store.
    pub path: Option<PathBuf>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
}

/// Stores each archive compressed in `spool`; what it stored is readable through the handle from
/// [`SpoolSink::spooled`].
pub struct SpoolSink {
    dest: Destination,
    codec: Codec,
    owner: Owner,
    done: Arc<Mutex<Vec<SpooledArchive>>>,
    pg_control: Arc<Mutex<Option<Vec<u8>>>>,
}

impl SpoolSink {
    pub fn new(dest: Destination, codec: Codec, owner: Owner) -> SpoolSink {
        SpoolSink {
            dest,
            codec,
            owner,
            done: Arc::default(),
            pg_control: Arc::default(),
        }
    }

    /// The bytes of the main archive's `global/pg_control`, once it went by.
    pub fn pg_control(&self) -> Arc<Mutex<Option<Vec<u8>>>> {
        self.pg_control.clone()
    }

    /// The archives stored so far (all of them once the backup's stream ended).
    pub fn spooled(&self) -> Arc<Mutex<Vec<SpooledArchive>>> {
        self.done.clone()
    }
}

/// Passes every file on to `inner`, keeping the bytes of `global/pg_control` (of the main
/// archive: a tablespace's files are under `pg_tblspc/`).
struct KeepPgControl<'a> {
    inner: &'a mut dyn ExtractObserver,
    into: Arc<Mutex<Option<Vec<u8>>>>,
    current: Option<Vec<u8>>,
}

impl ExtractObserver for KeepPgControl<'_> {
    fn file_started(&mut self, path: &Path, size: u64) {
        self.current = (path == Path::new("global/pg_control"))
            .then(|| Vec::with_capacity(size.min(1 << 16) as usize));
        self.inner.file_started(path, size);
    }
    fn file_data(&mut self, data: &[u8]) {
        if let Some(c) = self.current.as_mut() {
            c.extend_from_slice(data);
        }
        self.inner.file_data(data);
    }
    fn file_finished(&mut self) {
        if let (Some(bytes), Ok(mut into)) = (self.current.take(), self.into.lock()) {
            *into = Some(bytes);
        }
        self.inner.file_finished();
    }
}

/// Counts and hashes what goes to the file.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer, the bytes written and their SHA-256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes everything read from `inner` to `out` as well.
struct Tee<'a, W: Write> {
    inner: &'a mut dyn ChunkRead,
    out: W,
    raw: u64,
    /// Zero bytes at the end of what passed so far.
    trailing_zeros: u64,
}

impl<W: Write> Tee<'_, W> {
    fn pass(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.raw += data.len() as u64;
        match data.iter().rposition(|b| *b != 0) {
            Some(i) => self.trailing_zeros = (data.len() - 1 - i) as u64,
            None => self.trailing_zeros += data.len() as u64,
        }
        Ok(())
    }
}

impl<W: Write> Read for Tee<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pass(&buf[..n])?;
        Ok(n)
    }
}

impl<W: Write> ChunkRead for Tee<'_, W> {
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        let chunk = self.inner.read_chunk(max)?;
        self.pass(&chunk)?;
        Ok(chunk)
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads one tar stream from `reader` to its end, writing it (with end blocks) through
/// `codec` into `out`, and showing every regular file to `observer` under `prefix`. Returns
/// the raw (uncompressed) size and the writer.
pub fn store_tar<W: Write>(
    reader: &mut dyn ChunkRead,
    out: W,
    codec: Codec,
    prefix: &Path,
    observer: &mut dyn ExtractObserver,
    path_for_errors: &Path,
) -> Result<(u64, W), ExtractError> {
    let encoder = codec
        .encoder(out)
        .map_err(io_err("start compressing", path_for_errors))?;
    let mut tee = Tee {
        inner: reader,
        out: encoder,
        raw: 0,
        trailing_zeros: 0,
    };
    {
        let mut tar = TarReader::new(&mut tee);
        while let Some(member) = tar.next_member()? {
            if member.kind != MemberKind::Regular {
                continue;
            }
            let rel =
                sanitize_member_path(&member.path).map_err(|reason| ExtractError::UnsafePath {
                    path: String::from_utf8_lossy(&member.path).into_owned(),
                    reason,
                })?;
            observer.file_started(&prefix.join(rel), member.size);
            loop {
                let chunk = tar.read_data_chunk(OBSERVE_CHUNK)?;
                if chunk.is_empty() {
                    break;
                }
                observer.file_data(&chunk);
            }
            observer.file_finished();
        }
    }
    // Whatever follows the end (the rest of the end blocks) goes into the stored stream too.
    loop {
        let chunk = tee
            .read_chunk(OBSERVE_CHUNK)
            .map_err(io_err("read the archive for", path_for_errors))?;
        if chunk.is_empty() {
            break;
        }
    }
    if tee.trailing_zeros < END_OF_ARCHIVE.len() as u64 {
        tee.out
            .write_all(&END_OF_ARCHIVE)
            .map_err(io_err("write", path_for_errors))?;
        tee.raw += END_OF_ARCHIVE.len() as u64;
    }
    let raw = tee.raw;
    let out = tee
        .out
        .finish()
        .map_err(io_err("finish compressing", path_for_errors))?;
    Ok((raw, out))
}

/// Hands what is written to the uploader in chunks of [`UPLOAD_CHUNK`] (a bounded channel: a
/// slow upload slows the backup down). Dropped without [`ChannelWriter::end`], the upload is
/// abandoned.
struct ChannelWriter {
    tx: mpsc::Sender<StreamChunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(UPLOAD_CHUNK));
        self.tx
            .blocking_send(StreamChunk::Data(Bytes::from(chunk)))
            .map_err(|_| io::Error::other("the upload stopped"))
    }

    fn end(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.tx
            .blocking_send(StreamChunk::End)
            .map_err(|_| io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= UPLOAD_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SpoolSink {
    fn to_spool(
        &self,
        spool: &Path,
        name: &str,
        reader: &mut dyn ChunkRead,
        prefix: &Path,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(u64, u64, String, Option<PathBuf>), ExtractError> {
        let path = spool.join(name);
        let partial = spool.join(format!("{name}.partial"));
        let file = walrelay_durable::create_new_file(&partial, SPOOL_FILE_MODE, self.owner)?;
        let out = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        let (raw, out) = store_tar(reader, out, self.codec, prefix, observer, &partial)?;
        let (buffered, stored, sha256) = out.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| io_err("write", &partial)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &partial))?;
        drop(file);
        fs::rename(&partial, &path).map_err(io_err("rename", &partial))?;
        fsync_dir(spool)?;
        Ok((raw, stored, sha256, Some(path)))
    }

    #[allow(clippy::too_many_arguments)]
    fn to_store(
        &self,
        store: &std::sync::Arc<dyn ArchiveStore>,
        object: String,
        runtime: &tokio::runtime::Handle,
        failure: &Mutex<Option<UploadFailure>>,
        reader: &mut dyn ChunkRead,
        prefix: &Path,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(u64, u64, String, Option<PathBuf>), ExtractError> {
        let (tx, rx) = mpsc::channel(2);
        let task = {
            let store = store.clone();
            let object = object.clone();
            runtime.spawn(async move { store.put_stream(&object, rx).await })
        };
        let shown = PathBuf::from(&object);
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(UPLOAD_CHUNK),
        };
        let stored = store_tar(
            reader,
            HashingWriter::new(writer),
            self.codec,
            prefix,
            observer,
            &shown,
        );
        let (raw, out) = match stored {
            Ok(v) => v,
            Err(e) => {
                // the writer is gone: the upload is abandoned; wait until it is
                let _ = runtime.block_on(task);
                return Err(e);
            }
        };
        let (writer, stored, sha256) = out.finish();
        let ended = writer.end();
        let uploaded = runtime.block_on(task);
        let upload_failed = |what: String, cause: UploadFailure| {
            if let Ok(mut f) = failure.lock() {
                *f = Some(cause);
            }
            ExtractError::Io {
                action: "upload",
                path: shown.clone(),
                source: io::Error::other(what),
            }
        };
        match uploaded {
            Ok(Ok(PutIfAbsent::Created)) => {}
            Ok(Ok(PutIfAbsent::Exists)) => {
                return Err(upload_failed(
                    "the object exists".into(),
                    UploadFailure::Exists(object),
                ))
            }
            Ok(Err(e)) => return Err(upload_failed(e.to_string(), UploadFailure::Store(e))),
            Err(e) => {
                return Err(ExtractError::Io {
                    action: "upload",
                    path: shown,
                    source: io::Error::other(e.to_string()),
                })
            }
        }
        ended.map_err(io_err("upload", &shown))?;
        Ok((raw, stored, sha256, None))
    }
}

impl ArchiveSink for SpoolSink {
    fn archive(
        &mut self,
        kind: ArchiveKind,
        reader: &mut dyn ChunkRead,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(), ExtractError> {
        let name = format!("{}{}", kind.archive_name(), self.codec.suffix());
        let mut keep_control = KeepPgControl {
            inner: observer,
            into: self.pg_control.clone(),
            current: None,
        };
        let observer: &mut dyn ExtractObserver = &mut keep_control;
        let prefix = match kind {
            ArchiveKind::Base => PathBuf::new(),
            ArchiveKind::Tablespace(oid) => Path::new("pg_tblspc").join(oid.to_string()),
        };
        let (raw, stored, sha256, path) = match &self.dest {
            Destination::Spool(spool) => self.to_spool(spool, &name, reader, &prefix, observer)?,
            Destination::Upload {
                store,
                prefix: object_prefix,
                runtime,
                failure,
            } => self.to_store(
                store,
                format!("{object_prefix}{name}"),
                runtime,
                failure,
                reader,
                &prefix,
                observer,
            )?,
        };
        tracing::info!(archive = %name, raw_bytes = raw, stored_bytes = stored, streamed = path.is_none(), "archive stored");
        if let Ok(mut done) = self.done.lock() {
            done.push(SpooledArchive {
                kind,
                name,
                path,
                raw_bytes: raw,
                stored_bytes: stored,
                sha256,
            });
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WrittenPaths, ExtractError> {
        Ok(WrittenPaths::new())
    }
}

/// Compresses the file `from` into `to` (fsynced), returning (raw, stored, SHA-256 of stored).
pub fn compress_file(
    from: &Path,
    to: &Path,
    codec: Codec,
    owner: Owner,
) -> io::Result<(u64, u64, String)> {
    let mut input = File::open(from)?;
    let file = walrelay_durable::create_new_file(to, SPOOL_FILE_MODE, owner)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut enc = codec.encoder(HashingWriter::new(io::BufWriter::new(file)))?;
    let raw = io::copy(&mut input, &mut enc)?;
    let (buffered, stored, sha) = enc.finish()?.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((raw, stored, sha))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use walrelay_basebackup::ChecksumCollector;

    /// A ustar member header (enough for the reader: name, mode, size, type, checksum, magic).
    fn header(name: &str, size: usize, kind: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn tar(files: &[(&str, &[u8])], end_blocks: bool) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&header("global/", 0, b'5'));
        for (name, data) in files {
            t.extend_from_slice(&header(name, data.len(), b'0'));
            t.extend_from_slice(data);
            t.resize(t.len().div_ceil(512) * 512, 0);
        }
        if end_blocks {
            t.extend_from_slice(&END_OF_ARCHIVE);
        }
        t
    }

    struct Observed(Vec<(PathBuf, u64, Vec<u8>)>);
    impl ExtractObserver for Observed {
        fn file_started(&mut self, path: &Path, size: u64) {
            self.0.push((path.to_path_buf(), size, Vec::new()));
        }
        fn file_data(&mut self, data: &[u8]) {
            if let Some(last) = self.0.last_mut() {
                last.2.extend_from_slice(data);
            }
        }
    }

    #[test]
    fn stores_the_stream_and_shows_every_file() {
        for end_blocks in [true, false] {
            let input = tar(
                &[("global/pg_control", b"control"), ("PG_VERSION", b"15\n")],
                end_blocks,
            );
            let mut reader = walrelay_basebackup_copy(&input);
            let mut seen = Observed(Vec::new());
            let (raw, packed) = store_tar(
                &mut reader,
                Vec::new(),
                Codec::Zstd,
                Path::new("pg_tblspc/16385"),
                &mut seen,
                Path::new("x"),
            )
            .unwrap();
            let mut back = Vec::new();
            Codec::Zstd
                .decoder(&packed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            let mut expected = input.clone();
            if !end_blocks {
                expected.extend_from_slice(&END_OF_ARCHIVE);
            }
            assert_eq!(back, expected);
            assert_eq!(raw, expected.len() as u64);
            assert_eq!(seen.0.len(), 2);
            assert_eq!(seen.0[0].0, Path::new("pg_tblspc/16385/global/pg_control"));
            assert_eq!((seen.0[0].1, seen.0[0].2.as_slice()), (7, &b"control"[..]));
        }
        // checksums of what passes: the manifest collector accepts the sink as its source
        let input = tar(&[("PG_VERSION", b"15\n")], true);
        let mut c = ChecksumCollector::new(&[walrelay_basebackup::ChecksumAlgorithm::Crc32c]);
        store_tar(
            &mut walrelay_basebackup_copy(&input),
            Vec::new(),
            Codec::None,
            Path::new(""),
            &mut c,
            Path::new("x"),
        )
        .unwrap();
        assert!(c.files().contains_key(Path::new("PG_VERSION")));
    }

    #[test]
    fn refuses_unsafe_and_truncated_input() {
        let input = tar(&[("../etc/passwd", b"x")], true);
        let e = store_tar(
            &mut walrelay_basebackup_copy(&input),
            Vec::new(),
            Codec::None,
            Path::new(""),
            &mut (),
            Path::new("x"),
        );
        assert!(e.is_err());
        let input = tar(&[("PG_VERSION", &[1u8; 700])], true);
        let cut = &input[..900];
        assert!(store_tar(
            &mut walrelay_basebackup_copy(cut),
            Vec::new(),
            Codec::None,
            Path::new(""),
            &mut (),
            Path::new("x"),
        )
        .is_err());
    }

    fn walrelay_basebackup_copy(data: &[u8]) -> walrelay_basebackup::CopyChunks<&[u8]> {
        walrelay_basebackup::CopyChunks::new(data)
    }
}
