//! Bandwidth limits as hypeman's API spells them (`bandwidth_download`,
//! `bandwidth_upload`), held as bits per second for `tc`.
//!
//! hypeman's grammar, which lodge accepts unchanged so its clients' strings
//! mean the same thing here:
//! - a string ending in `bps` (any case) is a bit rate with an optional
//!   decimal `k`/`m`/`g` prefix: `"1Gbps"`, `"100Mbps"`, `"1000kbps"`;
//!   note that this makes `"125MBps"` a bit rate too, as in hypeman;
//! - anything else is a byte rate, with an optional `/s` or `ps` suffix and a
//!   *binary* size unit (`B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`,
//!   `T`/`TB`/`TiB`): `"125MB/s"` is 125 MiB/s, `"1GB"` is 1 GiB/s, a bare
//!   number is bytes per second.
//!
//! Numbers are non-negative integers as in hypeman; zero is refused (hypeman
//! treats an empty string as "no limit", which callers express with `None`).

use std::fmt;
use std::str::FromStr;

use crate::error::NetError;

/// A rate in bits per second (always > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth(u64);

impl Bandwidth {
    pub fn from_bits_per_sec(bits: u64) -> Option<Self> {
        (bits > 0).then_some(Bandwidth(bits))
    }

    pub fn bits_per_sec(&self) -> u64 {
        self.0
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.0 / 8
    }

    /// The rate in `tc`'s syntax, in the largest unit that is exact.
    pub fn tc_rate(&self) -> String {
        let b = self.0;
        for (div, unit) in [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ] {
            if b >= div && b.is_multiple_of(div) {
                return format!("{}{unit}", b / div);
            }
        }
        format!("{b}bit")
    }
}

impl fmt::Display for Bandwidth {
    /// Bit-rate form that parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (div, unit) in [
            (1_000_000_000, "Gbps"),
            (1_000_000, "Mbps"),
            (1_000, "kbps"),
        ] {
            if b >= div && b.is_multiple_of(div) {
                return write!(f, "{}{unit}", b / div);
            }
        }
        write!(f, "{b}bps")
    }
}

impl FromStr for Bandwidth {
    type Err = NetError;

    fn from_str(input: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::InvalidBandwidth {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let bits = if let Some(num) = s.strip_suffix("bps") {
            let num = num.trim_end();
            let (num, mult) = match num.as_bytes().last() {
                Some(b'g') => (&num[..num.len() - 1], 1_000_000_000u64),
                Some(b'm') => (&num[..num.len() - 1], 1_000_000),
                Some(b'k') => (&num[..num.len() - 1], 1_000),
                _ => (num, 1),
            };
            parse_count(num.trim_end())
                .ok_or_else(|| bad("expected a whole number before the unit"))?
                .checked_mul(mult)
                .ok_or_else(|| bad("too large"))?
        } else {
            let s = s
                .strip_suffix("/s")
                .or_else(|| s.strip_suffix("ps"))
                .unwrap_or(&s);
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let count = parse_count(num).ok_or_else(|| bad("expected a whole number"))?;
            let unit_bytes: u64 = match unit.trim() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => return Err(bad("unknown unit")),
            };
            count
                .checked_mul(unit_bytes)
                .and_then(|bytes| bytes.checked_mul(8))
                .ok_or_else(|| bad("too large"))?
        };
        Bandwidth::from_bits_per_sec(bits).ok_or_else(|| bad("must be greater than zero"))
    }
}

fn parse_count(num: &str) -> Option<u64> {
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> u64 {
        s.parse::<Bandwidth>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .bits_per_sec()
    }

    #[test]
    fn hypeman_examples() {
        // The values hypeman's own tests expect, converted from its bytes/s.
        assert_eq!(bits("1Gbps"), 125_000_000 * 8);
        assert_eq!(bits("10Gbps"), 1_250_000_000 * 8);
        assert_eq!(bits("100Mbps"), 12_500_000 * 8);
        assert_eq!(bits("1000kbps"), 125_000 * 8);
        assert_eq!(bits("125MB"), 125 * 1024 * 1024 * 8);
        assert_eq!(bits("1GB"), 1024 * 1024 * 1024 * 8);
        assert_eq!(bits("125MB/s"), 125 * 1024 * 1024 * 8);
        assert!("invalid".parse::<Bandwidth>().is_err());
    }

    #[test]
    fn more_forms() {
        assert_eq!(bits("10mbps"), 10_000_000);
        assert_eq!(bits(" 10 Mbps "), 10_000_000);
        assert_eq!(bits("500bps"), 500);
        assert_eq!(bits("125MBps"), 125_000_000); // hypeman: "bps" wins
        assert_eq!(bits("64KiB/s"), 64 * 1024 * 8);
        assert_eq!(bits("2k"), 2048 * 8);
        assert_eq!(bits("1000"), 8000);
        assert_eq!(bits("1000B/s"), 8000);
        for bad in [
            "",
            "0Mbps",
            "0",
            "-1Mbps",
            "1.5Gbps",
            "Mbps",
            "10 furlongs",
            "10xbps",
            "1e3",
            "99999999999999999999Gbps",
            "99999999999TB",
        ] {
            assert!(
                matches!(
                    bad.parse::<Bandwidth>(),
                    Err(NetError::InvalidBandwidth { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tc_and_display() {
        let b: Bandwidth = "2500Mbps".parse().expect("parse");
        assert_eq!(b.tc_rate(), "2500mbit");
        assert_eq!(b.to_string(), "2500Mbps");
        let b: Bandwidth = "1Gbps".parse().expect("parse");
        assert_eq!(b.tc_rate(), "1gbit");
        let b: Bandwidth = "1KB/s".parse().expect("parse");
        assert_eq!(b.tc_rate(), "8192bit");
        assert_eq!(b.to_string().parse::<Bandwidth>().expect("round trip"), b);
    }
}
