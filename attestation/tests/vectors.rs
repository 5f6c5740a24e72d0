//! Every vector of `shared/testdata/attestation/PROVENANCE.md` at its recorded time with its
//! recorded outcome, plus tampered copies (one change each), expired windows, a foreign VCEK,
//! debug refusals and no-panic checks on truncated and random input.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::{Evidence, EvidenceType, TcbStatus, TeeKind};
use quarry_attestation::collateral::{CollateralCache, DcapKey, PckCaType};
use quarry_attestation::dcap::{parse_collateral, DcapVerifier};
use quarry_attestation::snp::{SnpCollateral, SnpVerifier};
use quarry_attestation::{Verifier, VerifierSet, VerifyError};

/// The shared attestation vectors: `$QUARRY_SHARED_DIR/testdata/attestation`, or the first
/// `shared/testdata/attestation` found walking up from this crate. Never skipped.
fn vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        let p = PathBuf::from(dir).join("testdata/attestation");
        assert!(
            p.is_dir(),
            "QUARRY_SHARED_DIR is set but {} is missing",
            p.display()
        );
        return p;
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation");
        if p.is_dir() {
            return p;
        }
        if !dir.pop() {
            panic!(
                "attestation vectors not found: no shared/testdata/attestation above {} and QUARRY_SHARED_DIR is unset",
                env!("CARGO_MANIFEST_DIR")
            );
        }
    }
}

fn read(rel: &str) -> Vec<u8> {
    let p = vectors().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(rel: &str) -> String {
    String::from_utf8(read(rel)).expect("utf-8")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const T_2025_07_01: u64 = 1751328000;
const T_2025_09_15: u64 = 1757894400;
const T_2026_10_20: u64 = 1792454400;
const T_2026_02_28: u64 = 1772323200;
const T_2023_07_01: u64 = 1688173200;
const T_2025_06_01: u64 = 1748736000;

struct Dcap {
    tee: TeeKind,
    quote: &'static str,
    collateral: &'static str,
    time: u64,
}

const SGX: Dcap = Dcap {
    tee: TeeKind::Sgx,
    quote: "sgx/dcapqvl_sgx_quote_v3.bin",
    collateral: "sgx/dcapqvl_sgx_quote_v3.collateral.json",
    time: T_2025_07_01,
};
const SGX_DEBUG: Dcap = Dcap {
    quote: "sgx/automata_sgx_quote_v3_DEBUG.bin",
    ..SGX
};
const TDX_V4: Dcap = Dcap {
    tee: TeeKind::Tdx,
    quote: "tdx/dcapqvl_tdx_quote_v4.bin",
    collateral: "tdx/dcapqvl_tdx_quote_v4.collateral.json",
    time: T_2025_07_01,
};
const TDX_NEAR: Dcap = Dcap {
    tee: TeeKind::Tdx,
    quote: "tdx/dcapqvl_near_tdx_quote_v4.bin",
    collateral: "tdx/dcapqvl_near_tdx_quote_v4.collateral.json",
    time: T_2025_09_15,
};
const TDX_V5: Dcap = Dcap {
    tee: TeeKind::Tdx,
    quote: "tdx/dcapqvl_tdx_quote_v5_td15ex.bin",
    collateral: "tdx/dcapqvl_tdx_quote_v5_td15ex.collateral.json",
    time: T_2026_10_20,
};
const TDX_NOTCB: Dcap = Dcap {
    tee: TeeKind::Tdx,
    quote: "tdx/dcapqvl_tdx_quote_v5_td15_notcblevel.bin",
    collateral: "tdx/fmspc_90C06F000000_2026-02-18.collateral.json",
    time: T_2026_02_28,
};
const TDX_SPR_E4: Dcap = Dcap {
    tee: TeeKind::Tdx,
    quote: "tdx/gotdxguest_tdx_prod_quote_SPR_E4_v4.bin",
    collateral: "tdx/gotdxguest_tdx_prod_quote_SPR_E4_v4.collateral.assembled.json",
    time: T_2023_07_01,
};
const VERIFIED_DCAP: [Dcap; 4] = [SGX, TDX_V4, TDX_NEAR, TDX_V5];

impl Dcap {
    fn verifier(&self) -> DcapVerifier {
        let v = match self.tee {
            TeeKind::Sgx => DcapVerifier::sgx(),
            _ => DcapVerifier::tdx(),
        };
        v.with_root_ca(read("sgx/intel_sgx_root_ca.der"))
    }

    fn run_with(
        &self,
        v: &DcapVerifier,
        quote: &[u8],
        time: u64,
    ) -> Result<quarry_api::Claims, VerifyError> {
        let c = parse_collateral(&text(self.collateral)).expect("collateral parses");
        v.verify_quote(quote, Some(&c), at(time))
    }

    fn run(&self) -> Result<quarry_api::Claims, VerifyError> {
        self.run_with(&self.verifier(), &read(self.quote), self.time)
    }

    /// Offset of the report body in the quote.
    fn body_offset(&self) -> usize {
        let q = read(self.quote);
        if q[0] == 5 {
            54
        } else {
            48
        }
    }
}

fn field<'a>(c: &'a quarry_api::Claims, name: &str) -> &'a str {
    c.identity
        .fields
        .get(name)
        .unwrap_or_else(|| panic!("claim field {name} missing"))
}

// === SGX ===

