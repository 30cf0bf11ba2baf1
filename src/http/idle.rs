//! An idle timeout on every request body, JSON ones included: a body that
//! sends nothing for `UPLOAD_IDLE_TIMEOUT_SECS` ends its request with 408
//! `invalid_request`, whatever route was reading it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt as _;
use tower_http::timeout::{TimeoutBody, TimeoutError};

use crate::{error::ApiError, state::AppState};

/// Wraps the body in [`TimeoutBody`] and, when it timed out, answers 408
/// in place of whatever error the reader made of the broken body (a JSON
/// rejection, a truncated multipart, …).
pub async fn idle_bodies(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let idle = state.config.upload_idle_timeout;
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let req = req.map(|body| {
        Body::new(TimeoutBody::new(idle, body).map_err(move |e| {
            if e.is::<TimeoutError>() {
                flag.store(true, Ordering::Relaxed);
            }
            e
        }))
    });
    let response = next.run(req).await;
    let failed = response.status().is_client_error() || response.status().is_server_error();
    if timed_out.load(Ordering::Relaxed)
        && failed
        && response.status() != StatusCode::REQUEST_TIMEOUT
    {
        return ApiError::InvalidRequest {
            status: StatusCode::REQUEST_TIMEOUT,
            detail: format!("the request body sent nothing for {} s", idle.as_secs()),
        }
        .into_response();
    }
    response
}
