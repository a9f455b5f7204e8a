//! Byte sizes as operators type them: `65536`, `64KiB`, `64K`, `50MB`, `1GiB`.
//!
//! One parser for every size flag lodge takes (`--max-size` here, `--memory`
//! for instances), so the accepted spellings never drift apart. Binary units
//! (`KiB`, and the docker/coreutils shorthand `K`) are powers of 1024; SI
//! units (`KB`, `MB`, ...) are powers of 1000. Units are case-insensitive;
//! only whole numbers are accepted, and overflow is an error, never a wrap.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from a human-written size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The string was empty.
    #[error("empty size")]
    Empty,
    /// The string started with a minus sign.
    #[error("size must not be negative")]
    Negative,
    /// No digits before the unit, or a fraction.
    #[error("expected a whole number of bytes, optionally followed by a unit (e.g. 64KiB)")]
    NotANumber,
    /// The unit is not one we know.
    #[error("unknown unit {0:?} (use B, K/KiB, KB, M/MiB, MB, G/GiB, GB, T/TiB or TB)")]
    UnknownUnit(String),
    /// The value does not fit in 64 bits.
    #[error("size is too large")]
    Overflow,
}

impl ByteSize {
    /// The size in bytes.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Multiplier for a unit suffix (already lowercased), or `None` if unknown.
fn unit_factor(unit: &str) -> Option<u64> {
    const KI: u64 = 1 << 10;
    const K: u64 = 1000;
    Some(match unit {
        "" | "b" => 1,
        "k" | "kib" => KI,
        "m" | "mib" => KI.pow(2),
        "g" | "gib" => KI.pow(3),
        "t" | "tib" => KI.pow(4),
        "kb" => K,
        "mb" => K.pow(2),
        "gb" => K.pow(3),
        "tb" => K.pow(4),
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        if s.starts_with('-') {
            return Err(SizeError::Negative);
        }
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(digits_end);
        if digits.is_empty() || unit.starts_with('.') || unit.starts_with(',') {
            return Err(SizeError::NotANumber);
        }
        let factor = unit_factor(&unit.to_ascii_lowercase())
            .ok_or_else(|| SizeError::UnknownUnit(unit.to_owned()))?;
        // Only ASCII digits remain, so the sole possible failure is overflow.
        let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or(SizeError::Overflow)
    }
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the size exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
        for (name, shift) in UNITS {
            let unit = 1u64 << shift;
            if self.0 >= unit && self.0 & (unit - 1) == 0 {
                return write!(f, "{}{name}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, SizeError> {
        s.parse::<ByteSize>().map(ByteSize::as_u64)
    }

    #[test]
    fn plain_bytes() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("12B"), Ok(12));
    }

    #[test]
    fn binary_units() {
        assert_eq!(parse("64KiB"), Ok(64 * 1024));
        assert_eq!(parse("64K"), Ok(64 * 1024));
        assert_eq!(parse("64k"), Ok(64 * 1024));
        assert_eq!(parse("50MiB"), Ok(50 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("2T"), Ok(2 << 40));
    }

    #[test]
    fn decimal_units() {
        assert_eq!(parse("50MB"), Ok(50_000_000));
        assert_eq!(parse("1kb"), Ok(1000));
        assert_eq!(parse("3GB"), Ok(3_000_000_000));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(SizeError::Empty));
        assert_eq!(parse("-5"), Err(SizeError::Negative));
        assert_eq!(parse("12XB"), Err(SizeError::UnknownUnit("XB".into())));
        assert_eq!(parse("KiB"), Err(SizeError::NotANumber));
        assert_eq!(parse("1.5G"), Err(SizeError::NotANumber));
        assert_eq!(parse(" 5"), Err(SizeError::NotANumber));
        assert_eq!(parse("5 K"), Err(SizeError::UnknownUnit(" K".into())));
        assert_eq!(parse("+5"), Err(SizeError::NotANumber));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse("18446744073709551616"), Err(SizeError::Overflow));
        assert_eq!(parse("17179869184GiB"), Err(SizeError::Overflow));
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn display_round_trips() {
        for s in ["64KiB", "50MiB", "1GiB", "65537", "3TiB"] {
            let size: ByteSize = s.parse().expect("valid size");
            assert_eq!(size.to_string(), s);
        }
        assert_eq!(ByteSize(65536).to_string(), "64KiB");
    }
}
