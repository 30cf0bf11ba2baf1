//! The tier table, the product's source of truth for every limit, as data.
//!
//! Limits are looked up here and nowhere else: code asks an account for its
//! effective [`Limits`] (tier row plus the account's [`CustomLimits`]) instead
//! of branching on the tier. Each limit is named once, in the
//! `limit_table!` invocation below: the row type, the typed overrides, the
//! list of names and their validation all come from that one list.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// A value a limit can take, parsed from the JSON an admin sends.
trait LimitValue: Sized + Copy {
    /// Parses `value`; `min` is the smallest allowed number.
    fn parse(value: &Value, min: u64) -> Result<Self, &'static str>;
    /// The JSON form.
    fn to_json(self) -> Value;
    /// The values [`LimitValue::parse`] accepts, as a JSON schema.
    fn schema(min: u64) -> utoipa::openapi::Object;
}

fn whole_number(min: u64, max: u64) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::{ObjectBuilder, schema::Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
}

impl LimitValue for u32 {
    fn parse(value: &Value, min: u64) -> Result<Self, &'static str> {
        value
            .as_u64()
            .filter(|n| *n >= min)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(if min == 0 {
                "must be a whole number from 0"
            } else {
                "must be a whole number from 1"
            })
    }
    fn to_json(self) -> Value {
        Value::from(self)
    }
    fn schema(min: u64) -> utoipa::openapi::Object {
        whole_number(min, u32::MAX.into()).build()
    }
}

impl LimitValue for u64 {
    fn parse(value: &Value, min: u64) -> Result<Self, &'static str> {
        // Sizes are stored in Postgres bigints.
        value
            .as_u64()
            .filter(|n| *n >= min && *n <= i64::MAX as u64)
            .ok_or("must be a whole number of bytes from 0")
    }
    fn to_json(self) -> Value {
        Value::from(self)
    }
    fn schema(min: u64) -> utoipa::openapi::Object {
        whole_number(min, i64::MAX as u64).build()
    }
}

/// `null` means unlimited.
impl LimitValue for Option<u64> {
    fn parse(value: &Value, min: u64) -> Result<Self, &'static str> {
        if value.is_null() {
            return Ok(None);
        }
        u64::parse(value, min).map(Some)
    }
    fn to_json(self) -> Value {
        self.map_or(Value::Null, Value::from)
    }
    fn schema(min: u64) -> utoipa::openapi::Object {
        use utoipa::openapi::schema::{SchemaType, Type};
        whole_number(min, i64::MAX as u64)
            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
            .build()
    }
}

impl LimitValue for bool {
    fn parse(value: &Value, _min: u64) -> Result<Self, &'static str> {
        value.as_bool().ok_or("must be true or false")
    }
    fn to_json(self) -> Value {
        Value::Bool(self)
    }
    fn schema(_min: u64) -> utoipa::openapi::Object {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Boolean)
            .build()
    }
}

