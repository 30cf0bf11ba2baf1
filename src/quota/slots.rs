//! Concurrent-upload slots, as leases in Postgres.
//!
//! Every upload, whatever its path, holds one lease (one slot) while it
//! runs: taken through [`Slot::take`], a guard that renews the lease while a
//! request streams and ends it on every exit, the early ones included. An
//! upload that outlives its request (presigned, resumable) hands the lease
//! over ([`Slot::hand_over`]) and a later request ends it with [`end`].
//! A lease expires unless renewed; the reaper ends what a dead instance's
//! leases held ([`end_expired`]).
//!
//! The lease row also tracks the object being written under it, so that
//! ending the lease removes that object: it is queued for deletion in the
//! transaction that ends the lease, and deleted after the commit.
//!
//! Lock order, everywhere: the lease row first, then the account row.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use super::lease::Lease;
use super::{reservations, tokens};
use crate::{
    db::heartbeat::Heartbeat,
    deletions::{self, Doomed},
    error::ApiError,
    storage::ObjectStore,
};

/// What a lease is for (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// A streaming upload request.
    Stream,
    /// A presigned upload, from issue to completion.
    Presigned,
    /// A resumable (tus) upload, from creation to completion, termination
    /// or expiry.
    Tus,
}

impl UploadKind {
    /// Whether one request holds the whole upload, so that its lease is
    /// renewed while that request runs. Presigned and resumable uploads
    /// outlive their requests: their leases last until their own expiry.
    pub fn renewed_by_its_request(self) -> bool {
        matches!(self, Self::Stream)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Presigned => "presigned",
            Self::Tus => "tus",
        }
    }
}

/// What the lease row tracks, and its renewal.
impl Lease {
    /// Records the object being written, so that ending the lease (or the
    /// reaper, if this instance dies) removes it.
    pub async fn track_object(
        &self,
        db: &PgPool,
        object_key: Option<&str>,
        multipart_upload_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE upload_leases SET object_key = $2, multipart_upload_id = $3 WHERE id = $1",
        )
        .bind(self.id)
        .bind(object_key)
        .bind(multipart_upload_id)
        .execute(db)
        .await?;
        Ok(())
    }

    /// Records the side objects the upload keeps while it runs (a
    /// resumable upload's unfinished tail: `tail_key`, and `objects`, every
    /// segment of it that may be in storage), so that ending the lease
    /// removes them too.
    pub async fn track_tail(
        &self,
        db: &PgPool,
        tail_key: &str,
        objects: &[String],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE upload_leases SET tail_key = $2, tail_objects = $3 WHERE id = $1")
            .bind(self.id)
            .bind(tail_key)
            .bind(objects)
            .execute(db)
            .await?;
        Ok(())
    }

    /// [`Lease::renew`], recording at once the tail's objects that may be
    /// in storage from now on (in the transaction that records the tail
    /// itself); `false` when the lease is gone.
    pub async fn renew_tracking_tail(
        &self,
        conn: &mut PgConnection,
        objects: &[String],
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE upload_leases SET tail_objects = $3,
                    expires_at = greatest(expires_at, now() + make_interval(secs => $2))
             WHERE id = $1",
        )
        .bind(self.id)
        .bind(self.ttl.as_secs_f64())
        .bind(objects)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends the lease to its ttl from now (never shortening it), for an
    /// upload whose bytes flow across requests; `false` when it is gone.
    pub async fn renew(&self, db: &PgPool) -> Result<bool, sqlx::Error> {
        renew(db, self.id, self.ttl).await
    }
}

/// How long a client is told to wait when all its slots are taken.
const SLOT_RETRY_AFTER_SECS: u64 = 1;

/// Inserts a lease if the account has a slot free: `None` when all are
/// taken. The account row is locked first, so the count of live leases that
/// the insert checks is exact even with many instances racing.
async fn acquire(
    db: &PgPool,
    account_id: Uuid,
    kind: UploadKind,
    limit: u32,
    ttl: Duration,
) -> Result<Option<Lease>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO upload_leases (id, account_id, kind, expires_at)
         SELECT $1, $2, $3, now() + make_interval(secs => $5)
         WHERE (SELECT count(*) FROM upload_leases
                 WHERE account_id = $2 AND expires_at > now()) < $4",
    )
    .bind(id)
    .bind(account_id)
    .bind(kind.as_str())
    .bind(i64::from(limit))
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((inserted.rows_affected() == 1).then_some(Lease {
        id,
        account_id,
        ttl,
    }))
}

