//! `quarry sign-quote`: have the coordinator verify an SGX (or TDX) quote and sign its TCB
//! status (`POST /api/v2/sign-quote`, feature gate `SignQuoteEndpoint`), then check the
//! signature offline against the pinned root CA, as any relying party can.
use std::path::PathBuf;

use quarry_api::http::{SignQuoteRequest, SignQuoteResponse};
use serde::Serialize;

use crate::client::{Client, ConnectArgs};
use crate::output::{self, Failure};

/// `quarry sign-quote`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  quarry sign-quote --quote enclave.quote --root-ca root.pem\n  quarry sign-quote --quote enclave.quote --root-ca root.pem --json\n\nThe manifest must list SignQuoteEndpoint in Config.FeatureGates. The coordinator verifies\nthe quote with its own collateral (not against the manifest) and signs\nbase64(quote) + tcbStatus with its root CA key; this command checks that signature against\nthe root CA given with --root-ca (pin it with `quarry verify --root-out`). A TCB status such\nas OutOfDate is reported and signed, not refused: decide yourself what to accept."
)]
pub struct Args {
    /// The quote file (raw bytes, as the enclave produced it).
    #[arg(long, value_name = "FILE")]
    pub quote: PathBuf,
    /// Print the status, signature and what was checked as JSON.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address and trust (--root-ca is required: the signature is checked against it).
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// What `--json` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    tcb_status: String,
    verification_signature: String,
    signature_verified: bool,
    root_ca_sha256: String,
}

/// Runs `quarry sign-quote`.
pub fn run(args: &Args) -> Result<(), Failure> {
    if args.conn.server.root_ca.is_none() {
        return Err(Failure::usage(
            "sign-quote checks the coordinator's signature against its root CA, and none is pinned",
            "pass --root-ca FILE (or QUARRY_ROOT_CA) with the root CA from `quarry verify --root-out`",
        ));
    }
    let quote = output::read_file(&args.quote, "quote")?;
    if quote.is_empty() {
        return Err(Failure::usage(
            format!("the quote file {} is empty", args.quote.display()),
            "pass the quote the enclave produced (raw bytes)",
        ));
    }
    let client = Client::from_args(&args.conn)?;
    let root = client
        .pinned_root()
        .ok_or_else(|| Failure::bare("no pinned root CA"))?
        .to_vec();
    let request = SignQuoteRequest {
        sgx_quote: quarry_api::bytes::b64(&quote),
    };
    let resp: SignQuoteResponse =
        client.submit("api/v2/sign-quote", &request, "having the quote signed")?;
    quarry_api::quote_signature::verify(
        &root,
        &quote,
        &resp.tcb_status,
        &resp.verification_signature,
    )
    .map_err(|e| {
        Failure::new(
            format!("the coordinator's answer does not verify: {e}"),
            "check that --root-ca is this deployment's attested root CA; do not trust this status",
        )
    })?;
    let root_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&root));
    if args.json {
        return output::json(&Report {
            tcb_status: resp.tcb_status,
            verification_signature: resp.verification_signature,
            signature_verified: true,
            root_ca_sha256: root_sha256,
        });
    }
    output::line(format!(
        "TCB status: {}\nverificationSignature: {}\nsignature verified against the root CA (SHA-256 {root_sha256})",
        resp.tcb_status, resp.verification_signature
    ))
}
