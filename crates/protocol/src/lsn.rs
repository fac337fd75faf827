//! Log sequence numbers: byte positions in the WAL stream.
//!
//! PostgreSQL prints an `XLogRecPtr` as two upper-case hex halves, `X/X` (`16/B374D848`); that is the
//! only text form accepted here, as in `pg_lsn`'s input function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A WAL position (`XLogRecPtr`). `Lsn::INVALID` (0/0) means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid LSN {input:?}: expected two hex numbers separated by '/', like 0/16B3748")]
pub struct ParseLsnError {
    input: String,
}

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, wal_segment_size: u32) -> u64 {
        self.0 % u64::from(wal_segment_size)
    }

    /// Rounds down to the start of the segment holding this position.
    pub fn segment_start(self, wal_segment_size: u32) -> Lsn {
        Lsn(self.0 - self.segment_offset(wal_segment_size))
    }

    /// Offset inside the WAL page (`XLOG_BLCKSZ`) holding this position.
    pub fn page_offset(self, page_size: u32) -> u64 {
        self.0 % u64::from(page_size)
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(p, 16).ok()
            }
        };
        let hi = half(hi).ok_or_else(err)?;
        let lo = half(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_valid() {
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn(0)));
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>(), Ok(Lsn(u64::MAX)));
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "/",
            "0",
            "0/",
            "/0",
            "0/0/0",
            "G/0",
            "100000000/0",
            "0/100000000",
            " 0/0",
            "0/0 ",
            "+1/0",
            "-1/0",
            "0x1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_maths() {
        let seg = 16 * 1024 * 1024;
        let lsn = Lsn(0x1_0300_0028);
        assert_eq!(lsn.segment_offset(seg), 0x28);
        assert_eq!(lsn.segment_start(seg), Lsn(0x1_0300_0000));
    }

    proptest! {
        #[test]
        fn roundtrip(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Lsn>();
        }
    }
}
