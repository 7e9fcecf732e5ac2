//! What every stage's configuration shares: the one error type, strict
//! JSON parsing that names the offending field, and the checks several
//! sections make.
//!
//! Every error names the field it is about (`auth.providers[1].jwks.inline:
//! ...`), because the only place an operator sees it is one line in
//! Envoy's log.

use std::fmt;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses JSON into `T`, reporting the path of the offending field.
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::new(field, message)
    })
}

/// Lower-case HTTP token characters only: what Envoy stores header names as.
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("'{name}' is not a lower-case header name"),
        ))
    }
}

/// Prefixes a stage's configuration error with its section.
pub fn in_section(section: &'static str) -> impl Fn(ConfigError) -> ConfigError {
    move |e| {
        let field = if e.field.is_empty() || e.field == "." {
            section.to_owned()
        } else {
            format!("{section}.{}", e.field)
        };
        ConfigError::new(field, e.message)
    }
}
