//! `POST /upload-tokens`, `GET /upload-tokens`, `DELETE /upload-tokens/{id}`:
//! an account (STARTER and above, with an API key or a session) mints
//! short-lived tokens for its own users' browsers, lists them and revokes
//! them. The token itself is `auth::upload_tokens`'s (identity) and
//! `quota::tokens`'s (limits); this module parses the request, and on
//! revocation ends at once the uploads the token left open (`presign`,
//! `tus`).

use std::time::Duration;

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    auth::{
        CurrentAccount,
        upload_tokens::{self, NewToken, TokenView},
    },
    error::ApiError,
    extract::{Json, Path},
    presign,
    sniff::Category,
    state::AppState,
    tus,
};

/// Shortest and longest `expires_in`, and its default (seconds).
const EXPIRES_IN: std::ops::RangeInclusive<u64> = 60..=21_600;
const DEFAULT_EXPIRES_IN: u64 = 3_600;
/// Longest `subject`, in characters.
const SUBJECT_MAX: usize = 255;
/// Largest `max_bytes`: 2^53 - 1, the largest integer every JSON client
/// reads exactly.
const MAX_BYTES_MAX: u64 = 9_007_199_254_740_991;
/// Largest `metadata`, in bytes of its JSON.
const METADATA_MAX_BYTES: usize = 4 * 1024;

/// Body of `POST /upload-tokens`; every field may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The host's user id, recorded on every file uploaded with the token:
    /// 1 to 255 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub subject: Option<String>,
    /// Seconds during which the token starts uploads: 60 to 21,600
    /// (default 3,600). Uploads it started go on after it.
    #[schema(minimum = 60, maximum = 21600)]
    pub expires_in: Option<u64>,
    /// At most this many files with the token (default: the account's
    /// limits only).
    #[schema(minimum = 1, maximum = 2147483647)]
    pub max_files: Option<u64>,
    /// At most this many bytes with the token, up to 2^53 - 1 (default:
    /// the account's limits only).
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub max_bytes: Option<u64>,
    /// The categories its files may be of (default all three); at least one.
    #[schema(min_items = 1)]
    pub categories: Option<Vec<Category>>,
    /// A JSON object of at most 4 KiB, recorded on every file uploaded
    /// with the token.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl TokenRequest {
    /// The token to mint, or 422 `invalid_request` saying what is wrong.
    fn parse(self) -> Result<NewToken, ApiError> {
        let invalid = |detail: &str| ApiError::unprocessable(detail);
        let subject = match self.subject {
            Some(s)
                if s.is_empty()
                    || s.chars().count() > SUBJECT_MAX
                    || s.chars().any(char::is_control) =>
            {
                return Err(invalid(
                    "subject must be 1 to 255 characters without control characters",
                ));
            }
            other => other,
        };
        let expires_in = self.expires_in.unwrap_or(DEFAULT_EXPIRES_IN);
        if !EXPIRES_IN.contains(&expires_in) {
            return Err(invalid("expires_in must be from 60 to 21600 seconds"));
        }
        let max_files = match self.max_files {
            None => None,
            Some(n) => Some(
                i32::try_from(n)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("max_files must be from 1 to 2147483647"))?,
            ),
        };
        let max_bytes = match self.max_bytes {
            None => None,
            Some(n @ 1..=MAX_BYTES_MAX) => i64::try_from(n).ok(),
            Some(_) => {
                return Err(invalid(
                    "max_bytes must be from 1 to 9007199254740991 (2^53 - 1)",
                ));
            }
        };
        let categories = match self.categories {
            None => vec![Category::Image, Category::Document, Category::Video],
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "categories must name at least one of image, document, video",
                ));
            }
            Some(mut list) => {
                list.sort_by_key(|c| c.as_str());
                list.dedup();
                list
            }
        };
        let metadata = match self.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(value @ serde_json::Value::Object(_)) => {
                let len = serde_json::to_vec(&value)
                    .map_err(|e| ApiError::Internal(e.into()))?
                    .len();
                if len > METADATA_MAX_BYTES {
                    return Err(invalid("metadata must be at most 4096 bytes of JSON"));
                }
                Some(value)
            }
            Some(_) => return Err(invalid("metadata must be a JSON object")),
        };
        Ok(NewToken {
            subject,
            expires_in: Duration::from_secs(expires_in),
            max_files,
            max_bytes,
            categories,
            metadata,
        })
    }
}

/// `{"upload_tokens":[…]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// The account's tokens that are neither expired nor revoked, oldest
    /// first, without their secrets.
    pub upload_tokens: Vec<TokenView>,
}

/// Mints an upload token (key or session; STARTER and above). The token is
/// shown once.
#[utoipa::path(post, path = "/upload-tokens", tag = "upload tokens", request_body = TokenRequest,
    security(("api_key" = []), ("session" = [])),
    responses((status = 201, body = TokenView),
              (status = 403, description = "api_access_not_in_tier: the account's tier has no API access")))]
pub async fn create(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Json(body): Json<TokenRequest>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    if !auth.account.limits().api_keys {
        return Err(ApiError::ApiAccessNotInTier);
    }
    let new = body.parse()?;
    let view = upload_tokens::create(&state.db, &auth.account, &new).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Lists the account's live upload tokens with their use.
#[utoipa::path(get, path = "/upload-tokens", tag = "upload tokens",
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, body = TokenList)))]
pub async fn list(
    State(state): State<AppState>,
    auth: CurrentAccount,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        upload_tokens: upload_tokens::list(&state.db, auth.account.id).await?,
    }))
}

/// Revokes an upload token at once: it authenticates nothing more, and the
/// uploads it left open end with everything they held. Revoking it again
/// answers 204 again.
#[utoipa::path(delete, path = "/upload-tokens/{id}", tag = "upload tokens",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "the token's 12-character id")),
    responses((status = 204), (status = 404)))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    upload_tokens::revoke(&state.db, auth.account.id, &id).await?;
    presign::end_for_token(&state, &id).await?;
    tus::end_for_token(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(body: serde_json::Value) -> Result<NewToken, ApiError> {
        serde_json::from_value::<TokenRequest>(body)
            .unwrap()
            .parse()
    }

    #[test]
    fn an_empty_body_mints_an_hour_of_every_category() {
        let new = parse(json!({})).unwrap();
        assert_eq!(new.expires_in, Duration::from_secs(3600));
        assert_eq!(
            (new.max_files, new.max_bytes, new.subject, new.metadata),
            (None, None, None, None)
        );
        assert_eq!(new.categories.len(), 3);
    }

    #[test]
    fn each_field_is_held_to_its_range() {
        for bad in [
            json!({"expires_in": 59}),
            json!({"expires_in": 21601}),
            json!({"max_files": 0}),
            json!({"max_files": 2147483648_u64}),
            json!({"max_bytes": 0}),
            json!({"max_bytes": 9007199254740992_u64}),
            json!({"categories": []}),
            json!({"subject": ""}),
            json!({"subject": "a".repeat(256)}),
            json!({"subject": "a\u{0007}b"}),
            json!({"metadata": [1, 2]}),
            json!({"metadata": {"k": "v".repeat(4096)}}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        let edge = parse(json!({
            "expires_in": 21600, "max_files": 1, "max_bytes": 1,
            "categories": ["video", "image", "image"], "subject": "é".repeat(255),
            "metadata": {"k": "v".repeat(4080)},
        }))
        .unwrap();
        assert_eq!(edge.categories, vec![Category::Image, Category::Video]);
        assert_eq!((edge.max_files, edge.max_bytes), (Some(1), Some(1)));
    }
}
