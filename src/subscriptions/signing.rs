//! Webhook signing: one Ed25519 key per server (persisted in the backend's
//! control space, so it survives restarts), published as a JWKS
//! with an RFC 7638 thumbprint `kid`; signatures over `<t>.<raw body>`; and
//! scoped bearer tokens signed with the same key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The server's signing key and its public identity.
pub struct Keys {
    signing: SigningKey,
    pub kid: String,
}

impl Keys {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let x = B64.encode(signing.verifying_key().as_bytes());
        // RFC 7638: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = format!("ds_{}", B64.encode(Sha256::digest(canonical.as_bytes())));
        Keys { signing, kid }
    }

    /// The private seed, for persisting the key.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": self.kid,
                "use": "sig",
                "alg": "EdDSA",
                "x": B64.encode(self.signing.verifying_key().as_bytes()),
            }]
        })
    }

    /// The `Webhook-Signature` header value for `body` at unix time `t`.
    pub fn signature_header(&self, t: u64, body: &[u8]) -> String {
        let mut msg = format!("{t}.").into_bytes();
        msg.extend_from_slice(body);
        let sig = self.signing.sign(&msg);
        format!(
            "t={t},kid={},ed25519={}",
            self.kid,
            B64.encode(sig.to_bytes())
        )
    }

    /// A token: `base64url(claims JSON).base64url(signature)`.
    pub fn token(&self, claims: &serde_json::Value) -> String {
        let payload = B64.encode(claims.to_string());
        let sig = self.signing.sign(payload.as_bytes());
        format!("{payload}.{}", B64.encode(sig.to_bytes()))
    }

    /// Verifies a token made by [`Keys::token`] and returns its claims.
    pub fn verify_token(&self, token: &str) -> Option<serde_json::Value> {
        let (payload, sig) = token.split_once('.')?;
        let sig: [u8; 64] = B64.decode(sig).ok()?.try_into().ok()?;
        self.signing
            .verifying_key()
            .verify(payload.as_bytes(), &Signature::from_bytes(&sig))
            .ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

/// Verifies a `Webhook-Signature` header against a JWKS, as a receiver does.
pub fn verify_with_jwks(jwks: &serde_json::Value, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut kid = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("kid", v)) => kid = Some(v),
            Some(("ed25519", v)) => sig = Some(v),
            _ => return false,
        }
    }
    let (Some(t), Some(kid), Some(sig)) = (t, kid, sig) else {
        return false;
    };
    let Some(key) = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid))
    else {
        return false;
    };
    let Some(x) = key["x"].as_str().and_then(|x| B64.decode(x).ok()) else {
        return false;
    };
    let Ok(x): Result<[u8; 32], _> = x.try_into() else {
        return false;
    };
    let Ok(vk) = VerifyingKey::from_bytes(&x) else {
        return false;
    };
    let Some(sig) = B64
        .decode(sig)
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s).ok())
    else {
        return false;
    };
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    vk.verify(&msg, &Signature::from_bytes(&sig)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_against_jwks() {
        let keys = Keys::from_seed([7; 32]);
        assert!(keys.kid.starts_with("ds_"));
        let jwks = keys.jwks();
        let h = keys.signature_header(1_700_000_000, b"{\"a\":1}");
        assert!(verify_with_jwks(&jwks, &h, b"{\"a\":1}"));
        assert!(!verify_with_jwks(&jwks, &h, b"{\"a\":2}"));
        let other = Keys::from_seed([8; 32]);
        assert!(!verify_with_jwks(&other.jwks(), &h, b"{\"a\":1}"));
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let keys = Keys::from_seed([1; 32]);
        let tok = keys.token(&serde_json::json!({"sub": "s1", "gen": 3}));
        assert_eq!(keys.verify_token(&tok).unwrap()["gen"], 3);
        let forged = format!(
            "{}.{}",
            B64.encode(r#"{"sub":"s1","gen":4}"#),
            tok.split_once('.').unwrap().1
        );
        assert!(keys.verify_token(&forged).is_none());
        assert!(Keys::from_seed([2; 32]).verify_token(&tok).is_none());
    }
}
