//! JSON Web Token verification (RFC 7519) and the scopes a token grants;
//! pure apart from reading the JWKS file at start.
//!
//! Accepted: HS256 with `auth.jwt.hs256_secret`; RS256, ES256 (P-256) and
//! EdDSA (Ed25519) with the public keys of a JWKS (`public_keys_file`,
//! `jwks_url`). The key is chosen by the token's `alg` (and `kid` when it
//! has one) among keys of that algorithm only, so an HS256 token is never
//! checked against a public key (the HS/RS confusion) and `alg: none` has no
//! key at all. `exp` is required; `iss` and `aud` must match when
//! configured; `nbf` is honoured; `leeway` allows clock skew. Tokens longer
//! than [`MAX_TOKEN`] are refused before any parsing.
//!
//! The `scope` claim (a space-separated string, or an array of strings)
//! holds `read:GLOB` and `write:GLOB` items over stream names (the globs of
//! subscriptions: `*` one segment, `**` any number) and `metrics`; other
//! items are ignored. Write implies nothing about read.
//!
//! A token that verified is remembered, by its exact text, until its `exp`
//! (within [`SEEN_BYTES`], where tokens unused the longest are forgotten
//! first; a JWKS refresh forgets them all): a client
//! sends the same token with every request, and checking its signature
//! each time (RS256 tens of microseconds, ES256 and EdDSA more) would cost
//! more than the request it admits. Refused tokens are not remembered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;

use crate::config::JwtConfig;
use crate::subscriptions::glob;

/// Longest token accepted, in bytes: far above any real token, far below
/// what would make parsing costly.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Most keys a JWKS may hold (the rest are ignored).
const MAX_KEYS: usize = 64;

/// Most bytes of token text the verifier remembers, over both generations
/// of [`Seen`] (so a flood of distinct valid tokens costs what it did
/// without the memory, never more).
const SEEN_BYTES: usize = if cfg!(test) { 4096 } else { 4 << 20 };

/// What a verified token grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Globs of streams it may read.
    pub read: Vec<String>,
    /// Globs of streams it may write (create, append, delete).
    pub write: Vec<String>,
    /// It may scrape `/metrics`.
    pub metrics: bool,
}

impl Scopes {
    /// Parses a `scope` claim's items; unknown items are ignored.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Scopes {
        let mut s = Scopes::default();
        for item in items {
            if item == "metrics" {
                s.metrics = true;
            } else if let Some(g) = item.strip_prefix("read:").filter(|g| !g.is_empty()) {
                s.read.push(g.to_string());
            } else if let Some(g) = item.strip_prefix("write:").filter(|g| !g.is_empty()) {
                s.write.push(g.to_string());
            }
        }
        s
    }

    /// May it read stream `name`?
    pub fn can_read(&self, name: &str) -> bool {
        self.read.iter().any(|g| glob::matches(g, name))
    }

    /// May it write stream `name`?
    pub fn can_write(&self, name: &str) -> bool {
        self.write.iter().any(|g| glob::matches(g, name))
    }
}

/// A verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its `sub`, if any (the rate limiter's key).
    pub subject: Option<String>,
    pub scopes: Scopes,
}

/// Why a token was refused; the message may be shown to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<ScopeClaim>,
    /// Required by the validation; a number of seconds.
    exp: Option<f64>,
}

/// Tokens that verified, by their text ([`Verifier::verify`]), with their
/// `exp`, in two generations. When the newer one would pass half of
/// [`SEEN_BYTES`], the older one is forgotten and the newer one takes its
/// place; a token found in the older one moves back into the newer one. So
/// only tokens unused for a whole generation are forgotten: forgetting all
/// of them at once, as a full memory did before, made every client's next
/// request pay a signature check together.
#[derive(Default)]
struct Seen {
    /// The newer generation.
    tokens: HashMap<Box<str>, (Verified, u64)>,
    /// Bytes of token text in `tokens`.
    bytes: usize,
    older: HashMap<Box<str>, (Verified, u64)>,
    older_bytes: usize,
    /// Counts the JWKS refreshes: a token checked against the keys before
    /// one is not remembered after it.
    keys: u64,
}

