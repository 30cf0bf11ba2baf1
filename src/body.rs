//! The one request body reader. Every route reads its body through
//! [`Guarded`], which the HTTP layer wraps around each request's body: it
//! alone decides when a body has taken too long (nothing sent for the idle
//! time while the server waits for it, or, for a body that is not an
//! upload, not whole within the whole-body deadline) and when the server's
//! shutdown ends it, and it alone words those answers ([`BodyError`]).
//! Readers (multipart, tus, the presigned data route, the JSON extractor)
//! map a broken body with [`broken`], so every route answers the same.
//!
//! tower-http's `TimeoutBody` restarts its timer on every chunk and has
//! neither a whole-body deadline nor a shutdown signal, so this is our own:
//! one timer for waiting, armed when a read finds nothing ready (time the
//! server spends elsewhere, such as waiting for storage, is not the
//! client's idleness), one for the deadline, and the shutdown token, which
//! is checked on every read.
//!
//! It also knows whether the body was read to its end. A route that
//! answers before then lets go of the rest ([`Watch::take_rest`]), which
//! the HTTP layer reads away ([`drain`]) or closes the connection on: hyper
//! alone would close it after an answer that promised to keep it open.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, Request},
};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::ApiError;

/// Why the guard ended a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for this long while the server waited for it.
    #[error("the request body sent nothing for {} s", .0.as_secs())]
    Idle(Duration),
    /// A body that is not an upload was not whole within this long.
    #[error("the request body did not arrive whole within {} s", .0.as_secs())]
    Deadline(Duration),
    /// The server's shutdown grace period is over.
    #[error("the server is shutting down; retry the request")]
    ShuttingDown,
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Idle(_) | BodyError::Deadline(_) => ApiError::InvalidRequest {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                detail: e.to_string(),
            },
            BodyError::ShuttingDown => ApiError::ServiceUnavailable(e.to_string()),
        }
    }
}

/// The answer for a body that broke while a route read it: the guard's own
/// answer if it ended the body, else a 400 (a client that hung up, or a
/// body shorter than it said).
pub fn broken(error: &(dyn std::error::Error + 'static)) -> ApiError {
    cause(error).map_or_else(
        || ApiError::bad_request("the request body could not be read to its end"),
        ApiError::from,
    )
}

/// The guard's error somewhere in a chain of errors (readers wrap the
/// body's error in their own: multer, axum).
pub fn cause(error: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    let mut at = Some(error);
    while let Some(e) = at {
        if let Some(found) = e.downcast_ref::<BodyError>() {
            return Some(*found);
        }
        at = e.source();
    }
    None
}

/// The bounds of one request's body.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Longest wait for the next byte (`UPLOAD_IDLE_TIMEOUT_SECS`).
    pub idle: Duration,
    /// Longest time for a body that is not an upload to arrive whole
    /// (`BODY_TIMEOUT_SECS`), from when the guard is put on.
    pub deadline: Duration,
    /// Cancelled when the shutdown grace period is over.
    pub shutdown: CancellationToken,
}

/// What the guard and the route share: whether the route reads an upload
/// (no whole-body deadline), what ended the body, if the guard did, and
/// whether the body was read to its end, or else what is left of it.
#[derive(Debug, Default)]
pub struct Watch {
    upload: AtomicBool,
    /// 0 while the guard has not ended the body, else one of `ENDED_*`.
    ended: AtomicU8,
    /// The body had nothing more to give when it was let go of.
    whole: AtomicBool,
    /// A read of the body met an error before its end.
    failed: AtomicBool,
    /// The unread rest of a body let go of before its end.
    rest: Mutex<Option<Body>>,
}

const ENDED_IDLE: u8 = 1;
const ENDED_DEADLINE: u8 = 2;
const ENDED_SHUTDOWN: u8 = 3;

impl Watch {
    /// What ended the body, if the guard did.
    pub fn ended(&self, bounds: &Bounds) -> Option<BodyError> {
        match self.ended.load(Ordering::Relaxed) {
            ENDED_IDLE => Some(BodyError::Idle(bounds.idle)),
            ENDED_DEADLINE => Some(BodyError::Deadline(bounds.deadline)),
            ENDED_SHUTDOWN => Some(BodyError::ShuttingDown),
            _ => None,
        }
    }

    fn end(&self, why: BodyError) -> BodyError {
        let code = match why {
            BodyError::Idle(_) => ENDED_IDLE,
            BodyError::Deadline(_) => ENDED_DEADLINE,
            BodyError::ShuttingDown => ENDED_SHUTDOWN,
        };
        self.ended.store(code, Ordering::Relaxed);
        self.failed.store(true, Ordering::Relaxed);
        why
    }

