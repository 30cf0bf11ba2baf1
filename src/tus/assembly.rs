//! The upload's state while one request writes it, and the parts cut from
//! its bytes. This module alone decides the type (on the first bytes),
//! where each part ends, when a part is sent as its bytes arrive, and how
//! each whole part is stored.
//!
//! The upload's bytes are whole storage parts, then the tail (segments in
//! storage, [`Tail`]), then the request's bytes not stored yet
//! ([`Buffer`]): the tail and the buffer are the pending bytes, off whose
//! front each part is cut. A request appends its body and stores each
//! part as it fills (recording it at once, see [`super::commit`], so a
//! request that breaks keeps every byte it stored); what is left when its
//! body ends becomes a new segment of the tail. At most one part is in
//! memory.
//!
//! Reading the tail back costs as much as it holds, so only a request
//! whose work is kept reads it: one without a checksum (each part it
//! stores is recorded at once, and its sniffed type at its end), or one
//! that brought at least as many bytes as the tail, or whose body ended and
//! matched its checksum. A part sent while its bytes arrive is given up if
//! the body breaks first, so it takes in the tail only in the last two
//! cases; until then its bytes wait in the buffer.

use std::ops::Range;

use bytes::Bytes;

use super::{
    buffer::Buffer,
    hold::Hold,
    part::{Inflight, Target},
    receive::{Stop, Writer},
    sha::Sha256State,
    tail::Tail,
    uploads,
};
use crate::{
    error::ApiError,
    quota::{
        caps::{Cap, CapError, ContentCheck, Route},
        slots::Lease,
        tokens,
    },
    sniff::{self, Kind, SNIFF_BYTES},
    storage::ObjectWriter,
};

/// The upload's state while one request writes it.
pub(super) struct Assembly<'a> {
    pub(super) w: &'a Writer,
    /// The request's hold on the upload's row.
    pub(super) hold: &'a mut Hold,
    pub(super) lease: Lease,
    pub(super) key: String,
    /// The pending bytes in storage.
    pub(super) tail: Tail,
    /// The pending bytes after them, not stored yet.
    pub(super) buf: Buffer,
    pub(super) sha: Sha256State,
    pub(super) kind: Option<Kind>,
    pub(super) parts: i32,
    pub(super) stored: u64,
    pub(super) multipart: Option<String>,
    /// Bytes of the body taken in so far.
    received: u64,
    /// The body ended whole (and matched its checksum, if it had one).
    ended: bool,
    /// The next part, being sent while its bytes arrive.
    inflight: Option<Inflight>,
    /// Of the part in flight, the bytes the tail gave it.
    inflight_tail: u64,
}

impl<'a> Assembly<'a> {
    /// The upload as recorded.
    pub(super) fn load(w: &'a Writer, hold: &'a mut Hold) -> Result<Self, Stop> {
        let u = &w.upload;
        let sha = u
            .sha()
            .ok_or_else(|| anyhow::anyhow!("upload {} has a corrupt hash state", u.id))?;
        Ok(Self {
            w,
            hold,
            lease: w.lease(),
            key: u.key(),
            tail: Tail::of(u)?,
            buf: Buffer::default(),
            sha,
            kind: u.kind(),
            parts: u.parts,
            stored: u.stored.max(0) as u64,
            multipart: u.multipart_upload_id.clone(),
            received: 0,
            ended: false,
            inflight: None,
            inflight_tail: 0,
        })
    }

    /// The bytes past the last part: the tail's and the buffer's.
    pub(super) fn pending(&self) -> u64 {
        self.tail.len() + self.buf.len() as u64
    }

    /// The upload's offset: what is stored and what is pending.
    pub(super) fn offset(&self) -> u64 {
        self.stored + self.pending()
    }

    pub(super) fn part_size(&self) -> usize {
        usize::try_from(self.w.upload.part_size).unwrap_or(usize::MAX)
    }

    /// Whether what this request does with the tail's bytes is kept, so
    /// that it may read them back (see the module's comment).
    fn may_read_tail(&self) -> bool {
        self.w.checksum.is_none() || self.brought_the_tail()
    }

    /// Whether the body brought as many bytes as the tail holds, or ended
    /// whole.
    fn brought_the_tail(&self) -> bool {
        self.ended || self.received >= self.tail.len()
    }

