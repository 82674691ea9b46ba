//! The key ring: the only module that touches encryption key bytes.
//!
//! Every secret sp-broker stores (refresh tokens, cached access tokens, newer app
//! client secrets) is sealed here with AES-256-GCM before it reaches PostgreSQL.
//! Each seal uses a fresh 96-bit nonce from the OS CSPRNG, and associated data
//! that binds the ciphertext to its purpose, tenant and row, so a ciphertext
//! copied to another row or tenant fails to open.
//!
//! Envelope (version 1): `0x01 | key-id length (1 byte) | key id | nonce (12) | ciphertext+tag`.
//! Nothing here logs, formats or returns key material or plaintext in `Debug`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

const ENVELOPE_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    RefreshToken,
    AccessToken,
    ClientSecret,
    KeyCheck,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::RefreshToken => "refresh_token",
            Purpose::AccessToken => "access_token",
            Purpose::ClientSecret => "client_secret",
            Purpose::KeyCheck => "key_check",
        }
    }
}

/// The context a value is sealed in: opening it anywhere else fails.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub purpose: Purpose,
    /// The owning tenant's id, or "" for platform-wide values.
    pub tenant: &'a str,
    /// The owning row's id.
    pub row: &'a str,
}

impl SealContext<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // Lengths prefix each part so no two contexts can produce the same bytes.
        let mut aad = Vec::with_capacity(64);
        aad.extend_from_slice(b"sp-broker/v1");
        for part in [self.purpose.label(), self.tenant, self.row] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the sealed value is malformed or truncated")]
    Malformed,
    #[error("the sealed value uses envelope version {0}, which this build does not know")]
    UnknownVersion(u8),
    #[error("the sealed value names key id `{0}`, which is not in the key ring")]
    UnknownKey(String),
    #[error("the sealed value does not open: wrong key, wrong row, or tampered")]
    Unauthentic,
    #[error("the opened value is not valid UTF-8")]
    NotText,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyConfigError {
    #[error("no encryption key is configured")]
    Empty,
    #[error("key {index} is not of the form KEYID:BASE64")]
    NotKeyIdColonBase64 { index: usize },
    /// The text before the colon is not shown: a spec written the wrong way
    /// round would put key bytes there.
    #[error("key {index}: its id must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' or '.'")]
    BadKeyId { index: usize },
    #[error("key `{0}` is not standard base64 of exactly 32 bytes")]
    BadKeyBytes(String),
    #[error("key id `{0}` appears twice")]
    DuplicateKeyId(String),
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// Several keys, the first one active: it seals; all of them open.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl KeyRing {
    /// Parses `KEYID:BASE64,KEYID:BASE64,…` (the first key is active).
    pub fn parse(spec: &SecretString) -> Result<Self, KeyConfigError> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, item) in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let (id, b64) = item
                .split_once(':')
                .ok_or(KeyConfigError::NotKeyIdColonBase64 { index: index + 1 })?;
            if !is_valid_key_id(id) {
                return Err(KeyConfigError::BadKeyId { index: index + 1 });
            }
            let bytes = BASE64
                .decode(b64)
                .map_err(|_| KeyConfigError::BadKeyBytes(id.to_owned()))?;
            if bytes.len() != KEY_LEN {
                return Err(KeyConfigError::BadKeyBytes(id.to_owned()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyConfigError::DuplicateKeyId(id.to_owned()));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| KeyConfigError::BadKeyBytes(id.to_owned()))?;
            keys.push(Key {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(KeyConfigError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// A new random key in the `KEYID:BASE64` form `SP_BROKER_ENCRYPTION_KEYS` takes.
    pub fn generate_key_spec() -> SecretString {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        let mut id_bytes = [0u8; 4];
        OsRng.fill_bytes(&mut id_bytes);
        let date = time::OffsetDateTime::now_utc().date();
        let id = format!(
            "k{:04}{:02}{:02}-{}",
            date.year(),
            u8::from(date.month()),
            date.day(),
            id_bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        SecretString::from(format!("{id}:{}", BASE64.encode(bytes)))
    }

    pub fn active_key_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn has_key(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// Seals `plaintext` under the active key.
    pub fn seal(&self, context: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(&self.keys[0], context, plaintext)
    }

    /// Seals under a given key id (used for the per-key check values).
    pub fn seal_with_key_id(
        &self,
        key_id: &str,
        context: SealContext<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        Ok(self.seal_with(key, context, plaintext))
    }

    fn seal_with(&self, key: &Key, context: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = context.associated_data();
        // AES-GCM encryption only fails for plaintexts beyond 64 GiB.
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut envelope = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + ciphertext.len());
        envelope.push(ENVELOPE_VERSION);
        envelope.push(key.id.len() as u8);
        envelope.extend_from_slice(key.id.as_bytes());
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&ciphertext);
        envelope
    }

    /// The key id an envelope names, without opening it.
    pub fn key_id_of(envelope: &[u8]) -> Result<&str, CryptoError> {
        let (key_id, _, _) = split_envelope(envelope)?;
        Ok(key_id)
    }

    pub fn open(&self, context: SealContext<'_>, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (key_id, nonce, ciphertext) = split_envelope(envelope)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let aad = context.associated_data();
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Unauthentic)
    }

    pub fn seal_str(&self, context: SealContext<'_>, secret: &SecretString) -> Vec<u8> {
        self.seal(context, secret.expose_secret().as_bytes())
    }

    pub fn open_str(
        &self,
        context: SealContext<'_>,
        envelope: &[u8],
    ) -> Result<SecretString, CryptoError> {
        let bytes = self.open(context, envelope)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| CryptoError::NotText)
    }
}

fn split_envelope(envelope: &[u8]) -> Result<(&str, &[u8], &[u8]), CryptoError> {
    let (&version, rest) = envelope.split_first().ok_or(CryptoError::Malformed)?;
    if version != ENVELOPE_VERSION {
        return Err(CryptoError::UnknownVersion(version));
    }
    let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
    let id_len = usize::from(id_len);
    // 16 bytes of GCM tag at the least.
    if id_len == 0 || rest.len() < id_len + NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| CryptoError::Malformed)?;
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    Ok((id, nonce, ciphertext))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashSet;

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(&SecretString::from(spec.to_owned())).unwrap()
    }

    fn ctx<'a>(tenant: &'a str, row: &'a str) -> SealContext<'a> {
        SealContext {
            purpose: Purpose::RefreshToken,
            tenant,
            row,
        }
    }

    const KEY_A: &str = "a:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "b:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn round_trip() {
        let ring = ring(KEY_A);
        let sealed = ring.seal(ctx("t1", "r1"), b"Atzr|secret");
        assert_eq!(ring.open(ctx("t1", "r1"), &sealed).unwrap(), b"Atzr|secret");
        assert_eq!(KeyRing::key_id_of(&sealed).unwrap(), "a");
        assert!(!sealed.windows(11).any(|w| w == b"Atzr|secret"));
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_an_error() {
        let ring = ring(KEY_A);
        let sealed = ring.seal(ctx("t1", "r1"), b"Atzr|secret");
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[byte] ^= 1 << bit;
                assert!(ring.open(ctx("t1", "r1"), &tampered).is_err());
            }
        }
        for len in 0..sealed.len() {
            assert!(ring.open(ctx("t1", "r1"), &sealed[..len]).is_err());
        }
    }

    #[test]
    fn ciphertext_moved_to_another_row_tenant_or_purpose_does_not_open() {
        let ring = ring(KEY_A);
        let sealed = ring.seal(ctx("t1", "r1"), b"Atzr|secret");
        assert_eq!(
            ring.open(ctx("t1", "r2"), &sealed),
            Err(CryptoError::Unauthentic)
        );
        assert_eq!(
            ring.open(ctx("t2", "r1"), &sealed),
            Err(CryptoError::Unauthentic)
        );
        let other_purpose = SealContext {
            purpose: Purpose::AccessToken,
            tenant: "t1",
            row: "r1",
        };
        assert_eq!(
            ring.open(other_purpose, &sealed),
            Err(CryptoError::Unauthentic)
        );
        // Shifting a character from tenant to row must not yield the same context.
        assert!(ring.open(ctx("t", "1r1"), &sealed).is_err());
    }

    #[test]
    fn wrong_key_fails_and_rotated_ring_still_opens_old_values() {
        let old = ring(KEY_A);
        let sealed = old.seal(ctx("t", "r"), b"v");
        let other = ring(KEY_B);
        assert_eq!(
            other.open(ctx("t", "r"), &sealed),
            Err(CryptoError::UnknownKey("a".into()))
        );
        // Same id, different bytes: the key does not open it.
        let impostor = ring("a:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
        assert_eq!(
            impostor.open(ctx("t", "r"), &sealed),
            Err(CryptoError::Unauthentic)
        );
        let rotated = ring(&format!("{KEY_B},{KEY_A}"));
        assert_eq!(rotated.open(ctx("t", "r"), &sealed).unwrap(), b"v");
        assert_eq!(
            KeyRing::key_id_of(&rotated.seal(ctx("t", "r"), b"v")).unwrap(),
            "b"
        );
    }

    #[test]
    fn nonces_never_repeat() {
        let ring = ring(KEY_A);
        let mut nonces = HashSet::new();
        for _ in 0..20_000 {
            let sealed = ring.seal(ctx("t", "r"), b"same plaintext");
            let nonce = sealed[3..3 + NONCE_LEN].to_vec();
            assert!(nonces.insert(nonce), "a nonce repeated");
        }
    }

    #[test]
    fn key_spec_parsing_names_the_problem() {
        let parse = |s: &str| KeyRing::parse(&SecretString::from(s.to_owned()));
        assert_eq!(parse("").err(), Some(KeyConfigError::Empty));
        assert_eq!(
            parse("nocolon").err(),
            Some(KeyConfigError::NotKeyIdColonBase64 { index: 1 })
        );
        assert_eq!(
            parse("a:c2hvcnQ=").err(),
            Some(KeyConfigError::BadKeyBytes("a".into()))
        );
        assert_eq!(
            parse(&format!("{KEY_A},{KEY_A}")).err(),
            Some(KeyConfigError::DuplicateKeyId("a".into()))
        );
        assert_eq!(
            parse("bad id:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").err(),
            Some(KeyConfigError::BadKeyId { index: 1 })
        );
        // A spec written the wrong way round never shows its key bytes.
        let reversed = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:k1";
        let message = parse(reversed)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!message.contains("AAAAAAAA"), "{message}");
        let generated = KeyRing::generate_key_spec();
        let ring = KeyRing::parse(&generated).unwrap();
        assert!(ring.active_key_id().starts_with('k'));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ring = ring(KEY_A);
        let shown = format!("{ring:?}");
        assert!(!shown.contains("AAAAAAAA"));
        assert!(shown.contains("\"a\""));
    }
}
