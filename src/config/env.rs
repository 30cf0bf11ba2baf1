//! How one variable is read: empty means unset, values are trimmed before
//! they are parsed, and every error names the variable.

use std::{fmt, str::FromStr, time::Duration};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something that does not parse.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// The variable `name` holds a value that is not allowed.
    pub(super) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name,
            reason: reason.into(),
        }
    }
}

/// The variables, through a lookup (the process environment, or a map in
/// tests).
pub(super) struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    /// The variables `get` looks up.
    pub(super) fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { get }
    }

    /// The variable's value; unset, empty or blank is `None` (`.env.example`
    /// lists variables with empty values to mean their default).
    pub(super) fn opt(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// The variable's value, which must be set.
    pub(super) fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.opt(name).ok_or(ConfigError::Missing(name))
    }

    /// The variable parsed, or `default` when unset.
    pub(super) fn parse_or<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.opt(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::invalid(name, e.to_string())),
        }
    }

    /// The variable parsed (or `default`), refused with `reason` unless
    /// `allowed` holds for it.
    pub(super) fn parse_where<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        allowed: impl FnOnce(&T) -> bool,
        reason: impl FnOnce() -> String,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let value = self.parse_or(name, default)?;
        if allowed(&value) {
            Ok(value)
        } else {
            Err(ConfigError::invalid(name, reason()))
        }
    }

    /// A whole number of at least 1 (a duration or a count where 0 would
    /// disable a bound by accident).
    pub(super) fn positive(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.parse_where(name, default, |n| *n > 0, || "must be at least 1".into())
    }

    /// [`Self::positive`] in a narrower integer type.
    pub(super) fn positive_as<T: TryFrom<u64>>(
        &self,
        name: &'static str,
        default: u64,
    ) -> Result<T, ConfigError> {
        T::try_from(self.positive(name, default)?)
            .map_err(|_| ConfigError::invalid(name, "too large"))
    }

    /// A duration given in whole seconds.
    pub(super) fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse_or(name, default).map(Duration::from_secs)
    }

    /// A duration given in whole seconds, at least one.
    pub(super) fn positive_secs(
        &self,
        name: &'static str,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        self.positive(name, default).map(Duration::from_secs)
    }

    /// One of a few words, each standing for a value; unset is `default`.
    pub(super) fn choice<T: Copy>(
        &self,
        name: &'static str,
        default: T,
        words: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.opt(name) else {
            return Ok(default);
        };
        words
            .iter()
            .find(|(word, _)| *word == raw)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let expected: Vec<&str> = words.iter().map(|(word, _)| *word).collect();
                ConfigError::invalid(
                    name,
                    format!("expected {}, got {raw:?}", expected.join(" or ")),
                )
            })
    }

    /// A comma-separated list, each item parsed by `item`; unset is empty.
    pub(super) fn list<T>(
        &self,
        name: &'static str,
        item: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let Some(list) = self.opt(name) else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(item)
            .collect::<Result<_, _>>()
            .map_err(|reason| ConfigError::invalid(name, reason))
    }
}
