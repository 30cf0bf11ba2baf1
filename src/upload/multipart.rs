//! Reading a multipart body one part at a time, with a bound on what a
//! client can make the reader hold (part headers). How long it may make the
//! reader wait is the body guard's ([`crate::body`]).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use bytes::Bytes;
use futures_util::Stream;

use crate::error::ApiError;

/// Largest part header block accepted; more is an attack or a broken client.
pub const MAX_PART_HEADER_BYTES: usize = 1024 * 1024;

/// Why part headers were refused while streaming.
#[derive(Debug, thiserror::Error)]
#[error("part headers are larger than {MAX_PART_HEADER_BYTES} bytes")]
struct HeadersTooLarge;

/// The request body, counting the bytes read while multer looks for a part's
/// headers, so a part with endless headers cannot grow its buffer forever
/// (it holds at most the header limit and one read more).
///
/// It also hands multer one chunk per poll: multer reads its stream until
/// the stream is pending, appending every chunk to one buffer, so a body
/// whose bytes are always ready (a fast client) would otherwise be read
/// whole into memory (up to the route's limit, gigabytes) before a part's
/// first byte is given out. Pending after each chunk (with an immediate
/// wake-up) makes multer give out what it has first.
struct MeteredBody {
    inner: axum::body::BodyDataStream,
    reading_headers: Arc<AtomicBool>,
    header_bytes: Arc<AtomicUsize>,
    first: Option<FirstPart>,
    /// A chunk was just handed out: the next poll yields first.
    handed_out: bool,
}

/// Where the first part's data starts (`u64::MAX`: not known).
const UNKNOWN: u64 = u64::MAX;

/// Bytes of the body kept to find where the first part's data starts; a
/// first part whose headers run longer is simply not measured.
const FIRST_PART_SCAN_BYTES: usize = 16 * 1024;

/// Finds the byte at which the first part's data starts, for a body that
/// starts as clients write one: `--boundary` CRLF at byte 0, then headers
/// up to the first blank line, found as multer finds it (so both agree).
/// Anything else (a preamble, transport padding) leaves it unknown.
struct FirstPart {
    delimiter: Vec<u8>,
    head: Vec<u8>,
    data_start: Arc<AtomicU64>,
}

