//! `quarry recover`: upload one recovery secret, signed by its recovery key, to a coordinator
//! in Recovery (state 1).
use std::path::{Path, PathBuf};

use quarry_api::http::{RecoverRequest, RecoverResponse};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::sha2::{Digest as _, Sha256};
use rsa::{Oaep, Pkcs1v15Sign, RsaPrivateKey};

use crate::client::{Client, ConnectArgs, CoordinatorArgs};
use crate::output::{self, Failure};

/// Length of a plaintext recovery secret (single key or XOR share).
const SECRET_LEN: usize = 32;
/// Length of a plaintext Shamir share.
const SHARE_LEN: usize = 33;

/// Arguments of `quarry recover`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  jq -r '.RecoverySecrets.alice' recovery.json | base64 -d > alice.enc
  quarry recover alice.enc -k alice.pem --root-ca recovery-root.pem
  quarry recover alice.secret --signature alice.sig --root-ca recovery-root.pem   # signed offline

FILE holds the recovery secret as returned at manifest set (RSA-OAEP ciphertext, raw or
base64): with -k it is decrypted and signed (RSA-PKCS1v15-SHA256) with that key. Without -k,
FILE is the already-decrypted secret (or it encrypted to GET /api/v2/recover/public-key) and
--signature is its signature. Repeat per key holder until the coordinator reports success.

In Recovery the coordinator serves a temporary root CA: attest it first (quarry verify
--root-out recovery-root.pem) and pass that as --root-ca, so the secret goes only to a
coordinator whose evidence you checked.")]
pub struct Args {
    /// The recovery secret file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Recovery private key (PEM, PKCS#8 or PKCS#1): decrypts FILE if needed and signs it.
    #[arg(
        short = 'k',
        long = "key",
        value_name = "KEY",
        required_unless_present = "signature"
    )]
    pub key: Option<PathBuf>,
    /// Signature over the plaintext secret (raw or base64), when FILE was signed offline.
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    pub signature: Option<PathBuf>,
    /// Where the coordinator is and how it is authenticated (the secret may reach an impostor
    /// with --insecure).
    #[command(flatten)]
    pub server: CoordinatorArgs,
    /// Print the coordinator's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Raw bytes, or base64 text decoded (a file written by `base64` or copied from JSON).
fn raw_or_base64(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes);
    let compact: String = text.split_whitespace().collect();
    match quarry_api::bytes::unb64(&compact) {
        Ok(decoded) if !compact.is_empty() && std::str::from_utf8(&bytes).is_ok() => decoded,
        _ => bytes,
    }
}

fn load_key(path: &Path) -> Result<RsaPrivateKey, Failure> {
    let bytes = output::read_file(path, "recovery key")?;
    let text = String::from_utf8_lossy(&bytes);
    RsaPrivateKey::from_pkcs8_pem(text.trim())
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text.trim()))
        .map_err(|_| {
            Failure::new(
                format!("{}: not an RSA private key in PEM form", path.display()),
                "pass the private key of your RecoveryKeys entry (PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\")",
            )
        })
}

/// Runs `quarry recover`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let secret = raw_or_base64(output::read_file(&args.file, "recovery secret")?);
    let request = match (&args.key, &args.signature) {
        (Some(key_path), _) => {
            let key = load_key(key_path)?;
            let plain = if secret.len() == SECRET_LEN || secret.len() == SHARE_LEN {
                secret
            } else {
                key.decrypt(Oaep::new::<Sha256>(), &secret).map_err(|_| {
                    Failure::new(
                        format!(
                            "{} does not decrypt with {} (RSA-OAEP-SHA256)",
                            args.file.display(),
                            key_path.display()
                        ),
                        "pass the secret issued to this key (RecoverySecrets.<name>, base64-decoded) and its private key",
                    )
                })?
            };
            let signature = key
                .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&plain))
                .map_err(|e| Failure::bare(format!("signing the recovery secret: {e}")))?;
            RecoverRequest {
                recovery_secret: plain,
                recovery_secret_signature: signature,
            }
        }
        (None, Some(sig_path)) => RecoverRequest {
            recovery_secret: secret,
            recovery_secret_signature: raw_or_base64(output::read_file(sig_path, "signature")?),
        },
        (None, None) => return Err(Failure::usage(
            "neither -k KEY nor --signature FILE given",
            "pass the recovery private key with -k, or a signature made offline with --signature",
        )),
    };
    let connect = ConnectArgs {
        server: args.server.clone(),
        cert: None,
        key: None,
    };
    let client = Client::from_args(&connect)?;
    let answer: RecoverResponse =
        client.submit("api/v2/recover", &request, "uploading the recovery secret")?;
    if args.json {
        return output::json(&answer);
    }
    if answer.remaining > 0 {
        output::line(format!(
            "secret accepted; {} more recovery secret(s) needed from other key holders",
            answer.remaining
        ))
    } else {
        output::line(format!(
            "{} The coordinator serves the recovered state again.",
            answer.message
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_raw_or_as_base64() {
        let raw = vec![0xffu8, 0x00, 0x80, 0x41];
        assert_eq!(raw_or_base64(raw.clone()), raw);
        assert_eq!(raw_or_base64(b"AQID\n".to_vec()), vec![1, 2, 3]);
    }
}
