//! Compression of a backup's objects (tar streams and WAL), streaming both ways.

use std::io::{self, Read, Write};
use std::str::FromStr;

/// How a backup's objects are compressed (`--compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    None,
    Gzip,
    Lz4,
    #[default]
    Zstd,
}

/// zstd level: fast, with a good ratio on data files.
const ZSTD_LEVEL: i32 = 3;

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// The file name suffix (`""` for none).
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip => ".gz",
            Codec::Lz4 => ".lz4",
            Codec::Zstd => ".zst",
        }
    }

    /// A writer compressing into `out`; [`Encoder::finish`] ends the stream and returns `out`.
    pub fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Codec::None => Encoder::None(out),
            Codec::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
            Codec::Lz4 => Encoder::Lz4(lz4_flex::frame::FrameEncoder::new(out)),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                // a damaged object is caught by the frame's own checksum, too
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// A reader decompressing `input`.
    pub fn decoder<'a, R: Read + Send + 'a>(
        self,
        input: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Codec::None => Box::new(input),
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }
}

impl FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Codec::None),
            "gzip" | "gz" => Ok(Codec::Gzip),
            "lz4" => Ok(Codec::Lz4),
            "zstd" | "zst" => Ok(Codec::Zstd),
            _ => Err(format!(
                "invalid compression {s:?}: use zstd, lz4, gzip or none"
            )),
        }
    }
}

/// A compressing writer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(io::Error::other),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Lz4(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [Codec::None, Codec::Gzip, Codec::Lz4, Codec::Zstd] {
            let mut e = codec.encoder(Vec::new()).unwrap();
            e.write_all(&data).unwrap();
            let packed = e.finish().unwrap();
            let mut back = Vec::new();
            codec
                .decoder(&packed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{}", codec.name());
            assert_eq!(codec.name().parse::<Codec>().unwrap(), codec);
        }
        assert!("xz".parse::<Codec>().is_err());
    }

    #[test]
    fn damaged_zstd_is_an_error() {
        let data = vec![7u8; 100_000];
        let mut e = Codec::Zstd.encoder(Vec::new()).unwrap();
        e.write_all(&data).unwrap();
        let mut packed = e.finish().unwrap();
        let n = packed.len();
        packed[n - 2] ^= 0xff; // the checksum at the end
        let mut back = Vec::new();
        assert!(Codec::Zstd
            .decoder(&packed[..])
            .unwrap()
            .read_to_end(&mut back)
            .is_err());
    }
}
