//! Wall-clock time as the coordinator records it: Unix seconds in log events and records,
//! RFC 3339 in messages. A leaf module, so any other module can read the time without
//! depending on the transparency log or the TCB monitor.

/// Unix seconds now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 (`2026-10-20T00:00:00Z`), for messages: the attestation
/// crate's formatting, so refusals and verifier errors write times alike.
pub fn rfc3339(unix: u64) -> String {
    quarry_attestation::timefmt::rfc3339(i64::try_from(unix).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_and_shows_unrepresentable_times_as_numbers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_792_454_400), "2026-10-20T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), format!("@{}", i64::MAX));
        assert!(now_unix() > 1_792_454_400);
    }
}
