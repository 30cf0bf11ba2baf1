//! The bytes of one PATCH (or of a creation-with-upload body) on their way
//! into a resumable upload. This module alone decides what the request
//! answers, and whether a request that stops early keeps the upload open
//! or ends it with everything it held.
//!
//! The body is read chunk by chunk ([`next_chunk`]) into the upload's
//! [`Assembly`], which stores each part as it fills; when the body ends or
//! breaks, what is left becomes a new segment of the tail.
//!
//! A body with an `Upload-Checksum` is kept only as a whole: its parts are
//! recorded when the checksum matches, so a mismatch (or a break) leaves the
//! offset where it was; parts stored for it are overwritten by the next
//! request, and never make it into the file.

use axum::body::{Body, BodyDataStream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use uuid::Uuid;

use super::{
    assembly::Assembly,
    headers::{BodyHasher, Checksum},
    hold::Hold,
    uploads::{self, State, Upload},
};
use crate::{
    auth::{UploadToken, upload_tokens},
    error::ApiError,
    files::FileView,
    quota::{
        slots::{self, Lease},
        tokens,
    },
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
pub(super) enum Stop {
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

impl Stop {
    /// The upload's row or lease was ended under the request.
    pub(super) fn lost() -> Self {
        Self::Keep(ApiError::Gone(
            "this upload expired or was ended while the request ran".into(),
        ))
    }

    fn past_length() -> Self {
        Self::Keep(ApiError::bad_request(
            "the body goes past Upload-Length; nothing past the recorded offset was kept",
        ))
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
    /// The upload token that created the upload, if one did: its
    /// categories hold on the bytes.
    pub upload_token: Option<UploadToken>,
    /// The owner's limits.
    pub limits: Limits,
    /// The body's announced length, if any.
    pub content_length: Option<u64>,
    /// The body's checksum, if any.
    pub checksum: Option<Checksum>,
}

impl Writer {
    /// The upload's lease, renewed with its expiry.
    pub(super) fn lease(&self) -> Lease {
        Lease::existing(
            self.upload.lease_id,
            self.upload.account_id,
            self.state.config.tus_expiry,
        )
    }

    /// Receives the body, then lets go of the upload; a refused upload is
    /// ended with everything it held.
    pub async fn run(self, body: Body) -> Result<Outcome, ApiError> {
        let mut hold = Hold::start(&self);
        let mut result = self.receive(&mut hold, body).await;
        hold.end().await;
        // Its token revoked while this request held the upload (which the
        // revocation could not end then): the upload ends now.
        if let Some(token) = &self.upload_token
            && !matches!(result, Ok(Outcome::Completed { .. }) | Err(Stop::Refuse(_)))
            && upload_tokens::is_revoked(&self.state.db, &token.id).await?
        {
            result = Err(Stop::Refuse(tokens::revoked()));
        }
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

    async fn receive(&self, hold: &mut Hold, body: Body) -> Result<Outcome, Stop> {
        let mut a = Assembly::load(self, hold)?;
        let remaining = self.upload.length() - self.upload.offset();
        if self.content_length.is_some_and(|n| n > remaining) {
            return Err(Stop::past_length());
        }
        // Room in the process's upload buffers for what the body may hold
        // in memory before storage has it (at most a part; the bytes of a
        // part in flight wait in a file), before its first byte. The quota
        // was reserved at creation.
        let most = self
            .content_length
            .unwrap_or(u64::MAX)
            .min(remaining)
            .min(a.part_size() as u64);
        let _room = self.state.upload_buffers.take(most).await?;
        let mut hasher: Option<BodyHasher> = self.checksum.as_ref().map(Checksum::hasher);
        let mut stream = body.into_data_stream();
        let mut received: u64 = 0;
        let broken = loop {
            let chunk = match next_chunk(&mut stream).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            received += chunk.len() as u64;
            if received > remaining {
                a.cancel_inflight().await?;
                return Err(Stop::past_length());
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
        if broken.is_none() {
            a.body_ended().await?;
        }
        if a.offset() == self.upload.length() {
            let file = a.complete().await?;
            return Ok(Outcome::Completed {
                offset: self.upload.length(),
                file: Box::new(file),
            });
        }
        a.save_tail().await?;
        // A body that ended on a part boundary was recorded, and the upload
        // let go, with that part.
        let expires_at = match a.hold.let_go_at() {
            Some(at) => at,
            None => a.commit(true).await?,
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

/// The next chunk of the body (`None` at its end). The body guard holds it
/// to the idle time and the server's shutdown ([`crate::body`]).
async fn next_chunk(stream: &mut BodyDataStream) -> Result<Option<Bytes>, ApiError> {
    stream
        .next()
        .await
        .transpose()
        .map_err(|e| crate::body::broken(&e))
}
