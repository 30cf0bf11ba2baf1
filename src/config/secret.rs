//! What a secret is: a value `Debug` never shows, and for the secrets intake
//! itself relies on, long enough and no placeholder.

use std::fmt;

use super::env::{ConfigError, Env};

/// A value that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Env<'_> {
    /// A secret that must be set, at least 32 characters and no placeholder.
    pub(super) fn strong_secret(&self, name: &'static str) -> Result<Secret, ConfigError> {
        let value = self.required(name)?;
        check_secret(name, &value)?;
        Ok(Secret(value))
    }

    /// A secret that may be unset; when set, held to the rule of
    /// [`Self::strong_secret`].
    pub(super) fn opt_strong_secret(
        &self,
        name: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        self.opt(name)
            .map(|value| check_secret(name, &value).map(|()| Secret(value)))
            .transpose()
    }

    /// A secret of another service (a credential), taken as given.
    pub(super) fn opt_secret(&self, name: &str) -> Option<Secret> {
        self.opt(name).map(Secret)
    }
}

/// Values that documentation and examples put where a secret goes; a
/// server started with one of them has a secret that anyone can read.
const PLACEHOLDERS: [&str; 9] = [
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "your-secret",
    "your_secret",
    "example",
];

/// Refuses a secret that is short or an obvious placeholder, naming the
/// variable so the operator knows which one to set.
fn check_secret(name: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.chars().count() < 32 {
        return Err(ConfigError::invalid(name, "must be at least 32 characters"));
    }
    let lower = value.to_ascii_lowercase();
    let mut chars = lower.chars();
    let first = chars.next();
    let one_character = chars.all(|c| Some(c) == first);
    if one_character || PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Err(ConfigError::invalid(
            name,
            "is a placeholder; set a random value (e.g. openssl rand -base64 48)",
        ));
    }
    Ok(())
}
