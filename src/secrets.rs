//! Random one-time values (states, login tokens, codes, CSRF tokens) and their
//! hashes. The clear value goes to the browser once; the database keeps only
//! SHA-256 of it, so reading the database gives no way in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// `bytes` random bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> SecretString {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    SecretString::from(URL_SAFE_NO_PAD.encode(&buf))
}

pub fn sha256(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

pub fn sha256_secret(value: &SecretString) -> Vec<u8> {
    sha256(value.expose_secret())
}

/// Constant-time equality of two strings.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token(32);
        let b = random_token(32);
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(sha256_secret(&a).len(), 32);
        assert!(constant_time_eq(a.expose_secret(), a.expose_secret()));
        assert!(!constant_time_eq(a.expose_secret(), b.expose_secret()));
        assert!(!constant_time_eq("a", "ab"));
    }
}
