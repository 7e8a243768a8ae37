//! The upstream allowlist (proxy spec section 6): pure parsing and
//! matching, no I/O.
//!
//! An entry is `scheme://host[:port][/path]`:
//! - `scheme` is `http` or `https` and must equal the URL's;
//! - `host` must equal the URL's host (case-insensitive), or, written
//!   `*.example.com`, be any name below `example.com` (not `example.com`
//!   itself); IPv6 literals are written in brackets;
//! - `port` must equal the URL's (the scheme's default when either leaves
//!   it out); `:*` allows any port;
//! - `path`: none (or `/*`) allows every path; ending in `*`, every path
//!   starting with what precedes the `*`; otherwise exactly that path. The
//!   query string is never matched.
//!
//! URLs whose path holds a `.` or `..` segment (also percent-encoded) or a
//! backslash never match, so a prefix cannot be escaped by traversal. An
//! empty list matches nothing.

/// One parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    https: bool,
    host: Host,
    /// `None`: any port.
    port: Option<u16>,
    path: PathRule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// Any name ending in `.{suffix}`.
    Below(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathRule {
    Any,
    Prefix(String),
    Exact(String),
}

/// What an upstream URL is matched on (the SSRF guard's parse of it).
pub struct UrlParts<'a> {
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: &'a str,
}

fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

impl Pattern {
    /// Parses one entry; `Err` says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("allowlist entry {entry:?}: {why}");
        let (https, rest) = if let Some(r) = entry.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = entry.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        if !rest.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("must be visible ASCII without spaces"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains(['@', '?', '#']) || path.contains(['?', '#']) {
            return Err(bad("must not carry credentials, a query or a fragment"));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(s) if !s.is_empty() && !s.contains('*') => Host::Below(s.to_string()),
            _ if host.is_empty() || host.contains('*') => {
                return Err(bad("needs a host (a leading `*.` is the only wildcard)"));
            }
            _ => Host::Exact(host),
        };
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => Some(default_port(https)),
        };
        let path = match path {
            "" | "/*" => PathRule::Any,
            p if p.ends_with('*') => {
                let prefix = &p[..p.len() - 1];
                if prefix.contains('*') {
                    return Err(bad("`*` may only end the path"));
                }
                PathRule::Prefix(prefix.to_string())
            }
            p if p.contains('*') => return Err(bad("`*` may only end the path")),
            p => PathRule::Exact(p.to_string()),
        };
        Ok(Pattern {
            https,
            host,
            port,
            path,
        })
    }

    /// True when `url` is allowed by this entry.
    pub fn matches(&self, url: &UrlParts<'_>) -> bool {
        let host = url.host.to_ascii_lowercase();
        let host_ok = match &self.host {
            Host::Exact(h) => *h == host,
            Host::Below(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        };
        let path = url.path.split('?').next().unwrap_or("/");
        let path_ok = match &self.path {
            PathRule::Any => true,
            PathRule::Prefix(p) => path.starts_with(p.as_str()),
            PathRule::Exact(p) => path == p,
        };
        self.https == url.https
            && host_ok
            && self.port.is_none_or(|p| p == url.port)
            && path_ok
            && !traverses(path)
    }
}

/// True when a path has `.`/`..` segments (plain or percent-encoded) or a
/// backslash: such paths are refused rather than normalized.
fn traverses(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\')
        || lower.contains("%5c")
        || lower.contains("%2f")
        || lower
            .replace("%2e", ".")
            .split('/')
            .any(|seg| seg == "." || seg == "..")
}

/// Parses every entry (the configuration's check).
pub fn parse_all(entries: &[String]) -> Result<Vec<Pattern>, String> {
    entries.iter().map(|e| Pattern::parse(e)).collect()
}

/// True when any pattern allows `url`; an empty list allows nothing.
pub fn allowed(patterns: &[Pattern], url: &UrlParts<'_>) -> bool {
    patterns.iter().any(|p| p.matches(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(pattern: &str, https: bool, host: &str, port: u16, path: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(&UrlParts {
            https,
            host,
            port,
            path,
        })
    }

    #[test]
    fn hosts_ports_and_paths() {
        let p = "https://api.example.com/v1/*";
        assert!(ok(p, true, "api.example.com", 443, "/v1/chat?x=1"));
        assert!(ok(p, true, "API.example.com", 443, "/v1/"));
        assert!(!ok(p, false, "api.example.com", 443, "/v1/chat"));
        assert!(!ok(p, true, "api.example.com", 8443, "/v1/chat"));
        assert!(!ok(p, true, "api.example.com", 443, "/v2/chat"));
        assert!(!ok(p, true, "evil.com", 443, "/v1/chat"));
        assert!(!ok(p, true, "api.example.com.evil.com", 443, "/v1/x"));
        assert!(!ok(p, true, "api.example.com", 443, "/v1/../admin"));
        assert!(!ok(p, true, "api.example.com", 443, "/v1/%2E%2e/admin"));
        assert!(!ok(p, true, "api.example.com", 443, "/v1/a%2fb"));
        let exact = "https://api.example.com/v1/chat";
        assert!(ok(exact, true, "api.example.com", 443, "/v1/chat?stream=1"));
        assert!(!ok(exact, true, "api.example.com", 443, "/v1/chat/x"));
        let below = "https://*.example.com";
        assert!(ok(below, true, "a.b.example.com", 443, "/anything"));
        assert!(!ok(below, true, "example.com", 443, "/"));
        assert!(!ok(below, true, "badexample.com", 443, "/"));
        assert!(ok("http://127.0.0.1:*", false, "127.0.0.1", 5555, "/x"));
        assert!(ok("http://[::1]:8080/", false, "::1", 8080, "/"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for e in [
            "",
            "api.example.com",
            "ftp://x",
            "https://",
            "https://a*b.com/",
            "https://*.com*/",
            "https://x.com/a*/b",
            "https://x.com/a*b*",
            "https://u@x.com/",
            "https://x.com/?q",
            "https://x.com:99999/",
            "https://x .com/",
        ] {
            assert!(Pattern::parse(e).is_err(), "{e:?} should be refused");
        }
        let any = UrlParts {
            https: true,
            host: "x",
            port: 443,
            path: "/",
        };
        assert!(!allowed(&[], &any));
    }
}