    /// Sniffs once the first bytes are in, starts sending a part that the
    /// rest of the body (`body_left` bytes, when known) will fill, and
    /// stores every whole part.
    pub(super) async fn advance(&mut self, body_left: Option<u64>) -> Result<(), Stop> {
        if self.kind.is_none() {
            let length = self.w.upload.length();
            let need = length.min(SNIFF_BYTES as u64);
            // Parts wait for the type, so the pending bytes start at byte 0.
            if self.pending() < need || !self.may_read_tail() {
                return Ok(());
            }
            let head = self.peek(0..need).await?;
            self.decide(&head, length <= SNIFF_BYTES as u64)?;
        }
        if let Some(left) = body_left {
            self.start_inflight(left).await?;
        }
        loop {
            if let Some(inflight) = &self.inflight {
                if self.pending() < inflight.len() as u64 {
                    break;
                }
                self.land().await?;
            } else if !self.may_read_tail() {
                break;
            } else if let Some(cut) = self.next_cut().await? {
                self.store_part(cut).await?;
            } else {
                break;
            }
            // The last part is recorded with the file, right after. A body
            // that ends here lets go of the upload with this commit.
            if self.w.checksum.is_none() && self.offset() < self.w.upload.length() {
                let last = body_left == Some(0) && self.pending() == 0;
                self.commit(last).await?;
            }
        }
        Ok(())
    }

    /// The body ended whole (and matched its checksum, if it had one):
    /// stores the parts its bytes complete, whatever reading them back
    /// costs.
    pub(super) async fn body_ended(&mut self) -> Result<(), Stop> {
        self.ended = true;
        self.advance(Some(0)).await
    }

