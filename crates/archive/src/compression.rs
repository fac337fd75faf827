//! Compressed segments: the `-Z`/`--compress` setting, compression of a completed segment, and readers
//! that decompress by file-name suffix.
//!
//! # Formats, and why they are readable by PostgreSQL's own tools
//!
//! * `.gz`: one gzip member (RFC 1952). pg_receivewal's `FindStreamingStart` reads the last four
//!   bytes (ISIZE, the uncompressed size modulo 2^32) to decide that a `.gz` segment is complete, so
//!   the file must be exactly one member with nothing after its trailer. `gzip -d` reads it.
//! * `.lz4`: one LZ4 frame (lz4 frame format 1.6). pg_receivewal 15 writes frames with the library
//!   defaults (64 kB linked blocks, no content size, no checksums) and, when it scans the directory,
//!   decompresses each `.lz4` file with `LZ4F_decompress` to count its size — it never relies on the
//!   frame's content size, because files may come from an `archive_command` using the `lz4` tool.
//!   Ours are standard frames too: independent 4 MB blocks, the content size in the frame header (so
//!   [`uncompressed_size`] and `lz4 --list` get the size without decompressing) and a content
//!   checksum (so bit rot is detected). `LZ4F_decompress` and `lz4 -d` accept every combination of
//!   these flags; tests run `lz4 -t` and a real pg_receivewal over our files.
//! * `.zst`: one zstd frame with the content size and a checksum. PostgreSQL 15 has no reader for
//!   `.zst` WAL; this format is walrelay's (and `zstd -d`'s).
//!
//! # Crash safety of compression on completion
//!
//! [`compress_completed_segment`] writes `NAME.gz.tmp`, fsyncs it, reads it back and compares it
//! with the plain segment, renames it to `NAME.gz`, fsyncs the directory, and only then removes the
//! plain `NAME` and fsyncs the directory again. A crash therefore leaves the plain file alone, or the
//! plain file and an identical compressed copy (plus perhaps a `.tmp` to clean up). Readers prefer
//! the plain file; [`crate::cleanup`] finishes an interrupted compression.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};
use walrelay_durable::{self as durable, Owner};
use walrelay_protocol::segment::{Compression as CompressionMethod, MAX_WAL_SEGMENT_SIZE};
use walrelay_protocol::{WalFileName, WalSegmentSize};

use crate::error::{ArchiveError, Result};

/// Default gzip level, zlib's `Z_DEFAULT_COMPRESSION`.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// Default zstd level, `ZSTD_CLEVEL_DEFAULT`.
pub const DEFAULT_ZSTD_LEVEL: i32 = zstd::DEFAULT_COMPRESSION_LEVEL;

/// How completed segments are stored: the parsed `--compress` value.
///
/// The text form follows pg_receivewal 15's `-Z METHOD[:DETAIL]`: `none`, `gzip`, `gzip:9`,
/// `gzip:level=9`, `lz4`, `zstd`, `zstd:3`; a bare integer means gzip at that level (`0` means none),
/// as pg_receivewal accepts for backward compatibility.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Keep segments as plain files.
    #[default]
    None,
    /// gzip, level 1 (fastest) to 9 (smallest).
    Gzip { level: u32 },
    /// LZ4 frame, fast mode. lz4_flex has no high-compression mode, so only level 0 or 1 is accepted.
    Lz4,
    /// zstd at any level zstd accepts (negative levels are the fast modes).
    Zstd { level: i32 },
}

impl Compression {
    /// The file-name suffix method, or `None` for plain files.
    pub fn method(self) -> Option<CompressionMethod> {
        match self {
            Compression::None => None,
            Compression::Gzip { .. } => Some(CompressionMethod::Gzip),
            Compression::Lz4 => Some(CompressionMethod::Lz4),
            Compression::Zstd { .. } => Some(CompressionMethod::Zstd),
        }
    }

