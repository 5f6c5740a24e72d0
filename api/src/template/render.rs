//! Rendering parsed templates against secret material.
use crate::http::{KeyEncoding, Segment, Value};
use crate::manifest::SecretKind;

use super::{Action, Encoder, Part, Piece, Reference, Target, Template, TemplateError};

/// What kind of value a [`SecretMaterial`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterialKind {
    /// A manifest secret of the given kind.
    Secret(SecretKind),
    /// A reserved certificate (`RootCA`, `CoordinatorRoot`, `CoordinatorIntermediate`,
    /// `MarbleCert`).
    Reserved,
}

/// The value of a referenced secret, as the renderer needs it.
#[derive(Debug, Clone)]
pub struct SecretMaterial {
    /// The kind of value.
    pub kind: MaterialKind,
    /// The certificate (DER), for certificate kinds.
    pub cert_der: Option<Vec<u8>>,
    /// PKIX DER public key for certificate kinds; the key itself for symmetric and plain.
    pub public: Vec<u8>,
    /// PKCS#8 DER private key for certificate kinds; the key itself for symmetric and plain.
    pub private: crate::Secret,
}

/// Source of secret material while rendering.
pub trait TemplateContext {
    /// The material for a reference, or a message saying why it is unavailable (never
    /// containing secret bytes).
    fn lookup(&self, reference: &Reference) -> Result<SecretMaterial, String>;
}

pub(super) fn render(
    template: &Template,
    ctx: &dyn TemplateContext,
    target: Target,
) -> Result<Value, TemplateError> {
    let mut segments: Vec<Segment> = Vec::new();
    let push_data = |segments: &mut Vec<Segment>, bytes: &[u8]| {
        if let Some(Segment::Data(last)) = segments.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            segments.push(Segment::Data(bytes.to_vec()));
        }
    };
    for piece in template.pieces() {
        match piece {
            Piece::Literal(bytes) => push_data(&mut segments, bytes),
            Piece::Action(action) => {
                super::check_placement(action, target)?;
                match render_action(action, ctx)? {
                    Rendered::Bytes(bytes) => push_data(&mut segments, &bytes),
                    Rendered::MarbleKey(enc) => segments.push(Segment::MarblePrivateKey(enc)),
                }
            }
        }
    }
    if target == Target::Env {
        let has_nul = segments
            .iter()
            .any(|s| matches!(s, Segment::Data(d) if d.contains(&0)));
        if has_nul {
            return Err(TemplateError::NulInEnv);
        }
    }
    Ok(Value(segments))
}

enum Rendered {
    Bytes(Vec<u8>),
    MarbleKey(KeyEncoding),
}

fn render_action(action: &Action, ctx: &dyn TemplateContext) -> Result<Rendered, TemplateError> {
    let reference = &action.reference;
    let unsupported = |reason| TemplateError::Unsupported {
        function: action.encoder.as_str(),
        reference: reference.to_string(),
        reason,
    };
    if let Reference::MarbleCert(Part::Private) = reference {
        // Only the sidecar holds the marble's key; it fills this segment in.
        return match action.encoder {
            Encoder::Pem => Ok(Rendered::MarbleKey(KeyEncoding::Pem)),
            Encoder::Raw => Ok(Rendered::MarbleKey(KeyEncoding::Raw)),
            Encoder::Hex => Ok(Rendered::MarbleKey(KeyEncoding::Hex)),
            Encoder::Base64 => Ok(Rendered::MarbleKey(KeyEncoding::Base64)),
            Encoder::String => Err(unsupported("string works only on plain secrets")),
        };
    }
    let material = ctx
        .lookup(reference)
        .map_err(|message| TemplateError::Lookup {
            reference: reference.to_string(),
            message,
        })?;
    let part = match reference {
        Reference::Secret { part, .. } => *part,
        Reference::MarbleCert(p) => Some(*p),
        Reference::RootCa | Reference::CoordinatorRoot | Reference::CoordinatorIntermediate => {
            Some(Part::Cert)
        }
    };
    let bytes: &[u8] = match part {
        None | Some(Part::Public) => &material.public,
        Some(Part::Cert) => material.cert_der.as_deref().unwrap_or_default(),
        Some(Part::Private) => material.private.expose(),
    };
    if bytes.is_empty() {
        return Err(TemplateError::EmptyValue(reference.to_string()));
    }
    let out = match action.encoder {
        Encoder::Raw => bytes.to_vec(),
        Encoder::Hex => hex::encode(bytes).into_bytes(),
        Encoder::Base64 => crate::bytes::b64(bytes).into_bytes(),
        Encoder::Pem => {
            let label = match part {
                Some(Part::Cert) => "CERTIFICATE",
                Some(Part::Public) => "PUBLIC KEY",
                Some(Part::Private) => "PRIVATE KEY",
                None => return Err(unsupported("pem needs .Cert, .Public or .Private")),
            };
            pem::encode_config(
                &pem::Pem::new(label, bytes.to_vec()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
            .into_bytes()
        }
        Encoder::String => {
            if material.kind != MaterialKind::Secret(SecretKind::Plain) || part.is_some() {
                return Err(unsupported("string works only on plain secrets"));
            }
            if bytes.contains(&0) {
                return Err(TemplateError::NulInEnv);
            }
            bytes.to_vec()
        }
    };
    Ok(Rendered::Bytes(out))
}
