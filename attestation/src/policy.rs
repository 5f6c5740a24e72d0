//! Claims against a package's reference values (contract §4.6). A refusal names every
//! mismatching field with the expected and the actual value.
pub use quarry_api::http::FieldMismatch;
use quarry_api::{Claims, Package, TcbStatus};

/// Every field that did not match (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evidence does not match the package: {}", .0.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
pub struct PolicyMismatch(pub Vec<FieldMismatch>);

/// Checks claims against a package; returns every mismatch at once.
pub fn check_package(package: &Package, claims: &Claims) -> Result<(), PolicyMismatch> {
    let mut out = Vec::new();
    let mut push = |field: &str, expected: String, found: String| {
        out.push(FieldMismatch {
            field: field.to_string(),
            expected,
            found,
        })
    };

    if package.tee != claims.tee {
        push("TEE", package.tee.to_string(), claims.tee.to_string());
    }
    // Simulated evidence only satisfies packages that say so, whatever the claims' TEE field.
    if claims.simulation && package.tee != quarry_api::TeeKind::Simulated {
        push(
            "TEE",
            package.tee.to_string(),
            "simulated evidence".to_string(),
        );
    }
    let id = &claims.identity;
    if let Some(want) = &package.unique_id {
        if id.unique_id.as_deref() != Some(want.as_slice()) {
            push("UniqueID", hex::encode(want), show_hex(&id.unique_id));
        }
    }
    if let Some(want) = &package.signer_id {
        if id.signer_id.as_deref() != Some(want.as_slice()) {
            push("SignerID", hex::encode(want), show_hex(&id.signer_id));
        }
    }
    if let Some(want) = package.product_id {
        if id.product_id != Some(want) {
            push("ProductID", want.to_string(), show_num(id.product_id));
        }
    }
    if let Some(min) = package.security_version {
        if id.security_version.is_none_or(|v| v < min) {
            push(
                "SecurityVersion",
                format!(">= {min}"),
                show_num(id.security_version),
            );
        }
    }
    for (name, want) in &package.fields {
        let actual = id.fields.get(name);
        if !actual.is_some_and(|a| a.eq_ignore_ascii_case(want)) {
            push(
                static_field_name(name),
                want.clone(),
                actual.cloned().unwrap_or_else(|| "(absent)".into()),
            );
        }
    }
    if package.debug != claims.debug {
        push("Debug", package.debug.to_string(), claims.debug.to_string());
    }
    let accepted = package.effective_tcb_statuses();
    if !accepted.contains(&claims.tcb_status) {
        push(
            "AcceptedTCBStatuses",
            accepted
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            claims.tcb_summary(),
        );
    } else if matches!(
        claims.tcb_status,
        TcbStatus::SWHardeningNeeded | TcbStatus::ConfigurationAndSWHardeningNeeded
    ) && !package.accepted_advisories.is_empty()
    {
        let unaccepted: Vec<&String> = claims
            .advisory_ids
            .iter()
            .filter(|a| {
                !package
                    .accepted_advisories
                    .iter()
                    .any(|ok| ok.eq_ignore_ascii_case(a))
            })
            .collect();
        if !unaccepted.is_empty() {
            push(
                "AcceptedAdvisories",
                package.accepted_advisories.join(","),
                unaccepted
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    if let Some(min) = &package.minimum_tcb {
        match &claims.reported_tcb {
            Some(tcb) => {
                let below = tcb.below(min);
                if !below.is_empty() {
                    push(
                        "MinimumTCB",
                        format!(">= {min}"),
                        format!(
                            "{tcb} ({})",
                            below
                                .iter()
                                .map(|(n, want, got)| format!("{n} {got} < {want}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
            None => push("MinimumTCB", format!(">= {min}"), "(absent)".into()),
        }
    }
    if claims.tee == quarry_api::TeeKind::Snp {
        // The verifier reports the VMPL and leaves the limit to the package (default 0).
        match claims.identity.fields.get("VMPL").map(|v| v.parse::<u32>()) {
            Some(Ok(vmpl)) if vmpl <= package.max_vmpl => {}
            found => push(
                "MaxVMPL",
                format!("VMPL <= {}", package.max_vmpl),
                match found {
                    Some(Ok(vmpl)) => format!("VMPL {vmpl}"),
                    _ => "(absent)".into(),
                },
            ),
        }
    }
    if !package.allowed_platforms.is_empty() {
        let ok = claims.platform_id.as_ref().is_some_and(|p| {
            package
                .allowed_platforms
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p))
        });
        if !ok {
            push(
                if package.tee == quarry_api::TeeKind::Snp {
                    "AllowedChipIDs"
                } else {
                    "AllowedPlatforms"
                },
                package.allowed_platforms.join(","),
                claims
                    .platform_id
                    .clone()
                    .unwrap_or_else(|| "(none)".into()),
            );
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(PolicyMismatch(out))
    }
}

fn show_hex(v: &Option<Vec<u8>>) -> String {
    v.as_ref()
        .map(hex::encode)
        .unwrap_or_else(|| "(absent)".into())
}

fn show_num(v: Option<u64>) -> String {
    v.map(|n| n.to_string())
        .unwrap_or_else(|| "(absent)".into())
}

fn static_field_name(name: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "MRTD",
        "RTMR0",
        "RTMR1",
        "RTMR2",
        "RTMR3",
        "MRSEAM",
        "Measurement",
        "HostData",
        "IDKeyDigest",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == name)
        .unwrap_or("TEE-specific field")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_api::claims::Identity;
    use quarry_api::TeeKind;

    fn claims() -> Claims {
        Claims {
            tee: TeeKind::Simulated,
            identity: Identity {
                unique_id: Some(vec![1; 32]),
                signer_id: Some(vec![0; 32]),
                product_id: Some(7),
                security_version: Some(3),
                fields: Default::default(),
            },
            debug: false,
            report_data: [0; 64],
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: vec![],
            platform_id: Some("abcd".into()),
            simulation: true,
            reported_tcb: None,
            tcb_standing: None,
        }
    }

    fn package() -> Package {
        Package {
            tee: TeeKind::Simulated,
            unique_id: Some(vec![1; 32]),
            ..Package::default()
        }
    }

    #[test]
    fn matching_claims_pass() {
        check_package(&package(), &claims()).unwrap();
        let by_signer = Package {
            tee: TeeKind::Simulated,
            signer_id: Some(vec![0; 32]),
            product_id: Some(7),
            security_version: Some(2),
            ..Package::default()
        };
        check_package(&by_signer, &claims()).unwrap();
    }

    #[test]
    fn every_mismatch_is_named_with_expected_and_actual() {
        let pkg = Package {
            tee: TeeKind::Simulated,
            unique_id: Some(vec![2; 32]),
            signer_id: Some(vec![9; 32]),
            product_id: Some(8),
            security_version: Some(4),
            debug: false,
            ..Package::default()
        };
        let mut c = claims();
        c.debug = true;
        let err = check_package(&pkg, &c).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "UniqueID",
                "SignerID",
                "ProductID",
                "SecurityVersion",
                "Debug"
            ]
        );
        assert_eq!(err.0[3].expected, ">= 4");
        assert_eq!(err.0[3].found, "3");
        assert_eq!(err.0[0].found, hex::encode([1u8; 32]));
        assert!(err
            .to_string()
            .contains("Debug: expected false, found true"));
    }

    #[test]
    fn simulated_evidence_never_satisfies_a_hardware_package() {
        let pkg = Package {
            tee: TeeKind::Sgx,
            unique_id: Some(vec![1; 32]),
            ..Package::default()
        };
        let err = check_package(&pkg, &claims()).unwrap_err();
        assert!(err.0.iter().all(|m| m.field == "TEE"));
        // Even with claims that pretend to be SGX.
        let mut c = claims();
        c.tee = TeeKind::Sgx;
        let err = check_package(&pkg, &c).unwrap_err();
        assert_eq!(err.0[0].found, "simulated evidence");
    }

    #[test]
    fn tcb_status_outside_the_accepted_set_is_refused_with_advisories() {
        let mut c = claims();
        c.tcb_status = TcbStatus::OutOfDate;
        c.advisory_ids = vec!["INTEL-SA-00615".into()];
        let err = check_package(&package(), &c).unwrap_err();
        assert_eq!(err.0[0].field, "AcceptedTCBStatuses");
        assert!(err.0[0].found.contains("OutOfDate"));
        assert!(err.0[0].found.contains("INTEL-SA-00615"));
    }

    #[test]
    fn advisories_must_be_accepted_when_listed() {
        let mut c = claims();
        c.tcb_status = TcbStatus::SWHardeningNeeded;
        c.advisory_ids = vec!["INTEL-SA-00615".into(), "INTEL-SA-00657".into()];
        let mut pkg = package();
        pkg.accepted_advisories = vec!["intel-sa-00615".into()];
        let err = check_package(&pkg, &c).unwrap_err();
        assert_eq!(err.0[0].field, "AcceptedAdvisories");
        assert_eq!(err.0[0].found, "INTEL-SA-00657");
        pkg.accepted_advisories.push("INTEL-SA-00657".into());
        check_package(&pkg, &c).unwrap();
    }

    #[test]
    fn snp_fields_minimum_tcb_and_chip_ids_are_each_named() {
        let mut c = claims();
        c.tee = TeeKind::Snp;
        c.simulation = false;
        c.identity = Identity::default();
        c.identity
            .fields
            .insert("Measurement".into(), "aa".repeat(48));
        c.identity.fields.insert("HostData".into(), "00".repeat(32));
        c.identity.fields.insert("VMPL".into(), "0".into());
        c.reported_tcb = Some(quarry_api::claims::SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        });
        c.platform_id = Some("cc".repeat(64));
        let mut pkg = Package {
            tee: TeeKind::Snp,
            minimum_tcb: Some(quarry_api::claims::SnpTcb {
                bootloader: 3,
                snp: 8,
                microcode: 115,
                ..Default::default()
            }),
            allowed_platforms: vec!["cc".repeat(64)],
            ..Package::default()
        };
        pkg.fields.insert("Measurement".into(), "AA".repeat(48));
        check_package(&pkg, &c).unwrap();
        pkg.minimum_tcb = Some(quarry_api::claims::SnpTcb {
            snp: 9,
            microcode: 200,
            ..Default::default()
        });
        pkg.fields.insert("HostData".into(), "11".repeat(32));
        pkg.allowed_platforms = vec!["dd".repeat(64)];
        let err = check_package(&pkg, &c).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, ["HostData", "MinimumTCB", "AllowedChipIDs"]);
        assert_eq!(err.0[0].expected, "11".repeat(32));
        assert_eq!(err.0[0].found, "00".repeat(32));
        assert_eq!(
            err.0[1].expected,
            ">= bootloader=0 tee=0 snp=9 microcode=200"
        );
        assert!(err.0[1].found.contains("snp 8 < 9, microcode 115 < 200"));
        assert_eq!(err.0[2].found, "cc".repeat(64));
    }

    #[test]
    fn an_snp_report_above_the_packages_max_vmpl_is_refused_naming_vmpl_and_limit() {
        let mut c = claims();
        c.tee = TeeKind::Snp;
        c.simulation = false;
        c.identity = Identity::default();
        c.identity.fields.insert("VMPL".into(), "1".into());
        let mut pkg = Package {
            tee: TeeKind::Snp,
            ..Package::default()
        };
        let err = check_package(&pkg, &c).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "MaxVMPL");
        assert_eq!(err.0[0].expected, "VMPL <= 0");
        assert_eq!(err.0[0].found, "VMPL 1");
        pkg.max_vmpl = 1;
        check_package(&pkg, &c).unwrap();
        // A report whose VMPL the verifier did not state is refused, never assumed 0.
        c.identity.fields.remove("VMPL");
        let err = check_package(&pkg, &c).unwrap_err();
        assert_eq!(err.0[0].found, "(absent)");
        c.identity.fields.insert("VMPL".into(), "one".into());
        assert_eq!(check_package(&pkg, &c).unwrap_err().0[0].field, "MaxVMPL");
    }

    #[test]
    fn platforms_outside_the_allow_list_are_refused() {
        let mut pkg = package();
        pkg.allowed_platforms = vec!["ffff".into()];
        let err = check_package(&pkg, &claims()).unwrap_err();
        assert_eq!(err.0[0].field, "AllowedPlatforms");
        pkg.allowed_platforms.push("ABCD".into());
        check_package(&pkg, &claims()).unwrap();
    }
}
