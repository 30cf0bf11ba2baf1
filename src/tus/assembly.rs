//! The upload's state while one request writes it, and the parts cut from
//! its bytes. This module alone decides the type (on the first bytes),
//! where each part ends, when a part is sent as its bytes arrive, and how
//! each whole part is stored.
//!
//! The upload's bytes are whole storage parts plus a tail: the bytes past
//! the last whole part, kept in a small object of their own so that any
//! instance can resume. A request reads the tail back ([`Assembly::load`]),
//! appends its body, and stores each part as it fills (recording it at
//! once, see [`super::commit`], so a request that breaks keeps every byte
//! it stored). At most one part is in memory.

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::{
    buffer::Buffer,
    hold::Hold,
    part::{Inflight, Target},
    receive::{Stop, Writer},
    sha::Sha256State,
    uploads,
};
use crate::{
    error::ApiError,
    quota::{
        caps::{Cap, ContentCheck, Route},
        slots::Lease,
    },
    sniff::{self, Kind, SNIFF_BYTES},
};

/// The upload's state while one request writes it.
pub(super) struct Assembly<'a> {
    pub(super) w: &'a Writer,
    /// The request's hold on the upload's row.
    pub(super) hold: &'a mut Hold,
    pub(super) lease: Lease,
    pub(super) key: String,
    pub(super) buf: Buffer,
    pub(super) sha: Sha256State,
    pub(super) kind: Option<Kind>,
    pub(super) parts: i32,
    pub(super) stored: u64,
    pub(super) multipart: Option<String>,
    /// Whether a part was stored by this request (the tail changes then).
    pub(super) flushed: bool,
    /// The next part, being sent while its bytes arrive.
    inflight: Option<Inflight>,
}

impl<'a> Assembly<'a> {
    /// The upload as recorded, with its tail read back.
    pub(super) async fn load(w: &'a Writer, hold: &'a mut Hold) -> Result<Self, Stop> {
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
            if buf.len() as u64 != tail_len {
                return Err(anyhow::anyhow!(
                    "the tail of upload {} holds {} bytes, not {tail_len}",
                    u.id,
                    buf.len()
                )
                .into());
            }
        }
        Ok(Self {
            w,
            hold,
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
        })
    }

    /// The upload's offset: what is stored and what is buffered.
    pub(super) fn offset(&self) -> u64 {
        self.stored + self.buf.len() as u64
    }

    fn part_size(&self) -> usize {
        usize::try_from(self.w.upload.part_size).unwrap_or(usize::MAX)
    }

    /// Sniffs once the first bytes are in, starts sending a part that the
    /// rest of the body (`body_left` bytes, when known) will fill, and
    /// stores every whole part.
    pub(super) async fn advance(&mut self, body_left: Option<u64>) -> Result<(), Stop> {
        if self.kind.is_none() {
            let length = self.w.upload.length();
            let need = usize::try_from(length.min(SNIFF_BYTES as u64)).unwrap_or(SNIFF_BYTES);
            // Parts wait for the type, so the buffer starts at byte 0.
            if self.buf.len() < need {
                return Ok(());
            }
            self.decide(need, length <= SNIFF_BYTES as u64)?;
        }
        if let Some(left) = body_left {
            self.start_inflight(left).await?;
        }
        loop {
            if let Some(inflight) = &self.inflight {
                if self.buf.len() < inflight.len() {
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
                let last = body_left == Some(0) && self.buf.len() == 0;
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
        let fills = self.buf.len() as u64 + body_left >= part as u64;
        let not_last = self.stored + (part as u64) < length;
        if self.inflight.is_some() || !binary || !fills || !(not_last || self.parts > 0) {
            return Ok(());
        }
        let upload_id = match &self.multipart {
            Some(id) => id.clone(),
            None => self.start_parts().await?,
        };
        let to = Target {
            key: self.key.clone(),
            upload_id,
            number: self.parts + 1,
            start: self.stored,
        };
        let mut inflight = Inflight::start(self.w.state.store.clone(), to, part, self.sha.clone());
        for chunk in self.buf.chunks() {
            inflight
                .feed(chunk, self.w.state.config.upload_idle_timeout)
                .await;
        }
        self.inflight = Some(inflight);
        self.spill_inflight();
        Ok(())
    }

    /// Takes in a chunk of the body, handing it to the part being sent, if
    /// any.
    pub(super) async fn take_in(&mut self, chunk: Bytes) {
        if let Some(inflight) = self.inflight.as_mut() {
            inflight
                .feed(&chunk, self.w.state.config.upload_idle_timeout)
                .await;
        }
        self.buf.push(chunk);
        self.spill_inflight();
    }

    /// Moves the bytes handed to the part in flight out of memory.
    fn spill_inflight(&mut self) {
        if let Some(inflight) = &self.inflight {
            let in_memory = inflight.sent() - self.buf.spilled();
            self.buf.spill_front(in_memory);
        }
    }

    /// Waits for storage to have the part sent as it arrived.
    async fn land(&mut self) -> Result<(), Stop> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let len = inflight.len();
        self.sha = inflight.land().await?;
        self.buf.drop_front(len);
        self.parts += 1;
        self.stored += len as u64;
        self.flushed = true;
        Ok(())
    }

    /// Fails the part being sent (the body ended before filling it): its
    /// bytes stay in the buffer, back in memory.
    pub(super) async fn cancel_inflight(&mut self) -> Result<(), Stop> {
        if let Some(inflight) = self.inflight.take() {
            inflight.cancel().await;
        }
        self.buf
            .unspill()
            .map_err(|e| Stop::Keep(ApiError::Internal(e.into())))
    }

    /// The type, from the first bytes, held to the declared type and name,
    /// and the size held to the cap of the category it turns out to be.
    pub(super) fn decide(&mut self, head: usize, complete: bool) -> Result<(), Stop> {
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
            return (self.buf.len() >= part && not_last).then_some(part);
        }
        if self.buf.len() < part.saturating_add(4) {
            return None;
        }
        let continuation = (part..part + 3)
            .take_while(|&i| self.buf.byte_at(i).is_some_and(|b| b & 0xC0 == 0x80))
            .count();
        Some(part + continuation)
    }

    /// Checks a part of a text document (whole characters, valid UTF-8).
    pub(super) fn check_text(&self, part: &[Bytes]) -> Result<(), Stop> {
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

    /// Stores a whole part of bytes in hand with one request.
    pub(super) async fn store_part(&mut self, part: Vec<Bytes>) -> Result<(), Stop> {
        self.check_text(&part)?;
        let len: u64 = part.iter().map(|c| c.len() as u64).sum();
        let upload_id = match &self.multipart {
            Some(id) => id.clone(),
            None => self.start_parts().await?,
        };
        for chunk in &part {
            self.sha.update(chunk);
        }
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
            return Err(Stop::lost());
        }
        self.multipart = Some(id.clone());
        Ok(id)
    }
}
