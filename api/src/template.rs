//! The template language of `Parameters.Files` and `Parameters.Env` (contract §5).
//!
//! A strict subset of Go `text/template` as MarbleRun uses it: literal text with actions
//! `{{ fn ref }}` or `{{ ref | fn }}`, where `fn` is one of `pem`, `hex`, `raw`, `base64`,
//! `string` and `ref` names a secret or a reserved certificate. Trim markers `{{-` and `-}}`
//! remove the adjacent whitespace as in Go. Anything else is an error.
mod parse;
mod render;
#[cfg(test)]
mod tests;

pub use render::{MaterialKind, SecretMaterial, TemplateContext};

/// Where a template is rendered; decides which functions are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A file (`Parameters.Files`): `string` is not allowed.
    File,
    /// An environment variable (`Parameters.Env`): `raw` is not allowed, no NUL bytes.
    Env,
}

impl Target {
    /// The manifest section name (`Files` or `Env`).
    pub fn section(self) -> &'static str {
        match self {
            Target::File => "Files",
            Target::Env => "Env",
        }
    }
}

/// A template function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoder {
    /// PEM block (`CERTIFICATE`, `PUBLIC KEY` or `PRIVATE KEY`).
    Pem,
    /// Lowercase hex.
    Hex,
    /// The bytes as they are (Files only).
    Raw,
    /// Standard padded base64.
    Base64,
    /// The value of a `plain` secret as text (Env only).
    String,
}

impl Encoder {
    /// The function name as written in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoder::Pem => "pem",
            Encoder::Hex => "hex",
            Encoder::Raw => "raw",
            Encoder::Base64 => "base64",
            Encoder::String => "string",
        }
    }

    /// Parse a function name (case-sensitive, as Go).
    pub fn parse(name: &str) -> Option<Encoder> {
        match name {
            "pem" => Some(Encoder::Pem),
            "hex" => Some(Encoder::Hex),
            "raw" => Some(Encoder::Raw),
            "base64" => Some(Encoder::Base64),
            "string" => Some(Encoder::String),
            _ => None,
        }
    }
}

/// A part of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The certificate (DER).
    Cert,
    /// The public key (PKIX DER; the key itself for symmetric and plain secrets).
    Public,
    /// The private key (PKCS#8 DER; the key itself for symmetric and plain secrets).
    Private,
}

impl Part {
    /// The field name as written in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Cert => "Cert",
            Part::Public => "Public",
            Part::Private => "Private",
        }
    }

    fn parse(name: &str) -> Option<Part> {
        match name {
            "Cert" => Some(Part::Cert),
            "Public" => Some(Part::Public),
            "Private" => Some(Part::Private),
            _ => None,
        }
    }
}

/// What an action refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// `.Secrets.<name>[.<part>]`, or `.Previous.Secrets…` when `previous`.
    Secret {
        /// The secret name (a key of `Secrets`).
        name: String,
        /// The part, or `None` for the bare secret.
        part: Option<Part>,
        /// True for the value before the last rotation or update.
        previous: bool,
    },
    /// `.MarbleRun.RootCA.Cert`: the deployment's root certificate.
    RootCa,
    /// `.MarbleRun.MarbleCert.<part>`: the marble's own leaf certificate and key.
    MarbleCert(Part),
    /// `.MarbleRun.CoordinatorRoot.Cert`.
    CoordinatorRoot,
    /// `.MarbleRun.CoordinatorIntermediate.Cert`: the current mesh CA.
    CoordinatorIntermediate,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Secret {
                name,
                part,
                previous,
            } => {
                if *previous {
                    f.write_str(".Previous")?;
                }
                write!(f, ".Secrets.{name}")?;
                if let Some(p) = part {
                    write!(f, ".{}", p.as_str())?;
                }
                Ok(())
            }
            Reference::RootCa => f.write_str(".MarbleRun.RootCA.Cert"),
            Reference::MarbleCert(p) => write!(f, ".MarbleRun.MarbleCert.{}", p.as_str()),
            Reference::CoordinatorRoot => f.write_str(".MarbleRun.CoordinatorRoot.Cert"),
            Reference::CoordinatorIntermediate => {
                f.write_str(".MarbleRun.CoordinatorIntermediate.Cert")
            }
        }
    }
}

