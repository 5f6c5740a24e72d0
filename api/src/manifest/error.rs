//! Errors and warnings of manifest parsing; each carries a JSON pointer.

/// Why a manifest was refused: the JSON pointer of the offending field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    /// JSON pointer (RFC 6901) of the field, e.g. `/Marbles/backend/Package`; `""` = the root.
    pub path: String,
    /// What is wrong (never contains secret values).
    pub message: String,
}

impl ManifestError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Something accepted but worth telling the author (unknown keys, ignored fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// JSON pointer of the field, e.g. `/Marbles/web/Parmeters`.
    pub path: String,
    /// What is worth knowing.
    pub message: String,
}

impl Warning {
    /// A warning at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Warning {
        Warning {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A JSON pointer under construction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Ptr(String);

impl Ptr {
    /// The root pointer `""`.
    pub(crate) fn root() -> Ptr {
        Ptr(String::new())
    }

    /// A pointer from its (already escaped) text.
    pub(crate) fn from_pointer(text: String) -> Ptr {
        Ptr(text)
    }

    /// This pointer extended by one reference token (escaped per RFC 6901).
    pub(crate) fn join(&self, token: impl std::fmt::Display) -> Ptr {
        let token = token.to_string().replace('~', "~0").replace('/', "~1");
        Ptr(format!("{}/{}", self.0, token))
    }

    /// The pointer text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// An error at this pointer.
    pub(crate) fn err(&self, message: impl Into<String>) -> ManifestError {
        ManifestError::new(self.0.clone(), message)
    }

    /// A warning at this pointer.
    pub(crate) fn warn(&self, message: impl Into<String>) -> Warning {
        Warning::new(self.0.clone(), message)
    }
}
