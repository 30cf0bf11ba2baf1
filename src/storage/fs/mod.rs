//! The local-folder backend: objects are files below a root folder.
//!
//! Writes go to a temporary file in `<root>/.tmp` and are renamed into place
//! once complete and synced, so a reader never sees half an object. Objects
//! assembled over several requests (resumable uploads) grow by appending to
//! `<root>/.tus/<id>`, synced after every part, and are renamed into place
//! when complete. Presigned
//! URLs point back to intake itself and carry an HMAC-signed, expiring token.
//!
//! This file decides the folder's layout (which key is which path) and
//! what a signed URL carries; the listing's walk and the writer of one
//! object live beside it.

mod walk;
mod writer;

use std::{
    io::SeekFrom,
    ops::Range,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{
    ObjectBody, ObjectStore, ObjectWriter, PartConditions, PresignedRequest, PutConditions,
    StorageError,
};
pub use writer::FsWriter;

/// Objects as files below a root folder.
#[derive(Clone)]
pub struct FsStore {
    root: PathBuf,
    public_base_url: String,
    signing_key: Vec<u8>,
}

const TMP_DIR: &str = ".tmp";
const TUS_DIR: &str = ".tus";

impl FsStore {
    /// Opens (and creates) the root folder.
    pub async fn new(root: PathBuf, public_base_url: &str, secret: &str) -> anyhow::Result<Self> {
        tokio::fs::create_dir_all(root.join(TMP_DIR)).await?;
        tokio::fs::create_dir_all(root.join(TUS_DIR)).await?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"intake fs presign v1")?;
        mac.update(secret.as_bytes());
        Ok(Self {
            root,
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            signing_key: mac.finalize().into_bytes().to_vec(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key.split('/').all(|seg| {
                !seg.is_empty() && seg != "." && seg != ".." && seg != TMP_DIR && seg != TUS_DIR
            })
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !valid {
            return Err(StorageError::backend(anyhow::anyhow!(
                "invalid object key {key:?}"
            )));
        }
        Ok(self.root.join(key))
    }

    fn signature(&self, method: &str, key: &str, expires: u64, extra: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.signing_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(format!("{method}\n{key}\n{expires}\n{extra}").as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The URL of intake's own data route for the presigned upload whose
    /// object is `key` (`u/<account>/<id>`: the upload's id ends the key).
    fn url(&self, method: &str, key: &str, expires_in: Duration, extra: &str) -> String {
        let expires = unix_now().saturating_add(expires_in.as_secs());
        let sig = self.signature(method, key, expires, extra);
        let id = key.rsplit('/').next().unwrap_or_default();
        format!(
            "{}/upload/presigned/{id}/data?expires={expires}&signature={sig}",
            self.public_base_url
        )
    }

    /// Checks a presigned URL's token: right method, key, unexpired, and (for
    /// PUT) the same bound conditions. Compared in constant time.
    pub fn verify(
        &self,
        method: &str,
        key: &str,
        expires: u64,
        extra: &str,
        signature: &str,
    ) -> bool {
        if expires < unix_now() {
            return false;
        }
        let expected = self.signature(method, key, expires, extra);
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes()).into()
    }

    /// The string that binds a presigned PUT's conditions into its signature.
    pub fn put_binding(c: &PutConditions) -> String {
        format!(
            "{}\n{}\n{}",
            c.content_length,
            c.content_type,
            c.sha256.map(hex::encode).unwrap_or_default()
        )
    }

    /// A URL of intake's own data route that uploads exactly the described
    /// body to `key`, signed with an HMAC of the key, expiry and conditions.
    pub fn presign_put(
        &self,
        key: &str,
        conditions: &PutConditions,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        self.path(key)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(&conditions.content_type).map_err(StorageError::backend)?,
        );
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(conditions.content_length),
        );
        Ok(PresignedRequest {
            method: http::Method::PUT,
            url: self.url("PUT", key, expires_in, &Self::put_binding(conditions)),
            headers,
        })
    }

    /// The assembly file of a resumable upload, from its id (a UUID).
    fn assembly(&self, upload_id: &str) -> Result<PathBuf, StorageError> {
        check_upload_id(upload_id)?;
        Ok(self.root.join(TUS_DIR).join(upload_id))
    }

    /// The writer of one object, which the caller may make durable
    /// ([`FsWriter::sync`]) before it moves it into place.
    pub async fn local_writer(&self, key: &str) -> Result<FsWriter, StorageError> {
        let dest = self.path(key)?;
        let (tmp, file) = self.temp_file().await?;
        let upload_id = tmp
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        Ok(FsWriter::new(file, tmp, dest, upload_id))
    }

    async fn temp_file(&self) -> Result<(PathBuf, tokio::fs::File), StorageError> {
        let path = self
            .root
            .join(TMP_DIR)
            .join(uuid::Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&path).await?;
        Ok((path, file))
    }
}

fn check_upload_id(upload_id: &str) -> Result<(), StorageError> {
    if upload_id.is_empty()
        || !upload_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(StorageError::backend(anyhow::anyhow!(
            "invalid upload id {upload_id:?}"
        )));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn place(tmp: &Path, dest: &Path) -> Result<(), StorageError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::rename(tmp, dest).await?;
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn as_fs(&self) -> Option<&FsStore> {
        Some(self)
    }

    async fn check(&self) -> Result<(), StorageError> {
        // Writable, not just present: create and remove a probe file.
        let (path, _file) = self.temp_file().await?;
        tokio::fs::remove_file(path).await?;
        Ok(())
    }

    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let (tmp, mut file) = self.temp_file().await?;
        let result = async {
            file.write_all(&body).await?;
            file.sync_all().await?;
            place(&tmp, &dest).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectBody, StorageError> {
        let mut file = tokio::fs::File::open(self.path(key)?).await?;
        let total_len = file.metadata().await?.len();
        let (start, end) = match range {
            None => (0, total_len),
            Some(r) if r.start < r.end && r.start < total_len => (r.start, r.end.min(total_len)),
            Some(_) => return Err(StorageError::InvalidRange),
        };
        file.seek(SeekFrom::Start(start)).await?;
        let len = end - start;
        Ok(ObjectBody {
            len,
            total_len,
            stream: Box::pin(ReaderStream::new(file.take(len))),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn writer(
        &self,
        key: &str,
        _content_type: &str,
        _part_size: usize,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(self.local_writer(key).await?))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StorageError> {
        check_upload_id(upload_id)?;
        // A writer's temporary file, or a resumable upload's assembly file.
        for dir in [TMP_DIR, TUS_DIR] {
            match tokio::fs::remove_file(self.root.join(dir).join(upload_id)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    async fn start_parts(&self, key: &str, _content_type: &str) -> Result<String, StorageError> {
        self.path(key)?;
        let id = uuid::Uuid::new_v4().to_string();
        let file = tokio::fs::File::create(self.assembly(&id)?).await?;
        file.sync_all().await?;
        Ok(id)
    }

    async fn put_part(
        &self,
        _key: &str,
        upload_id: &str,
        _number: i32,
        start: u64,
        len: u64,
        mut body: super::PartStream,
    ) -> Result<(), StorageError> {
        use futures_util::StreamExt as _;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.assembly(upload_id)?)
            .await?;
        // Whatever followed `start` was written by a request whose bytes
        // were not kept: the part replaces it.
        file.set_len(start).await?;
        file.seek(SeekFrom::Start(start)).await?;
        let mut written: u64 = 0;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                written += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            if written != len {
                return Err(StorageError::backend(anyhow::anyhow!(
                    "a part of {len} bytes ended after {written}"
                )));
            }
            file.flush().await?;
            file.sync_data().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // A part is whole or absent.
            file.set_len(start).await?;
        }
        result
    }

    async fn complete_parts(
        &self,
        key: &str,
        upload_id: &str,
        _parts: i32,
        size: u64,
    ) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let assembly = self.assembly(upload_id)?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&assembly)
            .await?;
        let len = file.metadata().await?.len();
        if len < size {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the assembly holds {len} bytes, not {size}"
            )));
        }
        file.set_len(size).await?;
        file.sync_all().await?;
        drop(file);
        place(&assembly, &dest).await
    }

    async fn create_multipart(
        &self,
        _key: &str,
        _content_type: &str,
        _sha256_parts: bool,
    ) -> Result<String, StorageError> {
        Err(StorageError::Unsupported(
            "multipart uploads sent directly by clients",
        ))
    }

    async fn presign_upload_part(
        &self,
        _key: &str,
        _upload_id: &str,
        _part_number: i32,
        _conditions: &PartConditions,
        _expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        Err(StorageError::Unsupported(
            "multipart uploads sent directly by clients",
        ))
    }

    async fn complete_multipart(
        &self,
        _key: &str,
        _upload_id: &str,
        _parts: &[(i32, String)],
    ) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(
            "multipart uploads sent directly by clients",
        ))
    }

    async fn presign_get(
        &self,
        _key: &str,
        _filename: &str,
        _content_type: &str,
        _expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        // Downloads from the local folder are streamed by intake itself.
        Err(StorageError::Unsupported("presigned downloads"))
    }

    fn list(&self, page_size: usize) -> super::Listing<'_> {
        walk::listing(self.root.clone(), page_size)
    }
}
