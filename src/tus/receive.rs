//! The bytes of one PATCH (or of a creation-with-upload body) on their way
//! into a resumable upload, held to every limit as they pass.
//!
//! The upload's bytes are whole storage parts plus a tail: the bytes past
//! the last whole part, kept in a small object of their own so that any
//! instance can resume. A request reads the tail back, appends its body,
//! stores each part as it fills (recording it at once, so a request that
//! breaks keeps every byte it stored), and when its body ends or breaks
//! writes what is left as the new tail. At most one part is in memory.
//!
//! When the body's `Content-Length` says a part will fill, that part is
//! sent to storage as its bytes arrive (receiving and sending overlap)
//! while the same bytes are kept, outside memory, until storage has the
//! part: if the body breaks first, the part fails and its bytes become the
//! tail as any others would. They are kept in an unnamed temporary file
//! (see [`Spill`]), so an upload holds no more than a few chunks in memory
//! while its part is in flight, and nothing of it outlives the request.
//!
//! A body with an `Upload-Checksum` is kept only as a whole: its parts are
//! recorded when the checksum matches, so a mismatch (or a break) leaves the
//! offset where it was; parts stored for it are overwritten by the next
//! request, and never make it into the file.
//!
//! Recording a part and the tail is "store, then record": a crash between
//! the two leaves bytes in storage that the recorded state does not count,
//! which the next request overwrites (the tail is read only as far as its
//! recorded length).

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use uuid::Uuid;

use super::{
    headers::{BodyHasher, Checksum},
    sha::Sha256State,
    spill::Spill,
    uploads::{self, Progress, State, Upload},
};
use crate::{
    error::ApiError,
    files::{self, FileView, NewFile},
    quota::{
        caps::{Cap, ContentCheck, Route},
        slots::{self, Lease},
    },
    sniff::{self, Kind, SNIFF_BYTES},
    state::AppState,
    tiers::Limits,
};

/// What a request did to the upload.
#[derive(Debug)]
pub enum Outcome {
    /// Bytes kept; the upload goes on.
    Stored {
        /// The new offset.
        offset: u64,
        /// When it expires unless more bytes arrive.
        expires_at: DateTime<Utc>,
    },
    /// The last byte arrived: the file is recorded.
    Completed {
        /// `Upload-Length`.
        offset: u64,
        /// The file.
        file: Box<FileView>,
    },
}

/// Why a request stopped early.
enum Stop {
    /// The upload stays open, as last recorded.
    Keep(ApiError),
    /// The upload is refused and ended: everything it held is given back.
    Refuse(ApiError),
}

impl<E: Into<ApiError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Self::Keep(e.into())
    }
}

/// Everything one write request needs.
pub struct Writer {
    /// The server.
    pub state: AppState,
    /// The upload, as locked for this request.
    pub upload: Upload,
    /// This request's hold on the upload.
    pub token: Uuid,
    /// The owner's limits.
    pub limits: Limits,
    /// The body's announced length, if any.
    pub content_length: Option<u64>,
    /// The body's checksum, if any.
    pub checksum: Option<Checksum>,
    /// Set once this request let go of the upload itself (with its last
    /// commit, or by completing it), so its hold needs no separate release.
    pub released: AtomicBool,
}

impl Writer {
    fn lease(&self) -> Lease {
        Lease::existing(
            self.upload.lease_id,
            self.upload.account_id,
            self.state.config.tus_expiry,
        )
    }

