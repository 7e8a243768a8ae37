//! Pure helpers: stream-path globs and normalized-config hashing.

use sha2::{Digest, Sha256};

/// Matches a stream path against a glob: `*` matches exactly one path
/// segment, `**` matches zero or more segments; other segments match
/// literally.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    match_segments(&p, &s)
}

fn match_segments(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|i| match_segments(rest, &s[i..])),
        Some((&"*", rest)) => !s.is_empty() && match_segments(rest, &s[1..]),
        Some((lit, rest)) => s.first() == Some(lit) && match_segments(rest, &s[1..]),
    }
}

/// Hashes a normalized configuration: `parts` are (field, value) pairs in a
/// fixed order; each is length-prefixed so no two configurations collide by
/// concatenation. Returns lowercase hex SHA-256.
pub fn config_hash(parts: &[(&str, Option<&str>)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in parts {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        match v {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_one_segment() {
        assert!(matches("events/*", "events/a"));
        assert!(!matches("events/*", "events"));
        assert!(!matches("events/*", "events/a/b"));
        assert!(!matches("events/*", "other/a"));
    }

    #[test]
    fn double_star_matches_zero_or_more() {
        assert!(matches("events/**", "events"));
        assert!(matches("events/**", "events/a"));
        assert!(matches("events/**", "events/a/b/c"));
        assert!(matches("**/x", "x"));
        assert!(matches("**/x", "a/b/x"));
        assert!(!matches("**/x", "a/b/y"));
        assert!(matches("a/**/z", "a/z"));
        assert!(matches("a/**/z", "a/b/c/z"));
    }

    #[test]
    fn literal_patterns() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/bc"));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = config_hash(&[("type", Some("webhook")), ("pattern", Some("e/*"))]);
        let b = config_hash(&[("type", Some("webhook")), ("pattern", Some("e/*"))]);
        let c = config_hash(&[("type", Some("webhook")), ("pattern", None)]);
        let d = config_hash(&[("type", Some("webhookp")), ("pattern", Some("attern"))]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.len(), 64);
    }
}
