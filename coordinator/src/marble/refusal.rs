//! Why the coordinator refused a marble (activation and renewal): one variant per reason, a
//! stable [`Refusal::code`] that the API body, the log line and the metric label all carry,
//! and the compared fields where the refusal compares values.
use quarry_api::http::FieldMismatch;

/// A refused activation or renewal. The codes are part of the API (docs/OPERATIONS.md,
/// "Refusal codes"): never rename one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The marble type is not in the manifest (any more).
    UnknownMarbleType {
        /// The requested type.
        marble_type: String,
        /// True for a renewal of a type the manifest no longer has.
        removed: bool,
    },
    /// The UUID or certificate was revoked.
    Revoked(String),
    /// The activation nonce is unknown, used, expired or bound to another TLS key.
    Nonce(crate::state::nonces::NonceError),
    /// A requested DNS name is not allowed by the marble's `DNSNames`.
    DnsName {
        /// The requested name.
        name: String,
        /// The marble type.
        marble_type: String,
    },
    /// The evidence did not verify (signature, chain, collateral, TCB, time, simulation).
    Evidence(quarry_attestation::VerifyError),
    /// The evidence is not bound to the connection's TLS key (or nonce).
    KeyBinding(quarry_attestation::VerifyError),
    /// The verified claims do not match the marble's package.
    PolicyMismatch {
        /// The package name.
        package: String,
        /// Every mismatching field.
        fields: Vec<FieldMismatch>,
    },
    /// The marble type's `MaxActivations` budget is spent.
    MaxActivations {
        /// The marble type.
        marble_type: String,
        /// The budget.
        max: u64,
    },
    /// The renewing certificate is not a marble leaf of this deployment.
    Certificate(String),
    /// The TCB monitor found the marble's platform out of its package's policy and the
    /// manifest's `Config.TCBChangeAction` refuses its renewals.
    TcbOutOfPolicy {
        /// The status the monitor found (`None`: never verified).
        status: Option<quarry_api::TcbStatus>,
        /// Its advisories.
        advisories: Vec<String>,
        /// The package fields the platform fails.
        fields: Vec<FieldMismatch>,
        /// When the monitor checked, Unix seconds.
        checked_at: u64,
    },
}