    /// `.gz`, `.lz4`, `.zst`, or the empty string for [`Compression::None`].
    pub fn suffix(self) -> &'static str {
        self.method().map_or("", CompressionMethod::suffix)
    }

    /// The default setting for a method (used when finishing a compression a crash interrupted).
    pub fn default_for(method: CompressionMethod) -> Compression {
        match method {
            CompressionMethod::Gzip => Compression::Gzip {
                level: DEFAULT_GZIP_LEVEL,
            },
            CompressionMethod::Lz4 => Compression::Lz4,
            CompressionMethod::Zstd => Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            },
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

const COMPRESSION_SYNTAX: &str =
    "expected none, gzip[:1-9], lz4 or zstd[:LEVEL] (also gzip:level=N, or a bare gzip level)";

/// An integer as `strtol` would take it, without its leniency for trailing junk.
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for Compression {
    type Err = ArchiveError;

    fn from_str(input: &str) -> Result<Self> {
        let err = |reason: String| ArchiveError::BadCompression {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err(format!("empty value; {COMPRESSION_SYNTAX}")));
        }
        // pg_receivewal compatibility: `-Z 5` is gzip level 5 and `-Z 0` is no compression.
        if let Some(n) = parse_int(input) {
            return if n == 0 {
                Ok(Compression::None)
            } else {
                gzip_level(n).map_err(err)
            };
        }
        let (method, detail) = match input.split_once(':') {
            Some((m, d)) => (m, Some(d)),
            None => (input, None),
        };
        let level = match detail {
            None => None,
            Some(d) => Some(parse_detail(d).map_err(err)?),
        };
        match method {
            "none" => match level {
                None | Some(0) => Ok(Compression::None),
                Some(_) => Err(err("none takes no compression level".into())),
            },
            "gzip" => gzip_level(level.unwrap_or(i64::from(DEFAULT_GZIP_LEVEL))).map_err(err),
            "lz4" => match level {
                None | Some(0) | Some(1) => Ok(Compression::Lz4),
                Some(n) => Err(err(format!(
                    "lz4 level {n} is not available: walrelay's LZ4 encoder has only the fast mode \
                     (level 0 or 1); use zstd:LEVEL for smaller files"
                ))),
            },
            "zstd" => {
                let n = level.unwrap_or(i64::from(DEFAULT_ZSTD_LEVEL));
                let range = zstd::compression_level_range();
                match i32::try_from(n) {
                    Ok(l) if range.contains(&l) => Ok(Compression::Zstd { level: l }),
                    _ => Err(err(format!(
                        "zstd level {n} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ))),
                }
            }
            other => Err(err(format!(
                "unknown compression method {other:?}; {COMPRESSION_SYNTAX}"
            ))),
        }
    }
}

fn gzip_level(n: i64) -> std::result::Result<Compression, String> {
    match u32::try_from(n) {
        Ok(level @ 1..=9) => Ok(Compression::Gzip { level }),
        _ => Err(format!("gzip level {n} is out of range 1..=9")),
    }
}

/// The DETAIL after `METHOD:`: a bare level, or comma-separated `level=N` items (PostgreSQL's
/// compression specification; its `workers` and `long` options are refused rather than ignored).
fn parse_detail(detail: &str) -> std::result::Result<i64, String> {
    if let Some(n) = parse_int(detail) {
        return Ok(n);
    }
    let mut level = None;
    for item in detail.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        match key {
            "" => return Err("found an empty option where `level=N` was expected".into()),
            "level" => {
                let v = value.ok_or("option level requires a value, like level=5")?;
                level = Some(parse_int(v).ok_or("the value of level must be an integer")?);
            }
            "workers" | "long" => {
                return Err(format!("option {key:?} is not supported by walrelay"));
            }
            other => return Err(format!("unknown compression option {other:?}")),
        }
    }
    level.ok_or_else(|| "no level given".to_string())
}

/// What a file name says about its content: the compression suffix and whether it is `.partial`.
/// Works for any name (segment or not): only the suffixes are looked at.
pub fn suffix_info(name: &str) -> (Option<CompressionMethod>, bool) {
    let (rest, partial) = match name.strip_suffix(".partial") {
        Some(r) => (r, true),
        None => (name, false),
    };
    let method = if rest.ends_with(".gz") {
        Some(CompressionMethod::Gzip)
    } else if rest.ends_with(".lz4") {
        Some(CompressionMethod::Lz4)
    } else if rest.ends_with(".zst") {
        Some(CompressionMethod::Zstd)
    } else {
        None
    };
    (method, partial)
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A gzip reader that accepts exactly one member and nothing after it, which is what pg_receivewal
/// writes and what its ISIZE check assumes.
struct SingleGzipMember<R: BufRead> {
    decoder: flate2::bufread::GzDecoder<R>,
    finished: bool,
}

impl<R: BufRead> Read for SingleGzipMember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.finished {
            if !self.decoder.get_mut().fill_buf()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data after the end of the gzip member",
                ));
            }
            self.finished = true;
        }
        Ok(n)
    }
}

/// An LZ4 reader over every frame of the file: lz4_flex's decoder reports end-of-file at the end of
/// each frame, while `LZ4F_decompress` (pg_receivewal) and `lz4 -d` go on with the next frame. Going
/// on also makes bytes after the last frame an error (bad magic) instead of being ignored.
struct Lz4Frames<R: BufRead> {
    decoder: lz4_flex::frame::FrameDecoder<R>,
}

impl<R: BufRead> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.decoder.read(buf)?;
            if n > 0 || buf.is_empty() || self.decoder.get_mut().fill_buf()?.is_empty() {
                return Ok(n);
            }
        }
    }
}

/// A decompressing reader for `method` over `src` (a file, or bytes fetched from object storage).
fn decoder<'a, R: Read + Send + 'a>(
    method: Option<CompressionMethod>,
    src: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let buffered = BufReader::with_capacity(1 << 16, src);
    Ok(match method {
        None => Box::new(buffered),
        Some(CompressionMethod::Gzip) => Box::new(SingleGzipMember {
            decoder: flate2::bufread::GzDecoder::new(buffered),
            finished: false,
        }),
        Some(CompressionMethod::Lz4) => Box::new(Lz4Frames {
            decoder: lz4_flex::frame::FrameDecoder::new(buffered),
        }),
        Some(CompressionMethod::Zstd) => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
        }
    })
}

