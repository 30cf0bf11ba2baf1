//! The answer of a request with a key: which answers are kept, what of
//! them, and the replay later requests get.

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use crate::error::ApiError;

/// The header a replayed answer carries.
pub const REPLAYED: &str = "idempotency-replayed";

/// The largest answer body kept: a presigned upload in 10,000 parts
/// answers a URL per part (several MiB); the other answers are a few KiB.
/// A larger answer is sent but not kept, and the key is freed.
pub const MAX_BODY: u64 = 8 * 1024 * 1024;

/// An answer kept for the requests that repeat its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its status.
    pub status: u16,
    /// The headers that describe the body and name what the request made.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// Whether an answer of `status` is kept: a 2xx, or a 4xx other than 408,
/// 409 and 429, which say to retry. Any other answer frees the key.
pub fn keeps(status: StatusCode) -> bool {
    (status.is_success() || status.is_client_error())
        && !matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        )
}

/// Whether a header of the answer is kept: the body's type, and the
/// headers that name what the request made (`Location`, `Intake-File-Id`,
/// the tus `Upload-*` and `Tus-Resumable`). The rest (rate-limit headers,
/// the request id) belongs to each request's own answer.
fn kept_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type" | "location" | "intake-file-id" | "tus-resumable"
    ) || name.starts_with("upload-")
}

impl Kept {
    /// Reads the answer to keep it: the answer to send (the same status,
    /// headers and body) and what to keep of it, or `None` when its body
    /// is not kept (above [`MAX_BODY`], or of a length not known ahead:
    /// such a body is sent as it comes).
    pub async fn take(response: Response) -> (Response, Option<Self>) {
        let fits = response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|len| len <= MAX_BODY);
        if !fits {
            tracing::warn!(
                "an answer with an idempotency key is too large to keep; its key is freed"
            );
            return (response, None);
        }
        let (parts, body) = response.into_parts();
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let error = ApiError::Internal(anyhow::anyhow!("reading an answer to keep: {e}"));
                return (error.into_response(), None);
            }
        };
        let kept = Self {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| kept_header(name))
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: bytes.to_vec(),
        };
        (Response::from_parts(parts, Body::from(bytes)), Some(kept))
    }

    /// The kept answer again, marked as replayed.
    pub fn replay(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.append(name, value);
            }
        }
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_final_refusals_are_kept_and_retryable_answers_are_not() {
        for kept in [200, 201, 204, 400, 404, 413, 415, 422, 460] {
            assert!(keeps(StatusCode::from_u16(kept).unwrap()), "{kept}");
        }
        for freed in [302, 408, 409, 429, 500, 503, 507] {
            assert!(!keeps(StatusCode::from_u16(freed).unwrap()), "{freed}");
        }
    }

    #[tokio::test]
    async fn the_replay_is_the_answer_with_what_names_it_and_the_mark() {
        let answer = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("location", "/upload/tus/1")
            .header("upload-offset", "0")
            .header("x-ratelimit-remaining", "9")
            .body(Body::from("{\"id\":1}"))
            .unwrap();
        let (sent, kept) = Kept::take(answer).await;
        let kept = kept.expect("kept");
        assert_eq!(sent.status(), 201);
        assert_eq!(sent.headers()["x-ratelimit-remaining"], "9");
        let replay = kept.clone().replay();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["location"], "/upload/tus/1");
        assert_eq!(replay.headers()["upload-offset"], "0");
        assert_eq!(replay.headers()[REPLAYED], "true");
        assert!(!replay.headers().contains_key("x-ratelimit-remaining"));
        let body = replay.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"id\":1}");
        assert_eq!(kept.body, b"{\"id\":1}");
    }

    #[tokio::test]
    async fn an_answer_above_the_bound_is_sent_and_not_kept() {
        let big = vec![b'x'; usize::try_from(MAX_BODY).unwrap() + 1];
        let (sent, kept) = Kept::take(Response::new(Body::from(big))).await;
        assert!(kept.is_none());
        let body = sent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len() as u64, MAX_BODY + 1);
    }
}