#[test]
fn sgx_v3_quote_verifies_with_configuration_and_sw_hardening_needed() {
    let c = SGX.run().expect("verifies");
    assert_eq!(c.tee, TeeKind::Sgx);
    assert_eq!(c.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    for sa in ["INTEL-SA-00289", "INTEL-SA-00615"] {
        assert!(
            c.advisory_ids.iter().any(|a| a == sa),
            "{:?}",
            c.advisory_ids
        );
    }
    assert_eq!(
        hex::encode(c.identity.unique_id.as_deref().unwrap()),
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        hex::encode(c.identity.signer_id.as_deref().unwrap()),
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(
        (c.identity.product_id, c.identity.security_version),
        (Some(0), Some(0))
    );
    assert_eq!(field(&c, "Attributes"), "0500000000000000e700000000000000");
    assert!(!c.debug);
    assert!(!c.simulation);
    assert_eq!(&c.report_data[..13], b"Hello, world!");
    assert!(c.report_data[13..].iter().all(|b| *b == 0));
    assert_eq!(c.platform_id.as_deref(), Some("00a067110000"));
}

#[test]
fn sgx_quote_verifies_with_intels_production_root_too() {
    let c = parse_collateral(&text(SGX.collateral)).unwrap();
    DcapVerifier::sgx()
        .verify_quote(&read(SGX.quote), Some(&c), at(SGX.time))
        .expect("the vector's root CA is Intel's production root");
}

#[test]
fn debug_sgx_quote_is_refused_unless_debug_is_allowed() {
    let err = SGX_DEBUG.run().expect_err("debug enclave must be refused");
    assert!(matches!(err, VerifyError::Debug(_)), "{err}");
    let c = SGX_DEBUG
        .run_with(
            &SGX_DEBUG.verifier().allow_debug(true),
            &read(SGX_DEBUG.quote),
            SGX_DEBUG.time,
        )
        .expect("verifies with debug allowed");
    assert!(c.debug);
    assert_eq!(c.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    assert_eq!(
        hex::encode(c.identity.unique_id.as_deref().unwrap()),
        "a39d532e6ac9fe8ad9418851bbe26e1dee7408006505fce8580b511b97e704b4"
    );
    assert_eq!(
        hex::encode(c.identity.signer_id.as_deref().unwrap()),
        "9affcfae47b848ec2caf1c49b4b283531e1cc425f93582b36806e52a43d78d1a"
    );
    assert_eq!(field(&c, "Attributes"), "0700000000000000ff02000000000000");
}

// === TDX ===

#[test]
fn tdx_v4_quote_verifies_up_to_date_with_its_measurements() {
    let c = TDX_V4.run().expect("verifies");
    assert_eq!(c.tee, TeeKind::Tdx);
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert!(c.advisory_ids.is_empty());
    assert_eq!(field(&c, "MRTD"), "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7");
    assert_eq!(field(&c, "RTMR0"), "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0");
    assert_eq!(field(&c, "RTMR1"), "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378");
    assert_eq!(field(&c, "RTMR2"), "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132");
    assert_eq!(field(&c, "RTMR3"), "00".repeat(48));
    assert_eq!(field(&c, "MRSEAM"), "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1");
    assert_eq!(field(&c, "TDAttributes"), "0000001000000000");
    assert!(!c.debug);
    assert!(hex::encode(c.report_data).starts_with("9a9d48e7"));
    assert!(hex::encode(c.report_data).ends_with("523f20"));
    assert_eq!(c.platform_id.as_deref(), Some("b0c06f000000"));
}

#[test]
fn near_tdx_v4_quote_verifies_up_to_date() {
    let c = TDX_NEAR.run().expect("verifies");
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert_eq!(field(&c, "MRTD"), "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077");
    assert!(field(&c, "MRConfigID")
        .starts_with("0112a20aed7d6c68601e9f6e108a93b4199ae7231684307ffc4833c9cd08d45de7"));
    assert!(field(&c, "RTMR3").starts_with("287a9242"));
    assert!(field(&c, "RTMR3").ends_with("4592b7b3"));
    assert!(!c.debug);
    assert_eq!(c.platform_id.as_deref(), Some("20a06f000000"));
}

#[test]
fn tdx_v5_td15ex_quote_verifies_up_to_date() {
    let c = TDX_V5.run().expect("verifies");
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert_eq!(field(&c, "MRTD"), "2a674327c50218dba880066b349b8d559d749ed68dce33fd651c184a877d084b07a9e583767a7ad5da13ed91deec2b70");
    assert!(field(&c, "RTMR3").starts_with("556d4986"));
    assert!(field(&c, "RTMR3").ends_with("393b5fdf"));
    assert_eq!(field(&c, "MRServiceTD"), "00".repeat(48));
    assert!(!c.debug);
}

#[test]
fn tdx_v5_quote_below_every_tcb_level_is_refused() {
    let err = TDX_NOTCB.run().expect_err("no TCB level");
    assert!(
        matches!(err, VerifyError::TcbUnsupported(ref m) if m.contains("No matching TCB level")),
        "{err}"
    );
    // Its signatures are valid: a flipped REPORTDATA bit is caught as a bad signature.
    let mut q = read(TDX_NOTCB.quote);
    q[TDX_NOTCB.body_offset() + 520] ^= 1;
    let err = TDX_NOTCB
        .run_with(&TDX_NOTCB.verifier(), &q, TDX_NOTCB.time)
        .expect_err("tampered");
    assert!(matches!(err, VerifyError::BadSignature(_)), "{err}");
}

#[test]
fn engineering_sample_tdx_quote_is_refused_for_its_tcb_level() {
    let err = TDX_SPR_E4.run().expect_err("no TCB level");
    assert!(
        matches!(err, VerifyError::TcbUnsupported(ref m) if m.contains("No matching TCB level")),
        "{err}"
    );
}

// === DCAP tampering, time windows, framing ===

#[test]
fn every_verified_dcap_quote_is_refused_after_a_flipped_byte_in_the_signed_body() {
    for v in VERIFIED_DCAP {
        // MRENCLAVE (SGX, body +64) or MRTD (TDX, body +136), and the report data.
        let offsets = match v.tee {
            TeeKind::Sgx => [64, 320],
            _ => [136, 520],
        };
        for rel in offsets {
            let mut q = read(v.quote);
            q[v.body_offset() + rel] ^= 0x01;
            let err = v.run_with(&v.verifier(), &q, v.time).expect_err(v.quote);
            assert!(
                matches!(err, VerifyError::BadSignature(_)),
                "{}: {err}",
                v.quote
            );
        }
        // A header byte (QE SVN) is signed too.
        let mut q = read(v.quote);
        q[8] ^= 0x01;
        assert!(
            v.run_with(&v.verifier(), &q, v.time).is_err(),
            "{}",
            v.quote
        );
    }
}

#[test]
fn every_verified_dcap_quote_is_refused_outside_its_collateral_window() {
    for v in VERIFIED_DCAP {
        let q = read(v.quote);
        for time in [v.time + 60 * 86400, v.time - 60 * 86400] {
            let err = v.run_with(&v.verifier(), &q, time).expect_err(v.quote);
            assert!(
                matches!(err, VerifyError::Expired { now, .. } if now == time as i64),
                "{}: {err}",
                v.quote
            );
        }
        let err = v
            .run_with(&v.verifier(), &q, v.time + 60 * 86400)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expired at 20"),
            "names the item and since when: {err}"
        );
    }
}

#[test]
fn zero_padding_after_a_quote_is_trimmed_and_other_trailing_bytes_are_refused() {
    // The TDX v4 vectors are real zero-padded quotes (70 bytes after offset 4936).
    assert_eq!(
        quarry_attestation::dcap::quote_len(&read(TDX_V4.quote)).unwrap(),
        4936
    );
    let mut q = read(SGX.quote);
    let len = q.len();
    q.extend_from_slice(&[0, 0, 0, 0]);
    let padded = SGX
        .run_with(&SGX.verifier(), &q, SGX.time)
        .expect("zero padding");
    assert_eq!(padded, SGX.run().unwrap());
    q.push(b'x');
    let err = SGX
        .run_with(&SGX.verifier(), &q, SGX.time)
        .expect_err("non-zero trailer");
    assert_eq!(
        err,
        VerifyError::Malformed(format!(
            "5 trailing bytes after the quote, which ends at offset {len}, are not zero padding"
        ))
    );
    // A quote that fails verification is refused for that reason first (the go-tdx-guest
    // vector carries 39 bytes of text after the quote and fails its TCB level).
    let err = TDX_SPR_E4.run().unwrap_err();
    assert!(matches!(err, VerifyError::TcbUnsupported(_)), "{err}");
}

#[test]
fn a_quote_of_one_tee_is_refused_by_the_other_verifier() {
    let c = parse_collateral(&text(TDX_V4.collateral)).unwrap();
    let err = SGX
        .verifier()
        .verify_quote(&read(TDX_V4.quote), Some(&c), at(TDX_V4.time))
        .unwrap_err();
    assert!(matches!(err, VerifyError::Unsupported(_)), "{err}");
}

#[test]
fn truncated_and_random_dcap_input_is_an_error_never_a_panic() {
    let c = parse_collateral(&text(SGX.collateral)).unwrap();
    let tdx_c = parse_collateral(&text(TDX_V4.collateral)).unwrap();
    let (sgx, tdx) = (SGX.verifier(), TDX_V4.verifier());
    for (v, c, q) in [
        (&sgx, &c, read(SGX.quote)),
        (&tdx, &tdx_c, read(TDX_V4.quote)),
    ] {
        let exact = quarry_attestation::dcap::quote_len(&q).unwrap();
        for len in (0..exact).step_by(7) {
            assert!(v.verify_quote(&q[..len], Some(c), at(SGX.time)).is_err());
        }
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..300 {
            let mut m = q.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % m.len();
                m[i] = rng.next() as u8;
            }
            let _ = v.verify_quote(&m, Some(c), at(SGX.time));
        }
        for _ in 0..200 {
            let len = (rng.next() % 6000) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if m.len() > 8 {
                m[0] = 3 + (rng.next() % 3) as u8;
                m[1] = 0;
            }
            assert!(v.verify_quote(&m, Some(c), at(SGX.time)).is_err());
        }
    }
}

// === SEV-SNP ===

struct Snp {
    report: &'static str,
    vek: &'static str,
    chain: &'static str,
}

const SNP_VIRTEE: Snp = Snp {
    report: "snp/virtee_milan_report.bin",
    vek: "snp/virtee_milan_vcek.der",
    chain: "snp/virtee_milan_ask_ark.pem",
};
const SNP_TRUSTEE: Snp = Snp {
    report: "snp/trustee_milan_report.bin",
    vek: "snp/trustee_milan_vcek.der",
    chain: "snp/amd_roots/milan_ask_ark_asvk.pem",
};
const SNP_DEBUG: Snp = Snp {
    report: "snp/gosevguest_milan_report_DEBUG.bin",
    vek: "snp/gosevguest_milan_vcek.der",
    chain: "snp/amd_roots/milan_ask_ark_asvk.pem",
};

impl Snp {
    fn collateral(&self) -> SnpCollateral {
        SnpCollateral {
            vek: quarry_api::bytes::encode_pem("CERTIFICATE", &read(self.vek)),
            ca_chain: Some(text(self.chain)),
        }
    }

    fn run(&self) -> Result<quarry_api::Claims, VerifyError> {
        SnpVerifier::new().verify_report(
            &read(self.report),
            Some(&self.collateral()),
            at(T_2025_06_01),
        )
    }
}

fn azure() -> (Vec<u8>, SnpCollateral) {
    let hcl = read("snp/azure_milan_hcl_report.bin");
    let pem = text("snp/azure_milan_vcek_ask_ark.pem");
    let blocks = pem::parse_many(&pem).unwrap();
    let vek = quarry_api::bytes::encode_pem("CERTIFICATE", blocks[0].contents());
    let chain: String = blocks[1..]
        .iter()
        .map(|b| quarry_api::bytes::encode_pem("CERTIFICATE", b.contents()))
        .collect();
    (
        hcl[32..1216].to_vec(),
        SnpCollateral {
            vek,
            ca_chain: Some(chain),
        },
    )
}

#[test]
fn virtee_milan_report_verifies_with_its_measurement_and_tcb() {
    let c = SNP_VIRTEE.run().expect("verifies");
    assert_eq!(c.tee, TeeKind::Snp);
    assert_eq!(field(&c, "Measurement"), "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f");
    assert_eq!(field(&c, "HostData"), "00".repeat(32));
    assert_eq!(field(&c, "Policy"), "0x30000");
    assert!(hex::encode(c.report_data).starts_with("d447b55d"));
    assert!(hex::encode(c.report_data).ends_with("6a93ebfd"));
    let tcb = c.reported_tcb.unwrap();
    assert_eq!(
        (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
        (3, 0, 8, 115)
    );
    assert!(!c.debug);
    assert_eq!(c.platform_id.as_deref(), Some(field(&c, "ChipID")));
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
}

#[test]
fn trustee_milan_report_verifies_with_its_id_block() {
    let c = SNP_TRUSTEE.run().expect("verifies");
    assert_eq!(field(&c, "Measurement"), "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c");
    assert_eq!(field(&c, "Policy"), "0x3001f");
    assert_eq!(field(&c, "GuestSVN"), "4");
    assert!(field(&c, "IDKeyDigest").starts_with("0356215882a8"));
    assert!(field(&c, "IDKeyDigest").ends_with("af7a44a3"));
    let tcb = c.reported_tcb.unwrap();
    assert_eq!(
        (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
        (3, 0, 8, 115)
    );
}

#[test]
fn debug_snp_report_is_refused_unless_debug_is_allowed() {
    let err = SNP_DEBUG.run().expect_err("debug guest");
    assert!(
        matches!(err, VerifyError::Debug(ref m) if m.contains("0xb0000")),
        "{err}"
    );
    let c = SnpVerifier::new()
        .allow_debug(true)
        .verify_report(
            &read(SNP_DEBUG.report),
            Some(&SNP_DEBUG.collateral()),
            at(T_2025_06_01),
        )
        .expect("signatures verify");
    assert!(c.debug);
    assert_eq!(field(&c, "Measurement"), "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01");
    assert_eq!(&c.report_data[..5], &[1, 2, 3, 4, 5]);
    assert!(c.report_data[5..].iter().all(|b| *b == 0));
    let tcb = c.reported_tcb.unwrap();
    assert_eq!(
        (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
        (2, 0, 5, 68)
    );
}

#[test]
fn azure_hcl_embedded_snp_report_verifies() {
    let (report, col) = azure();
    let c = SnpVerifier::new()
        .verify_report(&report, Some(&col), at(T_2025_06_01))
        .expect("verifies");
    assert_eq!(field(&c, "Measurement"), "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315");
}

#[test]
fn turin_vcek_chain_verifies_and_is_valid_at_the_recorded_time() {
    use sev::certs::snp::{ca, Certificate, Chain, Verifiable};
    let blocks = pem::parse_many(text("snp/virtee_turin_ask_ark.pem")).unwrap();
    let chain = Chain {
        ca: ca::Chain {
            ask: Certificate::from_der(blocks[0].contents()).unwrap(),
            ark: Certificate::from_der(blocks[1].contents()).unwrap(),
        },
        vek: Certificate::from_der(&read("snp/virtee_turin_vcek.der")).unwrap(),
    };
    (&chain).verify().expect("ARK-Turin → SEV-Turin → VCEK");
    let vcek = read("snp/virtee_turin_vcek.der");
    let (_, cert) = x509_parser::parse_x509_certificate(&vcek).unwrap();
    let v = cert.validity();
    assert!(v.not_before.timestamp() <= T_2025_06_01 as i64);
    assert!((T_2025_06_01 as i64) <= v.not_after.timestamp());
    // The Turin ARK of the vector is the pinned one: a chain with it is not refused as untrusted.
    let ark = pem::parse_many(text("snp/amd_roots/turin_ask_ark_asvk.pem")).unwrap();
    assert_eq!(ark[1].contents(), blocks[1].contents());
}

#[test]
fn every_verified_snp_report_is_refused_after_a_flipped_byte_in_the_signed_body() {
    let mut cases: Vec<(Vec<u8>, SnpCollateral)> = [SNP_VIRTEE, SNP_TRUSTEE]
        .iter()
        .map(|s| (read(s.report), s.collateral()))
        .collect();
    cases.push(azure());
    for (report, col) in cases {
        // MEASUREMENT, REPORT_DATA, HOST_DATA.
        for off in [0x90, 0x50, 0xC0] {
            let mut r = report.clone();
            r[off] ^= 1;
            let err = SnpVerifier::new()
                .verify_report(&r, Some(&col), at(T_2025_06_01))
                .expect_err("tampered");
            assert!(matches!(err, VerifyError::BadSignature(_)), "{err}");
        }
    }
}

#[test]
fn every_verified_snp_report_is_refused_outside_the_vcek_validity() {
    for s in [SNP_VIRTEE, SNP_TRUSTEE] {
        for time in [1_000_000_000, 2_100_000_000] {
            let err = SnpVerifier::new()
                .verify_report(&read(s.report), Some(&s.collateral()), at(time))
                .expect_err("outside validity");
            assert!(
                matches!(&err, VerifyError::Expired { what, now, not_before: Some(from), not_after: Some(to) }
                    if what.contains("certificate") && (*now < *from || *now >= *to)),
                "{err}"
            );
        }
    }
    let (report, col) = azure();
    let err = SnpVerifier::new()
        .verify_report(&report, Some(&col), at(2_100_000_000))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Expired { not_after: Some(to), now, .. } if now >= to),
        "{err}"
    );
}

#[test]
fn snp_reports_are_refused_with_the_vcek_of_another_chip() {
    for (s, other) in [
        (SNP_VIRTEE, SNP_TRUSTEE),
        (SNP_TRUSTEE, SNP_VIRTEE),
        (SNP_VIRTEE, SNP_DEBUG),
    ] {
        let col = SnpCollateral {
            vek: quarry_api::bytes::encode_pem("CERTIFICATE", &read(other.vek)),
            ca_chain: Some(text(s.chain)),
        };
        let err = SnpVerifier::new()
            .verify_report(&read(s.report), Some(&col), at(T_2025_06_01))
            .expect_err("foreign VCEK");
        assert!(
            matches!(&err, VerifyError::CertificateMismatch { expected, found, .. } if expected != found),
            "{err}"
        );
    }
}

#[test]
fn snp_chain_with_a_foreign_root_or_wrong_product_is_refused() {
    // Genoa roots for a Milan VCEK: no issuer of the VEK in the chain.
    let col = SnpCollateral {
        vek: quarry_api::bytes::encode_pem("CERTIFICATE", &read(SNP_VIRTEE.vek)),
        ca_chain: Some(text("snp/amd_roots/genoa_ask_ark_asvk.pem")),
    };
    let err = SnpVerifier::new()
        .verify_report(&read(SNP_VIRTEE.report), Some(&col), at(T_2025_06_01))
        .unwrap_err();
    assert!(matches!(err, VerifyError::UntrustedPlatform(_)), "{err}");
    // Without a chain the built-in Milan ASK + ARK are used.
    let col = SnpCollateral {
        ca_chain: None,
        ..SNP_VIRTEE.collateral()
    };
    SnpVerifier::new()
        .verify_report(&read(SNP_VIRTEE.report), Some(&col), at(T_2025_06_01))
        .expect("built-in chain");
}

#[test]
fn snp_policy_bits_and_vmpl_are_checked_before_acceptance_and_framing_is_exact() {
    let mut r = read(SNP_VIRTEE.report);
    r.push(0);
    let err = SNP_VIRTEE_VERIFY(&r);
    assert!(
        matches!(err, VerifyError::Malformed(ref m) if m.contains("1 trailing bytes")),
        "{err}"
    );
    let r = read(SNP_VIRTEE.report);
    let err = SNP_VIRTEE_VERIFY(&r[..1183]);
    assert!(
        matches!(err, VerifyError::Malformed(ref m) if m.contains("truncated")),
        "{err}"
    );
    let mut bad_version = r.clone();
    bad_version[0] = 9;
    assert!(matches!(
        SNP_VIRTEE_VERIFY(&bad_version),
        VerifyError::Unsupported(_)
    ));
}

#[allow(non_snake_case)]
fn SNP_VIRTEE_VERIFY(report: &[u8]) -> VerifyError {
    SnpVerifier::new()
        .verify_report(report, Some(&SNP_VIRTEE.collateral()), at(T_2025_06_01))
        .expect_err("refused")
}

#[test]
fn truncated_and_random_snp_input_is_an_error_never_a_panic() {
    let col = SNP_VIRTEE.collateral();
    let v = SnpVerifier::new();
    let r = read(SNP_VIRTEE.report);
    for len in 0..r.len() {
        assert!(v
            .verify_report(&r[..len], Some(&col), at(T_2025_06_01))
            .is_err());
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..300 {
        let mut m = r.clone();
        let i = (rng.next() as usize) % m.len();
        m[i] ^= 1 + (rng.next() as u8 & 0x7f);
        let _ = v.verify_report(&m, Some(&col), at(T_2025_06_01));
    }
    for _ in 0..100 {
        let mut m: Vec<u8> = (0..REPORT_LEN).map(|_| rng.next() as u8).collect();
        m[0..4].copy_from_slice(&2u32.to_le_bytes());
        m[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        assert!(v.verify_report(&m, Some(&col), at(T_2025_06_01)).is_err());
    }
    // Garbage collateral.
    let junk = SnpCollateral {
        vek: "not a certificate".into(),
        ca_chain: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
    };
    assert!(v.verify_report(&r, Some(&junk), at(T_2025_06_01)).is_err());
}

const REPORT_LEN: usize = quarry_attestation::snp::REPORT_LEN;

// === Dispatch and collateral cache ===

#[test]
fn verifier_set_dispatches_hardware_evidence_with_collateral_on_the_wire() {
    let set = VerifierSet::new()
        .with_dcap(SGX.verifier())
        .with_snp(SnpVerifier::new());
    let ev = Evidence {
        kind: EvidenceType::SgxDcap,
        quote: read(SGX.quote),
        collateral: Some(serde_json::from_str(&text(SGX.collateral)).unwrap()),
    };
    assert_eq!(set.verify(&ev, at(SGX.time)).unwrap().tee, TeeKind::Sgx);
    let ev = Evidence {
        kind: EvidenceType::Snp,
        quote: read(SNP_VIRTEE.report),
        collateral: Some(serde_json::to_value(SNP_VIRTEE.collateral()).unwrap()),
    };
    assert_eq!(set.verify(&ev, at(T_2025_06_01)).unwrap().tee, TeeKind::Snp);
    let ev = Evidence {
        kind: EvidenceType::TdxDcap,
        quote: read(TDX_V4.quote),
        collateral: None,
    };
    assert!(matches!(
        set.verify(&ev, at(TDX_V4.time)),
        Err(VerifyError::Unsupported(_))
    ));
}

#[test]
fn offline_cache_serves_stored_collateral_and_names_the_file_on_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CollateralCache::offline(dir.path()));
    let v = TDX_V4.verifier().with_collateral_source(cache.clone());
    let ev = Evidence {
        kind: EvidenceType::TdxDcap,
        quote: read(TDX_V4.quote),
        collateral: None,
    };
    let err = v.verify(&ev, at(TDX_V4.time)).unwrap_err();
    let path = cache.dcap_path(&DcapKey {
        tee: TeeKind::Tdx,
        fmspc: "B0C06F000000".into(),
        ca: PckCaType::Platform,
    });
    assert!(
        matches!(&err, VerifyError::Collateral(m) if m.contains(&path.display().to_string()) && m.contains("offline")),
        "{err}"
    );
    let key = DcapKey {
        tee: TeeKind::Tdx,
        fmspc: "B0C06F000000".into(),
        ca: PckCaType::Platform,
    };
    cache
        .store_dcap(&key, &parse_collateral(&text(TDX_V4.collateral)).unwrap())
        .unwrap();
    let c = v
        .verify(&ev, at(TDX_V4.time))
        .expect("served from the cache");
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    // Expired collateral in an offline cache is a refusal naming the item and since when.
    let err = v.verify(&ev, at(TDX_V4.time + 90 * 86400)).unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Expired {
                not_after: Some(_),
                ..
            }
        ) && err.to_string().contains("expired at"),
        "{err}"
    );
}