/// Opens an archive file and returns a reader of its WAL bytes, decompressing by the name's suffix
/// (`.gz`, `.lz4`, `.zst`, each optionally followed by `.partial`; anything else is read as is).
///
/// A truncated compressed file reads as an `UnexpectedEof` error after the bytes that could be
/// decoded; other decoding failures are `InvalidData`/`InvalidInput`/`Other` errors.
pub fn open_segment(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    let (method, _) = suffix_info(&file_name_of(path));
    decoder(method, file).map_err(|e| ArchiveError::io("start decoder for", path, e))
}

/// Classifies an error from a (possibly decompressing) reader: errors with an OS error code come from
/// the disk; everything else is the decoder rejecting the content.
fn read_error(path: &Path, e: io::Error) -> ArchiveError {
    if e.raw_os_error().is_some() {
        ArchiveError::io("read", path, e)
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        ArchiveError::corrupt(path, "compressed data ends early (truncated file)")
    } else {
        ArchiveError::corrupt(path, format!("cannot decompress: {e}"))
    }
}

/// The outcome of copying an archive file's WAL bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Copied {
    pub bytes: u64,
    /// The compressed stream ended early; only allowed when the caller tolerates it (partials).
    pub truncated: bool,
}

/// Copies the decoded content of `path` to `out`, refusing more than `max_len` bytes. With
/// `tolerate_truncation`, a compressed stream that just stops (a `.gz.partial` that pg_receivewal
/// was still writing) ends the copy instead of failing it.
pub(crate) fn copy_content(
    path: &Path,
    out: &mut dyn Write,
    max_len: u64,
    tolerate_truncation: bool,
) -> Result<Copied> {
    let (method, _) = suffix_info(&file_name_of(path));
    if method.is_some() && !tolerate_truncation {
        // Decoders read an empty input as an empty stream; a compressed file has a header at least.
        let len = fs::metadata(path)
            .map_err(|e| ArchiveError::io("stat", path, e))?
            .len();
        if len == 0 {
            return Err(ArchiveError::corrupt(
                path,
                "empty file, no compressed stream",
            ));
        }
    }
    let reader = open_segment(path)?;
    copy_decoded(reader, path, out, max_len, tolerate_truncation)
}

/// Decodes `bytes`, the stored content of the file or object `name` (its suffix says how), into
/// memory: at most `max_len` bytes, see [`copy_content`]. Errors name `shown_as`.
pub fn decode_bytes(
    shown_as: &Path,
    bytes: &[u8],
    max_len: u64,
    tolerate_truncation: bool,
) -> Result<(Vec<u8>, bool)> {
    let (method, _) = suffix_info(&file_name_of(shown_as));
    if method.is_some() && !tolerate_truncation && bytes.is_empty() {
        return Err(ArchiveError::corrupt(
            shown_as,
            "empty file, no compressed stream",
        ));
    }
    let reader =
        decoder(method, bytes).map_err(|e| ArchiveError::io("start decoder for", shown_as, e))?;
    let mut v = Vec::new();
    let c = copy_decoded(reader, shown_as, &mut v, max_len, tolerate_truncation)?;
    Ok((v, c.truncated))
}

/// Copies what `reader` decodes to `out` (see [`copy_content`]).
fn copy_decoded(
    reader: Box<dyn Read + Send + '_>,
    path: &Path,
    out: &mut dyn Write,
    max_len: u64,
    tolerate_truncation: bool,
) -> Result<Copied> {
    let mut limited = reader.take(max_len.saturating_add(1));
    let mut buf = vec![0u8; 1 << 16];
    let mut copied = Copied {
        bytes: 0,
        truncated: false,
    };
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if tolerate_truncation
                    && e.kind() == io::ErrorKind::UnexpectedEof
                    && e.raw_os_error().is_none() =>
            {
                copied.truncated = true;
                break;
            }
            Err(e) => return Err(read_error(path, e)),
        };
        copied.bytes += n as u64;
        if copied.bytes > max_len {
            return Err(ArchiveError::corrupt(
                path,
                format!("holds more than {max_len} bytes of WAL"),
            ));
        }
        out.write_all(&buf[..n])
            .map_err(|e| ArchiveError::io("write decompressed data of", path, e))?;
    }
    Ok(copied)
}

/// Reads the whole decoded content of `path` into memory (at most `max_len` bytes).
pub(crate) fn read_content(
    path: &Path,
    max_len: u64,
    tolerate_truncation: bool,
) -> Result<(Vec<u8>, Copied)> {
    let mut v = Vec::new();
    let copied = copy_content(path, &mut v, max_len, tolerate_truncation)?;
    Ok((v, copied))
}

