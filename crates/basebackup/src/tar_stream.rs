//! A streaming reader for the tar archives in a `BASE_BACKUP` stream.
//!
//! The server writes ustar headers (`tarCreateHeader` in `src/port/tar.c`): 512-byte blocks with octal
//! (or, past 8 GB, base-256) numbers, the payload padded to the next block. This reader takes bytes as
//! they come off the network, one member at a time, and never holds more than one header block and one
//! bounded extended header in memory.
//!
//! Why not the `tar` crate: its normal mode reads GNU long-name (`L`/`K`) and pax (`x`) records into
//! memory with no bound (a hostile server could announce gigabytes), and its raw mode frames members by
//! the header size even when a pax `size` record says otherwise. Here both are handled: extended headers
//! are capped at [`MAX_EXTENDED_HEADER`], and a pax `size` replaces the header's size as POSIX says.
//!
//! End of archive, as `astreamer_tar.c` treats it:
//! * a block of zeros ends the archive (PostgreSQL 15+ sends two; anything after the first must be
//!   zeros, which catches a demultiplexing bug that glued two streams together);
//! * end of input right at a header boundary ends it too, because servers before PostgreSQL 15 send
//!   no end-of-archive blocks at all — the COPY simply ends;
//! * end of input anywhere else (inside a header, a member's data or its padding) is a truncated
//!   archive and an error.
//!
//! Payload comes out, from a [`ChunkRead`] input, as the input's own shared buffers
//! ([`TarReader::read_data_chunk`]): the extractor writes a file's data straight from the network
//! buffers it arrived in. The tests also read it copied (`TarReader::read_data`) and compare.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// A byte stream that can hand out what it holds as shared buffers instead of copying it into the
/// caller's: the base backup's CopyData payloads, which the extractor then writes with `writev`.
pub trait ChunkRead: Read {
    /// The next bytes of the stream, at most `max` of them (`max` > 0), in a buffer the caller
    /// may keep; empty only at the end of the input.
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes>;
}

impl<R: ChunkRead + ?Sized> ChunkRead for &mut R {
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        (**self).read_chunk(max)
    }
}

/// [`ChunkRead`] for any [`Read`] (an archive in a file, a byte slice), copying into buffers of
/// its own.
pub struct CopyChunks<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: Read> CopyChunks<R> {
    pub fn new(inner: R) -> Self {
        CopyChunks {
            inner,
            buf: BytesMut::new(),
        }
    }
}

impl<R: Read> Read for CopyChunks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Read> ChunkRead for CopyChunks<R> {
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        self.buf.clear();
        self.buf.resize(max, 0);
        let n = self.inner.read(&mut self.buf)?;
        self.buf.truncate(n);
        Ok(self.buf.split().freeze())
    }
}

/// Size of a tar block (`TAR_BLOCK_SIZE`).
pub const BLOCK_SIZE: usize = 512;

/// Largest GNU long-name/long-link or pax extended header accepted, in bytes. Real ones are a few
/// hundred bytes (`PATH_MAX` is 4096); the cap only stops a hostile stream from exhausting memory.
pub const MAX_EXTENDED_HEADER: u64 = 1024 * 1024;

/// What a member is, from its type flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// `'0'`, `'\0'` (old tar) or `'7'` (contiguous file, which readers treat as regular).
    Regular,
    /// `'5'`, or a regular entry whose name ends in `/` (pre-POSIX tar).
    Directory,
    /// `'2'`.
    Symlink,
    /// `'1'`.
    HardLink,
    /// `'3'`.
    CharDevice,
    /// `'4'`.
    BlockDevice,
    /// `'6'`.
    Fifo,
    /// Any other type flag (GNU sparse `'S'`, volume headers, vendor extensions…).
    Other(u8),
}

impl MemberKind {
    fn from_flag(flag: u8) -> MemberKind {
        match flag {
            b'0' | 0 | b'7' => MemberKind::Regular,
            b'1' => MemberKind::HardLink,
            b'2' => MemberKind::Symlink,
            b'3' => MemberKind::CharDevice,
            b'4' => MemberKind::BlockDevice,
            b'5' => MemberKind::Directory,
            b'6' => MemberKind::Fifo,
            other => MemberKind::Other(other),
        }
    }

    /// A short name for error messages.
    pub fn describe(self) -> String {
        match self {
            MemberKind::Regular => "regular file".into(),
            MemberKind::Directory => "directory".into(),
            MemberKind::Symlink => "symbolic link".into(),
            MemberKind::HardLink => "hard link".into(),
            MemberKind::CharDevice => "character device".into(),
            MemberKind::BlockDevice => "block device".into(),
            MemberKind::Fifo => "FIFO".into(),
            MemberKind::Other(flag) if flag.is_ascii_graphic() => {
                format!("member of unsupported type '{}'", flag as char)
            }
            MemberKind::Other(flag) => format!("member of unsupported type 0x{flag:02x}"),
        }
    }
}

