//! A wrapper for secret values: zeroized on drop, redacted in `Debug`.
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes. `Debug` prints only the length; memory is wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap bytes.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// Borrow the secret bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    fn from(v: Vec<u8>) -> Secret {
        Secret(v)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret([REDACTED; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = Secret::new(b"hunter2".to_vec());
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("REDACTED"));
    }
}