/// The SHA-256 of the WAL bytes of `path` (decompressed), as `walrelay.sha256` records it.
pub fn segment_sha256(path: &Path) -> Result<[u8; 32]> {
    let mut sink = io::sink();
    let mut h = HashTee::new(&mut sink);
    copy_content(path, &mut h, u64::from(MAX_WAL_SEGMENT_SIZE), false)?;
    Ok(h.finish())
}

/// A writer that hashes what passes through it on its way to `out`.
pub(crate) struct HashTee<'a> {
    out: &'a mut dyn Write,
    sha: Sha256,
}

impl<'a> HashTee<'a> {
    pub(crate) fn new(out: &'a mut dyn Write) -> Self {
        HashTee {
            out,
            sha: Sha256::new(),
        }
    }

    /// The SHA-256 of what was written.
    pub(crate) fn finish(self) -> [u8; 32] {
        self.sha.finalize().into()
    }
}

impl Write for HashTee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The number of WAL bytes in `path`, cheaply where the format allows:
///
/// * plain files: the file size;
/// * `.gz`: the ISIZE trailer (what pg_receivewal reads; exact for files below 4 GB);
/// * `.lz4`, `.zst`: the content size in the frame header when present;
/// * otherwise (pg_receivewal's `.lz4`, every compressed `.partial`): decompress and count, stopping
///   at 1 GB + 1 byte, the first size that no segment can have.
pub fn uncompressed_size(path: &Path) -> Result<u64> {
    let (method, partial) = suffix_info(&file_name_of(path));
    let Some(method) = method else {
        return fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| ArchiveError::io("stat", path, e));
    };
    if !partial {
        if let Some(size) = header_size(path, method)? {
            return Ok(size);
        }
    }
    let copied = copy_content(
        path,
        &mut io::sink(),
        u64::from(MAX_WAL_SEGMENT_SIZE),
        partial,
    );
    match copied {
        Ok(c) => Ok(c.bytes),
        Err(ArchiveError::Corrupt { reason, .. }) if reason.starts_with("holds more than") => {
            Ok(u64::from(MAX_WAL_SEGMENT_SIZE) + 1)
        }
        Err(e) => Err(e),
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
/// FLG: version bits (must be 01), content-size flag, dictionary-id flag.
const LZ4_FLG_VERSION_MASK: u8 = 0b1100_0000;
const LZ4_FLG_VERSION_01: u8 = 0b0100_0000;
const LZ4_FLG_CONTENT_SIZE: u8 = 0b0000_1000;
/// Largest zstd frame header (`ZSTD_FRAMEHEADERSIZE_MAX`).
const ZSTD_FRAME_HEADER_MAX: usize = 18;

fn read_prefix(path: &Path, file: &mut File, n: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    Read::by_ref(file)
        .take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ArchiveError::io("read", path, e))?;
    Ok(buf)
}

/// The uncompressed size recorded in a complete compressed file's header or trailer, if any.
fn header_size(path: &Path, method: CompressionMethod) -> Result<Option<u64>> {
    let mut file = File::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    match method {
        CompressionMethod::Gzip => {
            let len = file
                .metadata()
                .map_err(|e| ArchiveError::io("stat", path, e))?
                .len();
            // 10-byte header + 8-byte trailer at the least.
            if len < 18 {
                return Err(ArchiveError::corrupt(
                    path,
                    format!("only {len} bytes, too short for a gzip file"),
                ));
            }
            if read_prefix(path, &mut file, 2)? != GZIP_MAGIC {
                return Err(ArchiveError::corrupt(path, "not a gzip file (bad magic)"));
            }
            file.seek(SeekFrom::End(-4))
                .map_err(|e| ArchiveError::io("seek in", path, e))?;
            let mut isize = [0u8; 4];
            file.read_exact(&mut isize)
                .map_err(|e| ArchiveError::io("read", path, e))?;
            let size = u64::from(u32::from_le_bytes(isize));
            // A segment's size is a power of two: anything else is not a trailer (a truncated
            // file ends in compressed data) and the decoder says what is wrong.
            Ok(size.is_power_of_two().then_some(size))
        }
        CompressionMethod::Lz4 => {
            let head = read_prefix(path, &mut file, 14)?;
            if head.len() < 7 {
                return Err(ArchiveError::corrupt(
                    path,
                    "too short for an LZ4 frame header",
                ));
            }
            if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != LZ4_FRAME_MAGIC {
                // Legacy or skippable frames: let the decoder judge while counting.
                return Ok(None);
            }
            let flg = head[4];
            if flg & LZ4_FLG_VERSION_MASK != LZ4_FLG_VERSION_01 {
                return Err(ArchiveError::corrupt(path, "unsupported LZ4 frame version"));
            }
            if flg & LZ4_FLG_CONTENT_SIZE == 0 {
                return Ok(None);
            }
            if head.len() < 14 {
                return Err(ArchiveError::corrupt(
                    path,
                    "LZ4 frame header ends inside the content size",
                ));
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&head[6..14]);
            Ok(Some(u64::from_le_bytes(size)))
        }
        CompressionMethod::Zstd => {
            let head = read_prefix(path, &mut file, ZSTD_FRAME_HEADER_MAX)?;
            match zstd::zstd_safe::get_frame_content_size(&head) {
                Ok(size) => Ok(size),
                Err(_) => Err(ArchiveError::corrupt(path, "not a valid zstd frame header")),
            }
        }
    }
}

