//! Kinds of setting value: how one value is read from any layer (a typed
//! TOML value, the text of a `DS_*` variable or of a flag) and validated,
//! and how it is written in TOML for `config.example.toml`.
//!
//! Every kind gives the same error message whichever layer the value came
//! from; the message says what would be accepted. A kind never knows its
//! key: [`super::settings`] names the key and where the value lands.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use clap::builder::PossibleValue;

use super::{Cidr, Secret, parse_duration};

/// One value as a layer spells it.
pub enum Raw<'a> {
    /// Typed, from the TOML file.
    Toml(&'a toml::Value),
    /// Text, from a `DS_*` variable (a list is comma-separated).
    Text(&'a str),
    /// A flag's value, one per occurrence (only a repeatable flag has
    /// several; a list takes them all, anything else the last).
    Args(&'a [String]),
}

impl Raw<'_> {
    /// The value as text: a TOML string, the variable, or a flag's value.
    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Ok(s),
            Raw::Text(s) => Ok(s),
            Raw::Args(all) => Ok(all.last().map_or("", String::as_str)),
            Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
        }
    }

    fn uint(&self, example: &str) -> Result<u64, String> {
        let bad = || format!("expected a whole number of bytes (e.g. {example})");
        match self {
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).map_err(|_| bad()),
            Raw::Toml(_) => Err(bad()),
            _ => self.text()?.trim().parse().map_err(|_| bad()),
        }
    }

    fn boolean(&self) -> Result<bool, String> {
        let bad = || "accepted values: true, false".to_string();
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Toml(_) => Err(bad()),
            _ => match self.text()?.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad()),
            },
        }
    }

    /// A TOML array of strings, a comma-separated environment value, or
    /// every occurrence of a flag.
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
            Raw::Text(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Raw::Args(all) => Ok(all.to_vec()),
            Raw::Toml(_) => Err("expected an array of strings".into()),
        }
    }
}

