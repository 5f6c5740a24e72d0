//! `quarry revoke`: a user allowed `RevokeMarble` on the marble's type (or a manifest owner)
//! revokes a marble instance by UUID or one of its certificates by serial.
use quarry_api::http::{RevokeRequest, RevokeResponse};

use crate::client::{Client, ConnectArgs};
use crate::output::{self, Failure};

/// `quarry revoke`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  quarry revoke --uuid 0f8d2a8e-33a4-4c5e-9d6b-2b1f3c4d5e6f --root-ca root.pem -c admin.crt -k admin.key\n  quarry revoke --serial 4f3a…c1 --root-ca root.pem -c admin.crt -k admin.key\n\nA revoked UUID can neither renew nor activate again; every certificate it holds is listed in\nthe CRL (GET /api/v2/crl), which the sidecar proxies refresh and enforce. Revoking a serial\nrefuses that one certificate only."
)]
pub struct Args {
    /// Revoke this marble instance (all its certificates; it can never renew or activate).
    #[arg(
        long,
        value_name = "UUID",
        required_unless_present = "serial",
        conflicts_with = "serial"
    )]
    pub uuid: Option<String>,
    /// Revoke the certificate with this serial (hex, as `openssl x509 -serial` prints it).
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Print the coordinator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection and user authentication.
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// Runs `quarry revoke`.
pub fn run(args: &Args) -> Result<(), Failure> {
    if args.conn.cert.is_none() {
        return Err(Failure::usage(
            "revocation needs a user's certificate",
            "pass -c CERT -k KEY of a user with RevokeMarble on the marble's type (or UpdateManifest)",
        ));
    }
    let client = Client::from_args(&args.conn)?;
    let request = RevokeRequest {
        uuid: args.uuid.clone(),
        serial: args.serial.clone(),
    };
    let resp: RevokeResponse = client.submit("api/v2/revoke", &request, "revoking")?;
    if args.json {
        return output::json(&resp);
    }
    let what = match &args.serial {
        Some(_) => format!("certificate {}", resp.serials.join(", ")),
        None => format!("marble {}", resp.uuid),
    };
    if resp.already_revoked {
        output::line(format!(
            "{what} (type {}) was already revoked",
            resp.marble_type
        ))
    } else {
        output::line(format!(
            "revoked {what} (type {}); CRL lists {} serial(s): {}",
            resp.marble_type,
            resp.serials.len(),
            resp.serials.join(", ")
        ))
    }
}
