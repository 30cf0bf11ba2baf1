//! The local folder's writer: bytes go to a temporary file that only a
//! finished, synced write renames into place.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::place;
use crate::storage::{ObjectWriter, StorageError};

/// Appends to a temporary file; `finish` syncs and renames it into place.
pub struct FsWriter {
    file: Option<BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    dest: PathBuf,
    upload_id: String,
    written: u64,
}

impl FsWriter {
    /// A writer that fills `tmp` (opened as `file`) and moves it to `dest`
    /// when finished; `upload_id` names the temporary file.
    pub(super) fn new(
        file: tokio::fs::File,
        tmp: PathBuf,
        dest: PathBuf,
        upload_id: String,
    ) -> Self {
        Self {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dest,
            upload_id,
            written: 0,
        }
    }

    /// Makes the bytes written so far durable, leaving [`ObjectWriter::finish`]
    /// only the rename: a caller that must place the object under a lock
    /// (a database row) takes it for that alone.
    pub async fn sync(&mut self) -> Result<(), StorageError> {
        let file = self.file()?;
        file.flush().await?;
        file.get_ref().sync_all().await?;
        Ok(())
    }

    fn file(&mut self) -> Result<&mut BufWriter<tokio::fs::File>, StorageError> {
        self.file
            .as_mut()
            .ok_or_else(|| StorageError::backend(anyhow::anyhow!("writer already ended")))
    }
}

#[async_trait]
impl ObjectWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.file()?.write_all(&chunk).await?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StorageError::backend(anyhow::anyhow!("writer already ended")))?;
        let result = async {
            file.flush().await?;
            file.get_ref().sync_all().await?;
            drop(file);
            place(&self.tmp, &self.dest).await
        }
        .await;
        match result {
            Ok(()) => {
                // Renamed: nothing left for Drop to remove.
                self.tmp = PathBuf::new();
                Ok(self.written)
            }
            Err(e) => Err(e),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file.take();
        let tmp = std::mem::take(&mut self.tmp);
        match tokio::fs::remove_file(&tmp).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn multipart_upload_id(&self) -> Option<&str> {
        Some(&self.upload_id)
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            // Never finished nor aborted: remove the partial file.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
