//! `quarry evidence verify`, `quarry explain` and `quarry package-info FILE.sig` run as a
//! binary against the shared real attestation vectors.
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const QUARRY: &str = env!("CARGO_BIN_EXE_quarry");

/// `$QUARRY_SHARED_DIR/testdata/attestation` or the first `shared/testdata/attestation`
/// above this crate. Never skipped.
fn vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation");
        if p.is_dir() {
            return p;
        }
        assert!(
            dir.pop(),
            "attestation vectors not found above {}; set QUARRY_SHARED_DIR",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

fn v(rel: &str) -> String {
    vectors().join(rel).display().to_string()
}

fn quarry(args: &[&str]) -> Output {
    Command::new(QUARRY)
        .args(args)
        .output()
        .expect("runs quarry")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn sgx_quote_verifies_when_its_tcb_status_is_accepted() {
    let q = v("sgx/dcapqvl_sgx_quote_v3.bin");
    let c = v("sgx/dcapqvl_sgx_quote_v3.collateral.json");
    let base = [
        "evidence",
        "verify",
        "--type",
        "sgx",
        "--quote",
        &q,
        "--collateral",
        &c,
    ];
    // Default policy (UpToDate, SWHardeningNeeded): refused, claims still printed.
    let o = quarry(&[&base[..], &["--at", "2025-07-01T00:00:00Z", "--json"]].concat());
    assert_eq!(o.status.code(), Some(1));
    let j = json(&o);
    assert_eq!(j["verified"], false);
    assert!(j["error"]
        .as_str()
        .unwrap()
        .contains("ConfigurationAndSWHardeningNeeded"));
    assert_eq!(
        j["claims"]["mrenclave"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    // Accepting the status: verified, exit 0; Unix seconds work as well.
    let o = quarry(
        &[
            &base[..],
            &[
                "--at",
                "1751328000",
                "--accepted-tcb-statuses",
                "UpToDate,ConfigurationAndSWHardeningNeeded",
                "--json",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json(&o);
    assert_eq!(j["verified"], true);
    assert_eq!(j["error"], Value::Null);
    let c = &j["claims"];
    assert_eq!(c["tee"], "sgx");
    assert_eq!(c["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        c["advisory_ids"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(c["debug"], false);
    assert_eq!(
        c["mrsigner"],
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(
        (c["isv_prod_id"].as_u64(), c["isv_svn"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(c["report_data"]
        .as_str()
        .unwrap()
        .starts_with(&hex::encode("Hello, world!")));
}

#[test]
fn debug_sgx_quote_is_refused_unless_allow_debug() {
    let q = v("sgx/automata_sgx_quote_v3_DEBUG.bin");
    let c = v("sgx/dcapqvl_sgx_quote_v3.collateral.json");
    let args = [
        "evidence",
        "verify",
        "--type",
        "sgx",
        "--quote",
        &q,
        "--collateral",
        &c,
        "--at",
        "1751328000",
        "--accepted-tcb-statuses",
        "ConfigurationAndSWHardeningNeeded",
        "--json",
    ];
    let o = quarry(&args);
    assert_eq!(o.status.code(), Some(1));
    let j = json(&o);
    assert!(j["error"].as_str().unwrap().contains("debug"), "{j}");
    assert_eq!(j["claims"]["debug"], true);
    let o = quarry(&[&args[..], &["--allow-debug"]].concat());
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn tdx_quotes_verify_with_their_measurements_or_give_the_recorded_refusal() {
    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl_tdx_quote_v4.bin"),
        "--collateral",
        &v("tdx/dcapqvl_tdx_quote_v4.collateral.json"),
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = &json(&o)["claims"];
    assert_eq!(c["tee"], "tdx");
    assert_eq!(c["tcb_status"], "UpToDate");
    assert_eq!(c["mrtd"], "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7");
    assert_eq!(c["rtmr3"], "00".repeat(48));
    assert_eq!(c["mrseam"], "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1");
    for k in ["rtmr0", "rtmr1", "rtmr2"] {
        assert_eq!(c[k].as_str().unwrap().len(), 96);
    }

    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl_tdx_quote_v5_td15_notcblevel.bin"),
        "--collateral",
        &v("tdx/fmspc_90C06F000000_2026-02-18.collateral.json"),
        "--at",
        "1772323200",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let j = json(&o);
    assert_eq!(j["claims"], Value::Null);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("No matching TCB level found"),
        "{j}"
    );

    // Expired collateral names the item and since when.
    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl_tdx_quote_v4.bin"),
        "--collateral",
        &v("tdx/dcapqvl_tdx_quote_v4.collateral.json"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expired at 2025-"), "{err}");
}

#[test]
fn snp_report_verifies_with_vcek_and_chain_and_prints_the_contract_keys() {
    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "snp",
        "--quote",
        &v("snp/trustee_milan_report.bin"),
        "--vcek",
        &v("snp/trustee_milan_vcek.der"),
        "--ca-chain",
        &v("snp/amd_roots/milan_ask_ark_asvk.pem"),
        "--at",
        "2025-06-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = &json(&o)["claims"];
    assert_eq!(c["tee"], "snp");
    assert_eq!(c["measurement"], "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c");
    assert_eq!(c["policy"], 0x3001f);
    assert_eq!(c["vmpl"], 0);
    assert_eq!(
        c["reported_tcb"],
        serde_json::json!({"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115})
    );
    assert_eq!(c["chip_id"].as_str().unwrap().len(), 128);
    assert_eq!(c["host_data"].as_str().unwrap().len(), 64);

    // Another chip's VCEK (PEM is accepted as well as DER) is refused.
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("vcek.pem");
    let der = std::fs::read(v("snp/virtee_milan_vcek.der")).unwrap();
    std::fs::write(
        &pem_path,
        quarry_api::bytes::encode_pem("CERTIFICATE", &der),
    )
    .unwrap();
    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "snp",
        "--quote",
        &v("snp/trustee_milan_report.bin"),
        "--vcek",
        pem_path.to_str().unwrap(),
        "--at",
        "1748736000",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(json(&o)["error"].as_str().unwrap().contains("CHIP_ID"));
}

#[test]
fn explain_prints_every_field_with_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.json");
    let m = serde_json::json!({
        "Packages": {
            "vm": {
                "TEE": "snp",
                "Measurement": "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
                "HostData": "11".repeat(32),
                "MinimumTCB": {"BootLoader": 3, "TEE": 0, "SNP": 9, "Microcode": 115}
            }
        },
        "Marbles": {"m": {"Package": "vm"}}
    });
    std::fs::write(&manifest, m.to_string()).unwrap();
    let o = quarry(&[
        "explain",
        "--manifest",
        manifest.to_str().unwrap(),
        "--package",
        "vm",
        "--type",
        "snp",
        "--quote",
        &v("snp/trustee_milan_report.bin"),
        "--vcek",
        &v("snp/trustee_milan_vcek.der"),
        "--at",
        "1748736000",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let j = json(&o);
    assert_eq!(j["verified"], true);
    assert_eq!(j["matches"], false);
    let rows = j["fields"].as_array().unwrap();
    let row = |f: &str| {
        rows.iter()
            .find(|r| r["field"] == f)
            .unwrap_or_else(|| panic!("{f} row"))
    };
    assert_eq!(row("Measurement")["ok"], true);
    assert_eq!(row("HostData")["ok"], false);
    assert_eq!(row("HostData")["expected"], "11".repeat(32));
    assert_eq!(row("HostData")["actual"], "00".repeat(32));
    assert_eq!(row("MinimumTCB")["ok"], false);
    assert!(row("MinimumTCB")["actual"]
        .as_str()
        .unwrap()
        .contains("snp 8 < 9"));
    assert_eq!(row("Debug")["ok"], true);
    // Human output lists the same rows.
    let o = quarry(&[
        "explain",
        "--manifest",
        manifest.to_str().unwrap(),
        "--package",
        "vm",
        "--type",
        "snp",
        "--quote",
        &v("snp/trustee_milan_report.bin"),
        "--vcek",
        &v("snp/trustee_milan_vcek.der"),
        "--at",
        "1748736000",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MISMATCH HostData"), "{out}");
    assert!(out.contains("ok       Measurement"), "{out}");
}

#[test]
fn package_info_reads_a_gramine_sigstruct() {
    let dir = tempfile::tempdir().unwrap();
    let sig = dir.path().join("app.manifest.sgx.sig");
    let mut modulus = [0u8; 384];
    for (i, b) in modulus.iter_mut().enumerate() {
        *b = i as u8;
    }
    let bytes = quarry_attestation::sigstruct::SigStruct::synthetic(&modulus, [0xab; 32], 7, 3);
    std::fs::write(&sig, bytes).unwrap();
    let o = quarry(&["package-info", sig.to_str().unwrap(), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json(&o);
    use sha2::Digest as _;
    assert_eq!(j["mrenclave"], "ab".repeat(32));
    assert_eq!(j["mrsigner"], hex::encode(sha2::Sha256::digest(modulus)));
    assert_eq!(
        (j["isvProdId"].as_u64(), j["isvSvn"].as_u64()),
        (Some(7), Some(3))
    );
    let o = quarry(&["package-info", sig.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("MRENCLAVE: {}", "ab".repeat(32))),
        "{out}"
    );
    assert!(out.contains("ISVPRODID: 7"), "{out}");
    // Not a SIGSTRUCT: one-line error, exit 1.
    std::fs::write(&sig, b"nope").unwrap();
    let o = quarry(&["package-info", sig.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SIGSTRUCT is 1808 bytes"));
}

#[test]
fn a_tdx_quote_under_newer_tcb_info_names_the_components_to_raise() {
    // Evaluation 20 (October 2026) for the same FMSPC, without the other platform's PCK chain.
    let text = std::fs::read_to_string(v("tdx/dcapqvl_tdx_quote_v5_td15ex.collateral.json"))
        .expect("collateral");
    let mut eval20: Value = serde_json::from_str(&text).expect("json");
    eval20
        .as_object_mut()
        .unwrap()
        .remove("pck_certificate_chain");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eval20.json");
    std::fs::write(&path, eval20.to_string()).expect("write");
    let q = v("tdx/dcapqvl_tdx_quote_v4.bin");
    let args = |json: bool| {
        let mut a = vec![
            "evidence".to_string(),
            "verify".into(),
            "--type".into(),
            "tdx".into(),
            "--quote".into(),
            q.clone(),
            "--collateral".into(),
            path.display().to_string(),
            "--at".into(),
            "2026-10-20T00:00:00Z".into(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    let run = |a: Vec<String>| Command::new(QUARRY).args(a).output().expect("runs");
    let o = run(args(false));
    assert_eq!(
        o.status.code(),
        Some(1),
        "OutOfDate is not accepted by default"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("tcb_status     OutOfDate"), "{out}");
    assert!(
        out.contains("to reach the newest UpToDate level (2025-08-13T00:00:00Z)"),
        "{out}"
    );
    assert!(
        out.contains("TEE_TCB_SVN[2] (OS/VMM: TDX Late Microcode Update): found 3, required 4"),
        "{out}"
    );
    assert!(
        out.contains("TDX_MODULE_ISVSVN (TDX module TDX_01): found 6, required 11"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("INTEL-SA-01313"), "{err}");

    let j = json(&run(args(true)));
    let st = &j["claims"]["tcb_standing"];
    assert_eq!(st["evaluation_data_number"], 20);
    assert_eq!(st["to_raise"].as_array().map(Vec::len), Some(4), "{st}");
    assert_eq!(st["to_raise"][0]["component"], "CPUSVN[0]");
    assert_eq!(st["to_raise"][0]["found"], 3);
    assert_eq!(st["to_raise"][0]["required"], 4);

    // Its own evaluation-17 collateral: UpToDate, nothing to raise.
    let o = quarry(&[
        "evidence",
        "verify",
        "--type",
        "tdx",
        "--quote",
        &q,
        "--collateral",
        &v("tdx/dcapqvl_tdx_quote_v4.collateral.json"),
        "--at",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("tcb_status     UpToDate"), "{out}");
    assert!(out.contains("to_raise       nothing"), "{out}");
}
