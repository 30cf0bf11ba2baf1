//! What a write request records of the upload, and how the last byte
//! becomes a file. This module alone decides what the row says is stored
//! (parts, tail, hash, type), when the request lets go of the row with a
//! commit, and how a completed upload is recorded as a file.
//!
//! Recording a part and the tail is "store, then record": a crash between
//! the two leaves bytes in storage that the recorded state does not count,
//! which the next request overwrites (the tail is read only as far as its
//! recorded length).

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{
    assembly::Assembly,
    receive::Stop,
    uploads::{self, Progress, State},
};
use crate::{
    files::{self, FileView, NewFile},
    quota::slots,
    sniff::Kind,
};

impl Assembly<'_> {
    /// Writes what is left in memory as the upload's tail.
    pub(super) async fn save_tail(&mut self) -> Result<(), Stop> {
        if self.buf.len() == 0 {
            return Ok(());
        }
        let bytes: Vec<u8> = self.buf.head(self.buf.len());
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
    pub(super) async fn commit(
        &mut self,
        tail_len: u64,
        release: bool,
    ) -> Result<DateTime<Utc>, Stop> {
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
            return Err(Stop::lost());
        };
        if release {
            self.hold.let_go_by_commit(expires_at);
        }
        Ok(expires_at)
    }

    /// The last byte is in: stores the last part, completes the object and
    /// records the file with its reservation turned into usage.
    pub(super) async fn complete(mut self) -> Result<FileView, Stop> {
        let length = self.w.upload.length();
        if self.kind.is_none() {
            let head = self.buf.len();
            self.decide(head, true)?;
        }
        let kind = self
            .kind
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no type decided"))?;
        let last = self.buf.take(self.buf.len());
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
        self.hold.let_go_by_completion();
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
