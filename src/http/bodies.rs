//! Puts the one body reader ([`crate::body::Guarded`]) on every request,
//! and makes its verdict the answer: a body the guard ended answers 408
//! (or 503 at shutdown) in place of whatever error the route made of the
//! broken body (a JSON rejection, a truncated multipart, …).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    body::{Bounds, Guarded, Watch},
    error::ApiError,
    state::AppState,
};

/// The middleware: see the module docs.
pub async fn guard_bodies(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let bounds = Bounds {
        idle: state.config.upload_idle_timeout,
        deadline: state.config.body_timeout,
        shutdown: state.shutdown.clone(),
    };
    let watch = Arc::new(Watch::default());
    req.extensions_mut().insert(watch.clone());
    let req = req.map(|body| Body::new(Guarded::new(body, bounds.clone(), watch.clone())));
    let response = next.run(req).await;
    let failed = response.status().is_client_error() || response.status().is_server_error();
    match watch.ended(&bounds) {
        Some(why) if failed => {
            let answer = ApiError::from(why);
            if response.status() == answer.status() {
                response
            } else {
                answer.into_response()
            }
        }
        _ => response,
    }
}
