//! Requests of one account running at once on this instance, at most
//! `MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT` (sessions and API keys together):
//! past it, 429 `concurrent_request_limit`. A session has no per-minute
//! limit, so without this bound one account could hold as many requests
//! (trickled bodies, unread answers) as the server takes connections.
//!
//! A request counts from the moment its account is known until its answer
//! has been written whole (or its connection ended): the guard rides on
//! the response body, so a download the client reads slowly still counts.
//! Upload requests do not count here: upload slots (`quota::slots`) bound
//! them across the cluster already, and tiers allow more uploads at once
//! than this bound.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use http_body::{Frame, SizeHint};
use uuid::Uuid;

use super::tally::{Held, Tally};
use crate::error::ApiError;

/// The requests of every account on this instance.
pub type Requests = Arc<Tally<Uuid>>;

/// Whole seconds a refused client is told to wait: requests of an account
/// end within seconds as a rule.
const RETRY_AFTER_SECS: u64 = 1;

/// Whether the request is an upload (its body is read as
/// `body::UploadBody`), which upload slots bound instead.
pub fn is_upload(method: &Method, path: &str) -> bool {
    let tus_upload = path
        .strip_prefix("/upload/tus/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    let presigned_data = path
        .strip_prefix("/upload/presigned/")
        .and_then(|rest| rest.strip_suffix("/data"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    match *method {
        Method::POST => matches!(
            path,
            "/upload/stream" | "/upload/stream-batch" | "/upload/tus"
        ),
        Method::PATCH => tus_upload,
        Method::PUT => presigned_data,
        _ => false,
    }
}

/// Counts a request of `account`: the guard to keep until the answer is
/// sent ([`hold_until_sent`]), or `None` when the account has `limit`
/// running already (answer [`refusal`] then).
pub fn admit(requests: &Requests, account: Uuid, limit: usize) -> Option<Held<Uuid>> {
    let (held, count) = requests.enter(account);
    if count <= limit {
        return Some(held);
    }
    drop(held);
    metrics::counter!("intake_concurrency_refusals_total", "bound" => "account_requests")
        .increment(1);
    None
}

/// The 429 of a request past the bound. `has_body` says whether the
/// request still has a body to send: the answer then closes the
/// connection, whose body is left unread.
pub fn refusal(limit: usize, has_body: bool) -> Response {
    let mut response = ApiError::ConcurrentRequestLimit {
        limit: limit as u64,
        what: "requests of this account",
        retry_after: RETRY_AFTER_SECS,
    }
    .into_response();
    if has_body {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The response, holding `held` until its body has been sent whole or
/// dropped with its connection.
pub fn hold_until_sent(response: Response, held: Held<Uuid>) -> Response {
    response.map(|body| Body::new(Holding { body, _held: held }))
}

/// A response body that holds a guard for as long as it lives. Every call
/// goes to the body within, size hint included, so nothing of the answer
/// changes.
struct Holding {
    body: Body,
    _held: Held<Uuid>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_the_routes_that_read_an_upload_body() {
        for (method, path) in [
            (Method::POST, "/upload/stream"),
            (Method::POST, "/upload/stream-batch"),
            (Method::POST, "/upload/tus"),
            (
                Method::PATCH,
                "/upload/tus/0190f5a4-1c2d-7000-8000-000000000000",
            ),
            (
                Method::PUT,
                "/upload/presigned/0190f5a4-1c2d-7000-8000-000000000000/data",
            ),
        ] {
            assert!(is_upload(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/upload/presigned"),
            (Method::POST, "/upload/presigned/x/complete"),
            (Method::HEAD, "/upload/tus/x"),
            (Method::DELETE, "/upload/tus/x"),
            (Method::PATCH, "/upload/tus/x/y"),
            (Method::PUT, "/upload/presigned//data"),
            (Method::GET, "/files/x/content"),
            (Method::POST, "/chat"),
        ] {
            assert!(!is_upload(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn past_the_limit_the_answer_is_429_and_nothing_stays_counted() {
        let requests = Requests::default();
        let account = Uuid::now_v7();
        let first = admit(&requests, account, 2).unwrap();
        let _second = admit(&requests, account, 2).unwrap();
        assert!(admit(&requests, account, 2).is_none());
        assert_eq!(requests.held(&account), 2);
        // Another account is not refused.
        assert!(admit(&requests, Uuid::now_v7(), 2).is_some());
        drop(first);
        assert!(admit(&requests, account, 2).is_some());
    }

    #[test]
    fn the_refusal_says_when_to_retry_and_closes_only_over_an_unread_body() {
        let refused = refusal(2, true);
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(refused.headers()["connection"], "close");
        assert!(!refusal(2, false).headers().contains_key("connection"));
    }
}