/// A kind of value: its Rust type, how any layer's spelling becomes it,
/// how the example file writes it, and (for flags) the values to offer.
pub trait Kind {
    /// The type of the `ServerConfig` field it sets.
    type Value;
    /// Parses and validates one value; the error says what is accepted.
    fn parse(&self, raw: &Raw<'_>) -> Result<Self::Value, String>;
    /// The value in TOML, as `config.example.toml` shows it. Secrets are
    /// redacted (the example shows the defaults, which hold none).
    fn show(&self, value: &Self::Value) -> toml::Value;
    /// A closed set of values `--help` lists; `None`: free-form.
    fn choices(&self) -> Option<Vec<PossibleValue>> {
        None
    }
}

fn text(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

fn int(n: impl TryInto<i64>) -> toml::Value {
    toml::Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// A socket address such as `127.0.0.1:4437`.
pub struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    fn parse(&self, raw: &Raw<'_>) -> Result<SocketAddr, String> {
        let s = raw.text()?;
        s.trim().parse().map_err(|_| {
            format!("{s:?} is not a socket address; accepted: e.g. 127.0.0.1:4437 or [::]:4437")
        })
    }
    fn show(&self, v: &SocketAddr) -> toml::Value {
        text(v.to_string())
    }
}

/// One of an enum's values (`clap::ValueEnum` names them), any case.
pub struct Choice<T>(PhantomData<T>);

impl<T> Choice<T> {
    /// The kind for `T`'s values.
    pub const fn new() -> Self {
        Choice(PhantomData)
    }
}

impl<T> Default for Choice<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ValueEnum> Kind for Choice<T> {
    type Value = T;
    fn parse(&self, raw: &Raw<'_>) -> Result<T, String> {
        let s = raw.text()?;
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
    fn show(&self, v: &T) -> toml::Value {
        text(
            v.to_possible_value()
                .map(|p| p.get_name().to_string())
                .unwrap_or_default(),
        )
    }
    fn choices(&self) -> Option<Vec<PossibleValue>> {
        Some(
            T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .collect(),
        )
    }
}

/// One of a fixed list of words, any case, kept in lower case.
pub struct Word(pub &'static [&'static str]);

impl Kind for Word {
    type Value = String;
    fn parse(&self, raw: &Raw<'_>) -> Result<String, String> {
        let s = raw.text()?.trim().to_ascii_lowercase();
        if !self.0.contains(&s.as_str()) {
            return Err(format!(
                "{s:?} is not accepted; accepted values: {}",
                self.0.join(", ")
            ));
        }
        Ok(s)
    }
    fn show(&self, v: &String) -> toml::Value {
        text(v.clone())
    }
    fn choices(&self) -> Option<Vec<PossibleValue>> {
        Some(self.0.iter().map(PossibleValue::new).collect())
    }
}

/// A directory or file path.
pub struct FsPath;

impl Kind for FsPath {
    type Value = PathBuf;
    fn parse(&self, raw: &Raw<'_>) -> Result<PathBuf, String> {
        Ok(PathBuf::from(raw.text()?))
    }
    fn show(&self, v: &PathBuf) -> toml::Value {
        text(v.display().to_string())
    }
}

/// A path that may be left out: `""` means none.
pub struct OptionalPath;

impl Kind for OptionalPath {
    type Value = Option<PathBuf>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Option<PathBuf>, String> {
        let s = raw.text()?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
    fn show(&self, v: &Option<PathBuf>) -> toml::Value {
        text(
            v.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
    }
}

/// A secret string (a database URL) that may be left out: `""` means none.
pub struct OptionalSecret;

impl Kind for OptionalSecret {
    type Value = Option<Secret>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Option<Secret>, String> {
        let s = raw.text()?.trim().to_string();
        Ok((!s.is_empty()).then_some(Secret(s)))
    }
    fn show(&self, v: &Option<Secret>) -> toml::Value {
        text(if v.is_some() { "***" } else { "" })
    }
}

/// Free text that may be left out (a JWT issuer or audience): `""` means
/// none.
pub struct OptionalText;

impl Kind for OptionalText {
    type Value = Option<String>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Option<String>, String> {
        let s = raw.text()?.trim().to_string();
        Ok((!s.is_empty()).then_some(s))
    }
    fn show(&self, v: &Option<String>) -> toml::Value {
        text(v.clone().unwrap_or_default())
    }
}

/// Stream-name globs (`*` one segment, `**` any number), e.g.
/// `public/**`; no empty items, no spaces.
pub struct Globs;

impl Kind for Globs {
    type Value = Vec<String>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Vec<String>, String> {
        let globs = raw.list()?;
        if let Some(bad) = globs
            .iter()
            .find(|g| g.is_empty() || !g.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "{bad:?} is not accepted; accepted values: globs over stream names such as \"public/**\""
            ));
        }
        Ok(globs)
    }
    fn show(&self, v: &Vec<String>) -> toml::Value {
        toml::Value::Array(v.iter().map(|g| text(g.clone())).collect())
    }
}

/// Addresses and CIDR ranges (`10.0.0.0/8`, `::1`).
pub struct Cidrs;

impl Kind for Cidrs {
    type Value = Vec<Cidr>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Vec<Cidr>, String> {
        raw.list()?
            .iter()
            .map(|s| {
                Cidr::parse(s.trim()).ok_or_else(|| {
                    format!("{s:?} is not accepted; accepted values: addresses or CIDR ranges such as 10.0.0.0/8 or ::1")
                })
            })
            .collect()
    }
    fn show(&self, v: &Vec<Cidr>) -> toml::Value {
        toml::Value::Array(v.iter().map(|c| text(c.to_string())).collect())
    }
}

/// An `http://` or `https://` URL that may be left out: `""` means none.
pub struct OptionalUrl;

impl Kind for OptionalUrl {
    type Value = Option<String>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Option<String>, String> {
        let s = raw.text()?.trim().to_string();
        if !(s.is_empty() || s.starts_with("http://") || s.starts_with("https://")) {
            return Err(format!(
                "{s:?} is not accepted; accepted values: an http:// or https:// URL"
            ));
        }
        Ok((!s.is_empty()).then_some(s))
    }
    fn show(&self, v: &Option<String>) -> toml::Value {
        text(v.clone().unwrap_or_default())
    }
}

/// A count of bytes or items, at least `min`; `example` appears in the
/// error message.
pub struct Count {
    pub example: &'static str,
    pub min: usize,
}

impl Kind for Count {
    type Value = usize;
    fn parse(&self, raw: &Raw<'_>) -> Result<usize, String> {
        let n = usize::try_from(raw.uint(self.example)?)
            .map_err(|_| "too large for this platform".to_string())?;
        if n < self.min {
            return Err(format!("must be at least {}", self.min));
        }
        Ok(n)
    }
    fn show(&self, v: &usize) -> toml::Value {
        int(*v)
    }
}

/// A count of bytes that fits in `T` (`u64`, or `u16` for 0 to 65535).
pub struct Bytes<T> {
    /// Shown in the error message.
    pub example: &'static str,
    of: PhantomData<T>,
}

impl<T> Bytes<T> {
    /// The kind, with `example` for its error message.
    pub const fn new(example: &'static str) -> Self {
        Bytes {
            example,
            of: PhantomData,
        }
    }
}

/// An unsigned field type a [`Bytes`] value can land in.
pub trait Unsigned: TryFrom<u64> + Into<u64> + Copy {
    /// Its largest value (for the error message).
    const MAX: u64;
}

impl Unsigned for u16 {
    const MAX: u64 = u16::MAX as u64;
}

impl Unsigned for u64 {
    const MAX: u64 = u64::MAX;
}

impl<T: Unsigned> Kind for Bytes<T> {
    type Value = T;
    fn parse(&self, raw: &Raw<'_>) -> Result<T, String> {
        T::try_from(raw.uint(self.example)?)
            .map_err(|_| format!("accepted values: 0 to {}", T::MAX))
    }
    fn show(&self, v: &T) -> toml::Value {
        int((*v).into())
    }
}

/// A duration such as `500ms`, `5s`, `2m` or `1h`; with `positive`, zero
/// is refused (a timeout of zero would refuse every client: a mistake,
/// not "off").
pub struct Span {
    pub positive: bool,
}

impl Kind for Span {
    type Value = Duration;
    fn parse(&self, raw: &Raw<'_>) -> Result<Duration, String> {
        let d = parse_duration(raw.text()?)
            .map_err(|e| format!("{e}; accepted: e.g. 500ms, 5s, 2m, 1h"))?;
        if self.positive && d.is_zero() {
            return Err("must be longer than zero".into());
        }
        Ok(d)
    }
    fn show(&self, v: &Duration) -> toml::Value {
        let ms = v.as_millis();
        text(if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        })
    }
}

/// `true` or `false` (`1` or `0` in the environment).
pub struct Switch;

impl Kind for Switch {
    type Value = bool;
    fn parse(&self, raw: &Raw<'_>) -> Result<bool, String> {
        raw.boolean()
    }
    fn show(&self, v: &bool) -> toml::Value {
        toml::Value::Boolean(*v)
    }
}

/// CORS origins: `*` or `http(s)://` origins that fit in a header.
pub struct Origins;

impl Kind for Origins {
    type Value = Vec<String>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Vec<String>, String> {
        let origins = raw.list()?;
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
        Ok(origins)
    }
    fn show(&self, v: &Vec<String>) -> toml::Value {
        toml::Value::Array(v.iter().map(|o| text(o.clone())).collect())
    }
}

/// Bearer tokens (see [`tokens`]).
pub struct Tokens;

impl Kind for Tokens {
    type Value = Vec<Secret>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Vec<Secret>, String> {
        tokens(raw.list()?)
    }
    fn show(&self, v: &Vec<Secret>) -> toml::Value {
        toml::Value::Array(v.iter().map(|_| text("***")).collect())
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
