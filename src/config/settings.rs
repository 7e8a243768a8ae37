//! The one table of settings. Each entry declares a setting once: its key
//! (the TOML key, dotted for a table: `auth.tokens_file`; the `DS_*`
//! variable follows from it, see [`env_var`]), the `ServerConfig` field it
//! sets, the [`Kind`] of value (parsing, validation, its TOML form), its
//! `serve` flag if it has one (long name and `--help` text) and its note in
//! `config.example.toml`. Its default is the field's value in
//! `ServerConfig::default()`.
//!
//! Adding a setting: the `ServerConfig` field and its default, then one
//! entry here; then regenerate `config.example.toml` (see
//! [`super::example`]). The layers ([`super::layers`]), the flags
//! ([`super::flags`]) and the example file all read this table.
//!
//! Entries are in the order of the example file; the flags keep that order
//! in `--help`.

use clap::builder::PossibleValue;

use super::ServerConfig;
use super::kinds::{
    Addr, Bytes, Choice, Cidrs, Count, FsPath, Globs, Kind, OptionalPath, OptionalSecret,
    OptionalText, OptionalUrl, Origins, Raw, Span, Switch, Tokens, UrlPatterns, Word,
};
use super::retention::Policies;
use super::{HttpEngine, LogFormat, RequestLog, StorageKind, SyncMode};

