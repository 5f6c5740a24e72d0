use std::sync::OnceLock;

use rsa::pkcs8::{EncodePublicKey, LineEnding};

use super::*;

fn keys() -> &'static Vec<RsaPrivateKey> {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..4)
            .map(|_| RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap())
            .collect()
    })
}

fn pem_of(k: &RsaPrivateKey) -> String {
    k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap()
}

/// Recovery keys a, b, c (keys 0..n); key 3 is an outsider.
fn manifest_keys(n: usize) -> BTreeMap<String, String> {
    ["a", "b", "c"][..n]
        .iter()
        .zip(keys())
        .map(|(name, k)| (name.to_string(), pem_of(k)))
        .collect()
}

fn key_of(name: &str) -> &'static RsaPrivateKey {
    &keys()[match name {
        "a" => 0,
        "b" => 1,
        "c" => 2,
        _ => 3,
    }]
}

fn decrypt(name: &str, ct: &[u8]) -> Vec<u8> {
    key_of(name).decrypt(Oaep::new::<RsaSha256>(), ct).unwrap()
}

fn sign(signer: &str, secret: &[u8]) -> Vec<u8> {
    key_of(signer)
        .sign(Pkcs1v15Sign::new::<RsaSha256>(), &Sha256::digest(secret))
        .unwrap()
}

fn complete(step: Result<Step, RecoveryError>) -> Secret {
    match step {
        Ok(Step::Complete(k)) => k,
        Ok(Step::Remaining(n)) => panic!("still {n} remaining"),
        Err(e) => panic!("{e}"),
    }
}

fn remaining(step: Result<Step, RecoveryError>) -> u64 {
    match step {
        Ok(Step::Remaining(n)) => n,
        Ok(Step::Complete(_)) => panic!("completed early"),
        Err(e) => panic!("{e}"),
    }
}

fn refused(step: Result<Step, RecoveryError>) -> String {
    match step {
        Err(RecoveryError::Refused(m)) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn no_keys_no_recovery_data() {
    let dek = sealing::new_dek().unwrap();
    assert!(wrap(&dek, &BTreeMap::new(), 0).unwrap().is_none());
}

#[test]
fn single_key_secret_is_the_dek_and_needs_its_signature() {
    let dek = sealing::new_dek().unwrap();
    let (data, cts) = wrap(&dek, &manifest_keys(1), 0).unwrap().unwrap();
    assert_eq!(data.scheme, Scheme::Single);
    let secret = decrypt("a", &cts["a"]);
    assert_eq!(secret, dek.expose());
    let mut s = Session::default();
    let m = refused(s.submit(&data, &secret, &sign("outsider", &secret)));
    assert!(m.contains("does not verify with any recovery key"), "{m}");
    assert_eq!(complete(s.submit(&data, &secret, &sign("a", &secret))), dek);
}

#[test]
fn xor_n_of_n_needs_every_share() {
    let dek = sealing::new_dek().unwrap();
    let (data, cts) = wrap(&dek, &manifest_keys(3), 0).unwrap().unwrap();
    assert_eq!((data.scheme, data.threshold), (Scheme::Xor, 3));
    let shares: BTreeMap<&str, Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, decrypt(n, &cts[*n])))
        .collect();
    // Known answer: the XOR of the three shares is the DEK.
    let xor: Vec<u8> = (0..32)
        .map(|i| shares["a"][i] ^ shares["b"][i] ^ shares["c"][i])
        .collect();
    assert_eq!(xor, dek.expose());
    let mut s = Session::default();
    assert_eq!(
        remaining(s.submit(&data, &shares["c"], &sign("c", &shares["c"]))),
        2
    );
    assert_eq!(
        remaining(s.submit(&data, &shares["a"], &sign("a", &shares["a"]))),
        1
    );
    assert_eq!(
        complete(s.submit(&data, &shares["b"], &sign("b", &shares["b"]))),
        dek
    );
}

