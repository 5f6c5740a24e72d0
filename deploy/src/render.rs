//! Template rendering: `{{ expr }}` replaced by the value given for `expr`, nothing else.
//!
//! Quarry's templates use only plain substitutions so that this renderer and Gramine's
//! Jinja-based `gramine-manifest` produce the same text. Anything Jinja would treat as a
//! statement or comment (`{%`, `{#`) is refused rather than passed through.
use std::collections::BTreeMap;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `{{` without a matching `}}`, at this byte offset.
    #[error("`{{{{` at byte {offset} is never closed")]
    Unclosed {
        /// Byte offset of the `{{`.
        offset: usize,
    },
    /// A variable the caller gave no value for.
    #[error("line {line}: no value for template variable `{name}`")]
    UnknownVariable {
        /// The expression between the braces, trimmed.
        name: String,
        /// 1-based line of the template.
        line: usize,
    },
    /// A Jinja statement or comment, which Quarry's templates must not use.
    #[error("line {line}: Jinja statements and comments are not allowed in Quarry templates")]
    Statement {
        /// 1-based line of the template.
        line: usize,
    },
}

/// Renders `template`, replacing each `{{ expr }}` with `vars[expr]` (`expr` trimmed).
pub fn render(template: &str, vars: &BTreeMap<&str, &str>) -> Result<String, RenderError> {
    let line_of = |offset: usize| template[..offset].matches('\n').count() + 1;
    for pat in ["{%", "{#"] {
        if let Some(at) = template.find(pat) {
            return Err(RenderError::Statement { line: line_of(at) });
        }
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut base = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(RenderError::Unclosed {
            offset: base + start,
        })?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| RenderError::UnknownVariable {
            name: name.to_string(),
            line: line_of(base + start),
        })?;
        out.push_str(value);
        let consumed = start + 2 + end + 2;
        base += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([("a", "1"), ("gramine.runtimedir()", "/rt")])
    }

    #[test]
    fn substitutes_trimmed_expressions_including_calls() {
        assert_eq!(
            render("x = {{a}} {{  gramine.runtimedir() }}/", &vars()).unwrap(),
            "x = 1 /rt/"
        );
    }

    #[test]
    fn unknown_variable_is_refused_with_its_line() {
        assert_eq!(
            render("ok\n{{ b }}", &vars()).unwrap_err(),
            RenderError::UnknownVariable {
                name: "b".into(),
                line: 2
            }
        );
    }

    #[test]
    fn jinja_statements_are_refused() {
        assert_eq!(
            render("{% if a %}x{% endif %}", &vars()).unwrap_err(),
            RenderError::Statement { line: 1 }
        );
    }

    #[test]
    fn unclosed_braces_are_refused() {
        assert_eq!(
            render("a {{ a", &vars()).unwrap_err(),
            RenderError::Unclosed { offset: 2 }
        );
    }
}
