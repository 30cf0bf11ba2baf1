//! The writer of an object whose length is not known up front: what it
//! holds back, when a part is sent, and that the bytes held (filling plus
//! not yet sent) stay within one part.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use aws_sdk_s3::{primitives::ByteStream as SdkByteStream, types::CompletedPart};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::{sync::Notify, task::JoinHandle};

use super::S3Store;
use crate::storage::{ObjectWriter, StorageError, chunks::Chunks};

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
pub(super) struct S3Writer {
    store: S3Store,
    key: String,
    content_type: String,
    part_size: usize,
    pending: Chunks,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart, StorageError>>>,
    buffered: Arc<Buffered>,
    written: u64,
    ended: bool,
}

impl S3Writer {
    pub(super) fn new(store: S3Store, key: String, content_type: &str, part_size: usize) -> Self {
        Self {
            store,
            key,
            content_type: content_type.to_owned(),
            part_size,
            pending: Chunks::default(),
            upload_id: None,
            parts: Vec::new(),
            in_flight: None,
            buffered: Arc::default(),
            written: 0,
            ended: false,
        }
    }

    async fn upload_id(&mut self) -> Result<String, StorageError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let id = self
            .store
            .create_upload(&self.key, &self.content_type, false)
            .await?;
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
        let request = self.store.upload_part(
            &self.key,
            &upload_id,
            part_number,
            len as u64,
            chunk_body(chunks, Some(self.buffered.clone())),
        )?;
        self.in_flight = Some(tokio::spawn(async move {
            let out = request.await?;
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
        self.pending.push_back(chunk);
        while self.pending.len() >= self.part_size {
            let part = self.pending.take(self.part_size);
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
                Some(task) if self.pending.len() + in_flight > budget => tokio::select! {
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
        let rest = self.pending.take(self.pending.len());
        let rest_len: usize = rest.iter().map(Bytes::len).sum();
        match self.upload_id.clone() {
            None => {
                self.store
                    .put_object(
                        &self.key,
                        &self.content_type,
                        rest_len as u64,
                        chunk_body(rest, None),
                        None,
                    )?
                    .await?;
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
            Some(id) => self.store.abort_upload(&self.key, &id).await,
            None => Ok(()),
        }
    }

    fn multipart_upload_id(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    /// One part: the one filling and the one being sent together (see
    /// [`ObjectWriter::write`]); a smaller object waits whole for its PUT.
    fn holds_at_most(&self) -> u64 {
        self.part_size as u64
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
            let (store, key) = (self.store.clone(), self.key.clone());
            handle.spawn(async move {
                if let Err(e) = store.abort_upload(&key, &id).await {
                    tracing::warn!(error = %e, key, "could not abort an abandoned multipart upload");
                }
            });
        }
    }
}