    /// Whether the body broke before its end: the client went away or sent
    /// less than it announced, or the guard ended it. Whatever the route
    /// answered then, the client may not have seen it.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether the body was read to its end (a request without a body
    /// counts as read).
    pub fn whole(&self) -> bool {
        self.whole.load(Ordering::Relaxed)
    }

    /// The unread rest of a body its reader let go of before the end;
    /// `None` once taken, or while a reader still holds the body.
    pub fn take_rest(&self) -> Option<Body> {
        self.rest.lock().ok().and_then(|mut rest| rest.take())
    }
}

/// The most of a body's rest that is read and thrown away after an early
/// answer: a rest known (by `Content-Length`) to be no larger is read
/// away and the connection stays open for the next request.
pub const DRAIN_BYTES: u64 = 64 * 1024;

/// The longest time spent reading a rest away.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// How long the answer waits for the end of a rest of unknown length
/// (a chunked body) before it says the connection closes.
pub const END_WAIT: Duration = Duration::from_millis(100);

/// Reads `rest` for up to `wait` and [`DRAIN_BYTES`]; whether it ended.
/// A chunked body that its reader left at its last part usually has
/// nothing left but its end, already on its way.
pub async fn ends_within(rest: &mut Body, wait: Duration) -> bool {
    let read_to_end = async {
        let mut read = 0u64;
        loop {
            match rest.frame().await {
                None => return true,
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DRAIN_BYTES {
                        return false;
                    }
                }
                Some(Err(_)) => return false,
            }
        }
    };
    tokio::time::timeout(wait, read_to_end)
        .await
        .unwrap_or(false)
}

/// Reads and throws away up to [`DRAIN_BYTES`] of the rest of a body
/// within [`DRAIN_TIME`], then lets go of it. Once the rest has been read
/// to its end, hyper reads the connection's next request; otherwise
/// letting go makes hyper close the connection (after reading the bytes
/// the client sent meanwhile, so the close does not reset the connection
/// under the answer).
pub async fn drain(mut rest: Body) {
    let read_away = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = rest.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read_away).await;
}

/// A request body held to its [`Bounds`]. Its timers are made the first
/// time a read finds nothing ready, so a body that is empty or arrives at
/// once costs no timer.
pub struct Guarded {
    inner: Body,
    bounds: Bounds,
    watch: Arc<Watch>,
    /// When the whole-body deadline falls.
    deadline_at: Instant,
    timers: Option<Timers>,
    /// A read found nothing ready and no chunk came since.
    waiting: bool,
}