/// Extends a running upload's lease (never shortening it); `false` when
/// it is gone.
async fn renew(db: &PgPool, lease_id: Uuid, ttl: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE upload_leases SET expires_at = greatest(expires_at, now() + make_interval(secs => $2))
         WHERE id = $1",
    )
    .bind(lease_id)
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An upload's slot for as long as the guard lives: ended (object,
/// reservation, slot given back) however the holder ends, unless it was
/// handed over to outlive the request.
pub struct Slot {
    lease: Option<Lease>,
    heartbeat: Heartbeat,
    db: PgPool,
    store: std::sync::Arc<dyn ObjectStore>,
}

impl Slot {
    /// Takes one of the account's `limit` slots for an upload, or answers
    /// 429 `concurrent_upload_limit` (and counts the refusal). A streaming
    /// upload's lease is renewed every third of `ttl` while the guard lives
    /// ([`UploadKind::renewed_by_its_request`]).
    pub async fn take(
        db: &PgPool,
        store: &std::sync::Arc<dyn ObjectStore>,
        account_id: Uuid,
        kind: UploadKind,
        limit: u32,
        ttl: Duration,
    ) -> Result<Self, ApiError> {
        let Some(lease) = acquire(db, account_id, kind, limit, ttl).await? else {
            metrics::counter!("intake_upload_rejections_total", "code" => "concurrent_upload_limit")
                .increment(1);
            return Err(ApiError::ConcurrentUploadLimit {
                limit: u64::from(limit),
                retry_after: SLOT_RETRY_AFTER_SECS,
            });
        };
        metrics::gauge!("intake_uploads_in_flight").increment(1.0);
        let id = lease.id;
        let heartbeat = if kind.renewed_by_its_request() {
            let db = db.clone();
            Heartbeat::start(ttl / 3, "an upload lease", id, move || {
                let db = db.clone();
                async move { renew(&db, id, ttl).await }
            })
        } else {
            Heartbeat::none()
        };
        // The holder ended without reaching release (client gone): the
        // lease ends in the background.
        let (db, store) = (db.clone(), store.clone());
        let heartbeat = heartbeat.on_drop({
            let (db, store) = (db.clone(), store.clone());
            async move { end_logged(&db, store.as_ref(), id).await }
        });
        Ok(Self {
            lease: Some(lease),
            heartbeat,
            db,
            store,
        })
    }

    /// The lease the guard holds.
    pub fn lease(&self) -> &Lease {
        // Present until release, hand-over or drop, which take self.
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease taken before the guard ended"))
    }

    /// Stops renewing and takes the lease out of the guard. The in-flight
    /// gauge counts the uploads this process's requests are running, so it
    /// drops here, whoever ends the lease later.
    fn disarm(&mut self) -> Option<Lease> {
        self.heartbeat.stop();
        let lease = self.lease.take();
        if lease.is_some() {
            metrics::gauge!("intake_uploads_in_flight").decrement(1.0);
        }
        lease
    }

    /// Ends the lease now: the normal end of an upload request.
    pub async fn release(mut self) {
        if let Some(lease) = self.disarm() {
            end_logged(&self.db, self.store.as_ref(), lease.id).await;
        }
    }

    /// Keeps the lease alive past this request (until its expiry, or until a
    /// later request calls [`end`]); returns its id.
    pub fn hand_over(mut self) -> Uuid {
        let id = self.lease().id;
        self.disarm();
        id
    }
}

async fn end_logged(db: &PgPool, store: &dyn ObjectStore, lease_id: Uuid) {
    if let Err(e) = end(db, store, lease_id).await {
        // The lease expires on its own and the reaper finishes the job.
        tracing::error!(error = %e, lease = %lease_id, "could not end an upload lease");
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The heartbeat, dropped after this, ends the lease if it is armed.
        if self.lease.take().is_some() {
            metrics::gauge!("intake_uploads_in_flight").decrement(1.0);
        }
    }
}

/// Which leases [`finish`] may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The holder ends its own lease (waits for the row if needed).
    Own,
    /// The reaper ends a lease only if it has expired and no one else holds
    /// it right now (another reaper, or its renewal).
    Expired,
}