/// Declares every limit once: `name: type (smallest value)`. From that list
/// come [`Limits`] (one row of the table), [`CustomLimits`] (typed per-account
/// overrides of single rows) and [`LIMIT_NAMES`].
macro_rules! limit_table {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty, min $min:literal; )*) => {
        /// One row of the tier table, in exact figures (sizes in bytes).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        /// Per-account overrides of single rows of the tier table: each
        /// limit that is `Some` replaces the tier's value. Stored as the
        /// JSON object of the keys that are set.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct CustomLimits {
            $( $(#[doc = $doc])* pub $name: Option<$ty>, )*
        }

        /// The limit names, in table order.
        pub const LIMIT_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl CustomLimits {
            /// The JSON schema of what [`CustomLimits::parse`] accepts: the
            /// limit names only, each with its type and range.
            pub fn schema() -> utoipa::openapi::Object {
                use utoipa::openapi::{ObjectBuilder, schema::AdditionalProperties};
                ObjectBuilder::new()
                    $( .property(stringify!($name), <$ty as LimitValue>::schema($min)) )*
                    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                    .build()
            }

            /// Parses an admin's object: only limit names, each with a value
            /// of its type and range (`null` only where it means unlimited).
            pub fn parse(map: &Map<String, Value>) -> Result<Self, CustomLimitsError> {
                let mut parsed = Self::default();
                for (key, value) in map {
                    let bad = |reason| CustomLimitsError::BadValue { key: key.clone(), reason };
                    match key.as_str() {
                        $( stringify!($name) => {
                            parsed.$name = Some(<$ty as LimitValue>::parse(value, $min).map_err(bad)?);
                        } )*
                        other => return Err(CustomLimitsError::UnknownKey(other.to_owned())),
                    }
                }
                Ok(parsed)
            }

            /// The JSON object of the overrides that are set.
            pub fn to_map(&self) -> Map<String, Value> {
                let mut map = Map::new();
                $( if let Some(v) = self.$name {
                    map.insert(stringify!($name).to_owned(), LimitValue::to_json(v));
                } )*
                map
            }

            /// The tier's row with these overrides applied.
            pub fn apply(&self, mut limits: Limits) -> Limits {
                $( if let Some(v) = self.$name {
                    limits.$name = v;
                } )*
                limits
            }
        }
    };
}

limit_table! {
    /// API-key requests per minute.
    requests_per_minute: u32, min 1;
    /// Uploads (streaming, presigned or resumable) in flight at once.
    concurrent_uploads: u32, min 1;
    /// Files in one batch upload.
    batch_size: u32, min 1;
    /// Largest image, in bytes.
    max_image_bytes: u64, min 0;
    /// Largest document, in bytes.
    max_document_bytes: u64, min 0;
    /// Largest video, in bytes.
    max_video_bytes: u64, min 0;
    /// Storage quota in bytes; `null` means unlimited.
    storage_bytes: Option<u64>, min 0;
    /// AI descriptions per calendar month (UTC).
    ai_descriptions_per_month: u32, min 0;
    /// Chat messages per calendar month (UTC).
    chat_messages_per_month: u32, min 0;
    /// Whether the account may use API keys.
    api_keys: bool, min 0;
}

impl Serialize for CustomLimits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

/// Stored overrides were checked on the way in; reading them applies the
/// same checks, so a hand-edited row cannot smuggle in a bad value.
impl<'de> Deserialize<'de> for CustomLimits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Self::parse(&map).map_err(serde::de::Error::custom)
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

    fn parse(v: Value) -> Result<CustomLimits, CustomLimitsError> {
        CustomLimits::parse(v.as_object().unwrap())
    }

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
        let custom = parse(json!({"storage_bytes": null, "requests_per_minute": 1000})).unwrap();
        let l = effective_limits(Tier::Starter, &custom);
        assert_eq!(l.storage_bytes, None);
        assert_eq!(l.requests_per_minute, 1000);
        assert_eq!(l.batch_size, 20);
    }

    #[test]
    fn custom_limits_validation_rejects_bad_keys_and_values() {
        assert!(parse(json!({"storage_bytes": null, "api_keys": true})).is_ok());
        assert_eq!(
            parse(json!({"storage": 1})),
            Err(CustomLimitsError::UnknownKey("storage".into()))
        );
        assert!(parse(json!({"requests_per_minute": null})).is_err());
        assert!(parse(json!({"requests_per_minute": 0})).is_err());
        assert!(parse(json!({"max_video_bytes": -1})).is_err());
        assert!(parse(json!({"api_keys": "yes"})).is_err());
        assert!(parse(json!({"ai_descriptions_per_month": 0})).is_ok());
    }

    #[test]
    fn custom_limits_round_trip_as_the_stored_object() {
        let raw = json!({"storage_bytes": null, "batch_size": 2, "api_keys": false});
        let custom = parse(raw.clone()).unwrap();
        assert_eq!(Value::Object(custom.to_map()), raw);
        let back: CustomLimits = serde_json::from_value(raw).unwrap();
        assert_eq!(back, custom);
    }
}
