//! The part in flight: one storage part sent while its bytes arrive, so
//! receiving and sending overlap. This module alone decides how its bytes
//! reach storage, when storage that takes none of them ends the part, and
//! what landing or cancelling it leaves behind.
//!
//! When the body's `Content-Length` says a part will fill, the part is
//! started before its bytes are in: each chunk is handed to it as it
//! arrives, through a channel of [`INFLIGHT_CHUNKS`], while the writer
//! keeps the same bytes (in a [`super::spill::Spill`]) until storage has
//! the part. If the body breaks first, the part is cancelled and its bytes
//! become the tail as any others would.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{receive::Stop, sha::Sha256State};
use crate::{
    error::ApiError,
    storage::{ObjectStore, StorageError},
};

/// Chunks waiting for storage to take them, per part in flight: storage
/// that reads slower than the client sends slows the client down, instead
/// of the part piling up in memory.
const INFLIGHT_CHUNKS: usize = 2;

/// Where a part in flight goes: its upload's object and its place in it.
pub(super) struct Target {
    /// The object's key.
    pub key: String,
    /// The object's multipart upload.
    pub upload_id: String,
    /// The part's number, from 1.
    pub number: i32,
    /// The upload's offset of the part's first byte.
    pub start: u64,
}

/// A part sent to storage as its bytes arrive.
pub(super) struct Inflight {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    len: usize,
    sent: usize,
    task: JoinHandle<Result<(), StorageError>>,
    /// The upload's hash with the bytes sent so far: the upload's once the
    /// part lands.
    sha: Sha256State,
    /// Storage took no bytes for the idle timeout: the part was ended.
    stalled: bool,
}

/// The receiving end of an [`Inflight`] part, as the body storage reads.
struct PartBody(mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_util::Stream for PartBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

impl Inflight {
    /// Starts sending a part of `len` bytes to `to`; `sha` is the upload's
    /// hash up to the part's first byte.
    pub(super) fn start(
        store: Arc<dyn ObjectStore>,
        to: Target,
        len: usize,
        sha: Sha256State,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INFLIGHT_CHUNKS);
        let task = tokio::spawn(async move {
            store
                .put_part(
                    &to.key,
                    &to.upload_id,
                    to.number,
                    to.start,
                    len as u64,
                    Box::pin(PartBody(rx)),
                )
                .await
        });
        Self {
            tx,
            len,
            sent: 0,
            task,
            sha,
            stalled: false,
        }
    }

    /// The part's length.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bytes handed to storage so far.
    pub(super) fn sent(&self) -> usize {
        self.sent
    }

    /// Hands the part the bytes of `chunk` it still needs, waiting (up to
    /// `idle`) for storage to take them.
    pub(super) async fn feed(&mut self, chunk: &Bytes, idle: Duration) {
        let take = (self.len - self.sent).min(chunk.len());
        if take == 0 || self.stalled {
            return;
        }
        let piece = chunk.slice(..take);
        self.sha.update(&piece);
        self.sent += take;
        // A closed channel means the part failed; landing it says why.
        if tokio::time::timeout(idle, self.tx.send(Ok(piece)))
            .await
            .is_err()
        {
            self.stalled = true;
            self.task.abort();
        }
    }

    /// Waits for storage to have the whole part (every byte fed): the
    /// upload's hash with the part's bytes.
    pub(super) async fn land(self) -> Result<Sha256State, Stop> {
        let Self {
            tx,
            task,
            sha,
            stalled,
            ..
        } = self;
        drop(tx);
        let ended = task.await;
        if stalled {
            return Err(Stop::Keep(ApiError::ServiceUnavailable(
                "storage took no bytes of a part for too long; resume the upload".into(),
            )));
        }
        ended.map_err(|e| Stop::Keep(ApiError::Internal(e.into())))??;
        Ok(sha)
    }

    /// Fails the part (the body ended before filling it), and waits for
    /// storage to have let go of it.
    pub(super) async fn cancel(self) {
        // Storage may be taking no bytes: the part is ended either way.
        let refused = std::io::Error::other("the body ended before the part");
        if self.tx.try_send(Err(refused)).is_err() {
            self.task.abort();
        }
        drop(self.tx);
        let _ = self.task.await;
    }
}
