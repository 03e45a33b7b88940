//! Sealing values kept in Redis: AES-256-GCM with a random nonce, under a key derived with HKDF
//! from the broker's secret material, and bound to associated data (the owner), so an entry copied
//! under another owner's key does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

pub(crate) struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    /// HKDF-SHA256 over `material`, salted per use.
    pub(crate) fn derive(material: &SecretString) -> Sealer {
        let hk = hkdf::Hkdf::<Sha256>::new(
            Some(b"intellia-token-broker/redis-token-cache/v1"),
            material.expose_secret().as_bytes(),
        );
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(b"aes-256-gcm", &mut key);
        let cipher = Aes256Gcm::new(&key.into());
        key.fill(0);
        Sealer { cipher }
    }

    /// `nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, plain: &[u8], owner: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: owner,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain bytes, when `bytes` was sealed with this key for `owner`. The caller zeroes them.
    pub(crate) fn open(&self, bytes: &[u8], owner: &[u8]) -> Option<Vec<u8>> {
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: owner,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_are_bound_to_their_owner_and_key() {
        let sealer = Sealer::derive(&SecretString::from("material"));
        let sealed = sealer.seal(b"{}", b"alice");
        assert_eq!(sealer.open(&sealed, b"alice").as_deref(), Some(&b"{}"[..]));
        assert_eq!(sealer.open(&sealed, b"mallory"), None);
        let other = Sealer::derive(&SecretString::from("rotated"));
        assert_eq!(other.open(&sealed, b"alice"), None);
        assert_eq!(sealer.open(&sealed[..20], b"alice"), None);
    }
}