impl FirstPart {
    /// Looks at the next bytes of the body; `true` once decided.
    fn scan(&mut self, chunk: &[u8]) -> bool {
        let room = FIRST_PART_SCAN_BYTES - self.head.len();
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let known = self.head.len().min(self.delimiter.len());
        if self.head[..known] != self.delimiter[..known] {
            return true;
        }
        if known == self.delimiter.len()
            && let Some(at) = memchr::memmem::find(&self.head[known..], b"\r\n\r\n")
        {
            let start = (known + at + 4) as u64;
            self.data_start.store(start, Ordering::Relaxed);
            return true;
        }
        self.head.len() == FIRST_PART_SCAN_BYTES
    }
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.handed_out {
            self.handed_out = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(first) = &mut self.first
                    && first.scan(&chunk)
                {
                    self.first = None;
                }
                self.handed_out = true;
                // multer gives out the part in the same poll that brings
                // the headers' end, so every chunk read for them before this
                // one held only header bytes. This one may hold their end
                // and then a read's worth of data (READ_BUFFER_BYTES may be
                // larger than the limit), so it is not counted against them.
                if self.reading_headers.load(Ordering::Relaxed)
                    && self.header_bytes.fetch_add(chunk.len(), Ordering::Relaxed)
                        >= MAX_PART_HEADER_BYTES
                {
                    return Poll::Ready(Some(Err(Box::new(HeadersTooLarge))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|o| {
                o.map(|r| {
                    r.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
                })
            }),
        }
    }
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(inner) if inner.is::<HeadersTooLarge>() => {
            ApiError::bad_request(HeadersTooLarge.to_string())
        }
        multer::Error::StreamReadFailed(inner) => crate::body::broken(inner.as_ref()),
        multer::Error::IncompleteStream
        | multer::Error::IncompleteFieldData { .. }
        | multer::Error::IncompleteHeaders => {
            ApiError::bad_request("the multipart body is truncated")
        }
        multer::Error::StreamSizeExceeded { limit } => ApiError::PayloadTooLarge { limit },
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

/// The multipart reader of one request.
pub struct Parts {
    multipart: multer::Multipart<'static>,
    reading_headers: Arc<AtomicBool>,
    header_bytes: Arc<AtomicUsize>,
    boundary_len: usize,
    data_start: Arc<AtomicU64>,
}

/// The next chunk of a part, or `None` at its end.
pub async fn chunk(field: &mut multer::Field<'static>) -> Result<Option<Bytes>, ApiError> {
    field.chunk().await.map_err(multipart_error)
}

impl Parts {
    /// Starts reading a `multipart/form-data` body of at most
    /// `whole_stream_limit` bytes.
    pub fn new(headers: &HeaderMap, body: Body, whole_stream_limit: u64) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
        {
            return Err(ApiError::UnsupportedMediaType(
                "uploads are multipart/form-data: one part named file (or parts named files for a batch)".into(),
            ));
        }
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| ApiError::bad_request("the multipart Content-Type has no boundary"))?;
        let reading_headers = Arc::new(AtomicBool::new(true));
        let header_bytes = Arc::new(AtomicUsize::new(0));
        let data_start = Arc::new(AtomicU64::new(UNKNOWN));
        let body = MeteredBody {
            inner: body.into_data_stream(),
            reading_headers: reading_headers.clone(),
            header_bytes: header_bytes.clone(),
            first: Some(FirstPart {
                delimiter: format!("--{boundary}\r\n").into_bytes(),
                head: Vec::new(),
                data_start: data_start.clone(),
            }),
            handed_out: false,
        };
        let constraints = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(whole_stream_limit));
        Ok(Self {
            boundary_len: boundary.len(),
            multipart: multer::Multipart::with_constraints(body, boundary, constraints),
            reading_headers,
            header_bytes,
            data_start,
        })
    }

    /// The exact length of the file in a one-part body of `body_len` bytes,
    /// once that part's headers are read: what lies between them and the
    /// closing delimiter (`CRLF --boundary-- CRLF`, as every client ends a
    /// body). `None` when the body does not start as clients write one.
    /// Whether the body really is one part of that length shows as it is
    /// read: another part, or another ending, makes the part end elsewhere.
    pub fn single_part_len(&self, body_len: u64) -> Option<u64> {
        let start = self.data_start.load(Ordering::Relaxed);
        if start == UNKNOWN {
            return None;
        }
        let closing = self.boundary_len as u64 + 8;
        body_len.checked_sub(start)?.checked_sub(closing)
    }

    /// The next part, or `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<multer::Field<'static>>, ApiError> {
        self.header_bytes.store(0, Ordering::Relaxed);
        self.reading_headers.store(true, Ordering::Relaxed);
        let field = self.multipart.next_field().await.map_err(multipart_error)?;
        self.reading_headers.store(false, Ordering::Relaxed);
        Ok(field)
    }
}

