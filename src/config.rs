//! Server settings and their defaults.
//!
//! Settings come in layers, each overriding the one before: built-in
//! defaults ([`ServerConfig::default`]) < a TOML file (`--config FILE`) <
//! environment variables (`DS_*`) < command-line flags.
//!
//! - [`settings`]: the one table that declares every setting (key, `DS_*`
//!   variable, flag, kind of value, note in the example file).
//! - [`kinds`]: how each kind of value is parsed, validated and shown.
//! - [`layers`]: the pure merging of defaults, file and environment, and
//!   the checks that span keys.
//! - [`flags`]: `serve`'s flags, built from the table (the last layer).
//! - [`example`]: `config.example.toml`, generated from the table.

pub mod example;
pub mod flags;
pub mod kinds;
pub mod layers;
pub mod retention;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use flags::ServeFlags;
pub use layers::{ConfigError, KEYS, env_var, resolve, validate};

/// The environment layer: this process's `DS_*` variables.
pub fn environment() -> std::collections::BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("DS_"))
        .collect()
}

/// Reads the TOML file (when given) and merges it over the defaults and
/// under the environment. The only I/O of configuration besides
/// [`load_tokens_file`].
pub fn load(
    file: Option<&std::path::Path>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<ServerConfig, ConfigError> {
    let text = match file {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| ConfigError {
                key: "(file)".into(),
                origin: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            })?,
        )),
        None => None,
    };
    resolve(text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())), env)
}

/// Adds the tokens of `auth.tokens_file`, if set, to the configured ones.
pub fn load_tokens_file(c: &mut ServerConfig) -> Result<(), ConfigError> {
    let Some(path) = c.auth.tokens_file.clone() else {
        return Ok(());
    };
    let err = |message: String| ConfigError {
        key: "auth.tokens_file".into(),
        origin: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("cannot read the tokens file: {e}")))?;
    let (read, write) = layers::parse_tokens_file(&text).map_err(err)?;
    c.auth.read_tokens.extend(read);
    c.auth.write_tokens.extend(write);
    Ok(())
}

/// Which backend stores the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// In process memory; lost on exit (development and tests).
    Memory,
    /// Append-log files in the data directory (crash-safe).
    File,
    /// A redb database in the data directory (crash-safe, ACID).
    Acid,
    /// A PostgreSQL database (`database_url`) that any number of nodes share.
    Postgres,
}

/// When a durable backend flushes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Acknowledge only after fsync (concurrent writes share one fsync).
    Always,
    /// Acknowledge after the write reaches the OS; fsync in the background
    /// every `sync_interval`. A crash may lose that window.
    Interval,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Which requests get a line in the log (every request is counted in
/// `/metrics` whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestLog {
    /// No request lines.
    Off,
    /// Requests answered with a 5xx, at `warn`; the rest at `debug` (shown
    /// with `log_level = "debug"` or `RUST_LOG=durable_streams::request=debug`).
    Errors,
    /// Every request at `info` (5xx at `warn`, probes and scrapes at
    /// `debug`): an access log.
    /// Costs a formatted line per request, ~4-5 us of CPU per append.
    All,
}

/// Which code serves HTTP/1.1 connections (HTTP/2 always goes to hyper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpEngine {
    /// Our own connection loop (`src/http/h1.rs`): less CPU per request and
    /// no fixed buffers held by idle connections.
    Native,
    /// hyper's HTTP/1.1 server, as before the native loop (for comparison).
    Hyper,
}

