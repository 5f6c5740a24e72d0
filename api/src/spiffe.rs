//! SPIFFE IDs of marbles (contract §3).

/// Default SPIFFE trust domain when the manifest sets none.
pub const DEFAULT_TRUST_DOMAIN: &str = "quarry.local";

/// `spiffe://<trust-domain>/marble/<marble-type>/<uuid>`.
pub fn marble_id(trust_domain: &str, marble_type: &str, uuid: &uuid::Uuid) -> String {
    format!("spiffe://{trust_domain}/marble/{marble_type}/{uuid}")
}

/// Why `segment` cannot be one path segment of a SPIFFE ID, if it cannot: the SPIFFE ID
/// standard allows only ASCII letters, digits, `.`, `-` and `_`, and neither `.` nor `..`
/// (there is no percent-encoding, so a marble name is used as it is).
pub fn path_segment_error(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return Some("is empty".to_string());
    }
    if segment == "." || segment == ".." {
        return Some(format!(
            "{segment:?} is not allowed as a SPIFFE path segment"
        ));
    }
    let bad = segment
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))?;
    Some(format!(
        "character {:?} at byte {} is not allowed in a SPIFFE ID path segment (letters, digits, '.', '-', '_')",
        bad.1, bad.0
    ))
}

/// Splits a marble SPIFFE ID into (trust domain, marble type, uuid).
pub fn parse_marble_id(id: &str) -> Option<(String, String, uuid::Uuid)> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let domain = parts.next()?;
    if parts.next()? != "marble" {
        return None;
    }
    let marble_type = parts.next()?;
    let uuid = uuid::Uuid::parse_str(parts.next()?).ok()?;
    if parts.next().is_some() || domain.is_empty() || marble_type.is_empty() {
        return None;
    }
    Some((domain.to_string(), marble_type.to_string(), uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_follow_the_spiffe_id_rules() {
        for ok in ["web", "backend_first", "ocm-signer.v2", "A9", "..."] {
            assert_eq!(path_segment_error(ok), None, "{ok}");
        }
        let refused = [
            ("", "empty"),
            (".", "not allowed"),
            ("..", "not allowed"),
            ("<MarbleName>", "'<' at byte 0"),
            ("web api", "' ' at byte 3"),
            ("a/b", "'/' at byte 1"),
            ("caf\u{e9}", "at byte 3"),
            ("50%", "'%' at byte 2"),
        ];
        for (name, says) in refused {
            let err = path_segment_error(name).unwrap_or_default();
            assert!(err.contains(says), "{name:?}: {err}");
        }
    }

    #[test]
    fn marble_id_round_trips() {
        let u = uuid::Uuid::new_v4();
        let id = marble_id("quarry.local", "web", &u);
        assert_eq!(
            parse_marble_id(&id),
            Some(("quarry.local".into(), "web".into(), u))
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "http://quarry.local/marble/web/x",
            "spiffe://quarry.local/other/web/00000000-0000-0000-0000-000000000000",
            "spiffe://quarry.local/marble/web",
            "spiffe://quarry.local/marble/web/not-a-uuid",
            "spiffe:///marble/web/00000000-0000-0000-0000-000000000000",
        ] {
            assert_eq!(parse_marble_id(bad), None, "{bad}");
        }
    }
}
