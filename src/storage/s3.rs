//! The S3 backend (AWS S3, MinIO, R2 and other S3-compatible servers).

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    operation::complete_multipart_upload::CompleteMultipartUploadOutput,
    presigning::PresigningConfig,
    primitives::ByteStream as SdkByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::io::ReaderStream;

use super::{
    ObjectBody, ObjectStore, ObjectWriter, PresignedRequest, PutConditions, StorageError,
    attachment_disposition,
};
use crate::config::S3Config;

/// Objects in one bucket of an S3-compatible server.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// Signs URLs for clients; differs from `client` when clients reach
    /// storage at another address (`S3_PUBLIC_ENDPOINT`).
    presign_client: Client,
    bucket: String,
    prefix: String,
    /// The bound of one call, and of each wait of a streamed PUT.
    operation_timeout: Duration,
}

impl S3Store {
    /// Builds the clients. Nothing is contacted until the first request.
    pub async fn new(cfg: &S3Config) -> Self {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "intake-config",
            ));
        }
        // Every call is bounded, so storage that stops answering fails
        // requests with 503 instead of holding them (and their slots) forever.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .operation_timeout(cfg.operation_timeout)
            .build();
        let shared = loader.timeout_config(timeouts).load().await;
        let client_for = |endpoint: Option<&String>| {
            let mut builder = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(cfg.force_path_style)
                // S3-compatible servers over plain http do not all speak the
                // newer default checksums; ask for them only when required.
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            if let Some(endpoint) = endpoint {
                builder = builder.endpoint_url(endpoint);
            }
            Client::from_conf(builder.build())
        };
        let client = client_for(cfg.endpoint.as_ref());
        let presign_client = client_for(cfg.public_endpoint.as_ref().or(cfg.endpoint.as_ref()));
        Self {
            client,
            presign_client,
            bucket: cfg.bucket.clone(),
            prefix: cfg.key_prefix.clone(),
            operation_timeout: cfg.operation_timeout,
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

fn map_err<E>(err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err.raw_response().map(|r| r.status().as_u16()) {
        Some(404) => return StorageError::NotFound,
        Some(416) => return StorageError::InvalidRange,
        _ => {}
    }
    let unreachable = match &err {
        SdkError::TimeoutError(_) => true,
        // A connection that closed before its answer (storage killed after
        // it took the request: hyper's "incomplete message") is transient.
        SdkError::DispatchFailure(failure) => {
            failure.is_timeout()
                || failure.is_io()
                || failure.as_other() == Some(aws_smithy_types::retry::ErrorKind::TransientError)
        }
        // A store that answers but cannot serve: 503 ServiceUnavailable or
        // SlowDown (a Garage cluster without its quorum, S3 throttling), still
        // 503 once the SDK's retries are spent.
        _ => err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 503),
    };
    if unreachable {
        return StorageError::Unavailable(err.into());
    }
    if let Some(code) = err.as_service_error().and_then(|e| e.code()) {
        match code {
            "NoSuchKey" | "NotFound" | "NoSuchUpload" => return StorageError::NotFound,
            "InvalidRange" => return StorageError::InvalidRange,
            _ => {}
        }
    }
    StorageError::backend(err)
}

fn presigned(
    req: aws_sdk_s3::presigning::PresignedRequest,
) -> Result<PresignedRequest, StorageError> {
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(StorageError::backend)?;
        let value = HeaderValue::from_str(value).map_err(StorageError::backend)?;
        headers.insert(name, value);
    }
    Ok(PresignedRequest {
        method: req.method().parse().map_err(StorageError::backend)?,
        url: req.uri().to_owned(),
        headers,
    })
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// `<32 hex>-<parts>`: the ETag S3 gives a multipart object.
fn is_composite(etag: &str) -> bool {
    etag.split_once('-').is_some_and(|(md5, n)| {
        md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) && n.parse::<u32>().is_ok()
    })
}

