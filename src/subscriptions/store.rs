//! How subscription state is laid out in the backend's control space
//! ([`Storage::control_put`]), and loading it back. Pure encodings plus
//! synchronous loads; callers run them off the async workers.
//!
//! | namespace | key | value |
//! | --- | --- | --- |
//! | `subscriptions` | subscription id | `{"v":1,"sub":{…}}`: config, hash, links with cursors, generation, wake, retry, tombstone |
//! | `subscription-keys` | `ed25519` | `{"v":1,"seed":"<base64url 32 bytes>"}` |
//!
//! Times inside (`lease_until`, `next_attempt_at`) are absolute wall-clock
//! milliseconds, so a restart resumes leases and retry schedules.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use super::signing::Keys;
use super::sub::Sub;
use crate::storage::{Storage, StorageError};

/// Namespace of subscription records.
pub const NS_SUBS: &str = "subscriptions";
/// Namespace of the webhook signing key.
pub const NS_KEYS: &str = "subscription-keys";
/// Key of the Ed25519 signing key in [`NS_KEYS`].
pub const KEY_ED25519: &str = "ed25519";
/// Version of the records written here; readers refuse others.
pub const RECORD_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SubRecord {
    v: u32,
    sub: Sub,
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    v: u32,
    seed: String,
}

pub fn encode_sub(sub: &Sub) -> Vec<u8> {
    // Serializing plain data to JSON cannot fail.
    serde_json::to_vec(&SubRecord {
        v: RECORD_VERSION,
        sub: sub.clone(),
    })
    .unwrap_or_default()
}

pub fn decode_sub(bytes: &[u8]) -> Result<Sub, String> {
    let r: SubRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if r.v != RECORD_VERSION {
        return Err(format!("unsupported subscription record version {}", r.v));
    }
    Ok(r.sub)
}

pub fn encode_key(keys: &Keys) -> Vec<u8> {
    serde_json::to_vec(&KeyRecord {
        v: RECORD_VERSION,
        seed: B64.encode(keys.seed()),
    })
    .unwrap_or_default()
}

pub fn decode_key(bytes: &[u8]) -> Result<Keys, String> {
    let r: KeyRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if r.v != RECORD_VERSION {
        return Err(format!("unsupported signing key record version {}", r.v));
    }
    let seed: [u8; 32] = B64
        .decode(r.seed)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("the signing key seed is not 32 bytes of base64url")?;
    Ok(Keys::from_seed(seed))
}

/// The stored signing key, or a new one stored now (durably, before any
/// webhook is signed with it).
pub fn load_or_create_key(storage: &dyn Storage) -> Result<Keys, StorageError> {
    // Nodes sharing a store may start together: the first key stored wins
    // and every node uses that one.
    let fresh = encode_key(&Keys::generate());
    let stored = storage.control_put_new(NS_KEYS, KEY_ED25519, &fresh)?;
    decode_key(&stored)
        .map_err(|e| StorageError::Corrupt(format!("webhook signing key record: {e}")))
}

/// Every stored subscription, tombstones included. A record that cannot be
/// read stops the server: guessing would lose cursors silently.
pub fn load_subs(storage: &dyn Storage) -> Result<Vec<Sub>, StorageError> {
    storage
        .control_scan(NS_SUBS)?
        .into_iter()
        .map(|(id, v)| {
            decode_sub(&v)
                .map_err(|e| StorageError::Corrupt(format!("subscription record {id:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::offset::Offset;
    use crate::subscriptions::sub::{Config, Delivery, Link, Retry, WakeState};

    #[test]
    fn subscription_records_round_trip() {
        let config = Config {
            delivery: Delivery::Webhook {
                url: "https://h.example/x".into(),
            },
            pattern: Some("e/*".into()),
            streams: vec!["m".into()],
            lease_ttl_ms: 5000,
            description: Some("d".into()),
        };
        let mut links = BTreeMap::new();
        links.insert("e/a".into(), Link::new(false, Offset::new(3, 30), 9));
        let mut sub = Sub::new("s/1".into(), config, "t".into(), "http://h/".into(), links);
        sub.generation = 4;
        sub.wake = Some(WakeState {
            wake_id: "w_1".into(),
            generation: 4,
            snapshot: vec![("e/a".into(), Offset::new(3, 30))],
            holder: None,
            lease_until: 1_700_000_000_123,
        });
        sub.retry = Some(Retry {
            failures: 3,
            next_attempt_at: 1_700_000_004_000,
        });
        let back = decode_sub(&encode_sub(&sub)).unwrap();
        assert_eq!(back.config, sub.config);
        assert_eq!(back.hash, sub.hash);
        assert_eq!(back.links(), sub.links());
        assert_eq!(back.wake, sub.wake);
        assert_eq!(back.retry, sub.retry);
        assert_eq!(back.generation, 4);
        assert!(decode_sub(br#"{"v":2,"sub":{}}"#).is_err());
    }

    #[test]
    fn signing_keys_round_trip_with_the_same_kid() {
        let k = Keys::from_seed([3; 32]);
        let back = decode_key(&encode_key(&k)).unwrap();
        assert_eq!(back.kid, k.kid);
        assert!(decode_key(br#"{"v":1,"seed":"AAAA"}"#).is_err());
    }

    #[test]
    fn key_is_created_once_and_then_reloaded() {
        let s = crate::storage::memory::MemoryStorage::new(crate::notify::WakeHub::new());
        let a = load_or_create_key(&s).unwrap();
        let b = load_or_create_key(&s).unwrap();
        assert_eq!(a.kid, b.kid);
    }
}
