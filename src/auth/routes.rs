//! HTTP handlers of signup, login, logout (of one session or all of an
//! account's), the current session, `/me` and API-key management.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Account, AccountView, ClientIp, CurrentAccount, SessionAccount, api_keys, backoff,
    password::{Email, Password},
    session,
};
use crate::{
    error::{ApiError, ResultExt},
    extract::{Json, Path},
    ratelimit::Policy,
    state::AppState,
    tiers::Tier,
};

/// Credentials of signup and login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    /// E-mail address.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// Password (8 to 1024 bytes at signup).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

/// Answer of a successful login.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The account.
    pub account: AccountView,
    /// Send as `X-CSRF-Token` on cookie requests that change state.
    pub csrf_token: String,
}

/// Body of `POST /api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewKey {
    /// A name to recognise the key by: 1 to 100 characters once trimmed,
    /// not all white space, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
}

/// `{"api_keys":[…]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Active keys, oldest first.
    pub api_keys: Vec<api_keys::KeyView>,
}

/// Inserts an account; a taken e-mail is a 409.
pub async fn insert_account(
    state: &AppState,
    email: &Email,
    password_hash: Option<String>,
    tier: Tier,
) -> Result<Account, ApiError> {
    sqlx::query_as(&format!(
        "INSERT INTO accounts (id, email, password_hash, tier) VALUES ($1, $2, $3, $4)
         RETURNING {}",
        super::ACCOUNT_COLUMNS
    ))
    .bind(uuid::Uuid::now_v7())
    .bind(email.as_str())
    .bind(password_hash)
    .bind(tier)
    .fetch_one(&state.db)
    .await
    .on_constraint("accounts_email_key", || {
        ApiError::Conflict("an account with this e-mail already exists".into())
    })
}

/// Creates a FREE account. Sign-ups with valid input count against the
/// client address's hourly limit (`SIGNUP_RATE_LIMIT_PER_HOUR`) before the
/// password is hashed.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = Credentials,
    responses((status = 201, body = AccountView), (status = 409, description = "e-mail taken"),
              (status = 422, description = "invalid e-mail or password")))]
pub async fn signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let email = Email::parse(&body.email)?;
    let password = Password::parse(body.password)?;
    state
        .limiter
        .admit(
            Policy::signup(ip, state.config.signup_rate_limit_per_hour),
            "sign-ups per hour from one address",
        )
        .await?;
    let hash = state.passwords.hash(password).await?;
    let account = insert_account(&state, &email, Some(hash), Tier::Free).await?;
    Ok((StatusCode::CREATED, Json(account.view())))
}

/// Logs in: sets the session cookie and returns the CSRF token. An e-mail
/// address whose logins failed `LOGIN_FAILURES_BEFORE_DELAY` times in a
/// row waits (429), whether an account has it or not.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = LoginResponse), (status = 401, description = "wrong e-mail or password")))]
pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<Response, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        password_hash: Option<String>,
        #[sqlx(flatten)]
        account: Account,
    }
    // A login with no room to check its password is no attempt: it is
    // refused before anything counts it.
    let turn = state.passwords.admit()?;
    let subject = backoff::Subject::of(&body.email);
    backoff::attempt(
        &state.db,
        &subject,
        state.config.login_failures_before_delay,
    )
    .await?;
    let row: Option<Row> = match Email::parse(&body.email) {
        Ok(email) => {
            sqlx::query_as(&format!(
                "SELECT password_hash, {} FROM accounts WHERE lower(email) = $1",
                super::ACCOUNT_COLUMNS
            ))
            .bind(email.as_str())
            .fetch_optional(&state.db)
            .await?
        }
        Err(_) => None,
    };
    let stored = row.as_ref().and_then(|r| r.password_hash.clone());
    let ok =
        body.password.len() <= Password::MAX_BYTES && turn.verify(body.password, stored).await?;
    let (true, Some(row)) = (ok, row) else {
        return Err(ApiError::Unauthorized("wrong e-mail or password".into()));
    };
    backoff::succeeded(&state.db, &subject).await?;
    let new = session::create(
        &state.db,
        &state.jwt,
        state.config.session_ttl,
        row.account.id,
    )
    .await?;
    let cookie = session::set_cookie(
        &new.token,
        state.config.session_ttl.as_secs(),
        state.config.cookie_secure,
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(LoginResponse {
            account: row.account.view(),
            csrf_token: new.csrf_token,
        }),
    )
        .into_response())
}

/// Ends the session (needs `X-CSRF-Token`).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("session" = [])),
    responses((status = 204, description = "session revoked"), (status = 401), (status = 403)))]
pub async fn logout(
    State(state): State<AppState>,
    auth: SessionAccount,
) -> Result<Response, ApiError> {
    session::revoke(&state.db, auth.session_id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            session::clear_cookie(state.config.cookie_secure),
        )],
    )
        .into_response())
}

/// Ends every session of the account, this one included (needs
/// `X-CSRF-Token`). API keys are not sessions and keep working.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("session" = [])),
    responses((status = 204, description = "every session of the account revoked"), (status = 401), (status = 403)))]
pub async fn logout_all(
    State(state): State<AppState>,
    auth: SessionAccount,
) -> Result<Response, ApiError> {
    session::revoke_all(&state.db, auth.account.id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            session::clear_cookie(state.config.cookie_secure),
        )],
    )
        .into_response())
}

/// The current session's account and CSRF token, so a page reloaded after
/// login can go on without keeping the token anywhere but in memory.
#[utoipa::path(get, path = "/auth/session", tag = "auth", security(("session" = [])),
    responses((status = 200, body = LoginResponse), (status = 401, description = "no valid session"),
              (status = 403, description = "an API key, not a session")))]
pub async fn session(State(state): State<AppState>, auth: SessionAccount) -> Json<LoginResponse> {
    Json(LoginResponse {
        account: auth.account.view(),
        csrf_token: state.jwt.csrf_token(auth.session_id),
    })
}

/// The calling account.
#[utoipa::path(get, path = "/me", tag = "auth", responses((status = 200, body = AccountView), (status = 401)))]
pub async fn me(auth: CurrentAccount) -> Json<AccountView> {
    Json(auth.account.view())
}

/// Creates an API key (session only; STARTER and above). The key is shown once.
#[utoipa::path(post, path = "/api-keys", tag = "api keys", request_body = NewKey, security(("session" = [])),
    responses((status = 201, body = api_keys::CreatedKey), (status = 403, description = "FREE tier or not a session")))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: SessionAccount,
    Json(body): Json<NewKey>,
) -> Result<(StatusCode, Json<api_keys::CreatedKey>), ApiError> {
    let key = api_keys::create(&state.db, &auth.account, &body.name).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Lists the account's active API keys (session only).
#[utoipa::path(get, path = "/api-keys", tag = "api keys", security(("session" = [])), responses((status = 200, body = KeyList)))]
pub async fn list_keys(
    State(state): State<AppState>,
    auth: SessionAccount,
) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        api_keys: api_keys::list(&state.db, auth.account.id).await?,
    }))
}

/// Revokes an API key (session only).
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api keys", security(("session" = [])),
    params(("id" = String, Path, description = "the key's 8-character id")),
    responses((status = 204), (status = 404)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: SessionAccount,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    api_keys::revoke(&state.db, auth.account.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
