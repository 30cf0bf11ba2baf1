//! Concurrent-upload slots and storage reservations, as leases in Postgres.
//!
//! An upload holds one lease (one slot) while it runs. Storage is reserved
//! under the lease in increments, each one conditional update of the
//! account's counters, so many uploads on many instances can never reserve
//! past the quota together. A lease expires unless renewed; the reaper gives
//! back what a dead instance's leases held.
//!
//! Lock order, everywhere: the lease row first, then the account row.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{error::ApiError, storage::ObjectStore};

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The quota would be exceeded.
    #[error("storage quota exceeded")]
    Quota {
        /// The quota.
        limit: u64,
        /// Used plus reserved at the time.
        used: u64,
    },
    /// The lease expired (and may have been reaped) while the upload ran.
    #[error("the upload's lease expired")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ReserveError> for ApiError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Quota { limit, used } => ApiError::StorageQuotaExceeded { limit, used },
            ReserveError::LeaseLost => {
                ApiError::ServiceUnavailable("the upload's lease expired; retry".into())
            }
            ReserveError::Db(e) => e.into(),
        }
    }
}

/// A held slot. Not `Clone`: one lease, one owner, released once.
#[derive(Debug)]
pub struct Lease {
    /// Lease id.
    pub id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    ttl: Duration,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Takes a slot if the account has one free: `None` when all are taken.
///
/// The account row is locked first, so the count of live leases that the
/// insert checks is exact even with many instances racing.
pub async fn acquire(
    db: &PgPool,
    account_id: Uuid,
    kind: &str,
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
    .bind(kind)
    .bind(i64::from(limit))
    .bind(secs(ttl))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((inserted.rows_affected() == 1).then_some(Lease {
        id,
        account_id,
        ttl,
    }))
}

/// How long a client is told to wait when all its slots are taken.
const SLOT_RETRY_AFTER_SECS: u64 = 1;

/// Takes one of the account's slots, or answers 429
/// `concurrent_upload_limit` (and counts the refusal).
pub async fn take_slot(
    db: &PgPool,
    account_id: Uuid,
    kind: &str,
    limit: u32,
    ttl: Duration,
) -> Result<Lease, ApiError> {
    match acquire(db, account_id, kind, limit, ttl).await? {
        Some(lease) => Ok(lease),
        None => {
            metrics::counter!("intake_upload_rejections_total", "code" => "concurrent_upload_limit")
                .increment(1);
            Err(ApiError::ConcurrentUploadLimit {
                limit: u64::from(limit),
                retry_after: SLOT_RETRY_AFTER_SECS,
            })
        }
    }
}

impl Lease {
    /// A lease taken earlier (by another request: a presigned upload's
    /// completion acts on the lease its issue took).
    pub fn existing(id: Uuid, account_id: Uuid, ttl: Duration) -> Self {
        Self {
            id,
            account_id,
            ttl,
        }
    }

    /// Reserves exactly `bytes` more of the account's quota under this lease
    /// (renewing it, and recording `object_key` as the object being written),
    /// or nothing. One statement: the lease row is locked first, then the
    /// account's counters move by one conditional update.
    pub async fn reserve(
        &self,
        db: &PgPool,
        bytes: u64,
        quota: Option<u64>,
        object_key: Option<&str>,
    ) -> Result<(), ReserveError> {
        let n = i64::try_from(bytes).map_err(|_| ReserveError::Quota {
            limit: quota.unwrap_or(0),
            used: 0,
        })?;
        let quota = quota.map(|q| i64::try_from(q).unwrap_or(i64::MAX));
        let granted: Option<i64> = sqlx::query_scalar(
            "WITH l AS (
               SELECT id FROM upload_leases WHERE id = $1 AND expires_at > now() FOR UPDATE
             ), a AS (
               UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes + $3
               WHERE id = $2 AND EXISTS (SELECT 1 FROM l)
                 AND ($4::int8 IS NULL OR storage_used_bytes + storage_reserved_bytes + $3 <= $4)
               RETURNING id
             )
             UPDATE upload_leases SET reserved_bytes = reserved_bytes + $3,
                                      expires_at = now() + make_interval(secs => $5),
                                      -- A new object while the last one is still
                                      -- unrecorded: the last one is finishing.
                                      finishing_key = CASE WHEN $6 IS NOT NULL AND object_key IS NOT NULL
                                                           THEN object_key ELSE finishing_key END,
                                      object_key = coalesce($6, object_key)
             WHERE id = $1 AND EXISTS (SELECT 1 FROM a)
             RETURNING reserved_bytes",
        )
        .bind(self.id)
        .bind(self.account_id)
        .bind(n)
        .bind(quota)
        .bind(secs(self.ttl))
        .bind(object_key)
        .fetch_optional(db)
        .await?;
        if granted.is_some() {
            return Ok(());
        }
        // Refused: say why (only on this path, so it costs nothing otherwise).
        let (alive, used): (bool, i64) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM upload_leases WHERE id = $1 AND expires_at > now()),
                    (SELECT storage_used_bytes + storage_reserved_bytes FROM accounts WHERE id = $2)",
        )
        .bind(self.id)
        .bind(self.account_id)
        .fetch_one(db)
        .await?;
        if !alive {
            return Err(ReserveError::LeaseLost);
        }
        Err(ReserveError::Quota {
            limit: quota.unwrap_or(0) as u64,
            used: used.max(0) as u64,
        })
    }

    /// Gives back up to `bytes` of this lease's reservation and forgets the
    /// object `key` it tracked (a file that failed and was removed).
    pub async fn unreserve(&self, db: &PgPool, bytes: u64, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH l AS (
               SELECT id, account_id, least($2, reserved_bytes) AS n
               FROM upload_leases WHERE id = $1 FOR UPDATE
             ), ul AS (
               UPDATE upload_leases SET reserved_bytes = reserved_bytes - (SELECT n FROM l),
                 multipart_upload_id = CASE WHEN object_key = $3 THEN NULL ELSE multipart_upload_id END,
                 object_key = CASE WHEN object_key = $3 THEN NULL ELSE object_key END,
                 finishing_key = CASE WHEN finishing_key = $3 THEN NULL ELSE finishing_key END
               WHERE id IN (SELECT id FROM l)
             )
             UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes - (SELECT n FROM l)
             WHERE id = (SELECT account_id FROM l)",
        )
        .bind(self.id)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(key)
        .execute(db)
        .await?;
        Ok(())
    }

    /// Records the object being written, so the reaper can remove it if this
    /// instance dies before the file is recorded.
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
}

