//! Loading the configuration: defaults < TOML file < `PGPROOF_*` env (`__` nests) < flags.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use pgproof_core::error::Error;

use crate::config::Config;

/// The file read when `--config` and `PGPROOF_CONFIG` are both absent, if it exists.
pub const DEFAULT_CONFIG_FILES: [&str; 2] = ["pgproof.toml", "/etc/pgproof/pgproof.toml"];

/// Values given as flags, the last layer.
#[derive(Default)]
pub struct FlagOverrides {
    pub sink_url: Option<String>,
    pub source_url: Option<String>,
    pub format: Option<String>,
    pub identity_file: Option<PathBuf>,
}

/// Loads and validates the layered configuration. Every problem figment finds is
/// reported at once, each naming its key and where the value came from.
pub fn load(
    explicit: Option<&Path>,
    flags: &FlagOverrides,
) -> Result<(Config, Option<PathBuf>), Error> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    let file = match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::config(format!(
                    "config file {} does not exist; pass an existing file with --config or PGPROOF_CONFIG",
                    path.display()
                )));
            }
            Some(path.to_path_buf())
        }
        None => DEFAULT_CONFIG_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only nested names are config keys, so PGPROOF_CONFIG, PGPROOF_LOG and the like
    // never collide with them.
    figment = figment.merge(
        Env::prefixed("PGPROOF_")
            .split("__")
            .filter(|key| key.as_str().contains('.')),
    );
    let set = |f: Figment, key: &str, value: &Option<String>| match value {
        Some(v) => f.merge(Serialized::default(key, v)),
        None => f,
    };
    figment = set(figment, "sink.url", &flags.sink_url);
    figment = set(figment, "source.url", &flags.source_url);
    figment = set(figment, "dump.format", &flags.format);
    if let Some(path) = &flags.identity_file {
        figment = figment.merge(Serialized::default("encryption.identity_file", path));
    }
    let config: Config = figment.extract().map_err(|err| {
        let problems: Vec<String> = err
            .into_iter()
            .map(|e| format!("{}{}", one_line(&e.to_string()), origin_of_value(&e)))
            .collect();
        Error::config(format!("invalid configuration: {}", problems.join("; ")))
    })?;
    config
        .validate()
        .map_err(|e| Error::config(format!("{e}{}", origin_of_key(&figment, e.message()))))?;
    Ok((config, file))
}

/// An error text on one line: a TOML parser's multi-line excerpt becomes `; `-joined.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().any(|c| c.is_alphanumeric()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// ` (from the environment variable PGPROOF_SINK__PART_SIZE_MIB)` for a value of the
/// wrong type or shape read from the environment: figment names only the key
/// (`SINK.PART_SIZE_MIB`), which is not what the operator has to find and change.
fn origin_of_value(e: &figment::Error) -> String {
    match &e.metadata {
        Some(meta) if meta.name.contains("environment") && !e.path.is_empty() => {
            let var = format!("PGPROOF_{}", e.path.join("__").to_ascii_uppercase());
            format!(" (from the environment variable {var})")
        }
        _ => String::new(),
    }
}

/// ` (from PGPROOF_SINK__PART_SIZE_MIB)` or ` (from pgproof.toml)` for a validation
/// message that starts with a key (`sink.part_size_mib = 3 is out of range`).
fn origin_of_key(figment: &Figment, message: &str) -> String {
    let Some((key, _)) = message.split_once(" = ") else {
        return String::new();
    };
    let Some(meta) = figment.find_metadata(key) else {
        return String::new();
    };
    let parts: Vec<&str> = key.split('.').collect();
    if meta.name.contains("environment") {
        let var = format!("PGPROOF_{}", parts.join("__").to_ascii_uppercase());
        return format!(" (from the environment variable {var})");
    }
    match &meta.source {
        Some(source) => format!(" (from {source})"),
        None => format!(" (from {})", meta.name),
    }
}

/// Replaces the password of a libpq URI or `key=value` string with `****`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = redact_params(tail, '&');
        return format!("{scheme}://{authority}{tail}");
    }
    redact_params(url, ' ')
}

fn redact_params(text: &str, sep: char) -> String {
    text.split(sep)
        .map(|part| {
            let (head, value) = match part.split_once("password=") {
                Some((head, value)) => (head, value),
                None => return part.to_owned(),
            };
            if value.is_empty() || !(head.is_empty() || head.ends_with('?')) {
                return part.to_owned();
            }
            format!("{head}password=****")
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_every_url_shape() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:****@db:5432/app"
        );
        assert_eq!(
            redact_url("postgres://db/app?user=x&password=s3cret"),
            "postgres://db/app?user=x&password=****"
        );
        assert_eq!(
            redact_url("host=db password=s3cret user=x"),
            "host=db password=**** user=x"
        );
        assert_eq!(redact_url("postgres://app@db/app"), "postgres://app@db/app");
    }
}