/// The multipart object's ETag these part ETags make: MD5 of the parts'
/// binary MD5s, then `-<parts>`. `None` when a part ETag is not an MD5.
fn composite_etag(parts: &[(i32, String)]) -> Option<String> {
    use md5::Digest as _;
    let mut md5 = md5::Md5::new();
    for (_, etag) in parts {
        let bytes = hex::decode(etag).ok().filter(|b| b.len() == 16)?;
        md5.update(bytes);
    }
    Some(format!("{}-{}", hex::encode(md5.finalize()), parts.len()))
}

/// Parses the total size out of `Content-Range: bytes 0-9/100`.
fn total_from_content_range(range: Option<&str>) -> Option<u64> {
    range?.rsplit('/').next()?.parse().ok()
}

impl S3Store {
    /// Every part of a multipart upload: its number, its ETag (empty where
    /// the server lists none) and its size where the server gives it,
    /// paging through ListParts (AWS and MinIO answer at most 1,000 parts a
    /// page).
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(i32, String, Option<i64>)>, StorageError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .upload_id(upload_id)
                .max_parts(1000)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(map_err)?;
            parts.extend(page.parts().iter().map(|p| {
                (
                    p.part_number().unwrap_or(0),
                    unquote(p.e_tag().unwrap_or_default()),
                    p.size(),
                )
            }));
            // A server that says "more" without moving on would loop forever.
            match (page.is_truncated(), page.next_part_number_marker()) {
                (Some(true), Some(next))
                    if !next.is_empty() && page.part_number_marker() != Some(next) =>
                {
                    marker = Some(next.to_owned());
                }
                _ => return Ok(parts),
            }
        }
    }

    /// Completes a multipart upload with the parts given.
    async fn complete(
        &self,
        full_key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<CompleteMultipartUploadOutput, StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(map_err)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_type(content_type)
            .content_length(body.len() as i64)
            .body(SdkByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectBody, StorageError> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(r) = &range {
            if r.is_empty() {
                return Err(StorageError::InvalidRange);
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = req.send().await.map_err(map_err)?;
        let len = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let total_len = total_from_content_range(out.content_range()).unwrap_or(len);
        let reader = out.body.into_async_read();
        // Storage has answered: a read that fails now is the connection
        // failing (storage killed or cut off mid-body), whatever kind the
        // SDK gives it.
        let stream = ReaderStream::new(reader)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e));
        Ok(ObjectBody {
            len,
            total_len,
            stream: Box::pin(stream),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            )),
            Err(e) => match map_err(e) {
                StorageError::NotFound => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        // The copy source is "bucket/key", URL-encoded but for its slashes.
        let source: String = format!("{}/{}", self.bucket, self.full_key(from))
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(source)
            .key(self.full_key(to))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e) {
                StorageError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn writer(
        &self,
        key: &str,
        content_type: &str,
        part_size: usize,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(S3Writer::new(
            self.clone(),
            self.full_key(key),
            content_type,
            part_size,
        )))
    }

    async fn writer_of_len(
        &self,
        key: &str,
        content_type: &str,
        len: u64,
        _part_size: usize,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(S3PutWriter::start(
            self,
            &self.full_key(key),
            content_type,
            len,
        )?))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        abort(&self.client, &self.bucket, &self.full_key(key), upload_id).await
    }

    async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_type(content_type)
            .send()
            .await
            .map_err(map_err)?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::backend(anyhow::anyhow!("no upload id returned")))
    }

    async fn presign_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        len: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::backend)?;
        let req = self
            .presign_client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(len as i64)
            .presigned(config)
            .await
            .map_err(map_err)?;
        let mut out = presigned(req)?;
        out.headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        Ok(out)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StorageError> {
        // Check the client's list against what storage holds, so a wrong
        // ETag or a missing part fails here even on servers that do not check.
        let mut stored: Vec<(i32, String)> = self
            .list_parts(key, upload_id)
            .await?
            .into_iter()
            .map(|(n, etag, _)| (n, etag))
            .collect();
        stored.sort_unstable();
        let given: Vec<(i32, String)> = parts.iter().map(|(n, e)| (*n, unquote(e))).collect();
        // Some S3-compatible servers list parts without their ETags; those
        // are compared by number only (storage checks the ETags itself).
        let same = stored.len() == given.len()
            && stored
                .iter()
                .zip(&given)
                .all(|((sn, se), (gn, ge))| sn == gn && (se.is_empty() || se == ge));
        if !same {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the parts listed {given:?} are not the parts uploaded {stored:?}"
            )));
        }
        let expected = composite_etag(&given);
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        let out = self
            .complete(&self.full_key(key), upload_id, completed)
            .await?;
        // The object's ETag is made from its parts' real ETags: a client's
        // wrong ETag shows here even where completion did not check it.
        if let (Some(expected), Some(actual)) = (expected, out.e_tag().map(unquote))
            && is_composite(&actual)
            && actual != expected
        {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the parts' ETags do not match the stored parts"
            )));
        }
        Ok(())
    }

    async fn start_parts(&self, key: &str, content_type: &str) -> Result<String, StorageError> {
        self.create_multipart(key, content_type).await
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        _start: u64,
        len: u64,
        body: super::PartStream,
    ) -> Result<(), StorageError> {
        let frames = body.map(|chunk| chunk.map(Frame::data));
        self.client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(len).map_err(StorageError::backend)?)
            .body(SdkByteStream::from_body_1_x(StreamBody::new(frames)))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn complete_parts(
        &self,
        key: &str,
        upload_id: &str,
        parts: i32,
        size: u64,
    ) -> Result<(), StorageError> {
        // The ETags come from storage itself.
        let mut listed = self.list_parts(key, upload_id).await?;
        listed.retain(|(n, _, _)| (1..=parts).contains(n));
        listed.sort_unstable_by_key(|(n, _, _)| *n);
        listed.dedup_by_key(|(n, _, _)| *n);
        let numbered = listed.len() == usize::try_from(parts).unwrap_or(0)
            && listed.iter().zip(1..).all(|((n, _, _), want)| *n == want);
        let sizes: Option<i64> = listed.iter().map(|(_, _, s)| *s).sum();
        if !numbered || sizes.is_some_and(|total| u64::try_from(total).ok() != Some(size)) {
            return Err(StorageError::backend(anyhow::anyhow!(
                "storage holds parts {:?}, not the {parts} parts of {size} bytes recorded",
                listed.iter().map(|(n, _, s)| (*n, *s)).collect::<Vec<_>>()
            )));
        }
        let completed: Vec<CompletedPart> = listed
            .into_iter()
            .map(|(n, etag, _)| {
                // Some S3-compatible servers list parts without ETags (and do
                // not check them at completion).
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag((!etag.is_empty()).then_some(etag))
                    .build()
            })
            .collect();
        self.complete(&self.full_key(key), upload_id, completed)
            .await?;
        Ok(())
    }

    async fn presign_get(
        &self,
        key: &str,
        filename: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::backend)?;
        let req = self
            .presign_client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .response_content_disposition(attachment_disposition(filename))
            .presigned(config)
            .await
            .map_err(map_err)?;
        presigned(req)
    }

    async fn presign_put(
        &self,
        key: &str,
        conditions: &PutConditions,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::backend)?;
        let mut req = self
            .presign_client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(conditions.content_length as i64)
            .content_type(&conditions.content_type);
        if let Some(sha) = conditions.sha256 {
            req = req.checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha));
        }
        let req = req.presigned(config).await.map_err(map_err)?;
        let mut out = presigned(req)?;
        // The signature covers these; the client must send them as given.
        out.headers.insert(
            http::header::CONTENT_TYPE,
            header_value(&conditions.content_type)?,
        );
        out.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(conditions.content_length),
        );
        Ok(out)
    }

    fn list(&self, page_size: usize) -> super::Listing<'_> {
        // ListObjectsV2 answers at most 1,000 keys a page.
        let max_keys = i32::try_from(page_size.clamp(1, 1000)).unwrap_or(1000);
        // (continuation token, listing finished)
        let start: (Option<String>, bool) = (None, false);
        Box::pin(futures_util::stream::try_unfold(
            start,
            move |(token, finished)| async move {
                if finished {
                    return Ok(None);
                }
                let mut req = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .max_keys(max_keys)
                    .set_continuation_token(token.clone());
                if !self.prefix.is_empty() {
                    req = req.prefix(&self.prefix);
                }
                let out = req.send().await.map_err(map_err)?;
                let page: Vec<super::ListedObject> = out
                    .contents()
                    .iter()
                    .filter_map(|o| {
                        let key = o.key()?.strip_prefix(self.prefix.as_str())?;
                        Some(super::ListedObject {
                            key: key.to_owned(),
                            size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                        })
                    })
                    .collect();
                // A server that says "more" without a new token would loop forever.
                let next = match (out.is_truncated(), out.next_continuation_token()) {
                    (Some(true), Some(next))
                        if !next.is_empty() && token.as_deref() != Some(next) =>
                    {
                        Some(next.to_owned())
                    }
                    _ => None,
                };
                let finished = next.is_none();
                Ok(Some((page, (next, finished))))
            },
        ))
    }
}

