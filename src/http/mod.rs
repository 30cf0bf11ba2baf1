//! The HTTP surface: the router, its middleware stack and the OpenAPI
//! document generated from the same route list.

pub mod bodies;
pub mod cors;
pub mod in_flight;
pub mod metrics;
pub mod middleware;
pub mod ops;
pub mod peers;
mod problems;
pub mod serve;
pub mod tally;

use axum::response::IntoResponse;
use axum::{Router, extract::DefaultBodyLimit, http::HeaderName};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    admin, ai, auth, dashboard,
    error::ApiError,
    files,
    idempotency::{self, Payload},
    presign, quota,
    state::AppState,
    tus, upload, upload_tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "intake", description = "Self-hostable upload API: streaming, presigned and resumable (tus) uploads within tier limits."),
    modifiers(&SecuritySchemes),
    security(("api_key" = []), ("session" = []))
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ik_<id>_<secret>")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "upload_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("iut_<id>_<secret>")
                    .description(Some(
                        "An upload token (POST /upload-tokens): only the upload routes, and only the uploads it started",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::session::COOKIE_NAME))),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route with its documentation (the dashboard's page and assets
/// included, so the document lists everything the server answers). A
/// route that takes `Idempotency-Key` is listed through
/// [`idempotency::accept`] (or, for a route an upload token may send,
/// [`idempotency::accept_uploads`]).
fn api_routes(state: &AppState) -> OpenApiRouter<AppState> {
    let idempotent = |payload, routes| idempotency::accept(state, payload, routes);
    let idempotent_upload = |payload, routes| idempotency::accept_uploads(state, payload, routes);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::routes::signup))
        .routes(routes!(auth::routes::login))
        .routes(routes!(auth::routes::logout))
        .routes(routes!(auth::routes::logout_all))
        .routes(routes!(auth::routes::session))
        .routes(routes!(auth::routes::me))
        .routes(routes!(auth::routes::create_key, auth::routes::list_keys))
        .routes(routes!(auth::routes::revoke_key))
        .routes(idempotent(
            Payload::Json,
            routes!(upload_tokens::create, upload_tokens::list),
        ))
        .routes(routes!(upload_tokens::revoke))
        .routes(idempotent_upload(
            Payload::Upload,
            routes!(upload::stream_single),
        ))
        .routes(idempotent_upload(
            Payload::Upload,
            routes!(upload::stream_batch),
        ))
        .routes(idempotent_upload(Payload::Json, routes!(presign::issue)))
        .routes(routes!(presign::complete))
        .routes(routes!(presign::abort))
        .routes(routes!(presign::data))
        .merge(tus_routes(state))
        .routes(routes!(files::list))
        .routes(routes!(files::get, files::remove))
        .routes(routes!(files::content))
        .routes(idempotent(Payload::Json, routes!(ai::describe)))
        .routes(idempotent(Payload::Json, routes!(ai::chat)))
        .routes(routes!(quota::limits))
        .routes(routes!(quota::usage))
        .routes(routes!(admin::http_create_account))
        .routes(routes!(admin::http_patch_account))
        .routes(routes!(admin::http_create_key))
        .routes(routes!(admin::http_usage))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .merge(dashboard::routes(&state.config))
}

/// The tus routes, each wrapped in the protocol's own checks and headers
/// (around the idempotency layer of a creation, so a replay carries them).
fn tus_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(idempotency::accept_uploads(
            state,
            Payload::Upload,
            routes!(tus::discover, tus::create),
        ))
        .routes(routes!(
            tus::discover_upload,
            tus::status,
            tus::append,
            tus::terminate
        ))
        .route_layer(axum::middleware::from_fn(tus::protocol))
}

/// Builds the application: routes, fallbacks and the middleware stack
/// (outermost first: request id, tracing, metrics, CORS on the upload
/// routes when origins are listed, the body guard (idle
/// time, whole-body deadline, shutdown, the connection after an early
/// answer), authentication and rate limit, the guard's verdict, body limit).
pub fn router(state: AppState) -> Router {
    let (routes, mut doc) = api_routes(&state).split_for_parts();
    problems::document(&mut doc);
    presign::document(&mut doc, &state.config.storage);
    tus::document(&mut doc);
    ops::set_openapi(&doc);
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .route_layer(axum::middleware::from_fn(metrics::record_route))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(axum::middleware::from_fn(metrics::track))
                // Preflights are answered before authentication and limits.
                .option_layer(cors::layer(&state.config.cors_allowed_origins).map(|cors| {
                    axum::middleware::from_fn_with_state(cors, cors::upload_cors)
                }))
                // Outside every layer that may answer before the body is read.
                .layer(axum::middleware::from_fn_with_state(state.clone(), bodies::guard_bodies))
                // A bug answers 500 problem+json (and is logged), not a dropped connection.
                .layer(CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("panic");
                    ApiError::Internal(anyhow::anyhow!("handler panicked: {what}")).into_response()
                }))
                .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::authenticate_and_limit))
                .layer(axum::middleware::from_fn_with_state(state.clone(), bodies::body_verdict))
                .layer(DefaultBodyLimit::max(crate::extract::JSON_BODY_LIMIT)),
        )
        .with_state(state)
}
