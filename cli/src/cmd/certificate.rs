//! `quarry certificate root|mesh|chain`: the coordinator's CA certificates.

use quarry_api::http::QuoteResponse;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::client::{Client, FetchArgs};
use crate::cmd::status::warn_simulation;
use crate::output::{self, Failure};

/// Arguments of `quarry certificate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which certificate to fetch.
    #[command(subcommand)]
    pub which: Which,
}

/// The certificates the coordinator presents.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// The deployment's root CA (the last certificate of the chain): the one to pin.
    #[command(
        after_help = "Example:\n  quarry certificate root --insecure -o root.pem   # trust on first use\n  quarry certificate root --root-ca root.pem        # check it is still the same root\n\nWith --insecure the certificate is NOT verified: compare its SHA-256 out of band,\nor attest the coordinator with 'quarry verify' (coming)."
    )]
    Root(FetchArgs),
    /// The current mesh CA (intermediate; rotates on every manifest update).
    #[command(
        visible_alias = "intermediate",
        after_help = "Example:\n  quarry certificate mesh --root-ca root.pem -o mesh.pem"
    )]
    Mesh(FetchArgs),
    /// The whole chain: mesh CA, then root CA.
    #[command(after_help = "Example:\n  quarry certificate chain --root-ca root.pem -o chain.pem")]
    Chain(FetchArgs),
}

/// What `certificate` reports with `--json`.
#[derive(Serialize)]
struct Fetched<'a> {
    pem: &'a str,
    sha256: &'a str,
    verified: bool,
    simulation: bool,
}

/// Runs `quarry certificate`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let (which, cert_args) = match &args.which {
        Which::Root(a) => ("root CA", a),
        Which::Mesh(a) => ("mesh CA", a),
        Which::Chain(a) => ("CA chain", a),
    };
    let client = Client::from_args(&cert_args.connect)?;
    let quote: QuoteResponse =
        client.fetch("api/v2/quote", "fetching the coordinator's certificates")?;
    let chain = parse_chain(&quote.cert).map_err(|e| {
        Failure::new(
            format!(
                "the coordinator at {} sent a bad certificate chain: {e}",
                client.address()
            ),
            "check that --coordinator names a Quarry coordinator",
        )
    })?;
    let root = chain.last().cloned().unwrap_or_default();
    let verified = match client.pinned_root() {
        Some(pinned) => {
            if pinned.as_ref() != root.as_slice() {
                return Err(Failure::new(
                    format!(
                        "the root CA of the coordinator at {} differs from --root-ca",
                        client.address()
                    ),
                    "the deployment was re-created or this is another coordinator; attest it before trusting its new root",
                ));
            }
            true
        }
        None => false,
    };
    let selected: Vec<Vec<u8>> = match &args.which {
        Which::Root(_) => vec![root],
        Which::Mesh(_) if chain.len() >= 2 => vec![chain[0].clone()],
        Which::Mesh(_) => {
            return Err(Failure::new(
                format!(
                    "the coordinator at {} sent no mesh CA (only {} certificate)",
                    client.address(),
                    chain.len()
                ),
                "set a manifest first (quarry manifest set)",
            ))
        }
        Which::Chain(_) => chain,
    };
    let pem_text: String = selected
        .iter()
        .map(|der| quarry_api::bytes::encode_pem("CERTIFICATE", der))
        .collect();
    let sha256 = hex::encode(Sha256::digest(
        selected.last().map(Vec::as_slice).unwrap_or_default(),
    ));
    if quote.simulation {
        warn_simulation(client.address());
    }
    if !verified {
        output::warn(format!(
            "the {which} is NOT verified (trust on first use): compare SHA-256 {sha256} out of band, and attest the coordinator with 'quarry verify' (coming)"
        ));
    }
    if let Some(path) = &cert_args.output {
        output::write_file(path, pem_text.as_bytes(), 0o644)?;
    }
    if cert_args.json {
        return output::json(&Fetched {
            pem: &pem_text,
            sha256: &sha256,
            verified,
            simulation: quote.simulation,
        });
    }
    match &cert_args.output {
        Some(path) => output::line(format!(
            "wrote the {which} to {} (SHA-256 of {}: {sha256})",
            path.display(),
            if matches!(args.which, Which::Chain(_)) {
                "the root"
            } else {
                "the certificate"
            }
        )),
        None => output::stdout(pem_text.as_bytes()),
    }
}

/// The DER certificates of a PEM chain, in order; at least one.
fn parse_chain(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let mut ders = Vec::new();
    for b in blocks {
        if b.tag() != "CERTIFICATE" {
            return Err(format!("unexpected PEM block {}", b.tag()));
        }
        ders.push(b.into_contents());
    }
    if ders.is_empty() {
        return Err("no certificate".into());
    }
    Ok(ders)
}
