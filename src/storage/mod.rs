//! Object storage behind one trait, with an S3 backend and a local-folder one.
//!
//! The rest of the server speaks only [`ObjectStore`]: keys are internal
//! (`u/<account id>/<file id>`), never client input, and bytes move as
//! streams or as single parts, never as whole files.

pub mod chunks;
mod fs;
mod s3;

use std::{ops::Range, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;

pub use fs::{FsStore, FsWriter};
pub use s3::S3Store;

use crate::config::{Config, StorageConfig};

/// A failure of the object store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under that key.
    #[error("object not found")]
    NotFound,
    /// The range asked for lies outside the object.
    #[error("range not satisfiable")]
    InvalidRange,
    /// The backend cannot do this.
    #[error("not supported by this storage backend: {0}")]
    Unsupported(&'static str),
    /// Storage did not answer in time, or could not be reached at all.
    #[error("object store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: network, permissions, the server's own errors.
    #[error("object store error: {0}")]
    Backend(#[source] anyhow::Error),
}

impl StorageError {
    pub(crate) fn backend(e: impl Into<anyhow::Error>) -> Self {
        Self::Backend(e.into())
    }
}

/// A connection that broke (a read of an object cut off mid-body, storage
/// killed) is storage being unavailable, a 503 the client may retry.
impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::NotFound => Self::NotFound,
            ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut => Self::Unavailable(e.into()),
            _ => Self::Backend(e.into()),
        }
    }
}

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The bytes of one part as they arrive (`Sync`, as the S3 client's bodies
/// must be). An error, or an end before the part's length, fails the part.
pub type PartStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

/// An object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Its key (without the backend's prefix).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Every object of the store, a page at a time, in ascending byte order
/// of the keys (the order of S3's ListObjectsV2 and of Postgres'
/// `COLLATE "C"`), so that a listing can be merged with sorted rows.
pub type Listing<'a> =
    Pin<Box<dyn Stream<Item = Result<Vec<ListedObject>, StorageError>> + Send + 'a>>;

/// An object (or a range of it) being read.
pub struct ObjectBody {
    /// Bytes this body will yield.
    pub len: u64,
    /// Size of the whole object.
    pub total_len: u64,
    /// The bytes.
    pub stream: ByteStream,
}

/// A request a client can make directly, without credentials, until it expires.
#[derive(Debug, Clone)]
pub struct PresignedRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Full URL.
    pub url: String,
    /// Headers the client must send exactly as given (they are signed).
    pub headers: HeaderMap,
}

/// What a presigned PUT binds: the client can send nothing else.
#[derive(Debug, Clone)]
pub struct PutConditions {
    /// Exact body length.
    pub content_length: u64,
    /// Exact `Content-Type`.
    pub content_type: String,
    /// SHA-256 of the body, when the client declared it.
    pub sha256: Option<[u8; 32]>,
}

/// What the URL of one part of a multipart upload binds besides its
/// length. A whole object sent as the upload's one part binds what the
/// URL of a single PUT would: its `Content-Type` and, when the client
/// declared it, its SHA-256 (which storage checks, where it checks part
/// checksums).
#[derive(Debug, Clone, Default)]
pub struct PartConditions {
    /// Exact body length.
    pub len: u64,
    /// The `Content-Type` the client must send.
    pub content_type: Option<String>,
    /// SHA-256 of the part, when the client declared it.
    pub sha256: Option<[u8; 32]>,
}

/// Writes one object from a sequence of chunks, holding at most one storage
/// part in memory. Either [`ObjectWriter::finish`] or [`ObjectWriter::abort`]
/// must end it; a writer dropped without either cleans up in the background.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes (any size, none included: the multipart reader hands
    /// out an empty last chunk when a read ends exactly where the file's
    /// bytes do; the writer cuts them into parts).
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// Makes the object visible under its key; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64, StorageError>;
    /// Discards everything written so far.
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
    /// The backend's id of the multipart upload in progress, once there is
    /// one, so that it can be recorded and reaped if this process dies.
    fn multipart_upload_id(&self) -> Option<&str>;
    /// The most bytes this writer holds in memory at once, beside the chunk
    /// in hand (none, unless it says so): what an upload takes from the
    /// process's budget of upload buffers (`quota::buffers`) before its
    /// first byte.
    fn holds_at_most(&self) -> u64 {
        0
    }
}

