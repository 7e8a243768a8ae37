//! Retention policies (`[[retention]]` in the TOML file, `DS_RETENTION` as
//! an inline TOML array): which streams keep how much. The sweeper that
//! applies them is [`crate::retention`].

use std::time::Duration;

use super::kinds::{Kind, Raw};

/// One `[[retention]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The streams it covers, in the subscriptions' glob syntax
    /// (`logs/*`: one segment, `logs/**`: any depth).
    pub streams: String,
    /// Records appended longer ago than this are dropped.
    pub max_age: Option<Duration>,
    /// Records that lie wholly before the newest `max_bytes` bytes are
    /// dropped.
    pub max_bytes: Option<u64>,
}

/// The kind of the `retention` setting: an array of tables.
pub struct Policies;

fn policy(v: &toml::Value) -> Result<RetentionPolicy, String> {
    let t = v
        .as_table()
        .ok_or("each policy is a table: [[retention]] streams = \"logs/*\", max_age = \"7d\"")?;
    if let Some(k) = t
        .keys()
        .find(|k| !matches!(k.as_str(), "streams" | "max_age" | "max_bytes"))
    {
        return Err(format!(
            "unknown key {k:?} in a policy; known: streams, max_age, max_bytes"
        ));
    }
    let streams = t
        .get("streams")
        .and_then(toml::Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("a policy needs streams = \"<glob>\", e.g. \"logs/*\" or \"**\"")?
        .to_string();
    if streams.split('/').any(str::is_empty) {
        return Err(format!("streams {streams:?} has an empty path segment"));
    }
    let max_age = match t.get("max_age") {
        None => None,
        Some(v) => {
            let s = v
                .as_str()
                .ok_or("max_age is a duration such as \"7d\" or \"12h\"")?;
            let d = super::parse_duration(s)?;
            if d.is_zero() {
                return Err("max_age must be longer than zero".into());
            }
            Some(d)
        }
    };
    let max_bytes = match t.get("max_bytes") {
        None => None,
        Some(v) => Some(
            v.as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or("max_bytes is a whole number of bytes, at least 0")?,
        ),
    };
    if max_age.is_none() && max_bytes.is_none() {
        return Err(format!(
            "the policy for {streams:?} needs max_age, max_bytes or both"
        ));
    }
    Ok(RetentionPolicy {
        streams,
        max_age,
        max_bytes,
    })
}

impl Kind for Policies {
    type Value = Vec<RetentionPolicy>;
    fn parse(&self, raw: &Raw<'_>) -> Result<Vec<RetentionPolicy>, String> {
        let parsed;
        let value = match raw {
            Raw::Toml(v) => *v,
            Raw::Text(_) | Raw::Args([_, ..]) => {
                let s = match raw {
                    Raw::Args(a) => a[a.len() - 1].as_str(),
                    Raw::Text(t) => t,
                    Raw::Toml(_) => "",
                };
                let wrapped: toml::Table = toml::from_str(&format!("v = {s}")).map_err(|e| {
                    format!("not a TOML array of policies, e.g. [{{streams = \"logs/*\", max_age = \"7d\"}}]: {e}")
                })?;
                parsed = wrapped
                    .get("v")
                    .cloned()
                    .unwrap_or(toml::Value::Array(Vec::new()));
                &parsed
            }
            Raw::Args([]) => return Ok(Vec::new()),
        };
        value
            .as_array()
            .ok_or("retention is an array of tables ([[retention]])")?
            .iter()
            .enumerate()
            .map(|(i, v)| policy(v).map_err(|e| format!("policy {}: {e}", i + 1)))
            .collect()
    }
    fn show(&self, v: &Vec<RetentionPolicy>) -> toml::Value {
        toml::Value::Array(
            v.iter()
                .map(|p| {
                    let mut t = toml::Table::new();
                    t.insert("streams".into(), toml::Value::String(p.streams.clone()));
                    if let Some(d) = p.max_age {
                        t.insert(
                            "max_age".into(),
                            toml::Value::String(format!("{}s", d.as_secs())),
                        );
                    }
                    if let Some(b) = p.max_bytes {
                        t.insert(
                            "max_bytes".into(),
                            toml::Value::Integer(b.try_into().unwrap_or(i64::MAX)),
                        );
                    }
                    toml::Value::Table(t)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Vec<RetentionPolicy>, String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        Policies.parse(&Raw::Toml(&t["retention"]))
    }

    #[test]
    fn arrays_of_tables() {
        let p = file(
            "[[retention]]\nstreams = \"logs/*\"\nmax_age = \"7d\"\n\
             [[retention]]\nstreams = \"**\"\nmax_bytes = 1000\nmax_age = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(p[0].max_bytes, None);
        assert_eq!(p[1].max_bytes, Some(1000));
        let env = Policies
            .parse(&Raw::Text("[{streams = \"a/*\", max_bytes = 5}]"))
            .unwrap();
        assert_eq!(env[0].streams, "a/*");
        assert_eq!(Policies.parse(&Raw::Toml(&Policies.show(&p))).unwrap(), p);
    }

    #[test]
    fn bad_policies_say_what_to_fix() {
        for (text, says) in [
            ("[[retention]]\nmax_age = \"1h\"", "needs streams"),
            ("[[retention]]\nstreams = \"a\"", "needs max_age, max_bytes"),
            (
                "[[retention]]\nstreams = \"a\"\nmax_age = \"7x\"",
                "unknown unit",
            ),
            (
                "[[retention]]\nstreams = \"a\"\nmax_age = \"0s\"",
                "longer than zero",
            ),
            (
                "[[retention]]\nstreams = \"a\"\nmax_bytes = -1",
                "whole number",
            ),
            (
                "[[retention]]\nstreams = \"a//b\"\nmax_bytes = 1",
                "empty path segment",
            ),
            (
                "[[retention]]\nstreams = \"a\"\nmax_byte = 1",
                "unknown key",
            ),
            ("retention = 5", "array of tables"),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(Policies.parse(&Raw::Text("nope")).is_err());
    }
}
