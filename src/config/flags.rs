//! The last layer: `serve`'s command-line flags, one per setting that
//! declares one in [`super::settings`], plus `--config FILE`.
//!
//! Clap checks each flag's value at parse time with the setting's own
//! [`Kind`](super::kinds::Kind) (so a bad value gets clap's usage error,
//! with the same message the file and the environment give), and
//! [`ServeFlags::apply`] sets the flags that were given over the merged
//! file and environment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::ServerConfig;
use super::kinds::Raw;
use super::layers::{self, ConfigError};
use super::settings::{SETTINGS, Setting};

/// The id of `--config`; settings' flags use their key as id.
const CONFIG: &str = "config";

/// `serve`'s arguments as given (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct ServeFlags {
    /// The TOML file (`--config`), if any.
    pub config: Option<PathBuf>,
    /// `(key, values)` for each setting whose flag was given, in table order.
    given: Vec<(&'static str, Vec<String>)>,
}

impl ServeFlags {
    /// Every layer: defaults < file < `DS_*` environment (`env`) < flags,
    /// then the tokens file and the checks that span keys.
    pub fn configure(&self, env: &BTreeMap<String, String>) -> Result<ServerConfig, ConfigError> {
        let mut c = super::load(self.config.as_deref(), env)?;
        self.apply(&mut c)?;
        super::load_tokens_file(&mut c)?;
        layers::validate(&c)?;
        Ok(c)
    }

    /// Sets the flags that were given over `c`; an error names the flag.
    pub fn apply(&self, c: &mut ServerConfig) -> Result<(), ConfigError> {
        for (key, values) in &self.given {
            let long = super::settings::find(key)
                .and_then(|s| s.flag.as_ref())
                .map_or(*key, |f| f.long);
            layers::set(c, key, &Raw::Args(values), &format!("--{long}"))?;
        }
        Ok(())
    }
}

/// The arguments, in `--help` order: `--config`, then the table's flags.
pub fn args() -> Vec<Arg> {
    let config = Arg::new(CONFIG)
        .long("config")
        .value_name("CONFIG")
        .value_parser(clap::value_parser!(PathBuf))
        .help("TOML configuration file (see config.example.toml)");
    std::iter::once(config)
        .chain(SETTINGS.iter().filter_map(arg))
        .collect()
}

/// The flag of `s`, if it has one.
fn arg(s: &'static Setting) -> Option<Arg> {
    let flag = s.flag.as_ref()?;
    // Clap wants a 'static value name; the table is static and the command
    // is built once per process, so this leaks a few bytes once.
    let value_name: &'static str = s.key.to_ascii_uppercase().leak();
    let arg = Arg::new(s.key)
        .long(flag.long)
        .help(flag.help)
        .value_name(value_name)
        .action(if flag.repeated {
            ArgAction::Append
        } else {
            ArgAction::Set
        });
    Some(match (s.choices)() {
        Some(values) => arg.value_parser(PossibleValuesParser::new(values)),
        None => {
            let apply = s.apply;
            arg.value_parser(move |v: &str| {
                let one = [v.to_string()];
                apply(&mut ServerConfig::default(), &Raw::Args(&one)).map(|()| v.to_string())
            })
        }
    })
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(args())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        cmd.args(args())
    }
}

impl clap::FromArgMatches for ServeFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = ServeFlags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = m.get_one::<PathBuf>(CONFIG) {
            self.config = Some(path.clone());
        }
        for s in SETTINGS.iter().filter(|s| s.flag.is_some()) {
            if let Some(values) = m.get_many::<String>(s.key) {
                self.given.retain(|(k, _)| *k != s.key);
                self.given.push((s.key, values.cloned().collect()));
            }
        }
        // Table order, whatever order updates came in.
        self.given
            .sort_by_key(|(k, _)| SETTINGS.iter().position(|s| s.key == *k));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::FromArgMatches;

    use super::*;
    use crate::config::StorageKind;

    fn parse(argv: &[&str]) -> Result<ServeFlags, clap::Error> {
        let m = Command::new("serve")
            .args(args())
            .try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))?;
        ServeFlags::from_arg_matches(&m)
    }

    #[test]
    fn the_command_is_well_formed() {
        Command::new("serve").args(args()).debug_assert();
    }

    #[test]
    fn flags_override_the_environment() {
        let flags = parse(&[
            "--storage",
            "memory",
            "--max-body-bytes",
            "8",
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "https://b.example",
            "--long-poll-timeout",
            "2m",
        ])
        .unwrap();
        let env = [("DS_MAX_BODY_BYTES", "6"), ("DS_SSE_RECONNECT", "5s")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let c = flags.configure(&env).unwrap();
        assert_eq!(c.storage, StorageKind::Memory);
        assert_eq!(c.limits.max_body_bytes, 8);
        assert_eq!(c.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(c.long_poll_timeout, Duration::from_secs(120));
        assert_eq!(c.sse_reconnect, Duration::from_secs(5));
    }

    #[test]
    fn a_bad_value_is_a_usage_error_with_the_settings_message() {
        let e = parse(&["--long-poll-timeout", "5 parsecs"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--long-poll-timeout"), "{text}");
        assert!(text.contains("accepted: e.g. 500ms"), "{text}");
        let e = parse(&["--storage", "floppy"]).unwrap_err();
        assert!(e.to_string().contains("memory, file, acid"), "{e}");
        assert!(parse(&["--chunk-bytes", "0"]).is_err());
        assert!(parse(&["--bind", "x"]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
    }
}
