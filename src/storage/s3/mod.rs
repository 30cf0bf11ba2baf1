//! The S3 backend (AWS S3, MinIO, R2 and other S3-compatible servers):
//! how its clients are set up and how each store call maps onto one S3 call.
//!
//! Every client is built with path-style addressing when configured,
//! checksums only when required, and every PUT and part sent with its
//! length and payload signing off; the calls that write say so in one
//! place each (`S3Store::put_object`, `S3Store::upload_part`). The
//! multipart bookkeeping, presigning and the two writers live beside this
//! file.

mod multipart;
mod part_writer;
mod presign;
mod put_writer;

use std::{ops::Range, time::Duration};

use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    operation::upload_part::UploadPartOutput,
    primitives::ByteStream as SdkByteStream,
};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio_util::io::ReaderStream;

use super::{
    ObjectBody, ObjectStore, ObjectWriter, PartConditions, PresignedRequest, StorageError,
};
use crate::config::S3Config;
use part_writer::S3Writer;
use put_writer::S3PutWriter;

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

    /// The PUT of one whole object, as every PUT of this backend is sent:
    /// with the `content_length` its body must match (a streamed body has no
    /// other) and payload signing off (a body read as it arrives cannot be
    /// hashed before it is sent). `config` overrides the client's settings
    /// for this call. The request owns what it needs, so it may run in a
    /// task of its own.
    fn put_object(
        &self,
        full_key: &str,
        content_type: &str,
        len: u64,
        body: SdkByteStream,
        config: Option<aws_sdk_s3::config::Builder>,
    ) -> Result<impl Future<Output = Result<(), StorageError>> + Send + 'static, StorageError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full_key)
            .content_type(content_type)
            .content_length(i64::try_from(len).map_err(StorageError::backend)?)
            .body(body);
        Ok(async move {
            let mut request = request.customize().disable_payload_signing();
            if let Some(config) = config {
                request = request.config_override(config);
            }
            request.send().await.map_err(map_err)?;
            Ok(())
        })
    }

    /// One part of a multipart upload, sent as [`Self::put_object`] sends a
    /// whole object (its length given, payload signing off).
    fn upload_part(
        &self,
        full_key: &str,
        upload_id: &str,
        number: i32,
        len: u64,
        body: SdkByteStream,
    ) -> Result<
        impl Future<Output = Result<UploadPartOutput, StorageError>> + Send + 'static,
        StorageError,
    > {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(len).map_err(StorageError::backend)?)
            .body(body);
        Ok(async move {
            request
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(map_err)
        })
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// The answer to a call that removes something: "not found" means it is
/// already gone, which is what the call was for.
fn already_gone<T, E>(result: Result<T, SdkError<E, HttpResponse>>) -> Result<(), StorageError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result.map_err(map_err) {
        Ok(_) | Err(StorageError::NotFound) => Ok(()),
        Err(other) => Err(other),
    }
}

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

/// Parses the total size out of `Content-Range: bytes 0-9/100`.
fn total_from_content_range(range: Option<&str>) -> Option<u64> {
    range?.rsplit('/').next()?.parse().ok()
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
        let len = body.len() as u64;
        self.put_object(
            &self.full_key(key),
            content_type,
            len,
            SdkByteStream::from(body),
            None,
        )?
        .await
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

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        already_gone(result)
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
        self.abort_upload(&self.full_key(key), upload_id).await
    }

    async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
        sha256_parts: bool,
    ) -> Result<String, StorageError> {
        self.create_upload(&self.full_key(key), content_type, sha256_parts)
            .await
    }

    async fn presign_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        conditions: &PartConditions,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        self.sign_upload_part(key, upload_id, part_number, conditions, expires_in)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StorageError> {
        self.complete_as_given(key, upload_id, parts).await
    }

    async fn start_parts(&self, key: &str, content_type: &str) -> Result<String, StorageError> {
        self.create_multipart(key, content_type, false).await
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
        let body = SdkByteStream::from_body_1_x(StreamBody::new(frames));
        self.upload_part(&self.full_key(key), upload_id, number, len, body)?
            .await?;
        Ok(())
    }

    async fn complete_parts(
        &self,
        key: &str,
        upload_id: &str,
        parts: i32,
        size: u64,
    ) -> Result<(), StorageError> {
        self.complete_as_stored(key, upload_id, parts, size).await
    }

    async fn presign_get(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        self.sign_get(key, filename, content_type, expires_in).await
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

#[cfg(test)]
mod tests {
    use super::total_from_content_range;

    #[test]
    fn content_range_total_is_parsed() {
        assert_eq!(total_from_content_range(Some("bytes 0-9/100")), Some(100));
        assert_eq!(total_from_content_range(None), None);
    }
}
