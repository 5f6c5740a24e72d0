//! Lexing and parsing of template text into pieces.
use super::{Action, Encoder, Part, Piece, Reference, TemplateError};

const OPEN: &[u8] = b"{{";
const CLOSE: &[u8] = b"}}";

/// Split template bytes into literal pieces and actions.
pub(super) fn parse(text: &[u8]) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut literal: Vec<u8> = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = find(rest, OPEN) {
        let mut before = &rest[..start];
        if trim_next {
            before = trim_start(before);
        }
        literal.extend_from_slice(before);
        let after_open = &rest[start + OPEN.len()..];
        let end = find(after_open, CLOSE)
            .ok_or_else(|| TemplateError::Syntax("unclosed action: missing \"}}\"".to_string()))?;
        let mut inner = &after_open[..end];
        // Go trim markers: "{{- " and " -}}" (the space is required).
        if inner.len() >= 2 && inner[0] == b'-' && is_space(inner[1]) {
            inner = &inner[1..];
            let kept = trim_end(&literal).len();
            literal.truncate(kept);
        }
        trim_next = false;
        if inner.len() >= 2 && inner[inner.len() - 1] == b'-' && is_space(inner[inner.len() - 2]) {
            inner = &inner[..inner.len() - 1];
            trim_next = true;
        }
        let action = parse_action(inner)?;
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Action(action));
        rest = &after_open[end + CLOSE.len()..];
    }
    let tail = if trim_next { trim_start(rest) } else { rest };
    literal.extend_from_slice(tail);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

fn parse_action(inner: &[u8]) -> Result<Action, TemplateError> {
    let text = std::str::from_utf8(inner)
        .map_err(|_| TemplateError::Syntax("action is not valid UTF-8".to_string()))?;
    let spaced = text.replace('|', " | ");
    let tokens: Vec<&str> = spaced.split_ascii_whitespace().collect();
    let (function, reference) = match tokens.as_slice() {
        [] => return Err(TemplateError::Syntax("empty action \"{{ }}\"".to_string())),
        [f, r] if !f.starts_with('.') => (*f, *r),
        [r, "|", f] if r.starts_with('.') => (*r, *f),
        _ => {
            if text.trim_start().starts_with("/*") {
                return Err(TemplateError::Syntax(
                    "comments are not supported".to_string(),
                ));
            }
            return Err(TemplateError::Syntax(format!(
                "unsupported action {{{{{}}}}}: expected {{{{ <function> <reference> }}}} or \
                 {{{{ <reference> | <function> }}}}",
                text
            )));
        }
    };
    // For the pipeline form the pair is (reference, function); normalise the order.
    let (function, reference) = if function.starts_with('.') {
        (reference, function)
    } else {
        (function, reference)
    };
    let encoder =
        Encoder::parse(function).ok_or_else(|| TemplateError::UnknownFunction(function.into()))?;
    let reference = parse_reference(reference)?;
    check_function(encoder, &reference)?;
    Ok(Action { encoder, reference })
}

fn parse_reference(text: &str) -> Result<Reference, TemplateError> {
    let unknown = || TemplateError::UnknownReference(text.to_string());
    let body = text.strip_prefix('.').ok_or_else(unknown)?;
    let segments: Vec<&str> = body.split('.').collect();
    if segments.iter().any(|s| !is_identifier(s)) {
        return Err(unknown());
    }
    let part = |name: &str| Part::parse(name).ok_or_else(unknown);
    match segments.as_slice() {
        ["Secrets", name] => Ok(secret(name, None, false)),
        ["Secrets", name, p] => Ok(secret(name, Some(part(p)?), false)),
        ["Previous", "Secrets", name] => Ok(secret(name, None, true)),
        ["Previous", "Secrets", name, p] => Ok(secret(name, Some(part(p)?), true)),
        [ns, rest @ ..] if *ns == "MarbleRun" || *ns == "Quarry" => reserved(rest, text),
        _ => Err(unknown()),
    }
}

fn secret(name: &str, part: Option<Part>, previous: bool) -> Reference {
    Reference::Secret {
        name: name.to_string(),
        part,
        previous,
    }
}

fn reserved(rest: &[&str], text: &str) -> Result<Reference, TemplateError> {
    let (which, part) = match rest {
        [which] => (*which, None),
        [which, part] => (*which, Some(*part)),
        _ => return Err(TemplateError::UnknownReference(text.to_string())),
    };
    let (name, reference): (&'static str, Reference) = match which {
        "RootCA" => ("RootCA", Reference::RootCa),
        "CoordinatorRoot" => ("CoordinatorRoot", Reference::CoordinatorRoot),
        "CoordinatorIntermediate" => (
            "CoordinatorIntermediate",
            Reference::CoordinatorIntermediate,
        ),
        "MarbleCert" => {
            return match part.and_then(Part::parse) {
                Some(p) => Ok(Reference::MarbleCert(p)),
                None => Err(TemplateError::Unsupported {
                    function: "any function",
                    reference: text.to_string(),
                    reason: "MarbleCert needs .Cert, .Public or .Private",
                }),
            };
        }
        _ => return Err(TemplateError::UnknownReference(text.to_string())),
    };
    match part {
        Some("Cert") => Ok(reference),
        other => Err(TemplateError::ReservedPart {
            reserved: name,
            part: other.map_or_else(|| "the bare value".to_string(), |p| format!(".{p}")),
        }),
    }
}

/// Checks that do not depend on the secret's kind.
fn check_function(encoder: Encoder, reference: &Reference) -> Result<(), TemplateError> {
    let unsupported = |reason| TemplateError::Unsupported {
        function: encoder.as_str(),
        reference: reference.to_string(),
        reason,
    };
    match (encoder, reference) {
        (Encoder::Pem, Reference::Secret { part: None, .. }) => Err(unsupported(
            "pem needs .Cert, .Public or .Private of a secret",
        )),
        (Encoder::String, Reference::Secret { part: None, .. }) => Ok(()),
        (Encoder::String, _) => Err(unsupported(
            "string works only on a bare plain secret such as .Secrets.name",
        )),
        _ => Ok(()),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| is_space(**c)).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|c| is_space(**c)).count();
    &b[..b.len() - n]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
