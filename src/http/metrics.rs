//! Request metrics: every request counted by route template, method and
//! status (the recorder itself lives in [`crate::telemetry`]).

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};

use crate::error::ErrorCode;

/// Counts every request by route, method and status, its errors by code,
/// and its duration.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let response = next.run(req).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!("intake_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("intake_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        metrics::counter!("intake_http_errors_total", "code" => code.0).increment(1);
    }
    response
}

/// Inside the router: hands the matched route template out to [`track`]
/// (which runs outside the router, where it is not known yet).
pub async fn record_route(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(req).await;
    if let Some(m) = matched {
        response.extensions_mut().insert(m);
    }
    response
}
