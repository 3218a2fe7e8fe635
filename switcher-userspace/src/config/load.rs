//! Reading the config file: syntax errors and validation errors are told apart, and every
//! validation error of the file is reported at once, each with its field path.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::{schema::RawConfig, validate::validate, Config};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid config, nothing applied:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

/// One validation failure: `field` is a path like `service[1].blue.backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(Vec<FieldError>),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ParseFailure::Invalid(errors) => ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    pub fn parse(text: &str) -> Result<Config, ParseFailure> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
        validate(raw).map_err(ParseFailure::Invalid)
    }
}