/// One archive member's metadata, with GNU long names and pax records already applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHeader {
    /// The path exactly as the archive spells it (not yet checked for safety).
    pub path: Vec<u8>,
    /// Link target, for symbolic and hard links.
    pub link_target: Option<Vec<u8>>,
    pub kind: MemberKind,
    /// Permission bits as sent (`st_mode & 07777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Payload size in bytes.
    pub size: u64,
}

/// Why the byte stream is not a readable tar archive.
#[derive(Debug, Error)]
pub enum TarError {
    #[error("could not read the archive stream: {0}")]
    Io(#[from] io::Error),
    #[error("archive ends inside a member header ({got} of 512 bytes): the stream was cut off; take the backup again")]
    TruncatedHeader { got: usize },
    #[error("archive ends inside \"{path}\" after {got} of {expected} bytes: the stream was cut off; take the backup again")]
    TruncatedMember {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("archive ends in the block padding after \"{path}\": the stream was cut off; take the backup again")]
    TruncatedPadding { path: String },
    #[error("archive header checksum mismatch at byte {offset}: the stream is corrupt or not a tar archive")]
    BadChecksum { offset: u64 },
    #[error("invalid {field} field in the tar header at byte {offset}: the stream is corrupt")]
    BadNumber { field: &'static str, offset: u64 },
    #[error("tar member at byte {offset} has an empty name: the stream is corrupt")]
    EmptyName { offset: u64 },
    #[error("{what} of {size} bytes at byte {offset} is larger than the {max}-byte limit: refusing a hostile or corrupt archive")]
    ExtendedHeaderTooLarge {
        what: &'static str,
        size: u64,
        offset: u64,
        max: u64,
    },
    #[error("malformed pax extended header at byte {offset}: {reason}")]
    BadPax { offset: u64, reason: &'static str },
    #[error("{0} at the end of the archive describes no member: the stream was cut off")]
    DanglingExtendedHeader(&'static str),
    #[error("non-zero data after the end-of-archive marker at byte {offset}: two archives were run together")]
    TrailingGarbage { offset: u64 },
    #[error("pax header sets \"{0}\", which walrelay does not support: refusing rather than mis-extracting")]
    UnsupportedPax(String),
}

/// Where the reader stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a header block.
    Header,
    /// Inside a member's payload: this many payload bytes and then this much padding remain.
    Data { remaining: u64, padding: u64 },
    /// End of archive seen (or reported).
    Done,
}

/// Streams members out of a tar archive read from `R`.
///
/// Call [`TarReader::next_member`] for each header, then [`TarReader::read_data_chunk`] until it
/// returns nothing for the member's payload (unread payload is skipped by the next `next_member`).
pub struct TarReader<R> {
    inner: R,
    state: State,
    /// Bytes consumed from `inner` so far.
    position: u64,
    /// Path of the member being read, for error messages.
    current_path: Vec<u8>,
    current_size: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            state: State::Header,
            position: 0,
            current_path: Vec::new(),
            current_size: 0,
        }
    }

    /// Bytes consumed from the underlying reader so far (headers, payload and padding).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next member's header, or `None` at the end of the archive (see the module docs for what
    /// counts as the end). Skips whatever is left of the previous member's payload.
    pub fn next_member(&mut self) -> Result<Option<MemberHeader>, TarError> {
        self.skip_rest_of_member()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax = PaxOverrides::default();
        let mut pending: Option<&'static str> = None;
        loop {
            if self.state == State::Done {
                return Ok(None);
            }
            let offset = self.position;
            let mut block = [0u8; BLOCK_SIZE];
            let got = self.read_up_to(&mut block)?;
            if got == 0 {
                // Clean end of input at a header boundary: a pre-15 server's archive.
                self.state = State::Done;
                if let Some(what) = pending {
                    return Err(TarError::DanglingExtendedHeader(what));
                }
                return Ok(None);
            }
            if got < BLOCK_SIZE {
                return Err(TarError::TruncatedHeader { got });
            }
            if block.iter().all(|&b| b == 0) {
                self.state = State::Done;
                if let Some(what) = pending {
                    return Err(TarError::DanglingExtendedHeader(what));
                }
                self.drain_trailer()?;
                return Ok(None);
            }
            let raw = RawHeader::parse(&block, offset)?;
            match raw.type_flag {
                // GNU long name / long link: the payload is the name, NUL-terminated.
                b'L' | b'K' => {
                    let what = if raw.type_flag == b'L' {
                        "GNU long name header"
                    } else {
                        "GNU long link header"
                    };
                    let data = self.read_extended(what, raw.size, offset)?;
                    let name = truncate_nul(&data).to_vec();
                    if raw.type_flag == b'L' {
                        long_name = Some(name);
                    } else {
                        long_link = Some(name);
                    }
                    pending = Some(what);
                }
                // pax extended header for the next member.
                b'x' => {
                    let data = self.read_extended("pax extended header", raw.size, offset)?;
                    pax.apply(&data, offset)?;
                    pending = Some("pax extended header");
                }
                // pax global header: nothing PostgreSQL or walrelay needs, but a global path or size
                // would change how every later member is read, so refuse those.
                b'g' => {
                    let data = self.read_extended("pax global header", raw.size, offset)?;
                    let mut global = PaxOverrides::default();
                    global.apply(&data, offset)?;
                    if global.path.is_some() || global.link_path.is_some() || global.size.is_some()
                    {
                        return Err(TarError::UnsupportedPax(
                            "a global path, linkpath or size".into(),
                        ));
                    }
                }
                flag => {
                    let mut kind = MemberKind::from_flag(flag);
                    let path = pax.path.take().or(long_name.take()).unwrap_or(raw.path);
                    if path.is_empty() {
                        return Err(TarError::EmptyName { offset });
                    }
                    if kind == MemberKind::Regular && flag != b'7' && path.ends_with(b"/") {
                        kind = MemberKind::Directory;
                    }
                    let link_target = match kind {
                        MemberKind::Symlink | MemberKind::HardLink => Some(
                            pax.link_path
                                .take()
                                .or(long_link.take())
                                .unwrap_or(raw.link_name),
                        ),
                        _ => None,
                    };
                    let size = pax.size.unwrap_or(raw.size);
                    // Directories, links and devices carry no payload even if the header says so
                    // (GNU tar's dumpdir aside, which we do not read): the size still frames the stream.
                    let header = MemberHeader {
                        path,
                        link_target,
                        kind,
                        mode: raw.mode,
                        mtime: pax.mtime.unwrap_or(raw.mtime),
                        size,
                    };
                    self.current_path = header.path.clone();
                    self.current_size = size;
                    self.state = State::Data {
                        remaining: size,
                        padding: padding_for(size),
                    };
                    return Ok(Some(header));
                }
            }
        }
    }

    /// Reads payload of the current member into `buf`; 0 means the payload is complete.
    /// End of input before the payload is complete is [`TarError::TruncatedMember`]. (Only the
    /// tests copy payload out; the extractor takes it as chunks.)
    #[cfg(test)]
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let (remaining, padding) = match self.state {
            State::Data { remaining, padding } => (remaining, padding),
            _ => return Ok(0),
        };
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(self.truncated(remaining));
        }
        self.state = State::Data {
            remaining: remaining - n as u64,
            padding,
        };
        Ok(n)
    }

    /// Like `read_data`, without copying: at most `max` bytes of the current
    /// member's payload in the input's own buffer; empty when the payload is complete. End of
    /// input before the payload is complete is [`TarError::TruncatedMember`].
    pub fn read_data_chunk(&mut self, max: usize) -> Result<Bytes, TarError>
    where
        R: ChunkRead,
    {
        let (remaining, padding) = match self.state {
            State::Data { remaining, padding } => (remaining, padding),
            _ => return Ok(Bytes::new()),
        };
        if remaining == 0 || max == 0 {
            return Ok(Bytes::new());
        }
        let want = usize::try_from(remaining).map_or(max, |r| r.min(max));
        let chunk = loop {
            match self.inner.read_chunk(want) {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::Io(e)),
            }
        };
        if chunk.is_empty() {
            return Err(self.truncated(remaining));
        }
        if chunk.len() > want {
            // A broken ChunkRead: framing would be lost, so stop rather than guess.
            return Err(TarError::Io(io::Error::other(
                "the archive input returned more bytes than asked for",
            )));
        }
        self.position += chunk.len() as u64;
        self.state = State::Data {
            remaining: remaining - chunk.len() as u64,
            padding,
        };
        Ok(chunk)
    }

    fn truncated(&self, remaining: u64) -> TarError {
        TarError::TruncatedMember {
            path: String::from_utf8_lossy(&self.current_path).into_owned(),
            expected: self.current_size,
            got: self.current_size - remaining,
        }
    }

    fn skip_rest_of_member(&mut self) -> Result<(), TarError> {
        if let State::Data { remaining, padding } = self.state {
            let mut scratch = [0u8; 8192];
            let mut left = remaining;
            while left > 0 {
                let want = usize::try_from(left).map_or(scratch.len(), |l| l.min(scratch.len()));
                let n = self.read_some(&mut scratch[..want])?;
                if n == 0 {
                    return Err(self.truncated(left));
                }
                left -= n as u64;
            }
            let mut pad = [0u8; BLOCK_SIZE];
            // padding < 512 always
            let pad = &mut pad[..padding as usize];
            let got = self.read_up_to(pad)?;
            if got < pad.len() {
                // The payload is complete but its padding is cut: still a truncated archive.
                return Err(TarError::TruncatedPadding {
                    path: String::from_utf8_lossy(&self.current_path).into_owned(),
                });
            }
            self.state = State::Header;
        }
        Ok(())
    }

    /// Reads an extended header's payload (bounded) and skips its padding.
    fn read_extended(
        &mut self,
        what: &'static str,
        size: u64,
        offset: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENDED_HEADER {
            return Err(TarError::ExtendedHeaderTooLarge {
                what,
                size,
                offset,
                max: MAX_EXTENDED_HEADER,
            });
        }
        // size <= 1 MiB, fits usize
        let mut data = vec![0u8; size as usize];
        self.current_path = what.as_bytes().to_vec();
        self.current_size = size;
        let got = self.read_up_to(&mut data)?;
        if got < data.len() {
            return Err(TarError::TruncatedMember {
                path: what.to_string(),
                expected: size,
                got: got as u64,
            });
        }
        self.state = State::Data {
            remaining: 0,
            padding: padding_for(size),
        };
        self.skip_rest_of_member()?;
        Ok(data)
    }

    /// After the first zero block: everything left must be zeros (the second end block and any
    /// record padding). Reads to end of input.
    fn drain_trailer(&mut self) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        loop {
            let offset = self.position;
            let n = self.read_some(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Err(TarError::TrailingGarbage {
                    offset: offset + i as u64,
                });
            }
        }
    }

    /// One read, retrying on EINTR, counting bytes.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }

    /// Fills `buf` unless input ends first; returns how much was read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_some(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }
}

