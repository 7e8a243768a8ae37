//! Merging the configuration layers: defaults < TOML file < `DS_*`
//! environment. Command-line flags are applied last, by the binary, on the
//! typed result. Everything here is pure: the file arrives as text and the
//! environment as a map, so tests never touch the process environment.
//!
//! Every key is spelled the same in each layer: `long_poll_timeout` in the
//! file, `DS_LONG_POLL_TIMEOUT` in the environment. Keys of the `[auth]`
//! table are `auth.KEY` here and `DS_AUTH_KEY` in the environment. Unknown
//! keys in the file are errors; `DS_*` variables that name no key are
//! ignored (other tools share the prefix).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::ValueEnum;

use super::{HttpEngine, LogFormat, Secret, ServerConfig, StorageKind, SyncMode, parse_duration};

/// Every configuration key, in the order `config.example.toml` documents them.
pub const KEYS: &[&str] = &[
    "bind",
    "storage",
    "data_dir",
    "database_url",
    "database_pool_size",
    "database_ca_file",
    "advertise_url",
    "sync",
    "sync_interval",
    "long_poll_timeout",
    "sse_reconnect",
    "sse_keepalive",
    "cursor_interval",
    "sweep_interval",
    "header_read_timeout",
    "body_read_timeout",
    "send_timeout",
    "http_engine",
    "chunk_bytes",
    "max_body_bytes",
    "max_name_bytes",
    "memory_limit_bytes",
    "cors_origins",
    "log_level",
    "log_format",
    "compression_min_bytes",
    "webhook_ca_file",
    "auth.enabled",
    "auth.public_reads",
    "auth.read_tokens",
    "auth.write_tokens",
    "auth.tokens_file",
];

/// Levels accepted by `log_level`.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A setting that could not be used; names the key, where it came from and
/// what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}` (from {origin}): {message}")]
pub struct ConfigError {
    pub key: String,
    /// The file path or the environment variable.
    pub origin: String,
    pub message: String,
}

/// The environment variable that sets `key`.
pub fn env_var(key: &str) -> String {
    format!("DS_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Builds the configuration from the defaults, an optional TOML file
/// (`(path for messages, contents)`) and the environment.
pub fn resolve(
    file: Option<(&str, &str)>,
    env: &BTreeMap<String, String>,
) -> Result<ServerConfig, ConfigError> {
    let mut c = ServerConfig::default();
    if let Some((path, text)) = file {
        for (key, value) in file_entries(path, text)? {
            apply(&mut c, &key, Raw::Toml(&value)).map_err(|message| ConfigError {
                key: key.clone(),
                origin: path.to_string(),
                message,
            })?;
        }
    }
    for key in KEYS {
        let var = env_var(key);
        if let Some(value) = env.get(&var) {
            apply(&mut c, key, Raw::Env(value)).map_err(|message| ConfigError {
                key: key.to_string(),
                origin: var.clone(),
                message,
            })?;
        }
    }
    Ok(c)
}

/// Checks what no single key can: settings that only make sense together.
/// Run after the last layer (the command line) is applied.
pub fn validate(c: &ServerConfig) -> Result<(), ConfigError> {
    let a = &c.auth;
    if a.enabled && a.read_tokens.is_empty() && a.write_tokens.is_empty() && a.tokens_file.is_none()
    {
        return Err(ConfigError {
            key: "auth.enabled".into(),
            origin: "the merged configuration".into(),
            message: "auth is enabled but no tokens are configured; set auth.read_tokens, \
                      auth.write_tokens or auth.tokens_file"
                .into(),
        });
    }
    if c.storage == StorageKind::Postgres && c.database_url.is_none() {
        return Err(ConfigError {
            key: "database_url".into(),
            origin: "the merged configuration".into(),
            message: "storage = postgres needs database_url (or --database-url, \
                      DS_DATABASE_URL), e.g. postgres://user:pass@db:5432/streams"
                .into(),
        });
    }
    Ok(())
}

/// Flattens a TOML document into `(key, value)` pairs, refusing unknown keys.
fn file_entries(path: &str, text: &str) -> Result<Vec<(String, toml::Value)>, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
        key: "(file)".into(),
        origin: path.to_string(),
        message: format!("not valid TOML: {e}"),
    })?;
    let mut out = Vec::new();
    for (k, v) in table {
        match (k.as_str(), v) {
            ("auth", toml::Value::Table(auth)) => {
                out.extend(auth.into_iter().map(|(k2, v2)| (format!("auth.{k2}"), v2)))
            }
            (_, v) => out.push((k, v)),
        }
    }
    for (k, _) in &out {
        if !KEYS.contains(&k.as_str()) {
            return Err(ConfigError {
                key: k.clone(),
                origin: path.to_string(),
                message: format!("unknown key; known keys: {}", KEYS.join(", ")),
            });
        }
    }
    Ok(out)
}

