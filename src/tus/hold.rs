//! A write request's hold on a resumable upload's row. This module alone
//! knows whether the request still holds the row or has let go of it (with
//! its last commit, by completing the upload, or by ending the hold), so
//! the row is let go exactly once.
//!
//! While the request runs the hold is renewed (with the upload's expiry
//! and its lease); it expires on its own if the instance dies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{receive::Writer, uploads};

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
    renewer: Option<tokio::task::JoinHandle<()>>,
    grip: Grip,
}

impl Hold {
    /// Starts renewing the hold `w` took on its upload.
    pub(super) fn start(w: &Writer) -> Self {
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
            grip: Grip::Held,
        }
    }

    /// Notes that the commit recording `expires_at` let go of the row (the
    /// request writes nothing more).
    pub(super) fn let_go_by_commit(&mut self, expires_at: DateTime<Utc>) {
        self.grip = Grip::Committed(expires_at);
    }

    /// Notes that completing the upload let go of the row.
    pub(super) fn let_go_by_completion(&mut self) {
        self.grip = Grip::Released;
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
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        if !matches!(self.grip, Grip::Held) {
            return;
        }
        self.grip = Grip::Released;
        if let Err(e) = uploads::unlock(&self.db, self.id, self.token).await {
            tracing::warn!(error = %e, upload = %self.id, "could not release a resumable upload; its hold expires");
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        // Dropped while held, without `end`: let go in the background.
        if matches!(self.grip, Grip::Held)
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let (db, id, token) = (self.db.clone(), self.id, self.token);
            handle.spawn(async move {
                let _ = uploads::unlock(&db, id, token).await;
            });
        }
    }
}