/// Padding after a payload of `size` bytes (`tarPaddingBytesRequired`).
pub fn padding_for(size: u64) -> u64 {
    (BLOCK_SIZE as u64 - size % BLOCK_SIZE as u64) % BLOCK_SIZE as u64
}

/// The fields of one 512-byte header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeader {
    pub path: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub type_flag: u8,
    pub link_name: Vec<u8>,
}

/// The checksums of a header block (`tarChecksum`): the sum of all its bytes with the checksum
/// field taken as spaces, summed as unsigned chars (the standard) and as signed chars.
fn header_checksums(block: &[u8; BLOCK_SIZE]) -> (u64, i64) {
    block
        .iter()
        .enumerate()
        .fold((0, 0), |(unsigned, signed), (i, &b)| {
            if (148..156).contains(&i) {
                (unsigned + 32, signed + 32)
            } else {
                (unsigned + u64::from(b), signed + i64::from(b as i8))
            }
        })
}

impl RawHeader {
    /// Parses and checksums one header block; `offset` is its position, for error messages.
    pub fn parse(block: &[u8; BLOCK_SIZE], offset: u64) -> Result<RawHeader, TarError> {
        let stored = parse_number(&block[148..156]).ok_or(TarError::BadNumber {
            field: "checksum",
            offset,
        })?;
        // Some old writers summed signed chars; accept either.
        let (unsigned, signed) = header_checksums(block);
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(TarError::BadChecksum { offset });
        }

