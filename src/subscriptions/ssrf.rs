//! Webhook URL validation against SSRF: `https://` to public addresses, or
//! the development exception `http://localhost` / `http://127.0.0.x`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// True for the localhost development exception.
    pub dev_local: bool,
}

impl Target {
    /// The `Host` header for this target: the host, with the port when it
    /// is not the scheme's default (IPv6 literals in brackets).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.https { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Parses and statically validates a webhook URL; `Err` says why it was
/// rejected.
pub fn parse(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("webhook URLs must use https://".into());
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if authority.contains('@') {
        return Err("webhook URLs must not carry credentials".into());
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("bad IPv6 host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| "bad port")?,
        None if https => 443,
        None => 80,
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err("webhook URL has no host".into());
    }
    let dev_local = host == "localhost"
        || matches!(host.parse::<Ipv4Addr>(), Ok(ip) if ip.octets()[..3] == [127, 0, 0]);
    if !https && !dev_local {
        return Err("webhook URLs must use https:// (http:// only for localhost)".into());
    }
    if !dev_local && let Ok(ip) = host.parse::<IpAddr>() {
        check_ip(ip)?;
    }
    Ok(Target {
        https,
        host,
        port,
        path,
        dev_local,
    })
}

/// Rejects addresses on local networks: loopback, RFC 1918, link-local
/// (including cloud metadata), CGNAT, unspecified, multicast, ULA.
pub fn check_ip(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(v4) => bad_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => bad_v4(v4),
            None => bad_v6(v6),
        },
    };
    if bad {
        Err(format!("webhook target {ip} is a local network address"))
    } else {
        Ok(())
    }
}

fn bad_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || o[0] >= 240
}

fn bad_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_dev_localhost() {
        let t = parse("https://hooks.example.com/x?y=1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (443, "/x?y=1"));
        assert!(parse("http://localhost:8080/hook").unwrap().dev_local);
        assert!(parse("http://127.0.0.1:9/webhook").unwrap().dev_local);
    }

    #[test]
    fn rejects_local_networks_and_plain_http() {
        for u in [
            "http://10.0.0.1/hook",
            "http://example.com/hook",
            "https://10.1.2.3/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "ftp://x/",
            "https://user@host/",
        ] {
            assert!(parse(u).is_err(), "{u} should be rejected");
        }
    }
}
