//! `--max-rate`: the transfer rate limit in kB/s, parsed and checked as pg_basebackup does; the
//! server applies it (`MAX_RATE` of `BASE_BACKUP`).

use walrelay_protocol::command::{MAX_RATE_MAX_KB, MAX_RATE_MIN_KB};

use crate::error::BackupError;

/// Parses a `--max-rate` value as pg_basebackup does: a positive number of kB/s, optionally
/// followed by `k` (kB/s) or `M` (MB/s), surrounded by optional white space; the result must lie
/// between 32 kB/s and 1 GB/s. Fractions are truncated after scaling (`1.5M` is 1536 kB/s).
pub fn parse_max_rate(arg: &str) -> Result<u32, BackupError> {
    let s = arg.trim_start();
    let num_len = s
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    let value: f64 = s[..num_len]
        .parse()
        .map_err(|_| BackupError::MaxRateSyntax(arg.to_string()))?;
    if value.is_nan() || value <= 0.0 {
        return Err(BackupError::MaxRateNotPositive);
    }
    let rest = s[num_len..].trim();
    let kb = match rest {
        "" | "k" => value,
        "M" => value * 1024.0,
        _ => return Err(BackupError::MaxRateSyntax(arg.to_string())),
    };
    if !(f64::from(MAX_RATE_MIN_KB)..=f64::from(MAX_RATE_MAX_KB)).contains(&kb) {
        return Err(BackupError::MaxRateRange(arg.trim().to_string()));
    }
    // In range, hence finite and below u32::MAX: the truncating cast is exact for the integer part.
    Ok(kb as u32)
}

/// Checks a rate given directly in kB/s.
pub fn validate_max_rate(kb: u32) -> Result<u32, BackupError> {
    if (MAX_RATE_MIN_KB..=MAX_RATE_MAX_KB).contains(&kb) {
        Ok(kb)
    } else {
        Err(BackupError::MaxRateRange(kb.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn max_rate_like_pg_basebackup() {
        assert_eq!(parse_max_rate("32").unwrap(), 32);
        assert_eq!(parse_max_rate("100k").unwrap(), 100);
        assert_eq!(parse_max_rate(" 20 M ").unwrap(), 20 * 1024);
        assert_eq!(parse_max_rate("1.5M").unwrap(), 1536);
        assert_eq!(parse_max_rate("1024M").unwrap(), 1_048_576);
        assert_eq!(parse_max_rate("1048576").unwrap(), 1_048_576);
        assert!(matches!(
            parse_max_rate("31"),
            Err(BackupError::MaxRateRange(_))
        ));
        assert!(matches!(
            parse_max_rate("1025M"),
            Err(BackupError::MaxRateRange(_))
        ));
        assert!(matches!(
            parse_max_rate("0"),
            Err(BackupError::MaxRateNotPositive)
        ));
        assert!(matches!(
            parse_max_rate("-5"),
            Err(BackupError::MaxRateNotPositive)
        ));
        for bad in ["", "k", "abc", "10G", "10 kB", "10MM", "1e"] {
            assert!(
                matches!(parse_max_rate(bad), Err(BackupError::MaxRateSyntax(_))),
                "{bad}"
            );
        }
        let msg = parse_max_rate("8").unwrap_err().to_string();
        assert!(msg.contains("32 kB/s") && msg.contains("1048576"), "{msg}");
        assert!(validate_max_rate(32).is_ok());
        assert!(validate_max_rate(31).is_err());
        assert!(validate_max_rate(MAX_RATE_MAX_KB + 1).is_err());
    }

    proptest! {
        #[test]
        fn max_rate_never_panics(s in ".{0,20}") {
            if let Ok(kb) = parse_max_rate(&s) {
                prop_assert!((MAX_RATE_MIN_KB..=MAX_RATE_MAX_KB).contains(&kb));
            }
        }
    }
}