impl Seen {
    /// `token`'s entry, and whether it is in the older generation.
    fn get(&self, token: &str) -> Option<(&(Verified, u64), bool)> {
        match self.tokens.get(token) {
            Some(e) => Some((e, false)),
            None => self.older.get(token).map(|e| (e, true)),
        }
    }

    /// Forgets `token`, in whichever generation it is.
    fn remove(&mut self, token: &str) {
        if self.tokens.remove(token).is_some() {
            self.bytes -= token.len();
        }
        if self.older.remove(token).is_some() {
            self.older_bytes -= token.len();
        }
    }

    /// Remembers `token` in the newer generation (making that one the
    /// older first when it is full).
    fn insert(&mut self, token: &str, entry: (Verified, u64)) {
        if self.older.remove(token).is_some() {
            self.older_bytes -= token.len();
        }
        if !self.tokens.contains_key(token) && self.bytes + token.len() > SEEN_BYTES / 2 {
            self.older = std::mem::take(&mut self.tokens);
            self.older_bytes = std::mem::take(&mut self.bytes);
        }
        if self.tokens.insert(token.into(), entry).is_none() {
            self.bytes += token.len();
        }
    }
}

/// One public key and the algorithm it verifies.
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens; cheap to share. The fetched keys (from `jwks_url`)
/// are swapped whole by [`Verifier::set_fetched`]; the `parking_lot` lock
/// is held only to clone or replace an `Arc`, never across an await.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    file: Vec<PublicKey>,
    fetched: RwLock<Arc<Vec<PublicKey>>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// Read by every request; written when a token is first seen.
    seen: RwLock<Seen>,
}