#[test]
fn offline_cache_serves_a_stored_vcek_by_chip_and_tcb() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CollateralCache::offline(dir.path()));
    let v = SnpVerifier::new().with_collateral_source(cache.clone());
    let ev = Evidence {
        kind: EvidenceType::Snp,
        quote: read(SNP_VIRTEE.report),
        collateral: None,
    };
    let err = v.verify(&ev, at(T_2025_06_01)).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Collateral(m) if m.contains("offline")),
        "{err}"
    );
    let r = read(SNP_VIRTEE.report);
    let key = quarry_attestation::collateral::SnpKey {
        product: "Milan".into(),
        chip_id: hex::encode(&r[0x1A0..0x1E0]),
        reported_tcb: quarry_api::claims::SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        },
        vlek: false,
    };
    cache.store_snp(&key, &SNP_VIRTEE.collateral()).unwrap();
    v.verify(&ev, at(T_2025_06_01))
        .expect("served from the cache");
}

/// xorshift64: deterministic pseudo-random bytes for the no-panic checks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The TCB recovery in the shared data: the v4 quote's platform (FMSPC B0C06F000000) under
/// the evaluation-20 collateral of the v5 quote, minus that collateral's PCK chain (it is
/// the other platform's; the v4 quote carries its own).
fn eval20_collateral() -> dcap_qvl::QuoteCollateralV3 {
    let mut c = parse_collateral(&text(TDX_V5.collateral)).expect("collateral parses");
    c.pck_certificate_chain = None;
    c
}