    /// Receives the body, then lets go of the upload; a refused upload is
    /// ended with everything it held.
    pub async fn run(self, body: Body) -> Result<Outcome, ApiError> {
        let hold = Hold::start(&self);
        let result = self.receive(body).await;
        hold.release(self.released.load(Ordering::Relaxed)).await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(Stop::Keep(e)) => Err(e),
            Err(Stop::Refuse(e)) => {
                let (db, store) = (&self.state.db, self.state.store.as_ref());
                let ended = async {
                    uploads::leave_open(db, self.upload.id, State::Failed).await?;
                    slots::end(db, store, self.upload.lease_id).await
                }
                .await;
                if let Err(err) = ended {
                    tracing::error!(error = %err, upload = %self.upload.id, "could not end a refused resumable upload; it expires");
                }
                metrics::counter!("intake_upload_rejections_total", "code" => e.code())
                    .increment(1);
                Err(e)
            }
        }
    }

    async fn receive(&self, body: Body) -> Result<Outcome, Stop> {
        let mut a = Assembly::load(self).await?;
        let remaining = self.upload.length() - self.upload.offset();
        if self.content_length.is_some_and(|n| n > remaining) {
            return Err(past_length());
        }
        let mut hasher: Option<BodyHasher> = self.checksum.as_ref().map(Checksum::hasher);
        let (idle, shutdown) = (
            self.state.config.upload_idle_timeout,
            self.state.shutdown.clone(),
        );
        let mut stream = body.into_data_stream();
        let mut received: u64 = 0;
        let broken = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Some(ApiError::ServiceUnavailable(
                    "the server is shutting down; resume the upload".into())),
                next = tokio::time::timeout(idle, stream.next()) => next,
            };
            let chunk = match next {
                Err(_) => {
                    break Some(ApiError::InvalidRequest {
                        status: http::StatusCode::REQUEST_TIMEOUT,
                        detail: "the upload sent nothing for too long".into(),
                    });
                }
                Ok(None) => break None,
                Ok(Some(Err(_))) => {
                    break Some(ApiError::bad_request(
                        "the body could not be read to its end",
                    ));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            received += chunk.len() as u64;
            if received > remaining {
                a.cancel_inflight().await?;
                return Err(past_length());
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            a.take_in(chunk).await;
            let body_left = self.content_length.map(|n| n.saturating_sub(received));
            a.advance(body_left).await?;
        };
        // A part still being sent did not fill: it fails, its bytes stay.
        a.cancel_inflight().await?;
        if let (Some(h), Some(want)) = (hasher, self.checksum.as_ref()) {
            if let Some(e) = broken {
                // A part of a checksummed body cannot be verified: none is kept.
                return Err(Stop::Keep(e));
            }
            if !h.matches(&want.digest) {
                return Err(Stop::Keep(ApiError::ChecksumMismatch));
            }
        }
        if a.offset() == self.upload.length() {
            let file = a.complete().await?;
            return Ok(Outcome::Completed {
                offset: self.upload.length(),
                file: Box::new(file),
            });
        }
        if received > 0 || a.flushed {
            a.save_tail().await?;
        }
        let tail_len = a.buf.len as u64;
        // A body that ended on a part boundary was recorded, and the upload
        // let go, with that part.
        let expires_at = match a.committed {
            Some(at) if tail_len == 0 && self.released.load(Ordering::Relaxed) => at,
            _ => a.commit(tail_len, true).await?,
        };
        match broken {
            Some(e) => Err(Stop::Keep(e)),
            None => Ok(Outcome::Stored {
                offset: a.offset(),
                expires_at,
            }),
        }
    }
}

fn past_length() -> Stop {
    Stop::Keep(ApiError::bad_request(
        "the body goes past Upload-Length; nothing past the recorded offset was kept",
    ))
}

/// The bytes not stored yet: the tail read back and the body since, up to
/// one part. The first of them may be in a [`Spill`] while their part is in
/// flight; the rest are in memory, in order after them.
#[derive(Default)]
struct Buffer {
    spill: Option<Spill>,
    chunks: VecDeque<Bytes>,
    /// All of them, spilled or not.
    len: usize,
}

