//! `quarry secret get|set`: users read and write secrets within their roles.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::client::{Client, ConnectArgs};
use crate::output::{self, Failure};

/// `quarry secret`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// Subcommands of `quarry secret`.
#[derive(clap::Subcommand, Debug)]
pub enum SecretCommand {
    /// Read secrets (role ReadSecret); prints JSON.
    #[command(
        after_help = "Example:\n  quarry secret get api_key db_password --root-ca root.pem -c reader.crt -k reader.key"
    )]
    Get(GetArgs),
    /// Write user-defined secrets (role WriteSecret) from a JSON file
    /// `{"name": {"Key": b64} | {"Cert": b64 DER, "Private": b64 PKCS#8}}`, or one certificate
    /// secret from a PEM file with --from-pem NAME.
    #[command(
        after_help = "Examples:\n  quarry secret set secrets.json --root-ca root.pem -c writer.crt -k writer.key\n  quarry secret set tls.pem --from-pem tls_cert --root-ca root.pem -c writer.crt -k writer.key"
    )]
    Set(SetArgs),
}

/// `secret get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Secret names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Connection and user authentication.
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Write the JSON here (mode 0600) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `secret set`.
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// JSON file of secrets, or a PEM file with --from-pem.
    pub file: PathBuf,
    /// Treat FILE as PEM (certificate + private key) for the secret NAME.
    #[arg(long, value_name = "NAME")]
    pub from_pem: Option<String>,
    /// Connection and user authentication.
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// Runs `quarry secret …`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        SecretCommand::Get(a) => {
            let client = Client::from_args(&a.conn)?;
            let query: String = a
                .names
                .iter()
                .map(|n| format!("s={}", urlencode(n)))
                .collect::<Vec<_>>()
                .join("&");
            let v: Value = client.fetch(&format!("api/v2/secrets?{query}"), "reading secrets")?;
            let text = serde_json::to_vec_pretty(&v["secrets"])
                .map_err(|e| Failure::bare(e.to_string()))?;
            match &a.output {
                Some(p) => output::write_file(p, &text, 0o600),
                None => output::stdout(&text),
            }
        }
        SecretCommand::Set(a) => {
            let bytes = output::read_file(&a.file, "secrets")?;
            let secrets: BTreeMap<String, Value> = match &a.from_pem {
                Some(name) => BTreeMap::from([(name.clone(), from_pem(&bytes)?)]),
                None => serde_json::from_slice(&bytes).map_err(|e| {
                    Failure::new(
                        format!("{} is not a JSON object of secrets: {e}", a.file.display()),
                        "write {\"name\": {\"Key\": \"base64\"}}",
                    )
                })?,
            };
            let names: Vec<String> = secrets.keys().cloned().collect();
            let client = Client::from_args(&a.conn)?;
            let _: Value = client.submit(
                "api/v2/secrets",
                &json!({ "secrets": secrets }),
                "writing secrets",
            )?;
            output::line(format!("set: {}", names.join(", ")))
        }
    }
}

fn from_pem(bytes: &[u8]) -> Result<Value, Failure> {
    let blocks = pem::parse_many(bytes)
        .map_err(|e| Failure::new(format!("not PEM: {e}"), "pass a PEM certificate and key"))?;
    let cert = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| Failure::new("no CERTIFICATE in the PEM file", "add the certificate"))?;
    let mut v = json!({ "Cert": quarry_api::bytes::b64(cert.contents()) });
    if let Some(k) = blocks.iter().find(|b| b.tag() == "PRIVATE KEY") {
        v["Private"] = quarry_api::bytes::b64(k.contents()).into();
    }
    Ok(v)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