fn header_value(s: &str) -> Result<HeaderValue, StorageError> {
    HeaderValue::from_str(s).map_err(StorageError::backend)
}

async fn abort(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<(), StorageError> {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => match map_err(e) {
            StorageError::NotFound => Ok(()),
            other => Err(other),
        },
    }
}

/// A body made of chunks that are released as they are sent, and that
/// counts down the writer's buffered bytes as it goes.
fn chunk_body(chunks: Vec<Bytes>, buffered: Option<Arc<Buffered>>) -> SdkByteStream {
    let stream = futures_util::stream::iter(chunks).map(move |chunk| {
        if let Some(b) = &buffered {
            b.sent(chunk.len());
        }
        Ok::<_, std::convert::Infallible>(Frame::data(chunk))
    });
    SdkByteStream::from_body_1_x(StreamBody::new(stream))
}

/// Bytes a writer holds (waiting plus not yet sent), so that reading the
/// next part can overlap sending the last one without holding two parts.
#[derive(Default)]
struct Buffered {
    in_flight: AtomicUsize,
    progress: Notify,
}

impl Buffered {
    fn sent(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        self.progress.notify_waiters();
    }
}

/// Writes one object: a single PUT when it fits in one part, a multipart
/// upload otherwise. One part is sent while the next one fills; the bytes
/// held (filling plus not yet sent) stay within one part.
struct S3Writer {
    store: S3Store,
    key: String,
    content_type: String,
    part_size: usize,
    pending: Vec<Bytes>,
    pending_len: usize,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart, StorageError>>>,
    buffered: Arc<Buffered>,
    written: u64,
    ended: bool,
}

