//! What a write request records of the upload, and how the last byte
//! becomes a file. This module alone decides what the row says is stored
//! (parts, tail segments, hash, type), when the request lets go of the row
//! with a commit, and how a completed upload is recorded as a file.
//!
//! Recording a part and a tail segment is "store, then record": a crash
//! between the two leaves bytes in storage that the recorded state does
//! not count, which the next request overwrites (the same part number, the
//! same next segment number). A commit that changes the tail records, in
//! one transaction with the row, every tail object the lease must remove
//! if the upload ends, and queues for deletion the segments given up; they
//! are deleted once it commits.

use chrono::{DateTime, Utc};

use super::{
    assembly::Assembly,
    receive::Stop,
    uploads::{self, Progress, State},
};
use crate::{
    deletions,
    files::{self, FileView, NewFile},
    quota::slots,
    sniff::Kind,
};

impl Assembly<'_> {
    /// Stores the request's bytes left in the buffer as the tail's newest
    /// segment, which absorbs the newest segments as [`super::tail`]'s rule
    /// says (their bytes read back and written again).
    pub(super) async fn save_tail(&mut self) -> Result<(), Stop> {
        let new = self.buf.len() as u64;
        if new == 0 {
            return Ok(());
        }
        let kept = self.tail.kept_with(new);
        let from = self.tail.start_of(kept);
        let len = self.tail.len() - from + new;
        let writer = self
            .w
            .state
            .store
            .writer_of_len(
                &self.tail.next_key(),
                "application/octet-stream",
                len,
                self.part_size(),
            )
            .await?;
        self.write_pending(writer, from, None, false).await?;
        self.tail.stored(kept, len);
        Ok(())
    }

    /// Records what is stored (the parts and the tail's segments) and
    /// renews the lease: its expiry runs from the last byte. Mid-body,
    /// after a part, the tail is empty: the rest of the buffer is not
    /// stored yet. `release`: this request writes nothing more, and lets go
    /// of the upload with this commit.
    pub(super) async fn commit(&mut self, release: bool) -> Result<DateTime<Utc>, Stop> {
        let (state, u) = (&self.w.state, &self.w.upload);
        let (seqs, lens, next) = self.tail.record();
        let progress = Progress {
            parts: self.parts,
            stored: self.stored,
            tail_len: self.tail.len(),
            tail_seqs: &seqs,
            tail_lens: &lens,
            tail_next: next,
            sha: &self.sha,
            kind: self.kind.as_ref(),
        };
        let expiry = state.config.tus_expiry;
        let (committed, renewed) = if self.tail.changed() {
            // The lease must know every tail object that may be in storage
            // from now on, and the segments given up must be queued, as
            // the row records the tail: one transaction.
            let mut tx = state.db.begin().await?;
            let renewed = self
                .lease
                .renew_tracking_tail(&mut tx, &self.tail.objects())
                .await?;
            let committed =
                uploads::commit(&mut *tx, u.id, self.w.token, &progress, expiry, release).await?;
            if !(renewed && committed.is_some()) {
                return Err(Stop::lost());
            }
            deletions::enqueue_objects(&mut tx, self.tail.given_up()).await?;
            tx.commit().await?;
            (committed, renewed)
        } else {
            // The lease holds the slot and the reservation: without it the
            // upload is over, whatever its row says. Two rows of two
            // owners, renewed side by side: one round trip of waiting, not
            // two.
            let (committed, renewed) = tokio::join!(
                uploads::commit(&state.db, u.id, self.w.token, &progress, expiry, release),
                self.lease.renew(&state.db),
            );
            (committed?, renewed?)
        };
        let (Some(expires_at), true) = (committed, renewed) else {
            return Err(Stop::lost());
        };
        let given_up: Vec<_> = self
            .tail
            .committed()
            .into_iter()
            .map(deletions::Doomed::object)
            .collect();
        deletions::delete_queued(&state.db, state.store.as_ref(), &given_up).await;
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
            let head = self.peek(0..self.pending()).await?;
            self.decide(&head, true)?;
        }
        let kind = self
            .kind
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no type decided"))?;
        let ended = self.finish_object(&kind).await;
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
            upload_token_id: u.upload_token_id.clone(),
        };
        let (db, store) = (&self.w.state.db, self.w.state.store.as_ref());
        let view = files::record(db, &self.lease, &new, length)
            .await
            .map_err(Stop::Refuse)?;
        uploads::leave_open(db, u.id, State::Completed).await?;
        self.hold.let_go_by_completion();
        // The file owns the object now: ending the lease frees the slot and
        // removes the tail's segments.
        slots::end(db, store, u.lease_id).await?;
        metrics::counter!("intake_upload_bytes_total").increment(length);
        Ok(view)
    }

    async fn finish_object(&mut self, kind: &Kind) -> Result<(), Stop> {
        let store = self.w.state.store.clone();
        let last = self.pending();
        if self.parts == 0 {
            // The whole file, with one PUT: checked and hashed as it goes.
            let writer = store
                .writer_of_len(&self.key, kind.mime, last, self.part_size())
                .await?;
            let check = self.text_check();
            return self.write_pending(writer, 0, check, true).await;
        }
        // The last part may have been sent as it arrived.
        if last > 0 {
            let len = usize::try_from(last).map_err(|e| anyhow::anyhow!(e))?;
            self.store_part(len).await?;
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