/// Compresses `data` with `method` into `out`.
#[cfg(test)]
fn encode<W: Write>(method: Compression, data: &[u8], out: W) -> io::Result<W> {
    encode_stream(method, data, data.len() as u64, out)
}

/// Compresses `len` bytes read from `src` into `out`, with constant memory (segments can be up to
/// 1 GB). `len` goes into the LZ4 and zstd frame headers as the content size.
fn encode_stream<R: Read, W: Write>(
    method: Compression,
    mut src: R,
    len: u64,
    out: W,
) -> io::Result<W> {
    fn copy_exact<R: Read, W: Write>(src: &mut R, dst: &mut W, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut src.take(len), dst)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the segment shrank while being compressed ({copied} of {len} bytes)"),
            ));
        }
        Ok(())
    }
    match method {
        Compression::None => {
            let mut out = out;
            copy_exact(&mut src, &mut out, len)?;
            Ok(out)
        }
        Compression::Gzip { level } => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            copy_exact(&mut src, &mut enc, len)?;
            enc.finish()
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .content_size(Some(len))
                .content_checksum(true)
                .block_size(lz4_flex::frame::BlockSize::Max4MB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            copy_exact(&mut src, &mut enc, len)?;
            enc.finish().map_err(io::Error::from)
        }
        Compression::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(out, level)?;
            enc.include_checksum(true)?;
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(len))?;
            copy_exact(&mut src, &mut enc, len)?;
            enc.finish()
        }
    }
}

