//! CORS on the upload routes, for pages on the origins the operator lists
//! (`CORS_ALLOWED_ORIGINS`): their preflights are answered before
//! authentication and the rate limit (a preflight carries no credentials
//! and is no request of an account), and their answers, refusals included,
//! carry the headers a browser needs to read them. Every other route, and
//! every route when no origin is listed, answers no CORS header at all.
//!
//! The preflight and the headers are tower-http's `CorsLayer`; this module
//! decides which requests go through it (the upload routes) and with what
//! (the origins, the headers the contract lists).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderName, Method, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{config::CorsOrigins, error::ApiError};

/// Request headers a page may send to an upload route.
const ALLOW_HEADERS: [&str; 10] = [
    "authorization",
    "x-api-key",
    "content-type",
    "idempotency-key",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "x-http-method-override",
];

/// Answer headers a page may read.
const EXPOSE_HEADERS: [&str; 19] = [
    "location",
    "upload-offset",
    "upload-length",
    "upload-expires",
    "upload-metadata",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "intake-file-id",
    "idempotency-replayed",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "x-request-id",
];

/// Whether `path` is one of the upload routes (streaming, presigned with
/// its completion, abort and local data route, tus).
pub fn is_upload_route(path: &str) -> bool {
    matches!(
        path,
        "/upload/stream" | "/upload/stream-batch" | "/upload/presigned" | "/upload/tus"
    ) || path.starts_with("/upload/presigned/")
        || path.starts_with("/upload/tus/")
}

/// The layer for the configured origins; `None` when none is listed.
pub fn layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let names = |list: &[&'static str]| -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(names(&ALLOW_HEADERS))
            .expose_headers(names(&EXPOSE_HEADERS))
            .max_age(Duration::from_secs(86_400)),
    )
}

/// Sends a request from a page (one with `Origin`) to an upload route
/// through the CORS layer, any other request on as it is. Only added when
/// an origin is listed ([`layer`]).
pub async fn upload_cors(State(cors): State<CorsLayer>, request: Request, next: Next) -> Response {
    if !is_upload_route(request.uri().path()) || !request.headers().contains_key(header::ORIGIN) {
        return next.run(request).await;
    }
    // `Next` runs once; the layer calls its service at most once a request.
    let mut next = Some(next);
    let inner = tower::service_fn(move |request: Request| {
        let next = next.take();
        async move {
            Ok::<_, Infallible>(match next {
                Some(next) => next.run(request).await,
                None => {
                    ApiError::Internal(anyhow::anyhow!("the CORS layer called its service twice"))
                        .into_response()
                }
            })
        }
    });
    match cors.layer(inner).oneshot(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_routes_are_those_of_the_three_upload_ways() {
        for path in [
            "/upload/stream",
            "/upload/stream-batch",
            "/upload/presigned",
            "/upload/presigned/0192/complete",
            "/upload/presigned/0192/data",
            "/upload/tus",
            "/upload/tus/0192",
        ] {
            assert!(is_upload_route(path), "{path}");
        }
        for path in ["/files", "/me", "/upload", "/upload/streams", "/chat"] {
            assert!(!is_upload_route(path), "{path}");
        }
    }
}
