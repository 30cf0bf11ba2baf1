//! Operations endpoints: liveness, readiness, metrics, the OpenAPI document,
//! and the answers for unknown routes and methods.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

use crate::{auth, error::ApiError, extract::Json, state::AppState};

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database and the object store are reachable (checked
/// at most once a second; see `readiness`).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "a dependency is down")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .readiness
        .check(&state.db, state.store.as_ref())
        .await
        .map_err(|e| ApiError::ServiceUnavailable(e.to_string()))?;
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus text exposition; with `METRICS_TOKEN` set, only for
/// `Authorization: Bearer <METRICS_TOKEN>`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let given = auth::bearer(&headers).unwrap_or_default();
        if !bool::from(token.expose().as_bytes().ct_eq(given.as_bytes())) {
            return ApiError::Unauthorized(
                "/metrics needs Authorization: Bearer with the metrics token".into(),
            )
            .into_response();
        }
    }
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI document, built once from the router's own route list.
static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps the document the router was built with.
pub fn set_openapi(doc: &utoipa::openapi::OpenApi) {
    if let Ok(json) = doc.to_json() {
        let _ = OPENAPI.set(json);
    }
}

/// The OpenAPI document of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    match OPENAPI.get() {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response(),
        None => ApiError::Internal(anyhow::anyhow!("OpenAPI document not built")).into_response(),
    }
}

/// 404 for every unknown path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// 405 for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::InvalidRequest {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: "this method is not allowed on this route".into(),
    }
}