/// Ends a lease: queues the objects it still tracks for deletion, gives
/// back its reservation, what it holds of an upload token and its slot, in
/// one transaction holding the lease row; then, with the transaction committed, deletes those objects.
/// Returns whether this call ended it.
async fn finish(
    db: &PgPool,
    store: &dyn ObjectStore,
    lease_id: Uuid,
    mode: Mode,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let sql = match mode {
        Mode::Own => {
            "DELETE FROM upload_leases WHERE id = $1
             RETURNING account_id, reserved_bytes, object_key, multipart_upload_id, finishing_keys, tail_key, tail_objects,
                       EXISTS (SELECT 1 FROM upload_token_holds h WHERE h.lease_id = upload_leases.id)"
        }
        Mode::Expired => {
            "DELETE FROM upload_leases WHERE id = (
               SELECT id FROM upload_leases WHERE id = $1 AND expires_at < now()
               FOR UPDATE SKIP LOCKED)
             RETURNING account_id, reserved_bytes, object_key, multipart_upload_id, finishing_keys, tail_key, tail_objects,
                       EXISTS (SELECT 1 FROM upload_token_holds h WHERE h.lease_id = upload_leases.id)"
        }
    };
    type Ended = (
        Uuid,
        i64,
        Option<String>,
        Option<String>,
        Vec<String>,
        Option<String>,
        Vec<String>,
        bool,
    );
    let ended: Option<Ended> = sqlx::query_as(sql)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((account_id, reserved, key, upload_id, finishing, tail, tail_objects, token_holds)) =
        ended
    else {
        return Ok(false);
    };
    // Keys are cleared in the transaction that records a file, so a key
    // still here names an object no file row owns.
    let mut doomed = Vec::new();
    doomed.extend(finishing.into_iter().map(Doomed::object));
    // A resumable upload's tail is never a file's object.
    if let Some(tail) = tail {
        doomed.push(Doomed::object(tail));
    }
    doomed.extend(tail_objects.into_iter().map(Doomed::object));
    if let Some(key) = key {
        doomed.push(Doomed {
            object_key: key,
            multipart_upload_id: upload_id,
        });
    }
    for d in &doomed {
        deletions::enqueue(&mut tx, d).await?;
    }
    reservations::release_lease(&mut tx, account_id, reserved).await?;
    // Only a token's upload holds a share of it: no statement for others.
    if token_holds {
        tokens::release_lease(&mut tx, lease_id).await?;
    }
    tx.commit().await?;
    deletions::delete_queued(db, store, &doomed).await;
    Ok(true)
}

/// Ends a lease its holder is done with (an upload that finished, failed or
/// was aborted), whichever request took it. Returns whether this call ended
/// it (`false`: already ended).
pub async fn end(
    db: &PgPool,
    store: &dyn ObjectStore,
    lease_id: Uuid,
) -> Result<bool, sqlx::Error> {
    finish(db, store, lease_id, Mode::Own).await
}

/// Ends every expired lease (dead instances' uploads, abandoned presigned
/// uploads) that no one else is ending. Safe to run on several instances at
/// once: each lease is ended exactly once. Returns how many were ended.
pub async fn end_expired(db: &PgPool, store: &dyn ObjectStore) -> Result<u64, sqlx::Error> {
    let expired: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM upload_leases WHERE expires_at < now() ORDER BY expires_at LIMIT 500",
    )
    .fetch_all(db)
    .await?;
    let mut ended = 0;
    for id in expired {
        if finish(db, store, id, Mode::Expired).await? {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Of `keys`, those a lease tracks (an object being written or finished, a
/// resumable upload's tail and its segments), live or expired: until the
/// lease ends, its upload or the reaper removes them.
pub async fn tracked_keys(db: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT k FROM unnest($1::text[]) AS k
         WHERE EXISTS (SELECT 1 FROM upload_leases
                       WHERE object_key = k OR k = ANY(finishing_keys) OR tail_key = k
                          OR k = ANY(tail_objects))",
    )
    .bind(keys)
    .fetch_all(db)
    .await
}

/// A lease past its expiry that no reaper has ended.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ExpiredLease {
    /// Lease id.
    pub id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    /// `stream`, `presigned` or `tus`.
    pub kind: String,
    /// Bytes of quota it still holds.
    pub reserved_bytes: i64,
    /// Seconds since it expired.
    pub expired_secs: f64,
}

/// Leases expired for longer than `at_least` (a reaper runs every few
/// seconds, so these are stuck): how many, and the `limit` oldest.
pub async fn expired_for(
    db: &PgPool,
    at_least: Duration,
    limit: usize,
) -> Result<(i64, Vec<ExpiredLease>), sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM upload_leases WHERE expires_at < now() - make_interval(secs => $1)",
    )
    .bind(at_least.as_secs_f64())
    .fetch_one(db)
    .await?;
    let oldest = sqlx::query_as(
        "SELECT id, account_id, kind, reserved_bytes,
                extract(epoch FROM now() - expires_at)::float8 AS expired_secs
         FROM upload_leases WHERE expires_at < now() - make_interval(secs => $1)
         ORDER BY expires_at LIMIT $2",
    )
    .bind(at_least.as_secs_f64())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await?;
    Ok((count, oldest))
}
