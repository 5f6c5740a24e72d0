//! Verification time helpers: `SystemTime` to Unix seconds and RFC 3339 text.
use std::time::{SystemTime, UNIX_EPOCH};

use crate::VerifyError;

/// Unix seconds of `now`; times before 1970 are refused.
pub(crate) fn unix_secs(now: SystemTime) -> Result<u64, VerifyError> {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|e| VerifyError::Expired {
            what: "the verification time (before 1970)".into(),
            now: -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            not_before: Some(0),
            not_after: None,
        })
}

/// RFC 3339 text of Unix seconds (UTC), or the number itself if out of range.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Parses a verification time given by an operator: Unix seconds or RFC 3339.
pub fn parse_verification_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(UNIX_EPOCH + std::time::Duration::from_secs(secs));
    }
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                format!("{text:?} is neither Unix seconds nor RFC 3339 (2026-11-26T12:00:00Z): {e}")
            })?;
    let secs = u64::try_from(t.unix_timestamp()).map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn verification_times_parse_as_unix_seconds_or_rfc3339_and_refuse_anything_else() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1751328000);
        assert_eq!(parse_verification_time("1751328000"), Ok(at));
        assert_eq!(parse_verification_time("2025-07-01T00:00:00Z"), Ok(at));
        assert!(parse_verification_time("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("before 1970"));
        assert!(parse_verification_time("yesterday")
            .unwrap_err()
            .contains("neither Unix seconds nor RFC 3339"));
    }
}