#[test]
fn a_quote_that_fell_out_of_date_names_each_component_to_raise() {
    let v = TDX_V4.verifier();
    let c = v
        .verify_quote(
            &read(TDX_V4.quote),
            Some(&eval20_collateral()),
            at(T_2026_10_20),
        )
        .expect("verifies under evaluation 20");
    assert_eq!(c.tcb_status, TcbStatus::OutOfDate);
    assert_eq!(
        c.advisory_ids,
        [
            "INTEL-SA-01192",
            "INTEL-SA-01245",
            "INTEL-SA-01312",
            "INTEL-SA-01313"
        ]
    );
    let st = c.tcb_standing.expect("DCAP claims carry the standing");
    assert_eq!(st.evaluation_data_number, 20);
    assert_eq!(st.matched_date, "2025-05-14T00:00:00Z");
    assert_eq!(st.target_date.as_deref(), Some("2025-08-13T00:00:00Z"));
    assert_eq!(st.target_status, Some(TcbStatus::UpToDate));
    let gaps: Vec<_> = st
        .to_raise
        .iter()
        .map(|g| (g.component.as_str(), g.found, g.required))
        .collect();
    assert_eq!(
        gaps,
        [
            ("CPUSVN[0]", 3, 4),
            ("CPUSVN[1]", 3, 4),
            ("TEE_TCB_SVN[2]", 3, 4),
            ("TDX_MODULE_ISVSVN", 6, 11)
        ]
    );
    assert_eq!(
        st.to_raise[1].label.as_deref(),
        Some("OS/VMM: SGX Late Microcode Update")
    );
    assert_eq!(st.to_raise[3].label.as_deref(), Some("TDX module TDX_01"));

    // The same quote under evaluation 17 (its own collateral) is UpToDate: nothing to raise.
    let c = TDX_V4.run().expect("verifies under evaluation 17");
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    let st = c.tcb_standing.expect("standing");
    assert_eq!(st.evaluation_data_number, 17);
    assert!(st.to_raise.is_empty(), "{:?}", st.to_raise);
}

