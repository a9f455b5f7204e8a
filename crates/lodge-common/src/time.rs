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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
