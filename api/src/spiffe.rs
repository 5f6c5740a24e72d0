//! SPIFFE IDs of marbles (contract §3).

/// Default SPIFFE trust domain when the manifest sets none.
pub const DEFAULT_TRUST_DOMAIN: &str = "quarry.local";

/// `spiffe://<trust-domain>/marble/<marble-type>/<uuid>`.
pub fn marble_id(trust_domain: &str, marble_type: &str, uuid: &uuid::Uuid) -> String {
    format!("spiffe://{trust_domain}/marble/{marble_type}/{uuid}")
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
