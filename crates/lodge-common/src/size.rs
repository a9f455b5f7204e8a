//! Byte sizes as operators type them: `65536`, `64K`, `50MB`, `1GiB`, `512 MB`.
//!
//! The one parser behind every size lodge accepts: `lodge run --memory` and
//! the API's `size`/`overlay_size`, `lodge supervise --max-size` and
//! `LODGE_LOG_MAX_SIZE`.
//!
//! **Units are binary, always.** `K`, `KB` and `KiB` all mean 1024 bytes;
//! `M`/`MB`/`MiB` mean 1024², and so on up to `T`. This is what docker does
//! for memory and disk sizes (go-units' `RAMInBytes`) and what hypeman does
//! for an instance's `size`/`overlay_size` (it parses them with a datasize
//! library whose `MB` is 1024²), so `--memory 512MB` means the same in lodge,
//! hypeman and docker. Lodge used to read `50MB` as 50,000,000 bytes for log
//! sizes and 52,428,800 for memory; it is 52,428,800 everywhere now.
//!
//! Grammar: optional surrounding whitespace, a whole number, optional
//! whitespace, an optional unit (`B`, `K`, `KB`, `KiB`, `M`, … `TiB`,
//! case-insensitive). Fractions and signs are refused, overflow is an error
//! and never wraps.
//!
//! Printing: [`ByteSize`]'s `Display` uses the IEC spelling (`64KiB`), which
//! no reader can misread; [`format_hypeman`] prints hypeman's spelling
//! (`1GB`) for API responses. Both parse back to the same number.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from a human-written size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The string was empty (or only whitespace).
    #[error("empty size")]
    Empty,
    /// The string started with a minus sign.
    #[error("size must not be negative")]
    Negative,
    /// No digits before the unit, or a fraction.
    #[error("expected a whole number of bytes, optionally followed by a unit (e.g. 512MB)")]
    NotANumber,
    /// The unit is not one we know.
    #[error("unknown unit {0:?} (use B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB; all are powers of 1024)")]
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

/// Power of 1024 for a unit suffix (already lowercased), or `None`.
fn unit_shift(unit: &str) -> Option<u32> {
    Some(match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        if s.starts_with('-') {
            return Err(SizeError::Negative);
        }
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, rest) = s.split_at(digits_end);
        if digits.is_empty() || rest.starts_with('.') || rest.starts_with(',') {
            return Err(SizeError::NotANumber);
        }
        let unit = rest.trim_start();
        let shift = unit_shift(&unit.to_ascii_lowercase())
            .ok_or_else(|| SizeError::UnknownUnit(unit.to_owned()))?;
        // Only ASCII digits remain, so the sole possible failure is overflow.
        let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or(SizeError::Overflow)
    }
}

/// Parses a size; the same as `s.parse::<ByteSize>()`, as a plain number.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    s.parse::<ByteSize>().map(ByteSize::as_u64)
}

/// Largest unit of `units` that divides `bytes` exactly, as `(count, name)`.
fn exact_unit(bytes: u64, units: [&'static str; 4]) -> Option<(u64, &'static str)> {
    const SHIFTS: [u32; 4] = [40, 30, 20, 10];
    SHIFTS.iter().zip(units).find_map(|(&shift, name)| {
        let unit = 1u64 << shift;
        (bytes >= unit && bytes & (unit - 1) == 0).then_some((bytes >> shift, name))
    })
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the size exactly (`64KiB`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match exact_unit(self.0, ["TiB", "GiB", "MiB", "KiB"]) {
            Some((n, unit)) => write!(f, "{n}{unit}"),
            None => write!(f, "{}", self.0),
        }
    }
}

/// `1073741824` → `1GB`, the way hypeman prints sizes (binary units, `B` for
/// sizes no unit divides).
pub fn format_hypeman(bytes: u64) -> String {
    match exact_unit(bytes, ["TB", "GB", "MB", "KB"]) {
        Some((n, unit)) => format!("{n}{unit}"),
        None => format!("{bytes}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, SizeError> {
        parse_size(s)
    }

    #[test]
    fn plain_bytes() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("12B"), Ok(12));
        assert_eq!(parse("4096"), Ok(4096));
    }

    #[test]
    fn every_spelling_of_a_unit_is_binary() {
        for (spellings, shift) in [
            (["k", "K", "kb", "KB", "KiB", "kib"], 10),
            (["m", "M", "mb", "MB", "MiB", "mib"], 20),
            (["g", "G", "gb", "GB", "GiB", "gib"], 30),
            (["t", "T", "tb", "TB", "TiB", "tib"], 40),
        ] {
            for unit in spellings {
                assert_eq!(parse(&format!("3{unit}")), Ok(3u64 << shift), "3{unit}");
            }
        }
    }

    #[test]
    fn fifty_megabytes_is_binary() {
        assert_eq!(parse("50MB"), Ok(52_428_800));
        assert_eq!(parse("50MB"), parse("50MiB"));
        assert_eq!(parse("50MB"), parse("50M"));
        assert_eq!(parse("1GB"), Ok(1 << 30));
        assert_eq!(parse("512MB"), Ok(512 << 20));
        assert_eq!(parse("512m"), Ok(512 << 20));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
    }

    #[test]
    fn whitespace_around_and_before_the_unit() {
        assert_eq!(parse(" 5"), Ok(5));
        assert_eq!(parse("512 MB"), Ok(512 << 20));
        assert_eq!(parse("\t1G\n"), Ok(1 << 30));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(SizeError::Empty));
        assert_eq!(parse("   "), Err(SizeError::Empty));
        assert_eq!(parse("-5"), Err(SizeError::Negative));
        assert_eq!(parse("12XB"), Err(SizeError::UnknownUnit("XB".into())));
        assert_eq!(parse("KiB"), Err(SizeError::NotANumber));
        assert_eq!(parse("GB"), Err(SizeError::NotANumber));
        assert_eq!(parse("1.5G"), Err(SizeError::NotANumber));
        assert_eq!(parse("1.5GB"), Err(SizeError::NotANumber));
        assert_eq!(parse("1 G B"), Err(SizeError::UnknownUnit("G B".into())));
        assert_eq!(parse("+5"), Err(SizeError::NotANumber));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse("18446744073709551616"), Err(SizeError::Overflow));
        assert_eq!(parse("17179869184GiB"), Err(SizeError::Overflow));
        assert_eq!(parse("99999999999TB"), Err(SizeError::Overflow));
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

    #[test]
    fn hypeman_format_round_trips() {
        assert_eq!(format_hypeman(1 << 30), "1GB");
        assert_eq!(format_hypeman(512 << 20), "512MB");
        assert_eq!(format_hypeman(1536), "1536B");
        assert_eq!(format_hypeman(1000), "1000B");
        assert_eq!(format_hypeman(0), "0B");
        for bytes in [1u64 << 30, 3 << 20, 7 << 10, 12345] {
            assert_eq!(parse(&format_hypeman(bytes)), Ok(bytes));
        }
    }
}
