//! Tar archives member by member, including members no well-behaved writer would produce (absolute
//! paths, `..`, links out of the tree, devices): the archives of fake base backups and the
//! extractor's hostile fixtures.

/// A tar block.
pub const BLOCK: usize = 512;

/// A ustar header block as `tarCreateHeader` writes it, with any name, type and link, checksummed.
pub fn raw_header(name: &[u8], flag: u8, size: u64, link: &[u8], mode: u32) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14707054430\0");
    h[156] = flag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Builds archives member by member.
#[derive(Default)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn new() -> Self {
        Tar(Vec::new())
    }
    pub fn file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        self.0.extend(raw_header(
            name.as_bytes(),
            b'0',
            data.len() as u64,
            b"",
            mode,
        ));
        self.0.extend(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn dir(mut self, name: &str, mode: u32) -> Self {
        self.0
            .extend(raw_header(name.as_bytes(), b'5', 0, b"", mode));
        self
    }
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.0.extend(raw_header(
            name.as_bytes(),
            b'2',
            0,
            target.as_bytes(),
            0o777,
        ));
        self
    }
    pub fn member(mut self, name: &str, flag: u8, link: &str) -> Self {
        self.0
            .extend(raw_header(name.as_bytes(), flag, 0, link.as_bytes(), 0o600));
        self
    }
    /// PostgreSQL 15+ ends archives with two zero blocks.
    pub fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 2 * BLOCK]);
        self.0
    }
    /// Servers before 15 just stop.
    pub fn unterminated(self) -> Vec<u8> {
        self.0
    }
}
