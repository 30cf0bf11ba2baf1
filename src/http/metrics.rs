//! Request metrics: every request counted by route template, method and
//! status (the recorder itself lives in [`crate::telemetry`]).
//!
//! Every label takes a bounded set of values: a client picks the method
//! string and the path, and each new label value is a new series the
//! process keeps forever.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};

use crate::error::ErrorCode;

/// The method as a label: the methods the API serves, and `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts every request by route, method and status, its errors by code,
/// and its duration.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let response = next.run(req).await;
    // A route template of the router, never the raw path.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for junk in ["XJUNK001", "PROPFIND", "get"] {
            let m = Method::from_bytes(junk.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{junk}");
        }
    }
}
