//! Safe retries with `Idempotency-Key`: the first request with a key runs
//! as usual and its answer is kept (in Postgres, so every instance sees
//! it); a later request with the key gets that answer again, marked
//! `Idempotency-Replayed: true`, without its body being read and without
//! running the route (no quota, slot or object). A route opts in with one
//! line where the router lists it ([`accept`]), which also documents the
//! header and its answers on the route.
//!
//! The layer runs inside the authentication, rate-limit and body layers
//! (a replay counts as a request), on the route: the caller is resolved as
//! the route resolves it ([`CurrentAccount`]), so a request refused for its
//! credentials claims no key. Then:
//!
//! - a key in use by a running request: 409 `idempotency_key_in_use`;
//! - on routes that compare bodies ([`Payload::Json`]), another body than
//!   the first request's (by SHA-256): 422 `idempotency_key_reused`;
//! - an answer kept: replayed;
//! - else the key is claimed and the request runs. A 2xx, or a 4xx other
//!   than 408, 409 and 429, is kept for `IDEMPOTENCY_TTL_SECS`; any other
//!   answer, a body that broke before its end, or a request dropped before
//!   its answer (its client went away) frees the key.

mod answer;
mod doc;
mod key;
mod replays;
mod store;

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{FromRequestParts, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use utoipa_axum::router::UtoipaMethodRouter;
use uuid::Uuid;

pub use answer::{Kept, REPLAYED};
pub use key::{HEADER, Key};
pub use replays::Replays;
pub use store::prune;
use store::{Claim, Hold, Scope};

use crate::{
    auth::{CurrentAccount, Uploader},
    body::{self, Watch},
    error::ApiError,
    extract::JSON_BODY_LIMIT,
    state::AppState,
};

/// How long a running request holds its key without renewing it (it
/// renews every third of that): the key of a request whose instance died
/// is free again this long after.
const HOLD: Duration = Duration::from_secs(30);

/// What a route's body is, for the comparison of a later request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A JSON body (at most `JSON_BODY_LIMIT`), or none: read before the
    /// key is looked at, and compared by SHA-256.
    Json,
    /// An upload (multipart, tus): not compared, and not read by a replay.
    Upload,
}

/// Who may send a route's requests, as its handler resolves them (so the
/// layer claims no key for a caller the route would refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callers {
    /// An account, with an API key or a session ([`CurrentAccount`]).
    Accounts,
    /// An account or one of its upload tokens ([`Uploader`]).
    Uploaders,
}

/// What the layer of one route needs.
#[derive(Clone)]
struct Opted {
    state: AppState,
    payload: Payload,
    callers: Callers,
}

/// Opts the `POST` of a route (as `routes!` gives it) into
/// `Idempotency-Key`: its handler runs behind [`guard`], and its document
/// gains the header and the answers the key may give.
pub fn accept(
    state: &AppState,
    payload: Payload,
    routes: UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    opt_in(state, payload, Callers::Accounts, routes)
}

/// [`accept`] for a route that starts an upload, which an upload token may
/// send as well: its key is the token's account's.
pub fn accept_uploads(
    state: &AppState,
    payload: Payload,
    routes: UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    opt_in(state, payload, Callers::Uploaders, routes)
}

fn opt_in(
    state: &AppState,
    payload: Payload,
    callers: Callers,
    (schemas, mut paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    doc::document(&mut paths, payload);
    let opted = Opted {
        state: state.clone(),
        payload,
        callers,
    };
    let method_router =
        method_router.route_layer(axum::middleware::from_fn_with_state(opted, guard));
    (schemas, paths, method_router)
}

/// The layer of an opted-in route (see the module docs).
async fn guard(State(opted): State<Opted>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(HEADER) {
        return next.run(req).await;
    }
    let state = &opted.state;
    let (mut parts, body) = req.into_parts();
    let caller = match opted.callers {
        Callers::Accounts => CurrentAccount::from_request_parts(&mut parts, state)
            .await
            .map(|c| c.account),
        Callers::Uploaders => Uploader::from_request_parts(&mut parts, state)
            .await
            .map(|c| c.account),
    };
    let caller = match caller {
        Ok(account) => account,
        Err(refused) => return refused.into_response(),
    };
    let key = match Key::from_headers(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) => return next.run(Request::from_parts(parts, body)).await,
        Err(e) => return e.into_response(),
    };
    let (body, request_hash) = match opted.payload {
        Payload::Upload => (body, None),
        Payload::Json => match read_json(body).await {
            Ok(bytes) => {
                let hash = Sha256::digest(&bytes).to_vec();
                (Body::from(bytes), Some(hash))
            }
            Err(e) => return e.into_response(),
        },
    };
    let scope = Scope {
        account_id: caller.id,
        key,
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
    };
    let other_body = |first: &Option<Vec<u8>>| first.is_some() && *first != request_hash;
    // A kept answer this instance holds: no statement.
    if let Some(replay) = state.replays.get(&scope) {
        if other_body(&replay.request_hash) {
            counted("reused");
            return ApiError::IdempotencyKeyReused.into_response();
        }
        counted("replayed");
        metrics::counter!("intake_idempotency_replays_from_memory_total").increment(1);
        return replay.answer.replay();
    }
    let holder = Uuid::now_v7();
    let claim = store::claim(&state.db, &scope, request_hash.as_deref(), holder, HOLD).await;
    match claim {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Claim::Ours) => {}
        Ok(
            Claim::Kept {
                request_hash: first,
                ..
            }
            | Claim::Running {
                request_hash: first,
            },
        ) if other_body(&first) => {
            counted("reused");
            return ApiError::IdempotencyKeyReused.into_response();
        }
        Ok(Claim::Running { .. }) => {
            counted("in_use");
            return ApiError::IdempotencyKeyInUse.into_response();
        }
        Ok(Claim::Kept {
            answer,
            request_hash: first,
            remaining,
        }) => {
            counted("replayed");
            state.replays.hold(&scope, answer.clone(), first, remaining);
            return answer.replay();
        }
    }
    counted("first");
    let watch = parts.extensions.get::<Arc<Watch>>().cloned();
    let hold = Hold::start(&state.db, scope.clone(), holder, HOLD);
    let response = next.run(Request::from_parts(parts, body)).await;
    let client_gone = watch.is_some_and(|w| w.failed());
    let (response, kept) = if client_gone || !answer::keeps(response.status()) {
        (response, None)
    } else {
        Kept::take(response).await
    };
    let settled = match kept {
        Some(kept) => {
            let ttl = state.config.idempotency_ttl;
            let kept_now = hold.keep(&kept, ttl).await;
            if kept_now.is_ok() {
                state.replays.hold(&scope, kept, request_hash, ttl);
            }
            kept_now
        }
        None => {
            counted("freed");
            hold.free().await
        }
    };
    if let Err(e) = settled {
        // The answer stands; the key's hold lapses on its own.
        tracing::warn!(error = %e, "could not settle an idempotency key");
    }
    response
}

/// Reads a JSON body whole, as the JSON extractor would (at most
/// `JSON_BODY_LIMIT`, the same answers to a body too large or broken).
async fn read_json(body: Body) -> Result<axum::body::Bytes, ApiError> {
    match Limited::new(body, JSON_BODY_LIMIT).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge {
            limit: JSON_BODY_LIMIT as u64,
        }),
        Err(e) => Err(body::broken(&*e)),
    }
}

fn counted(outcome: &'static str) {
    metrics::counter!("intake_idempotency_requests_total", "outcome" => outcome).increment(1);
}