/// One setting; see the module doc.
pub struct Setting {
    /// The TOML key; `table.key` for a key inside a TOML table.
    pub key: &'static str,
    /// The `serve` flag, if the setting has one.
    pub flag: Option<Flag>,
    /// Its comment in `config.example.toml`: one line is written after the
    /// value, several lines (separated by `\n`) above it.
    pub note: &'static str,
    /// Parses, validates and stores one value; the error says what is
    /// accepted (the caller names the key and the origin).
    pub apply: fn(&mut ServerConfig, &Raw<'_>) -> Result<(), String>,
    /// The setting's value in `c`, in TOML (secrets redacted).
    pub show: fn(&ServerConfig) -> toml::Value,
    /// The closed set of values `--help` lists, if any.
    pub choices: fn() -> Option<Vec<PossibleValue>>,
}

/// A command-line flag of `serve`.
pub struct Flag {
    /// The long name, without `--`.
    pub long: &'static str,
    /// The `--help` text.
    pub help: &'static str,
    /// May be given several times; every occurrence makes up one list.
    pub repeated: bool,
}

impl Setting {
    /// The environment variable that sets it.
    pub fn env_var(&self) -> String {
        env_var(self.key)
    }
}

/// The environment variable that sets `key`: `DS_` and the key in capitals,
/// a table's dot as `_` (`auth.read_tokens`: `DS_AUTH_READ_TOKENS`).
pub fn env_var(key: &str) -> String {
    format!("DS_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The setting named `key`.
pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

const fn flag(long: &'static str, help: &'static str) -> Option<Flag> {
    Some(Flag {
        long,
        help,
        repeated: false,
    })
}

const fn repeated(long: &'static str, help: &'static str) -> Option<Flag> {
    Some(Flag {
        long,
        help,
        repeated: true,
    })
}

/// Levels accepted by `log_level`.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// `key, field.path, kind, flag, note;` per setting: builds [`KEYS`] and
/// [`SETTINGS`]. The field's type must be the kind's `Value` (checked by
/// the compiler).
macro_rules! settings {
    ($($key:literal, $($field:ident).+, $kind:expr, $flag:expr, $note:expr;)*) => {
        /// Every configuration key, in the order `config.example.toml`
        /// documents them.
        pub const KEYS: &[&str] = &[$($key),*];

        /// Every setting, in the order of [`KEYS`].
        pub static SETTINGS: &[Setting] = &[$(Setting {
            key: $key,
            flag: $flag,
            note: $note,
            apply: |c, raw| {
                c.$($field).+ = Kind::parse(&$kind, raw)?;
                Ok(())
            },
            show: |c| Kind::show(&$kind, &c.$($field).+),
            choices: || Kind::choices(&$kind),
        }),*];
    };
}

settings! {
    "bind", bind, Addr,
        flag("bind", "Address to listen on (port 0 picks a free port)"),
        "port 0 picks a free port";
    "storage", storage, Choice::<StorageKind>::new(),
        flag("storage", "Storage backend"),
        "memory | file | acid | postgres";
    "data_dir", data_dir, FsPath,
        flag("data-dir", "Directory for the durable backends"),
        "where file and acid keep data";
    "database_url", database_url, OptionalSecret,
        flag("database-url", "The postgres backend's database, e.g. postgres://user:pass@host/db"),
        "the postgres backend's database, shared by every node, e.g.\n\
         \"postgres://streams:secret@db.internal:5432/streams\" (libpq URL or key=value\n\
         form; the schema is created and migrated by the server). Redacted in logs.";
    "database_pool_size", database_pool_size, Count { example: "16", min: 1 },
        flag("database-pool-size", "Most pooled database connections per node (postgres backend)"),
        "pooled read connections per node (+1 writer, +1 listener, +1 leadership)";
    "advertise_url", advertise_url, OptionalUrl,
        flag("advertise-url", "Where the other nodes of a postgres deployment reach this one"),
        "where the other nodes of a postgres deployment reach this\n\
         one (subscription requests are forwarded to the leading node). Empty: the\n\
         bound address, with the host name for 0.0.0.0 / [::].";
    "database_ca_file", database_ca_file, OptionalPath,
        flag("database-ca-file", "PEM file of CA certificates trusted for TLS to the database"),
        "TLS to the database follows the URL's sslmode\n\
         (prefer, the default: TLS when the server offers it; require: always),\n\
         verified against Mozilla's roots plus the PEM certificates in this file\n\
         (e.g. your provider's CA bundle).";
    "sync", sync, Choice::<SyncMode>::new(),
        flag("sync", "When durable backends flush to disk"),
        "always (ack after fsync) | interval";
    "sync_interval", sync_interval, Span { positive: false },
        flag("sync-interval", "Background fsync period with `--sync interval` (e.g. 100ms)"),
        "background fsync period for sync = \"interval\"";
    "long_poll_timeout", long_poll_timeout, Span { positive: false },
        flag("long-poll-timeout", "How long a long-poll waits for data (e.g. 500ms, 30s, 2m)"),
        "long-poll wait before 204";
    "sse_reconnect", sse_reconnect, Span { positive: false },
        flag("sse-reconnect", "How long an SSE connection stays open before the server closes it"),
        "SSE connections close after this (clients reconnect)";
    "sse_keepalive", sse_keepalive, Span { positive: false }, None,
        "SSE keep-alive comment interval";
    "cursor_interval", cursor_interval, Span { positive: false },
        flag("cursor-interval", "Width of a Stream-Cursor interval (e.g. 20s)"),
        "width of a Stream-Cursor interval";
    "sweep_interval", sweep_interval, Span { positive: false }, None,
        "how often expired streams are removed (and retention applied)";
    "retention", retention, Policies, None,
        "retention policies, none by default: drop the oldest whole records of the\n\
         matching streams (subscription glob syntax: `*` one segment, `**` any depth)\n\
         once they are older than max_age (\"7d\", \"12h\"; dated by their stream's\n\
         last write or read, restarts included) or lie wholly before the newest\n\
         max_bytes bytes; either alone or both. As arrays of tables:\n\
           [[retention]]\n\
           streams = \"logs/*\"\n\
           max_age = \"7d\"\n\
         In DS_RETENTION as an inline array: [{streams = \"logs/*\", max_bytes = 1000000}].";
    "header_read_timeout", header_read_timeout, Span { positive: true }, None,
        "a request head must arrive within this; idle keep-alive connections close after it";
    "body_read_timeout", body_read_timeout, Span { positive: true }, None,
        "a PUT/POST body must arrive within this (408 otherwise)";
    "send_timeout", send_timeout, Span { positive: true }, None,
        "close a connection whose client accepts no response bytes for this long";
    "max_body_bytes", limits.max_body_bytes, Count { example: "33554432", min: 0 },
        flag("max-body-bytes", "Largest accepted request body in bytes"),
        "larger PUT/POST bodies get 413";
    "max_name_bytes", limits.max_name_bytes, Count { example: "1024", min: 0 },
        flag("max-name-bytes", "Longest accepted stream name in bytes"),
        "longer stream names get 400";
    "chunk_bytes", limits.chunk_bytes, Count { example: "1048576", min: 1 },
        flag("chunk-bytes", "Soft limit on the bytes one catch-up read returns"),
        "soft limit on one catch-up read / SSE event";
    "catch_up_bytes", limits.catch_up_bytes, Count { example: "67108864", min: 1 },
        flag("catch-up-bytes",
            "Soft limit on one catch-up answer from the memory and file backends"),
        "the memory and file backends answer a catch-up read\n\
         without copying the stream's bytes, so one answer may run past chunk_bytes\n\
         up to this (fewer round trips for a reader far behind); the others stop at chunk_bytes.";
    "memory_limit_bytes", memory_limit_bytes, Bytes::<u64>::new("1073741824"),
        flag("memory-limit-bytes",
            "Cap on the memory backend's stream bytes (0: none); writes past it get 507"),
        "cap on the stream bytes the memory backend holds\n\
         (0 = none); writes past it answer 507 until deletes or expiry free room.";
    "cors_origins", cors_origins, Origins,
        repeated("cors-origin", "An origin allowed by CORS (\"*\" for any); repeat for several"),
        "\"*\" or e.g. \"https://app.example.com\"";
    "log_level", log_level, Word(LOG_LEVELS),
        flag("log-level", "Log level (RUST_LOG, when set, overrides it)"),
        "trace | debug | info | warn | error | off (RUST_LOG overrides)";
    "log_format", log_format, Choice::<LogFormat>::new(),
        flag("log-format", "Log line format (pretty is coloured only on a terminal)"),
        "pretty | json (pretty is coloured only when stderr is a terminal\n\
         and NO_COLOR is unset)";
    "request_log", request_log, Choice::<RequestLog>::new(),
        flag("request-log", "Which requests get a log line (all are counted in /metrics)"),
        "errors (5xx at warn, the rest at debug) | all (an access log\n\
         at info, ~4-5 us of CPU per request) | off";
    "http_engine", http_engine, Choice::<HttpEngine>::new(),
        flag("http-engine", "Which code serves HTTP/1.1 connections"),
        "native (our HTTP/1.1 loop) | hyper (hyper's, for comparison)";
    "live_parking", live_parking, Switch, None,
        "caught-up SSE subscribers and long-pollers on plain HTTP/1.1 (native engine)\n\
         wait as a few hundred bytes in one epoll set instead of as a task each";
    "compression_min_bytes", compression_min_bytes, Bytes::<u16>::new("1024"), None,
        "catch-up reads at least this large are gzip/br compressed (0-65535)";
    "webhook_ca_file", webhook_ca_file, OptionalPath, None,
        "A PEM file of extra CA certificates trusted for https:// webhooks, on top of\n\
         the built-in Mozilla roots (e.g. a private CA); \"\" = built-in roots only.";
    "tls_cert_file", tls_cert_file, OptionalPath,
        flag("tls-cert", "PEM certificate chain to serve HTTPS with (needs --tls-key)"),
        "With tls_key_file: serve HTTPS only, HTTP/2 and HTTP/1.1 by ALPN. A PEM\n\
         chain, leaf first. Both files are read again on SIGHUP (new handshakes use\n\
         the new certificate; open connections go on); \"\" = plain HTTP.";
    "tls_key_file", tls_key_file, OptionalPath,
        flag("tls-key", "PEM private key of --tls-cert"),
        "the PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert_file";
    "h2_max_concurrent_streams", h2_max_concurrent_streams, Count { example: "256", min: 1 }, None,
        "most open requests (SSE subscriptions included) per HTTP/2 connection";
    "auth.enabled", auth.enabled, Switch, None,
        "DS_AUTH_ENABLED";
    "auth.public_reads", auth.public_reads, Switch, None,
        "anyone may read (and scrape /metrics); writes still need a token";
    "auth.read_tokens", auth.read_tokens, Tokens, None,
        "DS_AUTH_READ_TOKENS=a,b";
    "auth.write_tokens", auth.write_tokens, Tokens, None,
        "DS_AUTH_WRITE_TOKENS=c";
    "auth.tokens_file", auth.tokens_file, OptionalPath, None,
        "A file of more tokens, read at start: one per line, `read:TOKEN`,\n\
         `write:TOKEN` or `rw:TOKEN` (both scopes); blank lines and `# ...` ignored.";
    "auth.public_streams", auth.public_streams, Globs, None,
        "Streams anyone may read, as globs over names (`*` one segment, `**` any),\n\
         e.g. [\"public/**\"]; their answers may be kept by shared caches (others carry\n\
         `Cache-Control: private` while auth is on).";
    "auth.jwt.hs256_secret", auth.jwt.hs256_secret, OptionalSecret, None,
        "the shared secret of HS256 tokens (\"\" = HS256 refused)";
    "auth.jwt.public_keys_file", auth.jwt.public_keys_file, OptionalPath, None,
        "a JWKS file of RS256 / ES256 / EdDSA public keys, read at start";
    "auth.jwt.jwks_url", auth.jwt.jwks_url, OptionalUrl, None,
        "a JWKS URL, fetched at start and every jwks_refresh";
    "auth.jwt.jwks_refresh", auth.jwt.jwks_refresh, Span { positive: true }, None,
        "how often jwks_url is fetched again";
    "auth.jwt.issuer", auth.jwt.issuer, OptionalText, None,
        "the `iss` every token must carry (\"\" = any)";
    "auth.jwt.audience", auth.jwt.audience, OptionalText, None,
        "an `aud` every token must carry (\"\" = any)";
    "auth.jwt.leeway", auth.jwt.leeway, Span { positive: false }, None,
        "clock skew allowed on exp / nbf";
    "rate_limit.requests_per_second", rate_limit.requests_per_second, Count { example: "20", min: 0 }, None,
        "sustained requests per second per key (0 = no limit)";
    "rate_limit.burst", rate_limit.burst, Count { example: "50", min: 1 }, None,
        "requests a key may make at once above the sustained rate";
    "rate_limit.max_live_readers", rate_limit.max_live_readers, Count { example: "16", min: 0 }, None,
        "most open long-polls + SSE streams per key (0 = no cap)";
    "rate_limit.trusted_proxies", rate_limit.trusted_proxies, Cidrs, None,
        "Proxies (addresses, CIDR ranges) whose X-Forwarded-For names the client,\n\
         e.g. [\"127.0.0.1\", \"10.0.0.0/8\"]; from anyone else the header is ignored.";
    "rate_limit.max_keys", rate_limit.max_keys, Count { example: "100000", min: 1 }, None,
        "most keys remembered (idle ones are evicted first)";
    "proxy.enabled", proxy.enabled, Switch, None,
        "serve /v1/proxy (DS_PROXY_ENABLED)";
    "proxy.allowlist", proxy.allowlist, UrlPatterns, None,
        "Upstream URL patterns `scheme://host[:port][/path]`: host exact or `*.domain`\n\
         (names below it), port exact or `*` (default: the scheme's), path exact or\n\
         ending in `*` (a prefix; none = any path); the query is not matched. E.g.\n\
         [\"https://api.openai.com/v1/*\"]. Empty = every upstream refused.";
    "proxy.url_ttl", proxy.url_ttl, Span { positive: true }, None,
        "how long a pre-signed URL, and the stream behind it, lives";
    "proxy.header_timeout", proxy.header_timeout, Span { positive: true }, None,
        "the upstream must send its response headers within this (else 504)";
    "proxy.body_idle_timeout", proxy.body_idle_timeout, Span { positive: true }, None,
        "the upstream body may pause this long between chunks (then the pipe ends)";
}

/// The comment above a TOML table in `config.example.toml`, per table.
pub const TABLE_NOTES: &[(&str, &str)] = &[
    (
        "auth",
        "Bearer-token auth, off by default. With it on, stream requests need\n\
         `Authorization: Bearer TOKEN` (or `?access_token=TOKEN`, for EventSource):\n\
         GET/HEAD (and /metrics) need a read token, PUT/POST/DELETE a write token; the\n\
         scopes are separate (list a token in both to grant both). Missing/unknown\n\
         token: 401; wrong scope: 403. CORS preflights, /healthz and /readyz never\n\
         need a token. JWTs ([auth.jwt]) may be used beside these tokens.",
    ),
    (
        "auth.jwt",
        "JSON Web Tokens, accepted when a key is set (hs256_secret, public_keys_file\n\
         or jwks_url). `exp` is required; the `scope` claim lists `read:GLOB`,\n\
         `write:GLOB` (stream-name globs; write does not imply read) and `metrics`.",
    ),
    (
        "proxy",
        "The Proxy Protocol at /v1/proxy, off by default: POST an upstream request,\n\
         get a pre-signed URL of a durable stream the upstream's response is piped\n\
         into. Upstreams must match the allowlist and pass the webhook SSRF rules\n\
         (https:// to public addresses; http:// only to localhost / 127.0.0.x);\n\
         https uses webhook_ca_file's roots too. With auth on, creating, HEAD and\n\
         DELETE need a write token (JWT: write:__ds/proxy/**).",
    ),
    (
        "rate_limit",
        "Per-client limits, off by default. The key is the token's subject (JWT `sub`,\n\
         a digest of a static token), else the client address. Over a limit: 429 with\n\
         Retry-After, counted in ds_rate_limited_total.",
    ),
];