/// A secret string (a bearer token) whose `Debug` output is redacted, so
/// that logging a configuration never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Bearer-token authentication (off by default).
///
/// Scopes are separate: a read token allows GET and HEAD (and `/metrics`), a
/// write token allows PUT, POST and DELETE. A token meant for both is listed
/// in both (or given the `rw:` prefix in the tokens file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Require a bearer token on stream requests and `/metrics`.
    pub enabled: bool,
    /// With auth enabled, let anyone read (GET/HEAD and `/metrics`); only
    /// writes need a token.
    pub public_reads: bool,
    /// Tokens with the read scope.
    pub read_tokens: Vec<Secret>,
    /// Tokens with the write scope.
    pub write_tokens: Vec<Secret>,
    /// A file of further tokens, one per line as `read:TOKEN`, `write:TOKEN`
    /// or `rw:TOKEN`; `#` starts a comment. Read once at start.
    pub tokens_file: Option<PathBuf>,
    /// Streams (globs over names) anyone may read, with answers that
    /// shared caches may keep (no `Cache-Control: private`).
    pub public_streams: Vec<String>,
    /// JSON Web Tokens, accepted beside the static tokens.
    pub jwt: JwtConfig,
}

/// JWT bearer tokens: verified with an HS256 secret and/or public keys
/// (a JWKS file, a JWKS URL); `exp` is required, `scope` grants
/// `read:GLOB` / `write:GLOB` over stream names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// The shared secret of HS256 tokens; none: HS256 is refused.
    pub hs256_secret: Option<Secret>,
    /// A JWKS file (RS256, ES256 and EdDSA public keys), read at start.
    pub public_keys_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start and every `jwks_refresh` after.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    pub jwks_refresh: Duration,
    /// The `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// An `aud` every token must carry, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            public_keys_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        }
    }
}

impl JwtConfig {
    /// True when any key to verify tokens with is configured.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.public_keys_file.is_some() || self.jwks_url.is_some()
    }
}

/// Per-client rate limits (off by default), keyed by the token's subject
/// (a digest for a static token), else the client's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per key; 0: no request limit.
    pub requests_per_second: usize,
    /// Requests a key may make at once above the sustained rate.
    pub burst: usize,
    /// Most live reads (long-polls, SSE) one key may hold open; 0: no cap.
    pub max_live_readers: usize,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or
    /// CIDR ranges); from anyone else the header is ignored.
    pub trusted_proxies: Vec<Cidr>,
    /// Most keys remembered; idle keys are evicted first.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_second: 0,
            burst: 50,
            max_live_readers: 0,
            trusted_proxies: Vec::new(),
            max_keys: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// True when any limit is set.
    pub fn enabled(&self) -> bool {
        self.requests_per_second > 0 || self.max_live_readers > 0
    }
}

