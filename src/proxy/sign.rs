//! Pre-signed proxy URLs (proxy spec section 7): HMAC-SHA256 (RFC 2104)
//! over `"{stream id}.{expires}"`, base64url without padding, compared in
//! constant time. The 32-byte key lives in the backend's control space
//! (namespace `proxy-keys`, key `hmac-sha256`, `{"v":1,"key":"<base64url>"}`)
//! like the webhook signing key, so every node of a shared postgres store
//! signs and verifies with the same one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::storage::{Storage, StorageError};

/// Namespace of the proxy's signing key.
pub const NS_KEYS: &str = "proxy-keys";
/// Key of the HMAC key in [`NS_KEYS`].
pub const KEY_HMAC: &str = "hmac-sha256";
const RECORD_VERSION: u32 = 1;

/// HMAC-SHA256 of `msg` under `key` (RFC 2104; keys up to the block size,
/// which every key here is).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Why a pre-signed URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `expires` or `signature` is absent.
    Missing,
    /// The signature does not verify (or `expires` is not a number).
    Invalid,
    /// The signature verifies, but `expires` has passed.
    Expired,
}

/// The server's URL signing key.
#[derive(Clone)]
pub struct UrlKey([u8; 32]);

impl UrlKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        UrlKey(key)
    }

    /// The `signature` of stream `id` expiring at `expires` (unix seconds).
    pub fn sign(&self, id: &str, expires: u64) -> String {
        B64.encode(hmac_sha256(&self.0, format!("{id}.{expires}").as_bytes()))
    }

    /// Checks `expires` / `signature` of stream `id` at unix time `now`.
    /// The signature is checked first, so an expired URL is only reported
    /// as expired when it was genuine.
    pub fn verify(
        &self,
        id: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now: u64,
    ) -> Result<(), Refusal> {
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(Refusal::Missing);
        };
        let Ok(exp) = expires.parse::<u64>() else {
            return Err(Refusal::Invalid);
        };
        let expected = self.sign(id, exp);
        if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
            return Err(Refusal::Invalid);
        }
        if exp <= now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    v: u32,
    key: String,
}

/// The stored key, or a new random one stored now. Nodes starting
/// together agree: the first key stored wins.
pub fn load_or_create(storage: &dyn Storage) -> Result<UrlKey, StorageError> {
    let fresh = serde_json::to_vec(&KeyRecord {
        v: RECORD_VERSION,
        key: B64.encode(rand::random::<[u8; 32]>()),
    })
    .unwrap_or_default();
    let stored = storage.control_put_new(NS_KEYS, KEY_HMAC, &fresh)?;
    let corrupt = |why: &str| StorageError::Corrupt(format!("proxy URL signing key record: {why}"));
    let r: KeyRecord = serde_json::from_slice(&stored).map_err(|e| corrupt(&e.to_string()))?;
    if r.v != RECORD_VERSION {
        return Err(corrupt("unsupported version"));
    }
    let key: [u8; 32] = B64
        .decode(r.key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| corrupt("not 32 bytes of base64url"))?;
    Ok(UrlKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_checks_signature_then_expiry() {
        let k = UrlKey::from_bytes([9; 32]);
        let sig = k.sign("abc", 2000);
        assert_eq!(k.verify("abc", Some("2000"), Some(&sig), 1999), Ok(()));
        assert_eq!(
            k.verify("abc", Some("2000"), Some(&sig), 2000),
            Err(Refusal::Expired)
        );
        assert_eq!(
            k.verify("abd", Some("2000"), Some(&sig), 1),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            k.verify("abc", Some("2001"), Some(&sig), 1),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            k.verify("abc", Some("x"), Some(&sig), 1),
            Err(Refusal::Invalid)
        );
        assert_eq!(k.verify("abc", None, Some(&sig), 1), Err(Refusal::Missing));
        let other = UrlKey::from_bytes([8; 32]);
        assert_eq!(
            other.verify("abc", Some("2000"), Some(&sig), 1),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn key_is_shared_through_the_control_space() {
        let s = crate::storage::memory::MemoryStorage::new(crate::notify::WakeHub::new());
        let a = load_or_create(&s).unwrap();
        let b = load_or_create(&s).unwrap();
        assert_eq!(a.sign("x", 1), b.sign("x", 1));
    }
}
