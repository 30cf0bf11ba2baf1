//! The writer of an object whose length is known up front: one PUT whose
//! body is fed as the bytes are written, each wait on storage bounded.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::{config::timeout::TimeoutConfig, primitives::ByteStream as SdkByteStream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::task::JoinHandle;

use super::S3Store;
use crate::storage::{ObjectWriter, StorageError};

/// Writes one object of a length known up front as a single PUT whose body
/// is fed as the bytes are written: no part is held, a chunk at a time is
/// in flight. The PUT runs in its own task; an abort (or a drop) ends it
/// before its last byte, so storage keeps nothing.
pub(super) struct S3PutWriter {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Result<(), StorageError>>>,
    len: u64,
    written: u64,
    timeout: Duration,
}

impl S3PutWriter {
    pub(super) fn start(
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
        let request = store.put_object(
            key,
            content_type,
            len,
            SdkByteStream::from_body_1_x(StreamBody::new(frames)),
            Some(unbounded),
        )?;
        let task = tokio::spawn(request);
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