impl S3Writer {
    fn new(store: S3Store, key: String, content_type: &str, part_size: usize) -> Self {
        Self {
            store,
            key,
            content_type: content_type.to_owned(),
            part_size,
            pending: Vec::new(),
            pending_len: 0,
            upload_id: None,
            parts: Vec::new(),
            in_flight: None,
            buffered: Arc::default(),
            written: 0,
            ended: false,
        }
    }

    /// Takes exactly `n` bytes off the front of the pending chunks (without
    /// copying: a chunk that straddles the cut is split).
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(first) = self.pending.first_mut() else {
                break;
            };
            if first.len() <= need {
                need -= first.len();
                out.push(self.pending.remove(0));
            } else {
                out.push(first.split_to(need));
                need = 0;
            }
        }
        self.pending_len -= n - need;
        out
    }

    async fn upload_id(&mut self) -> Result<String, StorageError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let out = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .content_type(&self.content_type)
            .send()
            .await
            .map_err(map_err)?;
        let id = out
            .upload_id()
            .ok_or_else(|| StorageError::backend(anyhow::anyhow!("no upload id returned")))?
            .to_owned();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    async fn wait_in_flight(&mut self) -> Result<(), StorageError> {
        if let Some(task) = self.in_flight.take() {
            let part = task.await.map_err(StorageError::backend)??;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Waits for the part before, then starts sending this one.
    async fn send_part(&mut self, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let upload_id = self.upload_id().await?;
        self.wait_in_flight().await?;
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let part_number = i32::try_from(self.parts.len() + 1).map_err(StorageError::backend)?;
        self.buffered.in_flight.fetch_add(len, Ordering::AcqRel);
        let request = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(len as i64)
            .body(chunk_body(chunks, Some(self.buffered.clone())));
        self.in_flight = Some(tokio::spawn(async move {
            let out = request
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(map_err)?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        }));
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.written += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        while self.pending_len >= self.part_size {
            let part = self.take(self.part_size);
            self.send_part(part).await?;
        }
        // Hold at most one part's worth: reading goes on as the part in
        // flight drains, so receiving and sending still overlap. The wait
        // also ends when the part's request does, whichever way: a part that
        // fails sends no more bytes, so no progress would ever wake it.
        let budget = self.part_size;
        loop {
            let notified = self.buffered.progress.notified();
            let in_flight = self.buffered.in_flight.load(Ordering::Acquire);
            let ended = match self.in_flight.as_mut() {
                Some(task) if self.pending_len + in_flight > budget => tokio::select! {
                    () = notified => None,
                    ended = task => Some(ended),
                },
                _ => break,
            };
            if let Some(ended) = ended {
                self.in_flight = None;
                self.parts.push(ended.map_err(StorageError::backend)??);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let rest = self.take(self.pending_len);
        let rest_len: usize = rest.iter().map(Bytes::len).sum();
        match self.upload_id.clone() {
            None => {
                self.store
                    .client
                    .put_object()
                    .bucket(&self.store.bucket)
                    .key(&self.key)
                    .content_type(&self.content_type)
                    .content_length(rest_len as i64)
                    .body(chunk_body(rest, None))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(map_err)?;
            }
            Some(upload_id) => {
                if rest_len > 0 {
                    self.send_part(rest).await?;
                }
                self.wait_in_flight().await?;
                let parts = std::mem::take(&mut self.parts);
                self.store.complete(&self.key, &upload_id, parts).await?;
            }
        }
        // On an error above, Drop aborts the multipart upload.
        self.ended = true;
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.ended = true;
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
        match self.upload_id.take() {
            Some(id) => abort(&self.store.client, &self.store.bucket, &self.key, &id).await,
            None => Ok(()),
        }
    }

    fn multipart_upload_id(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    /// Nothing is sent until a whole part is in (a smaller object goes as
    /// one PUT when finished).
    fn held_back(&self) -> u64 {
        if self.upload_id.is_some() {
            0
        } else {
            self.part_size as u64 - 1
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
        if self.ended {
            return;
        }
        if let (Some(id), Ok(handle)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        {
            let (client, bucket, key) = (
                self.store.client.clone(),
                self.store.bucket.clone(),
                self.key.clone(),
            );
            handle.spawn(async move {
                if let Err(e) = abort(&client, &bucket, &key, &id).await {
                    tracing::warn!(error = %e, key, "could not abort an abandoned multipart upload");
                }
            });
        }
    }
}

/// Writes one object of a length known up front as a single PUT whose body
/// is fed as the bytes are written: no part is held, a chunk at a time is
/// in flight. The PUT runs in its own task; an abort (or a drop) ends it
/// before its last byte, so storage keeps nothing.
struct S3PutWriter {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Result<(), StorageError>>>,
    len: u64,
    written: u64,
    timeout: Duration,
}

impl S3PutWriter {
    fn start(
        store: &S3Store,
        key: &str,
        content_type: &str,
        len: u64,
    ) -> Result<Self, StorageError> {
        // One chunk waits while the client sends the one before.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)));
        // The PUT lasts as long as the client takes to send the file, so the
        // whole-call bound is off; each wait is bounded below instead.
        let unbounded = aws_sdk_s3::config::Builder::default()
            .timeout_config(TimeoutConfig::builder().disable_operation_timeout().build());
        let request = store
            .client
            .put_object()
            .bucket(&store.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(i64::try_from(len).map_err(StorageError::backend)?)
            .body(SdkByteStream::from_body_1_x(StreamBody::new(frames)))
            .customize()
            .config_override(unbounded)
            .disable_payload_signing();
        let task = tokio::spawn(async move {
            request.send().await.map_err(map_err)?;
            Ok(())
        });
        Ok(Self {
            tx: Some(tx),
            task: Some(task),
            len,
            written: 0,
            timeout: store.operation_timeout,
        })
    }

    /// Why the PUT ended before it was given all its bytes.
    async fn failure(&mut self) -> StorageError {
        self.tx = None;
        match self.answer().await {
            Ok(()) => StorageError::backend(anyhow::anyhow!(
                "storage answered the PUT before its bytes were all sent"
            )),
            Err(e) => e,
        }
    }

    /// Waits (bounded) for storage's answer to the PUT; a PUT that does not
    /// answer in time is ended.
    async fn answer(&mut self) -> Result<(), StorageError> {
        let Some(mut task) = self.task.take() else {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the PUT already ended"
            )));
        };
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StorageError::backend(join)),
            Err(_) => {
                task.abort();
                Err(StorageError::Unavailable(anyhow::anyhow!(
                    "storage did not answer the PUT"
                )))
            }
        }
    }
}

#[async_trait]
impl ObjectWriter for S3PutWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        // Nothing to send. Once the last byte is sent the PUT may already
        // have ended and dropped its body, so an empty chunk sent after it
        // would find no one to take it.
        if chunk.is_empty() {
            return Ok(());
        }
        if self.written + chunk.len() as u64 > self.len {
            return Err(StorageError::backend(anyhow::anyhow!(
                "more bytes than the object's {} bytes",
                self.len
            )));
        }
        self.written += chunk.len() as u64;
        let Some(tx) = &self.tx else {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the PUT already ended"
            )));
        };
        match tokio::time::timeout(self.timeout, tx.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.failure().await),
            Err(_) => Err(StorageError::Unavailable(anyhow::anyhow!(
                "storage took no bytes of the PUT for {:?}",
                self.timeout
            ))),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        if self.written != self.len {
            return Err(StorageError::backend(anyhow::anyhow!(
                "{} of the object's {} bytes written",
                self.written,
                self.len
            )));
        }
        self.tx = None;
        self.answer().await.map(|()| self.written)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        Ok(())
    }

    fn multipart_upload_id(&self) -> Option<&str> {
        None
    }
}

impl Drop for S3PutWriter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::total_from_content_range;

    #[test]
    fn composite_etags_are_made_from_part_md5s() {
        let parts = vec![(1, "0123456789abcdef0123456789abcdef".to_owned())];
        let etag = super::composite_etag(&parts).unwrap();
        assert!(super::is_composite(&etag) && etag.ends_with("-1"));
        assert_eq!(super::composite_etag(&[(1, "not-an-md5".to_owned())]), None);
        assert!(!super::is_composite("d41d8cd98f00b204e9800998ecf8427e"));
    }

    #[test]
    fn content_range_total_is_parsed() {
        assert_eq!(total_from_content_range(Some("bytes 0-9/100")), Some(100));
        assert_eq!(total_from_content_range(None), None);
    }
}