/// One `{{ … }}` action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Action {
    /// The function applied.
    pub encoder: Encoder,
    /// What it is applied to.
    pub reference: Reference,
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal bytes, copied as they are.
    Literal(Vec<u8>),
    /// An action, replaced by its rendered value.
    Action(Action),
}

/// A parsed template: literal pieces and actions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parse template text for a target, enforcing which function works where.
    pub fn parse(text: &str, target: Target) -> Result<Template, TemplateError> {
        Template::parse_bytes(text.as_bytes(), target)
    }

    /// Parse template bytes (data decoded from the manifest need not be UTF-8 outside actions).
    pub fn parse_bytes(text: &[u8], target: Target) -> Result<Template, TemplateError> {
        let pieces = parse::parse(text)?;
        for piece in &pieces {
            if let Piece::Action(action) = piece {
                check_placement(action, target)?;
            }
        }
        Ok(Template { pieces })
    }

    /// The actions, in order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Action(a) => Some(a),
            Piece::Literal(_) => None,
        })
    }

    /// The literal pieces and actions, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// True when the template has no actions.
    pub fn is_literal(&self) -> bool {
        self.actions().next().is_none()
    }

    /// Render with the secrets `ctx` provides.
    pub fn render(
        &self,
        ctx: &dyn TemplateContext,
        target: Target,
    ) -> Result<crate::http::Value, TemplateError> {
        render::render(self, ctx, target)
    }
}

/// Why a template cannot be parsed or rendered. Never contains secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Not valid template syntax (or Go template syntax Quarry does not support).
    #[error("template syntax: {0}")]
    Syntax(String),
    /// A function that is not one of pem, hex, raw, base64, string.
    #[error("unknown template function {0:?} (allowed: pem, hex, raw, base64, string)")]
    UnknownFunction(String),
    /// A reference outside the supported data (`.Secrets`, `.Previous.Secrets`, `.MarbleRun`).
    #[error("unknown template reference {0:?}")]
    UnknownReference(String),
    /// A reserved certificate accessed with something other than `.Cert`.
    #[error("{reserved} supports only .Cert, not {part}")]
    ReservedPart {
        /// `RootCA`, `CoordinatorRoot` or `CoordinatorIntermediate`.
        reserved: &'static str,
        /// What was asked for.
        part: String,
    },
    /// A function used where it is not allowed (`raw` in Env, `string` in Files).
    #[error("function {function} is not allowed in {section}{hint}")]
    NotAllowedHere {
        /// The function.
        function: &'static str,
        /// `Files` or `Env`.
        section: &'static str,
        /// What to use instead.
        hint: &'static str,
    },
    /// A function applied to a reference it cannot encode.
    #[error("function {function} cannot be applied to {reference}: {reason}")]
    Unsupported {
        /// The function.
        function: &'static str,
        /// The reference, as written.
        reference: String,
        /// Why.
        reason: &'static str,
    },
    /// The context could not provide the reference (e.g. an undefined secret).
    #[error("{reference}: {message}")]
    Lookup {
        /// The reference, as written.
        reference: String,
        /// The context's message.
        message: String,
    },
    /// The referenced value is empty.
    #[error("secret {0} has no value")]
    EmptyValue(String),
    /// The rendered environment value contains a NUL byte.
    #[error("rendered Env value contains a NUL byte")]
    NulInEnv,
}

fn check_placement(action: &Action, target: Target) -> Result<(), TemplateError> {
    match (action.encoder, target) {
        (Encoder::Raw, Target::Env) => Err(TemplateError::NotAllowedHere {
            function: "raw",
            section: "Env",
            hint: " (use hex, base64 or, for plain secrets, string)",
        }),
        (Encoder::String, Target::File) => Err(TemplateError::NotAllowedHere {
            function: "string",
            section: "Files",
            hint: " (string works only in Env; use raw)",
        }),
        _ => Ok(()),
    }
}