/// The proxy (`/v1/proxy`, the Proxy Protocol), off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub enabled: bool,
    /// Upstream URL patterns (syntax in `proxy::allow`); empty refuses
    /// every upstream.
    pub allowlist: Vec<String>,
    /// How long a pre-signed URL (and its stream) lives.
    pub url_ttl: Duration,
    /// The upstream must answer with its headers within this (504).
    pub header_timeout: Duration,
    /// The upstream body may pause this long between chunks.
    pub body_idle_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            allowlist: Vec::new(),
            url_ttl: Duration::from_secs(24 * 3600),
            header_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(600),
        }
    }
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/BITS`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = bits.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// True when `ip` is in the range (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (V4(a), V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
            (V6(a), V6(b)) => (a.to_bits(), b.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Limits on what a client may send and what one read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted by a PUT or POST, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Longest stream name, in bytes (400 above).
    pub max_name_bytes: usize,
    /// Soft limit on the bytes one catch-up read or SSE event returns.
    pub chunk_bytes: usize,
    /// Soft limit on one catch-up answer from a backend that lends the
    /// stream's bytes instead of copying them (memory, file): such an
    /// answer may run past `chunk_bytes` up to this (the others stop at
    /// `chunk_bytes`).
    pub catch_up_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 * 1024 * 1024,
            max_name_bytes: 1024,
            chunk_bytes: 1024 * 1024,
            catch_up_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Everything the server needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub storage: StorageKind,
    pub data_dir: PathBuf,
    /// The PostgreSQL backend's database (a `postgres://` URL or libpq
    /// key=value string); redacted in logs.
    pub database_url: Option<Secret>,
    /// Most pooled database connections per node for reads (the postgres
    /// backend; its writer and wake listener hold one more each).
    pub database_pool_size: usize,
    /// A PEM file of CA certificates trusted for TLS to the database in
    /// addition to the built-in (Mozilla) roots.
    pub database_ca_file: Option<PathBuf>,
    /// The URL at which the other nodes of a shared (postgres) store reach
    /// this node, to forward subscription requests to the leader; `None`:
    /// derived from the bound address (the host name for 0.0.0.0 / `[::]`).
    pub advertise_url: Option<String>,
    pub sync: SyncMode,
    /// Background fsync period for `SyncMode::Interval`.
    pub sync_interval: Duration,
    /// How long a long-poll waits for data before answering 204.
    pub long_poll_timeout: Duration,
    /// How long an SSE connection stays open before the server closes it so
    /// that the client reconnects (lets CDNs collapse requests).
    pub sse_reconnect: Duration,
    /// Interval between SSE keep-alive comments.
    pub sse_keepalive: Duration,
    /// Width of a cursor interval.
    pub cursor_interval: Duration,
    /// How often expired streams are swept.
    pub sweep_interval: Duration,
    /// Retention policies (`[[retention]]`), applied by the retention
    /// sweeper every `sweep_interval`.
    pub retention: Vec<retention::RetentionPolicy>,
    /// A connection must deliver a request's whole head within this, and an
    /// idle keep-alive connection is closed after it (slowloris defence).
    pub header_read_timeout: Duration,
    /// A PUT or POST body must arrive within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// A connection whose client accepts no response bytes for this long
    /// (a consumer that stopped reading) is closed.
    pub send_timeout: Duration,
    /// Which code serves HTTP/1.1 connections.
    pub http_engine: HttpEngine,
    /// Live readers at rest park (`http::park`).
    pub live_parking: bool,
    pub limits: Limits,
    /// Cap on the stream bytes the memory backend holds (0: no cap); writes
    /// past it answer 507 until deletes or expiry free room.
    pub memory_limit_bytes: u64,
    /// Origins allowed by CORS; `*` (the default) allows any origin.
    pub cors_origins: Vec<String>,
    /// Default log level (trace, debug, info, warn, error, off); `RUST_LOG`,
    /// when set, overrides it.
    pub log_level: String,
    pub log_format: LogFormat,
    pub request_log: RequestLog,
    /// Catch-up read bodies at least this large are compressed when the
    /// client accepts gzip or br (0: compress every catch-up read).
    pub compression_min_bytes: u16,
    /// A PEM file of CA certificates trusted for `https://` webhooks in
    /// addition to the built-in (Mozilla) roots; read once at start.
    pub webhook_ca_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first) to serve HTTPS with; with
    /// `tls_key_file`, the listener speaks TLS only (HTTP/2 and HTTP/1.1
    /// by ALPN). Both files are read again on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Most concurrent requests (streams) one HTTP/2 connection may have
    /// open, SSE subscriptions included.
    pub h2_max_concurrent_streams: usize,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub proxy: ProxyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4437)),
            storage: StorageKind::File,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_pool_size: 16,
            database_ca_file: None,
            advertise_url: None,
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            long_poll_timeout: Duration::from_secs(30),
            sse_reconnect: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            cursor_interval: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(1),
            retention: Vec::new(),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            http_engine: HttpEngine::Native,
            live_parking: true,
            limits: Limits::default(),
            memory_limit_bytes: 0,
            cors_origins: vec!["*".to_string()],
            log_level: "info".to_string(),
            log_format: LogFormat::Pretty,
            request_log: RequestLog::Errors,
            compression_min_bytes: 1024,
            webhook_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            h2_max_concurrent_streams: 256,
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            proxy: ProxyConfig::default(),
        }
    }
}

/// Parses a duration such as `500ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m, h or d (e.g. 500ms, 5s, 2m)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} must start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(format!(
            "{s:?} has an unknown unit {unit:?}; use ms, s, m, h or d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(c("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
        assert!(!c("10.0.0.0/8").contains(ip("fd00::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host",
            "10.0.0.0/x",
            "1.2.3.4/",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
