//! The tier table, the product's source of truth for every limit, as data.
//!
//! Limits are looked up here and nowhere else: code asks an account for its
//! effective [`Limits`] (tier row plus the account's custom overrides) instead
//! of branching on the tier.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::config::MB;

const GB: u64 = 1024 * MB;

/// The pricing tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Tier {
    /// The tier of every new signup.
    Free,
    /// Entry paid tier.
    Starter,
    /// Mid paid tier.
    Professional,
    /// Top tier.
    Enterprise,
}

impl Tier {
    /// Every tier, in price order.
    pub const ALL: [Tier; 4] = [
        Tier::Free,
        Tier::Starter,
        Tier::Professional,
        Tier::Enterprise,
    ];

    /// The JSON name of the tier.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }

    /// The tier's row of the table.
    pub fn limits(self) -> Limits {
        match self {
            Tier::Free => Limits {
                requests_per_minute: 10,
                concurrent_uploads: 10,
                batch_size: 10,
                max_image_bytes: 25 * MB,
                max_document_bytes: 50 * MB,
                max_video_bytes: GB,
                storage_bytes: Some(GB),
                ai_descriptions_per_month: 15,
                chat_messages_per_month: 10,
                api_keys: false,
            },
            Tier::Starter => Limits {
                requests_per_minute: 30,
                concurrent_uploads: 20,
                batch_size: 20,
                max_image_bytes: 50 * MB,
                max_document_bytes: 50 * MB,
                max_video_bytes: 2 * GB,
                storage_bytes: Some(25 * GB),
                ai_descriptions_per_month: 300,
                chat_messages_per_month: 200,
                api_keys: true,
            },
            Tier::Professional => Limits {
                requests_per_minute: 100,
                concurrent_uploads: 30,
                batch_size: 20,
                max_image_bytes: 100 * MB,
                max_document_bytes: 50 * MB,
                max_video_bytes: 5 * GB,
                storage_bytes: Some(100 * GB),
                ai_descriptions_per_month: 2_500,
                chat_messages_per_month: 2_000,
                api_keys: true,
            },
            Tier::Enterprise => Limits {
                requests_per_minute: 500,
                concurrent_uploads: 50,
                batch_size: 50,
                max_image_bytes: 200 * MB,
                max_document_bytes: 50 * MB,
                max_video_bytes: 10 * GB,
                storage_bytes: None,
                ai_descriptions_per_month: 10_000,
                chat_messages_per_month: 5_000,
                api_keys: true,
            },
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the tier table, in exact figures (sizes in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// API-key requests per minute.
    pub requests_per_minute: u32,
    /// Uploads (streaming or presigned) in flight at once.
    pub concurrent_uploads: u32,
    /// Files in one batch upload.
    pub batch_size: u32,
    /// Largest image, in bytes.
    pub max_image_bytes: u64,
    /// Largest document, in bytes.
    pub max_document_bytes: u64,
    /// Largest video, in bytes.
    pub max_video_bytes: u64,
    /// Storage quota in bytes; `null` means unlimited.
    pub storage_bytes: Option<u64>,
    /// AI descriptions per calendar month (UTC).
    pub ai_descriptions_per_month: u32,
    /// Chat messages per calendar month (UTC).
    pub chat_messages_per_month: u32,
    /// Whether the account may use API keys.
    pub api_keys: bool,
}

/// Why a set of custom limits was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CustomLimitsError {
    /// The object has a key that is not a limit name.
    #[error("unknown limit {0:?}")]
    UnknownKey(String),
    /// A value has the wrong type or range for its limit.
    #[error("{key}: {reason}")]
    BadValue {
        /// The limit.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The limit names, in table order.
pub const LIMIT_NAMES: [&str; 10] = [
    "requests_per_minute",
    "concurrent_uploads",
    "batch_size",
    "max_image_bytes",
    "max_document_bytes",
    "max_video_bytes",
    "storage_bytes",
    "ai_descriptions_per_month",
    "chat_messages_per_month",
    "api_keys",
];

/// Per-account overrides of single rows of the tier table, stored as the
/// JSON object an admin sent (only known keys, validated on the way in).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct CustomLimits(pub Map<String, Value>);

impl CustomLimits {
    /// Checks every key and value; `null` is only allowed for `storage_bytes`.
    pub fn validate(map: &Map<String, Value>) -> Result<(), CustomLimitsError> {
        for (key, value) in map {
            let bad = |reason| CustomLimitsError::BadValue {
                key: key.clone(),
                reason,
            };
            match key.as_str() {
                "api_keys" => {
                    if !value.is_boolean() {
                        return Err(bad("must be true or false"));
                    }
                }
                "storage_bytes" if value.is_null() => {}
                "requests_per_minute" | "concurrent_uploads" | "batch_size" => {
                    match value.as_u64() {
                        Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => {}
                        _ => return Err(bad("must be a whole number from 1")),
                    }
                }
                "ai_descriptions_per_month" | "chat_messages_per_month" => match value.as_u64() {
                    Some(n) if n <= u64::from(u32::MAX) => {}
                    _ => return Err(bad("must be a whole number from 0")),
                },
                "max_image_bytes" | "max_document_bytes" | "max_video_bytes" | "storage_bytes" => {
                    match value.as_u64() {
                        Some(n) if n <= i64::MAX as u64 => {}
                        _ => return Err(bad("must be a whole number of bytes from 0")),
                    }
                }
                other => return Err(CustomLimitsError::UnknownKey(other.to_owned())),
            }
        }
        Ok(())
    }

    /// The tier's row with these overrides applied. Values that do not fit
    /// (never stored, as [`CustomLimits::validate`] guards the way in) are
    /// ignored rather than trusted.
    pub fn apply(&self, mut limits: Limits) -> Limits {
        let u32_of = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        for (key, value) in &self.0 {
            match key.as_str() {
                "requests_per_minute" => {
                    if let Some(n) = u32_of(value).filter(|n| *n > 0) {
                        limits.requests_per_minute = n;
                    }
                }
                "concurrent_uploads" => {
                    if let Some(n) = u32_of(value).filter(|n| *n > 0) {
                        limits.concurrent_uploads = n;
                    }
                }
                "batch_size" => {
                    if let Some(n) = u32_of(value).filter(|n| *n > 0) {
                        limits.batch_size = n;
                    }
                }
                "max_image_bytes" => {
                    if let Some(n) = value.as_u64() {
                        limits.max_image_bytes = n;
                    }
                }
                "max_document_bytes" => {
                    if let Some(n) = value.as_u64() {
                        limits.max_document_bytes = n;
                    }
                }
                "max_video_bytes" => {
                    if let Some(n) = value.as_u64() {
                        limits.max_video_bytes = n;
                    }
                }
                "storage_bytes" => {
                    if value.is_null() {
                        limits.storage_bytes = None;
                    } else if let Some(n) = value.as_u64() {
                        limits.storage_bytes = Some(n);
                    }
                }
                "ai_descriptions_per_month" => {
                    if let Some(n) = u32_of(value) {
                        limits.ai_descriptions_per_month = n;
                    }
                }
                "chat_messages_per_month" => {
                    if let Some(n) = u32_of(value) {
                        limits.chat_messages_per_month = n;
                    }
                }
                "api_keys" => {
                    if let Some(b) = value.as_bool() {
                        limits.api_keys = b;
                    }
                }
                _ => {}
            }
        }
        limits
    }
}

/// The effective limits of an account: its tier's row with its overrides.
pub fn effective_limits(tier: Tier, custom: &CustomLimits) -> Limits {
    custom.apply(tier.limits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_serialize_with_every_contract_key_in_order() {
        let v = serde_json::to_value(Tier::Free.limits()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = LIMIT_NAMES.to_vec();
        expected.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, expected);
    }

    #[test]
    fn custom_limits_override_single_rows() {
        let custom = CustomLimits(
            json!({"storage_bytes": null, "requests_per_minute": 1000})
                .as_object()
                .unwrap()
                .clone(),
        );
        let l = effective_limits(Tier::Starter, &custom);
        assert_eq!(l.storage_bytes, None);
        assert_eq!(l.requests_per_minute, 1000);
        assert_eq!(l.batch_size, 20);
    }

    #[test]
    fn custom_limits_validation_rejects_bad_keys_and_values() {
        let check = |v: Value| CustomLimits::validate(v.as_object().unwrap());
        assert!(check(json!({"storage_bytes": null, "api_keys": true})).is_ok());
        assert_eq!(
            check(json!({"storage": 1})),
            Err(CustomLimitsError::UnknownKey("storage".into()))
        );
        assert!(check(json!({"requests_per_minute": null})).is_err());
        assert!(check(json!({"requests_per_minute": 0})).is_err());
        assert!(check(json!({"max_video_bytes": -1})).is_err());
        assert!(check(json!({"api_keys": "yes"})).is_err());
    }
}