#[test]
fn an_sgx_platform_without_an_up_to_date_level_is_compared_with_the_newest_level() {
    let c = SGX.run().expect("verifies");
    assert_eq!(c.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    let st = c.tcb_standing.expect("standing");
    // This FMSPC's best level is SWHardeningNeeded; component 6 is what keeps it below.
    assert_eq!(st.target_status, Some(TcbStatus::SWHardeningNeeded));
    assert_eq!(st.to_raise.len(), 1);
    assert_eq!(
        (
            st.to_raise[0].component.as_str(),
            st.to_raise[0].found,
            st.to_raise[0].required
        ),
        ("CPUSVN[6]", 0, 12)
    );
}

#[test]
fn every_verified_up_to_date_dcap_vector_has_nothing_to_raise() {
    for d in [TDX_V4, TDX_NEAR, TDX_V5] {
        let st = d.run().expect("verifies").tcb_standing.expect("standing");
        assert!(st.to_raise.is_empty(), "{}: {:?}", d.quote, st.to_raise);
        assert_eq!(st.target_status, Some(TcbStatus::UpToDate), "{}", d.quote);
    }
}

/// Every refusal of `case` with an empty verified-collateral cache, then the same with the
/// cache warmed by the honest evidence: the errors must be identical.
/// The two warm-cache tests empty the process-wide cache; they take turns.
static CACHE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn refused_cold_and_warm(
    warm_up: impl Fn() -> bool,
    case: impl Fn() -> Result<quarry_api::Claims, VerifyError>,
) -> String {
    quarry_attestation::cache::clear();
    let cold = case().expect_err("refused with a cold cache").to_string();
    assert!(warm_up(), "the honest evidence verifies");
    let warm = case().expect_err("refused with a warm cache").to_string();
    assert_eq!(cold, warm, "a warm cache changes no refusal");
    warm
}

#[test]
fn a_warm_collateral_cache_refuses_exactly_what_a_cold_one_refuses() {
    let _turn = CACHE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for v in VERIFIED_DCAP {
        let honest = || v.run().is_ok();
        // A flipped bit in the signed body (the quote's own signature is never cached).
        let mut q = read(v.quote);
        q[v.body_offset() + 64] ^= 1;
        let err = refused_cold_and_warm(honest, || v.run_with(&v.verifier(), &q, v.time));
        assert!(
            err.contains("bad signature") || err.contains("ignature"),
            "{}: {err}",
            v.quote
        );
        // Outside the collateral window, on both sides.
        for time in [v.time + 60 * 86400, v.time - 60 * 86400] {
            let q = read(v.quote);
            let err = refused_cold_and_warm(honest, || v.run_with(&v.verifier(), &q, time));
            assert!(
                err.contains("expired") || err.contains("valid"),
                "{}: {err}",
                v.quote
            );
        }
        // Collateral edited after signing: TCB info with another evaluation number, a QE
        // identity naming another ISVSVN floor, a PCK CRL with one byte changed.
        let honest_collateral = parse_collateral(&text(v.collateral)).expect("collateral");
        let mut edits: Vec<(&str, dcap_qvl::QuoteCollateralV3)> = Vec::new();
        let mut c = honest_collateral.clone();
        c.tcb_info = c.tcb_info.replacen(
            "\"tcbEvaluationDataNumber\":",
            "\"tcbEvaluationDataNumber\": ",
            1,
        );
        assert_ne!(c.tcb_info, honest_collateral.tcb_info, "{}", v.collateral);
        edits.push(("TCB info", c));
        let mut c = honest_collateral.clone();
        c.qe_identity = c.qe_identity.replacen("\"isvsvn\":", "\"isvsvn\": ", 1);
        assert_ne!(c.qe_identity, honest_collateral.qe_identity);
        edits.push(("QE identity", c));
        let mut c = honest_collateral.clone();
        let last = c.pck_crl.len() - 1;
        c.pck_crl[last] ^= 1;
        edits.push(("PCK CRL", c));
        for (what, c) in edits {
            let q = read(v.quote);
            let verifier = v.verifier();
            let err =
                refused_cold_and_warm(honest, || verifier.verify_quote(&q, Some(&c), at(v.time)));
            assert!(
                err.starts_with("bad signature"),
                "{} {what}: {err}",
                v.quote
            );
        }
        // The QE report (cached like a certificate) with one byte changed.
        let mut q = read(v.quote);
        let qe_report_at = qe_report_offset(&q);
        q[qe_report_at + 64] ^= 1;
        let err = refused_cold_and_warm(honest, || v.run_with(&v.verifier(), &q, v.time));
        assert!(err.contains("qe_report"), "{}: {err}", v.quote);
    }
    assert!(
        quarry_attestation::cache::sizes().0 > 0,
        "the cache was used"
    );
}

/// Offset of the QE report in a DCAP quote's signature data (v3: after signature and key;
/// v4/v5: after the certification data header of type 6 as well).
fn qe_report_offset(q: &[u8]) -> usize {
    let version = u16::from_le_bytes([q[0], q[1]]);
    let body_end = match version {
        3 => 48 + 384,
        4 if u32::from_le_bytes([q[4], q[5], q[6], q[7]]) == 0 => 48 + 384,
        4 => 48 + 584,
        _ => 48 + 6 + u32::from_le_bytes([q[50], q[51], q[52], q[53]]) as usize,
    };
    let sig_data = body_end + 4;
    match version {
        3 => sig_data + 64 + 64,
        _ => sig_data + 64 + 64 + 2 + 4,
    }
}

#[test]
fn a_warm_snp_chain_cache_refuses_exactly_what_a_cold_one_refuses() {
    let _turn = CACHE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let s = SNP_VIRTEE;
    let honest = || {
        SnpVerifier::new()
            .verify_report(&read(s.report), Some(&s.collateral()), at(T_2025_06_01))
            .is_ok()
    };
    let mut r = read(s.report);
    r[0x90] ^= 1;
    let err = refused_cold_and_warm(honest, || {
        SnpVerifier::new().verify_report(&r, Some(&s.collateral()), at(T_2025_06_01))
    });
    assert!(err.contains("does not verify with the VEK"), "{err}");
    for time in [1_000_000_000, 2_100_000_000] {
        refused_cold_and_warm(honest, || {
            SnpVerifier::new().verify_report(&read(s.report), Some(&s.collateral()), at(time))
        });
    }
    // Another chip's VCEK under the same chain.
    let col = SnpCollateral {
        vek: quarry_api::bytes::encode_pem("CERTIFICATE", &read(SNP_TRUSTEE.vek)),
        ca_chain: Some(text(s.chain)),
    };
    refused_cold_and_warm(honest, || {
        SnpVerifier::new().verify_report(&read(s.report), Some(&col), at(T_2025_06_01))
    });
    // A VCEK whose signature no longer matches (last byte of the DER is in the signature).
    let mut vek = read(s.vek);
    let last = vek.len() - 1;
    vek[last] ^= 1;
    let col = SnpCollateral {
        vek: quarry_api::bytes::encode_pem("CERTIFICATE", &vek),
        ca_chain: Some(text(s.chain)),
    };
    let err = refused_cold_and_warm(honest, || {
        SnpVerifier::new().verify_report(&read(s.report), Some(&col), at(T_2025_06_01))
    });
    assert!(
        err.contains("certificate chain") || err.contains("certificate"),
        "{err}"
    );
    assert!(
        quarry_attestation::cache::sizes().1 > 0,
        "the chain cache was used"
    );
}

// === platform fields (replica key sharing compares everything else) ===

#[test]
fn the_platform_fields_are_named_as_the_verifiers_emit_them_and_differ_between_real_hosts() {
    use quarry_api::claims::PLATFORM_FIELDS;
    let tdx: Vec<_> = [TDX_V4, TDX_NEAR, TDX_V5]
        .iter()
        .map(|d| d.run().expect("verifies"))
        .collect();
    let snp: Vec<_> = [SNP_VIRTEE, SNP_TRUSTEE]
        .iter()
        .map(|s| s.run().expect("verifies"))
        .collect();
    // Every platform field is one a hardware verifier emits (a renamed field would otherwise be
    // compared between replicas again and stop two hosts from sharing the key).
    let emitted = [
        ("MRSEAM", &tdx),
        ("TEETCBSVN", &tdx),
        ("ChipID", &snp),
        ("ReportVersion", &snp),
    ];
    let mut names: Vec<_> = emitted.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    let mut platform = PLATFORM_FIELDS.to_vec();
    platform.sort_unstable();
    assert_eq!(names, platform);
    for (name, claims) in emitted {
        assert!(
            claims.iter().all(|c| c.identity.fields.contains_key(name)),
            "{name} is not a field of every hardware claim of its TEE"
        );
    }
    // Real hosts differ in them: the TDX modules of these platforms, the two Milan chips.
    assert_ne!(field(&tdx[0], "MRSEAM"), field(&tdx[2], "MRSEAM"));
    assert_ne!(field(&snp[0], "ChipID"), field(&snp[1], "ChipID"));
    // What is left is the image: MRTD and the RTMRs, the SNP launch measurement.
    let image = tdx[0].identity.image_fields();
    assert!(image.contains_key("MRTD") && image.contains_key("RTMR3"));
    assert!(!image.contains_key("MRSEAM") && !image.contains_key("TEETCBSVN"));
    let image = snp[0].identity.image_fields();
    assert!(image.contains_key("Measurement") && image.contains_key("HostData"));
    assert!(!image.contains_key("ChipID") && !image.contains_key("ReportVersion"));
}
