//! Peer identity and allow-lists: who is on the other end of a mesh connection (the single
//! SPIFFE URI SAN of its certificate) and whether it may connect. Pure functions.
use std::collections::BTreeSet;

use quarry_api::http::MeshAllow;

/// A mesh peer, as named by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerId {
    /// The marble type.
    pub marble_type: String,
    /// The marble instance.
    pub uuid: uuid::Uuid,
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.marble_type, self.uuid)
    }
}

/// Why a certificate does not name a marble of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate does not parse.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// Not exactly one URI SAN.
    #[error("the certificate has {0} URI SANs; a marble certificate has exactly one")]
    UriCount(usize),
    /// The URI is not a marble SPIFFE ID.
    #[error("{0:?} is not a marble SPIFFE ID")]
    NotMarbleId(String),
    /// The SPIFFE ID is in another trust domain.
    #[error("trust domain {found:?} is not this mesh's {expected:?}")]
    TrustDomain {
        /// The peer's trust domain.
        found: String,
        /// Ours.
        expected: String,
    },
}

/// Why an identified peer may not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer's type is not in `AllowFrom`.
    #[error("marble type {peer:?} is not in AllowFrom {allowed:?}")]
    TypeNotAllowed {
        /// The peer's type.
        peer: String,
        /// The allowed types.
        allowed: Vec<String>,
    },
    /// The server is not of the type the egress port expects.
    #[error("the server is a marble of type {found:?}, expected {expected:?}")]
    WrongServerType {
        /// The server's type.
        found: String,
        /// The expected type.
        expected: String,
    },
}

/// Who may connect to a mesh port (client certificates required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Any marble of the deployment.
    AnyMarble,
    /// Only these marble types.
    Marbles(BTreeSet<String>),
}

impl Policy {
    /// The policy of an inbound port; `None` for external ports (no client certificates).
    pub fn from_wire(allow: &MeshAllow) -> Option<Policy> {
        match allow {
            MeshAllow::AnyMarble => Some(Policy::AnyMarble),
            MeshAllow::Marbles { types } => Some(Policy::Marbles(types.iter().cloned().collect())),
            MeshAllow::External(_) => None,
        }
    }

    /// Admits or refuses `peer`.
    pub fn check(&self, peer: &PeerId) -> Result<(), Refusal> {
        match self {
            Policy::AnyMarble => Ok(()),
            Policy::Marbles(types) if types.contains(&peer.marble_type) => Ok(()),
            Policy::Marbles(types) => Err(Refusal::TypeNotAllowed {
                peer: peer.marble_type.clone(),
                allowed: types.iter().cloned().collect(),
            }),
        }
    }
}

/// The marble a certificate (DER) names: its single URI SAN must be
/// `spiffe://<trust_domain>/marble/<type>/<uuid>`.
pub fn peer_identity(cert_der: &[u8], trust_domain: &str) -> Result<PeerId, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::UriCount(uris.len()));
    };
    let (domain, marble_type, uuid) = quarry_api::spiffe::parse_marble_id(uri)
        .ok_or_else(|| IdentityError::NotMarbleId(uri.to_string()))?;
    if domain != trust_domain {
        return Err(IdentityError::TrustDomain {
            found: domain,
            expected: trust_domain.to_string(),
        });
    }
    Ok(PeerId { marble_type, uuid })
}

/// Checks that a server is of the `expected` marble type.
pub fn check_server(peer: &PeerId, expected: &str) -> Result<(), Refusal> {
    if peer.marble_type == expected {
        Ok(())
    } else {
        Err(Refusal::WrongServerType {
            found: peer.marble_type.clone(),
            expected: expected.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
            .collect();
        params.subject_alt_names.push(rcgen::SanType::DnsName(
            rcgen::string::Ia5String::try_from("web.svc").unwrap(),
        ));
        params.self_signed(&key).unwrap().der().to_vec()
    }

    const ID: &str = "spiffe://quarry.local/marble/app/0f8d2a8e-33a4-4c5e-9d6b-2b1f3c4d5e6f";

    #[test]
    fn single_marble_uri_names_the_peer() {
        let peer = peer_identity(&cert_with_uris(&[ID]), "quarry.local").unwrap();
        assert_eq!(peer.marble_type, "app");
        assert_eq!(
            peer.uuid.to_string(),
            "0f8d2a8e-33a4-4c5e-9d6b-2b1f3c4d5e6f"
        );
    }

    #[test]
    fn certificates_without_exactly_one_marble_id_in_our_domain_are_refused() {
        assert_eq!(
            peer_identity(&cert_with_uris(&[]), "quarry.local"),
            Err(IdentityError::UriCount(0))
        );
        assert_eq!(
            peer_identity(&cert_with_uris(&[ID, ID]), "quarry.local"),
            Err(IdentityError::UriCount(2))
        );
        assert!(matches!(
            peer_identity(
                &cert_with_uris(&["spiffe://quarry.local/ns/x"]),
                "quarry.local"
            ),
            Err(IdentityError::NotMarbleId(_))
        ));
        assert_eq!(
            peer_identity(&cert_with_uris(&[ID]), "prod.example"),
            Err(IdentityError::TrustDomain {
                found: "quarry.local".into(),
                expected: "prod.example".into()
            })
        );
        assert!(matches!(
            peer_identity(b"garbage", "quarry.local"),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn allow_list_admits_listed_types_only() {
        let peer = |t: &str| PeerId {
            marble_type: t.into(),
            uuid: uuid::Uuid::nil(),
        };
        let policy = Policy::from_wire(&MeshAllow::Marbles {
            types: vec!["app".into()],
        })
        .unwrap();
        assert_eq!(policy.check(&peer("app")), Ok(()));
        assert_eq!(
            policy.check(&peer("intruder")),
            Err(Refusal::TypeNotAllowed {
                peer: "intruder".into(),
                allowed: vec!["app".into()]
            })
        );
        assert_eq!(Policy::AnyMarble.check(&peer("intruder")), Ok(()));
        assert!(check_server(&peer("db"), "db").is_ok());
        assert_eq!(
            check_server(&peer("app"), "db"),
            Err(Refusal::WrongServerType {
                found: "app".into(),
                expected: "db".into()
            })
        );
    }
}
