//! The path → subscription index (pure): which live subscriptions link or
//! match a stream path, without scanning them all.

use std::collections::{HashMap, HashSet};

use super::glob;
use super::sub::Sub;

/// Which subscriptions care about a stream path, without scanning them all:
/// exact link paths, and patterns grouped by their literal prefix (the
/// segments before the first wildcard), so a path only meets the patterns
/// whose prefix is one of its own segment prefixes.
#[derive(Default)]
pub struct Index {
    /// Stream path → ids of the subscriptions linking it.
    links: HashMap<String, HashSet<String>>,
    /// Literal prefix → (subscription id, pattern).
    patterns: HashMap<String, Vec<(String, String)>>,
}

/// The segments of `pattern` before its first wildcard, joined by `/`.
pub fn literal_prefix(pattern: &str) -> String {
    pattern
        .split('/')
        .take_while(|s| *s != "*" && *s != "**")
        .collect::<Vec<_>>()
        .join("/")
}

impl Index {
    pub fn add_sub(&mut self, s: &Sub) {
        for p in s.links().keys() {
            self.links
                .entry(p.clone())
                .or_default()
                .insert(s.id.clone());
        }
        if let Some(pat) = &s.config.pattern {
            self.patterns
                .entry(literal_prefix(pat))
                .or_default()
                .push((s.id.clone(), pat.clone()));
        }
    }

    pub fn remove_sub(&mut self, s: &Sub) {
        for p in s.links().keys() {
            self.unlink(p, &s.id);
        }
        if let Some(pat) = &s.config.pattern {
            let prefix = literal_prefix(pat);
            if let Some(v) = self.patterns.get_mut(&prefix) {
                v.retain(|(id, _)| *id != s.id);
                if v.is_empty() {
                    self.patterns.remove(&prefix);
                }
            }
        }
    }

    pub fn link(&mut self, path: String, id: &str) {
        self.links.entry(path).or_default().insert(id.to_string());
    }

    pub fn unlink(&mut self, path: &str, id: &str) {
        if let Some(ids) = self.links.get_mut(path) {
            ids.remove(id);
            if ids.is_empty() {
                self.links.remove(path);
            }
        }
    }

    /// Whether any subscription links or matches `path` (no allocation
    /// beyond the prefix keys).
    pub fn any(&self, path: &str) -> bool {
        if self.links.contains_key(path) {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        let mut prefix = String::with_capacity(path.len());
        let check = |prefix: &str| {
            self.patterns
                .get(prefix)
                .is_some_and(|pats| pats.iter().any(|(_, p)| glob::matches(p, path)))
        };
        if check("") {
            return true;
        }
        for seg in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            if check(&prefix) {
                return true;
            }
        }
        false
    }

    pub fn interested(&self, path: &str) -> Vec<String> {
        let mut out: HashSet<String> = self.links.get(path).cloned().unwrap_or_default();
        let segs: Vec<&str> = path.split('/').collect();
        for n in 0..=segs.len() {
            if let Some(pats) = self.patterns.get(&segs[..n].join("/")) {
                out.extend(
                    pats.iter()
                        .filter(|(_, p)| glob::matches(p, path))
                        .map(|(id, _)| id.clone()),
                );
            }
        }
        let mut out: Vec<String> = out.into_iter().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("events/*"), "events");
        assert_eq!(literal_prefix("a/b/**/c"), "a/b");
        assert_eq!(literal_prefix("**"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
    }
}
