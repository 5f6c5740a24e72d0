//! Gramine / Intel SGX SIGSTRUCT (`.sig`) reading: the reference values of an SGX package.
use sha2::{Digest, Sha256};

/// Size of a SIGSTRUCT.
pub const SIGSTRUCT_LEN: usize = 1808;
const HEADER: [u8; 12] = [6, 0, 0, 0, 0xE1, 0, 0, 0, 0, 0, 1, 0];
const HEADER2: [u8; 16] = [1, 1, 0, 0, 0x60, 0, 0, 0, 0x60, 0, 0, 0, 1, 0, 0, 0];

/// What a SIGSTRUCT pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigStruct {
    /// ENCLAVEHASH: the MRENCLAVE the enclave will have.
    pub mrenclave: [u8; 32],
    /// SHA-256 of the signer's RSA modulus (little-endian, as stored): MRSIGNER.
    pub mrsigner: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// ATTRIBUTES.FLAGS has DEBUG set.
    pub debug: bool,
}

impl SigStruct {
    /// Parses a SIGSTRUCT; refuses other sizes and headers.
    pub fn parse(bytes: &[u8]) -> Result<SigStruct, String> {
        if bytes.len() != SIGSTRUCT_LEN {
            return Err(format!(
                "a SIGSTRUCT is {SIGSTRUCT_LEN} bytes, this file has {}",
                bytes.len()
            ));
        }
        if bytes[0..12] != HEADER || bytes[24..40] != HEADER2 {
            return Err("not a SIGSTRUCT: HEADER/HEADER2 do not match".into());
        }
        let mut mrenclave = [0u8; 32];
        mrenclave.copy_from_slice(&bytes[960..992]);
        Ok(SigStruct {
            mrenclave,
            mrsigner: Sha256::digest(&bytes[128..512]).into(),
            isv_prod_id: u16::from_le_bytes([bytes[1024], bytes[1025]]),
            isv_svn: u16::from_le_bytes([bytes[1026], bytes[1027]]),
            debug: bytes[928] & 0x02 != 0,
        })
    }

    /// A synthetic SIGSTRUCT with these values (tests and examples; unsigned).
    pub fn synthetic(modulus: &[u8; 384], mrenclave: [u8; 32], prod: u16, svn: u16) -> Vec<u8> {
        let mut b = vec![0u8; SIGSTRUCT_LEN];
        b[0..12].copy_from_slice(&HEADER);
        b[24..40].copy_from_slice(&HEADER2);
        b[128..512].copy_from_slice(modulus);
        b[512..516].copy_from_slice(&3u32.to_le_bytes());
        b[928] = 0x04;
        b[960..992].copy_from_slice(&mrenclave);
        b[1024..1026].copy_from_slice(&prod.to_le_bytes());
        b[1026..1028].copy_from_slice(&svn.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigstruct_values_are_read_and_mrsigner_is_the_modulus_digest() {
        let modulus = [7u8; 384];
        let bytes = SigStruct::synthetic(&modulus, [9; 32], 5, 12);
        let s = SigStruct::parse(&bytes).unwrap();
        assert_eq!(s.mrenclave, [9; 32]);
        assert_eq!(s.mrsigner, <[u8; 32]>::from(Sha256::digest(modulus)));
        assert_eq!((s.isv_prod_id, s.isv_svn, s.debug), (5, 12, false));
        assert!(SigStruct::parse(&bytes[1..]).is_err());
        let mut bad = bytes;
        bad[0] = 0;
        assert!(SigStruct::parse(&bad).unwrap_err().contains("HEADER"));
    }
}
