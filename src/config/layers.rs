//! Merging the configuration layers: defaults < TOML file < `DS_*`
//! environment, each key as [`super::settings`] declares it. Command-line
//! flags are applied last ([`super::flags`]), through the same setter.
//! Everything here is pure: the file arrives as text and the
//! environment as a map, so tests never touch the process environment.
//!
//! Every key is spelled the same in each layer: `long_poll_timeout` in the
//! file, `DS_LONG_POLL_TIMEOUT` in the environment. Keys of the `[auth]`
//! table are `auth.KEY` here and `DS_AUTH_KEY` in the environment. Unknown
//! keys in the file are errors; `DS_*` variables that name no key are
//! ignored (other tools share the prefix).

use std::collections::BTreeMap;

use super::kinds::Raw;
pub use super::kinds::tokens;
use super::settings::{self, SETTINGS};
pub use super::settings::{KEYS, env_var};
use super::{Secret, ServerConfig, StorageKind};

/// A setting that could not be used; names the key, where it came from and
/// what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}` (from {origin}): {message}")]
pub struct ConfigError {
    pub key: String,
    /// The file path, the environment variable or the flag.
    pub origin: String,
    pub message: String,
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
            set(&mut c, &key, &Raw::Toml(&value), path)?;
        }
    }
    for s in SETTINGS {
        let var = s.env_var();
        if let Some(value) = env.get(&var) {
            set(&mut c, s.key, &Raw::Text(value), &var)?;
        }
    }
    Ok(c)
}

/// Sets `key` to `value`, which came from `origin` (a file, a variable or a
/// flag); the error names all three.
pub(super) fn set(
    c: &mut ServerConfig,
    key: &str,
    value: &Raw<'_>,
    origin: &str,
) -> Result<(), ConfigError> {
    let setting = settings::find(key).ok_or_else(|| unknown(key, origin))?;
    (setting.apply)(c, value).map_err(|message| ConfigError {
        key: key.to_string(),
        origin: origin.to_string(),
        message,
    })
}

fn unknown(key: &str, origin: &str) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        origin: origin.to_string(),
        message: format!("unknown key; known keys: {}", KEYS.join(", ")),
    }
}

/// Checks what no single key can: settings that only make sense together.
/// Run after the last layer (the command line) is applied.
pub fn validate(c: &ServerConfig) -> Result<(), ConfigError> {
    let a = &c.auth;
    if a.enabled
        && a.read_tokens.is_empty()
        && a.write_tokens.is_empty()
        && a.tokens_file.is_none()
        && !a.jwt.enabled()
    {
        return Err(ConfigError {
            key: "auth.enabled".into(),
            origin: "the merged configuration".into(),
            message: "auth is enabled but no tokens are configured; set auth.read_tokens, \
                      auth.write_tokens, auth.tokens_file or a key in [auth.jwt]"
                .into(),
        });
    }
    if c.tls_cert_file.is_some() != c.tls_key_file.is_some() {
        let key = if c.tls_cert_file.is_some() {
            "tls_key_file"
        } else {
            "tls_cert_file"
        };
        return Err(ConfigError {
            key: key.into(),
            origin: "the merged configuration".into(),
            message: "HTTPS needs both tls_cert_file and tls_key_file (--tls-cert and \
                      --tls-key, DS_TLS_CERT_FILE and DS_TLS_KEY_FILE)"
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
pub(super) fn file_entries(
    path: &str,
    text: &str,
) -> Result<Vec<(String, toml::Value)>, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
        key: "(file)".into(),
        origin: path.to_string(),
        message: format!("not valid TOML: {e}"),
    })?;
    let mut out = Vec::new();
    flatten("", table, &mut out);
    if let Some((k, _)) = out.iter().find(|(k, _)| settings::find(k).is_none()) {
        return Err(unknown(k, path));
    }
    Ok(out)
}

/// Appends every value of `table` as `(prefix + dotted key, value)`; no
/// setting's value is a table, so every table is a level of the key
/// (`[auth.jwt]` `issuer`: `auth.jwt.issuer`).
fn flatten(prefix: &str, table: toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(inner) => flatten(&format!("{key}."), inner, out),
            v => out.push((key, v)),
        }
    }
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
    fn nested_tables_are_keys_with_dots() {
        let file = r#"
            [auth]
            enabled = true
            public_streams = ["public/**"]
            [auth.jwt]
            hs256_secret = "s"
            issuer = "https://idp.example"
            leeway = "5s"
        "#;
        let c = resolve(
            Some(("f.toml", file)),
            &env(&[("DS_AUTH_JWT_AUDIENCE", "streams")]),
        )
        .unwrap();
        assert_eq!(c.auth.public_streams, ["public/**"]);
        assert_eq!(c.auth.jwt.hs256_secret, Some(Secret("s".into())));
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(c.auth.jwt.audience.as_deref(), Some("streams"));
        assert_eq!(c.auth.jwt.leeway, Duration::from_secs(5));
        // A JWT key is enough for auth to be on.
        assert!(validate(&c).is_ok());
        let e = resolve(Some(("f.toml", "[auth.jwt]\nbogus = 1")), &env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.jwt.bogus");
        let e = resolve(None, &env(&[("DS_AUTH_PUBLIC_STREAMS", "a b")])).unwrap_err();
        assert_eq!(e.key, "auth.public_streams");
    }

    #[test]
    fn tls_needs_both_files() {
        let c = resolve(None, &env(&[("DS_TLS_CERT_FILE", "/c.pem")])).unwrap();
        assert_eq!(validate(&c).unwrap_err().key, "tls_key_file");
        let c = resolve(None, &env(&[("DS_TLS_KEY_FILE", "/k.pem")])).unwrap();
        assert_eq!(validate(&c).unwrap_err().key, "tls_cert_file");
        let c = resolve(
            None,
            &env(&[
                ("DS_TLS_CERT_FILE", "/c.pem"),
                ("DS_TLS_KEY_FILE", "/k.pem"),
            ]),
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