/// What a waiting read is woken by.
struct Timers {
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Guarded {
    /// Puts the guard on `inner`; the deadline counts from now.
    pub fn new(inner: Body, bounds: Bounds, watch: Arc<Watch>) -> Self {
        if inner.is_end_stream() {
            watch.whole.store(true, Ordering::Relaxed);
        }
        Self {
            inner,
            deadline_at: Instant::now() + bounds.deadline,
            bounds,
            watch,
            timers: None,
            waiting: false,
        }
    }

    fn end(&self, why: BodyError) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Poll::Ready(Some(Err(axum::Error::new(self.watch.end(why)))))
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.bounds.shutdown.is_cancelled() {
            return this.end(BodyError::ShuttingDown);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            if matches!(frame, Some(Err(_))) {
                this.watch.failed.store(true, Ordering::Relaxed);
            }
            if frame.is_none() || this.inner.is_end_stream() {
                this.watch.whole.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(frame);
        }
        let idle_at = Instant::now() + this.bounds.idle;
        let started = !std::mem::replace(&mut this.waiting, true);
        let (deadline_at, shutdown) = (this.deadline_at, &this.bounds.shutdown);
        let timers = this.timers.get_or_insert_with(|| Timers {
            idle: Box::pin(tokio::time::sleep_until(idle_at)),
            deadline: Box::pin(tokio::time::sleep_until(deadline_at)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        });
        if started {
            timers.idle.as_mut().reset(idle_at);
        }
        let why = if timers.shutdown.as_mut().poll(cx).is_ready() {
            BodyError::ShuttingDown
        } else if timers.idle.as_mut().poll(cx).is_ready() {
            BodyError::Idle(this.bounds.idle)
        } else if !this.watch.upload.load(Ordering::Relaxed)
            && timers.deadline.as_mut().poll(cx).is_ready()
        {
            BodyError::Deadline(this.bounds.deadline)
        } else {
            return Poll::Pending;
        };
        this.end(why)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    /// Hands what is left of an unfinished body to the HTTP layer, which
    /// decides whether to read it away; dropping it here would make hyper
    /// close the connection after an answer that did not say so.
    fn drop(&mut self) {
        if self.watch.whole() || self.inner.is_end_stream() {
            self.watch.whole.store(true, Ordering::Relaxed);
            return;
        }
        if let Ok(mut rest) = self.watch.rest.lock() {
            *rest = Some(std::mem::take(&mut self.inner));
        }
    }
}

/// Raw bytes in the OpenAPI document (a tus body, a presigned upload's
/// data, a file's content): a binary string, so that a client generated
/// from the document sends and takes bytes. Only described, never built.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawBytes(pub Vec<u8>);

/// The body of an upload route: read for as long as bytes keep coming (the
/// idle time and shutdown still apply), without the whole-body deadline of
/// other requests. Upload handlers take it in place of `Body`.
pub struct UploadBody(pub Body);

impl<S: Send + Sync> FromRequest<S> for UploadBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(watch) = req.extensions().get::<Arc<Watch>>() {
            watch.upload.store(true, Ordering::Relaxed);
        }
        Ok(Self(req.into_body()))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt as _;

    use super::*;

    fn bounds(idle_ms: u64, deadline_ms: u64) -> Bounds {
        Bounds {
            idle: Duration::from_millis(idle_ms),
            deadline: Duration::from_millis(deadline_ms),
            shutdown: CancellationToken::new(),
        }
    }

    /// A body that sends one byte every `every`, `count` times.
    fn trickle(every: Duration, count: usize) -> Body {
        Body::from_stream(
            futures_util::stream::iter(0..count).then(move |_| async move {
                tokio::time::sleep(every).await;
                Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
            }),
        )
    }

    async fn read(body: Guarded) -> Result<usize, axum::Error> {
        Ok(Body::new(body).collect().await?.to_bytes().len())
    }

    #[tokio::test]
    async fn a_body_that_keeps_sending_is_read_whole() {
        let watch = Arc::new(Watch::default());
        let body = Guarded::new(
            trickle(Duration::from_millis(5), 10),
            bounds(1000, 5000),
            watch.clone(),
        );
        assert_eq!(read(body).await.ok(), Some(10));
        assert_eq!(watch.ended(&bounds(1000, 5000)), None);
        assert!(!watch.failed());
    }

    #[tokio::test]
    async fn a_body_that_breaks_is_seen_as_failed() {
        let watch = Arc::new(Watch::default());
        let broken = Body::from_stream(futures_util::stream::iter([
            Ok(Bytes::from_static(b"x")),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ]));
        let body = Guarded::new(broken, bounds(1000, 5000), watch.clone());
        assert!(read(body).await.is_err());
        assert!(watch.failed());
        assert_eq!(
            watch.ended(&bounds(1000, 5000)),
            None,
            "not the guard's doing"
        );
    }

    #[tokio::test]
    async fn a_silent_body_ends_at_the_idle_time() {
        let watch = Arc::new(Watch::default());
        let b = bounds(30, 60_000);
        let body = Guarded::new(
            trickle(Duration::from_secs(60), 1),
            b.clone(),
            watch.clone(),
        );
        let err = read(body).await.err().map(|e| broken(&e));
        assert!(
            matches!(&err, Some(ApiError::InvalidRequest { status, detail })
                if *status == axum::http::StatusCode::REQUEST_TIMEOUT && detail.contains("sent nothing")),
            "{err:?}"
        );
        assert_eq!(watch.ended(&b), Some(BodyError::Idle(b.idle)));
        assert!(watch.failed());
    }

    #[tokio::test]
    async fn a_trickled_body_ends_at_the_deadline_unless_it_is_an_upload() {
        let b = bounds(1000, 100);
        let watch = Arc::new(Watch::default());
        let body = Guarded::new(
            trickle(Duration::from_millis(10), 1000),
            b.clone(),
            watch.clone(),
        );
        assert!(read(body).await.is_err());
        assert_eq!(watch.ended(&b), Some(BodyError::Deadline(b.deadline)));

        let upload = Arc::new(Watch::default());
        upload.upload.store(true, Ordering::Relaxed);
        let body = Guarded::new(
            trickle(Duration::from_millis(10), 20),
            b.clone(),
            upload.clone(),
        );
        assert_eq!(read(body).await.ok(), Some(20), "20 bytes over 200 ms");
        assert_eq!(upload.ended(&b), None);
    }

    #[tokio::test]
    async fn shutdown_ends_a_waiting_body() {
        let b = bounds(60_000, 60_000);
        let watch = Arc::new(Watch::default());
        let body = Guarded::new(
            trickle(Duration::from_secs(60), 1),
            b.clone(),
            watch.clone(),
        );
        let reading = tokio::spawn(read(body));
        b.shutdown.cancel();
        let err = reading.await.ok().and_then(Result::err).map(|e| broken(&e));
        assert!(
            matches!(err, Some(ApiError::ServiceUnavailable(_))),
            "{err:?}"
        );
        assert_eq!(watch.ended(&b), Some(BodyError::ShuttingDown));
    }
}