#[test]
fn shamir_refusals_and_success() {
    let dek = sealing::new_dek().unwrap();
    let (data, cts) = wrap(&dek, &manifest_keys(3), 2).unwrap().unwrap();
    assert_eq!((data.scheme, data.threshold), (Scheme::Shamir, 2));
    let share = |n: &str| decrypt(n, &cts[n]);
    let (a, b, c) = (share("a"), share("b"), share("c"));
    assert_eq!(a.len(), 33);
    let mut s = Session::default();
    // Fewer than the threshold: not recovered.
    assert_eq!(remaining(s.submit(&data, &a, &sign("a", &a))), 1);
    // The same share again.
    let m = refused(s.submit(&data, &a, &sign("a", &a)));
    assert!(m.contains("already uploaded"), "{m}");
    // Key b signs c's share: a wrong share for b.
    let m = refused(s.submit(&data, &c, &sign("b", &c)));
    assert!(
        m.contains("not the recovery secret issued to key \"b\""),
        "{m}"
    );
    // A share signed by a key that is not a recovery key.
    let m = refused(s.submit(&data, &b, &sign("outsider", &b)));
    assert!(m.contains("does not verify"), "{m}");
    // A malformed length.
    assert!(matches!(
        s.submit(&data, &[1u8; 40], &sign("b", &[1u8; 40])),
        Err(RecoveryError::BadInput(_))
    ));
    assert_eq!(complete(s.submit(&data, &c, &sign("c", &c))), dek);
    // Any other pair works too.
    let mut s = Session::default();
    assert_eq!(remaining(s.submit(&data, &b, &sign("b", &b))), 1);
    assert_eq!(complete(s.submit(&data, &a, &sign("a", &a))), dek);
}

#[test]
fn substituted_recovery_keys_are_caught_by_the_mac() {
    let dek = sealing::new_dek().unwrap();
    let (mut data, cts) = wrap(&dek, &manifest_keys(1), 0).unwrap().unwrap();
    assert!(data.verify(&dek));
    assert!(!data.verify(&sealing::new_dek().unwrap()));
    // An attacker who learnt the secret replaces the public key with its own to sign.
    let secret = decrypt("a", &cts["a"]);
    let entry = data.keys.get_mut("a").unwrap();
    entry.public_key = pem_of(key_of("outsider"));
    let mut s = Session::default();
    let m = refused(s.submit(&data, &secret, &sign("outsider", &secret)));
    assert!(m.contains("modified"), "{m}");
}

#[test]
fn threshold_out_of_range_is_refused() {
    let dek = sealing::new_dek().unwrap();
    assert!(wrap(&dek, &manifest_keys(3), 1).is_err());
    assert!(wrap(&dek, &manifest_keys(3), 4).is_err());
    let mut bad = manifest_keys(2);
    bad.insert("z".into(), "not a key".into());
    assert!(matches!(
        wrap(&dek, &bad, 0),
        Err(RecoveryError::BadInput(_))
    ));
}

#[test]
fn air_gapped_secret_encrypted_to_the_ephemeral_key() {
    let dek = sealing::new_dek().unwrap();
    let (data, cts) = wrap(&dek, &manifest_keys(1), 0).unwrap().unwrap();
    let secret = decrypt("a", &cts["a"]);
    let mut s = Session::default();
    // Without an ephemeral key an odd-length secret is malformed.
    assert!(matches!(
        s.submit(&data, &[0u8; 256], &sign("a", &secret)),
        Err(RecoveryError::BadInput(_))
    ));
    let eph = s.ephemeral(keys()[3].clone()).to_public_key();
    let wrapped = eph
        .encrypt(&mut rand_core::OsRng, Oaep::new::<RsaSha256>(), &secret)
        .unwrap();
    assert_eq!(
        complete(s.submit(&data, &wrapped, &sign("a", &secret))),
        dek
    );
}