impl Refusal {
    /// The stable code of this refusal (`policy-mismatch`, `nonce`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownMarbleType { .. } => "unknown-marble-type",
            Refusal::Revoked(_) => "revoked",
            Refusal::Nonce(_) => "nonce",
            Refusal::DnsName { .. } => "dns-name",
            Refusal::Evidence(_) => "evidence",
            Refusal::KeyBinding(_) => "key-binding",
            Refusal::PolicyMismatch { .. } => "policy-mismatch",
            Refusal::MaxActivations { .. } => "max-activations",
            Refusal::Certificate(_) => "certificate",
            Refusal::TcbOutOfPolicy { .. } => "tcb-out-of-policy",
        }
    }

    /// The compared fields (empty unless the refusal compares values).
    pub fn fields(&self) -> Vec<FieldMismatch> {
        match self {
            Refusal::PolicyMismatch { fields, .. } | Refusal::TcbOutOfPolicy { fields, .. } => {
                fields.clone()
            }
            Refusal::Evidence(e) | Refusal::KeyBinding(e) => e.fields(),
            _ => Vec::new(),
        }
    }

    /// Every code, for the metric's fixed label set and the docs.
    pub const CODES: [&'static str; 10] = [
        "unknown-marble-type",
        "revoked",
        "nonce",
        "dns-name",
        "evidence",
        "key-binding",
        "policy-mismatch",
        "max-activations",
        "certificate",
        "tcb-out-of-policy",
    ];

    /// The policy mismatch of `package` from the verifier's field list.
    pub fn policy(package: &str, mismatch: &quarry_attestation::PolicyMismatch) -> Refusal {
        Refusal::PolicyMismatch {
            package: package.to_string(),
            fields: mismatch.0.clone(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownMarbleType {
                marble_type,
                removed: false,
            } => write!(f, "unknown marble type {marble_type:?}"),
            Refusal::UnknownMarbleType {
                marble_type,
                removed: true,
            } => write!(
                f,
                "marble type {marble_type:?} is no longer in the manifest"
            ),
            Refusal::Revoked(m) | Refusal::Certificate(m) => f.write_str(m),
            Refusal::Nonce(e) => write!(f, "{e}"),
            Refusal::KeyBinding(e) => write!(f, "{e}"),
            Refusal::DnsName { name, marble_type } => write!(
                f,
                "requested DNS name {name:?} is not allowed by Marbles/{marble_type}/DNSNames"
            ),
            Refusal::Evidence(e) => write!(f, "evidence refused: {e}"),
            Refusal::PolicyMismatch { package, fields } => {
                write!(
                    f,
                    "package {package}: evidence does not match the package: "
                )?;
                for (i, m) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{m}")?;
                }
                Ok(())
            }
            Refusal::MaxActivations { marble_type, max } => write!(
                f,
                "MaxActivations of marble type {marble_type} exhausted ({max} of {max} used)"
            ),
            Refusal::TcbOutOfPolicy {
                status,
                advisories,
                checked_at,
                ..
            } => write!(
                f,
                "the TCB monitor found this marble's platform out of its package's policy at {}: TCB status {} (advisories: {}); Config.TCBChangeAction refuses its renewal: run the marble on an updated platform (a new activation)",
                crate::clock::rfc3339(*checked_at),
                status.map_or("unknown", |s| s.as_str()),
                if advisories.is_empty() { "none".to_string() } else { advisories.join(",") },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcb_refusal_names_the_status_advisories_and_fields() {
        let r = Refusal::TcbOutOfPolicy {
            status: Some(quarry_api::TcbStatus::OutOfDate),
            advisories: vec!["INTEL-SA-01192".into(), "INTEL-SA-01245".into()],
            fields: vec![FieldMismatch {
                field: "AcceptedTCBStatuses".into(),
                expected: "UpToDate,SWHardeningNeeded".into(),
                found: "OutOfDate (advisories: INTEL-SA-01192,INTEL-SA-01245)".into(),
            }],
            checked_at: 1_792_454_400,
        };
        assert_eq!(r.code(), "tcb-out-of-policy");
        assert_eq!(r.fields()[0].field, "AcceptedTCBStatuses");
        let text = r.to_string();
        for needle in [
            "TCB status OutOfDate",
            "INTEL-SA-01192,INTEL-SA-01245",
            "2026-10-20T00:00:00Z",
            "TCBChangeAction",
        ] {
            assert!(text.contains(needle), "{text} must name {needle}");
        }
    }

    #[test]
    fn codes_are_stable_and_listed() {
        let all = [
            Refusal::UnknownMarbleType {
                marble_type: "x".into(),
                removed: false,
            },
            Refusal::Revoked("r".into()),
            Refusal::Nonce(crate::state::nonces::NonceError::Unknown),
            Refusal::DnsName {
                name: "a".into(),
                marble_type: "t".into(),
            },
            Refusal::Evidence(quarry_attestation::VerifyError::Malformed("e".into())),
            Refusal::KeyBinding(quarry_attestation::VerifyError::Binding {
                part: "report_data[0..32]",
                reason: "r",
                expected: "00".into(),
                found: "01".into(),
            }),
            Refusal::PolicyMismatch {
                package: "p".into(),
                fields: vec![],
            },
            Refusal::MaxActivations {
                marble_type: "t".into(),
                max: 1,
            },
            Refusal::Certificate("c".into()),
            Refusal::TcbOutOfPolicy {
                status: Some(quarry_api::TcbStatus::OutOfDate),
                advisories: vec!["INTEL-SA-01192".into()],
                fields: vec![],
                checked_at: 0,
            },
        ];
        let codes: Vec<&str> = all.iter().map(Refusal::code).collect();
        assert_eq!(codes, Refusal::CODES);
    }

    #[test]
    fn a_policy_mismatch_keeps_every_field_and_names_them_in_its_message() {
        let mismatch = quarry_attestation::PolicyMismatch(vec![
            FieldMismatch {
                field: "SecurityVersion".into(),
                expected: ">= 3".into(),
                found: "2".into(),
            },
            FieldMismatch {
                field: "ProductID".into(),
                expected: "7".into(),
                found: "8".into(),
            },
        ]);
        let r = Refusal::policy("db", &mismatch);
        assert_eq!(r.code(), "policy-mismatch");
        assert_eq!(
            r.fields(),
            [
                FieldMismatch {
                    field: "SecurityVersion".into(),
                    expected: ">= 3".into(),
                    found: "2".into()
                },
                FieldMismatch {
                    field: "ProductID".into(),
                    expected: "7".into(),
                    found: "8".into()
                }
            ]
        );
        assert_eq!(
            r.to_string(),
            "package db: evidence does not match the package: SecurityVersion: expected >= 3, found 2; ProductID: expected 7, found 8"
        );
    }

    #[test]
    fn evidence_refusals_carry_the_compared_values_as_fields() {
        let r = Refusal::KeyBinding(quarry_attestation::VerifyError::Binding {
            part: "report_data[32..64]",
            reason: "does not match the nonce issued for this activation",
            expected: "aa".into(),
            found: "bb".into(),
        });
        assert_eq!(r.code(), "key-binding");
        assert_eq!(
            r.fields(),
            [FieldMismatch {
                field: "report_data[32..64]".into(),
                expected: "aa".into(),
                found: "bb".into()
            }]
        );
        let expired = Refusal::Evidence(quarry_attestation::VerifyError::Expired {
            what: "PCK CRL".into(),
            now: 1_800_000_000,
            not_before: Some(1_700_000_000),
            not_after: Some(1_750_000_000),
        });
        let f = expired.fields();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].field, "PCK CRL");
        assert!(f[0].expected.contains("2025-06-15"), "{:?}", f[0]);
        assert!(f[0].found.starts_with("2027-01-15"), "{:?}", f[0]);
        assert!(
            expired
                .to_string()
                .contains("PCK CRL expired at 2025-06-15"),
            "{expired}"
        );
        assert!(
            Refusal::Evidence(quarry_attestation::VerifyError::Malformed("x".into()))
                .fields()
                .is_empty()
        );
    }
}
