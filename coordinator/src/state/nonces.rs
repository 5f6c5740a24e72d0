//! Single-use activation nonces, each bound to the TLS key it was issued to.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an activation nonce stays valid.
pub const NONCE_TTL: Duration = Duration::from_secs(120);
/// Outstanding nonces at most (memory bound).
const MAX_NONCES: usize = 100_000;

/// Why a nonce was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Never issued, or already consumed.
    #[error("unknown or already used nonce")]
    Unknown,
    /// Issued more than [`NONCE_TTL`] ago.
    #[error("the nonce has expired")]
    Expired,
    /// Issued to a different TLS key than the one presenting it.
    #[error("the nonce was issued to another TLS key")]
    OtherKey,
    /// The table is full (a flood of nonce requests): retry shortly.
    #[error("too many outstanding activation nonces; retry shortly")]
    TableFull,
    /// The system RNG failed.
    #[error("system RNG failed")]
    Rng,
}

/// nonce → (SHA-256 of the TLS key it was issued to, issue time).
type Table = HashMap<[u8; 32], ([u8; 32], Instant)>;

/// Outstanding activation nonces.
#[derive(Default)]
pub struct Nonces {
    table: Mutex<Table>,
}

impl Nonces {
    /// Issues a fresh nonce bound to the TLS key with SPKI hash `owner`.
    pub fn issue(&self, owner: [u8; 32]) -> Result<[u8; 32], NonceError> {
        let mut nonce = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| NonceError::Rng)?;
        self.insert(nonce, owner, Instant::now())?;
        Ok(nonce)
    }

    fn insert(&self, nonce: [u8; 32], owner: [u8; 32], now: Instant) -> Result<(), NonceError> {
        let mut map = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NONCES / 2 {
            map.retain(|_, (_, t)| now.duration_since(*t) < NONCE_TTL);
        }
        if map.len() >= MAX_NONCES {
            return Err(NonceError::TableFull);
        }
        map.insert(nonce, (owner, now));
        Ok(())
    }

    /// Consumes `nonce`: it must exist, be fresh and belong to `owner`. A nonce is removed by
    /// any attempt, so a refused one cannot be retried either.
    pub fn take(&self, nonce: &[u8; 32], owner: &[u8; 32]) -> Result<(), NonceError> {
        let mut map = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(nonce) {
            None => Err(NonceError::Unknown),
            Some((issued_to, _)) if issued_to != *owner => Err(NonceError::OtherKey),
            Some((_, t)) if t.elapsed() >= NONCE_TTL => Err(NonceError::Expired),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once_by_its_owner() {
        let n = Nonces::default();
        let nonce = n.issue([1; 32]).unwrap();
        assert_eq!(n.take(&nonce, &[1; 32]), Ok(()));
        assert_eq!(n.take(&nonce, &[1; 32]), Err(NonceError::Unknown));
    }

    #[test]
    fn another_key_cannot_take_it_and_the_attempt_burns_it() {
        let n = Nonces::default();
        let nonce = n.issue([1; 32]).unwrap();
        assert_eq!(n.take(&nonce, &[2; 32]), Err(NonceError::OtherKey));
        assert_eq!(n.take(&nonce, &[1; 32]), Err(NonceError::Unknown));
    }

    #[test]
    fn an_old_nonce_is_expired() {
        let n = Nonces::default();
        let Some(then) = Instant::now().checked_sub(NONCE_TTL + Duration::from_secs(1)) else {
            return; // a monotonic clock this young cannot express the past
        };
        n.insert([7; 32], [1; 32], then).unwrap();
        assert_eq!(n.take(&[7; 32], &[1; 32]), Err(NonceError::Expired));
    }

    #[test]
    fn unknown_nonces_are_refused() {
        assert_eq!(
            Nonces::default().take(&[0; 32], &[0; 32]),
            Err(NonceError::Unknown)
        );
    }
}