/// The request's `Content-Length`, when the client sent one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Properties over generated bodies (proptest, bounded to run with every
/// `cargo test`), and bodies that never end.
#[cfg(test)]
mod fuzz {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::http::HeaderValue;
    use futures_util::StreamExt as _;
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// Pieces of multipart bodies (boundaries, headers, blank lines) and
    /// bytes of any kind, to be put together in any order.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"--XyZ\r\n".to_vec()),
            Just(b"\r\n--XyZ\r\n".to_vec()),
            Just(b"\r\n--XyZ--\r\n".to_vec()),
            Just(b"--XyZ".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"files\"; filename*=UTF-8''%E2%80%AE.txt\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\r\n".to_vec()),
            Just(b"Content-Type: image/png\r\n".to_vec()),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            vec(any::<u8>(), 0..64),
        ]
    }

    fn content_type() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("multipart/form-data; boundary=XyZ".to_owned()),
            1 => Just("multipart/form-data; boundary=\"XyZ\"".to_owned()),
            1 => "multipart/form-data[ -~]{0,40}",
            1 => any::<String>(),
        ]
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        headers
    }

    /// Reads every part to its end; returns the data bytes read.
    async fn drain(headers: &HeaderMap, body: Body, limit: u64) -> Result<usize, ApiError> {
        let mut parts = Parts::new(headers, body, limit)?;
        let mut data = 0;
        while let Some(mut field) = parts.next().await? {
            let _ = (field.name(), field.file_name(), field.content_type());
            while let Some(chunk) = chunk(&mut field).await? {
                data += chunk.len();
            }
        }
        Ok(data)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(3000)))]

        /// Any body, cut anywhere, under any Content-Type: parts or an
        /// error, never a panic, and never more data than was sent.
        #[test]
        fn any_body_is_read_or_refused(
            content_type in content_type(),
            pieces in vec(piece(), 0..30),
            cuts in vec(1usize..300, 1..6),
            limit in prop_oneof![Just(1u64 << 20), 1u64..2000],
        ) {
            let body: Vec<u8> = pieces.concat();
            let mut chunks = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < body.len() {
                let end = (at + cuts[i % cuts.len()]).min(body.len());
                chunks.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(&body[at..end])));
                at = end;
                i += 1;
            }
            let stream = futures_util::stream::iter(chunks);
            let read = runtime().block_on(drain(&headers(&content_type), Body::from_stream(stream), limit));
            if let Ok(data) = read {
                prop_assert!(data <= body.len());
                prop_assert!(data as u64 <= limit);
            }
        }
    }

    /// A body that never ends, after `prefix`: chunks of 8 KiB of `fill`,
    /// counting what the reader pulled.
    fn endless(prefix: &'static [u8], fill: u8, pulled: Arc<AtomicUsize>) -> Body {
        let head = futures_util::stream::once(async move { Ok(Bytes::from_static(prefix)) });
        let tail = futures_util::stream::repeat_with(move || Bytes::from(vec![fill; 8192])).map(
            move |chunk| {
                pulled.fetch_add(chunk.len(), Ordering::Relaxed);
                Ok::<_, std::io::Error>(chunk)
            },
        );
        Body::from_stream(head.chain(tail))
    }

    #[test]
    fn endless_part_headers_are_refused_after_the_header_limit() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = endless(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; x=",
            b'a',
            pulled.clone(),
        );
        let headers = headers("multipart/form-data; boundary=XyZ");
        let read = runtime().block_on(drain(&headers, body, u64::MAX));
        match &read {
            Err(ApiError::InvalidRequest { status, detail }) => {
                assert_eq!(*status, axum::http::StatusCode::BAD_REQUEST);
                assert!(detail.contains("part headers"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let pulled = pulled.load(Ordering::Relaxed);
        assert!(
            pulled <= MAX_PART_HEADER_BYTES + 8192,
            "read {pulled} bytes of headers"
        );
    }

    /// Regression: multer read an always-ready body to the whole-stream
    /// limit before it gave out a part (here it took the file's bytes for
    /// endless headers).
    #[test]
    fn a_part_is_given_out_before_the_rest_of_a_fast_body_is_read() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = endless(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n",
            1,
            pulled.clone(),
        );
        let headers = headers("multipart/form-data; boundary=XyZ");
        let first = runtime().block_on(async {
            let mut parts = Parts::new(&headers, body, 1 << 30)?;
            let Some(mut field) = parts.next().await? else {
                return Ok(None);
            };
            chunk(&mut field).await
        });
        assert!(
            matches!(&first, Ok(Some(chunk)) if !chunk.is_empty()),
            "{first:?}"
        );
        let pulled = pulled.load(Ordering::Relaxed);
        assert!(
            pulled <= 4 * 8192,
            "{pulled} bytes read for the first chunk of a part"
        );
    }

    #[test]
    fn endless_part_data_ends_at_the_whole_stream_limit() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = endless(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n",
            0,
            pulled.clone(),
        );
        let headers = headers("multipart/form-data; boundary=XyZ");
        let limit = 1 << 20;
        let read = runtime().block_on(drain(&headers, body, limit));
        assert!(
            matches!(read, Err(ApiError::PayloadTooLarge { .. })),
            "{read:?}"
        );
        assert!(pulled.load(Ordering::Relaxed) as u64 <= limit + 8192);
    }
}