/// One value as a layer spells it: typed in TOML, text in the environment.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Ok(s),
            Raw::Env(s) => Ok(s),
            Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
        }
    }

    fn uint(&self, example: &str) -> Result<u64, String> {
        let bad = || format!("expected a whole number of bytes (e.g. {example})");
        match self {
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).map_err(|_| bad()),
            Raw::Env(s) => s.trim().parse().map_err(|_| bad()),
            Raw::Toml(_) => Err(bad()),
        }
    }

    fn boolean(&self) -> Result<bool, String> {
        let bad = || "accepted values: true, false".to_string();
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Env(s) => match s.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad()),
            },
            Raw::Toml(_) => Err(bad()),
        }
    }

    /// A TOML array of strings, or a comma-separated environment value.
    fn list(&self) -> Result<Vec<String>, String> {
        match self {
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "expected an array of strings".to_string())
                })
                .collect(),
            Raw::Env(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Raw::Toml(_) => Err("expected an array of strings".into()),
        }
    }

    fn duration(&self) -> Result<std::time::Duration, String> {
        parse_duration(self.text()?).map_err(|e| format!("{e}; accepted: e.g. 500ms, 5s, 2m, 1h"))
    }

    fn size(&self, example: &str) -> Result<usize, String> {
        usize::try_from(self.uint(example)?).map_err(|_| "too large for this platform".into())
    }

    fn choice<T: ValueEnum>(&self) -> Result<T, String> {
        let s = self.text()?;
        T::from_str(s.trim(), true).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            format!(
                "{s:?} is not accepted; accepted values: {}",
                names.join(", ")
            )
        })
    }
}

/// Sets one key. The error message says what would be accepted.
fn apply(c: &mut ServerConfig, key: &str, v: Raw<'_>) -> Result<(), String> {
    match key {
        "bind" => {
            let s = v.text()?;
            c.bind = s.trim().parse().map_err(|_| {
                format!("{s:?} is not a socket address; accepted: e.g. 127.0.0.1:4437 or [::]:4437")
            })?
        }
        "storage" => c.storage = v.choice::<StorageKind>()?,
        "data_dir" => c.data_dir = PathBuf::from(v.text()?),
        "database_url" => {
            let s = v.text()?.trim().to_string();
            c.database_url = (!s.is_empty()).then_some(Secret(s));
        }
        "database_ca_file" => {
            let s = v.text()?;
            c.database_ca_file = (!s.is_empty()).then(|| PathBuf::from(s));
        }
        "advertise_url" => {
            let s = v.text()?.trim().to_string();
            if !(s.is_empty() || s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!(
                    "{s:?} is not accepted; accepted values: an http:// or https:// URL"
                ));
            }
            c.advertise_url = (!s.is_empty()).then_some(s);
        }
        "database_pool_size" => {
            let n = v.size("16")?;
            if n == 0 {
                return Err("must be at least 1".into());
            }
            c.database_pool_size = n;
        }
        "sync" => c.sync = v.choice::<SyncMode>()?,
        "sync_interval" => c.sync_interval = v.duration()?,
        "long_poll_timeout" => c.long_poll_timeout = v.duration()?,
        "sse_reconnect" => c.sse_reconnect = v.duration()?,
        "sse_keepalive" => c.sse_keepalive = v.duration()?,
        "cursor_interval" => c.cursor_interval = v.duration()?,
        "sweep_interval" => c.sweep_interval = v.duration()?,
        "header_read_timeout" => c.header_read_timeout = positive(v.duration()?)?,
        "body_read_timeout" => c.body_read_timeout = positive(v.duration()?)?,
        "send_timeout" => c.send_timeout = positive(v.duration()?)?,
        "http_engine" => c.http_engine = v.choice::<HttpEngine>()?,
        "chunk_bytes" => {
            let n = v.size("1048576")?;
            if n == 0 {
                return Err("must be at least 1".into());
            }
            c.limits.chunk_bytes = n;
        }
        "max_body_bytes" => c.limits.max_body_bytes = v.size("33554432")?,
        "max_name_bytes" => c.limits.max_name_bytes = v.size("1024")?,
        "memory_limit_bytes" => c.memory_limit_bytes = v.uint("1073741824")?,
        "cors_origins" => {
            let origins = v.list()?;
            for o in &origins {
                let ok = o == "*"
                    || ((o.starts_with("http://") || o.starts_with("https://"))
                        && axum::http::HeaderValue::from_str(o).is_ok());
                if !ok {
                    return Err(format!(
                        "{o:?} is not accepted; accepted values: \"*\" or origins such as https://app.example.com"
                    ));
                }
            }
            c.cors_origins = origins;
        }
        "log_level" => {
            let s = v.text()?.trim().to_ascii_lowercase();
            if !LOG_LEVELS.contains(&s.as_str()) {
                return Err(format!(
                    "{s:?} is not accepted; accepted values: {}",
                    LOG_LEVELS.join(", ")
                ));
            }
            c.log_level = s;
        }
        "log_format" => c.log_format = v.choice::<LogFormat>()?,
        "compression_min_bytes" => {
            c.compression_min_bytes = u16::try_from(v.uint("1024")?)
                .map_err(|_| "accepted values: 0 to 65535".to_string())?
        }
        "auth.enabled" => c.auth.enabled = v.boolean()?,
        "auth.public_reads" => c.auth.public_reads = v.boolean()?,
        "auth.read_tokens" => c.auth.read_tokens = tokens(v.list()?)?,
        "auth.write_tokens" => c.auth.write_tokens = tokens(v.list()?)?,
        "webhook_ca_file" => {
            let s = v.text()?;
            c.webhook_ca_file = (!s.is_empty()).then(|| PathBuf::from(s));
        }
        "auth.tokens_file" => {
            let s = v.text()?;
            c.auth.tokens_file = (!s.is_empty()).then(|| PathBuf::from(s));
        }
        _ => return Err(format!("unknown key; known keys: {}", KEYS.join(", "))),
    }
    Ok(())
}

