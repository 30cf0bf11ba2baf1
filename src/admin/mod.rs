//! Administration behind `ADMIN_TOKEN`: accounts, tiers, custom limits, keys
//! and usage, over HTTP (`/admin/…`) and from the command line; and the
//! consistency check of the whole system ([`reconcile`]).

pub mod reconcile;

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{
        Account, AccountView, AdminAuth, api_keys,
        password::{Email, Password},
        routes::insert_account,
    },
    error::ApiError,
    extract::{Json, Path},
    quota::{self, Usage},
    state::AppState,
    tiers::{CustomLimits, Limits, Tier},
};

/// Body of `POST /admin/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAccount {
    /// E-mail address.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// Optional password (8 characters to 1024 bytes); without one the
    /// account can only use API keys.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
    /// Tier.
    pub tier: Tier,
}

/// Body of `PATCH /admin/accounts/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AccountPatch {
    /// New tier.
    pub tier: Option<Tier>,
    /// Overrides merged into the account's: the keys given replace the tier's
    /// value (`null` allowed for `storage_bytes`: unlimited); `null` for the
    /// whole object clears every override.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = custom_limits_schema)]
    pub custom_limits: Option<Option<Map<String, Value>>>,
}

/// `custom_limits`: the overrides' object, or `null` to clear them.
fn custom_limits_schema() -> utoipa::openapi::schema::Schema {
    let one_of = utoipa::openapi::schema::OneOfBuilder::new()
        .item(crate::tiers::CustomLimits::schema())
        .item(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Null)
                .build(),
        )
        .build();
    utoipa::openapi::schema::Schema::OneOf(one_of)
}

/// Absent stays `None`; present (even `null`) becomes `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An account as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminAccountView {
    /// The public fields.
    #[serde(flatten)]
    pub account: AccountView,
    /// The overrides in force.
    #[schema(value_type = Object)]
    pub custom_limits: CustomLimits,
    /// The effective limits.
    pub limits: Limits,
}

impl From<Account> for AdminAccountView {
    fn from(a: Account) -> Self {
        Self {
            limits: a.limits(),
            custom_limits: a.custom_limits,
            account: a.view(),
        }
    }
}

/// Creates an account with any tier (shared by the HTTP API and the CLI).
pub async fn create_account(
    state: &AppState,
    email: &str,
    password: Option<String>,
    tier: Tier,
) -> Result<Account, ApiError> {
    let email = Email::parse(email)?;
    let hash = match password {
        Some(p) => Some(state.passwords.hash(Password::parse(p)?).await?),
        None => None,
    };
    insert_account(state, &email, hash, tier).await
}

/// Applies a tier change and/or custom limits.
pub async fn patch_account(
    state: &AppState,
    id: Uuid,
    patch: AccountPatch,
) -> Result<Account, ApiError> {
    let (clear, merge) = match patch.custom_limits {
        None => (false, Map::new()),
        Some(None) => (true, Map::new()),
        Some(Some(map)) => {
            let parsed = CustomLimits::parse(&map)
                .map_err(|e| ApiError::unprocessable(format!("custom_limits: {e}")))?;
            (false, parsed.to_map())
        }
    };
    sqlx::query_as(&format!(
        "UPDATE accounts SET
           tier = coalesce($2, tier),
           custom_limits = CASE WHEN $3 THEN '{{}}'::jsonb ELSE custom_limits END || $4::jsonb
         WHERE id = $1
         RETURNING {}",
        crate::auth::ACCOUNT_COLUMNS
    ))
    .bind(id)
    .bind(patch.tier)
    .bind(clear)
    .bind(Value::Object(merge))
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found("account"))
}

async fn account(state: &AppState, id: Uuid) -> Result<Account, ApiError> {
    Account::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))
}

/// Creates an account.
#[utoipa::path(post, path = "/admin/accounts", tag = "admin", request_body = NewAccount,
    security(("admin_token" = [])),
    responses((status = 201, body = AdminAccountView), (status = 401), (status = 409)))]
pub async fn http_create_account(
    State(state): State<AppState>,
    _: AdminAuth,
    Json(body): Json<NewAccount>,
) -> Result<(StatusCode, Json<AdminAccountView>), ApiError> {
    let account = create_account(&state, &body.email, body.password, body.tier).await?;
    Ok((StatusCode::CREATED, Json(account.into())))
}

/// Changes an account's tier and custom limits; effective at once.
#[utoipa::path(patch, path = "/admin/accounts/{id}", tag = "admin", request_body = AccountPatch,
    security(("admin_token" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = AdminAccountView), (status = 404), (status = 422)))]
pub async fn http_patch_account(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<Uuid>,
    Json(patch): Json<AccountPatch>,
) -> Result<Json<AdminAccountView>, ApiError> {
    Ok(Json(patch_account(&state, id, patch).await?.into()))
}

/// Creates an API key for an account.
#[utoipa::path(post, path = "/admin/accounts/{id}/api-keys", tag = "admin",
    request_body = crate::auth::routes::NewKey, security(("admin_token" = [])), params(("id" = Uuid, Path)),
    responses((status = 201, body = api_keys::CreatedKey), (status = 403), (status = 404)))]
pub async fn http_create_key(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<Uuid>,
    Json(body): Json<crate::auth::routes::NewKey>,
) -> Result<(StatusCode, Json<api_keys::CreatedKey>), ApiError> {
    let account = account(&state, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(api_keys::create(&state.db, &account, &body.name).await?),
    ))
}

/// An account's limits and use (the shape of `GET /usage`).
#[utoipa::path(get, path = "/admin/accounts/{id}/usage", tag = "admin",
    security(("admin_token" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Usage), (status = 404)))]
pub async fn http_usage(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Json<Usage>, ApiError> {
    let account = account(&state, id).await?;
    Ok(Json(quota::usage_of(&state.db, &account).await?))
}
