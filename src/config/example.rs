//! `config.example.toml`, generated from the table: every setting with its
//! default (the value in `ServerConfig::default()`), its flag and its note.
//!
//! The committed file must equal [`render`]'s output; a test checks it.
//! After changing a setting, regenerate the file with
//! `UPDATE_EXAMPLE=1 cargo test --lib config::example`.

use super::ServerConfig;
use super::settings::{SETTINGS, Setting, TABLE_NOTES};

/// What no single setting says: the layers, the variables, the durations.
const HEADER: &str = "\
# Example configuration for durable-streams. Every key is shown with its
# default, so this file changes nothing. Generated from src/config/settings.rs
# (a test keeps it in step; regenerate with
# `UPDATE_EXAMPLE=1 cargo test --lib config::example`).
#
# Layers, each overriding the one before:
#   built-in defaults < this file (--config FILE) < environment < command line.
# Each key has one environment variable: DS_ + the key in capitals, e.g.
# DS_LONG_POLL_TIMEOUT=5s; keys in a table carry its name: [auth] DS_AUTH_*,
# [auth.jwt] DS_AUTH_JWT_*, [rate_limit] DS_RATE_LIMIT_*, e.g.
# DS_AUTH_WRITE_TOKENS=tok1,tok2 (lists are comma-separated in the environment).
# Durations accept ms, s, m, h (500ms, 5s, 2m, 1h). Invalid values stop the
# server at start with a message naming the key and what is accepted.
";

/// A one-line note starts at this column, after the `key = value`.
const NOTE_COLUMN: usize = 33;

/// The text of `config.example.toml`.
pub fn render() -> String {
    let defaults = ServerConfig::default();
    let mut out = format!("{HEADER}\n");
    let mut table = "";
    for s in SETTINGS {
        let (t, name) = s.key.rsplit_once('.').unwrap_or(("", s.key));
        if t != table {
            table = t;
            blank_line(&mut out);
            out.push_str(&format!("[{t}]\n"));
            if let Some((_, note)) = TABLE_NOTES.iter().find(|(n, _)| *n == t) {
                comment(&mut out, note);
            }
        }
        let line = format!("{name} = {}", (s.show)(&defaults));
        let note = format!("{}{}", flag_prefix(s), s.note);
        if note.contains('\n') {
            blank_line(&mut out);
            comment(&mut out, &note);
            out.push_str(&line);
            out.push_str("\n\n");
        } else {
            let width = NOTE_COLUMN - 1;
            out.push_str(&format!("{line:<width$} # {note}\n"));
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// `--flag: ` for a setting with a flag.
fn flag_prefix(s: &Setting) -> String {
    match &s.flag {
        Some(f) if f.repeated => format!("--{} (repeatable): ", f.long),
        Some(f) => format!("--{}: ", f.long),
        None => String::new(),
    }
}

/// Ends `out` with one blank line (and no more).
fn blank_line(out: &mut String) {
    while !out.ends_with("\n\n") {
        out.push('\n');
    }
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str(&format!("# {line}\n"));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::layers::{KEYS, file_entries, resolve, validate};

    const COMMITTED: &str = include_str!("../../config.example.toml");

    #[test]
    fn the_committed_example_is_the_generated_one() {
        let generated = render();
        if std::env::var_os("UPDATE_EXAMPLE").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            COMMITTED == generated,
            "config.example.toml is not what src/config/settings.rs generates; \
             regenerate it with `UPDATE_EXAMPLE=1 cargo test --lib config::example`\n\
             generated:\n{generated}"
        );
    }

    #[test]
    fn the_example_names_every_setting_once_and_validates() {
        let entries = file_entries("config.example.toml", COMMITTED).unwrap();
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), KEYS.len(), "{keys:?}");
        for key in KEYS {
            assert!(keys.contains(key), "{key} is not in the example");
        }
        let c = resolve(Some(("config.example.toml", COMMITTED)), &BTreeMap::new()).unwrap();
        assert_eq!(c, ServerConfig::default());
        validate(&c).unwrap();
    }

    #[test]
    fn keys_and_flags_are_unique() {
        for (i, s) in SETTINGS.iter().enumerate() {
            for t in &SETTINGS[i + 1..] {
                assert_ne!(s.key, t.key);
                if let (Some(a), Some(b)) = (&s.flag, &t.flag) {
                    assert_ne!(a.long, b.long);
                }
            }
        }
    }
}