/// A timeout of zero would refuse every client; it is a mistake, not "off".
fn positive(d: std::time::Duration) -> Result<std::time::Duration, String> {
    if d.is_zero() {
        Err("must be longer than zero".into())
    } else {
        Ok(d)
    }
}

/// Bearer tokens must be visible ASCII without spaces (RFC 6750 `b64token`
/// is narrower; this is what survives an `Authorization` header intact).
pub fn tokens(list: Vec<String>) -> Result<Vec<Secret>, String> {
    list.into_iter()
        .map(|t| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                Err("tokens must be non-empty visible ASCII without spaces".to_string())
            } else {
                Ok(Secret(t))
            }
        })
        .collect()
}

/// Parses a tokens file: one token per line as `read:TOKEN`, `write:TOKEN`
/// or `rw:TOKEN`; blank lines and lines starting with `#` are skipped.
/// Returns `(read, write)` tokens. Errors name the line, never the token.
pub fn parse_tokens_file(text: &str) -> Result<(Vec<Secret>, Vec<Secret>), String> {
    let (mut read, mut write) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let (scope, token) = line
            .split_once(':')
            .ok_or_else(|| bad("expected read:TOKEN, write:TOKEN or rw:TOKEN"))?;
        let token = tokens(vec![token.trim().to_string()]).map_err(|e| bad(&e))?;
        match scope.trim() {
            "read" => read.extend(token),
            "write" => write.extend(token),
            "rw" => {
                read.extend(token.clone());
                write.extend(token);
            }
            _ => return Err(bad("unknown scope; accepted scopes: read, write, rw")),
        }
    }
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::LogFormat;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_given_means_defaults() {
        assert_eq!(resolve(None, &env(&[])).unwrap(), ServerConfig::default());
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let text = include_str!("../../config.example.toml");
        let parsed = resolve(Some(("config.example.toml", text)), &env(&[])).unwrap();
        assert_eq!(parsed, ServerConfig::default());
        let keys: Vec<String> = file_entries("x", text)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for key in KEYS {
            assert!(keys.iter().any(|k| k == key), "{key} is not documented");
        }
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let file = r#"
            long_poll_timeout = "5s"
            sse_reconnect = "2m"
            chunk_bytes = 4096
            cors_origins = ["https://a.example"]
            [auth]
            enabled = true
            read_tokens = ["r1"]
        "#;
        let c = resolve(
            Some(("f.toml", file)),
            &env(&[
                ("DS_LONG_POLL_TIMEOUT", "500ms"),
                ("DS_CORS_ORIGINS", "https://b.example, https://c.example"),
                ("DS_AUTH_WRITE_TOKENS", "w1,w2"),
                ("DS_LOG_FORMAT", "json"),
                ("DS_BASE_URL", "ignored: not a key"),
            ]),
        )
        .unwrap();
        assert_eq!(c.long_poll_timeout, Duration::from_millis(500));
        assert_eq!(c.sse_reconnect, Duration::from_secs(120));
        assert_eq!(c.limits.chunk_bytes, 4096);
        assert_eq!(c.cors_origins, ["https://b.example", "https://c.example"]);
        assert!(c.auth.enabled);
        assert_eq!(c.auth.read_tokens, [Secret("r1".into())]);
        assert_eq!(
            c.auth.write_tokens,
            [Secret("w1".into()), Secret("w2".into())]
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.cursor_interval, ServerConfig::default().cursor_interval);
    }

    #[test]
    fn errors_name_the_key_the_origin_and_the_accepted_values() {
        let e = resolve(None, &env(&[("DS_STORAGE", "floppy")])).unwrap_err();
        assert_eq!(e.key, "storage");
        assert_eq!(e.origin, "DS_STORAGE");
        assert!(e.message.contains("memory, file, acid"), "{e}");

        let e = resolve(Some(("f.toml", "log_format = \"xml\"")), &env(&[])).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.origin.as_str()),
            ("log_format", "f.toml")
        );
        assert!(e.message.contains("pretty, json"), "{e}");

        let e = resolve(Some(("f.toml", "chunk_bytes = \"big\"")), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("`chunk_bytes`"), "{e}");

        let e = resolve(Some(("f.toml", "bogus = 1")), &env(&[])).unwrap_err();
        assert!(e.message.contains("unknown key"), "{e}");

        let e = resolve(None, &env(&[("DS_LOG_LEVEL", "loud")])).unwrap_err();
        assert!(e.message.contains("trace, debug, info, warn, error, off"));

        let e = resolve(None, &env(&[("DS_SSE_RECONNECT", "5 parsecs")])).unwrap_err();
        assert_eq!(e.key, "sse_reconnect");

        let e = resolve(None, &env(&[("DS_CORS_ORIGINS", "example.com")])).unwrap_err();
        assert_eq!(e.key, "cors_origins");

        assert!(resolve(None, &env(&[("DS_AUTH_ENABLED", "maybe")])).is_err());
        assert!(resolve(None, &env(&[("DS_CHUNK_BYTES", "0")])).is_err());
        assert!(resolve(None, &env(&[("DS_AUTH_READ_TOKENS", "a b")])).is_err());
    }

    #[test]
    fn auth_without_tokens_is_refused() {
        let c = resolve(None, &env(&[("DS_AUTH_ENABLED", "true")])).unwrap();
        assert_eq!(validate(&c).unwrap_err().key, "auth.enabled");
        let c = resolve(
            None,
            &env(&[("DS_AUTH_ENABLED", "1"), ("DS_AUTH_TOKENS_FILE", "/t")]),
        )
        .unwrap();
        assert!(validate(&c).is_ok());
    }

    #[test]
    fn tokens_files() {
        let (r, w) = parse_tokens_file("# ops\nread:r1\n\nwrite: w1\nrw:both\n").unwrap();
        assert_eq!(r, [Secret("r1".into()), Secret("both".into())]);
        assert_eq!(w, [Secret("w1".into()), Secret("both".into())]);
        let e = parse_tokens_file("read:ok\nadmin:secret-value").unwrap_err();
        assert!(
            e.starts_with("line 2:") && !e.contains("secret-value"),
            "{e}"
        );
        assert!(parse_tokens_file("just-a-token").is_err());
        assert!(parse_tokens_file("read:").is_err());
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var("long_poll_timeout"), "DS_LONG_POLL_TIMEOUT");
        assert_eq!(env_var("auth.read_tokens"), "DS_AUTH_READ_TOKENS");
    }
}