    /// Starts sending the next part now if the body will fill it (not a
    /// text document's, whose parts end on a character boundary only known
    /// once its bytes are in, nor the last part of a file stored with one
    /// PUT: the last part of one with parts before it may be shorter).
    async fn start_inflight(&mut self, body_left: u64) -> Result<(), Stop> {
        let length = self.w.upload.length();
        let part = (length - self.stored).min(self.part_size() as u64);
        let binary = self.kind.as_ref().is_some_and(|k| !k.text);
        let fills = self.pending() + body_left >= part;
        let not_last = self.stored + part < length;
        let tail = self.tail.len();
        if self.inflight.is_some()
            || part == 0
            || !binary
            || !fills
            || !(not_last || self.parts > 0)
            || tail > part
            || !self.brought_the_tail()
        {
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
        let store = self.w.state.store.clone();
        let idle = self.w.state.config.upload_idle_timeout;
        let len = usize::try_from(part).unwrap_or(usize::MAX);
        let mut inflight = Inflight::start(store.clone(), to, len, self.sha.clone());
        let mut reader = self.tail.reader(store.as_ref(), 0..tail);
        loop {
            match reader.next().await {
                Ok(Some(chunk)) => inflight.feed(&chunk, idle).await,
                Ok(None) => break,
                Err(e) => {
                    inflight.cancel().await;
                    return Err(e.into());
                }
            }
        }
        for chunk in self.buf.chunks() {
            inflight.feed(chunk, idle).await;
        }
        self.inflight = Some(inflight);
        self.inflight_tail = tail;
        self.spill_inflight();
        Ok(())
    }

    /// Takes in a chunk of the body, handing it to the part being sent, if
    /// any.
    pub(super) async fn take_in(&mut self, chunk: Bytes) {
        self.received += chunk.len() as u64;
        if let Some(inflight) = self.inflight.as_mut() {
            inflight
                .feed(&chunk, self.w.state.config.upload_idle_timeout)
                .await;
        }
        self.buf.push(chunk);
        self.spill_inflight();
    }

    /// Moves the buffer's bytes handed to the part in flight out of memory.
    fn spill_inflight(&mut self) {
        if let Some(inflight) = &self.inflight {
            let from_buf = (inflight.sent() as u64).saturating_sub(self.inflight_tail);
            let in_memory = usize::try_from(from_buf).unwrap_or(usize::MAX) - self.buf.spilled();
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
        let from_tail = std::mem::take(&mut self.inflight_tail);
        self.buf
            .drop_front(len - usize::try_from(from_tail).unwrap_or(len));
        self.tail.taken();
        self.parts += 1;
        self.stored += len as u64;
        Ok(())
    }

    /// Fails the part being sent (the body ended before filling it): the
    /// body's bytes stay in the buffer, back in memory, the tail as it is.
    pub(super) async fn cancel_inflight(&mut self) -> Result<(), Stop> {
        if let Some(inflight) = self.inflight.take() {
            inflight.cancel().await;
        }
        self.inflight_tail = 0;
        self.buf
            .unspill()
            .map_err(|e| Stop::Keep(ApiError::Internal(e.into())))
    }

    /// `range` of the pending bytes (a few: sniffing, a text part's end),
    /// read back from the tail as far as they are in it. Nothing may be
    /// spilled.
    pub(super) async fn peek(&mut self, range: Range<u64>) -> Result<Vec<u8>, Stop> {
        let tail = self.tail.len();
        let mut out = if range.start < tail {
            let store = self.w.state.store.as_ref();
            self.tail
                .read(store, range.start..range.end.min(tail))
                .await?
        } else {
            Vec::new()
        };
        let in_buf = |at: u64| usize::try_from(at.saturating_sub(tail)).unwrap_or(usize::MAX);
        out.extend(self.buf.copy(in_buf(range.start)..in_buf(range.end)));
        Ok(out)
    }

    /// The type, from the first bytes, held to the declared type and name,
    /// and the size held to the cap of the category it turns out to be.
    pub(super) fn decide(&mut self, head: &[u8], complete: bool) -> Result<(), Stop> {
        let u = &self.w.upload;
        let kind = sniff::sniff(head, complete, &u.declared_type, &u.filename)
            .map_err(|e| Stop::Refuse(e.into()))?;
        if let Some(token) = &self.w.upload_token {
            tokens::check_category(token, kind.category).map_err(Stop::Refuse)?;
        }
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

    /// Where the next whole part ends, if the pending bytes hold one that
    /// is not the file's last. A text document's part ends on a character
    /// boundary (a few bytes past the part size), so each part is checked
    /// on its own.
    async fn next_cut(&mut self) -> Result<Option<usize>, Stop> {
        let Some(kind) = self.kind.as_ref() else {
            return Ok(None);
        };
        let part = self.part_size() as u64;
        if !kind.text {
            // A part that ends the file waits for completion (it may be
            // the only part, stored with one PUT).
            let not_last = self.stored + part < self.w.upload.length();
            return Ok((self.pending() >= part && not_last).then_some(self.part_size()));
        }
        if self.pending() < part.saturating_add(4) {
            return Ok(None);
        }
        let after = self.peek(part..part + 3).await?;
        let continuation = after.iter().take_while(|&&b| b & 0xC0 == 0x80).count();
        Ok(Some(self.part_size() + continuation))
    }

    /// The check of a part of a text document (whole characters, valid
    /// UTF-8), none for other types.
    pub(super) fn text_check(&self) -> Option<ContentCheck> {
        let kind = self.kind.as_ref().filter(|k| k.text)?;
        Some(ContentCheck::new(
            Cap::exactly(self.w.upload.length()),
            kind,
        ))
    }

    /// Stores the first `len` pending bytes as the next part, with one
    /// request: the tail's read back from storage, then the buffer's.
    pub(super) async fn store_part(&mut self, len: usize) -> Result<(), Stop> {
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
        let store = self.w.state.store.clone();
        let idle = self.w.state.config.upload_idle_timeout;
        let mut check = self.text_check();
        let mut part = Inflight::start(store.clone(), to, len, self.sha.clone());
        let from_tail = self.tail.len().min(len as u64);
        let fed = async {
            let refuse = |e: CapError| Stop::Refuse(e.into());
            let mut reader = self.tail.reader(store.as_ref(), 0..from_tail);
            while let Some(chunk) = reader.next().await? {
                if let Some(c) = check.as_mut() {
                    c.feed(&chunk).map_err(refuse)?;
                }
                part.feed(&chunk, idle).await;
            }
            let from_buf = len - usize::try_from(from_tail).unwrap_or(len);
            for chunk in self.buf.take(from_buf) {
                if let Some(c) = check.as_mut() {
                    c.feed(&chunk).map_err(refuse)?;
                }
                part.feed(&chunk, idle).await;
            }
            if let Some(c) = &check {
                c.finish().map_err(refuse)?;
            }
            Ok::<_, Stop>(())
        }
        .await;
        if let Err(e) = fed {
            part.cancel().await;
            return Err(e);
        }
        self.sha = part.land().await?;
        // A text part may end a few bytes before the tail does: those
        // bytes come first in the buffer now.
        let tail = self.tail.len();
        if from_tail < tail {
            let rest = self.tail.read(store.as_ref(), from_tail..tail).await?;
            self.buf.push_front(Bytes::from(rest));
        }
        self.tail.taken();
        self.parts += 1;
        self.stored += len as u64;
        Ok(())
    }

    /// Writes the pending bytes from the tail's byte `from` on (the tail's
    /// read back from storage, then the whole buffer) to `writer`, each
    /// chunk held to `check` first and, with `hash`, added to the upload's
    /// hash; the writer is aborted on a failure, and finished only once the
    /// check has passed the end.
    pub(super) async fn write_pending(
        &mut self,
        mut writer: Box<dyn ObjectWriter>,
        from: u64,
        mut check: Option<ContentCheck>,
        hash: bool,
    ) -> Result<(), Stop> {
        let store = self.w.state.store.clone();
        let refuse = |e: CapError| Stop::Refuse(e.into());
        let written = async {
            let mut reader = self.tail.reader(store.as_ref(), from..self.tail.len());
            let mut chunks = self.buf.take(self.buf.len()).into_iter();
            loop {
                let chunk = match reader.next().await? {
                    Some(chunk) => chunk,
                    None => match chunks.next() {
                        Some(chunk) => chunk,
                        None => break,
                    },
                };
                if let Some(c) = check.as_mut() {
                    c.feed(&chunk).map_err(refuse)?;
                }
                if hash {
                    self.sha.update(&chunk);
                }
                writer.write(chunk).await?;
            }
            if let Some(c) = &check {
                c.finish().map_err(refuse)?;
            }
            Ok::<_, Stop>(())
        }
        .await;
        match written {
            Ok(()) => {
                writer.finish().await?;
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
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