/// Compresses the completed plain segment `dir/segment_file_name` to `NAME.gz`/`.lz4`/`.zst` and
/// removes the plain file, crash-safely (see the module docs for the order of operations). Returns
/// the path of the file that now holds the segment: the plain path itself for
/// [`Compression::None`].
///
/// The plain file must be a complete segment: its size must be a valid `wal_segment_size`. Other
/// compressed copies of the same segment (left by an earlier run with another method) are removed
/// once the new copy is durable, so the archive never holds two versions of a segment.
pub fn compress_completed_segment(
    dir: &Path,
    segment_file_name: &str,
    method: Compression,
    owner: Owner,
) -> Result<PathBuf> {
    match WalFileName::parse(segment_file_name) {
        Some(WalFileName::Segment {
            compression: None,
            partial: false,
            ..
        }) => {}
        _ => {
            return Err(ArchiveError::BadFileName {
                name: segment_file_name.to_string(),
                reason:
                    "only a completed, uncompressed WAL segment (24 hex digits) can be compressed",
            })
        }
    }
    let plain = dir.join(segment_file_name);
    if method == Compression::None {
        return Ok(plain);
    }
    let meta = fs::metadata(&plain).map_err(|e| ArchiveError::io("stat", &plain, e))?;
    let len = meta.len();
    if WalSegmentSize::new(len).is_err() {
        return Err(ArchiveError::corrupt(
            &plain,
            format!("{len} bytes is not a WAL segment size, so this is not a completed segment"),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    let target = dir.join(format!("{segment_file_name}{}", method.suffix()));
    let tmp = durable::temp_path_for(&target);

    let written = write_compressed(&tmp, &plain, len, method, mode, owner);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    durable::rename_durable(&tmp, &target).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;

    // The new copy is durable; older copies in other formats are now redundant.
    for other in [
        CompressionMethod::Gzip,
        CompressionMethod::Lz4,
        CompressionMethod::Zstd,
    ] {
        if Some(other) == method.method() {
            continue;
        }
        let p = dir.join(format!("{segment_file_name}{}", other.suffix()));
        match fs::remove_file(&p) {
            Ok(()) => tracing::info!(file = %p.display(), "removed older compressed copy"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io("remove", &p, e)),
        }
    }
    fs::remove_file(&plain).map_err(|e| ArchiveError::io("remove", &plain, e))?;
    durable::fsync_dir(dir)?;
    Ok(target)
}

/// Writes the compressed temp file, fsyncs it, and reads it back to prove it decodes to `data`.
/// Streams `plain` (`len` bytes) through the compressor into `tmp`, fsyncs it, then reads both back
/// and compares them chunk by chunk, so that memory stays constant whatever the segment size.
fn write_compressed(
    tmp: &Path,
    plain: &Path,
    len: u64,
    method: Compression,
    mode: u32,
    owner: Owner,
) -> Result<()> {
    // 256 kB: large enough for few syscalls, small enough that the three buffers below (reader and
    // the two compared halves) stay under 1 MB of the receiver's memory.
    const CHUNK: usize = 256 << 10;
    let src = File::open(plain).map_err(|e| ArchiveError::io("open", plain, e))?;
    let file = durable::create_new_file(tmp, mode, owner)?;
    let out = io::BufWriter::with_capacity(1 << 16, file);
    let out = encode_stream(method, io::BufReader::with_capacity(CHUNK, src), len, out)
        .map_err(|e| ArchiveError::io("compress into", tmp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| ArchiveError::io("write", tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| ArchiveError::io("fsync", tmp, e))?;
    drop(file);

    // Read-back: the temp name has the compression suffix followed by `.tmp`, so decode explicitly.
    let f = File::open(tmp).map_err(|e| ArchiveError::io("open", tmp, e))?;
    let mut decoded = decoder(method.method(), f)
        .map_err(|e| ArchiveError::io("start decoder for", tmp, e))?
        .take(len + 1);
    let mut original = File::open(plain).map_err(|e| ArchiveError::io("open", plain, e))?;
    let mismatch = || {
        ArchiveError::corrupt(
            tmp,
            "the compressed copy does not decompress to the segment it was made from",
        )
    };
    let (mut a, mut b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut total = 0u64;
    loop {
        let n = read_full(&mut decoded, &mut a).map_err(|e| read_error(tmp, e))?;
        let m = read_full(&mut original, &mut b[..n.clamp(1, CHUNK)])
            .map_err(|e| ArchiveError::io("read", plain, e))?;
        if n == 0 {
            // The decoded stream ended: the original must end here too.
            if m != 0 || total != len {
                return Err(mismatch());
            }
            return Ok(());
        }
        if n != m || a[..n] != b[..m] {
            return Err(mismatch());
        }
        total += n as u64;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fake_segment;
    use proptest::prelude::*;

    const MB: usize = 1024 * 1024;

    #[test]
    fn parses_pg_receivewal_spellings() {
        let ok = [
            ("none", Compression::None),
            ("0", Compression::None),
            ("none:0", Compression::None),
            ("gzip", Compression::Gzip { level: 6 }),
            ("gzip:9", Compression::Gzip { level: 9 }),
            ("gzip:level=1", Compression::Gzip { level: 1 }),
            ("5", Compression::Gzip { level: 5 }),
            ("lz4", Compression::Lz4),
            ("lz4:1", Compression::Lz4),
            ("lz4:0", Compression::Lz4),
            ("zstd", Compression::Zstd { level: 3 }),
            ("zstd:19", Compression::Zstd { level: 19 }),
            ("zstd:-5", Compression::Zstd { level: -5 }),
            ("zstd:level=7", Compression::Zstd { level: 7 }),
        ];
        for (text, want) in ok {
            assert_eq!(text.parse::<Compression>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_bad_spellings_with_reasons() {
        let bad = [
            ("", "empty"),
            ("gzip:0", "out of range"),
            ("gzip:10", "out of range"),
            ("10", "out of range"),
            ("-1", "out of range"),
            ("gzip:", "empty option"),
            ("gzip:fast", "unknown compression option"),
            ("gzip:level", "requires a value"),
            ("gzip:level=x", "must be an integer"),
            ("lz4:9", "only the fast mode"),
            ("zstd:100", "out of range"),
            ("zstd:workers=4", "not supported"),
            ("zstd:long", "not supported"),
            ("none:3", "takes no compression level"),
            ("bzip2", "unknown compression method"),
            ("GZIP", "unknown compression method"),
            ("gzip:99999999999999999999", "unknown compression option"),
        ];
        for (text, why) in bad {
            let e = text.parse::<Compression>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(level in 1u32..=9, zl in -50i32..=22, pick in 0u8..4) {
            let c = match pick {
                0 => Compression::None,
                1 => Compression::Gzip { level },
                2 => Compression::Lz4,
                _ => Compression::Zstd { level: zl },
            };
            prop_assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Compression>();
        }

        #[test]
        fn gzip_levels(n in -100i64..100) {
            let r = format!("gzip:{n}").parse::<Compression>();
            prop_assert_eq!(r.is_ok(), (1..=9).contains(&n));
        }

        #[test]
        fn level_keyword_matches_bare(n in -10i64..30, m in prop::sample::select(vec!["gzip", "zstd", "lz4"])) {
            let a = format!("{m}:{n}").parse::<Compression>().ok();
            let b = format!("{m}:level={n}").parse::<Compression>().ok();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn suffixes() {
        assert_eq!(suffix_info("000000010000000000000001"), (None, false));
        assert_eq!(
            suffix_info("000000010000000000000001.gz"),
            (Some(CompressionMethod::Gzip), false)
        );
        assert_eq!(
            suffix_info("000000010000000000000001.lz4.partial"),
            (Some(CompressionMethod::Lz4), true)
        );
        assert_eq!(
            suffix_info("000000010000000000000001.partial"),
            (None, true)
        );
        assert_eq!(suffix_info("x.zst"), (Some(CompressionMethod::Zstd), false));
    }

    fn roundtrip(method: Compression) {
        let d = tempfile::tempdir().unwrap();
        let name = "000000010000000000000003";
        let data = fake_segment(MB, 3);
        fs::write(d.path().join(name), &data).unwrap();
        let out = compress_completed_segment(d.path(), name, method, Owner::current()).unwrap();
        assert_eq!(file_name_of(&out), format!("{name}{}", method.suffix()));
        assert!(!d.path().join(name).exists(), "plain file removed");
        assert!(!durable::temp_path_for(&out).exists(), "no temp left");
        assert_eq!(uncompressed_size(&out).unwrap(), MB as u64);
        let mut back = Vec::new();
        open_segment(&out).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(fs::metadata(&out).unwrap().len() < MB as u64);
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(segment_sha256(&out).unwrap(), want);
    }

    #[test]
    fn gzip_roundtrip() {
        roundtrip(Compression::Gzip { level: 1 });
    }

    #[test]
    fn lz4_roundtrip() {
        roundtrip(Compression::Lz4);
    }

    #[test]
    fn zstd_roundtrip() {
        roundtrip(Compression::Zstd { level: 3 });
    }

    #[test]
    fn none_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        let name = "000000010000000000000003";
        fs::write(d.path().join(name), fake_segment(MB, 0)).unwrap();
        let p = compress_completed_segment(d.path(), name, Compression::None, Owner::current())
            .unwrap();
        assert_eq!(p, d.path().join(name));
        assert!(p.exists());
    }

    #[test]
    fn refuses_wrong_names_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        for name in [
            "000000010000000000000003.partial",
            "000000010000000000000003.gz",
            "00000002.history",
            "../000000010000000000000003",
            "junk",
        ] {
            let e = compress_completed_segment(d.path(), name, Compression::Lz4, Owner::current())
                .unwrap_err();
            assert!(matches!(e, ArchiveError::BadFileName { .. }), "{name}: {e}");
        }
        let name = "000000010000000000000004";
        fs::write(d.path().join(name), vec![0u8; 12345]).unwrap();
        let e = compress_completed_segment(d.path(), name, Compression::Lz4, Owner::current())
            .unwrap_err();
        assert!(e.is_corruption(), "{e}");
        assert!(
            d.path().join(name).exists(),
            "a damaged file is never removed"
        );
        assert!(!d.path().join(format!("{name}.lz4")).exists());
        let missing = compress_completed_segment(
            d.path(),
            "000000010000000000000005",
            Compression::Lz4,
            Owner::current(),
        )
        .unwrap_err();
        assert!(matches!(missing, ArchiveError::Io { .. }), "{missing}");
    }

    #[test]
    fn recompression_replaces_other_formats() {
        let d = tempfile::tempdir().unwrap();
        let name = "000000010000000000000003";
        let data = fake_segment(MB, 9);
        fs::write(d.path().join(name), &data).unwrap();
        compress_completed_segment(d.path(), name, Compression::Lz4, Owner::current()).unwrap();
        // A crash leftover: the plain file is back next to the .lz4 (e.g. restored by hand).
        fs::write(d.path().join(name), &data).unwrap();
        compress_completed_segment(
            d.path(),
            name,
            Compression::Gzip { level: 1 },
            Owner::current(),
        )
        .unwrap();
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![format!("{name}.gz")]);
    }

    #[test]
    fn gzip_isize_is_what_pg_receivewal_reads() {
        let d = tempfile::tempdir().unwrap();
        let name = "000000010000000000000007";
        fs::write(d.path().join(name), fake_segment(MB, 1)).unwrap();
        let p = compress_completed_segment(
            d.path(),
            name,
            Compression::Gzip { level: 6 },
            Owner::current(),
        )
        .unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(&bytes[..2], &GZIP_MAGIC);
        let isize = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(isize as usize, MB);
    }

    #[test]
    fn lz4_frame_header_has_content_size() {
        let d = tempfile::tempdir().unwrap();
        let name = "000000010000000000000007";
        fs::write(d.path().join(name), fake_segment(MB, 1)).unwrap();
        let p =
            compress_completed_segment(d.path(), name, Compression::Lz4, Owner::current()).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(
            u32::from_le_bytes(bytes[..4].try_into().unwrap()),
            LZ4_FRAME_MAGIC
        );
        assert_ne!(bytes[4] & LZ4_FLG_CONTENT_SIZE, 0);
        assert_eq!(
            header_size(&p, CompressionMethod::Lz4).unwrap(),
            Some(MB as u64)
        );
    }

    #[test]
    fn lz4_without_content_size_is_counted() {
        // The shape pg_receivewal writes: default frame, linked blocks, no size, no checksum.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("000000010000000000000001.lz4");
        let data = fake_segment(MB, 4);
        let info = lz4_flex::frame::FrameInfo::new()
            .block_size(lz4_flex::frame::BlockSize::Max64KB)
            .block_mode(lz4_flex::frame::BlockMode::Linked);
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(&data).unwrap();
        fs::write(&p, enc.finish().unwrap()).unwrap();
        assert_eq!(header_size(&p, CompressionMethod::Lz4).unwrap(), None);
        assert_eq!(uncompressed_size(&p).unwrap(), MB as u64);
    }

    #[test]
    fn lz4_reads_every_frame() {
        // `lz4` and LZ4F read concatenated frames as one stream; so must we.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("000000010000000000000001.lz4");
        let data = fake_segment(MB, 8);
        let mut file = Vec::new();
        for half in data.chunks(MB / 2) {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(half).unwrap();
            file.extend(enc.finish().unwrap());
        }
        fs::write(&p, &file).unwrap();
        let (back, _) = read_content(&p, MB as u64, false).unwrap();
        assert!(back == data);
        assert_eq!(uncompressed_size(&p).unwrap(), MB as u64);
    }

    #[test]
    fn truncated_and_corrupt_inputs_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let data = fake_segment(MB, 5);
        for method in [
            Compression::Gzip { level: 6 },
            Compression::Lz4,
            Compression::Zstd { level: 3 },
        ] {
            let full = encode(method, &data, Vec::new()).unwrap();
            let name = format!("000000010000000000000002{}", method.suffix());
            let p = d.path().join(&name);
            for cut in [0, 1, 3, 10, full.len() / 2, full.len() - 1] {
                fs::write(&p, &full[..cut]).unwrap();
                let e = read_content(&p, MB as u64, false)
                    .map(|r| r.1)
                    .expect_err(&format!("{name} cut at {cut}"));
                assert!(e.is_corruption(), "{name} cut at {cut}: {e}");
            }
            // Flip a byte in the middle: the stream checksums catch it.
            let mut bad = full.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            fs::write(&p, &bad).unwrap();
            let e = read_content(&p, MB as u64, false)
                .map(|r| r.1)
                .expect_err(&format!("{name} with a flipped byte"));
            assert!(e.is_corruption(), "{name} with a flipped byte: {e}");
            // Trailing garbage after the stream.
            let mut trailing = full.clone();
            trailing.extend_from_slice(b"garbage!");
            fs::write(&p, &trailing).unwrap();
            let e = read_content(&p, MB as u64, false)
                .map(|r| r.1)
                .expect_err(&name);
            assert!(e.is_corruption(), "{name} with trailing bytes: {e}");
            // More content than allowed.
            fs::write(&p, &full).unwrap();
            let e = read_content(&p, MB as u64 - 1, false).unwrap_err();
            assert!(e.to_string().contains("more than"), "{e}");
        }
    }

    #[test]
    fn truncated_partial_reads_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let data = fake_segment(MB, 6);
        // A gzip stream that was sync-flushed but never finished, like pg_receivewal's .gz.partial.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&data[..300_000]).unwrap();
        enc.flush().unwrap();
        let partial = enc.get_ref().clone();
        let p = d.path().join("000000010000000000000002.gz.partial");
        fs::write(&p, &partial).unwrap();
        let (bytes, copied) = read_content(&p, MB as u64, true).unwrap();
        assert!(copied.truncated);
        assert_eq!(bytes, &data[..300_000]);
        assert_eq!(uncompressed_size(&p).unwrap(), 300_000);
        // Without tolerance the same file is damage.
        assert!(read_content(&p, MB as u64, false)
            .unwrap_err()
            .is_corruption());
    }

    /// A complete segment's .gz cut short: its last four bytes are compressed data, not the
    /// size trailer — the decoder says it ends early, instead of a size read from garbage.
    #[test]
    fn a_truncated_gzip_is_named_as_such() {
        let d = tempfile::tempdir().unwrap();
        let data = fake_segment(MB, 9);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&data).unwrap();
        let full = enc.finish().unwrap();
        let p = d.path().join("000000010000000000000002.gz");
        fs::write(&p, &full).unwrap();
        assert_eq!(uncompressed_size(&p).unwrap(), MB as u64);
        fs::write(&p, &full[..full.len() / 2]).unwrap();
        let e = uncompressed_size(&p).unwrap_err();
        assert!(e.to_string().contains("ends early"), "{e}");
    }

    #[test]
    fn header_size_rejects_garbage() {
        let d = tempfile::tempdir().unwrap();
        let gz = d.path().join("000000010000000000000002.gz");
        fs::write(&gz, b"short").unwrap();
        assert!(uncompressed_size(&gz).unwrap_err().is_corruption());
        fs::write(&gz, [0u8; 64]).unwrap();
        assert!(uncompressed_size(&gz).unwrap_err().is_corruption());
        let lz = d.path().join("000000010000000000000002.lz4");
        fs::write(&lz, [0x04, 0x22, 0x4d]).unwrap();
        assert!(uncompressed_size(&lz).unwrap_err().is_corruption());
        let zs = d.path().join("000000010000000000000002.zst");
        fs::write(&zs, [1, 2, 3, 4, 5]).unwrap();
        assert!(uncompressed_size(&zs).unwrap_err().is_corruption());
        let empty = d.path().join("000000010000000000000003.zst");
        fs::write(&empty, []).unwrap();
        assert!(uncompressed_size(&empty).unwrap_err().is_corruption());
    }
}
