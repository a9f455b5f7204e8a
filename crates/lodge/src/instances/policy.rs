//! The lifecycle policies' own types and the value syntax they are
//! written in: Go durations (`1h30m`), RFC 3339 times with an offset, the
//! restart policy and its status as the instance record keeps them. A leaf
//! module, so the record (`store`) and the API can name these types without
//! depending on the supervisor that enforces them (`policies`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A Go duration (`300ms`, `1.5h`, `2h45m`, `0s`), as hypeman takes them.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    parse_go_duration_at_most(s, 1e12).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A Go duration (`300ms`, `30s`, `2m`, `1m30s`, `1h`): one or more
/// decimal numbers, each with a unit of ns, us (µs), ms, s, m or h; at
/// most `max_secs`. The one parser of hypeman's duration strings.
pub fn parse_go_duration_at_most(text: &str, max_secs: f64) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit after {rest:?}"))?;
        if num_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > max_secs {
        return Err("duration too long".into());
    }
    Ok(Duration::from_secs_f64(total))
}

/// `d` in Go's form, as the API shows policies back (`1m30s`, `500ms`).
pub fn format_go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// An RFC 3339 time with `Z` or a numeric offset (`+02:00`), as hypeman's
/// clients send `expires_at`.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let bad = |why: String| format!("invalid time {s:?}: {why}");
    let t = s.trim();
    // A numeric offset at the end: ±HH:MM.
    let (base, offset) = match lodge_common::time::split_zone_offset(t) {
        Some((base, ahead, secs)) if base.contains('T') => (base, Some((ahead, secs))),
        _ => (t, None),
    };
    let utc = lodge_common::time::parse_rfc3339(base).map_err(|e| bad(e.to_string()))?;
    Ok(match offset {
        // Local time ahead of UTC: UTC is earlier.
        Some((true, d)) => utc - d,
        Some((false, d)) => utc + d,
        None => utc,
    })
}

/// hypeman's restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartMode {
    Never,
    Always,
    OnFailure,
}

/// An instance's restart policy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub policy: RestartMode,
    /// Delay before each attempt.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Consecutive attempts before giving up; 0 is unlimited.
    pub max_attempts: u32,
    /// Running this long resets the count; zero never resets it.
    #[serde(with = "millis")]
    pub stable_after: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Why automatic restarts stopped (hypeman's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    ManualStop,
    MaxAttemptsExceeded,
}

/// Where the restart policy stands, persisted with the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<Blocked>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        for (s, want) in [
            ("0s", 0.0),
            ("0", 0.0),
            ("90s", 90.0),
            ("5m", 300.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("300ms", 0.3),
            ("2h45m10s", 9910.0),
        ] {
            let d = parse_go_duration(s).unwrap_or_else(|e| panic!("{e}"));
            assert!((d.as_secs_f64() - want).abs() < 1e-9, "{s}: {d:?}");
        }
        for bad in ["", "5", "-1s", "1d", "h", "1h-5m", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(61)), "1m1s");
    }

    #[test]
    fn times_take_zulu_or_an_offset() {
        let z = parse_time("2026-11-30T12:00:00Z").expect("z");
        assert_eq!(parse_time("2026-11-30T14:00:00+02:00"), Ok(z));
        assert_eq!(parse_time("2026-11-30T11:30:00-00:30"), Ok(z));
        assert_eq!(parse_time("2026-11-30T12:00:00.000+00:00"), Ok(z));
        assert!(parse_time("tomorrow").is_err());
    }
}
