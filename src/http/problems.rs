//! The error answers every route can give, added to the OpenAPI document in
//! one place: the middleware and the extractors answer them on any route
//! (401 and 403 from authentication, 429 from the rate limit, 400, 413, 415
//! and 422 from the body and parameter extractors, 408 from idle bodies,
//! 503 when a dependency is down, 500), so each operation lists them, with
//! the problem+json body they carry, and a schema-driven client or fuzzer
//! meets no undocumented status.

use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, RefOr, ResponseBuilder, Type,
    header::HeaderBuilder,
    path::Operation,
    schema::{Schema, SchemaType},
};

/// Name of the problem+json schema in the components.
const PROBLEM: &str = "Problem";

/// Statuses any authenticated or body-taking route may answer, and why.
const COMMON: &[(&str, &str)] = &[
    ("400", "malformed request (invalid_request)"),
    ("401", "no valid credentials (unauthorized)"),
    (
        "403",
        "not allowed (forbidden, csrf_token_required, api_access_not_in_tier, …)",
    ),
    ("404", "not found (not_found)"),
    ("405", "method not allowed on this path (invalid_request)"),
    (
        "408",
        "the request body sent nothing for too long (invalid_request)",
    ),
    (
        "413",
        "body or file too large (payload_too_large, file_too_large, …)",
    ),
    (
        "415",
        "unsupported media type (unsupported_media_type, type_mismatch)",
    ),
    ("422", "well-formed but invalid (invalid_request, …)"),
    (
        "429",
        "a limit was reached (rate_limited, concurrent_upload_limit, concurrent_request_limit, monthly_quota_exceeded)",
    ),
    ("500", "internal error (internal)"),
    (
        "503",
        "a dependency is unavailable (service_unavailable, ai_unavailable)",
    ),
];

/// Operations on these paths read no storage, count against no limit and
/// answer no error beyond 405/500 (readiness documents its own 503, and
/// `/metrics` a 401 when `METRICS_TOKEN` is set).
const PLAIN: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Paths that take no credentials, so they opt out of the document-wide
/// security requirement: sign-up and login, the public tier table, the
/// dashboard (its page signs in), operations, and the local folder's
/// presigned data route (authorised by the signed token in its query).
/// The tus discovery routes declare optional credentials themselves.
const PUBLIC: &[&str] = &[
    "/auth/signup",
    "/auth/login",
    "/limits",
    "/",
    "/assets/{build}/{file}",
    "/upload/presigned/{id}/data",
];

fn problem_schema() -> Schema {
    let string = || ObjectBuilder::new().schema_type(SchemaType::Type(Type::String));
    ObjectBuilder::new()
        .description(Some("RFC 9457 problem details; `code` is stable"))
        .property("type", string())
        .property("title", string())
        .property(
            "status",
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)),
        )
        .property("detail", string())
        .property("code", string())
        .required("code")
        .required("status")
        .into()
}

fn add_common(path: &str, op: &mut Operation) {
    // A tus PATCH is nothing without its bytes (415 without the body's type).
    if let Some(body) = op.request_body.as_mut().filter(|b| {
        b.content.contains_key("application/offset+octet-stream") && path != "/upload/tus"
    }) {
        body.required = Some(utoipa::openapi::Required::True);
    }
    if PUBLIC.contains(&path) || PLAIN.contains(&path) {
        // An empty list: no credentials needed (not the global default).
        op.security = Some(Vec::new());
    }
    for (status, why) in COMMON {
        let plain_answers = |status: &str| {
            matches!(status, "405" | "500") || (path == "/metrics" && status == "401")
        };
        if PLAIN.contains(&path) && !plain_answers(status) {
            continue;
        }
        // Only a request with a body can stall in it.
        if *status == "408" && op.request_body.is_none() {
            continue;
        }
        if op.responses.responses.contains_key(*status) {
            continue;
        }
        let mut response = ResponseBuilder::new().description(*why).content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    PROBLEM,
                ))))
                .build(),
        );
        if *status == "429" {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)))
                    .description(Some("whole seconds to wait"))
                    .build(),
            );
        }
        op.responses
            .responses
            .insert((*status).to_owned(), RefOr::T(response.build()));
    }
}

/// Adds the problem schema and the common error answers to every operation,
/// and marks the public ones as such.
pub fn document(openapi: &mut OpenApi) {
    openapi
        .components
        .get_or_insert_with(Default::default)
        .schemas
        .insert(PROBLEM.to_owned(), RefOr::T(problem_schema()));
    for (path, item) in openapi.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_common(path, op);
        }
    }
}
