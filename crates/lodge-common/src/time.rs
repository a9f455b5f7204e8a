//! The one timestamp format lodge writes: RFC 3339 in UTC with milliseconds
//! (`2026-01-02T03:04:05.678Z`), as hypeman's API returns them. Records on
//! disk, API responses and the monitor's status files all use it, so a
//! reader never has to guess the precision or the zone.

use std::time::SystemTime;

/// Why a timestamp was not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp: {reason}")]
pub struct TimeError {
    input: String,
    reason: String,
}

/// `time` as RFC 3339, UTC, millisecond precision.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The current time as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Parses an RFC 3339 timestamp (any precision, `Z` zone).
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, TimeError> {
    humantime::parse_rfc3339_weak(s).map_err(|e| TimeError {
        input: s.to_owned(),
        reason: e.to_string(),
    })
}

/// `time` as RFC 3339, UTC, microsecond precision (log timestamps).
pub fn rfc3339_micros(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Splits a trailing numeric zone offset (`+HH:MM` or `-HH:MM`) off `s`:
/// what precedes it, whether the zone is ahead of UTC, and the offset.
/// `None` when `s` does not end in one. Safe on any input (client text):
/// it never slices inside a character.
pub fn split_zone_offset(s: &str) -> Option<(&str, bool, std::time::Duration)> {
    let at = s.len().checked_sub(6)?;
    let (head, zone) = (s.get(..at)?, s.get(at..)?.as_bytes());
    let ahead = match zone[0] {
        b'+' => true,
        b'-' => false,
        _ => return None,
    };
    let digit = |i: usize| zone[i].is_ascii_digit().then(|| u64::from(zone[i] - b'0'));
    if zone[3] != b':' {
        return None;
    }
    let hours = digit(1)? * 10 + digit(2)?;
    let minutes = digit(4)? * 10 + digit(5)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((
        head,
        ahead,
        std::time::Duration::from_secs(hours * 3600 + minutes * 60),
    ))
}

/// A `--since`/`--until` value, as docker takes them: an RFC 3339 time
/// (`Z` or a `+HH:MM`/`-HH:MM` offset), Unix seconds (`1700000000.5`), or a
/// duration before `now` (`10m`, `1h30m`, `90s`).
pub fn parse_point_in_time(s: &str, now: SystemTime) -> Result<SystemTime, TimeError> {
    let s = s.trim();
    let fail = |reason: &str| TimeError {
        input: s.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(ago) = humantime::parse_duration(s) {
        return now
            .checked_sub(ago)
            .ok_or_else(|| fail("too far in the past"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs));
        }
        return Err(fail("negative Unix time"));
    }
    if let Some((head, ahead, offset)) = split_zone_offset(s) {
        let local = parse_rfc3339(&format!("{head}Z"))?;
        // Local time = UTC + offset, so UTC = local - offset.
        let utc = if ahead {
            local.checked_sub(offset)
        } else {
            local.checked_add(offset)
        };
        return utc.ok_or_else(|| fail("out of range"));
    }
    parse_rfc3339(s).map_err(|_| fail("expected RFC 3339, Unix seconds or a duration like 10m"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Client text: multibyte characters where an offset would be must
    /// neither panic nor parse (the API fuzzer found the panic).
    #[test]
    fn zone_offsets_of_any_text() {
        assert_eq!(
            split_zone_offset("2024-01-01T10:00:00+02:30"),
            Some(("2024-01-01T10:00:00", true, Duration::from_secs(9000)))
        );
        assert_eq!(
            split_zone_offset("x-01:00"),
            Some(("x", false, Duration::from_secs(3600)))
        );
        for text in [
            "",
            "+02:00",
            "ééééé",
            "2024é+02:0é",
            "a\u{10FFFF}:00",
            "++1:00x",
            "2024-01-01T10:00:00+24:00",
        ] {
            let _ = split_zone_offset(text);
        }
        assert_eq!(split_zone_offset("abc+1é:00"), None);
        assert_eq!(split_zone_offset("2024-01-01T10:00:00+24:00"), None);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for text in [
            "éééa",
            "ééééééé",
            "x\u{1F600}\u{1F600}",
            "2024-01-01T00:00:0é",
        ] {
            assert!(parse_point_in_time(text, now).is_err(), "{text}");
        }
    }

    #[test]
    fn points_in_time() -> Result<(), TimeError> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_point_in_time("10m", now)?,
            now - Duration::from_secs(600)
        );
        assert_eq!(
            parse_point_in_time("1h30m", now)?,
            now - Duration::from_secs(5400)
        );
        assert_eq!(
            parse_point_in_time("1700000000.5", now)?,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
        );
        let utc = parse_point_in_time("2023-11-14T22:13:20Z", now)?;
        assert_eq!(utc, now);
        assert_eq!(parse_point_in_time("2023-11-15T00:13:20+02:00", now)?, now);
        assert_eq!(parse_point_in_time("2023-11-14T21:13:20-01:00", now)?, now);
        assert_eq!(
            parse_point_in_time("2023-11-14T22:13:20.25Z", now)?,
            now + Duration::from_millis(250)
        );
        assert!(parse_point_in_time("yesterday", now).is_err());
        assert!(parse_point_in_time("-5", now).is_err());
        assert_eq!(rfc3339_micros(now), "2023-11-14T22:13:20.000000Z");
        Ok(())
    }

    #[test]
    fn formats_utc_millis() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(rfc3339(t), "2026-01-02T03:04:05.678Z");
    }

    #[test]
    fn round_trips_at_millisecond_precision() -> Result<(), TimeError> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(parse_rfc3339(&rfc3339(t))?, t);
        assert!(parse_rfc3339(&now_rfc3339()).is_ok());
        assert!(parse_rfc3339("yesterday").is_err());
        Ok(())
    }
}
