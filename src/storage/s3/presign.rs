//! Presigned S3 requests: what each URL signs, and the headers a client
//! must send with it for the signature to hold.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{S3Store, map_err};
use crate::storage::{PartConditions, PresignedRequest, StorageError, attachment_disposition};

impl S3Store {
    /// A URL for one part of a presigned multipart upload: its length is
    /// signed, and so are the `Content-Type` and the SHA-256 when the
    /// conditions name them.
    pub(super) async fn sign_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        conditions: &PartConditions,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::backend)?;
        let mut req = self
            .presign_client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(i64::try_from(conditions.len).map_err(StorageError::backend)?);
        if let Some(sha) = conditions.sha256 {
            req = req.checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha));
        }
        // UploadPart has no Content-Type of its own (the object's is set when
        // the upload starts); the header is added before signing, so the
        // signature covers it as it covers a single PUT's.
        let content_type = conditions
            .content_type
            .as_deref()
            .map(header_value)
            .transpose()?;
        let mut req = req.customize();
        if let Some(value) = content_type.clone() {
            req = req.mutate_request(move |r| {
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, value.clone());
            });
        }
        let req = req.presigned(config).await.map_err(map_err)?;
        let mut out = presigned(req)?;
        // The signature covers these; the client must send them as given.
        if let Some(value) = content_type {
            out.headers.insert(http::header::CONTENT_TYPE, value);
        }
        out.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(conditions.len),
        );
        Ok(out)
    }

    /// A URL that downloads the object as an attachment named `filename`,
    /// answered as `content_type`: both are signed (`response-content-*`),
    /// so neither the link nor the type storage holds decides them.
    pub(super) async fn sign_get(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(StorageError::backend)?;
        let req = self
            .presign_client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .response_content_disposition(attachment_disposition(filename))
            .response_content_type(content_type)
            .presigned(config)
            .await
            .map_err(map_err)?;
        presigned(req)
    }
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

fn header_value(s: &str) -> Result<HeaderValue, StorageError> {
    HeaderValue::from_str(s).map_err(StorageError::backend)
}
