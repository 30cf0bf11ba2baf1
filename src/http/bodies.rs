//! Puts the one body reader ([`crate::body::Guarded`]) on every request
//! ([`guard_bodies`]), and makes its verdict the answer ([`body_verdict`]):
//! a body the guard ended answers 408 (or 503 at shutdown) in place of
//! whatever error the route made of the broken body (a JSON rejection, a
//! truncated multipart, …).
//!
//! It also settles what an answer given before the body was read whole
//! does to the connection, for every route and every layer inside it (the
//! authentication and limit answers included). A rest that
//! `Content-Length` says is at most [`body::DRAIN_BYTES`] is read away in
//! the background, and the connection stays open for the next request; so
//! does a rest of unknown length (chunked) that ends within
//! [`body::END_WAIT`]. Any other rest (larger, still coming, a body the
//! guard ended, a client waiting for `100 Continue`) gets
//! `Connection: close` on the answer, so a keep-alive client never sends
//! its next request on a connection the server is about to close; what the
//! client already sent is still read away within the same bounds before
//! the close.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::Body as _;

use crate::{
    body::{self, Bounds, Guarded, Watch},
    error::ApiError,
    state::AppState,
};

fn bounds(state: &AppState) -> Bounds {
    Bounds {
        idle: state.config.upload_idle_timeout,
        deadline: state.config.body_timeout,
        shutdown: state.shutdown.clone(),
    }
}

/// The outer layer, around everything that may answer: puts the guard on
/// the body and settles the connection after an early answer (see the
/// module docs).
pub async fn guard_bodies(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let bounds = bounds(&state);
    // Such a client sends the body only once told to; reading the rest
    // would ask for it after the answer.
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let watch = Arc::new(Watch::default());
    req.extensions_mut().insert(watch.clone());
    let req = req.map(|body| Body::new(Guarded::new(body, bounds.clone(), watch.clone())));
    let response = next.run(req).await;
    if watch.whole() {
        return response;
    }
    let ended = watch.ended(&bounds).is_some();
    let rest = watch.take_rest().filter(|_| !ended && !expects_continue);
    settle(response, rest).await
}

/// The inner layer, around the routes: a body the guard ended answers
/// with the guard's verdict (inside the rate-limit layer, which adds its
/// headers to that answer as to any other).
pub async fn body_verdict(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let watch = req.extensions().get::<Arc<Watch>>().cloned();
    let response = next.run(req).await;
    let failed = response.status().is_client_error() || response.status().is_server_error();
    match watch.and_then(|w| w.ended(&bounds(&state))) {
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

/// The answer to a request whose body was not read whole: kept open while
/// its `rest` is read away, or marked to close (see the module docs).
async fn settle(mut response: Response, rest: Option<Body>) -> Response {
    let keep = match rest {
        None => false,
        Some(mut rest) => {
            let keep = match rest.size_hint().exact() {
                Some(len) => len <= body::DRAIN_BYTES,
                None => {
                    if body::ends_within(&mut rest, body::END_WAIT).await {
                        return response;
                    }
                    false
                }
            };
            tokio::spawn(body::drain(rest));
            keep
        }
    };
    if !keep {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
