//! Verification time helpers: `SystemTime` to Unix seconds and RFC 3339 text.
use std::time::{SystemTime, UNIX_EPOCH};

use crate::VerifyError;

/// Unix seconds of `now`; times before 1970 are refused.
pub(crate) fn unix_secs(now: SystemTime) -> Result<u64, VerifyError> {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| VerifyError::Expired("the verification time is before 1970".into()))
}

/// RFC 3339 text of Unix seconds (UTC), or the number itself if out of range.
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}