impl Buffer {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    fn spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, Spill::len)
    }

    /// Moves the first `n` bytes held in memory (those right after the
    /// spilled ones) into the spill. Bytes that cannot be written stay in
    /// memory, in their place: the buffer is the same either way.
    fn spill_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.spill.is_none() {
            match Spill::open() {
                Ok(spill) => self.spill = Some(spill),
                Err(e) => {
                    tracing::warn!(error = %e, "could not open a temporary file; the part stays in memory");
                    return;
                }
            }
        }
        let mut moved = self.take(n);
        self.len += n;
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let mut written = 0;
        for chunk in &moved {
            if let Err(e) = spill.append(chunk) {
                tracing::warn!(error = %e, "could not write to a temporary file; the part stays in memory");
                break;
            }
            written += 1;
        }
        for chunk in moved.drain(written..).rev() {
            self.chunks.push_front(chunk);
        }
    }

    /// Drops the first `n` bytes (a part storage has).
    fn drop_front(&mut self, n: usize) {
        let spilled = self.spill.take().map_or(0, |s| s.len());
        self.len -= spilled;
        self.take(n - spilled);
    }

    /// Reads the spilled bytes back into memory (their part failed).
    fn unspill(&mut self) -> std::io::Result<()> {
        if let Some(spill) = self.spill.take() {
            self.chunks.push_front(Bytes::from(spill.read_all()?));
        }
        Ok(())
    }

    /// The first `n` bytes, without taking them.
    fn head(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        for c in &self.chunks {
            let want = n - out.len();
            if want == 0 {
                break;
            }
            out.extend_from_slice(&c[..want.min(c.len())]);
        }
        out
    }

    fn byte_at(&self, mut i: usize) -> Option<u8> {
        for c in &self.chunks {
            if i < c.len() {
                return Some(c[i]);
            }
            i -= c.len();
        }
        None
    }

    /// Takes exactly `n` bytes off the front of those in memory (a chunk
    /// straddling the cut is split, not copied).
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(first) = self.chunks.front_mut() else {
                break;
            };
            if first.len() <= need {
                need -= first.len();
                if let Some(c) = self.chunks.pop_front() {
                    out.push(c);
                }
            } else {
                out.push(first.split_to(need));
                need = 0;
            }
        }
        self.len -= n - need;
        out
    }
}

/// The upload's state while one request writes it.
struct Assembly<'a> {
    w: &'a Writer,
    lease: Lease,
    key: String,
    buf: Buffer,
    sha: Sha256State,
    kind: Option<Kind>,
    parts: i32,
    stored: u64,
    multipart: Option<String>,
    /// Whether a part was stored by this request (the tail changes then).
    flushed: bool,
    /// The next part, being sent while its bytes arrive.
    inflight: Option<Inflight>,
    /// When the upload expires as this request's last commit recorded it,
    /// if nothing was stored since.
    committed: Option<DateTime<Utc>>,
}

/// A part sent to storage as its bytes arrive.
struct Inflight {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    len: usize,
    sent: usize,
    task: tokio::task::JoinHandle<Result<(), crate::storage::StorageError>>,
    /// The upload's hash with the bytes sent so far: the upload's once the
    /// part lands.
    sha: Sha256State,
    /// Storage took no bytes for the idle timeout: the part was ended.
    stalled: bool,
}

/// Chunks waiting for storage to take them, per part in flight: storage
/// that reads slower than the client sends slows the client down, instead
/// of the part piling up in memory.
const INFLIGHT_CHUNKS: usize = 2;

/// The receiving end of an [`Inflight`] part, as the body storage reads.
struct PartBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_util::Stream for PartBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

impl<'a> Assembly<'a> {
    async fn load(w: &'a Writer) -> Result<Self, Stop> {
        let u = &w.upload;
        let sha = u
            .sha()
            .ok_or_else(|| anyhow::anyhow!("upload {} has a corrupt hash state", u.id))?;
        let mut buf = Buffer::default();
        let tail_len = u.tail_len.max(0) as u64;
        if tail_len > 0 {
            let tail = w
                .state
                .store
                .get(&uploads::tail_key(u.id), Some(0..tail_len))
                .await?;
            let mut stream = tail.stream;
            while let Some(chunk) = stream.next().await {
                buf.push(chunk.map_err(crate::storage::StorageError::from)?);
            }
            if buf.len as u64 != tail_len {
                return Err(anyhow::anyhow!(
                    "the tail of upload {} holds {} bytes, not {tail_len}",
                    u.id,
                    buf.len
                )
                .into());
            }
        }
        Ok(Self {
            w,
            lease: w.lease(),
            key: u.key(),
            buf,
            sha,
            kind: u.kind(),
            parts: u.parts,
            stored: u.stored.max(0) as u64,
            multipart: u.multipart_upload_id.clone(),
            flushed: false,
            inflight: None,
            committed: None,
        })
    }