        let num = |range: std::ops::Range<usize>, field: &'static str| {
            parse_number(&block[range]).ok_or(TarError::BadNumber { field, offset })
        };
        let mode = num(100..108, "mode")?;
        let size = num(124..136, "size")?;
        let mtime = num(136..148, "mtime")?;

        let name = truncate_nul(&block[0..100]);
        // POSIX ustar ("ustar\0" + "00") splits long paths into prefix + name; GNU's "ustar  \0"
        // uses those bytes for other things.
        let is_posix_ustar = &block[257..263] == b"ustar\0";
        let prefix = if is_posix_ustar {
            truncate_nul(&block[345..500])
        } else {
            &[]
        };
        let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
        if !prefix.is_empty() {
            path.extend_from_slice(prefix);
            path.push(b'/');
        }
        path.extend_from_slice(name);

        Ok(RawHeader {
            path,
            mode: (mode & 0o7777) as u32,
            size,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
            type_flag: block[156],
            link_name: truncate_nul(&block[157..257]).to_vec(),
        })
    }
}

/// A tar number: octal digits (leading spaces/zeros, ending at NUL or space), or base-256 when the
/// first byte has its high bit set (GNU, and PostgreSQL's `print_tar_number` for large values).
/// Negative base-256 numbers are rejected.
pub fn parse_number(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut value: u64 = u64::from(first & 0x3f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let mut i = 0;
    while i < field.len() && (field[i] == b' ' || field[i] == 0) {
        // An all-blank field is 0 (some writers leave unused numbers empty).
        i += 1;
    }
    if i == field.len() {
        return Some(0);
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        value = value
            .checked_mul(8)?
            .checked_add(u64::from(field[i] - b'0'))?;
        digits += 1;
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    // Only terminators may follow the digits.
    if field[i..].iter().all(|&b| b == b' ' || b == 0) {
        Some(value)
    } else {
        None
    }
}

fn truncate_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// The pax keys that change how a member is extracted.
#[derive(Debug, Default, PartialEq, Eq)]
struct PaxOverrides {
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
}

impl PaxOverrides {
    fn apply(&mut self, data: &[u8], offset: u64) -> Result<(), TarError> {
        for record in parse_pax_records(data, offset)? {
            let (key, value) = record;
            match key {
                b"path" => self.path = (!value.is_empty()).then(|| value.to_vec()),
                b"linkpath" => self.link_path = (!value.is_empty()).then(|| value.to_vec()),
                b"size" => {
                    let s = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or(TarError::BadPax {
                            offset,
                            reason: "size is not a decimal number",
                        })?;
                    self.size = Some(s);
                }
                b"mtime" => {
                    // Decimal seconds, maybe with a fraction: keep the whole seconds.
                    let s = std::str::from_utf8(value).ok().unwrap_or("");
                    let whole = s.split('.').next().unwrap_or("");
                    let t = whole.parse::<i64>().map_err(|_| TarError::BadPax {
                        offset,
                        reason: "mtime is not a number",
                    })?;
                    self.mtime = Some(t);
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(TarError::UnsupportedPax(
                        String::from_utf8_lossy(k).into_owned(),
                    ));
                }
                // uid, gid, uname, gname, atime, ctime, xattrs, comments: not needed.
                _ => {}
            }
        }
        Ok(())
    }
}

/// One pax record: key and value bytes.
pub type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits a pax extended header into `(key, value)` records: `"<len> <key>=<value>\n"`, where `len`
/// counts the whole record including itself and the newline.
pub fn parse_pax_records(data: &[u8], offset: u64) -> Result<Vec<PaxRecord<'_>>, TarError> {
    let bad = |reason| TarError::BadPax { offset, reason };
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Trailing NUL padding after the last record is tolerated.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(bad("record without a length"))?;
        let len_text = std::str::from_utf8(&rest[..space])
            .map_err(|_| bad("record length is not a number"))?;
        if len_text.is_empty() || !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("record length is not a number"));
        }
        let len: usize = len_text
            .parse()
            .map_err(|_| bad("record length is not a number"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("record length out of range"));
        }
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or(bad("record does not end with a newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(bad("record without '='"))?;
        out.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ustar header block built by hand, the way `tarCreateHeader` writes one.
    fn header(name: &[u8], flag: u8, size: u64, link: &[u8]) -> [u8; BLOCK_SIZE] {
        let mut h = [0u8; BLOCK_SIZE];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000600\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let size_field = format!("{size:011o}\0");
        h[124..136].copy_from_slice(size_field.as_bytes());
        h[136..148].copy_from_slice(b"14707054430\0");
        h[156] = flag;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h
    }

    fn set_checksum(h: &mut [u8; BLOCK_SIZE]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
    }

    fn member(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = header(name, b'0', data.len() as u64, b"").to_vec();
        v.extend_from_slice(data);
        v.resize(v.len() + padding_for(data.len() as u64) as usize, 0);
        v
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(MemberHeader, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_member()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = r.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((h, data));
        }
        Ok(out)
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"   644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"        "), Some(0));
        assert_eq!(parse_number(b"0000008\0"), None);
        assert_eq!(parse_number(b"12x\0"), None);
        assert_eq!(parse_number(b"12 3"), None);
        assert_eq!(parse_number(b""), None);
        // base-256, as print_tar_number writes sizes of 8 GB and more
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[7..12].copy_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x05]);
        assert_eq!(parse_number(&f), Some(0x02_0000_0005));
        // negative base-256
        assert_eq!(parse_number(&[0xff, 0xff]), None);
        // overflow
        assert_eq!(
            parse_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(parse_number(b"7777777777777777777777777"), None);
    }

    #[test]
    fn reads_members_with_and_without_end_blocks() {
        let mut tar = member(b"PG_VERSION", b"15\n");
        tar.extend(header(b"base/", b'5', 0, b""));
        tar.extend(member(b"base/1/1259", &[7u8; 1000]));
        // PG <= 14: the stream just ends.
        let got = read_all(&tar).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.path, b"PG_VERSION");
        assert_eq!(got[0].1, b"15\n");
        assert_eq!(got[1].0.kind, MemberKind::Directory);
        assert_eq!(got[2].1, vec![7u8; 1000]);
        assert_eq!(got[0].0.mode, 0o600);
        assert_eq!(got[0].0.mtime, 0o14707054430);
        // PG 15+: two zero blocks.
        tar.extend([0u8; 1024]);
        assert_eq!(read_all(&tar).unwrap().len(), 3);
        // GNU tar pads the last record further with zeros.
        tar.extend([0u8; 9216]);
        assert_eq!(read_all(&tar).unwrap().len(), 3);
    }

    #[test]
    fn position_counts_every_byte() {
        let mut tar = member(b"a", b"xyz");
        tar.extend([0u8; 1024]);
        let mut r = TarReader::new(&tar[..]);
        while r.next_member().unwrap().is_some() {}
        assert_eq!(r.position(), tar.len() as u64);
    }

    #[test]
    fn empty_input_is_an_empty_archive() {
        assert!(read_all(b"").unwrap().is_empty());
        assert!(read_all(&[0u8; 1024]).unwrap().is_empty());
    }

    #[test]
    fn truncation_is_an_error() {
        let tar = member(b"global/pg_control", &[1u8; 8192]);
        // cut inside the header
        assert!(matches!(
            read_all(&tar[..100]),
            Err(TarError::TruncatedHeader { got: 100 })
        ));
        // cut inside the payload
        match read_all(&tar[..BLOCK_SIZE + 4000]) {
            Err(TarError::TruncatedMember {
                path,
                expected,
                got,
            }) => {
                assert_eq!(path, "global/pg_control");
                assert_eq!(expected, 8192);
                assert_eq!(got, 4000);
            }
            other => panic!("{other:?}"),
        }
        // cut inside the padding of a member
        let tar = member(b"x", b"abc");
        assert!(matches!(
            read_all(&tar[..BLOCK_SIZE + 100]),
            Err(TarError::TruncatedPadding { .. })
        ));
        // ... also when the reader skips the payload instead of reading it
        let mut r = TarReader::new(&tar[..BLOCK_SIZE + 2]);
        r.next_member().unwrap();
        assert!(matches!(
            r.next_member(),
            Err(TarError::TruncatedMember { got: 2, .. })
        ));
        let mut r = TarReader::new(&tar[..BLOCK_SIZE + 13]);
        r.next_member().unwrap();
        assert!(matches!(
            r.next_member(),
            Err(TarError::TruncatedPadding { .. })
        ));
    }

    #[test]
    fn bad_checksum_and_empty_name() {
        let mut h = header(b"x", b'0', 0, b"");
        h[0] = b'y';
        assert!(matches!(
            read_all(&h),
            Err(TarError::BadChecksum { offset: 0 })
        ));
        let h = header(b"", b'0', 0, b"");
        assert!(matches!(read_all(&h), Err(TarError::EmptyName { .. })));
    }

    #[test]
    fn signed_char_checksum_of_old_writers_is_accepted() {
        // A name byte >= 0x80 makes the signed and unsigned sums differ by 256 per such byte.
        let mut h = header("caf\u{e9}".as_bytes(), b'0', 0, b"");
        let (unsigned, signed) = header_checksums(&h);
        assert_eq!(i64::try_from(unsigned).unwrap() - signed, 2 * 256);
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert_eq!(read_all(&h).unwrap().len(), 1);
        h[148..156].copy_from_slice(format!("{:06o}\0 ", signed - 1).as_bytes());
        assert!(matches!(
            read_all(&h),
            Err(TarError::BadChecksum { offset: 0 })
        ));
    }

    #[test]
    fn garbage_after_end_marker() {
        let mut tar = member(b"a", b"1");
        tar.extend([0u8; 512]);
        tar.extend(member(b"b", b"2"));
        assert!(matches!(
            read_all(&tar),
            Err(TarError::TrailingGarbage { .. })
        ));
    }

    #[test]
    fn gnu_long_name_and_link() {
        let long: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
        let mut name_payload = long.clone();
        name_payload.push(0);
        let mut tar = header(b"././@LongLink", b'L', name_payload.len() as u64, b"").to_vec();
        tar.extend(&name_payload);
        tar.resize(
            tar.len() + padding_for(name_payload.len() as u64) as usize,
            0,
        );
        let link: Vec<u8> = b"/".iter().chain(long.iter()).copied().collect();
        tar.extend(header(b"././@LongLink", b'K', link.len() as u64, b""));
        tar.extend(&link);
        tar.resize(tar.len() + padding_for(link.len() as u64) as usize, 0);
        tar.extend(header(b"truncated-name", b'2', 0, b"truncated-link"));
        let got = read_all(&tar).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path, long);
        assert_eq!(got[0].0.link_target.as_deref(), Some(&link[..]));
        assert_eq!(got[0].0.kind, MemberKind::Symlink);
    }

    #[test]
    fn pax_records() {
        let recs = parse_pax_records(b"20 path=a/b/c/d/e/f\n11 size=42\n", 0).unwrap();
        assert_eq!(
            recs,
            vec![
                (&b"path"[..], &b"a/b/c/d/e/f"[..]),
                (&b"size"[..], &b"42"[..])
            ]
        );
        for bad in [
            &b"5 path=x\n"[..], // length too short for the record
            b"99 path=x\n",     // length past the end
            b"x path=x\n",      // not a number
            b"10 pathxxx\n",    // no '='
            b"10 path=xy",      // no newline
            b"path=x\n",        // no length
            b" 9 path=x\n",     // empty length
        ] {
            assert!(
                parse_pax_records(bad, 0).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // NUL padding after records is fine
        assert_eq!(
            parse_pax_records(b"11 size=42\n\0\0\0", 0).unwrap().len(),
            1
        );
        assert_eq!(pax_record("path", "x"), b"9 path=x\n");
        // around the 99/100-byte boundary, where the length's own digits change
        for n in 90..100 {
            let rec = pax_record("k", &"v".repeat(n));
            let parsed = parse_pax_records(&rec, 0).unwrap();
            assert_eq!(parsed[0].1.len(), n);
        }
    }

    /// One pax record with its self-inclusive length computed.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    fn pax_member(records: &[u8]) -> Vec<u8> {
        let mut tar = header(b"PaxHeaders/x", b'x', records.len() as u64, b"").to_vec();
        tar.extend(records);
        tar.resize(tar.len() + padding_for(records.len() as u64) as usize, 0);
        tar
    }

    #[test]
    fn pax_path_size_and_mtime_apply() {
        let long = "d/".repeat(120) + "file";
        let mut records = pax_record("path", &long);
        records.extend(pax_record("mtime", "1700000000.25"));
        records.extend(pax_record("size", "10"));
        records.extend(pax_record("SCHILY.xattr.user.x", "ignored"));
        let mut tar = pax_member(&records);
        // header says 3 bytes, pax says 10: pax wins (POSIX)
        let mut h = header(b"short", b'0', 3, b"");
        h[124..136].copy_from_slice(b"00000000003\0");
        set_checksum(&mut h);
        tar.extend(h);
        tar.extend(b"0123456789");
        tar.resize(tar.len() + padding_for(10) as usize, 0);
        tar.extend(member(b"next", b"n"));
        let got = read_all(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.path, long.as_bytes());
        assert_eq!(got[0].0.size, 10);
        assert_eq!(got[0].0.mtime, 1_700_000_000);
        assert_eq!(got[0].1, b"0123456789");
        assert_eq!(got[1].0.path, b"next");
    }

    #[test]
    fn pax_sparse_and_global_path_refused() {
        let tar = [
            pax_member(&pax_record("GNU.sparse.major", "1")),
            member(b"x", b""),
        ]
        .concat();
        assert!(matches!(read_all(&tar), Err(TarError::UnsupportedPax(_))));
        let mut g = header(b"g", b'g', 10, b"").to_vec();
        g.extend(b"10 path=x\n");
        g.resize(1024, 0);
        g.extend(member(b"x", b""));
        assert!(matches!(read_all(&g), Err(TarError::UnsupportedPax(_))));
    }

    #[test]
    fn oversized_extended_header_refused_without_reading_it() {
        let h = header(b"././@LongLink", b'L', MAX_EXTENDED_HEADER + 1, b"");
        // Only the header is supplied: the reader must refuse before trying to read the payload.
        assert!(matches!(
            read_all(&h),
            Err(TarError::ExtendedHeaderTooLarge { .. })
        ));
    }

    #[test]
    fn dangling_extended_header() {
        let mut tar = header(b"././@LongLink", b'L', 4, b"").to_vec();
        tar.extend(b"abc\0");
        tar.resize(1024, 0);
        assert!(matches!(
            read_all(&tar),
            Err(TarError::DanglingExtendedHeader(_))
        ));
        tar.extend([0u8; 1024]);
        assert!(matches!(
            read_all(&tar),
            Err(TarError::DanglingExtendedHeader(_))
        ));
    }

    #[test]
    fn kinds() {
        for (flag, kind) in [
            (b'1', MemberKind::HardLink),
            (b'3', MemberKind::CharDevice),
            (b'4', MemberKind::BlockDevice),
            (b'6', MemberKind::Fifo),
            (b'S', MemberKind::Other(b'S')),
            (b'7', MemberKind::Regular),
        ] {
            let h = header(b"x", flag, 0, b"t");
            assert_eq!(read_all(&h).unwrap()[0].0.kind, kind);
        }
        // pre-POSIX directory: regular type with a trailing slash
        let h = header(b"dir/", 0, 0, b"");
        assert_eq!(read_all(&h).unwrap()[0].0.kind, MemberKind::Directory);
    }

    #[test]
    fn ustar_prefix_joins_path() {
        let mut h = header(b"name", b'0', 0, b"");
        h[345..351].copy_from_slice(b"prefix");
        set_checksum(&mut h);
        assert_eq!(read_all(&h).unwrap()[0].0.path, b"prefix/name");
    }

    /// A [`ChunkRead`] over pieces of a byte string, handing each out as it was cut (at most
    /// `max` at a time), as the base backup's feed does with CopyData payloads.
    struct Pieces(std::collections::VecDeque<Bytes>);

    impl Pieces {
        fn cut(bytes: &[u8], sizes: &[usize]) -> Pieces {
            let mut rest = Bytes::copy_from_slice(bytes);
            let mut pieces = std::collections::VecDeque::new();
            for &size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                pieces.push_back(rest.split_to(size.clamp(1, rest.len())));
            }
            Pieces(pieces)
        }
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(front) = self.0.front_mut() else {
                return Ok(0);
            };
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front.split_to(n));
            if front.is_empty() {
                self.0.pop_front();
            }
            Ok(n)
        }
    }

    impl ChunkRead for Pieces {
        fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
            let Some(front) = self.0.front_mut() else {
                return Ok(Bytes::new());
            };
            if front.len() > max {
                return Ok(front.split_to(max));
            }
            Ok(self.0.pop_front().unwrap_or_default())
        }
    }

    /// Like [`read_all`], taking payload through `read_data_chunk` in pieces of at most `max`.
    fn read_all_chunks<R: ChunkRead>(
        r: &mut TarReader<R>,
        max: usize,
    ) -> Result<Vec<(MemberHeader, Vec<u8>)>, TarError> {
        let mut out = Vec::new();
        while let Some(h) = r.next_member()? {
            let mut data = Vec::new();
            loop {
                let chunk = r.read_data_chunk(max)?;
                if chunk.is_empty() {
                    break;
                }
                assert!(chunk.len() <= max);
                data.extend_from_slice(&chunk);
            }
            out.push((h, data));
        }
        Ok(out)
    }

    #[test]
    fn chunks_are_the_payload_without_copies() {
        let mut tar = member(b"base/1/1259", &[7u8; 5000]);
        tar.extend(member(b"PG_VERSION", b"15\n"));
        tar.extend([0u8; 1024]);
        let mut r = TarReader::new(Pieces::cut(&tar, &[700, 3, 4096]));
        let got = read_all_chunks(&mut r, 1000).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, vec![7u8; 5000]);
        assert_eq!(got[1].1, b"15\n");
        assert_eq!(r.position(), tar.len() as u64);
        // A payload in a single piece comes out as that very buffer.
        let whole = Bytes::from(member(b"f", &[1u8; 512]));
        let payload_at = whole.as_ptr() as usize + BLOCK_SIZE;
        let mut r = TarReader::new(Pieces(
            [whole.slice(..BLOCK_SIZE), whole.slice(BLOCK_SIZE..)].into(),
        ));
        r.next_member().unwrap().unwrap();
        let chunk = r.read_data_chunk(1 << 20).unwrap();
        assert_eq!(chunk.as_ptr() as usize, payload_at);
        assert_eq!(chunk.len(), 512);
        assert!(r.read_data_chunk(1 << 20).unwrap().is_empty());
        // Outside a member's payload there is nothing to read.
        assert!(r.read_data_chunk(10).unwrap().is_empty());
    }

    #[test]
    fn chunk_truncation_and_misbehaving_sources() {
        let tar = member(b"global/pg_control", &[1u8; 8192]);
        let mut r = TarReader::new(Pieces::cut(&tar[..BLOCK_SIZE + 4000], &[1000]));
        match read_all_chunks(&mut r, 512) {
            Err(TarError::TruncatedMember { expected, got, .. }) => {
                assert_eq!((expected, got), (8192, 4000));
            }
            other => panic!("{other:?}"),
        }
        /// Returns more than asked for: the reader must stop, not lose its framing.
        struct Greedy(Pieces);
        impl Read for Greedy {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl ChunkRead for Greedy {
            fn read_chunk(&mut self, _max: usize) -> io::Result<Bytes> {
                self.0.read_chunk(usize::MAX)
            }
        }
        let mut r = TarReader::new(Greedy(Pieces::cut(&tar, &[BLOCK_SIZE, 8192])));
        r.next_member().unwrap().unwrap();
        assert!(matches!(r.read_data_chunk(100), Err(TarError::Io(_))));
        // A plain reader through CopyChunks reads the same archive.
        let mut tar = member(b"a", &[3u8; 3000]);
        tar.extend([0u8; 1024]);
        let mut r = TarReader::new(CopyChunks::new(&tar[..]));
        let got = read_all_chunks(&mut r, 1024).unwrap();
        assert_eq!(got[0].1, vec![3u8; 3000]);
    }

    proptest! {
        #[test]
        fn chunked_reads_match_copied_reads(
            sizes in proptest::collection::vec(1usize..3000, 1..8),
            lens in proptest::collection::vec(0usize..5000, 1..5),
            max in 1usize..9000,
        ) {
            let mut tar = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let data: Vec<u8> = (0..*len).map(|j| (i * 7 + j) as u8).collect();
                tar.extend(member(format!("f{i}").as_bytes(), &data));
            }
            tar.extend([0u8; 1024]);
            let copied = read_all(&tar).unwrap();
            let mut r = TarReader::new(Pieces::cut(&tar, &sizes));
            let chunked = read_all_chunks(&mut r, max).unwrap();
            prop_assert_eq!(copied, chunked);
            prop_assert_eq!(r.position(), tar.len() as u64);
        }

        #[test]
        fn never_panics_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = read_all(&bytes);
        }

        #[test]
        fn never_panics_on_corrupted_archives(
            pos in 0usize..2048, byte in any::<u8>(), cut in 0usize..2100
        ) {
            let mut tar = member(b"a/b", &[5u8; 700]);
            tar.extend([0u8; 1024]);
            let p = pos % tar.len();
            tar[p] = byte;
            let c = cut.min(tar.len());
            let _ = read_all(&tar[..c]);
        }

        #[test]
        fn numbers_never_panic(field in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_number(&field);
        }

        #[test]
        fn pax_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_pax_records(&data, 0);
        }

        #[test]
        fn octal_roundtrip(v in 0u64..0o77777777777) {
            let f = format!("{v:011o}\0");
            prop_assert_eq!(parse_number(f.as_bytes()), Some(v));
        }
    }
}