/// Object storage as the server uses it.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Which backend this is (`fs` or `s3`), for logs and `/readyz`.
    fn kind(&self) -> &'static str;
    /// The local-folder backend, whose presigned URLs intake serves itself.
    fn as_fs(&self) -> Option<&FsStore> {
        None
    }
    /// Checks that the store is reachable and usable.
    async fn check(&self) -> Result<(), StorageError>;
    /// Stores a small object in one request.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StorageError>;
    /// Reads an object, or the given byte range of it.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectBody, StorageError>;
    /// The size of an object, `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Starts writing an object in parts of `part_size` bytes.
    async fn writer(
        &self,
        key: &str,
        content_type: &str,
        part_size: usize,
    ) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Starts writing an object of exactly `len` bytes that are sent to
    /// storage as they are written, holding no part: one streamed PUT on S3.
    /// Writing past `len`, or finishing short of it, fails and stores
    /// nothing. A backend without such a request writes as
    /// [`ObjectStore::writer`] does (the caller still checks the length).
    async fn writer_of_len(
        &self,
        key: &str,
        content_type: &str,
        len: u64,
        part_size: usize,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let _ = len;
        self.writer(key, content_type, part_size).await
    }
    /// Aborts a multipart upload (left behind by a writer that never ended,
    /// or given up by a client).
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError>;
    /// Starts a multipart upload whose parts a client sends directly; with
    /// `sha256_parts`, every part carries its SHA-256 (storage checks it
    /// and completion passes it on, as S3 requires of such uploads).
    /// Once the upload is completed or aborted, storage refuses its parts.
    async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
        sha256_parts: bool,
    ) -> Result<String, StorageError>;
    /// A URL that uploads part `part_number` of a multipart upload, held to
    /// `conditions`; it dies with the upload.
    async fn presign_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        conditions: &PartConditions,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError>;
    /// Completes a multipart upload from the client's list of parts.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StorageError>;
    /// Starts an object that intake assembles itself from parts sent over
    /// several requests (a resumable upload); returns the id of that
    /// assembly (a multipart upload on S3).
    async fn start_parts(&self, key: &str, content_type: &str) -> Result<String, StorageError>;
    /// Stores part `number` (from 1) of such an object: the `len` bytes of
    /// `body`, sent as they come, which sit at byte `start` of the object.
    /// A body that fails or ends short stores nothing. Storing a part again
    /// replaces it (and, on the local folder, whatever followed it).
    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        start: u64,
        len: u64,
        body: PartStream,
    ) -> Result<(), StorageError>;
    /// Makes the object of the first `parts` parts, `size` bytes in all,
    /// visible under its key, with the parts storage holds (a resumable
    /// upload, or a presigned upload sent as one part). Parts stored past
    /// `parts` (by a request whose bytes were not kept) are left out.
    async fn complete_parts(
        &self,
        key: &str,
        upload_id: &str,
        parts: i32,
        size: u64,
    ) -> Result<(), StorageError>;
    /// A URL that downloads the object as an attachment named `filename`,
    /// answered as `content_type` whatever type storage holds for it.
    async fn presign_get(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError>;
    /// Every complete object (unfinished multipart uploads and partial
    /// writes are not objects), in pages of at most `page_size` keys, in
    /// ascending byte order; nothing but the current page is held.
    fn list(&self, page_size: usize) -> Listing<'_> {
        let _ = page_size;
        Box::pin(futures_util::stream::once(async {
            Err(StorageError::Unsupported("listing objects"))
        }))
    }
}

/// Builds the store the configuration names.
pub async fn from_config(config: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match &config.storage {
        StorageConfig::Fs { root } => Arc::new(
            FsStore::new(
                root.clone(),
                &config.public_base_url,
                config.jwt_secret.expose(),
            )
            .await?,
        ),
        StorageConfig::S3(s3) => Arc::new(S3Store::new(s3).await),
    })
}

/// `Content-Disposition: attachment` with the filename in both the plain
/// (ASCII, quotes escaped) and the RFC 8187 (UTF-8) forms.
pub fn attachment_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect();
    let mut encoded = String::new();
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_is_always_an_attachment_with_a_safe_name() {
        assert_eq!(
            attachment_disposition("a \"b\".png"),
            "attachment; filename=\"a _b_.png\"; filename*=UTF-8''a%20%22b%22.png"
        );
        let d = attachment_disposition("été\r\n.txt");
        assert!(d.starts_with("attachment; filename=\"_t___.txt\""), "{d}");
        assert!(!d.contains('\r') && !d.contains('\n'));
    }
}
