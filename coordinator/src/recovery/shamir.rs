//! t-of-n Shamir secret sharing over GF(2^8) (AES polynomial x^8+x^4+x^3+x+1), byte by byte.
//! A share is `y_0 … y_{k-1} ‖ x` (the layout of HashiCorp Vault's implementation, which
//! MarbleRun uses): the evaluations of one random polynomial per secret byte at the share's
//! non-zero `x`. Arithmetic is branch-free on secret values.
use zeroize::Zeroizing;

/// Product in GF(2^8) (shift-and-add with reduction by 0x1b, no data-dependent branches).
pub fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// Multiplicative inverse (a^254); 0 maps to 0.
pub fn inv(a: u8) -> u8 {
    // a^254 = a^(2+4+8+16+32+64+128)
    let mut result = 1u8;
    let mut sq = a;
    for _ in 0..7 {
        sq = mul(sq, sq);
        result = mul(result, sq);
    }
    result
}

/// Evaluates the polynomial with `coeffs` (constant term first) at `x` (Horner).
fn eval(coeffs: &[u8], x: u8) -> u8 {
    coeffs.iter().rev().fold(0u8, |acc, c| mul(acc, x) ^ c)
}

/// Splits `secret` into `n` shares, any `t` of which recover it; `x` = 1..=n.
/// `random` fills the `t - 1` random coefficients of each byte's polynomial.
pub fn split(
    secret: &[u8],
    t: usize,
    n: usize,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<Vec<Zeroizing<Vec<u8>>>, String> {
    if t < 2 || t > n || n > 255 {
        return Err(format!(
            "cannot split into {t}-of-{n} shares (2 ≤ t ≤ n ≤ 255)"
        ));
    }
    let mut shares: Vec<Zeroizing<Vec<u8>>> = (1..=n)
        .map(|_| Zeroizing::new(Vec::with_capacity(secret.len() + 1)))
        .collect();
    let mut coeffs = Zeroizing::new(vec![0u8; t]);
    for &s in secret {
        coeffs[0] = s;
        random(&mut coeffs[1..])?;
        for (i, share) in shares.iter_mut().enumerate() {
            share.push(eval(&coeffs, (i + 1) as u8));
        }
    }
    for (i, share) in shares.iter_mut().enumerate() {
        share.push((i + 1) as u8);
    }
    Ok(shares)
}

/// Recovers the secret from shares (Lagrange interpolation at 0). Needs at least two shares
/// of equal length with distinct non-zero `x`; more shares than the threshold are fine, fewer
/// give a wrong value (callers check the result).
pub fn combine(shares: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, String> {
    let first = shares.first().ok_or("no shares")?;
    if shares.len() < 2 {
        return Err("at least two shares are needed".into());
    }
    let len = first.len();
    if len < 2 || shares.iter().any(|s| s.len() != len) {
        return Err("shares differ in length".into());
    }
    let xs: Vec<u8> = shares.iter().map(|s| s[len - 1]).collect();
    for (i, x) in xs.iter().enumerate() {
        if *x == 0 || xs[..i].contains(x) {
            return Err(format!(
                "share {} has a zero or repeated x coordinate",
                i + 1
            ));
        }
    }
    // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j − x_i)  (subtraction is XOR).
    let basis: Vec<u8> = (0..xs.len())
        .map(|i| {
            let (mut num, mut den) = (1u8, 1u8);
            for j in 0..xs.len() {
                if i != j {
                    num = mul(num, xs[j]);
                    den = mul(den, xs[j] ^ xs[i]);
                }
            }
            mul(num, inv(den))
        })
        .collect();
    let mut out = Zeroizing::new(vec![0u8; len - 1]);
    for (k, byte) in out.iter_mut().enumerate() {
        *byte = shares
            .iter()
            .zip(&basis)
            .fold(0u8, |acc, (s, l)| acc ^ mul(s[k], *l));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic_matches_fips_197() {
        // FIPS-197 §4.2: {57}·{83} = {c1}, {57}·{13} = {fe}; §4.2.1 xtime chain.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        assert_eq!(mul(0x57, 0x13), 0xfe);
        assert_eq!(mul(0x57, 0x02), 0xae);
        assert_eq!(mul(0x57, 0x10), 0x07);
        // {53}·{ca} = {01} (the classic inverse pair).
        assert_eq!(mul(0x53, 0xca), 0x01);
        assert_eq!(inv(0x53), 0xca);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "inverse of {a:#04x}");
        }
    }

    #[test]
    fn known_answer_2_of_3() {
        // f(x) = 0x42 + 0x07·x: f(1) = 0x45, f(2) = 0x42^0x0e = 0x4c, f(3) = 0x42^0x09 = 0x4b.
        let mut r = |buf: &mut [u8]| {
            buf.fill(0x07);
            Ok(())
        };
        let shares = split(&[0x42], 2, 3, &mut r).unwrap();
        let got: Vec<Vec<u8>> = shares.iter().map(|s| s.to_vec()).collect();
        assert_eq!(got, vec![vec![0x45, 1], vec![0x4c, 2], vec![0x4b, 3]]);
        for pair in [[0, 1], [0, 2], [1, 2], [2, 0]] {
            let s: Vec<&[u8]> = pair.iter().map(|i| got[*i].as_slice()).collect();
            assert_eq!(combine(&s).unwrap().as_slice(), &[0x42]);
        }
    }

    #[test]
    fn known_answer_3_of_5() {
        // f(x) = 0x01 + 0x02·x + 0x03·x²; f(4) = 1 ^ 8 ^ mul(3, 0x10) = 1^8^0x30 = 0x39.
        let mut r = |buf: &mut [u8]| {
            buf.copy_from_slice(&[0x02, 0x03]);
            Ok(())
        };
        let shares = split(&[0x01], 3, 5, &mut r).unwrap();
        assert_eq!(shares[3].as_slice(), &[0x39, 4]);
        let s: Vec<&[u8]> = vec![&shares[4], &shares[1], &shares[3]];
        assert_eq!(combine(&s).unwrap().as_slice(), &[0x01]);
        // Two shares of a 3-of-5 split give some other value.
        let s: Vec<&[u8]> = vec![&shares[0], &shares[1]];
        assert_ne!(combine(&s).unwrap().as_slice(), &[0x01]);
    }

    #[test]
    fn random_32_byte_secrets_round_trip_with_any_threshold_subset() {
        let rng = ring::rand::SystemRandom::new();
        let mut r = |buf: &mut [u8]| {
            ring::rand::SecureRandom::fill(&rng, buf).map_err(|_| "rng".to_string())
        };
        let secret: Vec<u8> = (0..32u8).collect();
        let shares = split(&secret, 3, 4, &mut r).unwrap();
        assert!(shares.iter().all(|s| s.len() == 33));
        for skip in 0..4 {
            let s: Vec<&[u8]> = (0..4)
                .filter(|i| *i != skip)
                .map(|i| shares[i].as_slice())
                .collect();
            assert_eq!(combine(&s).unwrap().as_slice(), secret.as_slice());
        }
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let mut r = |_: &mut [u8]| Ok(());
        assert!(split(&[1], 1, 3, &mut r).is_err());
        assert!(split(&[1], 4, 3, &mut r).is_err());
        assert!(combine(&[]).is_err());
        assert!(combine(&[&[1, 1]]).is_err());
        assert!(combine(&[&[1, 1], &[2, 1]]).is_err(), "repeated x");
        assert!(combine(&[&[1, 0], &[2, 1]]).is_err(), "x = 0");
        assert!(combine(&[&[1, 1], &[2, 3, 2]]).is_err(), "lengths differ");
    }
}