impl Verifier {
    /// The verifier `c` describes (reading `public_keys_file`), or `None`
    /// when no key is configured.
    pub fn open(c: &JwtConfig) -> Result<Option<Arc<Self>>, String> {
        if !c.enabled() {
            return Ok(None);
        }
        let file = match &c.public_keys_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let keys = parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if keys.is_empty() {
                    return Err(format!(
                        "{} holds no RS256, ES256 (P-256) or EdDSA (Ed25519) public key",
                        path.display()
                    ));
                }
                keys
            }
            None => Vec::new(),
        };
        Ok(Some(Arc::new(Verifier {
            hs256: c
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            file,
            fetched: RwLock::new(Arc::new(Vec::new())),
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway.as_secs(),
            seen: RwLock::default(),
        })))
    }

    /// Replaces the keys fetched from `jwks_url` with those of `jwks`;
    /// returns how many there are. A document that is not a JWKS keeps the
    /// old keys.
    pub fn set_fetched(&self, jwks: &str) -> Result<usize, String> {
        let keys = parse_jwks(jwks)?;
        let n = keys.len();
        *self.fetched.write() = Arc::new(keys);
        // A key that is gone no longer admits the tokens it verified.
        let mut seen = self.seen.write();
        *seen = Seen {
            keys: seen.keys.wrapping_add(1),
            ..Seen::default()
        };
        Ok(n)
    }

    /// Verifies `token` and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Verified, Refused> {
        let keys = match self.remembered(token) {
            Ok(v) => return Ok(v),
            Err(keys) => keys,
        };
        let (verified, exp) = self.check(token)?;
        self.remember(token, &verified, exp, keys);
        Ok(verified)
    }

    /// What `token` grants, if it verified before and its `exp` (plus the
    /// leeway, as the validation judges it) has not passed; else (the
    /// token forgotten if it had) the key generation to check it under.
    fn remembered(&self, token: &str) -> Result<Verified, u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let fresh = |exp: u64| now <= exp.saturating_add(self.leeway);
        {
            let seen = self.seen.read();
            match seen.get(token) {
                Some(((v, exp), false)) if fresh(*exp) => return Ok(v.clone()),
                None => return Err(seen.keys),
                Some(_) => {}
            }
        }
        // Stale, or in the older generation.
        let mut seen = self.seen.write();
        match seen.get(token) {
            Some(((v, exp), older)) if fresh(*exp) => {
                let (v, exp) = (v.clone(), *exp);
                if older {
                    // In use: back into the newer generation.
                    seen.insert(token, (v.clone(), exp));
                }
                Ok(v)
            }
            Some(_) => {
                seen.remove(token);
                Err(seen.keys)
            }
            None => Err(seen.keys),
        }
    }

    /// Remembers that `token` verified (under key generation `keys`).
    fn remember(&self, token: &str, verified: &Verified, exp: u64, keys: u64) {
        let mut seen = self.seen.write();
        if seen.keys != keys {
            // Checked against keys a refresh has replaced meanwhile.
            return;
        }
        seen.insert(token, (verified.clone(), exp));
    }

    /// Verifies `token` (its signature and claims): what it grants, and
    /// its `exp`.
    fn check(&self, token: &str) -> Result<(Verified, u64), Refused> {
        if token.len() > MAX_TOKEN {
            return Err(Refused("the token is too long"));
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(Refused("the token is not a JWT"));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Refused("the token is malformed"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let fetched = Arc::clone(&self.fetched.read());
        let mut candidates: Vec<&DecodingKey> = Vec::new();
        match header.alg {
            Algorithm::HS256 => candidates.extend(self.hs256.as_ref()),
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => candidates.extend(
                self.file
                    .iter()
                    .chain(fetched.iter())
                    .filter(|k| k.alg == header.alg)
                    .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
                    .map(|k| &k.key),
            ),
            _ => return Err(Refused("the token's algorithm is not accepted")),
        }
        if candidates.is_empty() {
            return Err(Refused("no key verifies tokens of this algorithm or kid"));
        }
        let mut last = Refused("the token's signature is not valid");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let scopes = match &data.claims.scope {
                        None => Scopes::default(),
                        Some(ScopeClaim::Text(s)) => Scopes::parse(s.split_ascii_whitespace()),
                        Some(ScopeClaim::List(l)) => Scopes::parse(l.iter().map(String::as_str)),
                    };
                    // (Present and a number: the validation required it.)
                    let exp = data.claims.exp.unwrap_or(0.0).max(0.0) as u64;
                    let v = Verified {
                        subject: data.claims.sub,
                        scopes,
                    };
                    return Ok((v, exp));
                }
                Err(e) => last = refusal(&e),
            }
        }
        Err(last)
    }
}

fn refusal(e: &jsonwebtoken::errors::Error) -> Refused {
    use jsonwebtoken::errors::ErrorKind as K;
    Refused(match e.kind() {
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet (nbf)",
        K::InvalidIssuer => "the token's issuer is not accepted",
        K::InvalidAudience => "the token's audience is not accepted",
        K::MissingRequiredClaim(c) if c == "exp" => "the token has no exp claim",
        K::MissingRequiredClaim(_) => "the token lacks a required claim (iss or aud)",
        K::InvalidSignature => "the token's signature is not valid",
        _ => "the token is malformed",
    })
}

/// The usable public keys of a JWKS document: RSA (RS256), EC P-256
/// (ES256) and OKP Ed25519 (EdDSA). Keys of other types, with another
/// `alg`, meant for encryption (`use: enc`), or that do not parse are
/// skipped, not errors: a provider's JWKS may hold keys for other uses.
/// Symmetric (`oct`) keys are never taken from a JWKS.
fn parse_jwks(text: &str) -> Result<Vec<PublicKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS (a JSON object with a \"keys\" array): {e}"))?;
    let mut out = Vec::new();
    for value in set.keys.into_iter().take(MAX_KEYS) {
        let declared = value.get("alg").and_then(|a| a.as_str()).map(str::to_owned);
        if value.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => continue,
        };
        let name = match alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        };
        if declared.is_some_and(|d| d != name) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