/// Extends a running upload's lease (never shortening it); `false` when
/// it is gone.
pub async fn renew(db: &PgPool, lease_id: Uuid, ttl: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE upload_leases SET expires_at = greatest(expires_at, now() + make_interval(secs => $2))
         WHERE id = $1",
    )
    .bind(lease_id)
    .bind(secs(ttl))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a lease and gives back its reservation, inside the caller's
/// transaction (which holds the lease row).
async fn release_in(tx: &mut sqlx::PgConnection, lease_id: Uuid) -> Result<(), sqlx::Error> {
    let gone: Option<(Uuid, i64)> = sqlx::query_as(
        "DELETE FROM upload_leases WHERE id = $1 RETURNING account_id, reserved_bytes",
    )
    .bind(lease_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((account_id, reserved)) = gone {
        sqlx::query("UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes - $2 WHERE id = $1")
            .bind(account_id)
            .bind(reserved)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Which leases [`reclaim`] may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// The owner ends its own lease (waits for the row if needed).
    Own,
    /// The reaper ends a lease only if it has expired and no one else holds
    /// it right now (another reaper, or its renewal).
    Expired,
}

/// Ends a lease whose upload did not finish normally (a dropped request, a
/// dead instance): removes the object it was writing, then gives back its
/// reservation and slot, all while holding the lease row. An object that
/// storage will not delete now is queued for the retry of deletions, never
/// forgotten. Returns whether this call ended the lease.
pub async fn reclaim(
    db: &PgPool,
    store: &dyn ObjectStore,
    lease_id: Uuid,
    mode: Reclaim,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let sql = match mode {
        Reclaim::Own => {
            "SELECT object_key, multipart_upload_id, finishing_key FROM upload_leases
             WHERE id = $1 FOR UPDATE"
        }
        Reclaim::Expired => {
            "SELECT object_key, multipart_upload_id, finishing_key FROM upload_leases
             WHERE id = $1 AND expires_at < now() FOR UPDATE SKIP LOCKED"
        }
    };
    let tracked: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(sql)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((key, upload_id, finishing)) = tracked else {
        return Ok(false);
    };
    // Keys are cleared in the transaction that records a file, so a key
    // still here names an object no file row owns.
    if let Some(finishing) = finishing {
        remove_object(&mut tx, store, &finishing, None).await?;
    }
    if let Some(key) = key {
        remove_object(&mut tx, store, &key, upload_id.as_deref()).await?;
    }
    release_in(&mut tx, lease_id).await?;
    tx.commit().await?;
    Ok(true)
}

/// Ends every expired lease (dead instances' uploads, abandoned presigned
/// uploads) that no one else is ending. Safe to run on several instances at
/// once: each lease is ended exactly once. Returns how many were ended.
pub async fn reap_expired(db: &PgPool, store: &dyn ObjectStore) -> Result<u64, sqlx::Error> {
    let expired: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM upload_leases WHERE expires_at < now() ORDER BY expires_at LIMIT 500",
    )
    .fetch_all(db)
    .await?;
    let mut ended = 0;
    for id in expired {
        if reclaim(db, store, id, Reclaim::Expired).await? {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Aborts the multipart upload (if any) and deletes the object; what storage
/// refuses now is queued for the retry of deletions.
pub async fn remove_object(
    db: &mut sqlx::PgConnection,
    store: &dyn ObjectStore,
    key: &str,
    multipart_upload_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let aborted = match multipart_upload_id {
        Some(id) => store.abort_multipart(key, id).await,
        None => Ok(()),
    };
    if let Err(e) = aborted.and(store.delete(key).await) {
        tracing::warn!(error = %e, key, "could not remove an unfinished upload's object; queued");
        crate::files::queue_deletion(&mut *db, key, multipart_upload_id).await?;
    }
    Ok(())
}
