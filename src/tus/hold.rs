//! A write request's hold on a resumable upload's row. This module alone
//! knows whether the request still holds the row or has let go of it (with
//! its last commit, by completing the upload, or by ending the hold), so
//! the row is let go exactly once.
//!
//! While the request runs the hold is renewed (with the upload's expiry
//! and its lease) by a [`Heartbeat`]; it expires on its own if the
//! instance dies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{receive::Writer, uploads};
use crate::{db::heartbeat::Heartbeat, quota::slots::Lease};

/// Whether the request still holds the upload's row.
#[derive(Clone, Copy)]
enum Grip {
    /// Held: ending the hold lets go of the row.
    Held,
    /// Let go by the request's last commit, which recorded this expiry.
    Committed(DateTime<Utc>),
    /// Let go otherwise: the upload completed, or the hold was ended.
    Released,
}

/// A request's hold on the upload: renewed while the request runs, let go
/// once when it ends.
pub(super) struct Hold {
    db: sqlx::PgPool,
    id: Uuid,
    token: Uuid,
    /// Renews the hold and the lease; if the request is dropped while the
    /// row is held, unlocks it in the background.
    heartbeat: Heartbeat,
    grip: Grip,
}

impl Hold {
    /// Starts renewing the hold `w` took on its upload.
    pub(super) fn start(w: &Writer) -> Self {
        let (db, id, token) = (w.state.db.clone(), w.upload.id, w.token);
        let hold = w.state.config.upload_lease_ttl;
        let expiry = w.state.config.tus_expiry;
        let lease = w.lease();
        let (lease_id, account_id, lease_ttl) = (lease.id, lease.account_id, lease.ttl());
        let every = (hold.min(expiry) / 3).max(Duration::from_millis(200));
        let heartbeat = Heartbeat::start(every, "a resumable upload", id, {
            let db = db.clone();
            move || {
                let db = db.clone();
                let lease = Lease::existing(lease_id, account_id, lease_ttl);
                async move {
                    uploads::renew(&db, id, token, hold, expiry).await?;
                    lease.renew(&db).await
                }
            }
        })
        .on_drop({
            let db = db.clone();
            async move {
                let _ = uploads::unlock(&db, id, token).await;
            }
        });
        Self {
            db,
            id,
            token,
            heartbeat,
            grip: Grip::Held,
        }
    }

    /// Notes that the commit recording `expires_at` let go of the row (the
    /// request writes nothing more).
    pub(super) fn let_go_by_commit(&mut self, expires_at: DateTime<Utc>) {
        self.let_go(Grip::Committed(expires_at));
    }

    /// Notes that completing the upload let go of the row.
    pub(super) fn let_go_by_completion(&mut self) {
        self.let_go(Grip::Released);
    }

    /// The expiry the commit that let go of the row recorded, if a commit
    /// did.
    pub(super) fn let_go_at(&self) -> Option<DateTime<Utc>> {
        match self.grip {
            Grip::Committed(at) => Some(at),
            Grip::Held | Grip::Released => None,
        }
    }

    /// Stops renewing and lets go of the row, unless the request already
    /// did.
    pub(super) async fn end(mut self) {
        self.heartbeat.stop();
        if !matches!(self.grip, Grip::Held) {
            return;
        }
        self.grip = Grip::Released;
        if let Err(e) = uploads::unlock(&self.db, self.id, self.token).await {
            tracing::warn!(error = %e, upload = %self.id, "could not release a resumable upload; its hold expires");
        }
    }

    /// Notes that the request no longer holds the row, so a drop does not
    /// unlock it.
    fn let_go(&mut self, grip: Grip) {
        self.grip = grip;
        self.heartbeat.stop();
    }
}