    fn offset(&self) -> u64 {
        self.stored + self.buf.len as u64
    }

    fn part_size(&self) -> usize {
        usize::try_from(self.w.upload.part_size).unwrap_or(usize::MAX)
    }

    /// Sniffs once the first bytes are in, starts sending a part that the
    /// rest of the body (`body_left` bytes, when known) will fill, and
    /// stores every whole part.
    async fn advance(&mut self, body_left: Option<u64>) -> Result<(), Stop> {
        if self.kind.is_none() {
            let length = self.w.upload.length();
            let need = usize::try_from(length.min(SNIFF_BYTES as u64)).unwrap_or(SNIFF_BYTES);
            // Parts wait for the type, so the buffer starts at byte 0.
            if self.buf.len < need {
                return Ok(());
            }
            self.decide(need, length <= SNIFF_BYTES as u64)?;
        }
        if let Some(left) = body_left {
            self.start_inflight(left).await?;
        }
        loop {
            if let Some(inflight) = &self.inflight {
                if self.buf.len < inflight.len {
                    break;
                }
                self.land().await?;
            } else if let Some(cut) = self.next_cut() {
                let part = self.buf.take(cut);
                self.store_part(part).await?;
            } else {
                break;
            }
            // The last part is recorded with the file, right after. A body
            // that ends here lets go of the upload with this commit.
            if self.w.checksum.is_none() && self.offset() < self.w.upload.length() {
                let last = body_left == Some(0) && self.buf.len == 0;
                self.commit(0, last).await?;
            }
        }
        Ok(())
    }

