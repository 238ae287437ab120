use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};

use crate::{Config, ConfigError, ConfigErrors};

/// Prefix of environment overrides: `CUSTOS_<SECTION>__<FIELD>`.
///
/// Only variables with a `__` section separator are read, so the CLI's own variables
/// (`CUSTOS_ADDR`, `CUSTOS_TOKEN`, …) never collide with configuration keys.
pub const ENV_PREFIX: &str = "CUSTOS_";

/// Loads the configuration: built-in defaults, then the TOML file if one is given, then
/// environment overrides; then validates it. Returns every problem found.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigErrors(vec![ConfigError::new(
                "<file>",
                format!("configuration file {} does not exist or is not a file", path.display()),
            )]));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    extract(figment.merge(env_provider()))
}

/// Loads a configuration from TOML text plus defaults (no environment). Used by tests and by
/// tools that embed a configuration.
pub fn load_from_str(toml: &str) -> Result<Config, ConfigErrors> {
    extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)))
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__")
}

fn extract(figment: Figment) -> Result<Config, ConfigErrors> {
    let config: Config = figment.extract().map_err(|_| ConfigErrors(every_error(&figment)))?;
    let errors = config.validate();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// serde stops at the first bad field of a struct. To list every error, each value the user
/// supplied is checked on its own against the defaults, and the errors are collected.
fn every_error(figment: &Figment) -> Vec<ConfigError> {
    let mut leaves = Vec::new();
    if let Ok(data) = figment.data() {
        for dict in data.values() {
            collect_leaves(String::new(), dict, &mut leaves);
        }
    }
    let mut errors: Vec<ConfigError> = Vec::new();
    for (path, value) in leaves {
        let single = Figment::from(Serialized::defaults(Config::default())).merge(Serialized::default(&path, value));
        if let Err(e) = single.extract::<Config>() {
            for error in e.into_iter().map(to_error) {
                if !errors.contains(&error) {
                    errors.push(error);
                }
            }
        }
    }
    if errors.is_empty() {
        // Only a combination of values fails; report what serde said about the whole.
        if let Err(e) = figment.extract::<Config>() {
            errors.extend(e.into_iter().map(to_error));
        }
    }
    errors
}

fn collect_leaves(prefix: String, dict: &figment::value::Dict, out: &mut Vec<(String, figment::value::Value)>) {
    for (key, value) in dict {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            figment::value::Value::Dict(_, inner) => collect_leaves(path, inner, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn to_error(e: figment::Error) -> ConfigError {
    let mut path = e.path.join(".");
    if let Kind::UnknownField(field, _) = &e.kind {
        if e.path.last().is_none_or(|last| last != field) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
        }
    }
    if path.is_empty() {
        path.push_str("<root>");
    }
    ConfigError::new(path, e.kind.to_string())
}