    /// Starts sending the next part now if the body will fill it (not a
    /// text document's, whose parts end on a character boundary only known
    /// once its bytes are in, nor the last part of a file stored with one
    /// PUT: the last part of one with parts before it may be shorter).
    async fn start_inflight(&mut self, body_left: u64) -> Result<(), Stop> {
        let length = self.w.upload.length();
        let part = usize::try_from((length - self.stored).min(self.part_size() as u64))
            .unwrap_or(usize::MAX);
        let binary = self.kind.as_ref().is_some_and(|k| !k.text);
        let fills = self.buf.len as u64 + body_left >= part as u64;
        let not_last = self.stored + (part as u64) < length;
        if self.inflight.is_some() || !binary || !fills || !(not_last || self.parts > 0) {
            return Ok(());
        }
        let upload_id = match &self.multipart {
            Some(id) => id.clone(),
            None => self.start_parts().await?,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(INFLIGHT_CHUNKS);
        let (store, key) = (self.w.state.store.clone(), self.key.clone());
        let (number, start) = (self.parts + 1, self.stored);
        let task = tokio::spawn(async move {
            store
                .put_part(
                    &key,
                    &upload_id,
                    number,
                    start,
                    part as u64,
                    Box::pin(PartBody(rx)),
                )
                .await
        });
        let mut inflight = Inflight {
            tx,
            len: part,
            sent: 0,
            task,
            sha: self.sha.clone(),
            stalled: false,
        };
        for chunk in &self.buf.chunks {
            feed_part(
                &mut inflight,
                chunk,
                self.w.state.config.upload_idle_timeout,
            )
            .await;
        }
        self.inflight = Some(inflight);
        self.spill_inflight();
        Ok(())
    }

    /// Takes in a chunk of the body, handing it to the part being sent, if
    /// any.
    async fn take_in(&mut self, chunk: Bytes) {
        if let Some(inflight) = self.inflight.as_mut() {
            feed_part(inflight, &chunk, self.w.state.config.upload_idle_timeout).await;
        }
        self.buf.push(chunk);
        self.spill_inflight();
    }

    /// Moves the bytes handed to the part in flight out of memory.
    fn spill_inflight(&mut self) {
        if let Some(inflight) = &self.inflight {
            let in_memory = inflight.sent - self.buf.spilled();
            self.buf.spill_front(in_memory);
        }
    }

    /// Waits for storage to have the part sent as it arrived.
    async fn land(&mut self) -> Result<(), Stop> {
        let Some(Inflight {
            tx,
            len,
            task,
            sha,
            stalled,
            ..
        }) = self.inflight.take()
        else {
            return Ok(());
        };
        drop(tx);
        let ended = task.await;
        if stalled {
            return Err(Stop::Keep(ApiError::ServiceUnavailable(
                "storage took no bytes of a part for too long; resume the upload".into(),
            )));
        }
        ended.map_err(|e| Stop::Keep(ApiError::Internal(e.into())))??;
        self.buf.drop_front(len);
        self.sha = sha;
        self.parts += 1;
        self.stored += len as u64;
        self.flushed = true;
        self.committed = None;
        Ok(())
    }

    /// Fails the part being sent (the body ended before filling it): its
    /// bytes stay in the buffer, back in memory.
    async fn cancel_inflight(&mut self) -> Result<(), Stop> {
        if let Some(inflight) = self.inflight.take() {
            // Storage may be taking no bytes: the part is ended either way.
            let refused = std::io::Error::other("the body ended before the part");
            if inflight.tx.try_send(Err(refused)).is_err() {
                inflight.task.abort();
            }
            drop(inflight.tx);
            let _ = inflight.task.await;
        }
        self.buf
            .unspill()
            .map_err(|e| Stop::Keep(ApiError::Internal(e.into())))
    }

    /// The type, from the first bytes, held to the declared type and name,
    /// and the size held to the cap of the category it turns out to be.
    fn decide(&mut self, head: usize, complete: bool) -> Result<(), Stop> {
        let u = &self.w.upload;
        let kind = sniff::sniff(
            &self.buf.head(head),
            complete,
            &u.declared_type,
            &u.filename,
        )
        .map_err(|e| Stop::Refuse(e.into()))?;
        Cap::new(
            &self.w.limits,
            kind.category,
            Route::Direct,
            self.w.state.config.stream_max_file_bytes,
        )
        .check(u.length())
        .map_err(|e| Stop::Refuse(e.into()))?;
        self.kind = Some(kind);
        Ok(())
    }

    /// Where the next whole part ends, if the buffer holds one that is not
    /// the file's last. A text document's part ends on a character boundary
    /// (a few bytes past the part size), so each part is checked on its own.
    fn next_cut(&self) -> Option<usize> {
        let kind = self.kind.as_ref()?;
        let part = self.part_size();
        if !kind.text {
            // A part that ends the file waits for completion (it may be
            // the only part, stored with one PUT).
            let not_last = self.stored + (part as u64) < self.w.upload.length();
            return (self.buf.len >= part && not_last).then_some(part);
        }
        if self.buf.len < part.saturating_add(4) {
            return None;
        }
        let continuation = (part..part + 3)
            .take_while(|&i| self.buf.byte_at(i).is_some_and(|b| b & 0xC0 == 0x80))
            .count();
        Some(part + continuation)
    }

    /// Checks a part of a text document (whole characters, valid UTF-8).
    fn check_text(&self, part: &[Bytes]) -> Result<(), Stop> {
        let Some(kind) = self.kind.as_ref().filter(|k| k.text) else {
            return Ok(());
        };
        let mut check = ContentCheck::new(Cap::exactly(self.w.upload.length()), kind);
        for chunk in part {
            check.feed(chunk).map_err(|e| Stop::Refuse(e.into()))?;
        }
        check.finish().map_err(|e| Stop::Refuse(e.into()))?;
        Ok(())
    }

    async fn store_part(&mut self, part: Vec<Bytes>) -> Result<(), Stop> {
        self.check_text(&part)?;
        let len: u64 = part.iter().map(|c| c.len() as u64).sum();
        let upload_id = match &self.multipart {
            Some(id) => id.clone(),
            None => self.start_parts().await?,
        };
        for chunk in &part {
            self.sha.update(chunk);
        }
        self.committed = None;
        let body = futures_util::stream::iter(part.into_iter().map(Ok));
        self.w
            .state
            .store
            .put_part(
                &self.key,
                &upload_id,
                self.parts + 1,
                self.stored,
                len,
                Box::pin(body),
            )
            .await?;
        self.parts += 1;
        self.stored += len;
        self.flushed = true;
        Ok(())
    }

    /// Starts the multipart upload with the first whole part (the type is
    /// known by then), tracked on the lease before any part is sent.
    async fn start_parts(&mut self) -> Result<String, Stop> {
        let (state, u) = (&self.w.state, &self.w.upload);
        let mime = self
            .kind
            .as_ref()
            .map_or("application/octet-stream", |k| k.mime);
        let id = state.store.start_parts(&self.key, mime).await?;
        self.lease
            .track_object(&state.db, Some(&self.key), Some(&id))
            .await?;
        if !uploads::set_multipart(&state.db, u.id, self.w.token, &id).await? {
            return Err(lost());
        }
        self.multipart = Some(id.clone());
        Ok(id)
    }

    /// Writes what is left in memory as the upload's tail.
    async fn save_tail(&mut self) -> Result<(), Stop> {
        if self.buf.len == 0 {
            return Ok(());
        }
        let bytes: Vec<u8> = self.buf.head(self.buf.len);
        self.w
            .state
            .store
            .put(
                &uploads::tail_key(self.w.upload.id),
                Bytes::from(bytes),
                "application/octet-stream",
            )
            .await?;
        Ok(())
    }

    /// Records what is stored (the parts, and `tail_len` bytes of the tail
    /// object) and renews the lease: its expiry runs from the last byte.
    /// Mid-body, after a part, the tail counts nothing: the rest of the
    /// buffer is not stored yet. `release`: this request writes nothing
    /// more, and lets go of the upload with this commit.
    async fn commit(&mut self, tail_len: u64, release: bool) -> Result<DateTime<Utc>, Stop> {
        let (state, u) = (&self.w.state, &self.w.upload);
        let progress = Progress {
            parts: self.parts,
            stored: self.stored,
            tail_len,
            sha: &self.sha,
            kind: self.kind.as_ref(),
        };
        let expiry = state.config.tus_expiry;
        // The lease holds the slot and the reservation: without it the
        // upload is over, whatever its row says. Two rows of two owners,
        // renewed side by side: one round trip of waiting, not two.
        let (committed, renewed) = tokio::join!(
            uploads::commit(&state.db, u.id, self.w.token, &progress, expiry, release),
            self.lease.renew(&state.db),
        );
        let (Some(expires_at), true) = (committed?, renewed?) else {
            return Err(lost());
        };
        if release {
            self.w.released.store(true, Ordering::Relaxed);
        }
        self.committed = Some(expires_at);
        Ok(expires_at)
    }

    /// The last byte is in: stores the last part, completes the object and
    /// records the file with its reservation turned into usage.
    async fn complete(mut self) -> Result<FileView, Stop> {
        let length = self.w.upload.length();
        if self.kind.is_none() {
            let head = self.buf.len;
            self.decide(head, true)?;
        }
        let kind = self
            .kind
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no type decided"))?;
        let last = self.buf.take(self.buf.len);
        let ended = self.finish_object(last, &kind).await;
        if let Err(Stop::Keep(e)) = ended {
            // The object may be half made: nothing of it can be resumed.
            return Err(Stop::Refuse(e));
        }
        ended?;
        let sha = std::mem::take(&mut self.sha).finish();
        let u = &self.w.upload;
        let new = NewFile {
            id: u.id,
            filename: u.filename.clone(),
            content_type: kind.mime.to_owned(),
            category: kind.category,
            size: length,
            sha256: Some(sha),
        };
        let (db, store) = (&self.w.state.db, self.w.state.store.as_ref());
        let view = files::record(db, &self.lease, &new, length)
            .await
            .map_err(Stop::Refuse)?;
        uploads::leave_open(db, u.id, State::Completed).await?;
        self.w.released.store(true, Ordering::Relaxed);
        // The file owns the object now: ending the lease frees the slot and
        // removes the tail.
        slots::end(db, store, u.lease_id).await?;
        metrics::counter!("intake_upload_bytes_total").increment(length);
        Ok(view)
    }

    async fn finish_object(&mut self, last: Vec<Bytes>, kind: &Kind) -> Result<(), Stop> {
        let store = self.w.state.store.as_ref();
        if self.parts == 0 {
            self.check_text(&last)?;
            for chunk in &last {
                self.sha.update(chunk);
            }
            let whole: Vec<u8> = last.concat();
            store.put(&self.key, Bytes::from(whole), kind.mime).await?;
            return Ok(());
        }
        // The last part may have been sent as it arrived.
        if !last.is_empty() {
            self.store_part(last).await?;
        }
        let upload_id = self
            .multipart
            .clone()
            .ok_or_else(|| anyhow::anyhow!("parts without a multipart upload"))?;
        store
            .complete_parts(&self.key, &upload_id, self.parts, self.w.upload.length())
            .await?;
        Ok(())
    }
}

/// Hands the part in flight the bytes of `chunk` it still needs, waiting
/// (up to `idle`) for storage to take them.
async fn feed_part(inflight: &mut Inflight, chunk: &Bytes, idle: Duration) {
    let take = (inflight.len - inflight.sent).min(chunk.len());
    if take == 0 || inflight.stalled {
        return;
    }
    let piece = chunk.slice(..take);
    inflight.sha.update(&piece);
    inflight.sent += take;
    // A closed channel means the part failed; landing it says why.
    if tokio::time::timeout(idle, inflight.tx.send(Ok(piece)))
        .await
        .is_err()
    {
        inflight.stalled = true;
        inflight.task.abort();
    }
}

fn lost() -> Stop {
    Stop::Keep(ApiError::Gone(
        "this upload expired or was ended while the request ran".into(),
    ))
}

/// A request's hold on the upload: renewed (with the upload's expiry and
/// its lease) while the request runs, given up when it ends, and expiring
/// on its own if the instance dies.
struct Hold {
    db: sqlx::PgPool,
    id: Uuid,
    token: Uuid,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Hold {
    fn start(w: &Writer) -> Self {
        let (db, id, token) = (w.state.db.clone(), w.upload.id, w.token);
        let hold = w.state.config.upload_lease_ttl;
        let expiry = w.state.config.tus_expiry;
        let lease = w.lease();
        let every = (hold.min(expiry) / 3).max(Duration::from_millis(200));
        let renewer = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let renewed = async {
                        uploads::renew(&db, id, token, hold, expiry).await?;
                        lease.renew(&db).await
                    }
                    .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, upload = %id, "could not renew a resumable upload");
                    }
                }
            })
        };
        Self {
            db,
            id,
            token,
            renewer: Some(renewer),
        }
    }

    /// Stops renewing and lets go of the upload, unless the request already
    /// did (`released`).
    async fn release(mut self, released: bool) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        if released {
            return;
        }
        if let Err(e) = uploads::unlock(&self.db, self.id, self.token).await {
            tracing::warn!(error = %e, upload = %self.id, "could not release a resumable upload; its hold expires");
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
            // Dropped without release: let go in the background.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (db, id, token) = (self.db.clone(), self.id, self.token);
                handle.spawn(async move {
                    let _ = uploads::unlock(&db, id, token).await;
                });
            }
        }
    }
}
